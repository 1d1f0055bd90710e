//! Picks the board's memory map: `KERNEL_CHECK_BOARD` (mps2-an386, mps2-an500, mps2-an505,
//! mps3-an547) if set, else from the target and CPU: thumbv7em -> mps2 (an386/an500 share a
//! map), thumbv8m.main with cortex-m55 -> mps3-an547, other thumbv8m.main -> mps2-an505.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=KERNEL_CHECK_BOARD");
    println!("cargo:rerun-if-changed=memory");
    let target = env::var("TARGET").unwrap_or_default();
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let board = env::var("KERNEL_CHECK_BOARD").unwrap_or_else(|_| {
        if target.starts_with("thumbv8m.main") {
            if flags.contains("cortex-m55") {
                "mps3-an547".into()
            } else {
                "mps2-an505".into()
            }
        } else {
            "mps2-an386".into()
        }
    });
    let file = match board.as_str() {
        "mps2-an385" | "mps2-an386" | "mps2-an500" => "mps2.x",
        "mps2-an505" => "mps2-an505.x",
        "mps3-an547" => "mps3-an547.x",
        other => panic!("unknown KERNEL_CHECK_BOARD {other:?}"),
    };
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    fs::copy(PathBuf::from("memory").join(file), out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
}
