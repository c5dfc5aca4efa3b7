"""Emulator driver for kernels/layer_norm.cu: the row kernels layer_norm_{fwd,bwd_dx,bwd_params}_{f32,bf16}
(I = 1), the column kernels layer_norm_{fwd,bwd_dx,bwd_params}_cols_{f32,bf16} (I > 1) and
layer_norm_reduce_f32 (LayerNorm over C of x as (O, C, I): the last dimension, I = 1, and the
channels of [B, C, L...]), run in the Rust launcher's order against a numpy f64 reference of
PyTorch's nn.LayerNorm (biased variance; for bf16: on the bf16-rounded inputs)."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, bits_equal, rel_err, run_main  # noqa: E402
from drivers_common import Bufs, bf16_value, launch_xy  # noqa: E402

F32, U32, U64 = C.c_float, C.c_uint32, C.c_uint64
f32 = np.float32
TOL = 1e-5           # f32 entries, and the f32 statistics / parameter gradients of the bf16 entries
BF16_TOL = 1e-2      # bf16-stored y and dx, relative to max |want|
SHIFT_TOL = 1e-3     # x = 1000 + N(0, 1): x - mean loses ~10 bits to the f32 mean (see CASES)
GUARD_BYTES = 256    # normal build: sentinel bytes before and after every buffer (keeps 256-byte alignment)


# Not drivers_common.bf16_bits (nor bf16_round): a NaN is rounded like other bits, not made 0x7fff.
def bf16_bits(x):
    """f32 -> bf16 bits, round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_round(x):
    return bf16_value(bf16_bits(x))


# Mirror of kernels/layer_norm.h (size checked against the C struct: 120 bytes, o at 88, chunks at 116).
PTRS = ("x", "y", "gamma", "beta", "mean", "rstd", "dy", "dx", "part", "dgamma", "dbeta")


class LnParams(C.Structure):
    _fields_ = [(k, P) for k in PTRS] + [("o", U64), ("i", U64), ("c", U32), ("tpr", U32), ("eps", F32), ("chunks", U32)]


# ---- Launch shapes and parameters. These mirror src/ops/layer_norm.rs and must be kept in sync
# with it: dims() (Axis::Last: O = product of the leading dimensions, C = the last, I = 1;
# Axis::Channels on [B, C, L...]: O = B, I = prod(L...)), params() (tpr = lanes_per_row(C) when
# I == 1, else 1; the forward passes eps, chunks 0 and NULL dy/dx/part/dgamma/dbeta; the backward
# passes eps 1.0, y and beta NULL, chunks = chunks() always, part NULL unless a parameter gradient
# is asked for), launch_rows() (I == 1: the row kernels, 256-thread blocks, grid ceil(O I tpr / 256),
# no shared memory; I > 1: the _cols kernels, blocks of 32 slices(C) threads, grid ceil(O I / 32),
# 8 blockDim bytes of dynamic shared memory), and the backward's order: bwd_dx, then only when
# dgamma or dbeta is given bwd_params (I == 1: layer_norm_bwd_params_T on a (ceil(C / 32), chunks)
# grid; I > 1: layer_norm_bwd_params_cols_T on (C, chunks)) and layer_norm_reduce_f32 on
# ceil(C / 32) blocks, all of 256 threads with 2 KiB of dynamic shared memory. Workspace: chunks
# 2 C f32 (backward_workspace_bytes).
CHUNK_ROWS = 4096       # SNUG_LN_CHUNK_ROWS (I > 1)
CHUNK_ROWS_LAST = 512   # CHUNK_ROWS_LAST (I == 1)
MAX_CHUNKS = 65535
BLOCK = 256


def dims(shape, axis):
    if axis == "last":
        return int(np.prod(shape[:-1], dtype=np.int64)), shape[-1], 1
    return shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64))


def pow2_ceil(n):
    return 1 << (n - 1).bit_length()


def lanes_per_row(c):
    return min(32, max(4, pow2_ceil(-(-c // 8))))


def slices(c):
    return min(16, max(1, -(-c // 16)))


def tpr_of(cc, i):
    return lanes_per_row(cc) if i == 1 else 1


def row_launch(o, cc, i, s=None):
    """-> (grid, block, dynamic shared bytes) of the forward / bwd_dx launch; s overrides slices(C)
    (not the launcher's choice: checks the column kernels with other C-splits)."""
    if i == 1:
        return -(-(o * tpr_of(cc, i)) // BLOCK), BLOCK, 0
    threads = 32 * (s or slices(cc))
    return -(-(o * i) // 32), threads, 8 * threads


def chunks_of(o, cc, i):
    return min(-(-(o * i) // (CHUNK_ROWS_LAST if i == 1 else CHUNK_ROWS)), MAX_CHUNKS)


def chunk_bounds(rows, chunks):
    """Balanced chunks: chunk k is rows [k rows / chunks, (k + 1) rows / chunks)."""
    return [(k * rows // chunks, (k + 1) * rows // chunks) for k in range(chunks)]


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for t in ("f32", "bf16"):
            for w in ("fwd", "bwd_dx", "bwd_params", "fwd_cols", "bwd_dx_cols", "bwd_params_cols"):
                emu.check_struct(f"layer_norm_{w}_{t}", LnParams)
        emu.check_struct("layer_norm_reduce_f32", LnParams)

    def run(self, c, x, gamma, beta, dy, order=0, seed=0, guard=0):
        """x, dy: (O, C, I) f32 (for bf16: already bf16-representable); gamma, beta: (C,) f32 or None.
        The forward, then the backward on the forward's mean and rstd, as src/ops/layer_norm.rs
        launches them; every output and the workspace NaN-poisoned first.
        -> ({name: array}, [names of buffers whose guards changed], [inputs the kernels changed])"""
        o, cc, i = x.shape
        bf16 = c["bf16"]
        t = "bf16" if bf16 else "f32"
        cols = "_cols" if i > 1 else ""
        dt = np.uint16 if bf16 else np.float32
        rows, tpr, chunks = o * i, tpr_of(cc, i), chunks_of(o, cc, i)
        grid, block, smem = row_launch(o, cc, i, c["slices"])
        want_params = c["dgamma"] or c["dbeta"]
        with Mem(self.emu) as mem:
            bufs = Bufs(mem, guard)
            ins = {"x": (bf16_bits(x) if bf16 else x, dt), "dy": (bf16_bits(dy) if bf16 else dy, dt),
                   "gamma": (gamma, np.float32), "beta": (beta, np.float32)}
            p = {k: bufs.put(a, d) for k, (a, d) in ins.items()}
            p["y"], p["dx"] = (bufs.put(np.zeros(x.size), dt, poison=True) for _ in range(2))
            p["mean"], p["rstd"] = (bufs.put(np.zeros(rows), np.float32, poison=True) for _ in range(2))
            p["part"] = bufs.put(np.zeros(chunks * 2 * cc), np.float32, poison=True) if want_params else None
            p["dgamma"] = bufs.put(np.zeros(cc), np.float32, poison=True) if c["dgamma"] else None
            p["dbeta"] = bufs.put(np.zeros(cc), np.float32, poison=True) if c["dbeta"] else None
            dim = dict(o=o, i=i, c=cc, tpr=tpr)
            fwd = LnParams(x=p["x"], y=p["y"], gamma=p["gamma"], beta=p["beta"], mean=p["mean"], rstd=p["rstd"],
                           eps=c["eps"], chunks=0, **dim)
            self.emu.launch(f"layer_norm_fwd{cols}_{t}", fwd, grid, block, smem, order, seed)
            saved = {k: bufs.get(p[k])[0] for k in ("mean", "rstd")}
            bwd = LnParams(x=p["x"], gamma=p["gamma"], mean=p["mean"], rstd=p["rstd"], dy=p["dy"], dx=p["dx"],
                           part=p["part"], dgamma=p["dgamma"], dbeta=p["dbeta"], eps=1.0, chunks=chunks, **dim)
            self.emu.launch(f"layer_norm_bwd_dx{cols}_{t}", bwd, grid, block, smem, order, seed + 1)
            if want_params:
                launch_xy(self.emu, f"layer_norm_bwd_params{cols}_{t}", bwd, cc if cols else -(-cc // 32), chunks, BLOCK,
                          order, seed + 2, smem=8 * BLOCK)
                self.emu.launch("layer_norm_reduce_f32", bwd, -(-cc // 32), BLOCK, 8 * BLOCK, order, seed + 3)
            res, bad_guard, changed = {}, [], []
            for name in ("y", "dx", "mean", "rstd", "part", "dgamma", "dbeta"):
                if p[name] is None:
                    res[name] = None
                    continue
                a, ok = bufs.get(p[name])
                if not ok:
                    bad_guard.append(name)
                if name in ("y", "dx"):
                    a = (bf16_value(a) if bf16 else a).reshape(x.shape)
                elif name == "part":
                    a = a.reshape(chunks, 2, cc)
                res[name] = a
            for name in ("mean", "rstd"):  # read, not written, by the backward
                if res[name].tobytes() != saved[name].tobytes():
                    changed.append(name + " (by the backward)")
            for name, (a, d) in ins.items():
                if p[name] is None:
                    continue
                got, ok = bufs.get(p[name])
                if not ok:
                    bad_guard.append(name)
                if got.tobytes() != np.ascontiguousarray(a, d).ravel().tobytes():
                    changed.append(name)
            return res, bad_guard, changed


# ---- f64 reference (PyTorch nn.LayerNorm over C of (O, C, I), biased variance): mean, rstd =
# 1/sqrt(var + eps) per row (o, i) in o I + i order, y = xh gamma + beta, g = dy gamma,
# dx = rstd (g - mean_c g - xh mean_c(g xh)), dgamma = sum_rows dy xh, dbeta = sum_rows dy, and the
# per-chunk partials of the workspace (the balanced chunks of chunk_bounds, rows in o I + i order).
def reference(x, gamma, beta, dy, eps):
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    o, cc, i = x.shape
    gm = np.ones(cc) if gamma is None else gamma.astype(np.float64)
    bt = np.zeros(cc) if beta is None else beta.astype(np.float64)
    m = x.mean(1)
    var = ((x - m[:, None, :]) ** 2).mean(1)
    rstd = 1.0 / np.sqrt(var + float(f32(eps)))
    xh = (x - m[:, None, :]) * rstd[:, None, :]
    y = xh * gm[None, :, None] + bt[None, :, None]
    g = dy * gm[None, :, None]
    a, b = g.mean(1), (g * xh).mean(1)
    dx = rstd[:, None, :] * (g - a[:, None, :] - xh * b[:, None, :])
    terms = np.stack([dy * xh, dy]).transpose(0, 1, 3, 2).reshape(2, o * i, cc)  # [dgamma / dbeta, row, c]
    part = np.stack([terms[:, a:b].sum(1) for a, b in chunk_bounds(o * i, chunks_of(o, cc, i))])
    # per-c size of the summands (their 2-norm over the rows): the scale of a sum's rounding error
    norm = np.sqrt((terms ** 2).sum(1))
    # the size of the terms dx is the difference of: max |dx| up to a small factor, except where they
    # cancel (C = 2: dx = rstd (g_c - g_c') (1 - xh^2) / 2 with 1 - xh^2 = eps / (var + eps), so dx
    # is ~eps / var of its terms and f32 rounding of the terms dominates it)
    terms_dx = float((rstd[:, None, :] * (np.abs(g) + np.abs(a)[:, None, :] + np.abs(xh * b[:, None, :]))).max())
    return dict(y=y, dx=dx, mean=m.ravel(), rstd=rstd.ravel(), part=part, dgamma=part[:, 0].sum(0),
                dbeta=part[:, 1].sum(0), norm_dgamma=norm[0], norm_dbeta=norm[1], terms_dx=terms_dx)


# ---- Cases: shapes as the Rust API sees them, with axis "last" (row kernels) or "channels" (column
# kernels when I > 1; [B, C] and [1, C, 1] have I = 1 and take the row kernels). Row kernels: tpr =
# 4 (C = 1, 5, 32), 8 (C = 33, 40, 48, 64), 16 (C = 100), 32 (C = 300, 1000: two and four
# 8-element segments per lane, the passes alternating direction); lanes with no or fewer elements;
# rows x tpr a multiple of 256 and not (tail threads mirror the last row and must write nothing);
# one row; 1100 rows (3 balanced 512-row chunks; C = 40: a full and a partial 32-channel tile of
# bwd_params) and 5000 rows (10 chunks: the reduce's warps take 2 each). Column kernels: I = 2, 5,
# 7, 9, 16 (over two dimensions), 20, 33, 40, 45, 128, rows a multiple of 32 and not (tail lanes);
# C = 1, 2 (dx ~eps / var of its terms), 35 (3 slices of 12, 12, 11: C not a multiple of the slice
# count), 256 (16 slices of 16: the BEV map's C; one forward segment, two backward), 300 (16 of 19,
# the last 15), 512 (16 of 32: [8, 512, 960] scaled down to few columns; two forward segments, four
# backward), 1000 (16 of 63, the last 55: four and eight segments); 9000 rows (three balanced
# chunks). `slices` overrides the launcher's slices(C) (block 32 slices) to run the column kernels
# with other C-splits: more slices than C (C = 5 on 16: 11 empty slices; C = 17 on 16: Q = 2, 7
# empty) and a split into 7. gamma / beta absent; dgamma only (the Rust API takes it only with
# gamma), dbeta only, neither (bwd_dx alone, no workspace). shift: x = shift + N(0, 1): the
# two-pass variance keeps rstd at f32 accuracy (E[x^2] - mean^2 in f32 is off by percents), but y,
# dx and dgamma depend on x - mean, where the rounding of the f32 mean (about (per-thread count +
# log2 of the partial count + 1) 2^-24 1000, up to ~1e-3 absolute here; ~1e-4 observed) is not
# small against std 1: those are checked at SHIFT_TOL. const_rows: rows of one repeated value (var
# 0 up to the rounding of the mean).
def mk(axis, shape, gamma=True, beta=True, dgamma=True, dbeta=True, eps=1e-5, scale=1.0, shift=0.0, const_rows=0,
       bf16=False, slices=None):
    assert not dgamma or gamma, "the Rust API takes dgamma only with gamma"
    assert slices is None or dims(shape, axis)[2] > 1, "slices applies to the column kernels"
    return dict(axis=axis, shape=shape, gamma=gamma, beta=beta, dgamma=dgamma, dbeta=dbeta, eps=eps, scale=scale,
                shift=shift, const_rows=const_rows, bf16=bf16, slices=slices)


CASES = [
    mk("last", (4, 1)),                                          # C = 1: tpr 4, 3 idle lanes per row
    mk("last", (3, 5), const_rows=1),                            # 12 threads: one partial block
    mk("last", (2, 3, 32), eps=0.1, scale=0.3),                  # tpr 4, 8 per lane: one full segment
    mk("last", (7, 33), gamma=False, dgamma=False),              # tpr 8: lane 0 takes 5, the others 4
    mk("last", (9, 64), scale=50.0),                             # tpr 8: 72 threads
    mk("last", (32, 64), beta=False, dbeta=False),               # 256 threads: no tail; dgamma only
    mk("last", (5, 100), dgamma=False),                          # tpr 16 (7 or 6 per lane); dbeta only
    mk("last", (4, 64), shift=1000.0),                           # large mean
    mk("last", (6, 48), gamma=False, beta=False, dgamma=False, dbeta=False),  # no parameters, bwd_dx alone
    mk("last", (3, 300)),                                        # tpr 32, 10 / 9 per lane: two segments
    mk("last", (2, 1000), shift=1000.0),                         # four segments per lane, large mean
    mk("last", (1, 7)),                                          # one row
    mk("channels", (1, 40, 1)),                                  # one column of [B, C, L]: I = 1, row kernels
    mk("last", (1100, 40)),                                      # 3 chunks of 366 / 367 rows; 2 channel tiles
    mk("last", (5000, 3), beta=False, dbeta=False),              # 10 chunks
    mk("channels", (2, 4, 2)),                                   # I = 2, C = 4: one slice; 28 tail lanes
    mk("channels", (3, 5, 7), gamma=False, dgamma=False, scale=1e-3),  # I = 7
    mk("channels", (2, 6, 33), beta=False, dbeta=False),         # I = 33: 66 rows, 3 blocks; dgamma only
    mk("channels", (1, 8, 4, 4), dgamma=False, eps=1e-6),        # I = 16 over two dimensions; dbeta only
    mk("channels", (2, 1, 5)),                                   # C = 1
    mk("channels", (2, 3, 128)),                                 # 256 rows: no tail
    mk("channels", (2, 16, 9), shift=1000.0),                    # large mean
    mk("channels", (3, 2, 1, 5), gamma=False, beta=False, dgamma=False, dbeta=False),  # C = 2: dx cancels
    mk("channels", (2, 3, 60, 75)),                              # 9000 rows: 3 chunks, 282 blocks (tail 8)
    mk("channels", (1, 64, 2)),                                  # two columns: 4 slices of 16
    mk("channels", (2, 35, 20)),                                 # 3 slices of 12, 12, 11; 40 rows
    mk("channels", (4, 256, 16)),                                # BEV C: 16 slices of 16
    mk("channels", (2, 512, 40)),                                # 16 slices of 32; 80 rows, tail 16
    mk("channels", (1, 512, 40), shift=1000.0, gamma=False, dgamma=False),  # the same, large mean
    mk("channels", (1, 300, 45), dgamma=False),                  # 16 slices of 19 (last 15)
    mk("channels", (1, 1000, 33)),                               # 16 slices of 63 (last 55)
    mk("channels", (2, 5, 40), slices=16),                       # 16 slices of C = 5: 11 empty
    mk("channels", (1, 17, 37), slices=16, beta=False, dbeta=False),  # Q = 2: 8 full, 1 single, 7 empty
    mk("channels", (3, 40, 11), slices=7),                       # 7 slices of 6 (last 4)
]

BF16_CASES = [
    mk("last", (7, 33), bf16=True),
    mk("last", (9, 64), gamma=False, dgamma=False, bf16=True),   # tail block; dbeta only
    mk("last", (3, 5), beta=False, dbeta=False, bf16=True),      # dgamma only
    mk("last", (3, 300), bf16=True),                             # two segments per lane
    mk("last", (1100, 40), bf16=True),                           # 3 chunks
    mk("channels", (2, 6, 33), bf16=True),
    mk("channels", (1, 3, 4100), bf16=True),                     # 2 chunks of 2050 rows
    mk("channels", (2, 4, 7), gamma=False, beta=False, dgamma=False, dbeta=False, bf16=True),
    mk("channels", (2, 512, 40), bf16=True),                     # 16 slices of 32
    mk("channels", (1, 300, 45), bf16=True),                     # 16 slices of 19
    mk("channels", (2, 5, 40), slices=16, bf16=True),            # empty slices
]


def case_name(c):
    o, cc, i = dims(c["shape"], c["axis"])
    rows = o * i
    grid, block, smem = row_launch(o, cc, i, c["slices"])
    if i == 1:
        tpr = tpr_of(cc, i)
        per, tail = -(-cc // tpr), -(rows * tpr) % BLOCK
        how = f"rows: tpr {tpr}, up to {per} per lane, {grid} block(s)"
    else:
        S = block // 32
        q = -(-cc // S)
        per, tail = q, -rows % 32
        how = (f"columns: {S} slice(s) of {q}{' (launcher: ' + str(slices(cc)) + ')' if c['slices'] else ''}, "
               f"{grid} block(s) of {block}")
    opts = [k for k in ("gamma", "beta") if c[k]] or ["no gamma/beta"]
    grads = [k for k in ("dgamma", "dbeta") if c[k]] or ["no param grads"]
    extra = (f", eps {c['eps']:g}" if c["eps"] != 1e-5 else "") + (f", x scale {c['scale']:g}" if c["scale"] != 1 else "") + \
        (f", x = {c['shift']:g} + N(0, 1)" if c["shift"] else "") + (f", {c['const_rows']} constant row" if c["const_rows"] else "")
    return (f"{c['axis']} {list(c['shape'])} (O={o} C={cc} I={i}; {how}, {'tail ' + str(tail) if tail else 'no tail'}, "
            f"{chunks_of(o, cc, i)} chunk(s); {'+'.join(opts)}; {'+'.join(grads)}{extra})")


def inputs(rng, c):
    o, cc, i = dims(c["shape"], c["axis"])
    x = (rng.standard_normal((o, cc, i)) * c["scale"] + c["shift"]).astype(f32)
    for r in range(c["const_rows"]):
        x[r // i, :, r % i] = f32(0.3 + r)
    dy = rng.standard_normal((o, cc, i)).astype(f32)
    gamma = (1.0 + 0.5 * rng.standard_normal(cc)).astype(f32) if c["gamma"] else None
    beta = rng.standard_normal(cc).astype(f32) if c["beta"] else None
    if c["bf16"]:
        x, dy = bf16_round(x), bf16_round(dy)
    return x, gamma, beta, dy


def compare(res, want, c):
    """-> (problems, worst errors). y, mean, rstd: max |got - want| / max |want|; dx: max |got - want|
    / max |rstd| (|g| + |mean_c g| + |xh mean_c(g xh)|) (its terms; see reference); the workspace's
    partials (part[:, 0] of dgamma, part[:, 1] of dbeta), dgamma, dbeta: max over c of
    |got - want| / (2-norm of the summands over the rows)."""
    bad, errs = [], []
    items = [(n, res[n], want[n], None) for n in ("y", "mean", "rstd")] + [("dx", res["dx"], want["dx"], want["terms_dx"])]
    if res["part"] is not None:
        items += [("part[dgamma]", res["part"][:, 0], want["part"][:, 0], want["norm_dgamma"]),
                  ("part[dbeta]", res["part"][:, 1], want["part"][:, 1], want["norm_dbeta"])]
    items += [(n, res[n], want[n], want["norm_" + n]) for n in ("dgamma", "dbeta") if res[n] is not None]
    if c["shift"]:
        # x - mean carries the f32 mean's rounding d (a row constant, ~ulp(shift)), so dgamma_c is
        # off by ~sum_rows dy d rstd, which the 2-norm of dy xh does not bound where that is small
        # (few rows, many channels): measure dgamma against the 2-norm of dy too.
        items = [(n, g, w, np.maximum(nm, want["norm_dbeta"]) if "dgamma" in n else nm) for n, g, w, nm in items]
    for name, got, w, norm in items:
        if not np.isfinite(got).all():
            bad.append(f"{name}: {int((~np.isfinite(got)).sum())} of {got.size} non-finite (unwritten) elements")
            continue
        if c["bf16"] and name in ("y", "dx"):
            tol = BF16_TOL
        elif c["shift"] and (name in ("y", "dx") or "dgamma" in name):  # through x - mean
            tol = SHIFT_TOL
        else:
            tol = TOL
        e = rel_err(got, w) if norm is None else float((np.abs(got - w) / np.maximum(norm, 1e-30)).max())
        errs.append(f"{name} {e:.0e}")
        if not e < tol:
            j = np.unravel_index(np.abs(got - w).argmax(), got.shape)
            bad.append(f"{name}: err {e:.1e} > {tol:g} (worst at {tuple(int(t) for t in j)}: got {float(got[j]):.7g}, "
                       f"want {float(w[j]):.7g})")
    return bad, " ".join(errs)


def run_cases(K, ck, rng, cases, asan):
    for c in cases:
        x, gamma, beta, dy = inputs(rng, c)
        want = reference(x, gamma, beta, dy, c["eps"])
        orders = ORDERS[:1] if asan else ORDERS
        runs = [K.run(c, x, gamma, beta, dy, o, s, guard=0 if asan else GUARD_BYTES) for o, s in orders]
        res, guards, changed = runs[0]
        bad, errs = compare(res, want, c)
        if guards:
            bad.append(f"bytes written before / after the buffers of {guards}")
        if changed:
            bad.append(f"inputs changed: {changed}")
        names = [n for n in res if res[n] is not None]
        diff = [n for n in names if any(not bits_equal([res[n]], [r[0][n]]) for r in runs[1:])]
        if diff:
            bad.append("order-dependent: " + ", ".join(diff))
        b16 = c["bf16"]
        tol = f"y/dx rel {BF16_TOL:g}, stats and param grads {TOL:g}" if b16 else \
            f"rel {SHIFT_TOL:g} (y, dx, dgamma; mean/rstd/dbeta {TOL:g})" if c["shift"] else f"rel {TOL:g}"
        what = f"ASan: no report, vs f64 {tol}" if asan else \
            f"y/mean/rstd/dx/part/dgamma/dbeta vs f64 {tol}, outputs NaN-poisoned, guards intact, inputs and " \
            f"saved stats unchanged, bitwise equal in 3 orders"
        ck.check(f"layer_norm{' bf16' if b16 else ''} {case_name(c)}: {what}", not bad, "; ".join(bad) if bad else f"[{errs}]")


def part_f32(K, ck, rng, asan=False):
    run_cases(K, ck, rng, CASES, asan)


def part_bf16(K, ck, rng, asan=False):
    run_cases(K, ck, rng, BF16_CASES, asan)


def part_invariance(K, ck, rng):
    # The C-split of the column kernels and the lanes per row of the row kernels are functions of C
    # alone: a row's y, mean, rstd and dx are bitwise the same whatever the other rows (fewer rows,
    # another batch size, another grid), f32 and bf16.
    for axis, big, (so, si), bf16 in [("channels", (2, 300, 45), (1, 7), False), ("channels", (3, 512, 40), (2, 33), False),
                                      ("channels", (2, 35, 20), (2, 3), True), ("last", (40, 100), (3, 1), False),
                                      ("last", (600, 64), (9, 1), True)]:
        c = mk(axis, big, bf16=bf16)
        x, gamma, beta, dy = inputs(rng, c)
        res = K.run(c, x, gamma, beta, dy, guard=GUARD_BYTES)[0]
        sub = (slice(0, so), slice(None), slice(0, si))
        o, cc, i = x.shape
        rs = K.run(c, np.ascontiguousarray(x[sub]), gamma, beta, np.ascontiguousarray(dy[sub]), guard=GUARD_BYTES)[0]
        diff = [n for n in ("y", "dx") if res[n][sub].tobytes() != rs[n].tobytes()]
        diff += [n for n in ("mean", "rstd") if res[n].reshape(o, i)[:so, :si].tobytes() != rs[n].tobytes()]
        ck.check(f"layer_norm{' bf16' if bf16 else ''} {axis} {list(big)} vs its first {so} x {si} rows alone: y, mean, "
                 f"rstd, dx bitwise equal (the split of C depends on C only)", not diff,
                 f"differ: {', '.join(diff)}" if diff else "")


def part_reference(K, ck, rng):
    # The vectorised reference against a row loop of the definition, and its backward against
    # central differences of sum(y * dy) (dx, dgamma, dbeta), f64.
    worst = 0.0
    for shape in [(3, 5, 1), (2, 4, 3), (1, 1, 2)]:
        x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
        gamma, beta = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
        r = reference(x, gamma, beta, dy, 1e-3)
        for o in range(shape[0]):
            for i in range(shape[2]):
                v = x[o, :, i]
                m = v.sum() / len(v)
                s = 1.0 / np.sqrt(((v - m) ** 2).sum() / len(v) + float(f32(1e-3)))
                worst = max(worst, abs(r["mean"][o * shape[2] + i] - m), abs(r["rstd"][o * shape[2] + i] - s) / s,
                            np.abs(r["y"][o, :, i] - ((v - m) * s * gamma + beta)).max())
    ck.check("layer_norm f64 reference forward vs a row loop of the definition (rows in o I + i order)", worst < 1e-12,
             f"{worst:.1e}")
    worst = 0.0
    for shape in [(3, 5, 1), (2, 4, 3)]:
        v = {"x": rng.standard_normal(shape), "gamma": rng.standard_normal(shape[1]), "beta": rng.standard_normal(shape[1])}
        dy = rng.standard_normal(shape)
        r = reference(v["x"], v["gamma"], v["beta"], dy, 1e-3)
        for n, gn in (("x", "dx"), ("gamma", "dgamma"), ("beta", "dbeta")):
            E, h = rng.standard_normal(v[n].shape), 1e-6
            v[n] += h * E
            fp = (reference(v["x"], v["gamma"], v["beta"], dy, 1e-3)["y"] * dy).sum()
            v[n] -= 2 * h * E
            fm = (reference(v["x"], v["gamma"], v["beta"], dy, 1e-3)["y"] * dy).sum()
            v[n] += h * E
            fd = (fp - fm) / (2 * h)
            worst = max(worst, abs(fd - (r[gn] * E).sum()) / max(abs(fd), 1e-6))
    ck.check("layer_norm f64 reference backward (dx, dgamma, dbeta) vs central differences", worst < 1e-6, f"{worst:.1e}")


def part_asan(K, ck, rng):
    part_f32(K, ck, rng, asan=True)
    part_bf16(K, ck, rng, asan=True)


if __name__ == "__main__":
    run_main("layer_norm", __doc__, Kernels, {"f32": part_f32, "bf16": part_bf16, "invariance": part_invariance,
                                              "reference": part_reference},
             {"bounds": part_asan}, seed=20240801)
