//! Run-time state (activations, KV cache, scratch) carved from one caller-provided buffer.
//!
//! [`State::bytes_needed`] gives the exact size for a configuration and a context length; the
//! same layout code computes the size and carves the buffer, so they cannot disagree. The buffer
//! must start at a multiple of [`State::ALIGN`] bytes ([`AlignedBuffer`] guarantees that for
//! statics); every sub-buffer then starts 16-byte aligned as SIMD kernels like.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::quant::QK;

/// A byte buffer aligned for [`State`], for use in statics: `static mut BUF: AlignedBuffer<N>`.
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
}

fn round16(n: usize) -> Option<usize> {
    n.checked_add(15).map(|v| v & !15)
}

/// Number of buffers a state is carved into.
const BUFFERS: usize = 23;

impl Plan {
    pub(crate) fn new(c: &Config, ctx: usize, batch: usize, router_red: usize) -> Result<Plan> {
        if ctx == 0 || ctx > c.context_length {
            return Err(Error::BadContextLength {
                requested: ctx,
                max: c.context_length,
            });
        }
        if batch == 0 {
            return Err(Error::BadBatchCapacity);
        }
        let overflow = Error::Overflow {
            what: "state size",
            offset: 0,
        };
        let q_dim = c.n_heads * c.head_dim;
        // Config values are at most 2^24, so products of two fit in u64 but not always usize.
        let pairs = c.moe_heads.checked_mul(c.top_k).ok_or(overflow.clone())?;
        let hidden = pairs
            .checked_mul(c.expert_ff_dim)
            .ok_or(overflow.clone())?
            .max(c.ff_dim)
            .max(c.shared_ff_dim);
        let expert_out = c
            .top_k
            .checked_mul(c.dim)
            .ok_or(overflow.clone())?
            .max(c.dim);
        // Widest input of a single matrix product (quantized activations need this many).
        let max_in = c.dim.max(q_dim).max(router_red);
        let plan = Plan {
            dim: c.dim,
            q_dim,
            kv_dim: c.kv_dim(),
            n_heads: c.n_heads,
            half_head: c.head_dim / 2,
            hidden,
            expert_out,
            max_in,
            n_experts: c.n_experts,
            router_red,
            pairs,
            heads: c.moe_heads,
            vocab: c.vocab_size,
            ctx,
            n_layers: c.n_layers,
            batch,
        };
        plan.bytes().ok_or(overflow)?;
        Ok(plan)
    }

    /// (element count, element size) of each buffer, in carving order.
    fn buffers(&self) -> Option<[(usize, usize); BUFFERS]> {
        let kv = self
            .n_layers
            .checked_mul(self.ctx)?
            .checked_mul(self.kv_dim)?;
        let in_blocks = self.max_in.div_ceil(QK);
        let hid_blocks = self.hidden.div_ceil(QK);
        // Per-token sizes, times the batch capacity.
        let b = |n: usize| n.checked_mul(self.batch);
        Some([
            (b(self.dim)?, 4),                                 // x
            (b(self.dim)?, 4),                                 // xb
            (b(self.dim.max(self.q_dim))?, 4),                 // xb2
            (b(self.q_dim)?, 4),                               // q
            (self.n_heads.checked_mul(self.ctx)?, 4),          // attention scores
            (b(self.half_head * 2)?, 4),                       // rope cos and sin
            (b(in_blocks * QK)?, 1),                           // Q8_0 input values
            (b(in_blocks)?, 4),                                // their scales
            (b(hid_blocks * QK)?, 1),                          // Q8_0 hidden values
            (b(hid_blocks)?, 4),                               // their scales
            (b(self.hidden)?, 4),                              // hidden (gate)
            (b(self.hidden)?, 4),                              // hidden (up)
            (b(self.dim)?, 4),                                 // xh (head output)
            (b(self.dim)?, 4),                                 // moe_out
            (b(self.expert_out)?, 4),                          // expert outputs
            (b(self.n_experts.checked_mul(self.heads)?)?, 4),  // router probabilities
            (b(self.router_red.checked_mul(self.heads)?)?, 4), // x-moe reduced sub-tokens
            (b(self.pairs)?, 4),                               // members of one group
            (b(self.n_layers.checked_mul(self.pairs)?)?, 4),   // chosen experts
            (b(self.n_layers.checked_mul(self.pairs)?)?, 4),   // their gates
            (self.vocab, 4),                                   // logits
            (kv, 4),                                           // key cache
            (kv, 4),                                           // value cache
        ])
    }

    fn bytes(&self) -> Option<usize> {
        self.buffers()?.iter().try_fold(0usize, |acc, &(n, sz)| {
            acc.checked_add(round16(n.checked_mul(sz)?)?)
        })
    }

    /// Expert pairs per token (`h * k`).
    pub(crate) fn pairs(&self) -> usize {
        self.pairs
    }

    /// Batch capacity.
    pub(crate) fn batch(&self) -> usize {
        self.batch
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

/// The KV cache, `[layer][kv head][pos][head_dim]` each (one head's positions contiguous, as
/// the attention kernels read them).
#[derive(Debug)]
pub(crate) struct KvCache<'b> {
    /// Keys (RoPE applied).
    pub(crate) key: &'b mut [f32],
    /// Values.
    pub(crate) value: &'b mut [f32],
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

/// Types for which every bit pattern is valid and alignment is at most 16.
trait Pod: Copy {}
impl Pod for f32 {}
impl Pod for u32 {}
impl Pod for i8 {}

impl<'b> State<'b> {
    /// Required alignment of the buffer's start, in bytes.
    pub const ALIGN: usize = 16;

    /// Exact bytes of buffer needed for `model` with a context of `ctx` positions and a batch
    /// capacity of 1 (one token per forward pass).
    pub fn bytes_needed(model: &crate::model::Model<'_>, ctx: usize) -> Result<usize> {
        Self::bytes_needed_batch(model, ctx, 1)
    }

    /// Exact bytes of buffer needed for `model`, `ctx` positions and forward passes of up to
    /// `batch` tokens ([`crate::forward_batch`]). The KV cache, attention scores and logits do
    /// not grow with `batch`; the activations and scratch do.
    pub fn bytes_needed_batch(
        model: &crate::model::Model<'_>,
        ctx: usize,
        batch: usize,
    ) -> Result<usize> {
        let c = model.config();
        Plan::new(c, ctx, batch, model.router_red_width())?
            .bytes()
            .ok_or(Error::Overflow {
                what: "state size",
                offset: 0,
            })
    }

    /// Carves the state for `model` and `ctx` positions (batch capacity 1) out of `buf`, which
    /// must be at least [`State::bytes_needed`] bytes and start at a multiple of
    /// [`State::ALIGN`].
    pub fn new(model: &crate::model::Model<'_>, ctx: usize, buf: &'b mut [u8]) -> Result<Self> {
        Self::new_batch(model, ctx, 1, buf)
    }

    /// Carves a state for forward passes of up to `batch` tokens out of `buf`, which must be at
    /// least [`State::bytes_needed_batch`] bytes and start at a multiple of [`State::ALIGN`].
    pub fn new_batch(
        model: &crate::model::Model<'_>,
        ctx: usize,
        batch: usize,
        buf: &'b mut [u8],
    ) -> Result<Self> {
        let c = model.config();
        let plan = Plan::new(c, ctx, batch, model.router_red_width())?;
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
                key: carve(&mut b, kc.0),
                value: carve(&mut b, vc.0),
            },
            weight_bytes: 0,
            ctx,
        };
        state.reset();
        Ok(state)
    }

    /// The most tokens one forward pass can take ([`State::new_batch`]).
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

    /// The KV cache, keys then values, each `[layer][kv head][position][head_dim]` over the
    /// state's whole context (positions at and after [`State::pos`] hold stale or zero data).
    pub fn kv_cache(&self) -> (&[f32], &[f32]) {
        (self.kv.key, self.kv.value)
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
