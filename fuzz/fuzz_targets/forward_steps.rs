//! A mutated small model loaded and run for a few forward steps (small context, one step past
//! it), sampling each next token; the active instruction set must match the scalar one bit for
//! bit. Seeds: tests/models/*.gguf.
#![no_main]

#[path = "../../tests/common/hostile.rs"]
mod hostile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::forward_steps(data));
