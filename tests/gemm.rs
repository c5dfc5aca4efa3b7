//! Batched GEMM (cuBLAS) and its deterministic sum over the batch: the CPU twin against hand
//! computations and identities (transposes, broadcast, α/β); the GPU against the twin in f32 and
//! bf16 at the BiMamba projection shapes' structure (ragged sizes); bad input.

use snug::ops::gemm::{gemm, gemm_sum_batches, sum_batches_workspace_bytes, GemmSpec, Mat, MatMut, CUBLAS_WORKSPACE_BYTES};
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

fn f64v(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(|x| x as f64).collect()
}

/// Reference: row-major batched product with explicit transposes.
fn naive(a: &[f64], ash: (usize, usize, usize), b: &[f64], bsh: (usize, usize, usize), batch: usize, spec: GemmSpec) -> Vec<f64> {
    let get = |x: &[f64], (xb, r, c): (usize, usize, usize), bt: usize, i: usize, j: usize, t: bool| {
        let base = if xb > 1 { bt * r * c } else { 0 };
        if t {
            x[base + j * c + i]
        } else {
            x[base + i * c + j]
        }
    };
    let (m, k) = if spec.trans_a { (ash.2, ash.1) } else { (ash.1, ash.2) };
    let n = if spec.trans_b { bsh.1 } else { bsh.2 };
    let mut out = vec![0.0; batch * m * n];
    for bt in 0..batch {
        for i in 0..m {
            for j in 0..n {
                out[(bt * m + i) * n + j] = spec.alpha as f64 * (0..k).map(|kk| get(a, ash, bt, i, kk, spec.trans_a) * get(b, bsh, bt, kk, j, spec.trans_b)).sum::<f64>();
            }
        }
    }
    out
}

#[test]
fn twin_matches_a_hand_computation() {
    // [[1, 2], [3, 4]] · [[5, 6], [7, 8]] = [[19, 22], [43, 50]]; Aᵀ·B = [[26, 30], [38, 44]].
    let a = [1.0, 2.0, 3.0, 4.0];
    let b = [5.0, 6.0, 7.0, 8.0];
    let mut c = [0.0f64; 4];
    gemm(View::host(&a, &[2, 2]).unwrap(), View::host(&b, &[2, 2]).unwrap(), ViewMut::host(&mut c, &[2, 2]).unwrap(), GemmSpec::new(false, false), None).unwrap();
    assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
    gemm(View::host(&a, &[2, 2]).unwrap(), View::host(&b, &[2, 2]).unwrap(), ViewMut::host(&mut c, &[2, 2]).unwrap(), GemmSpec::new(true, false), None).unwrap();
    assert_eq!(c, [26.0, 30.0, 38.0, 44.0]);
    // β = 1 accumulates, α scales.
    gemm(View::host(&a, &[2, 2]).unwrap(), View::host(&b, &[2, 2]).unwrap(), ViewMut::host(&mut c, &[2, 2]).unwrap(), GemmSpec { alpha: 2.0, ..GemmSpec::new(true, false).accumulate() }, None).unwrap();
    assert_eq!(c, [78.0, 90.0, 114.0, 132.0]);
}

#[test]
fn twin_matches_naive_for_every_transpose_and_broadcast() {
    let mut r = rng(1);
    let (batch, m, n, k) = (3usize, 5usize, 4usize, 7usize);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        for (a_batched, b_batched) in [(true, true), (false, true), (true, false)] {
            let ash = if ta { (k, m) } else { (m, k) };
            let bsh = if tb { (n, k) } else { (k, n) };
            let ab = if a_batched { batch } else { 1 };
            let bb = if b_batched { batch } else { 1 };
            let a = f64v(randn(&mut r, ab * ash.0 * ash.1, 1.0));
            let b = f64v(randn(&mut r, bb * bsh.0 * bsh.1, 1.0));
            let spec = GemmSpec { alpha: 0.5, ..GemmSpec::new(ta, tb) };
            let want = naive(&a, (ab, ash.0, ash.1), &b, (bb, bsh.0, bsh.1), batch, spec);
            let shape = |x: usize, (r, c): (usize, usize), batched: bool| if batched { vec![x, r, c] } else { vec![r, c] };
            let mut c = vec![f64::NAN; batch * m * n];
            gemm(View::host(&a, &shape(batch, ash, a_batched)).unwrap(), View::host(&b, &shape(batch, bsh, b_batched)).unwrap(), ViewMut::host(&mut c, &[batch, m, n]).unwrap(), spec, None).unwrap();
            for (g, w) in c.iter().zip(&want) {
                assert!((g - w).abs() < 1e-12, "ta={ta} tb={tb} a_batched={a_batched}: {g} vs {w}");
            }
            // The sum over the batch is the sum of the batched products.
            let mut s = vec![1.0f32; m * n];
            let spec_acc = GemmSpec { beta: 2.0, ..spec };
            gemm_sum_batches(View::host(&a, &shape(batch, ash, a_batched)).unwrap(), View::host(&b, &shape(batch, bsh, b_batched)).unwrap(), ViewMut::host(&mut s, &[m, n]).unwrap(), spec_acc, None, None).unwrap();
            for i in 0..m * n {
                let w: f64 = (0..batch).map(|bt| want[bt * m * n + i]).sum::<f64>() + 2.0;
                assert!((s[i] as f64 - w).abs() <= 1e-5 * w.abs().max(1.0), "sum [{i}]: {} vs {w}", s[i]);
            }
        }
    }
}

/// Group g of [batch, groups, rows, cols] as a contiguous [batch, rows, cols] copy.
fn take_group(x: &[f64], (b, g, r, c): (usize, usize, usize, usize), k: usize) -> Vec<f64> {
    (0..b).flat_map(|bt| x[(bt * g + k) * r * c..][..r * c].to_vec()).collect()
}

#[test]
fn grouped_operands_read_and_write_one_group() {
    // y: [S, 2, D, L] (a bidirectional scan's concat output); out_r[s] = y[s, r]ᵀ · Wᵀ, and the
    // backward's dy[s, r] = Wᵀ · dout[s]ᵀ written into group r only.
    let (s, d, l, m) = (3usize, 4usize, 5usize, 2usize);
    let mut r = rng(4);
    let y = f64v(randn(&mut r, s * 2 * d * l, 1.0));
    let w = f64v(randn(&mut r, m * d, 1.0));
    for g in 0..2 {
        let yg = take_group(&y, (s, 2, d, l), g);
        let (mut got, mut want) = (vec![0.0; s * l * m], vec![0.0; s * l * m]);
        gemm(Mat::group(View::host(&y, &[s, 2, d, l]).unwrap(), g), View::host(&w, &[m, d]).unwrap(), ViewMut::host(&mut got, &[s, l, m]).unwrap(), GemmSpec::new(true, true), None).unwrap();
        gemm(View::host(&yg, &[s, d, l]).unwrap(), View::host(&w, &[m, d]).unwrap(), ViewMut::host(&mut want, &[s, l, m]).unwrap(), GemmSpec::new(true, true), None).unwrap();
        assert_eq!(got, want);
        let mut dy = vec![7.0; s * 2 * d * l];
        let dout = got.clone();
        gemm(View::host(&w, &[m, d]).unwrap(), View::host(&dout, &[s, l, m]).unwrap(), MatMut::group(ViewMut::host(&mut dy, &[s, 2, d, l]).unwrap(), g), GemmSpec::new(true, true), None).unwrap();
        let mut want_dy = vec![0.0; s * d * l];
        gemm(View::host(&w, &[m, d]).unwrap(), View::host(&dout, &[s, l, m]).unwrap(), ViewMut::host(&mut want_dy, &[s, d, l]).unwrap(), GemmSpec::new(true, true), None).unwrap();
        assert_eq!(take_group(&dy, (s, 2, d, l), g), want_dy);
        assert!(take_group(&dy, (s, 2, d, l), 1 - g).iter().all(|&x| x == 7.0), "the other group was touched");
    }
    // A group index out of range is a typed error.
    let mut out = vec![0.0; s * l * m];
    let e = gemm(Mat::group(View::host(&y, &[s, 2, d, l]).unwrap(), 2), View::host(&w, &[m, d]).unwrap(), ViewMut::host(&mut out, &[s, l, m]).unwrap(), GemmSpec::new(true, true), None);
    assert!(matches!(e, Err(Error::Shape { arg: "a", .. })), "{e:?}");
}

#[test]
fn bad_input_is_a_typed_error() {
    let a = vec![0.0f64; 12];
    let b = vec![0.0f64; 12];
    let mut c = [0.0f64; 16];
    // K mismatch: [3, 4]·[3, 4].
    let e = gemm(View::host(&a, &[3, 4]).unwrap(), View::host(&b, &[3, 4]).unwrap(), ViewMut::host(&mut c[..12], &[3, 4]).unwrap(), GemmSpec::new(false, false), None);
    assert!(matches!(e, Err(Error::Shape { arg: "b", .. })), "{e:?}");
    // Wrong output shape: [3, 4]·[4, 3] is [3, 3].
    let e = gemm(View::host(&a, &[3, 4]).unwrap(), View::host(&b, &[4, 3]).unwrap(), ViewMut::host(&mut c[..12], &[4, 3]).unwrap(), GemmSpec::new(false, false), None);
    assert!(matches!(e, Err(Error::Shape { arg: "c", .. })), "{e:?}");
    // Batch mismatch between a and c.
    let e = gemm(View::host(&a, &[3, 2, 2]).unwrap(), View::host(&b[..4], &[2, 2]).unwrap(), ViewMut::host(&mut c[..8], &[2, 2, 2]).unwrap(), GemmSpec::new(false, false), None);
    assert!(matches!(e, Err(Error::Shape { arg: "a", .. })), "{e:?}");
    // Zero-size and 1-D operands.
    let e = gemm(View::host(&a[..0], &[0, 4]).unwrap(), View::host(&b, &[4, 3]).unwrap(), ViewMut::host(&mut c[..0], &[0, 3]).unwrap(), GemmSpec::new(false, false), None);
    assert!(matches!(e, Err(Error::Shape { arg: "c", .. } | Error::Shape { arg: "a", .. })), "{e:?}");
    let e = gemm(View::host(&a, &[12]).unwrap(), View::host(&b, &[4, 3]).unwrap(), ViewMut::host(&mut c[..12], &[4, 3]).unwrap(), GemmSpec::new(false, false), None);
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    // The sum needs a batch and one output matrix.
    let mut s = vec![0.0f32; 9];
    let e = gemm_sum_batches(View::host(&a, &[3, 4]).unwrap(), View::host(&b, &[4, 3]).unwrap(), ViewMut::host(&mut s, &[3, 3]).unwrap(), GemmSpec::new(false, false), None, None);
    assert!(matches!(e, Err(Error::Shape { arg: "a", .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

/// `tol`: accumulation error per unit of the row scale sqrt(K) (f32 accumulation in both dtypes);
/// `out_rel`: the output's own rounding, relative (0 for f32 out, 2^-8 = half a bf16 ulp at the
/// bottom of a binade for bf16 out; the first H100 run rounded 32.837 correctly to 32.75).
fn gpu_case<T: snug::Element + snug::ops::Real>(dev: &snug::Device, round: fn(f32) -> T, tol: f64, out_rel: f64, seed: u64) {
    let mut r = rng(seed);
    // Ragged sizes (not multiples of any tile), both broadcast sides, every transpose.
    for (batch, m, n, k) in [(3usize, 33usize, 17usize, 65usize), (1, 128, 960, 64), (5, 8, 100, 32)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for (a_batched, b_batched) in [(false, true), (true, true), (true, false)] {
                let ash = if ta { (k, m) } else { (m, k) };
                let bsh = if tb { (n, k) } else { (k, n) };
                let ab = if a_batched { batch } else { 1 };
                let bb = if b_batched { batch } else { 1 };
                let a: Vec<T> = randn(&mut r, ab * ash.0 * ash.1, 1.0).into_iter().map(round).collect();
                let b: Vec<T> = randn(&mut r, bb * bsh.0 * bsh.1, 1.0).into_iter().map(round).collect();
                let w64 = |v: &[T]| v.iter().map(|x| x.to_f64().unwrap()).collect::<Vec<_>>();
                let spec = GemmSpec::new(ta, tb);
                let want = naive(&w64(&a), (ab, ash.0, ash.1), &w64(&b), (bb, bsh.0, bsh.1), batch, spec);
                let shape = |x: usize, (r, c): (usize, usize), batched: bool| if batched { vec![x, r, c] } else { vec![r, c] };
                let mut plan = Plan::new();
                let ba = plan.add::<T>("a", &shape(batch, ash, a_batched), Role::Activation).unwrap();
                let bbuf = plan.add::<T>("b", &shape(batch, bsh, b_batched), Role::Activation).unwrap();
                let bc = plan.add::<T>("c", &[batch, m, n], Role::Activation).unwrap();
                let bc32 = plan.add::<f32>("c32", &[batch, m, n], Role::Activation).unwrap();
                let bsum = plan.add::<f32>("sum", &[m, n], Role::Grad).unwrap();
                let ws = plan.add::<f32>("ws", &[sum_batches_workspace_bytes(batch, m, n) / 4], Role::Workspace).unwrap();
                let cws = plan.add::<u8>("cublas", &[CUBLAS_WORKSPACE_BYTES], Role::Workspace).unwrap();
                let mut arena = Arena::new(dev, &plan).unwrap();
                arena.upload(ba, &a).unwrap();
                arena.upload(bbuf, &b).unwrap();
                for x in [bc32, bsum, ws] {
                    poison(&mut arena, x).unwrap();
                }
                poison(&mut arena, bc).unwrap();
                let sum_ok = a_batched || b_batched;
                // One borrow scope per call: a scope lends each buffer once (cws is used twice).
                {
                    let v = arena.borrow();
                    gemm(v.read(ba).unwrap(), v.read(bbuf).unwrap(), v.write(bc).unwrap(), spec, Some(v.write(cws).unwrap())).unwrap();
                }
                {
                    let v = arena.borrow();
                    gemm(v.read(ba).unwrap(), v.read(bbuf).unwrap(), v.write(bc32).unwrap(), spec, None).unwrap();
                }
                if sum_ok && batch > 1 {
                    let v = arena.borrow();
                    gemm_sum_batches(v.read(ba).unwrap(), v.read(bbuf).unwrap(), v.write(bsum).unwrap(), spec, Some(v.write(ws).unwrap()), Some(v.write(cws).unwrap())).unwrap();
                }
                let what = format!("{} batch={batch} M={m} N={n} K={k} ta={ta} tb={tb} a_batched={a_batched} b_batched={b_batched}", T::DTYPE);
                // Per-element error relative to the row's scale sqrt(K) (inputs ~ N(0, 1)).
                let scale = (k as f64).sqrt();
                let got: Vec<f64> = arena.download(bc).unwrap().iter().map(|x| x.to_f64().unwrap()).collect();
                let got32 = arena.download(bc32).unwrap();
                for i in 0..want.len() {
                    assert!((got[i] - want[i]).abs() <= tol * scale + out_rel * want[i].abs(), "{what}: c[{i}] {} vs {}", got[i], want[i]);
                    assert!((got32[i] as f64 - want[i]).abs() <= 1e-5 * scale, "{what}: f32 c[{i}] {} vs {}", got32[i], want[i]);
                }
                if sum_ok && batch > 1 {
                    let s = arena.download(bsum).unwrap();
                    for i in 0..m * n {
                        let w: f64 = (0..batch).map(|bt| want[bt * m * n + i]).sum();
                        assert!((s[i] as f64 - w).abs() <= 1e-5 * scale * batch as f64, "{what}: sum[{i}] {} vs {w}", s[i]);
                    }
                }
            }
        }
    }
}

#[test]
fn gpu_f32_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_f32_matches_twin") else { return };
    gpu_case::<f32>(&dev, |x| x, 1e-5, 0.0, 10);
}

#[test]
fn gpu_bf16_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_bf16_matches_twin") else { return };
    // bf16 output: one rounding of an f32-accumulated value (2^-8 relative to the element).
    gpu_case::<half::bf16>(&dev, half::bf16::from_f32, 4e-5, 1.0 / 256.0, 11);
}

#[test]
fn gpu_sum_batches_is_deterministic() {
    let Some(dev) = gpu_or_skip("gpu_sum_batches_is_deterministic") else { return };
    let (batch, m, n, k) = (1368usize, 64usize, 16usize, 960usize); // edge in_proj's dW
    let mut r = rng(12);
    let mut plan = Plan::new();
    let a = plan.add::<f32>("a", &[batch, k, m], Role::Activation).unwrap();
    let b = plan.add::<f32>("b", &[batch, k, n], Role::Activation).unwrap();
    let c = plan.add::<f32>("c", &[m, n], Role::Grad).unwrap();
    let ws = plan.add::<f32>("ws", &[sum_batches_workspace_bytes(batch, m, n) / 4], Role::Workspace).unwrap();
    let mut arena = Arena::new(&dev, &plan).unwrap();
    arena.upload(a, &randn(&mut r, batch * k * m, 1.0)).unwrap();
    arena.upload(b, &randn(&mut r, batch * k * n, 1.0)).unwrap();
    let mut runs = Vec::new();
    for _ in 0..3 {
        poison(&mut arena, c).unwrap();
        {
            let v = arena.borrow();
            gemm_sum_batches(v.read(a).unwrap(), v.read(b).unwrap(), v.write(c).unwrap(), GemmSpec::new(true, false), Some(v.write(ws).unwrap()), None).unwrap();
        }
        runs.push(arena.download(c).unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }
    assert!(runs.windows(2).all(|w| w[0] == w[1]), "gemm_sum_batches differs between runs");
}

#[test]
fn gpu_grouped_operands_match_twin() {
    let Some(dev) = gpu_or_skip("gpu_grouped_operands_match_twin") else { return };
    let (s, d, l, m) = (7usize, 33usize, 100usize, 16usize);
    let mut r = rng(13);
    let y = randn(&mut r, s * 2 * d * l, 1.0);
    let w = randn(&mut r, m * d, 1.0);
    let (y64, w64) = (f64v(y.clone()), f64v(w.clone()));
    let mut plan = Plan::new();
    let by = plan.add::<f32>("y", &[s, 2, d, l], Role::Activation).unwrap();
    let bw = plan.add::<f32>("w", &[m, d], Role::Param).unwrap();
    let bo = plan.add::<f32>("out", &[s, l, m], Role::Activation).unwrap();
    let bdy = plan.add::<f32>("dy", &[s, 2, d, l], Role::Grad).unwrap();
    let bdw = plan.add::<f32>("dw", &[m, d], Role::Grad).unwrap();
    let ws = plan.add::<f32>("ws", &[sum_batches_workspace_bytes(s, m, d) / 4], Role::Workspace).unwrap();
    let mut arena = Arena::new(&dev, &plan).unwrap();
    arena.upload(by, &y).unwrap();
    arena.upload(bw, &w).unwrap();
    for g in 0..2 {
        for x in [bo, bdy, bdw] {
            poison(&mut arena, x).unwrap();
        }
        {
            let v = arena.borrow();
            gemm(Mat::group(v.read(by).unwrap(), g), v.read(bw).unwrap(), v.write(bo).unwrap(), GemmSpec::new(true, true), None).unwrap();
        }
        {
            let v = arena.borrow();
            gemm(v.read(bw).unwrap(), v.read(bo).unwrap(), MatMut::group(v.write(bdy).unwrap(), g), GemmSpec::new(true, true), None).unwrap();
            gemm_sum_batches(v.read(bo).unwrap(), Mat::group(v.read(by).unwrap(), g), v.write(bdw).unwrap(), GemmSpec::new(true, true), Some(v.write(ws).unwrap()), None).unwrap();
        }
        let (mut want, mut want_dy, mut want_dw) = (vec![0.0; s * l * m], vec![0.0; s * d * l], vec![0.0f32; m * d]);
        gemm(Mat::group(View::host(&y64, &[s, 2, d, l]).unwrap(), g), View::host(&w64, &[m, d]).unwrap(), ViewMut::host(&mut want, &[s, l, m]).unwrap(), GemmSpec::new(true, true), None).unwrap();
        let got = arena.download(bo).unwrap();
        gemm(View::host(&w64, &[m, d]).unwrap(), View::host(&f64v(got.clone()), &[s, l, m]).unwrap(), ViewMut::host(&mut want_dy, &[s, d, l]).unwrap(), GemmSpec::new(true, true), None).unwrap();
        gemm_sum_batches(View::host(&f64v(got.clone()), &[s, l, m]).unwrap(), Mat::group(View::host(&y64, &[s, 2, d, l]).unwrap(), g), ViewMut::host(&mut want_dw, &[m, d]).unwrap(), GemmSpec::new(true, true), None, None).unwrap();
        let tol = 1e-5 * (d as f64).sqrt() * 4.0;
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((*a as f64 - b).abs() <= tol, "group {g} out[{i}] {a} vs {b}");
        }
        let dy = arena.download(bdy).unwrap();
        let dyg = take_group(&f64v(dy.clone()), (s, 2, d, l), g);
        for (i, (a, b)) in dyg.iter().zip(&want_dy).enumerate() {
            assert!((a - b).abs() <= tol * 4.0, "group {g} dy[{i}] {a} vs {b}");
        }
        assert!(take_group(&f64v(dy), (s, 2, d, l), 1 - g).iter().all(|x| x.is_nan()), "group {g}: the other group was written");
        let dw = arena.download(bdw).unwrap();
        for (i, (a, b)) in dw.iter().zip(&want_dw).enumerate() {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(10.0), "group {g} dw[{i}] {a} vs {b}");
        }
    }
}

/// Columns `s .. s + n` of every `[rows, cols]` matrix of a batch, as a dense batch.
fn take_cols(x: &[f64], (b, r, c): (usize, usize, usize), s: usize, n: usize) -> Vec<f64> {
    (0..b * r).flat_map(|row| x[row * c + s..][..n].to_vec()).collect()
}

#[test]
fn column_windows_read_and_write_only_their_columns() {
    // A conv1d tap: y[b][:, lo..hi] += W_j · x[b][:, lo + shift .. hi + shift], channels × time.
    let (bt, cin, cout, l) = (3usize, 4usize, 5usize, 11usize);
    let mut r = rng(21);
    let x = f64v(randn(&mut r, bt * cin * l, 1.0));
    let w = f64v(randn(&mut r, cout * cin, 1.0));
    for (lo, n, shift) in [(0usize, 11usize, 0usize), (2, 7, 2), (0, 9, 2), (3, 1, 7), (5, 6, 0)] {
        let y0 = f64v(randn(&mut r, bt * cout * l, 1.0));
        for (beta, ta) in [(0.0f32, false), (1.0, false), (0.5, true)] {
            let mut y = y0.clone();
            // a: W (or its transpose stored [cin, cout]) — not windowed; b: x's window; c: y's window.
            let wa = if ta { (0..cin * cout).map(|k| w[(k % cout) * cin + k / cout]).collect::<Vec<_>>() } else { w.clone() };
            let ash = if ta { [cin, cout] } else { [cout, cin] };
            let spec = GemmSpec { beta, ..GemmSpec::new(ta, false) };
            gemm(View::host(&wa, &ash).unwrap(), Mat::from(View::host(&x, &[bt, cin, l]).unwrap()).columns(lo + shift, n), MatMut::from(ViewMut::host(&mut y, &[bt, cout, l]).unwrap()).columns(lo, n), spec, None).unwrap();
            let xs = take_cols(&x, (bt, cin, l), lo + shift, n);
            let mut want = take_cols(&y0, (bt, cout, l), lo, n);
            gemm(View::host(&wa, &ash).unwrap(), View::host(&xs, &[bt, cin, n]).unwrap(), ViewMut::host(&mut want, &[bt, cout, n]).unwrap(), spec, None).unwrap();
            assert_eq!(take_cols(&y, (bt, cout, l), lo, n), want, "window {lo}+{n} shift {shift} beta {beta} ta {ta}");
            for row in 0..bt * cout {
                for t in (0..l).filter(|t| *t < lo || *t >= lo + n) {
                    assert_eq!(y[row * l + t], y0[row * l + t], "column {t} outside the window was touched");
                }
            }
        }
    }
    // Transposed windowed operand (dW_j = Σ_b dy[b][:, win] · x[b][:, win']ᵀ) through gemm_sum_batches.
    let dy = f64v(randn(&mut r, bt * cout * l, 1.0));
    let (lo, n, shift) = (1usize, 8usize, 2usize);
    let mut got = vec![0.0; cout * cin];
    gemm_sum_batches(Mat::from(View::host(&dy, &[bt, cout, l]).unwrap()).columns(lo, n), Mat::from(View::host(&x, &[bt, cin, l]).unwrap()).columns(lo + shift, n), ViewMut::host(&mut got, &[cout, cin]).unwrap(), GemmSpec::new(false, true), None, None).unwrap();
    let (dys, xs) = (take_cols(&dy, (bt, cout, l), lo, n), take_cols(&x, (bt, cin, l), lo + shift, n));
    let mut want = vec![0.0; cout * cin];
    gemm_sum_batches(View::host(&dys, &[bt, cout, n]).unwrap(), View::host(&xs, &[bt, cin, n]).unwrap(), ViewMut::host(&mut want, &[cout, cin]).unwrap(), GemmSpec::new(false, true), None, None).unwrap();
    assert_eq!(got, want);
    // Windows out of range are typed errors.
    for (s, n) in [(5usize, 7usize), (0, 0), (usize::MAX, 2)] {
        let mut y = vec![0.0; bt * cout * n.clamp(1, l)];
        let e = gemm(View::host(&w, &[cout, cin]).unwrap(), Mat::from(View::host(&x, &[bt, cin, l]).unwrap()).columns(s, n), ViewMut::host(&mut y, &[bt, cout, n.clamp(1, l)]).unwrap(), GemmSpec::new(false, false), None);
        assert!(matches!(e, Err(Error::Shape { arg: "b", .. })), "{s}+{n}: {e:?}");
    }
}

#[test]
fn gpu_column_windows_match_twin() {
    let Some(dev) = gpu_or_skip("gpu_column_windows_match_twin") else { return };
    let (bt, cin, cout, l) = (5usize, 33usize, 17usize, 301usize);
    let mut r = rng(22);
    let (x, w, y0) = (randn(&mut r, bt * cin * l, 1.0), randn(&mut r, cout * cin, 1.0), randn(&mut r, bt * cout * l, 1.0));
    let (x64, w64) = (f64v(x.clone()), f64v(w.clone()));
    let mut plan = Plan::new();
    let bx = plan.add::<f32>("x", &[bt, cin, l], Role::Activation).unwrap();
    let bw = plan.add::<f32>("w", &[cout, cin], Role::Param).unwrap();
    let by = plan.add::<f32>("y", &[bt, cout, l], Role::Activation).unwrap();
    let bdw = plan.add::<f32>("dw", &[cout, cin], Role::Grad).unwrap();
    let ws = plan.add::<f32>("ws", &[sum_batches_workspace_bytes(bt, cout, cin) / 4], Role::Workspace).unwrap();
    let mut arena = Arena::new(&dev, &plan).unwrap();
    arena.upload(bx, &x).unwrap();
    arena.upload(bw, &w).unwrap();
    for (lo, n, shift) in [(0usize, 301usize, 0usize), (3, 290, 8), (17, 1, 200)] {
        arena.upload(by, &y0).unwrap();
        poison(&mut arena, bdw).unwrap();
        {
            let v = arena.borrow();
            gemm(v.read(bw).unwrap(), Mat::from(v.read(bx).unwrap()).columns(lo + shift, n), MatMut::from(v.write(by).unwrap()).columns(lo, n), GemmSpec::new(false, false).accumulate(), None).unwrap();
        }
        {
            let v = arena.borrow();
            gemm_sum_batches(Mat::from(v.read(by).unwrap()).columns(lo, n), Mat::from(v.read(bx).unwrap()).columns(lo + shift, n), v.write(bdw).unwrap(), GemmSpec::new(false, true), Some(v.write(ws).unwrap()), None).unwrap();
        }
        let mut want = f64v(y0.clone());
        gemm(View::host(&w64, &[cout, cin]).unwrap(), Mat::from(View::host(&x64, &[bt, cin, l]).unwrap()).columns(lo + shift, n), MatMut::from(ViewMut::host(&mut want, &[bt, cout, l]).unwrap()).columns(lo, n), GemmSpec::new(false, false).accumulate(), None).unwrap();
        let got = f64v(arena.download(by).unwrap());
        let tol = 1e-5 * (cin as f64).sqrt() * 4.0;
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "window {lo}+{n}: y[{i}] {a} vs {b}");
        }
        let mut want_dw = vec![0.0f64; cout * cin];
        gemm_sum_batches(Mat::from(View::host(&got, &[bt, cout, l]).unwrap()).columns(lo, n), Mat::from(View::host(&x64, &[bt, cin, l]).unwrap()).columns(lo + shift, n), ViewMut::host(&mut want_dw, &[cout, cin]).unwrap(), GemmSpec::new(false, true), None, None).unwrap();
        let dw = f64v(arena.download(bdw).unwrap());
        let tol = 1e-5 * ((bt * n) as f64).sqrt() * 8.0;
        for (i, (a, b)) in dw.iter().zip(&want_dw).enumerate() {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "window {lo}+{n}: dw[{i}] {a} vs {b}");
        }
    }
}
