//! Global gradient norm over a model-sized gradient set (~19.9 M f32 parameters in 48 tensors of mixed
//! sizes). Memory-bound: floor = read every gradient once (4 B/element).

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::grad_norm::{grad_norm, workspace_bytes};
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Plan, Role};

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench grad_norm") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    // A mix like a model's: big weight matrices, small biases and norms.
    let lens: Vec<usize> = (0..48).map(|i| if i % 3 == 0 { 512 } else { 512 * 1216 + i }).collect();
    let mut plan = Plan::new();
    let bufs: Vec<_> = lens.iter().enumerate().map(|(i, &n)| plan.add::<f32>(format!("g{i}"), &[n], Role::Grad).unwrap()).collect();
    let norm = plan.add::<f32>("norm", &[1], Role::Io).unwrap();
    let ws = plan.add::<f32>("ws", &[workspace_bytes(&lens) / 4], Role::Workspace).unwrap();
    let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
    let mut r = rng(1);
    for (b, &n) in bufs.iter().zip(&lens) {
        arena.upload(*b, &randn(&mut r, n, 1.0)).unwrap();
    }
    let total: usize = lens.iter().sum();
    let case = format!("tensors=48,elements={total}");
    let mut f = || {
        let v = arena.borrow();
        let views = bufs.iter().map(|b| v.read(*b)).collect::<snug::Result<Vec<_>>>()?;
        grad_norm(&views, v.write(norm)?, Some(v.write(ws)?))
    };
    gb.report("grad_norm", &case, Work { bytes: 4.0 * total as f64, flops: 2.0 * total as f64, exps: 0.0 }, plan.total_bytes(), measured, true, &mut f).unwrap();
    c.bench_function(&format!("grad_norm/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
