"""``pladis eval report``: the paper's layout (baseline row, "+ PLADIS" rows with signed deltas) in markdown and
JSON, with 95 % paired-bootstrap intervals over prompts, "n.s." where an interval crosses 0, a breakdown by prompt
category where the prompts have categories, and a PNG plot of the deltas with their intervals.

Images are paired across configs (and across runs) by (prompt, seed); only cached scores of the images as they are
now (same sha256) count.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pladis import files

from . import run as runlib
from . import stats
from .metrics import ALL, PER_IMAGE
from .score import read_cache

LABELS = {
    "clip": ("CLIPScore ↑", 2),
    "pick": ("PickScore ↑", 2),
    "imagereward": ("ImageReward ↑", 3),
    "hps": ("HPSv2.1 ↑", 2),
    "fid": ("FID ↓", 2),
}
ALIGNMENT_PREFIX = "alignment:"


def label(metric: str) -> tuple[str, int]:
    if metric.startswith(ALIGNMENT_PREFIX):
        return f"checker {metric[len(ALIGNMENT_PREFIX) :]} ↑", 3
    return LABELS.get(metric, (metric, 3))


class ReportError(ValueError):
    """Nothing to report, or an unknown baseline; one line."""


@dataclass
class Collected:
    configs: list[str] = field(default_factory=list)
    config_info: dict[str, dict] = field(default_factory=dict)  # name -> {"run", "spec", "pladis"}
    values: dict[str, dict[str, dict]] = field(default_factory=dict)  # metric -> config -> {(prompt, seed): value}
    set_level: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> config -> value
    prompt_of: dict[tuple, str] = field(default_factory=dict)
    category_of: dict[str, str] = field(default_factory=dict)  # prompt -> category


def collect(runs: list[Path]) -> Collected:
    col = Collected()
    per_run = []
    for run in runs:
        samples = runlib.list_samples(run)
        names = sorted({s["config"] for s in samples})
        per_run.append((Path(run), samples, names))
    counts: dict[str, int] = defaultdict(int)
    for _, _, names in per_run:
        for n in names:
            counts[n] += 1
    for run, samples, _names in per_run:
        rename = {
            s["config"]: (s["config"] if counts[s["config"]] == 1 else f"{run.name}/{s['config']}") for s in samples
        }
        for s in samples:
            name = rename[s["config"]]
            if name not in col.config_info:
                col.configs.append(name)
                col.config_info[name] = {"run": str(run), "spec": s.get("config_spec"), "pladis": s.get("pladis")}
            key = (s["prompt"], int(s["seed"]))
            col.prompt_of[key] = s["prompt"]
            if s.get("category"):
                col.category_of[s["prompt"]] = str(s["category"])
        by_id = {f"{s['config']}/{s['sample_id']}": s for s in samples}
        for metric in PER_IMAGE:
            entries = read_cache(run, metric)
            for cache_key, entry in entries.items():
                found = by_id.get(cache_key)
                if found is None or entry.get("sha256") != found["sha256"] or entry.get("value") is None:
                    continue
                key = (found["prompt"], int(found["seed"]))
                value = entry["value"]
                name = rename[found["config"]]
                if isinstance(value, dict):  # the checker: one verdict per category
                    for cat, v in value.items():
                        if v is not None:
                            col.values.setdefault(ALIGNMENT_PREFIX + cat, {}).setdefault(name, {})[key] = float(v)
                elif isinstance(value, (int, float)) and math.isfinite(value):
                    col.values.setdefault(metric, {}).setdefault(name, {})[key] = float(value)
        fid_path = run / "scores" / "fid.json"
        if fid_path.is_file():
            import json

            for config, entry in json.loads(fid_path.read_text(encoding="utf-8")).get("entries", {}).items():
                if config in rename:
                    col.set_level.setdefault("fid", {})[rename[config]] = float(entry["value"])
    return col


def _metric_order(col: Collected) -> list[str]:
    order = [m for m in ALL if m in col.values or m in col.set_level]
    order = [m for m in order if m != "alignment"]
    if any(m.startswith(ALIGNMENT_PREFIX) for m in col.values):
        from pladis.demo.checker import CATEGORIES

        order += [ALIGNMENT_PREFIX + c for c in CATEGORIES if ALIGNMENT_PREFIX + c in col.values]
    return order


def row_label(name: str, info: dict, baseline: str) -> str:
    if name == baseline:
        return name
    params = info.get("pladis")
    if isinstance(params, dict):
        inner = ", ".join(
            f"{k}={'+'.join(map(str, v)) if isinstance(v, list) else f'{v:g}'}" for k, v in params.items()
        )
        return f"+ PLADIS ({inner})"
    return f"+ {name}"


def analyse(col: Collected, baseline: str, n_boot: int = stats.N_BOOT, seed: int = 0) -> dict:
    if not col.configs:
        raise ReportError("no finished images in the given runs; run `pladis eval generate` first")
    if baseline not in col.configs:
        raise ReportError(f"--baseline {baseline!r} is not a config of these runs; available: {', '.join(col.configs)}")
    metrics = _metric_order(col)
    if not metrics:
        raise ReportError("no scores in the given runs; run `pladis eval score RUN --metrics ...` first")
    out: dict = {"baseline": baseline, "metrics": metrics, "configs": {}, "categories": {}, "bootstrap": {}}
    out["bootstrap"] = {"resamples": n_boot, "seed": seed, "unit": "prompt", "interval": "percentile 95%"}
    for name in col.configs:
        entry: dict = {"label": row_label(name, col.config_info[name], baseline), **col.config_info[name]}
        for metric in metrics:
            if metric in col.set_level:
                value = col.set_level[metric].get(name)
                base = col.set_level[metric].get(baseline)
                entry[metric] = {"mean": value, "set_level": True}
                if name != baseline and value is not None and base is not None:
                    entry[metric]["delta"] = {"mean": value - base, "ci95": None, "significant": None}
                continue
            values = col.values.get(metric, {}).get(name)
            if not values:
                continue
            entry[metric] = stats.estimate(values, col.prompt_of, n_boot, seed).as_dict()
            base_values = col.values[metric].get(baseline)
            if name != baseline and base_values:
                entry[metric]["delta"] = stats.paired_delta(base_values, values, col.prompt_of, n_boot, seed).as_dict()
        out["configs"][name] = entry
    cats = sorted(set(col.category_of.values()))
    for cat in cats:
        prompts = {p for p, c in col.category_of.items() if c == cat}
        per_cat: dict = {"n_prompts": len(prompts), "configs": {}}
        for name in col.configs:
            per_cat["configs"][name] = {}
            for metric in metrics:
                values = {
                    k: v for k, v in col.values.get(metric, {}).get(name, {}).items() if col.prompt_of[k] in prompts
                }
                if not values:
                    continue
                cell = stats.estimate(values, col.prompt_of, n_boot, seed).as_dict()
                base_values = {
                    k: v for k, v in col.values[metric].get(baseline, {}).items() if col.prompt_of[k] in prompts
                }
                if name != baseline and base_values:
                    cell["delta"] = stats.paired_delta(base_values, values, col.prompt_of, n_boot, seed).as_dict()
                per_cat["configs"][name][metric] = cell
        out["categories"][cat] = per_cat
    return out


def _cell(entry: dict | None, digits: int, is_base: bool) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    text = f"{entry['mean']:.{digits}f}"
    if entry.get("ci95") and is_base:
        lo, hi = entry["ci95"]
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    delta = entry.get("delta")
    if delta and not is_base:
        text += f" ({delta['mean']:+.{digits}f})"
        if delta.get("ci95"):
            lo, hi = delta["ci95"]
            text += f" [{lo:+.{digits}f}, {hi:+.{digits}f}]" + ("" if delta["significant"] else " n.s.")
    return text


def _delta_cell(entry: dict | None, digits: int) -> str:
    delta = (entry or {}).get("delta")
    if not delta:
        return "–"
    lo, hi = delta["ci95"]
    return f"{delta['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]" + (
        "" if delta["significant"] else " n.s."
    )


def _table(result: dict, metrics: list[str]) -> list[str]:
    baseline = result["baseline"]
    names = [baseline] + [n for n in result["configs"] if n != baseline]
    lines = ["| Method | " + " | ".join(label(m)[0] for m in metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name in names:
        entry = result["configs"][name]
        cells = [_cell(entry.get(m), label(m)[1], name == baseline) for m in metrics]
        lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict, runs: list[Path]) -> str:
    metrics = result["metrics"]
    main = [m for m in metrics if not m.startswith(ALIGNMENT_PREFIX)]
    checker = [m for m in metrics if m.startswith(ALIGNMENT_PREFIX)]
    base = result["configs"][result["baseline"]]
    some = next((base[m] for m in metrics if m in base and "n_prompts" in base[m]), None)
    boot = result["bootstrap"]
    lines = [
        "# pladis eval report",
        "",
        f"Runs: {', '.join(str(r) for r in runs)}. Baseline: `{result['baseline']}`"
        + (f"; {some['n_prompts']} prompts, {some['n_images']} images per config." if some else "."),
        "",
        "Each cell: mean over prompts of the per-prompt mean; for the baseline its 95 % interval in brackets; for "
        "the other rows the signed difference to the baseline (same prompts and seeds) and its 95 % interval; "
        f"**n.s.** = the interval contains 0. Paired bootstrap over prompts, {boot['resamples']} resamples, "
        f"seed {boot['seed']}. FID is one number per image set (no interval).",
        "",
    ]
    if main:
        lines += [*_table(result, main), ""]
    if checker:
        lines += ["## Embedded checker (prompt alignment, accuracy) by verdict category", ""]
        lines += [*_table(result, checker), ""]
    if result["categories"]:
        lines += ["## By prompt category", ""]
        others = [n for n in result["configs"] if n != result["baseline"]]
        for metric in [m for m in metrics if m != "fid" and (not m.startswith(ALIGNMENT_PREFIX) or m.endswith(":all"))]:
            name, digits = label(metric)
            lines += [f"### {name}", ""]
            head = ["category (prompts)", f"{result['baseline']}"] + [
                f"Δ {result['configs'][o]['label']}" for o in others
            ]
            lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
            for cat, per_cat in result["categories"].items():
                cells = per_cat["configs"]
                base_cell = cells.get(result["baseline"], {}).get(metric)
                row = [f"{cat} ({per_cat['n_prompts']})", f"{base_cell['mean']:.{digits}f}" if base_cell else "–"]
                row += [_delta_cell(cells.get(o, {}).get(metric), digits) for o in others]
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plot(result: dict, path: Path) -> Path:
    """Deltas to the baseline with their 95 % intervals, one panel per metric (matplotlib, else Pillow)."""
    baseline = result["baseline"]
    others = [n for n in result["configs"] if n != baseline]
    panels = []
    for metric in result["metrics"]:
        rows = []
        for name in others:
            delta = result["configs"][name].get(metric, {}).get("delta")
            if delta and delta.get("ci95"):
                rows.append((result["configs"][name]["label"], delta["mean"], *delta["ci95"], delta["significant"]))
        if rows:
            panels.append((label(metric)[0], rows))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_pillow(panels, path)
    n = max(1, len(panels))
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 0.5 + 0.45 * max(2, len(others)) * nrows + 0.8))
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax, (title, rows) in zip(flat, panels):
        ys = list(range(len(rows)))[::-1]
        for y, (_lab, mean, lo, hi, sig) in zip(ys, rows):
            color = "tab:blue" if sig else "tab:gray"
            ax.errorbar([mean], [y], xerr=[[mean - lo], [hi - mean]], fmt="o", color=color, capsize=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(ys)
        ax.set_yticklabels([r[0] for r in rows], fontsize=7)
        ax.set_title(f"Δ {title} vs {baseline}", fontsize=9)
    for ax in flat[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()

    def save(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=110)

    files.atomic_write(path, save)
    plt.close(fig)
    return path


def _plot_pillow(panels: list, path: Path) -> Path:
    from PIL import Image, ImageDraw

    row_h, width, left = 22, 720, 300
    height = sum(30 + row_h * len(rows) for _, rows in panels) + 20
    img = Image.new("RGB", (width, max(height, 60)), "white")
    draw = ImageDraw.Draw(img)
    y = 10
    for title, rows in panels:
        draw.text((10, y), f"Δ {title}", fill="black")
        y += 20
        span = max(max(abs(r[2]), abs(r[3])) for r in rows) or 1.0
        zero = left + (width - left - 20) / 2
        unit = (width - left - 40) / (2 * span)
        draw.line([(zero, y), (zero, y + row_h * len(rows))], fill=(120, 120, 120))
        for lab, mean, lo, hi, sig in rows:
            color = (31, 119, 180) if sig else (150, 150, 150)
            draw.text((10, y + 4), lab[:45], fill="black")
            draw.line([(zero + lo * unit, y + 10), (zero + hi * unit, y + 10)], fill=color, width=2)
            draw.ellipse([zero + mean * unit - 3, y + 7, zero + mean * unit + 3, y + 13], fill=color)
            y += row_h
        y += 10
    return files.atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def write_report(
    runs: list[Path], baseline: str, out: Path | None = None, n_boot: int = stats.N_BOOT, seed: int = 0
) -> dict:
    """Write report.md, report.json and report.png into ``out`` (default: the first run's folder)."""
    result = analyse(collect(runs), baseline, n_boot, seed)
    out = Path(out) if out is not None else Path(runs[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(result, runs)
    files.atomic_write_text(out / "report.md", text)
    files.write_json(out / "report.json", {**result, "runs": [str(r) for r in runs]})
    plot(result, out / "report.png")
    result["markdown"] = text
    result["files"] = [str(out / f) for f in ("report.md", "report.json", "report.png")]
    return result
