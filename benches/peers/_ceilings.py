"""Measured ceilings of the device (METHOD: measure once, use these rather than datasheet rates):
a large device-to-device copy (bytes read + written) and large matrix products through cuBLAS.
Prints one JSON line per ceiling; `--json FILE` appends them to FILE."""
import argparse, json, torch

def timed(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize()
        ts.append(a.elapsed_time(b) * 1e-3)
    ts.sort()
    return ts[len(ts) // 2]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    out = []
    n = 1 << 30  # 4 GiB of f32 read + 4 GiB written
    x = torch.randn(n // 4, device="cuda").repeat(4)
    y = torch.empty_like(x)
    s = timed(lambda: y.copy_(x))
    out.append({"ceiling": "d2d_copy", "bytes": 8 * n, "secs": s, "rate": 8 * n / s, "unit": "B/s"})
    del x, y
    for dt, name in [(torch.bfloat16, "gemm_bf16"), (torch.float32, "gemm_f32_tf32_off")]:
        torch.backends.cuda.matmul.allow_tf32 = False
        m = 8192
        a = torch.randn(m, m, device="cuda", dtype=dt)
        b = torch.randn(m, m, device="cuda", dtype=dt)
        s = timed(lambda: a @ b, reps=10)
        out.append({"ceiling": name, "flops": 2 * m**3, "secs": s, "rate": 2 * m**3 / s, "unit": "FLOP/s"})
    for r in out:
        r["device"] = torch.cuda.get_device_name()
        print(json.dumps(r))
    if args.json:
        with open(args.json, "a") as f:
            for r in out:
                f.write(json.dumps(r) + "\n")

if __name__ == "__main__":
    main()
