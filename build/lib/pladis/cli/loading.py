"""Loading a diffusers pipeline for the CLI: a Hub id or folder, its scheduler, LoRA, FreeU, PAG, device."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from .common import CLIError, pick_device, stderr

_HUB_ERROR_HINT = "Pass a local path or check the id."


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face Hub answers at all (any HTTP status counts); False in offline mode."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except Exception:
        return False
    return True


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~", "\\"))
        or name.count("/") >= 2
        or "\\" in name
        or bool(re.match(r"^[A-Za-z]:", name))
        or name.endswith((".safetensors", ".ckpt", ".bin", ".pt", ".pth"))
    )


def _offline_message(what: str, name: str) -> str:
    return (
        f"could not load {what} {name!r}: not a local folder and the Hugging Face Hub is unreachable (offline?). "
        f"{_HUB_ERROR_HINT}"
    )


def _resolve_model(model: str) -> tuple[str, dict[str, Any]]:
    """A local pipeline folder or a Hub id, plus ``from_pretrained`` kwargs; fails fast with a clear message."""
    path = Path(model).expanduser()
    if path.exists():
        if path.is_file():
            raise CLIError(
                f"model {model!r} is a single file; pladis needs a diffusers pipeline folder "
                "(with model_index.json) or a Hugging Face Hub id like 'org/name'"
            )
        if not (path / "model_index.json").is_file():
            raise CLIError(
                f"model folder {model!r} is not a diffusers pipeline (no model_index.json in it); "
                "pass the folder that holds model_index.json, or a Hub id like 'org/name'"
            )
        return str(path), {}
    if _looks_like_path(model):
        raise CLIError(
            f"model path {model!r} does not exist; pass an existing diffusers pipeline folder "
            "or a Hugging Face Hub id like 'org/name'"
        )
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        raise CLIError(f"model {model!r} is neither an existing folder nor a valid Hub id like 'org/name'") from None
    cached = isinstance(try_to_load_from_cache(model, "model_index.json"), str)
    if _hub_reachable():
        return model, {}
    if cached:
        return model, {"local_files_only": True}
    raise CLIError(_offline_message("model", model))


def _load_error_message(what: str, name: str, err: BaseException) -> str:
    """One line for a failure to load a model or LoRA, looking through the exception chain for Hub errors."""
    from huggingface_hub import errors as hub_errors

    chain: list[BaseException] = []
    link: BaseException | None = err
    while link is not None and len(chain) < 10:
        chain.append(link)
        link = link.__cause__ or link.__context__
    for e in chain:
        if isinstance(e, hub_errors.GatedRepoError):
            return (
                f"could not load {what} {name!r}: it is gated on the Hugging Face Hub; accept its license on "
                "huggingface.co and log in with `hf auth login`"
            )
        if isinstance(e, hub_errors.RepositoryNotFoundError):
            return f"could not load {what} {name!r}: no such repository on the Hugging Face Hub. {_HUB_ERROR_HINT}"
        offline = (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled, ConnectionError, TimeoutError)
        if isinstance(e, offline) or type(e).__name__ in ("ConnectionError", "ConnectTimeout", "ConnectError"):
            return _offline_message(what, name)
    detail = " ".join(str(err).split()) or type(err).__name__
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return f"could not load {what} {name!r}: {detail}"


def pick_dtype(dtype: str, device: str, transformer_based: bool):
    """``auto``: float32 on cpu; on GPUs float16, or bfloat16 for transformer models (FLUX, SD3, SANA, ...)."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cpu":
        return torch.float32
    if transformer_based and (device != "cuda" or torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _set_scheduler(pipe, name: str) -> None:
    if name == "keep":
        return
    current = pipe.scheduler
    if "FlowMatch" in type(current).__name__:
        if name == "euler":
            return  # flow-matching pipelines already sample with an Euler scheduler
        raise CLIError(
            f"--scheduler {name} does not fit {type(pipe).__name__}, a flow-matching model; "
            "use --scheduler keep (or euler)",
            2,
        )
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler

    cls = {"ddim": DDIMScheduler, "lcm": LCMScheduler}.get(name, EulerDiscreteScheduler)
    extra = {"timestep_spacing": "trailing"} if name == "euler-trailing" else {}
    pipe.scheduler = cls.from_config(current.config, **extra)


def _resolve_lora(lora: str) -> tuple[str, dict[str, Any]]:
    """``load_lora_weights`` arguments for a LoRA file, folder, Hub repo or ``org/repo/file.safetensors``."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise CLIError('--lora needs the peft package: pip install "pladis[lora]" (or pip install peft)')
    path = Path(lora).expanduser()
    if path.exists():
        return str(path), {}
    if lora.startswith((".", "/", "~")) or "\\" in lora or "/" not in lora:
        raise CLIError(f"LoRA path {lora!r} does not exist; pass an existing .safetensors file or folder, or a Hub id")
    if not _hub_reachable():
        raise CLIError(_offline_message("LoRA", lora))
    parts = lora.split("/")
    weight_name = "/".join(parts[2:])  # org/repo/file.safetensors names one file of the repo
    return "/".join(parts[:2]), ({"weight_name": weight_name} if weight_name else {})


def _load_lora(pipe, lora: str, source: str, kwargs: dict[str, Any]) -> None:
    """Load and fuse a LoRA (e.g. a Lightning / Hyper-SD / DMD2 distillation), then drop its adapter layers."""
    if not hasattr(pipe, "load_lora_weights"):
        raise CLIError(f"--lora: {type(pipe).__name__} does not support LoRA weights", 2)
    try:
        pipe.load_lora_weights(source, **kwargs)
        pipe.fuse_lora()
        pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go
    except Exception as e:
        raise CLIError(_load_error_message("LoRA", lora, e)) from e


def load_pipeline(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    scheduler: str = "keep",
    pag: bool = False,
    pag_layers: list[str] | None = None,
    freeu: dict[str, float] | None = None,
    lora: str | None = None,
    offload: bool = False,
):
    """Load a text-to-image pipeline from a Hub id or folder, set it up and move it to its device.

    A Hub model is downloaded first (with the Hub's own progress bars), then
    loaded under a spinner with ``AutoPipelineForText2Image`` (``enable_pag``
    for PAG), falling back to ``DiffusionPipeline``.  Raises
    :class:`CLIError` with a one-line message on any expected failure.
    """
    from diffusers import DiffusionPipeline

    source, hub_kwargs = _resolve_model(model)
    lora_args = _resolve_lora(lora) if lora else None
    device = pick_device(device)
    try:
        config = DiffusionPipeline.load_config(source, **hub_kwargs)
        if not Path(source).is_dir():
            source = DiffusionPipeline.download(source, **hub_kwargs)
    except Exception as e:
        raise CLIError(_load_error_message("model", model, e)) from e
    torch_dtype = pick_dtype(dtype, device, transformer_based="transformer" in config)

    kwargs: dict[str, Any] = dict(torch_dtype=torch_dtype)
    if pag:
        kwargs["enable_pag"] = True
        if pag_layers:
            kwargs["pag_applied_layers"] = pag_layers
    with stderr().status(f"loading {model} ..."):
        pipe = _from_pretrained(source, model, config, kwargs, pag)
        _set_scheduler(pipe, scheduler)
        if freeu is not None:
            if not hasattr(pipe, "enable_freeu"):
                raise CLIError(f"--freeu: {type(pipe).__name__} has no FreeU (UNet pipelines only); drop --freeu", 2)
            pipe.enable_freeu(**freeu)
        if lora and lora_args:
            _load_lora(pipe, lora, *lora_args)
        if offload and device != "cpu":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _from_pretrained(source: str, model: str, config: dict, kwargs: dict[str, Any], pag: bool):
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    try:
        try:
            return AutoPipelineForText2Image.from_pretrained(source, **kwargs)
        except ValueError as e:
            if "AutoPipeline can't find" not in str(e):
                raise
            if pag:
                raise CLIError(
                    f"--pag-scale: diffusers has no PAG variant of {config.get('_class_name', 'this pipeline')}; "
                    "drop --pag-scale",
                    2,
                ) from None
            return DiffusionPipeline.from_pretrained(source, **kwargs)
    except CLIError:
        raise
    except Exception as e:
        raise CLIError(_load_error_message("model", model, e)) from e


def _call_parameters(pipe) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(pipe.__call__).parameters)


def build_call_kwargs(pipe, **candidates) -> tuple[dict[str, Any], list[str]]:
    """Keep the ``candidates`` that ``pipe.__call__`` takes by name and are not None.

    Returns ``(kwargs, ignored)``: ``ignored`` names the non-None candidates the
    pipeline does not accept (e.g. ``negative_prompt`` on FLUX), so one command
    line works on SD1.5, SDXL, FLUX, SD3, SANA, ...
    """
    params = _call_parameters(pipe)
    kwargs = {k: v for k, v in candidates.items() if v is not None and k in params}
    ignored = [k for k, v in candidates.items() if v is not None and k not in params]
    return kwargs, ignored


def call_default(pipe, name: str, value=None):
    """``value`` if given, else the default of ``pipe.__call__``'s parameter ``name`` (None if it has none)."""
    if value is not None:
        return value
    param = _call_parameters(pipe).get(name)
    if param is None or param.default is inspect.Parameter.empty:
        return None
    return param.default


def run_pipeline(pipe, call_kwargs: dict[str, Any], seed: int, *, progress=None, description: str = "generating"):
    """One image from ``pipe(**call_kwargs)`` with a fresh CPU ``torch.Generator`` seeded with ``seed``.

    The same seed gives the same initial noise whatever the device.  With a
    rich ``progress``, a task advances once per denoising step (through
    ``callback_on_step_end`` where the pipeline has it).
    """
    import torch

    kwargs = dict(call_kwargs, generator=torch.Generator("cpu").manual_seed(seed))
    task = total = None
    if progress is not None:
        total = call_default(pipe, "num_inference_steps", kwargs.get("num_inference_steps"))
        task = progress.add_task(description, total=total)
        if "callback_on_step_end" in _call_parameters(pipe):

            def on_step_end(_pipe, _step, _timestep, callback_kwargs):
                progress.advance(task)
                return callback_kwargs

            kwargs["callback_on_step_end"] = on_step_end
    image = pipe(**kwargs).images[0]
    if task is not None:
        progress.update(task, total=total or 1, completed=total or 1)
    return image
