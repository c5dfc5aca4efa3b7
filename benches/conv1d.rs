//! nn.Conv1d at the seed-000 V3 TCN shapes (B 8, L 15,360, f32): dilated k 7 'same' layers
//! (19 → 64 d 1, 256 → 512 d 8, 512 → 64 d 16, 256 → 512 d 128), the 1×1 512 → 512 and the patch
//! embedding Conv1d(512, 512, k 16, stride 16) → L_out 960; forward (with bias) and backward (dx,
//! dW, db; dW f32). FLOPs = 2·B·C_out·L_out·(C_in/groups)·k forward, twice that backward (dx + dW);
//! bytes = inputs read once + outputs written once. Floor: FLOPs at the SIMT f32 rate (no TF32) or
//! bytes; target (issue 7): no slower than PyTorch (cuDNN) in the same run (benches/peers/conv1d.py).

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::conv1d::{backward_workspace_bytes, conv1d, conv1d_backward, conv1d_dims, forward_workspace_bytes, Conv1dSpec, Padding};
use snug::ops::gemm::CUBLAS_WORKSPACE_BYTES;
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{DType, Plan, Role};

const B: usize = 8;
const L: usize = 15_360;

/// 'same' padding, stride 1, one group.
const fn same(kernel: usize, dilation: usize) -> Conv1dSpec {
    Conv1dSpec { kernel, stride: 1, dilation, padding: Padding::Same, groups: 1 }
}

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench conv1d") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    // (case string shared with the peer, C_in, C_out, spec); B = 8, L_in = 15,360.
    let cases = [
        ("V3 TCN 19->64,k=7,d=1,B=8,L=15360", 19usize, 64usize, same(7, 1)),
        ("V3 TCN 256->512,k=7,d=8,B=8,L=15360", 256, 512, same(7, 8)),
        ("V3 TCN 512->64,k=7,d=16,B=8,L=15360", 512, 64, same(7, 16)),
        ("V3 TCN 256->512,k=7,d=128,B=8,L=15360", 256, 512, same(7, 128)),
        ("V3 1x1 512->512,B=8,L=15360", 512, 512, Conv1dSpec::new(1)),
        ("V3 patch 512->512,k=16,s=16,B=8,L=15360->960", 512, 512, Conv1dSpec { stride: 16, ..Conv1dSpec::new(16) }),
    ];
    for (case, cin, cout, spec) in cases {
        let k = spec.kernel;
        let cg = cin / spec.groups;
        let d = conv1d_dims(&[B, cin, L], &[cout, cg, k], spec).unwrap();
        let lo = d.l_out;
        let ws_bytes = forward_workspace_bytes(&d, &spec, DType::F32).max(backward_workspace_bytes(&d, &spec, DType::F32, true));
        let mut plan = Plan::new();
        let x = plan.add::<f32>("x", &[B, cin, L], Role::Activation).unwrap();
        let w = plan.add::<f32>("w", &[cout, cg, k], Role::Param).unwrap();
        let b = plan.add::<f32>("b", &[cout], Role::Param).unwrap();
        let y = plan.add::<f32>("y", &[B, cout, lo], Role::Activation).unwrap();
        let dy = plan.add::<f32>("dy", &[B, cout, lo], Role::Grad).unwrap();
        let dx = plan.add::<f32>("dx", &[B, cin, L], Role::Grad).unwrap();
        let dw = plan.add::<f32>("dw", &[cout, cg, k], Role::Grad).unwrap();
        let db = plan.add::<f32>("db", &[cout], Role::Grad).unwrap();
        let ws = plan.add::<f32>("ws", &[(ws_bytes / 4).max(1)], Role::Workspace).unwrap();
        let cws = plan.add::<u8>("cublas", &[CUBLAS_WORKSPACE_BYTES], Role::Workspace).unwrap();
        let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
        let mut r = rng(1);
        arena.upload(x, &randn(&mut r, B * cin * L, 1.0)).unwrap();
        arena.upload(w, &randn(&mut r, cout * cg * k, 1.0 / ((cg * k) as f32).sqrt())).unwrap();
        arena.upload(b, &randn(&mut r, cout, 0.1)).unwrap();
        arena.upload(dy, &randn(&mut r, B * cout * lo, 1.0)).unwrap();
        let flops = 2.0 * (B * cout * lo * cg * k) as f64;
        let (xs, ws_, ys) = ((B * cin * L) as f64, (cout * cg * k) as f64, (B * cout * lo) as f64);
        // Forward: read x, w, b; write y. Backward: read x, w, dy; write dx, dW, db.
        let fwd = Work { bytes: 4.0 * (xs + ws_ + cout as f64 + ys), flops, exps: 0.0 };
        let bwd = Work { bytes: 4.0 * (2.0 * xs + 2.0 * ws_ + cout as f64 + ys), flops: 2.0 * flops, exps: 0.0 };
        let mut f = || {
            let v = arena.borrow();
            conv1d(v.read(x)?, v.read(w)?, Some(v.read(b)?), v.write(y)?, spec, Some(v.write(ws)?), Some(v.write(cws)?))
        };
        gb.report("conv1d", case, fwd, plan.total_bytes(), measured, true, &mut f).unwrap();
        c.bench_function(&format!("conv1d/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut f).unwrap()));
        let mut g = || {
            let v = arena.borrow();
            conv1d_backward(v.read(x)?, v.read(w)?, v.read(dy)?, Some(v.write(dx)?), v.write(dw)?, Some(v.write(db)?), spec, Some(v.write(ws)?), Some(v.write(cws)?))
        };
        gb.report("conv1d_backward", case, bwd, plan.total_bytes(), measured, true, &mut g).unwrap();
        c.bench_function(&format!("conv1d_backward/{case}"), |bch| bch.iter_custom(|iters| gb.time(iters, true, &mut g).unwrap()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
