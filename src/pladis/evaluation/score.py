"""``pladis eval score``: per-image scores, batched, cached in ``RUN/scores/<metric>.json``.

A cache entry is keyed by ``<config>/<sample_id>`` and remembers the image's sha256, so a regenerated image is scored
again and nothing else is. The cache is rewritten atomically (at most every few seconds, and at the end); under
``accelerate launch`` each process scores its share into ``<metric>.rank<N>.json`` and the main process merges them.
A cache made with a different scoring model (its ``id``) is set aside, not mixed in. FID is one number per config,
cached with the set of image hashes and the reference folder it was computed from.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pladis import files

from . import run as runlib
from .metrics import PER_IMAGE, build, parse_metrics

SAVE_EVERY_S = 5.0


@dataclass
class ScoreOptions:
    run: Path
    metrics: list[str]
    device: str = "auto"
    batch_size: int = 16
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> constructor kwargs


def cache_id(metric: str, options: dict[str, Any]) -> str:
    """What identifies the scorer: the metric and the non-default models/checkpoints it was given."""
    chosen = {k: str(v) for k, v in sorted(options.items()) if v is not None and k not in ("device", "loader")}
    if "loader" in options:
        chosen["loader"] = "custom"
    return metric + (json.dumps(chosen, sort_keys=True) if chosen else "")


def _cache_path(run: Path, metric: str, rank: int | None = None) -> Path:
    return Path(run) / "scores" / (f"{metric}.json" if rank is None else f"{metric}.rank{rank}.json")


def read_cache(run: Path, metric: str, ident: str | None = None) -> dict[str, dict]:
    """Entries of ``scores/<metric>.json`` plus any per-rank parts left by a killed run (same scorer id only)."""
    entries: dict[str, dict] = {}
    folder = Path(run) / "scores"
    paths = [_cache_path(run, metric), *sorted(folder.glob(f"{metric}.rank*.json"))] if folder.is_dir() else []
    for path in paths:
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue  # a torn file cannot happen with atomic writes; if it does, its scores are redone
        if ident is not None and data.get("id") != ident:
            continue
        entries.update(data.get("entries", {}))
    return entries


def write_cache(path: Path, metric: str, ident: str, entries: dict[str, dict]) -> None:
    files.write_json(path, {"metric": metric, "id": ident, "entries": entries}, indent=None)


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _open(path: str):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def score_run(opts: ScoreOptions, *, show_progress: bool = True, echo=print) -> dict[str, int]:
    """Score every committed image of the run with each metric; returns metric -> images scored now."""
    from accelerate import PartialState

    from .progress import eval_progress

    state = PartialState(cpu=opts.device == "cpu")
    samples = runlib.list_samples(opts.run)
    if not samples:
        raise runlib.RunError(f"{opts.run}: no finished images to score; run `pladis eval generate` first")
    device = opts.device
    if device == "auto":
        from ..cli.common import pick_device

        device = str(state.device) if state.num_processes > 1 else pick_device("auto")
    done: dict[str, int] = {}
    for metric in opts.metrics:
        options = dict(opts.backend_options.get(metric, {}))
        ident = cache_id(metric, options)
        if metric == "fid":
            if state.is_main_process:
                done[metric] = _score_fid(opts.run, samples, options, ident, device, echo)
            state.wait_for_everyone()
            continue
        cached = read_cache(opts.run, metric, ident)
        missing = [s for s in samples if cached.get(f"{s['config']}/{s['sample_id']}", {}).get("sha256") != s["sha256"]]
        done[metric] = 0
        if missing:
            with state.split_between_processes(missing) as mine:
                scorer = build(metric, device=device, **options) if mine else None
                mine_entries: dict[str, dict] = {}
                part = _cache_path(opts.run, metric, state.process_index if state.num_processes > 1 else None)
                base = {} if state.num_processes > 1 else cached
                last = time.time()
                disable = not (show_progress and state.is_local_main_process)
                with eval_progress("img", disable=disable) as progress:
                    task = progress.add_task(f"scoring {metric}", total=len(mine))
                    for batch in _batches(mine, opts.batch_size):
                        assert scorer is not None
                        values = scorer.score([_open(s["path"]) for s in batch], [s["prompt"] for s in batch])
                        for s, v in zip(batch, values):
                            mine_entries[f"{s['config']}/{s['sample_id']}"] = {"sha256": s["sha256"], "value": v}
                        progress.advance(task, len(batch))
                        if time.time() - last > SAVE_EVERY_S:
                            write_cache(part, metric, ident, {**base, **mine_entries})
                            last = time.time()
                if mine:
                    write_cache(part, metric, ident, {**base, **mine_entries})
                done[metric] = len(mine)
            state.wait_for_everyone()
        if state.is_main_process:
            merged = read_cache(opts.run, metric, ident)
            keep = {f"{s['config']}/{s['sample_id']}" for s in samples}
            write_cache(_cache_path(opts.run, metric), metric, ident, {k: v for k, v in merged.items() if k in keep})
            for part_path in (Path(opts.run) / "scores").glob(f"{metric}.rank*.json"):
                part_path.unlink(missing_ok=True)
            echo(f"{metric}: {len(samples)} images scored ({len(missing)} new)")
        state.wait_for_everyone()
    return done


def _score_fid(run: Path, samples: list[dict], options: dict, ident: str, device: str, echo) -> int:
    from collections import defaultdict

    from .metrics import fid as fid_mod

    path = _cache_path(run, "fid")
    try:
        cache = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        cache = {}
    entries = cache.get("entries", {}) if cache.get("id") == ident else {}
    by_config: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_config[s["config"]].append(s)
    reference = options.get("reference")
    ref_key = ""
    if reference is not None:
        ref_files = fid_mod.reference_images(Path(reference))
        ref_key = hashlib.sha256("\n".join(f"{p}:{p.stat().st_size}" for p in ref_files).encode()).hexdigest()
    todo = {}
    for config, items in by_config.items():
        key = hashlib.sha256("".join(sorted(s["sha256"] for s in items)).encode()).hexdigest()
        old = entries.get(config, {})
        if old.get("images") != key or old.get("reference") != ref_key:
            todo[config] = (items, key)
    if todo:
        scorer = build("fid", device=device, **options)
        for config, (items, key) in todo.items():
            size = (int(items[0]["width"]), int(items[0]["height"]))
            scorer.add_reference(size)

            def batches(n: int, items=items):
                for chunk in _batches(items, n):
                    yield [_open(s["path"]) for s in chunk]

            value = scorer.compute(batches, size)
            entries[config] = {"value": value, "images": key, "reference": ref_key, "n": len(items)}
            echo(f"fid {config}: {value:.3f} ({len(items)} images vs {len(scorer.reference)} reference)")
        files.write_json(path, {"metric": "fid", "id": ident, "entries": entries}, indent=None)
    return len(todo)


__all__ = ["PER_IMAGE", "ScoreOptions", "parse_metrics", "read_cache", "score_run"]
