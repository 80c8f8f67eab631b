"""Where PLADIS enters a diffusers model: a `diffusers.hooks` hook on the forward of each cross-attention module.

The processors stay diffusers' own (so `set_default_attn_processor`, IP-Adapter loading, fused QKV, attention
slicing and every type check keep working, in any order with `pladis.apply`). On each call the hook looks at the
module's *current* processor and takes one of three routes:

- off (scale 0, outside the timestep window): the module's forward runs untouched, bit for bit;
- native: diffusers' stock `AttnProcessor2_0` / `AttnProcessor` are computed here with the attention product
  replaced by PLADIS (the fast path; `tests/test_pipelines.py` checks it against diffusers' own processors);
- intercept: any other processor (IP-Adapter's, fused, sliced, a family's own, a user's) runs as it is, while its
  text attention is answered by PLADIS: the `sdpa_call`-th call to `F.scaled_dot_product_attention`, or, for
  processors that build the map themselves (sliced, classic), the softmax of their scores.

What PLADIS computes there is one typed interface, `Attend` (`CrossAttend` over all keys, `JointAttend` for the
text block of joint attention), which calls the maths in `pladis.attention` / `pladis.joint`: the kernel plugs in
below that. Which modules get which attend is data: `pladis.families`.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook
from torch.overrides import TorchFunctionMode

from .attention import _apply_mask, check_scale, pladis_attention, pladis_weights
from .entmax import compute_dtype
from .families import Family, Rule
from .joint import joint_weights, pladis_joint_attention

HOOK = "pladis"  # the name of PLADIS hooks in diffusers' hook registry


class _CallState(threading.local):
    """What one thread's current pipeline call knows: its denoiser timestep, text length and per-call scale."""

    timestep: float | None = None
    text_length: int | None = None
    scale: float | None = None


@dataclass
class Settings:
    """What one `pladis.apply` asked for; shared by its hooks and changeable at any time.

    The per-call state (timestep, text length, a per-call scale) is kept per thread, so threads that share a
    denoiser do not see each other's calls.
    """

    scale: float
    alpha: float
    temperature: float = 1.0
    timesteps: tuple[float, float] | None = None  # window in scheduler units (0..1000)
    check_finite: bool = True
    # recorder(module_name, weights, scores, text): when set, each hooked attention (PLADIS on or off) also builds
    # its full map (..., Lq, Lk) from its masked fp32 scores on the side and hands it over with the scores and the
    # key positions of the text; the attention itself is computed as without recording (see `record_attention`)
    recorder: Callable[[str, torch.Tensor, torch.Tensor, slice], None] | None = None
    call: _CallState = field(default_factory=_CallState, repr=False, compare=False)

    @property
    def effective_scale(self) -> float:
        return self.scale if self.call.scale is None else self.call.scale

    @property
    def active(self) -> bool:
        if self.effective_scale == 0:
            return False
        if self.timesteps is None:
            return True
        if self.call.timestep is None:
            raise RuntimeError(
                "pladis: a timesteps window was given but the denoiser's timestep was not seen (its forward takes "
                "no `timestep` argument, or the attention ran outside it); apply PLADIS to the pipeline or its "
                "denoiser, or drop timesteps=..."
            )
        low, high = self.timesteps
        return low <= self.call.timestep <= high


# --------------------------------------------------------------------------- the attend interface


class SDPA(Protocol):
    """The calling convention of `F.scaled_dot_product_attention`."""

    def __call__(
        self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
    ) -> torch.Tensor: ...


class Attend(Protocol):
    """What PLADIS computes for one module: `bind` gives the SDPA stand-in for one call of the module's forward
    (args and kwargs as the forward got them); `weights` the map of masked fp32 scores (recording, explicit maps)."""

    sdpa_call: int
    settings: Settings
    name: str

    def bind(self, args: tuple, kwargs: dict) -> tuple[SDPA, Callable[[torch.Tensor], torch.Tensor]]: ...

    def text_of(self, args: tuple, kwargs: dict) -> Callable[[int], slice]: ...


def _expand_gqa(query, key, value, enable_gqa):
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
    return key, value


def _check_not_causal(name: str, is_causal: bool) -> None:
    if is_causal:
        raise ValueError(
            f"pladis: '{name}' uses causal attention, which is not text attention; leave it out with layers="
        )


def _record(settings: Settings, name: str, weights_of: Callable, query, key, attn_mask, scale, text: slice) -> None:
    """Recording, on the side: the full map from the (masked) fp32 scores, handed to the recorder."""
    recorder = settings.recorder
    if recorder is None:
        return
    with torch.no_grad():
        dtype = compute_dtype(query.dtype)
        softmax_scale = scale if scale is not None else query.shape[-1] ** -0.5
        scores = torch.matmul(query.to(dtype), key.to(dtype).transpose(-1, -2)) * softmax_scale
        scores = _apply_mask(scores, attn_mask)
        recorder(name, weights_of(scores), scores, text)


def _stock_weights(scores: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores, dim=-1)


@dataclass
class CrossAttend:
    """PLADIS over all keys of a cross-attention (the keys are the text)."""

    settings: Settings
    name: str
    sdpa_call: int = 0

    def weights(self, scores: torch.Tensor) -> torch.Tensor:
        s = self.settings
        return pladis_weights(scores, scale=s.effective_scale, alpha=s.alpha, temperature=s.temperature)

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        _check_not_causal(self.name, is_causal)
        key, value = _expand_gqa(query, key, value, enable_gqa)
        s = self.settings
        _record(s, self.name, self.weights, query, key, attn_mask, scale, slice(0, key.shape[-2]))
        return pladis_attention(
            query, key, value, scale=s.effective_scale, alpha=s.alpha, attn_mask=attn_mask, softmax_scale=scale,
            temperature=s.temperature,
        )  # fmt: skip

    def bind(self, args: tuple, kwargs: dict):
        return self, self.weights

    def text_of(self, args: tuple, kwargs: dict) -> Callable[[int], slice]:
        return lambda length: slice(0, length)


def forward_text_length(args: tuple, kwargs: dict) -> int | None:
    """Text length of an attention forward `(hidden_states, encoder_hidden_states, ...)`."""
    context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    return None if context is None else int(context.shape[1])


@dataclass
class JointAttend:
    """Joint (MMDiT) attention: image-query rows get the PLADIS text block (`pladis.joint`); text-query rows and
    image-key columns keep the stock attention. `text_first`: the text leads the sequence (FLUX, CogVideoX) or
    closes it (SD3); `recorded_length`: the text length is the denoiser's (FLUX single-stream blocks)."""

    settings: Settings
    name: str
    text_first: bool
    recorded_length: bool = False
    sdpa_call: int = 0

    def _text_length(self, args: tuple, kwargs: dict) -> int:
        if not self.recorded_length:
            return forward_text_length(args, kwargs) or 0  # a call without text keeps the stock attention
        if self.settings.call.text_length is None:
            raise RuntimeError(
                f"pladis: the text length for '{self.name}' was not recorded (the transformer's forward did not run, "
                "or ran without encoder_hidden_states); apply PLADIS to the transformer or pipeline, not to a block"
            )
        return self.settings.call.text_length

    def text_of(self, args: tuple, kwargs: dict) -> Callable[[int], slice]:
        """Key positions of the text in a sequence of `length` (first or last)."""
        n_text = self._text_length(args, kwargs)
        return lambda length: slice(0, n_text) if self.text_first else slice(length - n_text, length)

    def bind(self, args: tuple, kwargs: dict):
        s, text_of = self.settings, self.text_of(args, kwargs)

        def weights(scores: torch.Tensor) -> torch.Tensor:
            text = text_of(scores.shape[-1])
            return joint_weights(scores, text, scale=s.effective_scale, alpha=s.alpha, temperature=s.temperature)

        def attend(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            _check_not_causal(self.name, is_causal)
            key, value = _expand_gqa(query, key, value, enable_gqa)
            _record(s, self.name, weights, query, key, attn_mask, scale, text_of(key.shape[-2]))
            return pladis_joint_attention(
                query, key, value, text=text_of(key.shape[-2]), scale=s.effective_scale, alpha=s.alpha,
                attn_mask=attn_mask, softmax_scale=scale, temperature=s.temperature,
            )  # fmt: skip

        return attend, weights


def make_attend(rule: Rule, settings: Settings, name: str) -> CrossAttend | JointAttend:
    if rule.kind == "joint":
        return JointAttend(settings, name, rule.text == "first", rule.text_length == "recorded", rule.sdpa_call)
    return CrossAttend(settings, name, rule.sdpa_call)


# --------------------------------------------------------------------------- routes


NATIVE_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor")  # computed here with PLADIS in place of the product
MAP_PROCESSORS = ("SlicedAttnProcessor", "SlicedAttnAddedKVProcessor")  # every softmax is the text attention
_SOFTMAX = (torch.Tensor.softmax, torch.softmax, F.softmax)


class AttentionInterceptor(TorchFunctionMode):
    """Hands the processor's text attention to `sdpa` / `softmax`: its `call`-th attention (an SDPA call, or the
    softmax of a map it builds itself; every softmax when `all_softmax`), while everything else runs as it is.
    `softmax(func, args, kwargs)` answers an intercepted softmax call."""

    def __init__(self, sdpa: Callable, softmax: Callable, call: int = 0, all_softmax: bool = False):
        super().__init__()
        self.sdpa, self.softmax, self.call, self.all_softmax = sdpa, softmax, call, all_softmax
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.calls += 1
            if self.calls == self.call + 1:
                return self.sdpa(*args, **kwargs)
        elif func in _SOFTMAX and kwargs.get("dim", args[1] if len(args) > 1 else None) in (-1, args[0].dim() - 1):
            self.calls += 1
            if self.all_softmax or self.calls == self.call + 1:
                return self.softmax(func, args, kwargs)
        return func(*args, **kwargs)


def _replacing_softmax(weights: Callable) -> Callable:
    """An intercepted softmax answered by `weights` (the PLADIS map) of its fp32 scores."""

    def softmax(func, args, kwargs):
        scores = args[0]
        return weights(scores.to(compute_dtype(scores.dtype))).to(scores.dtype)

    return softmax


def native_attention(attend: SDPA, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
    """diffusers' AttnProcessor2_0 (and the classic AttnProcessor) with the attention product replaced by `attend`."""
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
    classic = type(attn.processor).__name__ == "AttnProcessor"
    if attn.norm_q is not None and not classic:  # the classic processor applies no QK norms
        query = attn.norm_q(query)
    if attn.norm_k is not None and not classic:
        key = attn.norm_k(key)
    # AttnProcessor2_0 leaves attn.scale to SDPA's default; the classic AttnProcessor uses it
    hidden_states = attend(query, key, value, attn_mask=attention_mask, scale=attn.scale if classic else None)
    hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


class AttentionHook(ModelHook):
    """PLADIS on one attention module (registered in diffusers' hook registry as "pladis")."""

    def __init__(self, attend: CrossAttend | JointAttend, family: Family):
        super().__init__()
        self.attend, self.family = attend, family
        self.settings = attend.settings

    def new_forward(self, module, *args, **kwargs):
        scale = kwargs.pop("pladis_scale", None)  # a per-call scale, e.g. cross_attention_kwargs={"pladis_scale": 3}
        if scale is None:
            return self._forward(module, args, kwargs)
        call = self.settings.call
        before, call.scale = call.scale, check_scale(scale)
        try:
            return self._forward(module, args, kwargs)
        finally:
            call.scale = before

    def _forward(self, module, args: tuple, kwargs: dict):
        original = self.fn_ref.original_forward
        if not self.settings.active:
            if self.settings.recorder is None:
                return original(*args, **kwargs)
            return self._record_stock(module, args, kwargs)
        processor = type(module.processor).__name__
        if self.family.processors and processor not in self.family.processors:
            raise ValueError(unknown_processor_message(self.attend.name, processor, self.family))
        sdpa, weights = self.attend.bind(args, kwargs)
        if processor in NATIVE_PROCESSORS and isinstance(self.attend, CrossAttend) and self.attend.sdpa_call == 0:
            return native_attention(sdpa, module, *args, **_native_kwargs(kwargs))
        interceptor = AttentionInterceptor(
            sdpa, _replacing_softmax(weights), self.attend.sdpa_call, processor in MAP_PROCESSORS
        )
        with interceptor:
            out = original(*args, **kwargs)
        if interceptor.calls <= self.attend.sdpa_call:
            raise RuntimeError(
                f"pladis: the processor {processor} of '{self.attend.name}' computed attention without "
                "torch.nn.functional.scaled_dot_product_attention or a softmax (a custom kernel or attention "
                "backend), so PLADIS could not enter it. Use diffusers' native attention backend, or leave this "
                "module out with layers=..."
            )
        return out

    def _record_stock(self, module, args: tuple, kwargs: dict):
        """The untouched forward, its text attention's (stock) map recorded on the side."""
        processor = type(module.processor).__name__
        if processor in MAP_PROCESSORS:
            raise RuntimeError(
                f"pladis: '{self.attend.name}' uses {processor} (attention slicing), whose maps pladis does not "
                "record; call pipe.disable_attention_slicing() before recording attention maps"
            )
        text_of, heads = self.attend.text_of(args, kwargs), int(getattr(module, "heads", 1))
        settings, name = self.settings, self.attend.name

        def record_sdpa(
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
        ):
            keys, _ = _expand_gqa(query, key, value, enable_gqa)
            _record(settings, name, _stock_weights, query, keys, attn_mask, scale, text_of(keys.shape[-2]))
            extra = {"enable_gqa": enable_gqa} if enable_gqa else {}
            return F.scaled_dot_product_attention(
                query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **extra
            )

        def record_softmax(func, args, kwargs) -> torch.Tensor:  # the classic processor's (batch * heads, Lq, Lk) map
            weights = func(*args, **kwargs)
            assert settings.recorder is not None
            mapped = weights.detach().reshape(-1, heads, *weights.shape[-2:])
            settings.recorder(name, mapped.float(), mapped.float().log(), text_of(weights.shape[-1]))
            return weights

        with AttentionInterceptor(record_sdpa, record_softmax, self.attend.sdpa_call):
            return self.fn_ref.original_forward(*args, **kwargs)


def _native_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k in ("encoder_hidden_states", "attention_mask", "temb")}


def unknown_processor_message(name: str, processor: str, family: Family) -> str:
    return (
        f"pladis: '{name}' uses the attention processor {processor}, which pladis does not know for {family.name} "
        f"joint attention (known: {', '.join(family.processors)}); PLADIS needs to know where its text tokens are. "
        "Put a known processor back (e.g. model.set_attn_processor(...)), or pladis.remove(...) first"
    )


PER_CALL_KWARGS = ("cross_attention_kwargs", "joint_attention_kwargs", "attention_kwargs")  # where pipelines pass them


class InputsHook(ModelHook):
    """On the denoiser: takes a per-call `pladis_scale` out of its attention kwargs (so no attention module sees an
    unexpected key) and applies it for this forward; records the timestep (for the window) and the text length (FLUX
    single-stream blocks) of each forward, in the calling thread; checks that a PLADIS forward gave finite values.
    `has_layers`: PLADIS is on some module of this model (else only the per-call key is taken out)."""

    def __init__(
        self, settings: Settings, family: Family, model: torch.nn.Module, scheduler=None, has_layers: bool = True
    ):
        super().__init__()
        self.settings, self.family, self.scheduler, self.has_layers = settings, family, scheduler, has_layers
        params = list(inspect.signature(getattr(model, "_orig_mod", model).forward).parameters)
        self.t_position = params.index("timestep") if "timestep" in params else None
        self.text_position = params.index("encoder_hidden_states") if "encoder_hidden_states" in params else None
        self.kwargs_positions = {name: params.index(name) for name in PER_CALL_KWARGS if name in params}
        self.model = model
        self._checked_timesteps: Any = None

    @staticmethod
    def _argument(args, kwargs, name, position):
        if name in kwargs:
            return kwargs[name]
        return args[position] if position is not None and len(args) > position else None

    def _take_scale(self, args: tuple, kwargs: dict) -> tuple[tuple, dict, float | None]:
        """Remove `pladis_scale` from the attention kwargs (copies; the caller's dict is left alone)."""
        scale = None
        for name, position in self.kwargs_positions.items():
            positional = name not in kwargs and len(args) > position
            extra = args[position] if positional else kwargs.get(name)
            if not isinstance(extra, dict) or "pladis_scale" not in extra:
                continue
            extra = dict(extra)
            scale = check_scale(extra.pop("pladis_scale"))
            if positional:
                args = (*args[:position], extra or None, *args[position + 1 :])
            else:
                kwargs = {**kwargs, name: extra or None}
        return args, kwargs, scale

    def new_forward(self, module, *args, **kwargs):
        args, kwargs, scale = self._take_scale(args, kwargs)
        call = self.settings.call
        before = call.scale
        if scale is not None:
            call.scale = scale
        try:
            self._record_inputs(args, kwargs)
            output = self.fn_ref.original_forward(*args, **kwargs)
            self._check_finite(output)
            return output
        finally:
            call.scale = before

    def _record_inputs(self, args: tuple, kwargs: dict) -> None:
        s, call = self.settings, self.settings.call
        if s.timesteps is not None:  # read only for a window: on a GPU this is a sync
            self._check_window()
            t = self._argument(args, kwargs, "timestep", self.t_position)
            if t is not None:
                value = float(t.flatten()[0]) if torch.is_tensor(t) else float(t)
                call.timestep = self.family.scheduler_units(self.model, value)
        text = self._argument(args, kwargs, "encoder_hidden_states", self.text_position)
        call.text_length = int(text.shape[1]) if torch.is_tensor(text) and text.dim() == 3 else None

    def _check_window(self) -> None:
        """Once per run (a new scheduler timesteps tensor): the window must select at least one of its steps."""
        steps = getattr(self.scheduler, "timesteps", None)
        if not torch.is_tensor(steps) or steps is self._checked_timesteps or steps.numel() == 0:
            return
        self._checked_timesteps = steps
        low, high = self.settings.timesteps or (0.0, 0.0)
        values = steps.detach().float().cpu()
        if not bool(((values >= low) & (values <= high)).any()):
            raise ValueError(
                f"pladis: the timesteps window ({low:g}, {high:g}) selects none of this run's steps "
                f"({values.max():.4g} down to {values.min():.4g}, in scheduler units 0..1000 for every model); "
                "widen the window"
            )

    def _check_finite(self, output) -> None:
        s = self.settings
        if not self.has_layers or not s.check_finite or torch.compiler.is_compiling() or s.effective_scale <= 0:
            return
        sample = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        if torch.is_tensor(sample) and sample.is_floating_point() and not bool(torch.isfinite(sample).all()):
            raise FloatingPointError(
                f"pladis: the denoiser returned NaN/inf with PLADIS on (scale={s.effective_scale:g}, "
                f"alpha={s.alpha:g}, temperature={s.temperature:g}); lower the scale, raise the temperature, "
                "or run in float32/bfloat16 (pass check_finite=False to pladis.apply to skip this check)"
            )


# --------------------------------------------------------------------------- install and find


def install(module: torch.nn.Module, hook: ModelHook) -> None:
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK)


def uninstall(module: torch.nn.Module) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or registry.get_hook(HOOK) is None:
        return False
    registry.remove_hook(HOOK, recurse=False)
    return True


def hook_of(module: torch.nn.Module) -> ModelHook | None:
    registry = getattr(module, "_diffusers_hook", None)
    return None if registry is None else registry.get_hook(HOOK)


def attention_hooks(model: torch.nn.Module) -> list[tuple[torch.nn.Module, AttentionHook]]:
    """(module, hook) of every attention module of `model` that PLADIS is on."""
    found = []
    for module in model.modules():
        hook = hook_of(module)
        if isinstance(hook, AttentionHook):
            found.append((module, hook))
    return found


def check_backend(name: str, module: torch.nn.Module) -> None:
    """Raise if `module`'s processor was set to a non-native diffusers attention backend (flash, sage, ...)."""
    backend = getattr(getattr(module, "processor", None), "_attention_backend", None)
    if backend is not None and str(getattr(backend, "value", backend)) != "native":
        raise ValueError(
            f"pladis: '{name}' uses the diffusers attention backend {str(getattr(backend, 'value', backend))!r}, "
            "whose kernel PLADIS cannot enter; call model.reset_attention_backend() (or set_attention_backend("
            "'native')) before pladis.apply, or leave this module out with layers=..."
        )


# --------------------------------------------------------------------------- recording


@contextlib.contextmanager
def record_attention(handle, with_scores: bool = False) -> Iterator[dict[str, list]]:
    """Record every full attention map of an applied pipeline/model: {module name: [map per call]} (a test tool:
    it keeps every map; `pladis.maps.record_maps` keeps running sums of the text columns instead).

        with record_attention(pladis.apply(pipe)) as maps:
            pipe(prompt)
        maps["transformer.transformer_blocks.0.attn"][0]   # (batch, heads, queries, keys), float32

    with_scores: record (map, scores) pairs instead, the scores being the masked fp32 logits the map came from
    (softmax(scores) is the stock map). The maps are built on the side: the outputs are those of an unrecorded run,
    bit for bit (at scale 0 the stock maps are recorded). `handle` is what `pladis.apply` returned (or its `Settings`).
    """
    settings = getattr(handle, "settings", handle)
    maps: dict[str, list] = {}
    before = settings.recorder

    def record(name, weights, scores, text):
        entry = weights.detach().cpu()
        maps.setdefault(name, []).append((entry, scores.detach().cpu()) if with_scores else entry)

    settings.recorder = record
    try:
        yield maps
    finally:
        settings.recorder = before
