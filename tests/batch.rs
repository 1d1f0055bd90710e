//! Batched forward passes and threads give the same bits as token-by-token `forward`: logits
//! and KV cache, on every available instruction set, for every test model, every batch split
//! and every thread count; and their bad inputs are typed errors that leave the state as it was.

mod common;

use mhmoe::file::{ModelBytes, StateBuffer};
use mhmoe::kernels::ALL_ISAS;
use mhmoe::parallel::{Parallel, Serial, ThreadPool};
use mhmoe::state::{KvType, StateOptions};
use mhmoe::{Error, Exec, Isa, TokenError};

const TOKENS: [u32; 13] = [1, 7, 42, 3, 99, 5, 200, 17, 0, 64, 8, 31, 2];

type Run = (Vec<Vec<f32>>, Vec<u8>, Vec<u8>);

/// Logits after each token, and the final KV cache bytes, running one token at a time with a
/// KV cache of type `kv`.
fn token_by_token(exec: Exec<'_>, path: &std::path::Path, kv: KvType) -> Run {
    let file = ModelBytes::read(path).unwrap();
    let model = file.model().unwrap();
    let mut buf = StateBuffer::for_model(&model, StateOptions::new(16).kv(kv)).unwrap();
    let mut state = buf.state(&model).unwrap();
    let v = model.config().vocab_size() as u32;
    let logits = TOKENS
        .iter()
        .map(|&t| exec.forward(&model, &mut state, t % v).unwrap().to_vec())
        .collect();
    let (k, val) = state.kv_cache();
    (logits, k.to_vec(), val.to_vec())
}

/// Runs TOKENS in batches of the given sizes and checks every batch's last logits and the
/// final KV cache against `want`.
fn check_batches(
    exec: Exec<'_>,
    path: &std::path::Path,
    (sizes, kv): (&[usize], KvType),
    want: &Run,
    what: &str,
) {
    let file = ModelBytes::read(path).unwrap();
    let model = file.model().unwrap();
    let cap = *sizes.iter().max().unwrap();
    let opts = StateOptions::new(16).batch(cap).kv(kv);
    let mut buf = StateBuffer::for_model(&model, opts).unwrap();
    let mut state = buf.state(&model).unwrap();
    assert_eq!(state.batch_capacity(), cap);
    let v = model.config().vocab_size() as u32;
    let tokens: Vec<u32> = TOKENS.iter().map(|&t| t % v).collect();
    let mut at = 0;
    for &n in sizes.iter().cycle() {
        if at == tokens.len() {
            break;
        }
        let n = n.min(tokens.len() - at);
        let got = exec
            .forward_batch(&model, &mut state, &tokens[at..at + n])
            .unwrap();
        at += n;
        assert!(
            got.iter()
                .zip(&want.0[at - 1])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: {what}: logits after token {} differ",
            path.display(),
            at - 1
        );
        assert_eq!(state.pos(), at);
    }
    let (k, val) = state.kv_cache();
    assert!(k == want.1, "{}: {what}: key cache differs", path.display());
    assert!(
        val == want.2,
        "{}: {what}: value cache differs",
        path.display()
    );
}

/// The KV types a model can use (block types need heads of whole blocks).
fn kv_types(path: &std::path::Path) -> Vec<KvType> {
    let file = ModelBytes::read(path).unwrap();
    let model = file.model().unwrap();
    KvType::ALL
        .into_iter()
        .filter(|kv| kv.row_bytes(model.config().head_dim()).is_some())
        .collect()
}

#[test]
fn batches_match_token_by_token_on_every_isa_and_kv_type() {
    let mut block_kv = false;
    for path in common::test_models() {
        for kv in kv_types(&path) {
            block_kv |= kv == KvType::Q4_0;
            let scalar = token_by_token(Exec::serial().with_isa(Isa::Scalar).unwrap(), &path, kv);
            for isa in ALL_ISAS.into_iter().filter(|i| i.is_available()) {
                let exec = Exec::serial().with_isa(isa).unwrap();
                let want = token_by_token(exec, &path, kv);
                // Every KV type gives the same bits on every instruction set.
                assert!(
                    want == scalar,
                    "{}: {} with a {} KV cache differs from scalar",
                    path.display(),
                    isa.name(),
                    kv.name()
                );
                for sizes in [&[13][..], &[4], &[1, 5, 2], &[3, 1]] {
                    let what = format!("{} kv {} {sizes:?}", isa.name(), kv.name());
                    check_batches(exec, &path, (sizes, kv), &want, &what);
                }
            }
        }
    }
    assert!(block_kv, "no test model can take a block KV cache");
}

#[test]
fn threads_match_one_thread() {
    let pools: Vec<ThreadPool> = [1, 2].map(|n| ThreadPool::new(n).unwrap()).into();
    for isa in [Isa::Scalar, Isa::detect()] {
        let serial = Exec::serial().with_isa(isa).unwrap();
        for path in common::test_models() {
            let kv = *kv_types(&path).last().unwrap();
            let want = token_by_token(serial, &path, kv);
            for pool in &pools {
                // Split every product and every attention over the threads, however small.
                let exec = Exec::new(pool).with_isa(isa).unwrap().with_min_split(0);
                let what = format!("{} x{} kv {}", isa.name(), pool.threads(), kv.name());
                assert!(
                    token_by_token(exec, &path, kv) == want,
                    "{what}: token by token"
                );
                check_batches(exec, &path, (&[5, 3], kv), &want, &what);
            }
        }
    }
}

/// A pool runs every task exactly once, however many tasks and threads.
#[test]
fn pool_runs_every_task_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for threads in 1..=4 {
        let pool = ThreadPool::new(threads).unwrap();
        for n in [0, 1, 2, 3, 7, 64, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..20 {
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 20));
        }
    }
    let hits = std::sync::atomic::AtomicUsize::new(0);
    Serial.run(5, &|_| {
        hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(hits.into_inner(), 5);
}

#[test]
fn bad_batches_and_thread_counts_are_errors_that_change_nothing() {
    assert!(matches!(ThreadPool::new(0), Err(Error::BadThreadCount)));
    let path = &common::test_models()[0];
    let file = ModelBytes::read(path).unwrap();
    let model = file.model().unwrap();
    assert!(matches!(
        StateBuffer::for_model(&model, StateOptions::new(8).batch(0)),
        Err(Error::BadBatchCapacity)
    ));
    let mut buf = StateBuffer::for_model(&model, StateOptions::new(8).batch(4)).unwrap();
    let mut state = buf.state(&model).unwrap();
    let exec = Exec::serial();
    exec.forward_batch(&model, &mut state, &[1, 2, 3]).unwrap();
    let before = state.logits().to_vec();
    let (k0, v0) = (state.kv_cache().0.to_vec(), state.kv_cache().1.to_vec());

    type Check = fn(&TokenError) -> bool;
    let bad: [(&[u32], Check); 4] = [
        (&[], |e| matches!(e, TokenError::EmptyBatch)),
        (&[1, 2, 3, 4, 5], |e| {
            matches!(
                e,
                TokenError::BatchTooLarge {
                    len: 5,
                    capacity: 4
                }
            )
        }),
        (&[1, 2, 3, 4, 5][..4], |e| {
            matches!(e, TokenError::BatchTooLarge { .. })
                || matches!(e, TokenError::ContextFull { .. })
        }),
        (&[1, u32::MAX, 2], |e| {
            matches!(e, TokenError::TokenOutOfRange { .. })
        }),
    ];
    // Fill to 6 of 8 positions first so that 4 more do not fit.
    exec.forward_batch(&model, &mut state, &[4, 5, 6]).unwrap();
    let before6 = state.logits().to_vec();
    for (tokens, ok) in bad {
        let e = exec.forward_batch(&model, &mut state, tokens).unwrap_err();
        assert!(ok(&e), "{tokens:?}: {e}");
        assert_eq!(
            state.pos(),
            6,
            "{tokens:?}: a failed batch must not advance"
        );
        assert_eq!(state.logits(), &before6[..]);
    }
    let e = exec
        .forward_batch(&model, &mut state, &[1, 2, 3])
        .unwrap_err();
    assert!(
        matches!(e, TokenError::ContextFull { context_length: 8 }),
        "{e}"
    );
    // The first positions are untouched, and the state carries on as if nothing failed.
    state.reset();
    exec.forward_batch(&model, &mut state, &[1, 2, 3]).unwrap();
    assert_eq!(state.logits(), &before[..]);
    // The cache is [layer][kv head][position][head_dim]: positions 0..3 of every head.
    let (hd, ctx) = (model.config().head_dim(), 8);
    for lh in 0..model.config().n_layers() * model.config().n_kv_heads() {
        let r = 4 * lh * ctx * hd..4 * (lh * ctx * hd + 3 * hd); // f32 bytes
        assert_eq!(state.kv_cache().0[r.clone()], k0[r.clone()]);
        assert_eq!(state.kv_cache().1[r.clone()], v0[r]);
    }
}

/// Three threads (uneven row splits; more threads than this machine's cores) on one model.
#[test]
fn three_threads_match_one_thread() {
    let pool = ThreadPool::new(3).unwrap();
    let path = &common::test_models()[0];
    let want = token_by_token(Exec::serial(), path, KvType::F32);
    let exec = Exec::new(&pool).with_min_split(0);
    assert!(token_by_token(exec, path, KvType::F32) == want);
    check_batches(exec, path, (&[6], KvType::F32), &want, "x3");
}

/// A task that panics on a worker thread makes `run` panic on the caller, after every other
/// task has finished, and the pool stays usable.
#[test]
fn pool_propagates_panics_and_survives() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pool = ThreadPool::new(2).unwrap();
    let done = AtomicUsize::new(0);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.run(16, &|i| {
            if i == 7 {
                panic!("task 7");
            }
            done.fetch_add(1, Ordering::Relaxed);
        })
    }));
    assert!(r.is_err());
    assert_eq!(done.load(Ordering::Relaxed), 15);
    let again = AtomicUsize::new(0);
    pool.run(64, &|_| {
        again.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(again.into_inner(), 64);
}
