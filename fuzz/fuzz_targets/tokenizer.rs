//! The tokenizer. First byte even: the rest is text, encoded (round trip checked) and decoded as
//! ids with the tokenizer of a test model. First byte odd: the rest is a GGUF file to build a
//! tokenizer from. Seeds (made by tools/fuzz.sh): text with a 0 byte in front, test models with
//! a 1 byte in front.
#![no_main]

use std::sync::OnceLock;

use mhmoe::gguf::Gguf;
use mhmoe::tokenizer::TokenizerBuf;

#[path = "../../tests/common/hostile.rs"]
mod hostile;

static MODEL: &[u8] = include_bytes!("../../tests/models/d_q8_0_h2_k2_gqa.gguf");
static TOKENIZER: OnceLock<TokenizerBuf<'static>> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let tok = TOKENIZER.get_or_init(|| {
        let g = Gguf::parse(MODEL).expect("the test model parses");
        TokenizerBuf::new(&g).expect("the test model has a tokenizer")
    });
    hostile::tokenizer(&tok.tokenizer(), data)
});
