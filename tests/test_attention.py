import math

import pytest
import torch
import torch.nn.functional as F

import pladis
from pladis.attention import pladis_attention, pladis_weights


@pytest.fixture(autouse=True)
def eager_backend():
    """Most tests check maths, not kernels: run them eagerly; test_backends_agree covers the compiled path."""
    before = pladis.get_backend()
    pladis.set_backend("eager")
    yield
    pladis.set_backend(before)


def qkv(batch=2, heads=3, lq=40, lk=77, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, n, d, generator=g).to(dtype) * 2 for n in (lq, lk, lk))


def reference(q, k, v, scale, alpha, mask=None, temperature=1.0):
    s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    w = (1 - scale) * torch.softmax(s, -1) + scale * pladis.entmax(s / temperature, alpha)
    return w @ v.double()


def test_scale_zero_and_alpha_one_are_plain_attention():
    q, k, v = qkv()
    sdpa = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(pladis_attention(q, k, v, scale=0.0), sdpa, atol=1e-5)
    assert torch.allclose(pladis_attention(q, k, v, scale=3.0, alpha=1.0), sdpa, atol=1e-5)


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
@pytest.mark.parametrize("scale", [1.0, 2.0, 5.0])
def test_matches_float64_formula(alpha, scale):
    q, k, v = qkv()
    out = pladis_attention(q, k, v, scale=scale, alpha=alpha)
    assert torch.allclose(out.double(), reference(q, k, v, scale, alpha), atol=1e-4)
    assert not torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-3)


def test_weights_rows_sum_to_one_and_extrapolate():
    torch.manual_seed(0)
    s = torch.randn(100, 77) * 3
    w = pladis_weights(s, scale=2.0, alpha=1.5)
    assert w.dtype == torch.float32
    assert torch.allclose(w.sum(-1), torch.ones(100), atol=1e-5)
    dense, sparse = torch.softmax(s, -1), pladis.entmax(s, 1.5)
    assert torch.allclose(w, 2 * sparse - dense, atol=1e-6)
    assert (w < 0).any()  # lambda > 1 extrapolates beyond the sparse map


def test_temperature_only_sharpens_the_sparse_branch():
    q, k, v = qkv()
    out = pladis_attention(q, k, v, scale=2.0, temperature=0.5)
    assert torch.allclose(out.double(), reference(q, k, v, 2.0, 1.5, temperature=0.5), atol=1e-4)
    assert not torch.allclose(out, pladis_attention(q, k, v, scale=2.0), atol=1e-3)


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_masked_keys_get_zero_weight(kind):
    q, k, v = qkv(lk=20)
    keep = torch.ones(2, 1, 1, 20, dtype=torch.bool)
    keep[0, ..., 12:] = False
    mask = keep if kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, -math.inf)
    out = pladis_attention(q, k, v, scale=2.0, attn_mask=mask)
    assert torch.allclose(out.double(), reference(q, k, v, 2.0, 1.5, keep.expand(2, 3, 40, 20)), atol=1e-4)
    # values behind masked keys must not leak: change them, the output stays the same
    v2 = v.clone()
    v2[0, :, 12:] += 100
    assert torch.allclose(pladis_attention(q, k, v2, scale=2.0, attn_mask=mask)[0], out[0], atol=1e-5)


def test_chunking_over_queries_is_exact():
    q, k, v = qkv(lq=300)
    full = pladis_attention(q, k, v, scale=2.0)
    chunked = pladis_attention(q, k, v, scale=2.0, max_score_elements=2 * 3 * 77 * 7)
    assert torch.equal(full, chunked)
    mask = torch.rand(2, 3, 300, 77) > 0.2
    assert torch.equal(
        pladis_attention(q, k, v, attn_mask=mask),
        pladis_attention(q, k, v, attn_mask=mask, max_score_elements=5000),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    q, k, v = qkv(dtype=dtype)
    out = pladis_attention(q, k, v, scale=2.0)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = pladis_attention(q.float(), k.float(), v.float(), scale=2.0)
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_backends_agree():
    q, k, v = qkv(lq=64)
    eager = pladis_attention(q, k, v, scale=2.0, alpha=1.5)
    pladis.set_backend("compiled")
    for alpha in (1.5, 1.25):
        compiled = pladis_attention(q, k, v, scale=2.0, alpha=alpha)
        pladis.set_backend("eager")
        assert torch.allclose(compiled, pladis_attention(q, k, v, scale=2.0, alpha=alpha), atol=2e-5)
        pladis.set_backend("compiled")
    assert torch.allclose(eager, pladis_attention(q, k, v, scale=2.0, alpha=1.5), atol=2e-5)


def test_registered_backend_is_the_dispatch_point():
    seen = []

    def spy(scores, scale, alpha, temperature):
        seen.append(scores.shape)
        return pladis.attention.mixed_rows(scores, scale, alpha, temperature)

    pladis.register_backend("spy", spy)
    pladis.set_backend("spy")
    q, k, v = qkv()
    pladis_attention(q, k, v)
    assert seen == [(2, 3, 40, 77)]
    with pytest.raises(ValueError, match="unknown PLADIS backend"):
        pladis.set_backend("nope")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"scale": -1}, "scale"),
        ({"scale": float("nan")}, "scale"),
        ({"alpha": 3}, "alpha"),
        ({"temperature": 0}, "temperature"),
        ({"scale": 1e39}, r"scale must be in \[0, 1000\]"),  # overflowed float32 maths: an all-NaN image
        ({"scale": float("inf")}, "scale"),
        ({"temperature": 1e-40}, r"temperature must be in \[1e-06, 1e\+06\]"),  # 1 / temperature is inf
        ({"temperature": 1e7}, "temperature"),
    ],
)
def test_bad_arguments(kwargs, match):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=match):
        pladis_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("value", ["eager", "bogus"])
def test_backend_from_environment(value):
    """A bad PLADIS_BACKEND never breaks `import pladis` (nor `pladis --version`); first use names the valid ones."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PLADIS_BACKEND": value}
    code = "import pladis\ntry:\n    print(pladis.get_backend())\nexcept ValueError as err:\n    print('error:', err)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if value == "eager":
        assert result.stdout.strip() == "eager"
    else:
        line = result.stdout.strip()
        assert line.startswith("error: PLADIS_BACKEND='bogus'") and "auto, eager, compiled, triton" in line
        assert "\n" not in line


def test_alpha_sweep_and_new_shapes_never_recompile():
    """20 alphas, temperatures, key lengths 77 -> 77 -> 300 (SD1.5, SDXL, PixArt), fp32 and fp16 inputs: one compiled
    graph per alpha kind, built once; a second pass over everything compiles nothing (no recompile limit, so no
    silent drop to eager speed)."""
    from torch._dynamo.utils import counters

    pladis.set_backend("compiled")
    torch._dynamo.reset()
    pladis.attention._mixed_graphs._graphs.clear()
    alphas = [*torch.linspace(1, 2, 20).tolist(), 1.25, 1.5]
    cases = [
        (lk, dtype, t)
        for lk, dtype, t in [(77, torch.float32, 1.0), (77, torch.float16, 0.5), (300, torch.float32, 2.0)]
    ]

    def sweep():
        for lk, dtype, temperature in cases:
            q, k, v = qkv(batch=1, heads=2, lq=32, lk=lk, dtype=dtype)
            for alpha in alphas:
                out = pladis_attention(q, k, v, scale=2.0, alpha=alpha, temperature=temperature)
                assert torch.isfinite(out).all()

    before = counters["stats"]["unique_graphs"]
    sweep()
    first = counters["stats"]["unique_graphs"]
    assert first - before <= 2 * 7  # kinds: softmax, k = 1, 2, 4, three bands of other alphas (at most one redo each)
    sweep()
    assert counters["stats"]["unique_graphs"] == first, "a repeated sweep recompiled"
    assert set(pladis.attention._mixed_graphs._graphs) == {0, 1, 2, 4, -1, -2, -3}
    # and the compiled path computes what the eager one does
    q, k, v = qkv(batch=1, heads=2, lq=32, lk=300)
    compiled = pladis_attention(q, k, v, alpha=1.3)
    pladis.set_backend("eager")
    assert torch.allclose(compiled, pladis_attention(q, k, v, alpha=1.3), atol=1e-5)


def test_fullgraph_compile_of_pladis_attention():
    """No .any()/.item()/bool() on tensors: a model using PLADIS compiles with fullgraph=True."""
    q, k, v = qkv(lq=16)
    mask = torch.rand(2, 1, 16, 77) > 0.3
    fn = torch.compile(lambda q, k, v, m: pladis_attention(q, k, v, scale=2.0, attn_mask=m), fullgraph=True)
    assert torch.allclose(fn(q, k, v, mask), pladis_attention(q, k, v, scale=2.0, attn_mask=mask), atol=1e-5)


def test_gradients_take_the_differentiable_path():
    q, k, v = (t.requires_grad_() for t in qkv(lq=8, lk=12, dtype=torch.float64))
    pladis.set_backend("auto")
    out = pladis_attention(q, k, v, scale=2.0, alpha=1.5)
    out.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_inside_a_compiled_model():
    """Users compile their denoiser: PLADIS inside it must trace, with the default backend too."""
    pladis.set_backend("auto")
    q, k, v = qkv(lq=16)
    out = torch.compile(lambda q, k, v: pladis_attention(q, k, v, scale=2.0))(q, k, v)
    pladis.set_backend("eager")
    assert torch.allclose(out, pladis_attention(q, k, v, scale=2.0), atol=1e-5)
