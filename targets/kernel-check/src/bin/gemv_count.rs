//! Instruction-count workload for tools/qemu-insn-count: one 64 x 256 GEMV (Q8_0, then Q4_0)
//! with the scalar kernels and with the ISA this build selects, each between calls of
//! [`mark_begin`] and [`mark_end`], whose addresses the TCG plugin watches. Also the same
//! matrix as 64 single-row dot products (the path grouped experts take), then the Q8_0 GEMV of
//! 64 rows of other lengths ([`MORE_COLS`], labelled `64xC`). Prints one line per measured
//! interval, in order; the plugin prints the counts in the same order.
#![no_std]
#![no_main]

use core::fmt::Write;
use core::hint::black_box;
use core::ptr::addr_of_mut;

use cortex_m as _;
use cortex_m_rt::entry;
use cortex_m_semihosting::hprintln;
use mhmoe::kernels::{Act, Kernels, Scalar};
use mhmoe::model::Matrix;
use mhmoe::quant::{GgmlType, QK};

#[path = "../cases.rs"]
#[allow(dead_code)]
mod cases;
#[path = "../fw.rs"]
mod fw;

#[cfg(feature = "helium")]
type Fast = mhmoe::kernels::arm_mve::Helium;
#[cfg(all(feature = "dsp", not(feature = "helium")))]
type Fast = mhmoe::kernels::arm_dsp::CortexMDsp;
#[cfg(not(any(feature = "dsp", feature = "helium")))]
type Fast = mhmoe::kernels::Scalar;

const ROWS: usize = 64;
const COLS: usize = 256;
/// Row lengths of the extra Q8_0 GEMV intervals (64 rows each).
const MORE_COLS: [usize; 4] = [128, 512, 1024, 2048];
/// The longest row measured.
const MAX_COLS: usize = 2048;

static mut BEGIN: u32 = 0;
static mut END: u32 = 0;

/// The plugin starts counting when this function's first instruction executes.
#[inline(never)]
#[no_mangle]
pub extern "C" fn mark_begin(tag: u32) {
    // SAFETY: a plain volatile store to a static (it keeps the two markers distinct functions).
    unsafe { addr_of_mut!(BEGIN).write_volatile(tag) };
}

/// The plugin stops counting (and reports) when this function's first instruction executes.
#[inline(never)]
#[no_mangle]
pub extern "C" fn mark_end(tag: u32) {
    // SAFETY: as in `mark_begin`.
    unsafe { addr_of_mut!(END).write_volatile(tag) };
}

/// A short label written with `write!` (no allocator).
struct Label {
    buf: [u8; 48],
    len: usize,
}

impl Label {
    fn new() -> Self {
        Label {
            buf: [0; 48],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl Write for Label {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(core::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

static mut W: [u8; ROWS * MAX_COLS / QK * 34] = [0; ROWS * MAX_COLS / QK * 34];

fn measure(n: &mut u32, label: &str, f: impl FnOnce()) {
    hprintln!("interval {}: {}", n, label);
    mark_begin(*n);
    f();
    mark_end(*n);
    *n += 1;
}

#[entry]
fn main() -> ! {
    fw::paint_stack();
    // SAFETY: the only reference ever taken to W.
    let w = unsafe { &mut *addr_of_mut!(W) };
    let mut rng = cases::Rng::new(42);
    let mut xq = [0i8; MAX_COLS];
    let mut xd = [0.0f32; MAX_COLS / QK];
    for q in xq.iter_mut() {
        *q = rng.next_u64() as i8;
    }
    for d in xd.iter_mut() {
        *d = mhmoe::quant::f16_to_f32(0x2000 | (rng.next_u64() as u16 & 0x3FF));
    }
    for b in w.iter_mut() {
        *b = rng.next_u64() as u8;
    }
    let act = Act {
        x: &[],
        q: &xq[..COLS],
        d: &xd[..COLS / QK],
    };
    let mut out = [0.0f32; ROWS];
    let mut ref_out = [0.0f32; ROWS];
    hprintln!(
        "gemv-count: {} vs scalar, {}x{} ({} MACs)",
        Fast::ISA.name(),
        ROWS,
        COLS,
        ROWS * COLS
    );
    let mut n = 0;
    measure(&mut n, "empty", || {});
    let mut ok = true;
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
        let bb = ty.type_size();
        for blk in w[..ROWS * COLS / QK * bb].chunks_exact_mut(bb) {
            let d = 0x2400u16 | (blk[2] as u16 & 0x3FF);
            blk[..2].copy_from_slice(&d.to_le_bytes());
        }
        let m = Matrix::new(ty, ROWS, COLS, &w[..ROWS * COLS / QK * bb]).expect("a whole matrix");
        measure(
            &mut n,
            match ty {
                GgmlType::Q8_0 => "gemv Q8_0 scalar",
                _ => "gemv Q4_0 scalar",
            },
            || Scalar::gemv(black_box(&m), black_box(&act), black_box(&mut ref_out)),
        );
        measure(
            &mut n,
            match ty {
                GgmlType::Q8_0 => "gemv Q8_0 isa",
                _ => "gemv Q4_0 isa",
            },
            || Fast::gemv(black_box(&m), black_box(&act), black_box(&mut out)),
        );
        ok &= out
            .iter()
            .zip(&ref_out)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        measure(
            &mut n,
            match ty {
                GgmlType::Q8_0 => "rows Q8_0 scalar",
                _ => "rows Q4_0 scalar",
            },
            || {
                for (r, o) in ref_out.iter_mut().enumerate() {
                    *o = Scalar::dot_row(ty, black_box(m.row(r)), &act);
                }
            },
        );
        measure(
            &mut n,
            match ty {
                GgmlType::Q8_0 => "rows Q8_0 isa",
                _ => "rows Q4_0 isa",
            },
            || {
                for (r, o) in out.iter_mut().enumerate() {
                    *o = Fast::dot_row(ty, black_box(m.row(r)), &act);
                }
            },
        );
        ok &= out
            .iter()
            .zip(&ref_out)
            .all(|(a, b)| a.to_bits() == b.to_bits());
    }
    for cols in MORE_COLS {
        let data = &mut w[..ROWS * cols / QK * 34];
        for blk in data.chunks_exact_mut(34) {
            let d = 0x2400u16 | (blk[2] as u16 & 0x3FF);
            blk[..2].copy_from_slice(&d.to_le_bytes());
        }
        let m = Matrix::new(GgmlType::Q8_0, ROWS, cols, data).expect("a whole matrix");
        let act = Act {
            x: &[],
            q: &xq[..cols],
            d: &xd[..cols / QK],
        };
        let mut label = Label::new();
        let _ = write!(label, "gemv Q8_0 scalar {ROWS}x{cols}");
        measure(&mut n, label.as_str(), || {
            Scalar::gemv(black_box(&m), black_box(&act), black_box(&mut ref_out))
        });
        let mut label = Label::new();
        let _ = write!(label, "gemv Q8_0 isa {ROWS}x{cols}");
        measure(&mut n, label.as_str(), || {
            Fast::gemv(black_box(&m), black_box(&act), black_box(&mut out))
        });
        ok &= out
            .iter()
            .zip(&ref_out)
            .all(|(a, b)| a.to_bits() == b.to_bits());
    }
    hprintln!("results identical: {}", ok);
    hprintln!("stack high-water: {} bytes", fw::stack_high_water());
    fw::exit(if ok { fw::EXIT_PASS } else { fw::EXIT_MISMATCH })
}
