//! KV cache storage types: their sizes, the compile-time sizing that must agree with the
//! run-time one, and what they cost in accuracy. (That every type gives the same bits on every
//! instruction set and batch split is in `tests/batch.rs`.)

mod common;

use mhmoe::file::{ModelBytes, StateBuffer};
use mhmoe::{Error, KvType, Shape, State, StateOptions};

fn demo() -> ModelBytes {
    ModelBytes::read(common::root().join("models/mhmoe-demo-q8_0.gguf")).unwrap()
}

#[test]
fn sizes_follow_the_type_and_const_sizing_agrees() {
    for path in common::test_models()
        .into_iter()
        .chain([common::root().join("models/mhmoe-demo-q4_0.gguf")])
    {
        let file = ModelBytes::read(&path).unwrap();
        let model = file.model().unwrap();
        let c = model.config();
        let shape = model.shape();
        for ctx in [1, 7, c.context_length()] {
            let f32_bytes = State::bytes_needed(&model, ctx).unwrap();
            for kv in KvType::ALL {
                for batch in [1, 3] {
                    let opts = StateOptions::new(ctx).batch(batch).kv(kv);
                    let run_time = State::bytes_needed(&model, opts);
                    assert_eq!(
                        run_time.as_ref().ok().copied(),
                        State::bytes_for(&shape, opts)
                    );
                    let Some(row) = kv.row_bytes(c.head_dim()) else {
                        assert!(matches!(run_time, Err(Error::InvalidConfig { .. })));
                        continue;
                    };
                    if batch > 1 {
                        continue;
                    }
                    // Keys and values: one row per layer, kv head and position, each rounded
                    // up to 16 bytes as a whole.
                    let rows = c.n_layers() * c.n_kv_heads() * ctx;
                    let kv_of = |bytes: usize| 2 * bytes.div_ceil(16) * 16;
                    assert_eq!(
                        run_time.unwrap(),
                        f32_bytes - kv_of(rows * c.head_dim() * 4) + kv_of(rows * row),
                        "{}: kv {} ctx {ctx}",
                        path.display(),
                        kv.name()
                    );
                }
            }
        }
    }
}

#[test]
fn const_sizing_refuses_what_state_new_refuses() {
    let file = demo();
    let model = file.model().unwrap();
    let shape = model.shape();
    let max = shape.context_length;
    for opts in [
        StateOptions::new(0),
        StateOptions::new(max + 1),
        StateOptions::new(4).batch(0),
    ] {
        assert_eq!(State::bytes_for(&shape, opts), None, "{opts:?}");
        assert!(State::bytes_needed(&model, opts).is_err());
    }
    // Heads of 48 values are not whole Q8_0 or Q4_0 blocks.
    let odd = Shape {
        head_dim: 48,
        n_heads: 2,
        n_kv_heads: 2,
        dim: 96,
        ..shape
    };
    assert!(State::bytes_for(&odd, StateOptions::new(4).kv(KvType::F16)).is_some());
    assert_eq!(
        State::bytes_for(&odd, StateOptions::new(4).kv(KvType::Q8_0)),
        None
    );
    assert_eq!(
        State::bytes_for(&odd, StateOptions::new(4).kv(KvType::Q4_0)),
        None
    );
    // Usable in a const.
    const TINY: Shape = Shape {
        dim: 64,
        n_layers: 2,
        ff_dim: 128,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 32,
        n_experts: 4,
        top_k: 2,
        expert_ff_dim: 64,
        shared_ff_dim: 0,
        moe_heads: 2,
        vocab_size: 300,
        context_length: 64,
        router_red: 0,
    };
    const BYTES: Option<usize> = State::bytes_for(&TINY, StateOptions::new(64).kv(KvType::Q4_0));
    assert!(BYTES.unwrap() < State::bytes_for(&TINY, StateOptions::new(64)).unwrap());
}

/// The quantized caches change the logits a little (Q4_0 more): the accuracy cost, measured as
/// perplexity, is in the README.
#[test]
fn quantized_caches_stay_close_to_f32() {
    let file = demo();
    let model = file.model().unwrap();
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 2048).collect();
    let run = |kv: KvType| -> Vec<Vec<f32>> {
        let mut buf = StateBuffer::for_model(&model, StateOptions::new(64).kv(kv)).unwrap();
        let mut st = buf.state(&model).unwrap();
        assert_eq!(st.kv_type(), kv);
        prompt
            .iter()
            .map(|&t| mhmoe::forward(&model, &mut st, t).unwrap().to_vec())
            .collect()
    };
    let exact = run(KvType::F32);
    // Bounds: about three times what was measured (f16 0.015, q8_0 0.018, q4_0 0.17 of the
    // largest logit; 0, 0 and 4 of 40 greedy tokens changed).
    for (kv, bound, most_flips) in [
        (KvType::F16, 0.05, 2),
        (KvType::Q8_0, 0.05, 2),
        (KvType::Q4_0, 0.5, 10),
    ] {
        let got = run(kv);
        let (mut worst, mut flips) = (0.0f32, 0);
        for (g, e) in got.iter().zip(&exact) {
            let spread = e.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in g.iter().zip(e) {
                worst = worst.max((a - b).abs() / spread);
            }
            flips += usize::from(common::argmax(g) != common::argmax(e));
        }
        eprintln!("{}: worst logit change {worst:.4} of the largest logit, {flips} of {} greedy tokens changed", kv.name(), got.len());
        assert!(worst > 0.0, "{}: the cache type changed nothing", kv.name());
        assert!(
            worst < bound,
            "{}: logits moved by {worst} of the largest",
            kv.name()
        );
        assert!(
            flips <= most_flips,
            "{}: {flips} greedy tokens changed",
            kv.name()
        );
    }
}
