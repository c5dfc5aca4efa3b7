"""Emulator driver for kernels/sym_scatter.cu: sym_scatter_{fwd,bwd}_{f32,bf16} (a block stages per_block
whole matrices of its chunk in shared memory, grid-stride over chunks), launched as src/ops/sym_scatter.rs
launches them for sym_scatter (fwd, mirror), triu_pairs_backward (fwd, no mirror, diagonal 0),
sym_scatter_backward (bwd, mirror) and triu_pairs (bwd, no mirror), Strict and WithDiagonal pairs. Checked
against numpy with the pair order taken from np.triu_indices (row-major, = torch.triu_indices): the scatters
and the gather BITWISE (values move exactly), the backward's da[i,j] + da[j,i] BITWISE equal to one f32 add
(bf16: rounded once) and within one rounding of f64; the header's pair(i, j) and its inverse exhaustively for
n = 1..64 (every pair's index read back from the kernel); explicit per_block values and grids (partial last
chunks, the grid-stride loop); outputs poisoned, guards, inputs intact, bitwise equal in three thread orders."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Mem, P, run_main  # noqa: E402
from drivers_common import F32_POISON, Bufs, bf16_bits, bf16_round, bf16_value, first_diff, same  # noqa: E402

U32, U64, F32 = C.c_uint32, C.c_uint64, C.c_float
f32 = np.float32
U = 2.0 ** -24
GUARD_BYTES = 256
BF16_POISON = np.uint16(0xFFC1)               # a NaN (this driver's; drivers_common.BF16_POISON is 0xFFFF)
BLOCK = 256
MAX_N = 64


class SymParams(C.Structure):  # kernels/sym_scatter.h (48 bytes, batch at 16, n at 24, diagonal at 44)
    _fields_ = [("dst", P), ("src", P), ("batch", U64), ("n", U32), ("pairs", U32), ("per_block", U32),
                ("with_diag", U32), ("mirror", U32), ("diagonal", F32)]


assert C.sizeof(SymParams) == 48 and SymParams.batch.offset == 16 and SymParams.n.offset == 24 and SymParams.diagonal.offset == 44


def npairs(n, with_diag):
    return n * (n + 1) // 2 if with_diag else n * (n - 1) // 2


def per_block_of(n):
    """src/ops/sym_scatter.rs per_block: max(1, 2048 / n^2)."""
    return max(1, 2048 // (n * n))


class Kernels:
    def __init__(self, emu):
        self.emu = emu
        for d in ("fwd", "bwd"):
            for t in ("f32", "bf16"):
                emu.check_struct(f"sym_scatter_{d}_{t}", SymParams)

    def run(self, bwd, bf16, src, batch, n, with_diag, mirror, diagonal=0.0, per_block=None, grid=None, order=0, seed=0,
            guard=0, poison=None):
        """src storage (f32 or bf16 bits): pairs [batch, P] (fwd) or matrices [batch, n, n] (bwd). dst poisoned.
        The launcher's per_block, grid min(ceil(batch / per_block), 65536) and shared memory unless given.
        -> (dst storage, [problems])"""
        dt = np.uint16 if bf16 else np.float32
        np_ = npairs(n, with_diag)
        n_dst = np_ * batch if bwd else n * n * batch
        m = per_block_of(n) if per_block is None else per_block
        grid = min(-(-batch // m), 1 << 16) if grid is None else grid
        smem = 4 * m * (n * n if bwd else np_)
        if poison is None:
            fill = BF16_POISON if bf16 else F32_POISON
        else:
            fill = bf16_bits(np.array([poison], f32))[0] if bf16 else f32(poison)
        with Mem(self.emu) as mem:
            b = Bufs(mem, guard)
            ps = b.put(src, dt)
            pd = b.put(np.full(n_dst, fill, dt), dt)
            prm = SymParams(dst=pd, src=ps, batch=batch, n=n, pairs=np_, per_block=m, with_diag=int(with_diag),
                            mirror=int(mirror), diagonal=float(f32(diagonal)))
            self.emu.launch(f"sym_scatter_{'bwd' if bwd else 'fwd'}_{'bf16' if bf16 else 'f32'}", prm, grid, BLOCK, smem,
                            order, seed)
            out, bad = b.output(pd, "dst")
            bad += b.unchanged(ps, src, "src")
            return out, bad


def tri_idx(n, with_diag):
    return np.triu_indices(n, 0 if with_diag else 1)


def fwd_port(bf16, pairs, batch, n, with_diag, mirror, diagonal):
    """Values (f32) of a: pairs scattered to (i, j), mirrored or zero below, the diagonal value or pairs."""
    v = (bf16_value(pairs) if bf16 else np.asarray(pairs, f32)).reshape(batch, -1)
    iu, ju = tri_idx(n, with_diag)
    a = np.zeros((batch, n, n), f32)
    if not with_diag:
        d = f32(diagonal)
        a[:, np.arange(n), np.arange(n)] = bf16_round(np.array([d], f32))[0] if bf16 else d
    if mirror:
        a[:, ju, iu] = v
    a[:, iu, ju] = v
    return a.ravel()


def bwd_port(bf16, mats, batch, n, with_diag, mirror):
    """Values of the pairs: a[i, j] (+ a[j, i] for i < j when mirror, one f32 add), rounded once to bf16."""
    a = (bf16_value(mats) if bf16 else np.asarray(mats, f32)).reshape(batch, n, n)
    iu, ju = tri_idx(n, with_diag)
    v = a[:, iu, ju].copy()
    if mirror:
        off = iu != ju
        with np.errstate(all="ignore"):
            v[:, off] = (v[:, off] + a[:, ju[off], iu[off]]).astype(f32)
    v = v.ravel()
    return bf16_round(v) if bf16 else v


def bwd_reference(bf16, mats, batch, n, with_diag, mirror):
    a = (bf16_value(mats) if bf16 else np.asarray(mats, f32)).astype(np.float64).reshape(batch, n, n)
    iu, ju = tri_idx(n, with_diag)
    v = a[:, iu, ju].copy()
    if mirror:
        off = iu != ju
        v[:, off] += a[:, ju[off], iu[off]]
    v = v.ravel()
    bound = np.abs(v) * (U * 1.01 if not bf16 else (U + 2.0 ** -8) * 1.01)
    return v, bound


def store(bf16, v):
    return bf16_bits(v) if bf16 else np.asarray(v, f32)


def check(K, ck, bwd, bf16, batch, n, with_diag, mirror, rng, label, diagonal=0.0, asan=False, per_blocks=(None,),
          grids=(), src=None, quick=False, f64=True):
    np_ = npairs(n, with_diag)
    if src is None:
        src = store(bf16, rng.standard_normal((np_ if not bwd else n * n) * batch).astype(f32))
    want = bwd_port(bf16, src, batch, n, with_diag, mirror) if bwd else fwd_port(bf16, src, batch, n, with_diag, mirror, diagonal)
    bad, first = [], None
    todo = [(o, s, None, pb, None) for pb in per_blocks for o, s in (ORDERS[:1] if asan else ORDERS[::2] if quick else ORDERS)]
    if not asan and not quick:
        todo += [(0, 0, -7777.0, None, None)] + [(0, 0, None, pb, g) for pb in per_blocks for g in grids]
    for o, s, poison, pb, g in todo:
        out, b = K.run(bwd, bf16, src, batch, n, with_diag, mirror, diagonal=diagonal, per_block=pb, grid=g, order=o, seed=s,
                       guard=0 if asan else GUARD_BYTES, poison=poison)
        bad += [f"{m} (per_block {pb}, grid {g})" for m in b]
        got = bf16_value(out) if bf16 else out
        if not same(got, want):
            bad.append(f"order {o} per_block {pb} grid {g} poison {poison} vs the port: " + first_diff(got, want))
        first = got if first is None else first
    detail = ""
    if bwd and f64:
        ref, bound = bwd_reference(bf16, src, batch, n, with_diag, mirror)
        err = np.abs(first.astype(np.float64) - ref)
        if np.any(err > bound + 1e-300):
            i = int(np.argmax(err - bound))
            bad.append(f"vs f64: error {err[i]:.3g} > bound {bound[i]:.3g}")
    t = "bf16" if bf16 else "f32"
    which = ("sym_scatter_backward" if mirror else "triu_pairs") if bwd else ("sym_scatter" if mirror else "triu_pairs_backward")
    what = ("ASan: no report, " if asan else "") + ("bitwise the port (one f32 add)" + (" and within one rounding of f64" if f64 else "")
                                                     if bwd and mirror
                                                     else "bitwise the numpy scatter / gather") + \
        ("" if asan else ", forward and random orders, guards and input intact" if quick else
         ", 3 orders, 2 poisons, guards and input intact") + \
        (f", per_block {[p for p in per_blocks if p]}" if any(per_blocks) else "") + (f", grids {list(grids)}" if grids and not asan else "")
    ck.check(f"sym_scatter_{'bwd' if bwd else 'fwd'}_{t} ({which}, {'WithDiagonal' if with_diag else 'Strict'}) {label}: {what}",
             not bad, "; ".join(bad[:3]) if bad else detail)


# (batch, n): the seed's n = 19 (per_block 5: batches 11, 12, 37 leave partial chunks); n = 1 (WithDiagonal
# only), 2, 3, 5; 32 (per_block 2); 45 (2048 / 45^2 = 1) and 46 (2048 / 46^2 = 0: the max(1, ..)); 64 (the
# largest: a 16 KB stage).
CASES = [(1, 2), (3, 3), (7, 5), (11, 19), (12, 19), (37, 19), (2, 32), (3, 45), (2, 46), (2, 64), (5, 1)]


def part_dtype(K, ck, rng, bf16, asan=False):
    for batch, n in CASES:
        for with_diag in (False, True):
            if n < 2 and not with_diag:
                continue
            for bwd in (False, True):
                for mirror in (True, False):
                    pbs = (None,) if asan or n > 20 else (None, 1, 3, 7)
                    grids = [] if asan else [1, 2]
                    diag = 0.0 if not mirror else [0.0, -2.5, 1.0 / 3.0][n % 3]
                    check(K, ck, bwd, bf16, batch, n, with_diag, mirror, rng, f"batch {batch}, n {n}" +
                          (f", diagonal {diag:.4g}" if not bwd and not with_diag else ""), diagonal=diag, asan=asan,
                          per_blocks=pbs, grids=grids)


def part_f32(K, ck, rng):
    part_dtype(K, ck, rng, False)


def part_bf16(K, ck, rng):
    part_dtype(K, ck, rng, True)


def part_index(K, ck, rng):
    """The header's pair(i, j) (forward: a[i, j] = the index of its pair, pairs = 0, 1, .., P - 1 exact in
    f32) and its inverse (gather: pairs[p] = i * n + j read back) for every n = 1..64, both triangles."""
    for with_diag in (False, True):
        bad = []
        for n in range(1 if with_diag else 2, MAX_N + 1):
            np_ = npairs(n, with_diag)
            iu, ju = tri_idx(n, with_diag)
            out, b = K.run(False, False, np.arange(np_, dtype=f32), 1, n, with_diag, True, diagonal=-1.0, guard=GUARD_BYTES)
            a = out.reshape(n, n)
            want = np.full((n, n), -1.0, f32)
            want[iu, ju] = np.arange(np_)
            want[ju, iu] = np.arange(np_)
            if b or not np.array_equal(a, want):
                bad.append(f"n {n} pair(i, j): {b} {first_diff(a, want)}")
            mats = np.arange(n * n, dtype=f32)
            out, b = K.run(True, False, mats, 1, n, with_diag, False, guard=GUARD_BYTES)
            if b or not np.array_equal(out, (iu * n + ju).astype(f32)):
                bad.append(f"n {n} inverse: {b} {first_diff(out, (iu * n + ju).astype(f32))}")
        tri = "WithDiagonal" if with_diag else "Strict"
        ck.check(f"sym_scatter pair(i, j) and its inverse ({tri}) equal np.triu_indices' order for every pair at n = "
                 f"{1 if with_diag else 2}..64", not bad, "; ".join(bad[:3]))


def part_special(K, ck, rng):
    for bf16 in (False, True):
        t = "bf16" if bf16 else "f32"
        # Specials move exactly; the backward adds as f32 (inf + -inf NaN, -0 + -0 = -0, overflow to inf).
        n, batch = 4, 2
        src = np.array([np.inf, -np.inf, -0.0, 3e38, 1e-40, np.nan] * 2, f32)
        check(K, ck, False, bf16, batch, n, False, True, rng, "inf, -0, huge, subnormal, NaN pairs", diagonal=0.0, src=store(bf16, src))
        m = np.zeros((batch, n, n), f32)
        m[0] = [[1, np.inf, -0.0, 3e38], [-np.inf, 2, 0, 0], [-0.0, 0, 3, 0], [3e38, 0, 0, 4]]
        m[1] = [[np.nan, 1, 1, 1], [1, -0.0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
        check(K, ck, True, bf16, batch, n, True, True, rng, "inf + -inf, -0 + -0, 3e38 + 3e38 overflow, NaN diagonal",
              src=store(bf16, m.ravel()), f64=False)
        # Strict ignores da's diagonal: NaN there must not reach dpairs.
        m = rng.standard_normal((3, 5, 5)).astype(f32)
        m[:, np.arange(5), np.arange(5)] = np.nan
        out, b = K.run(True, bf16, store(bf16, m.ravel()), 3, 5, False, True, guard=GUARD_BYTES)
        got = bf16_value(out) if bf16 else out
        ck.check(f"sym_scatter_bwd_{t} Strict: a NaN diagonal of da does not reach dpairs", not b and np.all(np.isfinite(got))
                 and same(got, bwd_port(bf16, store(bf16, m.ravel()), 3, 5, False, True)))
        # The seed's shape at full size: 7,680 matrices of 19 x 19 from 171 pairs.
        for bwd in (False, True):
            check(K, ck, bwd, bf16, 7680, 19, False, True, rng, "batch 7,680, n 19 (seed 000)", diagonal=0.0, quick=True)


def part_asan(K, ck, rng):
    part_dtype(K, ck, rng, False, asan=True)
    part_dtype(K, ck, rng, True, asan=True)


if __name__ == "__main__":
    run_main("sym_scatter", __doc__, Kernels, {"f32": part_f32, "bf16": part_bf16, "index": part_index, "special": part_special},
             {"bounds": part_asan}, seed=20251124)
