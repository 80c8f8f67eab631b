"""Where PLADIS enters a diffusers model: a processor that wraps the attention processor of each cross-attention.

`PladisProcessor` keeps the module's original processor and calls it untouched whenever PLADIS is off (scale 0,
outside the timestep window), so the stock maths run bit for bit. When PLADIS is on it takes one of two routes:

- native: for diffusers' stock processors (`AttnProcessor2_0`, `AttnProcessor`) it runs the same projections and
  replaces the attention product by `pladis_attention` directly (the fast path, no interception overhead);
- intercept: any other processor (IP-Adapter's, a user's, a model family's own) runs as it is, while its first call
  to `F.scaled_dot_product_attention` (the text attention) is answered by PLADIS. Everything else it computes
  (RoPE, norms, masks, extra image-prompt attention) stays the processor's own.

Joint attention (MMDiT: FLUX, SD3, CogVideoX) goes through the intercept route with a `JointAttend`, which learns
where the text tokens are from each processor call (or from a family hook) and applies `pladis.joint`. Which
modules of which model get which attend is model-family knowledge: `pladis.families`, consulted by `find_targets`.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .attention import _apply_mask, pladis_attention, pladis_weights
from .entmax import compute_dtype
from .joint import joint_weights, pladis_joint_attention


@dataclass
class Settings:
    """What one `pladis.apply` asked for; shared by all its processors and changeable at any time."""

    scale: float
    alpha: float
    temperature: float = 1.0
    timesteps: tuple[float, float] | None = None
    timestep: float | None = None  # the denoiser's current timestep, recorded by a forward pre-hook
    text_length: int | None = None  # length of the denoiser's encoder_hidden_states, recorded by the same hook
    # recorder(module_name, weights, scores): when set, each PLADIS attention builds its full map (..., Lq, Lk) from
    # its masked fp32 scores, hands both over and attends with that map (slower; see `record_attention`)
    recorder: Callable[[str, torch.Tensor, torch.Tensor], None] | None = None

    @property
    def active(self) -> bool:
        if self.scale == 0:
            return False
        if self.timesteps is None:
            return True
        if self.timestep is None:
            raise RuntimeError(
                "pladis: a timesteps window was given but the denoiser's timestep was not seen (its forward takes "
                "no `timestep` argument, or the attention ran outside it); apply PLADIS to the pipeline or its "
                "denoiser, or drop timesteps=..."
            )
        low, high = self.timesteps
        return low <= self.timestep <= high


def _expand_gqa(query, key, value, enable_gqa):
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
    return key, value


def _recorded(settings: Settings, name: str, weights_of: Callable, query, key, value, attn_mask, scale):
    """Recorder route: build the full map from the (masked) scores, hand it to the recorder, attend with it."""
    dtype = compute_dtype(query.dtype)
    softmax_scale = scale if scale is not None else query.shape[-1] ** -0.5
    scores = _apply_mask(torch.matmul(query.to(dtype), key.to(dtype).transpose(-1, -2)) * softmax_scale, attn_mask)
    weights = weights_of(scores)
    settings.recorder(name, weights, scores)
    return torch.matmul(weights.to(value.dtype), value)


def _attend_cross(settings: Settings, name: str = "") -> Callable:
    """An `F.scaled_dot_product_attention` stand-in that applies PLADIS over all keys."""

    def attend(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if is_causal:
            raise ValueError("pladis: causal attention is not cross-attention; exclude this module with layers=...")
        key, value = _expand_gqa(query, key, value, enable_gqa)
        if settings.recorder is not None:
            weights_of = functools.partial(
                pladis_weights, scale=settings.scale, alpha=settings.alpha, temperature=settings.temperature
            )
            return _recorded(settings, name, weights_of, query, key, value, attn_mask, scale)
        return pladis_attention(
            query,
            key,
            value,
            scale=settings.scale,
            alpha=settings.alpha,
            attn_mask=attn_mask,
            softmax_scale=scale,
            temperature=settings.temperature,
        )

    return attend


class JointAttend:
    """The one adapter for joint (MMDiT) attention: an `F.scaled_dot_product_attention` stand-in for `pladis.joint`.

    The processor's attention runs over one sequence of text and image tokens. `text_first` says whether the text
    tokens lead it (FLUX, CogVideoX) or close it (SD3); `text_length(args, kwargs)` reads how many there are from the
    arguments of each processor call (by default the length of `encoder_hidden_states`). Image-query rows get the
    PLADIS text block (the dense text mass m, spread as (1 - lambda) softmax + lambda entmax over the text keys);
    text-query rows and image-key columns keep the stock attention. `sdpa_call` is which of the processor's SDPA
    calls is the joint attention (0 = the first).
    """

    sdpa_call = 0

    def __init__(self, settings: Settings, name: str, text_first: bool, text_length: Callable | None = None):
        self.settings = settings
        self.name = name
        self.text_first = text_first
        self.text_length = text_length or encoder_length

    def bind(self, attn, hidden_states, *args, **kwargs) -> Callable:
        """The stand-in for one processor call, knowing its text length."""
        n_text = self.text_length(args, kwargs) or 0  # a call without text (None) keeps the stock attention
        settings = self.settings

        def attend(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            if is_causal:
                raise ValueError(
                    f"pladis: '{self.name}' uses causal attention, which is not joint text-image attention"
                )
            key, value = _expand_gqa(query, key, value, enable_gqa)
            length = key.shape[-2]
            text = slice(0, n_text) if self.text_first else slice(length - n_text, length)
            if settings.recorder is not None:
                weights_of = functools.partial(
                    joint_weights,
                    text=text,
                    scale=settings.scale,
                    alpha=settings.alpha,
                    temperature=settings.temperature,
                )
                return _recorded(settings, self.name, weights_of, query, key, value, attn_mask, scale)
            return pladis_joint_attention(
                query,
                key,
                value,
                text=text,
                scale=settings.scale,
                alpha=settings.alpha,
                attn_mask=attn_mask,
                softmax_scale=scale,
                temperature=settings.temperature,
            )

        return attend


def encoder_length(args: tuple, kwargs: dict) -> int | None:
    """Text length of a processor call `(attn, hidden_states, encoder_hidden_states, ...)`: from its third argument."""
    context = args[0] if args else kwargs.get("encoder_hidden_states")
    return None if context is None else int(context.shape[1])


@contextlib.contextmanager
def record_attention(handle, with_scores: bool = False) -> Iterator[dict[str, list]]:
    """Record the PLADIS attention maps of an applied pipeline/model: {module name: [map per call]}.

        with record_attention(pladis.apply(pipe)) as maps:
            pipe(prompt)
        maps["transformer.transformer_blocks.0.attn"][0]   # (batch, heads, queries, keys), float32

    with_scores: record (map, scores) pairs instead, the scores being the masked fp32 logits the map came from
    (softmax(scores) is the stock map). While recording, each PLADIS attention builds its full map and attends with
    it (slower, same result up to round-off). `handle` is what `pladis.apply` returned (or its `Settings`).
    """
    settings = getattr(handle, "settings", handle)
    maps: dict[str, list] = {}
    before = settings.recorder

    def record(name, weights, scores):
        entry = weights.detach().cpu()
        maps.setdefault(name, []).append((entry, scores.detach().cpu()) if with_scores else entry)

    settings.recorder = record
    try:
        yield maps
    finally:
        settings.recorder = before


class AttentionInterceptor(TorchFunctionMode):
    """Answers the first `F.scaled_dot_product_attention` call made inside it with `attend`."""

    def __init__(self, attend: Callable, call: int = 0):
        super().__init__()
        self.attend = attend
        self.call = call  # which SDPA call to answer (0 = the first); the others run as they are
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.calls += 1
            if self.calls == self.call + 1:
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
        self.attend = attend or _attend_cross(settings, module_name)
        self.native = attend is None and type(original) in _native_processor_types()
        # diffusers passes only the keyword arguments the processor's signature names: expose the original's
        self.__call__ = functools.update_wrapper(functools.partial(PladisProcessor.__call__, self), original.__call__)

    def __call__(self, attn, hidden_states, *args, **kwargs):
        if not self.settings.active:
            return self.original(attn, hidden_states, *args, **kwargs)
        if self.native:
            return self._native(attn, hidden_states, *args, **kwargs)
        attend, call = self.attend, getattr(self.attend, "sdpa_call", 0)
        if hasattr(attend, "bind"):
            attend = attend.bind(attn, hidden_states, *args, **kwargs)
        interceptor = AttentionInterceptor(attend, call)
        with interceptor:
            out = self.original(attn, hidden_states, *args, **kwargs)
        if interceptor.calls <= call:
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
        classic = type(self.original).__name__ == "AttnProcessor"
        if attn.norm_q is not None and not classic:  # the classic processor applies no QK norms
            query = attn.norm_q(query)
        if attn.norm_k is not None and not classic:
            key = attn.norm_k(key)
        # AttnProcessor2_0 leaves attn.scale to SDPA's default; the classic AttnProcessor uses it
        softmax_scale = attn.scale if classic else None
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


def check_backend(name: str, module: torch.nn.Module) -> None:
    """Raise if `module`'s processor was set to a non-native diffusers attention backend (flash, sage, ...)."""
    backend = getattr(getattr(module, "processor", None), "_attention_backend", None)
    if backend is not None and str(getattr(backend, "value", backend)) != "native":
        raise ValueError(
            f"pladis: '{name}' uses the diffusers attention backend {str(getattr(backend, 'value', backend))!r}, "
            "whose kernel PLADIS cannot enter; call model.reset_attention_backend() (or set_attention_backend('native')) "
            "before pladis.apply, or leave this module out with layers=..."
        )


def unknown_joint_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Attention modules that mix text into self-attention (added key/value projections, not cross-attention)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if is_attention_module(module)
        and getattr(module, "added_kv_proj_dim", None) is not None
        and not getattr(module, "is_cross_attention", False)
    ]


def find_targets(model: torch.nn.Module, settings: Settings) -> list[tuple[str, torch.nn.Module, Callable | None]]:
    """(name, module, attend) for every module of `model` PLADIS enters; attend None = plain cross-attention.

    Model families with their own layout (joint attention, cross-attention modules without `is_cross_attention`,
    several SDPA calls per processor) come from `pladis.families`; every other model gets its cross-attention
    modules. Joint-attention modules of a model no family knows are reported, never silently skipped.
    """
    from .families import family_targets

    targets = family_targets(model, settings)
    if targets is None:
        targets = [(name, module, None) for name, module in cross_attention_modules(model)]
        joint = unknown_joint_modules(model)
        if joint:
            names = ", ".join(name for name, _ in joint[:3]) + (", ..." if len(joint) > 3 else "")
            message = (
                f"pladis: {type(model).__name__} has joint text-image attention ({names}) in a layout pladis does "
                "not know, so PLADIS cannot enter it; supported joint-attention models: see pladis.families.FAMILIES"
            )
            if not targets:
                raise ValueError(message)
            warnings.warn(message + "; only its cross-attention modules get PLADIS", stacklevel=3)
    for name, module, _ in targets:
        check_backend(name, module)
    return targets
