//! The forward pass, top to bottom (FORMAT.md, "Forward pass").
//!
//! One implementation runs a batch of `n >= 1` consecutive tokens: every matrix product takes
//! all of the batch's inputs at once (each weight row is read once per batch), the sub-tokens
//! of the whole batch are grouped by expert, and attention is causal inside the batch. A token
//! gets exactly the same bits whatever batch it is in, because every per-token operation is
//! the same and no reduction spans tokens.
//!
//! [`Exec`] picks the instruction set (monomorphizing the pass for it) and the [`Parallel`]
//! executor that splits matrix products by rows and attention by heads.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::config::Config;
use crate::error::{Error, NonFinite, Result, TokenError};

/// The result of the per-token path.
type TokenResult<T> = core::result::Result<T, TokenError>;
use crate::kernels::scalar::{add_bias, rope};
use crate::kernels::{Act, Isa, Kernels, Out, Scalar};
use crate::model::{Ffn, Layer, Layers, Matrix, Model, Moe, Router, SwiGlu};
use crate::parallel::{for_chunks, for_row_ranges, Parallel, Serial};
use crate::quant::{dequantize_row, store_row, QK};
use crate::state::{KvStore, KvType, Plan, State};

/// Runs one token through the model at the state's next position and returns the logits,
/// on the active instruction set ([`Isa::active`]) and the calling thread.
///
/// Errors ([`TokenError`]): `TokenOutOfRange`, `ContextFull` when every position of the state
/// is used (call [`State::reset`] to start over), `WrongState` when the state was made for
/// another model, and `NonFinite` when a NaN or infinity (corrupt weights or
/// overflowing activations) reaches the logits, or appears where it would otherwise vanish:
/// an attention score or router logit (a softmax would turn -inf into a weight of 0), an
/// RMSNorm sum of squares (an overflow would scale the token to zeros) or an X-MoE expert
/// norm. On error the state's position does not advance.
pub fn forward<'s>(model: &Model<'_>, s: &'s mut State<'_>, token: u32) -> TokenResult<&'s [f32]> {
    Exec::serial().forward(model, s, token)
}

/// [`forward`] on a given instruction set; fails with [`Error::IsaUnavailable`] if it is not
/// available here (a setup error, hence [`Error`]; [`Exec::with_isa`] checks it once).
pub fn forward_on<'s>(
    isa: Isa,
    model: &Model<'_>,
    s: &'s mut State<'_>,
    token: u32,
) -> Result<&'s [f32]> {
    Ok(Exec::serial().with_isa(isa)?.forward(model, s, token)?)
}

/// Runs `tokens` (e.g. a prompt) through the model at the state's next positions in one pass
/// and returns the logits of the last one: the same bits as [`forward`] on each token in turn,
/// reading each weight once per batch instead of once per token. See [`Exec::forward_batch`].
pub fn forward_batch<'s>(
    model: &Model<'_>,
    s: &'s mut State<'_>,
    tokens: &[u32],
) -> TokenResult<&'s [f32]> {
    Exec::serial().forward_batch(model, s, tokens)
}

/// How a forward pass runs: its instruction set and the executor that splits its work.
///
/// ```
/// # fn main() -> Result<(), mhmoe::Error> {
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/models/d_q8_0_h2_k2_gqa.gguf");
/// # let file = mhmoe::file::ModelBytes::read(path)?;
/// # let model = file.model()?;
/// let pool = mhmoe::parallel::ThreadPool::new(2)?;
/// let exec = mhmoe::Exec::new(&pool);
/// let mut buf = mhmoe::file::StateBuffer::for_model(&model, mhmoe::StateOptions::new(64).batch(16))?;
/// let mut state = buf.state(&model)?;
/// exec.forward_batch(&model, &mut state, &[1, 2, 3, 4])?; // a prompt, in one pass
/// let logits = exec.forward(&model, &mut state, 5)?;     // then token by token
/// # assert_eq!(logits.len(), model.config().vocab_size());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy)]
pub struct Exec<'p> {
    isa: Isa,
    par: &'p dyn Parallel,
    min_split: usize,
}

impl core::fmt::Debug for Exec<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Exec")
            .field("isa", &self.isa)
            .field("threads", &self.par.threads())
            .field("min_split", &self.min_split)
            .finish()
    }
}

static SERIAL: Serial = Serial;

impl Exec<'static> {
    /// The active instruction set on the calling thread alone.
    pub fn serial() -> Self {
        Exec {
            isa: Isa::active(),
            par: &SERIAL,
            min_split: MIN_SPLIT,
        }
    }
}

impl<'p> Exec<'p> {
    /// The active instruction set, with work split by `par` (e.g. a
    /// [`ThreadPool`](crate::parallel::ThreadPool)). Results are the same bits for every
    /// executor and thread count.
    pub fn new(par: &'p dyn Parallel) -> Self {
        Exec {
            isa: Isa::active(),
            par,
            min_split: MIN_SPLIT,
        }
    }

    /// The same, on instruction set `isa`; fails if it is not available here.
    pub fn with_isa(self, isa: Isa) -> Result<Self> {
        if !isa.is_available() {
            return Err(Error::IsaUnavailable { isa });
        }
        Ok(Exec { isa, ..self })
    }

    /// The same, splitting a matrix product over the threads only when its weight bytes times
    /// its number of inputs reach `work` (default [`MIN_SPLIT`]; attention uses a sixteenth of it,
    /// counted in multiply-adds). Smaller products run on the calling thread, where the
    /// hand-off would cost more than it saves. Results do not depend on it.
    pub fn with_min_split(self, work: usize) -> Self {
        Exec {
            min_split: work,
            ..self
        }
    }

    /// The instruction set.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// [`forward`] with this instruction set and executor.
    pub fn forward<'s>(
        &self,
        model: &Model<'_>,
        s: &'s mut State<'_>,
        token: u32,
    ) -> TokenResult<&'s [f32]> {
        self.forward_batch(model, s, core::slice::from_ref(&token))
    }

    /// Runs `tokens` at the state's next positions in one pass and returns the logits of the
    /// last one; the KV cache then holds every token, and [`State::routing_of`] gives each
    /// token's routing. The logits and the KV cache are bit-identical to running the tokens one
    /// by one with [`forward`].
    ///
    /// Errors, all leaving the state's position unchanged: [`TokenError::EmptyBatch`] for no
    /// tokens, [`TokenError::BatchTooLarge`] for more than [`State::batch_capacity`] tokens,
    /// [`TokenError::ContextFull`] when they do not all fit in the remaining context, and the
    /// errors of [`forward`].
    pub fn forward_batch<'s>(
        &self,
        model: &Model<'_>,
        s: &'s mut State<'_>,
        tokens: &[u32],
    ) -> TokenResult<&'s [f32]> {
        self.begin(model, s, tokens)?.finish()
    }

    /// Starts a forward pass of `tokens` to be run one layer per [`Steps::step`]: checks them
    /// (the errors of [`Exec::forward_batch`], before anything changes) and embeds them.
    pub fn begin<'m, 'a, 's, 'b>(
        &self,
        model: &'m Model<'a>,
        s: &'s mut State<'b>,
        tokens: &[u32],
    ) -> TokenResult<Steps<'p, 'm, 'a, 's, 'b>> {
        begin(*self, model, s, tokens)
    }
}

/// The default of [`Exec::with_min_split`]: 512 KiB, about 25 microseconds of reading at
/// desktop memory speeds, so one token's products are split only where the hand-off (about a
/// microsecond) is small beside them; a batch's products (bytes times inputs) nearly always are.
pub const MIN_SPLIT: usize = 1 << 19;

/// Row ranges handed to threads start at multiples of this (the kernels' row tiles).
const ROW_ALIGN: usize = 16;

/// The run-time context of one pass: the executor and the weight bytes read so far.
struct Pass<'p> {
    par: &'p dyn Parallel,
    /// See [`Exec::with_min_split`].
    min_split: usize,
    bytes: u64,
}

impl Pass<'_> {
    /// `out[p * w.rows + r] = row_r(w) . input(p / in_div)` for every member `p` and row `r`,
    /// reading `w` once and splitting its rows over the threads when it is large enough.
    fn mm<K: Kernels>(
        &mut self,
        w: &Matrix<'_>,
        inputs: &Act<'_>,
        members: &[u32],
        in_div: usize,
        out: &mut [f32],
    ) {
        self.mm_each::<K, 1>([w], inputs, members, in_div, [out]);
    }

    /// [`Pass::mm`] for `N` matrices on the same inputs (`outs[j]` for `ws[j]`), in one
    /// hand-off to the threads: each thread takes its rows of every matrix, one matrix after
    /// the other (an FFN's gate and up products: half the waits for the slowest thread).
    fn mm_each<K: Kernels, const N: usize>(
        &mut self,
        ws: [&Matrix<'_>; N],
        inputs: &Act<'_>,
        members: &[u32],
        in_div: usize,
        outs: [&mut [f32]; N],
    ) {
        let bytes: usize = ws.iter().map(|w| w.data.len()).sum();
        self.bytes += bytes as u64;
        let parts = if bytes.saturating_mul(members.len()) >= self.min_split {
            self.par.threads()
        } else {
            1
        };
        let mut j = 0;
        let mut outs = outs.map(|o| {
            let w = ws[j];
            j += 1;
            (Out::new(o, w.rows), ROW_ALIGN.max(w.row_align()))
        });
        let mut split = outs.each_mut().map(|(o, align)| (o, *align));
        for_row_ranges(self.par, parts, &mut split, &|j, r0, r1, o| {
            let w = ws[j].rows_range(r0, r1);
            match members {
                [p] => {
                    let p = *p as usize;
                    let (a, o) = (inputs.item(w.cols, p / in_div), o.item(p));
                    match w.tiled {
                        false => K::gemv(&w, &a, o),
                        true => K::gemv_tiled(&w, &a, o),
                    }
                }
                _ if w.tiled => K::gemv_group_tiled(&w, inputs, members, in_div, o),
                _ => K::gemv_group(&w, inputs, members, in_div, o),
            }
        });
    }

    /// [`Pass::mm`] on the first `n` inputs, one output each.
    fn mm_batch<K: Kernels>(
        &mut self,
        w: &Matrix<'_>,
        inputs: &Act<'_>,
        members: &mut [u32],
        n: usize,
        out: &mut [f32],
    ) {
        self.mm::<K>(w, inputs, first(members, n), 1, out)
    }
}

/// `members[..n] = 0, 1, .., n - 1`.
fn first(members: &mut [u32], n: usize) -> &[u32] {
    let m = &mut members[..n];
    for (i, v) in m.iter_mut().enumerate() {
        *v = i as u32;
    }
    m
}

/// A forward pass in progress, run one layer per call so that firmware can do other work
/// between layers (see [`Exec::begin`]).
///
/// Made by [`Exec::begin`], which checks the tokens and embeds them; each [`Steps::step`] runs
/// one layer; [`Steps::finish`] runs the layers left and the output layer and returns the
/// logits, the same bits as [`Exec::forward_batch`] (which is `begin` then `finish`).
///
/// Dropping it before `finish` abandons the pass: the state's position does not advance, so
/// the next pass starts where this one started and gives the same results as if it had never
/// begun (the positions it wrote in the KV cache are past [`State::pos`], and are written
/// again). The logits and [`State::weight_bytes_read`] keep the last finished pass's values;
/// the routing record is cleared when a pass begins ([`State::routing`] gives `None` until one
/// finishes), since the layers that ran have overwritten it.
///
/// ```
/// # fn main() -> Result<(), mhmoe::Error> {
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/models/d_q8_0_h2_k2_gqa.gguf");
/// # let file = mhmoe::file::ModelBytes::read(path)?;
/// # let model = file.model()?;
/// # let mut buf = mhmoe::file::StateBuffer::for_model(&model, 16)?;
/// # let mut state = buf.state(&model)?;
/// let mut steps = mhmoe::Exec::serial().begin(&model, &mut state, &[1])?;
/// while steps.step()? {
///     // yield to other tasks here: one layer ran
/// }
/// let logits = steps.finish()?;
/// # assert_eq!(logits.len(), model.config().vocab_size());
/// # Ok(())
/// # }
/// ```
pub struct Steps<'e, 'm, 'a, 's, 'b> {
    isa: Isa,
    /// The executor, and the weight bytes read so far.
    pass: Pass<'e>,
    model: &'m Model<'a>,
    st: &'s mut State<'b>,
    layers: Layers<'m, 'a>,
    /// Index of the next layer.
    next: usize,
    /// Tokens in the pass.
    n: usize,
    /// Position of the first token.
    pos0: usize,
    /// The error a step returned; the pass cannot go on after it.
    failed: Option<TokenError>,
}

impl core::fmt::Debug for Steps<'_, '_, '_, '_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Steps")
            .field("isa", &self.isa)
            .field("threads", &self.pass.par.threads())
            .field("next_layer", &self.next)
            .field("layers", &self.model.config().n_layers)
            .field("tokens", &self.n)
            .field("pos", &self.pos0)
            .field("failed", &self.failed)
            .finish()
    }
}

impl<'s> Steps<'_, '_, '_, 's, '_> {
    /// Layers run so far.
    pub fn layers_done(&self) -> usize {
        self.next
    }

    /// Layers in the model.
    pub fn layers_total(&self) -> usize {
        self.model.config().n_layers
    }

    /// Runs the next layer: `Ok(true)` if one ran, `Ok(false)` once every layer has (then call
    /// [`Steps::finish`]). After an error the pass cannot go on: every later call returns the
    /// same error, and the state is as [`Steps`] describes for an abandoned pass.
    pub fn step(&mut self) -> TokenResult<bool> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let Some(layer) = self.layers.next() else {
            // The walk of the tensor table was checked when the model loaded; a short one
            // would mean the bytes changed since.
            if self.next != self.model.config().n_layers {
                self.failed = Some(TokenError::WrongState);
                return Err(TokenError::WrongState);
            }
            return Ok(false);
        };
        let pass = &mut self.pass;
        let (c, l, st, pos0, n) = (
            self.model.config(),
            self.next,
            &mut *self.st,
            self.pos0,
            self.n,
        );
        let ran = crate::with_isa!(
            self.isa,
            K => run_layer::<K>(pass, c, l, &layer, st, pos0, n),
            _ => run_layer::<Scalar>(pass, c, l, &layer, st, pos0, n)
        );
        match ran {
            Ok(()) => {
                self.next += 1;
                Ok(true)
            }
            Err(e) => {
                self.failed = Some(e);
                Err(e)
            }
        }
    }

    /// Runs the layers left and the output layer, advances the state's position past the
    /// pass's tokens and returns the logits of the last one.
    pub fn finish(mut self) -> TokenResult<&'s [f32]> {
        while self.step()? {}
        let (mut pass, model, st, n) = (self.pass, self.model, self.st, self.n);
        crate::with_isa!(
            self.isa,
            K => output::<K>(&mut pass, model, st, n)?,
            _ => output::<Scalar>(&mut pass, model, st, n)?
        );
        st.weight_bytes = pass.bytes;
        st.last_batch = n;
        st.pos = self.pos0 + n;
        Ok(st.logits)
    }
}

/// Checks a pass of `tokens` against the model and state, and embeds them.
fn begin<'e, 'm, 'a, 's, 'b>(
    exec: Exec<'e>,
    model: &'m Model<'a>,
    st: &'s mut State<'b>,
    tokens: &[u32],
) -> TokenResult<Steps<'e, 'm, 'a, 's, 'b>> {
    let c: &Config = model.config();
    let plan = Plan::new(c, model.router_red_width(), st.plan.options());
    if plan.as_ref() != Ok(&st.plan) {
        return Err(TokenError::WrongState);
    }
    let n = tokens.len();
    if n == 0 {
        return Err(TokenError::EmptyBatch);
    }
    if n > st.plan.batch() {
        return Err(TokenError::batch_too_large(n, st.plan.batch()));
    }
    if let Some(&token) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
        return Err(TokenError::token_out_of_range(token, c.vocab_size));
    }
    let pos0 = st.pos;
    if pos0 + n > st.ctx {
        return Err(TokenError::context_full(st.ctx));
    }
    let d = c.dim;
    let mut bytes = 0;
    for (t, &token) in tokens.iter().enumerate() {
        let embd = model.token_embd();
        embd.dequantize_row(token as usize, &mut st.s.x[t * d..(t + 1) * d]);
        bytes += embd.row_bytes() as u64;
        rope_tables(c, pos0 + t, &mut st.attn.rope[t * c.head_dim..]);
    }
    // The layers about to run overwrite the routing record.
    st.last_batch = 0;
    Ok(Steps {
        isa: exec.isa,
        pass: Pass {
            par: exec.par,
            min_split: exec.min_split,
            bytes,
        },
        model,
        st,
        layers: model.layers(),
        next: 0,
        n,
        pos0,
        failed: None,
    })
}

/// Layer `l` on the `n` tokens of the pass: attention, then the feed-forward block, each added
/// to the residual stream.
fn run_layer<K: Kernels>(
    pass: &mut Pass<'_>,
    c: &Config,
    l: usize,
    layer: &Layer<'_>,
    st: &mut State<'_>,
    pos0: usize,
    n: usize,
) -> TokenResult<()> {
    let d = c.dim;
    attention::<K>(pass, c, l, layer, st, pos0, n)?;
    norm_batch::<K>(st.s.x, st.s.xb, d, n, layer.ffn_norm, c.norm_eps)?;
    match &layer.ffn {
        Ffn::Dense(f) => dense_ffn::<K>(pass, d, f, st, n),
        Ffn::Moe(moe) => moe_layer::<K>(pass, c, l, moe, st, n)?,
    }
    for (x, &v) in st.s.x[..n * d].iter_mut().zip(st.s.xb2.iter()) {
        *x += v;
    }
    Ok(())
}

/// The logits of the last of the `n` tokens, into `st.logits`.
fn output<K: Kernels>(
    pass: &mut Pass<'_>,
    model: &Model<'_>,
    st: &mut State<'_>,
    n: usize,
) -> TokenResult<()> {
    let c = model.config();
    let d = c.dim;
    let last = &st.s.x[(n - 1) * d..n * d];
    norm::<K>(&mut st.s.xb[..d], last, model.output_norm(), c.norm_eps)?;
    let q = &mut st.quant;
    let a = K::prepare(&st.s.xb[..d], &[model.output().ty], q.in_q, q.in_d);
    pass.mm_batch::<K>(model.output(), &a, st.ffn.members, 1, st.logits);
    if !st.logits.iter().all(|v| v.is_finite()) {
        return Err(TokenError::NonFinite(NonFinite::Logits));
    }
    Ok(())
}

/// RoPE tables of position `pos`: `cos` then `sin` of the `hd / 2` frequencies.
fn rope_tables(c: &Config, pos: usize, out: &mut [f32]) {
    let (hd, half) = (c.head_dim, c.head_dim / 2);
    let (cos, sin) = out[..hd].split_at_mut(half);
    for j in 0..half {
        let freq = libm::powf(c.rope_base, -((2 * j) as f32) / hd as f32);
        let theta = pos as f32 * freq;
        cos[j] = libm::cosf(theta);
        sin[j] = libm::sinf(theta);
    }
}

/// Attention of layer `l` for the `n` tokens of the batch, added to the residual stream.
fn attention<K: Kernels>(
    pass: &mut Pass<'_>,
    c: &Config,
    l: usize,
    layer: &Layer<'_>,
    st: &mut State<'_>,
    pos0: usize,
    n: usize,
) -> TokenResult<()> {
    let (d, hd, kvd) = (c.dim, c.head_dim, c.kv_dim());
    let q_dim = c.n_heads * hd;
    let half = hd / 2;
    let (s, q, members) = (&mut st.s, &mut st.quant, &mut *st.ffn.members);
    norm_batch::<K>(s.x, s.xb, d, n, layer.attn_norm, c.norm_eps)?;
    let a = K::prepare(
        &s.xb[..n * d],
        &[layer.wq.ty, layer.wk.ty, layer.wv.ty],
        q.in_q,
        q.in_d,
    );
    pass.mm_batch::<K>(&layer.wq, &a, members, n, &mut s.q[..n * q_dim]);
    for t in 0..n {
        let (cos, sin) = st.attn.rope[t * hd..(t + 1) * hd].split_at(half);
        rope(&mut s.q[t * q_dim..(t + 1) * q_dim], hd, cos, sin);
    }
    // Keys (rotated) and values of the batch into their cache slots, positions pos0..pos0 + n
    // of each kv head: the cache is `[layer][kv head][position][head_dim]`, so one head's
    // positions are contiguous for the attention kernels. `xb2` is free until attention.
    let kv = &mut s.xb2[..n * kvd];
    let (kv_ty, row, ctx) = (st.kv.ty, st.kv.row, st.ctx);
    for (w, cache, rotate) in [
        (&layer.wk, &mut st.kv.key, true),
        (&layer.wv, &mut st.kv.value, false),
    ] {
        pass.mm_batch::<K>(w, &a, members, n, kv);
        for (t, v) in kv.chunks_exact_mut(kvd).enumerate() {
            if rotate {
                let (cos, sin) = st.attn.rope[t * hd..(t + 1) * hd].split_at(half);
                rope(v, hd, cos, sin);
            }
            for (kvh, head) in v.chunks_exact(hd).enumerate() {
                let slot = (l * c.n_kv_heads + kvh) * ctx + pos0 + t;
                match cache {
                    KvStore::F32(f) => f[slot * hd..(slot + 1) * hd].copy_from_slice(head),
                    KvStore::Rows(b) => store_row(
                        kv_ty.ggml_type(),
                        head,
                        &mut b[slot * row..(slot + 1) * row],
                    ),
                }
            }
        }
    }

    // Token t attends positions 0..=pos0 + t, head by head (heads split over threads). With
    // quantized keys the scores are a Q8_0 product: the queries are quantized once (heads are
    // whole blocks, so each head's blocks are its own).
    let inv_sqrt_hd = 1.0 / libm::sqrtf(hd as f32);
    let group = c.n_heads / c.n_kv_heads;
    let layer_rows = l * c.n_kv_heads * ctx;
    let queries = K::prepare(&s.q[..n * q_dim], &[kv_ty.ggml_type()], q.in_q, q.in_d);
    let (keys, values) = (&st.kv.key, &st.kv.value);
    let finite = AtomicBool::new(true);
    for t in 0..n {
        let len = pos0 + t + 1;
        let work = c.n_heads * len * hd;
        let parts = if work >= pass.min_split / 16 {
            pass.par.threads()
        } else {
            1
        };
        for_chunks(
            pass.par,
            parts,
            c.n_heads,
            (&mut *st.attn.att, ctx),
            (&mut s.xb2[t * q_dim..(t + 1) * q_dim], hd),
            &|h, att, out| {
                let qh = queries.item(hd, t * c.n_heads + h);
                let first = layer_rows + (h / group) * ctx;
                let att = &mut att[..len];
                head_scores::<K>(keys, kv_ty, first, len, hd, &qh, inv_sqrt_hd, att);
                // A -inf score would silently get the weight 0.
                if !att.iter().all(|a| a.is_finite()) {
                    finite.store(false, Ordering::Relaxed);
                    return;
                }
                K::softmax(att);
                head_values::<K>(values, kv_ty, first, hd, att, out);
            },
        );
        if !finite.load(Ordering::Relaxed) {
            return Err(TokenError::NonFinite(NonFinite::AttentionScores));
        }
    }

    let a = K::prepare(&s.xb2[..n * q_dim], &[layer.wo.ty], q.in_q, q.in_d);
    pass.mm_batch::<K>(&layer.wo, &a, members, n, &mut s.xb[..n * d]);
    for (x, &v) in s.x[..n * d].iter_mut().zip(s.xb.iter()) {
        *x += v;
    }
    Ok(())
}

/// Scores of one head over positions `0..len`: `att[p] = (q . key(first + p)) * scale`, the
/// keys' rows starting at row `first` of the cache.
#[allow(clippy::too_many_arguments)]
fn head_scores<K: Kernels>(
    keys: &KvStore<'_>,
    ty: KvType,
    first: usize,
    len: usize,
    hd: usize,
    q: &Act<'_>,
    scale: f32,
    att: &mut [f32],
) {
    match keys {
        KvStore::F32(k) => K::scores(q.x, &k[first * hd..], hd, scale, att),
        KvStore::Rows(b) => {
            let ty = ty.ggml_type();
            let rb = ty.row_bytes(hd);
            let rows = b.get(first * rb..(first + len) * rb).unwrap_or(&[]);
            // The cache was carved for this shape, so the rows are whole.
            if let Ok(m) = Matrix::new(ty, len, hd, rows) {
                K::gemv(&m, q, att);
                for a in att.iter_mut() {
                    *a *= scale;
                }
            }
        }
    }
}

/// Output of one head: the `att`-weighted sum of the values' rows from row `first` on, in
/// position order (FORMAT.md). Stored rows are widened one block of 32 at a time and added
/// with the same `axpy` as f32 rows, so each output element sees the same operations in the
/// same order.
fn head_values<K: Kernels>(
    values: &KvStore<'_>,
    ty: KvType,
    first: usize,
    hd: usize,
    att: &[f32],
    out: &mut [f32],
) {
    match values {
        KvStore::F32(v) => K::weighted_rows(att, &v[first * hd..], hd, out),
        KvStore::Rows(b) => {
            let ty = ty.ggml_type();
            let (rb, cb) = (ty.row_bytes(hd), ty.row_bytes(QK));
            out.fill(0.0);
            let mut wide = [0.0f32; QK];
            for (p, &w) in att.iter().enumerate() {
                let row = &b[(first + p) * rb..(first + p + 1) * rb];
                for (i, o) in out.chunks_mut(QK).enumerate() {
                    let n = o.len();
                    let bytes = row.get(i * cb..i * cb + ty.row_bytes(n)).unwrap_or(&[]);
                    dequantize_row(ty, bytes, &mut wide[..n]);
                    K::axpy(o, w, &wide[..n]);
                }
            }
        }
    }
}

/// `out = rmsnorm(x) * w`, failing if the sum of squares of `x` is not finite: an overflowing
/// sum would make the scale 0 and silently turn a finite token into zeros. The kernel returns
/// the mean of squares it used, so the check costs nothing and rejects exactly the inputs whose
/// scale would not be finite and positive.
#[inline]
fn norm<K: Kernels>(out: &mut [f32], x: &[f32], w: &[u8], eps: f32) -> TokenResult<()> {
    if !K::rmsnorm(out, x, w, eps).is_finite() {
        return Err(TokenError::NonFinite(NonFinite::NormSumOfSquares));
    }
    Ok(())
}

/// [`norm`] of each of the first `n` `d`-wide tokens of `x` into `out`.
fn norm_batch<K: Kernels>(
    x: &[f32],
    out: &mut [f32],
    d: usize,
    n: usize,
    w: &[u8],
    eps: f32,
) -> TokenResult<()> {
    for (o, x) in out[..n * d].chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        norm::<K>(o, x, w, eps)?;
    }
    Ok(())
}

/// Hidden-activation scratch of a SwiGLU block: gate and up outputs, their Q8_0 form, and
/// the member indices of the products.
struct Hidden<'a> {
    gate: &'a mut [f32],
    up: &'a mut [f32],
    q: &'a mut [i8],
    d: &'a mut [f32],
    members: &'a mut [u32],
}

/// `out = down(silu(gate x) * up x)` for the `n` inputs of `a` (`out` is `[n][down.rows]`).
fn swiglu<K: Kernels>(
    pass: &mut Pass<'_>,
    f: &SwiGlu<'_>,
    a: &Act<'_>,
    n: usize,
    hid: Hidden<'_>,
    out: &mut [f32],
) {
    let hidden = f.gate.rows;
    let (gate, up) = (&mut hid.gate[..n * hidden], &mut hid.up[..n * hidden]);
    let members = first(hid.members, n);
    pass.mm_each::<K, 2>([&f.gate, &f.up], a, members, 1, [gate, up]);
    K::silu_mul(gate, up);
    let h = K::prepare(gate, &[f.down.ty], hid.q, hid.d);
    pass.mm_batch::<K>(&f.down, &h, hid.members, n, out);
}

/// A dense SwiGLU layer on the normed tokens in `xb`; the result goes to `xb2`.
fn dense_ffn<K: Kernels>(
    pass: &mut Pass<'_>,
    d: usize,
    f: &SwiGlu<'_>,
    st: &mut State<'_>,
    n: usize,
) {
    let (s, q, ffn) = (&mut st.s, &mut st.quant, &mut st.ffn);
    let a = K::prepare(&s.xb[..n * d], &[f.gate.ty, f.up.ty], q.in_q, q.in_d);
    let hid = Hidden {
        gate: ffn.hb,
        up: ffn.hb2,
        q: q.hid_q,
        d: q.hid_d,
        members: ffn.members,
    };
    swiglu::<K>(pass, f, &a, n, hid, &mut s.xb2[..n * d]);
}

/// Routes all `n * h` sub-tokens of the batch (prepared in `subs`), reading the router
/// weights once: logits into `probs` (`[n*h][E]`), softmax per sub-token, top-k into
/// `idx`/`gates` (`[n*h][k]`, renormalized if configured).
#[allow(clippy::too_many_arguments)]
fn route<K: Kernels>(
    pass: &mut Pass<'_>,
    c: &Config,
    router: &Router<'_>,
    subs: &Act<'_>,
    n_subs: usize,
    scratch: (&mut [f32], &mut [f32], &mut [f32], &mut [u32]),
    idx: &mut [u32],
    gates: &mut [f32],
) -> TokenResult<()> {
    let (e_n, k) = (c.n_experts, c.top_k);
    let (probs, red, row, members) = scratch;
    let probs = &mut probs[..n_subs * e_n];
    match router {
        Router::Softmax(w) => pass.mm_batch::<K>(w, subs, members, n_subs, probs),
        Router::XMoe { reduce, experts } => {
            let r = reduce.rows;
            let z = &mut red[..n_subs * r];
            pass.mm_batch::<K>(reduce, subs, members, n_subs, z);
            // logits_e = z . (W_e / max(||W_e||, 1e-4)), as (z . W_e) * (1 / norm); each
            // expert embedding is widened once and used for every sub-token.
            let row = &mut row[..r];
            for e in 0..e_n {
                experts.dequantize_row(e, row);
                let sq = K::dot_f32(row, row);
                // An overflowing norm would make the scale 0 and the logit silently 0.
                if !sq.is_finite() {
                    return Err(TokenError::NonFinite(NonFinite::Router));
                }
                let inv = 1.0 / libm::sqrtf(sq).max(1e-4);
                for j in 0..n_subs {
                    probs[j * e_n + e] = K::dot_f32(&z[j * r..(j + 1) * r], row) * inv;
                }
            }
            pass.bytes += experts.data.len() as u64;
        }
    }
    for j in 0..n_subs {
        let p = &mut probs[j * e_n..(j + 1) * e_n];
        // A -inf logit would silently become a probability of 0: all must be finite.
        if !p.iter().all(|v| v.is_finite()) || !K::softmax(p).is_finite() {
            return Err(TokenError::NonFinite(NonFinite::Router));
        }
        let (idx, gates) = (&mut idx[j * k..(j + 1) * k], &mut gates[j * k..(j + 1) * k]);
        K::top_k(p, idx, gates);
        if c.renormalize_gates {
            let sum = gates.iter().fold(0.0f32, |acc, &g| acc + g);
            for g in gates.iter_mut() {
                *g /= sum;
            }
        }
    }
    Ok(())
}

/// One MH-MoE layer on the `n` normed tokens in `xb`; the result goes to `xb2[..n * d]`.
///
/// Experts are grouped over the whole batch: all sub-tokens routed to one expert are computed
/// together, so each chosen expert's weights are read once per batch. Each sub-token's expert
/// outputs are then summed in its own choice order, so the result is the same as computing
/// them one by one.
fn moe_layer<K: Kernels>(
    pass: &mut Pass<'_>,
    c: &Config,
    layer: usize,
    moe: &Moe<'_>,
    st: &mut State<'_>,
    n: usize,
) -> TokenResult<()> {
    let (d, m, k, h) = (c.dim, c.sub_dim(), c.top_k, c.moe_heads);
    let (pairs, f) = (n * h * k, c.expert_ff_dim);
    let (s, q, ffn) = (&mut st.s, &mut st.quant, &mut st.ffn);

    // 1. head linear (h > 1), else the tokens themselves.
    if let Some((w, b)) = &moe.head {
        let a = K::prepare(&s.xb[..n * d], &[w.ty], q.in_q, q.in_d);
        pass.mm_batch::<K>(w, &a, ffn.members, n, &mut ffn.xh[..n * d]);
        for xh in ffn.xh[..n * d].chunks_exact_mut(d) {
            add_bias(xh, b);
        }
    } else {
        ffn.xh[..n * d].copy_from_slice(&s.xb[..n * d]);
    }

    // 2-3. route every sub-token. The sub-tokens are contiguous m-wide slices of xh, and m is a
    // multiple of 32 whenever a consumer is quantized, so quantizing xh once quantizes each
    // sub-token exactly as quantizing it alone would.
    let router_ty = match &moe.router {
        Router::Softmax(w) => w.ty,
        Router::XMoe { reduce, .. } => reduce.ty,
    };
    let types = [router_ty, moe.gate.all.ty, moe.up.all.ty];
    let subs = K::prepare(&ffn.xh[..n * d], &types, q.in_q, q.in_d);
    let base = layer * st.plan.batch() * h * k;
    let (idx, gates) = (
        &mut st.routes.idx[base..base + pairs],
        &mut st.routes.gates[base..base + pairs],
    );
    let scratch = (
        &mut *ffn.router,
        &mut *ffn.router_red,
        &mut *ffn.sub_out,
        &mut *ffn.members,
    );
    route::<K>(pass, c, &moe.router, &subs, n * h, scratch, idx, gates)?;

    // 4. every chosen expert once, on all of its sub-tokens in the batch (pair p = sub-token
    // p / k's choice p % k).
    let (gate_out, up_out) = (&mut ffn.hb[..pairs * f], &mut ffn.hb2[..pairs * f]);
    let y = &mut ffn.sub_out[..pairs * m];
    for e in 0..c.n_experts {
        let mut count = 0;
        for (p, &ix) in idx.iter().enumerate() {
            if ix as usize == e {
                ffn.members[count] = p as u32;
                count += 1;
            }
        }
        if count == 0 {
            continue;
        }
        let members = &ffn.members[..count];
        let (gate, up) = (moe.gate.get(e), moe.up.get(e));
        pass.mm_each::<K, 2>([&gate, &up], &subs, members, k, [gate_out, up_out]);
        let down = moe.down.get(e);
        for &p in members {
            let r = p as usize * f..(p as usize + 1) * f;
            K::silu_mul(&mut gate_out[r.clone()], &up_out[r.clone()]);
            // Quantize each member's hidden vector (blocks never straddle members: F is a
            // multiple of 32 whenever `down` is quantized).
            if down.ty.is_quantized() {
                let rb = p as usize * f / QK..(p as usize + 1) * f / QK;
                K::quantize_q8_0(&gate_out[r.clone()], &mut q.hid_q[r], &mut q.hid_d[rb]);
            }
        }
        let hidden = Act {
            x: gate_out,
            q: if down.ty.is_quantized() {
                &q.hid_q[..pairs * f]
            } else {
                &[]
            },
            d: if down.ty.is_quantized() {
                &q.hid_d[..pairs * f / QK]
            } else {
                &[]
            },
        };
        pass.mm::<K>(&down, &hidden, members, 1, y);
    }

    // 5. each sub-token's gate-weighted sum, in its choice order.
    for (j, o) in ffn.moe_out[..n * d].chunks_exact_mut(m).enumerate() {
        o.fill(0.0);
        for i in 0..k {
            let p = j * k + i;
            K::axpy(o, gates[p], &y[p * m..(p + 1) * m]);
        }
    }

    // 6. merge linear (h > 1), else the concatenation itself.
    let out = &mut s.xb2[..n * d];
    if let Some((w, b)) = &moe.merge {
        let a = K::prepare(&ffn.moe_out[..n * d], &[w.ty], q.in_q, q.in_d);
        pass.mm_batch::<K>(w, &a, ffn.members, n, out);
        for o in out.chunks_exact_mut(d) {
            add_bias(o, b);
        }
    } else {
        out.copy_from_slice(&ffn.moe_out[..n * d]);
    }

    // Optional shared expert on the full normed tokens, added to the output.
    if let Some(sh) = &moe.shared {
        let types = [sh.gate.ty, sh.up.ty];
        let a = K::prepare(&s.xb[..n * d], &types, q.in_q, q.in_d);
        let hid = Hidden {
            gate: ffn.hb,
            up: ffn.hb2,
            q: q.hid_q,
            d: q.hid_d,
            members: ffn.members,
        };
        let so = &mut ffn.sub_out[..n * d];
        swiglu::<K>(pass, sh, &a, n, hid, so);
        for (o, &v) in out.iter_mut().zip(so.iter()) {
            *o += v;
        }
    }
    Ok(())
}
