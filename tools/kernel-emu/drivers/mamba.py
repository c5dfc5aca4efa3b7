"""Emulator driver for kernels/mamba.cu: mamba_a_fwd_f32 (a = -exp(a_log)) and mamba_a_bwd_f32
(da_log = -da * exp(a_log)), against numpy f64 within 2 f32 ulps of the result (the emulator's expf
is the host libm's, not CUDA's)."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, bits_equal, run_main  # noqa: E402

U64 = C.c_uint64
f32 = np.float32
ULPS = 2


# Mirror of kernels/mamba.h (size checked against the C struct).
class AParams(C.Structure):
    _fields_ = [("out", P), ("a_log", P), ("da", P), ("count", U64)]


# ---- Launch shape. This mirrors src/ops/mamba.rs (launch_elementwise) and must be kept in sync with
# it: one thread per element, grid ceil(count / 256) blocks of 256 threads, no shared memory.
def launch_shape(count):
    return -(-count // 256), 256, 0


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for k in ("mamba_a_fwd_f32", "mamba_a_bwd_f32"):
            emu.check_struct(k, AParams)

    def run(self, a_log, da=None, order=0, seed=0):
        """Forward when da is None (da = NULL, as the launcher passes), else backward. The output
        buffer is NaN-poisoned first."""
        n = a_log.size
        with Mem(self.emu) as mem:
            out = mem.new((n,))
            prm = AParams(out=out, a_log=mem.put(a_log), da=mem.put(da), count=n)
            self.emu.launch("mamba_a_fwd_f32" if da is None else "mamba_a_bwd_f32", prm, *launch_shape(n), order, seed)
            return mem.get(out)


def reference(a_log, da=None):
    with np.errstate(all="ignore"):
        e = np.exp(a_log.astype(np.float64))
        return -e if da is None else -da.astype(np.float64) * e


def check_ulps(got, want):
    """-> list of problems: |got - want| <= ULPS ulp(f32(want)) where want rounds to a finite f32;
    elsewhere (overflow to inf, NaN) got must equal f32(want) exactly (NaN as NaN). Any NaN where
    want is not NaN (an unwritten, poisoned element) fails."""
    with np.errstate(all="ignore"):
        w32 = want.astype(f32)
    fin = np.isfinite(w32)
    problems = []
    gn, wn = np.isnan(got), np.isnan(want)
    if not np.array_equal(gn, wn):
        problems.append(f"NaN at {int((gn != wn).sum())} elements where the reference has none / vice versa "
                        f"(unwritten poisoned elements?)")
    with np.errstate(all="ignore"):
        err = np.abs(got[fin].astype(np.float64) - want[fin])
        ulp = np.spacing(np.abs(w32[fin])).astype(np.float64)
    if (err > ULPS * ulp).any():
        problems.append(f"max error {float((err / ulp).max()):.2f} ulp > {ULPS}")
    nf = ~fin & ~wn
    if not np.array_equal(got[nf], w32[nf]):
        problems.append("non-finite results differ")
    return problems


# Counts around and not a multiple of 256, and a realistic d_inner * d_state (1536 * 16).
COUNTS = [1, 3, 255, 256, 257, 1000, 4097, 24576]


def inputs(rng, n, k):
    kind = k % 3
    if kind == 0:  # the usual init: A_log = log(1..16)
        a_log = np.log(rng.integers(1, 17, n)).astype(f32) + (rng.standard_normal(n) * 0.01).astype(f32)
    elif kind == 1:  # wide: exp from ~1e-35 to ~1e35
        a_log = rng.uniform(-80, 80, n).astype(f32)
    else:
        a_log = rng.standard_normal(n).astype(f32) * f32(3)
    da = (rng.standard_normal(n) * 10.0 ** rng.integers(-4, 4, n)).astype(f32)
    return a_log, da


def part_accuracy(K, ck, rng, asan=False):
    for k, n in enumerate(COUNTS):
        a_log, da = inputs(rng, n, k)
        for name, g in (("mamba_a_fwd_f32", None), ("mamba_a_bwd_f32", da)):
            orders = ORDERS[:1] if asan else ORDERS
            runs = [K.run(a_log, g, o, s) for o, s in orders]
            problems = check_ulps(runs[0], reference(a_log, g))
            if not all(bits_equal([runs[0]], [r]) for r in runs[1:]):
                problems.append("order-dependent")
            what = ("ASan: no report, " if asan else "") + f"within {ULPS} ulp of f64, every element written" + \
                   ("" if asan else ", bitwise equal in 3 orders")
            ck.check(f"{name} count={n} (grid {launch_shape(n)[0]}): {what}", not problems, "; ".join(problems))


def part_special(K, ck, rng):
    # Edge inputs: +-0, +-inf, NaN, overflow / underflow of exp (to -inf / -0 and subnormals), and
    # a gradient that overflows or vanishes in the product.
    a_log = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 88.7, 88.8, 100.0, -87.0, -100.0, -104.0, -110.0,
                      1.0, 2.0, 80.0, -80.0], f32)
    da = np.array([1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
                   0.0, -0.0, 1e30, 1e-30], f32)
    got_f = K.run(a_log)
    got_b = K.run(a_log, da)
    pf = check_ulps(got_f, reference(a_log))
    pb = check_ulps(got_b, reference(a_log, da))
    sign_ok = got_f[0] == -1 and got_f[3] == 0 and np.signbit(got_f[3]) and got_f[2] == -np.inf and got_b[12] == 0 \
        and np.signbit(got_b[12]) and not np.signbit(got_b[13])
    ck.check("mamba_a fwd/bwd edge inputs (+-0, +-inf, NaN, exp overflow and underflow to subnormals, product "
             "overflow / underflow, signed zeros): within 2 ulp of f64 / exact where non-finite",
             not pf and not pb and sign_ok, "; ".join(pf + pb) + ("" if sign_ok else f"; signs: fwd {got_f.tolist()} bwd {got_b.tolist()}"))


def part_asan(K, ck, rng):
    part_accuracy(K, ck, rng, asan=True)


if __name__ == "__main__":
    run_main("mamba", __doc__, Kernels, {"accuracy": part_accuracy, "special": part_special}, {"bounds": part_asan},
             seed=20240702)
