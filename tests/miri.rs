//! The Miri subset (`bash tools/miri.sh`), also run natively by `cargo test`: the GGUF parser on
//! a real model and on damaged copies, the buffer carving (`State::new`'s casts in src/state.rs,
//! `StateBuffer` in src/file.rs, `AlignedBuffer`), the tokenizer, the sampler and forward steps
//! on the scalar kernels, checked against the numpy reference's golden logits. Work shrinks
//! under Miri (`cfg!(miri)`).

mod common;

use common::builder::{Builder, Kv, Tensor};
use common::hostile;
use common::{logit_tolerance, Golden};
use mhmoe::error::Error;
use mhmoe::file::StateBuffer;
use mhmoe::gguf::Gguf;
use mhmoe::sampler::{Pcg32, Sampler, SamplerParams};
use mhmoe::tokenizer::{Tokenizer, TokenizerBuf};
use mhmoe::{forward_on, AlignedBuffer, Isa, Model, State};
use std::sync::OnceLock;

/// Q4_0 weights (Q8_0 activations), MH-MoE with h = 2, k = 2 and a shared expert.
static QUANT: &[u8] = include_bytes!("models/e_q4_0_h2_k2_shexp.gguf");
/// BF16 weights, h = 1, renormalized gates, a single kv head.
static FLOAT: &[u8] = include_bytes!("models/c_bf16_h1_k2_norm.gguf");

/// Positions the golden comparisons run (natively; under Miri the tiny model stands in).
fn steps() -> usize {
    8
}

/// ggml type ids.
const F32: u32 = 0;
const F16: u32 = 1;
const Q4_0: u32 = 2;
const Q8_0: u32 = 8;
const BF16: u32 = 30;

/// Random finite weights of type `ty` for `n` elements (small magnitudes, every type's layout).
fn weights(ty: u32, n: usize, rng: &mut Pcg32) -> Vec<u8> {
    let mut small = || (rng.next_f32() - 0.5) * 0.5;
    let mut out = Vec::new();
    match ty {
        F32 => (0..n).for_each(|_| out.extend(small().to_le_bytes())),
        BF16 => (0..n).for_each(|_| out.extend(((small().to_bits() >> 16) as u16).to_le_bytes())),
        F16 => (0..n).for_each(|_| {
            // A normal half in [2^-6, 2^-2) with a random sign: exponent 9..=12.
            let r = (small().to_bits() >> 8) as u16;
            let bits = (r & 0x8000) | ((9 + (r >> 10) % 4) << 10) | (r & 0x3FF);
            out.extend(bits.to_le_bytes());
        }),
        Q8_0 | Q4_0 => {
            let body = if ty == Q8_0 { 32 } else { 16 };
            for _ in 0..n / 32 {
                out.extend(0x2000u16.to_le_bytes()); // scale 2^-7
                (0..body).for_each(|_| out.push((small().to_bits() >> 3) as u8));
            }
        }
        _ => unreachable!(),
    }
    out
}

/// A tiny model that uses every weight type, a dense and an MH-MoE layer (h = 2, head and merge
/// with biases, softmax router, quantized expert down projections, a shared expert) and
/// grouped-query attention, small enough for several forward steps under Miri.
fn tiny_model() -> Vec<u8> {
    let (d, v, ff, e, f, m) = (32u64, 12u64, 32u64, 2u64, 32u64, 16u64);
    let mut rng = Pcg32::new(11);
    let mut b = Builder {
        version: 3,
        alignment: 32,
        ..Default::default()
    };
    let kvs: [(&str, Kv); 18] = [
        ("general.architecture", Kv::Str("mhmoe".into())),
        ("mhmoe.context_length", Kv::U32(8)),
        ("mhmoe.embedding_length", Kv::U32(d as u32)),
        ("mhmoe.block_count", Kv::U32(2)),
        ("mhmoe.feed_forward_length", Kv::U32(ff as u32)),
        ("mhmoe.attention.head_count", Kv::U32(2)),
        ("mhmoe.attention.head_count_kv", Kv::U32(1)),
        ("mhmoe.attention.layer_norm_rms_epsilon", Kv::F32(1e-5)),
        ("mhmoe.rope.freq_base", Kv::F32(10000.0)),
        ("mhmoe.expert_count", Kv::U32(e as u32)),
        ("mhmoe.expert_used_count", Kv::U32(2)),
        ("mhmoe.expert_feed_forward_length", Kv::U32(f as u32)),
        ("mhmoe.expert_weights_norm", Kv::Bool(true)),
        ("mhmoe.expert_shared_feed_forward_length", Kv::U32(32)),
        ("mhmoe.moe.head_count", Kv::U32(2)),
        ("mhmoe.moe.layer_interval", Kv::U32(2)),
        ("mhmoe.moe.router", Kv::Str("softmax".into())),
        ("general.name", Kv::Str("tiny".into())),
    ];
    for (k, val) in kvs {
        b.set(k, val);
    }
    let tensors: [(&str, &[u64], u32); 25] = [
        ("token_embd.weight", &[d, v], F16),
        ("output_norm.weight", &[d], F32),
        ("output.weight", &[d, v], Q4_0),
        ("blk.0.attn_norm.weight", &[d], F32),
        ("blk.0.attn_q.weight", &[d, d], Q8_0),
        ("blk.0.attn_k.weight", &[d, 16], BF16),
        ("blk.0.attn_v.weight", &[d, 16], F32),
        ("blk.0.attn_output.weight", &[d, d], Q4_0),
        ("blk.0.ffn_norm.weight", &[d], F32),
        ("blk.0.ffn_gate.weight", &[d, ff], Q4_0),
        ("blk.0.ffn_up.weight", &[d, ff], F16),
        ("blk.0.ffn_down.weight", &[ff, d], Q8_0),
        ("blk.1.attn_norm.weight", &[d], F32),
        ("blk.1.attn_q.weight", &[d, d], F32),
        ("blk.1.attn_k.weight", &[d, 16], Q8_0),
        ("blk.1.attn_v.weight", &[d, 16], Q4_0),
        ("blk.1.attn_output.weight", &[d, d], BF16),
        ("blk.1.ffn_norm.weight", &[d], F32),
        ("blk.1.ffn_head.weight", &[d, d], Q8_0),
        ("blk.1.ffn_head.bias", &[d], F32),
        ("blk.1.ffn_merge.weight", &[d, d], F16),
        ("blk.1.ffn_merge.bias", &[d], F32),
        ("blk.1.ffn_gate_inp.weight", &[m, e], F32),
        ("blk.1.ffn_gate_exps.weight", &[m, f, e], F16),
        ("blk.1.ffn_up_exps.weight", &[m, f, e], BF16),
    ];
    let more: [(&str, &[u64], u32); 4] = [
        ("blk.1.ffn_down_exps.weight", &[f, m, e], Q8_0),
        ("blk.1.ffn_gate_shexp.weight", &[d, 32], BF16),
        ("blk.1.ffn_up_shexp.weight", &[d, 32], Q4_0),
        ("blk.1.ffn_down_shexp.weight", &[32, d], F32),
    ];
    for (name, dims, ty) in tensors.into_iter().chain(more) {
        let n = dims.iter().product::<u64>() as usize;
        let data = if dims.len() == 1 && name.contains("norm") {
            (0..n).flat_map(|_| 1.0f32.to_le_bytes()).collect()
        } else {
            weights(ty, n, &mut rng)
        };
        b.tensors.push(Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            data,
        });
    }
    b.build()
}

/// The tiny model's bytes and the model, built and loaded once (loading is slow under Miri).
fn tiny() -> &'static Model<'static> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    static MODEL: OnceLock<Model<'static>> = OnceLock::new();
    MODEL.get_or_init(|| Model::from_bytes(BYTES.get_or_init(tiny_model)).unwrap())
}

/// Every weight type and layer variant through forward steps (the scalar kernels, and natively
/// the active instruction set too, which must agree bit for bit).
#[test]
fn tiny_model_every_weight_type() {
    let model = tiny();
    let ctx = if cfg!(miri) { 2 } else { 3 };
    let mut buf = StateBuffer::for_model(model, ctx).unwrap();
    let mut st = buf.state(model).unwrap();
    let mut twin_buf = StateBuffer::for_model(model, ctx).unwrap();
    let mut twin = twin_buf.state(model).unwrap();
    for &t in &[3, 11, 0][..ctx] {
        let a = forward_on(Isa::Scalar, model, &mut st, t).unwrap().to_vec();
        assert!(a.iter().all(|x| x.is_finite()) && a.iter().any(|&x| x != 0.0));
        if !cfg!(miri) {
            let b = mhmoe::forward(model, &mut twin, t).unwrap();
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
    assert!(matches!(
        forward_on(Isa::Scalar, model, &mut st, 1),
        Err(Error::ContextFull { .. })
    ));
    // Routing was recorded for the MoE layer only.
    assert!(st.routing(model, 0).is_none());
    let (idx, gates) = st.routing(model, 1).unwrap();
    assert_eq!((idx.len(), gates.len()), (4, 4));
    if !cfg!(miri) {
        let bytes = tiny_model();
        hostile::run_steps(&bytes, 2);
        hostile::model(&bytes);
    }
}

#[test]
fn parse_walk_and_damaged_copies() {
    hostile::gguf(QUANT);
    if !cfg!(miri) {
        hostile::model(QUANT);
    }
    let g = Gguf::parse(QUANT).unwrap();
    let header = g.data_offset();
    // Truncations through the header and into the data, and a few byte flips in the header.
    let cuts = if cfg!(miri) { 3 } else { 400 };
    for i in 0..cuts {
        let len = i * (header + 64) / cuts;
        let r = Gguf::parse(&QUANT[..len]);
        assert!(r.is_err(), "truncated to {len} bytes parsed");
        hostile::gguf(&QUANT[..len]);
    }
    let mut rng = Pcg32::new(7);
    let mut bytes = QUANT.to_vec();
    for _ in 0..cuts {
        let pos = rng.next_u32() as usize % header;
        let old = bytes[pos];
        bytes[pos] ^= 1 + (rng.next_u32() % 255) as u8;
        hostile::gguf(&bytes);
        if !cfg!(miri) {
            hostile::model(&bytes);
        }
        bytes[pos] = old;
    }
}

#[test]
fn state_carving_in_every_kind_of_buffer() {
    let model = tiny();
    let ctx = 3;
    let need = State::bytes_needed(model, ctx).unwrap();
    assert_eq!(need % State::ALIGN, 0);

    // A static-style aligned buffer (boxed here), exact and with room to spare.
    const N: usize = 64 << 10;
    assert!(need <= N, "AlignedBuffer<{N}> too small for {need} bytes");
    let mut boxed = Box::new(AlignedBuffer::<N>::new());
    for len in [N, need] {
        let mut st = State::new(model, ctx, &mut boxed.0[..len]).unwrap();
        assert!(st.logits().iter().all(|l| l.is_nan()));
        if len == need {
            // One pass writes every buffer of the state (under Miri: through the carved views).
            forward_on(Isa::Scalar, model, &mut st, 1).unwrap();
            assert_eq!(st.pos(), 1);
        }
    }
    // Too small by one byte, and misaligned by every offset below 16.
    assert_eq!(
        State::new(model, ctx, &mut boxed.0[..need - 1]).unwrap_err(),
        Error::BufferTooSmall {
            what: "state",
            needed: need,
            got: need - 1
        }
    );
    for off in 1..State::ALIGN {
        assert_eq!(
            State::new(model, ctx, &mut boxed.0[off..off + need]).unwrap_err(),
            Error::BufferMisaligned {
                align: State::ALIGN
            }
        );
    }
    // A Vec<u128>-backed buffer (the harness's) and the std `StateBuffer`.
    // (Writing the logits through the carved view is enough to check these under Miri.)
    let mut v = hostile::Aligned::new(need);
    let mut st = State::new(model, ctx, v.bytes()).unwrap();
    st.logits_mut()[0] = 1.0;
    st.reset();
    let mut sb = StateBuffer::for_model(model, ctx).unwrap();
    let mut st = sb.state(model).unwrap();
    st.logits_mut().fill(0.5);
    if !cfg!(miri) {
        forward_on(Isa::Scalar, model, &mut st, 2).unwrap();
    }
}

/// Forward steps on the scalar kernels match the reference's logits.
fn forward_matches_golden(bytes: &[u8], stem: &str) {
    let model = Model::from_bytes(bytes).unwrap();
    let golden = Golden::read(&common::root().join(format!("tests/golden/{stem}.golden")));
    let class = Gguf::parse(bytes)
        .unwrap()
        .tensors()
        .filter_map(|t| t.ty.computed())
        .max_by(|a, b| logit_tolerance(*a).total_cmp(&logit_tolerance(*b)))
        .unwrap();
    let tol = logit_tolerance(class);
    let n = steps().min(golden.tokens.len() - 1);
    let mut buf = StateBuffer::for_model(&model, n).unwrap();
    let mut st = buf.state(&model).unwrap();
    for p in 0..n {
        let logits = forward_on(Isa::Scalar, &model, &mut st, golden.tokens[p]).unwrap();
        let want = &golden.logits[p];
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
        let err = logits
            .iter()
            .zip(want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        assert!(err <= tol, "{stem} position {p}: error {err:e} > {tol:e}");
    }
    assert!(matches!(
        forward_on(Isa::Scalar, &model, &mut st, 0),
        Err(Error::ContextFull { .. })
    ));
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; the tiny model covers Q4_0 and Q8_0")]
fn forward_scalar_quantized() {
    forward_matches_golden(QUANT, "e_q4_0_h2_k2_shexp");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; the tiny model covers BF16")]
fn forward_scalar_float() {
    forward_matches_golden(FLOAT, "c_bf16_h1_k2_norm");
}

#[test]
fn tokenizer_and_sampler() {
    let g = Gguf::parse(QUANT).unwrap();
    // The no_std way: the tables are read in place from the file, no workspace.
    assert_eq!(Tokenizer::workspace_len(&g), Ok(0));
    let tok = Tokenizer::new(&g, &mut []).unwrap();
    hostile::tokenizer_text(&tok, b"Once upon a time, \xc3\xa9\xf0\x9f\x98\x80 \xff!");
    let mut out = [0u32; 32];
    let n = tok.encode(b"the cat sat", &mut out).unwrap();
    assert!(n > 0 && n <= 11);
    assert_eq!(tok.encode(b"", &mut []), Ok(0));
    // A file without the tables (the same vocabulary): built in a caller-provided workspace,
    // which the tokenizer views as bytes.
    let g_built = Gguf::parse(FLOAT).unwrap();
    let need = Tokenizer::workspace_len(&g_built).unwrap();
    assert!(need > 0);
    let mut ws = vec![0u32; need];
    let built = Tokenizer::new(&g_built, &mut ws).unwrap();
    let mut out_built = [0u32; 32];
    assert_eq!(built.encode(b"the cat sat", &mut out_built), Ok(n));
    assert_eq!(out_built[..n], out[..n]);
    hostile::tokenizer_text(&built, b"the robot \xc3\xa9");
    // The std way.
    let buf = TokenizerBuf::new(&g).unwrap();
    assert_eq!(
        buf.tokenizer().encode_to_vec(b"the cat sat").unwrap(),
        out[..n]
    );
    if !cfg!(miri) {
        hostile::tokenizer_gguf(QUANT);
    }

    let logits = [0.5f32, -1.0, 2.0, f32::NEG_INFINITY, 1.5, 0.0];
    let mut scratch = [0u32; 6];
    let params = SamplerParams {
        temperature: 0.7,
        top_k: 3,
        top_p: 0.9,
    };
    let mut s = Sampler::new(params, 1).unwrap();
    for _ in 0..4 {
        let t = s.sample(&logits, &mut scratch).unwrap();
        assert!([0, 2, 4].contains(&t));
    }
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri (loading this model takes ~15 s)")]
fn hostile_forward_steps() {
    hostile::run_steps(QUANT, hostile::MAX_CTX);
}
