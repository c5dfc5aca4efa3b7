//! topk / topk_backward / topk_mask / topk_mask_backward at the seed-000 shape (7,680 matrices of
//! 19×19 per batch: 145,920 rows of n = 19, k = 3; f32 and bf16) and a larger row (65,536 rows of
//! n = 128, k = 16, f32). Memory-bound: floor = reading the inputs and writing the outputs once.

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::topk::{topk, topk_backward, topk_mask, topk_mask_backward};
use snug::ops::Real;
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Device, Plan, Role};

fn case<T: Real>(c: &mut Criterion, dev: &Device, gb: &mut GpuBench, rows: usize, n: usize, k: usize) {
    let mut plan = Plan::new();
    let (x, dy, dv) = (plan.add::<T>("x", &[rows, n], Role::Activation).unwrap(), plan.add::<T>("dy", &[rows, n], Role::Grad).unwrap(), plan.add::<T>("dv", &[rows, k], Role::Grad).unwrap());
    let (v, i) = (plan.add::<T>("values", &[rows, k], Role::Activation).unwrap(), plan.add::<i32>("indices", &[rows, k], Role::Activation).unwrap());
    let (y, dx) = (plan.add::<T>("y", &[rows, n], Role::Activation).unwrap(), plan.add::<T>("dx", &[rows, n], Role::Grad).unwrap());
    let (mut arena, measured) = measure_arena(dev, &plan).unwrap();
    let mut r = rng(1);
    let cv = |v: Vec<f32>| v.into_iter().map(|a| T::round_f64(a as f64)).collect::<Vec<T>>();
    arena.upload(x, &cv(randn(&mut r, rows * n, 1.0))).unwrap();
    arena.upload(dy, &cv(randn(&mut r, rows * n, 1.0))).unwrap();
    arena.upload(dv, &cv(randn(&mut r, rows * k, 1.0))).unwrap();
    let name = format!("rows={rows},n={n},k={k},{}", T::DTYPE);
    let (s, rw) = (std::mem::size_of::<T>() as f64, rows as f64);
    let (n, k) = (n as f64, k as f64);
    // Comparisons are not floating-point work: flops 0, the floor is the bytes.
    let work = |bytes: f64| Work { bytes, flops: 0.0, exps: 0.0 };
    let total = plan.total_bytes();
    let mut f = || {
        let b = arena.borrow();
        topk(b.read(x)?, b.write(v)?, b.write(i)?)
    };
    gb.report("topk", &name, work(rw * (n * s + k * (s + 4.0))), total, measured, true, &mut f).unwrap();
    c.bench_function(&format!("topk/{name}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
    let mut f = || {
        let b = arena.borrow();
        topk_backward(b.read(i)?, b.read(dv)?, b.write(dx)?)
    };
    gb.report("topk_backward", &name, work(rw * (k * (s + 4.0) + n * s)), total, measured, true, &mut f).unwrap();
    c.bench_function(&format!("topk_backward/{name}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
    let kk = k as usize;
    let mut f = || {
        let b = arena.borrow();
        topk_mask(b.read(x)?, kk, b.write(y)?)
    };
    gb.report("topk_mask", &name, work(rw * 2.0 * n * s), total, measured, true, &mut f).unwrap();
    c.bench_function(&format!("topk_mask/{name}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
    let mut f = || {
        let b = arena.borrow();
        topk_mask_backward(b.read(x)?, b.read(dy)?, kk, b.write(dx)?)
    };
    gb.report("topk_mask_backward", &name, work(rw * 3.0 * n * s), total, measured, true, &mut f).unwrap();
    c.bench_function(&format!("topk_mask_backward/{name}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
}

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench topk") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    case::<f32>(c, &dev, &mut gb, 7680 * 19, 19, 3);
    case::<half::bf16>(c, &dev, &mut gb, 7680 * 19, 19, 3);
    case::<f32>(c, &dev, &mut gb, 65_536, 128, 16);
}

criterion_group!(benches, bench);
criterion_main!(benches);
