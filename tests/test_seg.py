"""Smoothed Energy Guidance on stock UNet pipelines (`pladis.seg`), alone and with CFG, PLADIS and ControlNet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pladis
from pladis import seg
from pladis.testing import transformers as tiny_transformers
from pladis.testing import unet as tiny_unet

pytestmark = pytest.mark.usefixtures("eager_one_thread")

SIZE = 32
MIN_CHANGE = 1e-4  # smallest mean |change| that counts as "changed the image" (as in test_pipelines)


def run(pipe, **kwargs) -> np.ndarray:
    kwargs.setdefault("guidance_scale", 4.0)
    return pipe(
        prompt="a red cube on a blue sphere", num_inference_steps=2, height=SIZE, width=SIZE, output_type="np",
        generator=torch.Generator().manual_seed(0), **kwargs,
    ).images  # fmt: skip


class Calls:
    """Counts the UNet's forward calls and the batch size each computed (at its first layer, inside any hook)."""

    def __init__(self, unet):
        self.batches: list[int] = []
        self.handle = unet.conv_in.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        self.batches.append(int(args[0].shape[0]))

    def close(self) -> list[int]:
        self.handle.remove()
        return self.batches


@pytest.fixture(scope="module")
def sdxl():
    return tiny_unet.tiny_sdxl_pipeline("ddim")


def test_seg_alone_and_with_pladis_change_the_image_with_one_unet_call_per_step(sdxl):
    pipe = sdxl
    stock = run(pipe)
    seg.enable_seg(pipe, scale=3.0, blur_sigma=100.0, layers=("mid",))
    mid = [f"mid_block.attentions.0.transformer_blocks.{i}.attn1" for i in (0, 1)]
    assert seg.seg_settings(pipe) == {"scale": 3.0, "blur_sigma": 100.0, "layers": mid}
    calls = Calls(pipe.unet)
    with_seg = run(pipe)
    seg_batches = calls.close()
    assert seg_batches == [3, 3]  # one UNet call per step: uncond, cond, SEG copy
    assert np.abs(with_seg - stock).mean() > MIN_CHANGE

    pladis.apply(pipe, scale=2.0)
    calls = Calls(pipe.unet)
    both = run(pipe)
    assert calls.close() == seg_batches  # PLADIS adds no model call
    assert np.abs(both - with_seg).mean() > MIN_CHANGE
    pladis.remove(pipe)
    assert np.array_equal(run(pipe), with_seg)

    seg.disable_seg(pipe)
    assert seg.seg_settings(pipe) is None
    calls = Calls(pipe.unet)
    assert np.array_equal(run(pipe), stock)  # disable restores the pipeline bit for bit
    assert calls.close() == [2, 2]


def test_scale_zero_is_the_stock_pipeline(sdxl):
    stock = run(sdxl, guidance_rescale=0.5)
    seg.enable_seg(sdxl, scale=0.0)
    try:
        assert np.array_equal(run(sdxl, guidance_rescale=0.5), stock)
    finally:
        seg.disable_seg(sdxl)


def _unet_inputs(pipe, rows: int):
    g = torch.Generator().manual_seed(3)
    return dict(
        sample=torch.randn(rows, 4, 8, 8, generator=g),
        timestep=torch.tensor(500),
        encoder_hidden_states=torch.randn(rows, 77, pipe.unet.config.cross_attention_dim, generator=g),
        added_cond_kwargs={"text_embeds": torch.randn(rows, 32, generator=g), "time_ids": torch.randn(rows, 6, generator=g)},
    )  # fmt: skip


@pytest.mark.parametrize(
    "guidance, rescale", [(5.0, 0.0), (5.0, 0.7), (1.0, 0.0)], ids=["cfg", "cfg-rescale", "no-cfg"]
)
def test_infinite_blur_against_the_definition(sdxl, guidance, rescale):
    """sigma >= 1e4: the SEG copy's mid self-attention queries are their token mean; the pipeline's own formula on
    the rewritten output gives eps_u + cfg (eps_c - eps_u) + seg (eps_c - eps_seg), eps_seg computed directly."""
    pipe, scale = sdxl, 2.5
    pipe._guidance_scale, pipe._guidance_rescale = guidance, rescale  # what the pipeline's __call__ sets
    cfg = pipe.do_classifier_free_guidance
    inputs = _unet_inputs(pipe, 2 if cfg else 1)
    with torch.no_grad():
        plain = pipe.unet(**inputs, return_dict=False)[0]
        handles = [
            block.attn1.to_q.register_forward_hook(lambda m, a, out: out.mean(dim=1, keepdim=True).expand_as(out))
            for block in pipe.unet.mid_block.attentions[0].transformer_blocks
        ]
        cond = {k: (v if k == "timestep" else _last(v)) for k, v in inputs.items()}
        eps_seg = pipe.unet(**cond, return_dict=False)[0]
        for handle in handles:
            handle.remove()
        seg.enable_seg(pipe, scale=scale, blur_sigma=1e4, layers=["mid"])
        try:
            rewritten = pipe.unet(**inputs, return_dict=False)[0]
        finally:
            seg.disable_seg(pipe)
            del pipe._guidance_scale, pipe._guidance_rescale
    eps_c = plain[-1:]
    if cfg:
        eps_u = plain[:1]
        expected = eps_u + guidance * (eps_c - eps_u) + scale * (eps_c - eps_seg)
        got = rewritten[:1] + guidance * (rewritten[1:] - rewritten[:1])
        if rescale > 0:
            assert torch.equal(rewritten[1:], eps_c)  # the rescale's reference stays the true conditional prediction
    else:
        expected, got = eps_c + scale * (eps_c - eps_seg), rewritten
    assert not torch.allclose(eps_seg, eps_c, atol=1e-3)  # the blur changes the prediction
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def _last(value):
    if torch.is_tensor(value):
        return value[-1:]
    return {k: _last(v) for k, v in value.items()}


def test_finite_blur_is_a_2d_gaussian_with_reflect_padding():
    """blur_queries equals the 2D kernel (outer product of the 1D Gaussian, window ceil(6 sigma) made odd and
    clipped to the grid) convolved over the reflect-padded grid; its limits: a narrow blur is the identity, a constant
    stays constant, sigma >= 1e4 is the token mean."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 36, 5, generator=g)
    for sigma in (0.7, 1.0, 100.0):
        size = min(math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2, 6 + 1)  # grid 6x6: odd size just above 6
        x = torch.linspace(-(size - 1) / 2, (size - 1) / 2, size, dtype=torch.float64)
        k1 = torch.exp(-0.5 * (x / sigma) ** 2)
        k1 = k1 / k1.sum()
        k2 = (k1[:, None] * k1[None, :]).float().expand(5, 1, size, size)
        image = q.transpose(1, 2).reshape(2, 5, 6, 6)
        direct = F.conv2d(F.pad(image, [size // 2] * 4, mode="reflect"), k2, groups=5).reshape(2, 5, 36).transpose(1, 2)
        torch.testing.assert_close(seg.blur_queries(q, (6, 6), sigma), direct, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seg.blur_queries(q, (6, 6), 0.05), q)
    assert torch.allclose(seg.blur_queries(torch.ones(1, 36, 3), (6, 6), 2.0), torch.ones(1, 36, 3))
    torch.testing.assert_close(seg.blur_queries(q, (6, 6), 1e4), q.mean(dim=1, keepdim=True).expand_as(q))
    # a non-square grid two levels down: 9x5 latent -> 3x2 tokens
    assert seg.blur_queries(torch.randn(1, 6, 4), (9, 5), 1.0).shape == (1, 6, 4)


def test_seg_with_controlnet_and_without_cfg():
    pipe = tiny_unet.tiny_sdxl_controlnet_pipeline("ddim")
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    stock = run(pipe, image=image, guidance_scale=1.0)
    seg.enable_seg(pipe, scale=3.0, blur_sigma=1e10, layers=["mid"])
    calls = Calls(pipe.unet)
    changed = run(pipe, image=image, guidance_scale=1.0)
    assert calls.close() == [2, 2]  # cond + SEG copy, the ControlNet's residuals extended alongside
    assert np.abs(changed - stock).mean() > MIN_CHANGE
    seg.disable_seg(pipe)
    assert np.array_equal(run(pipe, image=image, guidance_scale=1.0), stock)


def test_seg_with_pag_is_refused_and_without_pag_runs():
    pipe = tiny_unet.tiny_sdxl_pag_pipeline("ddim")
    seg.enable_seg(pipe, scale=3.0)
    with pytest.raises(ValueError, match="SEG and PAG in one call"):
        run(pipe, pag_scale=3.0)
    assert run(pipe, pag_scale=0.0).shape == (1, SIZE, SIZE, 3)


def test_clear_errors():
    flux = tiny_transformers.tiny_flux_pipeline()
    with pytest.raises(ValueError, match="no UNet"):
        seg.enable_seg(flux)
    pipe = tiny_unet.tiny_sd15_pipeline("ddim")
    with pytest.raises(ValueError, match=r"'middle'.*down, mid, up.*down_blocks"):
        seg.enable_seg(pipe, layers=["middle"])
    with pytest.raises(ValueError, match="blur_sigma must be > 0"):
        seg.enable_seg(pipe, blur_sigma=0)
    with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
        seg.enable_seg(pipe, scale=-1)
    assert seg.seg_settings(pipe) is None  # nothing was installed by a refused call
    seg.enable_seg(pipe, layers=["up_blocks.0.*"])
    with pytest.raises(RuntimeError, match="outside its pipeline"):
        pipe.unet(**_unet_inputs_sd15(pipe))
    pipe.fuse_qkv_projections()
    with pytest.raises(RuntimeError, match="unfuse_qkv_projections"):
        run(pipe)


def _unet_inputs_sd15(pipe):
    g = torch.Generator().manual_seed(0)
    return dict(sample=torch.randn(1, 4, 8, 8, generator=g), timestep=torch.tensor(10),
                encoder_hidden_states=torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=g))  # fmt: skip
