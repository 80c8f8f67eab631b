"""Whole-generation cost of PLADIS on the tiny FLUX and SD3 pipelines: PLADIS / stock time ratio.

Stock and PLADIS generations are interleaved in one run (stock, PLADIS, stock, PLADIS, ...) on one thread, and
each side reports the minimum over its repeats, so machine noise hits both alike. The pipelines are
`pladis.testing.transformers`' random-weight ones, called the way the real ones are: FLUX schnell-style
(guidance_scale=0, 4 steps, max_sequence_length=256) and SD3 with classifier-free guidance.

    python benchmarks/bench_transformers.py [--repeats 5] [--backend auto|eager|compiled]
"""

from __future__ import annotations

import argparse
import time

import torch


def generate(pipe, kwargs: dict) -> float:
    start = time.perf_counter()
    pipe(prompt="a red cube on top of a blue sphere", generator=torch.Generator().manual_seed(0), output_type="pt",
         **kwargs)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", default="auto", help="PLADIS map backend: auto, eager, compiled")
    args = parser.parse_args()

    torch.set_num_threads(1)
    import pladis
    from pladis.testing.transformers import tiny_flux_pipeline, tiny_sd3_pipeline

    pladis.set_backend(args.backend)
    size = dict(height=32, width=32)
    cases = [
        ("FLUX schnell-style (4 steps, guidance 0, 256 text tokens)", tiny_flux_pipeline(),
         dict(guidance_scale=0.0, num_inference_steps=4, max_sequence_length=256, **size)),
        ("SD3 CFG 5.0 (4 steps, 77 + 77 text tokens)", tiny_sd3_pipeline(),
         dict(guidance_scale=5.0, num_inference_steps=4, max_sequence_length=77, **size)),
    ]  # fmt: skip
    print(f"torch {torch.__version__}, 1 thread, PLADIS backend {args.backend}, min of {args.repeats} interleaved runs")
    for label, pipe, kwargs in cases:
        times = {"stock": [], "pladis": []}
        for repeat in range(args.repeats + 1):  # the first round warms both up (and compiles) and is not counted
            pladis.remove(pipe)
            stock = generate(pipe, kwargs)
            pladis.apply(pipe)
            with_pladis = generate(pipe, kwargs)
            if repeat:
                times["stock"].append(stock)
                times["pladis"].append(with_pladis)
        pladis.remove(pipe)
        best = {side: min(values) for side, values in times.items()}
        print(f"{label}: stock {best['stock'] * 1e3:.1f} ms, PLADIS {best['pladis'] * 1e3:.1f} ms, "
              f"ratio {best['pladis'] / best['stock']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
