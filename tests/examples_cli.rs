//! The examples as a user runs them: they exit cleanly (no panic, exit code 1 with a message,
//! never 101) when stdout or stderr is a closed pipe or a full disk, their default context is
//! capped (a small file cannot make them allocate gigabytes) and said, and their error messages
//! say things once.
#![allow(clippy::result_large_err)]

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::builder::{Builder, Kv};

const MODEL: &str = "tests/models/d_q8_0_h2_k2_gqa.gguf";

fn model() -> String {
    common::root().join(MODEL).display().to_string()
}

/// Each example with arguments that make it quick on a test model.
fn examples() -> Vec<(&'static str, Vec<String>)> {
    let m = model();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        ("generate", s(&["-m", &m, "-n", "3", "-j", "1", "It is"])),
        ("perplexity", s(&["-m", &m, "--limit", "12", "-q"])),
        (
            "analyze",
            s(&["-m", &m, "--limit", "12", "-q", "-o", &analyze_out()]),
        ),
        ("footprint", s(&[&m, "--ctx", "8"])),
        (
            "bench",
            s(&[
                "-m",
                &m,
                "-t",
                "1",
                "-p",
                "2",
                "-d",
                "2",
                "-r",
                "1",
                "--bandwidth-mib",
                "1",
            ]),
        ),
        ("inspect", s(&[&m])),
    ]
}

fn dev_full() -> Stdio {
    Stdio::from(
        File::options()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full"),
    )
}

/// The write end of a pipe whose read end is already closed: every write fails (EPIPE).
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    Stdio::from(writer)
}

fn run(name: &str, args: &[String], stdout: Stdio, stderr: Stdio) -> Output {
    Command::new(common::example(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .output()
        .expect("the example runs")
}

fn assert_clean(name: &str, case: &str, o: &Output) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code().is_some(),
        "{name} ({case}): killed by a signal: {}",
        o.status
    );
    assert_ne!(
        o.status.code(),
        Some(101),
        "{name} ({case}) panicked: {err}"
    );
    assert!(!err.contains("panicked"), "{name} ({case}): {err}");
}

/// `| head -c 0`, `> /dev/full`, `2> /dev/full` and both: no panic, and a failed write to
/// stdout is an error (exit 1) that says so.
#[test]
fn every_example_exits_cleanly_when_it_cannot_write() {
    for (name, args) in examples() {
        let ok = run(name, &args, Stdio::piped(), Stdio::piped());
        assert!(
            ok.status.success(),
            "{name} {args:?}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(!ok.stdout.is_empty(), "{name} writes to stdout");
        for (case, stdout) in [
            ("stdout a closed pipe", closed_pipe()),
            ("stdout /dev/full", dev_full()),
        ] {
            let o = run(name, &args, stdout, Stdio::piped());
            assert_clean(name, case, &o);
            assert_eq!(o.status.code(), Some(1), "{name} ({case})");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("cannot write to stdout"),
                "{name} ({case}): {err}"
            );
        }
        let o = run(name, &args, Stdio::piped(), dev_full());
        assert_clean(name, "stderr /dev/full", &o);
        let o = run(name, &args, dev_full(), dev_full());
        assert_clean(name, "both /dev/full", &o);
        assert_eq!(o.status.code(), Some(1), "{name} (both /dev/full)");
        for help in ["--help", "--version"] {
            let o = run(name, &[help.to_string()], closed_pipe(), dev_full());
            assert_clean(name, help, &o);
        }
    }
}

/// A copy of the test model claiming a context of 2^22 positions (its state for the whole
/// context would be over 4 GiB), in a temporary file.
fn long_context_model(dir: &Path) -> PathBuf {
    let mut b = Builder::from_file(&std::fs::read(common::root().join(MODEL)).unwrap());
    b.set("mhmoe.context_length", Kv::U32(1 << 22));
    let path = dir.join("long-context.gguf");
    std::fs::write(&path, b.build()).unwrap();
    path
}

/// Where `analyze` writes its files in these tests.
fn analyze_out() -> String {
    temp_dir("analyze").join("out").display().to_string()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mhmoe-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs an example with its address space limited to 1 GiB (`ulimit -v`).
fn run_limited(name: &str, args: &[String]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1048576 && exec \"$0\" \"$@\"")
        .arg(common::example(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("sh runs")
}

/// The examples' default context is capped, not the model's: a 1 MB file claiming 2^22
/// positions made `generate` zero-fill 17 GB. They say which context they use and what its
/// state takes.
#[test]
fn default_contexts_are_capped_and_said() {
    let dir = temp_dir("ctx");
    let m = long_context_model(&dir).display().to_string();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (name, args) in [
        ("generate", s(&["-m", &m, "-n", "5", "-j", "1", "It is"])),
        ("perplexity", s(&["-m", &m, "--limit", "12", "-q"])),
        (
            "analyze",
            s(&["-m", &m, "--limit", "12", "-q", "-o", &analyze_out()]),
        ),
    ] {
        let o = run_limited(name, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{name}: {err}");
        assert!(err.contains("context"), "{name}: {err}");
        assert!(
            err.contains("4194304"),
            "{name} names the model's maximum: {err}"
        );
        assert!(err.contains("--ctx"), "{name} says how to change it: {err}");
    }
    // generate: the prompt plus the tokens asked for.
    let o = run_limited("generate", &s(&["-m", &m, "-n", "5", "-j", "1", "It is"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("prompt") && err.contains("+ 5 tokens"),
        "{err}"
    );
    // An explicit --ctx is used as given; one too large for memory is an error, not a crash.
    let o = run_limited(
        "generate",
        &s(&["-m", &m, "-n", "2", "--ctx", "4194304", "Hi"]),
    );
    assert_clean("generate", "--ctx 2^22", &o);
    assert_eq!(o.status.code(), Some(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tokenizer error is printed with "tokenizer:" once (it was "tokenizer: tokenizer: ...").
#[test]
fn tokenizer_errors_say_tokenizer_once() {
    let dir = temp_dir("tok");
    let mut b = Builder::from_file(&std::fs::read(common::root().join(MODEL)).unwrap());
    b.set("tokenizer.ggml.model", Kv::Str("bert".into()));
    let path = dir.join("bert.gguf");
    std::fs::write(&path, b.build()).unwrap();
    let m = path.display().to_string();
    let out = dir.join("analysis").display().to_string();
    for (name, args) in [
        ("generate", vec!["-m", &m, "-n", "2", "Hi"]),
        ("perplexity", vec!["-m", &m, "-q"]),
        ("analyze", vec!["-m", &m, "-q", "-o", &out]),
    ] {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let o = run(name, &args, Stdio::piped(), Stdio::piped());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert_eq!(err.matches("tokenizer:").count(), 1, "{name}: {err}");
        assert!(err.contains("tokenizer.ggml.model"), "{name}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
