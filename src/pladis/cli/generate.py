"""``pladis generate``: images with PLADIS, or stock | PLADIS side by side from the same seed, from a preset or model."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pladis import __version__

from .common import (
    CLIError,
    build_preset,
    check_output,
    fmt,
    parse_seeds,
    pladis_label,
    progress_bar,
    quiet_libraries,
    reporting_errors,
    stderr,
)
from .loading import (
    check_preset,
    load_preset_pipeline,
    preset_call_kwargs,
    run_batch,
    steps_per_call,
)

VIDEO_SUFFIXES = (".mp4", ".gif")


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


_PRESET_HELP = "A reference example by name (see README), e.g. sdxl-dmd2; any other flag overrides its settings."
_PAG_LAYERS_HELP = (
    "Comma-separated PAG layers: regular expressions searched in the UNet's self-attention module names, e.g. "
    "mid, up_blocks.0, down_blocks.2.attentions.1 (default: the pipeline's, mid)."
)


def generate(
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="The text prompt.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Hub id (org/name) or local diffusers folder.")
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help=_PRESET_HELP)] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved settings as JSON and exit (loads no model).")
    ] = False,
    compare: Annotated[
        Path | None, typer.Option("--compare", help="Write stock | PLADIS side by side (same seed) to this image.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the PLADIS image (or .mp4/.gif video) to this file.")
    ] = None,
    negative: Annotated[str | None, typer.Option("--negative", help="Negative prompt (FLUX: with true CFG).")] = None,
    scale: Annotated[float | None, typer.Option(help="PLADIS scale lambda (0 = stock model; default 2).")] = None,
    alpha: Annotated[float | None, typer.Option(help="Entmax alpha in [1, 2] (2 = sparsemax; default 1.5).")] = None,
    steps: Annotated[int | None, typer.Option(help="Inference steps (default: the preset's or pipeline's).")] = None,
    guidance: Annotated[
        float | None, typer.Option(help="Guidance scale (default: the preset's or pipeline's).")
    ] = None,
    true_cfg: Annotated[
        float | None, typer.Option("--true-cfg", help="True CFG scale for FLUX-style pipelines (needs --negative).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (stock and PLADIS share it).")] = 0,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Several seeds: 0-7, 0,3,9 or 0-3,10.")] = None,
    prompts_file: Annotated[
        Path | None,
        typer.Option("--prompts-file", help="Prompts from a .txt (one a line), .csv (a 'prompt' column) or .jsonl."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per pipeline call.")] = 1,
    size: Annotated[str | None, typer.Option(help="1024, or WIDTHxHEIGHT like 768x512.")] = None,
    num_frames: Annotated[int | None, typer.Option("--num-frames", help="Frames of a video pipeline.")] = None,
    fps: Annotated[int, typer.Option("--fps", help="Frames per second of a written video.")] = 16,
    pag_scale: Annotated[
        float | None, typer.Option("--pag-scale", help="Perturbed-attention guidance scale (loads the PAG variant).")
    ] = None,
    pag_layers: Annotated[str | None, typer.Option("--pag-layers", help=_PAG_LAYERS_HELP)] = None,
    seg_scale: Annotated[float | None, typer.Option("--seg-scale", help="Smoothed energy guidance scale.")] = None,
    seg_blur_sigma: Annotated[
        float | None, typer.Option("--seg-blur-sigma", help="SEG blur sigma (>= 1e4: infinite blur).")
    ] = None,
    seg_layers: Annotated[str | None, typer.Option("--seg-layers", help="SEG layers, e.g. mid (default).")] = None,
    freeu: Annotated[str | None, typer.Option(help="Enable FreeU with s1,s2,b1,b2, e.g. 0.9,0.2,1.5,1.6.")] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="keep, euler, euler-trailing, ddim, ddim-trailing, lcm or a diffusers scheduler class."),
    ] = None,
    spacing: Annotated[
        str | None, typer.Option("--spacing", help="Scheduler timestep spacing: trailing, leading or linspace.")
    ] = None,
    timesteps_list: Annotated[
        str | None, typer.Option("--timesteps-list", help="Explicit sampling timesteps, e.g. 999,749,499,249.")
    ] = None,
    sigmas: Annotated[str | None, typer.Option("--sigmas", help="Explicit sampling sigmas, decreasing.")] = None,
    lora: Annotated[
        str | None, typer.Option(help="LoRA file, folder, Hub repo or org/repo/file.safetensors; fused into the model.")
    ] = None,
    vae: Annotated[str | None, typer.Option("--vae", help="Replace the VAE (Hub id or folder).")] = None,
    controlnet: Annotated[str | None, typer.Option("--controlnet", help="ControlNet (Hub id or folder).")] = None,
    controlnet_scale: Annotated[
        float | None, typer.Option("--controlnet-scale", help="ControlNet conditioning scale.")
    ] = None,
    control_image: Annotated[
        Path | None, typer.Option("--control-image", help="ControlNet conditioning image, used as it is.")
    ] = None,
    depth_from: Annotated[
        Path | None,
        typer.Option("--depth-from", help="A photo whose estimated depth conditions a depth ControlNet."),
    ] = None,
    dtype: Annotated[
        DType | None, typer.Option(help="Default: the preset's on a GPU (float16/bfloat16), float32 on CPU.")
    ] = None,
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
    temperature: Annotated[
        float | None, typer.Option(help="Divides the scores of the sparse branch (1 = none).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs and full tracebacks.")] = False,
) -> None:
    """Generate images with PLADIS, optionally next to the stock image from the same seed."""
    with reporting_errors(verbose):
        resolved = build_preset(
            preset, model, negative=negative, scale=scale, alpha=alpha, steps=steps, guidance=guidance,
            true_cfg=true_cfg, size=size, num_frames=num_frames, pag_scale=pag_scale, pag_layers=pag_layers,
            seg_scale=seg_scale, seg_blur_sigma=seg_blur_sigma, seg_layers=seg_layers, freeu=freeu,
            scheduler=scheduler, spacing=spacing, timesteps_list=timesteps_list, sigmas=sigmas, lora=lora, vae=vae,
            controlnet=controlnet, controlnet_scale=controlnet_scale, dtype=dtype.value if dtype else None,
            max_sequence_length=max_sequence_length, pladis_layers=pladis_layers, pladis_timesteps=timesteps,
            temperature=temperature,
        )  # fmt: skip
        check_preset(resolved, control_image=control_image, depth_from=depth_from)
        if dry_run:
            from pladis.presets import describe

            try:
                with quiet_libraries(not verbose):
                    described = describe(resolved)
            except ValueError as e:  # e.g. custom timesteps on a scheduler that takes none
                raise CLIError(str(e), 2) from None
            print(json.dumps(described, indent=2))
            return
        prompts = read_prompts(prompt, prompts_file)
        seed_list = parse_seeds(seeds, seed)
        if batch_size < 1:
            raise CLIError(f"invalid --batch-size {batch_size}: need at least 1", 2)
        if fps < 1:
            raise CLIError(f"invalid --fps {fps}: need at least 1", 2)
        if compare is None and out is None:
            raise CLIError("nothing to write: add --compare out.png (stock | PLADIS) and/or --out pladis.png", 2)
        check_output(compare, "--compare")
        check_video_or_image(out, "--out", resolved.video, compare)
        for path, option in ((control_image, "--control-image"), (depth_from, "--depth-from"), (prompts_file, None)):
            if path is not None and option and not path.expanduser().is_file():
                raise CLIError(f"invalid {option} {str(path)!r}: no such file", 2)
        if resolved.licence and "non-commercial" in resolved.licence.lower():
            stderr().print(f"[yellow]licence: {resolved.licence}")

        t0 = time.perf_counter()
        pipe = load_preset_pipeline(resolved, device=device.value, dtype=dtype.value if dtype else None,
                                    offload=offload)  # fmt: skip
        dtype_name = str(pipe.dtype).removeprefix("torch.")
        stderr().print(f"[dim]loaded {type(pipe).__name__} on {pipe.device} ({dtype_name}) "
                       f"in {time.perf_counter() - t0:.1f}s")  # fmt: skip
        call_kwargs = preset_call_kwargs(pipe, resolved, control_image=control_image, depth_from=depth_from)
        common_settings = run_settings(pipe, resolved, call_kwargs, control_image=control_image,
                                       depth_from=depth_from, batch_size=batch_size)  # fmt: skip
        jobs = [(i, p, s) for i, p in enumerate(prompts) for s in seed_list]
        _generate_all(pipe, resolved, call_kwargs, jobs, common_settings, compare=compare, out=out,
                      batch_size=batch_size, n_prompts=len(prompts), n_seeds=len(seed_list), fps=fps)  # fmt: skip


# --------------------------------------------------------------------------- inputs


def read_prompts(prompt: str | None, prompts_file: Path | None) -> list[str]:
    """``--prompt`` and/or the prompts of ``--prompts-file`` (.txt: a line each; .csv: a ``prompt`` column or the
    first; .jsonl: objects with a ``prompt`` key, or strings).  Empty lines and ``#`` comments in .txt are skipped."""
    prompts = [prompt] if prompt else []
    if prompts_file is not None:
        path = prompts_file.expanduser()
        if not path.is_file():
            raise CLIError(f"invalid --prompts-file {str(prompts_file)!r}: no such file", 2)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CLIError(
                f"invalid --prompts-file {str(prompts_file)!r}: cannot read it as UTF-8 text ({e})", 2
            ) from None
        prompts += _parse_prompts(text, path.suffix.lower(), str(prompts_file))
    if not prompts:
        raise CLIError("missing --prompt: give the text to generate, e.g. --prompt 'a red cube on a blue sphere' "
                       "(or --prompts-file prompts.txt)", 2)  # fmt: skip
    return prompts


def _parse_prompts(text: str, suffix: str, name: str) -> list[str]:
    if suffix == ".csv":
        import csv
        import io

        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        column = header.index("prompt") if "prompt" in header else 0
        body = rows[1:] if "prompt" in header else rows
        return [r[column].strip() for r in body if len(r) > column and r[column].strip()]
    if suffix in (".jsonl", ".ndjson"):
        prompts = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise CLIError(f"invalid --prompts-file {name!r}: line {number} is not JSON", 2) from None
            value = item.get("prompt") if isinstance(item, dict) else item
            if not isinstance(value, str) or not value.strip():
                raise CLIError(f'invalid --prompts-file {name!r}: line {number} has no "prompt" string', 2)
            prompts.append(value.strip())
        return prompts
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def check_video_or_image(path: Path | None, option: str, video: bool, *others) -> None:
    """A video name (.mp4 needs imageio-ffmpeg, .gif needs nothing) or an image name PIL can write."""
    if path is None:
        return
    from pladis.compare import can_write_mp4

    if path.suffix.lower() == ".mp4" and not can_write_mp4():
        raise CLIError(f"{option} {str(path)!r}: writing mp4 needs imageio-ffmpeg (pip install imageio-ffmpeg); "
                       "or name a .gif", 2)  # fmt: skip
    if path.suffix.lower() in VIDEO_SUFFIXES:
        if not video and path.suffix.lower() == ".mp4":
            raise CLIError(f"{option} {str(path)!r}: this pipeline makes images; name a .png, .jpg or .webp file", 2)
        return
    check_output(path, option, *[(o, "--compare") for o in others])


# --------------------------------------------------------------------------- settings on the image


def scheduler_name(scheduler) -> str:
    name = type(scheduler).__name__.removesuffix("Scheduler")
    spacing = getattr(scheduler, "config", {}).get("timestep_spacing")
    if spacing in ("trailing", "linspace"):
        name += f"-{spacing}"
    return name


def run_settings(pipe, preset, call_kwargs: dict[str, Any], *, control_image=None, depth_from=None,
                 batch_size: int = 1) -> dict[str, Any]:  # fmt: skip
    """Every setting that decides the images of this run (prompt and seed are added per image)."""
    from .loading import call_default

    width = call_kwargs.get("width")
    height = call_kwargs.get("height")
    settings: dict[str, Any] = {
        "preset": preset.name if preset.name != "custom" else None, "model": preset.model,
        "pipeline": type(pipe).__name__, "negative_prompt": call_kwargs.get("negative_prompt"),
        "steps": steps_per_call(pipe, call_kwargs),
        "guidance": call_default(pipe, "guidance_scale", call_kwargs.get("guidance_scale")),
        "true_cfg": call_kwargs.get("true_cfg_scale"),
        "size": f"{width}x{height}" if width and height else None,
        "num_frames": call_kwargs.get("num_frames"),
        "scale": preset.scale, "alpha": preset.alpha,
        "layers": list(preset.pladis_layers) if preset.pladis_layers else None,
        "timesteps": list(preset.pladis_timesteps) if preset.pladis_timesteps else None,
        "temperature": preset.temperature if preset.temperature != 1.0 else None,
        "scheduler": scheduler_name(pipe.scheduler),
        "timesteps_list": call_kwargs.get("timesteps"), "sigmas": call_kwargs.get("sigmas"),
        "pag_scale": preset.pag_scale, "pag_layers": list(preset.pag_layers) if preset.pag_scale and preset.pag_layers else None,
        "seg_scale": preset.seg_scale, "seg_blur_sigma": preset.seg_blur_sigma if preset.seg_scale else None,
        "seg_layers": list(preset.seg_layers or ("mid",)) if preset.seg_scale else None,
        "freeu": dict(zip(("s1", "s2", "b1", "b2"), preset.freeu)) if preset.freeu else None,
        "lora": preset.lora, "lora_scale": preset.lora_scale if preset.lora and preset.lora_scale != 1.0 else None,
        "vae": preset.vae, "controlnet": preset.controlnet,
        "controlnet_scale": call_kwargs.get("controlnet_conditioning_scale"),
        "control_image": Path(control_image).name if control_image is not None else None,
        "depth_from": Path(depth_from).name if depth_from is not None else None,
        "depth_estimator": preset.depth_estimator if depth_from is not None else None,
        "max_sequence_length": call_kwargs.get("max_sequence_length"),
        "dtype": str(pipe.dtype).removeprefix("torch."), "batch_size": batch_size if batch_size > 1 else None,
        "pladis_version": __version__,
    }  # fmt: skip
    return {k: v for k, v in settings.items() if v is not None}


#: settings not printed in the caption's settings line (the prompt lines show the first two).
_NOT_IN_CAPTION = ("prompt", "negative_prompt", "pladis_version", "versions", "pipeline")


def caption(settings: dict[str, Any]) -> str:
    """Prompt, negative prompt and every setting that decides the image, for the strip under a grid."""
    lines = [f"prompt: {settings['prompt']}"]
    if settings.get("negative_prompt"):
        lines.append(f"negative: {settings['negative_prompt']}")
    parts = []
    for key, value in settings.items():
        if key in _NOT_IN_CAPTION:
            continue
        if isinstance(value, dict):
            value = (
                ",".join(map(fmt, value.values())) if key == "freeu" else ",".join(f"{k}={v}" for k, v in value.items())
            )
        elif isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        parts.append(f"{key}={value}")
    lines.append(" ".join(parts))
    return "\n".join(lines)


# --------------------------------------------------------------------------- running and writing


def job_path(path: Path, prompt_index: int, seed: int, n_prompts: int, n_seeds: int) -> Path:
    """``path`` for a single image, else ``stem-p003-s7.ext`` (prompt and/or seed only where there are several)."""
    if n_prompts == 1 and n_seeds == 1:
        return path
    tag = (f"-p{prompt_index:03d}" if n_prompts > 1 else "") + (f"-s{seed}" if n_seeds > 1 else "")
    return path.with_name(f"{path.stem}{tag}{path.suffix}")


def _generate_all(pipe, preset, call_kwargs, jobs, common_settings, *, compare, out, batch_size, n_prompts, n_seeds,
                  fps) -> None:  # fmt: skip
    """Every (prompt, seed) job in batches under one progress bar: stock (when comparing) then PLADIS."""
    import pladis

    options = {"layers": preset.pladis_layers, "timesteps": preset.pladis_timesteps,
               "temperature": preset.temperature}  # fmt: skip
    # Apply once up front so that a model PLADIS cannot work on fails before any generation.
    try:
        pladis.apply(pipe, scale=preset.scale, alpha=preset.alpha, **options)
    except ValueError as e:  # bad --layers and the like: a usage error
        raise CLIError(str(e), 2) from None
    pladis.remove(pipe)
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    passes = 2 if compare is not None else 1
    total = sum(steps_per_call(pipe, call_kwargs) for _ in batches) * passes
    stdout = Console(highlight=False)
    with progress_bar() as progress:
        task = progress.add_task(f"{len(jobs)} image(s)" + (" x stock|PLADIS" if passes == 2 else ""), total=total)
        try:
            for batch in batches:
                prompts, seeds = [p for _, p, _ in batch], [s for _, _, s in batch]
                stock = (
                    run_batch(pipe, call_kwargs, prompts, seeds, progress=progress, task=task) if passes == 2 else None
                )
                with pladis.apply(pipe, scale=preset.scale, alpha=preset.alpha, **options):
                    images = run_batch(pipe, call_kwargs, prompts, seeds, progress=progress, task=task)
                for k, (index, text, seed) in enumerate(batch):
                    settings = {"prompt": text, "seed": seed, **common_settings}
                    paths = (job_path(out, index, seed, n_prompts, n_seeds) if out else None,
                             job_path(compare, index, seed, n_prompts, n_seeds) if compare else None)  # fmt: skip
                    for line in write_outputs(stock[k] if stock else None, images[k], settings, *paths, fps=fps):
                        stdout.print(line, soft_wrap=True)
        except BaseException:
            progress.live.transient = True  # on failure only the error line is left on screen
            raise
        finally:
            pladis.remove(pipe)


def write_outputs(stock, image, settings: dict[str, Any], out: Path | None, compare: Path | None,
                  *, fps: int = 16) -> list[str]:  # fmt: skip
    """Write the PLADIS image (or video) and the stock | PLADIS grid; returns a line per file written."""
    from pladis import metadata
    from pladis.compare import can_write_mp4, enlarged, frame_strip, grid_layout, labelled_grid, save_image, save_video

    label = pladis_label(settings["scale"], settings["alpha"])
    chunks = metadata.png_chunks(settings)
    written = []
    video = isinstance(image, list)
    if out is not None:
        if video:
            if out.suffix.lower() not in VIDEO_SUFFIXES:
                out = out.with_suffix(".mp4" if can_write_mp4() else ".gif")
            save_video(image, out, fps=fps)
            save_image(image[0], out.with_suffix(".png"), chunks)  # the first frame carries the settings
            written.append(f"wrote {out}  ({label}, {len(image)} frames {image[0].width}x{image[0].height})")
        else:
            save_image(image, out, chunks)
            written.append(f"wrote {out}  ({label}, {image.width}x{image.height})")
    if compare is not None:
        if video:
            stock_frames, frames = frame_strip(stock), frame_strip(image)
            rows = [[enlarged(f) for f in stock_frames], [enlarged(f) for f in frames]]
            row_labels: list[str] | None = ["stock", label]
            col_labels = [f"frame {image.index(f) + 1}/{len(image)}" for f in frames]
        else:
            rows, row_labels, col_labels = [[enlarged(stock), enlarged(image)]], None, ["stock", label]
        text = caption(settings)
        layout = grid_layout(rows, row_labels, col_labels, text)
        grid = labelled_grid(rows, row_labels, col_labels, text)
        panels = layout.boxes[0] if not video else layout.boxes
        save_image(grid, compare, {**chunks, "pladis:panels": json.dumps(panels)})
        written.append(f"wrote {compare}  (stock | {label}, seed {settings['seed']})")
    return written
