"""scripts/demo_study.py end to end at the smallest size: the setting is chosen on validation, measured on the test
splits, and the file it writes is one `pladis demo` reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("eager_one_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo_study.py"


def test_study_chooses_on_validation_and_writes_what_the_demo_reads(tmp_path):
    spec = importlib.util.spec_from_file_location("demo_study", SCRIPT)
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out, settings = tmp_path / "study", tmp_path / "demo_study.json"
    study = script.main(["--out", str(out), "--n-validation", "2", "--n-test", "2", "--steps", "2", "--other-cfgs",
                         "", "--batch-size", "16", "--write-json", str(settings)])  # fmt: skip
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
    assert (out / "study.md").read_text().startswith("# The embedded model's PLADIS study")
