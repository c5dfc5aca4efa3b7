//! nn.Linear: the f64 twin against a hand computation and finite differences (dx, dW, db, with
//! leading dimensions), the GPU (cuBLAS + bias kernels) against the twin in f32 and bf16 with an f32
//! master gradient, several bias-gradient chunks, determinism; bad input.

use snug::ops::linear::{backward_workspace_bytes, linear, linear_backward};
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

fn f64v(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(|x| x as f64).collect()
}

#[test]
fn twin_matches_a_hand_computation() {
    // x [1, 2] = [1, 2]; W [[1, 0], [2, 3], [-1, 1]]; b [0.5, 0, 1] → y = [1.5, 8, 2].
    let (x, w, b) = ([1.0, 2.0], [1.0, 0.0, 2.0, 3.0, -1.0, 1.0], [0.5, 0.0, 1.0]);
    let mut y = [0.0; 3];
    linear(View::host(&x, &[1, 2]).unwrap(), View::host(&w, &[3, 2]).unwrap(), Some(View::host(&b, &[3]).unwrap()), ViewMut::host(&mut y, &[1, 3]).unwrap(), None).unwrap();
    assert_eq!(y, [1.5, 8.0, 2.0]);
}

#[test]
fn backward_matches_finite_differences() {
    let (lead, inp, out) = ([2usize, 3usize], 4usize, 5usize);
    let rows = lead[0] * lead[1];
    let mut r = rng(1);
    let (x, w, b, dy) = (f64v(randn(&mut r, rows * inp, 1.0)), f64v(randn(&mut r, out * inp, 1.0)), f64v(randn(&mut r, out, 1.0)), f64v(randn(&mut r, rows * out, 1.0)));
    let (xs, ys) = ([2, 3, inp], [2, 3, out]);
    let loss = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; rows * out];
        linear(View::host(x, &xs).unwrap(), View::host(w, &[out, inp]).unwrap(), Some(View::host(b, &[out]).unwrap()), ViewMut::host(&mut y, &ys).unwrap(), None).unwrap();
        y.iter().zip(&dy).map(|(a, c)| a * c).sum::<f64>()
    };
    let (mut dx, mut dw, mut db) = (vec![f64::NAN; x.len()], vec![f64::NAN; w.len()], vec![f64::NAN; out]);
    linear_backward(View::host(&x, &xs).unwrap(), View::host(&w, &[out, inp]).unwrap(), View::host(&dy, &ys).unwrap(), Some(ViewMut::host(&mut dx, &xs).unwrap()), ViewMut::host(&mut dw, &[out, inp]).unwrap(), Some(ViewMut::host(&mut db, &[out]).unwrap()), None, None).unwrap();
    let h = 1e-6;
    for (which, g) in [(0usize, &dx), (1, &dw), (2, &db)] {
        for i in 0..g.len() {
            let mut t = [x.clone(), w.clone(), b.clone()];
            t[which][i] += h;
            let lp = loss(&t[0], &t[1], &t[2]);
            t[which][i] -= 2.0 * h;
            let lm = loss(&t[0], &t[1], &t[2]);
            let fd = (lp - lm) / (2.0 * h);
            assert!((g[i] - fd).abs() <= 1e-7 * (1.0 + fd.abs()), "d{}[{i}]: {} vs {fd}", ["x", "w", "b"][which], g[i]);
        }
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let x = vec![0.0f64; 12];
    let w = vec![0.0f64; 15];
    let mut y = vec![0.0f64; 20];
    let e = linear(View::host(&x, &[4, 3]).unwrap(), View::host(&w, &[5, 3]).unwrap(), None, ViewMut::host(&mut y[..16], &[4, 4]).unwrap(), None);
    assert!(matches!(e, Err(Error::Shape { arg: "y", .. })), "{e:?}");
    let e = linear(View::host(&x, &[3, 4]).unwrap(), View::host(&w, &[5, 3]).unwrap(), None, ViewMut::host(&mut y[..15], &[3, 5]).unwrap(), None);
    assert!(matches!(e, Err(Error::Shape { arg: "w", .. })), "{e:?}");
    let b = vec![0.0f64; 4];
    let e = linear(View::host(&x, &[4, 3]).unwrap(), View::host(&w, &[5, 3]).unwrap(), Some(View::host(&b, &[4]).unwrap()), ViewMut::host(&mut y, &[4, 5]).unwrap(), None);
    assert!(matches!(e, Err(Error::Shape { arg: "b", .. })), "{e:?}");
    let e = linear(View::host(&x[..0], &[0, 3]).unwrap(), View::host(&w, &[5, 3]).unwrap(), None, ViewMut::host(&mut y[..0], &[0, 5]).unwrap(), None);
    assert!(matches!(e, Err(Error::Shape { arg: "x", .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

fn gpu_case<T: snug::Element + snug::ops::Real>(dev: &snug::Device, rows: usize, inp: usize, out: usize, tol: f64) {
    let mut r = rng(3);
    let cv = |v: Vec<f32>| v.into_iter().map(|t| T::from_f32(t).unwrap()).collect::<Vec<T>>();
    let w64 = |v: &[T]| v.iter().map(|t| t.to_f64().unwrap()).collect::<Vec<f64>>();
    let (x, w, b, dy) = (cv(randn(&mut r, rows * inp, 1.0)), cv(randn(&mut r, out * inp, 0.3)), cv(randn(&mut r, out, 1.0)), cv(randn(&mut r, rows * out, 1.0)));
    let (x6, w6, b6, g6) = (w64(&x), w64(&w), w64(&b), w64(&dy));
    let mut wy = vec![0.0; rows * out];
    linear(View::host(&x6, &[rows, inp]).unwrap(), View::host(&w6, &[out, inp]).unwrap(), Some(View::host(&b6, &[out]).unwrap()), ViewMut::host(&mut wy, &[rows, out]).unwrap(), None).unwrap();
    let (mut wdx, mut wdw, mut wdb) = (vec![0.0; rows * inp], vec![0.0; out * inp], vec![0.0; out]);
    linear_backward(View::host(&x6, &[rows, inp]).unwrap(), View::host(&w6, &[out, inp]).unwrap(), View::host(&g6, &[rows, out]).unwrap(), Some(ViewMut::host(&mut wdx, &[rows, inp]).unwrap()), ViewMut::host(&mut wdw, &[out, inp]).unwrap(), Some(ViewMut::host(&mut wdb, &[out]).unwrap()), None, None).unwrap();
    let mut plan = Plan::new();
    let (bx, bw, bb, bdy) = (plan.add::<T>("x", &[rows, inp], Role::Activation).unwrap(), plan.add::<T>("w", &[out, inp], Role::Param).unwrap(), plan.add::<T>("b", &[out], Role::Param).unwrap(), plan.add::<T>("dy", &[rows, out], Role::Grad).unwrap());
    let (by, bdx) = (plan.add::<T>("y", &[rows, out], Role::Activation).unwrap(), plan.add::<T>("dx", &[rows, inp], Role::Grad).unwrap());
    let (bdw, bdb) = (plan.add::<f32>("dw", &[out, inp], Role::Grad).unwrap(), plan.add::<f32>("db", &[out], Role::Grad).unwrap());
    let ws = plan.add::<f32>("ws", &[backward_workspace_bytes(rows, out) / 4], Role::Workspace).unwrap();
    let mut arena = Arena::new(dev, &plan).unwrap();
    for (buf, v) in [(bx, &x), (bw, &w), (bb, &b), (bdy, &dy)] {
        arena.upload(buf, v).unwrap();
    }
    let mut runs = Vec::new();
    for _ in 0..2 {
        for buf in [by, bdx] {
            poison(&mut arena, buf).unwrap();
        }
        for buf in [bdw, bdb, ws] {
            poison(&mut arena, buf).unwrap();
        }
        {
            let v = arena.borrow();
            linear(v.read(bx).unwrap(), v.read(bw).unwrap(), Some(v.read(bb).unwrap()), v.write(by).unwrap(), None).unwrap();
        }
        {
            let v = arena.borrow();
            linear_backward(v.read(bx).unwrap(), v.read(bw).unwrap(), v.read(bdy).unwrap(), Some(v.write(bdx).unwrap()), v.write(bdw).unwrap(), Some(v.write(bdb).unwrap()), Some(v.write(ws).unwrap()), None).unwrap();
        }
        let what = format!("{} rows={rows} in={inp} out={out}", T::DTYPE);
        let mut bits = Vec::new();
        for (name, got, want, scale_k) in [
            ("y", w64(&arena.download(by).unwrap()), &wy, inp),
            ("dx", w64(&arena.download(bdx).unwrap()), &wdx, out),
            ("dw", f64v(arena.download(bdw).unwrap()), &wdw, rows),
            ("db", f64v(arena.download(bdb).unwrap()), &wdb, rows),
        ] {
            // Sums of k terms of size ~1: error ~ tol·√k.
            let t = tol * (scale_k as f64).sqrt().max(1.0);
            for (i, (a, w)) in got.iter().zip(want.iter()).enumerate() {
                assert!((a - w).abs() <= t * (1.0 + w.abs()), "{what}: {name}[{i}] {a} vs {w}");
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
    gpu_case::<f32>(&dev, 9000, 64, 33, 1e-5); // three bias-gradient chunks, ragged out
    gpu_case::<f32>(&dev, 7, 5, 3, 1e-5);
    gpu_case::<half::bf16>(&dev, 5000, 64, 64, 1e-2);
}
