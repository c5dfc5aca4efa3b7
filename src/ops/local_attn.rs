//! 2D neighbourhood (local) attention, forward and backward (`kernels/local_attn.cu`).
//!
//! Each query pixel attends over the `K × K` keys of its window with a true softmax (scale
//! `1/√d` unless given): `O = Σ_j softmax_j(scale·q·k_j)·v_j`, per batch and head. Border modes
//! ([`Border`]):
//!
//! - [`Border::ZeroPad`] — exactly the seed's `F.pad(·, [K/2]·4)` + `F.unfold`: the window is centred
//!   on the pixel; keys outside the map are zero vectors that still take part in the softmax (logit
//!   0, value 0). Any map size.
//! - [`Border::Shift`] — NATTEN's clamped window: it starts at `clamp(y − K/2, 0, H − K)` (likewise
//!   in x), so every pixel sees exactly `K²` real keys. Defined for maps at least `K × K`; a smaller
//!   map is a typed error (there is no window of `K²` real keys to shift into).
//!
//! Layouts ([`Layout`]): `[B, heads, H, W, d]`, or `[B, C, H, W]` with `C = heads·d` (channel
//! `head·d + c`, the output of a 1×1 convolution) read in place through strides — no transpose.
//! `q, k, v, out` and the gradients share the layout; the log-sum-exp is f32 `[B, heads, H, W]`.
//!
//! Storage `T`: f32 or bf16 on the GPU (scores, softmax statistics and accumulators in f32); the CPU
//! twin takes any [`Real`] and computes in f64.
//!
//! Footprint: the forward saves `O` and the log-sum-exp only (plus its inputs, which the caller
//! keeps); the backward needs `q, k, v, O, lse, dO` and a workspace of [`backward_workspace_bytes`]
//! (`D = rowsum(dO ∘ O)` per query, f32). `dq` per query, `dk`/`dv` per key over its inverse
//! neighbourhood: no atomics, deterministic.

#![allow(clippy::needless_range_loop)]

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::{check_shape, common_loc, host_f64, require_f32_or_bf16, store_f64, need_workspace, Real};
use crate::ffi::{self, SnugLocalAttnParams};
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Error, Result};

const OP: &str = "local_attn";
const OP_BWD: &str = "local_attn_backward";
/// Largest head dimension.
pub const MAX_D: usize = ffi::SNUG_LOCAL_ATTN_MAX_D as usize;
/// Largest window.
pub const MAX_K: usize = ffi::SNUG_LOCAL_ATTN_MAX_K as usize;

/// How windows meet the map's border.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Border {
    /// Centred window; out-of-map keys are zeros that take part in the softmax (`F.pad` +
    /// `F.unfold`).
    ZeroPad,
    /// Window clamped inside the map (NATTEN); needs `H, W ≥ K`.
    Shift,
}

/// Memory layout of `q, k, v, out` and their gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[B, heads, H, W, d]`.
    Bhwd,
    /// `[B, C, H, W]` with `C = heads·d`: channel `head·d + c`.
    Bchw {
        /// Number of heads (must divide C).
        heads: usize,
    },
}

/// What to compute.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalAttnSpec {
    /// Window size K: odd, 3 ≤ K ≤ 13.
    pub kernel: usize,
    /// Border mode.
    pub border: Border,
    /// Layout of the tensors.
    pub layout: Layout,
    /// Softmax scale; `None` = `1/√d`.
    pub scale: Option<f32>,
}

/// Problem dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Batch.
    pub b: usize,
    /// Heads.
    pub heads: usize,
    /// Map height.
    pub h: usize,
    /// Map width.
    pub w: usize,
    /// Head dimension.
    pub d: usize,
}

/// Workspace of the forward: none.
pub fn workspace_bytes(_dims: Dims) -> usize {
    0
}

/// Workspace of the GPU backward: `D = rowsum(dO ∘ O)`, `B·heads·H·W·4` bytes (the CPU twin
/// needs none).
pub fn backward_workspace_bytes(dims: Dims) -> usize {
    4 * dims.b * dims.heads * dims.h * dims.w
}

/// Bytes the forward adds to what the backward needs besides its inputs: `O` (`T`) and the
/// log-sum-exp (f32).
pub fn saved_bytes(dims: Dims, dtype: DType) -> usize {
    let px = dims.b * dims.heads * dims.h * dims.w;
    px * dims.d * dtype.size() + 4 * px
}

/// The dimensions of a `q` shaped for `spec.layout`, validated against `spec`.
pub fn dims_of(shape: &[usize], spec: &LocalAttnSpec) -> Result<Dims> {
    dims(OP, shape, spec)
}

fn dims(op: &'static str, shape: &[usize], spec: &LocalAttnSpec) -> Result<Dims> {
    let k = spec.kernel;
    if k.is_multiple_of(2) || !(3..=MAX_K).contains(&k) {
        return Err(Error::Value { op, arg: "kernel", expected: format!("odd, 3 <= K <= {MAX_K}"), got: k.to_string() });
    }
    if let Some(s) = spec.scale {
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::Value { op, arg: "scale", expected: "finite and > 0".into(), got: s.to_string() });
        }
    }
    let d = match (spec.layout, shape) {
        (Layout::Bhwd, &[b, heads, h, w, d]) => Dims { b, heads, h, w, d },
        (Layout::Bchw { heads }, &[b, c, h, w]) => {
            if heads == 0 || !c.is_multiple_of(heads) {
                return Err(Error::Value { op, arg: "heads", expected: format!("a divisor of C = {c}"), got: heads.to_string() });
            }
            Dims { b, heads, h, w, d: c / heads }
        }
        (Layout::Bhwd, _) => return Err(Error::Shape { op, arg: "q", expected: "[B, heads, H, W, d]".into(), got: shape.to_vec() }),
        (Layout::Bchw { .. }, _) => return Err(Error::Shape { op, arg: "q", expected: "[B, C, H, W]".into(), got: shape.to_vec() }),
    };
    if d.b == 0 || d.heads == 0 || d.h == 0 || d.w == 0 || !(1..=MAX_D).contains(&d.d) {
        return Err(Error::Shape { op, arg: "q", expected: format!("B, heads, H, W >= 1 and 1 <= d <= {MAX_D}"), got: shape.to_vec() });
    }
    // The kernels hold B and heads in u32 and H, W (and positions in them) in int.
    if d.b > u32::MAX as usize || d.heads > u32::MAX as usize || d.h > i32::MAX as usize || d.w > i32::MAX as usize {
        return Err(Error::Shape { op, arg: "q", expected: "B, heads < 2^32 and H, W < 2^31".into(), got: shape.to_vec() });
    }
    if spec.border == Border::Shift && (d.h < k || d.w < k) {
        return Err(Error::Shape { op, arg: "q", expected: format!("a map of at least {k} x {k} for Border::Shift (use ZeroPad for smaller maps)"), got: shape.to_vec() });
    }
    Ok(d)
}

/// Element strides of (batch, head, row, column, channel).
fn strides(d: Dims, layout: Layout) -> [usize; 5] {
    match layout {
        Layout::Bhwd => [d.heads * d.h * d.w * d.d, d.h * d.w * d.d, d.w * d.d, d.d, 1],
        Layout::Bchw { .. } => [d.heads * d.d * d.h * d.w, d.d * d.h * d.w, d.w, 1, d.h * d.w],
    }
}

fn scale_of(spec: &LocalAttnSpec, d: Dims) -> f32 {
    spec.scale.unwrap_or(1.0 / (d.d as f32).sqrt())
}

/// The scale in f64 for the twin (the default `1/√d` unrounded).
fn scale_f64(spec: &LocalAttnSpec, d: Dims) -> f64 {
    spec.scale.map_or(1.0 / (d.d as f64).sqrt(), f64::from)
}

/// Window start along a dimension of size `n` for position `i` (may be negative for ZeroPad).
fn win_start(i: usize, n: usize, k: usize, border: Border) -> isize {
    let s = i as isize - (k / 2) as isize;
    match border {
        Border::ZeroPad => s,
        Border::Shift => s.clamp(0, (n - k) as isize),
    }
}

/// The forward: `out` (layout of `q`) and `lse` (`[B, heads, H, W]` f32, natural log).
pub fn local_attn<T: Real>(q: View<'_, T>, k: View<'_, T>, v: View<'_, T>, out: ViewMut<'_, T>, lse: ViewMut<'_, f32>, spec: LocalAttnSpec) -> Result<()> {
    let dm = dims(OP, q.shape(), &spec)?;
    let what = "the shape of q";
    check_shape(OP, "k", k.shape(), q.shape(), what)?;
    check_shape(OP, "v", v.shape(), q.shape(), what)?;
    check_shape(OP, "out", out.shape(), q.shape(), what)?;
    check_shape(OP, "lse", lse.shape(), &[dm.b, dm.heads, dm.h, dm.w], "[B, heads, H, W]")?;
    let locs = [("q", q.loc()), ("k", k.loc()), ("v", v.loc()), ("out", out.loc()), ("lse", lse.loc())];
    match common_loc(OP, &locs)? {
        Loc::Host => {
            let (o, l) = cpu_forward(&host_f64(OP, "q", &q)?, &host_f64(OP, "k", &k)?, &host_f64(OP, "v", &v)?, dm, &spec);
            store_f64(OP, "out", out, &o)?;
            store_f64(OP, "lse", lse, &l)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP)?;
            let p = params(dm, &spec, [q.device_ptr(), k.device_ptr(), v.device_ptr(), out.device_ptr(), lse.device_ptr(), None, None, None, None, None, None]);
            // SAFETY: q, k, v, out are device views on this handle of q's validated shape, in the
            // layout whose strides the params carry; lse is [B, heads, H, W] f32; the kernel reads
            // only inside the map and writes one row of out and one lse per query.
            unsafe { launch::<T>(gpu, OP, "fwd", &p) }
        }
    }
}

/// Gradients of `q, k, v` (written, not accumulated) from `dout`, given the forward's `out` and
/// `lse`. On the GPU `workspace` holds at least [`backward_workspace_bytes`]; the CPU twin
/// recomputes the softmax in f64 (it reads neither `out` nor `lse`) and takes `None`.
#[allow(clippy::too_many_arguments)]
pub fn local_attn_backward<T: Real>(
    q: View<'_, T>,
    k: View<'_, T>,
    v: View<'_, T>,
    out: View<'_, T>,
    lse: View<'_, f32>,
    dout: View<'_, T>,
    dq: ViewMut<'_, T>,
    dk: ViewMut<'_, T>,
    dv: ViewMut<'_, T>,
    workspace: Option<ViewMut<'_, f32>>,
    spec: LocalAttnSpec,
) -> Result<()> {
    let dm = dims(OP_BWD, q.shape(), &spec)?;
    let what = "the shape of q";
    for (arg, sh) in [("k", k.shape()), ("v", v.shape()), ("out", out.shape()), ("dout", dout.shape()), ("dq", dq.shape()), ("dk", dk.shape()), ("dv", dv.shape())] {
        check_shape(OP_BWD, arg, sh, q.shape(), what)?;
    }
    check_shape(OP_BWD, "lse", lse.shape(), &[dm.b, dm.heads, dm.h, dm.w], "[B, heads, H, W]")?;
    let mut locs = vec![("q", q.loc()), ("k", k.loc()), ("v", v.loc()), ("out", out.loc()), ("lse", lse.loc()), ("dout", dout.loc()), ("dq", dq.loc()), ("dk", dk.loc()), ("dv", dv.loc())];
    locs.extend(workspace.as_ref().map(|w| ("workspace", w.loc())));
    match common_loc(OP_BWD, &locs)? {
        Loc::Host => {
            let (gq, gk, gv) = cpu_backward(&host_f64(OP_BWD, "q", &q)?, &host_f64(OP_BWD, "k", &k)?, &host_f64(OP_BWD, "v", &v)?, &host_f64(OP_BWD, "dout", &dout)?, dm, &spec);
            store_f64(OP_BWD, "dq", dq, &gq)?;
            store_f64(OP_BWD, "dk", dk, &gk)?;
            store_f64(OP_BWD, "dv", dv, &gv)
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP_BWD)?;
            let want = backward_workspace_bytes(dm) / 4;
            let ws = need_workspace(OP_BWD, workspace, want, "backward_workspace_bytes")?;
            let p = params(dm, &spec, [q.device_ptr(), k.device_ptr(), v.device_ptr(), None, lse.device_ptr(), out.device_ptr(), dout.device_ptr(), dq.device_ptr(), dk.device_ptr(), dv.device_ptr(), ws.device_ptr()]);
            // SAFETY: every tensor is a device view on this handle of q's validated shape (lse
            // [B, heads, H, W] f32, the workspace at least that many f32). The dq kernel writes dq
            // and D (workspace); the dkdv kernel, launched after it on the same stream, reads D and
            // writes dk, dv. Reads stay inside the map.
            unsafe {
                launch::<T>(gpu, OP_BWD, "bwd_dq", &p)?;
                launch::<T>(gpu, OP_BWD, "bwd_dkdv", &p)
            }
        }
    }
}

/// Threads per pixel: a power of two, at least d/4, at most 32.
fn threads_per_pixel(d: usize) -> usize {
    d.div_ceil(4).next_power_of_two().min(32)
}

/// Pointers in order: q, k, v, out, lse, o, dout, dq, dk, dv, delta.
fn params(dm: Dims, spec: &LocalAttnSpec, p: [Option<u64>; 11]) -> SnugLocalAttnParams {
    let [sb, sh, sy, sx, sc] = strides(dm, spec.layout).map(|s| s as u64);
    let c = |i: usize| p[i].unwrap_or(0) as *const c_void;
    let m = |i: usize| p[i].unwrap_or(0) as *mut c_void;
    SnugLocalAttnParams {
        q: c(0),
        k: c(1),
        v: c(2),
        out: m(3),
        lse: p[4].unwrap_or(0) as *mut f32,
        o: c(5),
        dout: c(6),
        dq: m(7),
        dk: m(8),
        dv: m(9),
        delta: p[10].unwrap_or(0) as *mut f32,
        sb,
        sh,
        sy,
        sx,
        sc,
        b: dm.b as u32,
        heads: dm.heads as u32,
        h: dm.h as u32,
        w: dm.w as u32,
        d: dm.d as u32,
        ksize: spec.kernel as u32,
        zero_pad: (spec.border == Border::ZeroPad) as u32,
        tq: threads_per_pixel(dm.d) as u32,
        scale: scale_of(spec, dm),
        reserved: 0,
    }
}

/// # Safety
/// `p`'s pointers are device memory on `gpu` as the kernel `local_attn_{which}_{T}` documents.
unsafe fn launch<T: Real>(gpu: &crate::Gpu, op: &'static str, which: &str, p: &SnugLocalAttnParams) -> Result<()> {
    let dims = [p.b as u64, p.heads as u64, p.h as u64, p.w as u64]; // range-checked by dims()
    let threads = dims.iter().product::<u64>() * p.tq as u64;
    let blocks = threads.div_ceil(128);
    if blocks > i32::MAX as u64 {
        return Err(Error::Shape { op, arg: "q", expected: "B·heads·H·W·threads per pixel < 2^38".into(), got: dims.iter().map(|&x| x as usize).collect() });
    }
    let kernel: &'static str = match (which, T::DTYPE) {
        ("fwd", DType::BF16) => "local_attn_fwd_bf16",
        ("fwd", _) => "local_attn_fwd_f32",
        ("bwd_dq", DType::BF16) => "local_attn_bwd_dq_bf16",
        ("bwd_dq", _) => "local_attn_bwd_dq_f32",
        (_, DType::BF16) => "local_attn_bwd_dkdv_bf16",
        _ => "local_attn_bwd_dkdv_f32",
    };
    let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: forwarded from the caller.
    unsafe { gpu.launch(op, "local_attn", kernel, cfg, p) }
}

/// The neighbours of pixel (y, x): `(Some((yy, xx)))` for in-map keys, `None` for zero-padded ones.
fn window(y: usize, x: usize, dm: Dims, spec: &LocalAttnSpec) -> impl Iterator<Item = Option<(usize, usize)>> {
    let k = spec.kernel;
    let (y0, x0) = (win_start(y, dm.h, k, spec.border), win_start(x, dm.w, k, spec.border));
    let (h, w) = (dm.h as isize, dm.w as isize);
    (0..k * k).map(move |j| {
        let (yy, xx) = (y0 + (j / k) as isize, x0 + (j % k) as isize);
        (yy >= 0 && yy < h && xx >= 0 && xx < w).then_some((yy as usize, xx as usize))
    })
}

/// Row accessor of the twin: element (b, head, y, x, c).
struct Idx {
    st: [usize; 5],
}

impl Idx {
    fn at(&self, bh: (usize, usize), y: usize, x: usize, c: usize) -> usize {
        bh.0 * self.st[0] + bh.1 * self.st[1] + y * self.st[2] + x * self.st[3] + c * self.st[4]
    }
}

/// Softmax weights of one query over its window (padded keys included), its in-map keys and its
/// log-sum-exp.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn probs(q: &[f64], k: &[f64], ix: &Idx, bh: (usize, usize), y: usize, x: usize, dm: Dims, spec: &LocalAttnSpec) -> (Vec<f64>, Vec<Option<(usize, usize)>>, f64) {
    let scale = scale_f64(spec, dm);
    let keys: Vec<_> = window(y, x, dm, spec).collect();
    let s: Vec<f64> = keys.iter().map(|kk| kk.map_or(0.0, |(yy, xx)| scale * (0..dm.d).map(|c| q[ix.at(bh, y, x, c)] * k[ix.at(bh, yy, xx, c)]).sum::<f64>())).collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
    let z: f64 = e.iter().sum();
    (e.iter().map(|v| v / z).collect(), keys, m + z.ln())
}

fn cpu_forward(q: &[f64], k: &[f64], v: &[f64], dm: Dims, spec: &LocalAttnSpec) -> (Vec<f64>, Vec<f64>) {
    let ix = Idx { st: strides(dm, spec.layout) };
    let mut out = vec![0.0; q.len()];
    let mut lse = vec![0.0; dm.b * dm.heads * dm.h * dm.w];
    for b in 0..dm.b {
        for hd in 0..dm.heads {
            for y in 0..dm.h {
                for x in 0..dm.w {
                    let bh = (b, hd);
                    let (p, keys, l) = probs(q, k, &ix, bh, y, x, dm, spec);
                    for c in 0..dm.d {
                        out[ix.at(bh, y, x, c)] = p.iter().zip(&keys).map(|(p, kk)| kk.map_or(0.0, |(yy, xx)| p * v[ix.at(bh, yy, xx, c)])).sum();
                    }
                    lse[((b * dm.heads + hd) * dm.h + y) * dm.w + x] = l;
                }
            }
        }
    }
    (out, lse)
}

fn cpu_backward(q: &[f64], k: &[f64], v: &[f64], dout: &[f64], dm: Dims, spec: &LocalAttnSpec) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let ix = Idx { st: strides(dm, spec.layout) };
    let scale = scale_f64(spec, dm);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; q.len()], vec![0.0; q.len()]);
    for b in 0..dm.b {
        for hd in 0..dm.heads {
            let bh = (b, hd);
            for y in 0..dm.h {
                for x in 0..dm.w {
                    let (p, keys, _) = probs(q, k, &ix, bh, y, x, dm, spec);
                    let row = |t: &[f64], yy: usize, xx: usize| (0..dm.d).map(|c| t[ix.at(bh, yy, xx, c)]).collect::<Vec<f64>>();
                    let go = row(dout, y, x);
                    // dP_j = dO · v_j (0 for a zero key); D = Σ_j P_j dP_j = dO · O.
                    let dp: Vec<f64> = keys.iter().map(|kk| kk.map_or(0.0, |(yy, xx)| row(v, yy, xx).iter().zip(&go).map(|(a, b)| a * b).sum())).collect();
                    let dd: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                    let qi = row(q, y, x);
                    for (j, kk) in keys.iter().enumerate() {
                        let Some((yy, xx)) = *kk else { continue };
                        let ds = p[j] * (dp[j] - dd);
                        for c in 0..dm.d {
                            dq[ix.at(bh, y, x, c)] += scale * ds * k[ix.at(bh, yy, xx, c)];
                            dk[ix.at(bh, yy, xx, c)] += scale * ds * qi[c];
                            dv[ix.at(bh, yy, xx, c)] += p[j] * go[c];
                        }
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}
