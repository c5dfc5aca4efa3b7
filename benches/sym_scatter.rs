//! sym_scatter (171 strict pairs → symmetric 19 × 19, diagonal 0) and its backward, triu_pairs and
//! its backward, at seed 000's adjacency shape: 8·960 = 7,680 matrices, f32 and bf16. Memory-bound:
//! floor = read the input once and write the output once: 7,680·(171 + 361) elements either way.

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::sym_scatter::{sym_scatter, sym_scatter_backward, triu_pairs, triu_pairs_backward, Triangle};
use snug::ops::Real;
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Device, Plan, Role};

fn case<T: Real>(c: &mut Criterion, dev: &Device, gb: &mut GpuBench, lead: [usize; 2], n: usize) {
    let tri = Triangle::Strict;
    let (batch, np) = (lead[0] * lead[1], tri.pairs(n));
    let (ps, a_s) = ([lead[0], lead[1], np], [lead[0], lead[1], n, n]);
    let mut plan = Plan::new();
    let (p, a) = (plan.add::<T>("pairs", &ps, Role::Activation).unwrap(), plan.add::<T>("a", &a_s, Role::Activation).unwrap());
    let (da, dp) = (plan.add::<T>("da", &a_s, Role::Grad).unwrap(), plan.add::<T>("dpairs", &ps, Role::Grad).unwrap());
    let (mut arena, measured) = measure_arena(dev, &plan).unwrap();
    let mut g = rng(1);
    let cv = |v: Vec<f32>| v.into_iter().map(|t| T::from_f32(t).unwrap()).collect::<Vec<T>>();
    arena.upload(p, &cv(randn(&mut g, batch * np, 1.0))).unwrap();
    arena.upload(da, &cv(randn(&mut g, batch * n * n, 1.0))).unwrap();
    let case = format!("pairs={}x{}x{np},n{n},{}", lead[0], lead[1], T::DTYPE);
    let bytes = (batch * (np + n * n) * std::mem::size_of::<T>()) as f64;
    let (planned, flops) = (plan.total_bytes(), (batch * np) as f64);
    let mut run = |op: &str, flops: f64, f: &mut dyn FnMut() -> snug::Result<()>| {
        gb.report(op, &case, Work { bytes, flops, exps: 0.0 }, planned, measured, true, &mut *f).unwrap();
        c.bench_function(&format!("{op}/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut *f).unwrap()));
    };
    run("sym_scatter", 0.0, &mut || {
        let b = arena.borrow();
        sym_scatter(b.read(p)?, n, tri, 0.0, b.write(a)?)
    });
    run("sym_scatter_backward", flops, &mut || {
        let b = arena.borrow();
        sym_scatter_backward(b.read(da)?, n, tri, b.write(dp)?)
    });
    run("triu_pairs", 0.0, &mut || {
        let b = arena.borrow();
        triu_pairs(b.read(da)?, tri, b.write(dp)?)
    });
    run("triu_pairs_backward", 0.0, &mut || {
        let b = arena.borrow();
        triu_pairs_backward(b.read(p)?, tri, b.write(a)?)
    });
}

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench sym_scatter") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    case::<f32>(c, &dev, &mut gb, [8, 960], 19);
    case::<half::bf16>(c, &dev, &mut gb, [8, 960], 19);
}

criterion_group!(benches, bench);
criterion_main!(benches);
