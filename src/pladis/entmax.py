"""The alpha-entmax family, exact and sort-free: softmax (alpha=1), entmax-1.5, sparsemax (alpha=2) and between.

    entmax_alpha(x)_i = [(alpha - 1) x_i - tau]_+ ** (1 / (alpha - 1)),   tau such that the row sums to 1.

The solve works per row with a fixed number of passes, no sorting, no host round trip and no data-dependent branch
(so it runs under `torch.compile(fullgraph=True)`, CUDA graphs and without a single device-to-host sync):

* Variables. With a = alpha - 1, k = 1/a, y = x - max(x) <= 0 and tau = a t - 1 (t >= 0), each entry is
  d_i = 1 + a (y_i - t), p_i = (d_i)_+^k. Integer k: powers as products. Other k: d^(k-1) = 2^((k-1) log2 d), with
  the rounding error of fl(1 + a (y - t)) added back into log2 d for k > 4 (alpha -> 1 needs w's precision, as log1p
  would give, at a lower cost); d^k = d^(k-1) d.
* Newton on the k-norm. h(t) = ||(d)_+||_k - 1 is convex and decreasing in t (a monotone norm of convex functions
  of t). Hence (a) from any t with h'(t) < 0, one Newton step lands at or below the root (the tangent lies under h),
  and (b) from below, Newton steps rise monotonically towards the root and never overshoot. The k-norm step is at
  least the step of Newton on F(t) = sum d_i^k - 1 (mean value theorem on M^(1/k), M >= 1), so it inherits F's
  per-entry error bound: an entry well inside the support contributes O(e^2 d^(k-2)) to the next error e', one of
  the support within e of its boundary at most (1 - 1/k) of its share of the slope times e, one leaving the
  support at most its share times e. So the error contracts quadratically except through entries near the
  boundary (the slow case: linear on their share of the slope), and those m entries carry ~ m e^k of probability
  mass: the output needs e ~ (1e-7 / m)^(1/k) there, not e ~ 1e-7. On a fixed support with equal entries h is linear (one step).
* Start. tau_0 = max(-1, mean(z) - n^(-1/k)) is below the root (power-mean inequality; z = a y over the n finite
  entries).
* Cheap steps (torch path, non-integer k). log2 and exp2 cost about as much as a softmax each pass, so the first
  steps use a stand-in: d^k = s^(qk) with s = d^(1/q) (square roots; q = 4 for k < 2, 2 for 2 < k < 4), as the
  degree-6 polynomial interpolating it at Chebyshev nodes of [0, 1], coefficients computed from k at run time;
  d^(k-1) = that / d. qk lies in (4, 8), where that polynomial is within 1e-5 of the power for qk < 6 and 6e-4 as
  qk -> 8, so these steps come close to the root of a slightly different function; the exact steps then finish from there (by (a) above, the
  first of them lands at or below the root wherever the cheap steps left t, and a cap keeps t under the root's
  upper bound (1 - n^(-1/k)) / a, where the top entry is still in the support). k > 4 (alpha < 1.25) takes no cheap
  step (s^(qk) would need q growing with k). The Triton kernel, where transcendentals are cheap, runs exact steps
  only (`steps_for`).
* Output. The last evaluation (at t_s, after s steps) yields d^(k-1) and d^k together with the next Newton step
  delta; the output takes that step to first order on the powers themselves, p = (d^k - k delta d^(k-1))_+,
  renormalised: the error of a full extra step (O(delta^2 d^(k-2)) inside the support, O(delta^k) at its boundary)
  without a further evaluation. For alpha = 2 and 1.5 the last step is the closed form on the found support instead.
* Pass counts (`STEPS`, `ANY_STEPS`, `ANY_SPLIT`). The bound above fixes the shape of the worst rows but not a usable constant
  (with m entries at the boundary and k -> 1 the linear rate is the only guarantee), so the counts are the least
  that make the adversarial family of tests/test_entmax.py exact, float32 within 1e-6 and float64 within 1e-12
  against a float64 bisection: every entry but one to three tied exactly at or within 1e-7 .. 0.1 of the boundary
  (the extremal case of the bound), ties elsewhere, near-uniform rows, ranges from 1e-3 to 1e4, heavy tails,
  geometric, quadratic and log decays, -inf entries, 1 to 1024 keys at every bucket edge, alpha from 1.001 to 1.999.
  Not a proof for every input: rows longer than 1024 keys are not covered. float32 has its own floor there: every
  d carries a rounding error ~2^-24 whatever the solver, and m entries tied near the boundary add theirs up.

alpha is classified in Python into a kind: softmax, an integer k in {1, 2, 3, 4} (alpha 2, 1.5, 4/3, 1.25: powers as
products) or any other alpha (powers through exp2/log2, alpha as a tensor argument). Each kind has its own compiled
graph with dynamic shapes, so an alpha sweep, a new key length or a new dtype never hits torch.compile's recompile
limit. Inputs of any float dtype are computed in float32 (float64 stays float64).

Masks: entries at -inf (or where a boolean `mask` is False) get exactly 0; a fully masked row returns zeros.
"""

from __future__ import annotations

import math

import torch

from .kernels import Fusable

SOFTMAX = 0  # kind of alpha = 1
ANY = -1  # kind of a non-integer k = 1 / (alpha - 1) < 2 (alpha > 1.5); -2: 2 < k < 4; -3: k > 4 (alpha < 1.25)
STEPS = {1: 7, 2: 5, 3: 5, 4: 5}  # Newton steps per integer kind for rows of <= 128 keys
LONG_ROW, LONG_ROW_STEPS = 128, 2  # longer rows take 2 more steps (tests/test_entmax.py: hard rows up to 1024)
# Newton steps of the non-integer kinds before the corrected output (module docstring), per bucket of row length:
# rows of <= 96 keys (text cross-attention: 77), <= 512 keys (PixArt, FLUX, the Triton kernel's limit), longer.
ANY_ROW_BUCKETS = (96, 512)
ANY_STEPS = {-1: (4, 7, 10), -2: (3, 4, 4), -3: (2, 2, 4)}  # exact steps only (the Triton kernel)
# the torch path: (cheap, exact) steps, cheap ones on a polynomial stand-in for the powers (module docstring)
ANY_SPLIT = {-1: ((2, 2), (3, 4), (3, 6)), -2: ((2, 1), (2, 2), (2, 2)), -3: ((0, 2), (0, 2), (0, 4))}
STEPS_FLOAT64 = 3  # extra steps in float64, whose target precision is 1e-15 rather than 1e-7
_INV_LN2 = 1.0 / math.log(2.0)


def check_alpha(alpha: float) -> float:
    """Return alpha as a float, or raise ValueError if it is outside [1, 2] or NaN."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number in [1, 2], got {alpha!r}") from None
    if not 1.0 <= value <= 2.0:  # also rejects NaN
        raise ValueError(f"alpha must be in [1, 2] (1 = softmax, 1.5 = entmax-1.5, 2 = sparsemax), got {alpha!r}")
    return value


def alpha_kind(alpha: float) -> int:
    """SOFTMAX, an integer k = 1 / (alpha - 1) in 1..4 (powers as products), or ANY."""
    if alpha == 1.0:
        return SOFTMAX
    k = 1.0 / (alpha - 1.0)
    nearest = round(k)
    if 1 <= nearest <= 4 and abs(k - nearest) < 1e-9:
        return nearest
    return ANY if k < 2 else -2 if k < 4 else -3  # fewer Newton steps suffice as k grows (tests/test_entmax.py)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def masked_softmax(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax whose fully masked (all -inf) rows are zeros instead of NaN."""
    top = scores.amax(dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(scores - top)
    total = e.sum(dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def _powers(y: torch.Tensor, t: torch.Tensor, a: torch.Tensor, kind: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(d^(k-1), d^k) for d = (1 + w)_+, w = a (y - t) <= 0 (w = -inf on masked entries)."""
    k = 1.0 / a
    if kind > 0:
        # Integer k <= 4: d = a ((y + 1/a) - t). Near the support's boundary both subtractions are exact (Sterbenz),
        # so d keeps its relative precision where 1 + w would lose up to an ulp of 1 per entry, which hundreds of
        # entries near the boundary add up; elsewhere the rounding of y + 1/a moves d^k by at most k 2^-24.
        d = (a * ((y + k) - t)).clamp_min(0)
        if kind == 1:
            return (d > 0).to(d.dtype), d
        lower = d
        for _ in range(kind - 2):
            lower = lower * d
        return lower, lower * d
    w = a * (y - t)
    d = (1 + w).clamp_min(0)
    if kind < 0:  # d^(k-1) = 2^((k-1) log2 d): 0 outside the support (log2 0 = -inf, k > 1)
        log_d = torch.log2(d)
        if kind == -3:
            # k > 4: log2 d gets the rounding error of d = fl(1 + w), w - (d - 1) (exact), so that d^(k-1) keeps
            # w's precision as alpha -> 1 (k large), like log1p would, at a lower cost. For k < 4 that error moves
            # a probability by at most k 2^-24 < 2.4e-7 and is not worth a division.
            log_d = log_d + torch.where(d > 0, (w - (d - 1)) / d, 0.0) * _INV_LN2
        lower = torch.exp2(log_d * (k - 1))
        return lower, lower * d
    raise ValueError(f"no powers for kind {kind} (softmax has none)")


def _shifted(x: torch.Tensor, inv_temperature: torch.Tensor) -> torch.Tensor:
    """y = (x - max x) / temperature <= 0, the row maximum at 0 (-inf stays -inf; a fully masked row all -inf)."""
    top = x.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return (x - top) * inv_temperature


def _newton_delta(mass: torch.Tensor, slope: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Newton step on ||d||_k - 1 in units of d: (M - M^(1 - 1/k)) / sum d^(k-1), M = sum d^k; 0 on empty rows."""
    tiny = torch.finfo(mass.dtype).tiny
    norm_part = torch.exp2((1 - 1 / k) * torch.log2(mass.clamp_min(tiny)))
    return torch.where(slope > 0, (mass - norm_part) / slope.clamp_min(tiny), 0.0)


_CHEAP_DEGREE = 6
_CHEAP_NODES = (1 + torch.cos(math.pi * (torch.arange(_CHEAP_DEGREE + 1, dtype=torch.float64) + 0.5) / 7)) / 2
_CHEAP_FIT = torch.linalg.inv(_CHEAP_NODES[:, None] ** torch.arange(_CHEAP_DEGREE + 1, dtype=torch.float64))


_cheap_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _cheap_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The interpolation tables on `device`, copied there once (no host-to-device copy per call)."""
    tables = _cheap_cache.get(device)
    if tables is None:
        tables = _cheap_cache[device] = (_CHEAP_FIT.to(device), _CHEAP_NODES.to(device))
    return tables


def _cheap_powers(w: torch.Tensor, k: torch.Tensor, kind: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(d^(k-1), d^k) approximately, for the first steps: d^k = s^(qk), s = d^(1/q) (q = 4 for k < 2, else 2), as
    the polynomial interpolating it at Chebyshev nodes of [0, 1] (coefficients from k at run time: no recompile
    per alpha). qk is in (4, 8): smooth enough for a degree-6 polynomial."""
    q = 4 if kind == ANY else 2
    fit, nodes = _cheap_tables(w.device)
    coef = (fit @ nodes ** (q * k.to(torch.float64))).to(w.dtype)
    d = (1 + w).clamp_min(0)
    s = d.sqrt().sqrt() if q == 4 else d.sqrt()
    power = coef[_CHEAP_DEGREE]
    for i in range(_CHEAP_DEGREE - 1, -1, -1):
        power = power * s + coef[i]
    power = torch.where(d > 0, power.clamp_min(0), 0.0)
    return torch.where(d > 0, power / d.clamp_min(torch.finfo(d.dtype).tiny), 0.0), power


def solve(y: torch.Tensor, a: torch.Tensor, kind: int, steps: int, cheap: int = 0) -> torch.Tensor:
    """t per row (tau = a t - 1) for shifted rows y, by `cheap` approximate and `steps` exact Newton steps on the
    k-norm (module docstring)."""
    k = 1.0 / a
    finite = torch.isfinite(y)
    n = finite.to(y.dtype).sum(-1, keepdim=True).clamp_min(1)
    mean = torch.where(finite, y, torch.zeros_like(y)).sum(-1, keepdim=True) / n
    t = (mean - torch.expm1(-a * torch.log(n)) / a).clamp_min(0)  # tau_0 = max(-1, mean(z) - n^(-1/k))
    top = -torch.expm1(-a * torch.log(n)) / a  # the root's upper bound: the top entry has d >= n^(-1/k)
    for _ in range(cheap):
        lower, power = _cheap_powers(a * (y - t), k, kind)
        delta = _newton_delta(power.sum(-1, keepdim=True), lower.sum(-1, keepdim=True), k)
        t = torch.minimum(t + delta / a, top)
    for step in range(steps):
        lower, power = _powers(y, t, a, kind)
        mass, slope = power.sum(-1, keepdim=True), lower.sum(-1, keepdim=True)
        if kind == 2 and step == steps - 1:  # closed form on the support: sum (d - delta)^2 = 1
            size = (lower > 0).to(y.dtype).sum(-1, keepdim=True)
            root = (slope * slope - size * (mass - 1)).clamp_min(0).sqrt()
            delta = (mass - 1) / (slope + root).clamp_min(torch.finfo(y.dtype).tiny)
        elif kind == 1:  # exact on the support (h is linear there)
            delta = (mass - 1) / slope.clamp_min(1)
        elif kind == 2:
            delta = torch.where(slope > 0, (mass - mass.sqrt()) / slope.clamp_min(torch.finfo(y.dtype).tiny), 0.0)
        else:
            delta = _newton_delta(mass, slope, k)
        if kind > 0 and step > 0:  # after the first step (at or below the root from any start) t only rises: a
            delta = delta.clamp_min(0)  # fall is rounding of the mass, which would swing t across the root and back
        t = t + delta / a
    return t


def probabilities(y: torch.Tensor, t: torch.Tensor, a: torch.Tensor, kind: int) -> torch.Tensor:
    k = 1.0 / a
    lower, p = _powers(y, t, a, kind)
    if kind < 0:  # one more Newton step, taken to first order on the powers themselves (module docstring)
        delta = _newton_delta(p.sum(-1, keepdim=True), lower.sum(-1, keepdim=True), k)
        p = (p - (k * delta) * lower).clamp_min(0)
    total = p.sum(-1, keepdim=True)
    return p / torch.where(total > 0, total, torch.ones_like(total))


def _bucket(n: int) -> int:
    return sum(n > bound for bound in ANY_ROW_BUCKETS)


def steps_for(kind: int, dtype: torch.dtype, n: int) -> int:
    """Exact Newton steps for rows of n entries, without cheap steps (the Triton kernel's count). Under
    torch.compile, the row-length buckets are shape guards: at most two graphs per integer kind and three per other
    kind, per dtype."""
    extra = STEPS_FLOAT64 if dtype == torch.float64 else 0
    if kind < 0:
        return ANY_STEPS[kind][_bucket(n)] + extra
    return STEPS[kind] + (LONG_ROW_STEPS if n > LONG_ROW else 0) + extra


def split_for(kind: int, dtype: torch.dtype, n: int) -> tuple[int, int]:
    """(cheap, exact) Newton steps of the torch path for rows of n entries."""
    if kind >= 0:
        return 0, steps_for(kind, dtype, n)
    cheap, exact = ANY_SPLIT[kind][_bucket(n)]
    return cheap, exact + (STEPS_FLOAT64 if dtype == torch.float64 else 0)


def entmax_map(x: torch.Tensor, a: torch.Tensor, inv_temperature: torch.Tensor, kind: int) -> torch.Tensor:
    """entmax_{1+a}(x / temperature) over the last dim; a and inv_temperature are 0-dim tensors (no recompile per
    value), kind = alpha_kind(1 + a). Pure tensor code, fusable."""
    y = _shifted(x, inv_temperature)
    if kind == SOFTMAX:
        return masked_softmax(y)
    cheap, exact = split_for(kind, x.dtype, x.shape[-1])
    return probabilities(y, solve(y, a, kind, exact, cheap), a, kind)


def mixed_map(
    x: torch.Tensor, scale: torch.Tensor, a: torch.Tensor, inv_temperature: torch.Tensor, kind: int
) -> torch.Tensor:
    """The PLADIS map (1 - scale) softmax(x) + scale entmax_{1+a}(x / temperature) over the last dim."""
    dense = masked_softmax(x)
    return dense + scale * (entmax_map(x, a, inv_temperature, kind) - dense)


_entmax_graphs = Fusable(entmax_map)


def scalar(value: float, dtype: torch.dtype) -> torch.Tensor:
    """A 0-dim CPU tensor: a graph input (no recompile per value) that needs no host-to-device copy."""
    return torch.tensor(value, dtype=dtype)


def entmax_rows(x: torch.Tensor, alpha: float, temperature: float = 1.0) -> torch.Tensor:
    """entmax over the last dim of x in x's dtype (float32 or float64), no autograd, every row exact."""
    kind = alpha_kind(alpha)
    a, inv_t = scalar(alpha - 1.0, x.dtype), scalar(1.0 / temperature, x.dtype)
    rows = x.reshape(-1, x.shape[-1])
    return _entmax_graphs(kind, rows, a, inv_t).view(x.shape)


def entmax_backward(p: torch.Tensor, grad: torch.Tensor, alpha: float, dim: int) -> torch.Tensor:
    """Vector-Jacobian product of entmax: J = diag(s) - s s^T / sum(s), s = p^(2 - alpha) on the support.

    Written in differentiable torch ops of p, so it has a (double) backward itself; p^(2 - alpha) is taken only on
    the support (p > 0), where it is smooth, and is 0 elsewhere.
    """
    support = p > 0
    if alpha == 1.0:
        s = p
    elif alpha == 2.0:
        s = support.to(p.dtype)
    else:
        s = torch.where(support, torch.where(support, p, torch.ones_like(p)).pow(2.0 - alpha), torch.zeros_like(p))
    sg = s * grad
    total = s.sum(dim, keepdim=True)
    return sg - s * (sg.sum(dim, keepdim=True) / torch.where(total > 0, total, torch.ones_like(total)))


class _Entmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float, dim: int) -> torch.Tensor:
        xc = x.detach().to(compute_dtype(x.dtype)).movedim(dim, -1).contiguous()
        p = entmax_rows(xc, alpha).movedim(-1, dim)
        out = p.to(x.dtype)
        ctx.save_for_backward(out)  # the output: its graph (for a double backward) is this function's
        ctx.alpha, ctx.dim = alpha, dim
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (p,) = ctx.saved_tensors
        pc = p.to(compute_dtype(p.dtype))  # torch ops: under create_graph they are recorded (double backward)
        return entmax_backward(pc, grad.to(pc.dtype), ctx.alpha, ctx.dim).to(grad.dtype), None, None


def entmax(x: torch.Tensor, alpha: float = 1.5, dim: int = -1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """alpha-entmax of `x` along `dim`, exact for every alpha in [1, 2]; differentiable (twice).

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
