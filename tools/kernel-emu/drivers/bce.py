"""Emulator driver for kernels/bce.cu: bce_loss_{f32,bf16} (binary cross-entropy with logits and its focal
variant, loss and gradient in one pass: grid-stride over 16-byte vectors, scalar tail / scalar path when a
pointer is misaligned; per-thread sums in loop order and a 256-wide tree into per-block partials),
bce_reduce_f32 (one block: thread t sums partials t, t + 256, ... then the tree; / f32(n) for the mean) and
bce_scale_{f32,bf16} (grad *= upstream, per element or one scalar), launched as src/ops/bce.rs launches them
(grid min(ceil(n / 1024), 1024) of 256). Loss, gradient, partials, the reduced loss and the scaled gradient
BITWISE against a numpy float32 port of the kernels' arithmetic (the emulator's expf / log1pf / powf are the
host libm's: the port calls the same functions through ctypes; the TU is built with -ffp-contract=off, so
no FMA is formed), and within f32 bounds of an f64 reference of torchvision's sigmoid_focal_loss."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, run_main  # noqa: E402
from drivers_common import F32_POISON, bf16_bits, bf16_round, bf16_value, first_diff, same, tree  # noqa: E402

U64, U32, F32C = C.c_uint64, C.c_uint32, C.c_float
f32 = np.float32
GUARD_BYTES = 256
ALT_POISON = f32(-7777.0)
BLOCK = 256
BLOCK_ELEMS = 1024  # SNUG_BCE_BLOCK_ELEMS
MAX_BLOCKS = 1024   # SNUG_BCE_MAX_BLOCKS
NONE, MEAN, SUM = 0, 1, 2
RED = {NONE: "none", MEAN: "mean", SUM: "sum"}


class BceParams(C.Structure):  # kernels/bce.h (80 bytes; n at 48, alpha at 56, blocks at 76)
    _fields_ = [("logits", P), ("targets", P), ("grad", P), ("loss", P), ("out", P), ("upstream", P),
                ("n", U64), ("alpha", F32C), ("gamma", F32C), ("grad_scale", F32C),
                ("reduction", U32), ("has_alpha", U32), ("blocks", U32)]


assert C.sizeof(BceParams) == 80 and BceParams.n.offset == 48 and BceParams.alpha.offset == 56 \
    and BceParams.blocks.offset == 76


# ---- Launch shapes. These mirror src/ops/bce.rs and must be kept in sync with it: blocks(n) =
# min(ceil(n / 1024), 1024) blocks of 256 for the loss and the scale pass, no dynamic shared memory;
# the workspace holds one f32 partial per block (MEAN / SUM); bce_reduce_f32 on 1 block of 256 with
# blocks = that count; grad_scale = f32(1 / n) for MEAN, else 1; has_alpha / alpha from the spec.
def grid_of(n):
    """src/ops/bce.rs blocks(n)."""
    return min(-(-n // BLOCK_ELEMS), MAX_BLOCKS)


# ---- libm through ctypes: the functions the emulated kernel calls.
_LIBM = C.CDLL("libm.so.6")
for _f in ("expf", "log1pf"):
    getattr(_LIBM, _f).restype = F32C
    getattr(_LIBM, _f).argtypes = [F32C]
_LIBM.powf.restype = F32C
_LIBM.powf.argtypes = [F32C, F32C]
_expf = np.frompyfunc(lambda x: _LIBM.expf(float(x)), 1, 1)
_log1pf = np.frompyfunc(lambda x: _LIBM.log1pf(float(x)), 1, 1)
_powf = np.frompyfunc(lambda x, y: _LIBM.powf(float(x), float(y)), 2, 1)


def expf(x):
    return np.asarray(_expf(x), f32).reshape(np.shape(x))


def log1pf(x):
    return np.asarray(_log1pf(x), f32).reshape(np.shape(x))


def powf(x, y):
    return np.asarray(_powf(x, y), f32).reshape(np.shape(x))


class Spec:
    def __init__(self, alpha, gamma, red):
        self.alpha, self.gamma, self.red = alpha, gamma, red

    def __str__(self):
        return f"alpha {self.alpha}, gamma {self.gamma}, {RED[self.red]}"


def grad_scale(spec, n):
    return f32(1.0 / n) if spec.red == MEAN else f32(1.0)


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for k in ("loss_f32", "loss_bf16", "scale_f32", "scale_bf16", "reduce_f32"):
            emu.check_struct(f"bce_{k}", BceParams)

    def run(self, bf16, z, y, spec, up=None, grad=True, order=0, seed=0, guard=0, poison=None, grid=None, shift=None):
        """z, y: (n,) f32 values (bf16-representable for bf16). Outputs poisoned (NaN or `poison`). The
        launcher's sequence: bce_loss (+ bce_reduce for MEAN / SUM), then, when `up` is given, bce_scale
        on the gradient with upstream `up` ((n,) for NONE, (1,) otherwise). grid: an explicit grid for
        every pass (default: the launcher's). shift: {buffer name: elements to move its start by} (a
        misaligned pointer: the scalar path). -> dict of outputs (f32 values) and [problems]"""
        n = z.size
        shift = shift or {}
        dt = np.uint16 if bf16 else np.float32
        st = (lambda a: bf16_bits(a)) if bf16 else (lambda a: np.ascontiguousarray(a, f32))
        tp = "bf16" if bf16 else "f32"
        fill = F32_POISON if poison is None else f32(poison)
        tfill = bf16_bits(np.array([fill], f32))[0] if bf16 else fill
        grid = grid_of(n) if grid is None else grid
        with Mem(self.emu) as mem:
            items = {}

            def put(name, a, dtype, sent):
                a = np.ascontiguousarray(a, dtype).ravel()
                g = guard // a.itemsize + shift.get(name, 0)
                s = np.full(g, sent, dtype)
                base = mem.put(np.concatenate([s, a, np.full(guard // a.itemsize, sent, dtype)]), dtype)
                items[name] = (base, g, a.size, dtype, sent, guard // a.itemsize)
                return base + g * a.itemsize

            def get(name):
                base, g, k, dtype, sent, tail = items[name]
                full = mem.get(base)
                ok = np.all(full[:g].view(np.uint8) == np.full(g, sent, dtype).view(np.uint8)) and \
                    full[g + k:].tobytes() == np.full(tail, sent, dtype).tobytes()
                return full[g:g + k].copy(), ok

            tsent = np.uint16(0x7FA5) if bf16 else F32_POISON
            pz, py = put("z", st(z), dt, tsent), put("y", st(y), dt, tsent)
            pg = put("grad", np.full(n, tfill, dt), dt, tsent) if grad else None
            nb = grid
            ploss = put("loss", np.full(n if spec.red == NONE else nb, fill, f32), np.float32, F32_POISON)
            pout = put("out", np.full(1, fill, f32), np.float32, F32_POISON) if spec.red != NONE else None
            pup = put("up", np.asarray(up, f32), np.float32, F32_POISON) if up is not None else None
            prm = BceParams(logits=pz, targets=py, grad=pg, loss=ploss, out=pout, upstream=None, n=n,
                            alpha=f32(spec.alpha if spec.alpha is not None else 0.0), gamma=f32(spec.gamma),
                            grad_scale=grad_scale(spec, n), reduction=spec.red, has_alpha=int(spec.alpha is not None),
                            blocks=nb)
            self.emu.launch(f"bce_loss_{tp}", prm, grid, BLOCK, 0, order, seed)
            if spec.red != NONE:
                self.emu.launch("bce_reduce_f32", prm, 1, BLOCK, 0, order, seed + 1)
            out, bad = {}, []
            if grad:
                g, ok = get("grad")
                out["grad"] = bf16_value(g) if bf16 else g
                bad += [] if ok else ["bytes written before / after grad"]
            if up is not None:
                sp = BceParams(grad=pg, upstream=pup, n=n, reduction=spec.red, grad_scale=1.0, blocks=nb)
                self.emu.launch(f"bce_scale_{tp}", sp, grid, BLOCK, 0, order, seed + 2)
                g, ok = get("grad")
                out["scaled"] = bf16_value(g) if bf16 else g
                bad += [] if ok else ["bytes written before / after grad (scale)"]
            for name in ("loss", "out"):
                if name in items:
                    a, ok = get(name)
                    out["partials" if name == "loss" and spec.red != NONE else name] = a
                    bad += [] if ok else [f"bytes written before / after {name}"]
            for name, a in (("z", st(z)), ("y", st(y))) + ((("up", np.asarray(up, f32)),) if up is not None else ()):
                got, ok = get(name)
                if not ok or got.tobytes() != np.ascontiguousarray(a).ravel().tobytes():
                    bad.append(f"{name} changed or its guards written")
            return out, bad


# ---- The port: the kernels' float32 arithmetic in their order (numpy float32 ops are correctly rounded,
# like the host's; expf / log1pf / powf are the host libm's, as in the emulated kernel).
def port_elem(z, y, spec, scale):
    """(n,) f32 values -> (loss, grad) f32: bce_elem."""
    z, y = np.asarray(z, f32), np.asarray(y, f32)
    with np.errstate(all="ignore"):
        e = expf(-np.abs(z))
        d = f32(1) + e
        hi, lo = f32(1) / d, e / d
        pos = z >= 0
        a, b = np.where(pos, hi, lo), np.where(pos, lo, hi)
        ny = f32(1) - y
        ce = (np.fmax(z, f32(0)) - z * y) + log1pf(e)
        loss, grad = ce, ny * a - y * b
        if spec.gamma != 0:
            gm = f32(spec.gamma)
            q = y * b + ny * a
            w = q * q if spec.gamma == 2 else powf(q, np.full_like(q, gm))
            r = np.where(q > 0, a * b / q, f32(1))
            grad = w * (grad + gm * ce * (ny - y) * r)
            loss = w * ce
        if spec.alpha is not None:
            al = f32(spec.alpha)
            at = al * y + (f32(1) - al) * ny
            loss, grad = at * loss, at * grad
        return loss.astype(f32), (grad * scale).astype(f32)


def plain_port(z, y):
    """Plain BCE with logits, written on its own (no focal code): ce and sigmoid(z) - y as the kernel
    forms them."""
    z, y = np.asarray(z, f32), np.asarray(y, f32)
    with np.errstate(all="ignore"):
        e = expf(-np.abs(z))
        d = f32(1) + e
        sig_z = np.where(z >= 0, f32(1) / d, e / d)
        sig_mz = np.where(z >= 0, e / d, f32(1) / d)
        return ((np.fmax(z, f32(0)) - z * y) + log1pf(e)).astype(f32), ((f32(1) - y) * sig_z - y * sig_mz).astype(f32)


def thread_sums(loss, grid, vec):
    """The loss pass's per-thread sums: vector path (vec = elements per 16-byte vector; 0 = scalar path):
    thread tid adds vectors j = tid, tid + stride, ... (elements j vec + k, k ascending), then the tail
    elements nv vec + tid + m stride. Zero padding is bitwise neutral (acc starts at +0, never becomes -0).
    -> (grid, 256) f32"""
    n, stride = loss.size, grid * BLOCK
    acc = np.zeros(stride, f32)
    done = 0
    with np.errstate(all="ignore"):
        if vec:
            nv = n // vec
            rounds = -(-nv // stride)
            v = np.zeros((rounds * stride, vec), f32)
            v[:nv] = loss[:nv * vec].reshape(nv, vec)
            v = v.reshape(rounds, stride, vec)
            for r in range(rounds):
                for k in range(vec):
                    acc = acc + v[r, :, k]
            done = nv * vec
        rest = loss[done:]
        rounds = -(-rest.size // stride)
        t = np.zeros(rounds * stride, f32)
        t[:rest.size] = rest
        for r in range(rounds):
            acc = acc + t[r * stride:(r + 1) * stride]
    return acc.reshape(grid, BLOCK)


def reduce_port(parts, n, red):
    acc = np.zeros(BLOCK, f32)
    with np.errstate(all="ignore"):
        for r in range(0, parts.size, BLOCK):
            seg = parts[r:r + BLOCK]
            acc[:seg.size] = acc[:seg.size] + seg
        s = tree(acc)
        return np.array([s / f32(n) if red == MEAN else s], f32)


def port(bf16, z, y, spec, up=None, grid=None, vec=True):
    n = z.size
    grid = grid_of(n) if grid is None else grid
    loss, grad = port_elem(z, y, spec, grad_scale(spec, n))
    rnd = bf16_round if bf16 else (lambda a: a)
    out = {"grad": rnd(grad)}
    if spec.red == NONE:
        out["loss"] = loss
    else:
        parts = tree(thread_sums(loss, grid, (8 if bf16 else 4) if vec else 0))
        out["partials"] = parts.astype(f32)
        out["out"] = reduce_port(out["partials"], n, spec.red)
    if up is not None:
        u = np.asarray(up, f32)
        with np.errstate(all="ignore"):
            out["scaled"] = rnd((out["grad"] * (u if spec.red == NONE else u[0])).astype(f32))
    return out


def reference(z, y, spec):
    """f64 torchvision sigmoid_focal_loss per element (stable form) and its derivative."""
    z, y = z.astype(np.float64), y.astype(np.float64)
    with np.errstate(all="ignore"):
        e = np.exp(-np.abs(z))
        a = np.where(z >= 0, 1 / (1 + e), e / (1 + e))
        b = np.where(z >= 0, e / (1 + e), 1 / (1 + e))
        ce = np.logaddexp(0, z) - z * y
        q = y * b + (1 - y) * a
        g = spec.gamma
        w = q ** g
        r = np.where(q > 0, a * b / q, 1.0)
        loss = ce * w
        grad = w * ((1 - y) * a - y * b + g * ce * (1 - 2 * y) * r)
        if spec.alpha is not None:
            at = spec.alpha * y + (1 - spec.alpha) * (1 - y)
            loss, grad = loss * at, grad * at
        return loss, grad


def check_f64(got, z, y, spec, bf16, bad):
    """Loss within 1e-5 |want| + 3e-7 |z| (the rounding of z y) + 1e-30; grad within 1e-5 |want| + 2e-6
    max|grad| (bf16: 1e-2 and 1e-3); the reduced loss within 1e-4 of the sum of |loss| (+ n 3e-7 |z|)."""
    wl, wg = reference(z, y, spec)
    n = z.size
    s = 1.0 / n if spec.red == MEAN else 1.0
    wg = wg * s
    rt, at = (1e-2, 1e-3) if bf16 else (1e-5, 2e-6)
    gscale = max(float(np.max(np.abs(wg))), 1e-30)
    err = np.abs(got["grad"].astype(np.float64) - wg)
    lim = rt * np.abs(wg) + at * gscale
    if not np.all(err <= lim):
        i = int(np.argmax(err - lim))
        bad.append(f"grad vs f64: [{i}] z {z[i]!r} y {y[i]!r}: {got['grad'][i]!r} vs {wg[i]!r}")
    za = np.abs(z.astype(np.float64))
    if spec.red == NONE:
        err = np.abs(got["loss"].astype(np.float64) - wl)
        lim = 1e-5 * np.abs(wl) + 3e-7 * za + 1e-30
        if not np.all(err <= lim):
            i = int(np.argmax(err - lim))
            bad.append(f"loss vs f64: [{i}] z {z[i]!r} y {y[i]!r}: {got['loss'][i]!r} vs {wl[i]!r}")
        return float(np.max(err / lim))
    want = wl.sum() * s
    lim = (1e-4 * np.abs(wl).sum() + 3e-7 * za.sum()) * s + 1e-30
    e = abs(float(got["out"][0]) - want)
    if not e <= lim:
        bad.append(f"reduced loss vs f64: {float(got['out'][0])!r} vs {want!r} (error {e:.3g} > {lim:.3g})")
    return e / lim


SPECS = [Spec(None, 0.0, NONE), Spec(0.5, 2.0, MEAN), Spec(0.25, 2.0, NONE), Spec(None, 0.5, SUM),
         Spec(0.75, 1.5, NONE), Spec(0.5, 2.0, SUM), Spec(None, 0.0, MEAN), Spec(1.0, 3.0, NONE)]


def inputs(rng, n, bf16, zs=6.0):
    z = (rng.standard_normal(n) * zs).astype(f32)
    z[5::97] = np.array([100.0, -100.0, 1e4, -1e4], f32)[np.arange(z[5::97].size) % 4]
    u = rng.random(n).astype(f32)
    y = np.where(np.arange(n) % 3 == 0, f32(0), np.where(np.arange(n) % 3 == 1, f32(1), u)).astype(f32)
    if bf16:
        z, y = bf16_round(z), bf16_round(y)
    return z, y


def upstream(rng, n, spec):
    return rng.standard_normal(n if spec.red == NONE else 1).astype(f32)


def check_case(K, ck, bf16, z, y, spec, label, rng, asan=False, f64=True, grids=(), shifts=()):
    """The launcher's sequence in 3 orders (ASan: one), under a finite poison, on explicit grids and with
    misaligned pointers: every output bitwise vs the port (grid / path as run), bitwise across orders and
    poisons; NONE outputs bitwise the same on every grid and path; within bounds of f64."""
    guard = 0 if asan else GUARD_BYTES
    up = upstream(rng, z.size, spec)
    bad = []
    todo = [(o, s, None, None, None) for o, s in (ORDERS[:1] if asan else ORDERS)]
    if not asan:
        todo += [(0, 0, ALT_POISON, None, None)] + [(0, 0, None, g, None) for g in grids] + \
                [(0, 0, None, None, sh) for sh in shifts]
    runs = []
    for o, s, poison, grid, sh in todo:
        out, b = K.run(bf16, z, y, spec, up=up, order=o, seed=s, guard=guard, poison=poison, grid=grid, shift=sh)
        bad += [x for x in b if x not in bad]
        vec = not (sh and (any(sh.get(k) for k in ("z", "y", "grad")) or (spec.red == NONE and sh.get("loss"))))
        want = port(bf16, z, y, spec, up=up, grid=grid, vec=vec)
        for k, w in want.items():
            if not same(out[k], w):
                bad.append(f"{k} vs the float32 port (grid {grid}, shift {sh}): " + first_diff(out[k], w))
        runs.append((grid, sh, out))
    base = runs[0][2]
    for grid, sh, out in runs[1:]:
        for k in base:
            if (grid is None and sh is None) or k in ("grad", "loss", "scaled"):
                if out[k].tobytes() != base[k].tobytes():
                    bad.append(f"{k} differs bitwise (order / poison / grid {grid} / shift {sh})")
    detail = ""
    if f64:
        r = check_f64(base, z, y, spec, bf16, bad)
        detail = f"[max error / bound {r:.2g}]"
    t = "bf16" if bf16 else "f32"
    what = ("ASan: no report, " if asan else "") + "loss, grad, partials, reduced loss, scaled grad bitwise the port" + \
        (", within f32 bounds of f64" if f64 else "") + \
        ("" if asan else ", guards and inputs intact, bitwise equal in 3 orders and under 2 poisons" +
         (f", grids {list(grids)}" if grids else "") + (f", shifts {[sorted(s) for s in shifts]}" if shifts else ""))
    ck.check(f"bce_{t} {label} ({spec}): {what}", not bad, "; ".join(bad[:4]) if bad else detail)


SIZES = [1, 3, 4, 5, 7, 8, 9, 255, 256, 257, 1023, 1024, 1025, 4097, 20000]
SHIFTS = [{"z": 1}, {"y": 1}, {"grad": 1}, {"loss": 1}, {"up": 1}, {"z": 1, "y": 1, "grad": 1, "loss": 1, "up": 1}]


def part_dtype(K, ck, rng, bf16, asan=False):
    for k, n in enumerate(SIZES):
        for j, spec in enumerate(SPECS):
            if n == 20000 and j % 2:
                continue
            z, y = inputs(rng, n, bf16)
            grids = [] if asan or n < 300 else [1, 3, 7]
            shifts = [] if asan or n not in (257, 4097) else SHIFTS
            check_case(K, ck, bf16, z, y, spec, f"n {n}", rng, asan=asan, grids=grids, shifts=shifts)


def part_f32(K, ck, rng):
    part_dtype(K, ck, rng, False)


def part_bf16(K, ck, rng):
    part_dtype(K, ck, rng, True)


def part_seed(K, ck, rng):
    """The seed's logits (8, 15360) with its focal loss (alpha 0.5, gamma 2, mean), f32 and bf16; and one
    size past the 1024-block cap (grid-stride with the launcher's grid)."""
    for bf16 in (False, True):
        z, y = inputs(rng, 8 * 15360, bf16, zs=3.0)
        y = np.round(y).astype(f32)  # seizure labels: hard
        for spec in (Spec(0.5, 2.0, MEAN), Spec(0.5, 2.0, NONE)):
            check_case(K, ck, bf16, z, y, spec, "n 8 x 15360 (hard labels)", rng)
    n = MAX_BLOCKS * BLOCK_ELEMS + 4 * 300 + 3
    z, y = inputs(rng, n, False)
    for spec in (Spec(0.25, 2.0, SUM), Spec(None, 0.5, NONE)):
        out, bad = K.run(False, z, y, spec, up=upstream(rng, n, spec))
        want = port(False, z, y, spec)
        for k, w in want.items():
            if k != "scaled" and not same(out[k], w):
                bad.append(f"{k} vs the port: " + first_diff(out[k], w))
        r = check_f64(out, z, y, spec, False, bad)
        ck.check(f"bce_f32 n {n} (grid capped at {MAX_BLOCKS} blocks: grid-stride) ({spec}): bitwise the port, "
                 "within f32 bounds of f64", not bad, "; ".join(bad[:4]) if bad else f"[max error / bound {r:.2g}]")


SPECIAL_Z = [0.0, -0.0, 1e-30, -1e-30, 1e-40, 0.5, -0.5, 15.0, -15.0, 17.0, 20.0, -20.0, 30.0, 87.0, 88.0, 89.0, -89.0,
             100.0, -100.0, 103.0, 104.0, 105.0, -105.0, 150.0, 1e4, -1e4, 1e30, -1e30]
SPECIAL_Y = [0.0, 1.0, 0.5, 0.3, 0.999, 1e-3]


def part_special(K, ck, rng):
    """Extreme logits (through expf's subnormal range and underflow: q = 1 - p_t exactly 0), hard and soft
    labels, every gamma kind (0; 2 through q q; others through powf): bitwise vs the port, finite, vs f64; the q = 0 limit (loss 0, grad +-0, not
    NaN, for gamma < 1 too); non-finite logits give a NaN loss."""
    zz, yy = np.meshgrid(np.array(SPECIAL_Z, f32), np.array(SPECIAL_Y, f32))
    z, y = zz.ravel().astype(f32), yy.ravel().astype(f32)
    for bf16 in (False, True):
        zb, yb = (bf16_round(z), bf16_round(y)) if bf16 else (z, y)
        for spec in (Spec(None, 0.0, NONE), Spec(0.25, 2.0, NONE), Spec(None, 0.5, NONE), Spec(0.5, 0.1, NONE),
                     Spec(None, 3.0, NONE), Spec(0.5, 2.0, SUM)):
            check_case(K, ck, bf16, zb, yb, spec, f"{z.size} extreme logits x labels", rng)
            out, _ = K.run(bf16, zb, yb, spec)
            fin = np.all(np.isfinite(out["grad"])) and np.all(np.isfinite(out.get("loss", out.get("out"))))
            ck.check(f"bce_{'bf16' if bf16 else 'f32'} extreme logits ({spec}): loss and grad finite", fin)
    # q = 0: sigma(-z) underflows to exactly 0 at z = 1e4 with y = 1 (and mirrored).
    z = np.array([1e4, -1e4, 104.0, -104.0], f32)
    y = np.array([1.0, 0.0, 1.0, 0.0], f32)
    for g in (0.0, 0.1, 0.5, 0.99, 1.0, 2.0, 5.0):
        out, bad = K.run(False, z, y, Spec(0.25, g, NONE))
        ok = not bad and np.all(out["loss"] == 0) and np.all(out["grad"] == 0) and not np.any(np.isnan(out["grad"]))
        ck.check(f"bce_f32 q = 1 - p_t = 0 (|z| = 1e4, 104 on the label's side), gamma {g}: loss 0, grad +-0 (the limit)",
                 ok, f"loss {out['loss']} grad {out['grad']}")
    z = np.array([np.inf, -np.inf, np.nan, np.inf, 1.0], f32)
    y = np.array([1.0, 0.0, 0.5, 0.0, 0.5], f32)
    out, bad = K.run(False, z, y, Spec(None, 0.0, NONE))
    ok = not bad and np.isnan(out["loss"][:4]).all() and np.isfinite(out["loss"][4]) and np.isfinite(out["grad"][4])
    ck.check("bce_f32 non-finite logits: NaN loss (max(z, 0) - z y is inf - inf, inf 0 or NaN), the other elements "
             "unaffected", ok, f"{out['loss']}")


def part_plain(K, ck, rng):
    """gamma = 0 is plain BCE bit for bit: the kernel's loss and grad equal plain_port (written without any
    focal code) bitwise; alpha 1/2 with hard labels is exactly half of it; and the gamma = 2 path (q q)
    really differs from gamma = 2 through powf (the special case is taken)."""
    for bf16 in (False, True):
        z, y = inputs(rng, 4097, bf16, zs=8.0)
        for red in (NONE, SUM):
            out, bad = K.run(bf16, z, y, Spec(None, 0.0, red))
            pl, pg = plain_port(z, y)
            rnd = bf16_round if bf16 else (lambda a: a)
            ok = not bad and same(out["grad"], rnd(pg)) and (red != NONE or same(out["loss"], pl))
            if red == SUM:
                ok = ok and same(out["partials"], tree(thread_sums(pl, grid_of(z.size), 8 if bf16 else 4)))
            ck.check(f"bce_{'bf16' if bf16 else 'f32'} gamma 0, no alpha, {RED[red]}: bitwise plain BCE "
                     "(ce, sigmoid(z) - y) written without the focal terms", ok)
        yh = np.round(y).astype(f32)
        out, bad = K.run(bf16, z, yh, Spec(0.5, 0.0, NONE))
        pl, pg = plain_port(z, yh)
        rnd = bf16_round if bf16 else (lambda a: a)
        ok = not bad and same(out["loss"], (pl * f32(0.5)).astype(f32)) and same(out["grad"], rnd((pg * f32(0.5)).astype(f32)))
        ck.check(f"bce_{'bf16' if bf16 else 'f32'} alpha 1/2, gamma 0, hard labels: exactly half of plain BCE", ok)


def part_reduce(K, ck, rng):
    """bce_reduce_f32 alone, bitwise its port, for 1 .. 1024 partials (one to four per thread), MEAN and
    SUM; bce_scale alone: NaN / inf / signed-zero products bitwise."""
    bad = []
    for nb in (1, 2, 255, 256, 257, 511, 512, 513, 1000, 1024):
        for red in (MEAN, SUM):
            parts = (rng.standard_normal(nb) * 10).astype(f32)
            n = nb * 1000 + 7
            with Mem(K.emu) as mem:
                pp, po = mem.put(parts), mem.new(1)
                prm = BceParams(loss=pp, out=po, n=n, reduction=red, blocks=nb)
                K.emu.launch("bce_reduce_f32", prm, 1, BLOCK, 0, 2, nb)
                got = mem.get(po)
            if not same(got, reduce_port(parts, n, red)):
                bad.append(f"{nb} partials {RED[red]}: {first_diff(got, reduce_port(parts, n, red))}")
    ck.check("bce_reduce_f32 bitwise its port for 1..1024 partials, mean and sum", not bad, "; ".join(bad[:4]))
    g = np.array([1.0, -1.0, 0.0, -0.0, np.inf, np.nan, 3e38, 1e-30, 2.0, -0.0, 5.0], f32)
    for bf16 in (False, True):
        gb = bf16_round(g) if bf16 else g
        for red, u in ((NONE, np.array([2.0, -0.0, np.inf, 1.0, 0.0, 1.0, 10.0, 1e-30, np.nan, -1.0, 0.5], f32)),
                       (SUM, np.array([-3.0], f32))):
            with Mem(K.emu) as mem:
                dt = np.uint16 if bf16 else np.float32
                pg = mem.put(bf16_bits(gb) if bf16 else gb, dt)
                pu = mem.put(u)
                K.emu.launch(f"bce_scale_{'bf16' if bf16 else 'f32'}", BceParams(grad=pg, upstream=pu, n=g.size, reduction=red, blocks=1),
                             1, BLOCK, 0, 0, 0)
                got = mem.get(pg)
            got = bf16_value(got) if bf16 else got
            with np.errstate(all="ignore"):
                want = (gb * (u if red == NONE else u[0])).astype(f32)
            want = bf16_round(want) if bf16 else want
            ck.check(f"bce_scale_{'bf16' if bf16 else 'f32'} {RED[red]}: bitwise g u on specials (inf, NaN, +-0, overflow)",
                     same(got, want), first_diff(got, want))


def part_asan(K, ck, rng):
    part_dtype(K, ck, rng, False, asan=True)
    part_dtype(K, ck, rng, True, asan=True)


if __name__ == "__main__":
    run_main("bce", __doc__, Kernels,
             {"f32": part_f32, "bf16": part_bf16, "seed": part_seed, "special": part_special, "plain": part_plain,
              "reduce": part_reduce},
             {"bounds": part_asan}, seed=20261123)
