//! Local (neighbourhood) attention: the f64 CPU twin against an unfold-style reference (ZeroPad)
//! and an explicit clamped-window reference (Shift) at corners, edges and interior, maps smaller
//! than, equal to and larger than K; layouts; gradients vs finite differences; the GPU kernels vs
//! the twin (f32 and bf16, odd sizes, d = 8, 16, 64), determinism; bad input.

#![allow(clippy::needless_range_loop)]

use snug::ops::local_attn::{backward_workspace_bytes, local_attn, local_attn_backward, Border, Dims, Layout, LocalAttnSpec};
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

fn f64v(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(|x| x as f64).collect()
}

fn spec(kernel: usize, border: Border) -> LocalAttnSpec {
    LocalAttnSpec { kernel, border, layout: Layout::Bhwd, scale: None }
}

/// Independent reference in [B, heads, H, W, d]: for ZeroPad, pad k and v with K/2 zeros on every
/// side and unfold the K×K patch (the seed's F.pad + F.unfold); for Shift, gather the clamped
/// window explicitly.
fn reference(q: &[f64], k: &[f64], v: &[f64], dm: Dims, kk: usize, border: Border) -> Vec<f64> {
    let Dims { b, heads, h, w, d } = dm;
    let r = kk / 2;
    let at = |bh: usize, y: usize, x: usize, c: usize| ((bh * h + y) * w + x) * d + c;
    let mut out = vec![0.0; q.len()];
    let (ph, pw) = (h + 2 * r, w + 2 * r);
    for bh in 0..b * heads {
        // Padded copies (zero border).
        let mut kp = vec![0.0; ph * pw * d];
        let mut vp = vec![0.0; ph * pw * d];
        for y in 0..h {
            for x in 0..w {
                for c in 0..d {
                    kp[((y + r) * pw + x + r) * d + c] = k[at(bh, y, x, c)];
                    vp[((y + r) * pw + x + r) * d + c] = v[at(bh, y, x, c)];
                }
            }
        }
        for y in 0..h {
            for x in 0..w {
                // Patch rows/cols in padded coordinates.
                let (py, px): (Vec<usize>, Vec<usize>) = match border {
                    Border::ZeroPad => ((y..y + kk).collect(), (x..x + kk).collect()),
                    Border::Shift => {
                        let sy = y.saturating_sub(r).min(h - kk);
                        let sx = x.saturating_sub(r).min(w - kk);
                        ((sy + r..sy + r + kk).collect(), (sx + r..sx + r + kk).collect())
                    }
                };
                let mut logits = Vec::new();
                let mut vals = Vec::new();
                for &yy in &py {
                    for &xx in &px {
                        let kr = &kp[(yy * pw + xx) * d..][..d];
                        logits.push((0..d).map(|c| q[at(bh, y, x, c)] * kr[c]).sum::<f64>() / (d as f64).sqrt());
                        vals.push(&vp[(yy * pw + xx) * d..][..d]);
                    }
                }
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    out[at(bh, y, x, c)] = e.iter().zip(&vals).map(|(p, vr)| p * vr[c]).sum::<f64>() / z;
                }
            }
        }
    }
    out
}

fn run(q: &[f64], k: &[f64], v: &[f64], dm: Dims, sp: LocalAttnSpec, shape: &[usize]) -> (Vec<f64>, Vec<f32>) {
    let mut out = vec![f64::NAN; q.len()];
    let mut lse = vec![f32::NAN; dm.b * dm.heads * dm.h * dm.w];
    local_attn(View::host(q, shape).unwrap(), View::host(k, shape).unwrap(), View::host(v, shape).unwrap(), ViewMut::host(&mut out, shape).unwrap(), ViewMut::host(&mut lse, &[dm.b, dm.heads, dm.h, dm.w]).unwrap(), sp).unwrap();
    (out, lse)
}

fn inputs(seed: u64, dm: Dims) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = dm.b * dm.heads * dm.h * dm.w * dm.d;
    let mut r = rng(seed);
    (f64v(randn(&mut r, n, 1.0)), f64v(randn(&mut r, n, 1.0)), f64v(randn(&mut r, n, 1.0)))
}

#[test]
fn twin_matches_unfold_and_clamped_references() {
    // Maps smaller than, equal to and larger than K; odd sizes; corners, edges and interior are
    // all compared (every pixel).
    for (h, w, kk) in [(2usize, 3usize, 5usize), (5, 5, 5), (7, 9, 3), (7, 9, 7), (11, 6, 5), (1, 1, 3)] {
        let dm = Dims { b: 2, heads: 2, h, w, d: 5 };
        let (q, k, v) = inputs(h as u64 * 31 + w as u64, dm);
        let shape = [dm.b, dm.heads, h, w, dm.d];
        for border in [Border::ZeroPad, Border::Shift] {
            if border == Border::Shift && (h < kk || w < kk) {
                continue;
            }
            let (got, _) = run(&q, &k, &v, dm, spec(kk, border), &shape);
            let want = reference(&q, &k, &v, dm, kk, border);
            for (i, (g, w_)) in got.iter().zip(&want).enumerate() {
                assert!((g - w_).abs() <= 1e-12, "{h}x{w} K={kk} {border:?} out[{i}]: {g} vs {w_}");
            }
        }
    }
}

#[test]
fn shift_equals_zero_pad_away_from_the_border_and_lse_is_the_log_partition() {
    let dm = Dims { b: 1, heads: 1, h: 9, w: 9, d: 4 };
    let (q, k, v) = inputs(3, dm);
    let shape = [1, 1, 9, 9, 4];
    let (zp, lz) = run(&q, &k, &v, dm, spec(3, Border::ZeroPad), &shape);
    let (sh, ls) = run(&q, &k, &v, dm, spec(3, Border::Shift), &shape);
    for y in 1..8 {
        for x in 1..8 {
            let p = y * 9 + x;
            assert_eq!(zp[p * 4..][..4], sh[p * 4..][..4], "interior pixel ({y}, {x})");
            assert_eq!(lz[p], ls[p]);
        }
    }
    // Corner (0, 0) with ZeroPad: 5 of the 9 keys are zeros, each adding exp(0) to the partition.
    let s: Vec<f64> = [(0usize, 0usize), (0, 1), (1, 0), (1, 1)].iter().map(|&(yy, xx)| (0..4).map(|c| q[c] * k[(yy * 9 + xx) * 4 + c]).sum::<f64>() / 2.0).collect();
    let want = (s.iter().map(|v| v.exp()).sum::<f64>() + 5.0).ln();
    assert!((lz[0] as f64 - want).abs() < 1e-6, "{} vs {want}", lz[0]);
}

#[test]
fn bchw_layout_equals_bhwd() {
    let dm = Dims { b: 2, heads: 3, h: 6, w: 7, d: 4 };
    let (q, k, v) = inputs(4, dm);
    // [B, heads, H, W, d] → [B, heads·d, H, W]
    let to_bchw = |t: &[f64]| {
        let mut o = vec![0.0; t.len()];
        for bh in 0..dm.b * dm.heads {
            for y in 0..dm.h {
                for x in 0..dm.w {
                    for c in 0..dm.d {
                        let (b, hd) = (bh / dm.heads, bh % dm.heads);
                        o[((b * dm.heads * dm.d + hd * dm.d + c) * dm.h + y) * dm.w + x] = t[((bh * dm.h + y) * dm.w + x) * dm.d + c];
                    }
                }
            }
        }
        o
    };
    for border in [Border::ZeroPad, Border::Shift] {
        let (a, la) = run(&q, &k, &v, dm, spec(5, border), &[2, 3, 6, 7, 4]);
        let sp = LocalAttnSpec { layout: Layout::Bchw { heads: 3 }, ..spec(5, border) };
        let (b, lb) = run(&to_bchw(&q), &to_bchw(&k), &to_bchw(&v), dm, sp, &[2, 12, 6, 7]);
        assert_eq!(to_bchw(&a), b);
        assert_eq!(la, lb);
    }
}

#[test]
fn backward_matches_finite_differences() {
    for (h, w, kk, border, layout) in [
        (4usize, 5usize, 3usize, Border::ZeroPad, Layout::Bhwd),
        (2, 3, 5, Border::ZeroPad, Layout::Bhwd),
        (5, 4, 3, Border::Shift, Layout::Bhwd),
        (4, 4, 3, Border::Shift, Layout::Bchw { heads: 2 }),
    ] {
        let dm = Dims { b: 1, heads: 2, h, w, d: 3 };
        let shape: Vec<usize> = match layout {
            Layout::Bhwd => vec![1, 2, h, w, 3],
            Layout::Bchw { .. } => vec![1, 6, h, w],
        };
        let sp = LocalAttnSpec { kernel: kk, border, layout, scale: Some(0.7) };
        let (q, k, v) = inputs(7 + h as u64, dm);
        let n = q.len();
        let mut r = rng(9);
        let dout = f64v(randn(&mut r, n, 1.0));
        let loss = |q: &[f64], k: &[f64], v: &[f64]| run(q, k, v, dm, sp, &shape).0.iter().zip(&dout).map(|(a, b)| a * b).sum::<f64>();
        let (out, lse) = run(&q, &k, &v, dm, sp, &shape);
        let (mut dq, mut dk, mut dv) = (vec![f64::NAN; n], vec![f64::NAN; n], vec![f64::NAN; n]);
        local_attn_backward(
            View::host(&q, &shape).unwrap(),
            View::host(&k, &shape).unwrap(),
            View::host(&v, &shape).unwrap(),
            View::host(&out, &shape).unwrap(),
            View::host(&lse, &[1, 2, h, w]).unwrap(),
            View::host(&dout, &shape).unwrap(),
            ViewMut::host(&mut dq, &shape).unwrap(),
            ViewMut::host(&mut dk, &shape).unwrap(),
            ViewMut::host(&mut dv, &shape).unwrap(),
            None,
            sp,
        )
        .unwrap();
        let hstep = 1e-6;
        for (which, g) in [(0usize, &dq), (1, &dk), (2, &dv)] {
            for i in 0..n {
                let mut t = [q.clone(), k.clone(), v.clone()];
                t[which][i] += hstep;
                let lp = loss(&t[0], &t[1], &t[2]);
                t[which][i] -= 2.0 * hstep;
                let lm = loss(&t[0], &t[1], &t[2]);
                let fd = (lp - lm) / (2.0 * hstep);
                assert!((g[i] - fd).abs() <= 1e-6 * (1.0 + fd.abs()), "{h}x{w} K={kk} {border:?} {layout:?} d{}[{i}]: {} vs {fd}", ["q", "k", "v"][which], g[i]);
            }
        }
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let dm = Dims { b: 1, heads: 2, h: 4, w: 4, d: 3 };
    let (q, k, v) = inputs(1, dm);
    let shape = [1, 2, 4, 4, 3];
    let mut out = vec![0.0; q.len()];
    let mut lse = vec![0.0f32; 32];
    let mut call = |sp: LocalAttnSpec, shape: &[usize], kshape: &[usize]| {
        local_attn(View::host(&q, shape).unwrap(), View::host(&k, kshape).unwrap(), View::host(&v, shape).unwrap(), ViewMut::host(&mut out, shape).unwrap(), ViewMut::host(&mut lse, &[1, 2, 4, 4]).unwrap(), sp)
    };
    for kk in [2usize, 1, 15, 0] {
        let e = call(spec(kk, Border::ZeroPad), &shape, &shape);
        assert!(matches!(e, Err(Error::Value { arg: "kernel", .. })), "K={kk}: {e:?}");
    }
    // Shift with a map smaller than K.
    let e = call(spec(5, Border::Shift), &shape, &shape);
    assert!(matches!(e, Err(Error::Shape { arg: "q", .. })), "{e:?}");
    // Heads not dividing C.
    let e = call(LocalAttnSpec { layout: Layout::Bchw { heads: 4 }, ..spec(3, Border::ZeroPad) }, &[1, 6, 4, 4], &[1, 6, 4, 4]);
    assert!(matches!(e, Err(Error::Value { arg: "heads", .. })), "{e:?}");
    // k of another shape; a bad scale.
    let e = call(spec(3, Border::ZeroPad), &shape, &[1, 2, 4, 3, 4]);
    assert!(matches!(e, Err(Error::Shape { arg: "k", .. })), "{e:?}");
    let e = call(LocalAttnSpec { scale: Some(f32::NAN), ..spec(3, Border::ZeroPad) }, &shape, &shape);
    assert!(matches!(e, Err(Error::Value { arg: "scale", .. })), "{e:?}");
    // d out of range (d = 129 > 128).
    let big = vec![0.0; 129];
    let mut o2 = vec![0.0; 129];
    let mut l2 = vec![0.0f32; 1];
    let e = local_attn(View::host(&big, &[1, 1, 1, 1, 129]).unwrap(), View::host(&big, &[1, 1, 1, 1, 129]).unwrap(), View::host(&big, &[1, 1, 1, 1, 129]).unwrap(), ViewMut::host(&mut o2, &[1, 1, 1, 1, 129]).unwrap(), ViewMut::host(&mut l2, &[1, 1, 1, 1]).unwrap(), spec(3, Border::ZeroPad));
    assert!(matches!(e, Err(Error::Shape { arg: "q", .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

fn gpu_case<T: snug::Element + snug::ops::Real>(dev: &snug::Device, dm: Dims, sp: LocalAttnSpec, shape: &[usize], tol: f64, seed: u64) {
    let n = dm.b * dm.heads * dm.h * dm.w * dm.d;
    let mut r = rng(seed);
    let cv = |v: Vec<f32>| v.into_iter().map(|x| T::from_f32(x).unwrap()).collect::<Vec<T>>();
    let (q, k, v, dout) = (cv(randn(&mut r, n, 1.0)), cv(randn(&mut r, n, 1.0)), cv(randn(&mut r, n, 1.0)), cv(randn(&mut r, n, 1.0)));
    let w64 = |t: &[T]| t.iter().map(|x| x.to_f64().unwrap()).collect::<Vec<f64>>();
    let (q64, k64, v64, g64) = (w64(&q), w64(&k), w64(&v), w64(&dout));
    let (want_o, want_lse) = run(&q64, &k64, &v64, dm, sp, shape);
    let (mut wq, mut wk, mut wv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let lshape = [dm.b, dm.heads, dm.h, dm.w];
    local_attn_backward(
        View::host(&q64, shape).unwrap(),
        View::host(&k64, shape).unwrap(),
        View::host(&v64, shape).unwrap(),
        View::host(&want_o, shape).unwrap(),
        View::host(&want_lse, &lshape).unwrap(),
        View::host(&g64, shape).unwrap(),
        ViewMut::host(&mut wq, shape).unwrap(),
        ViewMut::host(&mut wk, shape).unwrap(),
        ViewMut::host(&mut wv, shape).unwrap(),
        None,
        sp,
    )
    .unwrap();
    let mut plan = Plan::new();
    let bufs: Vec<_> = ["q", "k", "v", "out", "dout", "dq", "dk", "dv"].iter().map(|nm| plan.add::<T>(*nm, shape, Role::Activation).unwrap()).collect();
    let lse = plan.add::<f32>("lse", &lshape, Role::Saved).unwrap();
    let ws = plan.add::<f32>("ws", &[backward_workspace_bytes(dm) / 4], Role::Workspace).unwrap();
    let mut arena = Arena::new(dev, &plan).unwrap();
    for (b, data) in bufs.iter().zip([&q, &k, &v]) {
        arena.upload(*b, data).unwrap();
    }
    arena.upload(bufs[4], &dout).unwrap();
    let what = format!("{} {dm:?} {sp:?}", T::DTYPE);
    let mut runs = Vec::new();
    for _ in 0..2 {
        for b in [bufs[3], bufs[5], bufs[6], bufs[7]] {
            poison(&mut arena, b).unwrap();
        }
        poison(&mut arena, lse).unwrap();
        poison(&mut arena, ws).unwrap();
        {
            let x = arena.borrow();
            local_attn(x.read(bufs[0]).unwrap(), x.read(bufs[1]).unwrap(), x.read(bufs[2]).unwrap(), x.write(bufs[3]).unwrap(), x.write(lse).unwrap(), sp).unwrap();
        }
        {
            let x = arena.borrow();
            local_attn_backward(
                x.read(bufs[0]).unwrap(),
                x.read(bufs[1]).unwrap(),
                x.read(bufs[2]).unwrap(),
                x.read(bufs[3]).unwrap(),
                x.read(lse).unwrap(),
                x.read(bufs[4]).unwrap(),
                x.write(bufs[5]).unwrap(),
                x.write(bufs[6]).unwrap(),
                x.write(bufs[7]).unwrap(),
                Some(x.write(ws).unwrap()),
                sp,
            )
            .unwrap();
        }
        let mut bits = Vec::new();
        for (name, b, want) in [("out", bufs[3], &want_o), ("dq", bufs[5], &wq), ("dk", bufs[6], &wk), ("dv", bufs[7], &wv)] {
            let got = w64(&arena.download(b).unwrap());
            let scale = want.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
            for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                assert!((g - w).abs() <= tol * scale, "{what}: {name}[{i}] {g} vs {w} (scale {scale:e})");
            }
            bits.extend(got.iter().map(|x| x.to_bits()));
        }
        let gl = arena.download(lse).unwrap();
        for (i, (g, w)) in gl.iter().zip(&want_lse).enumerate() {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{what}: lse[{i}] {g} vs {w}");
        }
        runs.push(bits);
    }
    assert!(runs[0] == runs[1], "{what}: two runs differ");
}

#[test]
fn gpu_f32_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_f32_matches_twin") else { return };
    for (dm, kk) in [
        (Dims { b: 2, heads: 2, h: 7, w: 9, d: 8 }, 3usize),
        (Dims { b: 1, heads: 3, h: 7, w: 9, d: 16 }, 7),
        (Dims { b: 1, heads: 1, h: 2, w: 3, d: 64 }, 5), // map smaller than K (ZeroPad only)
        (Dims { b: 1, heads: 1, h: 13, w: 13, d: 64 }, 13),
        (Dims { b: 1, heads: 1, h: 255, w: 257, d: 16 }, 7),
        (Dims { b: 1, heads: 2, h: 9, w: 10, d: 24 }, 5), // d not a power of two
    ] {
        for border in [Border::ZeroPad, Border::Shift] {
            if border == Border::Shift && (dm.h < kk || dm.w < kk) {
                continue;
            }
            let shape = [dm.b, dm.heads, dm.h, dm.w, dm.d];
            gpu_case::<f32>(&dev, dm, spec(kk, border), &shape, 1e-5, 20 + kk as u64);
            // The channel-major layout of a 1x1 conv's output, read in place.
            let sp = LocalAttnSpec { layout: Layout::Bchw { heads: dm.heads }, ..spec(kk, border) };
            gpu_case::<f32>(&dev, dm, sp, &[dm.b, dm.heads * dm.d, dm.h, dm.w], 1e-5, 40 + kk as u64);
        }
    }
}

#[test]
fn gpu_bf16_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_bf16_matches_twin") else { return };
    for (dm, kk) in [(Dims { b: 1, heads: 2, h: 7, w: 9, d: 16 }, 7usize), (Dims { b: 1, heads: 1, h: 33, w: 31, d: 64 }, 7)] {
        for border in [Border::ZeroPad, Border::Shift] {
            let shape = [dm.b, dm.heads, dm.h, dm.w, dm.d];
            gpu_case::<half::bf16>(&dev, dm, spec(kk, border), &shape, 1e-2, 60);
        }
    }
}
