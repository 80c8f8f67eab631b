"""`pladis sweep`: a labelled scale x alpha grid per seed from one loaded model, PLADIS applied once."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import pladis
from image_helpers import load_image
from pladis import cli, metadata
from pladis.cli import loading
from pladis.cli import sweep as sweep_command
from pladis.compare import enlarged

pytestmark = pytest.mark.usefixtures("eager_one_thread")

runner = CliRunner()
SIZE = 32


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setattr(loading, "_hub_reachable", lambda *a, **k: False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from pladis.testing import tiny_sd15_pipeline

    path = tmp_path_factory.mktemp("tiny-sd15")
    tiny_sd15_pipeline().save_pretrained(path)
    return path


def sweep(model, out, *args):
    return runner.invoke(cli.app, ["sweep", "--model", str(model), "--prompt", "a red cube on a blue sphere",
                                   "--steps", "2", "--size", str(SIZE), "--out", str(out), *map(str, args)])  # fmt: skip


@pytest.fixture
def counted(monkeypatch):
    """Counts of model loads, PLADIS applications and pipeline calls during a sweep."""
    counts = {"load": 0, "apply": 0, "calls": 0}
    load, apply, run_batch = loading.load_preset_pipeline, pladis.apply, sweep_command.run_batch

    def counting(key, fn):
        def wrapper(*a, **k):
            counts[key] += 1
            return fn(*a, **k)

        return wrapper

    monkeypatch.setattr(sweep_command, "load_preset_pipeline", counting("load", load))
    monkeypatch.setattr(pladis, "apply", counting("apply", apply))
    monkeypatch.setattr(sweep_command, "run_batch", counting("calls", run_batch))
    return counts


def test_sweep_writes_a_labelled_grid_per_seed(model_dir, tmp_path, counted):
    out = tmp_path / "sweep"
    result = sweep(model_dir, out, "--scales", "0,2,3", "--alphas", "1.5,2", "--seeds", "0,1")
    assert result.exit_code == 0, result.output
    assert counted == {"load": 1, "apply": 1, "calls": 2 * (1 + 2 * 2)}  # stock once per seed, shared by the rows
    index = json.loads((out / "index.json").read_text())
    assert [g["path"] for g in index["grids"]] == ["grid_seed0.png", "grid_seed1.png"]
    assert len(index["images"]) == 2 * 2 * 3 and index["scales"] == [0.0, 2.0, 3.0] and index["alphas"] == [1.5, 2.0]
    assert len(list((out / "images").glob("*.png"))) == 2 * (1 + 2 * 2)
    grid = load_image(out / "grid_seed0.png")
    boxes = json.loads(grid.text["pladis:panels"])
    assert [len(row) for row in boxes] == [3, 3]  # rows alpha, columns scale
    cell = {(r, c): np.asarray(grid.crop(tuple(boxes[r][c])), dtype=int) for r in range(2) for c in range(3)}
    shown = enlarged(Image.new("RGB", (SIZE, SIZE))).width  # small images are shown enlarged, by an integer factor
    assert shown >= 128 and all(a.shape == (shown, shown, 3) for a in cell.values())
    assert np.array_equal(cell[0, 0], cell[1, 0])  # scale 0: the stock image in every row
    assert np.abs(cell[0, 1] - cell[1, 1]).max() > 0  # alpha changes the PLADIS image
    assert np.abs(cell[0, 1] - cell[0, 2]).max() > 0  # and so does the scale
    settings = metadata.read(out / "grid_seed0.png")["settings"]
    assert settings["scales"] == [0.0, 2.0, 3.0] and settings["alphas"] == [1.5, 2.0] and settings["seed"] == 0
    # labels: the layout of the same rows/labels has them, in the grid's metadata order
    from pladis.compare import grid_layout

    layout = grid_layout([[(shown, shown)] * 3] * 2, ["α=1.5", "α=2.0"], ["λ=0.0 (stock)", "λ=2.0", "λ=3.0"])
    assert layout.boxes == [[tuple(b) for b in row] for row in boxes]


def test_a_swept_image_is_the_one_generate_makes_and_a_rerun_resumes(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    assert sweep(model_dir, out, "--scales", "2", "--alphas", "1.25,1.5", "--seeds", "3").exit_code == 0
    single = tmp_path / "single.png"
    result = runner.invoke(cli.app, ["generate", "--model", str(model_dir), "--prompt", "a red cube on a blue sphere",
                                     "--steps", "2", "--size", str(SIZE), "--seed", "3", "--scale", "2", "--alpha",
                                     "1.5", "--out", str(single)])  # fmt: skip
    assert result.exit_code == 0, result.output
    swept = np.asarray(load_image(out / "images" / "seed3_alpha1.5_scale2.0.png"))
    assert np.array_equal(swept, np.asarray(load_image(single)))  # re-scaled in place == applied afresh
    monkeypatch.setattr(sweep_command, "run_batch", lambda *a, **k: pytest.fail("re-generated a finished image"))
    assert sweep(model_dir, out, "--scales", "2", "--alphas", "1.25,1.5", "--seeds", "3").exit_code == 0


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--scales", "1,x"], "invalid --scales"),
        (["--alphas", "3"], "--alphas"),
        (["--scales", "-1"], "--scales"),
        (["--seeds", "2-1"], "invalid --seeds"),
    ],
)
def test_bad_values_fail_before_loading(model_dir, tmp_path, monkeypatch, args, expected):
    monkeypatch.setattr(sweep_command, "load_preset_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    result = sweep(model_dir, tmp_path / "s", *args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and expected in lines[0], result.output


def test_out_must_be_a_folder(model_dir, tmp_path):
    file = tmp_path / "file.png"
    file.write_bytes(b"")
    result = sweep(model_dir, file)
    assert result.exit_code == 2 and "give a folder" in result.stderr


@pytest.mark.parametrize("command", ["generate", "sweep", "info"])
def test_help_renders(command):
    result = runner.invoke(cli.app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--help" in result.stdout
