//! `mhmoe::build::Sizing`, the build-script helper: the sizes it emits are the engine's own
//! (`State::bytes_needed`, `Tokenizer::workspace_len`, the file length), a budget miss
//! names the exact bytes short, and `memory.x` budgets are read.

use std::path::PathBuf;

use mhmoe::build::{BuildError, DoesNotFit, Sizing};
use mhmoe::file::ModelBytes;
use mhmoe::tokenizer::Tokenizer;
use mhmoe::{KvType, State, StateOptions};

fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/mhmoe-demo-q4_0.gguf")
}

/// (state bytes at `ctx`, `batch` and `kv`, tokenizer words, file length) from the engine.
fn engine_kv(ctx: usize, batch: usize, kv: KvType) -> (usize, usize, usize) {
    let file = ModelBytes::read(model_path()).unwrap();
    let model = file.model().unwrap();
    let opts = StateOptions::new(ctx).batch(batch).kv(kv);
    (
        State::bytes_needed(&model, opts).unwrap(),
        Tokenizer::workspace_len(model.gguf()).unwrap(),
        file.bytes().len(),
    )
}

fn engine(ctx: usize, batch: usize) -> (usize, usize, usize) {
    engine_kv(ctx, batch, KvType::F32)
}

#[test]
fn emitted_sizes_are_the_engines() {
    for kv in KvType::ALL {
        let sizes = Sizing::new(model_path(), 256).kv(kv).compute().unwrap();
        assert_eq!(sizes.state_bytes, engine_kv(256, 1, kv).0, "{}", kv.name());
        let line = format!("pub const KV: mhmoe::KvType = mhmoe::KvType::{kv:?};");
        assert!(sizes.to_rust().lines().any(|l| l == line), "{line:?}");
    }
    for (ctx, batch) in [(32, 1), (256, 1), (17, 4)] {
        let sizes = Sizing::new(model_path(), ctx)
            .batch(batch)
            .compute()
            .unwrap();
        let (state, words, len) = engine(ctx, batch);
        assert_eq!(sizes.state_bytes, state, "ctx {ctx} batch {batch}");
        assert_eq!(sizes.tokenizer_words, words);
        assert_eq!(sizes.model_len, len);
        assert_eq!((sizes.ctx, sizes.batch), (ctx, batch));
        let rust = sizes.to_rust();
        for line in [
            format!("pub const STATE_BYTES: usize = {state};"),
            format!("pub const TOKENIZER_WORDS: usize = {words};"),
            format!("pub const MODEL_LEN: usize = {len};"),
            format!("pub const CTX: usize = {ctx};"),
            format!("pub const BATCH: usize = {batch};"),
        ] {
            assert!(rust.lines().any(|l| l == line), "{line:?} not in:\n{rust}");
        }
    }
    // Without the tokenizer nothing is counted for it.
    let sizes = Sizing::new(model_path(), 32)
        .tokenizer(false)
        .compute()
        .unwrap();
    assert_eq!(sizes.tokenizer_words, 0);
}

#[test]
fn budget_miss_names_the_bytes_short() {
    let (state, words, len) = engine(256, 1);
    let (stack, ram) = (32 * 1024u64, 256 * 1024u64);
    let needed = state as u64 + words as u64 * 4 + stack;
    let err = Sizing::new(model_path(), 256)
        .ram(ram)
        .flash(len as u64) // exactly enough for the model
        .stack(stack)
        .name("a 256 KiB part")
        .compute()
        .unwrap_err();
    let msg = err.to_string();
    let BuildError::DoesNotFit(d) = &err else {
        panic!("not a budget miss: {msg}")
    };
    let DoesNotFit {
        shortfalls,
        largest_ctx,
        ..
    } = &**d;
    assert_eq!(shortfalls.len(), 1, "{msg}");
    assert_eq!(shortfalls[0].short(), needed - ram);
    assert!(
        msg.starts_with("the model and its buffers do not fit a 256 KiB part:"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "RAM: needed {needed} bytes ({:.1} KiB) = state {state} (context 256, batch 1, KV cache f32) + tokenizer workspace {} + stack {stack}, available {ram} bytes (256.0 KiB): {} bytes short",
            needed as f64 / 1024.0,
            words * 4,
            needed - ram
        )),
        "{msg}"
    );
    // The largest context that fits is reported, and is right.
    let c = largest_ctx.expect("some context fits");
    assert!(msg.contains(&format!(
        "the largest context that fits this RAM is {c} positions"
    )));
    let fixed = words as u64 * 4 + stack;
    assert!(engine(c, 1).0 as u64 + fixed <= ram);
    assert!(engine(c + 1, 1).0 as u64 + fixed > ram);

    // One byte short of RAM, and flash short by the code reserve.
    let exact = state as u64 + words as u64 * 4 + stack;
    let err = Sizing::new(model_path(), 256)
        .ram(exact - 1)
        .stack(stack)
        .flash(len as u64 + 1000)
        .code(1001)
        .compute()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(": 1 bytes short"), "{msg}");
    assert!(
        msg.contains(&format!("flash: needed {} bytes", len + 1001))
            && msg.contains(&format!(
                "= model {len} + code 1001, available {} bytes",
                len + 1000
            )),
        "{msg}"
    );
    assert!(
        msg.contains("the largest context that fits this RAM is 255 positions"),
        "{msg}"
    );
    // Exactly enough fits.
    Sizing::new(model_path(), 256)
        .ram(exact)
        .stack(stack)
        .flash(len as u64 + 1000)
        .code(1000)
        .compute()
        .unwrap();
}

#[test]
fn budgets_from_memory_x() {
    let dir = std::env::temp_dir().join(format!("mhmoe-build-sizes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let memory_x = dir.join("memory.x");
    std::fs::write(
        &memory_x,
        "/* a 1 MiB / 256 KiB part */\nMEMORY\n{\n  FLASH (rx) : ORIGIN = 0x00000000, LENGTH = 1024K\n  RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 0x40000\n}\n",
    )
    .unwrap();
    let (state, words, _) = engine(256, 1);
    let err = Sizing::new(model_path(), 256)
        .memory_x(&memory_x)
        .compute()
        .unwrap_err();
    let needed = state + words * 4;
    assert!(
        err.to_string().contains(&format!(
            "RAM: needed {needed} bytes ({:.1} KiB) = state {state} (context 256, batch 1, KV cache f32) + tokenizer workspace {}, available 262144 bytes (256.0 KiB): {} bytes short",
            needed as f64 / 1024.0,
            words * 4,
            needed - 262144
        )),
        "{err}"
    );
    // Context 32 fits; a region name that is not there is an error that says so.
    Sizing::new(model_path(), 32)
        .memory_x(&memory_x)
        .compute()
        .unwrap();
    let err = Sizing::new(model_path(), 32)
        .memory_x(&memory_x)
        .regions("SRAM", "FLASH")
        .compute()
        .unwrap_err();
    assert!(
        matches!(err, BuildError::MemoryX { .. }) && err.to_string().contains("no region SRAM"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_errors() {
    let err = Sizing::new("no/such/model.gguf", 32).compute().unwrap_err();
    assert!(matches!(err, BuildError::Model { .. }), "{err}");
    let err = Sizing::new(model_path(), 0).compute().unwrap_err();
    assert!(
        matches!(err, BuildError::Size { what: "state", .. }),
        "{err}"
    );
}
