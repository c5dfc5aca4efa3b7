//! DML loss: the f64 twin against a literal transcription of PixelCNN++'s formula (every branch,
//! extreme logits and log-scales), gradients vs finite differences, bins vs values, reductions and
//! the upstream scaling; the sampler against the mixture's bin probabilities (chi-square) and
//! determinism; the GPU kernels against the twin; bad input.

#![allow(clippy::needless_range_loop)]

use snug::ops::dml::{dml_backward, dml_loss, dml_sample, loss_workspace_bytes, DmlSpec, Reduction, Target};
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
// GPU

fn gpu_case<T: snug::Element + snug::ops::Real>(dev: &snug::Device, b: usize, k: usize, l: usize, bits: u32, tol: f64) {
    let p64: Vec<f64> = params(21 + k as u64, b, k, l).iter().map(|&v| T::from_f64(v).unwrap().to_f64().unwrap()).collect();
    let pt: Vec<T> = p64.iter().map(|&v| T::from_f64(v).unwrap()).collect();
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
            let mut want = vec![0.0f32; b * l];
            dml_sample(View::host(&p64, &[b, 3 * k, l]).unwrap(), ViewMut::host(&mut want, &[b, l]).unwrap(), k, bits, 7, 1.0).unwrap();
            let same = got.iter().zip(&want).filter(|(a, w)| a == w).count();
            // f32 vs f64 rounding can flip a Gumbel argmax or a bin boundary, rarely.
            assert!(same as f64 >= 0.999 * (b * l) as f64, "{} samples of {} equal the twin's", same, b * l);
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
}

