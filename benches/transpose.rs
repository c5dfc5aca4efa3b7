//! transpose (swap of two adjacent axes) at the seeds' layout switches: seed 000's TCN output
//! channels-first [8, 512, 960] → channels-last [8, 960, 512] (axis 1, f32 and bf16), cosine_sim's
//! [B, P, T] = [8, 171, 960] → [B, T, P] (axis 1, a ragged 171), and [8, 19, 960, 64] axis 1
//! (inner 64: the row-copy path). The backward is the same kernel on the swapped shape, so only the
//! forward is timed. Memory-bound: floor = read x once and write y once, 2·|x| elements, no FLOPs.

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::transpose::transpose;
use snug::ops::Real;
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Device, Plan, Role};

fn case<T: Real>(c: &mut Criterion, dev: &Device, gb: &mut GpuBench, shape: &[usize], axis: usize) {
    let mut swapped = shape.to_vec();
    swapped.swap(axis, axis + 1);
    let n: usize = shape.iter().product();
    let mut plan = Plan::new();
    let (x, y) = (plan.add::<T>("x", shape, Role::Activation).unwrap(), plan.add::<T>("y", &swapped, Role::Activation).unwrap());
    let (mut arena, measured) = measure_arena(dev, &plan).unwrap();
    let mut g = rng(1);
    arena.upload(x, &randn(&mut g, n, 1.0).into_iter().map(|t| T::from_f32(t).unwrap()).collect::<Vec<T>>()).unwrap();
    let dims = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
    let case = format!("x={dims},axis{axis},{}", T::DTYPE);
    let bytes = (2 * n * std::mem::size_of::<T>()) as f64;
    let mut f = || {
        let b = arena.borrow();
        transpose(b.read(x)?, axis, b.write(y)?)
    };
    gb.report("transpose", &case, Work { bytes, flops: 0.0, exps: 0.0 }, plan.total_bytes(), measured, true, &mut f).unwrap();
    c.bench_function(&format!("transpose/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
}

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench transpose") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    case::<f32>(c, &dev, &mut gb, &[8, 512, 960], 1);
    case::<half::bf16>(c, &dev, &mut gb, &[8, 512, 960], 1);
    case::<f32>(c, &dev, &mut gb, &[8, 171, 960], 1);
    case::<f32>(c, &dev, &mut gb, &[8, 19, 960, 64], 1);
}

criterion_group!(benches, bench);
criterion_main!(benches);
