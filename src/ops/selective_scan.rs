//! Fused bidirectional Mamba-1 selective scan (`kernels/selective_scan.cu`).
//!
//! Per direction (forward in time, and optionally reverse), sequence s, channel d, state n:
//! `dt = softplus(delta + delta_bias)`, `h_l = exp(dt·A) h_prev + dt·B_l·u_l`,
//! `y_l = Σ_n C_nl h_l + D·u_l`, with `h_prev` the previous step in that direction's order. The
//! reverse direction reads the same layout backwards (no flipped copies). Outputs
//! ([`Combine`]): the sum `(y_fwd + y_rev)·silu(z)` as `[S, D, L]`, or the concatenation
//! `[y_fwd·silu(z_fwd) | y_rev·silu(z_rev)]` as `[S, 2D, L]` (the V3 layer's Linear(2d → d) input).
//!
//! Shapes: `u, delta, z: [S, D, L]`, `A: [D, N]` (N ≤ 64), `B, C: [S, N, L]`, `D, delta_bias: [D]`.
//!
//! Backward ([`selective_scan_backward`]): recompute instead of store. The GPU forward saves the
//! state after every 32-step chunk (`chunk_states`, [`chunk_state_bytes`]); the backward kernel
//! recomputes the states inside one chunk at a time and walks it backwards. dB and dC are reduced
//! over channels on chip, per sequence, in a fixed order; dA, dD and delta_bias's gradient go
//! through per-sequence partials ([`backward_workspace_bytes`]) summed over sequences in order by a
//! second kernel. No (S, D, L, N) tensor anywhere; deterministic. The CPU twin (f64 reference)
//! recomputes everything.
//!
//! Types: activations (u, delta, z, B, C, the output and their gradients) are `T`, parameters (A,
//! D, delta_bias and their gradients) are `P`. On the GPU `T` is f32 or bf16 and `P` is f32; states
//! and every sum are f32 in both. With bf16 storage the summed mode rounds y_fwd once to bf16
//! before adding y_rev (the output buffer holds it between the passes), and the backward sums dB /
//! dC over channel groups in an f32 workspace ([`backward_workspace_bytes`]). The CPU twin takes
//! any [`Real`] for both (f64 as the reference; bf16 rounds once on store).

#![allow(clippy::needless_range_loop)] // index-heavy reference math reads clearer with indices

use cudarc::driver::LaunchConfig;

use std::ffi::c_void;

use super::{check_shape, common_loc, host_f64, require_f32, require_f32_or_bf16, store_f64, Real};
use crate::ffi::{self, SnugScanDir, SnugScanDirGrads, SnugScanReduceParams, SnugSelectiveScanBwdParams, SnugSelectiveScanParams};
use crate::memory::{Loc, View, ViewMut};
use crate::{DType, Element, Error, Result};

const OP: &str = "selective_scan";
const OP_BWD: &str = "selective_scan_backward";
/// Largest state size N.
pub const MAX_N: usize = ffi::SNUG_SCAN_MAX_N as usize;
/// Timesteps per chunk (one saved state per chunk for the backward).
pub const CHUNK: usize = ffi::SNUG_SCAN_CHUNK as usize;

/// How the two directions' outputs are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// `(y_fwd + y_rev)·silu(z)` with the forward direction's `z`: `[S, D, L]`. Also the only mode
    /// of a one-directional scan.
    Sum,
    /// `[y_fwd·silu(z_fwd) | y_rev·silu(z_rev)]` along channels: `[S, 2D, L]`.
    Concat,
}

/// One direction's inputs: activations `T`, parameters `P`.
#[derive(Debug)]
pub struct ScanDir<'a, T: Element, P: Element = T> {
    /// `[S, D, L]`.
    pub u: View<'a, T>,
    /// `[S, D, L]`, before `delta_bias` and softplus.
    pub delta: View<'a, T>,
    /// `[D, N]` (negative real parts in Mamba: `-exp(A_log)`).
    pub a: View<'a, P>,
    /// `[S, N, L]`.
    pub b: View<'a, T>,
    /// `[S, N, L]`.
    pub c: View<'a, T>,
    /// `[D]` skip connection, or none.
    pub d_skip: Option<View<'a, P>>,
    /// `[D]`, or none.
    pub delta_bias: Option<View<'a, P>>,
    /// `[S, D, L]` gate. With [`Combine::Sum`] only the forward direction's gate is used (and the
    /// reverse direction's must be `None`).
    pub z: Option<View<'a, T>>,
}

/// Gradients of one direction's inputs (all written, overwriting).
#[derive(Debug)]
pub struct ScanDirGrads<'a, T: Element, P: Element = T> {
    /// `[S, D, L]`.
    pub du: ViewMut<'a, T>,
    /// `[S, D, L]` (w.r.t. the raw delta, before bias and softplus).
    pub ddelta: ViewMut<'a, T>,
    /// `[D, N]`.
    pub da: ViewMut<'a, P>,
    /// `[S, N, L]`.
    pub db: ViewMut<'a, T>,
    /// `[S, N, L]`.
    pub dc: ViewMut<'a, T>,
    /// `[D]`, required when the direction has `d_skip`.
    pub dd_skip: Option<ViewMut<'a, P>>,
    /// `[D]`, required when the direction has `delta_bias`.
    pub ddelta_bias: Option<ViewMut<'a, P>>,
    /// `[S, D, L]`, required when the direction's gate is used.
    pub dz: Option<ViewMut<'a, T>>,
}

/// Dimensions (S, D, L, N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Sequences.
    pub s: usize,
    /// Channels.
    pub d: usize,
    /// Length.
    pub l: usize,
    /// State size.
    pub n: usize,
}

/// Workspace of the forward: none.
pub fn workspace_bytes(_dims: Dims) -> usize {
    0
}

/// Bytes of the chunk states the backward uses (f32, saved by the forward): `dirs·S·D·ceil(L/32)·N·4`.
pub fn chunk_state_bytes(dims: Dims, dirs: usize) -> usize {
    4 * dirs * dims.s * dims.d * dims.l.div_ceil(CHUNK) * dims.n
}

/// Workspace of the GPU backward with activations of `dtype`: f32 per-sequence partials of dA, dD,
/// d(delta_bias), `dirs·S·D·(N + 2)·4` bytes; with bf16 activations and more than one channel group
/// per sequence (`D` > channels per block) also the f32 running sums of dB and dC over the groups,
/// `dirs·2·S·N·L·4` bytes. The CPU twin needs none.
pub fn backward_workspace_bytes(dims: Dims, dirs: usize, dtype: DType) -> usize {
    4 * dirs * dims.s * dims.d * (dims.n + 2) + if needs_acc(dims, dtype) { 4 * dirs * 2 * dims.s * dims.n * dims.l } else { 0 }
}

/// Whether the backward keeps dB / dC running sums apart from the outputs (bf16, several groups).
fn needs_acc(dims: Dims, dtype: DType) -> bool {
    dtype == DType::BF16 && dims.d > block_shape(dims.n).1
}

/// Launch shape shared by both kernels: (threads per channel, channels per block).
fn block_shape(n: usize) -> (usize, usize) {
    let npad = n.next_power_of_two();
    (npad, (128 / npad).clamp(1, 32))
}

fn dims_of<T: Element, P: Element>(op: &'static str, x: &ScanDir<'_, T, P>) -> Result<Dims> {
    let (s, d, l) = match *x.u.shape() {
        [s, d, l] if s >= 1 && d >= 1 && l >= 1 => (s, d, l),
        _ => return Err(Error::Shape { op, arg: "u", expected: "[S, D, L] with S, D, L >= 1".into(), got: x.u.shape().to_vec() }),
    };
    let n = match *x.a.shape() {
        [d2, n] if d2 == d && (1..=MAX_N).contains(&n) => n,
        _ => return Err(Error::Shape { op, arg: "a", expected: format!("[{d}, N] with 1 <= N <= {MAX_N}"), got: x.a.shape().to_vec() }),
    };
    Ok(Dims { s, d, l, n })
}

fn check(op: &'static str, arg: &'static str, got: &[usize], want: &[usize]) -> Result<()> {
    check_shape(op, arg, got, want, "from u: [S, D, L] and a: [D, N]")
}

/// Validates one direction against `dims` and collects its locations.
fn validate_dir<'a, T: Element, P: Element>(op: &'static str, x: &ScanDir<'a, T, P>, dims: Dims, locs: &mut Vec<(&'static str, Loc<'a>)>) -> Result<()> {
    let Dims { s, d, l, n } = dims;
    check(op, "u", x.u.shape(), &[s, d, l])?;
    check(op, "delta", x.delta.shape(), &[s, d, l])?;
    check(op, "a", x.a.shape(), &[d, n])?;
    check(op, "b", x.b.shape(), &[s, n, l])?;
    check(op, "c", x.c.shape(), &[s, n, l])?;
    locs.extend([("u", x.u.loc()), ("delta", x.delta.loc()), ("a", x.a.loc()), ("b", x.b.loc()), ("c", x.c.loc())]);
    if let Some(v) = &x.d_skip {
        check(op, "d_skip", v.shape(), &[d])?;
        locs.push(("d_skip", v.loc()));
    }
    if let Some(v) = &x.delta_bias {
        check(op, "delta_bias", v.shape(), &[d])?;
        locs.push(("delta_bias", v.loc()));
    }
    if let Some(v) = &x.z {
        check(op, "z", v.shape(), &[s, d, l])?;
        locs.push(("z", v.loc()));
    }
    Ok(())
}

fn validate_pair<'a, T: Element, P: Element>(op: &'static str, fwd: &ScanDir<'a, T, P>, rev: Option<&ScanDir<'a, T, P>>, combine: Combine, locs: &mut Vec<(&'static str, Loc<'a>)>) -> Result<Dims> {
    let dims = dims_of(op, fwd)?;
    validate_dir(op, fwd, dims, locs)?;
    if let Some(r) = rev {
        let rd = dims_of(op, r)?;
        if rd != dims {
            return Err(Error::Shape { op, arg: "rev.u / rev.a", expected: format!("the forward direction's dims {dims:?}"), got: vec![rd.s, rd.d, rd.l, rd.n] });
        }
        validate_dir(op, r, dims, locs)?;
        if combine == Combine::Sum && r.z.is_some() {
            return Err(Error::Value { op, arg: "rev.z", expected: "None with Combine::Sum (the sum is gated once, by fwd.z)".into(), got: "a gate".into() });
        }
    } else if combine == Combine::Concat {
        return Err(Error::Value { op, arg: "combine", expected: "Combine::Sum for a one-directional scan".into(), got: "Concat".into() });
    }
    Ok(dims)
}

fn out_shape(dims: Dims, combine: Combine) -> [usize; 3] {
    match combine {
        Combine::Sum => [dims.s, dims.d, dims.l],
        Combine::Concat => [dims.s, 2 * dims.d, dims.l],
    }
}

/// The forward scan (see the module docs). `chunk_states`, if given (`[dirs, S, D, ceil(L/32),
/// N]` f32), receives the state after each 32-step chunk (processing order) for the backward.
pub fn selective_scan<T: Real, P: Real>(fwd: &ScanDir<'_, T, P>, rev: Option<&ScanDir<'_, T, P>>, combine: Combine, out: ViewMut<'_, T>, chunk_states: Option<ViewMut<'_, f32>>) -> Result<()> {
    let mut locs = Vec::new();
    let dims = validate_pair(OP, fwd, rev, combine, &mut locs)?;
    check(OP, "out", out.shape(), &out_shape(dims, combine))?;
    locs.push(("out", out.loc()));
    let dirs = 1 + rev.is_some() as usize;
    if let Some(cs) = &chunk_states {
        check(OP, "chunk_states", cs.shape(), &[dirs, dims.s, dims.d, dims.l.div_ceil(CHUNK), dims.n])?;
        locs.push(("chunk_states", cs.loc()));
    }
    match common_loc(OP, &locs)? {
        Loc::Host => {
            let mut st = chunk_states.as_ref().map(|_| vec![0.0; chunk_state_bytes(dims, dirs) / 4]);
            store_f64(OP, "out", out, &cpu_forward(fwd, rev, combine, dims, st.as_deref_mut())?)?;
            match (chunk_states, st) {
                (Some(view), Some(st)) => store_f64(OP, "chunk_states", view, &st),
                _ => Ok(()),
            }
        }
        Loc::Cuda(gpu) => {
            require_f32_or_bf16::<T>(OP)?;
            require_f32::<P>(OP)?;
            if dims.d * dims.n > i32::MAX as usize || dims.l > u32::MAX as usize {
                return Err(Error::Shape { op: OP, arg: "u", expected: "D·N < 2^31, L < 2^32".into(), got: fwd.u.shape().to_vec() });
            }
            let (npad, cpb) = block_shape(dims.n);
            let groups = dims.d.div_ceil(cpb) as u64;
            let blocks = groups * dims.s as u64;
            if blocks > i32::MAX as u64 {
                return Err(Error::Shape { op: OP, arg: "u", expected: "S * ceil(D / channels per block) < 2^31 blocks".into(), got: fwd.u.shape().to_vec() });
            }
            let smem = 4 * (2 * cpb * CHUNK + 2 * dims.n * CHUNK + cpb * CHUNK * (npad + 1));
            let p = SnugSelectiveScanParams {
                dir: [ffi_dir(Some(fwd)), ffi_dir(rev)],
                out: out.device_ptr().unwrap_or(0) as *mut c_void,
                chunk_states: chunk_states.as_ref().and_then(|c| c.device_ptr()).unwrap_or(0) as *mut f32,
                s: dims.s as u64,
                d: dims.d as u32,
                l: dims.l as u32,
                n: dims.n as u32,
                npad: npad as u32,
                channels_per_block: cpb as u32,
                concat: (combine == Combine::Concat) as u32,
            };
            let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: ((cpb * npad) as u32, 1, 1), shared_mem_bytes: smem as u32 };
            let kernel = if T::DTYPE == DType::BF16 { "selective_scan_fwd_bf16" } else { "selective_scan_fwd_f32" };
            // SAFETY: every pointer is a device view on this handle with the shape checked above
            // (or null for an absent optional input); the kernel reads [S, D, L] / [D, N] /
            // [S, N, L] / [D] within those shapes, writes `out` of out_shape, and indexes exactly
            // the shared memory sized here (smem_floats in the kernel header).
            unsafe { gpu.launch(OP, "selective_scan", kernel, cfg, &p) }
        }
    }
}

fn ffi_dir<T: Element, P: Element>(x: Option<&ScanDir<'_, T, P>>) -> SnugScanDir {
    let act = |v: &View<'_, T>| v.device_ptr().unwrap_or(0) as *const c_void;
    let par = |v: &View<'_, P>| v.device_ptr().unwrap_or(0) as *const f32;
    let opt_par = |v: &Option<View<'_, P>>| v.as_ref().map(par).unwrap_or(std::ptr::null());
    match x {
        None => SnugScanDir::default(),
        Some(x) => SnugScanDir {
            u: act(&x.u),
            delta: act(&x.delta),
            a: par(&x.a),
            b: act(&x.b),
            c: act(&x.c),
            d_skip: opt_par(&x.d_skip),
            delta_bias: opt_par(&x.delta_bias),
            z: x.z.as_ref().map(act).unwrap_or(std::ptr::null()),
        },
    }
}

fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// One direction's inputs as f64 host vectors.
struct Host {
    u: Vec<f64>,
    delta: Vec<f64>,
    a: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
    d_skip: Option<Vec<f64>>,
    delta_bias: Option<Vec<f64>>,
    z: Option<Vec<f64>>,
}

fn host<T: Real, P: Real>(op: &'static str, x: &ScanDir<'_, T, P>) -> Result<Host> {
    let f = |v: &View<'_, T>| host_f64(op, "input", v);
    let g = |v: &View<'_, P>| host_f64(op, "parameter", v);
    let o = |v: &Option<View<'_, P>>| v.as_ref().map(g).transpose();
    Ok(Host { u: f(&x.u)?, delta: f(&x.delta)?, a: g(&x.a)?, b: f(&x.b)?, c: f(&x.c)?, d_skip: o(&x.d_skip)?, delta_bias: o(&x.delta_bias)?, z: x.z.as_ref().map(f).transpose()? })
}

/// Time indices of direction r in processing order.
fn order(l: usize, r: usize) -> Box<dyn Iterator<Item = usize>> {
    if r == 0 {
        Box::new(0..l)
    } else {
        Box::new((0..l).rev())
    }
}

/// y (before the gate, with the D skip) of one direction, `[S, D, L]`; with `states`
/// (`[S, D, ceil(L/32), N]`) also the state after each 32-step chunk in processing order, as the
/// kernel saves it: forward after time steps 31, 63, ..., L−1; reverse after 32·(chunks−1), ..., 0.
fn scan_y(x: &Host, dims: Dims, r: usize, mut states: Option<&mut [f64]>) -> Vec<f64> {
    let Dims { s: ns, d: nd, l: nl, n: nn } = dims;
    let chunks = nl.div_ceil(CHUNK);
    let mut y = vec![0.0; ns * nd * nl];
    for s in 0..ns {
        for d in 0..nd {
            let mut h = vec![0.0; nn];
            let bias = x.delta_bias.as_ref().map_or(0.0, |v| v[d]);
            for l in order(nl, r) {
                let i = (s * nd + d) * nl + l;
                let dt = softplus(x.delta[i] + bias);
                let mut acc = 0.0;
                for n in 0..nn {
                    let bl = x.b[(s * nn + n) * nl + l];
                    h[n] = (dt * x.a[d * nn + n]).exp() * h[n] + dt * bl * x.u[i];
                    acc += x.c[(s * nn + n) * nl + l] * h[n];
                }
                y[i] = acc + x.d_skip.as_ref().map_or(0.0, |v| v[d]) * x.u[i];
                let chunk_done = if r == 0 { l % CHUNK == CHUNK - 1 || l + 1 == nl } else { l % CHUNK == 0 };
                if let (true, Some(st)) = (chunk_done, states.as_deref_mut()) {
                    let k = if r == 0 { l / CHUNK } else { chunks - 1 - l / CHUNK };
                    st[((s * nd + d) * chunks + k) * nn..][..nn].copy_from_slice(&h);
                }
            }
        }
    }
    y
}

fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}

fn cpu_forward<T: Real, P: Real>(fwd: &ScanDir<'_, T, P>, rev: Option<&ScanDir<'_, T, P>>, combine: Combine, dims: Dims, states: Option<&mut [f64]>) -> Result<Vec<f64>> {
    let per_dir = dims.s * dims.d * dims.l.div_ceil(CHUNK) * dims.n;
    let (sf, sb) = match states {
        Some(st) => {
            let (a, b) = st.split_at_mut(per_dir);
            (Some(a), Some(b))
        }
        None => (None, None),
    };
    let f = host(OP, fwd)?;
    let yf = scan_y(&f, dims, 0, sf);
    let gate = |y: f64, z: &Option<Vec<f64>>, i: usize| z.as_ref().map_or(y, |z| y * silu(z[i]));
    let Some(rev) = rev else {
        return Ok(yf.iter().enumerate().map(|(i, &y)| gate(y, &f.z, i)).collect());
    };
    let b = host(OP, rev)?;
    let yb = scan_y(&b, dims, 1, sb);
    Ok(match combine {
        Combine::Sum => (0..yf.len()).map(|i| gate(yf[i] + yb[i], &f.z, i)).collect(),
        Combine::Concat => {
            let (sd, dl) = (dims.s, dims.d * dims.l);
            let mut out = vec![0.0; 2 * sd * dl];
            for s in 0..sd {
                for k in 0..dl {
                    let i = s * dl + k;
                    out[s * 2 * dl + k] = gate(yf[i], &f.z, i);
                    out[s * 2 * dl + dl + k] = gate(yb[i], &b.z, i);
                }
            }
            out
        }
    })
}

/// f64 gradients of one direction.
struct HostGrads {
    du: Vec<f64>,
    ddelta: Vec<f64>,
    da: Vec<f64>,
    db: Vec<f64>,
    dc: Vec<f64>,
    dd: Vec<f64>,
    dbias: Vec<f64>,
}

/// Backward of one direction's scan from dy (gradient of y, the pre-gate output incl. D·u).
fn scan_backward(x: &Host, dims: Dims, r: usize, dy: &[f64]) -> HostGrads {
    let Dims { s: ns, d: nd, l: nl, n: nn } = dims;
    let mut g = HostGrads { du: vec![0.0; ns * nd * nl], ddelta: vec![0.0; ns * nd * nl], da: vec![0.0; nd * nn], db: vec![0.0; ns * nn * nl], dc: vec![0.0; ns * nn * nl], dd: vec![0.0; nd], dbias: vec![0.0; nd] };
    let steps: Vec<usize> = order(nl, r).collect();
    for s in 0..ns {
        for d in 0..nd {
            let bias = x.delta_bias.as_ref().map_or(0.0, |v| v[d]);
            let dskip = x.d_skip.as_ref().map_or(0.0, |v| v[d]);
            // Recompute the states in processing order: hs[k] = state after step k.
            let mut hs = vec![vec![0.0; nn]; nl + 1]; // hs[0] = 0, hs[k + 1] after steps[k]
            for (k, &l) in steps.iter().enumerate() {
                let i = (s * nd + d) * nl + l;
                let dt = softplus(x.delta[i] + bias);
                for n in 0..nn {
                    hs[k + 1][n] = (dt * x.a[d * nn + n]).exp() * hs[k][n] + dt * x.b[(s * nn + n) * nl + l] * x.u[i];
                }
            }
            let mut gh = vec![0.0; nn]; // dL/dh after the current step, carried backwards
            for (k, &l) in steps.iter().enumerate().rev() {
                let i = (s * nd + d) * nl + l;
                let raw = x.delta[i] + bias;
                let dt = softplus(raw);
                g.dd[d] += dy[i] * x.u[i];
                g.du[i] += dy[i] * dskip;
                let mut ddt = 0.0;
                for n in 0..nn {
                    let bn = (s * nn + n) * nl + l;
                    let an = x.a[d * nn + n];
                    let ea = (dt * an).exp();
                    // h_k = ea h_{k-1} + dt B u; y += C h_k.
                    g.dc[bn] += dy[i] * hs[k + 1][n];
                    let gk = gh[n] + x.c[bn] * dy[i];
                    let dea = gk * hs[k][n];
                    ddt += dea * ea * an + gk * x.b[bn] * x.u[i];
                    g.da[d * nn + n] += dea * ea * dt;
                    g.db[bn] += gk * dt * x.u[i];
                    g.du[i] += gk * dt * x.b[bn];
                    gh[n] = gk * ea; // to the previous state
                }
                let dr = ddt * if raw > 20.0 { 1.0 } else { sigmoid(raw) };
                g.ddelta[i] = dr;
                g.dbias[d] += dr;
            }
        }
    }
    g
}

/// What the GPU backward needs besides the inputs: the forward's chunk states and a workspace.
/// The CPU twin recomputes everything and takes [`BackwardSaved::None`].
#[derive(Debug)]
pub enum BackwardSaved<'a> {
    /// CPU twin: nothing saved.
    None,
    /// GPU: `chunk_states` as written by [`selective_scan`] (`[dirs, S, D, ceil(L/32), N]`) and
    /// a workspace of at least [`backward_workspace_bytes`] (f32).
    Gpu {
        /// The forward's chunk states.
        chunk_states: View<'a, f32>,
        /// Scratch for per-sequence partial sums.
        workspace: ViewMut<'a, f32>,
    },
}

/// Gradients of every input of both directions from `dout` (the gradient of the forward's
/// output), written (not accumulated) into `gfwd` / `grev`.
#[allow(clippy::too_many_arguments)]
pub fn selective_scan_backward<T: Real, P: Real>(
    fwd: &ScanDir<'_, T, P>,
    rev: Option<&ScanDir<'_, T, P>>,
    combine: Combine,
    dout: View<'_, T>,
    saved: BackwardSaved<'_>,
    gfwd: ScanDirGrads<'_, T, P>,
    grev: Option<ScanDirGrads<'_, T, P>>,
) -> Result<()> {
    let mut locs = Vec::new();
    let dims = validate_pair(OP_BWD, fwd, rev, combine, &mut locs)?;
    check(OP_BWD, "dout", dout.shape(), &out_shape(dims, combine))?;
    locs.push(("dout", dout.loc()));
    if rev.is_some() != grev.is_some() {
        return Err(Error::Value { op: OP_BWD, arg: "grev", expected: "gradients for the reverse direction exactly when it exists".into(), got: format!("{}", grev.is_some()) });
    }
    let check_grads = |g: &ScanDirGrads<'_, T, P>, x: &ScanDir<'_, T, P>, gated: bool| -> Result<()> {
        let Dims { s, d, l, n } = dims;
        check(OP_BWD, "du", g.du.shape(), &[s, d, l])?;
        check(OP_BWD, "ddelta", g.ddelta.shape(), &[s, d, l])?;
        check(OP_BWD, "da", g.da.shape(), &[d, n])?;
        check(OP_BWD, "db", g.db.shape(), &[s, n, l])?;
        check(OP_BWD, "dc", g.dc.shape(), &[s, n, l])?;
        for (arg, want, got) in [("dd_skip", x.d_skip.is_some(), g.dd_skip.as_ref().map(|v| v.shape())), ("ddelta_bias", x.delta_bias.is_some(), g.ddelta_bias.as_ref().map(|v| v.shape()))] {
            match (want, got) {
                (true, Some(sh)) => check(OP_BWD, arg, sh, &[d])?,
                (false, None) => {}
                (w, _) => return Err(Error::Value { op: OP_BWD, arg, expected: format!("present exactly when the input is ({w})"), got: format!("{}", !w) }),
            }
        }
        match (gated, g.dz.as_ref()) {
            (true, Some(v)) => check(OP_BWD, "dz", v.shape(), &[s, d, l]),
            (false, None) => Ok(()),
            (w, _) => Err(Error::Value { op: OP_BWD, arg: "dz", expected: format!("present exactly when the direction's gate is used ({w})"), got: format!("{}", !w) }),
        }
    };
    check_grads(&gfwd, fwd, fwd.z.is_some())?;
    if let (Some(r), Some(g)) = (rev, &grev) {
        check_grads(g, r, combine == Combine::Concat && r.z.is_some())?;
    }
    let dirs = 1 + rev.is_some() as usize;
    for g in std::iter::once(&gfwd).chain(grev.as_ref()) {
        locs.extend([("du", g.du.loc()), ("ddelta", g.ddelta.loc()), ("da", g.da.loc()), ("db", g.db.loc()), ("dc", g.dc.loc())]);
        locs.extend(g.dd_skip.iter().map(|v| ("dd_skip", v.loc())).chain(g.ddelta_bias.iter().map(|v| ("ddelta_bias", v.loc()))).chain(g.dz.iter().map(|v| ("dz", v.loc()))));
    }
    if let BackwardSaved::Gpu { chunk_states, workspace } = &saved {
        check(OP_BWD, "chunk_states", chunk_states.shape(), &[dirs, dims.s, dims.d, dims.l.div_ceil(CHUNK), dims.n])?;
        let want = backward_workspace_bytes(dims, dirs, T::DTYPE) / 4;
        if workspace.len() < want {
            return Err(Error::Length { op: OP_BWD, arg: "workspace", expected: format!("at least {want} f32 (backward_workspace_bytes)"), got: workspace.len() });
        }
        locs.extend([("chunk_states", chunk_states.loc()), ("workspace", workspace.loc())]);
    }
    if let Loc::Cuda(gpu) = common_loc(OP_BWD, &locs)? {
        let BackwardSaved::Gpu { chunk_states, workspace } = saved else {
            return Err(Error::Value { op: OP_BWD, arg: "saved", expected: "BackwardSaved::Gpu on the GPU".into(), got: "None".into() });
        };
        require_f32_or_bf16::<T>(OP_BWD)?;
        require_f32::<P>(OP_BWD)?;
        return gpu_backward(gpu, fwd, rev, combine, &dout, &chunk_states, &workspace, dims, [Some(&gfwd), grev.as_ref()]);
    }
    let dout = dout.to_vec()?.iter().map(|x| x.to_f64().unwrap_or(f64::NAN)).collect::<Vec<_>>();
    let f = host(OP_BWD, fwd)?;
    let (sd, dl) = (dims.s, dims.d * dims.l);
    // Split dout into each direction's dy (before the gate) and the gates' gradients.
    let yf = scan_y(&f, dims, 0, None);
    let (dyf, dyb, dzf, dzb, b) = match rev {
        None => {
            let (dy, dz) = gate_backward(&dout, &yf, &f.z);
            (dy, None, dz, None, None)
        }
        Some(rev) => {
            let b = host(OP_BWD, rev)?;
            let yb = scan_y(&b, dims, 1, None);
            match combine {
                Combine::Sum => {
                    let ysum: Vec<f64> = yf.iter().zip(&yb).map(|(a, b)| a + b).collect();
                    let (dy, dz) = gate_backward(&dout, &ysum, &f.z);
                    (dy.clone(), Some(dy), dz, None, Some(b))
                }
                Combine::Concat => {
                    let (mut of, mut ob) = (vec![0.0; sd * dl], vec![0.0; sd * dl]);
                    for s in 0..sd {
                        of[s * dl..(s + 1) * dl].copy_from_slice(&dout[s * 2 * dl..s * 2 * dl + dl]);
                        ob[s * dl..(s + 1) * dl].copy_from_slice(&dout[s * 2 * dl + dl..(s + 1) * 2 * dl]);
                    }
                    let (dyf, dzf) = gate_backward(&of, &yf, &f.z);
                    let (dyb, dzb) = gate_backward(&ob, &yb, &b.z);
                    (dyf, Some(dyb), dzf, dzb, Some(b))
                }
            }
        }
    };
    write_grads(scan_backward(&f, dims, 0, &dyf), dzf, gfwd)?;
    if let (Some(b), Some(dyb), Some(g)) = (b, dyb, grev) {
        write_grads(scan_backward(&b, dims, 1, &dyb), dzb, g)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn gpu_backward<T: Real, P: Real>(
    gpu: &crate::Gpu,
    fwd: &ScanDir<'_, T, P>,
    rev: Option<&ScanDir<'_, T, P>>,
    combine: Combine,
    dout: &View<'_, T>,
    chunk_states: &View<'_, f32>,
    workspace: &ViewMut<'_, f32>,
    dims: Dims,
    grads: [Option<&ScanDirGrads<'_, T, P>>; 2],
) -> Result<()> {
    let Dims { s, d, l, n } = dims;
    if d * n > i32::MAX as usize || l > u32::MAX as usize || s > i32::MAX as usize {
        return Err(Error::Shape { op: OP_BWD, arg: "u", expected: "S < 2^31, D·N < 2^31, L < 2^32".into(), got: vec![s, d, l] });
    }
    let (npad, cpb) = block_shape(n);
    let nwarps = (cpb * npad).div_ceil(32);
    let subs = if npad > 32 { cpb } else { nwarps };
    let halves = if npad > 32 { 2 } else { 1 };
    const SUB: usize = 8;
    let smem = 4 * (4 * cpb * CHUNK + 2 * n * CHUNK + 2 * subs * SUB * n + 3 * halves * cpb * CHUNK);
    let ws = workspace.device_ptr().unwrap_or(0);
    // Workspace: per direction [da S·D·N | dd S·D | dbias S·D], then (bf16, several channel
    // groups) per direction [db_acc S·N·L | dc_acc S·N·L].
    let dirs = grads.iter().flatten().count();
    let part = |r: usize| ws + (4 * r * s * d * (n + 2)) as u64;
    let acc = |r: usize, k: usize| ws + (4 * (dirs * s * d * (n + 2) + (2 * r + k) * s * n * l)) as u64;
    let separate_acc = needs_acc(dims, T::DTYPE);
    let mut g2 = [SnugScanDirGrads::default(), SnugScanDirGrads::default()];
    for (r, g) in grads.iter().enumerate() {
        let Some(g) = g else { continue };
        let p = |v: &ViewMut<'_, T>| v.device_ptr().unwrap_or(0) as *mut c_void;
        let base = part(r);
        let (db, dc) = (p(&g.db), p(&g.dc));
        let (db_acc, dc_acc) = match (separate_acc, T::DTYPE) {
            (true, _) => (acc(r, 0) as *mut f32, acc(r, 1) as *mut f32),
            (false, DType::F32) => (db as *mut f32, dc as *mut f32), // f32 outputs are their own sums
            (false, _) => (std::ptr::null_mut(), std::ptr::null_mut()), // one channel group: unused
        };
        g2[r] = SnugScanDirGrads {
            du: p(&g.du),
            ddelta: p(&g.ddelta),
            db,
            dc,
            dz: g.dz.as_ref().map(p).unwrap_or(std::ptr::null_mut()),
            da_part: base as *mut f32,
            dd_part: (base + (4 * s * d * n) as u64) as *mut f32,
            dbias_part: (base + (4 * s * d * (n + 1)) as u64) as *mut f32,
            db_acc,
            dc_acc,
        };
    }
    let p = SnugSelectiveScanBwdParams {
        dir: [ffi_dir(Some(fwd)), ffi_dir(rev)],
        grad: g2,
        dout: dout.device_ptr().unwrap_or(0) as *const c_void,
        chunk_states: chunk_states.device_ptr().unwrap_or(0) as *const f32,
        s: s as u64,
        d: d as u32,
        l: l as u32,
        n: n as u32,
        npad: npad as u32,
        channels_per_block: cpb as u32,
        concat: (combine == Combine::Concat) as u32,
    };
    let cfg = LaunchConfig { grid_dim: (s as u32, 1, 1), block_dim: ((cpb * npad) as u32, 1, 1), shared_mem_bytes: smem as u32 };
    let kernel = if T::DTYPE == DType::BF16 { "selective_scan_bwd_bf16" } else { "selective_scan_bwd_f32" };
    // SAFETY: inputs, dout, chunk_states and every gradient are device views on this handle with
    // the shapes checked by the caller, activations of the kernel's element type; the workspace
    // holds backward_workspace_bytes (checked) and is carved into the partial arrays above; the
    // kernel indexes exactly the shared memory sized here (see the backward's header comment in
    // the kernel file).
    unsafe { gpu.launch(OP_BWD, "selective_scan", kernel, cfg, &p)? };
    for (r, g) in grads.iter().enumerate() {
        let Some(g) = g else { continue };
        let q = SnugScanReduceParams {
            da: g.da.device_ptr().unwrap_or(0) as *mut f32,
            dd: g.dd_skip.as_ref().and_then(|v| v.device_ptr()).unwrap_or(0) as *mut f32,
            dbias: g.ddelta_bias.as_ref().and_then(|v| v.device_ptr()).unwrap_or(0) as *mut f32,
            da_part: g2[r].da_part,
            dd_part: g2[r].dd_part,
            dbias_part: g2[r].dbias_part,
            s: s as u64,
            d: d as u32,
            n: n as u32,
        };
        let items = (d * n + d) as u64;
        let cfg = LaunchConfig { grid_dim: (items.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: da [D, N], dd/dbias [D] (or null) are checked device views; the partials were
        // written by the launch above, earlier on the same stream.
        unsafe { gpu.launch(OP_BWD, "selective_scan", "selective_scan_reduce_f32", cfg, &q)? };
    }
    Ok(())
}

/// out = y·silu(z): (dy, dz).
fn gate_backward(dout: &[f64], y: &[f64], z: &Option<Vec<f64>>) -> (Vec<f64>, Option<Vec<f64>>) {
    match z {
        None => (dout.to_vec(), None),
        Some(z) => {
            let dy = dout.iter().zip(z).map(|(g, &z)| g * silu(z)).collect();
            let dz = dout.iter().zip(y).zip(z).map(|((g, y), &z)| {
                let sg = sigmoid(z);
                g * y * (sg * (1.0 + z * (1.0 - sg)))
            });
            (dy, Some(dz.collect()))
        }
    }
}

fn write_grads<T: Real, P: Real>(g: HostGrads, dz: Option<Vec<f64>>, out: ScanDirGrads<'_, T, P>) -> Result<()> {
    let put = |dst: ViewMut<'_, T>, src: &[f64]| store_f64(OP_BWD, "gradient", dst, src);
    let put_p = |dst: ViewMut<'_, P>, src: &[f64]| store_f64(OP_BWD, "gradient", dst, src);
    put(out.du, &g.du)?;
    put(out.ddelta, &g.ddelta)?;
    put_p(out.da, &g.da)?;
    put(out.db, &g.db)?;
    put(out.dc, &g.dc)?;
    if let Some(v) = out.dd_skip {
        put_p(v, &g.dd)?;
    }
    if let Some(v) = out.ddelta_bias {
        put_p(v, &g.dbias)?;
    }
    if let (Some(v), Some(dz)) = (out.dz, dz) {
        put(v, &dz)?;
    }
    Ok(())
}
