"""`pladis generate` options: timesteps/sigmas/spacing, ControlNet input, true CFG, video, prompt files, seeds,
batches, PNG metadata and `pladis info`; tiny random-weight pipelines saved to disk, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from image_helpers import load_image
from pladis import cli, metadata
from pladis.cli import common, loading
from pladis.cli import generate as generate_command

pytestmark = pytest.mark.usefixtures("eager_one_thread")

runner = CliRunner()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setattr(loading, "_hub_reachable", lambda *a, **k: False)


def _saved(tmp_path_factory, name, build):
    path = tmp_path_factory.mktemp(name)
    build().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sd15_dir(tmp_path_factory):
    from pladis.testing import tiny_sd15_pipeline

    return _saved(tmp_path_factory, "tiny-sd15", tiny_sd15_pipeline)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    from pladis.testing import tiny_flux_pipeline

    return _saved(tmp_path_factory, "tiny-flux", tiny_flux_pipeline)


def run(*args):
    return runner.invoke(cli.app, ["generate", *map(str, args)])


def sd15(model, *args):
    return run("--model", model, "--prompt", "a red cube", "--steps", 2, "--size", 32, *args)


def one_line_error(result, code=2):
    """The error line; the only other stderr line allowed is the note that a model was loaded."""
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("loaded ")]
    assert result.exit_code == code and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


def test_seed_lists_and_prompt_files(tmp_path):
    assert common.parse_seeds("0-3,7,2", 0) == [0, 1, 2, 3, 7]
    assert common.parse_seeds(None, 5) == [5]
    for bad in ("3-1", "x", "", "-5"):
        with pytest.raises(common.CLIError):
            common.parse_seeds(bad, 0)
    txt, csv, jsonl = tmp_path / "p.txt", tmp_path / "p.csv", tmp_path / "p.jsonl"
    txt.write_text("a cat\n\n# a comment\na dog\n")
    csv.write_text('id,prompt\n1,"a cat, sitting"\n2,a dog\n')
    jsonl.write_text('{"prompt": "a cat"}\n"a dog"\n')
    assert generate_command.read_prompts(None, txt) == ["a cat", "a dog"]
    assert generate_command.read_prompts("first", csv) == ["first", "a cat, sitting", "a dog"]
    assert generate_command.read_prompts(None, jsonl) == ["a cat", "a dog"]
    jsonl.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(common.CLIError, match="line 1"):
        generate_command.read_prompts(None, jsonl)


def test_prompts_seeds_and_batches_share_one_run(sd15_dir, tmp_path, monkeypatch):
    loads = []
    load = loading.load_preset_pipeline
    monkeypatch.setattr(generate_command, "load_preset_pipeline", lambda *a, **k: loads.append(1) or load(*a, **k))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    out = tmp_path / "img.png"
    result = run("--model", sd15_dir, "--prompts-file", prompts, "--seeds", "0-1", "--batch-size", 3, "--steps", 2,
                 "--size", 32, "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert loads == [1]
    names = sorted(p.name for p in tmp_path.glob("img-*.png"))
    assert names == ["img-p000-s0.png", "img-p000-s1.png", "img-p001-s0.png", "img-p001-s1.png"]
    # a batched image is the one made alone: each sample has its own seeded generator
    single = tmp_path / "single.png"
    assert sd15(sd15_dir, "--prompt", "a blue sphere", "--seed", 1, "--out", single).exit_code == 0
    batched = np.asarray(load_image(tmp_path / "img-p001-s1.png"), dtype=int)
    assert np.abs(batched - np.asarray(load_image(single), dtype=int)).max() <= 2
    settings = metadata.read(tmp_path / "img-p001-s1.png")["settings"]
    assert settings["prompt"] == "a blue sphere" and settings["seed"] == 1 and settings["batch_size"] == 3


def test_metadata_round_trips_and_info_prints_it(sd15_dir, tmp_path):
    out = tmp_path / "o.png"
    result = sd15(sd15_dir, "--out", out, "--seed", 7, "--negative", "blurry", "--scale", 1.5, "--alpha", 1.25)
    assert result.exit_code == 0, result.output
    found = metadata.read(out)
    settings = found["settings"]
    assert settings["seed"] == 7 and settings["scale"] == 1.5 and settings["alpha"] == 1.25
    assert settings["negative_prompt"] == "blurry" and settings["steps"] == 2
    assert {"pladis", "diffusers", "torch"} <= set(settings["versions"])
    text = found["parameters"].splitlines()
    assert text[0] == "a red cube" and text[1] == "Negative prompt: blurry"
    assert "Seed: 7" in text[2] and "Steps: 2" in text[2] and "PLADIS scale: 1.5" in text[2]
    result = runner.invoke(cli.app, ["info", str(out)])
    assert result.exit_code == 0 and "Seed: 7" in result.stdout and '"alpha": 1.25' in result.stdout
    result = runner.invoke(cli.app, ["info", str(out), "--json"])
    assert json.loads(result.stdout) == settings
    bare = tmp_path / "bare.png"
    Image.new("RGB", (8, 8)).save(bare)
    assert "no generation settings" in one_line_error(runner.invoke(cli.app, ["info", str(bare)]), code=1)


def test_custom_timesteps_sigmas_and_spacing(sd15_dir, tmp_path):
    out = tmp_path / "t.png"
    result = sd15(sd15_dir, "--scheduler", "euler", "--timesteps-list", "999,499", "--out", out)
    assert result.exit_code == 0, result.output
    settings = metadata.read(out)["settings"]
    assert (
        settings["timesteps_list"] == [999, 499] and settings["steps"] == 2 and settings["scheduler"] == "EulerDiscrete"
    )
    result = sd15(sd15_dir, "--scheduler", "euler", "--sigmas", "14.6,1.0,0.0", "--out", tmp_path / "s.png")
    assert result.exit_code == 0, result.output
    assert metadata.read(tmp_path / "s.png")["settings"]["sigmas"] == [14.6, 1.0, 0.0]
    result = sd15(sd15_dir, "--scheduler", "euler", "--spacing", "trailing", "--out", tmp_path / "tr.png")
    assert (
        result.exit_code == 0
        and metadata.read(tmp_path / "tr.png")["settings"]["scheduler"] == "EulerDiscrete-trailing"
    )
    # a scheduler that takes no custom timesteps, and bad lists: one line each
    assert "does not take custom timesteps" in one_line_error(
        sd15(sd15_dir, "--scheduler", "ddim", "--timesteps-list", "999,499", "--out", tmp_path / "x.png")
    )
    assert "decreasing" in one_line_error(sd15(sd15_dir, "--timesteps-list", "10,999", "--out", tmp_path / "x.png"))
    assert "--spacing" in one_line_error(sd15(sd15_dir, "--spacing", "sideways", "--out", tmp_path / "x.png"))
    assert "not both" in one_line_error(
        sd15(sd15_dir, "--timesteps-list", "999", "--sigmas", "1,0", "--out", tmp_path / "x.png")
    )


def test_incompatible_flags_fail_before_loading(sd15_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(generate_command, "load_preset_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(photo)
    out = tmp_path / "x.png"
    assert "ControlNet" in one_line_error(sd15(sd15_dir, "--control-image", photo, "--out", out))
    assert "needs a negative prompt" in one_line_error(sd15(sd15_dir, "--true-cfg", 3, "--out", out))
    assert "--pag-scale" in one_line_error(sd15(sd15_dir, "--pag-layers", "mid", "--out", out))
    assert "--batch-size" in one_line_error(sd15(sd15_dir, "--batch-size", 0, "--out", out))
    assert "--seeds" in one_line_error(sd15(sd15_dir, "--seeds", "5-2", "--out", out))
    assert "--seg-scale" in one_line_error(sd15(sd15_dir, "--seg-scale", -1, "--out", out))
    assert "--prompts-file" in one_line_error(sd15(sd15_dir, "--prompts-file", tmp_path / "none.txt", "--out", out))
    assert not out.exists()


def test_true_cfg_makes_the_negative_prompt_count_on_flux(flux_dir, sd15_dir, tmp_path):
    def flux(out, *args):
        return run("--model", flux_dir, "--prompt", "a red cube", "--steps", 2, "--size", 32, "--guidance", 0,
                   "--out", out, *args)  # fmt: skip

    plain, negative, explicit = tmp_path / "plain.png", tmp_path / "neg.png", tmp_path / "cfg.png"
    assert flux(plain).exit_code == 0
    result = flux(negative, "--negative", "blurry")
    assert result.exit_code == 0 and "--true-cfg 4.0" in result.stderr  # said, not silently ignored
    assert flux(explicit, "--negative", "blurry", "--true-cfg", 2).exit_code == 0
    images = [np.asarray(load_image(p), dtype=int) for p in (plain, negative, explicit)]
    assert np.abs(images[0] - images[1]).max() > 0 and np.abs(images[1] - images[2]).max() > 0
    assert metadata.read(explicit)["settings"]["true_cfg"] == 2.0

    assert "has no true CFG" in one_line_error(
        sd15(sd15_dir, "--negative", "n", "--true-cfg", 2, "--out", tmp_path / "y.png")
    )


def test_control_image_conditions_a_controlnet_and_depth_needs_its_estimator(tmp_path_factory, tmp_path):
    from pladis.testing import tiny_sdxl_controlnet_pipeline

    folder = _saved(tmp_path_factory, "tiny-cn", tiny_sdxl_controlnet_pipeline)
    control = tmp_path / "depth.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))).convert("RGB").save(control)
    base = ["--preset", "sdxl-controlnet-depth", "--model", folder, "--controlnet", folder / "controlnet", "--vae",
            folder / "vae", "--seg-scale", 0, "--steps", 2, "--size", 64, "--prompt", "a car"]  # fmt: skip
    out = tmp_path / "cn.png"
    result = run(*base, "--control-image", control, "--compare", out)
    assert result.exit_code == 0, result.output
    settings = metadata.read(out)["settings"]
    assert settings["controlnet_scale"] == 0.5 and settings["control_image"] == "depth.png"
    assert settings["pipeline"] == "StableDiffusionXLControlNetPipeline" and settings["guidance"] == 1.0
    # no control image: the depth preset asks for one; a photo needs Intel/dpt-hybrid-midas, named when offline
    assert "--control-image" in one_line_error(run(*base, "--out", tmp_path / "n.png"))
    line = one_line_error(run(*base, "--depth-from", control, "--out", tmp_path / "d.png"), code=1)
    assert "Intel/dpt-hybrid-midas" in line and "unreachable" in line
    # with a (tiny) depth estimator on disk, --depth-from turns the photo into a depth map at the image size
    from pladis import presets

    dpt = tmp_path / "dpt"
    _tiny_dpt(dpt)
    _, call_kwargs = presets.load("sdxl-controlnet-depth", device="cpu", model=str(folder), vae=str(folder / "vae"),
                                  controlnet=str(folder / "controlnet"), seg_scale=0.0, depth_estimator=str(dpt),
                                  size=(64, 48), depth_from=control)  # fmt: skip
    depth = np.asarray(call_kwargs["image"])
    assert depth.shape == (48, 64, 3) and depth.min() == 0 and depth.max() == 255
    assert call_kwargs["controlnet_conditioning_scale"] == 0.5


def _tiny_dpt(folder):
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    config = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=16, image_size=32,
                       patch_size=8, neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8,
                       backbone_out_indices=[0, 1, 2, 3], reassemble_factors=[4, 2, 1, 0.5])  # fmt: skip
    DPTForDepthEstimation(config).eval().save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def test_video_pipeline_writes_a_video_and_a_frame_strip(tmp_path_factory, tmp_path):
    from pladis.testing import tiny_wan_pipeline

    folder = _saved(tmp_path_factory, "tiny-wan", tiny_wan_pipeline)
    clip, grid = tmp_path / "clip.gif", tmp_path / "cmp.png"
    result = run("--model", folder, "--prompt", "a cat", "--steps", 2, "--size", 32, "--num-frames", 5,
                 "--out", clip, "--compare", grid)  # fmt: skip
    assert result.exit_code == 0, result.output
    with Image.open(clip) as video:
        assert video.n_frames == 5 and video.size == (32, 32)
    assert metadata.read(clip.with_suffix(".png"))["settings"]["num_frames"] == 5
    boxes = json.loads(load_image(grid).text["pladis:panels"])
    assert len(boxes) == 2 and len(boxes[0]) == 4  # stock and PLADIS rows, 4 frames each
    strip = load_image(grid)
    stock = np.asarray(strip.crop(tuple(boxes[0][0])), dtype=int)
    pladis_frame = np.asarray(strip.crop(tuple(boxes[1][0])), dtype=int)
    assert stock.shape == (128, 128, 3) and np.abs(stock - pladis_frame).max() > 0  # 32 px frames shown 4x


def test_caption_shows_every_flag_that_changes_the_image(sd15_dir, tmp_path):
    grids = []
    for layers in ("up", "down"):
        path = tmp_path / f"{layers}.png"
        result = sd15(sd15_dir, "--layers", layers, "--temperature", 0.5, "--timesteps", "0,1000", "--scheduler",
                      "euler", "--spacing", "trailing", "--compare", path)  # fmt: skip
        assert result.exit_code == 0, result.output
        grids.append(metadata.read(path)["settings"])
    captions = [generate_command.caption(s) for s in grids]
    assert captions[0] != captions[1]
    for part in ("layers=up", "temperature=0.5", "timesteps=0.0,1000.0", "scheduler=EulerDiscrete-trailing",
                 "steps=2", "size=32x32", "seed=0", "alpha=1.5"):  # fmt: skip
        assert part in captions[0], (part, captions[0])


def test_mp4_written_and_readable_when_imageio_ffmpeg_is_installed(tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    from pladis.compare import save_video

    frames = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(5)]
    path = save_video(frames, tmp_path / "v.mp4", fps=8)
    reader = imageio_ffmpeg.read_frames(str(path))
    assert next(reader)["size"] == (32, 32)
    decoded = [np.frombuffer(f, np.uint8).reshape(32, 32, 3) for f in reader]
    assert len(decoded) == 5 and decoded[4][..., 0].mean() > decoded[0][..., 0].mean() + 100
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temporary file left behind
