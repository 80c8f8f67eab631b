"""``pladis sweep``: a grid of PLADIS scales (columns) by alphas (rows) per seed, the model loaded once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .common import CLIError, build_preset, fmt, parse_number_list, parse_seeds, progress_bar, reporting_errors, stderr
from .generate import Device, DType, caption, run_settings
from .loading import check_preset, load_preset_pipeline, preset_call_kwargs, run_batch, steps_per_call


def sweep(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for the grids, raw images and index.json.")
    ] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="The text prompt.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="A reference example by name, e.g. sdxl-cfg.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Hub id or local diffusers folder.")] = None,
    scales: Annotated[str, typer.Option("--scales", help="PLADIS scales, the grid's columns.")] = "0,1,1.5,2,3",
    alphas: Annotated[
        str, typer.Option("--alphas", help="Entmax alphas in [1, 2], the grid's rows.")
    ] = "1.25,1.5,1.75,2",
    seeds: Annotated[str, typer.Option("--seeds", help="Seeds, one grid each: 0,1 or 0-3.")] = "0,1",
    negative: Annotated[str | None, typer.Option("--negative", help="Negative prompt.")] = None,
    steps: Annotated[int | None, typer.Option(help="Inference steps (default: the preset's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale (default: the preset's).")] = None,
    size: Annotated[str | None, typer.Option(help="1024, or WIDTHxHEIGHT like 768x512.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="keep, euler, euler-trailing, ddim, lcm or a class.")] = None,
    spacing: Annotated[str | None, typer.Option(help="trailing, leading or linspace.")] = None,
    lora: Annotated[
        str | None, typer.Option(help="LoRA file, folder, Hub repo or org/repo/file.safetensors; fused.")
    ] = None,
    pag_scale: Annotated[float | None, typer.Option("--pag-scale", help="PAG scale.")] = None,
    seg_scale: Annotated[float | None, typer.Option("--seg-scale", help="SEG scale.")] = None,
    max_sequence_length: Annotated[int | None, typer.Option("--max-sequence-length")] = None,
    pladis_layers: Annotated[str | None, typer.Option("--layers", help="PLADIS layer groups or patterns.")] = None,
    timesteps: Annotated[str | None, typer.Option("--timesteps", help="PLADIS timestep window LOW,HIGH.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Temperature of the sparse branch.")] = None,
    control_image: Annotated[Path | None, typer.Option("--control-image", help="ControlNet image.")] = None,
    dtype: Annotated[DType | None, typer.Option(help="Default: the preset's on a GPU, float32 on CPU.")] = None,
    device: Annotated[Device, typer.Option(help="auto: cuda, then mps, then cpu.")] = Device.auto,
    offload: Annotated[bool, typer.Option(help="Offload idle sub-models to CPU.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Library logs and full tracebacks.")] = False,
) -> None:
    """Generate a scale x alpha grid per seed: one labelled PNG each, the raw images and index.json in --out."""
    with reporting_errors(verbose):
        from pladis.attention import check_scale
        from pladis.entmax import check_alpha

        resolved = build_preset(
            preset, model, negative=negative, steps=steps, guidance=guidance, size=size, scheduler=scheduler,
            spacing=spacing, lora=lora, pag_scale=pag_scale, seg_scale=seg_scale,
            max_sequence_length=max_sequence_length, pladis_layers=pladis_layers, pladis_timesteps=timesteps,
            temperature=temperature, dtype=dtype.value if dtype else None,
        )  # fmt: skip
        check_preset(resolved, control_image=control_image)
        scale_list = _unique(parse_number_list(scales, "--scales") or [])
        alpha_list = _unique(parse_number_list(alphas, "--alphas") or [])
        for option, check, values in (("--scales", check_scale, scale_list), ("--alphas", check_alpha, alpha_list)):
            for value in values:
                try:
                    check(value)
                except ValueError as e:
                    raise CLIError(f"{option}: {e}", 2) from None
        seed_list = parse_seeds(seeds, 0)
        if not prompt:
            raise CLIError(
                "missing --prompt: give the text to generate, e.g. --prompt 'a red cube on a blue sphere'", 2
            )
        if out is None:
            raise CLIError("missing --out: give a folder for the grids, e.g. --out sweep/", 2)
        _check_folder(out)
        if resolved.video:
            raise CLIError(f"sweep makes image grids; {resolved.name} is a video preset (use pladis generate)", 2)
        if control_image is not None and not control_image.expanduser().is_file():
            raise CLIError(f"invalid --control-image {str(control_image)!r}: no such file", 2)

        pipe = load_preset_pipeline(resolved, device=device.value, dtype=dtype.value if dtype else None,
                                    offload=offload)  # fmt: skip
        call_kwargs = preset_call_kwargs(pipe, resolved, control_image=control_image)
        settings = run_settings(pipe, resolved, call_kwargs, control_image=control_image)
        settings = {k: v for k, v in settings.items() if k not in ("scale", "alpha")}
        index = run_sweep(pipe, call_kwargs, prompt, scale_list, alpha_list, seed_list, out, settings, resolved)
        Console(highlight=False).print(
            f"wrote {len(index['grids'])} grid(s), {len(index['images'])} images and {out / 'index.json'}"
        )


def _unique(values: list[float]) -> list[float]:
    return list(dict.fromkeys(values))


def _check_folder(out: Path) -> None:
    path = out.expanduser()
    if path.exists() and not path.is_dir():
        raise CLIError(f"invalid --out {str(out)!r}: that is a file; give a folder", 2)
    existing = next((p for p in (path.resolve(), *path.resolve().parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK):
        raise CLIError(f"invalid --out {str(out)!r}: that folder cannot be created or written", 2)


def image_name(seed: int, alpha: float, scale: float) -> str:
    """The raw image's file name; the stock image (scale 0) is shared by every alpha."""
    if scale == 0:
        return f"seed{seed}_stock.png"
    return f"seed{seed}_alpha{fmt(alpha)}_scale{fmt(scale)}.png"


def _reusable(path: Path, settings: dict[str, Any]):
    """The image at ``path`` if an earlier run wrote it with the same settings (resume), else None."""
    from PIL import Image

    from pladis import metadata

    if not path.is_file():
        return None
    try:
        stored = metadata.read(path)["settings"] or {}
    except OSError:
        return None
    stored.pop("versions", None)
    if stored != json.loads(json.dumps(settings, default=str)):
        return None
    with Image.open(path) as im:
        return im.convert("RGB")


def run_sweep(pipe, call_kwargs, prompt, scales, alphas, seeds, out: Path, settings, preset) -> dict[str, Any]:
    """Every (seed, alpha, scale) image; PLADIS applied once, then re-set with ``handle.alpha`` and
    ``pladis.set_scale``.  Scale 0 is the untouched model, so it is generated once per seed and shared by the
    rows.  Images an earlier run wrote with the same settings are reused.  Returns the index written."""
    import pladis
    from pladis import metadata
    from pladis.compare import enlarged, grid_layout, labelled_grid, save_image
    from pladis.files import atomic_write

    out = out.expanduser()
    (out / "images").mkdir(parents=True, exist_ok=True)
    steps = steps_per_call(pipe, call_kwargs)
    nonzero = [s for s in scales if s != 0]
    calls = len(seeds) * ((0 in scales) + len(alphas) * len(nonzero))
    handle = pladis.apply(pipe, scale=nonzero[0] if nonzero else 0.0, alpha=alphas[0], layers=preset.pladis_layers,
                          timesteps=preset.pladis_timesteps, temperature=preset.temperature)  # fmt: skip
    index: dict[str, Any] = {"prompt": prompt, "scales": scales, "alphas": alphas, "seeds": seeds,
                             "settings": settings, "grids": [], "images": []}  # fmt: skip
    try:
        with progress_bar() as progress:
            task = progress.add_task(f"sweep {len(alphas)}x{len(scales)} x {len(seeds)} seed(s)", total=calls * steps)
            for seed in seeds:
                images: dict[tuple[float, float], Any] = {}
                for alpha in alphas:
                    handle.alpha = alpha
                    for scale in scales:
                        if scale == 0 and (alphas[0], 0.0) in images:  # the stock image: made for the first row
                            images[alpha, scale] = images[alphas[0], 0.0]
                            index["images"].append({"seed": seed, "alpha": alpha, "scale": scale,
                                                    "path": f"images/{image_name(seed, alpha, 0.0)}"})  # fmt: skip
                            continue
                        image_settings = {"prompt": prompt, "seed": seed, **settings, "scale": scale,
                                          "alpha": alpha if scale else None}  # fmt: skip
                        image_settings = {k: v for k, v in image_settings.items() if v is not None}
                        path = out / "images" / image_name(seed, alpha, scale)
                        image = _reusable(path, image_settings)
                        if image is None:
                            pladis.set_scale(pipe, scale)
                            image = run_batch(pipe, call_kwargs, [prompt], [seed], progress=progress, task=task)[0]
                            save_image(image, path, metadata.png_chunks(image_settings))
                        else:
                            progress.advance(task, steps)
                        images[alpha, scale] = image
                        index["images"].append({"seed": seed, "alpha": alpha, "scale": scale,
                                                "path": path.relative_to(out).as_posix()})  # fmt: skip
                rows = [[enlarged(images[a, s]) for s in scales] for a in alphas]
                row_labels = [f"α={fmt(a)}" for a in alphas]
                col_labels = [f"λ={fmt(s)}" + (" (stock)" if s == 0 else "") for s in scales]
                text = caption({"prompt": prompt, "seed": seed, **settings})
                grid = labelled_grid(rows, row_labels, col_labels, text)
                layout = grid_layout(rows, row_labels, col_labels, text)
                grid_path = out / f"grid_seed{seed}.png"
                grid_settings = {"prompt": prompt, "seed": seed, **settings, "scales": scales, "alphas": alphas}
                save_image(
                    grid, grid_path, {**metadata.png_chunks(grid_settings), "pladis:panels": json.dumps(layout.boxes)}
                )
                index["grids"].append({"seed": seed, "path": grid_path.name, "rows": "alpha", "columns": "scale"})
                atomic_write(out / "index.json", lambda temp: temp.write_text(json.dumps(index, indent=2)))
    finally:
        pladis.remove(pipe)
    stderr().print(f"[dim]{calls} pipeline call(s) of {steps} step(s)")
    return index
