"""Emulator driver for kernels/cross_entropy.cu: cross_entropy_fwd_{f32,bf16} (one block of 512 threads
per row, grid-stride over rows; pass 1: a thread-private online (max, sum exp) and sum z over the row's
scalar head up to the first 16-byte boundary, its 16-byte vectors and its scalar tail, merged by a warp
butterfly and warp 0; pass 2: the gradient, in place when grad == logits), cross_entropy_count_u32
(rows not ignored), cross_entropy_reduce_f32 (the row losses' fixed-order sum, / count for Mean) and
cross_entropy_scale_{f32,bf16} (the gradient times the upstream gradient), launched as
src/ops/cross_entropy.rs launches them, against a numpy f64 reference of PyTorch's
F.cross_entropy(logits, targets, ignore_index, label_smoothing) and, for the count, the reduce and the
scale, bitwise against numpy ports of the kernels' own arithmetic."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, run_main  # noqa: E402
from drivers_common import (F32_POISON, Bufs, bf16_bits, bf16_round, bf16_value, first_diff,  # noqa: E402
                            launch_xy, same)

F32, I32, U32, U64 = C.c_float, C.c_int32, C.c_uint32, C.c_uint64
f32 = np.float32
U = 2.0 ** -24            # f32 unit roundoff
GUARD_BYTES = 256         # normal build: sentinel bytes before and after every buffer (keeps 256-byte alignment)
ALT_POISON = f32(-7777.0)  # a finite poison for one more run: nothing may depend on it
NONE, MEAN, SUM = 0, 1, 2  # SNUG_CE_NONE / _MEAN / _SUM
RED = {NONE: "None", MEAN: "Mean", SUM: "Sum"}


# Mirror of kernels/cross_entropy.h (size checked against the C struct: 88 bytes, rows at 56,
# ignore_index at 72, grad_scale at 84).
class CeParams(C.Structure):
    _fields_ = [("logits", P), ("grad", P), ("targets", P), ("row_loss", P), ("out", P), ("count", P),
                ("upstream", P), ("rows", U64), ("vocab", U64), ("ignore_index", I32), ("reduction", U32),
                ("smoothing", F32), ("grad_scale", F32)]


assert C.sizeof(CeParams) == 88 and CeParams.rows.offset == 56 and CeParams.ignore_index.offset == 72 \
    and CeParams.grad_scale.offset == 84


# ---- Launch shapes and parameters. These mirror src/ops/cross_entropy.rs and must be kept in sync
# with it: THREADS = SNUG_CE_THREADS = 512, MAX_GRID = 65535. cross_entropy / cross_entropy_in_place:
# grad = NULL (loss only) or logits (in place); a reduced loss has a workspace of rows + 1 f32
# (workspace_bytes = 4 (rows + 1)): count = the workspace, row_loss = workspace + 4 bytes, out = the
# loss [1]; Reduction::None: row_loss = the loss [rows], count / out NULL. Sequence: (Mean)
# cross_entropy_count_u32 on 1 block of 512; cross_entropy_fwd_{t} on min(rows, 65535) blocks of 512
# (launch_rows); (Mean / Sum) cross_entropy_reduce_f32 on 1 block of 512. No dynamic shared memory.
# cross_entropy_backward: cross_entropy_scale_{t} on (min(ceil(V / 512), 65535), min(rows, 65535))
# blocks of 512 with grad, upstream ([rows] for None, else [1]) and the reduction set, the rest NULL
# (CrossEntropySpec::new: ignore -100, smoothing 0, grad_scale 1). linear_cross_entropy runs the same
# row kernel in place on [chunk, V] views of its workspace (rows = the chunk, row_loss = its slice).
THREADS = 512
MAX_GRID = 65535


def row_grid(rows):
    return min(rows, MAX_GRID)


def scale_grid(rows, vocab):
    return min(-(-vocab // THREADS), MAX_GRID), min(rows, MAX_GRID)


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for k in ("fwd_f32", "fwd_bf16", "scale_f32", "scale_bf16", "count_u32", "reduce_f32"):
            emu.check_struct(f"cross_entropy_{k}", CeParams)

    def run(self, bf16, z, t, mode="inplace", reduction=NONE, ignore=-100, eps=0.0, gs=1.0, offset=0, grid=None,
            order=0, seed=0, guard=0, poison=None):
        """z: (rows, V) f32 values (bf16-representable for bf16), t: (rows,) int32. mode: 'loss' (grad NULL),
        'inplace' (grad == logits) or 'separate' (its own buffer with the logits' alignment). The logits (and
        a separate grad) start `offset` elements after a 256-byte boundary (the elements before them are
        sentinels that must stay). Outputs poisoned (NaN or `poison`). The launcher's sequence.
        -> dict(row_loss, loss, count, grad (f32 values or None), bad=[problems])"""
        rows, V = z.shape
        dt = np.uint16 if bf16 else np.float32
        isz = 2 if bf16 else 4
        st = (lambda a: bf16_bits(a)) if bf16 else (lambda a: np.ascontiguousarray(a, f32))
        tp = "bf16" if bf16 else "f32"
        fill = F32_POISON if poison is None else f32(poison)
        tfill = bf16_bits(np.array([fill], f32))[0] if bf16 else fill
        lead = np.full(offset, np.uint16(0x7FC1) if bf16 else np.uint32(0x7FC00001).view(f32), dt)
        zs = st(z).ravel()
        bad = []
        with Mem(self.emu) as mem:
            b = Bufs(mem, guard)
            pl0 = b.put(np.concatenate([lead, zs]), dt)
            pl = pl0 + offset * isz
            pt = b.put(t, np.int32)
            pg0 = None
            if mode == "separate":
                pg0 = b.put(np.concatenate([lead, np.full(rows * V, tfill, dt)]), dt)
            pg = {"loss": 0, "inplace": pl, "separate": (pg0 or 0) + offset * isz}[mode]
            prm = CeParams(logits=pl, grad=pg, targets=pt, rows=rows, vocab=V, ignore_index=ignore,
                           reduction=reduction, smoothing=eps, grad_scale=gs)
            pw = pout = ploss = None
            if reduction == NONE:
                ploss = b.put(np.full(rows, fill, f32), np.float32)
                prm.row_loss = ploss
            else:
                pw = b.put(np.full(rows + 1, fill, f32), np.float32)
                pout = b.put(np.full(1, fill, f32), np.float32)
                prm.count, prm.row_loss, prm.out = pw, pw + 4, pout
            if reduction == MEAN:
                self.emu.launch("cross_entropy_count_u32", prm, 1, THREADS, 0, order, seed + 7)
            self.emu.launch(f"cross_entropy_fwd_{tp}", prm, row_grid(rows) if grid is None else grid, THREADS, 0, order, seed)
            if reduction != NONE:
                self.emu.launch("cross_entropy_reduce_f32", prm, 1, THREADS, 0, order, seed + 13)

            def get(p, name):
                a, ok = b.get(p)
                if not ok:
                    bad.append(f"bytes written before / after {name}")
                return a

            lg = get(pl0, "logits")
            if lg[:offset].tobytes() != lead.tobytes():
                bad.append("the elements before the logits were written")
            grad = None
            if mode == "inplace":
                grad = lg[offset:]
            else:
                if lg[offset:].tobytes() != zs.tobytes():
                    bad.append("the logits changed")
                if mode == "separate":
                    gb = get(pg0, "grad")
                    if gb[:offset].tobytes() != lead.tobytes():
                        bad.append("the elements before the gradient were written")
                    grad = gb[offset:]
            if grad is not None:
                grad = (bf16_value(grad) if bf16 else grad).reshape(rows, V)
            tt = get(pt, "targets")
            if tt.tobytes() != np.ascontiguousarray(t, np.int32).tobytes():
                bad.append("the targets changed")
            if reduction == NONE:
                row_loss = get(ploss, "loss")
                loss, count = row_loss, None
            else:
                w = get(pw, "workspace")
                row_loss, loss = w[1:], get(pout, "out")
                count = int(w[:1].view(np.uint32)[0]) if reduction == MEAN else None
        return dict(row_loss=row_loss, loss=loss, count=count, grad=grad, bad=bad)

    def count(self, t, ignore, order=0, seed=0, guard=0):
        with Mem(self.emu) as mem:
            b = Bufs(mem, guard)
            pt = b.put(t, np.int32)
            pc = b.put(np.full(1, 0xDEADBEEF, np.uint32).view(f32), np.float32)
            prm = CeParams(targets=pt, count=pc, rows=len(t), vocab=1, ignore_index=ignore, reduction=MEAN)
            self.emu.launch("cross_entropy_count_u32", prm, 1, THREADS, 0, order, seed)
            c, ok = b.get(pc)
            tt, ok2 = b.get(pt)
            return int(c.view(np.uint32)[0]), ok and ok2 and tt.tobytes() == np.ascontiguousarray(t, np.int32).tobytes()

    def reduce(self, row_loss, reduction, count=None, order=0, seed=0, guard=0):
        with Mem(self.emu) as mem:
            b = Bufs(mem, guard)
            pr = b.put(row_loss, np.float32)
            po = b.put(np.full(1, F32_POISON, f32), np.float32)
            pc = b.put(np.array([count or 0], np.uint32).view(f32), np.float32) if reduction == MEAN else 0
            prm = CeParams(row_loss=pr, out=po, count=pc, rows=len(row_loss), vocab=1, reduction=reduction)
            self.emu.launch("cross_entropy_reduce_f32", prm, 1, THREADS, 0, order, seed)
            o, ok = b.get(po)
            rr, ok2 = b.get(pr)
            return o[0], ok and ok2 and rr.tobytes() == np.ascontiguousarray(row_loss, f32).tobytes()

    def scale(self, bf16, g, up, reduction, grid=None, order=0, seed=0, guard=0):
        """g: (rows, V) f32 values (bf16-representable for bf16), up: [rows] or [1] f32. -> (g scaled, ok)"""
        rows, V = g.shape
        dt = np.uint16 if bf16 else np.float32
        st = (lambda a: bf16_bits(a)) if bf16 else (lambda a: np.ascontiguousarray(a, f32))
        gx, gy = scale_grid(rows, V) if grid is None else grid
        with Mem(self.emu) as mem:
            b = Bufs(mem, guard)
            pg = b.put(st(g), dt)
            pu = b.put(up, np.float32)
            prm = CeParams(grad=pg, upstream=pu, rows=rows, vocab=V, ignore_index=-100, reduction=reduction,
                           smoothing=0.0, grad_scale=1.0)
            launch_xy(self.emu, f"cross_entropy_scale_{'bf16' if bf16 else 'f32'}", prm, gx, gy, THREADS, order, seed)
            o, ok = b.get(pg)
            uu, ok2 = b.get(pu)
            o = (bf16_value(o) if bf16 else o).reshape(rows, V)
            return o, ok and ok2 and uu.tobytes() == np.ascontiguousarray(up, f32).tobytes()


# ---- References

def reference(z, t, ignore, eps, gs, reduction):
    """f64 PyTorch semantics (the Rust twin's formulas; a bad target gives NaN, as the kernel) ->
    (row losses, reduced loss (or None), gradient, count, per-row pieces for the bounds)."""
    z6 = z.astype(np.float64)
    rows, V = z.shape
    t = np.asarray(t, np.int64)
    ignored = t == ignore
    count = int((~ignored).sum())
    badt = ~ignored & ((t < 0) | (t >= V))
    with np.errstate(all="ignore"):
        m = z6.max(1)
        ms = np.where(np.isfinite(m), m, 0.0)
        lse = ms + np.log(np.exp(z6 - ms[:, None]).sum(1))
        lse = np.where(m == np.inf, np.nan, lse)  # a +inf logit: NaN (the twin's exp(inf - inf))
        tc = np.clip(t, 0, V - 1)
        zt = z6[np.arange(rows), tc]
        loss = (1 - eps) * (lse - zt)
        meanz = z6.mean(1)
        if eps != 0:
            loss = loss + eps * (lse - meanz)
        loss = np.where(ignored, 0.0, np.where(badt, np.nan, loss))
        scale = np.float64(gs) / count if reduction == MEAN else gs
        p = np.exp(z6 - lse[:, None])
        onehot = np.zeros((rows, V))
        onehot[np.arange(rows), tc] = 1.0
        grad = (p - eps / V - (1 - eps) * onehot) * scale
        grad[ignored] = 0.0
        grad[badt] = np.nan
        red = None
        if reduction == SUM:
            red = loss.sum()
        elif reduction == MEAN:
            red = loss.sum() / count if count else np.nan
    return loss, red, grad, count, dict(lse=lse, zt=zt, meanz=meanz, p=p, onehot=onehot, scale=scale,
                                        ignored=ignored, badt=badt)


def bounds(z, eps, bf16, ref):
    """Error bounds of the kernel's f32 arithmetic (finite entries): per row for the loss, per element for
    the gradient. chain: the longest sequential chain (a thread's elements, then 9 merge levels)."""
    rows, V = z.shape
    _, _, grad, _, x = ref
    chain = -(-V // THREADS) + 20
    with np.errstate(all="ignore"):
        z6 = np.where(np.isfinite(z), z, 0.0).astype(np.float64)
        lse, zt = x["lse"], x["zt"]
        d_lse = 4 * U * (chain + np.abs(lse) + 1)
        meanabs = np.abs(z6).mean(1)
        bl = (1 - eps) * (d_lse + 2 * U * np.abs(lse - zt)) + 1e-30
        if eps != 0:
            bl = bl + eps * (d_lse + 2 * U * chain * meanabs + 2 * U * np.abs(lse - x["meanz"]))
        bl = bl * 1.5
        off, hit = eps / V, (1 - eps) * x["onehot"]
        p = x["p"]
        bg = np.abs(x["scale"]) * (p * (d_lse[:, None] + 2 * U * np.abs(z6 - lse[:, None]) + 2 * U)
                                   + 2 * U * (p + off + hit)) + 2 * U * np.abs(grad)
        if bf16:
            bg = bg * (1 + 2.0 ** -8) + 2.0 ** -8 * np.abs(grad)
        bg = bg * 1.5 + 1e-37
    return bl, bg


def within(got, want, bound):
    """Non-finite wants must be matched exactly (NaN as NaN); finite ones within the bound. -> (ok, worst ratio, where)"""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    fin = np.isfinite(want)
    if not np.array_equal(np.isnan(got), np.isnan(want)) or not np.array_equal(got[~fin & ~np.isnan(want)],
                                                                             want[~fin & ~np.isnan(want)]):
        k = int(np.argmax((np.isnan(got) != np.isnan(want)) | (~fin & ~np.isnan(want) & (got != want))))
        return False, np.inf, f"non-finite mismatch at {np.unravel_index(k, want.shape)}: got {got.flat[k]} want {want.flat[k]}"
    if not fin.any():
        return True, 0.0, ""
    b = np.broadcast_to(bound, want.shape)
    if not np.all(np.isfinite(got[fin])):
        return False, np.inf, "non-finite result where f64 is finite"
    r = np.abs(got[fin] - want[fin]) / b[fin]
    k = int(np.argmax(r))
    where = f"error {abs(got[fin][k] - want[fin][k]):.3g} > bound {b[fin][k]:.3g} (want {want[fin][k]:.6g})"
    return bool(r[k] <= 1), float(r[k]), where


def reduce_port(row_loss, reduction, count):
    """float32 port of cross_entropy_reduce_f32: thread k sums rows k, k + 512, ... from +0 in order, the
    512-wide tree (red[i] += red[i + s], s = 256 .. 1), / (float)count for Mean."""
    n = len(row_loss)
    m = max(-(-n // THREADS), 1) * THREADS
    pad = np.zeros(m, f32)
    pad[:n] = row_loss
    acc = np.zeros(THREADS, f32)
    with np.errstate(all="ignore"):
        for j in range(m // THREADS):
            acc = (acc + pad[j * THREADS:(j + 1) * THREADS]).astype(f32)
        s = THREADS // 2
        while s:
            acc[:s] = (acc[:s] + acc[s:2 * s]).astype(f32)
            s //= 2
        r = acc[0]
        if reduction == MEAN:
            r = f32(r / f32(count))
    return f32(r)


# ---- Checks

def check_case(K, ck, bf16, z, t, label, reduction=NONE, ignore=-100, eps=0.0, gs=1.0, offset=0,
               asan=False, grids=(), modes=True, f64=True, expect=None):
    """Runs the in-place sequence in the three orders (ASan: one); with `modes`, also (normal build) under
    a finite poison, and the loss-only and separate-gradient modes (row losses bitwise those of the
    in-place run, the separate gradient bitwise the in-place one); the given grids (bitwise the
    launcher's grid). Checks against f64, the reduce port, the count. expect(out, ref) -> [problems]."""
    guard = 0 if asan else GUARD_BYTES
    kw = dict(reduction=reduction, ignore=ignore, eps=eps, gs=gs, offset=offset, guard=guard)
    orders = ORDERS[:1] if asan else ORDERS
    runs = [K.run(bf16, z, t, "inplace", order=o, seed=s, **kw) for o, s in orders]
    bad = []
    for r in runs:
        bad += [x for x in r["bad"] if x not in bad]
    base = runs[0]
    extra = []
    if modes and not asan:
        extra.append(("finite poison", K.run(bf16, z, t, "inplace", poison=ALT_POISON, **kw), True))
    if not asan:
        extra += [(f"grid {g}", K.run(bf16, z, t, "inplace", grid=g, **kw), True) for g in grids]
    if modes:
        extra.append(("separate grad", K.run(bf16, z, t, "separate", **kw), True))
        extra.append(("loss only", K.run(bf16, z, t, "loss", **kw), False))
    for k, r in enumerate(runs[1:], 1):
        if not all(a.tobytes() == b.tobytes() for a, b in ((r["row_loss"], base["row_loss"]), (r["loss"], base["loss"]),
                                                           (r["grad"], base["grad"]))):
            bad.append(f"thread order {k} differs bitwise")
    for name, r, has_grad in extra:
        bad += [x for x in r["bad"] if x not in bad]
        if r["row_loss"].tobytes() != base["row_loss"].tobytes() or r["loss"].tobytes() != base["loss"].tobytes():
            bad.append(f"{name}: losses differ bitwise from the in-place run")
        if has_grad and r["grad"].tobytes() != base["grad"].tobytes():
            bad.append(f"{name}: gradient differs bitwise from the in-place run")
    ref = reference(z, t, ignore, float(f32(eps)), float(f32(gs)), reduction)
    rl, red, grad, count, _ = ref
    if reduction == MEAN and base["count"] != count:
        bad.append(f"count {base['count']} != {count}")
    if reduction != NONE:
        want = reduce_port(base["row_loss"], reduction, count)
        if not same(base["loss"], np.array([want])):
            bad.append(f"out {base['loss'][0]!r} != the float32 port of the reduce {want!r}")
    detail = ""
    if f64:
        bl, bg = bounds(z, eps, bf16, ref)
        ok1, w1, wh1 = within(base["row_loss"], rl, bl)
        ok2, w2, wh2 = within(base["grad"], grad, bg)
        if not ok1:
            bad.append("row losses vs f64: " + wh1)
        if not ok2:
            bad.append("gradient vs f64: " + wh2)
        w3 = 0.0
        if reduction != NONE:
            fin = np.isfinite(rl)
            br = bl[fin].sum() + (-(-len(rl) // THREADS) + 10) * U * np.abs(rl[fin]).sum() + 1e-30
            if reduction == MEAN:
                br = br / max(count, 1) * (1 + 2 * U)
            ok3, w3, wh3 = within(base["loss"], np.array([red]), np.array([br]))
            if not ok3:
                bad.append("reduced loss vs f64: " + wh3)
        detail = f"[max error / bound: row loss {w1:.2g}, grad {w2:.2g}" + (f", out {w3:.2g}" if reduction != NONE else "") + "]"
    if expect is not None:
        bad += expect(base, ref)
    tp = "bf16" if bf16 else "f32"
    rows, V = z.shape
    what = ("ASan: no report, " if asan else "") + "row losses, gradient" + (", out" if reduction != NONE else "") + \
        (" vs f64" if f64 else "") + ("" if asan else ", bitwise in 3 orders" + (", 2 poisons" if modes else "") +
                                      (f", grids {list(grids)}" if grids else "")) + \
        (", in place = separate grad = loss only" if modes else "") + ", guards and inputs intact"
    ck.check(f"cross_entropy_fwd_{tp} rows {rows}, V {V}, offset {offset}, {RED[reduction]}, eps {eps}, "
             f"grad_scale {gs}{', ' + label if label else ''}: {what}", not bad, "; ".join(bad) if bad else detail)
    return base


def logits(rng, rows, V, bf16, sc=3.0):
    z = (rng.standard_normal((rows, V)) * sc).astype(f32)
    return bf16_round(z) if bf16 else z


def targets(rng, rows, V, ignore=-100, frac_ignored=0.2):
    t = rng.integers(0, V, rows).astype(np.int32)
    if rows >= 3:
        t[0], t[-1] = 0, V - 1
    t[rng.random(rows) < frac_ignored] = ignore
    return t


# (V, rows): V odd (or 1000, a multiple of every vector width) so that consecutive rows start at every
# misalignment; with the pointer offsets 0..7 below each row's head / body / tail split varies.
SHAPES = [(1, 12), (3, 9), (7, 9), (1000, 3), (4097, 5)]
SCALES = [1.0, 3.0, 20.0]


def part_dtype(K, ck, rng, bf16, asan=False):
    k = 0
    for V, rows in SHAPES:
        for offset in range(8):
            reduction = (NONE, MEAN, SUM)[k % 3]
            eps = 0.1 if offset % 2 else 0.0
            gs = (1.0, 1.0, 0.75, -2.0)[k % 4]
            z = logits(rng, rows, V, bf16, SCALES[k % 3])
            t = targets(rng, rows, V)
            grids = [1, 2] if offset in (0, 5) else []
            check_case(K, ck, bf16, z, t, "", reduction=reduction, eps=eps, gs=gs, offset=offset, asan=asan,
                       grids=grids, modes=offset in ((0, 1) if asan else (0, 1, 5)))
            k += 1


def part_f32(K, ck, rng):
    part_dtype(K, ck, rng, False)


def part_bf16(K, ck, rng):
    part_dtype(K, ck, rng, True)


def part_gpt2(K, ck, rng):
    """V = 50257 (GPT-2's vocabulary, seed 003) for a few rows."""
    for bf16 in (False, True):
        for offset, reduction, eps in ((0, MEAN, 0.0), (5, NONE, 0.1), (3, SUM, 0.0)):
            z = logits(rng, 3, 50257, bf16, 2.0)
            t = np.array([50256, -100, rng.integers(0, 50257)], np.int32)
            check_case(K, ck, bf16, z, t, "GPT-2 vocabulary, row 1 ignored", reduction=reduction, eps=eps,
                       offset=offset, grids=[1] if offset == 0 else [], modes=offset == 0)


def part_special(K, ck, rng):
    for bf16 in (False, True):
        tp = "bf16" if bf16 else "f32"
        rows, V = 6, 1031
        z = logits(rng, rows, V, bf16)

        # ignore_index inside [0, V): those rows ignored (zero loss and gradient), a row with -100 is then
        # a bad target (NaN row), the count excludes only ignore_index.
        t = np.array([0, 5, 1030, 0, -100, 17], np.int32)

        def exp_ignore(out, ref):
            bad = []
            g, rl = out["grad"], out["row_loss"]
            if not (np.all(g[[0, 3]] == 0) and np.all(np.signbit(g[[0, 3]]) == 0) and np.all(rl[[0, 3]] == 0)):
                bad.append("ignored rows not +0")
            if not (np.isnan(rl[4]) and np.all(np.isnan(g[4]))):
                bad.append("the bad row (-100 with ignore_index 0) is not NaN")
            if not (np.all(np.isfinite(g[[1, 2, 5]])) and np.all(np.isfinite(rl[[1, 2, 5]]))):
                bad.append("the other rows are not finite")
            return bad
        for red in (NONE, MEAN, SUM):
            check_case(K, ck, bf16, z, t, "ignore_index 0 (rows 0, 3), target -100 bad (row 4: NaN loss and gradient row)",
                       reduction=red, ignore=0, eps=0.1 if red == MEAN else 0.0, expect=exp_ignore, grids=[1, 4] if red == MEAN else [])

        # Bad targets: -1, V, INT32_MAX, INT32_MIN (not ignored): NaN loss and NaN gradient row; rows
        # around them unaffected; Mean / Sum NaN; the count counts them.
        t = np.array([3, -1, V, 2**31 - 1, -2**31, 1], np.int32)

        def exp_bad(out, ref):
            bad = []
            if not (np.all(np.isnan(out["row_loss"][1:5])) and np.all(np.isnan(out["grad"][1:5]))):
                bad.append("bad rows not all NaN")
            if not (np.all(np.isfinite(out["grad"][[0, 5]])) and np.all(np.isfinite(out["row_loss"][[0, 5]]))):
                bad.append("good rows not finite")
            if out["count"] is not None and out["count"] != 6:
                bad.append(f"count {out['count']} != 6")
            return bad
        for red in (NONE, MEAN, SUM):
            check_case(K, ck, bf16, z, t, "targets -1, V, 2^31-1, -2^31 (rows 1-4: NaN)", reduction=red,
                       eps=0.1, expect=exp_bad)

        # Every row ignored: Mean 0 / 0 = NaN (as PyTorch), Sum +0, None zeros; the gradient +0 everywhere
        # (the Mean scale 1/0 = inf is never applied to an ignored row).
        t = np.full(rows, -100, np.int32)

        def exp_all(out, ref):
            bad = []
            g = out["grad"]
            if not (np.all(g == 0) and not np.any(np.signbit(g))):
                bad.append("gradient not +0 everywhere")
            if not np.all(out["row_loss"] == 0):
                bad.append("row losses not 0")
            return bad
        for red in (NONE, MEAN, SUM):
            out = check_case(K, ck, bf16, z, t, "every row ignored", reduction=red, eps=0.1, expect=exp_all)
            if red == MEAN:
                ck.check(f"cross_entropy_{tp} every row ignored, Mean: count 0, out NaN",
                         out["count"] == 0 and np.isnan(out["loss"][0]), f"count {out['count']} out {out['loss']}")
            if red == SUM:
                ck.check(f"cross_entropy_{tp} every row ignored, Sum: out +0", out["loss"][0] == 0 and not np.signbit(out["loss"][0]))

        # -inf logits (masked vocabulary entries): contribute exactly 0 to the sum (the loss equals the f64
        # loss of the row without them), their gradient is exactly 0 (eps 0), nothing NaN. Row 0: the first
        # 700 entries -inf (threads whose whole share is -inf, and vectors of -inf); row 1: every other
        # entry; row 2: all but the target; row 3: the target -inf (loss +inf, gradient finite); row 4:
        # every entry but three at the end (the scalar tail); row 5: no -inf.
        zm = z.copy()
        zm[0, :700] = -np.inf
        zm[1, ::2] = -np.inf
        zm[2, :] = -np.inf
        zm[2, 77] = 1.5
        zm[3, 400] = -np.inf
        zm[4, :V - 3] = -np.inf
        t = np.array([900, 1, 77, 400, V - 2, 12], np.int32)
        masked = ~np.isfinite(zm)
        masked[3, 400] = False  # row 3's target: its gradient is p - 1 = -1 (times the scale)

        def exp_inf(out, ref):
            bad = []
            g, rl = out["grad"], out["row_loss"]
            if np.any(np.isnan(g)) or np.any(np.isnan(rl)):
                bad.append("NaN")
            if not np.all(g[masked] == 0):
                bad.append(f"masked entries' gradient not 0: {g[masked][g[masked] != 0][:4]}")
            if not (rl[3] == np.inf):
                bad.append(f"row 3 (target -inf) loss {rl[3]} != +inf")
            if not (rl[2] == 0 and g[2, 77] == 0):
                bad.append(f"row 2 (one finite entry, the target) loss {rl[2]} / grad {g[2, 77]} != 0")
            # The loss of row 0 vs the f64 loss of the row without its -inf entries.
            r0 = z[0, 700:].astype(np.float64)
            m = r0.max()
            want = m + np.log(np.exp(r0 - m).sum()) - z[0, 900]
            if abs(rl[0] - want) > 1e-5 * (1 + abs(want)):
                bad.append(f"row 0 loss {rl[0]} != {want} (the row without its -inf entries)")
            return bad
        for red in (NONE, MEAN):
            check_case(K, ck, bf16, zm, t, "-inf logits (masked; rows: 700 leading, every other, all but the target, "
                       "the target, all but the tail)", reduction=red, eps=0.0, expect=exp_inf, grids=[1, 2])
        # With label smoothing the mean of the row is -inf: the loss of a row with -inf entries is +inf
        # (as PyTorch), the gradient finite (masked entries -eps/V scale).

        def exp_inf_eps(out, ref):
            bad = []
            g, rl = out["grad"], out["row_loss"]
            if not np.all(rl[:5] == np.inf) or not np.isfinite(rl[5]):
                bad.append(f"row losses {rl} (want +inf for rows 0-4, finite row 5)")
            if not np.all(np.isfinite(g)):
                bad.append("non-finite gradient")
            return bad
        check_case(K, ck, bf16, zm, t, "-inf logits with label smoothing (loss +inf, gradient finite)", reduction=NONE,
                   eps=0.1, expect=exp_inf_eps, modes=False)

        # A +inf logit: the row's lse is NaN (not +inf) wherever the +inf sits — alone in a thread's
        # share (V = 4, one vector: m = inf, s = 1 would give lse = inf) or merged with finite shares
        # (inf - inf) — so loss and gradient row are NaN, as the twin and PyTorch. Offsets 0 and 1
        # put the row in one vector and split it over the scalar head / tail.
        for off in (0, 1):
            zi = np.zeros((2, 4), np.float32)
            zi[0, 0] = np.inf
            ti = np.array([1, 2], np.int32)

            def exp_pinf(out, ref):
                g, rl = out["grad"], out["row_loss"]
                bad = []
                if not (np.isnan(rl[0]) and np.all(np.isnan(g[0]))):
                    bad.append(f"row 0 (+inf logit): loss {rl[0]}, grad {g[0]} (want NaN)")
                if not (np.all(np.isfinite(g[1])) and np.isfinite(rl[1])):
                    bad.append("row 1 not finite")
                return bad
            check_case(K, ck, bf16, zi, ti, f"a +inf logit (V 4, offset {off}): NaN row", reduction=NONE, offset=off,
                       expect=exp_pinf, modes=False)

        # A NaN logit: its row's loss and whole gradient row NaN (propagates, at the row's start, its
        # vector body and its tail); the other rows unaffected; Mean / Sum NaN.
        zn = z.copy()
        zn[1, 0] = np.nan
        zn[3, 500] = np.nan
        zn[4, V - 1] = np.nan
        t = np.array([2, 3, 4, 5, 6, 7], np.int32)

        def exp_nan(out, ref):
            bad = []
            g, rl = out["grad"], out["row_loss"]
            if not (np.all(np.isnan(rl[[1, 3, 4]])) and np.all(np.isnan(g[[1, 3, 4]]))):
                bad.append("NaN rows not all NaN")
            if not (np.all(np.isfinite(rl[[0, 2, 5]])) and np.all(np.isfinite(g[[0, 2, 5]]))):
                bad.append("other rows not finite")
            if out["count"] is not None and not np.isnan(out["loss"][0]):
                bad.append("mean not NaN")
            return bad
        for red, eps in ((NONE, 0.0), (MEAN, 0.1)):
            check_case(K, ck, bf16, zn, t, "NaN logits in rows 1 (first), 3 (middle), 4 (last)", reduction=red, eps=eps,
                       expect=exp_nan, modes=red == NONE)

        # eps = 1 (the target term vanishes), a large grad_scale, large logits (row 2 scaled 1e4, row 3
        # shifted by 1000: exp would overflow without the running max, which keeps its argument <= 0).
        zh = z.copy()
        zh[2] *= 1e4
        zh[3] += 1000.0
        if bf16:
            zh = bf16_round(zh)
        t = targets(rng, rows, V, frac_ignored=0)
        check_case(K, ck, bf16, zh, t, "eps 1, row 2 scaled 1e4, row 3 shifted by 1000 (exp would overflow without the max)", reduction=SUM, eps=1.0, gs=1000.0, modes=False)
        out = K.run(bf16, zh, t, "inplace", reduction=NONE, guard=GUARD_BYTES)
        ok = not out["bad"] and np.all(np.isfinite(out["grad"])) and np.all(np.isfinite(out["row_loss"]))
        ck.check(f"cross_entropy_fwd_{tp} logits scaled 1e4 (row 2) and shifted by 1000 (row 3): losses and gradient finite", ok)


def part_small_kernels(K, ck, rng):
    # count: exact, in every order.
    for rows in (1, 511, 512, 513, 5000):
        for ignore in (-100, 0, 3):
            t = rng.integers(-2, 5, rows).astype(np.int32)
            t[rng.random(rows) < 0.3] = -100
            want = int((t != ignore).sum())
            got = [K.count(t, ignore, order=o, seed=s, guard=GUARD_BYTES) for o, s in ORDERS]
            ck.check(f"cross_entropy_count_u32 rows {rows}, ignore {ignore}: count exact in 3 orders, guards intact",
                     all(c == want and ok for c, ok in got), f"{got} want {want}")
    # reduce: bitwise the float32 port, in every order.
    for rows in (1, 3, 511, 512, 513, 1500, 4097):
        rl = (rng.standard_normal(rows) * 10 ** rng.uniform(-3, 3, rows)).astype(f32)
        rl[rng.random(rows) < 0.1] = 0
        for red in (SUM, MEAN):
            c = int(rng.integers(1, rows + 1))
            want = reduce_port(rl, red, c)
            got = [K.reduce(rl, red, c, order=o, seed=s, guard=GUARD_BYTES) for o, s in ORDERS]
            ck.check(f"cross_entropy_reduce_f32 rows {rows}, {RED[red]}: bitwise the float32 port in 3 orders, guards intact",
                     all(same(np.array([g]), np.array([want])) and ok for g, ok in got), f"{[g for g, _ in got]} want {want}")
    for vals, red, c, what in (([1.0, np.nan, 2.0], SUM, 0, "NaN"), ([1.0, np.inf, 2.0], SUM, 0, "+inf"),
                               ([0.0, 0.0], MEAN, 0, "0 / 0 = NaN"), ([-0.0], SUM, 0, "-0 -> +0 (acc starts at +0)")):
        rl = np.array(vals, f32)
        want = reduce_port(rl, red, c)
        g, ok = K.reduce(rl, red, c, guard=GUARD_BYTES)
        ck.check(f"cross_entropy_reduce_f32 {what}: as the port", ok and same(np.array([g]), np.array([want])), f"{g} want {want}")
    # scale: bitwise g * up (bf16: the f32 product rounded to nearest even), None per row / Mean, Sum [1],
    # launcher grid and smaller grids (grid-stride in x and y).
    for bf16 in (False, True):
        tp = "bf16" if bf16 else "f32"
        for rows, V in ((1, 1), (3, 7), (2, 513), (5, 1025), (4, 3000)):
            g = logits(rng, rows, V, bf16)
            g[0, 0] = np.nan
            if V > 2:
                g[0, 1], g[0, 2] = np.inf, -0.0
            for red in (NONE, MEAN, SUM):
                up = rng.standard_normal(rows if red == NONE else 1).astype(f32)
                if red == NONE and rows > 2:
                    up[1], up[2] = 0.0, np.inf
                want = (g * (up[:, None] if red == NONE else up[0])).astype(f32)
                if bf16:
                    want = bf16_round(want)
                grids = [None, (1, 1), (2, 2)]
                outs = [K.scale(bf16, g, up, red, grid=gr, order=o, seed=s, guard=GUARD_BYTES)
                        for gr in grids for o, s in (ORDERS if gr is None else ORDERS[:1])]
                bad = [] if all(ok for _, ok in outs) else ["guards or upstream changed"]
                if not same(outs[0][0], want):
                    bad.append("vs g * up: " + first_diff(outs[0][0], want))
                if not all(o.tobytes() == outs[0][0].tobytes() for o, _ in outs):
                    bad.append("orders / grids differ bitwise")
                ck.check(f"cross_entropy_scale_{tp} rows {rows}, V {V}, {RED[red]}: bitwise g * up (NaN, inf, -0, 0 * inf) "
                         f"in 3 orders and grids {scale_grid(rows, V)}, (1, 1), (2, 2)", not bad, "; ".join(bad))
    # The backward relation: in place with grad_scale 1, then scale by u == in place with grad_scale u
    # (f32, Sum: x * 1 is exact), bitwise.
    rows, V = 5, 777
    z = logits(rng, rows, V, False)
    t = targets(rng, rows, V)
    t[2] = -100
    u = f32(-1.7)
    a = K.run(False, z, t, "inplace", reduction=SUM, gs=1.0, guard=GUARD_BYTES)
    b = K.run(False, z, t, "inplace", reduction=SUM, gs=float(u), guard=GUARD_BYTES)
    s, ok = K.scale(False, a["grad"], np.array([u], f32), SUM, guard=GUARD_BYTES)
    ig = t == -100
    ck.check("cross_entropy_fwd_f32 then cross_entropy_scale_f32 (Sum, upstream -1.7) == fwd with grad_scale -1.7: bitwise "
             "(ignored rows: +0 from the forward, -0 = +0 * -1.7 after the scale)",
             ok and not a["bad"] and not b["bad"] and ig.any() and s[~ig].tobytes() == b["grad"][~ig].tobytes()
             and np.all(s[ig] == 0) and np.all(np.signbit(s[ig])) and np.all(b["grad"][ig] == 0))


def run_chunked(K, bf16, z, t, chunk, reduction, eps, order=0, seed=0):
    """linear_cross_entropy's sequence for the row kernel (the GEMMs replaced by copying each chunk's
    logits into the workspace's [chunk, V] buffer at its start): the workspace [logits chunk (T, rounded
    up to 4 bytes) | count | row losses], count_u32 over all rows (Mean), per chunk fwd_{t} in place
    with rows = the chunk's, targets and row_loss offset by its start (row_loss: the workspace's losses,
    or the [rows] loss for None), then reduce_f32 over all rows. -> (row losses, out, gradient, bad)"""
    emu = K.emu
    rows, V = z.shape
    c = min(chunk, rows)
    dt = np.uint16 if bf16 else np.float32
    isz = 2 if bf16 else 4
    st = (lambda a: bf16_bits(a)) if bf16 else (lambda a: np.ascontiguousarray(a, f32))
    tp = "bf16" if bf16 else "f32"
    bad, grads = [], []
    with Mem(emu) as mem:
        b = Bufs(mem, GUARD_BYTES)
        pt = b.put(t, np.int32)
        lw = -(-(c * V * isz) // 4)  # the logits chunk in f32 words
        nw = lw + (1 if reduction == NONE else rows + 1)
        pws = b.put(np.full(nw, F32_POISON, f32), np.float32)
        plog, pcount = pws, pws + 4 * lw
        ploss = b.put(np.full(rows if reduction == NONE else 1, F32_POISON, f32), np.float32)
        prow = ploss if reduction == NONE else pcount + 4
        if reduction == MEAN:
            prm = CeParams(targets=pt, count=pcount, rows=rows, vocab=V, ignore_index=-100, reduction=reduction,
                           smoothing=eps, grad_scale=1.0)
            emu.launch("cross_entropy_count_u32", prm, 1, THREADS, 0, order, seed + 7)
        for start in range(0, rows, c):
            n = min(c, rows - start)
            data = st(z[start:start + n]).ravel()
            C.memmove(plog, data.ctypes.data, data.nbytes)
            prm = CeParams(logits=plog, grad=plog, targets=pt + 4 * start, row_loss=prow + 4 * start, count=pcount,
                           rows=n, vocab=V, ignore_index=-100, reduction=reduction, smoothing=eps, grad_scale=1.0)
            emu.launch(f"cross_entropy_fwd_{tp}", prm, row_grid(n), THREADS, 0, order, seed + start)
            g = np.empty(n * V, dt)
            C.memmove(g.ctypes.data, plog, g.nbytes)
            grads.append(bf16_value(g) if bf16 else g)
        if reduction != NONE:
            prm = CeParams(row_loss=prow, out=ploss, count=pcount, rows=rows, vocab=V, ignore_index=-100,
                           reduction=reduction, smoothing=eps, grad_scale=1.0)
            emu.launch("cross_entropy_reduce_f32", prm, 1, THREADS, 0, order, seed + 13)
        ws, ok = b.get(pws)
        out, ok2 = b.get(ploss)
        tt, ok3 = b.get(pt)
        if not (ok and ok2 and ok3):
            bad.append("guard bytes written")
        if tt.tobytes() != np.ascontiguousarray(t, np.int32).tobytes():
            bad.append("the targets changed")
        row_loss = out if reduction == NONE else ws[lw + 1:]
        count = int(ws[lw:lw + 1].view(np.uint32)[0]) if reduction == MEAN else None
    return row_loss, out, np.concatenate(grads).reshape(rows, V), count, bad


def part_chunks(K, ck, rng):
    """linear_cross_entropy's use of the row kernel: chunks of rows through one buffer, the Mean divisor
    counted over the whole batch, row losses and targets at the chunk's offset, one reduce at the end."""
    rows, V = 7, 1001
    for bf16 in (False, True):
        z = logits(rng, rows, V, bf16)
        t = targets(rng, rows, V, frac_ignored=0)
        t[[1, 5]] = -100  # ignored rows in two different chunks of 3
        for chunk, reduction, eps in ((3, MEAN, 0.1), (3, NONE, 0.0), (2, SUM, 0.1), (7, MEAN, 0.0), (100, MEAN, 0.1)):
            runs = [run_chunked(K, bf16, z, t, chunk, reduction, eps, o, s) for o, s in ORDERS]
            rl, out, g, count, bad = runs[0]
            for r in runs:
                bad += [x for x in r[4] if x not in bad]
            if any(r[0].tobytes() != rl.tobytes() or r[1].tobytes() != out.tobytes() or r[2].tobytes() != g.tobytes()
                   for r in runs[1:]):
                bad.append("thread orders differ bitwise")
            ref = reference(z, t, -100, float(f32(eps)), 1.0, reduction)
            wl, red, wg, wc, _ = ref
            bl, bg = bounds(z, float(f32(eps)), bf16, ref)
            ok1, w1, wh1 = within(rl, wl, bl)
            ok2, w2, wh2 = within(g, wg, bg)
            if not ok1:
                bad.append("row losses vs f64: " + wh1)
            if not ok2:
                bad.append("gradient vs f64 (the Mean divisor of the whole batch): " + wh2)
            if reduction == MEAN and count != wc:
                bad.append(f"count {count} != {wc}")
            if reduction != NONE and not same(out, np.array([reduce_port(rl, reduction, wc)])):
                bad.append("out is not the reduce port of the row losses")
            ck.check(f"cross_entropy_fwd_{'bf16' if bf16 else 'f32'} as linear_cross_entropy runs it: rows {rows}, V {V}, "
                     f"chunk {chunk}, {RED[reduction]}, eps {eps}, rows 1 and 5 ignored: row losses and gradient vs f64 "
                     "(whole-batch count), out bitwise the reduce port, bitwise in 3 orders, guards intact",
                     not bad, "; ".join(bad) if bad else f"[max error / bound: row loss {w1:.2g}, grad {w2:.2g}]")


def part_reference(K, ck, rng):
    """The f64 reference vs hand-computed values and central differences."""
    z = np.array([[1.0, 2.0, 3.0]], f32)
    rl, _, g, _, _ = reference(z, np.array([2], np.int32), -100, 0.0, 1.0, NONE)
    lse = np.log(np.exp(1) + np.exp(2) + np.exp(3))
    p = np.exp(np.array([1, 2, 3]) - lse)
    ok = abs(rl[0] - (lse - 3)) < 1e-14 and np.allclose(g[0], p - [0, 0, 1], atol=1e-14)
    rl2, _, _, _, _ = reference(z, np.array([0], np.int32), -100, 0.2, 1.0, NONE)
    ok2 = abs(rl2[0] - (0.8 * (lse - 1) + 0.2 * (lse - 2))) < 1e-14
    ck.check("reference: hand-computed loss and gradient of [1, 2, 3] (target 2; target 0 with eps 0.2)", ok and ok2)
    # Central differences of sum(w * loss) for Mean with eps 0.1 and an ignored row.
    rows, V = 4, 9
    z = rng.standard_normal((rows, V))
    t = np.array([1, -100, 8, 0], np.int32)
    _, red, g, _, _ = reference(z, t, -100, 0.1, 2.5, MEAN)
    h = 1e-6
    num = np.zeros_like(z)
    for i in range(rows):
        for j in range(V):
            zp, zm = z.copy(), z.copy()
            zp[i, j] += h
            zm[i, j] -= h
            num[i, j] = 2.5 * (reference(zp, t, -100, 0.1, 1.0, MEAN)[1] - reference(zm, t, -100, 0.1, 1.0, MEAN)[1]) / (2 * h)
    ck.check("reference: gradient (Mean, eps 0.1, grad_scale 2.5, an ignored row) vs central differences",
             np.allclose(g, num, atol=1e-8), f"{np.abs(g - num).max():.3g}")


def part_asan_f32(K, ck, rng):
    part_dtype(K, ck, rng, False, asan=True)


def part_asan_bf16(K, ck, rng):
    part_dtype(K, ck, rng, True, asan=True)


def part_asan_other(K, ck, rng):
    for bf16 in (False, True):
        z = logits(rng, 2, 50257, bf16)
        check_case(K, ck, bf16, z, np.array([7, 50256], np.int32), "GPT-2 vocabulary", reduction=MEAN, offset=3,
                   asan=True, eps=0.1)
        g = logits(rng, 3, 1025, bf16)
        for red in (NONE, SUM):
            up = np.ones(3 if red == NONE else 1, f32)
            o, ok = K.scale(bf16, g, up, red)
            ck.check(f"ASan: cross_entropy_scale_{'bf16' if bf16 else 'f32'} rows 3, V 1025, {RED[red]}: no report, identity for up = 1",
                     ok and o.tobytes() == g.tobytes())
    for rows in (1, 513):
        c, ok = K.count(np.zeros(rows, np.int32), -100)
        r, ok2 = K.reduce(np.ones(rows, f32), MEAN, rows)
        ck.check(f"ASan: count and reduce rows {rows}: no report", ok and ok2 and c == rows and r == 1.0)


if __name__ == "__main__":
    run_main("cross_entropy", __doc__, Kernels,
             {"f32": part_f32, "bf16": part_bf16, "gpt2": part_gpt2, "special": part_special,
              "small_kernels": part_small_kernels, "chunks": part_chunks, "reference": part_reference},
             {"bounds_f32": part_asan_f32, "bounds_bf16": part_asan_bf16, "bounds_other": part_asan_other}, seed=20251123)
