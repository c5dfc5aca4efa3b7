#!/usr/bin/env python3
"""Shared harness of the PyTorch peers in benches/peers/ (not a peer itself).

A peer does:

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _peerlib

    ap, args = _peerlib.parse_args(__doc__)          # --json --reps --warmup --budget --cases
    torch = _peerlib.import_torch()                  # None: "skipped: no CUDA device" printed
    if torch is None:
        return 0
    cases = _peerlib.select_cases(ap, args.cases, CASES)
    h = _peerlib.Harness(torch, DEVICE, args)        # device, L2-flush buffer, events, JSON file
    tf32_api = _peerlib.set_tf32(torch, False)
    for ...:
        rec = h.record(op, case, variant, allow_tf32=False, tf32_api=tf32_api)
        h.run_entry(rec, make)                       # times, measures the peak, emits the line
    h.close()

What it keeps identical across the peers (scripts/bundle/report.py reads these lines):
  * JSON lines: {"source": "torch", "op", "case", "variant", "device", "secs", "min_secs",
    "reps", "peak_bytes", "torch", then the script's own fields (e.g. "allow_tf32", "tf32_api",
    "flops")}, then after the measurement "rel_err" (when the entry has a check). An entry that
    runs out of memory keeps "secs": null, "reps": 0 and gets "error": "OOM", "message": the
    allocator's first line, and the peak reached before it failed.
  * Timing: a first call (a warm-up, timed), then --warmup - 1 more warm-ups (none if they would
    not fit twice in --budget) and reps = min(--reps, max(1, int(--budget / first_call_secs)))
    timed calls, each between two CUDA events with L2 flushed before it (a write of a buffer twice
    the L2 size); the median is reported ("secs"), and the fastest ("min_secs").
  * Peak memory: torch.cuda.max_memory_allocated() after the timed calls minus what was allocated
    when the peak was reset just before the entry's inputs were made.
  * DEVICE test hook: a CPU harness with a stand-in for torch.cuda sets the peer's DEVICE = "cpu";
    the device is torch.device(DEVICE, 0).

Executed directly, this file does nothing and exits 0 (scripts/bundle/run skips files whose name
starts with "_", but an older runner that does not still sees a harmless success).
"""

import argparse
import gc
import json
import math
import signal
import statistics
import sys
import time

SKIPPED = "skipped: no CUDA device"


def parse_args(doc, reps=20, warmup=3, budget=10.0, extra=None):
    """The peers' common flags (--json --reps --warmup --budget, then what `extra(ap)` adds, then
    --cases), with the given defaults. Returns (parser, args)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="PATH", help="append one JSON line per (op, case, variant) to PATH")
    ap.add_argument("--reps", type=int, default=reps, help="most timed calls per entry (median taken)")
    ap.add_argument("--warmup", type=int, default=warmup,
                    help="untimed calls first (the first is timed to size reps)")
    ap.add_argument("--budget", type=float, default=budget,
                    help="seconds the timed calls of one entry may take: reps = min(--reps, budget / first call)")
    if extra is not None:  # the script's own flags, listed before --cases
        extra(ap)
    ap.add_argument("--cases", help="case strings to run, separated by ';' (they contain commas); default: all")
    return ap, ap.parse_args()


def add_compile_args(ap, compile_timeout=300.0, total_budget=480.0):
    """--compile-timeout and --total-budget, for peers that also time torch.compile."""
    ap.add_argument("--compile-timeout", type=float, default=compile_timeout,
                    help="seconds torch.compile may take (compiling call + one more) before it is recorded as failed")
    ap.add_argument("--total-budget", type=float, default=total_budget,
                    help="seconds after which no further compile is attempted (compile timeouts are cut to fit)")


def import_torch():
    """torch, or None after printing the "skipped: no CUDA device" line (torch missing or no GPU)."""
    try:
        import torch
    except ImportError as e:
        print(f"{SKIPPED} (torch not importable: {e})")
        return None
    if not torch.cuda.is_available():
        print(SKIPPED)
        return None
    return torch


def select_cases(ap, wanted_str, cases, key=None):
    """The entries of `cases` named in --cases (';'-separated), in `cases`' order; all without it.
    `key(c)` gives an entry's case string (default: c itself if a str, else c[0]). An unknown name is
    a usage error (ap.error, exit 2)."""
    if key is None:
        key = lambda c: c if isinstance(c, str) else c[0]  # noqa: E731
    if not wanted_str:
        return list(cases)
    wanted = [c.strip() for c in wanted_str.split(";") if c.strip()]
    known = [key(c) for c in cases]
    unknown = [c for c in wanted if c not in known]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {known}")
    return [c for c in cases if key(c) in wanted]


def is_oom(torch, e):
    """Whether `e` is the CUDA allocator running out of memory."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def first_line(e):
    """The first line of an exception's message (at most 500 characters), or its type's name."""
    s = str(e).strip()
    return s.splitlines()[0][:500] if s else type(e).__name__


def oom_line(e):
    """The allocator's line of an out-of-memory error (torch.compile may wrap it in its own words)."""
    for line in str(e).splitlines():
        if "out of memory" in line.lower():
            return line.strip()[:500]
    return first_line(e)


class CompileTimeout(BaseException):
    """Raised from SIGALRM while compiling; a BaseException so no `except Exception` swallows it."""


def compile_warm(torch, dev, call, timeout):
    """Runs the compiling call and one more, untimed, under SIGALRM (timeout seconds, rounded up);
    returns the first's wall time. Raises CompileTimeout when the alarm went off (even if
    something inside caught the exception raised from it)."""
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


def graph_breaks(torch):
    """Graph breaks dynamo counted since its counters were last cleared (None if unreadable)."""
    try:
        return int(sum(torch._dynamo.utils.counters["graph_break"].values()))
    except Exception:  # noqa: BLE001 - informational only
        return None


def set_tf32(torch, on):
    """Allows or forbids TF32 in cuBLAS f32 products; returns the name of the setting used:
    torch.backends.cuda.matmul.fp32_precision ("tf32" / "ieee") where it exists (PyTorch >= 2.9
    objects to mixing it with the legacy flag), else torch.backends.cuda.matmul.allow_tf32."""
    m = torch.backends.cuda.matmul
    if hasattr(m, "fp32_precision"):
        m.fp32_precision = "tf32" if on else "ieee"
        return "torch.backends.cuda.matmul.fp32_precision"
    m.allow_tf32 = on
    return "torch.backends.cuda.matmul.allow_tf32"


def rel_err(res, want):
    """max |res - want| / max |want| (res compared in f64; the absolute error when want is 0)."""
    ref = want.abs().max().item()
    err = (res.double() - want).abs().max().item()
    return err / ref if ref > 0 else err


class Harness:
    """One peer run's device, L2-flush buffer, CUDA events and JSON output (args: parse_args's)."""

    def __init__(self, torch, device, args):
        self.t_script = time.monotonic()  # --total-budget counts from here
        self.torch = torch
        self.args = args
        self.dev = torch.device(device, 0)
        props = torch.cuda.get_device_properties(self.dev)
        self.name = props.name
        l2 = getattr(props, "L2_cache_size", 0) or (64 << 20)
        self.flush = torch.empty(2 * l2, dtype=torch.uint8, device=self.dev)
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)
        self.out = open(args.json, "a") if args.json else None

    def close(self):
        if self.out:
            self.out.close()
            self.out = None

    def emit(self, rec):
        """Appends one JSON line (when --json was given)."""
        if self.out:
            self.out.write(json.dumps(rec) + "\n")
            self.out.flush()

    def label(self, rec):
        return f"peer {rec['op']} [{rec['case']}] torch {rec['variant']} on {self.name}"

    def record(self, op, case, variant, **fields):
        """An entry's JSON object before it runs; `fields` (e.g. allow_tf32, tf32_api, flops)
        follow the common ones, in the order given."""
        rec = {
            "source": "torch",
            "op": op,
            "case": case,
            "variant": variant,
            "device": self.name,
            "secs": None,
            "min_secs": None,
            "reps": 0,
            "peak_bytes": None,
            "torch": self.torch.__version__,
        }
        rec.update(fields)
        return rec

    def timed(self, call, i):
        """Seconds of one call between two CUDA events, L2 flushed (filled with i) before it."""
        self.flush.fill_(i & 0xFF)
        self.start.record()
        res = call()
        self.end.record()
        self.end.synchronize()
        del res
        return self.start.elapsed_time(self.end) / 1e3

    def reset_peak(self):
        """Frees what can be freed, resets the peak; returns the baseline allocated bytes."""
        torch = self.torch
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(self.dev)
        torch.cuda.reset_peak_memory_stats(self.dev)
        return torch.cuda.memory_allocated(self.dev)

    def time_call(self, call):
        """The timed calls of one entry (the timing rule above); returns their seconds."""
        args = self.args
        t1 = self.timed(call, 0)
        reps = min(args.reps, max(1, int(args.budget / t1)))
        warm = max(0, args.warmup - 1)
        if t1 * (warm + reps) > 2 * args.budget:
            warm = 0
        times = []
        for i in range(warm + reps):
            t = self.timed(call, i + 1)
            if i >= warm:
                times.append(t)
        return times

    def record_oom(self, rec, e, baseline, label=None):
        """Records an OOM entry (peak reached, "error": "OOM", "message"), prints and emits it."""
        msg = first_line(e)
        rec.update({"peak_bytes": self.torch.cuda.max_memory_allocated(self.dev) - baseline,
                    "error": "OOM", "message": msg})
        print(f"{label or self.label(rec)}: OOM: {msg}")
        self.emit(rec)
        gc.collect()
        self.torch.cuda.empty_cache()

    def compile_timeout(self, rec, label=None):
        """For a torch.compile entry: the seconds its compile may take, min(--compile-timeout, what
        is left of --total-budget); None (the entry recorded as skipped and emitted) when under 30 s
        are left. Resets dynamo and its graph-break counters."""
        args = self.args
        left = args.total_budget - (time.monotonic() - self.t_script)
        if left < 30.0:
            rec["error"] = f"skipped: not attempted, --total-budget {args.total_budget:.0f} s spent"
            print(f"{label or self.label(rec)}: {rec['error']}")
            self.emit(rec)
            return None
        import torch._dynamo  # noqa: F401 - reset() and the graph-break counters

        self.torch._dynamo.reset()
        self.torch._dynamo.utils.counters.clear()
        return left, min(args.compile_timeout, left)

    def run_entry(self, rec, make, err_fmt=", max err {:.2e} of max |f64|", check_oom_ok=True,
                  use_compile=False, long_oom=False):
        """Runs one entry: resets the peak, `make()` builds the inputs and returns call or
        (call, check); with use_compile (call then wraps torch.compile) the compiling call and one
        more run untimed under the compile timeout ("compile_secs", "graph_breaks"); then the timed
        calls and the peak; then (untimed) check(call()) gives "rel_err". Prints one line (with
        TFLOP/s when rec has "flops", err_fmt of rel_err, the compile time) and emits rec.
        An OOM while making, compiling or timing is recorded ("error": "OOM", "message"; with
        long_oom the allocator's line and the phase and peak printed, else the first line); with
        use_compile any other failure is recorded too ("compile failed" / "compiled run failed"),
        else it re-raises. An OOM in the check is recorded as "check_error" when check_oom_ok,
        else re-raised. Returns True when measured, False when not."""
        torch = self.torch
        label = self.label(rec)
        timeout = left = None
        if use_compile:
            got = self.compile_timeout(rec, label)
            if got is None:
                return False
            left, timeout = got
        baseline = self.reset_peak()
        call = check = None
        phase = "inputs"
        compile_secs = None
        try:
            made = make()
            call, check = made if isinstance(made, tuple) else (made, None)
            if use_compile:
                phase = "compile"
                compile_secs = compile_warm(torch, self.dev, call, timeout)
            phase = "run"
            times = self.time_call(call)
            torch.cuda.synchronize(self.dev)
            peak = torch.cuda.max_memory_allocated(self.dev) - baseline
        except CompileTimeout as e:
            rec["error"] = (f"compile failed: {e} (--compile-timeout {self.args.compile_timeout:.0f} s, "
                            f"total budget left {left:.0f} s)")
            rec["peak_bytes"] = torch.cuda.max_memory_allocated(self.dev) - baseline
            print(f"{label}: {rec['error']}")
            self.emit(rec)
            del call, check
            torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
            return False
        except Exception as e:  # noqa: BLE001 - OOM and compile failures are recorded; eager errors re-raise
            oom = is_oom(torch, e)
            if not oom and not use_compile:
                raise
            del call, check
            if oom and not long_oom:
                self.record_oom(rec, e, baseline, label)
                return False
            rec["peak_bytes"] = torch.cuda.max_memory_allocated(self.dev) - baseline
            if oom:
                rec["error"], rec["message"] = "OOM", oom_line(e)
                print(f"{label}: OOM ({phase}): {rec['message']}, peak {rec['peak_bytes'] / (1 << 20):.2f} MiB")
            else:
                what = "compile failed" if phase == "compile" else "compiled run failed"
                rec["error"] = f"{what}: {type(e).__name__}: {first_line(e)}"
                print(f"{label}: {rec['error']}")
            self.emit(rec)
            if use_compile:
                torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
            return False

        err = None
        if check is not None:
            # Accuracy against f64, untimed and after the peak was read.
            try:
                res = call()
                err = check(res)
                del res
            except Exception as e:  # noqa: BLE001 - informational only
                if not (check_oom_ok and is_oom(torch, e)):
                    raise
                rec["check_error"] = f"OOM: {first_line(e)}"

        secs = statistics.median(times)
        flops = rec.get("flops")
        rate = f"{flops / secs / 1e12:.2f} TFLOP/s, " if flops else ""
        err_txt = err_fmt.format(err) if err is not None else ""
        extra = f", compile {compile_secs:.1f} s" if compile_secs is not None else ""
        print(
            f"{label}: {secs * 1e6:.3f} us (median of {len(times)}, min {min(times) * 1e6:.3f} us), "
            f"{rate}peak {peak / (1 << 20):.2f} MiB{err_txt}{extra}"
        )
        rec.update({"secs": secs, "min_secs": min(times), "reps": len(times), "peak_bytes": peak})
        if check is not None:
            rec["rel_err"] = err
        if compile_secs is not None:
            rec["compile_secs"] = compile_secs
            gb = graph_breaks(torch)
            if gb is not None:
                rec["graph_breaks"] = gb
        self.emit(rec)
        del call, check
        if use_compile:
            torch._dynamo.reset()
        return True

if __name__ == "__main__":
    sys.exit(0)
