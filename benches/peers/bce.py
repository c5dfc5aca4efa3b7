#!/usr/bin/env python3
"""PyTorch peer of benches/bce.rs: focal BCE (torchvision's sigmoid_focal_loss) and plain BCE with logits, eager and compiled.

    python3 benches/peers/bce.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                 [--compile-timeout 300] [--total-budget 480]
                                 [--cases CASE;...]

Cases (strings exactly as benches/bce.rs names them): "n={size},{dtype},{loss}" for size "8x15360"
(seed 000's head logits, 122,880 elements) and "16x2^20" (16,777,216), dtype "f32" and "bf16", loss
"focal a=0.5 g=2 mean" and "plain mean". Inputs as the Rust bench fills them (from other random
numbers): logits ~ N(0, 4) and hard targets (1 with probability 0.1), both of shape (n,) in the
case's dtype, made on the device from a seeded generator. TF32 off (no product here; set for
uniformity, recorded in "tf32_api").

The losses, written here (torchvision may be absent), in the case's dtype as users run them:
  focal (torchvision.ops.sigmoid_focal_loss, alpha 0.5, gamma 2, reduction "mean"):
    p = sigmoid(z); ce = F.binary_cross_entropy_with_logits(z, y, reduction="none");
    p_t = p * y + (1 - p) * (1 - y); loss = ce * (1 - p_t) ** gamma;
    loss = (alpha * y + (1 - alpha) * (1 - y)) * loss; loss.mean()
  plain (gamma 0, no alpha): F.binary_cross_entropy_with_logits(z, y, reduction="mean").

ops and variants:
  op "bce_loss": the loss alone under torch.no_grad(); variants "eager" and "torch.compile".
  op "bce_loss_grad": forward AND backward timed together, the gradient w.r.t. the logits by
  torch.autograd.grad(loss, [z]) (snug writes the loss and this gradient in one pass); variants
  "eager fwd+bwd" and "torch.compile fwd+bwd". (snug's "bce_backward", the scale of the gradient by
  the upstream gradient, has no torch counterpart.)
  torch.compile compiles the loss function (default mode); compile time is excluded (the compiling
  call and one more call run untimed, under --compile-timeout seconds; its wall time is recorded as
  "compile_secs"). A compile that fails or does not finish in time is recorded as "secs": null with
  "error": "compile failed: ...", and the script goes on. All eager entries run first, then the
  compiled ones; a compile is not attempted (recorded with an "error") once the script has run
  --total-budget seconds, and its timeout is cut to what is left of that budget.

Timing: _peerlib's (a timed first call, warm-ups, the median of up to --reps calls each between two
CUDA events with L2 flushed before it). Peak memory: torch.cuda.max_memory_allocated() after the
timed calls minus what was allocated before the entry's tensors were made (inputs, gradient and
torch's temporaries: the focal formula's eager intermediates are n-sized tensors each).

Accuracy (untimed, after the peak was read): "rel_err", the max error of one more call's loss (or
gradient) relative to the max |value| of the same formula evaluated in float64 on the same inputs.

Prints one line per (op, case, variant) and, with --json PATH, appends one JSON object per line
(_peerlib's fields, "rel_err"). An entry that
runs out of memory is recorded with "secs": null and "error": "OOM"; the script goes on. Without
torch or a CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peerlib  # noqa: E402 - the shared harness, next to this file

OP_FWD = "bce_loss"
OP_GRAD = "bce_loss_grad"
ALPHA, GAMMA = 0.5, 2.0
SIZES = [("8x15360", 8 * 15360), ("16x2^20", 16 << 20)]
DTYPES = ["f32", "bf16"]
LOSSES = ["focal a=0.5 g=2 mean", "plain mean"]
# (case string exactly as benches/bce.rs names it, n, dtype, loss)
CASES = [(f"n={label},{dt},{loss}", n, dt, loss) for label, n in SIZES for dt in DTYPES for loss in LOSSES]
# The device the entries run on. A CPU test harness (with a stand-in for torch.cuda) may point
# it at "cpu"; benches always run on "cuda".
DEVICE = "cuda"


def main():
    ap, args = _peerlib.parse_args(__doc__, extra=_peerlib.add_compile_args)
    torch = _peerlib.import_torch()
    if torch is None:
        return 0
    import torch.nn.functional as F
    cases = _peerlib.select_cases(ap, args.cases, CASES)
    h = _peerlib.Harness(torch, DEVICE, args)
    dev = h.dev
    tf32_api = _peerlib.set_tf32(torch, False)

    def focal(z, y):
        p = torch.sigmoid(z)
        ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        loss = ce * ((1 - p_t) ** GAMMA)
        loss = (ALPHA * y + (1 - ALPHA) * (1 - y)) * loss
        return loss.mean()

    def plain(z, y):
        return F.binary_cross_entropy_with_logits(z, y, reduction="mean")

    def make_call(n, dt, loss, backward, use_compile):
        gen = torch.Generator(device=dev).manual_seed(1)
        dtype = torch.float32 if dt == "f32" else torch.bfloat16
        z = (2.0 * torch.randn((n,), dtype=torch.float32, device=dev, generator=gen)).to(dtype)
        y = (torch.rand((n,), dtype=torch.float32, device=dev, generator=gen) < 0.1).to(dtype)
        fn = focal if loss.startswith("focal") else plain
        if use_compile:
            fn = torch.compile(fn)
        ref = focal if loss.startswith("focal") else plain

        def check(res):
            z64 = z.detach().double().requires_grad_(backward)
            want = ref(z64, y.double())
            if backward:
                want = torch.autograd.grad(want, [z64])[0]
                got = res[0].double()
            else:
                got = res.double()
            return _peerlib.rel_err(got, want.detach())

        if not backward:
            def call():
                with torch.no_grad():
                    return fn(z, y)
        else:
            z.requires_grad_()

            def call():
                return torch.autograd.grad(fn(z, y), [z])
        return call, check

    plan = [(uc, case, n, dt, loss, bwd) for uc in (False, True) for case, n, dt, loss in cases for bwd in (False, True)]
    for use_compile, case, n, dt, loss, backward in plan:
        op = OP_GRAD if backward else OP_FWD
        variant = ("torch.compile" if use_compile else "eager") + (" fwd+bwd" if backward else "")
        rec = h.record(op, case, variant, allow_tf32=False, tf32_api=tf32_api)
        h.run_entry(rec, lambda: make_call(n, dt, loss, backward, use_compile), use_compile=use_compile)
    h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
