//! NaN and infinity in weights, block scales and activations are reported as
//! `Error::NonFinite` by the forward pass instead of turning into silent garbage (README,
//! "Robustness": nothing is scanned at load time; the forward pass flags them when they are
//! used). Every case runs on every instruction set available here.
//!
//! NaN and infinity propagate through additions and multiplications, so most of them reach the
//! logits, which the forward pass checks. The places where a non-finite value could vanish are
//! checked where they happen: a softmax input of -inf (attention scores, router logits) would
//! become a probability of 0, a sum of squares that overflows would make RMSNorm scale the
//! token to zero, and an X-MoE expert embedding whose norm overflows would get the logit 0.
// `Error` keeps names inline (no allocation), so it is large; results carry it by value here.
#![allow(clippy::result_large_err)]

mod common;

use common::builder::Builder;
use mhmoe::error::{Error, TokenError};
use mhmoe::kernels::ALL_ISAS;
use mhmoe::{forward_on, Isa, Model, State};

const F16_NAN: u16 = 0x7E00;
const F16_INF: u16 = 0x7C00;

fn model_bytes(name: &str) -> Vec<u8> {
    std::fs::read(common::root().join("tests/models").join(name)).unwrap()
}

fn isas() -> Vec<Isa> {
    ALL_ISAS.into_iter().filter(|i| i.is_available()).collect()
}

/// Runs `tokens` from position 0 on `isa`; the last logits, or the first error (after which the
/// position must not have advanced).
fn run(isa: Isa, bytes: &[u8], tokens: &[u32]) -> Result<Vec<f32>, Error> {
    let model = Model::from_bytes(bytes).expect("the edited model still loads");
    let mut buf = mhmoe::file::StateBuffer::for_model(&model, tokens.len()).unwrap();
    let mut st = buf.state(&model).unwrap();
    let mut last = Vec::new();
    for (p, &t) in tokens.iter().enumerate() {
        match forward_on(isa, &model, &mut st, t) {
            Ok(l) => last = l.to_vec(),
            Err(e) => {
                assert_eq!(st.pos(), p, "a failed forward pass advanced the position");
                return Err(e);
            }
        }
    }
    Ok(last)
}

/// Every ISA reports `NonFinite` (naming `what`, if given) for `tokens` on `bytes`.
fn assert_flagged(bytes: &[u8], tokens: &[u32], what: Option<&str>, case: &str) {
    for isa in isas() {
        match run(isa, bytes, tokens) {
            Err(Error::NonFinite { what: w }) => {
                if let Some(want) = what {
                    assert!(
                        w.contains(want),
                        "{case} on {}: flagged in {w:?}, not {want:?}",
                        isa.name()
                    );
                }
            }
            Ok(logits) => panic!(
                "{case} on {}: no error, logits {:?}...",
                isa.name(),
                &logits[..4]
            ),
            Err(e) => panic!("{case} on {}: {e:?}", isa.name()),
        }
    }
}

fn f32_at(data: &mut [u8], i: usize, v: f32) {
    data[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
}

fn u16_at(data: &mut [u8], i: usize, bits: u16) {
    data[2 * i..2 * i + 2].copy_from_slice(&bits.to_le_bytes());
}

fn edit(name: &str, tensor: &str, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = Builder::from_file(&model_bytes(name));
    f(&mut b.tensor_mut(tensor).data);
    b.build()
}

#[test]
fn nan_and_inf_weights_in_every_type() {
    // One element of a matrix (F32, F16, BF16), or one block scale (Q8_0, Q4_0).
    let cases: [(&str, &str, u8); 5] = [
        ("a_f32_h2_k2_gqa.gguf", "blk.0.attn_q.weight", 4),
        ("b_f16_h4_k1_untied.gguf", "blk.0.attn_v.weight", 2),
        ("c_bf16_h1_k2_norm.gguf", "blk.0.ffn_up.weight", 2),
        ("d_q8_0_h2_k2_gqa.gguf", "blk.0.attn_k.weight", 0),
        ("e_q4_0_h2_k2_shexp.gguf", "blk.1.ffn_down_shexp.weight", 0),
    ];
    for (name, tensor, elem) in cases {
        for inf in [false, true] {
            let bytes = edit(name, tensor, |d| match elem {
                4 => f32_at(d, 5, if inf { f32::INFINITY } else { f32::NAN }),
                // F16 and BF16 NaN/inf bit patterns differ; the element is the sixth one.
                2 if name.starts_with("b_") => u16_at(d, 5, if inf { F16_INF } else { F16_NAN }),
                2 => u16_at(d, 5, if inf { 0x7F80 } else { 0x7FC0 }),
                // Block scale: the first two bytes of the tensor (row 0, block 0).
                _ => u16_at(d, 0, if inf { F16_INF } else { F16_NAN }),
            });
            assert_flagged(&bytes, &[1, 2], None, &format!("{name} {tensor} inf={inf}"));
        }
    }
}

#[test]
fn nan_and_inf_in_norm_weights_of_every_model() {
    for path in common::test_models() {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        for (tensor, v) in [
            ("blk.0.attn_norm.weight", f32::NAN),
            ("blk.0.attn_norm.weight", f32::INFINITY),
            ("blk.1.ffn_norm.weight", f32::NEG_INFINITY),
            ("output_norm.weight", f32::NAN),
        ] {
            let bytes = edit(&name, tensor, |d| f32_at(d, 1, v));
            assert_flagged(&bytes, &[3], None, &format!("{name} {tensor} = {v}"));
        }
    }
}

/// With the step API, the layer that meets the NaN fails, and the pass stays failed: later
/// steps and `finish` give the same error, and the position does not advance.
#[test]
fn a_failed_step_stays_failed() {
    let name = common::test_models()[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let bytes = edit(&name, "blk.1.ffn_norm.weight", |d| f32_at(d, 1, f32::NAN));
    let model = Model::from_bytes(&bytes).unwrap();
    let mut buf = mhmoe::file::StateBuffer::for_model(&model, 4).unwrap();
    let mut st = buf.state(&model).unwrap();
    let mut steps = mhmoe::Exec::serial().begin(&model, &mut st, &[3]).unwrap();
    assert_eq!(steps.step(), Ok(true), "layer 0 is fine");
    let e = steps.step().unwrap_err();
    assert!(matches!(e, TokenError::NonFinite(_)), "{e:?}");
    assert_eq!(steps.layers_done(), 1);
    assert_eq!(steps.step(), Err(e));
    assert_eq!(steps.finish().unwrap_err(), e);
    assert_eq!(st.pos(), 0);
}

/// A NaN in one embedding row matters only when that token is used (untied output), and the
/// failed step leaves the state as it was: the next token gives the same logits as on a fresh
/// state.
#[test]
fn nan_embedding_row_flags_its_token_and_the_state_recovers() {
    let name = "b_f16_h4_k1_untied.gguf";
    let d = 64;
    let bytes = edit(name, "token_embd.weight", |data| {
        u16_at(data, 7 * d + 3, F16_NAN)
    });
    for isa in isas() {
        assert!(matches!(
            run(isa, &bytes, &[7]),
            Err(Error::NonFinite { .. })
        ));
        assert!(matches!(
            run(isa, &bytes, &[5, 7]),
            Err(Error::NonFinite { .. })
        ));
        let clean = run(isa, &bytes, &[5, 8]).unwrap();

        let model = Model::from_bytes(&bytes).unwrap();
        let mut buf = mhmoe::file::StateBuffer::for_model(&model, 2).unwrap();
        let mut st = buf.state(&model).unwrap();
        forward_on(isa, &model, &mut st, 5).unwrap();
        assert!(forward_on(isa, &model, &mut st, 7).is_err());
        assert_eq!(st.pos(), 1);
        let after = forward_on(isa, &model, &mut st, 8).unwrap();
        assert!(
            after
                .iter()
                .zip(&clean)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: a failed step changed the state",
            isa.name()
        );
    }
    // Tied output: the row is also an output row, so every step's logits are poisoned.
    let bytes = edit("d_q8_0_h2_k2_gqa.gguf", "token_embd.weight", |data| {
        let row_bytes = d / 32 * 34;
        u16_at(&mut data[7 * row_bytes..], 0, F16_NAN)
    });
    assert_flagged(&bytes, &[8], Some("logits"), "tied Q8_0 embedding");
}

#[test]
fn nan_in_a_router_is_flagged_there() {
    let bytes = edit("a_f32_h2_k2_gqa.gguf", "blk.1.ffn_gate_inp.weight", |d| {
        f32_at(d, 0, f32::NAN)
    });
    assert_flagged(&bytes, &[3], Some("router"), "NaN router weight");
}

/// A -inf router logit would become a probability of 0 (the expert silently never chosen).
/// One -inf weight gives -inf or +inf depending on the sign of the activation it meets, so
/// many tokens are tried: every one must be flagged.
#[test]
fn infinite_router_logits_are_flagged() {
    let bytes = edit("a_f32_h2_k2_gqa.gguf", "blk.1.ffn_gate_inp.weight", |d| {
        // Expert 2's row (32 wide: m = 64 / 2), its first weight.
        f32_at(d, 2 * 32, f32::NEG_INFINITY)
    });
    for t in 0..24 {
        assert_flagged(
            &bytes,
            &[t],
            Some("router"),
            &format!("-inf router weight, token {t}"),
        );
    }
}

/// Finite but huge embeddings: the sum of squares in RMSNorm overflows to +inf, the scale
/// becomes 0 and the whole token becomes zeros (all-zero logits, before this was flagged).
#[test]
fn rmsnorm_overflow_is_flagged() {
    let name = "c_bf16_h1_k2_norm.gguf";
    let bf16_1e20 = (1e20f32.to_bits() >> 16) as u16;
    let bytes = edit(name, "token_embd.weight", |data| {
        for i in 0..64 {
            u16_at(data, 7 * 64 + i, bf16_1e20);
        }
    });
    assert_flagged(&bytes, &[7], Some("activations"), "huge embedding");
    for isa in isas() {
        assert!(run(isa, &bytes, &[6]).is_ok(), "other tokens still work");
    }
}

/// X-MoE: an expert embedding whose squared norm overflows would get `1 / inf = 0` as its
/// scale, so its logit would silently be 0.
#[test]
fn xmoe_expert_norm_overflow_is_flagged() {
    let bytes = edit("g_f32_xmoe_h2_k2.gguf", "blk.1.ffn_gate_inp.weight", |d| {
        // dims [16, E]: expert 1 is elements 16..32.
        for i in 16..32 {
            f32_at(d, i, 1e20);
        }
    });
    assert_flagged(&bytes, &[3], Some("router"), "huge x-moe expert embedding");
}

/// Attention scores of -inf would become weights of 0 (a position silently ignored). Built on
/// layer 0 of the F32 model: the key of token A is huge but finite (column `j` of Wk is 1 and
/// A's normed component `j` is about 3e37 through a huge attn_norm weight; Wv and Wq ignore
/// column `j`), the query of token B is about -8 in every component (column `m` of Wq is 1 and
/// B's component `m` is -1) and B has no component `j`. So A's own score is 0, B's own score is
/// ordinary, and B's score against A overflows to -inf.
#[test]
fn attention_score_overflow_is_flagged() {
    let name = "a_f32_h2_k2_gqa.gguf";
    let (d, q_dim, kv_dim) = (64usize, 64usize, 32usize);
    let (j, m) = (10usize, 20usize);
    let (a, b) = (5usize, 9usize);
    let mut bld = Builder::from_file(&model_bytes(name));
    let wq = &mut bld.tensor_mut("blk.0.attn_q.weight").data;
    for r in 0..q_dim {
        for c in 0..d {
            f32_at(wq, r * d + c, if c == m { 1.0 } else { 0.0 });
        }
    }
    let wk = &mut bld.tensor_mut("blk.0.attn_k.weight").data;
    for r in 0..kv_dim {
        f32_at(wk, r * d + j, 1.0);
    }
    let wv = &mut bld.tensor_mut("blk.0.attn_v.weight").data;
    for r in 0..kv_dim {
        f32_at(wv, r * d + j, 0.0);
    }
    f32_at(&mut bld.tensor_mut("blk.0.attn_norm.weight").data, j, 3e37);
    f32_at(&mut bld.tensor_mut("blk.0.attn_norm.weight").data, m, 1.0);
    let emb = &mut bld.tensor_mut("token_embd.weight").data;
    f32_at(emb, a * d + j, 1.0);
    f32_at(emb, a * d + m, 0.0);
    f32_at(emb, b * d + j, 0.0);
    f32_at(emb, b * d + m, -1.0);
    let bytes = bld.build();
    for isa in isas() {
        assert!(
            run(isa, &bytes, &[a as u32]).is_ok(),
            "token A alone is fine"
        );
        assert!(
            run(isa, &bytes, &[b as u32]).is_ok(),
            "token B alone is fine"
        );
    }
    assert_flagged(
        &bytes,
        &[a as u32, b as u32],
        Some("attention"),
        "-inf attention score",
    );
}

/// The state is not disturbed by an error: `State::new` works again on the same buffer, and
/// the sizes did not change.
#[test]
fn errors_do_not_change_the_state_size() {
    let bytes = edit("a_f32_h2_k2_gqa.gguf", "output_norm.weight", |d| {
        f32_at(d, 0, f32::NAN)
    });
    let model = Model::from_bytes(&bytes).unwrap();
    let need = State::bytes_needed(&model, 2).unwrap();
    let mut buf = mhmoe::file::StateBuffer::for_model(&model, 2).unwrap();
    let mut st = buf.state(&model).unwrap();
    assert!(forward_on(Isa::Scalar, &model, &mut st, 1).is_err());
    assert_eq!(State::bytes_needed(&model, 2).unwrap(), need);
}
