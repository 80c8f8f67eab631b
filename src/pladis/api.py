"""The public switch: `apply` PLADIS to a pipeline or model, `remove` it, change its scale.

handle = pladis.apply(pipe, scale=2.0, alpha=1.5)   # every cross-attention of every denoiser
image = pipe(prompt).images[0]
handle.scale = 0.0                                  # the untouched model, bit for bit
pladis.remove(pipe)                                 # every hook PLADIS put in goes; nothing else changed
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import warnings
from collections.abc import Iterable, Iterator, Sequence

import torch

from . import families
from .adapters import (
    AttentionHook,
    InputsHook,
    Settings,
    attention_hooks,
    check_backend,
    hook_of,
    install,
    make_attend,
    uninstall,
    unknown_processor_message,
)
from .attention import check_scale, check_temperature
from .entmax import check_alpha


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
        raise ValueError(f"timesteps must be a (low, high) pair of numbers in 0..1000, got {timesteps!r}") from None
    if not 0 <= low <= high <= 1000:
        raise ValueError(
            f"timesteps window must satisfy 0 <= low <= high <= 1000 (scheduler units for every model, "
            f"1000 = pure noise), got {timesteps!r}"
        )
    return low, high


def _check_layers(layers) -> list[str] | None:
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [layers]
    try:
        entries = list(layers)
    except TypeError:
        raise ValueError(f"layers must be a list of group names or module-name patterns, got {layers!r}") from None
    if not entries or not all(isinstance(e, str) and e for e in entries):
        raise ValueError(
            f"layers must be a non-empty list of group names (e.g. down, mid, up) or module-name patterns "
            f"(e.g. 'up_blocks.0.*'), got {layers!r}; use layers=None for every cross-attention"
        )
    return entries


def _select(found: list[tuple[str, str, families.Family]], layers: list[str] | None) -> set[str]:
    """The qualified module names picked by `layers` (groups or fnmatch patterns); all when None."""
    names = [name for name, _, _ in found]
    if layers is None:
        return set(names)
    chosen: set[str] = set()
    for entry in layers:
        hits = set()
        for name, local, family in found:
            pattern = family.layer_groups.get(entry, entry)
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(local, pattern):
                hits.add(name)
        if not hits:
            groups = sorted({g for _, _, f in found for g in f.layer_groups})
            raise ValueError(
                f"layers entry {entry!r} matches no cross-attention module. Use a group "
                f"({', '.join(groups) or 'none for this model'}) or a pattern on module names such as "
                f"{', '.join(names[:3])}"
            )
        chosen |= hits
    return chosen


class Pladis:
    """What `apply` returns: live settings, a context manager that removes PLADIS on exit, and a caller.

    `handle(prompt, pladis_scale=3.0, **kwargs)` runs the pipeline at that scale for this call only (per thread:
    other threads keep the handle's scale).
    """

    def __init__(self, target, settings: Settings):
        self.target = target
        self.settings = settings

    def _live_settings(self) -> Settings:
        """The settings, if some module still runs with them; else this handle was removed or replaced."""
        if not any(h.settings is self.settings for _, h in _hooks(self.target)):
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
        self._live_settings()
        with per_call_scale(self.target, pladis_scale):
            return self.target(*args, **kwargs)

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
    check_finite: bool = True,
) -> Pladis:
    """Turn PLADIS on for every cross-attention of a diffusers pipeline (unet, controlnet, transformer) or module.

    scale: the PLADIS scale lambda (0 = the untouched model; the paper uses 2). alpha: the entmax alpha in [1, 2]
    (1.5 by default; 1 = softmax, 2 = sparsemax). layers: groups of the model's family ("down", "mid", "up" for
    UNets; "double", "single" for FLUX; "blocks" for other transformers) or fnmatch patterns on module names (e.g.
    "up_blocks.1.*"); all cross-attentions when None. timesteps: (low, high) window in scheduler units (0..1000, the
    same for every model; 1000 = pure noise) in which PLADIS acts; a window that selects no step of a run raises.
    temperature: divides the scores of the sparse branch only. check_finite: raise if the denoiser returns NaN/inf
    with PLADIS on (one device sync per denoiser call; off under torch.compile).
    Applying again replaces the previous application.
    """
    settings = Settings(
        scale=check_scale(scale),
        alpha=check_alpha(alpha),
        temperature=check_temperature(temperature),
        timesteps=_check_timesteps(timesteps),
        check_finite=bool(check_finite),
    )
    chosen_layers = _check_layers(layers)
    models = dict(_models(target))
    found = []  # (qualified name, local name, component, module, rule, family)
    for component, model in models.items():
        family = families.family_of(model)
        targets = families.targets(model)
        if family is families.GENERIC:
            _check_unknown_joint(model, bool(targets))
        for name, module, rule in targets:
            check_backend(name, module)
            if family.processors and type(module.processor).__name__ not in family.processors:
                raise ValueError(unknown_processor_message(name, type(module.processor).__name__, family))
            qualified = f"{component}.{name}" if component else name
            found.append((qualified, name, component, module, rule, family))
    if not found:
        raise ValueError(
            f"no cross-attention found in {type(target).__name__}: PLADIS changes the attention from image to "
            "text tokens, so pass a text-conditioned pipeline or its denoiser (pipe.unet, pipe.transformer)"
        )
    chosen = _select([(q, n, f) for q, n, _, _, _, f in found], chosen_layers)
    remove(target)
    scheduler = getattr(target, "scheduler", None)
    with_layers = {component for qualified, _, component, *_ in found if qualified in chosen}
    hooked = set()
    for qualified, _, component, module, rule, family in found:
        if component not in hooked:  # every model with cross-attention: it also takes a per-call pladis_scale out
            hooked.add(component)
            model = models[component]
            install(model, InputsHook(settings, family, model, scheduler, has_layers=component in with_layers))
        if qualified in chosen:
            install(module, AttentionHook(make_attend(rule, settings, qualified), family))
    if not isinstance(target, torch.nn.Module):
        target.__class__ = _per_call_class(type(target))
    return Pladis(target, settings)


# --------------------------------------------------------------------------- pipe(prompt, pladis_scale=...)

_PER_CALL_CLASSES: dict[type, type] = {}


@contextlib.contextmanager
def per_call_scale(target, scale: float) -> Iterator[None]:
    """Run PLADIS at `scale` inside this block, in this thread only (the handle's own scale is kept)."""
    scale = check_scale(scale)
    hooks = _hooks(target)
    if not hooks:
        raise ValueError(
            "pladis_scale was given but PLADIS is not applied to this pipeline; call pladis.apply(pipe) first"
        )
    calls = list({id(h.settings): h.settings.call for _, h in hooks}.values())
    before = [call.scale for call in calls]
    for call in calls:
        call.scale = scale
    try:
        yield
    finally:
        for call, value in zip(calls, before):
            call.scale = value


def _per_call_class(cls: type) -> type:
    """`cls` with a `__call__` that takes `pladis_scale=`; same name, qualname and module, so diffusers' config
    (`_class_name`), save_pretrained and from_pipe see the pipeline's own class. `remove` puts `cls` back."""
    if getattr(cls, "_pladis_base", None) is not None:
        return cls
    sub = _PER_CALL_CLASSES.get(cls)
    if sub is None:
        pipeline_call = cls.__call__

        @functools.wraps(pipeline_call)
        def __call__(self, *args, pladis_scale: float | None = None, **kwargs):
            if pladis_scale is None:
                return pipeline_call(self, *args, **kwargs)
            with per_call_scale(self, pladis_scale):
                return pipeline_call(self, *args, **kwargs)

        namespace = {"__call__": __call__, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
        namespace.update(__doc__=cls.__doc__, _pladis_base=cls)
        sub = _PER_CALL_CLASSES[cls] = type(cls)(cls.__name__, (cls,), namespace)
    return sub


def _restore_class(target) -> None:
    base = getattr(type(target), "_pladis_base", None)
    if base is not None and not isinstance(target, torch.nn.Module):
        target.__class__ = base


def _check_unknown_joint(model: torch.nn.Module, has_cross: bool) -> None:
    joint = families.unknown_joint_modules(model)
    if not joint:
        return
    names = ", ".join(joint[:3]) + (", ..." if len(joint) > 3 else "")
    message = (
        f"pladis: {type(model).__name__} has joint text-image attention ({names}) in a layout pladis does not "
        "know, so PLADIS cannot enter it; supported joint-attention models: see pladis.families.FAMILIES"
    )
    if not has_cross:
        raise ValueError(message)
    warnings.warn(message + "; only its cross-attention modules get PLADIS", stacklevel=3)


def _hooks(target) -> list[tuple[torch.nn.Module, AttentionHook]]:
    return [pair for _, model in _models(target) for pair in attention_hooks(model)]


def remove(target) -> int:
    """Take PLADIS off wherever it was applied; returns how many attention modules it was on."""
    count = 0
    for _, model in _models(target):
        for module, _ in attention_hooks(model):
            count += uninstall(module)
        if isinstance(hook_of(model), InputsHook):
            uninstall(model)
    _restore_class(target)
    return count


def is_applied(target) -> bool:
    return bool(_hooks(target))


def set_scale(target, scale: float) -> None:
    """Change the PLADIS scale of an applied pipeline or model without re-applying."""
    scale = check_scale(scale)
    hooks = _hooks(target)
    if not hooks:
        raise ValueError("PLADIS is not applied to this pipeline/model; call pladis.apply(...) first")
    for settings in {id(h.settings): h.settings for _, h in hooks}.values():
        settings.scale = scale
