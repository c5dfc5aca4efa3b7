//! The (Bi)Mamba block as composable ops, forward and backward, with its whole footprint planned
//! up front (`kernels/mamba.cu` holds only the elementwise `A = −exp(A_log)` glue).
//!
//! One direction (Mamba-1, as `mamba_ssm.Mamba` with `d_conv ≤ 4`, no biases on the projections):
//!
//! ```text
//! x [S, L, d_model] ─ in_proj ─┬─ xc [S, D, L] ─ conv1d(k, causal; anti-causal in reverse) + SiLU ─ u
//!                              └─ z  [S, D, L]
//! u ─ x_proj ─ dt_in [S, R, L], B [S, N, L], C [S, N, L];  dt_in ─ dt_proj ─ delta [S, D, L]
//! scan(u, delta + dt_proj.bias, A = −exp(A_log), B, C, D_skip) · silu(z) ─ y ─ out_proj ─ out [S, L, d_model]
//! ```
//!
//! A bidirectional block (seed 000's V3 layer: forward and backward Mamba with separate weights)
//! runs both directions' scans in ONE fused kernel in [`Combine::Concat`] mode (no flipped copies;
//! the reverse direction's convolution looks ahead instead of back) and returns each direction's
//! `out_proj` output; the layer combines them (V3: `Linear(2d → d)` on the concatenation, i.e. two
//! GEMMs accumulating into one output). The two directions read the same input `x`, so `dx` is the
//! sum of both directions' input gradients.
//!
//! Layouts: the scan and the convolution work channel-major (`[S, D, L]`), the block's input and
//! output are token-major (`[S, L, d_model]`, PyTorch's `(batch, length, dim)`); the projections
//! are batched GEMMs over sequences ([`super::gemm`]) that read and write either layout, so no
//! transpose is ever materialised. Weight gradients are per-sequence products summed in a fixed
//! order ([`super::gemm::gemm_sum_batches`]): the backward is deterministic. Parameter gradients
//! are written (overwritten), not accumulated.
//!
//! PyTorch parameter mapping per direction: `in_proj.weight` = `[in_x; in_z]` (rows `0..D`,
//! `D..2D`), `conv1d.weight[:, 0, :]` = `conv_w`, `conv1d.bias` = `conv_b`, `x_proj.weight` =
//! `[x_dt; x_b; x_c]` (rows `0..R`, `R..R+N`, `R+N..R+2N`), `dt_proj.weight` = `dt_w`,
//! `dt_proj.bias` = `dt_bias`, `A_log`, `D` = `d_skip`, `out_proj.weight` = `out_w`.
//!
//! Footprint ([`MambaBlock::footprint`], a pure function of the config and shapes; every byte is
//! a buffer of the plan): parameters and their gradients; saved for backward (per direction xc,
//! z, u, delta `[S, D, L]`, dt_in `[S, R, L]`, B and C `[S, N, L]`, A `[D, N]`, plus the scan
//! output `[S, dirs·D, L]` and its chunk states — all independent of nothing but shapes); and the
//! backward's scratch (the output gradient of the scan, per direction du, ddelta, dz, dxc, ddt_in,
//! dB, dC, dA, and one f32 workspace shared by the scan, the convolution and the weight-gradient
//! sums, sized for the largest). Nothing is allocated during a step.
//!
//! Types: `T` = f32 on the GPU (f64 or f32 on the CPU, where every op runs its twin); bf16 storage
//! of the block's activations is not offered yet (the scan and the GEMMs take bf16; the
//! convolution does not).

use cudarc::driver::LaunchConfig;

use super::causal_conv1d::{self, causal_conv1d, causal_conv1d_backward, ConvOptions};
use super::gemm::{self, gemm, gemm_sum_batches, GemmSpec, Mat, MatMut};
use super::selective_scan::{self, selective_scan, selective_scan_backward, BackwardSaved, Combine, Dims, ScanDir, ScanDirGrads};
use super::{check_shape, common_loc, host_f64, require_f32, store_f64, Real};
use crate::ffi::SnugMambaAParams;
use crate::memory::{Loc, View, ViewMut};
use crate::{Arena, Borrows, Buf, Error, Plan, Result, Role};

const OP: &str = "mamba";
const OP_A: &str = "mamba_a";

/// Block hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MambaConfig {
    /// Width of the block's input and output.
    pub d_model: usize,
    /// Inner width D (`expand · d_model`).
    pub d_inner: usize,
    /// State size N (≤ 64).
    pub d_state: usize,
    /// Rank R of the delta projection.
    pub dt_rank: usize,
    /// Convolution width (≤ 4).
    pub d_conv: usize,
    /// Forward and reverse directions (separate weights), else forward only.
    pub bidirectional: bool,
}

impl MambaConfig {
    /// `mamba_ssm.Mamba` defaults: `d_inner = expand · d_model`, `dt_rank = ceil(d_model / 16)`,
    /// `d_conv = 4`.
    pub fn new(d_model: usize, d_state: usize, expand: usize, bidirectional: bool) -> MambaConfig {
        MambaConfig { d_model, d_inner: expand * d_model, d_state, dt_rank: d_model.div_ceil(16), d_conv: 4, bidirectional }
    }

    fn dirs(&self) -> usize {
        1 + self.bidirectional as usize
    }

    fn validate(&self) -> Result<()> {
        let c = self;
        let ok = c.d_model >= 1 && c.d_inner >= 1 && c.dt_rank >= 1 && (1..=selective_scan::MAX_N).contains(&c.d_state) && (1..=causal_conv1d::MAX_K).contains(&c.d_conv);
        if !ok {
            return Err(Error::Value { op: OP, arg: "config", expected: format!("d_model, d_inner, dt_rank >= 1, 1 <= d_state <= {}, 1 <= d_conv <= {}", selective_scan::MAX_N, causal_conv1d::MAX_K), got: format!("{c:?}") });
        }
        Ok(())
    }
}

/// One direction's parameters (or their gradients: same names and shapes).
#[derive(Clone, Copy, Debug)]
pub struct DirParams<T: Real> {
    /// `[D, d_model]` (in_proj rows 0..D).
    pub in_x: Buf<T>,
    /// `[D, d_model]` (in_proj rows D..2D).
    pub in_z: Buf<T>,
    /// `[D, d_conv]`.
    pub conv_w: Buf<T>,
    /// `[D]`.
    pub conv_b: Buf<T>,
    /// `[R, D]` (x_proj rows 0..R).
    pub x_dt: Buf<T>,
    /// `[N, D]` (x_proj rows R..R+N).
    pub x_b: Buf<T>,
    /// `[N, D]` (x_proj rows R+N..R+2N).
    pub x_c: Buf<T>,
    /// `[D, R]`.
    pub dt_w: Buf<T>,
    /// `[D]`.
    pub dt_bias: Buf<T>,
    /// `[D, N]`.
    pub a_log: Buf<T>,
    /// `[D]`.
    pub d_skip: Buf<T>,
    /// `[d_model, D]`.
    pub out_w: Buf<T>,
}

/// One direction's tensors saved for the backward.
#[derive(Clone, Copy, Debug)]
struct DirSaved<T: Real> {
    xc: Buf<T>,
    z: Buf<T>,
    u: Buf<T>,
    delta: Buf<T>,
    dt_in: Buf<T>,
    b: Buf<T>,
    c: Buf<T>,
    a: Buf<T>,
}

/// One direction's backward scratch.
#[derive(Clone, Copy, Debug)]
struct DirScratch<T: Real> {
    du: Buf<T>,
    ddelta: Buf<T>,
    dz: Buf<T>,
    dxc: Buf<T>,
    ddt_in: Buf<T>,
    db: Buf<T>,
    dc: Buf<T>,
    da: Buf<T>,
}

/// Bytes of the block by role (element bytes; the plan adds its alignment padding per buffer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Parameters.
    pub params: usize,
    /// Parameter gradients.
    pub grads: usize,
    /// Kept from forward for backward.
    pub saved: usize,
    /// Backward scratch and op workspaces.
    pub workspace: usize,
}

/// A planned (Bi)Mamba block over `S` sequences of length `L`.
#[derive(Debug)]
pub struct MambaBlock<T: Real> {
    cfg: MambaConfig,
    s: usize,
    l: usize,
    /// Parameters per direction (`[0]` forward in time, `[1]` reverse).
    pub params: Vec<DirParams<T>>,
    /// Parameter gradients per direction.
    pub grads: Vec<DirParams<T>>,
    saved: Vec<DirSaved<T>>,
    y: Buf<T>,
    chunk_states: Buf<f32>,
    scratch: Vec<DirScratch<T>>,
    dy: Buf<T>,
    ws: Buf<f32>,
    cublas_ws: Buf<u8>,
}

/// Shapes of one direction's parameters, in [`DirParams`] field order.
fn param_shapes(c: &MambaConfig) -> [(&'static str, Vec<usize>); 12] {
    let (dm, d, n, r, k) = (c.d_model, c.d_inner, c.d_state, c.dt_rank, c.d_conv);
    [
        ("in_x", vec![d, dm]),
        ("in_z", vec![d, dm]),
        ("conv_w", vec![d, k]),
        ("conv_b", vec![d]),
        ("x_dt", vec![r, d]),
        ("x_b", vec![n, d]),
        ("x_c", vec![n, d]),
        ("dt_w", vec![d, r]),
        ("dt_bias", vec![d]),
        ("a_log", vec![d, n]),
        ("d_skip", vec![d]),
        ("out_w", vec![dm, d]),
    ]
}

/// Elements of the shared f32 workspace: the largest of the scan's and the convolution's backward
/// workspaces and the weight-gradient sums' per-sequence products.
fn ws_elems(c: &MambaConfig, s: usize, l: usize, dtype: crate::DType) -> usize {
    let (dm, d, n, r) = (c.d_model, c.d_inner, c.d_state, c.dt_rank);
    let scan = selective_scan::backward_workspace_bytes(Dims { s, d, l, n }, c.dirs(), dtype) / 4;
    let conv = causal_conv1d::backward_workspace_bytes(s, d, c.d_conv) / 4;
    let sums = [d * dm, d * r, n * d].into_iter().map(|mn| gemm::sum_batches_workspace_bytes(s, mn, 1) / 4).max().unwrap_or(0);
    scan.max(conv).max(sums)
}

impl<T: Real> MambaBlock<T> {
    /// Declares every buffer of the block (parameters, gradients, saved tensors, backward scratch,
    /// workspaces) in `plan`, named `{prefix}.{dir}.{name}`. Input, output and their gradients
    /// belong to the caller.
    pub fn declare(plan: &mut Plan, prefix: &str, cfg: MambaConfig, s: usize, l: usize) -> Result<MambaBlock<T>> {
        cfg.validate()?;
        if s == 0 || l == 0 {
            return Err(Error::Shape { op: OP, arg: "s, l", expected: "S, L >= 1".into(), got: vec![s, l] });
        }
        let (d, n, r) = (cfg.d_inner, cfg.d_state, cfg.dt_rank);
        let dirs = cfg.dirs();
        let mut params = Vec::new();
        let mut grads = Vec::new();
        let mut saved = Vec::new();
        let mut scratch = Vec::new();
        for k in 0..dirs {
            let dir = if k == 0 { "fwd" } else { "rev" };
            let mut decl = |role: Role, what: &str| -> Result<DirParams<T>> {
                let sh = param_shapes(&cfg);
                let mut b = Vec::with_capacity(12);
                for (name, shape) in &sh {
                    b.push(plan.add::<T>(format!("{prefix}.{dir}.{name}{what}"), shape, role)?);
                }
                Ok(DirParams { in_x: b[0], in_z: b[1], conv_w: b[2], conv_b: b[3], x_dt: b[4], x_b: b[5], x_c: b[6], dt_w: b[7], dt_bias: b[8], a_log: b[9], d_skip: b[10], out_w: b[11] })
            };
            params.push(decl(Role::Param, "")?);
            grads.push(decl(Role::Grad, ".grad")?);
            let mut add = |name: &str, shape: &[usize], role: Role| plan.add::<T>(format!("{prefix}.{dir}.{name}"), shape, role);
            saved.push(DirSaved {
                xc: add("xc", &[s, d, l], Role::Saved)?,
                z: add("z", &[s, d, l], Role::Saved)?,
                u: add("u", &[s, d, l], Role::Saved)?,
                delta: add("delta", &[s, d, l], Role::Saved)?,
                dt_in: add("dt_in", &[s, r, l], Role::Saved)?,
                b: add("b", &[s, n, l], Role::Saved)?,
                c: add("c", &[s, n, l], Role::Saved)?,
                a: add("a", &[d, n], Role::Saved)?,
            });
            scratch.push(DirScratch {
                du: add("du", &[s, d, l], Role::Workspace)?,
                ddelta: add("ddelta", &[s, d, l], Role::Workspace)?,
                dz: add("dz", &[s, d, l], Role::Workspace)?,
                dxc: add("dxc", &[s, d, l], Role::Workspace)?,
                ddt_in: add("ddt_in", &[s, r, l], Role::Workspace)?,
                db: add("db", &[s, n, l], Role::Workspace)?,
                dc: add("dc", &[s, n, l], Role::Workspace)?,
                da: add("da", &[d, n], Role::Workspace)?,
            });
        }
        let y = plan.add::<T>(format!("{prefix}.y"), &[s, dirs * d, l], Role::Saved)?;
        let chunk_states = plan.add::<f32>(format!("{prefix}.chunk_states"), &[dirs, s, d, l.div_ceil(selective_scan::CHUNK), n], Role::Saved)?;
        let dy = plan.add::<T>(format!("{prefix}.dy"), &[s, dirs * d, l], Role::Workspace)?;
        let ws = plan.add::<f32>(format!("{prefix}.workspace"), &[ws_elems(&cfg, s, l, T::DTYPE)], Role::Workspace)?;
        let cublas_ws = plan.add::<u8>(format!("{prefix}.cublas_workspace"), &[gemm::CUBLAS_WORKSPACE_BYTES], Role::Workspace)?;
        Ok(MambaBlock { cfg, s, l, params, grads, saved, y, chunk_states, scratch, dy, ws, cublas_ws })
    }

    /// The block's bytes by role for element type `T` — what [`MambaBlock::declare`] adds to a
    /// plan, before alignment padding.
    pub fn footprint(cfg: MambaConfig, s: usize, l: usize) -> Footprint {
        let e = std::mem::size_of::<T>();
        let (d, n, r, dirs) = (cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.dirs());
        let params: usize = param_shapes(&cfg).iter().map(|(_, sh)| sh.iter().product::<usize>()).sum::<usize>() * dirs * e;
        let per_dir_acts = (4 * s * d * l + s * r * l + 2 * s * n * l + d * n) * e; // xc z u delta, dt_in, b c, a
        let saved = dirs * per_dir_acts + s * dirs * d * l * e + 4 * dirs * s * d * l.div_ceil(selective_scan::CHUNK) * n;
        let scratch = dirs * per_dir_acts + s * dirs * d * l * e; // du ddelta dz dxc, ddt_in, db dc, da; dy
        let workspace = scratch + 4 * ws_elems(&cfg, s, l, T::DTYPE) + gemm::CUBLAS_WORKSPACE_BYTES;
        Footprint { params, grads: params, saved, workspace }
    }

    /// Runs `f` in a fresh borrow scope with the cuBLAS workspace and the shared f32 workspace
    /// (both `None` on the CPU): one GEMM (or GEMM + batch sum) per scope, so no buffer is
    /// borrowed twice.
    fn scoped(&self, arena: &mut Arena, f: impl for<'b> FnOnce(&Borrows<'b>, Option<ViewMut<'b, u8>>, Option<ViewMut<'b, f32>>) -> Result<()>) -> Result<()> {
        super::scoped(arena, self.cublas_ws, self.ws, f)
    }

    /// Forward: `outs[r] = out_proj_r(...)` `[S, L, d_model]` for each direction from the shared
    /// input `x` `[S, L, d_model]`; keeps what the backward needs in the block's saved buffers.
    pub fn forward(&self, arena: &mut Arena, x: Buf<T>, outs: &[Buf<T>]) -> Result<()> {
        let (s, l, c) = (self.s, self.l, self.cfg);
        let (d, dirs) = (c.d_inner, c.dirs());
        self.check_io(arena, x, outs, "outs")?;
        if arena.device().gpu().is_some() {
            require_f32::<T>(OP)?;
        }
        let (nt, nn) = (GemmSpec::new(false, true), GemmSpec::new(false, false));
        for r in 0..dirs {
            let (p, sv) = (self.params[r], self.saved[r]);
            // in_proj: xc[s] = in_x · x[s]ᵀ, z[s] = in_z · x[s]ᵀ.
            self.scoped(arena, |v, cw, _| gemm(v.read(p.in_x)?, v.read(x)?, v.write(sv.xc)?, nt, cw))?;
            self.scoped(arena, |v, cw, _| gemm(v.read(p.in_z)?, v.read(x)?, v.write(sv.z)?, nt, cw))?;
            self.scoped(arena, |v, _, _| mamba_a(v.read(p.a_log)?, v.write(sv.a)?))?;
            self.scoped(arena, |v, _, _| causal_conv1d(v.read(sv.xc)?, v.read(p.conv_w)?, Some(v.read(p.conv_b)?), v.write(sv.u)?, ConvOptions { silu: true, reverse: r == 1 }))?;
            // x_proj and dt_proj (its bias is the scan's delta_bias).
            for (w, out) in [(p.x_dt, sv.dt_in), (p.x_b, sv.b), (p.x_c, sv.c)] {
                self.scoped(arena, |v, cw, _| gemm(v.read(w)?, v.read(sv.u)?, v.write(out)?, nn, cw))?;
            }
            self.scoped(arena, |v, cw, _| gemm(v.read(p.dt_w)?, v.read(sv.dt_in)?, v.write(sv.delta)?, nn, cw))?;
        }
        self.scoped(arena, |v, _, _| {
            let fwd = self.scan_dir(v, 0)?;
            let rev = if dirs == 2 { Some(self.scan_dir(v, 1)?) } else { None };
            let combine = if dirs == 2 { Combine::Concat } else { Combine::Sum };
            selective_scan(&fwd, rev.as_ref(), combine, v.write(self.y)?, Some(v.write(self.chunk_states)?))
        })?;
        for (r, &out) in outs.iter().enumerate() {
            // out_proj: out[s] = y_r[s]ᵀ · out_wᵀ.
            self.scoped(arena, |v, cw, _| gemm(Mat::group(v.read(self.y)?.reshape(&[s, dirs, d, l])?, r), v.read(self.params[r].out_w)?, v.write(out)?, GemmSpec::new(true, true), cw))?;
        }
        Ok(())
    }

    fn scan_dir<'b>(&self, v: &Borrows<'b>, r: usize) -> Result<ScanDir<'b, T>> {
        let (p, sv) = (&self.params[r], &self.saved[r]);
        Ok(ScanDir { u: v.read(sv.u)?, delta: v.read(sv.delta)?, a: v.read(sv.a)?, b: v.read(sv.b)?, c: v.read(sv.c)?, d_skip: Some(v.read(p.d_skip)?), delta_bias: Some(v.read(p.dt_bias)?), z: Some(v.read(sv.z)?) })
    }

    /// Backward from `douts[r]` (gradients of the forward's outputs): writes every parameter
    /// gradient ([`MambaBlock::grads`]) and `dx` (both directions' contributions summed). Reads the
    /// saved buffers of the last [`MambaBlock::forward`] and `x`.
    pub fn backward(&self, arena: &mut Arena, x: Buf<T>, douts: &[Buf<T>], dx: Buf<T>) -> Result<()> {
        let (s, l, c) = (self.s, self.l, self.cfg);
        let (d, dirs) = (c.d_inner, c.dirs());
        self.check_io(arena, x, douts, "douts")?;
        self.check_io(arena, dx, &[], "dx")?;
        // dx is written while x is still read by the weight-gradient sums.
        if dx.id() == x.id() {
            return Err(Error::Value { op: OP, arg: "dx", expected: "a buffer other than x".into(), got: "x".into() });
        }
        if arena.device().gpu().is_some() {
            require_f32::<T>(OP)?;
        }
        let (tt, tn, nt, nn) = (GemmSpec::new(true, true), GemmSpec::new(true, false), GemmSpec::new(false, true), GemmSpec::new(false, false));
        // out_proj: dy_r[s] = out_wᵀ · dout_r[s]ᵀ; d(out_w) = Σ_s dout_r[s]ᵀ · y_r[s]ᵀ.
        for (r, &dout) in douts.iter().enumerate() {
            let w = self.params[r].out_w;
            self.scoped(arena, |v, cw, _| gemm(v.read(w)?, v.read(dout)?, MatMut::group(v.write(self.dy)?.reshape(&[s, dirs, d, l])?, r), tt, cw))?;
            self.scoped(arena, |v, cw, ws| gemm_sum_batches(v.read(dout)?, Mat::group(v.read(self.y)?.reshape(&[s, dirs, d, l])?, r), v.write(self.grads[r].out_w)?, tt, ws, cw))?;
        }
        // The scan, both directions in one kernel (its workspace is the shared one).
        self.scoped(arena, |v, _, ws| {
            let grads = |r: usize| -> Result<ScanDirGrads<'_, T>> {
                let (g, sc) = (&self.grads[r], &self.scratch[r]);
                Ok(ScanDirGrads { du: v.write(sc.du)?, ddelta: v.write(sc.ddelta)?, da: v.write(sc.da)?, db: v.write(sc.db)?, dc: v.write(sc.dc)?, dd_skip: Some(v.write(g.d_skip)?), ddelta_bias: Some(v.write(g.dt_bias)?), dz: Some(v.write(sc.dz)?) })
            };
            let fwd = self.scan_dir(v, 0)?;
            let rev = if dirs == 2 { Some(self.scan_dir(v, 1)?) } else { None };
            let combine = if dirs == 2 { Combine::Concat } else { Combine::Sum };
            let saved = match ws {
                Some(workspace) => BackwardSaved::Gpu { chunk_states: v.read(self.chunk_states)?, workspace },
                None => BackwardSaved::None,
            };
            let grev = if dirs == 2 { Some(grads(1)?) } else { None };
            selective_scan_backward(&fwd, rev.as_ref(), combine, v.read(self.dy)?, saved, grads(0)?, grev)
        })?;
        for r in 0..dirs {
            let (p, g, sv, sc) = (self.params[r], self.grads[r], self.saved[r], self.scratch[r]);
            self.scoped(arena, |v, _, _| mamba_a_backward(v.read(p.a_log)?, v.read(sc.da)?, v.write(g.a_log)?))?;
            // dt_proj: ddt_in[s] = dt_wᵀ · ddelta[s]; d(dt_w) = Σ_s ddelta[s] · dt_in[s]ᵀ.
            self.scoped(arena, |v, cw, _| gemm(v.read(p.dt_w)?, v.read(sc.ddelta)?, v.write(sc.ddt_in)?, tn, cw))?;
            self.scoped(arena, |v, cw, ws| gemm_sum_batches(v.read(sc.ddelta)?, v.read(sv.dt_in)?, v.write(g.dt_w)?, nt, ws, cw))?;
            // x_proj: du += x_dtᵀ · ddt_in + x_bᵀ · dB + x_cᵀ · dC; d(x_·) = Σ_s d(·)[s] · u[s]ᵀ.
            for (w, dd, gw) in [(p.x_dt, sc.ddt_in, g.x_dt), (p.x_b, sc.db, g.x_b), (p.x_c, sc.dc, g.x_c)] {
                self.scoped(arena, |v, cw, _| gemm(v.read(w)?, v.read(dd)?, v.write(sc.du)?, tn.accumulate(), cw))?;
                self.scoped(arena, |v, cw, ws| gemm_sum_batches(v.read(dd)?, v.read(sv.u)?, v.write(gw)?, nt, ws, cw))?;
            }
            self.scoped(arena, |v, _, ws| causal_conv1d_backward(v.read(sv.xc)?, v.read(p.conv_w)?, Some(v.read(p.conv_b)?), v.read(sc.du)?, v.write(sc.dxc)?, v.write(g.conv_w)?, Some(v.write(g.conv_b)?), ws, ConvOptions { silu: true, reverse: r == 1 }))?;
            // in_proj: dx (+)= dxc[s]ᵀ · in_x + dz[s]ᵀ · in_z; d(in_·) = Σ_s d(·)[s] · x[s].
            for (k, (w, dd, gw)) in [(p.in_x, sc.dxc, g.in_x), (p.in_z, sc.dz, g.in_z)].into_iter().enumerate() {
                let spec = if r == 0 && k == 0 { tn } else { tn.accumulate() };
                self.scoped(arena, |v, cw, _| gemm(v.read(dd)?, v.read(w)?, v.write(dx)?, spec, cw))?;
                self.scoped(arena, |v, cw, ws| gemm_sum_batches(v.read(dd)?, v.read(x)?, v.write(gw)?, nn, ws, cw))?;
            }
        }
        Ok(())
    }

    fn check_io(&self, arena: &Arena, x: Buf<T>, outs: &[Buf<T>], what: &'static str) -> Result<()> {
        let want = [self.s, self.l, self.cfg.d_model];
        // Distinct plan buffers never overlap, so ids decide aliasing. The forward's outputs must
        // not be its input (later steps read x), nor each other.
        if what == "outs" {
            for (k, o) in outs.iter().enumerate() {
                if o.id() == x.id() || outs[..k].iter().any(|p| p.id() == o.id()) {
                    return Err(Error::Value { op: OP, arg: "outs", expected: "buffers distinct from x and from each other".into(), got: format!("outs[{k}] repeats a buffer") });
                }
            }
        }
        check_shape(OP, "x", arena.plan().info(x.id())?.shape.dims(), &want, "[S, L, d_model] of the block")?;
        if what == "dx" {
            return Ok(());
        }
        if outs.len() != self.cfg.dirs() {
            return Err(Error::Value { op: OP, arg: what, expected: format!("{} buffers (one per direction)", self.cfg.dirs()), got: outs.len().to_string() });
        }
        for o in outs {
            check_shape(OP, what, arena.plan().info(o.id())?.shape.dims(), &want, "[S, L, d_model] of the block")?;
        }
        Ok(())
    }
}

/// `a = −exp(a_log)` elementwise (Mamba's parametrisation of the state matrix).
pub fn mamba_a<T: Real>(a_log: View<'_, T>, a: ViewMut<'_, T>) -> Result<()> {
    check_shape(OP_A, "a", a.shape(), a_log.shape(), "the shape of a_log")?;
    match common_loc(OP_A, &[("a_log", a_log.loc()), ("a", a.loc())])? {
        Loc::Host => {
            let v: Vec<f64> = host_f64(OP_A, "a_log", &a_log)?.iter().map(|x| -x.exp()).collect();
            store_f64(OP_A, "a", a, &v)
        }
        Loc::Cuda(gpu) => {
            require_f32::<T>(OP_A)?;
            let p = SnugMambaAParams { out: a.device_ptr().unwrap_or(0) as *mut f32, a_log: a_log.device_ptr().unwrap_or(0) as *const f32, da: std::ptr::null(), count: a.len() as u64 };
            // SAFETY: a and a_log are device views on this handle of `count` f32 elements each.
            unsafe { launch_elementwise(gpu, OP_A, "mamba_a_fwd_f32", &p) }
        }
    }
}

/// `da_log = da · a = −da · exp(a_log)`.
pub fn mamba_a_backward<T: Real>(a_log: View<'_, T>, da: View<'_, T>, da_log: ViewMut<'_, T>) -> Result<()> {
    check_shape(OP_A, "da", da.shape(), a_log.shape(), "the shape of a_log")?;
    check_shape(OP_A, "da_log", da_log.shape(), a_log.shape(), "the shape of a_log")?;
    match common_loc(OP_A, &[("a_log", a_log.loc()), ("da", da.loc()), ("da_log", da_log.loc())])? {
        Loc::Host => {
            let (al, g) = (host_f64(OP_A, "a_log", &a_log)?, host_f64(OP_A, "da", &da)?);
            let v: Vec<f64> = al.iter().zip(&g).map(|(x, g)| -g * x.exp()).collect();
            store_f64(OP_A, "da_log", da_log, &v)
        }
        Loc::Cuda(gpu) => {
            require_f32::<T>(OP_A)?;
            let p = SnugMambaAParams { out: da_log.device_ptr().unwrap_or(0) as *mut f32, a_log: a_log.device_ptr().unwrap_or(0) as *const f32, da: da.device_ptr().unwrap_or(0) as *const f32, count: da_log.len() as u64 };
            // SAFETY: the three views are device views on this handle of `count` f32 elements.
            unsafe { launch_elementwise(gpu, OP_A, "mamba_a_bwd_f32", &p) }
        }
    }
}

/// # Safety
/// `p`'s pointers are device memory of `p.count` f32 elements on `gpu`.
unsafe fn launch_elementwise(gpu: &crate::Gpu, op: &'static str, kernel: &'static str, p: &SnugMambaAParams) -> Result<()> {
    let blocks = p.count.div_ceil(256);
    if blocks > i32::MAX as u64 {
        return Err(Error::Shape { op, arg: "a_log", expected: "fewer than 2^39 elements".into(), got: vec![p.count as usize] });
    }
    let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: forwarded from the caller.
    unsafe { gpu.launch(op, "mamba", kernel, cfg, p) }
}
