"""Emulator driver for kernels/dropout.cu: dropout_{f32,bf16} (inverted dropout with a counter-based
mask: element i is kept when u = ((mix64(mix64(seed) ^ (offset + i)) >> 41) + 0.5) / 2^23 >= p, then
out = in * scale, else out = 0; grid-stride over i < n), launched as src/ops/dropout.rs launches it,
checked bitwise against a numpy uint64 / float32 port of the mask (the Rust `keep`) and of the
kernel's arithmetic, and the port against values computed by the Rust `keep` itself."""
import ctypes as C
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, run_main  # noqa: E402
from drivers_common import (BF16_POISON, F32_POISON, Bufs, bf16_bits, bf16_bits_f64,  # noqa: E402
                            bf16_value, first_diff, same)

F32, U64 = C.c_float, C.c_uint64
f32, u64 = np.float32, np.uint64
M64 = (1 << 64) - 1
GUARD_BYTES = 256    # normal build: sentinel bytes before and after every buffer (keeps 256-byte alignment)
ALT_POISON = f32(-7777.0)                     # a finite poison for one more run: nothing may depend on it
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")


# Mirror of kernels/dropout.h (size checked against the C struct: 48 bytes, p at 40).
class DropParams(C.Structure):
    _fields_ = [("in_", P), ("out", P), ("n", U64), ("seed", U64), ("offset", U64), ("p", F32), ("scale", F32)]


assert C.sizeof(DropParams) == 48 and DropParams.p.offset == 40


# ---- Launch shape and parameters. These mirror src/ops/dropout.rs (run) and must be kept in sync
# with it: dropout and dropout_backward launch the same kernel (dropout_bf16 for bf16, else
# dropout_f32) on clamp(ceil(ceil(n / VEC) / 256), 1, 2^20) blocks of 256 (one 16-byte vector of
# VEC = 4 f32 / 8 bf16 elements per thread), no shared memory, with p as given (0 <= p < 1, checked),
# scale = 1 / (1 - p) computed in f32, seed and offset as given. The kernel grid-strides over the
# n // VEC vectors when in and out are 16-byte aligned, then over the n % VEC tail, and over single
# elements when one is not. (n > 256 * VEC * 2^20, where the clamp bites, is too large to emulate:
# the grid-stride loop is exercised with small grids passed explicitly instead.)
BLOCK = 256
MAX_GRID = 1 << 20


def vec_of(bf16):
    return 8 if bf16 else 4


def grid_of(n, bf16):
    return min(max(-(-(-(-n // vec_of(bf16))) // BLOCK), 1), MAX_GRID)


def scale_of(p):
    """src/ops/dropout.rs: `let scale = 1.0 / (1.0 - p);` in f32 (two f32 roundings)."""
    return f32(f32(1.0) / (f32(1.0) - f32(p)))


# ---- The mask port: src/ops/dropout.rs mix64 / keep (= kernels/dropout.cu) in numpy uint64 (wrapping
# adds and multiplies). u = (k + 0.5) 2^-23 with k < 2^23 is exact in f32 and in f64, so comparing it
# with p in f64 is the f32 comparison.
GAMMA, MUL1, MUL2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def mix64(z):
    z = np.asarray(z, u64)
    with np.errstate(over="ignore"):
        z = z + u64(GAMMA)
        z = (z ^ (z >> u64(30))) * u64(MUL1)
        z = (z ^ (z >> u64(27))) * u64(MUL2)
    return z ^ (z >> u64(31))


def draws(seed, offset, n):
    """k = mix64(mix64(seed) ^ (offset + i)) >> 41 for i < n (uint64; u = (k + 0.5) / 2^23)."""
    key = mix64(np.array([seed], u64))[0]
    with np.errstate(over="ignore"):
        ctr = u64(offset) + np.arange(n, dtype=u64)  # wraps past 2^64, as offset.wrapping_add(i)
    return mix64(key ^ ctr) >> u64(41)


def keep_port(seed, offset, n, p):
    return (draws(seed, offset, n).astype(np.float64) + 0.5) * 2.0 ** -23 >= float(f32(p))


def u_of(k):
    return f32((int(k) + 0.5) * 2.0 ** -23)


def keep_scalar(seed, offset, i, p):
    """A line-by-line transcription of the Rust `keep` over Python ints (masked to 64 bits) and
    np.float32 scalars: the reference of the numpy port."""
    def m(z):
        z = (z + GAMMA) & M64
        z = ((z ^ (z >> 30)) * MUL1) & M64
        z = ((z ^ (z >> 27)) * MUL2) & M64
        return z ^ (z >> 31)
    u = (f32(m(m(seed) ^ ((offset + i) & M64)) >> 41) + f32(0.5)) * f32(1.0 / 8388608.0)
    return bool(u >= f32(p))


# ---- The values port: the kernel's arithmetic, `u >= p ? snug_ld(in, i) * scale : 0.f` stored as T
# (one f32 multiply; for bf16 the bf16 input widened, the f32 product rounded to nearest even).
def value_port(bf16, x, mask, scale):
    """x: storage array (f32, or bf16 bits) -> the expected output in storage form."""
    xv = bf16_value(x) if bf16 else np.asarray(x, f32)
    with np.errstate(all="ignore"):
        v = np.where(mask, xv * f32(scale), f32(0.0)).astype(f32)
    return bf16_bits(v) if bf16 else v


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for t in ("f32", "bf16"):
            emu.check_struct(f"dropout_{t}", DropParams)

    def run(self, bf16, x, seed, offset, p, scale=None, grid=None, order=0, oseed=0, guard=0, poison=None,
            shift=()):
        """x: storage array (f32, or bf16 bits as uint16). out poisoned first (NaN, or `poison`);
        shift: the names ('in', 'out') of the buffers to start one element past a 16-byte boundary.
        -> (out in storage form, [problems: guards, input changed])"""
        n = x.size
        dt = np.uint16 if bf16 else np.float32
        if poison is None:
            fill = BF16_POISON if bf16 else F32_POISON
        else:
            fill = bf16_bits(np.array([poison]))[0] if bf16 else f32(poison)
        with Mem(self.emu) as mem:
            bufs = Bufs(mem, guard)
            pin, pout = bufs.put(x, dt, int("in" in shift)), bufs.put(np.full(n, fill, dt), dt, int("out" in shift))
            prm = DropParams(in_=pin, out=pout, n=n, seed=seed, offset=offset, p=float(f32(p)),
                             scale=float(scale_of(p) if scale is None else f32(scale)))
            self.emu.launch(f"dropout_{'bf16' if bf16 else 'f32'}", prm, grid_of(n, bf16) if grid is None else grid, BLOCK,
                            0, order, oseed)
            bad = []
            out, ok = bufs.get(pout)
            if not ok:
                bad.append("bytes written before / after out")
            x2, ok = bufs.get(pin)
            if not ok:
                bad.append("bytes written before / after in")
            if x2.tobytes() != np.ascontiguousarray(x, dt).ravel().tobytes():
                bad.append("input changed")
            return out, bad


def is_zero_bits(out, bf16):
    """+0 exactly (what the kernel stores for a dropped element), per element."""
    return (out == 0) if bf16 else (out.view(np.uint32) == 0)


def run_case(K, ck, bf16, x, seed, offset, p, label, grid=None, guard=GUARD_BYTES, asan=False, scale=None,
             mask_visible=True, alts=()):
    """Runs one case in the three orders (+ a finite poison) and checks the output bitwise against the
    port; with mask_visible (no input that could give a zero when kept), the mask read off the output
    (+0 where dropped) against keep_port separately; alts: (shift, grid) variants run once each (forward
    order) and required bitwise equal to the first run. -> (out of the first run, the port's mask)."""
    n = x.size
    mask = keep_port(seed, offset, n, p)
    sc = scale_of(p) if scale is None else f32(scale)
    want = value_port(bf16, x, mask, sc)
    runs, bad = [], []
    todo = [(o, s, None) for o, s in (ORDERS[:1] if asan else ORDERS)] + ([] if asan else [(0, 0, ALT_POISON)])
    for o, s, poison in todo:
        out, b = K.run(bf16, x, seed, offset, p, scale=scale, grid=grid, order=o, oseed=s, guard=guard, poison=poison)
        runs.append(out)
        bad += [v for v in b if v not in bad]
    out = runs[0]
    if mask_visible:
        got_mask = ~is_zero_bits(out, bf16)
        if not np.array_equal(got_mask, mask):
            d = np.flatnonzero(got_mask != mask)
            bad.append(f"mask vs the Rust keep's port: {d.size} differ (e.g. [{int(d[0])}]: kept {bool(got_mask[d[0]])},"
                       f" keep() says {bool(mask[d[0]])})")
    if not same(out, want):
        bad.append("values vs the port: " + first_diff(out, want))
    if any(r.tobytes() != out.tobytes() for r in runs[1:-1 if not asan else None]):
        bad.append("order-dependent")
    if not asan and runs[-1].tobytes() != out.tobytes():
        bad.append("depends on the output's prior contents (elements left unwritten)")
    for sh, ag in alts:
        alt, b = K.run(bf16, x, seed, offset, p, scale=scale, grid=ag if ag is not None else grid, guard=guard,
                       shift=sh)
        how = f"{'+'.join(sh)} shifted by one element (scalar path)" if sh else f"grid {ag}"
        bad += [f"{how}: {v}" for v in b]
        if alt.tobytes() != out.tobytes():
            bad.append(f"{how}: not bitwise equal to the first run: " + first_diff(alt, out))
    t = "bf16" if bf16 else "f32"
    g = grid_of(n, bf16) if grid is None else grid
    what = ("ASan: no report, " if asan else "") + ("mask and " if mask_visible else "") + \
        "values bitwise equal to the port" + \
        ("" if asan else ", guards and input intact, bitwise equal in 3 orders and under 2 poisons")
    if alts:
        what += "; " + ", ".join(f"{'+'.join(sh)} shifted by one element" if sh else f"grid {ag}" for sh, ag in alts) + \
            " bitwise equal to it"
    ck.check(f"dropout_{t} n {n} grid {g}{' (launcher)' if grid is None else ' (explicit)'} seed {seed:#x} offset "
             f"{offset:#x} p {float(f32(p)):.9g}{' scale ' + str(float(sc)) if scale is not None else ''} {label}: "
             f"{what}", not bad, "; ".join(bad) if bad else f"[{int(mask.sum())} of {n} kept]")
    return out, mask


def normal_input(rng, n, bf16):
    """N(0, 1), no zeros (a kept element is then never +0: the mask can be read off the output)."""
    x = rng.standard_normal(n).astype(f32)
    x[x == 0] = f32(1.0)
    return bf16_bits(x) if bf16 else x


# (n, grid or None for the launcher's, seed, offset, p, what)
CASES = [
    (1, None, 99, 12345, 0.15, "one element"),
    (255, None, 0, 0, 0.5, "seed 0, one partial block"),
    (256, None, M64, 0, 0.5, "seed 2^64-1, one full block"),
    (257, None, 7, M64 - 100, 0.5, "offset 2^64-101: offset + i wraps at i = 101"),
    (257, None, M64, M64, 0.15, "seed and offset 2^64-1: wraps at i = 1"),
    (100003, None, 99, 12345, 0.15, "several blocks, tail 3 in f32 and bf16 (the GPU test's seed, offset, p)"),
    (100003, None, 0x0123456789ABCDEF, 1 << 63, 0.999, "p 0.999 (about 100 kept, scale ~1000), offset 2^63"),
    (20000, 3, 42, 1 << 40, 0.3, "grid-stride"),
    (4000, 1, 5, 0, 0.5, "grid-stride on one block"),
    (24000, 7, M64, M64 - 1500, 0.7, "grid-stride, offset wrapping"),
    (lambda v: 257 * v + 1, 1, 1, 2, 0.5, "grid-stride: one block, exactly one vector in the second round, tail 1"),
]
# (An n given as a function of VEC is that function's value; the label's "rounds" are vector rounds.)


def bf16_vs_twin(ck, x, mask, sc, out, label):
    """The twin (src/ops/dropout.rs, Host) rounds the f64 product x * scale once to bf16; the kernel
    rounds the f32 product to bf16 (twice). They may differ by one bf16 ulp exactly where the f32
    product lands on a bf16 tie that the exact product is not on (double rounding): informational,
    every other element must agree."""
    xv = bf16_value(x).astype(np.float64)
    with np.errstate(all="ignore"):
        twin = np.where(mask, bf16_bits_f64(xv * float(sc)), np.uint16(0)).astype(np.uint16)
        p32 = (bf16_value(x) * f32(sc)).astype(f32)
    tie = ((p32.view(np.uint32) & 0xFFFF) == 0x8000) & (p32.astype(np.float64) != xv * float(sc)) & mask
    d = out != twin
    ok = not np.any(d & ~tie)
    ck.check(f"dropout_bf16 {label}: equal to the twin's f64 product rounded once to bf16, except double-rounding "
             f"ties of the f32 product", ok,
             f"{int((d & ~tie).sum())} unexplained differences" if not ok else
             f"[{int(d.sum())} double-rounding differences in {int(mask.sum())} kept]")


def part_mask(bf16):
    def part(K, ck, rng, asan=False):
        guard = 0 if asan else GUARD_BYTES
        for n, grid, seed, offset, p, what in CASES:
            n = n(vec_of(bf16)) if callable(n) else n
            if grid is not None:
                what += f" ({-(-(n // vec_of(bf16)) // (grid * BLOCK))} vector rounds)"
            x = normal_input(rng, n, bf16)
            out, mask = run_case(K, ck, bf16, x, seed, offset, p, what, grid=grid, guard=guard, asan=asan)
            if bf16 and not asan and n >= 1000:
                bf16_vs_twin(ck, x, mask, scale_of(p), out, f"n {n} p {p}")
        if not asan and not bf16:
            # The kept fraction (a sanity check of the port as much as of the kernel): 1 - p within 6 sd.
            for p in (0.15, 0.5, 0.999):
                k = keep_port(99, 12345, 100003, p).sum()
                sd = (100003 * p * (1 - p)) ** 0.5
                ck.check(f"kept fraction at p {p}: {k} of 100003 within 6 sd of {(1 - p) * 100003:.0f}",
                         abs(k - (1 - p) * 100003) < 6 * sd)
    return part


# ---- The vector path and its fallbacks. With in and out 16-byte aligned the kernel loads and
# stores VEC elements at a time (the mask still drawn per global element index i = VEC j + k), then
# the n % VEC tail one by one; with either one element past a 16-byte boundary it runs the scalar
# loop (the pre-vector kernel's) over every element. Each case: the launcher's grid in 3 orders and 2
# poisons, mask and values bitwise vs the port, then in, out and both shifted by one element (the
# scalar path) and, where the launcher's grid has more than one block, one block (grid-stride), each
# bitwise equal to the aligned run. Shapes: every tail length 0 .. VEC-1 after 0 (n < VEC: no vector),
# 1, 300 and 512 vectors (512 = exactly two blocks of vectors), and 100,003 (the GPU test's) on an
# offset that wraps past 2^64 inside a vector.
def vector_shapes(bf16, full=True):
    v = vec_of(bf16)
    ms = (0, 1, 300, 512) if full else (0, 1, 300)
    return [m * v + r for m in ms for r in range(v) if full or m != 300 or r in (0, v - 1)]


def part_vector(bf16, asan=False):
    def part(K, ck, rng):
        guard = 0 if asan else GUARD_BYTES
        for n in vector_shapes(bf16, full=not asan):
            x = normal_input(rng, n, bf16)
            alts = [(("in",), None), (("out",), None), (("in", "out"), None)] + \
                ([((), 1)] if grid_of(n, bf16) > 1 else [])
            run_case(K, ck, bf16, x, 0xC0FFEE, 1000 + n, 0.4, f"vector path: {n // vec_of(bf16)} x {vec_of(bf16)} + "
                     f"tail {n % vec_of(bf16)}", guard=guard, asan=asan, alts=alts)
        if asan:
            return
        # Past 2^64 in the middle of a vector (offset + i wraps at i = 6), and a larger case.
        x = normal_input(rng, 4099, bf16)
        run_case(K, ck, bf16, x, 5, M64 - 5, 0.5, "vector path, offset + i wraps at i = 6 (inside a vector)",
                 alts=[(("in",), None), ((), 1), ((), 3)])
        x = normal_input(rng, 100003, bf16)
        run_case(K, ck, bf16, x, 99, 12345, 0.15, "vector path, the GPU test's case",
                 alts=[(("out",), None), (("in", "out"), 7)])
    return part


# Counters found by search (seed 0): mix64(mix64(0) ^ c) >> 41 is 2^23 - 1 (u = 1 - 2^-24, the largest
# u, equal to the largest f32 below 1) at c = TOP_CTR, and 0 (u = 2^-24, the smallest) at c = BOTTOM_CTR.
TOP_CTR, BOTTOM_CTR = 10786582, 1612200


def part_specials(K, ck, rng, asan=False):
    guard = 0 if asan else GUARD_BYTES
    for bf16 in (False, True):
        t = "bf16" if bf16 else "f32"
        # Non-finite and edge inputs at p 0.5 and scale 2: NaN, ±inf, ±0, subnormals, f32 max, 3e38
        # (the product overflows), each kept somewhere and dropped somewhere.
        sp = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-40, 3e38, -3e38, 3.4028235e38, 1.5,
                       -2.5, 1e-38], f32)
        x = np.tile(sp, 60)
        xs = bf16_bits(x) if bf16 else x
        if bf16:  # a NaN with another payload: the kernel's store gives the canonical 0x7fff (and a dropped one 0)
            xs[1::sp.size] = 0xFFC1
        seed, offset, p = 2024, 77, 0.5
        out, mask = run_case(K, ck, bf16, xs, seed, offset, p, "NaN, ±inf, ±0, subnormal, max, overflow inputs",
                             guard=guard, asan=asan, mask_visible=False)
        if asan:
            continue
        cls = np.arange(x.size) % sp.size
        covered = all(mask[cls == c].any() and (~mask[cls == c]).any() for c in range(sp.size))
        dropped_zero = bool(np.all(is_zero_bits(out, bf16)[~mask]))
        ov = np.isfinite(sp) & (np.abs(sp.astype(np.float64)) * 2 > 3.4028235677973366e38)
        oi = ov[cls] & mask
        kv = (bf16_value(out) if bf16 else out)
        xv = bf16_value(xs) if bf16 else xs
        kept_ok = bool(np.all(np.isnan(kv[mask & np.isnan(xv)])) and
                       np.all(np.isinf(kv[mask & np.isinf(xv)]) & (np.sign(kv[mask & np.isinf(xv)]) ==
                                                                  np.sign(xv[mask & np.isinf(xv)]))) and
                       np.all(np.isinf(kv[oi])) and
                       np.all(np.signbit(kv[mask & (xv == 0)]) == np.signbit(xv[mask & (xv == 0)])))
        ck.check(f"dropout_{t} specials: every special kept somewhere and dropped somewhere; dropped ones (NaN and "
                 f"inf included) are +0; kept NaN stays NaN, ±inf stays ±inf, 3e38 * 2 overflows to inf, ±0 keeps "
                 f"its sign", covered and dropped_zero and kept_ok,
                 f"covered {covered}, dropped +0 {dropped_zero}, kept propagate {kept_ok}")

        # p = 0: scale 1, every u >= 2^-24 > 0: the identity (bf16 NaN canonical).
        x = normal_input(rng, 1000, bf16)
        x[::97] = 0xFFC1 if bf16 else np.nan
        x[5] = (0x8000 if bf16 else f32(-0.0))
        out, _ = run_case(K, ck, bf16, x, 99, 0, 0.0, "p 0 (a NaN every 97, a -0)", guard=guard, mask_visible=False)
        want = np.where(x == 0xFFC1, np.uint16(0x7FFF), x).astype(np.uint16) if bf16 else x
        ck.check(f"dropout_{t} p 0: the identity (bitwise; bf16 NaN canonical)", same(out, want), first_diff(out, want))

        # p exactly equal to an element's u: kept (u >= p, not >); p one f32 ulp above: dropped.
        x = normal_input(rng, 600, bf16)
        k = draws(31337, 5, 600)
        j = int(np.argsort(k)[300])
        pj = u_of(k[j])
        out1, m1 = run_case(K, ck, bf16, x, 31337, 5, pj, f"p = u of element {j}", guard=guard)
        pn = np.nextafter(pj, f32(1))
        out2, m2 = run_case(K, ck, bf16, x, 31337, 5, pn, f"p one ulp above u of element {j}", guard=guard)
        ck.check(f"dropout_{t} p = u[{j}] keeps element {j}, one ulp above drops it (u >= p, not u > p)",
                 m1[j] and not m2[j] and not is_zero_bits(out1, bf16)[j] and is_zero_bits(out2, bf16)[j])

        # The extremes of u: the largest p below 1 (1 - 2^-24, scale 2^24) keeps only u = 1 - 2^-24;
        # the smallest positive u = 2^-24 is kept at p = 2^-24 and dropped one ulp above.
        x = normal_input(rng, 257, bf16)
        x[100] = bf16_bits(np.array([3e38], f32))[0] if bf16 else f32(3e38)  # kept * 2^24 overflows
        x[101] = bf16_bits(np.array([1e-30], f32))[0] if bf16 else f32(1e-30)
        top = f32(1) - f32(2.0 ** -24)
        out, m = run_case(K, ck, bf16, x, 0, TOP_CTR - 100, top,
                          "largest p < 1: only the top u (element 100, 3e38 -> inf) kept", guard=guard)
        ck.check(f"dropout_{t} p 1 - 2^-24: exactly element 100 kept (u = p), as inf",
                 list(np.flatnonzero(m)) == [100] and np.isinf((bf16_value(out) if bf16 else out)[100]))
        x[101] = normal_input(rng, 1, bf16)[0]
        out, m = run_case(K, ck, bf16, x, 0, BOTTOM_CTR - 101, 2.0 ** -24, "p 2^-24: all kept (element 101 u = p)",
                          guard=guard)
        out2, m2 = run_case(K, ck, bf16, x, 0, BOTTOM_CTR - 101, np.nextafter(f32(2.0 ** -24), f32(1)),
                            "p one ulp above 2^-24: only element 101 dropped", guard=guard)
        ck.check(f"dropout_{t} smallest u: kept at p = 2^-24, the only one dropped one ulp above",
                 m.all() and list(np.flatnonzero(~m2)) == [101] and list(np.flatnonzero(is_zero_bits(out2, bf16))) == [101])

        # The kernel multiplies by the scale it is given (the launcher's 1 / (1 - p)); scale 3 at p 0.5.
        x = normal_input(rng, 300, bf16)
        run_case(K, ck, bf16, x, 8, 9, 0.5, "scale taken from the parameters", guard=guard, scale=3.0)

        # Scales 1 / (1 - p) that are not powers of two, with inputs whose f32 product needs rounding.
        for p in (0.1, 0.3, 0.4, 0.7, 0.9):
            x = normal_input(rng, 2000, bf16)
            out, mask = run_case(K, ck, bf16, x, 1234, 0, p, f"scale {float(scale_of(p)):.9g} (inexact products)",
                                 guard=guard)
            if bf16:
                bf16_vs_twin(ck, x, mask, scale_of(p), out, f"n 2000 p {p}")


# ---- The port itself: against values the Rust `keep` computed (rustc on src/ops/dropout.rs's mix64
# and keep, copied verbatim), against a scalar transcription, against splitmix64's published outputs
# for state 0, and the hash constants against those in the Rust source and the kernel.
RUST_MIX64 = [(0x0, 0xE220A8397B1DCDAF), (0x9E3779B97F4A7C15, 0x6E789E6AA1B965F4), (0x1, 0x910A2DEC89025CC1),
              (M64, 0xE4D971771B652C20)]
# (seed, offset, p, keep(seed, offset, i, p) for i = 0..63 as a bit string)
RUST_KEEP = [
    (0x0, 0x0, 0.15, "1011011111111111110111111010111111111111111011101111110111011111"),
    (0x0, 0x0, 0.5, "1011000011101011000101111010011010100100010011000101100111000101"),
    (M64, 0x0, 0.5, "0000001001111011110001111110001001000001110010101010000101010010"),
    (M64, 0x0, 0.999, "0000000000000010000000000000000000000000000000000000000000000000"),
    (0x63, 0x3039, 0.15, "1101101111010111011001011111111100111111111110110110001111111111"),
    (0x7, 0xFFFFFFFFFFFFFFD7, 0.5, "0000110001001100000100001100110001110010110001110010101100100010"),
    (0x123456789ABCDEF, 1 << 63, 0.15, "0111011111111111111111111111111110111111111110111111111111011111"),
    (M64, M64, 0.5, "0000000100111101111000111111000100100000111001010101000010101001"),
    (M64, M64, 0.999, "0000000000000001000000000000000000000000000000000000000000000000"),
]
# (seed, offset, p, over i < 100003: kept count, sum of i^2 over kept i, xor of i * GAMMA over kept i;
# wrapping u64)
RUST_FINGERPRINTS = [
    (0x63, 0x3039, 0.15, 85078, 0x101C8ABA49B48, 0x8AB848111DC3A984),
    (0x0, 0x0, 0.5, 50056, 0x983F5F397545, 0x6585887ADE5E393D),
    (M64, 0xFFFFFFFFFFFF3CAF, 0.999, 99, 0x4C9F5C28E7, 0x6139860FA00A356F),
    (0x7, 1 << 63, 0.0, 100003, 0x12F300913F835, 0x11835581B474F59F),
    (0x7B, 0x0, 0.99999994, 0, 0x0, 0x0),
    (0x123456789ABCDEF, 0x2A, 0.3, 69781, 0xD30567B2102B, 0xB4EAEEEE37C15DFB),
]


def part_reference(K, ck, rng):
    got = [int(mix64(np.array([z], u64))[0]) for z, _ in RUST_MIX64]
    ck.check("reference: mix64 port = the Rust mix64 (incl. splitmix64's first two outputs for state 0)",
             got == [w for _, w in RUST_MIX64], str([hex(v) for v in got]))
    bad = []
    for seed, off, p, bits in RUST_KEEP:
        s = "".join("1" if b else "0" for b in keep_port(seed, off, 64, p))
        if s != bits:
            bad.append(f"({seed:#x}, {off:#x}, {p}): {s}")
    ck.check(f"reference: keep port = the Rust keep on {len(RUST_KEEP)} x 64 elements (seeds 0 / 2^64-1, offsets "
             f"wrapping)", not bad, "; ".join(bad))
    bad = []
    for seed, off, p, cnt, ssq, xr in RUST_FINGERPRINTS:
        m = keep_port(seed, off, 100003, p)
        i = np.flatnonzero(m).astype(u64)
        with np.errstate(over="ignore"):
            s2 = int(np.sum(i * i, dtype=u64)) if i.size else 0
            x2 = int(np.bitwise_xor.reduce(i * u64(GAMMA))) if i.size else 0
        if (int(m.sum()), s2, x2) != (cnt, ssq, xr):
            bad.append(f"({seed:#x}, {off:#x}, {p}): {int(m.sum())} {s2:#x} {x2:#x}")
    ck.check("reference: keep port = the Rust keep over 100003 elements (count and two hashes of the kept indices; "
             "p 0, 0.15, 0.3, 0.5, 0.999, 1 - 2^-24)", not bad, "; ".join(bad))
    bad = []
    for seed, off, p in [(0, 0, 0.5), (M64, M64 - 3, 0.15), (99, 12345, 0.999), (123456789, 1 << 63, 0.3)]:
        m = keep_port(seed, off, 16, p)
        if [keep_scalar(seed, off, i, p) for i in range(16)] != list(m):
            bad.append(f"({seed:#x}, {off:#x}, {p})")
    ck.check("reference: keep port = a scalar Python-int / np.float32 transcription of the Rust keep", not bad,
             "; ".join(bad))
    top, bottom = draws(0, TOP_CTR, 1)[0], draws(0, BOTTOM_CTR, 1)[0]
    ck.check("reference: the searched counters give the extreme draws (k = 2^23 - 1 and 0)",
             int(top) == (1 << 23) - 1 and int(bottom) == 0 and u_of(top) == f32(1) - f32(2.0 ** -24)
             and u_of(bottom) == f32(2.0 ** -24))
    # The constants and shifts of the port, in the Rust and CUDA sources (the emulator cannot see the
    # Rust code; a hash changed on one side only shows here without a GPU).
    # The hash lives in src/ops/mod.rs (`mix64`) and kernels/rng.cuh (`snug_mix64`); the draw's shift
    # and 2^23 in src/ops/dropout.rs and kernels/dropout.cu.
    want = {GAMMA, MUL1, MUL2}
    probs = []
    for rel, fn in (("src/ops/mod.rs", r"fn mix64\(.*?\n\}"), ("kernels/rng.cuh", r"snug_mix64\(uint64_t z\) \{.*?\n\}"),
                    ("src/ops/dropout.rs", None), ("kernels/dropout.cu", None)):
        try:
            src = open(os.path.join(ROOT, rel)).read()
        except OSError as e:
            probs.append(f"{rel}: {e}")
            continue
        if fn is not None:
            m = re.search(fn, src, re.S)
            body = m.group(0) if m else ""
            consts = {int(h.replace("_", ""), 16) for h in re.findall(r"0x([0-9A-Fa-f_]{16,})", body)}
            shifts = [int(s) for s in re.findall(r">>\s*(\d+)", body)]
            if consts != want or sorted(shifts) != [27, 30, 31]:
                probs.append(f"{rel}: constants {sorted(hex(c) for c in consts)}, shifts {sorted(shifts)}")
        else:
            shifts = [int(s) for s in re.findall(r">>\s*(\d+)", src)]
            if shifts != [41] or not re.search(r"8_?388_?608", src) or "mix64(" not in src:
                probs.append(f"{rel}: shifts {shifts}, 2^23 {bool(re.search(r'8_?388_?608', src))}")
    ck.check("reference: the port's hash constants and shifts (30, 27, 31) are those of mix64 in src/ops/mod.rs and "
             "kernels/rng.cuh; the draw's shift 41 and 2^23 those in src/ops/dropout.rs and kernels/dropout.cu",
             not probs, "; ".join(probs))
    # The bf16 twin rounding helper on known values.
    known = [(1.0, 0x3F80), (1.0 + 2 ** -8, 0x3F80), (1.0 + 2 ** -8 + 2 ** -40, 0x3F81), (1.0 + 3 * 2 ** -8, 0x3F82),
             (-(1.0 + 2 ** -7), 0xBF81), (0.0, 0), (-0.0, 0x8000), (float("inf"), 0x7F80), (float("nan"), 0x7FFF)]
    got = bf16_bits_f64(np.array([v for v, _ in known]))
    ck.check("reference: f64 -> bf16 rounding once (ties to even, a tie broken 2^-40 above, signed zero, inf, NaN)",
             got.tolist() == [b for _, b in known], f"got {[hex(v) for v in got.tolist()]}")
    ck.check("reference: grid_of = clamp(ceil(ceil(n / VEC) / 256), 1, 2^20), VEC 4 (f32) / 8 (bf16)",
             [grid_of(n, False) for n in (0, 1, 1024, 1025, 100003, 1 << 30, (1 << 30) + 1, 1 << 40)] ==
             [1, 1, 1, 2, 98, 1 << 20, 1 << 20, 1 << 20] and
             [grid_of(n, True) for n in (0, 1, 2048, 2049, 100003, 1 << 31, (1 << 31) + 1, 1 << 40)] ==
             [1, 1, 1, 2, 49, 1 << 20, 1 << 20, 1 << 20])


def part_asan(K, ck, rng):
    part_mask(False)(K, ck, rng, asan=True)
    part_mask(True)(K, ck, rng, asan=True)
    part_specials(K, ck, rng, asan=True)
    part_vector(False, asan=True)(K, ck, rng)
    part_vector(True, asan=True)(K, ck, rng)


if __name__ == "__main__":
    run_main("dropout", __doc__, Kernels,
             {"mask_f32": part_mask(False), "mask_bf16": part_mask(True), "specials": part_specials,
              "vector_f32": part_vector(False), "vector_bf16": part_vector(True), "reference": part_reference},
             {"bounds": part_asan}, seed=20240917)
