#!/usr/bin/env python3
"""PyTorch peer of benches/linear.rs: nn.Linear's forward and its backward (dx, dW, db), f32.

    python3 benches/peers/linear.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                    [--cases CASE;...]

Cases (strings exactly as benches/linear.rs names them), x [rows, in], W [out, in], b [out]:
  "V3 electrodes,rows=7680,512->1216", "tokens,rows=145920,64->256".
Inputs as the Rust bench fills them (from other random numbers): x ~ N(0, 1), W ~ 0.05 N(0, 1),
b ~ 0.1 N(0, 1), dy ~ N(0, 1) of shape [rows, out]; f32, made on the device from a seeded
generator; every variant's inputs are made afresh. TF32 off (the comparison: snug computes true
f32), set through torch.backends.cuda.matmul.fp32_precision = "ieee" where that attribute exists
(PyTorch >= 2.9), else allow_tf32 = False; the line records which ("tf32_api").

ops and variants:
  op "linear": y = F.linear(x, W, b) under torch.no_grad(); variant "F.linear".
  op "linear_backward": forward AND backward timed together (snug's backward op is timed alone;
  torch has no separate backward without its forward): x, W and b require grad,
  torch.autograd.grad(F.linear(x, W, b), (x, W, b), grad_outputs=dy) (what snug's backward
  writes: dx, dW, db); variant "F.linear fwd+bwd".
  After the timed calls, one more (untimed) call's result is compared with f64 on the device:
  "rel_err" = max |result - f64| / max |f64| (the largest over dx, dW, db for the backward; about
  1e-6 in f32, about 1e-3 with TF32: it shows TF32 is off).

Timing: a first call (a warm-up, timed), then --warmup - 1 more warm-ups (none if they would not
fit in --budget) and reps = min(--reps, max(1, int(--budget / first_call_secs))) timed calls, each
between two CUDA events with L2 flushed before it (a write of a buffer twice the L2 size); the
median is reported. Peak memory: torch.cuda.max_memory_allocated() after the timed calls, minus
what was allocated when the peak was reset just before the entry's tensors were made (so it
counts the inputs, the outputs and torch's temporaries; the L2-flush buffer, made once, is not
counted, nor is what cuBLAS keeps from the small products run once before the first entry).

Prints one line per (op, case, variant), with the achieved TFLOP/s (2*rows*in*out FLOPs per
product: one forward, two more in the backward), and, with --json PATH, appends one JSON object
per line: {"source": "torch", "op": ..., "case": ..., "variant": ..., "device": ..., "secs": ...,
"min_secs": ..., "reps": ..., "peak_bytes": ..., "torch": ..., "allow_tf32": false,
"tf32_api": ..., "flops": ..., "rel_err": ...}. An entry that runs out of memory is recorded with
"secs": null, "error": "OOM" and the allocator's message; the script goes on.
Without torch or a CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import argparse
import gc
import json
import statistics
import sys

OP_FWD = "linear"
OP_BWD = "linear_backward"
# (case string exactly as benches/linear.rs names it, rows, in, out)
CASES = [
    ("V3 electrodes,rows=7680,512->1216", 7680, 512, 1216),
    ("tokens,rows=145920,64->256", 145_920, 64, 256),
]
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
        known = [c[0] for c in CASES]
        unknown = [c for c in wanted if c not in known]
        if unknown:
            ap.error(f"unknown case(s) {unknown}; known: {known}")
        cases = [c for c in CASES if c[0] in wanted]

    dev = torch.device(DEVICE, 0)
    props = torch.cuda.get_device_properties(dev)
    name = props.name
    l2 = getattr(props, "L2_cache_size", 0) or (64 << 20)
    flush = torch.empty(2 * l2, dtype=torch.uint8, device=dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = open(args.json, "a") if args.json else None

    # cuBLAS's handle and workspace are made by the first products: make them before any baseline.
    tf32_api = set_tf32(torch, False)
    e = torch.ones((8, 8), dtype=torch.float32, device=dev, requires_grad=True)
    warm = torch.autograd.grad(F.linear(e, e, e[0]), (e,), grad_outputs=torch.ones_like(e))
    del e, warm
    torch.cuda.synchronize(dev)

    def emit(line):
        if out:
            out.write(json.dumps(line) + "\n")
            out.flush()

    def rel(res, want):
        ref = want.abs().max().item()
        err = (res.double() - want).abs().max().item()
        return err / ref if ref > 0 else err

    def make_call(backward, rows, n_in, n_out):
        gen = torch.Generator(device=dev).manual_seed(1)

        def r(*shape, scale=1.0):
            t = torch.randn(shape, dtype=torch.float32, device=dev, generator=gen)
            return t.mul_(scale) if scale != 1.0 else t

        x, w, b, dy = r(rows, n_in), r(n_out, n_in, scale=0.05), r(n_out, scale=0.1), r(rows, n_out)
        if not backward:
            def call():
                with torch.no_grad():
                    return F.linear(x, w, b)

            def check(y):
                return rel(y, torch.addmm(b.double(), x.double(), w.double().t()))

            return call, check
        xs = [t.requires_grad_() for t in (x, w, b)]

        def call():
            return torch.autograd.grad(F.linear(*xs), xs, grad_outputs=dy)

        def check(grads):
            g = dy.double()
            want = (g @ w.detach().double(), g.t() @ x.detach().double(), g.sum(0))
            return max(rel(a, c) for a, c in zip(grads, want))

        return call, check

    def timed(call, i):
        flush.fill_(i & 0xFF)
        start.record()
        res = call()
        end.record()
        end.synchronize()
        del res
        return start.elapsed_time(end) / 1e3

    for case, rows, n_in, n_out in cases:
        for backward in (False, True):
            op, variant = (OP_BWD, "F.linear fwd+bwd") if backward else (OP_FWD, "F.linear")
            flops = 2.0 * rows * n_in * n_out * (3 if backward else 1)
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
                "flops": flops,
            }

            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            baseline = torch.cuda.memory_allocated(dev)

            call = check = None
            try:
                call, check = make_call(backward, rows, n_in, n_out)
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
                rec.update({"peak_bytes": torch.cuda.max_memory_allocated(dev) - baseline,
                            "error": "OOM", "message": msg})
                print(f"{label}: OOM: {msg}")
                emit(rec)
                del call, check
                gc.collect()
                torch.cuda.empty_cache()
                continue

            # Accuracy against f64, untimed and after the peak was read.
            rel_err = None
            try:
                res = call()
                rel_err = check(res)
                del res
            except Exception as e:  # noqa: BLE001 - informational only
                if not is_oom(torch, e):
                    raise
                rec["check_error"] = f"OOM: {first_line(e)}"

            secs = statistics.median(times)
            err_txt = f", max err {rel_err:.2e} of max |f64|" if rel_err is not None else ""
            print(
                f"{label}: {secs * 1e6:.3f} us (median of {len(times)}, min {min(times) * 1e6:.3f} us), "
                f"{flops / secs / 1e12:.2f} TFLOP/s, peak {peak / (1 << 20):.2f} MiB{err_txt}"
            )
            rec.update({"secs": secs, "min_secs": min(times), "reps": len(times), "peak_bytes": peak,
                        "rel_err": rel_err})
            emit(rec)
            del call, check
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
