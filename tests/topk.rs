//! topk, topk_backward, topk_mask, topk_mask_backward: the twin on hand-computed rows (ties, NaN,
//! ±inf, ±0), against an independent rank formula, finite differences of the backwards, the limits
//! and bad input; the GPU kernels (f32 and bf16, n = 1..128, ragged row counts, the grid-stride
//! loop, poisoned outputs, two runs bitwise) equal to the twin bit for bit.

use snug::ops::topk::{topk, topk_backward, topk_mask, topk_mask_backward, MAX_K, MAX_N};
use snug::ops::Real;
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

fn run_topk<T: Real>(x: &[T], rows: usize, n: usize, k: usize) -> (Vec<T>, Vec<i32>) {
    let (mut v, mut i) = (vec![T::nan(); rows * k], vec![-7i32; rows * k]);
    topk(View::host(x, &[rows, n]).unwrap(), ViewMut::host(&mut v, &[rows, k]).unwrap(), ViewMut::host(&mut i, &[rows, k]).unwrap()).unwrap();
    (v, i)
}

fn run_mask<T: Real>(x: &[T], rows: usize, n: usize, k: usize) -> Vec<T> {
    let mut y = vec![T::nan(); rows * n];
    topk_mask(View::host(x, &[rows, n]).unwrap(), k, ViewMut::host(&mut y, &[rows, n]).unwrap()).unwrap();
    y
}

#[test]
fn twin_on_hand_computed_rows() {
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    #[rustfmt::skip]
    let x = [
        1.0, 3.0, 2.0, 3.0, 0.5,         // tie 3 = 3: index 1 first
        nan, -inf, inf, 0.0, -1.0,       // NaN above +inf
        -0.0, 0.0, -1.0, nan, nan,       // NaNs by index, then -0 (index 0) == +0
        -inf, -inf, -inf, -5.0, -inf,    // -inf ordinary
    ];
    let (v, i) = run_topk(&x, 4, 5, 3);
    assert_eq!(i, [1, 3, 2, 0, 2, 3, 3, 4, 0, 3, 0, 1]);
    let want = [3.0, 3.0, 2.0, nan, inf, 0.0, nan, nan, -0.0, -5.0, -inf, -inf];
    for (k, (a, b)) in v.iter().zip(want).enumerate() {
        assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "values[{k}] {a} vs {b}");
    }
    // Values are copied bit for bit: -0.0 keeps its sign, a NaN payload survives.
    let payload = f32::from_bits(0x7fc0_1234);
    let (v, i) = run_topk(&[-0.0f32, 1.0, payload], 1, 3, 3);
    assert_eq!(i, [2, 1, 0]);
    assert_eq!(v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), [0x7fc0_1234, 1.0f32.to_bits(), 0x8000_0000]);
    // The mask keeps the selected entries in place, exact zeros elsewhere (also for a non-selected -inf).
    let y = run_mask(&x, 4, 5, 2);
    let want = [0.0, 3.0, 0.0, 3.0, 0.0, nan, 0.0, inf, 0.0, 0.0, 0.0, 0.0, 0.0, nan, nan, -inf, 0.0, 0.0, -5.0, 0.0];
    assert_eq!(y.iter().map(|a| a.is_nan()).collect::<Vec<_>>(), want.iter().map(|a| a.is_nan()).collect::<Vec<_>>());
    for (k, (a, b)) in y.iter().zip(want).enumerate() {
        assert!(a.is_nan() || a.to_bits() == b.to_bits(), "y[{k}] {a} vs {b}");
    }
}

/// Independent of the twin's sort: element e's place is the number of elements ahead of it
/// (larger, or equal with a smaller index; NaN above all, NaNs equal, -0 == +0).
fn ranks(row: &[f64]) -> Vec<usize> {
    let ahead = |m: usize, e: usize| {
        let (a, b) = (row[m], row[e]);
        let gt = if a.is_nan() { !b.is_nan() } else { !b.is_nan() && a > b };
        let eq = (a.is_nan() && b.is_nan()) || a == b;
        gt || (eq && m < e)
    };
    (0..row.len()).map(|e| (0..row.len()).filter(|&m| ahead(m, e)).count()).collect()
}

fn check_against_ranks<T: Real>(x: &[T], rows: usize, n: usize, k: usize) {
    let (v, i) = run_topk(x, rows, n, k);
    let y = run_mask(x, rows, n, k);
    for r in 0..rows {
        let row: Vec<f64> = x[r * n..(r + 1) * n].iter().map(|a| a.to_f64().unwrap()).collect();
        let rk = ranks(&row);
        for e in 0..n {
            if rk[e] < k {
                assert_eq!(i[r * k + rk[e]], e as i32, "row {r}: place {}", rk[e]);
                assert_eq!(bytemuck::bytes_of(&v[r * k + rk[e]]), bytemuck::bytes_of(&x[r * n + e]));
                assert_eq!(bytemuck::bytes_of(&y[r * n + e]), bytemuck::bytes_of(&x[r * n + e]));
            } else {
                assert!(y[r * n + e] == T::zero() && !y[r * n + e].is_sign_negative(), "row {r}: y[{e}] not +0");
            }
        }
    }
}

#[test]
fn twin_matches_an_independent_rank_formula() {
    let mut r = rng(1);
    for &(rows, n, k) in &[(50usize, 19usize, 3usize), (20, 128, 32), (30, 1, 1), (30, 7, 7), (10, 64, 16), (5, 33, 32)] {
        // Few distinct values: many ties; some NaN, ±inf, ±0.
        let mut x: Vec<f64> = randn(&mut r, rows * n, 2.0).into_iter().map(|a| a.round() as f64).collect();
        for (j, a) in x.iter_mut().enumerate() {
            match j % 23 {
                3 => *a = f64::NAN,
                7 => *a = f64::INFINITY,
                11 => *a = f64::NEG_INFINITY,
                13 => *a = -0.0,
                _ => {}
            }
        }
        check_against_ranks(&x, rows, n, k);
        let xf: Vec<f32> = x.iter().map(|&a| a as f32).collect();
        check_against_ranks(&xf, rows, n, k);
        let xb: Vec<half::bf16> = x.iter().map(|&a| half::bf16::from_f64(a)).collect();
        check_against_ranks(&xb, rows, n, k);
    }
}

#[test]
fn backward_scatters_and_matches_finite_differences() {
    // Hand case: dx = 0 except at the indices.
    let mut dx = vec![f64::NAN; 8];
    topk_backward(View::host(&[3, 0, 1, 2], &[2, 2]).unwrap(), View::host(&[1.5f64, -2.0, 4.0, 0.25], &[2, 2]).unwrap(), ViewMut::host(&mut dx, &[2, 4]).unwrap()).unwrap();
    assert_eq!(dx, [-2.0, 0.0, 0.0, 1.5, 0.0, 4.0, 0.25, 0.0]);
    // Finite differences of L = Σ dv·topk(x) and L = Σ dy·topk_mask(x) on distinct values (gaps
    // much larger than h, so the selection does not change).
    let (rows, n, k) = (6usize, 19usize, 3usize);
    let mut r = rng(2);
    let x: Vec<f64> = (0..rows * n).map(|j| ((j * 7919) % (rows * n)) as f64 * 0.01 + (j % n) as f64).collect();
    let dv: Vec<f64> = randn(&mut r, rows * k, 1.0).into_iter().map(f64::from).collect();
    let dy: Vec<f64> = randn(&mut r, rows * n, 1.0).into_iter().map(f64::from).collect();
    let (_, idx) = run_topk(&x, rows, n, k);
    let (mut g1, mut g2) = (vec![f64::NAN; rows * n], vec![f64::NAN; rows * n]);
    topk_backward(View::host(&idx, &[rows, k]).unwrap(), View::host(&dv, &[rows, k]).unwrap(), ViewMut::host(&mut g1, &[rows, n]).unwrap()).unwrap();
    topk_mask_backward(View::host(&x, &[rows, n]).unwrap(), View::host(&dy, &[rows, n]).unwrap(), k, ViewMut::host(&mut g2, &[rows, n]).unwrap()).unwrap();
    let l1 = |x: &[f64]| run_topk(x, rows, n, k).0.iter().zip(&dv).map(|(a, b)| a * b).sum::<f64>();
    let l2 = |x: &[f64]| run_mask(x, rows, n, k).iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>();
    let h = 1e-4;
    let mut nonzero = 0;
    for e in 0..rows * n {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[e] += h;
        xm[e] -= h;
        let f1 = (l1(&xp) - l1(&xm)) / (2.0 * h);
        let f2 = (l2(&xp) - l2(&xm)) / (2.0 * h);
        assert!((g1[e] - f1).abs() <= 1e-9 * (1.0 + f1.abs()), "topk dx[{e}] {} vs {f1}", g1[e]);
        assert!((g2[e] - f2).abs() <= 1e-9 * (1.0 + f2.abs()), "mask dx[{e}] {} vs {f2}", g2[e]);
        nonzero += (g1[e] != 0.0) as usize;
    }
    assert_eq!(nonzero, rows * k);
}

#[test]
fn limits_and_bad_input_are_typed_errors() {
    let x = vec![1.0f32; 2 * 130];
    let (mut v, mut i, mut y) = (vec![0.0f32; 2 * 33], vec![0i32; 2 * 33], vec![0.0f32; 2 * 130]);
    let fwd = |xs: &[usize], vs: &[usize], is: &[usize], v: &mut [f32], i: &mut [i32]| {
        let (lx, lv, li): (usize, usize, usize) = (xs.iter().product(), vs.iter().product(), is.iter().product());
        topk(View::host(&x[..lx], xs).unwrap(), ViewMut::host(&mut v[..lv], vs).unwrap(), ViewMut::host(&mut i[..li], is).unwrap())
    };
    // The limits themselves work: n = 128 with k = 32, n = 1 with k = 1.
    assert!(fwd(&[2, MAX_N], &[2, MAX_K], &[2, MAX_K], &mut v, &mut i).is_ok());
    assert!(fwd(&[2, 1], &[2, 1], &[2, 1], &mut v, &mut i).is_ok());
    for (xs, vs, is, arg) in [
        (&[2usize, 129][..], &[2usize, 3][..], &[2usize, 3][..], "x"),
        (&[2, 0][..], &[2, 0][..], &[2, 0][..], "x"),
        (&[0, 5][..], &[0, 3][..], &[0, 3][..], "x"),
        (&[10][..], &[3][..], &[3][..], "x"),
        (&[2, 5, 1][..], &[2, 3][..], &[2, 3][..], "x"),
        (&[2, 5][..], &[2, 0][..], &[2, 0][..], "values"),
        (&[2, 5][..], &[2, 6][..], &[2, 6][..], "values"),
        (&[2, 64][..], &[2, 33][..], &[2, 33][..], "values"),
        (&[2, 5][..], &[1, 3][..], &[1, 3][..], "values"),
        (&[2, 5][..], &[2, 3][..], &[2, 2][..], "indices"),
    ] {
        let e = fwd(xs, vs, is, &mut v, &mut i);
        assert!(matches!(e, Err(Error::Shape { arg: a, .. }) if a == arg), "{xs:?} {vs:?} {is:?}: {e:?}");
    }
    // Backward: shapes, and indices the twin can see to be out of range or repeated.
    let bwd = |idx: &[i32], n: usize, dx: &mut [f32]| topk_backward(View::host(idx, &[1, idx.len()]).unwrap(), View::host(&vec![1.0f32; idx.len()], &[1, idx.len()]).unwrap(), ViewMut::host(&mut dx[..n], &[1, n]).unwrap());
    assert!(bwd(&[4, 0], 5, &mut y).is_ok());
    for idx in [[5, 0], [-1, 0], [2, 2]] {
        let e = bwd(&idx, 5, &mut y);
        assert!(matches!(e, Err(Error::Value { arg: "indices", .. })), "{idx:?}: {e:?}");
    }
    let e = topk_backward(View::host(&[0i32, 1], &[1, 2]).unwrap(), View::host(&[1.0f32, 1.0], &[2, 1]).unwrap(), ViewMut::host(&mut y[..5], &[1, 5]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "dvalues", .. })), "{e:?}");
    let e = topk_backward(View::host(&[0i32, 1], &[2, 1]).unwrap(), View::host(&[1.0f32, 1.0], &[1, 2]).unwrap(), ViewMut::host(&mut y[..5], &[1, 5]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "indices", .. })), "{e:?}");
    let e = topk_backward(View::host(&[0i32, 1], &[1, 2]).unwrap(), View::host(&[1.0f32, 1.0], &[1, 2]).unwrap(), ViewMut::host(&mut y[..129], &[1, 129]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "dx", .. })), "{e:?}");
    // Mask: k out of range, shapes.
    for k in [0usize, 6, 33] {
        let n = if k == 33 { 40 } else { 5 };
        let e = topk_mask(View::host(&x[..2 * n], &[2, n]).unwrap(), k, ViewMut::host(&mut y[..2 * n], &[2, n]).unwrap());
        assert!(matches!(e, Err(Error::Value { arg: "k", .. })), "k {k}: {e:?}");
        let e = topk_mask_backward(View::host(&x[..2 * n], &[2, n]).unwrap(), View::host(&x[..2 * n], &[2, n]).unwrap(), k, ViewMut::host(&mut y[..2 * n], &[2, n]).unwrap());
        assert!(matches!(e, Err(Error::Value { arg: "k", .. })), "k {k}: {e:?}");
    }
    let e = topk_mask(View::host(&x[..10], &[2, 5]).unwrap(), 2, ViewMut::host(&mut y[..10], &[5, 2]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "y", .. })), "{e:?}");
    let e = topk_mask_backward(View::host(&x[..10], &[2, 5]).unwrap(), View::host(&x[..10], &[10, 1]).unwrap(), 2, ViewMut::host(&mut y[..10], &[2, 5]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "dy", .. })), "{e:?}");
    let e = topk_mask_backward(View::host(&x[..10], &[2, 5]).unwrap(), View::host(&x[..10], &[2, 5]).unwrap(), 2, ViewMut::host(&mut y[..10], &[1, 10]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "dx", .. })), "{e:?}");
}

#[test]
fn device_mismatch_is_a_typed_error() {
    let Some(dev) = gpu_or_skip("device_mismatch_is_a_typed_error") else { return };
    let mut plan = Plan::new();
    let bx = plan.add::<f32>("x", &[4, 19], Role::Activation).unwrap();
    let mut arena = Arena::new(&dev, &plan).unwrap();
    let (mut v, mut i) = (vec![0.0f32; 12], vec![0i32; 12]);
    let b = arena.borrow();
    let e = topk(b.read(bx).unwrap(), ViewMut::host(&mut v, &[4, 3]).unwrap(), ViewMut::host(&mut i, &[4, 3]).unwrap());
    assert!(matches!(e, Err(Error::DeviceMismatch { arg: "values", .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

fn bits<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// Every output equals the twin's bit for bit (selection copies values; NaN compared as NaN
/// only for bf16, whose conversion canonicalises it in the backward's f32 transit).
fn gpu_case<T: Real>(dev: &snug::Device, rows: usize, n: usize, k: usize, seed: u64) {
    let mut r = rng(seed);
    let mut x: Vec<f32> = randn(&mut r, rows * n, 1.0);
    for (j, a) in x.iter_mut().enumerate() {
        match j % 17 {
            2 => *a = a.round(), // ties
            5 => *a = 0.0,
            9 if seed.is_multiple_of(2) => *a = f32::NAN,
            11 => *a = -0.0,
            13 => *a = f32::NEG_INFINITY,
            _ => {}
        }
    }
    let x: Vec<T> = x.into_iter().map(|a| T::round_f64(a as f64)).collect();
    let dv: Vec<T> = randn(&mut r, rows * k, 1.0).into_iter().map(|a| T::round_f64(a as f64)).collect();
    let dy: Vec<T> = randn(&mut r, rows * n, 1.0).into_iter().map(|a| T::round_f64(a as f64)).collect();
    let (wv, wi) = run_topk(&x, rows, n, k);
    let wy = run_mask(&x, rows, n, k);
    let (mut wdx, mut wdm) = (vec![T::nan(); rows * n], vec![T::nan(); rows * n]);
    topk_backward(View::host(&wi, &[rows, k]).unwrap(), View::host(&dv, &[rows, k]).unwrap(), ViewMut::host(&mut wdx, &[rows, n]).unwrap()).unwrap();
    topk_mask_backward(View::host(&x, &[rows, n]).unwrap(), View::host(&dy, &[rows, n]).unwrap(), k, ViewMut::host(&mut wdm, &[rows, n]).unwrap()).unwrap();
    let mut plan = Plan::new();
    let (bx, bdv, bdy) = (plan.add::<T>("x", &[rows, n], Role::Activation).unwrap(), plan.add::<T>("dv", &[rows, k], Role::Grad).unwrap(), plan.add::<T>("dy", &[rows, n], Role::Grad).unwrap());
    let (bv, bi, by) = (plan.add::<T>("v", &[rows, k], Role::Activation).unwrap(), plan.add::<i32>("i", &[rows, k], Role::Activation).unwrap(), plan.add::<T>("y", &[rows, n], Role::Activation).unwrap());
    let (bdx, bdm) = (plan.add::<T>("dx", &[rows, n], Role::Grad).unwrap(), plan.add::<T>("dm", &[rows, n], Role::Grad).unwrap());
    let mut arena = Arena::new(dev, &plan).unwrap();
    arena.upload(bx, &x).unwrap();
    arena.upload(bdv, &dv).unwrap();
    arena.upload(bdy, &dy).unwrap();
    let what = format!("{} rows {rows} n {n} k {k}", T::DTYPE);
    let mut runs = Vec::new();
    for _ in 0..2 {
        for buf in [bv, by, bdx, bdm] {
            poison(&mut arena, buf).unwrap();
        }
        poison(&mut arena, bi).unwrap();
        {
            let b = arena.borrow();
            topk(b.read(bx).unwrap(), b.write(bv).unwrap(), b.write(bi).unwrap()).unwrap();
        }
        {
            let b = arena.borrow();
            topk_backward(b.read(bi).unwrap(), b.read(bdv).unwrap(), b.write(bdx).unwrap()).unwrap();
        }
        {
            let b = arena.borrow();
            topk_mask(b.read(bx).unwrap(), k, b.write(by).unwrap()).unwrap();
        }
        {
            let b = arena.borrow();
            topk_mask_backward(b.read(bx).unwrap(), b.read(bdy).unwrap(), k, b.write(bdm).unwrap()).unwrap();
        }
        let (gv, gi, gy, gdx, gdm) = (arena.download(bv).unwrap(), arena.download(bi).unwrap(), arena.download(by).unwrap(), arena.download(bdx).unwrap(), arena.download(bdm).unwrap());
        assert!(gi == wi, "{what}: indices differ");
        for (name, got, want) in [("values", &gv, &wv), ("y", &gy, &wy), ("dx", &gdx, &wdx), ("dx (mask)", &gdm, &wdm)] {
            for (j, (a, b)) in got.iter().zip(want.iter()).enumerate() {
                let ok = bytemuck::bytes_of(a) == bytemuck::bytes_of(b) || (a.is_nan() && b.is_nan());
                assert!(ok, "{what}: {name}[{j}] {a:?} vs {b:?}");
            }
        }
        runs.push([bits(&gv), bits(&gi), bits(&gy), bits(&gdx), bits(&gdm)]);
    }
    assert!(runs[0] == runs[1], "{what}: runs differ");
}

#[test]
fn gpu_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_matches_twin") else { return };
    for (s, &(rows, n, k)) in [(7680 * 19usize, 19usize, 3usize), (1, 1, 1), (9, 32, 32), (13, 33, 5), (100, 128, 16), (77, 128, 32), (5, 100, 1), (530_000, 3, 2)].iter().enumerate() {
        gpu_case::<f32>(&dev, rows, n, k, s as u64);
        gpu_case::<half::bf16>(&dev, rows, n, k, 100 + s as u64);
    }
}

#[test]
fn gpu_backward_ignores_out_of_range_indices() {
    let Some(dev) = gpu_or_skip("gpu_backward_ignores_out_of_range_indices") else { return };
    let mut plan = Plan::new();
    let (bi, bdv, bdx) = (plan.add::<i32>("i", &[2, 3], Role::Activation).unwrap(), plan.add::<f32>("dv", &[2, 3], Role::Grad).unwrap(), plan.add::<f32>("dx", &[2, 40], Role::Grad).unwrap());
    let mut arena = Arena::new(&dev, &plan).unwrap();
    arena.upload(bi, &[39, -1, 40, 0, 1000, 33]).unwrap();
    arena.upload(bdv, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    poison(&mut arena, bdx).unwrap();
    {
        let b = arena.borrow();
        topk_backward(b.read(bi).unwrap(), b.read(bdv).unwrap(), b.write(bdx).unwrap()).unwrap();
    }
    let dx = arena.download(bdx).unwrap();
    let mut want = vec![0.0f32; 80];
    (want[39], want[40], want[73]) = (1.0, 4.0, 6.0);
    assert_eq!(dx, want);
}
