//! The engine against the independent numpy reference (tools/mhmoe_tools/reference.py):
//! logits at every position within the tolerance table, greedy tokens exactly.

mod common;

use common::{argmax, logit_tolerance, test_models, Golden};
use mhmoe::file::{ModelBytes, StateBuffer};
use mhmoe::quant::GgmlType;

/// The loosest tolerance class among the model's tensors.
fn model_class(bytes: &[u8]) -> GgmlType {
    let g = mhmoe::gguf::Gguf::parse(bytes).unwrap();
    let mut class = GgmlType::F32;
    for t in g.tensors() {
        let ty =
            t.ty.computed()
                .expect("test models hold types the engine computes with");
        if logit_tolerance(ty) > logit_tolerance(class) {
            class = ty;
        }
    }
    class
}

#[test]
fn every_test_model_matches_the_reference() {
    let models = test_models();
    assert!(
        models.len() >= 8,
        "expected the 8 generated test models, found {}",
        models.len()
    );
    for path in models {
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let golden = Golden::read(&common::root().join(format!("tests/golden/{stem}.golden")));
        let file = ModelBytes::read(&path).unwrap();
        let model = file.model().unwrap();
        assert_eq!(model.config().vocab_size(), golden.vocab, "{stem}: vocab");
        let tol = logit_tolerance(model_class(file.bytes()));
        let n = golden.tokens.len();
        let mut buf = StateBuffer::for_model(&model, n).unwrap();
        let mut state = buf.state(&model).unwrap();
        let mut worst = 0.0f32;
        for p in 0..n - 1 {
            let logits = mhmoe::forward(&model, &mut state, golden.tokens[p]).unwrap();
            let want = &golden.logits[p];
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
            let err = logits
                .iter()
                .zip(want)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
                / scale;
            worst = worst.max(err);
            assert!(
                err <= tol,
                "{stem}: position {p}: relative logit error {err:e} > {tol:e}"
            );
            if p + 1 >= golden.n_prompt {
                assert_eq!(
                    argmax(logits),
                    golden.tokens[p + 1],
                    "{stem}: greedy token at position {}",
                    p + 1
                );
            }
        }
        println!(
            "{stem}: {} positions, worst relative logit error {worst:e} (tolerance {tol:e})",
            n - 1
        );
    }
}
