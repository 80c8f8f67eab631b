"""The fused Triton kernel under Triton's CPU interpreter (TRITON_INTERPRET=1): against the `entmax` package in
float64 and against the torch path. Skipped where Triton is absent (`pip install 'pladis[triton]'`)."""

import importlib
import math
import os
import sys

import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"  # before the kernel is defined (Triton reads it at decoration time)
pytest.importorskip("triton", reason="Triton is not installed (pip install 'pladis[triton]')")

import pladis
from pladis.attention import pladis_attention
from pladis.joint import pladis_joint_attention

if "pladis.triton_attention" in sys.modules:  # imported before the interpreter was switched on
    importlib.reload(sys.modules["pladis.triton_attention"])
from pladis import triton_attention
from pladis.triton_attention import pladis_attention_triton

ALPHAS = [1.0, 1.25, 1.5, 1.75, 2.0, 1.3]


@pytest.fixture(autouse=True)
def one_thread_and_backend():
    threads, before = torch.get_num_threads(), pladis.get_backend()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    pladis.set_backend(before)


def kernel_map(scores: torch.Tensor, alpha: float, scale: float = 1.0, mask=None, temperature=1.0) -> torch.Tensor:
    """The kernel's PLADIS map of given fp32 scores: queries = the scores, keys = values = identity, so that
    S = scores and out = map exactly (fp32 products with 0/1 are exact)."""
    n = scores.shape[-1]
    eye = torch.eye(n).expand(*scores.shape[:-2], n, n)
    return pladis_attention_triton(
        scores, eye, eye, scale=scale, alpha=alpha, attn_mask=mask, softmax_scale=1.0, temperature=temperature
    )


def reference_entmax(x: torch.Tensor, alpha: float) -> torch.Tensor:
    entmax_pkg = pytest.importorskip("entmax")
    x = x.double()
    ref = torch.softmax(x, -1) if alpha == 1.0 else entmax_pkg.entmax_bisect(x, alpha=alpha, dim=-1, n_iter=200)
    return torch.nan_to_num(ref)  # fully masked rows: zeros


def hard_scores(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randn(6, n, generator=g) * s for s in (0.01, 1.0, 5.0, 300.0)]
    tied = torch.randn(6, n, generator=g) * 4
    tied[:, ::4] = tied[:, :1].clone()
    rows += [tied, torch.full((2, n), 0.7), -(torch.arange(n, dtype=torch.float32)[None] ** 2) * 0.01]
    return torch.cat(rows)[None]  # (1, rows, n)


@pytest.mark.parametrize("n", [16, 77, 130])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_kernel_entmax_rows_match_the_entmax_package(alpha, n):
    x = hard_scores(n, seed=n)
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[:, 1, n // 3 :] = False  # -inf entries
    keep[:, 2] = False  # a fully masked row
    out = kernel_map(x, alpha, scale=1.0, mask=keep)
    ref = reference_entmax(x.masked_fill(~keep, -math.inf), alpha)
    assert (out.double() - ref).abs().max() < 1e-6
    assert torch.equal(out[:, 2], torch.zeros_like(out[:, 2]))


@pytest.mark.parametrize("alpha", [1.5, 1.3])
def test_kernel_takes_512_keys(alpha):
    x = hard_scores(512, seed=1)[:, :16]
    ref = reference_entmax(x, alpha)
    assert (kernel_map(x, alpha).double() - ref).abs().max() < 1e-6


@pytest.mark.parametrize("alpha", ALPHAS)
def test_kernel_map_equals_the_torch_path(alpha):
    x = hard_scores(77, seed=3)
    for scale, temperature in ((2.0, 1.0), (3.0, 0.5)):
        torch_map = pladis.pladis_weights(x, scale=scale, alpha=alpha, temperature=temperature)
        out = kernel_map(x, alpha, scale=scale, temperature=temperature)
        assert (out - torch_map).abs().max() < 1e-5 * scale


def qkv(lq=24, lk=77, d=64, dtype=torch.float32, batch=2, heads=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(batch, heads, n, d, generator=g) * 2).to(dtype) for n in (lq, lk, lk))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.3])
def test_kernel_attention_equals_the_torch_path(dtype, alpha):
    q, k, v = qkv(dtype=dtype)
    pladis.set_backend("eager")
    expected = pladis_attention(q, k, v, scale=2.0, alpha=alpha)
    out = pladis_attention_triton(q, k, v, scale=2.0, alpha=alpha)
    assert out.dtype == dtype and out.shape == expected.shape
    ulp = 2 * torch.finfo(dtype).eps if dtype != torch.float32 else 1e-5
    assert (out.float() - expected.float()).abs().max() <= ulp * expected.float().abs().max()


@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("shape", ["per-key", "full"])
def test_kernel_masks(kind, shape):
    q, k, v = qkv(lk=40)
    g = torch.Generator().manual_seed(5)
    keep = torch.rand((2, 1, 1, 40) if shape == "per-key" else (2, 3, 24, 40), generator=g) > 0.3
    keep[0, ..., 0, :] = False  # a fully masked row (all rows of batch 0 for the per-key mask)
    mask = keep if kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, -math.inf)
    pladis.set_backend("eager")
    expected = pladis_attention(q, k, v, scale=2.0, attn_mask=mask)
    out = pladis_attention_triton(q, k, v, scale=2.0, alpha=1.5, attn_mask=mask)
    assert (out - expected).abs().max() < 1e-4


def test_dispatch_kernel_by_default_torch_path_for_grads_and_long_keys(monkeypatch):
    calls = []
    original = triton_attention.pladis_attention_triton
    monkeypatch.setattr(
        triton_attention, "pladis_attention_triton", lambda *a, **kw: calls.append(1) or original(*a, **kw)
    )
    pladis.set_backend("triton")
    q, k, v = qkv(lq=8, lk=20)
    out = pladis_attention(q, k, v, scale=2.0)
    assert calls == [1]
    # needs gradients: the differentiable torch path, same numbers
    qg = q.clone().requires_grad_()
    out_grad = pladis_attention(qg, k, v, scale=2.0)
    assert calls == [1] and out_grad.requires_grad
    assert (out_grad.detach() - out).abs().max() < 1e-4
    # more keys than the kernel holds: the torch path
    q, k, v = qkv(lq=4, lk=triton_attention.MAX_KEYS + 1, batch=1, heads=1)
    pladis_attention(q, k, v)
    assert calls == [1]


@pytest.mark.parametrize("text_first", [True, False])
def test_joint_attention_through_the_kernel(text_first):
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 48, 32, generator=g) for _ in range(3))
    text = slice(0, 16) if text_first else slice(32, 48)
    pladis.set_backend("eager")
    expected = pladis_joint_attention(q, k, v, text=text, scale=2.0, alpha=1.5)
    pladis.set_backend("triton")
    out = pladis_joint_attention(q, k, v, text=text, scale=2.0, alpha=1.5)
    assert (out - expected).abs().max() < 1e-4
