//! Fused AdamW: the f32 CPU twin and the CUDA kernel against the f64 twin, the update formula
//! against a closed form, clipping, the bf16 copy, and bad input.

use half::bf16;
use snug::ops::adamw::{adamw_step, plan_moments, AdamwConfig, AdamwTensor, Clip};
use snug::testing::{assert_close, gpu_or_skip, poison, randn, rng, widen, Tol};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

/// Host state of one tensor, in T.
#[derive(Clone)]
struct State<T> {
    p: Vec<T>,
    m: Vec<T>,
    v: Vec<T>,
    b: Vec<bf16>,
}

fn init(n: usize, seed: u64) -> (State<f32>, Vec<Vec<f32>>) {
    let mut r = rng(seed);
    let p = randn(&mut r, n, 1.0);
    // Moments from a few warm steps' worth of magnitude so bias corrections and sqrt(v) matter.
    let m = randn(&mut r, n, 0.01);
    let v: Vec<f32> = randn(&mut r, n, 1e-3).iter().map(|x| x * x).collect();
    let grads = (0..4).map(|_| randn(&mut r, n, 0.1)).collect();
    (State { p, m, v, b: vec![bf16::ZERO; n] }, grads)
}

fn step_host<T: snug::ops::Real>(cfg: &AdamwConfig, step: u64, s: &mut State<T>, g: &[T], clip: Clip<'_, T>, decay: bool) -> Result<(), Error> {
    let n = s.p.len();
    adamw_step(
        cfg,
        step,
        clip,
        AdamwTensor {
            param: ViewMut::host(&mut s.p, &[n])?,
            grad: View::host(g, &[g.len()])?,
            m: ViewMut::host(&mut s.m, &[n])?,
            v: ViewMut::host(&mut s.v, &[n])?,
            param_bf16: Some(ViewMut::host(&mut s.b, &[n])?),
            decay,
        },
    )
}

fn widen_state(s: &State<f32>) -> State<f64> {
    State { p: widen(&s.p), m: widen(&s.m), v: widen(&s.v), b: s.b.clone() }
}

const SIZES: [usize; 7] = [1, 3, 4, 5, 255, 1000, 4097];

#[test]
fn cpu_f32_twin_matches_f64_over_steps() {
    let cfg = AdamwConfig { lr: 3e-3, weight_decay: 0.05, ..Default::default() };
    for (k, &n) in SIZES.iter().enumerate() {
        for decay in [true, false] {
            let (s0, grads) = init(n, 10 + k as u64);
            let (mut s32, mut s64) = (s0.clone(), widen_state(&s0));
            for (t, g) in grads.iter().enumerate() {
                let step = t as u64 + 1;
                step_host(&cfg, step, &mut s32, g, Clip::Scale(0.7), decay).unwrap();
                step_host(&cfg, step, &mut s64, &widen(g), Clip::Scale(0.7), decay).unwrap();
            }
            let what = format!("n={n} decay={decay}");
            assert_close(&format!("{what} param"), &s32.p, &s64.p, Tol::F32);
            assert_close(&format!("{what} m"), &s32.m, &s64.m, Tol::F32);
            assert_close(&format!("{what} v"), &s32.v, &s64.v, Tol::F32);
        }
    }
}

#[test]
fn first_step_matches_closed_form() {
    // From zero moments, step 1: m̂ = g, v̂ = g², so p1 = p0(1 − lr·wd) − lr·g/(|g| + eps).
    let cfg = AdamwConfig { lr: 1e-2, beta1: 0.8, beta2: 0.95, eps: 1e-3, weight_decay: 0.1 };
    let p0 = [1.0f64, -2.0, 0.5, 3.0];
    let g = [0.3f64, -0.02, 0.0, 5.0];
    let mut s = State { p: p0.to_vec(), m: vec![0.0; 4], v: vec![0.0; 4], b: vec![bf16::ZERO; 4] };
    step_host(&cfg, 1, &mut s, &g, Clip::None, true).unwrap();
    let (lr, wd, eps) = (cfg.lr as f64, cfg.weight_decay as f64, cfg.eps as f64);
    let want: Vec<f64> = p0.iter().zip(&g).map(|(p, g)| p * (1.0 - lr * wd) - lr * g / (g.abs() + eps)).collect();
    assert_close("closed form", &s.p, &want, Tol { atol: 1e-12, rtol: 1e-12 });
    let b: Vec<f64> = s.p.iter().map(|&x| snug::ops::bf16_rne(x).to_f64()).collect();
    assert_close("bf16 copy", &s.b, &b, Tol { atol: 0.0, rtol: 0.0 });
}

#[test]
fn masked_tensor_gets_no_decay_and_zero_lr_changes_nothing() {
    let cfg = AdamwConfig { lr: 0.0, weight_decay: 0.5, ..Default::default() };
    let (s0, grads) = init(33, 3);
    let mut s = widen_state(&s0);
    step_host(&cfg, 7, &mut s, &widen(&grads[0]), Clip::None, true).unwrap();
    assert_eq!(s.p, widen(&s0.p));
    let cfg = AdamwConfig { lr: 1e-3, weight_decay: 0.5, ..Default::default() };
    let zero = vec![0.0f64; 33];
    let mut s = State { p: widen(&s0.p), m: vec![0.0; 33], v: vec![0.0; 33], b: vec![bf16::ZERO; 33] };
    step_host(&cfg, 1, &mut s, &zero, Clip::None, false).unwrap();
    assert_eq!(s.p, widen(&s0.p), "zero gradient, zero moments, no decay: parameters unchanged");
}

#[test]
fn clip_by_norm_equals_the_matching_scale() {
    let cfg = AdamwConfig::default();
    let (s0, grads) = init(100, 5);
    for norm in [0.25f64, 1.0, 10.0] {
        let max_norm = 1.0f32;
        let mut a = widen_state(&s0);
        let mut b = widen_state(&s0);
        let nv = [norm];
        step_host(&cfg, 2, &mut a, &widen(&grads[0]), Clip::Norm { norm: View::host(&nv, &[1]).unwrap(), max_norm }, true).unwrap();
        let scale = (max_norm as f64 / (norm + 1e-6)).min(1.0);
        // Scale takes an f32; compare with a tolerance that covers that rounding.
        step_host(&cfg, 2, &mut b, &widen(&grads[0]), Clip::Scale(scale as f32), true).unwrap();
        assert_close(&format!("norm {norm}"), &a.p, &b.p, Tol { atol: 1e-9, rtol: 1e-7 });
    }
}

#[test]
fn non_finite_norm_is_not_silently_ignored() {
    let cfg = AdamwConfig::default();
    let (s0, grads) = init(16, 9);
    // NaN norm: NaN parameters (never an unclipped step).
    let mut s = s0.clone();
    let nan = [f32::NAN];
    step_host(&cfg, 1, &mut s, &grads[0], Clip::Norm { norm: View::host(&nan, &[1]).unwrap(), max_norm: 1.0 }, true).unwrap();
    assert!(s.p.iter().all(|x| x.is_nan()), "NaN norm must poison the step");
    // Infinite norm: scale 0, i.e. the step of a zero gradient.
    let (mut a, mut b) = (s0.clone(), s0.clone());
    let inf = [f32::INFINITY];
    step_host(&cfg, 1, &mut a, &grads[0], Clip::Norm { norm: View::host(&inf, &[1]).unwrap(), max_norm: 1.0 }, true).unwrap();
    step_host(&cfg, 1, &mut b, &[0.0; 16], Clip::None, true).unwrap();
    assert_eq!(a.p, b.p);
}

#[test]
fn bad_input_is_a_typed_error() {
    let cfg = AdamwConfig::default();
    let (mut s, grads) = init(8, 1);
    let short = vec![0.0f32; 7];
    assert!(matches!(step_host(&cfg, 1, &mut s, &short, Clip::None, true), Err(Error::Shape { arg: "grad", .. })));
    assert!(matches!(step_host(&cfg, 0, &mut s, &grads[0], Clip::None, true), Err(Error::Value { arg: "step", .. })));
    for (bad, arg) in [
        (AdamwConfig { lr: f32::NAN, ..cfg }, "lr"),
        (AdamwConfig { lr: -1.0, ..cfg }, "lr"),
        (AdamwConfig { beta1: 1.0, ..cfg }, "beta1"),
        (AdamwConfig { beta2: -0.1, ..cfg }, "beta2"),
        (AdamwConfig { eps: 0.0, ..cfg }, "eps"),
        (AdamwConfig { weight_decay: f32::INFINITY, ..cfg }, "weight_decay"),
    ] {
        match step_host(&bad, 1, &mut s, &grads[0], Clip::None, true) {
            Err(Error::Value { arg: a, .. }) => assert_eq!(a, arg),
            other => panic!("{arg}: expected a Value error, got {other:?}"),
        }
    }
    let two = [1.0f32, 2.0];
    let r = step_host(&cfg, 1, &mut s, &grads[0], Clip::Norm { norm: View::host(&two, &[2]).unwrap(), max_norm: 1.0 }, true);
    assert!(matches!(r, Err(Error::Shape { arg: "norm", .. })));
    let one = [1.0f32];
    let r = step_host(&cfg, 1, &mut s, &grads[0], Clip::Norm { norm: View::host(&one, &[1]).unwrap(), max_norm: 0.0 }, true);
    assert!(matches!(r, Err(Error::Value { arg: "max_norm", .. })));
    assert!(matches!(step_host(&cfg, 1, &mut s, &grads[0], Clip::Scale(f32::NAN), true), Err(Error::Value { .. })));
    // The messages name the argument and both shapes.
    let e = step_host(&cfg, 1, &mut s, &short, Clip::None, true).unwrap_err().to_string();
    assert!(e.contains("adamw") && e.contains("grad") && e.contains("[7]") && e.contains("[8]"), "{e}");
}

/// Runs `steps` GPU steps on one tensor with the clip norm on the device, returning (p, m, v, b).
fn gpu_run(dev: &snug::Device, s0: &State<f32>, grads: &[Vec<f32>], norm: f32, decay: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<bf16>) {
    let n = s0.p.len();
    let cfg = AdamwConfig { lr: 3e-3, weight_decay: 0.05, ..Default::default() };
    let mut plan = Plan::new();
    let p = plan.add::<f32>("p", &[n], Role::Param).unwrap();
    let b = plan.add::<bf16>("p.bf16", &[n], Role::Param).unwrap();
    let g = plan.add::<f32>("p.grad", &[n], Role::Grad).unwrap();
    let (m, v) = plan_moments(&mut plan, "p", &[n]).unwrap();
    let gn = plan.add::<f32>("grad_norm", &[1], Role::Io).unwrap();
    let mut arena = Arena::new(dev, &plan).unwrap();
    arena.upload(p, &s0.p).unwrap();
    arena.upload(m, &s0.m).unwrap();
    arena.upload(v, &s0.v).unwrap();
    arena.upload(gn, &[norm]).unwrap();
    for (t, gr) in grads.iter().enumerate() {
        arena.upload(g, gr).unwrap();
        poison(&mut arena, b).unwrap();
        let bw = arena.borrow();
        let tensor = AdamwTensor { param: bw.write(p).unwrap(), grad: bw.read(g).unwrap(), m: bw.write(m).unwrap(), v: bw.write(v).unwrap(), param_bf16: Some(bw.write(b).unwrap()), decay };
        adamw_step(&cfg, t as u64 + 1, Clip::Norm { norm: bw.read(gn).unwrap(), max_norm: 1.0 }, tensor).unwrap();
    }
    dev.synchronize().unwrap();
    (arena.download(p).unwrap(), arena.download(m).unwrap(), arena.download(v).unwrap(), arena.download(b).unwrap())
}

#[test]
fn gpu_adamw_matches_f64_twin() {
    let Some(dev) = gpu_or_skip("gpu_adamw_matches_f64_twin") else { return };
    let cfg = AdamwConfig { lr: 3e-3, weight_decay: 0.05, ..Default::default() };
    let sizes = SIZES.iter().copied().chain([(1 << 20) + 3]);
    for (k, n) in sizes.enumerate() {
        for (norm, decay) in [(4.0f32, true), (0.5, false)] {
            let (s0, grads) = init(n, 100 + k as u64);
            let (p, m, v, b) = gpu_run(&dev, &s0, &grads, norm, decay);
            let mut r = widen_state(&s0);
            let mut r32 = s0.clone();
            let (nv, nv32) = ([norm as f64], [norm]);
            for (t, g) in grads.iter().enumerate() {
                step_host(&cfg, t as u64 + 1, &mut r, &widen(g), Clip::Norm { norm: View::host(&nv, &[1]).unwrap(), max_norm: 1.0 }, decay).unwrap();
                step_host(&cfg, t as u64 + 1, &mut r32, g, Clip::Norm { norm: View::host(&nv32, &[1]).unwrap(), max_norm: 1.0 }, decay).unwrap();
            }
            // The kernel rounds exactly like the f32 twin (no FMA contraction): bitwise equal.
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&p) == bits(&r32.p) && bits(&m) == bits(&r32.m) && bits(&v) == bits(&r32.v), "n={n}: GPU differs bitwise from the f32 twin");
            assert_eq!(b, r32.b, "n={n}: bf16 copy differs from the f32 twin's");
            let what = format!("gpu n={n} norm={norm} decay={decay}");
            assert_close(&format!("{what} param"), &p, &r.p, Tol::F32);
            assert_close(&format!("{what} m"), &m, &r.m, Tol::F32);
            assert_close(&format!("{what} v"), &v, &r.v, Tol::F32);
            assert_close(&format!("{what} bf16 copy"), &b, &r.p, Tol::BF16);
        }
    }
}

#[test]
fn gpu_adamw_is_deterministic() {
    let Some(dev) = gpu_or_skip("gpu_adamw_is_deterministic") else { return };
    let (s0, grads) = init(100_003, 42);
    let a = gpu_run(&dev, &s0, &grads, 2.0, true);
    let b = gpu_run(&dev, &s0, &grads, 2.0, true);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.0), bits(&b.0));
    assert_eq!(bits(&a.1), bits(&b.1));
    assert_eq!(bits(&a.2), bits(&b.2));
}

#[test]
fn gpu_rejects_host_views_and_f64() {
    let Some(dev) = gpu_or_skip("gpu_rejects_host_views_and_f64") else { return };
    let n = 16;
    let mut plan = Plan::new();
    let p = plan.add::<f32>("p", &[n], Role::Param).unwrap();
    let m = plan.add::<f32>("m", &[n], Role::Optimizer).unwrap();
    let v = plan.add::<f32>("v", &[n], Role::Optimizer).unwrap();
    let pd = plan.add::<f64>("p64", &[n], Role::Param).unwrap();
    let md = plan.add::<f64>("m64", &[n], Role::Optimizer).unwrap();
    let vd = plan.add::<f64>("v64", &[n], Role::Optimizer).unwrap();
    let gd = plan.add::<f64>("g64", &[n], Role::Grad).unwrap();
    let mut arena = Arena::new(&dev, &plan).unwrap();
    let host_grad = vec![0.0f32; n];
    let bw = arena.borrow();
    let t = AdamwTensor { param: bw.write(p).unwrap(), grad: View::host(&host_grad, &[n]).unwrap(), m: bw.write(m).unwrap(), v: bw.write(v).unwrap(), param_bf16: None, decay: true };
    assert!(matches!(adamw_step(&AdamwConfig::default(), 1, Clip::None, t), Err(Error::DeviceMismatch { arg: "grad", .. })));
    let t = AdamwTensor { param: bw.write(pd).unwrap(), grad: bw.read(gd).unwrap(), m: bw.write(md).unwrap(), v: bw.write(vd).unwrap(), param_bf16: None, decay: true };
    assert!(matches!(adamw_step(&AdamwConfig::default(), 1, Clip::None, t), Err(Error::Unsupported { .. })));
}
