"""The run folder, readable by ``pladis study`` (``pladis.study.loader``)::

    RUN/run.json                      settings (model, prompts, seeds, steps, configs, versions); checked on resume
    RUN/prompts.jsonl                 the resolved prompt list (index, prompt, category): resume and scoring are offline
    RUN/images/<config>/<sample>.png  one image; <sample> = p<prompt index>_<image index>, the same across configs
    RUN/images/<config>/<sample>.json its sidecar: prompt, seed, config, category, prompt_index, model, versions, ...
    RUN/manifest.json                 what is done (per config: sample id -> sha256), rewritten atomically
    RUN/scores/<metric>.json          per-image score cache (see :mod:`pladis.evaluation.score`)

A sample is committed by its sidecar, written (atomically) after its PNG; the sidecar records the PNG's size and
hash. On resume a sample counts as done only if both files are there and agree; anything else is deleted and
redone, and leftover temporary files (``.*.tmp*``) are removed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pladis import files

from .prompts import Prompt

SEED_MODULUS = 2**63
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
RUN_KEYS = ("model", "prompts", "per_prompt", "seed", "steps", "guidance", "size")


class RunError(ValueError):
    """A run folder that cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Sample:
    """One image to make: prompt ``prompt.index``, image ``image`` of that prompt, in every config the same seed."""

    prompt: Prompt
    image: int
    seed: int

    @property
    def sample_id(self) -> str:
        return f"p{self.prompt.index:06d}_{self.image:03d}"


def samples(prompts: list[Prompt], per_prompt: int, seed: int) -> list[Sample]:
    """Every (prompt, image) in a fixed order; image j of prompt i gets seed ``seed + i * per_prompt + j``."""
    return [Sample(p, j, (seed + p.index * per_prompt + j) % SEED_MODULUS) for p in prompts for j in range(per_prompt)]


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("pladis", "torch", "diffusers", "transformers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "unknown"
    return out


def image_dir(run: Path, config: str) -> Path:
    return Path(run) / "images" / config


def png_ok(path: Path, expected_bytes: int | None = None) -> bool:
    """Cheap integrity check: the PNG signature at the start, the IEND chunk at the end, and the recorded size."""
    try:
        size = path.stat().st_size
        if size < len(PNG_SIGNATURE) + len(PNG_END) or (expected_bytes is not None and size != expected_bytes):
            return False
        with open(path, "rb") as f:
            head = f.read(len(PNG_SIGNATURE))
            f.seek(-len(PNG_END), 2)
            return head == PNG_SIGNATURE and f.read() == PNG_END
    except OSError:
        return False


def read_sidecar(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def committed(run: Path, config: str, sample: Sample) -> dict | None:
    """The sidecar of a finished, intact sample, else None."""
    folder = image_dir(run, config)
    side = read_sidecar(folder / f"{sample.sample_id}.json")
    if side is None:
        return None
    expected = (sample.prompt.text, sample.seed, config)
    if (side.get("prompt"), side.get("seed"), side.get("config")) != expected:
        return None
    return side if png_ok(folder / f"{sample.sample_id}.png", side.get("png_bytes")) else None


def clean_orphans(run: Path, configs: list[str]) -> int:
    """Delete temporary files and half-committed samples (a PNG without a valid sidecar or the reverse)."""
    removed = 0
    for config in configs:
        folder = image_dir(run, config)
        if not folder.is_dir():
            continue
        for tmp in folder.glob(".*.tmp*"):
            tmp.unlink(missing_ok=True)
            removed += 1
        for png in folder.glob("*.png"):
            side = read_sidecar(png.with_suffix(".json"))
            if side is None or not png_ok(png, side.get("png_bytes")):
                png.unlink(missing_ok=True)
                png.with_suffix(".json").unlink(missing_ok=True)
                removed += 1
        for side_path in folder.glob("*.json"):
            if not side_path.with_suffix(".png").exists():
                side_path.unlink(missing_ok=True)
                removed += 1
    return removed


def write_sample(run: Path, config: str, image, sidecar: dict[str, Any]) -> dict:
    """Write the PNG then its sidecar, each atomically; returns the sidecar (with png_bytes and sha256)."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    folder = image_dir(run, config)
    sample_id = sidecar["sample_id"]
    files.atomic_write_bytes(folder / f"{sample_id}.png", data)
    side = dict(sidecar, png_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    files.write_json(folder / f"{sample_id}.json", side)
    return side


def write_prompts(run: Path, prompts: list[Prompt]) -> None:
    lines = [json.dumps({"index": p.index, "prompt": p.text, "category": p.category}) for p in prompts]
    files.atomic_write_text(Path(run) / "prompts.jsonl", "\n".join(lines) + "\n")


def read_prompts(run: Path) -> list[Prompt] | None:
    path = Path(run) / "prompts.jsonl"
    if not path.is_file():
        return None
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(Prompt(int(row["index"]), str(row["prompt"]), row.get("category")))
    return out


def read_spec(run: Path) -> dict | None:
    path = Path(run) / "run.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RunError(f"{path}: not valid JSON ({e}); delete the run folder or fix the file") from None
    return data if isinstance(data, dict) else None


def merge_spec(old: dict | None, new: dict) -> dict:
    """The spec to write: the new one if the run is fresh; on resume the same settings, with configs added."""
    if old is None:
        return new
    for key in RUN_KEYS:
        if old.get(key) != new.get(key):
            raise RunError(
                f"{new.get('out', 'the run folder')} was started with {key}={old.get(key)!r}, now {new.get(key)!r}; "
                "resume with the same settings, or give a new --out"
            )
    configs = {c["name"]: c for c in old.get("configs", [])}
    for c in new["configs"]:
        if c["name"] in configs and configs[c["name"]] != c:
            raise RunError(f"config {c['name']!r} differs from the one this run started with; give a new --out")
        configs.setdefault(c["name"], c)
    return dict(old, configs=list(configs.values()))


def write_manifest(run: Path, spec: dict, all_samples: list[Sample]) -> dict:
    """Scan the sidecars and rewrite manifest.json; returns it."""
    done: dict[str, dict[str, str]] = {}
    for c in spec["configs"]:
        entries = {}
        for s in all_samples:
            side = committed(run, c["name"], s)
            if side is not None:
                entries[s.sample_id] = side["sha256"]
        done[c["name"]] = entries
    total = len(all_samples) * len(spec["configs"])
    count = sum(len(v) for v in done.values())
    manifest = {"total": total, "done": count, "complete": count == total, "samples": done}
    files.write_json(Path(run) / "manifest.json", manifest, indent=None)
    return manifest


def read_manifest(run: Path) -> dict | None:
    path = Path(run) / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def list_samples(run: Path) -> list[dict]:
    """Every committed sample of a run (its sidecars), in config then sample order."""
    out = []
    root = Path(run) / "images"
    if not root.is_dir():
        raise RunError(f"{run}: no images/ folder; run `pladis eval generate --out {run}` first")
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for side_path in sorted(folder.glob("*.json")):
            side = read_sidecar(side_path)
            png = side_path.with_suffix(".png")
            if side is not None and png_ok(png, side.get("png_bytes")):
                out.append(dict(side, path=str(png)))
    return out
