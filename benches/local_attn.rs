//! Local attention at seed 001's BEV shape: B 4, C 256, 4 heads (d 64), 256×256, K 7, and d 16 / 32
//! (C 64 / 128); ZeroPad (the seed's unfold semantics) and Shift (NATTEN). Layout [B, C, H, W]
//! (the 1×1 conv output, read in place). Floor (bytes): forward reads q, k, v and writes O
//! (+ lse); backward reads q, k, v, O, dO (+ lse) and writes dq, dk, dv (+ D).

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::local_attn::{backward_workspace_bytes, local_attn, local_attn_backward, Border, Dims, Layout, LocalAttnSpec};
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Plan, Role};

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench local_attn") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    for (case, ch, border) in [
        ("seed,B=4,C=256,heads=4,d=64,256x256,K=7,zeropad", 256usize, Border::ZeroPad),
        ("B=4,C=64,heads=4,d=16,256x256,K=7,zeropad", 64, Border::ZeroPad),
        ("B=4,C=128,heads=4,d=32,256x256,K=7,zeropad", 128, Border::ZeroPad),
        ("seed,B=4,C=256,heads=4,d=64,256x256,K=7,shift", 256, Border::Shift),
    ] {
        let (b, heads, h, w, k) = (4usize, 4usize, 256usize, 256usize, 7usize);
        let dm = Dims { b, heads, h, w, d: ch / heads };
        let spec = LocalAttnSpec { kernel: k, border, layout: Layout::Bchw { heads }, scale: None };
        let shape = [b, ch, h, w];
        let mut plan = Plan::new();
        let t: Vec<_> = ["q", "k", "v", "out", "dout", "dq", "dk", "dv"].iter().map(|nm| plan.add::<f32>(*nm, &shape, Role::Activation).unwrap()).collect();
        let lse = plan.add::<f32>("lse", &[b, heads, h, w], Role::Saved).unwrap();
        let ws = plan.add::<f32>("ws", &[backward_workspace_bytes(dm) / 4], Role::Workspace).unwrap();
        let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
        let mut r = rng(1);
        let n = b * ch * h * w;
        for &i in &[0usize, 1, 2, 4] {
            arena.upload(t[i], &randn(&mut r, n, 1.0)).unwrap();
        }
        let px = (b * heads * h * w) as f64;
        let elems = n as f64;
        let pairs = px * (k * k) as f64;
        let fwd = Work { bytes: 4.0 * (4.0 * elems + px), flops: 4.0 * pairs * dm.d as f64, exps: 2.0 * pairs };
        let bwd = Work { bytes: 4.0 * (8.0 * elems + 2.0 * px), flops: 12.0 * pairs * dm.d as f64, exps: 2.0 * pairs };
        let mut f = || {
            let v = arena.borrow();
            local_attn(v.read(t[0])?, v.read(t[1])?, v.read(t[2])?, v.write(t[3])?, v.write(lse)?, spec)
        };
        gb.report("local_attn", case, fwd, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("local_attn/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
        let mut g = || {
            let v = arena.borrow();
            local_attn_backward(v.read(t[0])?, v.read(t[1])?, v.read(t[2])?, v.read(t[3])?, v.read(lse)?, v.read(t[4])?, v.write(t[5])?, v.write(t[6])?, v.write(t[7])?, Some(v.write(ws)?), spec)
        };
        gb.report("local_attn_backward", case, bwd, plan.total_bytes(), measured, true, &mut g).unwrap();
        c.bench_function(&format!("local_attn_backward/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut g).unwrap()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
