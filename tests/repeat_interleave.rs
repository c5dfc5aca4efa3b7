//! repeat_interleave / upsample_nearest: the f64 twin against hand-computed cases (PyTorch's own
//! docs examples) and an independent multi-index formula on every axis, the backward against
//! finite differences and as the adjoint of the forward, summation order, bad input; the GPU
//! kernels (f32 and bf16, every kernel path: vector rows, element rows, r contiguous vectors,
//! strided rows, unaligned views, the scalar tail; poisoned outputs, two runs bitwise, indices past
//! 2^31) against the twin.

use snug::ops::repeat_interleave::{repeat_interleave, repeat_interleave_backward, upsample_nearest, upsample_nearest_backward};
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

fn f64v(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(|x| x as f64).collect()
}

fn long_shape(shape: &[usize], axis: usize, r: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    s[axis] *= r;
    s
}

fn fwd(x: &[f64], shape: &[usize], axis: usize, r: usize) -> Vec<f64> {
    let ls = long_shape(shape, axis, r);
    let mut y = vec![f64::NAN; ls.iter().product()];
    repeat_interleave(View::host(x, shape).unwrap(), axis, r, ViewMut::host(&mut y, &ls).unwrap()).unwrap();
    y
}

fn bwd(dy: &[f64], shape: &[usize], axis: usize, r: usize) -> Vec<f64> {
    let ls = long_shape(shape, axis, r);
    let mut dx = vec![f64::NAN; shape.iter().product()];
    repeat_interleave_backward(View::host(dy, &ls).unwrap(), axis, r, ViewMut::host(&mut dx, shape).unwrap()).unwrap();
    dx
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

#[test]
fn twin_matches_pytorch_doc_examples() {
    // torch.repeat_interleave(torch.tensor([[1, 2], [3, 4]]), 3, dim=1) and (.., 2, dim=0).
    let x = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(fwd(&x, &[2, 2], 1, 3), [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 4.0, 4.0]);
    assert_eq!(fwd(&x, &[2, 2], 0, 2), [1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0]);
    // A 1-D tensor (outer = inner = 1) and r = 1 (a copy).
    assert_eq!(fwd(&[5.0, -1.0], &[2], 0, 2), [5.0, 5.0, -1.0, -1.0]);
    assert_eq!(fwd(&x, &[2, 2], 1, 1), x);
    // Backward of the dim=1 case: dx[i, k] = the sum of its three copies' gradients.
    let dy: Vec<f64> = (1..=12).map(f64::from).collect();
    assert_eq!(bwd(&dy, &[2, 2], 1, 3), [6.0, 15.0, 24.0, 33.0]);
    assert_eq!(bwd(&dy[..8], &[2, 2], 0, 2), [1.0 + 3.0, 2.0 + 4.0, 5.0 + 7.0, 6.0 + 8.0]);
    // F.interpolate(x, scale_factor=2, mode="nearest") of [[[1, 2, 3]]]: [[[1, 1, 2, 2, 3, 3]]].
    let mut y = vec![0.0f64; 6];
    upsample_nearest(View::host(&[1.0, 2.0, 3.0], &[1, 1, 3]).unwrap(), 2, ViewMut::host(&mut y, &[1, 1, 6]).unwrap()).unwrap();
    assert_eq!(y, [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    let mut dx = vec![0.0f64; 3];
    upsample_nearest_backward(View::host(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1, 1, 6]).unwrap(), 2, ViewMut::host(&mut dx, &[1, 1, 3]).unwrap()).unwrap();
    assert_eq!(dx, [3.0, 7.0, 11.0]);
}

#[test]
fn twin_matches_a_multi_index_formula_on_every_axis() {
    let shape = [2usize, 3, 4, 5];
    let mut g = rng(1);
    let x = f64v(randn(&mut g, 120, 1.0));
    for axis in 0..4 {
        for r in [1usize, 2, 3, 16] {
            let y = fwd(&x, &shape, axis, r);
            let ls = long_shape(&shape, axis, r);
            let (sx, sy) = (strides(&shape), strides(&ls));
            // y at multi-index m equals x at m with m[axis] divided by r (integer division).
            for (k, &yk) in y.iter().enumerate() {
                let m: Vec<usize> = (0..4).map(|d| k / sy[d] % ls[d]).collect();
                let src: usize = (0..4).map(|d| if d == axis { m[d] / r } else { m[d] } * sx[d]).sum();
                assert_eq!(yk, x[src], "axis {axis} r {r} y{m:?}");
            }
        }
    }
    // upsample_nearest is the last-axis case: y[b, c, t] = x[b, c, t / s].
    let x = f64v(randn(&mut g, 2 * 3 * 7, 1.0));
    let mut y = vec![0.0f64; 2 * 3 * 7 * 5];
    upsample_nearest(View::host(&x, &[2, 3, 7]).unwrap(), 5, ViewMut::host(&mut y, &[2, 3, 35]).unwrap()).unwrap();
    for b in 0..2 {
        for c in 0..3 {
            for t in 0..35 {
                assert_eq!(y[(b * 3 + c) * 35 + t], x[(b * 3 + c) * 7 + t / 5]);
            }
        }
    }
}

#[test]
fn backward_is_the_adjoint_and_matches_finite_differences() {
    let shape = [3usize, 4, 2];
    let mut g = rng(2);
    for axis in 0..3 {
        let r = 3;
        let n: usize = shape.iter().product();
        let (x, dy) = (f64v(randn(&mut g, n, 1.0)), f64v(randn(&mut g, n * r, 1.0)));
        let dx = bwd(&dy, &shape, axis, r);
        // <repeat(x), dy> = <x, repeat_backward(dy)>.
        let lhs: f64 = fwd(&x, &shape, axis, r).iter().zip(&dy).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() <= 1e-12 * (1.0 + lhs.abs()), "axis {axis}: {lhs} vs {rhs}");
        // Central differences of L(x) = <repeat(x), dy> (linear: exact up to rounding).
        let h = 1e-3;
        for i in 0..n {
            let mut xp = x.clone();
            xp[i] += h;
            let lp: f64 = fwd(&xp, &shape, axis, r).iter().zip(&dy).map(|(a, b)| a * b).sum();
            xp[i] -= 2.0 * h;
            let lm: f64 = fwd(&xp, &shape, axis, r).iter().zip(&dy).map(|(a, b)| a * b).sum();
            let fd = (lp - lm) / (2.0 * h);
            assert!((dx[i] - fd).abs() <= 1e-9 * (1.0 + fd.abs()), "axis {axis} dx[{i}]: {} vs {fd}", dx[i]);
        }
    }
}

#[test]
fn twin_rounds_bf16_sums_once() {
    // bf16 dy = [1, 2^-8, 2^-8] (r = 3): the exact sum 1 + 2^-7 is a bf16 value; rounding after
    // each add (1 + 2^-8 ties to 1, twice) would give 1.
    let e = half::bf16::from_f32(2f32.powi(-8));
    let dy = [half::bf16::ONE, e, e];
    let mut dx = [half::bf16::ZERO];
    repeat_interleave_backward(View::host(&dy, &[3]).unwrap(), 0, 3, ViewMut::host(&mut dx, &[1]).unwrap()).unwrap();
    assert_eq!(dx[0].to_f32(), 1.0 + 2f32.powi(-7));
}

#[test]
fn bad_input_is_a_typed_error() {
    let x = vec![1.0f64; 12];
    let mut y = vec![0.0f64; 48];
    let run = |xs: &[usize], axis: usize, r: usize, ys: &[usize], y: &mut [f64]| {
        let (lx, ly) = (xs.iter().product::<usize>(), ys.iter().product::<usize>());
        repeat_interleave(View::host(&x[..lx], xs).unwrap(), axis, r, ViewMut::host(&mut y[..ly], ys).unwrap())
    };
    assert!(matches!(run(&[3, 4], 1, 0, &[3, 4], &mut y), Err(Error::Value { arg: "r", .. })));
    assert!(matches!(run(&[3, 4], 2, 2, &[3, 8], &mut y), Err(Error::Value { arg: "axis", .. })));
    assert!(matches!(run(&[], 0, 2, &[], &mut y), Err(Error::Value { arg: "axis", .. })));
    assert!(matches!(run(&[3, 0], 0, 2, &[6, 0], &mut y), Err(Error::Shape { arg: "x", .. })));
    assert!(matches!(run(&[3, 4], 1, 2, &[6, 4], &mut y), Err(Error::Shape { arg: "y", .. })));
    assert!(matches!(run(&[3, 4], 1, 2, &[3, 4, 2], &mut y), Err(Error::Shape { arg: "y", .. })));
    assert!(matches!(run(&[3, 4], 1, usize::MAX / 2, &[3, 8], &mut y), Err(Error::Value { arg: "r", .. })));
    assert!(run(&[3, 4], 1, 4, &[3, 16], &mut y).is_ok());
    // Backward: dx defines the shape, dy must be its long form.
    let dy = vec![1.0f64; 48];
    let mut dx = vec![0.0f64; 12];
    let e = repeat_interleave_backward(View::host(&dy[..24], &[3, 8]).unwrap(), 0, 2, ViewMut::host(&mut dx, &[3, 4]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "dy", .. })), "{e:?}");
    let e = repeat_interleave_backward(View::host(&dy[..24], &[3, 8]).unwrap(), 1, 0, ViewMut::host(&mut dx, &[3, 4]).unwrap());
    assert!(matches!(e, Err(Error::Value { arg: "r", .. })), "{e:?}");
    let e = repeat_interleave_backward(View::host(&dy[..24], &[3, 8]).unwrap(), 5, 2, ViewMut::host(&mut dx, &[3, 4]).unwrap());
    assert!(matches!(e, Err(Error::Value { arg: "axis", .. })), "{e:?}");
    assert!(repeat_interleave_backward(View::host(&dy[..24], &[3, 8]).unwrap(), 1, 2, ViewMut::host(&mut dx, &[3, 4]).unwrap()).is_ok());
    // upsample_nearest wants [B, C, L] and names itself.
    let e = upsample_nearest(View::host(&x, &[3, 4]).unwrap(), 2, ViewMut::host(&mut y[..24], &[3, 8]).unwrap());
    assert!(matches!(e, Err(Error::Shape { op: "upsample_nearest", arg: "x", .. })), "{e:?}");
    let e = upsample_nearest(View::host(&x, &[1, 3, 4]).unwrap(), 2, ViewMut::host(&mut y[..24], &[1, 6, 4]).unwrap());
    assert!(matches!(e, Err(Error::Shape { op: "upsample_nearest", arg: "y", .. })), "{e:?}");
    let e = upsample_nearest_backward(View::host(&dy[..24], &[1, 3, 8]).unwrap(), 0, ViewMut::host(&mut dx, &[1, 3, 4]).unwrap());
    assert!(matches!(e, Err(Error::Value { op: "upsample_nearest_backward", arg: "r", .. })), "{e:?}");
    let e = upsample_nearest_backward(View::host(&dy[..24], &[1, 3, 8]).unwrap(), 2, ViewMut::host(&mut dx, &[3, 4]).unwrap());
    assert!(matches!(e, Err(Error::Shape { op: "upsample_nearest_backward", arg: "dx", .. })), "{e:?}");
}

#[test]
fn device_mismatch_is_a_typed_error() {
    let Some(dev) = gpu_or_skip("device_mismatch_is_a_typed_error") else { return };
    let mut plan = Plan::new();
    let bx = plan.add::<f32>("x", &[4, 3], Role::Activation).unwrap();
    let mut arena = Arena::new(&dev, &plan).unwrap();
    let mut y = vec![0.0f32; 24];
    let b = arena.borrow();
    let e = repeat_interleave(b.read(bx).unwrap(), 1, 2, ViewMut::host(&mut y, &[4, 6]).unwrap());
    assert!(matches!(e, Err(Error::DeviceMismatch { arg: "y", .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

/// One forward + backward on the GPU against the twin: y bitwise (elements are moved), dx within
/// the f32 summation bound (r − 1)·u·Σ|dy| (+ bf16's rounding of the result). `shift`: the views
/// start one element past the arena's 256-byte alignment (the kernels' unaligned paths).
fn gpu_case<T: snug::Element + snug::ops::Real>(dev: &snug::Device, shape: &[usize], axis: usize, r: usize, shift: bool) {
    let ls = long_shape(shape, axis, r);
    let (n, nl) = (shape.iter().product::<usize>(), ls.iter().product::<usize>());
    let mut g = rng(7 + n as u64 + r as u64);
    let cv = |v: Vec<f32>| v.into_iter().map(|t| T::from_f32(t).unwrap()).collect::<Vec<T>>();
    let w64 = |v: &[T]| v.iter().map(|t| t.to_f64().unwrap()).collect::<Vec<f64>>();
    let (x, dy) = (cv(randn(&mut g, n, 1.0)), cv(randn(&mut g, nl, 1.0)));
    let (x6, dy6) = (w64(&x), w64(&dy));
    let want_y = fwd(&x6, shape, axis, r);
    let want_dx = bwd(&dy6, shape, axis, r);
    let abs_sum = bwd(&dy6.iter().map(|v| v.abs()).collect::<Vec<_>>(), shape, axis, r);
    let s = usize::from(shift);
    let mut plan = Plan::new();
    let (bx, bdy) = (plan.add::<T>("x", &[n + s], Role::Activation).unwrap(), plan.add::<T>("dy", &[nl + s], Role::Grad).unwrap());
    let (by, bdx) = (plan.add::<T>("y", &[nl + s], Role::Activation).unwrap(), plan.add::<T>("dx", &[n + s], Role::Grad).unwrap());
    let mut arena = Arena::new(dev, &plan).unwrap();
    let pad = |v: &[T]| std::iter::repeat_n(T::from_f32(0.0).unwrap(), s).chain(v.iter().copied()).collect::<Vec<T>>();
    arena.upload(bx, &pad(&x)).unwrap();
    arena.upload(bdy, &pad(&dy)).unwrap();
    let what = format!("{} shape {shape:?} axis {axis} r {r} shift {shift}", T::DTYPE);
    let mut runs = Vec::new();
    for _ in 0..2 {
        poison(&mut arena, by).unwrap();
        poison(&mut arena, bdx).unwrap();
        {
            let b = arena.borrow();
            let xv = b.read(bx).unwrap().narrow(s, n).unwrap().reshape(shape).unwrap();
            let yv = b.write(by).unwrap().split_at(s).unwrap().1.reshape(&ls).unwrap();
            repeat_interleave(xv, axis, r, yv).unwrap();
            let dyv = b.read(bdy).unwrap().narrow(s, nl).unwrap().reshape(&ls).unwrap();
            let dxv = b.write(bdx).unwrap().split_at(s).unwrap().1.reshape(shape).unwrap();
            repeat_interleave_backward(dyv, axis, r, dxv).unwrap();
        }
        let (y, dx) = (arena.download(by).unwrap(), arena.download(bdx).unwrap());
        let (y, dx) = (&y[s..], &dx[s..]);
        for (i, (a, w)) in w64(y).iter().zip(&want_y).enumerate() {
            assert!(a == w, "{what}: y[{i}] {a} vs {w}");
        }
        let bf = if T::DTYPE == snug::DType::BF16 { 2f64.powi(-8) } else { 0.0 };
        for (i, ((a, w), sa)) in w64(dx).iter().zip(&want_dx).zip(&abs_sum).enumerate() {
            let bound = (r as f64) * 2f64.powi(-24) * sa * (1.0 + bf) + bf * w.abs() + 1e-30;
            assert!((a - w).abs() <= bound, "{what}: dx[{i}] {a} vs {w} (bound {bound:e})");
        }
        runs.push(y.iter().chain(dx).map(|v| v.to_f64().unwrap().to_bits()).collect::<Vec<u64>>());
    }
    assert!(runs[0] == runs[1], "{what}: runs differ");
}

#[test]
fn gpu_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_matches_twin") else { return };
    // (shape, axis, r): the seed's upsample ×16 of [8, 19, 960] (inner 1, r a multiple of the
    // vector: r contiguous vectors in the backward) and [8, 960, 64] ×16 along T (vector rows);
    // inner 1 with r not a multiple of the vector; ragged inner (element rows, vector stores);
    // 4 (a vector of f32, not of bf16); a scalar tail; r 1; a 1-D tensor.
    let cases: [(&[usize], usize, usize); 10] = [
        (&[8, 19, 960], 2, 16),
        (&[8, 960, 64], 1, 16),
        (&[3, 5, 37], 2, 3),
        (&[3, 7, 5], 1, 16),
        (&[5, 6, 4], 1, 5),
        (&[2, 3, 8], 0, 7),
        (&[7, 3, 3], 2, 1),
        (&[1001], 0, 3),
        (&[4, 9, 1, 24], 1, 2),
        (&[64, 2, 16], 2, 8),
    ];
    for (shape, axis, r) in cases {
        for shift in [false, true] {
            gpu_case::<f32>(&dev, shape, axis, r, shift);
            gpu_case::<half::bf16>(&dev, shape, axis, r, shift);
        }
    }
}

#[test]
fn gpu_upsample_matches_repeat_interleave_bitwise() {
    let Some(dev) = gpu_or_skip("gpu_upsample_matches_repeat_interleave_bitwise") else { return };
    let (shape, ls) = ([2usize, 19, 97], [2usize, 19, 97 * 16]);
    let mut g = rng(11);
    let (x, dy) = (randn(&mut g, 2 * 19 * 97, 1.0), randn(&mut g, 2 * 19 * 97 * 16, 1.0));
    let mut plan = Plan::new();
    let (bx, bdy) = (plan.add::<f32>("x", &shape, Role::Activation).unwrap(), plan.add::<f32>("dy", &ls, Role::Grad).unwrap());
    let (by, bdx, by2, bdx2) = (plan.add::<f32>("y", &ls, Role::Activation).unwrap(), plan.add::<f32>("dx", &shape, Role::Grad).unwrap(), plan.add::<f32>("y2", &ls, Role::Activation).unwrap(), plan.add::<f32>("dx2", &shape, Role::Grad).unwrap());
    let mut arena = Arena::new(&dev, &plan).unwrap();
    arena.upload(bx, &x).unwrap();
    arena.upload(bdy, &dy).unwrap();
    for b in [by, bdx, by2, bdx2] {
        poison(&mut arena, b).unwrap();
    }
    {
        let b = arena.borrow();
        upsample_nearest(b.read(bx).unwrap(), 16, b.write(by).unwrap()).unwrap();
        upsample_nearest_backward(b.read(bdy).unwrap(), 16, b.write(bdx).unwrap()).unwrap();
        repeat_interleave(b.read(bx).unwrap(), 2, 16, b.write(by2).unwrap()).unwrap();
        repeat_interleave_backward(b.read(bdy).unwrap(), 2, 16, b.write(bdx2).unwrap()).unwrap();
    }
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert!(bits(arena.download(by).unwrap()) == bits(arena.download(by2).unwrap()));
    assert!(bits(arena.download(bdx).unwrap()) == bits(arena.download(bdx2).unwrap()));
    assert!(arena.download(by).unwrap().iter().all(|v| v.is_finite()));
}

/// More than 2^31 elements in y: the kernels' 64-bit index paths. bf16 x [2^23 + 5, 16] repeated
/// 16 times along axis 0 (y: 2^31 + 1,280 elements, 4.3 GB); x holds small integers (exact in bf16),
/// so y is checked exactly on a sample and at the end, and the backward of y itself is exactly 16·x.
#[test]
fn gpu_indices_past_2_pow_31() {
    let Some(dev) = gpu_or_skip("gpu_indices_past_2_pow_31") else { return };
    let (rows, inner, r) = ((1usize << 23) + 5, 16usize, 16usize);
    let (n, nl) = (rows * inner, rows * inner * r);
    assert!(nl > 1 << 31);
    let x: Vec<half::bf16> = (0..n).map(|k| half::bf16::from_f32(((k * 7 + k / 5) % 251) as f32 - 125.0)).collect();
    let mut plan = Plan::new();
    let (bx, by, bdx) = (plan.add::<half::bf16>("x", &[rows, inner], Role::Activation).unwrap(), plan.add::<half::bf16>("y", &[rows * r, inner], Role::Activation).unwrap(), plan.add::<half::bf16>("dx", &[rows, inner], Role::Grad).unwrap());
    let mut arena = Arena::new(&dev, &plan).unwrap();
    arena.upload(bx, &x).unwrap();
    poison(&mut arena, by).unwrap();
    poison(&mut arena, bdx).unwrap();
    {
        let b = arena.borrow();
        repeat_interleave(b.read(bx).unwrap(), 0, r, b.write(by).unwrap()).unwrap();
    }
    {
        let b = arena.borrow();
        repeat_interleave_backward(b.read(by).unwrap(), 0, r, b.write(bdx).unwrap()).unwrap();
    }
    let y = arena.download(by).unwrap();
    let check = |k: usize| assert!(y[k] == x[(k / inner / r) * inner + k % inner], "y[{k}]");
    (0..nl).step_by(997).for_each(check);
    (nl - 100_000..nl).for_each(check);
    let dx = arena.download(bdx).unwrap();
    for k in 0..n {
        assert!(dx[k].to_f32() == 16.0 * x[k].to_f32(), "dx[{k}]: {} vs 16 · {}", dx[k], x[k]);
    }
}
