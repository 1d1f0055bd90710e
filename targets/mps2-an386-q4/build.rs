//! Sizes the statics from the model and checks it fits this board (see
//! ../demo-fw/build_support.rs, a layer over mhmoe::build::Sizing).

#[path = "../demo-fw/build_support.rs"]
mod build_support;

fn main() {
    build_support::Board {
        name: "mps2-an386-q4",
        model: "models/mhmoe-demo-q4_0.gguf",
        ctx: 256,
        tokens: 16,
        model_region: "FLASH",
        defmt: false,
        kv: mhmoe::KvType::Q4_0,
    }
    .configure();
}
