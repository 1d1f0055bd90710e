//! The demo's layer over `mhmoe::build::Sizing` for the board crates' `build.rs`
//! (`#[path = "../demo-fw/build_support.rs"] mod build_support;`, with `mhmoe` as a
//! build-dependency).
//!
//! `Sizing` does the generic part: the exact buffer sizes from the model file
//! (`$OUT_DIR/mhmoe_sizes.rs`: `MODEL_LEN`, `CTX`, `BATCH`, `STATE_BYTES`, `TOKENIZER_WORDS`;
//! `MHMOE_MODEL_PATH` for `include_bytes!`) and the budget check against the board's
//! `memory.x`, failing the build with the bytes short. This file adds what is the demo's own:
//! the `DEMO_FW_*` overrides, the number of tokens to generate (`$OUT_DIR/demo_config.rs`:
//! `TOKENS`) and the check that the prompt plus those tokens fit the context, the demo's
//! reserves (stack, code), a copy of `memory.x` with a linker `ASSERT` for the stack reserve,
//! and the runtime's linker scripts.
//!
//! Overrides for experiments: `DEMO_FW_CTX`, `DEMO_FW_TOKENS`, `DEMO_FW_MODEL` (a path
//! relative to the repository root, or absolute).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use mhmoe::build::Sizing;
use mhmoe::file::ModelBytes;
use mhmoe::tokenizer::TokenizerBuf;
use mhmoe::KvType;

/// Must match `demo_fw::PROMPT`.
const PROMPT: &str = "It is a truth universally acknowledged";
/// Must match `demo_fw::MAX_PROMPT`.
const MAX_PROMPT: usize = 64;
/// Must match `demo_fw::MAX_TOKENS`.
const MAX_TOKENS: usize = 128;
/// Flash kept for the firmware's code and constants when the model shares the region with them
/// (the demo is 140-200 KiB of code and constants; the linker checks the exact figure).
const CODE_RESERVE: u64 = 256 * 1024;
/// RAM kept for the stack (the demo uses about 20 KiB, see the budgets in targets/README.md;
/// the room is `ASSERT`ed at link time).
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
    /// How the state's KV cache is stored (`DEMO_FW_KV` overrides it).
    pub kv: KvType,
}

/// Fails the build with `msg` (cargo shows it as the error) and ends the build script.
fn fail(msg: String) -> ! {
    for line in msg.lines() {
        println!("cargo::error={line}");
    }
    std::process::exit(0)
}

fn env_usize(key: &str, default: usize) -> usize {
    println!("cargo::rerun-if-env-changed={key}");
    match env::var(key) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| fail(format!("{key}={v:?} is not a number"))),
        Err(_) => default,
    }
}

impl Board {
    /// Sizes and checks the budget (`Sizing::emit`), checks the prompt, writes the demo's files
    /// and prints cargo's instructions.
    pub fn configure(&self) {
        let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
        let out = PathBuf::from(env::var("OUT_DIR").unwrap());
        println!("cargo::rerun-if-changed=../demo-fw/build_support.rs");
        println!("cargo::rerun-if-env-changed=DEMO_FW_MODEL");
        let model_rel = env::var("DEMO_FW_MODEL").unwrap_or_else(|_| self.model.to_owned());
        let model_path = manifest.join("../..").join(&model_rel);
        let ctx = env_usize("DEMO_FW_CTX", self.ctx);
        println!("cargo::rerun-if-env-changed=DEMO_FW_KV");
        let kv = match env::var("DEMO_FW_KV") {
            Ok(v) => KvType::from_name(&v)
                .unwrap_or_else(|| fail(format!("DEMO_FW_KV={v:?}: f32, f16, q8_0 or q4_0"))),
            Err(_) => self.kv,
        };
        let tokens = env_usize("DEMO_FW_TOKENS", self.tokens);

        let code = if self.model_region == "FLASH" {
            CODE_RESERVE
        } else {
            0 // the model has a region of its own
        };
        let sizes = Sizing::new(&model_path, ctx)
            .kv(kv)
            .memory_x("memory.x")
            .regions("RAM", self.model_region)
            .stack(STACK_RESERVE)
            .code(code)
            .name(self.name)
            .emit();

        // The demo's prompt and the tokens to generate must fit the context and its capacities.
        let file = ModelBytes::read(&sizes.model_path)
            .unwrap_or_else(|e| fail(format!("{}: {model_rel}: {e}", self.name)));
        let model = file
            .model()
            .unwrap_or_else(|e| fail(format!("{}: {model_rel}: {e}", self.name)));
        let tok = TokenizerBuf::new(model.gguf())
            .unwrap_or_else(|e| fail(format!("{}: tokenizer: {e}", self.name)));
        let tok = tok.tokenizer();
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

        let mut cfg = String::new();
        let _ = writeln!(cfg, "// Generated by build.rs: do not edit.");
        let _ = writeln!(cfg, "/// Tokens to generate.");
        let _ = writeln!(cfg, "pub const TOKENS: usize = {tokens};");
        fs::write(out.join("demo_config.rs"), cfg).unwrap();

        // The stack's lowest address: cortex-m-rt's `_stack_end` (the end of the statics, or
        // with flip-link the start of RAM), riscv-rt's `__sheap` (no heap).
        let riscv = env::var("TARGET").is_ok_and(|t| t.starts_with("riscv"));
        let stack_end = if riscv { "__sheap" } else { "_stack_end" };
        let mut mem = fs::read_to_string(manifest.join("memory.x")).unwrap();
        let _ = write!(
            mem,
            "\n/* Added by build.rs: room for the stack. */\nASSERT(_stack_start - {stack_end} >= {STACK_RESERVE}, \"demo-fw: less than {STACK_RESERVE} bytes of RAM left for the stack\");\n"
        );
        fs::write(out.join("memory.x"), mem).unwrap();
        println!("cargo::rustc-link-search={}", out.display());
        // cortex-m-rt's link.x includes memory.x; riscv-rt's memory.x includes link.x.
        if riscv {
            println!("cargo::rustc-link-arg=-Tmemory.x");
        } else {
            println!("cargo::rustc-link-arg=-Tlink.x");
        }
        if self.defmt {
            println!("cargo::rustc-link-arg=-Tdefmt.x");
        }
        if env::var("DEMO_FW_VERBOSE").is_ok() {
            println!(
                "cargo::warning={}: ctx {ctx}, model {} B, state {} B, tokenizer {} B, prompt {prompt} tokens",
                self.name,
                sizes.model_len,
                sizes.state_bytes,
                sizes.tokenizer_words * 4
            );
        }
    }
}
