#!/usr/bin/env python3
"""PyTorch peer of benches/local_attn.rs: 2D neighbourhood attention (seed 001's LocalGraphAttention core).

    python3 benches/peers/local_attn.py [--json PATH] [--reps 20] [--warmup 3] [--budget 10]
                                        [--compile-timeout 300] [--total-budget 480]
                                        [--memory-cap-gib 0] [--cases CASE;...]

Semantics (src/ops/local_attn.rs): q, k, v [B, C, H, W] with C = heads·d (channel head·d + c, the
output of a 1×1 convolution); each pixel attends over the K×K keys of its window with a true
softmax, scale 1/sqrt(d). "zeropad": the seed's F.pad([K//2]*4) + F.unfold, keys outside the map
are zero vectors that still take part in the softmax (logit 0, value 0). "shift": NATTEN's window
clamped inside the map, starting at clamp(y - K//2, 0, H - K) (likewise x): always K² real keys.
Inputs: q, k, v ~ N(0, 1), f32, made on the device from a seeded generator (other random numbers
than the Rust bench's); for the backward a fixed dout ~ N(0, 1). TF32 off for matmuls (the
einsums) and convolutions (set through the fp32_precision attributes where they exist, PyTorch
>= 2.9, else the allow_tf32 flags; the line records which in "tf32_api").

Cases (strings exactly as benches/local_attn.rs names them):
  "seed,B=4,C=256,heads=4,d=64,256x256,K=7,zeropad", "B=4,C=64,heads=4,d=16,256x256,K=7,zeropad",
  "B=4,C=128,heads=4,d=32,256x256,K=7,zeropad", "seed,B=4,C=256,heads=4,d=64,256x256,K=7,shift".

Variants (zeropad cases: all five; the shift case: "shifted views" and its torch.compile):
  "unfold (seed)": the seed's attention core as the seed wrote it (seeds/001):
    k_unfold = F.unfold(F.pad(k, [pad]*4, mode='constant'), K), likewise v (B, C·K², H·W each),
    viewed (B, heads, d, K², H·W); scores = einsum('bhdn,bhdkn->bhkn', q, k_unfold) / sqrt(d);
    softmax over K²; out = einsum('bhkn,bhdkn->bhdn', attn, v_unfold) as [B, C, H, W]. Each unfold
    tensor is B·C·K²·H·W·4 bytes (12.25 GiB at the seed size; recorded as "unfold_bytes_each" on
    every unfold line), and each einsum makes a permuted copy of its unfold tensor for bmm. When it
    runs out of memory at the case's size, that line is "secs": null, "error": "OOM", "message"
    (the allocator's line), "attempted_bytes" (parsed from its "Tried to allocate X GiB", rounded as
    the allocator prints it) and "peak_bytes" (reached before it failed). Then the largest size
    that fits is searched (B halved down to 1, then H and W halved with B = 1) and timed there,
    recorded separately under variant "unfold (seed) at largest fitting B/H/W" with the CASE STRING
    OF THAT SIZE (e.g. "B=2,C=256,heads=4,d=64,256x256,K=7,zeropad", so the report never divides
    its time by snug's time at another size), "seed_case" (the case it stands for), "fit"
    ({"B", "H", "W"}), "work_fraction" (B·H·W of the fit over the case's) and "tried" (the sizes
    that ran out of memory). When the case's size fits, there is no such line (it is the largest).
    --memory-cap-gib N caps this process's allocator at N GiB (set_per_process_memory_fraction;
    32 emulates the seed's V100) for every entry; the lines then carry "memory_cap_bytes".
  "shifted views": a memory-lean PyTorch version without unfold, as a torch.autograd.Function:
    the forward loops over the K² offsets, takes each offset's keys and values for every pixel
    (zeropad: slices of ONE F.pad'ed copy of k and of v, no copy per offset; shift: a gather through
    the offset's clamped index map, index_select over the flattened map) and keeps online-softmax
    statistics (running max m, sum l, accumulator acc; rescaled per offset), so its memory is
    O(B·C·H·W); it saves out and the log-sum-exp. The backward (written out, like a flash-attention
    backward) recomputes each offset's probabilities from the saved log-sum-exp:
    D = rowsum(dout ∘ out), ds = p (dout·v_j − D) / sqrt(d), dq += ds k_j, and dk, dv are
    scattered back (zeropad: added into slices of padded gradients; shift: index_add_ through the
    same index map). Autograd through the plain loop would keep every offset's accumulator
    (K²·B·C·H·W floats), which is what this avoids.
  "depthwise-conv replacement (seed fix)": the core of the layer the seed replaced it with
    (seeds/001): qkv [B, 3C, H, W] (a 1×1 conv's output in the seed; random here) → depthwise K×K
    conv over the 3C channels (padding K//2, no bias; weight [3C, 1, K, K] ~ N(0, 1)/K) → q, k, v =
    chunk(3) → attn = sigmoid((q * k).sum over head_dim / sqrt(d)) → out = attn * v. IT COMPUTES
    SOMETHING ELSE: a channel-wise sigmoid gate of conv-mixed features, not a softmax over a
    neighbourhood; its time and memory are for reference only (what the seed ran instead).
    zeropad cases only.
  "shifted views torch.compile": "shifted views" through torch.compile (default mode; dynamo traces
    the autograd.Function and unrolls the K² loop). Compile time is excluded (the compiling call and
    one more call run untimed, under --compile-timeout seconds; its wall time is recorded as
    "compile_secs"). A compile that fails or does not finish in time is recorded as "secs": null
    with "error": "compile failed: ...", and the script goes on. All eager entries run first, then
    the compiled ones, the two seed cases' first; a compile is not attempted (recorded with an
    "error") once the script has run --total-budget seconds, and its timeout is cut to what is
    left of that budget. On a 2-core CPU one compile took 45-215 s, so with the defaults the later
    cases' compiles may be skipped on a GPU too; give --total-budget more to have them all.

ops: "local_attn": forward only, under torch.no_grad(). "local_attn_backward": forward AND
backward timed together (snug's backward op is timed alone; torch has no separate backward
without its forward), the inputs require grad, loss = (out * dout).sum(), gradients of every input
(q, k, v; for the depthwise replacement qkv and the conv weight) by torch.autograd.grad; the
variant names end in " fwd+bwd".

Timing: a first call (a warm-up, timed), then --warmup - 1 more warm-ups (none if they would not
fit in --budget) and reps = min(--reps, max(1, int(--budget / first_call_secs))) timed calls, each
between two CUDA events with L2 flushed before it (a write of a buffer twice the L2 size); the
median is reported. Peak memory: torch.cuda.max_memory_allocated() after the timed calls, minus
what was allocated when the peak was reset just before the entry's tensors were made (so it counts
the inputs, dout and everything torch makes; the L2-flush buffer, made once, is not counted, nor
is what cuBLAS/cuDNN keep from the small product and convolution run once before the first entry).

Prints one line per (op, case, variant) and, with --json PATH, appends one JSON object per line:
{"source": "torch", "op": ..., "case": ..., "variant": ..., "device": ..., "secs": ...,
"min_secs": ..., "reps": ..., "peak_bytes": ..., "torch": ..., "allow_tf32": false,
"tf32_api": ...} plus the fields named above. An entry that runs out of memory is recorded with
"secs": null, "error": "OOM" and the allocator's message; the script goes on.
Without torch or a CUDA device it prints "skipped: no CUDA device" and exits 0.
"""

import argparse
import gc
import json
import math
import re
import signal
import statistics
import sys
import time

OP_FWD = "local_attn"
OP_BWD = "local_attn_backward"
# (case string exactly as benches/local_attn.rs names it, (B, C, heads, H, W, K), border)
CASES = [
    ("seed,B=4,C=256,heads=4,d=64,256x256,K=7,zeropad", (4, 256, 4, 256, 256, 7), "zeropad"),
    ("B=4,C=64,heads=4,d=16,256x256,K=7,zeropad", (4, 64, 4, 256, 256, 7), "zeropad"),
    ("B=4,C=128,heads=4,d=32,256x256,K=7,zeropad", (4, 128, 4, 256, 256, 7), "zeropad"),
    ("seed,B=4,C=256,heads=4,d=64,256x256,K=7,shift", (4, 256, 4, 256, 256, 7), "shift"),
]
V_UNFOLD = "unfold (seed)"
V_UNFOLD_FIT = "unfold (seed) at largest fitting B/H/W"
V_SHIFTED = "shifted views"
V_DWCONV = "depthwise-conv replacement (seed fix)"
V_COMPILED = "shifted views torch.compile"
BWD_SUFFIX = " fwd+bwd"
# The device the entries run on. A CPU test harness (with a stand-in for torch.cuda) may point
# it at "cpu"; benches always run on "cuda".
DEVICE = "cuda"

ALLOC_RE = re.compile(r"Tried to allocate ([0-9]+(?:\.[0-9]+)?) ?(bytes|B|KiB|MiB|GiB|TiB)")
UNITS = {"bytes": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


class CompileTimeout(BaseException):
    """Raised from SIGALRM while compiling; a BaseException so no `except Exception` swallows it."""


def is_oom(torch, e):
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def first_line(e):
    s = str(e).strip()
    return s.splitlines()[0][:500] if s else type(e).__name__


def oom_line(e):
    """The allocator's line of an out-of-memory error (torch.compile may wrap it in its own words)."""
    for line in str(e).splitlines():
        if "out of memory" in line.lower():
            return line.strip()[:500]
    return first_line(e)


def attempted_bytes(msg):
    """Bytes of the allocation an OOM message says was tried ("Tried to allocate 12.25 GiB"), or None."""
    m = ALLOC_RE.search(msg or "")
    return int(round(float(m.group(1)) * UNITS[m.group(2)])) if m else None


def set_tf32(torch, on):
    """Allows or forbids TF32 in cuBLAS products and cuDNN convolutions; returns the setting used."""
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    conv = getattr(c, "conv", None)
    if hasattr(m, "fp32_precision") and conv is not None and hasattr(conv, "fp32_precision"):
        m.fp32_precision = "tf32" if on else "ieee"
        conv.fp32_precision = "tf32" if on else "ieee"
        return "torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision"
    m.allow_tf32 = on
    c.allow_tf32 = on
    return "torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32"


def case_string(b, c, heads, h, w, kernel, border, seed=False):
    """The case string benches/local_attn.rs would give these dimensions."""
    return f"{'seed,' if seed else ''}B={b},C={c},heads={heads},d={c // heads},{h}x{w},K={kernel},{border}"


def unfold_bytes(b, c, h, w, kernel):
    """Bytes of one F.unfold tensor (k's or v's), f32: B·C·K²·H·W·4."""
    return b * c * kernel * kernel * h * w * 4


def fit_candidates(b, h, w, kernel):
    """Smaller sizes to try after an OOM, largest first: B halved down to 1, then H and W halved."""
    out = []
    while b > 1:
        b //= 2
        out.append((b, h, w))
    while h // 2 >= kernel and w // 2 >= kernel:
        h, w = h // 2, w // 2
        out.append((1, h, w))
    return out


def attn_fns(torch, F):
    """Returns (unfold_attn, shifted_attn, dwconv_core): the variants as plain functions of tensors."""

    # The seed's LocalGraphAttention core (seeds/001, graph_module.py before the fix), q, k, v from
    # its 1x1 qkv conv.
    def unfold_attn(q, k, v, heads, kernel):
        B, C, H, W = q.shape
        d = C // heads
        pad = kernel // 2
        k_unfold = F.unfold(F.pad(k, [pad] * 4, mode="constant"), kernel)  # (B, C*K*K, H*W)
        v_unfold = F.unfold(F.pad(v, [pad] * 4, mode="constant"), kernel)
        k_unfold = k_unfold.view(B, heads, d, kernel * kernel, H * W)
        v_unfold = v_unfold.view(B, heads, d, kernel * kernel, H * W)
        q = q.reshape(B, heads, d, H * W)
        attn = torch.einsum("bhdn,bhdkn->bhkn", q, k_unfold) / math.sqrt(d)
        attn = attn.softmax(dim=2)
        out = torch.einsum("bhkn,bhdkn->bhdn", attn, v_unfold)
        return out.reshape(B, C, H, W)

    class Neighbours:
        """The K² offsets' keys of a [B, C, H, W] map for every pixel, and the scatter back."""

        def __init__(self, B, C, H, W, kernel, shift, device):
            self.B, self.C, self.H, self.W, self.kernel, self.shift = B, C, H, W, kernel, shift
            self.p = kernel // 2
            if shift:
                ys = torch.clamp(torch.arange(H, device=device) - self.p, 0, H - kernel)
                xs = torch.clamp(torch.arange(W, device=device) - self.p, 0, W - kernel)
                self.base = ys[:, None] * W + xs[None, :]  # flat index of each pixel's window start

        def prepare(self, x):
            """What `at` reads: a zero-padded copy (zeropad) or the flattened map (shift)."""
            if self.shift:
                return x.reshape(self.B, self.C, self.H * self.W)
            return F.pad(x, [self.p] * 4, mode="constant")

        def index(self, i, j):
            return (self.base + (i * self.W + j)).reshape(-1)

        def at(self, xp, i, j):
            """Offset (i, j)'s key (or value) for every pixel, [B, C, H, W]: a view (zeropad) or a gather."""
            if self.shift:
                return xp.index_select(2, self.index(i, j)).view(self.B, self.C, self.H, self.W)
            return xp[:, :, i:i + self.H, j:j + self.W]

        def grad_buffer(self, like):
            if self.shift:
                return torch.zeros((self.B, self.C, self.H * self.W), dtype=like.dtype, device=like.device)
            return torch.zeros((self.B, self.C, self.H + 2 * self.p, self.W + 2 * self.p),
                               dtype=like.dtype, device=like.device)

        def add_at(self, g, i, j, a, b, heads):
            """g[offset (i, j) of every pixel] += a * b (a [B, heads, 1, H, W], b [B, heads, d, H, W])."""
            d = self.C // heads
            if self.shift:
                g.index_add_(2, self.index(i, j), (a * b).reshape(self.B, self.C, self.H * self.W))
            else:
                g[:, :, i:i + self.H, j:j + self.W].view(self.B, heads, d, self.H, self.W).addcmul_(a, b)

        def finish(self, g):
            if self.shift:
                return g.view(self.B, self.C, self.H, self.W)
            return g[:, :, self.p:self.p + self.H, self.p:self.p + self.W].contiguous()

    def shifted_forward(q, k, v, heads, kernel, shift):
        B, C, H, W = q.shape
        d = C // heads
        scale = 1.0 / math.sqrt(d)
        nb = Neighbours(B, C, H, W, kernel, shift, q.device)
        kp, vp = nb.prepare(k), nb.prepare(v)
        qh = q.reshape(B, heads, d, H, W)
        m = l = acc = None
        for i in range(kernel):
            for j in range(kernel):
                kj = nb.at(kp, i, j).view(B, heads, d, H, W)
                vj = nb.at(vp, i, j).view(B, heads, d, H, W)
                s = (qh * kj).sum(2).mul_(scale)  # (B, heads, H, W)
                if m is None:
                    m, l, acc = s, torch.ones_like(s), vj.clone(memory_format=torch.contiguous_format)
                    continue
                m_new = torch.maximum(m, s)
                alpha = (m - m_new).exp_()
                p = (s - m_new).exp_()
                l = l.mul_(alpha).add_(p)
                acc = acc.mul_(alpha.unsqueeze(2)).addcmul_(p.unsqueeze(2), vj)
                m = m_new
        out = acc.div_(l.unsqueeze(2)).view(B, C, H, W)
        lse = m + l.log()
        return out, lse

    def shifted_backward(q, k, v, out, lse, dout, heads, kernel, shift):
        B, C, H, W = q.shape
        d = C // heads
        scale = 1.0 / math.sqrt(d)
        nb = Neighbours(B, C, H, W, kernel, shift, q.device)
        kp, vp = nb.prepare(k), nb.prepare(v)
        qh = q.reshape(B, heads, d, H, W)
        doh = dout.reshape(B, heads, d, H, W)
        delta = (doh * out.reshape(B, heads, d, H, W)).sum(2)  # rowsum(dout ∘ out), (B, heads, H, W)
        dq = torch.zeros_like(qh)
        dk, dv = nb.grad_buffer(q), nb.grad_buffer(q)
        for i in range(kernel):
            for j in range(kernel):
                kj = nb.at(kp, i, j).view(B, heads, d, H, W)
                vj = nb.at(vp, i, j).view(B, heads, d, H, W)
                p = (qh * kj).sum(2).mul_(scale).sub_(lse).exp_().unsqueeze(2)  # (B, heads, 1, H, W)
                ds = (doh * vj).sum(2).sub_(delta).unsqueeze(2).mul_(p).mul_(scale)
                dq.addcmul_(ds, kj)
                nb.add_at(dk, i, j, ds, qh, heads)
                nb.add_at(dv, i, j, p, doh, heads)
        return dq.view(B, C, H, W), nb.finish(dk), nb.finish(dv)

    class ShiftedViews(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, heads, kernel, shift):
            out, lse = shifted_forward(q, k, v, heads, kernel, shift)
            ctx.save_for_backward(q, k, v, out, lse)
            ctx.heads, ctx.kernel, ctx.shift = heads, kernel, shift
            return out

        @staticmethod
        def backward(ctx, dout):
            q, k, v, out, lse = ctx.saved_tensors
            dq, dk, dv = shifted_backward(q, k, v, out, lse, dout.contiguous(), ctx.heads, ctx.kernel, ctx.shift)
            return dq, dk, dv, None, None, None

    def shifted_attn(q, k, v, heads, kernel, shift):
        return ShiftedViews.apply(q, k, v, heads, kernel, shift)

    # The seed's replacement (seeds/001, graph_module.py after the fix): qkv 1x1 conv output ->
    # depthwise KxK conv over 3C channels -> channel-wise (q * k).sum over head_dim / sqrt(d) ->
    # sigmoid gate -> * v. A different model.
    def dwconv_core(qkv, weight, heads, kernel):
        B, C3, H, W = qkv.shape
        C = C3 // 3
        d = C // heads
        qkv = F.conv2d(qkv, weight, padding=kernel // 2, groups=C3)
        q, k, v = qkv.chunk(3, dim=1)
        q = q.reshape(B, heads, d, H, W)
        k = k.reshape(B, heads, d, H, W)
        v = v.reshape(B, heads, d, H, W)
        attn = (q * k).sum(dim=2, keepdim=True) / math.sqrt(d)
        attn = torch.sigmoid(attn)
        out = attn * v
        return out.reshape(B, C, H, W)

    return unfold_attn, shifted_attn, dwconv_core


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="PATH", help="append one JSON line per (op, case, variant) to PATH")
    ap.add_argument("--reps", type=int, default=20, help="most timed calls per entry (median taken)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls first (the first is timed to size reps)")
    ap.add_argument("--budget", type=float, default=10.0,
                    help="seconds the timed calls of one entry may take: reps = min(--reps, budget / first call)")
    ap.add_argument("--compile-timeout", type=float, default=300.0,
                    help="seconds torch.compile may take (compiling call + one more) before it is recorded as failed")
    ap.add_argument("--total-budget", type=float, default=480.0,
                    help="seconds after which no further compile is attempted (compile timeouts are cut to fit)")
    ap.add_argument("--memory-cap-gib", type=float, default=0.0,
                    help="cap the allocator at this many GiB (e.g. 32: the seed's V100); 0: the whole device")
    ap.add_argument("--cases", help="case strings to run, separated by ';' (they contain commas); default: all")
    args = ap.parse_args()

    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"skipped: no CUDA device (torch not importable: {e})")
        return 0
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0

    cases = CASES
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(";") if c.strip()]
        known = [c[0] for c in CASES]
        unknown = [c for c in wanted if c not in known]
        if unknown:
            ap.error(f"unknown case(s) {unknown}; known: {known}")
        cases = [c for c in CASES if c[0] in wanted]

    t_script = time.monotonic()
    dev = torch.device(DEVICE, 0)
    props = torch.cuda.get_device_properties(dev)
    name = props.name
    cap = None
    if args.memory_cap_gib > 0:
        cap = int(args.memory_cap_gib * (1 << 30))
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / props.total_memory), dev)
    l2 = getattr(props, "L2_cache_size", 0) or (64 << 20)
    flush = torch.empty(2 * l2, dtype=torch.uint8, device=dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = open(args.json, "a") if args.json else None

    # cuBLAS's handle and workspace (the einsums' bmm) and cuDNN's (the depthwise conv) are made by
    # the first call: make them before any baseline.
    tf32_api = set_tf32(torch, False)
    e = torch.ones((2, 8, 8), dtype=torch.float32, device=dev)
    warm = (torch.matmul(e[0], e), torch.matmul(e, e).sum(0),
            F.conv2d(e[None], torch.ones((2, 1, 3, 3), dtype=torch.float32, device=dev), padding=1, groups=2))
    del e, warm
    torch.cuda.synchronize(dev)

    def emit(line):
        if out:
            out.write(json.dumps(line) + "\n")
            out.flush()

    unfold_attn, shifted_attn, dwconv_core = attn_fns(torch, F)

    def make_call(kind, size, heads, kernel, border, backward, use_compile):
        """Inputs of one entry and the call that runs it (the inputs live in the closure)."""
        b, c, h, w = size
        gen = torch.Generator(device=dev).manual_seed(1)

        def r(*shape, scale=1.0):
            t = torch.randn(shape, dtype=torch.float32, device=dev, generator=gen)
            return t.mul_(scale) if scale != 1.0 else t

        if kind == V_DWCONV:
            xs = [r(b, 3 * c, h, w), r(3 * c, 1, kernel, kernel, scale=1.0 / kernel)]

            def fn(qkv, weight):
                return dwconv_core(qkv, weight, heads, kernel)
        else:
            xs = [r(b, c, h, w), r(b, c, h, w), r(b, c, h, w)]
            if kind == V_UNFOLD:
                def fn(q, k, v):
                    return unfold_attn(q, k, v, heads, kernel)
            else:
                shift = border == "shift"

                def fn(q, k, v):
                    return shifted_attn(q, k, v, heads, kernel, shift)
        if use_compile:
            fn = torch.compile(fn)
        if not backward:
            def call():
                with torch.no_grad():
                    return fn(*xs)
            return call
        for x in xs:
            x.requires_grad_()
        gen = torch.Generator(device=dev).manual_seed(9)
        dout = torch.randn((b, c, h, w), dtype=torch.float32, device=dev, generator=gen)

        def call():
            o = fn(*xs)
            return torch.autograd.grad((o * dout).sum(), xs)
        return call

    def timed(call, i):
        flush.fill_(i & 0xFF)
        start.record()
        res = call()
        end.record()
        end.synchronize()
        del res
        return start.elapsed_time(end) / 1e3

    def measure(call):
        t1 = timed(call, 0)
        reps = min(args.reps, max(1, int(args.budget / t1)))
        warm = max(0, args.warmup - 1)
        if t1 * (warm + reps) > 2 * args.budget:
            warm = 0
        times = []
        for i in range(warm + reps):
            t = timed(call, i + 1)
            if i >= warm:
                times.append(t)
        return times

    def compile_warm(call, timeout):
        """Runs the compiling call and one more, untimed, under SIGALRM; returns the first's wall time."""
        fired = []

        def on_alarm(signum, frame):
            fired.append(signum)
            raise CompileTimeout(f"not finished after {timeout:.0f} s")

        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(max(1, int(math.ceil(timeout))))
        try:
            t0 = time.monotonic()
            res = call()
            torch.cuda.synchronize(dev)
            first = time.monotonic() - t0
            del res
            res = call()
            torch.cuda.synchronize(dev)
            del res
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        if fired:  # the alarm went off but something caught it: still a timeout
            raise CompileTimeout(f"not finished after {timeout:.0f} s")
        return first

    def graph_breaks():
        try:
            return int(sum(torch._dynamo.utils.counters["graph_break"].values()))
        except Exception:  # noqa: BLE001 - informational only
            return None

    def fresh():
        """Frees what earlier entries left and resets the peak; returns the baseline."""
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        return torch.cuda.memory_allocated(dev)

    def done_line(label, times, peak, extra=""):
        secs = statistics.median(times)
        print(
            f"{label}: {secs * 1e3:.3f} ms (median of {len(times)}, min {min(times) * 1e3:.3f} ms), "
            f"peak {peak / (1 << 20):.2f} MiB{extra}"
        )
        return {"secs": secs, "min_secs": min(times), "reps": len(times), "peak_bytes": peak}

    def try_size(kind, size, heads, kernel, border, backward):
        """Times one eager entry at `size`; returns (record fields, None) or (None, OOM message)."""
        baseline = fresh()
        call = None
        try:
            call = make_call(kind, size, heads, kernel, border, backward, False)
            times = measure(call)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev) - baseline
        except Exception as e:  # noqa: BLE001 - only OOM is recorded; anything else re-raises
            if not is_oom(torch, e):
                raise
            return None, oom_line(e), torch.cuda.max_memory_allocated(dev) - baseline
        del call
        return (times, peak), None, None

    for case, (b, c, heads, h, w, kernel), border in cases:
        if border == "zeropad":
            ub = unfold_bytes(b, c, h, w, kernel)
            print(f"unfold at [{case}]: F.unfold of k and of v is B*C*K^2*H*W*4 = {ub / (1 << 30):.2f} GiB each, "
                  f"{2 * ub / (1 << 30):.2f} GiB together")

    # All eager entries first, then the compiled ones (the seed cases' first: compiles are long and
    # the later ones may not fit in --total-budget).
    plan = []
    for use_compile in (False, True):
        order = sorted(cases, key=lambda x: not x[0].startswith("seed,")) if use_compile else cases
        for case, dims, border in order:
            kinds = [V_SHIFTED] if use_compile else (
                [V_UNFOLD, V_SHIFTED, V_DWCONV] if border == "zeropad" else [V_SHIFTED])
            for backward in (False, True):
                for kind in kinds:
                    plan.append((case, dims, border, backward, kind, use_compile))

    for case, (b, c, heads, h, w, kernel), border, backward, kind, use_compile in plan:
        op = OP_BWD if backward else OP_FWD
        suffix = BWD_SUFFIX if backward else ""
        variant = (V_COMPILED if use_compile else kind) + suffix
        rec = {
            "source": "torch",
            "op": op,
            "case": case,
            "variant": variant,
            "device": name,
            "secs": None,
            "min_secs": None,
            "reps": 0,
            "peak_bytes": None,
            "torch": torch.__version__,
            "allow_tf32": False,
            "tf32_api": tf32_api,
        }
        if cap is not None:
            rec["memory_cap_bytes"] = cap
        if kind == V_UNFOLD:
            rec["unfold_bytes_each"] = unfold_bytes(b, c, h, w, kernel)
        label = f"peer {op} [{case}] torch {variant} on {name}"
        size = (b, c, h, w)

        if not use_compile:
            fields, oom, oom_peak = try_size(kind, size, heads, kernel, border, backward)
            if fields is not None:
                rec.update(done_line(label, *fields))
                emit(rec)
                continue
            got = attempted_bytes(oom)
            rec.update({"error": "OOM", "message": oom, "attempted_bytes": got, "peak_bytes": oom_peak})
            print(f"{label}: OOM: {oom}, peak {oom_peak / (1 << 20):.2f} MiB")
            emit(rec)
            if kind != V_UNFOLD:
                continue
            # The largest size that fits, recorded under its own case string.
            tried = []
            for fb, fh, fw in fit_candidates(b, h, w, kernel):
                fields, oom, _ = try_size(kind, (fb, c, fh, fw), heads, kernel, border, backward)
                fit_case = case_string(fb, c, heads, fh, fw, kernel, border)
                if fields is None:
                    tried.append(f"{fit_case}: OOM ({oom})")
                    print(f"  {V_UNFOLD + suffix} at [{fit_case}]: OOM")
                    continue
                fit = dict(rec)
                for key in ("error", "message", "attempted_bytes"):
                    fit.pop(key, None)
                fit.update({
                    "case": fit_case,
                    "variant": V_UNFOLD_FIT + suffix,
                    "seed_case": case,
                    "fit": {"B": fb, "H": fh, "W": fw},
                    "work_fraction": (fb * fh * fw) / (b * h * w),
                    "tried": tried,
                    "unfold_bytes_each": unfold_bytes(fb, c, fh, fw, kernel),
                    "unfold_bytes_each_at_case": unfold_bytes(b, c, h, w, kernel),
                })
                fit.update(done_line(f"peer {op} [{fit_case}] torch {V_UNFOLD_FIT + suffix} (for [{case}]) on {name}",
                                     *fields))
                emit(fit)
                break
            else:
                msg = "OOM at every size tried"
                print(f"peer {op} [{case}] torch {V_UNFOLD_FIT + suffix}: {msg}")
                emit(dict(rec, variant=V_UNFOLD_FIT + suffix, seed_case=case, tried=tried, error=msg,
                          message=None, attempted_bytes=None, peak_bytes=None))
            continue

        # torch.compile of "shifted views".
        left = args.total_budget - (time.monotonic() - t_script)
        if left < 30.0:
            why = f"skipped: not attempted, --total-budget {args.total_budget:.0f} s spent"
            print(f"{label}: {why}")
            rec["error"] = why
            emit(rec)
            continue
        timeout = min(args.compile_timeout, left)

        gc.collect()
        import torch._dynamo  # noqa: F401 - reset() and the graph-break counters

        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        baseline = fresh()
        call = None
        phase = "inputs"
        try:
            call = make_call(kind, size, heads, kernel, border, backward, True)
            phase = "compile"
            compile_secs = compile_warm(call, timeout)
            phase = "run"
            times = measure(call)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev) - baseline
        except CompileTimeout as e:
            msg = f"compile failed: {e} (--compile-timeout {args.compile_timeout:.0f} s, total budget left {left:.0f} s)"
            print(f"{label}: {msg}")
            rec["error"] = msg
            rec["peak_bytes"] = torch.cuda.max_memory_allocated(dev) - baseline
            emit(rec)
            del call
            torch._dynamo.reset()
            continue
        except Exception as e:  # noqa: BLE001 - OOM and compile failures are recorded
            oom = is_oom(torch, e)
            msg = oom_line(e) if oom else first_line(e)
            rec["peak_bytes"] = torch.cuda.max_memory_allocated(dev) - baseline
            if oom:
                rec["error"] = "OOM"
                rec["message"] = msg
                rec["attempted_bytes"] = attempted_bytes(msg)
                print(f"{label}: OOM ({phase}): {msg}, peak {rec['peak_bytes'] / (1 << 20):.2f} MiB")
            else:
                what = "compiled run failed" if phase == "run" else "compile failed"
                rec["error"] = f"{what}: {type(e).__name__}: {msg}"
                print(f"{label}: {rec['error']}")
            emit(rec)
            del call
            torch._dynamo.reset()
            continue
        rec.update(done_line(label, times, peak, f", compile {compile_secs:.1f} s"))
        rec["compile_secs"] = compile_secs
        gb = graph_breaks()
        if gb is not None:
            rec["graph_breaks"] = gb
        emit(rec)
        del call
        torch._dynamo.reset()
    set_tf32(torch, False)
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
