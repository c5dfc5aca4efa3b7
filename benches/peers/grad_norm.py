#!/usr/bin/env python3
"""PyTorch peer of benches/grad_norm.rs: the global L2 norm of 48 gradient tensors, as clip_grad_norm_ computes it.

    python3 benches/peers/grad_norm.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                       [--cases CASE;...]

Case (string exactly as benches/grad_norm.rs names it): "tensors=48,elements=<total>": 48 f32
tensors, tensor i of 512 elements when i % 3 == 0, else 512 * 1216 + i (a model's mix of big
weight matrices and small biases and norms; 19,931,904 elements in all, 80 MB). Inputs as the Rust bench
fills them (from other random numbers): every tensor ~ N(0, 1); made on the device from a seeded
generator. TF32 off (no product here; set for uniformity, recorded in "tf32_api").

op "grad_norm", variants: the norm computation of torch.nn.utils.clip_grad_norm_ (its
get_total_norm, norm_type 2, error_if_nonfinite False; the scaling of the gradients that
clip_grad_norm_ does next is not part of it), written out on the 48 tensors (one device and
dtype, so one group):
  "clip_grad_norm_ (foreach)": torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gs, 2.0)),
  2.0) (its path when foreach is None or True on CUDA);
  "clip_grad_norm_ (per-tensor)": torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g,
  2.0) for g in gs]), 2.0) (its path with foreach=False).
  A variant whose function this torch lacks is recorded with "secs": null and an "error".
  After the timed calls, one more (untimed) call's result is compared with the f64 norm:
  "rel_err" = |result - f64| / f64.

Timing: a first call (a warm-up, timed), then --warmup - 1 more warm-ups (none if they would not
fit in --budget) and reps = min(--reps, max(1, int(--budget / first_call_secs))) timed calls, each
between two CUDA events with L2 flushed before it (a write of a buffer twice the L2 size); the
median is reported. Peak memory: torch.cuda.max_memory_allocated() after the timed calls, minus
what was allocated when the peak was reset just before the entry's tensors were made (so it
counts the 48 inputs, the per-tensor norms and the result; the L2-flush buffer, made once, is not
counted).

Prints one line per (op, case, variant) and, with --json PATH, appends one JSON object per line:
{"source": "torch", "op": ..., "case": ..., "variant": ..., "device": ..., "secs": ...,
"min_secs": ..., "reps": ..., "peak_bytes": ..., "torch": ..., "allow_tf32": false,
"tf32_api": ..., "rel_err": ...}. An entry that runs out of memory is recorded with "secs": null,
"error": "OOM" and the allocator's message; the script goes on.
Without torch or a CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import argparse
import gc
import json
import math
import statistics
import sys

OP = "grad_norm"
LENS = [512 if i % 3 == 0 else 512 * 1216 + i for i in range(48)]
# (case string exactly as benches/grad_norm.rs names it, tensor lengths)
CASES = [(f"tensors={len(LENS)},elements={sum(LENS)}", LENS)]
VARIANTS = ["clip_grad_norm_ (foreach)", "clip_grad_norm_ (per-tensor)"]
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
    tf32_api = set_tf32(torch, False)
    vnorm = torch.linalg.vector_norm

    def emit(line):
        if out:
            out.write(json.dumps(line) + "\n")
            out.flush()

    def make_call(variant, lens):
        gen = torch.Generator(device=dev).manual_seed(1)
        gs = [torch.randn((n,), dtype=torch.float32, device=dev, generator=gen) for n in lens]
        if variant == "clip_grad_norm_ (foreach)":
            def call():
                with torch.no_grad():
                    return vnorm(torch.stack(torch._foreach_norm(gs, 2.0)), 2.0)
        elif variant == "clip_grad_norm_ (per-tensor)":
            def call():
                with torch.no_grad():
                    return vnorm(torch.stack([vnorm(g, 2.0) for g in gs]), 2.0)
        else:
            raise ValueError(f"unknown variant {variant!r}")

        def check(res):
            want = math.sqrt(sum(g.double().square().sum().item() for g in gs))
            return abs(res.item() - want) / want

        return call, check

    def timed(call, i):
        flush.fill_(i & 0xFF)
        start.record()
        res = call()
        end.record()
        end.synchronize()
        del res
        return start.elapsed_time(end) / 1e3

    for case, lens in cases:
        for variant in VARIANTS:
            label = f"peer {OP} [{case}] torch {variant} on {name}"
            rec = {
                "source": "torch",
                "op": OP,
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
            if "foreach" in variant and not hasattr(torch, "_foreach_norm"):
                rec["error"] = f"skipped: torch {torch.__version__} has no torch._foreach_norm"
                print(f"{label}: {rec['error']}")
                emit(rec)
                continue

            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            baseline = torch.cuda.memory_allocated(dev)

            call = check = None
            try:
                call, check = make_call(variant, lens)
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
            res = call()
            rel_err = check(res)
            del res

            secs = statistics.median(times)
            print(
                f"{label}: {secs * 1e6:.3f} us (median of {len(times)}, min {min(times) * 1e6:.3f} us), "
                f"peak {peak / (1 << 20):.2f} MiB, err {rel_err:.2e} of the f64 norm"
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
