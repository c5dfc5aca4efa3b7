"""Emulator driver for kernels/local_attn.cu: local_attn_fwd_{f32,bf16}, local_attn_bwd_dq_{f32,bf16},
local_attn_bwd_dkdv_{f32,bf16} (2D neighbourhood attention, ZeroPad and Shift borders, the
[B, heads, H, W, d] and [B, C, H, W] layouts), against a numpy f64 reference that gathers each
query's window and scatters the key gradients (for bf16: on the bf16-rounded inputs)."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, bits_equal, rel_err, run_main  # noqa: E402
from drivers_common import Bufs, bf16_value  # noqa: E402

F32, U32, U64 = C.c_float, C.c_uint32, C.c_uint64
f32 = np.float32
OUTS = ("out", "lse", "dq", "dk", "dv", "delta")
TOL = 1e-5       # f32 entries: max |got - want| / max |want| per tensor (observed worst ~1e-6)
BF16_TOL = 1e-2  # bf16 entries: bf16-stored tensors and delta (D from the bf16 O); lse stays at TOL
GUARD_BYTES = 256  # normal build: sentinel bytes before and after every buffer (keeps 256-byte alignment)


# Not drivers_common.bf16_bits (nor bf16_round): a NaN is rounded like other bits, not made 0x7fff.
def bf16_bits(x):
    """f32 -> bf16 bits, round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_round(x):
    return bf16_value(bf16_bits(x))


# Mirror of kernels/local_attn.h (size checked against the C struct).
class AttnParams(C.Structure):
    _fields_ = [(k, P) for k in ("q", "k", "v", "out", "lse", "o", "dout", "dq", "dk", "dv", "delta")] + \
        [(k, U64) for k in ("sb", "sh", "sy", "sx", "sc")] + \
        [(k, U32) for k in ("b", "heads", "h", "w", "d", "ksize", "zero_pad", "tq")] + [("scale", F32), ("reserved", U32)]


# ---- Launch shape and parameters. These mirror src/ops/local_attn.rs and must be kept in sync with
# it: strides() for Layout::Bhwd [B, heads, H, W, d] and Layout::Bchw [B, C = heads d, H, W]
# (channel head d + c), threads_per_pixel (next_pow2(ceil(d / 4)) capped at 32), scale_of (1/sqrt(d)
# in f32 unless given), launch() (128-thread blocks, grid ceil(B heads H W tq / 128), no shared
# memory), and the backward's order: bwd_dq (writes dq and delta = D, f32 [B, heads, H, W], the
# workspace) then bwd_dkdv (reads delta), both reading the forward's out (as o) and lse.
BLOCK = 128


def strides(B, Hd, H, W, d, layout):
    if layout == "bhwd":
        return [Hd * H * W * d, H * W * d, W * d, d, 1]
    return [Hd * d * H * W, d * H * W, W, 1, H * W]


def threads_per_pixel(d):
    return min(1 << (-(-d // 4) - 1).bit_length(), 32)


def scale_of(d, scale):
    return f32(scale) if scale is not None else f32(1.0) / np.sqrt(f32(d))


def launch_shape(B, Hd, H, W, d):
    return -(-(B * Hd * H * W * threads_per_pixel(d)) // BLOCK), BLOCK, 0


def to_mem(x, layout):
    """logical [B, heads, H, W, d] -> the layout's array ([B, heads, H, W, d] or [B, heads d, H, W])."""
    if layout == "bhwd":
        return np.ascontiguousarray(x)
    B, Hd, H, W, d = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(B, Hd * d, H, W))


def from_mem(a, layout, shape):
    B, Hd, H, W, d = shape
    if layout == "bhwd":
        return a.reshape(shape)
    return a.reshape(B, Hd, d, H, W).transpose(0, 1, 3, 4, 2)


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for t in ("f32", "bf16"):
            for w in ("fwd", "bwd_dq", "bwd_dkdv"):
                emu.check_struct(f"local_attn_{w}_{t}", AttnParams)

    def run(self, case, q, k, v, dout, order=0, seed=0, guard=0):
        """q, k, v, dout: logical [B, heads, H, W, d] f32 (for bf16: already bf16-representable).
        Runs the forward, then the backward on the forward's out and lse, as the Rust side does;
        every output NaN-poisoned first. -> ({name: logical f32 array}, [names whose guards changed])"""
        B, Hd, H, W, d = q.shape
        lay, bf16 = case["layout"], case["bf16"]
        t = "bf16" if bf16 else "f32"
        dt = np.uint16 if bf16 else np.float32
        with Mem(self.emu) as mem:
            bufs = Bufs(mem, guard)

            def put(x):
                x = to_mem(x, lay)
                return bufs.put(bf16_bits(x) if bf16 else x, dt)

            def new_t():
                return bufs.put(np.zeros(q.size), dt, poison=True)

            pq, pk, pv, pdo = put(q), put(k), put(v), put(dout)
            out, dq, dk, dv = new_t(), new_t(), new_t(), new_t()
            lse, delta = (bufs.put(np.zeros(B * Hd * H * W), np.float32, poison=True) for _ in range(2))
            sb, sh, sy, sx, sc = strides(B, Hd, H, W, d, lay)
            common = dict(sb=sb, sh=sh, sy=sy, sx=sx, sc=sc, b=B, heads=Hd, h=H, w=W, d=d, ksize=case["K"],
                          zero_pad=int(case["border"] == "zeropad"), tq=threads_per_pixel(d),
                          scale=scale_of(d, case.get("scale")), reserved=0)
            shape = launch_shape(B, Hd, H, W, d)
            fwd = AttnParams(q=pq, k=pk, v=pv, out=out, lse=lse, **common)
            self.emu.launch(f"local_attn_fwd_{t}", fwd, *shape, order, seed)
            bwd = AttnParams(q=pq, k=pk, v=pv, lse=lse, o=out, dout=pdo, dq=dq, dk=dk, dv=dv, delta=delta, **common)
            self.emu.launch(f"local_attn_bwd_dq_{t}", bwd, *shape, order, seed + 1)
            self.emu.launch(f"local_attn_bwd_dkdv_{t}", bwd, *shape, order, seed + 2)
            res, bad_guard = {}, []
            for name, p in zip(OUTS, (out, lse, dq, dk, dv, delta)):
                a, ok = bufs.get(p)
                if not ok:
                    bad_guard.append(name)
                if name in ("lse", "delta"):
                    res[name] = a.reshape(B, Hd, H, W)
                else:
                    res[name] = from_mem(bf16_value(a) if bf16 else a, lay, q.shape)
            for name, p in (("q", pq), ("k", pk), ("v", pv), ("dout", pdo)):
                if not bufs.get(p)[1]:
                    bad_guard.append(name)
            return res, bad_guard


# ---- f64 reference. Gathers each query's K x K window (out-of-map keys of ZeroPad as zero
# vectors: logit exactly 0, value 0), a plain softmax, and the backward P = softmax, D = dO . O,
# dS = P (dP - D), dq = scale sum_j dS_j k_j; dk and dv are scattered (np.add.at) from every query
# onto the in-map keys of its window, not gathered over inverse neighbourhoods as the kernel does.
def windows(n, K, zero_pad):
    """-> (clipped index, in-map) [n, K] of the window of every position along a dimension of size n."""
    i = np.arange(n)
    start = i - K // 2 if zero_pad else np.clip(i - K // 2, 0, n - K)
    idx = start[:, None] + np.arange(K)[None, :]
    return np.clip(idx, 0, n - 1), (idx >= 0) & (idx < n)


def reference(q, k, v, dout, K, zero_pad, scale):
    q, k, v, dout = (np.asarray(x, np.float64) for x in (q, k, v, dout))
    B, Hd, H, W, d = q.shape
    yi, yv = windows(H, K, zero_pad)
    xi, xv = windows(W, K, zero_pad)
    Y = np.broadcast_to(yi[:, None, :, None], (H, W, K, K)).reshape(H, W, K * K)
    X = np.broadcast_to(xi[None, :, None, :], (H, W, K, K)).reshape(H, W, K * K)
    valid = (yv[:, None, :, None] & xv[None, :, None, :]).reshape(H, W, K * K)
    kw = k[:, :, Y, X, :] * valid[..., None]  # [B, heads, H, W, K*K, d]
    vw = v[:, :, Y, X, :] * valid[..., None]
    s = scale * np.einsum("bnyxc,bnyxjc->bnyxj", q, kw)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - m)
    z = e.sum(-1, keepdims=True)
    p = e / z
    lse = (m + np.log(z))[..., 0]
    out = np.einsum("bnyxj,bnyxjc->bnyxc", p, vw)
    dp = np.einsum("bnyxc,bnyxjc->bnyxj", dout, vw)
    D = (dout * out).sum(-1)
    ds = p * (dp - D[..., None]) * valid
    dq = scale * np.einsum("bnyxj,bnyxjc->bnyxc", ds, kw)
    dk, dv = np.zeros_like(k), np.zeros_like(v)
    cy, cx = Y[valid], X[valid]  # key positions of every (query, in-map key) pair
    np.add.at(dk, (slice(None), slice(None), cy, cx), (scale * ds[..., None] * q[:, :, :, :, None, :])[:, :, valid])
    np.add.at(dv, (slice(None), slice(None), cy, cx), (p[..., None] * dout[:, :, :, :, None, :])[:, :, valid])
    return dict(out=out, lse=lse, dq=dq, dk=dk, dv=dv, delta=D)


def loop_forward(q, k, v, K, zero_pad, scale):
    """The forward pixel by pixel from the header's definition (slow; tiny shapes only)."""
    B, Hd, H, W, d = q.shape
    r = K // 2
    out, lse = np.zeros(q.shape), np.zeros(q.shape[:4])
    for b in range(B):
        for n in range(Hd):
            for y in range(H):
                for x in range(W):
                    y0 = y - r if zero_pad else min(max(y - r, 0), H - K)
                    x0 = x - r if zero_pad else min(max(x - r, 0), W - K)
                    logits, vals = [], []
                    for yy in range(y0, y0 + K):
                        for xx in range(x0, x0 + K):
                            if 0 <= yy < H and 0 <= xx < W:
                                logits.append(scale * float(np.dot(q[b, n, y, x], k[b, n, yy, xx])))
                                vals.append(v[b, n, yy, xx])
                            else:
                                assert zero_pad
                                logits.append(0.0)
                                vals.append(np.zeros(d))
                    lg = np.array(logits)
                    w = np.exp(lg - lg.max())
                    out[b, n, y, x] = (w[:, None] * np.array(vals)).sum(0) / w.sum()
                    lse[b, n, y, x] = lg.max() + np.log(w.sum())
    return out, lse


# ---- Cases: (B, heads, H, W, d, K, border, layout[, scale][, qmul]). Maps smaller than, equal to and
# larger than K (odd and even sizes), K = 3..13, d from 3 (tq 1) to 128 (tq 32), non-power-of-two d
# (5: tq 2, 24: tq 8 with 3 channels per lane), both layouts, B heads H W tq a multiple of 128 and
# not (tail lanes mirroring the last pixel); qmul scales q for peaky softmaxes (logits ~ +-15).
def mk(B, Hd, H, W, d, K, border, layout, scale=None, qmul=1.0, bf16=False):
    return dict(shape=(B, Hd, H, W, d), K=K, border=border, layout=layout, scale=scale, qmul=qmul, bf16=bf16)


CASES = [
    mk(1, 2, 7, 9, 16, 3, "zeropad", "bhwd"),
    mk(1, 1, 7, 9, 16, 5, "shift", "bchw"),
    mk(2, 1, 2, 3, 8, 5, "zeropad", "bhwd"),        # map smaller than K
    mk(1, 2, 3, 2, 24, 7, "zeropad", "bchw"),       # smaller than K, d = 24
    mk(1, 1, 1, 1, 8, 3, "zeropad", "bhwd"),        # one pixel: 8 padded keys
    mk(1, 2, 5, 5, 24, 5, "shift", "bhwd"),         # map equal to K
    mk(1, 1, 5, 5, 24, 5, "zeropad", "bchw"),
    mk(1, 1, 5, 11, 24, 5, "zeropad", "bchw"),
    mk(1, 1, 5, 11, 8, 5, "shift", "bhwd"),
    mk(1, 1, 7, 7, 64, 7, "shift", "bhwd"),         # tq 16, map equal to K
    mk(1, 1, 8, 9, 64, 3, "zeropad", "bchw"),
    mk(1, 1, 9, 8, 8, 7, "shift", "bchw", qmul=4.0),
    mk(1, 1, 9, 10, 8, 7, "zeropad", "bhwd", qmul=4.0),
    mk(1, 2, 8, 8, 8, 3, "shift", "bhwd", scale=0.7),  # 256 threads: no tail
    mk(2, 1, 6, 7, 3, 3, "zeropad", "bchw"),        # tq 1: no shuffles
    mk(1, 3, 6, 6, 5, 5, "shift", "bchw"),          # tq 2, 3 + 2 channels per lane
    mk(1, 1, 3, 4, 128, 3, "zeropad", "bhwd"),      # tq 32: a warp per pixel
    mk(1, 1, 13, 14, 8, 13, "shift", "bhwd"),       # K = 13
    # Shift with K + K/2 < n <= 2K - 1: a key's inverse neighbourhood spans up to n (<= 2K - 1) rows
    # or columns (key K - 1 lies in every window of a map of 2K - 1), longer than K + K/2.
    mk(1, 1, 5, 5, 8, 3, "shift", "bhwd"),
    mk(1, 1, 12, 7, 8, 7, "shift", "bchw"),
    mk(1, 1, 4, 15, 8, 13, "zeropad", "bchw"),
]

BF16_CASES = [
    mk(1, 2, 7, 9, 16, 5, "zeropad", "bhwd", bf16=True),
    mk(1, 1, 6, 7, 24, 5, "shift", "bchw", bf16=True),
    mk(1, 1, 2, 3, 8, 5, "zeropad", "bchw", bf16=True),
    mk(1, 1, 7, 7, 64, 3, "shift", "bhwd", bf16=True),
    mk(1, 1, 8, 6, 16, 5, "shift", "bhwd", bf16=True),
    mk(2, 1, 5, 6, 5, 3, "zeropad", "bhwd", bf16=True),
]


def case_name(c):
    B, Hd, H, W, d = c["shape"]
    threads = B * Hd * H * W * threads_per_pixel(d)
    extra = (f", scale {c['scale']}" if c["scale"] is not None else "") + (f", q x{c['qmul']:g}" if c["qmul"] != 1 else "")
    return (f"B={B} heads={Hd} {H}x{W} d={d} K={c['K']} {c['border']} {c['layout']} (tq {threads_per_pixel(d)}, "
            f"{launch_shape(B, Hd, H, W, d)[0]} blocks, {'tail ' + str(-threads % BLOCK) if threads % BLOCK else 'no tail'}{extra})")


def inputs(rng, c):
    shp = c["shape"]
    q, k, v, dout = (rng.standard_normal(shp).astype(f32) for _ in range(4))
    q = (q * f32(c["qmul"])).astype(f32)
    if c["bf16"]:
        q, k, v, dout = (bf16_round(x) for x in (q, k, v, dout))
    return q, k, v, dout


def compare(res, want, bf16):
    bad = []
    for name in OUTS:
        tol = BF16_TOL if bf16 and name != "lse" else TOL
        got = res[name]
        if not np.isfinite(got).all():
            bad.append(f"{name}: {int((~np.isfinite(got)).sum())} non-finite (unwritten) elements")
            continue
        e = rel_err(got, want[name])
        if not e < tol:
            i = np.unravel_index(np.abs(got - want[name]).argmax(), got.shape)
            wrong = np.abs(got - want[name]) > tol * np.abs(want[name]).max()
            px = sorted({tuple(int(t) for t in j[2:4]) for j in np.argwhere(wrong)})  # (y, x) of the wrong elements
            bad.append(f"{name}: rel {e:.1e} > {tol:g} (worst at {tuple(int(j) for j in i)}: got {float(got[i]):.6g}, "
                       f"want {float(want[name][i]):.6g}; {int(wrong.sum())} elements wrong, at (y, x) "
                       f"{px[:12]}{' ...' if len(px) > 12 else ''})")
    return bad


def worst_errs(res, want):
    return " ".join(f"{n} {rel_err(res[n], want[n]):.0e}" for n in OUTS)


def run_cases(K, ck, rng, cases, asan):
    for c in cases:
        q, k, v, dout = inputs(rng, c)
        d = c["shape"][4]
        want = reference(q, k, v, dout, c["K"], c["border"] == "zeropad", float(scale_of(d, c["scale"])))
        orders = ORDERS[:1] if asan else ORDERS
        runs = [K.run(c, q, k, v, dout, o, s, guard=0 if asan else GUARD_BYTES) for o, s in orders]
        res, guards = runs[0]
        bad = compare(res, want, c["bf16"])
        if guards:
            bad.append(f"bytes written before / after the buffers of {guards}")
        if not all(bits_equal([res[n] for n in OUTS], [r[0][n] for n in OUTS]) for r in runs[1:]):
            bad.append("order-dependent: " + ", ".join(n for n in OUTS if any(not bits_equal([res[n]], [r[0][n]]) for r in runs[1:])))
        tol = f"rel {BF16_TOL:g} (lse {TOL:g})" if c["bf16"] else f"rel {TOL:g}"
        what = "ASan: no report, out/lse/dq/dk/dv/delta vs f64" if asan else \
            f"out/lse/dq/dk/dv/delta vs f64 {tol}, outputs NaN-poisoned, guards intact, bitwise equal in 3 orders"
        ck.check(f"local_attn{' bf16' if c['bf16'] else ''} {case_name(c)}: {what}", not bad,
                 "; ".join(bad) if bad else f"[{worst_errs(res, want)}]")


def part_f32(K, ck, rng, asan=False):
    run_cases(K, ck, rng, CASES, asan)


def part_bf16(K, ck, rng, asan=False):
    run_cases(K, ck, rng, BF16_CASES, asan)


def part_reference(K, ck, rng):
    # The gather/scatter reference against a pixel loop of the header's definition (forward).
    worst = 0.0
    for (shp, KK, zp) in [((1, 2, 4, 5, 3), 3, True), ((1, 1, 2, 3, 4), 5, True), ((1, 1, 6, 5, 3), 5, False), ((2, 1, 5, 7, 2), 3, False)]:
        q, k, v = (rng.standard_normal(shp) for _ in range(3))
        want = reference(q, k, v, q, KK, zp, 0.6)
        o, l = loop_forward(q, k, v, KK, zp, 0.6)
        worst = max(worst, rel_err(want["out"], o), rel_err(want["lse"], l))
    ck.check("local_attn f64 reference forward vs a pixel loop of the definition (ZeroPad incl. maps smaller than K, Shift)",
             worst < 1e-12, f"{worst:.1e}")
    # Shift: every window holds K^2 in-map keys; ZeroPad: centred.
    _, v5 = windows(7, 5, False)
    i5, _ = windows(7, 5, True)
    ck.check("local_attn reference windows: Shift keeps K in-map keys per row, ZeroPad is centred",
             v5.all() and (i5[3] == np.arange(1, 6)).all() and (windows(7, 5, False)[0][0] == np.arange(5)).all())
    # The reference's backward is the derivative of its forward (central differences, f64).
    worst = 0.0
    for (shp, KK, zp) in [((1, 2, 3, 4, 3), 3, True), ((1, 1, 5, 6, 2), 5, False), ((1, 1, 2, 2, 3), 5, True)]:
        x = {n: rng.standard_normal(shp) for n in ("q", "k", "v")}
        dout = rng.standard_normal(shp)
        g = reference(x["q"], x["k"], x["v"], dout, KK, zp, 0.8)
        for n, gn in (("q", "dq"), ("k", "dk"), ("v", "dv")):
            E, h = rng.standard_normal(shp), 1e-6
            x[n] += h * E
            fp = (reference(x["q"], x["k"], x["v"], dout, KK, zp, 0.8)["out"] * dout).sum()
            x[n] -= 2 * h * E
            fm = (reference(x["q"], x["k"], x["v"], dout, KK, zp, 0.8)["out"] * dout).sum()
            x[n] += h * E
            fd = (fp - fm) / (2 * h)
            worst = max(worst, abs(fd - (g[gn] * E).sum()) / max(abs(fd), 1e-6))
    ck.check("local_attn f64 reference backward (dq, dk, dv) vs central differences (ZeroPad, Shift)", worst < 1e-6, f"{worst:.1e}")


def part_asan(K, ck, rng):
    part_f32(K, ck, rng, asan=True)
    part_bf16(K, ck, rng, asan=True)


if __name__ == "__main__":
    run_main("local_attn", __doc__, Kernels, {"f32": part_f32, "bf16": part_bf16, "reference": part_reference},
             {"bounds": part_asan}, seed=20240715)
