//! `Gguf::parse` on arbitrary bytes, then every metadata value (arrays recursively) and every
//! tensor. Seeds: tests/models/*.gguf.
#![no_main]

#[path = "../../tests/common/hostile.rs"]
mod hostile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::gguf(data));
