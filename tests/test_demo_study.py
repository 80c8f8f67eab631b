"""`pladis demo` takes its PLADIS setting and its captions from a committed study result, not from the code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from image_helpers import load_image
from pladis.cli import app
from pladis.demo import model, study

pytestmark = pytest.mark.usefixtures("eager_one_thread")
runner = CliRunner()


def a_study(**changes) -> dict:
    data = json.loads(study.default_path().read_text())
    data.update(changes)
    return data


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(data))
    return path


def test_the_shipped_study_is_valid_and_names_its_source():
    s = study.load_study()
    assert s.source and s.chosen_on
    assert 0 <= s.stock.accuracy <= 1 and s.stock.ci[0] <= s.stock.accuracy <= s.stock.ci[1]
    assert s.pladis.diff is not None and s.pladis.diff_ci is not None
    assert s.pladis.diff_ci[0] <= s.pladis.diff <= s.pladis.diff_ci[1]
    # "helps" agrees with its own numbers: a gain needs a paired CI above zero
    assert not s.helps or s.pladis.diff_ci[0] > 0


def test_captions_say_when_no_setting_helps_and_when_numbers_do_not_apply(tmp_path):
    s = study.load_study(write(tmp_path, a_study(helps=False, verdict="it hurt")))
    lines = study.caption_lines(s, s.scale, s.alpha, s.cfg, s.steps, measured=True)
    text = "\n".join(lines)
    assert f"{s.stock.accuracy:.3f}" in text and f"{s.pladis.accuracy:.3f}" in text
    assert "beats stock" in text and "it hurt" in text and s.source in text
    other = "\n".join(study.caption_lines(s, s.scale + 1, s.alpha, s.cfg, s.steps, measured=True))
    assert "not measured" in other and f"{s.pladis.accuracy:.3f}" not in other
    foreign = "\n".join(study.caption_lines(s, s.scale, s.alpha, s.cfg, s.steps, measured=False))
    assert "other weights" in foreign and f"{s.stock.accuracy:.3f}" not in foreign
    helps = study.load_study(write(tmp_path, a_study(helps=True, verdict="PLADIS helps here")))
    assert "beats stock" not in "\n".join(study.caption_lines(helps, helps.scale, helps.alpha, 4.0, 20, True))


def test_study_fingerprint_matches_only_its_weights(tmp_path):
    unet = tmp_path / "unet.safetensors"
    unet.write_bytes(b"weights")
    s = study.load_study(write(tmp_path, a_study(weights_sha256=study.file_sha256(unet))))
    assert s.matches(unet)
    unet.write_bytes(b"other weights")
    assert not s.matches(unet)
    assert study.load_study(write(tmp_path, a_study(weights_sha256=None))).matches(unet)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema": "something/2"}, "not a demo study"),
        ({"helps": "no"}, "'helps'"),
        ({"steps": 0}, "'steps'"),
        ({"stock": {"accuracy": 0.5, "ci": [0.4], "n": 10}}, "'ci'"),
        ({"pladis": {"scale": 2, "alpha": 1.5, "accuracy": 0.5, "ci": [0, 1], "n": 5}}, "'diff'"),
        ({"pladis": {**a_study()["pladis"], "layers": "up"}}, "'layers'"),
        ({"pladis": {**a_study()["pladis"], "temperature": 0}}, "'temperature'"),
        ({"pladis": {**a_study()["pladis"], "timesteps": [500]}}, "'timesteps'"),
    ],
)
def test_a_bad_study_is_one_line_before_any_work(tmp_path, monkeypatch, change, message):
    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the study was checked")

    monkeypatch.setattr(model, "load_demo_pipeline", no_model)
    path = write(tmp_path, a_study(**change))
    res = runner.invoke(app, ["demo", "--study", str(path), "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 2, res.output
    assert message in res.output and "--study" in res.output and len(res.output.strip().splitlines()) == 1


def test_demo_reads_its_setting_from_the_study(tmp_path, monkeypatch):
    """Point the demo at another study: its whole setting (scale, alpha, layers, temperature), cfg and steps are what
    PLADIS and the pipeline get, and the caption names that setting."""

    import pladis
    from pladis.demo import bench

    os.environ["HF_HUB_OFFLINE"] = "1"
    unet_file = model.WEIGHTS_DIR / model.UNET_FILE
    data = a_study(cfg=3.0, steps=2, helps=False, verdict="a test verdict", weights_sha256=study.file_sha256(unet_file))
    data["pladis"] = {**data["pladis"], "scale": 1.25, "alpha": 1.75, "layers": ["up"], "temperature": 2.0}
    applied, generated = [], []
    real_apply, real_generate = pladis.apply, bench.generate

    def spy_apply(pipe, **kw):
        applied.append(kw)
        return real_apply(pipe, **kw)

    def spy_generate(pipe, prompts, seeds, steps, cfg, batch_size=64):
        generated.append((steps, cfg))
        return real_generate(pipe, prompts, seeds, steps, cfg, batch_size)

    monkeypatch.setattr(pladis, "apply", spy_apply)
    monkeypatch.setattr(bench, "generate", spy_generate)
    out = tmp_path / "demo.png"
    args = ["demo", "--study", str(write(tmp_path, data)), "--out", str(out), "-p", "a red circle", "--samples", "1"]
    res = runner.invoke(app, [*args, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert applied == [{"scale": 1.25, "alpha": 1.75, "layers": ["up"], "temperature": 2.0}]
    assert generated == [(2, 3.0), (2, 3.0)]
    meta = load_image(out).text
    assert json.loads(meta["scale"]) == 1.25 and json.loads(meta["alpha"]) == 1.75
    assert meta["study"] == str(tmp_path / "study.json")
    caption = meta["caption"]  # the text drawn under the grid
    assert "a test verdict" in caption and "beats stock" in caption and f"{data['stock']['accuracy']:.3f}" in caption
    assert "scale=1.25 alpha=1.75 layers=up temperature=2:" in caption  # the numbers' line names the whole setting
    # an explicit option still wins over the study; the rest of the setting comes from it
    res = runner.invoke(app, [*args, "--device", "cpu", "--scale", "0.5", "--steps", "1"])
    assert res.exit_code == 0, res.output
    assert applied[-1] == {"scale": 0.5, "alpha": 1.75, "layers": ["up"], "temperature": 2.0}
    assert generated[-1] == (1, 3.0)
