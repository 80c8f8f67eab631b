"""The embedded demo model's programmatic checker: colour, shape, position, relation, count and all, per image.

``pladis.demo.scenes.parse_caption`` turns a caption into a spec, ``pladis.demo.checker.judge`` checks the image
against it. A prompt outside the demo grammar gets no verdict (None).
"""

from __future__ import annotations

import numpy as np
import torch


class Alignment:
    name = "alignment"
    id = "pladis.demo.checker"

    def __init__(self, **_):
        from pladis.demo.checker import CATEGORIES

        self.categories = list(CATEGORIES)

    def score(self, images: list, prompts: list[str]) -> list[dict[str, float | None] | None]:
        from pladis.demo.checker import judge
        from pladis.demo.scenes import parse_caption

        specs = [parse_caption(p) for p in prompts]
        keep = [i for i, s in enumerate(specs) if s is not None]
        out: list[dict[str, float | None] | None] = [None] * len(prompts)
        if not keep:
            return out
        arrays = [np.asarray(images[i].convert("RGB"), dtype=np.float32) / 255.0 for i in keep]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        verdicts = judge(batch, [s for s in specs if s is not None])
        for i, v in zip(keep, verdicts):
            out[i] = {k: (None if v.get(k) is None else float(bool(v[k]))) for k in self.categories}
        return out
