"""PLADIS attention, free of any model library:

    out = [(1 - scale) softmax(S) + scale * entmax_alpha(S / temperature)] V,     S = Q K^T * softmax_scale

S and the mixed map are computed in float32 (float64 for float64 inputs); the map meets V in one product.
Long query sequences are processed in chunks so the score matrix never exceeds a fixed size.

The map is computed by the backend chosen in `pladis.kernels` (eager, fused by torch.compile, or a registered
kernel): `_mixed` is the one dispatch point.
"""

from __future__ import annotations

import math

import torch

from .entmax import check_alpha, compute_dtype, exact_rows, masked_softmax, solve_rows
from .kernels import Fusable, registered_kernel

MAX_SCORE_ELEMENTS = 1 << 25  # score-matrix elements per chunk (128 MiB in float32)


def check_scale(scale: float) -> float:
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"PLADIS scale must be a number >= 0, got {scale!r}") from None
    if not value >= 0 or math.isinf(value):
        raise ValueError(
            f"PLADIS scale must be a finite number >= 0 (0 = the untouched model, 2 = the paper's default), got {scale!r}"
        )
    return value


def check_temperature(temperature: float) -> float:
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}") from None
    if not value > 0 or math.isinf(value):
        raise ValueError(f"temperature must be a finite number > 0 (1 = none), got {temperature!r}")
    return value


def mixed_rows(
    scores: torch.Tensor, scale: torch.Tensor, alpha: float, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - scale) softmax + scale entmax over the last dim, and a per-row flag 'entmax verified exact'."""
    dense = masked_softmax(scores)
    sparse, ok = solve_rows(scores if temperature == 1.0 else scores / temperature, alpha)
    return dense + scale * (sparse - dense), ok


_fused_mixed_rows = Fusable(mixed_rows)


def _mixed(scores: torch.Tensor, scale: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """The PLADIS map of fp32/fp64 scores through the chosen backend; unverified rows are redone exactly."""
    kernel = registered_kernel()
    if kernel is not None:
        return kernel(scores, scale, alpha, temperature)
    rows = scores.reshape(-1, scores.shape[-1])
    weights, ok = _fused_mixed_rows(rows, scale, alpha, temperature)
    bad = ~ok.squeeze(-1)
    if bool(bad.any()):
        dense = masked_softmax(rows[bad])
        sharp = rows[bad] if temperature == 1.0 else rows[bad] / temperature
        weights = weights.clone()
        weights[bad] = dense + scale * (exact_rows(sharp, alpha) - dense)
    return weights.view(scores.shape)


def pladis_weights(
    scores: torch.Tensor, scale: float = 2.0, alpha: float = 1.5, temperature: float = 1.0
) -> torch.Tensor:
    """The PLADIS attention map over the last dim of `scores` (masked entries at -inf), in float32/float64."""
    scale, alpha, temperature = check_scale(scale), check_alpha(alpha), check_temperature(temperature)
    scores = scores.to(compute_dtype(scores.dtype))
    return _mixed(scores, torch.tensor(scale, dtype=scores.dtype), alpha, temperature)


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, -math.inf)
    return scores + mask.to(scores.dtype)


def mask_rows(mask: torch.Tensor | None, first: int, last: int) -> torch.Tensor | None:
    """The rows [first, last) of an SDPA mask; a mask broadcast over queries (one row, or 1-D) stays as it is."""
    if mask is not None and mask.dim() >= 2 and mask.shape[-2] > 1:
        return mask[..., first:last, :]
    return mask


def query_chunks(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None,
    max_score_elements: int = MAX_SCORE_ELEMENTS,
    rows: tuple[int, int] | None = None,
):
    """Yield (query chunk, mask rows for it) over the query rows [start, stop) of `rows` (all by default), each
    chunk small enough that its score matrix holds at most `max_score_elements` elements."""
    start, stop = rows if rows is not None else (0, query.shape[-2])
    rows_per_query = max(1, math.prod(torch.broadcast_shapes(query.shape[:-2], key.shape[:-2]))) * key.shape[-2]
    chunk = max(1, max_score_elements // rows_per_query)
    for first in range(start, stop, chunk):
        last = min(first + chunk, stop)
        yield query[..., first:last, :], mask_rows(attn_mask, first, last)


def pladis_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scale: float = 2.0,
    alpha: float = 1.5,
    attn_mask: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    temperature: float = 1.0,
    max_score_elements: int = MAX_SCORE_ELEMENTS,
) -> torch.Tensor:
    """PLADIS attention with the calling convention of `F.scaled_dot_product_attention`.

    query (..., Lq, D), key (..., Lk, D), value (..., Lk, Dv); attn_mask broadcastable to (..., Lq, Lk), boolean
    (True = attend) or additive float. Returns (..., Lq, Dv) in value's dtype.
    """
    scale, alpha, temperature = check_scale(scale), check_alpha(alpha), check_temperature(temperature)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(query.shape[-1])
    dtype = compute_dtype(query.dtype)
    lam = torch.tensor(scale, dtype=dtype)  # a CPU scalar: no host-to-device copy (a stream sync) per call
    keys_t = key.to(dtype).transpose(-1, -2)
    outputs = []
    for q, mask in query_chunks(query, key, attn_mask, max_score_elements):
        scores = _apply_mask(torch.matmul(q.to(dtype), keys_t) * softmax_scale, mask)
        weights = _mixed(scores, lam, alpha, temperature)
        outputs.append(torch.matmul(weights.to(value.dtype), value))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-2)
