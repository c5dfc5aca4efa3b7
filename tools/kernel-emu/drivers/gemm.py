"""Emulator driver for kernels/gemm.cu: gemm_sum_batches_f32 (the fixed-order batch reduction
behind gemm_sum_batches in src/ops/gemm.rs), BITWISE against a numpy float32 port of the kernel's
arithmetic (sequential sum in batch order, then * alpha, then one fmaf(beta, out, acc)), and
within the summation error bound of a numpy f64 reference."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, bits_equal, run_main  # noqa: E402
from drivers_common import fma_f32, same  # noqa: E402

F32, U64 = C.c_float, C.c_uint64
f32 = np.float32
U = 2.0 ** -24  # f32 unit roundoff


# Mirror of kernels/gemm.h (size checked against the C struct).
class SumParams(C.Structure):
    _fields_ = [("out", P), ("part", P), ("count", U64), ("batch", U64), ("alpha", F32), ("beta", F32)]


# ---- Launch shape. This mirrors src/ops/gemm.rs (gemm_sum_batches) and must be kept in sync with
# it: one thread per output element, grid ceil(count / 256) blocks of 256 threads, no shared memory.
def launch_shape(count):
    return -(-count // 256), 256, 0


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        emu.check_struct("gemm_sum_batches_f32", SumParams)

    def run(self, part, out, alpha, beta, order=0, seed=0):
        """part (batch, count) f32, out (count,) f32 (None: a NaN-poisoned buffer) -> out after the launch."""
        batch, count = part.shape
        with Mem(self.emu) as mem:
            op = mem.new((count,)) if out is None else mem.put(out)
            prm = SumParams(out=op, part=mem.put(part), count=count, batch=batch, alpha=alpha, beta=beta)
            self.emu.launch("gemm_sum_batches_f32", prm, *launch_shape(count), order, seed)
            return mem.get(op)


def reference_f32(part, out, alpha, beta):
    """The kernel's arithmetic in float32, same order: acc = 0; acc += part[b] for b in order;
    acc *= alpha; acc = fmaf(beta, out, acc) if beta != 0."""
    acc = np.zeros(part.shape[1], f32)
    with np.errstate(all="ignore"):
        for row in part:
            acc = acc + row
        acc = acc * f32(alpha)
        if f32(beta) != 0:
            acc = fma_f32(np.full_like(acc, f32(beta)), out, acc)
    assert acc.dtype == np.float32
    return acc


def reference_f64(part, out, alpha, beta):
    """-> f64 value and a bound on the f32 kernel's error: (batch + 2) u (|alpha| sum|part| + |beta out|)."""
    p = part.astype(np.float64)
    want = float(f32(alpha)) * p.sum(0)
    mag = abs(float(f32(alpha))) * np.abs(p).sum(0)
    if f32(beta) != 0:
        want = want + float(f32(beta)) * out.astype(np.float64)
        mag = mag + abs(float(f32(beta))) * np.abs(out.astype(np.float64))
    return want, (part.shape[0] + 2) * U * mag + 1e-45


# (count, batch, alpha, beta): count around and not a multiple of 256, batch 1 and large-ish.
CASES = [(1, 1, 1.0, 0.0), (5, 1, 0.5, 1.0), (255, 3, 1.0, 0.0), (256, 2, -1.0, 0.25), (257, 7, 0.5, 0.0),
         (300, 1, 1.0, -1.5), (1000, 13, 1.0, 1.0), (1025, 4, 3.0, 0.0), (4097, 5, -2.0, 0.75), (3, 1000, 1.0, 0.0),
         (37, 1000, 0.3, -1.5), (513, 64, 1.0 / 64, 1.0), (200, 9, 0.0, 1.0), (70, 6, 1.0, 1e-30)]


def inputs(rng, count, batch, k):
    scale = [1.0, 1e3, 1e-3][k % 3]
    part = (rng.standard_normal((batch, count)) * scale).astype(f32)
    if k % 4 == 1:  # cancellation: mixed signs and magnitudes within a sum
        part *= (10.0 ** rng.integers(-3, 4, (batch, count))).astype(f32)
    out = rng.standard_normal(count).astype(f32)
    return part, out


def part_accuracy(K, ck, rng, asan=False):
    for k, (count, batch, alpha, beta) in enumerate(CASES):
        part, out = inputs(rng, count, batch, k)
        poisoned = beta == 0.0  # out is not read when beta == 0: hand the kernel NaN there
        orders = ORDERS[:1] if asan else ORDERS
        runs = [K.run(part, None if poisoned else out, alpha, beta, o, s) for o, s in orders]
        got = runs[0]
        want32 = reference_f32(part, out, alpha, beta)
        want64, bound = reference_f64(part, out, alpha, beta)
        err = np.abs(got.astype(np.float64) - want64)
        problems = []
        if not np.isfinite(got).all():
            problems.append(f"{int((~np.isfinite(got)).sum())} non-finite outputs" + (" (NaN-poisoned out read with beta 0)" if poisoned else ""))
        if not same(got, want32):
            problems.append(f"differs from the f32 port at {int((got.view(np.uint32) != want32.view(np.uint32)).sum())} elements "
                            f"(f64 error {float((err / bound).max()):.2g} x the bound)")
        if not (err <= bound).all():
            problems.append(f"f64 error {float((err / bound).max()):.2f} x the bound")
        if not all(bits_equal([got], [r]) for r in runs[1:]):
            problems.append("order-dependent")
        what = ("ASan: no report, " if asan else "") + "bitwise vs the f32 port, within the f64 bound" + \
               ("" if asan else ", bitwise equal in 3 orders") + (", out NaN-poisoned (beta 0)" if poisoned else "")
        ck.check(f"gemm_sum_batches count={count} batch={batch} alpha={alpha} beta={beta} (grid {launch_shape(count)[0]}): {what}",
                 not problems, "; ".join(problems))


def part_special(K, ck, rng):
    # The fma is fused: with beta != 0, inputs where an unfused f32 beta*out + acc rounds differently.
    count, batch = 4096, 3
    part = rng.standard_normal((batch, count)).astype(f32)
    out = rng.standard_normal(count).astype(f32)
    got = K.run(part, out, 1.0, 0.3)
    want = reference_f32(part, out, 1.0, 0.3)
    acc = part[0] + part[1] + part[2]
    unfused = f32(0.3) * out + acc
    nfused = int((unfused.view(np.uint32) != want.view(np.uint32)).sum())
    ck.check(f"gemm_sum_batches beta != 0 uses one fused fmaf ({nfused} of {count} elements differ from an unfused "
             "mul + add): bitwise vs the f32 port", same(got, want) and nfused > 0)
    # A double-rounding trap: beta*out = 2^-24 - 2^-70, acc = 1 + 2^-23. The exact sum lies just below
    # the f32 midpoint 1 + 2^-23 + 2^-24 (-> 1 + 2^-23); a plain f64 sum rounds onto the midpoint
    # (-> the even 1 + 2^-22). Checks the kernel and the reference's round-to-odd alike.
    beta = float(f32(1 + 2.0 ** -23))
    part = np.array([[1 + 2.0 ** -23]], f32)
    out = np.array([(1 - 2.0 ** -23) * 2.0 ** -24], f32)
    got = K.run(part, out, 1.0, beta)
    exact = np.array([1 + 2.0 ** -23], f32)
    naive = np.array([float(f32(beta)) * float(out[0]) + float(part[0, 0])], np.float64).astype(f32)
    ok = same(got, exact) and same(reference_f32(part, out, 1.0, beta), exact) and not same(naive, exact)
    ck.check("gemm_sum_batches fmaf double-rounding case: exactly 1 + 2^-23 (a plain f64 sum would give 1 + 2^-22)",
             ok, "" if ok else f"got {float(got[0])!r}")
    # Non-finite and signed-zero inputs: inf / NaN in part propagate; a NaN out propagates when
    # beta != 0 and is ignored when beta == 0; sums of -0 start from +0 (acc = 0.f).
    nan, inf = np.nan, np.inf
    part = np.array([[1.0, inf, nan, -0.0, inf, 3.0, 1.0, -0.0],
                     [2.0, 1.0, 1.0, -0.0, -inf, 4.0, 1.0, -0.0]], f32)
    out = np.array([nan, 1.0, 1.0, 1.0, 1.0, -0.0, inf, -0.0], f32)
    for beta in (0.0, 1.0, -2.0):
        got = K.run(part, out, 1.0, beta)
        want = reference_f32(part, out, 1.0, beta)
        expect = {0.0: [3.0, inf, nan, 0.0, nan, 7.0, 2.0, 0.0], 1.0: [nan, inf, nan, 1.0, nan, 7.0, inf, 0.0],
                  -2.0: [nan, inf, nan, -2.0, nan, 7.0, -inf, 0.0]}[beta]
        ok = same(got, want) and same(got, np.array(expect, f32))
        ck.check(f"gemm_sum_batches non-finite / signed-zero inputs, beta={beta}: bitwise vs the f32 port and {expect}",
                 ok, "" if ok else f"got {got.tolist()}")
    # alpha = 0 with beta 0 and a poisoned out: zeros (0 * finite, signed as the sum), nothing read from out.
    part = rng.standard_normal((4, 300)).astype(f32)
    got = K.run(part, None, 0.0, 0.0)
    ck.check("gemm_sum_batches alpha=0 beta=0, NaN-poisoned out: every element a zero, bitwise vs the f32 port",
             (got == 0).all() and same(got, reference_f32(part, part[0], 0.0, 0.0)))


def part_asan(K, ck, rng):
    part_accuracy(K, ck, rng, asan=True)


if __name__ == "__main__":
    run_main("gemm", __doc__, Kernels, {"accuracy": part_accuracy, "special": part_special}, {"bounds": part_asan},
             seed=20240701)
