"""CLI commands of the embedded demo model: ``pladis demo``, ``pladis train-demo``, ``pladis bench-alignment``.

Plain functions with typer-annotated parameters; ``pladis.cli`` registers them. The model, its data and
benchmark live in ``pladis.demo`` and know nothing of the CLI.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_PROMPTS = [
    "a red circle left of a blue square",
    "a yellow triangle above a green circle",
    "a purple square at the bottom",
    "three cyan circles",
    "a red triangle and a blue circle",  # both colour-shape pairs are held out of training
]


SEED_LIMIT = 2**63  # what torch.Generator.manual_seed takes; per-image seeds are taken mod 2**63


def _floats(s: str, option: str) -> list[float]:
    from .common import CLIError

    try:
        values = [float(x) for x in s.replace(" ", "").split(",") if x]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise CLIError(f"invalid {option} {s!r}: expected comma-separated finite numbers such as 0,1,2", 2)
    return values


def _check_counts(**counts: int) -> None:
    """Each named option (``batch_size`` -> ``--batch-size``) must be at least 1."""
    from .common import CLIError

    for name, value in counts.items():
        if value < 1:
            raise CLIError(f"invalid --{name.replace('_', '-')} {value}: must be at least 1", 2)


def _check_seed(seed: int) -> None:
    from .common import CLIError

    if not 0 <= seed < SEED_LIMIT:
        raise CLIError(f"invalid --seed {seed}: give a seed from 0 to 2**63-1 ({SEED_LIMIT - 1})", 2)


def demo(
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", "-p", help="Prompt (repeatable). Default: four scene prompts.")
    ] = None,
    scale: Annotated[
        float | None, typer.Option(help="PLADIS scale lambda (0 = stock). Default: the measured study's setting.")
    ] = None,
    alpha: Annotated[
        float | None, typer.Option(help="entmax alpha of the sparse branch. Default: the measured study's.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the comparison grid (PNG).")] = Path(
        "demo.png"
    ),
    steps: Annotated[
        int | None, typer.Option(help="Denoising steps (DPM-Solver++). Default: the measured study's.")
    ] = None,
    cfg: Annotated[
        float | None, typer.Option(help="Classifier-free guidance scale. Default: the measured study's.")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed, 0..2**63-1; image i uses seed + i, the same for stock and PLADIS.")
    ] = 0,
    samples: Annotated[int, typer.Option(help="Images per prompt and setting.")] = 2,
    cell: Annotated[int, typer.Option(help="Displayed size of each 32x32 image, in pixels.")] = 128,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps (auto: cuda, then mps, then cpu).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Folder with demo weights (default: the embedded ones).")] = None,
    study: Annotated[
        Path | None,
        typer.Option(help="Measured study JSON that sets PLADIS and captions the columns (default: the shipped one)."),
    ] = None,
) -> None:
    """Generate with the embedded tiny text-to-image model, stock vs PLADIS, into a labelled grid (offline, CPU-fast).

    The PLADIS setting and each column's measured benchmark accuracy come from a committed study result
    (``pladis/weights/demo_study.json``); if no measured setting beats stock, the image says so.
    """
    from PIL import Image

    import pladis

    from ..api import check_alpha, check_scale
    from ..compare import labelled_grid, save_image
    from ..demo import model as demo_model
    from ..demo.bench import generate
    from ..demo.checker import judge
    from ..demo.scenes import parse_caption
    from ..demo.study import StudyError, caption_lines, load_study
    from .common import CLIError, check_output, pick_device, reporting_errors

    with reporting_errors():  # one clear line for bad input, no traceback, before any image is generated
        try:
            if scale is not None:
                check_scale(scale)
            if alpha is not None:
                check_alpha(alpha)
        except ValueError as e:
            raise CLIError(str(e), 2) from None
        _check_counts(samples=samples, cell=cell, **({} if steps is None else {"steps": steps}))
        _check_seed(seed)
        if cfg is not None and not math.isfinite(cfg):
            raise CLIError(f"invalid --cfg {cfg}: must be a finite number", 2)
        check_output(out, "--out")
        try:
            measured = load_study(study)
        except StudyError as e:
            raise CLIError(f"invalid --study: {e}", 2) from None
        scale = measured.scale if scale is None else scale
        alpha = measured.alpha if alpha is None else alpha
        cfg = measured.cfg if cfg is None else cfg
        steps = measured.steps if steps is None else steps
        prompts = list(prompt) if prompt else list(DEFAULT_PROMPTS)
        dev = pick_device(device or "auto")
        t0 = time.time()
        pipe = demo_model.load_demo_pipeline(weights, device=dev)
        rep = [p for p in prompts for _ in range(samples)]
        seeds = [(seed + i) % SEED_LIMIT for i in range(len(rep))]
        stock = generate(pipe, rep, seeds, steps, cfg, batch_size=64)
        backend = pladis.get_backend()
        if backend == "auto":  # a run of seconds: compiling the fused kernel would cost more than it saves
            pladis.set_backend("eager")
        try:
            with pladis.apply(pipe, scale=scale, alpha=alpha, **measured.apply_options()):
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
            v = judge(imgs[idx], [s for s in specs if s is not None]) if idx else []
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
        unet_file = Path(weights or demo_model.WEIGHTS_DIR) / demo_model.UNET_FILE
        same_weights = unet_file.exists() and measured.matches(unet_file)
        caption = "\n".join(
            [
                f"embedded demo model | PLADIS {measured.setting(scale, alpha)} | cfg={cfg:g}, {steps} steps, seed={seed}",
                *caption_lines(measured, scale, alpha, cfg, steps, same_weights),
            ]
        )
        grid = labelled_grid(rows, row_labels=labels, col_labels=cols, caption=caption)
        meta = {
            "prompts": prompts,
            "scale": scale,
            "alpha": alpha,
            **measured.apply_options(),
            "cfg": cfg,
            "seed": seed,
            "study": str(measured.path),
            "caption": caption,
        }
        save_image(grid, out, metadata=meta)
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
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Images per step (default: the checkpoint's when resuming, else 256; the shipped model: 1024)."
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Peak learning rate, AdamW with warmup then cosine (default: the checkpoint's, else 1e-3)."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of data, noise and initialisation, 0..2**63-1 (default: the checkpoint's, else 0)."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps (auto: cuda, then mps, then cpu).")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from <out>/ckpt.safetensors; --no-resume starts a fresh checkpoint and log.")
    ] = True,
    save_every: Annotated[int, typer.Option(help="Also save the checkpoint every N steps (0: only by time).")] = 1000,
    save_minutes: Annotated[
        float, typer.Option(help="Save the checkpoint at least this often (it is also saved on Ctrl-C/SIGTERM).")
    ] = 5.0,
    log_every: Annotated[int, typer.Option(help="Write a loss-log row every N steps.")] = 50,
    install: Annotated[
        bool,
        typer.Option(
            help="Copy the exported weights into the package if they validate no worse than the embedded ones."
        ),
    ] = False,
    force: Annotated[bool, typer.Option(help="With --install: install even an untrained or worse model.")] = False,
    config_file: Annotated[
        Path | None, typer.Option(hidden=True, help="JSON model config instead of the default (tests, experiments).")
    ] = None,
    ae_steps: Annotated[
        int | None,
        typer.Option(help="Autoencoder steps before the UNet (default: --ae-share of --steps, or of the time budget)."),
    ] = None,
    ae_batch_size: Annotated[int, typer.Option(help="Images per autoencoder step.")] = 64,
    ae_share: Annotated[
        float | None,
        typer.Option(help="The autoencoder's fraction of the time budget (or of --steps) without --ae-steps [0.2]."),
    ] = None,
) -> None:
    """Train the embedded demo model on procedurally generated scenes (reproducible from the seed, resumable)."""
    from ..demo.model import WEIGHTS_DIR
    from ..demo.train import (
        AE_SHARE,
        CheckpointError,
        InstallRefused,
        TrainOptionError,
        check_options,
        install_weights,
        train,
    )
    from .common import CLIError, pick_device, reporting_errors

    with reporting_errors():
        try:
            check_options(steps, max_minutes, batch_size, lr, seed, log_every, save_every, save_minutes)
        except TrainOptionError as e:
            raise CLIError(str(e), 2) from None
        if ae_steps is not None and ae_steps < 0:
            raise CLIError(f"invalid --ae-steps {ae_steps}: give 0 or more autoencoder steps (or leave it out)", 2)
        _check_counts(ae_batch_size=ae_batch_size)
        if force and not install:
            raise CLIError("--force only applies to --install; add --install, or drop --force", 2)
        if out.exists() and not out.is_dir():
            raise CLIError(f"invalid --out {str(out)!r}: that is a file; give a folder for the run", 2)
        config = None
        if config_file is not None:
            try:
                config = json.loads(config_file.read_text())
            except (OSError, ValueError) as e:
                raise CLIError(f"invalid --config-file {str(config_file)!r}: {e}", 2) from None
        dev = pick_device(device or "auto")
        try:
            meta = train(
                out_dir=out,
                steps=steps,
                max_minutes=max_minutes,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                device=dev,
                resume=resume,
                log_every=log_every,
                save_every=save_every,
                save_minutes=save_minutes,
                config=config,
                ae_steps=ae_steps,
                ae_batch_size=ae_batch_size,
                ae_share=AE_SHARE if ae_share is None else ae_share,
            )
        except TrainOptionError as e:
            raise CLIError(str(e), 2) from None
        except CheckpointError as e:
            raise CLIError(str(e), 1) from None
        if meta.get("interrupted"):
            signum = getattr(signal, meta["interrupted"])
            if install:
                typer.echo("not installed: the run was interrupted", err=True)
            raise typer.Exit(128 + int(signum))
        if install:
            try:
                report = install_weights(out / "weights", WEIGHTS_DIR, force=force, device=dev)
            except InstallRefused as e:
                raise CLIError(str(e), 1) from None
            losses = (
                ""
                if report["new_loss"] is None
                else f" (validation loss {report['new_loss']:.4f}, was {report['old_loss']:.4f})"
            )
            typer.echo(f"installed weights into {WEIGHTS_DIR}{losses}")


def bench_alignment(
    n: Annotated[int, typer.Option(help="Number of prompts (balanced over the five caption kinds).")] = 512,
    scales: Annotated[str, typer.Option(help="Comma-separated PLADIS scales (0 = stock).")] = "0,1,1.5,2,3",
    alphas: Annotated[str, typer.Option(help="Comma-separated entmax alphas.")] = "1.5,2",
    cfg: Annotated[str, typer.Option(help="Comma-separated guidance scales; one table per value.")] = "4",
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 20,
    seed: Annotated[
        int,
        typer.Option(help="Seed, 0..2**63-1 (prompt i uses noise seed + i in every configuration)."),
    ] = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per pipeline call.")] = 64,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for alignment.md, alignment.json and the PNG charts.")
    ] = Path("out/bench-alignment"),
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps (auto: cuda, then mps, then cpu).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Folder with demo weights (default: the embedded ones).")] = None,
) -> None:
    """Score prompt alignment (colour, shape, position, relation, count) of stock vs PLADIS with the exact checker.

    A thin alias of ``pladis eval generate`` + ``score --metrics alignment`` + ``report`` on the embedded model: one
    resumable run folder per guidance value under ``--out`` (``cfg-4/``), and ``alignment.md``/``.json`` there.
    """
    from pladis.evaluation.generate import EvalError, GenerateOptions, check_options, generate_run
    from pladis.evaluation.report import write_report
    from pladis.evaluation.score import ScoreOptions, score_run

    from .. import files
    from ..api import check_alpha, check_scale
    from .common import CLIError, reporting_errors

    with reporting_errors():  # one clear line for bad input, before any image is generated
        scale_values = _floats(scales, "--scales")
        alpha_values = _floats(alphas, "--alphas")
        cfg_values = _floats(cfg, "--cfg")
        try:
            for value in scale_values:
                check_scale(value)
            for value in alpha_values:
                check_alpha(value)
        except ValueError as e:
            raise CLIError(str(e), 2) from None
        _check_counts(n=n, steps=steps, batch_size=batch_size)
        _check_seed(seed)
        if out.exists() and not out.is_dir():
            raise CLIError(f"invalid --out {str(out)!r}: that is a file; give a folder for the reports", 2)
        configs = ["baseline"] + [f"pladis:scale={s:g},alpha={a:g}" for a in alpha_values for s in scale_values if s]
        runs = []
        for c in cfg_values:
            opts = GenerateOptions(
                out=out / f"cfg-{c:g}",
                model="demo",
                prompts=f"demo:{n}",
                configs=list(dict.fromkeys(configs)),
                per_prompt=1,
                seed=seed,
                steps=steps,
                guidance=c,
                batch_size=batch_size,
                device=device or "auto",
                weights=weights,
            )
            try:
                check_options(opts)
            except EvalError as e:
                raise CLIError(str(e), 2) from None
            runs.append((c, opts))
        md = [
            "# Alignment benchmark (embedded demo model)\n",
            f"n={n} prompts, {steps} DPM-Solver++ steps, seed={seed}; the same noise per prompt in every "
            "configuration. Checker accuracy; Δ = paired difference vs stock with its 95% paired-bootstrap interval "
            "over prompts (n.s. = the interval contains 0).\n",
        ]
        results = {}
        for c, opts in runs:
            try:
                generate_run(opts, echo=typer.echo)
                score_run(ScoreOptions(run=opts.out, metrics=["alignment"], device=opts.device), echo=typer.echo)
                res = write_report([opts.out], "baseline")
            except EvalError as e:
                raise CLIError(str(e), 1) from None
            body = res["markdown"].split("\n## ", 1)[1] if "\n## " in res["markdown"] else res["markdown"]
            md += [f"\n## cfg = {c:g}\n", "## " + body]
            results[f"cfg={c:g}"] = {k: v for k, v in res.items() if k != "markdown"}
        files.atomic_write_text(out / "alignment.md", "\n".join(md) + "\n")
        files.write_json(out / "alignment.json", results)
        typer.echo("\n".join(md))
        typer.echo(f"wrote {out}/alignment.md, alignment.json and cfg-*/report/report.png")
