"""Emulator driver for kernels/linear.cu, the bias parts of nn.Linear (the products run in cuBLAS):
linear_bias_add_{f32,bf16} (y[r, o] += bias[o], grid-stride over rows out), linear_bias_grad_{f32,bf16}
(per-4096-row-chunk partials part[c, o] = sum of dy[r, o], sequential in r, on a (ceil(out / 256),
chunks) grid) and linear_bias_reduce_{f32,bf16} (db[o] = sum of part[c, o] in chunk order; db f32,
or T when db_is_t), launched as src/ops/linear.rs launches them, against numpy f64 references and,
bitwise, against numpy float32 ports of the kernels' arithmetic."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, run_main  # noqa: E402
from drivers_common import (BF16_POISON, F32_POISON, Bufs, bf16_bits, bf16_bits_f64,  # noqa: E402
                            bf16_round, bf16_value, first_diff, launch_xy, same)

U32, U64 = C.c_uint32, C.c_uint64
f32 = np.float32
U = 2.0 ** -24       # f32 unit roundoff
BF16_U = 2.0 ** -8   # bf16 unit roundoff (8 significant bits)
SUM_TOL = 1e-6       # sums vs f64: |got - want| <= SUM_TOL sqrt(n) ||dy[:, o]||_2 (n rows summed; zero-mean dy)
GUARD_BYTES = 256    # normal build: sentinel bytes before and after every buffer (keeps 256-byte alignment)
ALT_POISON = f32(-7777.0)                     # a finite poison for one more run: nothing may depend on it


# Mirror of kernels/linear.h (size checked against the C struct: 64 bytes, rows at 40).
class LinParams(C.Structure):
    _fields_ = [("y", P), ("bias", P), ("dy", P), ("part", P), ("db", P), ("rows", U64), ("out", U32),
                ("chunks", U32), ("db_is_t", U32), ("reserved", U32)]


assert C.sizeof(LinParams) == 64 and LinParams.rows.offset == 40


# ---- Launch shapes and parameters. These mirror src/ops/linear.rs and must be kept in sync with it:
# linear (forward, only when b is given, after the GEMM): linear_bias_add_{t} on
# clamp(ceil(rows out / 256), 1, 2^20) blocks of 256, no shared memory, params y, bias, rows, out,
# everything else NULL / 0. linear_backward (only when db is given, after the GEMMs): chunks =
# ceil(rows / SNUG_LINEAR_CHUNK_ROWS) (at most 65,535), workspace chunks out f32 (part); db_is_t = 1
# when P == T and T is not f32 (so only with bf16); y and bias NULL; linear_bias_grad_{t} on a
# (ceil(out / 256), chunks) grid of 256, then linear_bias_reduce_{t} on ceil(out / 256) blocks of
# 256 with the same parameters. (rows out > 2^28, where the 2^20 clamp bites, is too large to
# emulate: the grid-stride loop is exercised with small grids passed explicitly instead.)
CHUNK_ROWS = 4096  # SNUG_LINEAR_CHUNK_ROWS
BLOCK = 256
MAX_GRID = 1 << 20


def add_grid(rows, out):
    return min(max(-(-(rows * out) // BLOCK), 1), MAX_GRID)


def chunks_of(rows):
    return -(-rows // CHUNK_ROWS)


def out_blocks(out):
    return -(-out // BLOCK)


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for w in ("bias_add", "bias_grad", "bias_reduce"):
            for t in ("f32", "bf16"):
                emu.check_struct(f"linear_{w}_{t}", LinParams)

    def bias_add(self, bf16, y, bias, grid=None, order=0, seed=0, guard=0):
        """y (rows, out), bias (out,): storage arrays (f32, or bf16 bits as uint16). -> (y after the
        kernel, in storage form; [problems: guards, bias changed])"""
        rows, out = y.shape
        dt = np.uint16 if bf16 else np.float32
        with Mem(self.emu) as mem:
            bufs = Bufs(mem, guard)
            py, pb = bufs.put(y, dt), bufs.put(bias, dt)
            prm = LinParams(y=py, bias=pb, dy=None, part=None, db=None, rows=rows, out=out, chunks=0, db_is_t=0,
                            reserved=0)
            self.emu.launch(f"linear_bias_add_{'bf16' if bf16 else 'f32'}", prm,
                            add_grid(rows, out) if grid is None else grid, BLOCK, 0, order, seed)
            got, ok = bufs.get(py)
            bad = [] if ok else ["bytes written before / after y"]
            b2, ok = bufs.get(pb)
            if not ok:
                bad.append("bytes written before / after bias")
            if b2.tobytes() != np.ascontiguousarray(bias, dt).ravel().tobytes():
                bad.append("bias changed")
            return got.reshape(rows, out), bad

    def bias_grad(self, bf16, dy, db_is_t, order=0, seed=0, guard=0, poison=None):
        """dy (rows, out): storage array (f32, or bf16 bits). part and db poisoned first (NaN, or
        `poison`); bias_grad on the (ceil(out / 256), chunks) grid, then bias_reduce.
        -> (part (chunks, out) f32, db (out,) f32 or bf16 bits, [problems: guards, dy changed])"""
        rows, out = dy.shape
        chunks = chunks_of(rows)
        dt = np.uint16 if bf16 else np.float32
        db_dt = np.uint16 if db_is_t else np.float32
        t = "bf16" if bf16 else "f32"
        fill32 = F32_POISON if poison is None else f32(poison)
        fill_db = fill32 if not db_is_t else (BF16_POISON if poison is None else bf16_bits(np.array([poison]))[0])
        with Mem(self.emu) as mem:
            bufs = Bufs(mem, guard)
            pdy = bufs.put(dy, dt)
            ppart = bufs.put(np.full(chunks * out, fill32, f32), np.float32)
            pdb = bufs.put(np.full(out, fill_db, db_dt), db_dt)
            prm = LinParams(y=None, bias=None, dy=pdy, part=ppart, db=pdb, rows=rows, out=out, chunks=chunks,
                            db_is_t=db_is_t, reserved=0)
            launch_xy(self.emu, f"linear_bias_grad_{t}", prm, out_blocks(out), chunks, BLOCK, order, seed)
            self.emu.launch(f"linear_bias_reduce_{t}", prm, out_blocks(out), BLOCK, 0, order, seed + 1000)
            bad = []
            part, ok = bufs.get(ppart)
            if not ok:
                bad.append("bytes written before / after part")
            db, ok = bufs.get(pdb)
            if not ok:
                bad.append("bytes written before / after db")
            d2, ok = bufs.get(pdy)
            if not ok:
                bad.append("bytes written before / after dy")
            if d2.tobytes() != np.ascontiguousarray(dy, dt).ravel().tobytes():
                bad.append("dy changed")
            return part.reshape(chunks, out), db, bad


# ---- bias_add. Reference: the f64 sum y + bias[o] (exact for f32 / bf16 inputs in the ranges used)
# rounded once, to f32 (f32 entry) or straight to bf16 (bf16 entry), compared bitwise. The kernel
# adds in f32 and, for bf16, rounds the f32 sum to bf16; for two bf16 inputs that is the same as
# rounding once (the f32 sum is exact unless the exponents are > 16 apart, and then the smaller is
# below half a bf16 ulp of the larger and far from a tie).
def add_reference(bf16, y, bias):
    """y, bias: storage arrays -> the expected y in storage form."""
    yv = (bf16_value(y) if bf16 else y).astype(np.float64)
    bv = (bf16_value(bias) if bf16 else bias).astype(np.float64)
    with np.errstate(all="ignore"):
        s = yv + bv[None, :]
        return bf16_bits_f64(s) if bf16 else s.astype(f32)


# (rows, out, grid or None for the launcher's, what)
ADD_SHAPES = [
    (1, 1, None, "one element"),
    (3, 5, None, "15 elements, one partial block"),
    (4, 64, None, "256 elements: one full block"),
    (7, 33, None, "231: tail"),
    (257, 1, None, "out 1, 257 rows: 2 blocks, tail 255"),
    (8, 300, None, "2400: 10 blocks, tail 160"),
    (100, 33, 1, "3300 on 1 block (grid-stride, 13 rounds)"),
    (50, 300, 3, "15000 on 3 blocks (grid-stride, 20 rounds)"),
    (9, 257, 7, "2313 on 7 blocks (grid-stride, 2 rounds, out > 256)"),
]


def add_label(rows, out, grid):
    g = add_grid(rows, out) if grid is None else grid
    return f"rows {rows} out {out} grid {g}{' (launcher)' if grid is None else ' (explicit)'}"


def check_add(K, ck, bf16, y, bias, grid, label, guard, asan):
    want = add_reference(bf16, y, bias)
    outs, bad = [], []
    for o, s in (ORDERS[:1] if asan else ORDERS):
        got, b = K.bias_add(bf16, y, bias, grid=grid, order=o, seed=s, guard=guard)
        outs.append(got)
        bad += [x for x in b if x not in bad]
    if not same(outs[0], want):
        bad.append("vs the f64 sum rounded once: " + first_diff(outs[0], want))
    if any(not same(outs[0], r) or outs[0].tobytes() != r.tobytes() for r in outs[1:]):
        bad.append("order-dependent")
    t = "bf16" if bf16 else "f32"
    what = ("ASan: no report, " if asan else "") + "bitwise equal to the f64 sum rounded once" + \
        ("" if asan else ", guards and bias intact, bitwise equal in 3 orders")
    ck.check(f"linear_bias_add_{t} {label}: {what}", not bad, "; ".join(bad))


def part_bias_add(K, ck, rng, asan=False):
    guard = 0 if asan else GUARD_BYTES
    for rows, out, grid, what in ADD_SHAPES:
        y = rng.standard_normal((rows, out)).astype(f32)
        bias = (rng.standard_normal(out) * 10.0 ** rng.uniform(-3, 3, out)).astype(f32)
        bias[bias == 0] = 1.0  # every element must change: an unwritten one shows
        for bf16 in (False, True):
            yy, bb = (bf16_bits(y), bf16_bits(bias)) if bf16 else (y, bias)
            check_add(K, ck, bf16, yy, bb, grid, f"{add_label(rows, out, grid)}: {what}", guard, asan)
    if asan:
        return
    # Specials: signed zeros, inf, NaN, inf - inf, overflow of the sum (3e38 + 3e38 -> inf).
    y = np.array([[0.0, -0.0, -0.0, np.inf, np.inf, np.nan, 3e38, -3e38, 1.0, 1.0],
                  [-0.0, 0.0, 1.0, -np.inf, 1.0, 2.0, -3e38, 3e38, -1.0, 5e-3]], f32)
    bias = np.array([-0.0, -0.0, -0.0, -np.inf, 1.0, 1.0, 3e38, -3e38, 1.0, -5e-3], f32)
    for bf16 in (False, True):
        yy, bb = (bf16_bits(y), bf16_bits(bias)) if bf16 else (y, bias)
        check_add(K, ck, bf16, yy, bb, None, "specials (±0, ±inf, NaN, inf - inf, overflow, cancellation)",
                  GUARD_BYTES, False)


# ---- bias grad. Port: the kernels' float32 arithmetic (per chunk acc = 0, acc += dy[r, o] for the
# chunk's rows in order; then db acc = 0, acc += part[c, o] for c in order; bf16 db rounded to
# nearest even), compared bitwise. Reference: f64 sums per chunk and over all rows; tolerance
# SUM_TOL sqrt(n) ||dy[:, o]||_2 (n the rows summed; zero-mean dy: the rounding errors of a
# sequential f32 sum grow like u n sigma / sqrt(2), about 25 times below it), plus BF16_U |want| for
# a bf16 db.
def grad_port(dyv):
    """dyv: (rows, out) f32 values -> (part (chunks, out), db (out,)) as the kernels compute them (f32)."""
    rows, out = dyv.shape
    chunks = chunks_of(rows)
    part = np.empty((chunks, out), f32)
    with np.errstate(all="ignore"):
        for c in range(chunks):
            acc = np.zeros(out, f32)
            for r in range(c * CHUNK_ROWS, min((c + 1) * CHUNK_ROWS, rows)):
                acc = acc + dyv[r]
            part[c] = acc
        db = np.zeros(out, f32)
        for c in range(chunks):
            db = db + part[c]
    return part, db


def grad_reference(dyv):
    """-> (part, db) f64 sums and their tolerances (same shapes)."""
    rows, out = dyv.shape
    d = dyv.astype(np.float64)
    chunks = chunks_of(rows)
    part, ptol = np.empty((chunks, out)), np.empty((chunks, out))
    for c in range(chunks):
        blk = d[c * CHUNK_ROWS:(c + 1) * CHUNK_ROWS]
        part[c] = blk.sum(0)
        ptol[c] = SUM_TOL * np.sqrt(blk.shape[0]) * np.sqrt((blk ** 2).sum(0))
    return part, ptol, d.sum(0), SUM_TOL * np.sqrt(rows) * np.sqrt((d ** 2).sum(0))


def within(got, want, tol):
    """-> (worst |got - want| / tol, problem or '')"""
    got = np.asarray(got, np.float64)
    with np.errstate(all="ignore"):
        r = np.abs(got - want) / np.maximum(tol, 1e-300)
    r = np.where(np.isfinite(got), r, np.inf)
    worst = float(r.max())
    if worst <= 1.0:
        return worst, ""
    i = np.unravel_index(int(np.argmax(r)), r.shape)
    return worst, (f"{int((r > 1).sum())} over tolerance (worst {worst:.3g}x at {tuple(int(v) for v in i)}: got "
                   f"{float(got[i]):.9g}, want {float(want[i]):.9g})")


def check_grad(K, ck, bf16, db_is_t, dy, label, guard, asan, f64=True):
    """dy: (rows, out) f32 values (bf16-representable for bf16)."""
    rows, out = dy.shape
    store = bf16_bits(dy) if bf16 else dy
    runs, bad = [], []
    todo = [(o, s, None) for o, s in (ORDERS[:1] if asan else ORDERS)] + ([] if asan else [(0, 0, ALT_POISON)])
    for o, s, poison in todo:
        part, db, b = K.bias_grad(bf16, store, db_is_t, order=o, seed=s, guard=guard, poison=poison)
        runs.append((part, db))
        bad += [x for x in b if x not in bad]
    part, db = runs[0]
    ppart, pdb = grad_port(dy)
    if db_is_t:
        pdb = bf16_bits(pdb)
    if not same(part, ppart):
        bad.append("part vs the float32 port: " + first_diff(part, ppart))
    if not same(db, pdb):
        bad.append("db vs the float32 port: " + first_diff(db, pdb))
    if any(r[0].tobytes() != part.tobytes() or r[1].tobytes() != db.tobytes() for r in runs[1:-1 if not asan else None]):
        bad.append("order-dependent")
    if not asan and (runs[-1][0].tobytes() != part.tobytes() or runs[-1][1].tobytes() != db.tobytes()):
        bad.append("depends on the outputs' prior contents (elements left unwritten)")
    errs = ""
    if f64:
        wpart, ptol, wdb, dtol = grad_reference(dy)
        dbv = bf16_value(db) if db_is_t else db
        if db_is_t:
            dtol = dtol + BF16_U * np.abs(wdb)
        w1, p1 = within(part, wpart, ptol)
        w2, p2 = within(dbv, wdb, dtol)
        bad += [f"part vs f64: {p1}"] if p1 else []
        bad += [f"db vs f64: {p2}"] if p2 else []
        errs = f"[worst part {w1:.2g}, db {w2:.2g} of tol]"
    t = "bf16" if bf16 else "f32"
    what = ("ASan: no report, " if asan else "") + "part and db bitwise equal to the float32 port" + \
        (f", within {SUM_TOL:g} sqrt(n) ||dy||_2{' + bf16 rounding' if db_is_t else ''} of f64" if f64 else "") + \
        ("" if asan else ", outputs poisoned, guards and dy intact, bitwise equal in 3 orders and under 2 poisons")
    ck.check(f"linear_bias_grad/reduce_{t} db {'T (bf16)' if db_is_t else 'f32'} {label}: {what}", not bad,
             "; ".join(bad) if bad else errs)


GRAD_ROWS = [1, 4095, 4096, 4097, 9000]
GRAD_OUTS = [1, 33, 300]


def grad_label(rows, out):
    ch = chunks_of(rows)
    last = rows - (ch - 1) * CHUNK_ROWS
    return (f"rows {rows} out {out} (grid ({out_blocks(out)}, {ch}), {ch} chunk(s), the last of {last} rows; "
            f"{out_blocks(out) * BLOCK - out} idle threads)")


def grad_inputs(rng, rows, out, bf16):
    """zero-mean dy, the columns scaled by 10^U(-3, 3)"""
    dy = (rng.standard_normal((rows, out)) * 10.0 ** rng.uniform(-3, 3, out)).astype(f32)
    return bf16_round(dy) if bf16 else dy


def part_grad_f32(K, ck, rng, asan=False):
    guard = 0 if asan else GUARD_BYTES
    for rows in GRAD_ROWS:
        for out in GRAD_OUTS:
            check_grad(K, ck, False, 0, grad_inputs(rng, rows, out, False), grad_label(rows, out), guard, asan)
    if asan:
        return
    # Specials, 2 chunks: column 0 +inf in chunk 0 and -inf in chunk 1 (parts ±inf, db NaN); column 1
    # a NaN; column 2 3e38 twice (the running sum overflows); column 3 signed zeros only (-0 sums to
    # +0: acc starts at +0); column 4 huge cancelling values (1e30, -1e30) around small ones.
    rows, out = 4097, 5
    dy = np.zeros((rows, out), f32)
    dy[:, 4] = rng.standard_normal(rows).astype(f32)
    dy[10, 0], dy[4096, 0] = np.inf, -np.inf
    dy[77, 1] = np.nan
    dy[5, 2], dy[6, 2] = 3e38, 3e38
    dy[:, 3] = -0.0
    dy[100, 4], dy[200, 4] = 1e30, -1e30
    check_grad(K, ck, False, 0, dy, "specials (±inf across chunks, NaN, overflow, -0, cancelling 1e30)",
               GUARD_BYTES, False, f64=False)
    dyb = bf16_round(dy)
    check_grad(K, ck, True, 1, dyb, "specials (±inf across chunks, NaN, overflow, -0, cancelling 1e30)",
               GUARD_BYTES, False, f64=False)


def part_grad_bf16(K, ck, rng, asan=False):
    guard = 0 if asan else GUARD_BYTES
    for rows in GRAD_ROWS:
        for i, out in enumerate(GRAD_OUTS):
            for db_is_t in ((0, 1) if asan or (rows + i) % 2 else (1, 0)):
                check_grad(K, ck, True, db_is_t, grad_inputs(rng, rows, out, True), grad_label(rows, out), guard,
                           asan)


# ---- The port and the reference themselves: the port against a plain Python loop over Python floats
# rounded to f32 after each add (struct-free: np.float32 scalars), and the bf16 rounding once
# against known values.
def part_reference(K, ck, rng):
    dy = (rng.standard_normal((4100, 3)) * [1, 1e3, 1e-3]).astype(f32)
    part, db = grad_port(dy)
    ok = True
    for o in range(3):
        accs = []
        for c in range(2):
            a = f32(0)
            for r in range(c * CHUNK_ROWS, min((c + 1) * CHUNK_ROWS, 4100)):
                a = f32(a + dy[r, o])
            accs.append(a)
        d = f32(f32(0) + accs[0]) + accs[1]
        ok &= accs[0].tobytes() == part[0, o].tobytes() and accs[1].tobytes() == part[1, o].tobytes()
        ok &= f32(d).tobytes() == db[o].tobytes()
    ck.check("reference: the grad port equals a scalar loop (4100 rows, 2 chunks)", ok, "")
    known = [(1.0, 0x3F80), (1.0 + 2 ** -8, 0x3F80), (1.0 + 2 ** -8 + 2 ** -40, 0x3F81), (1.0 + 3 * 2 ** -8, 0x3F82),
             (-(1.0 + 2 ** -7), 0xBF81), (3e38 + 3e38, 0x7F80), (0.0, 0), (-0.0, 0x8000), (float("inf"), 0x7F80),
             (float("nan"), 0x7FFF)]
    got = bf16_bits_f64(np.array([v for v, _ in known]))
    ck.check("reference: f64 -> bf16 rounding once (ties to even, a tie broken by a bit 2^-40 below, overflow, "
             "signed zero, inf, NaN)", got.tolist() == [b for _, b in known], f"got {[hex(v) for v in got.tolist()]}")


def part_asan(K, ck, rng):
    part_bias_add(K, ck, rng, asan=True)
    part_grad_f32(K, ck, rng, asan=True)
    part_grad_bf16(K, ck, rng, asan=True)


if __name__ == "__main__":
    run_main("linear", __doc__, Kernels,
             {"bias_add": part_bias_add, "grad_f32": part_grad_f32, "grad_bf16": part_grad_bf16,
              "reference": part_reference},
             {"bounds": part_asan}, seed=20240901)
