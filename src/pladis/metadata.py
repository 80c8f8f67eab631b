"""Image metadata: the settings that made an image, in a PNG's text chunks, and read back.

Two chunks are written: ``parameters``, the A1111-style text that image browsers and web UIs show (prompt,
``Negative prompt: ...``, then ``Key: value`` pairs), and ``pladis:settings``, the same settings as JSON with the
package versions.  :func:`read` returns both; ``pladis info IMAGE`` prints them.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

__all__ = ["JSON_KEY", "TEXT_KEY", "parameters_text", "png_chunks", "read", "versions"]

TEXT_KEY = "parameters"
JSON_KEY = "pladis:settings"

#: settings keys -> the names A1111-style tools use (others keep their own name, title-cased).
_A1111_NAMES = {
    "steps": "Steps",
    "scheduler": "Sampler",
    "guidance": "CFG scale",
    "seed": "Seed",
    "size": "Size",
    "model": "Model",
    "scale": "PLADIS scale",
    "alpha": "PLADIS alpha",
}
_NOT_IN_TEXT = {"prompt", "negative_prompt", "versions", "pladis_version"}


def versions() -> dict[str, str]:
    """Versions of the packages that decide an image: pladis, diffusers, transformers, torch, and Python."""
    found = {"python": platform.python_version()}
    for package in ("pladis", "diffusers", "transformers", "torch", "peft"):
        try:
            found[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


def _value(value: Any) -> str:
    if isinstance(value, Mapping):
        return ",".join(f"{k}={_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "/".join(_value(v) for v in value)
    text = str(value)
    return json.dumps(text) if ("," in text or ":" in text) and not isinstance(value, (int, float)) else text


def parameters_text(settings: Mapping[str, Any]) -> str:
    """The A1111-style ``parameters`` text: the prompt, a ``Negative prompt:`` line, then ``Key: value, ...``."""
    lines = [str(settings.get("prompt", ""))]
    if settings.get("negative_prompt"):
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    pairs = []
    for key, value in settings.items():
        if key in _NOT_IN_TEXT or value is None:
            continue
        name = _A1111_NAMES.get(key, key.replace("_", " ").capitalize())
        pairs.append(f"{name}: {_value(value)}")
    for package, version in (settings.get("versions") or {}).items():
        pairs.append(f"Version {package}: {version}")
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def png_chunks(settings: Mapping[str, Any], *, with_versions: bool = True) -> dict[str, str]:
    """The text chunks to write into a PNG for ``settings`` (package versions added unless already there)."""
    data = dict(settings)
    if with_versions and "versions" not in data:
        data["versions"] = versions()
    return {TEXT_KEY: parameters_text(data), JSON_KEY: json.dumps(data, default=str)}


def read(path: str | Path) -> dict[str, Any]:
    """``{"parameters": text or None, "settings": dict or None, "other": {key: text}}`` from an image's chunks."""
    from PIL import Image

    with Image.open(path) as image:
        chunks = dict(getattr(image, "text", {}) or {})
    settings = None
    if JSON_KEY in chunks:
        try:
            settings = json.loads(chunks[JSON_KEY])
        except json.JSONDecodeError:
            settings = None
    other = {k: v for k, v in chunks.items() if k not in (TEXT_KEY, JSON_KEY)}
    return {"parameters": chunks.get(TEXT_KEY), "settings": settings, "other": other}
