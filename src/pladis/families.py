"""Model-family knowledge: which attention modules of which diffusers model PLADIS enters, and how.

`pladis.adapters.find_targets` asks `family_targets(model, settings)` first; a model no family names gets the
generic treatment (every module with `is_cross_attention`, joint attention reported as unsupported). Each family is
a small function returning `(name, module, attend)` triples (attend None = plain cross-attention over all keys):

- cross-attention transformers (SANA, PixArt-Sigma, Wan, LTX-Video): the text attention is a separate
  cross-attention module; PLADIS replaces its map over the text keys, padding masks included;
- joint attention (MMDiT: FLUX, SD3/SD3.5, CogVideoX): text and image tokens share one attention; one adapter,
  `pladis.adapters.JointAttend`, changes only the image-query rows' text block (see `pladis.joint`). A family only
  says where the text tokens are (first or last in the sequence) and how many there are.

Adding a model is adding an entry to `FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .adapters import JointAttend, Settings, _attend_cross, cross_attention_modules

Target = tuple[str, torch.nn.Module, Callable | None]


@dataclass(frozen=True)
class Family:
    name: str  # as people call the models
    models: tuple[str, ...]  # diffusers model class names (subclasses match too)
    how: str  # how PLADIS enters, for the docs
    targets: Callable[[torch.nn.Module, Settings], list[Target]]


def _check_processor(name: str, module: torch.nn.Module, known: tuple[str, ...], family: str) -> None:
    """Joint attention is entered through a processor whose layout pladis knows; refuse any other."""
    processor = module.processor
    cls = type(processor).__name__
    if cls not in known:
        raise ValueError(
            f"pladis: '{name}' uses the attention processor {cls}, which pladis does not know for {family} joint "
            f"attention (known: {', '.join(known)}); PLADIS needs to know where its text tokens are. Put the stock "
            "processor back (e.g. model.set_attn_processor(...)) before pladis.apply"
        )


# --------------------------------------------------------------------------- cross-attention transformers


def _cross(model: torch.nn.Module, settings: Settings) -> list[Target]:
    return [(name, module, None) for name, module in cross_attention_modules(model)]


def _wan(model: torch.nn.Module, settings: Settings) -> list[Target]:
    targets = []
    for name, module in cross_attention_modules(model):
        attend = None
        if getattr(module, "add_k_proj", None) is not None:
            # image-to-video: the processor attends to the CLIP image tokens first, then to the text
            attend = _attend_cross(settings, name)
            attend.sdpa_call = 1
        targets.append((name, module, attend))
    return targets


def _ltx(model: torch.nn.Module, settings: Settings) -> list[Target]:
    # LTXAttention has no is_cross_attention flag: attn2 of each block attends to the text
    return [(f"transformer_blocks.{i}.attn2", block.attn2, None) for i, block in enumerate(model.transformer_blocks)]


# --------------------------------------------------------------------------- joint attention (MMDiT)

FLUX_PROCESSORS = ("FluxAttnProcessor", "FluxIPAdapterAttnProcessor")
SD3_PROCESSORS = ("JointAttnProcessor2_0", "FusedJointAttnProcessor2_0", "SD3IPAdapterJointAttnProcessor2_0")
COGVIDEOX_PROCESSORS = ("CogVideoXAttnProcessor2_0", "FusedCogVideoXAttnProcessor2_0")


def _recorded_text_length(settings: Settings, name: str) -> Callable:
    """Text length of a FLUX single-stream block: the block has already joined [text, image], so the length is the
    one the transformer's forward pre-hook (installed by `pladis.apply`) recorded from its encoder_hidden_states."""

    def text_length(args: tuple, kwargs: dict) -> int:
        if settings.text_length is None:
            raise RuntimeError(
                f"pladis: the text length for '{name}' was not recorded (the transformer's forward did not run, or "
                "ran without encoder_hidden_states); apply PLADIS to the transformer or pipeline, not to a block"
            )
        return settings.text_length

    return text_length


def _flux(model: torch.nn.Module, settings: Settings) -> list[Target]:
    double = [(f"transformer_blocks.{i}.attn", b) for i, b in enumerate(model.transformer_blocks)]
    single = [(f"single_transformer_blocks.{i}.attn", b) for i, b in enumerate(model.single_transformer_blocks)]
    for name, block in double + single:
        _check_processor(name, block.attn, FLUX_PROCESSORS, "FLUX")
    # double stream: the text comes in as encoder_hidden_states (add_*_proj projections) and leads the sequence
    targets = [(name, block.attn, JointAttend(settings, name, text_first=True)) for name, block in double]
    # single stream: the block has already joined [text, image]; the transformer's forward records the text length
    targets += [
        (
            name,
            block.attn,
            JointAttend(settings, name, text_first=True, text_length=_recorded_text_length(settings, name)),
        )
        for name, block in single
    ]
    return targets


def _sd3(model: torch.nn.Module, settings: Settings) -> list[Target]:
    # JointTransformerBlock.attn: [image, text]; SD3.5's attn2 (MMDiT-X) and the text-free blocks of SD3.5
    # ControlNets are image self-attention, left alone
    targets = []
    for i, block in enumerate(model.transformer_blocks):
        name = f"transformer_blocks.{i}.attn"
        if getattr(block.attn, "added_kv_proj_dim", None) is None:
            continue
        _check_processor(name, block.attn, SD3_PROCESSORS, "SD3")
        targets.append((name, block.attn, JointAttend(settings, name, text_first=False)))
    return targets


def _cogvideox(model: torch.nn.Module, settings: Settings) -> list[Target]:
    # the processor itself joins [text, video] from the encoder_hidden_states it is given
    targets = []
    for i, block in enumerate(model.transformer_blocks):
        name = f"transformer_blocks.{i}.attn1"
        _check_processor(name, block.attn1, COGVIDEOX_PROCESSORS, "CogVideoX")
        targets.append((name, block.attn1, JointAttend(settings, name, text_first=True)))
    return targets


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "SANA",
            ("SanaTransformer2DModel",),
            "cross-attention `attn2` of each block (SanaAttnProcessor2_0, "
            "intercepted), text padding mask as an additive bias",
            _cross,
        ),
        Family(
            "PixArt-Sigma",
            ("PixArtTransformer2DModel",),
            "cross-attention `attn2` of each block "
            "(AttnProcessor2_0, native path), T5 padding mask as an additive bias",
            _cross,
        ),
        Family(
            "Wan 2.x",
            ("WanTransformer3DModel",),
            "cross-attention `attn2` of each block (WanAttnProcessor, "
            "intercepted); for image-to-video the text attention (the 2nd SDPA call) only",
            _wan,
        ),
        Family(
            "LTX-Video",
            ("LTXVideoTransformer3DModel",),
            "cross-attention `attn2` of each block "
            "(LTXVideoAttnProcessor, intercepted), text padding mask as an additive bias",
            _ltx,
        ),
        Family(
            "FLUX",
            ("FluxTransformer2DModel", "FluxControlNetModel"),
            "joint attention, text first: double-stream `attn` (text via "
            "add_*_proj) and single-stream `attn` (text length recorded from the transformer's forward inputs); RoPE, QK "
            "norms, IP-Adapter stay the processor's own",
            _flux,
        ),
        Family(
            "SD3 / SD3.5",
            ("SD3Transformer2DModel", "SD3ControlNetModel"),
            "joint attention, text last: `attn` of each "
            "JointTransformerBlock (JointAttnProcessor2_0); SD3.5's image-only `attn2` untouched",
            _sd3,
        ),
        Family(
            "CogVideoX",
            ("CogVideoXTransformer3DModel",),
            "joint attention, text first: `attn1` of each block "
            "(CogVideoXAttnProcessor2_0), video RoPE stays the processor's own",
            _cogvideox,
        ),
    )
}

_BY_MODEL = {model: family for family in FAMILIES.values() for model in family.models}


def family_of(model: torch.nn.Module) -> Family | None:
    """The family of `model` (by its class or a base class), or None."""
    for cls in type(model).__mro__:
        family = _BY_MODEL.get(cls.__name__)
        if family is not None:
            return family
    return None


def family_targets(model: torch.nn.Module, settings: Settings) -> list[Target] | None:
    """The targets of `model` if a family knows it, else None (generic cross-attention scan)."""
    family = family_of(model)
    return None if family is None else family.targets(model, settings)
