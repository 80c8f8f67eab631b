"""The `pladis` command line, offline, on a tiny random-weight SD1.5 pipeline saved to disk."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import pladis
from image_helpers import load_image
from pladis import cli
from pladis.cli import common, loading
from pladis.cli import generate as generate_command
from pladis.compare import DEFAULT_BORDER, enlarged, grid_layout, labelled_grid

pytestmark = pytest.mark.usefixtures("eager_one_thread")

runner = CliRunner()
SIZE = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from pladis.testing.unet import tiny_sd15_pipeline

    path = tmp_path_factory.mktemp("tiny-sd15")
    tiny_sd15_pipeline().save_pretrained(path)
    return path


def generate(model, *args):
    return runner.invoke(
        cli.app, ["generate", "--model", str(model), "--prompt", "a red cube on a blue sphere", "--steps", "2",
                  "--size", str(SIZE), *map(str, args)],
    )  # fmt: skip


def panels(path):
    """The image panels of a --compare grid at the images' own size (SIZE), found through the layout stored in its PNG
    metadata; a small image is shown enlarged by an integer factor, every pixel a block (checked here)."""
    grid = load_image(path)
    boxes = json.loads(grid.text["pladis:panels"])
    shown = [np.asarray(grid.crop(tuple(box)).convert("RGB")) for box in boxes]
    factor = shown[0].shape[0] // SIZE
    own = [a[::factor, ::factor] for a in shown]
    assert all(np.array_equal(a, b.repeat(factor, 0).repeat(factor, 1)) for a, b in zip(shown, own))
    return own


def test_version():
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"pladis {pladis.__version__}"


def test_labelled_grid_size():
    a, b = Image.new("RGB", (40, 30), "red"), Image.new("RGB", (50, 20), "blue")
    grid = labelled_grid([[a, b], [b, a]], None, ["left", "right"], "a caption\nsecond line")
    layout = grid_layout([[a, b], [b, a]], None, ["left", "right"], "a caption\nsecond line")
    assert grid.size == layout.size
    assert grid.width == 50 + 50 + 3 * DEFAULT_BORDER  # columns as wide as their widest image
    assert [r[0] for r in layout.boxes] == [(8, layout.boxes[0][0][1], 48, layout.boxes[0][0][1] + 30),
                                            (8, layout.boxes[1][0][1], 58, layout.boxes[1][0][1] + 20)]  # fmt: skip
    assert np.array_equal(np.asarray(layout.crop(grid, 1, 1)), np.asarray(a))  # panels are pasted unscaled
    assert grid.height > 30 + 30 + 3 * DEFAULT_BORDER  # room for column labels and the caption
    with_rows = labelled_grid([[a, b]], ["a row label"], ["left", "right"])
    assert with_rows.width > grid.width and with_rows.height < grid.height  # row labels add width, no caption
    with pytest.raises(ValueError, match="column labels"):
        labelled_grid([[a, b]], None, ["only one"])


def test_compare_writes_labelled_side_by_side(model_dir, tmp_path):
    out = tmp_path / "cmp.png"
    result = generate(model_dir, "--compare", out)
    assert result.exit_code == 0, result.output
    assert out.is_file() and "wrote" in result.stdout
    grid = load_image(out)
    assert grid.width == 2 * enlarged(Image.new("RGB", (SIZE, SIZE))).width + 3 * DEFAULT_BORDER
    stock, pladis_img = panels(out)
    assert stock.shape == pladis_img.shape == (SIZE, SIZE, 3)
    assert not np.array_equal(stock, pladis_img)
    settings = json.loads(grid.text["pladis:settings"])
    assert settings["scale"] == 2.0 and settings["steps"] == 2 and settings["size"] == f"{SIZE}x{SIZE}"


def test_scale_zero_is_the_stock_image(model_dir, tmp_path):
    out = tmp_path / "cmp0.png"
    result = generate(model_dir, "--compare", out, "--scale", 0)
    assert result.exit_code == 0, result.output
    stock, pladis_img = panels(out)
    assert np.array_equal(stock, pladis_img)


def test_out_writes_only_the_pladis_image_and_leaves_the_pipeline_clean(model_dir, tmp_path, monkeypatch):
    loaded = []
    load = loading.load_preset_pipeline
    monkeypatch.setattr(
        generate_command, "load_preset_pipeline", lambda *a, **k: loaded.append(load(*a, **k)) or loaded[-1]
    )
    out = tmp_path / "sub" / "pladis.png"
    result = generate(model_dir, "--out", out, "--scheduler", "euler", "--freeu", "0.9,0.2,1.5,1.6")
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.rglob("*.png")] == ["pladis.png"]
    assert load_image(out).size == (SIZE, SIZE)
    assert not pladis.is_applied(loaded[0])
    assert type(loaded[0].scheduler).__name__ == "EulerDiscreteScheduler"


def test_missing_model_path_is_one_clear_line(tmp_path):
    missing = tmp_path / "no-such-model"
    result = runner.invoke(
        cli.app, ["generate", "--model", str(missing), "--prompt", "x", "--out", str(tmp_path / "o.png")]
    )
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "does not exist" in lines[0]


def test_unreachable_hub_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "_hub_reachable", lambda *a, **k: False)
    result = runner.invoke(
        cli.app, ["generate", "--model", "pladis-tests/not-cached", "--prompt", "x", "--out", str(tmp_path / "o.png")]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'pladis-tests/not-cached'" in lines[0] and "unreachable" in lines[0]


def test_pladis_errors_are_reported_before_any_generation(model_dir, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("no cross-attention found in FakePipeline: pass a text-conditioned pipeline")

    monkeypatch.setattr(pladis, "apply", refuse)
    monkeypatch.setattr(generate_command, "run_batch", lambda *a, **k: pytest.fail("generated before checking PLADIS"))
    result = generate(model_dir, "--compare", tmp_path / "cmp.png")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == (
        "error: no cross-attention found in FakePipeline: pass a text-conditioned pipeline"
    )
    assert not (tmp_path / "cmp.png").exists()


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--size", "64y64", "invalid --size"),
        ("--size", "60", "multiples of 8"),
        ("--freeu", "0.9,0.2", "invalid --freeu"),
        ("--scale", "-1", "--scale"),
        ("--alpha", "3", "--alpha"),
        ("--temperature", "0", "--temperature"),
        ("--timesteps", "5", "invalid --timesteps"),
        ("--timesteps", "900,100", "LOW must not exceed HIGH"),
    ],
)
def test_bad_options_fail_fast_with_one_line(model_dir, tmp_path, option, value, expected):
    result = runner.invoke(
        cli.app,
        ["generate", "--model", str(model_dir), "--prompt", "x", "--out", str(tmp_path / "o.png"), option, value],
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "o.png").exists()


def test_ablation_options_reach_pladis(model_dir, tmp_path):
    # layers limited to a group, a timestep window that covers every step, a temperature: still a PLADIS image
    path = tmp_path / "cmp.png"
    result = generate(model_dir, "--layers", "up", "--timesteps", "0,1000", "--temperature", "0.5", "--compare", path)
    assert result.exit_code == 0, result.output
    stock, image = panels(path)
    assert np.abs(stock.astype(int) - image).max() > 0
    settings = json.loads(load_image(path).text["pladis:settings"])
    assert settings["layers"] == ["up"] and settings["timesteps"] == [0.0, 1000.0] and settings["temperature"] == 0.5
    # a window outside 0..1000, or one that selects no step of the run, is a usage error, not a silent stock image
    result = generate(model_dir, "--timesteps", "2000,3000", "--compare", tmp_path / "outside.png")
    assert result.exit_code == 2 and "0 <= low <= high <= 1000" in result.stderr
    result = generate(model_dir, "--timesteps", "999.5,1000", "--compare", tmp_path / "empty.png")
    assert result.exit_code != 0 and "selects none of this run's steps" in result.stderr
    assert not (tmp_path / "empty.png").exists()
    result = generate(model_dir, "--layers", "nope", "--out", tmp_path / "o.png")
    assert result.exit_code == 2 and "matches no cross-attention module" in result.stderr


def test_nothing_to_write_is_an_error(model_dir):
    result = runner.invoke(cli.app, ["generate", "--model", str(model_dir), "--prompt", "x"])
    assert result.exit_code == 2 and "--compare" in result.stderr


def test_parse_size_and_freeu():
    assert common.parse_size("1024") == (1024, 1024)
    assert common.parse_size("768x512") == (768, 512)
    assert common.parse_size(None) is None
    assert common.parse_freeu("0.9, 0.2,1.5,1.6") == {"s1": 0.9, "s2": 0.2, "b1": 1.5, "b2": 1.6}
    for bad in ("0", "x512", "768x", "-8"):
        with pytest.raises(common.CLIError):
            common.parse_size(bad)


def test_build_call_kwargs_keeps_what_the_pipeline_takes():
    class Pipe:
        def __call__(self, prompt, num_inference_steps=50, guidance_scale=7.5, height=None, width=None):
            pass

    kwargs, ignored = loading.build_call_kwargs(
        Pipe(), prompt="p", negative_prompt="n", num_inference_steps=4, guidance_scale=None, max_sequence_length=256
    )
    assert kwargs == {"prompt": "p", "num_inference_steps": 4}
    assert ignored == ["negative_prompt", "max_sequence_length"]
    assert loading.call_default(Pipe(), "guidance_scale") == 7.5
    assert loading.call_default(Pipe(), "num_inference_steps", 3) == 3
