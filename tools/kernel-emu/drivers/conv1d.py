"""Emulator driver for kernels/conv1d.cu, the glue of conv1d (the products run in cuBLAS):
conv1d_pack_w_{f32,bf16} (wp[j, o, c] = w[o, c, j], a bitwise copy), conv1d_unpack_dw_{f32,bf16}
(dw[o, c, j] = dwp[j, o, c] from f32, to f32 or T when out_is_t), conv1d_finish_{f32,bf16}
(y = T(acc + bias[channel]), in place for f32), conv1d_bias_grad_{f32,bf16} (db[c] = sum of dy[:, c, :]
per thread in order, then a 256-wide tree; one block per channel), conv1d_gather_{f32,bf16}
(xg[r, l] = x[r, l stride + shift] or 0) and conv1d_scatter_add_f32 (acc[r, l stride + shift] += g[r, l]),
launched as src/ops/conv1d.rs launches them and on small explicit grids, against exact numpy
references (bitwise) and, for the bias gradient, a numpy float32 port of its order (bitwise) and the
f64 sum (within the summation bound)."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, run_main  # noqa: E402
from drivers_common import (BF16_POISON, F32_POISON, Bufs, bf16_bits, bf16_round, bf16_value,  # noqa: E402
                            first_diff, same)

U32, U64, I32 = C.c_uint32, C.c_uint64, C.c_int32
f32 = np.float32
U = 2.0 ** -24       # f32 unit roundoff
BF16_U = 2.0 ** -8   # bf16 unit roundoff (8 significant bits)
GUARD_BYTES = 256    # normal build: sentinel bytes before and after every buffer (keeps 256-byte alignment)
ALT_POISON = f32(-7777.0)                     # a finite poison for one more run: nothing may depend on it


# Mirror of kernels/conv1d.h (size checked against the C struct: 64 bytes, rows at 24, out_is_t at 60).
class ConvParams(C.Structure):
    _fields_ = [("src", P), ("dst", P), ("bias", P), ("rows", U64), ("channels", U32), ("len_in", U32),
                ("len_out", U32), ("k", U32), ("shift", I32), ("stride", U32), ("batch", U32), ("out_is_t", U32)]


assert C.sizeof(ConvParams) == 64 and ConvParams.rows.offset == 24 and ConvParams.out_is_t.offset == 60


# ---- Launch shapes and parameters. These mirror src/ops/conv1d.rs and must be kept in sync with it:
# every kernel but bias_grad on clamp(ceil(work / 256), 1, 2^20) blocks of 256, no shared memory
# (`launch`: work = k C_out cg for pack_w / unpack_dw, B C L for finish / gather / scatter_add);
# bias_grad on min(C_out, 2^20) blocks of 256. Parameters: pack_w / unpack_dw src, dst, rows = C_out cg,
# channels = cg, k (unpack_dw: out_is_t = 1 when the parameter gradients are bf16); finish src = the f32
# accumulator (y itself for f32), dst, bias or NULL, rows = B C, channels = C, len_out = L (the
# backward's dx: L_in, no bias); gather / scatter_add rows = B C_in, channels, len_in, len_out, shift,
# stride (scatter_add one tap per launch, taps in sequence); bias_grad src = dy, dst = db, rows,
# channels = C_out, len_out, batch, out_is_t. Everything else 0 (stride 1). (work > 2^28, where the
# clamp bites, is too large to emulate: the grid-stride loops run on small explicit grids instead.)
BLOCK = 256
MAX_GRID = 1 << 20


def grid_of(work):
    return min(max(-(-work // BLOCK), 1), MAX_GRID)


def storage(bf16):
    return np.uint16 if bf16 else np.float32


def random_bits(rng, shape, bf16):
    """Every bit pattern (NaNs with payloads, signalling NaNs, subnormals, ±0, ±inf): copies must
    keep them all."""
    if bf16:
        return rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    return rng.integers(0, 1 << 32, size=shape, dtype=np.uint32).view(f32)


def values(rng, shape, bf16, scale=1.0):
    """N(0, scale) values in storage form (bf16 bits for bf16)."""
    v = (rng.standard_normal(shape) * scale).astype(f32)
    return bf16_bits(v) if bf16 else v


def poison_of(dtype, alt):
    if alt is None:
        return F32_POISON if dtype == np.float32 else BF16_POISON
    return f32(alt) if dtype == np.float32 else bf16_bits(np.array([alt], f32))[0]


class Kernels:
    NAMES = [f"conv1d_{k}_{t}" for k in ("pack_w", "unpack_dw", "finish", "bias_grad", "gather") for t in ("f32", "bf16")]
    NAMES.append("conv1d_scatter_add_f32")

    def __init__(self, emu):
        self.emu = emu
        for name in self.NAMES:
            emu.check_struct(name, ConvParams)

    def run(self, kernel, grid, src, dst, bias=None, in_place=False, order=0, seed=0, guard=0, **fields):
        """src, dst, bias: flat arrays in storage form (dst: its contents before the launch, poison or
        data; in_place: dst is src's buffer, dst ignored). -> (dst after the launch, [problems: guards,
        inputs changed])"""
        with Mem(self.emu) as mem:
            bufs = Bufs(mem, guard)
            ps = bufs.put(src, src.dtype)
            pd = ps if in_place else bufs.put(dst, dst.dtype)
            pb = bufs.put(bias, bias.dtype) if bias is not None else None
            prm = ConvParams(src=ps, dst=pd, bias=pb, **fields)
            self.emu.launch(kernel, prm, grid, BLOCK, 0, order, seed)
            out, ok = bufs.get(pd)
            bad = [] if ok else ["bytes written before / after dst"]
            for name, p, a in ((("src", ps, src),) if not in_place else ()) + ((("bias", pb, bias),) if pb else ()):
                got, ok = bufs.get(p)
                if not ok:
                    bad.append(f"bytes written before / after {name}")
                if got.tobytes() != np.ascontiguousarray(a).ravel().tobytes():
                    bad.append(f"{name} changed")
            return out, bad


def run_checked(K, ck, name, label, want, grid, src, dst_dtype, dst_size, guard, asan, exact_bits=False, dst=None,
                **kw):
    """Runs one case in the thread orders (and, for outputs with no prior contents, under a second,
    finite poison) and checks it bitwise against `want` (exact_bits: NaN payloads too), the runs
    against each other, the guards and the inputs. dst: the prior contents (in / out buffers; None:
    poisoned). -> the output"""
    todo = [(o, s, None) for o, s in (ORDERS[:1] if asan else ORDERS)]
    if dst is None and not asan and not kw.get("in_place"):
        todo.append((0, 0, ALT_POISON))
    outs, bad = [], []
    for o, s, alt in todo:
        d = dst if dst is not None else np.full(dst_size, poison_of(dst_dtype, alt), dst_dtype)
        got, b = K.run(name, grid, src, d, order=o, seed=s, guard=guard, **kw)
        outs.append(got)
        bad += [x for x in b if x not in bad]
    ok_want = (outs[0].tobytes() == np.ascontiguousarray(want).ravel().tobytes() if exact_bits else
               same(outs[0], np.ravel(want)))
    if not ok_want:
        bad.append("vs the reference: " + first_diff(outs[0], want))
    if any(r.tobytes() != outs[0].tobytes() for r in outs[1:]):
        bad.append("runs differ (thread order or prior contents of dst)")
    what = ("ASan: no report, " if asan else "") + ("bitwise equal (NaN payloads included) to" if exact_bits else
                                                    "bitwise equal to") + " the reference" + \
        ("" if asan else ", guards and inputs intact, bitwise equal in 3 orders" +
         (" and under 2 poisons" if len(todo) > 3 else ""))
    ck.check(f"{name} {label}: {what}", not bad, "; ".join(bad))
    return outs[0]


# ---- pack_w / unpack_dw: pure layout changes. pack_w on every bit pattern (a copy as T keeps NaN
# payloads and signalling NaNs); unpack_dw from f32 to f32 (bitwise) or to bf16 (round to nearest
# even, NaN canonical), on every f32 bit pattern and on values with ties and overflow.
# (c_out, cg, k, grid or None for the launcher's, what)
PACK_SHAPES = [
    (1, 1, 1, None, "one element"),
    (1, 1, 16, None, "one row, k 16"),
    (3, 5, 1, None, "k 1"),
    (300, 1, 1, None, "cg 1, 300 rows, k 1 (2 blocks, tail 44)"),
    (1, 300, 2, None, "c_out 1, cg 300, k 2"),
    (7, 3, 16, None, "k 16, 336 elements (tail 80)"),
    (33, 9, 3, None, "k 3, 891 elements"),
    (4, 70, 5, 1, "1400 on 1 block (grid-stride, step 256 < rows 280)"),
    (64, 2, 16, 3, "2048 on 3 blocks (grid-stride, step 768 > rows 128)"),
    (5, 7, 16, 2, "560 on 2 blocks (step 512 = 14 rows + 22)"),
]


def part_pack(K, ck, rng, asan=False):
    guard = 0 if asan else GUARD_BYTES
    for c_out, cg, k, grid, what in PACK_SHAPES:
        rows = c_out * cg
        n = rows * k
        g = grid_of(n) if grid is None else grid
        label = f"c_out {c_out} cg {cg} k {k} grid {g}{' (launcher)' if grid is None else ''}: {what}"
        for bf16 in (False, True):
            t, dt = ("bf16" if bf16 else "f32"), storage(bf16)
            fields = dict(rows=rows, channels=cg, k=k, stride=1)
            # pack_w: every bit pattern, copied
            w = random_bits(rng, (c_out, cg, k), bf16)
            want = np.ascontiguousarray(w.transpose(2, 0, 1))
            run_checked(K, ck, f"conv1d_pack_w_{t}", label, want, g, w.ravel(), dt, n, guard, asan, exact_bits=True,
                        **fields)
            # unpack_dw: f32 in; f32 out (out_is_t 0; the f32 entry also with 1), or bf16 rounded
            dwp = random_bits(rng, (k, c_out, cg), False) if (c_out + k) % 2 else values(rng, (k, c_out, cg), False)
            plain = np.ascontiguousarray(dwp.transpose(1, 2, 0))
            for out_is_t in ((0, 1) if not asan or bf16 else (0,)):
                to_t = bf16 and out_is_t
                want = bf16_bits(plain) if to_t else plain
                run_checked(K, ck, f"conv1d_unpack_dw_{t}", f"out_is_t {out_is_t} ({'bf16' if to_t else 'f32'} dw) "
                            + label, want, g, dwp.ravel(), np.uint16 if to_t else np.float32, n, guard, asan,
                            exact_bits=not to_t, out_is_t=out_is_t, **fields)
    if asan:
        return
    # unpack_dw rounding to bf16: ties to even (both ways), a carry into the exponent, overflow to
    # inf, the largest finite, subnormals, ±0, ±inf, NaNs with payloads (-> 0x7fff).
    sp = np.array([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -8 + 2 ** -20, -(1.0 + 2 ** -7), 2 - 2 ** -9, 3.4e38,
                   3.3e38, 1e-40, -1e-45, 0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -2.5], f32)
    sp = np.concatenate([sp, np.array([0x7F800001, 0xFFC01234], np.uint32).view(f32)])
    dwp = sp.reshape(2, 3, 3)  # k 2, c_out 3, cg 3
    plain = np.ascontiguousarray(dwp.transpose(1, 2, 0))
    want = bf16_bits(plain)
    run_checked(K, ck, "conv1d_unpack_dw_bf16", "out_is_t 1: specials (ties, carry, overflow, subnormals, ±0, "
                "±inf, NaN payloads)", want, 1, dwp.ravel(), np.uint16, 18, GUARD_BYTES, False, rows=9, channels=3,
                k=2, stride=1, out_is_t=1)
    known = np.array([0x3F80, 0x3F82, 0x3F81, 0xBF81, 0x4000, 0x7F80, 0x7F78, 0x0001, 0x8000, 0, 0x8000, 0x7F80,
                      0xFF80, 0x7FFF, 0x3F80, 0xC020, 0x7FFF, 0x7FFF], np.uint16)
    got = bf16_bits(sp)
    ck.check("reference: bf16 rounding of the specials equals the known bits", got.tobytes() == known.tobytes(),
             first_diff(got, known))


# ---- finish. Port: v = acc (f32), v += bias[r % channels] as one float32 add when there is a bias
# (none without: -0 stays -0), then v rounded to bf16 (nearest even) for bf16, compared bitwise;
# and the f32 sum within its rounding of the exact sum (f64), bf16 within one more bf16 rounding.
def finish_port(bf16, acc, bias, channels):
    """acc (rows, L) f32; bias: storage array or None -> y in storage form."""
    v = acc.copy()
    if bias is not None:
        bv = bf16_value(bias) if bf16 else bias
        with np.errstate(all="ignore"):
            v = (acc + bv[np.arange(acc.shape[0]) % channels][:, None]).astype(f32)
    return bf16_bits(v) if bf16 else v


# (rows, channels, len_out, grid or None, what)
FINISH_SHAPES = [
    (1, 1, 1, None, "one element"),
    (1, 1, 300, None, "one row of 300 (tail 44)"),
    (6, 3, 257, None, "batch 2, 3 channels, len 257"),
    (10, 5, 33, None, "batch 2, 5 channels, len 33 (330: 2 blocks)"),
    (1000, 7, 1, 1, "len 1: a row per element, 1 block (step 256 = 36 channel cycles + 4)"),
    (12, 4, 100, 1, "1200 on 1 block (step 256 = 2 rows + 56: carries)"),
    (35, 7, 61, 3, "2135 on 3 blocks (step 768 = 12 rows + 36)"),
    (9, 4, 13, 2, "117 on 2 blocks (step 512 > all: one round)"),
    (8, 8, 1000, 5, "8000 on 5 blocks (step 1280 = 1 row + 280)"),
    (14, 1, 37, 2, "one channel, 518 on 2 blocks"),
]


def check_finish(K, ck, bf16, acc, bias, channels, grid, label, guard, asan, in_place=False, f64=True):
    rows, L = acc.shape
    t = "bf16" if bf16 else "f32"
    want = finish_port(bf16, acc, bias, channels)
    g = grid_of(rows * L) if grid is None else grid
    lab = f"{'bias' if bias is not None else 'no bias'}{', in place' if in_place else ''} rows {rows} channels " \
          f"{channels} len {L} grid {g}{' (launcher)' if grid is None else ''}: {label}"
    got = run_checked(K, ck, f"conv1d_finish_{t}", lab, want, g, acc.ravel(), storage(bf16), rows * L, guard, asan,
                      bias=bias, in_place=in_place, rows=rows, channels=channels, len_out=L, stride=1)
    if f64 and not asan:
        s = acc.astype(np.float64)
        if bias is not None:
            s = s + (bf16_value(bias) if bf16 else bias).astype(np.float64)[np.arange(rows) % channels][:, None]
        gv = (bf16_value(got) if bf16 else got).reshape(rows, L).astype(np.float64)
        tol = (U + BF16_U + U * BF16_U if bf16 else U) * np.abs(s)
        err = np.abs(gv - s)
        ck.check(f"conv1d_finish_{t} {lab}: within {'u_bf16 + u_f32' if bf16 else 'u_f32'} of the f64 sum",
                 bool((err <= tol).all()), f"worst {float((err / np.maximum(tol, 1e-300)).max()):.3g}x the bound")


def part_finish(K, ck, rng, asan=False):
    guard = 0 if asan else GUARD_BYTES
    for rows, channels, L, grid, what in FINISH_SHAPES:
        acc = (rng.standard_normal((rows, L)) * 10.0 ** rng.uniform(-2, 2, (rows, 1))).astype(f32)
        for bf16 in (False, True):
            bias = values(rng, channels, bf16, 3.0)
            check_finish(K, ck, bf16, acc, bias, channels, grid, what, guard, asan)
            if not asan or grid is None:
                check_finish(K, ck, bf16, acc, None, channels, grid, what, guard, asan)
            if not bf16:
                check_finish(K, ck, bf16, acc, bias, channels, grid, what, guard, asan, in_place=True)
                if not asan:
                    check_finish(K, ck, bf16, acc, None, channels, grid, what, guard, asan, in_place=True)
    if asan:
        return
    # Specials: signed zeros with and without a bias (no bias: -0 stays -0; -0 + +0 = +0), ±inf, inf - inf,
    # NaN, overflow, cancellation, and f32 sums that land on bf16 ties (rounded once more: even).
    acc = np.array([[-0.0, 0.0, -0.0, np.inf, np.inf, np.nan, 3e38, 1.0, 1.0, 1.0 + 2 ** -8, 2 ** -9, 1e-40],
                    [-0.0, -0.0, 5.0, 1.0, -np.inf, 2.0, -3e38, -1.0, 2 ** -8, 2 ** -16, 1.0, -1e-40]], f32)
    for bf16 in (False, True):
        bias = np.array([-0.0, 0.0], f32)
        bias2 = np.array([3e38, 1.0], f32)
        for b in (bias, bias2):
            bb = bf16_bits(b) if bf16 else b
            check_finish(K, ck, bf16, acc, bb, 2, None, "specials (±0, ±inf, NaN, overflow, bf16 ties)", GUARD_BYTES,
                         False, f64=False)
        check_finish(K, ck, bf16, acc, None, 2, None, "specials without bias (-0 kept)", GUARD_BYTES, False, f64=False)
        if not bf16:
            check_finish(K, ck, bf16, acc, bias, 2, None, "specials", GUARD_BYTES, False, in_place=True, f64=False)


# ---- bias_grad. Port: per channel, thread t sums q = t, t + 256, ... < batch len_out (dy[q / len_out,
# c, q % len_out]) in float32 in that order, then the tree red[i] += red[i + s] for s = 128 .. 1; db =
# red[0], bf16 rounded to nearest even when out_is_t. Compared bitwise, and against the f64 sum within
# the recursive-summation bound (rounds + 8) u sum |dy| (+ the bf16 rounding).
def grad_port(dyv):
    """dyv (batch, channels, len_out) f32 values -> db (channels,) f32 as the kernel computes it."""
    b, c, L = dyv.shape
    q = np.ascontiguousarray(dyv.transpose(1, 0, 2)).reshape(c, b * L)
    rounds = max(-(-q.shape[1] // BLOCK), 1)
    # +0 padding: acc starts at +0 and never becomes -0, and x + (+0) = x for every other x.
    q = np.concatenate([q, np.zeros((c, rounds * BLOCK - q.shape[1]), f32)], axis=1).reshape(c, rounds, BLOCK)
    with np.errstate(all="ignore"):
        acc = np.zeros((c, BLOCK), f32)
        for r in range(rounds):
            acc = acc + q[:, r]
        s = BLOCK // 2
        while s > 0:
            acc[:, :s] = acc[:, :s] + acc[:, s:2 * s]
            s //= 2
    return acc[:, 0].copy()


def grad_bound(dyv):
    """-> (f64 sums, bound on |f32 result - sum|)"""
    b, c, L = dyv.shape
    d = dyv.astype(np.float64)
    rounds = max(-(-(b * L) // BLOCK), 1)
    return d.sum(axis=(0, 2)), (rounds + 8) * U * np.abs(d).sum(axis=(0, 2)) * (1 + 1e-6)


# (batch, channels, len_out, grid or None (the launcher's: channels), what)
GRAD_SHAPES = [
    (1, 1, 1, None, "one element: 255 threads idle"),
    (1, 1, 300, None, "one row of 300: 2 rounds for 44 threads"),
    (1, 1, 256, None, "exactly one round"),
    (2, 3, 257, None, "batch 2, len 257 (rows cross rounds)"),
    (4, 5, 1000, None, "4000 per channel: 16 rounds"),
    (3, 7, 33, 1, "7 channels on 1 block (grid-stride over channels)"),
    (3, 7, 33, 3, "7 channels on 3 blocks"),
    (3, 7, 33, 11, "7 channels on 11 blocks (4 idle)"),
    (1, 300, 5, None, "300 channels of 5"),
    (5, 2, 768, 1, "2 channels of 3840 on 1 block"),
    (7, 1, 1, None, "len 1: batch 7 across threads"),
]


def check_grad(K, ck, bf16, out_is_t, dyv, grid, label, guard, asan, f64=True):
    b, c, L = dyv.shape
    t = "bf16" if bf16 else "f32"
    to_t = bf16 and out_is_t
    port = grad_port(dyv)
    want = bf16_bits(port) if to_t else port
    g = c if grid is None else grid
    lab = f"out_is_t {out_is_t} ({'bf16' if to_t else 'f32'} db) batch {b} channels {c} len {L} grid {g}" \
          f"{' (launcher)' if grid is None else ''}: {label}"
    src = (bf16_bits(dyv) if bf16 else dyv).ravel()
    got = run_checked(K, ck, f"conv1d_bias_grad_{t}", lab + " [port]", want, g, src, np.uint16 if to_t else np.float32,
                      c, guard, asan, rows=b * c, channels=c, len_out=L, batch=b, out_is_t=out_is_t, stride=1)
    if f64 and not asan:
        s, tol = grad_bound(dyv)
        gv = (bf16_value(got) if to_t else got).astype(np.float64)
        if to_t:
            tol = tol * (1 + BF16_U) + BF16_U * np.abs(s)
        r = np.abs(gv - s) / np.maximum(tol, 1e-300)
        ck.check(f"conv1d_bias_grad_{t} {lab}: within (rounds + 8) u sum|dy|{' + bf16 rounding' if to_t else ''} of "
                 "the f64 sum", bool((r <= 1).all()), f"[worst {float(r.max()):.2g} of the bound]")


def part_grad(K, ck, rng, asan=False):
    guard = 0 if asan else GUARD_BYTES
    for i, (b, c, L, grid, what) in enumerate(GRAD_SHAPES):
        # zero-mean dy, channels scaled 10^U(-3, 3)
        dyv = (rng.standard_normal((b, c, L)) * 10.0 ** rng.uniform(-3, 3, (1, c, 1))).astype(f32)
        for bf16 in (False, True):
            d = bf16_round(dyv) if bf16 else dyv
            for out_is_t in ((0, 1) if not asan else (i % 2,)):
                check_grad(K, ck, bf16, out_is_t, d, grid, what, guard, asan)
    if asan:
        return
    # Grid independence: the same dy on grids 1, 2, channels and channels + 5 gives the same bits.
    dyv = rng.standard_normal((3, 6, 200)).astype(f32)
    for bf16 in (False, True):
        d = bf16_round(dyv) if bf16 else dyv
        outs = [K.run(f"conv1d_bias_grad_{'bf16' if bf16 else 'f32'}", g, (bf16_bits(d) if bf16 else d).ravel(),
                      np.full(6, F32_POISON, f32), rows=18, channels=6, len_out=200, batch=3, stride=1)[0]
                for g in (1, 2, 6, 11)]
        ck.check(f"conv1d_bias_grad_{'bf16' if bf16 else 'f32'} grids 1, 2, 6, 11: bitwise the same db",
                 all(o.tobytes() == outs[0].tobytes() for o in outs))
    # Specials (channel: content): 0 +inf only (inf); 1 +inf and -inf (NaN); 2 a NaN; 3 3e38 three times
    # in one thread's sum (overflow to inf); 4 -0 only (+0: acc starts at +0); 5 cancelling 1e30s
    # in different threads around N(0, 1) values.
    b, L = 2, 300
    dyv = np.zeros((b, 6, L), f32)
    dyv[0, 0, 5] = np.inf
    dyv[0, 1, 7], dyv[1, 1, 100] = np.inf, -np.inf
    dyv[1, 2, 3] = np.nan
    dyv[0, 3, 0], dyv[0, 3, 256], dyv[1, 3, 212] = 3e38, 3e38, 3e38  # q = 0, 256, 512: thread 0
    dyv[:, 4, :] = -0.0
    dyv[:, 5, :] = rng.standard_normal((b, L)).astype(f32)
    dyv[0, 5, 10], dyv[1, 5, 20] = 1e30, -1e30
    for bf16 in (False, True):
        for out_is_t in (0, 1):
            check_grad(K, ck, bf16, out_is_t, bf16_round(dyv) if bf16 else dyv, None,
                       "specials (inf, inf - inf, NaN, overflow, -0, cancelling 1e30)", GUARD_BYTES, False, f64=False)


# ---- gather / scatter_add: the index map l -> l stride + shift with the [0, len_in) test, in exact
# integer arithmetic (Python ints / int64), then a bitwise copy (gather: every bit pattern; zeros
# outside) or one float32 add per valid element (scatter_add; taps run one after another).
def tap_map(len_in, len_out, stride, shift):
    """-> (the valid l, their input indices)"""
    idx = np.arange(len_out, dtype=np.int64) * stride + shift
    ok = (idx >= 0) & (idx < len_in)
    return np.flatnonzero(ok), idx[ok]


def gather_ref(bf16, x, len_out, stride, shift):
    rows, len_in = x.shape
    out = np.zeros((rows, len_out), storage(bf16))  # +0 bits
    ls, ix = tap_map(len_in, len_out, stride, shift)
    out[:, ls] = x[:, ix]
    return out


def scatter_ref(acc, g, stride, shift):
    acc = acc.copy()
    ls, ix = tap_map(acc.shape[1], g.shape[1], stride, shift)
    with np.errstate(all="ignore"):
        acc[:, ix] = acc[:, ix] + g[:, ls]  # ix has no repeats: injective
    return acc


# (batch, channels, len_in, len_out, stride, shift, grid or None, what)
TAP_SHAPES = [
    (1, 1, 1, 1, 1, 0, None, "one element"),
    (2, 3, 300, 300, 1, 0, None, "stride 1 shift 0 (identity), len 300"),
    (2, 3, 300, 300, 1, -2, None, "stride 1 shift -2 (left padding)"),
    (1, 4, 257, 257, 1, 3, None, "stride 1 shift 3 (right edge)"),
    (2, 2, 100, 60, 1, -60, None, "shift -len_out: every index negative, whole rows zero"),
    (2, 2, 100, 60, 1, 100, None, "shift len_in: beyond the map, whole rows zero"),
    (1, 1, 50, 40, 1, -1000, None, "shift -1000, one row"),
    (3, 2, 300, 150, 2, -1, None, "stride 2 shift -1"),
    (3, 2, 300, 150, 2, 0, None, "stride 2 shift 0"),
    (3, 2, 301, 151, 2, 1, None, "stride 2 shift 1 (last index out)"),
    (2, 3, 1000, 63, 16, -5, None, "stride 16 shift -5"),
    (2, 3, 1000, 63, 16, 7, None, "stride 16 shift 7"),
    (1, 1, 33, 3, 16, 15, None, "stride 16 shift 15, one row"),
    (4, 5, 90, 45, 2, -3, 1, "900 on 1 block (step 256 = 5 rows + 31)"),
    (3, 7, 120, 120, 1, 4, 3, "2520 on 3 blocks (step 768 = 6 rows + 48)"),
    (5, 1, 700, 43, 16, -8, 2, "one channel, 215 on 2 blocks (one round)"),
    (1, 1, 5, 3, 1 << 31, 1, None, "stride 2^31 shift 1: l = 2 -> 2^32 + 1 (a u32 product would wrap to 1)"),
    (1, 1, 5, 3, 1 << 31, -(1 << 31), None, "stride 2^31 shift -2^31: l = 1 -> index 0, the only one inside"),
    (1, 2, 7, 4, (1 << 32) - 1, -(1 << 31), None, "stride 2^32 - 1 shift -2^31: l = 1 -> 2^31 - 1, outside"),
    (1, 1, 10, 8, 3, -(1 << 31), None, "shift -2^31: all zero"),
    (1, 1, 10, 8, 3, (1 << 31) - 1, None, "shift 2^31 - 1: all zero"),
]


def tap_label(b, c, len_in, len_out, stride, shift, grid):
    g = grid_of(b * c * len_out) if grid is None else grid
    return f"rows {b * c} len_in {len_in} len_out {len_out} stride {stride} shift {shift} grid {g}" \
           f"{' (launcher)' if grid is None else ''}"


def part_gather(K, ck, rng, asan=False):
    guard = 0 if asan else GUARD_BYTES
    for b, c, len_in, len_out, stride, shift, grid, what in TAP_SHAPES:
        rows = b * c
        g = grid_of(rows * len_out) if grid is None else grid
        for bf16 in (False, True):
            x = random_bits(rng, (rows, len_in), bf16)
            want = gather_ref(bf16, x, len_out, stride, shift)
            run_checked(K, ck, f"conv1d_gather_{'bf16' if bf16 else 'f32'}",
                        tap_label(b, c, len_in, len_out, stride, shift, grid) + ": " + what, want, g, x.ravel(),
                        storage(bf16), rows * len_out, guard, asan, exact_bits=True, rows=rows, channels=c,
                        len_in=len_in, len_out=len_out, stride=stride, shift=shift)


def part_scatter(K, ck, rng, asan=False):
    guard = 0 if asan else GUARD_BYTES
    for b, c, len_in, len_out, stride, shift, grid, what in TAP_SHAPES:
        rows = b * c
        g = grid_of(rows * len_out) if grid is None else grid
        acc = rng.standard_normal((rows, len_in)).astype(f32)
        gv = rng.standard_normal((rows, len_out)).astype(f32)
        want = scatter_ref(acc, gv, stride, shift)
        run_checked(K, ck, "conv1d_scatter_add_f32", tap_label(b, c, len_in, len_out, stride, shift, grid) + ": " + what,
                    want, g, gv.ravel(), np.float32, rows * len_in, guard, asan, dst=acc.ravel(), rows=rows, channels=c,
                    len_in=len_in, len_out=len_out, stride=stride, shift=shift)
    if asan:
        return
    # Specials: -0 + -0 = -0 (kept), -0 + +0 = +0, inf - inf, NaN, overflow.
    acc = np.array([[-0.0, -0.0, np.inf, 1.0, 3e38, 7.0, 1.0]], f32)
    gv = np.array([[-0.0, 0.0, -np.inf, np.nan, 3e38, -7.0]], f32)
    run_checked(K, ck, "conv1d_scatter_add_f32", "specials (signed zeros, inf - inf, NaN, overflow, exact zero), "
                "shift 0", scatter_ref(acc, gv, 1, 0), 1, gv.ravel(), np.float32, 7, GUARD_BYTES, False,
                dst=acc.ravel(), rows=1, channels=1, len_in=7, len_out=6, stride=1, shift=0)
    # The host's pattern: k taps of a stride-2 conv (shift j - 2, j < 5), one launch each onto the same
    # acc, equal to the float32 port run in the same tap order.
    rows, len_in, len_out, stride = 6, 101, 51, 2
    acc0 = np.zeros((rows, len_in), f32)
    gs = [rng.standard_normal((rows, len_out)).astype(f32) for _ in range(5)]
    want = acc0
    for j in range(5):
        want = scatter_ref(want, gs[j], stride, j - 2)
    for o, s in ORDERS:
        got = acc0.ravel()
        bad = []
        for j in range(5):
            got, bb = K.run("conv1d_scatter_add_f32", grid_of(rows * len_out), gs[j].ravel(), got, order=o, seed=s + j,
                            guard=GUARD_BYTES, rows=rows, channels=3, len_in=len_in, len_out=len_out, stride=stride,
                            shift=j - 2)
            bad += bb
        ck.check(f"conv1d_scatter_add_f32 5 taps in sequence (stride 2, shifts -2..2, overlapping), order {o}: "
                 "bitwise equal to the port in tap order", not bad and same(got, np.ravel(want)),
                 "; ".join(bad) or first_diff(got, want))


# ---- The references themselves: the bias_grad port against a scalar transcription of the kernel
# (per-thread loops over q with q / len_out, q % len_out; the tree on a Python list of np.float32),
# the tap map against a loop over Python ints.
def part_reference(K, ck, rng):
    b, c, L = 3, 2, 190
    dyv = (rng.standard_normal((b, c, L)) * np.array([1.0, 1e3])[None, :, None]).astype(f32)
    port = grad_port(dyv)
    ok = True
    for ch in range(c):
        red = []
        for t in range(BLOCK):
            a = f32(0)
            q = t
            while q < b * L:
                a = f32(a + dyv[q // L, ch, q % L])
                q += BLOCK
            red.append(a)
        s = BLOCK // 2
        while s > 0:
            for i in range(s):
                red[i] = f32(red[i] + red[i + s])
            s //= 2
        ok &= red[0].tobytes() == port[ch].tobytes()
    ck.check("reference: the bias_grad port equals a scalar transcription (batch 3, 2 channels, len 190)", ok)
    ok = True
    for len_in, len_out, stride, shift in [(10, 8, 1, -3), (300, 150, 2, -1), (1000, 63, 16, 7), (5, 3, 1 << 31, 1),
                                           (5, 3, 1 << 31, -(1 << 31)), (7, 4, (1 << 32) - 1, -(1 << 31))]:
        want = [(l, l * stride + shift) for l in range(len_out) if 0 <= l * stride + shift < len_in]
        ls, ix = tap_map(len_in, len_out, stride, shift)
        ok &= [(int(a), int(b)) for a, b in zip(ls, ix)] == want
    ck.check("reference: the tap map equals a loop over Python ints", ok)


def part_asan(K, ck, rng):
    part_pack(K, ck, rng, asan=True)
    part_finish(K, ck, rng, asan=True)
    part_grad(K, ck, rng, asan=True)
    part_gather(K, ck, rng, asan=True)
    part_scatter(K, ck, rng, asan=True)


if __name__ == "__main__":
    run_main("conv1d", __doc__, Kernels,
             {"pack": part_pack, "finish": part_finish, "bias_grad": part_grad, "gather": part_gather,
              "scatter_add": part_scatter, "reference": part_reference},
             {"bounds": part_asan}, seed=20240923)
