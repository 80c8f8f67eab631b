"""The reference's examples as named presets: one table of data, resolved, described and loaded here.

    import pladis.presets as presets

    preset = presets.get("sdxl-dmd2")                       # a frozen Preset
    preset = presets.resolve("sdxl-dmd2", scale=2.0)        # with fields overridden (checked)
    print(presets.describe(preset))                         # pipeline, scheduler + its timesteps, LoRA, scales (no weights)
    pipe, call_kwargs = presets.load(preset)                # the configured pipeline and what to pass it
    pladis.apply(pipe, scale=preset.scale, alpha=preset.alpha)
    image = pipe(prompt="a photo of a cat", **call_kwargs).images[0]

Figures come from the reference implementation's README (model ids, schedulers, steps, guidance, LoRA files,
PLADIS scales) and the paper (SD1.5, SANA, SDXL-Turbo at 1 and 4 steps).  Presets the reference has no example
for (sd3, pixart, wan) use each model's own defaults and pladis' default scale.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PRESETS", "Preset", "custom", "describe", "get", "load", "names", "resolve", "scheduler_timesteps"]

#: The scheduler config of SDXL base 1.0 (its scheduler/scheduler_config.json), used by ``describe`` when that
#: file is neither local nor cached nor reachable; every SDXL-based preset shares it.
_SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "steps_offset": 1, "timestep_spacing": "leading", "interpolation_type": "linear", "use_karras_sigmas": False,
    "clip_sample": False, "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
}  # fmt: skip
_SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "steps_offset": 1, "skip_prk_steps": True, "set_alpha_to_one": False,
    "clip_sample": False,
}  # fmt: skip
_TURBO_SCHEDULER = {**_SDXL_SCHEDULER, "_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}
_FLUX_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
    "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}  # fmt: skip
_SCHNELL_SCHEDULER = {**_FLUX_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}

_SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
_SDXL_LICENCE = "CreativeML Open RAIL++-M (stabilityai/stable-diffusion-xl-base-1.0)"


@dataclass(frozen=True)
class Preset:
    """Everything that sets up one reference example; ``None`` means "the model's / pipeline's own default".

    ``dtype`` is the reference's precision on a GPU (on a CPU float32 is used unless asked for explicitly);
    ``scheduler`` is a diffusers scheduler class name built ``from_config`` of the model's scheduler with
    ``scheduler_config`` on top (e.g. ``{"timestep_spacing": "trailing"}``); ``timesteps`` / ``sigmas`` are passed
    to the pipeline call; ``lora_repo`` + ``lora_file`` name a Hub repo (or local folder) and the file in it.
    """

    name: str
    model: str
    pipeline: str | None = None  # diffusers pipeline class name; None: the model's own (model_index.json)
    description: str = ""
    scheduler: str | None = None
    scheduler_config: Mapping[str, Any] = field(default_factory=dict)
    timesteps: tuple[int, ...] | None = None
    sigmas: tuple[float, ...] | None = None
    steps: int | None = None
    guidance: float | None = None
    negative: str | None = None
    true_cfg: float | None = None
    size: tuple[int, int] | None = None  # (width, height)
    num_frames: int | None = None
    pag_scale: float | None = None
    pag_layers: tuple[str, ...] | None = None
    seg_scale: float | None = None
    seg_blur_sigma: float | None = None
    seg_layers: tuple[str, ...] | None = None
    freeu: tuple[float, float, float, float] | None = None  # s1, s2, b1, b2
    lora_repo: str | None = None
    lora_file: str | None = None
    lora_fuse: bool = True
    lora_scale: float = 1.0
    dtype: str = "auto"
    vae: str | None = None
    controlnet: str | None = None
    controlnet_scale: float | None = None
    depth_estimator: str | None = None  # a DPT model that turns a photo into the depth control image
    max_sequence_length: int | None = None
    scale: float = 2.0  # PLADIS lambda
    alpha: float = 1.5
    pladis_layers: tuple[str, ...] | None = None
    pladis_timesteps: tuple[float, float] | None = None
    temperature: float = 1.0
    licence: str | None = None
    video: bool = False
    builtin_scheduler: Mapping[str, Any] | None = None  # offline fallback config for describe()

    @property
    def lora(self) -> str | None:
        """``repo/file`` (or the folder/file alone) of the LoRA, for display."""
        if self.lora_repo is None:
            return None
        return f"{self.lora_repo}/{self.lora_file}" if self.lora_file else self.lora_repo


def _sdxl(name: str, description: str, **fields) -> Preset:
    fields.setdefault("pipeline", "StableDiffusionXLPipeline")
    fields.setdefault("dtype", "float16")
    fields.setdefault("licence", _SDXL_LICENCE)
    fields.setdefault("builtin_scheduler", _SDXL_SCHEDULER)
    return Preset(name=name, model=fields.pop("model", _SDXL), description=description, **fields)


_TABLE: tuple[Preset, ...] = (
    _sdxl("sdxl-cfg", "SDXL base with CFG 5 (reference example 1)", steps=25, guidance=5.0, scale=2.0),
    _sdxl("sdxl-pag", "SDXL with CFG 4 and perturbed-attention guidance 3", pipeline="StableDiffusionXLPAGPipeline",
          steps=25, guidance=4.0, pag_scale=3.0, pag_layers=("mid",), scale=2.0),
    _sdxl("sdxl-seg", "SDXL with CFG 4 and smoothed-energy guidance 3 (blur sigma 100)", steps=25, guidance=4.0,
          seg_scale=3.0, seg_blur_sigma=100.0, seg_layers=("mid",), scale=2.0),
    _sdxl("sdxl-freeu", "SDXL with FreeU s1 .6 s2 .4 b1 1.1 b2 1.2", steps=25, freeu=(0.6, 0.4, 1.1, 1.2), scale=1.5),
    _sdxl("sdxl-dmd2", "SDXL + DMD2 4-step LoRA (fused), LCM at timesteps 999/749/499/249, no CFG",
          lora_repo="tianweiy/DMD2", lora_file="dmd2_sdxl_4step_lora_fp16.safetensors", scheduler="LCMScheduler",
          timesteps=(999, 749, 499, 249), steps=4, guidance=0.0, scale=1.5),
    _sdxl("sdxl-lightning", "SDXL + SDXL-Lightning 4-step LoRA (fused), Euler trailing, no CFG",
          lora_repo="ByteDance/SDXL-Lightning", lora_file="sdxl_lightning_4step_lora.safetensors",
          scheduler="EulerDiscreteScheduler", scheduler_config={"timestep_spacing": "trailing"}, steps=4,
          guidance=0.0, scale=1.5),
    _sdxl("hyper-sdxl", "SDXL + Hyper-SDXL 4-step LoRA (fused), DDIM trailing, no CFG",
          lora_repo="ByteDance/Hyper-SD", lora_file="Hyper-SDXL-4steps-lora.safetensors", scheduler="DDIMScheduler",
          scheduler_config={"timestep_spacing": "trailing"}, steps=4, guidance=0.0, scale=1.5),
    _sdxl("sdxl-turbo", "SDXL-Turbo, 1 step, no CFG (512 px)", model="stabilityai/sdxl-turbo", steps=1, guidance=0.0,
          scale=1.5, builtin_scheduler=_TURBO_SCHEDULER,
          licence="Stability AI Community License (stabilityai/sdxl-turbo; non-commercial without a membership)"),
    _sdxl("sdxl-turbo-4step", "SDXL-Turbo, 4 steps, no CFG (512 px)", model="stabilityai/sdxl-turbo", steps=4,
          guidance=0.0, scale=1.5, builtin_scheduler=_TURBO_SCHEDULER,
          licence="Stability AI Community License (stabilityai/sdxl-turbo; non-commercial without a membership)"),
    _sdxl("sdxl-controlnet-depth", "SDXL depth ControlNet (conditioning 0.5), fp16-fix VAE, CFG 1, SEG 3 on the mid "
          "block with infinite blur", pipeline="StableDiffusionXLControlNetPipeline",
          controlnet="diffusers/controlnet-depth-sdxl-1.0", controlnet_scale=0.5, vae="madebyollin/sdxl-vae-fp16-fix",
          depth_estimator="Intel/dpt-hybrid-midas", negative="low quality, bad quality, sketches", steps=25,
          guidance=1.0, seg_scale=3.0, seg_blur_sigma=1e10, seg_layers=("mid",), scale=3.0),
    Preset("flux-schnell", "black-forest-labs/FLUX.1-schnell", "FluxPipeline", "FLUX.1 schnell, 4 steps, bf16",
           steps=4, guidance=0.0, max_sequence_length=256, dtype="bfloat16", scale=1.5, licence="Apache-2.0",
           builtin_scheduler=_SCHNELL_SCHEDULER),
    Preset("flux-dev", "black-forest-labs/FLUX.1-dev", "FluxPipeline", "FLUX.1 dev, 50 steps, bf16 (as the "
           "reference: guidance 0)", steps=50, guidance=0.0, max_sequence_length=256, dtype="bfloat16", scale=1.5,
           licence="FLUX.1 [dev] Non-Commercial License: non-commercial research use only "
           "(https://huggingface.co/black-forest-labs/FLUX.1-dev)", builtin_scheduler=_FLUX_SCHEDULER),
    Preset("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "StableDiffusionPipeline",
           "Stable Diffusion 1.5 with CFG (its defaults: 50 steps, CFG 7.5, 512 px)", dtype="float16", scale=2.0,
           licence="CreativeML Open RAIL-M", builtin_scheduler=_SD15_SCHEDULER),
    Preset("sana", "Efficient-Large-Model/Sana_1600M_1024px_diffusers", "SanaPipeline",
           "SANA 1.6B 1024 px with its default configuration", dtype="bfloat16", scale=2.0,
           licence="see the model card (Efficient-Large-Model/Sana_1600M_1024px_diffusers)"),
    Preset("sd3", "stabilityai/stable-diffusion-3-medium-diffusers", "StableDiffusion3Pipeline",
           "Stable Diffusion 3 medium with its defaults (not in the reference)", dtype="float16", scale=2.0,
           licence="Stability AI Community License (gated: accept it on the Hub)"),
    Preset("pixart", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "PixArtSigmaPipeline",
           "PixArt-Sigma 1024 px with its defaults (not in the reference)", dtype="float16", scale=2.0,
           licence="CreativeML Open RAIL++-M"),
    Preset("demo", "demo", "StableDiffusionPipeline", "the embedded demo model (pladis/weights; seconds on a CPU), "
           "20 steps, CFG 4, 32 px", steps=20, guidance=4.0, dtype="float32", scale=2.0,
           licence="Apache-2.0 (trained by pladis on generated scenes)"),
    Preset("wan", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "WanPipeline",
           "Wan 2.1 text-to-video 1.3B, 33 frames at 832x480 (not in the reference)", size=(832, 480),
           num_frames=33, guidance=5.0, dtype="bfloat16", scale=2.0, licence="Apache-2.0", video=True),
)  # fmt: skip

#: Every preset by name.
PRESETS: dict[str, Preset] = {p.name: p for p in _TABLE}

_FIELDS = {f.name: f for f in dataclasses.fields(Preset)}


def names() -> list[str]:
    """The preset names, in table order."""
    return list(PRESETS)


def get(name: str) -> Preset:
    """The preset called ``name``; a ValueError naming every preset otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def custom(model: str, **overrides) -> Preset:
    """A preset for any model (no reference settings): the pipeline's own defaults and PLADIS' defaults."""
    return resolve(Preset(name="custom", model=model), **overrides)


def resolve(preset: str | Preset, **overrides) -> Preset:
    """``preset`` (a name or a Preset) with ``overrides`` replacing its fields; None values are skipped.

    Unknown field names raise a ValueError that names the valid ones; sequences become tuples.
    """
    base = get(preset) if isinstance(preset, str) else preset
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown preset field(s) {', '.join(unknown)}; valid: {', '.join(_FIELDS)}")
    changes = {k: _freeze(v) for k, v in overrides.items() if v is not None}
    return dataclasses.replace(base, **changes)


def _freeze(value):
    if isinstance(value, list):
        return tuple(value)
    return value


# --------------------------------------------------------------------------- the scheduler, without any weights


def _local_or_cached_json(repo: str, filename: str) -> dict | None:
    path = Path(repo).expanduser() / filename
    if path.is_file():
        return json.loads(path.read_text())
    if Path(repo).expanduser().exists():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo, filename)
    except Exception:  # not a valid repo id
        return None
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def base_scheduler_config(preset: Preset) -> tuple[dict | None, str]:
    """The model's own scheduler config and where it came from: the local folder or Hub cache, else the table."""
    if preset.model == "demo":
        from pladis.demo.model import load_config

        return {"_class_name": "DPMSolverMultistepScheduler", **load_config()["scheduler"]}, "model"
    config = _local_or_cached_json(preset.model, "scheduler/scheduler_config.json")
    if config is not None:
        return config, "model"
    if preset.builtin_scheduler is not None:
        return dict(preset.builtin_scheduler), "builtin (the model's scheduler_config.json is not on this machine)"
    return None, "unavailable (the model's scheduler_config.json is not on this machine)"


def build_scheduler(preset: Preset, base_config: Mapping[str, Any]):
    """The preset's scheduler made ``from_config`` of ``base_config`` (no weights involved)."""
    import diffusers

    class_name = preset.scheduler or base_config.get("_class_name")
    cls = getattr(diffusers, str(class_name), None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"unknown scheduler {class_name!r}: give a diffusers scheduler class, e.g. DDIMScheduler")
    return cls.from_config(dict(base_config), **dict(preset.scheduler_config))


def _flux_mu(scheduler, preset: Preset) -> float | None:
    """FLUX's resolution-dependent shift, as FluxPipeline computes it for the preset's size (1024 px default)."""
    if not scheduler.config.get("use_dynamic_shifting"):
        return None
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    width, height = preset.size or (1024, 1024)
    seq_len = (height // 16) * (width // 16)
    cfg = scheduler.config
    return calculate_shift(seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                           cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))  # fmt: skip


def scheduler_timesteps(preset: Preset, scheduler, steps: int | None = None) -> list[float]:
    """The timesteps the preset's pipeline call would run, computed on ``scheduler`` alone.

    Explicit ``timesteps`` / ``sigmas`` are used as the pipeline would pass them; flow-matching FLUX-style
    schedulers get the pipeline's default sigmas and shift.
    """
    import numpy as np

    steps = steps or preset.steps or _default_steps(preset)
    accepts = set(inspect.signature(scheduler.set_timesteps).parameters)
    if preset.timesteps is not None:
        if "timesteps" not in accepts:
            raise ValueError(f"{type(scheduler).__name__} does not take custom timesteps")
        scheduler.set_timesteps(timesteps=list(preset.timesteps))
    elif preset.sigmas is not None:
        if "sigmas" not in accepts:
            raise ValueError(f"{type(scheduler).__name__} does not take custom sigmas")
        scheduler.set_timesteps(sigmas=list(preset.sigmas))
    elif "FlowMatch" in type(scheduler).__name__ and preset.pipeline == "FluxPipeline":
        sigmas = np.linspace(1.0, 1 / steps, steps)
        mu = _flux_mu(scheduler, preset)
        scheduler.set_timesteps(sigmas=sigmas, **({"mu": mu} if mu is not None else {}))
    else:
        scheduler.set_timesteps(steps)
    return [round(float(t), 4) for t in scheduler.timesteps]


def _default_steps(preset: Preset) -> int:
    """The pipeline's own default number of steps (its __call__ default), else 50."""
    import diffusers

    cls = getattr(diffusers, preset.pipeline or "", None)
    if cls is not None:
        param = inspect.signature(cls.__call__).parameters.get("num_inference_steps")
        if param is not None and isinstance(param.default, int):
            return param.default
    return 50


def describe(preset: Preset) -> dict[str, Any]:
    """The resolved settings as plain JSON data: pipeline, scheduler with its concrete timesteps, LoRA, scales.

    Loads no model: the scheduler is built from the model's ``scheduler_config.json`` when it is local or cached,
    else from the table's copy of it.
    """
    base, source = base_scheduler_config(preset)
    scheduler_info: dict[str, Any] = {"class": preset.scheduler or (base or {}).get("_class_name"), "source": source}
    if preset.scheduler_config:
        scheduler_info["config"] = dict(preset.scheduler_config)
    if base is not None:
        scheduler = build_scheduler(preset, base)
        scheduler_info["class"] = type(scheduler).__name__
        scheduler_info["timestep_spacing"] = scheduler.config.get("timestep_spacing")
        scheduler_info["timesteps"] = scheduler_timesteps(preset, scheduler)
    data: dict[str, Any] = {
        "preset": preset.name,
        "description": preset.description or None,
        "model": preset.model,
        "pipeline": preset.pipeline,
        "dtype": preset.dtype,
        "scheduler": scheduler_info,
        "steps": preset.steps or (len(preset.timesteps) if preset.timesteps else _default_steps(preset)),
        "timesteps": list(preset.timesteps) if preset.timesteps else None,
        "sigmas": list(preset.sigmas) if preset.sigmas else None,
        "guidance": preset.guidance,
        "true_cfg": preset.true_cfg,
        "negative": preset.negative,
        "size": f"{preset.size[0]}x{preset.size[1]}" if preset.size else None,
        "num_frames": preset.num_frames,
        "lora": {"repo": preset.lora_repo, "file": preset.lora_file, "fuse": preset.lora_fuse,
                 "scale": preset.lora_scale} if preset.lora_repo else None,
        "vae": preset.vae,
        "controlnet": {"repo": preset.controlnet, "conditioning_scale": preset.controlnet_scale,
                       "depth_estimator": preset.depth_estimator} if preset.controlnet else None,
        "pag": {"scale": preset.pag_scale, "layers": list(preset.pag_layers or ())} if preset.pag_scale else None,
        "seg": {"scale": preset.seg_scale, "blur_sigma": preset.seg_blur_sigma,
                "layers": list(preset.seg_layers or ())} if preset.seg_scale else None,
        "freeu": dict(zip(("s1", "s2", "b1", "b2"), preset.freeu)) if preset.freeu else None,
        "max_sequence_length": preset.max_sequence_length,
        "pladis": {"scale": preset.scale, "alpha": preset.alpha, "layers": list(preset.pladis_layers or ()) or None,
                   "timesteps": list(preset.pladis_timesteps) if preset.pladis_timesteps else None,
                   "temperature": preset.temperature},
        "video": preset.video,
        "licence": preset.licence,
    }  # fmt: skip
    return {k: v for k, v in data.items() if v is not None}


# --------------------------------------------------------------------------- loading


def load(
    preset: str | Preset,
    *,
    device: str = "auto",
    dtype: str | None = None,
    offload: bool = False,
    control_image=None,
    depth_from=None,
    **overrides,
) -> tuple[Any, dict[str, Any]]:
    """Load the preset's pipeline, configured, and the keyword arguments of its call (all but prompt/generator).

    ``load(preset, *, device="auto", dtype=None, offload=False, control_image=None, depth_from=None, **overrides)
    -> (pipe, call_kwargs)``.  ``preset`` is a name or a :class:`Preset`; ``overrides`` replace its fields first
    (e.g. ``model="/path/to/local/folder"``).  ``dtype`` None: the preset's on a GPU, float32 on the CPU.
    ``control_image`` (a PIL image or a path) conditions a ControlNet pipeline as it is; ``depth_from`` (a photo)
    is turned into a depth map by the preset's ``depth_estimator``.  The pipeline gets the scheduler, FreeU, the
    LoRA (fused), SEG and the VAE / ControlNet of the preset; PLADIS is *not* applied (call ``pladis.apply(pipe,
    scale=preset.scale, alpha=preset.alpha)``).  Expected failures (model not on this machine and the Hub
    unreachable, a bad option) raise ``pladis.cli.common.CLIError`` with a one-line message.
    """
    from pladis.cli.loading import load_preset_pipeline, preset_call_kwargs

    preset = resolve(preset, **overrides)
    pipe = load_preset_pipeline(preset, device=device, dtype=dtype, offload=offload)
    call_kwargs = preset_call_kwargs(pipe, preset, control_image=control_image, depth_from=depth_from)
    return pipe, call_kwargs


def parse_int_list(text: str, option: str) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]`` (ranges inclusive); ValueError naming ``option`` otherwise."""
    values: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                low, high = (int(x) for x in part.split("-", 1))
                if low > high:
                    raise ValueError
                values.extend(range(low, high + 1))
            else:
                values.append(int(part))
        except ValueError:
            raise ValueError(f"invalid {option} {text!r}: use numbers and ranges like 0-7 or 0,1,5") from None
    if not values:
        raise ValueError(f"invalid {option} {text!r}: give at least one number, e.g. 0 or 0-7")
    return values


def parse_float_list(text: str, option: str) -> list[float]:
    """``"0,1,1.5"`` -> ``[0.0, 1.0, 1.5]``; ValueError naming ``option`` otherwise."""
    import math

    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"invalid {option} {text!r}: use comma-separated numbers like 0,1,1.5") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"invalid {option} {text!r}: use comma-separated finite numbers like 0,1,1.5")
    return values


def as_tuple(values: Sequence | None) -> tuple | None:
    return tuple(values) if values is not None else None
