"""Reading images in tests without leaving files open (an open file's ResourceWarning surfaces in a later test)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def load_image(path: str | Path) -> Image.Image:
    """The image at `path`, pixels and PNG text loaded, its file closed."""
    with Image.open(path) as image:
        image.load()
        return image
