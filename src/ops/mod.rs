//! Ops: each validates its arguments, reports its workspace and saved bytes as pure functions of
//! shapes, and runs either its CUDA kernel (device views) or its CPU twin (host views) behind one
//! signature. The CPU twins are generic over [`Real`] so that tests run them in f64 as the
//! reference.

pub mod adamw;
pub mod bce;
pub mod causal_conv1d;
pub mod conv1d;
pub mod cosine_sim;
pub mod cross_entropy;
pub mod dml;
pub mod dropout;
pub mod eigh;
pub mod elementwise;
pub mod gemm;
pub mod grad_norm;
pub mod laplacian_pe;
pub mod layer_norm;
pub mod linear;
pub mod local_attn;
pub mod local_graph_attention;
pub mod mamba;
pub mod repeat_interleave;
pub mod selective_scan;
pub mod sym_scatter;
pub mod topk;
pub mod transpose;
pub mod weight_norm;

use crate::memory::{Loc, View, ViewMut};
use crate::{Arena, Borrows, Buf, Element, Error, Result};

/// Float types the CPU twins take: f32 (as the kernels), f64 (the reference) and bf16 storage
/// (computed in f64, rounded once on store).
pub trait Real: Element + num_traits::Float + num_traits::FromPrimitive + std::iter::Sum {
    /// `x` correctly rounded to `Self` (round to nearest, ties to even), as the GPU rounds.
    /// Use this rather than `FromPrimitive::from_f64`: `half::bf16::from_f64` (half 2.x) drops
    /// the sticky bits below f32 precision and rounds some values just above a tie down
    /// (e.g. 1.00390637… → 1.0 instead of 1.0078125), found on the first GPU run.
    fn round_f64(x: f64) -> Self;
}
impl Real for f32 {
    fn round_f64(x: f64) -> f32 {
        x as f32 // Rust's f64 → f32 cast rounds to nearest, ties to even
    }
}
impl Real for f64 {
    fn round_f64(x: f64) -> f64 {
        x
    }
}
impl Real for half::bf16 {
    fn round_f64(x: f64) -> half::bf16 {
        bf16_rne(x)
    }
}

/// `x` rounded to bf16, nearest with ties to even; NaN stays NaN, overflow goes to ±inf.
///
/// Two steps without double rounding: f64 → f32 rounding to odd (truncate, then set the last bit
/// when inexact; f32 keeps 16 bits more than bf16, so the bit marks "above the truncation"
/// without ever forming a false tie), then f32 → bf16 nearest-even on the bits.
pub fn bf16_rne(x: f64) -> half::bf16 {
    if x.is_nan() {
        return half::bf16::NAN;
    }
    let mut f = x as f32;
    if f as f64 != x {
        // f is x rounded to nearest f32 (or ±inf past f32's range): step towards zero if it
        // rounded away, giving the truncation (f32::MAX for a finite overflow), then mark odd.
        if (f as f64).abs() > x.abs() {
            f = f32::from_bits(f.to_bits() - 1);
        }
        f = f32::from_bits(f.to_bits() | 1);
    }
    let b = f.to_bits();
    let r = (b + 0x7fff + ((b >> 16) & 1)) >> 16;
    half::bf16::from_bits(r as u16)
}

/// How a loss (dml, bce, cross_entropy) reduces over positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// Per position (the loss has the positions' shape).
    None,
    /// Mean over positions (cross_entropy: over the rows not ignored): `[1]`.
    Mean,
    /// Sum over positions: `[1]`.
    Sum,
}

impl Reduction {
    /// The twins' reduction of f64 per-position losses; `count` divides the mean.
    pub(crate) fn apply(self, losses: Vec<f64>, count: usize) -> Vec<f64> {
        match self {
            Reduction::None => losses,
            Reduction::Sum => vec![losses.iter().sum()],
            Reduction::Mean => vec![losses.iter().sum::<f64>() / count as f64],
        }
    }
}

/// splitmix64's finaliser: the counter-based random bits of dropout and dml sampling (the
/// kernels' `snug_mix64`, kernels/rng.cuh).
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

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
        *o = T::round_f64(x);
    }
    Ok(())
}

/// Sets every element of a view to zero (all-zero bits): a fill on the host, an async memset on
/// the view's GPU stream.
pub(crate) fn zero<T: Element>(op: &'static str, v: &mut ViewMut<'_, T>) -> Result<()> {
    let bytes = v.len() * std::mem::size_of::<T>();
    match v.loc() {
        Loc::Host => {
            if let Some(s) = v.as_slice_mut() {
                s.fill(<T as bytemuck::Zeroable>::zeroed());
            }
            Ok(())
        }
        Loc::Cuda(gpu) => {
            gpu.context().bind_to_thread().map_err(|e| Error::driver(format!("{op}: binding the context"), e))?;
            // SAFETY: the view is `bytes` bytes of device memory on this handle, uniquely
            // borrowed; the memset is queued on its stream, ordered with the kernels around it.
            unsafe { cudarc::driver::result::memset_d8_async(v.device_ptr().unwrap_or(0), 0, bytes, gpu.stream().cu_stream()) }.map_err(|e| Error::driver(format!("{op}: zeroing"), e))
        }
    }
}

/// A GPU workspace of at least `want` elements: the view, or a typed error naming the function
/// that gives its size (`sized_by`, e.g. "loss_workspace_bytes"). `want == 0` accepts `None`.
pub(crate) fn require_workspace<'a, T: Element>(op: &'static str, ws: Option<ViewMut<'a, T>>, want: usize, sized_by: &str) -> Result<Option<ViewMut<'a, T>>> {
    match ws {
        Some(w) if w.len() >= want => Ok(Some(w)),
        Some(w) => Err(Error::Length { op, arg: "workspace", expected: format!("at least {want} {} ({sized_by})", T::DTYPE), got: w.len() }),
        None if want == 0 => Ok(None),
        None => Err(Error::Value { op, arg: "workspace", expected: format!("{want} {} on the GPU ({sized_by})", T::DTYPE), got: "None".into() }),
    }
}

/// [`require_workspace`] for an op that always needs one on the GPU (`None` is an error even when
/// `want` is 0).
pub(crate) fn need_workspace<'a, T: Element>(op: &'static str, ws: Option<ViewMut<'a, T>>, want: usize, sized_by: &str) -> Result<ViewMut<'a, T>> {
    require_workspace(op, ws, want, sized_by)?.ok_or_else(|| Error::Value { op, arg: "workspace", expected: format!("{want} {} on the GPU ({sized_by})", T::DTYPE), got: "None".into() })
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

#[cfg(test)]
mod tests {
    use super::bf16_rne;

    /// Independent reference: bracket x between adjacent bf16 values by search, compare the two
    /// distances exactly (Sterbenz: both differences are exact in f64), ties to the even one.
    fn reference(x: f64) -> u16 {
        if x.is_nan() {
            return half::bf16::NAN.to_bits();
        }
        let neg = x.is_sign_negative();
        let a = x.abs();
        let val = |m: u32| half::bf16::from_bits(m as u16).to_f64();
        // magnitudes 0 ..= 0x7f7f are finite bf16, 0x7f80 is inf
        let mut lo = ((a as f32).to_bits() >> 16).min(0x7f80);
        while lo > 0 && val(lo) > a {
            lo -= 1;
        }
        while lo < 0x7f80 && val(lo + 1) <= a {
            lo += 1;
        }
        let m = if lo == 0x7f80 {
            lo
        } else if lo == 0x7f7f {
            // above the largest finite: overflow threshold is max + half an ulp (tie → even = inf)
            let half_ulp = (val(0x7f7f) - val(0x7f7e)) / 2.0;
            if a - val(0x7f7f) >= half_ulp { 0x7f80 } else { 0x7f7f }
        } else {
            let (d1, d2) = (a - val(lo), val(lo + 1) - a);
            if d1 < d2 || (d1 == d2 && lo.is_multiple_of(2)) { lo } else { lo + 1 }
        };
        (m | if neg { 0x8000 } else { 0 }) as u16
    }

    #[test]
    fn bf16_rne_rounds_correctly_near_ties_and_at_the_edges() {
        let mut cases: Vec<f64> = vec![0.0, -0.0, 1.0, -1.0, f64::INFINITY, f64::NEG_INFINITY, f64::MAX, f64::MIN_POSITIVE, 1e-300, -1e-300];
        // The value the first GPU run caught half::bf16::from_f64 rounding down: f32 0x3f808001.
        cases.push(f32::from_bits(0x3f80_8001) as f64);
        // Around every tie of a spread of bf16 values (normal, subnormal, largest finite):
        // exactly on it, and 1, 2, 2^20, 2^28 f64 ulps either side.
        let mut r = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r
        };
        let mut mids = vec![0x7f7eu32, 0x7f7f, 0x0000, 0x0001, 0x007f, 0x0080, 0x3f80, 0x3f7f];
        for _ in 0..4000 {
            mids.push((next() % 0x7f7f) as u32);
        }
        for m in mids {
            let lo = half::bf16::from_bits(m as u16).to_f64();
            let hi = if m == 0x7f7f { lo + (lo - half::bf16::from_bits(0x7f7e).to_f64()) } else { half::bf16::from_bits(m as u16 + 1).to_f64() };
            let mid = lo + (hi - lo) / 2.0;
            for k in [0i64, 1, 2, 1 << 20, 1 << 28] {
                for s in [-1i64, 1] {
                    let b = (mid.to_bits() as i64 + s * k) as u64;
                    let x = f64::from_bits(b);
                    cases.push(x);
                    cases.push(-x);
                }
            }
        }
        // Random f64 bit patterns over the whole exponent range, and random f32 values.
        for _ in 0..200_000 {
            let x = f64::from_bits(next());
            cases.push(x);
            cases.push(f32::from_bits(next() as u32) as f64);
        }
        let mut half_crate_wrong = 0;
        for &x in &cases {
            let (got, want) = (bf16_rne(x).to_bits(), reference(x));
            assert!(got == want || (x.is_nan() && half::bf16::from_bits(got).is_nan()), "x = {x:e} ({:016x}): got {got:04x}, want {want:04x}", x.to_bits());
            if !x.is_nan() && half::bf16::from_f64(x).to_bits() != want {
                half_crate_wrong += 1;
            }
        }
        // Not an assertion on a dependency's behaviour, just the reason this function exists.
        eprintln!("half::bf16::from_f64 disagreed with correct rounding on {half_crate_wrong} of {} cases", cases.len());
    }
}
