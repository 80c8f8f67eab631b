"""PLADIS cross-attention as one fused Triton kernel.

Per (batch, head, tile of BLOCK_M queries) the kernel computes S = Q K^T * softmax_scale in float32 from fp16, bf16
or fp32 inputs, applies the mask, then in registers: the dense softmax of each row, its alpha-entmax of
S / temperature (the fixed-pass Newton solve of `pladis.entmax` with exact steps only, `steps_for`: no cheap
polynomial steps, transcendentals being cheap on a GPU; alpha and temperature as runtime arguments: no recompile
per value), the PLADIS map (1 - lambda) softmax + lambda entmax, and its product with V. Only the
output is written: S and the map never reach global memory, and nothing returns to the host.

All keys of a row sit in one tile, so the kernel takes at most MAX_KEYS (512) keys, which covers text
cross-attention (77 for SD1.5/SDXL, 120-300 for PixArt, 256-512 for FLUX/SD3 text). Longer key sequences, float64
inputs and inputs that need gradients run the torch path (`pladis.attention`), which is exact and differentiable.

`delta_only=True` writes lambda (entmax - softmax) V instead (float32): the joint-attention correction of
`pladis.joint` for image-query rows against the text keys.
"""

from __future__ import annotations

import math

import torch

from .entmax import SOFTMAX, alpha_kind, steps_for

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is absent
    triton = None
    tl = None

MAX_KEYS = 512
NO_MASK, BOOL_MASK, ADDITIVE_MASK = 0, 1, 2


def supports(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether the kernel takes these inputs (else the torch path runs)."""
    return (
        triton is not None
        and key.shape[-2] <= MAX_KEYS
        and query.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and query.dtype == key.dtype == value.dtype
        and query.shape[-1] <= 256
        and value.shape[-1] <= 256
        and query.dim() >= 3
    )


if triton is not None:

    @triton.jit
    def _pladis_kernel(
        Q, K, V, M, Out,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_mb, stride_mh, stride_mm, stride_mn,
        stride_ob, stride_oh, stride_om, stride_od,
        heads, n_queries, n_keys, head_dim, value_dim,
        softmax_scale, lam, a, inv_temperature,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        KIND: tl.constexpr, STEPS_: tl.constexpr, MASK_KIND: tl.constexpr, DELTA_ONLY: tl.constexpr,
        FP32_DOT: tl.constexpr,
    ):  # fmt: skip
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // heads
        h = bh % heads
        rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        dims = tl.arange(0, BLOCK_D)
        vdims = tl.arange(0, BLOCK_DV)
        row_ok = rows < n_queries
        col_ok = cols < n_keys

        q = tl.load(
            Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + dims[None, :] * stride_qd,
            mask=row_ok[:, None] & (dims[None, :] < head_dim),
            other=0.0,
        )
        k = tl.load(
            K + b * stride_kb + h * stride_kh + cols[None, :] * stride_kn + dims[:, None] * stride_kd,
            mask=col_ok[None, :] & (dims[:, None] < head_dim),
            other=0.0,
        )
        if FP32_DOT:
            s = tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision="ieee")
        else:
            s = tl.dot(q, k)
        s = s * softmax_scale
        if MASK_KIND != 0:
            m_ptrs = M + b * stride_mb + h * stride_mh + rows[:, None] * stride_mm + cols[None, :] * stride_mn
            m_ok = row_ok[:, None] & col_ok[None, :]
            if MASK_KIND == 1:
                keep = tl.load(m_ptrs, mask=m_ok, other=0)
                s = tl.where(keep != 0, s, float("-inf"))
            else:
                s = s + tl.load(m_ptrs, mask=m_ok, other=0.0).to(tl.float32)
        s = tl.where(col_ok[None, :], s, float("-inf"))

        # dense softmax; a fully masked row is all zeros
        top = tl.max(s, 1)
        top = tl.where(top == float("-inf"), 0.0, top)
        e = tl.exp(s - top[:, None])
        total = tl.sum(e, 1)
        dense = e / tl.where(total > 0, total, 1.0)[:, None]

        # entmax of s / temperature: y = (s - max) / temperature, tau = a t - 1, d = (1 + a (y - t))_+
        y = (s - top[:, None]) * inv_temperature
        if KIND == 0:
            ey = tl.exp(y)
            ey_total = tl.sum(ey, 1)
            sparse = ey / tl.where(ey_total > 0, ey_total, 1.0)[:, None]
        else:
            finite = y > float("-inf")
            n = tl.sum(finite.to(tl.float32), 1)
            n = tl.maximum(n, 1.0)
            mean = tl.sum(tl.where(finite, y, 0.0), 1) / n
            t = tl.maximum(mean + (1.0 - tl.exp(-a * tl.log(n))) / a, 0.0)
            for step in tl.static_range(STEPS_):
                d = tl.maximum(1.0 + a * (y - t[:, None]), 0.0)
                if KIND == 1:
                    lower = (d > 0).to(tl.float32)
                elif KIND == 2:
                    lower = d
                elif KIND == 3:
                    lower = d * d
                elif KIND == 4:
                    lower = d * d * d
                else:
                    lower = tl.where(d > 0, tl.exp2(tl.log2(tl.maximum(d, 1e-38)) * (1.0 / a - 1.0)), 0.0)
                mass = tl.sum(lower * d, 1)
                slope = tl.sum(lower, 1)
                if KIND == 1:
                    delta = (mass - 1.0) / tl.maximum(slope, 1.0)
                elif KIND == 2 and step == STEPS_ - 1:
                    size = tl.sum((d > 0).to(tl.float32), 1)
                    root = tl.sqrt(tl.maximum(slope * slope - size * (mass - 1.0), 0.0))
                    delta = tl.where(size > 0, (mass - 1.0) / tl.maximum(slope + root, 1e-38), 0.0)
                else:
                    if KIND == 2:
                        norm_part = tl.sqrt(mass)
                    else:
                        norm_part = tl.exp2(tl.log2(tl.maximum(mass, 1e-38)) * (1.0 - a))
                    delta = tl.where(slope > 0, (mass - norm_part) / tl.maximum(slope, 1e-38), 0.0)
                t = t + delta / a
            d = tl.maximum(1.0 + a * (y - t[:, None]), 0.0)
            if KIND == 1:
                p = d
            elif KIND == 2:
                p = d * d
            elif KIND == 3:
                p = d * d * d
            elif KIND == 4:
                p = d * d * d * d
            else:  # one more Newton step, to first order on the powers (as `pladis.entmax.probabilities`)
                lower = tl.where(d > 0, tl.exp2(tl.log2(tl.maximum(d, 1e-38)) * (1.0 / a - 1.0)), 0.0)
                p = lower * d
                mass = tl.sum(p, 1)
                slope = tl.sum(lower, 1)
                norm_part = tl.exp2(tl.log2(tl.maximum(mass, 1e-38)) * (1.0 - a))
                delta = tl.where(slope > 0, (mass - norm_part) / tl.maximum(slope, 1e-38), 0.0)
                p = tl.maximum(p - (delta / a)[:, None] * lower, 0.0)
            p_total = tl.sum(p, 1)
            sparse = p / tl.where(p_total > 0, p_total, 1.0)[:, None]

        if DELTA_ONLY:
            weights = lam * (sparse - dense)
        else:
            weights = dense + lam * (sparse - dense)
        v = tl.load(
            V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vn + vdims[None, :] * stride_vd,
            mask=col_ok[:, None] & (vdims[None, :] < value_dim),
            other=0.0,
        )
        if FP32_DOT:  # fp32 inputs; bf16 ones under the CPU interpreter (its bf16 dot is broken), rounded as on GPU
            w = weights if v.dtype == tl.float32 else weights.to(v.dtype)
            out = tl.dot(w.to(tl.float32), v.to(tl.float32), input_precision="ieee")
        else:
            out = tl.dot(weights.to(v.dtype), v)
        o_ptrs = Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + vdims[None, :] * stride_od
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & (vdims[None, :] < value_dim))


def _as_4d(x: torch.Tensor, batch: tuple[int, ...]) -> torch.Tensor:
    """x (..., L, D) broadcast to batch + (L, D), as (B, H, L, D) (views where the layout allows)."""
    x = x.expand(*batch, *x.shape[-2:])
    if x.dim() == 3:
        return x.unsqueeze(0)
    if x.dim() > 4:
        return x.reshape(-1, *x.shape[-3:])
    return x


def block_sizes(n_keys: int, head_dim: int, value_dim: int) -> tuple[int, int, int, int]:
    block_n = max(16, triton.next_power_of_2(n_keys))
    block_m = max(16, min(64, 8192 // block_n))
    return block_m, block_n, max(16, triton.next_power_of_2(head_dim)), max(16, triton.next_power_of_2(value_dim))


def pladis_attention_triton(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scale: float,
    alpha: float,
    attn_mask: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    temperature: float = 1.0,
    delta_only: bool = False,
) -> torch.Tensor:
    """PLADIS attention (the SDPA calling convention) by the fused kernel; inputs must pass `supports`.

    Arguments are checked by the caller (`pladis.attention.pladis_attention`). Returns (..., Lq, Dv) in value's
    dtype, or float32 for delta_only.
    """
    if triton is None:
        raise RuntimeError("pladis: the Triton kernel needs the `triton` package (pip install 'pladis[triton]')")
    n_queries, n_keys = query.shape[-2], key.shape[-2]
    head_dim, value_dim = query.shape[-1], value.shape[-1]
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim)
    mask_batch = attn_mask.shape[:-2] if attn_mask is not None and attn_mask.dim() > 2 else ()
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2], mask_batch)
    q, k, v = (_as_4d(x, batch) for x in (query, key, value))
    out_dtype = torch.float32 if delta_only else value.dtype
    out = torch.empty(*q.shape[:2], n_queries, value_dim, dtype=out_dtype, device=query.device)
    mask_kind, m = NO_MASK, q  # a placeholder pointer when there is no mask
    mask_strides: tuple[int, ...] = (0, 0, 0, 0)
    if attn_mask is not None:
        mask_kind = BOOL_MASK if attn_mask.dtype == torch.bool else ADDITIVE_MASK
        m = attn_mask
        if m.dtype == torch.bool:
            m = m.view(torch.uint8) if m.is_contiguous() else m.to(torch.uint8)
        m = _as_4d(m.expand(*batch, n_queries, n_keys), batch)
        mask_strides = m.stride()
    kind = alpha_kind(alpha)
    steps = steps_for(kind, torch.float32, n_keys) if kind != SOFTMAX else 0
    block_m, block_n, block_d, block_dv = block_sizes(n_keys, head_dim, value_dim)
    grid = (triton.cdiv(n_queries, block_m), q.shape[0] * q.shape[1])
    _pladis_kernel[grid](
        q, k, v, m, out,
        *q.stride(), *k.stride(), *v.stride(), *mask_strides, *out.stride(),
        q.shape[1], n_queries, n_keys, head_dim, value_dim,
        float(softmax_scale), float(scale), float(alpha - 1.0), float(1.0 / temperature),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
        KIND=kind if kind >= 0 else 5, STEPS_=steps, MASK_KIND=mask_kind, DELTA_ONLY=delta_only,
        FP32_DOT=query.dtype == torch.float32 or (query.dtype == torch.bfloat16 and query.device.type == "cpu"),
        num_warps=4 if block_n <= 128 else 8,
    )  # fmt: skip
    return out.reshape(*batch, n_queries, value_dim) if len(batch) != 2 else out
