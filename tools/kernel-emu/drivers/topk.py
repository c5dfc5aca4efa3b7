"""Emulator driver for kernels/topk.cu: topk_{fwd,bwd}_{f32,bf16} and topk_mask_{fwd,bwd}_{f32,bf16} (one
warp per row, 8 rows per 256-thread block, grid-stride; k rounds of a warp arg-max over 32-bit order keys, ties to the lower index by ballot; the
backward broadcasts the row's (index, gradient) pairs from lanes 0..k-1), launched as src/ops/topk.rs
launches them, against an independent numpy selection (lexsort: NaN above all, value descending with
-0 == +0, index ascending). Every output is a copy or a zero, so all comparisons are bitwise."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, run_main  # noqa: E402
from drivers_common import F32_POISON, Bufs, bf16_bits, bf16_value  # noqa: E402

U64, U32 = C.c_uint64, C.c_uint32
f32 = np.float32
GUARD_BYTES = 256
BLOCK = 256
ROWS_PER_BLOCK = 8
MAX_BLOCKS = 1 << 16  # src/ops/topk.rs: grid min(ceil(rows / 8), 65536)
I32_POISON = np.int32(-0x5A5A5A5B)


class TopkParams(C.Structure):  # kernels/topk.h (56 bytes, rows at 40)
    _fields_ = [("x", P), ("dy", P), ("indices_in", P), ("out", P), ("indices", P),
                ("rows", U64), ("n", U32), ("k", U32)]


assert C.sizeof(TopkParams) == 56 and TopkParams.rows.offset == 40 and TopkParams.k.offset == 52

KINDS = ("fwd", "bwd", "mask_fwd", "mask_bwd")


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for kd in KINDS:
            for t in ("f32", "bf16"):
                emu.check_struct(f"topk_{kd}_{t}", TopkParams)

    def run(self, bf16, x, k, dv, dy, idx_in=None, order=0, seed=0, guard=0, grid=None):
        """x (rows, n), dv (rows, k), dy (rows, n): storage arrays (f32, or bf16 bits as uint16). The
        launcher's four launches: topk (values, indices), topk_backward on idx_in (default: the forward's
        indices, read back), topk_mask, topk_mask_backward; outputs poisoned. -> (values, indices, dx,
        y, dxm as storage arrays, [problems])"""
        rows, n = x.shape
        dt = np.uint16 if bf16 else np.float32
        tp = "bf16" if bf16 else "f32"
        tfill = (lambda m: np.full(m, 0x7FA5, np.uint16)) if bf16 else (lambda m: np.full(m, F32_POISON, f32))
        grid = min(-(-rows // ROWS_PER_BLOCK), MAX_BLOCKS) if grid is None else grid
        with Mem(self.emu) as mem:
            b = Bufs(mem, guard)
            ins = {"x": x, "dv": dv, "dy": dy}
            ptr = {nm: b.put(a, dt) for nm, a in ins.items()}
            pv, py, pdx, pdm = b.put(tfill(rows * k), dt), b.put(tfill(rows * n), dt), b.put(tfill(rows * n), dt), b.put(tfill(rows * n), dt)
            pi = b.put(np.full(rows * k, I32_POISON, np.int32), np.int32)
            prm = TopkParams(x=ptr["x"], out=pv, indices=pi, rows=rows, n=n, k=k)
            self.emu.launch(f"topk_fwd_{tp}", prm, grid, BLOCK, 0, order, seed)
            bad = []
            got_i, ok = b.get(pi)
            if not ok:
                bad.append("bytes written before / after indices")
            pin = b.put(got_i if idx_in is None else np.ascontiguousarray(idx_in, np.int32).ravel(), np.int32)
            prm = TopkParams(dy=ptr["dv"], indices_in=pin, out=pdx, rows=rows, n=n, k=k)
            self.emu.launch(f"topk_bwd_{tp}", prm, grid, BLOCK, 0, order, seed + 1)
            prm = TopkParams(x=ptr["x"], out=py, rows=rows, n=n, k=k)
            self.emu.launch(f"topk_mask_fwd_{tp}", prm, grid, BLOCK, 0, order, seed + 2)
            prm = TopkParams(x=ptr["x"], dy=ptr["dy"], out=pdm, rows=rows, n=n, k=k)
            self.emu.launch(f"topk_mask_bwd_{tp}", prm, grid, BLOCK, 0, order, seed + 3)
            out = []
            for name, p in (("values", pv), ("dx", pdx), ("y", py), ("dx (mask)", pdm)):
                a, ok = b.get(p)
                if not ok:
                    bad.append(f"bytes written before / after {name}")
                out.append(a)
            for name, p in list(ptr.items()) + [("indices_in", pin)]:
                got, ok = b.get(p)
                if not ok:
                    bad.append(f"{name}'s guards written")
            for name, a in ins.items():
                if b.get(ptr[name])[0].tobytes() != np.ascontiguousarray(a, dt).ravel().tobytes():
                    bad.append(f"{name} changed")
            return (out[0].reshape(rows, k), got_i.reshape(rows, k), out[1].reshape(rows, n), out[2].reshape(rows, n),
                    out[3].reshape(rows, n), bad)


def value_of(bf16, a):
    return bf16_value(a) if bf16 else np.asarray(a, f32)


def reference(bf16, x, k, dv, dy, idx_in=None):
    """The selection by numpy lexsort, independent of the kernel's keys; outputs as storage arrays."""
    rows, n = x.shape
    v = value_of(bf16, x).astype(np.float64)
    nan = np.isnan(v)
    key = np.where(nan, 0.0, v) + 0.0  # + 0.0 turns -0 into +0
    idx = np.zeros((rows, k), np.int32)
    for r in range(rows):
        o = np.lexsort((np.arange(n), -key[r], -nan[r].astype(np.int64)))
        idx[r] = o[:k]
    vals = np.take_along_axis(x, idx.astype(np.int64), 1)
    zero = np.zeros((), x.dtype)
    sel = np.zeros((rows, n), bool)
    np.put_along_axis(sel, idx.astype(np.int64), True, 1)
    y = np.where(sel, x, zero)
    dxm = np.where(sel, dy, zero)
    ii = idx if idx_in is None else np.asarray(idx_in, np.int32)
    dx = np.zeros((rows, n), x.dtype)
    for r in range(rows):
        for j in range(k):  # in order: of duplicates the later wins; out of range writes nothing
            if 0 <= ii[r, j] < n:
                dx[r, ii[r, j]] = dv[r, j]
    return vals, idx, dx, y, dxm


def same_bits(a, b):
    return a.shape == b.shape and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def check_case(K, ck, bf16, x, k, dv, dy, label, asan=False, grids=(), idx_in=None):
    guard = 0 if asan else GUARD_BYTES
    todo = [(o, s, None) for o, s in (ORDERS[:1] if asan else ORDERS)]
    if not asan:
        todo += [(0, 0, g) for g in grids]
    runs, bad = [], []
    for o, s, g in todo:
        *out, bb = K.run(bf16, x, k, dv, dy, idx_in=idx_in, order=o, seed=s, guard=guard, grid=g)
        runs.append(out)
        bad += [b for b in bb if b not in bad]
    want = reference(bf16, x, k, dv, dy, idx_in)
    for nm, got, w in zip(("values", "indices", "dx", "y", "dx (mask)"), runs[0], want):
        if not same_bits(got, w):
            g, ww = np.ascontiguousarray(got).ravel(), np.ascontiguousarray(w).ravel()
            d = np.flatnonzero(g.view(np.uint32) != ww.view(np.uint32)) if g.dtype == f32 else np.flatnonzero(g != ww)
            i = int(d[0]) if d.size else -1
            bad.append(f"{nm} differs bitwise from the reference ({d.size} elements, e.g. [{i}]: got "
                       f"{np.ravel(got)[i]!r}, want {np.ravel(w)[i]!r})")
    for j, r in enumerate(runs[1:], 1):
        if any(a.tobytes() != b.tobytes() for a, b in zip(r, runs[0])):
            bad.append(f"run {j} (order / grid) differs bitwise")
    t = "bf16" if bf16 else "f32"
    what = ("ASan: no report, " if asan else "") + "values, indices, dx, y, mask dx bitwise equal to the reference" + \
        ("" if asan else ", guards and inputs intact, bitwise equal in 3 orders" + (f" and grids {list(grids)}" if grids else ""))
    ck.check(f"topk_{t} {label}: {what}", not bad, "; ".join(bad))


def storage(bf16, a):
    return bf16_bits(a) if bf16 else np.ascontiguousarray(a, f32)


def inputs(rng, rows, n, k, bf16, style):
    """style 0: continuous normal; 1: few distinct values (many ties) with NaN, +-inf, +-0; 2: all equal."""
    if style == 0:
        x = rng.standard_normal((rows, n)).astype(f32)
    elif style == 1:
        x = np.round(rng.standard_normal((rows, n)) * 1.5).astype(f32)
        spec = rng.integers(0, 12, (rows, n))
        x[spec == 0] = np.nan
        x[spec == 1] = np.inf
        x[spec == 2] = -np.inf
        x[spec == 3] = -0.0
        x[spec == 4] = 0.0
    else:
        x = np.full((rows, n), 0.25, f32)
    dv = rng.standard_normal((rows, k)).astype(f32)
    dy = rng.standard_normal((rows, n)).astype(f32)
    return storage(bf16, x), storage(bf16, dv), storage(bf16, dy)


CASES = [(1, 1, 1), (7, 2, 1), (9, 19, 3), (17, 19, 19), (5, 31, 7), (8, 32, 32), (9, 33, 3), (3, 33, 32),
         (6, 64, 16), (11, 100, 5), (4, 127, 32), (9, 128, 16), (3, 128, 1)]


def part_dtype(K, ck, rng, bf16, asan=False):
    for c, (rows, n, k) in enumerate(CASES):
        for style in ((0, 1, 2) if not asan else (1,)):
            x, dv, dy = inputs(rng, rows, n, k, bf16, style)
            grids = [] if asan or rows <= 8 else [1]
            check_case(K, ck, bf16, x, k, dv, dy, f"rows {rows}, n {n}, k {k}, inputs {['normal', 'ties/NaN/inf/0', 'all equal'][style]}",
                       asan=asan, grids=grids)


def part_f32(K, ck, rng):
    part_dtype(K, ck, rng, False)


def part_bf16(K, ck, rng):
    part_dtype(K, ck, rng, True)


def part_special(K, ck, rng):
    for bf16 in (False, True):
        t = "bf16" if bf16 else "f32"
        # Hand-checked rows: ties by index, NaN first, -0 == +0 by index, -inf ordinary.
        x = np.array([[1, 3, 2, 3, 0.5], [np.nan, -np.inf, np.inf, 0, -1], [-0.0, 0.0, -1, np.nan, np.nan],
                      [-np.inf, -np.inf, -np.inf, -5, -np.inf]], f32)
        xs = storage(bf16, x)
        dv, dy = storage(bf16, np.ones((4, 3), f32)), storage(bf16, np.ones((4, 5), f32))
        vals, idx, *_ = K.run(bf16, xs, 3, dv, dy)
        ok = idx.tolist() == [[1, 3, 2], [0, 2, 3], [3, 4, 0], [3, 0, 1]] and \
            np.ascontiguousarray(vals[2, 2]).tobytes() == np.ascontiguousarray(xs[2, 0]).tobytes()
        ck.check(f"topk_{t} hand rows: indices [[1,3,2],[0,2,3],[3,4,0],[3,0,1]], -0.0 copied with its sign", ok, f"{idx.tolist()}")
        # NaN payloads are copied, not canonicalised (f32: 0x7fc01234; bf16: 0x7fc1).
        xs = np.array([[1.0, 2.0, 3.0]], f32)
        xs = storage(bf16, xs)
        xs[0, 1] = np.uint16(0x7FC1) if bf16 else np.uint32(0x7FC01234).view(f32)
        vals, idx, *_ = K.run(bf16, xs, 2, storage(bf16, np.ones((1, 2), f32)), storage(bf16, np.ones((1, 3), f32)))
        ck.check(f"topk_{t} a NaN payload is copied bit for bit", idx.tolist() == [[1, 2]] and vals.tobytes() == xs[0, [1, 2]].tobytes())
        # The backward on given indices: out of range (negative, n, huge) ignored; of duplicates the later wins.
        rows, n, k = 3, 40, 4
        x, dv, dy = inputs(rng, rows, n, k, bf16, 0)
        idx_in = np.array([[39, -1, 40, 0], [5, 5, 7, 2 ** 31 - 1], [33, 32, 31, 1]], np.int32)
        check_case(K, ck, bf16, x, k, dv, dy, "backward on out-of-range and repeated indices (ignored / later wins)", idx_in=idx_in)


def part_grid(K, ck, rng):
    """More rows than one launch covers at the minimum grid: rows 8 * 3 + 5 with grids 1, 2, 3."""
    for bf16 in (False, True):
        x, dv, dy = inputs(rng, 29, 19, 3, bf16, 1)
        check_case(K, ck, bf16, x, 3, dv, dy, "rows 29, n 19, k 3", grids=[1, 2, 3])


def part_asan(K, ck, rng):
    part_dtype(K, ck, rng, False, asan=True)
    part_dtype(K, ck, rng, True, asan=True)


if __name__ == "__main__":
    run_main("topk", __doc__, Kernels,
             {"f32": part_f32, "bf16": part_bf16, "special": part_special, "grid": part_grid},
             {"bounds": part_asan}, seed=20251123)
