#!/usr/bin/env python3
"""PyTorch peer of benches/cosine_sim.rs: the cosine similarity of all 171 node pairs per (b, t), clamped
at +-0.99, forward and fwd+bwd.

    python3 benches/peers/cosine_sim.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                        [--cases CASE;...]

Cases (strings exactly as benches/cosine_sim.rs names them): "x=8x19x960x64,f32" and
"x=8x19x960x64,bf16" (seed 000's electrode vectors): x [B, N, T, D] ~ N(0, 1) (made on the device
from a seeded generator; other random numbers than the Rust bench's), output y [B, 171, T] in
row-major upper-triangle pair order, eps 1e-8. TF32 off (the matmul variant runs in full f32).

ops: "cosine_sim" (under no_grad) and "cosine_sim_backward" (that forward AND its backward timed
together, torch.autograd.grad(y, x, grad_outputs=dy); snug's backward is timed alone). Two
variants each (eager); compare snug with the faster:
  "eager normalise+matmul+triu": u = x.transpose(1, 2) / ||.||.clamp_min(eps) ([B, T, N, D]), the Gram
  matrix u @ u^T, the upper-triangle gather [..., i, j], clamp, transposed to [B, P, T] (contiguous);
  "eager cosine_similarity pairs": F.cosine_similarity(x[:, i], x[:, j], dim=-1, eps) over the index-
  selected pairs ([B, P, T, D] each), clamp.
Adds "+bwd" to the variant for the backward op. Prints one line per (op, case, variant) and, with
--json PATH, appends one JSON object per line (_peerlib's fields). OOM entries are recorded with
"secs": null and "error": "OOM". Without torch or a CUDA device it prints "skipped: no CUDA device"
and exits 0.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

# (case string exactly as benches/cosine_sim.rs names it, (B, N, T, D), dtype name)
CASES = [("x=8x19x960x64,f32", ((8, 19, 960, 64), "float32")),
         ("x=8x19x960x64,bf16", ((8, 19, 960, 64), "bfloat16"))]
DEVICE = "cuda"
CLAMP = 0.99
EPS = 1e-8


def main():
    ap, args = _peerlib.parse_args(__doc__)
    torch = _peerlib.import_torch()
    if torch is None:
        return 0
    cases = _peerlib.select_cases(ap, args.cases, CASES)
    h = _peerlib.Harness(torch, DEVICE, args)
    dev = h.dev
    tf32_api = _peerlib.set_tf32(torch, False)
    F = torch.nn.functional

    def via_matmul(x, ii, jj):
        xt = x.transpose(1, 2)  # [B, T, N, D]
        u = xt / xt.norm(dim=-1, keepdim=True).clamp_min(EPS)
        g = u @ u.transpose(-1, -2)  # [B, T, N, N]
        return g[..., ii, jj].clamp(-CLAMP, CLAMP).transpose(1, 2).contiguous()  # [B, P, T]

    def via_pairs(x, ii, jj):
        return F.cosine_similarity(x[:, ii], x[:, jj], dim=-1, eps=EPS).clamp(-CLAMP, CLAMP)  # [B, P, T]

    def make_call(spec, fn, backward):
        (b, n, t, d), dt = spec
        dtype = getattr(torch, dt)
        gen = torch.Generator(device=dev).manual_seed(1)
        x = torch.randn((b, n, t, d), device=dev, generator=gen).to(dtype)
        ii, jj = torch.triu_indices(n, n, offset=1, device=dev)
        dy = torch.randn((b, ii.numel(), t), device=dev, generator=gen).to(dtype)
        if not backward:
            def call():
                with torch.no_grad():
                    return fn(x, ii, jj)
        else:
            xr = x.requires_grad_()

            def call():
                return torch.autograd.grad(fn(xr, ii, jj), xr, grad_outputs=dy)
        return call

    for case, spec in cases:
        for backward in (False, True):
            for vname, fn in (("eager normalise+matmul+triu", via_matmul), ("eager cosine_similarity pairs", via_pairs)):
                rec = h.record("cosine_sim_backward" if backward else "cosine_sim", case,
                               vname + (" +bwd" if backward else ""), allow_tf32=False, tf32_api=tf32_api)
                h.run_entry(rec, lambda: make_call(spec, fn, backward))
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
