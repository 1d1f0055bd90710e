//! The demo firmware (`targets/`): builds each emulated board's firmware (four Cortex-M boards,
//! the nRF52840-DK's configuration on the emulated M4, and a RISC-V board), runs it under QEMU
//! with a timeout, and checks that the prompt and generated token ids and the
//! FNV-1a hash of the final logits are identical to this desktop engine's on the same model,
//! prompt, context length and greedy decoding, and that the painted stack high-water mark of
//! each run stays within the board's stated budget (`Board::stack_budget`). Builds the real-board crates too (not run), and
//! checks that a context too large for the nRF52840's RAM fails the build with a clear message.
//!
//! Prints each firmware's sections (llvm-size) and stack high-water mark as the markdown table
//! kept in `targets/README.md`: `cargo test --test firmware -- --nocapture`.
//!
//! Without `qemu-system-arm` or the Rust targets the tests print `SKIP firmware: <reason>` and
//! pass, unless `MHMOE_REQUIRE_FIRMWARE=1`: then they fail. `tools/install-firmware.sh`
//! installs what is missing. All firmware shares one target directory, `target/firmware`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use mhmoe::file::{ModelBytes, StateBuffer};
use mhmoe::sampler::argmax;
use mhmoe::tokenizer::TokenizerBuf;
use mhmoe::{KvType, StateOptions};

/// Must match `demo_fw::PROMPT`.
const PROMPT: &str = "It is a truth universally acknowledged";

struct Board {
    /// Crate directory under `targets/` (also the binary name).
    name: &'static str,
    target: &'static str,
    /// QEMU program and machine options, for the emulated boards.
    qemu: Option<&'static [&'static str]>,
    /// The model the board's build.rs embeds, relative to the repository root.
    model: &'static str,
    /// The kernels the build selects (`Isa::name`).
    kernels: &'static str,
    /// Most bytes of stack an emulated run may use (its painted high-water mark, checked for
    /// the ISA and the scalar run): the measured value rounded up to a KiB, plus 1 KiB of
    /// margin, as the table in targets/README.md states. 0 for the real boards (not run here).
    stack_budget: usize,
}

/// The emulated boards' stack budget: the highest high-water mark measured (11,648 bytes on the
/// Arm boards, 10,032 on RISC-V), rounded up to a KiB, plus 1 KiB.
const STACK_BUDGET: usize = 13 * 1024;

const EMULATED: [Board; 6] = [
    Board {
        name: "mps2-an386",
        target: "thumbv7em-none-eabihf",
        qemu: Some(&["qemu-system-arm", "-machine", "mps2-an386"]),
        model: "models/mhmoe-demo-q8_0.gguf",
        kernels: "cortex-m-dsp",
        stack_budget: STACK_BUDGET,
    },
    Board {
        name: "mps2-an386-q4",
        target: "thumbv7em-none-eabihf",
        qemu: Some(&["qemu-system-arm", "-machine", "mps2-an386"]),
        model: "models/mhmoe-demo-q4_0.gguf",
        kernels: "cortex-m-dsp",
        stack_budget: STACK_BUDGET,
    },
    Board {
        name: "mps2-an500",
        target: "thumbv7em-none-eabihf",
        qemu: Some(&["qemu-system-arm", "-machine", "mps2-an500"]),
        model: "models/mhmoe-demo-q8_0.gguf",
        kernels: "cortex-m-dsp",
        stack_budget: STACK_BUDGET,
    },
    Board {
        name: "mps2-an505",
        target: "thumbv8m.main-none-eabihf",
        qemu: Some(&["qemu-system-arm", "-machine", "mps2-an505"]),
        model: "models/mhmoe-demo-q8_0.gguf",
        kernels: "cortex-m-dsp",
        stack_budget: STACK_BUDGET,
    },
    Board {
        name: "mps3-an547",
        target: "thumbv8m.main-none-eabihf",
        qemu: Some(&["qemu-system-arm", "-machine", "mps3-an547"]),
        model: "models/mhmoe-demo-q8_0.gguf",
        kernels: "helium",
        stack_budget: STACK_BUDGET,
    },
    Board {
        name: "riscv32-virt",
        target: "riscv32imac-unknown-none-elf",
        qemu: Some(&["qemu-system-riscv32", "-machine", "virt", "-bios", "none"]),
        model: "models/mhmoe-demo-q8_0.gguf",
        kernels: "scalar",
        stack_budget: STACK_BUDGET,
    },
];

const REAL: [Board; 3] = [
    Board {
        name: "nucleo-h743zi2",
        target: "thumbv7em-none-eabihf",
        qemu: None,
        model: "models/mhmoe-demo-q8_0.gguf",
        kernels: "cortex-m-dsp",
        stack_budget: 0,
    },
    Board {
        name: "pico2",
        target: "thumbv8m.main-none-eabihf",
        qemu: None,
        model: "models/mhmoe-demo-q8_0.gguf",
        kernels: "cortex-m-dsp",
        stack_budget: 0,
    },
    Board {
        name: "nrf52840-dk",
        target: "thumbv7em-none-eabihf",
        qemu: None,
        model: "models/mhmoe-demo-q4_0.gguf",
        kernels: "cortex-m-dsp",
        stack_budget: 0,
    },
];

use common::root;

fn target_dir() -> PathBuf {
    root().join("target/firmware")
}

/// Prints a loud skip, or fails when `MHMOE_REQUIRE_FIRMWARE=1`.
fn skip(reason: &str) {
    if std::env::var("MHMOE_REQUIRE_FIRMWARE").is_ok_and(|v| v == "1") {
        panic!("MHMOE_REQUIRE_FIRMWARE=1, but the firmware cannot be built or run: {reason}");
    }
    println!("SKIP firmware: {reason}");
}

fn sysroot() -> Option<PathBuf> {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    Some(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    ))
}

/// Whether an executable named `name` is in a directory of `PATH`.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
}

/// What is missing to build (and, with `run`, run) the firmware of `board`.
fn missing(board: &Board, run: bool) -> Option<String> {
    if board.qemu.is_none() && !on_path("flip-link") {
        return Some(
            "flip-link, the real boards' linker, not found (run tools/install-firmware.sh)".into(),
        );
    }
    if let Some(qemu) = board.qemu.filter(|_| run) {
        if !Command::new(qemu[0])
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(format!(
                "{} not found (run tools/install-firmware.sh)",
                qemu[0]
            ));
        }
    }
    let sysroot = sysroot()?;
    if !sysroot
        .join("lib/rustlib")
        .join(board.target)
        .join("lib")
        .is_dir()
    {
        return Some(format!(
            "Rust target {} not installed (run tools/install-firmware.sh)",
            board.target
        ));
    }
    None
}

/// `cargo build --release` in the board's crate directory (so its `.cargo/config.toml`
/// applies), with the cargo and rustc variables of this test run cleared: an inherited
/// RUSTFLAGS would replace the config's target-cpu flags.
fn cargo_build(board: &str, envs: &[(&str, &str)]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root().join("targets").join(board))
        .args(["build", "--release", "-j", "2"]);
    common::clear_build_env(
        &mut cmd,
        &[
            "DEMO_FW_CTX",
            "DEMO_FW_TOKENS",
            "DEMO_FW_MODEL",
            "DEMO_FW_KV",
        ],
    );
    cmd.env("CARGO_TARGET_DIR", target_dir());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("running cargo")
}

fn build(b: &Board) -> PathBuf {
    let t = Instant::now();
    let out = cargo_build(b.name, &[]);
    assert!(
        out.status.success(),
        "building targets/{} failed:\n{}",
        b.name,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}: built in {:.1} s", b.name, t.elapsed().as_secs_f64());
    target_dir().join(b.target).join("release").join(b.name)
}

/// Section sizes from llvm-size (rustup component llvm-tools), or None without it.
fn sections(elf: &Path) -> Option<Vec<(String, u64)>> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let vv = Command::new(rustc).arg("-vV").output().ok()?;
    let vv = String::from_utf8_lossy(&vv.stdout).into_owned();
    let host = vv.lines().find_map(|l| l.strip_prefix("host: "))?;
    let size = sysroot()?.join(format!("lib/rustlib/{host}/bin/llvm-size"));
    let out = Command::new(size).arg("-A").arg(elf).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let name = w.next()?;
                let bytes = w.next()?.parse().ok()?;
                name.starts_with('.').then(|| (name.to_owned(), bytes))
            })
            .collect(),
    )
}

/// `| .text | .rodata | .model | .data | .bss |` cells (`.text` includes the vector table).
fn size_cells(elf: &Path) -> String {
    let Some(s) = sections(elf) else {
        return "n/a (llvm-size missing: rustup component add llvm-tools) | | | |".into();
    };
    let get = |n: &str| {
        s.iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v)
            .sum::<u64>()
    };
    let text = get(".vector_table") + get(".text") + get(".start_block") + get(".end_block");
    format!(
        "{} | {} | {} | {} | {}",
        text,
        get(".rodata"),
        get(".model"),
        get(".data"),
        get(".bss") + get(".uninit")
    )
}

/// The desktop engine's run: prompt ids, generated ids, hash of the final logits.
struct Reference {
    prompt: Vec<u32>,
    generated: Vec<u32>,
    hash: u64,
    text: String,
}

fn fnv1a64(values: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_bits().to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn desktop_kv(model_path: &str, opts: StateOptions, tokens: usize) -> Reference {
    let file = ModelBytes::read(root().join(model_path)).unwrap();
    let model = file.model().unwrap();
    let tok_buf = TokenizerBuf::new(model.gguf()).unwrap();
    let tok = tok_buf.tokenizer();
    let mut prompt: Vec<u32> = tok.bos().into_iter().collect();
    prompt.extend(tok.encode_to_vec(PROMPT.as_bytes()).unwrap());
    let mut buf = StateBuffer::for_model(&model, opts).unwrap();
    let mut state = buf.state(&model).unwrap();
    for &t in &prompt {
        mhmoe::forward(&model, &mut state, t).unwrap();
    }
    let mut generated = Vec::new();
    for _ in 0..tokens {
        let next = argmax(state.logits()).unwrap();
        generated.push(next);
        mhmoe::forward(&model, &mut state, next).unwrap();
    }
    Reference {
        hash: fnv1a64(state.logits()),
        text: tok.decode_to_string(&generated).unwrap(),
        prompt,
        generated,
    }
}

/// Runs the firmware; `scalar` passes `isa=scalar` on its command line (scalar kernels).
fn run_qemu(qemu: &[&str], elf: &Path, scalar: bool) -> (Option<i32>, String) {
    let semihosting = if scalar {
        "enable=on,target=native,arg=fw,arg=isa=scalar"
    } else {
        "enable=on,target=native"
    };
    let out = Command::new("timeout")
        .arg("120")
        .args(qemu)
        .args(["-nographic", "-monitor", "none", "-serial", "none"])
        .args(["-semihosting-config", semihosting, "-kernel"])
        .arg(elf)
        .output()
        .expect("running timeout qemu");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// The words after `key` on the firmware's line starting with `key `.
fn field<'t>(text: &'t str, key: &str) -> Option<Vec<&'t str>> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .map(|rest| rest.split_whitespace().collect())
}

/// The value of `name=` in the firmware's `demo-fw board=..` line.
fn header_word<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    field(text, "demo-fw")?
        .into_iter()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// A number in the firmware's `demo-fw board=..` line.
fn header(text: &str, name: &str) -> Option<usize> {
    header_word(text, name)?.parse().ok()
}

fn ids(text: &str, key: &str) -> Option<Vec<u32>> {
    field(text, key)?.iter().map(|w| w.parse().ok()).collect()
}

/// The firmware's painted stack high-water mark, in bytes.
fn stack_high_water(text: &str) -> Option<usize> {
    field(text, "stack-high-water")?.first()?.parse().ok()
}

/// Differences between a firmware run and the desktop's.
fn compare(code: Option<i32>, out: &str, r: &Reference, kernels: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if code != Some(0) || !out.lines().any(|l| l == "demo-fw ok") {
        problems.push(format!("exit code {code:?}"));
    }
    if header_word(out, "isa") != Some(kernels) {
        problems.push(format!("not the expected kernels ({kernels})"));
    }
    if ids(out, "prompt-ids").as_ref() != Some(&r.prompt) {
        problems.push(format!("prompt ids differ (desktop {:?})", r.prompt));
    }
    if ids(out, "generated-ids").as_ref() != Some(&r.generated) {
        problems.push(format!("generated ids differ (desktop {:?})", r.generated));
    }
    let hash = format!("{:#018x}", r.hash);
    if field(out, "logits-fnv1a64") != Some(vec![hash.as_str()]) {
        problems.push(format!("logits hash differs (desktop {hash})"));
    }
    problems
}

const TABLE_HEAD: &str = "| board | core, kernels | model | ctx | .text | .rodata | .model | .data | .bss | stack high-water |\n|---|---|---|---|---|---|---|---|---|---|";

/// What a desktop reference is computed for: model, context, KV cache type, tokens.
type RunKey = (&'static str, usize, KvType, usize);

#[test]
fn emulated_boards_match_desktop() {
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    let mut reference: Option<(RunKey, Reference)> = None;
    for b in &EMULATED {
        if let Some(reason) = missing(b, true) {
            skip(&format!("{}: {reason}", b.name));
            continue;
        }
        let elf = build(b);
        let qemu = b.qemu.unwrap();
        // The build's ISA kernels, then the scalar ones: both must match the desktop.
        let mut text = String::new();
        for scalar in [false, true] {
            if scalar && b.kernels == "scalar" {
                break; // a scalar-only build
            }
            let t = Instant::now();
            let (code, out) = run_qemu(qemu, &elf, scalar);
            let name = format!("{}{}", b.name, if scalar { " (scalar)" } else { "" });
            println!(
                "{name}: exit {code:?} in {:.2} s",
                t.elapsed().as_secs_f64()
            );
            let (Some(ctx), Some(tokens)) = (header(&out, "ctx"), header(&out, "tokens")) else {
                failures.push(format!("{name}: no header line (exit {code:?}):\n{out}"));
                continue;
            };
            let kv = header_word(&out, "kv")
                .and_then(KvType::from_name)
                .unwrap_or(KvType::F32);
            if reference
                .as_ref()
                .is_none_or(|(k, _)| *k != (b.model, ctx, kv, tokens))
            {
                let opts = StateOptions::new(ctx).kv(kv);
                reference = Some((
                    (b.model, ctx, kv, tokens),
                    desktop_kv(b.model, opts, tokens),
                ));
            }
            let r = &reference.as_ref().unwrap().1;
            let kernels = if scalar { "scalar" } else { b.kernels };
            let mut problems = compare(code, &out, r, kernels);
            match stack_high_water(&out) {
                Some(used) if used > b.stack_budget => problems.push(format!(
                    "the stack high-water mark is {used} bytes, over the board's budget of {} bytes by {} (tests/firmware.rs, targets/README.md)",
                    b.stack_budget,
                    used - b.stack_budget
                )),
                Some(used) => println!(
                    "{name}: stack high-water {used} bytes, budget {} bytes",
                    b.stack_budget
                ),
                None => problems.push("no stack-high-water line".into()),
            }
            if problems.is_empty() {
                println!(
                    "{name}: {} tokens identical to the desktop, logits hash {:#018x}: {:?}",
                    r.generated.len(),
                    r.hash,
                    r.text
                );
            } else {
                failures.push(format!("{name}: {}\n{out}", problems.join(", ")));
            }
            if !scalar {
                text = out;
            }
        }
        let ctx = header(&text, "ctx").unwrap_or(0);
        let isa = header_word(&text, "isa").unwrap_or("?");
        let stack = field(&text, "stack-high-water")
            .and_then(|w| w.first().map(|s| s.to_string()))
            .unwrap_or_else(|| "?".into());
        rows.push(format!(
            "| {} (QEMU) | {}, {isa} | {} | {ctx} | {} | {stack} |",
            b.name,
            b.target,
            b.model.trim_start_matches("models/"),
            size_cells(&elf)
        ));
    }
    println!("\n{TABLE_HEAD}\n{}\n", rows.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The firmware of EMBEDDING.md (`targets/template`, edition 2024, no `static mut`) builds,
/// runs on the emulated Cortex-M4 and writes what the desktop engine writes with the same model,
/// context and KV cache type, within its stack budget.
#[test]
fn template_runs_like_the_desktop() {
    const BUDGET: usize = 9 * 1024; // measured 7,176 bytes, rounded up to a KiB, plus 1 KiB
    let board = &EMULATED[0]; // the MPS2 AN386, as the template's .cargo/config.toml runs it
    if let Some(reason) = missing(board, true) {
        skip(&reason);
        return;
    }
    let out = cargo_build("template", &[]);
    assert!(
        out.status.success(),
        "building targets/template failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let elf = target_dir()
        .join(board.target)
        .join("release/mhmoe-template");
    let (code, text) = run_qemu(board.qemu.unwrap(), &elf, false);
    assert_eq!(code, Some(0), "the template failed:\n{text}");
    assert!(text.contains("template ok"), "{text}");
    let want = desktop_kv(
        "models/mhmoe-demo-q4_0.gguf",
        StateOptions::new(256).kv(KvType::Q4_0),
        16,
    );
    assert!(
        text.contains(&format!("{PROMPT}{}\n", want.text)),
        "the template wrote:\n{text}\nthe desktop engine: {PROMPT}{}",
        want.text
    );
    let stack = stack_high_water(&text).expect("the template reports its stack");
    assert!(
        stack <= BUDGET,
        "the template's stack high-water mark is {stack} bytes, over its budget of {BUDGET}"
    );
    println!("template: stack high-water {stack} bytes (budget {BUDGET})");
}

#[test]
fn real_boards_build() {
    if let Some(reason) = REAL.iter().find_map(|b| missing(b, false)) {
        skip(&reason);
        return;
    }
    let mut rows = Vec::new();
    for b in &REAL {
        let elf = build(b);
        let config = std::fs::read_to_string(
            std::fs::read_dir(target_dir().join(b.target).join("release/build"))
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(b.name))
                .map(|e| e.path().join("out/mhmoe_sizes.rs"))
                .filter(|p| p.is_file())
                .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
                .expect("the build script's mhmoe_sizes.rs"),
        )
        .unwrap();
        let ctx = config
            .lines()
            .find_map(|l| l.strip_prefix("pub const CTX: usize = "))
            .unwrap_or("?")
            .trim_end_matches(';')
            .to_owned();
        rows.push(format!(
            "| {} | {}, {} | {} | {ctx} | {} | on the device |",
            b.name,
            b.target,
            b.kernels,
            b.model.trim_start_matches("models/"),
            size_cells(&elf)
        ));
    }
    println!("\n{TABLE_HEAD}\n{}\n", rows.join("\n"));

    // The nRF52840 runs a context of 256 with the Q4_0 KV cache; with the f32 one it does not
    // fit its 256 KB of RAM, and the build fails saying by how much.
    let out = cargo_build(
        "nrf52840-dk",
        &[("DEMO_FW_CTX", "256"), ("DEMO_FW_KV", "f32")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an f32 KV cache at 256 must not fit");
    assert!(
        err.contains("do not fit nrf52840-dk")
            && err.contains("RAM: needed")
            && err.contains("bytes short"),
        "unclear failure message:\n{err}"
    );
    let line = err.lines().find(|l| l.contains("RAM: needed")).unwrap();
    println!("nrf52840-dk with DEMO_FW_CTX=256 DEMO_FW_KV=f32 fails as it should:{line}");
}
