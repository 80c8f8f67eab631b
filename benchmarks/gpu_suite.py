"""The PLADIS cost suite, end to end in one command: GPU tests, attention-op and whole-model benchmarks, one table.

    python benchmarks/gpu_suite.py --out results/          # on a CUDA machine: full size, < 5 minutes
    python benchmarks/gpu_suite.py --out results/ --cpu    # the CPU versions at reduced size
    python benchmarks/gpu_suite.py --out results/ --smoke  # tiny shapes, kernel under TRITON_INTERPRET (a check)

(a) one attention call at SDXL shapes (batch 2, heads 10/20, 4096/1024 queries, 77 keys) and FLUX's joint shape
    (24 heads, 4096 image + 512 text tokens): stock SDPA vs PLADIS torch path (compiled) vs PLADIS Triton kernel vs
    SDPA + AdaSplash (PLADIS is linear in V: (1 - lambda) SDPA + lambda entmax-attention; optional, skipped with the
    reason when absent or when it fails our cross-attention check);
(b) one denoising step of a full-size SDXL UNet (random weights from the SDXL config, 128x128 latents, CFG batch
    2, fp16) and of a FLUX.1 transformer (random weights from its config, 1024² = 4096 image tokens, 512 text
    tokens, bf16; --flux-depth reduces the block count, full width), stock vs PLADIS (lambda 2) at alpha 1.25, 1.5,
    1.75, 2: time ratio and peak memory, next to the paper's +22 % (SDXL, H100, whole generation, alpha 1.5).
Every ratio is measured side by side in one run (interleaved rounds, best of each). Writes DIR/suite.json and
DIR/suite.md (atomically).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
ALPHAS = (1.25, 1.5, 1.75, 2.0)
PAPER = "paper (reference implementation, SDXL 25 steps, H100, whole generation): 1.22x at alpha 1.5"

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
# the same architecture at reduced width for CPU (head dim 64 kept)
SDXL_UNET_REDUCED = {
    **SDXL_UNET,
    "block_out_channels": (64, 128, 256),
    "attention_head_dim": (1, 2, 4),
    "transformer_layers_per_block": (1, 2, 2),
    "cross_attention_dim": 256,
    "projection_class_embeddings_input_dim": 256 + 6 * 256,
    "norm_num_groups": 32,
}
FLUX = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_REDUCED = {**FLUX, "num_layers": 1, "num_single_layers": 2, "num_attention_heads": 2, "joint_attention_dim": 256}


class Timer:
    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start


def peak_memory(fn, device: str) -> float | None:
    """Peak memory allocated while fn runs, in MiB (CUDA only)."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def interleaved(variants: dict, timer: Timer, rounds: int) -> dict[str, float]:
    """Best time of each variant over rounds that run every variant once, in turn (after one warm-up each)."""
    for fn in variants.values():
        fn()
    best = dict.fromkeys(variants, math.inf)
    for _ in range(rounds):
        for name, fn in variants.items():
            best[name] = min(best[name], timer(fn))
    return best


# --------------------------------------------------------------------------- (a) the attention op


def adasplash_baseline(device: str):
    """(callable(q, k, v, alpha) -> entmax attention, None) if AdaSplash is usable here, else (None, reason)."""
    if not device.startswith("cuda"):
        return None, "AdaSplash needs CUDA"
    try:
        from adasplash import adasplash_no_block_mask
    except ImportError:
        return None, "adasplash is not installed (pip install 'pladis[adasplash]')"
    import pladis

    g = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 64, device=device, generator=g, dtype=torch.float16) for n in (64, 77, 77))
    try:
        out = adasplash_no_block_mask(q, k, v, alpha=1.5).double()
    except Exception as err:
        return None, f"adasplash fails on a cross-attention shape (64 queries x 77 keys): {type(err).__name__}"
    s = (q.double() @ k.double().transpose(-1, -2)) / 8
    ref = pladis.entmax(s, 1.5) @ v.double()
    error = (out - ref).abs().max().item()
    if error > 1e-2:
        return None, f"adasplash is wrong on cross-attention shapes (64 queries x 77 keys: max error {error:.2g})"
    return (lambda q, k, v, alpha: adasplash_no_block_mask(q, k, v, alpha=alpha)), None


def bench_attention_op(device: str, dtype: torch.dtype, shapes, rounds: int, kernel: bool) -> list[dict]:
    import pladis
    from pladis.attention import pladis_attention
    from pladis.joint import pladis_joint_attention

    timer = Timer(device)
    splash, splash_reason = adasplash_baseline(device)
    rows = []
    for label, (b, h, lq, lk, d, joint) in shapes.items():
        g = torch.Generator(device).manual_seed(0)
        if joint:  # one sequence: text first (FLUX), lk text tokens
            q, k, v = (torch.randn(b, h, lq + lk, d, device=device, generator=g, dtype=dtype) for _ in range(3))
        else:
            q, k, v = (torch.randn(b, h, n, d, device=device, generator=g, dtype=dtype) for n in (lq, lk, lk))

        def run_pladis(backend, alpha=1.5, q=q, k=k, v=v, joint=joint, lk=lk):
            pladis.set_backend(backend)
            if joint:
                return pladis_joint_attention(q, k, v, text=slice(0, lk), scale=2.0, alpha=alpha)
            return pladis_attention(q, k, v, scale=2.0, alpha=alpha)

        variants = {"SDPA": lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v)}
        variants["PLADIS torch"] = lambda: run_pladis("compiled")
        skipped = {}
        if kernel:
            variants["PLADIS kernel"] = lambda: run_pladis("triton")
        else:
            skipped["PLADIS kernel"] = "needs CUDA (interpreter timings mean nothing)"
        if splash is not None and not joint:
            variants["SDPA + AdaSplash"] = lambda q=q, k=k, v=v: (
                -F.scaled_dot_product_attention(q, k, v) + 2.0 * splash(q, k, v, 1.5)
            )
        else:
            skipped["SDPA + AdaSplash"] = splash_reason or "joint attention: AdaSplash has no text-block variant"
        best = interleaved(variants, timer, rounds)
        memory = {name: peak_memory(fn, device) for name, fn in variants.items()}
        if kernel:  # any alpha at the same cost: the kernel at the other alphas
            for alpha in ALPHAS:
                best[f"PLADIS kernel a={alpha:g}"] = min(
                    timer(lambda a=alpha: run_pladis("triton", a)) for _ in range(3)
                )
        base = best["SDPA"]
        rows.append(
            {
                "shape": label,
                "dtype": str(dtype).removeprefix("torch."),
                "ms": {name: t * 1e3 for name, t in best.items()},
                "ratio": {name: t / base for name, t in best.items()},
                "peak_MiB": memory,
                "skipped": skipped,
            }
        )
        print(f"  {label:34s} " + "  ".join(f"{n} {r:.2f}x" for n, r in rows[-1]["ratio"].items()), flush=True)
    pladis.set_backend("auto")
    return rows


# --------------------------------------------------------------------------- (b) one model step


def model_step_rows(name: str, model, forward, device: str, rounds: int) -> list[dict]:
    import pladis

    timer = Timer(device)
    with torch.inference_mode():
        stock_out = forward()
        with pladis.apply(model, scale=0.0):
            identical = bool(torch.equal(forward(), stock_out))

        def with_pladis(alpha):
            def run():
                handle = pladis.apply(model, scale=2.0, alpha=alpha, check_finite=False)  # no per-step sync
                try:
                    return forward()
                finally:
                    handle.remove()

            return run

        variants = {"stock": forward, **{f"PLADIS a={a:g}": with_pladis(a) for a in ALPHAS}}
        best = interleaved(variants, timer, rounds)
        memory = {n: peak_memory(fn, device) for n, fn in variants.items()}
        finite = bool(torch.isfinite(with_pladis(1.5)()).all())
    rows = []
    for n, t in best.items():
        rows.append(
            {
                "model": name,
                "variant": n,
                "ms": t * 1e3,
                "ratio": t / best["stock"],
                "peak_MiB": memory[n],
                "peak_vs_stock": (memory[n] / memory["stock"]) if memory["stock"] else None,
            }
        )
    print(f"  {name}: scale 0 bit-identical {identical}, PLADIS finite {finite}; " + ", ".join(
        f"{r['variant']} {r['ratio']:.3f}x" for r in rows), flush=True)  # fmt: skip
    rows[0]["scale0_bit_identical"] = identical
    rows[0]["pladis_finite"] = finite
    return rows


def sdxl_step(device: str, dtype: torch.dtype, full: bool, rounds: int) -> list[dict]:
    from diffusers import UNet2DConditionModel

    config, latent, text_dim, pooled = (SDXL_UNET, 128, 2048, 1280) if full else (SDXL_UNET_REDUCED, 32, 256, 256)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # random init directly in the target dtype (no fp32 copy of 2.6B weights)
    try:
        with torch.device(device):
            unet = UNet2DConditionModel(**config).eval()
    finally:
        torch.set_default_dtype(previous)
    size = latent * 8
    x = torch.randn(2, 4, latent, latent, device=device, dtype=dtype)
    context = torch.randn(2, 77, text_dim, device=device, dtype=dtype)
    added = {
        "text_embeds": torch.randn(2, pooled, device=device, dtype=dtype),
        "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype),
    }
    t = torch.tensor(500, device=device)
    label = f"SDXL UNet {'full' if full else 'reduced'} {latent}x{latent} latents, CFG batch 2, {str(dtype)[6:]}"
    rows = model_step_rows(label, unet, lambda: unet(x, t, context, added_cond_kwargs=added).sample, device, rounds)
    return rows


def flux_step(device: str, dtype: torch.dtype, full: bool, rounds: int, depth: tuple[int, int] | None) -> list[dict]:
    from diffusers import FluxTransformer2DModel

    config = dict(FLUX if full else FLUX_REDUCED)
    if depth is not None:
        config["num_layers"], config["num_single_layers"] = depth
    side, n_text = (64, 512) if full else (16, 64)  # 1024² -> 64x64 packed latents = 4096 image tokens
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = FluxTransformer2DModel(**config).eval()
    finally:
        torch.set_default_dtype(previous)
    img_ids = torch.zeros(side, side, 3, device=device)
    img_ids[..., 1] = torch.arange(side, device=device)[:, None]
    img_ids[..., 2] = torch.arange(side, device=device)[None, :]
    inputs = dict(
        hidden_states=torch.randn(1, side * side, config["in_channels"], device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(1, n_text, config["joint_attention_dim"], device=device, dtype=dtype),
        pooled_projections=torch.randn(1, config["pooled_projection_dim"], device=device, dtype=dtype),
        timestep=torch.full((1,), 0.5, device=device, dtype=dtype),
        img_ids=img_ids.reshape(-1, 3),
        txt_ids=torch.zeros(n_text, 3, device=device),
        guidance=torch.full((1,), 3.5, device=device, dtype=dtype),
    )
    blocks = f"{config['num_layers']}+{config['num_single_layers']} blocks"
    label = f"FLUX {'full width' if full else 'reduced'} ({blocks}), {side * side}+{n_text} tokens, {str(dtype)[6:]}"
    rows = model_step_rows(label, model, lambda: model(**inputs).sample, device, rounds)
    return rows


# --------------------------------------------------------------------------- tests, report


def run_gpu_tests() -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("TRITON_INTERPRET", None)
    start = time.perf_counter()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_gpu.py"), "-q", "-p", "no:warnings", "-rfs"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=ROOT,
        )
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        ok = result.returncode == 0
    except subprocess.TimeoutExpired:
        tail, ok = ["timed out after 180 s"], False
    print("  tests/test_gpu.py:", "passed" if ok else "FAILED", f"({time.perf_counter() - start:.0f} s)", flush=True)
    return {"passed": ok, "tail": tail}


def markdown(report: dict) -> str:
    lines = [f"# PLADIS cost suite ({report['device']})", "", f"torch {report['torch']}, {report['when']}", ""]
    if report.get("tests"):
        lines += [f"GPU tests: {'passed' if report['tests']['passed'] else 'FAILED'}", "", "```"]
        lines += [*report["tests"]["tail"], "```", ""]
    lines += ["## (a) one attention call: time / SDPA (peak MiB)", ""]
    for row in report["attention"]:
        cells = ", ".join(
            f"{n} **{r:.2f}x**" + (f" ({row['peak_MiB'][n]:.0f} MiB)" if row["peak_MiB"].get(n) else "")
            for n, r in row["ratio"].items()
        )
        lines.append(f"- {row['shape']} {row['dtype']}: {cells}")
        lines += [f"  - {n} skipped: {why}" for n, why in row["skipped"].items()]
    lines += ["", "## (b) one model step: PLADIS (lambda 2) / stock", "", f"Reference: {PAPER}.", ""]
    lines += ["| model | variant | ms | ratio | peak MiB | peak / stock |", "|---|---|---|---|---|---|"]
    for row in report["models"]:
        peak = f"{row['peak_MiB']:.0f}" if row["peak_MiB"] else "-"
        rel = f"{row['peak_vs_stock']:.4f}" if row["peak_vs_stock"] else "-"
        lines.append(f"| {row['model']} | {row['variant']} | {row['ms']:.1f} | {row['ratio']:.3f} | {peak} | {rel} |")
    notes = [r for r in report["models"] if "scale0_bit_identical" in r]
    lines += ["", *[f"- {r['model']}: scale 0 bit-identical to stock: {r['scale0_bit_identical']}" for r in notes]]
    lines += ["", f"Total wall time {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for suite.json and suite.md")
    parser.add_argument("--cpu", action="store_true", help="the CPU versions at reduced size")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; on CPU the kernel runs interpreted")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--flux-depth", default=None, help="double,single block counts (default: FLUX.1's 19,38)")
    args = parser.parse_args()
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1") if not torch.cuda.is_available() else None
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    if device == "cpu" and not (args.cpu or args.smoke):
        raise SystemExit("gpu_suite: no CUDA device here; run with --cpu (reduced sizes) or --smoke")
    args.out.mkdir(parents=True, exist_ok=True)
    depth = tuple(int(n) for n in args.flux_depth.split(",")) if args.flux_depth else None
    if device == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    start = time.perf_counter()
    report: dict = {
        "device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device == "cuda" and not args.skip_tests:
        print("GPU tests", flush=True)
        report["tests"] = run_gpu_tests()
    full = device == "cuda" and not args.smoke
    kernel = device == "cuda" or (args.smoke and os.environ.get("TRITON_INTERPRET") == "1")
    if full:
        shapes = {
            "SDXL 1024² mid (2,10,4096,77,64)": (2, 10, 4096, 77, 64, False),
            "SDXL 1024² low (2,20,1024,77,64)": (2, 20, 1024, 77, 64, False),
            "PixArt-like (2,16,4096,300,72)": (2, 16, 4096, 300, 72, False),
            "FLUX joint (1,24,4096+512,128)": (1, 24, 4096, 512, 128, True),
        }
        dtypes = (torch.float16, torch.bfloat16)
    elif args.smoke:
        shapes = {
            "tiny (1,2,32,77,64)": (1, 2, 32, 77, 64, False),
            "tiny joint (1,2,32+16,32)": (1, 2, 32, 16, 32, True),
        }
        dtypes = (torch.float32,)
    else:
        shapes = {
            "SDXL-like (1,10,1024,77,64)": (1, 10, 1024, 77, 64, False),
            "PixArt-like (1,8,1024,300,72)": (1, 8, 1024, 300, 72, False),
            "FLUX-like joint (1,4,1024+256,128)": (1, 4, 1024, 256, 128, True),
        }
        dtypes = (torch.float32,)
    print("(a) attention op", flush=True)
    report["attention"] = [
        row
        for dtype in dtypes
        for row in bench_attention_op(device, dtype, shapes, 2 if args.smoke else args.rounds, kernel)
    ]
    report["models"] = []
    if not args.skip_models and not args.smoke:
        print("(b) model steps", flush=True)
        rounds = max(3, args.rounds // 2)
        model_dtype = torch.float16 if device == "cuda" else torch.float32
        report["models"] += sdxl_step(device, model_dtype, full, rounds)
        if device == "cuda":
            torch.cuda.empty_cache()
        report["models"] += flux_step(
            device, torch.bfloat16 if device == "cuda" else torch.float32, full, rounds, depth
        )
    report["seconds"] = time.perf_counter() - start
    write_atomic(args.out / "suite.json", json.dumps(report, indent=1))
    write_atomic(args.out / "suite.md", markdown(report))
    print(f"wrote {args.out / 'suite.md'} and suite.json in {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
