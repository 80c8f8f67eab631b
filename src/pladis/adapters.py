"""Where PLADIS enters a diffusers model: a processor that wraps the attention processor of each cross-attention.

`PladisProcessor` keeps the module's original processor and calls it untouched whenever PLADIS is off (scale 0,
outside the timestep window), so the stock maths run bit for bit. When PLADIS is on it takes one of two routes:

- native: for diffusers' stock processors (`AttnProcessor2_0`, `AttnProcessor`) it runs the same projections and
  replaces the attention product by `pladis_attention` directly (the fast path, no interception overhead);
- intercept: any other processor (IP-Adapter's, a user's, a model family's own) runs as it is, while its first call
  to `F.scaled_dot_product_attention` (the text attention) is answered by PLADIS. Everything else it computes
  (RoPE, norms, masks, extra image-prompt attention) stays the processor's own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .attention import pladis_attention


@dataclass
class Settings:
    """What one `pladis.apply` asked for; shared by all its processors and changeable at any time."""

    scale: float
    alpha: float
    temperature: float = 1.0
    timesteps: tuple[float, float] | None = None
    timestep: float | None = None  # the denoiser's current timestep, recorded by a forward pre-hook

    @property
    def active(self) -> bool:
        if self.scale == 0:
            return False
        if self.timesteps is None or self.timestep is None:
            return True
        low, high = self.timesteps
        return low <= self.timestep <= high


def _attend_cross(settings: Settings) -> Callable:
    """An `F.scaled_dot_product_attention` stand-in that applies PLADIS over all keys."""

    def attend(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if is_causal:
            raise ValueError("pladis: causal attention is not cross-attention; exclude this module with layers=...")
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            repeat = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
        return pladis_attention(
            query, key, value, scale=settings.scale, alpha=settings.alpha, attn_mask=attn_mask,
            softmax_scale=scale, temperature=settings.temperature,
        )

    return attend


class AttentionInterceptor(TorchFunctionMode):
    """Answers the first `F.scaled_dot_product_attention` call made inside it with `attend`."""

    def __init__(self, attend: Callable):
        super().__init__()
        self.attend = attend
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.calls == 0:
            self.calls += 1
            return self.attend(*args, **kwargs)
        return func(*args, **kwargs)


def _native_processor_types() -> tuple[type, ...]:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    return AttnProcessor, AttnProcessor2_0


class PladisProcessor(torch.nn.Module):
    """Attention processor that applies PLADIS around the module's original processor `original`."""

    def __init__(self, original, settings: Settings, module_name: str, attend: Callable | None = None):
        super().__init__()
        self.original = original
        self.settings = settings
        self.module_name = module_name
        self.attend = attend or _attend_cross(settings)
        self.native = attend is None and type(original) in _native_processor_types()
        # diffusers passes only the keyword arguments the processor's signature names: expose the original's
        self.__call__ = functools.update_wrapper(functools.partial(PladisProcessor.__call__, self), original.__call__)

    def __call__(self, attn, hidden_states, *args, **kwargs):
        if not self.settings.active:
            return self.original(attn, hidden_states, *args, **kwargs)
        if self.native:
            return self._native(attn, hidden_states, *args, **kwargs)
        interceptor = AttentionInterceptor(self.attend)
        with interceptor:
            out = self.original(attn, hidden_states, *args, **kwargs)
        if interceptor.calls == 0:
            raise RuntimeError(
                f"pladis: the processor {type(self.original).__name__} of '{self.module_name}' computed attention "
                "without torch.nn.functional.scaled_dot_product_attention (a custom kernel or attention backend), "
                "so PLADIS could not enter it. Use diffusers' native attention backend, or leave this module out "
                "with layers=..."
            )
        return out

    def _native(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        """diffusers' AttnProcessor2_0 with the attention product replaced by PLADIS."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, key_length, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        # AttnProcessor2_0 leaves attn.scale to SDPA's default; the classic AttnProcessor uses it
        softmax_scale = attn.scale if type(self.original).__name__ == "AttnProcessor" else None
        hidden_states = self.attend(query, key, value, attn_mask=attention_mask, scale=softmax_scale)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def is_attention_module(module: torch.nn.Module) -> bool:
    return hasattr(module, "set_processor") and hasattr(module, "processor")


def cross_attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every attention module of `model` whose keys come from the text (cross-attention)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if is_attention_module(module) and getattr(module, "is_cross_attention", False)
    ]



def find_targets(model: torch.nn.Module, settings: Settings) -> list[tuple[str, torch.nn.Module, Callable | None]]:
    """(name, module, attend) for every module of `model` PLADIS enters; attend None = plain cross-attention."""
    return [(name, module, None) for name, module in cross_attention_modules(model)]
