"""Helpers shared by the drivers (drivers/<family>.py), imported like emu: guarded buffers (Bufs), bf16
conversions, bitwise comparisons that tolerate NaN payloads, an exactly rounded fmaf, the kernels'
256-wide shared-memory tree, and (grid_x, grid_y) launches on the emulator's x-only grid."""
import ctypes as C

import numpy as np

from emu import RANDOM, REVERSE

F32_POISON = np.uint32(0x7FA5A5A5).view(np.float32)  # a NaN
BF16_POISON = np.uint16(0xFFFF)                       # a NaN


# ---- bf16 conversions

def bf16_bits(x):
    """f32 -> bf16 bits, round to nearest even; NaN -> 0x7fff (as emu.h's __float2bfloat16_rn)."""
    x = np.ascontiguousarray(x, np.float32)
    u = x.view(np.uint32)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FFF), r).astype(np.uint16)


def bf16_value(bits):
    """bf16 bits -> the f32 with the same value (bit pattern kept, NaN payloads included)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def bf16_round(x):
    return bf16_value(bf16_bits(x))


def bf16_bits_f64(x):
    """f64 -> bf16 bits rounded once (to nearest even at 8 significant bits, straight from f64; normal
    range, inf and NaN -> 0x7fff; not for results in the subnormal range)."""
    x = np.ascontiguousarray(x, np.float64)
    u = x.view(np.uint64)
    with np.errstate(all="ignore"):
        r = ((u + np.uint64((1 << 44) - 1) + ((u >> np.uint64(45)) & np.uint64(1))) >> np.uint64(45)) << np.uint64(45)
        v = r.view(np.float64).astype(np.float32)  # exact: 8 significant bits (or inf past f32's range)
    return np.where(np.isnan(x), np.uint16(0x7FFF), (v.view(np.uint32) >> 16).astype(np.uint16)).astype(np.uint16)


# ---- f32 arithmetic as the kernels do it

def fma_f32(a, b, c):
    """fmaf(a, b, c) elementwise for f32 arrays, correctly rounded: a*b is exact in f64; the f64 sum
    is rounded to odd (TwoSum error term, then the last bit forced to 1 when inexact), which makes
    the final rounding to f32 exact (53 >= 24 + 2; a plain f64 sum could double-round)."""
    p = a.astype(np.float64) * b.astype(np.float64)
    c = c.astype(np.float64)
    with np.errstate(all="ignore"):
        s = p + c
        bb = s - p
        err = (p - (s - bb)) + (c - bb)
        fix = np.isfinite(s) & (err != 0) & ((s.view(np.uint64) & 1) == 0)
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
        return s.astype(np.float32)


def tree(acc, width=256):
    """A block's shared-memory tree over the last axis (`width` values): for s = width/2, .., 1:
    red[t] += red[t + s], in the arrays' dtype."""
    s = width // 2
    with np.errstate(all="ignore"):
        while s:
            acc = acc[..., :s] + acc[..., s:2 * s]
            s //= 2
    return acc[..., 0]


# ---- bitwise comparisons

def same(got, want):
    """Bitwise equal, except that a float NaN only has to be a NaN at the same positions (payloads are
    the hardware's choice); bf16 bits (uint16) exactly (NaN is canonical 0x7fff on both sides)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.dtype == np.uint16:
        return got.shape == want.shape and got.tobytes() == want.tobytes()
    gn, wn = np.isnan(got), np.isnan(want)
    return bool(got.shape == want.shape and np.array_equal(gn, wn) and got[~gn].tobytes() == want[~wn].tobytes())


def first_diff(got, want):
    """'' where same() holds up to shape (compared flattened), else how many elements differ and the
    first of them (f32: with its bits)."""
    g, w = np.asarray(got).ravel(), np.asarray(want).ravel()
    if g.shape != w.shape:
        return f"shape {g.shape} != {w.shape}"
    if g.dtype == np.uint16:
        d = np.flatnonzero(g != w)
        return f"{d.size} differ (e.g. [{int(d[0])}]: got 0x{int(g[d[0]]):04x}, want 0x{int(w[d[0]]):04x})" if d.size else ""
    d = np.flatnonzero(~((g == w) & (np.signbit(g) == np.signbit(w)) | (np.isnan(g) & np.isnan(w))))
    if not d.size:
        return ""
    i = int(d[0])
    if g.dtype == np.float32 and w.dtype == np.float32:
        return (f"{d.size} differ (e.g. [{i}]: got {float(g[i]):.9g} (0x{int(g.view(np.uint32)[i]):08x}), want "
                f"{float(w[i]):.9g} (0x{int(w.view(np.uint32)[i]):08x}))")
    return f"{d.size} differ (e.g. [{i}]: got {float(g[i]):.9g}, want {float(w[i]):.9g})"


# ---- guarded buffers

class Bufs:
    """Buffers with sentinel guards before and after (normal build; guard bytes each side, which keeps
    the 256-byte alignment) or exact (ASan build, guard 0), on an emu.Mem. The sentinel: F32_POISON
    for f32, 0xA5A5A5A5 for uint32, 0x7FA5 (in the buffer's dtype) otherwise."""

    def __init__(self, mem, guard):
        self.mem, self.guard, self.items = mem, guard, {}

    @staticmethod
    def _sentinel(dtype):
        dtype = np.dtype(dtype)
        if dtype == np.float32:
            return F32_POISON
        return np.uint32(0xA5A5A5A5) if dtype == np.uint32 else np.uint16(0x7FA5)

    def put(self, a, dtype, shift=0, poison=False):
        """a -> a pointer to a copy (None -> None). shift: the buffer starts `shift` elements after a
        256-byte boundary (1: not 16-byte aligned, the kernels' scalar path); those elements are
        guarded too. poison: fill it with NaN (f32) / 0xFFFF (otherwise; a bf16 NaN) instead."""
        if a is None:
            return None
        a = np.ascontiguousarray(a, dtype).ravel()
        if poison:
            a = np.full(a.shape, np.nan if dtype == np.float32 else 0xFFFF, dtype)
        g = self.guard // a.itemsize
        s = np.full(g, self._sentinel(dtype), dtype)
        base = self.mem.put(np.concatenate([s, np.full(shift, self._sentinel(dtype), dtype), a, s]), dtype)
        ptr = base + (g + shift) * a.itemsize
        self.items[ptr] = (base, g + shift, g, a.size, dtype)
        return ptr

    def poisoned(self, n, dtype):
        """n elements of the sentinel."""
        return self.put(np.full(n, self._sentinel(dtype), dtype), dtype)

    def output(self, ptr, name):
        """-> (an output buffer's contents, [a problem if a guard byte was written])"""
        out, ok = self.get(ptr)
        return out, [] if ok else [f"bytes written before / after {name}"]

    def unchanged(self, ptr, a, name):
        """[a problem if the input buffer at ptr no longer holds a bitwise, or its guards were written]"""
        got, ok = self.get(ptr)
        same = got.tobytes() == np.ascontiguousarray(a, got.dtype).ravel().tobytes()
        return [] if ok and same else [f"{name} changed or its guards written"]

    def get(self, ptr):
        """-> (the buffer's contents, whether both guards kept their sentinel bytes)"""
        base, g0, g1, n, dtype = self.items[ptr]
        full = self.mem.get(base)
        s0, s1 = (np.full(g, self._sentinel(dtype), dtype).tobytes() for g in (g0, g1))
        return full[g0:g0 + n].copy(), full[:g0].tobytes() == s0 and full[g0 + n:].tobytes() == s1


# ---- 2-D grids

class EmuDim(C.Structure):  # emu.h's EmuDim (blockIdx, gridDim, ... are exported globals of the library)
    _fields_ = [("x", C.c_uint), ("y", C.c_uint), ("z", C.c_uint)]


def launch_xy(emu, kernel, prm, grid_x, grid_y, block, order, seed, smem=0):
    """A (grid_x, grid_y) launch on an emulator that models blockIdx.x only: one grid_x launch per
    blockIdx.y, with the library's blockIdx.y / gridDim.y set from here (emu_launch leaves y alone).
    The y values run ascending, descending or shuffled with the thread order; blocks of a launch
    are independent, so running them row by row is one of the GPU's possible schedules."""
    bi, gd = EmuDim.in_dll(emu.lib, "blockIdx"), EmuDim.in_dll(emu.lib, "gridDim")
    saved = bi.y, gd.y
    ys = list(range(grid_y))
    if order == REVERSE:
        ys.reverse()
    elif order == RANDOM:
        np.random.default_rng(seed).shuffle(ys)
    try:
        for y in ys:
            bi.y, gd.y = y, grid_y
            emu.launch(kernel, prm, grid_x, block, smem, order, seed + y)
    finally:
        bi.y, gd.y = saved
