//! Fused AdamW step: time per step, bandwidth and % of the DRAM floor (28 B/element, 30 with the
//! bf16 copy), planned vs measured memory. Peer: benches/peers/adamw.py
//! (`torch.optim.AdamW(fused=True)` and foreach) at the same cases.

use criterion::{criterion_group, criterion_main, Criterion};
use half::bf16;
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::adamw::{adamw_step, plan_moments, AdamwConfig, AdamwTensor, Clip};
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Plan, Role};

/// (case, elements, bf16 copy). Case strings are shared with the peer script.
const CASES: [(&str, usize, bool); 4] =
    [("n=1048576", 1 << 20, false), ("n=16777216", 1 << 24, false), ("n=67108864", 1 << 26, false), ("n=16777216,bf16_copy", 1 << 24, true)];

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench adamw") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    let cfg = AdamwConfig::default();
    for (case, n, with_bf16) in CASES {
        let mut plan = Plan::new();
        let p = plan.add::<f32>("p", &[n], Role::Param).unwrap();
        let g = plan.add::<f32>("p.grad", &[n], Role::Grad).unwrap();
        let (m, v) = plan_moments(&mut plan, "p", &[n]).unwrap();
        let b = with_bf16.then(|| plan.add::<bf16>("p.bf16", &[n], Role::Param).unwrap());
        let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
        let mut r = rng(7);
        arena.upload(p, &randn(&mut r, n, 1.0)).unwrap();
        arena.upload(g, &randn(&mut r, n, 0.01)).unwrap();
        let mut step = 0u64;
        let mut f = || {
            step += 1;
            let bw = arena.borrow();
            let t = AdamwTensor {
                param: bw.write(p)?,
                grad: bw.read(g)?,
                m: bw.write(m)?,
                v: bw.write(v)?,
                param_bf16: b.map(|b| bw.write(b)).transpose()?,
                decay: true,
            };
            adamw_step(&cfg, step, Clip::Scale(1.0), t)
        };
        let work = Work { bytes: (n * if with_bf16 { 30 } else { 28 }) as f64, flops: (n * 16) as f64, exps: 0.0 };
        gb.report("adamw", case, work, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("adamw/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
