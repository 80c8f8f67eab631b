"""Tiny random-weight diffusers pipelines, built fully in code and offline.

These are for tests, benchmarks and CLI smoke tests: no weights are downloaded,
and a 2-step 64x64 generation runs in a fraction of a second on CPU.  The
configurations follow diffusers' own fast-test configs.  Every builder is
deterministic for a given ``seed`` (``torch.manual_seed`` is called before
each model is built).

The images they produce are noise: the models are untrained.
"""

from __future__ import annotations

import torch

__all__ = [
    "SCHEDULERS",
    "make_scheduler",
    "tiny_clip_tokenizer",
    "tiny_sd15_pipeline",
    "tiny_sdxl_controlnet_pipeline",
    "tiny_sdxl_pag_pipeline",
    "tiny_sdxl_pipeline",
]

#: Scheduler names accepted by the ``scheduler=`` argument of the builders.
SCHEDULERS = ("ddim", "euler", "lcm", "euler-trailing")

_VOCAB_SIZE = 1000
_MAX_LENGTH = 77
_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def _bytes_to_unicode() -> list[str]:
    """The printable-unicode alphabet of byte-level BPE (GPT-2 / CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_clip_tokenizer(vocab_size: int = _VOCAB_SIZE, model_max_length: int = _MAX_LENGTH):
    """A CLIP tokenizer over an in-memory byte-level vocabulary of ``vocab_size`` tokens.

    Every byte, alone and as a word end (``"x</w>"``), is a token, so any text
    tokenizes; there are no merges.  ``<|startoftext|>`` and ``<|endoftext|>``
    take the last two ids, so the end token also has the largest id (older
    CLIP text models find the end of a prompt with ``argmax(input_ids)``).
    It pads to ``model_max_length`` (77) with ``<|endoftext|>`` like real CLIP.
    """
    from transformers import CLIPTokenizer

    alphabet = _bytes_to_unicode()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    if vocab_size < len(tokens) + 2:
        raise ValueError(f"vocab_size must be at least {len(tokens) + 2}")
    vocab = {t: i for i, t in enumerate(tokens)}
    for i in range(len(tokens), vocab_size - 2):
        vocab[f"<|unused{i}|>"] = i
    vocab["<|startoftext|>"] = vocab_size - 2
    vocab["<|endoftext|>"] = vocab_size - 1
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def make_scheduler(name: str = "ddim"):
    """A fresh scheduler by name: one of :data:`SCHEDULERS`.

    ``"euler-trailing"`` is Euler with ``timestep_spacing="trailing"`` (as used
    by few-step distilled models such as SDXL-Lightning).
    """
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler

    if name == "ddim":
        return DDIMScheduler(**_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if name == "euler":
        return EulerDiscreteScheduler(**_BETAS, steps_offset=1)
    if name == "lcm":
        return LCMScheduler(**_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if name == "euler-trailing":
        return EulerDiscreteScheduler(**_BETAS, timestep_spacing="trailing", steps_offset=1)
    raise ValueError(f"unknown scheduler {name!r}; expected one of {SCHEDULERS}")


def _text_encoder(seed: int, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_MAX_LENGTH,
        projection_dim=32,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        bos_token_id=_VOCAB_SIZE - 2,
        eos_token_id=_VOCAB_SIZE - 1,
        pad_token_id=_VOCAB_SIZE - 1,
    )
    torch.manual_seed(seed)
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    return model.eval()


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    # Three blocks: 4x downsampling, so a 64x64 image is a 16x16 latent.
    return AutoencoderKL(
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        sample_size=64,
    ).eval()


# UNet settings shared by the SDXL UNet and its ControlNet.
_SDXL_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    in_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=80,  # 6 * addition_time_embed_dim + text_encoder_2 projection_dim
    cross_attention_dim=64,  # hidden sizes of both text encoders, concatenated
)


def tiny_sd15_pipeline(scheduler: str = "ddim", seed: int = 0):
    """A tiny random-weight ``StableDiffusionPipeline`` (SD1.5-like layout).

    The UNet has cross-attention in its second down block, its mid block and
    its first up block (6 cross-attention layers in all).
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    ).eval()
    pipe = StableDiffusionPipeline(
        vae=_vae(seed),
        text_encoder=_text_encoder(seed),
        tokenizer=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=make_scheduler(scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sdxl_components(scheduler: str, seed: int) -> dict:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **_SDXL_UNET,
        sample_size=16,
        out_channels=4,
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=1,
    ).eval()
    return dict(
        vae=_vae(seed),
        text_encoder=_text_encoder(seed),
        text_encoder_2=_text_encoder(seed + 1, with_projection=True),
        tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=make_scheduler(scheduler),
    )


def tiny_sdxl_pipeline(scheduler: str = "ddim", seed: int = 0):
    """A tiny random-weight ``StableDiffusionXLPipeline`` (two text encoders, ``text_time`` conditioning).

    The UNet has cross-attention in its second down block (two transformer
    layers per attention block), its mid block and its first up block.
    """
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**_sdxl_components(scheduler, seed), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_controlnet_pipeline(scheduler: str = "ddim", seed: int = 0):
    """A tiny random-weight ``StableDiffusionXLControlNetPipeline``.

    The ControlNet, which has cross-attention of its own, takes a conditioning
    image of the output size (e.g. a ``(1, 3, 64, 64)`` tensor in ``[0, 1]``).
    """
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    components = _sdxl_components(scheduler, seed)
    torch.manual_seed(seed + 2)
    controlnet = ControlNetModel(
        **_SDXL_UNET, conditioning_embedding_out_channels=(16, 32, 32), norm_num_groups=1
    ).eval()
    pipe = StableDiffusionXLControlNetPipeline(**components, controlnet=controlnet, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pag_pipeline(scheduler: str = "ddim", seed: int = 0, pag_applied_layers=("mid",)):
    """A tiny random-weight ``StableDiffusionXLPAGPipeline`` (perturbed-attention guidance).

    PAG perturbs self-attention of ``pag_applied_layers`` (default the mid
    block); use it with ``pag_scale > 0``.
    """
    from diffusers import StableDiffusionXLPAGPipeline

    pipe = StableDiffusionXLPAGPipeline(
        **_sdxl_components(scheduler, seed),
        add_watermarker=False,
        pag_applied_layers=list(pag_applied_layers),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_lora(pipe, folder, weight_name: str = "tiny_lora.safetensors", rank: int = 4, seed: int = 0):
    """Write a random LoRA for ``pipe.unet``'s attention projections as ``folder/weight_name`` (safetensors).

    Loadable with ``pipe.load_lora_weights(folder, weight_name=weight_name)``; nonzero, so fusing it changes the
    UNet's weights.  ``pipe`` itself is left as it was.  Needs peft.
    """
    import copy
    from pathlib import Path

    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = copy.deepcopy(pipe.unet)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))  # fmt: skip
    state = get_peft_model_state_dict(unet)
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in state.items()}  # lora_B starts at zero: make it count
    type(pipe).save_lora_weights(Path(folder), unet_lora_layers=state, weight_name=weight_name)
    return Path(folder) / weight_name
