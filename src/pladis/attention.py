"""PLADIS attention, free of any model library:

    out = [(1 - scale) softmax(S) + scale * entmax_alpha(S / temperature)] V,     S = Q K^T * softmax_scale

S and the mixed map are computed in float32 (float64 for float64 inputs); the map meets V in one product.
Long query sequences are processed in chunks so the score matrix never exceeds a fixed size.

The mixed map is computed by a *backend*: "eager" (plain torch) or "compiled" (the same code fused by
torch.compile/inductor: one pass per row on CPU, Triton on GPU). `set_backend` picks one; "auto" uses the compiled
backend where a compiler works and the eager one otherwise. New kernels register with `register_backend`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from .entmax import (
    check_alpha,
    compute_dtype,
    entmax_rows,
    masked_softmax,
    probabilities,
    shifted_logits,
    solve_threshold,
)

logger = logging.getLogger(__name__)

MAX_SCORE_ELEMENTS = 1 << 25  # score-matrix elements per chunk (128 MiB in float32)


def check_scale(scale: float) -> float:
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"PLADIS scale must be a number >= 0, got {scale!r}") from None
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"PLADIS scale must be a finite number >= 0 (0 = the untouched model, 2 = the paper's default), got {scale!r}")
    return value


def check_temperature(temperature: float) -> float:
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}") from None
    if not value > 0 or math.isinf(value):
        raise ValueError(f"temperature must be a finite number > 0 (1 = none), got {temperature!r}")
    return value


def mixed_rows(scores: torch.Tensor, scale: torch.Tensor, alpha: float, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - scale) softmax + scale entmax over the last dim, and a per-row flag 'entmax verified exact'."""
    dense = masked_softmax(scores)
    sharp = scores if temperature == 1.0 else scores / temperature
    if alpha == 1.0:
        sparse, ok = masked_softmax(sharp), torch.ones_like(dense[..., :1], dtype=torch.bool)
    else:
        k = 1.0 / (alpha - 1.0)
        z = shifted_logits(sharp, alpha)
        tau, ok = solve_threshold(z, k)
        sparse = probabilities(z, tau, k)
    return dense + scale * (sparse - dense), ok


def _repair_rows(weights: torch.Tensor, ok: torch.Tensor, scores: torch.Tensor, scale: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    bad = ~ok.squeeze(-1)
    if bool(bad.any()):
        rows = scores[bad]
        dense = masked_softmax(rows)
        weights = weights.clone()
        weights[bad] = dense + scale * (entmax_rows(rows / temperature, alpha) - dense)
    return weights


def _eager_backend(scores, scale, alpha, temperature):
    return _repair_rows(*mixed_rows(scores, scale, alpha, temperature), scores, scale, alpha, temperature)


_compiled_mixed_rows: Callable | None = None


def _compiled_backend(scores, scale, alpha, temperature):
    global _compiled_mixed_rows
    if _compiled_mixed_rows is None:
        _compiled_mixed_rows = torch.compile(mixed_rows, dynamic=False)
    rows = scores.reshape(-1, scores.shape[-1])
    torch._dynamo.mark_dynamic(rows, 0)
    weights, ok = _compiled_mixed_rows(rows, scale, alpha, temperature)
    return _repair_rows(weights, ok, rows, scale, alpha, temperature).view_as(scores)


_BACKENDS: dict[str, Callable] = {"eager": _eager_backend, "compiled": _compiled_backend}
_backend_choice = "auto"
_compiled_failed: set[str] = set()


def register_backend(name: str, fn: Callable) -> None:
    """Add a kernel: fn(scores_fp32, scale_tensor, alpha, temperature) -> mixed map of the same shape."""
    _BACKENDS[name] = fn


def set_backend(name: str) -> None:
    """Choose how the PLADIS map is computed: 'auto', 'eager', 'compiled' or a registered name."""
    global _backend_choice
    if name != "auto" and name not in _BACKENDS:
        raise ValueError(f"unknown PLADIS backend {name!r}; choose from {['auto', *_BACKENDS]}")
    _backend_choice = name


def get_backend() -> str:
    return _backend_choice


def pladis_weights(scores: torch.Tensor, scale: float = 2.0, alpha: float = 1.5, temperature: float = 1.0) -> torch.Tensor:
    """The PLADIS attention map over the last dim of `scores` (masked entries at -inf), in float32/float64."""
    scale, alpha, temperature = check_scale(scale), check_alpha(alpha), check_temperature(temperature)
    scores = scores.to(compute_dtype(scores.dtype))
    return _mixed(scores, torch.tensor(scale, dtype=scores.dtype, device=scores.device), alpha, temperature)


def _mixed(scores: torch.Tensor, scale: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    name = _backend_choice
    if name == "auto":
        name = "eager" if scores.requires_grad or scores.device.type in _compiled_failed else "compiled"
    if name != "compiled":
        return _BACKENDS[name](scores, scale, alpha, temperature)
    try:
        return _compiled_backend(scores, scale, alpha, temperature)
    except Exception as err:  # no working compiler here: the eager backend computes the same map
        if _backend_choice == "compiled":
            raise
        _compiled_failed.add(scores.device.type)
        logger.warning("pladis: torch.compile unavailable on %s (%s); using the eager backend", scores.device.type, err)
        return _eager_backend(scores, scale, alpha, temperature)


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, -math.inf)
    return scores + mask.to(scores.dtype)


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
    lam = torch.tensor(scale, dtype=dtype, device=query.device)
    keys_t = key.to(dtype).transpose(-1, -2)
    rows_per_query = max(1, math.prod(torch.broadcast_shapes(query.shape[:-2], key.shape[:-2]))) * key.shape[-2]
    chunk = max(1, max_score_elements // rows_per_query)
    outputs = []
    for start in range(0, query.shape[-2], chunk):
        q = query[..., start : start + chunk, :]
        mask = attn_mask
        if mask is not None and mask.dim() >= 2 and mask.shape[-2] > 1:
            mask = mask[..., start : start + chunk, :]
        scores = _apply_mask(torch.matmul(q.to(dtype), keys_t) * softmax_scale, mask)
        weights = _mixed(scores, lam, alpha, temperature)
        outputs.append(torch.matmul(weights.to(value.dtype), value))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-2)
