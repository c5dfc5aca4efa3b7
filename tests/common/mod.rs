//! Matrix and graph generators shared by tests/eigh.rs and tests/laplacian_pe.rs, and f64 checks
//! of eigendecompositions. Every generator is seeded.
#![allow(dead_code, clippy::needless_range_loop)]

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use snug::testing::randn;

/// Kinds of test matrices (row-major n×n, symmetric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// (X + Xᵀ)/2, X standard normal: simple, well-separated spectrum.
    RandomSymmetric,
    /// Laplacian of a complete graph with uniform random weights.
    DenseGraph,
    /// Laplacian of a random graph with edge probability 0.2 (often disconnected: repeated 0s).
    SparseGraph,
    /// Laplacian of the EEG-like 19-electrode layout (10-20 system, Gaussian distance weights),
    /// embedded in the top-left corner for n ≠ 19 (padded with a weighted path).
    EegGraph,
    /// Laplacian of two disjoint cycles (exactly repeated eigenvalues: 0 twice, pairs).
    Disconnected,
    /// Laplacian of a cycle (regular: eigenvalues in equal pairs).
    Regular,
    /// Diagonal with repeated entries.
    Diagonal,
    /// All zeros.
    Zero,
}

pub const FAMILIES: [Family; 8] = [
    Family::RandomSymmetric,
    Family::DenseGraph,
    Family::SparseGraph,
    Family::EegGraph,
    Family::Disconnected,
    Family::Regular,
    Family::Diagonal,
    Family::Zero,
];

/// 10-20 electrode positions (x, y) on the unit disc, 19 channels.
const EEG_XY: [(f64, f64); 19] = [
    (-0.31, 0.95), (0.31, 0.95), (-0.81, 0.59), (-0.39, 0.50), (0.0, 0.45), (0.39, 0.50), (0.81, 0.59),
    (-1.0, 0.0), (-0.5, 0.0), (0.0, 0.0), (0.5, 0.0), (1.0, 0.0), (-0.81, -0.59), (-0.39, -0.50),
    (0.0, -0.45), (0.39, -0.50), (0.81, -0.59), (-0.31, -0.95), (0.31, -0.95),
];

/// A weighted adjacency (row-major, symmetric, zero diagonal) of the given family's graph.
pub fn adjacency(rng: &mut ChaCha8Rng, family: Family, n: usize) -> Vec<f64> {
    let mut a = vec![0.0; n * n];
    let set = |a: &mut Vec<f64>, i: usize, j: usize, w: f64| {
        a[i * n + j] = w;
        a[j * n + i] = w;
    };
    match family {
        Family::DenseGraph => {
            for i in 0..n {
                for j in i + 1..n {
                    let w = rng.random_range(0.05..1.0);
                    set(&mut a, i, j, w);
                }
            }
        }
        Family::SparseGraph => {
            for i in 0..n {
                for j in i + 1..n {
                    if rng.random_range(0.0..1.0) < 0.2 {
                        let w = rng.random_range(0.1..1.0);
                        set(&mut a, i, j, w);
                    }
                }
            }
        }
        Family::EegGraph => {
            let m = n.min(19);
            for i in 0..m {
                for j in i + 1..m {
                    let (dx, dy) = (EEG_XY[i].0 - EEG_XY[j].0, EEG_XY[i].1 - EEG_XY[j].1);
                    let w = (-(dx * dx + dy * dy) / 0.25).exp() * rng.random_range(0.8..1.2);
                    if w > 0.05 {
                        set(&mut a, i, j, w);
                    }
                }
            }
            for i in m..n {
                set(&mut a, i - 1, i, rng.random_range(0.2..1.0));
            }
        }
        Family::Disconnected => {
            let h = n / 2;
            for (lo, hi) in [(0, h), (h, n)] {
                if hi - lo >= 2 {
                    for i in lo..hi {
                        let j = if i + 1 == hi { lo } else { i + 1 };
                        if i != j {
                            set(&mut a, i, j, 1.0);
                        }
                    }
                }
            }
        }
        Family::Regular => {
            for i in 0..n {
                let j = (i + 1) % n;
                if i != j {
                    set(&mut a, i, j, 1.0);
                }
            }
        }
        _ => {}
    }
    a
}

/// Combinatorial Laplacian D − A.
pub fn laplacian(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        let d: f64 = (0..n).map(|j| a[i * n + j]).sum();
        for j in 0..n {
            l[i * n + j] = if i == j { d - a[i * n + j] } else { -a[i * n + j] };
        }
    }
    l
}

/// A symmetric test matrix of the family, as f32 (the GPU's input precision).
pub fn matrix(rng: &mut ChaCha8Rng, family: Family, n: usize) -> Vec<f32> {
    let m: Vec<f64> = match family {
        Family::RandomSymmetric => {
            let x = randn(rng, n * n, 1.0);
            (0..n * n).map(|k| 0.5 * (x[k] as f64 + x[(k % n) * n + k / n] as f64)).collect()
        }
        Family::Diagonal => {
            let vals: Vec<f64> = (0..n).map(|i| ((i * 7) % 5) as f64 - 2.0).collect(); // repeats
            (0..n * n).map(|k| if k / n == k % n { vals[k / n] } else { 0.0 }).collect()
        }
        Family::Zero => vec![0.0; n * n],
        g => laplacian(&adjacency(rng, g, n), n),
    };
    m.iter().map(|&x| x as f32).collect()
}

pub fn fro(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// ‖AV − VΛ‖_F / max(‖A‖_F, tiny) and max |VᵀV − I| for one matrix (all f64).
pub fn residual_and_orthogonality(a: &[f64], w: &[f64], v: &[f64], n: usize) -> (f64, f64) {
    let mut res = 0.0;
    for i in 0..n {
        for c in 0..n {
            let av: f64 = (0..n).map(|r| a[i * n + r] * v[r * n + c]).sum();
            let d = av - v[i * n + c] * w[c];
            res += d * d;
        }
    }
    let mut orth: f64 = 0.0;
    for c in 0..n {
        for d in 0..n {
            let dot: f64 = (0..n).map(|r| v[r * n + c] * v[r * n + d]).sum();
            orth = orth.max((dot - if c == d { 1.0 } else { 0.0 }).abs());
        }
    }
    (res.sqrt() / fro(a).max(1e-30), orth)
}

/// Symmetric completion of the upper triangle (what eigh reads).
pub fn sym_upper(a: &[f64], n: usize) -> Vec<f64> {
    (0..n * n).map(|k| { let (i, j) = (k / n, k % n); if i <= j { a[k] } else { a[j * n + i] } }).collect()
}

/// Index ranges of eigenvalues (ascending) closer than `gap` to their neighbour.
pub fn clusters(w: &[f64], gap: f64) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=w.len() {
        if i == w.len() || w[i] - w[i - 1] > gap {
            out.push(start..i);
            start = i;
        }
    }
    out
}

/// max |P_a − P_b| of the projectors onto columns `r` of two eigenvector matrices.
pub fn projector_diff(va: &[f64], vb: &[f64], n: usize, r: std::ops::Range<usize>) -> f64 {
    let mut m: f64 = 0.0;
    for i in 0..n {
        for j in 0..n {
            let pa: f64 = r.clone().map(|c| va[i * n + c] * va[j * n + c]).sum();
            let pb: f64 = r.clone().map(|c| vb[i * n + c] * vb[j * n + c]).sum();
            m = m.max((pa - pb).abs());
        }
    }
    m
}

/// Whether column c follows the sign convention, allowing for f32 noise near a tie.
pub fn sign_ok(v: &[f64], n: usize, c: usize) -> bool {
    let col: Vec<f64> = (0..n).map(|r| v[r * n + c]).collect();
    let sum: f64 = col.iter().sum();
    let l1: f64 = col.iter().map(|x| x.abs()).sum();
    if sum.abs() > 1e-4 * l1 {
        return sum > 0.0;
    }
    if sum.abs() > 1e-6 * l1 {
        return true; // too close to the tie threshold to judge in f32
    }
    let vmax = col.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let first_big = col.iter().find(|x| x.abs() >= vmax * (1.0 - 1e-3));
    let first_exact = col.iter().find(|x| x.abs() >= vmax * (1.0 - 1e-5));
    // Near-equal magnitudes can make f32 and f64 pick different first entries; accept either.
    first_big.is_some_and(|x| *x > 0.0) || first_exact.is_some_and(|x| *x > 0.0)
}

pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
