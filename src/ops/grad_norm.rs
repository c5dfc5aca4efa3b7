//! Global L2 norm of a list of gradient tensors (`kernels/grad_norm.cu`), deterministic: the
//! `norm` it writes feeds [`super::adamw::Clip::Norm`] (seed 000 clips at 0.5).
//!
//! `norm = sqrt(Σ_tensors Σ_elements g²)`. On the GPU every tensor's 4,096-element chunks reduce to
//! one f32 partial each (fixed tree), stored in tensor order in the workspace
//! ([`workspace_bytes`]), and one block sums them in a fixed order: the same bits every run, no
//! atomics, no host synchronisation. The partial pass is one launch per 64 non-empty tensors (their
//! pointers, lengths and first chunks passed by value), whatever their sizes. Gradients `G`: f32 or
//! bf16 on the GPU; the norm `N`: f32 on the GPU. The CPU twin computes in f64 for any [`Real`].

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::{common_loc, host_f64, require_f32, require_f32_or_bf16, store_f64, need_workspace, Real};
use crate::ffi::{self, SnugGradNormMultiParams, SnugGradNormParams};
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Error, Result};

const OP: &str = "grad_norm";
const CHUNK: usize = ffi::SNUG_GRAD_NORM_CHUNK as usize;
const MAX_TENSORS: usize = ffi::SNUG_GRAD_NORM_MAX_TENSORS as usize;

/// Workspace of the GPU pass for tensors of these element counts: one f32 partial per
/// 4,096-element chunk of each, `Σ ⌈len/4096⌉·4` bytes.
pub fn workspace_bytes(lens: &[usize]) -> usize {
    4 * lens.iter().map(|n| n.div_ceil(CHUNK)).sum::<usize>()
}

/// Writes the global L2 norm of `grads` into `norm` (`[1]` or `[]`).
pub fn grad_norm<G: Real, N: Real>(grads: &[View<'_, G>], norm: ViewMut<'_, N>, workspace: Option<ViewMut<'_, f32>>) -> Result<()> {
    if grads.is_empty() {
        return Err(Error::Value { op: OP, arg: "grads", expected: "at least one tensor".into(), got: "none".into() });
    }
    if norm.len() != 1 {
        return Err(Error::Shape { op: OP, arg: "norm", expected: "one element ([1] or [])".into(), got: norm.shape().to_vec() });
    }
    let mut locs: Vec<(&'static str, Loc<'_>)> = grads.iter().map(|g| ("grads", g.loc())).collect();
    locs.push(("norm", norm.loc()));
    locs.extend(workspace.as_ref().map(|w| ("workspace", w.loc())));
    match common_loc(OP, &locs)? {
        Loc::Host => {
            let mut s = 0.0f64;
            for g in grads {
                s += host_f64(OP, "grads", g)?.iter().map(|v| v * v).sum::<f64>();
            }
            store_f64(OP, "norm", norm, &[s.sqrt()])
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<G>(OP)?;
            require_f32::<N>(OP)?;
            let lens: Vec<usize> = grads.iter().map(|g| g.len()).collect();
            let want = workspace_bytes(&lens) / 4;
            let ws = need_workspace(OP, workspace, want, "workspace_bytes")?;
            let base = ws.device_ptr().unwrap_or(0);
            let kernel = if G::DTYPE == DType::BF16 { "grad_norm_partial_bf16" } else { "grad_norm_partial_f32" };
            // Checked before any launch: a block index (and a launch's grid) fits the grid's x limit.
            if let Some(g) = grads.iter().find(|g| g.len().div_ceil(CHUNK) > i32::MAX as usize) {
                return Err(Error::Shape { op: OP, arg: "grads", expected: "fewer than 2^43 elements per tensor".into(), got: g.shape().to_vec() });
            }
            // Up to MAX_TENSORS non-empty tensors per launch (and at most i32::MAX blocks), in tensor
            // order: launch-local block first[i] + c is chunk c of tensor i, its partial at workspace
            // index start + first[i] + c = the tensor's offset + c (empty tensors: no entry, no partial).
            let mut p = SnugGradNormMultiParams::default();
            let mut start = 0usize; // the workspace index of this launch's first partial
            let mut off = 0usize; // partials so far
            for g in grads.iter().filter(|g| !g.is_empty()) {
                let blocks = g.len().div_ceil(CHUNK);
                if p.count as usize == MAX_TENSORS || off - start + blocks > i32::MAX as usize {
                    // SAFETY: the table holds device views of G with their lengths, their chunks the
                    // blocks from first[0] = 0 in order; the workspace holds want >= off partials.
                    unsafe { launch_partial(gpu, kernel, &mut p, base, start, off)? };
                    start = off;
                }
                let k = p.count as usize;
                p.x[k] = g.device_ptr().unwrap_or(0) as *const c_void;
                p.n[k] = g.len() as u64;
                p.first[k] = (off - start) as u32;
                p.count += 1;
                off += blocks;
            }
            if p.count > 0 {
                // SAFETY: as above.
                unsafe { launch_partial(gpu, kernel, &mut p, base, start, off)? };
            }
            let p = SnugGradNormParams { x: std::ptr::null(), part: base as *mut f32, out: norm.device_ptr().unwrap_or(0) as *mut f32, n: off as u64 };
            let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: reads the `off` partials written above on the same stream; writes norm's one
            // f32 element.
            unsafe { gpu.launch(OP, "grad_norm", "grad_norm_final_f32", cfg, &p) }
        }
    }
}

/// Launches the partial pass over the `p.count` tensors of `p` (workspace partials `start .. end`),
/// then empties the table.
///
/// # Safety
/// `p.x[i]` / `p.n[i]` (`i < p.count`) are device tensors of `G` on `gpu` with that many elements,
/// their chunks are blocks `p.first[i] ..` of `end - start` in tensor order, and the workspace at
/// `base` (f32) holds at least `end` elements: one partial written per block.
unsafe fn launch_partial(gpu: &crate::Gpu, kernel: &'static str, p: &mut SnugGradNormMultiParams, base: u64, start: usize, end: usize) -> Result<()> {
    let blocks = end - start;
    p.first[p.count as usize] = blocks as u32;
    p.part = (base + 4 * start as u64) as *mut f32;
    let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: forwarded to the caller; the table is copied into the launch's parameters.
    unsafe { gpu.launch(OP, "grad_norm", kernel, cfg, &*p)? };
    *p = SnugGradNormMultiParams::default();
    Ok(())
}
