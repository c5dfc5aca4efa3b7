//! weight_norm (dim 0) forward and backward on the V3 TCN conv weights ([512, 256, 7] and
//! [512, 512, 16], f32). Memory-bound: floor = forward reads v and writes w once (8 B/element),
//! backward reads v and dw and writes dv once (12 B/element), plus the per-row vectors.

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::weight_norm::{weight_norm, weight_norm_backward};
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Plan, Role};

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench weight_norm") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    for shape in [[512usize, 256, 7], [512, 512, 16]] {
        let (rows, n) = (shape[0], shape[1] * shape[2]);
        let mut plan = Plan::new();
        let (v, g, w, nr) = (plan.add::<f32>("v", &shape, Role::Param).unwrap(), plan.add::<f32>("g", &[rows], Role::Param).unwrap(), plan.add::<f32>("w", &shape, Role::Activation).unwrap(), plan.add::<f32>("norms", &[rows], Role::Activation).unwrap());
        let (dw, dv, dg) = (plan.add::<f32>("dw", &shape, Role::Grad).unwrap(), plan.add::<f32>("dv", &shape, Role::Grad).unwrap(), plan.add::<f32>("dg", &[rows], Role::Grad).unwrap());
        let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
        let mut r = rng(1);
        for (b, len) in [(v, rows * n), (g, rows), (dw, rows * n)] {
            arena.upload(b, &randn(&mut r, len, 1.0)).unwrap();
        }
        let case = format!("v={rows}x{}x{},f32", shape[1], shape[2]);
        let el = (rows * n) as f64;
        let mut f = || {
            let b = arena.borrow();
            weight_norm(b.read(v)?, b.read(g)?, b.write(w)?, b.write(nr)?)
        };
        gb.report("weight_norm", &case, Work { bytes: 8.0 * el + 12.0 * rows as f64, flops: 3.0 * el, exps: 0.0 }, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("weight_norm/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
        let mut f = || {
            let b = arena.borrow();
            weight_norm_backward(b.read(v)?, b.read(g)?, b.read(nr)?, b.read(dw)?, b.write(dv)?, b.write(dg)?)
        };
        gb.report("weight_norm_backward", &case, Work { bytes: 12.0 * el + 16.0 * rows as f64, flops: 4.0 * el, exps: 0.0 }, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("weight_norm_backward/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
