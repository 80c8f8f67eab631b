"""FID against a reference folder (e.g. MS-COCO val images), by torchmetrics' ``FrechetInceptionDistance``.

The Inception-v3 feature extractor is torch-fidelity's (the TF-ported FID Inception), which torchmetrics wraps; it
needs ``pip install 'pladis[fid]'`` (torch-fidelity pulls torchvision). Offline, pass the weights file
(``pt_inception-2015-12-05-6726825d.pth``) with ``--fid-weights``. Reference images are centre-cropped to a square
and resized (bicubic) to the generated images' size; generated images are used as they are. Reference features are
computed once per scoring run and kept across configs (``reset_real_features=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import MetricError, MissingBackend, require

PIP = "pip install 'pladis[fid]'  (that is: pip install torchmetrics torch-fidelity; torch-fidelity pulls torchvision)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def to_uint8(images: list, size: tuple[int, int] | None = None) -> torch.Tensor:
    from PIL import Image

    arrays = []
    for im in images:
        im = im.convert("RGB")
        if size is not None and im.size != size:
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize(size, Image.Resampling.BICUBIC)
        arrays.append(np.asarray(im, dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _read_rgb(path: Path):
    """The image at `path` in RGB, its file closed (a folder of thousands of references must not hold them open)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def reference_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise MetricError(f"--fid-ref {folder}: not a folder; give a folder of reference images (e.g. COCO val2014)")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(found) < 2:
        raise MetricError(f"--fid-ref {folder}: needs at least 2 images, found {len(found)}")
    return found


class FID:
    name = "fid"

    def __init__(
        self,
        reference: str | Path | None = None,
        weights: str | None = None,
        device: str = "cpu",
        feature: Callable | None = None,
        **_,
    ):
        if reference is None:
            raise MetricError("metric 'fid' needs --fid-ref FOLDER of reference images (e.g. MS-COCO val2014)")
        self.reference = reference_images(Path(reference))
        image_mod = require(self.name, "torchmetrics.image.fid", "torchmetrics", PIP)
        if feature is None:
            from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

            if not _TORCH_FIDELITY_AVAILABLE:
                raise MissingBackend(self.name, "torch-fidelity", PIP)
        self.metric = image_mod.FrechetInceptionDistance(
            feature=feature if feature is not None else 2048,
            reset_real_features=False,
            feature_extractor_weights_path=weights,
        ).to(device)
        self.device = device
        self.id = "torchmetrics FID, torch-fidelity Inception-v3 (2048)" if feature is None else "custom features"
        self._real_size: tuple[int, int] | None = None

    def add_reference(self, size: tuple[int, int], batch_size: int = 32, progress=None) -> None:
        if self._real_size == size:
            return
        if self._real_size is not None:
            self.metric.reset_real_features = True
            self.metric.reset()
            self.metric.reset_real_features = False
        for i in range(0, len(self.reference), batch_size):
            images = [_read_rgb(p) for p in self.reference[i : i + batch_size]]
            self.metric.update(to_uint8(images, size).to(self.device), real=True)
            if progress is not None:
                progress(len(images))
        self._real_size = size

    def compute(self, images_of_config: Callable[[int], list[list]], size: tuple[int, int]) -> float:
        """FID of one config's images (given as an iterator of PIL batches) against the reference."""
        self.metric.reset()  # keeps the reference features
        for batch in images_of_config(32):
            self.metric.update(to_uint8(batch).to(self.device), real=False)
        return float(self.metric.compute())
