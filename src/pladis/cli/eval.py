"""``pladis eval generate | score | report``: reproduce the paper's tables, resumable, sharded with accelerate.

    pladis eval generate --model demo --prompts demo:200 --config baseline --config pladis:scale=2,alpha=1.5 --out RUN
    pladis eval score RUN --metrics alignment
    pladis eval report RUN --baseline baseline

Multi-GPU (and multi-node over a shared file system): ``accelerate launch -m pladis.cli eval generate ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

eval_app = typer.Typer(
    name="eval",
    help="Generate, score and report paired baseline-vs-PLADIS evaluations (the paper's tables).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs and full tracebacks.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (under accelerate: each process's GPU).")]


@eval_app.command("generate")
def generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (created; an existing one is resumed).")],
    model: Annotated[
        str | None, typer.Option(help="Hub id, local diffusers folder, or 'demo' (the embedded model).")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="A named model + settings (see `pladis generate --help`).")] = None,
    prompts: Annotated[
        str | None,
        typer.Option(help="drawbench, hpd, pickapic, parti, coco30k, coco5k, demo[:N], or a .txt/.csv/.jsonl file."),
    ] = None,
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            "-c",
            help="Repeatable: baseline, or pladis:scale=2,alpha=1.5[,layers=up,temperature=1.2,timesteps=500-1000]. "
            "Default: baseline and pladis:scale=2,alpha=1.5.",
        ),
    ] = None,
    per_prompt: Annotated[
        int | None, typer.Option(help="Images per prompt (default as in the paper: 5, or 1 for COCO/demo/files).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Use only the first N prompts (demo: the number of prompts).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Base seed; image j of prompt i uses seed + i*per_prompt + j.")] = 0,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the pipeline's; demo: 20).")] = None,
    guidance: Annotated[float | None, typer.Option(help="CFG scale (default: the pipeline's; demo: 4).")] = None,
    size: Annotated[str | None, typer.Option(help="Image size: 1024 or WIDTHxHEIGHT (default: the model's).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per pipeline call (fixed for the life of a run).")] = 8,
    device: Device = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float16, bfloat16 or float32.")] = "auto",
    weights: Annotated[Path | None, typer.Option(hidden=True, help="Demo weights folder (tests).")] = None,
    verbose: Verbose = False,
) -> None:
    """Render every (prompt, seed, config) once with paired seeds; killed and restarted, it continues."""
    from pladis.evaluation.generate import EvalError, GenerateOptions, check_options, generate_run

    from .common import CLIError, parse_size, reporting_errors

    with reporting_errors(verbose):
        if model is None and preset is None:
            raise CLIError("give --model ID_OR_FOLDER (a Hub id, a diffusers folder, or demo) or --preset NAME", 2)
        source = prompts or ("demo" if model == "demo" else None)
        if source is None:
            raise CLIError("give --prompts: drawbench, hpd, pickapic, parti, coco30k, coco5k, or a .txt/.csv/.jsonl", 2)
        opts = GenerateOptions(
            out=out,
            model=model or "",
            preset=preset,
            prompts=source,
            configs=list(config) if config else ["baseline", "pladis:scale=2,alpha=1.5"],
            per_prompt=per_prompt,
            limit=limit,
            seed=seed,
            steps=steps,
            guidance=guidance,
            size=parse_size(size),
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            weights=weights,
        )
        try:
            check_options(opts)
        except EvalError as e:
            raise CLIError(str(e), 2) from None
        try:
            generate_run(opts, echo=typer.echo)
        except EvalError as e:
            raise CLIError(str(e), 1) from None


@eval_app.command("score")
def score(
    run: Annotated[Path, typer.Argument(help="Run folder made by `pladis eval generate`.")],
    metrics: Annotated[
        str, typer.Option(help="Comma-separated: clip, pick, imagereward, hps, fid, alignment.")
    ] = "clip,pick,imagereward",
    batch_size: Annotated[int, typer.Option(help="Images per scoring batch.")] = 16,
    device: Device = "auto",
    clip_model: Annotated[
        str | None, typer.Option(help="CLIP for CLIPScore (default openai/clip-vit-large-patch14).")
    ] = None,
    pick_model: Annotated[
        str | None, typer.Option(help="PickScore model (default yuvalkirstain/PickScore_v1).")
    ] = None,
    pick_processor: Annotated[
        str | None, typer.Option(help="PickScore processor (default laion/CLIP-ViT-H-14-laion2B-s32B-b79K).")
    ] = None,
    imagereward_checkpoint: Annotated[
        str | None, typer.Option(help="ImageReward.pt (default: THUDM/ImageReward from the Hub).")
    ] = None,
    imagereward_tokenizer: Annotated[
        str | None, typer.Option(help="BERT tokenizer for ImageReward (default bert-base-uncased).")
    ] = None,
    hps_checkpoint: Annotated[
        str | None, typer.Option(help="HPS_v2.1_compressed.pt (default: xswu/HPSv2 from the Hub).")
    ] = None,
    fid_ref: Annotated[
        Path | None, typer.Option(help="Folder of reference images for FID (e.g. COCO val2014).")
    ] = None,
    fid_weights: Annotated[
        str | None, typer.Option(help="Inception weights file for FID (pt_inception-2015-12-05-6726825d.pth).")
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Score every image of a run; scores are cached per image, so a re-run scores only what is missing."""
    from pladis.evaluation.metrics import MetricError, parse_metrics
    from pladis.evaluation.run import RunError
    from pladis.evaluation.score import ScoreOptions, score_run

    from .common import CLIError, reporting_errors

    with reporting_errors(verbose):
        try:
            names = parse_metrics(metrics)
        except MetricError as e:
            raise CLIError(str(e), 2) from None
        if batch_size < 1:
            raise CLIError(f"invalid --batch-size {batch_size}: must be at least 1", 2)
        if not (run / "images").is_dir():
            raise CLIError(f"{run}: not a run folder (no images/); make one with `pladis eval generate --out {run}`", 2)
        if "fid" in names and fid_ref is None:
            raise CLIError("--metrics fid needs --fid-ref FOLDER of reference images (e.g. MS-COCO val2014)", 2)

        def given(**kw):
            return {k: v for k, v in kw.items() if v is not None}

        options = {
            "clip": given(model=clip_model),
            "pick": given(model=pick_model, processor=pick_processor),
            "imagereward": given(checkpoint=imagereward_checkpoint, tokenizer=imagereward_tokenizer),
            "hps": given(checkpoint=hps_checkpoint),
            "fid": given(reference=str(fid_ref) if fid_ref else None, weights=fid_weights),
        }
        try:
            score_run(
                ScoreOptions(run=run, metrics=names, device=device, batch_size=batch_size, backend_options=options),
                echo=typer.echo,
            )
        except (MetricError, RunError) as e:
            raise CLIError(str(e), 1) from None


@eval_app.command("report")
def report(
    runs: Annotated[
        list[Path], typer.Argument(help="One or more run folders (configs are paired by prompt and seed).")
    ],
    baseline: Annotated[str, typer.Option(help="The config the others are compared with.")] = "baseline",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for report.md/.json/.png (default: RUN/report).")
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples (over prompts).")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    verbose: Verbose = False,
) -> None:
    """Markdown + JSON + PNG: baseline row, "+ PLADIS" rows with signed deltas and 95 % paired-bootstrap intervals."""
    from pladis.evaluation.report import ReportError, write_report
    from pladis.evaluation.run import RunError

    from .common import CLIError, reporting_errors

    with reporting_errors(verbose):
        if bootstrap < 100:
            raise CLIError(f"invalid --bootstrap {bootstrap}: use at least 100 resamples (2000 is the default)", 2)
        for r in runs:
            if not (r / "images").is_dir():
                raise CLIError(f"{r}: not a run folder (no images/); make one with `pladis eval generate`", 2)
        try:
            result = write_report(list(runs), baseline, out, bootstrap, seed)
        except (ReportError, RunError) as e:
            raise CLIError(str(e), 1) from None
        typer.echo(result["markdown"])
        typer.echo("wrote " + ", ".join(result["files"]))
