"""pladis eval generate/score/report end to end: a saved tiny pipeline, the embedded model, resume after SIGKILL,
and two accelerate processes giving the same files and scores as one."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from eval_helpers import DEMO_ARGS, _files, _reference
from pladis.cli import app
from pladis.evaluation.generate import GenerateOptions, generate_run

pytestmark = pytest.mark.usefixtures("eager_one_thread")
runner = CliRunner()


def test_saved_pipeline_folder_and_study_loader(tmp_path):
    from pladis.study.loader import load_pairs_from_run
    from pladis.testing import tiny_sd15_pipeline

    folder = tmp_path / "tiny-sd15"
    tiny_sd15_pipeline().save_pretrained(folder)
    (tmp_path / "p.csv").write_text("prompt,category\na red cube,objects\na blue dog,animals\n")
    run = tmp_path / "run"
    args = ["eval", "generate", "--model", str(folder), "--prompts", str(tmp_path / "p.csv"), "--per-prompt", "2"]
    args += ["--config", "baseline", "--config", "pladis:scale=2,alpha=1.5,layers=up", "--steps", "2"]
    res = runner.invoke(app, [*args, "--device", "cpu", "--out", str(run)])
    assert res.exit_code == 0, res.output
    files = _files(run)
    assert len(files) == 8 and "8/8 images done" in res.output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["complete"] and sum(len(v) for v in manifest["samples"].values()) == 8
    pairs = load_pairs_from_run(run, "baseline", "pladis_scale=2_alpha=1.5_layers=up")
    assert [(p.sample_id, p.prompt, p.category) for p in pairs][:2] == [
        ("p000000_000", "a red cube", "objects"),
        ("p000000_001", "a red cube", "objects"),
    ]
    assert pairs[0].seed == 0 and pairs[1].seed == 1 and pairs[2].seed == 2
    side = json.loads((run / "images" / "baseline" / "p000001_000.json").read_text())
    assert side["model"] == str(folder) and "diffusers" in side["versions"] and side["pladis"] is None
    # PLADIS changed the images (same seeds, different attention)
    assert files["baseline/p000000_000"] != files["pladis_scale=2_alpha=1.5_layers=up/p000000_000"]
    # a second run with nothing to do writes nothing and changes nothing
    res = runner.invoke(app, [*args, "--device", "cpu", "--out", str(run)])
    assert res.exit_code == 0 and _files(run) == files
    # a layer group this model does not have: one line, after loading, before any image
    res = runner.invoke(app, [*args[:-6], "--config", "pladis:layers=single", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 1 and "single" in res.output and not (tmp_path / "bad" / "images").exists()


def test_preset_gives_its_scheduler_timesteps_and_settings(tmp_path, monkeypatch):
    """--preset loads the preset's set-up (DMD2: LCM at 999/749/499/249, CFG 0; its LoRA left out) on a local model."""
    import dataclasses

    import pladis.evaluation.generate as gen
    from pladis import presets
    from pladis.testing import tiny_sdxl_pipeline

    folder = tmp_path / "tiny-sdxl"
    tiny_sdxl_pipeline().save_pretrained(folder)
    (tmp_path / "p.txt").write_text("a red cube\n")
    seen: list[tuple[str, list[int], float]] = []

    def spy(pipe, index, timestep, callback_kwargs):
        seen.append((type(pipe.scheduler).__name__, [int(t) for t in pipe.scheduler.timesteps], pipe.guidance_scale))
        return callback_kwargs

    load = gen.load_for_eval

    def load_and_spy(*args, **kwargs):
        pipe, defaults = load(*args, **kwargs)
        defaults["extra"]["callback_on_step_end"] = spy
        return pipe, defaults

    monkeypatch.setattr(gen, "load_for_eval", load_and_spy)
    monkeypatch.setitem(presets.PRESETS, "sdxl-dmd2", dataclasses.replace(presets.get("sdxl-dmd2"), lora_repo=None))
    opts = GenerateOptions(
        out=tmp_path / "run", model=str(folder), preset="sdxl-dmd2", prompts=str(tmp_path / "p.txt"),
        per_prompt=1, configs=["baseline"], device="cpu", size=(64, 64),
    )  # fmt: skip
    generate_run(opts, show_progress=False)
    assert seen[0] == ("LCMScheduler", [999, 749, 499, 249], 0.0)
    spec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert spec["preset"] == "sdxl-dmd2" and spec["steps"] == 4 and spec["guidance"] == 0.0


def test_bad_options_fail_before_the_model_loads(tmp_path, monkeypatch):
    import pladis.evaluation.generate as gen

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(gen, "load_for_eval", no_model)
    cases = [
        (["--config", "pladis:alpha=7"], "alpha"),
        (["--config", "pladis:scale=2", "--config", "pladis:scale=2.0"], "same configuration"),
        (["--prompts", "nope.txt"], "no such file"),
        (["--per-prompt", "0"], "--per-prompt"),
        (["--batch-size", "0"], "--batch-size"),
        (["--preset", "sdxl-nope"], "unknown preset 'sdxl-nope'"),
    ]
    for extra, fragment in cases:
        res = runner.invoke(app, ["eval", "generate", *DEMO_ARGS, *extra, "--out", str(tmp_path / "x")])
        assert res.exit_code == 2, res.output
        assert fragment in res.output and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["eval", "score", str(tmp_path), "--metrics", "clip,bleu"])
    assert res.exit_code == 2 and "bleu" in res.output


def test_embedded_model_generate_score_report(tmp_path):
    run = tmp_path / "run"
    res = runner.invoke(app, ["eval", "generate", *DEMO_ARGS, "--out", str(run)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", "score", str(run), "--metrics", "alignment", "--device", "cpu"])
    assert res.exit_code == 0 and "16 images scored (16 new)" in res.output, res.output
    cache = json.loads((run / "scores" / "alignment.json").read_text())["entries"]
    assert len(cache) == 16 and set(cache["baseline/p000000_000"]["value"]) >= {"color", "all"}
    res = runner.invoke(app, ["eval", "score", str(run), "--metrics", "alignment", "--device", "cpu"])
    assert "(0 new)" in res.output  # cached
    res = runner.invoke(app, ["eval", "report", str(run), "--bootstrap", "200"])
    assert res.exit_code == 0, res.output
    assert "| baseline |" in res.output and "+ PLADIS (scale=2, alpha=1.5)" in res.output
    assert "## By prompt category" in res.output and "| relation (" in res.output
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["configs"]["baseline"]["alignment:all"]["n_prompts"] == 8
    assert (run / "report" / "report.png").stat().st_size > 1000


def test_corrupt_and_half_written_samples_are_redone(tmp_path):
    ref = _files(_reference(tmp_path))
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "reference", run)
    folder = run / "images" / "baseline"
    png = folder / "p000003_000.png"
    png.write_bytes(png.read_bytes()[:100])  # truncated image behind a valid sidecar
    (folder / "p000004_000.json").unlink()  # image without its sidecar (killed between the two writes)
    (folder / ".p000005_000.png.abc.tmp").write_bytes(b"partial")  # a temporary file of a killed write
    (run / "images" / "pladis_scale=2_alpha=1.5" / "p000006_000.png").unlink()  # sidecar without image
    opts = GenerateOptions(out=run, model="demo", prompts="demo:8", steps=2, batch_size=3, device="cpu")
    generate_run(opts, show_progress=False, echo=lambda m: None)
    assert _files(run) == ref and not list(run.glob("images/*/.*"))
