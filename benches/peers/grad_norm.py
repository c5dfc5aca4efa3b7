#!/usr/bin/env python3
"""PyTorch peer of benches/grad_norm.rs: the global L2 norm of 48 gradient tensors, as clip_grad_norm_ computes it.

    python3 benches/peers/grad_norm.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                       [--cases CASE;...]

Case (string exactly as benches/grad_norm.rs names it): "tensors=48,elements=<total>": 48 f32
tensors, tensor i of 512 elements when i % 3 == 0, else 512 * 1216 + i (a model's mix of big
weight matrices and small biases and norms; 19,931,904 elements in all, 80 MB). Inputs as the Rust bench
fills them (from other random numbers): every tensor ~ N(0, 1); made on the device from a seeded
generator. TF32 off (no product here; set for uniformity, recorded in "tf32_api").

op "grad_norm", variants: the norm computation of torch.nn.utils.clip_grad_norm_ (its
get_total_norm, norm_type 2, error_if_nonfinite False; the scaling of the gradients that
clip_grad_norm_ does next is not part of it), written out on the 48 tensors (one device and
dtype, so one group):
  "clip_grad_norm_ (foreach)": torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gs, 2.0)),
  2.0) (its path when foreach is None or True on CUDA);
  "clip_grad_norm_ (per-tensor)": torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g,
  2.0) for g in gs]), 2.0) (its path with foreach=False).
  A variant whose function this torch lacks is recorded with "secs": null and an "error".
  After the timed calls, one more (untimed) call's result is compared with the f64 norm:
  "rel_err" = |result - f64| / f64.

Timing: a first call (a warm-up, timed), then --warmup - 1 more warm-ups (none if they would not
fit in --budget) and reps = min(--reps, max(1, int(--budget / first_call_secs))) timed calls, each
between two CUDA events with L2 flushed before it (a write of a buffer twice the L2 size); the
median is reported. Peak memory: torch.cuda.max_memory_allocated() after the timed calls, minus
what was allocated when the peak was reset just before the entry's tensors were made (so it
counts the 48 inputs, the per-tensor norms and the result; the L2-flush buffer, made once, is not
counted).

Prints one line per (op, case, variant) and, with --json PATH, appends one JSON object per line:
{"source": "torch", "op": ..., "case": ..., "variant": ..., "device": ..., "secs": ...,
"min_secs": ..., "reps": ..., "peak_bytes": ..., "torch": ..., "allow_tf32": false,
"tf32_api": ..., "rel_err": ...}. An entry that runs out of memory is recorded with "secs": null,
"error": "OOM" and the allocator's message; the script goes on.
Without torch or a CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

OP = "grad_norm"
LENS = [512 if i % 3 == 0 else 512 * 1216 + i for i in range(48)]
# (case string exactly as benches/grad_norm.rs names it, tensor lengths)
CASES = [(f"tensors={len(LENS)},elements={sum(LENS)}", LENS)]
VARIANTS = ["clip_grad_norm_ (foreach)", "clip_grad_norm_ (per-tensor)"]
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
    vnorm = torch.linalg.vector_norm

    def make_call(variant, lens):
        gen = torch.Generator(device=dev).manual_seed(1)
        gs = [torch.randn((n,), dtype=torch.float32, device=dev, generator=gen) for n in lens]
        if variant == "clip_grad_norm_ (foreach)":
            def call():
                with torch.no_grad():
                    return vnorm(torch.stack(torch._foreach_norm(gs, 2.0)), 2.0)
        elif variant == "clip_grad_norm_ (per-tensor)":
            def call():
                with torch.no_grad():
                    return vnorm(torch.stack([vnorm(g, 2.0) for g in gs]), 2.0)
        else:
            raise ValueError(f"unknown variant {variant!r}")

        def check(res):
            want = math.sqrt(sum(g.double().square().sum().item() for g in gs))
            return abs(res.item() - want) / want

        return call, check

    for case, lens in cases:
        for variant in VARIANTS:
            rec = h.record(OP, case, variant, allow_tf32=False, tf32_api=tf32_api)
            if "foreach" in variant and not hasattr(torch, "_foreach_norm"):
                rec["error"] = f"skipped: torch {torch.__version__} has no torch._foreach_norm"
                print(f"{h.label(rec)}: {rec['error']}")
                h.emit(rec)
                continue
            h.run_entry(rec, lambda: make_call(variant, lens), err_fmt=", err {:.2e} of the f64 norm",
                        check_oom_ok=False)
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
