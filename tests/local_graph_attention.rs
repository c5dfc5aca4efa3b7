//! Seed 001's LocalGraphAttention layer (+ FFN): forward against an independent loop reference,
//! every gradient against finite differences (CPU, f64), the footprint against the plan, the GPU
//! layer against the CPU twin with determinism; bad input.

#![allow(clippy::needless_range_loop)]

use snug::ops::elementwise::Act;
use snug::ops::local_attn::{local_attn, Border, Layout, LocalAttnSpec};
use snug::ops::local_graph_attention::{LgaConfig, LocalGraphAttention};
use snug::ops::Real;
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Buf, Device, Plan, Role, View, ViewMut};

type Params = [Vec<f64>; 10];

fn cfg(border: Border) -> LgaConfig {
    LgaConfig { channels: 4, heads: 2, kernel: 3, border, ffn: 6, act: Act::GeluErf, eps: 1e-5 }
}

fn init(r: &mut rand_chacha::ChaCha8Rng, c: &LgaConfig) -> Params {
    let (ch, f) = (c.channels, c.ffn);
    let g = |r: &mut rand_chacha::ChaCha8Rng, n: usize, std: f64, mean: f64| randn(r, n, 1.0).into_iter().map(|x| mean + std * x as f64).collect::<Vec<f64>>();
    let s = 1.0 / (ch as f64).sqrt();
    [g(r, ch * ch, s, 0.0), g(r, ch * ch, s, 0.0), g(r, ch * ch, s, 0.0), g(r, ch * ch, s, 0.0), g(r, ch, 0.2, 1.0), g(r, ch, 0.2, 0.0), g(r, f * ch, s, 0.0), g(r, ch * f, 1.0 / (f as f64).sqrt(), 0.0), g(r, ch, 0.2, 1.0), g(r, ch, 0.2, 0.0)]
}

/// 1×1 conv: out[b, o, p] = Σ_i w[o, i] x[b, i, p].
fn conv1(w: &[f64], x: &[f64], b: usize, cin: usize, cout: usize, hw: usize) -> Vec<f64> {
    let mut o = vec![0.0; b * cout * hw];
    for bi in 0..b {
        for oc in 0..cout {
            for p in 0..hw {
                o[(bi * cout + oc) * hw + p] = (0..cin).map(|i| w[oc * cin + i] * x[(bi * cin + i) * hw + p]).sum();
            }
        }
    }
    o
}

fn ln_c(x: &[f64], g: &[f64], bt: &[f64], b: usize, c: usize, hw: usize) -> Vec<f64> {
    let mut o = vec![0.0; x.len()];
    for bi in 0..b {
        for p in 0..hw {
            let v: Vec<f64> = (0..c).map(|i| x[(bi * c + i) * hw + p]).collect();
            let m = v.iter().sum::<f64>() / c as f64;
            let var = v.iter().map(|t| (t - m).powi(2)).sum::<f64>() / c as f64;
            for i in 0..c {
                o[(bi * c + i) * hw + p] = (v[i] - m) / (var + 1e-5f32 as f64).sqrt() * g[i] + bt[i];
            }
        }
    }
    o
}

/// Independent reference of the layer (the attention itself through the separately tested twin).
fn reference(p: &Params, c: &LgaConfig, b: usize, h: usize, w: usize, x: &[f64]) -> Vec<f64> {
    let (ch, f, hw) = (c.channels, c.ffn, h * w);
    let (q, k, v) = (conv1(&p[0], x, b, ch, ch, hw), conv1(&p[1], x, b, ch, ch, hw), conv1(&p[2], x, b, ch, ch, hw));
    let mut att = vec![0.0; x.len()];
    let mut lse = vec![0.0f32; b * c.heads * hw];
    let sh = [b, ch, h, w];
    let spec = LocalAttnSpec { kernel: c.kernel, border: c.border, layout: Layout::Bchw { heads: c.heads }, scale: None };
    local_attn(View::host(&q, &sh).unwrap(), View::host(&k, &sh).unwrap(), View::host(&v, &sh).unwrap(), ViewMut::host(&mut att, &sh).unwrap(), ViewMut::host(&mut lse, &[b, c.heads, h, w]).unwrap(), spec).unwrap();
    let o = conv1(&p[3], &att, b, ch, ch, hw);
    let r1: Vec<f64> = x.iter().zip(&o).map(|(a, b)| a + b).collect();
    let y1 = ln_c(&r1, &p[4], &p[5], b, ch, hw);
    let hid: Vec<f64> = conv1(&p[6], &y1, b, ch, f, hw).iter().map(|&t| c.act.f(t)).collect();
    let f2 = conv1(&p[7], &hid, b, f, ch, hw);
    let r2: Vec<f64> = y1.iter().zip(&f2).map(|(a, b)| a + b).collect();
    ln_c(&r2, &p[8], &p[9], b, ch, hw)
}

struct Setup<T: Real> {
    arena: Arena,
    layer: LocalGraphAttention<T>,
    x: Buf<T>,
    y: Buf<T>,
    dy: Buf<T>,
    dx: Buf<T>,
}

fn setup<T: Real>(dev: &Device, c: LgaConfig, (b, h, w): (usize, usize, usize), p: &Params, x: &[f64], dy: &[f64]) -> Setup<T> {
    let mut plan = Plan::new();
    let layer = LocalGraphAttention::<T>::declare(&mut plan, "lga", c, b, h, w).unwrap();
    let sh = [b, c.channels, h, w];
    let bufs: Vec<_> = ["x", "y", "dy", "dx"].iter().map(|nm| plan.add::<T>(*nm, &sh, Role::Activation).unwrap()).collect();
    let mut arena = Arena::new(dev, &plan).unwrap();
    let cv = |v: &[f64]| v.iter().map(|&t| T::round_f64(t)).collect::<Vec<T>>();
    let pl = layer.params;
    for (buf, v) in [pl.w_q, pl.w_k, pl.w_v, pl.w_o, pl.ln1_g, pl.ln1_b, pl.w1, pl.w2, pl.ln2_g, pl.ln2_b].iter().zip(p) {
        arena.upload(*buf, &cv(v)).unwrap();
    }
    arena.upload(bufs[0], &cv(x)).unwrap();
    if !dy.is_empty() {
        arena.upload(bufs[2], &cv(dy)).unwrap();
    }
    Setup { arena, layer, x: bufs[0], y: bufs[1], dy: bufs[2], dx: bufs[3] }
}

fn grad_bufs<T: Real>(l: &LocalGraphAttention<T>) -> [Buf<T>; 10] {
    let g = l.grads;
    [g.w_q, g.w_k, g.w_v, g.w_o, g.ln1_g, g.ln1_b, g.w1, g.w2, g.ln2_g, g.ln2_b]
}

fn forward(c: LgaConfig, dims: (usize, usize, usize), p: &Params, x: &[f64]) -> Vec<f64> {
    let mut st = setup::<f64>(&Device::Cpu, c, dims, p, x, &[]);
    st.layer.forward(&mut st.arena, st.x, st.y).unwrap();
    st.arena.download(st.y).unwrap()
}

#[test]
fn forward_matches_the_loop_reference() {
    for border in [Border::ZeroPad, Border::Shift] {
        let c = cfg(border);
        let dims @ (b, h, w) = (2usize, 4usize, 5usize);
        let mut r = rng(1);
        let p = init(&mut r, &c);
        let x: Vec<f64> = randn(&mut r, b * c.channels * h * w, 1.0).into_iter().map(|t| t as f64).collect();
        let got = forward(c, dims, &p, &x);
        let want = reference(&p, &c, b, h, w, &x);
        for (i, (g, wv)) in got.iter().zip(&want).enumerate() {
            assert!((g - wv).abs() <= 1e-12 * (1.0 + wv.abs()), "{border:?} y[{i}]: {g} vs {wv}");
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    for border in [Border::ZeroPad, Border::Shift] {
        let c = cfg(border);
        let dims @ (b, h, w) = (1usize, 3usize, 4usize);
        let mut r = rng(2);
        let p = init(&mut r, &c);
        let n = b * c.channels * h * w;
        let x: Vec<f64> = randn(&mut r, n, 1.0).into_iter().map(|t| t as f64).collect();
        let dy: Vec<f64> = randn(&mut r, n, 1.0).into_iter().map(|t| t as f64).collect();
        let loss = |p: &Params, x: &[f64]| forward(c, dims, p, x).iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>();
        let mut st = setup::<f64>(&Device::Cpu, c, dims, &p, &x, &dy);
        for buf in grad_bufs(&st.layer) {
            st.arena.fill_bytes(buf, 0xFF).unwrap();
        }
        st.arena.fill_bytes(st.dx, 0xFF).unwrap();
        st.layer.forward(&mut st.arena, st.x, st.y).unwrap();
        st.layer.backward(&mut st.arena, st.x, st.dy, st.dx).unwrap();
        let hs = 1e-6;
        let dx = st.arena.download(st.dx).unwrap();
        for i in 0..n {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += hs;
            xm[i] -= hs;
            let fd = (loss(&p, &xp) - loss(&p, &xm)) / (2.0 * hs);
            assert!((dx[i] - fd).abs() <= 1e-6 * (1.0 + fd.abs()), "{border:?} dx[{i}]: {} vs {fd}", dx[i]);
        }
        let names = ["w_q", "w_k", "w_v", "w_o", "ln1_g", "ln1_b", "w1", "w2", "ln2_g", "ln2_b"];
        for (k, buf) in grad_bufs(&st.layer).iter().enumerate() {
            let g = st.arena.download(*buf).unwrap();
            for i in 0..g.len() {
                let (mut pp, mut pm) = (p.clone(), p.clone());
                pp[k][i] += hs;
                pm[k][i] -= hs;
                let fd = (loss(&pp, &x) - loss(&pm, &x)) / (2.0 * hs);
                assert!((g[i] - fd).abs() <= 1e-6 * (1.0 + fd.abs()), "{border:?} d{}[{i}]: {} vs {fd}", names[k], g[i]);
            }
        }
    }
}

#[test]
fn footprint_is_exactly_what_the_plan_holds() {
    for (c, (b, h, w)) in [(cfg(Border::ZeroPad), (2usize, 4usize, 5usize)), (LgaConfig::seed(), (4, 256, 256))] {
        let mut plan = Plan::new();
        LocalGraphAttention::<f32>::declare(&mut plan, "lga", c, b, h, w).unwrap();
        let fp = LocalGraphAttention::<f32>::footprint(c, b, h, w);
        let got = |r: Role| plan.buffers().iter().filter(|x| x.role == r).map(|x| x.shape.numel() * x.dtype.size()).sum::<usize>();
        assert_eq!((got(Role::Param), got(Role::Grad), got(Role::Saved), got(Role::Workspace)), (fp.params, fp.grads, fp.saved, fp.workspace), "{c:?}");
    }
    // Seed shape, f32: what one layer keeps for its backward (docs/perf.md quotes it).
    let fp = LocalGraphAttention::<f32>::footprint(LgaConfig::seed(), 4, 256, 256);
    let map = 4 * 256 * 65536;
    assert_eq!(fp.saved, (7 * map + 4 * 4 * 65536 + 4 * 1024 * 65536) * 4 + 4 * 4 * 4 * 65536);
}

#[test]
fn gpu_layer_matches_twin_and_is_deterministic() {
    let Some(dev) = gpu_or_skip("gpu_layer_matches_twin_and_is_deterministic") else { return };
    for (c, dims) in [(LgaConfig { channels: 32, heads: 4, kernel: 7, border: Border::ZeroPad, ffn: 64, act: Act::GeluErf, eps: 1e-5 }, (2usize, 17usize, 19usize)), (LgaConfig { channels: 64, heads: 4, kernel: 5, border: Border::Shift, ffn: 128, act: Act::GeluTanh, eps: 1e-5 }, (1, 9, 12))] {
        let (b, h, w) = dims;
        let mut r = rng(3);
        let q = |v: Vec<f64>| v.into_iter().map(|t| t as f32 as f64).collect::<Vec<_>>();
        let p: Params = init(&mut r, &c).map(q);
        let n = b * c.channels * h * w;
        let x = q(randn(&mut r, n, 1.0).into_iter().map(|t| t as f64).collect());
        let dy = q(randn(&mut r, n, 1.0).into_iter().map(|t| t as f64).collect());
        let mut cpu = setup::<f64>(&Device::Cpu, c, dims, &p, &x, &dy);
        cpu.layer.forward(&mut cpu.arena, cpu.x, cpu.y).unwrap();
        cpu.layer.backward(&mut cpu.arena, cpu.x, cpu.dy, cpu.dx).unwrap();
        let mut gpu = setup::<f32>(&dev, c, dims, &p, &x, &dy);
        let mut runs = Vec::new();
        for _ in 0..2 {
            for buf in grad_bufs(&gpu.layer).into_iter().chain([gpu.y, gpu.dx]) {
                poison(&mut gpu.arena, buf).unwrap();
            }
            gpu.layer.forward(&mut gpu.arena, gpu.x, gpu.y).unwrap();
            gpu.layer.backward(&mut gpu.arena, gpu.x, gpu.dy, gpu.dx).unwrap();
            let mut bits = Vec::new();
            for (k, (gb, cb)) in [gpu.y, gpu.dx].into_iter().zip([cpu.y, cpu.dx]).chain(grad_bufs(&gpu.layer).into_iter().zip(grad_bufs(&cpu.layer))).enumerate() {
                let got = gpu.arena.download(gb).unwrap();
                let want = cpu.arena.download(cb).unwrap();
                let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
                for (i, (a, bv)) in got.iter().zip(&want).enumerate() {
                    assert!((*a as f64 - bv).abs() <= 1e-4 * scale, "{c:?} tensor {k} [{i}]: {a} vs {bv}");
                }
                bits.extend(got.iter().map(|v| v.to_bits()));
            }
            runs.push(bits);
        }
        assert!(runs[0] == runs[1], "{c:?}: runs differ");
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let mut plan = Plan::new();
    let bad = LgaConfig { heads: 3, ..cfg(Border::ZeroPad) };
    assert!(LocalGraphAttention::<f64>::declare(&mut plan, "a", bad, 1, 4, 4).is_err());
    let bad = LgaConfig { kernel: 4, ..cfg(Border::ZeroPad) };
    assert!(LocalGraphAttention::<f64>::declare(&mut plan, "b", bad, 1, 4, 4).is_err());
    // Shift needs a map of at least K × K.
    let bad = LgaConfig { kernel: 5, ..cfg(Border::Shift) };
    assert!(LocalGraphAttention::<f64>::declare(&mut plan, "c", bad, 1, 4, 4).is_err());
    let c = cfg(Border::ZeroPad);
    let mut r = rng(4);
    let p = init(&mut r, &c);
    let x = vec![0.5; 4 * 3 * 4];
    let mut st = setup::<f64>(&Device::Cpu, c, (1, 3, 4), &p, &x, &[]);
    // Output over the input; dx over the input.
    assert!(st.layer.forward(&mut st.arena, st.x, st.x).is_err());
    st.layer.forward(&mut st.arena, st.x, st.y).unwrap();
    assert!(st.layer.backward(&mut st.arena, st.x, st.dy, st.x).is_err());
}
