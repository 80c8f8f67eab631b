"""PickScore (Kirstain et al. 2023): ``exp(logit_scale) * cos(E_image, E_text)`` with the PickScore_v1 CLIP-H.

Model ``yuvalkirstain/PickScore_v1`` and processor ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, via transformers,
as its authors publish it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import features, load_clip

DEFAULT_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScore:
    name = "pick"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        processor: str = DEFAULT_PROCESSOR,
        device: str = "cpu",
        loader: Callable | None = None,
        **_,
    ):
        options = ("--pick-model", "--pick-processor")
        self.model, self.processor, self.id = load_clip(self.name, model, processor, options, device, loader)
        self.device = device

    @torch.no_grad()
    def score(self, images: list, prompts: list[str]) -> list[float]:
        text = self.processor(text=prompts, return_tensors="pt", padding=True, truncation=True, max_length=77)
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        img = features(self.model.get_image_features(pixel_values=pixels)).float()
        txt = features(
            self.model.get_text_features(
                input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device)
            )
        ).float()
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return (self.model.logit_scale.exp().float() * (img * txt).sum(-1)).tolist()
