//! Dropout: mask statistics, forward/backward share the mask without storing it, offsets give
//! independent masks, p = 0 is the identity; the GPU mask bit-identical to the twin's; bad input.

use snug::ops::dropout::{dropout, dropout_backward, keep};
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

#[test]
fn mask_rate_scale_and_backward() {
    let n = 200_000usize;
    let x = vec![1.0f64; n];
    for p in [0.0f32, 0.15, 0.5, 0.9] {
        let mut y = vec![f64::NAN; n];
        dropout(View::host(&x, &[n]).unwrap(), ViewMut::host(&mut y, &[n]).unwrap(), p, 7, 0).unwrap();
        let kept = y.iter().filter(|v| **v != 0.0).count();
        let want = (1.0 - p as f64) * n as f64;
        let sd = (n as f64 * p as f64 * (1.0 - p as f64)).sqrt().max(1.0);
        assert!((kept as f64 - want).abs() < 6.0 * sd, "p={p}: kept {kept}, expected {want}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / (1.0 - p as f64)).abs() < 1e-6), "p={p}: scale");
        // The backward recomputes the same mask.
        let mut dx = vec![f64::NAN; n];
        dropout_backward(View::host(&x, &[n]).unwrap(), ViewMut::host(&mut dx, &[n]).unwrap(), p, 7, 0).unwrap();
        assert_eq!(dx, y);
    }
    // Another offset: an independent mask (about half the kept positions differ at p = 0.5).
    let same = (0..n as u64).filter(|&i| keep(7, 0, i, 0.5) == keep(7, n as u64, i, 0.5)).count();
    assert!((same as f64 - 0.5 * n as f64).abs() < 6.0 * (0.25 * n as f64).sqrt(), "masks at two offsets agree on {same} of {n}");
}

#[test]
fn bad_input_is_a_typed_error() {
    let x = vec![1.0f64; 4];
    let mut y = vec![0.0f64; 4];
    for p in [1.0f32, -0.1, f32::NAN] {
        let e = dropout(View::host(&x, &[4]).unwrap(), ViewMut::host(&mut y, &[4]).unwrap(), p, 1, 0);
        assert!(matches!(e, Err(Error::Value { arg: "p", .. })), "{e:?}");
    }
    let e = dropout(View::host(&x, &[4]).unwrap(), ViewMut::host(&mut y[..3], &[3]).unwrap(), 0.1, 1, 0);
    assert!(matches!(e, Err(Error::Shape { arg: "out", .. })), "{e:?}");
}

#[test]
fn gpu_mask_is_the_twins() {
    let Some(dev) = gpu_or_skip("gpu_mask_is_the_twins") else { return };
    let n = 1_000_003usize;
    let mut r = rng(2);
    let x = randn(&mut r, n, 1.0);
    let mut plan = Plan::new();
    let (bx, by, bd) = (plan.add::<f32>("x", &[n], Role::Activation).unwrap(), plan.add::<f32>("y", &[n], Role::Activation).unwrap(), plan.add::<f32>("dx", &[n], Role::Grad).unwrap());
    let mut arena = Arena::new(&dev, &plan).unwrap();
    arena.upload(bx, &x).unwrap();
    poison(&mut arena, by).unwrap();
    poison(&mut arena, bd).unwrap();
    {
        let v = arena.borrow();
        dropout(v.read(bx).unwrap(), v.write(by).unwrap(), 0.15, 99, 12345).unwrap();
        dropout_backward(v.read(bx).unwrap(), v.write(bd).unwrap(), 0.15, 99, 12345).unwrap();
    }
    let (y, dx) = (arena.download(by).unwrap(), arena.download(bd).unwrap());
    let mut want = vec![0.0f32; n];
    dropout(View::host(&x, &[n]).unwrap(), ViewMut::host(&mut want, &[n]).unwrap(), 0.15, 99, 12345).unwrap();
    for i in 0..n {
        // The mask itself: kept exactly where the twin keeps (x is never 0 here).
        assert_eq!(y[i] != 0.0, keep(99, 12345, i as u64, 0.15), "mask differs at {i}");
        assert!((y[i] - want[i]).abs() <= 1e-6 * want[i].abs(), "y[{i}] {} vs {}", y[i], want[i]);
    }
    assert_eq!(y, dx);
}

/// The kernel's paths agree bitwise and keep drawing the mask by global element index: 16-byte
/// vectors plus a scalar tail (aligned views, m not a multiple of the vector width) vs the scalar
/// loop (views one element off a 16-byte boundary), every pointer misaligned (offset + 1: the same
/// draws) and only the output misaligned; f32 and bf16.
fn gpu_paths_case<T: snug::Element + snug::ops::Real>(dev: &snug::Device, m: usize) {
    let n = m - 1;
    let (p, seed, offset) = (0.3f32, 5u64, u64::MAX - 2); // offset + i wraps at i = 3
    let mut r = rng(3);
    let x: Vec<T> = randn(&mut r, m, 1.0).into_iter().map(|v| T::from_f32(v).unwrap()).collect();
    let bits = |v: &[T]| v.iter().map(|x| x.to_f64().unwrap().to_bits()).collect::<Vec<u64>>();
    let mut plan = Plan::new();
    let (bx, by, b1) = (plan.add::<T>("x", &[m], Role::Activation).unwrap(), plan.add::<T>("y", &[m], Role::Activation).unwrap(), plan.add::<T>("y1", &[m], Role::Activation).unwrap());
    let mut arena = Arena::new(dev, &plan).unwrap();
    arena.upload(bx, &x).unwrap();
    poison(&mut arena, by).unwrap();
    poison(&mut arena, b1).unwrap();
    {
        let v = arena.borrow();
        dropout(v.read(bx).unwrap(), v.write(by).unwrap(), p, seed, offset).unwrap();
        let (_, out) = v.write(b1).unwrap().split_at(1).unwrap();
        dropout(v.read(bx).unwrap().narrow(1, n).unwrap(), out, p, seed, offset.wrapping_add(1)).unwrap();
    }
    let (y, y1) = (arena.download(by).unwrap(), bits(&arena.download(b1).unwrap()));
    for (i, v) in y.iter().enumerate() {
        assert_eq!(v.to_f64().unwrap() != 0.0, keep(seed, offset, i as u64, p), "{} mask differs at {i}", T::DTYPE);
    }
    let y = bits(&y);
    assert!(y[1..] == y1[1..], "{}: every view misaligned differs from the aligned run", T::DTYPE);
    poison(&mut arena, b1).unwrap();
    {
        let v = arena.borrow();
        let (_, out) = v.write(b1).unwrap().split_at(1).unwrap();
        dropout_backward(v.read(bx).unwrap().narrow(0, n).unwrap(), out, p, seed, offset).unwrap();
    }
    let y1 = bits(&arena.download(b1).unwrap());
    assert!(y[..n] == y1[1..], "{}: the output misaligned differs from the aligned run", T::DTYPE);
}

#[test]
fn gpu_vector_tail_and_scalar_paths_agree() {
    let Some(dev) = gpu_or_skip("gpu_vector_tail_and_scalar_paths_agree") else { return };
    gpu_paths_case::<f32>(&dev, 100_003); // tail 3 of 4
    gpu_paths_case::<half::bf16>(&dev, 100_007); // tail 7 of 8
    gpu_paths_case::<f32>(&dev, 2); // no vector at all
}
