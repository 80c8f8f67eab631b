"""Model-family knowledge as data: which attention modules of which diffusers model PLADIS enters, and how.

One `Family` per model family; `FAMILIES` is the table, `family_of(model)` looks a model up (by its class or a base
class) and falls back to `GENERIC` (every module flagged `is_cross_attention`: SD1.5, SDXL, ControlNet, ...).
Each family lists `Rule`s: a rule picks modules (by name pattern, or by the `is_cross_attention` flag) and says
what kind of attention they compute:

- "cross": a separate cross-attention (UNets, SANA, PixArt-Sigma, Wan, LTX-Video); PLADIS replaces its map over
  all keys (the text), padding masks included;
- "joint": text and image tokens share one attention (MMDiT: FLUX, SD3/SD3.5, CogVideoX); PLADIS changes only the
  image-query rows' text block (`pladis.joint`). The rule says where the text sits (first or last) and where its
  length comes from (the module call's `encoder_hidden_states`, or the denoiser's, recorded per forward).

`timestep_scale` converts the denoiser's timestep argument to scheduler units (0..1000) in which timestep windows
are given for every family (FLUX's pipelines pass t/1000). Adding a model is adding a row; no code elsewhere.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Literal

import torch

AttentionKind = Literal["cross", "joint"]


@dataclass(frozen=True)
class Rule:
    """Picks modules of a model and says how PLADIS enters them."""

    pattern: str  # fnmatch on module names; "" = every module flagged is_cross_attention
    kind: AttentionKind = "cross"
    text: Literal["all", "first", "last"] = "all"  # where the text keys are in the attended sequence
    text_length: Literal["call", "recorded"] = "call"  # joint: from the call's encoder_hidden_states, or recorded
    sdpa_call: int = 0  # which attention call of the processor is the text attention (0 = the first)
    requires: str | None = None  # the module must have this attribute set (not None)
    excludes: str | None = None  # ... and must not have this one set

    def matches(self, name: str, module: torch.nn.Module) -> bool:
        if not is_attention_module(module):
            return False
        if self.pattern:
            if not fnmatch.fnmatchcase(name, self.pattern):
                return False
        elif not getattr(module, "is_cross_attention", False):
            return False
        if self.requires and getattr(module, self.requires, None) is None:
            return False
        return not (self.excludes and getattr(module, self.excludes, None) is not None)


@dataclass(frozen=True)
class Family:
    name: str  # as people call the models
    models: tuple[str, ...]  # diffusers model class names (subclasses match too)
    how: str  # how PLADIS enters, for the docs
    rules: tuple[Rule, ...]
    processors: tuple[str, ...] = ()  # joint attention: the processor classes whose layout is known
    layer_groups: dict[str, str] = field(default_factory=dict)  # group name -> fnmatch pattern on module names
    timestep_scale: float = 1.0  # denoiser timestep x this = scheduler units (0..1000)
    timestep_config: str | None = None  # a config entry the pipeline multiplies the timestep by (SANA)

    def scheduler_units(self, model: torch.nn.Module, timestep: float) -> float:
        """The denoiser's timestep argument in scheduler units (0..1000)."""
        divisor = float(getattr(getattr(model, "config", None), self.timestep_config or "", None) or 1.0)
        return timestep * self.timestep_scale / divisor


def is_attention_module(module: torch.nn.Module) -> bool:
    return hasattr(module, "set_processor") and hasattr(module, "processor")


UNET_GROUPS = {"down": "down_blocks.*", "mid": "mid_block.*", "up": "up_blocks.*"}
BLOCK_GROUPS = {"blocks": "transformer_blocks.*"}
CROSS = (Rule(""),)

GENERIC = Family(
    "UNet (SD 1.5, SDXL, ControlNet, ...)",
    ("UNet2DConditionModel", "ControlNetModel", "ControlNetXSAdapter", "UNetMotionModel"),
    "every attention module flagged `is_cross_attention` (`attn2`), native fast path for stock processors",
    CROSS,
    layer_groups=UNET_GROUPS,
)

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        GENERIC,
        Family(
            "SANA",
            ("SanaTransformer2DModel",),
            "cross-attention `attn2` of each block, text padding mask as an additive bias",
            CROSS,
            layer_groups=BLOCK_GROUPS,
            timestep_config="timestep_scale",
        ),
        Family(
            "PixArt-Sigma",
            ("PixArtTransformer2DModel",),
            "cross-attention `attn2` of each block (native path), T5 padding mask as an additive bias",
            CROSS,
            layer_groups=BLOCK_GROUPS,
        ),
        Family(
            "Wan 2.x",
            ("WanTransformer3DModel",),
            "cross-attention `attn2` of each block; in image-to-video only the text attention (the 2nd call)",
            (Rule("", excludes="add_k_proj"), Rule("", requires="add_k_proj", sdpa_call=1)),
            layer_groups={"blocks": "blocks.*"},
        ),
        Family(
            "LTX-Video",
            ("LTXVideoTransformer3DModel",),
            "cross-attention `attn2` of each block (no is_cross_attention flag), text padding mask as a bias",
            (Rule("transformer_blocks.*.attn2"),),
            layer_groups=BLOCK_GROUPS,
        ),
        Family(
            "FLUX",
            ("FluxTransformer2DModel", "FluxControlNetModel"),
            "joint attention, text first: double-stream `attn` (text via add_*_proj) and single-stream `attn` (text "
            "length recorded from the transformer's inputs); RoPE, QK norms, IP-Adapter stay the processor's own",
            (
                Rule("transformer_blocks.*.attn", "joint", "first"),
                Rule("single_transformer_blocks.*.attn", "joint", "first", text_length="recorded"),
            ),
            processors=("FluxAttnProcessor", "FluxIPAdapterAttnProcessor", "FluxAttnProcessor2_0"),
            layer_groups={"double": "transformer_blocks.*", "single": "single_transformer_blocks.*"},
            timestep_scale=1000.0,
        ),
        Family(
            "SD3 / SD3.5",
            ("SD3Transformer2DModel", "SD3ControlNetModel"),
            "joint attention, text last: `attn` of each JointTransformerBlock; SD3.5's image-only `attn2` untouched",
            (Rule("transformer_blocks.*.attn", "joint", "last", requires="added_kv_proj_dim"),),
            processors=("JointAttnProcessor2_0", "FusedJointAttnProcessor2_0", "SD3IPAdapterJointAttnProcessor2_0"),
            layer_groups=BLOCK_GROUPS,
        ),
        Family(
            "CogVideoX",
            ("CogVideoXTransformer3DModel",),
            "joint attention, text first: `attn1` of each block; video RoPE stays the processor's own",
            (Rule("transformer_blocks.*.attn1", "joint", "first"),),
            processors=("CogVideoXAttnProcessor2_0", "FusedCogVideoXAttnProcessor2_0"),
            layer_groups=BLOCK_GROUPS,
        ),
    )
}

_BY_MODEL = {model: family for family in FAMILIES.values() for model in family.models}


def family_of(model: torch.nn.Module) -> Family:
    """The family of `model` (by its class or a base class); `GENERIC` for a model no row names."""
    for cls in type(model).__mro__:
        family = _BY_MODEL.get(cls.__name__)
        if family is not None:
            return family
    return GENERIC


def targets(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, Rule]]:
    """(name, module, rule) of every module of `model` PLADIS enters, by its family's rules (first rule wins)."""
    rules = family_of(model).rules
    found = []
    for name, module in model.named_modules():
        rule = next((r for r in rules if r.matches(name, module)), None)
        if rule is not None:
            found.append((name, module, rule))
    return found


def unknown_joint_modules(model: torch.nn.Module) -> list[str]:
    """Attention modules that mix text into self-attention (added key/value projections, not cross-attention)."""
    return [
        name
        for name, module in model.named_modules()
        if is_attention_module(module)
        and getattr(module, "added_kv_proj_dim", None) is not None
        and not getattr(module, "is_cross_attention", False)
    ]
