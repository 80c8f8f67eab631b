"""``pladis maps``: per-token cross-attention maps, baseline and PLADIS side by side (paper Fig. 10), plus arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .common import (
    CLIError,
    check_options,
    check_output,
    names,
    parse_size,
    pladis_label,
    progress_bar,
    reporting_errors,
    warn,
)
from .loading import build_call_kwargs, load_pipeline, run_pipeline


def maps(
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="The text prompt. (required)")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Hub id (org/name) or local diffusers folder. (required)")
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="A named model + settings (see `pladis generate --help`).")
    ] = None,
    tokens: Annotated[
        str | None, typer.Option("--tokens", "-t", help="Comma-separated words of the prompt, e.g. dog,rabbit.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="The figure (PNG); the arrays go next to it as .npz.")
    ] = None,
    scale: Annotated[float, typer.Option(help="PLADIS scale lambda of the PLADIS row.")] = 2.0,
    alpha: Annotated[float, typer.Option(help="Entmax alpha in [1, 2].")] = 1.5,
    steps: Annotated[int | None, typer.Option(help="Inference steps (default: the pipeline's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale (default: the pipeline's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (both rows share it).")] = 0,
    size: Annotated[str | None, typer.Option(help="1024, or WIDTHxHEIGHT (default: the pipeline's).")] = None,
    max_sequence_length: Annotated[
        int | None, typer.Option("--max-sequence-length", help="Text length for T5-style encoders (FLUX, SD3, ...).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs and full tracebacks.")] = False,
) -> None:
    """Cross-attention maps of chosen prompt words, averaged over steps and layers: baseline row, PLADIS row."""
    with reporting_errors(verbose):
        if not prompt:
            raise CLIError("missing --prompt: e.g. --prompt 'a small dog next to a big rabbit'", 2)
        if not model and not preset:
            raise CLIError(
                "missing --model: give a Hub id like 'org/name', a local diffusers pipeline folder, or --preset NAME", 2
            )
        if preset:
            _check_preset(preset)
        words = names(tokens)
        if not words:
            raise CLIError("missing --tokens: comma-separated words of the prompt, e.g. --tokens dog,rabbit", 2)
        if out is None:
            raise CLIError("missing --out: the figure to write, e.g. --out maps.png", 2)
        if out.suffix.lower() != ".png":
            raise CLIError(f"invalid --out {str(out)!r}: write the figure as .png (the arrays go next to it)", 2)
        if dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise CLIError(f"invalid --dtype {dtype!r}: use auto, float32, float16 or bfloat16", 2)
        check_options(scale, alpha, 1.0, steps, guidance, seed, None)
        check_output(out, "--out")
        width, height = parse_size(size) or (None, None)

        pipe, preset_kwargs = _load(model, preset, device, dtype)
        from pladis import maps as pladis_maps

        try:
            positions = pladis_maps.token_positions(pipe, prompt, words)
        except ValueError as e:
            raise CLIError(f"--tokens: {e}", 2) from None
        call_kwargs, ignored = build_call_kwargs(
            pipe, prompt=prompt, num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
            max_sequence_length=max_sequence_length,
        )  # fmt: skip
        for name in ignored:
            warn(f"{type(pipe).__name__} does not take {name}; ignoring it")
        call_kwargs = {**preset_kwargs, **call_kwargs}
        rows, arrays = _record(pipe, call_kwargs, positions, seed, scale, alpha)
        _write(out, rows, arrays, prompt, positions, seed)


def _check_preset(name: str) -> None:
    from pladis import presets

    try:
        presets.get(name)
    except ValueError as e:
        raise CLIError(f"--preset: {e}", 2) from None


def _load(model: str | None, preset: str | None, device: str, dtype: str):
    """The pipeline, and the preset's call settings (scheduler timesteps, steps, CFG, ...) when a preset is named."""
    if not preset:
        assert model is not None
        return load_pipeline(model, device=device, dtype=dtype), {}
    from pladis import presets

    overrides: dict[str, Any] = {"model": model} if model else {}
    return presets.load(preset, device=device, dtype=None if dtype == "auto" else dtype, **overrides)


def _record(pipe, call_kwargs: dict, positions: dict[str, list[int]], seed: int, scale: float, alpha: float):
    """(label, image, token maps) for the baseline (scale 0) and PLADIS, and the raw running sums."""
    import pladis
    from pladis import maps as pladis_maps

    try:
        handle = pladis.apply(pipe, scale=0.0, alpha=alpha)
    except ValueError as e:
        raise CLIError(str(e)) from None
    rows, arrays = [], {}
    with progress_bar() as progress:
        try:
            for label, value in (("baseline", 0.0), (pladis_label(scale, alpha), scale)):
                handle.scale = value
                with pladis_maps.record_maps(pipe, positions) as recorded:
                    image = run_pipeline(pipe, call_kwargs, seed, progress=progress, description=label)
                rows.append((label, image, recorded.token_maps((image.height, image.width))))
                prefix = "baseline/" if value == 0 else "pladis/"
                arrays.update(recorded.arrays(prefix))
                arrays.update({f"{prefix}map.{w}": m for w, m in rows[-1][2].items()})
        except BaseException:
            progress.live.transient = True
            raise
        finally:
            pladis.remove(pipe)
    return rows, arrays


def _write(out: Path, rows, arrays: dict, prompt: str, positions: dict[str, list[int]], seed: int) -> None:
    import json

    import numpy as np

    from pladis import maps as pladis_maps
    from pladis.compare import save_image

    caption = f"prompt: {prompt}\ncross-attention maps averaged over steps and layers; seed={seed}"
    fig = pladis_maps.figure(rows, caption)
    save_image(fig, out, {"pladis:maps": {"prompt": prompt, "tokens": positions, "seed": seed}})
    arrays["tokens"] = np.array(json.dumps(positions))
    npz = pladis_maps.save_npz(out.with_suffix(".npz"), arrays)
    Console(highlight=False).print(f"wrote {out} and {npz}  ({', '.join(positions)})", soft_wrap=True)
