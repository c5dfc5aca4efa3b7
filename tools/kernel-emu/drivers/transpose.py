"""Emulator driver for kernels/transpose.cu: transpose_fwd_{f32,bf16} on x [outer, a, b, inner] -> y [outer, b, a,
inner], y[o, j, i, c] = x[o, i, j, c], launched as src/ops/transpose.rs launches them (the backward is the same
kernel on the swapped shape). Every output BITWISE equal to numpy's np.swapaxes of the storage bits (NaN payloads,
-0, inf, subnormals moved unchanged): the tiled shared-memory path (inner 1) with ragged tiles on both edges
(a, b not multiples of 32, below one tile, one), the vector row path (inner a whole number of 16-byte vectors,
aligned pointers), the scalar row path (ragged inner, or src / dst one element off a 16-byte boundary); on the
launcher's grid and on small explicit grids (the grid-stride loops), outputs poisoned (NaN and a finite poison),
256 sentinel bytes around every buffer unchanged, the input unchanged, in three thread orders (a missing
__syncthreads shows up as a read of a stale or poisoned tile)."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, run_main  # noqa: E402
from drivers_common import F32_POISON, Bufs, bf16_bits, first_diff, same  # noqa: E402

U64 = C.c_uint64
f32 = np.float32
GUARD_BYTES = 256
BF16_POISON = np.uint16(0xFFC1)               # a NaN (this driver's; drivers_common.BF16_POISON is 0xFFFF)
BLOCK = 256
TILE = 32
MAX_GRID = 1 << 16


class TransposeParams(C.Structure):  # kernels/transpose.h (48 bytes, outer at 16, inner at 40)
    _fields_ = [("dst", P), ("src", P), ("outer", U64), ("a", U64), ("b", U64), ("inner", U64)]


assert C.sizeof(TransposeParams) == 48 and TransposeParams.outer.offset == 16 and TransposeParams.inner.offset == 40


def vec_of(bf16):
    return 8 if bf16 else 4


def launcher_grid(bf16, outer, a, b, inner, aligned):
    """src/ops/transpose.rs: inner 1, one block per 32 x 32 tile; otherwise ceil(work / 256) with work = |y| / N
    vectors (inner % N == 0, both pointers aligned) or |y| elements; clamped to 1..2^16."""
    if inner == 1:
        blocks = outer * (-(-a // TILE)) * (-(-b // TILE))
    else:
        n, v = outer * a * b * inner, vec_of(bf16)
        work = n // v if inner % v == 0 and aligned else n
        blocks = -(-work // BLOCK)
    return min(max(blocks, 1), MAX_GRID)


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for t in ("f32", "bf16"):
            emu.check_struct(f"transpose_fwd_{t}", TransposeParams)

    def run(self, bf16, src, outer, a, b, inner, order=0, seed=0, guard=0, poison=None, grid=None, shift=()):
        """src: storage (f32, or bf16 bits as uint16) x [outer, a, b, inner]; dst poisoned (NaN or `poison`);
        shift: names ('src', 'dst') to start one element past a 16-byte boundary. -> (dst storage, [problems])"""
        dt = np.uint16 if bf16 else np.float32
        n = outer * a * b * inner
        if poison is None:
            fill = BF16_POISON if bf16 else F32_POISON
        else:
            fill = bf16_bits(np.array([poison], f32))[0] if bf16 else f32(poison)
        with Mem(self.emu) as mem:
            bufs = Bufs(mem, guard)
            ps = bufs.put(src, dt, shift=int("src" in shift))
            pd = bufs.put(np.full(n, fill, dt), dt, shift=int("dst" in shift))
            if grid is None:
                grid = launcher_grid(bf16, outer, a, b, inner, not shift)
            prm = TransposeParams(dst=pd, src=ps, outer=outer, a=a, b=b, inner=inner)
            self.emu.launch(f"transpose_fwd_{'bf16' if bf16 else 'f32'}", prm, grid, BLOCK, 0, order, seed)
            out, bad = bufs.output(pd, "dst")
            bad += bufs.unchanged(ps, src, "src")
            return out, bad


def port(x, outer, a, b, inner):
    """numpy: the storage swapped, y[o, j, i, c] = x[o, i, j, c]."""
    return np.ascontiguousarray(np.swapaxes(np.asarray(x).reshape(outer, a, b, inner), 1, 2)).ravel()


def storage(rng, bf16, count, specials=False):
    x = rng.standard_normal(count).astype(f32)
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


def bits_of(v):
    v = np.asarray(v)
    return v if v.dtype == np.uint16 else v.view(np.uint32)


def check(K, ck, bf16, outer, a, b, inner, rng, label, asan=False, grids=(), shifts=((),), specials=False, quick=False):
    x = storage(rng, bf16, outer * a * b * inner, specials=specials)
    want = port(x, outer, a, b, inner)
    bad, first = [], None
    todo = [(o, s, None, None, sh) for sh in shifts for o, s in (ORDERS[:1] if asan else ORDERS[::2] if quick else ORDERS)]
    if not asan and not quick:
        todo += [(0, 0, -7777.0, None, ())] + [(0, 0, None, g, ()) for g in grids]
    for o, s, poison, grid, sh in todo:
        out, bb = K.run(bf16, x, outer, a, b, inner, order=o, seed=s, guard=0 if asan else GUARD_BYTES, poison=poison,
                        grid=grid, shift=sh)
        bad += [f"{m} (order {o}, shift {sh}, grid {grid})" for m in bb]
        if out.tobytes() != want.tobytes():
            bad.append(f"order {o} shift {sh} grid {grid} poison {poison} vs np.swapaxes: " + first_diff(bits_of(out), bits_of(want)))
        first = out if first is None else first
        if not same(bits_of(out), bits_of(first)):
            bad.append(f"order {o} shift {sh} grid {grid}: differs from the first run")
    t = "bf16" if bf16 else "f32"
    path = "tiles" if inner == 1 else "rows"
    what = ("ASan: no report, " if asan else "") + "bitwise np.swapaxes" + \
        ("" if asan else ", forward and random orders" if quick else ", 3 orders, 2 poisons, guards and input intact") + \
        (f", shifts {[list(s) for s in shifts if s]}" if any(shifts) else "") + (f", grids {list(grids)}" if grids and not asan else "")
    ck.check(f"transpose_fwd_{t} ({path}) [{outer}, {a}, {b}, {inner}]{' ' + label if label else ''}: {what}", not bad, "; ".join(bad[:3]))


# (outer, a, b): tiles whole and ragged on either edge or both, a or b below one tile, a size-1 axis, several o.
TILE_CASES = [(1, 32, 32), (1, 64, 96), (2, 33, 65), (3, 31, 5), (1, 1, 70), (2, 70, 1), (1, 1, 1), (4, 7, 3),
              (1, 100, 37), (2, 45, 45)]
# (outer, a, b, inner): inner a multiple of 8 (vectors for both dtypes), 4 (a vector of f32, not bf16), ragged
# 2, 3, 5, 12 (f32 vectors, not bf16), 64 (the seed's); size-1 axes.
ROW_CASES = [(2, 3, 5, 8), (1, 7, 4, 4), (3, 5, 2, 2), (2, 4, 3, 3), (1, 9, 11, 5), (2, 3, 4, 12), (2, 5, 3, 64),
             (1, 1, 6, 16), (3, 4, 1, 8), (1, 19, 7, 64)]
SHIFTS = ((), ("src",), ("dst",), ("src", "dst"))


def part_dtype(K, ck, rng, bf16, asan=False):
    for outer, a, b in TILE_CASES:
        grids = [] if asan else [1, 3]
        check(K, ck, bf16, outer, a, b, 1, rng, "", asan=asan, grids=grids, shifts=((), ("src", "dst")))
    for outer, a, b, inner in ROW_CASES:
        check(K, ck, bf16, outer, a, b, inner, rng, "", asan=asan, grids=[] if asan else [1, 3], shifts=SHIFTS)


def part_f32(K, ck, rng):
    part_dtype(K, ck, rng, False)


def part_bf16(K, ck, rng):
    part_dtype(K, ck, rng, True)


def part_special(K, ck, rng):
    for bf16 in (False, True):
        for outer, a, b, inner in ((1, 4, 16, 1), (2, 4, 2, 8), (1, 8, 3, 3), (2, 2, 2, 4)):
            check(K, ck, bf16, outer, a, b, inner, rng, "NaN payloads, -0, inf, subnormals", shifts=SHIFTS, specials=True)
        # The involution: transposing the result back gives x's bits.
        x = storage(rng, bf16, 3 * 37 * 70)
        y, b1 = K.run(bf16, x, 3, 37, 70, 1, guard=GUARD_BYTES)
        z, b2 = K.run(bf16, y, 3, 70, 37, 1, guard=GUARD_BYTES, order=ORDERS[2][0], seed=ORDERS[2][1])
        ck.check(f"transpose_fwd_{'bf16' if bf16 else 'f32'} twice (a 37 <-> 70) is the identity, bitwise",
                 not b1 and not b2 and z.tobytes() == np.ascontiguousarray(x).tobytes())


def part_seed(K, ck, rng):
    """The bench shapes: [8, 512, 960] axis 1 (TCN channels-first -> channels-last), [8, 171, 960] axis 1 (ragged
    a), [8, 19, 960, 64] axis 1 (inner 64, reduced to outer 2)."""
    for bf16 in (False, True):
        check(K, ck, bf16, 8, 512, 960, 1, rng, "seed [8, 512, 960] axis 1", quick=True)
        check(K, ck, bf16, 8, 171, 960, 1, rng, "seed [8, 171, 960] axis 1", quick=True)
        check(K, ck, bf16, 2, 19, 960, 64, rng, "seed [8, 19, 960, 64] axis 1 at outer 2", quick=True)


def part_asan(K, ck, rng):
    part_dtype(K, ck, rng, False, asan=True)
    part_dtype(K, ck, rng, True, asan=True)


if __name__ == "__main__":
    run_main("transpose", __doc__, Kernels, {"f32": part_f32, "bf16": part_bf16, "special": part_special, "seed": part_seed},
             {"bounds": part_asan}, seed=20251125)
