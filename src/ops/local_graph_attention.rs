//! Seed 001's `LocalGraphAttention` layer with its FFN, as composed ops, forward and backward,
//! every buffer planned up front.
//!
//! ```text
//! x [B, C, H, W] ─ 1×1 q, k, v ─ local_attn (K×K, heads) ─ 1×1 out ─ + x ─ LayerNorm(C) ─ y1
//! y1 ─ 1×1 C→F ─ GELU ─ 1×1 F→C ─ + y1 ─ LayerNorm(C) ─ y
//! ```
//!
//! True softmax attention over each pixel's K×K neighbourhood (not the seed's depthwise-conv
//! substitute). The 1×1 convolutions are batched GEMMs over the channel-major map (no bias: the
//! seed's qkv conv has none; PyTorch mapping: `qkv.weight[:, :, 0, 0]` = `[w_q; w_k; w_v]`); the
//! attention reads q, k, v in place as `[B, C, H, W]`; LayerNorm is over channels per pixel; the
//! FFN activation is GELU (erf) unless configured. Weight gradients are summed over the batch in a
//! fixed order: the backward is deterministic. Parameter gradients are written, not accumulated.
//!
//! Saved for the backward (besides the caller's `x`): q, k, v, the attention output and its
//! log-sum-exp, the first residual sum and its LayerNorm output and statistics, the FFN's hidden
//! pre-activation, the second residual sum and its statistics ([`LocalGraphAttention::footprint`]).
//! The GELU output is recomputed in the backward instead of saved. `T` = f32 on the GPU (the
//! kernels take bf16 too; the layer does not offer it yet), any [`Real`] on the CPU.

use super::elementwise::{activation, activation_backward, axpby, Act};
use super::gemm::{self, gemm, gemm_sum_batches, GemmSpec};
use super::layer_norm::{self, layer_norm, layer_norm_backward, Axis, LnDims};
use super::local_attn::{self, local_attn, local_attn_backward, Border, Layout, LocalAttnSpec};
use super::{require_f32, Real};
use crate::memory::ViewMut;
use crate::{Arena, Borrows, Buf, Error, Plan, Result, Role};

const OP: &str = "local_graph_attention";

/// Layer hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LgaConfig {
    /// Channels C.
    pub channels: usize,
    /// Attention heads (divide C).
    pub heads: usize,
    /// Window K (odd, 3..=13).
    pub kernel: usize,
    /// Border mode of the attention.
    pub border: Border,
    /// FFN hidden width F.
    pub ffn: usize,
    /// FFN activation.
    pub act: Act,
    /// LayerNorm epsilon.
    pub eps: f32,
}

impl LgaConfig {
    /// Seed 001: C 256, 4 heads, K 7, zero padding (the seed's unfold), FFN 4C with GELU.
    pub fn seed() -> LgaConfig {
        LgaConfig { channels: 256, heads: 4, kernel: 7, border: Border::ZeroPad, ffn: 1024, act: Act::GeluErf, eps: 1e-5 }
    }
}

/// Parameters (or their gradients: same shapes).
#[derive(Clone, Copy, Debug)]
pub struct LgaParams<T: Real> {
    /// `[C, C]` each.
    pub w_q: Buf<T>,
    /// `[C, C]`.
    pub w_k: Buf<T>,
    /// `[C, C]`.
    pub w_v: Buf<T>,
    /// `[C, C]` (output 1×1 conv).
    pub w_o: Buf<T>,
    /// `[C]` LayerNorm 1.
    pub ln1_g: Buf<T>,
    /// `[C]`.
    pub ln1_b: Buf<T>,
    /// `[F, C]`.
    pub w1: Buf<T>,
    /// `[C, F]`.
    pub w2: Buf<T>,
    /// `[C]` LayerNorm 2.
    pub ln2_g: Buf<T>,
    /// `[C]`.
    pub ln2_b: Buf<T>,
}

/// Bytes by role, before the plan's alignment padding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LgaFootprint {
    /// Parameters.
    pub params: usize,
    /// Parameter gradients.
    pub grads: usize,
    /// Saved for the backward.
    pub saved: usize,
    /// Backward scratch and workspaces.
    pub workspace: usize,
}

/// A planned layer over `[B, C, H, W]`.
#[derive(Debug)]
pub struct LocalGraphAttention<T: Real> {
    cfg: LgaConfig,
    b: usize,
    h: usize,
    w: usize,
    /// Parameters.
    pub params: LgaParams<T>,
    /// Parameter gradients.
    pub grads: LgaParams<T>,
    // saved
    q: Buf<T>,
    k: Buf<T>,
    v: Buf<T>,
    att: Buf<T>,
    lse: Buf<f32>,
    r1: Buf<T>,
    y1: Buf<T>,
    st1: [Buf<T>; 2],
    hid: Buf<T>,
    r2: Buf<T>,
    st2: [Buf<T>; 2],
    // scratch
    s_c: [Buf<T>; 5], // dr2, dy1, dr1, datt; o (the projections' output in the forward)
    s_qkv: [Buf<T>; 3],
    s_f: [Buf<T>; 2], // g (recomputed activation output, then dhid), dg
    ws: Buf<f32>,
    cublas_ws: Buf<u8>,
}

fn param_shapes(c: &LgaConfig) -> [(&'static str, Vec<usize>); 10] {
    let (ch, f) = (c.channels, c.ffn);
    [("w_q", vec![ch, ch]), ("w_k", vec![ch, ch]), ("w_v", vec![ch, ch]), ("w_o", vec![ch, ch]), ("ln1_g", vec![ch]), ("ln1_b", vec![ch]), ("w1", vec![f, ch]), ("w2", vec![ch, f]), ("ln2_g", vec![ch]), ("ln2_b", vec![ch])]
}

/// Elements of the shared f32 workspace (GPU only in use): the largest of the attention's and
/// the LayerNorms' backward workspaces and the weight-gradient sums' per-image products.
fn ws_elems(c: &LgaConfig, b: usize, h: usize, w: usize) -> usize {
    // (d does not enter the attention's workspace; footprint() may see an unvalidated config.)
    let la = local_attn::backward_workspace_bytes(local_attn::Dims { b, heads: c.heads, h, w, d: 1 }) / 4;
    let ln = layer_norm::backward_workspace_bytes(LnDims { o: b, c: c.channels, i: h * w }) / 4;
    let sums = gemm::sum_batches_workspace_bytes(b, c.channels, c.channels.max(c.ffn)) / 4;
    la.max(ln).max(sums)
}

impl<T: Real> LocalGraphAttention<T> {
    /// Declares every buffer of the layer in `plan` as `{prefix}.{name}`.
    pub fn declare(plan: &mut Plan, prefix: &str, cfg: LgaConfig, b: usize, h: usize, w: usize) -> Result<LocalGraphAttention<T>> {
        let spec = LocalAttnSpec { kernel: cfg.kernel, border: cfg.border, layout: Layout::Bchw { heads: cfg.heads }, scale: None };
        local_attn::dims_of(&[b, cfg.channels, h, w], &spec)?;
        if cfg.ffn == 0 || !(cfg.eps.is_finite() && cfg.eps > 0.0) {
            return Err(Error::Value { op: OP, arg: "config", expected: "ffn >= 1 and eps finite > 0".into(), got: format!("{cfg:?}") });
        }
        let (c, f, hw) = (cfg.channels, cfg.ffn, h * w);
        let mut decl = |role: Role, suffix: &str| -> Result<LgaParams<T>> {
            let mut v = Vec::new();
            for (name, shape) in param_shapes(&cfg) {
                v.push(plan.add::<T>(format!("{prefix}.{name}{suffix}"), &shape, role)?);
            }
            Ok(LgaParams { w_q: v[0], w_k: v[1], w_v: v[2], w_o: v[3], ln1_g: v[4], ln1_b: v[5], w1: v[6], w2: v[7], ln2_g: v[8], ln2_b: v[9] })
        };
        let params = decl(Role::Param, "")?;
        let grads = decl(Role::Grad, ".grad")?;
        let lse = plan.add::<f32>(format!("{prefix}.lse"), &[b * cfg.heads * hw], Role::Saved)?;
        let ws = plan.add::<f32>(format!("{prefix}.workspace"), &[ws_elems(&cfg, b, h, w)], Role::Workspace)?;
        let cublas_ws = plan.add::<u8>(format!("{prefix}.cublas_workspace"), &[gemm::CUBLAS_WORKSPACE_BYTES], Role::Workspace)?;
        let mut add = |name: &str, shape: &[usize], role: Role| plan.add::<T>(format!("{prefix}.{name}"), shape, role);
        let map = [b, c, hw];
        let rows = [b * hw];
        Ok(LocalGraphAttention {
            cfg,
            b,
            h,
            w,
            params,
            grads,
            q: add("q", &map, Role::Saved)?,
            k: add("k", &map, Role::Saved)?,
            v: add("v", &map, Role::Saved)?,
            att: add("att", &map, Role::Saved)?,
            lse,
            r1: add("r1", &map, Role::Saved)?,
            y1: add("y1", &map, Role::Saved)?,
            st1: [add("ln1.mean", &rows, Role::Saved)?, add("ln1.rstd", &rows, Role::Saved)?],
            hid: add("hid", &[b, f, hw], Role::Saved)?,
            r2: add("r2", &map, Role::Saved)?,
            st2: [add("ln2.mean", &rows, Role::Saved)?, add("ln2.rstd", &rows, Role::Saved)?],
            s_c: [add("dr2", &map, Role::Workspace)?, add("dy1", &map, Role::Workspace)?, add("dr1", &map, Role::Workspace)?, add("datt", &map, Role::Workspace)?, add("o", &map, Role::Workspace)?],
            s_qkv: [add("dq", &map, Role::Workspace)?, add("dk", &map, Role::Workspace)?, add("dv", &map, Role::Workspace)?],
            s_f: [add("g", &[b, f, hw], Role::Workspace)?, add("dg", &[b, f, hw], Role::Workspace)?],
            ws,
            cublas_ws,
        })
    }

    /// Bytes by role of a layer of `T` at this shape — what [`LocalGraphAttention::declare`] adds.
    pub fn footprint(cfg: LgaConfig, b: usize, h: usize, w: usize) -> LgaFootprint {
        let e = std::mem::size_of::<T>();
        let (c, f, hw) = (cfg.channels, cfg.ffn, h * w);
        let params = param_shapes(&cfg).iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>() * e;
        let map = b * c * hw;
        let saved = (7 * map + 4 * b * hw + b * f * hw) * e + 4 * b * cfg.heads * hw;
        let workspace = (8 * map + 2 * b * f * hw) * e + 4 * ws_elems(&cfg, b, h, w) + gemm::CUBLAS_WORKSPACE_BYTES;
        LgaFootprint { params, grads: params, saved, workspace }
    }

    fn spec(&self) -> LocalAttnSpec {
        LocalAttnSpec { kernel: self.cfg.kernel, border: self.cfg.border, layout: Layout::Bchw { heads: self.cfg.heads }, scale: None }
    }

    fn scoped(&self, arena: &mut Arena, f: impl for<'b> FnOnce(&Borrows<'b>, Option<ViewMut<'b, u8>>, Option<ViewMut<'b, f32>>) -> Result<()>) -> Result<()> {
        super::scoped(arena, self.cublas_ws, self.ws, f)
    }

    fn check(&self, arena: &Arena, bufs: &[(&'static str, Buf<T>)]) -> Result<()> {
        if arena.device().gpu().is_some() {
            require_f32::<T>(OP)?;
        }
        let want = [self.b, self.cfg.channels, self.h, self.w];
        for (arg, b) in bufs {
            super::check_shape(OP, arg, arena.plan().info(b.id())?.shape.dims(), &want, "[B, C, H, W] of the layer")?;
        }
        for (k, (arg, b)) in bufs.iter().enumerate() {
            if bufs[..k].iter().any(|(_, p)| p.id() == b.id()) {
                return Err(Error::Value { op: OP, arg, expected: "a buffer distinct from the other arguments".into(), got: "a repeated buffer".into() });
            }
        }
        Ok(())
    }

    /// Forward: `y = layer(x)`, both `[B, C, H, W]`.
    pub fn forward(&self, arena: &mut Arena, x: Buf<T>, y: Buf<T>) -> Result<()> {
        self.check(arena, &[("x", x), ("y", y)])?;
        let (b, c, hw) = (self.b, self.cfg.channels, self.h * self.w);
        let (p, nn) = (self.params, GemmSpec::new(false, false));
        let m3 = [b, c, hw];
        let img = [b, c, self.h, self.w];
        for (wq, out) in [(p.w_q, self.q), (p.w_k, self.k), (p.w_v, self.v)] {
            self.scoped(arena, |v, cw, _| gemm(v.read(wq)?, v.read(x)?.reshape(&m3)?, v.write(out)?, nn, cw))?;
        }
        let lse_shape = [b, self.cfg.heads, self.h, self.w];
        self.scoped(arena, |v, _, _| {
            let lse = v.write(self.lse)?.reshape(&lse_shape)?;
            local_attn(v.read(self.q)?.reshape(&img)?, v.read(self.k)?.reshape(&img)?, v.read(self.v)?.reshape(&img)?, v.write(self.att)?.reshape(&img)?, lse, self.spec())
        })?;
        let o = self.s_c[4];
        self.scoped(arena, |v, cw, _| gemm(v.read(p.w_o)?, v.read(self.att)?, v.write(o)?, nn, cw))?;
        self.scoped(arena, |v, _, _| axpby(1.0, v.read(x)?.reshape(&m3)?, 1.0, Some(v.read(o)?), v.write(self.r1)?))?;
        self.scoped(arena, |v, _, _| layer_norm(v.read(self.r1)?, Some(v.read(p.ln1_g)?), Some(v.read(p.ln1_b)?), v.write(self.y1)?, v.write(self.st1[0])?, v.write(self.st1[1])?, Axis::Channels, self.cfg.eps))?;
        self.scoped(arena, |v, cw, _| gemm(v.read(p.w1)?, v.read(self.y1)?, v.write(self.hid)?, nn, cw))?;
        let g = self.s_f[0];
        self.scoped(arena, |v, _, _| activation(v.read(self.hid)?, v.write(g)?, self.cfg.act))?;
        self.scoped(arena, |v, cw, _| gemm(v.read(p.w2)?, v.read(g)?, v.write(o)?, nn, cw))?;
        self.scoped(arena, |v, _, _| axpby(1.0, v.read(self.y1)?, 1.0, Some(v.read(o)?), v.write(self.r2)?))?;
        self.scoped(arena, |v, _, _| layer_norm(v.read(self.r2)?, Some(v.read(p.ln2_g)?), Some(v.read(p.ln2_b)?), v.write(y)?.reshape(&[b, c, hw])?, v.write(self.st2[0])?, v.write(self.st2[1])?, Axis::Channels, self.cfg.eps))
    }

    /// Backward from `dy`: writes every parameter gradient and `dx`.
    pub fn backward(&self, arena: &mut Arena, x: Buf<T>, dy: Buf<T>, dx: Buf<T>) -> Result<()> {
        self.check(arena, &[("x", x), ("dy", dy), ("dx", dx)])?;
        let (b, c, hw) = (self.b, self.cfg.channels, self.h * self.w);
        let (p, g) = (self.params, self.grads);
        let (nt, tn) = (GemmSpec::new(false, true), GemmSpec::new(true, false));
        let map = [b, c, hw];
        let img = [b, c, self.h, self.w];
        let [dr2, dy1, dr1, datt, _] = self.s_c;
        let [gbuf, dg] = self.s_f;
        // LayerNorm 2.
        self.scoped(arena, |v, _, ws| layer_norm_backward(v.read(self.r2)?, Some(v.read(p.ln2_g)?), v.read(dy)?.reshape(&map)?, v.read(self.st2[0])?, v.read(self.st2[1])?, v.write(dr2)?, Some(v.write(g.ln2_g)?), Some(v.write(g.ln2_b)?), ws, Axis::Channels))?;
        // FFN: g = act(hid) recomputed; dW2 = Σ dr2·gᵀ; dg = W2ᵀ·dr2; dhid = act'(hid)·dg; dW1 = Σ dhid·y1ᵀ.
        self.scoped(arena, |v, _, _| activation(v.read(self.hid)?, v.write(gbuf)?, self.cfg.act))?;
        self.scoped(arena, |v, cw, ws| gemm_sum_batches(v.read(dr2)?, v.read(gbuf)?, v.write(g.w2)?, nt, ws, cw))?;
        self.scoped(arena, |v, cw, _| gemm(v.read(p.w2)?, v.read(dr2)?, v.write(dg)?, tn, cw))?;
        // dhid overwrites g (no longer needed).
        self.scoped(arena, |v, _, _| activation_backward(v.read(self.hid)?, v.read(dg)?, v.write(gbuf)?, self.cfg.act))?;
        self.scoped(arena, |v, cw, ws| gemm_sum_batches(v.read(gbuf)?, v.read(self.y1)?, v.write(g.w1)?, nt, ws, cw))?;
        // dy1 = dr2 + W1ᵀ·dhid.
        self.scoped(arena, |v, _, _| axpby(1.0, v.read(dr2)?, 0.0, None, v.write(dy1)?))?;
        self.scoped(arena, |v, cw, _| gemm(v.read(p.w1)?, v.read(gbuf)?, v.write(dy1)?, tn.accumulate(), cw))?;
        // LayerNorm 1.
        self.scoped(arena, |v, _, ws| layer_norm_backward(v.read(self.r1)?, Some(v.read(p.ln1_g)?), v.read(dy1)?, v.read(self.st1[0])?, v.read(self.st1[1])?, v.write(dr1)?, Some(v.write(g.ln1_g)?), Some(v.write(g.ln1_b)?), ws, Axis::Channels))?;
        // Output projection: dW_o = Σ dr1·attᵀ; datt = W_oᵀ·dr1.
        self.scoped(arena, |v, cw, ws| gemm_sum_batches(v.read(dr1)?, v.read(self.att)?, v.write(g.w_o)?, nt, ws, cw))?;
        self.scoped(arena, |v, cw, _| gemm(v.read(p.w_o)?, v.read(dr1)?, v.write(datt)?, tn, cw))?;
        // Attention.
        let lse_shape = [b, self.cfg.heads, self.h, self.w];
        let [dq, dk, dv] = self.s_qkv;
        self.scoped(arena, |v, _, ws| {
            let r = |bf: Buf<T>| -> Result<crate::View<'_, T>> { v.read(bf)?.reshape(&img) };
            let wr = |bf: Buf<T>| -> Result<ViewMut<'_, T>> { v.write(bf)?.reshape(&img) };
            local_attn_backward(r(self.q)?, r(self.k)?, r(self.v)?, r(self.att)?, v.read(self.lse)?.reshape(&lse_shape)?, r(datt)?, wr(dq)?, wr(dk)?, wr(dv)?, ws, self.spec())
        })?;
        // q, k, v projections: dW = Σ d(·)·xᵀ; dx = dr1 + Σ W(·)ᵀ·d(·).
        for (gw, d) in [(g.w_q, dq), (g.w_k, dk), (g.w_v, dv)] {
            self.scoped(arena, |v, cw, ws| gemm_sum_batches(v.read(d)?, v.read(x)?.reshape(&map)?, v.write(gw)?, nt, ws, cw))?;
        }
        self.scoped(arena, |v, _, _| axpby(1.0, v.read(dr1)?, 0.0, None, v.write(dx)?.reshape(&map)?))?;
        for (wbuf, d) in [(p.w_q, dq), (p.w_k, dk), (p.w_v, dv)] {
            self.scoped(arena, |v, cw, _| gemm(v.read(wbuf)?, v.read(d)?, v.write(dx)?.reshape(&map)?, tn.accumulate(), cw))?;
        }
        Ok(())
    }
}
