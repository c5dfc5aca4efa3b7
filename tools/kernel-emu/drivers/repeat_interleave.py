"""Emulator driver for kernels/repeat_interleave.cu: repeat_interleave_{fwd,bwd}_{f32,bf16} on x [rows, inner]
(rows = outer * n), y [rows * r, inner]: forward y[s*r + q, c] = x[s, c] (elements moved bitwise), backward
dx[s, c] = sum_{q = 0..r-1} dy[s*r + q, c] in f32 in that order, launched as src/ops/repeat_interleave.rs
launches them. The forward BITWISE equal to numpy's np.repeat of the storage bits (NaN payloads included: no
conversion), the backward BITWISE equal to a numpy float32 port of the ordered sum (bf16: rounded to nearest
even once) and within the sequential-summation bound of numpy f64; every path (vector rows, element rows with
vector stores, r contiguous vector loads, strided rows, scalar throughout for unaligned pointers, the scalar
tail) at ragged sizes, on the launcher's grid and on small explicit grids, in three thread orders."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, run_main  # noqa: E402
from drivers_common import F32_POISON, Bufs, bf16_bits, bf16_value, first_diff, same  # noqa: E402

U64 = C.c_uint64
f32 = np.float32
U = 2.0 ** -24
GUARD_BYTES = 256
BF16_POISON = np.uint16(0xFFC1)               # a NaN (this driver's; drivers_common.BF16_POISON is 0xFFFF)
BLOCK = 256
MAX_GRID = 1 << 20


class RiParams(C.Structure):  # kernels/repeat_interleave.h (40 bytes, rows at 16, r at 32)
    _fields_ = [("dst", P), ("src", P), ("rows", U64), ("inner", U64), ("r", U64)]


assert C.sizeof(RiParams) == 40 and RiParams.rows.offset == 16 and RiParams.r.offset == 32


def vec_of(bf16):
    return 8 if bf16 else 4


def grid_of(work):
    """src/ops/repeat_interleave.rs cfg: clamp(ceil(work / 256), 1, 2^20)."""
    return min(max(-(-work // BLOCK), 1), MAX_GRID)


def launcher_grid(bwd, bf16, rows, inner, r, aligned):
    """The launcher's work count: forward ceil(|y| / N); backward |dx| / N when inner % N == 0 and both
    pointers are 16-byte aligned, |dx| otherwise."""
    v = vec_of(bf16)
    if not bwd:
        return grid_of(-(-(rows * r * inner) // v))
    return grid_of(rows * inner // v if inner % v == 0 and aligned else rows * inner)


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for d in ("fwd", "bwd"):
            for t in ("f32", "bf16"):
                emu.check_struct(f"repeat_interleave_{d}_{t}", RiParams)

    def run(self, bwd, bf16, src, rows, inner, r, order=0, seed=0, guard=0, poison=None, grid=None, shift=()):
        """src: storage array (f32, or bf16 bits as uint16): x [rows, inner] forward, dy [rows * r, inner]
        backward. dst poisoned (NaN or `poison`); shift: names ('src', 'dst') to start one element past a
        16-byte boundary. -> (dst storage array, [problems])"""
        dt = np.uint16 if bf16 else np.float32
        n_dst = rows * inner if bwd else rows * r * inner
        if poison is None:
            fill = BF16_POISON if bf16 else F32_POISON
        else:
            fill = bf16_bits(np.array([poison], f32))[0] if bf16 else f32(poison)
        with Mem(self.emu) as mem:
            b = Bufs(mem, guard)
            ps = b.put(src, dt, shift=int("src" in shift))
            pd = b.put(np.full(n_dst, fill, dt), dt, shift=int("dst" in shift))
            if grid is None:
                grid = launcher_grid(bwd, bf16, rows, inner, r, not shift)
            prm = RiParams(dst=pd, src=ps, rows=rows, inner=inner, r=r)
            self.emu.launch(f"repeat_interleave_{'bwd' if bwd else 'fwd'}_{'bf16' if bf16 else 'f32'}", prm, grid, BLOCK, 0,
                            order, seed)
            out, bad = b.output(pd, "dst")
            bad += b.unchanged(ps, src, "src")
            return out, bad


def fwd_port(x, rows, inner, r):
    """Storage bits repeated: y[s*r + q, c] = x[s, c]."""
    return np.repeat(np.asarray(x).reshape(rows, inner), r, axis=0).ravel()


def bwd_port(bf16, dy, rows, inner, r):
    """The kernel's f32 arithmetic: acc = dy[.., 0, ..]; acc += dy[.., q, ..] for q = 1..r-1; one rounding
    to bf16 at the store."""
    v = (bf16_value(dy) if bf16 else np.asarray(dy, f32)).reshape(rows, r, inner)
    with np.errstate(all="ignore"):
        acc = v[:, 0, :].copy()
        for q in range(1, r):
            acc = (acc + v[:, q, :]).astype(f32)
    return bf16_bits(acc.ravel()) if bf16 else acc.ravel()


def bwd_reference(bf16, dy, rows, inner, r):
    """f64 sum and the bound: (r - 1) u sum |dy| (sequential f32 summation), plus bf16's final rounding."""
    v = (bf16_value(dy) if bf16 else np.asarray(dy, f32)).astype(np.float64).reshape(rows, r, inner)
    ref = v.sum(1).ravel()
    bound = (max(r - 1, 0) * U * 1.01) * np.abs(v).sum(1).ravel()
    if bf16:
        bound = bound * (1 + 2.0 ** -8) + 2.0 ** -8 * np.abs(ref)
    return ref, bound


def storage(rng, bf16, count, scale=1.0, specials=False):
    x = (rng.standard_normal(count) * scale).astype(f32)
    if specials and count >= 8:
        x[:6] = [0.0, -0.0, np.inf, -np.inf, 1e-40, -3e38]
        x[6] = np.uint32(0x7FC01234).view(f32)  # a NaN with a payload
        x[7] = np.uint32(0xFFA00001).view(f32)  # a signalling-pattern NaN
    if bf16:
        bits = bf16_bits(x)
        if specials and count >= 8:
            bits[6], bits[7] = np.uint16(0x7FC3), np.uint16(0xFF81)  # NaN payloads in bf16
        return bits
    return x


def check_fwd(K, ck, bf16, rows, inner, r, rng, label, asan=False, grids=(), shifts=((),), specials=False, quick=False):
    x = storage(rng, bf16, rows * inner, specials=specials)
    want = fwd_port(x, rows, inner, r)
    bad, first = [], None
    todo = [(o, s, None, None, sh) for sh in shifts for o, s in (ORDERS[:1] if asan else ORDERS[::2] if quick else ORDERS)]
    if not asan and not quick:
        todo += [(0, 0, -7777.0, None, ())] + [(0, 0, None, g, ()) for g in grids]
    for o, s, poison, grid, sh in todo:
        out, b = K.run(False, bf16, x, rows, inner, r, order=o, seed=s, guard=0 if asan else GUARD_BYTES, poison=poison,
                       grid=grid, shift=sh)
        bad += [f"{m} (shift {sh}, grid {grid})" for m in b]
        if out.tobytes() != want.tobytes():
            d = np.flatnonzero(out.view(np.uint16 if bf16 else np.uint32) != want.view(np.uint16 if bf16 else np.uint32))
            bad.append(f"shift {sh} order {o} grid {grid} poison {poison}: {d.size} elements differ from np.repeat "
                       f"(first [{int(d[0])}])")
        first = out if first is None else first
    t = "bf16" if bf16 else "f32"
    what = ("ASan: no report, " if asan else "") + "y bitwise np.repeat of x's bits" + \
        ("" if asan else " in the forward and random orders, guards and x intact" if quick else
         " in 3 orders, under 2 poisons, guards and x intact") + \
        (f", shifted {[list(s) for s in shifts if s]}" if any(shifts) else "") + (f", grids {list(grids)}" if grids and not asan else "")
    ck.check(f"repeat_interleave_fwd_{t} {label}: {what}", not bad, "; ".join(bad[:3]))


def check_bwd(K, ck, bf16, rows, inner, r, rng, label, asan=False, grids=(), shifts=((),), scale=1.0, f64=True, dy=None,
              quick=False):
    if dy is None:
        dy = storage(rng, bf16, rows * r * inner, scale=scale)
    want = bwd_port(bf16, dy, rows, inner, r)
    bad = []
    todo = [(o, s, None, None, sh) for sh in shifts for o, s in (ORDERS[:1] if asan else ORDERS[::2] if quick else ORDERS)]
    if not asan and not quick:
        todo += [(0, 0, -7777.0, None, ())] + [(0, 0, None, g, ()) for g in grids]
    got0 = None
    for o, s, poison, grid, sh in todo:
        out, b = K.run(True, bf16, dy, rows, inner, r, order=o, seed=s, guard=0 if asan else GUARD_BYTES, poison=poison,
                       grid=grid, shift=sh)
        bad += [f"{m} (shift {sh}, grid {grid})" for m in b]
        gv, wv = (bf16_value(out), bf16_value(want)) if bf16 else (out, want)
        if not same(gv, wv):
            bad.append(f"shift {sh} order {o} grid {grid} poison {poison} vs the float32 port: " + first_diff(gv, wv))
        got0 = gv if got0 is None else got0
    detail = ""
    if f64:
        ref, bound = bwd_reference(bf16, dy, rows, inner, r)
        err = np.abs(got0.astype(np.float64) - ref)
        lim = bound + 1e-300
        if not np.all(np.isfinite(got0)) or np.any(err > lim):
            i = int(np.argmax(err - lim))
            bad.append(f"vs f64: error {err[i]:.3g} > bound {lim[i]:.3g} at [{i}]")
        detail = f"[max error / bound {float(np.max(err / lim)):.2g}]"
    t = "bf16" if bf16 else "f32"
    what = ("ASan: no report, " if asan else "") + "dx bitwise the float32 port of the ordered sum" + \
        (" and within (r-1)u sum|dy| of f64" if f64 else "") + \
        ("" if asan else ", forward and random orders, guards and dy intact" if quick else
         ", 3 orders, 2 poisons, guards and dy intact") + \
        (f", shifted {[list(s) for s in shifts if s]}" if any(shifts) else "") + (f", grids {list(grids)}" if grids and not asan else "")
    ck.check(f"repeat_interleave_bwd_{t} {label}: {what}", not bad, "; ".join(bad[:3]) if bad else detail)


# (rows, inner, r): inner 1 (upsampling: r % N == 0 and not), inner ragged (3, 5, 7, 12: vector stores
# with element loads; 4 is a whole vector for f32 but not for bf16), inner a multiple of 8 (vector rows),
# sizes that leave a scalar tail, r = 1 (a copy), seed-like shapes scaled down.
SHAPES = [
    (1, 1, 1), (1, 1, 16), (7, 1, 16), (37, 1, 8), (37, 1, 4), (300, 1, 16), (19, 1, 3), (5, 1, 5), (33, 1, 1),
    (3, 3, 2), (5, 5, 16), (9, 7, 3), (4, 12, 5), (6, 4, 16), (11, 4, 1),
    (3, 8, 16), (5, 16, 3), (2, 64, 16), (7, 24, 2), (1, 8, 1), (3, 40, 7),
    (2 * 19, 1, 16), (2 * 30, 64, 16),
]
SHIFTS = ((), ("src",), ("dst",), ("src", "dst"))


def grids_for(rows, inner, r):
    return [1, 3] if rows * r * inner > 600 else [1]


def part_dtype(K, ck, rng, bf16, bwd, asan=False):
    for k, (rows, inner, r) in enumerate(SHAPES):
        label = f"rows {rows}, inner {inner}, r {r}"
        big = rows * r * inner > 20000
        shifts = ((),) if big else SHIFTS
        grids = [] if asan else grids_for(rows, inner, r)
        if bwd:
            check_bwd(K, ck, bf16, rows, inner, r, rng, label, asan=asan, grids=grids, shifts=shifts, scale=[1.0, 1e-3, 1e3][k % 3])
        else:
            check_fwd(K, ck, bf16, rows, inner, r, rng, label, asan=asan, grids=grids, shifts=shifts, specials=k % 2 == 0)


def part_fwd_f32(K, ck, rng):
    part_dtype(K, ck, rng, False, False)


def part_fwd_bf16(K, ck, rng):
    part_dtype(K, ck, rng, True, False)


def part_bwd_f32(K, ck, rng):
    part_dtype(K, ck, rng, False, True)


def part_bwd_bf16(K, ck, rng):
    part_dtype(K, ck, rng, True, True)


def part_special(K, ck, rng):
    for bf16 in (False, True):
        t = "bf16" if bf16 else "f32"
        # The order is q = 0, 1, ..: dy rows [1, e, e, ..] with e = 2^-24, half an ulp of 1 in f32 (and a
        # bf16 value): left to right every add ties back to 1 (even); any other grouping adds e + e = 2^-23
        # first and ends above 1 (f32; bf16 rounds both to 1, so there the check is of the values only).
        e = 2.0 ** -24
        for rows, inner, r in ((5, 1, 4), (5, 1, 8), (3, 8, 4), (3, 3, 4)):
            v = np.full((rows, r, inner), e, f32)
            v[:, 0, :] = 1.0
            dy = bf16_bits(v.ravel()) if bf16 else v.ravel()
            out, b = K.run(True, bf16, dy, rows, inner, r, guard=GUARD_BYTES)
            got = bf16_value(out) if bf16 else out
            ck.check(f"repeat_interleave_bwd_{t} rows {rows}, inner {inner}, r {r}: sums q = 0, 1, .. in order "
                     f"(1 then {r - 1} half-ulps stays 1)", not b and np.all(got == 1.0), f"{b} {got[:4]}")
        # Signed zeros, inf and NaN: -0 alone stays -0 (acc starts at the first value, not +0), inf - inf NaN.
        v = np.array([[-0.0, -0.0], [np.inf, -np.inf], [np.inf, 1.0], [np.nan, 1.0], [0.0, -0.0], [-0.0, 0.0]], f32)
        dy = bf16_bits(v.ravel()) if bf16 else v.ravel()
        out, b = K.run(True, bf16, dy, 6, 1, 2, guard=GUARD_BYTES)
        got = bf16_value(out) if bf16 else out
        want = np.array([-0.0, np.nan, np.inf, np.nan, 0.0, 0.0], f32)
        ck.check(f"repeat_interleave_bwd_{t} signed zeros, inf, NaN (r 2): -0 + -0 = -0, inf - inf NaN, as f32 addition",
                 not b and same(got, want), f"{got}")
        out, b = K.run(True, bf16, dy[:6], 6, 1, 1, guard=GUARD_BYTES)
        got = bf16_value(out) if bf16 else out
        ck.check(f"repeat_interleave_bwd_{t} r 1 is a copy (-0 stays -0)", not b and same(got, bf16_value(dy[:6]) if bf16 else dy[:6]))
        # Forward NaN payloads and the raw bit copy on every path.
        x = storage(rng, bf16, 64, specials=True)
        for rows, inner in ((64, 1), (8, 8), (16, 4), (4, 16)):
            for sh in SHIFTS:
                out, b = K.run(False, bf16, x, rows, inner, 3, guard=GUARD_BYTES, shift=sh)
                if b or out.tobytes() != fwd_port(x, rows, inner, 3).tobytes():
                    break
            ck.check(f"repeat_interleave_fwd_{t} rows {rows}, inner {inner}: NaN payloads, -0, inf, subnormals moved bitwise "
                     "on every alignment", not b and out.tobytes() == fwd_port(x, rows, inner, 3).tobytes())


def part_seed(K, ck, rng):
    """The bench shapes at full size: upsample x16 of [8, 19, 960] (rows 152, inner 1) and [8, 960, 64] x16
    along axis 1 (rows 7,680, inner 64), forward and backward, f32 and bf16, in the forward and the random
    order."""
    for bf16 in (False, True):
        for rows, inner, r, what in ((8 * 19 * 960, 1, 16, "upsample x16 of [8, 19, 960]"),
                                     (8 * 960, 64, 16, "[8, 960, 64] x16 along axis 1"),
                                     (8 * 19, 960, 16, "[8, 19, 960] x16 along axis 1 (inner 960)")):
            check_fwd(K, ck, bf16, rows, inner, r, rng, what, quick=True)
            check_bwd(K, ck, bf16, rows, inner, r, rng, what, quick=True)


def part_asan(K, ck, rng):
    for bf16 in (False, True):
        for bwd in (False, True):
            part_dtype(K, ck, rng, bf16, bwd, asan=True)


if __name__ == "__main__":
    run_main("repeat_interleave", __doc__, Kernels,
             {"fwd_f32": part_fwd_f32, "fwd_bf16": part_fwd_bf16, "bwd_f32": part_bwd_f32, "bwd_bf16": part_bwd_bf16,
              "special": part_special, "seed": part_seed},
             {"bounds": part_asan}, seed=20251123)
