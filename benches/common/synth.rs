//! Synthetic mhmoe models for the benchmarks, written in memory (nothing is committed).
//!
//! Weights are random Q8_0 blocks (or another type) scaled so that activations stay O(1) and the
//! logits finite; norm weights are 1 and biases 0. No tokenizer: the engine does not need one.
#![allow(dead_code)]

#[path = "../../tests/common/builder.rs"]
mod builder;

use builder::{Builder, Kv, Tensor};
use mhmoe::quant::{GgmlType, QK};

/// The hyper-parameters of a synthetic model (FORMAT.md notation).
#[derive(Debug, Clone, Copy)]
pub struct Synth {
    /// d
    pub dim: usize,
    /// L
    pub layers: usize,
    /// nh
    pub heads: usize,
    /// nkv
    pub kv_heads: usize,
    /// h
    pub moe_heads: usize,
    /// E
    pub experts: usize,
    /// k
    pub top_k: usize,
    /// F
    pub expert_ff: usize,
    /// dense FF
    pub dense_ff: usize,
    /// MoE every `moe_interval` layers
    pub moe_interval: usize,
    /// V
    pub vocab: usize,
    /// context length
    pub ctx: usize,
    /// matrix type
    pub ty: GgmlType,
}

impl Synth {
    /// The demo model's shape (tools/train.py defaults): d 128, 4 layers, h 4, 8 experts top-2.
    pub const DEMO: Synth = Synth {
        dim: 128,
        layers: 4,
        heads: 4,
        kv_heads: 4,
        moe_heads: 4,
        experts: 8,
        top_k: 2,
        expert_ff: 128,
        dense_ff: 256,
        moe_interval: 2,
        vocab: 2048,
        ctx: 256,
        ty: GgmlType::Q8_0,
    };

    /// About 100 MB of weights read per token (Q8_0): d 2048, one dense and one MoE layer.
    pub const LARGE: Synth = Synth {
        dim: 2048,
        layers: 2,
        heads: 16,
        kv_heads: 16,
        moe_heads: 4,
        experts: 8,
        top_k: 2,
        expert_ff: 1024,
        dense_ff: 5632,
        moe_interval: 2,
        vocab: 4096,
        ctx: 64,
        ty: GgmlType::Q8_0,
    };
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `rows x cols` random weights of type `ty` with standard deviation about `1 / sqrt(cols)`.
fn matrix(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let std = 1.0 / (cols as f32).sqrt();
    let n = rows * cols;
    match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 => {
            let q8 = ty == GgmlType::Q8_0;
            // Uniform q in [-128, 127] has std about 73.9; in [-8, 7] about 4.6.
            let scale = half::f16::from_f32(std / if q8 { 73.9 } else { 4.6 }).to_bits();
            let mut out = Vec::with_capacity(ty.row_bytes(cols) * rows);
            for _ in 0..n / QK {
                out.extend(scale.to_le_bytes());
                let mut bits = rng.next();
                for i in 0..(if q8 { QK } else { QK / 2 }) {
                    if i % 8 == 0 {
                        bits = rng.next();
                    }
                    let b = (bits >> (8 * (i % 8))) as u8;
                    out.push(b);
                }
            }
            out
        }
        GgmlType::F32 => (0..n)
            .flat_map(|_| (rng.unit() * std * 1.7).to_le_bytes())
            .collect(),
        GgmlType::F16 => (0..n)
            .flat_map(|_| {
                half::f16::from_f32(rng.unit() * std * 1.7)
                    .to_bits()
                    .to_le_bytes()
            })
            .collect(),
        GgmlType::BF16 => (0..n)
            .flat_map(|_| (((rng.unit() * std * 1.7).to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
    }
}

fn vector(n: usize, v: f32) -> Vec<u8> {
    (0..n).flat_map(|_| v.to_le_bytes()).collect()
}

/// Writes the GGUF bytes of a synthetic model.
pub fn build(s: &Synth, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let d = s.dim as u64;
    let hd = s.dim / s.heads;
    let kvd = (s.kv_heads * hd) as u64;
    let m = (s.dim / s.moe_heads) as u64;
    let (ff, eff, e) = (s.dense_ff as u64, s.expert_ff as u64, s.experts as u64);
    let ty = s.ty.id();
    let mut tensors = Vec::new();
    let mut mat = |name: String, dims: Vec<u64>, rng: &mut Rng| {
        let rows: u64 = dims[1..].iter().product();
        let data = matrix(rng, s.ty, rows as usize, dims[0] as usize);
        tensors.push(Tensor {
            name,
            dims,
            ty,
            data,
        });
    };
    mat(
        "token_embd.weight".into(),
        vec![d, s.vocab as u64],
        &mut rng,
    );
    for l in 0..s.layers {
        let b = |n: &str| format!("blk.{l}.{n}");
        mat(b("attn_q.weight"), vec![d, d], &mut rng);
        mat(b("attn_k.weight"), vec![d, kvd], &mut rng);
        mat(b("attn_v.weight"), vec![d, kvd], &mut rng);
        mat(b("attn_output.weight"), vec![d, d], &mut rng);
        if (l + 1) % s.moe_interval == 0 {
            if s.moe_heads > 1 {
                mat(b("ffn_head.weight"), vec![d, d], &mut rng);
                mat(b("ffn_merge.weight"), vec![d, d], &mut rng);
            }
            mat(b("ffn_gate_inp.weight"), vec![m, e], &mut rng);
            mat(b("ffn_gate_exps.weight"), vec![m, eff, e], &mut rng);
            mat(b("ffn_up_exps.weight"), vec![m, eff, e], &mut rng);
            mat(b("ffn_down_exps.weight"), vec![eff, m, e], &mut rng);
        } else {
            mat(b("ffn_gate.weight"), vec![d, ff], &mut rng);
            mat(b("ffn_up.weight"), vec![d, ff], &mut rng);
            mat(b("ffn_down.weight"), vec![ff, d], &mut rng);
        }
    }
    let f32_id = GgmlType::F32.id();
    let vec_t = |name: String, n: u64, v: f32| Tensor {
        name,
        dims: vec![n],
        ty: f32_id,
        data: vector(n as usize, v),
    };
    tensors.push(vec_t("output_norm.weight".into(), d, 1.0));
    for l in 0..s.layers {
        tensors.push(vec_t(format!("blk.{l}.attn_norm.weight"), d, 1.0));
        tensors.push(vec_t(format!("blk.{l}.ffn_norm.weight"), d, 1.0));
        if (l + 1) % s.moe_interval == 0 && s.moe_heads > 1 {
            tensors.push(vec_t(format!("blk.{l}.ffn_head.bias"), d, 0.0));
            tensors.push(vec_t(format!("blk.{l}.ffn_merge.bias"), d, 0.0));
        }
    }
    // FORMAT.md's tensor order: a layer's tensors together, layers in increasing order.
    tensors.sort_by_key(|t| match t.name.strip_prefix("blk.") {
        Some(rest) => (
            1,
            rest.split('.')
                .next()
                .and_then(|l| l.parse().ok())
                .unwrap_or(0),
        ),
        None if t.name == "token_embd.weight" => (0, 0),
        None => (2, 0),
    });
    let u = |v: usize| Kv::U32(v as u32);
    let kvs = vec![
        ("general.architecture".to_owned(), Kv::Str("mhmoe".into())),
        ("mhmoe.context_length".to_owned(), u(s.ctx)),
        ("mhmoe.embedding_length".to_owned(), u(s.dim)),
        ("mhmoe.block_count".to_owned(), u(s.layers)),
        ("mhmoe.feed_forward_length".to_owned(), u(s.dense_ff)),
        ("mhmoe.attention.head_count".to_owned(), u(s.heads)),
        ("mhmoe.attention.head_count_kv".to_owned(), u(s.kv_heads)),
        (
            "mhmoe.attention.layer_norm_rms_epsilon".to_owned(),
            Kv::F32(1e-5),
        ),
        ("mhmoe.rope.freq_base".to_owned(), Kv::F32(10000.0)),
        ("mhmoe.expert_count".to_owned(), u(s.experts)),
        ("mhmoe.expert_used_count".to_owned(), u(s.top_k)),
        (
            "mhmoe.expert_feed_forward_length".to_owned(),
            u(s.expert_ff),
        ),
        ("mhmoe.expert_weights_norm".to_owned(), Kv::Bool(false)),
        ("mhmoe.moe.head_count".to_owned(), u(s.moe_heads)),
        ("mhmoe.moe.layer_interval".to_owned(), u(s.moe_interval)),
        ("mhmoe.moe.router".to_owned(), Kv::Str("softmax".into())),
    ];
    Builder {
        version: 3,
        kvs,
        tensors,
        alignment: 32,
    }
    .build()
}
