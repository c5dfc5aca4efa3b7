//! The fused dynamic Laplacian PE (kernels/eigh.cu, src/ops/laplacian_pe.rs): the twin against an
//! independent construction of L, the interval repetition, the backward against finite
//! differences; the GPU kernels against the twin; bad input.

mod common;

use common::*;
use rand::Rng;
use snug::ops::eigh::{eigh, DEFAULT_EPS_REL};
use snug::ops::laplacian_pe::{laplacian_pe, laplacian_pe_backward};
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

/// Random nonnegative adjacencies [b, t, n, n] (not symmetric: the op symmetrises).
fn adjacencies(r: &mut rand_chacha::ChaCha8Rng, b: usize, t: usize, n: usize) -> Vec<f64> {
    (0..b * t * n * n).map(|_| r.random_range(0.0..1.0)).collect()
}

/// The seed's L, written independently: S = (A + Aᵀ)/2, d = max(row sums, 1e-3),
/// L = 1.001·I − D^-½ S D^-½.
fn seed_laplacian(a: &[f64], n: usize) -> Vec<f64> {
    let s: Vec<f64> = (0..n * n).map(|k| 0.5 * (a[k] + a[(k % n) * n + k / n])).collect();
    let d: Vec<f64> = (0..n).map(|i| s[i * n..(i + 1) * n].iter().sum::<f64>().max(1e-3)).collect();
    (0..n * n).map(|k| { let (i, j) = (k / n, k % n); (if i == j { 1.001 } else { 0.0 }) - s[k] / (d[i] * d[j]).sqrt() }).collect()
}

fn twin_pe(adj: &[f64], b: usize, t: usize, n: usize, k: usize, interval: usize) -> Vec<f64> {
    let mut pe = vec![0.0; b * t * n * k];
    laplacian_pe(View::host(adj, &[b, t, n, n]).unwrap(), ViewMut::host(&mut pe, &[b, t, n, k]).unwrap(), interval).unwrap();
    pe
}

#[allow(clippy::too_many_arguments)]
fn twin_pe_backward(adj: &[f64], gpe: &[f64], b: usize, t: usize, n: usize, k: usize, interval: usize, eps: f32) -> Vec<f64> {
    let mut g = vec![0.0; b * t * n * n];
    laplacian_pe_backward(View::host(adj, &[b, t, n, n]).unwrap(), View::host(gpe, &[b, t, n, k]).unwrap(), ViewMut::host(&mut g, &[b, t, n, n]).unwrap(), interval, eps)
        .unwrap();
    g
}

#[test]
fn twin_pe_holds_the_k_smallest_eigenvectors_of_the_seed_laplacian() {
    let mut r = rng(20);
    for (n, k) in [(1usize, 1usize), (2, 1), (5, 3), (19, 16), (32, 32)] {
        let adj = adjacencies(&mut r, 1, 1, n);
        let pe = twin_pe(&adj, 1, 1, n, k, 1);
        let l = seed_laplacian(&adj, n);
        let mut lw = vec![0.0; n];
        let mut lv = vec![0.0; n * n];
        eigh(View::host(&l, &[1, n, n]).unwrap(), ViewMut::host(&mut lw, &[1, n]).unwrap(), ViewMut::host(&mut lv, &[1, n, n]).unwrap(), None).unwrap();
        for c in 0..k {
            let col: Vec<f64> = (0..n).map(|i| pe[i * k + c]).collect();
            let lc: Vec<f64> = (0..n).map(|i| (0..n).map(|j| l[i * n + j] * col[j]).sum()).collect();
            let rq: f64 = lc.iter().zip(&col).map(|(x, y)| x * y).sum();
            let res = lc.iter().zip(&col).map(|(x, y)| (x - rq * y).powi(2)).sum::<f64>().sqrt();
            assert!((rq - lw[c]).abs() < 1e-10 && res < 1e-10, "n={n} c={c}: Rayleigh {rq} vs eigenvalue {}, residual {res:e}", lw[c]);
            assert!((col.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-12);
            let mut v = vec![0.0; n * n];
            for i in 0..n {
                v[i * n] = col[i];
            }
            assert!(sign_ok(&v, n, 0), "n={n} c={c}: sign convention");
        }
    }
}

#[test]
fn interval_computes_every_sth_step_and_repeats_it() {
    let mut r = rng(21);
    let (b, t, n, k) = (2usize, 7usize, 6usize, 3usize);
    let adj = adjacencies(&mut r, b, t, n);
    let every = twin_pe(&adj, b, t, n, k, 1);
    let sparse = twin_pe(&adj, b, t, n, k, 3);
    for bi in 0..b {
        for tt in 0..t {
            let t0 = tt / 3 * 3;
            let got = &sparse[(bi * t + tt) * n * k..][..n * k];
            let want = &every[(bi * t + t0) * n * k..][..n * k];
            assert_eq!(got, want, "b={bi} t={tt} should repeat t={t0}");
        }
    }
    // interval larger than T: everything repeats t = 0.
    let all0 = twin_pe(&adj, b, t, n, k, 100);
    for bi in 0..b {
        for tt in 0..t {
            assert_eq!(&all0[(bi * t + tt) * n * k..][..n * k], &every[bi * t * n * k..][..n * k]);
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    let mut r = rng(22);
    let (b, t, n, k, interval) = (1usize, 4usize, 6usize, 4usize, 2usize);
    let adj = adjacencies(&mut r, b, t, n);
    let gpe = widen(&randn(&mut r, b * t * n * k, 1.0));
    let g = twin_pe_backward(&adj, &gpe, b, t, n, k, interval, 0.0);
    let loss = |a: &[f64]| twin_pe(a, b, t, n, k, interval).iter().zip(&gpe).map(|(x, y)| x * y).sum::<f64>();
    let scale = g.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
    let h = 1e-6;
    for idx in 0..adj.len() {
        let (mut ap, mut am) = (adj.clone(), adj.clone());
        ap[idx] += h;
        am[idx] -= h;
        let fd = (loss(&ap) - loss(&am)) / (2.0 * h);
        assert!((fd - g[idx]).abs() <= 1e-6 * scale, "adj[{idx}]: analytic {:e}, finite difference {fd:e}", g[idx]);
    }
    // Timesteps 1 and 3 only repeat 0 and 2: their gradient is exactly zero.
    for tt in [1, 3] {
        assert!(g[tt * n * n..][..n * n].iter().all(|&x| x == 0.0));
    }
}

#[test]
fn clamped_degrees_and_degenerate_graphs_give_finite_gradients() {
    let mut r = rng(23);
    let n = 5;
    let mut adj = adjacencies(&mut r, 1, 1, n);
    for j in 0..n {
        adj[2 * n + j] = 0.0; // node 2 isolated: degree clamped
        adj[j * n + 2] = 0.0;
    }
    let gpe = widen(&randn(&mut r, n * n, 1.0));
    let g = twin_pe_backward(&adj, &gpe, 1, 1, n, n, 1, DEFAULT_EPS_REL);
    assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
    let pe = twin_pe(&adj, 1, 1, n, n, 1);
    assert!(pe.iter().all(|x| x.is_finite()));
    // A NaN adjacency poisons its own group only.
    let mut two = adjacencies(&mut r, 1, 2, n);
    two[3] = f64::NAN;
    let pe = twin_pe(&two, 1, 2, n, 2, 1);
    assert!(pe[..n * 2].iter().all(|x| x.is_nan()) && pe[n * 2..].iter().all(|x| x.is_finite()));
}

#[test]
fn bad_input_is_a_typed_error() {
    let adj = vec![0.0f32; 2 * 3 * 4 * 4];
    let mut pe = vec![0.0f32; 2 * 3 * 4 * 5];
    let r = laplacian_pe(View::host(&adj, &[2, 3, 4, 4]).unwrap(), ViewMut::host(&mut pe, &[2, 3, 4, 5]).unwrap(), 1);
    assert!(matches!(r, Err(Error::Shape { arg: "pe", .. })), "k > n: {r:?}");
    let r = laplacian_pe(View::host(&adj, &[2, 3, 4, 4]).unwrap(), ViewMut::host(&mut pe[..2 * 3 * 4 * 2], &[2, 3, 4, 2]).unwrap(), 0);
    assert!(matches!(r, Err(Error::Value { arg: "interval", .. })), "interval 0: {r:?}");
    let r = laplacian_pe(View::host(&adj, &[2, 3, 2, 8]).unwrap(), ViewMut::host(&mut pe[..2 * 3 * 2 * 2], &[2, 3, 2, 2]).unwrap(), 1);
    assert!(matches!(r, Err(Error::Shape { arg: "adj", .. })), "non-square: {r:?}");
    let r = laplacian_pe(View::host(&adj, &[6, 4, 4]).unwrap(), ViewMut::host(&mut pe[..6 * 4 * 2], &[6, 4, 2]).unwrap(), 1);
    assert!(matches!(r, Err(Error::Shape { arg: "adj", .. })), "rank 3: {r:?}");
    let r = laplacian_pe(View::host(&adj, &[2, 3, 4, 4]).unwrap(), ViewMut::host(&mut pe[..3 * 3 * 4], &[3, 3, 4, 1]).unwrap(), 1);
    assert!(matches!(r, Err(Error::Shape { arg: "pe", .. })), "batch mismatch: {r:?}");
    let big = vec![0.0f32; 33 * 33];
    let mut pe33 = vec![0.0f32; 33];
    let r = laplacian_pe(View::host(&big, &[1, 1, 33, 33]).unwrap(), ViewMut::host(&mut pe33, &[1, 1, 33, 1]).unwrap(), 1);
    assert!(matches!(r, Err(Error::Shape { arg: "adj", .. })), "n = 33: {r:?}");
    let gpe = vec![0.0f32; 2 * 3 * 4 * 2];
    let mut gadj = vec![0.0f32; 2 * 3 * 4 * 4];
    let r = laplacian_pe_backward(View::host(&adj, &[2, 3, 4, 4]).unwrap(), View::host(&gpe, &[2, 3, 4, 2]).unwrap(), ViewMut::host(&mut gadj[..16], &[1, 1, 4, 4]).unwrap(), 1, 0.0);
    assert!(matches!(r, Err(Error::Shape { arg: "gadj", .. })), "{r:?}");
    let r = laplacian_pe_backward(View::host(&adj, &[2, 3, 4, 4]).unwrap(), View::host(&gpe, &[2, 3, 4, 2]).unwrap(), ViewMut::host(&mut gadj, &[2, 3, 4, 4]).unwrap(), 1, -1.0);
    assert!(matches!(r, Err(Error::Value { arg: "eps_rel", .. })), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

#[test]
fn gpu_laplacian_pe_matches_twin_forward_and_backward() {
    let Some(dev) = gpu_or_skip("gpu_laplacian_pe_matches_twin_forward_and_backward") else { return };
    let mut r = rng(30);
    for (b, t, n, k, interval) in [(2usize, 10usize, 5usize, 2usize, 1usize), (2, 10, 19, 16, 3), (1, 5, 32, 32, 2), (1, 4, 1, 1, 1), (3, 7, 19, 4, 7)] {
        let adj64 = adjacencies(&mut r, b, t, n);
        let adj: Vec<f32> = adj64.iter().map(|&x| x as f32).collect();
        let gpe = randn(&mut r, b * t * n * k, 1.0);
        let adj_r = widen(&adj);
        let want_pe = twin_pe(&adj_r, b, t, n, k, interval);
        let want_g = twin_pe_backward(&adj_r, &widen(&gpe), b, t, n, k, interval, DEFAULT_EPS_REL);
        let mut plan = Plan::new();
        let ba = plan.add::<f32>("adj", &[b, t, n, n], Role::Activation).unwrap();
        let bp = plan.add::<f32>("pe", &[b, t, n, k], Role::Activation).unwrap();
        let bg = plan.add::<f32>("gpe", &[b, t, n, k], Role::Grad).unwrap();
        let bga = plan.add::<f32>("gadj", &[b, t, n, n], Role::Grad).unwrap();
        let mut arena = Arena::new(&dev, &plan).unwrap();
        arena.upload(ba, &adj).unwrap();
        arena.upload(bg, &gpe).unwrap();
        poison(&mut arena, bp).unwrap();
        poison(&mut arena, bga).unwrap();
        {
            let bw = arena.borrow();
            laplacian_pe(bw.read(ba).unwrap(), bw.write(bp).unwrap(), interval).unwrap();
            laplacian_pe_backward(bw.read(ba).unwrap(), bw.read(bg).unwrap(), bw.write(bga).unwrap(), interval, DEFAULT_EPS_REL).unwrap();
        }
        let pe = arena.download(bp).unwrap();
        let g = arena.download(bga).unwrap();
        let what = format!("B={b} T={t} n={n} k={k} interval={interval}");
        // Compare the signed eigenvectors whose eigenvalue is separated from its neighbours by
        // at least 5e-3 (f32 error ~ 1e-7 / gap); closer ones are only defined up to a rotation.
        for g in 0..b * t {
            let l = seed_laplacian(&adj_r[g * n * n..][..n * n], n);
            let (mut lw, mut lv) = (vec![0.0; n], vec![0.0; n * n]);
            eigh(View::host(&l, &[1, n, n]).unwrap(), ViewMut::host(&mut lw, &[1, n]).unwrap(), ViewMut::host(&mut lv, &[1, n, n]).unwrap(), None).unwrap();
            for c in 0..k {
                let gap = [c.checked_sub(1).map(|p| lw[c] - lw[p]), lw.get(c + 1).map(|x| x - lw[c])].into_iter().flatten().fold(f64::INFINITY, f64::min);
                if gap < 5e-3 {
                    continue;
                }
                for i in 0..n {
                    let (x, y) = (pe[g * n * k + i * k + c] as f64, want_pe[g * n * k + i * k + c]);
                    assert!((x - y).abs() <= 1e-4, "{what}: group {g} pe[{i}, {c}] {x} vs {y} (gap {gap:e})");
                }
            }
        }
        let scale = want_g.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
        for (i, (&x, &y)) in g.iter().zip(&want_g).enumerate() {
            assert!((x as f64 - y).abs() <= 1e-3 * scale, "{what}: gadj[{i}] {x} vs {y}");
        }
    }
}

#[test]
fn gpu_laplacian_pe_seed_shape_properties() {
    // The seed's shape: B 8, T 960, 19 nodes, k 16, every timestep; adjacency softplus-weighted,
    // per-row top-3, symmetrised (often disconnected: repeated eigenvalues), so check properties
    // rather than vectors: orthonormal columns, L·pe = λ·pe with the twin's ascending eigenvalues.
    let Some(dev) = gpu_or_skip("gpu_laplacian_pe_seed_shape_properties") else { return };
    let mut r = rng(31);
    let (b, t, n, k) = (8usize, 960usize, 19usize, 16usize);
    let mut adj = vec![0.0f32; b * t * n * n];
    for g in 0..b * t {
        let w: Vec<f32> = randn(&mut r, n * n, 1.0).iter().map(|x| (1.0 + x.exp()).ln()).collect();
        for i in 0..n {
            let mut idx: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            idx.sort_by(|&a, &c| w[i * n + c].total_cmp(&w[i * n + a]));
            for &j in &idx[..3] {
                adj[g * n * n + i * n + j] = w[i * n + j];
                adj[g * n * n + j * n + i] = w[i * n + j];
            }
        }
    }
    let mut plan = Plan::new();
    let ba = plan.add::<f32>("adj", &[b, t, n, n], Role::Activation).unwrap();
    let bp = plan.add::<f32>("pe", &[b, t, n, k], Role::Activation).unwrap();
    let mut arena = Arena::new(&dev, &plan).unwrap();
    arena.upload(ba, &adj).unwrap();
    poison(&mut arena, bp).unwrap();
    {
        let bw = arena.borrow();
        laplacian_pe(bw.read(ba).unwrap(), bw.write(bp).unwrap(), 1).unwrap();
    }
    let pe = arena.download(bp).unwrap();
    for g in (0..b * t).step_by(37) {
        let l = seed_laplacian(&widen(&adj[g * n * n..][..n * n]), n);
        let mut lw = vec![0.0; n];
        let mut lv = vec![0.0; n * n];
        eigh(View::host(&l, &[1, n, n]).unwrap(), ViewMut::host(&mut lw, &[1, n]).unwrap(), ViewMut::host(&mut lv, &[1, n, n]).unwrap(), None).unwrap();
        let p = widen(&pe[g * n * k..][..n * k]);
        for c in 0..k {
            for d in 0..k {
                let dot: f64 = (0..n).map(|i| p[i * k + c] * p[i * k + d]).sum();
                assert!((dot - if c == d { 1.0 } else { 0.0 }).abs() < 1e-5, "group {g}: columns {c}, {d} dot {dot}");
            }
            let res = (0..n).map(|i| ((0..n).map(|j| l[i * n + j] * p[j * k + c]).sum::<f64>() - lw[c] * p[i * k + c]).powi(2)).sum::<f64>().sqrt();
            assert!(res < 1e-4, "group {g} column {c}: |L v - λ v| = {res:e}");
        }
    }
}
