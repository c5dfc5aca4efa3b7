//! The bidirectional Mamba block of seed 000's V3 layer, forward and backward, at its two shapes:
//! node (S 152, d_model 64, N 16, expand 2) and edge (S 1,368, d_model 16, N 8), L 960; and the
//! unidirectional audio block (S 1, d_model 64, N 16, L 131,072 — one SaShiMi stage-1 layer).
//! Floor: the larger of the block's bytes (saved tensors written once and read once, input,
//! outputs) at HBM bandwidth, its GEMM FLOPs at the SIMT f32 rate, and the scan's exponentials at
//! the SFU rate. Reports the planned bytes next to the measured device allocation.

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::mamba::{MambaBlock, MambaConfig};
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Plan, Role};

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench mamba") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    for (case, cfg, s, l) in [
        ("node,S=152,dm=64,N=16,L=960,bi", MambaConfig::new(64, 16, 2, true), 152usize, 960usize),
        ("edge,S=1368,dm=16,N=8,L=960,bi", MambaConfig::new(16, 8, 2, true), 1368, 960),
        ("audio,S=1,dm=64,N=16,L=131072", MambaConfig::new(64, 16, 2, false), 1, 131_072),
    ] {
        let dirs = 1 + cfg.bidirectional as usize;
        let mut plan = Plan::new();
        let block = MambaBlock::<f32>::declare(&mut plan, "m", cfg, s, l).unwrap();
        let x = plan.add::<f32>("x", &[s, l, cfg.d_model], Role::Activation).unwrap();
        let outs: Vec<_> = (0..dirs).map(|r| plan.add::<f32>(format!("out{r}"), &[s, l, cfg.d_model], Role::Activation).unwrap()).collect();
        let douts: Vec<_> = (0..dirs).map(|r| plan.add::<f32>(format!("dout{r}"), &[s, l, cfg.d_model], Role::Grad).unwrap()).collect();
        let dx = plan.add::<f32>("dx", &[s, l, cfg.d_model], Role::Grad).unwrap();
        let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
        let mut r = rng(1);
        for p in &block.params {
            for (b, std) in [(p.in_x, 0.1), (p.in_z, 0.1), (p.conv_w, 0.3), (p.conv_b, 0.1), (p.x_dt, 0.1), (p.x_b, 0.1), (p.x_c, 0.1), (p.dt_w, 0.3), (p.dt_bias, 0.5), (p.a_log, 0.5), (p.d_skip, 1.0), (p.out_w, 0.1)] {
                let n = arena.plan().info(b.id()).unwrap().shape.numel();
                arena.upload(b, &randn(&mut r, n, std)).unwrap();
            }
        }
        let tok = s * l * cfg.d_model;
        arena.upload(x, &randn(&mut r, tok, 1.0)).unwrap();
        for &g in &douts {
            arena.upload(g, &randn(&mut r, tok, 1.0)).unwrap();
        }
        let fp = MambaBlock::<f32>::footprint(cfg, s, l);
        let (d, n, rk, dm) = (cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_model);
        let gemm_flops = dirs as f64 * 2.0 * (s * l) as f64 * (2.0 * (d * dm) as f64 + (d * (rk + 2 * n)) as f64 + (d * rk) as f64 + (d * dm) as f64);
        let exps = dirs as f64 * (s * d * l * n) as f64;
        let io = 4.0 * (tok * (1 + dirs)) as f64;
        let fwd = Work { bytes: fp.saved as f64 + io, flops: gemm_flops, exps };
        // Backward: reads the saved tensors, writes and reads the scratch once, 2× the GEMM FLOPs
        // (input and weight gradients), the scan's exponentials again (recomputed states).
        let bwd = Work { bytes: fp.saved as f64 + 2.0 * (fp.workspace - snug::ops::gemm::CUBLAS_WORKSPACE_BYTES) as f64 + io, flops: 2.0 * gemm_flops, exps: 2.0 * exps };
        let mut f = || block.forward(&mut arena, x, &outs);
        gb.report("mamba", case, fwd, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("mamba/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
        let mut g = || block.backward(&mut arena, x, &douts, dx);
        gb.report("mamba_backward", case, bwd, plan.total_bytes(), measured, true, &mut g).unwrap();
        c.bench_function(&format!("mamba_backward/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut g).unwrap()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
