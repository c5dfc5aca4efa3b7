//! Depthwise causal conv1d: the f64 twin against a hand computation, the reverse = flip identity
//! and finite differences; the CUDA kernels against the twin; bad input.

use snug::ops::causal_conv1d::{backward_workspace_bytes, causal_conv1d, causal_conv1d_backward, ConvOptions};
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

fn f64v(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(|x| x as f64).collect()
}

fn fwd(x: &[f64], w: &[f64], b: Option<&[f64]>, (s, d, l, k): (usize, usize, usize, usize), opt: ConvOptions) -> Vec<f64> {
    let mut out = vec![0.0; s * d * l];
    causal_conv1d(View::host(x, &[s, d, l]).unwrap(), View::host(w, &[d, k]).unwrap(), b.map(|b| View::host(b, &[d]).unwrap()), ViewMut::host(&mut out, &[s, d, l]).unwrap(), opt).unwrap();
    out
}

#[test]
fn twin_matches_a_hand_computation() {
    // One row, K = 3, w = [1, 2, 3], bias 0.5: out[l] = 0.5 + x[l-2] + 2 x[l-1] + 3 x[l].
    let x = [1.0, -1.0, 2.0, 0.5];
    let out = fwd(&x, &[1.0, 2.0, 3.0], Some(&[0.5]), (1, 1, 4, 3), ConvOptions::default());
    assert_eq!(out, vec![0.5 + 3.0, 0.5 + 2.0 - 3.0, 0.5 + 1.0 - 2.0 + 6.0, 0.5 - 1.0 + 4.0 + 1.5]);
    // Reverse: out[l] = 0.5 + x[l+2] + 2 x[l+1] + 3 x[l].
    let out = fwd(&x, &[1.0, 2.0, 3.0], Some(&[0.5]), (1, 1, 4, 3), ConvOptions { reverse: true, silu: false });
    assert_eq!(out, vec![0.5 + 2.0 - 2.0 + 3.0, 0.5 + 0.5 + 4.0 - 3.0, 0.5 + 1.0 + 6.0, 0.5 + 1.5]);
}

#[test]
fn reverse_equals_causal_on_the_flipped_sequence() {
    let (s, d, l, k) = (2, 3, 11, 4);
    let mut r = rng(1);
    let x = f64v(randn(&mut r, s * d * l, 1.0));
    let w = f64v(randn(&mut r, d * k, 1.0));
    let b = f64v(randn(&mut r, d, 1.0));
    let flip = |v: &[f64]| (0..v.len()).map(|i| v[(i / l) * l + l - 1 - i % l]).collect::<Vec<_>>();
    for silu in [false, true] {
        let rev = fwd(&x, &w, Some(&b), (s, d, l, k), ConvOptions { silu, reverse: true });
        let via_flip = flip(&fwd(&flip(&x), &w, Some(&b), (s, d, l, k), ConvOptions { silu, reverse: false }));
        for (a, c) in rev.iter().zip(&via_flip) {
            assert!((a - c).abs() < 1e-12);
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    let dm @ (s, d, l, k) = (2usize, 3usize, 6usize, 3usize);
    let mut r = rng(2);
    for (silu, reverse) in [(false, false), (true, false), (true, true)] {
        let opt = ConvOptions { silu, reverse };
        let x = f64v(randn(&mut r, s * d * l, 1.0));
        let w = f64v(randn(&mut r, d * k, 1.0));
        let b = f64v(randn(&mut r, d, 1.0));
        let dout = f64v(randn(&mut r, s * d * l, 1.0));
        let (mut dx, mut dw, mut db) = (vec![0.0; s * d * l], vec![0.0; d * k], vec![0.0; d]);
        causal_conv1d_backward(
            View::host(&x, &[s, d, l]).unwrap(),
            View::host(&w, &[d, k]).unwrap(),
            Some(View::host(&b, &[d]).unwrap()),
            View::host(&dout, &[s, d, l]).unwrap(),
            ViewMut::host(&mut dx, &[s, d, l]).unwrap(),
            ViewMut::host(&mut dw, &[d, k]).unwrap(),
            Some(ViewMut::host(&mut db, &[d]).unwrap()),
            None,
            opt,
        )
        .unwrap();
        let loss = |x: &[f64], w: &[f64], b: &[f64]| fwd(x, w, Some(b), dm, opt).iter().zip(&dout).map(|(a, g)| a * g).sum::<f64>();
        let h = 1e-6;
        for (which, an) in [(0, &dx), (1, &dw), (2, &db)] {
            for i in 0..an.len() {
                let (mut xp, mut wp, mut bp) = (x.clone(), w.clone(), b.clone());
                let (mut xm, mut wm, mut bm) = (x.clone(), w.clone(), b.clone());
                match which {
                    0 => (xp[i] += h, xm[i] -= h),
                    1 => (wp[i] += h, wm[i] -= h),
                    _ => (bp[i] += h, bm[i] -= h),
                };
                let fd = (loss(&xp, &wp, &bp) - loss(&xm, &wm, &bm)) / (2.0 * h);
                assert!((fd - an[i]).abs() <= 1e-6 * (1.0 + fd.abs()), "silu={silu} reverse={reverse} grad {which}[{i}]: {} vs {fd}", an[i]);
            }
        }
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let x = vec![0.0f32; 2 * 3 * 4];
    let w5 = vec![0.0f32; 3 * 5];
    let mut out = vec![0.0f32; 2 * 3 * 4];
    let e = causal_conv1d(View::host(&x, &[2, 3, 4]).unwrap(), View::host(&w5, &[3, 5]).unwrap(), None, ViewMut::host(&mut out, &[2, 3, 4]).unwrap(), ConvOptions::default());
    assert!(matches!(e, Err(Error::Shape { arg: "w", .. })), "K = 5: {e:?}");
    let w = vec![0.0f32; 2 * 4];
    let e = causal_conv1d(View::host(&x, &[2, 3, 4]).unwrap(), View::host(&w, &[2, 4]).unwrap(), None, ViewMut::host(&mut out, &[2, 3, 4]).unwrap(), ConvOptions::default());
    assert!(matches!(e, Err(Error::Shape { arg: "w", .. })), "channel mismatch: {e:?}");
    let w = vec![0.0f32; 3 * 4];
    let e = causal_conv1d(View::host(&x, &[2, 3, 4]).unwrap(), View::host(&w, &[3, 4]).unwrap(), None, ViewMut::host(&mut out[..12], &[1, 3, 4]).unwrap(), ConvOptions::default());
    assert!(matches!(e, Err(Error::Shape { arg: "out", .. })), "{e:?}");
    let b = vec![0.0f32; 2];
    let e = causal_conv1d(View::host(&x, &[2, 3, 4]).unwrap(), View::host(&w, &[3, 4]).unwrap(), Some(View::host(&b, &[2]).unwrap()), ViewMut::host(&mut out, &[2, 3, 4]).unwrap(), ConvOptions::default());
    assert!(matches!(e, Err(Error::Shape { arg: "bias", .. })), "{e:?}");
    let e = causal_conv1d(View::host(&x[..0], &[2, 3, 0]).unwrap(), View::host(&w, &[3, 4]).unwrap(), None, ViewMut::host(&mut out[..0], &[2, 3, 0]).unwrap(), ConvOptions::default());
    assert!(matches!(e, Err(Error::Shape { arg: "x", .. })), "L = 0: {e:?}");
}

#[test]
fn gpu_matches_twin_forward_and_backward() {
    let Some(dev) = gpu_or_skip("gpu_matches_twin_forward_and_backward") else { return };
    let mut r = rng(3);
    for (s, d, l, k) in [(2usize, 3usize, 1usize, 4usize), (3, 5, 7, 1), (8, 256, 960, 4), (1, 33, 1000, 2), (4, 16, 4097, 3)] {
        for (silu, reverse) in [(false, false), (true, false), (true, true)] {
            let opt = ConvOptions { silu, reverse };
            let x = randn(&mut r, s * d * l, 1.0);
            let w = randn(&mut r, d * k, 0.5);
            let b = randn(&mut r, d, 0.5);
            let dout = randn(&mut r, s * d * l, 1.0);
            let (xf, wf, bf, gf) = (f64v(x.clone()), f64v(w.clone()), f64v(b.clone()), f64v(dout.clone()));
            let want = fwd(&xf, &wf, Some(&bf), (s, d, l, k), opt);
            let (mut wdx, mut wdw, mut wdb) = (vec![0.0; s * d * l], vec![0.0; d * k], vec![0.0; d]);
            causal_conv1d_backward(
                View::host(&xf, &[s, d, l]).unwrap(),
                View::host(&wf, &[d, k]).unwrap(),
                Some(View::host(&bf, &[d]).unwrap()),
                View::host(&gf, &[s, d, l]).unwrap(),
                ViewMut::host(&mut wdx, &[s, d, l]).unwrap(),
                ViewMut::host(&mut wdw, &[d, k]).unwrap(),
                Some(ViewMut::host(&mut wdb, &[d]).unwrap()),
                None,
                opt,
            )
            .unwrap();
            let mut plan = Plan::new();
            let bx = plan.add::<f32>("x", &[s, d, l], Role::Activation).unwrap();
            let bw = plan.add::<f32>("w", &[d, k], Role::Param).unwrap();
            let bb = plan.add::<f32>("b", &[d], Role::Param).unwrap();
            let bo = plan.add::<f32>("out", &[s, d, l], Role::Activation).unwrap();
            let bg = plan.add::<f32>("dout", &[s, d, l], Role::Grad).unwrap();
            let bdx = plan.add::<f32>("dx", &[s, d, l], Role::Grad).unwrap();
            let bdw = plan.add::<f32>("dw", &[d, k], Role::Grad).unwrap();
            let bdb = plan.add::<f32>("db", &[d], Role::Grad).unwrap();
            let ws = plan.add::<f32>("ws", &[backward_workspace_bytes(s, d, k) / 4], Role::Workspace).unwrap();
            let mut arena = Arena::new(&dev, &plan).unwrap();
            arena.upload(bx, &x).unwrap();
            arena.upload(bw, &w).unwrap();
            arena.upload(bb, &b).unwrap();
            arena.upload(bg, &dout).unwrap();
            for buf in [bo, bdx, bdw, bdb] {
                poison(&mut arena, buf).unwrap();
            }
            {
                let v = arena.borrow();
                causal_conv1d(v.read(bx).unwrap(), v.read(bw).unwrap(), Some(v.read(bb).unwrap()), v.write(bo).unwrap(), opt).unwrap();
                causal_conv1d_backward(v.read(bx).unwrap(), v.read(bw).unwrap(), Some(v.read(bb).unwrap()), v.read(bg).unwrap(), v.write(bdx).unwrap(), v.write(bdw).unwrap(), Some(v.write(bdb).unwrap()), Some(v.write(ws).unwrap()), opt).unwrap();
            }
            let what = format!("S={s} D={d} L={l} K={k} silu={silu} reverse={reverse}");
            for (name, buf, want, tol) in [("out", bo, &want, 1e-5), ("dx", bdx, &wdx, 1e-5), ("dw", bdw, &wdw, 1e-4), ("dbias", bdb, &wdb, 1e-4)] {
                let got = arena.download(buf).unwrap();
                let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
                for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
                    assert!((g as f64 - w).abs() <= tol * scale, "{what}: {name}[{i}] {g} vs {w}");
                }
            }
        }
    }
}
