"""Tiny random-weight transformer backbones and pipelines (FLUX, SD3, SANA, PixArt-Sigma, Wan, CogVideoX, LTX-Video).

Built fully in code and offline, for tests, benchmarks and CLI smoke tests; the configurations follow diffusers'
own fast-test configs. `tiny_transformer(name)` gives a denoiser and one set of forward inputs (text padding masks
where the model takes them); `tiny_flux_pipeline`, `tiny_sd3_pipeline`, `tiny_sana_pipeline` and
`tiny_pixart_sigma_pipeline` give whole pipelines with in-memory tokenizers (the CLIP one from `pladis.testing.unet`).
Every builder is deterministic for a given seed. The outputs are noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .unet import _text_encoder, tiny_clip_tokenizer

__all__ = [
    "TRANSFORMERS",
    "TinyTransformer",
    "tiny_flux_pipeline",
    "tiny_gemma_tokenizer",
    "tiny_pixart_sigma_pipeline",
    "tiny_sana_pipeline",
    "tiny_sd3_pipeline",
    "tiny_t5",
    "tiny_t5_tokenizer",
    "tiny_transformer",
]

_T5_DIM = 32


@dataclass
class TinyTransformer:
    """A tiny denoiser with one set of forward inputs.

    text: how many text tokens it attends to; padded: for models with a text padding mask, the positions of the
    padded (masked) text tokens of each batch element.
    """

    name: str
    model: torch.nn.Module
    inputs: dict
    text: int
    padded: list[list[int]] = field(default_factory=list)

    def __call__(self, **overrides) -> torch.Tensor:
        with torch.no_grad():
            return self.model(**{**self.inputs, **overrides}, return_dict=False)[0]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_generator(seed))


def _padding_mask(batch: int, length: int, kept: list[int]) -> tuple[torch.Tensor, list[list[int]]]:
    """A (batch, length) 1/0 text mask keeping the first kept[b] tokens of row b, and the padded positions."""
    mask = torch.zeros(batch, length)
    for b, n in enumerate(kept):
        mask[b, :n] = 1
    return mask, [list(range(n, length)) for n in kept]


def _flux(seed: int, batch: int = 2, text: int = 12, size: int = 8, **config) -> TinyTransformer:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    config = dict(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                  **config)  # fmt: skip
    model = FluxTransformer2DModel(**config).eval()
    img_ids = torch.zeros(size, size, 3)
    img_ids[..., 1] = torch.arange(size)[:, None]
    img_ids[..., 2] = torch.arange(size)[None, :]
    inputs = dict(
        hidden_states=_randn(batch, size * size, 4, seed=seed + 1),
        encoder_hidden_states=_randn(batch, text, 32, seed=seed + 2),
        pooled_projections=_randn(batch, 32, seed=seed + 3),
        timestep=torch.full((batch,), 0.5),
        img_ids=img_ids.reshape(-1, 3),
        txt_ids=torch.zeros(text, 3),
    )
    if config.get("guidance_embeds"):
        inputs["guidance"] = torch.full((batch,), 3.5)
    return TinyTransformer("flux", model, inputs, text)


def _sd3(seed: int, batch: int = 2, text: int = 12, size: int = 8, **config) -> TinyTransformer:
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    config = dict(sample_size=size, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
                  num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64,
                  out_channels=4) | config  # fmt: skip
    model = SD3Transformer2DModel(**config).eval()
    inputs = dict(
        hidden_states=_randn(batch, 4, size, size, seed=seed + 1),
        encoder_hidden_states=_randn(batch, text, 32, seed=seed + 2),
        pooled_projections=_randn(batch, 64, seed=seed + 3),
        timestep=torch.full((batch,), 500.0),
    )
    return TinyTransformer("sd3", model, inputs, text)


def _sana(seed: int, batch: int = 2, text: int = 12, size: int = 8, **config) -> TinyTransformer:
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(seed)
    config = dict(patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2,
                  attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
                  cross_attention_dim=8, caption_channels=8, sample_size=size) | config  # fmt: skip
    model = SanaTransformer2DModel(**config).eval()
    mask, padded = _padding_mask(batch, text, [text - 5, text - 2][:batch])
    inputs = dict(
        hidden_states=_randn(batch, 4, size, size, seed=seed + 1),
        encoder_hidden_states=_randn(batch, text, 8, seed=seed + 2),
        encoder_attention_mask=mask,
        timestep=torch.full((batch,), 500.0),
    )
    return TinyTransformer("sana", model, inputs, text, padded)


def _pixart(seed: int, batch: int = 2, text: int = 12, size: int = 8, **config) -> TinyTransformer:
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    config = dict(sample_size=size, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
                  caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
                  activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
                  norm_elementwise_affine=False, norm_eps=1e-6) | config  # fmt: skip
    model = PixArtTransformer2DModel(**config).eval()
    mask, padded = _padding_mask(batch, text, [text - 4, text - 1][:batch])
    inputs = dict(
        hidden_states=_randn(batch, 4, size, size, seed=seed + 1),
        encoder_hidden_states=_randn(batch, text, 32, seed=seed + 2),
        encoder_attention_mask=mask,
        timestep=torch.full((batch,), 500),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )
    return TinyTransformer("pixart", model, inputs, text, padded)


def _wan(seed: int, batch: int = 2, text: int = 12, frames: int = 3, size: int = 8, **config) -> TinyTransformer:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    config = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                  text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", rope_max_seq_len=32) | config  # fmt: skip
    model = WanTransformer3DModel(**config).eval()
    inputs = dict(
        hidden_states=_randn(batch, 4, frames, size, size, seed=seed + 1),
        encoder_hidden_states=_randn(batch, text, 32, seed=seed + 2),
        timestep=torch.full((batch,), 500),
    )
    return TinyTransformer("wan", model, inputs, text)


def _cogvideox(seed: int, batch: int = 2, text: int = 12, frames: int = 3, size: int = 8, **config) -> TinyTransformer:
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    torch.manual_seed(seed)
    head_dim = 16  # the 3D RoPE splits it 4 / 6 / 6 over time, height, width
    config = dict(num_attention_heads=2, attention_head_dim=head_dim, in_channels=4, out_channels=4,
                  time_embed_dim=2, text_embed_dim=32, num_layers=2, sample_width=size, sample_height=size,
                  sample_frames=(frames - 1) * 4 + 1, patch_size=2, temporal_compression_ratio=4,
                  max_text_seq_length=text, use_rotary_positional_embeddings=True) | config  # fmt: skip
    model = CogVideoXTransformer3DModel(**config).eval()
    grid = size // 2
    cos, sin = get_3d_rotary_pos_embed(head_dim, None, (grid, grid), frames, grid_type="slice", max_size=(grid, grid))
    inputs = dict(
        hidden_states=_randn(batch, frames, 4, size, size, seed=seed + 1),
        encoder_hidden_states=_randn(batch, text, 32, seed=seed + 2),
        timestep=torch.full((batch,), 500),
        image_rotary_emb=(cos, sin),
    )
    return TinyTransformer("cogvideox", model, inputs, text)


def _ltx(seed: int, batch: int = 2, text: int = 12, frames: int = 2, size: int = 4, **config) -> TinyTransformer:
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    config = dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
                  attention_head_dim=8, cross_attention_dim=32, num_layers=2, caption_channels=32) | config  # fmt: skip
    model = LTXVideoTransformer3DModel(**config).eval()
    mask, padded = _padding_mask(batch, text, [text - 3, text - 6][:batch])
    inputs = dict(
        hidden_states=_randn(batch, frames * size * size, 8, seed=seed + 1),
        encoder_hidden_states=_randn(batch, text, 32, seed=seed + 2),
        encoder_attention_mask=mask,
        timestep=torch.full((batch,), 500),
        num_frames=frames,
        height=size,
        width=size,
        rope_interpolation_scale=(1.0, 1.0, 1.0),
    )
    return TinyTransformer("ltx", model, inputs, text, padded)


#: name -> builder(seed, batch=2, text=12, size=..., **model config overrides) -> TinyTransformer
TRANSFORMERS: dict[str, Callable[..., TinyTransformer]] = {
    "flux": _flux,
    "sd3": _sd3,
    "sana": _sana,
    "pixart": _pixart,
    "wan": _wan,
    "cogvideox": _cogvideox,
    "ltx": _ltx,
}


def tiny_transformer(name: str, seed: int = 0, **kwargs) -> TinyTransformer:
    """A tiny denoiser by name (one of `TRANSFORMERS`) with forward inputs; kwargs: batch, text, size, frames and
    model config overrides."""
    try:
        build = TRANSFORMERS[name]
    except KeyError:
        raise ValueError(f"unknown tiny transformer {name!r}; choose from {sorted(TRANSFORMERS)}") from None
    return build(seed, **kwargs)


# --------------------------------------------------------------------------- text encoders and pipelines


def tiny_t5_tokenizer(model_max_length: int = 512):
    """A T5 tokenizer (Unigram) over an in-memory vocabulary: pad, eos, unk, then every printable ASCII character
    alone and as a word start, so any text tokenizes."""
    from transformers import T5Tokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def tiny_t5(seed: int = 0, vocab_size: int | None = None):
    """A 2-layer T5 encoder (d_model 32) matching `tiny_t5_tokenizer`."""
    from transformers import T5Config, T5EncoderModel

    vocab_size = vocab_size or len(tiny_t5_tokenizer())
    config = T5Config(vocab_size=vocab_size, d_model=_T5_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # fmt: skip
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def _flow_vae(seed: int, latent_channels: int):
    """The tiny AutoencoderKL of diffusers' FLUX/SD3 tests: one block (no downsampling), shift and scale set."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035).eval()  # fmt: skip


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = False):
    """A tiny random-weight `FluxPipeline` (2 double-stream and 2 single-stream blocks; CLIP + T5 text encoders).

    guidance_embeds=False is schnell-like (call with guidance_scale=0); True is dev-like (distilled guidance).
    Call at height = width = 32: 32 x 32 one-channel latents, packed 2 x 2 into 256 image tokens of 4 channels.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    transformer = _flux(seed, guidance_embeds=guidance_embeds).model
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flow_vae(seed, latent_channels=1),
        text_encoder=_text_encoder(seed),
        tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=tiny_t5(seed + 1),
        tokenizer_2=tiny_t5_tokenizer(),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_pipeline(seed: int = 0):
    """A tiny random-weight `StableDiffusion3Pipeline` (2 joint blocks; two CLIP encoders with projection + T5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    transformer = _sd3(seed, size=32).model
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flow_vae(seed, latent_channels=4),
        text_encoder=_text_encoder(seed, with_projection=True),
        tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=_text_encoder(seed + 1, with_projection=True),
        tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=tiny_t5(seed + 2),
        tokenizer_3=tiny_t5_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pixart_sigma_pipeline(seed: int = 0):
    """A tiny random-weight `PixArtSigmaPipeline` (T5 text encoder with its padding mask; DDIM)."""
    from diffusers import AutoencoderKL, DDIMScheduler, PixArtSigmaPipeline

    transformer = _pixart(seed, size=8, caption_channels=_T5_DIM).model
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=16).eval()  # fmt: skip
    pipe = PixArtSigmaPipeline(
        tokenizer=tiny_t5_tokenizer(),
        text_encoder=tiny_t5(seed + 1),
        vae=vae,
        transformer=transformer,
        scheduler=DDIMScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_gemma_tokenizer():
    """A Gemma tokenizer over an in-memory vocabulary of the printable ASCII characters (no merges)."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "\u2581": 5}
    for c in range(32, 127):
        vocab.setdefault(chr(c), len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[])


def tiny_sana_pipeline(seed: int = 0):
    """A tiny random-weight `SanaPipeline` (Gemma-2 text encoder with its padding mask, a deep-compression VAE).

    Call with height = width = 32 and use_resolution_binning=False; everything else may stay the pipeline's
    default (complex human instruction, CFG 4.5, max_sequence_length 300).
    """
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = tiny_gemma_tokenizer()
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=2048,
                          pad_token_id=0, bos_token_id=2, eos_token_id=1)  # fmt: skip
    torch.manual_seed(seed + 1)
    text_encoder = Gemma2Model(config).eval()
    torch.manual_seed(seed)
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                        encoder_block_types=("ResBlock", "EfficientViTBlock"),
                        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
                        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)),
                        decoder_qkv_multiscales=((), (5,)), encoder_layers_per_block=(1, 1),
                        decoder_layers_per_block=(1, 1), downsample_block_type="conv",
                        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
                        scaling_factor=0.41407).eval()  # fmt: skip
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=_sana(seed).model,
                        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan_pipeline(seed: int = 0):
    """A tiny random-weight `WanPipeline` (text-to-video; 2 blocks, T5 encoder, a small Wan VAE).

    Call at height = width = 32 with num_frames = 5 (4k + 1): the VAE makes 2 latent frames of 4 x 4.
    Its output is ``.frames`` (no ``.images``), as with the real Wan models.
    """
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    transformer = _wan(seed, in_channels=16, out_channels=16).model
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()  # fmt: skip
    pipe = WanPipeline(
        tokenizer=tiny_t5_tokenizer(),
        text_encoder=tiny_t5(seed + 1),
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
