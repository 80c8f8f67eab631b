"""HPSv2.1 (Wu et al. 2023): open_clip ViT-H-14 with the HPS_v2.1 weights; score = 100 * cos(E_image, E_text).

An optional extra because open_clip needs torchvision: ``pip install 'pladis[hps]'``. The checkpoint
(``HPS_v2.1_compressed.pt`` from ``xswu/HPSv2``) is read with ``torch.load(weights_only=True)``; its ``state_dict``
entry holds the weights.
"""

from __future__ import annotations

import torch

from . import hub_checkpoint, require

PIP = "pip install 'pladis[hps]'  (that is: pip install open_clip_torch torchvision)"
CHECKPOINT_REPO = "xswu/HPSv2"
CHECKPOINT_FILE = "HPS_v2.1_compressed.pt"
ARCH = "ViT-H-14"


class HPSv21:
    name = "hps"

    def __init__(self, checkpoint: str | None = None, device: str = "cpu", **_):
        open_clip = require(self.name, "open_clip", "open_clip_torch (and torchvision)", PIP)
        if checkpoint is None:
            checkpoint = hub_checkpoint(self.name, CHECKPOINT_REPO, CHECKPOINT_FILE, "--hps-checkpoint")
        model, _, self.preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=None)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        self.model = model.to(device).eval()
        self.tokenizer = open_clip.get_tokenizer(ARCH)
        self.device = device
        self.id = f"{CHECKPOINT_REPO}/{CHECKPOINT_FILE}"

    @torch.no_grad()
    def score(self, images: list, prompts: list[str]) -> list[float]:
        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        img = self.model.encode_image(pixels).float()
        txt = self.model.encode_text(self.tokenizer(prompts).to(self.device)).float()
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return (100 * (img * txt).sum(-1)).tolist()
