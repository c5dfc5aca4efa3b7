//! LayerNorm over the last dimension and over channels: the f64 twin against a hand computation
//! and the normalisation identities, gradients vs finite differences, the backward workspace's
//! size, the GPU kernels vs the twin (f32 and bf16, several parameter-gradient chunks, both
//! mappings, C split into slices evenly and not, in one and in several register segments),
//! determinism and independence of a row's results from the other rows; bad input.

use snug::ops::layer_norm::{backward_workspace_bytes, layer_norm, layer_norm_backward, ln_dims, Axis};
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

fn f64v(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(|x| x as f64).collect()
}

type Out = (Vec<f64>, Vec<f64>, Vec<f64>);

fn fwd(x: &[f64], shape: &[usize], g: Option<&[f64]>, b: Option<&[f64]>, axis: Axis, eps: f32) -> Out {
    let d = ln_dims(shape, axis).unwrap();
    let (mut y, mut m, mut r) = (vec![f64::NAN; x.len()], vec![f64::NAN; d.rows()], vec![f64::NAN; d.rows()]);
    layer_norm(
        View::host(x, shape).unwrap(),
        g.map(|g| View::host(g, &[d.c]).unwrap()),
        b.map(|b| View::host(b, &[d.c]).unwrap()),
        ViewMut::host(&mut y, shape).unwrap(),
        ViewMut::host(&mut m, &[d.rows()]).unwrap(),
        ViewMut::host(&mut r, &[d.rows()]).unwrap(),
        axis,
        eps,
    )
    .unwrap();
    (y, m, r)
}

#[test]
fn twin_matches_a_hand_computation() {
    // Row [1, 2, 3, 6]: mean 3, biased var (4 + 1 + 0 + 9)/4 = 3.5.
    let (y, m, r) = fwd(&[1.0, 2.0, 3.0, 6.0], &[1, 4], Some(&[2.0, 2.0, 2.0, 2.0]), Some(&[1.0, 0.0, 0.0, 0.0]), Axis::Last, 1e-5);
    let s = 1.0 / (3.5f64 + 1e-5f32 as f64).sqrt();
    assert_eq!(m, vec![3.0]);
    assert!((r[0] - s).abs() < 1e-15);
    let want = [1.0 - 4.0 * s, -2.0 * s, 0.0, 6.0 * s];
    for (a, b) in y.iter().zip(&want) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

#[test]
#[allow(clippy::needless_range_loop)]
fn channels_axis_normalises_each_pixel_over_channels() {
    let (b, c, h, w) = (2usize, 5usize, 3usize, 4usize);
    let mut rg = rng(1);
    let x = f64v(randn(&mut rg, b * c * h * w, 2.0));
    let (y, _, _) = fwd(&x, &[b, c, h, w], None, None, Axis::Channels, 1e-6);
    // Same as Axis::Last on the channels-last permutation.
    let perm: Vec<f64> = (0..b * h * w * c).map(|k| {
        let (bi, p, ci) = (k / (h * w * c), (k / c) % (h * w), k % c);
        x[(bi * c + ci) * h * w + p]
    }).collect();
    let (yl, _, _) = fwd(&perm, &[b, h, w, c], None, None, Axis::Last, 1e-6);
    for k in 0..perm.len() {
        let (bi, p, ci) = (k / (h * w * c), (k / c) % (h * w), k % c);
        assert!((yl[k] - y[(bi * c + ci) * h * w + p]).abs() < 1e-12);
    }
    // Each pixel's channel vector has mean 0 and biased variance ~1.
    for bi in 0..b {
        for p in 0..h * w {
            let v: Vec<f64> = (0..c).map(|ci| y[(bi * c + ci) * h * w + p]).collect();
            let m = v.iter().sum::<f64>() / c as f64;
            let var = v.iter().map(|t| (t - m).powi(2)).sum::<f64>() / c as f64;
            assert!(m.abs() < 1e-12 && (var - 1.0).abs() < 1e-4, "pixel {bi},{p}: mean {m}, var {var}");
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    for (shape, axis, affine) in [(vec![3usize, 5usize], Axis::Last, true), (vec![2, 4, 3], Axis::Channels, true), (vec![2, 3, 2, 2], Axis::Channels, false)] {
        let d = ln_dims(&shape, axis).unwrap();
        let n: usize = shape.iter().product();
        let mut rg = rng(2);
        let x = f64v(randn(&mut rg, n, 1.0));
        let g = f64v(randn(&mut rg, d.c, 1.0));
        let b = f64v(randn(&mut rg, d.c, 1.0));
        let dy = f64v(randn(&mut rg, n, 1.0));
        let (ga, ba) = (affine.then_some(&g[..]), affine.then_some(&b[..]));
        let loss = |x: &[f64], g: &[f64], b: &[f64]| fwd(x, &shape, affine.then_some(g), affine.then_some(b), axis, 1e-5).0.iter().zip(&dy).map(|(a, c)| a * c).sum::<f64>();
        let (_, m, r) = fwd(&x, &shape, ga, ba, axis, 1e-5);
        let (mut dx, mut dg, mut db) = (vec![f64::NAN; n], vec![f64::NAN; d.c], vec![f64::NAN; d.c]);
        layer_norm_backward(
            View::host(&x, &shape).unwrap(),
            ga.map(|g| View::host(g, &[d.c]).unwrap()),
            View::host(&dy, &shape).unwrap(),
            View::host(&m, &[d.rows()]).unwrap(),
            View::host(&r, &[d.rows()]).unwrap(),
            ViewMut::host(&mut dx, &shape).unwrap(),
            affine.then(|| ViewMut::host(&mut dg, &[d.c]).unwrap()),
            affine.then(|| ViewMut::host(&mut db, &[d.c]).unwrap()),
            None,
            axis,
        )
        .unwrap();
        let h = 1e-6;
        let fd = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
        for i in 0..n {
            let want = fd(&|e| {
                let mut xp = x.clone();
                xp[i] += e;
                loss(&xp, &g, &b)
            });
            assert!((dx[i] - want).abs() <= 1e-6 * (1.0 + want.abs()), "{shape:?} {axis:?} dx[{i}]: {} vs {want}", dx[i]);
        }
        if affine {
            for c in 0..d.c {
                let wg = fd(&|e| {
                    let mut gp = g.clone();
                    gp[c] += e;
                    loss(&x, &gp, &b)
                });
                let wb = fd(&|e| {
                    let mut bp = b.clone();
                    bp[c] += e;
                    loss(&x, &g, &bp)
                });
                assert!((dg[c] - wg).abs() <= 1e-6 * (1.0 + wg.abs()), "dgamma[{c}]");
                assert!((db[c] - wb).abs() <= 1e-6 * (1.0 + wb.abs()), "dbeta[{c}]");
            }
        }
    }
}

#[test]
fn backward_workspace_is_a_function_of_the_shape() {
    // chunks·2·C·4 bytes: chunks of 512 rows over the last dimension, of 4,096 over channels, at
    // most 65,535 chunks (longer chunks beyond).
    let ws = |shape: &[usize], axis| backward_workspace_bytes(ln_dims(shape, axis).unwrap());
    assert_eq!(ws(&[8, 19, 960, 64], Axis::Last), 4 * 285 * 2 * 64);
    assert_eq!(ws(&[4, 256, 256, 256], Axis::Channels), 4 * 64 * 2 * 256);
    assert_eq!(ws(&[8, 512, 960], Axis::Channels), 4 * 2 * 2 * 512);
    assert_eq!(ws(&[3, 5], Axis::Last), 4 * 2 * 5);
    assert_eq!(ws(&[7, 40, 1], Axis::Channels), 4 * 2 * 40); // I = 1: the last-dimension mapping
    assert_eq!(ws(&[1 << 26, 2], Axis::Last), 4 * 65_535 * 2 * 2);
    assert_eq!(ws(&[1, 1, 1 << 29], Axis::Channels), 4 * 65_535 * 2);
}

#[test]
fn bad_input_is_a_typed_error() {
    let x = vec![0.0f64; 12];
    let mut y = vec![0.0f64; 12];
    let (mut m, mut r) = (vec![0.0f64; 3], vec![0.0f64; 3]);
    let g = vec![1.0f64; 5];
    let e = layer_norm(View::host(&x, &[3, 4]).unwrap(), Some(View::host(&g, &[5]).unwrap()), None, ViewMut::host(&mut y, &[3, 4]).unwrap(), ViewMut::host(&mut m, &[3]).unwrap(), ViewMut::host(&mut r, &[3]).unwrap(), Axis::Last, 1e-5);
    assert!(matches!(e, Err(Error::Shape { arg: "gamma", .. })), "{e:?}");
    let e = layer_norm::<f64, f64>(View::host(&x, &[3, 4]).unwrap(), None, None, ViewMut::host(&mut y, &[3, 4]).unwrap(), ViewMut::host(&mut m, &[3]).unwrap(), ViewMut::host(&mut r, &[3]).unwrap(), Axis::Last, 0.0);
    assert!(matches!(e, Err(Error::Value { arg: "eps", .. })), "{e:?}");
    let e = layer_norm::<f64, f64>(View::host(&x, &[12]).unwrap(), None, None, ViewMut::host(&mut y, &[12]).unwrap(), ViewMut::host(&mut m[..1], &[1]).unwrap(), ViewMut::host(&mut r[..1], &[1]).unwrap(), Axis::Channels, 1e-5);
    assert!(matches!(e, Err(Error::Shape { arg: "x", .. })), "{e:?}");
    let e = layer_norm::<f64, f64>(View::host(&x[..0], &[3, 0]).unwrap(), None, None, ViewMut::host(&mut y[..0], &[3, 0]).unwrap(), ViewMut::host(&mut m, &[3]).unwrap(), ViewMut::host(&mut r, &[3]).unwrap(), Axis::Last, 1e-5);
    assert!(matches!(e, Err(Error::Shape { arg: "x", .. })), "{e:?}");
    let e = layer_norm::<f64, f64>(View::host(&x, &[3, 4]).unwrap(), None, None, ViewMut::host(&mut y, &[3, 4]).unwrap(), ViewMut::host(&mut m[..2], &[2]).unwrap(), ViewMut::host(&mut r, &[3]).unwrap(), Axis::Last, 1e-5);
    assert!(matches!(e, Err(Error::Shape { arg: "mean", .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

fn gpu_case<T: snug::Element + snug::ops::Real>(dev: &snug::Device, shape: &[usize], axis: Axis, tol: f64) {
    let d = ln_dims(shape, axis).unwrap();
    let n: usize = shape.iter().product();
    let mut rg = rng(5);
    let cv = |v: Vec<f32>| v.into_iter().map(|x| T::from_f32(x).unwrap()).collect::<Vec<T>>();
    let w64 = |v: &[T]| v.iter().map(|x| x.to_f64().unwrap()).collect::<Vec<f64>>();
    let (x, dy) = (cv(randn(&mut rg, n, 3.0)), cv(randn(&mut rg, n, 1.0)));
    let (g, b) = (randn(&mut rg, d.c, 1.0), randn(&mut rg, d.c, 1.0));
    let (g64, b64) = (f64v(g.clone()), f64v(b.clone()));
    let (wy, wm, wr) = fwd(&w64(&x), shape, Some(&g64), Some(&b64), axis, 1e-5);
    let (mut wdx, mut wdg, mut wdb) = (vec![0.0; n], vec![0.0; d.c], vec![0.0; d.c]);
    layer_norm_backward(
        View::host(&w64(&x), shape).unwrap(),
        Some(View::host(&g64, &[d.c]).unwrap()),
        View::host(&w64(&dy), shape).unwrap(),
        View::host(&wm, &[d.rows()]).unwrap(),
        View::host(&wr, &[d.rows()]).unwrap(),
        ViewMut::host(&mut wdx, shape).unwrap(),
        Some(ViewMut::host(&mut wdg, &[d.c]).unwrap()),
        Some(ViewMut::host(&mut wdb, &[d.c]).unwrap()),
        None,
        axis,
    )
    .unwrap();
    let mut plan = Plan::new();
    let t: Vec<_> = ["x", "y", "dy", "dx"].iter().map(|nm| plan.add::<T>(*nm, shape, Role::Activation).unwrap()).collect();
    let p: Vec<_> = ["g", "b", "dg", "db"].iter().map(|nm| plan.add::<f32>(*nm, &[d.c], Role::Param).unwrap()).collect();
    let st: Vec<_> = ["mean", "rstd"].iter().map(|nm| plan.add::<f32>(*nm, &[d.rows()], Role::Saved).unwrap()).collect();
    let ws = plan.add::<f32>("ws", &[backward_workspace_bytes(d) / 4], Role::Workspace).unwrap();
    let mut arena = Arena::new(dev, &plan).unwrap();
    arena.upload(t[0], &x).unwrap();
    arena.upload(t[2], &dy).unwrap();
    arena.upload(p[0], &g).unwrap();
    arena.upload(p[1], &b).unwrap();
    let what = format!("{} {shape:?} {axis:?}", T::DTYPE);
    let mut runs = Vec::new();
    for _ in 0..2 {
        for &bf in &[t[1], t[3]] {
            poison(&mut arena, bf).unwrap();
        }
        for &bf in st.iter().chain(&p[2..]).chain([&ws]) {
            poison(&mut arena, bf).unwrap();
        }
        {
            let v = arena.borrow();
            layer_norm(v.read(t[0]).unwrap(), Some(v.read(p[0]).unwrap()), Some(v.read(p[1]).unwrap()), v.write(t[1]).unwrap(), v.write(st[0]).unwrap(), v.write(st[1]).unwrap(), axis, 1e-5).unwrap();
        }
        {
            let v = arena.borrow();
            layer_norm_backward(v.read(t[0]).unwrap(), Some(v.read(p[0]).unwrap()), v.read(t[2]).unwrap(), v.read(st[0]).unwrap(), v.read(st[1]).unwrap(), v.write(t[3]).unwrap(), Some(v.write(p[2]).unwrap()), Some(v.write(p[3]).unwrap()), Some(v.write(ws).unwrap()), axis).unwrap();
        }
        let mut bits = Vec::new();
        for (name, got, want) in [
            ("y", w64(&arena.download(t[1]).unwrap()), &wy),
            ("dx", w64(&arena.download(t[3]).unwrap()), &wdx),
            ("mean", f64v(arena.download(st[0]).unwrap()), &wm),
            ("rstd", f64v(arena.download(st[1]).unwrap()), &wr),
            ("dgamma", f64v(arena.download(p[2]).unwrap()), &wdg),
            ("dbeta", f64v(arena.download(p[3]).unwrap()), &wdb),
        ] {
            let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
            // Statistics and parameter sums are f32 in every storage mode.
            let t = if matches!(name, "mean" | "rstd" | "dgamma" | "dbeta") { 1e-4 } else { tol };
            for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
                assert!((a - b).abs() <= t * scale, "{what}: {name}[{i}] {a} vs {b} (scale {scale:e})");
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
    // Last axis (lanes of a warp per row): V3's d_model 64 rows (285 parameter chunks), a C of
    // 1000 (four register segments per lane), 1,100 rows of C 40 (3 chunks, a partial 32-channel
    // tile), C 3. Channels (lanes over pixels, warps over C-slices): the BEV map's C 256 (16 slices
    // of 16), C 512 over few pixels ([8, 512, 960] scaled down: 16 slices of 32, several segments),
    // C 35 (slices of 12, 12, 11), a [B, C, L] with C 16 and 2 chunks.
    for (shape, axis) in [
        (vec![8usize, 19, 960, 64], Axis::Last),
        (vec![7, 1000], Axis::Last),
        (vec![1100, 40], Axis::Last),
        (vec![5, 3], Axis::Last),
        (vec![2, 256, 33, 31], Axis::Channels),
        (vec![3, 512, 96], Axis::Channels),
        (vec![3, 35, 50], Axis::Channels),
        (vec![2, 16, 3000], Axis::Channels),
    ] {
        gpu_case::<f32>(&dev, &shape, axis, 1e-5);
        gpu_case::<half::bf16>(&dev, &shape, axis, 1e-2);
    }
}

/// y, mean, rstd and dx of `x` (f32 on the GPU), as bits.
fn gpu_bits(dev: &snug::Device, shape: &[usize], axis: Axis, x: &[f32], dy: &[f32], g: &[f32], b: &[f32]) -> [Vec<u32>; 4] {
    let d = ln_dims(shape, axis).unwrap();
    let mut plan = Plan::new();
    let t: Vec<_> = ["x", "y", "dy", "dx"].iter().map(|nm| plan.add::<f32>(*nm, shape, Role::Activation).unwrap()).collect();
    let p: Vec<_> = ["g", "b"].iter().map(|nm| plan.add::<f32>(*nm, &[d.c], Role::Param).unwrap()).collect();
    let st: Vec<_> = ["mean", "rstd"].iter().map(|nm| plan.add::<f32>(*nm, &[d.rows()], Role::Saved).unwrap()).collect();
    let mut arena = Arena::new(dev, &plan).unwrap();
    arena.upload(t[0], x).unwrap();
    arena.upload(t[2], dy).unwrap();
    arena.upload(p[0], g).unwrap();
    arena.upload(p[1], b).unwrap();
    {
        let v = arena.borrow();
        layer_norm(v.read(t[0]).unwrap(), Some(v.read(p[0]).unwrap()), Some(v.read(p[1]).unwrap()), v.write(t[1]).unwrap(), v.write(st[0]).unwrap(), v.write(st[1]).unwrap(), axis, 1e-5).unwrap();
    }
    {
        let v = arena.borrow();
        layer_norm_backward(v.read(t[0]).unwrap(), Some(v.read(p[0]).unwrap()), v.read(t[2]).unwrap(), v.read(st[0]).unwrap(), v.read(st[1]).unwrap(), v.write(t[3]).unwrap(), None, None, None, axis).unwrap();
    }
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
    [bits(arena.download(t[1]).unwrap()), bits(arena.download(st[0]).unwrap()), bits(arena.download(st[1]).unwrap()), bits(arena.download(t[3]).unwrap())]
}

#[test]
fn gpu_rows_do_not_depend_on_the_other_rows() {
    let Some(dev) = gpu_or_skip("gpu_rows_do_not_depend_on_the_other_rows") else { return };
    // The kernels split C the same way for every shape with that C: the first `sub` rows of a
    // tensor give the same bits alone as inside it (other batch size, length, grid).
    for (shape, sub, axis) in [(vec![4usize, 512, 960], vec![1usize, 512, 33], Axis::Channels), (vec![2, 300, 45], vec![2, 300, 7], Axis::Channels), (vec![600, 64], vec![9, 64], Axis::Last)] {
        let (d, ds) = (ln_dims(&shape, axis).unwrap(), ln_dims(&sub, axis).unwrap());
        let mut rg = rng(7);
        let (x, dy) = (randn(&mut rg, d.o * d.c * d.i, 2.0), randn(&mut rg, d.o * d.c * d.i, 1.0));
        let (g, b) = (randn(&mut rg, d.c, 1.0), randn(&mut rg, d.c, 1.0));
        let at = |o: usize, c: usize, i: usize| (o * d.c + c) * d.i + i;
        let pick = |v: &[f32]| (0..ds.o).flat_map(|o| (0..d.c).flat_map(move |c| (0..ds.i).map(move |i| (o, c, i)))).map(|(o, c, i)| v[at(o, c, i)]).collect::<Vec<f32>>();
        let full = gpu_bits(&dev, &shape, axis, &x, &dy, &g, &b);
        let part = gpu_bits(&dev, &sub, axis, &pick(&x), &pick(&dy), &g, &b);
        let pick_bits = |v: &[u32]| pick(&v.iter().map(|u| f32::from_bits(*u)).collect::<Vec<f32>>()).into_iter().map(f32::to_bits).collect::<Vec<u32>>();
        let pick_rows = |v: &[u32]| (0..ds.o).flat_map(|o| (0..ds.i).map(move |i| o * d.i + i)).map(|r| v[r]).collect::<Vec<u32>>();
        assert!(pick_bits(&full[0]) == part[0], "{shape:?} vs {sub:?}: y differs");
        assert!(pick_rows(&full[1]) == part[1] && pick_rows(&full[2]) == part[2], "{shape:?} vs {sub:?}: mean / rstd differ");
        assert!(pick_bits(&full[3]) == part[3], "{shape:?} vs {sub:?}: dx differs");
    }
}
