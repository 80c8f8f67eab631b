"""PLADIS: sparse cross-attention for diffusion models at inference time.

    import pladis
    pladis.apply(pipe)            # scale 2.0, alpha 1.5: every cross-attention of the pipeline
    pladis.remove(pipe)

The maths (`entmax`, `pladis_attention`) know nothing of diffusers; `pladis.adapters` is where PLADIS enters a
model; `pladis.api` is the switch.
"""

from . import maps, seg
from .api import Pladis, apply, is_applied, per_call_scale, remove, set_scale
from .attention import pladis_attention, pladis_weights
from .entmax import entmax, entmax15, sparsemax
from .kernels import get_backend, register_backend, set_backend

__version__ = "0.1.0"

__all__ = [
    "Pladis",
    "apply",
    "entmax",
    "entmax15",
    "get_backend",
    "is_applied",
    "maps",
    "per_call_scale",
    "pladis_attention",
    "pladis_weights",
    "register_backend",
    "remove",
    "seg",
    "set_backend",
    "set_scale",
    "sparsemax",
]
