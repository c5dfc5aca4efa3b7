"""Emulator driver for kernels/selective_scan.cu: selective_scan_fwd_{f32,bf16},
selective_scan_bwd_{f32,bf16}, selective_scan_reduce_f32, against a numpy f64 reference of the
Mamba-1 scan and its backward (for bf16: on the bf16-rounded inputs)."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, RANDOM, Mem, P, bits_equal, rel_err, run_main  # noqa: E402
from drivers_common import bf16_value  # noqa: E402

U32, U64 = C.c_uint32, C.c_uint64
INPUTS = ("u", "delta", "a", "b", "c", "d_skip", "delta_bias", "z")
GRADS = ("du", "ddelta", "da", "db", "dc", "dd_skip", "ddelta_bias", "dz")
ACTS = ("u", "delta", "b", "c", "z")  # activations: T (f32 or bf16); a, d_skip, delta_bias stay f32


# Not drivers_common.bf16_bits (nor bf16_round): a NaN is rounded like other bits, not made 0x7fff.
def bf16_bits(x):
    """f32 -> bf16 bits, round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_round(x):
    return bf16_value(bf16_bits(x))


# Mirrors of kernels/selective_scan.h (sizes checked against the C structs).
class ScanDir(C.Structure):
    _fields_ = [(k, P) for k in INPUTS]


class FwdParams(C.Structure):
    _fields_ = [("dir", ScanDir * 2), ("out", P), ("chunk_states", P), ("s", U64)] + \
        [(k, U32) for k in ("d", "l", "n", "npad", "channels_per_block", "concat")]


class DirGrads(C.Structure):
    _fields_ = [(k, P) for k in ("du", "ddelta", "db", "dc", "dz", "da_part", "dd_part", "dbias_part", "db_acc", "dc_acc")]


class BwdParams(C.Structure):
    _fields_ = [("dir", ScanDir * 2), ("grad", DirGrads * 2), ("dout", P), ("chunk_states", P), ("s", U64)] + \
        [(k, U32) for k in ("d", "l", "n", "npad", "channels_per_block", "concat")]


class ReduceParams(C.Structure):
    _fields_ = [(k, P) for k in ("da", "dd", "dbias", "da_part", "dd_part", "dbias_part")] + [("s", U64), ("d", U32), ("n", U32)]


# ---- Launch shapes. These formulas mirror src/ops/selective_scan.rs and must be kept in sync with
# it: CHUNK (SNUG_SCAN_CHUNK), block_shape, the forward's grid / block / smem in selective_scan(),
# and gpu_backward()'s smem (nwarps, subs, halves, SUB), workspace carving
# ([da S*D*N | dd S*D | dbias S*D] per direction, dirs*S*D*(N+2) floats; then, for bf16 with more
# than one channel group (needs_acc), [db_acc S*N*L | dc_acc S*N*L] per direction; backward_workspace_bytes),
# db_acc / dc_acc (= db / dc for f32, NULL for bf16 with one group) and reduce launch (256 threads).
CHUNK = 32
SUB = 8


def block_shape(n):
    """-> (npad, channels per block)"""
    npad = 1 << (n - 1).bit_length()
    return npad, min(max(128 // npad, 1), 32)


def fwd_launch(S, D, N):
    npad, cpb = block_shape(N)
    grid = -(-D // cpb) * S
    smem = 4 * (2 * cpb * CHUNK + 2 * N * CHUNK + cpb * CHUNK * (npad + 1))
    return npad, cpb, grid, cpb * npad, smem


def bwd_launch(S, D, N):
    npad, cpb = block_shape(N)
    nwarps = -(-(cpb * npad) // 32)
    subs = cpb if npad > 32 else nwarps
    halves = 2 if npad > 32 else 1
    smem = 4 * (4 * cpb * CHUNK + 2 * N * CHUNK + 2 * subs * SUB * N + 3 * halves * cpb * CHUNK)
    return npad, cpb, S, cpb * npad, smem


def needs_acc(D, N, bf16):
    """bf16 with several channel groups per sequence: separate f32 dB / dC running sums."""
    return bf16 and D > block_shape(N)[1]


def workspace_floats(S, D, L, N, dirs, bf16):
    return dirs * S * D * (N + 2) + (dirs * 2 * S * N * L if needs_acc(D, N, bf16) else 0)


def reduce_launch(D, N):
    items = D * N + D
    return -(-items // 256), 256, 0


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for t in ("f32", "bf16"):
            emu.check_struct(f"selective_scan_fwd_{t}", FwdParams)
            emu.check_struct(f"selective_scan_bwd_{t}", BwdParams)
        emu.check_struct("selective_scan_reduce_f32", ReduceParams)

    def run(self, inp, combine, dout, order=0, seed=0, save_states=True, backward=True, bf16=False):
        """inp: 1 or 2 dicts of INPUTS (optional ones absent or None), f32 arrays. Launches the
        forward (with chunk_states unless save_states is False), then the backward and one reduce
        per direction, as the Rust side does. bf16: the _bf16 kernels, with the activations (ACTS,
        dout) rounded to bf16 and the activation outputs returned as f32 arrays holding the bf16
        values bit for bit (poison 0xFFFF reads back as NaN). -> out, chunk_states, [grads dict per
        direction]"""
        S, D, L = inp[0]["u"].shape
        N = inp[0]["a"].shape[1]
        dirs, concat = len(inp), combine == "concat"
        chunks = -(-L // CHUNK)
        t = "bf16" if bf16 else "f32"
        with Mem(self.emu) as m:
            def put_act(x):  # activation in T
                return m.put(bf16_bits(x), np.uint16) if bf16 and x is not None else m.put(x)

            def new_act(shape):  # NaN-poisoned activation output in T
                return m.new(shape, np.uint16, 0xFFFF) if bf16 else m.new(shape)

            def get_act(p):
                return bf16_value(m.get(p)) if bf16 and p is not None else m.get(p)

            dp = [ScanDir(**{k: (put_act if k in ACTS else m.put)(x.get(k)) for k in INPUTS}) for x in inp]
            dir2 = (ScanDir * 2)(*(dp + [ScanDir()] * (2 - dirs)))
            out = new_act((S, 2 * D if concat else D, L))
            cs = m.new((dirs, S, D, chunks, N)) if save_states or backward else None
            npad, cpb, grid, block, smem = fwd_launch(S, D, N)
            f = FwdParams(dir=dir2, out=out, chunk_states=cs, s=S, d=D, l=L, n=N, npad=npad, channels_per_block=cpb, concat=int(concat))
            self.emu.launch(f"selective_scan_fwd_{t}", f, grid, block, smem, order, seed)
            if not backward:
                return get_act(out), m.get(cs), None
            ws = m.new((workspace_floats(S, D, L, N, dirs, bf16),))
            sep = needs_acc(D, N, bf16)
            gp = []
            for r in range(dirs):
                gated = inp[r].get("z") is not None and (r == 0 or concat)
                base = ws + 4 * r * S * D * (N + 2)
                g = dict(du=new_act((S, D, L)), ddelta=new_act((S, D, L)), db=new_act((S, N, L)), dc=new_act((S, N, L)),
                         dz=new_act((S, D, L)) if gated else None, da_part=base, dd_part=base + 4 * S * D * N,
                         dbias_part=base + 4 * S * D * (N + 1))
                if sep:  # after every direction's partials: per direction [db_acc | dc_acc]
                    acc = ws + 4 * (dirs * S * D * (N + 2) + 2 * r * S * N * L)
                    g.update(db_acc=acc, dc_acc=acc + 4 * S * N * L)
                elif not bf16:  # f32 outputs are their own running sums
                    g.update(db_acc=g["db"], dc_acc=g["dc"])
                else:  # bf16, one channel group: unused
                    g.update(db_acc=None, dc_acc=None)
                gp.append(g)
            g2 = (DirGrads * 2)(*([DirGrads(**g) for g in gp] + [DirGrads()] * (2 - dirs)))
            npad, cpb, grid, block, smem = bwd_launch(S, D, N)
            b = BwdParams(dir=dir2, grad=g2, dout=put_act(dout), chunk_states=cs, s=S, d=D, l=L, n=N, npad=npad,
                          channels_per_block=cpb, concat=int(concat))
            self.emu.launch(f"selective_scan_bwd_{t}", b, grid, block, smem, order, seed + 1)
            grads = []
            for r in range(dirs):
                g = gp[r]
                da = m.new((D, N))
                dd = m.new((D,)) if inp[r].get("d_skip") is not None else None
                dbias = m.new((D,)) if inp[r].get("delta_bias") is not None else None
                q = ReduceParams(da=da, dd=dd, dbias=dbias, da_part=g["da_part"], dd_part=g["dd_part"], dbias_part=g["dbias_part"], s=S, d=D, n=N)
                grid, block, smem = reduce_launch(D, N)
                self.emu.launch("selective_scan_reduce_f32", q, grid, block, smem, order, seed + 2)
                grads.append(dict(du=get_act(g["du"]), ddelta=get_act(g["ddelta"]), da=m.get(da), db=get_act(g["db"]),
                                  dc=get_act(g["dc"]), dd_skip=m.get(dd), ddelta_bias=m.get(dbias), dz=get_act(g["dz"])))
            return get_act(out), m.get(cs), grads


# ---- f64 reference (a port of the CPU twin in src/ops/selective_scan.rs)
def softplus(x):
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def f64(x):
    return None if x is None else np.asarray(x, np.float64)


def _dir(x):
    u, delta, a, b, c = (f64(x[k]) for k in ("u", "delta", "a", "b", "c"))
    D = u.shape[1]
    bias = f64(x.get("delta_bias"))
    ds = f64(x.get("d_skip"))
    return u, delta, a, b, c, np.zeros(D) if bias is None else bias, np.zeros(D) if ds is None else ds


def steps(L, r):
    return list(range(L)) if r == 0 else list(range(L - 1, -1, -1))


def scan_states(x, r):
    """-> dt, raw, states hs[k] before step k of the processing order (hs[L] after the last)"""
    u, delta, a, b, c, bias, ds = _dir(x)
    S, D, L = u.shape
    raw = delta + bias[None, :, None]
    dt = softplus(raw)
    hs = np.zeros((L + 1, S, D, a.shape[1]))
    for k, l in enumerate(steps(L, r)):
        hs[k + 1] = np.exp(dt[:, :, l, None] * a[None]) * hs[k] + dt[:, :, l, None] * b[:, None, :, l] * u[:, :, l, None]
    return dt, raw, hs


def scan_y(x, r):
    u, delta, a, b, c, bias, ds = _dir(x)
    _, _, hs = scan_states(x, r)
    y = np.zeros(u.shape)
    for k, l in enumerate(steps(u.shape[2], r)):
        y[:, :, l] = (c[:, None, :, l] * hs[k + 1]).sum(-1) + ds[None, :] * u[:, :, l]
    return y


def scan_backward(x, r, dy):
    u, delta, a, b, c, bias, ds = _dir(x)
    S, D, L = u.shape
    dt, raw, hs = scan_states(x, r)
    st = steps(L, r)
    g = dict(du=np.zeros((S, D, L)), ddelta=np.zeros((S, D, L)), da=np.zeros(a.shape), db=np.zeros((S, a.shape[1], L)),
             dc=np.zeros((S, a.shape[1], L)), dd_skip=np.zeros(D), ddelta_bias=np.zeros(D))
    gh = np.zeros(hs.shape[1:])
    for k in range(L - 1, -1, -1):
        l = st[k]
        dyl, ul, dtl = dy[:, :, l], u[:, :, l], dt[:, :, l]
        g["dd_skip"] += (dyl * ul).sum(0)
        g["du"][:, :, l] += dyl * ds[None]
        ea = np.exp(dtl[..., None] * a[None])
        g["dc"][:, :, l] += (dyl[..., None] * hs[k + 1]).sum(1)
        gk = gh + c[:, None, :, l] * dyl[..., None]
        dea = gk * hs[k]
        ddt = (dea * ea * a[None] + gk * b[:, None, :, l] * ul[..., None]).sum(-1)
        g["da"] += (dea * ea * dtl[..., None]).sum(0)
        g["db"][:, :, l] += (gk * dtl[..., None] * ul[..., None]).sum(1)
        g["du"][:, :, l] += (gk * dtl[..., None] * b[:, None, :, l]).sum(-1)
        gh = gk * ea
        dr = ddt * np.where(raw[:, :, l] > 20, 1.0, sigmoid(raw[:, :, l]))
        g["ddelta"][:, :, l] = dr
        g["ddelta_bias"] += dr.sum(0)
    return g


def gate_backward(dout, y, z):
    if z is None:
        return dout, None
    sg = sigmoid(z)
    return dout * silu(z), dout * y * (sg * (1 + z * (1 - sg)))


def reference(inp, combine, dout):
    dout = f64(dout)
    f = inp[0]
    yf, zf = scan_y(f, 0), f64(f.get("z"))
    D = yf.shape[1]
    gate = lambda y, z: y if z is None else y * silu(z)
    if len(inp) == 1:
        out = gate(yf, zf)
        (dyf, dzf), dyb, dzb = gate_backward(dout, yf, zf), None, None
    else:
        yb, zb = scan_y(inp[1], 1), f64(inp[1].get("z"))
        if combine == "sum":
            out = gate(yf + yb, zf)
            dyf, dzf = gate_backward(dout, yf + yb, zf)
            dyb, dzb = dyf, None
        else:
            out = np.concatenate([gate(yf, zf), gate(yb, zb)], 1)
            dyf, dzf = gate_backward(dout[:, :D], yf, zf)
            dyb, dzb = gate_backward(dout[:, D:], yb, zb)
    gs = [scan_backward(f, 0, dyf)]
    gs[0]["dz"] = dzf
    if len(inp) == 2:
        gs.append(scan_backward(inp[1], 1, dyb))
        gs[1]["dz"] = dzb
    for r, g in enumerate(gs):
        for k, gk in (("d_skip", "dd_skip"), ("delta_bias", "ddelta_bias")):
            if inp[r].get(k) is None:
                g[gk] = None
    return out, gs


def maker(rng, S, D, L, N, opts=True, big=False):
    def one(with_z):
        x = dict(u=rng.standard_normal((S, D, L)), delta=rng.standard_normal((S, D, L)) - 1.0,
                 a=-np.exp(0.5 * rng.standard_normal((D, N))), b=rng.standard_normal((S, N, L)), c=rng.standard_normal((S, N, L)))
        if big:  # above the softplus threshold (dt = delta + bias)
            x["delta"].flat[::7] = 20.5 + rng.random(x["delta"].size)[::7]
        if opts:
            x["d_skip"] = rng.standard_normal(D)
            x["delta_bias"] = 0.5 * rng.standard_normal(D)
        if with_z:
            x["z"] = rng.standard_normal((S, D, L))
        return {k: np.asarray(v, np.float32) for k, v in x.items()}
    return one


def case_inputs(rng, shape, mode, variant):
    S, D, L, N = shape
    mk = maker(rng, S, D, L, N, opts=variant != "bare", big=variant == "big")
    with_z = variant != "bare"
    if mode == "sum1":
        inp = [mk(with_z)]
    elif mode == "sum2":
        inp = [mk(with_z), mk(False)]  # Rust: rev.z must be None when summed
    else:
        inp = [mk(with_z), mk(with_z and variant != "big")]
    comb = "concat" if mode == "concat2" else "sum"
    dout = rng.standard_normal((S, 2 * D if comb == "concat" else D, L)).astype(np.float32)
    return inp, comb, dout


def flat(res):
    o, cs, gs = res
    return [o, cs] + [g[k] for g in gs for k in GRADS]


TOL = 1e-4  # observed worst relative error vs f64 ~1e-6


PARAM_GRADS = ("da", "dd_skip", "ddelta_bias")  # f32 whatever the activations' type


def compare(res, ref, act_tol=TOL):
    """-> list of 'name rel' failures (rel: max |got - want| / max |want| per tensor). act_tol: for
    the output and the activations' gradients; the f32 parameters' gradients always get TOL."""
    (o, _, gs), (ro, rgs) = res, ref
    bad = []
    e = rel_err(o, ro)
    if not e < act_tol:
        bad.append(f"out {e:.1e}")
    for r, (g, rg) in enumerate(zip(gs, rgs)):
        for k in GRADS:
            tol = TOL if k in PARAM_GRADS else act_tol
            if (g[k] is None) != (rg[k] is None):
                bad.append(f"{k}[{r}] presence")
            elif g[k] is not None and not (e := rel_err(g[k], rg[k])) < tol:
                bad.append(f"{k}[{r}] {e:.1e}")
    return bad


# (S, D, L, N): npad 1 / 4 / 8 / 16 / 32 / 64 (two warps per channel), L around the 32-step chunk,
# D not a multiple of the channels per block.
SHAPES = [(2, 5, 7, 16), (1, 3, 70, 8), (2, 9, 40, 64), (3, 4, 33, 3), (1, 2, 1, 1), (2, 33, 32, 4), (1, 5, 64, 32),
          (2, 3, 97, 63), (1, 1, 65, 33)]
MODES = ["sum2", "concat2", "sum1"]


def part_accuracy(K, ck, rng, asan=False):
    for shape in SHAPES:
        bad, nondet = [], []
        for mode in MODES:
            for variant in (["full", "bare", "big"] if not asan else ["full", "bare"]):
                inp, comb, dout = case_inputs(rng, shape, mode, variant)
                orders = ORDERS if variant == "full" and not asan else ORDERS[:1]
                runs = [K.run(inp, comb, dout, order=o, seed=s) for o, s in orders]
                bad += [f"{mode}/{variant}: {b}" for b in compare(runs[0], reference(inp, comb, dout))]
                if not all(bits_equal(flat(runs[0]), flat(x)) for x in runs[1:]):
                    nondet.append(f"{mode}/{variant}")
        S, D, L, N = shape
        what = "ASan (full and bare inputs): no report, outputs vs f64" if asan else \
            "sum/concat/one direction x full/bare/above-softplus-threshold: out and every gradient vs f64; bitwise equal in 3 orders"
        ck.check(f"selective_scan S={S} D={D} L={L} N={N} (npad {block_shape(N)[0]}): {what}", not bad and not nondet,
                 "; ".join(bad[:8] + [f"order-dependent: {nondet}"] * bool(nondet)))


# bf16 activations (f32 parameters): vs f64 on the bf16-rounded inputs, max |got - want| <
# BF16_TOL max |want| per tensor for the output and the activations' gradients (stored in bf16:
# observed worst ~4e-3, the bf16 rounding of the stores plus the summed mode's y_fwd rounded once
# between the passes); TOL for the f32 gradients dA, dD, dbias (observed ~5e-7). Shapes: several
# channel groups per sequence (f32 dB / dC running sums in the workspace: 3 groups of 8 channels
# with the last one partial, S = 2; 3 groups of 2 at npad 64) and one group (db_acc / dc_acc NULL).
BF16_TOL = 1e-2
BF16_SHAPES = [(2, 20, 40, 16), (1, 5, 40, 64), (2, 4, 33, 8), (1, 3, 20, 3)]


def bf16_case(rng, shape, mode, variant):
    """case_inputs with the activations and dout rounded to bf16 (what the kernel reads)."""
    inp, comb, dout = case_inputs(rng, shape, mode, variant)
    inp = [{k: (bf16_round(v) if k in ACTS else v) for k, v in x.items()} for x in inp]
    return inp, comb, bf16_round(dout)


def part_bf16(K, ck, rng, asan=False):
    for shape in BF16_SHAPES:
        bad, nondet = [], []
        for mode in MODES:
            for variant in (["full", "bare", "big"] if not asan else ["full"]):
                inp, comb, dout = bf16_case(rng, shape, mode, variant)
                orders = ORDERS if variant == "full" and not asan else ORDERS[:1]
                runs = [K.run(inp, comb, dout, order=o, seed=s, bf16=True) for o, s in orders]
                bad += [f"{mode}/{variant}: {b}" for b in compare(runs[0], reference(inp, comb, dout), BF16_TOL)]
                if not all(bits_equal(flat(runs[0]), flat(x)) for x in runs[1:]):
                    nondet.append(f"{mode}/{variant}")
        S, D, L, N = shape
        npad, cpb = block_shape(N)
        what = "ASan (sum/concat/one direction, full inputs): no report, outputs vs f64" if asan else \
            "sum/concat/one direction x full/bare/above-softplus-threshold: out and every gradient vs f64 " \
            f"(rel {BF16_TOL:g}, f32 dA/dD/dbias {TOL:g}); bitwise equal in 3 orders"
        ck.check(f"selective_scan bf16 S={S} D={D} L={L} N={N} (npad {npad}, {-(-D // cpb)} channel group(s)"
                 f"{', f32 dB/dC sums in the workspace' if needs_acc(D, N, True) else ''}): {what}",
                 not bad and not nondet, "; ".join(bad[:8] + [f"order-dependent: {nondet}"] * bool(nondet)))


def part_misc(K, ck, rng):
    # Inference: no chunk_states -> the same output.
    inp, comb, dout = case_inputs(rng, (2, 9, 40, 16), "concat2", "full")
    o1 = K.run(inp, comb, dout, backward=False)[0]
    o2 = K.run(inp, comb, dout, backward=False, save_states=False, order=RANDOM, seed=4)[0]
    ck.check("selective_scan forward without chunk_states (inference): bitwise the same output", bits_equal([o1], [o2]))

    # chunk_states: the f64 state after each chunk, in processing order.
    S, D, L, N = 2, 9, 70, 64
    mk = maker(rng, S, D, L, N)
    inp = [mk(True), mk(False)]
    _, cs, _ = K.run(inp, "sum", None, backward=False)
    worst = 0.0
    chunks = -(-L // CHUNK)
    for r in range(2):
        _, _, hs = scan_states(inp[r], r)
        for k in range(chunks):
            # steps processed after the k-th chunk in processing order (the reverse direction
            # walks the chunks from the end)
            last = min(L, (k + 1) * CHUNK) if r == 0 else L - (chunks - 1 - k) * CHUNK
            worst = max(worst, rel_err(cs[r, :, :, k], hs[last]))
    ck.check("selective_scan chunk_states vs f64 states (both directions, N=64, L=70)", worst < TOL, f"{worst:.1e}")

    # Padded steps: extra steps that come after the real ones in processing order, with zero dout,
    # must leave every gradient of the real steps bitwise unchanged.
    bad, n = [], 0
    for (S, D, L, N) in [(2, 5, 7, 16), (1, 3, 70, 8), (2, 9, 40, 64), (3, 4, 33, 3), (2, 33, 33, 4)]:
        p = -(-L // CHUNK) * CHUNK - L
        for side in ("append", "prepend"):
            mk = maker(rng, S, D, L + p, N)
            inp2 = [mk(True), mk(True)]
            dout2 = rng.standard_normal((S, 2 * D, L + p)).astype(np.float32)
            sl = slice(0, L) if side == "append" else slice(p, p + L)
            keep = np.zeros(L + p, bool)
            keep[sl] = True
            dout2[:, :, ~keep] = 0
            inp1 = [{k: (v[..., sl] if v.ndim == 3 else v) for k, v in x.items()} for x in inp2]
            _, _, g1 = K.run(inp1, "concat", dout2[..., sl].copy(), order=RANDOM, seed=1)
            _, _, g2 = K.run(inp2, "concat", dout2, order=RANDOM, seed=2)
            r = 0 if side == "append" else 1  # the direction that meets the extra steps last
            for k in GRADS:
                a, b = g1[r][k], g2[r][k]
                if a.ndim == 3:
                    b = b[..., sl]
                n += 1
                if not bits_equal([a], [b]):
                    bad.append(f"L={L} N={N} {side} {k}[{r}] rel {rel_err(a, b):.1e}")
    ck.check(f"selective_scan padded steps (up to the chunk, zero dout) leave {n} gradients bitwise unchanged", not bad, "; ".join(bad[:8]))

    # The reference's backward is the derivative of its forward (central differences, f64).
    worst = 0.0
    for comb, nd in [("sum", 2), ("concat", 2), ("sum", 1)]:
        S, D, L, N = 2, 3, 6, 3
        mk = maker(rng, S, D, L, N)
        inp = [{k: v.astype(np.float64) for k, v in mk(True).items()}]
        if nd == 2:
            inp.append({k: v.astype(np.float64) for k, v in mk(comb == "concat").items()})
        dout = rng.standard_normal((S, 2 * D if comb == "concat" else D, L))
        _, gs = reference(inp, comb, dout)
        for r in range(nd):
            for k, gk in zip(INPUTS, GRADS):
                if k not in inp[r]:
                    continue
                x, h = inp[r][k], 1e-6
                E = rng.standard_normal(x.shape)
                x += h * E
                fp = (reference(inp, comb, dout)[0] * dout).sum()
                x -= 2 * h * E
                fm = (reference(inp, comb, dout)[0] * dout).sum()
                x += h * E
                fd = (fp - fm) / (2 * h)
                worst = max(worst, abs(fd - (gs[r][gk] * E).sum()) / max(abs(fd), 1e-6))
    ck.check("selective_scan f64 reference backward vs central differences (every input, 3 modes)", worst < 1e-6, f"{worst:.1e}")


def part_asan(K, ck, rng):
    part_accuracy(K, ck, rng, asan=True)
    part_bf16(K, ck, rng, asan=True)
    inp, comb, dout = case_inputs(rng, (2, 9, 40, 64), "concat2", "full")
    o = K.run(inp, comb, dout, backward=False, save_states=False)[0]
    ck.check("ASan: forward without chunk_states: no report, output vs f64", rel_err(o, reference(inp, comb, dout)[0]) < TOL)


if __name__ == "__main__":
    run_main("selective_scan", __doc__, Kernels, {"accuracy": part_accuracy, "bf16": part_bf16, "misc": part_misc}, {"bounds": part_asan},
             seed=20240608)
