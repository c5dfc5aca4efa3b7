//! DML loss: the f64 twin against a literal transcription of PixelCNN++'s formula (every branch,
//! extreme logits and log-scales), gradients vs finite differences, bins vs values, reductions and
//! the upstream scaling; the sampler against the mixture's bin probabilities (chi-square) and
//! determinism; the GPU kernels against the twin; bad input. Samples drawn in f32 (the kernel) may
//! differ from the twin's f64 draws only at a decision boundary — a near-tie of two components'
//! Gumbel scores, or a continuous sample within rounding distance of a bin edge — and every such
//! difference is recomputed and must be explained by a bounded f32 error (`explain`); the checker
//! itself is tested on the host against an f32 transcription of the kernel.

#![allow(clippy::needless_range_loop)]

use snug::ops::dml::{dml_backward, dml_loss, dml_sample, loss_workspace_bytes, uniform as draw_uniform, DmlSpec, Reduction, Target};
use snug::testing::{gpu_or_skip, poison, randn, rng, uniform};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

fn spec(k: usize, bits: u32, reduction: Reduction) -> DmlSpec {
    DmlSpec { k, bits, reduction, checked: false }
}

/// PixelCNN++'s discretized_mix_logistic_loss for one channel, transcribed literally (f64).
fn literal(p: &[f64], x: &[f64], b: usize, k: usize, l: usize, bits: u32) -> Vec<f64> {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let softplus = |v: f64| if v > 30.0 { v } else { v.exp().ln_1p() };
    let bins = ((1u64 << bits) - 1) as f64;
    let mut out = vec![0.0; b * l];
    for bb in 0..b {
        for ll in 0..l {
            let at = |j: usize| p[(bb * 3 * k + j) * l + ll];
            let xv = x[bb * l + ll];
            let logits: Vec<f64> = (0..k).map(at).collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lsm: Vec<f64> = logits.iter().map(|v| v - m - logits.iter().map(|u| (u - m).exp()).sum::<f64>().ln()).collect();
            let mut lp = Vec::new();
            for c in 0..k {
                let (mean, ls) = (at(k + c), at(2 * k + c).max(-7.0));
                let centered = xv - mean;
                let inv = (-ls).exp();
                let plus_in = inv * (centered + 1.0 / bins);
                let cdf_plus = sig(plus_in);
                let min_in = inv * (centered - 1.0 / bins);
                let cdf_min = sig(min_in);
                let log_cdf_plus = plus_in - softplus(plus_in);
                let log_one_minus_cdf_min = -softplus(min_in);
                let cdf_delta = cdf_plus - cdf_min;
                let mid_in = inv * centered;
                let log_pdf_mid = mid_in - ls - 2.0 * softplus(mid_in);
                let v = if xv < -0.999 {
                    log_cdf_plus
                } else if xv > 0.999 {
                    log_one_minus_cdf_min
                } else if cdf_delta > 1e-5 {
                    cdf_delta.max(1e-12).ln()
                } else {
                    log_pdf_mid - (bins / 2.0).ln()
                };
                lp.push(v + lsm[c]);
            }
            let m = lp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            out[bb * l + ll] = -(m + lp.iter().map(|v| (v - m).exp()).sum::<f64>().ln());
        }
    }
    out
}

/// Random params with every branch represented: extreme logits, log-scales at and below −7.
fn params(seed: u64, b: usize, k: usize, l: usize) -> Vec<f64> {
    let mut r = rng(seed);
    let mut p = vec![0.0; b * 3 * k * l];
    let n = randn(&mut r, p.len(), 1.0);
    let u = uniform(&mut r, p.len(), 0.0, 1.0);
    for bb in 0..b {
        for j in 0..3 * k {
            for ll in 0..l {
                let i = (bb * 3 * k + j) * l + ll;
                p[i] = match j / k {
                    0 => 3.0 * n[i] as f64 + if u[i] < 0.05 { 40.0 } else { 0.0 },
                    1 => 0.9 * (2.0 * u[i] as f64 - 1.0),
                    _ => -6.0 + 5.0 * u[i] as f64 - if u[i] < 0.05 { 3.0 } else { 0.0 },
                };
            }
        }
    }
    p
}

fn targets(seed: u64, n: usize, bits: u32) -> Vec<u32> {
    let mut r = rng(seed);
    let last = (1u32 << bits) - 1;
    uniform(&mut r, n, 0.0, 1.0).iter().enumerate().map(|(i, u)| match i % 7 {
        0 => 0,
        1 => last,
        _ => (u * last as f32).round() as u32,
    }).collect()
}

fn values(t: &[u32], bits: u32) -> Vec<f32> {
    bin_values(t, bits).iter().map(|&v| v as f32).collect()
}

/// Bin centres as the twin takes them from bin indices: (2i − last)/last rounded to f32.
fn bin_values(t: &[u32], bits: u32) -> Vec<f64> {
    let last = (1i64 << bits) - 1;
    t.iter().map(|&i| ((2 * i as i64 - last) as f32 / last as f32) as f64).collect()
}

fn run(p: &[f64], t: &[u32], b: usize, k: usize, l: usize, sp: DmlSpec) -> (Vec<f64>, Vec<f64>) {
    let n = if sp.reduction == Reduction::None { b * l } else { 1 };
    let shape: Vec<usize> = if sp.reduction == Reduction::None { vec![b, l] } else { vec![1] };
    let (mut loss, mut grad) = (vec![f64::NAN; n], vec![f64::NAN; p.len()]);
    dml_loss(View::host(p, &[b, 3 * k, l]).unwrap(), Target::Bins(View::host(t, &[b, l]).unwrap()), ViewMut::host(&mut loss, &shape).unwrap(), Some(ViewMut::host(&mut grad, &[b, 3 * k, l]).unwrap()), None, sp).unwrap();
    (loss, grad)
}

#[test]
fn twin_matches_the_literal_formula_on_every_branch() {
    for (k, bits) in [(1usize, 8u32), (6, 8), (10, 16), (32, 8), (6, 16)] {
        let (b, l) = (2usize, 300usize);
        let p = params(k as u64 + bits as u64, b, k, l);
        let t = targets(7, b * l, bits);
        let (loss, _) = run(&p, &t, b, k, l, spec(k, bits, Reduction::None));
        let want = literal(&p, &bin_values(&t, bits), b, k, l, bits);
        for i in 0..b * l {
            assert!((loss[i] - want[i]).abs() <= 1e-9 * (1.0 + want[i].abs()), "K={k} bits={bits} loss[{i}]: {} vs {}", loss[i], want[i]);
        }
    }
}

#[test]
fn fallback_branch_is_exercised_and_matches() {
    // A narrow component far from the target: the bin mass is below 1e-5 (mid-point pdf branch).
    let (b, k, l) = (1usize, 1usize, 3usize);
    let p = vec![0.0, 0.0, 0.0, 0.9, 0.5, -0.2, -3.0, -4.0, -4.0];
    let t = [64u32, 100, 20]; // x ≈ −0.498, −0.216, −0.843
    let x = bin_values(&t, 8);
    let (loss, _) = run(&p, &t, b, k, l, spec(1, 8, Reduction::None));
    let want = literal(&p, &x, b, k, l, 8);
    for i in 0..l {
        let inv = (-p[2 * l + i]).exp();
        let s = |v: f64| 1.0 / (1.0 + (-v).exp());
        let delta = s(inv * (x[i] - p[l + i] + 1.0 / 255.0)) - s(inv * (x[i] - p[l + i] - 1.0 / 255.0));
        assert!(delta < 1e-5, "case {i} is not in the fallback branch (delta {delta})");
        assert!((loss[i] - want[i]).abs() <= 1e-9 * want[i].abs(), "{} vs {}", loss[i], want[i]);
    }
}

#[test]
fn gradient_matches_finite_differences() {
    for (k, bits, red) in [(1usize, 8u32, Reduction::Sum), (6, 8, Reduction::Mean), (3, 16, Reduction::Sum)] {
        let (b, l) = (2usize, 20usize);
        let mut p = params(11 + k as u64, b, k, l);
        // Log-scales above the clamp kept ≥ −4 (central differences at h = 1e-6 lose accuracy as
        // exp(−3·log_scale)); those below −7 stay there (gradient 0).
        for bb in 0..b {
            for j in 2 * k..3 * k {
                for ll in 0..l {
                    let v = &mut p[(bb * 3 * k + j) * l + ll];
                    if *v > -7.0 {
                        *v = (*v + 7.0) * 0.5 - 4.0;
                    }
                }
            }
        }
        let mut t = targets(3, b * l, bits);
        t[5] = 40; // plus a fallback-branch position
        p[(2 * k) * l + 5] = -4.0;
        p[k * l + 5] = 0.9;
        let sp = spec(k, bits, red);
        let (_, g) = run(&p, &t, b, k, l, sp);
        // At 16 bits the bin mass is a difference of sigmoids ~1e-5 apart: its f64 rounding
        // (~1e-12 relative) needs a larger step.
        let h = if bits == 16 { 1e-5 } else { 1e-6 };
        for i in 0..p.len() {
            let (mut pp, mut pm) = (p.clone(), p.clone());
            pp[i] += h;
            pm[i] -= h;
            let fd = (run(&pp, &t, b, k, l, sp).0[0] - run(&pm, &t, b, k, l, sp).0[0]) / (2.0 * h);
            assert!((g[i] - fd).abs() <= 1e-6 * (1.0 + fd.abs()), "K={k} bits={bits} {red:?} grad[{i}]: {} vs {fd}", g[i]);
        }
    }
}

#[test]
fn values_equal_bins_reductions_and_upstream_scaling() {
    let (b, k, l) = (3usize, 6usize, 50usize);
    let p = params(5, b, k, l);
    let t = targets(6, b * l, 8);
    let (none, g_none) = run(&p, &t, b, k, l, spec(k, 8, Reduction::None));
    let (sum, g_sum) = run(&p, &t, b, k, l, spec(k, 8, Reduction::Sum));
    let (mean, g_mean) = run(&p, &t, b, k, l, spec(k, 8, Reduction::Mean));
    let total: f64 = none.iter().sum();
    assert!((sum[0] - total).abs() < 1e-9 * total.abs() && (mean[0] - total / (b * l) as f64).abs() < 1e-12 * total.abs());
    for i in 0..p.len() {
        assert!((g_sum[i] - g_none[i]).abs() < 1e-15 && (g_mean[i] * (b * l) as f64 - g_sum[i]).abs() < 1e-12);
    }
    // Values as floats give the same loss as bin indices.
    let v = values(&t, 8);
    let mut loss_v = vec![0.0; b * l];
    dml_loss::<f64, f64>(View::host(&p, &[b, 3 * k, l]).unwrap(), Target::Values(View::host(&v, &[b, l]).unwrap()), ViewMut::host(&mut loss_v, &[b, l]).unwrap(), None, None, spec(k, 8, Reduction::None)).unwrap();
    for i in 0..b * l {
        assert!((loss_v[i] - none[i]).abs() < 1e-6 * (1.0 + none[i].abs()));
    }
    // Backward: per-position upstream for NONE, a scalar otherwise.
    let up: Vec<f64> = (0..b * l).map(|i| 0.5 + i as f64).collect();
    let mut g = g_none.clone();
    dml_backward(ViewMut::host(&mut g, &[b, 3 * k, l]).unwrap(), View::host(&up, &[b, l]).unwrap(), spec(k, 8, Reduction::None)).unwrap();
    for i in 0..p.len() {
        let (bb, ll) = (i / (3 * k * l), i % l);
        assert_eq!(g[i], g_none[i] * up[bb * l + ll]);
    }
    let mut g = g_mean.clone();
    dml_backward(ViewMut::host(&mut g, &[b, 3 * k, l]).unwrap(), View::host(&[3.0], &[1]).unwrap(), spec(k, 8, Reduction::Mean)).unwrap();
    assert!(g.iter().zip(&g_mean).all(|(a, c)| *a == 3.0 * c));
}

#[test]
fn sampler_follows_the_mixture_bin_probabilities() {
    // One mixture repeated over L positions: the histogram of samples vs exp(−loss(bin)).
    let (k, bits, l) = (3usize, 8u32, 200_000usize);
    let mix = [(0.3, -0.4, -2.5), (-0.2, 0.35, -3.2), (1.0, 0.95, -4.0)]; // (logit, mean, log_scale)
    let mut p = vec![0.0; 3 * k * l];
    for (c, &(lg, m, s)) in mix.iter().enumerate() {
        for ll in 0..l {
            p[c * l + ll] = lg;
            p[(k + c) * l + ll] = m;
            p[(2 * k + c) * l + ll] = s;
        }
    }
    let mut out = vec![0.0f32; l];
    dml_sample(View::host(&p, &[1, 3 * k, l]).unwrap(), ViewMut::host(&mut out, &[1, l]).unwrap(), k, bits, 42, 1.0).unwrap();
    let bins = 255usize;
    let mut hist = vec![0usize; bins + 1];
    for &x in &out {
        let i = ((x as f64 + 1.0) * 0.5 * bins as f64).round() as usize;
        assert!((2.0 * i as f64 / bins as f64 - 1.0 - x as f64).abs() < 1e-6, "sample {x} is not on the bin grid");
        hist[i] += 1;
    }
    // Bin probabilities from the loss of every bin.
    let pb: Vec<f64> = (0..=bins as u32).map(|i| {
        let pp: Vec<f64> = (0..3 * k).map(|j| p[j * l]).collect();
        (-run(&pp, &[i], 1, k, 1, spec(k, bits, Reduction::None)).0[0]).exp()
    }).collect();
    let total: f64 = pb.iter().sum();
    assert!((total - 1.0).abs() < 1e-3, "bin probabilities sum to {total}");
    // Chi-square over bins with expected count >= 20 (the rest pooled).
    let (mut chi, mut dof, mut pool_o, mut pool_e) = (0.0, 0usize, 0.0, 0.0);
    for i in 0..=bins {
        let e = pb[i] * l as f64;
        if e >= 20.0 {
            chi += (hist[i] as f64 - e).powi(2) / e;
            dof += 1;
        } else {
            pool_o += hist[i] as f64;
            pool_e += e;
        }
    }
    if pool_e > 0.0 {
        chi += (pool_o - pool_e).powi(2) / pool_e;
        dof += 1;
    }
    let dof = dof - 1;
    assert!(chi < dof as f64 + 6.0 * (2.0 * dof as f64).sqrt(), "chi-square {chi:.1} with {dof} degrees of freedom");
    // Deterministic for a seed, different for another.
    let mut again = vec![0.0f32; l];
    dml_sample(View::host(&p, &[1, 3 * k, l]).unwrap(), ViewMut::host(&mut again, &[1, l]).unwrap(), k, bits, 42, 1.0).unwrap();
    assert_eq!(out, again);
    dml_sample(View::host(&p, &[1, 3 * k, l]).unwrap(), ViewMut::host(&mut again, &[1, l]).unwrap(), k, bits, 43, 1.0).unwrap();
    assert_ne!(out, again);
}

#[test]
fn bad_input_is_a_typed_error() {
    let (b, k, l) = (1usize, 2usize, 4usize);
    let p = vec![0.0f64; b * 3 * k * l];
    let t = vec![0u32; l];
    let mut loss = vec![0.0f64; l];
    let call = |p: &[f64], pshape: &[usize], t: Target<'_>, sp: DmlSpec, loss: &mut [f64]| dml_loss::<f64, f64>(View::host(p, pshape).unwrap(), t, ViewMut::host(loss, &[1, l]).unwrap(), None, None, sp);
    let e = call(&p[..b * 5 * l], &[1, 5, l], Target::Bins(View::host(&t, &[1, l]).unwrap()), spec(k, 8, Reduction::None), &mut loss);
    assert!(matches!(e, Err(Error::Shape { arg: "params", .. })), "{e:?}");
    let e = call(&p, &[1, 6, l], Target::Bins(View::host(&t[..3], &[1, 3]).unwrap()), spec(k, 8, Reduction::None), &mut loss);
    assert!(matches!(e, Err(Error::Shape { arg: "target", .. })), "{e:?}");
    for bits in [7u32, 17] {
        let e = call(&p, &[1, 6, l], Target::Bins(View::host(&t, &[1, l]).unwrap()), spec(k, bits, Reduction::None), &mut loss);
        assert!(matches!(e, Err(Error::Value { arg: "bits", .. })), "{e:?}");
    }
    let e = call(&p, &[1, 6, l], Target::Bins(View::host(&t, &[1, l]).unwrap()), spec(33, 8, Reduction::None), &mut loss);
    assert!(matches!(e, Err(Error::Value { arg: "k", .. })), "{e:?}");
    // Checked mode: a bin index beyond 2^bits − 1, a value outside [−1, 1], NaN in params.
    let checked = DmlSpec { checked: true, ..spec(k, 8, Reduction::None) };
    let bad_t = vec![0u32, 256, 0, 0];
    let e = call(&p, &[1, 6, l], Target::Bins(View::host(&bad_t, &[1, l]).unwrap()), checked, &mut loss);
    assert!(matches!(e, Err(Error::Value { arg: "target", .. })), "{e:?}");
    let bad_v = vec![0.0f32, 1.5, 0.0, 0.0];
    let e = call(&p, &[1, 6, l], Target::Values(View::host(&bad_v, &[1, l]).unwrap()), checked, &mut loss);
    assert!(matches!(e, Err(Error::Value { arg: "target", .. })), "{e:?}");
    let mut nan_p = p.clone();
    nan_p[3] = f64::NAN;
    let e = call(&nan_p, &[1, 6, l], Target::Bins(View::host(&t, &[1, l]).unwrap()), checked, &mut loss);
    assert!(matches!(e, Err(Error::Value { arg: "params", .. })), "{e:?}");
    // Unchecked: out-of-range targets are clamped (documented), not an error.
    assert!(call(&p, &[1, 6, l], Target::Values(View::host(&bad_v, &[1, l]).unwrap()), spec(k, 8, Reduction::None), &mut loss).is_ok());
    let mut s = vec![0.0f32; l];
    let e = dml_sample(View::host(&p, &[1, 6, l]).unwrap(), ViewMut::host(&mut s, &[1, l]).unwrap(), k, 8, 1, 0.0);
    assert!(matches!(e, Err(Error::Value { arg: "temperature", .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Samples at decision boundaries: why a kernel's sample may differ from the twin's.
//
// The kernel draws in f32 what the twin draws in f64, from the same params and the same uniforms
// (23-bit, exact in both). Only two steps are discontinuous: the Gumbel argmax over components and
// the rounding to a bin. (The clamp to [−1, 1] is continuous, and both sides of ±1 fall in the edge
// bins.) Anywhere else f32 moves the sample within its bin. So a kernel sample that differs from
// the twin's is legitimate exactly when the f32 evaluation could land on the other side of one of
// those discontinuities: a component whose score is within the f32 error of the winner's (and the
// kernel took that component's sample), or a continuous sample within its f32 error of a bin edge
// (and the kernel took the bin across it). `explain` recomputes the draw in f64 exactly as the twin
// makes it (checking that it reproduces the twin's value), bounds the f32 error of each quantity
// from the operations the kernel performs, and accepts a difference only when the kernel's value
// is a bin those bounds allow.
//
// Bounds, with ε = 2^-24 (f32 unit roundoff; one ulp ≤ 2ε|v|). + − × ÷ are correctly rounded
// (ε|result|); CUDA's logf and log1pf are within 1 ulp, expf within 2 ulp (CUDA C Programming
// Guide, mathematical functions; build.rs does not use fast-math); the uniforms are exact.
// - Gumbel score v = a − g, a = logit/τ, g = ln(−ln u): a is within ε|a|; −ln u within 2ε
//   relative, so its log within 2ε absolute, plus logf's own 2ε|g|; the subtraction ε(|a| + |g|):
//   |δv| ≤ ε(2|a| + 3|g| + 2). Two components can trade places only if their gap ≤ δv₁ + δv₂.
// - Sample x = μ + s·τ·ℓ, s = exp(max(log_scale, −7)), ℓ = ln u − ln(1 − u), Λ = |ln u| + |ln(1 − u)|:
//   s within 4ε relative, ℓ within 2εΛ + ε|ℓ| ≤ 3εΛ, the two products 2ε: s·τ·ℓ within 9ε·sτΛ; the
//   sum ε(|μ| + sτΛ): |δx| ≤ ε(|μ| + 10 sτΛ). The clamp is 1-Lipschitz. z = (x + 1)·½·bins (the bin
//   is rint(z)): x + 1 within 2ε, × bins within ε·bins, so |δz| ≤ ε·(bins/2)·(|μ| + 10 sτΛ + 4) bins.
// Both are worst cases (every operation off by its maximum, all in the same direction), taken with
// a margin of `MARGIN` = 4 for what the model leaves out (second-order terms, a libm's log1pf at 2
// ulp, the twin's own f64 rounding). Typically a gap is allowed 2e-6 to 1e-5 — the order of
// 1e-5·(1 + |v|) — and z ~0.04 bins at 16 bits, ~1.5e-4 at 8. Against the f32 transcription
// below (glibc's logf/expf/log1pf), over ~3700 boundary crossings, the largest error seen is 1/8
// of the allowance (half the unmargined bound): the bounds are tight enough to mean something and
// loose enough for CUDA's up-to-2-ulp functions.
// A real bug (a wrong clamp, draw, temperature, rounding) moves samples by amounts unrelated to
// these bounds and shows as unexplained differences or as more than the allowed fraction
// (`unexplained_differences_are_caught`).

/// f32 unit roundoff.
const EPS32: f64 = 1.0 / 16_777_216.0;
/// Safety factor on the worst-case f32 error bounds.
const MARGIN: f64 = 4.0;

/// Sampling sweep of the GPU test and its host mirror: (K, bits, τ, seed, L).
const SAMPLE_SWEEP: [(usize, u32, f32, u64, usize); 4] = [(1, 16, 1.0, 11, 1 << 17), (6, 8, 1.0, 12, 1 << 17), (10, 16, 0.7, 13, 1 << 15), (32, 8, 1.3, 14, 1 << 13)];
/// Boundary sweep: (K, bits, τ, seed).
const BOUNDARY_SWEEP: [(usize, u32, f32, u64); 3] = [(2, 16, 1.0, 15), (6, 8, 1.0, 16), (3, 16, 0.7, 17)];

/// `params` rounded to f32 (what an f32 kernel reads), as f64.
fn f32_params(seed: u64, b: usize, k: usize, l: usize) -> Vec<f64> {
    params(seed, b, k, l).iter().map(|&v| v as f32 as f64).collect()
}

fn twin_samples(p: &[f64], b: usize, k: usize, l: usize, bits: u32, seed: u64, tau: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; b * l];
    dml_sample(View::host(p, &[b, 3 * k, l]).unwrap(), ViewMut::host(&mut out, &[b, l]).unwrap(), k, bits, seed, tau).unwrap();
    out
}

/// Bin `j`'s value as both samplers write it: (2j − bins)/bins rounded once to f32.
fn bin_value(j: f64, bins: f64) -> f32 {
    (2.0 * j - bins) as f32 / bins as f32
}

/// One position's draw recomputed in f64 exactly as the twin makes it, with the f32 error bounds.
struct Redraw {
    /// Per component: Gumbel score and the bound on its f32 error.
    score: Vec<(f64, f64)>,
    /// Per component: z = (clamp(x) + 1)·bins/2 (the bin is its nearest integer, ties to even) if
    /// that component is drawn, and the bound on its f32 error, in bins.
    z: Vec<(f64, f64)>,
    /// The twin's component (the first maximum).
    best: usize,
}

fn redraw(p: &[f64], k: usize, l: usize, bits: u32, seed: u64, tau: f32, i: usize) -> Redraw {
    let (bb, ll) = (i / l, i % l);
    let at = |j: usize| p[(bb * 3 * k + j) * l + ll];
    let (bins, tau) = (((1u64 << bits) - 1) as f64, tau as f64);
    let (mut score, mut best) = (Vec::with_capacity(k), (0usize, f64::NEG_INFINITY));
    for c in 0..k {
        let a = at(c) / tau;
        let g = (-draw_uniform(seed, i as u64, c as u32).ln()).ln();
        let v = a - g;
        if v > best.1 {
            best = (c, v);
        }
        score.push((v, MARGIN * EPS32 * (2.0 * a.abs() + 3.0 * g.abs() + 2.0)));
    }
    let u = draw_uniform(seed, i as u64, k as u32);
    let (lu, l1u) = (u.ln(), (-u).ln_1p());
    let z = (0..k).map(|c| {
        let (mean, s) = (at(k + c), at(2 * k + c).max(-7.0).exp());
        let x = (mean + s * tau * (lu - l1u)).clamp(-1.0, 1.0);
        ((x + 1.0) * 0.5 * bins, MARGIN * EPS32 * 0.5 * bins * (mean.abs() + 10.0 * s * tau * (lu.abs() + l1u.abs()) + 4.0))
    }).collect();
    Redraw { score, z, best: best.0 }
}

/// Why the kernel's sample `got` at position `i` may differ from the twin's `want`:
/// `Ok((component tie?, reason))`, or `Err(why it cannot be f32 rounding)`.
#[allow(clippy::too_many_arguments)]
fn explain(p: &[f64], k: usize, l: usize, bits: u32, seed: u64, tau: f32, i: usize, got: f32, want: f32) -> Result<(bool, String), String> {
    let bins = ((1u64 << bits) - 1) as f64;
    let r = redraw(p, k, l, bits, seed, tau, i);
    let (z1, ez1) = r.z[r.best];
    let twin_bin = z1.round_ties_even();
    if bin_value(twin_bin, bins) != want {
        return Err(format!("the f64 recomputation gives bin {twin_bin} ({}), not the twin's value", bin_value(twin_bin, bins)));
    }
    let j = ((got as f64 + 1.0) * 0.5 * bins).round();
    if !(0.0..=bins).contains(&j) || bin_value(j, bins) != got {
        return Err("not a bin value".into());
    }
    let (v1, e1) = r.score[r.best];
    // Candidates: the twin's component, then the others by score.
    let mut order: Vec<usize> = (0..k).filter(|&c| c != r.best).collect();
    order.sort_by(|&a, &b| r.score[b].0.total_cmp(&r.score[a].0));
    order.insert(0, r.best);
    for c in order {
        let (v, e) = r.score[c];
        if c != r.best && v1 - v > e1 + e {
            continue; // cannot beat the twin's component in f32
        }
        let (z, ez) = r.z[c];
        // Bin j is reachable iff its rounding interval [j − ½, j + ½] comes within ez of z.
        let outside = (j - z).abs() - 0.5;
        if outside > ez {
            continue;
        }
        let mut why = String::new();
        if c != r.best {
            why += &format!("component tie: score {v1:.9} of component {} vs {v:.9} of {c}, gap {:.2e} within the f32 bound {:.2e}; kernel took {c} (z = {z:.4})", r.best, v1 - v, e1 + e);
        }
        if j != z.round_ties_even() {
            if !why.is_empty() {
                why += ", then ";
            }
            why += &format!("bin edge: z = {z:.6} lies {:.2e} bins from bin {j} (f32 bound {ez:.2e} bins)", outside.max(0.0));
        }
        return Ok((c != r.best, why));
    }
    let mut top: Vec<(usize, f64)> = r.score.iter().map(|s| s.0).enumerate().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    Err(format!("kernel bin {j}, twin bin {twin_bin} from component {} at z = {z1:.6} (f32 bound {ez1:.2e} bins); scores {:?} (bound on the leader's error {e1:.2e})", r.best, &top[..k.min(3)]))
}

/// What a comparison of a kernel's samples with the twin's found.
#[derive(Debug, Default)]
struct Verdict {
    mismatches: usize,
    /// Explained by a bin edge alone.
    edges: usize,
    /// Explained by a component tie.
    ties: usize,
    unexplained: Vec<String>,
}

/// Explains every sample where `got` differs from the twin's `want`, printing each (the first
/// `print` explained ones and the first 100 unexplained ones) and a summary.
#[allow(clippy::too_many_arguments)]
fn compare_samples(what: &str, p: &[f64], k: usize, l: usize, bits: u32, seed: u64, tau: f32, got: &[f32], want: &[f32], print: usize) -> Verdict {
    let mut v = Verdict::default();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g == w {
            continue;
        }
        v.mismatches += 1;
        match explain(p, k, l, bits, seed, tau, i, g, w) {
            Ok((tie, why)) => {
                if tie {
                    v.ties += 1;
                } else {
                    v.edges += 1;
                }
                if v.edges + v.ties <= print {
                    eprintln!("{what}: sample {i}: kernel {g} vs twin {w}: {why}");
                }
            }
            Err(why) => {
                let m = format!("{what}: sample {i}: kernel {g} vs twin {w}: UNEXPLAINED: {why}");
                if v.unexplained.len() < 100 {
                    eprintln!("{m}");
                }
                v.unexplained.push(m);
            }
        }
    }
    let n = got.len();
    let more = if v.edges + v.ties > print || v.unexplained.len() > 100 { " (not all printed)" } else { "" };
    eprintln!("{what}: {} of {n} samples differ from the twin ({:.3}%): {} at a bin edge, {} at a component tie, {} unexplained{more}", v.mismatches, 100.0 * v.mismatches as f64 / n as f64, v.edges, v.ties, v.unexplained.len());
    v
}

/// Every difference from the twin explained by f32 rounding at a decision boundary, and at most
/// `max_frac` of the samples different.
#[allow(clippy::too_many_arguments)]
fn assert_samples(what: &str, p: &[f64], k: usize, l: usize, bits: u32, seed: u64, tau: f32, got: &[f32], want: &[f32], max_frac: f64, print: usize) -> Verdict {
    let v = compare_samples(what, p, k, l, bits, seed, tau, got, want, print);
    assert!(v.unexplained.is_empty(), "{what}: {} of {} samples that differ from the twin are not f32 rounding at a decision boundary:\n{}", v.unexplained.len(), v.mismatches, v.unexplained.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
    assert!(v.mismatches as f64 <= max_frac * got.len() as f64, "{what}: {} of {} samples differ from the twin (at most {}% may)", v.mismatches, got.len(), 100.0 * max_frac);
    v
}

/// `kernels/dml.cu`'s `dml_sample` transcribed in f32 (libm's logf, log1pf, expf; correctly
/// rounded arithmetic): the host stand-in for the GPU, with the same kind of rounding. `ls_min` is
/// the log-scale clamp (−7; another value emulates a bug).
#[allow(clippy::too_many_arguments)]
fn sample_f32(p: &[f64], b: usize, k: usize, l: usize, bits: u32, seed: u64, tau: f32, ls_min: f32) -> Vec<f32> {
    let bins = ((1u32 << bits) - 1) as f32;
    (0..b * l).map(|i| {
        let (bb, ll) = (i / l, i % l);
        let at = |j: usize| {
            let v = p[(bb * 3 * k + j) * l + ll];
            assert_eq!(v as f32 as f64, v, "params must be f32 values");
            v as f32
        };
        let mut best = (0usize, f32::NEG_INFINITY);
        for c in 0..k {
            let u = draw_uniform(seed, i as u64, c as u32) as f32;
            let v = at(c) / tau - (-u.ln()).ln();
            if v > best.1 {
                best = (c, v);
            }
        }
        let u = draw_uniform(seed, i as u64, k as u32) as f32;
        let s = at(2 * k + best.0).max(ls_min).exp();
        let x = (at(k + best.0) + s * tau * (u.ln() - (-u).ln_1p())).clamp(-1.0, 1.0);
        (2.0 * ((x + 1.0) * 0.5 * bins).round_ties_even() - bins) / bins
    }).collect()
}

/// f32 params whose draws (for `seed`, `tau`) sit on the sampler's decision boundaries: at even
/// positions components 0 and 1 lead with Gumbel scores tied to within ~1e-6 and means a bin
/// range apart (a flip lands far away); at odd positions component 0 wins by far and its sample
/// lies within ~1e-6 of a bin edge. The other logits are −60: out of the running.
fn boundary_params(b: usize, k: usize, l: usize, bits: u32, seed: u64, tau: f32) -> Vec<f64> {
    assert!(k >= 2);
    let mut p = f32_params(seed ^ 0xb0, b, k, l);
    let d = uniform(&mut rng(seed ^ 0xb1), 2 * b * l, -1.0, 1.0);
    let (bins, tau) = (((1u64 << bits) - 1) as f64, tau as f64);
    let r32 = |v: f64| v as f32 as f64;
    for i in 0..b * l {
        let (bb, ll) = (i / l, i % l);
        let at = |j: usize| (bb * 3 * k + j) * l + ll;
        let g = |c: usize| (-draw_uniform(seed, i as u64, c as u32).ln()).ln();
        let (d0, d1) = (d[2 * i] as f64, d[2 * i + 1] as f64);
        for c in 2..k {
            p[at(c)] = -60.0;
        }
        if i % 2 == 0 {
            p[at(0)] = r32(2.0 * d1);
            p[at(1)] = r32(tau * (p[at(0)] / tau - g(0) + g(1) + 1e-6 * d0));
            p[at(k)] = -0.5;
            p[at(k + 1)] = 0.5;
        } else {
            p[at(0)] = 60.0;
            p[at(1)] = -60.0;
            let u = draw_uniform(seed, i as u64, k as u32);
            let s = p[at(2 * k)].max(-7.0).exp();
            let j = (bins * (0.125 + 0.375 * (d1 + 1.0))).floor();
            let edge = (2.0 * j + 1.0) / bins - 1.0;
            p[at(k)] = r32(edge - s * tau * (u.ln() - (-u).ln_1p()) + 1e-6 * d0);
        }
    }
    p
}

#[test]
fn f32_sampler_differs_from_the_twin_only_at_decision_boundaries() {
    // The GPU test's cases and sweep, with the f32 transcription in place of the kernel: random
    // params, so few samples differ, all explained.
    let mut edges = 0;
    for (b, k, l, bits) in [(2usize, 6usize, 1000usize, 8u32), (1, 10, 16_001, 8), (3, 1, 333, 16), (1, 32, 257, 8)] {
        let p = f32_params(21 + k as u64, b, k, l);
        let (got, want) = (sample_f32(&p, b, k, l, bits, 7, 1.0, -7.0), twin_samples(&p, b, k, l, bits, 7, 1.0));
        edges += assert_samples(&format!("host f32 B={b} K={k} L={l} bits={bits} seed=7 τ=1"), &p, k, l, bits, 7, 1.0, &got, &want, 0.01, usize::MAX).edges;
    }
    for (k, bits, tau, seed, l) in SAMPLE_SWEEP {
        let p = f32_params(31 + k as u64, 2, k, l);
        let (got, want) = (sample_f32(&p, 2, k, l, bits, seed, tau, -7.0), twin_samples(&p, 2, k, l, bits, seed, tau));
        edges += assert_samples(&format!("host f32 B=2 K={k} L={l} bits={bits} seed={seed} τ={tau}"), &p, k, l, bits, seed, tau, &got, &want, 0.01, 20).edges;
    }
    assert!(edges > 0, "no sample crossed a bin edge: the check was not exercised");
}

#[test]
fn boundary_draws_differ_often_and_every_difference_is_explained() {
    // Params on the decision boundaries: the f32 transcription differs from the twin on a good
    // share of positions, by ties and by edges, and the bounds explain every one.
    for (k, bits, tau, seed) in BOUNDARY_SWEEP {
        let (b, l) = (2usize, 1usize << 14);
        let p = boundary_params(b, k, l, bits, seed, tau);
        let (got, want) = (sample_f32(&p, b, k, l, bits, seed, tau, -7.0), twin_samples(&p, b, k, l, bits, seed, tau));
        let v = assert_samples(&format!("host boundary B={b} K={k} L={l} bits={bits} seed={seed} τ={tau}"), &p, k, l, bits, seed, tau, &got, &want, 1.0, 10);
        assert!(v.ties >= 20 && v.edges >= 20, "K={k} bits={bits}: only {} ties and {} edges differ: the boundaries are not exercised", v.ties, v.edges);
    }
}

#[test]
fn unexplained_differences_are_caught() {
    let bins = |bits: u32| ((1u64 << bits) - 1) as f64;
    // A neighbouring bin where the sample is far from an edge, and the runner-up component's bin
    // where the scores are far from a tie: each rejected, as is a value off the bin grid.
    for (k, bits) in [(1usize, 16u32), (6, 8)] {
        let (b, l) = (1usize, 4000usize);
        let p = f32_params(41 + k as u64, b, k, l);
        let want = twin_samples(&p, b, k, l, bits, 3, 1.0);
        let mut got = want.clone();
        let mut planted = 0;
        for i in 0..b * l {
            let r = redraw(&p, k, l, bits, 3, 1.0, i);
            let (z, ez) = r.z[r.best];
            let jt = z.round_ties_even();
            let mut others: Vec<usize> = (0..k).filter(|&c| c != r.best).collect();
            others.sort_by(|&a, &c| r.score[c].0.total_cmp(&r.score[a].0));
            match i % 3 {
                0 if (z - jt).abs() < 0.25 && ez < 0.1 && jt >= 1.0 => got[i] = bin_value(jt - 1.0, bins(bits)),
                1 if k > 1 && r.score[r.best].0 - r.score[others[0]].0 > 1e-3 && (r.z[others[0]].0.round_ties_even() - jt).abs() >= 2.0 => got[i] = bin_value(r.z[others[0]].0.round_ties_even(), bins(bits)),
                2 => got[i] = f32::from_bits(want[i].to_bits() + 1),
                _ => continue,
            }
            planted += 1;
        }
        let v = compare_samples(&format!("planted K={k} bits={bits}"), &p, k, l, bits, 3, 1.0, &got, &want, 0);
        assert!(planted > b * l / 3, "only {planted} planted");
        assert_eq!((v.mismatches, v.unexplained.len()), (planted, planted), "{v:?}");
    }
    // A sampler bug: log-scales clamped at −8 instead of −7 (5% of the params() log-scales lie
    // below −8): its samples move by many bins at 16 bits, unexplained.
    let (b, k, l, bits) = (1usize, 3usize, 20_000usize, 16u32);
    let p = f32_params(43, b, k, l);
    let (got, want) = (sample_f32(&p, b, k, l, bits, 5, 1.0, -8.0), twin_samples(&p, b, k, l, bits, 5, 1.0));
    let v = compare_samples("clamp at -8", &p, k, l, bits, 5, 1.0, &got, &want, 0);
    assert!(v.unexplained.len() as f64 > 0.02 * (b * l) as f64, "{} unexplained of {} differing", v.unexplained.len(), v.mismatches);
    // A sampler ignoring the temperature: most samples differ, far beyond 1%.
    let got = sample_f32(&p, b, k, l, bits, 5, 1.0, -7.0);
    let want = twin_samples(&p, b, k, l, bits, 5, 0.8);
    let v = compare_samples("temperature ignored", &p, k, l, bits, 5, 0.8, &got, &want, 0);
    assert!(v.mismatches as f64 > 0.5 * (b * l) as f64 && v.unexplained.len() as f64 > 0.5 * v.mismatches as f64, "{v:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

fn gpu_case<T: snug::Element + snug::ops::Real>(dev: &snug::Device, b: usize, k: usize, l: usize, bits: u32, tol: f64) {
    let p64: Vec<f64> = params(21 + k as u64, b, k, l).iter().map(|&v| T::round_f64(v).to_f64().unwrap()).collect();
    let pt: Vec<T> = p64.iter().map(|&v| T::round_f64(v)).collect();
    let t = targets(22, b * l, bits);
    for red in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        let sp = spec(k, bits, red);
        let (wl, wg) = run(&p64, &t, b, k, l, sp);
        let lshape: Vec<usize> = if red == Reduction::None { vec![b, l] } else { vec![1] };
        let mut plan = Plan::new();
        let bp = plan.add::<T>("p", &[b, 3 * k, l], Role::Activation).unwrap();
        let bg = plan.add::<T>("g", &[b, 3 * k, l], Role::Grad).unwrap();
        let bt = plan.add::<u32>("t", &[b, l], Role::Io).unwrap();
        let bl = plan.add::<f32>("loss", &lshape, Role::Io).unwrap();
        let bw = plan.add::<f32>("ws", &[loss_workspace_bytes(b, l, red).max(4) / 4], Role::Workspace).unwrap();
        let bs = plan.add::<f32>("samples", &[b, l], Role::Io).unwrap();
        let mut arena = Arena::new(dev, &plan).unwrap();
        arena.upload(bp, &pt).unwrap();
        arena.upload(bt, &t).unwrap();
        let mut runs = Vec::new();
        for _ in 0..2 {
            poison(&mut arena, bg).unwrap();
            poison(&mut arena, bl).unwrap();
            poison(&mut arena, bw).unwrap();
            {
                let v = arena.borrow();
                dml_loss(v.read(bp).unwrap(), Target::Bins(v.read(bt).unwrap()), v.write(bl).unwrap(), Some(v.write(bg).unwrap()), Some(v.write(bw).unwrap()), sp).unwrap();
            }
            let (gl, gg) = (arena.download(bl).unwrap(), arena.download(bg).unwrap());
            let what = format!("{} B={b} K={k} L={l} bits={bits} {red:?}", T::DTYPE);
            for (i, (a, w)) in gl.iter().zip(&wl).enumerate() {
                assert!((*a as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()), "{what}: loss[{i}] {a} vs {w}");
            }
            let scale = wg.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
            for (i, (a, w)) in gg.iter().zip(&wg).enumerate() {
                let a = a.to_f64().unwrap();
                assert!((a - w).abs() <= tol * scale.max(w.abs() * 10.0).min(scale), "{what}: grad[{i}] {a} vs {w}");
            }
            runs.push((gl.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), gg.iter().map(|x| x.to_f64().unwrap().to_bits()).collect::<Vec<_>>()));
        }
        assert!(runs[0] == runs[1], "{red:?}: two runs differ");
        if red == Reduction::None {
            poison(&mut arena, bs).unwrap();
            {
                let v = arena.borrow();
                dml_sample(v.read(bp).unwrap(), v.write(bs).unwrap(), k, bits, 7, 1.0).unwrap();
            }
            let got = arena.download(bs).unwrap();
            let want = twin_samples(&p64, b, k, l, bits, 7, 1.0);
            // f32 vs f64 rounding can flip a Gumbel argmax or a bin boundary, rarely: each
            // difference must be such a flip, and they must stay rare.
            assert_samples(&format!("{} B={b} K={k} L={l} bits={bits} seed=7 τ=1", T::DTYPE), &p64, k, l, bits, 7, 1.0, &got, &want, 0.01, usize::MAX);
        }
    }
}

#[test]
fn gpu_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_matches_twin") else { return };
    for (b, k, l, bits) in [(2usize, 6usize, 1000usize, 8u32), (1, 10, 16_001, 8), (3, 1, 333, 16), (1, 32, 257, 8)] {
        gpu_case::<f32>(&dev, b, k, l, bits, 1e-4);
    }
    gpu_case::<half::bf16>(&dev, 2, 6, 1000, 8, 1e-2);
    // Sampling at scale (only the sampler: cheap), random params: every difference explained, at
    // most 1% of samples differ. Then params built to sit on the decision boundaries, where many
    // samples differ: every one must be within the f32 error bounds (no cap on the count).
    for (k, bits, tau, seed, l) in SAMPLE_SWEEP {
        let p = f32_params(31 + k as u64, 2, k, l);
        let got = gpu_samples::<f32>(&dev, &p, 2, k, l, bits, seed, tau);
        let want = twin_samples(&p, 2, k, l, bits, seed, tau);
        assert_samples(&format!("f32 B=2 K={k} L={l} bits={bits} seed={seed} τ={tau}"), &p, k, l, bits, seed, tau, &got, &want, 0.01, 200);
    }
    let (k, l) = (6usize, 1usize << 16);
    let p: Vec<f64> = params(37, 2, k, l).iter().map(|&v| snug::ops::bf16_rne(v).to_f64()).collect();
    let got = gpu_samples::<half::bf16>(&dev, &p, 2, k, l, 16, 5, 1.0);
    assert_samples(&format!("bf16 B=2 K={k} L={l} bits=16 seed=5 τ=1"), &p, k, l, 16, 5, 1.0, &got, &twin_samples(&p, 2, k, l, 16, 5, 1.0), 0.01, 200);
    for (k, bits, tau, seed) in BOUNDARY_SWEEP {
        let l = 1usize << 14;
        let p = boundary_params(2, k, l, bits, seed, tau);
        let got = gpu_samples::<f32>(&dev, &p, 2, k, l, bits, seed, tau);
        let want = twin_samples(&p, 2, k, l, bits, seed, tau);
        assert_samples(&format!("boundary f32 B=2 K={k} L={l} bits={bits} seed={seed} τ={tau}"), &p, k, l, bits, seed, tau, &got, &want, 1.0, 50);
    }
}

#[allow(clippy::too_many_arguments)]
fn gpu_samples<T: snug::Element + snug::ops::Real>(dev: &snug::Device, p64: &[f64], b: usize, k: usize, l: usize, bits: u32, seed: u64, tau: f32) -> Vec<f32> {
    let pt: Vec<T> = p64.iter().map(|&v| T::round_f64(v)).collect();
    assert!(pt.iter().zip(p64).all(|(a, v)| a.to_f64().unwrap() == *v), "params not representable in {}", T::DTYPE);
    let mut plan = Plan::new();
    let bp = plan.add::<T>("p", &[b, 3 * k, l], Role::Activation).unwrap();
    let bs = plan.add::<f32>("samples", &[b, l], Role::Io).unwrap();
    let mut arena = Arena::new(dev, &plan).unwrap();
    arena.upload(bp, &pt).unwrap();
    poison(&mut arena, bs).unwrap();
    {
        let v = arena.borrow();
        dml_sample(v.read(bp).unwrap(), v.write(bs).unwrap(), k, bits, seed, tau).unwrap();
    }
    arena.download(bs).unwrap()
}

