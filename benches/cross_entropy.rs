//! Softmax cross-entropy at seed 003's LM head: rows 16,384 (B 32 × T 512), V 50,257 (GPT-2), f32
//! and bf16, Mean. Peer: benches/peers/cross_entropy.py (same case strings).
//!
//! "cross_entropy_in_place": loss and gradient in one kernel, the gradient overwriting the logits.
//! Memory-bound: floor = rows·V·sizeof(T) read (the (max, Σexp) pass) + rows·V·sizeof(T) written
//! (the gradient) = 2·rows·V·sizeof(T); the gradient pass re-reads the row (a third rows·V·sizeof(T)
//! when it misses L2). 2·rows·V exponentials. After the first call the logits are the previous
//! call's gradient (the kernel's work does not depend on the values).
//!
//! "linear_cross_entropy": the fused, chunked head, logits = h·Wᵀ with d = 64, loss, dh and dW
//! (f32 dW, also with bf16 h / W), chunk_rows 1,024 and 4,096. Floor: the three GEMMs'
//! 3·2·rows·V·d FLOPs at the SIMT f32 rate (cuBLAS with CUBLAS_COMPUTE_32F, no TF32; bf16 products
//! run on tensor cores, faster than that rate: see docs/perf.md) and h, W, dh, dW once. Its memory
//! is the point: one [chunk, V] logits buffer (planned and measured below) instead of PyTorch's
//! [rows, V] logits plus as much again for their gradient.

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::cross_entropy::{cross_entropy_in_place, linear_cross_entropy, linear_workspace_bytes, workspace_bytes, CrossEntropySpec, LinearCrossEntropySpec, Reduction};
use snug::ops::gemm::CUBLAS_WORKSPACE_BYTES;
use snug::ops::Real;
use snug::testing::{gpu_or_skip, randn, rng, uniform};
use snug::{Plan, Role};

/// Seed 003's head: B × T rows, GPT-2's vocabulary, d of the fused head.
const B: usize = 32;
const T: usize = 512;
const V: usize = 50_257;
const D: usize = 64;
const CHUNKS: [usize; 2] = [1024, 4096];

fn to_t<E: Real>(v: Vec<f32>) -> Vec<E> {
    v.into_iter().map(|x| E::round_f64(x as f64)).collect()
}

fn targets(n: usize, seed: u64) -> Vec<i32> {
    let mut r = rng(seed);
    uniform(&mut r, n, 0.0, V as f32 - 0.01).into_iter().map(|u| (u as i32).min(V as i32 - 1)).collect()
}

fn in_place<E: Real>(c: &mut Criterion, gb: &mut GpuBench, dev: &snug::Device) {
    let rows = B * T;
    let size = std::mem::size_of::<E>() as f64;
    let spec = CrossEntropySpec::new(Reduction::Mean);
    let mut plan = Plan::new();
    let z = plan.add::<E>("logits", &[rows, V], Role::Activation).unwrap();
    let t = plan.add::<i32>("targets", &[rows], Role::Io).unwrap();
    let loss = plan.add::<f32>("loss", &[1], Role::Io).unwrap();
    let ws = plan.add::<f32>("ws", &[workspace_bytes(rows, Reduction::Mean) / 4], Role::Workspace).unwrap();
    let (mut arena, measured) = measure_arena(dev, &plan).unwrap();
    let mut r = rng(1);
    arena.upload(z, &to_t::<E>(randn(&mut r, rows * V, 2.0))).unwrap();
    arena.upload(t, &targets(rows, 2)).unwrap();
    let case = format!("B={B},T={T},V={V},{},mean", E::DTYPE);
    let el = (rows * V) as f64;
    let work = Work { bytes: 2.0 * size * el + 4.0 * rows as f64, flops: 10.0 * el, exps: 2.0 * el };
    let mut f = || {
        let v = arena.borrow();
        cross_entropy_in_place(v.write(z)?, v.read(t)?, v.write(loss)?, Some(v.write(ws)?), spec)
    };
    gb.report("cross_entropy_in_place", &case, work, plan.total_bytes(), measured, true, &mut f).unwrap();
    c.bench_function(&format!("cross_entropy_in_place/{case}"), |b| b.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
}

fn fused_head<E: Real>(c: &mut Criterion, gb: &mut GpuBench, dev: &snug::Device, chunk: usize) {
    let rows = B * T;
    let size = std::mem::size_of::<E>() as f64;
    let mut plan = Plan::new();
    let h = plan.add::<E>("h", &[rows, D], Role::Activation).unwrap();
    let w = plan.add::<E>("w", &[V, D], Role::Param).unwrap();
    let t = plan.add::<i32>("targets", &[rows], Role::Io).unwrap();
    let loss = plan.add::<f32>("loss", &[1], Role::Io).unwrap();
    let dh = plan.add::<E>("dh", &[rows, D], Role::Grad).unwrap();
    let dw = plan.add::<f32>("dw", &[V, D], Role::Grad).unwrap();
    let ws = plan.add::<f32>("ws", &[linear_workspace_bytes(rows, V, chunk, Reduction::Mean, E::DTYPE) / 4], Role::Workspace).unwrap();
    let cw = plan.add::<u8>("cublas_ws", &[CUBLAS_WORKSPACE_BYTES], Role::Workspace).unwrap();
    let (mut arena, measured) = measure_arena(dev, &plan).unwrap();
    let mut r = rng(3);
    arena.upload(h, &to_t::<E>(randn(&mut r, rows * D, 1.0))).unwrap();
    arena.upload(w, &to_t::<E>(randn(&mut r, V * D, 0.125))).unwrap();
    arena.upload(t, &targets(rows, 4)).unwrap();
    let spec = LinearCrossEntropySpec { ce: CrossEntropySpec::new(Reduction::Mean), chunk_rows: chunk, accumulate_dw: false };
    let case = format!("B={B},T={T},V={V},d={D},chunk={chunk},{},dW=f32,mean", E::DTYPE);
    let (el, hd, wd) = ((rows * V) as f64, (rows * D) as f64, (V * D) as f64);
    // h and W read, dh (T) and dW (f32) written, the targets: once. FLOPs: three GEMMs.
    let work = Work { bytes: size * (2.0 * hd + wd) + 4.0 * (wd + rows as f64), flops: 6.0 * el * D as f64 + 10.0 * el, exps: 2.0 * el };
    let mut f = || {
        let v = arena.borrow();
        linear_cross_entropy(v.read(h)?, v.read(w)?, v.read(t)?, v.write(loss)?, Some((v.write(dh)?, v.write(dw)?)), Some(v.write(ws)?), Some(v.write(cw)?), spec)
    };
    gb.report("linear_cross_entropy", &case, work, plan.total_bytes(), measured, true, &mut f).unwrap();
    c.bench_function(&format!("linear_cross_entropy/{case}"), |b| b.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
}

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench cross_entropy") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    in_place::<f32>(c, &mut gb, &dev);
    in_place::<half::bf16>(c, &mut gb, &dev);
    for chunk in CHUNKS {
        fused_head::<f32>(c, &mut gb, &dev, chunk);
        fused_head::<half::bf16>(c, &mut gb, &dev, chunk);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
