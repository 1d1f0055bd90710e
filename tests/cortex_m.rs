//! Cortex-M kernels under emulation: builds the firmware in `targets/kernel-check` for the DSP
//! cores (M4 on mps2-an386, M7 on mps2-an500, M33 on mps2-an505), for Helium (M55 on
//! mps3-an547) and once with the scalar kernels (mps2-an386), runs each under
//! `qemu-system-arm` with a timeout, and checks that every kernel matched the scalar
//! specification on every case (QEMU's exit code is the firmware's), that every kernel was
//! covered, and that the scalar outputs hash the same on the device as on this host.
//!
//! Without `qemu-system-arm` or the Rust targets the test prints `SKIP cortex-m: <reason>` and
//! passes, unless `MHMOE_REQUIRE_ISAS` names `cortex-m-dsp` or `helium`: then it fails.
//! `tools/install-cortex-m.sh` installs what is missing.

#[path = "../targets/kernel-check/src/cases.rs"]
#[allow(dead_code)]
mod cases;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// One firmware build and the boards it runs on.
struct Build {
    /// Target directory name under target/cortex-m/ (builds with equal RUSTFLAGS share one).
    dir: &'static str,
    target: &'static str,
    cpu: Option<&'static str>,
    features: &'static str,
    /// The ISA name of `MHMOE_REQUIRE_ISAS` this build proves, if any.
    isa: Option<&'static str>,
    boards: &'static [&'static str],
}

const BUILDS: [Build; 4] = [
    Build {
        dir: "thumbv7em",
        target: "thumbv7em-none-eabihf",
        cpu: None,
        features: "dsp",
        isa: Some("cortex-m-dsp"),
        boards: &["mps2-an386", "mps2-an500"],
    },
    Build {
        dir: "m33",
        target: "thumbv8m.main-none-eabihf",
        cpu: Some("cortex-m33"),
        features: "dsp",
        isa: Some("cortex-m-dsp"),
        boards: &["mps2-an505"],
    },
    Build {
        dir: "m55",
        target: "thumbv8m.main-none-eabihf",
        cpu: Some("cortex-m55"),
        features: "helium",
        isa: Some("helium"),
        boards: &["mps3-an547"],
    },
    Build {
        dir: "thumbv7em",
        target: "thumbv7em-none-eabihf",
        cpu: None,
        features: "",
        isa: None,
        boards: &["mps2-an386"],
    },
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> Vec<String> {
    std::env::var("MHMOE_REQUIRE_ISAS")
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Skips loudly, or fails if one of `isas` is required.
fn skip(reason: &str, isas: &[&str]) {
    let req = required();
    if let Some(isa) = isas.iter().find(|i| req.iter().any(|r| r == *i)) {
        panic!("MHMOE_REQUIRE_ISAS includes {isa}, but it cannot run: {reason}");
    }
    println!("SKIP cortex-m: {reason}");
}

fn has_qemu() -> bool {
    Command::new("qemu-system-arm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn has_target(target: &str) -> bool {
    let Ok(out) = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(target)
        .join("lib")
        .is_dir()
}

/// Builds the firmware; returns the ELF path.
fn build(b: &Build, board: &str) -> PathBuf {
    let crate_dir = root().join("targets/kernel-check");
    let target_dir = root().join("target/cortex-m").join(b.dir);
    let mut rustflags = String::from("-C link-arg=-Tlink.x");
    if let Some(cpu) = b.cpu {
        rustflags.push_str(" -C target-cpu=");
        rustflags.push_str(cpu);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&crate_dir)
        .args([
            "build",
            "--release",
            "--bin",
            "kernel-check",
            "--target",
            b.target,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", &rustflags)
        .env("KERNEL_CHECK_BOARD", board)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    if !b.features.is_empty() {
        cmd.args(["--features", b.features]);
    }
    let out = cmd.output().expect("running cargo");
    assert!(
        out.status.success(),
        "firmware build failed ({} {}):\n{}",
        b.target,
        b.features,
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir
        .join(b.target)
        .join("release")
        .join("kernel-check")
}

fn run(board: &str, elf: &Path) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .arg("120")
        .arg("qemu-system-arm")
        .args([
            "-machine",
            board,
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "none",
        ])
        .args(["-semihosting-config", "enable=on,target=native", "-kernel"])
        .arg(elf)
        .output()
        .expect("running timeout qemu-system-arm");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn cortex_m_kernels_match_scalar_under_qemu() {
    let every: Vec<&str> = BUILDS.iter().filter_map(|b| b.isa).collect();
    if !has_qemu() {
        skip(
            "qemu-system-arm not found (run tools/install-cortex-m.sh)",
            &every,
        );
        return;
    }
    // The reference: the same cases with the scalar kernels on this host.
    let mut bufs = Box::new(cases::Bufs::ZERO);
    let mut sink = |_: std::fmt::Arguments<'_>| {};
    let mut ck = cases::Checker::new(&mut sink);
    cases::run::<mhmoe::kernels::Scalar>(&mut bufs, &mut ck);
    let host_hash = format!("scalar-hash={:#018x}", ck.hash);

    let mut failures = Vec::new();
    for b in &BUILDS {
        if !has_target(b.target) {
            skip(
                &format!(
                    "Rust target {} not installed (run tools/install-cortex-m.sh)",
                    b.target
                ),
                b.isa.as_slice(),
            );
            continue;
        }
        // The boards of one build share a memory map: build once, for the first.
        let t = Instant::now();
        let elf = build(b, b.boards[0]);
        let built = t.elapsed();
        for &board in b.boards {
            let t = Instant::now();
            let (code, text) = run(board, &elf);
            let name = format!(
                "{board} ({}{})",
                b.target,
                if b.features.is_empty() {
                    String::from(", scalar")
                } else {
                    format!(", {}", b.features)
                }
            );
            let summary = text
                .lines()
                .find(|l| l.starts_with("kernel-check "))
                .unwrap_or("no summary line");
            println!(
                "{name}: exit {code:?}, {summary} (build {:.1} s, run {:.2} s)",
                built.as_secs_f64(),
                t.elapsed().as_secs_f64()
            );
            let mut problems = Vec::new();
            if code != Some(0) {
                problems.push(format!("exit code {code:?}"));
            }
            for k in cases::KERNELS {
                let covered = text.lines().any(|l| {
                    let mut w = l.split_whitespace();
                    w.next() == Some(k) && w.next().is_some_and(|n| n != "0")
                });
                if !covered {
                    problems.push(format!("kernel {k} not covered"));
                }
            }
            if !text.lines().any(|l| l.trim() == host_hash) {
                problems.push(format!(
                    "scalar outputs differ from this host's ({host_hash})"
                ));
            }
            if !problems.is_empty() {
                failures.push(format!("{name}: {}\n{text}", problems.join(", ")));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
