"""Smoothed Energy Guidance (SEG, Hong 2024) on the stock diffusers UNet pipelines, next to CFG and PLADIS.

    pladis.seg.enable_seg(pipe, scale=3.0, blur_sigma=100.0, layers=("mid",))
    image = pipe(prompt, guidance_scale=4.0).images[0]      # CFG + SEG (+ PLADIS if applied)
    pladis.seg.disable_seg(pipe)                             # the pipeline as it was, bit for bit

SEG guides with a weakened copy of the conditional prediction whose self-attention queries, in the chosen layers, are
blurred over the image grid (a 2D Gaussian of standard deviation `blur_sigma` tokens; sigma >= 1e4 means infinite
blur: each query is replaced by its mean over the image tokens). Two diffusers hooks, no forked pipeline:

- on the UNet: each call gets one more copy of the conditional batch rows (one UNet call per step, the batch one
  copy larger, as in SEG alone); the output is rewritten so that the pipeline's own formula yields
  eps_u + cfg * (eps_c - eps_u) + seg * (eps_c - eps_seg) (without CFG: eps_c + seg * (eps_c - eps_seg)): the
  conditional rows become eps_c + seg/cfg * (eps_c - eps_seg); with guidance_rescale > 0 the unconditional rows
  become eps_u + seg/(1 - cfg) * (eps_c - eps_seg) instead, so that the rescale is measured on the true eps_c;
- on `to_q` of the chosen self-attention modules (`attn1`): the query rows of that extra copy are blurred.

PLADIS changes only cross-attention (`attn2`), SEG only the chosen self-attention, so the two combine.
SEG together with PAG in one call (a PAG pipeline with pag_scale > 0) is refused: PAG's processors split the batch
in three and an extra copy would break them; use pag_scale=0 or the plain pipeline.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook

SEG_HOOK = "pladis_seg"  # the name of SEG hooks in diffusers' hook registry
INFINITE_SIGMA = 1e4  # blur_sigma at or above this: each query becomes its mean over the image tokens
GROUPS = {"down": "down_blocks.*", "mid": "mid_block.*", "up": "up_blocks.*"}


class _CallState(threading.local):
    """The UNet call in progress in this thread: where the SEG copy starts, the latent grid, blurs done."""

    start: int | None = None
    grid: tuple[int, int] = (0, 0)
    blurred: int = 0


def layer_grid(tokens: int, grid: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a UNet layer with `tokens` image tokens, for a latent of `grid` (each level halves it,
    rounding up like a stride-2 convolution)."""
    height, width = grid
    while height >= 1 and width >= 1:
        if height * width == tokens:
            return height, width
        if height == 1 and width == 1:
            break
        height, width = -(-height // 2), -(-width // 2)
    raise ValueError(f"pladis.seg: {tokens} query tokens fit no level of a {grid[0]}x{grid[1]} latent grid")


def _kernel(size: int, sigma: float, length: int) -> torch.Tensor:
    """1D Gaussian of `sigma` over an odd window (6 sigma, clipped to the odd size just above `length`)."""
    size = min(size, length - (length % 2 - 1))
    half = (size - 1) / 2
    x = torch.linspace(-half, half, steps=size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def blur_queries(query: torch.Tensor, grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """SEG's query blur: `query` (batch, tokens, channels) over its (height, width) image grid, per channel.

    Gaussian of standard deviation `sigma` (in tokens), window ceil(6 sigma) rounded up to odd and clipped to the
    grid, reflect padding; sigma >= `INFINITE_SIGMA`: the mean over the tokens. Computed in float32.
    """
    batch, tokens, channels = query.shape
    height, width = layer_grid(tokens, grid)
    q = query.float()
    if sigma >= INFINITE_SIGMA:
        return q.mean(dim=1, keepdim=True).expand_as(q).to(query.dtype)
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    image = q.transpose(1, 2).reshape(batch, channels, height, width)
    for dim, length in ((2, height), (3, width)):  # separable: the 2D kernel is the outer product of the 1D ones
        k = _kernel(size, sigma, length).to(q)
        pad = [0, 0, k.numel() // 2, k.numel() // 2] if dim == 2 else [k.numel() // 2, k.numel() // 2, 0, 0]
        weight = k.view(1, 1, -1, 1) if dim == 2 else k.view(1, 1, 1, -1)
        image = F.conv2d(
            F.pad(image, pad, mode="reflect"), weight.expand(channels, 1, *weight.shape[2:]), groups=channels
        )
    return image.reshape(batch, channels, tokens).transpose(1, 2).to(query.dtype)


class QueryBlurHook(ModelHook):
    """On `to_q` of a chosen self-attention: blurs the query rows of the SEG copy (none outside a SEG call)."""

    def __init__(self, seg: SegHook):
        super().__init__()
        self.seg = seg

    def post_forward(self, module, output):
        state = self.seg.state
        if state.start is None or output.dim() != 3:
            return output
        state.blurred += 1
        blurred = blur_queries(output[state.start :], state.grid, self.seg.blur_sigma)
        return torch.cat([output[: state.start], blurred])


def _extended(value: Any, rows: int, cond: slice) -> Any:
    """`value` with the conditional rows appended to every tensor of `rows` batch rows (nested in tuples, lists and
    dicts as the UNet's inputs are)."""
    if torch.is_tensor(value):
        return torch.cat([value, value[cond]]) if value.dim() > 0 and value.shape[0] == rows else value
    if isinstance(value, (tuple, list)):
        return type(value)(_extended(v, rows, cond) for v in value)
    if isinstance(value, dict):
        return {k: _extended(v, rows, cond) for k, v in value.items()}
    return value


class SegHook(ModelHook):
    """On the UNet: one call with the SEG copy appended; the output rewritten for the pipeline's guidance formula."""

    def __init__(self, pipe, scale: float, blur_sigma: float, sample_position: int):
        super().__init__()
        self.pipe = weakref.ref(pipe)
        self.scale, self.blur_sigma = scale, blur_sigma
        self.sample_position = sample_position
        self.state = _CallState()

    def _guidance(self) -> tuple[bool, float, float]:
        """(CFG on, guidance scale, guidance rescale) of the pipeline call in progress."""
        pipe = self.pipe()
        if pipe is None or getattr(pipe, "_guidance_scale", None) is None:
            raise RuntimeError(
                "pladis.seg: the UNet was called outside its pipeline's __call__; SEG reads the guidance scale "
                "from the running pipeline (call pipe(...), or pladis.seg.disable_seg(pipe) to use the UNet alone)"
            )
        if getattr(pipe, "do_perturbed_attention_guidance", False):
            raise ValueError(
                "pladis.seg: SEG and PAG in one call are not supported (PAG's processors split the batch in three "
                "and SEG's extra copy would break them); call with pag_scale=0, or pladis.seg.disable_seg(pipe)"
            )
        cfg = bool(pipe.do_classifier_free_guidance)
        return cfg, float(pipe.guidance_scale), float(getattr(pipe, "_guidance_rescale", 0.0) or 0.0)

    def new_forward(self, module, *args, **kwargs):
        original = self.fn_ref.original_forward
        if self.scale == 0:
            return original(*args, **kwargs)
        cfg, guidance, rescale = self._guidance()
        sample = kwargs["sample"] if "sample" in kwargs else args[self.sample_position]
        rows = int(sample.shape[0])
        if cfg and rows % 2:
            raise RuntimeError(f"pladis.seg: a CFG batch of {rows} rows is not (unconditional, conditional) halves")
        per = rows // 2 if cfg else rows
        cond = slice(rows - per, rows)
        args, kwargs = _extended(args, rows, cond), _extended(kwargs, rows, cond)
        state = self.state
        state.start, state.grid, state.blurred = rows, (int(sample.shape[-2]), int(sample.shape[-1])), 0
        try:
            output = original(*args, **kwargs)
        finally:
            state.start = None
        if state.blurred == 0:
            raise RuntimeError(
                "pladis.seg: no chosen self-attention computed its query with `to_q` (fused QKV projections, or a "
                "processor that skips to_q), so SEG could not blur it; call unfuse_qkv_projections() first"
            )
        tuple_output = isinstance(output, tuple)
        eps = output[0] if tuple_output else output.sample
        guided = self._combine(eps.float(), rows, per, cfg, guidance, rescale).to(eps.dtype)
        if tuple_output:
            return (guided, *output[1:])
        output.sample = guided
        return output

    def _combine(self, eps, rows: int, per: int, cfg: bool, guidance: float, rescale: float) -> torch.Tensor:
        main, seg_copy = eps[:rows], eps[rows:]
        eps_c = main[rows - per :]
        shift = eps_c - seg_copy
        if not cfg:
            return eps_c + self.scale * shift
        eps_u = main[:per]
        if rescale > 0:  # keep eps_c exact: the pipeline rescales against it
            return torch.cat([eps_u + self.scale / (1.0 - guidance) * shift, eps_c])
        return torch.cat([eps_u, eps_c + self.scale / guidance * shift])


def _self_attentions(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {
        name: module
        for name, module in unet.named_modules()
        if hasattr(module, "to_q") and hasattr(module, "processor") and not getattr(module, "is_cross_attention", True)
    }


def _chosen(found: dict[str, torch.nn.Module], layers: Sequence[str]) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    entries = list(layers)
    if not entries or not all(isinstance(e, str) and e for e in entries):
        raise ValueError(
            f"pladis.seg: layers must be a non-empty list of groups (down, mid, up) or patterns, got {layers!r}"
        )
    chosen: set[str] = set()
    names = sorted(found)
    for entry in entries:
        pattern = GROUPS.get(entry, entry)
        hits = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            raise ValueError(
                f"pladis.seg: layers entry {entry!r} matches no self-attention of the UNet; use a group "
                f"({', '.join(GROUPS)}) or a pattern on module names such as {', '.join(names[:3])}"
            )
        chosen |= hits
    return sorted(chosen)


def _check_number(name: str, value: float, positive: bool) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"pladis.seg: {name} must be a number, got {value!r}") from None
    if positive and not number > 0:  # blur_sigma: inf allowed (infinite blur)
        raise ValueError(f"pladis.seg: {name} must be > 0 (>= 1e4 for infinite blur), got {value!r}")
    if not positive and not 0 <= number < math.inf:
        raise ValueError(f"pladis.seg: {name} must be a finite number >= 0 (0 = off), got {value!r}")
    return number


def enable_seg(pipe, scale: float = 3.0, blur_sigma: float = 100.0, layers: Sequence[str] = ("mid",)) -> None:
    """Turn SEG on for a stock diffusers UNet pipeline (SDXL, SD 1.5, SDXL ControlNet, ...); again replaces.

    scale: the SEG guidance scale (0 = off, the pipeline bit for bit). blur_sigma: the Gaussian's standard deviation
    in tokens (>= 1e4: infinite blur, the query mean). layers: groups (down, mid, up) or fnmatch patterns on the
    UNet's self-attention module names (e.g. "up_blocks.0.*").
    """
    unet = getattr(pipe, "unet", None)
    if not isinstance(unet, torch.nn.Module) or not hasattr(type(pipe), "do_classifier_free_guidance"):
        raise ValueError(
            f"pladis.seg: SEG needs a diffusers UNet pipeline with classifier-free guidance (SD 1.5, SDXL, SDXL "
            f"ControlNet, ...); {type(pipe).__name__} has no UNet (transformer pipelines such as FLUX/SD3 have "
            "diffusers' own guiders)"
        )
    scale = _check_number("scale", scale, positive=False)
    blur_sigma = _check_number("blur_sigma", blur_sigma, positive=True)
    found = _self_attentions(unet)
    chosen = _chosen(found, layers)
    disable_seg(pipe)
    params = list(inspect.signature(unet.forward).parameters)
    hook = SegHook(pipe, scale, blur_sigma, params.index("sample") if "sample" in params else 0)
    HookRegistry.check_if_exists_or_initialize(unet).register_hook(hook, SEG_HOOK)
    for name in chosen:
        HookRegistry.check_if_exists_or_initialize(found[name].to_q).register_hook(QueryBlurHook(hook), SEG_HOOK)


def disable_seg(pipe) -> None:
    """Take SEG off (a no-op when it is not on); the pipeline computes exactly as before `enable_seg`."""
    unet = getattr(pipe, "unet", None)
    if not isinstance(unet, torch.nn.Module):
        return
    for module in unet.modules():
        if _hook(module) is not None:
            HookRegistry.check_if_exists_or_initialize(module).remove_hook(SEG_HOOK, recurse=False)


def seg_settings(pipe) -> dict[str, Any] | None:
    """{"scale", "blur_sigma", "layers"} of SEG on `pipe`, or None when it is off."""
    unet = getattr(pipe, "unet", None)
    if not isinstance(unet, torch.nn.Module):
        return None
    hook = _hook(unet)
    if not isinstance(hook, SegHook):
        return None
    attentions = _self_attentions(unet).items()
    layers = sorted(name for name, m in attentions if isinstance(_hook(m.to_q), QueryBlurHook))
    return {"scale": hook.scale, "blur_sigma": hook.blur_sigma, "layers": layers}


def _hook(module: Any) -> ModelHook | None:
    registry = getattr(module, "_diffusers_hook", None)
    return None if registry is None else registry.get_hook(SEG_HOOK)
