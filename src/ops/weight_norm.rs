//! `torch.nn.utils.weight_norm` with `dim = 0`: `w = g · v / ‖v‖` per output channel, forward and
//! backward (`kernels/weight_norm.cu`).
//!
//! Shapes: `v [C_out, ..rest]` (rank ≥ 2, no zero dimension; rows = `C_out`, row length `n` =
//! the product of the rest), `g [C_out]`, `w` and `dv` like `v`, `dg [C_out]`, `norms [C_out]`
//! (f32: the row norms `‖v_o‖`, written by the forward and saved for the backward). Backward:
//! `dg_o = Σ_i dw_oi·v_oi / ‖v_o‖`, `dv_oi = (g_o/‖v_o‖)·(dw_oi − (dg_o/‖v_o‖)·v_oi)`.
//!
//! Storage `T` (v, g, w, dw, dv, dg): f32 or bf16 on the GPU with f32 math (one block per row,
//! a fixed per-thread order and shared-memory tree: deterministic, no atomics); the CPU twin
//! computes in f64 for any [`Real`] (norms stored as f32 from f64). No workspace.
//!
//! A zero row (`‖v_o‖ = 0`) is not an error: as in PyTorch, `g_o / 0` makes that row of `w`
//! non-finite (NaN where `v` is 0), and the backward's `dg_o`, `dv_o` likewise.

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::{check_shape, common_loc, host_f64, require_f32_or_bf16, store_f64, Real};
use crate::ffi::SnugWeightNormParams;
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Error, Result};

const OP: &str = "weight_norm";
const OP_BWD: &str = "weight_norm_backward";
/// Most blocks of one launch (grid-stride over the rows beyond).
const MAX_BLOCKS: usize = 1 << 16;

/// `(rows, n)` of `v`, validated.
fn dims(op: &'static str, v: &[usize]) -> Result<(usize, usize)> {
    match v {
        [rows, rest @ ..] if !rest.is_empty() && *rows >= 1 && rest.iter().all(|&d| d >= 1) => Ok((*rows, rest.iter().product())),
        _ => Err(Error::Shape { op, arg: "v", expected: "[C_out, ..] of rank ≥ 2 with no zero dimension".into(), got: v.to_vec() }),
    }
}

fn launch_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.min(MAX_BLOCKS) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn ptr(p: Option<u64>) -> *mut c_void {
    p.unwrap_or(0) as *mut c_void
}

/// The forward: `w` and the row norms `norms` (f32, for the backward) written.
pub fn weight_norm<T: Real>(v: View<'_, T>, g: View<'_, T>, w: ViewMut<'_, T>, norms: ViewMut<'_, f32>) -> Result<()> {
    let (rows, n) = dims(OP, v.shape())?;
    check_shape(OP, "g", g.shape(), &[rows], "[C_out]")?;
    check_shape(OP, "w", w.shape(), v.shape(), "the shape of v")?;
    check_shape(OP, "norms", norms.shape(), &[rows], "[C_out]")?;
    match common_loc(OP, &[("v", v.loc()), ("g", g.loc()), ("w", w.loc()), ("norms", norms.loc())])? {
        Loc::Host => {
            let (vv, gv) = (host_f64(OP, "v", &v)?, host_f64(OP, "g", &g)?);
            let nrm: Vec<f64> = (0..rows).map(|o| vv[o * n..(o + 1) * n].iter().map(|x| x * x).sum::<f64>().sqrt()).collect();
            let wv: Vec<f64> = (0..rows * n).map(|k| vv[k] * (gv[k / n] / nrm[k / n])).collect();
            store_f64(OP, "w", w, &wv)?;
            store_f64(OP, "norms", norms, &nrm)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP)?;
            let p = SnugWeightNormParams {
                v: ptr(v.device_ptr()),
                g: ptr(g.device_ptr()),
                w: ptr(w.device_ptr()),
                norms: ptr(norms.device_ptr()) as *mut f32,
                dw: std::ptr::null(),
                dv: std::ptr::null_mut(),
                dg: std::ptr::null_mut(),
                rows: rows as u64,
                n: n as u64,
            };
            let kernel = if T::DTYPE == DType::BF16 { "weight_norm_fwd_bf16" } else { "weight_norm_fwd_f32" };
            // SAFETY: v and w are [rows, n] device views of T, g an [rows] view of T, norms an
            // [rows] f32 view, all on this handle (checked); one block per row (grid-stride),
            // every element of w and norms written once.
            unsafe { gpu.launch(OP, "weight_norm", kernel, launch_cfg(rows), &p) }
        }
    }
}

/// The backward: `dv` and `dg` written from `v`, `g`, the forward's `norms` and `dw`.
pub fn weight_norm_backward<T: Real>(v: View<'_, T>, g: View<'_, T>, norms: View<'_, f32>, dw: View<'_, T>, dv: ViewMut<'_, T>, dg: ViewMut<'_, T>) -> Result<()> {
    let (rows, n) = dims(OP_BWD, v.shape())?;
    check_shape(OP_BWD, "g", g.shape(), &[rows], "[C_out]")?;
    check_shape(OP_BWD, "norms", norms.shape(), &[rows], "[C_out]")?;
    check_shape(OP_BWD, "dw", dw.shape(), v.shape(), "the shape of v")?;
    check_shape(OP_BWD, "dv", dv.shape(), v.shape(), "the shape of v")?;
    check_shape(OP_BWD, "dg", dg.shape(), &[rows], "[C_out]")?;
    let locs = [("v", v.loc()), ("g", g.loc()), ("norms", norms.loc()), ("dw", dw.loc()), ("dv", dv.loc()), ("dg", dg.loc())];
    match common_loc(OP_BWD, &locs)? {
        Loc::Host => {
            let (vv, gv, dwv) = (host_f64(OP_BWD, "v", &v)?, host_f64(OP_BWD, "g", &g)?, host_f64(OP_BWD, "dw", &dw)?);
            let nrm = host_f64(OP_BWD, "norms", &norms)?;
            let dgv: Vec<f64> = (0..rows).map(|o| (o * n..(o + 1) * n).map(|k| dwv[k] * vv[k]).sum::<f64>() / nrm[o]).collect();
            let dvv: Vec<f64> = (0..rows * n).map(|k| (gv[k / n] / nrm[k / n]) * (dwv[k] - (dgv[k / n] / nrm[k / n]) * vv[k])).collect();
            store_f64(OP_BWD, "dv", dv, &dvv)?;
            store_f64(OP_BWD, "dg", dg, &dgv)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_BWD)?;
            let p = SnugWeightNormParams {
                v: ptr(v.device_ptr()),
                g: ptr(g.device_ptr()),
                w: std::ptr::null_mut(),
                norms: ptr(norms.device_ptr()) as *mut f32,
                dw: ptr(dw.device_ptr()),
                dv: ptr(dv.device_ptr()),
                dg: ptr(dg.device_ptr()),
                rows: rows as u64,
                n: n as u64,
            };
            let kernel = if T::DTYPE == DType::BF16 { "weight_norm_bwd_bf16" } else { "weight_norm_bwd_f32" };
            // SAFETY: v, dw and dv are [rows, n] device views of T, g and dg [rows] views of T,
            // norms an [rows] f32 view (read only), all on this handle (checked); one block per
            // row (grid-stride), every element of dv and dg written once.
            unsafe { gpu.launch(OP_BWD, "weight_norm", kernel, launch_cfg(rows), &p) }
        }
    }
}
