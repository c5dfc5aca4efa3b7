//! sym_scatter / triu_pairs: the pair index helpers against an enumeration of the triangle (and
//! each other) for every n ≤ 64, the f64 twins against hand-written matrices and the
//! `torch.triu_indices` order, the backwards as adjoints and by finite differences, the round trip
//! triu_pairs(sym_scatter(p)) = p, bad input; the GPU kernels (f32 and bf16, both triangles, the
//! seed's 7,680 matrices of 19 × 19, n up to 64, partial chunks; poisoned outputs, two runs
//! bitwise) against the twin — which ties the header's pair formulas to the Rust ones.

use snug::ops::sym_scatter::{pair_index, pair_row_col, sym_scatter, sym_scatter_backward, triu_pairs, triu_pairs_backward, Triangle, MAX_N};
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

const TRIS: [Triangle; 2] = [Triangle::Strict, Triangle::WithDiagonal];

fn f64v(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(|x| x as f64).collect()
}

/// The triangle's (i, j) in torch.triu_indices order, by plain enumeration.
fn enumerate(n: usize, tri: Triangle) -> Vec<(usize, usize)> {
    let off = usize::from(tri == Triangle::Strict);
    (0..n).flat_map(|i| (i + off..n).map(move |j| (i, j))).collect()
}

fn scatter(p: &[f64], lead: &[usize], n: usize, tri: Triangle, diag: f32) -> Vec<f64> {
    let mut ps = lead.to_vec();
    ps.push(tri.pairs(n));
    let mut a_s = lead.to_vec();
    a_s.extend([n, n]);
    let mut a = vec![f64::NAN; a_s.iter().product()];
    sym_scatter(View::host(p, &ps).unwrap(), n, tri, diag, ViewMut::host(&mut a, &a_s).unwrap()).unwrap();
    a
}

fn gather(a: &[f64], batch: usize, n: usize, tri: Triangle, backward: bool) -> Vec<f64> {
    let mut p = vec![f64::NAN; batch * tri.pairs(n)];
    let (a_v, p_v) = (View::host(a, &[batch, n, n]).unwrap(), ViewMut::host(&mut p, &[batch, tri.pairs(n)]).unwrap());
    if backward { sym_scatter_backward(a_v, n, tri, p_v) } else { triu_pairs(a_v, tri, p_v) }.unwrap();
    p
}

#[test]
fn pair_helpers_match_the_enumeration_for_every_n() {
    for tri in TRIS {
        for n in 0..=MAX_N + 3 {
            let pairs = enumerate(n, tri);
            assert_eq!(pairs.len(), tri.pairs(n), "{tri:?} n {n}");
            for (p, &(i, j)) in pairs.iter().enumerate() {
                assert_eq!(pair_index(i, j, n, tri), Some(p), "{tri:?} n {n} ({i}, {j})");
                assert_eq!(pair_row_col(p, n, tri), Some((i, j)), "{tri:?} n {n} p {p}");
            }
            assert_eq!(pair_row_col(pairs.len(), n, tri), None);
            for i in 0..n + 1 {
                for j in 0..n + 1 {
                    let inside = j < n && if tri == Triangle::Strict { i < j } else { i <= j };
                    assert_eq!(pair_index(i, j, n, tri).is_some(), inside, "{tri:?} n {n} ({i}, {j})");
                }
            }
        }
    }
    // Closed forms: P = 171 at the seed's n = 19; (0, 1) first, (17, 18) last.
    assert_eq!(Triangle::Strict.pairs(19), 171);
    assert_eq!(Triangle::WithDiagonal.pairs(19), 190);
    assert_eq!(pair_index(17, 18, 19, Triangle::Strict), Some(170));
    assert_eq!(pair_index(1, 2, 19, Triangle::Strict), Some(18));
    assert_eq!(pair_index(1, 1, 19, Triangle::WithDiagonal), Some(19));
}

#[test]
fn twin_matches_hand_written_matrices() {
    // n = 3, Strict: pairs (0,1), (0,2), (1,2) = [1, 2, 3], diagonal 9.
    let a = scatter(&[1.0, 2.0, 3.0], &[], 3, Triangle::Strict, 9.0);
    assert_eq!(a, [9.0, 1.0, 2.0, 1.0, 9.0, 3.0, 2.0, 3.0, 9.0]);
    // WithDiagonal: (0,0), (0,1), (0,2), (1,1), (1,2), (2,2) = [1..6].
    let a = scatter(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[], 3, Triangle::WithDiagonal, f32::NAN);
    assert_eq!(a, [1.0, 2.0, 3.0, 2.0, 4.0, 5.0, 3.0, 5.0, 6.0]);
    // Batch dims [2, 1]: each matrix from its own pairs.
    let a = scatter(&[1.0, 2.0, 3.0, -1.0, -2.0, -3.0], &[2, 1], 3, Triangle::Strict, 0.0);
    assert_eq!(&a[9..], [0.0, -1.0, -2.0, -1.0, 0.0, -3.0, -2.0, -3.0, 0.0]);
    // Backward: dpairs = da[i,j] + da[j,i]; Strict ignores the diagonal.
    let da: Vec<f64> = (1..=9).map(f64::from).collect(); // [[1,2,3],[4,5,6],[7,8,9]]
    assert_eq!(gather(&da, 1, 3, Triangle::Strict, true), [2.0 + 4.0, 3.0 + 7.0, 6.0 + 8.0]);
    assert_eq!(gather(&da, 1, 3, Triangle::WithDiagonal, true), [1.0, 6.0, 10.0, 5.0, 14.0, 9.0]);
    // triu_pairs reads the upper triangle only; its backward writes zeros below.
    assert_eq!(gather(&da, 1, 3, Triangle::Strict, false), [2.0, 3.0, 6.0]);
    assert_eq!(gather(&da, 1, 3, Triangle::WithDiagonal, false), [1.0, 2.0, 3.0, 5.0, 6.0, 9.0]);
    let mut g = vec![f64::NAN; 9];
    triu_pairs_backward(View::host(&[2.0, 3.0, 6.0], &[3]).unwrap(), Triangle::Strict, ViewMut::host(&mut g, &[3, 3]).unwrap()).unwrap();
    assert_eq!(g, [0.0, 2.0, 3.0, 0.0, 0.0, 6.0, 0.0, 0.0, 0.0]);
    triu_pairs_backward(View::host(&[1.0, 2.0, 3.0, 5.0, 6.0, 9.0], &[6]).unwrap(), Triangle::WithDiagonal, ViewMut::host(&mut g, &[3, 3]).unwrap()).unwrap();
    assert_eq!(g, [1.0, 2.0, 3.0, 0.0, 5.0, 6.0, 0.0, 0.0, 9.0]);
}

#[test]
fn twin_is_symmetric_round_trips_and_backwards_are_adjoints() {
    let mut g = rng(1);
    for tri in TRIS {
        for n in [2usize, 5, 19, 64] {
            let (b, np) = (3usize, tri.pairs(n));
            let p = f64v(randn(&mut g, b * np, 1.0));
            let a = scatter(&p, &[b], n, tri, 0.5);
            for m in 0..b {
                for i in 0..n {
                    for j in 0..n {
                        assert_eq!(a[m * n * n + i * n + j], a[m * n * n + j * n + i]);
                    }
                    if tri == Triangle::Strict {
                        assert_eq!(a[m * n * n + i * n + i], 0.5);
                    }
                }
            }
            // triu_pairs ∘ sym_scatter = identity on the pairs.
            assert_eq!(gather(&a, b, n, tri, false), p, "{tri:?} n {n}");
            // <sym_scatter(p) with diagonal 0, da> = <p, sym_scatter_backward(da)>, and the same for
            // triu_pairs / its backward, da not symmetric.
            let da = f64v(randn(&mut g, b * n * n, 1.0));
            let a0 = scatter(&p, &[b], n, tri, 0.0);
            let lhs: f64 = a0.iter().zip(&da).map(|(x, y)| x * y).sum();
            let rhs: f64 = p.iter().zip(&gather(&da, b, n, tri, true)).map(|(x, y)| x * y).sum();
            assert!((lhs - rhs).abs() <= 1e-12 * (1.0 + lhs.abs()), "{tri:?} n {n}: {lhs} vs {rhs}");
            let dp = f64v(randn(&mut g, b * np, 1.0));
            let mut up = vec![0.0f64; b * n * n];
            triu_pairs_backward(View::host(&dp, &[b, np]).unwrap(), tri, ViewMut::host(&mut up, &[b, n, n]).unwrap()).unwrap();
            let lhs: f64 = gather(&da, b, n, tri, false).iter().zip(&dp).map(|(x, y)| x * y).sum();
            let rhs: f64 = da.iter().zip(&up).map(|(x, y)| x * y).sum();
            assert!((lhs - rhs).abs() <= 1e-12 * (1.0 + lhs.abs()), "{tri:?} n {n}: {lhs} vs {rhs}");
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    // L(p) = Σ da ⊙ sym_scatter(p): dL/dp by central differences vs sym_scatter_backward.
    let mut g = rng(2);
    for tri in TRIS {
        let (b, n) = (2usize, 4usize);
        let np = tri.pairs(n);
        let p = f64v(randn(&mut g, b * np, 1.0));
        let da = f64v(randn(&mut g, b * n * n, 1.0));
        let loss = |p: &[f64]| scatter(p, &[b], n, tri, 0.3).iter().zip(&da).map(|(x, y)| x * y).sum::<f64>();
        let dp = gather(&da, b, n, tri, true);
        for k in 0..p.len() {
            let mut q = p.clone();
            q[k] += 1e-3;
            let lp = loss(&q);
            q[k] -= 2e-3;
            let fd = (lp - loss(&q)) / 2e-3;
            assert!((dp[k] - fd).abs() <= 1e-9 * (1.0 + fd.abs()), "{tri:?} dp[{k}]: {} vs {fd}", dp[k]);
        }
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let p = vec![1.0f64; 400];
    let mut a = vec![0.0f64; 8 * 64 * 64];
    let run = |ps: &[usize], n: usize, tri: Triangle, diag: f32, a_s: &[usize], a: &mut [f64]| {
        let (lp, la) = (ps.iter().product::<usize>(), a_s.iter().product::<usize>());
        sym_scatter(View::host(&p[..lp], ps).unwrap(), n, tri, diag, ViewMut::host(&mut a[..la], a_s).unwrap())
    };
    assert!(run(&[2, 171], 19, Triangle::Strict, 0.0, &[2, 19, 19], &mut a).is_ok());
    assert!(run(&[1], 1, Triangle::WithDiagonal, 0.0, &[1, 1], &mut a).is_ok());
    for (ps, n, tri, a_s, arg) in [
        (&[2usize, 171][..], 65usize, Triangle::Strict, &[2usize, 65, 65][..], "n"),
        (&[2, 0], 1, Triangle::Strict, &[2, 1, 1], "n"),
        (&[2, 0], 0, Triangle::WithDiagonal, &[2, 0, 0], "n"),
        (&[2, 170], 19, Triangle::Strict, &[2, 19, 19], "pairs"),
        (&[2, 171], 19, Triangle::WithDiagonal, &[2, 19, 19], "pairs"),
        (&[0, 171], 19, Triangle::Strict, &[0, 19, 19], "pairs"),
        (&[], 19, Triangle::Strict, &[19, 19], "pairs"),
        (&[2, 171], 19, Triangle::Strict, &[19, 19, 2], "a"),
        (&[2, 171], 19, Triangle::Strict, &[3, 19, 19], "a"),
        (&[2, 171], 19, Triangle::Strict, &[2, 19, 18], "a"),
        (&[2, 171], 19, Triangle::Strict, &[2, 361], "a"),
    ] {
        let e = run(ps, n, tri, 0.0, a_s, &mut a);
        let (want_value, want_shape) = (arg == "n", arg != "n");
        let ok = match &e {
            Err(Error::Value { arg: a, .. }) => want_value && *a == arg,
            Err(Error::Shape { arg: a, .. }) => want_shape && *a == arg,
            _ => false,
        };
        assert!(ok, "{ps:?} n {n} {tri:?} {a_s:?}: {e:?}");
    }
    for d in [f32::NAN, f32::INFINITY] {
        let e = run(&[2, 171], 19, Triangle::Strict, d, &[2, 19, 19], &mut a);
        assert!(matches!(e, Err(Error::Value { arg: "diagonal", .. })), "{e:?}");
        assert!(run(&[2, 190], 19, Triangle::WithDiagonal, d, &[2, 19, 19], &mut a).is_ok(), "diagonal ignored with the diagonal in the pairs");
    }
    // Backward and triu_pairs: the argument names of each function.
    let mut dp = vec![0.0f64; 400];
    let e = sym_scatter_backward(View::host(&a[..722], &[2, 19, 19]).unwrap(), 19, Triangle::Strict, ViewMut::host(&mut dp[..340], &[2, 170]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "dpairs", .. })), "{e:?}");
    let e = sym_scatter_backward(View::host(&a[..720], &[2, 18, 20]).unwrap(), 19, Triangle::Strict, ViewMut::host(&mut dp[..342], &[2, 171]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "da", .. })), "{e:?}");
    let e = triu_pairs(View::host(&a[..720], &[2, 18, 20]).unwrap(), Triangle::Strict, ViewMut::host(&mut dp[..342], &[2, 171]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "a", .. })), "{e:?}");
    let e = triu_pairs(View::host(&a[..722], &[2, 19, 19]).unwrap(), Triangle::WithDiagonal, ViewMut::host(&mut dp[..342], &[2, 171]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "pairs", .. })), "{e:?}");
    let e = triu_pairs(View::host(&a[..65 * 65], &[65, 65]).unwrap(), Triangle::Strict, ViewMut::host(&mut dp[..1], &[1]).unwrap());
    assert!(matches!(e, Err(Error::Value { arg: "n", .. })), "{e:?}");
    let e = triu_pairs_backward(View::host(&p[..342], &[2, 171]).unwrap(), Triangle::Strict, ViewMut::host(&mut a[..722], &[19, 19, 2]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "da", .. })), "{e:?}");
    let e = triu_pairs_backward(View::host(&p[..342], &[2, 171]).unwrap(), Triangle::Strict, ViewMut::host(&mut a[..800], &[2, 20, 20]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "dpairs", .. })), "{e:?}");
}

#[test]
fn device_mismatch_is_a_typed_error() {
    let Some(dev) = gpu_or_skip("device_mismatch_is_a_typed_error") else { return };
    let mut plan = Plan::new();
    let bp = plan.add::<f32>("pairs", &[2, 3], Role::Activation).unwrap();
    let mut arena = Arena::new(&dev, &plan).unwrap();
    let mut a = vec![0.0f32; 18];
    let b = arena.borrow();
    let e = sym_scatter(b.read(bp).unwrap(), 3, Triangle::Strict, 0.0, ViewMut::host(&mut a, &[2, 3, 3]).unwrap());
    assert!(matches!(e, Err(Error::DeviceMismatch { arg: "a", .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

/// All four functions on the GPU against the twin: scatters and gather exactly (values move),
/// sym_scatter_backward within one f32 rounding of the f64 sum (+ bf16's).
fn gpu_case<T: snug::Element + snug::ops::Real>(dev: &snug::Device, lead: &[usize], n: usize, tri: Triangle, diag: f32) {
    let batch: usize = lead.iter().product();
    let np = tri.pairs(n);
    let (mut ps, mut a_s) = (lead.to_vec(), lead.to_vec());
    ps.push(np);
    a_s.extend([n, n]);
    let mut g = rng(5 + (n * 3 + batch) as u64);
    let cv = |v: Vec<f32>| v.into_iter().map(|t| T::from_f32(t).unwrap()).collect::<Vec<T>>();
    let w64 = |v: &[T]| v.iter().map(|t| t.to_f64().unwrap()).collect::<Vec<f64>>();
    let (p, da) = (cv(randn(&mut g, batch * np, 1.0)), cv(randn(&mut g, batch * n * n, 1.0)));
    let (p6, da6) = (w64(&p), w64(&da));
    let want_a = scatter(&p6, lead, n, tri, diag);
    let want_up = {
        let mut u = vec![0.0f64; batch * n * n];
        triu_pairs_backward(View::host(&p6, &ps).unwrap(), tri, ViewMut::host(&mut u, &a_s).unwrap()).unwrap();
        u
    };
    let (want_dp, want_tp) = (gather(&da6, batch, n, tri, true), gather(&da6, batch, n, tri, false));
    let mut plan = Plan::new();
    let (bp, bda) = (plan.add::<T>("pairs", &ps, Role::Activation).unwrap(), plan.add::<T>("da", &a_s, Role::Grad).unwrap());
    let (ba, bup) = (plan.add::<T>("a", &a_s, Role::Activation).unwrap(), plan.add::<T>("up", &a_s, Role::Grad).unwrap());
    let (bdp, btp) = (plan.add::<T>("dpairs", &ps, Role::Grad).unwrap(), plan.add::<T>("triu", &ps, Role::Activation).unwrap());
    let mut arena = Arena::new(dev, &plan).unwrap();
    arena.upload(bp, &p).unwrap();
    arena.upload(bda, &da).unwrap();
    let what = format!("{} lead {lead:?} n {n} {tri:?}", T::DTYPE);
    let bf = if T::DTYPE == snug::DType::BF16 { 2f64.powi(-8) } else { 0.0 };
    let mut runs = Vec::new();
    for _ in 0..2 {
        for buf in [ba, bup, bdp, btp] {
            poison(&mut arena, buf).unwrap();
        }
        {
            let b = arena.borrow();
            sym_scatter(b.read(bp).unwrap(), n, tri, diag, b.write(ba).unwrap()).unwrap();
            triu_pairs_backward(b.read(bp).unwrap(), tri, b.write(bup).unwrap()).unwrap();
            sym_scatter_backward(b.read(bda).unwrap(), n, tri, b.write(bdp).unwrap()).unwrap();
            triu_pairs(b.read(bda).unwrap(), tri, b.write(btp).unwrap()).unwrap();
        }
        let mut bits = Vec::new();
        for (name, buf, want, exact) in [("a", ba, &want_a, true), ("up", bup, &want_up, true), ("dpairs", bdp, &want_dp, false), ("triu", btp, &want_tp, true)] {
            let got = w64(&arena.download(buf).unwrap());
            for (i, (x, w)) in got.iter().zip(want.iter()).enumerate() {
                // exact: moved values (the twin rounds the f64 diagonal to T as the kernel rounds the f32 one).
                let bound = if exact { 0.0 } else { (2f64.powi(-24) + bf) * w.abs() * 1.01 + 1e-300 };
                assert!((x - w).abs() <= bound, "{what}: {name}[{i}] {x} vs {w}");
            }
            bits.extend(got.iter().map(|v| v.to_bits()));
        }
        runs.push(bits);
    }
    assert!(runs[0] == runs[1], "{what}: runs differ");
}

#[test]
fn gpu_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_matches_twin") else { return };
    // The seed's [8, 960] batch of 19 × 19 (171 pairs); n = 2, 3 (tiny), 32, 45, 46 (one matrix per
    // block from here), 64 (the largest); batches leaving a partial last chunk; no batch dims.
    let cases: [(&[usize], usize); 9] = [(&[8, 960], 19), (&[37], 19), (&[1], 2), (&[], 3), (&[13], 5), (&[7], 32), (&[3, 3], 45), (&[5], 46), (&[4], 64)];
    for (lead, n) in cases {
        for tri in TRIS {
            gpu_case::<f32>(&dev, lead, n, tri, 0.0);
            gpu_case::<half::bf16>(&dev, lead, n, tri, -1.0 / 3.0);
        }
    }
    gpu_case::<f32>(&dev, &[2], 1, Triangle::WithDiagonal, 0.0);
}
