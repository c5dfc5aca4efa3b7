//! Depthwise causal conv1d (k 4, SiLU) at the BiMamba shapes of seed 000 (after in_proj: node
//! S 152 × D 128, edge S 1368 × D 32, L 960) and the audio length; forward and backward.
//! Memory-bound: floor 8 B/element forward, 12 B/element backward.

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::causal_conv1d::{backward_workspace_bytes, causal_conv1d, causal_conv1d_backward, ConvOptions};
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Plan, Role};

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench causal_conv1d") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    let k = 4;
    for (case, s, d, l) in [("node,S=152,D=128,L=960,K=4", 152usize, 128usize, 960usize), ("edge,S=1368,D=32,L=960,K=4", 1368, 32, 960), ("audio,S=1,D=128,L=131072,K=4", 1, 128, 131_072)] {
        let mut plan = Plan::new();
        let x = plan.add::<f32>("x", &[s, d, l], Role::Activation).unwrap();
        let w = plan.add::<f32>("w", &[d, k], Role::Param).unwrap();
        let b = plan.add::<f32>("b", &[d], Role::Param).unwrap();
        let out = plan.add::<f32>("out", &[s, d, l], Role::Activation).unwrap();
        let dout = plan.add::<f32>("dout", &[s, d, l], Role::Grad).unwrap();
        let dx = plan.add::<f32>("dx", &[s, d, l], Role::Grad).unwrap();
        let dw = plan.add::<f32>("dw", &[d, k], Role::Grad).unwrap();
        let db = plan.add::<f32>("db", &[d], Role::Grad).unwrap();
        let ws = plan.add::<f32>("ws", &[backward_workspace_bytes(s, d, k) / 4], Role::Workspace).unwrap();
        let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
        let mut r = rng(1);
        arena.upload(x, &randn(&mut r, s * d * l, 1.0)).unwrap();
        arena.upload(w, &randn(&mut r, d * k, 0.5)).unwrap();
        arena.upload(b, &randn(&mut r, d, 0.5)).unwrap();
        arena.upload(dout, &randn(&mut r, s * d * l, 1.0)).unwrap();
        let opt = ConvOptions { silu: true, reverse: false };
        let n = (s * d * l) as f64;
        let mut f = || {
            let v = arena.borrow();
            causal_conv1d(v.read(x)?, v.read(w)?, Some(v.read(b)?), v.write(out)?, opt)
        };
        gb.report("causal_conv1d", case, Work { bytes: 8.0 * n, flops: 2.0 * k as f64 * n, exps: n }, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("causal_conv1d/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));

        let mut g = || {
            let v = arena.borrow();
            causal_conv1d_backward(v.read(x)?, v.read(w)?, Some(v.read(b)?), v.read(dout)?, v.write(dx)?, v.write(dw)?, Some(v.write(db)?), Some(v.write(ws)?), opt)
        };
        gb.report("causal_conv1d_backward", case, Work { bytes: 12.0 * n, flops: 4.0 * k as f64 * n, exps: n }, plan.total_bytes(), measured, true, &mut g).unwrap();
        c.bench_function(&format!("causal_conv1d_backward/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut g).unwrap()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
