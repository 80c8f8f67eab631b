"""Metric back-ends, one module each, imported only when asked for.

Per-image metrics (``clip``, ``pick``, ``imagereward``, ``hps``, ``alignment``) expose ``score(images, prompts)``
returning one value per image (a float, or for ``alignment`` a dict of per-category verdicts); ``fid`` is computed
per config against a reference folder. A back-end whose package is missing raises :class:`MissingBackend` with the
exact ``pip install`` command.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

PER_IMAGE = ("clip", "pick", "imagereward", "hps", "alignment")
SET_LEVEL = ("fid",)
ALL = (*PER_IMAGE, *SET_LEVEL)

# metric -> (module, class) ; the packages each needs, and how to get them
_BACKENDS = {
    "clip": ("clip", "ClipScore"),
    "pick": ("pick", "PickScore"),
    "imagereward": ("imagereward", "ImageReward"),
    "hps": ("hps", "HPSv21"),
    "alignment": ("alignment", "Alignment"),
    "fid": ("fid", "FID"),
}


class MetricError(ValueError):
    """A metric cannot run (missing package or weights); one line that says how to fix it."""


class MissingBackend(MetricError):
    def __init__(self, metric: str, package: str, pip: str):
        super().__init__(f"metric {metric!r} needs the {package} package, which is not installed: {pip}")
        self.pip = pip


def require(metric: str, module: str, package: str, pip: str):
    """Import ``module`` or raise :class:`MissingBackend` naming the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingBackend(metric, package, pip) from None


def hub_checkpoint(metric: str, repo: str, filename: str, option: str) -> str:
    """The local path of `repo`/`filename` from the hub cache or the network; one MetricError naming `option`."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, filename)
    except Exception as e:
        raise MetricError(
            f"metric '{metric}': could not get {repo}/{filename} ({type(e).__name__}); with no network pass "
            f"{option} FILE"
        ) from None


def parse_metrics(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL]
    if unknown or not names:
        raise MetricError(f"invalid --metrics {text!r}: use a comma-separated subset of {','.join(ALL)}")
    return list(dict.fromkeys(names))


def build(name: str, **options: Any):
    """An instance of metric ``name``'s back-end (``options`` go to its constructor)."""
    module, cls = _BACKENDS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)(**options)


def load_hf(metric: str, cls, source: str, option: str, **kwargs: Any):
    """``cls.from_pretrained(source)`` with one line naming the option to point at a local copy when it fails."""
    try:
        return cls.from_pretrained(source, **kwargs)
    except Exception as e:
        detail = " ".join(str(e).split())[:160]
        raise MetricError(
            f"metric {metric!r}: could not load {source!r} ({type(e).__name__}: {detail}); "
            f"with no network, download it elsewhere and pass {option} LOCAL_FOLDER"
        ) from None


def load_clip(
    metric: str, model: str, processor: str, options: tuple[str, str], device: str, loader: Callable | None = None
) -> tuple[Any, Any, str]:
    """(CLIPModel on `device` in eval mode, CLIPProcessor, id) from hub names or a test `loader`; `options` are the
    flags that point at local copies of the model and the processor."""
    from transformers import CLIPModel, CLIPProcessor

    if loader is not None:
        clip, proc = loader()
    else:
        clip = load_hf(metric, CLIPModel, model, options[0])
        proc = load_hf(metric, CLIPProcessor, processor, options[1])
    return clip.to(device).eval(), proc, model if loader is None else "custom"


def features(output) -> Any:
    """A ``get_*_features`` result as a tensor (transformers 5 returns a ModelOutput whose pooler_output it is)."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output
