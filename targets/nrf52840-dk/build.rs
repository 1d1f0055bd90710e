//! Sizes the statics from the model and checks it fits this board (see
//! ../demo-fw/build_support.rs, a layer over mhmoe::build::Sizing).

#[path = "../demo-fw/build_support.rs"]
mod build_support;

fn main() {
    build_support::Board {
        name: "nrf52840-dk",
        model: "models/mhmoe-demo-q4_0.gguf",
        ctx: 256,
        tokens: 16,
        model_region: "FLASH",
        defmt: true,
        kv: mhmoe::KvType::Q4_0,
    }
    .configure();
}
