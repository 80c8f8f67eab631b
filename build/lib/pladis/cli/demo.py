"""CLI commands of the embedded demo model: ``pladis demo``, ``pladis train-demo``, ``pladis bench-alignment``.

Plain functions with typer-annotated parameters; ``pladis.cli`` registers them. The model, its data and
benchmark live in ``pladis.demo`` and know nothing of the CLI.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_PROMPTS = [
    "a red circle left of a blue square",
    "a yellow triangle above a green circle",
    "a purple square at the bottom",
    "three cyan circles",
]


def _floats(s: str) -> list[float]:
    try:
        return [float(x) for x in s.replace(" ", "").split(",") if x]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers such as 0,1,2 — got {s!r}") from None


def demo(
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", "-p", help="Prompt (repeatable). Default: four scene prompts.")
    ] = None,
    scale: Annotated[float, typer.Option(help="PLADIS scale lambda (0 = stock).")] = 2.0,
    alpha: Annotated[float, typer.Option(help="entmax alpha of the sparse branch.")] = 1.5,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the comparison grid (PNG).")] = Path(
        "demo.png"
    ),
    steps: Annotated[int, typer.Option(help="Denoising steps (DPM-Solver++).")] = 20,
    cfg: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 4.0,
    seed: Annotated[int, typer.Option(help="Seed; prompt i uses seed + i, the same for stock and PLADIS.")] = 0,
    samples: Annotated[int, typer.Option(help="Images per prompt and setting.")] = 2,
    cell: Annotated[int, typer.Option(help="Displayed size of each 32x32 image, in pixels.")] = 128,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps (auto: cuda, then mps, then cpu).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Folder with demo weights (default: the embedded ones).")] = None,
) -> None:
    """Generate with the embedded tiny text-to-image model, stock vs PLADIS, into a labelled grid (offline, CPU-fast)."""
    from PIL import Image

    import pladis

    from ..api import check_alpha, check_scale
    from ..compare import labelled_grid, save_image
    from ..demo.bench import generate
    from ..demo.checker import judge
    from ..demo.model import load_demo_pipeline
    from ..demo.scenes import parse_caption
    from .common import pick_device, reporting_errors

    with reporting_errors():  # one clear line for bad input, no traceback
        check_scale(scale), check_alpha(alpha)  # before any image is generated
        prompts = list(prompt) if prompt else list(DEFAULT_PROMPTS)
        t0 = time.time()
        pipe = load_demo_pipeline(weights, device=pick_device(device or "auto"))
        rep = [p for p in prompts for _ in range(samples)]
        seeds = [seed + i for i in range(len(rep))]
        stock = generate(pipe, rep, seeds, steps, cfg, batch_size=64)
        backend = pladis.get_backend()
        if backend == "auto":  # a run of seconds: compiling the fused kernel would cost more than it saves
            pladis.set_backend("eager")
        try:
            with pladis.apply(pipe, scale=scale, alpha=alpha):
                plad = generate(pipe, rep, seeds, steps, cfg, batch_size=64)
        finally:
            pladis.set_backend(backend)

        def to_pil(x):
            a = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            return Image.fromarray(a).resize((cell, cell), Image.NEAREST)

        specs = [parse_caption(p) for p in rep]
        marks = {}
        for name, imgs in (("stock", stock), ("pladis", plad)):
            idx = [i for i, s in enumerate(specs) if s is not None]
            v = judge(imgs[idx], [specs[i] for i in idx]) if idx else []
            marks[name] = {i: r["all"] for i, r in zip(idx, v)}
        rows, labels = [], []
        for pi, p in enumerate(prompts):
            row = []
            for imgs in (stock, plad):
                row += [to_pil(imgs[pi * samples + j]) for j in range(samples)]
            rows.append(row)
            ok = [marks[n].get(pi * samples + j) for n in ("stock", "pladis") for j in range(samples)]
            labels.append(p + ("" if None in ok else "\n(checker: " + " ".join("ok" if o else "no" for o in ok) + ")"))
        cols = [f"stock #{j + 1}" for j in range(samples)] + [f"PLADIS #{j + 1}" for j in range(samples)]
        caption = (
            f"embedded demo model | PLADIS scale={scale:g} alpha={alpha:g} | cfg={cfg:g}, {steps} steps, seed={seed}"
        )
        grid = labelled_grid(rows, row_labels=labels, col_labels=cols, caption=caption)
        save_image(grid, out, metadata={"prompts": prompts, "scale": scale, "alpha": alpha, "cfg": cfg, "seed": seed})
        typer.echo(f"wrote {out} ({len(prompts)} prompts x {{stock, PLADIS}} x {samples}) in {time.time() - t0:.1f}s")


def train_demo(
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoint, loss log, exported weights.")] = Path(
        "out/demo-train"
    ),
    steps: Annotated[
        int | None, typer.Option(help="Total steps (default: as many as fit --max-minutes, recorded).")
    ] = None,
    max_minutes: Annotated[
        float, typer.Option(help="Wall-clock budget; the run saves and stops when it is spent.")
    ] = 10.0,
    batch_size: Annotated[int, typer.Option(help="Images per step (the shipped model: 1024 on an H100).")] = 256,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, warmup then cosine).")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of data, noise and initialisation.")] = 0,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps (auto: cuda, then mps, then cpu).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from <out>/ckpt.pt if it exists.")] = True,
    install: Annotated[
        bool, typer.Option(help="Copy the exported weights into the package (replaces the embedded model).")
    ] = False,
) -> None:
    """Train the embedded demo model on procedurally generated scenes (reproducible from the seed, resumable)."""
    import shutil

    from ..demo.model import WEIGHTS_DIR
    from ..demo.train import train
    from .common import reporting_errors

    with reporting_errors():
        meta = train(
            out_dir=str(out),
            steps=steps,
            max_minutes=max_minutes,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            resume=resume,
        )
        if install:
            for f in (out / "weights").iterdir():
                shutil.copy(f, WEIGHTS_DIR / f.name)
            typer.echo(f"installed weights into {WEIGHTS_DIR}")
    typer.echo(json.dumps(meta))


def bench_alignment(
    n: Annotated[int, typer.Option(help="Number of prompts (balanced over the five caption kinds).")] = 512,
    scales: Annotated[str, typer.Option(help="Comma-separated PLADIS scales (0 = stock).")] = "0,1,1.5,2,3",
    alphas: Annotated[str, typer.Option(help="Comma-separated entmax alphas.")] = "1.5,2",
    cfg: Annotated[str, typer.Option(help="Comma-separated guidance scales; one table per value.")] = "4",
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed (prompt i uses noise seed*100003 + i in every configuration).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per pipeline call.")] = 64,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for alignment.md, alignment.json and the PNG charts.")
    ] = Path("out/bench-alignment"),
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps (auto: cuda, then mps, then cpu).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Folder with demo weights (default: the embedded ones).")] = None,
) -> None:
    """Score prompt alignment (colour, shape, position, relation, count) of stock vs PLADIS with the exact checker."""
    from ..api import check_alpha, check_scale
    from ..demo.bench import chart, run_benchmark
    from ..demo.model import load_demo_pipeline
    from .common import pick_device, reporting_errors

    with reporting_errors():  # one clear line for bad input, before any image is generated
        scale_values, alpha_values, cfg_values = _floats(scales), _floats(alphas), _floats(cfg)
        for value in scale_values:
            check_scale(value)
        for value in alpha_values:
            check_alpha(value)
        pipe = load_demo_pipeline(weights, device=pick_device(device or "auto"))
        out.mkdir(parents=True, exist_ok=True)
        md = [
            "# Alignment benchmark (embedded demo model)\n",
            f"n={n} prompts, {steps} DPM-Solver++ steps, seed={seed}. Each cell: accuracy [95% bootstrap CI]; "
            "Δ = paired difference vs stock on the same prompts and noise [95% paired-bootstrap CI].\n",
        ]
        allres = {}
        for c in cfg_values:
            res = run_benchmark(
                pipe,
                n=n,
                scales=scale_values,
                alphas=alpha_values,
                cfg=c,
                steps=steps,
                seed=seed,
                batch_size=batch_size,
                progress=lambda m, c=c: typer.echo(f"[cfg {c:g}] {m}"),
            )
            md += [f"\n## cfg = {c:g}\n", res["table"], ""]
            chart(res["stats"], out / f"alignment_cfg{c:g}.png", f"demo model, n={n}, cfg={c:g}: accuracy, 95% CI")
            allres[f"cfg={c:g}"] = {k: v for k, v in res.items() if k not in ("table", "samples")}
        (out / "alignment.md").write_text("\n".join(md) + "\n")
        (out / "alignment.json").write_text(json.dumps(allres, indent=1))
        typer.echo("\n".join(md))
        typer.echo(f"wrote {out}/alignment.md, alignment.json and alignment_cfg*.png")
