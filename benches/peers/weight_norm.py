#!/usr/bin/env python3
"""PyTorch peer of benches/weight_norm.rs: torch.nn.utils.weight_norm (dim 0), forward and fwd+bwd, f32.

    python3 benches/peers/weight_norm.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                         [--cases CASE;...]

Cases (strings exactly as benches/weight_norm.rs names them): "v=512x256x7,f32" and
"v=512x512x16,f32" (the V3 TCN conv weights): v [C_out, C_in, K] and g [C_out] ~ N(0, 1) (made on
the device from a seeded generator; other random numbers than the Rust bench's). TF32 off (no
product here; set for uniformity, recorded in "tf32_api").

ops and variants (eager):
  op "weight_norm": w = g[:, None, None] * v / v.norm(dim=(1, 2), keepdim=True) under
  torch.no_grad() (what weight_norm's _weight_norm computes; snug's forward also writes the f32 row
  norms), variant "eager";
  op "weight_norm_backward": that forward AND its backward timed together (torch has no separate
  backward; snug's backward op is timed alone from its saved norms): v and g require grad,
  torch.autograd.grad(w, (v, g), grad_outputs=dw), variant "eager fwd+bwd".

Prints one line per (op, case, variant) and, with --json PATH, appends one JSON object per line
(the fields of _peerlib's harness: "source", "op", "case", "variant", "device", "secs",
"min_secs", "reps", "peak_bytes", "torch", "allow_tf32", "tf32_api"). An entry that runs out of
memory is recorded with "secs": null and "error": "OOM"; the script goes on. Without torch or a
CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

OP_FWD = "weight_norm"
OP_BWD = "weight_norm_backward"
# (case string exactly as benches/weight_norm.rs names it, shape of v)
CASES = [("v=512x256x7,f32", (512, 256, 7)), ("v=512x512x16,f32", (512, 512, 16))]
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

    def wn(v, g):
        dims = tuple(range(1, v.dim()))
        return g.view(-1, *([1] * len(dims))) * v / v.norm(dim=dims, keepdim=True)

    def make_call(shape, backward):
        gen = torch.Generator(device=dev).manual_seed(1)
        v, dw = (torch.randn(shape, dtype=torch.float32, device=dev, generator=gen) for _ in range(2))
        g = torch.randn((shape[0],), dtype=torch.float32, device=dev, generator=gen)
        if not backward:
            def call():
                with torch.no_grad():
                    return wn(v, g)
        else:
            xs = [t.requires_grad_() for t in (v, g)]

            def call():
                return torch.autograd.grad(wn(*xs), xs, grad_outputs=dw)
        return call

    for case, shape in cases:
        for backward in (False, True):
            rec = h.record(OP_BWD if backward else OP_FWD, case, "eager fwd+bwd" if backward else "eager",
                           allow_tf32=False, tf32_api=tf32_api)
            h.run_entry(rec, lambda: make_call(shape, backward))
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
