"""Emulator driver for kernels/grad_norm.cu: grad_norm_partial_{f32,bf16} (one launch per 64 non-empty
tensors, their table by value; per 4096-element chunk of a tensor, the block found by a binary search
over the table's first chunks, thread t sums the squares of elements t, t + 256, ... in order with
fmaf, then a fixed 256-wide shared tree -> one f32 partial per chunk) and grad_norm_final_f32 (one block: thread t sums partials t,
t + 256, ... in order, the tree, sqrtf -> out[0]), launched as src/ops/grad_norm.rs launches them,
BITWISE against a numpy float32 port of the kernels' arithmetic (an exactly rounded fmaf) and against
numpy f64 sqrt(sum of squares)."""
import ctypes as C
import math
import os
import sys
from fractions import Fraction

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, run_main  # noqa: E402
from drivers_common import F32_POISON, Bufs, bf16_bits, bf16_round, first_diff, fma_f32, same, tree  # noqa: E402

U64 = C.c_uint64
f32 = np.float32
U = 2.0 ** -24       # f32 unit roundoff
NORM_TOL = 1e-6      # norm vs f64: |got - want| <= NORM_TOL sqrt(n) want (n the elements over all tensors)
GUARD_BYTES = 256    # normal build: sentinel bytes before and after every buffer (keeps 256-byte alignment)
ALT_POISON = f32(-7777.0)                     # a finite poison for one more run: nothing may depend on it


# Mirrors of kernels/grad_norm.h (sizes checked against the C structs: 1296 and 32 bytes).
MAX_TENSORS = 64  # SNUG_GRAD_NORM_MAX_TENSORS


class GnMultiParams(C.Structure):
    _fields_ = [("x", P * MAX_TENSORS), ("n", U64 * MAX_TENSORS), ("part", P),
                ("first", C.c_uint32 * (MAX_TENSORS + 1)), ("count", C.c_uint32)]


class GnParams(C.Structure):
    _fields_ = [("x", P), ("part", P), ("out", P), ("n", U64)]


assert C.sizeof(GnMultiParams) == 1296 and GnMultiParams.n.offset == 512 and GnMultiParams.part.offset == 1024 \
    and GnMultiParams.first.offset == 1032 and GnMultiParams.count.offset == 1292
assert C.sizeof(GnParams) == 32 and GnParams.n.offset == 24


# ---- Launch shapes and parameters. These mirror src/ops/grad_norm.rs and must be kept in sync with
# it: workspace_bytes = 4 sum ceil(len / 4096) (the workspace may be longer); the non-empty tensors in
# order (empty ones: no entry, no partial) go into tables of up to 64 (a new table also before the
# launch's blocks would pass i32::MAX), entry k: x = the tensor, n = len, first = the launch's blocks
# before it; each table: grad_norm_partial_{t} on first[count] = its tensors' ceil(len / 4096) chunks
# in blocks of 256, no shared memory, part = workspace + start (f32 elements: the partials before the
# launch), unused entries zero. Then grad_norm_final_f32 on 1 block of 256 with x NULL, part = the
# workspace, out = the norm, n = all partials (also when 0: every tensor empty: no partial launch).
# (A tensor of 2^43 elements, where the launcher's i32 grid checks bite, is too large to emulate.)
CHUNK = 4096  # SNUG_GRAD_NORM_CHUNK
BLOCK = 256
I32_MAX = 2 ** 31 - 1


def blocks_of(n):
    return -(-n // CHUNK)


def workspace_len(lens):
    return sum(blocks_of(n) for n in lens)


def launch_plan(lens):
    """-> [(start, [(tensor index, first), ...], blocks)]: the partial launches of grad_norm()."""
    plan, start, off, table = [], 0, 0, []
    for i, n in enumerate(lens):
        if n == 0:
            continue
        b = blocks_of(n)
        if len(table) == MAX_TENSORS or off - start + b > I32_MAX:
            plan.append((start, table, off - start))
            start, table = off, []
        table.append((i, off - start))
        off += b
    if table:
        plan.append((start, table, off - start))
    return plan


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for k in ("grad_norm_partial_f32", "grad_norm_partial_bf16"):
            emu.check_struct(k, GnMultiParams)
        emu.check_struct("grad_norm_final_f32", GnParams)

    def run(self, bf16, tensors, order=0, seed=0, guard=0, poison=None, ws_extra=0):
        """tensors: storage arrays (f32, or bf16 bits as uint16; empty ones allowed). The workspace
        (workspace_len + ws_extra f32) and the norm are poisoned first (NaN, or `poison`); the launches
        of grad_norm(). -> (workspace, norm (1,), [problems: guards, inputs changed])"""
        dt = np.uint16 if bf16 else np.float32
        fill = F32_POISON if poison is None else f32(poison)
        lens = [int(np.asarray(t).size) for t in tensors]
        with Mem(self.emu) as mem:
            bufs = Bufs(mem, guard)
            pts = [bufs.put(t, dt) for t in tensors]
            pws = bufs.put(np.full(workspace_len(lens) + ws_extra, fill, f32), np.float32)
            pout = bufs.put(np.full(1, fill, f32), np.float32)
            kernel = f"grad_norm_partial_{'bf16' if bf16 else 'f32'}"
            for j, (start, table, blocks) in enumerate(launch_plan(lens)):
                prm = GnMultiParams(part=pws + 4 * start, count=len(table))
                for k, (i, first) in enumerate(table):
                    prm.x[k], prm.n[k], prm.first[k] = pts[i], lens[i], first
                prm.first[len(table)] = blocks
                self.emu.launch(kernel, prm, blocks, BLOCK, 0, order, seed + j)
            prm = GnParams(x=None, part=pws, out=pout, n=workspace_len(lens))
            self.emu.launch("grad_norm_final_f32", prm, 1, BLOCK, 0, order, seed + 1000)
            bad = []
            ws, ok = bufs.get(pws)
            if not ok:
                bad.append("bytes written before / after the workspace")
            out, ok = bufs.get(pout)
            if not ok:
                bad.append("bytes written before / after the norm")
            for i, (p, t) in enumerate(zip(pts, tensors)):
                got, ok = bufs.get(p)
                if not ok:
                    bad.append(f"bytes written before / after tensor {i}")
                if got.tobytes() != np.ascontiguousarray(t, dt).ravel().tobytes():
                    bad.append(f"tensor {i} changed")
            return ws, out, bad


# ---- The port: the kernels' float32 arithmetic, same order. fmaf(v, v, acc) exactly rounded (fma_f32):
# v*v is exact in f64 (48 bits), the f64 sum is rounded to odd (TwoSum error term, then the last bit
# forced to 1 when inexact), which makes the final rounding to f32 exact (53 >= 24 + 2; a plain f64
# sum can double-round: see part `reference`).
def partial_port(xv, fused=True):
    """xv: (n,) f32 values -> (ceil(n / 4096),) f32 partials. Element c 4096 + j 256 + t is thread t's
    j-th term of chunk c. The chunk is zero-padded to 4096: fmaf(0, 0, acc) == acc bitwise for every
    acc (acc is never -0: it starts at +0 and adds squares). fused=False: f32(v v) + acc instead (to
    show that the kernel's fma is really fused)."""
    n = xv.size
    ch = blocks_of(n)
    pad = np.zeros(ch * CHUNK, f32)
    pad[:n] = xv
    a = pad.reshape(ch, CHUNK // BLOCK, BLOCK)
    acc = np.zeros((ch, BLOCK), f32)
    with np.errstate(all="ignore"):
        for j in range(CHUNK // BLOCK):
            acc = fma_f32(a[:, j], a[:, j], acc) if fused else a[:, j] * a[:, j] + acc
    return tree(acc)


def final_port(parts):
    """parts: (P,) f32 -> the norm (f32): thread t sums parts t, t + 256, ... in order from +0, the
    tree, sqrtf (correctly rounded on both sides)."""
    acc = np.zeros(BLOCK, f32)
    with np.errstate(all="ignore"):
        for r in range(0, parts.size, BLOCK):
            seg = parts[r:r + BLOCK]
            acc[:seg.size] = acc[:seg.size] + seg
        return np.sqrt(tree(acc))


def port(values, fused=True):
    """values: list of f32 value arrays -> (partials in tensor order, norm (1,) f32)."""
    parts = [partial_port(v, fused) for v in values if v.size]
    parts = np.concatenate(parts) if parts else np.zeros(0, f32)
    return parts, np.array([final_port(parts)], f32)


def reference(values):
    """-> (the f64 norm, a bound on the kernels' relative error for inputs without under- or overflow:
    the longest rounding chain is 16 fmas + 8 tree adds (partial) + ceil(P / 256) adds + 8 tree adds
    (final), each at most u relative on nonnegative terms, halved by the sqrt, plus the sqrt's u)."""
    s = sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in values)
    chain = CHUNK // BLOCK + 8 + -(-sum(blocks_of(v.size) for v in values) // BLOCK) + 8
    return math.sqrt(s), (chain / 2 + 1) * U * 1.01


def check_case(K, ck, bf16, values, label, guard, asan, expect=None, f64=True, ws_extra=0):
    """values: list of f32 value arrays (bf16-representable for bf16). Runs the launcher's sequence in
    the three orders (ASan: forward only) and once under a finite poison; the workspace's partials and
    the norm bitwise vs the port, the norm vs f64 (f64) and vs `expect` (bitwise, when given)."""
    tensors = [bf16_bits(v) if bf16 else v for v in values]
    nparts = workspace_len([v.size for v in values])
    runs, bad = [], []
    todo = [(o, s, None) for o, s in (ORDERS[:1] if asan else ORDERS)] + ([] if asan else [(0, 0, ALT_POISON)])
    for o, s, poison in todo:
        ws, out, b = K.run(bf16, tensors, order=o, seed=s, guard=guard, poison=poison, ws_extra=ws_extra)
        runs.append((ws, out))
        bad += [x for x in b if x not in bad]
    ws, out = runs[0]
    pparts, pnorm = port(values)
    if not same(ws[:nparts], pparts):
        bad.append("partials vs the float32 port: " + first_diff(ws[:nparts], pparts))
    if not same(out, pnorm):
        bad.append("norm vs the float32 port: " + first_diff(out, pnorm))
    if ws_extra and ws[nparts:].tobytes() != np.full(ws_extra, F32_POISON, f32).tobytes():
        bad.append("workspace past the partials written")
    if expect is not None and not same(out, np.array([expect], f32)):
        bad.append(f"norm {float(out[0])!r}, expected {expect!r}")
    if any(r[0].tobytes() != ws.tobytes() or r[1].tobytes() != out.tobytes() for r in runs[1:len(ORDERS)]):
        bad.append("order-dependent")
    if not asan:
        ws2, out2 = runs[-1]
        if ws2[:nparts].tobytes() != ws[:nparts].tobytes() or out2.tobytes() != out.tobytes():
            bad.append("depends on the outputs' prior contents (a partial left unwritten, or a poisoned one read)")
    detail = ""
    if f64:
        want, rel = reference(values)
        n = sum(v.size for v in values)
        tol = NORM_TOL * math.sqrt(max(n, 1)) * want
        err = abs(float(out[0]) - want)
        if not np.isfinite(out[0]) or err > tol:
            bad.append(f"norm {float(out[0])!r} vs f64 {want!r}: error {err:.3g} > {NORM_TOL:g} sqrt(n) |want| = {tol:.3g}")
        if not np.isfinite(out[0]) or err > rel * want:
            bad.append(f"norm {float(out[0])!r} vs f64 {want!r}: relative error {err / max(want, 1e-300):.3g} over the "
                       f"rounding-chain bound {rel:.3g}")
        detail = f"[rel err {err / max(want, 1e-300):.2g}; chain bound {rel:.2g}, {NORM_TOL:g} sqrt(n) = {tol / max(want, 1e-300):.2g}]"
    t = "bf16" if bf16 else "f32"
    what = ("ASan: no report, " if asan else "") + "partials and norm bitwise equal to the float32 port" + \
        (f", within the rounding-chain bound and {NORM_TOL:g} sqrt(n) of f64" if f64 else "") + \
        ("" if asan else ", outputs poisoned, guards and inputs intact, bitwise equal in 3 orders and under 2 poisons")
    ck.check(f"grad_norm_{t} {label}: {what}", not bad, "; ".join(bad) if bad else detail)


def label_of(lens, ws_extra=0):
    parts = workspace_len(lens)
    shown = str(lens) if len(lens) <= 10 else f"[{len(lens)} tensors of 0..{max(lens)}, {lens.count(0)} empty]"
    launches = [len(t) for _, t, _ in launch_plan(lens)]
    return (f"lens {shown} ({parts} partial{'s' if parts != 1 else ''}, {len(launches)} partial launch"
            f"{'es' if len(launches) != 1 else ''}" + (f" of {launches} tensors" if len(launches) > 1 else "") +
            (f", workspace {ws_extra} longer" if ws_extra else "") + ")")


# (tensor lengths, extra workspace): single tensors around the chunk and the block size, several tensors
# with empty ones first, inside and last, every tensor empty (the final pass over 0 partials: norm +0),
# 320 small tensors (306 partials: the final pass's second round, threads 0..49; 5 partial launches),
# exactly one table (64 tensors), one more (65: a second launch of one tensor), and 150 tensors of
# 1..9001 elements (1, 2 or 3 chunks, rarely a multiple of 4096) with every 7th empty (129 non-empty:
# launches of 64, 64 and 1 tensors: 110, 97 and 2 blocks).
MANY = [(i * 37) % 23 for i in range(320)]
TABLE64 = [1 + (i * 611) % 5000 for i in range(64)]
TABLE65 = TABLE64 + [4097]
MIXED = [0 if i % 7 == 3 else 1 + (i * 1237) % 9001 for i in range(150)]
SHAPES = [([1], 0), ([255], 0), ([256], 0), ([4095], 0), ([4096], 0), ([4097], 0), ([70000], 0),
          ([0, 5000, 0, 4096, 1, 9000, 255, 0], 3), ([0, 17], 0), ([3, 70000, 4097], 0), (MANY, 1),
          (TABLE64, 0), (TABLE65, 0), (MIXED, 2)]
ASAN_SHAPES = [s for s, _ in SHAPES] + [[0], [0, 0]]


def inputs(rng, lens, k, bf16):
    """zero-mean, scale per tensor 1, 1e-3 or 1e3, and every few cases mixed magnitudes 10^U(-3, 3)."""
    vals = []
    for i, n in enumerate(lens):
        v = rng.standard_normal(n) * [1.0, 1e-3, 1e3][(k + i) % 3]
        if (k + i) % 4 == 1:
            v *= 10.0 ** rng.uniform(-3, 3, n)
        v = v.astype(f32)
        vals.append(bf16_round(v) if bf16 else v)
    return vals


def part_dtype(K, ck, rng, bf16, asan=False):
    guard = 0 if asan else GUARD_BYTES
    shapes = [(s, 0) for s in ASAN_SHAPES] if asan else SHAPES
    for k, (lens, extra) in enumerate(shapes):
        vals = inputs(rng, lens, k, bf16)
        check_case(K, ck, bf16, vals, label_of(lens, extra), guard, asan, f64=any(lens), ws_extra=extra,
                   expect=None if any(lens) else 0.0)
    if asan:
        return
    check_case(K, ck, bf16, [np.zeros(0, f32), np.zeros(0, f32)], "lens [0, 0]: every tensor empty, final over 0 "
               "partials (norm +0)", GUARD_BYTES, False, expect=0.0, f64=False)
    check_case(K, ck, bf16, [np.zeros(0, f32)], "lens [0], workspace 2 longer: nothing read (norm +0)",
               GUARD_BYTES, False, expect=0.0, f64=False, ws_extra=2)
    # 70,000 elements where the last chunk's thread 111 (element 69,999) holds the only nonzero value:
    # the chunk and stride indexing (a norm of exactly |v|).
    v = np.zeros(70000, f32)
    v[69999] = f32(-3.0)
    check_case(K, ck, bf16, [v], "lens [70000], one nonzero element (the last): exactly 3", GUARD_BYTES, False,
               expect=3.0)


def part_f32(K, ck, rng):
    part_dtype(K, ck, rng, False)


def part_bf16(K, ck, rng):
    part_dtype(K, ck, rng, True)


def part_special(K, ck, rng):
    inf, nan = np.inf, np.nan
    base = rng.standard_normal(5000).astype(f32)
    for bf16 in (False, True):
        b = bf16_round(base) if bf16 else base

        def with_(i, x):
            v = b.copy()
            v[i] = x
            return v

        cases = [
            ([with_(4999, inf), b[:7]], inf, "+inf in the second chunk of tensor 0: norm +inf"),
            ([b[:7], with_(3, -inf)], inf, "-inf in tensor 1: norm +inf (its square)"),
            ([with_(100, nan), b[:300]], nan, "NaN in tensor 0: norm NaN"),
            ([with_(0, inf), with_(4500, nan)], nan, "+inf in tensor 0 and NaN in tensor 1: norm NaN"),
            ([with_(0, inf), with_(1, -inf)], inf, "+inf and -inf in different tensors: norm +inf (squares, no inf - inf)"),
            ([np.full(300, -0.0, f32), np.zeros(5, f32)], 0.0, "signed zeros only: norm +0"),
            ([np.array([3.0, 4.0], f32)], 5.0, "[3, 4]: exactly 5"),
            ([np.array([1.5e19, 1.5e19], f32)], inf,
             "two 1.5e19 (squares 2.25e38 each, the sum past f32's max): +inf, the f64 twin ~2.1e19 (f32 sums)"),
            ([np.full(4097, 1e18, f32)], inf, "4097 x 1e18 (per-thread sums finite; the final sum overflows): +inf"),
            ([np.full(1000, 1e-25, f32)], 0.0,
             "1000 x 1e-25 (squares below f32's subnormals): +0, the f64 twin ~3.2e-24 (f32 sums)"),
            ([np.array([1.8e19], f32)], None, "1.8e19 (its square 3.24e38 < f32 max): finite"),
        ]
        for vals, expect, what in cases:
            vals = [bf16_round(v) if bf16 else v for v in vals]
            check_case(K, ck, bf16, vals, what, GUARD_BYTES, False, expect=expect, f64=expect is None)
    # The fma is fused: on random data the kernel's partials equal the fused port, and an unfused port
    # (f32(v v) + acc) differs from it in some of them.
    vals = [rng.standard_normal(n).astype(f32) for n in (70000, 9000)]
    ws, out, bad = K.run(False, vals)
    fused, _ = port(vals)
    unfused, _ = port(vals, fused=False)
    nd = int((fused.view(np.uint32) != unfused.view(np.uint32)).sum())
    ck.check(f"grad_norm_f32 fmaf is fused: partials bitwise equal to the fused port, {nd} of {fused.size} differ from "
             "an unfused mul + add", same(ws, fused) and nd > 0 and not bad, "; ".join(bad))
    # A double-rounding trap inside the partial: element 0 = A (acc = fmaf(A, A, 0)), element 256 = V
    # (thread 0 again: fmaf(V, V, acc)). The exact V^2 + acc lies within 2^-54 of an f32 midpoint, so
    # a plain f64 sum lands on the midpoint and rounds to even the wrong way; the correct fmaf does not.
    v = np.zeros(257, f32)
    v[0], v[256] = TRAP_A, TRAP_V
    ws, out, bad = K.run(False, [v], guard=GUARD_BYTES)
    exact = TRAP_WANT
    naive = f32(float(TRAP_V) * float(TRAP_V) + float(exact_f32(Fraction(float(TRAP_A)) ** 2)))
    ok = same(ws, np.array([exact], f32)) and same(partial_port(v), np.array([exact], f32)) and naive != exact and not bad
    ck.check(f"grad_norm_f32 fmaf double-rounding case: partial exactly {float(exact)!r} (a plain f64 sum gives "
             f"{float(naive)!r})", ok, f"got {float(ws[0])!r}; " + "; ".join(bad) if not ok else "")


# The trap's inputs (found by search: V^2 = m^2 2^-48 with m^2 mod 2^24 = 2^23 - 7, A^2 rounded to just
# above 7 2^-48) and its exact result, checked in part `reference` with fractions.
TRAP_V = np.uint32(0x3F58C0B5).view(f32)   # 0xd8c0b5 2^-24
TRAP_A = f32(1.5769907690810214e-07)
TRAP_WANT = f32(0.7168847918510437)


def exact_f32(fr):
    """A Fraction in f32's normal range (or 0) -> the f32 nearest to it, ties to even (exactly)."""
    c = f32(float(fr))
    cands = [c, np.nextafter(c, f32(np.inf)), np.nextafter(c, f32(-np.inf))]
    return min(cands, key=lambda x: (abs(Fraction(float(x)) - fr), int(np.array(x).view(np.uint32)) & 1))


# ---- The port and the reference themselves: the vectorised fma against exact rational arithmetic,
# the port against a scalar loop of the kernels' code (Fraction-exact fmaf), the trap's constants.
def part_reference(K, ck, rng):
    a = (rng.standard_normal(3000) * 10.0 ** rng.uniform(-6, 6, 3000)).astype(f32)
    c = (rng.standard_normal(3000) * 10.0 ** rng.uniform(-6, 6, 3000)).astype(f32)
    got = fma_f32(a, a, c)
    want = np.array([exact_f32(Fraction(float(x)) ** 2 + Fraction(float(y))) for x, y in zip(a, c)], f32)
    ck.check("reference: fma_f32(a, a, c) equals exact rational fmaf, rounded once (3000 random pairs over 1e-6..1e6)",
             same(got, want), first_diff(got, want))
    x = rng.standard_normal(4100).astype(f32)
    x[::7] *= f32(1e-3)
    parts, norm = port([x])
    loop = []
    for ch in range(2):
        accs = []
        for t in range(BLOCK):
            acc = f32(0)
            i = ch * CHUNK + t
            while i < min((ch + 1) * CHUNK, x.size):
                acc = exact_f32(Fraction(float(x[i])) ** 2 + Fraction(float(acc)))
                i += BLOCK
            accs.append(acc)
        red = list(accs)
        s = BLOCK // 2
        while s:
            for t in range(s):
                red[t] = f32(red[t] + red[t + s])
            s //= 2
        loop.append(red[0])
    acc = [f32(0)] * BLOCK
    for i, p in enumerate(loop):
        acc[i % BLOCK] = f32(acc[i % BLOCK] + p)
    s = BLOCK // 2
    while s:
        for t in range(s):
            acc[t] = f32(acc[t] + acc[t + s])
        s //= 2
    lnorm = np.sqrt(acc[0])
    ok = same(parts, np.array(loop, f32)) and same(norm, np.array([lnorm], f32))
    ck.check("reference: the port equals a scalar loop of the kernels' code (4100 elements, 2 chunks)", ok,
             "" if ok else f"port {parts.tolist()} {norm.tolist()}, loop {loop} {lnorm}")
    acc = exact_f32(Fraction(float(TRAP_A)) ** 2)
    exact = exact_f32(Fraction(float(TRAP_V)) ** 2 + Fraction(float(acc)))
    naive = f32(float(TRAP_V) * float(TRAP_V) + float(acc))
    mid = (Fraction(float(exact)) + Fraction(float(naive))) / 2
    gap = abs(Fraction(float(TRAP_V)) ** 2 + Fraction(float(acc)) - mid)
    ok = (exact == TRAP_WANT and naive != exact and abs(float(np.float32(exact).view(np.uint32)) -
          float(np.float32(naive).view(np.uint32))) == 1 and gap < Fraction(1, 2 ** 54)
          and fma_f32(np.array([TRAP_V]), np.array([TRAP_V]), np.array([acc], f32))[0] == exact)
    ck.check("reference: the double-rounding trap (exact fmaf vs a plain f64 sum one ulp apart, the exact value "
             f"{float(gap):.2g} from their midpoint; fma_f32 exact)", ok, f"exact {exact!r} naive {naive!r} gap {float(gap):.3g}")


def part_asan(K, ck, rng):
    part_dtype(K, ck, rng, False, asan=True)
    part_dtype(K, ck, rng, True, asan=True)


if __name__ == "__main__":
    run_main("grad_norm", __doc__, Kernels,
             {"f32": part_f32, "bf16": part_bf16, "special": part_special, "reference": part_reference},
             {"bounds": part_asan}, seed=20241001)
