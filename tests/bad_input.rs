//! Bad input gets a typed error, never a panic: malformed files, inconsistent configurations,
//! out-of-range tokens, small or misaligned buffers, a full context.

mod common;

use common::builder::{Builder, Kv};
use mhmoe::error::Error;
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
    let mut b = Builder::from_file(&small_model());
    b.tensor_mut("output_norm.weight").ty = 3; // Q4_1: not supported
    assert!(matches!(
        load(&b.build()),
        Err(Error::UnsupportedTensorType { type_id: 3, .. })
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
    assert_eq!(load(&b.build()).unwrap_err(), Error::WrongArchitecture);
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

#[test]
fn model_capacity_is_checked() {
    let bytes = small_model();
    let e = Model::<1>::from_bytes(&bytes).unwrap_err();
    assert!(matches!(e, Error::InvalidConfig { .. }));
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
    let max = model.config.context_length;
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
    let v = model.config.vocab_size as u32;
    assert_eq!(
        forward(&model, &mut state, v).unwrap_err(),
        Error::TokenOutOfRange {
            token: v,
            vocab_size: v as usize
        }
    );
    assert_eq!(state.pos(), 0, "a failed forward must not advance");
    for t in 0..ctx as u32 {
        forward(&model, &mut state, t).unwrap();
    }
    assert_eq!(
        forward(&model, &mut state, 0).unwrap_err(),
        Error::ContextFull {
            context_length: ctx
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
    let mut state = buf.state(&m2, 4).unwrap();
    assert!(matches!(
        forward(&m1, &mut state, 0),
        Err(Error::InvalidConfig { .. })
    ));
}
