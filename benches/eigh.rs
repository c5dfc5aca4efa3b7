//! Batched eigh (and its backward, and the fused Laplacian PE) at the seed's shapes. Prints time,
//! matrices/s, % of the SIMT FLOP floor (6 Jacobi sweeps of 9·n²·(n−1) FLOPs each — the count
//! f32 typically needs at n ≤ 32; see docs/perf.md) and planned vs measured memory. Peer:
//! benches/peers/eigh.py (`torch.linalg.eigh`, cuSOLVER syevjBatched) on the same cases.

use criterion::{criterion_group, criterion_main, Criterion};
use rand::Rng;
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::eigh::{eigh, eigh_backward, DEFAULT_EPS_REL};
use snug::ops::laplacian_pe::laplacian_pe;
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Plan, Role};

/// Sweeps assumed by the floor (f32 Jacobi at n ≤ 32 takes 5–9).
const FLOOR_SWEEPS: f64 = 6.0;

fn jacobi_flops(batch: usize, n: usize) -> f64 {
    let n = n as f64;
    batch as f64 * FLOOR_SWEEPS * 9.0 * n * n * (n - 1.0)
}

fn symmetric(batch: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let x = randn(&mut r, batch * n * n, 1.0);
    (0..batch * n * n)
        .map(|k| {
            let (b, i, j) = (k / (n * n), (k / n) % n, k % n);
            0.5 * (x[k] + x[b * n * n + j * n + i])
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench eigh") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    for (case, batch, n) in [("batch=7680,n=19", 7680usize, 19usize), ("batch=1000000,n=19", 1_000_000, 19), ("batch=7680,n=32", 7680, 32), ("batch=65536,n=8", 65536, 8)] {
        let mut plan = Plan::new();
        let a = plan.add::<f32>("a", &[batch, n, n], Role::Activation).unwrap();
        let w = plan.add::<f32>("w", &[batch, n], Role::Saved).unwrap();
        let v = plan.add::<f32>("v", &[batch, n, n], Role::Saved).unwrap();
        let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
        arena.upload(a, &symmetric(batch, n, 1)).unwrap();
        let mut f = || {
            let b = arena.borrow();
            eigh(b.read(a)?, b.write(w)?, b.write(v)?, None)
        };
        let work = Work { bytes: (4 * batch * (2 * n * n + n)) as f64, flops: jacobi_flops(batch, n), exps: 0.0 };
        gb.report("eigh", case, work, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("eigh/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
    }

    // Backward at the seed shape: 3 n³ FMAs per matrix.
    let (batch, n) = (7680usize, 19usize);
    let mut plan = Plan::new();
    let w = plan.add::<f32>("w", &[batch, n], Role::Saved).unwrap();
    let v = plan.add::<f32>("v", &[batch, n, n], Role::Saved).unwrap();
    let gw = plan.add::<f32>("gw", &[batch, n], Role::Grad).unwrap();
    let gv = plan.add::<f32>("gv", &[batch, n, n], Role::Grad).unwrap();
    let ga = plan.add::<f32>("ga", &[batch, n, n], Role::Grad).unwrap();
    let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
    let mut r = rng(2);
    arena.upload(w, &randn(&mut r, batch * n, 1.0)).unwrap();
    arena.upload(v, &randn(&mut r, batch * n * n, 0.2)).unwrap();
    arena.upload(gw, &randn(&mut r, batch * n, 1.0)).unwrap();
    arena.upload(gv, &randn(&mut r, batch * n * n, 1.0)).unwrap();
    let mut f = || {
        let b = arena.borrow();
        eigh_backward(b.read(w)?, b.read(v)?, Some(b.read(gw)?), Some(b.read(gv)?), b.write(ga)?, DEFAULT_EPS_REL)
    };
    let work = Work { bytes: (4 * batch * (4 * n * n + 2 * n)) as f64, flops: (6 * batch * n * n * n) as f64, exps: 0.0 };
    gb.report("eigh_backward", "batch=7680,n=19", work, plan.total_bytes(), measured, true, &mut f).unwrap();
    c.bench_function("eigh_backward/batch=7680,n=19", |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));

    // The seed's dynamic PE: adjacency (uniform [0, 1), symmetric, zero diagonal) → pe, k = 16.
    let (b, t, n, k) = (8usize, 960usize, 19usize, 16usize);
    let mut plan = Plan::new();
    let adj = plan.add::<f32>("adj", &[b, t, n, n], Role::Activation).unwrap();
    let pe = plan.add::<f32>("pe", &[b, t, n, k], Role::Activation).unwrap();
    let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
    let mut r = rng(3);
    let mut host = vec![0.0f32; b * t * n * n];
    for g in 0..b * t {
        for i in 0..n {
            for j in i + 1..n {
                let x = r.random_range(0.0..1.0f32);
                host[g * n * n + i * n + j] = x;
                host[g * n * n + j * n + i] = x;
            }
        }
    }
    arena.upload(adj, &host).unwrap();
    let mut f = || {
        let bw = arena.borrow();
        laplacian_pe(bw.read(adj)?, bw.write(pe)?, 1)
    };
    let work = Work { bytes: (4 * b * t * (n * n + n * k)) as f64, flops: jacobi_flops(b * t, n), exps: 0.0 };
    gb.report("laplacian_pe", "B=8,T=960,n=19,k=16,interval=1", work, plan.total_bytes(), measured, true, &mut f).unwrap();
    c.bench_function("laplacian_pe/B=8,T=960,n=19,k=16,interval=1", |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
