//! bce / focal loss: the f64 twin against hand-computed values, an independent f64 transcription
//! of torchvision's `sigmoid_focal_loss` (and of `binary_cross_entropy_with_logits`) with its own
//! naive derivative, finite differences, γ = 0 as plain BCE, extreme logits and the q = 0 limit,
//! reductions and the upstream scaling, bad input; the GPU kernels (f32 and bf16, ragged sizes,
//! poisoned outputs, two runs bitwise) against the twin.

use snug::ops::bce::{bce_backward, bce_loss, loss_workspace_bytes, BceSpec, Reduction};
use snug::testing::{gpu_or_skip, poison, randn, rng, uniform};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

const SPECS: [(Option<f32>, f32); 7] = [(None, 0.0), (Some(0.5), 2.0), (Some(0.25), 2.0), (None, 0.5), (Some(0.75), 1.5), (Some(0.0), 1.0), (Some(1.0), 3.0)];

fn loss_shape(shape: &[usize], r: Reduction) -> Vec<usize> {
    if r == Reduction::None { shape.to_vec() } else { vec![1] }
}

/// The twin in f64: (loss, grad).
fn run(z: &[f64], y: &[f64], shape: &[usize], spec: BceSpec) -> (Vec<f64>, Vec<f64>) {
    let ls = loss_shape(shape, spec.reduction);
    let (mut loss, mut grad) = (vec![f64::NAN; ls.iter().product()], vec![f64::NAN; z.len()]);
    bce_loss(View::host(z, shape).unwrap(), View::host(y, shape).unwrap(), ViewMut::host(&mut loss, &ls).unwrap(), Some(ViewMut::host(&mut grad, shape).unwrap()), None, spec).unwrap();
    (loss, grad)
}

fn none(alpha: Option<f32>, gamma: f32) -> BceSpec {
    BceSpec::focal(alpha, gamma, Reduction::None)
}

/// torchvision.ops.sigmoid_focal_loss transcribed literally (f64, reduction "none"), and its
/// derivative by the textbook chain rule on p = σ(z): accurate for moderate |z| only.
fn literal(z: f64, y: f64, alpha: Option<f64>, gamma: f64) -> (f64, f64) {
    let p = 1.0 / (1.0 + (-z).exp());
    let ce = -(y * p.ln() + (1.0 - y) * (1.0 - p).ln());
    let p_t = p * y + (1.0 - p) * (1.0 - y);
    let mut loss = ce * (1.0 - p_t).powf(gamma);
    let dp = p * (1.0 - p);
    let dce = -(y / p - (1.0 - y) / (1.0 - p)) * dp;
    let dpt = (2.0 * y - 1.0) * dp;
    let mut grad = dce * (1.0 - p_t).powf(gamma) + if gamma == 0.0 { 0.0 } else { ce * gamma * (1.0 - p_t).powf(gamma - 1.0) * -dpt };
    if let Some(a) = alpha {
        let at = a * y + (1.0 - a) * (1.0 - y);
        loss *= at;
        grad *= at;
    }
    (loss, grad)
}

/// F.binary_cross_entropy_with_logits as PyTorch computes it: (1 − y)·z + max(−z, 0) +
/// log(e^−max(−z,0) + e^(−z−max(−z,0))); gradient σ(z) − y.
fn plain(z: f64, y: f64) -> (f64, f64) {
    let m = (-z).max(0.0);
    ((1.0 - y) * z + m + ((-m).exp() + (-z - m).exp()).ln(), 1.0 / (1.0 + (-z).exp()) - y)
}

fn inputs(seed: u64, n: usize, zs: f32) -> (Vec<f64>, Vec<f64>) {
    let mut r = rng(seed);
    let z: Vec<f64> = randn(&mut r, n, zs).iter().map(|&v| v as f64).collect();
    let u = uniform(&mut r, n, 0.0, 1.0);
    // A third each: y = 0, y = 1, soft labels.
    let y: Vec<f64> = u.iter().enumerate().map(|(i, &v)| match i % 3 {
        0 => 0.0,
        1 => 1.0,
        _ => v as f64,
    }).collect();
    (z, y)
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * (1.0 + b.abs())
}

#[test]
fn twin_matches_hand_computed_values() {
    let ln2 = 2f64.ln();
    let l43 = (4.0f64 / 3.0).ln();
    let l3 = 3f64.ln();
    // (z, y, alpha, gamma, loss, grad), worked out by hand: z = 0 → a = b = 1/2; z = ln 3 →
    // a = 3/4, b = 1/4.
    let cases: [(f64, f64, Option<f32>, f32, f64, f64); 10] = [
        (0.0, 1.0, None, 0.0, ln2, -0.5),
        (0.0, 0.0, None, 0.0, ln2, 0.5),
        (0.0, 1.0, None, 2.0, 0.25 * ln2, 0.25 * (-0.5 - ln2)),
        (0.0, 1.0, Some(0.25), 2.0, 0.0625 * ln2, 0.0625 * (-0.5 - ln2)),
        (0.0, 0.0, Some(0.25), 2.0, 0.1875 * ln2, 0.1875 * (0.5 + ln2)),
        (l3, 1.0, None, 2.0, l43 / 16.0, (-0.25 - 1.5 * l43) / 16.0),
        (l3, 0.0, None, 1.0, 0.75 * 4f64.ln(), 0.75 * (0.75 + 4f64.ln() * 0.25)),
        // Soft label 1/2: q = 1/2 and 1 − 2y = 0, so grad = q^γ (a − y).
        (l3, 0.5, None, 2.0, 0.25 * (2.0 * ln2 - 0.5 * l3), 0.0625),
        (-l3, 1.0, Some(0.5), 0.0, 0.5 * 4f64.ln(), -0.375),
        // γ = 1/2 at z = −ln 3, y = 0: a = 1/4, q = 1/4, ce = ln(4/3); grad = q^½ (a + ½ ce a b / q).
        (-l3, 0.0, None, 0.5, 0.5 * l43, 0.5 * (0.25 + 0.5 * l43 * 0.75)),
    ];
    for (z, y, alpha, gamma, wl, wg) in cases {
        let (l, g) = run(&[z], &[y], &[1], none(alpha, gamma));
        assert!(close(l[0], wl, 1e-14) && close(g[0], wg, 1e-14), "z={z} y={y} α={alpha:?} γ={gamma}: ({}, {}) vs ({wl}, {wg})", l[0], g[0]);
    }
    // Reductions of two elements: sum, mean, and the mean's gradient divided by n.
    let (z, y) = ([0.0, l3], [1.0, 0.5]);
    let sp = |r| BceSpec::focal(None, 2.0, r);
    let (l1, l2) = (0.25 * ln2, 0.25 * (2.0 * ln2 - 0.5 * l3));
    let (ls, gs) = run(&z, &y, &[2], sp(Reduction::Sum));
    let (lm, gm) = run(&z, &y, &[2], sp(Reduction::Mean));
    assert!(close(ls[0], l1 + l2, 1e-14) && close(lm[0], (l1 + l2) / 2.0, 1e-14), "{ls:?} {lm:?}");
    assert!(close(gs[0], 0.25 * (-0.5 - ln2), 1e-14) && close(gm[0], gs[0] / 2.0, 1e-15) && close(gm[1], 0.03125, 1e-15), "{gs:?} {gm:?}");
}

#[test]
fn twin_matches_an_independent_formula_on_random_inputs() {
    let n = 3000;
    // |z| up to ~11: the literal formula's 1 − p stays accurate to ~1e-11.
    let (z, y) = inputs(1, n, 3.0);
    for (alpha, gamma) in SPECS {
        let (l, g) = run(&z, &y, &[3, n / 3], none(alpha, gamma));
        let (mut sum, mut sg) = (0.0, vec![0.0; n]);
        for i in 0..n {
            let (wl, wg) = literal(z[i], y[i], alpha.map(f64::from), gamma as f64);
            assert!(close(l[i], wl, 1e-9) && close(g[i], wg, 1e-9), "α={alpha:?} γ={gamma} z={} y={}: ({}, {}) vs ({wl}, {wg})", z[i], y[i], l[i], g[i]);
            sum += wl;
            sg[i] = wg;
        }
        for (r, want) in [(Reduction::Sum, sum), (Reduction::Mean, sum / n as f64)] {
            let (lr, gr) = run(&z, &y, &[3, n / 3], BceSpec::focal(alpha, gamma, r));
            assert!(close(lr[0], want, 1e-10), "{r:?}: {} vs {want}", lr[0]);
            let s = if r == Reduction::Mean { 1.0 / n as f64 } else { 1.0 };
            assert!(gr.iter().zip(&sg).all(|(a, b)| close(*a, b * s, 1e-9)), "{r:?} gradient");
        }
    }
    // And plain BCE against PyTorch's own formula for it.
    let (l, g) = run(&z, &y, &[n], BceSpec::plain(Reduction::None));
    for i in 0..n {
        let (wl, wg) = plain(z[i], y[i]);
        assert!(close(l[i], wl, 1e-12) && close(g[i], wg, 1e-12), "plain z={} y={}", z[i], y[i]);
    }
}

#[test]
fn gradient_matches_finite_differences() {
    // Central differences of Σ u_i loss_i (the upstream scaling included), every spec and
    // reduction, logits spread to ±12 (tails of the focal factor).
    let n = 300;
    let (z, y) = inputs(2, n, 4.0);
    let mut r = rng(3);
    let u: Vec<f64> = randn(&mut r, n, 1.0).iter().map(|&v| v as f64).collect();
    let h = 1e-6;
    for (alpha, gamma) in SPECS {
        for red in [Reduction::None, Reduction::Mean, Reduction::Sum] {
            let spec = BceSpec::focal(alpha, gamma, red);
            let up: Vec<f64> = if red == Reduction::None { u.clone() } else { vec![0.7] };
            let total = |z: &[f64]| -> f64 {
                let (l, _) = run(z, &y, &[n], spec);
                l.iter().zip(&up).map(|(a, b)| a * b).sum()
            };
            let (_, mut g) = run(&z, &y, &[n], spec);
            bce_backward(ViewMut::host(&mut g, &[n]).unwrap(), View::host(&up, &loss_shape(&[n], red)).unwrap(), spec).unwrap();
            for i in (0..n).step_by(7) {
                let (mut zp, mut zm) = (z.clone(), z.clone());
                zp[i] += h;
                zm[i] -= h;
                let fd = (total(&zp) - total(&zm)) / (2.0 * h);
                let tol = 1e-7 * (1.0 + total(&z).abs()) + 1e-6 * g[i].abs();
                assert!((fd - g[i]).abs() <= tol, "α={alpha:?} γ={gamma} {red:?} z[{i}]={} y={}: fd {fd} vs {}", z[i], y[i], g[i]);
            }
        }
    }
}

#[test]
fn gamma_zero_is_plain_bce() {
    let n = 999;
    let (z, y) = inputs(4, n, 8.0);
    for red in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        let (lp, gp) = run(&z, &y, &[n], BceSpec::plain(red));
        let (lf, gf) = run(&z, &y, &[n], BceSpec::focal(None, 0.0, red));
        assert!(lp.iter().zip(&lf).chain(gp.iter().zip(&gf)).all(|(a, b)| a.to_bits() == b.to_bits()), "{red:?}: γ = 0 differs from plain");
        // γ → 0⁺ is continuous.
        let (ls, gs) = run(&z, &y, &[n], BceSpec::focal(None, 1e-9, red));
        assert!(lp.iter().zip(&ls).chain(gp.iter().zip(&gs)).all(|(a, b)| close(*b, *a, 1e-7)), "{red:?}: γ = 1e-9 far from plain");
    }
    // α = 1/2 with hard labels is exactly half of plain BCE (α_t = 1/2 exactly).
    let hard: Vec<f64> = y.iter().map(|v| v.round()).collect();
    let (lp, gp) = run(&z, &hard, &[n], BceSpec::plain(Reduction::None));
    let (lh, gh) = run(&z, &hard, &[n], none(Some(0.5), 0.0));
    assert!(lp.iter().zip(&lh).chain(gp.iter().zip(&gh)).all(|(a, b)| (a * 0.5).to_bits() == b.to_bits()), "α = 1/2 is not half of plain");
    // In f32 storage too (the twin rounds once on store).
    let (z32, y32): (Vec<f32>, Vec<f32>) = (z.iter().map(|&v| v as f32).collect(), y.iter().map(|&v| v as f32).collect());
    let (mut l, mut g) = (vec![0f32; n], vec![0f32; n]);
    bce_loss(View::host(&z32, &[n]).unwrap(), View::host(&y32, &[n]).unwrap(), ViewMut::host(&mut l, &[n]).unwrap(), Some(ViewMut::host(&mut g, &[n]).unwrap()), None, none(None, 0.0)).unwrap();
    for i in 0..n {
        let (wl, wg) = plain(z32[i] as f64, y32[i] as f64);
        assert!(close(l[i] as f64, wl, 1e-7) && (g[i] as f64 - wg).abs() <= 1e-7, "f32 z={} y={}", z32[i], y32[i]);
    }
}

#[test]
fn extreme_logits_are_finite_and_correct() {
    // Asymptotics: for |z| ≫ 1, on the wrong side ce = |z| (times 1 − y or y), q = 1; on the right
    // side ce = e^−|z|, q = e^−|z| (hard labels).
    for &zabs in &[30.0f64, 100.0, 745.0, 800.0, 1e4, 1e30] {
        for (alpha, gamma) in SPECS {
            let at = |y: f64| alpha.map_or(1.0, |a| a as f64 * y + (1.0 - a as f64) * (1.0 - y));
            let e = (-zabs).exp();
            let g = gamma as f64;
            // (z, y, loss, grad)
            let want = [
                (zabs, 0.0, zabs * at(0.0), at(0.0) * (1.0 + g * zabs * e)),
                (-zabs, 1.0, zabs * at(1.0), -at(1.0) * (1.0 + g * zabs * e)),
                (zabs, 1.0, at(1.0) * e * e.powf(g), -at(1.0) * e.powf(g) * e * (1.0 + g)),
                (-zabs, 0.0, at(0.0) * e * e.powf(g), at(0.0) * e.powf(g) * e * (1.0 + g)),
                // Soft label 0.3 at +|z|: ce = 0.7|z|, q = 0.7, r = 0: loss 0.7|z|·0.7^γ, grad 0.7^γ·0.7.
                (zabs, 0.3, at(0.3) * 0.7 * zabs * 0.7f64.powf(g), at(0.3) * 0.7f64.powf(g) * 0.7),
            ];
            for (z, y, wl, wg) in want {
                let (l, gr) = run(&[z], &[y], &[1], none(alpha, gamma));
                assert!(l[0].is_finite() && gr[0].is_finite(), "z={z} y={y} α={alpha:?} γ={gamma}: ({}, {})", l[0], gr[0]);
                // Relative (down to subnormal results, where one ulp of 5e-324 is the floor).
                assert!((l[0] - wl).abs() <= 1e-9 * wl.abs() + 1e-300 && (gr[0] - wg).abs() <= 1e-9 * wg.abs() + 1e-300, "z={z} y={y} α={alpha:?} γ={gamma}: ({}, {}) vs ({wl}, {wg})", l[0], gr[0]);
                // f32 storage: the same values rounded (z = 1e30 still finite in f32).
                let (z32, y32) = ([z as f32], [y as f32]);
                let (mut l32, mut g32) = ([f32::NAN], [f32::NAN]);
                bce_loss(View::host(&z32, &[1]).unwrap(), View::host(&y32, &[1]).unwrap(), ViewMut::host(&mut l32, &[1]).unwrap(), Some(ViewMut::host(&mut g32, &[1]).unwrap()), None, none(alpha, gamma)).unwrap();
                assert!(l32[0].is_finite() && g32[0].is_finite(), "f32 z={z} y={y}: ({}, {})", l32[0], g32[0]);
            }
        }
    }
}

#[test]
fn q_zero_limit_is_defined_for_every_gamma() {
    // z = 800, y = 1: σ(−z) underflows to exactly 0 in f64, so q = 1 − p_t = 0 and q^(γ−1) would
    // be infinite for γ < 1 (PyTorch's autograd gives NaN there). The twin returns the limit:
    // loss 0 and grad 0 (γ > 0), −0 (γ = 0: σ(z) − 1 = −σ(−z)). Just before the underflow
    // (z = 700, q ≈ 1e-304) the values are tiny and of the limit's sign: continuous.
    for gamma in [0.0f32, 0.1, 0.5, 0.99, 1.0, 2.0, 5.0] {
        for (z, y) in [(800.0f64, 1.0f64), (-800.0, 0.0)] {
            let (l, g) = run(&[z], &[y], &[1], none(Some(0.25), gamma));
            assert!(l[0] == 0.0 && g[0] == 0.0 && !g[0].is_nan(), "γ={gamma} z={z}: ({}, {})", l[0], g[0]);
            let (l7, g7) = run(&[z * 0.875], &[y], &[1], none(Some(0.25), gamma));
            assert!(l7[0] >= 0.0 && l7[0] < 1e-290 && g7[0].abs() < 1e-150 && g7[0] * z <= 0.0, "γ={gamma} z={}: ({}, {})", z * 0.875, l7[0], g7[0]);
            // On the way there the twin agrees with the literal formula where that one is still
            // accurate (z = ±10: 1 − p to ~1e-12), relatively, however small the values.
            let (l10, g10) = run(&[z.signum() * 10.0], &[y], &[1], none(Some(0.25), gamma));
            let (wl, wg) = literal(z.signum() * 10.0, y, Some(0.25), gamma as f64);
            assert!((l10[0] - wl).abs() <= 1e-9 * wl.abs() && (g10[0] - wg).abs() <= 1e-9 * wg.abs(), "γ={gamma} z=±10: ({}, {}) vs ({wl}, {wg})", l10[0], g10[0]);
        }
    }
}

#[test]
fn backward_scales_by_the_upstream_gradient() {
    let n = 50;
    let (z, y) = inputs(5, n, 3.0);
    let mut r = rng(6);
    let u: Vec<f64> = randn(&mut r, n, 1.0).iter().map(|&v| v as f64).collect();
    for red in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        let spec = BceSpec::focal(Some(0.5), 2.0, red);
        let (_, g0) = run(&z, &y, &[5, 10], spec);
        let mut g = g0.clone();
        let up: Vec<f64> = if red == Reduction::None { u.clone() } else { vec![-2.5] };
        bce_backward(ViewMut::host(&mut g, &[5, 10]).unwrap(), View::host(&up, &loss_shape(&[5, 10], red)).unwrap(), spec).unwrap();
        for i in 0..n {
            let k = if red == Reduction::None { u[i] } else { -2.5 };
            assert_eq!(g[i], g0[i] * k, "{red:?} [{i}]");
        }
    }
    // A scalar upstream may also be shaped [].
    let mut g = vec![1.0f64; 4];
    bce_backward(ViewMut::host(&mut g, &[4]).unwrap(), View::host(&[3.0f64], &[]).unwrap(), BceSpec::plain(Reduction::Sum)).unwrap();
    assert_eq!(g, [3.0; 4]);
}

/// (logits, targets, loss, grad shapes, spec, the argument the error must name).
type Case<'a> = (&'a [usize], &'a [usize], &'a [usize], Option<&'a [usize]>, BceSpec, &'a str);

#[test]
fn bad_input_is_a_typed_error() {
    let z = vec![0.5f64; 12];
    let mut l = vec![0.0f64; 12];
    let mut g = vec![0.0f64; 12];
    let call = |zs: &[usize], ys: &[usize], ls: &[usize], gs: Option<&[usize]>, spec: BceSpec, l: &mut [f64], g: &mut [f64]| {
        let (nz, ny, nl) = (zs.iter().product(), ys.iter().product(), ls.iter().product());
        let gv = gs.map(|s| ViewMut::host(&mut g[..s.iter().product::<usize>()], s).unwrap());
        bce_loss(View::host(&z[..nz], zs).unwrap(), View::host(&z[..ny], ys).unwrap(), ViewMut::host(&mut l[..nl], ls).unwrap(), gv, None, spec)
    };
    let ok = none(Some(0.5), 2.0);
    assert!(call(&[3, 4], &[3, 4], &[3, 4], Some(&[3, 4]), ok, &mut l, &mut g).is_ok());
    let cases: [Case<'_>; 10] = [
        (&[3, 4], &[4, 3], &[3, 4], Some(&[3, 4]), ok, "targets"),
        (&[3, 4], &[12], &[3, 4], None, ok, "targets"),
        (&[3, 4], &[3, 4], &[12], None, ok, "loss"),
        (&[3, 4], &[3, 4], &[1], None, ok, "loss"),
        (&[3, 4], &[3, 4], &[2], None, BceSpec::focal(None, 2.0, Reduction::Mean), "loss"),
        (&[3, 4], &[3, 4], &[1, 1], None, BceSpec::plain(Reduction::Sum), "loss"),
        (&[3, 4], &[3, 4], &[3, 4], Some(&[4, 3]), ok, "grad"),
        (&[0], &[0], &[0], None, ok, "logits"),
        (&[3, 0], &[3, 0], &[1], None, BceSpec::plain(Reduction::Mean), "logits"),
        (&[], &[], &[], None, ok, "none: a scalar is fine"),
    ];
    for (zs, ys, ls, gs, spec, arg) in cases {
        let e = call(zs, ys, ls, gs, spec, &mut l, &mut g);
        if arg.starts_with("none") {
            assert!(e.is_ok(), "{zs:?}: {e:?}");
        } else {
            assert!(matches!(e, Err(Error::Shape { arg: a, .. }) if a == arg), "{zs:?} {ys:?} {ls:?} {gs:?}: {e:?}");
        }
    }
    for (alpha, gamma, arg) in [(None, -0.5, "gamma"), (None, f32::NAN, "gamma"), (None, f32::INFINITY, "gamma"), (Some(-0.1), 2.0, "alpha"), (Some(1.1), 2.0, "alpha"), (Some(f32::NAN), 2.0, "alpha")] {
        let e = call(&[3, 4], &[3, 4], &[3, 4], Some(&[3, 4]), none(alpha, gamma), &mut l, &mut g);
        assert!(matches!(e, Err(Error::Value { arg: a, .. }) if a == arg), "α={alpha:?} γ={gamma}: {e:?}");
        let e = bce_backward(ViewMut::host(&mut g, &[12]).unwrap(), View::host(&z, &[12]).unwrap(), none(alpha, gamma));
        assert!(matches!(e, Err(Error::Value { arg: a, .. }) if a == arg), "backward α={alpha:?} γ={gamma}: {e:?}");
    }
    let e = bce_backward(ViewMut::host(&mut g, &[12]).unwrap(), View::host(&z[..1], &[1]).unwrap(), ok);
    assert!(matches!(e, Err(Error::Shape { arg: "upstream", .. })), "{e:?}");
    let e = bce_backward(ViewMut::host(&mut g, &[12]).unwrap(), View::host(&z, &[12]).unwrap(), BceSpec::plain(Reduction::Mean));
    assert!(matches!(e, Err(Error::Shape { arg: "upstream", .. })), "{e:?}");
    let e = bce_backward(ViewMut::host(&mut g[..0], &[0]).unwrap(), View::host(&z[..0], &[0]).unwrap(), ok);
    assert!(matches!(e, Err(Error::Shape { arg: "grad", .. })), "{e:?}");
    // Nothing is written on an error.
    let mut l = vec![7.0f64; 12];
    let mut g2 = vec![7.0f64; 12];
    let e = call(&[3, 4], &[3, 4], &[3, 4], Some(&[3, 4]), none(Some(2.0), 2.0), &mut l, &mut g2);
    assert!(e.is_err() && l.iter().chain(&g2).all(|&v| v == 7.0));
}

#[test]
fn workspace_is_a_function_of_n() {
    assert_eq!(loss_workspace_bytes(8 * 15_360, Reduction::None), 0);
    assert_eq!(loss_workspace_bytes(8 * 15_360, Reduction::Mean), 4 * 120);
    assert_eq!(loss_workspace_bytes(1, Reduction::Sum), 4);
    assert_eq!(loss_workspace_bytes(1025, Reduction::Sum), 8);
    assert_eq!(loss_workspace_bytes(16 << 20, Reduction::Mean), 4 * 1024);
    assert_eq!(loss_workspace_bytes(usize::MAX / 2, Reduction::Mean), 4 * 1024);
}

#[test]
fn device_mismatch_is_a_typed_error() {
    let Some(dev) = gpu_or_skip("device_mismatch_is_a_typed_error") else { return };
    let mut plan = Plan::new();
    let bz = plan.add::<f32>("z", &[12], Role::Activation).unwrap();
    let bw = plan.add::<f32>("ws", &[4], Role::Workspace).unwrap();
    let mut arena = Arena::new(&dev, &plan).unwrap();
    let (y, mut l) = (vec![1.0f32; 12], vec![0.0f32; 1]);
    let b = arena.borrow();
    let e = bce_loss(b.read(bz).unwrap(), View::host(&y, &[12]).unwrap(), ViewMut::host(&mut l, &[1]).unwrap(), None, Some(b.write(bw).unwrap()), BceSpec::plain(Reduction::Mean));
    assert!(matches!(e, Err(Error::DeviceMismatch { arg: "targets", .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

/// `tol`: relative tolerance of the gradient; `atol`: absolute, as a fraction of max |grad| (the
/// cancellation in (1 − y)·σ(z) − y·σ(−z) for soft labels near the zero crossing).
fn gpu_case<T: snug::Element + snug::ops::Real>(dev: &snug::Device, shape: &[usize], seed: u64, tol: f64, atol: f64) {
    let n: usize = shape.iter().product();
    let (z, y) = inputs(seed, n, 6.0);
    let mut z = z;
    // Extreme logits in the mix (every 97th: ±100, ±1e4).
    for (i, v) in z.iter_mut().enumerate().filter(|(i, _)| i % 97 == 5) {
        *v = [100.0, -100.0, 1e4, -1e4][(i / 97) % 4];
    }
    let rt = |v: &[f64]| v.iter().map(|&x| T::round_f64(x)).collect::<Vec<T>>();
    let (zt, yt) = (rt(&z), rt(&y));
    let w64 = |v: &[T]| v.iter().map(|t| t.to_f64().unwrap()).collect::<Vec<f64>>();
    let (z6, y6) = (w64(&zt), w64(&yt));
    let mut r = rng(seed + 1);
    let u: Vec<f32> = randn(&mut r, n, 1.0);
    for (k, (alpha, gamma)) in SPECS.into_iter().enumerate() {
        // Past the grid's block cap: the seed's spec and one through powf (the twin is slow there).
        if n > 1 << 20 && k != 1 && k != 3 {
            continue;
        }
        let lsum: f64 = run(&z6, &y6, shape, none(alpha, gamma)).0.iter().map(|v| v.abs()).sum();
        for red in [Reduction::None, Reduction::Mean, Reduction::Sum] {
            let spec = BceSpec::focal(alpha, gamma, red);
            let ls = loss_shape(shape, red);
            let (wl, wg) = run(&z6, &y6, shape, spec);
            let up: Vec<f32> = if red == Reduction::None { u.clone() } else { vec![-1.75] };
            let mut wgs = wg.clone();
            bce_backward(ViewMut::host(&mut wgs, shape).unwrap(), View::host(&up.iter().map(|&v| v as f64).collect::<Vec<_>>(), &ls).unwrap(), spec).unwrap();
            let mut plan = Plan::new();
            let (bz, by, bg) = (plan.add::<T>("z", shape, Role::Activation).unwrap(), plan.add::<T>("y", shape, Role::Io).unwrap(), plan.add::<T>("g", shape, Role::Grad).unwrap());
            let bl = plan.add::<f32>("loss", &ls, Role::Io).unwrap();
            let bu = plan.add::<f32>("up", &ls, Role::Io).unwrap();
            let bw = plan.add::<f32>("ws", &[loss_workspace_bytes(n, red).max(4) / 4], Role::Workspace).unwrap();
            let mut arena = Arena::new(dev, &plan).unwrap();
            arena.upload(bz, &zt).unwrap();
            arena.upload(by, &yt).unwrap();
            arena.upload(bu, &up).unwrap();
            let what = format!("{} shape={shape:?} α={alpha:?} γ={gamma} {red:?}", T::DTYPE);
            let mut runs = Vec::new();
            for _ in 0..2 {
                for b in [bl, bw] {
                    poison(&mut arena, b).unwrap();
                }
                poison(&mut arena, bg).unwrap();
                {
                    let v = arena.borrow();
                    bce_loss(v.read(bz).unwrap(), v.read(by).unwrap(), v.write(bl).unwrap(), Some(v.write(bg).unwrap()), Some(v.write(bw).unwrap()), spec).unwrap();
                }
                let (gl, gg) = (arena.download(bl).unwrap(), w64(&arena.download(bg).unwrap()));
                // Loss: f32 math on exactly the twin's inputs; a reduction adds its rounding chain.
                // A reduction: its f32 rounding chain, plus each element's z·y rounding.
                let zsum: f64 = z6.iter().map(|v| v.abs()).sum();
                let lscale = match red {
                    Reduction::None => 0.0,
                    Reduction::Sum => lsum + 3e-3 * zsum,
                    Reduction::Mean => (lsum + 3e-3 * zsum) / n as f64,
                };
                // Per element: f32 relative error, plus the rounding of z·y in max(z, 0) − z·y
                // (soft labels near 1 at large z: up to ~2u·|z|), plus the subnormal floor.
                for (i, (a, w)) in gl.iter().zip(&wl).enumerate() {
                    let a = *a as f64;
                    let zi = if red == Reduction::None { z6[i].abs() } else { 0.0 };
                    assert!((a - w).abs() <= 1e-5 * w.abs() + 3e-7 * zi + 1e-4 * lscale + 1e-30, "{what}: loss[{i}] {a} vs {w}");
                }
                let gscale = wg.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
                for (i, (a, w)) in gg.iter().zip(&wg).enumerate() {
                    assert!((a - w).abs() <= tol * w.abs() + atol * gscale, "{what}: grad[{i}] {a} vs {w}");
                }
                {
                    let v = arena.borrow();
                    bce_backward(v.write(bg).unwrap(), v.read(bu).unwrap(), spec).unwrap();
                }
                let gb = w64(&arena.download(bg).unwrap());
                for (i, (a, w)) in gb.iter().zip(&wgs).enumerate() {
                    let ui = up[if red == Reduction::None { i } else { 0 }].abs() as f64;
                    assert!((a - w).abs() <= 2.0 * (tol * w.abs() + atol * gscale * ui), "{what}: scaled grad[{i}] {a} vs {w}");
                }
                runs.push((gl.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), gg.iter().chain(&gb).map(|v| v.to_bits()).collect::<Vec<_>>()));
            }
            assert!(runs[0] == runs[1], "{what}: two runs differ");
        }
    }
}

#[test]
fn gpu_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_matches_twin") else { return };
    // The seed's logits (8, 15360), ragged sizes around the vector width and the block's elements,
    // and one past the grid's 1024-block cap (grid-stride).
    for (k, shape) in [&[8usize, 15_360][..], &[1], &[3], &[7, 3], &[1025], &[3, 1001], &[1, 1_100_003]].iter().enumerate() {
        gpu_case::<f32>(&dev, shape, 10 + k as u64, 1e-5, 2e-6);
        gpu_case::<half::bf16>(&dev, shape, 20 + k as u64, 1e-2, 1e-3);
    }
}
