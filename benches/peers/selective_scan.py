#!/usr/bin/env python3
"""PyTorch peer of benches/selective_scan.rs: the Mamba-1 reference selective scan, eager and compiled.

    python3 benches/peers/selective_scan.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                            [--slow-eager 10] [--eager-bwd-limit 30]
                                            [--compile-timeout 300] [--total-budget 480]
                                            [--cases CASE;...]

The scan is written the way mamba_ssm's `selective_scan_ref` writes it (delta_softplus=True, real
A, B and C of shape (S, N, L), f32): delta = softplus(delta + delta_bias);
deltaA = exp(einsum('bdl,dn->bdln', delta, A)); deltaB_u = einsum('bdl,bnl,bdl->bdln', delta, B, u);
a Python loop over L: x = deltaA[:, :, i] * x + deltaB_u[:, :, i], y_i = einsum('bdn,bn->bd', x,
C[:, :, i]); y = stack(y_i) + D * u; out = y * silu(z). Inputs per direction (as the Rust bench
fills them, from other random numbers): u, z ~ N(0, 1), delta ~ 0.5 N(0, 1) of shape (S, D, L);
A = -exp(N(0, 1)) of shape (D, N); B, C ~ N(0, 1) of shape (S, N, L); D_skip ~ N(0, 1) and
delta_bias ~ 0.5 N(0, 1) of shape (D,).

Cases (strings exactly as benches/selective_scan.rs names them):
  "node,S=152,D=128,N=16,L=960,concat", "edge,S=1368,D=32,N=8,L=960,concat": bidirectional as users
  do it with stock code: two directions with separate inputs; the reverse one runs the same
  reference on torch.flip(..., dims=[-1]) copies of its u, delta, B, C, z and flips the result
  back; output torch.cat([y_f * silu(z_f), y_b * silu(z_b)], dim=1) of shape (S, 2D, L).
  "audio,S=1,D=128,N=16,L=131072": one direction, output y * silu(z) of shape (S, D, L).

ops and variants:
  op "selective_scan": forward only, under torch.no_grad(); variants "eager" and "torch.compile".
  op "selective_scan_backward": forward AND backward timed together (snug's backward op is timed
  alone; torch has no separate backward without its forward), all inputs requires_grad, loss =
  (out * dout).sum() with a fixed random dout, gradients by torch.autograd.grad; variants
  "eager fwd+bwd" and "torch.compile fwd+bwd".
  torch.compile compiles the whole reference function (default mode); compile time is excluded
  (the compiling call and one more call run untimed, under --compile-timeout seconds; its wall time
  is recorded as "compile_secs"). A compile that fails or does not finish in time is recorded as
  "secs": null with "error": "compile failed: ...", and the script goes on. All eager entries run
  first, then the compiled ones; a compile is not attempted (recorded with an "error") once the
  script has run --total-budget seconds, and its timeout is cut to what is left of that budget.

Timing: a first call (a warm-up, timed), then --warmup - 1 more warm-ups (none if they would not
fit in --budget) and reps = min(--reps, max(1, int(--budget / first_call_secs))) timed calls, each
between two CUDA events with L2 flushed before it (a write of a buffer twice the L2 size); the
median is reported. The Python loop over L=131072 is slow in eager: when an eager first call
takes more than --slow-eager seconds, that one call is the record (reps 1, with a "note"), and
torch.compile is skipped for that case (both ops; its dynamo trace would unroll the same loop),
recorded with "secs": null and an "error" saying why. The eager fwd+bwd is worse than slow at
L=131072: autograd's backward of each step's `deltaA[:, :, i]` and `deltaB_u[:, :, i]` (select)
makes a zero gradient of the whole (S, D, L, N) tensor and adds it into the accumulated one, so
the backward moves O(L^2 S D N) bytes (several GB per step for the audio case: minutes on an
H100). Before each eager fwd+bwd entry, one zero-fill of a full-size tensor is timed on the
device (outside the entry's peak) and multiplied by 2 * L * directions: when that lower bound
exceeds --eager-bwd-limit seconds (about 1.5 s for node and edge, 60-100 s for audio), the entry
is not run but recorded with "secs": null, "error": "skipped: ..." and the bound as "est_secs",
and torch.compile is skipped for the case (pass a larger --eager-bwd-limit to measure it anyway,
at the cost of the compile budget). Peak memory:
torch.cuda.max_memory_allocated() after the timed calls, minus what was allocated when the peak
was reset just before the entry's tensors were made (the L2-flush buffer, made once, is not
counted).

Prints one line per (op, case, variant) and, with --json PATH, appends one JSON object per line:
{"source": "torch", "op": ..., "case": ..., "variant": ..., "device": ..., "secs": ...,
"min_secs": ..., "reps": ..., "peak_bytes": ..., "torch": ...}. An entry that runs out of memory
is recorded with "secs": null, "error": "OOM" and the allocator's message; the script goes on.
Without torch or a CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import argparse
import gc
import json
import math
import signal
import statistics
import sys
import time

OP_FWD = "selective_scan"
OP_BWD = "selective_scan_backward"
# (case string exactly as benches/selective_scan.rs names it, (S, D, N, L), directions)
CASES = [
    ("node,S=152,D=128,N=16,L=960,concat", (152, 128, 16, 960), 2),
    ("edge,S=1368,D=32,N=8,L=960,concat", (1368, 32, 8, 960), 2),
    ("audio,S=1,D=128,N=16,L=131072", (1, 128, 16, 131072), 1),
]


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="PATH", help="append one JSON line per (op, case, variant) to PATH")
    ap.add_argument("--reps", type=int, default=20, help="most timed calls per entry (median taken)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls first (the first is timed to size reps)")
    ap.add_argument("--budget", type=float, default=10.0,
                    help="seconds the timed calls of one entry may take: reps = min(--reps, budget / first call)")
    ap.add_argument("--slow-eager", type=float, default=10.0,
                    help="an eager first call slower than this is the record (reps 1) and skips torch.compile for the case")
    ap.add_argument("--eager-bwd-limit", type=float, default=30.0,
                    help="an eager fwd+bwd whose autograd select-backward lower bound exceeds this many seconds is "
                         "recorded as skipped (with est_secs) and skips torch.compile for the case")
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
    dev = torch.device("cuda", 0)
    props = torch.cuda.get_device_properties(dev)
    name = props.name
    l2 = getattr(props, "L2_cache_size", 0) or (64 << 20)
    flush = torch.empty(2 * l2, dtype=torch.uint8, device=dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = open(args.json, "a") if args.json else None

    def emit(line):
        if out:
            out.write(json.dumps(line) + "\n")
            out.flush()

    # mamba_ssm.ops.selective_scan_interface.selective_scan_ref with delta_softplus=True, real A,
    # B and C of shape (batch, dstate, L), D and z given, no last state.
    def selective_scan_ref(u, delta, A, B, C, D, z, delta_bias):
        u = u.float()
        delta = delta.float()
        delta = delta + delta_bias[..., None].float()
        delta = F.softplus(delta)
        batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
        x = A.new_zeros((batch, dim, dstate))
        ys = []
        deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
        deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
        for i in range(u.shape[2]):
            x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
            y = torch.einsum("bdn,bn->bd", x, C[:, :, i])
            ys.append(y)
        y = torch.stack(ys, dim=2)  # (batch, dim, L)
        out = y + u * D[:, None]
        out = out * F.silu(z)
        return out

    def one_direction(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias)

    def bidirectional_concat(u_f, delta_f, A_f, B_f, C_f, D_f, z_f, bias_f,
                             u_b, delta_b, A_b, B_b, C_b, D_b, z_b, bias_b):
        y_f = selective_scan_ref(u_f, delta_f, A_f, B_f, C_f, D_f, z_f, bias_f)
        y_b = selective_scan_ref(torch.flip(u_b, dims=[-1]), torch.flip(delta_b, dims=[-1]), A_b,
                                 torch.flip(B_b, dims=[-1]), torch.flip(C_b, dims=[-1]), D_b,
                                 torch.flip(z_b, dims=[-1]), bias_b)
        y_b = torch.flip(y_b, dims=[-1])
        return torch.cat([y_f, y_b], dim=1)  # (S, 2D, L)

    def make_inputs(dims, dirs, grad):
        s, d, n, l = dims
        xs = []
        for k in range(dirs):
            gen = torch.Generator(device=dev).manual_seed(10 + k)

            def r(*shape, scale=1.0):
                t = torch.randn(shape, dtype=torch.float32, device=dev, generator=gen)
                return t * scale if scale != 1.0 else t

            u, delta, z = r(s, d, l), r(s, d, l, scale=0.5), r(s, d, l)
            a = -torch.exp(r(d, n))
            b, c = r(s, n, l), r(s, n, l)
            d_skip, delta_bias = r(d), r(d, scale=0.5)
            xs += [u, delta, a, b, c, d_skip, z, delta_bias]
        dout = None
        if grad:
            for x in xs:
                x.requires_grad_()
            gen = torch.Generator(device=dev).manual_seed(9)
            dout = torch.randn((s, dirs * d, l), dtype=torch.float32, device=dev, generator=gen)
        return xs, dout

    def make_call(fn, xs, dout, backward):
        if not backward:
            def call():
                with torch.no_grad():
                    return fn(*xs)
        else:
            def call():
                o = fn(*xs)
                return torch.autograd.grad((o * dout).sum(), xs)
        return call

    def timed(call, i):
        flush.fill_(i & 0xFF)
        start.record()
        res = call()
        end.record()
        end.synchronize()
        del res
        return start.elapsed_time(end) / 1e3

    def select_backward_secs(dims, dirs):
        """A lower bound of one eager fwd+bwd call: autograd's backward of deltaA[:, :, i] and
        deltaB_u[:, :, i] (select) makes, per step and tensor, a zero gradient of the whole
        (S, D, L, N) tensor (then adds it into the accumulated one, not counted here). One such
        zero-fill is timed (after one untimed, so the allocator holds the block; median of 3) and
        multiplied by 2 * L * dirs. None when the tensor does not fit in memory."""
        s, d, n, l = dims
        shape = (s, d, l, n)
        g = None
        try:
            g = torch.zeros(shape, dtype=torch.float32, device=dev)
            g = None
            ts = []
            for _ in range(3):
                start.record()
                g = torch.zeros(shape, dtype=torch.float32, device=dev)
                end.record()
                end.synchronize()
                ts.append(start.elapsed_time(end) / 1e3)
                g = None
            return 2 * dirs * l * statistics.median(ts)
        except Exception as e:  # noqa: BLE001 - only OOM: the entry itself then runs (and is recorded)
            if not is_oom(torch, e):
                raise
            return None
        finally:
            del g
            gc.collect()
            torch.cuda.empty_cache()

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

    # All eager entries first (cheap, and they decide which compiles are skipped), then compiled.
    plan = []
    for use_compile in (False, True):
        for case, dims, dirs in cases:
            for backward in (False, True):
                plan.append((case, dims, dirs, backward, use_compile))

    slow = {}  # case -> why torch.compile is skipped for it
    for case, dims, dirs, backward, use_compile in plan:
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
        }
        label = f"peer {op} [{case}] torch {variant} on {name}"

        timeout = None
        if use_compile:
            why = slow.get(case)
            if why is None:
                left = args.total_budget - (time.monotonic() - t_script)
                if left < 30.0:
                    why = f"skipped: not attempted, --total-budget {args.total_budget:.0f} s spent"
                timeout = min(args.compile_timeout, left)
            if why is not None:
                print(f"{label}: {why}")
                rec["error"] = why
                emit(rec)
                continue

        if backward and not use_compile:
            est = select_backward_secs(dims, dirs)
            if est is not None and est > args.eager_bwd_limit:
                cause = (f"autograd of the per-step deltaA/deltaB_u select would take >= {est:.3g} s a call "
                         f"(a full (S, D, L, N) zero gradient and add per step, L={dims[3]}; "
                         f"--eager-bwd-limit {args.eager_bwd_limit:g} s)")
                print(f"{label}: skipped: {cause}")
                rec["error"] = f"skipped: {cause}"
                rec["est_secs"] = est
                emit(rec)
                slow.setdefault(case, f"skipped: eager {op} not run ({cause}); dynamo would unroll the same "
                                      f"loop over L={dims[3]}")
                continue

        gc.collect()
        if use_compile:
            import torch._dynamo  # noqa: F401 - reset() and the graph-break counters

            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        baseline = torch.cuda.memory_allocated(dev)

        xs = dout = fn = call = None
        phase = "inputs"
        compile_secs = None
        note = None
        try:
            xs, dout = make_inputs(dims, dirs, backward)
            fn = bidirectional_concat if dirs == 2 else one_direction
            if use_compile:
                fn = torch.compile(fn)
            call = make_call(fn, xs, dout, backward)
            if use_compile:
                phase = "compile"
                compile_secs = compile_warm(call, timeout)
            phase = "run"
            t1 = timed(call, 0)
            if not use_compile and t1 > args.slow_eager:
                times = [t1]
                note = f"one eager call took {t1:.1f} s > {args.slow_eager:.0f} s: that one call is the record"
                slow[case] = (f"skipped: eager {op} first call took {t1:.1f} s > {args.slow_eager:.0f} s "
                              f"(a Python loop over L={dims[3]}; dynamo would unroll it)")
                print(f"  {case}: {note}")
            else:
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
            msg = f"compile failed: {e} (--compile-timeout {args.compile_timeout:.0f} s, total budget left {timeout:.0f} s)"
            print(f"{label}: {msg}")
            rec["error"] = msg
            rec["peak_bytes"] = torch.cuda.max_memory_allocated(dev) - baseline
            emit(rec)
            del xs, dout, fn, call
            torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
            continue
        except Exception as e:  # noqa: BLE001 - OOM and compile failures are recorded; eager errors re-raise
            oom = is_oom(torch, e)
            if not oom and not use_compile:
                raise
            msg = first_line(e)
            rec["peak_bytes"] = torch.cuda.max_memory_allocated(dev) - baseline
            if oom:
                rec["error"] = "OOM"
                rec["message"] = msg
                print(f"{label}: OOM ({phase}): {msg}")
            else:
                what = "compile failed" if phase == "compile" else "compiled run failed"
                rec["error"] = f"{what}: {type(e).__name__}: {msg}"
                print(f"{label}: {rec['error']}")
            emit(rec)
            del xs, dout, fn, call
            if use_compile:
                torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
            continue

        secs = statistics.median(times)
        extra = f", compile {compile_secs:.1f} s" if compile_secs is not None else ""
        print(
            f"{label}: {secs * 1e3:.3f} ms (median of {len(times)}, min {min(times) * 1e3:.3f} ms), "
            f"peak {peak / (1 << 20):.2f} MiB{extra}"
        )
        rec.update({"secs": secs, "min_secs": min(times), "reps": len(times), "peak_bytes": peak})
        if compile_secs is not None:
            rec["compile_secs"] = compile_secs
            gb = graph_breaks()
            if gb is not None:
                rec["graph_breaks"] = gb
        if note is not None:
            rec["note"] = note
        emit(rec)
        del xs, dout, fn, call
        if use_compile:
            torch._dynamo.reset()
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
