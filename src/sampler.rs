//! Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling
//! with a seeded, portable random number generator. No allocation.
//!
//! # Determinism
//!
//! For a given seed, parameters and logits, [`Sampler::sample`] returns the same token on every
//! target: the generator is integer-only ([`Pcg32`]); the weights are `libm::expf((l - max) / T)`
//! (libm is a software implementation, the same everywhere) combined with plain `f32` additions
//! and multiplications in a fixed order (IEEE-754 binary32, round to nearest; Rust never fuses
//! them into FMAs); candidates are ordered by a total order (logit descending, then id
//! ascending), so the unstable sorts give one result. Each sampling call with `temperature > 0`
//! draws exactly one `u32` from the generator; greedy calls draw none.
//!
//! # Memory and time
//!
//! Greedy, and temperature sampling without top-k/top-p, need no scratch and take `O(V)` time
//! for `V` logits (`2 V` `expf` calls). With top-k or top-p the caller lends a `&mut [u32]` of
//! at least `V` words ([`Sampler::scratch_len`]) for candidate ids: top-k alone takes
//! `O(V + k log k)` (selection, then sorting the `k` survivors), top-p `O(V log V)` (or
//! `O(V + k log k)` combined with top-k).

use crate::error::{Error, NonFinite, Result, TokenError};

/// PCG32 (PCG-XSH-RR 64/32 by M. E. O'Neill): a 64-bit linear congruential state
/// `s = s * 6364136223846793005 + inc`, output `rotr32(((s >> 18) ^ s) >> 27, s >> 59)` of the
/// old state. Seeding follows the reference `pcg32_srandom_r(seed, stream)`.
///
/// Integer-only, so the sequence for a seed is identical on every target. Not cryptographic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcg32 {
    state: u64,
    inc: u64,
}

impl Pcg32 {
    const MULTIPLIER: u64 = 6_364_136_223_846_793_005;
    /// The stream [`Pcg32::new`] uses (the one of the reference demo program).
    pub const DEFAULT_STREAM: u64 = 54;

    /// A generator for `seed` on [`Pcg32::DEFAULT_STREAM`].
    pub const fn new(seed: u64) -> Self {
        Self::with_stream(seed, Self::DEFAULT_STREAM)
    }

    /// A generator for `seed` on stream `stream` (only its low 63 bits matter); different
    /// streams give unrelated sequences for the same seed.
    pub const fn with_stream(seed: u64, stream: u64) -> Self {
        let mut rng = Pcg32 {
            state: 0,
            inc: (stream << 1) | 1,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(seed);
        rng.step();
        rng
    }

    const fn step(&mut self) {
        self.state = self
            .state
            .wrapping_mul(Self::MULTIPLIER)
            .wrapping_add(self.inc);
    }

    /// The next 32 random bits.
    pub const fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.step();
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        xorshifted.rotate_right((old >> 59) as u32)
    }

    /// A uniform `f32` in `[0, 1)`: the top 24 bits of [`Pcg32::next_u32`] times `2^-24`, so
    /// every value is exact and a multiple of `2^-24`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
    }
}

/// Sampling parameters. Build them with a struct literal or start from
/// [`SamplerParams::GREEDY`]; [`SamplerParams::validate`] (called by the [`Sampler`]) checks them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerParams {
    /// Softmax temperature: `0` means greedy (argmax, ties to the lowest id); otherwise finite
    /// and positive; probabilities are `softmax(logits / temperature)`.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (ties to the lower id); `0` keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability (after top-k) reaches
    /// `top_p`; in `(0, 1]`, `1` keeps all.
    pub top_p: f32,
}

impl SamplerParams {
    /// Argmax decoding.
    pub const GREEDY: SamplerParams = SamplerParams {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
    };

    /// Checks the ranges documented on the fields.
    ///
    /// # Errors
    /// [`Error::BadSamplerParams`] naming the broken rule.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::BadSamplerParams {
                reason: "temperature must be finite and >= 0",
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::BadSamplerParams {
                reason: "top_p must be in (0, 1]",
            });
        }
        Ok(())
    }

    /// True if sampling with these parameters reduces to argmax (temperature 0 or top-k 1).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// True if [`Sampler::sample`] needs scratch with these parameters.
    pub fn needs_scratch(&self) -> bool {
        !self.is_greedy() && (self.top_k > 0 || self.top_p < 1.0)
    }
}

/// Argmax of `logits`: the lowest id among the largest values.
///
/// # Errors
/// [`TokenError::NonFinite`] if a logit is NaN or `+inf`, or all are `-inf`;
/// [`TokenError::NoLogits`] if `logits` is empty or longer than `u32::MAX`.
pub fn argmax(logits: &[f32]) -> core::result::Result<u32, TokenError> {
    Ok(scan(logits)?.argmax)
}

/// What one pass over the logits finds.
struct Scan {
    max: f32,
    argmax: u32,
}

fn scan(logits: &[f32]) -> core::result::Result<Scan, TokenError> {
    if logits.is_empty() || u32::try_from(logits.len()).is_err() {
        return Err(TokenError::NoLogits);
    }
    let mut max = f32::NEG_INFINITY;
    let mut argmax = 0u32;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() || l == f32::INFINITY {
            return Err(TokenError::NonFinite(NonFinite::SampledNanOrInf));
        }
        if l > max {
            max = l;
            argmax = i as u32; // len <= u32::MAX checked above
        }
    }
    if max == f32::NEG_INFINITY {
        return Err(TokenError::NonFinite(NonFinite::SampledAllNegInf));
    }
    Ok(Scan { max, argmax })
}

/// A seeded sampler: parameters plus a [`Pcg32`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    params: SamplerParams,
    rng: Pcg32,
}

impl Sampler {
    /// A sampler with validated `params`, its generator seeded with `seed`
    /// ([`Pcg32::new`]).
    ///
    /// # Errors
    /// [`Error::BadSamplerParams`] from [`SamplerParams::validate`].
    pub fn new(params: SamplerParams, seed: u64) -> Result<Self> {
        params.validate()?;
        Ok(Sampler {
            params,
            rng: Pcg32::new(seed),
        })
    }

    /// A greedy sampler (it never draws random numbers).
    pub const fn greedy() -> Self {
        Sampler {
            params: SamplerParams::GREEDY,
            rng: Pcg32::new(0),
        }
    }

    /// The current parameters.
    pub fn params(&self) -> SamplerParams {
        self.params
    }

    /// Replaces the parameters (the generator state is kept).
    ///
    /// # Errors
    /// [`Error::BadSamplerParams`]; the old parameters stay in place.
    pub fn set_params(&mut self, params: SamplerParams) -> Result<()> {
        params.validate()?;
        self.params = params;
        Ok(())
    }

    /// The generator, e.g. to reseed it (`*s.rng_mut() = Pcg32::new(seed)`).
    pub fn rng_mut(&mut self) -> &mut Pcg32 {
        &mut self.rng
    }

    /// Scratch words [`Sampler::sample`] needs for `n_vocab` logits: `n_vocab` with top-k or
    /// top-p, else 0.
    pub fn scratch_len(&self, n_vocab: usize) -> usize {
        if self.params.needs_scratch() {
            n_vocab
        } else {
            0
        }
    }

    /// Picks a token id from `logits` (one per vocabulary entry).
    ///
    /// Greedy (temperature 0 or top-k 1) returns the argmax. Otherwise the weights are
    /// `w_i = expf((l_i - max) / temperature)`; top-k keeps the `k` largest logits (ties to the
    /// lower id); top-p then keeps the shortest prefix of the candidates, sorted by descending
    /// logit, whose weight sum reaches `top_p` times the total; one uniform `u` in `[0, 1)`
    /// picks the first candidate at which the running weight sum exceeds `u` times the kept
    /// total. Without top-k and top-p the candidates are all ids in increasing order and
    /// `scratch` is not used (it may be empty). `-inf` logits are allowed (probability 0).
    ///
    /// # Errors
    /// [`TokenError::NonFinite`] if a logit is NaN or `+inf`, or all are `-inf`;
    /// [`TokenError::NoLogits`] for empty logits (or more than `u32::MAX`);
    /// [`TokenError::ScratchTooSmall`] if `scratch` is shorter than [`Sampler::scratch_len`].
    pub fn sample(
        &mut self,
        logits: &[f32],
        scratch: &mut [u32],
    ) -> core::result::Result<u32, TokenError> {
        let Scan { max, argmax } = scan(logits)?;
        let p = self.params;
        if p.is_greedy() {
            return Ok(argmax);
        }
        let t = p.temperature;
        let weight = |l: f32| libm::expf((l - max) / t);
        let n = logits.len();
        if !p.needs_scratch() {
            let total = logits.iter().fold(0.0f32, |acc, &l| acc + weight(l));
            let ids = (0..n as u32).map(|id| (id, logits[id as usize]));
            return Ok(self.pick(ids, weight, total, argmax));
        }

        let got = scratch.len();
        let cands = scratch
            .get_mut(..n)
            .ok_or_else(|| TokenError::scratch_too_small(n, got))?;
        for (i, c) in cands.iter_mut().enumerate() {
            *c = i as u32;
        }
        let logit = |id: u32| {
            logits
                .get(id as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY)
        };
        // Descending logit, then ascending id: a total order (no NaN here), so the unstable
        // selection and sort give the same result on every target.
        let order = |a: &u32, b: &u32| {
            logit(*b)
                .partial_cmp(&logit(*a))
                .unwrap_or(core::cmp::Ordering::Equal)
                .then(a.cmp(b))
        };
        let k = if p.top_k == 0 { n } else { p.top_k.min(n) };
        if k < n {
            cands.select_nth_unstable_by(k - 1, order);
        }
        let cands = &mut cands[..k];
        cands.sort_unstable_by(order);

        let mut total = cands
            .iter()
            .fold(0.0f32, |acc, &id| acc + weight(logit(id)));
        let mut keep = k;
        if p.top_p < 1.0 {
            let threshold = p.top_p * total;
            let mut acc = 0.0f32;
            for (j, &id) in cands.iter().enumerate() {
                acc += weight(logit(id));
                if acc >= threshold {
                    keep = j + 1;
                    break;
                }
            }
            total = acc;
        }
        let ids = cands[..keep].iter().map(|&id| (id, logit(id)));
        Ok(self.pick(ids, weight, total, argmax))
    }

    /// Draws `u` and walks the candidates until the running weight sum exceeds `u * total`.
    /// `total` is the sum of the candidates' weights in the same order, so rounding can only
    /// matter at the very top end, where the last candidate of positive weight is taken.
    fn pick(
        &mut self,
        cands: impl Iterator<Item = (u32, f32)>,
        weight: impl Fn(f32) -> f32,
        total: f32,
        fallback: u32,
    ) -> u32 {
        let u = self.rng.next_f32() * total;
        let mut acc = 0.0f32;
        let mut last = fallback;
        for (id, l) in cands {
            let w = weight(l);
            if w > 0.0 {
                acc += w;
                last = id;
                if u < acc {
                    return id;
                }
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn params(temperature: f32, top_k: usize, top_p: f32) -> SamplerParams {
        SamplerParams {
            temperature,
            top_k,
            top_p,
        }
    }

    /// Softmax of `logits / t` in f64, restricted to `keep` (ids), renormalized.
    fn softmax(logits: &[f32], t: f64, keep: &[usize]) -> Vec<f64> {
        let max = keep
            .iter()
            .map(|&i| logits[i] as f64)
            .fold(f64::MIN, f64::max);
        let mut p = vec![0.0; logits.len()];
        for &i in keep {
            p[i] = ((logits[i] as f64 - max) / t).exp();
        }
        let z: f64 = p.iter().sum();
        p.iter().map(|x| x / z).collect()
    }

    fn frequencies(s: &mut Sampler, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut scratch = vec![0u32; s.scratch_len(logits.len())];
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[s.sample(logits, &mut scratch).unwrap() as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol,
                "id {i}: {g} vs {w} (all: {got:?} vs {want:?})"
            );
        }
    }

    const LOGITS: [f32; 6] = [1.0, 2.0, 0.5, -1.0, 3.0, f32::NEG_INFINITY];

    #[test]
    fn pcg32_matches_the_reference_vectors() {
        // pcg32_srandom_r(42, 54) in O'Neill's pcg32-demo.
        let mut r = Pcg32::with_stream(42, 54);
        let want = [
            0xa15c02b7, 0x7b47f409, 0xba1d3330, 0x83d2f293, 0xbfa4784b, 0xcbed606e,
        ];
        for w in want {
            assert_eq!(r.next_u32(), w);
        }
        assert_eq!(Pcg32::new(42), Pcg32::with_stream(42, 54));
        assert_ne!(Pcg32::new(1).next_u32(), Pcg32::new(2).next_u32());
    }

    #[test]
    fn pcg32_f32_is_24_bit_uniform_in_0_1() {
        let mut r = Pcg32::new(9);
        let mut sum = 0.0f64;
        for _ in 0..100_000 {
            let x = r.next_f32();
            assert!((0.0..1.0).contains(&x));
            assert_eq!(x * 16_777_216.0, (x * 16_777_216.0).trunc());
            sum += x as f64;
        }
        assert!((sum / 100_000.0 - 0.5).abs() < 0.005);
        // The largest value is 1 - 2^-24, still below 1.
        assert!(((u32::MAX >> 8) as f32 * (1.0 / 16_777_216.0)) < 1.0);
    }

    #[test]
    fn greedy_ties_go_to_the_lowest_id() {
        let mut s = Sampler::greedy();
        assert_eq!(s.sample(&[1.0, 3.0, 3.0, 2.0], &mut []), Ok(1));
        assert_eq!(s.sample(&[-0.0, 0.0], &mut []), Ok(0));
        assert_eq!(s.sample(&[f32::NEG_INFINITY, -5.0, -5.0], &mut []), Ok(1));
        assert_eq!(s.sample(&[7.0], &mut []), Ok(0));
        assert_eq!(argmax(&LOGITS), Ok(4));
        // Greedy never draws from the generator.
        assert_eq!(s.rng_mut().clone(), Pcg32::new(0));
    }

    #[test]
    fn top_k_1_equals_greedy() {
        let mut rng = Pcg32::new(5);
        let mut s = Sampler::new(params(1.3, 1, 0.9), 77).unwrap();
        assert_eq!(s.scratch_len(16), 0);
        for _ in 0..200 {
            let logits: Vec<f32> = (0..16).map(|_| (rng.next_u32() % 8) as f32).collect();
            assert_eq!(s.sample(&logits, &mut []), argmax(&logits));
        }
    }

    #[test]
    fn top_p_tiny_equals_greedy() {
        let mut rng = Pcg32::new(6);
        for top_k in [0, 5] {
            let mut s = Sampler::new(params(2.0, top_k, 1e-6), 3).unwrap();
            let mut scratch = vec![0u32; 16];
            for _ in 0..200 {
                let logits: Vec<f32> = (0..16).map(|_| (rng.next_u32() % 8) as f32).collect();
                assert_eq!(s.sample(&logits, &mut scratch), argmax(&logits));
            }
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        for p in [
            params(0.7, 0, 1.0),
            params(1.0, 3, 1.0),
            params(0.9, 0, 0.8),
        ] {
            let mut a = Sampler::new(p, 2024).unwrap();
            let mut b = Sampler::new(p, 2024).unwrap();
            let mut c = Sampler::new(p, 2025).unwrap();
            let mut scratch = [0u32; 6];
            let xs: Vec<u32> = (0..64)
                .map(|_| a.sample(&LOGITS, &mut scratch).unwrap())
                .collect();
            let ys: Vec<u32> = (0..64)
                .map(|_| b.sample(&LOGITS, &mut scratch).unwrap())
                .collect();
            let zs: Vec<u32> = (0..64)
                .map(|_| c.sample(&LOGITS, &mut scratch).unwrap())
                .collect();
            assert_eq!(xs, ys);
            assert_ne!(xs, zs);
        }
    }

    /// Pinned draws: any target (or a change to the arithmetic) that gives other tokens fails.
    #[test]
    fn pinned_draws_for_seed_42() {
        let draws = |p: SamplerParams| -> Vec<u32> {
            let mut s = Sampler::new(p, 42).unwrap();
            let mut scratch = [0u32; 6];
            (0..24)
                .map(|_| s.sample(&LOGITS, &mut scratch).unwrap())
                .collect()
        };
        assert_eq!(draws(params(3.0, 0, 1.0)), PINNED_PLAIN);
        assert_eq!(draws(params(2.0, 4, 0.95)), PINNED_TOPK_TOPP);
    }
    /// Also computed by an independent Python/numpy reimplementation of the same steps.
    const PINNED_PLAIN: [u32; 24] = [
        3, 2, 4, 2, 4, 4, 4, 2, 4, 4, 1, 0, 4, 1, 0, 0, 3, 2, 4, 4, 2, 1, 1, 1,
    ];
    const PINNED_TOPK_TOPP: [u32; 24] = [
        1, 1, 0, 1, 0, 0, 0, 1, 2, 2, 4, 4, 2, 4, 4, 4, 1, 1, 0, 1, 1, 4, 4, 4,
    ];

    #[test]
    fn frequencies_match_softmax() {
        let draws = 200_000;
        let all: Vec<usize> = (0..LOGITS.len()).collect();
        let mut s = Sampler::new(params(0.8, 0, 1.0), 1234).unwrap();
        let want = softmax(&LOGITS, 0.8, &all);
        assert_close(&frequencies(&mut s, &LOGITS, draws), &want, 0.005);
        assert_eq!(want[5], 0.0);

        // Top-k 3: ids 4, 1, 0, renormalized.
        let mut s = Sampler::new(params(1.5, 3, 1.0), 99).unwrap();
        let want = softmax(&LOGITS, 1.5, &[4, 1, 0]);
        assert_close(&frequencies(&mut s, &LOGITS, draws), &want, 0.005);

        // Top-p: at t = 1 the sorted probabilities are 0.638, 0.235, 0.086, ...; p = 0.8
        // keeps the first two.
        let mut s = Sampler::new(params(1.0, 0, 0.8), 7).unwrap();
        let p = softmax(&LOGITS, 1.0, &all);
        assert!(p[4] < 0.8 && p[4] + p[1] >= 0.8);
        let want = softmax(&LOGITS, 1.0, &[4, 1]);
        assert_close(&frequencies(&mut s, &LOGITS, draws), &want, 0.005);
    }

    #[test]
    fn bad_params_are_rejected() {
        for (t, p) in [
            (-1.0, 1.0),
            (f32::NAN, 1.0),
            (f32::INFINITY, 1.0),
            (1.0, 0.0),
            (1.0, -0.5),
            (1.0, 1.01),
            (1.0, f32::NAN),
        ] {
            assert!(
                matches!(
                    Sampler::new(params(t, 0, p), 0),
                    Err(Error::BadSamplerParams { .. })
                ),
                "temperature {t}, top_p {p}"
            );
        }
        let mut s = Sampler::new(params(0.5, 4, 0.5), 0).unwrap();
        assert!(s.set_params(params(-0.1, 0, 1.0)).is_err());
        assert_eq!(s.params(), params(0.5, 4, 0.5));
        assert!(s.set_params(SamplerParams::GREEDY).is_ok());
        assert!(Sampler::new(params(0.0, 0, 1.0), 0).is_ok());
    }

    #[test]
    fn bad_logits_are_rejected() {
        for p in [
            SamplerParams::GREEDY,
            params(1.0, 0, 1.0),
            params(1.0, 2, 0.5),
        ] {
            let mut s = Sampler::new(p, 0).unwrap();
            let mut scratch = [0u32; 4];
            assert!(matches!(
                s.sample(&[0.0, f32::NAN, 1.0], &mut scratch),
                Err(TokenError::NonFinite(_))
            ));
            assert!(matches!(
                s.sample(&[0.0, f32::INFINITY], &mut scratch),
                Err(TokenError::NonFinite(_))
            ));
            assert!(matches!(
                s.sample(&[f32::NEG_INFINITY; 3], &mut scratch),
                Err(TokenError::NonFinite(_))
            ));
            assert!(matches!(
                s.sample(&[], &mut scratch),
                Err(TokenError::NoLogits)
            ));
        }
    }

    #[test]
    fn scratch_too_small() {
        let mut s = Sampler::new(params(1.0, 2, 1.0), 0).unwrap();
        assert_eq!(s.scratch_len(6), 6);
        assert_eq!(
            s.sample(&LOGITS, &mut [0u32; 5]),
            Err(TokenError::ScratchTooSmall { needed: 6, got: 5 })
        );
        // Plain temperature sampling needs none.
        let mut s = Sampler::new(params(1.0, 0, 1.0), 0).unwrap();
        assert_eq!(s.scratch_len(6), 0);
        assert!(s.sample(&LOGITS, &mut []).is_ok());
    }

    #[test]
    fn neg_inf_and_tiny_temperatures() {
        let mut s = Sampler::new(params(1e-30, 0, 1.0), 1).unwrap();
        for _ in 0..100 {
            assert_eq!(s.sample(&LOGITS, &mut []), Ok(4));
        }
        let logits = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        let mut s = Sampler::new(params(1.0, 3, 0.99), 1).unwrap();
        let mut scratch = [0u32; 4];
        for _ in 0..100 {
            let t = s.sample(&logits, &mut scratch).unwrap();
            assert!(t == 1 || t == 3);
        }
    }
}
