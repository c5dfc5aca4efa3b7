//! Discretized mixture of logistics (PixelCNN++) loss with its gradient in the same pass, the
//! gradient's upstream scaling, and sampling (`kernels/dml.cu`).
//!
//! `params: [B, 3K, L]` = `[logits | means | log_scales]` (K ≤ 32 components), targets `[B, L]` in
//! `[−1, 1]` on `2^bits` bins (8 ≤ bits ≤ 16) given as values ([`Target::Values`]) or bin indices
//! ([`Target::Bins`], bin `i` at `2i/(2^bits − 1) − 1`, rounded to f32 as a value target would be). Per position, exactly PixelCNN++'s
//! one-channel `discretized_mix_logistic_loss`: log-scales clamped at −7, the edge bins
//! (`x < −0.999`: `log σ(u⁺)`; `x > 0.999`: `log(1 − σ(u⁻))`), the bin mass `σ(u⁺) − σ(u⁻)` when it
//! exceeds 1e-5 and the mid-point density `− log((2^bits − 1)/2)` otherwise, mixed with
//! `log_softmax(logits)` by a stable log-sum-exp; the loss is its negation, per position or
//! reduced ([`Reduction`]). The bin mass is formed without cancellation, as
//! `σ(u⁺)·σ(−u⁻)·(1 − e^(−(u⁺−u⁻)))` — the reference's `σ(u⁺) − σ(u⁻)` loses most of its f32 digits
//! at 16 bits, where the mass is ~1e-5 — at identical semantics.
//!
//! [`dml_loss`] writes the loss and, in the same pass, `grad = ∂loss/∂params` (for an upstream
//! gradient of 1; the mean's `1/(B·L)` included); [`dml_backward`] scales it in place by the
//! upstream gradient. Nothing else is kept: memory = gradient + loss. Deterministic (fixed-order
//! reductions). [`dml_sample`] draws from the mixture: a component by Gumbel-max over
//! `logits/τ`, then a logistic sample `μ + s·τ·logit(u)` clamped to `[−1, 1]` and quantised to the
//! nearest bin; counter-based random numbers (seed, position, draw), so a seed gives the same
//! samples on every run and on both devices (up to float rounding at decision boundaries).
//!
//! Bad targets: with [`DmlSpec::checked`] targets outside `[−1, 1]` (or NaN), bin indices beyond
//! `2^bits − 1` and non-finite params are typed errors (on the GPU this reads them back: a debug
//! mode). Unchecked, the kernels clamp targets into range (NaN → −1) and NaN params propagate to
//! the loss and gradient. `T` (params, grad): f32 or bf16 on the GPU, f32 math; `L` (loss,
//! upstream): f32 on the GPU; the CPU twin takes any [`Real`] and computes in f64.

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::{check_range, check_shape, common_loc, host_f64, require_f32, require_f32_or_bf16, mix64, need_workspace, store_f64, Real};
use crate::ffi::{self, SnugDmlParams};
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Error, Result};

const OP: &str = "dml_loss";
const OP_BWD: &str = "dml_backward";
const OP_SAMPLE: &str = "dml_sample";
/// Most mixture components.
pub const MAX_K: usize = ffi::SNUG_DML_MAX_K as usize;
const LOG_SCALE_MIN: f64 = -7.0;

pub use super::Reduction;

/// Targets `[B, L]`.
#[derive(Debug)]
pub enum Target<'a> {
    /// Values in `[−1, 1]`.
    Values(View<'a, f32>),
    /// Bin indices in `0..2^bits`.
    Bins(View<'a, u32>),
}

/// What to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmlSpec {
    /// Mixture components K (1..=32).
    pub k: usize,
    /// Bits per sample (8..=16).
    pub bits: u32,
    /// Loss reduction.
    pub reduction: Reduction,
    /// Validate targets and params (on the GPU: by reading them back).
    pub checked: bool,
}

fn dims(op: &'static str, shape: &[usize], spec: &DmlSpec) -> Result<(usize, usize)> {
    if !(1..=MAX_K).contains(&spec.k) {
        return Err(Error::Value { op, arg: "k", expected: format!("1 <= K <= {MAX_K}"), got: spec.k.to_string() });
    }
    if !(8..=16).contains(&spec.bits) {
        return Err(Error::Value { op, arg: "bits", expected: "8 <= bits <= 16".into(), got: spec.bits.to_string() });
    }
    match *shape {
        [b, c, l] if b >= 1 && l >= 1 && c == 3 * spec.k => Ok((b, l)),
        _ => Err(Error::Shape { op, arg: "params", expected: format!("[B, 3K = {}, L] with B, L >= 1", 3 * spec.k), got: shape.to_vec() }),
    }
}

/// Workspace of [`dml_loss`] on the GPU: per-block partial sums for a reduced loss,
/// `⌈B·L/256⌉·4` bytes (0 for [`Reduction::None`] and on the CPU).
pub fn loss_workspace_bytes(b: usize, l: usize, reduction: Reduction) -> usize {
    match reduction {
        Reduction::None => 0,
        _ => 4 * (b * l).div_ceil(256),
    }
}

fn loss_shape(b: usize, l: usize, r: Reduction) -> Vec<usize> {
    match r {
        Reduction::None => vec![b, l],
        _ => vec![1],
    }
}

/// One component's log-probability of the bin at `x` and its derivatives w.r.t. the mean and the
/// clamped log-scale (f64, the twin of the kernel's `component`).
fn component(x: f64, mean: f64, ls_raw: f64, h: f64, log_half_bins: f64) -> (f64, f64, f64) {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let softplus = |v: f64| v.max(0.0) + (-v.abs()).exp().ln_1p();
    let s = ls_raw.max(LOG_SCALE_MIN);
    let inv = (-s).exp();
    let c = x - mean;
    let (up, um) = (inv * (c + h), inv * (c - h));
    // The edge thresholds as the kernel (and the reference's f32 code) compares them.
    if x < -0.999f32 as f64 {
        let g = sig(-up);
        (-softplus(-up), -g * inv, -g * up)
    } else if x > 0.999f32 as f64 {
        let g = sig(um);
        (-softplus(um), g * inv, g * um)
    } else {
        // σ(u⁺) − σ(u⁻) = σ(u⁺)·σ(−u⁻)·(1 − e^(−q)), q = u⁺ − u⁻ = 2h/scale: no cancellation.
        let q = 2.0 * h * inv;
        let (sp, sm, em) = (sig(up), sig(-um), -(-q).exp_m1());
        let delta = sp * sm * em;
        if delta > 1e-5 {
            (sp.ln() + sm.ln() + em.ln(), -inv * (sig(-up) - sig(um)), -up * sig(-up) + um * sig(um) - q / q.exp_m1())
        } else {
            let mid = inv * c;
            let t = 1.0 - 2.0 * sig(mid);
            (mid - s - 2.0 * softplus(mid) - log_half_bins, -t * inv, -t * mid - 1.0)
        }
    }
}

fn host_targets(op: &'static str, t: &Target<'_>, bits: u32, checked: bool) -> Result<Vec<f64>> {
    let last = (1u32 << bits) - 1;
    match t {
        Target::Values(v) => {
            let x = v.to_vec()?;
            if checked {
                if let Some(bad) = x.iter().find(|x| !(-1.0..=1.0).contains(*x)) {
                    return Err(Error::Value { op, arg: "target", expected: "values in [-1, 1]".into(), got: bad.to_string() });
                }
            }
            Ok(x.iter().map(|&x| if x.is_nan() { -1.0 } else { (x as f64).clamp(-1.0, 1.0) }).collect())
        }
        Target::Bins(v) => {
            let x = v.to_vec()?;
            if checked {
                if let Some(bad) = x.iter().find(|&&i| i > last) {
                    return Err(Error::Value { op, arg: "target", expected: format!("bin indices < 2^{bits}"), got: bad.to_string() });
                }
            }
            // The bin's value as an f32 target would hold it (and the kernel computes it):
            // (2i − last)/last rounded once.
            Ok(x.iter().map(|&i| ((2 * i.min(last) as i64 - last as i64) as f32 / last as f32) as f64).collect())
        }
    }
}

/// The loss (`[B, L]` for [`Reduction::None`], else `[1]`) and, when `grad` is given, `∂loss/∂params`
/// (`[B, 3K, L]`, written). On the GPU a reduced loss needs `workspace` of
/// [`loss_workspace_bytes`].
pub fn dml_loss<T: Real, L: Real>(params: View<'_, T>, target: Target<'_>, loss: ViewMut<'_, L>, grad: Option<ViewMut<'_, T>>, workspace: Option<ViewMut<'_, f32>>, spec: DmlSpec) -> Result<()> {
    let (b, l) = dims(OP, params.shape(), &spec)?;
    let (tshape, tloc) = match &target {
        Target::Values(v) => (v.shape(), v.loc()),
        Target::Bins(v) => (v.shape(), v.loc()),
    };
    check_shape(OP, "target", tshape, &[b, l], "[B, L] from params")?;
    check_shape(OP, "loss", loss.shape(), &loss_shape(b, l, spec.reduction), "[B, L] for Reduction::None, else [1]")?;
    let mut locs = vec![("params", params.loc()), ("target", tloc), ("loss", loss.loc())];
    if let Some(g) = &grad {
        check_shape(OP, "grad", g.shape(), params.shape(), "the shape of params")?;
        locs.push(("grad", g.loc()));
    }
    locs.extend(workspace.as_ref().map(|w| ("workspace", w.loc())));
    let loc = common_loc(OP, &locs)?;
    if spec.checked {
        host_targets(OP, &target, spec.bits, true)?;
        if let Some(bad) = params.to_vec()?.iter().find(|v| !v.is_finite()) {
            return Err(Error::Value { op: OP, arg: "params", expected: "finite values (checked mode)".into(), got: format!("{bad:?}") });
        }
    }
    let k = spec.k;
    match loc {
        Loc::Host => {
            let p = host_f64(OP, "params", &params)?;
            let x = host_targets(OP, &target, spec.bits, false)?;
            let bins = ((1u64 << spec.bits) - 1) as f64;
            let (h, lhb) = (1.0 / bins, (0.5 * bins).ln());
            let n = b * l;
            let gs = if spec.reduction == Reduction::Mean { 1.0 / n as f64 } else { 1.0 };
            let (mut losses, mut g) = (vec![0.0; n], vec![0.0; p.len()]);
            for i in 0..n {
                let (bb, ll) = (i / l, i % l);
                let at = |j: usize| (bb * 3 * k + j) * l + ll;
                let comps: Vec<(f64, f64, f64)> = (0..k).map(|c| component(x[i], p[at(k + c)], p[at(2 * k + c)], h, lhb)).collect();
                let lse = |v: &mut dyn Iterator<Item = f64>| {
                    let v: Vec<f64> = v.collect();
                    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    m + v.iter().map(|t| (t - m).exp()).sum::<f64>().ln()
                };
                let lse_logit = lse(&mut (0..k).map(|c| p[at(c)]));
                let lse_a = lse(&mut (0..k).map(|c| comps[c].0 + p[at(c)]));
                losses[i] = -(lse_a - lse_logit);
                for c in 0..k {
                    let (pi, w) = ((p[at(c)] - lse_logit).exp(), (comps[c].0 + p[at(c)] - lse_a).exp());
                    g[at(c)] = (pi - w) * gs;
                    g[at(k + c)] = -w * comps[c].1 * gs;
                    g[at(2 * k + c)] = if p[at(2 * k + c)] >= LOG_SCALE_MIN { -w * comps[c].2 * gs } else { 0.0 };
                }
            }
            store_f64(OP, "loss", loss, &spec.reduction.apply(losses, n))?;
            match grad {
                Some(gv) => store_f64(OP, "grad", gv, &g),
                None => Ok(()),
            }
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP)?;
            require_f32::<L>(OP)?;
            let n = (b * l) as u64;
            let blocks = n.div_ceil(256);
            if blocks > i32::MAX as u64 {
                return Err(Error::Shape { op: OP, arg: "params", expected: "fewer than 2^39 positions".into(), got: params.shape().to_vec() });
            }
            let ws = match spec.reduction {
                Reduction::None => None,
                _ => {
                    let want = loss_workspace_bytes(b, l, spec.reduction) / 4;
                    need_workspace(OP, workspace, want, "loss_workspace_bytes")?.device_ptr()
                }
            };
            let (tf, ti) = match &target {
                Target::Values(v) => (v.device_ptr().unwrap_or(0) as *const f32, std::ptr::null()),
                Target::Bins(v) => (std::ptr::null(), v.device_ptr().unwrap_or(0) as *const u32),
            };
            let red = match spec.reduction {
                Reduction::None => ffi::SNUG_DML_NONE,
                Reduction::Mean => ffi::SNUG_DML_MEAN,
                Reduction::Sum => ffi::SNUG_DML_SUM,
            };
            let p = SnugDmlParams {
                params: params.device_ptr().unwrap_or(0) as *const c_void,
                grad: grad.as_ref().and_then(|g| g.device_ptr()).unwrap_or(0) as *mut c_void,
                target_f: tf,
                target_i: ti,
                loss: ws.or(loss.device_ptr()).unwrap_or(0) as *mut f32,
                out: loss.device_ptr().unwrap_or(0) as *mut f32,
                upstream: std::ptr::null(),
                b: b as u64,
                l: l as u64,
                k: k as u32,
                bits: spec.bits,
                reduction: red,
                blocks: blocks as u32,
                seed: 0,
                temperature: 1.0,
                grad_scale: if spec.reduction == Reduction::Mean { 1.0 / n as f32 } else { 1.0 },
            };
            let kernel = if T::DTYPE == DType::BF16 { "dml_loss_bf16" } else { "dml_loss_f32" };
            let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: params (and grad) are [B, 3K, L] device views of T, the target [B, L] f32 or
            // u32, loss [B, L] (NONE) or the workspace of ⌈B·L/256⌉ partials (checked); one thread
            // per position reads its column and writes its gradient column and loss (or its
            // block's partial).
            unsafe { gpu.launch(OP, "dml", kernel, cfg, &p)? };
            if spec.reduction != Reduction::None {
                let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                // SAFETY: reads the `blocks` partials written above (same stream), writes loss[0].
                unsafe { gpu.launch(OP, "dml", "dml_reduce_f32", cfg, &p)? };
            }
            Ok(())
        }
    }
}

/// Scales `grad` (as written by [`dml_loss`]) in place by the upstream gradient of the loss:
/// `[B, L]` for [`Reduction::None`], `[1]` otherwise.
pub fn dml_backward<T: Real, L: Real>(grad: ViewMut<'_, T>, upstream: View<'_, L>, spec: DmlSpec) -> Result<()> {
    let (b, l) = dims(OP_BWD, grad.shape(), &spec)?;
    check_shape(OP_BWD, "upstream", upstream.shape(), &loss_shape(b, l, spec.reduction), "the loss's shape")?;
    let k = spec.k;
    match common_loc(OP_BWD, &[("grad", grad.loc()), ("upstream", upstream.loc())])? {
        Loc::Host => {
            let up = host_f64(OP_BWD, "upstream", &upstream)?;
            let g = host_f64(OP_BWD, "grad", &grad.as_view())?;
            let out: Vec<f64> = g.iter().enumerate().map(|(i, v)| {
                let (bb, ll) = (i / (3 * k * l), i % l);
                v * if spec.reduction == Reduction::None { up[bb * l + ll] } else { up[0] }
            }).collect();
            store_f64(OP_BWD, "grad", grad, &out)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_BWD)?;
            require_f32::<L>(OP_BWD)?;
            let n = (b * l) as u64;
            let p = SnugDmlParams {
                params: std::ptr::null(),
                grad: grad.device_ptr().unwrap_or(0) as *mut c_void,
                target_f: std::ptr::null(),
                target_i: std::ptr::null(),
                loss: std::ptr::null_mut(),
                out: std::ptr::null_mut(),
                upstream: upstream.device_ptr().unwrap_or(0) as *const f32,
                b: b as u64,
                l: l as u64,
                k: k as u32,
                bits: spec.bits,
                reduction: if spec.reduction == Reduction::None { ffi::SNUG_DML_NONE } else { ffi::SNUG_DML_SUM },
                blocks: 0,
                seed: 0,
                temperature: 1.0,
                grad_scale: 1.0,
            };
            let kernel = if T::DTYPE == DType::BF16 { "dml_scale_bf16" } else { "dml_scale_f32" };
            let cfg = LaunchConfig { grid_dim: (n.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: grad is a [B, 3K, L] device view of T, upstream [B, L] or [1] f32; one thread
            // per position scales its 3K entries in place.
            unsafe { gpu.launch(OP_BWD, "dml", kernel, cfg, &p) }
        }
    }
}

/// The kernel's uniform in (0, 1) for (seed, position, draw): 23 bits, exact in f32. Draws
/// `0..K` perturb the logits, draw `K` is the logistic sample's. Public only for the tests, which
/// recompute a draw to explain f32-vs-f64 disagreements at decision boundaries.
#[doc(hidden)]
pub fn uniform(seed: u64, pos: u64, draw: u32) -> f64 {
    let r = mix64(mix64(seed ^ mix64(pos)).wrapping_add(draw as u64));
    ((r >> 41) as f64 + 0.5) / 8_388_608.0
}

/// Samples `[B, L]` (values on the bin grid in `[−1, 1]`) from the mixtures in `params`, at
/// temperature `τ > 0` (1: the model's distribution). Deterministic for a seed.
pub fn dml_sample<T: Real>(params: View<'_, T>, out: ViewMut<'_, f32>, k: usize, bits: u32, seed: u64, temperature: f32) -> Result<()> {
    let spec = DmlSpec { k, bits, reduction: Reduction::None, checked: false };
    let (b, l) = dims(OP_SAMPLE, params.shape(), &spec)?;
    check_range(OP_SAMPLE, "temperature", temperature, temperature > 0.0, "finite and > 0")?;
    check_shape(OP_SAMPLE, "out", out.shape(), &[b, l], "[B, L] from params")?;
    match common_loc(OP_SAMPLE, &[("params", params.loc()), ("out", out.loc())])? {
        Loc::Host => {
            let p = host_f64(OP_SAMPLE, "params", &params)?;
            let bins = ((1u64 << bits) - 1) as f64;
            let tau = temperature as f64;
            let mut s = vec![0.0; b * l];
            for (i, o) in s.iter_mut().enumerate() {
                let (bb, ll) = (i / l, i % l);
                let at = |j: usize| (bb * 3 * k + j) * l + ll;
                let mut best = (0usize, f64::NEG_INFINITY);
                for c in 0..k {
                    let v = p[at(c)] / tau - (-uniform(seed, i as u64, c as u32).ln()).ln();
                    if v > best.1 {
                        best = (c, v);
                    }
                }
                let u = uniform(seed, i as u64, k as u32);
                let scale = p[at(2 * k + best.0)].max(LOG_SCALE_MIN).exp();
                let x = (p[at(k + best.0)] + scale * tau * (u.ln() - (-u).ln_1p())).clamp(-1.0, 1.0);
                // The bin's value as the kernel writes it: (2k − bins)/bins rounded once to f32.
                *o = ((2.0 * ((x + 1.0) * 0.5 * bins).round_ties_even() - bins) as f32 / bins as f32) as f64;
            }
            store_f64(OP_SAMPLE, "out", out, &s)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_SAMPLE)?;
            let n = (b * l) as u64;
            let p = SnugDmlParams {
                params: params.device_ptr().unwrap_or(0) as *const c_void,
                grad: std::ptr::null_mut(),
                target_f: std::ptr::null(),
                target_i: std::ptr::null(),
                loss: std::ptr::null_mut(),
                out: out.device_ptr().unwrap_or(0) as *mut f32,
                upstream: std::ptr::null(),
                b: b as u64,
                l: l as u64,
                k: k as u32,
                bits,
                reduction: 0,
                blocks: 0,
                seed,
                temperature,
                grad_scale: 1.0,
            };
            let kernel = if T::DTYPE == DType::BF16 { "dml_sample_bf16" } else { "dml_sample_f32" };
            let cfg = LaunchConfig { grid_dim: (n.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: params [B, 3K, L] of T and out [B, L] f32 are device views on this handle;
            // one thread per position reads its column and writes one sample.
            unsafe { gpu.launch(OP_SAMPLE, "dml", kernel, cfg, &p) }
        }
    }
}
