"""A programmatic judge: does an image show what its caption (a :class:`~pladis.demo.scenes.Spec`) asks for?

It segments the image into coloured blobs (pixels brighter than a threshold, labelled with the nearest
palette colour by chromaticity, 4-connected, at least ``min_area`` pixels), classifies each blob's shape
from its fill ratio, vertical asymmetry and filled bounding-box corners, and answers per category:

* ``color``    every prompted colour is present as a blob
* ``shape``    every prompted (colour, shape) pair is present as a blob
* ``position`` (position prompts) the largest blob of the prompted colour lies in the named outer 40 %
* ``relation`` (relation prompts) the largest blobs of the two colours are in the named relation,
               judged on the axis of their larger centroid offset
* ``count``    (count prompts) the number of blobs of the prompted colour equals the number
* ``size``     (prompts that say ``big`` or ``small``) each such object's blob is of that size, judged by its
               equivalent radius (area over the shape's area per squared radius) against :data:`SIZE_SPLIT`
* ``all``      every category that applies is right
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .scenes import COLOR_NAMES, COLORS, Spec

CATEGORIES = ["color", "shape", "position", "relation", "count", "size", "all"]
# area of a shape of radius r, over r**2 (see scenes.render); small objects have r <= 4, big ones r >= 5.5
AREA_PER_R2 = {"circle": 3.1416, "square": 3.1406, "triangle": 2.2}
SIZE_SPLIT = 4.75  # pixels of equivalent radius, at 32x32


@dataclass
class Blob:
    color: str
    shape: str
    area: int
    cx: float
    cy: float

    @property
    def radius(self) -> float:
        return float(np.sqrt(self.area / AREA_PER_R2[self.shape]))


def label_pixels(images: torch.Tensor, threshold: float = 0.35) -> torch.Tensor:
    """(n, 3, H, W) in [0, 1] -> (n, H, W) palette index per pixel, -1 for background."""
    x = images.float().clamp(0, 1)
    mx = x.amax(1)  # (n, H, W)
    chrom = x / mx.clamp(min=1e-6)[:, None]
    pal = torch.tensor(list(COLORS.values()))
    pal = pal / pal.amax(1, keepdim=True)
    d = ((chrom[:, None] - pal[None, :, :, None, None]) ** 2).sum(2)  # (n, C, H, W)
    cls = d.argmin(1)
    return torch.where(mx > threshold, cls, torch.full_like(cls, -1))


def connected_components(cls: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """4-connected components of equal class (>= 0) in one (H, W) class map.

    Returns (class, ys, xs) per component. Plain flood fill: a 32x32 image takes well under a millisecond.
    """
    h, w = cls.shape
    flat = cls.ravel().tolist()
    seen = [False] * (h * w)
    comps = []
    for start, c in enumerate(flat):
        if c < 0 or seen[start]:
            continue
        seen[start] = True
        stack = [start]
        members = []
        while stack:
            p = stack.pop()
            members.append(p)
            y, x = divmod(p, w)
            for q, ok in ((p - 1, x > 0), (p + 1, x < w - 1), (p - w, y > 0), (p + w, y < h - 1)):
                if ok and not seen[q] and flat[q] == c:
                    seen[q] = True
                    stack.append(q)
        m = np.asarray(members)
        comps.append((c, m // w, m % w))
    return comps


def classify_shape(ys: np.ndarray, xs: np.ndarray) -> str:
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    bh, bw = y1 - y0 + 1, x1 - x0 + 1
    area = len(ys)
    fill = area / float(bh * bw)
    top = (ys < (y0 + y1) / 2.0).sum()
    bottom = (ys > (y0 + y1) / 2.0).sum()
    asym = (bottom - top) / float(area)
    if asym > 0.2 or fill < 0.6:
        return "triangle"
    # a square fills its bounding box's corners, a circle does not (small circles can fill 88 % of the box)
    inside = set(zip(ys.tolist(), xs.tolist()))
    corners = sum((y, x) in inside for y in (y0, y1) for x in (x0, x1))
    return "square" if fill > 0.93 or (fill > 0.8 and corners >= 3) else "circle"


def find_blobs(images: torch.Tensor, min_area: int = 8, threshold: float = 0.35) -> list[list[Blob]]:
    """Coloured blobs of each image in a batch (n, 3, H, W) in [0, 1]."""
    cls = label_pixels(images, threshold).numpy()
    out: list[list[Blob]] = []
    for i in range(cls.shape[0]):
        blobs = []
        for c, ys, xs in connected_components(cls[i]):
            if len(ys) < min_area:
                continue
            blobs.append(
                Blob(COLOR_NAMES[c], classify_shape(ys, xs), len(ys), float(xs.mean()) + 0.5, float(ys.mean()) + 0.5)
            )
        out.append(blobs)
    return out


def judge_blobs(blobs: list[Blob], spec: Spec, size: int = 32) -> dict[str, bool | None]:
    """Per-category verdicts (None where a category does not apply to the prompt)."""
    res: dict[str, bool | None] = {k: None for k in CATEGORIES}
    by_color: dict[str, list[Blob]] = {}
    for b in blobs:
        by_color.setdefault(b.color, []).append(b)
    colors = [c for c, _ in spec.objects]
    res["color"] = all(c in by_color for c in colors)
    res["shape"] = all(any(b.shape == s for b in by_color.get(c, [])) for c, s in spec.objects)

    def main_blob(c, s):
        cand = by_color.get(c, [])
        if not cand:
            return None
        good = [b for b in cand if b.shape == s] or cand
        return max(good, key=lambda b: b.area)

    if spec.kind == "position":
        b = main_blob(*spec.objects[0])
        if b is None:
            res["position"] = False
        else:
            p = spec.position or ""
            res["position"] = {
                "top": b.cy < 0.4 * size,
                "bottom": b.cy > 0.6 * size,
                "left": b.cx < 0.4 * size,
                "right": b.cx > 0.6 * size,
            }[p]
    if spec.kind == "relation":
        a, b = main_blob(*spec.objects[0]), main_blob(*spec.objects[1])
        if a is None or b is None:
            res["relation"] = False
        else:
            dx, dy = b.cx - a.cx, b.cy - a.cy
            horiz = abs(dx) >= abs(dy)
            res["relation"] = {
                "left of": horiz and dx > 0,
                "right of": horiz and dx < 0,
                "above": (not horiz) and dy > 0,
                "below": (not horiz) and dy < 0,
            }[spec.relation or ""]
    if spec.kind == "count":
        c = spec.objects[0][0]
        res["count"] = len(by_color.get(c, [])) == spec.count
    if any(spec.sizes):
        ok = True
        for i, (c, s) in enumerate(spec.objects):
            want = spec.size_of(i)
            if want is None:
                continue
            b = main_blob(c, s)
            scale = size / 32.0
            ok = ok and b is not None and ((b.radius > SIZE_SPLIT * scale) == (want == "big"))
        res["size"] = ok
    res["all"] = all(v for k, v in res.items() if k != "all" and v is not None)
    return res


def judge(images: torch.Tensor, specs: list[Spec], chunk: int = 256) -> list[dict[str, bool | None]]:
    """Judge a batch of images (n, 3, H, W) in [0, 1] against their specs."""
    out: list[dict[str, bool | None]] = []
    size = images.shape[-1]
    for i in range(0, len(specs), chunk):
        blobs = find_blobs(images[i : i + chunk].detach().cpu())
        out.extend(judge_blobs(b, s, size) for b, s in zip(blobs, specs[i : i + chunk]))
    return out


def accuracy(verdicts: list[dict[str, bool | None]]) -> dict[str, tuple[float, int]]:
    """Category -> (accuracy, number of prompts it applies to)."""
    acc = {}
    for k in CATEGORIES:
        v = [bool(r[k]) for r in verdicts if r[k] is not None]
        acc[k] = (float(np.mean(v)) if v else float("nan"), len(v))
    return acc
