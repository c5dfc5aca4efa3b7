//! Binary cross-entropy with logits and its focal variant (torchvision's `sigmoid_focal_loss`),
//! the loss and its gradient in one pass, the gradient's upstream scaling (`kernels/bce.cu`).
//! Seed 000's head: logits `(8, 15360)`, focal BCE with α 0.5, γ 2.
//!
//! `logits` and `targets`: any shape, the same, `n ≥ 1` elements. Targets may be soft labels; they
//! are not validated (PyTorch accepts any value; outside `[0, 1]` the formulas below are simply
//! evaluated). Per element, with `z` the logit, `y` the target, `a = σ(z)`, `b = σ(−z) = 1 − a`:
//!
//! ```text
//! ce   = max(z, 0) − z·y + log1p(e^−|z|)          (= softplus(z) − z·y, = −y log a − (1−y) log b)
//! q    = 1 − p_t = y·b + (1 − y)·a                 (p_t = y·a + (1 − y)·b)
//! α_t  = α·y + (1 − α)·(1 − y)                     (1 when α is None)
//! loss = α_t · ce · q^γ
//! ```
//!
//! `γ = 0` with `α = None` is `F.binary_cross_entropy_with_logits` (and `0^0 = 1`, as `torch.pow`).
//! The loss is per element ([`Reduction::None`], shaped like `logits`, f32 on the GPU), or its sum
//! or mean (`[1]` or `[]`).
//!
//! # Gradient
//!
//! With `da/dz = a·b` and `db/dz = −a·b`: `dce/dz = a − y` (written `(1 − y)·a − y·b`, exact for
//! hard labels where `a − y` would cancel), `dq/dz = y·(−a·b) + (1 − y)·a·b = (1 − 2y)·a·b`, so
//!
//! ```text
//! dloss/dz = α_t·(q^γ·(a − y) + ce·γ·q^(γ−1)·(1 − 2y)·a·b)
//!          = α_t·q^γ·((1 − y)·a − y·b + γ·ce·(1 − 2y)·r),        r = a·b/q
//! ```
//!
//! `r` is in `[0, 1]`: `q ≥ min(a, b) ≥ a·b` for `y` in `[0, 1]`. So `q^(γ−1)`, unbounded as
//! `q → 0` for `γ < 1`, never appears: the derivative w.r.t. the logit is bounded for every
//! `γ ≥ 0` (that w.r.t. `p_t` is not, but `dp_t/dz` vanishes faster). `q = 0` happens only for a
//! hard label with `|z|` large on its side (`y = 1`, `σ(−z)` underflowing: `z ≳ 88` in f32, `≳ 745`
//! in f64); there the limit is taken: `r = 1` (the limit of `a·b/q`, `a` or `b` being 1), so
//! `loss = 0` and `grad = 0` for `γ > 0`, and `grad = −0`/`+0` (plain BCE's `a − y`) for `γ = 0`.
//! `γ = 0` skips the focal terms altogether: the loss and gradient are then bit for bit those of
//! plain BCE (times `α_t`). Large `|z|` (±100, ±1e4) give finite, correct values: `e^−|z|`
//! underflows harmlessly, `ce` is `|z|`-ish or 0, no `1 − p` is ever formed. Non-finite logits:
//! `+∞`, NaN, and `−∞` with `y = 0` give a NaN loss (`∞ − ∞` or `∞·0` in `max(z, 0) − z·y`); `−∞`
//! with `y > 0` gives `+∞` and the gradient `−y` (PyTorch's formula has NaNs and infinities there).
//!
//! [`bce_loss`] writes the loss and, when asked, `grad = ∂loss/∂logits` for an upstream gradient of
//! 1 (the mean's `1/n` included; on the GPU as the f32 factor `f32(1/n)`); [`bce_backward`] scales
//! it in place by the upstream gradient (`[1]` for Mean / Sum, per element for None). Nothing else
//! is saved: memory = gradient + loss (+ [`loss_workspace_bytes`] for a reduced loss on the GPU).
//! Deterministic: fixed-order per-block partials, then one block sums them in order; no atomics.
//! `T` (logits, targets, grad): f32 or bf16 on the GPU, f32 math; `L` (loss, upstream): f32 on the
//! GPU. The CPU twin takes any [`Real`] and computes in f64.

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

pub use super::Reduction;
use super::{check_range, check_shape, common_loc, host_f64, need_workspace, require_f32, require_f32_or_bf16, store_f64, Real};
use crate::ffi::{self, SnugBceParams};
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Error, Result};

const OP: &str = "bce_loss";
const OP_BWD: &str = "bce_backward";
const THREADS: u32 = ffi::SNUG_BCE_THREADS;
const BLOCK_ELEMS: usize = ffi::SNUG_BCE_BLOCK_ELEMS as usize;
const MAX_BLOCKS: usize = ffi::SNUG_BCE_MAX_BLOCKS as usize;

/// What to compute.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BceSpec {
    /// The class weight α in `[0, 1]` (`α` for positives, `1 − α` for negatives), or none.
    pub alpha: Option<f32>,
    /// The focusing exponent γ ≥ 0 (0: plain BCE).
    pub gamma: f32,
    /// Loss reduction.
    pub reduction: Reduction,
}

impl BceSpec {
    /// Plain `binary_cross_entropy_with_logits` (no α, γ = 0).
    pub fn plain(reduction: Reduction) -> BceSpec {
        BceSpec { alpha: None, gamma: 0.0, reduction }
    }

    /// The focal loss with α and γ (seed 000: `focal(Some(0.5), 2.0, Reduction::Mean)`).
    pub fn focal(alpha: Option<f32>, gamma: f32, reduction: Reduction) -> BceSpec {
        BceSpec { alpha, gamma, reduction }
    }

    fn check(&self, op: &'static str) -> Result<()> {
        check_range(op, "gamma", self.gamma, self.gamma >= 0.0, "finite and >= 0")?;
        if let Some(a) = self.alpha {
            check_range(op, "alpha", a, (0.0..=1.0).contains(&a), "in [0, 1] (or None)")?;
        }
        Ok(())
    }
}

/// Blocks of the GPU passes for `n` elements: `min(⌈n/1024⌉, 1024)` (a function of `n` alone).
fn blocks(n: usize) -> usize {
    n.div_ceil(BLOCK_ELEMS).min(MAX_BLOCKS)
}

/// Workspace of [`bce_loss`] on the GPU for `n` elements: one f32 partial per block,
/// `min(⌈n/1024⌉, 1024)·4` bytes for a reduced loss (0 for [`Reduction::None`] and on the CPU).
pub fn loss_workspace_bytes(n: usize, reduction: Reduction) -> usize {
    match reduction {
        Reduction::None => 0,
        _ => 4 * blocks(n),
    }
}

/// The loss's shape: `logits`' for [`Reduction::None`], else one element (`[1]` or `[]`).
fn check_loss_shape(op: &'static str, arg: &'static str, got: &[usize], logits: &[usize], r: Reduction) -> Result<()> {
    match r {
        Reduction::None => check_shape(op, arg, got, logits, "the shape of logits for Reduction::None"),
        _ if got.iter().product::<usize>() == 1 && got.len() <= 1 => Ok(()),
        _ => Err(Error::Shape { op, arg, expected: "[1] or [] (one element) for Reduction::Mean / Sum".into(), got: got.to_vec() }),
    }
}

fn count(op: &'static str, arg: &'static str, shape: &[usize]) -> Result<usize> {
    let n: usize = shape.iter().product();
    if n == 0 {
        return Err(Error::Shape { op, arg, expected: "at least one element".into(), got: shape.to_vec() });
    }
    Ok(n)
}

/// One element's loss and `∂loss/∂z` (f64; the twin of the kernel's `bce_elem`, before the
/// reduction's scale).
fn elem(z: f64, y: f64, alpha: Option<f64>, gamma: f64) -> (f64, f64) {
    let e = (-z.abs()).exp();
    let (hi, lo) = (1.0 / (1.0 + e), e / (1.0 + e));
    let (a, b) = if z >= 0.0 { (hi, lo) } else { (lo, hi) };
    let ny = 1.0 - y;
    let ce = (z.max(0.0) - z * y) + e.ln_1p();
    let (mut loss, mut grad) = (ce, ny * a - y * b);
    if gamma != 0.0 {
        let q = y * b + ny * a;
        let w = q.powf(gamma);
        let r = if q > 0.0 { a * b / q } else { 1.0 };
        grad = w * (grad + gamma * ce * (ny - y) * r);
        loss = w * ce;
    }
    if let Some(al) = alpha {
        let at = al * y + (1.0 - al) * ny;
        loss *= at;
        grad *= at;
    }
    (loss, grad)
}

/// The loss (shaped like `logits` for [`Reduction::None`], else one element) and, when `grad` is
/// given, `∂loss/∂logits` (shaped like `logits`, written). On the GPU a reduced loss needs
/// `workspace` of [`loss_workspace_bytes`] (f32 elements: bytes / 4).
pub fn bce_loss<T: Real, L: Real>(logits: View<'_, T>, targets: View<'_, T>, loss: ViewMut<'_, L>, grad: Option<ViewMut<'_, T>>, workspace: Option<ViewMut<'_, f32>>, spec: BceSpec) -> Result<()> {
    spec.check(OP)?;
    let n = count(OP, "logits", logits.shape())?;
    check_shape(OP, "targets", targets.shape(), logits.shape(), "the shape of logits")?;
    check_loss_shape(OP, "loss", loss.shape(), logits.shape(), spec.reduction)?;
    let mut locs = vec![("logits", logits.loc()), ("targets", targets.loc()), ("loss", loss.loc())];
    if let Some(g) = &grad {
        check_shape(OP, "grad", g.shape(), logits.shape(), "the shape of logits")?;
        locs.push(("grad", g.loc()));
    }
    locs.extend(workspace.as_ref().map(|w| ("workspace", w.loc())));
    let loc = common_loc(OP, &locs)?;
    match loc {
        Loc::Host => {
            let (z, y) = (host_f64(OP, "logits", &logits)?, host_f64(OP, "targets", &targets)?);
            let scale = if spec.reduction == Reduction::Mean { 1.0 / n as f64 } else { 1.0 };
            let (alpha, gamma) = (spec.alpha.map(f64::from), spec.gamma as f64);
            let (mut l, mut g) = (vec![0.0; n], vec![0.0; n]);
            for i in 0..n {
                let (li, gi) = elem(z[i], y[i], alpha, gamma);
                l[i] = li;
                g[i] = gi * scale;
            }
            store_f64(OP, "loss", loss, &spec.reduction.apply(l, n))?;
            match grad {
                Some(gv) => store_f64(OP, "grad", gv, &g),
                None => Ok(()),
            }
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP)?;
            require_f32::<L>(OP)?;
            let nb = blocks(n);
            let ws = match spec.reduction {
                Reduction::None => None,
                _ => {
                    need_workspace(OP, workspace, loss_workspace_bytes(n, spec.reduction) / 4, "loss_workspace_bytes")?.device_ptr()
                }
            };
            let p = SnugBceParams {
                logits: logits.device_ptr().unwrap_or(0) as *const c_void,
                targets: targets.device_ptr().unwrap_or(0) as *const c_void,
                grad: grad.as_ref().and_then(|g| g.device_ptr()).unwrap_or(0) as *mut c_void,
                loss: ws.or(loss.device_ptr()).unwrap_or(0) as *mut f32,
                out: loss.device_ptr().unwrap_or(0) as *mut f32,
                upstream: std::ptr::null(),
                n: n as u64,
                alpha: spec.alpha.unwrap_or(0.0),
                gamma: spec.gamma,
                grad_scale: if spec.reduction == Reduction::Mean { (1.0 / n as f64) as f32 } else { 1.0 },
                reduction: reduction_code(spec.reduction),
                has_alpha: spec.alpha.is_some() as u32,
                blocks: nb as u32,
            };
            let kernel = if T::DTYPE == DType::BF16 { "bce_loss_bf16" } else { "bce_loss_f32" };
            let cfg = LaunchConfig { grid_dim: (nb as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: logits, targets (and grad) are device views of T with n elements (shapes
            // checked equal), loss holds n f32 (None) or the workspace min(⌈n/1024⌉, 1024) = nb
            // partials (checked); the grid-stride loops stay below n, one partial per block.
            unsafe { gpu.launch(OP, "bce", kernel, cfg, &p)? };
            if spec.reduction != Reduction::None {
                let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
                // SAFETY: reads the nb partials written above (same stream), writes loss[0].
                unsafe { gpu.launch(OP, "bce", "bce_reduce_f32", cfg, &p)? };
            }
            Ok(())
        }
    }
}

fn reduction_code(r: Reduction) -> u32 {
    match r {
        Reduction::None => ffi::SNUG_BCE_NONE,
        Reduction::Mean => ffi::SNUG_BCE_MEAN,
        Reduction::Sum => ffi::SNUG_BCE_SUM,
    }
}

/// Scales `grad` (as written by [`bce_loss`]) in place by the upstream gradient of the loss:
/// shaped like `grad` for [`Reduction::None`], one element (`[1]` or `[]`) otherwise.
pub fn bce_backward<T: Real, L: Real>(grad: ViewMut<'_, T>, upstream: View<'_, L>, spec: BceSpec) -> Result<()> {
    spec.check(OP_BWD)?;
    let n = count(OP_BWD, "grad", grad.shape())?;
    check_loss_shape(OP_BWD, "upstream", upstream.shape(), grad.shape(), spec.reduction)?;
    match common_loc(OP_BWD, &[("grad", grad.loc()), ("upstream", upstream.loc())])? {
        Loc::Host => {
            let up = host_f64(OP_BWD, "upstream", &upstream)?;
            let g = host_f64(OP_BWD, "grad", &grad.as_view())?;
            let out: Vec<f64> = g.iter().enumerate().map(|(i, v)| v * if spec.reduction == Reduction::None { up[i] } else { up[0] }).collect();
            store_f64(OP_BWD, "grad", grad, &out)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_BWD)?;
            require_f32::<L>(OP_BWD)?;
            let nb = blocks(n);
            let p = SnugBceParams {
                logits: std::ptr::null(),
                targets: std::ptr::null(),
                grad: grad.device_ptr().unwrap_or(0) as *mut c_void,
                loss: std::ptr::null_mut(),
                out: std::ptr::null_mut(),
                upstream: upstream.device_ptr().unwrap_or(0) as *const f32,
                n: n as u64,
                alpha: 0.0,
                gamma: 0.0,
                grad_scale: 1.0,
                reduction: reduction_code(spec.reduction),
                has_alpha: 0,
                blocks: nb as u32,
            };
            let kernel = if T::DTYPE == DType::BF16 { "bce_scale_bf16" } else { "bce_scale_f32" };
            let cfg = LaunchConfig { grid_dim: (nb as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: grad is a device view of n T, upstream n f32 (None) or one f32 (shapes
            // checked); the grid-stride loop scales elements below n in place.
            unsafe { gpu.launch(OP_BWD, "bce", kernel, cfg, &p) }
        }
    }
}
