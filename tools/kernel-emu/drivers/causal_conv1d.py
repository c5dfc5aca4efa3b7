"""Emulator driver for kernels/causal_conv1d.cu: causal_conv1d_fwd_f32, causal_conv1d_bwd_f32,
causal_conv1d_reduce_f32, against a numpy f64 port of the CPU twin in src/ops/causal_conv1d.rs."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, bits_equal, rel_err, run_main  # noqa: E402

U32, U64 = C.c_uint32, C.c_uint64
MAX_K = 4  # SNUG_CONV_MAX_K
TOL = 2e-5


# Mirrors of kernels/causal_conv1d.h (sizes checked against the C structs).
class ConvParams(C.Structure):
    _fields_ = [(k, P) for k in ("out", "part", "x", "w", "bias", "dout")] + [("s", U64)] + \
        [(k, U32) for k in ("d", "l", "k", "silu", "reverse", "reserved")]


class ReduceParams(C.Structure):
    _fields_ = [(k, P) for k in ("dw", "dbias", "part")] + [("s", U64), ("d", U32), ("k", U32)]


# ---- Launch shapes. These formulas mirror src/ops/causal_conv1d.rs (causal_conv1d and
# causal_conv1d_backward) and must be kept in sync with it: forward 256-thread blocks over S*D*L
# (grid capped at 2^20), backward one block per row with next_pow2(L) clamped to [32, 256]
# threads and a workspace of S*D*(K+1) floats, then the reduce with 256-thread blocks over D*(K+1).
def fwd_launch(S, D, L):
    return min(-(-(S * D * L) // 256), 1 << 20), 256, 0


def bwd_launch(S, D, L):
    return S * D, min(max(1 << (L - 1).bit_length(), 32), 256), 0


def reduce_launch(D, K):
    return -(-(D * (K + 1)) // 256), 256, 0


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        emu.check_struct("causal_conv1d_fwd_f32", ConvParams)
        emu.check_struct("causal_conv1d_bwd_f32", ConvParams)
        emu.check_struct("causal_conv1d_reduce_f32", ReduceParams)

    def forward(self, x, w, bias, silu, reverse, order=0, seed=0, grid=None):
        S, D, L = x.shape
        K = w.shape[1]
        with Mem(self.emu) as m:
            out = m.new((S, D, L))
            p = ConvParams(out=out, x=m.put(x), w=m.put(w), bias=m.put(bias), s=S, d=D, l=L, k=K,
                           silu=int(silu), reverse=int(reverse))
            shape = fwd_launch(S, D, L)
            if grid is not None:
                shape = (grid,) + shape[1:]
            self.emu.launch("causal_conv1d_fwd_f32", p, *shape, order, seed)
            return m.get(out)

    def backward(self, x, w, bias, dout, silu, reverse, order=0, seed=0):
        S, D, L = x.shape
        K = w.shape[1]
        with Mem(self.emu) as m:
            dx, ws = m.new((S, D, L)), m.new((S * D * (K + 1),))
            dw, db = m.new((D, K)), (m.new((D,)) if bias is not None else None)
            p = ConvParams(out=dx, part=ws, x=m.put(x), w=m.put(w), bias=m.put(bias), dout=m.put(dout), s=S, d=D, l=L,
                           k=K, silu=int(silu), reverse=int(reverse))
            self.emu.launch("causal_conv1d_bwd_f32", p, *bwd_launch(S, D, L), order, seed)
            q = ReduceParams(dw=dw, dbias=db, part=ws, s=S, d=D, k=K)
            self.emu.launch("causal_conv1d_reduce_f32", q, *reduce_launch(D, K), order, seed + 1)
            return m.get(dx), m.get(dw), m.get(db)


# ---- f64 reference (a port of the CPU twin in src/ops/causal_conv1d.rs: pre, silu, dsilu, the
# backward loop)
def tap(t, j, K, reverse):
    return t + (K - 1) - j if reverse else t - (K - 1) + j


def pre(x, w, bias, reverse):
    S, D, L = x.shape
    K = w.shape[1]
    out = np.zeros((S, D, L)) + (0.0 if bias is None else bias.astype(np.float64)[None, :, None])
    for t in range(L):
        for j in range(K):
            p = tap(t, j, K, reverse)
            if 0 <= p < L:
                out[:, :, t] += w[None, :, j] * x[:, :, p]
    return out


def ref_forward(x, w, bias, silu, reverse):
    v = pre(x.astype(np.float64), w.astype(np.float64), bias, reverse)
    return v / (1 + np.exp(-v)) if silu else v


def ref_backward(x, w, bias, dout, silu, reverse):
    x, w, g = x.astype(np.float64), w.astype(np.float64), dout.astype(np.float64)
    S, D, L = x.shape
    K = w.shape[1]
    if silu:
        v = pre(x, w, bias, reverse)
        sg = 1 / (1 + np.exp(-v))
        g = g * sg * (1 + v * (1 - sg))
    gx, gw = np.zeros((S, D, L)), np.zeros((D, K))
    for t in range(L):
        for j in range(K):
            p = tap(t, j, K, reverse)
            if 0 <= p < L:
                gw[:, j] += (g[:, :, t] * x[:, :, p]).sum(0)
                gx[:, :, p] += g[:, :, t] * w[None, :, j]
    return gx, gw, (g.sum((0, 2)) if bias is not None else None)


def cases(asan):
    """(S, D, L, K, silu, reverse, with bias): every K, silu, reverse and L; S cycles 1..3, D odd."""
    Ls = [1, 7, 33, 300]
    i = 0
    for K in range(1, MAX_K + 1):
        for silu in (False, True):
            for reverse in (False, True):
                for L in Ls:
                    i += 1
                    S = 1 + i % 3
                    D = [5, 3, 7, 1][i % 4] if L == 300 else [13, 9, 17, 5][i % 4]
                    yield S, D, L, K, silu, reverse, i % 2 == 0


def inputs(rng, S, D, L, K, bias):
    x = (rng.standard_normal((S, D, L)) * 1.5).astype(np.float32)
    w = (rng.standard_normal((D, K)) / np.sqrt(K)).astype(np.float32)
    b = (rng.standard_normal(D) * 0.5).astype(np.float32) if bias else None
    dout = rng.standard_normal((S, D, L)).astype(np.float32)
    return x, w, b, dout


def part_accuracy(K_, ck, rng, asan=False):
    for K in range(1, MAX_K + 1):
        bad, nondet, n = [], [], 0
        for S, D, L, k, silu, rev, bias in cases(asan):
            if k != K:
                continue
            n += 1
            x, w, b, dout = inputs(rng, S, D, L, K, bias)
            tag = f"S={S} D={D} L={L} silu={int(silu)} rev={int(rev)} bias={int(bias)}"
            orders = ORDERS[:1] if asan else ORDERS
            fw = [K_.forward(x, w, b, silu, rev, o, s) for o, s in orders]
            bw = [K_.backward(x, w, b, dout, silu, rev, o, s) for o, s in orders]
            e = rel_err(fw[0], ref_forward(x, w, b, silu, rev))
            if e > TOL:
                bad.append(f"{tag} out {e:.1e}")
            for name, got, want in zip(("dx", "dw", "dbias"), bw[0], ref_backward(x, w, b, dout, silu, rev)):
                if (got is None) != (want is None):
                    bad.append(f"{tag} {name} presence")
                elif got is not None and rel_err(got, want) > TOL:
                    bad.append(f"{tag} {name} {rel_err(got, want):.1e}")
            if not all(bits_equal([fw[0]], [f]) for f in fw[1:]) or not all(bits_equal(list(bw[0]), list(g)) for g in bw[1:]):
                nondet.append(tag)
        what = "ASan: no report, out/dx/dw/dbias vs f64" if asan else \
            "out, dx, dw, dbias vs f64; bitwise equal in 3 orders"
        ck.check(f"causal_conv1d K={K} ({n} cases: silu, reverse, bias on/off, L=1/7/33/300, S=1..3): {what}",
                 not bad and not nondet, "; ".join(bad[:8] + [f"order-dependent: {nondet[:4]}"] * bool(nondet)))


def part_misc(K_, ck, rng):
    # Reverse is the causal conv of the time-flipped sequence, flipped back.
    S, D, L, K = 2, 7, 33, 4
    x, w, b, dout = inputs(rng, S, D, L, K, True)
    for silu in (False, True):
        a = K_.forward(x, w, b, silu, True)
        c = K_.forward(x[..., ::-1].copy(), w, b, silu, False)[..., ::-1]
        ck.check(f"causal_conv1d reverse == flip(causal(flip(x))) bitwise (silu={int(silu)})", bits_equal([a], [c.copy()]))
    # Grid-stride loop of the forward: one block gives the same bits as the launcher's grid.
    x, w, b, dout = inputs(rng, 3, 5, 300, 3, True)
    a, c = K_.forward(x, w, b, True, False), K_.forward(x, w, b, True, False, grid=1)
    ck.check(f"causal_conv1d forward: grid 1 (grid-stride loop) bitwise equal to the launcher's grid {fwd_launch(3, 5, 300)[0]}",
             bits_equal([a], [c]))
    # The reference's backward is the derivative of its forward (central differences, f64).
    worst = 0.0
    for silu in (False, True):
        for rev in (False, True):
            x, w, b, dout = (v.astype(np.float64) for v in inputs(rng, 2, 3, 6, 3, True))
            gx, gw, gb = ref_backward(x, w, b, dout, silu, rev)
            for arr, g in ((x, gx), (w, gw), (b, gb)):
                E, h = rng.standard_normal(arr.shape), 1e-6
                arr += h * E
                fp = (ref_forward(x, w, b, silu, rev) * dout).sum()
                arr -= 2 * h * E
                fm = (ref_forward(x, w, b, silu, rev) * dout).sum()
                arr += h * E
                fd = (fp - fm) / (2 * h)
                worst = max(worst, abs(fd - (g * E).sum()) / max(abs(fd), 1e-6))
    ck.check("causal_conv1d f64 reference backward vs central differences (x, w, bias; silu, reverse)", worst < 1e-6, f"{worst:.1e}")


def part_asan(K_, ck, rng):
    part_accuracy(K_, ck, rng, asan=True)


if __name__ == "__main__":
    run_main("causal_conv1d", __doc__, Kernels, {"accuracy": part_accuracy, "misc": part_misc}, {"bounds": part_asan},
             seed=20240611)
