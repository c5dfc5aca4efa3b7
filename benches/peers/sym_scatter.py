#!/usr/bin/env python3
"""PyTorch peer of benches/sym_scatter.rs: symmetric 19 x 19 matrices from their 171 strict upper-triangle
pairs and back, forward and fwd+bwd, f32 and bf16.

    python3 benches/peers/sym_scatter.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                         [--cases CASE;...]

Cases (strings exactly as benches/sym_scatter.rs names them): "pairs=8x960x171,n19,f32" and
"pairs=8x960x171,n19,bf16" — seed 000's adjacency stage: pairs [8, 960, 171] <-> a [8, 960, 19, 19]
(8 * 960 = 7,680 matrices). pairs and da ~ N(0, 1) made on the device from a seeded generator (other
random numbers than the Rust bench's). TF32 off (no product here; recorded in "tf32_api").

The pair order is torch.triu_indices(19, 19, offset=1) (row-major), the same as snug's
Triangle::Strict. ops and variants (eager):
  op "sym_scatter": a = zeros(.., 19, 19); a[..., iu, ju] = pairs; a[..., ju, iu] = pairs (index_put
      twice; the diagonal stays 0), variant "eager index_put"; and a = pairs[..., idx] with a
      precomputed 19 x 19 gather map into pairs padded with one zero (the diagonal), variant
      "eager gather";
  op "sym_scatter_backward": that forward AND its backward timed together (pairs requires grad,
      torch.autograd.grad(a, pairs, grad_outputs=da)), variants "... fwd+bwd";
  op "triu_pairs": pairs = a[..., iu, ju] (advanced indexing), variant "eager index";
  op "triu_pairs_backward": that forward and its backward together, "eager index fwd+bwd".
Forward entries run under torch.no_grad().

Prints one line per (op, case, variant) and, with --json PATH, appends one JSON object per line (the
fields of _peerlib's harness). An entry that runs out of memory is recorded with "secs": null and
"error": "OOM"; the script goes on. Without torch or a CUDA device it prints "skipped: no CUDA device"
and exits 0.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

# (case string exactly as benches/sym_scatter.rs names it, leading dims, n, dtype name)
CASES = [
    ("pairs=8x960x171,n19,f32", (8, 960), 19, "float32"),
    ("pairs=8x960x171,n19,bf16", (8, 960), 19, "bfloat16"),
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

    def make_call(lead, n, dtype, variant, backward):
        gen = torch.Generator(device=dev).manual_seed(1)
        dt = getattr(torch, dtype)
        iu, ju = torch.triu_indices(n, n, offset=1, device=dev)
        npairs = iu.numel()
        pairs = torch.randn((*lead, npairs), dtype=dt, device=dev, generator=gen)
        a_in = torch.randn((*lead, n, n), dtype=dt, device=dev, generator=gen)
        # The gather map: a[i, j] = padded[idx[i, j]], padded = pairs with a trailing zero (the diagonal).
        idx = torch.full((n, n), npairs, dtype=torch.long, device=dev)
        idx[iu, ju] = torch.arange(npairs, device=dev)
        idx[ju, iu] = torch.arange(npairs, device=dev)
        idx = idx.reshape(-1)

        if variant == "index_put":
            def op(p):
                a = p.new_zeros((*lead, n, n))
                a[..., iu, ju] = p
                a[..., ju, iu] = p
                return a
            src, grad_out = pairs, a_in
        elif variant == "gather":
            def op(p):
                padded = torch.cat([p, p.new_zeros((*lead, 1))], dim=-1)
                return padded[..., idx].reshape(*lead, n, n)
            src, grad_out = pairs, a_in
        else:  # "index": triu_pairs
            def op(a):
                return a[..., iu, ju]
            src, grad_out = a_in, pairs
        if not backward:
            def call():
                with torch.no_grad():
                    return op(src)
        else:
            src.requires_grad_()

            def call():
                return torch.autograd.grad(op(src), src, grad_outputs=grad_out)
        return call

    for case, lead, n, dtype in cases:
        for base, variants in (("sym_scatter", ("index_put", "gather")), ("triu_pairs", ("index",))):
            for variant in variants:
                for backward in (False, True):
                    rec = h.record(base + ("_backward" if backward else ""), case,
                                   f"eager {variant}" + (" fwd+bwd" if backward else ""), allow_tf32=False, tf32_api=tf32_api)
                    h.run_entry(rec, lambda: make_call(lead, n, dtype, variant, backward))
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
