"""``pladis info IMAGE``: the settings an image was made with, from its PNG metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import CLIError, reporting_errors


def info(
    image: Annotated[Path, typer.Argument(help="A PNG written by pladis (or any A1111-style 'parameters' PNG).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the settings as JSON only.")] = False,
) -> None:
    """Print the prompt, seed and every setting stored in an image's metadata."""
    with reporting_errors():
        from PIL import UnidentifiedImageError

        from pladis import metadata

        if not image.expanduser().is_file():
            raise CLIError(f"no such file {str(image)!r}", 2)
        try:
            found = metadata.read(image.expanduser())
        except (OSError, UnidentifiedImageError):
            raise CLIError(f"{str(image)!r} is not an image PIL can read", 2) from None
        if found["settings"] is None and found["parameters"] is None:
            raise CLIError(f"{str(image)!r} has no generation settings in its metadata (no 'parameters' chunk)")
        if as_json:
            typer.echo(json.dumps(found["settings"] if found["settings"] is not None else found, indent=2))
            return
        if found["parameters"] is not None:
            typer.echo(found["parameters"])
        if found["settings"] is not None:
            typer.echo(json.dumps(found["settings"], indent=2))
