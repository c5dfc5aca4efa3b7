//! Fused AdamW (`kernels/adamw.cu`): decoupled weight decay, bias correction, f32 master
//! weights and moments, an optional bf16 copy of the weights, and a gradient-clipping factor taken
//! either as a number or from a gradient norm that lives on the device (no host sync).
//!
//! ```
//! use snug::ops::adamw::{adamw_step, AdamwConfig, AdamwTensor, Clip};
//! use snug::{View, ViewMut};
//! let (mut p, g, mut m, mut v) = (vec![1.0f32; 4], vec![0.5f32; 4], vec![0.0f32; 4], vec![0.0f32; 4]);
//! let t = AdamwTensor {
//!     param: ViewMut::host(&mut p, &[4])?,
//!     grad: View::host(&g, &[4])?,
//!     m: ViewMut::host(&mut m, &[4])?,
//!     v: ViewMut::host(&mut v, &[4])?,
//!     param_bf16: None,
//!     decay: true,
//! };
//! adamw_step(&AdamwConfig { lr: 1e-3, ..Default::default() }, 1, Clip::None, t)?;
//! assert!((p[0] - (1.0 * (1.0 - 1e-3 * 1e-2) - 1e-3)).abs() < 1e-6);
//! # Ok::<(), snug::Error>(())
//! ```

use cudarc::driver::LaunchConfig;
use half::bf16;

use super::{check_range, check_shape, common_loc, require_f32, Real};
use crate::ffi::SnugAdamwParams;
use crate::memory::{Loc, View, ViewMut};
use crate::{Buf, Element, Error, Plan, Result, Role};

const OP: &str = "adamw";
/// Threads per block; the kernel is compiled with `__launch_bounds__(256)`.
const BLOCK: u32 = 256;
/// Grid cap; the kernel strides over the rest.
const MAX_BLOCKS: u64 = 1 << 20;

/// AdamW hyper-parameters (PyTorch's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamwConfig {
    /// Learning rate, ≥ 0.
    pub lr: f32,
    /// First-moment decay, in [0, 1).
    pub beta1: f32,
    /// Second-moment decay, in [0, 1).
    pub beta2: f32,
    /// Denominator term, > 0.
    pub eps: f32,
    /// Decoupled weight decay, ≥ 0 (applied only to tensors with `decay: true`).
    pub weight_decay: f32,
}

impl Default for AdamwConfig {
    fn default() -> Self {
        AdamwConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

/// How the gradient is scaled before the update.
#[derive(Debug)]
pub enum Clip<'a, T: Element> {
    /// Use the gradient as is.
    None,
    /// Multiply the gradient by this finite factor.
    Scale(f32),
    /// Clip by norm: scale = min(1, max_norm / (norm + 1e-6)), with `norm` a one-element buffer
    /// on the same device as the tensor (a global norm over all gradients, or this tensor's own).
    /// A NaN norm makes the step write NaNs and an infinite one zeroes the gradient (a decay-only
    /// step), as in PyTorch; check the norm before stepping to skip such steps.
    Norm {
        /// The gradient norm, shape `[1]` (or `[]`).
        norm: View<'a, T>,
        /// The clipping threshold, > 0.
        max_norm: f32,
    },
}

/// One tensor's state for a step. `param`, `grad`, `m`, `v` (and `param_bf16`) share one shape.
#[derive(Debug)]
pub struct AdamwTensor<'a, T: Element> {
    /// Master weights, updated in place.
    pub param: ViewMut<'a, T>,
    /// Gradient.
    pub grad: View<'a, T>,
    /// First moment, updated in place (zero before the first step).
    pub m: ViewMut<'a, T>,
    /// Second moment, updated in place (zero before the first step).
    pub v: ViewMut<'a, T>,
    /// Receives bf16(param) after the update, for bf16 forward passes.
    pub param_bf16: Option<ViewMut<'a, bf16>>,
    /// Whether weight decay applies (the weight-decay mask: false for biases and norms).
    pub decay: bool,
}

/// Workspace of one step: none.
pub fn workspace_bytes(_shape: &[usize]) -> usize {
    0
}

/// Plans the two moment buffers of a parameter (`<name>.adam_m`, `<name>.adam_v`, f32,
/// [`Role::Optimizer`]).
pub fn plan_moments(plan: &mut Plan, name: &str, shape: &[usize]) -> Result<(Buf<f32>, Buf<f32>)> {
    Ok((plan.add(format!("{name}.adam_m"), shape, Role::Optimizer)?, plan.add(format!("{name}.adam_v"), shape, Role::Optimizer)?))
}

/// Scalars of one step in the working precision, computed the same way on both paths.
struct Hyper<T> {
    beta1: T,
    one_minus_beta1: T,
    beta2: T,
    one_minus_beta2: T,
    eps: T,
    decay: T,
    step_size: T,
    bc2_sqrt: T,
}

fn validate(cfg: &AdamwConfig, step: u64) -> Result<()> {
    check_range(OP, "lr", cfg.lr, cfg.lr >= 0.0, "a finite learning rate >= 0")?;
    check_range(OP, "beta1", cfg.beta1, (0.0..1.0).contains(&cfg.beta1), "beta1 in [0, 1)")?;
    check_range(OP, "beta2", cfg.beta2, (0.0..1.0).contains(&cfg.beta2), "beta2 in [0, 1)")?;
    check_range(OP, "eps", cfg.eps, cfg.eps > 0.0, "eps > 0")?;
    check_range(OP, "weight_decay", cfg.weight_decay, cfg.weight_decay >= 0.0, "weight_decay >= 0")?;
    if step == 0 {
        return Err(Error::Value { op: OP, arg: "step", expected: "the 1-based step number (>= 1)".into(), got: "0".into() });
    }
    Ok(())
}

/// Bias corrections in f64: (1 - beta1^step, sqrt(1 - beta2^step)).
fn bias_corrections(cfg: &AdamwConfig, step: u64) -> (f64, f64) {
    let t = step.min(i32::MAX as u64) as i32;
    (1.0 - (cfg.beta1 as f64).powi(t), (1.0 - (cfg.beta2 as f64).powi(t)).sqrt())
}

/// One AdamW step of one tensor, on the device its views live on (CUDA kernel or CPU twin).
///
/// `step` is the 1-based step count after this update (PyTorch's `state["step"]`). Queued on the
/// GPU handle's stream without a host sync. f32 runs on both; f64 only on the CPU (the reference).
pub fn adamw_step<T: Real>(cfg: &AdamwConfig, step: u64, clip: Clip<'_, T>, t: AdamwTensor<'_, T>) -> Result<()> {
    validate(cfg, step)?;
    let shape = t.param.shape();
    check_shape(OP, "grad", t.grad.shape(), shape, "the shape of param")?;
    check_shape(OP, "m", t.m.shape(), shape, "the shape of param")?;
    check_shape(OP, "v", t.v.shape(), shape, "the shape of param")?;
    // A fixed array, not a Vec: this runs once per parameter tensor per step.
    let mut locs = [("param", t.param.loc()); 6];
    let mut nlocs = 1;
    for extra in [("grad", t.grad.loc()), ("m", t.m.loc()), ("v", t.v.loc())] {
        locs[nlocs] = extra;
        nlocs += 1;
    }
    if let Some(b) = &t.param_bf16 {
        check_shape(OP, "param_bf16", b.shape(), shape, "the shape of param")?;
        locs[nlocs] = ("param_bf16", b.loc());
        nlocs += 1;
    }
    match &clip {
        Clip::None => {}
        Clip::Scale(s) => check_range(OP, "clip scale", *s, true, "a finite factor")?,
        Clip::Norm { norm, max_norm } => {
            check_range(OP, "max_norm", *max_norm, *max_norm > 0.0, "max_norm > 0")?;
            if norm.len() != 1 {
                return Err(Error::Shape { op: OP, arg: "norm", expected: "[1] (one norm value)".into(), got: norm.shape().to_vec() });
            }
            locs[nlocs] = ("norm", norm.loc());
            nlocs += 1;
        }
    }
    let loc = common_loc(OP, &locs[..nlocs])?;
    let (bc1, bc2_sqrt) = bias_corrections(cfg, step);
    match loc {
        Loc::Host => cpu(cfg, bc1, bc2_sqrt, clip, t),
        Loc::Cuda(gpu) => {
            require_f32::<T>(OP)?;
            let n = t.param.len() as u64;
            let ptr = |p: Option<u64>| p.unwrap_or(0) as *mut f32;
            let (grad_norm, max_norm, grad_scale) = match &clip {
                Clip::None => (std::ptr::null(), 0.0, 1.0),
                Clip::Scale(s) => (std::ptr::null(), 0.0, *s),
                Clip::Norm { norm, max_norm } => (ptr(norm.device_ptr()) as *const f32, *max_norm, 1.0),
            };
            let p = SnugAdamwParams {
                param: ptr(t.param.device_ptr()),
                m: ptr(t.m.device_ptr()),
                v: ptr(t.v.device_ptr()),
                param_bf16: t.param_bf16.as_ref().and_then(|b| b.device_ptr()).unwrap_or(0) as *mut _,
                grad: ptr(t.grad.device_ptr()) as *const f32,
                grad_norm,
                n,
                lr: cfg.lr,
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: cfg.eps,
                weight_decay: if t.decay { cfg.weight_decay } else { 0.0 },
                bias_correction1: bc1 as f32,
                bias_correction2_sqrt: bc2_sqrt as f32,
                grad_scale,
                max_norm,
                reserved: 0,
            };
            let groups = n.div_ceil(4).max(1);
            let blocks = groups.div_ceil(BLOCK as u64).min(MAX_BLOCKS) as u32;
            let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: every pointer comes from a device view on this GPU handle whose length is n
            // (shapes checked equal above; norm has one element); the kernel touches [0, n) of
            // each and one element of grad_norm.
            unsafe { gpu.launch(OP, "adamw", "adamw_f32", cfg, &p) }
        }
    }
}

/// The CPU twin, in `T`. In f32 it performs the kernel's roundings in the kernel's order (the
/// kernel uses explicitly rounded intrinsics, no FMA), so GPU and f32 twin agree bitwise; in f64
/// it is the reference.
fn cpu<T: Real>(cfg: &AdamwConfig, bc1: f64, bc2_sqrt: f64, clip: Clip<'_, T>, t: AdamwTensor<'_, T>) -> Result<()> {
    let c = |x: f32| T::from_f32(x).unwrap_or_else(T::nan);
    let lr = c(cfg.lr);
    let wd = if t.decay { c(cfg.weight_decay) } else { T::zero() };
    let h = Hyper {
        beta1: c(cfg.beta1),
        one_minus_beta1: T::one() - c(cfg.beta1),
        beta2: c(cfg.beta2),
        one_minus_beta2: T::one() - c(cfg.beta2),
        eps: c(cfg.eps),
        decay: T::one() - lr * wd,
        step_size: lr / T::round_f64(bc1),
        bc2_sqrt: T::round_f64(bc2_sqrt),
    };
    let scale = match &clip {
        Clip::None => T::one(),
        Clip::Scale(s) => c(*s),
        Clip::Norm { norm, max_norm } => {
            let n = norm.as_slice().map(|s| s[0]).unwrap_or_else(T::nan);
            let q = c(*max_norm) / (n + c(1e-6));
            // Not `min`: it would turn a NaN quotient into 1 and silently skip the clipping.
            if q >= T::one() {
                T::one()
            } else {
                q
            }
        }
    };
    let host = |what: &'static str| Error::DeviceMismatch { op: OP, arg: what, expected: "cpu".into(), got: "cuda".into() };
    let p = t.param.into_slice_mut().ok_or_else(|| host("param"))?;
    let g = t.grad.as_slice().ok_or_else(|| host("grad"))?;
    let m = t.m.into_slice_mut().ok_or_else(|| host("m"))?;
    let v = t.v.into_slice_mut().ok_or_else(|| host("v"))?;
    for i in 0..p.len() {
        let gi = g[i] * scale;
        let mut pi = p[i] * h.decay;
        let mi = h.beta1 * m[i] + h.one_minus_beta1 * gi;
        let vi = h.beta2 * v[i] + h.one_minus_beta2 * gi * gi;
        let denom = vi.sqrt() / h.bc2_sqrt + h.eps;
        pi = pi - h.step_size * mi / denom;
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }
    if let Some(b) = t.param_bf16 {
        let b = b.into_slice_mut().ok_or_else(|| host("param_bf16"))?;
        for (bi, &pi) in b.iter_mut().zip(p.iter()) {
            *bi = super::bf16_rne(pi.to_f64().unwrap_or(f64::NAN));
        }
    }
    Ok(())
}
