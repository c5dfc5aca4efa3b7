//! Activations and axpby at a V3 TCN-sized tensor (8 × 512 × 15,360 f32 = 252 MB): memory-bound,
//! floor = bytes moved at HBM bandwidth (forward 8 B/element, backward 12, axpby 12).

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::elementwise::{activation, activation_backward, axpby, Act};
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Plan, Role};

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench elementwise") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    let n = 8 * 512 * 15_360usize;
    let mut plan = Plan::new();
    let t: Vec<_> = ["x", "dy", "y", "dx"].iter().map(|nm| plan.add::<f32>(*nm, &[n], Role::Activation).unwrap()).collect();
    let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
    let mut r = rng(1);
    arena.upload(t[0], &randn(&mut r, n, 2.0)).unwrap();
    arena.upload(t[1], &randn(&mut r, n, 1.0)).unwrap();
    let e = n as f64;
    for (name, a) in [("relu", Act::Relu), ("gelu_tanh", Act::GeluTanh), ("gelu_erf", Act::GeluErf), ("silu", Act::Silu)] {
        let case = format!("{name},n=8x512x15360");
        let mut f = || {
            let v = arena.borrow();
            activation(v.read(t[0])?, v.write(t[2])?, a)
        };
        gb.report("activation", &case, Work { bytes: 8.0 * e, flops: 10.0 * e, exps: e }, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("activation/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
        let mut g = || {
            let v = arena.borrow();
            activation_backward(v.read(t[0])?, v.read(t[1])?, v.write(t[3])?, a)
        };
        gb.report("activation_backward", &case, Work { bytes: 12.0 * e, flops: 14.0 * e, exps: 2.0 * e }, plan.total_bytes(), measured, true, &mut g).unwrap();
        c.bench_function(&format!("activation_backward/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut g).unwrap()));
    }
    let mut h = || {
        let v = arena.borrow();
        axpby(1.0, v.read(t[0])?, 1.0, Some(v.read(t[1])?), v.write(t[2])?)
    };
    gb.report("axpby", "n=8x512x15360", Work { bytes: 12.0 * e, flops: 2.0 * e, exps: 0.0 }, plan.total_bytes(), measured, true, &mut h).unwrap();
    c.bench_function("axpby/n=8x512x15360", |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut h).unwrap()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
