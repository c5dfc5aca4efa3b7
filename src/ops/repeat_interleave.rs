//! `torch.repeat_interleave(x, r, dim = axis)` and nearest upsampling by an integer factor
//! (`F.interpolate(x, scale_factor = s, mode = "nearest")` on `[B, C, L]`, the same op on the last
//! axis), forward and backward (`kernels/repeat_interleave.cu`).
//!
//! Shapes: `x` of any rank ≥ 1 with no zero dimension, seen as `[outer, n, inner]` around `axis`
//! (`outer` = the product of the dims before it, `n` = its length, `inner` = the product of the
//! dims after it); `y` = `x`'s shape with `n` replaced by `n·r`:
//! `y[o, i·r + j, c] = x[o, i, c]` for `j < r`. Backward:
//! `dx[o, i, c] = Σ_{j = 0..r−1} dy[o, i·r + j, c]`, summed in that order.
//!
//! Storage `T`: f32 or bf16 on the GPU — the forward moves elements bitwise, the backward sums in
//! f32 with one rounding on store (deterministic: no atomics, the same order on every path); the CPU
//! twin computes in f64 for any [`Real`]. Nothing is saved for the backward; **workspace bytes: 0**.
//!
//! The zero-copy alternative, when it applies: nearest upsampling commutes with anything applied
//! per position — a 1×1 conv, a pointwise activation, a per-channel affine —
//! `conv1x1(up(x)) = up(conv1x1(x))`. So rather than upsampling 512 channels ×16 and then running a
//! 1×1 conv on the long sequence, run the conv on the short one and upsample its (narrower)
//! output: in seed 000's head (`1×1 512→19`, then ×16 along L, then the `1×1 19→1` classifier),
//! the 19→1 conv can run before the ×16 upsample at 1/16 of the cost, and the upsample then moves
//! 1 channel instead of 19. Best of all, a consumer that indexes `y[.., t]` as `x[.., t / r]`
//! needs no copy at all; this op is for when a materialised `y` is really wanted.

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::{common_loc, host_f64, require_f32_or_bf16, store_f64, Real};
use crate::ffi::SnugRepeatInterleaveParams;
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Error, Result};

const OP: &str = "repeat_interleave";
const OP_BWD: &str = "repeat_interleave_backward";
const OP_UP: &str = "upsample_nearest";
const OP_UP_BWD: &str = "upsample_nearest_backward";
/// Most blocks of one launch (the kernels grid-stride beyond).
const MAX_BLOCKS: usize = 1 << 20;

/// The `(outer, n, inner)` view of `x` around `axis` and the shape `x` takes with the axis
/// multiplied by `r`, validated.
fn dims(op: &'static str, arg: &'static str, x: &[usize], axis: usize, r: usize) -> Result<((usize, usize, usize), Vec<usize>)> {
    if r == 0 {
        return Err(Error::Value { op, arg: "r", expected: "a repeat count ≥ 1".into(), got: r.to_string() });
    }
    if axis >= x.len() {
        return Err(Error::Value { op, arg: "axis", expected: format!("an axis of {arg} (rank {}), 0..{}", x.len(), x.len()), got: axis.to_string() });
    }
    if x.contains(&0) {
        return Err(Error::Shape { op, arg, expected: "no zero dimension".into(), got: x.to_vec() });
    }
    let (outer, n, inner) = (x[..axis].iter().product::<usize>(), x[axis], x[axis + 1..].iter().product::<usize>());
    let mut long = x.to_vec();
    // The repeated tensor must be addressable: |x|·r fits in usize (the long view then exists).
    long[axis] = n.checked_mul(r).filter(|_| x.iter().product::<usize>().checked_mul(r).is_some()).ok_or_else(|| Error::Value { op, arg: "r", expected: format!("a factor that keeps {arg}'s element count × r within usize"), got: r.to_string() })?;
    Ok(((outer, n, inner), long))
}

fn check_long(op: &'static str, arg: &'static str, got: &[usize], want: &[usize], axis: usize, short: &'static str) -> Result<()> {
    if got != want {
        return Err(Error::Shape { op, arg, expected: format!("{want:?} ({short}'s shape with axis {axis} multiplied by r)"), got: got.to_vec() });
    }
    Ok(())
}

/// 16-byte vector length for `T` (4 f32, 8 bf16).
fn vec_len<T: Real>() -> usize {
    16 / std::mem::size_of::<T>()
}

fn cfg(work: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (work.div_ceil(256).clamp(1, MAX_BLOCKS) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn forward<T: Real>(op: &'static str, x: View<'_, T>, axis: usize, r: usize, y: ViewMut<'_, T>) -> Result<()> {
    let ((outer, n, inner), long) = dims(op, "x", x.shape(), axis, r)?;
    check_long(op, "y", y.shape(), &long, axis, "x")?;
    match common_loc(op, &[("x", x.loc()), ("y", y.loc())])? {
        Loc::Host => {
            let xv = host_f64(op, "x", &x)?;
            let rows = outer * n;
            let yv: Vec<f64> = (0..rows * r * inner).map(|k| xv[(k / inner / r) * inner + k % inner]).collect();
            store_f64(op, "y", y, &yv)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(op)?;
            let p = SnugRepeatInterleaveParams {
                dst: y.device_ptr().unwrap_or(0) as *mut c_void,
                src: x.device_ptr().unwrap_or(0) as *const c_void,
                rows: (outer * n) as u64,
                inner: inner as u64,
                r: r as u64,
            };
            let kernel = if T::DTYPE == DType::BF16 { "repeat_interleave_fwd_bf16" } else { "repeat_interleave_fwd_f32" };
            // SAFETY: x is a [rows, inner] and y a [rows·r, inner] device view of T on this handle
            // (shapes checked above); the kernel reads x[< rows·inner] and writes every element of
            // y once, with 16-byte accesses only where it checked the pointers' alignment.
            unsafe { gpu.launch(op, "repeat_interleave", kernel, cfg(y.len().div_ceil(vec_len::<T>())), &p) }
        }
    }
}

fn backward<T: Real>(op: &'static str, dy: View<'_, T>, axis: usize, r: usize, dx: ViewMut<'_, T>) -> Result<()> {
    let ((outer, n, inner), long) = dims(op, "dx", dx.shape(), axis, r)?;
    check_long(op, "dy", dy.shape(), &long, axis, "dx")?;
    match common_loc(op, &[("dy", dy.loc()), ("dx", dx.loc())])? {
        Loc::Host => {
            let g = host_f64(op, "dy", &dy)?;
            let dxv: Vec<f64> = (0..outer * n * inner)
                .map(|k| {
                    let (s, c) = (k / inner, k % inner);
                    (0..r).map(|j| g[(s * r + j) * inner + c]).sum::<f64>()
                })
                .collect();
            store_f64(op, "dx", dx, &dxv)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(op)?;
            let (dst, src) = (dx.device_ptr().unwrap_or(0), dy.device_ptr().unwrap_or(0));
            let p = SnugRepeatInterleaveParams { dst: dst as *mut c_void, src: src as *const c_void, rows: (outer * n) as u64, inner: inner as u64, r: r as u64 };
            let kernel = if T::DTYPE == DType::BF16 { "repeat_interleave_bwd_bf16" } else { "repeat_interleave_bwd_f32" };
            // The kernel's choice: one dx vector per thread when inner is a whole number of
            // 16-byte vectors and both pointers are aligned, one dx element per thread otherwise.
            let v = vec_len::<T>();
            let work = if inner % v == 0 && dst % 16 == 0 && src % 16 == 0 { dx.len() / v } else { dx.len() };
            // SAFETY: dy is a [rows·r, inner] and dx a [rows, inner] device view of T on this
            // handle (shapes checked above); the kernel reads dy[< rows·r·inner] and writes every
            // element of dx once, with 16-byte accesses only where it checked the alignment.
            unsafe { gpu.launch(op, "repeat_interleave", kernel, cfg(work), &p) }
        }
    }
}

/// `y = x.repeat_interleave(r, dim = axis)`: `x` any shape with no zero dimension, `axis <
/// rank`, `r ≥ 1`; `y` = `x`'s shape with `shape[axis]` multiplied by `r`. Workspace bytes: 0.
pub fn repeat_interleave<T: Real>(x: View<'_, T>, axis: usize, r: usize, y: ViewMut<'_, T>) -> Result<()> {
    forward(OP, x, axis, r, y)
}

/// The backward of [`repeat_interleave`]: `dx[o, i, c] = Σ_{j<r} dy[o, i·r + j, c]` (in the order
/// `j = 0, 1, ..`), `dx` with `x`'s shape, `dy` with `y`'s. Workspace bytes: 0.
pub fn repeat_interleave_backward<T: Real>(dy: View<'_, T>, axis: usize, r: usize, dx: ViewMut<'_, T>) -> Result<()> {
    backward(OP_BWD, dy, axis, r, dx)
}

fn check_bcl(op: &'static str, arg: &'static str, s: &[usize]) -> Result<()> {
    if s.len() != 3 {
        return Err(Error::Shape { op, arg, expected: "[B, C, L]".into(), got: s.to_vec() });
    }
    Ok(())
}

/// Nearest upsampling along the last axis by an integer `scale`: `x [B, C, L]` → `y [B, C,
/// L·scale]`, `y[b, c, t] = x[b, c, t / scale]` — PyTorch's `F.interpolate(x, scale_factor =
/// scale, mode = "nearest")` (and `nn.Upsample`) for an integer factor. A thin wrapper over
/// [`repeat_interleave`] on axis 2; see the module docs for when a following 1×1 conv or pointwise
/// op can run before it instead. Workspace bytes: 0.
pub fn upsample_nearest<T: Real>(x: View<'_, T>, scale: usize, y: ViewMut<'_, T>) -> Result<()> {
    check_bcl(OP_UP, "x", x.shape())?;
    forward(OP_UP, x, 2, scale, y)
}

/// The backward of [`upsample_nearest`]: `dx [B, C, L]` from `dy [B, C, L·scale]`, each `dx` the
/// sum of its `scale` consecutive `dy` (in order). Workspace bytes: 0.
pub fn upsample_nearest_backward<T: Real>(dy: View<'_, T>, scale: usize, dx: ViewMut<'_, T>) -> Result<()> {
    check_bcl(OP_UP_BWD, "dx", dx.shape())?;
    backward(OP_UP_BWD, dy, 2, scale, dx)
}
