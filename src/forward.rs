//! The forward pass of one token, top to bottom (FORMAT.md, "Forward pass").
//!
//! [`forward`] picks the instruction set once ([`Isa::active`]) and runs `forward_with`
//! monomorphized for it.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::kernels::scalar::{add_bias, rope};
use crate::kernels::{Act, Isa, Kernels, Out, Scalar};
use crate::model::{Ffn, Matrix, Model, Moe, Router, SwiGlu};
use crate::quant::QK;
use crate::state::{router_red_width, Plan, State};

/// Runs one token through the model at the state's next position and returns the logits,
/// using the active instruction set ([`Isa::active`]).
///
/// Errors: [`Error::TokenOutOfRange`], [`Error::ContextFull`] when every position of the state
/// is used (call [`State::reset`] to start over), [`Error::InvalidConfig`] when the state was
/// made for another model, and [`Error::NonFinite`] when a NaN or infinity (corrupt weights or
/// overflowing activations) reaches the logits, or appears where it would otherwise vanish:
/// an attention score or router logit (a softmax would turn -inf into a weight of 0), an
/// RMSNorm sum of squares (an overflow would scale the token to zeros) or an X-MoE expert
/// norm. On error the state's position does not advance.
pub fn forward<'s, const N: usize>(
    model: &Model<'_, N>,
    s: &'s mut State<'_>,
    token: u32,
) -> Result<&'s [f32]> {
    forward_on(Isa::active(), model, s, token)
}

/// [`forward`] on a given instruction set; fails if it is not available here.
pub fn forward_on<'s, const N: usize>(
    isa: Isa,
    model: &Model<'_, N>,
    s: &'s mut State<'_>,
    token: u32,
) -> Result<&'s [f32]> {
    if !isa.is_available() {
        return Err(Error::InvalidConfig {
            reason: "the requested instruction set is not available on this CPU or build",
        });
    }
    crate::with_isa!(isa, K => forward_with::<K, N>(model, s, token), _ => forward_with::<Scalar, N>(model, s, token))
}

/// `out[r] = row_r(w) . x` for every row, counting the bytes read.
#[inline]
fn gemv<K: Kernels>(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32], bytes: &mut u64) {
    K::gemv(w, a, out);
    *bytes += w.data.len() as u64;
}

/// `out = down(silu(gate x) * up x)` for one input prepared in `a`.
#[allow(clippy::too_many_arguments)]
fn swiglu<K: Kernels>(
    f: &SwiGlu<'_>,
    a: &Act<'_>,
    hb: &mut [f32],
    hb2: &mut [f32],
    hq: &mut [i8],
    hd: &mut [f32],
    out: &mut [f32],
    bytes: &mut u64,
) {
    let n = f.gate.rows;
    gemv::<K>(&f.gate, a, hb, bytes);
    gemv::<K>(&f.up, a, hb2, bytes);
    K::silu_mul(&mut hb[..n], &hb2[..n]);
    let h = K::prepare(&hb[..n], &[f.down.ty], hq, hd);
    gemv::<K>(&f.down, &h, out, bytes);
}

/// The forward pass with kernels `K`. Crate-private: callers go through [`forward_on`], which
/// checks that the ISA is available (ISA kernels may use instructions the CPU lacks).
pub(crate) fn forward_with<'s, K: Kernels, const N: usize>(
    model: &Model<'_, N>,
    s: &'s mut State<'_>,
    token: u32,
) -> Result<&'s [f32]> {
    let c: &Config = &model.config;
    if token as usize >= c.vocab_size {
        return Err(Error::TokenOutOfRange {
            token,
            vocab_size: c.vocab_size,
        });
    }
    if Plan::new(c, s.ctx, router_red_width(model.layers(), c))? != s.plan {
        return Err(Error::InvalidConfig {
            reason: "the state was made for a different model",
        });
    }
    let pos = s.pos;
    if pos >= s.ctx {
        return Err(Error::ContextFull {
            context_length: s.ctx,
        });
    }
    let (d, hd, kvd) = (c.dim, c.head_dim, c.kv_dim());
    let q_dim = c.n_heads * hd;
    let half = hd / 2;
    let mut bytes = 0u64;

    model.token_embd.dequantize_row(token as usize, s.x);
    bytes += model.token_embd.row_bytes() as u64;

    // RoPE tables for this position, shared by every layer and head.
    {
        let (cos, sin) = s.rope.split_at_mut(half);
        for j in 0..half {
            let freq = libm::powf(c.rope_base, -((2 * j) as f32) / hd as f32);
            let theta = pos as f32 * freq;
            cos[j] = libm::cosf(theta);
            sin[j] = libm::sinf(theta);
        }
    }
    let inv_sqrt_hd = 1.0 / libm::sqrtf(hd as f32);
    let group = c.n_heads / c.n_kv_heads;

    for (l, layer) in model.layers().iter().enumerate() {
        // ---- attention ----
        norm::<K>(&mut s.xb[..d], &s.x[..d], layer.attn_norm, c.norm_eps)?;
        let a = K::prepare(
            &s.xb[..d],
            &[layer.wq.ty, layer.wk.ty, layer.wv.ty],
            s.in_q,
            s.in_d,
        );
        let slot = (l * s.ctx + pos) * kvd;
        gemv::<K>(&layer.wq, &a, s.q, &mut bytes);
        gemv::<K>(
            &layer.wk,
            &a,
            &mut s.key_cache[slot..slot + kvd],
            &mut bytes,
        );
        gemv::<K>(
            &layer.wv,
            &a,
            &mut s.value_cache[slot..slot + kvd],
            &mut bytes,
        );
        let (cos, sin) = s.rope.split_at(half);
        rope(&mut s.q[..q_dim], hd, cos, sin);
        rope(&mut s.key_cache[slot..slot + kvd], hd, cos, sin);

        let layer_base = l * s.ctx * kvd;
        for h in 0..c.n_heads {
            let qh = &s.q[h * hd..(h + 1) * hd];
            let kv_off = layer_base + (h / group) * hd;
            let att = &mut s.att[h * s.ctx..h * s.ctx + pos + 1];
            let mut finite = true;
            for (p, a) in att.iter_mut().enumerate() {
                let k = &s.key_cache[kv_off + p * kvd..kv_off + p * kvd + hd];
                *a = K::dot_f32(qh, k) * inv_sqrt_hd;
                finite &= a.is_finite();
            }
            // A -inf score would silently get the weight 0.
            if !finite {
                return Err(Error::NonFinite {
                    what: "attention scores",
                });
            }
            K::softmax(att);
            let out = &mut s.xb2[h * hd..(h + 1) * hd];
            out.fill(0.0);
            for (p, &w) in att.iter().enumerate() {
                K::axpy(
                    out,
                    w,
                    &s.value_cache[kv_off + p * kvd..kv_off + p * kvd + hd],
                );
            }
        }
        let a = K::prepare(&s.xb2[..q_dim], &[layer.wo.ty], s.in_q, s.in_d);
        gemv::<K>(&layer.wo, &a, s.xb, &mut bytes);
        for (x, &v) in s.x[..d].iter_mut().zip(s.xb.iter()) {
            *x += v;
        }

        // ---- feed-forward ----
        norm::<K>(&mut s.xb[..d], &s.x[..d], layer.ffn_norm, c.norm_eps)?;
        match &layer.ffn {
            Ffn::Dense(f) => {
                let a = K::prepare(&s.xb[..d], &[f.gate.ty, f.up.ty], s.in_q, s.in_d);
                swiglu::<K>(
                    f,
                    &a,
                    s.hb,
                    s.hb2,
                    s.hid_q,
                    s.hid_d,
                    &mut s.xb2[..d],
                    &mut bytes,
                );
            }
            Ffn::Moe(moe) => moe_layer::<K>(c, l, moe, s, &mut bytes)?,
        }
        for (x, &v) in s.x[..d].iter_mut().zip(s.xb2.iter()) {
            *x += v;
        }
    }

    norm::<K>(&mut s.xb[..d], &s.x[..d], model.output_norm, c.norm_eps)?;
    let a = K::prepare(&s.xb[..d], &[model.output.ty], s.in_q, s.in_d);
    gemv::<K>(&model.output, &a, s.logits, &mut bytes);
    s.weight_bytes = bytes;
    if !s.logits.iter().all(|v| v.is_finite()) {
        return Err(Error::NonFinite { what: "logits" });
    }
    s.pos = pos + 1;
    Ok(s.logits)
}

/// `out = rmsnorm(x) * w`, failing if the sum of squares of `x` is not finite: an overflowing
/// sum would make the scale 0 and silently turn a finite token into zeros. The kernel returns
/// the mean of squares it used, so the check costs nothing and rejects exactly the inputs whose
/// scale would not be finite and positive.
#[inline]
fn norm<K: Kernels>(out: &mut [f32], x: &[f32], w: &[u8], eps: f32) -> Result<()> {
    if !K::rmsnorm(out, x, w, eps).is_finite() {
        return Err(Error::NonFinite {
            what: "activations (RMSNorm sum of squares)",
        });
    }
    Ok(())
}

/// Routes all `h` sub-tokens (prepared as a batch in `subs`), reading the router weights once:
/// logits into `probs` (`[h][E]`), softmax per sub-token, top-k into `idx`/`gates`
/// (`[h][k]`, renormalized if configured).
#[allow(clippy::too_many_arguments)]
fn route<K: Kernels>(
    c: &Config,
    router: &Router<'_>,
    subs: &Act<'_>,
    members: &mut [u32],
    probs: &mut [f32],
    red: &mut [f32],
    row: &mut [f32],
    idx: &mut [u32],
    gates: &mut [f32],
    bytes: &mut u64,
) -> Result<()> {
    let (h, e_n, k) = (c.moe_heads, c.n_experts, c.top_k);
    let members = &mut members[..h];
    for (j, m) in members.iter_mut().enumerate() {
        *m = j as u32;
    }
    let probs = &mut probs[..h * e_n];
    match router {
        Router::Softmax(w) => gemv_group::<K>(w, members, 1, subs.x, subs.q, subs.d, probs, bytes),
        Router::XMoe { reduce, experts } => {
            let r = reduce.rows;
            let z = &mut red[..h * r];
            gemv_group::<K>(reduce, members, 1, subs.x, subs.q, subs.d, z, bytes);
            // logits_e = z . (W_e / max(||W_e||, 1e-4)), as (z . W_e) * (1 / norm); each
            // expert embedding is widened once and used for every sub-token.
            let row = &mut row[..r];
            for e in 0..e_n {
                experts.dequantize_row(e, row);
                let sq = K::dot_f32(row, row);
                // An overflowing norm would make the scale 0 and the logit silently 0.
                if !sq.is_finite() {
                    return Err(Error::NonFinite { what: "router" });
                }
                let inv = 1.0 / libm::sqrtf(sq).max(1e-4);
                for j in 0..h {
                    probs[j * e_n + e] = K::dot_f32(&z[j * r..(j + 1) * r], row) * inv;
                }
            }
            *bytes += experts.data.len() as u64;
        }
    }
    for j in 0..h {
        let p = &mut probs[j * e_n..(j + 1) * e_n];
        // A -inf logit would silently become a probability of 0: all must be finite.
        if !p.iter().all(|v| v.is_finite()) || !K::softmax(p).is_finite() {
            return Err(Error::NonFinite { what: "router" });
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

/// Expert matrix `w` applied to every member of one expert group, reading each weight row once
/// ([`Kernels::gemv_group`]), counting the bytes read.
#[allow(clippy::too_many_arguments)]
fn gemv_group<K: Kernels>(
    w: &Matrix<'_>,
    members: &[u32],
    in_div: usize,
    x: &[f32],
    q: &[i8],
    d: &[f32],
    out: &mut [f32],
    bytes: &mut u64,
) {
    K::gemv_group(
        w,
        &Act { x, q, d },
        members,
        in_div,
        &mut Out::new(out, w.rows),
    );
    *bytes += w.data.len() as u64;
}

/// One MH-MoE layer on the normed token in `s.xb`; the result goes to `s.xb2[..d]`.
///
/// Experts are grouped: all sub-tokens routed to one expert are computed together, so each
/// chosen expert's weights are read once per token. Each sub-token's expert outputs are then
/// summed in its own choice order, so the result is the same as computing them one by one.
fn moe_layer<K: Kernels>(
    c: &Config,
    layer: usize,
    moe: &Moe<'_>,
    s: &mut State<'_>,
    bytes: &mut u64,
) -> Result<()> {
    let (d, m, k, h) = (c.dim, c.sub_dim(), c.top_k, c.moe_heads);
    let pairs = h * k;
    let f = c.expert_ff_dim;

    // 1. head linear (h > 1), else the token itself.
    if let Some((w, b)) = &moe.head {
        let a = K::prepare(&s.xb[..d], &[w.ty], s.in_q, s.in_d);
        gemv::<K>(w, &a, s.xh, bytes);
        add_bias(&mut s.xh[..d], b);
    } else {
        s.xh[..d].copy_from_slice(&s.xb[..d]);
    }

    // 2-3. route every sub-token. The sub-tokens are contiguous m-wide slices of xh, and m is a
    // multiple of 32 whenever a consumer is quantized, so quantizing xh once quantizes each
    // sub-token exactly as quantizing it alone would.
    let router_ty = match &moe.router {
        Router::Softmax(w) => w.ty,
        Router::XMoe { reduce, .. } => reduce.ty,
    };
    let types = [router_ty, moe.gate.all.ty, moe.up.all.ty];
    let subs = K::prepare(&s.xh[..d], &types, s.in_q, s.in_d);
    let routes = layer * pairs..(layer + 1) * pairs;
    let (all_idx, all_gates) = (&mut s.topk_idx[routes.clone()], &mut s.topk_w[routes]);
    route::<K>(
        c,
        &moe.router,
        &subs,
        s.members,
        s.router,
        s.router_red,
        s.sub_out,
        all_idx,
        all_gates,
        bytes,
    )?;

    // 4. every chosen expert once, on all of its sub-tokens.
    let (gate_out, up_out) = (&mut s.hb[..pairs * f], &mut s.hb2[..pairs * f]);
    let y = &mut s.sub_out[..pairs * m];
    for e in 0..c.n_experts {
        let mut n = 0;
        for (p, &ix) in all_idx.iter().enumerate() {
            if ix as usize == e {
                s.members[n] = p as u32;
                n += 1;
            }
        }
        if n == 0 {
            continue;
        }
        let members = &s.members[..n];
        gemv_group::<K>(
            &moe.gate.get(e),
            members,
            k,
            subs.x,
            subs.q,
            subs.d,
            gate_out,
            bytes,
        );
        gemv_group::<K>(
            &moe.up.get(e),
            members,
            k,
            subs.x,
            subs.q,
            subs.d,
            up_out,
            bytes,
        );
        for &p in members {
            let r = p as usize * f..(p as usize + 1) * f;
            K::silu_mul(&mut gate_out[r.clone()], &up_out[r]);
        }
        // Quantize each member's hidden vector in place in the hidden buffers (blocks never
        // straddle members: F is a multiple of 32 whenever `down` is quantized).
        let down = moe.down.get(e);
        if down.ty.is_quantized() {
            for &p in members {
                let (r, rb) = (p as usize * f..(p as usize + 1) * f, p as usize * f / QK);
                K::quantize_q8_0(
                    &gate_out[r.clone()],
                    &mut s.hid_q[r],
                    &mut s.hid_d[rb..rb + f / QK],
                );
            }
        }
        let (hq, hd): (&[i8], &[f32]) = if down.ty.is_quantized() {
            (&s.hid_q[..pairs * f], &s.hid_d[..pairs * f / QK])
        } else {
            (&[], &[])
        };
        gemv_group::<K>(&down, members, 1, gate_out, hq, hd, y, bytes);
    }

    // 5. each sub-token's gate-weighted sum, in its choice order.
    for j in 0..h {
        let o = &mut s.moe_out[j * m..(j + 1) * m];
        o.fill(0.0);
        for i in 0..k {
            let p = j * k + i;
            K::axpy(o, all_gates[p], &y[p * m..(p + 1) * m]);
        }
    }

    // 6. merge linear (h > 1), else the concatenation itself.
    let out = &mut s.xb2[..d];
    if let Some((w, b)) = &moe.merge {
        let a = K::prepare(&s.moe_out[..d], &[w.ty], s.in_q, s.in_d);
        gemv::<K>(w, &a, out, bytes);
        add_bias(out, b);
    } else {
        out.copy_from_slice(&s.moe_out[..d]);
    }

    // Optional shared expert on the full normed token, added to the output.
    if let Some(sh) = &moe.shared {
        let a = K::prepare(&s.xb[..d], &[sh.gate.ty, sh.up.ty], s.in_q, s.in_d);
        let so = &mut s.sub_out[..d];
        swiglu::<K>(sh, &a, s.hb, s.hb2, s.hid_q, s.hid_d, so, bytes);
        for (o, &v) in out.iter_mut().zip(so.iter()) {
            *o += v;
        }
    }
    Ok(())
}
