//! Every input the fuzzers (FUZZING.md) or the sweeps found to break an invariant, kept as a
//! test. Crash inputs live in `tests/regressions/<target>-<what>.bin` and are replayed through
//! the same harness function as the fuzz target `<target>` (`tests/common/hostile.rs`); the
//! specific behaviour each one exposed is pinned by a focused test below.

mod common;

use common::hostile;
use mhmoe::error::Error;
use mhmoe::gguf::{Gguf, Value, ValueType};
use mhmoe::tokenizer::TokenizerBuf;

/// Replays every saved input through its target's harness.
#[test]
fn saved_fuzz_inputs_replay_cleanly() {
    let dir = common::root().join("tests/regressions");
    let model = std::fs::read(common::root().join("tests/models/d_q8_0_h2_k2_gqa.gguf")).unwrap();
    let g = Gguf::parse(&model).unwrap();
    let tok = TokenizerBuf::new(&g).unwrap();
    let mut n = 0;
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).unwrap();
        let target = name.split('-').next().unwrap();
        match target {
            "gguf_parse" => hostile::gguf(&data),
            "model_load" => hostile::model(&data),
            "forward_steps" => hostile::forward_steps(&data),
            "tokenizer" => hostile::tokenizer(&tok.tokenizer(), &data),
            "sampler" => hostile::sampler(&data),
            _ => panic!("{name}: unknown fuzz target {target:?}"),
        }
        n += 1;
    }
    assert!(n >= 1, "no saved inputs in {}", dir.display());
}

/// A GGUF header with the given metadata entries (already encoded) and no tensors.
fn gguf_with_kvs(kvs: &[u8], n_kv: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend(n_kv.to_le_bytes());
    out.extend(kvs);
    out
}

fn bool_array_kv(key: &str, values: &[u8]) -> Vec<u8> {
    let mut kv = Vec::new();
    kv.extend((key.len() as u64).to_le_bytes());
    kv.extend(key.as_bytes());
    kv.extend(9u32.to_le_bytes()); // array
    kv.extend(7u32.to_le_bytes()); // of bool
    kv.extend((values.len() as u64).to_le_bytes());
    kv.extend(values);
    kv
}

/// Found by `gguf_parse` (tests/regressions/gguf_parse-invalid-bool-array.bin): a bool array
/// holding bytes other than 0 and 1 parsed, but iterating it stopped at the first bad element,
/// so `len()` promised elements that `iter()` and `get()` never produced. Parsing now checks
/// every element of a bool array, as it does a single bool.
#[test]
fn bool_arrays_are_validated_at_parse_time() {
    let bytes = gguf_with_kvs(&bool_array_kv("flags", &[1, 0, 0xc3, 1]), 1);
    let err = Gguf::parse(&bytes).unwrap_err();
    let at = bytes.len() - 2;
    assert_eq!(
        err,
        Error::InvalidValueType {
            value_type: 0xc3,
            offset: at
        }
    );

    let bytes = gguf_with_kvs(&bool_array_kv("flags", &[1, 0, 0, 1]), 1);
    let g = Gguf::parse(&bytes).unwrap();
    let a = g.get("flags").unwrap().as_array().unwrap();
    assert_eq!(a.elem_type(), ValueType::Bool);
    let got: Vec<Value<'_>> = a.iter().collect();
    assert_eq!(got.len(), a.len());
    assert_eq!(a.get(3), Some(Value::Bool(true)));
    assert_eq!(a.get(2), Some(Value::Bool(false)));
}
