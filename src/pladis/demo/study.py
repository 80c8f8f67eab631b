"""What ``pladis demo`` shows comes from a committed, measured result, not from constants in the code.

``pladis/weights/demo_study.json`` (schema ``pladis-demo-study/1``) holds the PLADIS setting the demo uses and
the measured accuracy of each column, so the picture and the numbers agree::

    {
      "schema": "pladis-demo-study/1",
      "source": "where the numbers come from (command, n, hardware, document)",
      "weights_sha256": "sha256 of the demo_unet.safetensors they were measured on, or null",
      "chosen_on": "how the setting was chosen (e.g. validation prompts), or that it was not chosen by a study",
      "cfg": 4.0, "steps": 20,
      "metric": "all",                         # the checker category the accuracies are of
      "stock":  {"accuracy": 0.884, "ci": [0.864, 0.903], "n": 1000},
      "pladis": {"scale": 2.0, "alpha": 1.5, "accuracy": 0.707, "ci": [0.687, 0.728], "n": 1000,
                 "diff": -0.177, "diff_ci": [-0.203, -0.151]},
                 # optional, the rest of the measured setting: "layers": ["up"], "timesteps": [500, 1000],
                 # "temperature": 2.0 (the demo applies them too)
      "helps": false,                          # did any measured PLADIS setting beat stock (CI above 0)?
      "verdict": "one plain sentence for the image",
      "splits": {"seen": {...}, "heldout": {...}}   # optional: the same two entries per prompt split
      # optional, not read by the demo: "categories" (per checker category), "checkpoints" (earlier weights)
    }

When ``helps`` is false the demo says so on the image. When the loaded weights are not the ones measured
(``weights_sha256`` differs), it says that too instead of captioning them with another model's numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STUDY_FILE = "demo_study.json"
SCHEMA = "pladis-demo-study/1"


class StudyError(ValueError):
    """The study file is missing, unreadable or not of the expected schema."""


@dataclass(frozen=True)
class Measured:
    accuracy: float
    ci: tuple[float, float]
    n: int
    diff: float | None = None
    diff_ci: tuple[float, float] | None = None

    def label(self) -> str:
        text = f"{self.accuracy:.3f} [{self.ci[0]:.3f}, {self.ci[1]:.3f}], n={self.n}"
        if self.diff is not None and self.diff_ci is not None:
            text += f"; Δ vs stock {self.diff:+.3f} [{self.diff_ci[0]:+.3f}, {self.diff_ci[1]:+.3f}]"
        return text


@dataclass(frozen=True)
class DemoStudy:
    scale: float
    alpha: float
    cfg: float
    steps: int
    metric: str
    stock: Measured
    pladis: Measured
    helps: bool
    verdict: str
    source: str
    chosen_on: str
    weights_sha256: str | None
    splits: dict[str, tuple[Measured, Measured]]
    path: Path
    layers: tuple[str, ...] | None = None
    timesteps: tuple[float, float] | None = None
    temperature: float = 1.0

    def apply_options(self) -> dict[str, Any]:
        """The measured setting's keyword arguments to `pladis.apply` besides scale and alpha."""
        options: dict[str, Any] = {}
        if self.layers is not None:
            options["layers"] = list(self.layers)
        if self.timesteps is not None:
            options["timesteps"] = self.timesteps
        if self.temperature != 1.0:
            options["temperature"] = self.temperature
        return options

    def setting(self, scale: float, alpha: float) -> str:
        """'scale=2 alpha=1.5', plus the study's other options (e.g. ' layers=up')."""
        text = f"scale={scale:g} alpha={alpha:g}"
        if self.layers is not None:
            text += " layers=" + "+".join(self.layers)
        if self.timesteps is not None:
            text += f" timesteps={self.timesteps[0]:g}-{self.timesteps[1]:g}"
        if self.temperature != 1.0:
            text += f" temperature={self.temperature:g}"
        return text

    def matches(self, unet_file: str | Path) -> bool:
        """True when the numbers were measured on these weights (or the study does not say which)."""
        return self.weights_sha256 is None or self.weights_sha256 == file_sha256(unet_file)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def default_path() -> Path:
    from .model import WEIGHTS_DIR

    return WEIGHTS_DIR / STUDY_FILE


def _number(d: dict, key: str, where: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise StudyError(f"{where}: '{key}' must be a finite number, got {v!r}")
    return float(v)


def _pair(d: dict, key: str, where: str) -> tuple[float, float]:
    v = d.get(key)
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)):
        raise StudyError(f"{where}: '{key}' must be a [low, high] pair, got {v!r}")
    return float(v[0]), float(v[1])


def _measured(d: Any, where: str, paired: bool) -> Measured:
    if not isinstance(d, dict):
        raise StudyError(f"{where}: expected an object with accuracy, ci and n")
    n = d.get("n")
    if not isinstance(n, int) or n < 1:
        raise StudyError(f"{where}: 'n' must be a positive integer, got {n!r}")
    return Measured(
        accuracy=_number(d, "accuracy", where),
        ci=_pair(d, "ci", where),
        n=n,
        diff=_number(d, "diff", where) if paired else None,
        diff_ci=_pair(d, "diff_ci", where) if paired else None,
    )


def load_study(path: str | Path | None = None) -> DemoStudy:
    """Read and check a study file (default: the one shipped with the weights); one-line :class:`StudyError`."""
    p = Path(path) if path is not None else default_path()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StudyError(f"cannot read the demo study {p}: {' '.join(str(e).split())[:120]}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise StudyError(f'{p} is not a demo study (expected "schema": "{SCHEMA}")')
    where = str(p)
    pl = data.get("pladis")
    if not isinstance(pl, dict):
        raise StudyError(f"{where}: 'pladis' must be an object with scale, alpha and the measured accuracy")
    helps = data.get("helps")
    if not isinstance(helps, bool):
        raise StudyError(f"{where}: 'helps' must be true or false")
    steps = data.get("steps")
    if not isinstance(steps, int) or steps < 1:
        raise StudyError(f"{where}: 'steps' must be a positive integer, got {steps!r}")
    splits: dict[str, tuple[Measured, Measured]] = {}
    for name, entry in (data.get("splits") or {}).items():
        if not isinstance(entry, dict):
            raise StudyError(f"{where}: splits.{name} must be an object with stock and pladis")
        splits[name] = (
            _measured(entry.get("stock"), f"{where} splits.{name}.stock", False),
            _measured(entry.get("pladis"), f"{where} splits.{name}.pladis", True),
        )
    layers = pl.get("layers")
    if layers is not None and not (isinstance(layers, list) and layers and all(isinstance(x, str) for x in layers)):
        raise StudyError(f"{where} pladis: 'layers' must be a list of layer groups or patterns, got {layers!r}")
    temperature = _number(pl, "temperature", f"{where} pladis") if "temperature" in pl else 1.0
    if temperature <= 0:
        raise StudyError(f"{where} pladis: 'temperature' must be positive, got {temperature!r}")
    sha = data.get("weights_sha256")
    return DemoStudy(
        scale=_number(pl, "scale", f"{where} pladis"),
        alpha=_number(pl, "alpha", f"{where} pladis"),
        cfg=_number(data, "cfg", where),
        steps=steps,
        metric=str(data.get("metric", "all")),
        stock=_measured(data.get("stock"), f"{where} stock", False),
        pladis=_measured(pl, f"{where} pladis", True),
        helps=helps,
        verdict=str(data.get("verdict", "")),
        source=str(data.get("source", "")),
        chosen_on=str(data.get("chosen_on", "")),
        weights_sha256=sha if isinstance(sha, str) else None,
        splits=splits,
        path=p,
        layers=tuple(layers) if layers is not None else None,
        timesteps=_pair(pl, "timesteps", f"{where} pladis") if pl.get("timesteps") is not None else None,
        temperature=temperature,
    )


def caption_lines(study: DemoStudy, scale: float, alpha: float, cfg: float, steps: int, measured: bool) -> list[str]:
    """The lines the demo writes under its grid: what each column scored on the benchmark, and the verdict.

    ``measured``: the study's numbers belong to these weights. Numbers are only shown for the setting they
    were measured at (same scale, alpha, cfg and steps).
    """
    same = (scale, alpha, cfg, steps) == (study.scale, study.alpha, study.cfg, study.steps)
    metric = f"share of benchmark prompts fully right ('{study.metric}')"
    if not measured:
        return [
            f"no measured accuracy for these weights: {study.path.name} was measured on other weights",
            f"({study.source})",
        ]
    lines = [f"measured {metric}, 95% CI:", f"stock: {study.stock.label()}"]
    if same:
        lines.append(f"PLADIS {study.setting(scale, alpha)}: {study.pladis.label()}")
        for name, (st, pl) in study.splits.items():
            lines.append(f"  {name} prompts: stock {st.accuracy:.3f}, PLADIS {pl.accuracy:.3f} (Δ {pl.diff:+.3f})")
    else:
        lines.append(
            f"PLADIS {study.setting(scale, alpha)} cfg={cfg:g} {steps} steps: not measured "
            f"(measured: {study.setting(study.scale, study.alpha)} cfg={study.cfg:g} {study.steps} steps)"
        )
    if not study.helps:
        lines.append("No PLADIS setting measured on this model beats stock: " + (study.verdict or "see docs/demo.md"))
    elif study.verdict:
        lines.append(study.verdict)
    lines.append(f"source: {study.source}")
    return lines
