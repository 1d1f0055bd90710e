//! mhmoe demo on the Arm MPS2 AN505 (Cortex-M33, DSP kernels) under QEMU: generates text from
//! the demo model in flash and reports over semihosting (see ../demo-fw).
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;

use demo_fw::{entry, Aligned, AlignedBuffer, Demo};

// MODEL_LEN, CTX, STATE_BYTES, TOKENIZER_WORDS: the exact sizes, computed by build.rs from the
// model (mhmoe::build::Sizing); TOKENS: the demo's.
use demo_fw::mhmoe;
include!(concat!(env!("OUT_DIR"), "/mhmoe_sizes.rs"));
include!(concat!(env!("OUT_DIR"), "/demo_config.rs"));

#[link_section = ".model"]
static MODEL: Aligned<[u8; MODEL_LEN]> = Aligned(*include_bytes!(env!("MHMOE_MODEL_PATH")));
static mut STATE: AlignedBuffer<STATE_BYTES> = AlignedBuffer::new();
static mut TOKENIZER: [u32; TOKENIZER_WORDS] = [0; TOKENIZER_WORDS];

#[entry]
fn main() -> ! {
    // SAFETY: `main` runs once and these are the only references to the two buffers.
    let (state, tokenizer) =
        unsafe { (&mut (*addr_of_mut!(STATE)).0, &mut *addr_of_mut!(TOKENIZER)) };
    let demo = Demo {
        board: "mps2-an505",
        model: &MODEL.0,
        ctx: CTX,
        tokens: TOKENS,
        kv: KV,
    };
    demo_fw::semihosting::run(&demo, state, tokenizer)
}
