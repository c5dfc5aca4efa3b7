#!/usr/bin/env python3
"""PyTorch peer of benches/topk.rs: torch.topk along the last dim and the top-k mask, forward and fwd+bwd.

    python3 benches/peers/topk.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                  [--cases CASE;...]

Cases (strings exactly as benches/topk.rs names them): "rows=145920,n=19,k=3,f32",
"rows=145920,n=19,k=3,bf16" (seed 000: 7,680 matrices of 19x19, per-row top 3) and
"rows=65536,n=128,k=16,f32": x [rows, n] ~ N(0, 1) (made on the device from a seeded generator;
other random numbers than the Rust bench's). TF32 off (no product here; set for uniformity).

ops and variants (eager):
  op "topk": values, indices = torch.topk(x, k, dim=1) (sorted, largest) under no_grad, variant "eager";
  op "topk_backward": that forward AND its backward timed together (torch has no separate backward;
  snug's is timed alone from saved indices): torch.autograd.grad(values, x, grad_outputs=dvalues),
  variant "eager fwd+bwd";
  op "topk_mask": y = x * zeros_like(x).scatter_(1, topk(x, k).indices, 1) (the seed's mask) under
  no_grad, variant "eager";
  op "topk_mask_backward": that forward and its backward, torch.autograd.grad(y, x, grad_outputs=dy),
  variant "eager fwd+bwd".

Prints one line per (op, case, variant) and, with --json PATH, appends one JSON object per line
(the fields of _peerlib's harness). An entry that runs out of memory is recorded with "secs": null
and "error": "OOM"; the script goes on. Without torch or a CUDA device it prints
"skipped: no CUDA device" and exits 0.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

# (case string exactly as benches/topk.rs names it, rows, n, k, dtype name)
CASES = [("rows=145920,n=19,k=3,f32", (145920, 19, 3, "float32")),
         ("rows=145920,n=19,k=3,bf16", (145920, 19, 3, "bfloat16")),
         ("rows=65536,n=128,k=16,f32", (65536, 128, 16, "float32"))]
DEVICE = "cuda"


def main():
    ap, args = _peerlib.parse_args(__doc__)
    torch = _peerlib.import_torch()
    if torch is None:
        return 0
    cases = _peerlib.select_cases(ap, args.cases, CASES)
    h = _peerlib.Harness(torch, DEVICE, args)
    dev = h.dev
    tf32_api = _peerlib.set_tf32(torch, False)

    def mask_fwd(x, k):
        idx = torch.topk(x, k, dim=1).indices
        return x * torch.zeros_like(x).scatter_(1, idx, 1.0)

    def make_call(spec, op):
        rows, n, k, dt = spec
        dtype = getattr(torch, dt)
        gen = torch.Generator(device=dev).manual_seed(1)
        x = torch.randn((rows, n), device=dev, generator=gen).to(dtype)
        dv = torch.randn((rows, k), device=dev, generator=gen).to(dtype)
        dy = torch.randn((rows, n), device=dev, generator=gen).to(dtype)
        if op == "topk":
            def call():
                with torch.no_grad():
                    return torch.topk(x, k, dim=1)
        elif op == "topk_mask":
            def call():
                with torch.no_grad():
                    return mask_fwd(x, k)
        elif op == "topk_backward":
            xr = x.requires_grad_()

            def call():
                return torch.autograd.grad(torch.topk(xr, k, dim=1).values, xr, grad_outputs=dv)
        else:
            xr = x.requires_grad_()

            def call():
                return torch.autograd.grad(mask_fwd(xr, k), xr, grad_outputs=dy)
        return call

    for case, spec in cases:
        for op in ("topk", "topk_backward", "topk_mask", "topk_mask_backward"):
            bwd = op.endswith("_backward")
            rec = h.record(op, case, "eager fwd+bwd" if bwd else "eager", allow_tf32=False, tf32_api=tf32_api)
            h.run_entry(rec, lambda: make_call(spec, op))
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
