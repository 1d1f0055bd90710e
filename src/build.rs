//! Buffer sizes for firmware, computed at build time from the model file (feature `std`; for a
//! firmware crate's `build.rs`, with mhmoe as a build-dependency).
//!
//! [`Sizing`] loads the model with the engine itself and asks the engine's own sizing functions
//! ([`State::bytes_needed`], [`Tokenizer::workspace_len`]) for the exact byte counts, so
//! the statics a firmware declares with them are exactly as large as [`State::new`] and
//! [`Tokenizer::new`] need, never a byte short (which would fail at run time) and never larger.
//! Given RAM and flash budgets (numbers, or the region lengths of a `memory.x`), it checks that
//! the model, the state, the tokenizer workspace and a stack reserve fit, and fails the build
//! with a message naming every part and the bytes short when they do not.
//!
//! [`Sizing::emit`] is the whole job for a `build.rs`: it writes `$OUT_DIR/mhmoe_sizes.rs`, a
//! file of `pub const`s ([`Sizes::to_rust`]: `MODEL_LEN`, `CTX`, `BATCH`, `KV`, `STATE_BYTES`,
//! `TOKENIZER_WORDS`), sets `MHMOE_MODEL_PATH` for `include_bytes!`, and tells cargo when to run
//! again. [`Sizing::compute`] returns the sizes or a [`BuildError`] instead, for scripts that do
//! more.
//!
//! # Example
//!
//! A firmware's `build.rs` (with `[build-dependencies] mhmoe = { version = "..." }`, whose
//! default `std` feature this module needs):
//!
//! ```no_run
//! use mhmoe::build::Sizing;
//!
//! fn main() {
//!     Sizing::new("../models/mhmoe-demo-q4_0.gguf", 256)
//!         .memory_x("memory.x") // budgets: the LENGTHs of its RAM and FLASH regions
//!         .stack(16 * 1024) // RAM kept free for the stack
//!         .code(256 * 1024) // flash kept for the program beside the model
//!         .emit();
//! }
//! ```
//!
//! and its `main.rs` (edition 2024):
//!
//! ```ignore
//! include!(concat!(env!("OUT_DIR"), "/mhmoe_sizes.rs"));
//!
//! #[repr(C, align(32))]
//! struct Aligned<T>(T);
//! // 32-byte aligned, as the GGUF tensor data needs; `memory.x` may place `.model`.
//! #[unsafe(link_section = ".model")]
//! static MODEL: Aligned<[u8; MODEL_LEN]> = Aligned(*include_bytes!(env!("MHMOE_MODEL_PATH")));
//! // Handed out once, e.g. through a `static` `cortex_m::singleton!` or a `SyncUnsafeCell`:
//! // mhmoe::AlignedBuffer<STATE_BYTES> for State::new(&model, StateOptions::new(CTX).kv(KV), ..),
//! // [u32; TOKENIZER_WORDS] for Tokenizer::new(model.gguf(), ..).
//! ```
//!
//! A budget miss fails the build (`cargo::error`), e.g. the nRF52840-DK demo
//! (`targets/nrf52840-dk`: Q4_0 demo model, 256 KiB of RAM, a 32 KiB stack reserve) at a
//! context of 256:
//!
//! ```text
//! error: nrf52840-dk@0.1.0: the model and its buffers do not fit nrf52840-dk:
//! error: nrf52840-dk@0.1.0:   RAM: needed 1107760 bytes (1081.8 KiB) = state 1074992 (context 256, batch 1, KV cache f32) + tokenizer workspace 0 + stack 32768, available 262144 bytes (256.0 KiB): 845616 bytes short
//! error: nrf52840-dk@0.1.0:   the largest context that fits this RAM is 50 positions
//! ```
//!
//! Paths are relative to the current directory, which for a build script is the package's
//! directory (where its `Cargo.toml` is).
//!
//! [`State::bytes_needed`]: crate::State::bytes_needed
//! [`State::new`]: crate::State::new
//! [`Tokenizer::workspace_len`]: crate::tokenizer::Tokenizer::workspace_len
//! [`Tokenizer::new`]: crate::tokenizer::Tokenizer::new

use std::boxed::Box;
use std::fmt;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;
use std::{format, println};

use crate::file::ModelBytes;
use crate::tokenizer::Tokenizer;
use crate::{Error, KvType, State, StateOptions};

/// What to size, and the budgets to check: a builder; [`Sizing::emit`] or [`Sizing::compute`]
/// runs it.
#[derive(Debug, Clone)]
pub struct Sizing {
    model: PathBuf,
    ctx: usize,
    batch: usize,
    kv: KvType,
    tokenizer: bool,
    ram: Option<u64>,
    flash: Option<u64>,
    memory_x: Option<PathBuf>,
    ram_region: String,
    model_region: String,
    stack: u64,
    ram_reserve: u64,
    code: u64,
    name: Option<String>,
}

/// The exact sizes, for a model file and a context length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes {
    /// The model file, as an absolute path.
    pub model_path: PathBuf,
    /// Bytes of the model file (`MODEL_LEN`).
    pub model_len: usize,
    /// Context length, in positions, the state is sized for (`CTX`).
    pub ctx: usize,
    /// Tokens per forward pass the state is sized for (`BATCH`).
    pub batch: usize,
    /// How the state's KV cache is stored (`KV`).
    pub kv: KvType,
    /// `State::bytes_needed(model, StateOptions::new(ctx).batch(batch).kv(kv))`
    /// (`STATE_BYTES`).
    pub state_bytes: usize,
    /// `Tokenizer::workspace_len(model.gguf())`, in `u32` words, or 0 without the tokenizer
    /// (`TOKENIZER_WORDS`).
    pub tokenizer_words: usize,
}

/// Bytes one memory region lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// The region: `RAM`, or the region that holds the model (`FLASH`, or a `memory.x` name).
    pub region: String,
    /// What goes in it.
    pub parts: Vec<Part>,
    /// Bytes available.
    pub available: u64,
}

/// One part of a [`Shortfall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// What it is: `model`, `code`, `state`, `tokenizer workspace`, `stack`, `other statics`.
    pub what: &'static str,
    /// Bytes.
    pub bytes: u64,
    /// A detail for the message, e.g. `(context 256, batch 1, KV cache f32)`, or empty.
    pub detail: String,
}

impl Part {
    fn new(what: &'static str, bytes: u64) -> Self {
        Part {
            what,
            bytes,
            detail: String::new(),
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.what, self.bytes)?;
        if !self.detail.is_empty() {
            write!(f, " {}", self.detail)?;
        }
        Ok(())
    }
}

impl Shortfall {
    /// Bytes needed: the sum of the parts.
    pub fn needed(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }

    /// Bytes short: needed minus available.
    pub fn short(&self) -> u64 {
        self.needed().saturating_sub(self.available)
    }
}

/// Why [`Sizing::compute`] failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BuildError {
    /// The model file cannot be read, or is not a model the engine loads.
    Model {
        /// The file.
        path: PathBuf,
        /// The engine's error.
        error: Box<Error>,
    },
    /// The engine cannot size the state or the tokenizer workspace (e.g. a context of 0, or a
    /// model without tokenizer metadata).
    Size {
        /// `"state"` or `"tokenizer workspace"`.
        what: &'static str,
        /// The engine's error.
        error: Box<Error>,
    },
    /// The `memory.x` file cannot be read, or has no such region with a `LENGTH`.
    MemoryX {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The budgets are missed.
    DoesNotFit(Box<DoesNotFit>),
}

/// A budget miss: the regions that are too small, and by how much.
#[derive(Debug, Clone)]
pub struct DoesNotFit {
    /// The name given with [`Sizing::name`], if any.
    pub name: Option<String>,
    /// The sizes that were computed.
    pub sizes: Sizes,
    /// Each region that is too small.
    pub shortfalls: Vec<Shortfall>,
    /// When RAM is short: the largest context length that would fit it, if any.
    pub largest_ctx: Option<usize>,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Model { path, error } => {
                write!(f, "cannot load the model {}: {error}", path.display())
            }
            BuildError::Size { what, error } => write!(f, "cannot size the {what}: {error}"),
            BuildError::MemoryX { path, reason } => write!(f, "{}: {reason}", path.display()),
            BuildError::DoesNotFit(d) => {
                let DoesNotFit {
                    name,
                    sizes: _,
                    shortfalls,
                    largest_ctx,
                } = &**d;
                write!(f, "the model and its buffers do not fit")?;
                if let Some(n) = name {
                    write!(f, " {n}")?;
                }
                write!(f, ":")?;
                let kib = |b: u64| b as f64 / 1024.0;
                for s in shortfalls {
                    let parts: Vec<String> = s.parts.iter().map(Part::to_string).collect();
                    write!(
                        f,
                        "\n  {}: needed {} bytes ({:.1} KiB) = {}, available {} bytes ({:.1} KiB): {} bytes short",
                        s.region,
                        s.needed(),
                        kib(s.needed()),
                        parts.join(" + "),
                        s.available,
                        kib(s.available),
                        s.short()
                    )?;
                }
                match largest_ctx {
                    Some(c) => write!(
                        f,
                        "\n  the largest context that fits this RAM is {c} positions"
                    ),
                    None if shortfalls.iter().any(|s| s.region == RAM_PART) => {
                        write!(f, "\n  no context fits this RAM")
                    }
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// The name of the RAM shortfall's region when the budget was given as a number.
const RAM_PART: &str = "RAM";

impl Sizing {
    /// Sizes for the model file at `model` (a GGUF file; relative paths are from the current
    /// directory) and a context of `ctx` positions, batch capacity 1, with the tokenizer, no
    /// budgets and no reserves.
    pub fn new(model: impl Into<PathBuf>, ctx: usize) -> Self {
        Sizing {
            model: model.into(),
            ctx,
            batch: 1,
            kv: KvType::F32,
            tokenizer: true,
            ram: None,
            flash: None,
            memory_x: None,
            ram_region: "RAM".into(),
            model_region: "FLASH".into(),
            stack: 0,
            ram_reserve: 0,
            code: 0,
            name: None,
        }
    }

    /// Tokens per forward pass the state must hold ([`crate::forward_batch`]; default 1).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// How the state's KV cache is stored ([`crate::StateOptions::kv`]; default f32).
    pub fn kv(mut self, kv: KvType) -> Self {
        self.kv = kv;
        self
    }

    /// Whether the firmware builds the tokenizer (default true). Without it,
    /// `TOKENIZER_WORDS` is 0 and no RAM is counted for it, and the model needs no tokenizer
    /// metadata.
    pub fn tokenizer(mut self, on: bool) -> Self {
        self.tokenizer = on;
        self
    }

    /// RAM budget in bytes: the state, the tokenizer workspace, [`Sizing::stack`] and
    /// [`Sizing::ram_reserve`] must fit it. Overrides the RAM region of [`Sizing::memory_x`].
    pub fn ram(mut self, bytes: u64) -> Self {
        self.ram = Some(bytes);
        self
    }

    /// Budget in bytes of the memory that holds the model file (flash): the model and
    /// [`Sizing::code`] must fit it. Overrides the model's region of [`Sizing::memory_x`].
    pub fn flash(mut self, bytes: u64) -> Self {
        self.flash = Some(bytes);
        self
    }

    /// Takes the budgets from a linker script's `MEMORY` block: the `LENGTH` of region `RAM`
    /// and of region `FLASH` (other names: [`Sizing::regions`]). Lengths may be decimal or
    /// hexadecimal, with a `K` or `M` suffix. The build runs again when the file changes.
    pub fn memory_x(mut self, path: impl Into<PathBuf>) -> Self {
        self.memory_x = Some(path.into());
        self
    }

    /// The `memory.x` regions that hold the statics and stack (default `RAM`) and the model
    /// file (default `FLASH`).
    pub fn regions(mut self, ram: &str, model: &str) -> Self {
        self.ram_region = ram.into();
        self.model_region = model.into();
        self
    }

    /// RAM kept for the stack, in bytes (default 0): counted against the RAM budget. Measure
    /// your firmware's stack (paint it, read the high-water mark) and add a margin.
    pub fn stack(mut self, bytes: u64) -> Self {
        self.stack = bytes;
        self
    }

    /// RAM kept for the firmware's other statics, in bytes (default 0).
    pub fn ram_reserve(mut self, bytes: u64) -> Self {
        self.ram_reserve = bytes;
        self
    }

    /// Bytes kept for the program's code and constants in the model's region (default 0; use
    /// it when the model shares flash with the program).
    pub fn code(mut self, bytes: u64) -> Self {
        self.code = bytes;
        self
    }

    /// A name (the board or firmware) for the failure message.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Loads the model, computes the sizes and checks the budgets.
    ///
    /// # Errors
    /// [`BuildError::DoesNotFit`] when a budget is missed (its `Display` names each part and
    /// the bytes short), or the error that stopped the computation.
    pub fn compute(&self) -> Result<Sizes, BuildError> {
        let model_err = |error| BuildError::Model {
            path: self.model.clone(),
            error: Box::new(error),
        };
        let model_path = std::fs::canonicalize(&self.model).map_err(|e| model_err(e.into()))?;
        let file = ModelBytes::read(&model_path).map_err(model_err)?;
        let model = file.model().map_err(model_err)?;
        let state_of =
            |ctx| State::bytes_needed(&model, StateOptions::new(ctx).batch(self.batch).kv(self.kv));
        let state_bytes = state_of(self.ctx).map_err(|error| BuildError::Size {
            what: "state",
            error: Box::new(error),
        })?;
        let tokenizer_words = if self.tokenizer {
            Tokenizer::workspace_len(model.gguf()).map_err(|error| BuildError::Size {
                what: "tokenizer workspace",
                error: Box::new(error),
            })?
        } else {
            0
        };
        let sizes = Sizes {
            model_path,
            model_len: file.bytes().len(),
            ctx: self.ctx,
            batch: self.batch,
            kv: self.kv,
            state_bytes,
            tokenizer_words,
        };

        let (mut ram, mut flash) = (self.ram, self.flash);
        let (mut ram_region, mut model_region) = (RAM_PART.to_string(), "flash".to_string());
        if let Some(path) = &self.memory_x {
            let text = std::fs::read_to_string(path).map_err(|e| BuildError::MemoryX {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let region = |name: &str| {
                region_length(&text, name).ok_or_else(|| BuildError::MemoryX {
                    path: path.clone(),
                    reason: format!("no region {name} with a LENGTH in its MEMORY block"),
                })
            };
            if ram.is_none() {
                ram = Some(region(&self.ram_region)?);
                ram_region = self.ram_region.clone();
            }
            if flash.is_none() {
                flash = Some(region(&self.model_region)?);
                model_region = self.model_region.clone();
            }
        }

        let mut shortfalls = Vec::new();
        if let Some(available) = flash {
            let mut parts = vec![Part::new("model", sizes.model_len as u64)];
            if self.code > 0 {
                parts.push(Part::new("code", self.code));
            }
            let s = Shortfall {
                region: model_region,
                parts,
                available,
            };
            if s.needed() > available {
                shortfalls.push(s);
            }
        }
        let mut largest_ctx = None;
        if let Some(available) = ram {
            let fixed = sizes.tokenizer_words as u64 * 4 + self.stack + self.ram_reserve;
            let mut parts = vec![Part {
                detail: format!(
                    "(context {}, batch {}, KV cache {})",
                    self.ctx,
                    self.batch,
                    self.kv.name()
                ),
                ..Part::new("state", sizes.state_bytes as u64)
            }];
            if self.tokenizer {
                parts.push(Part::new(
                    "tokenizer workspace",
                    sizes.tokenizer_words as u64 * 4,
                ));
            }
            if self.stack > 0 {
                parts.push(Part::new("stack", self.stack));
            }
            if self.ram_reserve > 0 {
                parts.push(Part::new("other statics", self.ram_reserve));
            }
            let s = Shortfall {
                region: ram_region,
                parts,
                available,
            };
            if s.needed() > available {
                // The state grows with the context: the largest one that fits, by bisection.
                let fits = |ctx| {
                    state_of(ctx).is_ok_and(|b| (b as u64).saturating_add(fixed) <= available)
                };
                let (mut lo, mut hi) = (0, self.ctx); // fits(lo) or lo == 0; !fits(hi)
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if fits(mid) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                largest_ctx = (lo > 0).then_some(lo);
                shortfalls.push(s);
            }
        }
        if shortfalls.is_empty() {
            Ok(sizes)
        } else {
            Err(BuildError::DoesNotFit(Box::new(DoesNotFit {
                name: self.name.clone(),
                sizes,
                shortfalls,
                largest_ctx,
            })))
        }
    }

    /// For a `build.rs`: [`Sizing::compute`], then writes `$OUT_DIR/mhmoe_sizes.rs`
    /// ([`Sizes::to_rust`]), sets the environment variable `MHMOE_MODEL_PATH` to the model's
    /// absolute path for the crate being built (`include_bytes!(env!("MHMOE_MODEL_PATH"))`),
    /// and has cargo run the script again when the model or `memory.x` changes.
    ///
    /// On a failure it fails the build: the error's message goes to cargo as `cargo::error`
    /// lines and the build script ends (`cargo` then stops with those lines as the error).
    pub fn emit(&self) -> Sizes {
        println!("cargo::rerun-if-changed={}", self.model.display());
        if let Some(m) = &self.memory_x {
            println!("cargo::rerun-if-changed={}", m.display());
        }
        match self.compute() {
            Ok(sizes) => {
                let out = std::env::var_os("OUT_DIR")
                    .map(PathBuf::from)
                    .expect("OUT_DIR is not set: Sizing::emit is for build scripts");
                let file = out.join("mhmoe_sizes.rs");
                if let Err(e) = std::fs::write(&file, sizes.to_rust()) {
                    fail(&format!("cannot write {}: {e}", file.display()));
                }
                println!(
                    "cargo::rustc-env=MHMOE_MODEL_PATH={}",
                    sizes.model_path.display()
                );
                sizes
            }
            Err(e) => fail(&e.to_string()),
        }
    }
}

/// Fails the build with `message` (one `cargo::error` per line) and ends the build script:
/// cargo stops the build after a script that logged errors.
fn fail(message: &str) -> ! {
    for line in message.lines() {
        println!("cargo::error={line}");
    }
    std::process::exit(0)
}

impl Sizes {
    /// Rust source with one documented `pub const` per size: `MODEL_LEN`, `CTX`, `BATCH`,
    /// `STATE_BYTES`, `TOKENIZER_WORDS` (all `usize`) and `KV` (a `mhmoe::KvType`), for
    /// `include!` in firmware.
    pub fn to_rust(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "// Generated by mhmoe::build::Sizing from {}: do not edit.",
            self.model_path.display()
        );
        let mut item = |doc: &str, name: &str, value: usize| {
            let _ = writeln!(s, "/// {doc}\npub const {name}: usize = {value};");
        };
        item("Bytes of the model file.", "MODEL_LEN", self.model_len);
        item(
            "Context length (positions) the state is sized for.",
            "CTX",
            self.ctx,
        );
        item(
            "Tokens per forward pass the state is sized for.",
            "BATCH",
            self.batch,
        );
        item(
            "`State::bytes_needed(model, StateOptions::new(CTX).batch(BATCH).kv(KV))`: bytes of \
             the state buffer.",
            "STATE_BYTES",
            self.state_bytes,
        );
        item(
            "`Tokenizer::workspace_len(model.gguf())`: `u32` words of tokenizer workspace.",
            "TOKENIZER_WORDS",
            self.tokenizer_words,
        );
        let kv = format!("{:?}", self.kv);
        let _ = writeln!(
            s,
            "/// How the state's KV cache is stored.\npub const KV: mhmoe::KvType = mhmoe::KvType::{kv};"
        );
        s
    }
}

/// The `LENGTH` of region `name` in a linker script's `MEMORY` block
/// (`NAME [(attributes)] : ORIGIN = .., LENGTH = ..`), in bytes; `None` if there is no such
/// region, or its length is an expression rather than a number (`4M`, `512K`, `0x80000`).
pub fn region_length(memory_x: &str, name: &str) -> Option<u64> {
    // Without comments; a region may span lines.
    let mut text = String::with_capacity(memory_x.len());
    let mut rest = memory_x;
    while let Some(i) = rest.find("/*") {
        text.push_str(&rest[..i]);
        text.push(' ');
        rest = rest[i + 2..].split_once("*/").map_or("", |(_, r)| r);
    }
    text.push_str(rest);
    let block = text.split_once("MEMORY")?.1;
    let block = block.split_once('{')?.1.split_once('}')?.0;
    // Split at the colons: chunk k holds entry k's fields, then entry k + 1's name.
    let chunks: Vec<&str> = block.split(':').collect();
    for k in 1..chunks.len() {
        if entry_name(chunks[k - 1]).1 != name {
            continue;
        }
        let fields = if k + 1 < chunks.len() {
            entry_name(chunks[k]).0
        } else {
            chunks[k]
        };
        let value = fields
            .split_once("LENGTH")?
            .1
            .trim_start()
            .strip_prefix('=')?;
        return parse_size(value.split(',').next()?);
    }
    None
}

/// Splits `text` before the `NAME [(attributes)]` it ends with: (the text before, the name).
fn entry_name(text: &str) -> (&str, &str) {
    let mut t = text.trim_end();
    if t.ends_with(')') {
        if let Some(open) = t.rfind('(') {
            t = t[..open].trim_end();
        }
    }
    match t.rfind(char::is_whitespace) {
        Some(i) => (&t[..i], &t[i + 1..]),
        None => ("", t),
    }
}

/// `4M`, `512K`, `0x80000`, `1024` in bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1024),
        'M' | 'm' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let num = num.trim();
    let v = match num.strip_prefix("0x").or_else(|| num.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => num.parse().ok()?,
    };
    v.checked_mul(mul)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_x_regions() {
        let x = "/* a board */\nMEMORY\n{\n  FLASH : ORIGIN = 0x08000000, LENGTH = 2M\n  RAM (rwx) : ORIGIN = 0x24000000, LENGTH = 512K /* AXI */\n  MODEL : ORIGIN = 0x11000000,\n    LENGTH = 0x1000\n}\nSECTIONS { .model : { } > FLASH }";
        assert_eq!(region_length(x, "FLASH"), Some(2 << 20));
        assert_eq!(region_length(x, "RAM"), Some(512 << 10));
        assert_eq!(region_length(x, "MODEL"), Some(0x1000));
        assert_eq!(region_length(x, "SRAM"), None);
        assert_eq!(region_length("FLASH : LENGTH = 4M", "FLASH"), None); // no MEMORY block
    }
}
