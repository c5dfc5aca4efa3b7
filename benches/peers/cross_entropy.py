#!/usr/bin/env python3
"""PyTorch peer of benches/cross_entropy.rs: softmax cross-entropy over GPT-2's vocabulary (seed 003's LM head), eager and compiled.

    python3 benches/peers/cross_entropy.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                           [--compile-timeout 300] [--total-budget 480]
                                           [--cases CASE;...]

Cases (strings exactly as benches/cross_entropy.rs names them), rows = B*T = 16,384, V = 50,257:
  "B=32,T=512,V=50257,{dtype},mean" for dtype "f32" and "bf16" (op "cross_entropy_in_place");
  "B=32,T=512,V=50257,d=64,chunk={chunk},{dtype},dW=f32,mean" for chunk 1024 and 4096 and dtype
  "f32" and "bf16" (op "linear_cross_entropy").
Inputs as the Rust bench fills them (from other random numbers, made on the device from a seeded
generator): logits ~ N(0, 4) of shape (rows, V); h ~ N(0, 1) of shape (rows, 64), W ~ N(0, 1/64)
of shape (V, 64); targets uniform in [0, V) (int64, as F.cross_entropy wants; snug's are i32); all
in the case's dtype. TF32 off (the f32 products use full f32, as snug's cuBLAS calls with
CUBLAS_COMPUTE_32F; recorded in "tf32_api").

ops and variants (forward AND backward timed together; snug computes the loss and the gradient in
one pass):
  op "cross_entropy_in_place": logits require grad, loss = F.cross_entropy(logits, targets,
  ignore_index=-100, label_smoothing=0.0) (reduction "mean"), the gradient by
  torch.autograd.grad(loss, [logits]); variants "eager fwd+bwd" and "torch.compile fwd+bwd" (the
  loss function compiled). snug overwrites the logits with their gradient; PyTorch keeps the
  logits, its log-softmax output for the backward and writes a separate gradient.
  op "linear_cross_entropy": the unchunked PyTorch head, h and W require grad, logits = h @ W.T
  (rows x V, materialised), loss = F.cross_entropy(logits, targets, ...), (dh, dW) by
  torch.autograd.grad(loss, [h, W]); variants "eager fwd+bwd" and "torch.compile fwd+bwd". PyTorch
  does not chunk: both chunk cases run the same computation (timed once per case string so the
  report can join them). dW is in W's dtype here (bf16 for the bf16 case; snug accumulates it in
  f32). "flops" = 3 * 2 * rows * V * d (the three products).
  torch.compile compiles the loss function (default mode); compile time is excluded (the compiling
  call and one more call run untimed, under --compile-timeout seconds; "compile_secs",
  "graph_breaks"). A compile that fails or does not finish in time is recorded as "secs": null with
  "error": "compile failed: ...", and the script goes on. All eager entries run first, then the
  compiled ones; a compile is not attempted (recorded with an "error") once the script has run
  --total-budget seconds, and its timeout is cut to what is left of that budget.

Timing: _peerlib's (a timed first call, warm-ups, the median of up to --reps calls each between two
CUDA events with L2 flushed before it). Peak memory (the point of the fused head): "peak_bytes" =
torch.cuda.max_memory_allocated() after the timed calls minus what was allocated before the entry's
tensors were made: the inputs, the rows x V logits, what autograd saves for the backward (the
log-softmax) and the rows x V gradient of the logits, against snug's one [chunk, V] buffer.

Accuracy (untimed, after the peak was read): "rel_err", |loss - loss_f64| / |loss_f64| for one more
call's loss, loss_f64 computed from the same inputs in float64 in chunks of 1,024 rows (so that the
check itself does not need 2 x rows x V float64).

Prints one line per (op, case, variant) and, with --json PATH, appends one JSON object per line
(_peerlib's fields, "allow_tf32", "tf32_api", "flops" for the head, "rel_err"). An entry that runs
out of memory is recorded with "secs": null and "error": "OOM"; the script goes on. Without torch
or a CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

OP_CE = "cross_entropy_in_place"
OP_HEAD = "linear_cross_entropy"
B, T, V, D = 32, 512, 50257, 64
ROWS = B * T
IGNORE_INDEX = -100
LABEL_SMOOTHING = 0.0
CHUNKS = [1024, 4096]
DTYPES = ["f32", "bf16"]
REF_CHUNK = 1024  # rows per float64 chunk of the accuracy check
# (op, case string exactly as benches/cross_entropy.rs names it, dtype)
CASES = [(OP_CE, f"B={B},T={T},V={V},{dt},mean", dt) for dt in DTYPES] + \
    [(OP_HEAD, f"B={B},T={T},V={V},d={D},chunk={chunk},{dt},dW=f32,mean", dt) for chunk in CHUNKS for dt in DTYPES]
# The device the entries run on. A CPU test harness (with a stand-in for torch.cuda) may point
# it at "cpu"; benches always run on "cuda".
DEVICE = "cuda"


def main():
    ap, args = _peerlib.parse_args(__doc__, extra=_peerlib.add_compile_args)
    torch = _peerlib.import_torch()
    if torch is None:
        return 0
    import torch.nn.functional as F
    cases = _peerlib.select_cases(ap, args.cases, CASES, key=lambda c: c[1])
    h = _peerlib.Harness(torch, DEVICE, args)
    dev = h.dev
    tf32_api = _peerlib.set_tf32(torch, False)

    def ce(logits, targets):
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, label_smoothing=LABEL_SMOOTHING)

    def head(hh, w, targets):
        return ce(hh @ w.T, targets)

    def loss_f64(logits_of, targets):
        """Mean cross-entropy in float64, REF_CHUNK rows at a time; logits_of(a, b) gives rows a..b."""
        total = torch.zeros((), dtype=torch.float64, device=dev)
        with torch.no_grad():
            for a in range(0, ROWS, REF_CHUNK):
                b = min(a + REF_CHUNK, ROWS)
                total += F.cross_entropy(logits_of(a, b), targets[a:b], ignore_index=IGNORE_INDEX,
                                         label_smoothing=LABEL_SMOOTHING, reduction="sum")
        return total / int((targets != IGNORE_INDEX).sum().item())

    def make_call(op, dt, use_compile):
        gen = torch.Generator(device=dev).manual_seed(1)
        dtype = torch.float32 if dt == "f32" else torch.bfloat16
        targets = torch.randint(0, V, (ROWS,), device=dev, generator=gen, dtype=torch.int64)
        if op == OP_CE:
            logits = (2.0 * torch.randn((ROWS, V), dtype=torch.float32, device=dev, generator=gen)).to(dtype)
            logits.requires_grad_()
            xs = [logits]
            fn = ce
            rows_f64 = lambda a, b: logits[a:b].detach().double()  # noqa: E731
        else:
            hh = torch.randn((ROWS, D), dtype=torch.float32, device=dev, generator=gen).to(dtype)
            w = (0.125 * torch.randn((V, D), dtype=torch.float32, device=dev, generator=gen)).to(dtype)
            xs = [hh.requires_grad_(), w.requires_grad_()]
            fn = head
            rows_f64 = lambda a, b: hh[a:b].detach().double() @ w.detach().double().T  # noqa: E731
        if use_compile:
            fn = torch.compile(fn)

        def call():
            loss = fn(*xs, targets)
            return (loss.detach(),) + tuple(torch.autograd.grad(loss, xs))

        def check(res):
            want = loss_f64(rows_f64, targets).item()  # after the peak was read
            return abs(res[0].double().item() - want) / abs(want)

        return call, check

    plan = [(uc, op, case, dt) for uc in (False, True) for op, case, dt in cases]
    for use_compile, op, case, dt in plan:
        variant = ("torch.compile" if use_compile else "eager") + " fwd+bwd"
        fields = dict(allow_tf32=False, tf32_api=tf32_api)
        if op == OP_HEAD:
            fields["flops"] = 3 * 2 * ROWS * V * D
        rec = h.record(op, case, variant, **fields)
        h.run_entry(rec, lambda: make_call(op, dt, use_compile), use_compile=use_compile,
                    err_fmt=", loss rel err {:.2e} vs f64")
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
