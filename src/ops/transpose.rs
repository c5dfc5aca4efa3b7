//! Swap of two adjacent axes of a contiguous tensor — `x.transpose(axis, axis + 1).contiguous()`
//! — forward and backward (`kernels/transpose.cu`).
//!
//! Shapes: `x` of rank ≥ 2 with no zero dimension, seen as `[outer, a, b, inner]` around `axis`
//! (`outer` = the product of the dims before `axis`, `a` = `shape[axis]`, `b` = `shape[axis + 1]`,
//! `inner` = the product of the dims after `axis + 1`); `y` = `x`'s shape with those two swapped:
//! `y[o, j, i, c] = x[o, i, j, c]`. The seeds switch layouts this way: channels-first `[B, C, L]`
//! (a TCN) ↔ channels-last `[B, L, C]` (Mamba), `[B, P, T]` ↔ `[B, T, P]`.
//!
//! The op is a permutation, so it is its own adjoint: the backward of `y = transpose(x, axis)` is
//! `dx = transpose(dy, axis)` on the swapped shape (`dy` has `y`'s shape, `dx` `x`'s);
//! [`transpose_backward`] is that call, kept for symmetry with the other ops.
//!
//! Storage `T`: f32 or bf16 on the GPU, moved bitwise as 32-/16-bit words (no conversion); the CPU
//! twin copies `T` values for any [`Real`] (exact, no f64 round trip). Nothing is saved for the
//! backward; **workspace bytes: 0**.

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::{common_loc, require_f32_or_bf16, Real};
use crate::ffi::SnugTransposeParams;
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Error, Result};

const OP: &str = "transpose";
const OP_BWD: &str = "transpose_backward";
/// Most blocks of one launch (the kernel grid-strides beyond).
const MAX_BLOCKS: usize = 1 << 16;
/// The kernel's tile edge (inner == 1).
const TILE: usize = 32;

/// `(outer, a, b, inner)`: a tensor seen around the swapped pair of axes.
type Dims = (usize, usize, usize, usize);

/// The `(outer, a, b, inner)` view of `x` around `axis` and the swapped shape, validated.
fn dims(op: &'static str, arg: &'static str, x: &[usize], axis: usize) -> Result<(Dims, Vec<usize>)> {
    if axis >= x.len().saturating_sub(1) {
        return Err(Error::Value { op, arg: "axis", expected: format!("an axis with axis + 1 < the rank of {arg} ({})", x.len()), got: axis.to_string() });
    }
    if x.contains(&0) {
        return Err(Error::Shape { op, arg, expected: "no zero dimension".into(), got: x.to_vec() });
    }
    let (outer, a, b, inner) = (x[..axis].iter().product::<usize>(), x[axis], x[axis + 1], x[axis + 2..].iter().product::<usize>());
    let mut swapped = x.to_vec();
    swapped.swap(axis, axis + 1);
    Ok(((outer, a, b, inner), swapped))
}

fn run<T: Real>(op: &'static str, names: (&'static str, &'static str), x: View<'_, T>, axis: usize, y: ViewMut<'_, T>) -> Result<()> {
    let (xn, yn) = names;
    let ((outer, a, b, inner), want) = dims(op, xn, x.shape(), axis)?;
    if y.shape() != want.as_slice() {
        return Err(Error::Shape { op, arg: yn, expected: format!("{want:?} ({xn}'s shape with axes {axis} and {} swapped)", axis + 1), got: y.shape().to_vec() });
    }
    match common_loc(op, &[(xn, x.loc()), (yn, y.loc())])? {
        Loc::Host => {
            let xs = x.as_slice().ok_or(Error::DeviceMismatch { op, arg: xn, expected: "cpu".into(), got: "cuda".into() })?;
            let ys = y.into_slice_mut().ok_or(Error::DeviceMismatch { op, arg: yn, expected: "cpu".into(), got: "cuda".into() })?;
            // y row (o, j, i) of `inner` elements = x row (o, i, j).
            for (row, dst) in ys.chunks_exact_mut(inner).enumerate() {
                let (i, ob) = (row % a, row / a);
                let (j, o) = (ob % b, ob / b);
                let s = ((o * a + i) * b + j) * inner;
                dst.copy_from_slice(&xs[s..s + inner]);
            }
            Ok(())
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(op)?;
            let (dst, src) = (y.device_ptr().unwrap_or(0), x.device_ptr().unwrap_or(0));
            let p = SnugTransposeParams { dst: dst as *mut c_void, src: src as *const c_void, outer: outer as u64, a: a as u64, b: b as u64, inner: inner as u64 };
            let kernel = if T::DTYPE == DType::BF16 { "transpose_fwd_bf16" } else { "transpose_fwd_f32" };
            // The kernel's work: one block per 32 × 32 tile (inner == 1); otherwise one thread per
            // 16-byte vector (inner a whole number of vectors, both pointers aligned) or element.
            let v = 16 / std::mem::size_of::<T>();
            let blocks = if inner == 1 {
                outer * a.div_ceil(TILE) * b.div_ceil(TILE)
            } else {
                let work = if inner % v == 0 && dst % 16 == 0 && src % 16 == 0 { y.len() / v } else { y.len() };
                work.div_ceil(256)
            };
            let cfg = LaunchConfig { grid_dim: (blocks.clamp(1, MAX_BLOCKS) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: x is an [outer, a, b, inner] and y an [outer, b, a, inner] device view of T on
            // this handle (shapes checked above, so both hold outer·a·b·inner elements); the kernel
            // reads x and writes every element of y once, within those bounds, with 16-byte
            // accesses only where it checked both pointers' alignment.
            unsafe { gpu.launch(op, "transpose", kernel, cfg, &p) }
        }
    }
}

/// `y = x.transpose(axis, axis + 1).contiguous()`: `x` of rank ≥ 2 with no zero dimension,
/// `axis + 1 < rank`; `y` = `x`'s shape with `shape[axis]` and `shape[axis + 1]` swapped,
/// `y[.., j, i, ..] = x[.., i, j, ..]`. Elements move bitwise. Workspace bytes: 0.
pub fn transpose<T: Real>(x: View<'_, T>, axis: usize, y: ViewMut<'_, T>) -> Result<()> {
    run(OP, ("x", "y"), x, axis, y)
}

/// The backward of [`transpose`]: `dx = transpose(dy, axis)` — the op is its own adjoint. `dy` has
/// `y`'s shape, `dx` `x`'s (`dy`'s with axes `axis`, `axis + 1` swapped). Workspace bytes: 0.
pub fn transpose_backward<T: Real>(dy: View<'_, T>, axis: usize, dx: ViewMut<'_, T>) -> Result<()> {
    run(OP_BWD, ("dy", "dx"), dy, axis, dx)
}
