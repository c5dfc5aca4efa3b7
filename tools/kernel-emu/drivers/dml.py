"""Emulator driver for kernels/dml.cu: dml_loss_{f32,bf16} (discretized mixture of logistics NLL and
its gradient in one pass, per position or into per-block partials), dml_reduce_f32 (the partials'
ordered sum), dml_scale_{f32,bf16} (the gradient times the upstream gradient, in place) and
dml_sample_{f32,bf16} (Gumbel-max component, logistic sample, quantised), launched as
src/ops/dml.rs launches them, against a numpy f64 port of the Rust twin (src/ops/dml.rs: `component`
and dml_loss's Host branch) and, for the sampler, the reduce and the scale, bitwise against numpy
float32 / uint64 ports of the kernels' own arithmetic."""
import ctypes as C
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, bits_equal, run_main  # noqa: E402
from drivers_common import Bufs, bf16_bits, bf16_round, bf16_value, same  # noqa: E402

F32, U32, U64 = C.c_float, C.c_uint32, C.c_uint64
f32 = np.float32
LOSS_TOL = 1e-5      # f32 loss: |got - want| <= LOSS_TOL (1 + |want|) (reduced: (1 + sum |want_i|))
GRAD_TOL = 1e-4      # f32 grad: |got - want| <= GRAD_TOL max |want| per tensor (logits / means / log-scales)
BF16_TOL = 1e-2      # bf16-stored grad, relative to max |want| per tensor; the f32 loss of bf16 params: LOSS_TOL
GUARD_BYTES = 256    # normal build: sentinel bytes before and after every buffer (keeps 256-byte alignment)
LOG_SCALE_MIN = -7.0
NONE, MEAN, SUM = 0, 1, 2                     # SNUG_DML_NONE / _MEAN / _SUM
RED_NAMES = {NONE: "none", MEAN: "mean", SUM: "sum"}


# Mirror of kernels/dml.h (size checked against the C struct: 104 bytes, b at 56, seed at 88).
class DmlParams(C.Structure):
    _fields_ = [("params", P), ("grad", P), ("target_f", P), ("target_i", P), ("loss", P), ("out", P),
                ("upstream", P), ("b", U64), ("l", U64), ("k", U32), ("bits", U32), ("reduction", U32),
                ("blocks", U32), ("seed", U64), ("temperature", F32), ("grad_scale", F32)]


assert C.sizeof(DmlParams) == 104 and DmlParams.b.offset == 56 and DmlParams.seed.offset == 88


# ---- Launch shapes and parameters. These mirror src/ops/dml.rs and must be kept in sync with it:
# dml_loss: 256-thread blocks, grid ceil(B L / 256), no dynamic shared memory; P.loss = the loss
# [B, L] for Reduction::None, else the workspace of ceil(B L / 256) f32 partials
# (loss_workspace_bytes), P.out = the loss ([B, L] or [1]); blocks = the grid; grad_scale = 1, or
# 1.0f32 / (B L) as f32 for Mean; seed 0, temperature 1; then for Mean / Sum dml_reduce_f32 on 1
# block of 256 with the same parameters (writes out[0]). dml_backward: dml_scale on ceil(B L / 256)
# blocks of 256, reduction NONE for Reduction::None and SUM otherwise (Mean too: upstream[0]),
# params / loss / out NULL, grad_scale 1. dml_sample: ceil(B L / 256) blocks of 256, reduction 0,
# out = the samples [B, L], seed and temperature as given.
BLOCK = 256


def grid_of(n):
    return -(-n // BLOCK)


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for w in ("loss", "sample", "scale"):
            for t in ("f32", "bf16"):
                emu.check_struct(f"dml_{w}_{t}", DmlParams)
        emu.check_struct("dml_reduce_f32", DmlParams)

    @staticmethod
    def _inputs(bufs, params, bf16, target_f, target_i):
        dt = np.uint16 if bf16 else np.float32
        ins = {"params": (bf16_bits(params) if bf16 else np.ascontiguousarray(params, f32), dt),
               "target_f": (target_f, np.float32), "target_i": (target_i, np.uint32)}
        ptr = {n: bufs.put(a, d) for n, (a, d) in ins.items()}
        return ins, ptr

    @staticmethod
    def _check_inputs(bufs, ins, ptr, bad):
        for name, (a, d) in ins.items():
            if ptr[name] is None:
                continue
            got, ok = bufs.get(ptr[name])
            if not ok:
                bad.append(f"bytes written before / after {name}")
            if got.tobytes() != np.ascontiguousarray(a, d).ravel().tobytes():
                bad.append(f"input {name} changed")

    def loss(self, params, k, bits, reduction, target_f=None, target_i=None, bf16=False, grad=True, order=0, seed=0,
             guard=0):
        """params: [B, 3K, L] f32 (for bf16: rounded here, the kernel sees the bits); exactly one of
        target_f / target_i [B, L]. dml_loss (and dml_reduce for MEAN / SUM) as dml_loss launches
        them, every output and the workspace poisoned first.
        -> ({loss, grad, part}, [problems: guards, changed inputs])"""
        b, k3, l = params.shape
        assert k3 == 3 * k and (target_f is None) != (target_i is None)
        n = b * l
        blocks = grid_of(n)
        t = "bf16" if bf16 else "f32"
        dt = np.uint16 if bf16 else np.float32
        with Mem(self.emu) as mem:
            bufs = Bufs(mem, guard)
            ins, ptr = self._inputs(bufs, params, bf16, target_f, target_i)
            pg = bufs.poisoned(params.size, dt) if grad else None
            pl = bufs.poisoned(n if reduction == NONE else 1, np.float32)
            pw = bufs.poisoned(blocks, np.float32) if reduction != NONE else None
            gs = f32(1.0) / f32(n) if reduction == MEAN else f32(1.0)
            prm = DmlParams(params=ptr["params"], grad=pg, target_f=ptr["target_f"], target_i=ptr["target_i"],
                            loss=pw if pw is not None else pl, out=pl, upstream=None, b=b, l=l, k=k, bits=bits,
                            reduction=reduction, blocks=blocks, seed=0, temperature=1.0, grad_scale=float(gs))
            self.emu.launch(f"dml_loss_{t}", prm, blocks, BLOCK, 0, order, seed)
            part = None
            bad = []
            if pw is not None:
                part, ok = bufs.get(pw)
                if not ok:
                    bad.append("bytes written before / after the workspace")
                self.emu.launch("dml_reduce_f32", prm, 1, BLOCK, 0, order, seed + 1)
                after, _ = bufs.get(pw)
                if after.tobytes() != part.tobytes():
                    bad.append("dml_reduce changed the workspace")
            lo, ok = bufs.get(pl)
            if not ok:
                bad.append("bytes written before / after loss")
            g = None
            if pg is not None:
                g, ok = bufs.get(pg)
                if not ok:
                    bad.append("bytes written before / after grad")
                g = (bf16_value(g) if bf16 else g).reshape(params.shape)
            self._check_inputs(bufs, ins, ptr, bad)
            return {"loss": lo.reshape(b, l) if reduction == NONE else lo, "grad": g, "part": part}, bad

    def reduce(self, part, b, l, reduction, order=0, seed=0, guard=0):
        """dml_reduce_f32 alone on given partials. -> (out[0], [problems])"""
        with Mem(self.emu) as mem:
            bufs = Bufs(mem, guard)
            pw = bufs.put(part, np.float32)
            po = bufs.poisoned(1, np.float32)
            prm = DmlParams(loss=pw, out=po, b=b, l=l, k=1, bits=8, reduction=reduction, blocks=part.size,
                            temperature=1.0, grad_scale=1.0)
            self.emu.launch("dml_reduce_f32", prm, 1, BLOCK, 0, order, seed)
            out, ok = bufs.get(po)
            bad = [] if ok else ["bytes written before / after out"]
            got, ok = bufs.get(pw)
            if not ok or got.tobytes() != np.ascontiguousarray(part, f32).tobytes():
                bad.append("partials changed or guards overwritten")
            return out[0], bad

    def scale(self, grad, k, upstream, reduction, bf16=False, order=0, seed=0, guard=0):
        """grad: [B, 3K, L] f32 values (for bf16: bf16-representable); upstream: [B, L] (NONE) or [1].
        dml_scale as dml_backward launches it (reduction NONE or SUM). -> (grad after, [problems])"""
        b, _, l = grad.shape
        dt = np.uint16 if bf16 else np.float32
        with Mem(self.emu) as mem:
            bufs = Bufs(mem, guard)
            gin = bf16_bits(grad) if bf16 else np.ascontiguousarray(grad, f32)
            pg = bufs.put(gin, dt)
            pu = bufs.put(upstream, np.float32)
            prm = DmlParams(grad=pg, upstream=pu, b=b, l=l, k=k, bits=8, reduction=NONE if reduction == NONE else SUM,
                            blocks=0, seed=0, temperature=1.0, grad_scale=1.0)
            self.emu.launch(f"dml_scale_{'bf16' if bf16 else 'f32'}", prm, grid_of(b * l), BLOCK, 0, order, seed)
            g, ok = bufs.get(pg)
            bad = [] if ok else ["bytes written before / after grad"]
            u, ok = bufs.get(pu)
            if not ok or u.tobytes() != np.ascontiguousarray(upstream, f32).ravel().tobytes():
                bad.append("upstream changed or its guards overwritten")
            return (bf16_value(g) if bf16 else g).reshape(grad.shape), bad

    def sample(self, params, k, bits, seed_, tau, bf16=False, order=0, seed=0, guard=0):
        """dml_sample as dml_sample launches it; out poisoned first. -> (samples [B, L], [problems])"""
        b, _, l = params.shape
        with Mem(self.emu) as mem:
            bufs = Bufs(mem, guard)
            ins, ptr = self._inputs(bufs, params, bf16, None, None)
            po = bufs.poisoned(b * l, np.float32)
            prm = DmlParams(params=ptr["params"], out=po, b=b, l=l, k=k, bits=bits, reduction=0, blocks=0, seed=seed_,
                            temperature=float(tau), grad_scale=1.0)
            self.emu.launch(f"dml_sample_{'bf16' if bf16 else 'f32'}", prm, grid_of(b * l), BLOCK, 0, order, seed)
            out, ok = bufs.get(po)
            bad = [] if ok else ["bytes written before / after out"]
            self._check_inputs(bufs, ins, ptr, bad)
            return out.reshape(b, l), bad


# ---- f64 reference: a port of the Rust twin (src/ops/dml.rs, `component`, `host_targets` and
# dml_loss's Host branch), vectorised over [B, K, L] and written from the formulas, not from the
# kernel: targets as the twin reads them (values: NaN -> -1, else clamped to [-1, 1], as f64 of the
# f32; bins: min(i, 2^bits - 1), 2 i / (2^bits - 1) - 1 in f64), the edge thresholds f64(f32(±0.999))
# (as the kernel's f32 comparison), the bin mass sigma(u+) sigma(-u-) (1 - e^-q), q = 2 h / scale
# (= sigma(u+) - sigma(u-) without cancellation), the branches decided in f64, the two log-sum-exps
# over K with the max subtracted (not online), the gradient with grad_scale = 1 / (B L) (exact) for
# the mean; the reduced loss the f64 sum (/ B L).
EDGE = float(f32(0.999))


def ref_targets(target_f, target_i, bits):
    last = (1 << bits) - 1
    if target_f is not None:
        x = target_f.astype(np.float64)
        return np.where(np.isnan(x), -1.0, np.clip(x, -1.0, 1.0))
    return 2.0 * np.minimum(target_i.astype(np.int64), last).astype(np.float64) / last - 1.0


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def _softplus(v):
    return np.maximum(v, 0.0) + np.log1p(np.exp(-np.abs(v)))


def ref_component(x, mean, ls_raw, h, lhb):
    """-> (lp, dlp/dmean, dlp/ds, branch: 0 left edge, 1 right edge, 2 bin mass, 3 mid-point pdf)"""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        s = np.maximum(ls_raw, LOG_SCALE_MIN)
        inv = np.exp(-s)
        c = x - mean
        up, um = inv * (c + h), inv * (c - h)
        q = 2.0 * h * inv
        g_l, g_r = _sig(-up), _sig(um)
        sp, sm, em = _sig(up), _sig(-um), -np.expm1(-q)
        delta = sp * sm * em
        mid = inv * c
        t = 1.0 - 2.0 * _sig(mid)
        left, right, mass = x < -EDGE, x > EDGE, delta > 1e-5
        br = np.where(left, 0, np.where(right, 1, np.where(mass, 2, 3)))
        lp = np.select([br == 0, br == 1, br == 2], [-_softplus(-up), -_softplus(um), np.log(sp) + np.log(sm) + np.log(em)],
                       mid - s - 2.0 * _softplus(mid) - lhb)
        dmean = np.select([br == 0, br == 1, br == 2], [-g_l * inv, g_r * inv, -inv * (_sig(-up) - _sig(um))], -t * inv)
        dls = np.select([br == 0, br == 1, br == 2], [-g_l * up, g_r * um, -up * _sig(-up) + um * _sig(um) - q / np.expm1(q)],
                        -t * mid - 1.0)
    return lp, dmean, dls, br


def _lse(a, axis):
    m = a.max(axis, keepdims=True)
    with np.errstate(invalid="ignore"):
        return (m + np.log(np.exp(a - m).sum(axis, keepdims=True))).squeeze(axis)


def reference(params, k, bits, reduction, target_f=None, target_i=None):
    """params [B, 3K, L] (the exact values the kernel reads). -> dict(loss per position [B, L], out
    (the reduced loss or None), grad [B, 3K, L], branch [B, K, L], w (responsibilities) [B, K, L],
    x [B, L])"""
    p = params.astype(np.float64)
    b, _, l = p.shape
    x = ref_targets(target_f, target_i, bits).reshape(b, 1, l)
    bins = float((1 << bits) - 1)
    h, lhb = 1.0 / bins, np.log(0.5 * bins)
    logit, mean, ls = p[:, :k], p[:, k:2 * k], p[:, 2 * k:]
    lp, dmean, dls, br = ref_component(x, mean, ls, h, lhb)
    lse_logit, lse_a = _lse(logit, 1), _lse(lp + logit, 1)
    loss = -(lse_a - lse_logit)
    n = b * l
    gs = 1.0 / n if reduction == MEAN else 1.0
    pi = np.exp(logit - lse_logit[:, None])
    w = np.exp(lp + logit - lse_a[:, None])
    grad = np.concatenate([(pi - w) * gs, -w * dmean * gs, np.where(ls >= LOG_SCALE_MIN, -w * dls * gs, 0.0)], 1)
    out = None if reduction == NONE else loss.sum() / (n if reduction == MEAN else 1)
    return dict(loss=loss, out=out, grad=grad, branch=br, w=w, x=x.reshape(b, l))

# ---- numpy float32 / uint64 ports of the kernels' own arithmetic, compared bitwise.
def kernel_bin_x(target_i, bits):
    """The kernel's f32 value of a bin index (target_at: min(t, last), then (2 t - last) / last with
    an exact integer numerator: the bin's value correctly rounded to f32, as the twin now takes it)."""
    last = (1 << bits) - 1
    t = np.minimum(target_i.astype(np.int64), last)
    return ((2 * t - last).astype(f32) / f32(last)).astype(f32)


def tree_f32(red):
    """The kernels' fixed tree over 256 values (for s = 128..1: red[t] += red[t + s], t < s), in f32."""
    red = np.array(red, f32)
    s = BLOCK // 2
    while s:
        red[..., :s] = red[..., :s] + red[..., s:2 * s]
        s //= 2
    return red[..., 0]


def partials_port(loss_flat, blocks):
    """dml_loss's per-block partials from the per-position losses (tail threads add 0)."""
    pad = np.zeros(blocks * BLOCK, f32)
    pad[:loss_flat.size] = loss_flat
    return tree_f32(pad.reshape(blocks, BLOCK))


def reduce_port(part, n, reduction):
    """dml_reduce_f32: thread t sums partials t, t + 256, ... in order (from 0.f), then the tree;
    / (float)(B L) for MEAN."""
    acc = np.zeros(BLOCK, f32)
    part = np.asarray(part, f32)
    with np.errstate(invalid="ignore", over="ignore"):
        for j in range(0, part.size, BLOCK):
            seg = part[j:j + BLOCK]
            acc[:seg.size] = acc[:seg.size] + seg
        r = tree_f32(acc)
        return f32(r / f32(n)) if reduction == MEAN else f32(r)


def mix64(z):
    """splitmix64's finaliser (the kernel's mix64) on uint64 arrays (wrapping)."""
    z = np.asarray(z, np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def rand_bits(seed, pos, draw):
    """The kernel's 64 random bits for (seed, position, draw): mix64(mix64(seed ^ mix64(pos)) + draw)."""
    with np.errstate(over="ignore"):
        return mix64(mix64(np.uint64(seed) ^ mix64(pos)) + np.uint64(draw))


def uniform_f32(seed, pos, draw):
    """The kernel's uniform: ((float)(r >> 41) + 0.5f) * (1.f / 8388608.f), in f32 (exact: 23 bits
    + 0.5 fit in the significand; in [2^-24, 1 - 2^-24])."""
    r = rand_bits(seed, pos, draw)
    return ((r >> np.uint64(41)).astype(f32) + f32(0.5)) * f32(1.0 / 8388608.0)


def uniform_f64(seed, pos, draw):
    """The twin's uniform: ((r >> 41) + 0.5) / 2^23 in f64 (the same value)."""
    r = rand_bits(seed, pos, draw)
    return ((r >> np.uint64(41)).astype(np.float64) + 0.5) / 8388608.0


def _columns(params, k):
    b, _, l = params.shape
    return params.transpose(0, 2, 1).reshape(b * l, 3 * k)


def sample_port(params, k, bits, seed, tau):
    """dml_sample in numpy float32 (np.log / np.log1p / np.exp for logf / log1pf / expf: ulp
    differences possible), the kernel's order of operations, its last line included
    ((2.f * rintf(...) - bins) / bins). params: the f32 values it reads."""
    b, _, l = params.shape
    q = _columns(np.asarray(params, f32), k)
    n = b * l
    pos = np.arange(n, dtype=np.uint64)
    tau = f32(tau)
    best, best_v = np.zeros(n, np.int64), np.full(n, -np.inf, f32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        for kk in range(k):
            u = uniform_f32(seed, pos, kk)
            v = q[:, kk] / tau - np.log(-np.log(u))
            upd = v > best_v
            best_v, best = np.where(upd, v, best_v), np.where(upd, kk, best)
        rows = np.arange(n)
        mean = q[rows, k + best]
        s = np.exp(np.maximum(q[rows, 2 * k + best], f32(LOG_SCALE_MIN)))
        u = uniform_f32(seed, pos, k)
        x = mean + s * tau * (np.log(u) - np.log1p(-u))
        x = np.fmin(np.fmax(x, f32(-1.0)), f32(1.0))
        bins = f32((1 << bits) - 1)
        out = (f32(2.0) * np.rint((x + f32(1.0)) * f32(0.5) * bins) - bins) / bins
    return out.astype(f32).reshape(b, l)


def sample_twin(params, k, bits, seed, tau):
    """The Rust twin's dml_sample (f64, its uniform), the bin's value (2 k - bins) / bins divided in f32."""
    b, _, l = params.shape
    q = _columns(np.asarray(params, np.float64), k)
    n = b * l
    pos = np.arange(n, dtype=np.uint64)
    tau = float(f32(tau))
    best, best_v = np.zeros(n, np.int64), np.full(n, -np.inf)
    for kk in range(k):
        v = q[:, kk] / tau - np.log(-np.log(uniform_f64(seed, pos, kk)))
        upd = v > best_v
        best_v, best = np.where(upd, v, best_v), np.where(upd, kk, best)
    rows = np.arange(n)
    u = uniform_f64(seed, pos, k)
    scale = np.exp(np.maximum(q[rows, 2 * k + best], LOG_SCALE_MIN))
    x = np.clip(q[rows, k + best] + scale * tau * (np.log(u) - np.log1p(-u)), -1.0, 1.0)
    bins = float((1 << bits) - 1)
    return ((2.0 * np.rint((x + 1.0) * 0.5 * bins) - bins).astype(f32) / f32(bins)).reshape(b, l)


# ---- Inputs. Targets: edge bins (0, 2^bits - 1) at every 7th position, bins next to the edges
# (1..3 and last - 3..last - 1: at 16 bits bins 1..32 lie below -0.999, in the edge branch like bin
# 0), the rest uniform; as values: the f32 of the bin values, every 5th off the grid, and ±0.9995
# (edge branch, not ±1), ±0.998, ±f32(0.999) itself (-0.99900001287: below -0.999 in f64, not below
# -0.999f: interior, as the twin compares with f64(f32(0.999))) and its neighbours, ±1.
def gen_targets(rng, b, l, bits, kind, interior=False):
    last = (1 << bits) - 1
    n = b * l
    i = np.arange(n)
    t = np.round(rng.random(n) * last).astype(np.int64)
    if not interior:
        t[i % 7 == 0] = 0
        t[i % 7 == 1] = last
        t[i % 11 == 2] = rng.integers(1, 4, (i % 11 == 2).sum())
        t[i % 11 == 3] = last - rng.integers(1, 4, (i % 11 == 3).sum())
    else:
        t = np.clip(t, last // 50, last - last // 50)
    if kind == "bins":
        return None, t.astype(np.uint32).reshape(b, l)
    x = (2.0 * t / last - 1.0).astype(f32)
    off = i % 5 == 4
    x[off] = rng.uniform(-0.98 if interior else -1.0, 0.98 if interior else 1.0, off.sum()).astype(f32)
    if not interior:
        e = f32(0.999)
        sp = np.array([0.9995, -0.9995, 0.998, -0.998, e, -e, np.nextafter(e, f32(2)), -np.nextafter(e, f32(2)),
                       np.nextafter(e, f32(0)), -np.nextafter(e, f32(0)), 1.0, -1.0], f32)
        j = np.flatnonzero(i % 13 == 5)
        x[j] = sp[np.arange(j.size) % sp.size]
    return x.reshape(b, l), None


def gen_params(rng, x, k, recipe="mixed"):
    """params [B, 3K, L] f32 for targets x [B, L] (f64). Components of three kinds: wide (mean
    uniform in ±0.9, log-scale in [-6, -1]), near (mean within a few of its scales of the target,
    log-scale in [-7, -3]: the bin-mass branch) and far-narrow (mean 0.3..0.8 away, log-scale in
    [-6, -4.5]: bin mass < 1e-5, the mid-point branch). mixed: 50 / 25 / 25 %, 10 % of positions
    all far-narrow (their loss is the mid-point branch's), logits 3 N(0, 1) with 5 % +40 and 5 %
    -40, 5 % of log-scales lowered by 3 (many below -7: gradient 0) and 3 % exactly -7 (gradient
    kept). fallback: all far-narrow. near: all near. edges (targets at the edges): means near
    ±1 or wide."""
    b, l = x.shape
    shape = (b, k, l)
    xx = np.broadcast_to(x[:, None, :], shape)
    u = rng.random(shape)
    logits = 3.0 * rng.standard_normal(shape)
    if recipe == "mixed":
        logits = logits + np.where(u < 0.05, 40.0, 0.0) - np.where(u > 0.95, 40.0, 0.0)
        kind = rng.choice(3, shape, p=[0.5, 0.25, 0.25])
        kind[:, :, rng.random(l) < 0.1] = 2
    else:
        kind = np.full(shape, {"fallback": 2, "near": 1, "edges": 3}[recipe])
    ls = np.select([kind == 0, kind == 1, kind == 2], [rng.uniform(-6, -1, shape), rng.uniform(-7, -3, shape),
                                                       rng.uniform(-6, -4.5, shape)], rng.uniform(-7, -2, shape))
    sign = np.where(xx > 0, -1.0, 1.0)
    mean = np.select([kind == 0, kind == 1, kind == 2],
                     [0.9 * (2 * rng.random(shape) - 1), xx + np.exp(ls) * 2.0 * rng.standard_normal(shape),
                      xx + sign * rng.uniform(0.3, 0.8, shape)],
                     np.where(rng.random(shape) < 0.7, np.sign(xx) * (1 - np.exp(ls) * np.abs(rng.standard_normal(shape))),
                              0.9 * (2 * rng.random(shape) - 1)))
    if recipe == "mixed":
        v = rng.random(shape)
        ls = np.where(v < 0.05, ls - 3.0, np.where(v > 0.97, LOG_SCALE_MIN, ls))
    return np.concatenate([logits, mean, ls], 1).astype(f32)


# ---- Comparisons.
def loss_tolerance(ref, target_i, bits, k):
    """Per position: LOSS_TOL (1 + |want|), plus for bin targets |dloss/dx| |x_kernel - x_twin|: the
    kernel's x is the f32 rounding of the bin value (up to ~2 ulps, 1.4e-7), and dloss/dx =
    -sum_k dloss/dmean_k reaches ~exp(7) for the narrowest components (an input rounding the f32
    kernel cannot avoid without a wider x; |dx| <= 1.5e-7, the term up to ~1.6e-4)."""
    tol = LOSS_TOL * (1.0 + np.abs(ref["loss"]))
    if target_i is not None:
        dx = np.abs(kernel_bin_x(target_i, bits).astype(np.float64) - ref["x"])
        dldx = np.abs(ref["grad"][:, k:2 * k].sum(1))  # grad_scale 1 (NONE)
        tol = tol + dldx * dx
    return tol


def grad_errors(got, want, k, rtol):
    """Per tensor (logits, means, log-scales): max |got - want| / max |want|. -> (errors, problems)"""
    errs, bad = [], []
    for j, name in enumerate(("logits", "means", "log_scales")):
        g, w = got[:, j * k:(j + 1) * k].astype(np.float64), want[:, j * k:(j + 1) * k]
        scale = np.abs(w).max()
        if scale == 0.0:
            e = 0.0 if not np.any(g) else np.inf
        else:
            e = float(np.abs(g - w).max() / scale) if np.isfinite(g).all() else np.inf
        errs.append(e)
        if not e <= rtol:
            ix = np.unravel_index(np.nan_to_num(np.abs(g - w), nan=np.inf).argmax(), g.shape)
            bad.append(f"grad {name}: err {e:.1e} > {rtol:g} max|want| (worst at [b={ix[0]}, k={ix[1]}, l={ix[2]}]: "
                       f"got {float(g[ix]):.7g}, want {float(w[ix]):.7g})")
    return errs, bad


def describe_position(ref, params, k, bb, ll):
    """The dominant component's branch, log-scale and bin width in u units at one position."""
    kk = int(ref["w"][bb, :, ll].argmax())
    ls = float(params[bb, 2 * k + kk, ll])
    return (f"dominant component {kk}: {['left edge', 'right edge', 'bin mass', 'mid-point pdf'][ref['branch'][bb, kk, ll]]} "
            f"branch, log_scale {ls:.3g}")


def mk(b, l, k, bits, kind, recipe="mixed", bf16=False, need=(), only=None, interior=False, note=""):
    return dict(b=b, l=l, k=k, bits=bits, kind=kind, recipe=recipe, bf16=bf16, need=set(need), only=only,
                interior=interior, note=note)


def case_label(c):
    n = c["b"] * c["l"]
    tail = -n % BLOCK
    return (f"K={c['k']} bits={c['bits']} {c['kind']} [B={c['b']}, L={c['l']}] ({grid_of(n)} block(s), "
            f"{'tail ' + str(tail) if tail else 'no tail'}), {c['recipe']}{', ' + c['note'] if c['note'] else ''}")


def check_loss_case(K, ck, rng, c, asan=False):
    """dml_loss (+ dml_reduce) for one case in all three reductions: vs the f64 reference, the
    reductions' exact relations, ls < -7 gradients, coverage of the branches, orders and guards."""
    k, bits, bf16, b, l = c["k"], c["bits"], c["bf16"], c["b"], c["l"]
    tf, ti = gen_targets(rng, b, l, bits, c["kind"], c["interior"])
    x = ref_targets(tf, ti, bits)
    params = gen_params(rng, x, k, c["recipe"])
    pv = bf16_round(params) if bf16 else params
    ref = reference(pv, k, bits, NONE, tf, ti)
    n = b * l
    tol = loss_tolerance(ref, ti, bits, k)
    if asan:  # accuracy is the normal build's job; here a sanity bound
        tol = np.maximum(tol, 1e-2 * (1.0 + np.abs(ref["loss"])))
    gtol = (BF16_TOL if bf16 else GRAD_TOL) * (100.0 if asan and not bf16 else 1.0)
    orders = ORDERS[:1] if asan else ORDERS
    guard = 0 if asan else GUARD_BYTES
    runs = {red: [K.loss(pv, k, bits, red, tf, ti, bf16, order=o, seed=s, guard=guard) for o, s in orders]
            for red in (NONE, MEAN, SUM)}
    bad = []
    for red, rs in runs.items():
        for _, p in rs:
            bad += [f"{RED_NAMES[red]}: {m}" for m in p if f"{RED_NAMES[red]}: {m}" not in bad]
        first = rs[0][0]
        for name in ("loss", "grad", "part"):
            if first[name] is None:
                continue
            if not np.isfinite(first[name]).all():
                bad.append(f"{RED_NAMES[red]}: {name}: {int((~np.isfinite(first[name])).sum())} of {first[name].size} "
                           f"non-finite (unwritten) elements")
            if any(not bits_equal([first[name]], [r[0][name]]) for r in rs[1:]):
                bad.append(f"{RED_NAMES[red]}: {name} order-dependent")
    rn, rm, rs_ = runs[NONE][0][0], runs[MEAN][0][0], runs[SUM][0][0]
    # vs f64: per-position loss, the reduced losses, the gradients (NONE and MEAN)
    got = rn["loss"].astype(np.float64)
    r = np.where(np.isfinite(got), np.abs(got - ref["loss"]) / tol, np.inf)
    worst_loss = float(r.max())
    if not worst_loss <= 1.0:
        bb, ll = np.unravel_index(r.argmax(), r.shape)
        bad.append(f"loss: {int((r > 1).sum())} of {n} positions over tolerance, worst {worst_loss:.3g}x at "
                   f"[{bb}, {ll}] (x {ref['x'][bb, ll]:.7g}; {describe_position(ref, pv, k, bb, ll)}): got "
                   f"{got[bb, ll]:.8g}, want {ref['loss'][bb, ll]:.8g}")
    worst_out = 0.0
    for red, res in ((MEAN, rm), (SUM, rs_)):
        want = ref["loss"].sum() / (n if red == MEAN else 1)
        t = tol.sum() / (n if red == MEAN else 1)
        e = abs(float(res["loss"][0]) - want) / t if np.isfinite(res["loss"][0]) else np.inf
        worst_out = max(worst_out, e)
        if not e <= 1.0:
            bad.append(f"{RED_NAMES[red]} loss: got {float(res['loss'][0]):.8g}, want {want:.8g} ({e:.3g}x tol)")
    gerr, gbad = grad_errors(rn["grad"], ref["grad"], k, gtol)
    bad += gbad
    gerr_m, gbad = grad_errors(rm["grad"], ref["grad"] / n, k, gtol)
    bad += [f"mean: {m}" for m in gbad]
    # exact relations between the reductions (same code, grad_scale 1 or 1/(B L))
    if not bits_equal([rn["grad"]], [rs_["grad"]]):
        bad.append("sum grad != none grad (bitwise)")
    if not bf16 and not bits_equal([rm["grad"]], [(rn["grad"] * (f32(1.0) / f32(n))).astype(f32)]):
        bad.append("mean grad != none grad * f32(1 / (B L)) (bitwise)")
    if not bits_equal([rm["part"]], [rs_["part"]]) or not bits_equal([rs_["part"]], [partials_port(rn["loss"].ravel(), grid_of(n))]):
        bad.append("workspace partials != the f32 tree of the per-position losses (bitwise)")
    for red, res in ((MEAN, rm), (SUM, rs_)):
        if not same(res["loss"][0], reduce_port(res["part"], n, red)):
            bad.append(f"{RED_NAMES[red]}: out != the port of dml_reduce on the partials (bitwise)")
    # log-scales below the clamp: gradient exactly 0 (kept at exactly -7)
    below = pv[:, 2 * k:] < LOG_SCALE_MIN
    for red, res in ((NONE, rn), (MEAN, rm), (SUM, rs_)):
        if np.any(res["grad"][:, 2 * k:][below] != 0.0):
            bad.append(f"{RED_NAMES[red]}: nonzero log-scale gradient below -7")
    # bf16: the same f32 math on the bf16 values, the gradient rounded to nearest even on store
    if bf16:
        r32, _ = K.loss(pv, k, bits, NONE, tf, ti, False, guard=guard)
        if not bits_equal([rn["loss"]], [r32["loss"]]):
            bad.append("bf16 loss != the f32 kernel's on the same values (bitwise)")
        if not bits_equal([bf16_bits(rn["grad"])], [bf16_bits(r32["grad"])]):
            bad.append("bf16 grad != the f32 kernel's gradient rounded to bf16 (bitwise)")
    # branch coverage
    cnt = np.bincount(ref["branch"].ravel(), minlength=4)
    for br in c["need"]:
        if cnt[br] == 0:
            bad.append(f"branch {br} not exercised")
    if c["only"] is not None and set(np.flatnonzero(cnt)) - set(c["only"]):
        bad.append(f"branches {np.flatnonzero(cnt).tolist()} exercised, meant only {sorted(c['only'])}")
    t = "bf16" if bf16 else "f32"
    xs = " + |dloss/dx| |dx| (bin targets)" if c["kind"] == "bins" else ""
    if asan:
        what = "ASan: no report, every output written, reductions consistent, loss/grad sane (1e-2)"
    else:
        what = (f"loss vs f64 within {LOSS_TOL:g}(1+|want|){xs}, grad within {gtol:g} max|want| per tensor; "
                f"none/mean/sum: partials = f32 tree, out = reduce port, grads related bitwise; ls<-7 grad 0; "
                f"every output written; guards/inputs intact; 3 orders")
    detail = (f"[loss {worst_loss:.2f} tol, out {worst_out:.2f} tol, grad {' '.join(f'{e:.0e}' for e in gerr)}; "
              f"mean grad {' '.join(f'{e:.0e}' for e in gerr_m)}; branches L/R/mass/mid {'/'.join(map(str, cnt))}; "
              f"{int(below.sum())} ls < -7]")
    ck.check(f"dml_loss_{t} {case_label(c)}: {what}", not bad, "; ".join(bad[:6]) + " " + detail if bad else detail)


# ---- Parts.
SHAPES = [(2, 333), (3, 300), (1, 1000), (1, 257), (2, 256), (1, 700), (4, 64), (5, 111)]
MAIN_CASES = [mk(b, l, k, bits, kind, need=(0, 1, 2, 3))
              for (k, bits, kind), (b, l) in zip([(k, bits, kind) for k in (1, 6, 10, 32) for bits in (8, 16)
                                                  for kind in ("values", "bins")], SHAPES * 2)]


def part_f32(K, ck, rng):
    for c in MAIN_CASES:
        check_loss_case(K, ck, rng, c)


SPECIAL_CASES = [
    mk(2, 300, 6, 8, "values", "fallback", only={3}, interior=True, note="every component's bin mass < 1e-5"),
    mk(1, 400, 1, 16, "bins", "fallback", only={3}, interior=True, note="every component's bin mass < 1e-5"),
    mk(1, 300, 32, 8, "bins", "fallback", only={3}, interior=True, note="every component's bin mass < 1e-5"),
    mk(2, 300, 6, 8, "bins", "near", need={2}, interior=True, note="components on the target (bin mass)"),
    mk(2, 300, 6, 16, "values", "near", need={2}, interior=True, note="components on the target (bin mass)"),
    mk(1, 1, 3, 8, "bins", need=()), mk(1, 255, 3, 8, "values"), mk(1, 257, 3, 16, "bins"),
    mk(3, 171, 3, 8, "values"),
]


def edge_case(K, ck, rng, k, bits, kind, asan=False):
    """Targets at the edge bins only (0 and 2^bits - 1, values ±1, and values beyond ±0.999), means
    near the edges: the left / right edge branches only."""
    b, l = 2, 200
    last = (1 << bits) - 1
    i = np.arange(b * l)
    if kind == "bins":
        ti, tf = np.where(i % 2 == 0, 0, last).astype(np.uint32).reshape(b, l), None
    else:
        v = np.array([-1.0, 1.0, -0.9995, 0.9995, np.nextafter(f32(-0.999), f32(-2)), np.nextafter(f32(0.999), f32(2))], f32)
        tf, ti = v[i % v.size].reshape(b, l), None
    x = ref_targets(tf, ti, bits)
    params = gen_params(rng, x, k, "edges")
    run_fixed_case(K, ck, params, tf, ti, k, bits, f"K={k} bits={bits} {kind} [B={b}, L={l}], edge targets only",
                   only={0, 1}, asan=asan)


def run_fixed_case(K, ck, params, tf, ti, k, bits, label, only=None, need=(), asan=False):
    """check_loss_case's checks for given params and targets (NONE and SUM; f32)."""
    b, _, l = params.shape
    ref = reference(params, k, bits, NONE, tf, ti)
    tol = loss_tolerance(ref, ti, bits, k)
    guard = 0 if asan else GUARD_BYTES
    orders = ORDERS[:1] if asan else ORDERS
    bad = []
    outs = []
    for o, s in orders:
        r, p = K.loss(params, k, bits, NONE, tf, ti, order=o, seed=s, guard=guard)
        bad += [m for m in p if m not in bad]
        outs.append(r)
    rn = outs[0]
    if any(not bits_equal([rn["loss"], rn["grad"]], [r["loss"], r["grad"]]) for r in outs[1:]):
        bad.append("order-dependent")
    got = rn["loss"].astype(np.float64)
    rr = np.where(np.isfinite(got), np.abs(got - ref["loss"]) / tol, np.inf)
    if not rr.max() <= 1.0:
        bb, ll = np.unravel_index(rr.argmax(), rr.shape)
        bad.append(f"loss: worst {rr.max():.3g}x tol at [{bb}, {ll}] ({describe_position(ref, params, k, bb, ll)}): "
                   f"got {got[bb, ll]:.8g}, want {ref['loss'][bb, ll]:.8g}")
    gerr, gbad = grad_errors(rn["grad"], ref["grad"], k, GRAD_TOL)
    bad += gbad
    cnt = np.bincount(ref["branch"].ravel(), minlength=4)
    if only is not None and set(np.flatnonzero(cnt)) - set(only):
        bad.append(f"branches {np.flatnonzero(cnt).tolist()} exercised, meant only {sorted(only)}")
    for br in need:
        if cnt[br] == 0:
            bad.append(f"branch {br} not exercised")
    what = "ASan: no report, " if asan else ""
    ck.check(f"dml_loss_f32 {label}: {what}loss vs f64 within {LOSS_TOL:g}(1+|want|), grad {GRAD_TOL:g} max|want| per "
             f"tensor{'' if asan else ', 3 orders'}", not bad, "; ".join(bad) if bad else
             f"[loss {rr.max():.2f} tol, grad {' '.join(f'{e:.0e}' for e in gerr)}; branches L/R/mass/mid "
             f"{'/'.join(map(str, cnt))}]")


def part_special(K, ck, rng):
    for c in SPECIAL_CASES:
        check_loss_case(K, ck, rng, c)
    for k, bits, kind in ((6, 8, "bins"), (1, 16, "values"), (10, 16, "bins")):
        edge_case(K, ck, rng, k, bits, kind)
    # Extreme logits: every logit ±40 (+ N(0, 1)), and all equal at +40.
    for k in (6, 32):
        b, l = 1, 300
        tf, ti = gen_targets(rng, b, l, 8, "values")
        x = ref_targets(tf, ti, 8)
        params = gen_params(rng, x, k)
        params[:, :k] = (np.where(rng.random((b, k, l)) < 0.5, 40.0, -40.0) + rng.standard_normal((b, k, l))).astype(f32)
        params[:, :k, :50] = 40.0
        run_fixed_case(K, ck, params, tf, ti, k, 8, f"K={k} bits=8 values [B=1, L=300], logits ±40 + N(0, 1), 50 "
                       f"positions all +40")
    # Switched-off components: logits -inf (components 0 and 3 everywhere, and all but one on 50
    # positions): they leave the log-sum-exps unchanged, their gradients are 0.
    k, b, l = 6, 1, 300
    tf, ti = gen_targets(rng, b, l, 8, "values")
    params = gen_params(rng, ref_targets(tf, ti, 8), k)
    params[:, [0, 3]] = -np.inf
    params[:, :k, :50] = -np.inf
    params[0, rng.integers(0, k, 50), np.arange(50)] = 1.5
    run_fixed_case(K, ck, params, tf, ti, k, 8, "K=6 bits=8 values [B=1, L=300], logits -inf (components 0 and 3; all "
                   "but one on 50 positions)")
    # Out-of-range targets: clamped as documented (values: NaN -> -1, else into [-1, 1]; bins: to the
    # last bin): bitwise the same loss and gradient as the clamped targets, and the reference's.
    for bits in (8, 16):
        last = (1 << bits) - 1
        b, l, k = 1, 300, 6
        x0 = np.zeros((b, l))
        params = gen_params(rng, x0 + np.where(np.arange(l) % 2 == 0, -1.0, 1.0)[None], k)
        bad_v = np.array([1.5, -3.0, np.nan, np.inf, -np.inf, np.nextafter(f32(1), f32(2)), np.nextafter(f32(-1), f32(-2)),
                          3e38, -3e38, -np.nan], f32)
        ok_v = np.where(np.isnan(bad_v), f32(-1.0), np.clip(bad_v, -1.0, 1.0)).astype(f32)
        bad_i = np.array([1 << bits, (1 << bits) + 7, 0xFFFFFFFF, 0x80000000, last + 1, 1 << 20], np.uint32)
        problems = []
        for what, bad_t, ok_t in (("values", bad_v, ok_v), ("bins", bad_i, np.full(bad_i.size, last, np.uint32))):
            tb = bad_t[np.arange(l) % bad_t.size].reshape(b, l)
            to = ok_t[np.arange(l) % ok_t.size].reshape(b, l)
            kw_b = {"target_f": tb} if what == "values" else {"target_i": tb}
            kw_o = {"target_f": to} if what == "values" else {"target_i": to}
            for red in (NONE, SUM):
                rb, p1 = K.loss(params, k, bits, red, guard=GUARD_BYTES, **kw_b)
                ro, p2 = K.loss(params, k, bits, red, guard=GUARD_BYTES, **kw_o)
                problems += p1 + p2
                if not bits_equal([rb["loss"], rb["grad"]], [ro["loss"], ro["grad"]]):
                    problems.append(f"{what} {RED_NAMES[red]}: out-of-range targets differ from the clamped ones")
                if red == NONE:
                    ref = reference(params, k, bits, NONE, **kw_b)
                    tol = loss_tolerance(ref, kw_b.get("target_i"), bits, k)
                    e = float((np.abs(rb["loss"] - ref["loss"]) / tol).max())
                    if not e <= 1.0:
                        problems.append(f"{what}: loss {e:.3g}x tol from the twin's clamp")
                    _, gb = grad_errors(rb["grad"], ref["grad"], k, GRAD_TOL)
                    problems += [f"{what}: {m}" for m in gb]
        ck.check(f"dml_loss_f32 bits={bits} out-of-range targets (values ±1.5, -3, ±NaN, ±inf, ±3e38, 1 + ulp; bins "
                 f"2^bits, 2^bits + 7, 2^31, 2^32 - 1, 2^20): loss and grad bitwise as the clamped targets (NaN -> -1, "
                 f"bins -> 2^bits - 1), none and sum, and as the twin's", not problems, "; ".join(problems))
    # grad NULL: the same loss (and reduced loss), nothing else written
    tf, ti = gen_targets(rng, 2, 200, 16, "bins")
    params = gen_params(rng, ref_targets(tf, ti, 16), 6)
    problems = []
    for red in (NONE, MEAN):
        for o, s in ORDERS:
            r1, p1 = K.loss(params, 6, 16, red, tf, ti, grad=True, order=o, seed=s, guard=GUARD_BYTES)
            r2, p2 = K.loss(params, 6, 16, red, tf, ti, grad=False, order=o, seed=s, guard=GUARD_BYTES)
            problems += p1 + p2
            if not bits_equal([r1["loss"], r1["part"]], [r2["loss"], r2["part"]]):
                problems.append(f"{RED_NAMES[red]} order {o}: loss without grad differs")
    ck.check("dml_loss_f32 K=6 bits=16 bins [2, 200], grad NULL: loss (none) and partials / out (mean) bitwise as with "
             "grad, 3 orders, guards intact", not problems, "; ".join(problems))
    # The log-scale clamp: ls = -7 and ls = -9 give the same loss, logit and mean gradients
    # (bitwise); the log-scale gradient is 0 below -7 and computed at -7.
    k, b, m = 6, 1, 150
    tf, ti = gen_targets(rng, b, m, 8, "values")
    x = ref_targets(tf, ti, 8)
    p7 = gen_params(rng, x, k, "near")
    p7[:, 2 * k:] = LOG_SCALE_MIN
    p9 = p7.copy()
    p9[:, 2 * k:] = (LOG_SCALE_MIN - 0.5 - 3 * rng.random((b, k, m))).astype(f32)
    params = np.concatenate([p7, p9], 2)
    tfs = np.concatenate([tf, tf], 1)
    r, problems = K.loss(params, k, 8, NONE, tfs, guard=GUARD_BYTES)
    g7, g9 = r["grad"][..., :m], r["grad"][..., m:]
    if not bits_equal([r["loss"][:, :m], g7[:, :2 * k]], [r["loss"][:, m:], g9[:, :2 * k]]):
        problems.append("ls -7 and ls < -7 differ in loss or logit / mean gradients")
    if np.any(g9[:, 2 * k:] != 0) or np.any(np.signbit(g9[:, 2 * k:])):
        problems.append("log-scale gradient below -7 not +0")
    if np.count_nonzero(g7[:, 2 * k:]) < g7[:, 2 * k:].size // 2:
        problems.append("log-scale gradient at exactly -7 mostly zero")
    ref = reference(params, k, 8, NONE, tfs)
    _, gb = grad_errors(r["grad"], ref["grad"], k, GRAD_TOL)
    problems += gb
    ck.check("dml_loss_f32 K=6 bits=8 log-scale clamp: ls = -7 vs ls in (-10.5, -7.5) at the same targets: loss and "
             "logit / mean grads bitwise equal, log-scale grad +0 below -7 and computed at -7, vs f64",
             not problems, "; ".join(problems))


BF16_CASES = [mk(3, 300, 6, 8, "values", bf16=True, need=(0, 1, 2, 3)), mk(1, 257, 32, 16, "bins", bf16=True),
              mk(2, 333, 1, 8, "bins", bf16=True), mk(1, 700, 10, 16, "values", bf16=True)]


def part_bf16(K, ck, rng):
    for c in BF16_CASES:
        check_loss_case(K, ck, rng, c)


def scale_case(K, ck, rng, b, k, l, red, bf16, asan=False):
    shape = (b, 3 * k, l)
    g = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, shape)).astype(f32)
    flat = g.reshape(-1)
    sp = np.array([0.0, -0.0, 1e-40, -3e38, np.inf, np.nan, 1.0], f32)
    j = rng.choice(flat.size, min(flat.size, 3 * sp.size), replace=False)
    flat[j] = sp[np.arange(j.size) % sp.size]
    if bf16:
        g = bf16_round(g)
    if red == NONE:
        up = rng.standard_normal((b, l)).astype(f32)
        us = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30, 1e30, -1.0], f32)
        ju = rng.choice(up.size, min(up.size, us.size), replace=False)
        up.reshape(-1)[ju] = us[:ju.size]
        upb = up[:, None, :]
    else:
        up = np.array([{MEAN: 1.0 / 3.0, SUM: -2.5}[red]], f32)
        upb = up[0]
    with np.errstate(invalid="ignore", over="ignore"):
        prod = (g * upb).astype(f32)
    want = bf16_round(prod) if bf16 else prod
    orders = ORDERS[:1] if asan else ORDERS
    outs, bad = [], []
    for o, s in orders:
        got, p = K.scale(g, k, up, red, bf16, order=o, seed=s, guard=0 if asan else GUARD_BYTES)
        bad += [m for m in p if m not in bad]
        outs.append(got)
    if not same(outs[0], want):
        bad.append(f"{int((~((outs[0] == want) | (np.isnan(outs[0]) & np.isnan(want)))).sum())} elements differ from "
                   f"grad * upstream")
    if any(not bits_equal([outs[0]], [o]) for o in outs[1:]):
        bad.append("order-dependent")
    t = "bf16" if bf16 else "f32"
    ck.check(f"dml_scale_{t} [B={b}, 3K={3 * k}, L={l}] upstream {'[B, L]' if red == NONE else '[1]'} "
             f"({RED_NAMES[red]}; {grid_of(b * l)} blocks): {'ASan: no report, ' if asan else ''}bitwise "
             f"{'bf16(' if bf16 else ''}grad * upstream{')' if bf16 else ''} in f32 (0, -0, NaN, ±inf, "
             f"subnormal, overflow), guards and upstream intact{', 3 orders' if not asan else ''}", not bad,
             "; ".join(bad))


def part_scale(K, ck, rng):
    for bf16 in (False, True):
        for b, k, l, red in ((2, 3, 333, NONE), (1, 32, 257, SUM), (3, 1, 100, MEAN), (1, 6, 1, NONE), (2, 10, 128, NONE)):
            scale_case(K, ck, rng, b, k, l, red, bf16)
    # The backward chain: dml_loss (grad for upstream 1), then dml_scale by the upstream, vs the
    # f64 gradient times the upstream.
    b, k, l = 2, 6, 300
    tf, ti = gen_targets(rng, b, l, 8, "values")
    params = gen_params(rng, ref_targets(tf, ti, 8), k)
    ref = reference(params, k, 8, NONE, tf, ti)
    bad = []
    for red in (NONE, MEAN):
        r, p = K.loss(params, k, 8, red, tf, guard=GUARD_BYTES)
        up = rng.standard_normal((b, l)).astype(f32) if red == NONE else np.array([0.7], f32)
        g, p2 = K.scale(r["grad"], k, up, red, guard=GUARD_BYTES)
        bad += p + p2
        want = ref["grad"] * (up[:, None, :] if red == NONE else up[0] / (b * l))
        _, gb = grad_errors(g, want, k, GRAD_TOL)
        bad += [f"{RED_NAMES[red]}: {m}" for m in gb]
    ck.check(f"dml_loss_f32 then dml_scale_f32 (K=6 bits=8 [2, 300], none with upstream [B, L], mean with [1]): vs the "
             f"f64 gradient times upstream within {GRAD_TOL:g} max|want| per tensor", not bad, "; ".join(bad))


def part_reduce(K, ck, rng, asan=False):
    U = 2.0 ** -24
    problems, worst = [], 0.0
    for blocks in (1, 2, 255, 256, 257, 1000, 4097):
        n = blocks * BLOCK - int(rng.integers(0, BLOCK))
        part = (rng.random(blocks) * 300 + 30 * rng.standard_normal(blocks)).astype(f32)
        for red in (SUM, MEAN):
            outs = []
            for o, s in (ORDERS[:1] if asan else ORDERS):
                got, p = K.reduce(part, 1, n, red, order=o, seed=s, guard=0 if asan else GUARD_BYTES)
                problems += [f"blocks {blocks}: {m}" for m in p]
                outs.append(got)
            if any(not same(outs[0], o) for o in outs[1:]):
                problems.append(f"blocks {blocks} {RED_NAMES[red]}: order-dependent")
            if not same(outs[0], reduce_port(part, n, red)):
                problems.append(f"blocks {blocks} {RED_NAMES[red]}: got {outs[0]!r}, port {reduce_port(part, n, red)!r}")
            exact = part.astype(np.float64).sum() / (n if red == MEAN else 1)
            bound = (-(-blocks // BLOCK) + 9) * U * np.abs(part.astype(np.float64)).sum() / (n if red == MEAN else 1)
            worst = max(worst, abs(float(outs[0]) - exact) / bound)
            if not abs(float(outs[0]) - exact) <= bound:
                problems.append(f"blocks {blocks} {RED_NAMES[red]}: {float(outs[0])!r} vs f64 {exact!r} beyond the bound")
    for name, vals, want in (("+inf", [1.0, np.inf, 2.0], np.inf), ("NaN", [1.0, np.nan, 2.0], np.nan),
                             ("inf - inf", [np.inf, -np.inf], np.nan)):
        part = np.array(vals * 100, f32)
        got, p = K.reduce(part, 1, part.size * BLOCK, SUM, guard=0 if asan else GUARD_BYTES)
        problems += p
        if not same(np.float32(got), np.float32(want)) and not (np.isnan(want) and np.isnan(got)):
            problems.append(f"{name}: got {got!r}")
    ck.check(f"dml_reduce_f32 on 1, 2, 255, 256, 257, 1000, 4097 partials, sum and mean: "
             f"{'ASan: no report, ' if asan else ''}bitwise the f32 port (thread t sums t, t + 256, ... then the tree), "
             f"within (ceil(blocks/256) + 9) u sum|p| of f64, {'3 orders, ' if not asan else ''}inf / NaN propagate",
             not problems, "; ".join(problems[:6]) if problems else f"[worst {worst:.2f} of the bound]")


SAMPLE_CASES = [  # (B, L, K, bits, temperature, seed, bf16)
    (2, 700, 6, 8, 1.0, 7, False), (1, 1000, 1, 16, 1.0, 42, False), (1, 513, 32, 8, 0.5, 3, False),
    (3, 200, 10, 16, 2.0, 2 ** 63 + 5, False), (1, 300, 6, 8, 0.05, 11, False), (2, 300, 6, 16, 1.0, 7, True),
    (1, 1, 3, 8, 1.0, 0, False)]
SAMPLE_PORT_MAX = 0.002   # fraction of samples allowed to differ from the numpy f32 port (np.log vs logf ulps)
SAMPLE_TWIN_MAX = 0.005   # ... from the f64 twin (f32 rounding at Gumbel ties and bin boundaries)
# Seeds whose draw at position 0 lies in the uniform's top cell (r >> 40 = 2^24 - 1, so r >> 41 =
# 2^23 - 1: u = 1 - 2^-24; a 24-bit uniform rounded this cell to exactly 1.0f; found by a search
# over seeds with rand_bits, re-checked in part_sample): draw 0 (the first Gumbel draw), draw 1 (the
# logistic draw when K = 1).
SEED_U1_DRAW0 = 311897
SEED_U1_DRAW1 = 7387641


def sample_case(K, ck, rng, b, l, k, bits, tau, seed_, bf16, asan=False):
    x = ref_targets(*gen_targets(rng, b, l, bits, "values"), bits)
    params = gen_params(rng, x, k)
    pv = bf16_round(params) if bf16 else params
    outs, bad = [], []
    for o, s in (ORDERS[:1] if asan else ORDERS):
        got, p = K.sample(pv, k, bits, seed_, tau, bf16, order=o, seed=s, guard=0 if asan else GUARD_BYTES)
        bad += [m for m in p if m not in bad]
        outs.append(got)
    got = outs[0]
    n = b * l
    if any(not bits_equal([got], [o]) for o in outs[1:]):
        bad.append("order-dependent")
    if not np.isfinite(got).all():
        bad.append(f"{int((~np.isfinite(got)).sum())} samples non-finite (unwritten)")
    bins = (1 << bits) - 1
    with np.errstate(invalid="ignore"):
        idx = np.rint((got.astype(np.float64) + 1.0) * 0.5 * bins)
        exact = 2.0 * idx / bins - 1.0
        off = ~((idx >= 0) & (idx <= bins) & (np.abs(got - exact) <= 2.0 ** -24))
    if off.any():
        bad.append(f"{int(off.sum())} samples off the bin grid (e.g. {float(got.ravel()[off.ravel()][0])!r})")
    # The twin stores f32(2 i / bins - 1), rounded once (tests/dml.rs gpu_matches_twin compares with ==;
    # 2.f * i / bins - 1.f, rounded twice, misses it on about half the samples).
    d_round = 0 if asan else int((got != exact.astype(f32)).sum())
    if d_round:
        j = np.flatnonzero((got != exact.astype(f32)).ravel())[0]
        bad.append(f"{d_round} of {n} samples are not the f32 nearest their bin's value 2 i / bins - 1 (e.g. bin "
                   f"{int(idx.ravel()[j])}: {float(got.ravel()[j])!r}, nearest {float(exact.astype(f32).ravel()[j])!r})")
    port = sample_port(pv, k, bits, seed_, tau)
    d_port = int((port != got).sum())
    if d_port > max(2, SAMPLE_PORT_MAX * n):
        bad.append(f"{d_port} of {n} samples differ from the f32 port")
    twin = sample_twin(pv, k, bits, seed_, tau)
    d_twin = int((np.rint((twin.astype(np.float64) + 1.0) * 0.5 * bins) != idx).sum())
    if d_twin > max(2, SAMPLE_TWIN_MAX * n):
        bad.append(f"{d_twin} of {n} samples in another bin than the twin's")
    if n >= 100 and not asan:
        other, _ = K.sample(pv, k, bits, seed_ + 1, tau, bf16, guard=GUARD_BYTES)
        if (other != got).mean() < 0.2:
            bad.append("seed + 1 changes fewer than 20 % of the samples")
    t = "bf16" if bf16 else "f32"
    counts = f"[{d_port} differ from the port, {d_twin} from the twin's bin]"
    ck.check(f"dml_sample_{t} K={k} bits={bits} tau={tau:g} seed={seed_} [B={b}, L={l}] ({grid_of(n)} blocks): "
             f"{'ASan: no report, ' if asan else ''}every sample written, {'within 1 ulp of' if asan else 'the f32 nearest'} "
             f"its bin's value, bitwise the f32 port except <= {SAMPLE_PORT_MAX:.1%}, the twin's bin except <= {SAMPLE_TWIN_MAX:.1%}"
             f"{'' if asan else ', 3 orders, seed-dependent'}", not bad,
             "; ".join(bad) + " " + counts if bad else counts)


def part_sample(K, ck, rng):
    for case in SAMPLE_CASES:
        sample_case(K, ck, rng, *case)
    # The distribution: K = 3 narrow components at -0.5, 0, 0.5, logits 0, 1, 2: component
    # frequencies softmax(logits / tau) (within 5 binomial sigmas); K = 1: the logistic's mean and
    # standard deviation s tau pi / sqrt 3 (clamping negligible).
    n = 20000
    problems = []
    for tau in (1.0, 0.5, 2.0):
        p = np.zeros((1, 9, n), f32)
        p[0, 0:3] = np.array([0.0, 1.0, 2.0], f32)[:, None]
        p[0, 3:6] = np.array([-0.5, 0.0, 0.5], f32)[:, None]
        p[0, 6:9] = -6.0
        s, bad = K.sample(p, 3, 8, 99, tau)
        problems += bad
        comp = np.rint(s[0] * 2.0 + 1.0).astype(int)
        pi = np.exp(np.array([0.0, 1.0, 2.0]) / tau)
        pi /= pi.sum()
        for j in range(3):
            f = (comp == j).mean()
            if abs(f - pi[j]) > 5 * np.sqrt(pi[j] * (1 - pi[j]) / n):
                problems.append(f"tau {tau}: component {j} frequency {f:.4f}, want {pi[j]:.4f}")
        p1 = np.zeros((1, 3, n), f32)
        p1[0, 1], p1[0, 2] = 0.1, np.log(0.05)
        s1, bad = K.sample(p1, 1, 16, 5, tau)
        problems += bad
        sd = 0.05 * tau * np.pi / np.sqrt(3.0)
        m, v = float(s1.mean()), float(s1.std())
        if abs(m - 0.1) > 5 * sd / np.sqrt(n) or abs(v / sd - 1.0) > 0.03:
            problems.append(f"tau {tau}: logistic mean {m:.5f} std {v:.5f}, want 0.1, {sd:.5f}")
    ck.check("dml_sample_f32 distribution (n = 20000, tau 1, 0.5, 2): Gumbel-max component frequencies = softmax(logits "
             "/ tau) within 5 sigma; logistic mean and std (s tau pi / sqrt 3) within 5 sigma / 3 %", not problems,
             "; ".join(problems))
    # A draw in the uniform's top cell (once in 2^23 draws) must stay below 1, as the twin's. K = 1,
    # draw 1 (logistic): mean -0.5, scale e^-7: the twin's sample is ~-0.48; u = 1.0f would give
    # logit(u) = +inf, x clamped to +1 (the last bin). K = 2, draw 0 (Gumbel of component 0): logits
    # -40 / +40, means -0.5 / +0.5: the twin picks component 1; u = 1.0f would give component 0 the
    # Gumbel value +inf.
    r0 = rand_bits(SEED_U1_DRAW0, np.zeros(1, np.uint64), 0)[0] >> np.uint64(40)
    r1 = rand_bits(SEED_U1_DRAW1, np.zeros(1, np.uint64), 1)[0] >> np.uint64(40)
    problems = [] if r0 == r1 == (1 << 24) - 1 else ["the seeds no longer give r >> 40 = 2^24 - 1 (re-derive them)"]
    for k, seed_, p in ((1, SEED_U1_DRAW1, [0.0, -0.5, -7.0]), (2, SEED_U1_DRAW0, [-40.0, 40.0, -0.5, 0.5, -7.0, -7.0])):
        pp = np.array(p, f32).reshape(1, 3 * k, 1)
        s, bad = K.sample(pp, k, 16, seed_, 1.0)
        problems += bad
        want = sample_twin(pp, k, 16, seed_, 1.0)
        if abs(float(s[0, 0]) - float(want[0, 0])) > 0.05:
            problems.append(f"K={k} seed {seed_} (top cell on draw {1 if k == 1 else 0}): sample "
                            f"{float(s[0, 0]):.6g}, the twin's {float(want[0, 0]):.6g}")
    ck.check("dml_sample_f32 at a draw in the uniform's top cell (r >> 40 = 2^24 - 1; the logistic draw, K = 1; a "
             "Gumbel draw, K = 2): the same sample as the twin (u < 1, not rounded to 1.0f)", not problems,
             "; ".join(problems))


# ---- The reference against a literal scalar transcription of PixelCNN++'s one-channel
# discretized_mix_logistic_loss (the TF code: cdf_plus - cdf_min, log(max(cdf_delta, 1e-12)),
# log_pdf_mid - log((2^bits - 1) / 2), log_prob_from_logits, log_sum_exp; ±1/255 generalised to
# ±h), and the reference's gradient against central differences of its loss.
def literal_loss(p, x, k, bits):
    bins = (1 << bits) - 1
    h = 1.0 / bins

    def sig(v):
        return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))

    def sp(v):
        return max(v, 0.0) + math.log1p(math.exp(-abs(v)))

    logits, means = [float(v) for v in p[:k]], [float(v) for v in p[k:2 * k]]
    lss = [max(float(v), -7.0) for v in p[2 * k:]]
    m = max(logits)
    lsm = [v - m - math.log(sum(math.exp(w - m) for w in logits)) for v in logits]
    lps = []
    for j in range(k):
        c = x - means[j]
        inv = math.exp(-lss[j])
        plus_in, min_in, mid_in = inv * (c + h), inv * (c - h), inv * c
        cdf_delta = sig(plus_in) - sig(min_in)
        if x < -EDGE:  # the TF code compares in f32: x < f32(-0.999)
            lp = plus_in - sp(plus_in)
        elif x > EDGE:
            lp = -sp(min_in)
        elif cdf_delta > 1e-5:
            lp = math.log(max(cdf_delta, 1e-12))
        else:
            lp = mid_in - lss[j] - 2.0 * sp(mid_in) - math.log(bins / 2.0)
        lps.append(lp + lsm[j])
    m = max(lps)
    return -(m + math.log(sum(math.exp(v - m) for v in lps)))


def part_reference(K, ck, rng):
    worst, cnt = 0.0, np.zeros(4, int)
    for k, bits, kind in ((1, 8, "bins"), (6, 8, "values"), (10, 16, "bins"), (32, 8, "values"), (3, 16, "values")):
        b, l = 2, 100
        tf, ti = gen_targets(rng, b, l, bits, kind)
        params = gen_params(rng, ref_targets(tf, ti, bits), k).astype(np.float64)
        ref = reference(params, k, bits, NONE, tf, ti)
        cnt += np.bincount(ref["branch"].ravel(), minlength=4)
        for bb in range(b):
            for ll in range(l):
                want = literal_loss(params[bb, :, ll], ref["x"][bb, ll], k, bits)
                worst = max(worst, abs(ref["loss"][bb, ll] - want) / (1.0 + abs(want)))
    ck.check("reference loss vs a literal scalar transcription of PixelCNN++'s discretized_mix_logistic_loss (K = 1, 6, "
             "10, 32, 3; bits 8, 16)", worst < 1e-9, f"[{worst:.1e}; branches L/R/mass/mid {'/'.join(map(str, cnt))}]")
    worst = 0.0
    for k, bits, recipe in ((3, 8, "mixed"), (3, 8, "near"), (2, 16, "near"), (4, 8, "fallback")):
        b, l = 1, 60
        tf, ti = gen_targets(rng, b, l, bits, "values", interior=recipe != "mixed")
        x = ref_targets(tf, ti, bits)
        params = gen_params(rng, x, k, recipe).astype(np.float64)
        params[:, 2 * k:] = np.maximum(params[:, 2 * k:], -6.9)  # away from the clamp's kink
        ref = reference(params, k, bits, NONE, tf, ti)
        # away from the bin-mass threshold (a jump) and the edge thresholds
        bins = (1 << bits) - 1
        lp, _, _, br = ref_component(x[:, None, :], params[:, k:2 * k], params[:, 2 * k:], 1.0 / bins, np.log(0.5 * bins))
        inv = np.exp(-params[:, 2 * k:])
        c = x[:, None, :] - params[:, k:2 * k]
        with np.errstate(over="ignore"):
            delta = _sig(inv * (c + 1.0 / bins)) - _sig(inv * (c - 1.0 / bins))
        keep = (np.abs(np.log(np.maximum(delta, 1e-300) / 1e-5)) > 0.05).all(1) & (np.abs(np.abs(x) - EDGE) > 1e-4)
        hstep = 1e-6
        for j in range(3 * k):
            pp, pm = params.copy(), params.copy()
            pp[:, j] += hstep
            pm[:, j] -= hstep
            fd = (reference(pp, k, bits, NONE, tf, ti)["loss"] - reference(pm, k, bits, NONE, tf, ti)["loss"]) / (2 * hstep)
            e = np.abs(ref["grad"][:, j] - fd) / (1.0 + np.abs(fd))
            worst = max(worst, float(e[keep].max()))
    ck.check("reference gradient (logits, means, log-scales) vs central differences of its loss (mixed, bin-mass, "
             "mid-point cases; bits 8, 16)", worst < 1e-6, f"[{worst:.1e}]")


def part_asan(K, ck, rng):
    for c in (MAIN_CASES[2], MAIN_CASES[9], MAIN_CASES[14], SPECIAL_CASES[5], SPECIAL_CASES[7], BF16_CASES[0],
              BF16_CASES[1]):
        check_loss_case(K, ck, rng, c, asan=True)
    edge_case(K, ck, rng, 6, 8, "bins", asan=True)
    for bf16 in (False, True):
        for b, k, l, red in ((2, 3, 333, NONE), (1, 32, 257, SUM), (1, 6, 1, NONE)):
            scale_case(K, ck, rng, b, k, l, red, bf16, asan=True)
    for case in SAMPLE_CASES:
        sample_case(K, ck, rng, *case, asan=True)
    part_reduce(K, ck, rng, asan=True)


if __name__ == "__main__":
    run_main("dml", __doc__, Kernels,
             {"f32": part_f32, "special": part_special, "bf16": part_bf16, "scale": part_scale, "reduce": part_reduce,
              "sample": part_sample, "reference": part_reference},
             {"bounds": part_asan}, seed=20240901)
