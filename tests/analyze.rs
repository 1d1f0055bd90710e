//! `examples/analyze` on test models: every file is written, the pictures have the expected
//! size in pixels and elements, and every number they show equals what the trace gives when
//! recounted here from `trace.csv`; the trace itself equals the engine's routing run token by
//! token. Also: no MoE layer, an empty text and bad options are errors with a message.

#[allow(dead_code)]
#[path = "../examples/analyze/analysis.rs"]
mod analysis;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use analysis::{cell_label, heatmap_size, Options};
use common::builder::{Builder, Kv};
use common::root;
use mhmoe::file::{ModelBytes, StateBuffer};

/// A text of a few hundred tokens for the test models' small vocabulary: longer than their
/// context of 64, so the analysis runs in several windows (the last one shorter).
const TEXT: &str = "The little robot woke up in the morning and looked at the sea. The sea was calm, \
and the sky was clear.\nIt thought about the things it had to do: sort the shells, count the boats, \
and then rest in the shade of the old tree. \"Where are the others?\" it asked the waves.\n\
In the evening they sat together and watched the stars come out, one after the other.";

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mhmoe-analyze-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Splits one CSV line (fields may be quoted, with `""` for a quote; no newlines inside).
fn csv_split(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, ',') => out.push(std::mem::take(&mut cur)),
            (false, '"') if cur.is_empty() => quoted = true,
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (_, c) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = csv_split(lines.next().expect("a header"));
    let rows: Vec<Vec<String>> = lines.map(csv_split).collect();
    for r in &rows {
        assert_eq!(r.len(), header.len(), "{}: row {r:?}", path.display());
    }
    (header, rows)
}

/// Column `name` of `rows` parsed as `T`.
fn col<T: std::str::FromStr>(header: &[String], row: &[String], name: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    let i = header.iter().position(|h| h == name).expect(name);
    row[i]
        .parse()
        .unwrap_or_else(|e| panic!("{name} = {:?}: {e:?}", row[i]))
}

/// `(attributes, content)` of every `<tag ...>content</tag>` element of an SVG/HTML text.
fn elements<'a>(doc: &'a str, tag: &str) -> Vec<(&'a str, &'a str)> {
    let open = format!("<{tag} ");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let gt = after.find('>').unwrap();
        let attrs = &after[..gt];
        let body_start = &after[gt + 1..];
        let end = body_start.find(&close).unwrap_or(0);
        out.push((attrs, body_start[..end].trim()));
        rest = &body_start[end..];
    }
    out
}

/// Value of attribute `name` in an attribute string.
fn attr<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let i = attrs.find(&key)? + key.len();
    Some(&attrs[i..i + attrs[i..].find('"')?])
}

/// The routing entries of one token and layer as recounted from `trace.csv`.
struct Row {
    token: usize,
    window: usize,
    pos: usize,
    token_id: u32,
    layer: usize,
    sub: usize,
    rank: usize,
    expert: usize,
    gate: f32,
}

fn trace_rows(dir: &Path) -> Vec<Row> {
    let (h, rows) = read_csv(&dir.join("trace.csv"));
    assert_eq!(
        h.join(","),
        "token_index,window,pos,token_id,token,layer,sub,rank,expert,gate"
    );
    rows.iter()
        .map(|r| Row {
            token: col(&h, r, "token_index"),
            window: col(&h, r, "window"),
            pos: col(&h, r, "pos"),
            token_id: col(&h, r, "token_id"),
            layer: col(&h, r, "layer"),
            sub: col(&h, r, "sub"),
            rank: col(&h, r, "rank"),
            expert: col(&h, r, "expert"),
            gate: col(&h, r, "gate"),
        })
        .collect()
}

fn check_model(name: &str) {
    let model_path = root().join("tests/models").join(format!("{name}.gguf"));
    let dir = scratch(name);
    let text_path = dir.join("text.txt");
    std::fs::write(&text_path, TEXT).unwrap();
    let mut o = Options::new(&model_path, &text_path, dir.join("out"));
    o.batch = 7; // windows of 64 in passes of 7: partial passes at every window's end
    o.passage_start = 50;
    o.passage_tokens = 40; // crosses the first window boundary
    o.min_count = 2;
    let r = analysis::run(&o).unwrap();
    let out = dir.join("out");
    for f in [
        "trace.csv",
        "experts.csv",
        "diversity.csv",
        "heatmap.png",
        "heatmap.svg",
        "routing.html",
        "summary.json",
    ] {
        let p = out.join(f);
        assert!(
            std::fs::metadata(&p).map(|m| m.len() > 0).unwrap_or(false),
            "{f} missing"
        );
        assert!(r.files.contains(&p));
    }

    // The trace equals the engine's routing, token by token from position 0 of each window.
    let file = ModelBytes::read(&model_path).unwrap();
    let model = file.model().unwrap();
    let c = model.config();
    let ctx = c.context_length();
    let (h, k, e_n) = (c.moe_heads(), c.top_k(), c.n_experts());
    let moe: Vec<usize> = (0..c.n_layers()).filter(|&l| c.is_moe_layer(l)).collect();
    let n = r.trace.tokens.len();
    assert!(
        n > ctx,
        "the text must need more than one window ({n} tokens)"
    );
    assert_eq!(r.windows, n.div_ceil(ctx));
    let mut buf = StateBuffer::for_model(&model, ctx).unwrap();
    let mut state = buf.state(&model).unwrap();
    for (t, &id) in r.trace.tokens.iter().enumerate() {
        if t % ctx == 0 {
            state.reset();
        }
        mhmoe::forward(&model, &mut state, id).unwrap();
        for (l, &layer) in moe.iter().enumerate() {
            let (ex, g) = state.routing(&model, layer).unwrap();
            let (tx, tg) = r.trace.route(t, l);
            assert_eq!((ex, g), (tx, tg), "token {t} layer {layer}");
        }
    }

    // trace.csv holds exactly the trace.
    let rows = trace_rows(&out);
    assert_eq!(rows.len(), n * moe.len() * h * k);
    for (i, row) in rows.iter().enumerate() {
        let per = h * k;
        let (t, l, j) = (i / (moe.len() * per), i / per % moe.len(), i % per);
        assert_eq!(row.token, t);
        assert_eq!((row.window, row.pos), (t / ctx, t % ctx));
        assert_eq!(row.token_id, r.trace.tokens[t]);
        assert_eq!(row.layer, moe[l]);
        assert_eq!((row.sub, row.rank), (j / k, j % k));
        let (ex, g) = r.trace.route(t, l);
        assert_eq!(row.expert, ex[j] as usize);
        assert_eq!(row.gate.to_bits(), g[j].to_bits());
    }

    // Recount everything from trace.csv alone.
    let li = |layer: usize| moe.iter().position(|&m| m == layer).unwrap();
    let mut selections = vec![vec![0u64; e_n]; moe.len()];
    let mut reached: Vec<Vec<BTreeSet<usize>>> = vec![vec![BTreeSet::new(); e_n]; moe.len()];
    let mut per_token: BTreeMap<(usize, usize), BTreeSet<usize>> = BTreeMap::new();
    for row in &rows {
        let l = li(row.layer);
        selections[l][row.expert] += 1;
        reached[l][row.expert].insert(row.token);
        per_token
            .entry((row.token, l))
            .or_default()
            .insert(row.expert);
    }
    let share = |l: usize, e: usize| selections[l][e] as f64 / (n * h * k) as f64;
    let ratio = |l: usize, e: usize| reached[l][e].len() as f64 / n as f64;
    let activated = |l: usize, th: f64| (0..e_n).filter(|&e| ratio(l, e) > th).count();

    // experts.csv
    let (eh, erows) = read_csv(&out.join("experts.csv"));
    assert_eq!(erows.len(), moe.len() * e_n);
    for row in &erows {
        let l = li(col(&eh, row, "layer"));
        let e: usize = col(&eh, row, "expert");
        assert_eq!(col::<u64>(&eh, row, "selections"), selections[l][e]);
        assert_eq!(
            col::<usize>(&eh, row, "tokens_reached"),
            reached[l][e].len()
        );
        assert!((col::<f64>(&eh, row, "share") - share(l, e)).abs() < 1e-6);
        assert!((col::<f64>(&eh, row, "ratio") - ratio(l, e)).abs() < 1e-6);
        assert_eq!(
            col::<u8>(&eh, row, "activated"),
            u8::from(ratio(l, e) > o.threshold)
        );
    }

    // summary.json
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["tokens"], n);
    assert_eq!(s["windows"], n.div_ceil(ctx));
    assert_eq!(
        (s["h"].as_u64(), s["k"].as_u64()),
        (Some(h as u64), Some(k as u64))
    );
    let total: usize = (0..moe.len()).map(|l| activated(l, o.threshold)).sum();
    let overall = total as f64 / (moe.len() * e_n) as f64;
    assert!((s["activation"].as_f64().unwrap() - overall).abs() < 1e-12);
    for (l, sl) in s["layers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(sl["layer"], moe[l]);
        assert_eq!(sl["activated"], activated(l, o.threshold));
        let ept = per_token
            .iter()
            .filter(|((_, ll), _)| *ll == l)
            .map(|(_, set)| set.len())
            .sum::<usize>() as f64
            / n as f64;
        assert!((sl["experts_per_token"].as_f64().unwrap() - ept).abs() < 1e-12);
        let eff = (0..e_n)
            .map(|e| share(l, e))
            .filter(|&p| p > 0.0)
            .map(|p| -p * p.ln())
            .sum::<f64>()
            .exp();
        assert!((sl["effective_experts"].as_f64().unwrap() - eff).abs() < 1e-9);
        for (e, v) in sl["share"].as_array().unwrap().iter().enumerate() {
            assert!((v.as_f64().unwrap() - share(l, e)).abs() < 1e-12);
        }
        for sw in sl["activation_sweep"].as_array().unwrap() {
            let th = sw["threshold"].as_f64().unwrap();
            let want = activated(l, th) as f64 / e_n as f64;
            assert!((sw["activation"].as_f64().unwrap() - want).abs() < 1e-12);
        }
    }

    // heatmap.png: the pixel size; heatmap.svg: the same size, one label per cell, in order,
    // showing the trace's shares.
    let (w, hh) = heatmap_size(e_n, moe.len());
    let png = std::fs::read(out.join("heatmap.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    let pw = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let ph = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((pw, ph), (w, hh));
    assert_eq!(s["heatmap_size"], serde_json::json!([w, hh]));
    let svg = std::fs::read_to_string(out.join("heatmap.svg")).unwrap();
    let (svg_attrs, _) = elements(&svg, "svg")[0];
    assert_eq!(attr(svg_attrs, "width"), Some(w.to_string().as_str()));
    assert_eq!(attr(svg_attrs, "height"), Some(hh.to_string().as_str()));
    let labels: Vec<&str> = elements(&svg, "text")
        .into_iter()
        .filter(|(a, _)| attr(a, "font-family") == Some("monospace"))
        .map(|(_, body)| body)
        .collect();
    let want: Vec<String> = (0..moe.len())
        .flat_map(|l| (0..e_n).map(move |e| (l, e)))
        .map(|(l, e)| cell_label(share(l, e)))
        .collect();
    assert_eq!(labels, want);
    for (l, &layer) in moe.iter().enumerate() {
        let row_text = format!(
            "{} / {e_n} activated ({:.1}%)",
            activated(l, o.threshold),
            100.0 * activated(l, o.threshold) as f64 / e_n as f64
        );
        assert!(svg.contains(&row_text), "layer {layer}: {row_text}");
    }

    // routing.html: one box per passage token, h * k stripes per token and layer, each with
    // the trace's expert and gate; self-contained.
    let html = std::fs::read_to_string(out.join("routing.html")).unwrap();
    let passage = 50..90;
    assert_eq!(s["passage"], serde_json::json!([50, 90]));
    assert_eq!(html.matches("<div class=\"tok\"").count(), passage.len());
    assert_eq!(
        html.matches("<div class=\"lay\"").count(),
        passage.len() * moe.len()
    );
    assert_eq!(
        html.matches("<span class=\"sub\"").count(),
        passage.len() * moe.len() * h
    );
    let stripes = elements(&html, "i");
    assert_eq!(stripes.len(), passage.len() * moe.len() * h * k);
    let want: Vec<(String, String)> = rows
        .iter()
        .filter(|row| passage.contains(&row.token))
        .map(|row| (row.expert.to_string(), format!("{:.4}", row.gate)))
        .collect();
    let got: Vec<(String, String)> = stripes
        .iter()
        .map(|(a, _)| {
            (
                attr(a, "data-e").unwrap().to_owned(),
                attr(a, "data-g").unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(got, want);
    for bad in ["<script", "src=", "href=", "url(", "@import"] {
        assert!(
            !html.contains(bad),
            "routing.html is not self-contained: {bad}"
        );
    }
    assert_eq!(
        html.matches("<span style=\"background:").count(),
        e_n,
        "legend"
    );

    // diversity.csv: per token id, mean over occurrences of the mean over layers of distinct
    // experts.
    let mut div: BTreeMap<u32, (usize, f64)> = BTreeMap::new();
    for t in 0..n {
        let distinct: usize = (0..moe.len()).map(|l| per_token[&(t, l)].len()).sum();
        let d = div.entry(r.trace.tokens[t]).or_default();
        d.0 += 1;
        d.1 += distinct as f64 / moe.len() as f64;
    }
    let (dh, drows) = read_csv(&out.join("diversity.csv"));
    assert_eq!(drows.len(), div.len());
    for row in &drows {
        let id: u32 = col(&dh, row, "token_id");
        let (count, sum) = div[&id];
        assert_eq!(col::<usize>(&dh, row, "count"), count);
        assert!((col::<f64>(&dh, row, "mean_distinct") - sum / count as f64).abs() < 1e-4);
        let bytes = {
            let tb = mhmoe::tokenizer::TokenizerBuf::new(model.gguf()).unwrap();
            tb.tokenizer().decode_to_bytes(&[id]).unwrap()
        };
        assert_eq!(row[1], analysis::display_token(&bytes));
    }
    if h == 1 {
        // An SMoE token reaches exactly k experts in every layer.
        assert!(div
            .values()
            .all(|&(c, s)| (s / c as f64 - k as f64).abs() < 1e-12));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mhmoe_model_h2_k2() {
    check_model("d_q8_0_h2_k2_gqa");
}

#[test]
fn smoe_model_every_layer_moe() {
    check_model("f_q8_0_h1_k1_allmoe");
}

#[test]
fn k3_untied_model() {
    check_model("h_mixed_h2_k3");
}

/// The d model with its MoE layer replaced by a copy of layer 0's dense FFN.
fn dense_only_model() -> Vec<u8> {
    let bytes = std::fs::read(root().join("tests/models/d_q8_0_h2_k2_gqa.gguf")).unwrap();
    let mut b = Builder::from_file(&bytes);
    b.set("mhmoe.moe.layer_interval", Kv::U32(3));
    let dense: Vec<_> = ["ffn_gate", "ffn_up", "ffn_down"]
        .iter()
        .map(|n| {
            let mut t = b
                .tensors
                .iter()
                .find(|t| t.name == format!("blk.0.{n}.weight"))
                .unwrap()
                .clone();
            t.name = format!("blk.1.{n}.weight");
            t
        })
        .collect();
    let mut tensors = Vec::new();
    let mut inserted = false;
    for t in b.tensors.drain(..) {
        let moe = t.name.starts_with("blk.1.ffn_") && t.name != "blk.1.ffn_norm.weight";
        if moe {
            if !inserted {
                tensors.extend(dense.iter().cloned());
                inserted = true;
            }
        } else {
            tensors.push(t);
        }
    }
    assert!(inserted);
    b.tensors = tensors;
    b.build()
}

#[test]
fn errors_are_messages() {
    let dir = scratch("errors");
    let text = dir.join("text.txt");
    std::fs::write(&text, TEXT).unwrap();
    let model = root().join("tests/models/d_q8_0_h2_k2_gqa.gguf");

    // A model without MoE layers loads and runs, but has no routing.
    let dense = dir.join("dense.gguf");
    std::fs::write(&dense, dense_only_model()).unwrap();
    let file = ModelBytes::read(&dense).unwrap();
    let m = file.model().expect("the dense-only model is valid");
    assert!((0..m.config().n_layers()).all(|l| !m.config().is_moe_layer(l)));
    let e = analysis::run(&Options::new(&dense, &text, dir.join("o1"))).unwrap_err();
    assert!(e.contains("has no MoE layer"), "{e}");
    assert!(!dir.join("o1").exists(), "nothing written on error");

    // An empty text.
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let e = analysis::run(&Options::new(&model, &empty, dir.join("o2"))).unwrap_err();
    assert!(e.contains("is empty (0 tokens)"), "{e}");

    // A passage past the end, a threshold out of range, a context above the model's, a
    // missing file.
    let mut o = Options::new(&model, &text, dir.join("o3"));
    o.passage_start = 100_000;
    let e = analysis::run(&o).unwrap_err();
    assert!(e.contains("the passage starts at token 100000"), "{e}");
    let mut o = Options::new(&model, &text, dir.join("o4"));
    o.threshold = 1.0;
    assert!(analysis::run(&o).unwrap_err().contains("threshold"));
    let mut o = Options::new(&model, &text, dir.join("o5"));
    o.ctx = Some(65);
    assert!(analysis::run(&o).unwrap_err().contains("context 65"));
    let o = Options::new(dir.join("none.gguf"), &text, dir.join("o6"));
    assert!(analysis::run(&o).unwrap_err().contains("cannot read model"));

    // A single token: one window, one passage token.
    let one = dir.join("one.txt");
    std::fs::write(&one, "a").unwrap();
    let r = analysis::run(&Options::new(&model, &one, dir.join("o7"))).unwrap();
    assert_eq!(
        (r.trace.tokens.len(), r.windows, r.passage.clone()),
        (1, 1, 0..1)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
