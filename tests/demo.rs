//! The shipped demo model: its tokenizer round-trips the held-out text, the engine's greedy
//! output matches the numpy reference (tests/golden/demo.txt, tools/make_demo_golden.py), and
//! Q8_0 perplexity stays within a stated bound of the F32 master's.

mod common;

use mhmoe::file::{ModelBytes, StateBuffer};
use mhmoe::quant::GgmlType;
use mhmoe::tokenizer::TokenizerBuf;

const PROMPT: &str = "It is a truth universally acknowledged";
/// Largest allowed gap between the Q8_0 and F32 models' mean negative log-likelihood on the first
/// 512 held-out tokens, in nats per token (measured: 0.0003 on the whole sample).
const Q8_0_NLL_BOUND: f64 = 0.01;

fn model_path(name: &str) -> std::path::PathBuf {
    common::root().join("models").join(name)
}

fn heldout() -> Vec<u8> {
    std::fs::read(common::root().join("models/heldout-sample.txt")).unwrap()
}

#[test]
fn tokenizer_round_trips_the_heldout_sample() {
    let file = ModelBytes::read(model_path("mhmoe-demo-q8_0.gguf")).unwrap();
    let model = file.model().unwrap();
    let tok = TokenizerBuf::new(model.gguf()).unwrap();
    let tok = tok.tokenizer();
    let text = heldout();
    let ids = tok.encode_to_vec(&text).unwrap();
    assert!(
        ids.len() * 2 < text.len(),
        "BPE should compress English text"
    );
    assert_eq!(tok.decode_to_bytes(&ids).unwrap(), text);
}

fn parse_ids(line: &str, key: &str) -> Vec<u32> {
    let rest = line.strip_prefix(key).unwrap().trim();
    rest.split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect()
}

#[test]
fn greedy_output_matches_the_reference() {
    let golden = std::fs::read_to_string(common::root().join("tests/golden/demo.txt")).unwrap();
    let lines: Vec<&str> = golden.lines().filter(|l| !l.starts_with('#')).collect();
    let prompt_ids = parse_ids(lines[0], "prompt");
    let greedy = parse_ids(lines[1], "greedy");
    let want: Vec<f32> = lines[2]
        .strip_prefix("final_logits")
        .unwrap()
        .split_whitespace()
        .map(|h| f32::from_bits(u32::from_str_radix(h, 16).unwrap()))
        .collect();

    let file = ModelBytes::read(model_path("mhmoe-demo-q8_0.gguf")).unwrap();
    let model = file.model().unwrap();
    let tok = TokenizerBuf::new(model.gguf()).unwrap();
    assert_eq!(
        tok.tokenizer().encode_to_vec(PROMPT.as_bytes()).unwrap(),
        prompt_ids
    );

    let ctx = prompt_ids.len() + greedy.len();
    let mut buf = StateBuffer::for_model(&model, ctx).unwrap();
    let mut state = buf.state(&model).unwrap();
    for &t in &prompt_ids {
        mhmoe::forward(&model, &mut state, t).unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..greedy.len() {
        let next = common::argmax(state.logits());
        got.push(next);
        mhmoe::forward(&model, &mut state, next).unwrap();
    }
    assert_eq!(got, greedy, "greedy continuation");
    let logits = state.logits();
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let err = logits
        .iter()
        .zip(&want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    let tol = common::logit_tolerance(GgmlType::Q8_0);
    assert!(err <= tol, "final logits: relative error {err:e} > {tol:e}");
}

fn mean_nll(name: &str, ids: &[u32]) -> f64 {
    let file = ModelBytes::read(model_path(name)).unwrap();
    let model = file.model().unwrap();
    let ctx = model.config().context_length();
    let mut buf = StateBuffer::for_model(&model, ctx).unwrap();
    let mut state = buf.state(&model).unwrap();
    let (mut total, mut n) = (0.0f64, 0usize);
    for w in ids.chunks(ctx) {
        state.reset();
        for i in 0..w.len() - 1 {
            let l = mhmoe::forward(&model, &mut state, w[i]).unwrap();
            let max = l.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let sum: f64 = l.iter().map(|&v| (v as f64 - max).exp()).sum();
            total += max + sum.ln() - l[w[i + 1] as usize] as f64;
            n += 1;
        }
    }
    total / n as f64
}

#[test]
fn q8_0_perplexity_is_close_to_f32() {
    let file = ModelBytes::read(model_path("mhmoe-demo-q8_0.gguf")).unwrap();
    let model = file.model().unwrap();
    let tok = TokenizerBuf::new(model.gguf()).unwrap();
    let mut ids = tok.tokenizer().encode_to_vec(&heldout()).unwrap();
    ids.truncate(512);
    let q8 = mean_nll("mhmoe-demo-q8_0.gguf", &ids);
    let f32 = mean_nll("mhmoe-demo-f32.gguf", &ids);
    println!("first 512 held-out tokens: Q8_0 {q8:.4} nats/token, F32 {f32:.4}");
    assert!(
        f32 < 5.0,
        "the trained model should predict text ({f32} nats/token)"
    );
    assert!(
        (q8 - f32).abs() < Q8_0_NLL_BOUND,
        "Q8_0 {q8} vs F32 {f32} nats/token"
    );
}
