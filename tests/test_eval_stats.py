"""pladis eval: config and prompt parsing, the paired bootstrap and the report on synthetic scores."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from image_helpers import load_image
from pladis.evaluation import run as runlib
from pladis.evaluation import stats
from pladis.evaluation.configs import ConfigError, apply_kwargs, parse_config, parse_configs
from pladis.evaluation.prompts import PromptError, load_prompts
from pladis.evaluation.report import write_report
from pladis.evaluation.score import write_cache


def test_config_strings_parse_to_apply_kwargs():
    assert parse_config("baseline").apply is None
    c = parse_config("pladis:scale=2,alpha=1.5,layers=up,temperature=1.2")
    assert c.apply == {"scale": 2.0, "alpha": 1.5, "layers": ["up"], "temperature": 1.2}
    assert c.name == "pladis_scale=2_alpha=1.5_temperature=1.2_layers=up"
    t = parse_config("pladis:timesteps=500-1000,layers=down+up")
    assert apply_kwargs(t) == {"timesteps": (500.0, 1000.0), "layers": ["down", "up"], "scale": 2.0, "alpha": 1.5}


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("pladis:scale=x", "not a number"),
        ("pladis:alpha=3", "alpha"),
        ("pladis:scale=-1", "scale"),
        ("pladis:foo=1", "unknown key"),
        ("pladis:scale", "KEY=VALUE"),
        ("pladis:timesteps=900-100", "timesteps"),
        ("stock", "must start with"),
        ("pladis:scale=2,scale=3", "twice"),
    ],
)
def test_bad_config_strings_fail_with_one_line(spec, fragment):
    with pytest.raises(ConfigError, match=fragment) as err:
        parse_config(spec)
    assert "\n" not in str(err.value)


def test_duplicate_configs_are_refused():
    with pytest.raises(ConfigError, match="same configuration"):
        parse_configs(["pladis:scale=2", "pladis:alpha=1.5,scale=2"])


def test_prompt_files_and_the_offline_line(tmp_path, monkeypatch):
    (tmp_path / "p.txt").write_text("a cat\n\n  a   dog \n")
    assert [p.text for p in load_prompts(str(tmp_path / "p.txt"))] == ["a cat", "a dog"]
    (tmp_path / "p.csv").write_text("prompt,category\na cat,animals\na car,vehicles\n")
    got = load_prompts(str(tmp_path / "p.csv"))
    assert [(p.index, p.text, p.category) for p in got] == [(0, "a cat", "animals"), (1, "a car", "vehicles")]
    (tmp_path / "p.jsonl").write_text('{"caption": "a cow", "Category": "x"}\n{"prompt": "a hen"}\n')
    assert [(p.text, p.category) for p in load_prompts(str(tmp_path / "p.jsonl"), limit=1)] == [("a cow", "x")]
    demo = load_prompts("demo:10")
    assert len(demo) == 10 and {p.category for p in demo} == {"single", "position", "relation", "and", "count"}
    from pladis.demo.scenes import benchmark_prompts

    for split in ("seen", "heldout", "validation"):  # the embedded benchmark's splits, as scenes draws them
        expected = [s.caption() for s in benchmark_prompts(6, split=split)]
        assert [p.text for p in load_prompts(f"demo:{split}:6")] == expected
    assert [p.text for p in load_prompts("demo:6")] == [p.text for p in load_prompts("demo:seen:6")]
    for bad, fragment in (("demo:train:5", "unknown demo split"), ("demo:5:5", "demo[:SPLIT][:N]"), ("demo:0", ">= 1")):
        with pytest.raises(PromptError, match=re.escape(fragment)):
            load_prompts(bad)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PromptError) as err:
        load_prompts("drawbench")
    message = str(err.value)
    assert "sayakpaul/drawbench" in message and "--prompts prompts.txt" in message and "\n" not in message
    with pytest.raises(PromptError, match="no such file"):
        load_prompts(str(tmp_path / "missing.txt"))


def test_bootstrap_known_answers():
    # a constant per-prompt difference: the interval collapses onto it, whatever the resampling
    base = {(f"p{i}", s): float(i) for i in range(20) for s in range(3)}
    other = {k: v + 0.25 for k, v in base.items()}
    prompt_of = {k: k[0] for k in base}
    d = stats.paired_delta(base, other, prompt_of)
    assert d.mean == pytest.approx(0.25) and d.low == pytest.approx(0.25) and d.high == pytest.approx(0.25)
    assert d.significant and d.n_prompts == 20 and d.n_images == 60
    # per-prompt differences ~ N(mu, sd): the 95 % interval is mu_hat +- 1.96 sd / sqrt(P), to bootstrap accuracy
    rng = np.random.default_rng(1)
    diffs = rng.normal(0.3, 1.0, size=400)
    base = {(f"p{i}", 0): 0.0 for i in range(400)}
    other = {(f"p{i}", 0): float(x) for i, x in enumerate(diffs)}
    d = stats.paired_delta(base, other, {k: k[0] for k in base}, n_boot=4000, seed=3)
    half = 1.96 * diffs.std(ddof=1) / np.sqrt(400)
    assert d.mean == pytest.approx(diffs.mean())
    assert d.low == pytest.approx(diffs.mean() - half, abs=0.015) and d.high == pytest.approx(
        diffs.mean() + half, abs=0.015
    )
    # centred noise: the interval contains 0 -> not significant; seeded: the same interval twice
    noise = {(f"p{i}", 0): float(x) for i, x in enumerate(diffs - diffs.mean())}
    n1 = stats.paired_delta(base, noise, {k: k[0] for k in base}, seed=5)
    assert not n1.significant and n1 == stats.paired_delta(base, noise, {k: k[0] for k in base}, seed=5)


def test_images_of_a_prompt_are_averaged_before_resampling():
    # prompt a has 4 images (delta 1 each), prompt b one image (delta 0): prompt-level mean is 0.5, not 0.8
    base = {("a", s): 0.0 for s in range(4)} | {("b", 0): 0.0}
    other = {("a", s): 1.0 for s in range(4)} | {("b", 0): 0.0}
    d = stats.paired_delta(base, other, {k: k[0] for k in base})
    assert d.mean == pytest.approx(0.5) and d.n_prompts == 2 and d.n_images == 5


def _fake_run(root, configs, per_config_value, categories):
    """A run folder with committed 8x8 images and a clip score cache, as generate + score would leave it."""
    entries = {}
    for config in configs:
        for i, cat in enumerate(categories):
            for j in range(2):
                sample = runlib.Sample(runlib.Prompt(i, f"prompt {i}", cat), j, i * 2 + j)
                side = runlib.write_sample(
                    root,
                    config,
                    Image.new("RGB", (8, 8), (i, j, 0)),
                    {
                        "prompt": sample.prompt.text,
                        "seed": sample.seed,
                        "config": config,
                        "category": cat,
                        "prompt_index": i,
                        "sample_id": sample.sample_id,
                        "width": 8,
                        "height": 8,
                        "pladis": None if config == "baseline" else {"scale": 2.0, "alpha": 1.5},
                    },
                )
                value = per_config_value(config, i, j)
                entries[f"{config}/{sample.sample_id}"] = {"sha256": side["sha256"], "value": value}
    write_cache(root / "scores" / "clip.json", "clip", "clip", entries)


def test_report_rows_deltas_and_categories(tmp_path):
    cats = ["animals", "animals", "text", "text"]
    offsets = {"baseline": 0.0, "pladis_scale=2_alpha=1.5": 1.0}
    _fake_run(tmp_path, list(offsets), lambda c, i, j: 20.0 + i + offsets[c] * (1 if cats[i] == "animals" else 0), cats)
    result = write_report([tmp_path], "baseline", tmp_path / "rep", n_boot=500)
    row = result["configs"]["pladis_scale=2_alpha=1.5"]
    assert row["label"] == "+ PLADIS (scale=2, alpha=1.5)"
    assert row["clip"]["delta"]["mean"] == pytest.approx(0.5)  # +1 on two prompts of four
    assert result["configs"]["baseline"]["clip"]["mean"] == pytest.approx(21.5)
    by_cat = result["categories"]
    assert by_cat["animals"]["configs"]["pladis_scale=2_alpha=1.5"]["clip"]["delta"]["ci95"] == [1.0, 1.0]
    text_delta = by_cat["text"]["configs"]["pladis_scale=2_alpha=1.5"]["clip"]["delta"]
    assert text_delta["mean"] == 0.0 and not text_delta["significant"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| baseline | 21.50 [" in md and "+ PLADIS (scale=2, alpha=1.5) | 22.00 (+0.50)" in md
    assert "| text (2) | 22.50 | +0.00 [+0.00, +0.00] n.s. |" in md
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["baseline"] == "baseline"
    assert load_image(tmp_path / "rep" / "report.png").size[0] > 100
    # a stale cache entry (the image changed since it was scored) is left out
    png = tmp_path / "images" / "baseline" / "p000000_000.png"
    side = json.loads(png.with_suffix(".json").read_text())
    runlib.write_sample(tmp_path, "baseline", Image.new("RGB", (8, 8), (9, 9, 9)), side)
    again = write_report([tmp_path], "baseline", tmp_path / "rep2", n_boot=200)
    assert again["configs"]["baseline"]["clip"]["n_images"] == 7


def test_report_refuses_an_unknown_baseline(tmp_path):
    from pladis.evaluation.report import ReportError

    _fake_run(tmp_path, ["baseline", "x"], lambda c, i, j: 1.0, ["a", "b"])
    with pytest.raises(ReportError, match="available: baseline, x"):
        write_report([tmp_path], "stock")
