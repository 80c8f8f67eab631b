"""When does PLADIS help the embedded model? The study behind `pladis demo`, through `pladis eval` only.

    python scripts/demo_study.py --out runs/demo-study [--weights DIR] [--n-validation 40] [--n-test 80]
        [--steps 20] [--cfg 4] [--batch-size 40] [--device cpu] [--write-json src/pladis/weights/demo_study.json]
        [--markdown docs/demo-study.md] [--checkpoints RUN/checkpoints/step_000180 ... --n-checkpoint 40]

Each stage is one resumable `pladis eval` run under OUT (kill it and start it again: it continues):

* ``validation``  baseline and the paper's questions on the validation prompts (``demo:validation``, their own
  seeds): lambda x alpha, layer groups down/mid/up (Tab. 8), timestep windows early/late, temperature;
* ``cfg-1``, ``cfg-7.5``  baseline, the best validation setting and the paper's default at other CFG scales;
* ``test-seen``, ``test-heldout``  baseline, the chosen setting and the paper's default on the benchmark's seen
  and held-out compositions (prompts never used for choosing);
* ``ckpt-<name>-seen``, ``ckpt-<name>-heldout``  the same comparison on earlier checkpoints of the training run
  (`pladis train-demo` exports them under RUN/checkpoints/): does PLADIS help where concepts are learned but weak?

The setting is chosen on validation ("all" categories right, largest paired gain), never on the test prompts.
Writes OUT/study.json and OUT/study.md; ``--write-json`` also writes the demo's settings file (schema
``pladis-demo-study/1``, see ``pladis.demo.study``) and ``--markdown`` a copy of the tables for docs/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pladis import files
from pladis.evaluation.generate import GenerateOptions, generate_run
from pladis.evaluation.report import analyse, collect, markdown, plot
from pladis.evaluation.score import ScoreOptions, score_run

METRIC = "alignment:all"
PAPER_DEFAULT = "pladis:scale=2,alpha=1.5"
GRID = [f"pladis:scale={s},alpha={a}" for s in (1, 2) for a in (1.25, 1.5, 2)]
QUESTIONS = [
    *(f"{PAPER_DEFAULT},layers={group}" for group in ("down", "mid", "up")),
    f"{PAPER_DEFAULT},timesteps=500-1000",  # early steps (noisy: layout)
    f"{PAPER_DEFAULT},timesteps=0-500",  # late steps (details)
    f"{PAPER_DEFAULT},temperature=2",
]


CATEGORIES = ("color", "shape", "size", "position", "relation", "count", "all")


def run_stage(
    out: Path, name: str, prompts: str, configs: list[str], args, guidance: float, weights: Path | None = None
) -> dict:
    run = out / name
    opts = GenerateOptions(
        out=run, model="demo", prompts=prompts, configs=configs, per_prompt=1, steps=args.steps, guidance=guidance,
        batch_size=args.batch_size, device=args.device, weights=weights or args.weights,
    )  # fmt: skip
    print(f"== {name}: {len(configs)} configs on {prompts}, CFG {guidance:g}", flush=True)
    generate_run(opts)
    score_run(ScoreOptions(run, ["alignment"], device=args.device))
    result = analyse(collect([run]), "baseline")
    files.atomic_write_text(run / "report.md", markdown(result, [run]))
    plot(result, run / "report.png")
    return result


def gain(result: dict, config: str) -> float:
    return result["configs"][config][METRIC]["delta"]["mean"]


def config_name(result: dict, spec: str) -> str:
    return next(name for name, info in result["configs"].items() if info.get("spec") == spec)


def measured(result: dict, name: str, metric: str = METRIC) -> dict:
    cell = result["configs"][name][metric]
    entry = {"accuracy": round(cell["mean"], 4), "ci": [round(x, 4) for x in cell["ci95"]], "n": cell["n_prompts"]}
    if "delta" in cell:
        entry["diff"] = round(cell["delta"]["mean"], 4)
        entry["diff_ci"] = [round(x, 4) for x in cell["delta"]["ci95"]]
    return entry


def delta_text(delta: dict) -> str:
    """'+0.027 [-0.135, +0.189] n.s.': a paired difference, its 95 % interval, and n.s. where that crosses 0."""
    shown = f"{delta['mean']:+.3f} [{delta['ci95'][0]:+.3f}, {delta['ci95'][1]:+.3f}]"
    return shown + ("" if delta["significant"] else " n.s.")


def table(result: dict, title: str) -> list[str]:
    lines = [f"### {title}", "", "| setting | all | Δ vs stock [95 % CI] |", "|---|---|---|"]
    for info in result["configs"].values():
        cell = info[METRIC]
        delta = cell.get("delta")
        shown = "" if delta is None else delta_text(delta)
        lines.append(
            f"| {info['label']} | {cell['mean']:.3f} [{cell['ci95'][0]:.3f}, {cell['ci95'][1]:.3f}] | {shown} |"
        )
    return [*lines, ""]


def by_category(tests: dict[str, dict], spec: str, title: str) -> list[str]:
    """Stock and the chosen setting per checker category, seen and held-out compositions side by side."""
    lines = [
        f"### {title}",
        "",
        "| category | " + " | ".join(f"{split}: stock | {split}: Δ [95 % CI]" for split in tests),
    ]
    lines[-1] += " |"
    lines.append("|---|" + "---|---|" * len(tests))
    for category in CATEGORIES:
        metric, row = f"alignment:{category}", [category]
        for result in tests.values():
            stock = result["configs"]["baseline"].get(metric)
            cell = result["configs"][config_name(result, spec)].get(metric)
            if stock is None or cell is None or not cell["n_prompts"]:
                row += ["–", "–"]
                continue
            row += [f"{stock['mean']:.3f} (n={stock['n_prompts']})", delta_text(cell["delta"])]
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def training_table(stages: list[tuple[str, str, dict]], specs: list[str]) -> list[str]:
    """Stock and each compared setting across the run's checkpoints: (weights, split, result) rows."""
    head = " | ".join(f"{spec[7:]}: Δ [95 % CI]" for spec in specs)
    lines = ["### Across training (category all)", "", f"| weights | split | stock | {head} |"]
    lines.append("|---|---|---|" + "---|" * len(specs))
    for label, split, result in stages:
        stock = result["configs"]["baseline"][METRIC]
        row = [label, split, f"{stock['mean']:.3f} (n={stock['n_prompts']})"]
        row += [delta_text(result["configs"][config_name(result, spec)][METRIC]["delta"]) for spec in specs]
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def trained_on(folder: Path | None) -> str:
    """'step S of T (N k images)' from an exported weights folder's config."""
    from pladis.demo.model import load_config

    meta = load_config(folder).get("meta", {})
    if not meta.get("steps"):
        return "final"
    return f"step {meta['steps']} of {meta.get('total_steps', '?')} ({meta.get('images_seen', 0) / 1000:.0f} k images)"


def per_category(result: dict, spec: str) -> dict:
    """{category: {"stock": ..., "pladis": ...}} for every checker category with prompts."""
    return {
        category: {
            "stock": measured(result, "baseline", f"alignment:{category}"),
            "pladis": measured(result, config_name(result, spec), f"alignment:{category}"),
        }
        for category in CATEGORIES
        if result["configs"]["baseline"].get(f"alignment:{category}", {}).get("n_prompts")
    }


def weights_sha(weights: Path | None) -> str | None:
    from pladis.demo.model import UNET_FILE, WEIGHTS_DIR
    from pladis.demo.study import file_sha256

    path = Path(weights or WEIGHTS_DIR) / UNET_FILE
    return file_sha256(path) if path.is_file() else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=None, help="demo weights folder (default: the shipped ones)")
    parser.add_argument("--n-validation", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=80)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--other-cfgs", default="1,7.5", help="CFG scales of the guidance question ('' to skip)")
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write-json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument(
        "--checkpoints", type=Path, nargs="*", default=[], help="earlier weight folders of the run (RUN/checkpoints/*)"
    )
    parser.add_argument("--n-checkpoint", type=int, default=40, help="test prompts per split for each checkpoint")
    args = parser.parse_args(argv)
    if min(args.n_validation, args.n_test, args.steps, args.batch_size, args.n_checkpoint) < 1:
        parser.error("--n-validation, --n-test, --n-checkpoint, --steps and --batch-size must be at least 1")
    from pladis.demo.model import CONFIG_FILE

    missing = [str(folder) for folder in args.checkpoints if not (folder / CONFIG_FILE).is_file()]
    if missing:
        parser.error(f"--checkpoints: no {CONFIG_FILE} in {', '.join(missing)}; give folders of exported weights")
    start = time.perf_counter()
    validation_prompts = f"demo:validation:{args.n_validation}"
    validation = run_stage(args.out, "validation", validation_prompts, ["baseline", *GRID, *QUESTIONS], args, args.cfg)
    candidates = [name for name in validation["configs"] if name != "baseline"]
    best = max(candidates, key=lambda name: gain(validation, name))
    best_spec = validation["configs"][best]["spec"]
    compared = list(dict.fromkeys([best_spec, PAPER_DEFAULT]))
    cfgs = {}
    for cfg in (float(c) for c in args.other_cfgs.split(",") if c.strip()):
        cfgs[cfg] = run_stage(args.out, f"cfg-{cfg:g}", validation_prompts, ["baseline", *compared], args, cfg)
    tests = {
        split: run_stage(
            args.out, f"test-{split}", f"demo:{split}:{args.n_test}", ["baseline", *compared], args, args.cfg
        )
        for split in ("seen", "heldout")
    }
    checkpoints: dict[str, dict[str, dict]] = {}
    for folder in args.checkpoints:
        for split in ("seen", "heldout"):
            prompts = f"demo:{split}:{args.n_checkpoint}"
            stage = f"ckpt-{folder.name}-{split}"
            result = run_stage(args.out, stage, prompts, ["baseline", *compared], args, args.cfg, weights=folder)
            checkpoints.setdefault(folder.name, {})[split] = result
    seen = tests["seen"]
    chosen = config_name(seen, best_spec)
    settings = seen["configs"][chosen]["pladis"]
    # the whole setting (layers, timesteps, temperature too): the demo applies what was measured
    chosen_entry = {**settings, **measured(seen, chosen)}
    helps = gain(validation, best) > 0 and chosen_entry["diff_ci"][0] > 0
    verdict = (
        f"PLADIS {best_spec[7:]} raised accuracy on held-back test prompts"
        if helps
        else f"no PLADIS setting measured beat stock; the best on validation ({best_spec[7:]}, "
        f"Δ {gain(validation, best):+.3f}) is shown"
    )
    study = {
        "schema": "pladis-demo-study/1",
        "source": f"scripts/demo_study.py: validation n={args.n_validation}, test n={args.n_test} per split, "
        f"{args.steps} steps, CFG {args.cfg:g}, checker category 'all' ({time.perf_counter() - start:.0f} s on "
        f"{args.device} in the last invocation; finished stages are not redone); tables in "
        f"{args.markdown or args.out / 'study.md'}",
        "weights_sha256": weights_sha(args.weights),
        "chosen_on": f"validation prompts ({validation_prompts}): the largest paired gain in 'all' of "
        f"{len(candidates)} settings",
        "cfg": args.cfg,
        "steps": args.steps,
        "metric": "all",
        "stock": measured(seen, "baseline"),
        "pladis": chosen_entry,
        "helps": helps,
        "verdict": verdict,
        "splits": {
            split: {"stock": measured(r, "baseline"), "pladis": measured(r, config_name(r, best_spec))}
            for split, r in tests.items()
        },
        "categories": {split: per_category(r, best_spec) for split, r in tests.items()},
        "checkpoints": {
            name: {split: per_category(r, best_spec) for split, r in results.items()}
            for name, results in checkpoints.items()
        },
    }
    lines = ["# The embedded model's PLADIS study", "", study["source"], "", f"Verdict: {verdict}.", ""]
    lines += table(validation, f"Validation ({validation_prompts}, CFG {args.cfg:g}): the settings compared")
    for cfg, result in cfgs.items():
        lines += table(result, f"CFG {cfg:g} ({validation_prompts})")
    for split, result in tests.items():
        lines += table(result, f"Test, {split} compositions (demo:{split}:{args.n_test}, CFG {args.cfg:g})")
    lines += by_category(tests, best_spec, f"Test by checker category: stock and {best_spec[7:]}")
    for name, results in checkpoints.items():
        for split, result in results.items():
            lines += table(result, f"Checkpoint {name}, {split} compositions (demo:{split}:{args.n_checkpoint})")
        lines += by_category(results, best_spec, f"Checkpoint {name} by checker category: stock and {best_spec[7:]}")
    stages = [
        (f"{folder.name}, {trained_on(folder)}", split, checkpoints[folder.name][split])
        for folder in args.checkpoints
        for split in ("seen", "heldout")
    ]
    stages += [(f"final, {trained_on(args.weights)}", split, tests[split]) for split in ("seen", "heldout")]
    lines += training_table(stages, compared)
    if args.markdown:
        stages_plotted = ("validation", "test-seen", "test-heldout")
        copies = {stage: args.markdown.with_name(f"{args.markdown.stem}-{stage}.png") for stage in stages_plotted}
        for stage, path in copies.items():
            files.atomic_copy(args.out / stage / "report.png", path)
        links = ", ".join(f"[{stage}]({path.name})" for stage, path in copies.items())
        lines[4:4] = [f"Plots (Δ to stock per checker category, 95 % CI): {links}.", ""]
    text = "\n".join(lines)
    files.write_json(args.out / "study.json", study)
    files.atomic_write_text(args.out / "study.md", text)
    if args.write_json:
        files.atomic_write_text(args.write_json, json.dumps(study, indent=1) + "\n")
    if args.markdown:
        files.atomic_write_text(args.markdown, text)
    print(text)
    return study


if __name__ == "__main__":
    main()
