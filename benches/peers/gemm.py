#!/usr/bin/env python3
"""PyTorch peer of benches/gemm.rs: the BiMamba in_proj product and its weight gradient, f32.

    python3 benches/peers/gemm.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                  [--cases CASE;...]

Cases (strings exactly as benches/gemm.rs names them), W [2D, dm], x [S, L, dm], xz [S, 2D, L]:
  "node in_proj,S=152,dm=64,2D=256,L=960", "edge in_proj,S=1368,dm=16,2D=64,L=960".
Inputs as the Rust bench fills them (from other random numbers): W ~ 0.1 N(0, 1), x ~ N(0, 1),
xz ~ N(0, 1), f32, made on the device from a seeded generator; nothing requires grad.

ops and variants (every variant's inputs are made afresh; outputs are allocated by each call from
torch's caching allocator, where snug writes into buffers of its plan):
  op "gemm": xz[s] = W @ x[s]^T for every s, a contiguous [S, 2D, L] result.
    "torch.matmul": torch.matmul(W, x.transpose(1, 2)), as a user writes it. PyTorch 2.x folds
    the batch (seen in its op trace, torch 2.15): one mm of x viewed [S*L, dm] by W^T, a
    [S*L, 2D] result, then a transposing copy into the contiguous [S, 2D, L] (older versions may
    broadcast W and run bmm instead).
    "torch.bmm": torch.bmm(W.expand(S, -1, -1), x.transpose(1, 2)): one batched product writing
    [S, 2D, L] directly, no copy (snug's algorithm; x's transpose is read transposed by cuBLAS).
  op "gemm_sum_batches": dW = sum_s xz[s] @ x[s], a [2D, dm] result (xz plays the upstream
  gradient dxz).
    "torch.matmul+sum": torch.matmul(xz, x).sum(0): the S per-sequence products [S, 2D, dm]
    (bmm), then a sum over S (snug's algorithm).
    "autograd of torch.matmul": what autograd computes for W's gradient of the "torch.matmul"
    forward above, written out: torch.mm(xz.transpose(1, 2).reshape(S*L, 2D).t(),
    x.reshape(S*L, dm)), i.e. a transposing copy of dxz into [S, L, 2D], then one mm with inner
    dimension S*L (the same ops and operand shapes as torch.autograd.grad's trace on torch 2.15;
    the forward graph itself is not built, so the peak counts no forward output).
    "torch.einsum": torch.einsum("sdl,sle->de", xz, x), as a user writes it (torch contracts s
    and l together: a permuting copy of xz, then one product with inner dimension S*L).
  The first variant of each op also runs, for information only, with TF32 allowed: its name then
  ends in " TF32 (info)". All others run with TF32 off (the comparison: snug computes true f32).
  TF32 is set through torch.backends.cuda.matmul.fp32_precision ("ieee" / "tf32") where that
  attribute exists (PyTorch >= 2.9 objects to mixing it with the legacy flag), else through
  torch.backends.cuda.matmul.allow_tf32 (False / True); the line records which ("tf32_api").
  After the timed calls, one more (untimed) call's result is compared with an f64 product on the
  device (for "gemm", sequences 0 and S-1): "rel_err" = max |result - f64| / max |f64| (about
  1e-6 in f32, about 1e-3 with TF32: it shows whether the setting took effect).

Timing: a first call (a warm-up, timed), then --warmup - 1 more warm-ups (none if they would not
fit in --budget) and reps = min(--reps, max(1, int(--budget / first_call_secs))) timed calls, each
between two CUDA events with L2 flushed before it (a write of a buffer twice the L2 size); the
median is reported. Peak memory: torch.cuda.max_memory_allocated() after the timed calls, minus
what was allocated when the peak was reset just before the entry's tensors were made (so it
counts the inputs, the output and torch's temporaries; the L2-flush buffer, made once, is not
counted, nor is what cuBLAS keeps from the small product run once before the first entry, e.g.
its workspace).

Prints one line per (op, case, variant), with the achieved TFLOP/s (2*S*2D*dm*L FLOPs per call),
and, with --json PATH, appends one JSON object per line: {"source": "torch", "op": ...,
"case": ..., "variant": ..., "device": ..., "secs": ..., "min_secs": ..., "reps": ...,
"peak_bytes": ..., "torch": ..., "allow_tf32": ..., "tf32_api": ..., "flops": ...,
"rel_err": ...}. An entry that runs out of memory is recorded with "secs": null, "error": "OOM"
and the allocator's message; the script goes on.
Without torch or a CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

OP_GEMM = "gemm"
OP_SUM = "gemm_sum_batches"
# (case string exactly as benches/gemm.rs names it, S, dm, 2D, L)
CASES = [
    ("node in_proj,S=152,dm=64,2D=256,L=960", 152, 64, 256, 960),
    ("edge in_proj,S=1368,dm=16,2D=64,L=960", 1368, 16, 64, 960),
]
# op -> methods (variant names); the first of each also runs with TF32 allowed, for information
METHODS = {
    OP_GEMM: ["torch.matmul", "torch.bmm"],
    OP_SUM: ["torch.matmul+sum", "autograd of torch.matmul", "torch.einsum"],
}
TF32_SUFFIX = " TF32 (info)"
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

    # cuBLAS's handle and workspace are made by the first product: make them before any baseline.
    _peerlib.set_tf32(torch, False)
    e = torch.ones((2, 8, 8), dtype=torch.float32, device=dev)
    warm = (torch.matmul(e[0], e), torch.matmul(e, e).sum(0))
    del e, warm
    torch.cuda.synchronize(dev)

    def make_call(op, method, s, dm, d2, l):
        gen = torch.Generator(device=dev).manual_seed(1)

        def r(*shape, scale=1.0):
            t = torch.randn(shape, dtype=torch.float32, device=dev, generator=gen)
            return t.mul_(scale) if scale != 1.0 else t

        if op == OP_GEMM:
            w, x = r(d2, dm, scale=0.1), r(s, l, dm)
            if method == "torch.matmul":
                def call():
                    return torch.matmul(w, x.transpose(1, 2))  # [S, 2D, L]
            elif method == "torch.bmm":
                def call():
                    return torch.bmm(w.expand(s, -1, -1), x.transpose(1, 2))  # [S, 2D, L]
            else:
                raise ValueError(f"unknown method {method!r}")

            def check(res):
                err = ref = 0.0
                for i in sorted({0, s - 1}):
                    want = w.double() @ x[i].double().t()
                    err = max(err, (res[i].double() - want).abs().max().item())
                    ref = max(ref, want.abs().max().item())
                return err / ref if ref > 0 else err

            return call, check
        xz, x = r(s, d2, l), r(s, l, dm)
        if method == "torch.matmul+sum":
            def call():
                return torch.matmul(xz, x).sum(0)  # [S, 2D, dm] -> [2D, dm]
        elif method == "autograd of torch.matmul":
            def call():
                return torch.mm(xz.transpose(1, 2).reshape(s * l, d2).t(), x.reshape(s * l, dm))
        elif method == "torch.einsum":
            def call():
                return torch.einsum("sdl,sle->de", xz, x)
        else:
            raise ValueError(f"unknown method {method!r}")

        def check(res):
            want = torch.zeros((d2, dm), dtype=torch.float64, device=dev)
            for i in range(0, s, 64):  # f64 copies of 64 sequences at a time
                want += torch.einsum("sdl,sle->de", xz[i:i + 64].double(), x[i:i + 64].double())
            ref = want.abs().max().item()
            err = (res.double() - want).abs().max().item()
            return err / ref if ref > 0 else err

        return call, check

    for case, s, dm, d2, l in cases:
        flops = 2.0 * s * d2 * dm * l
        for op in (OP_GEMM, OP_SUM):
            for k, method in enumerate(METHODS[op]):
                for tf32 in (False, True) if k == 0 else (False,):
                    variant = method + (TF32_SUFFIX if tf32 else "")
                    api = _peerlib.set_tf32(torch, tf32)
                    rec = h.record(op, case, variant, allow_tf32=tf32, tf32_api=api, flops=flops)
                    h.run_entry(rec, lambda: make_call(op, method, s, dm, d2, l))
    _peerlib.set_tf32(torch, False)
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
