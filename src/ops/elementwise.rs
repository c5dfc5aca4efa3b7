//! Activations (forward and backward) and scaled sums (`kernels/elementwise.cu`).
//!
//! [`activation`]: `y = f(x)` for the [`Act`]s of PyTorch (`relu`, `gelu` with `approximate="tanh"`
//! or exact, `silu`, `tanh`, `softplus` with β 1 and threshold 20, `sigmoid`); saved for the
//! backward: `x` only ([`activation_backward`] recomputes `f'(x)`). [`axpby`]: `out = α·a + β·b`
//! (a residual connection is `α = β = 1`). Any shape, contiguous; `T` = f32 or bf16 on the GPU
//! (f32 arithmetic), any [`Real`] on the CPU twin (f64 arithmetic). Workspace: none.

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::{check_shape, common_loc, host_f64, require_f32_or_bf16, store_f64, Real};
use crate::ffi::{self, SnugElementwiseParams};
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Error, Result};

const OP_ACT: &str = "activation";
const OP_ACT_BWD: &str = "activation_backward";
const OP_AXPBY: &str = "axpby";

/// An activation function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// `max(x, 0)` (gradient 0 at 0; NaN propagates).
    Relu,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    GeluTanh,
    /// `0.5·x·(1 + erf(x/√2))`.
    GeluErf,
    /// `x·σ(x)`.
    Silu,
    /// `tanh(x)`.
    Tanh,
    /// `log(1 + eˣ)`, `x` itself above 20.
    Softplus,
    /// `1/(1 + e⁻ˣ)`.
    Sigmoid,
}

impl Act {
    fn code(self) -> u32 {
        match self {
            Act::Relu => ffi::SNUG_ACT_RELU,
            Act::GeluTanh => ffi::SNUG_ACT_GELU_TANH,
            Act::GeluErf => ffi::SNUG_ACT_GELU_ERF,
            Act::Silu => ffi::SNUG_ACT_SILU,
            Act::Tanh => ffi::SNUG_ACT_TANH,
            Act::Softplus => ffi::SNUG_ACT_SOFTPLUS,
            Act::Sigmoid => ffi::SNUG_ACT_SIGMOID,
        }
    }

    /// `f(x)` in f64 (the twin).
    pub fn f(self, x: f64) -> f64 {
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        match self {
            Act::Relu => {
                if x.is_nan() {
                    x
                } else {
                    x.max(0.0)
                }
            }
            Act::GeluTanh => 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh()),
            Act::GeluErf => x * phi(x),
            Act::Silu => x * sig(x),
            Act::Tanh => x.tanh(),
            Act::Softplus => {
                if x > 20.0 {
                    x
                } else {
                    x.exp().ln_1p()
                }
            }
            Act::Sigmoid => sig(x),
        }
    }

    /// `f'(x)` in f64 (the twin).
    pub fn df(self, x: f64) -> f64 {
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        match self {
            Act::Relu => (x > 0.0 || x.is_nan()) as u8 as f64,
            Act::GeluTanh => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                let t = (k * (x + 0.044715 * x * x * x)).tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
            }
            Act::GeluErf => phi(x) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt(),
            Act::Silu => {
                let s = sig(x);
                s * (1.0 + x * (1.0 - s))
            }
            Act::Tanh => 1.0 - x.tanh().powi(2),
            Act::Softplus => {
                if x > 20.0 {
                    1.0
                } else {
                    sig(x)
                }
            }
            Act::Sigmoid => sig(x) * (1.0 - sig(x)),
        }
    }
}

/// erfc in f64 (not in std): the Taylor series of erf below 2 (cancellation ≤ e⁴, ~1e-14) and the
/// Laplace continued fraction of erfc from 2 up (no cancellation in the tail, where GELU's
/// negative side lives).
fn erfc(z: f64) -> f64 {
    if z < -2.0 {
        return 2.0 - erfc(-z);
    }
    if z < 2.0 {
        // erf(z) = 2/√π Σ (−1)ⁿ z^(2n+1) / (n! (2n+1))
        let (mut term, mut sum, mut n) = (z, z, 0.0f64);
        while term.abs() > 1e-18 * sum.abs().max(1e-300) {
            n += 1.0;
            term *= -z * z / n;
            sum += term / (2.0 * n + 1.0);
        }
        return 1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum;
    }
    // erfc(z) = e^(−z²)/√π · 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + 2/(z + ...)))))
    let mut f = z;
    for k in (1..200).rev() {
        f = z + (k as f64 / 2.0) / f;
    }
    (-z * z).exp() / (std::f64::consts::PI.sqrt() * f)
}

/// Φ(x), the standard normal CDF: `erfc(−x/√2)/2`.
fn phi(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// # Safety
/// `p.a`, `p.b` (unless null) and `p.out` are device memory on `gpu` of `p.n` elements of `T`.
unsafe fn launch<T: Real>(gpu: &crate::Gpu, op: &'static str, which: &str, p: &SnugElementwiseParams) -> Result<()> {
    let kernel: &'static str = match (which, T::DTYPE) {
        ("fwd", DType::BF16) => "elementwise_act_fwd_bf16",
        ("fwd", _) => "elementwise_act_fwd_f32",
        ("bwd", DType::BF16) => "elementwise_act_bwd_bf16",
        ("bwd", _) => "elementwise_act_bwd_f32",
        (_, DType::BF16) => "elementwise_axpby_bf16",
        _ => "elementwise_axpby_f32",
    };
    // One 16-byte vector (4 f32 / 8 bf16 elements) per thread; the kernels grid-stride over the
    // vectors, the n % 4 (8) tail and, when a pointer is not 16-byte aligned, every element.
    let vec = if T::DTYPE == DType::BF16 { 8 } else { 4 };
    let blocks = p.n.div_ceil(vec).div_ceil(256).clamp(1, 1 << 20) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: forwarded from the caller (grid-stride loops over i < n; 16-byte accesses only when
    // every pointer is 16-byte aligned, checked in the kernel).
    unsafe { gpu.launch(op, "elementwise", kernel, cfg, p) }
}

fn ptr(v: Option<u64>) -> *const c_void {
    v.unwrap_or(0) as *const c_void
}

/// `y = f(x)`.
pub fn activation<T: Real>(x: View<'_, T>, y: ViewMut<'_, T>, act: Act) -> Result<()> {
    check_shape(OP_ACT, "y", y.shape(), x.shape(), "the shape of x")?;
    match common_loc(OP_ACT, &[("x", x.loc()), ("y", y.loc())])? {
        Loc::Host => {
            let v: Vec<f64> = host_f64(OP_ACT, "x", &x)?.iter().map(|&t| act.f(t)).collect();
            store_f64(OP_ACT, "y", y, &v)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_ACT)?;
            let p = SnugElementwiseParams { a: ptr(x.device_ptr()), b: std::ptr::null(), out: y.device_ptr().unwrap_or(0) as *mut c_void, n: x.len() as u64, act: act.code(), alpha: 0.0, beta: 0.0, reserved: 0 };
            // SAFETY: the views are device views on this handle with the shape checked above (n
            // elements of T each).
            unsafe { launch::<T>(gpu, OP_ACT, "fwd", &p) }
        }
    }
}

/// `dx = dy·f'(x)` (written).
pub fn activation_backward<T: Real>(x: View<'_, T>, dy: View<'_, T>, dx: ViewMut<'_, T>, act: Act) -> Result<()> {
    check_shape(OP_ACT_BWD, "dy", dy.shape(), x.shape(), "the shape of x")?;
    check_shape(OP_ACT_BWD, "dx", dx.shape(), x.shape(), "the shape of x")?;
    match common_loc(OP_ACT_BWD, &[("x", x.loc()), ("dy", dy.loc()), ("dx", dx.loc())])? {
        Loc::Host => {
            let (xv, gv) = (host_f64(OP_ACT_BWD, "x", &x)?, host_f64(OP_ACT_BWD, "dy", &dy)?);
            let v: Vec<f64> = xv.iter().zip(&gv).map(|(&t, &g)| g * act.df(t)).collect();
            store_f64(OP_ACT_BWD, "dx", dx, &v)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_ACT_BWD)?;
            let p = SnugElementwiseParams { a: ptr(x.device_ptr()), b: ptr(dy.device_ptr()), out: dx.device_ptr().unwrap_or(0) as *mut c_void, n: x.len() as u64, act: act.code(), alpha: 0.0, beta: 0.0, reserved: 0 };
            // SAFETY: the views are device views on this handle with the shape checked above (n
            // elements of T each).
            unsafe { launch::<T>(gpu, OP_ACT_BWD, "bwd", &p) }
        }
    }
}

/// `out = α·a + β·b` (`b` may be `None`: `out = α·a`).
pub fn axpby<T: Real>(alpha: f32, a: View<'_, T>, beta: f32, b: Option<View<'_, T>>, out: ViewMut<'_, T>) -> Result<()> {
    if !alpha.is_finite() || !beta.is_finite() {
        return Err(Error::Value { op: OP_AXPBY, arg: "alpha, beta", expected: "finite".into(), got: format!("{alpha}, {beta}") });
    }
    check_shape(OP_AXPBY, "out", out.shape(), a.shape(), "the shape of a")?;
    let mut locs = vec![("a", a.loc()), ("out", out.loc())];
    if let Some(b) = &b {
        check_shape(OP_AXPBY, "b", b.shape(), a.shape(), "the shape of a")?;
        locs.push(("b", b.loc()));
    }
    match common_loc(OP_AXPBY, &locs)? {
        Loc::Host => {
            let av = host_f64(OP_AXPBY, "a", &a)?;
            let bv = b.as_ref().map(|b| host_f64(OP_AXPBY, "b", b)).transpose()?;
            let v: Vec<f64> = (0..av.len()).map(|i| alpha as f64 * av[i] + bv.as_ref().map_or(0.0, |b| beta as f64 * b[i])).collect();
            store_f64(OP_AXPBY, "out", out, &v)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_AXPBY)?;
            let p = SnugElementwiseParams { a: ptr(a.device_ptr()), b: b.as_ref().map_or(std::ptr::null(), |b| ptr(b.device_ptr())), out: out.device_ptr().unwrap_or(0) as *mut c_void, n: a.len() as u64, act: 0, alpha, beta, reserved: 0 };
            // SAFETY: the views are device views on this handle with the shape checked above (n
            // elements of T each).
            unsafe { launch::<T>(gpu, OP_AXPBY, "axpby", &p) }
        }
    }
}
