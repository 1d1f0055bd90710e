//! The step API (`Exec::begin`, `Steps::step`, `Steps::finish`) gives the same bits as
//! `forward_batch`, and a pass abandoned midway (or failed) leaves the state so that the next
//! pass gives the same results as if it had never begun. Also: the per-token error is small.

mod common;

use mhmoe::file::{ModelBytes, StateBuffer};
use mhmoe::state::StateOptions;
use mhmoe::{Exec, TokenError};

const PROMPT: [u32; 5] = [1, 7, 42, 3, 99];

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The per-token error is `Copy` and at most 16 bytes, so a firmware's token loop moves no
/// large values (the load-time `Error` carries 64-byte names).
#[test]
fn token_error_is_small_and_copy() {
    fn copy<T: Copy>() {}
    copy::<TokenError>();
    let size = std::mem::size_of::<TokenError>();
    assert!(size <= 16, "size_of::<TokenError>() = {size}");
}

#[test]
fn steps_give_the_bits_of_forward_batch_and_count_layers() {
    for path in common::test_models() {
        let file = ModelBytes::read(&path).unwrap();
        let model = file.model().unwrap();
        let v = model.config().vocab_size() as u32;
        let prompt: Vec<u32> = PROMPT.iter().map(|&t| t % v).collect();
        let exec = Exec::serial();

        let mut buf = StateBuffer::for_model(&model, StateOptions::new(16).batch(8)).unwrap();
        let mut want = buf.state(&model).unwrap();
        exec.forward_batch(&model, &mut want, &prompt).unwrap();
        let want_logits = bits(exec.forward(&model, &mut want, 5 % v).unwrap());

        let mut buf2 = StateBuffer::for_model(&model, StateOptions::new(16).batch(8)).unwrap();
        let mut got = buf2.state(&model).unwrap();
        for tokens in [&prompt[..], &[5 % v][..]] {
            let mut steps = exec.begin(&model, &mut got, tokens).unwrap();
            let total = steps.layers_total();
            assert_eq!(total, model.config().n_layers());
            let mut ran = 0;
            while steps.step().unwrap() {
                ran += 1;
                assert_eq!(steps.layers_done(), ran);
            }
            assert_eq!(ran, total, "{}", path.display());
            assert!(!steps.step().unwrap(), "no layer after the last");
            steps.finish().unwrap();
        }
        assert_eq!(bits(got.logits()), want_logits, "{}", path.display());
        assert_eq!(got.pos(), want.pos());
        assert_eq!(got.kv_cache().0, want.kv_cache().0);
        assert_eq!(got.kv_cache().1, want.kv_cache().1);
    }
}

#[test]
fn an_abandoned_pass_changes_nothing_the_next_pass_sees() {
    for path in common::test_models() {
        let file = ModelBytes::read(&path).unwrap();
        let model = file.model().unwrap();
        let v = model.config().vocab_size() as u32;
        let exec = Exec::serial();
        let mut buf = StateBuffer::for_model(&model, StateOptions::new(16).batch(8)).unwrap();

        // Uninterrupted: prompt, then two tokens.
        let mut want = buf.state(&model).unwrap();
        exec.forward_batch(&model, &mut want, &[1, 2, 3]).unwrap();
        exec.forward(&model, &mut want, 4 % v).unwrap();
        let want_logits = bits(exec.forward(&model, &mut want, 9 % v).unwrap());
        let want_kv = (want.kv_cache().0.to_vec(), want.kv_cache().1.to_vec());

        // The same, with passes abandoned after 0, 1 or all layers along the way (of other
        // tokens, so that their cache writes would show if they counted).
        for abandon_after in [0, 1, usize::MAX] {
            let mut st = buf.state(&model).unwrap();
            exec.forward_batch(&model, &mut st, &[1, 2, 3]).unwrap();
            let kept = bits(st.logits());
            let bytes = st.weight_bytes_read();
            {
                let mut steps = exec.begin(&model, &mut st, &[7 % v, 8 % v]).unwrap();
                for _ in 0..abandon_after.min(steps.layers_total()) {
                    assert!(steps.step().unwrap());
                }
            } // abandoned
            assert_eq!(st.pos(), 3, "an abandoned pass does not advance");
            assert_eq!(bits(st.logits()), kept, "the last finished logits stay");
            assert_eq!(st.weight_bytes_read(), bytes);
            assert!(
                st.routing(&model, 0).is_none(),
                "the routing record is cleared"
            );
            exec.forward(&model, &mut st, 4 % v).unwrap();
            let got = bits(exec.forward(&model, &mut st, 9 % v).unwrap());
            let where_ = format!("{}: abandoned after {abandon_after}", path.display());
            assert_eq!(got, want_logits, "{where_}");
            // Positions 0..5 of the cache are the same; later ones are scratch.
            let (k, val) = st.kv_cache();
            assert_eq!(k, want_kv.0, "{where_}: keys");
            assert_eq!(val, want_kv.1, "{where_}: values");
        }
    }
}

#[test]
fn begin_checks_before_anything_changes() {
    let path = &common::test_models()[0];
    let file = ModelBytes::read(path).unwrap();
    let model = file.model().unwrap();
    let v = model.config().vocab_size() as u32;
    let exec = Exec::serial();
    let mut buf = StateBuffer::for_model(&model, StateOptions::new(4).batch(2)).unwrap();
    let mut st = buf.state(&model).unwrap();
    assert_eq!(
        exec.begin(&model, &mut st, &[]).unwrap_err(),
        TokenError::EmptyBatch
    );
    assert_eq!(
        exec.begin(&model, &mut st, &[0, 1, 2]).unwrap_err(),
        TokenError::BatchTooLarge {
            len: 3,
            capacity: 2
        }
    );
    assert_eq!(
        exec.begin(&model, &mut st, &[v]).unwrap_err(),
        TokenError::TokenOutOfRange {
            token: v,
            vocab_size: v
        }
    );
    exec.forward_batch(&model, &mut st, &[1, 2]).unwrap();
    exec.forward_batch(&model, &mut st, &[1, 2]).unwrap();
    assert_eq!(
        exec.begin(&model, &mut st, &[1]).unwrap_err(),
        TokenError::ContextFull { context_length: 4 }
    );
    assert_eq!(st.pos(), 4);
}
