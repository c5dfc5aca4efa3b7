//! Bidirectional selective scan at the seed shapes (V3 node and edge streams, concatenated
//! outputs) and one-directional at the audio length; forward and backward. Prints time, bandwidth,
//! % of the floor (bytes, or exp-unit work at 1 exp per state per step — whichever is larger, see
//! docs/perf.md) and planned vs measured memory. Peer: benches/peers/selective_scan.py (the PyTorch
//! reference scan, eager and torch.compile).

use criterion::{criterion_group, criterion_main, Criterion};
use snug::bench::{measure_arena, GpuBench, Work};
use snug::ops::selective_scan::{backward_workspace_bytes, chunk_state_bytes, selective_scan, selective_scan_backward, BackwardSaved, Combine, Dims, ScanDir, ScanDirGrads, CHUNK};
use snug::testing::{gpu_or_skip, randn, rng};
use snug::{Arena, Buf, Plan, Role};

struct DirBufs {
    sdl: [Buf<f32>; 3], // u, delta, z
    a: Buf<f32>,
    snl: [Buf<f32>; 2], // b, c
    dd: [Buf<f32>; 2],  // d_skip, delta_bias
    g_sdl: [Buf<f32>; 3],
    g_a: Buf<f32>,
    g_snl: [Buf<f32>; 2],
    g_dd: [Buf<f32>; 2],
}

fn plan_dir(plan: &mut Plan, k: usize, Dims { s, d, l, n }: Dims) -> DirBufs {
    let mut add = |name: &str, shape: &[usize], role: Role| plan.add::<f32>(format!("{k}.{name}"), shape, role).unwrap();
    DirBufs {
        sdl: [add("u", &[s, d, l], Role::Activation), add("delta", &[s, d, l], Role::Activation), add("z", &[s, d, l], Role::Activation)],
        a: add("a", &[d, n], Role::Param),
        snl: [add("b", &[s, n, l], Role::Activation), add("c", &[s, n, l], Role::Activation)],
        dd: [add("d", &[d], Role::Param), add("bias", &[d], Role::Param)],
        g_sdl: [add("du", &[s, d, l], Role::Grad), add("ddelta", &[s, d, l], Role::Grad), add("dz", &[s, d, l], Role::Grad)],
        g_a: add("da", &[d, n], Role::Grad),
        g_snl: [add("db", &[s, n, l], Role::Grad), add("dc", &[s, n, l], Role::Grad)],
        g_dd: [add("dd", &[d], Role::Grad), add("dbias", &[d], Role::Grad)],
    }
}

fn fill(arena: &mut Arena, x: &DirBufs, dims: Dims, seed: u64) {
    let Dims { s, d, l, n } = dims;
    let mut r = rng(seed);
    arena.upload(x.sdl[0], &randn(&mut r, s * d * l, 1.0)).unwrap();
    arena.upload(x.sdl[1], &randn(&mut r, s * d * l, 0.5)).unwrap();
    arena.upload(x.sdl[2], &randn(&mut r, s * d * l, 1.0)).unwrap();
    arena.upload(x.a, &randn(&mut r, d * n, 1.0).iter().map(|v| -v.exp()).collect::<Vec<_>>()).unwrap();
    arena.upload(x.snl[0], &randn(&mut r, s * n * l, 1.0)).unwrap();
    arena.upload(x.snl[1], &randn(&mut r, s * n * l, 1.0)).unwrap();
    arena.upload(x.dd[0], &randn(&mut r, d, 1.0)).unwrap();
    arena.upload(x.dd[1], &randn(&mut r, d, 0.5)).unwrap();
}

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu_or_skip("bench selective_scan") else { return };
    let mut gb = GpuBench::new(&dev).expect("bench setup");
    let cases = [
        ("node,S=152,D=128,N=16,L=960,concat", Dims { s: 152, d: 128, l: 960, n: 16 }, true),
        ("edge,S=1368,D=32,N=8,L=960,concat", Dims { s: 1368, d: 32, l: 960, n: 8 }, true),
        ("audio,S=1,D=128,N=16,L=131072", Dims { s: 1, d: 128, l: 131_072, n: 16 }, false),
    ];
    for (case, dims, two) in cases {
        let Dims { s, d, l, n } = dims;
        let dirs = 1 + two as usize;
        let combine = if two { Combine::Concat } else { Combine::Sum };
        let width = if two { 2 * d } else { d };
        let mut plan = Plan::new();
        let bufs: Vec<DirBufs> = (0..dirs).map(|k| plan_dir(&mut plan, k, dims)).collect();
        let out = plan.add::<f32>("out", &[s, width, l], Role::Activation).unwrap();
        let dout = plan.add::<f32>("dout", &[s, width, l], Role::Grad).unwrap();
        let states = plan.add::<f32>("chunk_states", &[dirs, s, d, l.div_ceil(CHUNK), n], Role::Saved).unwrap();
        let ws = plan.add::<f32>("workspace", &[backward_workspace_bytes(dims, dirs, snug::DType::F32) / 4], Role::Workspace).unwrap();
        let (mut arena, measured) = measure_arena(&dev, &plan).unwrap();
        for (k, x) in bufs.iter().enumerate() {
            fill(&mut arena, x, dims, 10 + k as u64);
        }
        arena.upload(dout, &randn(&mut rng(9), s * width * l, 1.0)).unwrap();
        let mut fwd = || {
            let bw = arena.borrow();
            let mk = |x: &DirBufs| -> snug::Result<ScanDir<'_, f32>> {
                Ok(ScanDir { u: bw.read(x.sdl[0])?, delta: bw.read(x.sdl[1])?, a: bw.read(x.a)?, b: bw.read(x.snl[0])?, c: bw.read(x.snl[1])?, d_skip: Some(bw.read(x.dd[0])?), delta_bias: Some(bw.read(x.dd[1])?), z: Some(bw.read(x.sdl[2])?) })
            };
            let f = mk(&bufs[0])?;
            let r = bufs.get(1).map(mk).transpose()?;
            selective_scan(&f, r.as_ref(), combine, bw.write(out)?, Some(bw.write(states)?))
        };
        // Floor: every input read once, the output and the chunk states written once.
        let fwd_bytes = 4.0 * (dirs * (3 * s * d * l + 2 * s * n * l) + s * width * l) as f64 + chunk_state_bytes(dims, dirs) as f64;
        // One exp2 per state per step; ~4 FMA-class FLOPs beside it.
        let exps = (dirs * s * d * l * n) as f64;
        let work = Work { bytes: fwd_bytes, flops: 8.0 * exps, exps };
        gb.report("selective_scan", case, work, plan.total_bytes(), measured, true, &mut fwd).unwrap();
        c.bench_function(&format!("selective_scan/{case}"), |b| b.iter_custom(|iters| gb.time(iters, true, &mut fwd).unwrap()));


        let mut bwd = || {
            let bw = arena.borrow();
            let mk = |x: &DirBufs| -> snug::Result<ScanDir<'_, f32>> {
                Ok(ScanDir { u: bw.read(x.sdl[0])?, delta: bw.read(x.sdl[1])?, a: bw.read(x.a)?, b: bw.read(x.snl[0])?, c: bw.read(x.snl[1])?, d_skip: Some(bw.read(x.dd[0])?), delta_bias: Some(bw.read(x.dd[1])?), z: Some(bw.read(x.sdl[2])?) })
            };
            let mkg = |x: &DirBufs| -> snug::Result<ScanDirGrads<'_, f32>> {
                Ok(ScanDirGrads {
                    du: bw.write(x.g_sdl[0])?,
                    ddelta: bw.write(x.g_sdl[1])?,
                    da: bw.write(x.g_a)?,
                    db: bw.write(x.g_snl[0])?,
                    dc: bw.write(x.g_snl[1])?,
                    dd_skip: Some(bw.write(x.g_dd[0])?),
                    ddelta_bias: Some(bw.write(x.g_dd[1])?),
                    dz: Some(bw.write(x.g_sdl[2])?),
                })
            };
            let f = mk(&bufs[0])?;
            let r = bufs.get(1).map(mk).transpose()?;
            let gf = mkg(&bufs[0])?;
            let gr = bufs.get(1).map(mkg).transpose()?;
            let saved = BackwardSaved::Gpu { chunk_states: bw.read(states)?, workspace: bw.write(ws)? };
            selective_scan_backward(&f, r.as_ref(), combine, bw.read(dout)?, saved, gf, gr)
        };
        // Floor: inputs + dout + states read, every gradient written; 2 exps per state per step
        // (recompute + adjoint).
        let bwd_bytes = fwd_bytes + 4.0 * (dirs * (3 * s * d * l + 2 * s * n * l)) as f64;
        let work = Work { bytes: bwd_bytes, flops: 24.0 * exps, exps: 2.0 * exps };
        gb.report("selective_scan_backward", case, work, plan.total_bytes(), measured, true, &mut bwd).unwrap();
        c.bench_function(&format!("selective_scan_backward/{case}"), |b| b.iter_custom(|iters| gb.time(iters, true, &mut bwd).unwrap()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
