"""CLIPScore as torchmetrics defines it: ``100 * max(cos(E_image, E_text), 0)`` per image.

The CLIP model defaults to ``openai/clip-vit-large-patch14`` (torchmetrics' default). The paper does not name its
CLIP; ViT-L/14 is the common choice for CLIPScore in diffusion papers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import features, load_clip

DEFAULT_MODEL = "openai/clip-vit-large-patch14"


class ClipScore:
    name = "clip"

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu", loader: Callable | None = None, **_):
        options = ("--clip-model", "--clip-model")
        self.model, self.processor, self.id = load_clip(self.name, model, model, options, device, loader)
        self.device = device

    @torch.no_grad()
    def score(self, images: list, prompts: list[str]) -> list[float]:
        max_len = self.model.config.text_config.max_position_embeddings
        text = self.processor(text=prompts, return_tensors="pt", padding=True, truncation=True, max_length=max_len)
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        img = features(self.model.get_image_features(pixel_values=pixels))
        txt = features(
            self.model.get_text_features(
                input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device)
            )
        )
        cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
        return (100 * cos).clamp(min=0).tolist()
