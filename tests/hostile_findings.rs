//! The findings of a hostile-input review (issue 12), each pinned by a test that failed before
//! its fix: arithmetic that overflowed in debug builds, F16 NaN payloads, duplicate names in a
//! GGUF file, error messages that misled, and files of types or architectures the engine does
//! not run.
// `Error` keeps names inline (no allocation), so it is large; results carry it by value here.
#![allow(clippy::result_large_err)]

mod common;

use mhmoe::gguf::TensorInfo;
use mhmoe::model::Matrix;
use mhmoe::quant::GgmlType;
use mhmoe::state::{KvType, Shape, StateOptions};
use mhmoe::State;

const ALL_TYPES: [GgmlType; 5] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
];

/// Sizes computed from caller-given numbers saturate or fail instead of overflowing (a panic
/// Every field of a [`Shape`], in declaration order.
fn fields(s: &mut Shape) -> [&mut usize; 14] {
    [
        &mut s.dim,
        &mut s.n_layers,
        &mut s.ff_dim,
        &mut s.n_heads,
        &mut s.n_kv_heads,
        &mut s.head_dim,
        &mut s.n_experts,
        &mut s.top_k,
        &mut s.expert_ff_dim,
        &mut s.shared_ff_dim,
        &mut s.moe_heads,
        &mut s.vocab_size,
        &mut s.context_length,
        &mut s.router_red,
    ]
}

/// in debug builds): `GgmlType::row_bytes` multiplied without a check.
#[test]
fn size_arithmetic_never_overflows() {
    for ty in ALL_TYPES {
        for n in [usize::MAX, usize::MAX / 2, usize::MAX - 31, 1 << 62] {
            let n = n / ty.block_size() * ty.block_size();
            let exact = (n / ty.block_size()).checked_mul(ty.type_size());
            assert_eq!(ty.checked_row_bytes(n), exact, "{} x {n}", ty.name());
            assert_eq!(ty.row_bytes(n), exact.unwrap_or(usize::MAX));
            assert!(Matrix::new(ty, 1, n, &[]).is_err());
            assert!(Matrix::new(ty, n, n, &[]).is_err());
            assert!(Matrix::new(ty, 0, n, &[]).is_ok() || exact.is_none());
        }
    }
    for kv in KvType::ALL {
        for hd in [usize::MAX, usize::MAX & !31, 1 << 62] {
            let _ = kv.row_bytes(hd);
        }
    }
    // A hand-made tensor view of huge dimensions.
    let t = TensorInfo {
        name: "huge",
        n_dims: 4,
        dims: [u64::MAX; 4],
        ty: GgmlType::F32.into(),
        tiled: false,
        offset: 0,
        data: &[],
    };
    assert_eq!(t.n_elements(), u64::MAX);
    // Shapes with extreme fields: None, never a panic.
    let base = Shape {
        dim: 128,
        n_layers: 4,
        ff_dim: 0,
        n_heads: 4,
        n_kv_heads: 4,
        head_dim: 32,
        n_experts: 8,
        top_k: 2,
        expert_ff_dim: 128,
        shared_ff_dim: 0,
        moe_heads: 4,
        vocab_size: 2048,
        context_length: usize::MAX,
        router_red: 0,
    };
    assert!(State::bytes_for(&base, StateOptions::new(256)).is_some());
    for (field, other) in (0..14).flat_map(|a| (0..14).map(move |b| (a, b))) {
        for v in [usize::MAX, usize::MAX / 3, 1 << 40, 0] {
            let mut s = base;
            s.context_length = 1 << 40;
            *fields(&mut s)[other] = 1 << 33;
            *fields(&mut s)[field] = v;
            for opts in [
                StateOptions::new(256),
                StateOptions::new(usize::MAX).batch(usize::MAX),
                StateOptions::new(1 << 40).kv(KvType::Q4_0),
            ] {
                let _ = State::bytes_for(&s, opts);
            }
        }
    }
}

/// `Config::is_moe_layer` for any index (it added 1 without a check).
#[test]
fn layer_predicates_take_any_index() {
    let bytes = std::fs::read(common::root().join("tests/models/e_q4_0_h2_k2_shexp.gguf")).unwrap();
    let model = mhmoe::Model::from_bytes(&bytes).unwrap();
    let c = model.config();
    for i in [c.n_layers(), usize::MAX - 1, usize::MAX] {
        assert_eq!(
            c.is_moe_layer(i),
            (i as u128 + 1).is_multiple_of(c.moe_interval() as u128)
        );
    }
}

/// A name as errors hold it.
fn n(s: &str) -> mhmoe::error::Name {
    mhmoe::error::Name::try_from(s).unwrap()
}

fn small_model() -> Vec<u8> {
    std::fs::read(common::root().join("tests/models/e_q4_0_h2_k2_shexp.gguf")).unwrap()
}

/// A second copy of a metadata key is an error of the parser (gguf-py rejects it too): before,
/// `get` returned the first copy while the parser applied the last `general.alignment`, and an
/// architecture "mhmoe" followed by "llama" loaded.
#[test]
fn duplicate_metadata_keys_are_rejected() {
    use common::builder::{Builder, Kv};
    use mhmoe::error::Error;
    use mhmoe::gguf::Gguf;
    let dup = |key: &str, v: Kv| {
        let mut b = Builder::from_file(&small_model());
        b.kvs.push((key.to_owned(), v));
        Gguf::parse(&b.build()).map(|_| ()).unwrap_err()
    };
    for (key, v) in [
        ("general.architecture", Kv::Str("llama".into())),
        ("general.architecture", Kv::Str("mhmoe".into())),
        ("mhmoe.block_count", Kv::U32(2)),
        ("tokenizer.ggml.model", Kv::U32(1)),
    ] {
        assert_eq!(
            dup(key, v.clone()),
            Error::DuplicateKey { key: n(key) },
            "{key} = {v:?}"
        );
    }
    // The parser used the last alignment: a file whose data is laid out at the second one.
    let mut b = Builder::from_file(&small_model());
    b.kvs.push(("general.alignment".into(), Kv::U32(32)));
    b.kvs.push(("general.alignment".into(), Kv::U32(64)));
    b.alignment = 64;
    assert_eq!(
        Gguf::parse(&b.build()).map(|_| ()).unwrap_err(),
        Error::DuplicateKey {
            key: n("general.alignment")
        }
    );
}

/// A second tensor of one name is an error of the parser, wherever the copies are (the check
/// works on chunks of names: copies in one chunk, in two, first and last).
#[test]
fn duplicate_tensor_names_are_rejected() {
    use common::builder::{Builder, Tensor};
    use mhmoe::error::Error;
    use mhmoe::gguf::Gguf;
    let extra = |name: String| Tensor {
        name,
        dims: vec![4],
        ty: 0,
        data: vec![0; 16],
    };
    let base = Builder::from_file(&small_model());
    let n0 = base.tensors.len();
    // 1000 distinct extra tensors parse.
    let mut b = base.clone();
    for i in 0..1000 {
        b.tensors.push(extra(format!("extra.{i}")));
    }
    let bytes = b.build();
    assert_eq!(Gguf::parse(&bytes).unwrap().tensor_count(), n0 + 1000);
    for (i, j) in [(0, 1), (5, 700), (127, 128), (300, 999), (998, 999)] {
        let mut b = b.clone();
        b.tensors[n0 + j].name = format!("extra.{i}");
        assert_eq!(
            Gguf::parse(&b.build()).map(|_| ()).unwrap_err(),
            Error::DuplicateTensor {
                tensor: n(&format!("extra.{i}"))
            },
            "copies at {i} and {j}"
        );
    }
    // A copy of a model tensor far after the first.
    let mut b2 = b.clone();
    b2.tensors[n0 + 500].name = "token_embd.weight".into();
    assert!(matches!(
        Gguf::parse(&b2.build()),
        Err(Error::DuplicateTensor { .. })
    ));
}

/// An unsupported type is named (Q5_0, not "ggml type 6"), with its tensor and the
/// architecture; another architecture is named too.
#[test]
fn errors_name_types_and_architectures() {
    use common::builder::{Builder, Kv};
    use mhmoe::error::Error;
    let mut b = Builder::from_file(&small_model());
    let t = b.tensor_mut("blk.0.attn_q.weight");
    let n = (t.dims[0] * t.dims[1]) as usize;
    t.ty = 6; // Q5_0
    t.data = vec![0; n / 32 * 22];
    let bytes = b.build();
    let e = mhmoe::Model::from_bytes(&bytes).unwrap_err();
    let msg = e.to_string();
    for part in [
        "Q5_0",
        "blk.0.attn_q.weight",
        "1 tensor ",
        "Architecture \"mhmoe\"",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg:?}");
    }
    assert!(!msg.contains("type 6"), "{msg}");

    let mut b = Builder::from_file(&small_model());
    b.set("general.architecture", Kv::Str("qwen2moe".into()));
    let e = mhmoe::Model::from_bytes(&b.build()).unwrap_err();
    assert_eq!(
        e,
        Error::WrongArchitecture {
            found: "qwen2moe".try_into().unwrap()
        }
    );
    assert!(e.to_string().contains("\"qwen2moe\""), "{e}");
}

/// An instruction set this CPU or build lacks is said to be one, not "invalid model
/// configuration"; so is a state used with another model.
#[test]
fn unavailable_instruction_sets_and_foreign_states_are_named() {
    use mhmoe::kernels::ALL_ISAS;
    use mhmoe::{Exec, Isa};
    let Some(missing) = ALL_ISAS.into_iter().find(|i| !i.is_available()) else {
        return; // every instruction set of this build runs here
    };
    for e in [
        Isa::force(Some(missing)).unwrap_err(),
        Exec::serial().with_isa(missing).unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(!msg.contains("model configuration"), "{msg}");
        assert!(msg.contains(missing.name()), "{msg}");
        assert!(msg.contains("not available"), "{msg}");
    }
    let e = mhmoe::Error::from(mhmoe::TokenError::WrongState).to_string();
    assert!(!e.contains("model configuration"), "{e}");
    assert!(e.contains("different model"), "{e}");
}

/// A tensor count one too high makes the parser read padding as a tensor info: the error says
/// which tensor (its index and byte offset) and that the count may be too high, where it said
/// `tensor : 0 dimensions`.
#[test]
fn a_tensor_count_too_high_is_reported_as_such() {
    use mhmoe::error::Error;
    use mhmoe::gguf::Gguf;
    let mut bytes = small_model();
    let n = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    bytes[8..16].copy_from_slice(&(n + 1).to_le_bytes());
    let e = Gguf::parse(&bytes).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, Error::BadTensorDims { index, count, .. } if *index == n as usize && *count == n as usize + 1),
        "{e:?}"
    );
    assert!(msg.contains(&format!("tensor {n} of {}", n + 1)), "{msg}");
    assert!(msg.contains("tensor count"), "{msg}");
    assert!(!msg.contains("tensor :"), "{msg}");
}

/// The tokenizer's size must equal `token_embd.weight`'s rows (FORMAT.md): a file with fewer
/// tokens loaded and failed mid-generation (`decode: token id 2010 is out of range`), one with
/// more gave ids the model has no row for.
#[test]
fn tokenizer_size_must_equal_the_embedding_rows() {
    use common::builder::{Builder, Kv};
    use mhmoe::error::Error;
    use mhmoe::gguf::Gguf;
    let bytes = small_model();
    let g = Gguf::parse(&bytes).unwrap();
    let tokens: Vec<&str> = g
        .get("tokenizer.ggml.tokens")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let rows = g.tensor("token_embd.weight").unwrap().dims[1] as usize;
    assert_eq!(tokens.len(), rows);
    mhmoe::Model::from_bytes(&bytes).unwrap();
    for n in [rows - 48, rows - 1, rows + 1, rows + 100] {
        let mut list: Vec<String> = tokens.iter().take(n).map(|s| s.to_string()).collect();
        while list.len() < n {
            list.push(format!("<extra {}>", list.len()));
        }
        let raw: Vec<u8> = list
            .iter()
            .flat_map(|s| (s.len() as u64).to_le_bytes().into_iter().chain(s.bytes()))
            .collect();
        let mut b = Builder::from_file(&bytes);
        b.set("tokenizer.ggml.tokens", Kv::RawArray(8, n as u64, raw));
        let bytes = b.build();
        let Err(e) = mhmoe::Model::from_bytes(&bytes) else {
            panic!("{n} tokens for {rows} rows loaded");
        };
        assert_eq!(
            e,
            Error::VocabMismatch {
                tokenizer: n,
                embedding: rows
            }
        );
        assert!(e.to_string().contains(&format!("{n} tokens")), "{e}");
    }
    // Not an array of strings.
    let mut b = Builder::from_file(&bytes);
    b.set("tokenizer.ggml.tokens", Kv::U32(7));
    assert!(matches!(
        mhmoe::Model::from_bytes(&b.build()),
        Err(Error::BadKey { .. })
    ));
    // A model without a tokenizer still loads.
    let mut b = Builder::from_file(&bytes);
    b.kvs.retain(|(k, _)| !k.starts_with("tokenizer."));
    mhmoe::Model::from_bytes(&b.build()).unwrap();
}
