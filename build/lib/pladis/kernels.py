"""How the row-wise maths run: eagerly, fused by torch.compile (inductor: C++ on CPU, Triton on GPU), or by a
registered kernel. One process-wide choice, `set_backend` (or the PLADIS_BACKEND environment variable); "auto" fuses where a compiler works and otherwise
falls back to the eager code, which computes the same numbers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

_choice = os.environ.get("PLADIS_BACKEND", "auto")
_registered: dict[str, Callable] = {}
_compile_failed: set[str] = set()


def register_backend(name: str, fn: Callable) -> None:
    """Add a kernel for the PLADIS map: fn(scores_fp32, scale_tensor, alpha, temperature) -> map, same shape."""
    if name in ("auto", "eager", "compiled"):
        raise ValueError(f"{name!r} is a built-in backend name")
    _registered[name] = fn


def set_backend(name: str) -> None:
    """'auto' (default), 'eager', 'compiled', or a name given to `register_backend`."""
    global _choice
    if name not in ("auto", "eager", "compiled", *_registered):
        raise ValueError(f"unknown PLADIS backend {name!r}; choose from {['auto', 'eager', 'compiled', *_registered]}")
    _choice = name
    _compile_failed.clear()  # a new choice tries the compiler again


def get_backend() -> str:
    return _choice


if _choice not in ("auto", "eager", "compiled"):
    raise ValueError(f"PLADIS_BACKEND={_choice!r}: use auto, eager or compiled (register other kernels in code)")


def registered_kernel() -> Callable | None:
    return _registered.get(_choice)


class Fusable:
    """A pure function of a (rows, n) tensor, run eagerly or compiled once (rows dynamic, n static)."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self._compiled: Callable | None = None

    def _wants_compiled(self, rows: torch.Tensor) -> bool:
        if _choice == "compiled":
            return True
        if _choice == "eager":
            return False
        # auto: autograd through a compiled graph is slow to build, so keep grads eager
        return not (rows.requires_grad and torch.is_grad_enabled()) and rows.device.type not in _compile_failed

    def __call__(self, rows: torch.Tensor, *args):
        # inside a model the user compiled, the outer torch.compile traces (and fuses) the plain code itself
        if torch.compiler.is_compiling() or not self._wants_compiled(rows):
            return self.fn(rows, *args)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=False)
        try:
            torch._dynamo.mark_dynamic(rows, 0)
            return self._compiled(rows, *args)
        except Exception as err:
            if _choice == "compiled":
                raise
            _compile_failed.add(rows.device.type)
            logger.warning("pladis: torch.compile failed on %s (%s); using eager kernels", rows.device.type, err)
            return self.fn(rows, *args)
