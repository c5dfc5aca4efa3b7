//! Batched GEMM (cuBLAS, f32 compute) and its fixed-order batch sum at the BiMamba projection
//! shapes of seed 000 (per-sequence products over channel-major activations): node in_proj
//! (S 152: W [256, 64] · X[s]ᵀ [64, 960]) and its weight gradient (Σ_s dXZ[s] · X[s]), edge
//! in_proj (S 1368: W [64, 16]) likewise. Floor: FLOPs at the SIMT f32 rate (no TF32) or bytes.

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::gemm::{gemm, gemm_sum_batches, sum_batches_workspace_bytes, GemmSpec, CUBLAS_WORKSPACE_BYTES};
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Plan, Role};

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench gemm") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    for (case, s, dm, d2, l) in [("node in_proj,S=152,dm=64,2D=256,L=960", 152usize, 64usize, 256usize, 960usize), ("edge in_proj,S=1368,dm=16,2D=64,L=960", 1368, 16, 64, 960)] {
        let mut plan = Plan::new();
        let w = plan.add::<f32>("w", &[d2, dm], Role::Param).unwrap();
        let x = plan.add::<f32>("x", &[s, l, dm], Role::Activation).unwrap();
        let xz = plan.add::<f32>("xz", &[s, d2, l], Role::Activation).unwrap();
        let dw = plan.add::<f32>("dw", &[d2, dm], Role::Grad).unwrap();
        let ws = plan.add::<f32>("ws", &[sum_batches_workspace_bytes(s, d2, dm) / 4], Role::Workspace).unwrap();
        let cws = plan.add::<u8>("cublas", &[CUBLAS_WORKSPACE_BYTES], Role::Workspace).unwrap();
        let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
        let mut r = rng(1);
        arena.upload(w, &randn(&mut r, d2 * dm, 0.1)).unwrap();
        arena.upload(x, &randn(&mut r, s * l * dm, 1.0)).unwrap();
        arena.upload(xz, &randn(&mut r, s * d2 * l, 1.0)).unwrap();
        let flops = 2.0 * (s * d2 * dm * l) as f64;
        let bytes = 4.0 * (d2 * dm + s * l * dm + s * d2 * l) as f64;
        // xz[s] = W · x[s]ᵀ
        let mut f = || {
            let v = arena.borrow();
            gemm(v.read(w)?, v.read(x)?, v.write(xz)?, GemmSpec::new(false, true), Some(v.write(cws)?))
        };
        gb.report("gemm", case, Work { bytes, flops, exps: 0.0 }, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("gemm/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
        // dW = Σ_s dxz[s] · x[s]
        let mut g = || {
            let v = arena.borrow();
            gemm_sum_batches(v.read(xz)?, v.read(x)?, v.write(dw)?, GemmSpec::new(false, false), Some(v.write(ws)?), Some(v.write(cws)?))
        };
        let bytes_g = bytes + 8.0 * (s * d2 * dm) as f64; // + the per-sequence partials written and read
        gb.report("gemm_sum_batches", case, Work { bytes: bytes_g, flops, exps: 0.0 }, plan.total_bytes(), measured, true, &mut g).unwrap();
        c.bench_function(&format!("gemm_sum_batches/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut g).unwrap()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
