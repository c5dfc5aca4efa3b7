//! The (Bi)Mamba block: the composed ops on the CPU against an independent token-loop reference
//! (the reverse direction through the flip identity), gradients against finite differences, the
//! footprint against the plan, the GPU block against the CPU twin, determinism, bad input.

#![allow(clippy::needless_range_loop)]

use snug::ops::mamba::{MambaBlock, MambaConfig};
use snug::ops::Real;
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Buf, Device, Error, Plan, Role};

/// One direction's parameters as f64 host vectors, in `DirParams` field order.
type Params = [Vec<f64>; 12];

fn init(r: &mut rand_chacha::ChaCha8Rng, c: MambaConfig) -> Params {
    let (dm, d, n, rk, k) = (c.d_model, c.d_inner, c.d_state, c.dt_rank, c.d_conv);
    let g = |r: &mut rand_chacha::ChaCha8Rng, len: usize, std: f64, mean: f64| randn(r, len, 1.0).into_iter().map(|x| mean + std * x as f64).collect::<Vec<f64>>();
    [
        g(r, d * dm, 1.0 / (dm as f64).sqrt(), 0.0),
        g(r, d * dm, 1.0 / (dm as f64).sqrt(), 0.0),
        g(r, d * k, 0.5, 0.0),
        g(r, d, 0.1, 0.0),
        g(r, rk * d, 1.0 / (d as f64).sqrt(), 0.0),
        g(r, n * d, 1.0 / (d as f64).sqrt(), 0.0),
        g(r, n * d, 1.0 / (d as f64).sqrt(), 0.0),
        g(r, d * rk, 1.0 / (rk as f64).sqrt(), 0.0),
        g(r, d, 0.5, -1.0),
        (0..d * n).map(|i| ((i % n + 1) as f64).ln()).zip(g(r, d * n, 0.1, 0.0)).map(|(a, b)| a + b).collect(), // A = -(1..N) (Mamba init), jittered
        g(r, d, 0.2, 1.0),
        g(r, dm * d, 1.0 / (d as f64).sqrt(), 0.0),
    ]
}

fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Independent reference of one forward-in-time Mamba direction: x [S, L, dm] → out [S, L, dm].
fn reference_forward(p: &Params, c: MambaConfig, s: usize, l: usize, x: &[f64]) -> Vec<f64> {
    let (dm, d, n, rk, k) = (c.d_model, c.d_inner, c.d_state, c.dt_rank, c.d_conv);
    let [in_x, in_z, conv_w, conv_b, x_dt, x_b, x_c, dt_w, dt_bias, a_log, d_skip, out_w] = p;
    let mut out = vec![0.0; s * l * dm];
    for sq in 0..s {
        let tok = |t: usize, j: usize| x[(sq * l + t) * dm + j];
        let xc: Vec<Vec<f64>> = (0..l).map(|t| (0..d).map(|i| (0..dm).map(|j| in_x[i * dm + j] * tok(t, j)).sum()).collect()).collect();
        let z: Vec<Vec<f64>> = (0..l).map(|t| (0..d).map(|i| (0..dm).map(|j| in_z[i * dm + j] * tok(t, j)).sum()).collect()).collect();
        let u: Vec<Vec<f64>> = (0..l)
            .map(|t| {
                (0..d)
                    .map(|i| {
                        let mut acc = conv_b[i];
                        for tap in 0..k {
                            if let Some(src) = (t + tap + 1).checked_sub(k) {
                                acc += conv_w[i * k + tap] * xc[src][i];
                            }
                        }
                        silu(acc)
                    })
                    .collect()
            })
            .collect();
        let mut h = vec![vec![0.0; n]; d];
        for t in 0..l {
            let dt_in: Vec<f64> = (0..rk).map(|q| (0..d).map(|i| x_dt[q * d + i] * u[t][i]).sum()).collect();
            let bm: Vec<f64> = (0..n).map(|q| (0..d).map(|i| x_b[q * d + i] * u[t][i]).sum()).collect();
            let cm: Vec<f64> = (0..n).map(|q| (0..d).map(|i| x_c[q * d + i] * u[t][i]).sum()).collect();
            let mut y = vec![0.0; d];
            for i in 0..d {
                let delta: f64 = (0..rk).map(|q| dt_w[i * rk + q] * dt_in[q]).sum();
                let dt = softplus(delta + dt_bias[i]);
                let mut acc = d_skip[i] * u[t][i];
                for m in 0..n {
                    let a = -a_log[i * n + m].exp();
                    h[i][m] = (dt * a).exp() * h[i][m] + dt * bm[m] * u[t][i];
                    acc += cm[m] * h[i][m];
                }
                y[i] = acc * silu(z[t][i]);
            }
            for j in 0..dm {
                out[(sq * l + t) * dm + j] = (0..d).map(|i| out_w[j * d + i] * y[i]).sum();
            }
        }
    }
    out
}

fn flip(v: &[f64], l: usize, w: usize) -> Vec<f64> {
    (0..v.len()).map(|i| v[((i / (l * w)) * l + l - 1 - (i / w) % l) * w + i % w]).collect()
}

/// A planned block with its input/output buffers.
struct Setup<T: Real> {
    arena: Arena,
    block: MambaBlock<T>,
    x: Buf<T>,
    outs: Vec<Buf<T>>,
    douts: Vec<Buf<T>>,
    dx: Buf<T>,
}

fn setup<T: Real>(dev: &Device, c: MambaConfig, s: usize, l: usize, params: &[Params], x: &[f64], douts: &[Vec<f64>]) -> Setup<T> {
    let mut plan = Plan::new();
    let block = MambaBlock::<T>::declare(&mut plan, "m", c, s, l).unwrap();
    let dirs = params.len();
    let xb = plan.add::<T>("x", &[s, l, c.d_model], Role::Activation).unwrap();
    let outs: Vec<_> = (0..dirs).map(|r| plan.add::<T>(format!("out{r}"), &[s, l, c.d_model], Role::Activation).unwrap()).collect();
    let dbs: Vec<_> = (0..dirs).map(|r| plan.add::<T>(format!("dout{r}"), &[s, l, c.d_model], Role::Grad).unwrap()).collect();
    let dx = plan.add::<T>("dx", &[s, l, c.d_model], Role::Grad).unwrap();
    let mut arena = Arena::new(dev, &plan).unwrap();
    let cv = |v: &[f64]| v.iter().map(|&x| T::round_f64(x)).collect::<Vec<T>>();
    for (p, bufs) in params.iter().zip(&block.params) {
        let list = [bufs.in_x, bufs.in_z, bufs.conv_w, bufs.conv_b, bufs.x_dt, bufs.x_b, bufs.x_c, bufs.dt_w, bufs.dt_bias, bufs.a_log, bufs.d_skip, bufs.out_w];
        for (b, v) in list.iter().zip(p) {
            arena.upload(*b, &cv(v)).unwrap();
        }
    }
    arena.upload(xb, &cv(x)).unwrap();
    for (b, v) in dbs.iter().zip(douts) {
        arena.upload(*b, &cv(v)).unwrap();
    }
    Setup { arena, block, x: xb, outs, douts: dbs, dx }
}

fn grad_list<T: Real>(b: &MambaBlock<T>, r: usize) -> [Buf<T>; 12] {
    let g = &b.grads[r];
    [g.in_x, g.in_z, g.conv_w, g.conv_b, g.x_dt, g.x_b, g.x_c, g.dt_w, g.dt_bias, g.a_log, g.d_skip, g.out_w]
}

const NAMES: [&str; 12] = ["in_x", "in_z", "conv_w", "conv_b", "x_dt", "x_b", "x_c", "dt_w", "dt_bias", "a_log", "d_skip", "out_w"];

fn cfg(bidirectional: bool) -> MambaConfig {
    MambaConfig { d_model: 3, d_inner: 4, d_state: 2, dt_rank: 2, d_conv: 3, bidirectional }
}

fn run_forward(c: MambaConfig, s: usize, l: usize, params: &[Params], x: &[f64]) -> Vec<Vec<f64>> {
    let mut st = setup::<f64>(&Device::Cpu, c, s, l, params, x, &[]);
    st.block.forward(&mut st.arena, st.x, &st.outs).unwrap();
    st.outs.iter().map(|&o| st.arena.download(o).unwrap()).collect()
}

#[test]
fn forward_matches_the_token_loop_reference_in_both_directions() {
    // l = 37: more than one scan chunk, not a multiple of it.
    for (bi, l) in [(true, 37usize), (false, 5)] {
        let c = MambaConfig { d_model: 5, d_inner: 6, d_state: 3, dt_rank: 2, d_conv: 4, bidirectional: bi };
        let s = 2;
        let mut r = rng(1);
        let params: Vec<Params> = (0..1 + bi as usize).map(|_| init(&mut r, c)).collect();
        let x: Vec<f64> = randn(&mut r, s * l * c.d_model, 1.0).into_iter().map(|v| v as f64).collect();
        let got = run_forward(c, s, l, &params, &x);
        let want_f = reference_forward(&params[0], c, s, l, &x);
        for (i, (g, w)) in got[0].iter().zip(&want_f).enumerate() {
            assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "fwd out[{i}]: {g} vs {w}");
        }
        if bi {
            // Reverse direction = the forward reference on the time-flipped input, flipped back.
            let want_r = flip(&reference_forward(&params[1], c, s, l, &flip(&x, l, c.d_model)), l, c.d_model);
            for (i, (g, w)) in got[1].iter().zip(&want_r).enumerate() {
                assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "rev out[{i}]: {g} vs {w}");
            }
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    for bi in [true, false] {
        let c = cfg(bi);
        let (s, l) = (2usize, 5usize);
        let dirs = 1 + bi as usize;
        let mut r = rng(2 + bi as u64);
        let params: Vec<Params> = (0..dirs).map(|_| init(&mut r, c)).collect();
        let x: Vec<f64> = randn(&mut r, s * l * c.d_model, 1.0).into_iter().map(|v| v as f64).collect();
        let douts: Vec<Vec<f64>> = (0..dirs).map(|_| randn(&mut r, s * l * c.d_model, 1.0).into_iter().map(|v| v as f64).collect()).collect();
        let loss = |params: &[Params], x: &[f64]| -> f64 { run_forward(c, s, l, params, x).iter().zip(&douts).map(|(o, g)| o.iter().zip(g).map(|(a, b)| a * b).sum::<f64>()).sum() };
        let mut st = setup::<f64>(&Device::Cpu, c, s, l, &params, &x, &douts);
        // Poison the gradients: everything must be written.
        for rr in 0..dirs {
            for b in grad_list(&st.block, rr) {
                st.arena.fill_bytes(b, 0xFF).unwrap();
            }
        }
        st.arena.fill_bytes(st.dx, 0xFF).unwrap();
        st.block.forward(&mut st.arena, st.x, &st.outs).unwrap();
        st.block.backward(&mut st.arena, st.x, &st.douts, st.dx).unwrap();
        let h = 1e-6;
        let check = |what: &str, an: f64, fd: f64| assert!((an - fd).abs() <= 1e-6 * (1.0 + fd.abs()), "bi={bi} {what}: analytic {an:e}, finite difference {fd:e}");
        let dx = st.arena.download(st.dx).unwrap();
        for i in 0..x.len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            check(&format!("dx[{i}]"), dx[i], (loss(&params, &xp) - loss(&params, &xm)) / (2.0 * h));
        }
        for rr in 0..dirs {
            for (k, b) in grad_list(&st.block, rr).iter().enumerate() {
                let g = st.arena.download(*b).unwrap();
                for i in 0..g.len() {
                    let (mut pp, mut pm) = (params.clone(), params.clone());
                    pp[rr][k][i] += h;
                    pm[rr][k][i] -= h;
                    check(&format!("dir {rr} d{}[{i}]", NAMES[k]), g[i], (loss(&pp, &x) - loss(&pm, &x)) / (2.0 * h));
                }
            }
        }
    }
}

#[test]
fn footprint_is_exactly_what_the_plan_holds() {
    // Tiny, and seed 000's V3 shapes: node (152 sequences, d_model 64, N 16, expand 2) and edge
    // (1,368 sequences, d_model 16, N 8), L = 960, bidirectional.
    for (c, s, l) in [(cfg(true), 2usize, 5usize), (cfg(false), 3, 70), (MambaConfig::new(64, 16, 2, true), 152, 960), (MambaConfig::new(16, 8, 2, true), 1368, 960)] {
        for elem in [4usize, 8] {
            let mut plan = Plan::new();
            let fp = if elem == 4 {
                MambaBlock::<f32>::declare(&mut plan, "m", c, s, l).unwrap();
                MambaBlock::<f32>::footprint(c, s, l)
            } else {
                MambaBlock::<f64>::declare(&mut plan, "m", c, s, l).unwrap();
                MambaBlock::<f64>::footprint(c, s, l)
            };
            let got = |r: Role| plan.buffers().iter().filter(|b| b.role == r).map(|b| b.shape.numel() * b.dtype.size()).sum::<usize>();
            assert_eq!((got(Role::Param), got(Role::Grad), got(Role::Saved), got(Role::Workspace)), (fp.params, fp.grads, fp.saved, fp.workspace), "{c:?} S={s} L={l} elem={elem}");
            assert_eq!(got(Role::Activation) + got(Role::Optimizer) + got(Role::Io), 0);
            assert_eq!(plan.bytes_by_role().iter().map(|(_, b)| b).sum::<usize>(), fp.params + fp.grads + fp.saved + fp.workspace);
        }
    }
    // The saved bytes at the V3 edge shape in f32, stated (docs/perf.md quotes it).
    let fp = MambaBlock::<f32>::footprint(MambaConfig::new(16, 8, 2, true), 1368, 960);
    assert_eq!(fp.saved, 2 * (4 * 1368 * 32 * 960 + 1368 * 960 + 2 * 1368 * 8 * 960 + 32 * 8) * 4 + 1368 * 64 * 960 * 4 + 4 * 2 * 1368 * 32 * 30 * 8);
}

#[test]
fn bad_input_is_a_typed_error() {
    let mut plan = Plan::new();
    let bad = MambaConfig { d_state: 65, ..cfg(true) };
    assert!(matches!(MambaBlock::<f64>::declare(&mut plan, "m", bad, 2, 5), Err(Error::Value { arg: "config", .. })));
    let bad = MambaConfig { d_conv: 5, ..cfg(true) };
    assert!(matches!(MambaBlock::<f64>::declare(&mut plan, "m", bad, 2, 5), Err(Error::Value { arg: "config", .. })));
    assert!(matches!(MambaBlock::<f64>::declare(&mut plan, "m", cfg(true), 0, 5), Err(Error::Shape { .. })));
    let c = cfg(true);
    let mut r = rng(3);
    let params = vec![init(&mut r, c), init(&mut r, c)];
    let x = vec![0.0; 2 * 5 * 3];
    let mut st = setup::<f64>(&Device::Cpu, c, 2, 5, &params, &x, &[]);
    // One output for a bidirectional block; an input of the wrong shape.
    let e = st.block.forward(&mut st.arena, st.x, &st.outs[..1]);
    assert!(matches!(e, Err(Error::Value { arg: "outs", .. })), "{e:?}");
    // An output that is the input, or the input gradient written over the input: refused.
    let e = st.block.forward(&mut st.arena, st.x, &[st.x, st.outs[1]]);
    assert!(matches!(e, Err(Error::Value { arg: "outs", .. })), "{e:?}");
    let e = st.block.forward(&mut st.arena, st.x, &[st.outs[0], st.outs[0]]);
    assert!(matches!(e, Err(Error::Value { arg: "outs", .. })), "{e:?}");
    st.block.forward(&mut st.arena, st.x, &st.outs).unwrap();
    let e = st.block.backward(&mut st.arena, st.x, &st.outs, st.x);
    assert!(matches!(e, Err(Error::Value { arg: "dx", .. })), "{e:?}");
    let mut plan2 = Plan::new();
    let other = plan2.add::<f64>("x", &[2, 6, 3], Role::Activation).unwrap();
    let e = st.block.forward(&mut st.arena, other, &st.outs);
    assert!(e.is_err(), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

#[test]
fn gpu_block_matches_twin_and_is_deterministic() {
    let Some(dev) = gpu_or_skip("gpu_block_matches_twin_and_is_deterministic") else { return };
    for (c, s, l) in [(MambaConfig::new(16, 8, 2, true), 3usize, 100usize), (MambaConfig::new(16, 16, 2, false), 2, 70), (MambaConfig::new(64, 16, 2, true), 2, 960)] {
        let dirs = 1 + c.bidirectional as usize;
        let mut r = rng(9);
        // f32-representable inputs so the f64 twin sees exactly what the GPU sees.
        let q = |v: Vec<f64>| v.into_iter().map(|x| x as f32 as f64).collect::<Vec<_>>();
        let params: Vec<Params> = (0..dirs).map(|_| init(&mut r, c).map(q)).collect();
        let x = q(randn(&mut r, s * l * c.d_model, 1.0).into_iter().map(|v| v as f64).collect());
        let douts: Vec<Vec<f64>> = (0..dirs).map(|_| q(randn(&mut r, s * l * c.d_model, 1.0).into_iter().map(|v| v as f64).collect())).collect();
        let mut cpu = setup::<f64>(&Device::Cpu, c, s, l, &params, &x, &douts);
        cpu.block.forward(&mut cpu.arena, cpu.x, &cpu.outs).unwrap();
        cpu.block.backward(&mut cpu.arena, cpu.x, &cpu.douts, cpu.dx).unwrap();
        let mut gpu = setup::<f32>(&dev, c, s, l, &params, &x, &douts);
        let mut runs = Vec::new();
        for _ in 0..2 {
            for rr in 0..dirs {
                for b in grad_list(&gpu.block, rr) {
                    poison(&mut gpu.arena, b).unwrap();
                }
                poison(&mut gpu.arena, gpu.outs[rr]).unwrap();
            }
            poison(&mut gpu.arena, gpu.dx).unwrap();
            gpu.block.forward(&mut gpu.arena, gpu.x, &gpu.outs).unwrap();
            gpu.block.backward(&mut gpu.arena, gpu.x, &gpu.douts, gpu.dx).unwrap();
            let mut all = Vec::new();
            for (name, g, w) in std::iter::once(("dx".to_string(), gpu.dx, cpu.dx))
                .chain((0..dirs).map(|rr| (format!("out{rr}"), gpu.outs[rr], cpu.outs[rr])))
                .chain((0..dirs).flat_map(|rr| grad_list(&gpu.block, rr).into_iter().zip(grad_list(&cpu.block, rr)).enumerate().map(move |(k, (g, w))| (format!("dir {rr} d{}", NAMES[k]), g, w))))
            {
                let got = gpu.arena.download(g).unwrap();
                let want = cpu.arena.download(w).unwrap();
                let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!((*a as f64 - b).abs() <= 1e-4 * scale, "{c:?} S={s} L={l} {name}[{i}]: {a} vs {b} (scale {scale:e})");
                }
                all.extend(got.iter().map(|v| v.to_bits()));
            }
            runs.push(all);
        }
        assert!(runs[0] == runs[1], "{c:?}: two runs differ (not deterministic)");
    }
}
