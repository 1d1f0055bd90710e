//! `Model::from_bytes` with configuration validation, `State::bytes_needed` for good and bad
//! context lengths, `State::new` with a buffer one byte too small. Seeds: tests/models/*.gguf.
#![no_main]

#[path = "../../tests/common/hostile.rs"]
mod hostile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::model(data));
