"""Real-scale cost: a full-size SDXL UNet (random weights, built in code, no download), one denoising forward at
1024² with CFG (batch 2), stock vs PLADIS (scale 2, alpha 1.5), measured side by side. Needs a GPU.
Run: python benchmarks/bench_sdxl_unet.py [--dtype float16] [--size 1024]
"""

import argparse
import time

import torch
from diffusers import UNet2DConditionModel

import pladis

SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel(**SDXL_UNET).to(dtype).eval()
    latent = args.size // 8
    x = torch.randn(2, 4, latent, latent, device="cuda", dtype=dtype)
    context = torch.randn(2, 77, 2048, device="cuda", dtype=dtype)
    added = {
        "text_embeds": torch.randn(2, 1280, device="cuda", dtype=dtype),
        "time_ids": torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]] * 2, device="cuda", dtype=dtype),
    }
    t = torch.tensor(500, device="cuda")

    def forward():
        return unet(x, t, context, added_cond_kwargs=added).sample

    results = {}
    with torch.inference_mode():
        stock = forward()
        for backend in ("eager", "compiled"):
            pladis.set_backend(backend)
            with pladis.apply(unet, scale=2.0, alpha=1.5):
                out = forward()
            assert torch.isfinite(out).all(), "non-finite PLADIS output"
            best = {"stock": float("inf"), "pladis": float("inf")}
            for _ in range(args.rounds):
                for variant in best:
                    handle = pladis.apply(unet, scale=2.0) if variant == "pladis" else None
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    forward()
                    torch.cuda.synchronize()
                    best[variant] = min(best[variant], time.perf_counter() - start)
                    if handle is not None:
                        handle.remove()
            results[backend] = best
        with pladis.apply(unet, scale=0.0):
            same = torch.equal(forward(), stock)
    print(f"SDXL UNet (2.6B params, random weights), {args.size}², batch 2 (CFG), {args.dtype}, best of {args.rounds}")
    print(
        f"scale 0 bit-identical to stock: {same}; PLADIS output differs from stock by max {(out - stock).abs().max().item():.3g}"
    )
    for backend, best in results.items():
        print(
            f"backend {backend:9s} stock {best['stock'] * 1e3:7.1f} ms  PLADIS {best['pladis'] * 1e3:7.1f} ms  ratio {best['pladis'] / best['stock']:.3f}"
        )


if __name__ == "__main__":
    main()
