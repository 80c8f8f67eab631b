"""Prompt sets: the paper's benchmarks from their public Hugging Face datasets, local files, or the demo set.

``--prompts NAME`` takes one of :data:`HUB_SETS` (needs the network once; the resolved list is saved in the run
folder, so resuming and scoring work offline), ``demo`` / ``demo:N`` / ``demo:heldout:N`` / ``demo:validation:N`` (the embedded model's balanced benchmark
captions, with their kind as category), or a local ``.txt`` (one prompt per line), ``.csv`` (a ``prompt`` column,
optional ``category``) or ``.jsonl`` (objects with ``prompt`` and optional ``category``) file.
"""

from __future__ import annotations

import csv
import json
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

PROMPT_KEYS = ("prompt", "Prompt", "Prompts", "caption", "text")
CATEGORY_KEYS = ("category", "Category")
DEMO_DEFAULT_N = 100


class PromptError(ValueError):
    """Prompts cannot be loaded; the message names the set and how to pass a local file."""


@dataclass(frozen=True)
class Prompt:
    index: int
    text: str
    category: str | None = None


@dataclass(frozen=True)
class HubSet:
    """Where a paper benchmark lives on the Hub, and how the paper used it."""

    repo: str
    column: str
    split: str = "train"
    file: str | None = None  # a JSON file in the dataset repo instead of a datasets split
    category: str | None = None
    size: int | None = None  # prompts drawn (seeded shuffle) when the dataset has more
    per_prompt: int = 5
    used_in: str = ""


HUB_SETS: dict[str, HubSet] = {
    "drawbench": HubSet("sayakpaul/drawbench", "Prompts", category="Category", size=200, used_in="Tab. 3, 4, 6"),
    "hpd": HubSet("ymhao/HPDv2", "prompt", file="test.json", size=400, used_in="Tab. 3, 4, 6 (HPDv2 test prompts)"),
    "pickapic": HubSet(
        "yuvalkirstain/pickapic_v2_no_images", "caption", split="test_unique", size=500, used_in="Tab. 3, 4, 6"
    ),
    "parti": HubSet("nateraw/parti-prompts", "Prompt", category="Category", per_prompt=1, used_in="not in the paper"),
    "coco30k": HubSet(
        "sayakpaul/coco-30-val-2014", "caption", size=30_000, per_prompt=1, used_in="Tab. 2, 7 (FID on 30K)"
    ),
    "coco5k": HubSet("sayakpaul/coco-30-val-2014", "caption", size=5_000, per_prompt=1, used_in="Tab. 5, 8, Fig. 4"),
}


def default_per_prompt(source: str) -> int:
    """Images per prompt as in the paper: 5 for DrawBench/HPD/Pick-a-Pic, 1 for COCO, files and the demo set."""
    hub = HUB_SETS.get(source)
    return hub.per_prompt if hub else 1


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_line(name: str, hub: HubSet) -> str:
    return (
        f"prompt set {name!r} is the Hugging Face dataset {hub.repo}, and the Hub is unreachable (offline?); "
        f"pass a local file instead: --prompts prompts.txt (one per line) or a .csv/.jsonl with a 'prompt' column"
    )


def _rows_from_hub(name: str, hub: HubSet) -> list[dict]:
    if not _hub_reachable():
        raise PromptError(_offline_line(name, hub))
    try:
        if hub.file:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(hub.repo, hub.file, repo_type="dataset")
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
        try:
            import datasets
        except ImportError:
            raise PromptError(
                f"prompt set {name!r} needs the 'datasets' package: pip install 'pladis[eval]' "
                "(or pip install datasets), or pass a local file with --prompts FILE"
            ) from None
        columns = [c for c in (hub.column, hub.category) if c]
        try:
            ds = datasets.load_dataset(hub.repo, split=hub.split, columns=columns)
        except (TypeError, ValueError):
            ds = datasets.load_dataset(hub.repo, split=hub.split)
        return [{c: row.get(c) for c in columns} for row in ds]
    except PromptError:
        raise
    except Exception as e:
        detail = " ".join(str(e).split())[:200]
        raise PromptError(
            f"could not load prompt set {name!r} from {hub.repo} ({detail}); pass a local file with --prompts FILE"
        ) from None


def _from_rows(rows: list[dict], where: str, prompt_key: str | None = None, category_key: str | None = None):
    out: list[tuple[str, str | None]] = []
    for number, row in enumerate(rows, 1):
        keys = [prompt_key] if prompt_key else [k for k in PROMPT_KEYS if k in row]
        text = row.get(keys[0]) if keys else None
        if not isinstance(text, str) or not text.strip():
            raise PromptError(f"{where}: row {number} has no prompt; give each row a 'prompt' (or 'caption') field")
        cat_keys = [category_key] if category_key else [k for k in CATEGORY_KEYS if k in row]
        cat = row.get(cat_keys[0]) if cat_keys else None
        out.append((" ".join(text.split()), str(cat) if cat not in (None, "") else None))
    return out


def _from_file(path: Path) -> list[tuple[str, str | None]]:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PromptError(f"--prompts {path}: cannot read it ({e})") from None
    if suffix == ".txt":
        return [(" ".join(line.split()), None) for line in text.splitlines() if line.strip()]
    if suffix == ".csv":
        return _from_rows(list(csv.DictReader(text.splitlines())), f"--prompts {path}")
    if suffix in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PromptError(f"--prompts {path}:{number}: not JSON ({e}); one object per line") from None
                rows.append(row if isinstance(row, dict) else {"prompt": row})
        return _from_rows(rows, f"--prompts {path}")
    raise PromptError(f"--prompts {path}: use a .txt, .csv or .jsonl file")


DEMO_SPLITS = ("seen", "heldout", "validation")


def _demo_source(source: str) -> tuple[str, int | None] | None:
    """``demo[:SPLIT][:N]`` -> (split, N or None); None if ``source`` is not of that form."""
    name, *rest = source.split(":")
    if name != "demo":
        return None
    split = rest.pop(0) if rest and not rest[0].isdigit() else "seen"
    count = rest.pop(0) if rest else None
    if rest or (count is not None and not count.isdigit()):
        raise PromptError(f"--prompts {source!r}: use demo[:SPLIT][:N], e.g. demo:200 or demo:heldout:100")
    if split not in DEMO_SPLITS:
        raise PromptError(f"--prompts {source!r}: unknown demo split {split!r}; use one of {', '.join(DEMO_SPLITS)}")
    if count is not None and int(count) < 1:
        raise PromptError(f"--prompts {source!r}: use demo[:SPLIT]:N with N >= 1 prompts")
    return split, int(count) if count is not None else None


def _demo(n: int, split: str = "seen") -> list[tuple[str, str | None]]:
    """The embedded model's benchmark: seen compositions, held-out ones, or the validation set (for choosing
    settings; its own seed stream). The category is the prompt's kind, and held-out for held-out compositions."""
    from pladis.demo.scenes import benchmark_prompts

    return [(s.caption(), s.kind) for s in benchmark_prompts(n, split=split)]


def check_source(source: str) -> None:
    """Fail fast (before any model loads) on a prompt source that cannot be right."""
    if source in HUB_SETS or _demo_source(source) is not None:
        return
    path = Path(source).expanduser()
    if not path.is_file():
        names = ", ".join([*HUB_SETS, "demo"])
        raise PromptError(f"--prompts {source!r}: no such file, and not a known set ({names})")
    if path.suffix.lower() not in (".txt", ".csv", ".jsonl", ".json"):
        raise PromptError(f"--prompts {source}: use a .txt, .csv or .jsonl file")


def load_prompts(source: str, limit: int | None = None, seed: int = 0) -> list[Prompt]:
    """The prompts of ``source`` (a set name, ``demo[:N]`` or a file), at most ``limit``, indexed from 0."""
    check_source(source)
    demo = _demo_source(source)
    if demo is not None:
        split, count = demo
        pairs = _demo(count or limit or DEMO_DEFAULT_N, split)
    elif source in HUB_SETS:
        hub = HUB_SETS[source]
        pairs = _from_rows(_rows_from_hub(source, hub), f"{hub.repo}", hub.column, hub.category)
        if hub.file:  # one row per rated image pair: keep each prompt once, in first-seen order
            pairs = list(dict.fromkeys(pairs))
        if hub.size is not None and len(pairs) > hub.size:
            order = list(range(len(pairs)))
            random.Random(seed).shuffle(order)  # the paper draws random prompts; the draw is fixed by --seed
            pairs = [pairs[i] for i in sorted(order[: hub.size])]
    else:
        pairs = _from_file(Path(source).expanduser())
    if limit is not None:
        pairs = pairs[:limit]
    if not pairs:
        raise PromptError(f"--prompts {source!r}: no prompts in it")
    return [Prompt(i, text, cat) for i, (text, cat) in enumerate(pairs)]
