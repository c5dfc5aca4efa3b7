//! cosine_sim: the f64 twin against hand-computed pairs and the textbook formula (pair order
//! enumerated independently), PyTorch's eps rule (each norm clamped, not their product), the clamp,
//! finite differences of the backward (above and below eps, with the clamp), the limits and bad
//! input; the GPU kernels (f32 and bf16, seed and ragged shapes, the grid-stride loop, poisoned
//! outputs, two runs bitwise) against the twin.

use snug::ops::cosine_sim::{cosine_sim, cosine_sim_backward, DEFAULT_EPS, MAX_DIM, MAX_NODES};
use snug::ops::sym_scatter::{self, Triangle};

fn pairs(n: usize) -> usize {
    Triangle::Strict.pairs(n)
}

fn pair_index(i: usize, j: usize, n: usize) -> usize {
    sym_scatter::pair_index(i, j, n, Triangle::Strict).unwrap()
}
use snug::ops::Real;
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

fn fwd<T: Real>(x: &[T], s: [usize; 4], clamp: Option<f32>, eps: f32) -> Vec<T> {
    let mut y = vec![T::nan(); s[0] * pairs(s[1]) * s[2]];
    cosine_sim(View::host(x, &s).unwrap(), ViewMut::host(&mut y, &[s[0], pairs(s[1]), s[2]]).unwrap(), clamp, eps).unwrap();
    y
}

fn bwd<T: Real>(x: &[T], dy: &[T], s: [usize; 4], clamp: Option<f32>, eps: f32) -> Vec<T> {
    let mut dx = vec![T::nan(); x.len()];
    cosine_sim_backward(View::host(x, &s).unwrap(), View::host(dy, &[s[0], pairs(s[1]), s[2]]).unwrap(), ViewMut::host(&mut dx, &s).unwrap(), clamp, eps).unwrap();
    dx
}

fn f64v(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(f64::from).collect()
}

#[test]
fn twin_on_hand_computed_pairs() {
    // N = 4, D = 2: x0 = (3, 4), x1 = (4, -3), x2 = (-6, -8), x3 = 0 (norm below eps: cos 0).
    let x = [3.0, 4.0, 4.0, -3.0, -6.0, -8.0, 0.0, 0.0];
    let s = [1, 4, 1, 2];
    // Pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3).
    assert_eq!(fwd(&x, s, None, DEFAULT_EPS), [0.0, -1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(fwd(&x, s, Some(0.99), DEFAULT_EPS), [0.0, -(0.99f32 as f64), 0.0, 0.0, 0.0, 0.0]);
    // The pair order, enumerated independently.
    let mut p = 0;
    for i in 0..7 {
        for j in i + 1..7 {
            assert_eq!(pair_index(i, j, 7), p);
            p += 1;
        }
    }
    assert_eq!(p, pairs(7));
}

#[test]
fn twin_matches_the_textbook_formula_over_b_and_t() {
    let s = [2usize, 5, 3, 7];
    let [b, n, t, d] = s;
    let x = f64v(randn(&mut rng(1), b * n * t * d, 1.0));
    for clamp in [None, Some(0.3f32)] {
        let y = fwd(&x, s, clamp, DEFAULT_EPS);
        let mut p = 0;
        for i in 0..n {
            for j in i + 1..n {
                for bi in 0..b {
                    for ti in 0..t {
                        let v = |k: usize| &x[((bi * n + k) * t + ti) * d..][..d];
                        let dot: f64 = v(i).iter().zip(v(j)).map(|(a, c)| a * c).sum();
                        let nn = |k: usize| v(k).iter().map(|a| a * a).sum::<f64>().sqrt();
                        let mut want = dot / (nn(i) * nn(j));
                        if let Some(c) = clamp {
                            want = want.clamp(-(c as f64), c as f64);
                        }
                        let got = y[(bi * pairs(n) + p) * t + ti];
                        assert!((got - want).abs() <= 1e-14, "b {bi} pair ({i},{j}) t {ti}: {got} vs {want}");
                    }
                }
                p += 1;
            }
        }
    }
}

#[test]
fn eps_clamps_each_norm_like_current_pytorch() {
    // ‖x0‖ = 5e-9 < eps = 1e-8 ≤ ‖x1‖ = 2: cos = ⟨x0, x1⟩ / (eps · 2) (current PyTorch), not
    // ⟨x0, x1⟩ / max(‖x0‖‖x1‖, eps) (PyTorch < 1.12, which would give 1.0 here).
    let x = [3e-9, 4e-9, 0.0, 2.0];
    let y = fwd(&x, [1, 2, 1, 2], None, 1e-8);
    let want = (4e-9 * 2.0) / (1e-8f32 as f64 * 2.0);
    assert!((y[0] - want).abs() <= 1e-15, "{} vs {want}", y[0]);
    // A larger eps takes over for both vectors.
    let y = fwd(&x, [1, 2, 1, 2], None, 4.0);
    assert!((y[0] - 8e-9 / 16.0).abs() <= 1e-20, "{}", y[0]);
}

/// Central differences of L = Σ dy·y(x) against the twin's backward, per element with a step
/// relative to its node's norm.
fn check_fd(x: &[f64], s: [usize; 4], clamp: Option<f32>, eps: f32, dy: &[f64]) {
    let [_, n, t, d] = s;
    let dx = bwd(x, dy, s, clamp, eps);
    let loss = |x: &[f64]| fwd(x, s, clamp, eps).iter().zip(dy).map(|(a, b)| a * b).sum::<f64>();
    for e in 0..x.len() {
        let node = e / d;
        let (bi, i, ti) = (node / (n * t), (node / t) % n, node % t);
        let nrm = x[((bi * n + i) * t + ti) * d..][..d].iter().map(|a| a * a).sum::<f64>().sqrt();
        let h = 1e-6 * nrm.max(1e-300);
        let (mut xp, mut xm) = (x.to_vec(), x.to_vec());
        xp[e] += h;
        xm[e] -= h;
        let fd = (loss(&xp) - loss(&xm)) / (2.0 * h);
        let scale = dx.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert!((dx[e] - fd).abs() <= 1e-6 * (fd.abs() + scale), "dx[{e}] {} vs {fd} (clamp {clamp:?})", dx[e]);
    }
}

#[test]
fn backward_matches_finite_differences() {
    let s = [2usize, 4, 3, 5];
    let [b, n, t, d] = s;
    let mut r = rng(2);
    let mut x = f64v(randn(&mut r, b * n * t * d, 1.0));
    // Node 2 at (b 0, t 1) nearly parallel to node 0 (cos ≈ 0.9999, beyond the clamp 0.99).
    for k in 0..d {
        x[((2 * t) + 1) * d + k] = 3.0 * x[(t + 1) * d + k - t * d] + 1e-3 * (k as f64);
    }
    // Node 3 at (b 1, t 2) below eps = 1e-3 (norm ~1e-4): the norm is the constant eps.
    for k in 0..d {
        x[(((n + 3) * t) + 2) * d + k] *= 1e-4;
    }
    let dy = f64v(randn(&mut r, b * pairs(n) * t, 1.0));
    let y = fwd(&x, s, None, 1e-3);
    assert!(y[(pair_index(0, 2, n)) * t + 1] > 0.999, "the parallel pair: {}", y[pair_index(0, 2, n) * t + 1]);
    for clamp in [None, Some(0.99f32), Some(0.2)] {
        check_fd(&x, s, clamp, 1e-3, &dy);
    }
    // The clamped pair gets no gradient: with dy only on it, dx is zero.
    let mut dy1 = vec![0.0; dy.len()];
    dy1[pair_index(0, 2, n) * t + 1] = 1.0;
    assert!(bwd(&x, &dy1, s, Some(0.99), 1e-3).iter().all(|&v| v == 0.0));
    assert!(bwd(&x, &dy1, s, None, 1e-3).iter().any(|&v| v != 0.0));
}

#[test]
fn limits_and_bad_input_are_typed_errors() {
    let x = vec![0.5f32; 2 * 33 * 130];
    let mut y = vec![0.0f32; 2 * 33 * 32 / 2 * 2];
    let run = |xs: &[usize], ys: &[usize], clamp: Option<f32>, eps: f32, y: &mut [f32]| {
        let (lx, ly): (usize, usize) = (xs.iter().product(), ys.iter().product());
        cosine_sim(View::host(&x[..lx], xs).unwrap(), ViewMut::host(&mut y[..ly], ys).unwrap(), clamp, eps)
    };
    assert!(run(&[1, MAX_NODES, 1, MAX_DIM], &[1, pairs(MAX_NODES), 1], Some(0.99), DEFAULT_EPS, &mut y).is_ok());
    assert!(run(&[2, 2, 1, 1], &[2, 1, 1], None, DEFAULT_EPS, &mut y).is_ok());
    for xs in [&[1usize, 1, 1, 4][..], &[1, 33, 1, 4], &[1, 3, 1, 0], &[1, 3, 1, 129], &[0, 3, 1, 4], &[1, 3, 0, 4], &[3, 1, 4][..]] {
        let np = pairs(xs.get(1).copied().unwrap_or(0));
        let e = run(xs, &[1, np, 1], None, DEFAULT_EPS, &mut y);
        assert!(matches!(e, Err(Error::Shape { arg: "x", .. })), "{xs:?}: {e:?}");
    }
    let e = run(&[1, 4, 2, 3], &[1, 6, 1], None, DEFAULT_EPS, &mut y);
    assert!(matches!(e, Err(Error::Shape { arg: "y", .. })), "{e:?}");
    for (clamp, eps, arg) in [(None, 0.0, "eps"), (None, -1e-8, "eps"), (None, f32::NAN, "eps"), (None, f32::INFINITY, "eps"), (Some(0.0), 1e-8, "clamp"), (Some(-0.5), 1e-8, "clamp"), (Some(f32::NAN), 1e-8, "clamp"), (Some(f32::INFINITY), 1e-8, "clamp")] {
        let e = run(&[1, 4, 2, 3], &[1, 6, 2], clamp, eps, &mut y);
        assert!(matches!(e, Err(Error::Value { arg: a, .. }) if a == arg), "{clamp:?} {eps}: {e:?}");
        let e = cosine_sim_backward(View::host(&x[..24], &[1, 4, 2, 3]).unwrap(), View::host(&x[..12], &[1, 6, 2]).unwrap(), ViewMut::host(&mut y[..24], &[1, 4, 2, 3]).unwrap(), clamp, eps);
        assert!(matches!(e, Err(Error::Value { arg: a, .. }) if a == arg), "backward {clamp:?} {eps}: {e:?}");
    }
    let e = cosine_sim_backward(View::host(&x[..24], &[1, 4, 2, 3]).unwrap(), View::host(&x[..12], &[1, 2, 6]).unwrap(), ViewMut::host(&mut y[..24], &[1, 4, 2, 3]).unwrap(), None, DEFAULT_EPS);
    assert!(matches!(e, Err(Error::Shape { arg: "dy", .. })), "{e:?}");
    let e = cosine_sim_backward(View::host(&x[..24], &[1, 4, 2, 3]).unwrap(), View::host(&x[..12], &[1, 6, 2]).unwrap(), ViewMut::host(&mut y[..24], &[1, 4, 3, 2]).unwrap(), None, DEFAULT_EPS);
    assert!(matches!(e, Err(Error::Shape { arg: "dx", .. })), "{e:?}");
    let e = cosine_sim_backward(View::host(&x[..24], &[1, 1, 2, 12]).unwrap(), View::host(&x[..0], &[1, 0, 2]).unwrap(), ViewMut::host(&mut y[..24], &[1, 1, 2, 12]).unwrap(), None, DEFAULT_EPS);
    assert!(matches!(e, Err(Error::Shape { arg: "x", .. })), "{e:?}");
}

#[test]
fn device_mismatch_is_a_typed_error() {
    let Some(dev) = gpu_or_skip("device_mismatch_is_a_typed_error") else { return };
    let mut plan = Plan::new();
    let bx = plan.add::<f32>("x", &[1, 3, 2, 4], Role::Activation).unwrap();
    let mut arena = Arena::new(&dev, &plan).unwrap();
    let mut y = vec![0.0f32; 6];
    let b = arena.borrow();
    let e = cosine_sim(b.read(bx).unwrap(), ViewMut::host(&mut y, &[1, 3, 2]).unwrap(), None, DEFAULT_EPS);
    assert!(matches!(e, Err(Error::DeviceMismatch { arg: "y", .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

/// GPU vs the f64 twin on the same (T-rounded) inputs: |got − want| ≤ tol·(|want| + 0.05·max|want|),
/// the max over y, or over each node vector of dx. Node 1 is made nearly parallel to node 0
/// (cos ≈ 0.9999: beyond a 0.99 clamp by far, so the clamp masks of f32 and f64 agree) and the
/// last node of batch 0 is zero (norm below eps).
fn gpu_case<T: Real>(dev: &snug::Device, s: [usize; 4], clamp: Option<f32>, tol: f64) {
    let [b, n, t, d] = s;
    let np = pairs(n);
    let mut r = rng(7 + (n * t * d) as u64);
    let mut xf = randn(&mut r, b * n * t * d, 1.0);
    for bi in 0..b {
        for ti in 0..t {
            for k in 0..d {
                let base = |i: usize| ((bi * n + i) * t + ti) * d + k;
                xf[base(1)] = 2.0 * xf[base(0)] + 1e-3 * xf[base(1)];
                if bi == 0 && n > 2 {
                    xf[base(n - 1)] = 0.0;
                }
                // Node 2 of the last batch ~1e30 in size: Σ x² would overflow f32 (the kernel's
                // norm is scaled by max |x_d|).
                if bi == b - 1 && n > 3 {
                    xf[base(2)] *= 1e30;
                }
            }
        }
    }
    let cv = |v: Vec<f32>| v.into_iter().map(|a| T::round_f64(a as f64)).collect::<Vec<T>>();
    let w64 = |v: &[T]| v.iter().map(|a| a.to_f64().unwrap()).collect::<Vec<f64>>();
    let (x, dy) = (cv(xf), cv(randn(&mut r, b * np * t, 1.0)));
    let (x6, dy6) = (w64(&x), w64(&dy));
    let (wy, wdx) = (fwd(&x6, s, clamp, DEFAULT_EPS), bwd(&x6, &dy6, s, clamp, DEFAULT_EPS));
    let mut plan = Plan::new();
    let (bx, bdy) = (plan.add::<T>("x", &s, Role::Activation).unwrap(), plan.add::<T>("dy", &[b, np, t], Role::Grad).unwrap());
    let (by, bdx) = (plan.add::<T>("y", &[b, np, t], Role::Activation).unwrap(), plan.add::<T>("dx", &s, Role::Grad).unwrap());
    let mut arena = Arena::new(dev, &plan).unwrap();
    arena.upload(bx, &x).unwrap();
    arena.upload(bdy, &dy).unwrap();
    let what = format!("{} shape {s:?} clamp {clamp:?}", T::DTYPE);
    let mut runs = Vec::new();
    for _ in 0..2 {
        poison(&mut arena, by).unwrap();
        poison(&mut arena, bdx).unwrap();
        {
            let v = arena.borrow();
            cosine_sim(v.read(bx).unwrap(), v.write(by).unwrap(), clamp, DEFAULT_EPS).unwrap();
        }
        {
            let v = arena.borrow();
            cosine_sim_backward(v.read(bx).unwrap(), v.read(bdy).unwrap(), v.write(bdx).unwrap(), clamp, DEFAULT_EPS).unwrap();
        }
        let (gy, gdx) = (arena.download(by).unwrap(), arena.download(bdx).unwrap());
        // Scale: the whole tensor for y (|y| ≤ 1), each node vector's row for dx (a zero node's
        // row is ~1/eps larger than the others and must not loosen their bound).
        for (name, got, want, row) in [("y", w64(&gy), &wy, wy.len()), ("dx", w64(&gdx), &wdx, d)] {
            for (k, (gr, wr)) in got.chunks(row).zip(want.chunks(row)).enumerate() {
                let scale = wr.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                for (i, (a, w)) in gr.iter().zip(wr).enumerate() {
                    assert!((a - w).abs() <= tol * (w.abs() + 0.05 * scale), "{what}: {name}[{}] {a} vs {w}", k * row + i);
                }
            }
        }
        runs.push((gy.iter().map(|v| v.to_f64().unwrap().to_bits()).collect::<Vec<_>>(), gdx.iter().map(|v| v.to_f64().unwrap().to_bits()).collect::<Vec<_>>()));
    }
    assert!(runs[0] == runs[1], "{what}: runs differ");
}

#[test]
fn gpu_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_matches_twin") else { return };
    for (s, clamp) in [
        ([8usize, 19, 960, 64], Some(0.99f32)),
        ([2, 19, 17, 64], None),
        ([1, 2, 1, 1], None),
        ([3, 32, 5, 128], Some(0.99)),
        ([2, 7, 300, 3], None),
        ([1, 5, 9, 33], Some(0.5)),
        ([1, 2, 8 * 65536 + 3, 2], None), // more passes than one grid: the grid-stride loop
    ] {
        gpu_case::<f32>(&dev, s, clamp, 2e-4);
        gpu_case::<half::bf16>(&dev, s, clamp, 2e-2);
    }
}
