//! Run-time state (activations, KV cache, scratch) carved from one caller-provided buffer.
//!
//! [`State::bytes_needed`] gives the exact size for a configuration and a context length; the
//! same layout code computes the size and carves the buffer, so they cannot disagree. The buffer
//! must start at a multiple of [`State::ALIGN`] bytes ([`AlignedBuffer`] guarantees that for
//! statics); every sub-buffer then starts 16-byte aligned as SIMD kernels like.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::quant::{GgmlType, QK};

/// `match` on an `Option` in a `const fn` (where `?` is not allowed).
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return None,
        }
    };
}

/// The larger of two sizes, in a `const fn`.
const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// How the KV cache stores keys and values ([`StateOptions::kv`]).
///
/// Every choice gives the same bits on every instruction set. `F32` is exact (the default); the
/// others trade a little accuracy for memory (README, "KV cache"): per position and layer, keys
/// plus values take `2 * kv_dim` times 4 bytes (F32), 2 (F16), 34/32 (Q8_0) or 18/32 (Q4_0).
/// Keys and values are rounded (F16, ties to even) or quantized (ggml's Q8_0 and Q4_0 rules,
/// [`crate::quant::quantize_q8_0`], [`crate::quant::quantize_q4_0`]) when they are stored;
/// attention then reads them as a matrix of that type: the scores are the matrix-vector
/// product of the keys with the query (quantized to Q8_0 for Q8_0 and Q4_0 keys, as for any
/// weight matrix), and the values are widened block by block into the weighted sum, whose
/// order does not change. Q8_0 and Q4_0 need a head width that is a multiple of 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    /// 32-bit floats, exact.
    #[default]
    F32,
    /// IEEE half floats.
    F16,
    /// ggml's Q8_0 blocks (32 int8 values and an f16 scale).
    Q8_0,
    /// ggml's Q4_0 blocks (32 4-bit values and an f16 scale).
    Q4_0,
}

impl KvType {
    /// Every KV type.
    pub const ALL: [KvType; 4] = [KvType::F32, KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// The storage type, as a ggml type.
    pub const fn ggml_type(self) -> GgmlType {
        match self {
            KvType::F32 => GgmlType::F32,
            KvType::F16 => GgmlType::F16,
            KvType::Q8_0 => GgmlType::Q8_0,
            KvType::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// Its name (`"f32"`, `"f16"`, `"q8_0"`, `"q4_0"`).
    pub const fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// The type called `name` (as [`KvType::name`] spells it, any case).
    pub fn from_name(name: &str) -> Option<KvType> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Bytes of one stored head vector of `head_dim` values (`None` if a block type does not
    /// divide it).
    pub const fn row_bytes(self, head_dim: usize) -> Option<usize> {
        match self {
            KvType::F32 => head_dim.checked_mul(4),
            KvType::F16 => head_dim.checked_mul(2),
            KvType::Q8_0 | KvType::Q4_0 if !head_dim.is_multiple_of(QK) => None,
            KvType::Q8_0 => (head_dim / QK).checked_mul(crate::quant::Q8_0_BLOCK_BYTES),
            KvType::Q4_0 => (head_dim / QK).checked_mul(crate::quant::Q4_0_BLOCK_BYTES),
        }
    }
}

/// What a [`State`] is made for besides the model: its context length, how many tokens one
/// forward pass may take, and how the KV cache is stored.
///
/// A context length alone converts into options (`State::new(&model, 64, buf)`); otherwise build
/// them: `StateOptions::new(256).batch(16).kv(KvType::Q8_0)`. All `const`, so a firmware can size
/// its buffer at compile time ([`State::bytes_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateOptions {
    /// Context length: positions the KV cache holds (1 up to the model's).
    pub ctx: usize,
    /// Most tokens one forward pass takes (default 1).
    pub batch: usize,
    /// KV cache storage (default [`KvType::F32`]).
    pub kv: KvType,
}

impl StateOptions {
    /// A context of `ctx` positions, batch capacity 1, f32 KV cache.
    pub const fn new(ctx: usize) -> Self {
        StateOptions {
            ctx,
            batch: 1,
            kv: KvType::F32,
        }
    }

    /// The same with a batch capacity of `batch` tokens per forward pass.
    pub const fn batch(self, batch: usize) -> Self {
        StateOptions { batch, ..self }
    }

    /// The same with the KV cache stored as `kv`.
    pub const fn kv(self, kv: KvType) -> Self {
        StateOptions { kv, ..self }
    }
}

impl From<usize> for StateOptions {
    fn from(ctx: usize) -> Self {
        StateOptions::new(ctx)
    }
}

/// The hyper-parameters that size a [`State`]: what [`State::bytes_for`] needs to compute a
/// buffer size at compile time. [`crate::Model::shape`] gives a loaded model's; a firmware that
/// knows its model can write it as a `const` (the build helper prints it), and `State::new`
/// checks the real model against the buffer anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Model width `d`.
    pub dim: usize,
    /// Layers.
    pub n_layers: usize,
    /// Dense FFN hidden width (0 if every layer is MoE).
    pub ff_dim: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Experts per MoE layer.
    pub n_experts: usize,
    /// Experts per sub-token.
    pub top_k: usize,
    /// Expert hidden width.
    pub expert_ff_dim: usize,
    /// Shared expert hidden width (0 = none).
    pub shared_ff_dim: usize,
    /// MH-MoE heads `h`.
    pub moe_heads: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest context of the model.
    pub context_length: usize,
    /// Widest X-MoE router reduction (0 for softmax routers).
    pub router_red: usize,
}

impl Shape {
    /// The shape of configuration `c` with X-MoE reduction width `router_red`.
    pub(crate) const fn of(c: &Config, router_red: usize) -> Shape {
        Shape {
            dim: c.dim,
            n_layers: c.n_layers,
            ff_dim: c.ff_dim,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            n_experts: c.n_experts,
            top_k: c.top_k,
            expert_ff_dim: c.expert_ff_dim,
            shared_ff_dim: c.shared_ff_dim,
            moe_heads: c.moe_heads,
            vocab_size: c.vocab_size,
            context_length: c.context_length,
            router_red,
        }
    }
}

/// A byte buffer aligned for [`State`], for statics (EMBEDDING.md shows one without `static
/// mut`).
#[derive(Debug)]
#[repr(C, align(16))]
pub struct AlignedBuffer<const N: usize>(pub [u8; N]);

impl<const N: usize> AlignedBuffer<N> {
    /// A zeroed buffer.
    pub const fn new() -> Self {
        AlignedBuffer([0; N])
    }
}

impl<const N: usize> Default for AlignedBuffer<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Element counts of every buffer, in carving order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    dim: usize,
    q_dim: usize,
    kv_dim: usize,
    n_heads: usize,
    half_head: usize,
    /// Hidden activations of one token: dense FFN, shared expert, or all `h * k` expert pairs.
    hidden: usize,
    /// Expert outputs of all pairs of one token (`k * d`), at least `d`.
    expert_out: usize,
    max_in: usize,
    n_experts: usize,
    router_red: usize,
    pairs: usize,
    heads: usize,
    vocab: usize,
    ctx: usize,
    n_layers: usize,
    /// Tokens one forward pass can take at once; every per-token buffer is this many deep.
    batch: usize,
    /// KV cache storage.
    kv: KvType,
    /// Bytes of one stored head vector.
    kv_row: usize,
    /// Key/value heads.
    kv_heads: usize,
}

const fn round16(n: usize) -> Option<usize> {
    match n.checked_add(15) {
        Some(v) => Some(v & !15),
        None => None,
    }
}

/// Number of buffers a state is carved into.
const BUFFERS: usize = 23;

impl Plan {
    /// The layout for `shape` and `opts`, or `None` if they do not go together (a context of 0
    /// or past the model's, a batch of 0, a block KV type on heads that are not a whole number
    /// of blocks) or the size overflows.
    const fn of(shape: &Shape, opts: StateOptions) -> Option<Plan> {
        let c = shape;
        if opts.ctx == 0 || opts.ctx > c.context_length || opts.batch == 0 {
            return None;
        }
        let q_dim = tri!(c.n_heads.checked_mul(c.head_dim));
        // Config values are at most 2^24, so products of two fit in u64 but not always usize.
        let pairs = tri!(c.moe_heads.checked_mul(c.top_k));
        let hidden = max(
            max(tri!(pairs.checked_mul(c.expert_ff_dim)), c.ff_dim),
            c.shared_ff_dim,
        );
        let expert_out = max(tri!(c.top_k.checked_mul(c.dim)), c.dim);
        // Widest input of a single matrix product (quantized activations need this many).
        let max_in = max(max(c.dim, q_dim), c.router_red);
        let plan = Plan {
            dim: c.dim,
            q_dim,
            kv_dim: tri!(c.n_kv_heads.checked_mul(c.head_dim)),
            n_heads: c.n_heads,
            half_head: c.head_dim / 2,
            hidden,
            expert_out,
            max_in,
            n_experts: c.n_experts,
            router_red: c.router_red,
            pairs,
            heads: c.moe_heads,
            vocab: c.vocab_size,
            ctx: opts.ctx,
            n_layers: c.n_layers,
            batch: opts.batch,
            kv: opts.kv,
            kv_row: tri!(opts.kv.row_bytes(c.head_dim)),
            kv_heads: c.n_kv_heads,
        };
        tri!(plan.bytes());
        Some(plan)
    }

    /// [`Plan::of`] for a model's configuration, with the reason when it fails.
    pub(crate) fn new(c: &Config, router_red: usize, opts: StateOptions) -> Result<Plan> {
        if opts.ctx == 0 || opts.ctx > c.context_length {
            return Err(Error::BadContextLength {
                requested: opts.ctx,
                max: c.context_length,
            });
        }
        if opts.batch == 0 {
            return Err(Error::BadBatchCapacity);
        }
        if opts.kv.row_bytes(c.head_dim).is_none() {
            return Err(Error::InvalidConfig {
                reason: "a Q8_0 or Q4_0 KV cache needs a head width that is a multiple of 32",
            });
        }
        Plan::of(&Shape::of(c, router_red), opts).ok_or(Error::Overflow {
            what: "state size",
            offset: 0,
        })
    }

    /// (element count, element size) of each buffer, in carving order.
    const fn buffers(&self) -> Option<[(usize, usize); BUFFERS]> {
        // Bytes of the key (and of the value) cache: one row per layer, kv head and position.
        let kv = tri!(
            tri!(tri!(self.n_layers.checked_mul(self.kv_heads)).checked_mul(self.ctx))
                .checked_mul(self.kv_row)
        );
        let in_blocks = self.max_in.div_ceil(QK);
        let hid_blocks = self.hidden.div_ceil(QK);
        // Per-token sizes, times the batch capacity.
        let b = self.batch;
        macro_rules! b {
            ($n:expr) => {
                tri!(($n).checked_mul(b))
            };
        }
        Some([
            (b!(self.dim), 4),                                      // x
            (b!(self.dim), 4),                                      // xb
            (b!(max(self.dim, self.q_dim)), 4),                     // xb2
            (b!(self.q_dim), 4),                                    // q
            (tri!(self.n_heads.checked_mul(self.ctx)), 4),          // attention scores
            (b!(self.half_head * 2), 4),                            // rope cos and sin
            (b!(tri!(in_blocks.checked_mul(QK))), 1),               // Q8_0 input values
            (b!(in_blocks), 4),                                     // their scales
            (b!(tri!(hid_blocks.checked_mul(QK))), 1),              // Q8_0 hidden values
            (b!(hid_blocks), 4),                                    // their scales
            (b!(self.hidden), 4),                                   // hidden (gate)
            (b!(self.hidden), 4),                                   // hidden (up)
            (b!(self.dim), 4),                                      // xh (head output)
            (b!(self.dim), 4),                                      // moe_out
            (b!(self.expert_out), 4),                               // expert outputs
            (b!(tri!(self.n_experts.checked_mul(self.heads))), 4),  // router probabilities
            (b!(tri!(self.router_red.checked_mul(self.heads))), 4), // x-moe reduced sub-tokens
            (b!(self.pairs), 4),                                    // members of one group
            (b!(tri!(self.n_layers.checked_mul(self.pairs))), 4),   // chosen experts
            (b!(tri!(self.n_layers.checked_mul(self.pairs))), 4),   // their gates
            (self.vocab, 4),                                        // logits
            (kv, 1),                                                // key cache (bytes)
            (kv, 1),                                                // value cache (bytes)
        ])
    }

    const fn bytes(&self) -> Option<usize> {
        let buffers = tri!(self.buffers());
        let mut total = 0usize;
        let mut i = 0;
        while i < BUFFERS {
            let (n, sz) = buffers[i];
            total = tri!(total.checked_add(tri!(round16(tri!(n.checked_mul(sz))))));
            i += 1;
        }
        Some(total)
    }

    /// Expert pairs per token (`h * k`).
    pub(crate) fn pairs(&self) -> usize {
        self.pairs
    }

    /// Batch capacity.
    pub(crate) fn batch(&self) -> usize {
        self.batch
    }

    /// The options this layout was made for.
    pub(crate) fn options(&self) -> StateOptions {
        StateOptions {
            ctx: self.ctx,
            batch: self.batch,
            kv: self.kv,
        }
    }
}

/// The residual stream and the per-token activations of a batch (`[batch][..]` each).
#[derive(Debug)]
pub(crate) struct Stream<'b> {
    /// Residual stream `[d]`.
    pub(crate) x: &'b mut [f32],
    /// Normed input `[d]`; also the attention output projection.
    pub(crate) xb: &'b mut [f32],
    /// Attention heads' output / FFN output `[max(d, nh*hd)]`.
    pub(crate) xb2: &'b mut [f32],
    /// Query `[nh*hd]`.
    pub(crate) q: &'b mut [f32],
}

/// Attention scratch.
#[derive(Debug)]
pub(crate) struct Attention<'b> {
    /// Scores `[nh][ctx]` of the token being attended.
    pub(crate) att: &'b mut [f32],
    /// RoPE cos then sin `[hd/2]` each, per token of the batch.
    pub(crate) rope: &'b mut [f32],
}

/// Q8_0 forms of matrix-product inputs (`[batch][..]`).
#[derive(Debug)]
pub(crate) struct Quantized<'b> {
    /// Values of a layer input `[max input width]`.
    pub(crate) in_q: &'b mut [i8],
    /// Their block scales.
    pub(crate) in_d: &'b mut [f32],
    /// Values of hidden activations `[max hidden]`.
    pub(crate) hid_q: &'b mut [i8],
    /// Their block scales.
    pub(crate) hid_d: &'b mut [f32],
}

/// Feed-forward and MH-MoE scratch (`[batch][..]`).
#[derive(Debug)]
pub(crate) struct FfnScratch<'b> {
    /// Hidden (gate, then silu(gate) * up) `[max(FF, h*k*F, Fs)]`.
    pub(crate) hb: &'b mut [f32],
    /// Hidden (up).
    pub(crate) hb2: &'b mut [f32],
    /// MH-MoE head output `[d]` (the sub-tokens, contiguous).
    pub(crate) xh: &'b mut [f32],
    /// Concatenated sub-token outputs `[d]`.
    pub(crate) moe_out: &'b mut [f32],
    /// Expert outputs `[h*k][m]` (at least `[d]`; also the shared expert's output).
    pub(crate) sub_out: &'b mut [f32],
    /// Router probabilities `[h][E]`.
    pub(crate) router: &'b mut [f32],
    /// X-MoE reduced sub-tokens `[h][r]`.
    pub(crate) router_red: &'b mut [f32],
    /// Indices of the inputs of one matrix product (a batch, or one expert's pairs) `[h*k]`.
    pub(crate) members: &'b mut [u32],
}

/// Routing decisions of the last forward pass: `[layer][batch][h][k]`.
#[derive(Debug)]
pub(crate) struct Routes<'b> {
    /// Chosen experts.
    pub(crate) idx: &'b mut [u32],
    /// Their gates.
    pub(crate) gates: &'b mut [f32],
}

/// One half of the KV cache: f32 values, or rows of a [`KvType`]'s bytes.
#[derive(Debug)]
pub(crate) enum KvStore<'b> {
    /// [`KvType::F32`].
    F32(&'b mut [f32]),
    /// Rows of [`KvType::row_bytes`] each (F16, Q8_0, Q4_0).
    Rows(&'b mut [u8]),
}

impl KvStore<'_> {
    /// The stored bytes (native-endian for F32).
    fn bytes(&self) -> &[u8] {
        match self {
            KvStore::F32(v) => {
                // SAFETY: an f32 slice is `4 * len` initialized bytes with no padding; u8 has
                // alignment 1 and no invalid values; the view borrows `self` immutably.
                unsafe { core::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len() * 4) }
            }
            KvStore::Rows(b) => b,
        }
    }
}

/// The KV cache, `[layer][kv head][pos][head_dim]` each (one head's positions contiguous, as
/// the attention kernels read them), stored as [`KvType`] says.
#[derive(Debug)]
pub(crate) struct KvCache<'b> {
    /// Keys (RoPE applied).
    pub(crate) key: KvStore<'b>,
    /// Values.
    pub(crate) value: KvStore<'b>,
    /// How they are stored.
    pub(crate) ty: KvType,
    /// Bytes of one stored head vector.
    pub(crate) row: usize,
}

/// Everything a forward pass writes, carved from one caller-provided buffer.
#[derive(Debug)]
pub struct State<'b> {
    /// Next position to fill (number of tokens processed).
    pub(crate) pos: usize,
    /// The layout this state was carved with; the forward pass checks it matches the model.
    pub(crate) plan: Plan,
    /// Tokens in the last forward pass (its routing is kept).
    pub(crate) last_batch: usize,
    pub(crate) s: Stream<'b>,
    pub(crate) attn: Attention<'b>,
    pub(crate) quant: Quantized<'b>,
    pub(crate) ffn: FfnScratch<'b>,
    pub(crate) routes: Routes<'b>,
    /// Output logits `[V]` of the last token of the last forward pass.
    pub(crate) logits: &'b mut [f32],
    pub(crate) kv: KvCache<'b>,
    /// Bytes of weights read by the last forward pass.
    pub(crate) weight_bytes: u64,
    pub(crate) ctx: usize,
}

/// Splits `n * size_of::<T>()` bytes (rounded up to 16) off the front of `buf` as a `&mut [T]`.
fn carve<'b, T: Pod>(buf: &mut &'b mut [u8], n: usize) -> &'b mut [T] {
    let bytes = n * core::mem::size_of::<T>();
    let taken = core::mem::take(buf);
    let (head, tail) = taken.split_at_mut(round16(bytes).unwrap_or(bytes));
    *buf = tail;
    let head = &mut head[..bytes];
    head.fill(0);
    // SAFETY: `head` is `n * size_of::<T>()` initialized bytes, exclusively borrowed for 'b,
    // and starts 16-byte aligned (the buffer start was checked and every piece is a multiple
    // of 16 bytes), which satisfies T's alignment (at most 4). `T: Pod` has no invalid bit
    // patterns, so any bytes are a valid `T`.
    unsafe { core::slice::from_raw_parts_mut(head.as_mut_ptr().cast::<T>(), n) }
}

/// Carves `bytes` of KV cache of type `ty`.
fn kv_store<'b>(buf: &mut &'b mut [u8], ty: KvType, bytes: usize) -> KvStore<'b> {
    match ty {
        KvType::F32 => KvStore::F32(carve(buf, bytes / 4)),
        _ => KvStore::Rows(carve(buf, bytes)),
    }
}

/// Types for which every bit pattern is valid and alignment is at most 16.
trait Pod: Copy {}
impl Pod for f32 {}
impl Pod for u32 {}
impl Pod for i8 {}
impl Pod for u8 {}

impl<'b> State<'b> {
    /// Required alignment of the buffer's start, in bytes.
    pub const ALIGN: usize = 16;

    /// Exact bytes of buffer needed for `model` and `opts` (a context length, or
    /// [`StateOptions`] with a batch capacity and a KV type). The KV cache, attention scores and
    /// logits do not grow with the batch capacity; the activations and scratch do.
    ///
    /// # Errors
    /// [`Error::BadContextLength`] for a context of 0 or past the model's,
    /// [`Error::BadBatchCapacity`] for a batch of 0, [`Error::InvalidConfig`] for a Q8_0 or
    /// Q4_0 KV cache on heads whose width is not a multiple of 32, [`Error::Overflow`].
    pub fn bytes_needed(
        model: &crate::model::Model<'_>,
        opts: impl Into<StateOptions>,
    ) -> Result<usize> {
        let plan = Plan::new(model.config(), model.router_red_width(), opts.into())?;
        plan.bytes().ok_or(Error::Overflow {
            what: "state size",
            offset: 0,
        })
    }

    /// [`State::bytes_needed`] at compile time, from a model's [`Shape`]: `None` where
    /// `bytes_needed` gives an error.
    ///
    /// ```
    /// use mhmoe::state::{KvType, Shape, StateOptions};
    /// use mhmoe::State;
    /// const SHAPE: Shape = Shape {
    ///     dim: 128, n_layers: 4, ff_dim: 0, n_heads: 4, n_kv_heads: 4, head_dim: 32,
    ///     n_experts: 8, top_k: 2, expert_ff_dim: 128, shared_ff_dim: 0, moe_heads: 4,
    ///     vocab_size: 2048, context_length: 256, router_red: 0,
    /// };
    /// const BYTES: usize = match State::bytes_for(&SHAPE, StateOptions::new(256).kv(KvType::Q4_0)) {
    ///     Some(n) => n,
    ///     None => panic!("the options do not fit the model"),
    /// };
    /// assert!(BYTES > 0);
    /// ```
    pub const fn bytes_for(shape: &Shape, opts: StateOptions) -> Option<usize> {
        match Plan::of(shape, opts) {
            Some(plan) => plan.bytes(),
            None => None,
        }
    }

    /// Carves the state for `model` and `opts` (a context length, or [`StateOptions`]) out of
    /// `buf`, which must be at least [`State::bytes_needed`] bytes and start at a multiple of
    /// [`State::ALIGN`].
    ///
    /// # Errors
    /// Those of [`State::bytes_needed`], [`Error::BufferTooSmall`] and
    /// [`Error::BufferMisaligned`].
    pub fn new(
        model: &crate::model::Model<'_>,
        opts: impl Into<StateOptions>,
        buf: &'b mut [u8],
    ) -> Result<Self> {
        let opts = opts.into();
        let plan = Plan::new(model.config(), model.router_red_width(), opts)?;
        let overflow = Error::Overflow {
            what: "state size",
            offset: 0,
        };
        let needed = plan.bytes().ok_or(overflow.clone())?;
        if buf.len() < needed {
            return Err(Error::BufferTooSmall {
                what: "state",
                needed,
                got: buf.len(),
            });
        }
        if !(buf.as_ptr() as usize).is_multiple_of(Self::ALIGN) {
            return Err(Error::BufferMisaligned { align: Self::ALIGN });
        }
        let [x, xb, xb2, q, att, rp, iq, id, hq, hd, hb, hb2, xh, mo, so, ro, rr, mb, ti, tw, lg, kc, vc] =
            plan.buffers().ok_or(overflow)?;
        let mut b = &mut buf[..needed];
        let mut state = State {
            pos: 0,
            plan,
            last_batch: 0,
            s: Stream {
                x: carve(&mut b, x.0),
                xb: carve(&mut b, xb.0),
                xb2: carve(&mut b, xb2.0),
                q: carve(&mut b, q.0),
            },
            attn: Attention {
                att: carve(&mut b, att.0),
                rope: carve(&mut b, rp.0),
            },
            quant: Quantized {
                in_q: carve(&mut b, iq.0),
                in_d: carve(&mut b, id.0),
                hid_q: carve(&mut b, hq.0),
                hid_d: carve(&mut b, hd.0),
            },
            ffn: FfnScratch {
                hb: carve(&mut b, hb.0),
                hb2: carve(&mut b, hb2.0),
                xh: carve(&mut b, xh.0),
                moe_out: carve(&mut b, mo.0),
                sub_out: carve(&mut b, so.0),
                router: carve(&mut b, ro.0),
                router_red: carve(&mut b, rr.0),
                members: carve(&mut b, mb.0),
            },
            routes: Routes {
                idx: carve(&mut b, ti.0),
                gates: carve(&mut b, tw.0),
            },
            logits: carve(&mut b, lg.0),
            kv: KvCache {
                key: kv_store(&mut b, plan.kv, kc.0),
                value: kv_store(&mut b, plan.kv, vc.0),
                ty: plan.kv,
                row: plan.kv_row,
            },
            weight_bytes: 0,
            ctx: opts.ctx,
        };
        state.reset();
        Ok(state)
    }

    /// The most tokens one forward pass can take ([`StateOptions::batch`]).
    pub fn batch_capacity(&self) -> usize {
        self.plan.batch()
    }

    /// Number of positions filled so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The context length this state was made for.
    pub fn context_length(&self) -> usize {
        self.ctx
    }

    /// Forgets all positions (the next token goes to position 0). The logits become NaN until
    /// the next forward pass, so sampling them is an error rather than a stale or zero token.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.last_batch = 0;
        self.logits.fill(f32::NAN);
    }

    /// Bytes of weights the last forward pass read (each matrix row counted once per read).
    pub fn weight_bytes_read(&self) -> u64 {
        self.weight_bytes
    }

    /// Routing of layer `layer` for the last token of the last forward pass: the chosen
    /// experts and their gates, `k` per sub-token, sub-token-major (`h * k` each). `None` for
    /// dense and out of range layers, and before the first forward pass; stale (from an
    /// earlier pass) if the last forward pass failed.
    pub fn routing(
        &self,
        model: &crate::model::Model<'_>,
        layer: usize,
    ) -> Option<(&[u32], &[f32])> {
        self.routing_of(model, layer, self.last_batch.checked_sub(1)?)
    }

    /// Routing of layer `layer` for token `t` of the last forward pass (`t` below the number
    /// of tokens it took), as [`State::routing`].
    pub fn routing_of(
        &self,
        model: &crate::model::Model<'_>,
        layer: usize,
        t: usize,
    ) -> Option<(&[u32], &[f32])> {
        if layer >= model.config().n_layers || !model.config().is_moe_layer(layer) {
            return None;
        }
        if t >= self.last_batch {
            return None;
        }
        let p = self.plan.pairs();
        let start = (layer * self.plan.batch() + t) * p;
        let r = start..start + p;
        Some((self.routes.idx.get(r.clone())?, self.routes.gates.get(r)?))
    }

    /// The KV cache's bytes, keys then values, each `[layer][kv head][position]` rows of
    /// `head_dim` values stored as [`State::kv_type`] (f32 in native byte order, the others as
    /// ggml stores them) over the state's whole context (positions at and after [`State::pos`]
    /// hold stale or zero data).
    pub fn kv_cache(&self) -> (&[u8], &[u8]) {
        (self.kv.key.bytes(), self.kv.value.bytes())
    }

    /// How the KV cache is stored.
    pub fn kv_type(&self) -> KvType {
        self.kv.ty
    }

    /// Logits of the last forward pass: NaN before the first one (and after [`State::reset`]),
    /// so a sampler given them fails with [`Error::NonFinite`] instead of picking token 0 for an
    /// empty prompt. After a failed forward pass they may hold NaN too.
    pub fn logits(&self) -> &[f32] {
        self.logits
    }

    /// Logits of the last forward pass, mutable (samplers may work in place).
    pub fn logits_mut(&mut self) -> &mut [f32] {
        self.logits
    }
}
