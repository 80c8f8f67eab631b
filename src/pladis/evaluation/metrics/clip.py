"""CLIPScore as torchmetrics defines it: ``100 * max(cos(E_image, E_text), 0)`` per image.

The CLIP model defaults to ``openai/clip-vit-large-patch14`` (torchmetrics' default). The paper does not name its
CLIP; ViT-L/14 is the common choice for CLIPScore in diffusion papers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import features, load_hf

DEFAULT_MODEL = "openai/clip-vit-large-patch14"


class ClipScore:
    name = "clip"

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu", loader: Callable | None = None, **_):
        from transformers import CLIPModel, CLIPProcessor

        if loader is not None:
            self.model, self.processor = loader()
        else:
            self.model = load_hf(self.name, CLIPModel, model, "--clip-model")
            self.processor = load_hf(self.name, CLIPProcessor, model, "--clip-model")
        self.model = self.model.to(device).eval()
        self.device = device
        self.id = model if loader is None else "custom"

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
