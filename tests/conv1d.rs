//! conv1d: the CPU twin against a textbook zero-padded reference (every padding, stride, dilation,
//! groups, bias), `Padding::Same` lengths, finite differences of the backward, bad input; the GPU
//! (f32 and bf16) against the twin at ragged and V3 TCN-like shapes, NaN-poisoned outputs, two
//! runs bitwise equal.

use snug::ops::conv1d::{backward_workspace_bytes, conv1d, conv1d_backward, conv1d_dims, forward_workspace_bytes, Conv1dSpec, Padding};
use snug::ops::gemm::CUBLAS_WORKSPACE_BYTES;
use snug::ops::Real;
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

fn f64v(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(f64::from).collect()
}

fn spec(k: usize, s: usize, d: usize, padding: Padding, g: usize) -> Conv1dSpec {
    Conv1dSpec { kernel: k, stride: s, dilation: d, padding, groups: g }
}

/// Textbook: pad x with explicit zeros, then y[b,o,l] = b[o] + Σ_c Σ_j w[o,c,j] · xp[b, g·Cg + c, l·s + j·d].
fn reference(x: &[f64], (bt, cin, lin): (usize, usize, usize), w: &[f64], cout: usize, b: Option<&[f64]>, sp: Conv1dSpec) -> (Vec<f64>, usize) {
    let (k, s, d, g) = (sp.kernel, sp.stride, sp.dilation, sp.groups);
    let (pl, pr) = match sp.padding {
        Padding::Both(p) => (p, p),
        Padding::Same => (d * (k - 1) / 2, d * (k - 1) - d * (k - 1) / 2),
    };
    let lp = lin + pl + pr;
    let mut xp = vec![0.0; bt * cin * lp];
    for r in 0..bt * cin {
        xp[r * lp + pl..][..lin].copy_from_slice(&x[r * lin..][..lin]);
    }
    let lout = (lp - d * (k - 1) - 1) / s + 1;
    let (cg, cgo) = (cin / g, cout / g);
    let mut y = vec![0.0; bt * cout * lout];
    for b_ in 0..bt {
        for o in 0..cout {
            for l in 0..lout {
                let mut a = b.map_or(0.0, |b| b[o]);
                for c in 0..cg {
                    for j in 0..k {
                        a += w[(o * cg + c) * k + j] * xp[(b_ * cin + (o / cgo) * cg + c) * lp + l * s + j * d];
                    }
                }
                y[(b_ * cout + o) * lout + l] = a;
            }
        }
    }
    (y, lout)
}

/// (batch, c_in, c_out, l_in, spec) cases covering every feature and border.
fn cases() -> Vec<(usize, usize, usize, usize, Conv1dSpec)> {
    vec![
        (2, 3, 4, 17, spec(7, 1, 1, Padding::Same, 1)),
        (2, 3, 4, 40, spec(7, 1, 4, Padding::Same, 1)),
        (1, 2, 2, 10, spec(4, 1, 1, Padding::Same, 1)), // even k: left pad 1, right 2
        (2, 4, 6, 23, spec(3, 2, 2, Padding::Both(2), 2)),
        (2, 4, 4, 64, spec(16, 16, 1, Padding::Both(0), 1)), // patch embedding
        (3, 5, 2, 9, spec(1, 1, 1, Padding::Both(0), 1)),    // 1×1
        (2, 6, 6, 13, spec(5, 3, 1, Padding::Both(4), 6)),   // depthwise, strided, padded
        (1, 2, 3, 5, spec(3, 1, 3, Padding::Both(6), 1)),    // padding = d(k−1): taps that see nothing
    ]
}

#[test]
fn twin_matches_the_textbook_reference() {
    let mut r = rng(1);
    for (bt, cin, cout, lin, sp) in cases() {
        let x = f64v(randn(&mut r, bt * cin * lin, 1.0));
        let w = f64v(randn(&mut r, cout * (cin / sp.groups) * sp.kernel, 1.0));
        let b = f64v(randn(&mut r, cout, 1.0));
        let (want, lout) = reference(&x, (bt, cin, lin), &w, cout, Some(&b), sp);
        let d = conv1d_dims(&[bt, cin, lin], &[cout, cin / sp.groups, sp.kernel], sp).unwrap();
        assert_eq!(d.l_out, lout, "{sp:?}");
        let mut y = vec![f64::NAN; bt * cout * lout];
        conv1d(View::host(&x, &[bt, cin, lin]).unwrap(), View::host(&w, &[cout, cin / sp.groups, sp.kernel]).unwrap(), Some(View::host(&b, &[cout]).unwrap()), ViewMut::host(&mut y, &[bt, cout, lout]).unwrap(), sp, None, None).unwrap();
        for (i, (a, e)) in y.iter().zip(&want).enumerate() {
            assert!((a - e).abs() <= 1e-12 * (1.0 + e.abs()), "{sp:?}: y[{i}] {a} vs {e}");
        }
    }
}

#[test]
fn same_padding_keeps_the_length() {
    for k in 1..=8 {
        for d in [1usize, 2, 5, 128] {
            let sp = spec(k, 1, d, Padding::Same, 1);
            let l = 15_360;
            if d * (k - 1) >= l {
                continue;
            }
            assert_eq!(conv1d_dims(&[1, 1, l], &[1, 1, k], sp).unwrap().l_out, l, "k={k} d={d}");
        }
    }
    // V3's patch embedding: k 16, stride 16 over 15,360 samples → 960 steps.
    assert_eq!(conv1d_dims(&[8, 512, 15_360], &[512, 512, 16], spec(16, 16, 1, Padding::Both(0), 1)).unwrap().l_out, 960);
}

/// Σ dy·y as a function of (x, w, b): its gradient is the backward's (dx, dw, db).
#[test]
fn backward_matches_finite_differences() {
    let mut r = rng(2);
    for (bt, cin, cout, lin, sp) in cases() {
        let cg = cin / sp.groups;
        let wl = cout * cg * sp.kernel;
        let x = f64v(randn(&mut r, bt * cin * lin, 1.0));
        let w = f64v(randn(&mut r, wl, 1.0));
        let b = f64v(randn(&mut r, cout, 1.0));
        let lout = conv1d_dims(&[bt, cin, lin], &[cout, cg, sp.kernel], sp).unwrap().l_out;
        let dy = f64v(randn(&mut r, bt * cout * lout, 1.0));
        let f = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut y = vec![0.0; bt * cout * lout];
            conv1d(View::host(x, &[bt, cin, lin]).unwrap(), View::host(w, &[cout, cg, sp.kernel]).unwrap(), Some(View::host(b, &[cout]).unwrap()), ViewMut::host(&mut y, &[bt, cout, lout]).unwrap(), sp, None, None).unwrap();
            y.iter().zip(&dy).map(|(a, g)| a * g).sum::<f64>()
        };
        let (mut gx, mut gw, mut gb) = (vec![f64::NAN; x.len()], vec![f64::NAN; wl], vec![f64::NAN; cout]);
        conv1d_backward(View::host(&x, &[bt, cin, lin]).unwrap(), View::host(&w, &[cout, cg, sp.kernel]).unwrap(), View::host(&dy, &[bt, cout, lout]).unwrap(), Some(ViewMut::host(&mut gx, &[bt, cin, lin]).unwrap()), ViewMut::host(&mut gw, &[cout, cg, sp.kernel]).unwrap(), Some(ViewMut::host(&mut gb, &[cout]).unwrap()), sp, None, None).unwrap();
        let h = 1e-6;
        let check = |name: &str, i: usize, got: f64, plus: f64, minus: f64| {
            let fd = (plus - minus) / (2.0 * h);
            assert!((got - fd).abs() <= 1e-6 * (1.0 + fd.abs()), "{sp:?}: d{name}[{i}] {got} vs {fd}");
        };
        for i in (0..x.len()).step_by(3) {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            check("x", i, gx[i], f(&xp, &w, &b), f(&xm, &w, &b));
        }
        for i in 0..wl {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[i] += h;
            wm[i] -= h;
            check("w", i, gw[i], f(&x, &wp, &b), f(&x, &wm, &b));
        }
        for i in 0..cout {
            let (mut bp, mut bm) = (b.clone(), b.clone());
            bp[i] += h;
            bm[i] -= h;
            check("b", i, gb[i], f(&x, &w, &bp), f(&x, &w, &bm));
        }
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let ok = spec(3, 1, 1, Padding::Same, 1);
    let dims = |x: &[usize], w: &[usize], sp: Conv1dSpec| conv1d_dims(x, w, sp);
    assert!(dims(&[2, 4, 10], &[4, 4, 3], ok).is_ok());
    assert!(matches!(dims(&[2, 4, 10], &[4, 4, 3], spec(0, 1, 1, Padding::Both(0), 1)), Err(Error::Value { arg: "kernel", .. })));
    assert!(matches!(dims(&[2, 4, 10], &[4, 4, 3], spec(3, 0, 1, Padding::Both(0), 1)), Err(Error::Value { arg: "stride", .. })));
    assert!(matches!(dims(&[2, 4, 10], &[4, 4, 3], spec(3, 1, 0, Padding::Both(0), 1)), Err(Error::Value { arg: "dilation", .. })));
    assert!(matches!(dims(&[2, 4, 10], &[4, 4, 3], spec(3, 1, 1, Padding::Both(0), 3)), Err(Error::Value { arg: "groups", .. })));
    assert!(matches!(dims(&[2, 4, 10], &[3, 2, 3], spec(3, 1, 1, Padding::Both(0), 2)), Err(Error::Shape { arg: "w", .. })));
    assert!(matches!(dims(&[2, 4, 10], &[4, 4, 3], spec(3, 2, 1, Padding::Same, 1)), Err(Error::Value { arg: "stride", .. })));
    assert!(matches!(dims(&[2, 4, 10], &[4, 4, 3], spec(3, 1, 1, Padding::Both(3), 1)), Err(Error::Value { arg: "padding", .. })));
    assert!(matches!(dims(&[2, 0, 10], &[4, 0, 3], ok), Err(Error::Shape { arg: "x", .. })));
    assert!(matches!(dims(&[2, 4], &[4, 4, 3], ok), Err(Error::Shape { arg: "x", .. })));
    assert!(matches!(dims(&[2, 4, 2], &[4, 4, 3], spec(3, 1, 1, Padding::Both(0), 1)), Err(Error::Shape { arg: "x", .. })));
    // Output shape mismatch.
    let (x, w) = (vec![0.0f64; 80], vec![0.0f64; 48]);
    let mut y = vec![0.0f64; 2 * 4 * 9];
    let e = conv1d(View::host(&x, &[2, 4, 10]).unwrap(), View::host(&w, &[4, 4, 3]).unwrap(), None, ViewMut::host(&mut y, &[2, 4, 9]).unwrap(), ok, None, None);
    assert!(matches!(e, Err(Error::Shape { arg: "y", .. })), "{e:?}");
}

#[test]
fn workspace_is_a_pure_function_of_the_shapes() {
    let sp = spec(7, 1, 8, Padding::Same, 1);
    let d = conv1d_dims(&[8, 256, 15_360], &[512, 256, 7], sp).unwrap();
    // f32 forward: only the packed weights (7·512·256 f32); bf16 adds the f32 accumulator.
    assert_eq!(forward_workspace_bytes(&d, &sp, snug::DType::F32), 4 * 7 * 512 * 256);
    assert_eq!(forward_workspace_bytes(&d, &sp, snug::DType::BF16), 2 * 7 * 512 * 256 + 4 * 8 * 512 * 15_360);
    let p = spec(16, 16, 1, Padding::Both(0), 1);
    let dp = conv1d_dims(&[8, 512, 15_360], &[512, 512, 16], p).unwrap();
    // the strided tap's gathered copy [B, C_in, L_out]
    assert_eq!(forward_workspace_bytes(&dp, &p, snug::DType::F32), 4 * 16 * 512 * 512 + 4 * 8 * 512 * 960);
    assert!(backward_workspace_bytes(&d, &sp, snug::DType::F32, true) > backward_workspace_bytes(&d, &sp, snug::DType::F32, false));
}

// ---------------------------------------------------------------------------------------------
// GPU

/// `tol`: f32 accumulation error per unit of √terms; `out_rel`: the rounding of y and dx to T
/// (0 for f32, 2⁻⁸ for bf16); dw and db are f32.
fn gpu_case<T: snug::Element + Real>(dev: &snug::Device, (bt, cin, cout, lin): (usize, usize, usize, usize), sp: Conv1dSpec, tol: f64, out_rel: f64, seed: u64) {
    let cg = cin / sp.groups;
    let d = conv1d_dims(&[bt, cin, lin], &[cout, cg, sp.kernel], sp).unwrap();
    let lout = d.l_out;
    let mut r = rng(seed);
    let cv = |v: Vec<f32>| v.into_iter().map(|t| T::round_f64(t as f64)).collect::<Vec<T>>();
    let w64 = |v: &[T]| v.iter().map(|t| t.to_f64().unwrap()).collect::<Vec<f64>>();
    let (x, w, b, dy) = (cv(randn(&mut r, bt * cin * lin, 1.0)), cv(randn(&mut r, cout * cg * sp.kernel, 0.3)), cv(randn(&mut r, cout, 1.0)), cv(randn(&mut r, bt * cout * lout, 1.0)));
    let (x6, w6, b6, g6) = (w64(&x), w64(&w), w64(&b), w64(&dy));
    let mut wy = vec![0.0; bt * cout * lout];
    conv1d(View::host(&x6, &[bt, cin, lin]).unwrap(), View::host(&w6, &[cout, cg, sp.kernel]).unwrap(), Some(View::host(&b6, &[cout]).unwrap()), ViewMut::host(&mut wy, &[bt, cout, lout]).unwrap(), sp, None, None).unwrap();
    let (mut wdx, mut wdw, mut wdb) = (vec![0.0; bt * cin * lin], vec![0.0; cout * cg * sp.kernel], vec![0.0; cout]);
    conv1d_backward(View::host(&x6, &[bt, cin, lin]).unwrap(), View::host(&w6, &[cout, cg, sp.kernel]).unwrap(), View::host(&g6, &[bt, cout, lout]).unwrap(), Some(ViewMut::host(&mut wdx, &[bt, cin, lin]).unwrap()), ViewMut::host(&mut wdw, &[cout, cg, sp.kernel]).unwrap(), Some(ViewMut::host(&mut wdb, &[cout]).unwrap()), sp, None, None).unwrap();
    let mut plan = Plan::new();
    let bx = plan.add::<T>("x", &[bt, cin, lin], Role::Activation).unwrap();
    let bw = plan.add::<T>("w", &[cout, cg, sp.kernel], Role::Param).unwrap();
    let bb = plan.add::<T>("b", &[cout], Role::Param).unwrap();
    let by = plan.add::<T>("y", &[bt, cout, lout], Role::Activation).unwrap();
    let bdy = plan.add::<T>("dy", &[bt, cout, lout], Role::Grad).unwrap();
    let bdx = plan.add::<T>("dx", &[bt, cin, lin], Role::Grad).unwrap();
    let bdw = plan.add::<f32>("dw", &[cout, cg, sp.kernel], Role::Grad).unwrap();
    let bdb = plan.add::<f32>("db", &[cout], Role::Grad).unwrap();
    let wsf = plan.add::<f32>("ws_fwd", &[forward_workspace_bytes(&d, &sp, T::DTYPE) / 4], Role::Workspace).unwrap();
    let wsb = plan.add::<f32>("ws_bwd", &[backward_workspace_bytes(&d, &sp, T::DTYPE, true) / 4], Role::Workspace).unwrap();
    let cws = plan.add::<u8>("cublas", &[CUBLAS_WORKSPACE_BYTES], Role::Workspace).unwrap();
    let mut arena = Arena::new(dev, &plan).unwrap();
    for (buf, v) in [(bx, &x), (bw, &w), (bb, &b), (bdy, &dy)] {
        arena.upload(buf, v).unwrap();
    }
    let what = format!("{} {sp:?} B={bt} Cin={cin} Cout={cout} L={lin}", T::DTYPE);
    let mut runs = Vec::new();
    for _ in 0..2 {
        poison(&mut arena, by).unwrap();
        poison(&mut arena, bdx).unwrap();
        poison(&mut arena, bdw).unwrap();
        poison(&mut arena, bdb).unwrap();
        poison(&mut arena, wsf).unwrap();
        poison(&mut arena, wsb).unwrap();
        {
            let v = arena.borrow();
            conv1d(v.read(bx).unwrap(), v.read(bw).unwrap(), Some(v.read(bb).unwrap()), v.write(by).unwrap(), sp, Some(v.write(wsf).unwrap()), Some(v.write(cws).unwrap())).unwrap();
        }
        {
            let v = arena.borrow();
            conv1d_backward(v.read(bx).unwrap(), v.read(bw).unwrap(), v.read(bdy).unwrap(), Some(v.write(bdx).unwrap()), v.write(bdw).unwrap(), Some(v.write(bdb).unwrap()), sp, Some(v.write(wsb).unwrap()), Some(v.write(cws).unwrap())).unwrap();
        }
        let mut bits = Vec::new();
        let k_taps = (cg * sp.kernel) as f64;
        for (name, got, want, terms, rel) in [
            ("y", w64(&arena.download(by).unwrap()), &wy, k_taps, out_rel),
            ("dx", w64(&arena.download(bdx).unwrap()), &wdx, ((cout / sp.groups) * sp.kernel) as f64, out_rel),
            ("dw", f64v(arena.download(bdw).unwrap()), &wdw, (bt * lout) as f64, 0.0),
            ("db", f64v(arena.download(bdb).unwrap()), &wdb, (bt * lout) as f64, 0.0),
        ] {
            // f32 accumulation over `terms` products of size ~1, plus the output's own rounding.
            let t = tol * terms.sqrt().max(1.0);
            for (i, (a, e)) in got.iter().zip(want.iter()).enumerate() {
                assert!((a - e).abs() <= t * (1.0 + e.abs()) + rel * e.abs(), "{what}: {name}[{i}] {a} vs {e}");
            }
            bits.extend(got.iter().map(|v| v.to_bits()));
        }
        runs.push(bits);
    }
    assert!(runs[0] == runs[1], "{what}: two runs differ");
}

#[test]
fn gpu_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_matches_twin") else { return };
    for (i, (bt, cin, cout, lin, sp)) in cases().into_iter().enumerate() {
        gpu_case::<f32>(&dev, (bt, cin, cout, lin), sp, 4e-6, 0.0, 10 + i as u64);
        gpu_case::<half::bf16>(&dev, (bt, cin, cout, lin), sp, 4e-6, 1.0 / 256.0, 20 + i as u64);
    }
    // V3 TCN-like (scaled in channels and length): k 7 same with dilation 64 and 128, the patch
    // embedding k 16 stride 16, a 1×1.
    gpu_case::<f32>(&dev, (2, 19, 64, 1537), spec(7, 1, 128, Padding::Same, 1), 4e-6, 0.0, 40);
    gpu_case::<f32>(&dev, (2, 64, 128, 1537), spec(7, 1, 64, Padding::Same, 1), 4e-6, 0.0, 41);
    gpu_case::<half::bf16>(&dev, (2, 128, 128, 1536), spec(16, 16, 1, Padding::Both(0), 1), 4e-6, 1.0 / 256.0, 42);
    gpu_case::<f32>(&dev, (2, 128, 96, 333), spec(1, 1, 1, Padding::Both(0), 1), 4e-6, 0.0, 43);
}

/// The GPU's orchestration (tap windows, order, β, strided gather/scatter, workspace carving,
/// per-tap dW) run on the host with the glue kernels' Rust ports equals the direct twin.
#[test]
fn tap_path_on_the_host_matches_the_twin() {
    use snug::ops::conv1d::{conv1d_backward_tap_path_host, conv1d_tap_path_host};
    let mut r = rng(3);
    let mut all = cases();
    all.push((2, 3, 2, 11, spec(7, 1, 4, Padding::Same, 1))); // dilation span > L: taps with empty windows
    all.push((1, 4, 4, 9, spec(2, 1, 1, Padding::Both(1), 2)));
    for (bt, cin, cout, lin, sp) in all {
        let cg = cin / sp.groups;
        let d = conv1d_dims(&[bt, cin, lin], &[cout, cg, sp.kernel], sp).unwrap();
        let lout = d.l_out;
        let x = randn(&mut r, bt * cin * lin, 1.0);
        let w = randn(&mut r, cout * cg * sp.kernel, 1.0);
        let b = randn(&mut r, cout, 1.0);
        let dy = randn(&mut r, bt * cout * lout, 1.0);
        let (x6, w6, b6, g6) = (f64v(x.clone()), f64v(w.clone()), f64v(b.clone()), f64v(dy.clone()));
        let mut want = vec![0.0f64; bt * cout * lout];
        conv1d(View::host(&x6, &[bt, cin, lin]).unwrap(), View::host(&w6, &[cout, cg, sp.kernel]).unwrap(), Some(View::host(&b6, &[cout]).unwrap()), ViewMut::host(&mut want, &[bt, cout, lout]).unwrap(), sp, None, None).unwrap();
        let mut ws = vec![f32::NAN; forward_workspace_bytes(&d, &sp, snug::DType::F32) / 4];
        let mut y = vec![f32::NAN; bt * cout * lout];
        conv1d_tap_path_host(View::host(&x, &[bt, cin, lin]).unwrap(), View::host(&w, &[cout, cg, sp.kernel]).unwrap(), Some(View::host(&b, &[cout]).unwrap()), ViewMut::host(&mut y, &[bt, cout, lout]).unwrap(), sp, { let n = ws.len(); ViewMut::host(&mut ws, &[n]).unwrap() }).unwrap();
        for (i, (a, e)) in y.iter().zip(&want).enumerate() {
            assert!((*a as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()), "{sp:?}: tap-path y[{i}] {a} vs {e}");
        }
        let (mut wdx, mut wdw, mut wdb) = (vec![0.0; bt * cin * lin], vec![0.0; cout * cg * sp.kernel], vec![0.0; cout]);
        conv1d_backward(View::host(&x6, &[bt, cin, lin]).unwrap(), View::host(&w6, &[cout, cg, sp.kernel]).unwrap(), View::host(&g6, &[bt, cout, lout]).unwrap(), Some(ViewMut::host(&mut wdx, &[bt, cin, lin]).unwrap()), ViewMut::host(&mut wdw, &[cout, cg, sp.kernel]).unwrap(), Some(ViewMut::host(&mut wdb, &[cout]).unwrap()), sp, None, None).unwrap();
        for with_dx in [true, false] {
            let mut ws = vec![f32::NAN; backward_workspace_bytes(&d, &sp, snug::DType::F32, with_dx) / 4];
            let (mut gx, mut gw, mut gb) = (vec![f32::NAN; bt * cin * lin], vec![f32::NAN; cout * cg * sp.kernel], vec![f32::NAN; cout]);
            conv1d_backward_tap_path_host(View::host(&x, &[bt, cin, lin]).unwrap(), View::host(&w, &[cout, cg, sp.kernel]).unwrap(), View::host(&dy, &[bt, cout, lout]).unwrap(), with_dx.then(|| ViewMut::host(&mut gx, &[bt, cin, lin]).unwrap()), ViewMut::host(&mut gw, &[cout, cg, sp.kernel]).unwrap(), Some(ViewMut::host(&mut gb, &[cout]).unwrap()), sp, { let n = ws.len(); ViewMut::host(&mut ws, &[n]).unwrap() }).unwrap();
            let mut parts = vec![("dw", &gw, &wdw), ("db", &gb, &wdb)];
            if with_dx {
                parts.push(("dx", &gx, &wdx));
            }
            for (name, got, want) in parts {
                for (i, (a, e)) in got.iter().zip(want.iter()).enumerate() {
                    assert!((*a as f64 - e).abs() <= 1e-4 * (1.0 + e.abs()), "{sp:?} with_dx={with_dx}: tap-path {name}[{i}] {a} vs {e}");
                }
            }
        }
        // bf16 storage: y rounded once from the f32 accumulator.
        let xb: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let wb: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let bb: Vec<half::bf16> = b.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let (xb6, wb6, bb6) = (xb.iter().map(|v| v.to_f64()).collect::<Vec<_>>(), wb.iter().map(|v| v.to_f64()).collect::<Vec<_>>(), bb.iter().map(|v| v.to_f64()).collect::<Vec<_>>());
        let mut want_b = vec![0.0f64; bt * cout * lout];
        conv1d(View::host(&xb6, &[bt, cin, lin]).unwrap(), View::host(&wb6, &[cout, cg, sp.kernel]).unwrap(), Some(View::host(&bb6, &[cout]).unwrap()), ViewMut::host(&mut want_b, &[bt, cout, lout]).unwrap(), sp, None, None).unwrap();
        let mut ws = vec![f32::NAN; forward_workspace_bytes(&d, &sp, snug::DType::BF16) / 4];
        let mut yb = vec![half::bf16::NAN; bt * cout * lout];
        conv1d_tap_path_host(View::host(&xb, &[bt, cin, lin]).unwrap(), View::host(&wb, &[cout, cg, sp.kernel]).unwrap(), Some(View::host(&bb, &[cout]).unwrap()), ViewMut::host(&mut yb, &[bt, cout, lout]).unwrap(), sp, { let n = ws.len(); ViewMut::host(&mut ws, &[n]).unwrap() }).unwrap();
        for (i, (a, e)) in yb.iter().zip(&want_b).enumerate() {
            assert!((a.to_f64() - e).abs() <= 1e-5 * (1.0 + e.abs()) + e.abs() / 256.0, "{sp:?}: bf16 tap-path y[{i}] {a} vs {e}");
        }
    }
}
