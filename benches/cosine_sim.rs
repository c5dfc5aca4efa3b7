//! cosine_sim forward and backward at the seed-000 shape: x [B 8, N 19, T 960, D 64] (the
//! electrode vectors), y [8, 171, 960], clamp 0.99, eps 1e-8; f32 and bf16. Memory-bound at this
//! shape: floor = reading x (and dy) and writing y (dx) once; FLOPs 2·B·T·P·D for the pair dots
//! (the backward about twice that).

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::cosine_sim::{cosine_sim, cosine_sim_backward, DEFAULT_EPS};
use snug::ops::sym_scatter::Triangle;
use snug::ops::Real;
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Device, Plan, Role};

fn case<T: Real>(c: &mut Criterion, dev: &Device, gb: &mut GpuBench, [b, n, t, d]: [usize; 4]) {
    let np = Triangle::Strict.pairs(n);
    let mut plan = Plan::new();
    let (x, y) = (plan.add::<T>("x", &[b, n, t, d], Role::Activation).unwrap(), plan.add::<T>("y", &[b, np, t], Role::Activation).unwrap());
    let (dy, dx) = (plan.add::<T>("dy", &[b, np, t], Role::Grad).unwrap(), plan.add::<T>("dx", &[b, n, t, d], Role::Grad).unwrap());
    let (mut arena, measured) = measure_arena(dev, &plan).unwrap();
    let mut r = rng(1);
    let cv = |v: Vec<f32>| v.into_iter().map(|a| T::round_f64(a as f64)).collect::<Vec<T>>();
    arena.upload(x, &cv(randn(&mut r, b * n * t * d, 1.0))).unwrap();
    arena.upload(dy, &cv(randn(&mut r, b * np * t, 1.0))).unwrap();
    let name = format!("x={b}x{n}x{t}x{d},{}", T::DTYPE);
    let s = std::mem::size_of::<T>() as f64;
    let (xe, ye) = ((b * n * t * d) as f64, (b * np * t) as f64);
    let dots = 2.0 * ye * d as f64;
    let total = plan.total_bytes();
    let mut f = || {
        let v = arena.borrow();
        cosine_sim(v.read(x)?, v.write(y)?, Some(0.99), DEFAULT_EPS)
    };
    gb.report("cosine_sim", &name, Work { bytes: s * (xe + ye), flops: dots + 4.0 * xe, exps: 0.0 }, total, measured, true, &mut f).unwrap();
    c.bench_function(&format!("cosine_sim/{name}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
    let mut f = || {
        let v = arena.borrow();
        cosine_sim_backward(v.read(x)?, v.read(dy)?, v.write(dx)?, Some(0.99), DEFAULT_EPS)
    };
    gb.report("cosine_sim_backward", &name, Work { bytes: s * (2.0 * xe + ye), flops: 2.0 * dots + 6.0 * xe, exps: 0.0 }, total, measured, true, &mut f).unwrap();
    c.bench_function(&format!("cosine_sim_backward/{name}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
}

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench cosine_sim") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    case::<f32>(c, &dev, &mut gb, [8, 19, 960, 64]);
    case::<half::bf16>(c, &dev, &mut gb, [8, 19, 960, 64]);
}

criterion_group!(benches, bench);
criterion_main!(benches);
