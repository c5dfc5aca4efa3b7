//! Batched symmetric matrices from their upper-triangle pairs (`sym_scatter`) and the inverse
//! gather (`triu_pairs`), forward and backward (`kernels/sym_scatter.cu`).
//!
//! Pair order: the upper triangle of an `n × n` matrix row by row — [`Triangle::Strict`]: (0,1),
//! (0,2), …, (0,n−1), (1,2), …, (n−2,n−1), `P = n(n−1)/2` (the `torch.triu_indices(n, n, 1)`
//! order); [`Triangle::WithDiagonal`]: (0,0), (0,1), …, (0,n−1), (1,1), …, (n−1,n−1), `P =
//! n(n+1)/2` (`torch.triu_indices(n, n, 0)`). [`pair_index`] and [`pair_row_col`] map between the
//! two (the kernel header `kernels/sym_scatter.h` has the same formulas).
//!
//! - [`sym_scatter`]: `pairs [.., P]` → `a [.., n, n]`, `a[i,j] = a[j,i] = pairs[pair(i,j)]`; the
//!   diagonal is `diagonal` (Strict) or `pairs[pair(i,i)]` (WithDiagonal). Backward
//!   ([`sym_scatter_backward`]): `dpairs[pair(i,j)] = da[i,j] + da[j,i]` for `i < j` (that order),
//!   `da[i,i]` on the diagonal (WithDiagonal; Strict ignores `da`'s diagonal).
//! - [`triu_pairs`]: `a [.., n, n]` → `pairs [.., P]`, `pairs[pair(i,j)] = a[i,j]` (the upper
//!   triangle only, `a` need not be symmetric). Backward ([`triu_pairs_backward`]): `da` = `dpairs`
//!   scattered into the upper triangle, zeros elsewhere.
//!
//! The leading (batch) dimensions of the pairs and the matrices are equal and may be none
//! (`pairs [P]` ↔ `a [n, n]`); no zero dimension; `1 ≤ n ≤` [`MAX_N`] (`n ≥ 2` for Strict, which
//! has no pair at `n = 1`). Seed 000: 8·960 = 7,680 matrices of 19 × 19 from 171 pairs.
//!
//! Storage `T`: f32 or bf16 on the GPU (values move exactly; the backward's sum in f32, rounded
//! once); the CPU twin computes in f64 for any [`Real`]. Nothing saved; **workspace bytes: 0**.
//! On the GPU a block stages a few whole matrices (their contiguous input) in shared memory so that
//! reads and writes are both coalesced; deterministic, no atomics.

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::{check_range, common_loc, host_f64, require_f32_or_bf16, store_f64, Real};
use crate::ffi::{SnugSymScatterParams, SNUG_SYM_SCATTER_MAX_N};
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Error, Result};

/// Largest matrix side the ops take (a staged matrix is `n²` f32 in shared memory).
pub const MAX_N: usize = SNUG_SYM_SCATTER_MAX_N as usize;

/// Which upper-triangle entries the pairs hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Triangle {
    /// `i < j`: `n(n−1)/2` pairs; the diagonal is not among them.
    Strict,
    /// `i ≤ j`: `n(n+1)/2` pairs, the diagonal included.
    WithDiagonal,
}

impl Triangle {
    /// The number of pairs `P` of an `n × n` matrix.
    pub fn pairs(self, n: usize) -> usize {
        match self {
            Triangle::Strict => n * n.saturating_sub(1) / 2,
            Triangle::WithDiagonal => n * (n + 1) / 2,
        }
    }

    fn with_diag(self) -> bool {
        self == Triangle::WithDiagonal
    }
}

/// Index of row `i`'s first pair (as `snug_pair_row_start` in the kernel header).
fn row_start(i: usize, n: usize, tri: Triangle) -> usize {
    i * n - i * (i + 1) / 2 + if tri.with_diag() { i } else { 0 }
}

/// The index of pair `(i, j)` in the pair order: `i < j < n` (Strict) or `i ≤ j < n`
/// (WithDiagonal); `None` outside the triangle.
pub fn pair_index(i: usize, j: usize, n: usize, tri: Triangle) -> Option<usize> {
    let inside = j < n && if tri.with_diag() { i <= j } else { i < j };
    inside.then(|| row_start(i, n, tri) + (j - i) - usize::from(!tri.with_diag()))
}

/// The inverse of [`pair_index`]: `(i, j)` of pair `p`, `None` for `p ≥ P`. A binary search for
/// the last row starting at or before `p` (as `snug_pair_row_col` in the kernel header).
pub fn pair_row_col(p: usize, n: usize, tri: Triangle) -> Option<(usize, usize)> {
    if p >= tri.pairs(n) {
        return None;
    }
    let (mut lo, mut hi) = (0, if tri.with_diag() { n - 1 } else { n - 2 });
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if row_start(mid, n, tri) <= p {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some((lo, p - row_start(lo, n, tri) + lo + usize::from(!tri.with_diag())))
}

/// The batch count of `pairs [.., P]` and `a [.., n, n]` (equal leading dims), validated.
fn dims(op: &'static str, pairs: (&'static str, &[usize]), a: (&'static str, &[usize]), n: usize, tri: Triangle) -> Result<usize> {
    let min_n = if tri.with_diag() { 1 } else { 2 };
    if n < min_n || n > MAX_N {
        return Err(Error::Value { op, arg: "n", expected: format!("a matrix side in {min_n}..={MAX_N} ({tri:?})"), got: n.to_string() });
    }
    let np = tri.pairs(n);
    let (ps, as_) = (pairs.1, a.1);
    let Some((&last, lead)) = ps.split_last() else {
        return Err(Error::Shape { op, arg: pairs.0, expected: format!("[.., P] with P = {np} ({tri:?} pairs of {n} × {n})"), got: ps.to_vec() });
    };
    if last != np || lead.contains(&0) {
        return Err(Error::Shape { op, arg: pairs.0, expected: format!("[.., {np}] ({tri:?} pairs of {n} × {n}, no zero dimension)"), got: ps.to_vec() });
    }
    let mut want = lead.to_vec();
    want.extend([n, n]);
    if as_ != want.as_slice() {
        return Err(Error::Shape { op, arg: a.0, expected: format!("{want:?} ({}'s leading dims, then {n} × {n})", pairs.0), got: as_.to_vec() });
    }
    Ok(lead.iter().product())
}

/// `n` of `a [.., n, n]` (a square matrix batch), validated.
fn side(op: &'static str, arg: &'static str, a: &[usize]) -> Result<usize> {
    match a {
        [.., r, c] if r == c => Ok(*r),
        _ => Err(Error::Shape { op, arg, expected: "[.., n, n] (square matrices)".into(), got: a.to_vec() }),
    }
}

/// Matrices per block: a 2,048-float stage (8 KB) at n = 19 holds 5 matrices, at n ≥ 33 one
/// (from n = 46 the stage is one n² matrix, up to 16 KB at n = 64).
fn per_block(n: usize) -> usize {
    (2048 / (n * n)).max(1)
}

enum Dir {
    /// pairs → matrices (sym_scatter, triu_pairs_backward).
    Scatter,
    /// matrices → pairs (sym_scatter_backward, triu_pairs).
    Gather,
}

/// The CPU twin and the launch: `mirror` selects the symmetric scatter / the summed gather.
#[allow(clippy::too_many_arguments)]
fn run<T: Real>(op: &'static str, dir: Dir, src: View<'_, T>, dst: ViewMut<'_, T>, names: [&'static str; 2], batch: usize, n: usize, tri: Triangle, mirror: bool, diagonal: f32) -> Result<()> {
    let np = tri.pairs(n);
    match common_loc(op, &[(names[0], src.loc()), (names[1], dst.loc())])? {
        Loc::Host => {
            let s = host_f64(op, names[0], &src)?;
            let out: Vec<f64> = match dir {
                Dir::Scatter => (0..batch * n * n)
                    .map(|e| {
                        let (b, i, j) = (e / (n * n), e / n % n, e % n);
                        let pick = |i, j| pair_index(i, j, n, tri).map_or(f64::NAN, |p| s[b * np + p]);
                        match (i.cmp(&j), tri) {
                            (std::cmp::Ordering::Less, _) => pick(i, j),
                            (std::cmp::Ordering::Greater, _) if mirror => pick(j, i),
                            (std::cmp::Ordering::Greater, _) => 0.0,
                            (std::cmp::Ordering::Equal, Triangle::WithDiagonal) => pick(i, i),
                            (std::cmp::Ordering::Equal, Triangle::Strict) => diagonal as f64,
                        }
                    })
                    .collect(),
                Dir::Gather => (0..batch * np)
                    .map(|e| {
                        let (b, p) = (e / np, e % np);
                        let (i, j) = pair_row_col(p, n, tri).unwrap_or((0, 0));
                        let m = &s[b * n * n..(b + 1) * n * n];
                        if mirror && i != j { m[i * n + j] + m[j * n + i] } else { m[i * n + j] }
                    })
                    .collect(),
            };
            store_f64(op, names[1], dst, &out)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(op)?;
            let m = per_block(n);
            let p = SnugSymScatterParams {
                dst: dst.device_ptr().unwrap_or(0) as *mut c_void,
                src: src.device_ptr().unwrap_or(0) as *const c_void,
                batch: batch as u64,
                n: n as u32,
                pairs: np as u32,
                per_block: m as u32,
                with_diag: u32::from(tri.with_diag()),
                mirror: u32::from(mirror),
                diagonal,
            };
            let (kernel, staged) = match (&dir, T::DTYPE) {
                (Dir::Scatter, DType::BF16) => ("sym_scatter_fwd_bf16", np),
                (Dir::Scatter, _) => ("sym_scatter_fwd_f32", np),
                (Dir::Gather, DType::BF16) => ("sym_scatter_bwd_bf16", n * n),
                (Dir::Gather, _) => ("sym_scatter_bwd_f32", n * n),
            };
            let cfg = LaunchConfig { grid_dim: (batch.div_ceil(m).min(1 << 16) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: (4 * m * staged) as u32 };
            // SAFETY: src and dst are device views of T on this handle with the shapes checked by
            // the caller ([batch, P] and [batch, n, n], n ≤ 64, P as the triangle says); each block
            // reads whole matrices b < batch of src into a stage of exactly per_block · (P or n²)
            // floats (the dynamic shared memory given, ≤ 16 KB) and writes each element of dst once.
            unsafe { gpu.launch(op, "sym_scatter", kernel, cfg, &p) }
        }
    }
}

/// Symmetric matrices from their upper-triangle pairs: `pairs [.., P]` → `a [.., n, n]`,
/// `a[i,j] = a[j,i] = pairs[pair(i,j)]`, the diagonal set to `diagonal` (Strict; finite, rounded
/// to `T`) or taken from the pairs (WithDiagonal; `diagonal` ignored). Workspace bytes: 0.
pub fn sym_scatter<T: Real>(pairs: View<'_, T>, n: usize, tri: Triangle, diagonal: f32, a: ViewMut<'_, T>) -> Result<()> {
    const OP: &str = "sym_scatter";
    let batch = dims(OP, ("pairs", pairs.shape()), ("a", a.shape()), n, tri)?;
    if tri == Triangle::Strict {
        check_range(OP, "diagonal", diagonal, true, "a finite value")?;
    }
    run(OP, Dir::Scatter, pairs, a, ["pairs", "a"], batch, n, tri, true, diagonal)
}

/// The backward of [`sym_scatter`]: `dpairs[pair(i,j)] = da[i,j] + da[j,i]` (`i < j`, summed in
/// that order), `da[i,i]` for the diagonal pairs (WithDiagonal). Workspace bytes: 0.
pub fn sym_scatter_backward<T: Real>(da: View<'_, T>, n: usize, tri: Triangle, dpairs: ViewMut<'_, T>) -> Result<()> {
    const OP: &str = "sym_scatter_backward";
    let batch = dims(OP, ("dpairs", dpairs.shape()), ("da", da.shape()), n, tri)?;
    run(OP, Dir::Gather, da, dpairs, ["da", "dpairs"], batch, n, tri, true, 0.0)
}

/// The upper triangle of each matrix as pairs: `a [.., n, n]` → `pairs [.., P]`,
/// `pairs[pair(i,j)] = a[i,j]` (`n` from `a`'s shape). Workspace bytes: 0.
pub fn triu_pairs<T: Real>(a: View<'_, T>, tri: Triangle, pairs: ViewMut<'_, T>) -> Result<()> {
    const OP: &str = "triu_pairs";
    let n = side(OP, "a", a.shape())?;
    let batch = dims(OP, ("pairs", pairs.shape()), ("a", a.shape()), n, tri)?;
    run(OP, Dir::Gather, a, pairs, ["a", "pairs"], batch, n, tri, false, 0.0)
}

/// The backward of [`triu_pairs`]: `da[i,j] = dpairs[pair(i,j)]` on the (strict or inclusive)
/// upper triangle, 0 elsewhere (`n` from `da`'s shape). Workspace bytes: 0.
pub fn triu_pairs_backward<T: Real>(dpairs: View<'_, T>, tri: Triangle, da: ViewMut<'_, T>) -> Result<()> {
    const OP: &str = "triu_pairs_backward";
    let n = side(OP, "da", da.shape())?;
    let batch = dims(OP, ("dpairs", dpairs.shape()), ("da", da.shape()), n, tri)?;
    run(OP, Dir::Scatter, dpairs, da, ["dpairs", "da"], batch, n, tri, false, 0.0)
}
