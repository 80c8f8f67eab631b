"""Which code computes PLADIS attention: one process-wide choice, `set_backend` or the PLADIS_BACKEND variable.

* "auto" (default): the fused Triton kernel (`pladis.triton_attention`) on CUDA when Triton imports; elsewhere the
  torch path, fused by torch.compile (one graph per alpha kind, dynamic shapes) where the compiler works.
* "triton": the Triton kernel wherever Triton can run it (CUDA; CPU tensors under TRITON_INTERPRET=1).
* "compiled" / "eager": the torch path, compiled or not.
* a name given to `register_backend`: a function computing the PLADIS map in the torch path.

Whatever the choice, inputs that need gradients and shapes the kernel does not take (more than
`triton_attention.MAX_KEYS` keys) run the differentiable torch path. An invalid PLADIS_BACKEND does not break
`import pladis`: it is reported, with the valid names, on first use. The backend used per device is logged once at
INFO level.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import types
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

BUILTIN = ("auto", "eager", "compiled", "triton")
SMALL = 1 << 12  # under "auto", maps with fewer elements run eagerly (compiling them costs more than it saves)

_choice: str | None = None  # None: read PLADIS_BACKEND on first use
_registered: dict[str, Callable] = {}
_compile_failed: set[str] = set()
_logged: set[tuple[str, str]] = set()


def _valid() -> list[str]:
    return [*BUILTIN, *_registered]


def register_backend(name: str, fn: Callable) -> None:
    """Add a kernel for the PLADIS map: fn(scores_fp32, scale_tensor, alpha, temperature) -> map, same shape."""
    if name in BUILTIN:
        raise ValueError(f"{name!r} is a built-in backend name")
    _registered[name] = fn


def set_backend(name: str) -> None:
    """'auto' (default), 'eager', 'compiled', 'triton', or a name given to `register_backend`."""
    global _choice
    if name not in _valid():
        raise ValueError(f"unknown PLADIS backend {name!r}; choose from {_valid()}")
    _choice = name
    _compile_failed.clear()  # a new choice tries the compiler again
    _logged.clear()


def get_backend() -> str:
    """The chosen backend; raises ValueError (one line, with the valid names) for an invalid PLADIS_BACKEND.

    PLADIS_BACKEND is read on first use and then kept (a plain global read: cheap, and traceable by torch.compile).
    """
    global _choice
    if _choice is not None:
        return _choice
    value = os.environ.get("PLADIS_BACKEND", "") or "auto"
    if value not in _valid():
        raise ValueError(f"PLADIS_BACKEND={value!r} is not a PLADIS backend: use one of {', '.join(_valid())}")
    _choice = value
    return value


_triton_found: bool | None = importlib.util.find_spec("triton") is not None  # no import: cheap


def triton_available() -> bool:
    global _triton_found
    if _triton_found is None:
        _triton_found = importlib.util.find_spec("triton") is not None
    return _triton_found


def triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernel can run on tensors of this device."""
    if device.type == "cuda":
        return triton_available()
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1" and triton_available()


def _report(device: torch.device, name: str) -> None:
    if torch.compiler.is_compiling():
        return
    if (device.type, name) not in _logged:
        _logged.add((device.type, name))
        logger.info("pladis: PLADIS attention on %s runs the %s backend", device.type, name)


def wants_triton(device: torch.device, needs_grad: bool) -> bool:
    """Whether PLADIS attention on this device should run the Triton kernel (logs the choice once)."""
    choice = get_backend()
    use = not needs_grad and (
        (choice == "auto" and device.type == "cuda" and triton_available())
        or (choice == "triton" and triton_runs_on(device))
    )
    if use:
        _report(device, "triton")
    return use


def registered_kernel() -> Callable | None:
    return _registered.get(get_backend())


def _bind(fn: Callable, kind: int) -> Callable:
    """fn(rows, *args, kind) as a function with a code object of its own, so that each kind gets its own
    torch.compile cache (and recompile limit): kinds never evict each other's graphs."""

    def bound(rows, *args):
        return fn(rows, *args, kind)

    code = bound.__code__.replace(co_name=f"{fn.__name__}_kind_{kind}".replace("-", "m"))
    return types.FunctionType(code, bound.__globals__, code.co_name, None, bound.__closure__)


class Fusable:
    """A pure function fn(rows, *tensors, kind) of a (rows, n) tensor, run eagerly or compiled: one graph per kind
    with dynamic shapes; scalars are passed as 0-dim tensors, so new values never recompile."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self._graphs: dict[int, Callable] = {}

    def _wants_compiled(self, rows: torch.Tensor) -> bool:
        choice = get_backend()
        if choice == "compiled":
            return True
        if choice == "eager":
            return False
        # auto (or triton falling back): autograd through a compiled graph is slow to build, so keep grads eager
        return (
            rows.numel() >= SMALL
            and not (rows.requires_grad and torch.is_grad_enabled())
            and rows.device.type not in _compile_failed
        )

    def __call__(self, kind: int, rows: torch.Tensor, *args):
        # inside a model the user compiled, the outer torch.compile traces (and fuses) the plain code itself
        if torch.compiler.is_compiling() or not self._wants_compiled(rows):
            if not torch.compiler.is_compiling():
                _report(rows.device, "eager")
            return self.fn(rows, *args, kind)
        graph = self._graphs.get(kind)
        if graph is None:
            graph = self._graphs[kind] = torch.compile(_bind(self.fn, kind), dynamic=True)
        try:
            out = graph(rows, *args)
        except Exception as err:
            if get_backend() == "compiled":
                raise
            _compile_failed.add(rows.device.type)
            logger.warning("pladis: torch.compile failed on %s (%s); using eager kernels", rows.device.type, err)
            return self.fn(rows, *args, kind)
        _report(rows.device, "compiled")
        return out
