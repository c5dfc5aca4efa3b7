//! `nn.Linear`: `y = x·Wᵀ + b` on `[.., in]`, forward and backward (products in cuBLAS through
//! [`super::gemm`], the bias in `kernels/linear.cu`).
//!
//! Shapes: `x [.., in]` (leading dimensions flattened into rows), `w [out, in]`, `b [out]`,
//! `y [.., out]`. Backward: `dx = dy·W`, `dW = dyᵀ·x` (one GEMM over all rows, or — many rows,
//! few output tiles, f32 `dW` — a batched GEMM over row chunks summed in chunk order plus the
//! remaining rows, [`dw_split`]: deterministic either way), `db = Σ_rows dy` (per-4,096-row
//! partials summed in order); workspace [`backward_workspace_bytes`]. Storage `T` (x, w, b, y, dy, dx): f32 or bf16 on the GPU with f32
//! compute; the parameter gradients `P` (dW, db): `T` or f32 (an f32 master gradient from bf16
//! activations). Saved for backward: `x` (the caller's) — nothing else. The CPU twin computes in
//! f64 for any [`Real`].

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::gemm::{gemm, gemm_sum_batches, sum_batches_workspace_bytes, GemmSpec};
use super::{check_shape, common_loc, host_f64, require_f32, require_f32_or_bf16, store_f64, require_workspace, Real};
use crate::ffi::{self, SnugLinearParams};
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Error, Result};

const OP: &str = "linear";
const OP_BWD: &str = "linear_backward";
const CHUNK_ROWS: usize = ffi::SNUG_LINEAR_CHUNK_ROWS as usize;

/// `(rows, in)` of `x` and `out` of `w`, validated.
fn dims(op: &'static str, x: &[usize], w: &[usize]) -> Result<(usize, usize, usize)> {
    let (rows, inp) = match x {
        [lead @ .., i] if *i >= 1 && lead.iter().product::<usize>() >= 1 => (lead.iter().product::<usize>(), *i),
        _ => return Err(Error::Shape { op, arg: "x", expected: "[.., in] with no zero dimension".into(), got: x.to_vec() }),
    };
    match *w {
        [o, i] if i == inp && o >= 1 => Ok((rows, inp, o)),
        _ => Err(Error::Shape { op, arg: "w", expected: format!("[out, {inp}]"), got: w.to_vec() }),
    }
}

fn y_shape(x: &[usize], out: usize) -> Vec<usize> {
    let mut s = x.to_vec();
    if let Some(last) = s.last_mut() {
        *last = out;
    }
    s
}

/// How the GPU backward splits `dW = dyᵀ·x` over rows: `(chunks, rows_per_chunk)`; `(1, rows)`
/// means one GEMM. A weight with few output tiles (e.g. 256 × 64) and many rows would otherwise
/// be a handful of CTAs walking K = rows serially (measured: 5.2 ms for 145,920 × 64 → 256 on an
/// H100, 0.15× PyTorch). Split, the chunks' products run as one batched GEMM into the workspace
/// and are summed in chunk order (`gemm_sum_batches`), then the remaining rows are added by one
/// more GEMM (β = 1): deterministic, and a pure function of the shapes (no device query), so
/// the footprint is too. Only with an f32 `dW` (the f32 master gradient); a bf16 `dW` stays one
/// GEMM.
pub fn dw_split(rows: usize, inp: usize, out: usize) -> (usize, usize) {
    // ~2 waves of 132 SMs' worth of 128 × 128 output tiles; chunks of ≥ 2,048 rows; the partial
    // products capped at 64 MiB.
    const TARGET_CTAS: usize = 264;
    const MIN_ROWS: usize = 2048;
    const MAX_PARTIAL_BYTES: usize = 64 << 20;
    let tiles = out.div_ceil(128) * inp.div_ceil(128);
    let chunks = (TARGET_CTAS / tiles.max(1)).min(rows / MIN_ROWS).min(MAX_PARTIAL_BYTES / (4 * out * inp).max(1));
    if chunks < 4 {
        return (1, rows);
    }
    // Rows per chunk: a multiple of 16 (aligned chunk starts), the remainder < one chunk.
    let per = rows.div_ceil(chunks).next_multiple_of(16);
    (rows / per, per)
}

/// f32 workspace of the GPU backward, in bytes: the bias gradient's per-4,096-row partials
/// (`⌈rows/4096⌉·out·4`, with `db`) followed by the split `dW`'s per-chunk products
/// (`chunks·out·in·4` when [`dw_split`] splits and `dW` is f32). The CPU twin needs none.
pub fn backward_workspace_bytes(rows: usize, inp: usize, out: usize, with_db: bool, dw_f32: bool) -> usize {
    let bias = if with_db { 4 * rows.div_ceil(CHUNK_ROWS) * out } else { 0 };
    let (chunks, _) = dw_split(rows, inp, out);
    let dw = if dw_f32 && chunks > 1 { sum_batches_workspace_bytes(chunks, out, inp) } else { 0 };
    bias + dw
}

/// The forward (`y` written).
pub fn linear<T: Real>(x: View<'_, T>, w: View<'_, T>, b: Option<View<'_, T>>, y: ViewMut<'_, T>, cublas_workspace: Option<ViewMut<'_, u8>>) -> Result<()> {
    let (rows, inp, out) = dims(OP, x.shape(), w.shape())?;
    check_shape(OP, "y", y.shape(), &y_shape(x.shape(), out), "x's shape with the last dimension out")?;
    let mut locs = vec![("x", x.loc()), ("w", w.loc()), ("y", y.loc())];
    if let Some(b) = &b {
        check_shape(OP, "b", b.shape(), &[out], "[out]")?;
        locs.push(("b", b.loc()));
    }
    match common_loc(OP, &locs)? {
        Loc::Host => {
            let (xv, wv) = (host_f64(OP, "x", &x)?, host_f64(OP, "w", &w)?);
            let bv = b.as_ref().map(|b| host_f64(OP, "b", b)).transpose()?;
            let mut yv = vec![0.0; rows * out];
            for r in 0..rows {
                for o in 0..out {
                    yv[r * out + o] = (0..inp).map(|i| xv[r * inp + i] * wv[o * inp + i]).sum::<f64>() + bv.as_ref().map_or(0.0, |b| b[o]);
                }
            }
            store_f64(OP, "y", y, &yv)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP)?;
            let yp = y.device_ptr();
            gemm(x.reshape(&[rows, inp])?, w, y.reshape(&[rows, out])?, GemmSpec::new(false, true), cublas_workspace)?;
            if let Some(b) = &b {
                let p = SnugLinearParams { y: yp.unwrap_or(0) as *mut c_void, bias: b.device_ptr().unwrap_or(0) as *const c_void, dy: std::ptr::null(), part: std::ptr::null_mut(), db: std::ptr::null_mut(), rows: rows as u64, out: out as u32, chunks: 0, db_is_t: 0, reserved: 0 };
                let blocks = ((rows * out) as u64).div_ceil(256).clamp(1, 1 << 20) as u32;
                let kernel = if T::DTYPE == DType::BF16 { "linear_bias_add_bf16" } else { "linear_bias_add_f32" };
                let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                // SAFETY: y is the [rows, out] device view written by the GEMM above (same stream),
                // b an [out] device view of T; grid-stride over rows·out.
                unsafe { gpu.launch(OP, "linear", kernel, cfg, &p)? };
            }
            Ok(())
        }
    }
}

/// The backward: `dx` (optional), `dw`, `db` (optional), written. On the GPU `workspace` must
/// hold [`backward_workspace_bytes`] when that is not 0 (with `db`, or a split f32 `dW`).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<T: Real, P: Real>(
    x: View<'_, T>,
    w: View<'_, T>,
    dy: View<'_, T>,
    dx: Option<ViewMut<'_, T>>,
    dw: ViewMut<'_, P>,
    db: Option<ViewMut<'_, P>>,
    workspace: Option<ViewMut<'_, f32>>,
    cublas_workspace: Option<ViewMut<'_, u8>>,
) -> Result<()> {
    let (rows, inp, out) = dims(OP_BWD, x.shape(), w.shape())?;
    check_shape(OP_BWD, "dy", dy.shape(), &y_shape(x.shape(), out), "x's shape with the last dimension out")?;
    check_shape(OP_BWD, "dw", dw.shape(), w.shape(), "the shape of w")?;
    let mut locs = vec![("x", x.loc()), ("w", w.loc()), ("dy", dy.loc()), ("dw", dw.loc())];
    if let Some(v) = &dx {
        check_shape(OP_BWD, "dx", v.shape(), x.shape(), "the shape of x")?;
        locs.push(("dx", v.loc()));
    }
    if let Some(v) = &db {
        check_shape(OP_BWD, "db", v.shape(), &[out], "[out]")?;
        locs.push(("db", v.loc()));
    }
    locs.extend(workspace.as_ref().map(|v| ("workspace", v.loc())));
    match common_loc(OP_BWD, &locs)? {
        Loc::Host => {
            let (xv, wv, gv) = (host_f64(OP_BWD, "x", &x)?, host_f64(OP_BWD, "w", &w)?, host_f64(OP_BWD, "dy", &dy)?);
            if let Some(v) = dx {
                let d: Vec<f64> = (0..rows * inp).map(|k| (0..out).map(|o| gv[(k / inp) * out + o] * wv[o * inp + k % inp]).sum()).collect();
                store_f64(OP_BWD, "dx", v, &d)?;
            }
            let d: Vec<f64> = (0..out * inp).map(|k| (0..rows).map(|r| gv[r * out + k / inp] * xv[r * inp + k % inp]).sum()).collect();
            store_f64(OP_BWD, "dw", dw, &d)?;
            if let Some(v) = db {
                let d: Vec<f64> = (0..out).map(|o| (0..rows).map(|r| gv[r * out + o]).sum()).collect();
                store_f64(OP_BWD, "db", v, &d)?;
            }
            Ok(())
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_BWD)?;
            if P::DTYPE != T::DTYPE {
                require_f32::<P>(OP_BWD)?;
            }
            // The cuBLAS workspace is lent to each GEMM in turn.
            let mut cw = cublas_workspace;
            if let Some(v) = dx {
                gemm(dy.clone().reshape(&[rows, out])?, w.clone(), v.reshape(&[rows, inp])?, GemmSpec::new(false, false), cw.as_mut().map(|c| c.reborrow()))?;
            }
            let x2 = x.clone().reshape(&[rows, inp])?;
            let dy2 = dy.reshape(&[rows, out])?;
            let dyp = dy2.device_ptr();
            let dw_f32 = P::DTYPE == DType::F32;
            let want = backward_workspace_bytes(rows, inp, out, db.is_some(), dw_f32) / 4;
            let ws = require_workspace(OP_BWD, workspace, want, "backward_workspace_bytes")?;
            // Carve: the bias partials first, the split dW's products after them.
            let bias_len = if db.is_some() { rows.div_ceil(CHUNK_ROWS) * out } else { 0 };
            let (bias_ws, dw_ws) = match ws {
                Some(ws) => {
                    let (a, b) = ws.split_at(bias_len)?;
                    (Some(a), Some(b))
                }
                None => (None, None),
            };
            let (chunks, per) = dw_split(rows, inp, out);
            let mut dw = dw;
            if dw_f32 && chunks > 1 {
                let main = chunks * per;
                let spec = GemmSpec::new(true, false);
                gemm_sum_batches(
                    dy2.clone().narrow(0, main)?.reshape(&[chunks, per, out])?,
                    x2.clone().narrow(0, main)?.reshape(&[chunks, per, inp])?,
                    dw.reborrow(),
                    spec,
                    dw_ws,
                    cw.as_mut().map(|c| c.reborrow()),
                )?;
                if main < rows {
                    let rest = rows - main;
                    gemm(dy2.narrow(main, rest)?, x2.narrow(main, rest)?, dw, GemmSpec { beta: 1.0, ..spec }, cw.as_mut().map(|c| c.reborrow()))?;
                }
            } else {
                gemm(dy2, x2, dw, GemmSpec::new(true, false), cw.as_mut().map(|c| c.reborrow()))?;
            }
            if let Some(v) = db {
                let chunks = rows.div_ceil(CHUNK_ROWS);
                let ws = bias_ws.ok_or(Error::Value { op: OP_BWD, arg: "workspace", expected: "the bias partials".into(), got: "None".into() })?;
                if chunks > 65_535 || out > u32::MAX as usize {
                    return Err(Error::Shape { op: OP_BWD, arg: "x", expected: "fewer than 65,535 × 4,096 rows".into(), got: x.shape().to_vec() });
                }
                let p = SnugLinearParams {
                    y: std::ptr::null_mut(),
                    bias: std::ptr::null(),
                    dy: dyp.unwrap_or(0) as *const c_void,
                    part: ws.device_ptr().unwrap_or(0) as *mut f32,
                    db: v.device_ptr().unwrap_or(0) as *mut c_void,
                    rows: rows as u64,
                    out: out as u32,
                    chunks: chunks as u32,
                    db_is_t: (P::DTYPE == T::DTYPE && T::DTYPE != DType::F32) as u32,
                    reserved: 0,
                };
                let bf = T::DTYPE == DType::BF16;
                let cfg = LaunchConfig { grid_dim: (out.div_ceil(256) as u32, chunks as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                // SAFETY: dy is a [rows, out] device view of T; the workspace (checked) holds
                // chunks·out f32 partials, each written once by the grad kernel and read by the
                // reduce kernel after it on the same stream; db is an [out] view of P (f32, or T
                // when db_is_t).
                unsafe {
                    gpu.launch(OP_BWD, "linear", if bf { "linear_bias_grad_bf16" } else { "linear_bias_grad_f32" }, cfg, &p)?;
                    let cfg = LaunchConfig { grid_dim: (out.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                    gpu.launch(OP_BWD, "linear", if bf { "linear_bias_reduce_bf16" } else { "linear_bias_reduce_f32" }, cfg, &p)?;
                }
            }
            Ok(())
        }
    }
}
