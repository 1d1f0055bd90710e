//! The tiled layout of weight matrices (FORMAT.md, "Tiled matrices").
//!
//! A matrix product that reads one row at a time must reduce each row's partial sums across
//! vector lanes, once per block. In the tiled layout the rows of a band of [`TILE_ROWS`] sit in
//! the lanes of one vector instead: for every block (every element, for F16) the band holds the
//! 16 rows' f16 scales side by side, then the rows' quants interleaved four bytes at a time, so
//! one broadcast activation word times one 64-byte load gives a partial sum for 16 rows and no
//! horizontal work is left. The same bytes, permuted within each band: a tiled matrix is
//! exactly as large as the row-major one, and a model file can be tiled in place after it was
//! read ([`crate::file::ModelBytes::read`]).
//!
//! The layout only moves bytes: every kernel computes the same sums in the same order as on the
//! row-major matrix (block `b` into lane `b % 8`, FORMAT.md), so results are bit-identical
//! whichever layout the weights are in.
//!
//! Only full bands are tiled: in each matrix (each run of `dims[1]` rows of a tensor) the rows
//! past the last multiple of 16 keep the row-major layout.

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

/// Tiles every full band of a `rows x row_bytes` row-major matrix of type `ty` in place, using
/// `scratch` (at least `16 * row_bytes` bytes) for one band at a time. Returns the number of
/// bands tiled (0 if `scratch` is too small or `data` is not `rows * row_bytes` long).
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
        || scratch.len() < band
        || Some(data.len()) != rows.checked_mul(row_bytes)
    {
        return 0;
    }
    let bands = rows / TILE_ROWS;
    let scratch = &mut scratch[..band];
    for b in data.chunks_exact_mut(band).take(bands) {
        scratch.copy_from_slice(b);
        tile_band(ty, row_bytes, scratch, b);
    }
    bands
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
