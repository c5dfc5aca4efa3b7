"""Self-test of the emulator (kernels in tools/kernel-emu/selftest.cu): collective results, and
that each class of bug it claims to catch is caught."""
import ctypes as C
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import ORDERS, Emu, Mem, P, bits_equal, run_main  # noqa: E402


class SelftestParams(C.Structure):
    _fields_ = [("out", P), ("in_", P), ("n", C.c_uint32), ("mode", C.c_uint32)]


def launch(emu, kernel, x, block, grid=1, mode=0, order=0, seed=0, smem=None, out_per_thread=1):
    with Mem(emu) as m:
        src = m.put(x)
        out = m.new((grid * block * out_per_thread,))
        p = SelftestParams(out=out, in_=src, n=len(x), mode=mode)
        errs = emu.launch(kernel, p, grid, block, 4 * block if smem is None else smem, order, seed)
        return m.get(out), errs


def collectives(emu, ck):
    block, grid = 96, 3
    x = np.arange(grid * block, dtype=np.float32) * 0.5 - 7
    want = np.zeros((grid, block, 10), np.float32)
    for b in range(grid):
        xb = x[b * block:(b + 1) * block]
        for t in range(block):
            w0, lane = t - t % 32, t % 32
            xs = xb[w0:w0 + 32]
            want[b, t] = [xs[(lane * 7 + 3) & 31], xs[lane ^ 5], xs[lane + 3] if lane + 3 < 32 else xs[lane],
                          xs[lane - 2] if lane >= 2 else xs[lane], 1, 1, 0, float(sum(1 << i for i in range(0, 32, 3))),
                          sum(float(np.float32(xb[w:w + 32].sum())) for w in range(0, block, 32)), b * 1000 + grid]
    outs = []
    for order, seed in ORDERS:
        o, errs = launch(emu, "selftest_collectives", x, block, grid, order=order, seed=seed, smem=4 * (block // 32),
                         out_per_thread=10)
        outs.append(o)
        got = o.reshape(grid, block, 10)
        ok = errs == 0 and np.allclose(got[..., :8], want[..., :8], rtol=0, atol=0) and np.allclose(got[..., 8:], want[..., 8:], rtol=1e-6)
        ck.check(f"collectives (shfl, xor, down, up, any, all, ballot, barrier) order {order}", ok,
                 "" if ok else f"errors {errs}, first bad {np.argwhere(~np.isclose(got, want))[:3].tolist()}")
    ck.check("collectives: bitwise identical across orders", all(bits_equal([outs[0]], [o]) for o in outs[1:]))


def exchange(emu, ck):
    block = 128
    x = np.arange(block, dtype=np.float32)
    want = x[(np.arange(block) + 33) % block]
    for mode, name, racy in [(0, "with __syncthreads", False), (1, "without a barrier", True), (2, "with only __syncwarp", True)]:
        outs = [launch(emu, "selftest_exchange", x, block, mode=mode, order=o, seed=s)[0] for o, s in ORDERS]
        same = all(bits_equal([outs[0]], [o]) for o in outs[1:])
        if racy:
            ck.check(f"missing barrier ({name}) shows as order-dependent / poisoned results", not same or np.isnan(outs[0]).any())
        else:
            ck.check(f"shared-memory exchange {name}: correct and order-independent", same and np.array_equal(outs[0], want))


def bugs(emu, ck):
    before = emu.launch_errors
    emu.quiet(True)
    x = np.zeros(64, np.float32)
    for mode, name in [(0, "divergent shuffle"), (1, "divergent __syncthreads"), (2, "__syncthreads after exits"),
                       (3, "deadlock"), (4, "partial mask"), (5, "full-mask shuffle after lanes exited")]:
        _, errs = launch(emu, "selftest_bugs", x, 64, mode=mode)
        ck.check(f"reports {name}", errs > 0, f"{errs} errors")
    emu.quiet(False)
    emu.launch_errors = before  # the provoked ones do not count


def oob_child(lib, mode):
    """Run in a child process by part_oob: the ASan report aborts it."""
    launch(Emu(lib), "selftest_oob", np.zeros(32, np.float32), 32, mode=mode)
    print("no ASan report")


def part_oob(emu, ck, rng):
    """ASan build: out-of-bounds accesses abort a child process with a report."""
    lib = emu.lib._name
    for mode, name in [(0, "shared memory"), (1, "global buffer")]:
        r = subprocess.run([sys.executable, "-B", os.path.abspath(__file__), "--oob-child", lib, str(mode)],
                           capture_output=True, text=True, timeout=120)
        ok = r.returncode != 0 and "heap-buffer-overflow" in r.stderr
        ck.check(f"ASan reports an out-of-bounds {name} access", ok, "" if ok else f"rc {r.returncode}: {r.stderr[-300:]}")


def part_emulator(emu, ck, rng):
    collectives(emu, ck)
    exchange(emu, ck)
    bugs(emu, ck)


def part_bounds(emu, ck, rng):
    collectives(emu, ck)
    exchange(emu, ck)
    part_oob(emu, ck, rng)


def setup(emu):
    emu.check_struct("selftest_collectives", SelftestParams)
    return emu


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--oob-child":
        oob_child(sys.argv[2], int(sys.argv[3]))
    else:
        run_main("selftest", __doc__, setup, {"emulator": part_emulator}, {"bounds": part_bounds}, seed=0)
