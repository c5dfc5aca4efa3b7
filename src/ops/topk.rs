//! Row-wise top-k of `x [rows, n]` and its backward, and the top-k mask (keep the k largest of
//! each row in place, zero the rest) with its backward (`kernels/topk.cu`).
//!
//! Order (the same on the GPU and in the CPU twin): largest first; NaN counts as larger than
//! every number (as `torch.topk`), `+inf` and `-inf` are ordinary; equal values — `-0.0` and
//! `+0.0` included, and all NaNs among themselves — come by ascending index. PyTorch leaves the
//! order of ties unspecified, so its indices may differ from these exactly at ties (the values
//! agree).
//!
//! - [`topk`]: `values [rows, k]` (copied from `x`, bit for bit) and `indices [rows, k]` (i32),
//!   `k` taken from their shape.
//! - [`topk_backward`]: `dx [rows, n]` = 0 except `dx[r, indices[r, j]] = dvalues[r, j]`. The
//!   indices must be distinct and in `0..n` within a row (as [`topk`] writes them); the CPU twin
//!   checks this and returns [`Error::Value`], the GPU kernel does not (an out-of-range index
//!   writes nothing, of duplicates the later one wins).
//! - [`topk_mask`]: `y[r, e] = x[r, e]` if `e` is among the row's top k, else `0` — the seed's
//!   `x · mask`, except that a non-selected `±inf`/NaN gives `0` here rather than `NaN`.
//! - [`topk_mask_backward`]: `dx = dy` on the top k of `x` (recomputed, never stored), `0`
//!   elsewhere.
//!
//! Limits: `1 ≤ n ≤ 128` ([`MAX_N`]: a warp holds a row in four register slots per lane, so the
//! kernel needs no local memory) and `1 ≤ k ≤ min(n, 32)` ([`MAX_K`]: the backward keeps a row's
//! k (index, gradient) pairs one per lane); anything else is an [`Error::Shape`] or
//! [`Error::Value`]. Storage `T`: f32 or bf16 on the GPU, any [`Real`] in the CPU twin (which
//! compares in f64 — exact for every storage type). No workspace, nothing saved.

use std::cmp::Ordering;
use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::{check_shape, common_loc, require_f32_or_bf16, Real};
use crate::ffi::SnugTopkParams;
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Error, Result};

const OP: &str = "topk";
const OP_BWD: &str = "topk_backward";
const OP_MASK: &str = "topk_mask";
const OP_MASK_BWD: &str = "topk_mask_backward";
/// The largest row length `n` the op supports.
pub const MAX_N: usize = 128;
/// The largest `k` the op supports (also at most `n`).
pub const MAX_K: usize = 32;
/// Rows per 256-thread block (one warp each).
const ROWS_PER_BLOCK: usize = 8;
/// Most blocks of one launch (grid-stride over the rows beyond).
const MAX_BLOCKS: usize = 1 << 16;

/// `(rows, n)` of `x`, validated.
fn dims(op: &'static str, arg: &'static str, x: &[usize]) -> Result<(usize, usize)> {
    match *x {
        [rows, n] if rows >= 1 && (1..=MAX_N).contains(&n) => Ok((rows, n)),
        _ => Err(Error::Shape { op, arg, expected: format!("[rows, n] with rows ≥ 1 and 1 ≤ n ≤ {MAX_N}"), got: x.to_vec() }),
    }
}

fn check_k(op: &'static str, k: usize, n: usize) -> Result<()> {
    if k == 0 || k > n.min(MAX_K) {
        return Err(Error::Value { op, arg: "k", expected: format!("1 ≤ k ≤ min(n, {MAX_K}) = {}", n.min(MAX_K)), got: k.to_string() });
    }
    Ok(())
}

/// `(rows, k)` of a `[rows, k]` argument, validated against `rows` and `n`.
fn k_of(op: &'static str, arg: &'static str, s: &[usize], rows: usize, n: usize) -> Result<usize> {
    match *s {
        [r, k] if r == rows && k >= 1 && k <= n.min(MAX_K) => Ok(k),
        _ => Err(Error::Shape { op, arg, expected: format!("[{rows}, k] with 1 ≤ k ≤ min(n, {MAX_K}) = {}", n.min(MAX_K)), got: s.to_vec() }),
    }
}

fn launch_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.div_ceil(ROWS_PER_BLOCK).min(MAX_BLOCKS) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn ptr(p: Option<u64>) -> *mut c_void {
    p.unwrap_or(0) as *mut c_void
}

fn not_host(op: &'static str, arg: &'static str) -> Error {
    Error::DeviceMismatch { op, arg, expected: "cpu".into(), got: "cuda".into() }
}

/// The top-k order of two values: `Greater` if `a` comes first (NaN above everything, `-0 == +0`).
fn order(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// The twin's selection: the first `k` element indices of a row in top-k order.
fn select_row<T: Real>(row: &[T], k: usize) -> Vec<usize> {
    let v: Vec<f64> = row.iter().map(|x| x.to_f64().unwrap_or(f64::NAN)).collect();
    let mut idx: Vec<usize> = (0..row.len()).collect();
    // Stable: ties keep ascending index.
    idx.sort_by(|&a, &b| order(v[b], v[a]));
    idx.truncate(k);
    idx
}

fn params() -> SnugTopkParams {
    SnugTopkParams { x: std::ptr::null(), dy: std::ptr::null(), indices_in: std::ptr::null(), out: std::ptr::null_mut(), indices: std::ptr::null_mut(), rows: 0, n: 0, k: 0 }
}

fn kernel<T: Real>(f32_name: &'static str, bf16_name: &'static str) -> &'static str {
    if T::DTYPE == DType::BF16 {
        bf16_name
    } else {
        f32_name
    }
}

/// The forward: `values [rows, k]` (largest first, copied from `x`) and their column `indices`
/// `[rows, k]` (i32), `k` from their shape.
pub fn topk<T: Real>(x: View<'_, T>, values: ViewMut<'_, T>, indices: ViewMut<'_, i32>) -> Result<()> {
    let (rows, n) = dims(OP, "x", x.shape())?;
    let k = k_of(OP, "values", values.shape(), rows, n)?;
    check_shape(OP, "indices", indices.shape(), &[rows, k], "the shape of values")?;
    match common_loc(OP, &[("x", x.loc()), ("values", values.loc()), ("indices", indices.loc())])? {
        Loc::Host => {
            let xs = x.as_slice().ok_or_else(|| not_host(OP, "x"))?;
            let vs = values.into_slice_mut().ok_or_else(|| not_host(OP, "values"))?;
            let is = indices.into_slice_mut().ok_or_else(|| not_host(OP, "indices"))?;
            for r in 0..rows {
                for (j, e) in select_row(&xs[r * n..(r + 1) * n], k).into_iter().enumerate() {
                    vs[r * k + j] = xs[r * n + e];
                    is[r * k + j] = e as i32;
                }
            }
            Ok(())
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP)?;
            let p = SnugTopkParams { x: ptr(x.device_ptr()), out: ptr(values.device_ptr()), indices: ptr(indices.device_ptr()) as *mut i32, rows: rows as u64, n: n as u32, k: k as u32, ..params() };
            // SAFETY: x is a [rows, n] device view of T, values [rows, k] of T and indices
            // [rows, k] of i32, all on this handle (checked), n ≤ 128 and k ≤ min(n, 32) (checked);
            // one warp per row (grid-stride), every element of values and indices written once.
            unsafe { gpu.launch(OP, "topk", kernel::<T>("topk_fwd_f32", "topk_fwd_bf16"), launch_cfg(rows), &p) }
        }
    }
}

/// The backward: `dx [rows, n]` = 0 except `dx[r, indices[r, j]] = dvalues[r, j]`.
pub fn topk_backward<T: Real>(indices: View<'_, i32>, dvalues: View<'_, T>, dx: ViewMut<'_, T>) -> Result<()> {
    let (rows, n) = dims(OP_BWD, "dx", dx.shape())?;
    let k = k_of(OP_BWD, "dvalues", dvalues.shape(), rows, n)?;
    check_shape(OP_BWD, "indices", indices.shape(), &[rows, k], "the shape of dvalues")?;
    match common_loc(OP_BWD, &[("indices", indices.loc()), ("dvalues", dvalues.loc()), ("dx", dx.loc())])? {
        Loc::Host => {
            let is = indices.as_slice().ok_or_else(|| not_host(OP_BWD, "indices"))?;
            let gs = dvalues.as_slice().ok_or_else(|| not_host(OP_BWD, "dvalues"))?;
            let out = dx.into_slice_mut().ok_or_else(|| not_host(OP_BWD, "dx"))?;
            // Every index checked before dx is touched: an error leaves dx as it was.
            for r in 0..rows {
                let mut seen = [false; MAX_N];
                for j in 0..k {
                    let e = is[r * k + j];
                    let bad = |what: &str| Error::Value { op: OP_BWD, arg: "indices", expected: format!("distinct column indices in 0..{n} per row ({what} at [{r}, {j}])"), got: e.to_string() };
                    let u = usize::try_from(e).ok().filter(|&u| u < n).ok_or_else(|| bad("out of range"))?;
                    if std::mem::replace(&mut seen[u], true) {
                        return Err(bad("a repeated index"));
                    }
                }
            }
            out.fill(T::zero());
            for r in 0..rows {
                for j in 0..k {
                    out[r * n + is[r * k + j] as usize] = gs[r * k + j];
                }
            }
            Ok(())
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_BWD)?;
            let p = SnugTopkParams { dy: ptr(dvalues.device_ptr()), indices_in: ptr(indices.device_ptr()) as *const i32, out: ptr(dx.device_ptr()), rows: rows as u64, n: n as u32, k: k as u32, ..params() };
            // SAFETY: indices [rows, k] i32 and dvalues [rows, k] T device views (read), dx a
            // [rows, n] view of T, all on this handle (checked); one warp per row, every element
            // of dx written once; an index outside 0..n matches no element and writes nothing.
            unsafe { gpu.launch(OP_BWD, "topk", kernel::<T>("topk_bwd_f32", "topk_bwd_bf16"), launch_cfg(rows), &p) }
        }
    }
}

/// The mask forward: `y[r, e] = x[r, e]` where `e` is among the `k` first of row `r` in top-k
/// order, `0` elsewhere.
pub fn topk_mask<T: Real>(x: View<'_, T>, k: usize, y: ViewMut<'_, T>) -> Result<()> {
    let (rows, n) = dims(OP_MASK, "x", x.shape())?;
    check_k(OP_MASK, k, n)?;
    check_shape(OP_MASK, "y", y.shape(), x.shape(), "the shape of x")?;
    match common_loc(OP_MASK, &[("x", x.loc()), ("y", y.loc())])? {
        Loc::Host => {
            let xs = x.as_slice().ok_or_else(|| not_host(OP_MASK, "x"))?;
            let out = y.into_slice_mut().ok_or_else(|| not_host(OP_MASK, "y"))?;
            masked(xs, xs, out, n, k);
            Ok(())
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_MASK)?;
            let p = SnugTopkParams { x: ptr(x.device_ptr()), out: ptr(y.device_ptr()), rows: rows as u64, n: n as u32, k: k as u32, ..params() };
            // SAFETY: x and y are [rows, n] device views of T on this handle (checked, distinct:
            // y is borrowed mutably), n ≤ 128, k ≤ min(n, 32); one warp per row, every element of
            // y written once.
            unsafe { gpu.launch(OP_MASK, "topk", kernel::<T>("topk_mask_fwd_f32", "topk_mask_fwd_bf16"), launch_cfg(rows), &p) }
        }
    }
}

/// The mask backward: `dx = dy` on the top `k` of each row of `x` (recomputed), `0` elsewhere.
pub fn topk_mask_backward<T: Real>(x: View<'_, T>, dy: View<'_, T>, k: usize, dx: ViewMut<'_, T>) -> Result<()> {
    let (rows, n) = dims(OP_MASK_BWD, "x", x.shape())?;
    check_k(OP_MASK_BWD, k, n)?;
    check_shape(OP_MASK_BWD, "dy", dy.shape(), x.shape(), "the shape of x")?;
    check_shape(OP_MASK_BWD, "dx", dx.shape(), x.shape(), "the shape of x")?;
    match common_loc(OP_MASK_BWD, &[("x", x.loc()), ("dy", dy.loc()), ("dx", dx.loc())])? {
        Loc::Host => {
            let xs = x.as_slice().ok_or_else(|| not_host(OP_MASK_BWD, "x"))?;
            let gs = dy.as_slice().ok_or_else(|| not_host(OP_MASK_BWD, "dy"))?;
            let out = dx.into_slice_mut().ok_or_else(|| not_host(OP_MASK_BWD, "dx"))?;
            masked(xs, gs, out, n, k);
            Ok(())
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_MASK_BWD)?;
            let p = SnugTopkParams { x: ptr(x.device_ptr()), dy: ptr(dy.device_ptr()), out: ptr(dx.device_ptr()), rows: rows as u64, n: n as u32, k: k as u32, ..params() };
            // SAFETY: x, dy (read) and dx are [rows, n] device views of T on this handle
            // (checked), n ≤ 128, k ≤ min(n, 32); one warp per row, every element of dx written once.
            unsafe { gpu.launch(OP_MASK_BWD, "topk", kernel::<T>("topk_mask_bwd_f32", "topk_mask_bwd_bf16"), launch_cfg(rows), &p) }
        }
    }
}

/// `out = src` on the top `k` of each row of `x`, `0` elsewhere (the twin of both mask kernels).
fn masked<T: Real>(x: &[T], src: &[T], out: &mut [T], n: usize, k: usize) {
    out.fill(T::zero());
    for r in 0..x.len() / n {
        for e in select_row(&x[r * n..(r + 1) * n], k) {
            out[r * n + e] = src[r * n + e];
        }
    }
}
