//! Global gradient norm: the f64 twin against a direct sum, the GPU against the twin (f32, bf16,
//! tensors smaller and larger than a chunk, more tensors than one partial launch holds) and bitwise
//! against an f32 port of the kernels' arithmetic, determinism; bad input.

use snug::ops::grad_norm::{grad_norm, workspace_bytes};
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

#[test]
fn twin_is_the_l2_norm_of_the_concatenation() {
    let a = [3.0f64, 4.0];
    let b = [12.0f64];
    let mut n = [0.0f64];
    grad_norm(&[View::host(&a, &[2]).unwrap(), View::host(&b, &[1]).unwrap()], ViewMut::host(&mut n, &[1]).unwrap(), None).unwrap();
    assert_eq!(n[0], 13.0);
}

#[test]
fn bad_input_is_a_typed_error() {
    let mut n = [0.0f64; 2];
    let a = [1.0f64];
    let e = grad_norm::<f64, f64>(&[], ViewMut::host(&mut n[..1], &[1]).unwrap(), None);
    assert!(matches!(e, Err(Error::Value { arg: "grads", .. })), "{e:?}");
    let e = grad_norm(&[View::host(&a, &[1]).unwrap()], ViewMut::host(&mut n, &[2]).unwrap(), None);
    assert!(matches!(e, Err(Error::Shape { arg: "norm", .. })), "{e:?}");
}

/// The kernels' f32 arithmetic in the same order: per 4,096-element chunk of each tensor, thread t
/// sums elements t, t + 256, ... with a fused multiply-add, then the 256-wide tree; the final block
/// sums partials t, t + 256, ..., the tree, sqrt.
fn port<G: snug::ops::Real>(data: &[Vec<G>]) -> f32 {
    fn tree(mut a: [f32; 256]) -> f32 {
        let mut s = 128;
        while s > 0 {
            for t in 0..s {
                a[t] += a[t + s];
            }
            s /= 2;
        }
        a[0]
    }
    let mut acc = [0.0f32; 256];
    for (k, chunk) in data.iter().flat_map(|t| t.chunks(4096)).enumerate() {
        let mut part = [0.0f32; 256];
        for (j, v) in chunk.iter().enumerate() {
            let v = v.to_f64().unwrap() as f32;
            part[j % 256] = v.mul_add(v, part[j % 256]);
        }
        acc[k % 256] += tree(part);
    }
    tree(acc).sqrt()
}

fn gpu_case<G: snug::Element + snug::ops::Real>(dev: &snug::Device, lens: &[usize], tol: f64) {
    let mut r = rng(1);
    let data: Vec<Vec<G>> = lens.iter().map(|&n| randn(&mut r, n, 1.0).into_iter().map(|v| G::from_f32(v).unwrap()).collect()).collect();
    let want: f64 = data.iter().flatten().map(|v| v.to_f64().unwrap().powi(2)).sum::<f64>().sqrt();
    let mut plan = Plan::new();
    let bufs: Vec<_> = lens.iter().enumerate().map(|(i, &n)| plan.add::<G>(format!("g{i}"), &[n], Role::Grad).unwrap()).collect();
    let norm = plan.add::<f32>("norm", &[1], Role::Io).unwrap();
    let ws = plan.add::<f32>("ws", &[(workspace_bytes(lens) / 4).max(1)], Role::Workspace).unwrap();
    let mut arena = Arena::new(dev, &plan).unwrap();
    for (b, d) in bufs.iter().zip(&data) {
        arena.upload(*b, d).unwrap();
    }
    let mut bits = Vec::new();
    for _ in 0..2 {
        poison(&mut arena, norm).unwrap();
        poison(&mut arena, ws).unwrap();
        {
            let v = arena.borrow();
            let views: Vec<_> = bufs.iter().map(|b| v.read(*b).unwrap()).collect();
            grad_norm(&views, v.write(norm).unwrap(), Some(v.write(ws).unwrap())).unwrap();
        }
        let got = arena.download(norm).unwrap()[0];
        assert!((got as f64 - want).abs() <= tol * want, "{} {lens:?}: {got} vs {want}", G::DTYPE);
        let ported = port(&data);
        assert_eq!(got.to_bits(), ported.to_bits(), "{} {lens:?}: {got} vs the f32 port {ported}", G::DTYPE);
        bits.push(got.to_bits());
    }
    assert_eq!(bits[0], bits[1], "two runs differ");
}

#[test]
fn gpu_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_matches_twin") else { return };
    // Several tensors: a 1-element bias, a ragged one, one of several chunks, a large one.
    gpu_case::<f32>(&dev, &[1, 4095, 4097, 262_145, 3_000_000], 1e-5);
    gpu_case::<half::bf16>(&dev, &[7, 70_000], 1e-5);
    // 150 tensors of 1..9001 elements: partial launches of 64, 64 and 22 tensors.
    let many: Vec<usize> = (0..150).map(|i| 1 + (i * 1237) % 9001).collect();
    gpu_case::<f32>(&dev, &many, 1e-5);
    gpu_case::<half::bf16>(&dev, &many, 1e-5);
}
