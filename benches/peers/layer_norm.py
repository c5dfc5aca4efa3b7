#!/usr/bin/env python3
"""PyTorch peer of benches/layer_norm.rs: LayerNorm over the last axis or over channels, eager and compiled.

    python3 benches/peers/layer_norm.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                        [--compile-timeout 300] [--total-budget 480]
                                        [--cases CASE;...]

Cases (strings exactly as benches/layer_norm.rs names them; C the normalised extent):
  "V3 last,[8,19,960,64]": rows x[..., :] (C = 64): F.layer_norm(x, (C,), weight, bias, 1e-5).
  "BEV channels,[4,256,256,256]", "channels,[8,512,960]": rows x[b, :, l...] of [B, C, L...]
  (C = 256, 512), as users do it with stock code: x.permute(0, 2, ..., 1) (a channels-last view),
  F.layer_norm over C, then .permute(0, -1, 1, ...) back (a view of the channels-last result, not
  made contiguous). F.layer_norm makes its non-contiguous input contiguous first: a copy of x
  (and, in the backward, of dy) that is timed with the rest and counted in the peak; the line
  records it in "note".
Inputs as the Rust bench fills them (from other random numbers): x, dy ~ N(0, 1) of the case's
shape, weight, bias ~ N(0, 1) of shape (C,); eps 1e-5; f32, made on the device from a seeded
generator. TF32 off (no product here; set for uniformity, recorded in "tf32_api").

ops and variants:
  op "layer_norm": forward only, under torch.no_grad(); variants "eager" and "torch.compile".
  op "layer_norm_backward": forward AND backward timed together (snug's backward op is timed
  alone, from its saved mean and rstd; torch has no separate backward without its forward): x,
  weight and bias require grad, torch.autograd.grad(y, (x, weight, bias), grad_outputs=dy) (what
  snug's backward writes: dx, dweight, dbias); variants "eager fwd+bwd" and "torch.compile fwd+bwd".
  torch.compile compiles the function above (default mode); compile time is excluded (the
  compiling call and one more call run untimed, under --compile-timeout seconds; its wall time is
  recorded as "compile_secs"). A compile that fails or does not finish in time is recorded as
  "secs": null with "error": "compile failed: ...", and the script goes on. All eager entries run
  first, then the compiled ones; a compile is not attempted (recorded with an "error") once the
  script has run --total-budget seconds, and its timeout is cut to what is left of that budget.

Timing: a first call (a warm-up, timed), then --warmup - 1 more warm-ups (none if they would not
fit in --budget) and reps = min(--reps, max(1, int(--budget / first_call_secs))) timed calls, each
between two CUDA events with L2 flushed before it (a write of a buffer twice the L2 size); the
median is reported. Peak memory: torch.cuda.max_memory_allocated() after the timed calls, minus
what was allocated when the peak was reset just before the entry's tensors were made (so it
counts the inputs, the outputs and torch's temporaries; the L2-flush buffer, made once, is not
counted).

Prints one line per (op, case, variant) and, with --json PATH, appends one JSON object per line:
{"source": "torch", "op": ..., "case": ..., "variant": ..., "device": ..., "secs": ...,
"min_secs": ..., "reps": ..., "peak_bytes": ..., "torch": ..., "allow_tf32": false,
"tf32_api": ...}. An entry that runs out of memory is recorded with "secs": null, "error": "OOM",
"message" (the allocator's line) and "peak_bytes" (the peak reached before it failed); the script
goes on. Without torch or a CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import argparse
import gc
import json
import math
import signal
import statistics
import sys
import time

OP_FWD = "layer_norm"
OP_BWD = "layer_norm_backward"
EPS = 1e-5
# (case string exactly as benches/layer_norm.rs names it, shape, axis)
CASES = [
    ("V3 last,[8,19,960,64]", (8, 19, 960, 64), "last"),
    ("BEV channels,[4,256,256,256]", (4, 256, 256, 256), "channels"),
    ("channels,[8,512,960]", (8, 512, 960), "channels"),
]
CHANNELS_NOTE = ("channels as users do it: x.permute to channels-last, F.layer_norm (which copies the "
                 "non-contiguous input contiguous; the backward copies dy too), .permute back (a view, "
                 "not made contiguous): the copies are timed and counted in the peak")
# The device the entries run on. A CPU test harness (with a stand-in for torch.cuda) may point
# it at "cpu"; benches always run on "cuda".
DEVICE = "cuda"


class CompileTimeout(BaseException):
    """Raised from SIGALRM while compiling; a BaseException so no `except Exception` swallows it."""


def is_oom(torch, e):
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def first_line(e):
    s = str(e).strip()
    return s.splitlines()[0][:500] if s else type(e).__name__


def oom_line(e):
    """The allocator's line of an out-of-memory error (torch.compile may wrap it in its own words)."""
    for line in str(e).splitlines():
        if "out of memory" in line.lower():
            return line.strip()[:500]
    return first_line(e)


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
    ap.add_argument("--compile-timeout", type=float, default=300.0,
                    help="seconds torch.compile may take (compiling call + one more) before it is recorded as failed")
    ap.add_argument("--total-budget", type=float, default=480.0,
                    help="seconds after which no further compile is attempted (compile timeouts are cut to fit)")
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

    t_script = time.monotonic()
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

    def ln_last(x, w, b):
        return F.layer_norm(x, (x.shape[-1],), w, b, EPS)

    def ln_channels(x, w, b):
        nd = x.dim()
        y = F.layer_norm(x.permute(0, *range(2, nd), 1), (x.shape[1],), w, b, EPS)
        return y.permute(0, nd - 1, *range(1, nd - 1))

    def make_call(shape, axis, backward, use_compile):
        gen = torch.Generator(device=dev).manual_seed(1)
        c = shape[-1] if axis == "last" else shape[1]
        x, dy = (torch.randn(shape, dtype=torch.float32, device=dev, generator=gen) for _ in range(2))
        w, b = (torch.randn((c,), dtype=torch.float32, device=dev, generator=gen) for _ in range(2))
        fn = ln_last if axis == "last" else ln_channels
        if use_compile:
            fn = torch.compile(fn)
        if not backward:
            def call():
                with torch.no_grad():
                    return fn(x, w, b)
        else:
            xs = [t.requires_grad_() for t in (x, w, b)]

            def call():
                return torch.autograd.grad(fn(*xs), xs, grad_outputs=dy)
        return call

    def timed(call, i):
        flush.fill_(i & 0xFF)
        start.record()
        res = call()
        end.record()
        end.synchronize()
        del res
        return start.elapsed_time(end) / 1e3

    def compile_warm(call, timeout):
        """Runs the compiling call and one more, untimed, under SIGALRM; returns the first's wall time."""
        fired = []

        def on_alarm(signum, frame):
            fired.append(signum)
            raise CompileTimeout(f"not finished after {timeout:.0f} s")

        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(max(1, int(math.ceil(timeout))))
        try:
            t0 = time.monotonic()
            res = call()
            torch.cuda.synchronize(dev)
            first = time.monotonic() - t0
            del res
            res = call()
            torch.cuda.synchronize(dev)
            del res
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        if fired:  # the alarm went off but something caught it: still a timeout
            raise CompileTimeout(f"not finished after {timeout:.0f} s")
        return first

    def graph_breaks():
        try:
            return int(sum(torch._dynamo.utils.counters["graph_break"].values()))
        except Exception:  # noqa: BLE001 - informational only
            return None

    # All eager entries first, then the compiled ones.
    plan = [(uc, case, shape, axis, bwd)
            for uc in (False, True) for case, shape, axis in cases for bwd in (False, True)]
    for use_compile, case, shape, axis, backward in plan:
        op = OP_BWD if backward else OP_FWD
        variant = ("torch.compile" if use_compile else "eager") + (" fwd+bwd" if backward else "")
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
        if axis == "channels":
            rec["note"] = CHANNELS_NOTE
        label = f"peer {op} [{case}] torch {variant} on {name}"

        timeout = left = None
        if use_compile:
            left = args.total_budget - (time.monotonic() - t_script)
            if left < 30.0:
                rec["error"] = f"skipped: not attempted, --total-budget {args.total_budget:.0f} s spent"
                print(f"{label}: {rec['error']}")
                emit(rec)
                continue
            timeout = min(args.compile_timeout, left)
            import torch._dynamo  # noqa: F401 - reset() and the graph-break counters

            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()

        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        baseline = torch.cuda.memory_allocated(dev)

        call = None
        phase = "inputs"
        compile_secs = None
        try:
            call = make_call(shape, axis, backward, use_compile)
            if use_compile:
                phase = "compile"
                compile_secs = compile_warm(call, timeout)
            phase = "run"
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
        except CompileTimeout as e:
            rec["error"] = (f"compile failed: {e} (--compile-timeout {args.compile_timeout:.0f} s, "
                            f"total budget left {left:.0f} s)")
            rec["peak_bytes"] = torch.cuda.max_memory_allocated(dev) - baseline
            print(f"{label}: {rec['error']}")
            emit(rec)
            del call
            torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
            continue
        except Exception as e:  # noqa: BLE001 - OOM and compile failures are recorded; eager errors re-raise
            oom = is_oom(torch, e)
            if not oom and not use_compile:
                raise
            rec["peak_bytes"] = torch.cuda.max_memory_allocated(dev) - baseline
            if oom:
                rec["error"], rec["message"] = "OOM", oom_line(e)
                print(f"{label}: OOM ({phase}): {rec['message']}, peak {rec['peak_bytes'] / (1 << 20):.2f} MiB")
            else:
                what = "compile failed" if phase == "compile" else "compiled run failed"
                rec["error"] = f"{what}: {type(e).__name__}: {first_line(e)}"
                print(f"{label}: {rec['error']}")
            emit(rec)
            del call
            if use_compile:
                torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
            continue

        secs = statistics.median(times)
        extra = f", compile {compile_secs:.1f} s" if compile_secs is not None else ""
        print(
            f"{label}: {secs * 1e6:.3f} us (median of {len(times)}, min {min(times) * 1e6:.3f} us), "
            f"peak {peak / (1 << 20):.2f} MiB{extra}"
        )
        rec.update({"secs": secs, "min_secs": min(times), "reps": len(times), "peak_bytes": peak})
        if compile_secs is not None:
            rec["compile_secs"] = compile_secs
            gb = graph_breaks()
            if gb is not None:
                rec["graph_breaks"] = gb
        emit(rec)
        del call
        if use_compile:
            torch._dynamo.reset()
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
