"""Find the image pairs of a study: an evaluation run folder or two folders of paired images.

(a) run folder: ``RUN/images/<config>/<sample_id>.png`` with a JSON sidecar ``<sample_id>.json`` holding at least
    ``prompt``, ``seed`` and ``config`` (optionally ``category``, ``prompt_index``); a pair is one sample id present
    under both configs.
(b) two folders matched by file stem; prompts from sidecars next to the images or from a prompts file (``.txt``:
    one prompt per line in sorted-stem order; ``.csv``: columns ``stem,prompt[,category]``; ``.jsonl``: objects
    with ``stem`` and ``prompt`` and optionally ``category``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class StudyInputError(ValueError):
    """Bad study input; the message names the problem and the fix in one line."""


@dataclass(frozen=True)
class Pair:
    """One prompt rendered by config A and config B (same seed)."""

    sample_id: str
    prompt: str
    image_a: Path
    image_b: Path
    seed: int | None = None
    category: str | None = None


def _images(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            found.setdefault(path.stem, path)
    return found


def _sidecar(image: Path) -> dict | None:
    side = image.with_suffix(".json")
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise StudyInputError(f"{side}: not valid JSON ({err}); fix or delete the sidecar") from err
    if not isinstance(data, dict):
        raise StudyInputError(f"{side}: expected a JSON object with 'prompt'; fix the sidecar")
    return data


def _category(data: dict | None) -> str | None:
    value = (data or {}).get("category")
    return str(value) if value not in (None, "") else None


def _seed(data: dict | None) -> int | None:
    value = (data or {}).get("seed")
    return int(value) if isinstance(value, (int, float, str)) and str(value).lstrip("-").isdigit() else None


def load_pairs_from_run(run: Path, config_a: str, config_b: str) -> list[Pair]:
    """Pairs of ``config_a`` vs ``config_b`` in an evaluation run folder, sorted by sample id."""
    run = Path(run)
    images_root = run / "images"
    if not images_root.is_dir():
        raise StudyInputError(f"{run}: no images/ folder; pass an evaluation run folder or use --a-dir/--b-dir")
    configs = sorted(p.name for p in images_root.iterdir() if p.is_dir())
    for name in (config_a, config_b):
        if name not in configs:
            raise StudyInputError(f"config {name!r} not in {images_root}; available: {', '.join(configs) or 'none'}")
    if config_a == config_b:
        raise StudyInputError("--a and --b name the same config; pick two different configs")
    images_a, images_b = _images(images_root / config_a), _images(images_root / config_b)
    pairs = []
    for sample_id in sorted(images_a.keys() & images_b.keys()):
        side_a, side_b = _sidecar(images_a[sample_id]), _sidecar(images_b[sample_id])
        prompt = (side_a or {}).get("prompt") or (side_b or {}).get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise StudyInputError(f"{images_a[sample_id].with_suffix('.json')}: no 'prompt'; the sidecar must name it")
        pa, pb = (side_a or {}).get("prompt"), (side_b or {}).get("prompt")
        if pa and pb and pa != pb:
            raise StudyInputError(f"sample {sample_id}: prompts differ between {config_a} and {config_b}; not a pair")
        pairs.append(
            Pair(
                sample_id=sample_id,
                prompt=prompt.strip(),
                image_a=images_a[sample_id],
                image_b=images_b[sample_id],
                seed=_seed(side_a or side_b),
                category=_category(side_a) or _category(side_b),
            )
        )
    if not pairs:
        raise StudyInputError(f"no sample id present under both {config_a} and {config_b} in {images_root}")
    return pairs


def _read_prompts_file(path: Path, stems: list[str]) -> dict[str, tuple[str, str | None]]:
    if not path.is_file():
        raise StudyInputError(f"--prompts {path}: no such file")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".txt":
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) != len(stems):
            raise StudyInputError(
                f"--prompts {path}: {len(lines)} prompts for {len(stems)} paired images; one line per image, "
                "in sorted file-name order"
            )
        return {stem: (line, None) for stem, line in zip(stems, lines)}
    rows: list[dict] = []
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    elif suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise StudyInputError(f"--prompts {path}:{number}: not JSON ({err})") from err
    else:
        raise StudyInputError(f"--prompts {path}: use a .txt, .csv or .jsonl file")
    table: dict[str, tuple[str, str | None]] = {}
    for row in rows:
        if not isinstance(row, dict) or not row.get("stem") or not row.get("prompt"):
            raise StudyInputError(f"--prompts {path}: every row needs 'stem' and 'prompt'")
        table[str(row["stem"])] = (str(row["prompt"]).strip(), _category(row))
    return table


def load_pairs_from_dirs(dir_a: Path, dir_b: Path, prompts_file: Path | None = None) -> list[Pair]:
    """Pairs of images with the same file stem in ``dir_a`` and ``dir_b``."""
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    for flag, folder in (("--a-dir", dir_a), ("--b-dir", dir_b)):
        if not folder.is_dir():
            raise StudyInputError(f"{flag} {folder}: not a folder")
    if dir_a.resolve() == dir_b.resolve():
        raise StudyInputError("--a-dir and --b-dir are the same folder; pass two different folders")
    images_a, images_b = _images(dir_a), _images(dir_b)
    stems = sorted(images_a.keys() & images_b.keys())
    if not stems:
        raise StudyInputError(f"no file name (stem) present in both {dir_a} and {dir_b}")
    table = _read_prompts_file(Path(prompts_file), stems) if prompts_file else {}
    pairs = []
    for stem in stems:
        side = _sidecar(images_a[stem]) or _sidecar(images_b[stem])
        if stem in table:
            prompt, category = table[stem]
        elif side and isinstance(side.get("prompt"), str) and side["prompt"].strip():
            prompt, category = side["prompt"].strip(), _category(side)
        else:
            raise StudyInputError(f"no prompt for {stem!r}: add a JSON sidecar with 'prompt' or pass --prompts FILE")
        pairs.append(
            Pair(
                sample_id=stem,
                prompt=prompt,
                image_a=images_a[stem],
                image_b=images_b[stem],
                seed=_seed(side),
                category=category or _category(side),
            )
        )
    return pairs
