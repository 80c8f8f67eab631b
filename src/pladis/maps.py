"""Cross-attention maps per text token, averaged over steps and layers (paper Fig. 10), for any pipeline PLADIS knows.

    handle = pladis.apply(pipe, scale=2.0)
    positions = pladis.maps.token_positions(pipe, prompt, ["dog", "rabbit"])   # {"dog": [3], "rabbit": [8]}
    with pladis.maps.record_maps(pipe, positions) as maps:
        image = pipe(prompt).images[0]                  # the same image as without recording, bit for bit
    heat = maps.token_maps(image.size[::-1])            # {"dog": (H, W) array, "rabbit": ...}

Recording keeps one running sum per layer (keys carry their component: `unet.`, `controlnet.`, `transformer.`) of
the head-averaged map of the image-query rows over the chosen text tokens: never every map. Cross-attention layers
(UNets, SANA, PixArt) give their whole map; joint-attention layers (FLUX, SD3) their image-query rows over the text
keys. `token_maps` upsamples each layer's mean to the image and averages the layers. With PLADIS at scale 0 the
stock maps are recorded, so one applied pipeline gives the baseline and the PLADIS maps.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .api import _hooks


@dataclass
class AttentionMaps:
    """Running sums of per-token maps: `sums[layer]` is (batch, image tokens, chosen tokens), `counts[layer]` calls."""

    tokens: dict[str, list[int]]  # word -> its text-key positions
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def positions(self) -> list[int]:
        return sorted({p for ps in self.tokens.values() for p in ps})

    def add(self, name: str, weights: torch.Tensor, scores: torch.Tensor, text: slice) -> None:
        """The recorder: image-query rows over the chosen text keys, averaged over heads, added to the layer's sum."""
        length = weights.shape[-1]
        if weights.shape[-2] == length and (text.start or 0, text.stop) != (0, length):  # joint: rows = image tokens
            start, stop = text.start or 0, text.stop
            rows = slice(stop, length) if start == 0 else slice(0, start)
        else:
            rows = slice(0, weights.shape[-2])
        positions = self.positions
        n_text = (text.stop or length) - (text.start or 0)
        if positions and positions[-1] >= n_text:
            raise ValueError(
                f"pladis.maps: token position {positions[-1]} is past the {n_text} text tokens of '{name}'; "
                "choose tokens inside the prompt the pipeline encodes"
            )
        columns = torch.tensor([(text.start or 0) + p for p in positions], device=weights.device)
        if weights.dim() == 3:
            weights = weights.unsqueeze(1)
        head_mean = weights[..., rows, :].index_select(-1, columns).float().mean(dim=1)
        head_mean = head_mean.reshape(weights.shape[0], -1, len(positions)).detach()
        if name in self.sums and self.sums[name].shape == head_mean.shape:
            self.sums[name] += head_mean
            self.counts[name] += 1
        else:
            self.sums[name], self.counts[name] = head_mean.clone(), 1

    def token_maps(self, image_size: tuple[int, int], row: int = -1) -> dict[str, np.ndarray]:
        """{word: (height, width) map}: each layer's mean over its calls, upsampled (bilinear) to `image_size`
        (height, width), averaged over layers; a word of several tokens sums them. `row`: the batch row (the last:
        the conditional prompt of a CFG batch)."""
        if not self.sums:
            raise RuntimeError(
                "pladis.maps: no attention map was recorded (the pipeline did not run inside record_maps, or "
                "PLADIS is on no layer)"
            )
        height, width = image_size
        total = torch.zeros(len(self.positions), height, width)
        for name, summed in self.sums.items():
            mean = summed[row].cpu() / self.counts[name]  # (image tokens, chosen tokens)
            h, w = grid_of(mean.shape[0], height / width)
            layer = mean.T.reshape(1, -1, h, w)
            total += F.interpolate(layer, size=(height, width), mode="bilinear", align_corners=False)[0]
        total /= len(self.sums)
        index = {p: i for i, p in enumerate(self.positions)}
        return {word: total[[index[p] for p in ps]].sum(0).numpy() for word, ps in self.tokens.items()}

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The running sums and counts as arrays (for `np.savez`): `{prefix}{layer}` and `{prefix}{layer}.count`."""
        out = {}
        for name, summed in self.sums.items():
            out[prefix + name] = summed.cpu().numpy()
            out[prefix + name + ".count"] = np.array(self.counts[name])
        return out


def grid_of(tokens: int, aspect: float) -> tuple[int, int]:
    """(height, width) with height * width == tokens closest to the aspect ratio height / width."""
    best = min(
        (h for h in range(1, tokens + 1) if tokens % h == 0), key=lambda h: abs(math.log(h * h / tokens / aspect))
    )
    return best, tokens // best


@contextlib.contextmanager
def record_maps(target, tokens: Mapping[str, Sequence[int]]) -> Iterator[AttentionMaps]:
    """Record per-token maps of an applied pipeline (or model) while the block runs; the outputs are unchanged.

    tokens: {word: text-key positions}, e.g. from `token_positions`. PLADIS must be applied (scale 0 records the
    stock maps).
    """
    hooks = _hooks(target)
    if not hooks:
        raise ValueError("pladis.maps: PLADIS is not applied; call pladis.apply(pipe, ...) first (scale=0 for stock)")
    maps = AttentionMaps({word: list(ps) for word, ps in tokens.items()})
    if not maps.positions:
        raise ValueError("pladis.maps: give at least one token to record")
    all_settings = list({id(h.settings): h.settings for _, h in hooks}.values())
    before = [s.recorder for s in all_settings]
    for settings in all_settings:
        settings.recorder = maps.add
    try:
        yield maps
    finally:
        for settings, recorder in zip(all_settings, before):
            settings.recorder = recorder


# --------------------------------------------------------------------------- words to token positions


def text_tokenizer(pipe):
    """The tokenizer whose tokens are the text keys that PLADIS sees: T5's for FLUX (`tokenizer_2`), else the first
    (CLIP for SD 1.5/SDXL and the leading block of SD3's keys, T5 for PixArt)."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None and "Flux" in type(transformer).__name__ and getattr(pipe, "tokenizer_2", None):
        return pipe.tokenizer_2
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"pladis.maps: {type(pipe).__name__} has no tokenizer to find words in")
    return tokenizer


def token_positions(pipe_or_tokenizer, prompt: str, words: Sequence[str]) -> dict[str, list[int]]:
    """{word: positions of its tokens in the prompt's encoding} (CLIP: after the start token; T5: from 0).

    A word may be several tokens; every occurrence in the prompt counts. An unknown word raises with the prompt's
    tokens listed.
    """
    tokenizer = pipe_or_tokenizer if hasattr(pipe_or_tokenizer, "encode") else text_tokenizer(pipe_or_tokenizer)
    ids = list(tokenizer(prompt).input_ids)
    found: dict[str, list[int]] = {}
    for word in words:
        positions: list[int] = []
        for variant in (word, " " + word, word.lower()):
            piece = list(tokenizer(variant, add_special_tokens=False).input_ids)
            positions = [i + k for i in range(len(ids) - len(piece) + 1) if ids[i : i + len(piece)] == piece for k in range(len(piece))] if piece else []  # fmt: skip
            if positions:
                break
        if not positions:
            shown = " ".join(tokenizer.convert_ids_to_tokens(ids))
            raise ValueError(f"pladis.maps: the word {word!r} is not in the prompt; its tokens are: {shown}")
        found[word] = positions
    return found


# --------------------------------------------------------------------------- the figure


def heatmap(values: np.ndarray, vmax: float | None = None):
    """A (H, W) map as a PIL image in a dark-to-bright colour scale (0 black, `vmax` or the map's max yellow)."""
    from PIL import Image

    top = float(vmax if vmax is not None else values.max()) or 1.0
    x = np.clip(values / top, 0.0, 1.0)
    stops = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)
    position = x * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    t = (position - low)[..., None]
    rgb = stops[low] * (1 - t) + stops[low + 1] * t
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def figure(rows: Sequence[tuple[str, object, dict[str, np.ndarray]]], caption: str | None = None):
    """One row per run (label, image, {word: map}): the image, then one map per word; each word's column shares
    its colour scale across rows so baseline and PLADIS compare directly."""
    from .compare import enlarged, labelled_grid

    words = list(rows[0][2])
    tops = {w: max(float(maps[w].max()) for _, _, maps in rows) for w in words}
    shown = [enlarged(image) for _, image, _ in rows]  # type: ignore[arg-type]
    cells = [[im, *(heatmap(maps[w], tops[w]).resize(im.size) for w in words)] for im, (_, _, maps) in zip(shown, rows)]
    return labelled_grid(cells, [label for label, _, _ in rows], ["image", *words], caption)


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """`np.savez_compressed` written atomically (a temp file in the same folder, fsync, rename)."""
    from .files import atomic_write

    return atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))  # type: ignore[arg-type]
