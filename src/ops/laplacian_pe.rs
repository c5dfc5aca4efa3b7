//! Dynamic Laplacian positional encoding (seed 000), fused: adjacency → normalised Laplacian →
//! eigendecomposition → the k smallest eigenvectors, per timestep. Kernel: `laplacian_pe_f32` and
//! `laplacian_pe_backward_f32` in `kernels/eigh.cu` (the eigh family).
//!
//! For `adj: [B, T, n, n]` (n ≤ 32) and each computed timestep t₀ (every `interval`-th, starting at
//! 0): S = (adj + adjᵀ)/2, dᵢ = max(Σⱼ Sᵢⱼ, 10⁻³), L = (1 + 10⁻³)·I − D^-½ S D^-½, and
//! `pe[b, t, :, c]` = the c-th eigenvector of L (ascending eigenvalues, the sign convention of
//! [`eigh`](super::eigh)) for every t in [t₀, t₀ + interval). Eigenvectors of repeated eigenvalues
//! (disconnected or symmetric graphs) are a basis of their eigenspace, as in any eigensolver.
//!
//! Backward (optional in the seed, off by default there): `gadj` from `gpe` through the same chain
//! (eigh's backward with gw = 0 and broadening `eps_rel`, then the normalisation; no gradient
//! through a clamped degree). The eigendecomposition is recomputed from `adj`: saved for backward
//! is `adj` alone, workspace 0. `gadj` is zero at timesteps that only repeat t₀.
//!
//! A group whose adjacency has a non-finite entry gets NaN encodings (and NaN gradients); other
//! groups are unaffected.

use super::eigh::{convention_sign, eigh_f64, vjp, warp_launch, MAX_N, MAX_SWEEPS};
use super::{check_shape, common_loc, require_f32, Real};
use crate::ffi::SnugLaplacianPeParams;
use crate::memory::{Loc, View, ViewMut};
use crate::{Error, Result};

const OP: &str = "laplacian_pe";
const OP_BWD: &str = "laplacian_pe_backward";
/// Degree clamp.
pub const DEG_MIN: f64 = 1e-3;
/// Diagonal shift of L.
pub const SHIFT: f64 = 1e-3;

/// Workspace: none.
pub fn workspace_bytes(_b: usize, _t: usize, _n: usize, _k: usize) -> usize {
    0
}

/// Bytes the backward needs beyond `adj` (which it recomputes from): none.
pub fn saved_bytes(_b: usize, _t: usize, _n: usize, _k: usize) -> usize {
    0
}

/// (B, T, n) of an adjacency `[B, T, n, n]`.
fn check_adj(op: &'static str, shape: &[usize]) -> Result<(usize, usize, usize)> {
    match *shape {
        [b, t, n, m] if n == m && (1..=MAX_N).contains(&n) && b >= 1 && t >= 1 => Ok((b, t, n)),
        _ => Err(Error::Shape { op, arg: "adj", expected: format!("[B, T, n, n] with B, T >= 1 and 1 <= n <= {MAX_N}"), got: shape.to_vec() }),
    }
}

fn check_k_interval(op: &'static str, shape: &[usize], b: usize, t: usize, n: usize, arg: &'static str) -> Result<usize> {
    match *shape {
        [b2, t2, n2, k] if b2 == b && t2 == t && n2 == n && (1..=n).contains(&k) => Ok(k),
        _ => Err(Error::Shape { op, arg, expected: format!("[{b}, {t}, {n}, k] with 1 <= k <= {n}"), got: shape.to_vec() }),
    }
}

fn check_interval(op: &'static str, interval: usize) -> Result<()> {
    if interval == 0 || interval > u32::MAX as usize {
        return Err(Error::Value { op, arg: "interval", expected: "an interval >= 1 (1 = every timestep)".into(), got: interval.to_string() });
    }
    Ok(())
}

/// Writes the positional encoding of every timestep (see the module docs); k = `pe.shape()[3]`.
pub fn laplacian_pe<T: Real>(adj: View<'_, T>, pe: ViewMut<'_, T>, interval: usize) -> Result<()> {
    let (b, t, n) = check_adj(OP, adj.shape())?;
    let k = check_k_interval(OP, pe.shape(), b, t, n, "pe")?;
    check_interval(OP, interval)?;
    match common_loc(OP, &[("adj", adj.loc()), ("pe", pe.loc())])? {
        Loc::Host => {
            let host = |arg| Error::DeviceMismatch { op: OP, arg, expected: "cpu".into(), got: "cuda".into() };
            let a = adj.as_slice().ok_or_else(|| host("adj"))?;
            let out = pe.into_slice_mut().ok_or_else(|| host("pe"))?;
            for bi in 0..b {
                for t0 in (0..t).step_by(interval) {
                    let g = Group::new(&a[(bi * t + t0) * n * n..][..n * n], n);
                    for tt in t0..(t0 + interval).min(t) {
                        let o = &mut out[(bi * t + tt) * n * k..][..n * k];
                        for i in 0..n {
                            for c in 0..k {
                                o[i * k + c] = T::round_f64(g.v[i * n + c]);
                            }
                        }
                    }
                }
            }
            Ok(())
        }
        Loc::Cuda(gpu) => launch(gpu, OP, "laplacian_pe_f32", &adj, Some(&pe), None, None, (b, t, n, k), interval, 0.0),
    }
}

/// Gradient w.r.t. `adj` from the gradient w.r.t. `pe` (see the module docs).
pub fn laplacian_pe_backward<T: Real>(adj: View<'_, T>, gpe: View<'_, T>, gadj: ViewMut<'_, T>, interval: usize, eps_rel: f32) -> Result<()> {
    let (b, t, n) = check_adj(OP_BWD, adj.shape())?;
    let k = check_k_interval(OP_BWD, gpe.shape(), b, t, n, "gpe")?;
    check_shape(OP_BWD, "gadj", gadj.shape(), &[b, t, n, n], "the shape of adj")?;
    check_interval(OP_BWD, interval)?;
    if !(eps_rel.is_finite() && eps_rel >= 0.0) {
        return Err(Error::Value { op: OP_BWD, arg: "eps_rel", expected: "a finite value >= 0".into(), got: eps_rel.to_string() });
    }
    match common_loc(OP_BWD, &[("adj", adj.loc()), ("gpe", gpe.loc()), ("gadj", gadj.loc())])? {
        Loc::Host => {
            let host = |arg| Error::DeviceMismatch { op: OP_BWD, arg, expected: "cpu".into(), got: "cuda".into() };
            let a = adj.as_slice().ok_or_else(|| host("adj"))?;
            let gp = gpe.as_slice().ok_or_else(|| host("gpe"))?;
            let out = gadj.into_slice_mut().ok_or_else(|| host("gadj"))?;
            let f = |x: T| x.to_f64().unwrap_or(f64::NAN);
            for bi in 0..b {
                for t0 in (0..t).step_by(interval) {
                    let t1 = (t0 + interval).min(t);
                    let g = Group::new(&a[(bi * t + t0) * n * n..][..n * n], n);
                    let mut gv = vec![0.0; n * n];
                    for tt in t0..t1 {
                        for i in 0..n {
                            for c in 0..k {
                                gv[i * n + c] += f(gp[((bi * t + tt) * n + i) * k + c]);
                            }
                        }
                    }
                    let gadj0 = g.backward(&gv, eps_rel as f64);
                    for tt in t0..t1 {
                        let o = &mut out[(bi * t + tt) * n * n..][..n * n];
                        for (o, &x) in o.iter_mut().zip(&gadj0) {
                            *o = if tt == t0 { T::round_f64(x) } else { T::zero() };
                        }
                    }
                }
            }
            Ok(())
        }
        Loc::Cuda(gpu) => launch(gpu, OP_BWD, "laplacian_pe_backward_f32", &adj, None, Some(&gadj), Some(&gpe), (b, t, n, k), interval, eps_rel),
    }
}

#[allow(clippy::too_many_arguments)]
fn launch<T: Real>(
    gpu: &crate::Gpu,
    op: &'static str,
    kernel: &'static str,
    adj: &View<'_, T>,
    pe: Option<&ViewMut<'_, T>>,
    gadj: Option<&ViewMut<'_, T>>,
    gpe: Option<&View<'_, T>>,
    (b, t, n, k): (usize, usize, usize, usize),
    interval: usize,
    eps_rel: f32,
) -> Result<()> {
    require_f32::<T>(op)?;
    let groups = (b * t.div_ceil(interval)) as u64;
    let l = warp_launch(groups, n, if gadj.is_some() { 3 } else { 2 });
    let p = SnugLaplacianPeParams {
        pe: pe.and_then(|v| v.device_ptr()).unwrap_or(0) as *mut f32,
        gadj: gadj.and_then(|v| v.device_ptr()).unwrap_or(0) as *mut f32,
        adj: adj.device_ptr().unwrap_or(0) as *const f32,
        gpe: gpe.and_then(|v| v.device_ptr()).unwrap_or(0) as *const f32,
        groups,
        t: t as u32,
        n: n as u32,
        k: k as u32,
        interval: interval as u32,
        ld: l.ld,
        warps_per_block: l.warps_per_block,
        max_sweeps: MAX_SWEEPS,
        eps_rel,
    };
    if t > u32::MAX as usize {
        return Err(Error::Shape { op, arg: "adj", expected: "T < 2^32".into(), got: adj.shape().to_vec() });
    }
    // SAFETY: adj, pe / gadj, gpe are device views on this handle with the shapes checked by the
    // callers ([B, T, n, n] and [B, T, n, k]); the kernel touches groups [0, B·ceil(T/interval))
    // and, within each, timesteps [t0, min(t0 + interval, T)); shared memory as in eigh.
    unsafe { gpu.launch(op, "eigh", kernel, l.cfg, &p) }
}

/// One computed timestep in f64: the pieces of the forward that the backward needs.
struct Group {
    n: usize,
    s: Vec<f64>,
    dinv: Vec<f64>,
    clamped: Vec<bool>,
    w: Vec<f64>,
    v: Vec<f64>,
    bad: bool,
}

impl Group {
    fn new<T: Real>(adj: &[T], n: usize) -> Group {
        let f = |x: T| x.to_f64().unwrap_or(f64::NAN);
        let mut s = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                s[i * n + j] = 0.5 * f(adj[i * n + j]) + 0.5 * f(adj[j * n + i]);
            }
        }
        let d: Vec<f64> = (0..n).map(|i| (0..n).map(|j| s[i * n + j]).sum()).collect();
        let clamped: Vec<bool> = d.iter().map(|&x| x.is_nan() || x < DEG_MIN).collect();
        let dinv: Vec<f64> = d.iter().map(|&x| 1.0 / x.max(DEG_MIN).sqrt()).collect();
        let mut l = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                l[i * n + j] = if i == j { 1.0 + SHIFT } else { 0.0 } - s[i * n + j] * dinv[i] * dinv[j];
            }
        }
        let bad = s.iter().any(|x| !x.is_finite());
        let (w, v) = if bad {
            (vec![f64::NAN; n], vec![f64::NAN; n * n])
        } else {
            let (w, v, _) = eigh_f64(&l, n);
            (w, v)
        };
        debug_assert!(bad || (0..n).all(|c| convention_sign(&(0..n).map(|r| v[r * n + c]).collect::<Vec<_>>()) == 1.0));
        Group { n, s, dinv, clamped, w, v, bad }
    }

    /// gadj at t₀ from gV (n×n, zero beyond column k).
    fn backward(&self, gv: &[f64], eps_rel: f64) -> Vec<f64> {
        let n = self.n;
        if self.bad {
            return vec![f64::NAN; n * n];
        }
        let eps = eps_rel * self.w.iter().map(|x| x * x).sum::<f64>().sqrt();
        let gl = vjp(&self.w, &self.v, &vec![0.0; n], gv, eps, n);
        let gd: Vec<f64> = (0..n)
            .map(|m| {
                if self.clamped[m] {
                    return 0.0;
                }
                let sum: f64 = (0..n).map(|j| gl[m * n + j] * self.s[m * n + j] * self.dinv[m] * self.dinv[j]).sum();
                sum * self.dinv[m] * self.dinv[m]
            })
            .collect();
        let mut out = vec![0.0; n * n];
        for i in 0..n {
            for l in 0..n {
                out[i * n + l] = -gl[i * n + l] * self.dinv[i] * self.dinv[l] + 0.5 * (gd[i] + gd[l]);
            }
        }
        out
    }
}
