//! The public API driven over hostile input.
//!
//! Shared by the fuzz targets (`fuzz/fuzz_targets/*.rs` include this file), the sweeps
//! (`tests/sweeps.rs`) and the regression tests (`tests/regressions.rs`), so an input that
//! crashes one of them reproduces in the others. Every function here must return normally for
//! every input: the engine answers with `Ok` or a typed `Error`, and the `assert!`s state
//! invariants that must hold whatever the bytes are. A panic is a bug.
#![allow(dead_code)]

use mhmoe::error::{Error, TokenError};
use mhmoe::file::{tile_in_place, StateBuffer};
use mhmoe::gguf::{Array, Gguf, Value, ValueType};
use mhmoe::sampler::{argmax, Sampler, SamplerParams};
use mhmoe::tokenizer::{Decoder, Tokenizer, TokenizerBuf};
use mhmoe::{forward, Config, Exec, Isa, Model, State};

/// Largest state buffer the harness allocates. A hostile model can legitimately ask for more
/// (`State::bytes_needed` reports it; allocating is the caller's decision), so such models are
/// loaded and sized but not run.
pub const MAX_STATE_BYTES: usize = 16 << 20;

/// Largest context the harness runs (the steps run one past it to hit `ContextFull`).
pub const MAX_CTX: usize = 4;

/// Parses `data` as GGUF and walks every metadata value (recursively into arrays) and every
/// tensor, checking that the iterators agree with the header counts.
pub fn gguf(data: &[u8]) {
    let Ok(g) = Gguf::parse(data) else { return };
    assert!(g.version() == 2 || g.version() == 3);
    assert!(g.alignment().is_power_of_two());
    let mut n = 0;
    let mut last = None;
    for (key, value) in g.metadata() {
        walk_value(&value);
        if n == 0 {
            // Keys are unique (the parser rejects copies), so lookup finds this very entry.
            assert!(
                g.get(key).is_some_and(|v| same(&v, &value)),
                "key {key} found with another value"
            );
        }
        last = Some((key, value));
        n += 1;
    }
    if let Some((key, value)) = last {
        assert!(
            g.get(key).is_some_and(|v| same(&v, &value)),
            "key {key} found with another value"
        );
    }
    assert_eq!(n, g.metadata_len(), "metadata iterator and header disagree");
    let mut n = 0;
    let mut last = None;
    for t in g.tensors() {
        assert!((1..=4).contains(&t.n_dims));
        assert!(t.dims.iter().all(|&d| d >= 1));
        let size = t.n_elements() / t.ty.block_size() as u64 * t.ty.type_size() as u64;
        assert_eq!(t.data.len() as u64, size, "tensor {} size", t.name);
        assert_eq!(t.offset % g.alignment(), 0);
        if n == 0 {
            // Names are unique too.
            assert_eq!(g.tensor(t.name), Some(t), "tensor {} found twice", t.name);
        }
        last = Some(t);
        n += 1;
    }
    if let Some(t) = last {
        assert_eq!(g.tensor(t.name), Some(t), "tensor {} found twice", t.name);
    }
    assert_eq!(n, g.tensor_count(), "tensor iterator and header disagree");
    // The census by type agrees with the table.
    let counts = g.type_counts();
    let mut total = 0;
    for ty in counts.types().iter() {
        total += counts.count(ty);
        let first = counts.first(ty).expect("a type found has a first tensor");
        assert_eq!(g.tensors().nth(first).map(|t| t.ty), Some(ty));
        assert!(g.tensors().take(first).all(|t| t.ty != ty));
    }
    assert_eq!(total, g.tensor_count());
    let _ = g.architecture();
    let _ = g.tensor("token_embd.weight");
    let _ = Config::from_gguf(&g);
}

fn walk_value(v: &Value<'_>) {
    let _ = (v.as_u64(), v.as_f32(), v.as_str(), v.as_bool());
    if let Some(a) = v.as_array() {
        walk_array(&a);
    }
}

fn walk_array(a: &Array<'_>) {
    let mut n = 0;
    let mut last = None;
    for e in a.iter() {
        if n == 0 {
            assert!(
                a.get(0).is_some_and(|v| same(&v, &e)),
                "Array::get(0) disagrees with iteration"
            );
        }
        walk_value(&e);
        last = Some(e);
        n += 1;
    }
    assert_eq!(n, a.len(), "array iterator and length disagree");
    assert_eq!(a.is_empty(), n == 0);
    if let Some(last) = last {
        assert!(a.get(n - 1).is_some_and(|v| same(&v, &last)));
    }
    assert!(a.get(n).is_none());
    if a.elem_type() != ValueType::Array && a.elem_type() != ValueType::String {
        // Fixed-size elements: O(1) access anywhere.
        let _ = a.get(n / 2);
    }
}

/// Equality with floats compared by bits (so NaN equals itself).
fn same(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// A 16-byte aligned heap buffer of exactly `len` bytes (for `State::new` with odd sizes).
pub struct Aligned {
    words: Vec<u128>,
    len: usize,
}

impl Aligned {
    pub fn new(len: usize) -> Aligned {
        Aligned {
            words: vec![0u128; len.div_ceil(16)],
            len,
        }
    }

    pub fn bytes(&mut self) -> &mut [u8] {
        let len = self.len.min(self.words.len() * 16);
        // SAFETY: the Vec owns `words.len() * 16` initialized bytes and `len` is at most that;
        // u8 has no alignment or validity requirements; the view borrows `self` mutably.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// Loads `data` as a model and checks the configuration, the layer table, the state sizing
/// (context 0 and past the model's maximum are errors) and `State::new` with a buffer one byte
/// too small.
pub fn model(data: &[u8]) {
    let m = match Model::from_bytes(data) {
        Ok(m) => m,
        Err(e) => {
            // Still exercise the configuration reader on whatever parsed.
            if let Ok(g) = Gguf::parse(data) {
                let _ = Config::from_gguf(&g);
                let unsupported = g.type_counts().unsupported();
                match e {
                    Error::UnsupportedTensorTypes {
                        types, first_type, ..
                    } => {
                        assert_eq!(types, unsupported);
                        assert!(types.contains(first_type));
                    }
                    e => assert!(unsupported.is_empty(), "{e:?} with types {unsupported}"),
                }
            }
            return;
        }
    };
    let c = m.config();
    assert_eq!(
        Config::from_gguf(m.gguf()).as_ref(),
        Ok(c),
        "a loaded model's configuration reads back the same"
    );
    assert_eq!(m.layers().count(), c.n_layers());
    assert!(c.vocab_size() >= 1 && c.context_length() >= 1);
    let max = c.context_length();
    for bad in [0, max + 1] {
        assert_eq!(
            State::bytes_needed(&m, bad),
            Err(Error::BadContextLength {
                requested: bad,
                max
            })
        );
    }
    for ctx in [1, max.min(MAX_CTX), max] {
        match State::bytes_needed(&m, ctx) {
            Ok(need) => {
                assert!(need > 0 && need % 16 == 0);
                if need <= MAX_STATE_BYTES {
                    let mut buf = Aligned::new(need);
                    let bytes = buf.bytes();
                    assert_eq!(
                        State::new(&m, ctx, &mut bytes[..need - 1]).err(),
                        Some(Error::BufferTooSmall {
                            what: "state",
                            needed: need,
                            got: need - 1
                        })
                    );
                    let s = State::new(&m, ctx, bytes).expect("a buffer of bytes_needed works");
                    assert_eq!((s.pos(), s.context_length()), (0, ctx));
                }
            }
            Err(e) => assert!(matches!(e, Error::Overflow { .. }), "{e:?}"),
        }
    }
}

/// Loads `data` as a model and runs up to [`MAX_CTX`] forward steps (plus one that must find
/// the context full) on the active instruction set and on the scalar specification, which must
/// agree bit for bit; samples each next token from the logits.
pub fn forward_steps(data: &[u8]) {
    run_steps(data, MAX_CTX)
}

/// [`forward_steps`] with a context of at most `max_ctx` positions.
pub fn run_steps(data: &[u8], max_ctx: usize) {
    let Ok(m) = Model::from_bytes(data) else {
        return;
    };
    let c = m.config();
    let ctx = c.context_length().min(max_ctx).max(1);
    match State::bytes_needed(&m, ctx) {
        Ok(need) if need <= MAX_STATE_BYTES => {}
        _ => return,
    }
    let mut buf = StateBuffer::for_model(&m, ctx).expect("sized above");
    let mut st = buf.state(&m).expect("a StateBuffer fits its model");
    let active = Isa::active();
    let scalar = Exec::serial()
        .with_isa(Isa::Scalar)
        .expect("scalar is always available");
    let mut twin_buf = StateBuffer::for_model(&m, ctx).expect("sized above");
    let mut twin = twin_buf.state(&m).expect("a StateBuffer fits its model");
    // The same file with every matrix tiled in place (as `ModelBytes::read` may do): it loads,
    // and its first steps give the same bits.
    let mut tiled = data.to_vec();
    let tiled_any = matches!(tile_in_place(&mut tiled, |_| true), Ok(n) if n > 0);
    let tm = tiled_any.then(|| Model::from_bytes(&tiled).expect("tiling keeps a model loadable"));
    let mut tiled_buf = tm
        .as_ref()
        .map(|tm| StateBuffer::for_model(tm, ctx).expect("same size"));
    let mut tiled_st = tm
        .as_ref()
        .zip(tiled_buf.as_mut())
        .map(|(tm, b)| b.state(tm).expect("a StateBuffer fits its model"));

    let v = c.vocab_size();
    let oor = u32::try_from(v).unwrap_or(u32::MAX);
    assert_eq!(
        forward(&m, &mut st, oor).err(),
        Some(TokenError::TokenOutOfRange {
            token: oor,
            vocab_size: v as u32
        })
    );
    assert_eq!(st.pos(), 0);

    let seed = data.len() as u64;
    let params = SamplerParams {
        temperature: 0.8,
        top_k: 8,
        top_p: 0.9,
    };
    let mut sampler = Sampler::new(params, seed).expect("valid parameters");
    let mut scratch = vec![0u32; sampler.scratch_len(v)];
    let mut token = (seed % v as u64) as u32;
    for step in 0..=ctx {
        let pos = st.pos();
        let got = forward(&m, &mut st, token).map(<[f32]>::to_vec);
        if active != Isa::Scalar {
            let want = scalar.forward(&m, &mut twin, token).map(<[f32]>::to_vec);
            assert_same(&got, &want, active, step);
        }
        if let (Some(tm), Some(ts), true) = (&tm, tiled_st.as_mut(), step < 2) {
            let t = forward(tm, ts, token).map(<[f32]>::to_vec);
            assert_same(&t, &got, active, step);
        }
        match got {
            Ok(logits) => {
                assert!(step < ctx, "forward past the context returned Ok");
                assert_eq!(st.pos(), pos + 1);
                assert_eq!(logits.len(), v);
                assert!(logits.iter().all(|l| l.is_finite()));
                let greedy = argmax(&logits).expect("finite logits have an argmax");
                assert!((greedy as usize) < v);
                let next = sampler
                    .sample(&logits, &mut scratch)
                    .expect("finite logits can be sampled");
                assert!((next as usize) < v);
                if sampler.scratch_len(v) > 0 {
                    assert!(matches!(
                        sampler.sample(&logits, &mut scratch[..v - 1]),
                        Err(TokenError::ScratchTooSmall { .. })
                    ));
                }
                token = next;
            }
            Err(e) => {
                assert_eq!(st.pos(), pos, "a failed forward must not advance");
                match e {
                    TokenError::ContextFull { context_length } => {
                        assert_eq!((step, context_length as usize), (ctx, ctx));
                    }
                    TokenError::NonFinite(_) => {}
                    e => panic!("unexpected error from forward: {e:?}"),
                }
                break;
            }
        }
    }
    st.reset();
    assert_eq!(st.pos(), 0);
}

fn assert_same(
    got: &Result<Vec<f32>, TokenError>,
    want: &Result<Vec<f32>, TokenError>,
    isa: Isa,
    step: usize,
) {
    match (got, want) {
        (Ok(a), Ok(b)) => {
            let same =
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{} logits differ from scalar at step {step}",
                isa.name()
            );
        }
        (a, b) => assert_eq!(
            a.as_ref().err(),
            b.as_ref().err(),
            "{} and scalar disagree at step {step}",
            isa.name()
        ),
    }
}

/// Encodes `text` with `tok` and checks the round trip (every byte string survives: all 256
/// byte tokens exist and every merge is a concatenation), encoding into a too-small buffer,
/// and decoding `text` read as little-endian u32 ids (out-of-range ids are errors).
pub fn tokenizer_text(tok: &Tokenizer<'_, '_>, text: &[u8]) {
    let ids = tok
        .encode_to_vec(text)
        .expect("an output of text.len() words suffices");
    assert!(ids.len() <= text.len());
    assert!(ids.iter().all(|&t| (t as usize) < tok.vocab_size()));
    assert_eq!(
        tok.decode_to_bytes(&ids)
            .expect("ids from encode are valid"),
        text
    );
    assert_eq!(
        tok.decode_to_string(&ids)
            .expect("ids from encode are valid"),
        String::from_utf8_lossy(text)
    );
    let mut small = vec![0u32; text.len() / 2];
    match tok.encode(text, &mut small) {
        Ok(n) => assert_eq!(&small[..n], &ids[..]),
        Err(e) => assert_eq!(
            e,
            Error::BufferTooSmall {
                what: "token output",
                needed: text.len(),
                got: small.len()
            }
        ),
    }

    // Arbitrary ids, streamed.
    let raw: Vec<u32> = text
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .map(|id| {
            if id & 0x8000_0000 == 0 {
                id % (tok.vocab_size() as u32 + 1)
            } else {
                id
            }
        })
        .collect();
    let mut d = Decoder::new();
    let mut s = String::new();
    let mut bytes = Vec::new();
    let mut tok_buf = vec![0u8; tok.max_token_bytes()];
    for &id in &raw {
        let valid = (id as usize) < tok.vocab_size();
        let before = d;
        match d.push(tok, id, &mut |t: &str| s.push_str(t)) {
            Ok(()) => assert!(valid),
            Err(e) => {
                assert!(!valid);
                assert_eq!(
                    e,
                    Error::TokenOutOfRange {
                        token: id,
                        vocab_size: tok.vocab_size()
                    }
                );
                assert_eq!(d, before, "a failed push must not change the decoder");
            }
        }
        if valid {
            let n = tok
                .token_bytes_into(id, &mut tok_buf)
                .expect("max_token_bytes suffices");
            bytes.extend_from_slice(&tok_buf[..n]);
            let _ = tok.token_str(id).expect("valid id");
        } else {
            assert!(tok.token_str(id).is_err());
        }
    }
    d.flush(&mut |t: &str| s.push_str(t));
    assert_eq!(s, String::from_utf8_lossy(&bytes));
    assert!(d.pending().is_empty());
}

/// Builds a tokenizer from arbitrary GGUF bytes (with a workspace one word too small first) and,
/// if that works, runs [`tokenizer_text`] on a fixed text and decodes every id.
pub fn tokenizer_gguf(data: &[u8]) {
    let Ok(g) = Gguf::parse(data) else { return };
    let Ok(need) = Tokenizer::workspace_len(&g) else {
        assert!(TokenizerBuf::new(&g).is_err());
        return;
    };
    if need > (64 << 20) / 4 {
        return; // bounded by the file size; just too big to be worth allocating here
    }
    let mut ws = vec![0u32; need];
    if need > 0 {
        match Tokenizer::new(&g, &mut ws[..need - 1]) {
            Err(Error::BufferTooSmall { needed, got, .. }) => {
                assert_eq!((needed, got), (need, need - 1))
            }
            Err(_) => {} // a metadata error found before the size check
            Ok(_) => panic!("Tokenizer::new accepted a workspace one word too small"),
        }
    }
    let Ok(tok) = Tokenizer::new(&g, &mut ws) else {
        return;
    };
    assert!(tok.vocab_size() >= 256);
    for b in 0..=255u8 {
        assert!((tok.byte_token(b) as usize) < tok.vocab_size());
    }
    tokenizer_text(
        &tok,
        b"It is a truth universally acknowledged, \xc3\xbc \xf0\x9f\x98\x80 \xff \xe2\x82",
    );
    tokenizer_text(&tok, &data[..data.len().min(256)]);
    let mut d = Decoder::new();
    let n = tok.vocab_size().min(4096) as u32;
    for id in 0..n {
        d.push(&tok, id, &mut |_: &str| {})
            .expect("ids below vocab_size are valid");
        if let Ok(s) = tok.token_str(id) {
            if !s.is_empty() {
                // Token strings are unique, so lookup finds this very id.
                assert_eq!(tok.find_token(s), Some(id));
            }
        }
    }
}

/// Longest text the `tokenizer` target encodes (long enough to show super-linear encoding).
pub const MAX_TEXT: usize = 4 << 10;

/// The `tokenizer` fuzz target: the first byte picks the mode. Even: encode/decode the rest
/// (up to [`MAX_TEXT`] bytes) with `tok` (the tokenizer of a valid test model). Odd: build a
/// tokenizer from the rest as a GGUF file.
pub fn tokenizer(tok: &Tokenizer<'_, '_>, data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        tokenizer_text(tok, &rest[..rest.len().min(MAX_TEXT)]);
    } else {
        tokenizer_gguf(rest);
    }
}

/// The `sampler` fuzz target: parameters from the first 13 bytes (temperature, top_k, top_p,
/// seed), logits from the rest as little-endian f32. Invalid parameters, non-finite or empty
/// logits and too-small scratch are errors; anything returned is a valid id.
pub fn sampler(data: &[u8]) {
    if data.len() < 13 {
        return;
    }
    let f = |i: usize| f32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let params = SamplerParams {
        temperature: f(0),
        top_k: usize::from(data[4]),
        top_p: f(5),
    };
    let seed = u64::from(f(9).to_bits());
    let logits: Vec<f32> = data[13..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let finite_max = !logits.is_empty()
        && logits.iter().all(|l| !l.is_nan() && *l != f32::INFINITY)
        && logits.iter().any(|l| *l != f32::NEG_INFINITY);
    match argmax(&logits) {
        Ok(i) => {
            assert!(finite_max);
            let best = logits[i as usize];
            assert!(logits.iter().all(|&l| l <= best));
            assert!(logits[..i as usize].iter().all(|&l| l < best));
        }
        Err(_) => assert!(!finite_max),
    }
    let Ok(mut s) = Sampler::new(params, seed) else {
        assert!(params.validate().is_err());
        return;
    };
    let n = logits.len();
    let mut scratch = vec![0u32; s.scratch_len(n)];
    for _ in 0..3 {
        match s.sample(&logits, &mut scratch) {
            Ok(id) => {
                assert!(finite_max);
                let id = id as usize;
                assert!(id < n);
                // Never an impossible token unless rounding leaves only the argmax.
                assert!(logits[id] != f32::NEG_INFINITY);
                if params.top_k > 0 && !params.is_greedy() {
                    let better = logits.iter().filter(|&&l| l > logits[id]).count();
                    assert!(better < params.top_k, "sampled outside the top-k");
                }
            }
            Err(TokenError::NonFinite(_)) | Err(TokenError::NoLogits) => {
                assert!(!finite_max)
            }
            Err(e) => panic!("unexpected sampler error {e:?}"),
        }
    }
    if s.scratch_len(n) > 0 {
        let r = s.sample(&logits, &mut scratch[..n - 1]);
        assert!(r.is_err());
    }
}
