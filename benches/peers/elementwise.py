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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

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


def main():
    ap, args = _peerlib.parse_args(__doc__)
    torch = _peerlib.import_torch()
    if torch is None:
        return 0
    import torch.nn.functional as F
    cases = _peerlib.select_cases(ap, args.cases, CASES)
    h = _peerlib.Harness(torch, DEVICE, args)
    dev = h.dev
    tf32_api = _peerlib.set_tf32(torch, False)

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

    for op, case, variant, make in entries:
        rec = h.record(op, case, variant, allow_tf32=False, tf32_api=tf32_api)
        h.run_entry(rec, make)
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
