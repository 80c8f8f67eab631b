"""diffusers' own APIs keep working with PLADIS applied, in either order with `pladis.apply` (issue: invisible to
diffusers). For each pipeline family and each API that sets, resets or rebuilds attention processors:

- scale 0: the output is bit-identical to the same pipeline with the same API call and no PLADIS;
- scale 2: PLADIS is provably on: the output differs from that stock output and equals a fresh apply made after
  the API call (the other order), and `pladis.is_applied` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

import pladis
from pladis.testing import transformers as tiny_transformers
from pladis.testing import unet as tiny_unet

pytestmark = pytest.mark.usefixtures("eager_one_thread")

SIZE = 32
IMAGE_EMBED_DIM = 16


@dataclass(frozen=True)
class Family:
    build: Callable
    call: dict
    unet: bool = True


FAMILIES = {
    "sd15": Family(lambda: tiny_unet.tiny_sd15_pipeline("ddim"), {}),
    "sdxl": Family(lambda: tiny_unet.tiny_sdxl_pipeline("euler"), {}),
    "sdxl-pag": Family(lambda: tiny_unet.tiny_sdxl_pag_pipeline("ddim"), {"pag_scale": 3.0}),
    "sdxl-controlnet": Family(lambda: tiny_unet.tiny_sdxl_controlnet_pipeline("ddim"), {"image": "control"}),
    "flux": Family(tiny_transformers.tiny_flux_pipeline, {"max_sequence_length": 32, "guidance_scale": 0.0}, False),
    "sd3": Family(tiny_transformers.tiny_sd3_pipeline, {"max_sequence_length": 32}, False),
}


def run(pipe, family: Family, **extra) -> np.ndarray:
    kwargs = {k: v for k, v in family.call.items() if k != "image"}
    if "image" in family.call:
        kwargs["image"] = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    out = pipe(
        prompt="a red cube on a blue sphere", num_inference_steps=2, height=SIZE, width=SIZE, output_type="np",
        generator=torch.Generator().manual_seed(0), **kwargs, **extra,
    )  # fmt: skip
    return out.images


def denoisers(pipe) -> list[torch.nn.Module]:
    return [m for n in ("unet", "controlnet", "transformer") if (m := getattr(pipe, n, None)) is not None]


# --------------------------------------------------------------------------- the APIs, as user code calls them


def set_default_attn_processor(pipe):
    for model in denoisers(pipe):
        model.set_default_attn_processor()
    return pipe


def set_attn_processor(pipe):
    for model in denoisers(pipe):
        model.set_attn_processor(AttnProcessor2_0())
    return pipe


def _on_pipe_or_models(pipe, method: str) -> None:
    if hasattr(pipe, method):  # SD/SDXL pipelines; SD3 only has it on the transformer
        getattr(pipe, method)()
    else:
        for model in denoisers(pipe):
            getattr(model, method)()


def fuse_qkv(pipe):
    _on_pipe_or_models(pipe, "fuse_qkv_projections")
    return pipe


def fuse_unfuse_qkv(pipe):
    _on_pipe_or_models(pipe, "fuse_qkv_projections")
    _on_pipe_or_models(pipe, "unfuse_qkv_projections")
    return pipe


def attention_slicing(pipe):
    pipe.enable_attention_slicing(1)
    return pipe


def freeu(pipe):
    pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    return pipe


def from_pipe(pipe):
    return type(pipe).from_pipe(pipe)


def lora_fused(pipe):
    from peft import LoraConfig

    torch.manual_seed(5)
    model = denoisers(pipe)[0]
    model.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return pipe


def _ip_adapter_state(unet) -> dict:
    g = torch.Generator().manual_seed(3)
    dim = unet.config.cross_attention_dim
    image_proj = {
        "proj.weight": torch.randn(4 * dim, IMAGE_EMBED_DIM, generator=g) * 0.1,
        "proj.bias": torch.zeros(4 * dim),
        "norm.weight": torch.ones(dim),
        "norm.bias": torch.zeros(dim),
    }
    ip_adapter, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            attn = unet.get_submodule(name.removesuffix(".processor"))
            for proj in ("to_k_ip", "to_v_ip"):
                weight = torch.randn(attn.to_k.out_features, dim, generator=g) * 0.1
                ip_adapter[f"{key_id}.{proj}.weight"] = weight
            key_id += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def ip_adapter(pipe):
    pipe.load_ip_adapter(_ip_adapter_state(pipe.unet), subfolder="", weight_name="", image_encoder_folder=None)
    pipe.set_ip_adapter_scale(0.7)
    return pipe


def ip_adapter_unloaded(pipe):
    ip_adapter(pipe).unload_ip_adapter()
    return pipe


IP_EMBEDS = {
    "ip_adapter_image_embeds": lambda: [torch.randn(2, 1, IMAGE_EMBED_DIM, generator=torch.Generator().manual_seed(4))]
}

OPS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "set_default_attn_processor": (set_default_attn_processor, ("sd15", "sdxl", "sdxl-controlnet")),
    "set_attn_processor": (set_attn_processor, ("sd15", "sdxl", "sdxl-controlnet")),
    "fuse_qkv": (fuse_qkv, ("sd15", "sdxl", "sdxl-pag", "sd3")),
    "fuse_unfuse_qkv": (fuse_unfuse_qkv, ("sd15", "sdxl", "sd3")),
    "attention_slicing": (attention_slicing, ("sd15", "sdxl", "sdxl-pag", "sdxl-controlnet")),
    "freeu": (freeu, ("sd15", "sdxl")),
    "from_pipe": (from_pipe, ("sd15", "sdxl", "flux", "sd3")),
    "lora_fused": (lora_fused, ("sd15", "sdxl", "flux", "sd3")),
    "ip_adapter": (ip_adapter, ("sd15",)),
    "ip_adapter_unloaded": (ip_adapter_unloaded, ("sd15",)),
}
CASES = [pytest.param(f, op, id=f"{f}-{op}") for op, (_, fams) in OPS.items() for f in fams]


def extra_for(op: str) -> dict:
    return {k: v() for k, v in IP_EMBEDS.items()} if op == "ip_adapter" else {}


@pytest.mark.parametrize("family_name, op", CASES)
def test_diffusers_api_keeps_pladis_in_either_order(family_name, op):
    family, (call_api, _) = FAMILIES[family_name], OPS[op]
    stock = run(call_api(family.build()), family, **extra_for(op))

    before = call_api(family.build())  # the API first, then a fresh apply
    pladis.apply(before, scale=2.0)
    reference = run(before, family, **extra_for(op))

    after = family.build()  # apply first, then the API
    handle = pladis.apply(after, scale=0.0)
    after = call_api(after)
    assert pladis.is_applied(after)
    zero = run(after, family, **extra_for(op))
    assert np.array_equal(zero, stock), f"scale 0 is not the stock output after {op}"
    handle.scale = 2.0
    image = run(after, family, **extra_for(op))
    assert np.abs(image.astype(np.float64) - stock).mean() > 1e-4, f"PLADIS is off after {op}"
    np.testing.assert_allclose(image, reference, atol=1e-6, err_msg=f"{op} then apply != apply then {op}")
    pladis.remove(after)
    assert not pladis.is_applied(after)
    assert np.array_equal(run(after, family, **extra_for(op)), stock)


@pytest.mark.parametrize("family_name", ["sd15", "flux"])
def test_processor_types_and_state_dict_are_diffusers_own(family_name, tmp_path):
    """PLADIS is a runtime patch: processors keep their classes, state_dict keys do not change, and a saved and
    reloaded pipeline is the stock one."""
    family = FAMILIES[family_name]
    pipe = family.build()
    model = denoisers(pipe)[0]
    types, keys = {k: type(p) for k, p in model.attn_processors.items()}, set(model.state_dict())
    stock = run(pipe, family)
    pladis.apply(pipe, scale=2.0)
    assert {k: type(p) for k, p in model.attn_processors.items()} == types
    assert set(model.state_dict()) == keys
    pipe.save_pretrained(tmp_path / "saved")
    loaded = type(pipe).from_pretrained(tmp_path / "saved")
    assert not pladis.is_applied(loaded)
    assert np.array_equal(run(loaded, family), stock)


def test_flux_load_ip_adapter_after_apply_rebuilds_processors_without_crash():
    """diffusers rebuilds FLUX processors with `proc.__class__()`: processors stay its own, so this works."""
    pipe = tiny_transformers.tiny_flux_pipeline()
    pladis.apply(pipe, scale=2.0)
    model = pipe.transformer
    rebuilt = {name: type(proc)() for name, proc in model.attn_processors.items()}
    model.set_attn_processor(rebuilt)
    assert pladis.is_applied(pipe)
    run(pipe, FAMILIES["flux"])


def test_pag_enable_disable_keeps_pladis():
    family = FAMILIES["sdxl-pag"]
    pipe = family.build()
    pladis.apply(pipe, scale=2.0)
    pipe.set_pag_applied_layers(["mid"])
    first = run(pipe, family)
    pipe.set_pag_applied_layers(["up"])
    pipe.set_pag_applied_layers(["mid"])
    assert np.array_equal(run(pipe, family), first)
    assert pladis.is_applied(pipe)
