//! nn.Linear at seed shapes: V3's electrode projection (8·960 rows, 512 → 1216) and a Mamba-sized
//! in_proj over tokens (152·960 rows, 64 → 256), forward (GEMM + bias) and backward (dx, dW, db).
//! Floor: FLOPs at the SIMT f32 rate (no TF32) or bytes; target (issue 7): within 10% of cuBLAS alone.

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::linear::{backward_workspace_bytes, linear, linear_backward};
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Plan, Role};

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench linear") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    for (case, rows, inp, out) in [("V3 electrodes,rows=7680,512->1216", 7680usize, 512usize, 1216usize), ("tokens,rows=145920,64->256", 145_920, 64, 256)] {
        let mut plan = Plan::new();
        let x = plan.add::<f32>("x", &[rows, inp], Role::Activation).unwrap();
        let w = plan.add::<f32>("w", &[out, inp], Role::Param).unwrap();
        let b = plan.add::<f32>("b", &[out], Role::Param).unwrap();
        let y = plan.add::<f32>("y", &[rows, out], Role::Activation).unwrap();
        let dy = plan.add::<f32>("dy", &[rows, out], Role::Grad).unwrap();
        let dx = plan.add::<f32>("dx", &[rows, inp], Role::Grad).unwrap();
        let dw = plan.add::<f32>("dw", &[out, inp], Role::Grad).unwrap();
        let db = plan.add::<f32>("db", &[out], Role::Grad).unwrap();
        let ws = plan.add::<f32>("ws", &[backward_workspace_bytes(rows, inp, out, true, true) / 4], Role::Workspace).unwrap();
        let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
        let mut r = rng(1);
        arena.upload(x, &randn(&mut r, rows * inp, 1.0)).unwrap();
        arena.upload(w, &randn(&mut r, out * inp, 0.05)).unwrap();
        arena.upload(b, &randn(&mut r, out, 0.1)).unwrap();
        arena.upload(dy, &randn(&mut r, rows * out, 1.0)).unwrap();
        let flops = 2.0 * (rows * inp * out) as f64;
        let bytes = 4.0 * (rows * inp + out * inp + 2 * rows * out) as f64;
        let mut f = || {
            let v = arena.borrow();
            linear(v.read(x)?, v.read(w)?, Some(v.read(b)?), v.write(y)?, None)
        };
        gb.report("linear", case, Work { bytes, flops, exps: 0.0 }, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("linear/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
        let mut g = || {
            let v = arena.borrow();
            linear_backward(v.read(x)?, v.read(w)?, v.read(dy)?, Some(v.write(dx)?), v.write(dw)?, Some(v.write(db)?), Some(v.write(ws)?), None)
        };
        gb.report("linear_backward", case, Work { bytes: 2.0 * bytes, flops: 2.0 * flops, exps: 0.0 }, plan.total_bytes(), measured, true, &mut g).unwrap();
        c.bench_function(&format!("linear_backward/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut g).unwrap()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
