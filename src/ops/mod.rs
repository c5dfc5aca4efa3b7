//! Ops: each validates its arguments, reports its workspace and saved bytes as pure functions of
//! shapes, and runs either its CUDA kernel (device views) or its CPU twin (host views) behind one
//! signature. The CPU twins are generic over [`Real`] so that tests run them in f64 as the
//! reference.

pub mod adamw;
pub mod causal_conv1d;
pub mod eigh;
pub mod laplacian_pe;
pub mod selective_scan;

use crate::memory::Loc;
use crate::{Element, Error, Result};

/// Float types the CPU twins compute in: f32 (same precision as the kernels) and f64 (reference).
pub trait Real: Element + num_traits::Float + num_traits::FromPrimitive + std::iter::Sum {}
impl Real for f32 {}
impl Real for f64 {}

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

/// `got` must equal `want` (the shape of argument `like`).
pub(crate) fn same_shape(op: &'static str, arg: &'static str, got: &[usize], want: &[usize], like: &str) -> Result<()> {
    if got != want {
        return Err(Error::Shape { op, arg, expected: format!("{want:?} (the shape of {like})"), got: got.to_vec() });
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
