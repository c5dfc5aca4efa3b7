//! nn.Linear: the f64 twin against a hand computation and finite differences (dx, dW, db, with
//! leading dimensions), the GPU (cuBLAS + bias kernels) against the twin in f32 and bf16 with an f32
//! master gradient, several bias-gradient chunks, determinism; bad input.

use snug::ops::gemm::{gemm, gemm_sum_batches, GemmSpec};
use snug::ops::linear::{backward_workspace_bytes, dw_split, linear, linear_backward};
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
    let ws = plan.add::<f32>("ws", &[backward_workspace_bytes(rows, inp, out, true, true) / 4], Role::Workspace).unwrap();
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
    // dW split over row chunks (dw_split): 8 chunks + a remainder; 3 chunks + a remainder.
    gpu_case::<half::bf16>(&dev, 20_000, 64, 64, 1e-2);
    gpu_case::<f32>(&dev, 40_000, 16, 8, 1e-5);
}

#[test]
fn dw_split_is_sound() {
    for rows in [1usize, 100, 2047, 4096, 8191, 9000, 20_000, 145_920, 1 << 22, 999_983] {
        for (inp, out) in [(64usize, 256usize), (16, 8), (512, 1216), (4096, 4096), (1, 1)] {
            let (chunks, per) = dw_split(rows, inp, out);
            if chunks == 1 {
                assert_eq!(per, rows);
                continue;
            }
            assert!(chunks >= 3 && per % 16 == 0 && per >= 2048, "rows={rows} {inp}->{out}: {chunks} × {per}");
            assert!(chunks * per <= rows && rows - chunks * per < per, "rows={rows}: {chunks} × {per}");
            assert!(4 * chunks * out * inp <= 64 << 20, "partials over 64 MiB");
        }
    }
    // The measured miss: 145,920 rows, 64 → 256 is split; the V3 electrode layer is not.
    assert!(dw_split(145_920, 64, 256).0 > 16);
    assert_eq!(dw_split(7680, 512, 1216).0, 1);
    // Workspace: bias partials + the split's products, f32 dW only.
    let (c, _) = dw_split(145_920, 64, 256);
    assert_eq!(backward_workspace_bytes(145_920, 64, 256, true, true), 4 * 36 * 256 + 4 * c * 256 * 64);
    assert_eq!(backward_workspace_bytes(145_920, 64, 256, false, false), 0);
    assert_eq!(backward_workspace_bytes(100, 64, 256, false, true), 0);
}

/// The GPU's split dW — `gemm_sum_batches` over `chunks` row blocks (ta), then the remaining
/// rows added by a β = 1 GEMM — run through the same calls on host views equals dyᵀ·x.
#[test]
fn dw_split_decomposition_equals_one_product() {
    let mut r = rng(9);
    for (rows, inp, out) in [(20_000usize, 7usize, 5usize), (40_000, 3, 2), (6 * 2048, 4, 3)] {
        let (chunks, per) = dw_split(rows, inp, out);
        assert!(chunks > 1, "{rows}: not split");
        let x: Vec<f64> = randn(&mut r, rows * inp, 1.0).into_iter().map(f64::from).collect();
        let dy: Vec<f64> = randn(&mut r, rows * out, 1.0).into_iter().map(f64::from).collect();
        let w = vec![0.0f64; out * inp];
        let mut want = vec![0.0f64; out * inp];
        linear_backward(View::host(&x, &[rows, inp]).unwrap(), View::host(&w, &[out, inp]).unwrap(), View::host(&dy, &[rows, out]).unwrap(), None, ViewMut::host(&mut want, &[out, inp]).unwrap(), None, None, None).unwrap();
        let (xv, gv) = (View::host(&x, &[rows, inp]).unwrap(), View::host(&dy, &[rows, out]).unwrap());
        let main = chunks * per;
        let mut got = vec![f64::NAN; out * inp];
        let spec = GemmSpec::new(true, false);
        gemm_sum_batches(gv.clone().narrow(0, main).unwrap().reshape(&[chunks, per, out]).unwrap(), xv.clone().narrow(0, main).unwrap().reshape(&[chunks, per, inp]).unwrap(), ViewMut::host(&mut got, &[out, inp]).unwrap(), spec, None, None).unwrap();
        // 6 × 2,048 rows split exactly; the others leave a remainder.
        assert_eq!(main < rows, rows != 6 * 2048, "rows={rows}: {chunks} × {per}");
        if main < rows {
            gemm(gv.narrow(main, rows - main).unwrap(), xv.narrow(main, rows - main).unwrap(), ViewMut::host(&mut got, &[out, inp]).unwrap(), GemmSpec { beta: 1.0, ..spec }, None).unwrap();
        }
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()) * (rows as f64).sqrt(), "rows={rows}: dw[{i}] {a} vs {b}");
        }
    }
}

#[test]
fn narrow_and_split_at_are_checked() {
    let v = vec![0.0f32; 12];
    let x = View::host(&v, &[4, 3]).unwrap();
    assert_eq!(x.clone().narrow(1, 2).unwrap().shape(), &[2, 3]);
    assert_eq!(x.clone().narrow(1, 2).unwrap().as_slice().unwrap().as_ptr(), v[3..].as_ptr());
    assert!(matches!(x.clone().narrow(3, 2), Err(Error::Length { .. })));
    assert!(matches!(x.clone().narrow(0, 0), Err(Error::Length { .. })));
    assert!(matches!(x.narrow(usize::MAX, 2), Err(Error::Length { .. })));
    let mut m = vec![0.0f32; 10];
    let (a, b) = ViewMut::host(&mut m, &[2, 5]).unwrap().split_at(4).unwrap();
    assert_eq!((a.len(), b.len()), (4, 6));
    let mut m2 = vec![0.0f32; 3];
    assert!(matches!(ViewMut::host(&mut m2, &[3]).unwrap().split_at(4), Err(Error::Length { .. })));
}
