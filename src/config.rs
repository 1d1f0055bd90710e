//! Model hyper-parameters read from the GGUF metadata and checked for consistency.

use crate::error::{name, truncated, Error, Result};
use crate::gguf::{Gguf, Value};

/// How a sub-token picks its experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterKind {
    /// `logits = W s`, softmax over all experts.
    Softmax,
    /// X-MoE: `logits = (W_red s) . normalize_rows(W_e)`, softmax over all experts.
    XMoe,
}

/// The hyper-parameters of an `mhmoe` model (see FORMAT.md for the keys), read from a GGUF file
/// and checked by [`Config::from_gguf`]; read them through the accessors of the same names.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Longest context the model was trained for.
    pub(crate) context_length: usize,
    /// Model width `d`.
    pub(crate) dim: usize,
    /// Number of layers.
    pub(crate) n_layers: usize,
    /// Hidden width of the dense SwiGLU FFN.
    pub(crate) ff_dim: usize,
    /// Attention heads.
    pub(crate) n_heads: usize,
    /// Key/value heads (grouped-query attention when smaller than `n_heads`).
    pub(crate) n_kv_heads: usize,
    /// Width of one attention head (`dim / n_heads`).
    pub(crate) head_dim: usize,
    /// RMSNorm epsilon.
    pub(crate) norm_eps: f32,
    /// RoPE base.
    pub(crate) rope_base: f32,
    /// Experts per MoE layer `E`.
    pub(crate) n_experts: usize,
    /// Experts used per sub-token `k`.
    pub(crate) top_k: usize,
    /// Expert hidden width `F`.
    pub(crate) expert_ff_dim: usize,
    /// Whether top-k gates are renormalized to sum to 1.
    pub(crate) renormalize_gates: bool,
    /// Shared expert hidden width (0 = none).
    pub(crate) shared_ff_dim: usize,
    /// MH-MoE heads `h` (1 = plain SMoE).
    pub(crate) moe_heads: usize,
    /// Layer `i` is MoE iff `(i + 1) % moe_interval == 0`.
    pub(crate) moe_interval: usize,
    /// Router kind.
    pub(crate) router: RouterKind,
    /// Vocabulary size (rows of the token embedding).
    pub(crate) vocab_size: usize,
}

/// Read-only accessors, one per field, each documented like its field.
macro_rules! getters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty,)*) => {
        impl Config {
            $(
                $(#[$doc])*
                pub const fn $field(&self) -> $ty {
                    self.$field
                }
            )*
        }
    };
}

getters! {
    /// Longest context the model was trained for.
    context_length: usize,
    /// Model width `d`.
    dim: usize,
    /// Number of layers.
    n_layers: usize,
    /// Hidden width of the dense SwiGLU FFN.
    ff_dim: usize,
    /// Attention heads.
    n_heads: usize,
    /// Key/value heads (grouped-query attention when smaller than `n_heads`).
    n_kv_heads: usize,
    /// Width of one attention head (`dim / n_heads`).
    head_dim: usize,
    /// RMSNorm epsilon.
    norm_eps: f32,
    /// RoPE base.
    rope_base: f32,
    /// Experts per MoE layer `E`.
    n_experts: usize,
    /// Experts used per sub-token `k`.
    top_k: usize,
    /// Expert hidden width `F`.
    expert_ff_dim: usize,
    /// Whether top-k gates are renormalized to sum to 1.
    renormalize_gates: bool,
    /// Shared expert hidden width (0 = none).
    shared_ff_dim: usize,
    /// MH-MoE heads `h` (1 = plain SMoE).
    moe_heads: usize,
    /// Layer `i` is MoE iff `(i + 1) % moe_interval == 0`.
    moe_interval: usize,
    /// Router kind.
    router: RouterKind,
    /// Vocabulary size (rows of the token embedding).
    vocab_size: usize,
}

/// Largest value accepted for any single dimension: keeps every size computation far from
/// overflow on 32-bit targets while allowing any real model.
const MAX_DIM: usize = 1 << 24;

fn get<'a>(file: &Gguf<'a>, key: &str) -> Result<Value<'a>> {
    file.get(key)
        .ok_or_else(|| Error::MissingKey { key: name(key) })
}

fn get_usize(file: &Gguf<'_>, key: &str) -> Result<usize> {
    let v = get(file, key)?;
    v.as_u64()
        .and_then(|v| usize::try_from(v).ok())
        .filter(|&v| v <= MAX_DIM)
        .ok_or_else(|| Error::BadKey {
            key: name(key),
            expected: "an unsigned integer up to 2^24",
        })
}

fn get_usize_or(file: &Gguf<'_>, key: &str, default: usize) -> Result<usize> {
    match file.get(key) {
        None => Ok(default),
        Some(_) => get_usize(file, key),
    }
}

fn get_f32(file: &Gguf<'_>, key: &str) -> Result<f32> {
    get(file, key)?
        .as_f32()
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| Error::BadKey {
            key: name(key),
            expected: "a positive finite f32",
        })
}

fn get_bool(file: &Gguf<'_>, key: &str) -> Result<bool> {
    get(file, key)?.as_bool().ok_or_else(|| Error::BadKey {
        key: name(key),
        expected: "a bool",
    })
}

fn get_str<'a>(file: &Gguf<'a>, key: &str) -> Result<&'a str> {
    get(file, key)?.as_str().ok_or_else(|| Error::BadKey {
        key: name(key),
        expected: "a string",
    })
}

fn invalid(reason: &'static str) -> Error {
    Error::InvalidConfig { reason }
}

impl Config {
    /// Reads and validates the configuration. `vocab_size` comes from the token embedding's
    /// second dimension (`Model::from_gguf` checks that the tokenizer has as many tokens).
    pub fn from_gguf(file: &Gguf<'_>) -> Result<Self> {
        let architecture = get_str(file, "general.architecture")?;
        if architecture != "mhmoe" {
            return Err(Error::WrongArchitecture {
                found: truncated(architecture),
            });
        }
        let router = match get_str(file, "mhmoe.moe.router")? {
            "softmax" => RouterKind::Softmax,
            "xmoe" => RouterKind::XMoe,
            _ => {
                return Err(Error::BadKey {
                    key: name("mhmoe.moe.router"),
                    expected: "\"softmax\" or \"xmoe\"",
                })
            }
        };
        let vocab_size = file
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::MissingTensor {
                tensor: name("token_embd.weight"),
            })?
            .dims[1];
        let dim = get_usize(file, "mhmoe.embedding_length")?;
        let n_heads = get_usize(file, "mhmoe.attention.head_count")?;
        let cfg = Config {
            context_length: get_usize(file, "mhmoe.context_length")?,
            dim,
            n_layers: get_usize(file, "mhmoe.block_count")?,
            ff_dim: get_usize(file, "mhmoe.feed_forward_length")?,
            n_heads,
            n_kv_heads: get_usize(file, "mhmoe.attention.head_count_kv")?,
            head_dim: dim.checked_div(n_heads).unwrap_or(0),
            norm_eps: get_f32(file, "mhmoe.attention.layer_norm_rms_epsilon")?,
            rope_base: get_f32(file, "mhmoe.rope.freq_base")?,
            n_experts: get_usize(file, "mhmoe.expert_count")?,
            top_k: get_usize(file, "mhmoe.expert_used_count")?,
            expert_ff_dim: get_usize(file, "mhmoe.expert_feed_forward_length")?,
            renormalize_gates: get_bool(file, "mhmoe.expert_weights_norm")?,
            shared_ff_dim: get_usize_or(file, "mhmoe.expert_shared_feed_forward_length", 0)?,
            moe_heads: get_usize(file, "mhmoe.moe.head_count")?,
            moe_interval: get_usize(file, "mhmoe.moe.layer_interval")?,
            router,
            vocab_size: usize::try_from(vocab_size)
                .ok()
                .filter(|&v| v <= MAX_DIM)
                .ok_or(invalid("vocabulary larger than 2^24"))?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the hyper-parameters are consistent.
    fn validate(&self) -> Result<()> {
        let c = self;
        let checks: [(bool, &'static str); 16] = [
            (c.context_length >= 1, "context_length must be at least 1"),
            (c.dim >= 1, "embedding_length must be at least 1"),
            (c.n_layers >= 1, "block_count must be at least 1"),
            (c.n_heads >= 1, "attention.head_count must be at least 1"),
            (
                c.dim.is_multiple_of(c.n_heads.max(1)),
                "embedding_length must be divisible by attention.head_count",
            ),
            (
                c.head_dim.is_multiple_of(2),
                "attention head width must be even (RoPE rotates pairs)",
            ),
            (
                c.n_kv_heads >= 1,
                "attention.head_count_kv must be at least 1",
            ),
            (
                c.n_heads.is_multiple_of(c.n_kv_heads.max(1)),
                "attention.head_count must be a multiple of head_count_kv",
            ),
            (c.n_experts >= 1, "expert_count must be at least 1"),
            (
                c.top_k >= 1 && c.top_k <= c.n_experts,
                "expert_used_count must be in 1..=expert_count",
            ),
            (
                c.expert_ff_dim >= 1,
                "expert_feed_forward_length must be at least 1",
            ),
            (c.moe_heads >= 1, "moe.head_count must be at least 1"),
            (
                c.dim.is_multiple_of(c.moe_heads.max(1)),
                "embedding_length must be divisible by moe.head_count",
            ),
            (c.moe_interval >= 1, "moe.layer_interval must be at least 1"),
            (
                // Every layer is MoE exactly when the interval is 1 (layer 0 is MoE iff
                // 1 % interval == 0); O(1), whatever the layer count.
                c.ff_dim >= 1 || c.moe_interval == 1,
                "feed_forward_length must be at least 1 when a layer is dense",
            ),
            (c.vocab_size >= 1, "vocabulary must not be empty"),
        ];
        for (ok, reason) in checks {
            if !ok {
                return Err(invalid(reason));
            }
        }
        Ok(())
    }

    /// True if layer `i` is an MH-MoE layer.
    pub const fn is_moe_layer(&self, i: usize) -> bool {
        // `(i + 1) % interval == 0` without the `+ 1` (which overflows for `usize::MAX`).
        self.moe_interval != 0 && i % self.moe_interval == self.moe_interval - 1
    }

    /// Sub-token width `m = d / h`.
    pub const fn sub_dim(&self) -> usize {
        self.dim / self.moe_heads
    }

    /// Width of the key/value vectors of one position.
    pub const fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
