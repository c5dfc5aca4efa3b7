"""Emulator driver for kernels/elementwise.cu: elementwise_act_fwd_{f32,bf16} (y = f(x)),
elementwise_act_bwd_{f32,bf16} (dx = dy f'(x)) for the seven activations, and
elementwise_axpby_{f32,bf16} (out = alpha a + beta b, b optional), against numpy f64 ports of the
Rust twin (src/ops/elementwise.rs Act::f / Act::df, PyTorch definitions) and, for axpby, bitwise
against a numpy float32 port of the kernel's arithmetic."""
import ctypes as C
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, bits_equal, run_main  # noqa: E402
from drivers_common import F32_POISON, Bufs, bf16_bits, bf16_round, bf16_value, fma_f32, same  # noqa: E402

F32, U32, U64 = C.c_float, C.c_uint32, C.c_uint64
f32 = np.float32
U = 2.0 ** -24       # f32 unit roundoff
RTOL = 4e-6          # f32 activations: |err| <= RTOL max(|want|, FLOOR) (tests/elementwise.rs gpu_matches_twin)
FLOOR = 1e-2
CANCEL_ULPS = 4      # backward: plus CANCEL_ULPS u (size of the terms of f' that cancel at its root), see tolerance()
BF16_TOL = 1e-2      # bf16 activations: |err| <= BF16_TOL max(|want|, FLOOR)
GUARD_BYTES = 256    # normal build: sentinel bytes before and after every buffer (keeps 256-byte alignment)
ALT_POISON = f32(-7777.0)                     # a finite poison for one more run: nothing may depend on it

# Activation codes (kernels/elementwise.h SNUG_ACT_*, src/ops/elementwise.rs Act::code).
ACTS = ["relu", "gelu_tanh", "gelu_erf", "silu", "tanh", "softplus", "sigmoid"]


# Mirror of kernels/elementwise.h (size checked against the C struct: 48 bytes, act at 32).
class EwParams(C.Structure):
    _fields_ = [("a", P), ("b", P), ("out", P), ("n", U64), ("act", U32), ("alpha", F32), ("beta", F32),
                ("reserved", U32)]


# ---- Launch shape. This mirrors src/ops/elementwise.rs (launch) and must be kept in sync with it:
# 256-thread blocks, one 16-byte vector (VEC = 4 f32 / 8 bf16 elements) per thread: grid
# clamp(ceil(ceil(n / VEC) / 256), 1, 2^20), no shared memory; the kernels loop grid-stride over the
# n // VEC vectors when every pointer is 16-byte aligned, then over the n % VEC tail, and over single
# elements when a pointer is not. (n > 256 * VEC * 2^20, where the clamp bites, is too large to
# emulate: the grid-stride loop is exercised with small grids passed explicitly instead.) act_fwd
# passes b NULL, alpha = beta = 0; act_bwd passes b = dy; axpby passes act 0 and b NULL when b is
# None, whatever beta.
BLOCK = 256
MAX_GRID = 1 << 20


def vec_of(bf16):
    return 8 if bf16 else 4


def grid_of(n, bf16):
    return min(max(-(-(-(-n // vec_of(bf16))) // BLOCK), 1), MAX_GRID)


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for w in ("act_fwd", "act_bwd", "axpby"):
            for t in ("f32", "bf16"):
                emu.check_struct(f"elementwise_{w}_{t}", EwParams)

    def run(self, which, bf16, a, b=None, act=0, alpha=0.0, beta=0.0, grid=None, order=0, seed=0, guard=0,
            poison=None, shift=()):
        """which: 'act_fwd', 'act_bwd' (b = dy) or 'axpby'; a, b: f32 arrays (for bf16: rounded to bf16
        here, the kernel sees the bits). The output is poisoned first (NaN, or `poison`); grid: the
        launcher's unless given; shift: the names ('a', 'b', 'out') of the buffers to start one
        element past a 16-byte boundary. -> (out as f32 values, [problems: guards, changed inputs])"""
        n = a.size
        dt = np.uint16 if bf16 else np.float32
        store = (lambda v: bf16_bits(v)) if bf16 else (lambda v: np.ascontiguousarray(v, f32))
        ins = {"a": store(a), "b": None if b is None else store(b)}
        fill = F32_POISON if poison is None else f32(poison)
        with Mem(self.emu) as mem:
            bufs = Bufs(mem, guard)
            pa, pb = bufs.put(ins["a"], dt, int("a" in shift)), bufs.put(ins["b"], dt, int("b" in shift))
            po = bufs.put(store(np.full(n, fill, f32)), dt, int("out" in shift))
            prm = EwParams(a=pa, b=pb, out=po, n=n, act=act, alpha=alpha, beta=beta, reserved=0)
            self.emu.launch(f"elementwise_{which}_{'bf16' if bf16 else 'f32'}", prm,
                            grid_of(n, bf16) if grid is None else grid, BLOCK, 0, order, seed)
            out, ok = bufs.get(po)
            bad = [] if ok else ["bytes written before / after out"]
            for name, p in (("a", pa), ("b", pb)):
                if p is None:
                    continue
                got, ok = bufs.get(p)
                if not ok:
                    bad.append(f"bytes written before / after {name}")
                if got.tobytes() != ins[name].tobytes():
                    bad.append(f"input {name} changed")
            return (bf16_value(out) if bf16 else out), bad

    def runs(self, which, bf16, a, b=None, guard=0, asan=False, **kw):
        """The three thread orders with the NaN poison, then (not under ASan) forward order with a
        finite poison. -> (out of the first run, [problems])"""
        outs, bad = [], []
        todo = [(o, s, None) for o, s in (ORDERS[:1] if asan else ORDERS)] + ([] if asan else [(0, 0, ALT_POISON)])
        for o, s, poison in todo:
            out, p = self.run(which, bf16, a, b, order=o, seed=s, guard=guard, poison=poison, **kw)
            outs.append(out)
            bad += [x for x in p if x not in bad]
        if not all(bits_equal([outs[0]], [r]) for r in outs[1:-1]):
            bad.append("order-dependent")
        if not asan and not bits_equal([outs[0]], [outs[-1]]):
            bad.append("depends on the output's prior contents (elements left unwritten)")
        return outs[0], bad


# ---- f64 reference: a port of the Rust twin, Act::f and Act::df (src/ops/elementwise.rs), in numpy
# f64 on the exact f32 (or bf16) inputs: Φ(x) = erfc(-x / sqrt 2) / 2 with math.erfc (no
# cancellation in the negative tail, like the twin's erfc); relu propagates NaN (PyTorch; the twin
# special-cases it) and its gradient is (x > 0) as f64.
K_TANH = math.sqrt(2.0 / math.pi)
_erfc = np.frompyfunc(math.erfc, 1, 1)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _phi(x):
    return 0.5 * _erfc(-x / math.sqrt(2.0)).astype(np.float64)


def ref_f(act, x):
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        if act == 0:
            return np.maximum(x, 0.0)
        if act == 1:
            return 0.5 * x * (1.0 + np.tanh(K_TANH * (x + 0.044715 * x * x * x)))
        if act == 2:
            return x * _phi(x)
        if act == 3:
            return x * _sig(x)
        if act == 4:
            return np.tanh(x)
        if act == 5:
            return np.where(x > 20.0, x, np.log1p(np.exp(x)))
        return _sig(x)


def ref_df(act, x):
    """-> (f'(x), the size of the terms of f' that cancel where f' crosses zero: |0.5 (1 + t)| +
    |0.5 x (1 - t^2) k (1 + 3 0.044715 x^2)| for gelu_tanh (root x ~ -0.75), Φ(x) + |x| φ(x) for
    gelu_erf (root x ~ -0.75), s (1 + |x| (1 - s)) for silu (root x ~ -1.28); 0 for the others, whose
    f' has no such root)"""
    x = np.asarray(x, np.float64)
    z = np.zeros_like(x)
    with np.errstate(all="ignore"):
        if act == 0:
            return ((x > 0.0) | np.isnan(x)).astype(np.float64), z  # PyTorch passes dy through at NaN
        if act == 1:
            t = np.tanh(K_TANH * (x + 0.044715 * x * x * x))
            t1, t2 = 0.5 * (1.0 + t), 0.5 * x * (1.0 - t * t) * K_TANH * (1.0 + 3.0 * 0.044715 * x * x)
            return t1 + t2, np.abs(t1) + np.abs(t2)
        if act == 2:
            t1, t2 = _phi(x), x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
            return t1 + t2, np.abs(t1) + np.abs(t2)
        if act == 3:
            s = _sig(x)
            return s * (1.0 + x * (1.0 - s)), s * (1.0 + np.abs(x) * (1.0 - s))
        if act == 4:
            return 1.0 - np.tanh(x) ** 2, z
        if act == 5:
            return np.where(x > 20.0, 1.0, _sig(x)), z
        s = _sig(x)
        return s * (1.0 - s), z


def tolerance(want, bf16, dy=None, cancel=None):
    """Forward: RTOL max(|want|, FLOOR) (bf16: BF16_TOL). Backward (want = f'(x), dx = dy f'(x)):
    |dy| (RTOL max(|f'|, FLOOR) + CANCEL_ULPS u cancel): the floor scales with dy like dx does, and
    near a root of f' the error is a few u of the terms that cancel there, not of f' (inherent to f',
    whatever the formula). The kernel's own cancellations (1 + tanh, 1 + erf, 1 - t^2, s (1 - s) in
    the tails) are not allowed for."""
    rtol = BF16_TOL if bf16 else RTOL
    with np.errstate(all="ignore"):
        t = rtol * np.maximum(np.abs(want), FLOOR)
        if dy is None:
            return t
        if not bf16:
            t = t + CANCEL_ULPS * U * cancel
        return np.abs(dy.astype(np.float64)) * t


def compare(got, want, tol, x):
    """-> (problems, worst err / tol). Where want is finite: got within tol; elsewhere (NaN, inf)
    got equal to want, NaN as NaN. A NaN where want is finite (an unwritten, poisoned element) fails."""
    got = got.astype(np.float64)
    fin = np.isfinite(want)
    bad = []
    with np.errstate(all="ignore"):
        r = np.where(fin, np.abs(got - want) / np.maximum(tol, 1e-300), 0.0)
    r = np.where(fin & ~np.isfinite(got), np.inf, r)
    worst = float(r.max()) if r.size else 0.0
    if worst > 1.0:
        over = np.flatnonzero(r > 1.0)
        i = int(over[np.argmax(r[over])])
        xs = x[over].astype(np.float64)
        bad.append(f"{over.size} elements over tolerance, x in [{xs.min():.4g}, {xs.max():.4g}]; worst {r[i]:.3g}x "
                   f"tol at x = {float(x[i]):.7g}: got {got[i]:.8g}, want {want[i]:.8g}")
    nf = ~fin
    gn, wn = np.isnan(got[nf]), np.isnan(want[nf])
    if not (np.array_equal(gn, wn) and np.array_equal(got[nf][~gn], want[nf][~wn])):
        j = np.flatnonzero(nf)[np.flatnonzero((gn != wn) | (np.nan_to_num(got[nf]) != np.nan_to_num(want[nf])))]
        bad.append(f"non-finite results differ at {j.size} elements (e.g. x = {float(x[j[0]]) if j.size else 0:.7g}: "
                   f"got {got[j[0]] if j.size else 0:.7g}, want {want[j[0]] if j.size else 0:.7g})")
    return bad, worst


def check_act(K, ck, which, act, bf16, x, dy, label, guard, asan=False, grid=None):
    """One check of elementwise_{which} for one activation: vs the f64 reference (on the bf16-rounded
    inputs for bf16), guards, inputs, orders and poisons."""
    xr = bf16_round(x) if bf16 else x
    dyr = None if dy is None else (bf16_round(dy) if bf16 else dy)
    got, bad = K.runs(which, bf16, x, dy, guard=guard, asan=asan, act=act, grid=grid)
    if which == "act_fwd":
        want = ref_f(act, xr)
        tol = tolerance(want, bf16)
    else:
        d, cancel = ref_df(act, xr)
        with np.errstate(all="ignore"):
            want = dyr.astype(np.float64) * d
        tol = tolerance(d, bf16, dyr, cancel)
    p, worst = compare(got, want, tol, xr)
    t = "bf16" if bf16 else "f32"
    tol_s = f"{BF16_TOL:g}" if bf16 else f"{RTOL:g}"
    tol_s = f"{tol_s} max(|want|, {FLOOR:g})" if which == "act_fwd" else \
        f"|dy| ({tol_s} max(|f'|, {FLOOR:g}){'' if bf16 else f' + {CANCEL_ULPS}u cancelling terms'})"
    what = ("ASan: no report, " if asan else "") + f"vs f64 within {tol_s}" + \
        ("" if asan else ", guards/inputs intact, bitwise equal in 3 orders and under 2 poisons")
    ck.check(f"elementwise_{which}_{t} {ACTS[act]} {label}: {what}", not (p or bad),
             "; ".join(p + bad) if (p or bad) else f"[worst {worst:.2f} tol]")


# ---- Inputs of the accuracy sweep: [-30, 30] in steps of 1/512 (exact in f32; includes 0, ±20),
# plus ±0, ±1e-30, ±1e-40 (subnormal), the smallest subnormal, ±20 and its neighbours (the softplus
# threshold), around expf's overflow (±88, ±89), large |x| (saturation, gelu tails), up to
# 1e6; NaN and ±inf (compared with the twin's non-finite results). dy: N(0, 1), with a few NaN.
def sweep_inputs(rng):
    grid = np.arange(-30 * 512, 30 * 512 + 1, dtype=np.float64) / 512.0
    nx20 = [np.nextafter(f32(20), f32(s * np.inf)) for s in (1, -1)]
    special = [0.0, -0.0, 1e-30, -1e-30, 1e-40, -1e-40, 1.4e-45, -1.4e-45, 20.0, -20.0, *nx20, *[-v for v in nx20],
               0.5, -0.5, 1.0, -1.0, 88.0, -88.0, 89.0, -89.0, 100.0, -100.0, 1e4, -1e4, 1e6, -1e6,
               np.nan, np.inf, -np.inf]
    x = np.concatenate([grid, special]).astype(f32)
    dy = rng.standard_normal(x.size).astype(f32)
    dy[rng.choice(grid.size, 5, replace=False)] = np.nan
    return x, dy


def part_sweep(K, ck, rng, bf16):
    x, dy = sweep_inputs(rng)
    for act in range(len(ACTS)):
        check_act(K, ck, "act_fwd", act, bf16, x, None, f"sweep [-30, 30] + specials (n={x.size})", GUARD_BYTES)
        check_act(K, ck, "act_bwd", act, bf16, x, dy, f"sweep [-30, 30] + specials, dy N(0,1) w/ NaN (n={x.size})",
                  GUARD_BYTES)


def part_f32(K, ck, rng):
    part_sweep(K, ck, rng, False)


def part_bf16(K, ck, rng):
    part_sweep(K, ck, rng, True)


def part_huge(K, ck, rng):
    # |x| up to f32's max: x * x overflows above 1.8e19, x^3 above 7e12.
    x = np.array([1e12, -1e12, 1e13, -1e13, 1e19, -1e19, 1e20, -1e20, 1e30, -1e30, 3e38, -3e38], f32)
    dy = np.ones(x.size, f32)
    for act in range(len(ACTS)):
        check_act(K, ck, "act_fwd", act, False, x, None, "huge |x| (1e12 .. 3e38)", GUARD_BYTES)
        check_act(K, ck, "act_bwd", act, False, x, dy, "huge |x| (1e12 .. 3e38), dy 1", GUARD_BYTES)


# ---- Launch shapes: n around a block (1, 255, 256, 257), several blocks with a tail, n = 0 (grid 1,
# nothing written), and the grid-stride loop with grids smaller than the launcher's (the clamp at
# 2^20 blocks only bites above 2^30 f32 / 2^31 bf16 elements). Values in [-2, 2] (the sweep covers the range).
SHAPES = [(0, None), (1, None), (255, None), (256, None), (257, None), (4097, None), (257, 1), (4000, 1),
          (20000, 3), (24000, 7)]


def shape_label(n, grid, bf16):
    g = grid_of(n, bf16) if grid is None else grid
    rounds = -(-(n // vec_of(bf16)) // (g * BLOCK))
    return f"n={n} grid {g}{' (launcher)' if grid is None else f' (grid-stride: {rounds} vector rounds)'}"


def part_shapes(K, ck, rng, asan=False):
    guard = 0 if asan else GUARD_BYTES
    for n, grid in SHAPES:
        x = rng.uniform(-2, 2, n).astype(f32)
        dy = rng.standard_normal(n).astype(f32)
        b = rng.standard_normal(n).astype(f32)
        for bf16 in (False, True):
            problems = []
            worst = 0.0
            for act in range(len(ACTS)):
                for which, d in (("act_fwd", None), ("act_bwd", dy)):
                    xr = bf16_round(x) if bf16 else x
                    dyr = None if d is None else (bf16_round(d) if bf16 else d)
                    got, bad = K.runs(which, bf16, x, d, guard=guard, asan=asan, act=act, grid=grid)
                    if which == "act_fwd":
                        want = ref_f(act, xr)
                        tol = tolerance(want, bf16)
                    else:
                        df, cancel = ref_df(act, xr)
                        want, tol = dyr.astype(np.float64) * df, tolerance(df, bf16, dyr, cancel)
                    p, w = compare(got, want, tol, xr)
                    worst = max(worst, w)
                    problems += [f"{which} {ACTS[act]}: {m}" for m in p + bad]
            for alpha, beta, with_b in ((1.0, -0.5, True), (2.0, 0.0, False)):
                got, bad = K.runs("axpby", bf16, x, b if with_b else None, guard=guard, asan=asan, alpha=alpha,
                                  beta=beta, grid=grid)
                want = axpby_port(bf16, x, b if with_b else None, alpha, beta)
                if not same(got, want):
                    problems.append(f"axpby alpha {alpha} beta {beta} b {'given' if with_b else 'NULL'}: not bitwise "
                                    f"equal to the port")
                problems += [f"axpby: {m}" for m in bad]
            t = "bf16" if bf16 else "f32"
            what = ("ASan: no report, values as the reference" if asan else
                    "every element written, guards/inputs intact, values as the reference, bitwise equal in 3 "
                    "orders and under 2 poisons")
            ck.check(f"elementwise {t} {shape_label(n, grid, bf16)}: act_fwd/act_bwd x 7 activations, axpby with and "
                     f"without b: {what}", not problems, "; ".join(problems[:6]) if problems else f"[worst {worst:.2f} tol]")


# ---- axpby: a numpy float32 port of the kernel's arithmetic (v = alpha * a rounded to f32; with
# b: v = fmaf(beta, b, v); bf16: loads widened, the result rounded to nearest even), compared
# bitwise; and the port against f64 within 2 u (|alpha a| + |beta b|) (+ bf16 rounding).
def axpby_port(bf16, a, b, alpha, beta):
    """-> the kernel's result as f32 values (bf16: the stored bf16's value)."""
    if bf16:
        a = bf16_round(a)
        b = None if b is None else bf16_round(b)
    with np.errstate(all="ignore"):
        v = f32(alpha) * a.astype(f32)
        if b is not None:
            v = fma_f32(np.full_like(v, f32(beta)), b.astype(f32), v)
    return bf16_round(v) if bf16 else v


# (n, grid or None for the launcher's, alpha, beta, b given, what)
AXPBY_CASES = [
    (1000, None, 1.0, 1.0, True, "residual"),
    (257, None, 2.5, -0.5, True, "negative beta"),
    (255, None, -1.0, 0.0, False, "b NULL, beta 0"),
    (256, None, 0.75, 3.0, False, "b NULL, beta 3 (ignored, as the Rust API passes it)"),
    (300, None, 0.0, 1.5, True, "alpha 0"),
    (301, None, 1.5, 0.0, True, "beta 0 with b"),
    (1, None, 0.0, 0.0, True, "alpha = beta = 0"),
    (299, None, -1.0, -0.25, True, "both negative"),
    (20000, 3, 1.0, -1.0, True, "cancellation (b = a (1 + 1e-6 N)), grid-stride grid 3"),
    (4097, None, 1e-3, 1e3, True, "scaled"),
]


def axpby_inputs(rng, n, what):
    a = rng.standard_normal(n).astype(f32)
    if what.startswith("cancellation"):
        b = (a * (1 + 1e-6 * rng.standard_normal(n))).astype(f32)
    else:
        b = rng.standard_normal(n).astype(f32)
    return a, b


def check_axpby(K, ck, bf16, a, b, alpha, beta, grid, label, guard, asan=False):
    got, bad = K.runs("axpby", bf16, a, b, guard=guard, asan=asan, alpha=alpha, beta=beta, grid=grid)
    port = axpby_port(bf16, a, b, alpha, beta)
    problems = list(bad)
    if not same(got, port):
        d = np.flatnonzero(~((got == port) | (np.isnan(got) & np.isnan(port))))
        problems.append(f"{d.size} elements differ from the port (e.g. [{int(d[0])}]: got {float(got[d[0]]):.9g}, "
                        f"port {float(port[d[0]]):.9g})")
    ar = (bf16_round(a) if bf16 else a).astype(np.float64)
    br = None if b is None else (bf16_round(b) if bf16 else b).astype(np.float64)
    with np.errstate(all="ignore"):
        want = float(f32(alpha)) * ar + (0.0 if br is None else float(f32(beta)) * br)
        mag = abs(float(f32(alpha))) * np.abs(ar) + (0.0 if br is None else abs(float(f32(beta))) * np.abs(br))
        bound = 2 * U * mag + (2.0 ** -8 * np.abs(want) if bf16 else 0.0) + 1e-45
        fin = np.isfinite(want) & np.isfinite(port)
        over = np.abs(port[fin].astype(np.float64) - want[fin]) > bound[fin]
    if over.any():
        problems.append(f"the port is off f64 by more than 2u(|alpha a| + |beta b|){' + bf16 rounding' if bf16 else ''} "
                        f"at {int(over.sum())} elements")
    t = "bf16" if bf16 else "f32"
    what = ("ASan: no report, " if asan else "") + "bitwise equal to the float32 port, port within 2u(|αa|+|βb|) of f64" + \
        ("" if asan else ", guards/inputs intact, 3 orders and 2 poisons")
    ck.check(f"elementwise_axpby_{t} {label}: {what}", not problems, "; ".join(problems))


def part_axpby(K, ck, rng, asan=False):
    guard = 0 if asan else GUARD_BYTES
    for n, grid, alpha, beta, with_b, what in AXPBY_CASES:
        a, b = axpby_inputs(rng, n, what)
        for bf16 in (False, True):
            check_axpby(K, ck, bf16, a, b if with_b else None, alpha, beta, grid,
                        f"{shape_label(n, grid, bf16)}, alpha {alpha:g} beta {beta:g}: {what}", guard, asan)
    # Specials: ±0 (signed-zero sums), inf, NaN, subnormals, overflow of alpha a and of the sum.
    a = np.array([0.0, -0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, 1e-40, 3e38, 2e38, -1.0, 1.0], f32)
    b = np.array([0.0, 0.0, -0.0, 1.0, np.inf, 1.0, np.nan, 1e-40, 1.0, 2e38, 1.0, -1.0], f32)
    if not asan:
        for alpha, beta in ((1.0, 1.0), (2.0, -1.0), (1.0, 0.0), (0.0, 0.0)):
            for bf16 in (False, True):
                check_axpby(K, ck, bf16, a, b, alpha, beta, None, f"specials (±0, ±inf, NaN, subnormal, overflow), "
                            f"alpha {alpha:g} beta {beta:g}", guard)
                check_axpby(K, ck, bf16, a, None, alpha, beta, None, f"specials, b NULL, alpha {alpha:g} beta {beta:g}",
                            guard)


# ---- The vector path and its fallbacks. With every pointer 16-byte aligned the kernels load and
# store VEC elements at a time, then the n % VEC tail one by one; with any pointer one element past a
# 16-byte boundary they run the scalar loop (the pre-vector kernel's) over every element. Each case:
# every kernel (7 activations forward and backward, axpby with b and with b NULL) aligned on the
# launcher's grid vs the reference (3 orders, 2 poisons, guards, inputs), then again with a, b, out
# shifted by one element each and all together (the scalar path) and, where the launcher's grid has
# more than one block, on one block (grid-stride): each of these bitwise equal to the aligned run.
# Shapes: every tail length 0 .. VEC-1 after 0 (n < VEC: no vector at all), 1, 300 and 512 vectors
# (512 = exactly two blocks of vectors, so the tail lands past the last vector thread).
def vector_shapes(bf16, full=True):
    v = vec_of(bf16)
    ms = (0, 1, 300, 512) if full else (0, 1, 300)
    return [m * v + r for m in ms for r in range(v) if full or m != 300 or r in (0, v - 1)]


def kernel_list():
    """-> [(which, act, alpha, beta, uses dy, uses b)]"""
    ks = [(w, act, 0.0, 0.0, w == "act_bwd", False) for act in range(len(ACTS)) for w in ("act_fwd", "act_bwd")]
    return ks + [("axpby", 0, 1.0, -0.5, False, True), ("axpby", 0, 2.0, 0.0, False, False)]


def part_vector(bf16, asan=False):
    def part(K, ck, rng):
        guard = 0 if asan else GUARD_BYTES
        t = "bf16" if bf16 else "f32"
        for n in vector_shapes(bf16, full=not asan):
            x = rng.uniform(-3, 3, n).astype(f32)
            x[rng.random(n) < 0.05] = np.nan
            dy = rng.standard_normal(n).astype(f32)
            b = rng.standard_normal(n).astype(f32)
            problems, worst, launches = [], 0.0, 0
            g0 = grid_of(n, bf16)
            for which, act, alpha, beta, uses_dy, uses_b in kernel_list():
                second = dy if uses_dy else (b if uses_b else None)
                name = f"{which} {ACTS[act]}" if which != "axpby" else f"axpby b {'given' if uses_b else 'NULL'}"
                got, bad = K.runs(which, bf16, x, second, guard=guard, asan=asan, act=act, alpha=alpha, beta=beta)
                launches += 1 if asan else 4
                xr = bf16_round(x) if bf16 else x
                if which == "act_fwd":
                    want = ref_f(act, xr)
                    p, w = compare(got, want, tolerance(want, bf16), xr)
                elif which == "act_bwd":
                    dyr = bf16_round(dy) if bf16 else dy
                    df, cancel = ref_df(act, xr)
                    with np.errstate(all="ignore"):
                        want = dyr.astype(np.float64) * df
                    p, w = compare(got, want, tolerance(df, bf16, dyr, cancel), xr)
                else:
                    w = 0.0
                    p = [] if same(got, axpby_port(bf16, x, second, alpha, beta)) else ["not bitwise equal to the port"]
                worst = max(worst, w)
                problems += [f"{name}: {m}" for m in p + bad]
                ptrs = ["a", "out"] + (["b"] if second is not None else [])
                alts = [(tuple([q]), None) for q in ptrs] + [(tuple(ptrs), None)] + ([((), 1)] if g0 > 1 else [])
                for sh, grid in alts:
                    alt, bad = K.run(which, bf16, x, second, act=act, alpha=alpha, beta=beta, grid=grid, guard=guard,
                                     shift=sh)
                    launches += 1
                    how = f"{'+'.join(sh)} shifted by one element (scalar path)" if sh else f"grid {grid}"
                    if alt.tobytes() != got.tobytes():
                        d = np.flatnonzero(alt.view(np.uint32) != got.view(np.uint32))
                        problems.append(f"{name}, {how}: {d.size} elements not bitwise equal to the aligned run "
                                        f"(e.g. [{int(d[0])}])")
                    problems += [f"{name}, {how}: {m}" for m in bad]
            v = vec_of(bf16)
            what = ("ASan: no report; " if asan else "") + \
                "vs the reference; a, b, out each and all shifted by one element (scalar path)" + \
                (" and grid 1" if g0 > 1 else "") + " bitwise equal to the aligned run" + \
                ("" if asan else "; guards/inputs intact, 3 orders, 2 poisons")
            ck.check(f"elementwise {t} vector path n={n} = {n // v} x {v} + tail {n % v}, grid {g0} (launcher): "
                     f"act_fwd/act_bwd x 7, axpby with/without b: {what}", not problems,
                     "; ".join(problems[:6]) if problems else f"[worst {worst:.2f} tol, {launches} launches]")
    return part


# ---- The reference itself: known values (tests/elementwise.rs twin_matches_known_values), f' vs
# central differences of f (f64), the twin's erfc-based Φ vs 1 + erf.
def part_reference(K, ck, rng):
    known = [(2, 1.0, 0.8413447460685429), (1, 1.0, 0.8411919906082768), (5, 0.0, math.log(2.0)),
             (3, 1.0, 1.0 / (1.0 + math.exp(-1.0))), (0, -2.0, 0.0), (6, 0.0, 0.5), (4, 0.5, 0.46211715726000974),
             (2, -3.5, -3.5 * 2.3262907903552504e-4), (5, 25.0, 25.0)]
    worst = max(abs(float(ref_f(a, np.array([x]))[0]) - w) / max(abs(w), 1e-3) for a, x, w in known)
    ck.check("reference: known values (gelu erf / tanh at 1, softplus 0 and 25, silu, relu, sigmoid, tanh, "
             "gelu_erf(-3.5))", worst < 1e-14, f"{worst:.1e}")
    xs = np.concatenate([rng.standard_normal(300) * 4, [19.9, 20.1, -0.3, 0.3, 4.0, -4.0, -0.75, -1.28]])
    worst = 0.0
    for act in range(len(ACTS)):
        h = 1e-6
        fd = (ref_f(act, xs + h) - ref_f(act, xs - h)) / (2 * h)
        d, _ = ref_df(act, xs)
        keep = ~((act == 0) & (np.abs(xs) < 1e-3))
        worst = max(worst, float((np.abs(d - fd) / (1.0 + np.abs(fd)))[keep].max()))
    ck.check("reference: f' vs central differences of f, every activation", worst < 1e-7, f"{worst:.1e}")
    x = np.linspace(-5, 5, 101)
    e = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    ck.check("reference: Φ via erfc vs 1 + erf", np.abs(_phi(x) - e).max() < 1e-15, "")


def part_asan(K, ck, rng):
    part_shapes(K, ck, rng, asan=True)
    part_axpby(K, ck, rng, asan=True)


def part_asan_vector(K, ck, rng):
    part_vector(False, asan=True)(K, ck, rng)
    part_vector(True, asan=True)(K, ck, rng)


if __name__ == "__main__":
    run_main("elementwise", __doc__, Kernels,
             {"f32": part_f32, "bf16": part_bf16, "huge": part_huge, "shapes": part_shapes, "axpby": part_axpby,
              "vector_f32": part_vector(False), "vector_bf16": part_vector(True), "reference": part_reference},
             {"bounds": part_asan, "bounds_vector": part_asan_vector}, seed=20240815)
