#!/usr/bin/env python3
"""PyTorch peer of benches/dropout.rs: dropout at a V3 TCN activation, f32.

    python3 benches/peers/dropout.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                     [--cases CASE;...]

One case, "p=0.15,n=8x512x15360" (the string benches/dropout.rs uses): x ~ N(0, 1) of
8 * 512 * 15360 f32 (252 MB), made on the device from a seeded generator.

Variants (op "dropout", training mode, p = 0.15):
  "F.dropout": y = F.dropout(x, 0.15, training=True) under torch.no_grad() — what snug's
    `dropout` computes (a fresh mask from the RNG, survivors scaled by 1 / (1 - p)); PyTorch's
    kernel also draws its Philox numbers in the pass, like snug's counter-based mask.
  "F.dropout fwd+bwd (mask saved)": forward and backward through autograd with x requiring grad:
    PyTorch saves a bool mask (1 B/element, 63 MB here) for the backward; snug saves nothing and
    recomputes the mask. For information; snug's backward is timed by its own bench only when it
    has one.

Timing, peak memory, JSON lines and OOM records: benches/peers/_peerlib.py (CUDA events, L2
flushed, median of the timed calls). Without torch or a CUDA device it prints "skipped: no CUDA
device" and exits 0.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

N = 8 * 512 * 15_360
P = 0.15
CASE = "p=0.15,n=8x512x15360"
DEVICE = "cuda"


def main():
    ap, args = _peerlib.parse_args(__doc__)
    torch = _peerlib.import_torch()
    if torch is None:
        return 0
    import torch.nn.functional as F
    cases = _peerlib.select_cases(ap, args.cases, [CASE])
    h = _peerlib.Harness(torch, DEVICE, args)
    dev = h.dev
    tf32_api = _peerlib.set_tf32(torch, False)

    def inputs(grad=False):
        gen = torch.Generator(device=dev).manual_seed(1)
        x = torch.randn((N,), dtype=torch.float32, device=dev, generator=gen)
        dy = torch.randn((N,), dtype=torch.float32, device=dev, generator=gen)
        return x.requires_grad_(grad), dy

    def make_fwd():
        x, _ = inputs()

        def call():
            with torch.no_grad():
                return F.dropout(x, P, training=True)
        return call

    def make_fwd_bwd():
        x, dy = inputs(grad=True)
        return lambda: torch.autograd.grad(F.dropout(x, P, training=True), (x,), grad_outputs=dy)

    for case in cases:
        for variant, make in [("F.dropout", make_fwd), ("F.dropout fwd+bwd (mask saved)", make_fwd_bwd)]:
            rec = h.record("dropout", case, variant, allow_tf32=False, tf32_api=tf32_api)
            h.run_entry(rec, make)
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
