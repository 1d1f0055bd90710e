//! mhmoe demo on the nRF52840-DK (nRF52840, Cortex-M4F, DSP kernels): generates text from the
//! Q4_0 demo model in flash and logs with defmt over RTT (see README.md and ../demo-fw).
//!
//! The Q8_0 model (1.1 MB) does not fit the 1 MiB flash; Q4_0 (613 KB) does. 256 KiB of RAM
//! hold the tokenizer tables (45 KB), the stack and a context of 32 positions (KV cache
//! 128 KiB). The core runs at 64 MHz from reset; only the flash cache is turned on.
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;

use demo_fw::{entry, Aligned, AlignedBuffer, Demo};

// MODEL_LEN, CTX, STATE_BYTES, TOKENIZER_WORDS: the exact sizes, computed by build.rs from the
// model (mhmoe::build::Sizing); TOKENS: the demo's.
include!(concat!(env!("OUT_DIR"), "/mhmoe_sizes.rs"));
include!(concat!(env!("OUT_DIR"), "/demo_config.rs"));

/// The nRF52840's core clock (fixed).
const CORE_HZ: u32 = 64_000_000;
/// NVMC.ICACHECNF: bit 0 enables the flash instruction cache.
const NVMC_ICACHECNF: *mut u32 = 0x4001_E540 as *mut u32;

#[link_section = ".model"]
static MODEL: Aligned<[u8; MODEL_LEN]> = Aligned(*include_bytes!(env!("MHMOE_MODEL_PATH")));
static mut STATE: AlignedBuffer<STATE_BYTES> = AlignedBuffer::new();
static mut TOKENIZER: [u32; TOKENIZER_WORDS] = [0; TOKENIZER_WORDS];

#[entry]
fn main() -> ! {
    // SAFETY: NVMC.ICACHECNF is a plain read-write register of the nRF52840.
    unsafe { NVMC_ICACHECNF.write_volatile(1) };
    let cp = demo_fw::cortex_m::Peripherals::take().unwrap();
    // SAFETY: `main` runs once and these are the only references to the two buffers.
    let (state, tokenizer) =
        unsafe { (&mut (*addr_of_mut!(STATE)).0, &mut *addr_of_mut!(TOKENIZER)) };
    let demo = Demo {
        board: "nrf52840-dk",
        model: &MODEL.0,
        ctx: CTX,
        tokens: TOKENS,
    };
    demo_fw::rtt::run(&demo, CORE_HZ, cp, state, tokenizer)
}
