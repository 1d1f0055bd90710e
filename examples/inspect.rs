//! Lists any GGUF file: its metadata, its tensors (type, shape, bytes) and whether this engine
//! can run it, and if not, why.
//!
//! ```text
//! cargo run --release --example inspect -- models/mhmoe-demo-q8_0.gguf
//! cargo run --release --example inspect -- --tsv some-model.gguf   # one line per entry
//! ```
//!
//! The file is memory-mapped and only its header and tensor table are read, so listing a
//! multi-gigabyte model is quick. `--tsv` prints a tab-separated listing meant for comparison
//! with other readers (`tools/gguf_listing.py` prints the same from the `gguf` Python package):
//! floats as their bit patterns, arrays as their length and a CRC-32 of their elements.

#[macro_use]
mod common;

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mhmoe::file::ModelBytes;
use mhmoe::gguf::{Array, Gguf, TensorInfo, Value, ValueType};
use mhmoe::{Model, State, StateOptions};

/// List a GGUF file's metadata and tensors, and say whether this engine can run it.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The GGUF file.
    file: PathBuf,
    /// A tab-separated listing of every entry (for comparison with other readers).
    #[arg(long)]
    tsv: bool,
    /// Array elements shown in the readable listing.
    #[arg(long, default_value_t = 4)]
    elements: usize,
}

fn main() -> ExitCode {
    common::exit(run(Args::parse()))
}

fn run(args: Args) -> Result<(), String> {
    // SAFETY: the file is only read while the map lives; if another process changes it
    // meanwhile, the listing may be wrong, and the parser's checks still hold for the bytes read.
    let file = unsafe { ModelBytes::map(&args.file) }
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let bytes = file.bytes();
    let g = Gguf::parse(bytes).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    if args.tsv {
        tsv(&mut out, &g)?;
    } else {
        readable(&mut out, &g, &args)?;
    }
    out.flush().map_err(common::write_failed("stdout"))
}

/// gguf-py's name of a metadata value type.
fn py_type(t: ValueType) -> &'static str {
    match t {
        ValueType::U8 => "UINT8",
        ValueType::I8 => "INT8",
        ValueType::U16 => "UINT16",
        ValueType::I16 => "INT16",
        ValueType::U32 => "UINT32",
        ValueType::I32 => "INT32",
        ValueType::F32 => "FLOAT32",
        ValueType::Bool => "BOOL",
        ValueType::String => "STRING",
        ValueType::Array => "ARRAY",
        ValueType::U64 => "UINT64",
        ValueType::I64 => "INT64",
        ValueType::F64 => "FLOAT64",
    }
}

/// A short name of a metadata value type, for the readable listing.
fn short_type(t: ValueType) -> &'static str {
    match t {
        ValueType::U8 => "u8",
        ValueType::I8 => "i8",
        ValueType::U16 => "u16",
        ValueType::I16 => "i16",
        ValueType::U32 => "u32",
        ValueType::I32 => "i32",
        ValueType::F32 => "f32",
        ValueType::Bool => "bool",
        ValueType::String => "string",
        ValueType::Array => "array",
        ValueType::U64 => "u64",
        ValueType::I64 => "i64",
        ValueType::F64 => "f64",
    }
}

fn value_type(v: &Value<'_>) -> ValueType {
    match v {
        Value::U8(_) => ValueType::U8,
        Value::I8(_) => ValueType::I8,
        Value::U16(_) => ValueType::U16,
        Value::I16(_) => ValueType::I16,
        Value::U32(_) => ValueType::U32,
        Value::I32(_) => ValueType::I32,
        Value::F32(_) => ValueType::F32,
        Value::Bool(_) => ValueType::Bool,
        Value::Str(_) => ValueType::String,
        Value::Array(_) => ValueType::Array,
        Value::U64(_) => ValueType::U64,
        Value::I64(_) => ValueType::I64,
        Value::F64(_) => ValueType::F64,
    }
}

/// `s` with backslash, tab, newline, carriage return and other control characters escaped
/// (`\\`, `\t`, `\n`, `\r`, `\xNN`; the same rule as tools/gguf_listing.py).
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\t' => o.push_str("\\t"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(o, "\\x{:02x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

/// A scalar as the TSV listing writes it: integers in decimal, floats as their bits, strings
/// escaped.
fn tsv_scalar(v: &Value<'_>) -> String {
    match *v {
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => format!("0x{:08x}", x.to_bits()),
        Value::F64(x) => format!("0x{:016x}", x.to_bits()),
        Value::Bool(b) => b.to_string(),
        Value::Str(s) => escape(s),
        Value::Array(_) => "nested".into(),
    }
}

/// An element's bytes as the file stores them (strings without their length).
fn raw_bytes(v: &Value<'_>, out: &mut Vec<u8>) {
    match *v {
        Value::U8(x) => out.push(x),
        Value::I8(x) => out.extend(x.to_le_bytes()),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Bool(b) => out.push(b as u8),
        Value::Str(s) => out.extend(s.as_bytes()),
        Value::Array(_) => {}
    }
}

/// CRC-32 (IEEE, as zlib's `crc32`) of every element as (length of its bytes as u64 LE, its
/// bytes), one after the other.
fn digest(a: &Array<'_>) -> u32 {
    let table: [u32; 256] = core::array::from_fn(|i| {
        (0..8).fold(i as u32, |c, _| {
            if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            }
        })
    });
    let mut crc = !0u32;
    let mut buf = Vec::new();
    for e in a.iter() {
        buf.clear();
        raw_bytes(&e, &mut buf);
        for b in (buf.len() as u64).to_le_bytes().iter().chain(&buf) {
            crc = table[((crc ^ u32::from(*b)) & 0xFF) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

fn shape(t: &TensorInfo<'_>, sep: &str) -> String {
    let dims: Vec<String> = t.dims[..t.n_dims].iter().map(u64::to_string).collect();
    dims.join(sep)
}

/// One line per header field, metadata entry and tensor, tab-separated:
/// `gguf NAME VALUE`, `kv KEY TYPE VALUE` (arrays: `ARRAY[ELEMENT TYPE]`, their length and
/// a CRC-32 of their elements), `tensor NAME TYPE DIMS BYTES ABSOLUTE-OFFSET`.
fn tsv(out: &mut impl Write, g: &Gguf<'_>) -> Result<(), String> {
    outln!(out, "gguf\tversion\t{}", g.version())?;
    outln!(out, "gguf\ttensor_count\t{}", g.tensor_count())?;
    outln!(out, "gguf\tkv_count\t{}", g.metadata_len())?;
    outln!(out, "gguf\talignment\t{}", g.alignment())?;
    outln!(out, "gguf\tdata_offset\t{}", g.data_offset())?;
    for (key, v) in g.metadata() {
        match v {
            Value::Array(a) => outln!(
                out,
                "kv\t{}\tARRAY[{}]\tlen={}\tcrc32={:08x}",
                escape(key),
                py_type(a.elem_type()),
                a.len(),
                digest(&a)
            )?,
            v => outln!(
                out,
                "kv\t{}\t{}\t{}",
                escape(key),
                py_type(value_type(&v)),
                tsv_scalar(&v)
            )?,
        }
    }
    for t in g.tensors() {
        outln!(
            out,
            "tensor\t{}\t{}\t{}\t{}\t{}",
            escape(t.name),
            t.ty.name(),
            shape(&t, ","),
            t.data.len(),
            g.data_offset() as u64 + t.offset
        )?;
    }
    Ok(())
}

/// A value for people: strings quoted and cut at 60 characters, floats in their shortest form,
/// arrays as `[type; len]` and their first `n` elements.
fn readable_value(v: &Value<'_>, n: usize) -> String {
    match *v {
        Value::Str(s) => {
            let cut: String = s.chars().take(60).collect();
            let more = if cut.len() < s.len() { "..." } else { "" };
            format!("\"{}\"{more}", escape(&cut))
        }
        Value::F32(x) => format!("{x:e}"),
        Value::F64(x) => format!("{x:e}"),
        Value::Array(a) => {
            let shown: Vec<String> = a.iter().take(n).map(|e| readable_value(&e, n)).collect();
            let more = if a.len() > n { ", ..." } else { "" };
            format!("[{}{more}]", shown.join(", "))
        }
        ref v => tsv_scalar(v),
    }
}

fn type_label(v: &Value<'_>) -> String {
    match v {
        Value::Array(a) => format!("[{}; {}]", short_type(a.elem_type()), a.len()),
        v => short_type(value_type(v)).to_string(),
    }
}

fn readable(out: &mut impl Write, g: &Gguf<'_>, args: &Args) -> Result<(), String> {
    outln!(
        out,
        "{}: GGUF version {}, {} bytes, {} metadata entries, {} tensors, alignment {}, tensor \
         data from byte {}",
        args.file.display(),
        g.version(),
        g.bytes().len(),
        g.metadata_len(),
        g.tensor_count(),
        g.alignment(),
        g.data_offset()
    )?;
    outln!(out, "\nmetadata")?;
    let kw = g.metadata().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, v) in g.metadata() {
        outln!(
            out,
            "  {:<kw$}  {:<18}  {}",
            escape(key),
            type_label(&v),
            readable_value(&v, args.elements)
        )?;
    }
    outln!(out, "\ntensors")?;
    let nw = g.tensors().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    outln!(
        out,
        "  {:<nw$}  {:<7}  {:<22}  {:>13}  {:>13}",
        "name",
        "type",
        "shape (ne0 x ne1 ...)",
        "bytes",
        "offset"
    )?;
    for t in g.tensors() {
        outln!(
            out,
            "  {:<nw$}  {:<7}  {:<22}  {:>13}  {:>13}",
            escape(t.name),
            t.ty.name(),
            shape(&t, " x "),
            t.data.len(),
            g.data_offset() as u64 + t.offset
        )?;
    }
    let counts = g.type_counts();
    outln!(out, "\ntypes")?;
    for ty in counts.types().iter() {
        let first = counts
            .first(ty)
            .and_then(|i| g.tensors().nth(i))
            .map_or(String::new(), |t| t.name.to_string());
        let note = if ty.is_computed() {
            String::new()
        } else {
            format!("  not computed by this engine (first: {first})")
        };
        outln!(
            out,
            "  {:<7}  {:>5} tensors  {:>13} bytes{note}",
            ty.name(),
            counts.count(ty),
            counts.bytes(ty)
        )?;
    }
    outln!(out)?;
    match Model::from_gguf(*g) {
        Ok(m) => {
            let c = m.config();
            let ctx = c.context_length();
            let state = State::bytes_needed(&m, StateOptions::new(ctx))
                .map_or_else(|e| e.to_string(), |b| format!("{b} bytes"));
            outln!(
                out,
                "this engine can run the file: mhmoe, {} layers ({} MoE), d = {}, {} heads ({} \
                 KV), E = {}, k = {}, h = {}, vocabulary {}, context {ctx} (state for the whole \
                 context: {state})",
                c.n_layers(),
                (0..c.n_layers()).filter(|&l| c.is_moe_layer(l)).count(),
                c.dim(),
                c.n_heads(),
                c.n_kv_heads(),
                c.n_experts(),
                c.top_k(),
                c.moe_heads(),
                c.vocab_size()
            )?;
        }
        Err(e) => outln!(out, "{e}")?,
    }
    Ok(())
}
