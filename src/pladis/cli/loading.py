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


#: ``--scheduler`` short names -> (diffusers class, config overrides).
SCHEDULER_NAMES: dict[str, tuple[str | None, dict[str, Any]]] = {
    "keep": (None, {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "ddim": ("DDIMScheduler", {}),
    "ddim-trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
    "lcm": ("LCMScheduler", {}),
}


def _set_scheduler(pipe, class_name: str | None, config: dict[str, Any]) -> None:
    """Replace the pipeline's scheduler by ``class_name`` built from its config, with ``config`` on top."""
    if class_name is None and not config:
        return
    import diffusers

    current = pipe.scheduler
    name = class_name or type(current).__name__
    cls = getattr(diffusers, name, None)
    if cls is None or not name.endswith("Scheduler"):
        raise CLIError(f"unknown scheduler {name!r}: use one of {', '.join(SCHEDULER_NAMES)} or a diffusers class", 2)
    flow_now, flow_new = "FlowMatch" in type(current).__name__, "FlowMatch" in name
    if flow_now and not flow_new:
        raise CLIError(
            f"scheduler {name} does not fit {type(pipe).__name__}, a flow-matching model; keep its own scheduler", 2
        )
    pipe.scheduler = cls.from_config(current.config, **config)


def _lora_source(preset) -> tuple[str, dict[str, Any]]:
    """``load_lora_weights`` arguments for the preset's LoRA: a local file/folder, or a Hub repo and file."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise CLIError('LoRA weights need the peft package: pip install "pladis[lora]" (or pip install peft)')
    repo, file = preset.lora_repo, preset.lora_file
    path = Path(repo).expanduser()
    if path.exists():
        return str(path), ({"weight_name": file} if file and path.is_dir() else {})
    if repo.startswith((".", "/", "~")) or "\\" in repo or "/" not in repo:
        raise CLIError(f"LoRA path {repo!r} does not exist; pass an existing .safetensors file or folder, or a Hub id")
    parts = repo.split("/")
    if len(parts) > 2:  # org/repo/file.safetensors names one file of the repo
        repo, file = "/".join(parts[:2]), "/".join(parts[2:])
    kwargs: dict[str, Any] = {"weight_name": file} if file else {}
    if not _hub_reachable():
        from huggingface_hub import try_to_load_from_cache

        if not (file and isinstance(try_to_load_from_cache(repo, file), str)):
            raise CLIError(_offline_message("LoRA", f"{repo}/{file}" if file else repo))
        kwargs["local_files_only"] = True
    return repo, kwargs


def _repo_source(what: str, repo: str, probe: str = "config.json") -> tuple[str, dict[str, Any]]:
    """A local folder, or a Hub id that is reachable or cached; else one line naming the repo id."""
    path = Path(repo).expanduser()
    if path.exists():
        return str(path), {}
    if _looks_like_path(repo):
        raise CLIError(f"{what} path {repo!r} does not exist; pass an existing folder or a Hub id like 'org/name'")
    if _hub_reachable():
        return repo, {}
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, probe), str):
        return repo, {"local_files_only": True}
    raise CLIError(_offline_message(what, repo))


def _load_lora(pipe, preset, source: str, kwargs: dict[str, Any]) -> None:
    """Load the LoRA (e.g. a Lightning / Hyper-SD / DMD2 distillation); fused: its adapter layers go again."""
    if not hasattr(pipe, "load_lora_weights"):
        raise CLIError(f"LoRA: {type(pipe).__name__} does not support LoRA weights", 2)
    try:
        pipe.load_lora_weights(source, **kwargs)
        if preset.lora_fuse:
            pipe.fuse_lora(lora_scale=preset.lora_scale)
            pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go
        elif preset.lora_scale != 1.0:
            pipe.set_adapters(pipe.get_active_adapters(), adapter_weights=[preset.lora_scale])
    except Exception as e:
        raise CLIError(_load_error_message("LoRA", preset.lora, e)) from e


def _enable_seg(pipe, preset) -> None:
    import importlib

    try:
        seg = importlib.import_module("pladis.seg")  # SEG lives in its own module
    except ImportError:
        raise CLIError(
            "SEG (--seg-scale) needs pladis.seg, which this install of pladis lacks; update pladis"
        ) from None
    try:
        seg.enable_seg(pipe, scale=preset.seg_scale, blur_sigma=preset.seg_blur_sigma or 1e10,
                       layers=list(preset.seg_layers or ("mid",)))  # fmt: skip
    except ValueError as e:
        raise CLIError(f"SEG: {e}", 2) from None


def check_preset(preset, *, control_image=None, depth_from=None) -> None:
    """Checks that need no model: flags that contradict the preset fail here, before any loading."""
    if (control_image is not None or depth_from is not None) and not preset.controlnet:
        raise CLIError(
            "--control-image/--depth-from need a ControlNet pipeline: use --preset sdxl-controlnet-depth or "
            "--controlnet REPO",
            2,
        )
    if control_image is not None and depth_from is not None:
        raise CLIError(
            "give --control-image (used as it is) or --depth-from (a photo to estimate depth from), not both", 2
        )
    if depth_from is not None and not preset.depth_estimator:
        raise CLIError("--depth-from needs a depth estimator (the sdxl-controlnet-depth preset has one)", 2)
    if preset.pag_layers and not preset.pag_scale:
        raise CLIError("--pag-layers needs --pag-scale (e.g. --pag-scale 3.0)", 2)
    if preset.timesteps is not None and preset.sigmas is not None:
        raise CLIError("give --timesteps-list or --sigmas, not both", 2)
    for field, option in (("timesteps", "--timesteps-list"), ("sigmas", "--sigmas")):
        if getattr(preset, field) is not None and preset.scheduler:
            import diffusers

            cls = getattr(diffusers, preset.scheduler, None)
            if cls is not None and field not in inspect.signature(cls.set_timesteps).parameters:
                raise CLIError(f"{option}: {preset.scheduler} does not take custom {field}; "
                               "pick another --scheduler or drop the option", 2)  # fmt: skip
    if preset.true_cfg is not None and not preset.negative:
        raise CLIError("--true-cfg needs a negative prompt (--negative 'blurry, low quality')", 2)
    if preset.freeu is not None and preset.pipeline and "Flux" in preset.pipeline:
        raise CLIError(f"--freeu: {preset.pipeline} has no FreeU (UNet pipelines only); drop --freeu", 2)


def load_preset_pipeline(preset, *, device: str = "auto", dtype: str | None = None, offload: bool = False):
    """The pipeline a :class:`pladis.presets.Preset` describes, set up and on its device (PLADIS not applied).

    Every Hub repository the preset names (model, LoRA, VAE, ControlNet) is checked first: one not on this
    machine while the Hub is unreachable fails with one line naming it, before anything is loaded.
    """
    import diffusers

    check_preset(preset)
    lora_args = _lora_source(preset) if preset.lora_repo else None
    if preset.model == DEMO_MODEL:
        if preset.vae or preset.controlnet or preset.pag_scale:
            raise CLIError("the embedded demo model takes no --vae, --controlnet or --pag-scale; drop them", 2)
        device = pick_device(device)
        return _configure(_load_demo(device, dtype), preset, device, offload, lora_args)
    source, hub_kwargs = _resolve_model(preset.model)
    vae_args = _repo_source("VAE", preset.vae) if preset.vae else None
    controlnet_args = _repo_source("ControlNet", preset.controlnet) if preset.controlnet else None
    if preset.pipeline is not None and not hasattr(diffusers, preset.pipeline):
        raise CLIError(f"unknown pipeline class {preset.pipeline!r} in this diffusers {diffusers.__version__}", 2)
    device = pick_device(device)
    try:
        config = diffusers.DiffusionPipeline.load_config(source, **hub_kwargs)
        if not Path(source).is_dir():
            source = diffusers.DiffusionPipeline.download(source, **hub_kwargs)
    except Exception as e:
        raise CLIError(_load_error_message("model", preset.model, e)) from e
    if dtype is None:
        dtype = preset.dtype if device != "cpu" else "auto"
    torch_dtype = pick_dtype(dtype, device, transformer_based="transformer" in config)

    with stderr().status(f"loading {preset.model} ..."):
        kwargs: dict[str, Any] = dict(torch_dtype=torch_dtype)
        if vae_args is not None:
            kwargs["vae"] = _load_part(diffusers.AutoencoderKL, "VAE", preset.vae, vae_args, torch_dtype)
        if controlnet_args is not None:
            controlnet = _load_part(diffusers.ControlNetModel, "ControlNet", preset.controlnet, controlnet_args,
                                    torch_dtype)  # fmt: skip
            kwargs["controlnet"] = controlnet
        pag = bool(preset.pag_scale)
        if pag and preset.pag_layers:
            kwargs["pag_applied_layers"] = list(preset.pag_layers)
        class_name = preset.pipeline
        if class_name is not None and (
            pag != ("PAG" in class_name) or ("controlnet" in kwargs) != ("ControlNet" in class_name)
        ):
            class_name = (
                None  # e.g. --pag-scale or --controlnet on a plain preset: diffusers' AutoPipeline picks the variant
            )
        if class_name is not None:
            pipe = _from_class(getattr(diffusers, class_name), source, preset.model, kwargs)
        else:
            pipe = _from_pretrained(
                source, preset.model, config, dict(kwargs, **({"enable_pag": True} if pag else {})), pag
            )
        if pag and preset.pag_layers:
            _check_pag_layers(pipe, preset.pag_layers)
        return _configure(pipe, preset, device, offload, lora_args)


def _configure(pipe, preset, device: str, offload: bool, lora_args):
    """Scheduler, FreeU, LoRA and SEG of the preset, then the device."""
    _set_scheduler(pipe, preset.scheduler, dict(preset.scheduler_config))
    if preset.freeu is not None:
        if not hasattr(pipe, "enable_freeu"):
            raise CLIError(f"--freeu: {type(pipe).__name__} has no FreeU (UNet pipelines only); drop --freeu", 2)
        pipe.enable_freeu(**dict(zip(("s1", "s2", "b1", "b2"), preset.freeu)))
    if lora_args is not None:
        _load_lora(pipe, preset, *lora_args)
    if preset.seg_scale:
        _enable_seg(pipe, preset)
    if offload and device != "cpu":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


DEMO_MODEL = "demo"  # the embedded model (pladis/weights): a model name like a Hub id, for every command


def _load_demo(device: str, dtype: str | None):
    import torch

    from pladis.demo.model import load_demo_pipeline

    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype or "", torch.float32)
    try:
        return load_demo_pipeline(device=device, dtype=torch_dtype)
    except FileNotFoundError as e:
        raise CLIError(str(e)) from None


PAG_LAYERS_HINT = (
    "PAG layers are regular expressions searched in the names of the denoiser's self-attention modules, "
    "e.g. mid, up_blocks.0, down_blocks.2.attentions.1"
)


def _check_pag_layers(pipe, layers) -> None:
    """Each PAG layer must match a self-attention module, as diffusers' PAG does at call time (checked here first)."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if denoiser is None:
        return
    selfs = [n for n, m in denoiser.named_modules() if getattr(m, "is_cross_attention", None) is False]
    for layer in layers:
        try:
            hit = any(re.search(layer, name) for name in selfs)
        except re.error:
            hit = False
        if not hit:
            raise CLIError(f"--pag-layers: {layer!r} matches no self-attention module; {PAG_LAYERS_HINT}", 2)


def _load_part(cls, what: str, name: str, args: tuple[str, dict[str, Any]], torch_dtype):
    source, kwargs = args
    try:
        return cls.from_pretrained(source, torch_dtype=torch_dtype, **kwargs)
    except Exception as e:
        raise CLIError(_load_error_message(what, name, e)) from e


def _from_class(cls, source: str, model: str, kwargs: dict[str, Any]):
    try:
        return cls.from_pretrained(source, **kwargs)
    except Exception as e:
        raise CLIError(_load_error_message("model", model, e)) from e


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

    The keyword form of :func:`load_preset_pipeline` for a model without a preset.  Raises :class:`CLIError`
    with a one-line message on any expected failure.
    """
    from pladis import presets

    class_name, config = SCHEDULER_NAMES.get(scheduler, (scheduler, {}))
    preset = presets.custom(
        model, scheduler=class_name, scheduler_config=config or None, pag_scale=1.0 if pag else None,
        pag_layers=pag_layers, freeu=tuple(freeu.values()) if freeu else None, lora_repo=lora,
    )  # fmt: skip
    return load_preset_pipeline(preset, device=device, dtype=None if dtype == "auto" else dtype, offload=offload)


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
            kwargs = {k: v for k, v in kwargs.items() if k not in ("enable_pag", "pag_applied_layers")}
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


def preset_call_kwargs(pipe, preset, *, control_image=None, depth_from=None) -> dict[str, Any]:
    """What to pass ``pipe(...)`` besides prompt and generator, for the preset; checked against the pipeline.

    A setting the pipeline's call does not take is an error when it would change the image silently otherwise
    (custom timesteps or sigmas, true CFG, a control image) and a warning else.
    """
    from .common import warn

    params = _call_parameters(pipe)
    name = type(pipe).__name__
    for field, option in (("timesteps", "--timesteps-list"), ("sigmas", "--sigmas")):
        if getattr(preset, field) is None:
            continue
        if field not in params:
            raise CLIError(f"{option}: {name} does not take custom {field}; drop {option}", 2)
        if field not in inspect.signature(pipe.scheduler.set_timesteps).parameters:
            raise CLIError(f"{option}: {type(pipe.scheduler).__name__} does not take custom {field}; "
                           "pick another --scheduler or drop the option", 2)  # fmt: skip
    true_cfg = preset.true_cfg
    if preset.negative and "true_cfg_scale" in params and true_cfg is None:
        true_cfg = 4.0
        warn(f"{name} uses a negative prompt only with true CFG: running it with --true-cfg {true_cfg} "
             "(two model calls per step); pass --true-cfg to choose")  # fmt: skip
    if true_cfg is not None and "true_cfg_scale" not in params:
        raise CLIError(f"--true-cfg: {name} has no true CFG (use --guidance there); drop --true-cfg", 2)
    image = None
    if hasattr(pipe, "controlnet"):
        image = _control_image(pipe, preset, control_image, depth_from)
    elif control_image is not None or depth_from is not None:
        raise CLIError(f"--control-image: {name} is not a ControlNet pipeline; use --preset sdxl-controlnet-depth", 2)
    width, height = preset.size or (None, None)
    kwargs, ignored = build_call_kwargs(
        pipe, negative_prompt=preset.negative, num_inference_steps=preset.steps, guidance_scale=preset.guidance,
        height=height, width=width, pag_scale=preset.pag_scale or None, max_sequence_length=preset.max_sequence_length,
        timesteps=list(preset.timesteps) if preset.timesteps else None,
        sigmas=list(preset.sigmas) if preset.sigmas else None, true_cfg_scale=true_cfg,
        controlnet_conditioning_scale=preset.controlnet_scale if image is not None else None, image=image,
        num_frames=preset.num_frames,
    )  # fmt: skip
    for key in ignored:
        warn(f"{name} does not take {key}; ignoring it")
    return kwargs


def _control_image(pipe, preset, control_image, depth_from):
    from PIL import Image

    if control_image is not None:
        return (
            control_image if isinstance(control_image, Image.Image) else _open_image(control_image, "--control-image")
        )
    if depth_from is not None and preset.depth_estimator:
        photo = depth_from if isinstance(depth_from, Image.Image) else _open_image(depth_from, "--depth-from")
        width, height = preset.size or (1024, 1024)
        return depth_map(photo, preset.depth_estimator, (width, height), str(pipe.device))
    hint = (
        " or --depth-from PHOTO (depth estimated by " + preset.depth_estimator + ")" if preset.depth_estimator else ""
    )
    raise CLIError(f"{type(pipe).__name__} needs a control image: give --control-image IMAGE{hint}", 2)


def _open_image(path, option: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(Path(path).expanduser()) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise CLIError(
            f"invalid {option} {str(path)!r}: cannot read it as an image ({e.__class__.__name__})", 2
        ) from None


def depth_map(photo, estimator: str, size: tuple[int, int], device: str = "cpu"):
    """A 3-channel depth image of ``photo`` at ``size`` (width, height) from a DPT model, scaled to 0..255."""
    import numpy as np
    import torch
    from PIL import Image

    source, kwargs = _repo_source("depth estimator", estimator)
    try:
        from transformers import DPTForDepthEstimation, DPTImageProcessor

        processor = DPTImageProcessor.from_pretrained(source, **kwargs)
        model = DPTForDepthEstimation.from_pretrained(source, **kwargs).to(device).eval()
    except Exception as e:
        raise CLIError(_load_error_message("depth estimator", estimator, e)) from e
    pixels = processor(images=photo, return_tensors="pt").pixel_values.to(device)
    with torch.no_grad():
        depth = model(pixel_values=pixels).predicted_depth[:, None].float()
    depth = torch.nn.functional.interpolate(depth, size=(size[1], size[0]), mode="bicubic", align_corners=False)
    low, span = depth.amin(), depth.amax() - depth.amin()
    depth = ((depth - low) / span if span > 0 else torch.zeros_like(depth))[0, 0].clamp(0, 1).cpu().numpy()
    return Image.fromarray((np.stack([depth] * 3, axis=-1) * 255).round().astype(np.uint8))


def steps_per_call(pipe, call_kwargs: dict[str, Any]) -> int:
    """Denoising steps one call of ``pipe(**call_kwargs)`` runs (for progress totals)."""
    for key in ("timesteps", "sigmas"):
        if call_kwargs.get(key):
            return len(call_kwargs[key])
    return int(call_default(pipe, "num_inference_steps", call_kwargs.get("num_inference_steps")) or 1)


def run_pipeline(pipe, call_kwargs: dict[str, Any], seed: int, *, progress=None, description: str = "generating"):
    """One image (or video: a list of frames) from ``pipe(**call_kwargs)`` with a CPU generator seeded ``seed``."""
    task = progress.add_task(description, total=steps_per_call(pipe, call_kwargs)) if progress is not None else None
    return run_batch(pipe, call_kwargs, [call_kwargs.get("prompt")], [seed], progress=progress, task=task)[0]


def run_batch(pipe, call_kwargs: dict[str, Any], prompts: list, seeds: list[int], *, progress=None, task=None):
    """``len(seeds)`` outputs from one call: prompt ``prompts[i]`` with noise from CPU generator ``seeds[i]``.

    Each sample has its own ``torch.Generator("cpu")``, so a seed gives the same initial noise whatever the batch
    and the device.  An output is a PIL image, or a list of PIL frames for a video pipeline.  With a rich
    ``progress`` and ``task``, the task advances once per denoising step.
    """
    import torch

    kwargs = dict(call_kwargs, generator=[torch.Generator("cpu").manual_seed(s) for s in seeds])
    kwargs["prompt"] = list(prompts) if len(prompts) > 1 else prompts[0]
    if len(seeds) == 1:
        kwargs["generator"] = kwargs["generator"][0]
    if progress is not None and task is not None and "callback_on_step_end" in _call_parameters(pipe):
        start = next(t.completed for t in progress.tasks if t.id == task)
        steps = steps_per_call(pipe, call_kwargs)

        def on_step_end(_pipe, _step, _timestep, callback_kwargs):
            progress.advance(task)
            return callback_kwargs

        kwargs["callback_on_step_end"] = on_step_end
    else:
        start, steps = None, 0
    output = pipe(**kwargs)
    if progress is not None and task is not None and start is not None:
        progress.update(task, completed=start + steps)  # schedulers such as PNDM call back once more or less
    if hasattr(output, "frames"):
        return [_frames(video) for video in output.frames]
    return list(output.images)


def _frames(video) -> list:
    """One video of a pipeline's ``frames`` output (PIL list, or a float array in 0..1) as a list of PIL images."""
    import numpy as np
    from PIL import Image

    if isinstance(video, list) and video and isinstance(video[0], Image.Image):
        return video
    array = np.asarray(video.detach().float().cpu() if hasattr(video, "detach") else video)
    if array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(0, 2, 3, 1)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return [Image.fromarray(frame) for frame in array]
