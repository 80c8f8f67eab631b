"""Labelled image grids for side-by-side comparisons (PIL only).

:func:`labelled_grid` lays images out in rows and columns with a label above
each column, an optional label left of each row, and a caption strip below::

                 col 0      col 1
    row 0     [ image ]  [ image ]
    row 1     [ image ]  [ image ]
    caption text, wrapped to the grid width ...

Panels are pasted unscaled; a column is as wide as its widest image and a row
as tall as its tallest.  :func:`grid_layout` computes the same geometry
without drawing, so callers (and tests) can find each panel in the output.
:func:`save_image` writes an image, with text metadata (e.g. the settings that
produced it) when it is a PNG.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .files import atomic_write

__all__ = [
    "DEFAULT_BORDER",
    "FALLBACK_FONTS",
    "PLACEHOLDER",
    "GridLayout",
    "can_write_mp4",
    "drawable",
    "font_for",
    "frame_strip",
    "grid_layout",
    "labelled_grid",
    "load_font",
    "save_image",
    "save_video",
    "wrap_text",
]

#: Gap in pixels around and between panels.
DEFAULT_BORDER = 8

_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)
_CAPTION_TEXT = (70, 70, 70)


#: Fonts tried, in order, for label text PIL's default font cannot draw (it covers basic Latin only).
FALLBACK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",  # Debian/Ubuntu fonts-noto-cjk
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",  # Arch, Fedora
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",  # Latin, Greek, Cyrillic
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/arial.ttf",
)
#: Drawn instead of a character no available font has a glyph for (rather than an empty box).
PLACEHOLDER = "?"
_warned: set[str] = set()


def load_font(size: int, path: str | None = None) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The font file at ``path``, or PIL's default font, at ``size`` pixels (fixed-size bitmap on old Pillow)."""
    if path is not None:
        return ImageFont.truetype(path, size)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def _mask(font, ch: str) -> tuple:
    mask = font.getmask(ch)
    return mask.size, bytes(mask)


@functools.lru_cache(maxsize=64)
def _missing(path: str | None, chars: frozenset[str]) -> frozenset[str]:
    """The characters of ``chars`` the font at ``path`` (None: the default font) has no glyph for."""
    font = load_font(16, path)
    if not isinstance(font, ImageFont.FreeTypeFont):  # the old bitmap font: Latin-1 at best
        return frozenset(c for c in chars if ord(c) > 0xFF)
    notdef = _mask(font, "\U0010ffff")  # a private-use code point no font draws: the "missing glyph" box
    return frozenset(c for c in chars if _mask(font, c) == notdef)


def font_for(text: str) -> tuple[str | None, frozenset[str]]:
    """The font that draws ``text`` (None: PIL's default) and the characters it still cannot draw.

    PIL's default font when it covers the text, else the first of :data:`FALLBACK_FONTS` installed here that
    covers it all (else the one that covers most).
    """
    chars = frozenset(c for c in text if c.isprintable() and not c.isspace())
    best: tuple[str | None, frozenset[str]] = (None, _missing(None, chars))
    for path in FALLBACK_FONTS:
        if not best[1]:
            break
        if os.path.exists(path):
            try:
                missing = _missing(path, chars)
            except OSError:  # unreadable font file
                continue
            if len(missing) < len(best[1]):
                best = (path, missing)
    return best


def drawable(text: str, missing: frozenset[str]) -> str:
    """``text`` with each character in ``missing`` replaced by :data:`PLACEHOLDER`; warns once per character."""
    if not missing or not any(c in missing for c in text):
        return text
    new = sorted(missing - _warned)
    if new:
        _warned.update(new)
        warnings.warn(
            f"no installed font can draw {''.join(new)!r}; drawn as {PLACEHOLDER!r} "
            "(install a font that covers them, e.g. Debian's fonts-noto-cjk)",
            stacklevel=3,
        )
    return "".join(PLACEHOLDER if c in missing else c for c in text)


def _text_width(font, text: str) -> float:
    return font.getlength(text)


def _line_height(font) -> int:
    _left, _top, _right, bottom = font.getbbox("Ag|")
    return int(bottom) + max(2, int(bottom) // 5)


def wrap_text(text: str, font, max_width: float) -> list[str]:
    """Greedy word wrap of ``text`` so that every line fits ``max_width`` pixels.

    Explicit newlines are kept; words longer than a line are split by character.
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if _text_width(font, candidate) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            while _text_width(font, word) > max_width and len(word) > 1:  # split an over-long word
                cut = len(word) - 1
                while cut > 1 and _text_width(font, word[:cut]) > max_width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _font_size_for(cell_width: int) -> int:
    return max(12, min(32, round(cell_width / 20)))


@dataclass
class GridLayout:
    """Geometry of a :func:`labelled_grid`: total ``size`` and the ``(left, top, right, bottom)`` box of each panel."""

    size: tuple[int, int]
    boxes: list[list[tuple[int, int, int, int]]]
    col_widths: list[int]
    row_heights: list[int]
    label_width: int
    header_height: int
    caption_top: int
    font_size: int
    border: int
    font_path: str | None = None
    col_label_lines: list[list[str]] = field(default_factory=list)
    row_label_lines: list[list[str]] = field(default_factory=list)
    caption_lines: list[str] = field(default_factory=list)

    def crop(self, grid: Image.Image, row: int, col: int) -> Image.Image:
        """Cut panel ``(row, col)`` out of a grid image drawn with this layout."""
        return grid.crop(self.boxes[row][col])


MIN_PANEL = 128  # smaller images are shown enlarged (nearest neighbour, an integer factor) in figures


def enlarged(image: Image.Image, min_side: int = MIN_PANEL) -> Image.Image:
    """``image`` scaled up by the smallest integer factor that makes its shorter side at least ``min_side``
    (nearest neighbour: every pixel becomes a block, nothing is smoothed); unchanged if it is large enough."""
    factor = -(-min_side // max(1, min(image.size)))
    if factor <= 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def _image_sizes(rows: Sequence[Sequence]) -> list[list[tuple[int, int]]]:
    return [[tuple(im.size) if hasattr(im, "size") else tuple(im) for im in row] for row in rows]


def grid_layout(
    rows: Sequence[Sequence[Image.Image | tuple[int, int]]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    caption: str | None = None,
    *,
    border: int = DEFAULT_BORDER,
    font_size: int | None = None,
) -> GridLayout:
    """The geometry :func:`labelled_grid` would use; ``rows`` may hold images or ``(width, height)`` sizes."""
    sizes = _image_sizes(rows)
    if not sizes or not all(sizes):
        raise ValueError("labelled_grid needs at least one row with at least one image")
    n_cols = max(len(r) for r in sizes)
    if row_labels is not None and len(row_labels) != len(sizes):
        raise ValueError(f"got {len(row_labels)} row labels for {len(sizes)} rows")
    if col_labels is not None and len(col_labels) != n_cols:
        raise ValueError(f"got {len(col_labels)} column labels for {n_cols} columns")

    col_widths = [max(r[c][0] for r in sizes if c < len(r)) for c in range(n_cols)]
    row_heights = [max(h for _, h in r) for r in sizes]
    if font_size is None:
        font_size = _font_size_for(min(col_widths))
    font_path, missing = font_for("".join([*(row_labels or []), *(col_labels or []), caption or ""]))
    if missing:
        row_labels = [drawable(t, missing) for t in row_labels] if row_labels is not None else None
        col_labels = [drawable(t, missing) for t in col_labels] if col_labels is not None else None
        caption = drawable(caption, missing) if caption else caption
    font = load_font(font_size, font_path)
    line_h = _line_height(font)
    pad = max(2, font_size // 3)

    col_lines = [wrap_text(lbl, font, w) for lbl, w in zip(col_labels or [], col_widths)]
    header_height = (max(len(lines) for lines in col_lines) * line_h + pad) if col_labels else 0

    label_width = 0
    row_lines: list[list[str]] = []
    if row_labels:
        max_label_w = max(96, 2 * font_size * 6)  # wrap row labels to a reasonable column
        widest = max(_text_width(font, line) for lbl in row_labels for line in lbl.split("\n"))
        label_width = math.ceil(min(widest, max_label_w)) + pad  # ceil: a label as wide as the column must not wrap
        row_lines = [wrap_text(lbl, font, label_width - pad) for lbl in row_labels]
        row_heights = [max(h, len(lines) * line_h) for h, lines in zip(row_heights, row_lines)]  # labels fit their row

    grid_w = label_width + sum(col_widths) + border * (n_cols + 1)
    top = border + header_height
    boxes = []
    y = top
    for r, row in enumerate(sizes):
        x = border + label_width
        row_boxes = []
        for c, (w, h) in enumerate(row):
            row_boxes.append((x, y, x + w, y + h))
            x += col_widths[c] + border
        boxes.append(row_boxes)
        y += row_heights[r] + border
    caption_top = y
    caption_lines: list[str] = []
    grid_h = y
    if caption:
        cap_font = load_font(max(11, round(font_size * 0.8)), font_path)
        caption_lines = wrap_text(caption, cap_font, grid_w - 2 * border)
        grid_h = y + len(caption_lines) * _line_height(cap_font) + border
    return GridLayout(
        size=(grid_w, grid_h),
        boxes=boxes,
        col_widths=col_widths,
        row_heights=row_heights,
        label_width=label_width,
        header_height=header_height,
        caption_top=caption_top,
        font_size=font_size,
        border=border,
        font_path=font_path,
        col_label_lines=col_lines,
        row_label_lines=row_lines,
        caption_lines=caption_lines,
    )


def labelled_grid(
    rows: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    caption: str | None = None,
    *,
    border: int = DEFAULT_BORDER,
    font_size: int | None = None,
    background=_BACKGROUND,
) -> Image.Image:
    """Images in a grid with column labels on top, row labels on the left and a wrapped caption below.

    ``rows`` is a list of rows, each a list of PIL images (rows may be
    ragged).  Labels are wrapped to their column (and clipped if a single word
    is wider); the caption is wrapped to the grid width.  With no row labels,
    the grid is ``sum(column widths) + border * (columns + 1)`` pixels wide.
    The font size defaults to one suited to the narrowest column.
    """
    layout = grid_layout(rows, row_labels, col_labels, caption, border=border, font_size=font_size)
    grid = Image.new("RGB", layout.size, background)
    draw = ImageDraw.Draw(grid)
    font = load_font(layout.font_size, layout.font_path)
    line_h = _line_height(font)

    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            grid.paste(im.convert("RGB"), layout.boxes[r][c][:2])

    # Column labels: each drawn on its own strip, so over-long words are clipped to the column.
    for c, lines in enumerate(layout.col_label_lines):
        w = layout.col_widths[c]
        strip = Image.new("RGB", (w, max(1, layout.header_height)), background)
        sdraw = ImageDraw.Draw(strip)
        for i, line in enumerate(lines):
            x = max(0, (w - _text_width(font, line)) / 2)
            sdraw.text((x, i * line_h), line, fill=_TEXT, font=font)
        x0 = layout.border + layout.label_width + sum(layout.col_widths[:c]) + c * layout.border
        grid.paste(strip, (x0, layout.border))

    for r, lines in enumerate(layout.row_label_lines):
        _, top, _, bottom = layout.boxes[r][0]
        y = top + max(0, (bottom - top - len(lines) * line_h) // 2)
        for i, line in enumerate(lines):
            draw.text((layout.border, y + i * line_h), line, fill=_TEXT, font=font)

    if layout.caption_lines:
        cap_font = load_font(max(11, round(layout.font_size * 0.8)), layout.font_path)
        cap_h = _line_height(cap_font)
        for i, line in enumerate(layout.caption_lines):
            draw.text((layout.border, layout.caption_top + i * cap_h), line, fill=_CAPTION_TEXT, font=cap_font)
    return grid


def save_image(image: Image.Image, path: str | Path, metadata: Mapping[str, object] | None = None) -> Path:
    """Save ``image`` at ``path`` atomically (format from the extension; parent folders created).

    For PNG, ``metadata`` is written as text chunks (non-string values as
    JSON); read them back with ``Image.open(path).text``.  Other formats
    ignore it.
    """
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if path.suffix.lower() == ".png":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in (metadata or {}).items():
            info.add_text(str(key), value if isinstance(value, str) else json.dumps(value))
        return atomic_write(path, lambda temp: image.save(temp, format="PNG", pnginfo=info))
    return atomic_write(path, lambda temp: image.convert("RGB").save(temp, format=fmt))


def can_write_mp4() -> bool:
    """Whether imageio-ffmpeg (which brings its own ffmpeg) is installed: mp4 output needs it."""
    import importlib.util

    return importlib.util.find_spec("imageio_ffmpeg") is not None


def save_video(frames: Sequence[Image.Image], path: str | Path, fps: int = 16) -> Path:
    """Write ``frames`` atomically as an mp4 (H.264 through imageio-ffmpeg) or an animated GIF (Pillow).

    The format follows the extension: ``.mp4`` needs imageio-ffmpeg, ``.gif`` needs nothing more.
    """
    path = Path(path)
    if not frames:
        raise ValueError("no frames to write")
    suffix = path.suffix.lower()
    if suffix == ".gif":

        def write_gif(temp: Path) -> None:
            first, *rest = [f.convert("RGB") for f in frames]
            first.save(temp, format="GIF", save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)

        return atomic_write(path, write_gif)
    if suffix != ".mp4":
        raise ValueError(f"cannot write video {str(path)!r}: use a .mp4 or .gif file name")
    import imageio_ffmpeg
    import numpy as np

    width, height = frames[0].size

    def write_mp4(temp: Path) -> None:
        writer = imageio_ffmpeg.write_frames(str(temp), (width, height), fps=fps, macro_block_size=1)
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(np.asarray(frame.convert("RGB"))))
        writer.close()

    return atomic_write(path, write_mp4)


def frame_strip(frames: Sequence[Image.Image], count: int = 4) -> list[Image.Image]:
    """``count`` frames spread evenly over a video (first and last included), for a grid row."""
    if len(frames) <= count:
        return list(frames)
    step = (len(frames) - 1) / (count - 1)
    return [frames[round(i * step)] for i in range(count)]
