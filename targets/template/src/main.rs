//! The firmware of EMBEDDING.md: an MH-MoE language model in flash continues a prompt, with
//! every buffer a `static` sized at build time, one layer per step so that other work can run
//! between layers, and the text and the stack used printed over semihosting. `TODO(n)` marks
//! what a new board changes (step n of EMBEDDING.md).
#![no_std]
#![no_main]

use core::fmt::Write as _;

use cortex_m_rt::entry;
use mhmoe::sampler::argmax;
use mhmoe::tokenizer::Tokenizer;
use mhmoe::{AlignedBuffer, Error, Exec, Model, State, StateOptions};
use semihosting::{print, println};
use static_cell::ConstStaticCell;

// MODEL_LEN, CTX, BATCH, KV, STATE_BYTES, TOKENIZER_WORDS: written by build.rs.
include!(concat!(env!("OUT_DIR"), "/mhmoe_sizes.rs"));

/// Bytes with the alignment GGUF tensor data needs.
#[repr(C, align(32))]
struct Aligned<T>(T);

/// The model file, in flash (`memory.x` places `.model`).
#[unsafe(link_section = ".model")]
static MODEL: Aligned<[u8; MODEL_LEN]> = Aligned(*include_bytes!(env!("MHMOE_MODEL_PATH")));

/// The state and the tokenizer's workspace: zeroed statics (in `.bss`), each handed out once.
static STATE: ConstStaticCell<AlignedBuffer<STATE_BYTES>> =
    ConstStaticCell::new(AlignedBuffer::new());
static TOKENIZER: ConstStaticCell<[u32; TOKENIZER_WORDS]> =
    ConstStaticCell::new([0; TOKENIZER_WORDS]);

/// TODO(6): your prompt and how many tokens to generate.
const PROMPT: &str = "It is a truth universally acknowledged";
const NEW_TOKENS: usize = 16;

#[entry]
fn main() -> ! {
    stack::paint();
    match run() {
        Ok(()) => {
            println!("stack-high-water {}", stack::high_water());
            println!("template ok");
            semihosting::process::exit(0)
        }
        Err(e) => {
            println!("error: {e}");
            semihosting::process::exit(1)
        }
    }
}

fn run() -> Result<(), Error> {
    // Step 5: the model borrows the bytes in flash (nothing is copied); the state and the
    // tokenizer are carved from the statics.
    let model = Model::from_bytes(&MODEL.0)?;
    let tok = Tokenizer::new(model.gguf(), TOKENIZER.take())?;
    let opts = StateOptions::new(CTX).batch(BATCH).kv(KV);
    let mut state = State::new(&model, opts, &mut STATE.take().0)?;

    let mut ids = [0u32; 64];
    let mut n = 0;
    if let Some(bos) = tok.bos() {
        ids[0] = bos;
        n = 1;
    }
    n += tok.encode(PROMPT.as_bytes(), &mut ids[n..])?;
    print!("{PROMPT}");

    // Step 6: the prompt token by token (a state made with `.batch(b)` takes up to b at once
    // with `forward_batch`), then generation one layer per step.
    let exec = Exec::serial();
    for &id in &ids[..n - 1] {
        exec.forward(&model, &mut state, id)?;
    }
    let mut token = ids[n - 1];
    let mut decoder = tok.decoder();
    let mut text = Text;
    for _ in 0..NEW_TOKENS {
        let mut steps = exec.begin(&model, &mut state, &[token])?;
        while steps.step()? {
            // TODO(6): one layer ran; yield to other tasks here (dropping `steps` abandons
            // the token and leaves the state as it was).
        }
        token = argmax(steps.finish()?)?;
        decoder.push(&tok, token, &mut |s: &str| {
            let _ = text.write_str(s);
        })?;
    }
    decoder.flush(&mut |s: &str| {
        let _ = text.write_str(s);
    });
    println!();
    Ok(())
}

/// Text out over semihosting (TODO(8): your console).
struct Text;

impl core::fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        print!("{s}");
        Ok(())
    }
}

/// Stack use, by painting the free stack at start and finding the lowest word overwritten
/// (EMBEDDING.md, step 7).
mod stack {
    use core::ptr::{addr_of, with_exposed_provenance, with_exposed_provenance_mut};

    const PAINT: u32 = 0x5AFE_C0DE;

    unsafe extern "C" {
        // cortex-m-rt: the stack runs from `_stack_start` down to `_stack_end`.
        static _stack_end: u32;
        static _stack_start: u32;
    }

    /// Fills the stack below this frame (less a margin) with the pattern. Call it first.
    #[inline(never)]
    pub fn paint() {
        let here = 0u32;
        let sp = core::hint::black_box(&here) as *const u32 as usize;
        let mut a = addr_of!(_stack_end) as usize;
        while a + 4 <= sp - 256 {
            // SAFETY: the words from the stack's end up to 256 bytes below this frame are the
            // unused stack, which no Rust object occupies while this function runs.
            unsafe { with_exposed_provenance_mut::<u32>(a).write_volatile(PAINT) };
            a += 4;
        }
    }

    /// Bytes of stack used since [`paint`].
    pub fn high_water() -> usize {
        let top = addr_of!(_stack_start) as usize;
        let mut a = addr_of!(_stack_end) as usize;
        // SAFETY: reads words of the stack region (plain RAM) below its top.
        while a < top && unsafe { with_exposed_provenance::<u32>(a).read_volatile() } == PAINT {
            a += 4;
        }
        top - a
    }
}

/// TODO(8): on a board, report the panic (panic-probe with defmt) or reset.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("panic: {info}");
    semihosting::process::exit(101)
}
