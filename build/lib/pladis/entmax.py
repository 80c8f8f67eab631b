"""The alpha-entmax family, exact and sort-free: softmax (alpha=1), entmax-1.5, sparsemax (alpha=2) and between.

    entmax_alpha(x)_i = [(alpha - 1) x_i - tau]_+ ** (1 / (alpha - 1)),   tau such that the row sums to 1.

The threshold tau is found by Newton steps on f(tau) = sum_i [(alpha-1) x_i - tau]_+^k - 1 (k = 1/(alpha-1)),
started below the root; f is convex and decreasing, so the iterates rise monotonically towards it. For alpha 1.5 and
2 the root on the found support has a closed form, which is then verified; for other alpha the iteration is checked
for convergence. Rows that fail the check are solved again in float64 to convergence, so no result depends on a
fixed iteration count. Inputs of any float dtype are computed in float32 (float64 stays float64).

Masks: entries at -inf (or where a boolean `mask` is False) get exactly 0; a fully masked row returns zeros.
"""

from __future__ import annotations

import math

import torch

from .kernels import Fusable

NEWTON_STEPS = 6  # enough to fix the support of nearly every row; the rest take the exact fallback


def check_alpha(alpha: float) -> float:
    """Return alpha as a float, or raise ValueError if it is outside [1, 2] or NaN."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number in [1, 2], got {alpha!r}") from None
    if not 1.0 <= value <= 2.0:  # also rejects NaN
        raise ValueError(f"alpha must be in [1, 2] (1 = softmax, 1.5 = entmax-1.5, 2 = sparsemax), got {alpha!r}")
    return value


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def masked_softmax(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax whose fully masked (all -inf) rows are zeros instead of NaN."""
    top = scores.amax(dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(scores - top)
    total = e.sum(dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def shifted_logits(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """z = (alpha - 1) (x - max x): the row maximum at 0, so the threshold lies in [-1, 0)."""
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return (scores - top) * (alpha - 1.0)


def _power(d: torch.Tensor, exponent: float) -> torch.Tensor:
    """d ** exponent; small integer exponents (alpha = 1.25 gives 3 and 4) as products, cheaper than pow."""
    if exponent.is_integer() and 1 <= exponent <= 8:
        out = d
        for _ in range(int(exponent) - 1):
            out = out * d
        return out
    return d.pow(exponent)


def _sums(z: torch.Tensor, tau: torch.Tensor, k: float):
    """One pass over each row: d = (z - tau)_+, then sum d^k and sum d^(k-1) (the slope without its factor k)."""
    d = (z - tau).clamp_min(0)
    if k == 1.0:
        return d.sum(-1, keepdim=True), (d > 0).to(z.dtype).sum(-1, keepdim=True)
    if k == 2.0:
        return (d * d).sum(-1, keepdim=True), d.sum(-1, keepdim=True)
    lower = _power(d, k - 1)
    return (lower * d).sum(-1, keepdim=True), lower.sum(-1, keepdim=True)


def _support_size(z: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    return (z > tau).to(z.dtype).sum(-1, keepdim=True)


def _newton_step(z: torch.Tensor, tau: torch.Tensor, k: float) -> torch.Tensor:
    mass, slope = _sums(z, tau, k)
    slope = k * slope
    return torch.where(slope > 0, (mass - 1) / slope, 0.0)  # a row with no support (fully masked) stays put


def initial_threshold(z: torch.Tensor, k: float) -> torch.Tensor:
    """A threshold at or below the root: max(-1, mean(z) - n^(-1/k)) (power-mean bound; -1 when masked)."""
    n = z.shape[-1]
    return torch.maximum(z.mean(-1, keepdim=True) - n ** (-1.0 / k), torch.full_like(z[..., :1], -1.0))


def closed_form_step(mass: torch.Tensor, first: torch.Tensor, size: torch.Tensor, k: float) -> torch.Tensor:
    """Exact delta with sum_S (d - delta)^k = 1 on a fixed support S, from the sums of d^k, d and |S| (k in {1, 2}).

    For k = 2 this is the smaller root of |S| delta^2 - 2 delta sum(d) + sum(d^2) - 1, written without cancellation.
    """
    size = size.clamp_min(1)
    if k == 1.0:
        return (mass - 1) / size
    root = (first * first - size * (mass - 1)).clamp_min(0).sqrt()
    return (mass - 1) / (first + root).clamp_min(torch.finfo(mass.dtype).tiny)


def solve_threshold(z: torch.Tensor, k: float, steps: int = NEWTON_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Threshold for each row of z and a flag telling whether it is verified exact (to the dtype's precision)."""
    tau = initial_threshold(z, k)
    for _ in range(steps - 1):
        tau = tau + _newton_step(z, tau, k)
    mass, first = _sums(z, tau, k)
    if k in (1.0, 2.0):
        # exact on the support found so far; right when no entry of that support falls below the new threshold
        size = _support_size(z, tau)
        exact = tau + closed_form_step(mass, first, size, k)
        return exact, (_support_size(z, exact) == size) | (size == 0)
    step = torch.where(first > 0, (mass - 1) / (k * first), 0.0)
    ok = step.abs() <= 4 * torch.finfo(z.dtype).eps * tau.abs().clamp_min(1)
    return tau + step, ok


def probabilities(z: torch.Tensor, tau: torch.Tensor, k: float) -> torch.Tensor:
    d = (z - tau).clamp_min(0)
    p = _power(d, k)
    total = p.sum(-1, keepdim=True)
    return p / torch.where(total > 0, total, torch.ones_like(total))


def exact_threshold_float64(z: torch.Tensor, k: float, max_steps: int = 200) -> torch.Tensor:
    """Reference solve in float64: Newton to a fixed point, then the closed form where one exists."""
    z = z.double()
    tau = torch.full_like(z[..., :1], -1.0)
    for _ in range(max_steps):
        step = _newton_step(z, tau, k)
        tau = tau + step
        if bool((step <= 1e-15 * tau.abs().clamp_min(1)).all()):
            break
    if k in (1.0, 2.0):
        tau = tau + closed_form_step(*_sums(z, tau, k), _support_size(z, tau), k)
    return tau


def solve_rows(x: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """entmax over the last dim and a per-row 'verified exact' flag; pure tensor code, fusable."""
    if alpha == 1.0:
        return masked_softmax(x), torch.ones_like(x[..., :1], dtype=torch.bool)
    k = 1.0 / (alpha - 1.0)
    z = shifted_logits(x, alpha)
    tau, ok = solve_threshold(z, k)
    return probabilities(z, tau, k), ok


_fused_solve_rows = Fusable(solve_rows)


def exact_rows(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """entmax of rows through the float64 solve, for the rows whose fast solve did not verify."""
    if alpha == 1.0:
        return masked_softmax(x)
    k = 1.0 / (alpha - 1.0)
    z = shifted_logits(x, alpha)
    return probabilities(z, exact_threshold_float64(z, k).to(z.dtype), k)


def entmax_rows(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """entmax over the last dim of x in x's dtype (float32 or float64), no autograd, every row exact."""
    rows = x.reshape(-1, x.shape[-1])
    p, ok = _fused_solve_rows(rows, alpha)
    bad = ~ok.squeeze(-1)
    if bool(bad.any()):
        p = p.clone()
        p[bad] = exact_rows(rows[bad], alpha)
    return p.view(x.shape)


def entmax_backward(p: torch.Tensor, grad: torch.Tensor, alpha: float, dim: int) -> torch.Tensor:
    """Vector-Jacobian product of entmax: J = diag(s) - s s^T / sum(s), s = p^(2 - alpha) on the support."""
    if alpha == 1.0:
        s = p
    elif alpha == 2.0:
        s = (p > 0).to(p.dtype)
    else:
        s = torch.where(p > 0, p.pow(2.0 - alpha), torch.zeros_like(p))
    sg = s * grad
    total = s.sum(dim, keepdim=True)
    return sg - s * (sg.sum(dim, keepdim=True) / torch.where(total > 0, total, torch.ones_like(total)))


class _Entmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float, dim: int) -> torch.Tensor:
        xc = x.detach().to(compute_dtype(x.dtype)).movedim(dim, -1).contiguous()
        p = entmax_rows(xc, alpha).movedim(-1, dim)
        ctx.save_for_backward(p)
        ctx.alpha, ctx.dim = alpha, dim
        return p.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (p,) = ctx.saved_tensors
        return entmax_backward(p, grad.to(p.dtype), ctx.alpha, ctx.dim).to(grad.dtype), None, None


def entmax(x: torch.Tensor, alpha: float = 1.5, dim: int = -1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """alpha-entmax of `x` along `dim`, exact for every alpha in [1, 2]; differentiable.

    mask: optional boolean tensor broadcastable to x, True where an entry takes part. Masked entries (and entries
    at -inf) get exactly 0; a row with no entry left returns zeros. The result has x's dtype, computed in float32
    (float64 for float64 input).
    """
    alpha = check_alpha(alpha)
    if not torch.is_floating_point(x):
        raise TypeError(f"entmax needs a floating-point tensor, got {x.dtype}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a boolean tensor (True = keep), got {mask.dtype}")
        x = x.masked_fill(~mask, -math.inf)
    if x.numel() == 0:
        return x.clone()
    return _Entmax.apply(x, alpha, dim)


def sparsemax(x: torch.Tensor, dim: int = -1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sparsemax: Euclidean projection onto the simplex; entmax with alpha = 2."""
    return entmax(x, 2.0, dim, mask)


def entmax15(x: torch.Tensor, dim: int = -1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """entmax with alpha = 1.5, the PLADIS default."""
    return entmax(x, 1.5, dim, mask)
