"""PLADIS for joint (MMDiT) attention, free of any model library.

In a joint-attention transformer (FLUX, SD3/SD3.5, CogVideoX, ...) text and image tokens form one sequence and one
attention map covers both. PLADIS changes only what corresponds to cross-attention: how an *image* query spreads its
attention over the *text* keys. For each image-query row with scores S (over all keys), dense map P = softmax(S) and
text mass m = sum_{j in text} P_j:

    P'_text  = m * [(1 - lambda) softmax(S_text) + lambda * entmax_alpha(S_text / temperature)]
    P'_image = P_image                                  (image-key columns: unchanged)

with both maps over the text keys alone. The row keeps its mass m on text and 1 - m on image keys, so it still sums
to 1; text-query rows stay dense (they are the text stream's own self-/cross-attention). With alpha = 1 or
lambda = 0 the map is the stock one. This is the semantics of the public reference FLUX pipeline of PLADIS.

The output is computed as the stock attention plus a correction on the image rows that touches only the text block:

    out_img = SDPA(Q, K, V)_img + m * (mixed_text - softmax_text) V_text,     m = exp(lse_text - lse_all)

The text mass m comes from the fused attention kernel itself, so no (image x all keys) score matrix is ever built:
the only scores PLADIS computes are image queries x text keys, in fp32 chunks of bounded size. On CPU the flash
kernel that SDPA runs returns the row log-sum-exp lse_all with the very same output (one pass); elsewhere m is one
more SDPA call over the image rows, attending to a value that is 1 on text keys and 0 on image keys (about 3
significant digits in bfloat16). alpha = 1 (or scale 0) gives the stock output exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attention import (
    MAX_SCORE_ELEMENTS,
    _apply_mask,
    _mixed,
    check_scale,
    check_temperature,
    mask_rows,
    query_chunks,
    use_kernel,
)
from .entmax import check_alpha, compute_dtype, masked_softmax


def text_range(text: slice | tuple[int, int] | range, length: int) -> tuple[int, int]:
    """(start, stop) of the text tokens in a sequence of `length` tokens; `text` is a contiguous slice."""
    if isinstance(text, tuple):
        text = slice(*text)
    elif isinstance(text, range):
        text = slice(text.start, text.stop, text.step)
    if not isinstance(text, slice):
        raise TypeError(f"text must be a slice (or (start, stop) pair) of token positions, got {text!r}")
    start, stop, step = text.indices(length)
    if step != 1:
        raise ValueError(f"text tokens must be contiguous (step 1), got {text!r}")
    return start, max(start, stop)


def image_row_ranges(start: int, stop: int, length: int) -> list[tuple[int, int]]:
    """The query rows outside the text range [start, stop): at most two contiguous ranges."""
    return [(a, b) for a, b in ((0, start), (stop, length)) if b > a]


def joint_weights(
    scores: torch.Tensor,
    text: slice | tuple[int, int],
    scale: float = 2.0,
    alpha: float = 1.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The full PLADIS joint-attention map (..., L, L) from joint scores (masked entries at -inf), fp32/fp64.

    For inspection and tests; `pladis_joint_attention` computes the same attention without building it.
    """
    scale, alpha, temperature = check_scale(scale), check_alpha(alpha), check_temperature(temperature)
    scores = scores.to(compute_dtype(scores.dtype))
    start, stop = text_range(text, scores.shape[-1])
    dense = masked_softmax(scores)
    weights = dense.clone()
    if stop == start:
        return weights
    lam = torch.tensor(scale, dtype=scores.dtype)  # CPU scalar: no per-call host-to-device copy
    for a, b in image_row_ranges(start, stop, scores.shape[-2]):
        mass = dense[..., a:b, start:stop].sum(-1, keepdim=True)
        weights[..., a:b, start:stop] = mass * _mixed(scores[..., a:b, start:stop], lam, alpha, temperature)
    return weights


def pladis_joint_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    text: slice | tuple[int, int],
    scale: float = 2.0,
    alpha: float = 1.5,
    attn_mask: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    temperature: float = 1.0,
    max_score_elements: int = MAX_SCORE_ELEMENTS,
) -> torch.Tensor:
    """PLADIS joint attention with the calling convention of `F.scaled_dot_product_attention`.

    query, key (..., L, D) and value (..., L, Dv) over one joint sequence of L tokens whose positions `text`
    (a contiguous slice, e.g. slice(0, 512) for FLUX, slice(L - 333, L) for SD3) are the text tokens; every other
    position is an image (or video) token. attn_mask: boolean (True = attend) or additive, broadcastable to
    (..., L, L). Image-query rows get the PLADIS text block described in the module docstring; text-query rows and
    image-key columns are the stock attention. Returns (..., L, Dv) in value's dtype.
    """
    scale, alpha, temperature = check_scale(scale), check_alpha(alpha), check_temperature(temperature)
    length = key.shape[-2]
    if query.shape[-2] != length:
        raise ValueError(
            f"joint attention needs one sequence for queries and keys, got {query.shape[-2]} queries and {length} keys"
        )
    start, stop = text_range(text, length)
    if scale == 0 or stop == start or (start, stop) == (0, length):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, scale=softmax_scale)
    out, lse = stock_attention(query, key, value, attn_mask, softmax_scale)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(query.shape[-1])
    dtype = compute_dtype(query.dtype)
    lam = torch.tensor(scale, dtype=dtype)  # CPU scalar: no per-call host-to-device copy
    text_mask = attn_mask[..., start:stop] if attn_mask is not None and attn_mask.shape[-1] > 1 else attn_mask
    keys_text = key[..., start:stop, :].to(dtype).transpose(-1, -2)
    value_text = value[..., start:stop, :].to(dtype)
    result = out.to(dtype, copy=True)  # text-query rows stay the stock output (exact round trip to out's dtype)
    if use_kernel(query, key, value, attn_mask):
        return _joint_by_kernel(
            query, key, value, result, (start, stop), scale, alpha, attn_mask, text_mask, softmax_scale, temperature
        ).to(out.dtype)
    for a, b in image_row_ranges(start, stop, length):
        mass = (
            None
            if lse is not None
            else text_mass(query[..., a:b, :], key, (start, stop), attn_mask, a, b, softmax_scale)
        )
        row = a
        for q, mask in query_chunks(query, keys_text.transpose(-1, -2), text_mask, max_score_elements, rows=(a, b)):
            n = q.shape[-2]
            text_scores = _apply_mask(torch.matmul(q.to(dtype) * softmax_scale, keys_text), mask)
            if lse is not None:  # m = exp(lse_text - lse_all), lse_all from the fused kernel
                lse_all = lse[..., row : row + n, :]
                m = torch.exp(torch.logsumexp(text_scores, -1, keepdim=True) - lse_all)
                m = torch.where(torch.isfinite(lse_all), m, torch.zeros_like(m))
            elif mass is not None:
                m = mass[..., row - a : row - a + n, :]
            delta = _mixed(text_scores, lam, alpha, temperature) - masked_softmax(text_scores)
            result[..., row : row + n, :] += m * torch.matmul(delta, value_text)
            row += n
    return result.to(out.dtype)


def _joint_by_kernel(query, key, value, result, text, scale, alpha, attn_mask, text_mask, softmax_scale, temperature):
    """The image rows' correction m * lambda (entmax - softmax)_text V_text by the fused Triton kernel (no score
    matrix in memory); m, the dense text mass, by one more fused SDPA call."""
    from .triton_attention import pladis_attention_triton

    start, stop = text
    length = key.shape[-2]
    for a, b in image_row_ranges(start, stop, length):
        mass = text_mass(query[..., a:b, :], key, text, attn_mask, a, b, softmax_scale)
        delta = pladis_attention_triton(
            query[..., a:b, :],
            key[..., start:stop, :],
            value[..., start:stop, :],
            scale=scale,
            alpha=alpha,
            attn_mask=mask_rows(text_mask, a, b),
            softmax_scale=softmax_scale,
            temperature=temperature,
            delta_only=True,
        )
        result[..., a:b, :] += mass * delta.to(result.dtype)
    return result


def stock_attention(query, key, value, attn_mask, softmax_scale) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`F.scaled_dot_product_attention`'s output and, where the fused kernel hands it out, the fp32 log-sum-exp of
    each row's scores, (..., L, 1); None elsewhere.

    On CPU the flash kernel that SDPA itself runs returns both in one pass (the same output, bit for bit).
    """
    if query.device.type == "cpu" and query.dim() == 4 and not (torch.is_grad_enabled() and query.requires_grad):
        mask = attn_mask
        if mask is not None and mask.dtype == torch.bool:  # as SDPA itself turns a boolean mask into a bias
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=mask.device).masked_fill(~mask, -math.inf)
        try:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query, key, value, 0.0, False, attn_mask=mask, scale=softmax_scale
            )
            return out, lse.unsqueeze(-1)
        except (RuntimeError, TypeError, AttributeError, NotImplementedError):
            pass  # a layout or dtype this kernel does not take: SDPA, and m by a second call
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, scale=softmax_scale), None


def text_mass(query, key, text: tuple[int, int], attn_mask, first: int, last: int, softmax_scale) -> torch.Tensor:
    """The dense attention mass that query rows [first, last) put on the text keys, (..., rows, 1), computed by
    the fused SDPA kernel: attention to a value that is 1 on text keys and 0 elsewhere (as wide as the head, so
    that the fast kernels take it)."""
    indicator = torch.zeros(*key.shape[:-1], query.shape[-1], dtype=query.dtype, device=query.device)
    indicator[..., text[0] : text[1], 0] = 1
    mask = mask_rows(attn_mask, first, last)
    mass = F.scaled_dot_product_attention(query, key, indicator, attn_mask=mask, scale=softmax_scale)
    return mass[..., :1].to(compute_dtype(query.dtype))
