//! Kernel conformance firmware: runs every kernel of the ISA this build selects (feature `dsp`:
//! Cortex-M DSP, `helium`: Helium, neither: scalar) against the scalar specification on the
//! inputs of `cases.rs`, prints a summary through semihosting and exits with
//! [`fw::EXIT_PASS`] or [`fw::EXIT_MISMATCH`] (QEMU's exit code).
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;

use cortex_m as _;
use cortex_m_rt::entry;
use cortex_m_semihosting::hprintln;
use mhmoe::kernels::Kernels;
use mhmoe::Isa;

mod cases;
mod fw;

#[cfg(feature = "helium")]
type Under = mhmoe::kernels::arm_mve::Helium;
#[cfg(all(feature = "dsp", not(feature = "helium")))]
type Under = mhmoe::kernels::arm_dsp::CortexMDsp;
#[cfg(not(any(feature = "dsp", feature = "helium")))]
type Under = mhmoe::kernels::Scalar;

static mut BUFS: cases::Bufs = cases::Bufs::ZERO;

#[entry]
fn main() -> ! {
    fw::paint_stack();
    // SAFETY: the only reference ever taken to BUFS, and interrupts use none.
    let bufs = unsafe { &mut *addr_of_mut!(BUFS) };
    let isa = Under::ISA;
    hprintln!(
        "kernel-check: {} kernels against scalar (selected ISA: {})",
        isa.name(),
        Isa::detect().name()
    );
    let mut print = |a: core::fmt::Arguments<'_>| hprintln!("{}", a);
    let mut ck = cases::Checker::new(&mut print);
    cases::run::<Under>(bufs, &mut ck);
    ck.summary(isa.name());
    let (_, bad) = ck.totals();
    let selected = Isa::detect() == isa;
    if !selected {
        hprintln!(
            "ISA selection: detect() gives {}, not {}",
            Isa::detect().name(),
            isa.name()
        );
    }
    hprintln!("stack high-water: {} bytes", fw::stack_high_water());
    fw::exit(if bad == 0 && selected {
        fw::EXIT_PASS
    } else {
        fw::EXIT_MISMATCH
    })
}
