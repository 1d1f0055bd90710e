//! mhmoe demo on the Raspberry Pi Pico 2 (RP2350, Cortex-M33, DSP kernels): generates text
//! from the demo model in flash and logs with defmt over RTT (see README.md and ../demo-fw).
//!
//! No clock setup: the core runs from the ring oscillator the boot ROM leaves on (nominally
//! about 11 MHz and chip-dependent), so cycles per token are exact and tokens/s approximate.
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;

use demo_fw::{entry, Aligned, AlignedBuffer, Demo};

// MODEL_LEN, CTX, STATE_BYTES, TOKENIZER_WORDS: the exact sizes, computed by build.rs from the
// model (mhmoe::build::Sizing); TOKENS: the demo's.
include!(concat!(env!("OUT_DIR"), "/mhmoe_sizes.rs"));
include!(concat!(env!("OUT_DIR"), "/demo_config.rs"));

/// Nominal ring-oscillator clock after boot (not measured).
const CORE_HZ: u32 = 11_000_000;

/// The RP2350 boot ROM's minimal IMAGE_DEF block (the datasheet's "minimum viable image
/// metadata"): an Arm, Secure-mode executable for the RP2350, in the first 4 KiB of flash.
#[link_section = ".start_block"]
#[used]
static IMAGE_DEF: [u32; 5] = [
    0xffff_ded3, // PICOBIN_BLOCK_MARKER_START
    0x1021_0142, // IMAGE_TYPE item, 1 word: EXE | S-mode | ARM | RP2350
    0x0000_01ff, // LAST item, total size of the items: 1 word
    0x0000_0000, // offset to the next block: none (a loop to itself)
    0xab12_3579, // PICOBIN_BLOCK_MARKER_END
];

#[link_section = ".model"]
static MODEL: Aligned<[u8; MODEL_LEN]> = Aligned(*include_bytes!(env!("MHMOE_MODEL_PATH")));
static mut STATE: AlignedBuffer<STATE_BYTES> = AlignedBuffer::new();
static mut TOKENIZER: [u32; TOKENIZER_WORDS] = [0; TOKENIZER_WORDS];

#[entry]
fn main() -> ! {
    let cp = demo_fw::cortex_m::Peripherals::take().unwrap();
    // SAFETY: `main` runs once and these are the only references to the two buffers.
    let (state, tokenizer) =
        unsafe { (&mut (*addr_of_mut!(STATE)).0, &mut *addr_of_mut!(TOKENIZER)) };
    let demo = Demo {
        board: "pico2",
        model: &MODEL.0,
        ctx: CTX,
        tokens: TOKENS,
    };
    demo_fw::rtt::run(&demo, CORE_HZ, cp, state, tokenizer)
}
