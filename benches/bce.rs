//! bce / focal loss at seed 000's head logits (8 × 15,360) and a large n = 16 × 2^20, f32 and bf16,
//! focal (α 0.5, γ 2, mean: the seed's loss) and plain BCE (mean). Memory-bound: floor = read logits
//! and targets (2n·sizeof(T)) for the loss alone ("bce_loss"), plus write the gradient
//! (n·sizeof(T)) for the one-pass loss + gradient ("bce_loss_grad"); the backward's scale
//! ("bce_backward", scalar upstream) reads and writes the gradient (2n·sizeof(T)). The partials
//! (≤ 4 KiB) are left out.

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::bce::{bce_backward, bce_loss, loss_workspace_bytes, BceSpec, Reduction};
use snug::ops::Real;
use snug::testing::{gpu_or_skip, randn, rng, uniform};
use snug::{Plan, Role};

fn case<T: Real>(c: &mut Criterion, gb: &mut GpuBench, dev: &snug::Device, label: &str, n: usize) {
    let size = std::mem::size_of::<T>() as f64;
    let mut plan = Plan::new();
    let z = plan.add::<T>("logits", &[n], Role::Activation).unwrap();
    let y = plan.add::<T>("targets", &[n], Role::Io).unwrap();
    let g = plan.add::<T>("grad", &[n], Role::Grad).unwrap();
    let loss = plan.add::<f32>("loss", &[1], Role::Io).unwrap();
    let up = plan.add::<f32>("upstream", &[1], Role::Io).unwrap();
    let ws = plan.add::<f32>("ws", &[loss_workspace_bytes(n, Reduction::Mean) / 4], Role::Workspace).unwrap();
    let (mut arena, measured) = measure_arena(dev, &plan).unwrap();
    let mut r = rng(1);
    let cv = |v: Vec<f32>| v.into_iter().map(|x| T::round_f64(x as f64)).collect::<Vec<T>>();
    arena.upload(z, &cv(randn(&mut r, n, 2.0))).unwrap();
    // Hard labels, ~10% positive (seizure-like).
    arena.upload(y, &cv(uniform(&mut r, n, 0.0, 1.0).into_iter().map(|u| if u < 0.1 { 1.0 } else { 0.0 }).collect())).unwrap();
    arena.upload(up, &[1.0f32]).unwrap();
    let el = n as f64;
    for (name, spec, flops, exps) in [("focal a=0.5 g=2 mean", BceSpec::focal(Some(0.5), 2.0, Reduction::Mean), 30.0, 3.0), ("plain mean", BceSpec::plain(Reduction::Mean), 14.0, 3.0)] {
        let case = format!("n={label},{},{name}", T::DTYPE);
        let mut f = || {
            let v = arena.borrow();
            bce_loss(v.read(z)?, v.read(y)?, v.write(loss)?, None, Some(v.write(ws)?), spec)
        };
        gb.report("bce_loss", &case, Work { bytes: 2.0 * size * el, flops: flops * el, exps: exps * el }, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("bce_loss/{case}"), |b| b.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
        let mut f = || {
            let v = arena.borrow();
            bce_loss(v.read(z)?, v.read(y)?, v.write(loss)?, Some(v.write(g)?), Some(v.write(ws)?), spec)
        };
        gb.report("bce_loss_grad", &case, Work { bytes: 3.0 * size * el, flops: (flops + 10.0) * el, exps: exps * el }, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("bce_loss_grad/{case}"), |b| b.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
        let mut f = || {
            let v = arena.borrow();
            bce_backward(v.write(g)?, v.read(up)?, spec)
        };
        gb.report("bce_backward", &case, Work { bytes: 2.0 * size * el, flops: el, exps: 0.0 }, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("bce_backward/{case}"), |b| b.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
    }
}

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench bce") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    for (label, n) in [("8x15360", 8 * 15_360usize), ("16x2^20", 16usize << 20)] {
        case::<f32>(c, &mut gb, &dev, label, n);
        case::<half::bf16>(c, &mut gb, &dev, label, n);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
