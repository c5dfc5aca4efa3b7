//! Selective scan: the f64 CPU twin against closed forms, the flip identity and finite
//! differences (every input, both directions, both output modes); the CUDA forward against the
//! twin at lengths around the chunk size; bad input.

#![allow(clippy::needless_range_loop)]

use snug::ops::selective_scan::{backward_workspace_bytes, selective_scan, selective_scan_backward, BackwardSaved, Combine, Dims, ScanDir, ScanDirGrads, CHUNK};
use snug::testing::{gpu_or_skip, poison, randn, rng, Tol};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

/// Host inputs of one direction.
#[derive(Clone)]
struct Dir {
    u: Vec<f64>,
    delta: Vec<f64>,
    a: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
    d: Vec<f64>,
    bias: Vec<f64>,
    z: Vec<f64>,
}

fn dir(r: &mut rand_chacha::ChaCha8Rng, s: usize, d: usize, l: usize, n: usize) -> Dir {
    let f = |v: Vec<f32>| v.into_iter().map(|x| x as f64).collect::<Vec<_>>();
    Dir {
        u: f(randn(r, s * d * l, 1.0)),
        delta: f(randn(r, s * d * l, 0.5)),
        a: f(randn(r, d * n, 1.0)).iter().map(|x| -x.exp()).collect(), // Mamba: A = -exp(A_log)
        b: f(randn(r, s * n * l, 1.0)),
        c: f(randn(r, s * n * l, 1.0)),
        d: f(randn(r, d, 1.0)),
        bias: f(randn(r, d, 0.5)),
        z: f(randn(r, s * d * l, 1.0)),
    }
}

fn view<'a>(x: &'a Dir, s: usize, dd: usize, l: usize, n: usize, gate: bool) -> ScanDir<'a, f64> {
    ScanDir {
        u: View::host(&x.u, &[s, dd, l]).unwrap(),
        delta: View::host(&x.delta, &[s, dd, l]).unwrap(),
        a: View::host(&x.a, &[dd, n]).unwrap(),
        b: View::host(&x.b, &[s, n, l]).unwrap(),
        c: View::host(&x.c, &[s, n, l]).unwrap(),
        d_skip: Some(View::host(&x.d, &[dd]).unwrap()),
        delta_bias: Some(View::host(&x.bias, &[dd]).unwrap()),
        z: gate.then(|| View::host(&x.z, &[s, dd, l]).unwrap()),
    }
}

fn forward(f: &Dir, b: Option<&Dir>, combine: Combine, dims: (usize, usize, usize, usize)) -> Vec<f64> {
    forward_with_states(f, b, combine, dims).0
}

/// Output and chunk states `[dirs, S, D, ceil(L/32), N]` (as f32) of the twin.
fn forward_with_states(f: &Dir, b: Option<&Dir>, combine: Combine, (s, d, l, n): (usize, usize, usize, usize)) -> (Vec<f64>, Vec<f32>) {
    let width = if combine == Combine::Concat { 2 * d } else { d };
    let dirs = 1 + b.is_some() as usize;
    let mut out = vec![0.0; s * width * l];
    let mut st = vec![0.0f32; dirs * s * d * l.div_ceil(CHUNK) * n];
    let fv = view(f, s, d, l, n, true);
    let bv = b.map(|b| view(b, s, d, l, n, combine == Combine::Concat));
    let sv = ViewMut::host(&mut st, &[dirs, s, d, l.div_ceil(CHUNK), n]).unwrap();
    selective_scan(&fv, bv.as_ref(), combine, ViewMut::host(&mut out, &[s, width, l]).unwrap(), Some(sv)).unwrap();
    (out, st)
}

#[test]
fn chunk_states_are_the_states_at_chunk_ends_in_processing_order() {
    // N = 1, A = 0, no skip: the state is the running sum of dt·B·u (forward) or the suffix sum
    // (reverse); chunk k of the reverse direction ends at time 32·(chunks − 1 − k).
    let (s, d, l, n) = (1usize, 1usize, 70usize, 1usize);
    let mut r = rng(6);
    let mut x = dir(&mut r, s, d, l, n);
    x.a = vec![0.0];
    let dt: Vec<f64> = x.delta.iter().map(|v| (v + x.bias[0]).exp().ln_1p()).collect();
    let inc: Vec<f64> = (0..l).map(|i| dt[i] * x.b[i] * x.u[i]).collect();
    let (_, st) = forward_with_states(&x, Some(&x), Combine::Concat, (s, d, l, n));
    let chunks = l.div_ceil(CHUNK);
    for k in 0..chunks {
        let end = ((k + 1) * CHUNK).min(l);
        let want_f: f64 = inc[..end].iter().sum();
        let start = (chunks - 1 - k) * CHUNK;
        let want_r: f64 = inc[start..].iter().sum();
        assert!((st[k] as f64 - want_f).abs() < 1e-5 * (1.0 + want_f.abs()), "forward chunk {k}");
        assert!((st[chunks + k] as f64 - want_r).abs() < 1e-5 * (1.0 + want_r.abs()), "reverse chunk {k}");
    }
}

#[test]
fn one_state_without_decay_is_a_cumulative_sum() {
    // N = 1, A = 0: h_l = Σ_{k<=l} dt_k B_k u_k; y = C h + D u. Reverse: suffix sums.
    let (s, d, l, n) = (1, 1, 6, 1);
    let mut r = rng(1);
    let mut x = dir(&mut r, s, d, l, n);
    x.a = vec![0.0];
    let dt: Vec<f64> = x.delta.iter().map(|v| (v + x.bias[0]).exp().ln_1p()).collect();
    let inc: Vec<f64> = (0..l).map(|i| dt[i] * x.b[i] * x.u[i]).collect();
    let mut one = x.clone();
    one.z = vec![0.0; l]; // unused below: no gate on the one-directional call
    let mut out = vec![0.0; l];
    let mut v = view(&one, s, d, l, n, false);
    v.z = None;
    selective_scan(&v, None, Combine::Sum, ViewMut::host(&mut out, &[1, 1, l]).unwrap(), None).unwrap();
    let mut h = 0.0;
    for i in 0..l {
        h += inc[i];
        let want = x.c[i] * h + x.d[0] * x.u[i];
        assert!((out[i] - want).abs() < 1e-12, "l={i}: {} vs {want}", out[i]);
    }
    // Reverse direction alone = forward of the time-flipped inputs (concat's second half).
    let mut zero = x.clone();
    zero.u = vec![0.0; l];
    zero.d = vec![0.0];
    let cat = forward(&zero, Some(&x), Combine::Concat, (s, d, l, n));
    let mut h = 0.0;
    for i in (0..l).rev() {
        h += inc[i];
        let want = (x.c[i] * h + x.d[0] * x.u[i]) * (x.z[i] / (1.0 + (-x.z[i]).exp()));
        assert!((cat[l + i] - want).abs() < 1e-12, "reverse l={i}: {} vs {want}", cat[l + i]);
    }
}

#[test]
fn reverse_direction_equals_forward_on_flipped_inputs() {
    let (s, d, l, n) = (2, 3, 9, 4);
    let mut r = rng(2);
    let x = dir(&mut r, s, d, l, n);
    let zero = Dir { u: vec![0.0; s * d * l], d: vec![0.0; d], ..dir(&mut r, s, d, l, n) };
    let flip = |v: &[f64], rows: usize| -> Vec<f64> { (0..rows * l).map(|i| v[(i / l) * l + (l - 1 - i % l)]).collect() };
    let xf = Dir { u: flip(&x.u, s * d), delta: flip(&x.delta, s * d), b: flip(&x.b, s * n), c: flip(&x.c, s * n), z: flip(&x.z, s * d), ..x.clone() };
    let cat = forward(&zero, Some(&x), Combine::Concat, (s, d, l, n));
    let mut one = vec![0.0; s * d * l];
    selective_scan(&view(&xf, s, d, l, n, true), None, Combine::Sum, ViewMut::host(&mut one, &[s, d, l]).unwrap(), None).unwrap();
    for si in 0..s {
        for di in 0..d {
            for li in 0..l {
                let got = cat[(si * 2 * d + d + di) * l + li];
                let want = one[(si * d + di) * l + (l - 1 - li)];
                assert!((got - want).abs() < 1e-12, "s={si} d={di} l={li}: {got} vs {want}");
            }
        }
    }
}

fn field(x: &mut Dir, k: usize) -> &mut Vec<f64> {
    match k {
        0 => &mut x.u,
        1 => &mut x.delta,
        2 => &mut x.a,
        3 => &mut x.b,
        4 => &mut x.c,
        5 => &mut x.d,
        6 => &mut x.bias,
        _ => &mut x.z,
    }
}

fn grads(g: &mut [Vec<f64>; 8], (s, d, l, n): (usize, usize, usize, usize), gated: bool) -> ScanDirGrads<'_, f64> {
    let [du, dde, da, db, dc, dd, dbias, dz] = g;
    ScanDirGrads {
        du: ViewMut::host(du, &[s, d, l]).unwrap(),
        ddelta: ViewMut::host(dde, &[s, d, l]).unwrap(),
        da: ViewMut::host(da, &[d, n]).unwrap(),
        db: ViewMut::host(db, &[s, n, l]).unwrap(),
        dc: ViewMut::host(dc, &[s, n, l]).unwrap(),
        dd_skip: Some(ViewMut::host(dd, &[d]).unwrap()),
        ddelta_bias: Some(ViewMut::host(dbias, &[d]).unwrap()),
        dz: gated.then(|| ViewMut::host(dz, &[s, d, l]).unwrap()),
    }
}

/// Every gradient of both directions vs central finite differences of Σ dout·out.
fn check_backward(combine: Combine, two_dirs: bool) {
    let dims @ (s, d, l, n) = (2usize, 3usize, 5usize, 3usize);
    let mut r = rng(3 + combine as u64 * 2 + two_dirs as u64);
    let f = dir(&mut r, s, d, l, n);
    let b = dir(&mut r, s, d, l, n);
    let width = if combine == Combine::Concat { 2 * d } else { d };
    let dout: Vec<f64> = randn(&mut r, s * width * l, 1.0).into_iter().map(|x| x as f64).collect();
    let loss = |f: &Dir, b: &Dir| forward(f, two_dirs.then_some(b), combine, dims).iter().zip(&dout).map(|(x, g)| x * g).sum::<f64>();

    let z = |k| vec![0.0; k];
    let mut gf = [z(s * d * l), z(s * d * l), z(d * n), z(s * n * l), z(s * n * l), z(d), z(d), z(s * d * l)];
    let mut gb = gf.clone();
    {
        let fv = view(&f, s, d, l, n, true);
        let bv = view(&b, s, d, l, n, combine == Combine::Concat);
        let gfv = grads(&mut gf, (s, d, l, n), true);
        let gbv = two_dirs.then(|| grads(&mut gb, (s, d, l, n), combine == Combine::Concat));
        selective_scan_backward(&fv, two_dirs.then_some(&bv), combine, View::host(&dout, &[s, width, l]).unwrap(), BackwardSaved::None, gfv, gbv).unwrap();
    }
    let h = 1e-6;
    let names = ["u", "delta", "a", "b", "c", "d_skip", "delta_bias", "z"];
    for (which, (x, g)) in [(0, (&f, &gf)), (1, (&b, &gb))] {
        if which == 1 && !two_dirs {
            continue;
        }
        for (k, name) in names.iter().enumerate() {
            if k == 7 && which == 1 && combine == Combine::Sum {
                continue; // the reverse gate is unused in the sum
            }
            let len = field(&mut x.clone(), k).len();
            for i in 0..len {
                let (mut fp, mut bp, mut fm, mut bm) = (f.clone(), b.clone(), f.clone(), b.clone());
                let (p, m) = if which == 0 { (&mut fp, &mut fm) } else { (&mut bp, &mut bm) };
                field(p, k)[i] += h;
                field(m, k)[i] -= h;
                let fd = (loss(&fp, &bp) - loss(&fm, &bm)) / (2.0 * h);
                let an = g[k][i];
                assert!((fd - an).abs() <= 1e-6 * (1.0 + fd.abs()), "{combine:?} dir {which} d{name}[{i}]: analytic {an:e}, finite difference {fd:e}");
            }
        }
    }
}

#[test]
fn backward_matches_finite_differences_sum() {
    check_backward(Combine::Sum, true);
}

#[test]
fn backward_matches_finite_differences_concat() {
    check_backward(Combine::Concat, true);
}

#[test]
fn backward_matches_finite_differences_one_direction() {
    check_backward(Combine::Sum, false);
}

#[test]
fn bad_input_is_a_typed_error() {
    let (s, d, l, n) = (1usize, 2usize, 3usize, 2usize);
    let mut r = rng(5);
    let x = dir(&mut r, s, d, l, n);
    let mut out = vec![0.0; 2 * s * d * l];
    // Concat needs two directions; the summed reverse gate must be absent; out shape; N > 64; L = 0.
    let v = view(&x, s, d, l, n, true);
    let e = selective_scan(&v, None, Combine::Concat, ViewMut::host(&mut out, &[s, 2 * d, l]).unwrap(), None);
    assert!(matches!(e, Err(Error::Value { arg: "combine", .. })), "{e:?}");
    let e = selective_scan(&v, Some(&view(&x, s, d, l, n, true)), Combine::Sum, ViewMut::host(&mut out[..s * d * l], &[s, d, l]).unwrap(), None);
    assert!(matches!(e, Err(Error::Value { arg: "rev.z", .. })), "{e:?}");
    let e = selective_scan(&v, None, Combine::Sum, ViewMut::host(&mut out, &[s, 2 * d, l]).unwrap(), None);
    assert!(matches!(e, Err(Error::Shape { arg: "out", .. })), "{e:?}");
    let a65 = vec![0.0; d * 65];
    let mut big = view(&x, s, d, l, n, true);
    big.a = View::host(&a65, &[d, 65]).unwrap();
    let e = selective_scan(&big, None, Combine::Sum, ViewMut::host(&mut out[..s * d * l], &[s, d, l]).unwrap(), None);
    assert!(matches!(e, Err(Error::Shape { arg: "a", .. })), "{e:?}");
    let mut bad_b = view(&x, s, d, l, n, true);
    bad_b.b = View::host(&x.b[..s * n * (l - 1)], &[s, n, l - 1]).unwrap();
    let e = selective_scan(&bad_b, None, Combine::Sum, ViewMut::host(&mut out[..s * d * l], &[s, d, l]).unwrap(), None);
    assert!(matches!(e, Err(Error::Shape { arg: "b", .. })), "{e:?}");
    let empty: Vec<f64> = vec![];
    let mut zero_l = view(&x, s, d, l, n, false);
    zero_l.u = View::host(&empty, &[s, d, 0]).unwrap();
    let e = selective_scan(&zero_l, None, Combine::Sum, ViewMut::host(&mut out[..0], &[s, d, 0]).unwrap(), None);
    assert!(matches!(e, Err(Error::Shape { arg: "u", .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

#[test]
fn gpu_forward_matches_twin_around_the_chunk_size() {
    let Some(dev) = gpu_or_skip("gpu_forward_matches_twin_around_the_chunk_size") else { return };
    let mut r = rng(40);
    for (s, d, l, n) in [(2usize, 5usize, 1usize, 16usize), (3, 7, 7, 8), (2, 16, 960, 16), (1, 3, 1000, 5), (1, 4, 4097, 64), (5, 33, CHUNK, 1)] {
        for (combine, two) in [(Combine::Sum, true), (Combine::Concat, true), (Combine::Sum, false)] {
            let f = dir(&mut r, s, d, l, n);
            let b = dir(&mut r, s, d, l, n);
            let (want, want_states) = forward_with_states(&f, two.then_some(&b), combine, (s, d, l, n));
            let width = if combine == Combine::Concat { 2 * d } else { d };
            let mut plan = Plan::new();
            let mut bufs = Vec::new();
            for (k, x) in [&f, &b].iter().enumerate() {
                let add = |plan: &mut Plan, name: &str, shape: &[usize]| plan.add::<f32>(format!("{k}.{name}"), shape, Role::Activation).unwrap();
                bufs.push((
                    [add(&mut plan, "u", &[s, d, l]), add(&mut plan, "delta", &[s, d, l]), add(&mut plan, "z", &[s, d, l])],
                    add(&mut plan, "a", &[d, n]),
                    [add(&mut plan, "b", &[s, n, l]), add(&mut plan, "c", &[s, n, l])],
                    [add(&mut plan, "d", &[d]), add(&mut plan, "bias", &[d])],
                    (*x).clone(),
                ));
            }
            let out = plan.add::<f32>("out", &[s, width, l], Role::Activation).unwrap();
            let dirs = 1 + two as usize;
            let states = plan.add::<f32>("states", &[dirs, s, d, l.div_ceil(CHUNK), n], Role::Saved).unwrap();
            let mut arena = Arena::new(&dev, &plan).unwrap();
            let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
            for (sdl, a, snl, dd, x) in &bufs {
                arena.upload(sdl[0], &f32s(&x.u)).unwrap();
                arena.upload(sdl[1], &f32s(&x.delta)).unwrap();
                arena.upload(sdl[2], &f32s(&x.z)).unwrap();
                arena.upload(*a, &f32s(&x.a)).unwrap();
                arena.upload(snl[0], &f32s(&x.b)).unwrap();
                arena.upload(snl[1], &f32s(&x.c)).unwrap();
                arena.upload(dd[0], &f32s(&x.d)).unwrap();
                arena.upload(dd[1], &f32s(&x.bias)).unwrap();
            }
            poison(&mut arena, out).unwrap();
            {
                let bw = arena.borrow();
                let mk = |k: usize, gate: bool| {
                    let (sdl, a, snl, dd, _) = &bufs[k];
                    ScanDir {
                        u: bw.read(sdl[0]).unwrap(),
                        delta: bw.read(sdl[1]).unwrap(),
                        a: bw.read(*a).unwrap(),
                        b: bw.read(snl[0]).unwrap(),
                        c: bw.read(snl[1]).unwrap(),
                        d_skip: Some(bw.read(dd[0]).unwrap()),
                        delta_bias: Some(bw.read(dd[1]).unwrap()),
                        z: gate.then(|| bw.read(sdl[2]).unwrap()),
                    }
                };
                let fv = mk(0, true);
                let bv = two.then(|| mk(1, combine == Combine::Concat));
                selective_scan(&fv, bv.as_ref(), combine, bw.write(out).unwrap(), Some(bw.write(states).unwrap())).unwrap();
            }
            let got = arena.download(out).unwrap();
            let what = format!("S={s} D={d} L={l} N={n} {combine:?} two={two}");
            let tol = Tol::F32_REDUCTION;
            let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!((g as f64 - w).abs() <= tol.rtol * scale, "{what}: out[{i}] {g} vs {w}");
            }
            let got_states = arena.download(states).unwrap();
            let sscale = want_states.iter().fold(1.0f32, |m, x| m.max(x.abs()));
            for (i, (&g, &w)) in got_states.iter().zip(&want_states).enumerate() {
                assert!((g - w).abs() <= 1e-4 * sscale, "{what}: chunk_states[{i}] {g} vs {w}");
            }
        }
    }
}

/// Device buffers of one direction's inputs and gradients.
struct DevDir {
    sdl: [snug::Buf<f32>; 3], // u, delta, z
    a: snug::Buf<f32>,
    snl: [snug::Buf<f32>; 2], // b, c
    dd: [snug::Buf<f32>; 2],  // d_skip, delta_bias
    g_sdl: [snug::Buf<f32>; 3], // du, ddelta, dz
    g_a: snug::Buf<f32>,
    g_snl: [snug::Buf<f32>; 2],
    g_dd: [snug::Buf<f32>; 2],
}

/// One direction's inputs borrowed from a scope (a scope lends a buffer once, so the forward and
/// the backward, in two scopes, each build their own).
fn dev_dir<'a>(bw: &snug::Borrows<'a>, x: &DevDir, gate: bool) -> ScanDir<'a, f32> {
    ScanDir {
        u: bw.read(x.sdl[0]).unwrap(),
        delta: bw.read(x.sdl[1]).unwrap(),
        a: bw.read(x.a).unwrap(),
        b: bw.read(x.snl[0]).unwrap(),
        c: bw.read(x.snl[1]).unwrap(),
        d_skip: Some(bw.read(x.dd[0]).unwrap()),
        delta_bias: Some(bw.read(x.dd[1]).unwrap()),
        z: gate.then(|| bw.read(x.sdl[2]).unwrap()),
    }
}

/// The bf16 test's direction: activations `act` = [u, delta, b, c, z] (bf16), parameters
/// `par` = [a, d, bias] (f32).
fn bf16_dir<'a>(bw: &snug::Borrows<'a>, act: &[snug::Buf<half::bf16>], par: &[snug::Buf<f32>], gate: bool) -> ScanDir<'a, half::bf16, f32> {
    ScanDir {
        u: bw.read(act[0]).unwrap(),
        delta: bw.read(act[1]).unwrap(),
        a: bw.read(par[0]).unwrap(),
        b: bw.read(act[2]).unwrap(),
        c: bw.read(act[3]).unwrap(),
        d_skip: Some(bw.read(par[1]).unwrap()),
        delta_bias: Some(bw.read(par[2]).unwrap()),
        z: gate.then(|| bw.read(act[4]).unwrap()),
    }
}

fn plan_dir(plan: &mut Plan, k: usize, (s, d, l, n): (usize, usize, usize, usize)) -> DevDir {
    let mut add = |name: &str, shape: &[usize]| plan.add::<f32>(format!("{k}.{name}"), shape, Role::Activation).unwrap();
    DevDir {
        sdl: [add("u", &[s, d, l]), add("delta", &[s, d, l]), add("z", &[s, d, l])],
        a: add("a", &[d, n]),
        snl: [add("b", &[s, n, l]), add("c", &[s, n, l])],
        dd: [add("d", &[d]), add("bias", &[d])],
        g_sdl: [add("du", &[s, d, l]), add("dde", &[s, d, l]), add("dz", &[s, d, l])],
        g_a: add("da", &[d, n]),
        g_snl: [add("db", &[s, n, l]), add("dc", &[s, n, l])],
        g_dd: [add("dd", &[d]), add("dbias", &[d])],
    }
}

#[test]
fn gpu_backward_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_backward_matches_twin") else { return };
    let mut r = rng(41);
    for dims @ (s, d, l, n) in [(2usize, 5usize, 7usize, 16usize), (1, 3, 1000, 8), (2, 9, 100, 64), (3, 4, CHUNK + 1, 3)] {
        for (combine, two) in [(Combine::Sum, true), (Combine::Concat, true), (Combine::Sum, false)] {
            let f = dir(&mut r, s, d, l, n);
            let b = dir(&mut r, s, d, l, n);
            let width = if combine == Combine::Concat { 2 * d } else { d };
            let dout: Vec<f64> = randn(&mut r, s * width * l, 1.0).into_iter().map(|x| x as f64).collect();
            let gated_rev = combine == Combine::Concat;
            // The twin in f64 on the f32-rounded inputs.
            let round = |x: &Dir| -> Dir {
                let q = |v: &[f64]| v.iter().map(|&x| x as f32 as f64).collect::<Vec<_>>();
                Dir { u: q(&x.u), delta: q(&x.delta), a: q(&x.a), b: q(&x.b), c: q(&x.c), d: q(&x.d), bias: q(&x.bias), z: q(&x.z) }
            };
            let (f, b) = (round(&f), round(&b));
            let dout: Vec<f64> = dout.iter().map(|&x| x as f32 as f64).collect();
            let z = |k| vec![0.0; k];
            let mut want_f = [z(s * d * l), z(s * d * l), z(d * n), z(s * n * l), z(s * n * l), z(d), z(d), z(s * d * l)];
            let mut want_b = want_f.clone();
            {
                let fv = view(&f, s, d, l, n, true);
                let bv = view(&b, s, d, l, n, gated_rev);
                let gf = grads(&mut want_f, dims, true);
                let gb = two.then(|| grads(&mut want_b, dims, gated_rev));
                selective_scan_backward(&fv, two.then_some(&bv), combine, View::host(&dout, &[s, width, l]).unwrap(), BackwardSaved::None, gf, gb).unwrap();
            }
            let dirs = 1 + two as usize;
            let mut plan = Plan::new();
            let dd = [plan_dir(&mut plan, 0, dims), plan_dir(&mut plan, 1, dims)];
            let out = plan.add::<f32>("out", &[s, width, l], Role::Activation).unwrap();
            let bdout = plan.add::<f32>("dout", &[s, width, l], Role::Grad).unwrap();
            let states = plan.add::<f32>("states", &[dirs, s, d, l.div_ceil(CHUNK), n], Role::Saved).unwrap();
            let ws = plan.add::<f32>("ws", &[backward_workspace_bytes(Dims { s, d, l, n }, dirs, snug::DType::F32) / 4], Role::Workspace).unwrap();
            let mut arena = Arena::new(&dev, &plan).unwrap();
            let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
            for (x, h) in dd.iter().zip([&f, &b]) {
                for (buf, v) in [(x.sdl[0], &h.u), (x.sdl[1], &h.delta), (x.sdl[2], &h.z), (x.a, &h.a), (x.snl[0], &h.b), (x.snl[1], &h.c), (x.dd[0], &h.d), (x.dd[1], &h.bias)] {
                    arena.upload(buf, &f32s(v)).unwrap();
                }
                for buf in x.g_sdl.iter().chain(&x.g_snl).chain(&x.g_dd).chain([&x.g_a]) {
                    poison(&mut arena, *buf).unwrap();
                }
            }
            arena.upload(bdout, &f32s(&dout)).unwrap();
            {
                let bw = arena.borrow();
                let mk = |x: &DevDir, gate: bool| dev_dir(&bw, x, gate);
                let fv = mk(&dd[0], true);
                let bv = two.then(|| mk(&dd[1], gated_rev));
                selective_scan(&fv, bv.as_ref(), combine, bw.write(out).unwrap(), Some(bw.write(states).unwrap())).unwrap();
            }
            // A scope lends each buffer once: the forward writes `states`, the backward reads it.
            {
                let bw = arena.borrow();
                let mk = |x: &DevDir, gate: bool| dev_dir(&bw, x, gate);
                let fv = mk(&dd[0], true);
                let bv = two.then(|| mk(&dd[1], gated_rev));
                let mkg = |x: &DevDir, gate: bool| ScanDirGrads {
                    du: bw.write(x.g_sdl[0]).unwrap(),
                    ddelta: bw.write(x.g_sdl[1]).unwrap(),
                    da: bw.write(x.g_a).unwrap(),
                    db: bw.write(x.g_snl[0]).unwrap(),
                    dc: bw.write(x.g_snl[1]).unwrap(),
                    dd_skip: Some(bw.write(x.g_dd[0]).unwrap()),
                    ddelta_bias: Some(bw.write(x.g_dd[1]).unwrap()),
                    dz: gate.then(|| bw.write(x.g_sdl[2]).unwrap()),
                };
                let saved = BackwardSaved::Gpu { chunk_states: bw.read(states).unwrap(), workspace: bw.write(ws).unwrap() };
                selective_scan_backward(&fv, bv.as_ref(), combine, bw.read(bdout).unwrap(), saved, mkg(&dd[0], true), two.then(|| mkg(&dd[1], gated_rev))).unwrap();
            }
            let names = ["du", "ddelta", "da", "db", "dc", "dd_skip", "ddelta_bias", "dz"];
            for (k, (x, want)) in dd.iter().zip([&want_f, &want_b]).enumerate() {
                if k == 1 && !two {
                    continue;
                }
                let bufs = [x.g_sdl[0], x.g_sdl[1], x.g_a, x.g_snl[0], x.g_snl[1], x.g_dd[0], x.g_dd[1], x.g_sdl[2]];
                for (m, (buf, name)) in bufs.iter().zip(names).enumerate() {
                    if m == 7 && k == 1 && !gated_rev {
                        continue;
                    }
                    let got = arena.download(*buf).unwrap();
                    let scale = want[m].iter().fold(1.0f64, |a, x| a.max(x.abs()));
                    for (i, (&g, &w)) in got.iter().zip(&want[m]).enumerate() {
                        assert!((g as f64 - w).abs() <= 1e-4 * scale, "S={s} D={d} L={l} N={n} {combine:?} two={two} dir {k} {name}[{i}]: {g} vs {w} (scale {scale:e})");
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bf16 storage (activations bf16, parameters f32, f32 states and sums)

fn bf(v: &[f64]) -> Vec<half::bf16> {
    v.iter().map(|&x| snug::ops::bf16_rne(x)).collect()
}

/// The inputs as the bf16 path sees them: activations rounded to bf16, parameters to f32.
fn round_bf16(x: &Dir) -> Dir {
    let b = |v: &[f64]| v.iter().map(|&x| snug::ops::bf16_rne(x).to_f64()).collect::<Vec<_>>();
    let f = |v: &[f64]| v.iter().map(|&x| x as f32 as f64).collect::<Vec<_>>();
    Dir { u: b(&x.u), delta: b(&x.delta), a: f(&x.a), b: b(&x.b), c: b(&x.c), d: f(&x.d), bias: f(&x.bias), z: b(&x.z) }
}

/// Host bf16 / f32 copies of one direction.
struct HostBf16 {
    act: [Vec<half::bf16>; 5], // u, delta, b, c, z
    par: [Vec<f32>; 3],        // a, d, bias
}

fn host_bf16(x: &Dir) -> HostBf16 {
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    HostBf16 { act: [bf(&x.u), bf(&x.delta), bf(&x.b), bf(&x.c), bf(&x.z)], par: [f(&x.a), f(&x.d), f(&x.bias)] }
}

fn view_bf16(x: &HostBf16, (s, d, l, n): (usize, usize, usize, usize), gate: bool) -> ScanDir<'_, half::bf16, f32> {
    ScanDir {
        u: View::host(&x.act[0], &[s, d, l]).unwrap(),
        delta: View::host(&x.act[1], &[s, d, l]).unwrap(),
        a: View::host(&x.par[0], &[d, n]).unwrap(),
        b: View::host(&x.act[2], &[s, n, l]).unwrap(),
        c: View::host(&x.act[3], &[s, n, l]).unwrap(),
        d_skip: Some(View::host(&x.par[1], &[d]).unwrap()),
        delta_bias: Some(View::host(&x.par[2], &[d]).unwrap()),
        z: gate.then(|| View::host(&x.act[4], &[s, d, l]).unwrap()),
    }
}

#[test]
fn bf16_twin_rounds_the_f64_result_once() {
    // Same API with bf16 activations and f32 parameters on the CPU: the twin computes in f64 and
    // rounds each output once, so it equals the f64 twin on the rounded inputs, rounded.
    let dims @ (s, d, l, n) = (2usize, 3usize, 40usize, 4usize);
    let mut r = rng(60);
    let (f, b) = (round_bf16(&dir(&mut r, s, d, l, n)), round_bf16(&dir(&mut r, s, d, l, n)));
    let want = forward(&f, Some(&b), Combine::Concat, dims);
    let (hf, hb) = (host_bf16(&f), host_bf16(&b));
    let mut out = vec![half::bf16::NAN; s * 2 * d * l];
    selective_scan(&view_bf16(&hf, dims, true), Some(&view_bf16(&hb, dims, true)), Combine::Concat, ViewMut::host(&mut out, &[s, 2 * d, l]).unwrap(), None).unwrap();
    for (i, (g, w)) in out.iter().zip(&want).enumerate() {
        assert_eq!(g.to_bits(), snug::ops::bf16_rne(*w).to_bits(), "out[{i}]: {g} vs {w}");
    }
}

#[test]
fn gpu_bf16_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_bf16_matches_twin") else { return };
    let mut r = rng(61);
    // (3, 4, 7, 8): one channel group per block (dB/dC summed in place); (2, 40, 100, 16) and
    // (1, 16, 960, 16): several groups (f32 running sums in the workspace).
    for dims @ (s, d, l, n) in [(3usize, 4usize, 7usize, 8usize), (2, 40, 100, 16), (1, 16, 960, 16)] {
        for (combine, two) in [(Combine::Sum, true), (Combine::Concat, true), (Combine::Sum, false)] {
            let (f, b) = (round_bf16(&dir(&mut r, s, d, l, n)), round_bf16(&dir(&mut r, s, d, l, n)));
            let width = if combine == Combine::Concat { 2 * d } else { d };
            let dout: Vec<f64> = randn(&mut r, s * width * l, 1.0).into_iter().map(|x| half::bf16::from_f32(x).to_f64()).collect();
            let gated_rev = combine == Combine::Concat;
            let want_out = forward(&f, two.then_some(&b), combine, dims);
            let z = |k| vec![0.0; k];
            let mut want_f = [z(s * d * l), z(s * d * l), z(d * n), z(s * n * l), z(s * n * l), z(d), z(d), z(s * d * l)];
            let mut want_b = want_f.clone();
            {
                let (fv, bv) = (view(&f, s, d, l, n, true), view(&b, s, d, l, n, gated_rev));
                let gb = two.then(|| grads(&mut want_b, dims, gated_rev));
                selective_scan_backward(&fv, two.then_some(&bv), combine, View::host(&dout, &[s, width, l]).unwrap(), BackwardSaved::None, grads(&mut want_f, dims, true), gb).unwrap();
            }
            let dirs = 1 + two as usize;
            let mut plan = Plan::new();
            let bt = |plan: &mut Plan, name: String, shape: &[usize], role| plan.add::<half::bf16>(name, shape, role).unwrap();
            let mut bufs = Vec::new();
            let (snl, sdl) = ([s, n, l], [s, d, l]);
            for k in 0..2 {
                let act: Vec<_> = ["u", "delta", "b", "c", "z"].iter().map(|nm| bt(&mut plan, format!("{k}.{nm}"), if *nm == "b" || *nm == "c" { &snl } else { &sdl }, Role::Activation)).collect();
                let par: Vec<_> = [("a", vec![d, n]), ("d", vec![d]), ("bias", vec![d])].iter().map(|(nm, sh)| plan.add::<f32>(format!("{k}.{nm}"), sh, Role::Param).unwrap()).collect();
                let gact: Vec<_> = ["du", "ddelta", "db", "dc", "dz"].iter().map(|nm| bt(&mut plan, format!("{k}.{nm}"), if *nm == "db" || *nm == "dc" { &snl } else { &sdl }, Role::Grad)).collect();
                let gpar: Vec<_> = [("da", vec![d, n]), ("dd", vec![d]), ("dbias", vec![d])].iter().map(|(nm, sh)| plan.add::<f32>(format!("{k}.{nm}"), sh, Role::Grad).unwrap()).collect();
                bufs.push((act, par, gact, gpar));
            }
            let out = bt(&mut plan, "out".into(), &[s, width, l], Role::Activation);
            let bdout = bt(&mut plan, "dout".into(), &[s, width, l], Role::Grad);
            let states = plan.add::<f32>("states", &[dirs, s, d, l.div_ceil(CHUNK), n], Role::Saved).unwrap();
            let ws_len = backward_workspace_bytes(Dims { s, d, l, n }, dirs, snug::DType::BF16) / 4;
            let ws = plan.add::<f32>("ws", &[ws_len], Role::Workspace).unwrap();
            let mut arena = Arena::new(&dev, &plan).unwrap();
            for ((act, par, gact, gpar), x) in bufs.iter().zip([&f, &b]) {
                let h = host_bf16(x);
                for (buf, v) in act.iter().zip(&h.act) {
                    arena.upload(*buf, v).unwrap();
                }
                for (buf, v) in par.iter().zip(&h.par) {
                    arena.upload(*buf, v).unwrap();
                }
                for buf in gact {
                    poison(&mut arena, *buf).unwrap();
                }
                for buf in gpar {
                    poison(&mut arena, *buf).unwrap();
                }
            }
            arena.upload(bdout, &bf(&dout)).unwrap();
            poison(&mut arena, out).unwrap();
            poison(&mut arena, ws).unwrap();
            {
                let bw = arena.borrow();
                let mk = |k: usize, gate: bool| bf16_dir(&bw, &bufs[k].0, &bufs[k].1, gate);
                let fv = mk(0, true);
                let bv = two.then(|| mk(1, gated_rev));
                selective_scan(&fv, bv.as_ref(), combine, bw.write(out).unwrap(), Some(bw.write(states).unwrap())).unwrap();
            }
            // A scope lends each buffer once: the forward writes `states`, the backward reads it.
            {
                let bw = arena.borrow();
                let mk = |k: usize, gate: bool| bf16_dir(&bw, &bufs[k].0, &bufs[k].1, gate);
                let fv = mk(0, true);
                let bv = two.then(|| mk(1, gated_rev));
                let mkg = |k: usize, gate: bool| {
                    let (_, _, gact, gpar) = &bufs[k];
                    ScanDirGrads {
                        du: bw.write(gact[0]).unwrap(),
                        ddelta: bw.write(gact[1]).unwrap(),
                        da: bw.write(gpar[0]).unwrap(),
                        db: bw.write(gact[2]).unwrap(),
                        dc: bw.write(gact[3]).unwrap(),
                        dd_skip: Some(bw.write(gpar[1]).unwrap()),
                        ddelta_bias: Some(bw.write(gpar[2]).unwrap()),
                        dz: gate.then(|| bw.write(gact[4]).unwrap()),
                    }
                };
                let saved = BackwardSaved::Gpu { chunk_states: bw.read(states).unwrap(), workspace: bw.write(ws).unwrap() };
                selective_scan_backward(&fv, bv.as_ref(), combine, bw.read(bdout).unwrap(), saved, mkg(0, true), two.then(|| mkg(1, gated_rev))).unwrap();
            }
            let what = format!("bf16 S={s} D={d} L={l} N={n} {combine:?} two={two}");
            // bf16 storage: |got − want| ≤ 1e-2 · max|want| per tensor (SPEC §2).
            let close = |name: &str, got: Vec<f64>, want: &[f64]| {
                let scale = want.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
                for (i, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!((g - w).abs() <= 1e-2 * scale, "{what}: {name}[{i}] {g} vs {w} (scale {scale:e})");
                }
            };
            close("out", arena.download(out).unwrap().iter().map(|x| x.to_f64()).collect(), &want_out);
            for (k, want) in [&want_f, &want_b].iter().enumerate() {
                if k == 1 && !two {
                    continue;
                }
                let (_, _, gact, gpar) = &bufs[k];
                for (m, name) in [(0usize, "du"), (1, "ddelta"), (3, "db"), (4, "dc"), (7, "dz")] {
                    if m == 7 && k == 1 && !gated_rev {
                        continue;
                    }
                    let idx = [0, 1, 9, 2, 3, 9, 9, 4][m];
                    close(&format!("dir {k} {name}"), arena.download(gact[idx]).unwrap().iter().map(|x| x.to_f64()).collect(), &want[m]);
                }
                for (m, name, idx) in [(2usize, "da", 0usize), (5, "dd_skip", 1), (6, "ddelta_bias", 2)] {
                    close(&format!("dir {k} {name}"), arena.download(gpar[idx]).unwrap().iter().map(|&x| x as f64).collect(), &want[m]);
                }
            }
        }
    }
}
