"""Python side of the kernel emulator: loads a family's emulator library (built by
scripts/emulate-kernels), launches kernels by name with ctypes parameter structs, allocates
device-like buffers, and counts checks. Used by drivers/<family>.py."""
import argparse
import ctypes as C
import sys
import time

import numpy as np

# Thread/block orders the emulator knows: 0 forward, 1 reverse, 2 random (seeded).
FORWARD, REVERSE, RANDOM = 0, 1, 2
ORDERS = [(FORWARD, 0), (REVERSE, 0), (RANDOM, 11)]

P = C.c_void_p


class Emu:
    def __init__(self, path):
        self.lib = lib = C.CDLL(path)
        lib.emu_params_size.restype = C.c_long
        lib.emu_params_size.argtypes = [C.c_char_p]
        lib.emu_launch.restype = C.c_long
        lib.emu_launch.argtypes = [C.c_char_p, C.c_void_p, C.c_size_t, C.c_uint, C.c_uint, C.c_size_t, C.c_int, C.c_uint]
        for f in ("emu_total_errors", "emu_barriers", "emu_warp_collectives"):
            getattr(lib, f).restype = C.c_long
        lib.emu_set_quiet.argtypes = [C.c_int]
        lib.emu_alloc.restype = C.c_void_p
        lib.emu_alloc.argtypes = [C.c_size_t]
        lib.emu_free.argtypes = [C.c_void_p]
        self.launch_errors = 0  # emulator-reported errors over all launches (divergence, deadlock, ...)
        self.launches = 0

    def check_struct(self, kernel, struct):
        """The ctypes mirror must have the C struct's size (checked again at every launch)."""
        got = self.lib.emu_params_size(kernel.encode())
        if got != C.sizeof(struct):
            raise SystemExit(f"{kernel}: ctypes struct {struct.__name__} is {C.sizeof(struct)} bytes, the C one {got}")

    def launch(self, kernel, params, grid, block, smem, order=FORWARD, seed=0):
        """Runs one launch; returns the number of emulator errors it reported (also accumulated)."""
        r = self.lib.emu_launch(kernel.encode(), C.byref(params), C.sizeof(params), grid, block, smem, order, seed)
        if r < 0:
            raise SystemExit(f"emu_launch({kernel}): {({-1: 'unknown kernel', -2: 'params size mismatch', -3: 'bad launch shape'}).get(r, r)}")
        self.launches += 1
        self.launch_errors += r
        return r

    def quiet(self, q):
        self.lib.emu_set_quiet(int(q))


class Mem:
    """Device-like buffers: exact-size, 256-byte-aligned allocations inside the emulator library (so the ASan build sees
    their bounds). put() copies an array in, new() makes a NaN-poisoned one, get() copies out."""

    def __init__(self, emu):
        self.emu, self.bufs = emu, {}

    def put(self, a, dtype=np.float32):
        if a is None:
            return None
        a = np.ascontiguousarray(a, dtype)
        p = self.emu.lib.emu_alloc(a.nbytes)
        C.memmove(p, a.ctypes.data, a.nbytes)
        self.bufs[p] = (a.shape, a.dtype)
        return p

    def new(self, shape, dtype=np.float32, fill=np.nan):
        return self.put(np.full(shape, fill, dtype), dtype)

    def get(self, p):
        if p is None:
            return None
        shape, dtype = self.bufs[p]
        a = np.empty(shape, dtype)
        C.memmove(a.ctypes.data, p, a.nbytes)
        return a

    def free(self):
        for p in self.bufs:
            self.emu.lib.emu_free(p)
        self.bufs = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()


def bits_equal(xs, ys):
    """Bitwise equality of two lists of arrays (None allowed)."""
    for x, y in zip(xs, ys):
        if (x is None) != (y is None):
            return False
        if x is not None and (x.shape != y.shape or x.tobytes() != y.tobytes()):
            return False
    return len(xs) == len(ys)


def rel_err(x, ref, floor=1e-30):
    x = np.asarray(x, np.float64)
    ref = np.asarray(ref, np.float64)
    if not np.isfinite(x).all():
        return np.inf
    return float(np.abs(x - ref).max() / max(np.abs(ref).max(), floor)) if ref.size else 0.0


class Checks:
    """Counts named checks; prints one line per check and a closing 'RESULT passed failed' line
    that scripts/emulate-kernels adds up."""

    def __init__(self, family, emu):
        self.family, self.emu = family, emu
        self.passed = self.failed = 0
        self.t0 = time.time()

    def check(self, name, ok, detail=""):
        ok = bool(ok)
        self.passed += ok
        self.failed += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
        return ok

    def no_emulator_errors(self, what):
        """One check that the launches so far reported no divergence / deadlock / mask errors."""
        n = self.emu.launch_errors
        self.check(f"{what}: no emulator errors (divergence, deadlock, masks) in {self.emu.launches} launches", n == 0,
                   f"{n} errors (messages on stderr)" if n else "")
        self.emu.launch_errors = 0
        self.emu.launches = 0

    def finish(self):
        print(f"{self.family}: {self.passed} passed, {self.failed} failed ({time.time() - self.t0:.0f} s)")
        print(f"RESULT {self.passed} {self.failed}")
        sys.exit(1 if self.failed else 0)


def run_main(family, doc, setup, parts, asan_parts, seed):
    """The drivers' command line: --lib LIB [--asan] [--part NAME] | --list-parts [--asan].
    setup(emu) -> the object handed to every part; parts / asan_parts: {name: fn(k, checks, rng)}
    for the normal and the ASan build. scripts/emulate-kernels runs each part as its own job."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--lib", help="the family's emulator library (built by scripts/emulate-kernels)")
    ap.add_argument("--asan", action="store_true", help="the library is the ASan build: run the ASan parts")
    ap.add_argument("--part", default="all", help="run one part only (see --list-parts)")
    ap.add_argument("--list-parts", action="store_true", help="print the part names and exit")
    a = ap.parse_args()
    todo = asan_parts if a.asan else parts
    if a.list_parts:
        print(" ".join(todo))
        return
    if not a.lib:
        ap.error("--lib is required")
    if a.part != "all" and a.part not in todo:
        ap.error(f"unknown part {a.part!r}; parts: {' '.join(todo)}")
    emu = Emu(a.lib)
    k = setup(emu)
    ck = Checks(family + (" ASan" if a.asan else "") + ("" if a.part == "all" else f" [{a.part}]"), emu)
    rng = np.random.default_rng(seed)
    for name, fn in todo.items():
        if a.part in ("all", name):
            fn(k, ck, rng)
    ck.no_emulator_errors(family)
    ck.finish()
