"""Emulator driver for kernels/cosine_sim.cu: cosine_sim_{fwd,bwd}_{f32,bf16} (blocks of 256 threads take
(b, `tile` consecutive t) per pass, grid-stride; x staged and normalised in padded dynamic shared memory;
one thread per (pair, t) output, one per dx element), launched as src/ops/cosine_sim.rs launches them
(tile = min(8, T, 48 KiB / bytes per t), the matching dynamic shared memory, grid min(passes, 65536)),
BITWISE against a numpy float32 port of the kernels' arithmetic (fmaf chains over d and over j, IEEE
division and sqrt) and close to numpy f64 (the definition in src/ops/cosine_sim.rs)."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, rel_err, run_main  # noqa: E402
from drivers_common import F32_POISON, Bufs, bf16_bits, bf16_round, bf16_value, first_diff, fma_f32, same  # noqa: E402

U64, U32, F32 = C.c_uint64, C.c_uint32, C.c_float
f32 = np.float32
GUARD_BYTES = 256
BLOCK = 256
MAX_BLOCKS = 1 << 16
MAX_TILE = 8
SMEM_BUDGET = 48 * 1024
EPS = f32(1e-8)


class CsParams(C.Structure):  # kernels/cosine_sim.h (72 bytes)
    _fields_ = [("x", P), ("y", P), ("dy", P), ("dx", P), ("batch", U64), ("t", U64), ("n", U32), ("d", U32),
                ("tile", U32), ("clamp", F32), ("eps", F32), ("pad_", U32)]


assert C.sizeof(CsParams) == 72 and CsParams.batch.offset == 32 and CsParams.n.offset == 48 and CsParams.eps.offset == 64


def pairs_of(n):
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def floats_per_t(n, d, bwd):
    np_ = n * (n - 1) // 2
    return n * (d + 1) + (2 * np_ + 2 * n if bwd else 0)


def launch_shape(b, n, t, d, bwd, tile=None):
    """src/ops/cosine_sim.rs: (tile, shared bytes, grid)."""
    per_t = 4 * floats_per_t(n, d, bwd)
    if tile is None:
        tile = min(max(min(SMEM_BUDGET // per_t, MAX_TILE), 1), t)
    return tile, tile * per_t, min(b * -(-t // tile), MAX_BLOCKS)


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for k in ("fwd", "bwd"):
            for t in ("f32", "bf16"):
                emu.check_struct(f"cosine_sim_{k}_{t}", CsParams)

    def run(self, bf16, x, dy, clamp, eps=EPS, order=0, seed=0, guard=0, grid=None, tile=None):
        """x (B, N, T, D), dy (B, P, T): f32 values (bf16-representable for bf16). Outputs poisoned; the
        forward, then the backward. -> (y, dx as f32 values, [problems])"""
        b, n, t, d = x.shape
        np_ = n * (n - 1) // 2
        dt = np.uint16 if bf16 else np.float32
        st = (lambda a: bf16_bits(a)) if bf16 else (lambda a: np.ascontiguousarray(a, f32))
        tp = "bf16" if bf16 else "f32"
        tfill = (lambda m: np.full(m, 0x7FA5, np.uint16)) if bf16 else (lambda m: np.full(m, F32_POISON, f32))
        c = f32(np.inf) if clamp is None else f32(clamp)
        with Mem(self.emu) as mem:
            bb = Bufs(mem, guard)
            px, pdy = bb.put(st(x), dt), bb.put(st(dy), dt)
            py, pdx = bb.put(tfill(b * np_ * t), dt), bb.put(tfill(x.size), dt)
            tl, smem, gr = launch_shape(b, n, t, d, False, tile)
            prm = CsParams(x=px, y=py, batch=b, t=t, n=n, d=d, tile=tl, clamp=c, eps=eps)
            self.emu.launch(f"cosine_sim_fwd_{tp}", prm, gr if grid is None else grid, BLOCK, smem, order, seed)
            tl, smem, gr = launch_shape(b, n, t, d, True, tile)
            prm = CsParams(x=px, dy=pdy, dx=pdx, batch=b, t=t, n=n, d=d, tile=tl, clamp=c, eps=eps)
            self.emu.launch(f"cosine_sim_bwd_{tp}", prm, gr if grid is None else grid, BLOCK, smem, order, seed + 1)
            bad, out = [], []
            for name, p in (("y", py), ("dx", pdx)):
                a, ok = bb.get(p)
                if not ok:
                    bad.append(f"bytes written before / after {name}")
                out.append(bf16_value(a) if bf16 else a)
            for name, p, a in (("x", px, x), ("dy", pdy, dy)):
                got, ok = bb.get(p)
                if not ok or got.tobytes() != st(a).ravel().tobytes():
                    bad.append(f"{name} changed or its guards written")
            return out[0].reshape(b, np_, t), out[1].reshape(x.shape), bad


def port(bf16, x, dy, clamp, eps=EPS):
    """The kernels' float32 arithmetic in the kernels' order."""
    b, n, t, d = x.shape
    rnd = bf16_round if bf16 else (lambda a: a)
    c_ = f32(np.inf) if clamp is None else f32(clamp)
    with np.errstate(all="ignore"):
        # The kernel's scaled norm: a = max |x_d| (NaN ignored, as fmaxf), r = a * sqrt(sum (x_d / a)^2).
        a = np.zeros((b, n, t), f32)
        for k in range(d):
            a = np.fmax(a, np.abs(x[..., k])).astype(f32)
        ss = np.zeros((b, n, t), f32)
        for k in range(d):
            v = np.where(a > 0, x[..., k] / np.where(a > 0, a, f32(1)), f32(0)).astype(f32)
            ss = fma_f32(v, v, ss)
        r = (a * np.sqrt(ss)).astype(f32)
        m = np.where(r < eps, eps, r).astype(f32)
        flag = r >= eps
        u = (x / m[..., None]).astype(f32)
        pr = pairs_of(n)
        ii, jj = np.array([p[0] for p in pr]), np.array([p[1] for p in pr])
        ui, uj = u[:, ii], u[:, jj]  # (B, P, T, D)
        c = np.zeros(ui.shape[:3], f32)
        for k in range(d):
            c = fma_f32(ui[..., k], uj[..., k], c)
        y = np.where(c > c_, c_, np.where(c < -c_, -c_, c)).astype(f32)
        g = np.where((c >= -c_) & (c <= c_), dy, f32(0)).astype(f32)
        gc = (g * c).astype(f32)
        pidx = {p: q for q, p in enumerate(pr)}
        dx = np.zeros_like(x)
        for i in range(n):
            js = [j for j in range(n) if j != i]
            ps = [pidx[(min(i, j), max(i, j))] for j in js]
            s = np.zeros((b, t), f32)
            for p in ps:
                s = (s + gc[:, p]).astype(f32)
            s = np.where(flag[:, i], s, f32(0)).astype(f32)
            acc = np.zeros((b, t, d), f32)
            for j, p in zip(js, ps):
                acc = fma_f32(np.broadcast_to(g[:, p, :, None], acc.shape), u[:, j], acc)
            dx[:, i] = (fma_f32(np.broadcast_to(-s[..., None], acc.shape), u[:, i], acc) / m[:, i, :, None]).astype(f32)
        return rnd(y), rnd(dx)


def reference(x, dy, clamp, eps=EPS):
    """The definition in f64."""
    x6, dy6 = x.astype(np.float64), dy.astype(np.float64)
    b, n, t, d = x.shape
    c_ = np.inf if clamp is None else float(f32(clamp))
    e = float(eps)
    r = np.sqrt((x6 ** 2).sum(-1))
    m = np.where(r < e, e, r)
    k = r >= e
    u = x6 / m[..., None]
    pr = pairs_of(n)
    c = np.stack([(u[:, i] * u[:, j]).sum(-1) for i, j in pr], 1)
    y = np.clip(c, -c_, c_)
    g = np.where((c >= -c_) & (c <= c_), dy6, 0.0)
    dx = np.zeros_like(x6)
    for q, (i, j) in enumerate(pr):
        for a, o in ((i, j), (j, i)):
            dx[:, a] += g[:, q, :, None] * (u[:, o] - np.where(k[:, a], c[:, q], 0.0)[..., None] * u[:, a]) / m[:, a, :, None]
    return y, dx


def check_case(K, ck, bf16, x, dy, clamp, label, asan=False, grids=(), tiles=(), f64=True):
    guard = 0 if asan else GUARD_BYTES
    todo = [(o, s, None, None) for o, s in (ORDERS[:1] if asan else ORDERS)]
    if not asan:
        todo += [(0, 0, g, None) for g in grids] + [(0, 0, None, tl) for tl in tiles]
    runs, bad = [], []
    for o, s, g, tl in todo:
        *out, b = K.run(bf16, x, dy, clamp, order=o, seed=s, guard=guard, grid=g, tile=tl)
        runs.append(out)
        bad += [v for v in b if v not in bad]
    want = port(bf16, x, dy, clamp)
    for nm, got, w in zip(("y", "dx"), runs[0], want):
        if not same(got, w):
            bad.append(f"{nm} vs the float32 port: " + first_diff(got, w))
    for j, r in enumerate(runs[1:], 1):
        if any(a.tobytes() != b.tobytes() for a, b in zip(r, runs[0])):
            bad.append(f"run {j} (order / grid / tile) differs bitwise")
    detail = ""
    if f64:
        ry, rdx = reference(x, dy, clamp)
        lim = 2.0 ** -7 if bf16 else 2e-6 * np.sqrt(x.shape[1] * x.shape[3])
        ey, edx = rel_err(runs[0][0], ry), rel_err(runs[0][1], rdx)
        if ey > lim or edx > lim:
            bad.append(f"vs f64: max error / max |ref| y {ey:.3g}, dx {edx:.3g} > {lim:.3g}")
        detail = f"[vs f64: y {ey:.2g}, dx {edx:.2g}]"
    t = "bf16" if bf16 else "f32"
    what = ("ASan: no report, " if asan else "") + "y, dx bitwise equal to the float32 port" + \
        (" and close to f64" if f64 else "") + \
        ("" if asan else ", guards and inputs intact, bitwise equal in 3 orders" +
         (f", grids {list(grids)}" if grids else "") + (f", tiles {list(tiles)}" if tiles else ""))
    ck.check(f"cosine_sim_{t} {label}: {what}", not bad, "; ".join(bad) if bad else detail)


def inputs(rng, shape, bf16, parallel=True):
    """x ~ N(0, 1) with node 1 nearly parallel to node 0 (cos ~ 0.9999, beyond a 0.99 clamp) and, for
    N > 2, the last node of batch 0 zero (norm below eps); dy ~ N(0, 1)."""
    b, n, t, d = shape
    x = rng.standard_normal(shape).astype(f32)
    if parallel:
        x[:, 1] = (2 * x[:, 0] + 1e-3 * x[:, 1]).astype(f32)
    if n > 2:
        x[0, n - 1] = 0
    dy = rng.standard_normal((b, n * (n - 1) // 2, t)).astype(f32)
    if bf16:
        x, dy = bf16_round(x), bf16_round(dy)
    return x, dy


SHAPES = [((1, 2, 1, 1), None), ((2, 3, 5, 4), 0.99), ((1, 19, 9, 64), 0.99), ((2, 19, 17, 64), None),
          ((1, 5, 3, 33), 0.5), ((1, 32, 3, 128), 0.99), ((3, 7, 11, 3), None), ((1, 2, 20, 7), 0.3), ((1, 31, 2, 5), None)]


def part_dtype(K, ck, rng, bf16, asan=False):
    for shape, clamp in SHAPES:
        x, dy = inputs(rng, shape, bf16)
        b, n, t, d = shape
        grids = [] if asan else ([1, 2] if b * t > 2 else [])
        tiles = [] if asan else [tl for tl in (1, 3) if tl < t and tl * 4 * floats_per_t(n, d, True) <= SMEM_BUDGET]
        check_case(K, ck, bf16, x, dy, clamp, f"shape {shape}, clamp {clamp}", asan=asan, grids=grids, tiles=tiles)


def part_f32(K, ck, rng):
    part_dtype(K, ck, rng, False)


def part_bf16(K, ck, rng):
    part_dtype(K, ck, rng, True)


def part_special(K, ck, rng):
    for bf16 in (False, True):
        t = "bf16" if bf16 else "f32"
        # Hand values: x0 = (3, 4), x1 = (4, -3), x2 = (-6, -8), x3 = 0 -> cos (0,1) 0, (0,2) -1, others 0.
        x = np.array([[[[3, 4]], [[4, -3]], [[-6, -8]], [[0, 0]]]], f32)
        dy = np.ones((1, 6, 1), f32)
        y, dx, b = K.run(bf16, x, dy, 0.99)
        yv = y.ravel()
        c99 = float(bf16_round(np.array([-0.99], f32))[0] if bf16 else -f32(0.99))
        ok = not b and yv[1] == c99 and np.all(np.abs(np.delete(yv, 1)) <= 1e-8)
        ck.check(f"cosine_sim_{t} hand pairs: y = [0, -0.99 (clamped), 0, 0, 0, 0] (the orthogonal pairs within "
                 "1e-8: 0.6 and 0.8 are inexact in f32)", ok, f"{yv.tolist()} {b}")
        # A NaN in one node: its pairs NaN (forward), its dx NaN; the other pairs unaffected.
        x, dy = inputs(rng, (1, 4, 3, 5), bf16, parallel=False)
        x[0, 2, 1, 3] = np.nan
        check_case(K, ck, bf16, x, dy, 0.99, "a NaN element (node 2, t 1): checked bitwise vs the port only", f64=False)
        y, dx, _ = K.run(bf16, x, dy, 0.99)
        nanp = [1, 3, 5]  # pairs (0,2), (1,2), (2,3)
        ok = np.all(np.isnan(y[0, nanp, 1])) and np.all(np.isfinite(np.delete(y[0, :, 1], nanp))) and np.all(np.isfinite(y[0, :, [0, 2]]))
        ck.check(f"cosine_sim_{t} NaN element: exactly the pairs of that node and t are NaN", ok)
        # Tiny norms below eps (1e-9 * N(0,1) over d 6): u = x / eps, the derivative through the norm dropped.
        x, dy = inputs(rng, (2, 6, 4, 6), bf16, parallel=False)
        x[:, 2] *= f32(1e-9)
        if bf16:
            x = bf16_round(x)
        check_case(K, ck, bf16, x, dy, None, "node 2 with norms ~2e-9 < eps")
        # Huge and tiny (but above eps) norms: node 1 scaled by 1e30 (Σ x² would overflow f32), node 3
        # by 1e-6 (x² near 1e-12 · N(0,1)²: fine) and node 4 by 2e-7 with d 6 (norm ~5e-7 > eps): the
        # scaled norm keeps the cosines those of f64.
        x, dy = inputs(rng, (1, 5, 3, 6), bf16, parallel=False)
        x[:, 1] *= f32(1e30)
        x[:, 3] *= f32(1e-6)
        x[:, 4] *= f32(2e-7)
        if bf16:
            x = bf16_round(x)
        check_case(K, ck, bf16, x, dy, None, "norms ~1e30 (f32 sum of squares would overflow) and ~1e-6")


def part_asan(K, ck, rng):
    part_dtype(K, ck, rng, False, asan=True)
    part_dtype(K, ck, rng, True, asan=True)


if __name__ == "__main__":
    run_main("cosine_sim", __doc__, Kernels,
             {"f32": part_f32, "bf16": part_bf16, "special": part_special},
             {"bounds": part_asan}, seed=20251124)
