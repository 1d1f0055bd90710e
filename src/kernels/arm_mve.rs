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
//! kept: `(a0 + a4) + (a2 + a6)` and `(a1 + a5) + (a3 + a7)`, then their sum. The Q8_0 GEMV
//! (`gemv_q8_0_small`, `gemv_q8_0_long`) keeps each row's lanes in registers and writes the
//! first term of a lane instead of adding it to +0.0, then adds `+ 0.0` to each result (the same
//! bits; see `gemv_q8_0_small`).
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

/// Joins assembly lines into one template string, a newline after each.
macro_rules! lines {
    ($($line:expr),+ $(,)?) => {
        concat!($($line, "\n"),+)
    };
}

/// One block position of [`gemv_q8_0_small`] and [`gemv_q8_0_long`]: the block's activation
/// halves at `[$base, #$off]` and `[$base, #$off + 16]`, its `dx` at `[r8, #$dx]`; the four
/// rows' quants at r1, r3, r5 and r9 (each advancing to the next block) give the block sums r0,
/// r2, r4 and r10; the scales are gathered from the row pointers' block start (offsets in q6);
/// the terms `sumi as f32 * (dw * dx)` go to `$lane`: written (`write`) or added (`add`) to a
/// register, or written (`write_stack`) or added (`add_stack`) to the lane at `[sp, #$lane]`.
macro_rules! q8_small_pos {
    ($base:literal, $off:literal, $dx:literal, $lane:literal, $variant:ident) => {
        lines!(
            concat!("vldrb.s8 q4, [", $base, ", #", $off, "]"),
            "vldrb.s8 q5, [r1], #16",
            "vmladav.s8 r0, q5, q4",
            "vldrb.s8 q5, [r3], #16",
            "vmladav.s8 r2, q5, q4",
            "vldrb.s8 q5, [r5], #16",
            "vmladav.s8 r4, q5, q4",
            "vldrb.s8 q5, [r9], #16",
            "vmladav.s8 r10, q5, q4",
            concat!("vldrb.s8 q4, [", $base, ", #", $off, " + 16]"),
            "vldrb.s8 q5, [r1], #18",
            "vmladava.s8 r0, q5, q4",
            "vldrb.s8 q5, [r3], #18",
            "vmladava.s8 r2, q5, q4",
            "vldrb.s8 q5, [r5], #18",
            "vmladava.s8 r4, q5, q4",
            "vldrb.s8 q5, [r9], #18",
            "vmladava.s8 r10, q5, q4",
            "vldrh.u32 q5, [r1, q6]",
            "vmov q4[2], q4[0], r0, r4",
            "vmov q4[3], q4[1], r2, r10",
            concat!("ldr.w r0, [r8, #", $dx, "]"),
            "vcvtb.f32.f16 q5, q5",
            "vmul.f32 q5, q5, r0",
            "vcvt.f32.s32 q4, q4",
            q8_small_pos!(@$variant, $lane),
        )
    };
    (@write, $lane:literal) => {
        concat!("vmul.f32 ", $lane, ", q4, q5")
    };
    (@add, $lane:literal) => {
        lines!(
            "vmul.f32 q4, q4, q5",
            concat!("vadd.f32 ", $lane, ", ", $lane, ", q4"),
        )
    };
    (@write_stack, $off:literal) => {
        lines!("vmul.f32 q4, q4, q5", concat!("vstrw.32 q4, [sp, #", $off, "]"))
    };
    (@add_stack, $off:literal) => {
        lines!(
            "vmul.f32 q4, q4, q5",
            concat!("vldrw.u32 q5, [sp, #", $off, "]"),
            "vadd.f32 q5, q5, q4",
            concat!("vstrw.32 q5, [sp, #", $off, "]"),
        )
    };
}

/// The end of a group in [`gemv_q8_0_small`]: `(q0 + q2) + (q1 + q3)`, `+ 0.0`, the four
/// results scattered (q7 advances to the next outputs), and the next group.
macro_rules! q8_small_end {
    () => {
        lines!(
            "vadd.f32 q0, q0, q2",
            "vadd.f32 q1, q1, q3",
            "vadd.f32 q0, q0, q1",
            "vmov.i32 q4, #0",
            "vadd.f32 q0, q0, q4",
            "vstrw.32 q0, [q7, #4]!",
            "le lr, 8b",
        )
    };
}

/// Inputs of [`gemv_q8_0_small`], read at fixed offsets (checked below).
#[repr(C, align(16))]
struct SmallQ8 {
    /// Scale gather offsets: row lane `k`'s block scale from the row-0 quant pointer after the
    /// block's loads, `k * lane_stride - 36`.
    gather: [u32; 4],
    /// Output scatter addresses minus 4: `out + 4 * k * groups - 4`.
    scatter: [u32; 4],
    /// Row 0's first quant (`w + 2`).
    w: *const u8,
    /// Bytes from one row lane to the next (`groups * row_bytes`).
    lane_stride: usize,
    /// `xq + 32 * (nb - span)`: block position `j`'s activation at `+ 32 * j`.
    xq: *const i8,
    /// `xd + 4 * (nb - span)`: block position `j`'s scale at `+ 4 * j`.
    xd: *const f32,
    /// Groups of four rows.
    groups: usize,
    /// The first block position, `span - nb`.
    first: usize,
    /// The block positions used: 4 (positions 0-3) for at most four blocks, else 8.
    span: usize,
}

const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(SmallQ8, scatter) == 16);
    assert!(offset_of!(SmallQ8, w) == 32);
    assert!(offset_of!(SmallQ8, lane_stride) == 36);
    assert!(offset_of!(SmallQ8, xq) == 40);
    assert!(offset_of!(SmallQ8, xd) == 44);
    assert!(offset_of!(SmallQ8, groups) == 48);
    assert!(offset_of!(SmallQ8, first) == 52);
    assert!(offset_of!(SmallQ8, span) == 56);
};

/// Q8_0 GEMV of `4 * groups` rows of `1 <= nb <= 8` blocks (exactly `row_bytes = 34 * nb`)
/// with each row's eight lanes in registers.
///
/// Group `g` computes rows `g`, `g + G`, `g + 2G` and `g + 3G` (`G` = groups) in the four
/// vector lanes; their pointers walk forward through a row, which ends where the next group's
/// rows start, and the four results go out with one scatter store. The block code is written
/// out for eight block positions, and a group enters it at position `span - nb` (`span` = 8,
/// or 4 for at most four blocks, which then end after position 3), so block `b` runs at
/// position `b + span - nb` and leaves its terms in q(`(b + span - nb) % 4`): positions 0-3
/// write them, 4-7 add them (the lanes not written are zeroed first). With at most eight
/// blocks, `reduce8`'s first step `a[l] + a[l + 4]` adds the terms of blocks `l` and `l + 4`,
/// which is what each register holds (with at most four blocks, `a[l + 4]` is +0.0 and the
/// register holds `a[l]`), so q0-q3 are the four `s[l]` rotated by `nb % 4`; the
/// remaining `(s0 + s2) + (s1 + s3)` gives the same bits for every rotation (it only swaps the
/// operands of single additions), and is computed as `(q0 + q2) + (q1 + q3)`. Written terms
/// skip the specification's `+0.0 + term`, which differs only for -0.0; one `+ 0.0` after the
/// reduction restores the exact bits, as in the DSP GEMV (`super::arm_dsp`). The rest is the
/// scalar kernel's operations in its order, lane by lane.
///
/// Registers: r1/r3/r5/r9 row pointers, r0/r2/r4/r10 block sums (r0 then `dx`), r11/r12 the
/// activation of positions 0-3 and 4-7, r8 the `dx` of position 0, lr the group counter (a
/// low-overhead loop); q0-q3 lanes, q4/q5 working registers, q6 gather offsets, q7 scatter
/// addresses. The stack holds the entry addresses of positions 0-3 and the group entry. Rows of
/// at most four blocks run a second copy of positions 0-3 that ends the group, so neither
/// case pays a branch between positions.
///
/// # Safety
/// `p` as [`SmallQ8`] describes, for `groups >= 1` groups and `nb` blocks: `4 * groups` rows
/// of `34 * nb` bytes readable from `w - 2` (an even address), `32 * nb` bytes at the
/// activation and `nb` f32 at its scales, and `out[..4 * groups]` writable.
#[inline(never)]
unsafe fn gemv_q8_0_small(p: &SmallQ8) {
    // SAFETY: the caller guarantees every address the loads, gathers and the scatter store use;
    // the stack area is reserved and released here, code addresses are those of this block's
    // labels (word-aligned, so `ADR` is exact); q0-q7 are saved and restored, every core
    // register used is declared.
    unsafe {
        asm!(
            "vpush {{d0-d15}}",
            "sub sp, sp, #24",
            // [sp + 4j]: block position j's code (j < 4; for at most four blocks, the copy of
            // positions 0-3 that ends the group).
            "ldr r2, [r4, #56]",
            "cmp r2, #8",
            "bne 1f",
            "adr.w r0, 10f",
            "adr.w r1, 11f",
            "adr.w r2, 12f",
            "adr.w r3, 13f",
            "b 2f",
            "1:",
            "adr.w r0, 20f",
            "adr.w r1, 21f",
            "adr.w r2, 22f",
            "adr.w r3, 23f",
            "2:",
            "orr r0, r0, #1",
            "orr r1, r1, #1",
            "orr r2, r2, #1",
            "orr r3, r3, #1",
            "stm sp, {{r0-r3}}",
            // [sp + 20]: the first position's code; [sp + 16]: the group entry, that code or (if
            // it is not position 0, so some lanes are not written) the zeroing stub.
            "ldr r2, [r4, #52]",
            "ldr r0, [sp, r2, lsl #2]",
            "str r0, [sp, #20]",
            "cmp r2, #0",
            "beq 1f",
            "adr.w r0, 9f",
            "orr r0, r0, #1",
            "1:",
            "str r0, [sp, #16]",
            "vldrw.u32 q6, [r4]",
            "vldrw.u32 q7, [r4, #16]",
            "ldrd r1, r0, [r4, #32]",
            "add r3, r1, r0",
            "add r5, r3, r0",
            "add r9, r5, r0",
            "ldrd r11, r8, [r4, #40]",
            "add r12, r11, #128",
            "ldr lr, [r4, #48]",
            "dls lr, lr",
            "8:",
            "ldr pc, [sp, #16]",
            // Zeroes the lanes below the first position (at most 3: q3 is always written).
            ".p2align 2",
            "9:",
            "vmov.i32 q0, #0",
            "vmov.i32 q1, #0",
            "vmov.i32 q2, #0",
            "ldr pc, [sp, #20]",
            // Eight positions (5 to 8 blocks).
            ".p2align 2",
            "10:",
            q8_small_pos!("r11", 0, 0, "q0", write),
            ".p2align 2",
            "11:",
            q8_small_pos!("r11", 32, 4, "q1", write),
            ".p2align 2",
            "12:",
            q8_small_pos!("r11", 64, 8, "q2", write),
            ".p2align 2",
            "13:",
            q8_small_pos!("r11", 96, 12, "q3", write),
            q8_small_pos!("r12", 0, 16, "q0", add),
            q8_small_pos!("r12", 32, 20, "q1", add),
            q8_small_pos!("r12", 64, 24, "q2", add),
            q8_small_pos!("r12", 96, 28, "q3", add),
            q8_small_end!(),
            "b 3f",
            // Four positions (1 to 4 blocks).
            ".p2align 2",
            "20:",
            q8_small_pos!("r11", 0, 0, "q0", write),
            ".p2align 2",
            "21:",
            q8_small_pos!("r11", 32, 4, "q1", write),
            ".p2align 2",
            "22:",
            q8_small_pos!("r11", 64, 8, "q2", write),
            ".p2align 2",
            "23:",
            q8_small_pos!("r11", 96, 12, "q3", write),
            q8_small_end!(),
            "3:",
            "add sp, sp, #24",
            "vpop {{d0-d15}}",
            inout("r4") core::ptr::from_ref(p) => _,
            out("r0") _,
            out("r1") _,
            out("r2") _,
            out("r3") _,
            out("r5") _,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
            out("r12") _,
            out("lr") _,
        );
    }
}

/// Inputs of [`gemv_q8_0_long`], read at fixed offsets (checked below).
#[repr(C, align(16))]
struct LongQ8 {
    /// As [`SmallQ8::gather`].
    gather: [u32; 4],
    /// As [`SmallQ8::scatter`].
    scatter: [u32; 4],
    /// Row 0's first quant (`w + 2`).
    w: *const u8,
    /// Bytes from one row lane to the next (`groups * row_bytes`).
    lane_stride: usize,
    /// `xq - 32 * first`: block position `j`'s activation in the first pass at `+ 32 * j`.
    xq: *const i8,
    /// `xd - 4 * first`: block position `j`'s scale in the first pass at `+ 4 * j`.
    xd: *const f32,
    /// Groups of four rows.
    groups: usize,
    /// The first block position, `(8 - nb % 8) % 8`.
    first: usize,
    /// Passes after the first, `(nb - 1) / 8` (at least 1).
    passes: usize,
}

const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(LongQ8, scatter) == 16);
    assert!(offset_of!(LongQ8, w) == 32);
    assert!(offset_of!(LongQ8, lane_stride) == 36);
    assert!(offset_of!(LongQ8, xq) == 40);
    assert!(offset_of!(LongQ8, xd) == 44);
    assert!(offset_of!(LongQ8, groups) == 48);
    assert!(offset_of!(LongQ8, first) == 52);
    assert!(offset_of!(LongQ8, passes) == 56);
};

/// Q8_0 GEMV of `4 * groups` rows of `nb > 8` blocks (exactly `row_bytes = 34 * nb`): the
/// scheme of [`gemv_q8_0_small`] over all eight lanes.
///
/// Lanes 0-3 of the four rows are q0-q3, lanes 4-7 four vectors on the stack. The blocks run in
/// passes over eight block positions (position `j` adds to lane `j`): the first pass enters at
/// position `(8 - nb % 8) % 8` and writes its terms (the lanes it does not reach are zeroed
/// first), the others add them; block `b` so lands in lane `(b - nb) % 8`, the
/// specification's lanes rotated by `nb % 8`, which `reduce8` does not see (its first step
/// pairs lanes `l` and `l + 4`, which stay paired, and the rest only swaps the operands of
/// single additions). Written terms skip `+0.0 + term`; one `+ 0.0` after the reduction
/// restores the exact bits. The activation and `dx` bases advance by one pass (r11/r12 by 256
/// bytes, r8 by 32) after each pass; lr counts the passes after the first (a low-overhead
/// loop), the group count is on the stack.
///
/// # Safety
/// `p` as [`LongQ8`] describes, for `groups >= 1` groups and `nb > 8` blocks: `4 * groups` rows
/// of `34 * nb` bytes readable from `w - 2` (an even address), `32 * nb` bytes at the
/// activation and `nb` f32 at its scales, and `out[..4 * groups]` writable.
#[inline(never)]
unsafe fn gemv_q8_0_long(p: &LongQ8) {
    // SAFETY: the caller guarantees every address the loads, gathers and the scatter store use;
    // the stack area (lanes 4-7 at sp, then the entry addresses and counters) is reserved and
    // released here; code addresses are those of this block's labels (word-aligned, so `ADR` is
    // exact); q0-q7 are saved and restored, every core register used is declared.
    unsafe {
        asm!(
            "vpush {{d0-d15}}",
            "sub sp, sp, #128",
            // [sp + 64 + 4j]: first-pass position j's code.
            "adr.w r0, 10f",
            "adr.w r1, 11f",
            "adr.w r2, 12f",
            "adr.w r3, 13f",
            "orr r0, r0, #1",
            "orr r1, r1, #1",
            "orr r2, r2, #1",
            "orr r3, r3, #1",
            "add r5, sp, #64",
            "stm r5!, {{r0-r3}}",
            "adr.w r0, 14f",
            "adr.w r1, 15f",
            "adr.w r2, 16f",
            "adr.w r3, 17f",
            "orr r0, r0, #1",
            "orr r1, r1, #1",
            "orr r2, r2, #1",
            "orr r3, r3, #1",
            "stm r5!, {{r0-r3}}",
            // [sp + 100]: the first position's code; [sp + 96]: the group entry (the zeroing
            // stub unless the first pass starts at position 0).
            "ldr r2, [r4, #52]",
            "add r0, sp, #64",
            "ldr r0, [r0, r2, lsl #2]",
            "str r0, [sp, #100]",
            "cmp r2, #0",
            "beq 1f",
            "adr.w r0, 9f",
            "orr r0, r0, #1",
            "1:",
            "str r0, [sp, #96]",
            // [sp + 104]: first-pass activation base, [sp + 108]: its dx base, [sp + 112]: groups
            // left, [sp + 116]: passes after the first.
            "ldrd r0, r1, [r4, #40]",
            "strd r0, r1, [sp, #104]",
            "ldrd r0, r1, [r4, #48]",
            "str r0, [sp, #112]",
            "ldr r0, [r4, #56]",
            "str r0, [sp, #116]",
            "vldrw.u32 q6, [r4]",
            "vldrw.u32 q7, [r4, #16]",
            "ldrd r1, r0, [r4, #32]",
            "add r3, r1, r0",
            "add r5, r3, r0",
            "add r9, r5, r0",
            // A group.
            "7:",
            "ldrd r11, r8, [sp, #104]",
            "add r12, r11, #128",
            "ldr pc, [sp, #96]",
            // Zeroes the lanes below the first position (at most 7: the lane of position 7, at
            // sp + 48, is always written).
            ".p2align 2",
            "9:",
            "vmov.i32 q0, #0",
            "vmov.i32 q1, #0",
            "vmov.i32 q2, #0",
            "vmov.i32 q3, #0",
            "vstrw.32 q0, [sp]",
            "vstrw.32 q0, [sp, #16]",
            "vstrw.32 q0, [sp, #32]",
            "ldr pc, [sp, #100]",
            // The first pass: terms written.
            ".p2align 2",
            "10:",
            q8_small_pos!("r11", 0, 0, "q0", write),
            ".p2align 2",
            "11:",
            q8_small_pos!("r11", 32, 4, "q1", write),
            ".p2align 2",
            "12:",
            q8_small_pos!("r11", 64, 8, "q2", write),
            ".p2align 2",
            "13:",
            q8_small_pos!("r11", 96, 12, "q3", write),
            ".p2align 2",
            "14:",
            q8_small_pos!("r12", 0, 16, 0, write_stack),
            ".p2align 2",
            "15:",
            q8_small_pos!("r12", 32, 20, 16, write_stack),
            ".p2align 2",
            "16:",
            q8_small_pos!("r12", 64, 24, 32, write_stack),
            ".p2align 2",
            "17:",
            q8_small_pos!("r12", 96, 28, 48, write_stack),
            "add r11, r11, #256",
            "add r12, r12, #256",
            "add r8, r8, #32",
            "ldr lr, [sp, #116]",
            "dls lr, lr",
            // The other passes: terms added.
            "2:",
            q8_small_pos!("r11", 0, 0, "q0", add),
            q8_small_pos!("r11", 32, 4, "q1", add),
            q8_small_pos!("r11", 64, 8, "q2", add),
            q8_small_pos!("r11", 96, 12, "q3", add),
            q8_small_pos!("r12", 0, 16, 0, add_stack),
            q8_small_pos!("r12", 32, 20, 16, add_stack),
            q8_small_pos!("r12", 64, 24, 32, add_stack),
            q8_small_pos!("r12", 96, 28, 48, add_stack),
            "add r11, r11, #256",
            "add r12, r12, #256",
            "add r8, r8, #32",
            "le lr, 2b",
            // reduce8: lanes l + (l + 4), then (s0 + s2) + (s1 + s3); + 0.0; scatter.
            "vldrw.u32 q4, [sp]",
            "vadd.f32 q0, q0, q4",
            "vldrw.u32 q4, [sp, #16]",
            "vadd.f32 q1, q1, q4",
            "vldrw.u32 q4, [sp, #32]",
            "vadd.f32 q2, q2, q4",
            "vldrw.u32 q4, [sp, #48]",
            "vadd.f32 q3, q3, q4",
            "vadd.f32 q0, q0, q2",
            "vadd.f32 q1, q1, q3",
            "vadd.f32 q0, q0, q1",
            "vmov.i32 q4, #0",
            "vadd.f32 q0, q0, q4",
            "vstrw.32 q0, [q7, #4]!",
            "ldr r0, [sp, #112]",
            "subs r0, r0, #1",
            "str r0, [sp, #112]",
            "bne 7b",
            "add sp, sp, #128",
            "vpop {{d0-d15}}",
            inout("r4") core::ptr::from_ref(p) => _,
            out("r0") _,
            out("r1") _,
            out("r2") _,
            out("r3") _,
            out("r5") _,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
            out("r12") _,
            out("lr") _,
        );
    }
}

/// The Q8_0 GEMV through [`gemv_q8_0_long`] for the first `4 * (rows / 4)` rows, the rest one
/// by one.
///
/// # Safety
/// `w` is Q8_0 with `nb > 8` blocks per row and `row_bytes == 34 * nb`, `w.data` holds
/// `w.rows >= 4` rows from an even address, `nb <= xq.len() / 32`, `nb <= xd.len()` and
/// `out.len() == w.rows`.
#[inline(never)]
unsafe fn gemv_q8_0_long_rows(w: &Matrix<'_>, xq: &[i8], xd: &[f32], out: &mut [f32], nb: usize) {
    let groups = w.rows / 4;
    let first = (8 - nb % 8) % 8;
    let (o, lane_stride) = (out.as_mut_ptr() as usize, groups * w.row_bytes());
    let lq = LongQ8 {
        gather: core::array::from_fn(|k| (k * lane_stride).wrapping_sub(36) as u32),
        scatter: core::array::from_fn(|k| (o + 4 * k * groups).wrapping_sub(4) as u32),
        w: w.data.as_ptr().wrapping_add(2),
        lane_stride,
        xq: xq.as_ptr().wrapping_sub(32 * first),
        xd: xd.as_ptr().wrapping_sub(first),
        groups,
        first,
        passes: (nb - 1) / 8,
    };
    // SAFETY: nb > 8 and every row is 34 * nb bytes; w.data holds w.rows >= 4 * groups rows
    // from an even address; nb <= xq.len() / 32 and nb <= xd.len(); `out` has w.rows >= 4 *
    // groups elements (the caller's guarantees).
    unsafe { gemv_q8_0_long(&lq) };
    for (r, o) in out.iter_mut().enumerate().skip(4 * groups) {
        *o = dot_q8_0_q8_0(w.row(r), xq, xd);
    }
}

/// The Q8_0 GEMV through [`gemv_q8_0_small`] for the first `4 * (rows / 4)` rows, the rest
/// one by one.
///
/// # Safety
/// `w` is Q8_0 with `1 <= nb <= 8` blocks per row and `row_bytes == 34 * nb`, `w.data` holds
/// `w.rows >= 4` rows from an even address, `nb <= xq.len() / 32`, `nb <= xd.len()` and
/// `out.len() == w.rows`.
#[inline(always)]
unsafe fn gemv_q8_0_rows_in_lanes(
    w: &Matrix<'_>,
    xq: &[i8],
    xd: &[f32],
    out: &mut [f32],
    nb: usize,
) {
    let groups = w.rows / 4;
    let span = if nb <= 4 { 4 } else { 8 };
    let (o, lane_stride) = (out.as_mut_ptr() as usize, groups * w.row_bytes());
    let sq = SmallQ8 {
        gather: core::array::from_fn(|k| (k * lane_stride).wrapping_sub(36) as u32),
        scatter: core::array::from_fn(|k| (o + 4 * k * groups).wrapping_sub(4) as u32),
        w: w.data.as_ptr().wrapping_add(2),
        lane_stride,
        xq: xq.as_ptr().wrapping_add(32 * nb).wrapping_sub(32 * span),
        xd: xd.as_ptr().wrapping_add(nb).wrapping_sub(span),
        groups,
        first: span - nb,
        span,
    };
    // SAFETY: 1 <= nb <= 8 and every row is 34 * nb bytes; w.data holds w.rows >= 4 * groups
    // rows from an even address; nb <= xq.len() / 32 and nb <= xd.len(); `out` has w.rows >=
    // 4 * groups elements (the caller's guarantees).
    unsafe { gemv_q8_0_small(&sq) };
    for (r, o) in out.iter_mut().enumerate().skip(4 * groups) {
        *o = dot_q8_0_q8_0(w.row(r), xq, xd);
    }
}

/// Quantized GEMV (Q8_0 or Q4_0 weights): Q8_0 rows of at most eight blocks through
/// [`gemv_q8_0_rows_in_lanes`], others four rows at a time ([`gemv_rows4`]); both take the
/// remaining rows one by one.
fn gemv_quant(w: &Matrix<'_>, xq: &[i8], xd: &[f32], out: &mut [f32]) {
    let q4 = w.ty == GgmlType::Q4_0;
    let out = &mut out[..w.rows];
    let rb = w.row_bytes();
    let bb = w.ty.type_size();
    let nb = (rb / bb).min(xq.len() / QK).min(xd.len());
    // The scale gathers (VLDRH) want halfword-aligned scales; blocks and rows have even sizes,
    // so that holds whenever the data starts at an even address (as GGUF tensor data does).
    if nb == 0 || w.data.len() < w.rows * rb || !(w.data.as_ptr() as usize).is_multiple_of(2) {
        let dot = if q4 { dot_q4_0_q8_0 } else { dot_q8_0_q8_0 };
        for (r, o) in out.iter_mut().enumerate() {
            *o = dot(w.row(r), xq, xd);
        }
        return;
    }
    if !q4 && nb <= 8 && rb == nb * bb && w.rows >= 4 {
        // SAFETY: Q8_0 with 1 <= nb <= 8 blocks and rows of exactly 34 * nb bytes, w.rows >= 4
        // rows held in full from an even address, nb <= xq.len() / 32, nb <= xd.len(), and
        // out.len() == w.rows (all checked above).
        unsafe { gemv_q8_0_rows_in_lanes(w, xq, xd, out, nb) };
    } else if !q4 && rb == nb * bb && w.rows >= 4 {
        // SAFETY: as above, with nb > 8.
        unsafe { gemv_q8_0_long_rows(w, xq, xd, out, nb) };
    } else {
        gemv_rows4(q4, w, xq, xd, out, nb);
    }
}

/// The GEMV of [`rows4`] groups, then the remaining rows one by one. `nb >= 1` is the block
/// count (at most the row's, the activation's and its scales'), `w.data` holds every row from
/// an even address, `out.len() == w.rows`.
#[inline(never)]
fn gemv_rows4(q4: bool, w: &Matrix<'_>, xq: &[i8], xd: &[f32], out: &mut [f32], nb: usize) {
    let dot = if q4 { dot_q4_0_q8_0 } else { dot_q8_0_q8_0 };
    let rb = w.row_bytes();
    let mut groups = out.chunks_exact_mut(4);
    for (g, o4) in (&mut groups).enumerate() {
        let rows = &w.data[g * 4 * rb..(g * 4 + 4) * rb];
        // SAFETY: nb <= rb / (block bytes), so blocks 0..nb of the four rows lie inside `rows`
        // (4 * rb bytes, from an even address: `w.data` starts at one and rb is even);
        // nb <= xq.len() / 32 and nb <= xd.len().
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
