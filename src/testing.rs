//! Test harness shared by `tests/*.rs` (public so that downstream crates can test their own ops
//! the same way): seeded inputs, NaN poisoning, comparison against the f64 CPU twin, and the GPU
//! skip/require rule.
//!
//! GPU tests call [`gpu_or_skip`]: without a usable GPU (no driver, no device, or kernels not
//! compiled) it prints `skipped: no CUDA device (<why>)` and the test passes — unless
//! `SNUG_REQUIRE_GPU=1`, where it panics so the GPU bundle cannot pass vacuously.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::{kernels, Arena, Buf, Device, Element, Result};

/// Environment variable that turns GPU skips into failures.
pub const REQUIRE_GPU_ENV: &str = "SNUG_REQUIRE_GPU";

/// Whether `SNUG_REQUIRE_GPU` is set to something other than `0` or empty.
pub fn require_gpu() -> bool {
    std::env::var(REQUIRE_GPU_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `cuda:0` for a GPU test, or `None` after printing `skipped: no CUDA device (<why>)`.
///
/// # Panics
/// When there is no usable GPU and `SNUG_REQUIRE_GPU=1`.
pub fn gpu_or_skip(test: &str) -> Option<Device> {
    let why = if !kernels::compiled() {
        "the kernels were not compiled (no nvcc at build time)".to_string()
    } else {
        match Device::cuda(0) {
            Ok(d) => return Some(d),
            Err(e) => e.to_string(),
        }
    };
    if require_gpu() {
        panic!("{test}: {REQUIRE_GPU_ENV}=1 but no GPU can be used: {why}");
    }
    // Written to the stderr handle directly, not through eprintln!, so libtest's output capture
    // does not hide it: a skipped GPU test is visible in every run.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{test}: skipped: no CUDA device ({why})");
    None
}

/// A seeded generator (ChaCha8: the same stream on every platform).
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` standard-normal samples scaled by `std`.
pub fn randn(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n).map(|_| rng.sample::<f32, _>(StandardNormal) * std).collect()
}

/// `n` uniform samples in `[lo, hi)`.
pub fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// The byte every output is filled with before a launch: `0xFF` bytes are NaN in f32, bf16 and
/// f16, so an element the kernel forgot to write can never pass a comparison.
pub const POISON: u8 = 0xFF;

/// Fills `buf` with NaNs (see [`POISON`]).
pub fn poison<T: Element>(arena: &mut Arena, buf: Buf<T>) -> Result<()> {
    arena.fill_bytes(buf, POISON)
}

/// Widens to f64 for comparisons.
pub trait ToF64: Copy {
    /// The value as f64.
    fn to_f64(self) -> f64;
}
impl ToF64 for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl ToF64 for f64 {
    fn to_f64(self) -> f64 {
        self
    }
}
impl ToF64 for half::bf16 {
    fn to_f64(self) -> f64 {
        half::bf16::to_f64(self)
    }
}
impl ToF64 for half::f16 {
    fn to_f64(self) -> f64 {
        half::f16::to_f64(self)
    }
}

/// Absolute and relative tolerance: an element passes when `|got − want| ≤ atol` or
/// `|got − want| ≤ rtol·max(|got|, |want|)` (`approx::relative_eq!`). NaN never passes.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    /// Absolute tolerance (for values near zero).
    pub atol: f64,
    /// Relative tolerance.
    pub rtol: f64,
}

impl Tol {
    /// SPEC §2: f32 relative error ≤ 1e-5.
    pub const F32: Tol = Tol { atol: 1e-6, rtol: 1e-5 };
    /// SPEC §2: long reductions in f32, ≤ 1e-4.
    pub const F32_REDUCTION: Tol = Tol { atol: 1e-5, rtol: 1e-4 };
    /// SPEC §2: bf16 storage, ≤ 1e-2.
    pub const BF16: Tol = Tol { atol: 1e-3, rtol: 1e-2 };
}

/// Compares `got` with the f64 reference `want`; on failure the message names the worst element.
pub fn compare<G: ToF64>(what: &str, got: &[G], want: &[f64], tol: Tol) -> std::result::Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} elements, reference has {}", got.len(), want.len()));
    }
    let mut bad = 0usize;
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g.to_f64();
        if !approx::relative_eq!(g, w, epsilon = tol.atol, max_relative = tol.rtol) {
            bad += 1;
            let err = if g.is_nan() || w.is_nan() { f64::INFINITY } else { (g - w).abs() / w.abs().max(tol.atol) };
            if worst.is_none_or(|(_, e)| err > e) {
                worst = Some((i, err));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, err)) => Err(format!(
            "{what}: {bad} of {} elements outside atol {:e} / rtol {:e}; worst [{i}]: got {:e}, want {:e} (relative error {err:e})",
            got.len(),
            tol.atol,
            tol.rtol,
            got[i].to_f64(),
            want[i]
        )),
    }
}

/// [`compare`], panicking with its message.
#[track_caller]
pub fn assert_close<G: ToF64>(what: &str, got: &[G], want: &[f64], tol: Tol) {
    if let Err(m) = compare(what, got, want, tol) {
        panic!("{m}");
    }
}

/// f32 → f64 copy, for feeding the same inputs to the f64 twin.
pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
