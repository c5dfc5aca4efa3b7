#!/usr/bin/env python3
"""PyTorch peer of benches/dml.rs: PixelCNN++'s discretized mixture of logistics, loss and sampler.

    python3 benches/peers/dml.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                 [--compile-timeout 300] [--total-budget 480]
                                 [--cases CASE;...]

Semantics (src/ops/dml.rs): params [B, 3K, L] = [logits | means | log_scales] along dim 1, one
channel, 2^bits bins on [-1, 1] (bin i at 2i/(2^bits - 1) - 1). Both functions are written the
way users write PixelCNN++'s one-channel code in PyTorch on a [B, C, T] layout (the form of
wavenet_vocoder / WaveRNN, ported from pixel-cnn), f32:
  loss: y_hat = params.transpose(1, 2) (B, L, 3K, a view); logit_probs, means = the first two
  K-slices; log_scales = clamp(third slice, min=-7); y = x.unsqueeze(-1).expand_as(means);
  centered_y = y - means; inv_stdv = exp(-log_scales); plus_in = inv_stdv * (centered_y + 1/(2^bits-1));
  cdf_plus = sigmoid(plus_in); min_in = inv_stdv * (centered_y - 1/(2^bits-1));
  cdf_min = sigmoid(min_in); log_cdf_plus = plus_in - softplus(plus_in);
  log_one_minus_cdf_min = -softplus(min_in); cdf_delta = cdf_plus - cdf_min;
  mid_in = inv_stdv * centered_y; log_pdf_mid = mid_in - log_scales - 2 softplus(mid_in); the
  branches as float masks: inner_inner_cond = (cdf_delta > 1e-5).float(), inner_inner_out =
  cond * log(clamp(cdf_delta, min=1e-12)) + (1 - cond) * (log_pdf_mid - log((2^bits - 1)/2)),
  inner_out from (y > 0.999).float() with log_one_minus_cdf_min, log_probs from (y < -0.999).float()
  with log_cdf_plus; log_probs = log_probs + log_softmax(logit_probs, -1); loss =
  -mean(log_sum_exp(log_probs)) over the B*L positions, log_sum_exp as PixelCNN++ writes it
  (max, then m + log(sum(exp(x - m)))). Every step makes a (B, L, K) tensor; autograd keeps 19 of
  them (f32) and two (B, L) int64 max indices for the backward (counted with saved_tensors_hooks,
  torch 2.15): about 1.6 GB at B=16, L=131072, K=10, where params and their gradient are 252 MB
  each.
  sampler (sample_from_discretized_mix_logistic, one channel): a component by Gumbel-max,
  argmax(logit_probs - log(-log(u))) with u ~ U(1e-5, 1 - 1e-5) of shape (B, L, K); one_hot of it;
  means and log_scales = sum(slice * one_hot, -1), log_scales clamped at -7; x = means +
  exp(log_scales) * (log(u') - log(1 - u')) with u' ~ U(1e-5, 1 - 1e-5) of shape (B, L);
  clamp(x, -1, 1); then quantised to the bin grid as snug's dml_sample does:
  2 * round((x + 1) / 2 * (2^bits - 1)) / (2^bits - 1) - 1 (round half to even), shape (B, L).
  The reference code's uniforms come from `logit_probs.data.new(size).uniform_(...)`; here
  torch.empty_like(...).uniform_(...) (the same draws' distribution; dynamo traces it), and
  F.one_hot(argmax, K).float() for its scatter into zeros.
Inputs (as the Rust bench fills them, from other random numbers): params ~ N(0, 1), f32, made on
the device from a seeded generator; targets x = 2i/255 - 1 (f32, shape (B, L)) for bins i drawn
uniformly from 0..255. TF32 off (no product here uses it; set as the other peers set it, through
torch.backends.cuda.matmul.fp32_precision where it exists, PyTorch >= 2.9, else allow_tf32; the
line records which in "tf32_api").

Cases (strings exactly as benches/dml.rs names them): "B=1,L=16000,K=6,bits=8,mean",
"B=1,L=16000,K=10,bits=8,mean", "B=1,L=131072,K=6,bits=8,mean", "B=1,L=131072,K=10,bits=8,mean",
"B=16,L=131072,K=6,bits=8,mean", "B=16,L=131072,K=10,bits=8,mean".

ops and variants:
  op "dml_loss": snug times the loss and its gradient in one pass; here forward AND backward are
  timed together: params requires grad, loss = the mean above, its gradient by
  torch.autograd.grad(loss, [params]); variants "eager fwd+bwd" and "torch.compile fwd+bwd". The
  line also records the loss value of one more (untimed) call as "loss" (eager and compiled
  should agree to about 1e-6 relative; snug's bench uses other random numbers). The eager line
  records "autograd_saved_bytes": what autograd keeps for the backward in one more forward (the
  distinct storages of the saved tensors, params themselves excluded; counted by
  torch.autograd.graph.saved_tensors_hooks, untimed, after the peak was read).
  op "dml_sample": the sampler under torch.no_grad(); variants "eager" and "torch.compile".
  torch.compile compiles the loss (or sampler) function (default mode); compile time is excluded
  (the compiling call and one more call run untimed, under --compile-timeout seconds; its wall time
  is recorded as "compile_secs", the graph breaks as "graph_breaks"). A compile that fails or does
  not finish in time is recorded as "secs": null with "error": "compile failed: ...", and the
  script goes on. All eager entries run first, then the compiled ones; a compile is not attempted
  (recorded with an "error") once the script has run --total-budget seconds, and its timeout is
  cut to what is left of that budget.

Timing: a first call (a warm-up, timed), then --warmup - 1 more warm-ups (none if they would not
fit in --budget) and reps = min(--reps, max(1, int(--budget / first_call_secs))) timed calls, each
between two CUDA events with L2 flushed before it (a write of a buffer twice the L2 size); the
median is reported. Peak memory: torch.cuda.max_memory_allocated() after the timed calls, minus
what was allocated when the peak was reset just before the entry's tensors were made (so it counts
params, the targets, the gradient and every intermediate autograd keeps; the L2-flush buffer, made
once, is not counted). snug's footprint for comparison: params + gradient + targets + loss + its
workspace (the bench's plan).

Prints one line per (op, case, variant) and, with --json PATH, appends one JSON object per line:
{"source": "torch", "op": ..., "case": ..., "variant": ..., "device": ..., "secs": ...,
"min_secs": ..., "reps": ..., "peak_bytes": ..., "torch": ..., "allow_tf32": false,
"tf32_api": ...} plus the fields named above. An entry that runs out of memory is recorded with
"secs": null, "error": "OOM", "message" (the allocator's line) and "peak_bytes" (the peak reached
before it failed); the script goes on.
Without torch or a CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import gc
import math
import statistics
import os
import sys
import time

OP_LOSS = "dml_loss"
OP_SAMPLE = "dml_sample"
LOG_SCALE_MIN = -7.0
# (case string exactly as benches/dml.rs names it, (B, L, K), bits)
CASES = [
    ("B=1,L=16000,K=6,bits=8,mean", (1, 16000, 6), 8),
    ("B=1,L=16000,K=10,bits=8,mean", (1, 16000, 10), 8),
    ("B=1,L=131072,K=6,bits=8,mean", (1, 131072, 6), 8),
    ("B=1,L=131072,K=10,bits=8,mean", (1, 131072, 10), 8),
    ("B=16,L=131072,K=6,bits=8,mean", (16, 131072, 6), 8),
    ("B=16,L=131072,K=10,bits=8,mean", (16, 131072, 10), 8),
]
# The device the entries run on. A CPU test harness (with a stand-in for torch.cuda) may point
# it at "cpu"; benches always run on "cuda".
DEVICE = "cuda"


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

CompileTimeout = _peerlib.CompileTimeout
is_oom, first_line, oom_line, set_tf32 = _peerlib.is_oom, _peerlib.first_line, _peerlib.oom_line, _peerlib.set_tf32


def dml_fns(torch, F):
    """Returns (dml_loss, dml_sample): PixelCNN++'s one-channel loss and sampler on [B, 3K, L]."""

    def log_sum_exp(x):
        """Log-sum-exp over the last axis, as PixelCNN++ writes it."""
        axis = len(x.size()) - 1
        m, _ = torch.max(x, dim=axis)
        m2, _ = torch.max(x, dim=axis, keepdim=True)
        return m + torch.log(torch.sum(torch.exp(x - m2), dim=axis))

    def dml_loss(y_hat, y, num_classes=256, log_scale_min=LOG_SCALE_MIN, reduce=True):
        """y_hat [B, 3K, L] params, y [B, L] targets in [-1, 1]; the mean negative log-likelihood
        (reduce) or the per-position one [B, L]."""
        nr_mix = y_hat.size(1) // 3
        y_hat = y_hat.transpose(1, 2)  # (B, L, 3K)
        logit_probs = y_hat[:, :, :nr_mix]
        means = y_hat[:, :, nr_mix:2 * nr_mix]
        log_scales = torch.clamp(y_hat[:, :, 2 * nr_mix:3 * nr_mix], min=log_scale_min)
        y = y.unsqueeze(-1).expand_as(means)  # (B, L) -> (B, L, K)

        centered_y = y - means
        inv_stdv = torch.exp(-log_scales)
        plus_in = inv_stdv * (centered_y + 1.0 / (num_classes - 1))
        cdf_plus = torch.sigmoid(plus_in)
        min_in = inv_stdv * (centered_y - 1.0 / (num_classes - 1))
        cdf_min = torch.sigmoid(min_in)
        # log probability of the first bin (everything below its upper edge)
        log_cdf_plus = plus_in - F.softplus(plus_in)
        # log probability of the last bin (everything above its lower edge)
        log_one_minus_cdf_min = -F.softplus(min_in)
        # probability of the other bins
        cdf_delta = cdf_plus - cdf_min
        mid_in = inv_stdv * centered_y
        # log density at the bin's centre, for bins of vanishing mass
        log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)

        inner_inner_cond = (cdf_delta > 1e-5).float()
        inner_inner_out = inner_inner_cond * torch.log(torch.clamp(cdf_delta, min=1e-12)) + \
            (1.0 - inner_inner_cond) * (log_pdf_mid - math.log((num_classes - 1) / 2))
        inner_cond = (y > 0.999).float()
        inner_out = inner_cond * log_one_minus_cdf_min + (1.0 - inner_cond) * inner_inner_out
        cond = (y < -0.999).float()
        log_probs = cond * log_cdf_plus + (1.0 - cond) * inner_out

        log_probs = log_probs + F.log_softmax(logit_probs, -1)
        if reduce:
            return -torch.mean(log_sum_exp(log_probs))
        return -log_sum_exp(log_probs)

    def dml_sample(y, num_classes=256, log_scale_min=LOG_SCALE_MIN):
        """y [B, 3K, L] params; one sample per position on the bin grid, [B, L]."""
        nr_mix = y.size(1) // 3
        y = y.transpose(1, 2)  # (B, L, 3K)
        logit_probs = y[:, :, :nr_mix]
        # the component by Gumbel-max
        temp = torch.empty_like(logit_probs).uniform_(1e-5, 1.0 - 1e-5)
        temp = logit_probs - torch.log(-torch.log(temp))
        _, argmax = temp.max(dim=-1)
        one_hot = F.one_hot(argmax, nr_mix).float()  # (B, L) -> (B, L, K)
        # its logistic's parameters
        means = torch.sum(y[:, :, nr_mix:2 * nr_mix] * one_hot, dim=-1)
        log_scales = torch.clamp(torch.sum(y[:, :, 2 * nr_mix:3 * nr_mix] * one_hot, dim=-1), min=log_scale_min)
        # a logistic sample, clipped to [-1, 1]
        u = torch.empty_like(means).uniform_(1e-5, 1.0 - 1e-5)
        x = means + torch.exp(log_scales) * (torch.log(u) - torch.log(1.0 - u))
        x = torch.clamp(torch.clamp(x, min=-1.0), max=1.0)
        # onto the bin grid (snug's dml_sample does the same)
        bins = num_classes - 1
        return 2.0 * torch.round((x + 1.0) * 0.5 * bins) / bins - 1.0

    return dml_loss, dml_sample


def main():
    ap, args = _peerlib.parse_args(__doc__, extra=_peerlib.add_compile_args)
    torch = _peerlib.import_torch()
    if torch is None:
        return 0
    import torch.nn.functional as F
    cases = _peerlib.select_cases(ap, args.cases, CASES)

    h = _peerlib.Harness(torch, DEVICE, args)
    t_script, dev, name = h.t_script, h.dev, h.name
    tf32_api = set_tf32(torch, False)
    emit = h.emit

    dml_loss, dml_sample = dml_fns(torch, F)

    def make_call(op, dims, bits, use_compile):
        """Inputs of one entry and the call that runs it (the inputs live in the closure), plus the
        params (to tell them from autograd's saved tensors) and the eager function."""
        b, l, k = dims
        num_classes = 1 << bits
        gen = torch.Generator(device=dev).manual_seed(1)
        params = torch.randn((b, 3 * k, l), dtype=torch.float32, device=dev, generator=gen)
        if op == OP_SAMPLE:
            def fn(p):
                return dml_sample(p, num_classes=num_classes)
            cfn = torch.compile(fn) if use_compile else fn

            def call():
                with torch.no_grad():
                    return cfn(params)
            return call, None
        gen = torch.Generator(device=dev).manual_seed(2)
        bins = torch.randint(0, num_classes, (b, l), device=dev, generator=gen)
        x = (2.0 * bins.float() / (num_classes - 1) - 1.0).contiguous()
        del bins
        params.requires_grad_()

        def fn(p, t):
            return dml_loss(p, t, num_classes=num_classes)
        cfn = torch.compile(fn) if use_compile else fn

        def call():
            loss = cfn(params, x)
            (g,) = torch.autograd.grad(loss, [params])
            return loss.detach(), g

        def saved_bytes():
            """Bytes autograd keeps for the backward of one eager forward (distinct storages, params
            excluded)."""
            seen = {}

            def pack(t):
                try:
                    st = t.untyped_storage()
                    if st.data_ptr() != params.untyped_storage().data_ptr():
                        seen[st.data_ptr()] = st.nbytes()
                except Exception:  # noqa: BLE001 - informational only
                    pass
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = fn(params, x)
            del loss
            return sum(seen.values())

        return call, saved_bytes

    timed, measure = h.timed, h.time_call

    def compile_warm(call, timeout):
        return _peerlib.compile_warm(torch, dev, call, timeout)

    def graph_breaks():
        return _peerlib.graph_breaks(torch)

    def fresh():
        """Frees what earlier entries left and resets the peak; returns the baseline."""
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        return torch.cuda.memory_allocated(dev)

    # All eager entries first, then the compiled ones.
    plan = []
    for use_compile in (False, True):
        for case, dims, bits in cases:
            for op in (OP_LOSS, OP_SAMPLE):
                plan.append((case, dims, bits, op, use_compile))

    for case, dims, bits, op, use_compile in plan:
        variant = ("torch.compile" if use_compile else "eager") + (" fwd+bwd" if op == OP_LOSS else "")
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
        label = f"peer {op} [{case}] torch {variant} on {name}"

        timeout = left = None
        if use_compile:
            left = args.total_budget - (time.monotonic() - t_script)
            if left < 30.0:
                why = f"skipped: not attempted, --total-budget {args.total_budget:.0f} s spent"
                print(f"{label}: {why}")
                rec["error"] = why
                emit(rec)
                continue
            timeout = min(args.compile_timeout, left)
            gc.collect()
            import torch._dynamo  # noqa: F401 - reset() and the graph-break counters

            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
        baseline = fresh()

        call = saved_bytes = None
        phase = "inputs"
        compile_secs = None
        try:
            call, saved_bytes = make_call(op, dims, bits, use_compile)
            if use_compile:
                phase = "compile"
                compile_secs = compile_warm(call, timeout)
            phase = "run"
            times = measure(call)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev) - baseline
        except CompileTimeout as e:
            msg = f"compile failed: {e} (--compile-timeout {args.compile_timeout:.0f} s, total budget left {left:.0f} s)"
            print(f"{label}: {msg}")
            rec["error"] = msg
            rec["peak_bytes"] = torch.cuda.max_memory_allocated(dev) - baseline
            emit(rec)
            del call, saved_bytes
            torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
            continue
        except Exception as e:  # noqa: BLE001 - OOM and compile failures are recorded; eager errors re-raise
            oom = is_oom(torch, e)
            if not oom and not use_compile:
                raise
            msg = oom_line(e) if oom else first_line(e)
            rec["peak_bytes"] = torch.cuda.max_memory_allocated(dev) - baseline
            if oom:
                rec["error"] = "OOM"
                rec["message"] = msg
                print(f"{label}: OOM ({phase}): {msg}, peak {rec['peak_bytes'] / (1 << 20):.2f} MiB")
            else:
                what = "compiled run failed" if phase == "run" else "compile failed"
                rec["error"] = f"{what}: {type(e).__name__}: {msg}"
                print(f"{label}: {rec['error']}")
            emit(rec)
            del call, saved_bytes
            if use_compile:
                torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
            continue

        secs = statistics.median(times)
        rec.update({"secs": secs, "min_secs": min(times), "reps": len(times), "peak_bytes": peak})
        extra = ""
        if compile_secs is not None:
            rec["compile_secs"] = compile_secs
            gb = graph_breaks()
            if gb is not None:
                rec["graph_breaks"] = gb
            extra += f", compile {compile_secs:.1f} s"
        # Informational, untimed and after the peak was read: the loss value, autograd's keep.
        if op == OP_LOSS:
            try:
                res = call()
                rec["loss"] = float(res[0])
                del res
                extra += f", loss {rec['loss']:.6f}"
                if not use_compile:
                    rec["autograd_saved_bytes"] = saved_bytes()
                    extra += f", autograd keeps {rec['autograd_saved_bytes'] / (1 << 20):.2f} MiB"
            except Exception as e:  # noqa: BLE001 - informational only
                if not is_oom(torch, e):
                    raise
                rec["check_error"] = f"OOM: {oom_line(e)}"
        print(
            f"{label}: {secs * 1e3:.3f} ms (median of {len(times)}, min {min(times) * 1e3:.3f} ms), "
            f"peak {peak / (1 << 20):.2f} MiB{extra}"
        )
        emit(rec)
        del call, saved_bytes
        if use_compile:
            torch._dynamo.reset()
    set_tf32(torch, False)
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
