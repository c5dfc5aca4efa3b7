#!/usr/bin/env python3
"""PyTorch peer of benches/conv1d.rs: nn.Conv1d (cuDNN) forward and its backward (dx, dW, db), f32.

    python3 benches/peers/conv1d.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                    [--cases CASE;...]

Cases (strings exactly as benches/conv1d.rs names them; the seed-000 V3 TCN, B = 8, L = 15,360),
x [B, C_in, L], W [C_out, C_in, k], b [C_out]:
  "V3 TCN 19->64,k=7,d=1,B=8,L=15360", "V3 TCN 256->512,k=7,d=8,B=8,L=15360",
  "V3 TCN 512->64,k=7,d=16,B=8,L=15360", "V3 TCN 256->512,k=7,d=128,B=8,L=15360"
    (k 7, dilation d, padding='same', stride 1);
  "V3 1x1 512->512,B=8,L=15360" (k 1);
  "V3 patch 512->512,k=16,s=16,B=8,L=15360->960" (k 16, stride 16, no padding: L_out 960).
Inputs as the Rust bench fills them (from other random numbers): x ~ N(0, 1),
W ~ N(0, 1) / sqrt(C_in * k), b ~ 0.1 N(0, 1), dy ~ N(0, 1) of shape [B, C_out, L_out]; f32, made
on the device from a seeded generator; every variant's inputs are made afresh.

ops and variants:
  op "conv1d": y = F.conv1d(x, W, b, stride, padding, dilation) under torch.no_grad();
  variant "F.conv1d".
  op "conv1d_backward": forward AND backward timed together (snug's backward op is timed alone;
  torch has no separate backward without its forward): x, W and b require grad,
  torch.autograd.grad(F.conv1d(x, W, b, ...), (x, W, b), grad_outputs=dy) (what snug's backward
  writes: dx, dW, db); variant "F.conv1d fwd+bwd".
  Each variant runs with TF32 off (the comparison: snug computes true f32) and then, for
  information only, with TF32 allowed: its name then ends in " TF32 (info)". TF32 is set for both
  cuDNN's convolutions and cuBLAS's products: torch.backends.cudnn.conv.fp32_precision and
  torch.backends.cuda.matmul.fp32_precision ("ieee" / "tf32") where those attributes exist
  (PyTorch >= 2.9 objects to mixing them with the legacy flags), else
  torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32 (False / True; note
  that cuDNN's legacy flag defaults to True). The line records which ("tf32_api",
  "cudnn_tf32_api"). torch.backends.cudnn.benchmark is left at its default (recorded as
  "cudnn_benchmark"): cuDNN's heuristics pick the algorithm, as in a stock training script.
  After the timed calls, one more (untimed) call's result is compared with f64 on the device
  (the forward: sequence 0 of the batch; the backward: dx, dW, db over the whole batch):
  "rel_err" = max |result - f64| / max |f64| (the largest over dx, dW, db for the backward; about
  1e-6 in f32, about 1e-3 with TF32: it shows whether the setting took effect).

Timing: a first call (a warm-up, timed), then --warmup - 1 more warm-ups (none if they would not
fit in --budget) and reps = min(--reps, max(1, int(--budget / first_call_secs))) timed calls, each
between two CUDA events with L2 flushed before it (a write of a buffer twice the L2 size); the
median is reported. Peak memory: torch.cuda.max_memory_allocated() after the timed calls, minus
what was allocated when the peak was reset just before the entry's tensors were made (so it
counts the inputs, the outputs, cuDNN's workspace and torch's temporaries; the L2-flush buffer,
made once, is not counted, nor is what cuDNN and cuBLAS keep from the small convolution run once
before the first entry).

Prints one line per (op, case, variant), with the achieved TFLOP/s (2*B*C_out*L_out*C_in*k FLOPs
per convolution: one forward, two more in the backward), and, with --json PATH, appends one JSON
object per line: {"source": "torch", "op": ..., "case": ..., "variant": ..., "device": ...,
"secs": ..., "min_secs": ..., "reps": ..., "peak_bytes": ..., "torch": ..., "allow_tf32": ...,
"tf32_api": ..., "cudnn_tf32_api": ..., "cudnn_benchmark": ..., "flops": ..., "rel_err": ...}.
An entry that runs out of memory is recorded with "secs": null, "error": "OOM" and the
allocator's message; the script goes on.
Without torch or a CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

OP_FWD = "conv1d"
OP_BWD = "conv1d_backward"
B = 8
L = 15_360
# (case string exactly as benches/conv1d.rs names it, C_in, C_out, k, stride, dilation, padding)
CASES = [
    ("V3 TCN 19->64,k=7,d=1,B=8,L=15360", 19, 64, 7, 1, 1, "same"),
    ("V3 TCN 256->512,k=7,d=8,B=8,L=15360", 256, 512, 7, 1, 8, "same"),
    ("V3 TCN 512->64,k=7,d=16,B=8,L=15360", 512, 64, 7, 1, 16, "same"),
    ("V3 TCN 256->512,k=7,d=128,B=8,L=15360", 256, 512, 7, 1, 128, "same"),
    ("V3 1x1 512->512,B=8,L=15360", 512, 512, 1, 1, 1, 0),
    ("V3 patch 512->512,k=16,s=16,B=8,L=15360->960", 512, 512, 16, 16, 1, 0),
]
TF32_SUFFIX = " TF32 (info)"
# The device the entries run on. A CPU test harness (with a stand-in for torch.cuda) may point
# it at "cpu"; benches always run on "cuda".
DEVICE = "cuda"


def set_cudnn_tf32(torch, on):
    """Allows or forbids TF32 in cuDNN's f32 convolutions; returns the name of the setting used:
    torch.backends.cudnn.conv.fp32_precision ("tf32" / "ieee") where it exists (PyTorch >= 2.9),
    else torch.backends.cudnn.allow_tf32 (whose default is True)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "tf32" if on else "ieee"
        return "torch.backends.cudnn.conv.fp32_precision"
    torch.backends.cudnn.allow_tf32 = on
    return "torch.backends.cudnn.allow_tf32"


def l_out(k, stride, dilation, padding):
    """PyTorch's output length for L_in = L."""
    if padding == "same":
        return L
    return (L + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def main():
    ap, args = _peerlib.parse_args(__doc__)
    torch = _peerlib.import_torch()
    if torch is None:
        return 0
    import torch.nn.functional as F
    cases = _peerlib.select_cases(ap, args.cases, CASES)
    h = _peerlib.Harness(torch, DEVICE, args)
    dev = h.dev

    # cuDNN's and cuBLAS's handles are made by the first convolution: make them before any baseline.
    _peerlib.set_tf32(torch, False)
    set_cudnn_tf32(torch, False)
    e = torch.ones((2, 4, 16), dtype=torch.float32, device=dev, requires_grad=True)
    ew = torch.ones((4, 4, 3), dtype=torch.float32, device=dev, requires_grad=True)
    warm = torch.autograd.grad(F.conv1d(e, ew, padding="same"), (e, ew), grad_outputs=torch.ones_like(e))
    del e, ew, warm
    torch.cuda.synchronize(dev)
    rel = _peerlib.rel_err

    def make_call(backward, cin, cout, k, stride, dilation, padding):
        gen = torch.Generator(device=dev).manual_seed(1)
        kw = {"stride": stride, "padding": padding, "dilation": dilation}

        def r(*shape, scale=1.0):
            t = torch.randn(shape, dtype=torch.float32, device=dev, generator=gen)
            return t.mul_(scale) if scale != 1.0 else t

        lo = l_out(k, stride, dilation, padding)
        x, w = r(B, cin, L), r(cout, cin, k, scale=(cin * k) ** -0.5)
        b, dy = r(cout, scale=0.1), r(B, cout, lo)
        if not backward:
            def call():
                with torch.no_grad():
                    return F.conv1d(x, w, b, **kw)

            def check(y):
                with torch.no_grad():
                    want = F.conv1d(x[:1].double(), w.double(), b.double(), **kw)
                return rel(y[:1], want)

            return call, check
        xs = [t.requires_grad_() for t in (x, w, b)]

        def call():
            return torch.autograd.grad(F.conv1d(*xs, **kw), xs, grad_outputs=dy)

        def check(grads):
            ds = [t.detach().double().requires_grad_() for t in xs]
            want = torch.autograd.grad(F.conv1d(*ds, **kw), ds, grad_outputs=dy.double())
            return max(rel(a, c) for a, c in zip(grads, want))

        return call, check

    bench_flag = bool(torch.backends.cudnn.benchmark)
    for case, cin, cout, k, stride, dilation, padding in cases:
        flops = 2.0 * B * cout * l_out(k, stride, dilation, padding) * cin * k
        for backward in (False, True):
            op, method = (OP_BWD, "F.conv1d fwd+bwd") if backward else (OP_FWD, "F.conv1d")
            for tf32 in (False, True):
                variant = method + (TF32_SUFFIX if tf32 else "")
                api = _peerlib.set_tf32(torch, tf32)
                cudnn_api = set_cudnn_tf32(torch, tf32)
                rec = h.record(op, case, variant, allow_tf32=tf32, tf32_api=api, cudnn_tf32_api=cudnn_api,
                               cudnn_benchmark=bench_flag, flops=flops * (3 if backward else 1))
                h.run_entry(rec, lambda: make_call(backward, cin, cout, k, stride, dilation, padding))
    _peerlib.set_tf32(torch, False)
    set_cudnn_tf32(torch, False)
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
