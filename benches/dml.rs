//! DML loss + gradient in one pass (and the sampler) at seed 004's sizes: B×L = 1×16,000,
//! 1×131,072 and 16×131,072, K 6 (seed) and 10, 8 bits. Memory-bound: floor = read params (3K)
//! and targets, write the gradient (3K) and the loss: (6K + 2)·4 bytes per position (f32).

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::dml::{dml_loss, dml_sample, loss_workspace_bytes, DmlSpec, Reduction, Target};
use snug::testing::{gpu_or_skip, randn, rng, uniform};
use snug::{Plan, Role};

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench dml") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    for (b, l) in [(1usize, 16_000usize), (1, 131_072), (16, 131_072)] {
        for k in [6usize, 10] {
            let case = format!("B={b},L={l},K={k},bits=8,mean");
            let spec = DmlSpec { k, bits: 8, reduction: Reduction::Mean, checked: false };
            let mut plan = Plan::new();
            let p = plan.add::<f32>("params", &[b, 3 * k, l], Role::Activation).unwrap();
            let g = plan.add::<f32>("grad", &[b, 3 * k, l], Role::Grad).unwrap();
            let t = plan.add::<u32>("target", &[b, l], Role::Io).unwrap();
            let loss = plan.add::<f32>("loss", &[1], Role::Io).unwrap();
            let ws = plan.add::<f32>("ws", &[loss_workspace_bytes(b, l, Reduction::Mean) / 4], Role::Workspace).unwrap();
            let s = plan.add::<f32>("samples", &[b, l], Role::Io).unwrap();
            let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
            let mut r = rng(1);
            arena.upload(p, &randn(&mut r, b * 3 * k * l, 1.0)).unwrap();
            arena.upload(t, &uniform(&mut r, b * l, 0.0, 255.99).iter().map(|&v| v as u32).collect::<Vec<_>>()).unwrap();
            let n = (b * l) as f64;
            let mut f = || {
                let v = arena.borrow();
                dml_loss(v.read(p)?, Target::Bins(v.read(t)?), v.write(loss)?, Some(v.write(g)?), Some(v.write(ws)?), spec)
            };
            gb.report("dml_loss", &case, Work { bytes: (6 * k + 2) as f64 * 4.0 * n, flops: 60.0 * k as f64 * n, exps: 12.0 * k as f64 * n }, plan.total_bytes(), measured, true, &mut f).unwrap();
            c.bench_function(&format!("dml_loss/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
            let mut h = || {
                let v = arena.borrow();
                dml_sample(v.read(p)?, v.write(s)?, k, 8, 7, 1.0)
            };
            gb.report("dml_sample", &case, Work { bytes: (3 * k + 1) as f64 * 4.0 * n, flops: 10.0 * k as f64 * n, exps: 2.0 * k as f64 * n }, plan.total_bytes(), measured, true, &mut h).unwrap();
            c.bench_function(&format!("dml_sample/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut h).unwrap()));
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
