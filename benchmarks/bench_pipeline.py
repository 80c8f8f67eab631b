"""Whole-generation cost of PLADIS: tiny SDXL-like pipeline, CFG, 4 steps, PLADIS / stock, measured side by side.

Each round runs stock then PLADIS (scale 2, alpha 1.5) on the same pipeline and seed; the best time of each over
the rounds gives the ratio. Run: .venv/bin/python benchmarks/bench_pipeline.py [--sizes 64,256,512] [--threads 1]
"""

import argparse
import time

import torch

import pladis
from pladis.testing.unet import tiny_sdxl_pipeline


def generate(pipe, size: int, steps: int, guidance: float):
    return pipe(
        "a red circle left of a blue square",
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=size,
        width=size,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,256,512")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--alpha", type=float, default=1.5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = tiny_sdxl_pipeline(scheduler="euler")
    print(
        f"tiny SDXL-like pipeline, CFG {args.guidance}, {args.steps} steps, {args.threads} thread(s), "
        f"backend {pladis.get_backend()}, best of {args.rounds} interleaved rounds"
    )
    print(f"{'size':>6s} {'stock ms':>10s} {'PLADIS ms':>10s} {'ratio':>7s}")
    for size in (int(s) for s in args.sizes.split(",")):
        best = {"stock": float("inf"), "pladis": float("inf")}
        with torch.inference_mode():
            for variant in best:  # warm-up (and compilation) outside the timed rounds
                with pladis.apply(pipe, scale=2.0, alpha=args.alpha) if variant == "pladis" else torch.no_grad():
                    generate(pipe, size, args.steps, args.guidance)
            for _ in range(args.rounds):
                for variant in best:
                    handle = pladis.apply(pipe, scale=2.0, alpha=args.alpha) if variant == "pladis" else None
                    start = time.perf_counter()
                    generate(pipe, size, args.steps, args.guidance)
                    best[variant] = min(best[variant], time.perf_counter() - start)
                    if handle is not None:
                        handle.remove()
        ratio = best["pladis"] / best["stock"]
        print(f"{size:>5d}² {best['stock'] * 1e3:10.1f} {best['pladis'] * 1e3:10.1f} {ratio:7.3f}")


if __name__ == "__main__":
    main()
