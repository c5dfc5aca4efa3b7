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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

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


def main():
    ap, args = _peerlib.parse_args(__doc__, extra=_peerlib.add_compile_args)
    torch = _peerlib.import_torch()
    if torch is None:
        return 0
    import torch.nn.functional as F
    cases = _peerlib.select_cases(ap, args.cases, CASES)
    h = _peerlib.Harness(torch, DEVICE, args)
    dev = h.dev
    tf32_api = _peerlib.set_tf32(torch, False)

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

    plan = [(uc, case, shape, axis, bwd)
            for uc in (False, True) for case, shape, axis in cases for bwd in (False, True)]
    for use_compile, case, shape, axis, backward in plan:
        op = OP_BWD if backward else OP_FWD
        variant = ("torch.compile" if use_compile else "eager") + (" fwd+bwd" if backward else "")
        rec = h.record(op, case, variant, allow_tf32=False, tf32_api=tf32_api)
        if axis == "channels":
            rec["note"] = CHANNELS_NOTE
        h.run_entry(rec, lambda: make_call(shape, axis, backward, use_compile), use_compile=use_compile,
                    long_oom=True)
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
