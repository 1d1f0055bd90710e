//! The forward pass of one token, top to bottom (FORMAT.md, "Forward pass").

use crate::config::Config;
use crate::error::{Error, Result};
use crate::kernels::{add_bias, dot_f32, dot_row, rmsnorm, rope, silu_mul, softmax, top_k, Act};
use crate::model::{Matrix, Model, Moe, Router, SwiGlu};
use crate::state::{router_red_width, Plan, State};

/// `out[r] = row_r(w) . x` for every row.
fn matvec(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32]) {
    for (r, o) in out[..w.rows].iter_mut().enumerate() {
        *o = dot_row(w.ty, w.row(r), a);
    }
}

/// The two Q8_0 activation buffers of the state: index 0 for layer inputs, 1 for hidden
/// activations (needed while an input stays prepared).
fn qbufs<'s>(qvals: &'s mut [i8], qscales: &'s mut [f32]) -> [(&'s mut [i8], &'s mut [f32]); 2] {
    let (q0, q1) = qvals.split_at_mut(qvals.len() / 2);
    let (d0, d1) = qscales.split_at_mut(qscales.len() / 2);
    [(q0, d0), (q1, d1)]
}

/// `out = down(silu(gate x) * up x)`, with `x` prepared in `a`.
fn swiglu(
    f: &SwiGlu<'_>,
    a: &Act<'_>,
    hb: &mut [f32],
    hb2: &mut [f32],
    hq: (&mut [i8], &mut [f32]),
    out: &mut [f32],
) {
    let n = f.gate.rows;
    matvec(&f.gate, a, hb);
    matvec(&f.up, a, hb2);
    silu_mul(&mut hb[..n], &hb2[..n]);
    let h = Act::prepare(&hb[..n], &[f.down.ty], hq.0, hq.1);
    matvec(&f.down, &h, out);
}

/// Runs one token through the model at the state's next position and returns the logits.
///
/// Errors: [`Error::TokenOutOfRange`], [`Error::ContextFull`] when every position of the state
/// is used (call [`State::reset`] to start over), [`Error::InvalidConfig`] when the state was
/// made for another model, and [`Error::NonFinite`] when the router or the logits are not
/// finite (corrupt weights or overflowing activations). On error the state's position does not
/// advance.
pub fn forward<'s, const N: usize>(
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

    model.token_embd.dequantize_row(token as usize, s.x);

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
        let [iq, hq] = qbufs(s.qvals, s.qscales);
        rmsnorm(&mut s.xb[..d], &s.x[..d], layer.attn_norm, c.norm_eps);
        let a = Act::prepare(
            &s.xb[..d],
            &[layer.wq.ty, layer.wk.ty, layer.wv.ty],
            iq.0,
            iq.1,
        );
        let slot = (l * s.ctx + pos) * kvd;
        matvec(&layer.wq, &a, s.q);
        matvec(&layer.wk, &a, &mut s.key_cache[slot..slot + kvd]);
        matvec(&layer.wv, &a, &mut s.value_cache[slot..slot + kvd]);
        let (cos, sin) = s.rope.split_at(half);
        rope(&mut s.q[..q_dim], hd, cos, sin);
        rope(&mut s.key_cache[slot..slot + kvd], hd, cos, sin);

        let layer_base = l * s.ctx * kvd;
        for h in 0..c.n_heads {
            let qh = &s.q[h * hd..(h + 1) * hd];
            let kv_off = layer_base + (h / group) * hd;
            let att = &mut s.att[h * s.ctx..h * s.ctx + pos + 1];
            for (p, a) in att.iter_mut().enumerate() {
                let k = &s.key_cache[kv_off + p * kvd..kv_off + p * kvd + hd];
                *a = dot_f32(qh, k) * inv_sqrt_hd;
            }
            softmax(att);
            let out = &mut s.xb2[h * hd..(h + 1) * hd];
            out.fill(0.0);
            for (p, &w) in att.iter().enumerate() {
                let v = &s.value_cache[kv_off + p * kvd..kv_off + p * kvd + hd];
                for (o, &vv) in out.iter_mut().zip(v) {
                    *o += w * vv;
                }
            }
        }
        let a = Act::prepare(&s.xb2[..q_dim], &[layer.wo.ty], hq.0, hq.1);
        matvec(&layer.wo, &a, s.xb);
        for (x, &v) in s.x[..d].iter_mut().zip(s.xb.iter()) {
            *x += v;
        }

        // ---- feed-forward ----
        let [iq, hq] = qbufs(s.qvals, s.qscales);
        rmsnorm(&mut s.xb[..d], &s.x[..d], layer.ffn_norm, c.norm_eps);
        match &layer.ffn {
            crate::model::Ffn::Dense(f) => {
                let a = Act::prepare(&s.xb[..d], &[f.gate.ty, f.up.ty], iq.0, iq.1);
                swiglu(f, &a, s.hb, s.hb2, hq, &mut s.xb2[..d]);
            }
            crate::model::Ffn::Moe(moe) => moe_layer(c, moe, s)?,
        }
        for (x, &v) in s.x[..d].iter_mut().zip(s.xb2.iter()) {
            *x += v;
        }
    }

    let [iq, _] = qbufs(s.qvals, s.qscales);
    rmsnorm(&mut s.xb[..d], &s.x[..d], model.output_norm, c.norm_eps);
    let a = Act::prepare(&s.xb[..d], &[model.output.ty], iq.0, iq.1);
    matvec(&model.output, &a, s.logits);
    if !s.logits.iter().all(|v| v.is_finite()) {
        return Err(Error::NonFinite { what: "logits" });
    }
    s.pos = pos + 1;
    Ok(s.logits)
}

/// One MH-MoE layer on the normed token in `s.xb`; the result goes to `s.xb2[..d]`.
fn moe_layer(c: &Config, moe: &Moe<'_>, s: &mut State<'_>) -> Result<()> {
    let (d, m, k) = (c.dim, c.sub_dim(), c.top_k);

    // 1. head linear (h > 1), else the token itself.
    if let Some((w, b)) = &moe.head {
        let [iq, _] = qbufs(s.qvals, s.qscales);
        let a = Act::prepare(&s.xb[..d], &[w.ty], iq.0, iq.1);
        matvec(w, &a, s.xh);
        add_bias(&mut s.xh[..d], b);
    } else {
        s.xh[..d].copy_from_slice(&s.xb[..d]);
    }

    // 2-5. route each sub-token and mix its experts.
    for j in 0..c.moe_heads {
        let sub = &s.xh[j * m..(j + 1) * m];
        let [iq, hq] = qbufs(s.qvals, s.qscales);
        let probs = &mut s.router[..c.n_experts];
        match &moe.router {
            Router::Softmax(w) => {
                let a = Act::prepare(sub, &[w.ty], iq.0, iq.1);
                matvec(w, &a, probs);
            }
            Router::XMoe { reduce, experts } => {
                let a = Act::prepare(sub, &[reduce.ty], &mut *iq.0, &mut *iq.1);
                let z = &mut s.router_red[..reduce.rows];
                matvec(reduce, &a, z);
                // logits_e = z . (W_e / max(||W_e||, 1e-4)); the row is widened into sub_out
                // (the loader checks r <= d).
                let row = &mut s.sub_out[..reduce.rows];
                for (e, p) in probs.iter_mut().enumerate() {
                    experts.dequantize_row(e, row);
                    let norm = libm::sqrtf(dot_f32(row, row)).max(1e-4);
                    *p = dot_f32(z, row) * (1.0 / norm);
                }
            }
        }
        if !softmax(probs).is_finite() {
            return Err(Error::NonFinite { what: "router" });
        }
        let (idx, gates) = (&mut s.topk_idx[..k], &mut s.topk_w[..k]);
        top_k(probs, idx, gates);
        if c.renormalize_gates {
            let sum = gates.iter().fold(0.0f32, |acc, &g| acc + g);
            for g in gates.iter_mut() {
                *g /= sum;
            }
        }

        let a = Act::prepare(sub, &[moe.gate.all.ty, moe.up.all.ty], iq.0, iq.1);
        let o = &mut s.moe_out[j * m..(j + 1) * m];
        o.fill(0.0);
        for (&e, &g) in idx.iter().zip(gates.iter()) {
            let e = e as usize;
            let expert = SwiGlu {
                gate: moe.gate.get(e),
                up: moe.up.get(e),
                down: moe.down.get(e),
            };
            swiglu(
                &expert,
                &a,
                s.hb,
                s.hb2,
                (&mut *hq.0, &mut *hq.1),
                &mut s.sub_out[..m],
            );
            for (o, &y) in o.iter_mut().zip(s.sub_out.iter()) {
                *o += g * y;
            }
        }
    }

    // 6. merge linear (h > 1), else the concatenation itself.
    let [iq, hq] = qbufs(s.qvals, s.qscales);
    let out = &mut s.xb2[..d];
    if let Some((w, b)) = &moe.merge {
        let a = Act::prepare(&s.moe_out[..d], &[w.ty], &mut *iq.0, &mut *iq.1);
        matvec(w, &a, out);
        add_bias(out, b);
    } else {
        out.copy_from_slice(&s.moe_out[..d]);
    }

    // Optional shared expert on the full normed token, added to the output.
    if let Some(f) = &moe.shared {
        let a = Act::prepare(&s.xb[..d], &[f.gate.ty, f.up.ty], iq.0, iq.1);
        swiglu(f, &a, s.hb, s.hb2, hq, &mut s.sub_out[..d]);
        for (o, &v) in out.iter_mut().zip(s.sub_out.iter()) {
            *o += v;
        }
    }
    Ok(())
}
