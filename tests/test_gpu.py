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


# --------------------------------------------------------------------------- the fused kernel and the torch path


def cuda_qkv(dtype, lq=1024, lk=77, heads=10, d=64, seed=0):
    g = torch.Generator("cuda").manual_seed(seed)
    return tuple(torch.randn(2, heads, n, d, device="cuda", generator=g).to(dtype) for n in (lq, lk, lk))


def float64_reference(q, k, v, alpha, scale=2.0, mask=None):
    s = (q.double() @ k.double().transpose(-1, -2)) / q.shape[-1] ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    w = (1 - scale) * torch.softmax(s, -1) + scale * pladis.entmax(s, alpha)
    return w @ v.double()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("alpha", [1.0, 1.25, 1.5, 1.75, 2.0, 1.3])
@pytest.mark.parametrize("lk", [77, 300, 512])
def test_kernel_accuracy_on_gpu(dtype, alpha, lk):
    pytest.importorskip("triton")
    from pladis.triton_attention import pladis_attention_triton

    q, k, v = cuda_qkv(dtype, lq=256, lk=lk)
    mask = torch.rand(2, 1, 1, lk, device="cuda") > 0.2
    out = pladis_attention_triton(q, k, v, scale=2.0, alpha=alpha, attn_mask=mask).double()
    ref = float64_reference(q, k, v, alpha, mask=mask)
    # the same bound as SDPA's own rounding at this dtype (scores from rounded inputs, P V in the input dtype)
    tolerance = 8 * torch.finfo(dtype).eps * ref.abs().max().item() if dtype != torch.float32 else 1e-4
    assert (out - ref).abs().max() < tolerance


@pytest.mark.parametrize("backend", ["auto", "compiled", "eager"])
def test_no_host_sync(backend):
    """torch.cuda.set_sync_debug_mode('error') raises on any device-to-host sync in the PLADIS path."""
    q, k, v = cuda_qkv(torch.float16)
    mask = torch.ones(2, 1, 1, 77, dtype=torch.bool, device="cuda")
    before = pladis.get_backend()
    pladis.set_backend(backend)
    try:
        for alpha in (1.5, 1.3, 2.0):
            pladis_attention(q, k, v, scale=2.0, alpha=alpha, attn_mask=mask)  # warm-up (compilation syncs)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for alpha in (1.5, 1.3, 2.0):
                pladis_attention(q, k, v, scale=2.0, alpha=alpha, attn_mask=mask)
            from pladis.joint import pladis_joint_attention

            pladis_joint_attention(q, q, q, text=slice(0, 77), scale=2.0, alpha=1.5)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    finally:
        pladis.set_backend(before)


@pytest.mark.parametrize("backend", ["auto", "eager"])
def test_fullgraph_compile_and_cuda_graph(backend):
    q, k, v = cuda_qkv(torch.float16)
    before = pladis.get_backend()
    pladis.set_backend(backend)
    try:
        expected = pladis_attention(q, k, v, scale=2.0, alpha=1.5)
        compiled = torch.compile(lambda q, k, v: pladis_attention(q, k, v, scale=2.0, alpha=1.5), fullgraph=True)
        assert (compiled(q, k, v).float() - expected.float()).abs().max() < 1e-2
        static_q = q.clone()
        pladis_attention(static_q, k, v, scale=2.0, alpha=1.5)  # warm-up outside capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = pladis_attention(static_q, k, v, scale=2.0, alpha=1.5)
        static_q.copy_(q * 0.5)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.allclose(
            captured.float(), pladis_attention(q * 0.5, k, v, scale=2.0, alpha=1.5).float(), atol=1e-2
        )
    finally:
        pladis.set_backend(before)


def test_kernel_is_the_default_on_cuda_and_grads_fall_back():
    pytest.importorskip("triton")
    from pladis import triton_attention

    calls = []
    original = triton_attention.pladis_attention_triton
    triton_attention.pladis_attention_triton = lambda *a, **kw: calls.append(1) or original(*a, **kw)
    before = pladis.get_backend()
    try:
        pladis.set_backend("auto")
        q, k, v = cuda_qkv(torch.float16, lq=64)
        pladis_attention(q, k, v)
        assert calls == [1]
        out = pladis_attention(q.float().requires_grad_(), k.float(), v.float())
        out.sum().backward()
        assert calls == [1]
    finally:
        triton_attention.pladis_attention_triton = original
        pladis.set_backend(before)
