//! repeat_interleave forward and backward at seed 000's shapes: the head's nearest upsample ×16 of
//! [8, 19, 960] → [8, 19, 15360] (`upsample_nearest`, inner 1) and a ×16 repeat along T with
//! inner > 1 ([8, 960, 64] → [8, 15360, 64], axis 1), f32 and bf16. Memory-bound: floor = read the
//! short tensor once and write the long one once (forward), read the long one and write the short
//! one (backward): (1 + r)·|x| elements either way; the backward's r − 1 adds per element are free.

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::repeat_interleave::{repeat_interleave, repeat_interleave_backward, upsample_nearest, upsample_nearest_backward};
use snug::ops::Real;
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Device, Plan, Role};

fn case<T: Real>(c: &mut Criterion, dev: &Device, gb: &mut GpuBench, shape: [usize; 3], axis: usize, r: usize) {
    let mut long = shape;
    long[axis] *= r;
    let n: usize = shape.iter().product();
    let mut plan = Plan::new();
    let (x, y) = (plan.add::<T>("x", &shape, Role::Activation).unwrap(), plan.add::<T>("y", &long, Role::Activation).unwrap());
    let (dy, dx) = (plan.add::<T>("dy", &long, Role::Grad).unwrap(), plan.add::<T>("dx", &shape, Role::Grad).unwrap());
    let (mut arena, measured) = measure_arena(dev, &plan).unwrap();
    let mut g = rng(1);
    let cv = |v: Vec<f32>| v.into_iter().map(|t| T::from_f32(t).unwrap()).collect::<Vec<T>>();
    arena.upload(x, &cv(randn(&mut g, n, 1.0))).unwrap();
    arena.upload(dy, &cv(randn(&mut g, n * r, 1.0))).unwrap();
    let upsample = axis == 2;
    let case = if upsample { format!("x={}x{}x{},up{r},{}", shape[0], shape[1], shape[2], T::DTYPE) } else { format!("x={}x{}x{},axis{axis},r{r},{}", shape[0], shape[1], shape[2], T::DTYPE) };
    let (op_f, op_b) = if upsample { ("upsample_nearest", "upsample_nearest_backward") } else { ("repeat_interleave", "repeat_interleave_backward") };
    let bytes = ((1 + r) * n * std::mem::size_of::<T>()) as f64;
    let mut f = || {
        let b = arena.borrow();
        if upsample { upsample_nearest(b.read(x)?, r, b.write(y)?) } else { repeat_interleave(b.read(x)?, axis, r, b.write(y)?) }
    };
    gb.report(op_f, &case, Work { bytes, flops: 0.0, exps: 0.0 }, plan.total_bytes(), measured, true, &mut f).unwrap();
    c.bench_function(&format!("{op_f}/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
    let mut f = || {
        let b = arena.borrow();
        if upsample { upsample_nearest_backward(b.read(dy)?, r, b.write(dx)?) } else { repeat_interleave_backward(b.read(dy)?, axis, r, b.write(dx)?) }
    };
    gb.report(op_b, &case, Work { bytes, flops: ((r - 1) * n) as f64, exps: 0.0 }, plan.total_bytes(), measured, true, &mut f).unwrap();
    c.bench_function(&format!("{op_b}/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
}

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench repeat_interleave") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    case::<f32>(c, &dev, &mut gb, [8, 19, 960], 2, 16);
    case::<half::bf16>(c, &dev, &mut gb, [8, 19, 960], 2, 16);
    case::<f32>(c, &dev, &mut gb, [8, 960, 64], 1, 16);
    case::<half::bf16>(c, &dev, &mut gb, [8, 960, 64], 1, 16);
}

criterion_group!(benches, bench);
criterion_main!(benches);
