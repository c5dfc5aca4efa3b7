//! Ops: each validates its arguments, reports its workspace and saved bytes as pure functions of
//! shapes, and runs either its CUDA kernel (device views) or its CPU twin (host views) behind one
//! signature. The CPU twins are generic over [`Real`] so that tests run them in f64 as the
//! reference.

pub mod adamw;
pub mod causal_conv1d;
pub mod dml;
pub mod dropout;
pub mod eigh;
pub mod elementwise;
pub mod grad_norm;
pub mod gemm;
pub mod laplacian_pe;
pub mod layer_norm;
pub mod linear;
pub mod local_attn;
pub mod local_graph_attention;
pub mod mamba;
pub mod selective_scan;

use crate::memory::{Loc, View, ViewMut};
use crate::{Arena, Borrows, Buf, Element, Error, Result};

/// Float types the CPU twins take: f32 (as the kernels), f64 (the reference) and bf16 storage
/// (computed in f64, rounded once on store).
pub trait Real: Element + num_traits::Float + num_traits::FromPrimitive + std::iter::Sum {}
impl Real for f32 {}
impl Real for f64 {}
impl Real for half::bf16 {}

/// All arguments on one place, or a [`Error::DeviceMismatch`] naming the first that is not.
pub(crate) fn common_loc<'a>(op: &'static str, locs: &[(&'static str, Loc<'a>)]) -> Result<Loc<'a>> {
    let (first_arg, first) = locs[0];
    for &(arg, loc) in &locs[1..] {
        if !loc.same(&first) {
            let expected = match first {
                Loc::Host => "cpu (like ".to_string() + first_arg + ")",
                Loc::Cuda(_) => format!("{first} on the same GPU handle as {first_arg}"),
            };
            return Err(Error::DeviceMismatch { op, arg, expected, got: loc.to_string() });
        }
    }
    Ok(first)
}

/// `got` must equal `want`; `what` explains where `want` comes from (e.g. "the shape of param").
pub(crate) fn check_shape(op: &'static str, arg: &'static str, got: &[usize], want: &[usize], what: &str) -> Result<()> {
    if got != want {
        return Err(Error::Shape { op, arg, expected: format!("{want:?} ({what})"), got: got.to_vec() });
    }
    Ok(())
}

/// GPU kernels take f32 (bf16 where an op says so); f64 is the CPU reference only.
pub(crate) fn require_f32<T: Element>(op: &'static str) -> Result<()> {
    if T::DTYPE != crate::DType::F32 {
        return Err(Error::Unsupported { op, what: format!("{} on the GPU (f32 only; f64 runs on the CPU twin)", T::DTYPE) });
    }
    Ok(())
}

fn not_host(op: &'static str, arg: &'static str) -> Error {
    Error::DeviceMismatch { op, arg, expected: "cpu".into(), got: "cuda".into() }
}

/// A host view's elements widened to f64 (the CPU twins compute in f64).
pub(crate) fn host_f64<T: Real>(op: &'static str, arg: &'static str, v: &View<'_, T>) -> Result<Vec<f64>> {
    v.as_slice().map(|s| s.iter().map(|x| x.to_f64().unwrap_or(f64::NAN)).collect()).ok_or_else(|| not_host(op, arg))
}

/// Writes f64 results into a host view, rounding to `T`.
pub(crate) fn store_f64<T: Real>(op: &'static str, arg: &'static str, dst: ViewMut<'_, T>, src: &[f64]) -> Result<()> {
    let d = dst.into_slice_mut().ok_or_else(|| not_host(op, arg))?;
    for (o, &x) in d.iter_mut().zip(src) {
        *o = T::from_f64(x).unwrap_or_else(T::nan);
    }
    Ok(())
}

/// GPU kernels templated on their storage: f32 or bf16 activations.
pub(crate) fn require_f32_or_bf16<T: Element>(op: &'static str) -> Result<()> {
    if !matches!(T::DTYPE, crate::DType::F32 | crate::DType::BF16) {
        return Err(Error::Unsupported { op, what: format!("{} activations on the GPU (f32 or bf16; f64 runs on the CPU twin)", T::DTYPE) });
    }
    Ok(())
}

/// A finite float in a range, or a [`Error::Value`].
pub(crate) fn check_range(op: &'static str, arg: &'static str, v: f32, ok: bool, expected: &str) -> Result<()> {
    if !v.is_finite() || !ok {
        return Err(Error::Value { op, arg, expected: expected.to_string(), got: v.to_string() });
    }
    Ok(())
}

/// The GPU workspaces a composed layer lends to its ops: the cuBLAS workspace and a shared f32
/// workspace.
pub(crate) type Lent<'b> = (Option<ViewMut<'b, u8>>, Option<ViewMut<'b, f32>>);

/// Runs `f` in a fresh borrow scope of `arena` with the layer's workspaces (`None` on the CPU,
/// where the twins need none). Composed layers make one op call per scope, so no buffer is ever
/// borrowed twice in one scope (the arena would refuse it).
pub(crate) fn scoped(arena: &mut Arena, cublas_ws: Buf<u8>, ws: Buf<f32>, f: impl for<'b> FnOnce(&Borrows<'b>, Option<ViewMut<'b, u8>>, Option<ViewMut<'b, f32>>) -> Result<()>) -> Result<()> {
    let gpu = arena.device().gpu().is_some();
    let v = arena.borrow();
    let lent: Lent<'_> = if gpu { (Some(v.write(cublas_ws)?), Some(v.write(ws)?)) } else { (None, None) };
    f(&v, lent.0, lent.1)
}
