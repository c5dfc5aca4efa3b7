#!/usr/bin/env python3
"""PyTorch peer of benches/elementwise.rs: activations (forward, backward) and axpby, f32.

    python3 benches/peers/elementwise.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                         [--cases CASE;...]

One tensor size, n = 8 * 512 * 15360 f32 (252 MB), 1-D. Inputs as the Rust bench fills them (from
other random numbers): x ~ 2 N(0, 1), dy ~ N(0, 1); f32, made on the device from a seeded
generator; every variant's inputs are made afresh. TF32 off (no product here; set for
uniformity, recorded in "tf32_api").

Cases (strings exactly as benches/elementwise.rs names them) and ops:
  "relu,n=8x512x15360", "gelu_tanh,n=8x512x15360", "gelu_erf,n=8x512x15360", "silu,n=8x512x15360":
    op "activation": y = act(x) under torch.no_grad(), act one of F.relu, F.gelu(approximate='tanh'),
    F.gelu(approximate='none'), F.silu; the variant is that name.
    op "activation_backward": forward AND backward timed together (snug's backward op is timed
    alone; torch has no separate backward without its forward): x requires grad,
    torch.autograd.grad(act(x), x, grad_outputs=dy); variant "<name> fwd+bwd". For information,
    also the backward kernel alone that autograd runs, called directly on x and dy:
    torch.ops.aten.threshold_backward(dy, x, 0) (relu's; autograd passes relu(x), the same mask),
    aten.gelu_backward(dy, x, approximate=...), aten.silu_backward(dy, x); variant
    "aten.<kernel> (alone)".
  "n=8x512x15360": op "axpby" (snug's y = 1 * x + 1 * dy): torch.add(x, dy); variant "torch.add(x, dy)".

Timing: a first call (a warm-up, timed), then --warmup - 1 more warm-ups (none if they would not
fit in --budget) and reps = min(--reps, max(1, int(--budget / first_call_secs))) timed calls, each
between two CUDA events with L2 flushed before it (a write of a buffer twice the L2 size); the
median is reported. Peak memory: torch.cuda.max_memory_allocated() after the timed calls, minus
what was allocated when the peak was reset just before the entry's tensors were made (so it
counts the inputs, the output and torch's temporaries; the L2-flush buffer, made once, is not
counted).

Prints one line per (op, case, variant) and, with --json PATH, appends one JSON object per line:
{"source": "torch", "op": ..., "case": ..., "variant": ..., "device": ..., "secs": ...,
"min_secs": ..., "reps": ..., "peak_bytes": ..., "torch": ..., "allow_tf32": false,
"tf32_api": ...}. An entry that runs out of memory is recorded with "secs": null, "error": "OOM"
and the allocator's message; the script goes on.
Without torch or a CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import argparse
import gc
import json
import statistics
import sys

N = 8 * 512 * 15_360
SUFFIX = ",n=8x512x15360"
AXPBY_CASE = "n=8x512x15360"
# case prefix exactly as benches/elementwise.rs names it -> (forward name, F function name, kwargs,
# aten backward kernel, its keyword arguments)
ACTS = {
    "relu": ("F.relu", "relu", {}, "threshold_backward", {"threshold": 0.0}),
    "gelu_tanh": ("F.gelu(approximate='tanh')", "gelu", {"approximate": "tanh"},
                  "gelu_backward", {"approximate": "tanh"}),
    "gelu_erf": ("F.gelu(approximate='none')", "gelu", {"approximate": "none"},
                 "gelu_backward", {"approximate": "none"}),
    "silu": ("F.silu", "silu", {}, "silu_backward", {}),
}
CASES = [a + SUFFIX for a in ACTS] + [AXPBY_CASE]
# The device the entries run on. A CPU test harness (with a stand-in for torch.cuda) may point
# it at "cpu"; benches always run on "cuda".
DEVICE = "cuda"


def is_oom(torch, e):
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def first_line(e):
    s = str(e).strip()
    return s.splitlines()[0][:500] if s else type(e).__name__


def set_tf32(torch, on):
    """Allows or forbids TF32 in cuBLAS f32 products; returns the name of the setting used."""
    m = torch.backends.cuda.matmul
    if hasattr(m, "fp32_precision"):
        m.fp32_precision = "tf32" if on else "ieee"
        return "torch.backends.cuda.matmul.fp32_precision"
    m.allow_tf32 = on
    return "torch.backends.cuda.matmul.allow_tf32"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="PATH", help="append one JSON line per (op, case, variant) to PATH")
    ap.add_argument("--reps", type=int, default=20, help="most timed calls per entry (median taken)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls first (the first is timed to size reps)")
    ap.add_argument("--budget", type=float, default=10.0,
                    help="seconds the timed calls of one entry may take: reps = min(--reps, budget / first call)")
    ap.add_argument("--cases", help="case strings to run, separated by ';' (they contain commas); default: all")
    args = ap.parse_args()

    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"skipped: no CUDA device (torch not importable: {e})")
        return 0
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0

    cases = CASES
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(";") if c.strip()]
        unknown = [c for c in wanted if c not in CASES]
        if unknown:
            ap.error(f"unknown case(s) {unknown}; known: {CASES}")
        cases = [c for c in CASES if c in wanted]

    dev = torch.device(DEVICE, 0)
    props = torch.cuda.get_device_properties(dev)
    name = props.name
    l2 = getattr(props, "L2_cache_size", 0) or (64 << 20)
    flush = torch.empty(2 * l2, dtype=torch.uint8, device=dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = open(args.json, "a") if args.json else None
    tf32_api = set_tf32(torch, False)

    def emit(line):
        if out:
            out.write(json.dumps(line) + "\n")
            out.flush()

    def inputs(grad=False):
        gen = torch.Generator(device=dev).manual_seed(1)
        x = torch.randn((N,), dtype=torch.float32, device=dev, generator=gen).mul_(2.0)
        dy = torch.randn((N,), dtype=torch.float32, device=dev, generator=gen)
        return x.requires_grad_(grad), dy

    # (op, case, variant, make): make() builds the entry's inputs and returns its call.
    entries = []
    for case in cases:
        if case == AXPBY_CASE:
            def make():
                x, dy = inputs()
                return lambda: torch.add(x, dy)

            entries.append(("axpby", case, "torch.add(x, dy)", make))
            continue
        fwd_name, fn_name, kw, bwd_name, bwd_kw = ACTS[case[: -len(SUFFIX)]]
        act, bwd = getattr(F, fn_name), getattr(torch.ops.aten, bwd_name)

        def make_fwd(act=act, kw=kw):
            x, _ = inputs()

            def call():
                with torch.no_grad():
                    return act(x, **kw)
            return call

        def make_fwd_bwd(act=act, kw=kw):
            x, dy = inputs(grad=True)
            return lambda: torch.autograd.grad(act(x, **kw), (x,), grad_outputs=dy)

        def make_bwd(bwd=bwd, bwd_kw=bwd_kw):
            x, dy = inputs()
            return lambda: bwd(dy, x, **bwd_kw)

        entries += [("activation", case, fwd_name, make_fwd),
                    ("activation_backward", case, fwd_name + " fwd+bwd", make_fwd_bwd),
                    ("activation_backward", case, f"aten.{bwd_name} (alone)", make_bwd)]

    def timed(call, i):
        flush.fill_(i & 0xFF)
        start.record()
        res = call()
        end.record()
        end.synchronize()
        del res
        return start.elapsed_time(end) / 1e3

    for op, case, variant, make in entries:
        label = f"peer {op} [{case}] torch {variant} on {name}"
        rec = {
            "source": "torch",
            "op": op,
            "case": case,
            "variant": variant,
            "device": name,
            "secs": None,
            "min_secs": None,
            "reps": 0,
            "peak_bytes": None,
            "torch": torch.__version__,
            "allow_tf32": False,
            "tf32_api": tf32_api,
        }

        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        baseline = torch.cuda.memory_allocated(dev)

        call = None
        try:
            call = make()
            t1 = timed(call, 0)
            reps = min(args.reps, max(1, int(args.budget / t1)))
            warm = max(0, args.warmup - 1)
            if t1 * (warm + reps) > 2 * args.budget:
                warm = 0
            times = []
            for i in range(warm + reps):
                t = timed(call, i + 1)
                if i >= warm:
                    times.append(t)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev) - baseline
        except Exception as e:  # noqa: BLE001 - only OOM is recorded; anything else re-raises
            if not is_oom(torch, e):
                raise
            msg = first_line(e)
            rec.update({"peak_bytes": torch.cuda.max_memory_allocated(dev) - baseline, "error": "OOM", "message": msg})
            print(f"{label}: OOM: {msg}")
            emit(rec)
            del call
            gc.collect()
            torch.cuda.empty_cache()
            continue

        secs = statistics.median(times)
        print(
            f"{label}: {secs * 1e6:.3f} us (median of {len(times)}, min {min(times) * 1e6:.3f} us), "
            f"peak {peak / (1 << 20):.2f} MiB"
        )
        rec.update({"secs": secs, "min_secs": min(times), "reps": len(times), "peak_bytes": peak})
        emit(rec)
        del call
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
