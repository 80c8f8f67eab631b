"""``pladis generate``: one image with PLADIS, or stock | PLADIS side by side from the same seed."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pladis import __version__

from .common import (
    CLIError,
    check_options,
    check_output,
    fmt,
    names,
    parse_freeu,
    parse_size,
    parse_timesteps,
    pladis_label,
    progress_bar,
    reporting_errors,
    stderr,
    warn,
)
from .loading import build_call_kwargs, call_default, load_pipeline, run_pipeline


class Scheduler(str, Enum):
    keep = "keep"
    euler = "euler"
    euler_trailing = "euler-trailing"
    ddim = "ddim"
    lcm = "lcm"


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Device(str, Enum):
    auto = "auto"
    cuda = "cuda"
    mps = "mps"
    cpu = "cpu"


def generate(
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="The text prompt. (required)")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Hub id (org/name) or local diffusers folder. (required)")
    ] = None,
    compare: Annotated[
        Path | None, typer.Option("--compare", help="Write stock | PLADIS side by side (same seed) to this image.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the PLADIS image alone to this file.")] = None,
    negative: Annotated[str | None, typer.Option("--negative", help="Negative prompt.")] = None,
    scale: Annotated[float, typer.Option(help="PLADIS scale lambda (0 = stock model).")] = 2.0,
    alpha: Annotated[float, typer.Option(help="Entmax alpha in [1, 2] (2 = sparsemax).")] = 1.5,
    steps: Annotated[int | None, typer.Option(help="Inference steps (default: the pipeline's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale (default: the pipeline's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (both images share it).")] = 0,
    size: Annotated[
        str | None, typer.Option(help="1024, or WIDTHxHEIGHT like 768x512 (default: the pipeline's).")
    ] = None,
    pag_scale: Annotated[
        float | None, typer.Option("--pag-scale", help="Perturbed-attention guidance scale (loads the PAG variant).")
    ] = None,
    pag_layers: Annotated[
        str | None, typer.Option("--pag-layers", help="Comma-separated PAG layers, e.g. mid (default: the pipeline's).")
    ] = None,
    freeu: Annotated[str | None, typer.Option(help="Enable FreeU with s1,s2,b1,b2, e.g. 0.9,0.2,1.5,1.6.")] = None,
    scheduler: Annotated[Scheduler, typer.Option(help="Sampler (keep = the model's own).")] = Scheduler.keep,
    lora: Annotated[
        str | None, typer.Option(help="LoRA file, folder, Hub repo or org/repo/file.safetensors; fused into the model.")
    ] = None,
    dtype: Annotated[DType, typer.Option(help="auto: float16/bfloat16 on GPU, float32 on CPU.")] = DType.auto,
    device: Annotated[Device, typer.Option(help="auto: cuda, then mps, then cpu.")] = Device.auto,
    max_sequence_length: Annotated[
        int | None, typer.Option("--max-sequence-length", help="Text length for T5-style encoders (FLUX, SD3, ...).")
    ] = None,
    offload: Annotated[bool, typer.Option(help="Offload idle sub-models to CPU (saves GPU memory).")] = False,
    pladis_layers: Annotated[
        str | None,
        typer.Option(
            "--layers", help="PLADIS only in these layer groups or name patterns: down,mid,up or up_blocks.0.*"
        ),
    ] = None,
    timesteps: Annotated[
        str | None,
        typer.Option(
            "--timesteps",
            help="PLADIS only at steps whose timestep is in LOW,HIGH (0..1000 for every model, 1000 = noise), e.g. 500,1000.",
        ),
    ] = None,
    temperature: Annotated[float, typer.Option(help="Divides the scores of the sparse branch (1 = none).")] = 1.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs and full tracebacks.")] = False,
) -> None:
    """Generate an image with PLADIS, optionally next to the stock image from the same seed."""
    with reporting_errors(verbose):
        if not prompt:
            raise CLIError(
                "missing --prompt: give the text to generate, e.g. --prompt 'a red cube on a blue sphere'", 2
            )
        if not model:
            raise CLIError("missing --model: give a Hub id like 'org/name' or a local diffusers pipeline folder", 2)
        if compare is None and out is None:
            raise CLIError("nothing to write: add --compare out.png (stock | PLADIS) and/or --out pladis.png", 2)
        check_options(scale, alpha, temperature, steps, guidance, seed, pag_scale)
        check_output(compare, "--compare")
        check_output(out, "--out", (compare, "--compare"))
        width, height = parse_size(size) or (None, None)
        freeu_args = parse_freeu(freeu)
        layers = names(pag_layers)
        pladis_options = {
            "layers": names(pladis_layers),
            "timesteps": parse_timesteps(timesteps),
            "temperature": temperature,
        }
        if layers and not pag_scale:
            raise CLIError("--pag-layers needs --pag-scale (e.g. --pag-scale 3.0)", 2)

        t0 = time.perf_counter()
        pipe = load_pipeline(
            model, device=device.value, dtype=dtype.value, scheduler=scheduler.value, pag=bool(pag_scale),
            pag_layers=layers, freeu=freeu_args, lora=lora, offload=offload,
        )  # fmt: skip
        dtype_name = str(pipe.dtype).removeprefix("torch.")
        took = time.perf_counter() - t0
        stderr().print(f"[dim]loaded {type(pipe).__name__} on {pipe.device} ({dtype_name}) in {took:.1f}s")
        call_kwargs, ignored = build_call_kwargs(
            pipe, prompt=prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
            height=height, width=width, pag_scale=pag_scale or None, max_sequence_length=max_sequence_length,
        )  # fmt: skip
        for name in ignored:
            warn(f"{type(pipe).__name__} does not take {name}; ignoring it")

        stock, image = _stock_and_pladis(
            pipe, call_kwargs, seed, scale, alpha, pladis_options, with_stock=compare is not None
        )
        settings = {
            "model": model, "prompt": prompt, "negative_prompt": negative, "seed": seed,
            "steps": call_default(pipe, "num_inference_steps", steps),
            "guidance": call_default(pipe, "guidance_scale", guidance), "size": f"{image.width}x{image.height}",
            "scale": scale, "alpha": alpha, "scheduler": _scheduler_name(pipe.scheduler), "pag_scale": pag_scale or None,
            "freeu": freeu_args, "lora": lora, "pipeline": type(pipe).__name__, "dtype": dtype_name,
            "pladis_version": __version__, **{k: v for k, v in pladis_options.items() if v not in (None, 1.0)},
        }  # fmt: skip
        settings = {k: v for k, v in settings.items() if v is not None}
        _write_outputs(stock, image, settings, compare=compare, out=out)


def _stock_and_pladis(pipe, call_kwargs, seed: int, scale: float, alpha: float, options: dict, *, with_stock: bool):
    """The stock image (if asked; generated before PLADIS touches the model) and the PLADIS one, same seed.

    PLADIS is removed again at the end, whatever happens.
    """
    import pladis

    # Apply once up front so that a model PLADIS cannot work on fails before any generation.
    try:
        pladis.apply(pipe, scale=scale, alpha=alpha, **options)
    except ValueError as e:  # bad --layers and the like: a usage error
        raise CLIError(str(e), 2) from None
    pladis.remove(pipe)
    with progress_bar() as progress:
        try:
            stock = (
                run_pipeline(pipe, call_kwargs, seed, progress=progress, description="stock") if with_stock else None
            )
            pladis.apply(pipe, scale=scale, alpha=alpha, **options)
            image = run_pipeline(pipe, call_kwargs, seed, progress=progress, description=pladis_label(scale, alpha))
        except BaseException:
            progress.live.transient = True  # on failure only the error line is left on screen
            raise
        finally:
            pladis.remove(pipe)
    return stock, image


def _write_outputs(stock, image, settings: dict[str, Any], *, compare: Path | None, out: Path | None) -> None:
    from pladis.compare import grid_layout, labelled_grid, save_image

    label = pladis_label(settings["scale"], settings["alpha"])
    console = Console(highlight=False)
    if out is not None:
        save_image(image, out, {"pladis:settings": settings})
        console.print(f"wrote {out}  ({label}, {image.width}x{image.height})", soft_wrap=True)
    if compare is not None:
        rows, labels, caption = [[stock, image]], ["stock", label], _caption(settings)
        layout = grid_layout(rows, None, labels, caption)
        grid = labelled_grid(rows, None, labels, caption)
        save_image(grid, compare, {"pladis:settings": settings, "pladis:panels": layout.boxes[0]})
        console.print(f"wrote {compare}  (stock | {label}, seed {settings['seed']})", soft_wrap=True)


def _scheduler_name(scheduler) -> str:
    name = type(scheduler).__name__.removesuffix("Scheduler")
    if getattr(scheduler, "config", {}).get("timestep_spacing") == "trailing":
        name += "-trailing"
    return name


def _caption(settings: dict[str, Any]) -> str:
    """Prompt, negative prompt and the settings that reproduce the image, for the strip under a grid."""
    lines = [f"prompt: {settings['prompt']}"]
    if settings.get("negative_prompt"):
        lines.append(f"negative: {settings['negative_prompt']}")
    parts = []
    for key in ("steps", "guidance", "seed", "size", "scheduler", "pag_scale", "freeu", "lora", "model"):
        if key in settings:
            value = settings[key]
            parts.append(f"{key}={','.join(map(fmt, value.values())) if key == 'freeu' else value}")
    lines.append(" ".join(parts))
    return "\n".join(lines)
