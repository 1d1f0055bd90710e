//! Shared by the examples: the default model and text, output that reports a failed write (a
//! closed pipe, a full disk) instead of panicking as `println!` does, and the exit status.
#![allow(dead_code, unused_macros)]

use std::fmt::Display;
use std::io::{self, Write};
use std::process::ExitCode;

/// The shipped demo model, the examples' default `--model`.
pub const DEMO_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/mhmoe-demo-q8_0.gguf");

/// The held-out text sample, the default `--text` of the examples that read one.
pub const HELDOUT_TEXT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/heldout-sample.txt");

/// The message of a failed write to `stream` ("stdout" or "stderr").
pub fn write_failed(stream: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("cannot write to {stream}: {e}")
}

/// `writeln!` to stdout, `Err` with a message if the write fails.
macro_rules! outln {
    ($w:expr) => {
        writeln!($w).map_err(common::write_failed("stdout"))
    };
    ($w:expr, $($arg:tt)*) => {
        writeln!($w, $($arg)*).map_err(common::write_failed("stdout"))
    };
}

/// `writeln!` to stderr, `Err` with a message if the write fails.
macro_rules! errln {
    ($($arg:tt)*) => {
        writeln!(std::io::stderr(), $($arg)*).map_err(common::write_failed("stderr"))
    };
}

/// A `--kv` argument: the KV cache type it names (`mhmoe::KvType::from_name`).
pub fn parse_kv(s: &str) -> Result<mhmoe::KvType, String> {
    mhmoe::KvType::from_name(s)
        .ok_or_else(|| format!("unknown KV type {s:?} (f32, f16, q8_0, q4_0)"))
}

/// The exit status of `run`'s result: 0, or 1 after printing the error to stderr (if stderr
/// can be written at all: a failed write of the message is ignored, as nothing else is left
/// to report it to).
pub fn exit(result: Result<(), impl Display>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: {e}");
            ExitCode::FAILURE
        }
    }
}
