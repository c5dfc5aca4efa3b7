//! Depthwise causal conv1d with optional SiLU (`kernels/causal_conv1d.cu`), the conv of the Mamba
//! block, in both directions.
//!
//! `pre[s, d, l] = bias[d] + Σ_{j<K} w[d, j]·x[s, d, l − (K−1) + j]` (x = 0 outside [0, L)),
//! `out = silu(pre)` or `pre`. With `reverse` the taps look ahead instead,
//! `x[s, d, l + (K−1) − j]`: the same filter run over the time-flipped sequence and read back
//! flipped — the reverse branch of a bidirectional block, without flipped copies.
//! Shapes: `x, out: [S, D, L]`, `w: [D, K]` with K ≤ 4, `bias: [D]`.
//!
//! Backward: `dx`, `dw`, `dbias` from `dout`, recomputing the pre-activation from `x` (saved: x
//! only). dw and dbias are reduced per (s, d) row in a fixed order into a workspace of
//! [`backward_workspace_bytes`], then summed over sequences in order: deterministic.

#![allow(clippy::needless_range_loop)] // index-heavy reference math reads clearer with indices

use cudarc::driver::LaunchConfig;

use super::{check_shape, common_loc, host_f64, require_f32, store_f64, need_workspace, Real};
use crate::ffi::{self, SnugCausalConv1dParams, SnugConvReduceParams};
use crate::memory::{Loc, View, ViewMut};
use crate::{Error, Result};

const OP: &str = "causal_conv1d";
const OP_BWD: &str = "causal_conv1d_backward";
/// Largest filter width.
pub const MAX_K: usize = ffi::SNUG_CONV_MAX_K as usize;

/// Options of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvOptions {
    /// Apply SiLU to the output.
    pub silu: bool,
    /// Anti-causal taps (the reverse direction).
    pub reverse: bool,
}

/// Workspace of the forward: none.
pub fn workspace_bytes(_s: usize, _d: usize, _l: usize, _k: usize) -> usize {
    0
}

/// Workspace of the GPU backward: `S·D·(K + 1)` f32 partials.
pub fn backward_workspace_bytes(s: usize, d: usize, k: usize) -> usize {
    4 * s * d * (k + 1)
}

fn dims(op: &'static str, x: &[usize], w: &[usize]) -> Result<(usize, usize, usize, usize)> {
    let (s, d, l) = match *x {
        [s, d, l] if s >= 1 && d >= 1 && l >= 1 => (s, d, l),
        _ => return Err(Error::Shape { op, arg: "x", expected: "[S, D, L] with S, D, L >= 1".into(), got: x.to_vec() }),
    };
    match *w {
        [d2, k] if d2 == d && (1..=MAX_K).contains(&k) => Ok((s, d, l, k)),
        _ => Err(Error::Shape { op, arg: "w", expected: format!("[{d}, K] with 1 <= K <= {MAX_K}"), got: w.to_vec() }),
    }
}

fn check(op: &'static str, arg: &'static str, got: &[usize], want: &[usize]) -> Result<()> {
    check_shape(op, arg, got, want, "from x: [S, D, L] and w: [D, K]")
}

/// Pre-activation of the f64 twin, `[S, D, L]`.
fn pre(x: &[f64], w: &[f64], bias: Option<&[f64]>, (s, d, l, k): (usize, usize, usize, usize), reverse: bool) -> Vec<f64> {
    let mut out = vec![0.0; s * d * l];
    for row in 0..s * d {
        let c = row % d;
        for t in 0..l {
            let mut acc = bias.map_or(0.0, |b| b[c]);
            for j in 0..k {
                let p = if reverse { t as isize + (k - 1) as isize - j as isize } else { t as isize - (k - 1) as isize + j as isize };
                if p >= 0 && (p as usize) < l {
                    acc += w[c * k + j] * x[row * l + p as usize];
                }
            }
            out[row * l + t] = acc;
        }
    }
    out
}

fn silu(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

fn dsilu(v: f64) -> f64 {
    let sg = 1.0 / (1.0 + (-v).exp());
    sg * (1.0 + v * (1.0 - sg))
}

fn u32_dims(op: &'static str, x: &[usize], d: usize, l: usize) -> Result<()> {
    if d > u32::MAX as usize || l > u32::MAX as usize {
        return Err(Error::Shape { op, arg: "x", expected: "D, L < 2^32".into(), got: x.to_vec() });
    }
    Ok(())
}

/// The forward conv (see the module docs).
pub fn causal_conv1d<T: Real>(x: View<'_, T>, w: View<'_, T>, bias: Option<View<'_, T>>, out: ViewMut<'_, T>, opt: ConvOptions) -> Result<()> {
    let dm @ (s, d, l, k) = dims(OP, x.shape(), w.shape())?;
    check(OP, "out", out.shape(), &[s, d, l])?;
    let mut locs = vec![("x", x.loc()), ("w", w.loc()), ("out", out.loc())];
    if let Some(b) = &bias {
        check(OP, "bias", b.shape(), &[d])?;
        locs.push(("bias", b.loc()));
    }
    match common_loc(OP, &locs)? {
        Loc::Host => {
            let b = bias.as_ref().map(|b| host_f64(OP, "bias", b)).transpose()?;
            let p = pre(&host_f64(OP, "x", &x)?, &host_f64(OP, "w", &w)?, b.as_deref(), dm, opt.reverse);
            let y: Vec<f64> = if opt.silu { p.iter().map(|&v| silu(v)).collect() } else { p };
            store_f64(OP, "out", out, &y)
        }
        Loc::Cuda(gpu) => {
            require_f32::<T>(OP)?;
            u32_dims(OP, x.shape(), d, l)?;
            let p = SnugCausalConv1dParams {
                out: out.device_ptr().unwrap_or(0) as *mut f32,
                part: std::ptr::null_mut(),
                x: x.device_ptr().unwrap_or(0) as *const f32,
                w: w.device_ptr().unwrap_or(0) as *const f32,
                bias: bias.as_ref().and_then(|b| b.device_ptr()).unwrap_or(0) as *const f32,
                dout: std::ptr::null(),
                s: s as u64,
                d: d as u32,
                l: l as u32,
                k: k as u32,
                silu: opt.silu as u32,
                reverse: opt.reverse as u32,
                reserved: 0,
            };
            let blocks = ((s * d * l) as u64).div_ceil(256).min(1 << 20) as u32;
            let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: x, out [S, D, L], w [D, K], bias [D] are checked device views on this handle;
            // the kernel reads rows of x within [0, L) and writes each output once.
            unsafe { gpu.launch(OP, "causal_conv1d", "causal_conv1d_fwd_f32", cfg, &p) }
        }
    }
}

/// Gradients w.r.t. x, w and bias (written, not accumulated). `workspace` (GPU only) holds at
/// least [`backward_workspace_bytes`] / 4 floats; `dbias` is required exactly when `bias` is given.
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d_backward<T: Real>(
    x: View<'_, T>,
    w: View<'_, T>,
    bias: Option<View<'_, T>>,
    dout: View<'_, T>,
    dx: ViewMut<'_, T>,
    dw: ViewMut<'_, T>,
    dbias: Option<ViewMut<'_, T>>,
    workspace: Option<ViewMut<'_, f32>>,
    opt: ConvOptions,
) -> Result<()> {
    let dm @ (s, d, l, k) = dims(OP_BWD, x.shape(), w.shape())?;
    check(OP_BWD, "dout", dout.shape(), &[s, d, l])?;
    check(OP_BWD, "dx", dx.shape(), &[s, d, l])?;
    check(OP_BWD, "dw", dw.shape(), &[d, k])?;
    let mut locs = vec![("x", x.loc()), ("w", w.loc()), ("dout", dout.loc()), ("dx", dx.loc()), ("dw", dw.loc())];
    match (&bias, &dbias) {
        (Some(b), Some(g)) => {
            check(OP_BWD, "bias", b.shape(), &[d])?;
            check(OP_BWD, "dbias", g.shape(), &[d])?;
            locs.extend([("bias", b.loc()), ("dbias", g.loc())]);
        }
        (None, None) => {}
        (b, _) => return Err(Error::Value { op: OP_BWD, arg: "dbias", expected: format!("given exactly when bias is ({})", b.is_some()), got: format!("{}", b.is_none()) }),
    }
    if let Some(ws) = &workspace {
        locs.push(("workspace", ws.loc()));
    }
    match common_loc(OP_BWD, &locs)? {
        Loc::Host => {
            let xv = host_f64(OP_BWD, "x", &x)?;
            let wv = host_f64(OP_BWD, "w", &w)?;
            let b = bias.as_ref().map(|b| host_f64(OP_BWD, "bias", b)).transpose()?;
            let p = pre(&xv, &wv, b.as_deref(), dm, opt.reverse);
            let go = host_f64(OP_BWD, "dout", &dout)?;
            let g: Vec<f64> = if opt.silu { go.iter().zip(&p).map(|(g, &v)| g * dsilu(v)).collect() } else { go };
            let (mut gx, mut gw, mut gb) = (vec![0.0; s * d * l], vec![0.0; d * k], vec![0.0; d]);
            for row in 0..s * d {
                let c = row % d;
                for t in 0..l {
                    let gt = g[row * l + t];
                    gb[c] += gt;
                    for j in 0..k {
                        let p = if opt.reverse { t as isize + (k - 1) as isize - j as isize } else { t as isize - (k - 1) as isize + j as isize };
                        if p >= 0 && (p as usize) < l {
                            gw[c * k + j] += gt * xv[row * l + p as usize];
                            gx[row * l + p as usize] += gt * wv[c * k + j];
                        }
                    }
                }
            }
            store_f64(OP_BWD, "dx", dx, &gx)?;
            store_f64(OP_BWD, "dw", dw, &gw)?;
            if let Some(v) = dbias {
                store_f64(OP_BWD, "dbias", v, &gb)?;
            }
            Ok(())
        }
        Loc::Cuda(gpu) => {
            require_f32::<T>(OP_BWD)?;
            u32_dims(OP_BWD, x.shape(), d, l)?;
            let ws = need_workspace(OP_BWD, workspace, backward_workspace_bytes(s, d, k) / 4, "backward_workspace_bytes")?;
            if (s * d) as u64 > i32::MAX as u64 {
                return Err(Error::Shape { op: OP_BWD, arg: "x", expected: "S·D < 2^31 rows".into(), got: x.shape().to_vec() });
            }
            let part = ws.device_ptr().unwrap_or(0) as *mut f32;
            let p = SnugCausalConv1dParams {
                out: dx.device_ptr().unwrap_or(0) as *mut f32,
                part,
                x: x.device_ptr().unwrap_or(0) as *const f32,
                w: w.device_ptr().unwrap_or(0) as *const f32,
                bias: bias.as_ref().and_then(|b| b.device_ptr()).unwrap_or(0) as *const f32,
                dout: dout.device_ptr().unwrap_or(0) as *const f32,
                s: s as u64,
                d: d as u32,
                l: l as u32,
                k: k as u32,
                silu: opt.silu as u32,
                reverse: opt.reverse as u32,
                reserved: 0,
            };
            let threads = (l.next_power_of_two()).clamp(32, 256) as u32;
            let cfg = LaunchConfig { grid_dim: ((s * d) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: checked device views; one block per row writes dx of its row and K + 1
            // partials at row·(K + 1) of the workspace (S·D·(K + 1) floats, checked above).
            unsafe { gpu.launch(OP_BWD, "causal_conv1d", "causal_conv1d_bwd_f32", cfg, &p)? };
            let q = SnugConvReduceParams {
                dw: dw.device_ptr().unwrap_or(0) as *mut f32,
                dbias: dbias.as_ref().and_then(|b| b.device_ptr()).unwrap_or(0) as *mut f32,
                part,
                s: s as u64,
                d: d as u32,
                k: k as u32,
            };
            let items = (d * (k + 1)) as u64;
            let cfg = LaunchConfig { grid_dim: (items.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: dw [D, K] and dbias [D] (or null) are checked device views; the partials were
            // written by the launch above on the same stream.
            unsafe { gpu.launch(OP_BWD, "causal_conv1d", "causal_conv1d_reduce_f32", cfg, &q) }
        }
    }
}
