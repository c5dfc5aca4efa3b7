//! Dropout at a V3 TCN activation (8 × 512 × 15,360 f32, p 0.15): memory-bound, floor 8 B/element.

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::dropout::dropout;
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Plan, Role};

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench dropout") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    let n = 8 * 512 * 15_360usize;
    let mut plan = Plan::new();
    let x = plan.add::<f32>("x", &[n], Role::Activation).unwrap();
    let y = plan.add::<f32>("y", &[n], Role::Activation).unwrap();
    let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
    arena.upload(x, &randn(&mut rng(1), n, 1.0)).unwrap();
    let mut f = || {
        let v = arena.borrow();
        dropout(v.read(x)?, v.write(y)?, 0.15, 7, 0)
    };
    gb.report("dropout", "p=0.15,n=8x512x15360", Work { bytes: 8.0 * n as f64, flops: 12.0 * n as f64, exps: 0.0 }, plan.total_bytes(), measured, true, &mut f).unwrap();
    c.bench_function("dropout/p=0.15,n=8x512x15360", |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
