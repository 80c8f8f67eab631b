import importlib
import itertools
import math

import pytest
import torch

import pladis

ALPHAS = [1.0, 1.1, 1.25, 1.5, 1.75, 2.0]


def brute_force_entmax(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """float64 reference by enumerating every support size of the sorted row (no Newton, no bisection)."""
    x = x.double()
    if alpha == 1.0:
        return torch.softmax(x, -1)
    k = 1.0 / (alpha - 1.0)
    out = torch.zeros_like(x)
    for r, row in enumerate(x.reshape(-1, x.shape[-1])):
        z = (alpha - 1.0) * row
        z_sorted = z[torch.isfinite(z)].sort(descending=True).values
        for size in range(1, len(z_sorted) + 1):
            top = z_sorted[:size]
            # root of sum (top - tau)^k = 1 with every top entry above tau; bisection on a bracket is exact enough
            lo, hi = top.min().item() - 1.0, top.min().item()
            if ((top - hi).clamp_min(0) ** k).sum() > 1:
                continue
            for _ in range(64):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if ((top - mid) ** k).sum() > 1 else (lo, mid)
            tau = (lo + hi) / 2
            if size == len(z_sorted) or z_sorted[size] <= tau:
                out.view(-1, x.shape[-1])[r] = (z - tau).clamp_min(0) ** k
                break
    return out / out.sum(-1, keepdim=True)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("spread", [0.1, 1.0, 10.0])
def test_matches_brute_force(alpha, spread):
    torch.manual_seed(0)
    x = torch.randn(24, 13, dtype=torch.float64) * spread
    assert torch.allclose(pladis.entmax(x, alpha), brute_force_entmax(x, alpha), atol=1e-10, rtol=0)
    p32 = pladis.entmax(x.float(), alpha)
    assert torch.allclose(p32.double(), brute_force_entmax(x, alpha), atol=2e-6, rtol=0)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
def test_matches_entmax_package(alpha):
    entmax_pkg = pytest.importorskip("entmax")
    torch.manual_seed(1)
    x = torch.randn(512, 77, dtype=torch.float64) * 3
    if alpha == 1.5:
        ref = entmax_pkg.entmax15(x, dim=-1)
    elif alpha == 2.0:
        ref = entmax_pkg.sparsemax(x, dim=-1)
    else:
        ref = entmax_pkg.entmax_bisect(x, alpha=alpha, dim=-1, n_iter=100)
    assert torch.allclose(pladis.entmax(x, alpha), ref, atol=1e-9)


def test_special_cases_are_softmax_and_sparsemax():
    x = torch.randn(8, 30)
    assert torch.allclose(pladis.entmax(x, 1.0), torch.softmax(x, -1), atol=1e-7)
    assert torch.equal(pladis.sparsemax(x), pladis.entmax(x, 2.0))
    assert torch.equal(pladis.entmax15(x), pladis.entmax(x, 1.5))


@pytest.mark.parametrize("alpha", ALPHAS[1:])
def test_sparsity_grows_with_alpha_and_sums_to_one(alpha):
    torch.manual_seed(2)
    x = torch.randn(1000, 77) * 4
    p = pladis.entmax(x, alpha)
    assert (p >= 0).all()
    assert (p.sum(-1) - 1).abs().max() < 1e-5
    assert (p == 0).any(-1).float().mean() > 0.5  # sparse rows
    # the arg-max keeps the largest probability
    assert torch.equal(p.argmax(-1), x.argmax(-1))


def test_more_sparse_as_alpha_grows():
    torch.manual_seed(3)
    x = torch.randn(2000, 77) * 2
    zeros = [(pladis.entmax(x, a) == 0).float().mean().item() for a in (1.25, 1.5, 1.75, 2.0)]
    assert zeros == sorted(zeros) and zeros[0] < zeros[-1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("alpha", [1.5, 1.25, 2.0])
def test_low_precision_inputs_computed_in_fp32(dtype, alpha):
    torch.manual_seed(4)
    x = (torch.randn(256, 77) * 5).to(dtype)
    p = pladis.entmax(x, alpha)
    assert p.dtype == dtype
    exact = pladis.entmax(x.float(), alpha)
    assert (exact.sum(-1) - 1).abs().max() < 1e-5
    assert torch.allclose(p.float(), exact, atol=torch.finfo(dtype).eps, rtol=torch.finfo(dtype).eps * 2)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_masks_give_exact_zeros_and_empty_rows_give_zeros(alpha):
    torch.manual_seed(5)
    x = torch.randn(6, 10)
    x[0, :3] = -math.inf
    x[1] = -math.inf
    p = pladis.entmax(x, alpha)
    assert not p.isnan().any()
    assert torch.equal(p[1], torch.zeros(10))
    assert torch.equal(p[0, :3], torch.zeros(3))
    assert torch.allclose(p[0, 3:], pladis.entmax(x[0, 3:], alpha), atol=1e-7)
    mask = torch.ones(6, 10, dtype=torch.bool)
    mask[2, 5:] = False
    mask[3] = False
    q = pladis.entmax(torch.randn(6, 10), alpha, mask=mask)
    assert torch.equal(q[3], torch.zeros(10)) and (q[2, 5:] == 0).all()
    assert abs(q[2].sum().item() - 1) < 1e-6


def test_any_leading_shape_and_dim():
    torch.manual_seed(6)
    x = torch.randn(2, 3, 7, 11)
    p = pladis.entmax(x, 1.5, dim=1)
    ref = pladis.entmax(x.movedim(1, -1), 1.5).movedim(-1, 1)
    assert torch.equal(p, ref)
    assert torch.allclose(p.sum(1), torch.ones(2, 7, 11), atol=1e-6)


@pytest.mark.parametrize("bad", [0.5, 2.5, float("nan"), -1, "x", None])
def test_bad_alpha(bad):
    with pytest.raises(ValueError, match="alpha"):
        pladis.entmax(torch.randn(3, 4), bad)


def test_integer_input_and_bad_mask():
    with pytest.raises(TypeError):
        pladis.entmax(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="boolean"):
        pladis.entmax(torch.randn(3, 4), mask=torch.ones(3, 4))


@pytest.mark.parametrize("alpha", [1.0, 1.3, 1.5, 2.0])
def test_gradcheck(alpha):
    torch.manual_seed(7)
    x = (torch.randn(4, 9, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: pladis.entmax(t, alpha), (x,), eps=1e-6, atol=1e-5)


def test_gradient_of_masked_rows_is_zero():
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 5, [False] * 5])
    pladis.entmax(x, 1.5, mask=mask)[:, 0].sum().backward()
    assert torch.equal(x.grad[1], torch.zeros(5, dtype=torch.float64))
    assert not x.grad.isnan().any()


def hard_rows(n: int, gen: torch.Generator) -> torch.Tensor:
    """Rows that are hard for a threshold solve: ties (at the support boundary too), near-uniform rows, tiny and
    huge ranges, heavy tails, geometric and quadratic decays, -inf entries, a single finite entry."""
    rows = [torch.randn(8, n, generator=gen, dtype=torch.float64) * s for s in (1e-3, 0.3, 3.0, 30.0, 1e4)]
    tied = torch.randn(8, n, generator=gen, dtype=torch.float64) * 5
    tied[:, ::3] = tied[:, :1].clone()
    rows.append(tied)
    rows.append(torch.full((1, n), 0.3, dtype=torch.float64))
    rows.append((torch.randn(8, n, generator=gen, dtype=torch.float64) ** 3) * 10)
    rows.append(-(torch.arange(n, dtype=torch.float64) ** 2) * torch.logspace(-4, 1, 6, dtype=torch.float64)[:, None])
    rows.append(-torch.log(torch.arange(1, n + 1, dtype=torch.float64)) * torch.logspace(-1, 2, 6)[:, None])
    masked = torch.randn(8, n, generator=gen, dtype=torch.float64) * 3
    masked[:, n // 2 :] = -math.inf
    masked[0, 1:] = -math.inf
    rows.append(masked)
    return torch.cat(rows)


def boundary_rows(n: int, alpha: float, gen: torch.Generator, ties: int | None = None) -> torch.Tensor:
    """The slow case of Newton's method: entries at (or within +-eps of) the support boundary of the exact solution,
    next to one to three leading entries, so that near the root most of the slope comes from entries of almost no
    mass. With one leading entry at 0 and others at -(1 + eps) / (alpha - 1), eps = 0 puts them exactly on the
    boundary (tau = (alpha - 1) max - 1). All other entries tie there, or only `ties` of them (the rest far out)."""
    a = alpha - 1.0
    rows = []
    for eps in (0.0, 1e-7, -1e-7, 1e-5, -1e-5, 1e-3, -1e-3, 1e-2, -1e-2, 0.1, -0.1):
        for lead in ([0.0], [0.0, -0.3 / a], [0.0, 0.0, -0.05 / a]):
            row = torch.full((n,), -(1 + eps) / a, dtype=torch.float64)
            row[: len(lead)] = torch.tensor(lead[:n], dtype=torch.float64)
            rows.append(row)
        jittered = torch.full((n,), -(1 + eps) / a, dtype=torch.float64)
        jittered += torch.rand(n, generator=gen, dtype=torch.float64) * 1e-3 / a
        jittered[0] = 0.0
        rows.append(jittered)
    out = torch.stack(rows)
    if ties is not None:
        out[:, 3 + ties :] = -(3 + torch.rand(out[:, 3 + ties :].shape, generator=gen, dtype=torch.float64)) / a
    decays = -torch.arange(n, dtype=torch.float64)[None] * torch.logspace(-3, 1, 9, dtype=torch.float64)[:, None]
    return torch.cat([out, decays])


# every bucket edge of pladis.entmax.ANY_ROW_BUCKETS (96, 512) and of LONG_ROW (128), alpha near 1, 1.25, 1.5 and 2
@pytest.mark.parametrize("n", [1, 7, 77, 96, 97, 129, 300, 512, 513, 1024])
@pytest.mark.parametrize("alpha", [1.001, 1.1, 1.249, 1.25, 1.3, 1.499, 1.5, 1.501, 1.65, 1.85, 1.95, 1.999, 2.0])
def test_fixed_passes_are_exact_on_hard_rows(n, alpha):
    """No fallback, no verification: the fixed number of Newton passes is exact on the hardest rows we know, in
    float64 (1e-12) and float32 (1e-6), against the `entmax` package's bisection in float64 of the same input.

    float32 gets at most 4 entries tied near the boundary (non-integer k): every d = 1 + (alpha - 1)(y - t) carries a rounding error
    of about 2^-24 whatever the solver, and m tied entries add theirs up (~m 6e-8 on the largest probability for
    alpha near 2), a floor that is not the pass count's. float64 takes every tie (the slow case at full size)."""
    entmax_pkg = pytest.importorskip("entmax")
    gen = torch.Generator().manual_seed(n)
    x = hard_rows(n, gen)
    # integer k (alpha 2, 1.5, 4/3, 1.25) computes d without that rounding near the boundary: every tie in float32 too,
    # up to 512 keys (beyond, the float32 sums of the mass are the floor: 1.3e-6 to 2.7e-6 at 513 and 1024 keys)
    integer_k = importlib.import_module("pladis.entmax").alpha_kind(alpha) > 0
    ties32 = None if integer_k and n <= 512 else 4
    x64, x32 = (torch.cat([x, boundary_rows(n, alpha, gen, ties)]) if n > 1 else x for ties in (None, ties32))
    ref = torch.nan_to_num(entmax_pkg.entmax_bisect(x64, alpha=alpha, dim=-1, n_iter=200))
    assert (pladis.entmax(x64, alpha) - ref).abs().max() < 1e-12
    x32 = x32.float()
    ref32 = torch.nan_to_num(entmax_pkg.entmax_bisect(x32.double(), alpha=alpha, dim=-1, n_iter=200))
    assert (pladis.entmax(x32, alpha).double() - ref32).abs().max() < 1e-6


def test_pass_counts_cover_every_bucket():
    """Each non-integer kind has a pass count for every row-length bucket, non-decreasing with the length."""
    from pladis.entmax import ANY_ROW_BUCKETS, ANY_STEPS, steps_for

    for kind, steps in ANY_STEPS.items():
        assert len(steps) == len(ANY_ROW_BUCKETS) + 1 and list(steps) == sorted(steps)
        assert [steps_for(kind, torch.float32, n) for n in (77, 96, 97, 512, 513)] == [
            steps[0],
            steps[0],
            steps[1],
            steps[1],
            steps[2],
        ]
        assert steps_for(kind, torch.float64, 77) == steps[0] + 3


def test_double_backward_on_sparse_rows():
    """The backward is itself differentiable (it was NaN on rows with zeros)."""
    torch.manual_seed(10)
    x = (torch.randn(3, 8, dtype=torch.float64) * 3).requires_grad_()
    for alpha in (1.3, 1.5, 2.0):
        assert (pladis.entmax(x, alpha) == 0).any()  # sparse rows: the case that broke
        assert torch.autograd.gradgradcheck(lambda t, a=alpha: pladis.entmax(t, a), (x,), eps=1e-6, atol=1e-5)
        (grad,) = torch.autograd.grad((pladis.entmax(x, alpha) ** 2).sum(), x, create_graph=True)
        (second,) = torch.autograd.grad(grad.sum(), x)
        assert torch.isfinite(second).all()


def test_no_host_sync_and_traceable_with_fullgraph():
    """No data-dependent branch: the whole of entmax traces into one graph (a .any()/.item() would break it)."""
    x = torch.randn(64, 77) * 3
    for alpha in (1.5, 1.3, 2.0):
        compiled = torch.compile(lambda t, a=alpha: pladis.entmax(t, a), fullgraph=True, backend="eager")
        assert torch.allclose(compiled(x), pladis.entmax(x, alpha), atol=1e-6)


@pytest.mark.parametrize("alpha,spread", list(itertools.product([1.5, 1.25], [0.05, 50.0])))
def test_extreme_spreads(alpha, spread):
    torch.manual_seed(9)
    x = torch.randn(128, 77) * spread
    p = pladis.entmax(x, alpha)
    assert (p.sum(-1) - 1).abs().max() < 1e-5
    ref = brute_force_entmax(x[:16], alpha)
    assert torch.allclose(p[:16].double(), ref, atol=2e-6)


def test_empty_input():
    for shape in [(3, 0), (0, 5)]:
        assert pladis.entmax(torch.empty(shape), 1.5).shape == shape


@pytest.mark.parametrize("n, tolerance", [(300, 1e-6), (512, 1e-6), (1024, 2e-6)])
def test_sparsemax_float32_with_every_entry_tied_at_the_boundary(n, tolerance):
    """One leading entry and n - 1 ties within 1e-3 of the support boundary: float32 rounding of the mass once swung
    t across the ties and back (errors of 3e-3 at 300 keys, 1e-2 at 1024); now within 1e-6 of the float64 reference
    up to 512 keys, and at 1024 within the float32 summation floor of the mass (measured 1.5e-6)."""
    entmax_pkg = pytest.importorskip("entmax")
    rows = []
    for eps in (0.0, 1e-7, -1e-7, 1e-5, -1e-5, 1e-3, -1e-3):
        for lead in ([0.0], [0.0, -0.3], [0.0, 0.0, -0.05]):
            row = torch.full((n,), -(1 + eps))
            row[: len(lead)] = torch.tensor(lead)
            rows.append(row)
    x = torch.stack(rows)
    ref = entmax_pkg.sparsemax(x.double(), dim=-1)
    assert (pladis.entmax(x, 2.0).double() - ref).abs().max() < tolerance
