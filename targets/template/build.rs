//! Sizes the firmware's static buffers from the model file, and fails the build if the model and
//! its buffers do not fit the chip (EMBEDDING.md, step 4).

use std::path::PathBuf;

use mhmoe::KvType;
use mhmoe::build::Sizing;

fn main() {
    // cortex-m-rt's link.x includes memory.x from the linker search path.
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::copy("memory.x", out.join("memory.x")).unwrap();
    println!("cargo::rustc-link-search={}", out.display());
    println!("cargo::rerun-if-changed=memory.x");

    // TODO(4): your model, context length, KV cache type and stack reserve.
    Sizing::new("../../models/mhmoe-demo-q4_0.gguf", 256)
        .kv(KvType::Q4_0)
        .memory_x("memory.x")
        .stack(24 * 1024)
        .code(256 * 1024)
        .emit();
}
