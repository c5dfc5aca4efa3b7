//! Cosine similarity of every pair of node vectors per `(b, t)`, with an optional clamp, forward
//! and backward (`kernels/cosine_sim.cu`).
//!
//! Shapes: `x [B, N, T, D]` (node `i`'s vector at `(b, t)` is `x[b, i, t, :]`; `T` may be 1),
//! `y` and `dy [B, P, T]` with `P = N(N−1)/2`, `dx` like `x`. Pairs are in row-major
//! upper-triangle order `(0,1), (0,2), …, (0,N−1), (1,2), …, (N−2,N−1)`: pair `(i, j)`, `i < j`,
//! is `p = i(2N−i−1)/2 + (j−i−1)` ([`pair_index`](super::sym_scatter::pair_index)`(i, j, N, Triangle::Strict)`) — the order of the
//! `sym_scatter` op, which scatters pair values back into symmetric `N×N` matrices (it takes the
//! pairs on the last axis, `[.., P]`: `y` here is `[B, P, T]`, so `[B, T, P]` needs a [`transpose`](super::transpose::transpose) of axis 1).
//!
//! Definition (that of current PyTorch `F.cosine_similarity`, ATen `cosine_similarity`: each
//! vector divided by its norm clamped below at `eps`, then the dot product):
//!
//! `m_i = max(‖x_i‖, eps)`, `c_ij = ⟨x_i / m_i, x_j / m_j⟩`, `y_ij = clamp(c_ij, −c, c)`
//!
//! with `clamp = Some(c)` (the seed: 0.99) or no clamp (`None`), `eps` default
//! [`DEFAULT_EPS`] = 1e-8. (PyTorch before 1.12 clamped the *product* `‖x_i‖‖x_j‖` at `eps`
//! instead; the two differ only when a norm is below `eps`.)
//!
//! Backward, recomputing `m`, `u_i = x_i / m_i` and `c` (nothing saved), with
//! `g_ij = dy_ij` where `−c ≤ c_ij ≤ c` (boundaries included, as `torch.clamp`'s gradient) and
//! `0` outside (and for NaN), and `k_i = 1` if `‖x_i‖ ≥ eps` else `0`:
//!
//! `dx_i = (Σ_{j≠i} g_ij u_j − k_i (Σ_{j≠i} g_ij c_ij) u_i) / m_i`, sums over `j` ascending,
//!
//! i.e. `∂c_ij/∂x_i = x_j/(m_i m_j) − c_ij x_i/m_i²` above `eps`; below it `m_i = eps` is a
//! constant and only the first term remains. (PyTorch's autograd keeps the second term below
//! `eps` too — its clamp runs under `no_grad` — so the two differ for `0 < ‖x_i‖ < eps` only.)
//!
//! Limits: `2 ≤ N ≤ 32` ([`MAX_NODES`]), `1 ≤ D ≤ 128` ([`MAX_DIM`]): a block stages the vectors
//! of up to 8 consecutive `t` in at most 48 KiB of shared memory. Storage `T`: f32 or bf16 on the
//! GPU with f32 math (deterministic: fixed-order sums, no atomics), any [`Real`] in the CPU twin,
//! which computes in f64. No workspace.

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::{check_range, check_shape, common_loc, host_f64, require_f32_or_bf16, store_f64, Real};
use super::sym_scatter::Triangle;
use crate::ffi::SnugCosineSimParams;
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Error, Result};

const OP: &str = "cosine_sim";
const OP_BWD: &str = "cosine_sim_backward";
/// The most nodes `N` the op supports.
pub const MAX_NODES: usize = 32;
/// The longest vectors `D` the op supports.
pub const MAX_DIM: usize = 128;
/// PyTorch's default `eps`.
pub const DEFAULT_EPS: f32 = 1e-8;
/// Consecutive `t` a block stages per pass, at most.
const MAX_TILE: usize = 8;
/// Dynamic shared memory a block may use without the opt-in attribute.
const SMEM_BUDGET: usize = 48 * 1024;
/// Most blocks of one launch (grid-stride over the passes beyond).
const MAX_BLOCKS: usize = 1 << 16;

/// `[B, N, T, D]` of `x`, validated.
fn dims(op: &'static str, x: &[usize]) -> Result<[usize; 4]> {
    match *x {
        [b, n, t, d] if b >= 1 && (2..=MAX_NODES).contains(&n) && t >= 1 && (1..=MAX_DIM).contains(&d) => Ok([b, n, t, d]),
        _ => Err(Error::Shape { op, arg: "x", expected: format!("[B, N, T, D] with B, T ≥ 1, 2 ≤ N ≤ {MAX_NODES}, 1 ≤ D ≤ {MAX_DIM}"), got: x.to_vec() }),
    }
}

fn check_params(op: &'static str, clamp: Option<f32>, eps: f32) -> Result<f32> {
    check_range(op, "eps", eps, eps > 0.0, "a finite eps > 0")?;
    match clamp {
        Some(c) => check_range(op, "clamp", c, c > 0.0, "a finite clamp > 0 (or None)").map(|_| c),
        None => Ok(f32::INFINITY),
    }
}

/// Shared-memory floats per staged `t`: the forward's `u`, plus the backward's `g`, `g·c`, `s`, `m`.
fn floats_per_t(n: usize, d: usize, bwd: bool) -> usize {
    n * (d + 1) + if bwd { 2 * Triangle::Strict.pairs(n) + 2 * n } else { 0 }
}

/// `(tile, dynamic shared bytes)` of a launch: as many consecutive `t` (≤ 8, ≤ T) as fit 48 KiB.
fn tile(n: usize, t: usize, d: usize, bwd: bool) -> (usize, usize) {
    let per_t = 4 * floats_per_t(n, d, bwd);
    let tile = (SMEM_BUDGET / per_t).clamp(1, MAX_TILE).min(t);
    (tile, tile * per_t)
}

fn ptr(p: Option<u64>) -> *mut c_void {
    p.unwrap_or(0) as *mut c_void
}

/// The twin's per-(b, t) staging: `(m, k, u)` of each node, `u` row-major `[N][D]`.
fn normalise(x: &[f64], [_, n, t, d]: [usize; 4], b: usize, s: usize, eps: f64) -> (Vec<f64>, Vec<bool>, Vec<f64>) {
    let (mut m, mut k, mut u) = (vec![0.0; n], vec![false; n], vec![0.0; n * d]);
    for i in 0..n {
        let v = &x[((b * n + i) * t + s) * d..][..d];
        let r = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        m[i] = if r < eps { eps } else { r };
        k[i] = r >= eps;
        for (o, a) in u[i * d..(i + 1) * d].iter_mut().zip(v) {
            *o = a / m[i];
        }
    }
    (m, k, u)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn launch_cfg(shape: [usize; 4], bwd: bool) -> (LaunchConfig, usize) {
    let [b, n, t, d] = shape;
    let (tl, smem) = tile(n, t, d, bwd);
    let passes = b * t.div_ceil(tl);
    (LaunchConfig { grid_dim: (passes.min(MAX_BLOCKS) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: smem as u32 }, tl)
}

/// The launch parameters of shape `[B, N, T, D]` with every pointer null.
fn params([b, n, t, d]: [usize; 4], tile: usize, clamp: f32, eps: f32) -> SnugCosineSimParams {
    SnugCosineSimParams { x: std::ptr::null(), y: std::ptr::null_mut(), dy: std::ptr::null(), dx: std::ptr::null_mut(), batch: b as u64, t: t as u64, n: n as u32, d: d as u32, tile: tile as u32, clamp, eps, pad_: 0 }
}

/// The forward: `y [B, P, T]` from `x [B, N, T, D]`; `clamp` `None` for none, `eps` as PyTorch's
/// (use [`DEFAULT_EPS`]).
pub fn cosine_sim<T: Real>(x: View<'_, T>, y: ViewMut<'_, T>, clamp: Option<f32>, eps: f32) -> Result<()> {
    let sh = dims(OP, x.shape())?;
    let [b, n, t, d] = sh;
    let c = check_params(OP, clamp, eps)?;
    let np = Triangle::Strict.pairs(n);
    check_shape(OP, "y", y.shape(), &[b, np, t], "[B, N(N−1)/2, T]")?;
    match common_loc(OP, &[("x", x.loc()), ("y", y.loc())])? {
        Loc::Host => {
            let xv = host_f64(OP, "x", &x)?;
            let (c, eps) = (c as f64, eps as f64);
            let mut out = vec![0.0; b * np * t];
            for bi in 0..b {
                for s in 0..t {
                    let (_, _, u) = normalise(&xv, sh, bi, s, eps);
                    let mut p = 0; // pair (i, j) in row-major upper-triangle order
                    for i in 0..n {
                        for j in i + 1..n {
                            let v = dot(&u[i * d..(i + 1) * d], &u[j * d..(j + 1) * d]);
                            out[(bi * np + p) * t + s] = if v > c { c } else if v < -c { -c } else { v };
                            p += 1;
                        }
                    }
                }
            }
            store_f64(OP, "y", y, &out)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP)?;
            let (cfg, tl) = launch_cfg(sh, false);
            let p = SnugCosineSimParams { x: ptr(x.device_ptr()), y: ptr(y.device_ptr()), ..params(sh, tl, c, eps) };
            let kernel = if T::DTYPE == DType::BF16 { "cosine_sim_fwd_bf16" } else { "cosine_sim_fwd_f32" };
            // SAFETY: x is a [B, N, T, D] device view of T and y a [B, P, T] one, on this handle
            // (checked); N ≤ 32, D ≤ 128 and the tile keep the dynamic shared memory (passed in
            // cfg) within 48 KiB; every element of y written once.
            unsafe { gpu.launch(OP, "cosine_sim", kernel, cfg, &p) }
        }
    }
}

/// The backward: `dx [B, N, T, D]` from `x` and `dy [B, P, T]`, with the forward's `clamp` and
/// `eps`.
pub fn cosine_sim_backward<T: Real>(x: View<'_, T>, dy: View<'_, T>, dx: ViewMut<'_, T>, clamp: Option<f32>, eps: f32) -> Result<()> {
    let sh = dims(OP_BWD, x.shape())?;
    let [b, n, t, d] = sh;
    let c = check_params(OP_BWD, clamp, eps)?;
    let np = Triangle::Strict.pairs(n);
    check_shape(OP_BWD, "dy", dy.shape(), &[b, np, t], "[B, N(N−1)/2, T]")?;
    check_shape(OP_BWD, "dx", dx.shape(), x.shape(), "the shape of x")?;
    match common_loc(OP_BWD, &[("x", x.loc()), ("dy", dy.loc()), ("dx", dx.loc())])? {
        Loc::Host => {
            let (xv, gv) = (host_f64(OP_BWD, "x", &x)?, host_f64(OP_BWD, "dy", &dy)?);
            let (c, eps) = (c as f64, eps as f64);
            let mut out = vec![0.0; xv.len()];
            for bi in 0..b {
                for s in 0..t {
                    let (m, k, u) = normalise(&xv, sh, bi, s, eps);
                    // g_ij and c_ij, symmetric [N][N].
                    let (mut g, mut cc) = (vec![0.0; n * n], vec![0.0; n * n]);
                    let mut p = 0;
                    for i in 0..n {
                        for j in i + 1..n {
                            let v = dot(&u[i * d..(i + 1) * d], &u[j * d..(j + 1) * d]);
                            let gy = gv[(bi * np + p) * t + s];
                            p += 1;
                            let gg = if v >= -c && v <= c { gy } else { 0.0 };
                            (g[i * n + j], g[j * n + i], cc[i * n + j], cc[j * n + i]) = (gg, gg, v, v);
                        }
                    }
                    for i in 0..n {
                        let sc = if k[i] { (0..n).filter(|&j| j != i).map(|j| g[i * n + j] * cc[i * n + j]).sum::<f64>() } else { 0.0 };
                        let o = &mut out[((bi * n + i) * t + s) * d..][..d];
                        for (e, oe) in o.iter_mut().enumerate() {
                            let acc: f64 = (0..n).filter(|&j| j != i).map(|j| g[i * n + j] * u[j * d + e]).sum();
                            *oe = (acc - sc * u[i * d + e]) / m[i];
                        }
                    }
                }
            }
            store_f64(OP_BWD, "dx", dx, &out)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_BWD)?;
            let (cfg, tl) = launch_cfg(sh, true);
            let p = SnugCosineSimParams { x: ptr(x.device_ptr()), dy: ptr(dy.device_ptr()), dx: ptr(dx.device_ptr()), ..params(sh, tl, c, eps) };
            let kernel = if T::DTYPE == DType::BF16 { "cosine_sim_bwd_bf16" } else { "cosine_sim_bwd_f32" };
            // SAFETY: x and dx are [B, N, T, D] device views of T, dy a [B, P, T] one, on this
            // handle (checked); N ≤ 32, D ≤ 128 and the tile keep the dynamic shared memory
            // (passed in cfg) within 48 KiB; every element of dx written once.
            unsafe { gpu.launch(OP_BWD, "cosine_sim", kernel, cfg, &p) }
        }
    }
}
