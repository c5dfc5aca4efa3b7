//! Softmax cross-entropy over a vocabulary with its gradient in the same pass
//! (`kernels/cross_entropy.cu`), and the fused, chunked LM head [`linear_cross_entropy`] that never
//! holds the logits of all rows (seed 003: 16,384 rows × 50,257 tokens would be 3.3 GB of f32
//! logits and as much again for their gradient).
//!
//! Per row `r` of `logits [rows, V]` with target `t = targets[r]` (i32), label smoothing `ε`:
//! `lse = log Σ_j exp(z_j)`, `loss_r = (1 − ε)(lse − z_t) + ε(lse − mean_j z_j)` — exactly
//! PyTorch's `F.cross_entropy(logits, targets, ignore_index, label_smoothing)` per row. Rows with
//! `t == ignore_index` (default −100) contribute 0 and get a zero gradient; [`Reduction::Mean`]
//! divides by the number of rows not ignored (NaN when all are, as PyTorch). The gradient of
//! `grad_scale · loss` (the upstream gradient, usually 1; the mean's divisor included) is
//! `grad_scale/count · (softmax − ε/V − (1 − ε)·onehot_t)`.
//!
//! [`cross_entropy_in_place`] overwrites the logits with that gradient: the probabilities are never
//! stored (online softmax: one read for the (max, Σexp) pair, one read + write for the gradient),
//! so the loss costs no memory beyond the logits it consumes (and, for a reduced loss, a workspace
//! of `4·(rows + 1)` bytes: the row losses, summed in a fixed order, and the Mean's count — a u32,
//! converted to f32 for the division, so exact up to 2^24 rows). [`cross_entropy`] computes the loss
//! only (evaluation). [`cross_entropy_backward`] scales a gradient written with `grad_scale = 1`
//! by an upstream gradient known only later.
//!
//! [`linear_cross_entropy`]: `logits = h·Wᵀ` (no bias; tied embeddings pass the embedding
//! matrix), the loss, and `dh = g·W`, `dW = gᵀ·h`, computed `chunk_rows` rows at a time through
//! one `[chunk_rows, V]` buffer in the workspace — memory O(chunk·V) instead of O(rows·V), at the
//! cost of nothing: each chunk's logits are produced, consumed and turned into gradients before
//! the next (three GEMMs per chunk through cuBLAS, `dW` accumulated across chunks in order:
//! deterministic). Use an f32 `dW` with bf16 activations (accumulating chunks in bf16 loses
//! bits). [`chunk_rows_for_budget`] turns the bytes a plan can spare into the chunk.
//!
//! Bad targets (outside `[0, V)` and not ignored): a typed error in the CPU twin, which sees them;
//! on the GPU the row's loss and gradient are NaN (no device-side assert or read-back). Storage
//! `T` (logits, h, W, dh): f32 or bf16 on the GPU with f32 math; losses f32 on the GPU. The CPU
//! twin computes in f64 for any [`Real`].

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

pub use super::Reduction;
use super::gemm::{gemm, GemmSpec};
use super::{check_range, check_shape, common_loc, host_f64, need_workspace, require_f32, require_f32_or_bf16, require_workspace, store_f64, Real};
use crate::device::Gpu;
use crate::ffi::{self, SnugCrossEntropyParams};
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Element, Error, Result};

const OP: &str = "cross_entropy";
const OP_IN_PLACE: &str = "cross_entropy_in_place";
const OP_BWD: &str = "cross_entropy_backward";
const OP_LIN: &str = "linear_cross_entropy";
const THREADS: u32 = ffi::SNUG_CE_THREADS;
const MAX_GRID: usize = 65_535;

/// What to compute.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossEntropySpec {
    /// Loss reduction over rows.
    pub reduction: Reduction,
    /// Rows whose target equals this are skipped (PyTorch's default −100).
    pub ignore_index: i32,
    /// Label smoothing ε in `[0, 1]`.
    pub label_smoothing: f32,
    /// The upstream gradient of the (reduced) loss the gradient is written for (1 for a loss
    /// that is the objective).
    pub grad_scale: f32,
}

impl CrossEntropySpec {
    /// PyTorch's defaults: ignore −100, no smoothing, an upstream gradient of 1.
    pub const fn new(reduction: Reduction) -> CrossEntropySpec {
        CrossEntropySpec { reduction, ignore_index: -100, label_smoothing: 0.0, grad_scale: 1.0 }
    }
}

fn check_spec(op: &'static str, spec: &CrossEntropySpec) -> Result<()> {
    check_range(op, "label_smoothing", spec.label_smoothing, (0.0..=1.0).contains(&spec.label_smoothing), "0 <= label_smoothing <= 1")?;
    check_range(op, "grad_scale", spec.grad_scale, true, "a finite upstream gradient")
}

/// `(rows, V)` of `logits`, validated.
fn dims(op: &'static str, arg: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
    match *shape {
        [r, v] if r >= 1 && (1..=i32::MAX as usize).contains(&v) => Ok((r, v)),
        _ => Err(Error::Shape { op, arg, expected: "[rows, V] with rows >= 1 and 1 <= V < 2^31".into(), got: shape.to_vec() }),
    }
}

fn loss_shape(rows: usize, r: Reduction) -> Vec<usize> {
    match r {
        Reduction::None => vec![rows],
        _ => vec![1],
    }
}

/// Workspace of [`cross_entropy`] / [`cross_entropy_in_place`] on the GPU: a reduced loss keeps
/// the row losses and the count of rows not ignored, `4·(rows + 1)` bytes (0 for
/// [`Reduction::None`]; the CPU twin needs none).
pub fn workspace_bytes(rows: usize, reduction: Reduction) -> usize {
    match reduction {
        Reduction::None => 0,
        _ => 4 * (rows + 1),
    }
}

/// Workspace of [`linear_cross_entropy`] on the GPU: one `[min(chunk_rows, rows), V]` logits
/// chunk of `dtype` (rounded up to 4 bytes) plus the row losses and count (as
/// [`workspace_bytes`], also for [`Reduction::None`]: 4 bytes for the count).
pub fn linear_workspace_bytes(rows: usize, vocab: usize, chunk_rows: usize, reduction: Reduction, dtype: DType) -> usize {
    let chunk = chunk_rows.clamp(1, rows.max(1));
    (chunk * vocab * dtype.size()).div_ceil(4) * 4 + workspace_bytes(rows, reduction).max(4)
}

/// The largest `chunk_rows` (at most `rows`, at least 1) whose [`linear_workspace_bytes`] fit in
/// `budget` bytes: how a model's plan turns the memory it can spare into the fused head's chunk.
/// A budget below the one-row minimum still gives 1 (the plan then holds more than `budget`).
pub fn chunk_rows_for_budget(rows: usize, vocab: usize, reduction: Reduction, dtype: DType, budget: usize) -> usize {
    let fixed = linear_workspace_bytes(rows, vocab, 1, reduction, dtype) - (vocab * dtype.size()).div_ceil(4) * 4;
    let per_row = vocab * dtype.size();
    // (chunk·per_row rounded up to 4) + fixed <= budget  ⇔  chunk·per_row <= (budget − fixed) rounded down to 4.
    let room = budget.saturating_sub(fixed) / 4 * 4;
    (room / per_row.max(1)).clamp(1, rows.max(1))
}

/// Per-row losses and (when `grad`) the gradient in f64: the twin. Errors on a target outside
/// `[0, V)` that is not ignored. `count`: the divisor of [`Reduction::Mean`] (of the whole batch).
fn twin_rows(op: &'static str, z: &[f64], targets: &[i32], vocab: usize, count: usize, spec: &CrossEntropySpec, grad: bool) -> Result<(Vec<f64>, Vec<f64>)> {
    let eps = spec.label_smoothing as f64;
    let scale = spec.grad_scale as f64 / if spec.reduction == Reduction::Mean { count as f64 } else { 1.0 };
    let mut losses = Vec::with_capacity(targets.len());
    let mut g = if grad { vec![0.0; z.len()] } else { Vec::new() };
    for (r, &t) in targets.iter().enumerate() {
        if t == spec.ignore_index {
            losses.push(0.0);
            continue;
        }
        if t < 0 || t as usize >= vocab {
            return Err(Error::Value { op, arg: "targets", expected: format!("class indices in 0..{vocab} or ignore_index {}", spec.ignore_index), got: format!("{t} at row {r}") });
        }
        let row = &z[r * vocab..(r + 1) * vocab];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        let mut loss = (1.0 - eps) * (lse - row[t as usize]);
        if eps != 0.0 {
            loss += eps * (lse - row.iter().sum::<f64>() / vocab as f64);
        }
        losses.push(loss);
        if grad {
            for (j, x) in row.iter().enumerate() {
                let hit = if j == t as usize { 1.0 - eps } else { 0.0 };
                g[r * vocab + j] = ((x - lse).exp() - eps / vocab as f64 - hit) * scale;
            }
        }
    }
    Ok((losses, g))
}

fn count_kept(targets: &[i32], ignore: i32) -> usize {
    targets.iter().filter(|&&t| t != ignore).count()
}

fn params(spec: &CrossEntropySpec, rows: usize, vocab: usize) -> SnugCrossEntropyParams {
    SnugCrossEntropyParams {
        logits: std::ptr::null(),
        grad: std::ptr::null_mut(),
        targets: std::ptr::null(),
        row_loss: std::ptr::null_mut(),
        out: std::ptr::null_mut(),
        count: std::ptr::null_mut(),
        upstream: std::ptr::null(),
        rows: rows as u64,
        vocab: vocab as u64,
        ignore_index: spec.ignore_index,
        reduction: match spec.reduction {
            Reduction::None => ffi::SNUG_CE_NONE,
            Reduction::Mean => ffi::SNUG_CE_MEAN,
            Reduction::Sum => ffi::SNUG_CE_SUM,
        },
        smoothing: spec.label_smoothing,
        grad_scale: spec.grad_scale,
    }
}

fn one_block() -> LaunchConfig {
    LaunchConfig { grid_dim: (1, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Launches the row kernel on `p` (logits, grad, targets, row_loss, count set by the caller).
///
/// # Safety
/// `p.logits` (and `p.grad` when not null, equal to it or disjoint) must be `[rows, vocab]` device
/// arrays of `T` on `gpu`, `p.targets` `[rows]` i32, `p.row_loss` `[rows]` f32, and `p.count` a
/// u32 written earlier on the same stream when the reduction is Mean.
unsafe fn launch_rows<T: Element>(gpu: &Gpu, op: &'static str, p: &SnugCrossEntropyParams) -> Result<()> {
    let kernel = if T::DTYPE == DType::BF16 { "cross_entropy_fwd_bf16" } else { "cross_entropy_fwd_f32" };
    let cfg = LaunchConfig { grid_dim: ((p.rows as usize).min(MAX_GRID) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: forwarded to the caller (see # Safety).
    unsafe { gpu.launch(op, "cross_entropy", kernel, cfg, p) }
}

/// The loss only (evaluation): `[rows]` for [`Reduction::None`], else `[1]`. On the GPU a reduced
/// loss needs `workspace` of [`workspace_bytes`] / 4 f32.
pub fn cross_entropy<T: Real, L: Real>(logits: View<'_, T>, targets: View<'_, i32>, loss: ViewMut<'_, L>, workspace: Option<ViewMut<'_, f32>>, spec: CrossEntropySpec) -> Result<()> {
    run(OP, Src::Read(logits), targets, loss, workspace, spec)
}

/// The loss and, overwriting `logits`, the gradient of `grad_scale · loss` w.r.t. the logits
/// (training). Workspace as [`cross_entropy`].
pub fn cross_entropy_in_place<T: Real, L: Real>(logits: ViewMut<'_, T>, targets: View<'_, i32>, loss: ViewMut<'_, L>, workspace: Option<ViewMut<'_, f32>>, spec: CrossEntropySpec) -> Result<()> {
    run(OP_IN_PLACE, Src::InPlace(logits), targets, loss, workspace, spec)
}

/// The logits: read only, or read and then overwritten with the gradient.
enum Src<'a, T: Element> {
    Read(View<'a, T>),
    InPlace(ViewMut<'a, T>),
}

impl<T: Element> Src<'_, T> {
    fn view(&self) -> View<'_, T> {
        match self {
            Src::Read(v) => v.clone(),
            Src::InPlace(v) => v.as_view(),
        }
    }
}

fn run<T: Real, L: Real>(op: &'static str, src: Src<'_, T>, targets: View<'_, i32>, loss: ViewMut<'_, L>, workspace: Option<ViewMut<'_, f32>>, spec: CrossEntropySpec) -> Result<()> {
    check_spec(op, &spec)?;
    let logits = src.view();
    let (rows, vocab) = dims(op, "logits", logits.shape())?;
    check_shape(op, "targets", targets.shape(), &[rows], "[rows] from logits")?;
    check_shape(op, "loss", loss.shape(), &loss_shape(rows, spec.reduction), "[rows] for Reduction::None, else [1]")?;
    let mut locs = vec![("logits", logits.loc()), ("targets", targets.loc()), ("loss", loss.loc())];
    locs.extend(workspace.as_ref().map(|w| ("workspace", w.loc())));
    match common_loc(op, &locs)? {
        Loc::Host => {
            let z = host_f64(op, "logits", &logits)?;
            let t = targets.to_vec()?;
            let count = count_kept(&t, spec.ignore_index);
            let (losses, g) = twin_rows(op, &z, &t, vocab, count, &spec, matches!(src, Src::InPlace(_)))?;
            if let Src::InPlace(gv) = src {
                store_f64(op, "logits", gv, &g)?;
            }
            store_f64(op, "loss", loss, &spec.reduction.apply(losses, count))
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(op)?;
            require_f32::<L>(op)?;
            let ws = require_workspace(op, workspace, workspace_bytes(rows, spec.reduction) / 4, "cross_entropy::workspace_bytes")?;
            let mut p = params(&spec, rows, vocab);
            p.logits = logits.device_ptr().unwrap_or(0) as *const c_void;
            if let Src::InPlace(_) = src {
                p.grad = p.logits as *mut c_void;
            }
            p.targets = targets.device_ptr().unwrap_or(0) as *const i32;
            let out = loss.device_ptr().unwrap_or(0);
            // (A workspace passed for Reduction::None is not used: the rows go to `loss`.)
            match ws.as_ref().and_then(|w| w.device_ptr()).filter(|_| spec.reduction != Reduction::None) {
                // Reduced: [count | row losses] in the workspace, then the loss.
                Some(w) => {
                    p.count = w as *mut u32;
                    p.row_loss = (w + 4) as *mut f32;
                    p.out = out as *mut f32;
                }
                None => p.row_loss = out as *mut f32,
            }
            // SAFETY: logits (and grad: the same allocation, in place) are [rows, V] device views
            // of T, targets [rows] i32, loss [rows] or [1] f32, the workspace (checked) rows + 1
            // f32 — count first, then the row losses; all on this handle. The count kernel
            // writes *count before the row kernel reads it, the reduce kernel reads the row
            // losses after: one stream.
            unsafe {
                if spec.reduction == Reduction::Mean {
                    gpu.launch(op, "cross_entropy", "cross_entropy_count_u32", one_block(), &p)?;
                }
                launch_rows::<T>(gpu, op, &p)?;
                if spec.reduction != Reduction::None {
                    gpu.launch(op, "cross_entropy", "cross_entropy_reduce_f32", one_block(), &p)?;
                }
            }
            Ok(())
        }
    }
}

/// Scales `grad` (written by [`cross_entropy_in_place`] with `grad_scale = 1`) in place by the
/// upstream gradient of the loss: `[rows]` for [`Reduction::None`], `[1]` otherwise.
pub fn cross_entropy_backward<T: Real, L: Real>(grad: ViewMut<'_, T>, upstream: View<'_, L>, reduction: Reduction) -> Result<()> {
    let (rows, vocab) = dims(OP_BWD, "grad", grad.shape())?;
    check_shape(OP_BWD, "upstream", upstream.shape(), &loss_shape(rows, reduction), "the loss's shape")?;
    match common_loc(OP_BWD, &[("grad", grad.loc()), ("upstream", upstream.loc())])? {
        Loc::Host => {
            let up = host_f64(OP_BWD, "upstream", &upstream)?;
            let g = host_f64(OP_BWD, "grad", &grad.as_view())?;
            let out: Vec<f64> = g.iter().enumerate().map(|(i, v)| v * if reduction == Reduction::None { up[i / vocab] } else { up[0] }).collect();
            store_f64(OP_BWD, "grad", grad, &out)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_BWD)?;
            require_f32::<L>(OP_BWD)?;
            let mut p = params(&CrossEntropySpec::new(reduction), rows, vocab);
            p.grad = grad.device_ptr().unwrap_or(0) as *mut c_void;
            p.upstream = upstream.device_ptr().unwrap_or(0) as *const f32;
            let kernel = if T::DTYPE == DType::BF16 { "cross_entropy_scale_bf16" } else { "cross_entropy_scale_f32" };
            let gx = vocab.div_ceil(THREADS as usize).min(MAX_GRID) as u32;
            let cfg = LaunchConfig { grid_dim: (gx, rows.min(MAX_GRID) as u32, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: grad is a [rows, V] device view of T, upstream [rows] or [1] f32, both on
            // this handle; each element is scaled once by one thread (grid-stride in x and y).
            unsafe { gpu.launch(OP_BWD, "cross_entropy", kernel, cfg, &p) }
        }
    }
}

/// How [`linear_cross_entropy`] runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearCrossEntropySpec {
    /// The loss.
    pub ce: CrossEntropySpec,
    /// Rows per chunk (the logits buffer is `[chunk_rows, V]`); 1 ..= rows is useful, larger is
    /// clamped to rows.
    pub chunk_rows: usize,
    /// Add `dW` to the buffer's contents instead of overwriting them (tied embeddings).
    pub accumulate_dw: bool,
}

/// Rows `start .. start + count` of a `[rows, cols]` mutable view.
fn rows_mut<'a, T: Element>(v: ViewMut<'a, T>, start: usize, count: usize, cols: usize) -> Result<ViewMut<'a, T>> {
    let (_, tail) = v.split_at(start * cols)?;
    let (mid, _) = tail.split_at(count * cols)?;
    mid.reshape(&[count, cols])
}

/// The fused LM head: `logits = h·Wᵀ` chunk by chunk, the loss (`[rows]` for
/// [`Reduction::None`], else `[1]`, f32), and — when given — `dh` (`[rows, d]`, written) and `dW`
/// (`[V, d]`, written or accumulated) for an upstream gradient of `ce.grad_scale`. `dh` and `dw`
/// are both given (training) or both omitted (evaluation). On the GPU `workspace` must hold
/// [`linear_workspace_bytes`] / 4 f32 (the CPU twin allocates its own).
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy<T: Real, P: Real>(
    h: View<'_, T>,
    w: View<'_, T>,
    targets: View<'_, i32>,
    loss: ViewMut<'_, f32>,
    grads: Option<(ViewMut<'_, T>, ViewMut<'_, P>)>,
    workspace: Option<ViewMut<'_, f32>>,
    cublas_workspace: Option<ViewMut<'_, u8>>,
    spec: LinearCrossEntropySpec,
) -> Result<()> {
    let ce = spec.ce;
    check_spec(OP_LIN, &ce)?;
    let (rows, d) = match *h.shape() {
        [r, d] if r >= 1 && d >= 1 => (r, d),
        _ => return Err(Error::Shape { op: OP_LIN, arg: "h", expected: "[rows, d], both >= 1".into(), got: h.shape().to_vec() }),
    };
    let vocab = match *w.shape() {
        [v, dd] if dd == d && (1..=i32::MAX as usize).contains(&v) => v,
        _ => return Err(Error::Shape { op: OP_LIN, arg: "w", expected: format!("[V, {d}] with 1 <= V < 2^31"), got: w.shape().to_vec() }),
    };
    if spec.chunk_rows == 0 {
        return Err(Error::Value { op: OP_LIN, arg: "chunk_rows", expected: "at least 1".into(), got: "0".into() });
    }
    let chunk = spec.chunk_rows.min(rows);
    check_shape(OP_LIN, "targets", targets.shape(), &[rows], "[rows] from h")?;
    check_shape(OP_LIN, "loss", loss.shape(), &loss_shape(rows, ce.reduction), "[rows] for Reduction::None, else [1]")?;
    let mut locs = vec![("h", h.loc()), ("w", w.loc()), ("targets", targets.loc()), ("loss", loss.loc())];
    if let Some((dh, dw)) = &grads {
        check_shape(OP_LIN, "dh", dh.shape(), &[rows, d], "the shape of h")?;
        check_shape(OP_LIN, "dw", dw.shape(), &[vocab, d], "the shape of w")?;
        locs.push(("dh", dh.loc()));
        locs.push(("dw", dw.loc()));
    }
    locs.extend(workspace.as_ref().map(|v| ("workspace", v.loc())));
    let loc = common_loc(OP_LIN, &locs)?;
    let gpu = match loc {
        Loc::Host => None,
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_LIN)?;
            if P::DTYPE != T::DTYPE && grads.is_some() {
                require_f32::<P>(OP_LIN)?;
            }
            Some(gpu)
        }
    };
    // Buffers: on the GPU carved from the workspace — [logits chunk (T) | count | row losses] —
    // on the host the twin's own vectors. One loop below serves both.
    let logits_len = chunk * vocab;
    let (mut host_logits, mut host_losses) = (Vec::new(), Vec::new());
    let t_host = if gpu.is_none() { targets.to_vec()? } else { Vec::new() };
    // The twin checks every target before the first chunk writes anything.
    if let Some((r, &t)) = t_host.iter().enumerate().find(|&(_, &t)| t != ce.ignore_index && (t < 0 || t as usize >= vocab)) {
        return Err(Error::Value { op: OP_LIN, arg: "targets", expected: format!("class indices in 0..{vocab} or ignore_index {}", ce.ignore_index), got: format!("{t} at row {r}") });
    }
    let (mut logits_buf, mut losses_buf, count): (ViewMut<'_, T>, Option<ViewMut<'_, f32>>, Count) = match gpu {
        None => {
            host_logits.resize(logits_len, <T as bytemuck::Zeroable>::zeroed());
            let lb = ViewMut::host(&mut host_logits, &[chunk, vocab])?;
            let n = count_kept(&t_host, ce.ignore_index);
            if ce.reduction == Reduction::None {
                (lb, None, Count::Host(n))
            } else {
                host_losses.resize(rows, 0.0f32);
                (lb, Some(ViewMut::host(&mut host_losses, &[rows])?), Count::Host(n))
            }
        }
        Some(_) => {
            let want = linear_workspace_bytes(rows, vocab, chunk, ce.reduction, T::DTYPE) / 4;
            let ws = need_workspace(OP_LIN, workspace, want, "linear_workspace_bytes")?;
            let (lb, rest) = ws.split_at((logits_len * T::DTYPE.size()).div_ceil(4))?;
            let lb = lb.cast::<T>()?.split_at(logits_len)?.0.reshape(&[chunk, vocab])?;
            let (cnt, rest) = rest.split_at(1)?;
            let losses = if ce.reduction == Reduction::None { None } else { Some(rest.split_at(rows)?.0) };
            (lb, losses, Count::Device(cnt.device_ptr().unwrap_or(0)))
        }
    };
    if let (Some(gpu), Count::Device(c), Reduction::Mean) = (gpu, count, ce.reduction) {
        let mut p = params(&ce, rows, vocab);
        p.targets = targets.device_ptr().unwrap_or(0) as *const i32;
        p.count = c as *mut u32;
        // SAFETY: targets is a [rows] i32 device view, count one u32 of the workspace (checked).
        unsafe { gpu.launch(OP_LIN, "cross_entropy", "cross_entropy_count_u32", one_block(), &p)? };
    }
    let mut loss = loss;
    let mut grads = grads;
    let mut cw = cublas_workspace;
    let mut start = 0;
    while start < rows {
        let n = chunk.min(rows - start);
        let hc = h.clone().narrow(start, n)?;
        let mut lc = rows_mut(logits_buf.reborrow(), 0, n, vocab)?;
        gemm(hc.clone(), w.clone(), lc.reborrow(), GemmSpec::new(false, true), cw.as_mut().map(|c| c.reborrow()))?;
        let row_loss = match losses_buf.as_mut() {
            Some(b) => rows_mut(b.reborrow().reshape(&[rows, 1])?, start, n, 1)?.reshape(&[n])?,
            None => rows_mut(loss.reborrow().reshape(&[rows, 1])?, start, n, 1)?.reshape(&[n])?,
        };
        chunk_rows_pass(lc.reborrow(), grads.is_some(), targets.clone().narrow(start, n)?, row_loss, count, &ce, &t_host[if gpu.is_none() { start..start + n } else { 0..0 }])?;
        if let Some((dh, dw)) = grads.as_mut() {
            let g = lc.as_view();
            gemm(g.clone(), w.clone(), rows_mut(dh.reborrow(), start, n, d)?, GemmSpec::new(false, false), cw.as_mut().map(|c| c.reborrow()))?;
            let beta = if start == 0 && !spec.accumulate_dw { 0.0 } else { 1.0 };
            gemm(g, hc, dw.reborrow(), GemmSpec { beta, ..GemmSpec::new(true, false) }, cw.as_mut().map(|c| c.reborrow()))?;
        }
        start += n;
    }
    let reduced = losses_buf.is_some();
    let losses_ptr = losses_buf.as_ref().and_then(|b| b.device_ptr());
    match (gpu, count) {
        _ if !reduced => Ok(()),
        (None, Count::Host(n)) => {
            let l: Vec<f64> = host_losses.iter().map(|&x| x as f64).collect();
            store_f64(OP_LIN, "loss", loss, &ce.reduction.apply(l, n))
        }
        (None, Count::Device(_)) => Ok(()),
        (Some(gpu), _) => {
            let mut p = params(&ce, rows, vocab);
            p.row_loss = losses_ptr.unwrap_or(0) as *mut f32;
            p.out = loss.device_ptr().unwrap_or(0) as *mut f32;
            if let Count::Device(c) = count {
                p.count = c as *mut u32;
            }
            // SAFETY: the [rows] row losses written above and the count (workspace, checked),
            // loss [1] f32: all on this handle, read after the row kernels on the same stream.
            unsafe { gpu.launch(OP_LIN, "cross_entropy", "cross_entropy_reduce_f32", one_block(), &p) }
        }
    }
}

/// The Mean divisor: a count the host knows, or a device u32 the count kernel wrote.
#[derive(Clone, Copy, Debug)]
enum Count {
    Host(usize),
    Device(u64),
}

/// One chunk of rows: row losses (f32) and, with `grad`, the gradient in place of `logits`.
/// `t_host`: the chunk's targets on the host (the twin; empty on the GPU).
fn chunk_rows_pass<T: Real>(logits: ViewMut<'_, T>, grad: bool, targets: View<'_, i32>, row_loss: ViewMut<'_, f32>, count: Count, spec: &CrossEntropySpec, t_host: &[i32]) -> Result<()> {
    let (rows, vocab) = dims(OP_LIN, "logits", logits.shape())?;
    match (logits.loc(), count) {
        (Loc::Host, Count::Host(n)) => {
            let z = host_f64(OP_LIN, "logits", &logits.as_view())?;
            let (losses, g) = twin_rows(OP_LIN, &z, t_host, vocab, n, spec, grad)?;
            if grad {
                store_f64(OP_LIN, "logits", logits, &g)?;
            }
            store_f64(OP_LIN, "row_loss", row_loss, &losses)
        }
        (Loc::Cuda(gpu), Count::Device(c)) => {
            let mut p = params(spec, rows, vocab);
            p.logits = logits.device_ptr().unwrap_or(0) as *const c_void;
            p.grad = if grad { p.logits as *mut c_void } else { std::ptr::null_mut() };
            p.targets = targets.device_ptr().unwrap_or(0) as *const i32;
            p.row_loss = row_loss.device_ptr().unwrap_or(0) as *mut f32;
            p.count = c as *mut u32;
            // SAFETY: logits is a [rows, V] device view of T (the gradient overwrites it in place),
            // targets [rows] i32, row_loss [rows] f32, count the u32 the count kernel wrote first
            // on this stream (Mean only).
            unsafe { launch_rows::<T>(gpu, OP_LIN, &p) }
        }
        _ => Err(Error::Value { op: OP_LIN, arg: "workspace", expected: "buffers on the device of h".into(), got: "a mix".into() }),
    }
}
