//! weight_norm (dim 0): the f64 twin against an independent formula and finite differences of
//! Σ dw·w(v, g) w.r.t. v and g, a zero row (non-finite, as PyTorch), bad input; the GPU kernels
//! (f32 and bf16, ragged row lengths, poisoned outputs, two runs bitwise) against the twin.

use snug::ops::weight_norm::{weight_norm, weight_norm_backward};
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

fn f64v(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(|x| x as f64).collect()
}

fn fwd(v: &[f64], g: &[f64], shape: &[usize]) -> (Vec<f64>, Vec<f32>) {
    let (mut w, mut nr) = (vec![f64::NAN; v.len()], vec![f32::NAN; shape[0]]);
    weight_norm(View::host(v, shape).unwrap(), View::host(g, &[shape[0]]).unwrap(), ViewMut::host(&mut w, shape).unwrap(), ViewMut::host(&mut nr, &[shape[0]]).unwrap()).unwrap();
    (w, nr)
}

#[test]
fn twin_matches_an_independent_formula() {
    // v [2, 2] = [[3, 4], [1, 0]] (norms 5, 1), g = [10, -2] → w = [[6, 8], [-2, 0]].
    let (w, nr) = fwd(&[3.0, 4.0, 1.0, 0.0], &[10.0, -2.0], &[2, 2]);
    assert_eq!(w, [6.0, 8.0, -2.0, 0.0]);
    assert_eq!(nr, [5.0, 1.0]);
    // Random [5, 3, 7]: w_o = g_o v_o / ‖v_o‖ written with the direction v_o / ‖v_o‖ first; each
    // row of w has norm |g_o|.
    let shape = [5usize, 3, 7];
    let mut r = rng(1);
    let (v, g) = (f64v(randn(&mut r, 105, 1.0)), f64v(randn(&mut r, 5, 1.0)));
    let (w, nr) = fwd(&v, &g, &shape);
    for o in 0..5 {
        let row = &v[o * 21..(o + 1) * 21];
        let len = row.iter().fold(0.0f64, |a, x| a.hypot(*x));
        assert!((nr[o] as f64 - len).abs() <= 1e-6 * len, "norm {o}");
        let wn = w[o * 21..(o + 1) * 21].iter().fold(0.0f64, |a, x| a.hypot(*x));
        assert!((wn - g[o].abs()).abs() <= 1e-12 * (1.0 + g[o].abs()), "‖w_{o}‖ {wn} vs |g| {}", g[o].abs());
        for i in 0..21 {
            let want = (row[i] / len) * g[o];
            assert!((w[o * 21 + i] - want).abs() <= 1e-13 * (1.0 + want.abs()), "w[{o}, {i}]");
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    let shape = [4usize, 2, 5];
    let (rows, n) = (4, 10);
    let mut r = rng(2);
    let (v, g, dw) = (f64v(randn(&mut r, rows * n, 1.0)), f64v(randn(&mut r, rows, 1.0)), f64v(randn(&mut r, rows * n, 1.0)));
    let loss = |v: &[f64], g: &[f64]| fwd(v, g, &shape).0.iter().zip(&dw).map(|(a, b)| a * b).sum::<f64>();
    // norms in f64 for the check (the saved f32 norms would limit it to ~1e-7).
    let nr: Vec<f32> = fwd(&v, &g, &shape).1;
    let (mut dv, mut dg) = (vec![f64::NAN; rows * n], vec![f64::NAN; rows]);
    weight_norm_backward(View::host(&v, &shape).unwrap(), View::host(&g, &[rows]).unwrap(), View::host(&nr, &[rows]).unwrap(), View::host(&dw, &shape).unwrap(), ViewMut::host(&mut dv, &shape).unwrap(), ViewMut::host(&mut dg, &[rows]).unwrap()).unwrap();
    let h = 1e-6;
    for (which, grad) in [(0usize, &dv), (1, &dg)] {
        for i in 0..grad.len() {
            let mut t = [v.clone(), g.clone()];
            t[which][i] += h;
            let lp = loss(&t[0], &t[1]);
            t[which][i] -= 2.0 * h;
            let lm = loss(&t[0], &t[1]);
            let fd = (lp - lm) / (2.0 * h);
            // The twin's backward uses the f32-stored norms: relative error ~1e-7.
            assert!((grad[i] - fd).abs() <= 2e-6 * (1.0 + fd.abs()), "d{}[{i}]: {} vs {fd}", ["v", "g"][which], grad[i]);
        }
    }
}

#[test]
fn zero_row_gives_non_finite_output_like_pytorch() {
    // Row 1 all zero: ‖v_1‖ = 0, g_1 / 0 = inf, 0 · inf = NaN (PyTorch: the same NaN row).
    let (w, nr) = fwd(&[3.0, 4.0, 0.0, 0.0], &[1.0, 2.0], &[2, 2]);
    assert!((w[0] - 0.6).abs() < 1e-15 && (w[1] - 0.8).abs() < 1e-15, "{w:?}");
    assert_eq!(nr[1], 0.0);
    assert!(w[2].is_nan() && w[3].is_nan(), "{w:?}");
    let (mut dv, mut dg) = (vec![0.0f64; 4], vec![0.0f64; 2]);
    weight_norm_backward(View::host(&[3.0, 4.0, 0.0, 0.0], &[2, 2]).unwrap(), View::host(&[1.0, 2.0], &[2]).unwrap(), View::host(&nr, &[2]).unwrap(), View::host(&[1.0, 1.0, 1.0, 1.0], &[2, 2]).unwrap(), ViewMut::host(&mut dv, &[2, 2]).unwrap(), ViewMut::host(&mut dg, &[2]).unwrap()).unwrap();
    assert!(dv[..2].iter().chain(&dg[..1]).all(|x| x.is_finite()));
    assert!(!dg[1].is_finite() && dv[2..].iter().all(|x| !x.is_finite()), "{dv:?} {dg:?}");
}

#[test]
fn bad_input_is_a_typed_error() {
    let v = vec![1.0f64; 12];
    let g = vec![1.0f64; 4];
    let mut w = vec![0.0f64; 12];
    let mut nr = vec![0.0f32; 4];
    let run = |vs: &[usize], gs: &[usize], ws: &[usize], ns: &[usize], w: &mut [f64], nr: &mut [f32]| {
        let (lv, lg, lw, ln) = (vs.iter().product(), gs.iter().product(), ws.iter().product(), ns.iter().product());
        weight_norm(View::host(&v[..lv], vs).unwrap(), View::host(&g[..lg], gs).unwrap(), ViewMut::host(&mut w[..lw], ws).unwrap(), ViewMut::host(&mut nr[..ln], ns).unwrap())
    };
    for (vs, arg) in [(&[12usize][..], "v"), (&[0, 3][..], "v"), (&[4, 0][..], "v"), (&[4, 3, 0][..], "v")] {
        let e = run(vs, &[4], vs, &[4], &mut w, &mut nr);
        assert!(matches!(e, Err(Error::Shape { arg: a, .. }) if a == arg), "{vs:?}: {e:?}");
    }
    let e = run(&[4, 3], &[3], &[4, 3], &[4], &mut w, &mut nr);
    assert!(matches!(e, Err(Error::Shape { arg: "g", .. })), "{e:?}");
    let e = run(&[4, 3], &[4], &[3, 4], &[4], &mut w, &mut nr);
    assert!(matches!(e, Err(Error::Shape { arg: "w", .. })), "{e:?}");
    let e = run(&[4, 3], &[4], &[4, 3], &[2, 2], &mut w, &mut nr);
    assert!(matches!(e, Err(Error::Shape { arg: "norms", .. })), "{e:?}");
    assert!(run(&[4, 3], &[4], &[4, 3], &[4], &mut w, &mut nr).is_ok());
    // Backward.
    let (mut dv, mut dg) = (vec![0.0f64; 12], vec![0.0f64; 4]);
    let dw = vec![1.0f64; 12];
    let e = weight_norm_backward(View::host(&v, &[4, 3]).unwrap(), View::host(&g, &[4]).unwrap(), View::host(&nr, &[4]).unwrap(), View::host(&dw, &[4, 3]).unwrap(), ViewMut::host(&mut dv, &[3, 4]).unwrap(), ViewMut::host(&mut dg, &[4]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "dv", .. })), "{e:?}");
    let e = weight_norm_backward(View::host(&v, &[4, 3]).unwrap(), View::host(&g, &[4]).unwrap(), View::host(&nr, &[4]).unwrap(), View::host(&dw, &[12]).unwrap(), ViewMut::host(&mut dv, &[4, 3]).unwrap(), ViewMut::host(&mut dg, &[4]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "dw", .. })), "{e:?}");
    let e = weight_norm_backward(View::host(&v, &[4, 3]).unwrap(), View::host(&g, &[4]).unwrap(), View::host(&nr, &[4]).unwrap(), View::host(&dw, &[4, 3]).unwrap(), ViewMut::host(&mut dv, &[4, 3]).unwrap(), ViewMut::host(&mut dg[..2], &[2]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "dg", .. })), "{e:?}");
    let e = weight_norm_backward(View::host(&v, &[4, 3]).unwrap(), View::host(&g, &[4]).unwrap(), View::host(&nr[..3], &[3]).unwrap(), View::host(&dw, &[4, 3]).unwrap(), ViewMut::host(&mut dv, &[4, 3]).unwrap(), ViewMut::host(&mut dg, &[4]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "norms", .. })), "{e:?}");
}

#[test]
fn device_mismatch_is_a_typed_error() {
    let Some(dev) = gpu_or_skip("device_mismatch_is_a_typed_error") else { return };
    let mut plan = Plan::new();
    let bv = plan.add::<f32>("v", &[4, 3], Role::Param).unwrap();
    let mut arena = Arena::new(&dev, &plan).unwrap();
    let (g, mut w, mut nr) = (vec![1.0f32; 4], vec![0.0f32; 12], vec![0.0f32; 4]);
    let b = arena.borrow();
    let e = weight_norm(b.read(bv).unwrap(), View::host(&g, &[4]).unwrap(), ViewMut::host(&mut w, &[4, 3]).unwrap(), ViewMut::host(&mut nr, &[4]).unwrap());
    assert!(matches!(e, Err(Error::DeviceMismatch { arg: "g", .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

fn gpu_case<T: snug::Element + snug::ops::Real>(dev: &snug::Device, shape: &[usize], tol: f64) {
    let (rows, n) = (shape[0], shape[1..].iter().product::<usize>());
    let mut r = rng(3 + n as u64);
    let cv = |v: Vec<f32>| v.into_iter().map(|t| T::from_f32(t).unwrap()).collect::<Vec<T>>();
    let w64 = |v: &[T]| v.iter().map(|t| t.to_f64().unwrap()).collect::<Vec<f64>>();
    let (v, g, dw) = (cv(randn(&mut r, rows * n, 1.0)), cv(randn(&mut r, rows, 1.0)), cv(randn(&mut r, rows * n, 1.0)));
    let (v6, g6, d6) = (w64(&v), w64(&g), w64(&dw));
    let (ww, wn) = fwd(&v6, &g6, shape);
    let (mut wdv, mut wdg) = (vec![0.0; rows * n], vec![0.0; rows]);
    weight_norm_backward(View::host(&v6, shape).unwrap(), View::host(&g6, &[rows]).unwrap(), View::host(&wn, &[rows]).unwrap(), View::host(&d6, shape).unwrap(), ViewMut::host(&mut wdv, shape).unwrap(), ViewMut::host(&mut wdg, &[rows]).unwrap()).unwrap();
    let mut plan = Plan::new();
    let (bv, bg, bdw) = (plan.add::<T>("v", shape, Role::Param).unwrap(), plan.add::<T>("g", &[rows], Role::Param).unwrap(), plan.add::<T>("dw", shape, Role::Grad).unwrap());
    let (bw, bn) = (plan.add::<T>("w", shape, Role::Activation).unwrap(), plan.add::<f32>("norms", &[rows], Role::Activation).unwrap());
    let (bdv, bdg) = (plan.add::<T>("dv", shape, Role::Grad).unwrap(), plan.add::<T>("dg", &[rows], Role::Grad).unwrap());
    let mut arena = Arena::new(dev, &plan).unwrap();
    for (buf, x) in [(bv, &v), (bg, &g), (bdw, &dw)] {
        arena.upload(buf, x).unwrap();
    }
    let mut runs = Vec::new();
    for _ in 0..2 {
        for buf in [bw, bdv, bdg] {
            poison(&mut arena, buf).unwrap();
        }
        poison(&mut arena, bn).unwrap();
        {
            let b = arena.borrow();
            weight_norm(b.read(bv).unwrap(), b.read(bg).unwrap(), b.write(bw).unwrap(), b.write(bn).unwrap()).unwrap();
        }
        {
            let b = arena.borrow();
            weight_norm_backward(b.read(bv).unwrap(), b.read(bg).unwrap(), b.read(bn).unwrap(), b.read(bdw).unwrap(), b.write(bdv).unwrap(), b.write(bdg).unwrap()).unwrap();
        }
        let what = format!("{} shape={shape:?}", T::DTYPE);
        let mut bits = Vec::new();
        let wn6 = f64v(wn.clone());
        for (name, got, want, k) in [
            ("w", w64(&arena.download(bw).unwrap()), &ww, 1usize),
            ("norms", f64v(arena.download(bn).unwrap()), &wn6, n),
            ("dv", w64(&arena.download(bdv).unwrap()), &wdv, n),
            ("dg", w64(&arena.download(bdg).unwrap()), &wdg, n),
        ] {
            // Scale of each tensor's entries: outputs ~|g|·|v|/‖v‖ (w, dv) or ~‖v‖ (norms, dg).
            let scale = want.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            let t = tol * (k as f64).sqrt().clamp(1.0, 64.0);
            for (i, (a, w)) in got.iter().zip(want.iter()).enumerate() {
                assert!((a - w).abs() <= t * (w.abs() + 1e-3 * scale), "{what}: {name}[{i}] {a} vs {w}");
            }
            bits.extend(got.iter().map(|v| v.to_bits()));
        }
        runs.push(bits);
    }
    assert!(runs[0] == runs[1], "runs differ");
}

#[test]
fn gpu_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_matches_twin") else { return };
    for shape in [&[3usize, 7][..], &[5, 3, 100], &[9, 4097], &[70_000, 2], &[64, 256, 7]] {
        gpu_case::<f32>(&dev, shape, 1e-5);
        gpu_case::<half::bf16>(&dev, shape, 2e-2);
    }
}
