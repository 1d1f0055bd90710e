//! mhmoe demo on the NUCLEO-H743ZI2 (STM32H743, Cortex-M7, DSP kernels): generates text from
//! the demo model in flash and logs with defmt over RTT (see README.md and ../demo-fw).
//!
//! Clocks stay at their reset values (64 MHz HSI, flash at its reset wait states); only the
//! Cortex-M7 caches are turned on.
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;

use demo_fw::{entry, Aligned, AlignedBuffer, Demo};

// MODEL_LEN, CTX, STATE_BYTES, TOKENIZER_WORDS: the exact sizes, computed by build.rs from the
// model (mhmoe::build::Sizing); TOKENS: the demo's.
include!(concat!(env!("OUT_DIR"), "/mhmoe_sizes.rs"));
include!(concat!(env!("OUT_DIR"), "/demo_config.rs"));

/// Core clock after reset: the 64 MHz HSI oscillator.
const CORE_HZ: u32 = 64_000_000;

#[link_section = ".model"]
static MODEL: Aligned<[u8; MODEL_LEN]> = Aligned(*include_bytes!(env!("MHMOE_MODEL_PATH")));
static mut STATE: AlignedBuffer<STATE_BYTES> = AlignedBuffer::new();
static mut TOKENIZER: [u32; TOKENIZER_WORDS] = [0; TOKENIZER_WORDS];

#[entry]
fn main() -> ! {
    let mut cp = demo_fw::cortex_m::Peripherals::take().unwrap();
    cp.SCB.enable_icache();
    cp.SCB.enable_dcache(&mut cp.CPUID);
    // SAFETY: `main` runs once and these are the only references to the two buffers.
    let (state, tokenizer) =
        unsafe { (&mut (*addr_of_mut!(STATE)).0, &mut *addr_of_mut!(TOKENIZER)) };
    let demo = Demo {
        board: "nucleo-h743zi2",
        model: &MODEL.0,
        ctx: CTX,
        tokens: TOKENS,
    };
    demo_fw::rtt::run(&demo, CORE_HZ, cp, state, tokenizer)
}
