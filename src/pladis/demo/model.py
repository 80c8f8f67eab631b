"""The demo model: a standard diffusers ``StableDiffusionPipeline`` around a tiny latent diffusion model trained on scenes.

* text: word-level tokenizer (77 ids, end-token padding) + causal ``CLIPTextModel`` (see ``text.py``)
* vae: a small trained ``AutoencoderKL`` (32x32 RGB <-> 8x8x8 latents, learned up-sampling in the decoder,
  latents multiplied by ``scaling_factor`` as in SD)
* unet: ``UNet2DConditionModel`` on the 8x8x8 latents, cross-attention (4 heads) in the down blocks at 8x8 and
  4x4, the 4x4 middle and the up blocks, so the down/mid/up layer groups of the paper all exist
* scheduler: cosine schedule, v-prediction; DPM-Solver++ for sampling.

Configs without a ``"vae"`` entry (the pixel-space model of pladis <= 0.2) still load: their "latents" are the
2x2 pixel-unshuffled image and :class:`PixelShuffleVAE` decodes them without weights.

``load_demo_pipeline()`` builds it from the safetensors shipped in ``pladis/weights`` (offline).
Because it is a plain ``StableDiffusionPipeline``, ``pladis.apply(pipe)`` treats it exactly like SD.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from transformers import CLIPTextConfig, CLIPTextModel

from .text import build_tokenizer, text_config

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
UNET_FILE = "demo_unet.safetensors"
TEXT_FILE = "demo_text_encoder.safetensors"
CONFIG_FILE = "demo_config.json"
VAE_FILE = "demo_vae.safetensors"

IMAGE_SIZE = 32
PATCH = 2  # the legacy pixel-space model's "latent" patch
LATENT_CHANNELS = 8  # at 4 (SD's) the corners of small squares came back rounded; SD3/FLUX widen to 16
VAE_FACTOR = 4  # 32x32 images <-> 8x8 latents


def vae_config(
    widths=(32, 64, 64), layers_per_block: int = 1, groups: int = 16, latent_channels: int = LATENT_CHANNELS
) -> dict:
    """A small SD-style ``AutoencoderKL``: each encoder level halves the size except the last (2 ** (len - 1))."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(widths),
        up_block_types=["UpDecoderBlock2D"] * len(widths),
        block_out_channels=list(widths),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=groups,
        sample_size=IMAGE_SIZE,
        scaling_factor=1.0,  # set from the trained encoder's latent spread (see train.py)
    )


def unet_config(width: int = 64, cross_dim: int = 128, layers_per_block: int = 1) -> dict:
    """The UNet on 8x8x8 latents: cross-attention at 8x8 and 4x4 in down, mid and up blocks."""
    return dict(
        sample_size=IMAGE_SIZE // VAE_FACTOR,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(width, 2 * width),
        layers_per_block=layers_per_block,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim,
        attention_head_dim=4,  # diffusers' legacy name: this is the number of heads
    )


def pixel_unet_config(width: int = 64, cross_dim: int = 128, layers_per_block: int = 1) -> dict:
    """The UNet of the pixel-space model of pladis <= 0.2 (16x16x12 pixel-unshuffled "latents")."""
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


def build_vae(cfg: dict | None = None) -> AutoencoderKL | PixelShuffleVAE:
    """The config's autoencoder: a learned ``AutoencoderKL``, or the weightless pixel-shuffle one of old configs."""
    cfg = cfg or default_config()
    if "vae" not in cfg:
        return PixelShuffleVAE()
    return AutoencoderKL(**cfg["vae"])


def latent_shape(cfg: dict) -> tuple[int, int, int]:
    u = cfg["unet"]
    return (int(u["in_channels"]), int(u["sample_size"]), int(u["sample_size"]))


def encode_latents(vae, images_m11: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> the UNet's latents (the encoder's mean, times ``scaling_factor``)."""
    if isinstance(vae, PixelShuffleVAE):
        return F.pixel_unshuffle(images_m11, vae.config.patch)
    return vae.encode(images_m11).latent_dist.mode() * vae.config.scaling_factor


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
        "vae": vae_config(),
        "unet": unet_config(),
        "text": {k: tc[k] for k in keep},
        "scheduler": scheduler_config(),
        "image_size": IMAGE_SIZE,
    }


def assemble_pipeline(unet, text_encoder, cfg: dict | None = None, vae=None) -> StableDiffusionPipeline:
    cfg = cfg or default_config()
    sched = DPMSolverMultistepScheduler(**cfg["scheduler"])
    pipe = StableDiffusionPipeline(
        vae=vae if vae is not None else build_vae(cfg).eval(),
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(int(cfg["text"]["vocab_size"])),
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


def save_weights(
    unet, text_encoder, cfg: dict, out_dir: str | Path, meta: dict | None = None, dtype=torch.float16, vae=None
):
    """Export fp16 safetensors and the config, each written atomically (text keys without ``text_model.``).

    ``vae``: the trained autoencoder, written when the config has one (its ``scaling_factor`` goes into the config).
    """
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
    if "vae" in cfg:
        if vae is None:
            raise ValueError("this config has an autoencoder: pass the trained vae to save_weights")
        vae_sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in vae.state_dict().items()}
        files.atomic_write(out / VAE_FILE, lambda tmp: save_file(vae_sd, str(tmp)))
        cfg = {**cfg, "vae": {**cfg["vae"], "scaling_factor": float(vae.config.scaling_factor)}}
    files.write_json(out / CONFIG_FILE, json.loads(json.dumps({**cfg, "meta": meta or {}}, default=list)))


def weight_files(weights_dir: str | Path | None = None) -> list[str]:
    """The files a weights folder needs (the autoencoder's only where its config has one)."""
    d = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    names = [UNET_FILE, TEXT_FILE]
    try:
        if "vae" in json.loads((d / CONFIG_FILE).read_text()):
            names.append(VAE_FILE)
    except (OSError, ValueError):
        pass
    return [*names, CONFIG_FILE]  # the config last: it names what the tensors are


def weights_available(weights_dir: str | Path | None = None) -> bool:
    d = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    return all((d / f).exists() for f in weight_files(d))


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
    vae = build_vae(cfg)
    if "vae" in cfg:
        vae.load_state_dict({k: v.float() for k, v in load_file(str(d / VAE_FILE)).items()})
    pipe = assemble_pipeline(unet.eval(), text.eval(), cfg, vae=vae.eval())
    return pipe.to(device, dtype)


def load_config(weights_dir: str | Path | None = None) -> dict:
    d = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    return json.loads((d / CONFIG_FILE).read_text())
