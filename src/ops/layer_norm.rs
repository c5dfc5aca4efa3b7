//! LayerNorm over the last dimension or over the channels of `[B, C, ...]`, forward and backward
//! (`kernels/layer_norm.cu`).
//!
//! `y = (x − mean)·rstd·γ + β` per row, `rstd = 1/√(var + eps)` with the biased variance (PyTorch's
//! `nn.LayerNorm`; over channels it is what `LayerNorm` on a channels-last permutation computes,
//! without the permutation). [`Axis::Last`]: rows are `x[..., :]` (`[.., C]`); [`Axis::Channels`]:
//! rows are `x[b, :, l...]` of `[B, C, L...]` (a `[B, C, H, W]` feature map normalised per pixel).
//!
//! Saves mean and rstd (type `P`, one per row: [`saved_bytes`]); the backward takes them, writes `dx`,
//! `dγ`, `dβ` (overwriting), the parameter sums through per-chunk partials (workspace
//! [`backward_workspace_bytes`]) summed in a fixed order: deterministic, no atomics.
//!
//! Storage: activations `T` (f32 or bf16 on the GPU); `γ`, `β`, their gradients and the saved
//! statistics `P` (f32 on the GPU, f64 for the reference twin). The CPU twin takes any [`Real`]
//! and computes in f64; its backward, like the kernels, uses the saved statistics.

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::{check_range, check_shape, common_loc, host_f64, require_f32, require_f32_or_bf16, store_f64, need_workspace, Real};
use crate::ffi::{self, SnugLayerNormParams};
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Error, Result};

const OP: &str = "layer_norm";
const OP_BWD: &str = "layer_norm_backward";
/// Rows per chunk of the parameter-gradient partials over channels (I > 1): a block per
/// (channel, chunk) walks them.
const CHUNK_ROWS: usize = ffi::SNUG_LN_CHUNK_ROWS as usize;
/// Rows per chunk over the last dimension (I = 1), where a block per (32 channels, chunk) walks
/// them with 8 warps: smaller chunks, so that V3's [8, 19, 960, 64] (2 channel tiles) still has
/// hundreds of blocks.
const CHUNK_ROWS_LAST: usize = 512;
/// The launch grid's y limit: more rows than this many chunks' worth make the chunks longer.
const MAX_CHUNKS: usize = 65_535;
/// Block of the row kernels (I = 1) and of the parameter kernels.
const BLOCK: u32 = 256;

/// Which axis is normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// The last dimension of `[.., C]`.
    Last,
    /// Dimension 1 of `[B, C, L...]`.
    Channels,
}

/// `x` as `(O, C, I)`: rows `(o, i)`, normalised over `C`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LnDims {
    /// Outer extent.
    pub o: usize,
    /// Normalised extent.
    pub c: usize,
    /// Inner extent (1 for [`Axis::Last`]).
    pub i: usize,
}

impl LnDims {
    /// Rows (one mean and rstd each).
    pub fn rows(&self) -> usize {
        self.o * self.i
    }
}

/// The `(O, C, I)` view of a shape for `axis`.
pub fn ln_dims(shape: &[usize], axis: Axis) -> Result<LnDims> {
    dims(OP, shape, axis)
}

fn dims(op: &'static str, shape: &[usize], axis: Axis) -> Result<LnDims> {
    let d = match (axis, shape) {
        (Axis::Last, [.., c]) => LnDims { o: shape[..shape.len() - 1].iter().product(), c: *c, i: 1 },
        (Axis::Channels, [b, c, rest @ ..]) => LnDims { o: *b, c: *c, i: rest.iter().product() },
        _ => return Err(Error::Shape { op, arg: "x", expected: format!("{} dimensions", if axis == Axis::Last { "at least 1" } else { "[B, C, ...]: at least 2" }), got: shape.to_vec() }),
    };
    if d.o == 0 || d.c == 0 || d.i == 0 {
        return Err(Error::Shape { op, arg: "x", expected: "no zero-size dimension".into(), got: shape.to_vec() });
    }
    // The kernels walk C with int counters stepping by up to 32.
    if d.c > i32::MAX as usize - 32 {
        return Err(Error::Shape { op, arg: "x", expected: "a normalised dimension below 2^31 - 32".into(), got: shape.to_vec() });
    }
    Ok(d)
}

/// Bytes the forward saves for the backward besides `x`: mean and rstd of `dtype` (f32 on the
/// GPU), `2·rows·size`.
pub fn saved_bytes(d: LnDims, dtype: DType) -> usize {
    2 * d.rows() * dtype.size()
}

/// Workspace of the forward: none.
pub fn workspace_bytes(_d: LnDims) -> usize {
    0
}

/// Workspace of the GPU backward: the partial sums of dγ and dβ per chunk of rows,
/// `chunks·2·C·4` bytes with `chunks = min(⌈rows/R⌉, 65,535)`, `R` = 4,096 rows over channels
/// (`I > 1`) and 512 over the last dimension (`I = 1`); a pure function of the shape (the CPU twin
/// needs none).
pub fn backward_workspace_bytes(d: LnDims) -> usize {
    4 * chunks(d) * 2 * d.c
}

/// Chunks of rows of the parameter-gradient partials (balanced: chunk `k` is rows
/// `[k·rows/chunks, (k+1)·rows/chunks)`).
fn chunks(d: LnDims) -> usize {
    d.rows().div_ceil(if d.i == 1 { CHUNK_ROWS_LAST } else { CHUNK_ROWS }).min(MAX_CHUNKS)
}

/// Lanes per row of the row kernels (`I = 1`): a power of two, 4..32, so that a lane holds at
/// most 8 elements where `C ≤ 256` (V3's `C = 64`: 8 lanes, 4 rows per warp).
fn lanes_per_row(c: usize) -> u32 {
    c.div_ceil(8).next_power_of_two().clamp(4, 32) as u32
}

/// C-slices (warps per block) of the column kernels (`I > 1`): about 16 channels per slice, at
/// most 16 slices (512 threads). A function of `C` alone: a row's sums, hence its bits, do not
/// depend on how many rows there are or on the GPU.
fn slices(c: usize) -> u32 {
    c.div_ceil(16).clamp(1, 16) as u32
}

/// The forward. `mean` and `rstd` (`[rows]`, rows in `(o, i)` order) are written for the
/// backward.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm<T: Real, P: Real>(x: View<'_, T>, gamma: Option<View<'_, P>>, beta: Option<View<'_, P>>, y: ViewMut<'_, T>, mean: ViewMut<'_, P>, rstd: ViewMut<'_, P>, axis: Axis, eps: f32) -> Result<()> {
    check_range(OP, "eps", eps, eps > 0.0, "finite and > 0")?;
    let d = dims(OP, x.shape(), axis)?;
    check_shape(OP, "y", y.shape(), x.shape(), "the shape of x")?;
    check_shape(OP, "mean", mean.shape(), &[d.rows()], "[rows] (one per normalised row)")?;
    check_shape(OP, "rstd", rstd.shape(), &[d.rows()], "[rows] (one per normalised row)")?;
    let mut locs = vec![("x", x.loc()), ("y", y.loc()), ("mean", mean.loc()), ("rstd", rstd.loc())];
    for (arg, v) in [("gamma", &gamma), ("beta", &beta)] {
        if let Some(v) = v {
            check_shape(OP, arg, v.shape(), &[d.c], "[C]")?;
            locs.push((arg, v.loc()));
        }
    }
    match common_loc(OP, &locs)? {
        Loc::Host => {
            let xv = host_f64(OP, "x", &x)?;
            let g = gamma.as_ref().map(|v| host_f64(OP, "gamma", v)).transpose()?;
            let b = beta.as_ref().map(|v| host_f64(OP, "beta", v)).transpose()?;
            let (mut out, mut mu, mut rs) = (vec![0.0; xv.len()], vec![0.0; d.rows()], vec![0.0; d.rows()]);
            for r in 0..d.rows() {
                let at = |c: usize| (r / d.i) * d.c * d.i + c * d.i + r % d.i;
                let m = (0..d.c).map(|c| xv[at(c)]).sum::<f64>() / d.c as f64;
                let var = (0..d.c).map(|c| (xv[at(c)] - m).powi(2)).sum::<f64>() / d.c as f64;
                let s = 1.0 / (var + eps as f64).sqrt();
                for c in 0..d.c {
                    out[at(c)] = (xv[at(c)] - m) * s * g.as_ref().map_or(1.0, |g| g[c]) + b.as_ref().map_or(0.0, |b| b[c]);
                }
                (mu[r], rs[r]) = (m, s);
            }
            store_f64(OP, "y", y, &out)?;
            store_f64(OP, "mean", mean, &mu)?;
            store_f64(OP, "rstd", rstd, &rs)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP)?;
            require_f32::<P>(OP)?;
            let p = params(d, eps, [x.device_ptr(), y.device_ptr(), ptr(&gamma), ptr(&beta), mean.device_ptr(), rstd.device_ptr(), None, None, None, None, None]);
            // SAFETY: x, y are device views of the validated (O, C, I) shape, gamma/beta [C] or
            // null, mean/rstd [rows] f32; the threads of a row read it and write y and the row's
            // statistics.
            unsafe { launch_rows::<T>(gpu, OP, "fwd", &p) }
        }
    }
}

fn ptr<P: Real>(v: &Option<View<'_, P>>) -> Option<u64> {
    v.as_ref().and_then(|v| v.device_ptr())
}

fn ptr_mut<P: Real>(v: &Option<ViewMut<'_, P>>) -> Option<u64> {
    v.as_ref().and_then(|v| v.device_ptr())
}

/// Gradients (written, not accumulated): `dx`, and `dgamma` / `dbeta` when given (`dgamma` only
/// with `gamma`). On the GPU `workspace` holds at least [`backward_workspace_bytes`] whenever a
/// parameter gradient is asked for.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward<T: Real, P: Real>(
    x: View<'_, T>,
    gamma: Option<View<'_, P>>,
    dy: View<'_, T>,
    mean: View<'_, P>,
    rstd: View<'_, P>,
    dx: ViewMut<'_, T>,
    dgamma: Option<ViewMut<'_, P>>,
    dbeta: Option<ViewMut<'_, P>>,
    workspace: Option<ViewMut<'_, f32>>,
    axis: Axis,
) -> Result<()> {
    let d = dims(OP_BWD, x.shape(), axis)?;
    for (arg, sh) in [("dy", dy.shape()), ("dx", dx.shape())] {
        check_shape(OP_BWD, arg, sh, x.shape(), "the shape of x")?;
    }
    check_shape(OP_BWD, "mean", mean.shape(), &[d.rows()], "[rows]")?;
    check_shape(OP_BWD, "rstd", rstd.shape(), &[d.rows()], "[rows]")?;
    let mut locs = vec![("x", x.loc()), ("dy", dy.loc()), ("mean", mean.loc()), ("rstd", rstd.loc()), ("dx", dx.loc())];
    if let Some(g) = &gamma {
        check_shape(OP_BWD, "gamma", g.shape(), &[d.c], "[C]")?;
        locs.push(("gamma", g.loc()));
    }
    if dgamma.is_some() && gamma.is_none() {
        return Err(Error::Value { op: OP_BWD, arg: "dgamma", expected: "None without gamma".into(), got: "a buffer".into() });
    }
    for (arg, v) in [("dgamma", &dgamma), ("dbeta", &dbeta)] {
        if let Some(v) = v {
            check_shape(OP_BWD, arg, v.shape(), &[d.c], "[C]")?;
            locs.push((arg, v.loc()));
        }
    }
    locs.extend(workspace.as_ref().map(|w| ("workspace", w.loc())));
    match common_loc(OP_BWD, &locs)? {
        Loc::Host => {
            let (xv, gy) = (host_f64(OP_BWD, "x", &x)?, host_f64(OP_BWD, "dy", &dy)?);
            let (mu, rs) = (host_f64(OP_BWD, "mean", &mean)?, host_f64(OP_BWD, "rstd", &rstd)?);
            let g = gamma.as_ref().map(|v| host_f64(OP_BWD, "gamma", v)).transpose()?;
            let (mut gx, mut gg, mut gb) = (vec![0.0; xv.len()], vec![0.0; d.c], vec![0.0; d.c]);
            for r in 0..d.rows() {
                let at = |c: usize| (r / d.i) * d.c * d.i + c * d.i + r % d.i;
                let (m, s) = (mu[r], rs[r]);
                let h: Vec<f64> = (0..d.c).map(|c| (xv[at(c)] - m) * s).collect();
                let gm: Vec<f64> = (0..d.c).map(|c| gy[at(c)] * g.as_ref().map_or(1.0, |g| g[c])).collect();
                let a = gm.iter().sum::<f64>() / d.c as f64;
                let b = gm.iter().zip(&h).map(|(p, q)| p * q).sum::<f64>() / d.c as f64;
                for c in 0..d.c {
                    gx[at(c)] = s * (gm[c] - a - h[c] * b);
                    gg[c] += gy[at(c)] * h[c];
                    gb[c] += gy[at(c)];
                }
            }
            store_f64(OP_BWD, "dx", dx, &gx)?;
            if let Some(v) = dgamma {
                store_f64(OP_BWD, "dgamma", v, &gg)?;
            }
            if let Some(v) = dbeta {
                store_f64(OP_BWD, "dbeta", v, &gb)?;
            }
            Ok(())
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_BWD)?;
            require_f32::<P>(OP_BWD)?;
            let want_params = dgamma.is_some() || dbeta.is_some();
            let chunks = chunks(d);
            let ws = match want_params {
                false => None,
                true => need_workspace(OP_BWD, workspace, backward_workspace_bytes(d) / 4, "backward_workspace_bytes")?.device_ptr(),
            };
            let mut p = params(d, 1.0, [x.device_ptr(), None, ptr(&gamma), None, mean.device_ptr(), rstd.device_ptr(), dy.device_ptr(), dx.device_ptr(), ws, ptr_mut(&dgamma), ptr_mut(&dbeta)]);
            p.chunks = chunks as u32;
            // SAFETY: x, dy, dx device views of the validated shape; mean/rstd [rows] f32; gamma,
            // dgamma, dbeta [C] or null; the workspace (checked) holds chunks·2·C floats. The
            // params kernel writes part[chunk][2][c] once each; the reduce kernel (after it, same
            // stream) reads them and writes dgamma/dbeta. Each launch gets the dynamic shared
            // memory its kernel indexes (2·blockDim floats).
            unsafe {
                launch_rows::<T>(gpu, OP_BWD, "bwd_dx", &p)?;
                if want_params {
                    let bf16 = T::DTYPE == DType::BF16;
                    // Last dimension: 32 channels per block (lanes), 8 warps over the chunk's rows;
                    // channels: a block per channel, threads over the chunk's rows.
                    let (kernel, gx) = match (d.i == 1, bf16) {
                        (true, true) => ("layer_norm_bwd_params_bf16", d.c.div_ceil(32)),
                        (true, false) => ("layer_norm_bwd_params_f32", d.c.div_ceil(32)),
                        (false, true) => ("layer_norm_bwd_params_cols_bf16", d.c),
                        (false, false) => ("layer_norm_bwd_params_cols_f32", d.c),
                    };
                    let cfg = LaunchConfig { grid_dim: (gx as u32, chunks as u32, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 8 * BLOCK };
                    gpu.launch(OP_BWD, "layer_norm", kernel, cfg, &p)?;
                    let cfg = LaunchConfig { grid_dim: (d.c.div_ceil(32) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 8 * BLOCK };
                    gpu.launch(OP_BWD, "layer_norm", "layer_norm_reduce_f32", cfg, &p)?;
                }
            }
            Ok(())
        }
    }
}

/// Pointers in order: x, y, gamma, beta, mean, rstd, dy, dx, part, dgamma, dbeta.
fn params(d: LnDims, eps: f32, p: [Option<u64>; 11]) -> SnugLayerNormParams {
    let c = |i: usize| p[i].unwrap_or(0) as *const c_void;
    let m = |i: usize| p[i].unwrap_or(0) as *mut c_void;
    let f = |i: usize| p[i].unwrap_or(0) as *mut f32;
    SnugLayerNormParams {
        x: c(0),
        y: m(1),
        gamma: f(2),
        beta: f(3),
        mean: f(4),
        rstd: f(5),
        dy: c(6),
        dx: m(7),
        part: f(8),
        dgamma: f(9),
        dbeta: f(10),
        o: d.o as u64,
        i: d.i as u64,
        c: d.c as u32,
        tpr: if d.i == 1 { lanes_per_row(d.c) } else { 1 },
        eps,
        chunks: 0,
    }
}

/// The forward or `bwd_dx` pass. Last dimension (`I = 1`): the row kernels, `tpr` lanes per row
/// (256-thread blocks). Channels (`I > 1`): the column kernels, a block per 32 consecutive rows
/// with [`slices`]`(C)` warps splitting C, `2·32·S` floats of dynamic shared memory.
///
/// # Safety
/// `p`'s pointers are device memory on `gpu` as `layer_norm_{which}[_cols]_{T}` documents.
unsafe fn launch_rows<T: Real>(gpu: &crate::Gpu, op: &'static str, which: &str, p: &SnugLayerNormParams) -> Result<()> {
    let rows = p.o * p.i;
    let cols = p.i > 1;
    let (blocks, block, smem) = if cols {
        let threads = 32 * slices(p.c as usize);
        (rows.div_ceil(32), threads, 8 * threads)
    } else {
        ((rows * p.tpr as u64).div_ceil(BLOCK as u64), BLOCK, 0)
    };
    if blocks > i32::MAX as u64 {
        return Err(Error::Shape { op, arg: "x", expected: "fewer than 2^31 blocks of rows".into(), got: vec![p.o as usize, p.c as usize, p.i as usize] });
    }
    let kernel: &'static str = match (which, cols, T::DTYPE) {
        ("fwd", false, DType::BF16) => "layer_norm_fwd_bf16",
        ("fwd", false, _) => "layer_norm_fwd_f32",
        ("fwd", true, DType::BF16) => "layer_norm_fwd_cols_bf16",
        ("fwd", true, _) => "layer_norm_fwd_cols_f32",
        (_, false, DType::BF16) => "layer_norm_bwd_dx_bf16",
        (_, false, _) => "layer_norm_bwd_dx_f32",
        (_, true, DType::BF16) => "layer_norm_bwd_dx_cols_bf16",
        (_, true, _) => "layer_norm_bwd_dx_cols_f32",
    };
    let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: smem };
    // SAFETY: forwarded from the caller.
    unsafe { gpu.launch(op, "layer_norm", kernel, cfg, p) }
}
