//! A kernel feature the target cannot run fails with one plain sentence (the `compile_error!`s
//! of `src/kernels/mod.rs`, chosen by `build.rs`), not with the assembler's errors: builds the
//! library for such combinations and checks the sentence and the number of errors. A valid
//! combination that needs the rustflags to be read (`cortex-m-dsp` on thumbv8m.main with
//! `-C target-cpu=cortex-m33`) must still build.
//!
//! Needs the Rust targets thumbv6m-none-eabi and thumbv8m.main-none-eabihf (tools/test.sh adds
//! them); without them it prints `SKIP feature-target: <reason>` and passes, unless
//! `MHMOE_REQUIRE_FIRMWARE=1`. Target directories: `target/feature-check/*`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::root;

fn target_installed(target: &str) -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        .join("lib/rustlib")
        .join(target)
        .join("lib")
        .is_dir()
}

/// `cargo <cmd> --lib --no-default-features --features <features> [--target <target>]` on this
/// crate, in `target/feature-check/<dir>`, with `rustflags` as the only rustflags (none from
/// this test run's environment).
fn cargo(cmd: &str, dir: &str, target: Option<&str>, features: &str, rustflags: &str) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(root()).args([
        cmd,
        "--lib",
        "--no-default-features",
        "--features",
        features,
    ]);
    if let Some(t) = target {
        c.args(["--target", t]);
    }
    common::clear_build_env(&mut c, &[]);
    c.env(
        "CARGO_TARGET_DIR",
        root().join("target/feature-check").join(dir),
    )
    .env("CARGO_ENCODED_RUSTFLAGS", rustflags.replace(' ', "\x1f"));
    c.output().expect("running cargo")
}

/// The build fails, names `sentence`, and reports at most two errors (the sentence and cargo's
/// "could not compile").
fn fails_with(out: &Output, what: &str, sentence: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: built, but must fail");
    assert!(
        err.contains(sentence),
        "{what}: the message lacks {sentence:?}:\n{err}"
    );
    let errors = err.lines().filter(|l| l.starts_with("error")).count();
    assert!(
        errors <= 2,
        "{what}: {errors} errors, expected the sentence alone:\n{err}"
    );
    println!("{what}: fails with the sentence, {errors} error lines");
}

#[test]
fn unsupported_feature_target_combinations_fail_with_a_sentence() {
    let targets = ["thumbv6m-none-eabi", "thumbv8m.main-none-eabihf"];
    if let Some(t) = targets.iter().find(|t| !target_installed(t)) {
        let reason = format!("Rust target {t} not installed (run tools/test.sh)");
        if std::env::var("MHMOE_REQUIRE_FIRMWARE").is_ok_and(|v| v == "1") {
            panic!("MHMOE_REQUIRE_FIRMWARE=1, but {reason}");
        }
        println!("SKIP feature-target: {reason}");
        return;
    }

    // A full build: without the check this gives hundreds of assembler errors (no SMLAD on
    // Armv6-M), which only code generation reports.
    fails_with(
        &cargo(
            "build",
            "plain",
            Some("thumbv6m-none-eabi"),
            "cortex-m-dsp",
            "",
        ),
        "cortex-m-dsp on thumbv6m",
        "the `cortex-m-dsp` feature needs an Armv7E-M or Armv8-M Mainline core with the DSP extension",
    );
    // The rest stop at the sentence whether built or checked: `cargo check` is faster.
    fails_with(
        &cargo(
            "check",
            "plain",
            Some("thumbv8m.main-none-eabihf"),
            "cortex-m-dsp",
            "",
        ),
        "cortex-m-dsp on thumbv8m.main without a target-cpu",
        "the `cortex-m-dsp` feature on thumbv8m.main needs a core with the DSP extension: add `-C target-cpu=cortex-m33`",
    );
    fails_with(
        &cargo(
            "check",
            "m33",
            Some("thumbv8m.main-none-eabihf"),
            "helium",
            "-C target-cpu=cortex-m33",
        ),
        "helium on a Cortex-M33",
        "the `helium` feature needs a core with Helium (MVE with floating point)",
    );
    fails_with(
        &cargo("check", "plain", None, "helium", ""),
        "helium on the host",
        "the `helium` feature selects kernels for Arm Cortex-M55/M85 cores and does nothing on this architecture",
    );

    // The flags are read: the same target with the M33's target-cpu takes the DSP kernels.
    let ok = cargo(
        "check",
        "m33",
        Some("thumbv8m.main-none-eabihf"),
        "cortex-m-dsp",
        "-C target-cpu=cortex-m33",
    );
    assert!(
        ok.status.success(),
        "cortex-m-dsp on thumbv8m.main with -C target-cpu=cortex-m33 must build:\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
