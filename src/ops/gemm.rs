//! Batched matrix products through cuBLAS, and their deterministic sum over the batch
//! (`kernels/gemm.cu`).
//!
//! Row-major semantics: `C[b] (M×N) = α·op(A[b])·op(B[b]) + β·C[b]` with `op(X) = X` or `Xᵀ`.
//! Each operand is a matrix `[rows, cols]`, broadcast over the batch, or a batch `[batch, rows,
//! cols]`, or one group of a grouped batch `[batch, groups, rows, cols]` ([`Mat::group`]: e.g. one
//! direction's half `[S, D, L]` of a bidirectional scan's `[S, 2D, L]` output, read as
//! `[S, 2, D, L]`); `c` decides the batch. Any operand may also be a window of its columns
//! ([`Mat::columns`], [`MatMut::columns`]: the rows keep their pitch) — a conv1d tap reads a
//! time-shifted window of `x [C, L]` and accumulates into a window of `y`. Storage `T` is f32 or bf16 on the GPU, with f32 compute
//! (`CUBLAS_COMPUTE_32F`, default math mode: no TF32), and `C` is `T` or f32; the CPU twin computes
//! in f64 for any [`Real`] and rounds once. With `β = 0`, `C` is not read (NaN in it is fine).
//!
//! [`gemm_sum_batches`] computes `C (M×N) = α·Σ_b op(A[b])·op(B[b]) + β·C` — a weight gradient
//! summed over sequences — as per-batch products in an f32 workspace
//! ([`sum_batches_workspace_bytes`]) plus a fixed-order sum (no split-K atomics), so it is bitwise
//! reproducible.
//!
//! Workspace of cuBLAS itself: optional. With a [`CUBLAS_WORKSPACE_BYTES`] buffer from the plan it
//! is handed to cuBLAS (`cublasSetWorkspace`) for the call; without one cuBLAS runs without a
//! workspace. Either way cuBLAS allocates nothing during a step; the handle is created (and its
//! small fixed state allocated) on the first call, so call [`crate::Gpu::cublas`] before measuring.

use std::ffi::{c_int, c_longlong, c_void};

use cudarc::cublas::sys as cb;
use cudarc::driver::LaunchConfig;

use super::{common_loc, require_f32, require_f32_or_bf16, need_workspace, Real};
use crate::ffi::SnugGemmSumParams;
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Element, Error, Result};

const OP: &str = "gemm";
const OP_SUM: &str = "gemm_sum_batches";

/// Bytes of the cuBLAS workspace worth planning (NVIDIA's recommendation for Hopper; ample on
/// older GPUs).
pub const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Transposes and scalars of a product.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmSpec {
    /// Use `Aᵀ`.
    pub trans_a: bool,
    /// Use `Bᵀ`.
    pub trans_b: bool,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the previous `C` (0: overwrite without reading).
    pub beta: f32,
}

impl GemmSpec {
    /// `C = op(A)·op(B)` (α = 1, β = 0).
    pub const fn new(trans_a: bool, trans_b: bool) -> GemmSpec {
        GemmSpec { trans_a, trans_b, alpha: 1.0, beta: 0.0 }
    }

    /// The same product accumulated into `C` (β = 1).
    pub const fn accumulate(self) -> GemmSpec {
        GemmSpec { beta: 1.0, ..self }
    }
}

/// A GEMM input: a view, or one group of a `[batch, groups, rows, cols]` view; optionally only
/// a window of its columns ([`Mat::columns`]).
#[derive(Debug)]
pub struct Mat<'a, T: Element> {
    view: View<'a, T>,
    group: Option<usize>,
    window: Option<(usize, usize)>,
}

impl<'a, T: Element> Mat<'a, T> {
    /// Group `g` of a `[batch, groups, rows, cols]` view: the batch of matrices `view[:, g]`.
    pub fn group(view: View<'a, T>, g: usize) -> Mat<'a, T> {
        Mat { view, group: Some(g), window: None }
    }

    /// Only the columns `start .. start + count` of every matrix (the rows keep their pitch, the
    /// full column count): e.g. a time window of a `[channels, L]` map, shifted per tap.
    pub fn columns(self, start: usize, count: usize) -> Mat<'a, T> {
        Mat { window: Some((start, count)), ..self }
    }
}

impl<'a, T: Element> From<View<'a, T>> for Mat<'a, T> {
    fn from(view: View<'a, T>) -> Self {
        Mat { view, group: None, window: None }
    }
}

/// A GEMM output: a mutable view, or one group of a `[batch, groups, rows, cols]` view;
/// optionally only a window of its columns ([`MatMut::columns`], the others not touched).
#[derive(Debug)]
pub struct MatMut<'a, T: Element> {
    view: ViewMut<'a, T>,
    group: Option<usize>,
    window: Option<(usize, usize)>,
}

impl<'a, T: Element> MatMut<'a, T> {
    /// Group `g` of a `[batch, groups, rows, cols]` view (the other groups are not touched).
    pub fn group(view: ViewMut<'a, T>, g: usize) -> MatMut<'a, T> {
        MatMut { view, group: Some(g), window: None }
    }

    /// Only the columns `start .. start + count` of every matrix (the others are not touched).
    pub fn columns(self, start: usize, count: usize) -> MatMut<'a, T> {
        MatMut { window: Some((start, count)), ..self }
    }
}

impl<'a, T: Element> From<ViewMut<'a, T>> for MatMut<'a, T> {
    fn from(view: ViewMut<'a, T>) -> Self {
        MatMut { view, group: None, window: None }
    }
}

/// One operand's layout in elements: batched (else broadcast), rows, cols, row pitch, batch
/// stride, offset of the first element.
#[derive(Clone, Copy, Debug)]
struct Layout {
    batch: Option<usize>,
    rows: usize,
    cols: usize,
    ld: usize,
    stride: usize,
    offset: usize,
}

fn layout(op: &'static str, arg: &'static str, shape: &[usize], group: Option<usize>, window: Option<(usize, usize)>) -> Result<Layout> {
    let bad = |expected: String| Error::Shape { op, arg, expected, got: shape.to_vec() };
    let l = match (shape, group) {
        (&[r, c], None) if r >= 1 && c >= 1 => Layout { batch: None, rows: r, cols: c, ld: c, stride: 0, offset: 0 },
        (&[b, r, c], None) if b >= 1 && r >= 1 && c >= 1 => Layout { batch: Some(b), rows: r, cols: c, ld: c, stride: r * c, offset: 0 },
        (&[b, g, r, c], Some(k)) if b >= 1 && r >= 1 && c >= 1 && k < g => Layout { batch: Some(b), rows: r, cols: c, ld: c, stride: g * r * c, offset: k * r * c },
        (_, Some(k)) => return Err(bad(format!("[batch, groups, rows, cols], all >= 1, with group {k} < groups"))),
        _ => return Err(bad("[rows, cols] or [batch, rows, cols], all >= 1".into())),
    };
    match window {
        None => Ok(l),
        Some((s, n)) if n >= 1 && s.checked_add(n).is_some_and(|e| e <= l.cols) => Ok(Layout { cols: n, offset: l.offset + s, ..l }),
        Some((s, n)) => Err(bad(format!("a non-empty column window within 0..{} (got {s}..{})", l.cols, s.saturating_add(n)))),
    }
}

/// Validated problem: batch, M, N, K and the operands' layouts.
#[derive(Clone, Copy, Debug)]
struct Problem {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: Layout,
    b: Layout,
    c: Layout,
}

fn problem(op: &'static str, a: Layout, b: Layout, c: Layout, spec: GemmSpec) -> Result<Problem> {
    let (m, k) = if spec.trans_a { (a.cols, a.rows) } else { (a.rows, a.cols) };
    let (k2, n) = if spec.trans_b { (b.cols, b.rows) } else { (b.rows, b.cols) };
    if k2 != k {
        return Err(Error::Shape { op, arg: "b", expected: format!("op(b) with {k} rows (the columns of op(a))"), got: vec![b.rows, b.cols] });
    }
    if (c.rows, c.cols) != (m, n) {
        return Err(Error::Shape { op, arg: "c", expected: format!("[{m}, {n}] matrices (op(a)·op(b))"), got: vec![c.rows, c.cols] });
    }
    let batch = c.batch.unwrap_or(1);
    for (arg, x) in [("a", a), ("b", b)] {
        if let Some(xb) = x.batch {
            if xb != batch {
                return Err(Error::Shape { op, arg, expected: format!("a batch of {batch} (from c), or a single matrix"), got: vec![xb, x.rows, x.cols] });
            }
        }
    }
    Ok(Problem { batch, m, n, k, a, b, c })
}

/// `c = α·op(a)·op(b) + β·c`, batched (see the module docs).
pub fn gemm<'a, T: Real, C: Real>(a: impl Into<Mat<'a, T>>, b: impl Into<Mat<'a, T>>, c: impl Into<MatMut<'a, C>>, spec: GemmSpec, cublas_workspace: Option<ViewMut<'_, u8>>) -> Result<()> {
    let (a, b, c) = (a.into(), b.into(), c.into());
    let p = problem(OP, layout(OP, "a", a.view.shape(), a.group, a.window)?, layout(OP, "b", b.view.shape(), b.group, b.window)?, layout(OP, "c", c.view.shape(), c.group, c.window)?, spec)?;
    let (a, b, c) = (a.view, b.view, c.view);
    let mut locs = vec![("a", a.loc()), ("b", b.loc()), ("c", c.loc())];
    locs.extend(cublas_workspace.as_ref().map(|w| ("cublas_workspace", w.loc())));
    match common_loc(OP, &locs)? {
        Loc::Host => cpu_gemm(OP, &a, &b, c, p, spec),
        Loc::Cuda(gpu) => {
            check_gpu_types::<T, C>(OP)?;
            let ws = cublas_workspace.as_ref().map(|w| (w.device_ptr().unwrap_or(0), w.len()));
            let ptr = |v: u64| v as *const c_void;
            // SAFETY: a, b, c are device views on this handle whose shapes were validated against
            // the problem (a batched operand holds batch·rows·cols elements, a grouped one
            // batch·groups·rows·cols read from offset g·rows·cols with stride groups·rows·cols;
            // a column window only narrows the columns read or written inside each row, keeping
            // the row pitch); the workspace, if any, is a device view of its stated length (see cublas_gemm).
            unsafe { cublas_gemm(gpu, OP, p, spec, ptr(a.device_ptr().unwrap_or(0)), ptr(b.device_ptr().unwrap_or(0)), c.device_ptr().unwrap_or(0) as *mut c_void, T::DTYPE, C::DTYPE, ws) }
        }
    }
}

/// f32 workspace of [`gemm_sum_batches`]: the per-batch products, `batch·M·N·4` bytes.
pub fn sum_batches_workspace_bytes(batch: usize, m: usize, n: usize) -> usize {
    4 * batch * m * n
}

/// `c (M×N) = α·Σ_b op(a[b])·op(b[b]) + β·c`, summed over the batch in order (deterministic); `c`
/// is f32 on the GPU (the sum of bf16 products stays f32).
/// `a` and/or `b` carry the batch; on the GPU `workspace` holds at least
/// [`sum_batches_workspace_bytes`] (the CPU twin needs none and takes `None`).
pub fn gemm_sum_batches<'a, T: Real, C: Real>(a: impl Into<Mat<'a, T>>, b: impl Into<Mat<'a, T>>, c: ViewMut<'_, C>, spec: GemmSpec, workspace: Option<ViewMut<'_, f32>>, cublas_workspace: Option<ViewMut<'_, u8>>) -> Result<()> {
    let (a, b) = (a.into(), b.into());
    let (la, lb) = (layout(OP_SUM, "a", a.view.shape(), a.group, a.window)?, layout(OP_SUM, "b", b.view.shape(), b.group, b.window)?);
    let Some(batch) = la.batch.or(lb.batch) else {
        return Err(Error::Shape { op: OP_SUM, arg: "a", expected: "a or b batched: [batch, rows, cols]".into(), got: a.view.shape().to_vec() });
    };
    let lc = layout(OP_SUM, "c", c.shape(), None, None)?;
    if lc.batch.is_some() {
        return Err(Error::Shape { op: OP_SUM, arg: "c", expected: "one matrix [M, N] (the sum over the batch)".into(), got: c.shape().to_vec() });
    }
    // The per-batch products: a batch of M×N matrices in the workspace.
    let p = problem(OP_SUM, la, lb, Layout { batch: Some(batch), stride: lc.rows * lc.cols, ld: lc.cols, offset: 0, ..lc }, spec)?;
    let (a, b) = (a.view, b.view);
    let mut locs = vec![("a", a.loc()), ("b", b.loc()), ("c", c.loc())];
    locs.extend(workspace.as_ref().map(|w| ("workspace", w.loc())));
    locs.extend(cublas_workspace.as_ref().map(|w| ("cublas_workspace", w.loc())));
    match common_loc(OP_SUM, &locs)? {
        Loc::Host => {
            let mut part = vec![0.0f64; p.batch * p.m * p.n];
            cpu_products(OP_SUM, &a, &b, &mut part, p, spec.trans_a, spec.trans_b)?; // [batch, M, N]
            let out = c.into_slice_mut().ok_or(Error::DeviceMismatch { op: OP_SUM, arg: "c", expected: "cpu".into(), got: "cuda".into() })?;
            for (i, o) in out.iter_mut().enumerate() {
                let s: f64 = (0..p.batch).map(|b| part[b * p.m * p.n + i]).sum();
                let prev = if spec.beta != 0.0 { spec.beta as f64 * o.to_f64().unwrap_or(f64::NAN) } else { 0.0 };
                *o = C::round_f64(spec.alpha as f64 * s + prev);
            }
            Ok(())
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_SUM)?;
            require_f32::<C>(OP_SUM)?;
            let want = sum_batches_workspace_bytes(p.batch, p.m, p.n) / 4;
            let ws = need_workspace(OP_SUM, workspace, want, "sum_batches_workspace_bytes")?;
            let cws = cublas_workspace.as_ref().map(|w| (w.device_ptr().unwrap_or(0), w.len()));
            let part = ws.device_ptr().unwrap_or(0);
            let ptr = |v: u64| v as *const c_void;
            // SAFETY: as in `gemm`; the products go to the f32 workspace, checked to hold
            // batch·M·N floats, as a batch of M×N matrices (β = 0: never read before written).
            unsafe { cublas_gemm(gpu, OP_SUM, p, GemmSpec { alpha: 1.0, beta: 0.0, ..spec }, ptr(a.device_ptr().unwrap_or(0)), ptr(b.device_ptr().unwrap_or(0)), part as *mut c_void, T::DTYPE, DType::F32, cws)? };
            let count = (p.m * p.n) as u64;
            let q = SnugGemmSumParams { out: c.device_ptr().unwrap_or(0) as *mut f32, part: part as *const f32, count, batch: p.batch as u64, alpha: spec.alpha, beta: spec.beta };
            let blocks = count.div_ceil(256);
            if blocks > i32::MAX as u64 {
                return Err(Error::Shape { op: OP_SUM, arg: "c", expected: "fewer than 2^39 elements".into(), got: c.shape().to_vec() });
            }
            let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: out is the device view c (count elements); part was written by the GEMM
            // above, earlier on the same stream, and holds batch·count floats.
            unsafe { gpu.launch(OP_SUM, "gemm", "gemm_sum_batches_f32", cfg, &q) }
        }
    }
}

fn check_gpu_types<T: Element, C: Element>(op: &'static str) -> Result<()> {
    require_f32_or_bf16::<T>(op)?;
    if C::DTYPE != T::DTYPE {
        require_f32::<C>(op).map_err(|_| Error::Unsupported { op, what: format!("{} output from {} operands on the GPU (the operands' type or f32)", C::DTYPE, T::DTYPE) })?;
    }
    Ok(())
}

fn cuda_type(d: DType) -> cb::cudaDataType {
    match d {
        DType::BF16 => cb::cudaDataType::CUDA_R_16BF,
        _ => cb::cudaDataType::CUDA_R_32F,
    }
}

fn blas_err(op: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Cublas { context: op.to_string(), message: e.to_string() }
}

/// Row-major `C = op(A)·op(B)` is column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`: cuBLAS gets B first.
///
/// # Safety
/// The pointers are device memory on `gpu`'s context holding the problem's operands as their
/// layouts describe (batch stride and group offset included), `ws` a device buffer of that many
/// bytes or none, valid until the queued calls have run.
#[allow(clippy::too_many_arguments)]
unsafe fn cublas_gemm(gpu: &crate::Gpu, op: &'static str, p: Problem, spec: GemmSpec, a: *const c_void, b: *const c_void, c: *mut c_void, t: DType, tc: DType, ws: Option<(u64, usize)>) -> Result<()> {
    let int = |v: usize, what: &str| -> Result<c_int> {
        c_int::try_from(v).map_err(|_| Error::Shape { op, arg: "a", expected: format!("{what} < 2^31 (cuBLAS)"), got: vec![v] })
    };
    let (m, n, k) = (int(p.m, "M")?, int(p.n, "N")?, int(p.k, "K")?);
    let (lda, ldb, ldc) = (int(p.a.ld, "a's row pitch")?, int(p.b.ld, "b's row pitch")?, int(p.c.ld, "c's row pitch")?);
    let stride = |l: Layout| if l.batch.is_some() { l.stride as c_longlong } else { 0 };
    let (sa, sb, sc) = (stride(p.a), stride(p.b), stride(p.c));
    let start = |base: *const c_void, l: Layout, d: DType| (base as u64 + (l.offset * d.size()) as u64) as *const c_void;
    let (a, b, c) = (start(a, p.a, t), start(b, p.b, t), start(c, p.c, tc) as *mut c_void);
    let blas = gpu.cublas()?;
    let h = *blas.handle();
    // cuBLAS runs in the calling thread's current context: make it this GPU's.
    gpu.context().bind_to_thread().map_err(|e| Error::driver(format!("{op}: binding the context"), e))?;
    // The handle is shared by every clone of this Gpu (on any thread): hold its lock from setting
    // the workspace until the last GEMM that uses it is queued (cuBLAS captures the workspace
    // when a call is queued; the stream orders its use before any later free of the arena).
    let _guard = gpu.cublas_lock();
    let (wp, wl) = ws.unwrap_or((0, 0));
    // SAFETY: the handle is this Gpu's (bound to its stream); the workspace is a device buffer of
    // wl bytes (or none), valid until the calls below have run on that stream; the lock keeps any
    // other user from replacing it before they are queued. Every snug GEMM sets the workspace
    // first, so a stale pointer left registered on the handle is never used.
    let st = unsafe { cb::cublasSetWorkspace_v2(h, wp as *mut c_void, wl) };
    if st != cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Err(blas_err(op, format!("cublasSetWorkspace: {st:?}")));
    }
    let tr = |t: bool| if t { cb::cublasOperation_t::CUBLAS_OP_T } else { cb::cublasOperation_t::CUBLAS_OP_N };
    let esize = |d: DType| d.size() as u64;
    // cuBLAS batches are launched in groups of at most 65,535 (grid limit of some kernels).
    const MAX_BATCH: usize = 65_535;
    let mut b0 = 0usize;
    while b0 < p.batch {
        let nb = (p.batch - b0).min(MAX_BATCH);
        let off = |base: *const c_void, s: c_longlong, d: DType| (base as u64 + b0 as u64 * s as u64 * esize(d)) as *const c_void;
        // SAFETY: see the function's contract; offsets stay inside the batched operands.
        unsafe {
            cudarc::cublas::result::gemm_strided_batched_ex(
                h,
                tr(spec.trans_b),
                tr(spec.trans_a),
                n,
                m,
                k,
                (&spec.alpha) as *const f32 as *const c_void,
                off(b, sb, t),
                cuda_type(t),
                ldb,
                sb,
                off(a, sa, t),
                cuda_type(t),
                lda,
                sa,
                (&spec.beta) as *const f32 as *const c_void,
                off(c, sc, tc) as *mut c_void,
                cuda_type(tc),
                ldc,
                sc,
                nb as c_int,
                cb::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| blas_err(op, e))?;
        b0 += nb;
    }
    Ok(())
}

/// f64 products of every batch into `out` (`[batch, M, N]`).
fn cpu_products<T: Real>(op: &'static str, a: &View<'_, T>, b: &View<'_, T>, out: &mut [f64], p: Problem, ta: bool, tb: bool) -> Result<()> {
    let av = super::host_f64(op, "a", a)?;
    let bv = super::host_f64(op, "b", b)?;
    let at = |bt: usize, i: usize, kk: usize| {
        let base = p.a.offset + if p.a.batch.is_some() { bt * p.a.stride } else { 0 };
        av[base + if ta { kk * p.a.ld + i } else { i * p.a.ld + kk }]
    };
    let bt_ = |bt: usize, kk: usize, j: usize| {
        let base = p.b.offset + if p.b.batch.is_some() { bt * p.b.stride } else { 0 };
        bv[base + if tb { j * p.b.ld + kk } else { kk * p.b.ld + j }]
    };
    use rayon::prelude::*;
    out.par_chunks_mut(p.n).enumerate().for_each(|(row, o)| {
        let (bt, i) = (row / p.m, row % p.m);
        for (j, x) in o.iter_mut().enumerate() {
            *x = (0..p.k).map(|kk| at(bt, i, kk) * bt_(bt, kk, j)).sum();
        }
    });
    Ok(())
}

fn cpu_gemm<T: Real, C: Real>(op: &'static str, a: &View<'_, T>, b: &View<'_, T>, mut c: ViewMut<'_, C>, p: Problem, spec: GemmSpec) -> Result<()> {
    let mut prod = vec![0.0f64; p.batch * p.m * p.n];
    cpu_products(op, a, b, &mut prod, p, spec.trans_a, spec.trans_b)?;
    let out = c.as_slice_mut().ok_or(Error::DeviceMismatch { op, arg: "c", expected: "cpu".into(), got: "cuda".into() })?;
    for bt in 0..p.batch {
        for (i, x) in prod[bt * p.m * p.n..][..p.m * p.n].iter().enumerate() {
            let o = &mut out[p.c.offset + bt * p.c.stride + (i / p.n) * p.c.ld + i % p.n];
            let prev = if spec.beta != 0.0 { spec.beta as f64 * o.to_f64().unwrap_or(f64::NAN) } else { 0.0 };
            *o = C::round_f64(spec.alpha as f64 * *x + prev);
        }
    }
    Ok(())
}
