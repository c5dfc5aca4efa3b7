#!/usr/bin/env python3
"""PyTorch peer of benches/repeat_interleave.rs: nearest upsampling x16 and repeat_interleave x16, forward
and fwd+bwd, f32 and bf16.

    python3 benches/peers/repeat_interleave.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                               [--cases CASE;...]

Cases (strings exactly as benches/repeat_interleave.rs names them), seed 000's shapes:
  "x=8x19x960,up16,f32", "x=8x19x960,up16,bf16": x [8, 19, 960] -> y [8, 19, 15360] (the head's
      nearest upsample along L), ops "upsample_nearest" / "upsample_nearest_backward";
  "x=8x960x64,axis1,r16,f32", "x=8x960x64,axis1,r16,bf16": x [8, 960, 64] -> y [8, 15360, 64]
      (per-timestep features onto a 16x finer time grid), ops "repeat_interleave" /
      "repeat_interleave_backward".
x and dy ~ N(0, 1) made on the device from a seeded generator (other random numbers than the Rust
bench's). TF32 off (no product here; set for uniformity, recorded in "tf32_api").

Variants (eager):
  "eager repeat_interleave": torch.repeat_interleave(x, 16, dim) (every case);
  "eager interpolate": F.interpolate(x, scale_factor=16, mode="nearest") (the upsample cases; exactly
      repeat_interleave on the last dim for a power-of-two factor);
  forward under torch.no_grad(); the *_backward ops time that forward AND its backward together
  (torch has no separate backward; snug's backward is timed alone): x requires grad,
  torch.autograd.grad(y, x, grad_outputs=dy), variant name + " fwd+bwd".

Prints one line per (op, case, variant) and, with --json PATH, appends one JSON object per line
(the fields of _peerlib's harness). An entry that runs out of memory is recorded with "secs": null
and "error": "OOM"; the script goes on. Without torch or a CUDA device it prints
"skipped: no CUDA device" and exits 0.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

# (case string exactly as benches/repeat_interleave.rs names it, shape of x, axis, r, dtype name)
CASES = [
    ("x=8x19x960,up16,f32", (8, 19, 960), 2, 16, "float32"),
    ("x=8x19x960,up16,bf16", (8, 19, 960), 2, 16, "bfloat16"),
    ("x=8x960x64,axis1,r16,f32", (8, 960, 64), 1, 16, "float32"),
    ("x=8x960x64,axis1,r16,bf16", (8, 960, 64), 1, 16, "bfloat16"),
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
    tf32_api = _peerlib.set_tf32(torch, False)

    def make_call(shape, axis, r, dtype, variant, backward):
        gen = torch.Generator(device=dev).manual_seed(1)
        dt = getattr(torch, dtype)
        x = torch.randn(shape, dtype=dt, device=dev, generator=gen)
        long = list(shape)
        long[axis] *= r
        dy = torch.randn(long, dtype=dt, device=dev, generator=gen)
        if variant == "interpolate":
            def op(t):
                return F.interpolate(t, scale_factor=r, mode="nearest")
        else:
            def op(t):
                return torch.repeat_interleave(t, r, dim=axis)
        if not backward:
            def call():
                with torch.no_grad():
                    return op(x)
        else:
            x.requires_grad_()

            def call():
                return torch.autograd.grad(op(x), x, grad_outputs=dy)
        return call

    for case, shape, axis, r, dtype in cases:
        upsample = axis == len(shape) - 1
        base = "upsample_nearest" if upsample else "repeat_interleave"
        for variant in (["interpolate", "repeat_interleave"] if upsample else ["repeat_interleave"]):
            for backward in (False, True):
                rec = h.record(base + ("_backward" if backward else ""), case,
                               f"eager {variant}" + (" fwd+bwd" if backward else ""), allow_tf32=False, tf32_api=tf32_api)
                h.run_entry(rec, lambda: make_call(shape, axis, r, dtype, variant, backward))
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
