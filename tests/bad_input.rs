//! Bad input gets a typed error, never a panic: malformed files, inconsistent configurations,
//! out-of-range tokens, small or misaligned buffers, a full context.
// `Error` keeps names inline (no allocation), so it is large; results carry it by value here.
#![allow(clippy::result_large_err)]

mod common;

use common::builder::{Builder, Kv};
use mhmoe::error::{Error, TokenError};
use mhmoe::gguf::Gguf;
use mhmoe::{forward, Model, State};

fn small_model() -> Vec<u8> {
    std::fs::read(common::root().join("tests/models/e_q4_0_h2_k2_shexp.gguf")).unwrap()
}

fn load(bytes: &[u8]) -> Result<Model<'_>, Error> {
    Model::from_bytes(bytes)
}

#[test]
fn valid_model_loads_and_rebuilds_identically() {
    let bytes = small_model();
    load(&bytes).unwrap();
    // The test builder reproduces the file, so edits below change only what they say.
    let rebuilt = Builder::from_file(&bytes).build();
    assert_eq!(rebuilt, bytes);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = small_model();
    for len in 0..bytes.len() {
        let r = load(&bytes[..len]);
        assert!(r.is_err(), "truncated to {len} bytes loaded");
    }
}

#[test]
fn truncation_errors_name_the_field_and_offset() {
    let bytes = small_model();
    assert_eq!(
        Gguf::parse(&bytes[..2]).unwrap_err(),
        Error::UnexpectedEof {
            what: "magic",
            offset: 0
        }
    );
    assert_eq!(
        Gguf::parse(&bytes[..10]).unwrap_err(),
        Error::UnexpectedEof {
            what: "tensor count",
            offset: 8
        }
    );
    match Gguf::parse(&bytes[..bytes.len() - 1]).unwrap_err() {
        Error::TensorOutOfBounds { end, file_size, .. } => {
            assert_eq!(end, bytes.len() as u64);
            assert_eq!(file_size, bytes.len() as u64 - 1);
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn wrong_magic() {
    let mut bytes = small_model();
    bytes[0] = b'X';
    assert!(matches!(load(&bytes), Err(Error::BadMagic { .. })));
}

#[test]
fn unknown_versions() {
    for v in [0u32, 1, 4, 0x0300_0000] {
        let mut bytes = small_model();
        bytes[4..8].copy_from_slice(&v.to_le_bytes());
        assert_eq!(
            load(&bytes).unwrap_err(),
            Error::UnsupportedVersion { version: v }
        );
    }
}

#[test]
fn version_2_is_read() {
    let mut b = Builder::from_file(&small_model());
    b.version = 2;
    load(&b.build()).unwrap();
}

#[test]
fn unknown_tensor_type() {
    for id in [4u32, 5, 31, 36, 42, u32::MAX] {
        let mut b = Builder::from_file(&small_model());
        b.tensor_mut("output_norm.weight").ty = id; // ids gguf-py does not know
        assert!(
            matches!(
                Gguf::parse(&b.build()),
                Err(Error::UnknownTensorType { type_id, .. }) if type_id == id
            ),
            "{id}"
        );
    }
    let mut b = Builder::from_file(&small_model());
    b.tensor_mut("output_norm.weight").ty = 3; // Q4_1: read, not computed
    let bytes = b.build();
    Gguf::parse(&bytes).unwrap();
    assert!(matches!(
        load(&bytes),
        Err(Error::UnsupportedTensorTypes { tensors: 1, .. })
    ));
}

#[test]
fn tensor_past_the_end_and_misaligned() {
    let bytes = small_model();
    let g = Gguf::parse(&bytes).unwrap();
    let t = g.tensor("token_embd.weight").unwrap();
    // Find the tensor info's offset field: it follows the type id; patch it in place.
    let name_pos = bytes
        .windows(t.name.len())
        .position(|w| w == t.name.as_bytes())
        .unwrap();
    let off_pos = name_pos + t.name.len() + 4 + 8 * t.n_dims + 4;
    let mut far = bytes.clone();
    far[off_pos..off_pos + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(load(&far), Err(Error::TensorOutOfBounds { .. })));
    let mut mis = bytes.clone();
    mis[off_pos..off_pos + 8].copy_from_slice(&(t.offset + 4).to_le_bytes());
    assert!(matches!(load(&mis), Err(Error::MisalignedTensor { .. })));
    let mut huge = bytes;
    huge[off_pos..off_pos + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(load(&huge).is_err());
}

#[test]
fn dimension_products_that_overflow() {
    let mut b = Builder::from_file(&small_model());
    b.tensor_mut("output_norm.weight").dims = vec![1 << 32, 1 << 32, 1 << 2];
    assert!(matches!(
        load(&b.build()),
        Err(Error::Overflow {
            what: "tensor size",
            ..
        })
    ));
    let mut b = Builder::from_file(&small_model());
    b.tensor_mut("output_norm.weight").dims = vec![1, 0];
    assert!(matches!(load(&b.build()), Err(Error::BadTensorDims { .. })));
    let mut b = Builder::from_file(&small_model());
    b.tensor_mut("output_norm.weight").dims = vec![1, 1, 1, 1, 1];
    assert!(matches!(
        load(&b.build()),
        Err(Error::BadTensorDims { n_dims: 5, .. })
    ));
}

#[test]
fn huge_counts_are_rejected_before_looping() {
    let mut bytes = small_model();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        load(&bytes),
        Err(Error::Overflow {
            what: "tensor count",
            ..
        })
    ));
    let mut bytes = small_model();
    bytes[16..24].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(matches!(
        load(&bytes),
        Err(Error::Overflow {
            what: "metadata count",
            ..
        })
    ));
}

#[test]
fn bad_alignment_key() {
    for a in [0u32, 3, 48] {
        let mut b = Builder::from_file(&small_model());
        b.set("general.alignment", Kv::U32(a));
        b.alignment = 32;
        assert_eq!(
            load(&b.build()).unwrap_err(),
            Error::BadAlignment {
                alignment: a.into()
            }
        );
    }
    let mut b = Builder::from_file(&small_model());
    b.set("general.alignment", Kv::U32(64));
    b.alignment = 64;
    load(&b.build()).unwrap();
}

#[test]
fn missing_tensors_and_keys() {
    let bytes = small_model();
    let g = Gguf::parse(&bytes).unwrap();
    for t in g.tensors() {
        if t.name == "output.weight" {
            continue; // optional: absent means tied
        }
        let mut b = Builder::from_file(&bytes);
        b.remove_tensor(t.name);
        let e = load(&b.build()).unwrap_err();
        assert!(
            matches!(&e, Error::MissingTensor { tensor } if tensor.as_str() == t.name),
            "removing {}: {e:?}",
            t.name
        );
    }
    for (key, _) in g.metadata() {
        let optional = key.starts_with("general.") && key != "general.architecture"
            || key.starts_with("tokenizer.")
            || key == "mhmoe.expert_shared_feed_forward_length";
        if optional {
            continue;
        }
        let mut b = Builder::from_file(&bytes);
        b.remove_key(key);
        let e = load(&b.build()).unwrap_err();
        assert!(
            matches!(&e, Error::MissingKey { key: k } if k.as_str() == key),
            "removing {key}: {e:?}"
        );
    }
}

#[test]
fn duplicate_tensor() {
    let mut b = Builder::from_file(&small_model());
    let t = b.tensor_mut("blk.0.attn_q.weight").clone();
    b.tensors.push(t);
    assert!(matches!(
        load(&b.build()),
        Err(Error::DuplicateTensor { .. })
    ));
}

#[test]
fn wrong_shapes_and_types() {
    // Swapping a non-square matrix's dims keeps its size but breaks its shape.
    let mut b2 = Builder::from_file(&small_model());
    let t = b2.tensor_mut("blk.1.ffn_down_exps.weight");
    t.dims = vec![t.dims[1], t.dims[0], t.dims[2]];
    assert!(matches!(load(&b2.build()), Err(Error::WrongShape { .. })));
    let mut b3 = Builder::from_file(&small_model());
    let t = b3.tensor_mut("output_norm.weight");
    t.ty = 1; // F16 for a 1-D tensor
    t.data.truncate(t.data.len() / 2);
    assert!(matches!(
        load(&b3.build()),
        Err(Error::WrongTensorType { .. })
    ));
}

#[test]
fn inconsistent_configs() {
    let cases: [(&str, Kv); 9] = [
        ("mhmoe.moe.head_count", Kv::U32(3)),          // d % h != 0
        ("mhmoe.expert_used_count", Kv::U32(9)),       // k > E
        ("mhmoe.expert_used_count", Kv::U32(0)),       // k == 0
        ("mhmoe.attention.head_count_kv", Kv::U32(3)), // nh % nkv != 0
        ("mhmoe.attention.head_count", Kv::U32(0)),
        ("mhmoe.moe.layer_interval", Kv::U32(0)),
        ("mhmoe.block_count", Kv::U32(0)),
        ("mhmoe.context_length", Kv::U32(0)),
        ("mhmoe.embedding_length", Kv::U32(63)),
    ];
    for (key, v) in cases {
        let mut b = Builder::from_file(&small_model());
        b.set(key, v.clone());
        let e = load(&b.build()).unwrap_err();
        assert!(
            matches!(e, Error::InvalidConfig { .. } | Error::WrongShape { .. }),
            "{key} = {v:?}: {e:?}"
        );
    }
    let mut b = Builder::from_file(&small_model());
    b.set("general.architecture", Kv::Str("llama".into()));
    assert!(matches!(
        load(&b.build()).unwrap_err(),
        Error::WrongArchitecture { found } if found == "llama"
    ));
    let mut b = Builder::from_file(&small_model());
    b.set("mhmoe.moe.router", Kv::Str("sinkhorn".into()));
    assert!(matches!(load(&b.build()), Err(Error::BadKey { .. })));
    let mut b = Builder::from_file(&small_model());
    b.set("mhmoe.rope.freq_base", Kv::F32(f32::NAN));
    assert!(matches!(load(&b.build()), Err(Error::BadKey { .. })));
    let mut b = Builder::from_file(&small_model());
    b.set("mhmoe.expert_count", Kv::Str("four".into()));
    assert!(matches!(load(&b.build()), Err(Error::BadKey { .. })));
}

/// A `Model` is small whatever its layer count (the layers stay in the tensor table), so it
/// fits on any stack; on 32-bit targets the library asserts at most 1 KiB at compile time.
#[test]
fn model_is_small() {
    let size = std::mem::size_of::<Model<'_>>();
    assert!(size <= 1024, "size_of::<Model>() = {size}");
}

/// A layer's tensors must be contiguous in the tensor table, layers in increasing order.
#[test]
fn tensor_out_of_order() {
    let mut b = Builder::from_file(&small_model());
    let i = b
        .tensors
        .iter()
        .position(|t| t.name == "blk.0.attn_q.weight")
        .unwrap();
    let t = b.tensors.remove(i);
    b.tensors.push(t);
    match load(&b.build()) {
        Err(Error::TensorOutOfOrder { tensor }) => assert_eq!(tensor, "blk.0.attn_q.weight"),
        other => panic!("{other:?}"),
    }
    // A layer before the one it follows.
    let mut b = Builder::from_file(&small_model());
    let i = b
        .tensors
        .iter()
        .position(|t| t.name == "blk.1.attn_norm.weight")
        .unwrap();
    let t = b.tensors.remove(i);
    b.tensors.insert(1, t);
    assert!(matches!(
        load(&b.build()),
        Err(Error::TensorOutOfOrder { .. }) | Err(Error::MissingTensor { .. })
    ),);
}

#[test]
fn buffers_context_and_tokens() {
    let bytes = small_model();
    let model = load(&bytes).unwrap();
    let ctx = 4;
    let need = State::bytes_needed(&model, ctx).unwrap();
    let mut words = vec![0u128; need / 16 + 2];
    // SAFETY: u128 storage viewed as bytes; no other access while the view lives.
    let bytes_view = unsafe {
        std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 16)
    };
    assert_eq!(
        State::new(&model, ctx, &mut bytes_view[..need - 1]).unwrap_err(),
        Error::BufferTooSmall {
            what: "state",
            needed: need,
            got: need - 1
        }
    );
    assert_eq!(
        State::new(&model, ctx, &mut bytes_view[1..need + 1]).unwrap_err(),
        Error::BufferMisaligned { align: 16 }
    );
    let max = model.config().context_length();
    for bad in [0, max + 1] {
        assert_eq!(
            State::bytes_needed(&model, bad).unwrap_err(),
            Error::BadContextLength {
                requested: bad,
                max
            }
        );
    }
    let mut state = State::new(&model, ctx, &mut bytes_view[..need]).unwrap();
    let v = model.config().vocab_size() as u32;
    assert_eq!(
        forward(&model, &mut state, v).unwrap_err(),
        TokenError::TokenOutOfRange {
            token: v,
            vocab_size: v
        }
    );
    assert_eq!(state.pos(), 0, "a failed forward must not advance");
    for t in 0..ctx as u32 {
        forward(&model, &mut state, t).unwrap();
    }
    assert_eq!(
        forward(&model, &mut state, 0).unwrap_err(),
        TokenError::ContextFull {
            context_length: ctx as u32
        }
    );
    state.reset();
    forward(&model, &mut state, 0).unwrap();
}

#[test]
fn state_for_another_model_is_rejected() {
    let small = small_model();
    let other = std::fs::read(common::root().join("tests/models/a_f32_h2_k2_gqa.gguf")).unwrap();
    let m1 = load(&small).unwrap();
    let m2 = load(&other).unwrap();
    let mut buf = mhmoe::file::StateBuffer::for_model(&m2, 4).unwrap();
    let mut state = buf.state(&m2).unwrap();
    assert!(matches!(
        forward(&m1, &mut state, 0),
        Err(TokenError::WrongState)
    ));
}

#[test]
fn context_length_limits_in_state_new() {
    let bytes = small_model();
    let model = load(&bytes).unwrap();
    let max = model.config().context_length();
    let mut buf = mhmoe::file::StateBuffer::for_model(&model, max).unwrap();
    for bad in [0, max + 1, usize::MAX] {
        let want = Error::BadContextLength {
            requested: bad,
            max,
        };
        assert_eq!(
            mhmoe::file::StateBuffer::for_model(&model, bad).unwrap_err(),
            want
        );
        assert_eq!(State::bytes_needed(&model, bad).unwrap_err(), want);
    }
    // The longest context works, and the token id limit is the vocabulary size.
    let mut state = buf.state(&model).unwrap();
    for t in [u32::MAX, model.config().vocab_size() as u32 + 1] {
        assert!(matches!(
            forward(&model, &mut state, t),
            Err(TokenError::TokenOutOfRange { token, .. }) if token == t
        ));
    }
    let last = model.config().vocab_size() as u32 - 1;
    forward(&model, &mut state, last).unwrap();
}

/// A prompt longer than the context fails at the first token that does not fit, leaving the
/// state and the logits of the last token that did; generation past the context likewise.
/// `reset` starts over with the same results as a fresh state.
#[test]
fn prompt_and_generation_past_the_context() {
    use mhmoe::sampler::Sampler;
    let bytes = small_model();
    let model = load(&bytes).unwrap();
    let tok = mhmoe::tokenizer::TokenizerBuf::new(model.gguf()).unwrap();
    let prompt = tok
        .tokenizer()
        .encode_to_vec(b"It is a truth universally acknowledged, that a single man")
        .unwrap();
    let ctx = 5;
    assert!(prompt.len() > ctx);
    let mut buf = mhmoe::file::StateBuffer::for_model(&model, ctx).unwrap();
    let mut state = buf.state(&model).unwrap();
    let mut first = Vec::new();
    let mut fed = 0;
    let err = loop {
        match forward(&model, &mut state, prompt[fed]) {
            Ok(l) => {
                if fed == 0 {
                    first = l.to_vec();
                }
                fed += 1;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(fed, ctx);
    assert_eq!(
        err,
        TokenError::ContextFull {
            context_length: ctx as u32
        }
    );
    assert_eq!(state.pos(), ctx);
    let kept = state.logits().to_vec();
    assert!(forward(&model, &mut state, prompt[0]).is_err());
    assert_eq!(
        state.logits(),
        &kept[..],
        "a full context keeps the last logits"
    );

    // Generation: sample from the last logits, then the context is full.
    let mut sampler = Sampler::greedy();
    let next = sampler.sample(state.logits(), &mut []).unwrap();
    assert_eq!(
        forward(&model, &mut state, next).unwrap_err(),
        TokenError::ContextFull {
            context_length: ctx as u32
        }
    );

    state.reset();
    assert_eq!(state.pos(), 0);
    let again = forward(&model, &mut state, prompt[0]).unwrap();
    assert!(
        again
            .iter()
            .zip(&first)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "reset must give the same results as a fresh state"
    );
}

/// An empty prompt encodes to no tokens, and a state that has run no token since it was made
/// (or reset) has no logits to sample: sampling them is an error, not token 0.
#[test]
fn empty_prompt_has_nothing_to_sample() {
    use mhmoe::sampler::{argmax, Sampler, SamplerParams};
    let bytes = small_model();
    let model = load(&bytes).unwrap();
    let tok = mhmoe::tokenizer::TokenizerBuf::new(model.gguf()).unwrap();
    assert_eq!(tok.tokenizer().encode(b"", &mut []), Ok(0));
    assert!(tok.tokenizer().encode_to_vec(b"").unwrap().is_empty());

    let v = model.config().vocab_size();
    let mut buf = mhmoe::file::StateBuffer::for_model(&model, 4).unwrap();
    let mut state = buf.state(&model).unwrap();
    let params = [
        SamplerParams::GREEDY,
        SamplerParams {
            temperature: 0.8,
            top_k: 0,
            top_p: 1.0,
        },
        SamplerParams {
            temperature: 0.8,
            top_k: 10,
            top_p: 0.9,
        },
    ];
    let mut scratch = vec![0u32; v];
    let sample_all = |logits: &[f32], scratch: &mut [u32]| {
        params
            .iter()
            .map(|&p| Sampler::new(p, 1).unwrap().sample(logits, scratch))
            .collect::<Vec<_>>()
    };
    for r in sample_all(state.logits(), &mut scratch) {
        assert!(matches!(r, Err(TokenError::NonFinite(_))), "{r:?}");
    }
    assert!(argmax(state.logits()).is_err());
    assert!(argmax(&[]).is_err());

    forward(&model, &mut state, 1).unwrap();
    for r in sample_all(state.logits(), &mut scratch) {
        assert!((r.unwrap() as usize) < v);
    }
    state.reset();
    for r in sample_all(state.logits(), &mut scratch) {
        assert!(
            matches!(r, Err(TokenError::NonFinite(_))),
            "after reset: {r:?}"
        );
    }
}

/// Out-of-range indices into the public weight views give empty rows, not a panic (or an
/// overflow in debug builds), and a short output buffer is filled as far as it goes.
#[test]
fn weight_views_take_any_index() {
    use mhmoe::model::Ffn;
    let bytes = small_model();
    let model = load(&bytes).unwrap();
    let m = *model.token_embd();
    for r in [m.rows(), usize::MAX / 2, usize::MAX] {
        assert!(m.row(r).is_empty(), "row {r}");
        let mut out = vec![7.0f32; m.cols()];
        m.dequantize_row(r, &mut out);
    }
    assert_eq!(m.row(m.rows() - 1).len(), m.row_bytes());
    let mut full = vec![0.0f32; m.cols()];
    m.dequantize_row(1, &mut full);
    let mut short = vec![0.0f32; 40];
    m.dequantize_row(1, &mut short); // Q4_0: whole blocks only
    assert_eq!(short[..32], full[..32]);
    assert!(short[32..].iter().all(|&v| v == 0.0));
    m.dequantize_row(1, &mut []);

    let Ffn::Moe(moe) = model.layer(1).unwrap().ffn else {
        panic!("layer 1 of the test model is MoE")
    };
    for e in [moe.gate.len(), usize::MAX / 3, usize::MAX] {
        assert!(moe.gate.get(e).data().is_empty(), "expert {e}");
        assert_eq!(moe.gate.get(e).rows(), 0, "expert {e}");
        assert!(moe.gate.get(e).row(0).is_empty());
    }
    assert_eq!(
        moe.gate.get(moe.gate.len() - 1).row(0).len(),
        moe.gate.get(0).row_bytes()
    );
}

/// A model may claim a context far longer than memory allows: `bytes_needed` reports it and
/// `StateBuffer` fails with a typed error when the allocation fails, instead of aborting.
#[test]
fn state_buffer_too_large_to_allocate_is_an_error() {
    let mut b = Builder::from_file(&small_model());
    // 64 layers (copies of the two layers) and a context of 2^24: about 2^39 bytes of KV cache.
    let layer_tensors: Vec<_> = b
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("blk."))
        .cloned()
        .collect();
    for i in 2..64 {
        for t in &layer_tensors {
            let src = if i % 2 == 0 { "blk.0." } else { "blk.1." };
            if let Some(rest) = t.name.strip_prefix(src) {
                let mut t = t.clone();
                t.name = format!("blk.{i}.{rest}");
                b.tensors.push(t);
            }
        }
    }
    b.set("mhmoe.block_count", Kv::U32(64));
    b.set("mhmoe.context_length", Kv::U32(1 << 24));
    let bytes = b.build();
    let model = load(&bytes).unwrap();
    let ctx = model.config().context_length();
    let need = State::bytes_needed(&model, ctx).unwrap();
    assert!(need > 1 << 39, "{need}");
    match mhmoe::file::StateBuffer::for_model(&model, ctx) {
        // A system that overcommits memory may hand out the address space.
        Ok(buf) => drop(buf),
        Err(e) => assert!(
            matches!(e, Error::BufferTooSmall { needed, got: 0, .. } if needed == need),
            "{e:?}"
        ),
    }
}
