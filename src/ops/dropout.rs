//! Inverted dropout with a counter-based mask (`kernels/dropout.cu`): element `i` of a call with
//! `(seed, offset)` is kept when `u(seed, offset + i) ≥ p` and scaled by `1/(1 − p)`, else zeroed.
//! The backward recomputes the mask from the same `(seed, offset)` — no mask is stored, so the
//! saved bytes are zero; give every dropout site its own offset (e.g. a running element count) to
//! draw independent masks from one seed per step. The mask is bit-identical on the GPU and the CPU
//! twin (integer hashing and an exact f32 comparison). `T`: f32 or bf16 on the GPU; the twin takes
//! any [`Real`].

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::{check_range, check_shape, common_loc, host_f64, mix64, require_f32_or_bf16, store_f64, Real};
use crate::ffi::SnugDropoutParams;
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Result};

const OP: &str = "dropout";
const OP_BWD: &str = "dropout_backward";

/// Whether element `i` of a call with `(seed, offset)` is kept at drop probability `p`.
pub fn keep(seed: u64, offset: u64, i: u64, p: f32) -> bool {
    let u = ((mix64(mix64(seed) ^ offset.wrapping_add(i)) >> 41) as f32 + 0.5) * (1.0 / 8_388_608.0);
    u >= p
}

fn run<T: Real>(op: &'static str, input: View<'_, T>, out: ViewMut<'_, T>, p: f32, seed: u64, offset: u64) -> Result<()> {
    check_range(op, "p", p, (0.0..1.0).contains(&p), "0 <= p < 1")?;
    check_shape(op, "out", out.shape(), input.shape(), "the input's shape")?;
    let scale = 1.0 / (1.0 - p);
    match common_loc(op, &[("in", input.loc()), ("out", out.loc())])? {
        Loc::Host => {
            let v: Vec<f64> = host_f64(op, "in", &input)?.iter().enumerate().map(|(i, &x)| if keep(seed, offset, i as u64, p) { x * scale as f64 } else { 0.0 }).collect();
            store_f64(op, "out", out, &v)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(op)?;
            let n = input.len() as u64;
            let prm = SnugDropoutParams { in_: input.device_ptr().unwrap_or(0) as *const c_void, out: out.device_ptr().unwrap_or(0) as *mut c_void, n, seed, offset, p, scale };
            // One 16-byte vector (4 f32 / 8 bf16 elements) per thread; the kernel grid-strides over
            // the vectors, the n % 4 (8) tail and, when a pointer is not 16-byte aligned, every element.
            let vec = if T::DTYPE == DType::BF16 { 8 } else { 4 };
            let blocks = n.div_ceil(vec).div_ceil(256).clamp(1, 1 << 20) as u32;
            let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            let kernel = if T::DTYPE == DType::BF16 { "dropout_bf16" } else { "dropout_f32" };
            // SAFETY: in and out are device views of n elements of T on this handle (shapes
            // checked); grid-stride over i < n, 16-byte accesses only when both pointers are
            // 16-byte aligned (checked in the kernel).
            unsafe { gpu.launch(op, "dropout", kernel, cfg, &prm) }
        }
    }
}

/// `y = dropout(x)` with drop probability `p` (`0 ≤ p < 1`).
pub fn dropout<T: Real>(x: View<'_, T>, y: ViewMut<'_, T>, p: f32, seed: u64, offset: u64) -> Result<()> {
    run(OP, x, y, p, seed, offset)
}

/// `dx = dy·mask/(1 − p)` with the forward's `(p, seed, offset)`.
pub fn dropout_backward<T: Real>(dy: View<'_, T>, dx: ViewMut<'_, T>, p: f32, seed: u64, offset: u64) -> Result<()> {
    run(OP_BWD, dy, dx, p, seed, offset)
}
