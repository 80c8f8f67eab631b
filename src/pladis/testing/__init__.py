"""Tiny random-weight diffusers pipelines and models, built in code (no download), to test integrations offline.

    from pladis.testing import tiny_sdxl_pipeline
    pipe = tiny_sdxl_pipeline()          # a real StableDiffusionXLPipeline, 64x64 in milliseconds

Not imported by `import pladis`; used by pladis' own tests and benchmarks, and by yours.
"""

from .transformers import (
    tiny_flux_pipeline,
    tiny_pixart_sigma_pipeline,
    tiny_sana_pipeline,
    tiny_sd3_pipeline,
    tiny_transformer,
    tiny_wan_pipeline,
)
from .unet import (
    make_scheduler,
    save_tiny_lora,
    tiny_clip_tokenizer,
    tiny_sd15_pipeline,
    tiny_sdxl_controlnet_pipeline,
    tiny_sdxl_pag_pipeline,
    tiny_sdxl_pipeline,
)

__all__ = [
    "make_scheduler",
    "save_tiny_lora",
    "tiny_clip_tokenizer",
    "tiny_flux_pipeline",
    "tiny_pixart_sigma_pipeline",
    "tiny_sana_pipeline",
    "tiny_sd3_pipeline",
    "tiny_sd15_pipeline",
    "tiny_sdxl_controlnet_pipeline",
    "tiny_sdxl_pag_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_transformer",
    "tiny_wan_pipeline",
]
