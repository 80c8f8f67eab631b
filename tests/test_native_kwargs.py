"""diffusers-native entry points of the per-call scale (issue 10, item 6).

On every supported pipeline: `{"pladis_scale": s}` in the pipeline's own attention kwargs (cross_attention_kwargs,
joint_attention_kwargs, attention_kwargs) and `pipe(prompt, pladis_scale=s)` give exactly the image of
`pladis.set_scale(pipe, s)`, which differs from the handle's scale; diffusers logs nothing and no warning is raised;
the handle's scale is untouched; `pladis.remove` restores the pipeline's class.
"""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import pladis
from pladis.testing import transformers as tiny_transformers
from pladis.testing import unet as tiny_unet

pytestmark = pytest.mark.usefixtures("eager_one_thread")

SIZE = 32


@dataclass(frozen=True)
class Case:
    build: Callable
    call: dict
    kwargs_name: str | None  # the pipeline's own attention kwargs; None: it has none (PixArt-Sigma)


CASES = {
    "sd15": Case(lambda: tiny_unet.tiny_sd15_pipeline("ddim"), {}, "cross_attention_kwargs"),
    "sdxl": Case(lambda: tiny_unet.tiny_sdxl_pipeline("euler"), {}, "cross_attention_kwargs"),
    "sdxl-pag": Case(lambda: tiny_unet.tiny_sdxl_pag_pipeline("ddim"), {"pag_scale": 3.0}, "cross_attention_kwargs"),
    "sdxl-controlnet": Case(lambda: tiny_unet.tiny_sdxl_controlnet_pipeline("ddim"), {"image": "control"},
                            "cross_attention_kwargs"),
    "flux": Case(tiny_transformers.tiny_flux_pipeline, {"max_sequence_length": 32, "guidance_scale": 0.0},
                 "joint_attention_kwargs"),
    "sd3": Case(tiny_transformers.tiny_sd3_pipeline, {"max_sequence_length": 32}, "joint_attention_kwargs"),
    "sana": Case(tiny_transformers.tiny_sana_pipeline, {"use_resolution_binning": False}, "attention_kwargs"),
    "pixart": Case(tiny_transformers.tiny_pixart_sigma_pipeline,
                   {"use_resolution_binning": False, "clean_caption": False, "max_sequence_length": 32}, None),
}  # fmt: skip


def run(pipe, case: Case, **extra) -> np.ndarray:
    kwargs = {k: v for k, v in case.call.items() if k != "image"}
    if "image" in case.call:
        kwargs["image"] = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    return pipe(
        prompt="a red cube on a blue sphere", num_inference_steps=2, height=SIZE, width=SIZE, output_type="np",
        generator=torch.Generator().manual_seed(0), **kwargs, **extra,
    ).images  # fmt: skip


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def quiet_run(pipe, case: Case, **extra) -> np.ndarray:
    """`run`, asserting diffusers logs no warning and Python raises none."""
    gc.collect()  # earlier tests' garbage (an unclosed file's ResourceWarning) is not this call's
    handler, logger = _Records(), logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images = run(pipe, case, **extra)
    finally:
        logger.removeHandler(handler)
    # every diffusers log line counts; of Python warnings, those about the call (numpy's own deprecations do not)
    about_call = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert not about_call and not handler.messages, (about_call, handler.messages)
    return images


@pytest.mark.parametrize("name", list(CASES))
def test_per_call_scale_through_the_pipelines_own_entry_points(name):
    case = CASES[name]
    pipe = case.build()
    pipeline_class = type(pipe)
    handle = pladis.apply(pipe, scale=2.0)
    assert type(pipe).__name__ == pipeline_class.__name__ and isinstance(pipe, pipeline_class)
    at_handle_scale = run(pipe, case)
    pladis.set_scale(pipe, 3.5)
    reference = run(pipe, case)
    pladis.set_scale(pipe, 2.0)
    assert not np.array_equal(reference, at_handle_scale)  # the per-call scale below is provably used

    assert np.array_equal(quiet_run(pipe, case, pladis_scale=3.5), reference)
    if case.kwargs_name is not None:
        extra = {"pladis_scale": 3.5}
        assert np.array_equal(quiet_run(pipe, case, **{case.kwargs_name: extra}), reference)
        assert extra == {"pladis_scale": 3.5}  # the caller's dict is not changed
    assert handle.scale == 2.0
    assert np.array_equal(run(pipe, case), at_handle_scale)

    pladis.remove(pipe)
    assert type(pipe) is pipeline_class


def test_per_call_scale_without_pladis_is_a_clear_error():
    pipe = tiny_unet.tiny_sd15_pipeline("ddim")
    pladis.apply(pipe)
    other = type(pipe)(**pipe.components)  # the same (swapped) class, PLADIS on shared components
    pladis.remove(pipe)
    with pytest.raises(ValueError, match="not applied"):
        run(other, CASES["sd15"], pladis_scale=2.0)


def test_save_pretrained_and_from_pipe_see_the_pipelines_own_class(tmp_path):
    from diffusers import StableDiffusionXLPAGPipeline, StableDiffusionXLPipeline

    pipe = tiny_unet.tiny_sdxl_pipeline("euler")
    pladis.apply(pipe)
    pipe.save_pretrained(tmp_path)
    saved = (tmp_path / "model_index.json").read_text()
    assert '"_class_name": "StableDiffusionXLPipeline"' in saved
    pag = StableDiffusionXLPAGPipeline.from_pipe(pipe)
    assert type(pag) is StableDiffusionXLPAGPipeline and pag.unet is pipe.unet
    assert StableDiffusionXLPipeline.from_pretrained(tmp_path).__class__ is StableDiffusionXLPipeline
