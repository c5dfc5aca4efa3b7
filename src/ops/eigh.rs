//! Batched symmetric eigendecomposition for n ≤ 32 (`kernels/eigh.cu`), and its backward.
//!
//! `eigh(A [batch, n, n]) -> (w [batch, n] ascending, V [batch, n, n])`, A = V diag(w) Vᵀ with the
//! eigenvectors in V's columns. Only the upper triangle of A is read. f32 on the GPU (one warp per
//! matrix, parallel-order Jacobi in shared memory; no workspace, no host synchronisation); f32 or
//! f64 on the CPU, where the twin uses nalgebra's `SymmetricEigen` in f64 and is the reference.
//!
//! **Sign convention**: each eigenvector's entries sum to ≥ 0; when |sum| ≤ 10⁻⁵·Σ|vᵢ| (a tie,
//! e.g. `[1, −1]/√2`), the first entry whose magnitude is within 10⁻⁵ (relative) of the largest is
//! made positive. Eigenvectors of repeated eigenvalues are any orthonormal basis of their
//! eigenspace (compare projectors, not vectors).
//!
//! **Non-finite input**: a matrix with a NaN or ±Inf in its upper triangle gets NaN eigenvalues
//! and eigenvectors; the other matrices of the batch are unaffected, and nothing hangs (the sweep
//! count is bounded). Pass an `info` buffer to learn which matrices: `INFO_NONFINITE`, or
//! `INFO_NOT_CONVERGED` if the sweep bound was hit; [`eigh_checked`] turns that into an error.
//!
//! **Backward**: `gA = V (diag(gw) + sym(F ∘ (Vᵀ gV))) Vᵀ`, `sym(X) = (X + Xᵀ)/2`,
//! `F_ij = d/(d² + ε²)` with `d = w_j − w_i` and `ε = eps_rel·‖w‖₂ (= eps_rel·‖A‖_F)`: exact for
//! well-separated eigenvalues, finite on degenerate spectra. gA is symmetric (PyTorch's convention
//! for a symmetric input): since the forward reads the upper triangle, perturbing the upper entry
//! (i, j), i < j, by δ changes the loss by (gA_ij + gA_ji)·δ. Saved for backward: the outputs w and
//! V ([`saved_bytes`]); workspace: 0.
//!
//! ```
//! use snug::ops::eigh::{eigh, INFO_OK};
//! use snug::{View, ViewMut};
//! let a = [2.0f32, 1.0, 1.0, 2.0]; // [[2, 1], [1, 2]]: eigenvalues 1 and 3
//! let (mut w, mut v, mut info) = ([0.0f32; 2], [0.0f32; 4], [7i32]);
//! eigh(View::host(&a, &[1, 2, 2])?, ViewMut::host(&mut w, &[1, 2])?, ViewMut::host(&mut v, &[1, 2, 2])?,
//!      Some(ViewMut::host(&mut info, &[1])?))?;
//! assert!((w[0] - 1.0).abs() < 1e-6 && (w[1] - 3.0).abs() < 1e-6 && info[0] == INFO_OK);
//! // (1, 1)/√2 for 3; (1, −1)/√2 for 1: a tie, so its largest (first) entry is made positive.
//! assert!(v[1] > 0.0 && v[3] > 0.0 && v[0] > 0.0 && v[2] < 0.0);
//! # Ok::<(), snug::Error>(())
//! ```

use cudarc::driver::LaunchConfig;
use nalgebra::DMatrix;
use rayon::prelude::*;

use super::{check_shape, common_loc, require_f32, Real};
use crate::ffi::{self, SnugEighBackwardParams, SnugEighParams};
use crate::memory::{Loc, View, ViewMut};
use crate::{Error, Result};

const OP: &str = "eigh";
const OP_BWD: &str = "eigh_backward";

/// Largest matrix order (one warp per matrix, one lane per column).
pub const MAX_N: usize = ffi::SNUG_EIGH_MAX_N as usize;
/// Jacobi sweeps before a matrix is reported `INFO_NOT_CONVERGED` (f32 needs 4–9 at n ≤ 32,
/// up to 11 for strongly graded spectra).
pub const MAX_SWEEPS: u32 = 30;
/// Default relative broadening of the backward's `F` (ε = `eps_rel`·‖A‖_F).
pub const DEFAULT_EPS_REL: f32 = 1e-6;
// The info codes and MAX_N come from kernels/eigh.h through the bindings: one definition.
/// `info` code: converged.
pub const INFO_OK: i32 = ffi::SNUG_EIGH_OK as i32;
/// `info` code: the matrix had a non-finite entry; its outputs are NaN.
pub const INFO_NONFINITE: i32 = ffi::SNUG_EIGH_NONFINITE as i32;
/// `info` code: the sweep bound was reached; the outputs hold the last iterate.
pub const INFO_NOT_CONVERGED: i32 = ffi::SNUG_EIGH_NOT_CONVERGED as i32;
/// Sign-convention tie threshold (see the module docs); the kernel uses the same value.
pub const SIGN_TIE: f64 = 1e-5;

/// Workspace of [`eigh`], [`eigh_backward`] (and `laplacian_pe`): none.
pub fn workspace_bytes(_batch: usize, _n: usize) -> usize {
    0
}

/// Bytes [`eigh_backward`] needs kept from the forward pass: w and V, f32.
pub fn saved_bytes(batch: usize, n: usize) -> usize {
    4 * batch * (n + n * n)
}

/// Launch shape of the one-warp-per-item kernels of `kernels/eigh.cu`.
pub(crate) struct WarpLaunch {
    pub ld: u32,
    pub warps_per_block: u32,
    pub cfg: LaunchConfig,
}

/// Row stride in shared memory (n rounded up to odd: column walks hit 32 distinct banks).
pub(crate) fn smem_ld(n: usize) -> usize {
    n | 1
}

/// Shared-memory words of one warp's slot: `arrays` n×ld matrices, the round's rotations (4×16
/// words) and 32 sorted eigenvalues — the kernel's `slot_words`.
pub(crate) fn slot_words(n: usize, arrays: usize) -> usize {
    arrays * n * smem_ld(n) + 4 * 16 + 32
}

/// Shared memory a block may use without opting in to more than 48 KiB.
const SMEM_BUDGET: usize = 40 * 1024;

pub(crate) fn warp_launch(items: u64, n: usize, arrays: usize) -> WarpLaunch {
    let slot = 4 * slot_words(n, arrays);
    let wpb = (SMEM_BUDGET / slot).clamp(1, 8);
    let blocks = items.div_ceil(wpb as u64).clamp(1, 1 << 20) as u32;
    WarpLaunch {
        ld: smem_ld(n) as u32,
        warps_per_block: wpb as u32,
        cfg: LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (32 * wpb as u32, 1, 1), shared_mem_bytes: (wpb * slot) as u32 },
    }
}

/// Checks `a: [batch, n, n]` with 1 ≤ n ≤ 32 and returns (batch, n).
pub(crate) fn check_square(op: &'static str, arg: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
    match *shape {
        [b, n, m] if n == m && (1..=MAX_N).contains(&n) && b >= 1 => Ok((b, n)),
        _ => Err(Error::Shape { op, arg, expected: format!("[batch, n, n] with batch >= 1 and 1 <= n <= {MAX_N}"), got: shape.to_vec() }),
    }
}


/// Eigendecomposition of every matrix of `a` (see the module docs). Outputs are fully written;
/// `info`, if given, receives one `INFO_*` code per matrix.
pub fn eigh<T: Real>(a: View<'_, T>, w: ViewMut<'_, T>, v: ViewMut<'_, T>, info: Option<ViewMut<'_, i32>>) -> Result<()> {
    let (batch, n) = check_square(OP, "a", a.shape())?;
    check_shape(OP, "w", w.shape(), &[batch, n], "[batch, n] of a")?;
    check_shape(OP, "v", v.shape(), &[batch, n, n], "the shape of a")?;
    let mut locs = vec![("a", a.loc()), ("w", w.loc()), ("v", v.loc())];
    if let Some(i) = &info {
        check_shape(OP, "info", i.shape(), &[batch], "[batch] of a")?;
        locs.push(("info", i.loc()));
    }
    match common_loc(OP, &locs)? {
        Loc::Host => cpu_eigh(a, w, v, info),
        Loc::Cuda(gpu) => {
            require_f32::<T>(OP)?;
            let l = warp_launch(batch as u64, n, 2);
            let p = SnugEighParams {
                w: w.device_ptr().unwrap_or(0) as *mut f32,
                v: v.device_ptr().unwrap_or(0) as *mut f32,
                info: info.as_ref().and_then(|i| i.device_ptr()).unwrap_or(0) as *mut i32,
                a: a.device_ptr().unwrap_or(0) as *const f32,
                batch: batch as u64,
                n: n as u32,
                ld: l.ld,
                warps_per_block: l.warps_per_block,
                max_sweeps: MAX_SWEEPS,
            };
            // SAFETY: a, w, v (and info) are device views on this handle with the shapes checked
            // above; the kernel touches matrices [0, batch) of each and the launch provides the
            // shared memory it indexes (warps_per_block slots of slot_words(n, 2) floats).
            unsafe { gpu.launch(OP, "eigh", "eigh_f32", l.cfg, &p) }
        }
    }
}

/// [`eigh`] that then reads `info` back (a host synchronisation on the GPU) and fails with
/// [`Error::Numerical`] naming the first matrix that was non-finite or did not converge.
pub fn eigh_checked<T: Real>(a: View<'_, T>, w: ViewMut<'_, T>, v: ViewMut<'_, T>, mut info: ViewMut<'_, i32>) -> Result<()> {
    eigh(a, w, v, Some(info.reborrow()))?;
    check_info(OP, &info.as_view())
}

/// Fails with [`Error::Numerical`] at the first non-zero `info` code.
pub fn check_info(op: &'static str, info: &View<'_, i32>) -> Result<()> {
    let codes = info.to_vec()?;
    match codes.iter().position(|&c| c != INFO_OK) {
        None => Ok(()),
        Some(index) => Err(Error::Numerical {
            op,
            index,
            what: match codes[index] {
                INFO_NONFINITE => "the matrix has a non-finite entry (its outputs are NaN)".into(),
                INFO_NOT_CONVERGED => format!("Jacobi did not converge in {MAX_SWEEPS} sweeps"),
                c => format!("info code {c}"),
            },
        }),
    }
}

/// Gradient of the loss w.r.t. A from the gradients w.r.t. the outputs (see the module docs).
/// `gw` or `gv` may be `None` (zero). `eps_rel` ≥ 0; [`DEFAULT_EPS_REL`] is a good default.
pub fn eigh_backward<T: Real>(
    w: View<'_, T>,
    v: View<'_, T>,
    gw: Option<View<'_, T>>,
    gv: Option<View<'_, T>>,
    ga: ViewMut<'_, T>,
    eps_rel: f32,
) -> Result<()> {
    let (batch, n) = check_square(OP_BWD, "v", v.shape())?;
    check_shape(OP_BWD, "w", w.shape(), &[batch, n], "[batch, n] of v")?;
    check_shape(OP_BWD, "ga", ga.shape(), &[batch, n, n], "the shape of v")?;
    let mut locs = vec![("w", w.loc()), ("v", v.loc()), ("ga", ga.loc())];
    if let Some(g) = &gw {
        check_shape(OP_BWD, "gw", g.shape(), &[batch, n], "the shape of w")?;
        locs.push(("gw", g.loc()));
    }
    if let Some(g) = &gv {
        check_shape(OP_BWD, "gv", g.shape(), &[batch, n, n], "the shape of v")?;
        locs.push(("gv", g.loc()));
    }
    if !(eps_rel.is_finite() && eps_rel >= 0.0) {
        return Err(Error::Value { op: OP_BWD, arg: "eps_rel", expected: "a finite value >= 0".into(), got: eps_rel.to_string() });
    }
    match common_loc(OP_BWD, &locs)? {
        Loc::Host => {
            let host = |arg| Error::DeviceMismatch { op: OP_BWD, arg, expected: "cpu".into(), got: "cuda".into() };
            let (ws, vs) = (w.as_slice().ok_or_else(|| host("w"))?, v.as_slice().ok_or_else(|| host("v"))?);
            let gws = gw.as_ref().map(|g| g.as_slice().ok_or_else(|| host("gw"))).transpose()?;
            let gvs = gv.as_ref().map(|g| g.as_slice().ok_or_else(|| host("gv"))).transpose()?;
            let out = ga.into_slice_mut().ok_or_else(|| host("ga"))?;
            out.par_chunks_mut(n * n).enumerate().for_each(|(b, o)| {
                let f = |x: T| x.to_f64().unwrap_or(f64::NAN);
                let wb: Vec<f64> = ws[b * n..(b + 1) * n].iter().map(|&x| f(x)).collect();
                let vb: Vec<f64> = vs[b * n * n..(b + 1) * n * n].iter().map(|&x| f(x)).collect();
                let gwb: Vec<f64> = gws.map(|g| g[b * n..(b + 1) * n].iter().map(|&x| f(x)).collect()).unwrap_or_else(|| vec![0.0; n]);
                let gvb: Vec<f64> = gvs.map(|g| g[b * n * n..(b + 1) * n * n].iter().map(|&x| f(x)).collect()).unwrap_or_else(|| vec![0.0; n * n]);
                let eps = eps_rel as f64 * wb.iter().map(|x| x * x).sum::<f64>().sqrt();
                let r = vjp(&wb, &vb, &gwb, &gvb, eps, n);
                for (o, x) in o.iter_mut().zip(r) {
                    *o = T::round_f64(x);
                }
            });
            Ok(())
        }
        Loc::Cuda(gpu) => {
            require_f32::<T>(OP_BWD)?;
            let l = warp_launch(batch as u64, n, 3);
            let p = SnugEighBackwardParams {
                ga: ga.device_ptr().unwrap_or(0) as *mut f32,
                w: w.device_ptr().unwrap_or(0) as *const f32,
                v: v.device_ptr().unwrap_or(0) as *const f32,
                gw: gw.as_ref().and_then(|g| g.device_ptr()).unwrap_or(0) as *const f32,
                gv: gv.as_ref().and_then(|g| g.device_ptr()).unwrap_or(0) as *const f32,
                batch: batch as u64,
                n: n as u32,
                ld: l.ld,
                warps_per_block: l.warps_per_block,
                eps_rel,
            };
            // SAFETY: every pointer is a device view on this handle with the checked shape (or
            // null for an absent gradient, which the kernel treats as zero); shared memory as
            // in `eigh` with 3 arrays per slot.
            unsafe { gpu.launch(OP_BWD, "eigh", "eigh_backward_f32", l.cfg, &p) }
        }
    }
}

/// The f64 eigendecomposition of one matrix (row-major, upper triangle read): ascending
/// eigenvalues, eigenvectors in columns with the sign convention, and the info code.
pub(crate) fn eigh_f64(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>, i32) {
    let upper = |i: usize, j: usize| if i <= j { a[i * n + j] } else { a[j * n + i] };
    if (0..n).any(|i| (i..n).any(|j| !a[i * n + j].is_finite())) {
        return (vec![f64::NAN; n], vec![f64::NAN; n * n], INFO_NONFINITE);
    }
    let m = DMatrix::from_fn(n, n, upper);
    let Some(e) = nalgebra::SymmetricEigen::try_new(m, f64::EPSILON, 100_000) else {
        return (vec![f64::NAN; n], vec![f64::NAN; n * n], INFO_NOT_CONVERGED);
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| e.eigenvalues[i].total_cmp(&e.eigenvalues[j]).then(i.cmp(&j)));
    let w: Vec<f64> = order.iter().map(|&i| e.eigenvalues[i]).collect();
    let mut v = vec![0.0; n * n];
    for (c, &src) in order.iter().enumerate() {
        let col: Vec<f64> = (0..n).map(|r| e.eigenvectors[(r, src)]).collect();
        let s = convention_sign(&col);
        for r in 0..n {
            v[r * n + c] = s * col[r];
        }
    }
    (w, v, INFO_OK)
}

/// +1 or −1: the factor that makes `col` follow the sign convention (module docs).
pub(crate) fn convention_sign(col: &[f64]) -> f64 {
    let sum: f64 = col.iter().sum();
    let l1: f64 = col.iter().map(|x| x.abs()).sum();
    if sum.abs() > SIGN_TIE * l1 {
        return if sum < 0.0 { -1.0 } else { 1.0 };
    }
    let vmax = col.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    match col.iter().find(|x| x.abs() >= vmax * (1.0 - SIGN_TIE)) {
        Some(x) if *x < 0.0 => -1.0,
        _ => 1.0,
    }
}

/// gA = V (diag(gw) + sym(F ∘ (Vᵀ gV))) Vᵀ for one matrix, in f64 (row-major n×n).
pub(crate) fn vjp(w: &[f64], v: &[f64], gw: &[f64], gv: &[f64], eps: f64, n: usize) -> Vec<f64> {
    let mut m = vec![0.0; n * n]; // Vᵀ gV
    for i in 0..n {
        for j in 0..n {
            m[i * n + j] = (0..n).map(|r| v[r * n + i] * gv[r * n + j]).sum();
        }
    }
    let mut k = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            k[i * n + j] = if i == j {
                gw[i]
            } else {
                let d = w[j] - w[i];
                let den = d * d + eps * eps;
                let f = if den > 0.0 { d / den } else { 0.0 };
                0.5 * f * (m[i * n + j] - m[j * n + i])
            };
        }
    }
    let mut t = vec![0.0; n * n]; // V K
    for i in 0..n {
        for j in 0..n {
            t[i * n + j] = (0..n).map(|r| v[i * n + r] * k[r * n + j]).sum();
        }
    }
    let mut ga = vec![0.0; n * n]; // T Vᵀ
    for i in 0..n {
        for j in 0..n {
            ga[i * n + j] = (0..n).map(|r| t[i * n + r] * v[j * n + r]).sum();
        }
    }
    ga
}

fn cpu_eigh<T: Real>(a: View<'_, T>, w: ViewMut<'_, T>, v: ViewMut<'_, T>, info: Option<ViewMut<'_, i32>>) -> Result<()> {
    let n = a.shape()[1];
    let host = |arg| Error::DeviceMismatch { op: OP, arg, expected: "cpu".into(), got: "cuda".into() };
    let a = a.as_slice().ok_or_else(|| host("a"))?;
    let w = w.into_slice_mut().ok_or_else(|| host("w"))?;
    let v = v.into_slice_mut().ok_or_else(|| host("v"))?;
    let codes: Vec<i32> = w
        .par_chunks_mut(n)
        .zip(v.par_chunks_mut(n * n))
        .zip(a.par_chunks(n * n))
        .map(|((wb, vb), ab)| {
            let a64: Vec<f64> = ab.iter().map(|x| x.to_f64().unwrap_or(f64::NAN)).collect();
            let (w64, v64, code) = eigh_f64(&a64, n);
            for (o, x) in wb.iter_mut().zip(w64) {
                *o = T::round_f64(x);
            }
            for (o, x) in vb.iter_mut().zip(v64) {
                *o = T::round_f64(x);
            }
            code
        })
        .collect();
    if let Some(info) = info {
        info.into_slice_mut().ok_or_else(|| host("info"))?.copy_from_slice(&codes);
    }
    Ok(())
}
