"""PLADIS on transformer backbones: cross-attention (SANA, PixArt-Sigma, Wan, LTX-Video) and joint attention
(FLUX double and single stream, SD3/SD3.5, CogVideoX), on tiny random-weight models built in code, offline.

Most checks run at the denoiser level (`pladis.testing.transformers.tiny_transformer`); a few whole pipelines check
that the pipelines' own call styles keep working.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

import pladis
import pladis.attention
import pladis.joint
from pladis.adapters import AttentionHook, hook_of, record_attention
from pladis.entmax import entmax, masked_softmax
from pladis.families import GENERIC, family_of
from pladis.testing.transformers import tiny_transformer

MIN_CHANGE = 1e-4  # smallest mean |change| that counts as "PLADIS changed the output"
SOFTMAX_TOL = 2e-5  # alpha = 1 against the stock model, fp32

# id -> tiny_transformer arguments
BACKBONES = {
    "sana": dict(name="sana"),
    "pixart": dict(name="pixart"),
    "wan": dict(name="wan"),
    "ltx": dict(name="ltx"),
    "flux": dict(name="flux"),
    "sd3": dict(name="sd3"),
    "sd3.5": dict(name="sd3", dual_attention_layers=(0,), qk_norm="rms_norm"),  # MMDiT-X: image-only attn2 too
    "cogvideox": dict(name="cogvideox"),
}
# where the text tokens sit in the joint sequence
JOINT = {"flux": "first", "sd3": "last", "sd3.5": "last", "cogvideox": "first"}
MASKED = ["sana", "pixart", "ltx"]
# the modules PLADIS must enter (and no other)
EXPECTED_TARGETS = {
    "sana": {f"transformer_blocks.{i}.attn2" for i in range(2)},
    "pixart": {f"transformer_blocks.{i}.attn2" for i in range(2)},
    "wan": {f"blocks.{i}.attn2" for i in range(2)},
    "ltx": {f"transformer_blocks.{i}.attn2" for i in range(2)},
    "flux": {f"transformer_blocks.{i}.attn" for i in range(2)}
    | {f"single_transformer_blocks.{i}.attn" for i in range(2)},
    "sd3": {f"transformer_blocks.{i}.attn" for i in range(2)},
    "sd3.5": {f"transformer_blocks.{i}.attn" for i in range(2)},
    "cogvideox": {f"transformer_blocks.{i}.attn1" for i in range(2)},
}


_BUILT: dict = {}


def backbone(case: str):
    """(tiny model with inputs, its stock output), built once per test session."""
    if case not in _BUILT:
        args = dict(BACKBONES[case])
        tiny = tiny_transformer(args.pop("name"), **args)
        _BUILT[case] = tiny, tiny()
    return _BUILT[case]


@pytest.fixture(autouse=True)
def eager_backend():
    """The eager PLADIS kernel (no torch.compile warm-up); PLADIS never left on a shared model."""
    before = pladis.get_backend()
    pladis.set_backend("eager")
    yield
    pladis.set_backend(before)
    for tiny, _ in _BUILT.values():
        pladis.remove(tiny.model)


def mean_change(a, b) -> float:
    return (a - b).abs().mean().item()


# --------------------------------------------------------------------------- every backbone


@pytest.mark.parametrize("case", BACKBONES)
def test_targets_and_remove_restore_exactly(case):
    tiny, stock = backbone(case)
    originals = {name: module.processor for name, module in tiny.model.named_modules() if hasattr(module, "processor")}
    forwards_before = {name: m.forward for name, m in tiny.model.named_modules()}
    pladis.apply(tiny.model)
    patched = {name for name, m in tiny.model.named_modules() if isinstance(hook_of(m), AttentionHook)}
    assert patched == EXPECTED_TARGETS[case]
    assert tiny().shape == stock.shape  # the model's own forward call, unchanged
    assert pladis.remove(tiny.model) == len(patched)
    assert all(m.processor is originals[name] for name, m in tiny.model.named_modules() if name in originals)
    assert torch.equal(tiny(), stock)
    # remove takes off every hook apply added (attention, timestep and text length): the forwards are the originals
    assert all(hook_of(m) is None for m in tiny.model.modules())
    assert {name: m.forward for name, m in tiny.model.named_modules()} == forwards_before


@pytest.mark.parametrize("case", BACKBONES)
def test_scale_zero_is_the_stock_model_bit_for_bit(case):
    tiny, stock = backbone(case)
    handle = pladis.apply(tiny.model, scale=0.0)
    assert torch.equal(tiny(), stock)
    handle.scale = 2.0
    assert mean_change(tiny(), stock) > MIN_CHANGE
    pladis.set_scale(tiny.model, 0.0)
    assert torch.equal(tiny(), stock)


@pytest.mark.parametrize("scale", [2.0, 5.0])
@pytest.mark.parametrize("case", BACKBONES)
def test_softmax_alpha_reproduces_the_stock_attention(case, scale):
    """alpha = 1 makes the sparse branch a softmax: any scale must give the stock model, so the adapter's maths
    (projections, RoPE, QK norms, masks, added K/V, output split) are the stock processor's."""
    tiny, stock = backbone(case)
    pladis.apply(tiny.model, scale=scale, alpha=1.0)
    torch.testing.assert_close(tiny(), stock, rtol=0, atol=SOFTMAX_TOL)


@pytest.mark.parametrize("case", BACKBONES)
def test_recorded_maps_are_the_maps_used(case):
    tiny, _ = backbone(case)
    handle = pladis.apply(tiny.model)
    out = tiny()
    with record_attention(handle) as maps:
        recorded = tiny()
    assert set(maps) == EXPECTED_TARGETS[case]
    assert all(len(calls) == 1 for calls in maps.values())
    torch.testing.assert_close(recorded, out, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- joint attention


def text_rows(case: str, length: int, n_text: int) -> slice:
    return slice(0, n_text) if JOINT[case] == "first" else slice(length - n_text, length)


@pytest.mark.parametrize("case", JOINT)
def test_joint_map_changes_only_the_text_block_of_image_rows(case):
    """On every recorded layer: image-query rows keep their dense mass on text keys and their image-key columns,
    the text block is m [(1 - lambda) softmax + lambda entmax] over the text keys, text-query rows stay dense, and
    every row sums to 1."""
    tiny, _ = backbone(case)
    scale = 2.0
    handle = pladis.apply(tiny.model, scale=scale)
    with record_attention(handle, with_scores=True) as maps:
        tiny()
    assert set(maps) == EXPECTED_TARGETS[case]
    for name, [(weights, scores)] in maps.items():
        length = scores.shape[-1]
        text = text_rows(case, length, tiny.text)
        image = torch.ones(length, dtype=torch.bool)
        image[text] = False
        dense = masked_softmax(scores)
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]), rtol=0, atol=1e-5)
        torch.testing.assert_close(weights[..., text, :], dense[..., text, :], rtol=0, atol=1e-6)  # text rows
        img_rows_w, img_rows_d = weights[..., image, :], dense[..., image, :]
        torch.testing.assert_close(img_rows_w[..., image], img_rows_d[..., image], rtol=0, atol=1e-6)
        mass = img_rows_d[..., text].sum(-1, keepdim=True)
        torch.testing.assert_close(img_rows_w[..., text].sum(-1, keepdim=True), mass, rtol=0, atol=1e-5)
        text_scores = scores[..., image, :][..., text]
        expected = mass * ((1 - scale) * torch.softmax(text_scores, -1) + scale * entmax(text_scores, 1.5))
        torch.testing.assert_close(img_rows_w[..., text], expected, rtol=0, atol=1e-5)
        assert (img_rows_w[..., text] - img_rows_d[..., text]).abs().max() > 1e-3, name  # PLADIS did act


@pytest.mark.parametrize("lse_kernel", [True, False], ids=["mass-from-kernel-lse", "mass-from-sdpa"])
def test_joint_attention_matches_its_map(lse_kernel, monkeypatch):
    """`pladis_joint_attention` (stock SDPA + text-block correction) equals its full map times V, text first, last
    or in the middle, with boolean and additive masks, in small chunks; the dense text mass m taken from the
    kernel's log-sum-exp or from a second SDPA call alike."""
    if not lse_kernel:
        monkeypatch.setattr(
            pladis.joint,
            "stock_attention",
            lambda q, k, v, mask, scale: (
                torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale),
                None,
            ),
        )
    gen = torch.Generator().manual_seed(0)
    q, k, v = (2 * torch.randn(2, 3, 40, 8, generator=gen) for _ in range(3))
    bool_mask = torch.rand(2, 1, 1, 40, generator=gen) > 0.2
    bool_mask[..., [0, 12, 39]] = True
    for text in (slice(0, 7), slice(30, 40), slice(10, 20)):
        for mask in (None, bool_mask, torch.randn(2, 3, 40, 40, generator=gen)):
            scores = pladis.attention._apply_mask(q @ k.transpose(-1, -2) / math.sqrt(8), mask)
            expected = pladis.joint.joint_weights(scores, text) @ v
            out = pladis.joint.pladis_joint_attention(q, k, v, text=text, attn_mask=mask, max_score_elements=64)
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
            stock = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            assert torch.equal(
                pladis.joint.pladis_joint_attention(q, k, v, text=text, attn_mask=mask, alpha=1.0), stock
            )


def test_flux_single_stream_blocks_are_covered():
    """PLADIS in the single-stream blocks alone (text already joined into the sequence) changes the output, and
    their text length comes from the block's own encoder_hidden_states."""
    tiny, stock = backbone("flux")
    handle = pladis.apply(tiny.model, layers=["single_transformer_blocks.*"])
    assert mean_change(tiny(), stock) > MIN_CHANGE
    with record_attention(handle) as maps:
        tiny()
    assert set(maps) == {f"single_transformer_blocks.{i}.attn" for i in range(2)}


def test_flux_ip_adapter_path_stays_the_processors_own():
    """FLUX with IP-Adapter processors: PLADIS enters the joint attention (the first SDPA call), the image-prompt
    attention that follows stays stock."""
    from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor

    tiny = tiny_transformer("flux")
    for block in tiny.model.transformer_blocks:
        ip = FluxIPAdapterAttnProcessor(hidden_size=32, cross_attention_dim=32, num_tokens=(4,), scale=1.0)
        torch.nn.init.normal_(ip.to_k_ip[0].weight), torch.nn.init.normal_(ip.to_v_ip[0].weight)
        block.attn.set_processor(ip)
    ip_tokens = [torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(3))]
    call = functools.partial(tiny, joint_attention_kwargs={"ip_hidden_states": ip_tokens})
    stock = call()
    assert mean_change(stock, backbone("flux")[1]) > MIN_CHANGE  # the image prompt does act (same weights, seed 0)
    pladis.apply(tiny.model, alpha=1.0)
    torch.testing.assert_close(call(), stock, rtol=0, atol=SOFTMAX_TOL)
    pladis.apply(tiny.model)
    assert mean_change(call(), stock) > MIN_CHANGE
    pladis.remove(tiny.model)
    assert torch.equal(call(), stock)


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("scale", [1.0, 2.0])
@pytest.mark.parametrize("case", MASKED)
def test_padded_text_tokens_get_zero_weight_in_every_layer(case, scale):
    """scale 1 is the sparse map alone, scale 2 the PLADIS mix: both give padded text tokens exactly 0."""
    tiny, _ = backbone(case)
    handle = pladis.apply(tiny.model, scale=scale)
    with record_attention(handle, with_scores=True) as maps:
        tiny()
    assert set(maps) == EXPECTED_TARGETS[case]
    for name, [(weights, scores)] in maps.items():
        assert weights.shape[-1] == tiny.text
        for b, padded in enumerate(tiny.padded):
            assert padded and torch.all(weights[b, ..., padded] == 0), name
            assert masked_softmax(scores)[b, ..., padded].max() < 1e-30  # the dense map too
            kept = [i for i in range(tiny.text) if i not in padded]
            torch.testing.assert_close(weights[b, ..., kept].sum(-1), torch.ones_like(weights[b, ..., 0]))


def test_wan_image_to_video_enters_the_text_attention_only():
    """Wan I2V attends to the CLIP image tokens first and to the text second: PLADIS takes the second call."""
    tiny = tiny_transformer("wan", text=512, image_dim=16, added_kv_proj_dim=24)
    call = functools.partial(
        tiny, encoder_hidden_states_image=torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(4))
    )
    stock = call()
    handle = pladis.apply(tiny.model, alpha=1.0)
    torch.testing.assert_close(call(), stock, rtol=0, atol=SOFTMAX_TOL)
    handle.alpha = 1.5
    with record_attention(handle) as maps:
        changed = call()
    assert mean_change(changed, stock) > MIN_CHANGE
    assert {weights.shape[-1] for calls in maps.values() for weights in calls} == {512}  # the text keys


# --------------------------------------------------------------------------- long sequences


@pytest.mark.parametrize("case", ["wan", "cogvideox"])
def test_long_video_sequence_is_chunked_with_the_same_result(case, monkeypatch):
    """A video-shaped sequence (1280 tokens) in small score chunks: every map PLADIS builds stays within the bound
    (no tokens x tokens matrix: the joint path only scores image queries against text keys) and the output equals
    the unchunked one."""
    tiny = tiny_transformer(case, frames=5, size=32, batch=1)
    pladis.apply(tiny.model)
    whole = tiny()
    limit = 4096
    for fn in (pladis.attention.pladis_attention, pladis.joint.pladis_joint_attention):
        monkeypatch.setitem(fn.__kwdefaults__, "max_score_elements", limit)
    largest = []
    for module in (pladis.attention, pladis.joint):
        mixed = module._mixed
        monkeypatch.setattr(module, "_mixed", lambda s, *a, _f=mixed: largest.append(s.numel()) or _f(s, *a))
    chunked = tiny()
    assert largest and max(largest) <= limit
    assert len(largest) > 2 * len(EXPECTED_TARGETS[case])  # several chunks per layer
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- unknown layouts


def test_unknown_joint_processor_is_a_clear_error():
    tiny = tiny_transformer("flux")

    class MyProcessor:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
            raise AssertionError("never called")

    tiny.model.single_transformer_blocks[1].attn.set_processor(MyProcessor())
    with pytest.raises(ValueError, match=r"single_transformer_blocks\.1\.attn.*MyProcessor"):
        pladis.apply(tiny.model)
    assert not pladis.is_applied(tiny.model)


def test_non_native_attention_backend_is_a_clear_error():
    tiny, _ = backbone("wan")
    tiny.model.blocks[0].attn2.processor._attention_backend = "flash"
    try:
        with pytest.raises(ValueError, match=r"blocks\.0\.attn2.*flash"):
            pladis.apply(tiny.model)
    finally:
        tiny.model.blocks[0].attn2.processor._attention_backend = None


def test_joint_attention_of_an_unknown_model_is_a_clear_error():
    from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0

    class NewMMDiT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention(query_dim=16, added_kv_proj_dim=16, dim_head=8, heads=2, out_dim=16,
                                  context_pre_only=False, processor=JointAttnProcessor2_0())  # fmt: skip

    with pytest.raises(ValueError, match=r"NewMMDiT.*joint.*attn"):
        pladis.apply(NewMMDiT())
    assert family_of(NewMMDiT()) is GENERIC  # no family knows it: the generic cross-attention scan, which refuses


# --------------------------------------------------------------------------- whole pipelines


def generate(pipe, **kwargs):
    return pipe(prompt="a red cube on a blue sphere", generator=torch.Generator().manual_seed(0), output_type="pt",
                **kwargs).images  # fmt: skip


SIZE = dict(height=32, width=32)


@pytest.mark.parametrize(
    "build, build_kwargs, kwargs",
    [
        pytest.param("tiny_flux_pipeline", {}, dict(guidance_scale=0.0, num_inference_steps=4, max_sequence_length=256,
                     **SIZE), id="flux-schnell-style"),
        pytest.param("tiny_flux_pipeline", dict(guidance_embeds=True), dict(num_inference_steps=50,
                     max_sequence_length=32, **SIZE), id="flux-dev-style-50-steps"),
        pytest.param("tiny_sd3_pipeline", {}, dict(guidance_scale=5.0, num_inference_steps=2, max_sequence_length=32,
                     **SIZE), id="sd3-cfg"),
        pytest.param("tiny_pixart_sigma_pipeline", {}, dict(num_inference_steps=2, use_resolution_binning=False,
                     clean_caption=False, max_sequence_length=32), id="pixart-sigma"),
        pytest.param("tiny_sana_pipeline", {}, dict(num_inference_steps=2, use_resolution_binning=False, **SIZE),
                     id="sana-defaults"),
    ],
)  # fmt: skip
def test_pipeline_call_styles(build, build_kwargs, kwargs):
    from pladis.testing import transformers as tiny_transformers

    pipe = getattr(tiny_transformers, build)(**build_kwargs)
    stock = generate(pipe, **kwargs)
    handle = pladis.apply(pipe)
    assert mean_change(generate(pipe, **kwargs), stock) > MIN_CHANGE
    handle.scale = 0.0
    assert torch.equal(generate(pipe, **kwargs), stock)
    pladis.remove(pipe)
    assert torch.equal(generate(pipe, **kwargs), stock)


def test_pixart_pipeline_masks_the_t5_padding():
    """The pipeline's own T5 padding mask reaches every PLADIS layer: padded tokens get exactly 0."""
    from pladis.testing.transformers import tiny_pixart_sigma_pipeline

    pipe = tiny_pixart_sigma_pipeline()
    handle = pladis.apply(pipe)
    with record_attention(handle) as maps:
        generate(pipe, num_inference_steps=1, use_resolution_binning=False, clean_caption=False, max_sequence_length=48,
                 guidance_scale=4.5, negative_prompt="")  # fmt: skip
    kept = pipe.tokenizer(["", "a red cube on a blue sphere"], padding="max_length", max_length=48).attention_mask
    assert len(maps) == 2
    for calls in maps.values():
        for weights in calls:
            for b, row in enumerate(kept):
                padded = [i for i, keep in enumerate(row) if not keep]
                assert padded and torch.all(weights[b, ..., padded] == 0)


@pytest.mark.parametrize("build, options", [
    ("tiny_flux_pipeline", ["--guidance", "0", "--steps", "4", "--max-sequence-length", "256"]),
    ("tiny_sd3_pipeline", ["--steps", "2", "--max-sequence-length", "32"]),
], ids=["flux-schnell-style", "sd3"])  # fmt: skip
def test_cli_generates_with_transformer_pipelines(build, options, tmp_path):
    from typer.testing import CliRunner

    from pladis import cli
    from pladis.testing import transformers as tiny_transformers

    getattr(tiny_transformers, build)().save_pretrained(tmp_path / "model")
    result = CliRunner().invoke(cli.app, ["generate", "--model", str(tmp_path / "model"), "--prompt", "a red cube",
                                          "--size", "32", "--compare", str(tmp_path / "cmp.png"), *options])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cmp.png").exists()
