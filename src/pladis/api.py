"""The public switch: `apply` PLADIS to a pipeline or model, `remove` it, change its scale.

handle = pladis.apply(pipe, scale=2.0, alpha=1.5)   # every cross-attention of every denoiser
image = pipe(prompt).images[0]
handle.scale = 0.0                                  # the untouched model, bit for bit
pladis.remove(pipe)                                 # the very processors that were there come back
"""

from __future__ import annotations

import fnmatch
import inspect
import warnings
from collections.abc import Iterable, Sequence

import torch

from .adapters import PladisProcessor, Settings, find_targets
from .attention import check_scale, check_temperature
from .entmax import check_alpha

LAYER_GROUPS = {"down": "down_blocks.*", "mid": "mid_block.*", "up": "up_blocks.*"}


def _models(target) -> list[tuple[str, torch.nn.Module]]:
    """(component name, module) of a pipeline's torch components, or [("", target)] for a module."""
    if isinstance(target, torch.nn.Module):
        return [("", target)]
    components = getattr(target, "components", None)
    if isinstance(components, dict):
        return [(name, m) for name, m in components.items() if isinstance(m, torch.nn.Module)]
    raise ValueError(
        f"pladis takes a diffusers pipeline or a torch.nn.Module (e.g. pipe.unet), got {type(target).__name__}"
    )


def _check_timesteps(timesteps) -> tuple[float, float] | None:
    if timesteps is None:
        return None
    try:
        low, high = (float(t) for t in timesteps)
    except (TypeError, ValueError):
        raise ValueError(f"timesteps must be a (low, high) pair of numbers, got {timesteps!r}") from None
    if not low <= high:
        raise ValueError(f"timesteps window needs low <= high, got {timesteps!r}")
    return low, high


def _select(names: list[str], layers: Sequence[str] | None) -> set[str]:
    """The qualified module names picked by `layers` (groups or fnmatch patterns); all when None."""
    if layers is None:
        return set(names)
    if isinstance(layers, str):
        layers = [layers]
    chosen: set[str] = set()
    for entry in layers:
        pattern = LAYER_GROUPS.get(entry, entry)
        hits = {
            n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n.split(".", 1)[-1], pattern)
        }
        if not hits:
            sample = ", ".join(names[:4])
            raise ValueError(
                f"layers entry {entry!r} matches no cross-attention module. Use a group "
                f"({', '.join(LAYER_GROUPS)}) or a pattern on module names such as {sample}"
            )
        chosen |= hits
    return chosen


def _input_position(model: torch.nn.Module, name: str) -> int | None:
    params = list(inspect.signature(getattr(model, "_orig_mod", model).forward).parameters)  # through torch.compile
    return params.index(name) if name in params else None


def _forward_inputs_hook(settings: Settings, model: torch.nn.Module):
    """Records the denoiser's timestep (for the window) and text length (for joint attention) on each forward."""
    t_position = _input_position(model, "timestep")
    text_position = _input_position(model, "encoder_hidden_states")

    def argument(args, kwargs, name, position):
        if name in kwargs:
            return kwargs[name]
        return args[position] if position is not None and len(args) > position else None

    def record(module, args, kwargs):
        t = argument(args, kwargs, "timestep", t_position) if settings.timesteps is not None else None
        if t is not None:  # read only for a window: on a GPU this is a sync
            settings.timestep = float(t.flatten()[0]) if torch.is_tensor(t) else float(t)
        text = argument(args, kwargs, "encoder_hidden_states", text_position)
        settings.text_length = int(text.shape[1]) if torch.is_tensor(text) and text.dim() == 3 else None

    return record


class Pladis:
    """What `apply` returns: live settings, a context manager that removes PLADIS on exit, and a caller.

    `handle(prompt, pladis_scale=3.0, **kwargs)` runs the pipeline at that scale for this call only.
    """

    def __init__(self, target, settings: Settings):
        self.target = target
        self.settings = settings

    def _live_settings(self) -> Settings:
        """The settings, if some module still runs with them; else this handle was removed or replaced."""
        if not any(p.settings is self.settings for _, p in _patched(self.target)):
            raise RuntimeError(
                "this PLADIS handle no longer drives any module: it was removed, or replaced by a later "
                "pladis.apply; use the handle that the last pladis.apply returned (or pladis.set_scale(pipe, ...))"
            )
        return self.settings

    @property
    def scale(self) -> float:
        return self.settings.scale

    @scale.setter
    def scale(self, value: float) -> None:
        self._live_settings().scale = check_scale(value)

    @property
    def alpha(self) -> float:
        return self.settings.alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self._live_settings().alpha = check_alpha(value)

    @property
    def temperature(self) -> float:
        return self.settings.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._live_settings().temperature = check_temperature(value)

    def remove(self) -> int:
        return remove(self.target)

    def __enter__(self) -> Pladis:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __call__(self, *args, pladis_scale: float | None = None, **kwargs):
        if pladis_scale is None:
            return self.target(*args, **kwargs)
        before = self.scale
        self.scale = pladis_scale
        try:
            return self.target(*args, **kwargs)
        finally:
            self.settings.scale = before

    def __repr__(self) -> str:
        s = self.settings
        return f"Pladis(scale={s.scale}, alpha={s.alpha}, temperature={s.temperature}, timesteps={s.timesteps})"


def apply(
    target,
    scale: float = 2.0,
    alpha: float = 1.5,
    *,
    layers: Sequence[str] | None = None,
    timesteps: Iterable[float] | None = None,
    temperature: float = 1.0,
) -> Pladis:
    """Turn PLADIS on for every cross-attention of a diffusers pipeline (unet, controlnet, transformer) or module.

    scale: the PLADIS scale lambda (0 = the untouched model; the paper uses 2). alpha: the entmax alpha in [1, 2]
    (1.5 by default; 1 = softmax, 2 = sparsemax). layers: groups "down", "mid", "up" or fnmatch patterns on module
    names (e.g. "up_blocks.1.*"); all cross-attentions when None. timesteps: (low, high) window of the denoiser's
    timestep value in which PLADIS acts. temperature: divides the scores of the sparse branch only.
    Applying again replaces the previous application.
    """
    settings = Settings(
        scale=check_scale(scale),
        alpha=check_alpha(alpha),
        temperature=check_temperature(temperature),
        timesteps=_check_timesteps(timesteps),
    )
    previous = _patched(target)
    for module, processor in previous:  # find targets on the original processors
        module.set_processor(processor.original)
    try:
        found = [
            (component, name, module, attend)
            for component, model in _models(target)
            for name, module, attend in find_targets(model, settings)
        ]
        if not found:
            raise ValueError(
                f"no cross-attention found in {type(target).__name__}: PLADIS changes the attention from image to "
                "text tokens, so pass a text-conditioned pipeline or its denoiser (pipe.unet, pipe.transformer)"
            )
        qualified = [f"{c}.{n}" if c else n for c, n, _, _ in found]
        chosen = _select(qualified, layers)
    except Exception:
        for module, processor in previous:  # a failed apply leaves the previous application in place
            module.set_processor(processor)
        raise
    remove(target)
    hooked = set()
    for (component, _name, module, attend), full_name in zip(found, qualified):
        if full_name not in chosen:
            continue
        module.set_processor(PladisProcessor(module.processor, settings, full_name, attend))
        if component not in hooked:
            hooked.add(component)
            model = dict(_models(target))[component]
            hook = model.register_forward_pre_hook(_forward_inputs_hook(settings, model), with_kwargs=True)
            model.__dict__["_pladis_hook"] = hook  # removed with this model's processors by `remove`
    _warn_weighted_processors(
        [n for (_, _, m, _), n in zip(found, qualified) if n in chosen and _has_weights(m.processor)]
    )
    return Pladis(target, settings)


def _has_weights(processor: PladisProcessor) -> bool:
    return isinstance(processor.original, torch.nn.Module) and any(True for _ in processor.original.parameters())


def _warn_weighted_processors(names: list[str]) -> None:
    if names:
        warnings.warn(
            f"pladis: {len(names)} cross-attention processors carry their own weights (IP-Adapter), e.g. {names[0]}. "
            "PLADIS wraps them, so while it is applied diffusers' set_ip_adapter_scale / unload_ip_adapter do not "
            "see them and their state_dict keys gain '.original'. Set the IP-Adapter scale before pladis.apply, or "
            "pladis.remove first.",
            stacklevel=3,
        )


def _patched(target) -> list[tuple[torch.nn.Module, PladisProcessor]]:
    return [
        (module, module.processor)
        for _, model in _models(target)
        for module in model.modules()
        if isinstance(getattr(module, "processor", None), PladisProcessor)
    ]


def remove(target) -> int:
    """Put back the original processors wherever PLADIS was applied; returns how many were restored."""
    patched = _patched(target)
    for module, processor in patched:
        module.set_processor(processor.original)
    for _, model in _models(target):
        hook = model.__dict__.pop("_pladis_hook", None)
        if hook is not None:
            hook.remove()
    return len(patched)


def is_applied(target) -> bool:
    return bool(_patched(target))


def set_scale(target, scale: float) -> None:
    """Change the PLADIS scale of an applied pipeline or model without re-applying."""
    scale = check_scale(scale)
    patched = _patched(target)
    if not patched:
        raise ValueError("PLADIS is not applied to this pipeline/model; call pladis.apply(...) first")
    for settings in {id(p.settings): p.settings for _, p in patched}.values():
        settings.scale = scale
