"""The demo model: a standard diffusers ``StableDiffusionPipeline`` around a tiny UNet trained on scenes.

* text: word-level tokenizer (77 ids, end-token padding) + causal ``CLIPTextModel`` (see ``text.py``)
* unet: ``UNet2DConditionModel`` with cross-attention (4 heads) at 16x16, 8x8 and the 4x4 middle
* "vae": pixel space. 32x32 RGB images are pixel-unshuffled 2x2 into 16x16x12 "latents";
  :class:`PixelShuffleVAE` decodes by pixel-shuffle (no weights), so generation is exact and fast.
* scheduler: cosine schedule, v-prediction; DPM-Solver++ for sampling.

``load_demo_pipeline()`` builds it from the safetensors shipped in ``pladis/weights`` (offline).
Because it is a plain ``StableDiffusionPipeline``, ``pladis.apply(pipe)`` treats it exactly like SD.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from transformers import CLIPTextConfig, CLIPTextModel

from .text import build_tokenizer, text_config

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
UNET_FILE = "demo_unet.safetensors"
TEXT_FILE = "demo_text_encoder.safetensors"
CONFIG_FILE = "demo_config.json"

IMAGE_SIZE = 32
PATCH = 2


def unet_config(width: int = 64, cross_dim: int = 128, layers_per_block: int = 1) -> dict:
    return dict(
        sample_size=IMAGE_SIZE // PATCH,
        in_channels=3 * PATCH * PATCH,
        out_channels=3 * PATCH * PATCH,
        block_out_channels=(width, 2 * width, 2 * width),
        layers_per_block=layers_per_block,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim,
        attention_head_dim=4,  # diffusers' legacy name: this is the number of heads
    )


def scheduler_config() -> dict:
    return dict(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        steps_offset=1,
    )


class PixelShuffleVAE(ModelMixin, ConfigMixin):
    """A weightless stand-in for an autoencoder: latents are the pixel-unshuffled image in [-1, 1]."""

    @register_to_config
    def __init__(
        self, patch: int = PATCH, in_channels: int = 3, scaling_factor: float = 1.0, block_out_channels=(1, 1)
    ):
        super().__init__()
        # block_out_channels only tells pipelines the spatial factor: 2 ** (len - 1) == patch
        self.register_buffer("_dummy", torch.zeros(1), persistent=False)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        z = F.pixel_unshuffle(x, self.config.patch)

        class _Dist:
            def __init__(self, z):
                self.z = z

            def sample(self, generator=None):
                return self.z

            def mode(self):
                return self.z

        d = _Dist(z)
        return (d,) if not return_dict else type("EncOut", (), {"latent_dist": d})()

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        x = F.pixel_shuffle(z, self.config.patch)
        return (x,) if not return_dict else type("DecOut", (), {"sample": x})()


def to_latents(images01: torch.Tensor) -> torch.Tensor:
    return F.pixel_unshuffle(images01 * 2 - 1, PATCH)


def from_latents(z: torch.Tensor) -> torch.Tensor:
    return (F.pixel_shuffle(z, PATCH) + 1) / 2


def build_models(cfg: dict | None = None):
    cfg = cfg or default_config()
    unet = UNet2DConditionModel(**cfg["unet"])
    text = CLIPTextModel(CLIPTextConfig(**cfg["text"]))
    return unet, text


def default_config() -> dict:
    tc = text_config(hidden=128, layers=3, heads=4).to_dict()
    keep = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "projection_dim",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
        "hidden_act",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ]
    return {
        "unet": unet_config(),
        "text": {k: tc[k] for k in keep},
        "scheduler": scheduler_config(),
        "image_size": IMAGE_SIZE,
    }


def assemble_pipeline(unet, text_encoder, cfg: dict | None = None) -> StableDiffusionPipeline:
    cfg = cfg or default_config()
    sched = DPMSolverMultistepScheduler(**cfg["scheduler"])
    pipe = StableDiffusionPipeline(
        vae=PixelShuffleVAE(),
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(),
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train_scheduler(cfg: dict | None = None) -> DDPMScheduler:
    cfg = cfg or default_config()
    return DDPMScheduler(**cfg["scheduler"])


def _text_key_prefix(keys) -> str:
    """``"text_model."`` where a ``CLIPTextModel`` names its weights so (transformers 4), else ``""`` (transformers 5)."""
    return "text_model." if any(k.startswith("text_model.") for k in keys) else ""


def match_text_keys(state: dict[str, torch.Tensor], expected) -> dict[str, torch.Tensor]:
    """``state`` renamed to the key style of ``expected``: adds or strips transformers 4's ``text_model.`` prefix."""
    have, want = _text_key_prefix(state), _text_key_prefix(expected)
    if have == want:
        return state
    return {want + k[len(have) :]: v for k, v in state.items()}


def save_weights(unet, text_encoder, cfg: dict, out_dir: str | Path, meta: dict | None = None, dtype=torch.float16):
    """Export fp16 safetensors and the config, each written atomically (text keys without ``text_model.``)."""
    from safetensors.torch import save_file

    from .. import files

    out = Path(out_dir)
    unet_sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in unet.state_dict().items()}
    text_sd = {
        k: v.detach().to("cpu", dtype).contiguous()
        for k, v in text_encoder.state_dict().items()
        if v.is_floating_point()
    }
    text_sd = match_text_keys(text_sd, ())  # one file format, whichever transformers wrote it
    files.atomic_write(out / UNET_FILE, lambda tmp: save_file(unet_sd, str(tmp)))
    files.atomic_write(out / TEXT_FILE, lambda tmp: save_file(text_sd, str(tmp)))
    files.write_json(out / CONFIG_FILE, json.loads(json.dumps({**cfg, "meta": meta or {}}, default=list)))


def weights_available(weights_dir: str | Path | None = None) -> bool:
    d = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    return all((d / f).exists() for f in (UNET_FILE, TEXT_FILE, CONFIG_FILE))


def load_demo_pipeline(
    weights_dir: str | Path | None = None, device="cpu", dtype=torch.float32
) -> StableDiffusionPipeline:
    """The embedded demo pipeline, built offline from the package's safetensors."""
    from safetensors.torch import load_file

    d = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    if not weights_available(d):
        raise FileNotFoundError(f"demo weights not found in {d}; train them with `pladis train-demo`")
    cfg = json.loads((d / CONFIG_FILE).read_text())
    unet, text = build_models(cfg)
    unet.load_state_dict({k: v.float() for k, v in load_file(str(d / UNET_FILE)).items()})
    text_sd = {k: v.float() for k, v in load_file(str(d / TEXT_FILE)).items()}
    missing, unexpected = text.load_state_dict(match_text_keys(text_sd, text.state_dict()), strict=False)
    if unexpected or any("position_ids" not in m for m in missing):
        raise RuntimeError(f"text encoder weights do not match: missing={missing} unexpected={unexpected}")
    pipe = assemble_pipeline(unet.eval(), text.eval(), cfg)
    return pipe.to(device, dtype)


def load_config(weights_dir: str | Path | None = None) -> dict:
    d = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    return json.loads((d / CONFIG_FILE).read_text())
