//! LayerNorm at the seed shapes: V3's last-dim LN over d_model 64 ([8, 19, 960, 64]), the BEV
//! map's LN over channels ([4, 256, 256, 256]) and a channel LN over [8, 512, 960]. Memory-bound:
//! forward floor = read x + write y (+ 8 B of statistics per row); backward = read x, dy, write dx,
//! plus the parameter pass's second read of x and dy.

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::layer_norm::{backward_workspace_bytes, layer_norm, layer_norm_backward, ln_dims, Axis};
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Plan, Role};

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench layer_norm") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    for (case, shape, axis) in [
        ("V3 last,[8,19,960,64]", vec![8usize, 19, 960, 64], Axis::Last),
        ("BEV channels,[4,256,256,256]", vec![4, 256, 256, 256], Axis::Channels),
        ("channels,[8,512,960]", vec![8, 512, 960], Axis::Channels),
    ] {
        let d = ln_dims(&shape, axis).unwrap();
        let n: usize = shape.iter().product();
        let mut plan = Plan::new();
        let t: Vec<_> = ["x", "y", "dy", "dx"].iter().map(|nm| plan.add::<f32>(*nm, &shape, Role::Activation).unwrap()).collect();
        let p: Vec<_> = ["g", "b", "dg", "db"].iter().map(|nm| plan.add::<f32>(*nm, &[d.c], Role::Param).unwrap()).collect();
        let st: Vec<_> = ["mean", "rstd"].iter().map(|nm| plan.add::<f32>(*nm, &[d.rows()], Role::Saved).unwrap()).collect();
        let ws = plan.add::<f32>("ws", &[backward_workspace_bytes(d) / 4], Role::Workspace).unwrap();
        let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
        let mut r = rng(1);
        arena.upload(t[0], &randn(&mut r, n, 1.0)).unwrap();
        arena.upload(t[2], &randn(&mut r, n, 1.0)).unwrap();
        arena.upload(p[0], &randn(&mut r, d.c, 1.0)).unwrap();
        arena.upload(p[1], &randn(&mut r, d.c, 1.0)).unwrap();
        let (e, rows) = (n as f64, d.rows() as f64);
        let mut f = || {
            let v = arena.borrow();
            layer_norm(v.read(t[0])?, Some(v.read(p[0])?), Some(v.read(p[1])?), v.write(t[1])?, v.write(st[0])?, v.write(st[1])?, axis, 1e-5)
        };
        gb.report("layer_norm", case, Work { bytes: 8.0 * e + 8.0 * rows, flops: 8.0 * e, exps: rows }, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("layer_norm/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
        let mut g = || {
            let v = arena.borrow();
            layer_norm_backward(v.read(t[0])?, Some(v.read(p[0])?), v.read(t[2])?, v.read(st[0])?, v.read(st[1])?, v.write(t[3])?, Some(v.write(p[2])?), Some(v.write(p[3])?), Some(v.write(ws)?), axis)
        };
        gb.report("layer_norm_backward", case, Work { bytes: 20.0 * e + 16.0 * rows, flops: 14.0 * e, exps: 0.0 }, plan.total_bytes(), measured, true, &mut g).unwrap();
        c.bench_function(&format!("layer_norm_backward/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut g).unwrap()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
