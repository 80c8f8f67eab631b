"""Bad input, faults and concurrency: PLADIS never gives a wrong answer silently."""

from __future__ import annotations

import copy
import math
import threading

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import pladis
import pladis.adapters
from pladis import cli
from pladis.testing import transformers as tiny_transformers
from pladis.testing import unet as tiny_unet

pytestmark = pytest.mark.usefixtures("eager_one_thread")

SIZE = 32


def run(pipe, handle=None, **kwargs):
    call = handle or pipe
    return call(
        prompt="a red cube", num_inference_steps=2, height=SIZE, width=SIZE, output_type="np",
        generator=torch.Generator().manual_seed(0), **kwargs,
    ).images  # fmt: skip


# --------------------------------------------------------------------------- concurrency


def test_threads_with_per_call_scales_get_their_own_images():
    """Four pipelines sharing one UNet (from_pipe, each its own scheduler and tokenizer: a diffusers pipeline is not
    thread-safe, and a transformers tokenizer called from two threads can pad one call to the other's length),
    called from four threads with different per-call scales: every output equals its single-threaded reference; the
    handle's scale is unchanged."""
    torch.set_num_threads(1)
    base = tiny_unet.tiny_sd15_pipeline("ddim")
    pipes = [base] + [
        type(base).from_pipe(base, scheduler=copy.deepcopy(base.scheduler), tokenizer=copy.deepcopy(base.tokenizer))
        for _ in range(3)
    ]
    handle = pladis.apply(base, scale=2.0)
    scales = [0.0, 2.0, 3.5]
    reference = {s: run(base, handle, pladis_scale=s) for s in scales}
    assert not np.array_equal(reference[0.0], reference[2.0])
    results: list[tuple[float, np.ndarray]] = []
    errors: list[BaseException] = []

    def worker(pipe, index):
        try:
            for i in range(6):
                s = scales[(index + i) % len(scales)]
                results.append((s, run(pipe, pladis.Pladis(pipe, handle.settings), pladis_scale=s)))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(pipes[i], i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 24
    wrong = [s for s, image in results if not np.array_equal(image, reference[s])]
    assert not wrong, f"{len(wrong)} of {len(results)} outputs differ from their single-threaded reference"
    assert handle.scale == 2.0


# --------------------------------------------------------------------------- non-finite values


def test_nan_from_pladis_raises_instead_of_a_black_image(monkeypatch):
    pipe = tiny_unet.tiny_sd15_pipeline("ddim")
    monkeypatch.setattr(pladis.adapters, "pladis_attention", lambda q, k, v, **kw: torch.full_like(q, math.nan))
    pladis.apply(pipe, scale=2.0)
    with pytest.raises(FloatingPointError, match="NaN/inf with PLADIS on"):
        run(pipe)
    pladis.apply(pipe, scale=2.0, check_finite=False)  # the check can be turned off (CUDA graphs, fullgraph compile)
    assert np.isnan(run(pipe)).any()  # without the check the NaN reaches the image


@pytest.mark.parametrize("kwargs", [dict(scale=1e39), dict(temperature=1e-40), dict(scale=math.inf)])
def test_values_that_overflow_float32_maths_are_refused(kwargs):
    pipe = tiny_unet.tiny_sd15_pipeline("ddim")
    with pytest.raises(ValueError, match=r"scale|temperature"):
        pladis.apply(pipe, **kwargs)
    assert not pladis.is_applied(pipe)


# --------------------------------------------------------------------------- timestep units per family


def test_flux_timestep_window_is_in_scheduler_units():
    """FLUX pipelines pass t/1000 to the transformer; the window is given in 0..1000 like every other model."""
    pipe = tiny_transformers.tiny_flux_pipeline()
    kwargs = dict(guidance_scale=0.0, max_sequence_length=32)
    stock = run(pipe, **kwargs)
    everywhere = run(pladis.apply(pipe, scale=2.0), **kwargs)
    assert not np.array_equal(everywhere, stock)
    seen: list[float] = []
    with pladis.apply(pipe, scale=2.0, timesteps=(0, 1000)) as handle:
        hook = pipe.transformer.register_forward_hook(lambda m, a, o: seen.append(handle.settings.call.timestep))
        assert np.array_equal(run(pipe, **kwargs), everywhere)
        hook.remove()
    assert seen and all(50 < t <= 1000 for t in seen), seen  # scheduler units, not t/1000
    with pladis.apply(pipe, scale=2.0, timesteps=(0, 1)), pytest.raises(ValueError, match="selects none"):
        run(pipe, **kwargs)


# --------------------------------------------------------------------------- CLI: checks before any heavy work


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-sd15")
    tiny_unet.tiny_sd15_pipeline().save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--out", "x.psd"], "cannot write that format"),
        (["--out", "same.png", "--compare", "same.png"], "name the same file"),
        (["--compare", "x.txt"], "cannot write that format"),
        (["--seed", str(2**64), "--out", "o.png"], "--seed"),
        (["--timesteps", "0,5000", "--out", "o.png"], "0 <= low <= high <= 1000"),
        (["--scale", "1e39", "--out", "o.png"], "--scale"),
    ],
    ids=["psd", "same-file", "txt", "seed-overflow", "window", "scale-overflow"],
)
def test_generate_rejects_bad_paths_and_values_before_loading(args, expected, tmp_path, monkeypatch, model_dir):
    from pladis.cli import generate as generate_command

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(generate_command, "load_preset_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    result = CliRunner().invoke(cli.app, ["generate", "--model", str(model_dir), "--prompt", "x", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not list(tmp_path.iterdir())


def test_per_call_scale_through_cross_attention_kwargs_is_used():
    pipe = tiny_unet.tiny_sd15_pipeline("ddim")
    handle = pladis.apply(pipe, scale=2.0)
    reference = run(pipe, handle, pladis_scale=3.5)
    assert np.array_equal(run(pipe, cross_attention_kwargs={"pladis_scale": 3.5}), reference)
    assert handle.scale == 2.0
    handle.scale = 0.0
    stock = run(pipe)
    assert not np.array_equal(run(pipe, cross_attention_kwargs={"pladis_scale": 2.0}), stock)
