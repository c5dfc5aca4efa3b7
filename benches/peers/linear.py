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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

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


def main():
    ap, args = _peerlib.parse_args(__doc__)
    torch = _peerlib.import_torch()
    if torch is None:
        return 0
    import torch.nn.functional as F
    cases = _peerlib.select_cases(ap, args.cases, CASES)
    h = _peerlib.Harness(torch, DEVICE, args)
    dev = h.dev

    # cuBLAS's handle and workspace are made by the first products: make them before any baseline.
    tf32_api = _peerlib.set_tf32(torch, False)
    e = torch.ones((8, 8), dtype=torch.float32, device=dev, requires_grad=True)
    warm = torch.autograd.grad(F.linear(e, e, e[0]), (e,), grad_outputs=torch.ones_like(e))
    del e, warm
    torch.cuda.synchronize(dev)
    rel = _peerlib.rel_err

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

    for case, rows, n_in, n_out in cases:
        for backward in (False, True):
            op, variant = (OP_BWD, "F.linear fwd+bwd") if backward else (OP_FWD, "F.linear")
            flops = 2.0 * rows * n_in * n_out * (3 if backward else 1)
            rec = h.record(op, case, variant, allow_tf32=False, tf32_api=tf32_api, flops=flops)
            h.run_entry(rec, lambda: make_call(backward, rows, n_in, n_out))
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
