"""``--config`` strings -> named configurations with ``pladis.apply`` keyword arguments.

Grammar: ``baseline`` (the untouched model), ``pladis`` (the defaults: scale 2, alpha 1.5) or
``pladis:KEY=VALUE,KEY=VALUE`` with keys ``scale``, ``alpha``, ``temperature``, ``layers`` (groups or module patterns
joined by ``+``, e.g. ``layers=down+up``) and ``timesteps`` (``LOW-HIGH`` in scheduler units, e.g. ``500-1000``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

BASELINE = "baseline"
KEYS = ("scale", "alpha", "temperature", "layers", "timesteps")
_EXAMPLE = "e.g. baseline, pladis:scale=2,alpha=1.5 or pladis:scale=2,alpha=1.5,layers=up,temperature=1.2"


class ConfigError(ValueError):
    """A malformed ``--config``; the message names the problem and a correct form."""


@dataclass(frozen=True)
class EvalConfig:
    """One configuration of a run: ``name`` is its folder under ``images/``; ``apply`` is None for the baseline."""

    name: str
    spec: str
    apply: dict[str, Any] | None = field(default=None)

    @property
    def is_baseline(self) -> bool:
        return self.apply is None


def _number(key: str, text: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--config {spec!r}: {key}={text!r} is not a number ({_EXAMPLE})") from None


def _slug(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_slug(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return re.sub(r"[^A-Za-z0-9.+-]", "-", str(value))


def parse_config(spec: str) -> EvalConfig:
    """Parse and check one ``--config`` string (values go through pladis' own checks); raises :class:`ConfigError`."""
    from pladis.attention import check_scale, check_temperature
    from pladis.entmax import check_alpha

    text = spec.strip()
    if text == BASELINE:
        return EvalConfig(BASELINE, spec, None)
    head, _, body = text.partition(":")
    if head.strip() != "pladis":
        raise ConfigError(f"--config {spec!r}: must start with 'baseline' or 'pladis' ({_EXAMPLE})")
    kwargs: dict[str, Any] = {}
    for item in (p.strip() for p in body.split(",")) if body.strip() else ():
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not value:
            raise ConfigError(f"--config {spec!r}: {item!r} is not KEY=VALUE ({_EXAMPLE})")
        if key not in KEYS:
            raise ConfigError(f"--config {spec!r}: unknown key {key!r}; use {', '.join(KEYS)}")
        if key in kwargs:
            raise ConfigError(f"--config {spec!r}: {key} given twice")
        try:
            if key == "scale":
                kwargs[key] = check_scale(_number(key, value, spec))
            elif key == "alpha":
                kwargs[key] = check_alpha(_number(key, value, spec))
            elif key == "temperature":
                kwargs[key] = check_temperature(_number(key, value, spec))
            elif key == "layers":
                layers = [v.strip() for v in value.split("+")]
                if not all(layers):
                    raise ConfigError(f"--config {spec!r}: layers={value!r} has an empty entry; join groups with +")
                kwargs[key] = layers
            else:
                m = re.fullmatch(r"\s*([0-9.]+)\s*-\s*([0-9.]+)\s*", value)
                low, high = (float(m.group(1)), float(m.group(2))) if m else (-1.0, -1.0)
                if not 0 <= low <= high <= 1000:
                    raise ConfigError(
                        f"--config {spec!r}: timesteps={value!r} must be LOW-HIGH with 0 <= LOW <= HIGH <= 1000"
                    )
                kwargs[key] = [low, high]
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"--config {spec!r}: {e}") from None
    kwargs.setdefault("scale", 2.0)
    kwargs.setdefault("alpha", 1.5)
    name = "pladis_" + "_".join(f"{k}={_slug(kwargs[k])}" for k in KEYS if k in kwargs)
    return EvalConfig(name, spec, kwargs)


def parse_configs(specs: list[str] | None) -> list[EvalConfig]:
    """All ``--config`` values (default: baseline and pladis:scale=2,alpha=1.5); names must be distinct."""
    configs = [parse_config(s) for s in (specs or [BASELINE, "pladis:scale=2,alpha=1.5"])]
    seen: dict[str, str] = {}
    for c in configs:
        if c.name in seen:
            raise ConfigError(f"--config {c.spec!r} and {seen[c.name]!r} are the same configuration; give each once")
        seen[c.name] = c.spec
    return configs


def apply_kwargs(config: EvalConfig) -> dict[str, Any]:
    """The keyword arguments for ``pladis.apply`` (timesteps as a tuple)."""
    kwargs = dict(config.apply or {})
    if "timesteps" in kwargs:
        kwargs["timesteps"] = tuple(kwargs["timesteps"])
    return kwargs
