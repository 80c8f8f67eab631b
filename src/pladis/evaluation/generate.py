"""``pladis eval generate``: every (prompt, seed, config) once, paired seeds, atomic writes, resumable, sharded.

Work is cut into fixed batches per config (batch k = samples k*B .. k*B+B-1 of the run's sample order), and the
batches that are not finished are split between ``accelerate`` processes with
``PartialState.split_between_processes``. A batch is always generated whole (on resume, only its missing samples are
written), so an image does not depend on how many processes ran, or on where an earlier run was killed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import run as runlib
from .configs import EvalConfig, apply_kwargs, parse_configs
from .prompts import Prompt, check_source, default_per_prompt, load_prompts

DEMO = "demo"
DEMO_DEFAULTS = {"steps": 20, "guidance": 4.0}


class EvalError(ValueError):
    """An expected failure of ``pladis eval`` (bad option, unusable run folder); one line."""


@dataclass
class GenerateOptions:
    out: Path
    model: str = DEMO
    prompts: str = "demo"
    configs: list[str] = field(default_factory=lambda: ["baseline", "pladis:scale=2,alpha=1.5"])
    preset: str | None = None
    per_prompt: int | None = None
    limit: int | None = None
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    size: tuple[int, int] | None = None  # (width, height)
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    weights: Path | None = None  # demo weights folder


def load_for_eval(
    model: str, preset: str | None = None, *, device: str = "auto", dtype: str = "auto", weights: Path | None = None
) -> tuple[Any, dict[str, Any]]:
    """The pipeline to evaluate and its generation defaults (``steps``, ``guidance``; None = the pipeline's own;
    ``extra``: further call kwargs, e.g. a preset's timesteps or max_sequence_length).

    ``model`` is ``demo`` (the embedded model) or a Hub id / local diffusers folder. ``preset`` (a named model +
    settings from ``pladis.presets``) loads that preset's pipeline, scheduler, LoRA and call settings, with
    ``model`` (if given) in place of the preset's model; the preset's PLADIS scale is not used (``--config`` is).
    """
    if preset is not None:
        return _load_preset(preset, model, device=device, dtype=dtype)
    if model == DEMO:
        from pladis.demo.model import load_demo_pipeline

        from ..cli.common import pick_device

        try:
            pipe = load_demo_pipeline(weights, device=pick_device(device))
        except FileNotFoundError as e:
            raise EvalError(str(e)) from None
        pipe.set_progress_bar_config(disable=True)
        return pipe, dict(DEMO_DEFAULTS)
    from ..cli.loading import load_pipeline

    return load_pipeline(model, device=device, dtype=dtype), {"steps": None, "guidance": None}


def _load_preset(preset: str, model: str | None, *, device: str, dtype: str) -> tuple[Any, dict[str, Any]]:
    from .. import presets
    from ..cli.common import CLIError

    overrides: dict[str, Any] = {"model": model} if model else {}
    try:
        pipe, call_kwargs = presets.load(preset, device=device, dtype=None if dtype == "auto" else dtype, **overrides)
    except (CLIError, KeyError, ValueError) as e:
        raise EvalError(str(e).strip("'\"")) from None
    steps, guidance = call_kwargs.pop("num_inference_steps", None), call_kwargs.pop("guidance_scale", None)
    return pipe, {"steps": steps, "guidance": guidance, "extra": call_kwargs}


def check_options(opts: GenerateOptions) -> list[EvalConfig]:
    """Everything that can be checked before a model loads; returns the parsed configs."""
    from .. import presets
    from .configs import ConfigError
    from .prompts import PromptError

    try:
        configs = parse_configs(opts.configs)
        check_source(opts.prompts)
        if opts.preset is not None:
            presets.get(opts.preset)
    except (ConfigError, PromptError, ValueError) as e:
        raise EvalError(str(e)) from None
    for name, value in (("--per-prompt", opts.per_prompt), ("--limit", opts.limit)):
        if value is not None and value < 1:
            raise EvalError(f"invalid {name} {value}: must be at least 1")
    if opts.per_prompt is not None and opts.per_prompt > 999:
        raise EvalError(f"invalid --per-prompt {opts.per_prompt}: at most 999 images per prompt")
    if opts.batch_size < 1:
        raise EvalError(f"invalid --batch-size {opts.batch_size}: must be at least 1")
    if opts.steps is not None and opts.steps < 1:
        raise EvalError(f"invalid --steps {opts.steps}: need at least 1 inference step")
    if not 0 <= opts.seed < runlib.SEED_MODULUS:
        raise EvalError(f"invalid --seed {opts.seed}: must be in 0..2**63-1")
    if opts.out.exists() and not opts.out.is_dir():
        raise EvalError(f"invalid --out {str(opts.out)!r}: that is a file; give a folder for the run")
    return configs


def _resolve_prompts(opts: GenerateOptions, old_spec: dict | None) -> list[Prompt]:
    from .prompts import PromptError

    stored = runlib.read_prompts(opts.out)
    if stored is not None and old_spec is not None and old_spec.get("prompts") == _prompt_key(opts):
        return stored  # resuming: the list saved at the start, no network needed
    try:
        return load_prompts(opts.prompts, opts.limit, opts.seed)
    except PromptError as e:
        raise EvalError(str(e)) from None


def _prompt_key(opts: GenerateOptions) -> str:
    return opts.prompts if opts.limit is None else f"{opts.prompts}[:{opts.limit}]"


def _call_kwargs(pipe, steps, guidance, size, extra=None) -> tuple[dict[str, Any], int | None, float | None]:
    from ..cli.loading import build_call_kwargs, call_default

    width, height = size if size else (None, None)
    kwargs, _ignored = build_call_kwargs(
        pipe, num_inference_steps=steps, guidance_scale=guidance, width=width, height=height, output_type="pil"
    )
    kwargs = {**(extra or {}), **kwargs}
    return kwargs, call_default(pipe, "num_inference_steps", steps), call_default(pipe, "guidance_scale", guidance)


def generate_run(opts: GenerateOptions, *, show_progress: bool = True, echo=print) -> dict:
    """Generate (or finish) the run in ``opts.out``; returns the manifest (on the main process; counts elsewhere)."""
    from accelerate import PartialState

    import pladis

    configs = check_options(opts)
    state = PartialState(cpu=opts.device == "cpu")
    per_prompt = opts.per_prompt or default_per_prompt(opts.prompts)
    try:
        old_spec = runlib.read_spec(opts.out)
    except runlib.RunError as e:
        raise EvalError(str(e)) from None
    prompts = _resolve_prompts(opts, old_spec)
    device = str(state.device) if opts.device == "auto" and state.num_processes > 1 else opts.device
    pipe, defaults = load_for_eval(opts.model, opts.preset, device=device, dtype=opts.dtype, weights=opts.weights)
    steps = opts.steps if opts.steps is not None else defaults["steps"]
    guidance = opts.guidance if opts.guidance is not None else defaults["guidance"]
    call_kwargs, steps, guidance = _call_kwargs(pipe, steps, guidance, opts.size, defaults.get("extra"))
    for c in configs:  # a layer group the model lacks fails now, not after hours of baseline images
        if not c.is_baseline:
            try:
                pladis.apply(pipe, **apply_kwargs(c))
            except ValueError as e:
                raise EvalError(f"--config {c.spec!r}: {e}") from None
            finally:
                pladis.remove(pipe)
    new_spec = {
        "out": str(opts.out),
        "model": opts.model,
        "preset": opts.preset,
        "prompts": _prompt_key(opts),
        "per_prompt": per_prompt,
        "seed": opts.seed,
        "steps": steps,
        "guidance": guidance,
        "size": list(opts.size) if opts.size else None,
        "batch_size": opts.batch_size,
        "configs": [{"name": c.name, "spec": c.spec, "apply": c.apply} for c in configs],
        "versions": runlib.versions(),
    }
    try:
        spec = runlib.merge_spec(old_spec, new_spec)
    except runlib.RunError as e:
        raise EvalError(str(e)) from None
    batch_size = int(spec.get("batch_size") or opts.batch_size)  # the first run's batches, so images stay identical
    all_samples = runlib.samples(prompts, per_prompt, opts.seed)
    if state.is_main_process:
        Path(opts.out).mkdir(parents=True, exist_ok=True)
        from pladis import files

        files.write_json(Path(opts.out) / "run.json", spec)
        runlib.write_prompts(opts.out, prompts)
        runlib.clean_orphans(opts.out, [c.name for c in configs])
    state.wait_for_everyone()

    batches = [all_samples[i : i + batch_size] for i in range(0, len(all_samples), batch_size)]
    pending = [
        (ci, bi)
        for ci, c in enumerate(configs)
        for bi, batch in enumerate(batches)
        if any(runlib.committed(opts.out, c.name, s) is None for s in batch)
    ]
    sidecar_base = {
        "model": opts.model,
        "steps": steps,
        "guidance": guidance,
        "versions": runlib.versions(),
    }
    written = 0
    t0 = time.time()
    backend = pladis.get_backend()
    if backend == "auto" and pipe.device.type == "cpu":
        # torch.compile's recompiles for a new batch shape can move the last bits of an image; eager keeps every
        # image the same whichever process or resumed run makes it
        pladis.set_backend("eager")
    sidecar_base["pladis_backend"] = pladis.get_backend()
    try:
        written = _generate_batches(
            opts, state, pipe, pending, batches, configs, call_kwargs, sidecar_base, show_progress
        )
    finally:
        pladis.set_backend(backend)
    state.wait_for_everyone()
    manifest: dict = {}
    if state.is_main_process:
        manifest = runlib.write_manifest(opts.out, spec, all_samples)
        echo(
            f"{opts.out}: {manifest['done']}/{manifest['total']} images done "
            f"({len(prompts)} prompts x {per_prompt} x {len(spec['configs'])} configs; "
            f"{written} written by this process in {time.time() - t0:.1f}s)"
        )
    state.wait_for_everyone()
    return manifest


def eval_progress_for(state, show: bool):
    from .progress import eval_progress

    return eval_progress("img", disable=not (show and state.is_local_main_process))


def _generate_batches(opts, state, pipe, pending, batches, configs, call_kwargs, sidecar_base, show_progress) -> int:
    import torch

    import pladis

    written = 0
    with state.split_between_processes(pending) as mine:
        todo = sum(len(batches[bi]) for _, bi in mine)
        current: int | None = None
        with eval_progress_for(state, show_progress) as progress:
            task = progress.add_task(f"generating (rank {state.process_index})", total=todo)
            for ci, bi in mine:
                config = configs[ci]
                if ci != current:
                    pladis.remove(pipe)
                    if not config.is_baseline:
                        pladis.apply(pipe, **apply_kwargs(config))
                    current = ci
                progress.update(task, description=f"{config.name}")
                batch = batches[bi]
                generators = [torch.Generator("cpu").manual_seed(s.seed) for s in batch]
                with torch.no_grad():
                    images = pipe(prompt=[s.prompt.text for s in batch], generator=generators, **call_kwargs).images
                for s, image in zip(batch, images):
                    if runlib.committed(opts.out, config.name, s) is not None:
                        continue
                    sidecar = {
                        "prompt": s.prompt.text,
                        "seed": s.seed,
                        "config": config.name,
                        "category": s.prompt.category,
                        "prompt_index": s.prompt.index,
                        "image_index": s.image,
                        "sample_id": s.sample_id,
                        "config_spec": config.spec,
                        "pladis": config.apply,
                        "width": image.width,
                        "height": image.height,
                        **sidecar_base,
                    }
                    runlib.write_sample(opts.out, config.name, image, sidecar)
                    written += 1
                progress.advance(task, len(batch))
            pladis.remove(pipe)
    return written
