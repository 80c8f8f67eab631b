"""scripts/demo_study.py end to end at the smallest size: the setting is chosen on validation, measured on the test
splits, and the file it writes is one `pladis demo` reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("eager_one_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo_study.py"


def load_script():
    spec = importlib.util.spec_from_file_location("demo_study", SCRIPT)
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_study_chooses_on_validation_and_writes_what_the_demo_reads(tmp_path):
    from pladis.demo.model import WEIGHTS_DIR

    script = load_script()
    out, settings, doc = tmp_path / "study", tmp_path / "demo_study.json", tmp_path / "docs" / "study.md"
    study = script.main(["--out", str(out), "--n-validation", "2", "--n-test", "2", "--steps", "2", "--other-cfgs",
                         "", "--batch-size", "16", "--write-json", str(settings), "--checkpoints", str(WEIGHTS_DIR),
                         "--n-checkpoint", "1", "--markdown", str(doc)])  # fmt: skip
    validation = json.loads((out / "validation" / "manifest.json").read_text())
    assert len(validation["samples"]) == 1 + len(script.GRID) + len(script.QUESTIONS)  # every setting generated
    report = script.analyse(script.collect([out / "validation"]), "baseline")
    gains = {info["spec"]: info[script.METRIC]["delta"]["mean"] for name, info in report["configs"].items()
             if name != "baseline"}  # fmt: skip
    best = max(gains.values())
    chosen = f"pladis:scale={study['pladis']['scale']:g},alpha={study['pladis']['alpha']:g}"
    assert any(spec.startswith(chosen) and gain == best for spec, gain in gains.items())
    assert set(study["splits"]) == {"seen", "heldout"} and study["stock"]["n"] == 2
    assert study["helps"] == (best > 0 and study["pladis"]["diff_ci"][0] > 0)

    from pladis.demo.study import load_study

    loaded = load_study(settings)
    assert (loaded.scale, loaded.alpha) == (study["pladis"]["scale"], study["pladis"]["alpha"])
    text = (out / "study.md").read_text()
    assert text.startswith("# The embedded model's PLADIS study")
    # the checkpoint question: the same comparison on another weights folder, one prompt per split
    checkpoint = study["checkpoints"][WEIGHTS_DIR.name]
    assert set(checkpoint) == {"seen", "heldout"} and checkpoint["seen"]["all"]["stock"]["n"] == 1
    assert json.loads((out / f"ckpt-{WEIGHTS_DIR.name}-seen" / "manifest.json").read_text())["complete"]
    assert f"### Checkpoint {WEIGHTS_DIR.name}, seen compositions" in text
    # per checker category, stock and the chosen setting on both splits (table and JSON agree)
    all_seen = study["categories"]["seen"]["all"]
    assert all_seen == study["splits"]["seen"]
    assert "| category | seen: stock |" in text
    assert f"### Checkpoint {WEIGHTS_DIR.name} by checker category" in text
    # across training: each checkpoint and the final weights, both splits, stock and each compared setting
    rows = [line for line in text.splitlines() if line.startswith(f"| {WEIGHTS_DIR.name}, ")]
    assert [row.split(" | ")[1] for row in rows] == ["seen", "heldout"]
    assert sum(line.startswith("| final, ") for line in text.splitlines()) == 2
    # the docs copy links its plots, written next to it as PNGs
    doc_text = doc.read_text()
    assert doc_text.replace("](study-", "](").count("](") >= 3 and "## " not in doc_text.split("Plots")[0]
    for stage in ("validation", "test-seen", "test-heldout"):
        png = doc.with_name(f"study-{stage}.png")
        assert f"]({png.name})" in doc_text and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_folders_are_checked_before_any_generation(tmp_path, capsys):
    script = load_script()
    with pytest.raises(SystemExit):
        script.main(["--out", str(tmp_path / "study"), "--checkpoints", str(tmp_path)])
    assert "no demo_config.json in" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()
