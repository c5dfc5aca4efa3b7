//! Batched eigh and its backward: the CPU twin (nalgebra, f64) against closed forms and finite
//! differences; the CUDA kernels against the twin (residual, orthogonality, eigenvalues,
//! eigenspace projectors, the sign convention), non-finite isolation, determinism, bad input.

mod common;

use common::*;
use snug::ops::eigh::{check_info, eigh, eigh_backward, eigh_checked, DEFAULT_EPS_REL, INFO_NONFINITE, INFO_OK};
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Device, Error, Plan, Role, View, ViewMut};

/// Runs the f64 twin on `a` (batch × n × n) and returns (w, v, info).
fn twin(a: &[f64], batch: usize, n: usize) -> (Vec<f64>, Vec<f64>, Vec<i32>) {
    let (mut w, mut v, mut info) = (vec![0.0; batch * n], vec![0.0; batch * n * n], vec![-1; batch]);
    eigh(
        View::host(a, &[batch, n, n]).unwrap(),
        ViewMut::host(&mut w, &[batch, n]).unwrap(),
        ViewMut::host(&mut v, &[batch, n, n]).unwrap(),
        Some(ViewMut::host(&mut info, &[batch]).unwrap()),
    )
    .unwrap();
    (w, v, info)
}

#[test]
fn twin_is_accurate_on_every_family_and_size() {
    let mut r = rng(1);
    for n in 1..=32 {
        for f in FAMILIES {
            let a = widen(&matrix(&mut r, f, n));
            let (w, v, info) = twin(&a, 1, n);
            assert_eq!(info, vec![INFO_OK]);
            let (res, orth) = residual_and_orthogonality(&a, &w, &v, n);
            assert!(res <= 1e-12 && orth <= 1e-12, "{f:?} n={n}: residual {res:e}, orthogonality {orth:e}");
            assert!(w.windows(2).all(|p| p[0] <= p[1]), "{f:?} n={n}: not ascending {w:?}");
            for c in 0..n {
                assert!(sign_ok(&v, n, c), "{f:?} n={n}: column {c} breaks the sign convention");
            }
        }
    }
}

#[test]
fn twin_matches_closed_forms() {
    // Path graph P_n: eigenvalues 2 − 2 cos(πk/n), k = 0..n−1.
    for n in [2usize, 5, 19, 32] {
        let mut adj = vec![0.0; n * n];
        for i in 0..n - 1 {
            adj[i * n + i + 1] = 1.0;
            adj[(i + 1) * n + i] = 1.0;
        }
        let (w, _, _) = twin(&laplacian(&adj, n), 1, n);
        for (k, wk) in w.iter().enumerate() {
            let want = 2.0 - 2.0 * (std::f64::consts::PI * k as f64 / n as f64).cos();
            assert!((wk - want).abs() < 1e-12, "path n={n} k={k}: {wk} vs {want}");
        }
    }
    // Complete graph K_n: 0 once, n with multiplicity n − 1; the 0-eigenvector is constant, positive.
    let n = 7;
    let adj: Vec<f64> = (0..n * n).map(|k| if k / n == k % n { 0.0 } else { 1.0 }).collect();
    let (w, v, _) = twin(&laplacian(&adj, n), 1, n);
    assert!(w[0].abs() < 1e-12 && w[1..].iter().all(|x| (x - n as f64).abs() < 1e-12));
    assert!((0..n).all(|r| (v[r * n] - 1.0 / (n as f64).sqrt()).abs() < 1e-12));
    // Diagonal: sorted diagonal, unit vectors with +1; zero matrix: w = 0, V orthonormal.
    let d = [3.0, -1.0, 2.0];
    let a: Vec<f64> = (0..9).map(|k| if k / 3 == k % 3 { d[k / 3] } else { 0.0 }).collect();
    let (w, v, _) = twin(&a, 1, 3);
    assert_eq!(w, vec![-1.0, 2.0, 3.0]);
    assert_eq!(v, vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    let (w, v, _) = twin(&[0.0; 16], 1, 4);
    assert_eq!(w, vec![0.0; 4]);
    assert!(residual_and_orthogonality(&[0.0; 16], &w, &v, 4).1 < 1e-15);
    // 1×1 and 2×2.
    assert_eq!(twin(&[-2.5], 1, 1).0, vec![-2.5]);
    let (w, v, _) = twin(&[2.0, 1.0, 1.0, 2.0], 1, 2);
    let s = std::f64::consts::FRAC_1_SQRT_2;
    assert!((w[0] - 1.0).abs() < 1e-15 && (w[1] - 3.0).abs() < 1e-15);
    // (1, −1)/√2 is a tie: its first (largest) entry is made positive. (1, 1)/√2 sums positive.
    assert!([v[0] - s, v[2] + s, v[1] - s, v[3] - s].iter().all(|e| e.abs() < 1e-15), "{v:?}");
}

#[test]
fn only_the_upper_triangle_is_read() {
    let mut r = rng(2);
    let n = 9;
    let a = widen(&matrix(&mut r, Family::RandomSymmetric, n));
    let mut garbage = a.clone();
    for i in 0..n {
        for j in 0..i {
            garbage[i * n + j] = 1e6 * (i + j) as f64;
        }
    }
    assert_eq!(twin(&a, 1, n).0, twin(&garbage, 1, n).0);
    assert_eq!(twin(&a, 1, n).1, twin(&garbage, 1, n).1);
}

#[test]
fn non_finite_matrices_are_isolated_and_reported() {
    let n = 4;
    let mut r = rng(3);
    let mut a: Vec<f64> = (0..3).flat_map(|_| widen(&matrix(&mut r, Family::RandomSymmetric, n))).collect();
    a[n * n + 1] = f64::NAN; // matrix 1, upper triangle
    let (w, v, info) = twin(&a, 3, n);
    assert_eq!(info, vec![INFO_OK, INFO_NONFINITE, INFO_OK]);
    assert!(w[n..2 * n].iter().chain(&v[n * n..2 * n * n]).all(|x| x.is_nan()));
    assert!(w[..n].iter().chain(&w[2 * n..]).all(|x| x.is_finite()));
    let (mut w, mut v, mut info) = (vec![0.0; 3 * n], vec![0.0; 3 * n * n], vec![0; 3]);
    let e = eigh_checked(
        View::host(&a, &[3, n, n]).unwrap(),
        ViewMut::host(&mut w, &[3, n]).unwrap(),
        ViewMut::host(&mut v, &[3, n, n]).unwrap(),
        ViewMut::host(&mut info, &[3]).unwrap(),
    );
    assert!(matches!(e, Err(Error::Numerical { index: 1, .. })), "{e:?}");
    // A NaN in the lower triangle is not read.
    let mut b = widen(&matrix(&mut r, Family::RandomSymmetric, n));
    b[n] = f64::NAN;
    assert_eq!(twin(&b, 1, n).2, vec![INFO_OK]);
}

/// L = Σ gw·w + Σ gV·V through the twin, for finite differences.
fn loss(a: &[f64], n: usize, gw: &[f64], gv: &[f64]) -> f64 {
    let (w, v, _) = twin(a, 1, n);
    w.iter().zip(gw).map(|(x, g)| x * g).sum::<f64>() + v.iter().zip(gv).map(|(x, g)| x * g).sum::<f64>()
}

fn twin_backward(w: &[f64], v: &[f64], gw: Option<&[f64]>, gv: Option<&[f64]>, batch: usize, n: usize, eps_rel: f32) -> Vec<f64> {
    let mut ga = vec![0.0; batch * n * n];
    eigh_backward(
        View::host(w, &[batch, n]).unwrap(),
        View::host(v, &[batch, n, n]).unwrap(),
        gw.map(|g| View::host(g, &[batch, n]).unwrap()),
        gv.map(|g| View::host(g, &[batch, n, n]).unwrap()),
        ViewMut::host(&mut ga, &[batch, n, n]).unwrap(),
        eps_rel,
    )
    .unwrap();
    ga
}

#[test]
fn backward_matches_finite_differences() {
    let mut r = rng(4);
    for n in [1usize, 2, 3, 6, 19] {
        let a = widen(&matrix(&mut r, Family::RandomSymmetric, n));
        let gw = widen(&randn(&mut r, n, 1.0));
        let gv = widen(&randn(&mut r, n * n, 1.0));
        let (w, v, _) = twin(&a, 1, n);
        let ga = twin_backward(&w, &v, Some(&gw), Some(&gv), 1, n, 0.0);
        let scale = ga.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
        let h = 1e-6;
        for i in 0..n {
            for j in i..n {
                // A symmetric perturbation of (i, j) and (j, i): dL = gA_ij + gA_ji.
                let mut ap = a.clone();
                let mut am = a.clone();
                let cells: &[(usize, usize)] = if i == j { &[(i, i)] } else { &[(i, j), (j, i)] };
                for &(x, y) in cells {
                    ap[x * n + y] += h;
                    am[x * n + y] -= h;
                }
                let fd = (loss(&ap, n, &gw, &gv) - loss(&am, n, &gw, &gv)) / (2.0 * h);
                let an = if i == j { ga[i * n + i] } else { ga[i * n + j] + ga[j * n + i] };
                assert!((fd - an).abs() <= 1e-6 * scale.max(fd.abs()), "n={n} ({i},{j}): analytic {an:e}, finite difference {fd:e}");
            }
        }
        // gA is symmetric.
        for i in 0..n {
            for j in 0..n {
                assert!((ga[i * n + j] - ga[j * n + i]).abs() <= 1e-12 * scale);
            }
        }
    }
}

#[test]
fn backward_is_finite_on_degenerate_spectra_and_exact_elsewhere() {
    let mut r = rng(5);
    let n = 6;
    // Identity: every eigenvalue repeated. Without broadening F would be 1/0.
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        a[i * n + i] = 1.0;
    }
    let (w, v, _) = twin(&a, 1, n);
    let gv = widen(&randn(&mut r, n * n, 1.0));
    for eps in [DEFAULT_EPS_REL, 0.0] {
        let ga = twin_backward(&w, &v, None, Some(&gv), 1, n, eps);
        assert!(ga.iter().all(|x| x.is_finite()), "eps_rel {eps}: {ga:?}");
    }
    // With only gw, gA = V diag(gw) Vᵀ whatever the spectrum.
    let gw = widen(&randn(&mut r, n, 1.0));
    let ga = twin_backward(&w, &v, Some(&gw), None, 1, n, DEFAULT_EPS_REL);
    for i in 0..n {
        for j in 0..n {
            let want: f64 = (0..n).map(|c| v[i * n + c] * gw[c] * v[j * n + c]).sum();
            assert!((ga[i * n + j] - want).abs() < 1e-12);
        }
    }
    // Broadening: on a separated spectrum the default eps changes gA by O(eps²) only.
    let a = widen(&matrix(&mut r, Family::RandomSymmetric, n));
    let (w, v, _) = twin(&a, 1, n);
    let exact = twin_backward(&w, &v, None, Some(&gv), 1, n, 0.0);
    let broad = twin_backward(&w, &v, None, Some(&gv), 1, n, DEFAULT_EPS_REL);
    let d = exact.iter().zip(&broad).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    let scale = exact.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    // Relative change ~ (eps / smallest gap)², far below f32 resolution.
    assert!(d <= 1e-6 * scale, "default broadening moved gA by {d:e} (max |gA| {scale:e})");
}

#[test]
fn bad_input_is_a_typed_error() {
    let z = |k: usize| vec![0.0f32; k];
    let (a33, mut w33, mut v33) = (z(33 * 33), z(33), z(33 * 33));
    let r = eigh(View::host(&a33, &[1, 33, 33]).unwrap(), ViewMut::host(&mut w33, &[1, 33]).unwrap(), ViewMut::host(&mut v33, &[1, 33, 33]).unwrap(), None);
    assert!(matches!(r, Err(Error::Shape { arg: "a", .. })), "n = 33: {r:?}");
    let (a, mut w, mut v, mut info) = (z(2 * 12), z(2 * 3), z(2 * 12), vec![0i32; 3]);
    let r = eigh(View::host(&a, &[2, 3, 4]).unwrap(), ViewMut::host(&mut w, &[2, 3]).unwrap(), ViewMut::host(&mut v, &[2, 3, 4]).unwrap(), None);
    assert!(matches!(r, Err(Error::Shape { arg: "a", .. })), "non-square: {r:?}");
    let r = eigh(View::host(&a, &[24]).unwrap(), ViewMut::host(&mut w, &[6]).unwrap(), ViewMut::host(&mut v, &[24]).unwrap(), None);
    assert!(matches!(r, Err(Error::Shape { arg: "a", .. })), "rank 1: {r:?}");
    let (a, mut v) = (z(2 * 9), z(2 * 9));
    let r = eigh(View::host(&a, &[2, 3, 3]).unwrap(), ViewMut::host(&mut w[..3], &[1, 3]).unwrap(), ViewMut::host(&mut v, &[2, 3, 3]).unwrap(), None);
    assert!(matches!(r, Err(Error::Shape { arg: "w", .. })), "batch mismatch w: {r:?}");
    let r = eigh(View::host(&a, &[2, 3, 3]).unwrap(), ViewMut::host(&mut w, &[2, 3]).unwrap(), ViewMut::host(&mut v[..9], &[1, 3, 3]).unwrap(), None);
    assert!(matches!(r, Err(Error::Shape { arg: "v", .. })), "batch mismatch v: {r:?}");
    let r = eigh(
        View::host(&a, &[2, 3, 3]).unwrap(),
        ViewMut::host(&mut w, &[2, 3]).unwrap(),
        ViewMut::host(&mut v, &[2, 3, 3]).unwrap(),
        Some(ViewMut::host(&mut info, &[3]).unwrap()),
    );
    assert!(matches!(r, Err(Error::Shape { arg: "info", .. })), "info length: {r:?}");
    // Backward: gw / gv / ga mismatches, eps_rel.
    let (wv, vv, gw, gv, mut ga) = (z(6), z(18), z(3), z(9), z(18));
    let r = eigh_backward(View::host(&wv, &[2, 3]).unwrap(), View::host(&vv, &[2, 3, 3]).unwrap(), Some(View::host(&gw, &[1, 3]).unwrap()), None, ViewMut::host(&mut ga, &[2, 3, 3]).unwrap(), 0.0);
    assert!(matches!(r, Err(Error::Shape { arg: "gw", .. })), "{r:?}");
    let r = eigh_backward(View::host(&wv, &[2, 3]).unwrap(), View::host(&vv, &[2, 3, 3]).unwrap(), None, Some(View::host(&gv, &[1, 3, 3]).unwrap()), ViewMut::host(&mut ga, &[2, 3, 3]).unwrap(), 0.0);
    assert!(matches!(r, Err(Error::Shape { arg: "gv", .. })), "{r:?}");
    let r = eigh_backward(View::host(&wv, &[2, 3]).unwrap(), View::host(&vv, &[2, 3, 3]).unwrap(), None, None, ViewMut::host(&mut ga[..9], &[1, 3, 3]).unwrap(), 0.0);
    assert!(matches!(r, Err(Error::Shape { arg: "ga", .. })), "{r:?}");
    for eps in [-1.0f32, f32::NAN] {
        let r = eigh_backward(View::host(&wv, &[2, 3]).unwrap(), View::host(&vv, &[2, 3, 3]).unwrap(), None, None, ViewMut::host(&mut ga, &[2, 3, 3]).unwrap(), eps);
        assert!(matches!(r, Err(Error::Value { arg: "eps_rel", .. })), "{r:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// GPU

/// Runs the GPU eigh on `a` (f32, batch × n × n) with poisoned outputs; returns (w, v, info).
fn gpu_eigh(dev: &Device, a: &[f32], batch: usize, n: usize) -> (Vec<f32>, Vec<f32>, Vec<i32>) {
    let mut plan = Plan::new();
    let ba = plan.add::<f32>("a", &[batch, n, n], Role::Activation).unwrap();
    let bw = plan.add::<f32>("w", &[batch, n], Role::Activation).unwrap();
    let bv = plan.add::<f32>("v", &[batch, n, n], Role::Activation).unwrap();
    let bi = plan.add::<i32>("info", &[batch], Role::Io).unwrap();
    let mut arena = Arena::new(dev, &plan).unwrap();
    arena.upload(ba, a).unwrap();
    poison(&mut arena, bw).unwrap();
    poison(&mut arena, bv).unwrap();
    arena.fill_bytes(bi, 0x7f).unwrap();
    {
        let b = arena.borrow();
        eigh(b.read(ba).unwrap(), b.write(bw).unwrap(), b.write(bv).unwrap(), Some(b.write(bi).unwrap())).unwrap();
    }
    (arena.download(bw).unwrap(), arena.download(bv).unwrap(), arena.download(bi).unwrap())
}

/// Checks one GPU result against the f64 twin; `direct` also compares well-separated vectors.
fn check_against_twin(what: &str, a32: &[f32], w: &[f32], v: &[f32], n: usize, direct: bool) {
    let a = sym_upper(&widen(a32), n);
    let (wr, vr, _) = twin(&a, 1, n);
    let (w, v) = (widen(w), widen(v));
    let norm = fro(&a);
    let (res, orth) = residual_and_orthogonality(&a, &w, &v, n);
    assert!(res <= 1e-5 || norm == 0.0, "{what}: residual {res:e}");
    assert!(orth <= 1e-5, "{what}: orthogonality {orth:e}");
    for c in 0..n {
        assert!((w[c] - wr[c]).abs() <= 1e-5 * norm.max(1e-30), "{what}: eigenvalue {c}: {} vs {}", w[c], wr[c]);
        assert!(sign_ok(&v, n, c), "{what}: column {c} breaks the sign convention");
    }
    let gap = 1e-3 * norm;
    for r in clusters(&wr, gap) {
        let d = projector_diff(&v, &vr, n, r.clone());
        assert!(d <= 1e-3, "{what}: eigenspace {r:?} projector differs by {d:e}");
        if direct && r.len() == 1 {
            let c = r.start;
            let sep = [c.checked_sub(1).map(|p| wr[c] - wr[p]), wr.get(c + 1).map(|x| x - wr[c])].into_iter().flatten().fold(f64::INFINITY, f64::min);
            if sep >= 1e-2 * norm {
                let e = (0..n).fold(0.0f64, |m, i| m.max((v[i * n + c] - vr[i * n + c]).abs()));
                assert!(e <= 1e-4, "{what}: eigenvector {c} differs by {e:e}");
            }
        }
    }
}

#[test]
fn gpu_eigh_matches_twin_on_every_family_and_size() {
    let Some(dev) = gpu_or_skip("gpu_eigh_matches_twin_on_every_family_and_size") else { return };
    let mut r = rng(10);
    let batch = 13; // not a multiple of the warps per block
    for n in 1..=32 {
        for f in FAMILIES {
            let a: Vec<f32> = (0..batch).flat_map(|_| matrix(&mut r, f, n)).collect();
            let (w, v, info) = gpu_eigh(&dev, &a, batch, n);
            assert!(info.iter().all(|&i| i == INFO_OK), "{f:?} n={n}: info {info:?}");
            for b in 0..batch {
                let direct = matches!(f, Family::RandomSymmetric | Family::DenseGraph);
                check_against_twin(&format!("{f:?} n={n} #{b}"), &a[b * n * n..][..n * n], &w[b * n..][..n], &v[b * n * n..][..n * n], n, direct);
            }
        }
    }
}

#[test]
fn gpu_eigh_seed_batch_and_single_matrix() {
    let Some(dev) = gpu_or_skip("gpu_eigh_seed_batch_and_single_matrix") else { return };
    let mut r = rng(11);
    let n = 19;
    for batch in [1usize, 7680] {
        let a: Vec<f32> = (0..batch).flat_map(|_| matrix(&mut r, Family::EegGraph, n)).collect();
        let (w, v, info) = gpu_eigh(&dev, &a, batch, n);
        assert!(info.iter().all(|&i| i == INFO_OK));
        for b in (0..batch).step_by(1 + batch / 500) {
            check_against_twin(&format!("seed batch {batch} #{b}"), &a[b * n * n..][..n * n], &w[b * n..][..n], &v[b * n * n..][..n * n], n, false);
        }
    }
}

#[test]
fn gpu_eigh_isolates_non_finite_matrices() {
    let Some(dev) = gpu_or_skip("gpu_eigh_isolates_non_finite_matrices") else { return };
    let mut r = rng(12);
    let n = 5;
    let mut a: Vec<f32> = (0..5).flat_map(|_| matrix(&mut r, Family::RandomSymmetric, n)).collect();
    a[2 * n * n + 3] = f32::NAN;
    a[3 * n * n + n + 1] = f32::INFINITY;
    a[4 * n * n + n] = f32::NAN; // lower triangle: not read
    let (w, v, info) = gpu_eigh(&dev, &a, 5, n);
    assert_eq!(info, vec![INFO_OK, INFO_OK, INFO_NONFINITE, INFO_NONFINITE, INFO_OK]);
    for b in 0..5 {
        let bad = b == 2 || b == 3;
        assert!(w[b * n..][..n].iter().chain(&v[b * n * n..][..n * n]).all(|x| x.is_nan() == bad), "matrix {b}");
    }
    let info_dev = {
        let mut plan = Plan::new();
        let bi = plan.add::<i32>("info", &[5], Role::Io).unwrap();
        let mut arena = Arena::new(&dev, &plan).unwrap();
        arena.upload(bi, &info).unwrap();
        check_info("eigh", &arena.view(bi).unwrap())
    };
    assert!(matches!(info_dev, Err(Error::Numerical { index: 2, .. })), "{info_dev:?}");
}

#[test]
fn gpu_eigh_is_deterministic() {
    let Some(dev) = gpu_or_skip("gpu_eigh_is_deterministic") else { return };
    let mut r = rng(13);
    let n = 19;
    let a: Vec<f32> = (0..1000).flat_map(|_| matrix(&mut r, Family::SparseGraph, n)).collect();
    let x = gpu_eigh(&dev, &a, 1000, n);
    let y = gpu_eigh(&dev, &a, 1000, n);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&x.0), bits(&y.0));
    assert_eq!(bits(&x.1), bits(&y.1));
}

#[test]
fn gpu_eigh_backward_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_eigh_backward_matches_twin") else { return };
    let mut r = rng(14);
    let batch = 13;
    for n in [1usize, 2, 7, 19, 32] {
        for f in [Family::RandomSymmetric, Family::Disconnected, Family::Zero] {
            let a: Vec<f64> = (0..batch).flat_map(|_| widen(&matrix(&mut r, f, n))).collect();
            let (w, v, _) = twin(&a, batch, n);
            let (w32, v32): (Vec<f32>, Vec<f32>) = (w.iter().map(|&x| x as f32).collect(), v.iter().map(|&x| x as f32).collect());
            let gw = randn(&mut r, batch * n, 1.0);
            let gv = randn(&mut r, batch * n * n, 1.0);
            for (use_gw, use_gv) in [(true, true), (true, false), (false, true)] {
                let want = twin_backward(&widen(&w32), &widen(&v32), use_gw.then(|| widen(&gw)).as_deref(), use_gv.then(|| widen(&gv)).as_deref(), batch, n, DEFAULT_EPS_REL);
                let mut plan = Plan::new();
                let bw = plan.add::<f32>("w", &[batch, n], Role::Saved).unwrap();
                let bv = plan.add::<f32>("v", &[batch, n, n], Role::Saved).unwrap();
                let bgw = plan.add::<f32>("gw", &[batch, n], Role::Grad).unwrap();
                let bgv = plan.add::<f32>("gv", &[batch, n, n], Role::Grad).unwrap();
                let bga = plan.add::<f32>("ga", &[batch, n, n], Role::Grad).unwrap();
                let mut arena = Arena::new(&dev, &plan).unwrap();
                arena.upload(bw, &w32).unwrap();
                arena.upload(bv, &v32).unwrap();
                arena.upload(bgw, &gw).unwrap();
                arena.upload(bgv, &gv).unwrap();
                poison(&mut arena, bga).unwrap();
                {
                    let b = arena.borrow();
                    let gwv = if use_gw { Some(b.read(bgw).unwrap()) } else { None };
                    let gvv = if use_gv { Some(b.read(bgv).unwrap()) } else { None };
                    eigh_backward(b.read(bw).unwrap(), b.read(bv).unwrap(), gwv, gvv, b.write(bga).unwrap(), DEFAULT_EPS_REL).unwrap();
                }
                let got = arena.download(bga).unwrap();
                for bi in 0..batch {
                    let (g, wnt) = (&got[bi * n * n..][..n * n], &want[bi * n * n..][..n * n]);
                    let scale = wnt.iter().fold(1.0f64, |m, x| m.max(x.abs()));
                    for (k, (&x, &y)) in g.iter().zip(wnt).enumerate() {
                        assert!((x as f64 - y).abs() <= 1e-4 * scale, "{f:?} n={n} gw={use_gw} gv={use_gv} #{bi} [{k}]: {x} vs {y}");
                    }
                }
            }
        }
    }
}

#[test]
fn gpu_rejects_f64() {
    let Some(dev) = gpu_or_skip("gpu_rejects_f64") else { return };
    let mut plan = Plan::new();
    let a = plan.add::<f64>("a", &[1, 2, 2], Role::Activation).unwrap();
    let w = plan.add::<f64>("w", &[1, 2], Role::Activation).unwrap();
    let v = plan.add::<f64>("v", &[1, 2, 2], Role::Activation).unwrap();
    let mut arena = Arena::new(&dev, &plan).unwrap();
    let b = arena.borrow();
    let r = eigh(b.read(a).unwrap(), b.write(w).unwrap(), b.write(v).unwrap(), None);
    assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
}
