"""Crash-safe file writes and strict JSON, for everything pladis writes (images, runs, checkpoints, reports).

:func:`atomic_write` writes through a temporary file in the destination's folder, flushes and fsyncs it, then
``os.replace``-s it over the destination and fsyncs the folder: a crash or ``SIGKILL`` at any moment leaves
either the old file or the new one, never a torn mix. A replaced file keeps its permission bits; a new one
gets the usual ``0644`` (less the umask), not ``mkstemp``'s ``0600``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform or file system lets a folder be fsync-ed
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], object], mode: int | None = None) -> Path:
    """Create or replace ``path`` by calling ``write(temporary_path)``; the swap is atomic.

    The file keeps the permission bits of the file it replaces; a new one gets ``mode`` (default ``0644``
    less the umask).
    """
    path = Path(path)
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except OSError:
            mode = 0o644 & ~_umask()
    path.parent.mkdir(parents=True, exist_ok=True)
    # ".NAME.XXXX.tmp.EXT": hidden, recognisable as a leftover, and with the extension that writers such as PIL or
    # ffmpeg read the format from
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    return atomic_write(dst, lambda tmp: tmp.write_bytes(Path(src).read_bytes()))


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON (RFC 8259): NaN and infinities become ``null``."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def write_json(path: str | Path, value: Any, indent: int | None = 1) -> Path:
    return atomic_write_text(path, dumps(value, indent=indent) + "\n")
