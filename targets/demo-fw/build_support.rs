//! Build-time sizing for the demo firmware, shared by the board crates' `build.rs`
//! (`#[path = "../demo-fw/build_support.rs"] mod build_support;`, with `mhmoe` as a
//! build-dependency).
//!
//! From the model file and the context length it computes the exact buffer sizes with the
//! engine's own functions (`State::bytes_needed`, `Tokenizer::workspace_len`), encodes the
//! prompt to check it plus the generated tokens fit the context, reads the board's regions from
//! `memory.x`, and fails the build with the needed and available bytes when the model, the
//! state and a stack reserve do not fit. It writes `$OUT_DIR/demo_config.rs` (the constants the
//! board's `main.rs` includes), copies `memory.x` to `$OUT_DIR` with a linker `ASSERT` for the
//! stack reserve appended, and passes the runtime's linker script (and `-Tdefmt.x`) to the
//! linker.
//!
//! Overrides for experiments: `DEMO_FW_CTX`, `DEMO_FW_TOKENS`, `DEMO_FW_MODEL` (a path
//! relative to the repository root, or absolute).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use mhmoe::file::ModelBytes;
use mhmoe::tokenizer::TokenizerBuf;
use mhmoe::{Model, State};

/// Must match `demo_fw::PROMPT`.
const PROMPT: &str = "It is a truth universally acknowledged";
/// Must match `demo_fw::MAX_PROMPT`.
const MAX_PROMPT: usize = 64;
/// Must match `demo_fw::MAX_TOKENS`.
const MAX_TOKENS: usize = 128;
/// Flash kept for the firmware's code and constants when the model shares the region with them
/// (the demo is 140-200 KiB of code and constants; the linker checks the exact figure).
const CODE_RESERVE: u64 = 256 * 1024;
/// RAM kept for the stack (the demo uses about 20 KiB; the room is `ASSERT`ed at link time).
const STACK_RESERVE: u64 = 32 * 1024;

/// A board's choices.
pub struct Board {
    /// Name, for messages.
    pub name: &'static str,
    /// Model file, relative to the repository root.
    pub model: &'static str,
    /// Context length (KV cache positions) the state is sized for.
    pub ctx: usize,
    /// Tokens to generate.
    pub tokens: usize,
    /// The `memory.x` region the `.model` section goes to (`FLASH`, or a region of its own).
    pub model_region: &'static str,
    /// Link with defmt's linker script.
    pub defmt: bool,
}

fn fail(msg: String) -> ! {
    eprintln!("\nerror: {msg}\n");
    std::process::exit(1)
}

fn env_usize(key: &str, default: usize) -> usize {
    println!("cargo:rerun-if-env-changed={key}");
    match env::var(key) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| fail(format!("{key}={v:?} is not a number"))),
        Err(_) => default,
    }
}

/// `LENGTH = 4M` / `512K` / `0x80000` / `1024` in bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1024),
        'M' | 'm' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let num = num.trim();
    let v = match num.strip_prefix("0x").or_else(|| num.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16).ok()?,
        None => num.replace('_', "").parse().ok()?,
    };
    Some(v * mul)
}

/// The LENGTH of region `name` in `memory.x` (`NAME : ORIGIN = .., LENGTH = ..`).
fn region_len(memory_x: &str, name: &str) -> u64 {
    for line in memory_x.lines() {
        let line = line.split("/*").next().unwrap_or("");
        let Some((head, rest)) = line.split_once(':') else {
            continue;
        };
        let head = head.split('(').next().unwrap_or("").trim();
        if head != name {
            continue;
        }
        if let Some(len) = rest
            .split(',')
            .find_map(|p| p.trim().strip_prefix("LENGTH"))
            .and_then(|p| p.trim().strip_prefix('='))
            .and_then(parse_size)
        {
            return len;
        }
    }
    fail(format!("memory.x has no region {name} with a LENGTH"))
}

impl Board {
    /// Checks the budget, writes the generated files and prints cargo's instructions.
    pub fn configure(&self) {
        let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
        let out = PathBuf::from(env::var("OUT_DIR").unwrap());
        let root = manifest.join("../..");
        println!("cargo:rerun-if-changed=memory.x");
        println!("cargo:rerun-if-changed=../demo-fw/build_support.rs");
        println!("cargo:rerun-if-env-changed=DEMO_FW_MODEL");

        let model_rel = env::var("DEMO_FW_MODEL").unwrap_or_else(|_| self.model.to_owned());
        let model_path = root.join(&model_rel);
        let model_path = fs::canonicalize(&model_path).unwrap_or_else(|e| {
            fail(format!(
                "{}: cannot find the model {}: {e}",
                self.name,
                model_path.display()
            ))
        });
        println!("cargo:rerun-if-changed={}", model_path.display());
        let ctx = env_usize("DEMO_FW_CTX", self.ctx);
        let tokens = env_usize("DEMO_FW_TOKENS", self.tokens);

        let file = ModelBytes::read(&model_path).unwrap_or_else(|e| {
            fail(format!(
                "{}: cannot read {}: {e}",
                self.name,
                model_path.display()
            ))
        });
        let model: Model<'_> = Model::from_bytes(file.bytes()).unwrap_or_else(|e| {
            fail(format!(
                "{}: cannot load {}: {e}",
                self.name,
                model_path.display()
            ))
        });
        let model_bytes = file.bytes().len() as u64;
        let state = State::bytes_needed(&model, ctx)
            .unwrap_or_else(|e| fail(format!("{}: context length {ctx}: {e}", self.name)))
            as u64;
        let tok = TokenizerBuf::new(model.gguf())
            .unwrap_or_else(|e| fail(format!("{}: tokenizer: {e}", self.name)));
        let tok = tok.tokenizer();
        let tok_words = mhmoe::tokenizer::Tokenizer::workspace_len(model.gguf()).unwrap();
        let prompt = tok.bos().into_iter().count()
            + tok
                .encode_to_vec(PROMPT.as_bytes())
                .unwrap_or_else(|e| fail(format!("{}: prompt: {e}", self.name)))
                .len();
        if prompt > MAX_PROMPT || tokens > MAX_TOKENS {
            fail(format!(
                "{}: the prompt is {prompt} tokens (at most {MAX_PROMPT}) and {tokens} tokens are to be generated (at most {MAX_TOKENS})",
                self.name
            ));
        }
        if prompt + tokens > ctx {
            fail(format!(
                "{}: the prompt ({prompt} tokens) and {tokens} generated tokens need a context of {} positions, but the context length is {ctx}",
                self.name,
                prompt + tokens
            ));
        }

        let memory_x = fs::read_to_string(manifest.join("memory.x"))
            .unwrap_or_else(|e| fail(format!("{}: memory.x: {e}", self.name)));
        let flash = region_len(&memory_x, "FLASH");
        let ram = region_len(&memory_x, "RAM");
        let kib = |b: u64| b as f64 / 1024.0;
        let mut problems = Vec::new();
        if self.model_region == "FLASH" {
            let need = model_bytes + CODE_RESERVE;
            if need > flash {
                problems.push(format!(
                    "FLASH: needed {need} bytes ({:.1} KiB) = model {model_bytes} ({model_rel}) + {CODE_RESERVE} for code, available {flash} bytes ({:.1} KiB): {} bytes short",
                    kib(need),
                    kib(flash),
                    need - flash
                ));
            }
        } else {
            let avail = region_len(&memory_x, self.model_region);
            if model_bytes > avail {
                problems.push(format!(
                    "{}: needed {model_bytes} bytes (model {model_rel}), available {avail} bytes: {} bytes short",
                    self.model_region,
                    model_bytes - avail
                ));
            }
        }
        let need_ram = state + tok_words as u64 * 4 + STACK_RESERVE;
        if need_ram > ram {
            problems.push(format!(
                "RAM: needed {need_ram} bytes ({:.1} KiB) = state {state} (context {ctx}, of which KV cache {}) + tokenizer workspace {} + {STACK_RESERVE} for the stack, available {ram} bytes ({:.1} KiB): {} bytes short",
                kib(need_ram),
                2 * model.config().n_layers() as u64 * ctx as u64 * model.config().kv_dim() as u64 * 4,
                tok_words * 4,
                kib(ram),
                need_ram - ram
            ));
        }
        if !problems.is_empty() {
            fail(format!(
                "the model and its state do not fit {}:\n  {}\n(choose a smaller context with DEMO_FW_CTX or in build.rs, or a smaller model, e.g. Q4_0)",
                self.name,
                problems.join("\n  ")
            ));
        }

        let mut cfg = String::new();
        let _ = writeln!(
            cfg,
            "// Generated by build.rs from {model_rel}: do not edit."
        );
        let _ = writeln!(cfg, "/// Context length the state is sized for.");
        let _ = writeln!(cfg, "pub const CTX: usize = {ctx};");
        let _ = writeln!(cfg, "/// Tokens to generate.");
        let _ = writeln!(cfg, "pub const TOKENS: usize = {tokens};");
        let _ = writeln!(cfg, "/// Bytes of the model file.");
        let _ = writeln!(cfg, "pub const MODEL_LEN: usize = {model_bytes};");
        let _ = writeln!(cfg, "/// `State::bytes_needed(model, CTX)`.");
        let _ = writeln!(cfg, "pub const STATE_BYTES: usize = {state};");
        let _ = writeln!(cfg, "/// `Tokenizer::workspace_len(model)`.");
        let _ = writeln!(cfg, "pub const TOKENIZER_WORDS: usize = {tok_words};");
        fs::write(out.join("demo_config.rs"), cfg).unwrap();

        let mut mem = memory_x;
        let _ = write!(
            mem,
            "\n/* Added by build.rs: room for the stack. */\nASSERT(_stack_start - __sheap >= {STACK_RESERVE}, \"demo-fw: less than {STACK_RESERVE} bytes of RAM left for the stack\");\n"
        );
        fs::write(out.join("memory.x"), mem).unwrap();
        println!("cargo:rustc-link-search={}", out.display());
        // cortex-m-rt's link.x includes memory.x; riscv-rt's memory.x includes link.x.
        if env::var("TARGET").is_ok_and(|t| t.starts_with("riscv")) {
            println!("cargo:rustc-link-arg=-Tmemory.x");
        } else {
            println!("cargo:rustc-link-arg=-Tlink.x");
        }
        if self.defmt {
            println!("cargo:rustc-link-arg=-Tdefmt.x");
        }
        println!(
            "cargo:rustc-env=DEMO_FW_MODEL_PATH={}",
            model_path.display()
        );
        if env::var("DEMO_FW_VERBOSE").is_ok() {
            println!(
                "cargo:warning={}: ctx {ctx}, model {model_bytes} B, state {state} B, tokenizer {} B, prompt {prompt} tokens",
                self.name,
                tok_words * 4
            );
        }
    }
}
