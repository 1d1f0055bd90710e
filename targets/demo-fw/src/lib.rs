//! The mhmoe firmware demo, shared by the board crates in `targets/`.
//!
//! A board crate holds the model in flash (an aligned `include_bytes!`), the engine state and
//! the tokenizer workspace in statics sized at build time by its `build.rs` (see
//! `build_support.rs`), and hands them to [`semihosting::run`] (emulated boards: report over
//! semihosting, exit QEMU with a code) or [`rtt::run`] (real boards: report with defmt over
//! RTT). Both call [`generate`]: encode [`PROMPT`], run it through the model, then pick
//! `tokens` tokens greedily (argmax of the logits, no early stop at end-of-sequence) and
//! report the token ids, the decoded text, [`fnv1a64`] of the final logits, cycles per token
//! (where a cycle counter runs) and the stack high-water mark.
//!
//! The host test `tests/firmware.rs` checks the token ids and the logits hash against the
//! desktop engine: the device computes exactly what the desktop does.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(target_arch = "arm")]
pub use cortex_m; // also the critical-section implementation
#[cfg(target_arch = "arm")]
pub use cortex_m_rt::entry;
use mhmoe::sampler::argmax;
use mhmoe::tokenizer::Tokenizer;
pub use mhmoe::AlignedBuffer;
use mhmoe::{Error, Isa, Model, State};
#[cfg(target_arch = "riscv32")]
use riscv as _; // the critical-section implementation

#[cfg(feature = "defmt")]
pub mod rtt;
#[cfg(feature = "semihosting")]
pub mod semihosting;
pub mod stack;

/// The engine, for the sizes file the build writes (`KV` is a `mhmoe::KvType`).
pub use mhmoe;

/// The prompt every board continues.
pub const PROMPT: &str = "It is a truth universally acknowledged";
/// Capacity for prompt tokens (beginning-of-sequence token included).
pub const MAX_PROMPT: usize = 64;
/// Capacity for generated tokens.
pub const MAX_TOKENS: usize = 128;
/// Capacity for the decoded text, in bytes (longer text is cut and flagged).
pub const TEXT_CAP: usize = 512;

/// Aligns its contents to 32 bytes: `static MODEL: Aligned<[u8; N]> = Aligned(*include_bytes!(..))`
/// puts a model file in flash at an address its tensor data alignment (32 in GGUF) divides.
#[repr(C, align(32))]
pub struct Aligned<T: ?Sized>(pub T);

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Demo<'a> {
    /// Board name, for the report.
    pub board: &'static str,
    /// The model file.
    pub model: &'a [u8],
    /// Context length the state was sized for.
    pub ctx: usize,
    /// Tokens to generate (at most [`MAX_TOKENS`]).
    pub tokens: usize,
    /// How the state's KV cache is stored (the build sized the state for it).
    pub kv: mhmoe::KvType,
}

/// Which step failed; each maps to its own exit code on the emulated boards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `Model::from_bytes`.
    Model,
    /// `Tokenizer::new`.
    Tokenizer,
    /// `State::new`.
    State,
    /// Encoding the prompt.
    Prompt,
    /// A forward pass.
    Forward,
    /// Picking the next token.
    Sample,
}

impl Stage {
    /// Lower-case name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Model => "model",
            Stage::Tokenizer => "tokenizer",
            Stage::State => "state",
            Stage::Prompt => "prompt",
            Stage::Forward => "forward",
            Stage::Sample => "sample",
        }
    }
}

/// A failed run: the step and the engine's error.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The step.
    pub stage: Stage,
    /// The error.
    pub error: Error,
}

/// What a run produced.
#[derive(Debug)]
pub struct Summary {
    /// The instruction set the forward pass used.
    pub isa: Isa,
    /// Bytes of engine state used (`State::bytes_needed`).
    pub state_bytes: usize,
    /// Bytes of tokenizer workspace used.
    pub tokenizer_bytes: usize,
    /// The prompt's token ids.
    pub prompt: heapless::Vec<u32, MAX_PROMPT>,
    /// The generated token ids.
    pub generated: heapless::Vec<u32, MAX_TOKENS>,
    /// The generated text (decoded, lossy UTF-8).
    pub text: heapless::String<TEXT_CAP>,
    /// True when `text` was cut at [`TEXT_CAP`] bytes.
    pub text_truncated: bool,
    /// [`fnv1a64`] of the logits after the last forward pass.
    pub logits_hash: u64,
    /// Cycles spent on the prompt's forward passes (0 without a cycle counter).
    pub prompt_cycles: u64,
    /// Cycles spent on the generated tokens' forward passes (0 without a cycle counter).
    pub gen_cycles: u64,
}

/// FNV-1a, 64 bits, over the little-endian bytes of each value's f32 bit pattern, in order.
pub fn fnv1a64(values: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_bits().to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

static mut MARK: u32 = 0;

/// Marks the start of a measured interval: tools/qemu-insn-count counts the instructions
/// executed from this function's first instruction to [`mark_end`]'s. Costs a call and a store.
#[inline(never)]
#[no_mangle]
pub extern "C" fn mark_begin(tag: u32) {
    // SAFETY: a volatile store to a plain static; the bodies differ so the two markers stay
    // distinct functions.
    unsafe { core::ptr::addr_of_mut!(MARK).write_volatile(tag) };
}

/// Marks the end of a measured interval (see [`mark_begin`]).
#[inline(never)]
#[no_mangle]
pub extern "C" fn mark_end(tag: u32) {
    // SAFETY: as in `mark_begin`.
    unsafe { core::ptr::addr_of_mut!(MARK).write_volatile(!tag) };
}

/// Runs the demo: loads the model in place, builds the tokenizer in `tok_workspace` and the
/// state in `state_buf`, encodes [`PROMPT`] (after the beginning-of-sequence token, if the model
/// has one), runs it, then generates `demo.tokens` tokens greedily. `cycles` reads a
/// free-running cycle counter (return 0 where there is none).
///
/// Interval markers for instruction counting: one empty interval (tag 0, the markers' own
/// cost), then one interval around each generated token's forward pass (tag = position).
pub fn generate(
    demo: &Demo<'_>,
    state_buf: &mut [u8],
    tok_workspace: &mut [u32],
    cycles: &dyn Fn() -> u32,
) -> Result<Summary, Failure> {
    fn fail<E: Into<Error>>(stage: Stage) -> impl Fn(E) -> Failure {
        move |e| Failure {
            stage,
            error: e.into(),
        }
    }
    let model: Model<'_> = Model::from_bytes(demo.model).map_err(fail(Stage::Model))?;
    let tokenizer_bytes =
        Tokenizer::workspace_len(model.gguf()).map_err(fail(Stage::Tokenizer))? * 4;
    let tok = Tokenizer::new(model.gguf(), tok_workspace).map_err(fail(Stage::Tokenizer))?;
    let opts = mhmoe::StateOptions::new(demo.ctx).kv(demo.kv);
    let state_bytes = State::bytes_needed(&model, opts).map_err(fail(Stage::State))?;
    let mut state = State::new(&model, opts, state_buf).map_err(fail(Stage::State))?;

    let mut ids = [0u32; MAX_PROMPT];
    let bos = match tok.bos() {
        Some(b) => {
            ids[0] = b;
            1
        }
        None => 0,
    };
    let n = bos
        + tok
            .encode(PROMPT.as_bytes(), &mut ids[bos..])
            .map_err(fail(Stage::Prompt))?;
    let mut s = Summary {
        isa: Isa::active(),
        state_bytes,
        tokenizer_bytes,
        prompt: heapless::Vec::from_slice(&ids[..n]).unwrap_or_default(),
        generated: heapless::Vec::new(),
        text: heapless::String::new(),
        text_truncated: false,
        logits_hash: 0,
        prompt_cycles: 0,
        gen_cycles: 0,
    };

    let t0 = cycles();
    for &t in &ids[..n] {
        mhmoe::forward(&model, &mut state, t).map_err(fail(Stage::Forward))?;
    }
    s.prompt_cycles = u64::from(cycles().wrapping_sub(t0));

    mark_begin(0);
    mark_end(0);
    let mut decoder = tok.decoder();
    let mut collect = |piece: &str| {
        if s.text.push_str(piece).is_err() {
            s.text_truncated = true;
        }
    };
    let mut gen_cycles = 0u64;
    for _ in 0..demo.tokens.min(MAX_TOKENS) {
        let next = argmax(state.logits()).map_err(fail(Stage::Sample))?;
        let _ = s.generated.push(next);
        decoder
            .push(&tok, next, &mut collect)
            .map_err(fail(Stage::Sample))?;
        let pos = state.pos() as u32;
        let t = cycles();
        mark_begin(pos);
        let r = mhmoe::forward(&model, &mut state, next);
        mark_end(pos);
        gen_cycles += u64::from(cycles().wrapping_sub(t));
        r.map_err(fail(Stage::Forward))?;
    }
    decoder.flush(&mut collect);
    s.gen_cycles = gen_cycles;
    s.logits_hash = fnv1a64(state.logits());
    Ok(s)
}
