"""Per-token cross-attention maps (`pladis.maps`, `pladis maps`): running sums equal a direct computation from every
recorded map, recording leaves the image bit-identical, keys carry their component, files are written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pladis
from image_helpers import load_image
from pladis import maps as pladis_maps
from pladis.adapters import record_attention
from pladis.testing import transformers as tiny_transformers
from pladis.testing import unet as tiny_unet

pytestmark = pytest.mark.usefixtures("eager_one_thread")

PROMPT = "a small dog next to a big rabbit"
CASES = {
    "sd15": (lambda: tiny_unet.tiny_sd15_pipeline("ddim"), {}),
    "sdxl-controlnet": (lambda: tiny_unet.tiny_sdxl_controlnet_pipeline("ddim"), {"image": "control"}),
    "flux": (tiny_transformers.tiny_flux_pipeline, {"max_sequence_length": 32, "guidance_scale": 0.0}),
}


def run(pipe, call: dict) -> np.ndarray:
    kwargs = {k: v for k, v in call.items() if k != "image"}
    if "image" in call:
        kwargs["image"] = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return pipe(prompt=PROMPT, num_inference_steps=2, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).images  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("scale", [0.0, 2.0], ids=["baseline", "pladis"])
def test_running_sums_match_every_map_and_leave_the_image_unchanged(name, scale):
    build, call = CASES[name]
    pipe = build()
    handle = pladis.apply(pipe, scale=scale)
    plain = run(pipe, call)
    positions = pladis_maps.token_positions(pipe, PROMPT, ["dog", "rabbit"])
    with pladis_maps.record_maps(pipe, positions) as maps:
        recorded = run(pipe, call)
    assert np.array_equal(recorded, plain)  # recording never changes the image
    with record_attention(handle) as full:  # every map, for the direct computation
        assert np.array_equal(run(pipe, call), plain)

    components = {"sd15": {"unet"}, "sdxl-controlnet": {"unet", "controlnet"}, "flux": {"transformer"}}[name]
    assert {key.split(".")[0] for key in maps.sums} == components
    assert set(maps.sums) == set(full)
    columns = maps.positions
    for layer, calls in full.items():
        n_text = {"flux": 32}.get(name, 77)
        expected = 0
        for weights in calls:
            rows = slice(n_text, None) if name == "flux" else slice(None)  # FLUX: text first, image rows after it
            text = slice(0, n_text) if name == "flux" else slice(None)
            expected = expected + weights[..., rows, text][..., columns].mean(dim=1)
        assert maps.counts[layer] == len(calls) == 2  # one call per step
        torch.testing.assert_close(maps.sums[layer], expected, rtol=1e-5, atol=1e-6)
    heat = maps.token_maps((32, 32))
    assert set(heat) == {"dog", "rabbit"} and heat["dog"].shape == (32, 32)
    assert heat["dog"].max() > 0
    if scale == 0:  # a softmax map; PLADIS's extrapolated map may dip below 0 where entmax is 0
        assert np.all(heat["dog"] >= 0)


def test_classic_softmax_processor_records_the_same_stock_maps():
    """The classic AttnProcessor builds its map with a softmax (not SDPA): recorded there, the stock sums equal the
    SDPA processor's, and the image is left as it was."""
    from diffusers.models.attention_processor import AttnProcessor

    sums = []
    for classic in (False, True):
        pipe = tiny_unet.tiny_sd15_pipeline("ddim")
        if classic:
            pipe.unet.set_attn_processor(AttnProcessor())
        pladis.apply(pipe, scale=0.0)
        plain = run(pipe, {})
        with pladis_maps.record_maps(pipe, pladis_maps.token_positions(pipe, PROMPT, ["dog"])) as maps:
            assert np.array_equal(run(pipe, {}), plain)
        sums.append(maps.sums)
    assert set(sums[0]) == set(sums[1]) and sums[0]
    for layer in sums[0]:
        torch.testing.assert_close(sums[1][layer], sums[0][layer], rtol=1e-4, atol=1e-5)


def test_pladis_sharpens_the_maps_and_keys_do_not_collide():
    """On FLUX the recorded maps differ between scale 0 and 2, and joint keys keep their component prefix."""
    pipe = tiny_transformers.tiny_flux_pipeline()
    handle = pladis.apply(pipe, scale=0.0)
    positions = pladis_maps.token_positions(pipe, PROMPT, ["dog"])
    assert positions == {"dog": [6, 7, 8]}  # T5: '▁d', 'o', 'g' after '▁a', '▁s', 'm', 'a', 'l', 'l'
    results = []
    for scale in (0.0, 2.0):
        handle.scale = scale
        with pladis_maps.record_maps(pipe, positions) as maps:
            run(pipe, CASES["flux"][1])
        results.append(maps.token_maps((32, 32))["dog"])
        assert all(key.startswith("transformer.") for key in maps.sums)
    assert np.abs(results[0] - results[1]).mean() > 1e-4


def test_word_positions_and_clear_errors():
    pipe = tiny_unet.tiny_sd15_pipeline("ddim")
    # CLIP: the start token at 0, then 'a</w>', 's','m','a','l','l</w>', then 'd','o','g</w>'
    assert pladis_maps.token_positions(pipe, PROMPT, ["dog"]) == {"dog": [7, 8, 9]}
    with pytest.raises(ValueError, match="'cat' is not in the prompt; its tokens are"):
        pladis_maps.token_positions(pipe, PROMPT, ["cat"])
    with pytest.raises(ValueError, match="not applied"), pladis_maps.record_maps(pipe, {"dog": [7]}):
        pass
    pladis.apply(pipe)
    with pytest.raises(RuntimeError, match="no attention map was recorded"):
        with pladis_maps.record_maps(pipe, {"dog": [7]}) as maps:
            pass
        maps.token_maps((8, 8))
    assert pladis_maps.grid_of(12, 3 / 4) == (3, 4) and pladis_maps.grid_of(16, 1.0) == (4, 4)


def test_cli_writes_the_figure_and_arrays(tmp_path):
    from typer.testing import CliRunner

    from pladis import cli

    tiny_unet.tiny_sdxl_pipeline("euler").save_pretrained(tmp_path / "model")
    out = tmp_path / "maps.png"
    result = CliRunner().invoke(cli.app, ["maps", "--model", str(tmp_path / "model"), "--prompt", PROMPT,
                                          "--tokens", "dog,rabbit", "--out", str(out), "--steps", "2", "--size", "32",
                                          "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    figure = load_image(out)
    assert figure.width > 3 * 32 and figure.height > 2 * 32  # image + two token columns, baseline and PLADIS rows
    with np.load(tmp_path / "maps.npz") as npz:
        arrays = {name: npz[name] for name in npz.files}
    assert {"baseline/map.dog", "pladis/map.rabbit", "tokens"} <= set(arrays)
    layers = [k for k in arrays if k.startswith("pladis/unet.") and not k.endswith(".count")]
    assert layers and all(arrays[k].shape[-1] == 3 + 6 for k in layers)  # dog: 3 tokens, rabbit: 6
    assert not np.array_equal(arrays["baseline/map.dog"], arrays["pladis/map.dog"])

    bad = CliRunner().invoke(cli.app, ["maps", "--model", str(tmp_path / "model"), "--prompt", PROMPT,
                                       "--tokens", "cat", "--out", str(tmp_path / "x.png"), "--device", "cpu"])  # fmt: skip
    assert bad.exit_code == 2 and "'cat' is not in the prompt" in bad.output
    assert not (tmp_path / "x.png").exists()

    # a preset: its settings (here SDXL-Turbo 4-step: CFG 0, 4 steps) with the local model in place of its repo
    with_preset = CliRunner().invoke(cli.app, ["maps", "--preset", "sdxl-turbo-4step", "--model", str(tmp_path / "model"),
                                               "--prompt", PROMPT, "--tokens", "dog", "--out", str(tmp_path / "p.png"),
                                               "--size", "32", "--device", "cpu"])  # fmt: skip
    assert with_preset.exit_code == 0, with_preset.output
    assert (tmp_path / "p.png").exists()
    unknown = CliRunner().invoke(cli.app, ["maps", "--preset", "sdxl-nope", "--prompt", PROMPT, "--tokens", "dog",
                                           "--out", str(tmp_path / "y.png")])  # fmt: skip
    assert unknown.exit_code == 2 and "unknown preset 'sdxl-nope'" in unknown.output
