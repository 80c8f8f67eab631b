"""Half-precision behaviour on a GPU (skipped where there is none): the paths users run on real models."""

import pytest
import torch

import pladis
from pladis.attention import pladis_attention
from pladis.testing.unet import tiny_sd15_pipeline, tiny_sdxl_pipeline

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("build", [tiny_sd15_pipeline, tiny_sdxl_pipeline], ids=["sd15", "sdxl"])
def test_half_precision_pipelines(build, dtype):
    pipe = build("euler").to("cuda", dtype)

    def run():
        return pipe(
            "a red cube",
            num_inference_steps=3,
            guidance_scale=5.0,
            height=64,
            width=64,
            output_type="pt",
            generator=torch.Generator("cuda").manual_seed(0),
        ).images

    stock = run()
    with pladis.apply(pipe, scale=0.0) as handle:
        assert torch.equal(run(), stock)
        handle.scale = 2.0
        out = run()
    assert torch.isfinite(out).all()
    assert (out - stock).abs().mean() > 1e-3
    assert torch.equal(run(), stock)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_and_eager_agree_on_gpu(dtype):
    g = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 8, n, 64, device="cuda", generator=g).to(dtype) for n in (512, 77, 77))
    results, before = {}, pladis.get_backend()
    try:
        for backend in ("eager", "compiled"):
            pladis.set_backend(backend)
            results[backend] = pladis_attention(q, k, v, scale=2.0, alpha=1.5).float()
    finally:
        pladis.set_backend(before)
    reference = pladis_attention(q.double(), k.double(), v.double(), scale=2.0, alpha=1.5)
    tolerance = 4 * torch.finfo(dtype).eps * reference.abs().max().item()
    for out in results.values():
        assert (out.double() - reference).abs().max() < tolerance
