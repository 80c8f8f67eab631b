"""PLADIS attention vs F.scaled_dot_product_attention on real-scale cross-attention shapes (SDXL at 1024²).

Accuracy: fp16/bf16/fp32 PLADIS outputs against a float64 evaluation of the same formula.
Speed: one cross-attention call, PLADIS (eager, compiled and, on CUDA, the Triton kernel) / SDPA, side by side.
Run: python benchmarks/bench_attention.py [--device cuda]
"""

import argparse
import math
import time

import torch
import torch.nn.functional as F

import pladis
from pladis.attention import pladis_attention


def reference(q, k, v, scale, alpha):
    s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    w = (1 - scale) * torch.softmax(s, -1) + scale * pladis.entmax(s, alpha)
    return w @ v.double()


def timed(fn, sync, rounds):
    best = float("inf")
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    g = torch.Generator(device=device).manual_seed(0)

    print("accuracy vs float64 (max abs error / max abs output), scale 2, alpha 1.5, shape (2, 10, 1024, 77, 64)")
    q, k, v = (torch.randn(2, 10, n, 64, device=device, generator=g) for n in (1024, 77, 77))
    ref = reference(q, k, v, 2.0, 1.5)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        out = pladis_attention(q.to(dtype), k.to(dtype), v.to(dtype), scale=2.0)
        sdpa = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype))
        sdpa_ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
        sdpa_err = ((sdpa.double() - sdpa_ref).abs().max() / sdpa_ref.abs().max()).item()
        print(f"  {dtype!s:15s} PLADIS {err:.2e}   (SDPA's own error at this dtype {sdpa_err:.2e})")

    print("\nspeed: one cross-attention call, best of", args.rounds)
    backends = ("eager", "compiled", "triton") if device.startswith("cuda") else ("eager", "compiled")
    print(
        f"  {'shape (B,H,Lq,Lk,D)':28s} {'dtype':9s} {'SDPA ms':>8s} " + " ".join(f"{b + ' x':>10s}" for b in backends)
    )
    for shape in ((2, 10, 4096, 77, 64), (2, 20, 1024, 77, 64), (2, 24, 4096, 300, 64)):
        b, h, lq, lk, d = shape
        for dtype in (torch.float16, torch.bfloat16) if device.startswith("cuda") else (torch.float32,):
            q, k, v = (torch.randn(b, h, n, d, device=device, dtype=dtype) for n in (lq, lk, lk))
            results = {}
            for backend in backends:
                pladis.set_backend(backend)
                pladis_attention(q, k, v)  # warm-up / compile
                results[backend] = timed(lambda q=q, k=k, v=v: pladis_attention(q, k, v), sync, args.rounds)
            base = timed(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), sync, args.rounds)
            ratios = " ".join(f"{results[b] / base:10.2f}" for b in backends)
            print(f"  {shape!s:28s} {str(dtype)[6:]:9s} {base * 1e3:8.3f} {ratios}")
    pladis.set_backend("auto")


if __name__ == "__main__":
    main()
