"""Objective offline alignment benchmark: stock vs PLADIS on the demo model, judged by ``checker``.

For a fixed, balanced prompt set (``scenes.benchmark_prompts``) and one seed per prompt, every configuration
(scale, alpha) generates from the *same* initial noise; scale 0 is the untouched model. Each image is judged
per category (colour, shape, position, relation, count, all). We report accuracy with a 95 % bootstrap CI
over prompts, and the paired difference against stock with its own paired-bootstrap 95 % CI.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import files
from .checker import CATEGORIES, judge
from .scenes import Spec, benchmark_prompts


@torch.no_grad()
def generate(
    pipe, prompts: list[str], seeds: list[int], steps: int = 20, cfg: float = 4.0, batch_size: int = 64
) -> torch.Tensor:
    """Images (n, 3, H, W) in [0, 1]; prompt i always starts from the noise of seeds[i], whatever the batching."""
    if not prompts or len(prompts) != len(seeds) or steps < 1 or batch_size < 1:
        raise ValueError(
            f"generate needs at least one prompt, one seed per prompt, steps >= 1 and batch_size >= 1 "
            f"(got {len(prompts)} prompts, {len(seeds)} seeds, steps={steps}, batch_size={batch_size})"
        )
    dev = pipe._execution_device
    out = []
    for i in range(0, len(prompts), batch_size):
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[i : i + batch_size]]
        h = w = pipe.unet.config.sample_size * pipe.vae_scale_factor
        shape = (len(gens), pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
        latents = torch.stack([torch.randn(shape[1:], generator=g) for g in gens]).to(dev, pipe.unet.dtype)
        res = pipe(
            prompts[i : i + batch_size],
            height=h,
            width=w,
            num_inference_steps=steps,
            guidance_scale=cfg,
            latents=latents,
            output_type="pt",
        )
        out.append(res.images.float().cpu())
    return torch.cat(out)


def _bootstrap(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    if len(x) == 0:
        return float("nan"), float("nan")
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    m = x[idx].mean(1)
    return float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))


def summarize(verdicts: dict[str, list[dict]], stock_key: str, n_boot: int = 2000, seed: int = 0) -> dict:
    """verdicts: config name -> per-prompt verdict dicts (same prompt order). Returns nested stats."""
    rng = np.random.default_rng(seed)
    stats: dict[str, dict[str, dict]] = {}
    base = verdicts[stock_key]
    for name, v in verdicts.items():
        stats[name] = {}
        for cat in CATEGORIES:
            idx = [i for i, r in enumerate(v) if r[cat] is not None]
            if not idx:
                continue
            x = np.array([float(v[i][cat]) for i in idx])
            b = np.array([float(base[i][cat]) for i in idx])
            d = x - b
            stats[name][cat] = dict(
                n=len(idx),
                acc=float(x.mean()),
                ci=_bootstrap(x, n_boot, rng),
                diff=float(d.mean()),
                diff_ci=_bootstrap(d, n_boot, rng),
            )
    return stats


def markdown_table(stats: dict, stock_key: str) -> str:
    cats = [c for c in CATEGORIES if c in stats[stock_key]]
    head = "| config | " + " | ".join(f"{c} (n={stats[stock_key][c]['n']})" for c in cats) + " |"
    lines = [head, "|" + "---|" * (len(cats) + 1)]
    for name, s in stats.items():
        cells = []
        for c in cats:
            e = s[c]
            cell = f"{e['acc']:.3f} [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]"
            if name != stock_key:
                cell += f"<br>Δ {e['diff']:+.3f} [{e['diff_ci'][0]:+.3f}, {e['diff_ci'][1]:+.3f}]"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(stats: dict, path: str | Path, title: str = "") -> Path:
    """A grouped bar chart (categories x configs) with 95 % CI whiskers, drawn with PIL."""
    from PIL import Image, ImageDraw

    from ..compare import load_font

    cats = [c for c in CATEGORIES if c in next(iter(stats.values()))]
    names = list(stats)
    W, H, left, bottom, top = 140 * len(cats) + 220, 420, 50, 40, 40
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = load_font(12)
    ph = H - bottom - top
    palette = [
        (90, 90, 90),
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (188, 189, 34),
        (23, 190, 207),
        (0, 0, 128),
        (128, 0, 0),
    ]
    for k in range(0, 11, 2):
        y = top + ph - ph * k / 10
        d.line([(left, y), (left + 140 * len(cats), y)], fill=(225, 225, 225))
        d.text((5, y - 6), f"{k / 10:.1f}", fill="black", font=font)
    bw = 120 / max(1, len(names))
    for ci, c in enumerate(cats):
        x0 = left + 140 * ci + 10
        d.text((x0 + 30, H - bottom + 8), c, fill="black", font=font)
        for ni, n in enumerate(names):
            e = stats[n][c]
            col = palette[ni % len(palette)]
            xa = x0 + ni * bw
            y = top + ph * (1 - e["acc"])
            d.rectangle([xa, y, xa + bw - 2, top + ph], fill=col)
            lo, hi = (top + ph * (1 - e["ci"][0]), top + ph * (1 - e["ci"][1]))
            xm = xa + bw / 2 - 1
            d.line([(xm, lo), (xm, hi)], fill="black")
    lx = left + 140 * len(cats) + 10
    for ni, n in enumerate(names):
        d.rectangle([lx, top + 18 * ni, lx + 12, top + 18 * ni + 12], fill=palette[ni % len(palette)])
        d.text((lx + 16, top + 18 * ni), n, fill="black", font=font)
    if title:
        d.text((left, 10), title, fill="black", font=font)
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    return files.atomic_write(path, lambda tmp: img.save(tmp, format=fmt))


def run_benchmark(
    pipe,
    n: int = 512,
    scales=(0.0, 1.0, 1.5, 2.0, 3.0),
    alphas=(1.5, 2.0),
    cfg: float = 4.0,
    steps: int = 20,
    seed: int = 0,
    batch_size: int = 64,
    out_dir: str | Path | None = None,
    progress=print,
) -> dict:
    import pladis

    specs: list[Spec] = benchmark_prompts(n)
    prompts = [s.caption() for s in specs]
    if n < 1:
        raise ValueError(f"n={n}: the benchmark needs at least 1 prompt")
    seeds = [(seed * 100_003 + i) % 2**63 for i in range(n)]
    configs = [("stock", 0.0, None)] + [(f"a={a:g} s={s:g}", s, a) for a in alphas for s in scales if s != 0]
    verdicts, times, images = {}, {}, {}
    for name, s, a in configs:
        t0 = time.time()
        if a is None:
            pladis.remove(pipe)
            imgs = generate(pipe, prompts, seeds, steps, cfg, batch_size)
        else:
            with pladis.apply(pipe, scale=s, alpha=a):
                imgs = generate(pipe, prompts, seeds, steps, cfg, batch_size)
        verdicts[name] = judge(imgs, specs)
        images[name] = imgs[:16]
        times[name] = time.time() - t0
        progress(f"{name}: {time.time() - t0:.1f}s, all={np.mean([r['all'] for r in verdicts[name]]):.3f}")
    stats = summarize(verdicts, "stock")
    table = markdown_table(stats, "stock")
    result = dict(n=n, cfg=cfg, steps=steps, seed=seed, stats=stats, table=table, seconds=times, samples=images)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files.atomic_write_text(
            out / "alignment.md",
            f"# Alignment benchmark (demo model)\n\nn={n} prompts, cfg={cfg}, {steps} DPM-Solver++ steps, seed={seed}; "
            "accuracy [95% bootstrap CI]; Δ = paired difference vs stock [95% paired-bootstrap CI].\n\n" + table + "\n",
        )
        files.write_json(out / "alignment.json", {k: v for k, v in result.items() if k not in ("table", "samples")})
        chart(stats, out / "alignment.png", f"demo model, n={n}, cfg={cfg}: accuracy with 95% CI")
        result["files"] = [str(out / f) for f in ("alignment.md", "alignment.json", "alignment.png")]
    return result
