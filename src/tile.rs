//! The tiled layout of weight matrices (FORMAT.md, "Tiled matrices").
//!
//! A matrix product that reads one row at a time must reduce each row's partial sums across
//! vector lanes, once per block. In the tiled layout the rows of a band of [`TILE_ROWS`] sit in
//! the lanes of one vector instead: for every block (every element, for F16) the band holds the
//! 16 rows' f16 scales side by side, then the rows' quants interleaved four bytes at a time, so
//! one broadcast activation word times one 64-byte load gives a partial sum for 16 rows and no
//! horizontal work is left. The same bytes, permuted: a tiled matrix is exactly as large as
//! the row-major one, and a model file can be tiled in place after it was read
//! ([`crate::file::ModelBytes::read`]).
//!
//! The bands go in panels of [`PANEL_BANDS`], each panel stored a column piece at a time
//! ([`piece_units`], [`unit_offset`]): a GEMV walks a panel piece by piece, band after band, so
//! the weights are still one sequential stream and the piece of activation they need stays in
//! L1 while the panel's bands go past (a whole band of a wide matrix would push it out).
//!
//! The layout only moves bytes: every kernel computes the same sums in the same order as on the
//! row-major matrix (block `b` into lane `b % 8`, FORMAT.md), so results are bit-identical
//! whichever layout the weights are in.
//!
//! Only full bands are tiled: in each matrix (each run of `dims[1]` rows of a tensor) the rows
//! past the last multiple of 16 keep the row-major layout. A tiled matrix splits into row ranges
//! of its own only at panel boundaries ([`crate::model::Matrix::row_align`]).

use crate::quant::GgmlType;

/// Set in the type id of a tiled tensor in a GGUF tensor table (the ggml type id with bit 31
/// set): tiling rewrites it in place, so bytes once tiled can never be read as row-major.
pub const TILED_FLAG: u32 = 1 << 31;

/// Rows in a band (the lanes of a 512-bit vector of i32 or f32).
pub const TILE_ROWS: usize = 16;

/// Bytes that lead each unit of a row (a block's f16 scale, or one F16 element).
const HEAD: usize = 2;
/// Bytes of a row's quants that lie together in a band.
const CHUNK: usize = 4;

/// Bands in a panel: the bands of a matrix with wide rows are stored a panel at a time, column
/// piece by column piece (see [`piece_units`]).
pub const PANEL_BANDS: usize = 8;

/// Units of a row that one band holds together before the next band of its panel continues
/// ([`unit_offset`]), for rows of `units` units: pieces of 64 elements for F16 rows of more
/// than 2048 elements, and of 8 blocks (one group of the lane order) for Q4_0 rows of more
/// than 64 blocks (2048 columns); the whole row otherwise (every band whole, one after the
/// other). A piece's activation (256 bytes of f32, or 320 bytes of quantized activation)
/// stays in L1 while the panel's bands stream past; on narrower rows, and for Q8_0, whole
/// bands measured as fast or faster (BENCHMARKS.md, "Panels" and "Piece lengths on separate
/// buffers").
pub const fn piece_units(ty: GgmlType, units: usize) -> usize {
    let piece = match ty {
        GgmlType::F16 if units > 2048 => 64,
        GgmlType::Q4_0 if units > 64 => 8,
        _ => units,
    };
    if piece == 0 {
        1
    } else {
        piece
    }
}

/// Where unit `u` of band `b` (the 16 rows' unit, `16 * unit` bytes laid out as [`tile_pos`]
/// says) lies in a tiled matrix of `bands` full bands and `units` units per row: bands go in
/// panels of [`PANEL_BANDS`] (the last may have fewer), and a panel holds its bands' first
/// [`piece_units`] units band after band, then their next ones, and so on.
#[inline(always)]
pub const fn unit_offset(ty: GgmlType, units: usize, bands: usize, b: usize, u: usize) -> usize {
    let ub = TILE_ROWS * unit_bytes(ty);
    let first = b - b % PANEL_BANDS;
    let in_panel = if bands - first < PANEL_BANDS {
        bands - first
    } else {
        PANEL_BANDS
    };
    let piece = piece_units(ty, units);
    let c0 = u - u % piece;
    let len = if units - c0 < piece {
        units - c0
    } else {
        piece
    };
    ub * (first * units + c0 * in_panel + (b - first) * len + (u - c0))
}

/// Whether a tiled matrix of type `ty` with `units` units per row has panels whose bands are
/// split into pieces ([`unit_offset`]); otherwise every band is whole and in place.
pub const fn has_pieces(ty: GgmlType, units: usize) -> bool {
    units > piece_units(ty, units)
}

/// The pieces of the first `n` units of a row of `units` units: `(u0, u1)` for each.
pub fn pieces(ty: GgmlType, units: usize, n: usize) -> impl Iterator<Item = (usize, usize)> {
    let piece = piece_units(ty, units);
    let n = n.min(units);
    (0..n)
        .step_by(piece)
        .map(move |u0| (u0, (u0 + piece).min(n)))
}

/// Bytes of scratch [`tile_matrix`] needs for a matrix of type `ty` with `row_bytes` per row.
pub const fn scratch_bytes(ty: GgmlType, row_bytes: usize) -> usize {
    let band = row_bytes.saturating_mul(TILE_ROWS);
    if has_pieces(ty, row_bytes / unit_bytes(ty)) {
        band.saturating_mul(PANEL_BANDS)
    } else {
        band
    }
}

/// The types with a tiled layout.
pub const TILEABLE: [GgmlType; 3] = [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0];

/// Whether matrices of type `ty` have a tiled layout (one of [`TILEABLE`]).
pub const fn is_tileable(ty: GgmlType) -> bool {
    let mut i = 0;
    while i < TILEABLE.len() {
        if TILEABLE[i] as u8 == ty as u8 {
            return true;
        }
        i += 1;
    }
    false
}

/// Bytes of a row's unit: a block (scale then quants) or, for F16, one element.
#[inline(always)]
const fn unit_bytes(ty: GgmlType) -> usize {
    ty.type_size()
}

/// Where byte `j` of row `r` (`r < 16`) of a band lies in the tiled band: for unit `u` (at
/// `u * 16 * unit` bytes into the band) the 16 rows' two head bytes, then the rest of the unit
/// four bytes of each row at a time (`[chunk k][row r][4 bytes]`).
#[inline(always)]
pub const fn tile_pos(ty: GgmlType, r: usize, j: usize) -> usize {
    let unit = unit_bytes(ty);
    let (u, o) = (j / unit, j % unit);
    let base = u * unit * TILE_ROWS;
    if o < HEAD {
        base + HEAD * r + o
    } else {
        let q = o - HEAD;
        base + HEAD * TILE_ROWS + (q / CHUNK) * CHUNK * TILE_ROWS + CHUNK * r + q % CHUNK
    }
}

/// Lays out one band: `src` holds 16 row-major rows of `row_bytes` bytes, `dst` receives them
/// tiled. Both must be `16 * row_bytes` long (`row_bytes` a whole number of units); shorter
/// slices leave the rest of `dst` unwritten.
pub fn tile_band(ty: GgmlType, row_bytes: usize, src: &[u8], dst: &mut [u8]) {
    move_band(ty, row_bytes, |r, j, len| {
        let (from, to) = (r * row_bytes + j, tile_pos(ty, r, j));
        if let (Some(s), Some(d)) = (src.get(from..from + len), dst.get_mut(to..to + len)) {
            d.copy_from_slice(s);
        }
    });
}

/// The inverse of [`tile_band`]: `src` a tiled band, `dst` the 16 rows row-major.
pub fn untile_band(ty: GgmlType, row_bytes: usize, src: &[u8], dst: &mut [u8]) {
    move_band(ty, row_bytes, |r, j, len| {
        let (from, to) = (tile_pos(ty, r, j), r * row_bytes + j);
        if let (Some(s), Some(d)) = (src.get(from..from + len), dst.get_mut(to..to + len)) {
            d.copy_from_slice(s);
        }
    });
}

/// Calls `mv(r, j, len)` for every run of bytes `j..j + len` of row `r` that stays together in
/// a band (the heads and the four-byte chunks), covering every byte of the 16 rows once.
#[inline]
fn move_band(ty: GgmlType, row_bytes: usize, mut mv: impl FnMut(usize, usize, usize)) {
    let unit = unit_bytes(ty);
    for u in 0..row_bytes / unit {
        for r in 0..TILE_ROWS {
            let j = u * unit;
            mv(r, j, HEAD);
            for k in (HEAD..unit).step_by(CHUNK) {
                mv(r, j + k, CHUNK);
            }
        }
    }
}

/// The largest unit (a Q8_0 block).
pub const MAX_UNIT: usize = crate::quant::Q8_0_BLOCK_BYTES;

/// Unit `u` of row `r` of a tiled band, in row-major order (the first `unit` bytes of the
/// result; bytes the band does not have read as zero).
#[inline(always)]
pub fn unit_of(ty: GgmlType, band: &[u8], r: usize, u: usize) -> [u8; MAX_UNIT] {
    let unit = unit_bytes(ty);
    let mut out = [0u8; MAX_UNIT];
    let j0 = u * unit;
    let head = tile_pos(ty, r, j0);
    if let Some(h) = band.get(head..head + HEAD) {
        out[..HEAD].copy_from_slice(h);
    }
    for k in (HEAD..unit.min(out.len())).step_by(CHUNK) {
        let at = tile_pos(ty, r, j0 + k);
        if let Some(c) = band.get(at..at + CHUNK) {
            out[k..k + CHUNK].copy_from_slice(c);
        }
    }
    out
}

/// Tiles every full band of a `rows x row_bytes` row-major matrix of type `ty` in place, and
/// puts the bands of each panel in [`unit_offset`]'s order, using `scratch` (at least
/// [`scratch_bytes`]). Returns the number of bands tiled (0 if `scratch` is too small or `data`
/// is not `rows * row_bytes` long).
pub fn tile_matrix(
    ty: GgmlType,
    rows: usize,
    row_bytes: usize,
    data: &mut [u8],
    scratch: &mut [u8],
) -> usize {
    let Some(band) = row_bytes.checked_mul(TILE_ROWS) else {
        return 0;
    };
    if !is_tileable(ty)
        || band == 0
        || scratch.len() < scratch_bytes(ty, row_bytes)
        || Some(data.len()) != rows.checked_mul(row_bytes)
    {
        return 0;
    }
    let bands = rows / TILE_ROWS;
    for b in data.chunks_exact_mut(band).take(bands) {
        let scratch = &mut scratch[..band];
        scratch.copy_from_slice(b);
        tile_band(ty, row_bytes, scratch, b);
    }
    let units = row_bytes / unit_bytes(ty);
    if has_pieces(ty, units) {
        // Each panel from band after band to piece by piece.
        let ub = TILE_ROWS * unit_bytes(ty);
        for (p, panel) in data[..bands * band]
            .chunks_mut(PANEL_BANDS * band)
            .enumerate()
        {
            let old = &mut scratch[..panel.len()];
            old.copy_from_slice(panel);
            for (i, whole) in old.chunks_exact(band).enumerate() {
                let b = p * PANEL_BANDS + i;
                for (u0, u1) in pieces(ty, units, units) {
                    let at = unit_offset(ty, units, bands, b, u0) - p * PANEL_BANDS * band;
                    panel[at..at + (u1 - u0) * ub].copy_from_slice(&whole[u0 * ub..u1 * ub]);
                }
            }
        }
    }
    bands
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{vec, vec::Vec};

    #[test]
    fn tile_pos_is_a_permutation_of_each_band() {
        for (ty, cols) in [
            (GgmlType::F16, 40),
            (GgmlType::Q8_0, 96),
            (GgmlType::Q4_0, 64),
        ] {
            let rb = ty.row_bytes(cols);
            let mut seen = [false; 16 * 136];
            for r in 0..TILE_ROWS {
                for j in 0..rb {
                    let p = tile_pos(ty, r, j);
                    assert!(p < TILE_ROWS * rb && !seen[p], "{ty:?} {r} {j}");
                    seen[p] = true;
                }
            }
        }
    }

    #[test]
    fn tile_then_untile_and_read_units() {
        for ty in [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0] {
            let rb = ty.row_bytes(64);
            let src: [u8; 16 * 128] = core::array::from_fn(|i| (i * 7 + i / 13) as u8);
            let src = &src[..16 * rb];
            let mut t = [0u8; 16 * 128];
            tile_band(ty, rb, src, &mut t[..16 * rb]);
            assert_ne!(&t[..16 * rb], src);
            let unit = ty.type_size();
            for r in 0..TILE_ROWS {
                for u in 0..rb / unit {
                    let got = unit_of(ty, &t[..16 * rb], r, u);
                    assert_eq!(&got[..unit], &src[r * rb + u * unit..][..unit]);
                }
            }
            let mut back = [0u8; 16 * 128];
            untile_band(ty, rb, &t[..16 * rb], &mut back[..16 * rb]);
            assert_eq!(&back[..16 * rb], src);
        }
    }

    #[test]
    fn unit_offset_is_a_permutation_of_the_bands() {
        // Whole pieces, a short last piece, one piece; full and partial last panels.
        for (ty, units) in [
            (GgmlType::F16, 4352),
            (GgmlType::F16, 4104),
            (GgmlType::F16, 1003),
            (GgmlType::Q8_0, 300),
            (GgmlType::Q4_0, 100),
            (GgmlType::Q4_0, 64),
        ] {
            let ub = TILE_ROWS * ty.type_size();
            for bands in [1, 8, 11, 17] {
                let mut seen = vec![false; bands * units];
                for b in 0..bands {
                    for u in 0..units {
                        let at = unit_offset(ty, units, bands, b, u);
                        assert_eq!(at % ub, 0);
                        assert!(!core::mem::replace(&mut seen[at / ub], true), "{b} {u}");
                    }
                }
                if !has_pieces(ty, units) {
                    assert_eq!(
                        unit_offset(ty, units, bands, bands - 1, 1),
                        ((bands - 1) * units + 1) * ub
                    );
                }
            }
        }
    }

    #[test]
    fn tiled_rows_read_back_through_their_pieces() {
        let ty = GgmlType::F16;
        let (rows, cols) = (16 * 9 + 5, 4200);
        let rb = ty.row_bytes(cols);
        let src: Vec<u8> = (0..rows * rb).map(|i| (i * 31 + i / 7) as u8).collect();
        let mut t = src.clone();
        assert_eq!(tile_matrix(ty, rows, rb, &mut t, &mut vec![0; 16 * rb]), 0);
        let mut scratch = vec![0; scratch_bytes(ty, rb)];
        assert_eq!(tile_matrix(ty, rows, rb, &mut t, &mut scratch), 9);
        assert_eq!(&t[9 * 16 * rb..], &src[9 * 16 * rb..]);
        let m = crate::model::Matrix::new_tiled(ty, rows, cols, &t).unwrap();
        assert_eq!(m.row_align(), 128);
        for r in 0..rows {
            let (mut got, mut want) = (vec![0.0; cols], vec![0.0; cols]);
            m.dequantize_row(r, &mut got);
            crate::quant::dequantize_row(ty, &src[r * rb..(r + 1) * rb], &mut want);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&got) == bits(&want), "row {r}");
        }
        // Units that cross a piece are not together.
        assert!(m.band_units(0, 120, 136).is_empty());
        assert!(m.band_units(8, 4096, 4200).is_empty());
        assert_eq!(m.band_units(8, 4160, 4200).len(), 40 * 32);
    }
}
