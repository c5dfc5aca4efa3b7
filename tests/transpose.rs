//! transpose: the twin against hand-computed cases and an independent multi-index formula on every
//! axis position, random ragged shapes, inner > 1, the adjoint property and the involution, bad
//! input; the GPU kernel (f32 and bf16, the tiled path with ragged tiles, the vector and scalar row
//! paths, unaligned views, a grid-stride past one grid; poisoned outputs, two runs bitwise) against
//! the twin, bitwise.

use snug::ops::transpose::{transpose, transpose_backward};
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

fn f64v(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(|x| x as f64).collect()
}

fn swapped(shape: &[usize], axis: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    s.swap(axis, axis + 1);
    s
}

fn fwd<T: snug::ops::Real>(x: &[T], shape: &[usize], axis: usize) -> Vec<T> {
    let ys = swapped(shape, axis);
    let mut y = vec![T::nan(); x.len()];
    transpose(View::host(x, shape).unwrap(), axis, ViewMut::host(&mut y, &ys).unwrap()).unwrap();
    y
}

/// dx from dy (dy has the swapped shape of `shape`).
fn bwd(dy: &[f64], shape: &[usize], axis: usize) -> Vec<f64> {
    let ys = swapped(shape, axis);
    let mut dx = vec![f64::NAN; dy.len()];
    transpose_backward(View::host(dy, &ys).unwrap(), axis, ViewMut::host(&mut dx, shape).unwrap()).unwrap();
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

/// y at multi-index m equals x at m with m[axis] and m[axis + 1] exchanged (an independent
/// formula: strides, not the twin's row decomposition).
fn check_formula(x: &[f64], y: &[f64], shape: &[usize], axis: usize) {
    let ys = swapped(shape, axis);
    let (sx, sy) = (strides(shape), strides(&ys));
    for (k, &yk) in y.iter().enumerate() {
        let m: Vec<usize> = (0..ys.len()).map(|d| k / sy[d] % ys[d]).collect();
        let mut mx = m.clone();
        mx.swap(axis, axis + 1);
        let src: usize = mx.iter().zip(&sx).map(|(a, b)| a * b).sum();
        assert_eq!(yk.to_bits(), x[src].to_bits(), "shape {shape:?} axis {axis} y{m:?}");
    }
}

#[test]
fn twin_matches_hand_cases() {
    // A 2 × 3 matrix: [[1, 2, 3], [4, 5, 6]]ᵀ = [[1, 4], [2, 5], [3, 6]].
    let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    assert_eq!(fwd(&x, &[2, 3], 0), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    // inner = 2: [2, 3, 2] rows of pairs, x[i, j] = (p, q) → y[j, i].
    let x: Vec<f64> = (0..12).map(f64::from).collect();
    assert_eq!(fwd(&x, &[2, 3, 2], 0), [0.0, 1.0, 6.0, 7.0, 2.0, 3.0, 8.0, 9.0, 4.0, 5.0, 10.0, 11.0]);
    // outer = 2, a = 2, b = 2: each 2 × 2 block transposed on its own.
    let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    assert_eq!(fwd(&x, &[2, 2, 2], 1), [1.0, 3.0, 2.0, 4.0, 5.0, 7.0, 6.0, 8.0]);
    // The same tensor on axis 0: x[i, j, c] → y[j, i, c].
    assert_eq!(fwd(&x, &[2, 2, 2], 0), [1.0, 2.0, 5.0, 6.0, 3.0, 4.0, 7.0, 8.0]);
    // A size-1 axis: the data does not move (only the shape changes).
    assert_eq!(fwd(&x, &[1, 8], 0), x);
    assert_eq!(fwd(&x, &[2, 4, 1], 1), x);
    // Backward of the 2 × 3 case: dx [2, 3] from dy [3, 2].
    assert_eq!(bwd(&[1.0, 4.0, 2.0, 5.0, 3.0, 6.0], &[2, 3], 0), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

#[test]
fn twin_matches_a_multi_index_formula_on_every_axis() {
    let mut g = rng(1);
    for shape in [vec![2usize, 3, 4, 5], vec![3, 1, 7, 2, 2], vec![33, 35], vec![5, 37, 31], vec![2, 40, 33, 3]] {
        let n = shape.iter().product();
        let x = f64v(randn(&mut g, n, 1.0));
        for axis in 0..shape.len() - 1 {
            check_formula(&x, &fwd(&x, &shape, axis), &shape, axis);
        }
    }
    // Random ragged shapes (sizes not multiples of 32), ranks 2..5.
    let mut r = rng(3);
    let mut u = |m: usize| (randn(&mut r, 1, 1.0)[0].abs() * 1e6) as usize % m + 1;
    for _ in 0..40 {
        let rank = 2 + u(4) - 1;
        let shape: Vec<usize> = (0..rank).map(|_| u(if rank > 3 { 9 } else { 70 })).collect();
        let axis = u(rank - 1) - 1;
        let n = shape.iter().product();
        let x = f64v(randn(&mut g, n, 1.0));
        check_formula(&x, &fwd(&x, &shape, axis), &shape, axis);
    }
}

#[test]
fn twin_moves_bits_exactly() {
    // NaN payloads, -0, ±inf, subnormals: copied, not converted (f32 and bf16).
    let x = [f32::from_bits(0x7fa5_a5a5), -0.0, f32::INFINITY, f32::NEG_INFINITY, 1e-40, f32::from_bits(0xffc0_0001)];
    let y = fwd(&x, &[3, 2], 0);
    let bits: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
    assert_eq!(bits, [0x7fa5_a5a5, f32::INFINITY.to_bits(), 1e-40f32.to_bits(), (-0.0f32).to_bits(), f32::NEG_INFINITY.to_bits(), 0xffc0_0001]);
    let xb: Vec<half::bf16> = [0x7fa5u16, 0x8000, 0x0001, 0xff81, 0x3f80, 0x4000].into_iter().map(half::bf16::from_bits).collect();
    let yb: Vec<u16> = fwd(&xb, &[2, 3], 0).iter().map(|v| v.to_bits()).collect();
    assert_eq!(yb, [0x7fa5, 0xff81, 0x8000, 0x3f80, 0x0001, 0x4000]);
}

#[test]
fn backward_is_the_adjoint_and_transposing_twice_is_the_identity() {
    let mut g = rng(2);
    for shape in [vec![3usize, 4, 2], vec![5, 33, 7], vec![2, 3, 4, 5, 3]] {
        let n: usize = shape.iter().product();
        for axis in 0..shape.len() - 1 {
            let (x, dy) = (f64v(randn(&mut g, n, 1.0)), f64v(randn(&mut g, n, 1.0)));
            // <transpose(x), dy> = <x, transpose_backward(dy)> (a permutation: the same products, summed
            // in another order).
            let lhs: f64 = fwd(&x, &shape, axis).iter().zip(&dy).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&bwd(&dy, &shape, axis)).map(|(a, b)| a * b).sum();
            assert!((lhs - rhs).abs() <= 1e-12 * (1.0 + lhs.abs()), "shape {shape:?} axis {axis}: {lhs} vs {rhs}");
            // transpose(transpose(x, axis), axis) = x, bitwise; and the backward undoes the forward.
            let y = fwd(&x, &shape, axis);
            assert_eq!(fwd(&y, &swapped(&shape, axis), axis), x, "shape {shape:?} axis {axis}");
            assert_eq!(bwd(&y, &shape, axis), x, "shape {shape:?} axis {axis}");
        }
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let x = [1.0f64; 24];
    let mut y = [0.0f64; 24];
    let run = |xs: &[usize], axis: usize, ys: &[usize], y: &mut [f64]| {
        let (lx, ly) = (xs.iter().product::<usize>(), ys.iter().product::<usize>());
        transpose(View::host(&x[..lx], xs).unwrap(), axis, ViewMut::host(&mut y[..ly], ys).unwrap())
    };
    assert!(matches!(run(&[3, 4], 1, &[4, 3], &mut y), Err(Error::Value { arg: "axis", .. })));
    assert!(matches!(run(&[3, 4], usize::MAX, &[4, 3], &mut y), Err(Error::Value { arg: "axis", .. })));
    assert!(matches!(run(&[12], 0, &[12], &mut y), Err(Error::Value { arg: "axis", .. })));
    assert!(matches!(run(&[], 0, &[], &mut y), Err(Error::Value { arg: "axis", .. })));
    assert!(matches!(run(&[3, 0], 0, &[0, 3], &mut y), Err(Error::Shape { arg: "x", .. })));
    assert!(matches!(run(&[0, 3, 2], 1, &[0, 2, 3], &mut y), Err(Error::Shape { arg: "x", .. })));
    assert!(matches!(run(&[3, 4], 0, &[3, 4], &mut y), Err(Error::Shape { arg: "y", .. })));
    assert!(matches!(run(&[3, 4], 0, &[12], &mut y), Err(Error::Shape { arg: "y", .. })));
    assert!(matches!(run(&[2, 3, 4], 1, &[3, 2, 4], &mut y), Err(Error::Shape { arg: "y", .. })));
    assert!(matches!(run(&[2, 3, 4], 1, &[2, 4, 3, 1], &mut y), Err(Error::Shape { arg: "y", .. })));
    assert!(run(&[2, 3, 4], 1, &[2, 4, 3], &mut y).is_ok());
    assert!(run(&[3, 4], 0, &[4, 3], &mut y).is_ok());
    // Backward: dx defines the shape, dy must be its swap; errors name the backward's arguments.
    let dy = vec![1.0f64; 24];
    let mut dx = vec![0.0f64; 24];
    let e = transpose_backward(View::host(&dy, &[2, 3, 4]).unwrap(), 1, ViewMut::host(&mut dx, &[2, 3, 4]).unwrap());
    assert!(matches!(e, Err(Error::Shape { op: "transpose_backward", arg: "dx", .. })), "{e:?}");
    let e = transpose_backward(View::host(&dy, &[2, 3, 4]).unwrap(), 2, ViewMut::host(&mut dx, &[2, 4, 3]).unwrap());
    assert!(matches!(e, Err(Error::Value { op: "transpose_backward", arg: "axis", .. })), "{e:?}");
    assert!(transpose_backward(View::host(&dy, &[2, 3, 4]).unwrap(), 1, ViewMut::host(&mut dx, &[2, 4, 3]).unwrap()).is_ok());
}

#[test]
fn device_mismatch_is_a_typed_error() {
    let Some(dev) = gpu_or_skip("device_mismatch_is_a_typed_error") else { return };
    let mut plan = Plan::new();
    let bx = plan.add::<f32>("x", &[4, 3], Role::Activation).unwrap();
    let mut arena = Arena::new(&dev, &plan).unwrap();
    let mut y = vec![0.0f32; 12];
    let b = arena.borrow();
    let e = transpose(b.read(bx).unwrap(), 0, ViewMut::host(&mut y, &[3, 4]).unwrap());
    assert!(matches!(e, Err(Error::DeviceMismatch { arg: "y", .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

/// Forward and backward on the GPU against the twin, bitwise (elements are moved). `shift`: the
/// views start one element past the arena's 256-byte alignment (the scalar row path).
fn gpu_case<T: snug::Element + snug::ops::Real>(dev: &snug::Device, shape: &[usize], axis: usize, shift: bool) {
    let ys = swapped(shape, axis);
    let n = shape.iter().product::<usize>();
    let mut g = rng(7 + n as u64 + axis as u64);
    let cv = |v: Vec<f32>| v.into_iter().map(|t| T::from_f32(t).unwrap()).collect::<Vec<T>>();
    let (x, dy) = (cv(randn(&mut g, n, 1.0)), cv(randn(&mut g, n, 1.0)));
    let want_y = fwd(&x, shape, axis);
    let mut want_dx = vec![T::nan(); n];
    transpose_backward(View::host(&dy, &ys).unwrap(), axis, ViewMut::host(&mut want_dx, shape).unwrap()).unwrap();
    let s = usize::from(shift);
    let mut plan = Plan::new();
    let (bx, bdy) = (plan.add::<T>("x", &[n + s], Role::Activation).unwrap(), plan.add::<T>("dy", &[n + s], Role::Grad).unwrap());
    let (by, bdx) = (plan.add::<T>("y", &[n + s], Role::Activation).unwrap(), plan.add::<T>("dx", &[n + s], Role::Grad).unwrap());
    let mut arena = Arena::new(dev, &plan).unwrap();
    let pad = |v: &[T]| std::iter::repeat_n(T::from_f32(0.0).unwrap(), s).chain(v.iter().copied()).collect::<Vec<T>>();
    arena.upload(bx, &pad(&x)).unwrap();
    arena.upload(bdy, &pad(&dy)).unwrap();
    let what = format!("{} shape {shape:?} axis {axis} shift {shift}", T::DTYPE);
    let bits = |v: &[T]| v.iter().map(|t| t.to_f64().unwrap().to_bits()).collect::<Vec<u64>>();
    let mut runs = Vec::new();
    for _ in 0..2 {
        poison(&mut arena, by).unwrap();
        poison(&mut arena, bdx).unwrap();
        {
            let b = arena.borrow();
            let xv = b.read(bx).unwrap().narrow(s, n).unwrap().reshape(shape).unwrap();
            let yv = b.write(by).unwrap().split_at(s).unwrap().1.reshape(&ys).unwrap();
            transpose(xv, axis, yv).unwrap();
            let dyv = b.read(bdy).unwrap().narrow(s, n).unwrap().reshape(&ys).unwrap();
            let dxv = b.write(bdx).unwrap().split_at(s).unwrap().1.reshape(shape).unwrap();
            transpose_backward(dyv, axis, dxv).unwrap();
        }
        let (y, dx) = (arena.download(by).unwrap(), arena.download(bdx).unwrap());
        let (y, dx) = (&y[s..], &dx[s..]);
        if let Some(i) = (0..n).find(|&i| bits(&y[i..=i]) != bits(&want_y[i..=i])) {
            panic!("{what}: y[{i}] {:?} vs {:?}", y[i], want_y[i]);
        }
        if let Some(i) = (0..n).find(|&i| bits(&dx[i..=i]) != bits(&want_dx[i..=i])) {
            panic!("{what}: dx[{i}] {:?} vs {:?}", dx[i], want_dx[i]);
        }
        runs.push(bits(y).into_iter().chain(bits(dx)).collect::<Vec<u64>>());
    }
    assert!(runs[0] == runs[1], "{what}: runs differ");
}

#[test]
fn gpu_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_matches_twin") else { return };
    // (shape, axis): seed shapes at reduced batch ([2, 512, 960] channels-first → last, [2, 171,
    // 960] ragged a); ragged tiles on both edges; a, b below one tile; a size-1 axis; 2-D; inner
    // 64 (vector rows: 16 f32 / 8 bf16 vectors), inner 4 (a vector of f32, not of bf16), inner 3
    // (scalar rows), inner 8 with a size-1 outer.
    let cases: [(&[usize], usize); 12] = [
        (&[2, 512, 960], 1),
        (&[2, 171, 960], 1),
        (&[3, 37, 65], 1),
        (&[5, 7, 3], 1),
        (&[4, 1, 50], 1),
        (&[33, 1000], 0),
        (&[2, 19, 96, 64], 1),
        (&[3, 5, 37, 4], 1),
        (&[7, 9, 3], 0),
        (&[9, 40, 8], 0),
        (&[2, 3, 4, 5, 6], 2),
        (&[1001, 2], 0),
    ];
    for (shape, axis) in cases {
        for shift in [false, true] {
            gpu_case::<f32>(&dev, shape, axis, shift);
            gpu_case::<half::bf16>(&dev, shape, axis, shift);
        }
    }
}

/// More tiles than the launch's 2^16 blocks (the tiled path's grid-stride: [70, 1000, 1000] =
/// 70 · 32 · 32 = 71,680 tiles) and more vectors than its 2^24 threads (the row path: bf16
/// [2, 1100, 1000, 64] = 2.2 M rows of 8 vectors); bitwise against the twin on the whole output.
#[test]
fn gpu_beyond_one_grid() {
    let Some(dev) = gpu_or_skip("gpu_beyond_one_grid") else { return };
    fn big<T: snug::Element + snug::ops::Real>(dev: &snug::Device, shape: &[usize], axis: usize) {
        let n: usize = shape.iter().product();
        let ys = swapped(shape, axis);
        let x: Vec<T> = (0..n).map(|k| T::from_f32((k % 251) as f32 - 125.0 + (k % 7) as f32 / 8.0).unwrap()).collect();
        let want = fwd(&x, shape, axis);
        let mut plan = Plan::new();
        let (bx, by) = (plan.add::<T>("x", shape, Role::Activation).unwrap(), plan.add::<T>("y", &ys, Role::Activation).unwrap());
        let mut arena = Arena::new(dev, &plan).unwrap();
        arena.upload(bx, &x).unwrap();
        poison(&mut arena, by).unwrap();
        {
            let b = arena.borrow();
            transpose(b.read(bx).unwrap(), axis, b.write(by).unwrap()).unwrap();
        }
        let y = arena.download(by).unwrap();
        let bad = y.iter().zip(&want).position(|(a, w)| a.to_f64().unwrap().to_bits() != w.to_f64().unwrap().to_bits());
        assert!(bad.is_none(), "{} {shape:?}: first difference at {bad:?}", T::DTYPE);
    }
    big::<f32>(&dev, &[70, 1000, 1000], 1);
    big::<half::bf16>(&dev, &[2, 1100, 1000, 64], 1);
}
