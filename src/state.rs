//! Run-time state (activations, KV cache, scratch) carved from one caller-provided buffer.
//!
//! [`State::bytes_needed`] gives the exact size for a configuration and a context length; the
//! same layout code computes the size and carves the buffer, so they cannot disagree. The buffer
//! must start at a multiple of [`State::ALIGN`] bytes ([`AlignedBuffer`] guarantees that for
//! statics); every sub-buffer then starts 16-byte aligned as SIMD kernels like.

use crate::config::{Config, RouterKind};
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
    /// Hidden activations: dense FFN, shared expert, or all `h * k` expert pairs of a token.
    hidden: usize,
    /// Expert outputs of all pairs (`k * d`), at least `d`.
    expert_out: usize,
    max_in: usize,
    n_experts: usize,
    router_red: usize,
    /// Routing decisions of every layer: `n_layers * h * k`.
    routes: usize,
    pairs: usize,
    heads: usize,
    vocab: usize,
    ctx: usize,
    n_layers: usize,
}

fn round16(n: usize) -> Option<usize> {
    n.checked_add(15).map(|v| v & !15)
}

impl Plan {
    pub(crate) fn new(c: &Config, ctx: usize, router_red: usize) -> Result<Plan> {
        if ctx == 0 || ctx > c.context_length {
            return Err(Error::BadContextLength {
                requested: ctx,
                max: c.context_length,
            });
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
        Ok(Plan {
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
            routes: c.n_layers.checked_mul(pairs).ok_or(overflow)?,
            pairs,
            heads: c.moe_heads,
            vocab: c.vocab_size,
            ctx,
            n_layers: c.n_layers,
        })
    }

    /// (element count, element size) of each buffer, in carving order.
    fn buffers(&self) -> Option<[(usize, usize); 23]> {
        let kv = self
            .n_layers
            .checked_mul(self.ctx)?
            .checked_mul(self.kv_dim)?;
        let in_blocks = self.max_in.div_ceil(QK);
        let hid_blocks = self.hidden.div_ceil(QK);
        Some([
            (self.dim, 4),                                 // x
            (self.dim, 4),                                 // xb
            (self.dim.max(self.q_dim), 4),                 // xb2
            (self.q_dim, 4),                               // q
            (self.n_heads.checked_mul(self.ctx)?, 4),      // att
            (self.hidden, 4),                              // hb
            (self.hidden, 4),                              // hb2
            (self.dim, 4),                                 // xh (head output)
            (self.dim, 4),                                 // moe_out
            (self.expert_out, 4),                          // expert outputs
            (self.n_experts.checked_mul(self.heads)?, 4),  // router probabilities [h][E]
            (self.router_red.checked_mul(self.heads)?, 4), // x-moe reduced sub-tokens [h][r]
            (self.routes, 4),                              // chosen experts, every layer
            (self.routes, 4),                              // their gates
            (self.pairs, 4),                               // members of one expert group
            (self.vocab, 4),                               // logits
            (self.half_head * 2, 4),                       // rope cos and sin
            (in_blocks * QK, 1),                           // Q8_0 input values
            (in_blocks, 4),                                // their scales
            (hid_blocks * QK, 1),                          // Q8_0 hidden values
            (hid_blocks, 4),                               // their scales
            (kv, 4),                                       // key cache
            (kv, 4),                                       // value cache
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
}

/// Everything a forward pass writes. Field shapes are noted per field.
#[derive(Debug)]
pub struct State<'b> {
    /// Next position to fill (number of tokens processed).
    pub(crate) pos: usize,
    /// The layout this state was carved with; the forward pass checks it matches the model.
    pub(crate) plan: Plan,
    /// Residual stream `[d]`.
    pub(crate) x: &'b mut [f32],
    /// Normed input `[d]`.
    pub(crate) xb: &'b mut [f32],
    /// Attention output / FFN output `[max(d, nh*hd)]`.
    pub(crate) xb2: &'b mut [f32],
    /// Query `[nh*hd]`.
    pub(crate) q: &'b mut [f32],
    /// Attention scores `[nh][ctx]`.
    pub(crate) att: &'b mut [f32],
    /// FFN hidden `[max(FF, F, Fs)]`.
    pub(crate) hb: &'b mut [f32],
    /// FFN hidden (up) `[max(FF, F, Fs)]`.
    pub(crate) hb2: &'b mut [f32],
    /// MH-MoE head output `[d]`.
    pub(crate) xh: &'b mut [f32],
    /// Concatenated sub-token outputs `[d]`.
    pub(crate) moe_out: &'b mut [f32],
    /// Expert outputs `[h*k][m]` (at least `[d]`; also the shared expert's output).
    pub(crate) sub_out: &'b mut [f32],
    /// Router probabilities `[h][E]`.
    pub(crate) router: &'b mut [f32],
    /// X-MoE reduced sub-tokens `[h][r]`.
    pub(crate) router_red: &'b mut [f32],
    /// Chosen experts `[layer][h][k]`.
    pub(crate) topk_idx: &'b mut [u32],
    /// Their gates `[layer][h][k]`.
    pub(crate) topk_w: &'b mut [f32],
    /// Pairs routed to one expert `[h*k]`.
    pub(crate) members: &'b mut [u32],
    /// Output logits `[V]`.
    pub(crate) logits: &'b mut [f32],
    /// RoPE cos then sin for the current position `[hd/2]` each.
    pub(crate) rope: &'b mut [f32],
    /// Q8_0 values of a layer input `[max input width]`.
    pub(crate) in_q: &'b mut [i8],
    /// Their block scales.
    pub(crate) in_d: &'b mut [f32],
    /// Q8_0 values of hidden activations `[max hidden]`.
    pub(crate) hid_q: &'b mut [i8],
    /// Their block scales.
    pub(crate) hid_d: &'b mut [f32],
    /// Bytes of weights read by the last forward pass.
    pub(crate) weight_bytes: u64,
    /// Key cache `[layer][pos][kv_dim]`.
    pub(crate) key_cache: &'b mut [f32],
    /// Value cache `[layer][pos][kv_dim]`.
    pub(crate) value_cache: &'b mut [f32],
    pub(crate) ctx: usize,
}

/// Reduction width of an X-MoE router (0 for the softmax router): the second dimension of
/// `blk.N.ffn_gate_inp_red.weight`, the same in every layer.
pub(crate) fn router_red_width(model_layers: &[crate::model::Layer<'_>], c: &Config) -> usize {
    if c.router == RouterKind::Softmax {
        return 0;
    }
    model_layers
        .iter()
        .filter_map(|l| match l.ffn {
            crate::model::Ffn::Moe(crate::model::Moe {
                router: crate::model::Router::XMoe { reduce, .. },
                ..
            }) => Some(reduce.rows),
            _ => None,
        })
        .max()
        .unwrap_or(0)
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

    /// Exact bytes of buffer needed for `model` with a context of `ctx` positions.
    pub fn bytes_needed<const N: usize>(
        model: &crate::model::Model<'_, N>,
        ctx: usize,
    ) -> Result<usize> {
        let c = &model.config;
        Plan::new(c, ctx, router_red_width(model.layers(), c))?
            .bytes()
            .ok_or(Error::Overflow {
                what: "state size",
                offset: 0,
            })
    }

    /// Carves the state for `model` and `ctx` positions out of `buf`, which must be at least
    /// [`State::bytes_needed`] bytes and start at a multiple of [`State::ALIGN`].
    pub fn new<const N: usize>(
        model: &crate::model::Model<'_, N>,
        ctx: usize,
        buf: &'b mut [u8],
    ) -> Result<Self> {
        let c = &model.config;
        let plan = Plan::new(c, ctx, router_red_width(model.layers(), c))?;
        let needed = plan.bytes().ok_or(Error::Overflow {
            what: "state size",
            offset: 0,
        })?;
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
        let [x, xb, xb2, q, att, hb, hb2, xh, mo, so, ro, rr, ti, tw, mb, lg, rp, iq, id, hq, hd, kc, vc] =
            plan.buffers().ok_or(Error::Overflow {
                what: "state size",
                offset: 0,
            })?;
        let mut b = &mut buf[..needed];
        let mut state = State {
            pos: 0,
            plan,
            x: carve(&mut b, x.0),
            xb: carve(&mut b, xb.0),
            xb2: carve(&mut b, xb2.0),
            q: carve(&mut b, q.0),
            att: carve(&mut b, att.0),
            hb: carve(&mut b, hb.0),
            hb2: carve(&mut b, hb2.0),
            xh: carve(&mut b, xh.0),
            moe_out: carve(&mut b, mo.0),
            sub_out: carve(&mut b, so.0),
            router: carve(&mut b, ro.0),
            router_red: carve(&mut b, rr.0),
            topk_idx: carve(&mut b, ti.0),
            topk_w: carve(&mut b, tw.0),
            members: carve(&mut b, mb.0),
            logits: carve(&mut b, lg.0),
            rope: carve(&mut b, rp.0),
            in_q: carve(&mut b, iq.0),
            in_d: carve(&mut b, id.0),
            hid_q: carve(&mut b, hq.0),
            hid_d: carve(&mut b, hd.0),
            weight_bytes: 0,
            key_cache: carve(&mut b, kc.0),
            value_cache: carve(&mut b, vc.0),
            ctx,
        };
        state.reset();
        Ok(state)
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
        self.logits.fill(f32::NAN);
    }

    /// Bytes of weights the last forward pass read (each matrix row counted once per read).
    pub fn weight_bytes_read(&self) -> u64 {
        self.weight_bytes
    }

    /// Routing of layer `layer` in the last forward pass: the chosen experts and their gates,
    /// `k` per sub-token, sub-token-major (`h * k` each). `None` for dense layers and out of
    /// range layers; stale (from an earlier token) if the last forward pass failed.
    pub fn routing<const N: usize>(
        &self,
        model: &crate::model::Model<'_, N>,
        layer: usize,
    ) -> Option<(&[u32], &[f32])> {
        if layer >= model.config.n_layers || !model.config.is_moe_layer(layer) {
            return None;
        }
        let p = self.plan.pairs();
        let r = layer * p..(layer + 1) * p;
        Some((self.topk_idx.get(r.clone())?, self.topk_w.get(r)?))
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
