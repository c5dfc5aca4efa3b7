//! `nn.Conv1d` on `[B, C, L]`: kernel size, stride, dilation, padding (symmetric or "same"),
//! groups, bias — forward and backward, f32 or bf16 storage with f32 accumulation
//! (`kernels/conv1d.cu` for the glue, cuBLAS for the products).
//!
//! Shapes (PyTorch's): `x [B, C_in, L_in]`, `w [C_out, C_in/groups, k]`, `b [C_out]`,
//! `y [B, C_out, L_out]`, `L_out = ⌊(L_in + p_l + p_r − d·(k−1) − 1) / s⌋ + 1`. Output `l`, tap `j`
//! reads input `l·s + j·d − p_l` (zero outside the map).
//!
//! How the GPU computes it: as a sum over taps of GEMMs — no im2col, no unfolded copy. The
//! weights are repacked per tap (`[k, C_out, C_in/g]`, a small workspace). With stride 1 the
//! input a tap reads is a *time window* of `x` (the same row pitch, shifted), so each tap is one
//! batched cuBLAS GEMM on column windows ([`super::gemm::Mat::columns`]) accumulated (β = 1) into
//! the output's window; with stride > 1 a tap's strided samples are first gathered into a
//! `[B, C_in, L_out]` workspace (one tap at a time). Per group, the taps accumulate in a fixed
//! order into an f32 accumulator (the output itself for f32; a workspace for bf16, rounded once at
//! the end together with the bias): deterministic. The backward is the same with the roles
//! swapped — `dx` by transposed tap GEMMs into `dx`'s windows (strided: per-tap products
//! scatter-added in tap order), `dW` per tap and group by [`super::gemm::gemm_sum_batches`]
//! (products per sequence summed in order), `db` by a fixed-order reduction. 1×1 convolutions are
//! one GEMM per group. Saved for the backward: `x` (the caller's) only.
//!
//! Padding: `Padding::Same` (stride 1 only, as in PyTorch: `d·(k−1)` zeros, the left half rounded
//! down) or `Padding::Both(p)`; a padding above `d·(k−1)` on a side (outputs that see no input)
//! is a typed error. The CPU twin computes the definition directly in f64 for any [`Real`].

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::gemm::{gemm, gemm_sum_batches, sum_batches_workspace_bytes, GemmSpec, Mat, MatMut};
use super::{check_shape, common_loc, host_f64, require_f32, require_f32_or_bf16, store_f64, zero, need_workspace, Real};
use crate::ffi::SnugConv1dParams;
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Error, Gpu, Result};

const OP: &str = "conv1d";
const OP_BWD: &str = "conv1d_backward";

/// Zero padding of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// `p` zeros on each side (PyTorch's `padding=p`).
    Both(usize),
    /// `L_out = L_in` at stride 1: `d·(k−1)` zeros, `⌊d·(k−1)/2⌋` on the left (PyTorch's
    /// `padding='same'`).
    Same,
}

/// Hyper-parameters of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv1dSpec {
    /// Taps `k`.
    pub kernel: usize,
    /// Stride `s`.
    pub stride: usize,
    /// Dilation `d`.
    pub dilation: usize,
    /// Zero padding.
    pub padding: Padding,
    /// Groups (`C_in` and `C_out` multiples of it; `C_in` groups = depthwise).
    pub groups: usize,
}

impl Conv1dSpec {
    /// `k` taps, stride 1, dilation 1, no padding, one group.
    pub const fn new(kernel: usize) -> Conv1dSpec {
        Conv1dSpec { kernel, stride: 1, dilation: 1, padding: Padding::Both(0), groups: 1 }
    }
}

/// Validated sizes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv1dDims {
    /// Batch `B`.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Input length.
    pub l_in: usize,
    /// Output length.
    pub l_out: usize,
    /// Zeros on the left.
    pub pad_left: usize,
}

fn bad_spec(arg: &'static str, expected: &str, got: usize) -> Error {
    Error::Value { op: OP, arg, expected: expected.to_string(), got: got.to_string() }
}

/// Validates `spec` against `x [B, C_in, L_in]` and `w [C_out, C_in/groups, k]` and returns the
/// sizes (`L_out` included).
pub fn conv1d_dims(x: &[usize], w: &[usize], spec: Conv1dSpec) -> Result<Conv1dDims> {
    let Conv1dSpec { kernel: k, stride: s, dilation: d, padding, groups: g } = spec;
    if k == 0 {
        return Err(bad_spec("kernel", "at least 1 tap", k));
    }
    if s == 0 {
        return Err(bad_spec("stride", "at least 1", s));
    }
    if d == 0 {
        return Err(bad_spec("dilation", "at least 1", d));
    }
    if g == 0 {
        return Err(bad_spec("groups", "at least 1", g));
    }
    let &[batch, c_in, l_in] = x else {
        return Err(Error::Shape { op: OP, arg: "x", expected: "[B, C_in, L_in]".into(), got: x.to_vec() });
    };
    if batch == 0 || c_in == 0 || l_in == 0 {
        return Err(Error::Shape { op: OP, arg: "x", expected: "[B, C_in, L_in] with no zero dimension".into(), got: x.to_vec() });
    }
    if c_in % g != 0 {
        return Err(bad_spec("groups", &format!("a divisor of C_in = {c_in}"), g));
    }
    let c_out = match *w {
        [o, cg, kk] if o >= 1 && o % g == 0 && cg == c_in / g && kk == k => o,
        _ => return Err(Error::Shape { op: OP, arg: "w", expected: format!("[C_out (a multiple of groups {g}), {}, {k}]", c_in / g), got: w.to_vec() }),
    };
    let span = d.checked_mul(k - 1).filter(|&v| v <= i32::MAX as usize).ok_or_else(|| bad_spec("dilation", "dilation·(kernel−1) below 2^31", d))?;
    let (pl, pr) = match padding {
        Padding::Both(p) => (p, p),
        Padding::Same if s == 1 => (span / 2, span - span / 2),
        Padding::Same => return Err(bad_spec("stride", "1 with Padding::Same (as in PyTorch)", s)),
    };
    if pl > span || pr > span {
        return Err(bad_spec("padding", &format!("at most dilation·(kernel−1) = {span} per side (more pads outputs that see no input)"), pl.max(pr)));
    }
    let padded = l_in + pl + pr;
    if padded <= span {
        return Err(Error::Shape { op: OP, arg: "x", expected: format!("L_in + padding > dilation·(kernel−1) = {span} (at least one output)"), got: x.to_vec() });
    }
    let l_out = (padded - span - 1) / s + 1;
    if [batch * c_in.max(c_out), l_in, l_out, k * c_out * (c_in / g)].iter().any(|&v| v > i32::MAX as usize) {
        return Err(Error::Shape { op: OP, arg: "x", expected: "sizes below 2^31 (cuBLAS and kernel indices)".into(), got: x.to_vec() });
    }
    Ok(Conv1dDims { batch, c_in, c_out, l_in, l_out, pad_left: pl })
}

/// Tap `j`'s input offset: output `l` reads input `l·s + shift`.
fn shift(d: &Conv1dDims, spec: &Conv1dSpec, j: usize) -> i64 {
    (j * spec.dilation) as i64 - d.pad_left as i64
}

/// Stride 1: the output window `[lo, hi)` whose inputs `l + shift` lie in the map (may be empty).
fn window(d: &Conv1dDims, shift: i64) -> (usize, usize) {
    let lo = (-shift).max(0) as usize;
    let hi = (d.l_in as i64 - shift).clamp(0, d.l_out as i64) as usize;
    (lo.min(hi), hi)
}

/// f32-sized regions of a workspace, each rounded up to 64 floats (256 bytes) so every region
/// starts aligned.
fn region(elems: usize, dtype: DType) -> usize {
    (elems * dtype.size()).div_ceil(4).next_multiple_of(64)
}

/// The forward's workspace regions (f32 units): packed weights, the f32 accumulator (bf16 only),
/// the gathered tap (stride > 1).
fn fwd_regions(d: &Conv1dDims, spec: &Conv1dSpec, dtype: DType) -> [usize; 3] {
    let wp = region(spec.kernel * d.c_out * (d.c_in / spec.groups), dtype);
    let acc = if dtype == DType::F32 { 0 } else { region(d.batch * d.c_out * d.l_out, DType::F32) };
    let xg = if spec.stride > 1 { region(d.batch * d.c_in * d.l_out, dtype) } else { 0 };
    [wp, acc, xg]
}

/// The backward's regions (f32 units): packed weights (with dx), the f32 dx accumulator (bf16, or
/// a strided f32 scatter into a workspace? no: f32 scatters into dx itself), the per-tap dx
/// products (stride > 1), the gathered tap (stride > 1), the per-tap dW (f32), the per-sequence
/// products of `gemm_sum_batches`.
fn bwd_regions(d: &Conv1dDims, spec: &Conv1dSpec, dtype: DType, with_dx: bool) -> [usize; 6] {
    let cg = d.c_in / spec.groups;
    let cgo = d.c_out / spec.groups;
    let strided = spec.stride > 1;
    let wp = if with_dx { region(spec.kernel * d.c_out * cg, dtype) } else { 0 };
    let acc = if with_dx && dtype != DType::F32 { region(d.batch * d.c_in * d.l_in, DType::F32) } else { 0 };
    let g = if with_dx && strided { region(d.batch * d.c_in * d.l_out, DType::F32) } else { 0 };
    let xg = if strided { region(d.batch * d.c_in * d.l_out, dtype) } else { 0 };
    let dwp = region(spec.kernel * d.c_out * cg, DType::F32);
    let sum = region(sum_batches_workspace_bytes(d.batch, cgo, cg) / 4, DType::F32);
    [wp, acc, g, xg, dwp, sum]
}

/// Bytes of the GPU forward's workspace (the CPU twin needs none): a pure function of the shapes.
pub fn forward_workspace_bytes(d: &Conv1dDims, spec: &Conv1dSpec, dtype: DType) -> usize {
    4 * fwd_regions(d, spec, dtype).iter().sum::<usize>()
}

/// Bytes of the GPU backward's workspace (`with_dx`: whether `dx` is asked for).
pub fn backward_workspace_bytes(d: &Conv1dDims, spec: &Conv1dSpec, dtype: DType, with_dx: bool) -> usize {
    4 * bwd_regions(d, spec, dtype, with_dx).iter().sum::<usize>()
}

/// Carves `ws` into regions of the given f32 lengths (in order).
fn carve<'a, const N: usize>(ws: ViewMut<'a, f32>, lens: [usize; N]) -> Result<[Option<ViewMut<'a, f32>>; N]> {
    let mut rest = Some(ws);
    let mut out: [Option<ViewMut<'a, f32>>; N] = std::array::from_fn(|_| None);
    for (i, &n) in lens.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let r = rest.take().ok_or_else(|| Error::Value { op: OP, arg: "workspace", expected: "its regions".into(), got: "none".into() })?;
        let (a, b) = r.split_at(n)?;
        out[i] = Some(a);
        rest = Some(b);
    }
    Ok(out)
}

fn take<'a>(r: &mut Option<ViewMut<'a, f32>>, what: &str) -> Result<ViewMut<'a, f32>> {
    r.take().ok_or_else(|| Error::Value { op: OP, arg: "workspace", expected: format!("a {what} region"), got: "none".into() })
}

fn kernel_name(base: &str, dtype: DType) -> &'static str {
    let bf = dtype == DType::BF16;
    match base {
        "pack_w" => if bf { "conv1d_pack_w_bf16" } else { "conv1d_pack_w_f32" },
        "unpack_dw" => if bf { "conv1d_unpack_dw_bf16" } else { "conv1d_unpack_dw_f32" },
        "finish" => if bf { "conv1d_finish_bf16" } else { "conv1d_finish_f32" },
        "bias_grad" => if bf { "conv1d_bias_grad_bf16" } else { "conv1d_bias_grad_f32" },
        "gather" => if bf { "conv1d_gather_bf16" } else { "conv1d_gather_f32" },
        _ => "conv1d_scatter_add_f32",
    }
}

fn params() -> SnugConv1dParams {
    SnugConv1dParams { src: std::ptr::null(), dst: std::ptr::null_mut(), bias: std::ptr::null(), rows: 0, channels: 0, len_in: 0, len_out: 0, k: 0, shift: 0, stride: 1, batch: 0, out_is_t: 0 }
}

/// Where the tap path runs: on a GPU (kernels/conv1d.cu and cuBLAS), or on the host with the
/// glue kernels' Rust ports and the GEMM twin — the same orchestration code either way, so the
/// host run checks the GPU path's windows, tap order, β and workspace carving
/// ([`conv1d_tap_path_host`]).
#[derive(Clone, Copy)]
enum Exec<'a> {
    Gpu(&'a Gpu),
    Host,
}

/// Blocks of 256 threads for `work` elements, one per thread, capped (the kernels grid-stride).
fn blocks_for(work: usize) -> u32 {
    work.div_ceil(256).clamp(1, 1 << 20) as u32
}

/// # Safety
/// The pointers in `p` are memory of `exec` (device memory on the GPU, host memory on the host)
/// laid out as kernels/conv1d.h describes for `kernel`, sized by the validated dims, and not
/// aliased by a live Rust reference for the duration.
unsafe fn launch(exec: Exec<'_>, op: &'static str, kernel: &'static str, blocks: u32, p: &SnugConv1dParams) -> Result<()> {
    match exec {
        Exec::Gpu(gpu) => {
            let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: forwarded; every kernel grid-strides over its work (bias_grad over channels).
            unsafe { gpu.launch(op, "conv1d", kernel, cfg, p) }
        }
        // SAFETY: forwarded.
        Exec::Host => unsafe { host_kernel(kernel, p) },
    }
}

/// Rust ports of kernels/conv1d.cu (their semantics; the emulator checks the CUDA against numpy).
///
/// # Safety
/// As [`launch`], with host pointers.
unsafe fn host_kernel(kernel: &str, p: &SnugConv1dParams) -> Result<()> {
    let bf = kernel.ends_with("_bf16");
    // SAFETY (all reads/writes below): the caller guarantees the regions as kernels/conv1d.h
    // lays them out; indices stay below the sizes the fields give.
    let ld = |ptr: *const c_void, i: usize| -> f32 {
        // SAFETY: see above.
        unsafe { if bf { (*(ptr as *const half::bf16).add(i)).to_f32() } else { *(ptr as *const f32).add(i) } }
    };
    // SAFETY: see above.
    let st = |ptr: *mut c_void, i: usize, v: f32, as_t: bool| unsafe {
        if as_t && bf {
            *(ptr as *mut half::bf16).add(i) = half::bf16::from_f32(v);
        } else {
            *(ptr as *mut f32).add(i) = v;
        }
    };
    let (rows, ch, k) = (p.rows as usize, p.channels as usize, p.k as usize);
    let (lin, lout) = (p.len_in as usize, p.len_out as usize);
    let base = kernel.trim_end_matches("_f32").trim_end_matches("_bf16");
    match base {
        "conv1d_pack_w" => {
            for r in 0..rows {
                let (o, c) = (r / ch, r % ch);
                for j in 0..k {
                    st(p.dst, (j * (rows / ch) + o) * ch + c, ld(p.src, r * k + j), true);
                }
            }
        }
        "conv1d_unpack_dw" => {
            for r in 0..rows {
                let (o, c) = (r / ch, r % ch);
                for j in 0..k {
                    // SAFETY: src is f32 here.
                    let v = unsafe { *(p.src as *const f32).add((j * (rows / ch) + o) * ch + c) };
                    st(p.dst, r * k + j, v, p.out_is_t == 1);
                }
            }
        }
        "conv1d_finish" => {
            for r in 0..rows {
                let bias = if p.bias.is_null() { 0.0 } else { ld(p.bias, r % ch) };
                for l in 0..lout {
                    // SAFETY: src is the f32 accumulator.
                    let a = unsafe { *(p.src as *const f32).add(r * lout + l) };
                    st(p.dst, r * lout + l, a + bias, true);
                }
            }
        }
        "conv1d_bias_grad" => {
            for c in 0..ch {
                let mut s = 0.0f32;
                for b in 0..p.batch as usize {
                    for l in 0..lout {
                        s += ld(p.src, (b * ch + c) * lout + l);
                    }
                }
                st(p.dst, c, s, p.out_is_t == 1);
            }
        }
        "conv1d_gather" => {
            for r in 0..rows {
                for l in 0..lout {
                    let i = (l * p.stride as usize) as i64 + p.shift as i64;
                    let v = if (0..lin as i64).contains(&i) { ld(p.src, r * lin + i as usize) } else { 0.0 };
                    st(p.dst, r * lout + l, v, true);
                }
            }
        }
        "conv1d_scatter_add" => {
            for r in 0..rows {
                for l in 0..lout {
                    let i = (l * p.stride as usize) as i64 + p.shift as i64;
                    if (0..lin as i64).contains(&i) {
                        // SAFETY: f32 source and accumulator.
                        unsafe { *(p.dst as *mut f32).add(r * lin + i as usize) += *(p.src as *const f32).add(r * lout + l) };
                    }
                }
            }
        }
        _ => return Err(Error::Value { op: OP, arg: "kernel", expected: "a conv1d glue kernel".into(), got: kernel.into() }),
    }
    Ok(())
}

fn ptr<T: crate::Element>(v: &View<'_, T>) -> *const c_void {
    v.raw_addr() as *const c_void
}
fn ptr_mut<T: crate::Element>(v: &ViewMut<'_, T>) -> *mut c_void {
    v.raw_addr() as *mut c_void
}

/// wp `[k, C_out, C_in/g]` (T) from w `[C_out, C_in/g, k]`.
fn pack_weights<T: Real>(exec: Exec<'_>, op: &'static str, d: &Conv1dDims, spec: &Conv1dSpec, w: &View<'_, T>, wp: &ViewMut<'_, T>) -> Result<()> {
    let cg = d.c_in / spec.groups;
    let n = spec.kernel * d.c_out * cg;
    if wp.len() < n {
        return Err(Error::Length { op, arg: "workspace", expected: format!("{n} T for the packed weights"), got: wp.len() });
    }
    let mut p = params();
    p.src = ptr(w);
    p.dst = ptr_mut(wp);
    p.rows = (d.c_out * cg) as u64;
    p.channels = cg as u32;
    p.k = spec.kernel as u32;
    // SAFETY: w is [C_out, Cg, k] of T (validated); wp holds at least k·C_out·Cg T (checked).
    unsafe { launch(exec, op, kernel_name("pack_w", T::DTYPE), blocks_for(n), &p) }
}

/// xg `[B, C_in, L_out]` = x's samples `l·s + shift` (zero outside the map): one strided tap.
fn gather_tap<T: Real>(exec: Exec<'_>, op: &'static str, d: &Conv1dDims, spec: &Conv1dSpec, x: &View<'_, T>, xg: &mut ViewMut<'_, T>, shift: i64) -> Result<()> {
    let n = d.batch * d.c_in * d.l_out;
    if xg.len() < n {
        return Err(Error::Length { op, arg: "workspace", expected: format!("{n} T for the gathered tap"), got: xg.len() });
    }
    let mut q = params();
    q.src = ptr(x);
    q.dst = ptr_mut(xg);
    q.rows = (d.batch * d.c_in) as u64;
    q.channels = d.c_in as u32;
    q.len_in = d.l_in as u32;
    q.len_out = d.l_out as u32;
    q.shift = shift as i32;
    q.stride = spec.stride as u32;
    // SAFETY: x is [B, C_in, L_in] of T (validated), xg holds B·C_in·L_out T (checked).
    unsafe { launch(exec, op, kernel_name("gather", T::DTYPE), blocks_for(n), &q) }
}

/// Taps in the order they are accumulated: a tap whose window covers every output (if any) first,
/// so it can write with β = 0; then the others in increasing order. Returns the order and whether
/// the first covers everything.
fn tap_order(spec: &Conv1dSpec, len_covered: impl Fn(usize) -> bool) -> (Vec<usize>, bool) {
    let full = (0..spec.kernel).find(|&j| len_covered(j));
    let mut order: Vec<usize> = full.into_iter().collect();
    order.extend((0..spec.kernel).filter(|&j| Some(j) != full));
    (order, full.is_some())
}

/// The forward: `y = conv(x, w) + b`.
pub fn conv1d<T: Real>(x: View<'_, T>, w: View<'_, T>, b: Option<View<'_, T>>, y: ViewMut<'_, T>, spec: Conv1dSpec, workspace: Option<ViewMut<'_, f32>>, cublas_workspace: Option<ViewMut<'_, u8>>) -> Result<()> {
    let d = conv1d_dims(x.shape(), w.shape(), spec)?;
    check_shape(OP, "y", y.shape(), &[d.batch, d.c_out, d.l_out], "[B, C_out, L_out]")?;
    let mut locs = vec![("x", x.loc()), ("w", w.loc()), ("y", y.loc())];
    if let Some(b) = &b {
        check_shape(OP, "b", b.shape(), &[d.c_out], "[C_out]")?;
        locs.push(("b", b.loc()));
    }
    locs.extend(workspace.as_ref().map(|v| ("workspace", v.loc())));
    match common_loc(OP, &locs)? {
        Loc::Host => {
            let (xv, wv) = (host_f64(OP, "x", &x)?, host_f64(OP, "w", &w)?);
            let bv = b.as_ref().map(|b| host_f64(OP, "b", b)).transpose()?;
            let (g, k) = (spec.groups, spec.kernel);
            let (cg, cgo) = (d.c_in / g, d.c_out / g);
            let mut out = vec![0.0f64; d.batch * d.c_out * d.l_out];
            for bt in 0..d.batch {
                for o in 0..d.c_out {
                    let gi = o / cgo;
                    for l in 0..d.l_out {
                        let mut acc = bv.as_ref().map_or(0.0, |b| b[o]);
                        for c in 0..cg {
                            let xr = &xv[(bt * d.c_in + gi * cg + c) * d.l_in..][..d.l_in];
                            for j in 0..k {
                                let i = (l * spec.stride) as i64 + shift(&d, &spec, j);
                                if (0..d.l_in as i64).contains(&i) {
                                    acc += wv[(o * cg + c) * k + j] * xr[i as usize];
                                }
                            }
                        }
                        out[(bt * d.c_out + o) * d.l_out + l] = acc;
                    }
                }
            }
            store_f64(OP, "y", y, &out)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP)?;
            tap_forward(Exec::Gpu(gpu), &d, x, w, b, y, spec, workspace, cublas_workspace)
        }
    }
}

/// The backward: `dx` (optional), `dw`, `db` (optional). Parameter gradients `P`: `T` or f32.
#[allow(clippy::too_many_arguments)]
pub fn conv1d_backward<T: Real, P: Real>(
    x: View<'_, T>,
    w: View<'_, T>,
    dy: View<'_, T>,
    dx: Option<ViewMut<'_, T>>,
    dw: ViewMut<'_, P>,
    db: Option<ViewMut<'_, P>>,
    spec: Conv1dSpec,
    workspace: Option<ViewMut<'_, f32>>,
    cublas_workspace: Option<ViewMut<'_, u8>>,
) -> Result<()> {
    let d = conv1d_dims(x.shape(), w.shape(), spec).map_err(rename)?;
    check_shape(OP_BWD, "dy", dy.shape(), &[d.batch, d.c_out, d.l_out], "[B, C_out, L_out]")?;
    check_shape(OP_BWD, "dw", dw.shape(), w.shape(), "the shape of w")?;
    let mut locs = vec![("x", x.loc()), ("w", w.loc()), ("dy", dy.loc()), ("dw", dw.loc())];
    if let Some(v) = &dx {
        check_shape(OP_BWD, "dx", v.shape(), x.shape(), "the shape of x")?;
        locs.push(("dx", v.loc()));
    }
    if let Some(v) = &db {
        check_shape(OP_BWD, "db", v.shape(), &[d.c_out], "[C_out]")?;
        locs.push(("db", v.loc()));
    }
    locs.extend(workspace.as_ref().map(|v| ("workspace", v.loc())));
    let (g, k) = (spec.groups, spec.kernel);
    let (cg, cgo) = (d.c_in / g, d.c_out / g);
    match common_loc(OP_BWD, &locs)? {
        Loc::Host => {
            let (xv, wv, gv) = (host_f64(OP_BWD, "x", &x)?, host_f64(OP_BWD, "w", &w)?, host_f64(OP_BWD, "dy", &dy)?);
            let mut gx = vec![0.0f64; d.batch * d.c_in * d.l_in];
            let mut gw = vec![0.0f64; d.c_out * cg * k];
            let mut gb = vec![0.0f64; d.c_out];
            for bt in 0..d.batch {
                for o in 0..d.c_out {
                    let gi = o / cgo;
                    for l in 0..d.l_out {
                        let go = gv[(bt * d.c_out + o) * d.l_out + l];
                        gb[o] += go;
                        for c in 0..cg {
                            let row = (bt * d.c_in + gi * cg + c) * d.l_in;
                            for j in 0..k {
                                let i = (l * spec.stride) as i64 + shift(&d, &spec, j);
                                if (0..d.l_in as i64).contains(&i) {
                                    gx[row + i as usize] += wv[(o * cg + c) * k + j] * go;
                                    gw[(o * cg + c) * k + j] += go * xv[row + i as usize];
                                }
                            }
                        }
                    }
                }
            }
            if let Some(v) = dx {
                store_f64(OP_BWD, "dx", v, &gx)?;
            }
            store_f64(OP_BWD, "dw", dw, &gw)?;
            if let Some(v) = db {
                store_f64(OP_BWD, "db", v, &gb)?;
            }
            Ok(())
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_BWD)?;
            if P::DTYPE != T::DTYPE {
                require_f32::<P>(OP_BWD)?;
            }
            tap_backward(Exec::Gpu(gpu), &d, x, w, dy, dx, dw, db, spec, workspace, cublas_workspace)
        }
    }
}

/// The tap path of the forward (GPU, or the host with the glue ports): see the module docs.
#[allow(clippy::too_many_arguments)]
fn tap_forward<T: Real>(exec: Exec<'_>, d: &Conv1dDims, x: View<'_, T>, w: View<'_, T>, b: Option<View<'_, T>>, y: ViewMut<'_, T>, spec: Conv1dSpec, workspace: Option<ViewMut<'_, f32>>, cublas_workspace: Option<ViewMut<'_, u8>>) -> Result<()> {
    let d = *d;
        let dt = T::DTYPE;
        let want = forward_workspace_bytes(&d, &spec, dt) / 4;
        let ws = need_workspace(OP, workspace, want, "forward_workspace_bytes")?;
        let [mut r_wp, mut r_acc, mut r_xg] = carve(ws, fwd_regions(&d, &spec, dt))?;
        let (g, k) = (spec.groups, spec.kernel);
        let (cg, cgo) = (d.c_in / g, d.c_out / g);
        let mut cw = cublas_workspace;
        // 1. Weights per tap: wp [k, C_out, Cg].
        let wp = take(&mut r_wp, "packed weights")?.cast::<T>()?;
        let wp_len = k * d.c_out * cg;
        pack_weights(exec, OP, &d, &spec, &w, &wp)?;
        let wp = wp.as_view().narrow(0, wp_len)?.reshape(&[k * d.c_out, cg])?;
        // 2. The accumulator: y itself (f32) or an f32 workspace (bf16).
        let mut y = y;
        let mut acc: ViewMut<'_, f32> = if dt == DType::F32 { y.reborrow().cast::<f32>()? } else { take(&mut r_acc, "accumulator")?.split_at(d.batch * d.c_out * d.l_out)?.0 };
        let acc_shape = [d.batch, g, cgo, d.l_out];
        let strided = spec.stride > 1;
        let mut xg: Option<ViewMut<'_, T>> = if strided { Some(take(&mut r_xg, "gathered tap")?.cast::<T>()?.split_at(d.batch * d.c_in * d.l_out)?.0) } else { None };
        let covers = |j: usize| strided || window(&d, shift(&d, &spec, j)) == (0, d.l_out);
        let (order, first_full) = tap_order(&spec, covers);
        if !first_full {
            zero(OP, &mut acc)?;
        }
        for (n, &j) in order.iter().enumerate() {
            let sh = shift(&d, &spec, j);
            let beta = if n == 0 && first_full { 0.0 } else { 1.0 };
            if let Some(xg) = xg.as_mut() {
                gather_tap(exec, OP, &d, &spec, &x, xg, sh)?;
            }
            for gi in 0..g {
                let a = wp.clone().narrow(j * d.c_out + gi * cgo, cgo)?;
                let c = MatMut::group(acc.reborrow().reshape(&acc_shape)?, gi);
                let spec_g = GemmSpec { beta, ..GemmSpec::new(false, false) };
                match xg.as_ref() {
                    Some(xg) => {
                        let bm = Mat::group(xg.as_view().reshape(&[d.batch, g, cg, d.l_out])?, gi);
                        gemm(a, bm, c, spec_g, cw.as_mut().map(|v| v.reborrow()))?;
                    }
                    None => {
                        let (lo, hi) = window(&d, sh);
                        if hi <= lo {
                            continue;
                        }
                        let bm = Mat::group(x.clone().reshape(&[d.batch, g, cg, d.l_in])?, gi).columns((lo as i64 + sh) as usize, hi - lo);
                        gemm(a, bm, c.columns(lo, hi - lo), spec_g, cw.as_mut().map(|v| v.reborrow()))?;
                    }
                }
            }
        }
        // 3. Bias and rounding (bf16), or the bias in place (f32).
        if dt != DType::F32 || b.is_some() {
            let mut q = params();
            q.src = acc.raw_addr() as *const c_void;
            q.dst = ptr_mut(&y);
            q.bias = b.as_ref().map_or(std::ptr::null(), ptr);
            q.rows = (d.batch * d.c_out) as u64;
            q.channels = d.c_out as u32;
            q.len_out = d.l_out as u32;
            // SAFETY: acc holds B·C_out·L_out f32 (y itself for f32: in place, allowed), y is
            // [B, C_out, L_out] of T, bias [C_out] of T or null.
            unsafe { launch(exec, OP, kernel_name("finish", dt), blocks_for(d.batch * d.c_out * d.l_out), &q)? };
        }
        Ok(())
}

/// The tap path of the backward (GPU, or the host with the glue ports).
#[allow(clippy::too_many_arguments)]
fn tap_backward<T: Real, P: Real>(exec: Exec<'_>, d: &Conv1dDims, x: View<'_, T>, w: View<'_, T>, dy: View<'_, T>, dx: Option<ViewMut<'_, T>>, dw: ViewMut<'_, P>, db: Option<ViewMut<'_, P>>, spec: Conv1dSpec, workspace: Option<ViewMut<'_, f32>>, cublas_workspace: Option<ViewMut<'_, u8>>) -> Result<()> {
    let d = *d;
    let (g, k) = (spec.groups, spec.kernel);
    let (cg, cgo) = (d.c_in / g, d.c_out / g);
        let dt = T::DTYPE;
        let with_dx = dx.is_some();
        let want = backward_workspace_bytes(&d, &spec, dt, with_dx) / 4;
        let ws = need_workspace(OP_BWD, workspace, want, "backward_workspace_bytes")?;
        let [mut r_wp, mut r_acc, mut r_g, mut r_xg, mut r_dwp, mut r_sum] = carve(ws, bwd_regions(&d, &spec, dt, with_dx))?;
        let mut cw = cublas_workspace;
        let strided = spec.stride > 1;
        let x4 = [d.batch, g, cg, d.l_in];
        let dy4 = [d.batch, g, cgo, d.l_out];
        let mut xg: Option<ViewMut<'_, T>> = if strided { Some(take(&mut r_xg, "gathered tap")?.cast::<T>()?.split_at(d.batch * d.c_in * d.l_out)?.0) } else { None };

        // 1. dx.
        if let Some(mut dxv) = dx {
            let wp = take(&mut r_wp, "packed weights")?.cast::<T>()?;
            let wp_len = k * d.c_out * cg;
            pack_weights(exec, OP_BWD, &d, &spec, &w, &wp)?;
            let wp = wp.as_view().narrow(0, wp_len)?.reshape(&[k * d.c_out, cg])?;
            let mut acc: ViewMut<'_, f32> = if dt == DType::F32 { dxv.reborrow().cast::<f32>()? } else { take(&mut r_acc, "dx accumulator")?.split_at(d.batch * d.c_in * d.l_in)?.0 };
            if strided {
                zero(OP_BWD, &mut acc)?;
                let mut gbuf = take(&mut r_g, "dx products")?.split_at(d.batch * d.c_in * d.l_out)?.0;
                for j in 0..k {
                    for gi in 0..g {
                        let a = wp.clone().narrow(j * d.c_out + gi * cgo, cgo)?;
                        let c = MatMut::group(gbuf.reborrow().reshape(&[d.batch, g, cg, d.l_out])?, gi);
                        gemm(a, Mat::group(dy.clone().reshape(&dy4)?, gi), c, GemmSpec::new(true, false), cw.as_mut().map(|v| v.reborrow()))?;
                    }
                    let mut q = params();
                    q.src = gbuf.raw_addr() as *const c_void;
                    q.dst = acc.raw_addr() as *mut c_void;
                    q.rows = (d.batch * d.c_in) as u64;
                    q.channels = d.c_in as u32;
                    q.len_in = d.l_in as u32;
                    q.len_out = d.l_out as u32;
                    q.shift = shift(&d, &spec, j) as i32;
                    q.stride = spec.stride as u32;
                    // SAFETY: g is [B, C_in, L_out] f32, acc [B, C_in, L_in] f32; one tap per
                    // launch, injective index map: no two threads add to one element.
                    unsafe { launch(exec, OP_BWD, kernel_name("scatter_add", dt), blocks_for(d.batch * d.c_in * d.l_out), &q)? };
                }
            } else {
                // dx[:, win + shift] += W_jᵀ · dy[:, win]; a tap covering all of dx first (β = 0).
                let covers = |j: usize| {
                    let sh = shift(&d, &spec, j);
                    let (lo, hi) = window(&d, sh);
                    hi > lo && lo as i64 + sh == 0 && hi as i64 + sh == d.l_in as i64
                };
                let (order, first_full) = tap_order(&spec, covers);
                if !first_full {
                    zero(OP_BWD, &mut acc)?;
                }
                for (n, &j) in order.iter().enumerate() {
                    let sh = shift(&d, &spec, j);
                    let (lo, hi) = window(&d, sh);
                    if hi <= lo {
                        continue;
                    }
                    let beta = if n == 0 && first_full { 0.0 } else { 1.0 };
                    for gi in 0..g {
                        let a = wp.clone().narrow(j * d.c_out + gi * cgo, cgo)?;
                        let bm = Mat::group(dy.clone().reshape(&dy4)?, gi).columns(lo, hi - lo);
                        let c = MatMut::group(acc.reborrow().reshape(&x4)?, gi).columns((lo as i64 + sh) as usize, hi - lo);
                        gemm(a, bm, c, GemmSpec { beta, ..GemmSpec::new(true, false) }, cw.as_mut().map(|v| v.reborrow()))?;
                    }
                }
            }
            if dt != DType::F32 {
                let mut q = params();
                q.src = acc.raw_addr() as *const c_void;
                    q.dst = ptr_mut(&dxv);
                q.rows = (d.batch * d.c_in) as u64;
                q.channels = d.c_in as u32;
                q.len_out = d.l_in as u32;
                // SAFETY: acc holds B·C_in·L_in f32, dx is [B, C_in, L_in] of T; no bias.
                unsafe { launch(exec, OP_BWD, kernel_name("finish", dt), blocks_for(d.batch * d.c_in * d.l_in), &q)? };
            }
        }

        // 2. dW per tap and group into dwp [k, C_out, Cg] (f32), then into w's layout.
        let dwp = take(&mut r_dwp, "per-tap dW")?;
        let dwp_ptr = dwp.raw_addr();
        let mut sum_ws = take(&mut r_sum, "per-sequence products")?;
        let mut rest = dwp;
        for j in 0..k {
            let sh = shift(&d, &spec, j);
            if let Some(xg) = xg.as_mut() {
                gather_tap(exec, OP_BWD, &d, &spec, &x, xg, sh)?;
            }
            for gi in 0..g {
                let (mut chunk, r) = rest.split_at(cgo * cg)?;
                rest = r;
                let c = chunk.reborrow().reshape(&[cgo, cg])?;
                let spec_t = GemmSpec::new(false, true);
                match xg.as_ref() {
                    Some(xg) => {
                        gemm_sum_batches(Mat::group(dy.clone().reshape(&dy4)?, gi), Mat::group(xg.as_view().reshape(&[d.batch, g, cg, d.l_out])?, gi), c, spec_t, Some(sum_ws.reborrow()), cw.as_mut().map(|v| v.reborrow()))?;
                    }
                    None => {
                        let (lo, hi) = window(&d, sh);
                        if hi <= lo {
                            zero(OP_BWD, &mut chunk)?;
                            continue;
                        }
                        let am = Mat::group(dy.clone().reshape(&dy4)?, gi).columns(lo, hi - lo);
                        let bm = Mat::group(x.clone().reshape(&x4)?, gi).columns((lo as i64 + sh) as usize, hi - lo);
                        gemm_sum_batches(am, bm, c, spec_t, Some(sum_ws.reborrow()), cw.as_mut().map(|v| v.reborrow()))?;
                    }
                }
            }
        }
        let mut p = params();
        p.src = dwp_ptr as *const c_void;
        p.dst = ptr_mut(&dw);
        p.rows = (d.c_out * cg) as u64;
        p.channels = cg as u32;
        p.k = k as u32;
        p.out_is_t = (P::DTYPE != DType::F32) as u32;
        // SAFETY: dwp holds k·C_out·Cg f32 written above on this stream; dw is [C_out, Cg, k]
        // of P (f32, or T = bf16 when out_is_t).
        unsafe { launch(exec, OP_BWD, kernel_name("unpack_dw", dt), blocks_for(k * d.c_out * cg), &p)? };

        // 3. db.
        if let Some(v) = db {
            let mut q = params();
            q.src = ptr(&dy);
            q.dst = ptr_mut(&v);
            q.rows = (d.batch * d.c_out) as u64;
            q.channels = d.c_out as u32;
            q.len_out = d.l_out as u32;
            q.batch = d.batch as u32;
            q.out_is_t = (P::DTYPE != DType::F32) as u32;
            // SAFETY: dy is [B, C_out, L_out] of T; db is [C_out] of P (f32, or T when
            // out_is_t); one block per channel (grid-stride over channels, see `launch`).
            unsafe { launch(exec, OP_BWD, kernel_name("bias_grad", dt), d.c_out.clamp(1, 1 << 20) as u32, &q)? };
        }
        Ok(())
}

/// The GPU's tap path run on the host (glue kernels' Rust ports, the GEMM twin, an f32
/// workspace of [`forward_workspace_bytes`]): the same code as the GPU runs, for tests of its
/// windows, tap order, β and workspace carving against the direct twin. Not a fast path.
#[doc(hidden)]
pub fn conv1d_tap_path_host<T: Real>(x: View<'_, T>, w: View<'_, T>, b: Option<View<'_, T>>, y: ViewMut<'_, T>, spec: Conv1dSpec, workspace: ViewMut<'_, f32>) -> Result<()> {
    let d = conv1d_dims(x.shape(), w.shape(), spec)?;
    check_shape(OP, "y", y.shape(), &[d.batch, d.c_out, d.l_out], "[B, C_out, L_out]")?;
    let mut locs = vec![("x", x.loc()), ("w", w.loc()), ("y", y.loc()), ("workspace", workspace.loc())];
    locs.extend(b.as_ref().map(|b| ("b", b.loc())));
    if !matches!(common_loc(OP, &locs)?, Loc::Host) {
        return Err(Error::DeviceMismatch { op: OP, arg: "x", expected: "cpu".into(), got: "cuda".into() });
    }
    require_f32_or_bf16::<T>(OP)?;
    tap_forward(Exec::Host, &d, x, w, b, y, spec, Some(workspace), None)
}

/// The backward's tap path on the host (see [`conv1d_tap_path_host`]).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn conv1d_backward_tap_path_host<T: Real, P: Real>(x: View<'_, T>, w: View<'_, T>, dy: View<'_, T>, dx: Option<ViewMut<'_, T>>, dw: ViewMut<'_, P>, db: Option<ViewMut<'_, P>>, spec: Conv1dSpec, workspace: ViewMut<'_, f32>) -> Result<()> {
    let d = conv1d_dims(x.shape(), w.shape(), spec).map_err(rename)?;
    check_shape(OP_BWD, "dy", dy.shape(), &[d.batch, d.c_out, d.l_out], "[B, C_out, L_out]")?;
    check_shape(OP_BWD, "dw", dw.shape(), w.shape(), "the shape of w")?;
    if let Some(v) = &dx {
        check_shape(OP_BWD, "dx", v.shape(), x.shape(), "the shape of x")?;
    }
    if let Some(v) = &db {
        check_shape(OP_BWD, "db", v.shape(), &[d.c_out], "[C_out]")?;
    }
    if !matches!(common_loc(OP_BWD, &[("x", x.loc()), ("dy", dy.loc()), ("dw", dw.loc()), ("workspace", workspace.loc())])?, Loc::Host) {
        return Err(Error::DeviceMismatch { op: OP_BWD, arg: "x", expected: "cpu".into(), got: "cuda".into() });
    }
    require_f32_or_bf16::<T>(OP_BWD)?;
    if P::DTYPE != T::DTYPE {
        require_f32::<P>(OP_BWD)?;
    }
    tap_backward(Exec::Host, &d, x, w, dy, dx, dw, db, spec, Some(workspace), None)
}

/// A forward validation error reported under the backward's name.
fn rename(e: Error) -> Error {
    match e {
        Error::Value { arg, expected, got, .. } => Error::Value { op: OP_BWD, arg, expected, got },
        Error::Shape { arg, expected, got, .. } => Error::Shape { op: OP_BWD, arg, expected, got },
        e => e,
    }
}
