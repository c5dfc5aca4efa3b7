//! cross_entropy: the f64 twin against the textbook definition `−Σ_j q_j log p_j` (q the smoothed
//! one-hot), finite differences of the loss, reductions, ignore_index, extreme and masked logits,
//! the backward's scaling, bad input; linear_cross_entropy's chunked orchestration (run on the
//! host) against the unchunked formula for several chunk sizes; the GPU kernels (f32 and bf16,
//! V = 50,257 with its unaligned rows, more rows than a grid, poisoned outputs, two runs bitwise)
//! against the twin.

use snug::ops::cross_entropy::{
    chunk_rows_for_budget, cross_entropy, cross_entropy_backward, cross_entropy_in_place, linear_cross_entropy, linear_workspace_bytes, workspace_bytes, CrossEntropySpec, LinearCrossEntropySpec,
    Reduction,
};
use snug::testing::{assert_close, gpu_or_skip, poison, randn, rng, widen, Tol};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

fn spec(reduction: Reduction, eps: f32) -> CrossEntropySpec {
    CrossEntropySpec { label_smoothing: eps, ..CrossEntropySpec::new(reduction) }
}

/// The loss (twin, loss only).
fn loss_of(z: &[f64], t: &[i32], v: usize, s: CrossEntropySpec) -> Vec<f64> {
    let rows = t.len();
    let mut out = vec![f64::NAN; if s.reduction == Reduction::None { rows } else { 1 }];
    let n = out.len();
    cross_entropy(View::host(z, &[rows, v]).unwrap(), View::host(t, &[rows]).unwrap(), ViewMut::host(&mut out, &[n]).unwrap(), None, s).unwrap();
    out
}

/// The loss and the gradient (twin, in place).
fn grad_of(z: &[f64], t: &[i32], v: usize, s: CrossEntropySpec) -> (Vec<f64>, Vec<f64>) {
    let rows = t.len();
    let mut g = z.to_vec();
    let mut out = vec![f64::NAN; if s.reduction == Reduction::None { rows } else { 1 }];
    let n = out.len();
    cross_entropy_in_place(ViewMut::host(&mut g, &[rows, v]).unwrap(), View::host(t, &[rows]).unwrap(), ViewMut::host(&mut out, &[n]).unwrap(), None, s).unwrap();
    (out, g)
}

/// −Σ_j q_j log p_j with p = softmax(z) (computed as exp(z)/Σexp(z), no log-sum-exp trick: the test
/// inputs are small) and q = (1 − ε) onehot_t + ε / V.
fn textbook(row: &[f64], t: usize, eps: f64) -> f64 {
    let v = row.len() as f64;
    let zsum: f64 = row.iter().map(|x| x.exp()).sum();
    row.iter().enumerate().map(|(j, x)| -((if j == t { 1.0 - eps } else { 0.0 }) + eps / v) * (x.exp() / zsum).ln()).sum()
}

#[test]
fn twin_matches_the_textbook_definition() {
    // [1, 2, 3], target 2: log(e + e² + e³) − 3 = 0.40760596444…
    let (l, g) = grad_of(&[1.0, 2.0, 3.0], &[2], 3, spec(Reduction::None, 0.0));
    assert!((l[0] - 0.407_605_964_444_380_3).abs() < 1e-14, "{l:?}"); // log(1 + e^-1 + e^-2)
    let s: f64 = [1.0f64, 2.0, 3.0].iter().map(|x| x.exp()).sum();
    let want = [1f64.exp() / s, 2f64.exp() / s, 3f64.exp() / s - 1.0];
    for j in 0..3 {
        assert!((g[j] - want[j]).abs() < 1e-15, "{g:?} vs {want:?}");
    }
    // Random rows, several targets and smoothings.
    let (rows, v) = (6usize, 11usize);
    let mut r = rng(1);
    let z = widen(&randn(&mut r, rows * v, 2.0));
    let t: Vec<i32> = (0..rows as i32).map(|i| (i * 7) % v as i32).collect();
    for eps in [0.0, 0.1, 1.0] {
        let l = loss_of(&z, &t, v, spec(Reduction::None, eps as f32));
        for i in 0..rows {
            let want = textbook(&z[i * v..(i + 1) * v], t[i] as usize, eps as f32 as f64);
            assert!((l[i] - want).abs() <= 1e-13 * (1.0 + want.abs()), "eps {eps} row {i}: {} vs {want}", l[i]);
        }
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let (rows, v) = (5usize, 7usize);
    let mut r = rng(2);
    let z = widen(&randn(&mut r, rows * v, 1.5));
    let t = [3, -100, 0, 6, 2];
    for (red, eps, scale) in [(Reduction::Mean, 0.0, 1.0), (Reduction::Mean, 0.2, 0.5), (Reduction::Sum, 0.1, 2.0), (Reduction::None, 0.3, 1.0)] {
        let s = CrossEntropySpec { grad_scale: scale, ..spec(red, eps) };
        let (_, g) = grad_of(&z, &t, v, s);
        // Σ of the losses (None: the gradient is that of their sum), times grad_scale.
        let f = |z: &[f64]| scale as f64 * loss_of(z, &t, v, s).iter().sum::<f64>();
        let h = 1e-6;
        for i in 0..z.len() {
            let mut zp = z.clone();
            zp[i] += h;
            let lp = f(&zp);
            zp[i] -= 2.0 * h;
            let fd = (lp - f(&zp)) / (2.0 * h);
            assert!((g[i] - fd).abs() <= 1e-8 * (1.0 + fd.abs()), "{red:?} eps {eps}: g[{i}] {} vs {fd}", g[i]);
        }
        // The ignored row's gradient is exactly zero.
        assert!(g[v..2 * v].iter().all(|&x| x == 0.0));
    }
}

#[test]
fn reductions_and_ignore_index() {
    let (rows, v) = (4usize, 5usize);
    let mut r = rng(3);
    let z = widen(&randn(&mut r, rows * v, 1.0));
    let t = [1, 7, 4, 0];
    let s = CrossEntropySpec { ignore_index: 7, ..spec(Reduction::None, 0.0) };
    let per = loss_of(&z, &t, v, s);
    assert_eq!(per[1], 0.0);
    let sum = loss_of(&z, &t, v, CrossEntropySpec { reduction: Reduction::Sum, ..s })[0];
    let mean = loss_of(&z, &t, v, CrossEntropySpec { reduction: Reduction::Mean, ..s })[0];
    assert!((sum - per.iter().sum::<f64>()).abs() < 1e-14);
    assert!((mean - sum / 3.0).abs() < 1e-14, "mean over the 3 rows kept: {mean} vs {}", sum / 3.0);
    // Every row ignored: the mean is 0/0 = NaN (PyTorch), the sum 0, the gradient 0.
    let all = [7, 7, 7, 7];
    assert!(loss_of(&z, &all, v, CrossEntropySpec { reduction: Reduction::Mean, ..s })[0].is_nan());
    let (l, g) = grad_of(&z, &all, v, CrossEntropySpec { reduction: Reduction::Sum, ..s });
    assert_eq!(l[0], 0.0);
    assert!(g.iter().all(|&x| x == 0.0));
}

#[test]
fn extreme_and_masked_logits() {
    // Large logits: the log-sum-exp keeps them finite. Row 0: log(1 + e^-2e4) = 0 (underflow);
    // row 1, target 0 at 0 against 1e4: 1e4 + log(1 + e^-1e4) = 1e4.
    let (l, g) = grad_of(&[1e4, -1e4, 0.0, 1e4], &[0, 0], 2, spec(Reduction::None, 0.0));
    assert!(l[0] == 0.0 && l[1] == 1e4, "{l:?}");
    assert!(g.iter().all(|x| x.is_finite()));
    // −inf (masked) logits: probability 0, finite loss for other targets, +inf for a masked one.
    let z = [0.0, f64::NEG_INFINITY, 0.0, f64::NEG_INFINITY];
    let (l, g) = grad_of(&z, &[0], 4, spec(Reduction::None, 0.0));
    assert!((l[0] - 2f64.ln()).abs() < 1e-15, "{l:?}");
    assert_eq!(g, [-0.5, 0.0, 0.5, 0.0]);
    assert_eq!(loss_of(&z, &[1], 4, spec(Reduction::None, 0.0))[0], f64::INFINITY);
    // A +inf logit: NaN loss and gradient row (PyTorch: NaN), whichever the target.
    for t in [0, 1] {
        let (l, g) = grad_of(&[f64::INFINITY, 0.0, 0.0, 0.0], &[t], 4, spec(Reduction::None, 0.0));
        assert!(l[0].is_nan() && g.iter().all(|x| x.is_nan()), "target {t}: {l:?} {g:?}");
    }
}

#[test]
fn backward_scales_by_the_upstream_gradient() {
    let (rows, v) = (3usize, 4usize);
    let mut r = rng(4);
    let z = widen(&randn(&mut r, rows * v, 1.0));
    let t = [0, 1, 2];
    let (_, g) = grad_of(&z, &t, v, spec(Reduction::None, 0.0));
    let mut g2 = g.clone();
    cross_entropy_backward(ViewMut::host(&mut g2, &[rows, v]).unwrap(), View::host(&[2.0f64, -1.0, 0.5], &[rows]).unwrap(), Reduction::None).unwrap();
    for i in 0..g.len() {
        assert_eq!(g2[i], g[i] * [2.0, -1.0, 0.5][i / v]);
    }
    let mut g3 = g.clone();
    cross_entropy_backward(ViewMut::host(&mut g3, &[rows, v]).unwrap(), View::host(&[3.0f64], &[1]).unwrap(), Reduction::Mean).unwrap();
    assert!(g3.iter().zip(&g).all(|(a, b)| *a == 3.0 * b));
}

#[test]
fn bad_input_is_a_typed_error() {
    let z = [0.0f64; 6];
    let mut out = [0.0f64; 1];
    let run = |t: &[i32], shape: &[usize], s: CrossEntropySpec, out: &mut [f64]| {
        let n = out.len();
        cross_entropy(View::host(&z, shape).unwrap(), View::host(t, &[t.len()]).unwrap(), ViewMut::host(out, &[n]).unwrap(), None, s)
    };
    let e = run(&[0, 3], &[2, 3], spec(Reduction::Mean, 0.0), &mut out);
    assert!(matches!(e, Err(Error::Value { arg: "targets", .. })), "{e:?}");
    let e = run(&[0, -1], &[2, 3], spec(Reduction::Mean, 0.0), &mut out);
    assert!(matches!(e, Err(Error::Value { arg: "targets", .. })), "{e:?}");
    let e = run(&[0, 1, 2], &[2, 3], spec(Reduction::Mean, 0.0), &mut out);
    assert!(matches!(e, Err(Error::Shape { arg: "targets", .. })), "{e:?}");
    let e = run(&[0, 1], &[2, 3], spec(Reduction::Mean, 1.5), &mut out);
    assert!(matches!(e, Err(Error::Value { arg: "label_smoothing", .. })), "{e:?}");
    let e = run(&[0, 1], &[2, 3], CrossEntropySpec { grad_scale: f32::NAN, ..spec(Reduction::Mean, 0.0) }, &mut out);
    assert!(matches!(e, Err(Error::Value { arg: "grad_scale", .. })), "{e:?}");
    let e = run(&[0, 1], &[2, 3], spec(Reduction::None, 0.0), &mut out);
    assert!(matches!(e, Err(Error::Shape { arg: "loss", .. })), "{e:?}");
    let e = run(&[0, 1, 2, 0, 1, 2], &[6, 1, 1], spec(Reduction::Mean, 0.0), &mut out);
    assert!(matches!(e, Err(Error::Shape { arg: "logits", .. })), "{e:?}");
    // linear_cross_entropy: chunk 0, mismatched W.
    let h = [0.0f64; 6];
    let mut l = [0.0f32; 1];
    let s = LinearCrossEntropySpec { ce: spec(Reduction::Mean, 0.0), chunk_rows: 0, accumulate_dw: false };
    let e = linear_cross_entropy::<f64, f64>(View::host(&h, &[2, 3]).unwrap(), View::host(&z, &[2, 3]).unwrap(), View::host(&[0, 1], &[2]).unwrap(), ViewMut::host(&mut l, &[1]).unwrap(), None, None, None, s);
    assert!(matches!(e, Err(Error::Value { arg: "chunk_rows", .. })), "{e:?}");
    let s = LinearCrossEntropySpec { chunk_rows: 1, ..s };
    let e = linear_cross_entropy::<f64, f64>(View::host(&h, &[2, 3]).unwrap(), View::host(&z, &[3, 2]).unwrap(), View::host(&[0, 1], &[2]).unwrap(), ViewMut::host(&mut l, &[1]).unwrap(), None, None, None, s);
    assert!(matches!(e, Err(Error::Shape { arg: "w", .. })), "{e:?}");
}

#[test]
fn workspace_sizes_are_pure_functions_of_shapes() {
    assert_eq!(workspace_bytes(16_384, Reduction::None), 0);
    assert_eq!(workspace_bytes(16_384, Reduction::Mean), 4 * 16_385);
    // Seed 003's head in chunks of 1,024 rows of bf16: 1,024 · 50,257 · 2 bytes + the row losses.
    assert_eq!(linear_workspace_bytes(16_384, 50_257, 1024, Reduction::Mean, snug::DType::BF16), 1024 * 50_257 * 2 + 4 * 16_385);
    // A chunk larger than the rows is clamped; odd bf16 element counts round up to 4 bytes.
    assert_eq!(linear_workspace_bytes(3, 5, 100, Reduction::None, snug::DType::BF16), 32 + 4);
    // The chunk for a budget: the largest that fits, for every budget around the steps.
    for (rows, v, red, dt) in [(16_384usize, 50_257usize, Reduction::Mean, snug::DType::BF16), (37, 5, Reduction::None, snug::DType::BF16), (10, 7, Reduction::Sum, snug::DType::F32)] {
        for budget in (0..linear_workspace_bytes(rows, v, rows, red, dt) + 64).step_by(1 + rows * v / 97) {
            let c = chunk_rows_for_budget(rows, v, red, dt, budget);
            assert!((1..=rows).contains(&c));
            let fits = |c: usize| linear_workspace_bytes(rows, v, c, red, dt) <= budget;
            assert!(c == 1 || fits(c), "rows {rows} budget {budget}: chunk {c} does not fit");
            assert!(c == rows || !fits(c + 1), "rows {rows} budget {budget}: chunk {} would fit too", c + 1);
        }
    }
    // Seed 003 (bf16) with 256 MiB to spare: 2,669 rows of 50,257 logits.
    assert_eq!(chunk_rows_for_budget(16_384, 50_257, Reduction::Mean, snug::DType::BF16, 256 << 20), (((256 << 20) - 4 * 16_385) / 4 * 4) / (2 * 50_257));
}

/// Unchunked f64 reference of the fused head: logits = h·Wᵀ, the twin's loss and gradient,
/// dh = g·W, dW = gᵀ·h.
fn head_reference(h: &[f64], w: &[f64], t: &[i32], rows: usize, d: usize, v: usize, s: CrossEntropySpec) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let z: Vec<f64> = (0..rows * v).map(|k| (0..d).map(|i| h[(k / v) * d + i] * w[(k % v) * d + i]).sum()).collect();
    let (l, g) = grad_of(&z, t, v, s);
    let dh: Vec<f64> = (0..rows * d).map(|k| (0..v).map(|j| g[(k / d) * v + j] * w[j * d + k % d]).sum()).collect();
    let dw: Vec<f64> = (0..v * d).map(|k| (0..rows).map(|r| g[r * v + k / d] * h[r * d + k % d]).sum()).collect();
    (l, dh, dw)
}

#[test]
fn linear_cross_entropy_chunks_match_the_unchunked_head() {
    let (rows, d, v) = (11usize, 6usize, 9usize);
    let mut r = rng(5);
    let (h, w) = (widen(&randn(&mut r, rows * d, 1.0)), widen(&randn(&mut r, v * d, 1.0)));
    let t: Vec<i32> = (0..rows as i32).map(|i| if i % 4 == 3 { -100 } else { (i * 5) % v as i32 }).collect();
    for red in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let s = CrossEntropySpec { grad_scale: 0.75, ..spec(red, 0.05) };
        let (l_ref, dh_ref, dw_ref) = head_reference(&h, &w, &t, rows, d, v, s);
        for chunk in [1usize, 3, 4, 11, 64] {
            let mut l = vec![f32::NAN; l_ref.len()];
            let (mut dh, mut dw) = (vec![f64::NAN; rows * d], vec![f64::NAN; v * d]);
            let n = l.len();
            let ls = LinearCrossEntropySpec { ce: s, chunk_rows: chunk, accumulate_dw: false };
            linear_cross_entropy(
                View::host(&h, &[rows, d]).unwrap(),
                View::host(&w, &[v, d]).unwrap(),
                View::host(&t, &[rows]).unwrap(),
                ViewMut::host(&mut l, &[n]).unwrap(),
                Some((ViewMut::host(&mut dh, &[rows, d]).unwrap(), ViewMut::host(&mut dw, &[v, d]).unwrap())),
                None,
                None,
                ls,
            )
            .unwrap();
            let what = format!("{red:?} chunk {chunk}");
            // Losses pass through f32 row losses: 1e-7 relative.
            assert_close(&format!("{what} loss"), &l, &l_ref, Tol { atol: 1e-6, rtol: 1e-6 });
            assert_close(&format!("{what} dh"), &dh, &dh_ref, Tol { atol: 1e-13, rtol: 1e-12 });
            assert_close(&format!("{what} dw"), &dw, &dw_ref, Tol { atol: 1e-13, rtol: 1e-12 });
            // accumulate_dw adds to what dW held.
            let mut dw2 = vec![1.0f64; v * d];
            linear_cross_entropy(
                View::host(&h, &[rows, d]).unwrap(),
                View::host(&w, &[v, d]).unwrap(),
                View::host(&t, &[rows]).unwrap(),
                ViewMut::host(&mut l, &[n]).unwrap(),
                Some((ViewMut::host(&mut dh, &[rows, d]).unwrap(), ViewMut::host(&mut dw2, &[v, d]).unwrap())),
                None,
                None,
                LinearCrossEntropySpec { accumulate_dw: true, ..ls },
            )
            .unwrap();
            let plus: Vec<f64> = dw_ref.iter().map(|x| x + 1.0).collect();
            assert_close(&format!("{what} dw accumulated"), &dw2, &plus, Tol { atol: 1e-13, rtol: 1e-12 });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GPU

fn gpu_case<T: snug::Element + snug::ops::Real + snug::testing::ToF64>(dev: &snug::Device, rows: usize, v: usize, red: Reduction, eps: f32, tol: Tol) {
    let mut r = rng(10 + v as u64 + rows as u64);
    let z: Vec<T> = randn(&mut r, rows * v, 3.0).into_iter().map(|x| T::from_f32(x).unwrap()).collect();
    let z6: Vec<f64> = z.iter().map(|x| x.to_f64().unwrap()).collect();
    let t: Vec<i32> = (0..rows).map(|i| if i % 5 == 4 { -100 } else { ((i * 7919) % v) as i32 }).collect();
    let s = CrossEntropySpec { grad_scale: 1.0, ..spec(red, eps) };
    let (l_ref, g_ref) = grad_of(&z6, &t, v, s);
    let nl = l_ref.len();
    let mut plan = Plan::new();
    let bz = plan.add::<T>("logits", &[rows, v], Role::Activation).unwrap();
    let bt = plan.add::<i32>("targets", &[rows], Role::Activation).unwrap();
    let bl = plan.add::<f32>("loss", &[nl], Role::Activation).unwrap();
    let bw = plan.add::<f32>("ws", &[workspace_bytes(rows, red) / 4 + 1], Role::Workspace).unwrap();
    let mut arena = Arena::new(dev, &plan).unwrap();
    arena.upload(bt, &t).unwrap();
    let what = format!("{} rows {rows} V {v} {red:?} eps {eps}", T::DTYPE);
    let mut runs = Vec::new();
    for _ in 0..2 {
        // Loss only: the logits stay as they were.
        arena.upload(bz, &z).unwrap();
        poison(&mut arena, bl).unwrap();
        {
            let b = arena.borrow();
            cross_entropy(b.read(bz).unwrap(), b.read(bt).unwrap(), b.write(bl).unwrap(), Some(b.write(bw).unwrap()), s).unwrap();
        }
        assert_close(&format!("{what} loss only"), &arena.download(bl).unwrap(), &l_ref, tol);
        assert!(arena.download(bz).unwrap().iter().zip(&z).all(|(a, b)| bytemuck::bytes_of(a) == bytemuck::bytes_of(b)), "{what}: loss-only mode wrote the logits");
        poison(&mut arena, bl).unwrap();
        {
            let b = arena.borrow();
            cross_entropy_in_place(b.write(bz).unwrap(), b.read(bt).unwrap(), b.write(bl).unwrap(), Some(b.write(bw).unwrap()), s).unwrap();
        }
        let (l, g) = (arena.download(bl).unwrap(), arena.download(bz).unwrap());
        assert_close(&format!("{what} loss"), &l, &l_ref, tol);
        // Gradient entries are ~1/V-sized probabilities: absolute tolerance scaled to the row.
        let gscale = if red == Reduction::Mean { 1.0 / t.iter().filter(|&&x| x != -100).count() as f64 } else { 1.0 };
        assert_close(&format!("{what} grad"), &g, &g_ref, Tol { atol: tol.atol * gscale, rtol: tol.rtol });
        runs.push((l.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), g.iter().map(|x| x.to_f64().unwrap().to_bits()).collect::<Vec<_>>()));
    }
    assert!(runs[0] == runs[1], "{what}: two runs differ");
}

#[test]
fn gpu_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_matches_twin") else { return };
    for (rows, v) in [(3usize, 7usize), (17, 1000), (6, 50_257), (70_000, 3), (2, 1)] {
        for red in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            gpu_case::<f32>(&dev, rows, v, red, 0.1, Tol { atol: 1e-6, rtol: 2e-5 });
            gpu_case::<half::bf16>(&dev, rows, v, red, 0.0, Tol { atol: 1e-3, rtol: 1e-2 });
        }
    }
}

#[test]
fn gpu_backward_and_fused_head_match_twin() {
    let Some(dev) = gpu_or_skip("gpu_backward_and_fused_head_match_twin") else { return };
    let (rows, d, v) = (13usize, 24usize, 1001usize);
    let mut r = rng(20);
    let (h, w) = (randn(&mut r, rows * d, 0.5), randn(&mut r, v * d, 0.5));
    let t: Vec<i32> = (0..rows as i32).map(|i| if i == 4 { -100 } else { (i * 37) % v as i32 }).collect();
    let s = CrossEntropySpec { grad_scale: 1.0, ..spec(Reduction::Mean, 0.1) };
    let (l_ref, dh_ref, dw_ref) = head_reference(&widen(&h), &widen(&w), &t, rows, d, v, s);
    let chunk = 5;
    let mut plan = Plan::new();
    let (bh, bw) = (plan.add::<f32>("h", &[rows, d], Role::Activation).unwrap(), plan.add::<f32>("w", &[v, d], Role::Param).unwrap());
    let bt = plan.add::<i32>("targets", &[rows], Role::Activation).unwrap();
    let bl = plan.add::<f32>("loss", &[1], Role::Activation).unwrap();
    let (bdh, bdw) = (plan.add::<f32>("dh", &[rows, d], Role::Grad).unwrap(), plan.add::<f32>("dw", &[v, d], Role::Grad).unwrap());
    let bws = plan.add::<f32>("ws", &[linear_workspace_bytes(rows, v, chunk, Reduction::Mean, snug::DType::F32) / 4], Role::Workspace).unwrap();
    let mut arena = Arena::new(&dev, &plan).unwrap();
    arena.upload(bh, &h).unwrap();
    arena.upload(bw, &w).unwrap();
    arena.upload(bt, &t).unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        for b in [bl, bdh, bdw] {
            poison(&mut arena, b).unwrap();
        }
        {
            let b = arena.borrow();
            let ls = LinearCrossEntropySpec { ce: s, chunk_rows: chunk, accumulate_dw: false };
            linear_cross_entropy(b.read(bh).unwrap(), b.read(bw).unwrap(), b.read(bt).unwrap(), b.write(bl).unwrap(), Some((b.write(bdh).unwrap(), b.write(bdw).unwrap())), Some(b.write(bws).unwrap()), None, ls).unwrap();
        }
        let (l, dh, dw) = (arena.download(bl).unwrap(), arena.download(bdh).unwrap(), arena.download(bdw).unwrap());
        assert_close("fused head loss", &l, &l_ref, Tol { atol: 1e-6, rtol: 2e-5 });
        assert_close("fused head dh", &dh, &dh_ref, Tol { atol: 1e-6, rtol: 1e-4 });
        assert_close("fused head dw", &dw, &dw_ref, Tol { atol: 1e-6, rtol: 1e-4 });
        runs.push([l, dh, dw].concat().iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }
    assert!(runs[0] == runs[1], "fused head: two runs differ");
    // The backward's scaling on the device.
    let (rows, v) = (4usize, 300usize);
    let g: Vec<f32> = randn(&mut r, rows * v, 1.0);
    let up = [0.5f32, -2.0, 3.0, 1.0];
    let mut plan = Plan::new();
    let (bg, bu) = (plan.add::<f32>("g", &[rows, v], Role::Grad).unwrap(), plan.add::<f32>("up", &[rows], Role::Activation).unwrap());
    let mut arena = Arena::new(&dev, &plan).unwrap();
    arena.upload(bg, &g).unwrap();
    arena.upload(bu, &up).unwrap();
    {
        let b = arena.borrow();
        cross_entropy_backward(b.write(bg).unwrap(), b.read(bu).unwrap(), Reduction::None).unwrap();
    }
    let want: Vec<f64> = g.iter().enumerate().map(|(i, x)| (*x * up[i / v]) as f64).collect();
    assert_close("backward scale", &arena.download(bg).unwrap(), &want, Tol { atol: 0.0, rtol: 0.0 });
}
