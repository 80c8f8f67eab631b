"""PLADIS attention, free of any model library:

    out = [(1 - scale) softmax(S) + scale * entmax_alpha(S / temperature)] V,     S = Q K^T * softmax_scale

S and the mixed map are computed in float32 (float64 for float64 inputs); the map meets V in one product.
Long query sequences are processed in chunks so the score matrix never exceeds a fixed size.

Where the backend chosen in `pladis.kernels` is the Triton kernel (the default on CUDA), the whole attention runs
fused in `pladis.triton_attention`; otherwise the map is computed by the torch path (eager, fused by torch.compile
with one graph per alpha kind, or a registered kernel): `_mixed` is its one dispatch point. Neither path syncs with
the host, and alpha, temperature and shapes never trigger a recompile.
"""

from __future__ import annotations

import math

import torch

from .entmax import alpha_kind, check_alpha, compute_dtype, mixed_map, scalar
from .kernels import Fusable, registered_kernel, wants_triton

MAX_SCORE_ELEMENTS = 1 << 25  # score-matrix elements per chunk (128 MiB in float32)


MAX_SCALE = 1e3  # map entries reach scale in magnitude: beyond, fp16 outputs overflow for |value| > 65
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-6, 1e6  # scores / temperature stay finite in float32 for |scores| < 3e32


def check_scale(scale: float) -> float:
    """scale (lambda) in [0, 1000]: the map (1 - lambda) softmax + lambda entmax has entries up to lambda in size,
    so larger values overflow half-precision outputs (and amplify float32 rounding past visible levels)."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"PLADIS scale must be a number in [0, {MAX_SCALE:g}], got {scale!r}") from None
    if not 0 <= value <= MAX_SCALE:  # also rejects NaN and inf
        raise ValueError(
            f"PLADIS scale must be in [0, {MAX_SCALE:g}] (0 = the untouched model, 2 = the paper's default), got {scale!r}"
        )
    return value


def check_temperature(temperature: float) -> float:
    """temperature in [1e-6, 1e6]: 1 / temperature and scores / temperature stay finite in float32 maths."""
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(
            f"temperature must be a number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got {temperature!r}"
        ) from None
    if not MIN_TEMPERATURE <= value <= MAX_TEMPERATURE:
        raise ValueError(
            f"temperature must be in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}] (1 = none), got {temperature!r}"
        )
    return value


def _mixed_rows(rows, scale, a, inv_temperature, kind):
    return mixed_map(rows, scale, a, inv_temperature, kind)


_mixed_graphs = Fusable(_mixed_rows)


def mixed_rows(scores: torch.Tensor, scale: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """(1 - scale) softmax + scale entmax_alpha(scores / temperature) over the last dim, eagerly (a reference)."""
    dtype = scores.dtype
    return mixed_map(scores, scale, scalar(alpha - 1.0, dtype), scalar(1.0 / temperature, dtype), alpha_kind(alpha))


def _mixed(scores: torch.Tensor, scale: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """The PLADIS map of fp32/fp64 scores through the chosen torch-path backend: no host sync, no recompile per
    alpha, temperature or shape (one graph per alpha kind, scalars as tensor inputs)."""
    kernel = registered_kernel()
    if kernel is not None:
        return kernel(scores, scale, alpha, temperature)
    dtype = scores.dtype
    rows = scores.reshape(-1, scores.shape[-1])
    out = _mixed_graphs(
        alpha_kind(alpha), rows, scale.to(dtype), scalar(alpha - 1.0, dtype), scalar(1.0 / temperature, dtype)
    )
    return out.view(scores.shape)


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


def use_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None) -> bool:
    """Whether the fused Triton kernel computes this call (backend choice, no gradients needed, shapes it takes)."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, key, value, attn_mask)
    )
    if not wants_triton(query.device, needs_grad):
        return False
    from .triton_attention import supports

    return supports(query, key, value)


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
    if use_kernel(query, key, value, attn_mask):
        from .triton_attention import pladis_attention_triton

        return pladis_attention_triton(
            query,
            key,
            value,
            scale=scale,
            alpha=alpha,
            attn_mask=attn_mask,
            softmax_scale=softmax_scale,
            temperature=temperature,
        )
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
