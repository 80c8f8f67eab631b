"""ImageReward (Xu et al. 2023) re-implemented on transformers' BLIP, loading the released checkpoint.

The ``image-reward`` package does not import with transformers 5, so this module rebuilds its network from
transformers parts: BLIP's ViT-L/16 image encoder (``BlipVisionModel``), BLIP's BERT text encoder with
cross-attention to the image (``BlipTextModel``), and ImageReward's 5-layer MLP head on the text [CLS] state; the
reward is standardised with ImageReward's published mean and std. ``ImageReward.pt`` (THUDM/ImageReward on the Hub)
is a plain state dict, read with ``torch.load(weights_only=True)`` (no pickle code runs) and renamed from BLIP's
original parameter names to transformers' (:func:`convert_state_dict`). Text goes through ``bert-base-uncased``'s
tokenizer with BLIP's two added tokens, padded to 35 tokens; images are resized (bicubic) and centre-cropped to 224
and normalised with CLIP's mean and std, as ImageReward does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import MetricError, hub_checkpoint, load_hf

CHECKPOINT_REPO = "THUDM/ImageReward"
CHECKPOINT_FILE = "ImageReward.pt"
TOKENIZER = "bert-base-uncased"
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_TEXT_LENGTH = 35
IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def vision_config(**overrides: Any):
    from transformers import BlipVisionConfig

    base: dict[str, Any] = dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=IMAGE_SIZE,
        patch_size=16,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
    )
    return BlipVisionConfig(**{**base, **overrides})


def text_config(**overrides: Any):
    from transformers import BlipTextConfig

    base: dict[str, Any] = dict(
        vocab_size=30524,
        hidden_size=768,
        encoder_hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=512,
        layer_norm_eps=1e-12,
        is_decoder=True,  # builds the cross-attention layers; the forward pass runs bidirectionally
    )
    return BlipTextConfig(**{**base, **overrides})


class RewardHead(nn.Module):
    """ImageReward's MLP: 768 -> 1024 -> 128 -> 64 -> 16 -> 1 (dropout between the first four; indices as released)."""

    def __init__(self, width: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(width, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ImageRewardModel(nn.Module):
    def __init__(self, vision_cfg=None, text_cfg=None):
        super().__init__()
        from transformers import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.vision = BlipVisionModel(vision_cfg or vision_config())
        self.text = BlipTextModel(text_cfg or text_config(), add_pooling_layer=False)
        self.head = RewardHead(self.text.config.hidden_size)

    def forward(self, pixel_values, input_ids, attention_mask) -> torch.Tensor:
        image = self.vision(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image,
            encoder_attention_mask=image_mask,
            return_dict=True,
        ).last_hidden_state
        reward = self.head(text[:, 0, :].float()).squeeze(-1)
        return (reward - REWARD_MEAN) / REWARD_STD


_VISION_RENAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ImageReward.pt's names (``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``mlp.layers.*``) -> ours."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            name = key[len("blip.visual_encoder.") :]
            for pattern, repl in _VISION_RENAMES:
                if re.search(pattern, name):
                    out["vision." + re.sub(pattern, repl, name)] = value
                    break
        elif key.startswith("blip.text_encoder.") and not key.endswith("position_ids"):
            out["text." + key[len("blip.text_encoder.") :]] = value
        elif key.startswith("mlp.layers."):
            out["head." + key[len("mlp.") :]] = value
    return out


def load_checkpoint(path: str, model: ImageRewardModel) -> None:
    """Load ``ImageReward.pt`` with ``weights_only=True`` into ``model``; every parameter must be covered."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MetricError(f"metric 'imagereward': cannot read {path} as a plain state dict ({e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    converted = convert_state_dict(state)
    missing, _unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise MetricError(
            f"metric 'imagereward': {path} lacks {len(missing)} parameters (e.g. {missing[0]}); "
            "is it ImageReward.pt from THUDM/ImageReward?"
        )


def tokenizer_for(source: str):
    from transformers import BertTokenizer

    tok = load_hf("imagereward", BertTokenizer, source, "--imagereward-tokenizer")
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tok


def preprocess(images: list, size: int = IMAGE_SIZE) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    out = []
    for im in images:
        im = im.convert("RGB")
        scale = size / min(im.size)
        w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
        im = im.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
    x = torch.stack(out)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class ImageReward:
    name = "imagereward"

    def __init__(
        self,
        checkpoint: str | None = None,
        tokenizer: str = TOKENIZER,
        device: str = "cpu",
        loader: Callable | None = None,
        **_,
    ):
        if loader is not None:
            self.model, self.tokenizer = loader()
            self.id = "custom"
        else:
            if checkpoint is None:
                checkpoint = hub_checkpoint(self.name, CHECKPOINT_REPO, CHECKPOINT_FILE, "--imagereward-checkpoint")
            self.model = ImageRewardModel()
            load_checkpoint(checkpoint, self.model)
            self.tokenizer = tokenizer_for(tokenizer)
            self.id = f"{CHECKPOINT_REPO}/{CHECKPOINT_FILE}"
        self.model = self.model.to(device).eval()
        self.device = device

    @torch.no_grad()
    def score(self, images: list, prompts: list[str]) -> list[float]:
        size = self.model.vision.config.image_size
        text = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_TEXT_LENGTH, return_tensors="pt"
        )
        pixels = preprocess(images, size).to(self.device, next(self.model.parameters()).dtype)
        reward = self.model(pixels, text["input_ids"].to(self.device), text["attention_mask"].to(self.device))
        return reward.float().tolist()
