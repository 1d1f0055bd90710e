//! Expert grouping: every chosen expert's weights are read once per forward pass, however many
//! sub-tokens of the pass chose it (one token, or a whole batch), so the weight bytes read
//! equal the active weight bytes of the pass.

mod common;

use std::collections::BTreeSet;

use mhmoe::file::{ModelBytes, StateBuffer};
use mhmoe::model::{Ffn, Router};
use mhmoe::state::StateOptions;
use mhmoe::{Model, State};

/// The weight bytes a pass of `n` tokens must read, given its routing: every dense matrix
/// once, `n` embedding rows, and per MoE layer each expert chosen by any sub-token once.
/// Notes in `shared` whether a shared expert was seen.
fn active_bytes(model: &Model<'_>, state: &State<'_>, n: usize, shared: &mut bool) -> u64 {
    let c = model.config();
    let mut active = n * model.token_embd().row_bytes() + model.output().data().len();
    for (l, layer) in model.layers().enumerate() {
        active += [layer.wq, layer.wk, layer.wv, layer.wo]
            .iter()
            .map(|m| m.data().len())
            .sum::<usize>();
        match &layer.ffn {
            Ffn::Dense(f) => {
                active += f.gate.data().len() + f.up.data().len() + f.down.data().len()
            }
            Ffn::Moe(moe) => {
                let mut distinct = BTreeSet::new();
                for t in 0..n {
                    let (idx, gates) = state.routing_of(model, l, t).unwrap();
                    assert_eq!(idx.len(), c.moe_heads() * c.top_k());
                    assert!(gates.iter().all(|g| g.is_finite() && *g > 0.0));
                    distinct.extend(idx.iter().copied());
                }
                assert!(state.routing_of(model, l, n).is_none());
                assert!(distinct.iter().all(|&e| (e as usize) < c.n_experts()));
                let per_expert = moe.gate.get(0).data().len()
                    + moe.up.get(0).data().len()
                    + moe.down.get(0).data().len();
                active += distinct.len() * per_expert;
                for (w, _) in moe.head.iter().chain(moe.merge.iter()) {
                    active += w.data().len();
                }
                active += match moe.router {
                    Router::Softmax(w) => w.data().len(),
                    Router::XMoe { reduce, experts } => reduce.data().len() + experts.data().len(),
                };
                if let Some(s) = &moe.shared {
                    *shared = true;
                    active += s.gate.data().len() + s.up.data().len() + s.down.data().len();
                }
            }
        }
    }
    active as u64
}

const TOKENS: [u32; 8] = [1, 7, 42, 3, 99, 5, 200, 17];

#[test]
fn weight_bytes_read_per_token_equal_active_weight_bytes() {
    let mut shared_expert_seen = false;
    for path in common::test_models() {
        let file = ModelBytes::read(&path).unwrap();
        let model = file.model().unwrap();
        let mut buf = StateBuffer::for_model(&model, 8).unwrap();
        let mut state = buf.state(&model).unwrap();
        for (t, token) in TOKENS.into_iter().enumerate() {
            mhmoe::forward(&model, &mut state, token).unwrap();
            let want = active_bytes(&model, &state, 1, &mut shared_expert_seen);
            let got = state.weight_bytes_read();
            assert_eq!(got, want, "{}: token {t}", path.display());
        }
    }
    assert!(shared_expert_seen, "no test model has a shared expert");
}

#[test]
fn weight_bytes_read_per_batch_equal_active_weight_bytes_of_the_batch() {
    let mut fewer = false;
    for path in common::test_models() {
        let file = ModelBytes::read(&path).unwrap();
        let model = file.model().unwrap();
        let mut buf = StateBuffer::for_model(&model, StateOptions::new(8).batch(8)).unwrap();
        let mut state = buf.state(&model).unwrap();
        mhmoe::forward_batch(&model, &mut state, &TOKENS).unwrap();
        let want = active_bytes(&model, &state, TOKENS.len(), &mut false);
        assert_eq!(state.weight_bytes_read(), want, "{}", path.display());
        // Reading each expert once per batch is much less than once per token.
        let mut one = StateBuffer::for_model(&model, 8).unwrap();
        let mut one = one.state(&model).unwrap();
        let per_token: u64 = TOKENS
            .iter()
            .map(|&t| {
                mhmoe::forward(&model, &mut one, t).unwrap();
                one.weight_bytes_read()
            })
            .sum();
        assert!(want <= per_token);
        fewer |= want < per_token;
    }
    assert!(
        fewer,
        "no model read fewer bytes in a batch than token by token"
    );
}

#[test]
fn sub_tokens_share_experts_in_the_test_models() {
    // The grouping only matters when sub-tokens of one token pick the same expert: make sure
    // the test models exercise that case.
    let mut shared = 0;
    for path in common::test_models() {
        let file = ModelBytes::read(&path).unwrap();
        let model = file.model().unwrap();
        if model.config().moe_heads() == 1 {
            continue;
        }
        let mut buf = StateBuffer::for_model(&model, 16).unwrap();
        let mut state = buf.state(&model).unwrap();
        for token in 0..16u32 {
            mhmoe::forward(&model, &mut state, token * 13 % 256).unwrap();
            for l in 0..model.config().n_layers() {
                if let Some((idx, _)) = state.routing(&model, l) {
                    let distinct: BTreeSet<u32> = idx.iter().copied().collect();
                    if distinct.len() < idx.len() {
                        shared += 1;
                    }
                }
            }
        }
    }
    assert!(shared > 0, "no token had two sub-tokens on one expert");
}
