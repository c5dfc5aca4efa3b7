"""Emulator driver for kernels/weight_norm.cu: weight_norm_{fwd,bwd}_{f32,bf16} (one block of 256 threads
per row, grid-stride over rows; thread t sums elements t, t + 256, ... of its row in order with fmaf, then
a fixed 256-wide shared tree; forward: norms[o] = sqrtf(sum v^2), w = v * (g / norm); backward:
dg = (sum dw v) / norm, dv = (g / norm) * fmaf(-(dg / norm), v, dw)), launched as src/ops/weight_norm.rs
launches them (forward, then the backward on the forward's norms), BITWISE against a numpy float32 port
of the kernels' arithmetic and within a rounding-chain bound of numpy f64."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, run_main  # noqa: E402
from drivers_common import (F32_POISON, Bufs, bf16_bits, bf16_round, bf16_value, first_diff,  # noqa: E402
                            fma_f32, same, tree)

U64 = C.c_uint64
f32 = np.float32
U = 2.0 ** -24       # f32 unit roundoff
GUARD_BYTES = 256
ALT_POISON = f32(-7777.0)
BLOCK = 256
MAX_BLOCKS = 1 << 16  # src/ops/weight_norm.rs: grid min(rows, 65536)


class WnParams(C.Structure):  # kernels/weight_norm.h (72 bytes, rows at 56)
    _fields_ = [("v", P), ("g", P), ("w", P), ("norms", P), ("dw", P), ("dv", P), ("dg", P),
                ("rows", U64), ("n", U64)]


assert C.sizeof(WnParams) == 72 and WnParams.rows.offset == 56 and WnParams.n.offset == 64


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for k in ("fwd", "bwd"):
            for t in ("f32", "bf16"):
                emu.check_struct(f"weight_norm_{k}_{t}", WnParams)

    def run(self, bf16, v, g, dw, order=0, seed=0, guard=0, poison=None, grid=None):
        """v, dw: (rows, n) f32 values, g (rows,) (bf16-representable for bf16). Outputs poisoned (NaN or
        `poison`). The launcher's sequence (grid = min(rows, 65536) unless given). -> (w, norms, dv, dg as
        f32 values, [problems])"""
        rows, n = v.shape
        dt = np.uint16 if bf16 else np.float32
        st = (lambda a: bf16_bits(a)) if bf16 else (lambda a: np.ascontiguousarray(a, f32))
        tp = "bf16" if bf16 else "f32"
        fill = F32_POISON if poison is None else f32(poison)
        tfill = (lambda k: np.full(k, bf16_bits(np.array([fill], f32))[0], np.uint16)) if bf16 else (lambda k: np.full(k, fill, f32))
        grid = min(rows, MAX_BLOCKS) if grid is None else grid
        with Mem(self.emu) as mem:
            b = Bufs(mem, guard)
            ins = {"v": (b.put(st(v), dt), st(v)), "g": (b.put(st(g), dt), st(g)), "dw": (b.put(st(dw), dt), st(dw))}
            pw, pdv, pdg = b.put(tfill(rows * n), dt), b.put(tfill(rows * n), dt), b.put(tfill(rows), dt)
            pn = b.put(np.full(rows, fill, f32), np.float32)
            prm = WnParams(v=ins["v"][0], g=ins["g"][0], w=pw, norms=pn, rows=rows, n=n)
            self.emu.launch(f"weight_norm_fwd_{tp}", prm, grid, BLOCK, 0, order, seed)
            prm = WnParams(v=ins["v"][0], g=ins["g"][0], norms=pn, dw=ins["dw"][0], dv=pdv, dg=pdg, rows=rows, n=n)
            self.emu.launch(f"weight_norm_bwd_{tp}", prm, grid, BLOCK, 0, order, seed + 1)
            bad, out = [], []
            for name, p in (("w", pw), ("norms", pn), ("dv", pdv), ("dg", pdg)):
                a, ok = b.get(p)
                if not ok:
                    bad.append(f"bytes written before / after {name}")
                out.append(bf16_value(a) if bf16 and name != "norms" else a)
            for name, (p, a) in ins.items():
                got, ok = b.get(p)
                if not ok or got.tobytes() != a.tobytes():
                    bad.append(f"{name} changed or its guards written")
            return out[0].reshape(rows, n), out[1], out[2].reshape(rows, n), out[3], bad


def row_sums(a, b):
    """(rows, n) f32 -> (rows,) f32: thread t's fmaf(a, b, acc) over elements t, t + 256, ... (zero
    padding is exact: acc starts at +0 and never becomes -0), then the tree."""
    rows, n = a.shape
    m = -(-n // BLOCK) * BLOCK
    pa, pb = np.zeros((rows, m), f32), np.zeros((rows, m), f32)
    pa[:, :n], pb[:, :n] = a, b
    acc = np.zeros((rows, BLOCK), f32)
    with np.errstate(all="ignore"):
        for j in range(m // BLOCK):
            acc = fma_f32(pa[:, j * BLOCK:(j + 1) * BLOCK], pb[:, j * BLOCK:(j + 1) * BLOCK], acc)
        return tree(acc)


def port(bf16, v, g, dw):
    rnd = bf16_round if bf16 else (lambda x: x)
    with np.errstate(all="ignore"):
        norm = np.sqrt(row_sums(v, v))
        scale = (g / norm).astype(f32)
        w = rnd((v * scale[:, None]).astype(f32))
        dot = row_sums(dw, v)
        dgo = (dot / norm).astype(f32)
        s = (g / norm).astype(f32)
        c = (-(dgo / norm)).astype(f32)
        dv = rnd((s[:, None] * fma_f32(np.broadcast_to(c[:, None], v.shape), v, dw)).astype(f32))
        return w, norm, dv, rnd(dgo)


def reference(v, g, dw):
    """f64 -> (w, norm, dv, dg) and error bounds for the kernels on finite inputs."""
    v6, g6, d6 = v.astype(np.float64), g.astype(np.float64), dw.astype(np.float64)
    n = v.shape[1]
    norm = np.sqrt((v6 ** 2).sum(1))
    w = v6 * (g6 / norm)[:, None]
    S = (np.abs(d6 * v6)).sum(1)
    dg = (d6 * v6).sum(1) / norm
    s, c = g6 / norm, dg / norm
    dv = s[:, None] * (d6 - c[:, None] * v6)
    chain = -(-n // BLOCK) + 8
    gam = (chain + 8) * U * 1.05
    bw = np.abs(w) * (chain / 2 + 4) * U * 1.05
    bn = norm * (chain / 2 + 1) * U * 1.05
    bdg = gam * S / norm
    bdv = gam * np.abs(s)[:, None] * (np.abs(d6) + 2 * (S / norm ** 2)[:, None] * np.abs(v6))
    return (w, norm, dv, dg), (bw, bn, bdv, bdg)


def check_case(K, ck, bf16, v, g, dw, label, asan=False, f64=True, grids=()):
    guard = 0 if asan else GUARD_BYTES
    todo = [(o, s, None, None) for o, s in (ORDERS[:1] if asan else ORDERS)]
    if not asan:
        todo += [(0, 0, ALT_POISON, None)] + [(0, 0, None, gr) for gr in grids]
    runs, bad = [], []
    for o, s, poison, grid in todo:
        *out, b = K.run(bf16, v, g, dw, order=o, seed=s, guard=guard, poison=poison, grid=grid)
        runs.append(out)
        bad += [x for x in b if x not in bad]
    names = ("w", "norms", "dv", "dg")
    want = port(bf16, v, g, dw)
    for nm, got, pw in zip(names, runs[0], want):
        if not same(got, pw):
            bad.append(f"{nm} vs the float32 port: " + first_diff(got, pw))
    for k, r in enumerate(runs[1:], 1):
        if any(a.tobytes() != b.tobytes() for a, b in zip(r, runs[0])):
            bad.append(f"run {k} (order / poison / grid) differs bitwise")
    detail = ""
    if f64:
        ref, bounds = reference(v, g, dw)
        worst = []
        for nm, got, r, bd in zip(names, runs[0], ref, bounds):
            extra = 2.0 ** -8 * np.abs(r) if bf16 and nm != "norms" else 0.0  # bf16 output rounding (+ slack)
            err = np.abs(got.astype(np.float64) - r)
            lim = bd * (1 + (2.0 ** -8 if bf16 else 0)) + extra + 1e-300
            if not np.all(np.isfinite(got)) or np.any(err > lim):
                i = int(np.argmax(err - lim))
                bad.append(f"{nm} vs f64: error {err.flat[i]:.3g} > bound {np.ravel(lim)[i]:.3g}")
            worst.append(f"{nm} {float(np.max(err / lim)):.2g}")
        detail = "[max error / bound: " + ", ".join(worst) + "]"
    t = "bf16" if bf16 else "f32"
    what = ("ASan: no report, " if asan else "") + "w, norms, dv, dg bitwise equal to the float32 port" + \
        (" and within the rounding-chain bound of f64" if f64 else "") + \
        ("" if asan else ", guards and inputs intact, bitwise equal in 3 orders, under 2 poisons" +
         (f" and grids {list(grids)}" if grids else ""))
    ck.check(f"weight_norm_{t} {label}: {what}", not bad, "; ".join(bad) if bad else detail)


SHAPES = [(1, 1), (3, 7), (2, 255), (4, 256), (3, 257), (5, 300), (2, 1792), (2, 4097), (40, 3)]


def inputs(rng, rows, n, k, bf16):
    sc = [1.0, 1e-3, 1e3][k % 3]
    v = (rng.standard_normal((rows, n)) * sc).astype(f32)
    g = rng.standard_normal(rows).astype(f32)
    dw = rng.standard_normal((rows, n)).astype(f32)
    if bf16:
        v, g, dw = bf16_round(v), bf16_round(g), bf16_round(dw)
    return v, g, dw


def part_dtype(K, ck, rng, bf16, asan=False):
    for k, (rows, n) in enumerate(SHAPES):
        v, g, dw = inputs(rng, rows, n, k, bf16)
        grids = [] if asan else ([1, 3] if rows > 3 else [1] if rows > 1 else [])
        check_case(K, ck, bf16, v, g, dw, f"rows {rows}, n {n}", asan=asan, grids=grids)


def part_f32(K, ck, rng):
    part_dtype(K, ck, rng, False)


def part_bf16(K, ck, rng):
    part_dtype(K, ck, rng, True)


def part_special(K, ck, rng):
    for bf16 in (False, True):
        v, g, dw = inputs(rng, 4, 300, 0, bf16)
        v[2] = 0.0
        check_case(K, ck, bf16, v, g, dw, "rows 4, n 300, row 2 all zero (norm 0: w, dv, dg of that row NaN / inf "
                   "as PyTorch; checked bitwise vs the port only)", f64=False, grids=[1])
        *out, _ = K.run(bf16, v, g, dw)
        w, nr, dv, dg = out
        ok = nr[2] == 0 and np.all(np.isnan(w[2])) and not np.isfinite(dg[2]) and np.all(np.isfinite(w[[0, 1, 3]]))
        ck.check(f"weight_norm_{'bf16' if bf16 else 'f32'} zero row: norm 0, w row NaN, dg non-finite, other rows finite",
                 ok, f"norm {nr[2]} w {w[2][:3]} dg {dg[2]}")
        rnd = (lambda x: bf16_round(np.array([x], f32))[0]) if bf16 else f32
        # One element per row, at the last position of a 4097-long row (thread 0's 17th term).
        v = np.zeros((2, 4097), f32)
        v[0, 4096], v[1, 4096] = -3.0, 4.0
        g = np.array([2.0, -0.5], f32)
        dw = np.ones((2, 4097), f32)
        *out, b = K.run(bf16, v, g, dw)
        w, nr, dv, dg = out
        ok = (not b and list(nr) == [3.0, 4.0] and w[0, 4096] == -2.0 and w[1, 4096] == -0.5
              and np.all(w[:, :4096] == 0) and list(dg) == [-1.0, 1.0] and abs(float(dv[0, 4096])) < 1e-7 and dv[1, 4096] == 0.0
              and np.all(dv[0, :4096] == rnd(np.float32(2.0 / 3.0))) and np.all(dv[1, :4096] == f32(-0.125)))
        ck.check(f"weight_norm_{'bf16' if bf16 else 'f32'} one nonzero element per row at index 4096: exact w, norms, dg, dv",
                 ok, f"{b} norms {nr} w {w[:, 4096]} dg {dg} dv {dv[:, 4096]} {dv[:, 0]}")


def part_fused(K, ck, rng):
    """The kernel's fmas are really fused: a plain multiply-add port differs on random data."""
    v, g, dw = inputs(rng, 3, 4097, 0, False)
    *out, _ = K.run(False, v, g, dw)
    m = 4352
    pa = np.zeros((3, m), f32)
    pa[:, :4097] = v
    acc = np.zeros((3, BLOCK), f32)
    for j in range(m // BLOCK):
        x = pa[:, j * BLOCK:(j + 1) * BLOCK]
        acc = (x * x).astype(f32) + acc
    unfused = np.sqrt(tree(acc))
    ck.check("weight_norm_f32 the row sums use fused fmaf (an unfused port differs from the kernel's norms)",
             not same(out[1], unfused) and same(out[1], port(False, v, g, dw)[1]))


def part_asan(K, ck, rng):
    part_dtype(K, ck, rng, False, asan=True)
    part_dtype(K, ck, rng, True, asan=True)


if __name__ == "__main__":
    run_main("weight_norm", __doc__, Kernels,
             {"f32": part_f32, "bf16": part_bf16, "special": part_special, "fused": part_fused},
             {"bounds": part_asan}, seed=20250301)
