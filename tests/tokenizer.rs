//! The tokenizer against ids from an independent encoder.
//!
//! * `golden_cases`: `tests/golden/tokenizer_cases.txt` (ids from `tools/mhmoe_tools/bpe.py`,
//!   format in its header) with the model it names, then the same cases with every other test
//!   model that has a tokenizer (they all share one).
//! * `demo_tokenizer_ram_at_most_8_kib`, `file_tables_and_built_tables_agree`: the shipped demo
//!   models carry the tokenizer's lookup tables, so the tokenizer needs no workspace; the SMoE
//!   twin (same vocabulary) has none, and the tables built in RAM encode the same.
//! * `hf_corpus_cross_check` (ignored: needs data outside the repository): a whole text file
//!   against the ids Hugging Face `tokenizers` gave for it, e.g. the demo corpus that
//!   `tools/train_tokenizer.py` writes:
//!
//!   ```text
//!   MHMOE_TOKENIZER_GGUF=/work/data/export/test-smoe-q8_0.gguf \
//!   MHMOE_TOKENIZER_TEXT=/work/data/corpus/val.txt \
//!   MHMOE_TOKENIZER_IDS_U16=/work/data/corpus/val.u16 \
//!   cargo test --test tokenizer -- --ignored --nocapture
//!   ```

use std::path::{Path, PathBuf};

use mhmoe::gguf::Gguf;
use mhmoe::tokenizer::{Decoder, Tokenizer, TokenizerBuf};

const CASES: &str = "tests/golden/tokenizer_cases.txt";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Case {
    line: usize,
    input: Vec<u8>,
    ids: Vec<u32>,
}

fn parse_hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The cases and the model file named in the header.
fn read_cases() -> (PathBuf, Vec<Case>) {
    let path = root().join(CASES);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} is missing ({e}); see tools/mhmoe_tools", path.display()));
    let model = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| {
            let at = l.find("tests/models/")?;
            Some(l[at..].split_whitespace().next()?.to_string())
        })
        .expect("the header names the model (tests/models/...)");
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(' ');
        let input = match fields.next().expect("input field") {
            "-" => Vec::new(),
            h => parse_hex(h),
        };
        let ids = fields.map(|f| f.parse().expect("decimal id")).collect();
        cases.push(Case {
            line: i + 1,
            input,
            ids,
        });
    }
    assert!(!cases.is_empty(), "no cases in {CASES}");
    (root().join(model), cases)
}

/// Encodes and decodes every case with the tokenizer of `model`; returns how many passed.
fn check_model(model: &Path, cases: &[Case]) -> usize {
    let bytes = std::fs::read(model).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    let g = Gguf::parse(&bytes).unwrap();
    // The no-alloc path: a caller-owned workspace and output buffer.
    let mut ws = vec![0u32; Tokenizer::workspace_len(&g).unwrap()];
    let tok = Tokenizer::new(&g, &mut ws).unwrap();
    let mut out = vec![0u32; 4096];
    for c in cases {
        let n = tok.encode(&c.input, &mut out).unwrap();
        assert_eq!(
            out[..n],
            c.ids[..],
            "{}: line {} ({:?})",
            model.display(),
            c.line,
            String::from_utf8_lossy(&c.input)
        );
        let mut text = String::new();
        let mut d = Decoder::new();
        for &id in &c.ids {
            d.push(&tok, id, &mut |s: &str| text.push_str(s)).unwrap();
        }
        d.flush(&mut |s: &str| text.push_str(s));
        assert_eq!(text.as_bytes(), c.input, "decode, line {}", c.line);
    }
    cases.len()
}

#[test]
fn golden_cases() {
    let (model, cases) = read_cases();
    assert_eq!(check_model(&model, &cases), cases.len());

    // The header: 256 byte tokens (id == byte), 40 merges, <|bos|> = 296, <|eos|> = 297.
    let bytes = std::fs::read(&model).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let buf = TokenizerBuf::new(&g).unwrap();
    let tok = buf.tokenizer();
    assert_eq!(tok.merge_count(), 40);
    assert_eq!(tok.vocab_size(), 298);
    assert_eq!(tok.find_token("<|bos|>"), Some(296));
    assert_eq!(tok.find_token("<|eos|>"), Some(297));
    assert!((0..=255u8).all(|b| tok.byte_token(b) == u32::from(b)));

    // Every other test model with a tokenizer gives the same ids.
    let mut others = 0;
    for entry in std::fs::read_dir(root().join("tests/models")).unwrap() {
        let path = entry.unwrap().path();
        if path == model || path.extension().is_none_or(|e| e != "gguf") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let Ok(g) = Gguf::parse(&bytes) else { continue };
        if g.get("tokenizer.ggml.model").is_none() {
            continue;
        }
        check_model(&path, &cases);
        others += 1;
    }
    eprintln!(
        "{} cases matched with {} and {others} other models",
        cases.len(),
        model.display()
    );
}

/// The RAM bound of issue 10 for the shipped demo models: workspace plus the `Tokenizer` value
/// at most 8 KiB (the value is counted at this machine's pointer width, about twice its size on
/// a 32-bit microcontroller; encoding and decoding add a few hundred bytes of stack).
#[test]
fn demo_tokenizer_ram_at_most_8_kib() {
    for name in [
        "mhmoe-demo-q8_0.gguf",
        "mhmoe-demo-q4_0.gguf",
        "mhmoe-demo-f32.gguf",
    ] {
        let bytes = std::fs::read(root().join("models").join(name)).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        let words = Tokenizer::workspace_len(&g).unwrap();
        let ram = words * 4 + std::mem::size_of::<Tokenizer<'_, '_>>();
        eprintln!("{name}: tokenizer RAM {ram} bytes (workspace {words} words)");
        assert!(ram <= 8 * 1024, "{name}: {ram} bytes");
        let mut ws = vec![0u32; words];
        let tok = Tokenizer::new(&g, &mut ws).unwrap();
        assert_eq!((tok.vocab_size(), tok.merge_count()), (2048, 1792));
    }
}

/// The same vocabulary with its tables in the file (the demo model) and built in a workspace
/// (the SMoE twin, which has none): the same ids for the held-out sample, the same strings.
#[test]
fn file_tables_and_built_tables_agree() {
    let demo = std::fs::read(root().join("models/mhmoe-demo-q8_0.gguf")).unwrap();
    let twin = std::fs::read(root().join("models/smoe-twin-q8_0.gguf")).unwrap();
    let (g_demo, g_twin) = (Gguf::parse(&demo).unwrap(), Gguf::parse(&twin).unwrap());
    assert_eq!(Tokenizer::workspace_len(&g_demo), Ok(0));
    let words = Tokenizer::workspace_len(&g_twin).unwrap();
    assert_eq!(words, 2 * 2048 + 4 * 1792 + 257); // 46,084 bytes
    let mut ws = vec![0u32; words];
    let in_file = Tokenizer::new(&g_demo, &mut []).unwrap();
    let built = Tokenizer::new(&g_twin, &mut ws).unwrap();
    for id in 0..2048 {
        assert_eq!(in_file.token_str(id), built.token_str(id));
    }
    for b in 0..=255u8 {
        assert_eq!(in_file.byte_token(b), built.byte_token(b));
    }
    let text = std::fs::read(root().join("models/heldout-sample.txt")).unwrap();
    let ids = in_file.encode_to_vec(&text).unwrap();
    assert_eq!(ids.len(), 12_167); // MODEL_CARD.md
    assert_eq!(built.encode_to_vec(&text).unwrap(), ids);
    assert_eq!(in_file.decode_to_bytes(&ids).unwrap(), text);
}

#[test]
#[ignore = "needs MHMOE_TOKENIZER_GGUF, MHMOE_TOKENIZER_TEXT and MHMOE_TOKENIZER_IDS_U16"]
fn hf_corpus_cross_check() {
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| panic!("set {k} (see the top of tests/tokenizer.rs)"))
    };
    let bytes = std::fs::read(var("MHMOE_TOKENIZER_GGUF")).unwrap();
    let text = std::fs::read(var("MHMOE_TOKENIZER_TEXT")).unwrap();
    let want: Vec<u32> = std::fs::read(var("MHMOE_TOKENIZER_IDS_U16"))
        .unwrap()
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    let g = Gguf::parse(&bytes).unwrap();
    let buf = TokenizerBuf::new(&g).unwrap();
    let tok = buf.tokenizer();
    let t0 = std::time::Instant::now();
    let got = tok.encode_to_vec(&text).unwrap();
    let dt = t0.elapsed();
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "first difference at token {i}: got {:?}, want {:?}",
            &got[i..(i + 8).min(got.len())],
            &want[i..(i + 8).min(want.len())]
        );
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(tok.decode_to_bytes(&got).unwrap(), text);
    eprintln!(
        "{} bytes -> {} tokens, identical to the reference ({:.1} MB/s)",
        text.len(),
        got.len(),
        text.len() as f64 / dt.as_secs_f64() / 1e6
    );
}
