"""Presets: each resolves to the reference's pipeline, scheduler, LoRA and scales; tiny models stand in for the Hub."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import pladis
from image_helpers import load_image
from pladis import cli, presets
from pladis.cli import generate as generate_command
from pladis.cli import loading
from pladis.cli.common import CLIError

pytestmark = pytest.mark.usefixtures("eager_one_thread")

runner = CliRunner()
DMD2_TIMESTEPS = [999.0, 749.0, 499.0, 249.0]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test here may reach the network: the Hub counts as unreachable."""
    monkeypatch.setattr(loading, "_hub_reachable", lambda *a, **k: False)


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    from pladis.testing import tiny_sdxl_pipeline

    path = tmp_path_factory.mktemp("tiny-sdxl")
    tiny_sdxl_pipeline(scheduler="euler").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    from pladis.testing import save_tiny_lora, tiny_sdxl_pipeline

    folder = tmp_path_factory.mktemp("tiny-lora")
    return save_tiny_lora(tiny_sdxl_pipeline(), folder, weight_name="dmd2_sdxl_4step_lora_fp16.safetensors")


def dry_run(*args):
    result = runner.invoke(cli.app, ["generate", "--dry-run", *map(str, args)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


EXPECTED = {  # preset: (pipeline, scheduler class, timestep spacing, steps, guidance, PLADIS scale)
    "sdxl-cfg": ("StableDiffusionXLPipeline", "EulerDiscreteScheduler", "leading", 25, 5.0, 2.0),
    "sdxl-pag": ("StableDiffusionXLPAGPipeline", "EulerDiscreteScheduler", "leading", 25, 4.0, 2.0),
    "sdxl-seg": ("StableDiffusionXLPipeline", "EulerDiscreteScheduler", "leading", 25, 4.0, 2.0),
    "sdxl-freeu": ("StableDiffusionXLPipeline", "EulerDiscreteScheduler", "leading", 25, None, 1.5),
    "sdxl-dmd2": ("StableDiffusionXLPipeline", "LCMScheduler", "leading", 4, 0.0, 1.5),
    "sdxl-lightning": ("StableDiffusionXLPipeline", "EulerDiscreteScheduler", "trailing", 4, 0.0, 1.5),
    "hyper-sdxl": ("StableDiffusionXLPipeline", "DDIMScheduler", "trailing", 4, 0.0, 1.5),
    "sdxl-turbo": ("StableDiffusionXLPipeline", "EulerAncestralDiscreteScheduler", "trailing", 1, 0.0, 1.5),
    "sdxl-controlnet-depth": ("StableDiffusionXLControlNetPipeline", "EulerDiscreteScheduler", "leading", 25, 1.0, 3.0),
    "flux-schnell": ("FluxPipeline", "FlowMatchEulerDiscreteScheduler", None, 4, 0.0, 1.5),
    "flux-dev": ("FluxPipeline", "FlowMatchEulerDiscreteScheduler", None, 50, 0.0, 1.5),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_reference_preset_resolves_to_its_settings(name):
    pipeline, scheduler, spacing, steps, guidance, scale = EXPECTED[name]
    data = presets.describe(presets.get(name))
    assert data["pipeline"] == pipeline and data["scheduler"]["class"] == scheduler
    assert data["scheduler"].get("timestep_spacing") == spacing
    assert data["steps"] == steps == len(data["scheduler"]["timesteps"])
    assert data.get("guidance") == guidance and data["pladis"]["scale"] == scale and data["pladis"]["alpha"] == 1.5
    if name in ("sdxl-dmd2", "sdxl-lightning", "hyper-sdxl"):
        assert data["scheduler"]["timesteps"] == DMD2_TIMESTEPS  # explicit (DMD2) or trailing spacing (the others)


def test_every_preset_is_listed_and_describable():
    assert set(EXPECTED) | {"sd15", "sana", "sd3", "pixart", "wan", "sdxl-turbo-4step", "demo"} == set(presets.names())
    for name in presets.names():
        data = presets.describe(presets.get(name))
        assert (data["model"].count("/") == 1 or data["model"] == "demo") and data["pipeline"].endswith("Pipeline")
    assert presets.get("wan").video and "non-commercial" in presets.get("flux-dev").licence.lower()


def test_lora_guidance_and_scale_details():
    dmd2, lightning, hyper = (presets.describe(presets.get(n)) for n in ("sdxl-dmd2", "sdxl-lightning", "hyper-sdxl"))
    assert dmd2["lora"] == {"repo": "tianweiy/DMD2", "file": "dmd2_sdxl_4step_lora_fp16.safetensors", "fuse": True,
                            "scale": 1.0}  # fmt: skip
    assert dmd2["timesteps"] == [999, 749, 499, 249]
    assert lightning["lora"]["repo"] == "ByteDance/SDXL-Lightning"
    assert lightning["lora"]["file"] == "sdxl_lightning_4step_lora.safetensors"
    assert hyper["lora"] == {"repo": "ByteDance/Hyper-SD", "file": "Hyper-SDXL-4steps-lora.safetensors",
                             "fuse": True, "scale": 1.0}  # fmt: skip
    seg, depth = presets.describe(presets.get("sdxl-seg")), presets.describe(presets.get("sdxl-controlnet-depth"))
    assert seg["seg"] == {"scale": 3.0, "blur_sigma": 100.0, "layers": ["mid"]}
    assert depth["seg"] == {"scale": 3.0, "blur_sigma": 1e10, "layers": ["mid"]}
    assert depth["controlnet"] == {"repo": "diffusers/controlnet-depth-sdxl-1.0", "conditioning_scale": 0.5,
                                   "depth_estimator": "Intel/dpt-hybrid-midas"}  # fmt: skip
    assert depth["vae"] == "madebyollin/sdxl-vae-fp16-fix"
    assert presets.describe(presets.get("sdxl-pag"))["pag"] == {"scale": 3.0, "layers": ["mid"]}
    assert presets.describe(presets.get("sdxl-freeu"))["freeu"] == {"s1": 0.6, "s2": 0.4, "b1": 1.1, "b2": 1.2}
    schnell = presets.describe(presets.get("flux-schnell"))
    assert schnell["max_sequence_length"] == 256 and schnell["dtype"] == "bfloat16"
    assert schnell["scheduler"]["timesteps"] == [1000.0, 750.0, 500.0, 250.0]  # shift 1, no dynamic shifting


def test_dry_run_prints_json_without_loading_anything(monkeypatch):
    monkeypatch.setattr(generate_command, "load_preset_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    data = dry_run("--preset", "sdxl-dmd2")
    assert data["scheduler"]["class"] == "LCMScheduler" and data["scheduler"]["timesteps"] == DMD2_TIMESTEPS
    assert data["lora"]["repo"] == "tianweiy/DMD2" and data["pladis"]["scale"] == 1.5
    # every field can be overridden by a flag
    data = dry_run("--preset", "sdxl-lightning", "--scale", "2.5", "--alpha", "2", "--spacing", "leading",
                   "--guidance", "1.5")  # fmt: skip
    assert data["pladis"] == {"scale": 2.5, "alpha": 2.0, "layers": None, "timesteps": None, "temperature": 1.0}
    assert data["scheduler"]["timestep_spacing"] == "leading" and data["scheduler"]["timesteps"] != DMD2_TIMESTEPS
    assert data["guidance"] == 1.5
    data = dry_run("--preset", "sdxl-dmd2", "--lora", "my/lora/file.safetensors")
    assert data["lora"]["repo"] == "my/lora/file.safetensors" and data["lora"]["file"] is None
    data = dry_run("--preset", "sdxl-cfg", "--scheduler", "euler", "--timesteps-list", "999,500")
    assert data["scheduler"]["class"] == "EulerDiscreteScheduler" and data["scheduler"]["timesteps"] == [999.0, 500.0]
    assert data["steps"] == 2
    result = runner.invoke(cli.app, ["generate", "--dry-run", "--preset", "sdxl-cfg", "--scheduler", "ddim",
                                     "--timesteps-list", "999,500"])  # fmt: skip
    assert result.exit_code == 2 and "DDIMScheduler does not take custom timesteps" in result.stderr
    data = dry_run("--preset", "sdxl-controlnet-depth", "--seg-scale", "2", "--seg-blur-sigma", "50",
                   "--seg-layers", "mid,up.0", "--controlnet-scale", "0.8")  # fmt: skip
    assert data["seg"] == {"scale": 2.0, "blur_sigma": 50.0, "layers": ["mid", "up.0"]}
    assert data["controlnet"]["conditioning_scale"] == 0.8


def test_dry_run_reads_a_local_models_scheduler(sdxl_dir):
    data = dry_run("--preset", "hyper-sdxl", "--model", sdxl_dir)
    assert data["scheduler"]["source"] == "model" and data["model"] == str(sdxl_dir)
    assert data["scheduler"]["class"] == "DDIMScheduler" and data["scheduler"]["timesteps"] == DMD2_TIMESTEPS


def test_unknown_preset_lists_the_names():
    result = runner.invoke(cli.app, ["generate", "--preset", "sdxl-nope", "--dry-run"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1
    assert "sdxl-nope" in lines[0] and "sdxl-dmd2" in lines[0] and "flux-schnell" in lines[0]
    with pytest.raises(ValueError, match="unknown preset field"):
        presets.resolve("sdxl-cfg", colour="red")


def test_missing_model_is_one_line_naming_the_repo(tmp_path, sdxl_dir):
    result = runner.invoke(cli.app, ["generate", "--preset", "sdxl-cfg", "--prompt", "x", "--out", tmp_path / "o.png"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "stabilityai/stable-diffusion-xl-base-1.0" in lines[0]
    # the LoRA repo too, checked before the (local) model is loaded
    result = runner.invoke(cli.app, ["generate", "--preset", "sdxl-dmd2", "--model", str(sdxl_dir), "--prompt", "x",
                                     "--out", str(tmp_path / "o.png")])  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1
    assert "tianweiy/DMD2/dmd2_sdxl_4step_lora_fp16.safetensors" in lines[0] and "unreachable" in lines[0]


def _weights(unet):
    return {k: v.clone() for k, v in unet.state_dict().items()}


def test_dmd2_preset_on_tiny_models_fuses_the_lora(sdxl_dir, lora_file):
    from diffusers import StableDiffusionXLPipeline

    stock = _weights(StableDiffusionXLPipeline.from_pretrained(sdxl_dir).unet)
    pipe, call_kwargs = presets.load("sdxl-dmd2", device="cpu", model=str(sdxl_dir), lora_repo=str(lora_file.parent),
                                     size=(64, 64))  # fmt: skip
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and type(pipe.scheduler).__name__ == "LCMScheduler"
    assert call_kwargs["timesteps"] == [999, 749, 499, 249] and call_kwargs["guidance_scale"] == 0.0
    fused = _weights(pipe.unet)
    assert fused.keys() == stock.keys()  # fused: no adapter layers left
    changed = [k for k in stock if not torch.equal(stock[k], fused[k])]
    assert changed and all("attn" in k for k in changed)
    pladis.apply(pipe, scale=1.5)
    image = pipe(prompt="a cat", generator=torch.Generator().manual_seed(0), **call_kwargs).images[0]
    assert image.size == (64, 64)
    pladis.remove(pipe)


@pytest.mark.parametrize("name, scheduler", [("sdxl-lightning", "EulerDiscreteScheduler"),
                                             ("hyper-sdxl", "DDIMScheduler")])  # fmt: skip
def test_trailing_presets_on_tiny_models(sdxl_dir, lora_file, name, scheduler):
    pipe, call_kwargs = presets.load(name, device="cpu", model=str(sdxl_dir), lora_repo=str(lora_file))
    assert type(pipe.scheduler).__name__ == scheduler and pipe.scheduler.config.timestep_spacing == "trailing"
    pipe.scheduler.set_timesteps(call_kwargs["num_inference_steps"])
    assert pipe.scheduler.timesteps.tolist() == DMD2_TIMESTEPS


def test_pag_and_freeu_presets_on_tiny_models(sdxl_dir):
    pipe, call_kwargs = presets.load("sdxl-pag", device="cpu", model=str(sdxl_dir))
    assert type(pipe).__name__ == "StableDiffusionXLPAGPipeline" and call_kwargs["pag_scale"] == 3.0
    assert pipe.pag_applied_layers == ["mid"] and call_kwargs["guidance_scale"] == 4.0
    pipe, call_kwargs = presets.load("sdxl-freeu", device="cpu", model=str(sdxl_dir))
    assert (pipe.unet.up_blocks[0].s1, pipe.unet.up_blocks[0].b2) == (0.6, 1.2)
    with pytest.raises(CLIError, match=r"no_such_block.*up_blocks\.0"):
        presets.load("sdxl-pag", device="cpu", model=str(sdxl_dir), pag_layers=("no_such_block",))


def test_seg_presets_need_the_seg_module_or_load_it(sdxl_dir, monkeypatch):
    """SEG is applied through pladis.seg.enable_seg with the preset's knobs."""
    import sys
    import types

    calls = []
    fake = types.ModuleType("pladis.seg")
    fake.enable_seg = lambda pipe, scale, blur_sigma, layers: calls.append((scale, blur_sigma, layers))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pladis.seg", fake)
    presets.load("sdxl-seg", device="cpu", model=str(sdxl_dir))
    assert calls == [(3.0, 100.0, ["mid"])]
    monkeypatch.setitem(sys.modules, "pladis.seg", None)  # as if the module did not exist
    with pytest.raises(CLIError, match=r"pladis\.seg"):
        presets.load("sdxl-seg", device="cpu", model=str(sdxl_dir))


def test_the_embedded_model_is_a_model_name_for_every_command(tmp_path):
    """`--preset demo` / `--model demo` load the shipped model through the same path as a Hub model."""
    from typer.testing import CliRunner

    from pladis import cli, metadata

    out = tmp_path / "demo.png"
    args = ["generate", "--preset", "demo", "-p", "a red circle left of a blue square", "--steps", "2"]
    result = CliRunner().invoke(cli.app, [*args, "--device", "cpu", "--compare", str(out)])
    assert result.exit_code == 0, result.output
    settings = metadata.read(out)["settings"]
    assert settings["preset"] == "demo" and settings["steps"] == 2 and settings["guidance"] == 4.0
    assert load_image(out).width > 2 * 128  # the 32 px images are shown enlarged
    result = CliRunner().invoke(cli.app, ["generate", "--model", "demo", "-p", "a red circle", "--steps", "2",
                                          "--device", "cpu", "--out", str(tmp_path / "m.png")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_image(tmp_path / "m.png").size == (32, 32)
