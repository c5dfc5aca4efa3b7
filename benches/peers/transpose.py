#!/usr/bin/env python3
"""PyTorch peer of benches/transpose.rs: x.transpose(axis, axis + 1).contiguous(), forward, f32 and bf16.

    python3 benches/peers/transpose.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10] [--cases CASE;...]

Cases (strings exactly as benches/transpose.rs names them), the seeds' layout switches:
  "x=8x512x960,axis1,f32", "x=8x512x960,axis1,bf16": seed 000's TCN output [B, C, L] -> [B, L, C];
  "x=8x171x960,axis1,f32": cosine_sim's [B, P, T] -> [B, T, P];
  "x=8x19x960x64,axis1,f32": [8, 19, 960, 64] -> [8, 960, 19, 64] (inner 64).
x ~ N(0, 1) made on the device from a seeded generator (other random numbers than the Rust bench's; the op
only moves them). TF32 off (no product here; set for uniformity, recorded in "tf32_api").

Variant (eager): "eager transpose.contiguous": x.transpose(axis, axis + 1).contiguous() under torch.no_grad()
(op "transpose"). The backward is the same op on the swapped shape (snug times only the forward; so does this).

Prints one line per (op, case, variant) and, with --json PATH, appends one JSON object per line (the fields of
_peerlib's harness). An entry that runs out of memory is recorded with "secs": null and "error": "OOM"; the
script goes on. Without torch or a CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

# (case string exactly as benches/transpose.rs names it, shape of x, axis, dtype name)
CASES = [
    ("x=8x512x960,axis1,f32", (8, 512, 960), 1, "float32"),
    ("x=8x512x960,axis1,bf16", (8, 512, 960), 1, "bfloat16"),
    ("x=8x171x960,axis1,f32", (8, 171, 960), 1, "float32"),
    ("x=8x19x960x64,axis1,f32", (8, 19, 960, 64), 1, "float32"),
]
# The device the entries run on. A CPU test harness (with a stand-in for torch.cuda) may point
# it at "cpu"; benches always run on "cuda".
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

    def make_call(shape, axis, dtype):
        gen = torch.Generator(device=dev).manual_seed(1)
        x = torch.randn(shape, dtype=getattr(torch, dtype), device=dev, generator=gen)

        def call():
            with torch.no_grad():
                return x.transpose(axis, axis + 1).contiguous()
        return call

    for case, shape, axis, dtype in cases:
        rec = h.record("transpose", case, "eager transpose.contiguous", allow_tf32=False, tf32_api=tf32_api)
        h.run_entry(rec, lambda: make_call(shape, axis, dtype))
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
