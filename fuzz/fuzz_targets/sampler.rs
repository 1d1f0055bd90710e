//! The sampler on arbitrary logits and parameters (see `hostile::sampler` for the layout).
#![no_main]

#[path = "../../tests/common/hostile.rs"]
mod hostile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::sampler(data));
