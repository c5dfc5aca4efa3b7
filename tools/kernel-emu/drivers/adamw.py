"""Emulator driver for kernels/adamw.cu: adamw_f32 against a numpy float32 port of the f32 CPU twin
in src/ops/adamw.rs (fn cpu), which performs the kernel's roundings in the kernel's order, so the
results must be BITWISE equal (param, m, v; the bf16 copy is round-to-nearest-even of param)."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, bits_equal, run_main  # noqa: E402

F32, U32, U64 = C.c_float, C.c_uint32, C.c_uint64
f32 = np.float32


# Mirror of kernels/adamw.h (size checked against the C struct).
class AdamwParams(C.Structure):
    _fields_ = [(k, P) for k in ("param", "m", "v", "param_bf16", "grad", "grad_norm")] + [("n", U64)] + \
        [(k, F32) for k in ("lr", "beta1", "beta2", "eps", "weight_decay", "bias_correction1", "bias_correction2_sqrt",
                            "grad_scale", "max_norm")] + [("reserved", U32)]


# ---- Launch shape. This mirrors src/ops/adamw.rs (adamw_step) and must be kept in sync with it:
# BLOCK = 256 threads, grid = min(ceil(max(ceil(n/4), 1) / 256), MAX_BLOCKS = 2^20), no shared memory.
def launch_shape(n):
    groups = max(-(-n // 4), 1)
    return min(-(-groups // 256), 1 << 20), 256, 0


def hyper(lr, beta1, beta2, eps, wd, step):
    """The launcher's f32 scalars (bias corrections in f64, then f32, as adamw.rs does)."""
    bc1 = 1.0 - float(f32(beta1)) ** step
    bc2 = (1.0 - float(f32(beta2)) ** step) ** 0.5
    return dict(lr=f32(lr), beta1=f32(beta1), beta2=f32(beta2), eps=f32(eps), weight_decay=f32(wd),
                bias_correction1=f32(bc1), bias_correction2_sqrt=f32(bc2))


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        emu.check_struct("adamw_f32", AdamwParams)

    def run(self, hp, p, g, m, v, bf16, clip, order=0, seed=0, grid=None):
        """clip: ("none",) | ("scale", s) | ("norm", norm, max_norm). -> p, m, v, bf16 bits or None"""
        n = p.size
        with Mem(self.emu) as mem:
            bp = mem.new((n,), np.uint16, 0xFFFF) if bf16 else None
            gn = mem.put(np.array([clip[1]], f32)) if clip[0] == "norm" else None
            scale = clip[1] if clip[0] == "scale" else 1.0
            max_norm = clip[2] if clip[0] == "norm" else 0.0
            pp, mp, vp = mem.put(p), mem.put(m), mem.put(v)
            prm = AdamwParams(param=pp, m=mp, v=vp, param_bf16=bp, grad=mem.put(g), grad_norm=gn, n=n,
                              grad_scale=scale, max_norm=max_norm, reserved=0, **hp)
            shape = launch_shape(n)
            if grid is not None:
                shape = (grid,) + shape[1:]
            self.emu.launch("adamw_f32", prm, *shape, order, seed)
            return mem.get(pp), mem.get(mp), mem.get(vp), mem.get(bp)


# ---- Reference: a float32 port of fn cpu in src/ops/adamw.rs, one rounding per numpy operation.
def reference(hp, p, g, m, v, clip):
    one = f32(1)
    lr, wd = hp["lr"], hp["weight_decay"]
    beta1, beta2, eps = hp["beta1"], hp["beta2"], hp["eps"]
    omb1, omb2 = f32(one - beta1), f32(one - beta2)
    decay = f32(one - f32(lr * wd))
    step_size = f32(lr / hp["bias_correction1"])
    bc2 = hp["bias_correction2_sqrt"]
    if clip[0] == "none":
        scale = one
    elif clip[0] == "scale":
        scale = f32(clip[1])
    else:
        with np.errstate(all="ignore"):
            q = f32(f32(clip[2]) / f32(f32(clip[1]) + f32(1e-6)))
        scale = one if q >= one else q
    with np.errstate(all="ignore"):
        gi = g * scale
        pi = p * decay
        mi = beta1 * m + omb1 * gi
        vi = beta2 * v + (omb2 * gi) * gi
        denom = np.sqrt(vi) / bc2 + eps
        pi = pi - (step_size * mi) / denom
    for a in (gi, pi, mi, vi, denom):
        assert a.dtype == np.float32
    return pi, mi, vi


def bf16_rne(p):
    """Round-to-nearest-even of f32 to bf16 bits (NaN: any NaN is accepted, see same())."""
    u = p.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def same(got, want, bf16=False):
    """Bitwise equal, except that NaN only has to be NaN at the same positions (payloads are not
    compared: the host's NaN propagation depends on operand order)."""
    if got.shape != want.shape:
        return False
    if bf16:
        gn = (got & 0x7FFF) > 0x7F80
        wn = np.isnan(want)
        return bool(np.array_equal(gn, wn) and np.array_equal(got[~gn], bf16_rne(want)[~wn]))
    gn, wn = np.isnan(got), np.isnan(want)
    return bool(np.array_equal(gn, wn) and got[~gn].tobytes() == want[~wn].tobytes())


def inputs(rng, n, gscale=1.0):
    p = rng.standard_normal(n).astype(f32)
    g = (rng.standard_normal(n) * gscale).astype(f32)
    m = (rng.standard_normal(n) * 0.1).astype(f32)
    v = (rng.random(n) * 0.01).astype(f32)
    return p, g, m, v


NS = [1, 3, 4, 5, 1000, 4097]
CLIPS = [("none",), ("scale", 0.37), ("norm", 3.0, 1.0), ("norm", 0.25, 1.0), ("norm", float("nan"), 1.0),
         ("norm", float("inf"), 1.0)]


def cname(c):
    return c[0] if c[0] == "none" else f"{c[0]}={c[1]}"


def part_bitwise(K, ck, rng, asan=False):
    for n in NS:
        bad, nondet = [], []
        for ci, clip in enumerate(CLIPS):
            for bf16 in (False, True):
                step = [1, 7, 1000][(ci + bf16) % 3]
                wd = 0.0 if (ci + n) % 4 == 0 else 0.01
                hp = hyper(1e-3 * (1 + ci), 0.9, 0.999, 1e-8, wd, step)
                p, g, m, v = inputs(rng, n, gscale=[1.0, 1e-3, 30.0][ci % 3])
                orders = ORDERS[:1] if asan else ORDERS
                runs = [K.run(hp, p, g, m, v, bf16, clip, o, s) for o, s in orders]
                rp, rm, rv = reference(hp, p, g, m, v, clip)
                tag = f"{cname(clip)} bf16={int(bf16)} step={step} wd={wd}"
                gp, gm, gv, gb = runs[0]
                for name, a, b in (("param", gp, rp), ("m", gm, rm), ("v", gv, rv)):
                    if not same(a, b):
                        bad.append(f"{tag}: {name} differs at {int(np.sum(a.view(np.uint32) != b.view(np.uint32)))} elements")
                if bf16 and not same(gb, rp, bf16=True):
                    bad.append(f"{tag}: bf16 copy")
                if not bf16 and gb is not None:
                    bad.append(f"{tag}: bf16 buffer")
                if clip[0] == "norm" and np.isnan(clip[1]) and not (np.isnan(gp).all() and (not bf16 or ((gb & 0x7FFF) > 0x7F80).all())):
                    bad.append(f"{tag}: NaN norm must give NaN params")
                if clip[0] == "norm" and np.isinf(clip[1]):
                    # scale 0: a decay-only step, bitwise the same as an explicit scale of 0
                    z = K.run(hp, p, g, m, v, bf16, ("scale", 0.0))
                    if not all(same(a, b) for a, b in zip(z[:3], runs[0][:3])):
                        bad.append(f"{tag}: inf norm is not scale 0")
                if not all(bits_equal(list(runs[0]), list(r)) for r in runs[1:]):
                    nondet.append(tag)
        what = "ASan: no report, bitwise vs the f32 twin" if asan else "bitwise vs the f32 twin; bitwise equal in 3 orders"
        ck.check(f"adamw n={n} (clip none/scale/norm clipping/norm >1/NaN norm/inf norm, bf16 copy on/off, "
                 f"grid {launch_shape(n)[0]}): {what}", not bad and not nondet,
                 "; ".join(bad[:6] + [f"order-dependent: {nondet[:4]}"] * bool(nondet)))


def part_misc(K, ck, rng):
    # Grid-stride loops (both the float4 and the tail loop): one block gives the same bits.
    n = 4097 * 2 + 3
    hp = hyper(3e-3, 0.9, 0.99, 1e-8, 0.1, 5)
    p, g, m, v = inputs(rng, n)
    a = K.run(hp, p, g, m, v, True, ("scale", 0.5))
    b = K.run(hp, p, g, m, v, True, ("scale", 0.5), grid=1)
    ck.check(f"adamw n={n}: grid 1 (grid-stride loops) bitwise equal to the launcher's grid {launch_shape(n)[0]}",
             bits_equal(list(a), list(b)))
    # The bf16 rounding itself: ties to even, carries into the exponent, infinities, signs.
    bits = np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000,
                     0xFF800000, 0x80000000, 0x00000001, 0x3FFFFFFF, 0xBF808000], np.uint32)
    p = bits.view(f32)
    hp = hyper(0.0, 0.9, 0.999, 1e-8, 0.0, 1)  # lr 0: param unchanged
    z = np.zeros(p.size, f32)
    got = K.run(hp, p, z, z, z, True, ("none",))
    want = np.array([0x3F80, 0x3F82, 0x3F80, 0x3F81, 0x7F80, 0xFF80, 0x7F80, 0xFF80, 0x8000, 0x0000, 0x4000, 0xBF80], np.uint16)
    ck.check("adamw bf16 copy: round to nearest even (ties, carries, overflow to inf, signs, lr 0 keeps param)",
             np.array_equal(got[3], want) and np.array_equal(got[3], bf16_rne(p)) and got[0].tobytes() == p.tobytes(),
             f"got {[hex(x) for x in got[3]]}")


def part_asan(K, ck, rng):
    part_bitwise(K, ck, rng, asan=True)


if __name__ == "__main__":
    run_main("adamw", __doc__, Kernels, {"bitwise": part_bitwise, "misc": part_misc}, {"bounds": part_asan}, seed=20240612)
