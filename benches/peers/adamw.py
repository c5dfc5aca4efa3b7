#!/usr/bin/env python3
"""PyTorch peer of benches/adamw.rs: one AdamW step on one f32 tensor, at the same cases.

    python3 benches/peers/adamw.py [--json PATH] [--reps 20] [--warmup 3] [--cases CASE,...]

Each case: a parameter of n f32 elements (requires_grad), a random f32 gradient, and
torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2) in two variants:
`fused` (fused=True) and `foreach` (fused=False, foreach=True). The `bf16_copy` case also copies
the updated weights into a preallocated bf16 tensor after the step, timed together (snug's kernel
writes that copy in the same pass).

Timing: `--warmup` steps, then `--reps` single steps, each between two CUDA events with L2 flushed
before it (a write of a buffer twice the L2 size); the median is reported. Peak memory:
torch.cuda.max_memory_allocated() after the timed steps, minus what was allocated when the peak
was reset just before the case's tensors were made (the L2-flush buffer, made once, is not
counted).

Prints one line per (case, variant) and, with --json PATH, appends one JSON object per line:
{"source": "torch", "op": "adamw", "case": ..., "variant": ..., "secs": ..., "peak_bytes": ...}.
Without torch or a CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import argparse
import gc
import json
import statistics
import sys

OP = "adamw"
# (case string exactly as benches/adamw.rs names it, n, bf16 copy)
CASES = [
    ("n=1048576", 1 << 20, False),
    ("n=16777216", 1 << 24, False),
    ("n=67108864", 1 << 26, False),
    ("n=16777216,bf16_copy", 1 << 24, True),
]
VARIANTS = [
    ("fused", {"fused": True}),
    ("foreach", {"fused": False, "foreach": True}),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="PATH", help="append one JSON line per (case, variant) to PATH")
    ap.add_argument("--reps", type=int, default=20, help="timed steps per case (median taken)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
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
        unknown = [c for c in wanted if c not in {k for k, _, _ in CASES}]
        if unknown:
            ap.error(f"unknown case(s) {unknown}; known: {[k for k, _, _ in CASES]}")
        cases = [c for c in CASES if c[0] in wanted]

    dev = torch.device("cuda", 0)
    props = torch.cuda.get_device_properties(dev)
    name = props.name
    l2 = getattr(props, "L2_cache_size", 0) or (64 << 20)
    flush = torch.empty(2 * l2, dtype=torch.uint8, device=dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = open(args.json, "a") if args.json else None

    for case, n, bf16_copy in cases:
        for variant, kw in VARIANTS:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            baseline = torch.cuda.memory_allocated(dev)

            gen = torch.Generator(device=dev).manual_seed(0)
            p = torch.randn(n, dtype=torch.float32, device=dev, generator=gen).requires_grad_()
            p.grad = torch.randn(n, dtype=torch.float32, device=dev, generator=gen)
            opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, **kw)
            p_bf16 = torch.empty(n, dtype=torch.bfloat16, device=dev) if bf16_copy else None

            def step():
                opt.step()
                if p_bf16 is not None:
                    with torch.no_grad():
                        p_bf16.copy_(p)

            times = []
            for i in range(args.warmup + args.reps):
                flush.fill_(i & 0xFF)
                start.record()
                step()
                end.record()
                end.synchronize()
                if i >= args.warmup:
                    times.append(start.elapsed_time(end) / 1e3)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev) - baseline
            secs = statistics.median(times)

            print(
                f"peer {OP} [{case}] torch {variant} on {name}: {secs * 1e6:.3f} us "
                f"(median of {len(times)}, min {min(times) * 1e6:.3f} us), peak {peak / (1 << 20):.2f} MiB"
            )
            if out:
                line = {
                    "source": "torch",
                    "op": OP,
                    "case": case,
                    "variant": variant,
                    "device": name,
                    "secs": secs,
                    "min_secs": min(times),
                    "reps": len(times),
                    "peak_bytes": peak,
                    "torch": torch.__version__,
                }
                out.write(json.dumps(line) + "\n")
                out.flush()

            del opt, p, p_bf16, step
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
