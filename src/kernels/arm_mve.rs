//! Cortex-M55 Helium (MVE) kernels (cargo feature `helium`; build with
//! `-C target-cpu=cortex-m55`).
//!
//! Integer block sums: `VLDRB.S8` loads 16 int8 values and `VMLADAV(A).S8` multiplies them with
//! 16 activation bytes and adds the products into a core register, so a 32-element block takes
//! four loads and two multiply-accumulate-across-vector instructions. Q4_0 nibbles are decoded
//! to `16 * (n - 8)` as signed bytes (`n ^ 8` is `n - 8` in 4-bit two's complement, shifted to
//! the top of the byte) and the block sum is shifted back by 4, which is exact.
//!
//! The float part is vectorized without changing a single operation of the scalar
//! specification: the GEMV keeps four rows in the four lanes of a vector (a gather load fetches
//! their four f16 scales, `VCVTB` widens them, then `* dx`, `sumi * (dw * dx)` and the add into
//! lane `b % 8` are the scalar kernel's operations, lane by lane, in the same order); the single
//! row dot product keeps blocks `b % 8 = 0..3` and `4..7` in two vectors. MVE single-precision
//! arithmetic rounds like the scalar FPU (IEEE, round to nearest even, FPSCR), and the block
//! sums are below 2^24 in magnitude, so their conversion is exact. [`scalar::reduce8`]'s order is
//! kept: `(a0 + a4) + (a2 + a6)` and `(a1 + a5) + (a3 + a7)`, then their sum.
//!
//! Stable Rust cannot name FP/vector registers as `asm!` operands (the `vfp2`/`mve` target
//! features are unstable on ARM), so each assembly block saves q0-q7 with one `VPUSH` and
//! restores them with one `VPOP`. Float kernels other than the quantized products stay scalar.

use core::arch::asm;

use super::scalar;
use crate::model::Matrix;
use crate::quant::{f16_to_f32, GgmlType, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES, QK};

scalar::quant_kernels! {
    /// The Helium kernels (selected at build time by the `helium` feature).
    Helium,
    gemv(w, xq, xd, out) {
        GgmlType::Q8_0 | GgmlType::Q4_0 => gemv_quant(w, xq, xd, out),
    }
}

/// Lane accumulators of four rows, `acc[lane][row]`, and the number of blocks after the last
/// whole group of four. Aligned so that the lane pointer can be reset by clearing its low byte.
#[repr(C, align(256))]
struct Lanes4 {
    acc: [[f32; 4]; 8],
    tail: usize,
}

/// Q8_0 block: the quants of rows `p[k]` and activation `x`, the per-row block sums.
macro_rules! q8_rows {
    () => {
        concat!(
            "vldrb.s8 q0, [{xp}], #16\n",
            "vldrb.s8 q1, [{xp}], #16\n",
            "vldrb.s8 q2, [{p0}], #16\n",
            "vldrb.s8 q3, [{p0}], #18\n",
            "vmladav.s8 r0, q2, q0\n",
            "vmladava.s8 r0, q3, q1\n",
            "vldrb.s8 q2, [{p1}], #16\n",
            "vldrb.s8 q3, [{p1}], #18\n",
            "vmladav.s8 r2, q2, q0\n",
            "vmladava.s8 r2, q3, q1\n",
            "vldrb.s8 q2, [{p2}], #16\n",
            "vldrb.s8 q3, [{p2}], #18\n",
            "vmladav.s8 r4, q2, q0\n",
            "vmladava.s8 r4, q3, q1\n",
            "vldrb.s8 q2, [{p3}], #16\n",
            "vldrb.s8 q3, [{p3}], #18\n",
            "vmladav.s8 r8, q2, q0\n",
            "vmladava.s8 r8, q3, q1\n",
        )
    };
}

/// Q4_0 block: decodes each row's 16 bytes to `16 * (n - 8)` (q4 = 0x88.., q5 = 0xF0..) and
/// leaves `16 * sumi` per row.
macro_rules! q4_rows {
    () => {
        concat!(
            "vmov.i8 q4, #0x88\n",
            "vmov.i8 q5, #0xf0\n",
            "vldrb.s8 q0, [{xp}], #16\n",
            "vldrb.s8 q1, [{xp}], #16\n",
            q4_row!("{p0}", "r0"),
            q4_row!("{p1}", "r2"),
            q4_row!("{p2}", "r4"),
            q4_row!("{p3}", "r8"),
        )
    };
}

macro_rules! q4_row {
    ($p:literal, $r:literal) => {
        concat!(
            "vldrb.u8 q2, [",
            $p,
            "], #18\n",
            "veor q2, q2, q4\n",
            "vshl.i8 q3, q2, #4\n",
            "vand q2, q2, q5\n",
            "vmladav.s8 ",
            $r,
            ", q3, q0\n",
            "vmladava.s8 ",
            $r,
            ", q2, q1\n",
        )
    };
}

/// One block of four rows: integer sums (r0, r2, r4, r8), then `acc += sumi * (dw * dx)` with
/// the four scales gathered from `{p0} + q7`. `$ld`/`$st` load and store the block's lane.
macro_rules! block4 {
    (q8, $ld:literal, $st:literal) => {
        concat!(
            "vldrh.u32 q5, [{p0}, q7]\n",
            q8_rows!(),
            "vmov q4[2], q4[0], r0, r4\n",
            "vmov q4[3], q4[1], r2, r8\n",
            scale_add!($ld, $st),
        )
    };
    (q4, $ld:literal, $st:literal) => {
        concat!(
            q4_rows!(),
            "vldrh.u32 q5, [{p0}, q7]\n",
            "vmov q4[2], q4[0], r0, r4\n",
            "vmov q4[3], q4[1], r2, r8\n",
            "vshr.s32 q4, q4, #4\n",
            scale_add!($ld, $st),
        )
    };
}

/// The float part: q4 = block sums, q5 = scale bits; `acc[lane] += sumi * (dw * dx)`.
macro_rules! scale_add {
    ($ld:literal, $st:literal) => {
        concat!(
            "vcvt.f32.s32 q4, q4\n",
            "vcvtb.f32.f16 q5, q5\n",
            "ldr r0, [{dxp}], #4\n",
            "vmul.f32 q5, q5, r0\n",
            "vmul.f32 q4, q4, q5\n",
            $ld,
            "\nvadd.f32 q6, q6, q4\n",
            $st,
            "\n",
        )
    };
}

/// The whole four-row loop: four blocks per iteration into lanes 0-3 or 4-7 (the lane pointer
/// toggles between them), then the remaining blocks one by one, then `reduce8` of each row.
macro_rules! rows4_asm {
    ($ty:ident) => {
        concat!(
            "vpush {{d0-d15}}\n",
            "vmov q7[2], q7[0], r0, r4\n",
            "vmov q7[3], q7[1], r2, r8\n",
            "vmov.i32 q6, #0\n",
            "vstrw.32 q6, [{acc}]\n",
            "vstrw.32 q6, [{acc}, #16]\n",
            "vstrw.32 q6, [{acc}, #32]\n",
            "vstrw.32 q6, [{acc}, #48]\n",
            "vstrw.32 q6, [{acc}, #64]\n",
            "vstrw.32 q6, [{acc}, #80]\n",
            "vstrw.32 q6, [{acc}, #96]\n",
            "vstrw.32 q6, [{acc}, #112]\n",
            "wls lr, lr, 3f\n",
            "2:\n",
            block4!($ty, "vldrw.u32 q6, [{acc}]", "vstrw.32 q6, [{acc}]"),
            block4!(
                $ty,
                "vldrw.u32 q6, [{acc}, #16]",
                "vstrw.32 q6, [{acc}, #16]"
            ),
            block4!(
                $ty,
                "vldrw.u32 q6, [{acc}, #32]",
                "vstrw.32 q6, [{acc}, #32]"
            ),
            block4!(
                $ty,
                "vldrw.u32 q6, [{acc}, #48]",
                "vstrw.32 q6, [{acc}, #48]"
            ),
            "eor {acc}, {acc}, #64\n",
            "le lr, 2b\n",
            "3:\n",
            "bic r0, {acc}, #255\n",
            "ldr lr, [r0, #128]\n",
            "wls lr, lr, 5f\n",
            "4:\n",
            block4!($ty, "vldrw.u32 q6, [{acc}]", "vstrw.32 q6, [{acc}], #16"),
            "le lr, 4b\n",
            "5:\n",
            "bfc {acc}, #0, #8\n",
            "vldrw.u32 q0, [{acc}]\n",
            "vldrw.u32 q1, [{acc}, #16]\n",
            "vldrw.u32 q2, [{acc}, #32]\n",
            "vldrw.u32 q3, [{acc}, #48]\n",
            "vldrw.u32 q4, [{acc}, #64]\n",
            "vldrw.u32 q5, [{acc}, #80]\n",
            "vldrw.u32 q6, [{acc}, #96]\n",
            "vldrw.u32 q7, [{acc}, #112]\n",
            "vadd.f32 q0, q0, q4\n",
            "vadd.f32 q1, q1, q5\n",
            "vadd.f32 q2, q2, q6\n",
            "vadd.f32 q3, q3, q7\n",
            "vadd.f32 q0, q0, q2\n",
            "vadd.f32 q1, q1, q3\n",
            "vadd.f32 q0, q0, q1\n",
            "vstrw.32 q0, [{acc}]\n",
            "vpop {{d0-d15}}\n",
        )
    };
}

/// Four rows of a quantized GEMV: `out[k] = row_k . x` for the rows whose block 0 starts at
/// `w + k * stride` (even), over `nb >= 1` blocks.
///
/// # Safety
/// For k < 4 and b < nb, the `block_bytes` bytes at `w + k * stride + b * block_bytes` must be
/// readable, as must `32 * nb` bytes at `xq` and `nb` f32 at `xd`; `w` and `stride` even.
#[inline(always)]
unsafe fn rows4(
    q4: bool,
    w: *const u8,
    stride: usize,
    xq: *const i8,
    xd: *const f32,
    nb: usize,
) -> [f32; 4] {
    let mut lanes = core::mem::MaybeUninit::<Lanes4>::uninit();
    let acc = lanes.as_mut_ptr();
    // SAFETY: `acc` points to the (uninitialized) struct; writing a field is allowed.
    unsafe { (&raw mut (*acc).tail).write(nb % 4) };
    // Offsets from the row-0 quant pointer (after the block's loads for Q4_0, before for Q8_0)
    // back to each row's scale.
    let back: usize = if q4 { 20 } else { 2 };
    let offs = [
        0usize.wrapping_sub(back),
        stride.wrapping_sub(back),
        (2 * stride).wrapping_sub(back),
        (3 * stride).wrapping_sub(back),
    ];
    let p = w.wrapping_add(2);
    // The loop for one block type (the operands are the same for both).
    macro_rules! rows4_loop {
        ($ty:ident) => {
            asm!(
                rows4_asm!($ty),
                p0 = inout(reg) p => _,
                p1 = inout(reg) p.wrapping_add(stride) => _,
                p2 = inout(reg) p.wrapping_add(2 * stride) => _,
                p3 = inout(reg) p.wrapping_add(3 * stride) => _,
                xp = inout(reg) xq => _,
                dxp = inout(reg) xd => _,
                acc = inout(reg) acc => _,
                inout("r0") offs[0] => _,
                inout("r2") offs[1] => _,
                inout("r4") offs[2] => _,
                inout("r8") offs[3] => _,
                inout("lr") nb / 4 => _,
            )
        };
    }
    // SAFETY: the caller guarantees every byte the loops read (each row's quants and scales for
    // b < nb, the activation blocks and scales). The assembly zeroes the lanes before reading
    // them and writes only `lanes`: the lane pointer stays in lanes 0-7 (it toggles between
    // lanes 0 and 4, the tail loop adds at most 3 lanes) and the 256-byte alignment lets it
    // return to lane 0 by clearing its low byte. q0-q7 are saved and restored.
    unsafe {
        if q4 {
            rows4_loop!(q4);
        } else {
            rows4_loop!(q8);
        }
        // SAFETY: the assembly wrote the four results to lane 0.
        (*acc).acc[0]
    }
}

/// Quantized GEMV (Q8_0 or Q4_0 weights): four rows at a time, the rest one by one.
fn gemv_quant(w: &Matrix<'_>, xq: &[i8], xd: &[f32], out: &mut [f32]) {
    let q4 = w.ty == GgmlType::Q4_0;
    let dot = if q4 { dot_q4_0_q8_0 } else { dot_q8_0_q8_0 };
    let out = &mut out[..w.rows];
    let rb = w.row_bytes();
    let bb = w.ty.type_size();
    let nb = (rb / bb).min(xq.len() / QK).min(xd.len());
    // The scale gather (VLDRH) wants halfword-aligned scales; blocks and rows have even sizes,
    // so that holds whenever the data starts at an even address (as GGUF tensor data does).
    if nb == 0 || w.data.len() < w.rows * rb || !(w.data.as_ptr() as usize).is_multiple_of(2) {
        for (r, o) in out.iter_mut().enumerate() {
            *o = dot(w.row(r), xq, xd);
        }
        return;
    }
    let mut groups = out.chunks_exact_mut(4);
    for (g, o4) in (&mut groups).enumerate() {
        let rows = &w.data[g * 4 * rb..(g * 4 + 4) * rb];
        // SAFETY: nb <= rb / bb, so blocks 0..nb of the four rows lie inside `rows` (4 * rb
        // bytes); nb <= xq.len() / 32 and nb <= xd.len().
        let r = unsafe { rows4(q4, rows.as_ptr(), rb, xq.as_ptr(), xd.as_ptr(), nb) };
        o4.copy_from_slice(&r);
    }
    let done = w.rows - groups.into_remainder().len();
    for (r, o) in out.iter_mut().enumerate().skip(done) {
        *o = dot(w.row(r), xq, xd);
    }
}

/// Scale offsets of four consecutive blocks from the quant pointer after their loads.
static Q8_SCALE_OFFS: [u32; 4] = back_offsets(Q8_0_BLOCK_BYTES);
static Q4_SCALE_OFFS: [u32; 4] = back_offsets(Q4_0_BLOCK_BYTES);

/// `[b * bytes - 4 * bytes - 2]` for b < 4, as wrapping u32 offsets.
const fn back_offsets(bytes: usize) -> [u32; 4] {
    let back = (4 * bytes + 2) as u32;
    [
        0u32.wrapping_sub(back),
        (bytes as u32).wrapping_sub(back),
        (2 * bytes as u32).wrapping_sub(back),
        (3 * bytes as u32).wrapping_sub(back),
    ]
}

/// Float part of four consecutive blocks of one row: sums r0/r2/r4/r8, scales gathered through
/// `{tbl}` from `{pw}`, four `dx` from `{dxp}`, added into `$acc` (q6: lanes 0-3, q7: 4-7).
macro_rules! scale_add4 {
    ($shift:literal, $acc:literal) => {
        concat!(
            "vldrw.u32 q4, [{tbl}]\n",
            "vldrh.u32 q5, [{pw}, q4]\n",
            "vcvtb.f32.f16 q5, q5\n",
            "vldrw.u32 q4, [{dxp}], #16\n",
            "vmul.f32 q5, q5, q4\n",
            "vmov q4[2], q4[0], r0, r4\n",
            "vmov q4[3], q4[1], r2, r8\n",
            $shift,
            "vcvt.f32.s32 q4, q4\n",
            "vmul.f32 q4, q4, q5\n",
            "vadd.f32 ",
            $acc,
            ", ",
            $acc,
            ", q4\n",
        )
    };
}

macro_rules! q8_block {
    ($r:literal) => {
        concat!(
            "vldrb.s8 q0, [{xp}], #16\n",
            "vldrb.s8 q1, [{xp}], #16\n",
            "vldrb.s8 q2, [{pw}], #16\n",
            "vldrb.s8 q3, [{pw}], #18\n",
            "vmladav.s8 ",
            $r,
            ", q2, q0\n",
            "vmladava.s8 ",
            $r,
            ", q3, q1\n",
        )
    };
}

macro_rules! q4_block {
    ($r:literal) => {
        concat!(
            "vmov.i8 q4, #0x88\n",
            "vmov.i8 q5, #0xf0\n",
            "vldrb.s8 q0, [{xp}], #16\n",
            "vldrb.s8 q1, [{xp}], #16\n",
            q4_row!("{pw}", $r),
        )
    };
}

/// One row over `n8` groups of eight blocks; returns the eight lanes.
///
/// # Safety
/// `8 * n8` blocks of `block_bytes` at `w`, `256 * n8` bytes at `xq` and `8 * n8` f32 at `xd`
/// (4-byte aligned, as any f32) must be readable; `n8 >= 1`.
#[inline(always)]
unsafe fn row_octets(q4: bool, w: *const u8, xq: *const i8, xd: *const f32, n8: usize) -> [f32; 8] {
    let mut acc = [0.0f32; 8];
    let pw = w.wrapping_add(2);
    // The loop for one block type: `$block` is `q4_block` or `q8_block`, `$shift` undoes the
    // Q4_0 decoding's factor 16, `$tbl` holds the scale offsets.
    macro_rules! octets_loop {
        ($block:ident, $shift:literal, $tbl:expr) => {
            asm!(
                "vpush {{d0-d15}}",
                "vmov.i32 q6, #0",
                "vmov.i32 q7, #0",
                "dls lr, lr",
                "2:",
                $block!("r0"),
                $block!("r2"),
                $block!("r4"),
                $block!("r8"),
                scale_add4!($shift, "q6"),
                $block!("r0"),
                $block!("r2"),
                $block!("r4"),
                $block!("r8"),
                scale_add4!($shift, "q7"),
                "le lr, 2b",
                "vstrw.32 q6, [{acc}]",
                "vstrw.32 q7, [{acc}, #16]",
                "vpop {{d0-d15}}",
                pw = inout(reg) pw => _,
                xp = inout(reg) xq => _,
                dxp = inout(reg) xd => _,
                tbl = in(reg) $tbl.as_ptr(),
                acc = in(reg) acc.as_mut_ptr(),
                out("r0") _,
                out("r2") _,
                out("r4") _,
                out("r8") _,
                inout("lr") n8 => _,
            )
        };
    }
    // SAFETY: the caller guarantees every byte read; the only memory written is `acc` (two
    // unaligned-safe VSTRW of 4-byte aligned f32). q0-q7 are saved and restored.
    unsafe {
        if q4 {
            octets_loop!(q4_block, "vshr.s32 q4, q4, #4\n", Q4_SCALE_OFFS);
        } else {
            octets_loop!(q8_block, "", Q8_SCALE_OFFS);
        }
    }
    acc
}

/// Exact integer sum of one block (Q8_0 or Q4_0 quants at `qs`) against 32 activation bytes.
///
/// # Safety
/// `qs` must point to the block's 32 (Q8_0) or 16 (Q4_0) quant bytes, `x` to 32 bytes.
#[inline(always)]
unsafe fn block_sum(q4: bool, qs: *const u8, x: *const i8) -> i32 {
    let s: i32;
    // SAFETY: the caller guarantees the bytes read; q0-q5 are saved and restored.
    unsafe {
        if q4 {
            asm!(
                "vpush {{d0-d11}}",
                q4_block!("r0"),
                "vpop {{d0-d11}}",
                "asr r0, r0, #4",
                pw = inout(reg) qs => _,
                xp = inout(reg) x => _,
                out("r0") s,
                options(pure, readonly),
            );
        } else {
            asm!(
                "vpush {{d0-d7}}",
                q8_block!("r0"),
                "vpop {{d0-d7}}",
                pw = inout(reg) qs => _,
                xp = inout(reg) x => _,
                out("r0") s,
                options(pure, readonly),
            );
        }
    }
    s
}

/// One quantized row times the Q8_0 activation: whole groups of eight blocks in vector lanes,
/// the remaining blocks with the scalar float part.
#[inline(always)]
fn dot_quant(q4: bool, row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    let bb = if q4 {
        Q4_0_BLOCK_BYTES
    } else {
        Q8_0_BLOCK_BYTES
    };
    let nb = (row.len() / bb).min(xq.len() / QK).min(xd.len());
    // Whole octets use a halfword gather for the scales: only from an even address.
    let n8 = if (row.as_ptr() as usize).is_multiple_of(2) {
        nb / 8
    } else {
        0
    };
    let mut acc = if n8 > 0 {
        // SAFETY: 8 * n8 <= nb blocks of the row, of xq and of xd exist (nb is their minimum).
        unsafe { row_octets(q4, row.as_ptr(), xq.as_ptr(), xd.as_ptr(), n8) }
    } else {
        [0.0f32; 8]
    };
    for b in 8 * n8..nb {
        let blk = &row[b * bb..(b + 1) * bb];
        let xs = &xq[b * QK..(b + 1) * QK];
        // SAFETY: `blk` is a whole block (bb bytes, quants from offset 2) and `xs` 32 bytes.
        let sumi = unsafe { block_sum(q4, blk.as_ptr().add(2), xs.as_ptr()) };
        let dw = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
        acc[b % 8] += sumi as f32 * (dw * xd[b]);
    }
    scalar::reduce8(acc)
}

/// Q8_0 row times Q8_0 activation (same block count and result as the scalar kernel).
pub fn dot_q8_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    dot_quant(false, row, xq, xd)
}

/// Q4_0 row times Q8_0 activation (same block count and result as the scalar kernel).
pub fn dot_q4_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    dot_quant(true, row, xq, xd)
}
