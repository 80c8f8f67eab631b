"""End-to-end tests of the pladis public API on tiny random-weight diffusers pipelines.

Everything runs offline on CPU: the pipelines come from :mod:`pladis.testing`.
Each pipeline is built once per module and restored after every test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

import pladis
from pladis.adapters import AttentionHook, InputsHook, hook_of
from pladis.testing import unet as tiny

SIZE = 64
PROMPT = "a photo of a red cube on a table"

# Smallest mean absolute pixel change that counts as "PLADIS changed the image"
# (well above float round-off, far below what scale 2 does to these models).
MIN_CHANGE = 1e-4


# --------------------------------------------------------------------------- cases


def _with_freeu(pipe):
    pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    return pipe


def _control_image():
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable
    steps: int = 2
    guidance_scale: float = 5.0
    extra: Callable[[], dict] = dict  # fresh extra call kwargs (tensors are rebuilt each call)

    def kwargs(self) -> dict:
        return dict(
            prompt=PROMPT,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            height=SIZE,
            width=SIZE,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
            **self.extra(),
        )


CASES = [
    Case("sd15-ddim", lambda: tiny.tiny_sd15_pipeline("ddim")),
    Case("sdxl-euler", lambda: tiny.tiny_sdxl_pipeline("euler")),
    Case(
        "sdxl-controlnet",
        lambda: tiny.tiny_sdxl_controlnet_pipeline("ddim"),
        extra=lambda: {"image": _control_image()},
    ),
    Case("sdxl-pag", lambda: tiny.tiny_sdxl_pag_pipeline("ddim"), extra=lambda: {"pag_scale": 3.0}),
    Case("sd15-freeu", lambda: _with_freeu(tiny.tiny_sd15_pipeline("ddim"))),
    Case("sd15-lcm", lambda: tiny.tiny_sd15_pipeline("lcm"), steps=4, guidance_scale=1.0),
    Case("sdxl-lcm", lambda: tiny.tiny_sdxl_pipeline("lcm"), steps=2, guidance_scale=0.0),
    Case("sdxl-lightning", lambda: tiny.tiny_sdxl_pipeline("euler-trailing"), steps=1, guidance_scale=0.0),
]
SD15 = CASES[0]
PAG = next(c for c in CASES if c.id == "sdxl-pag")


# --------------------------------------------------------------------------- helpers


def _denoisers(pipe) -> dict[str, torch.nn.Module]:
    return {n: m for n in ("unet", "controlnet") if (m := getattr(pipe, n, None)) is not None}


def _snapshot(pipe) -> dict[str, dict]:
    """``{component: {processor key: processor object}}``."""
    return {n: dict(m.attn_processors) for n, m in _denoisers(pipe).items()}


def _generate(pipe, case: Case, **overrides):
    """Run the pipeline; return the image array and how many times the UNet was called."""
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        image = pipe(**{**case.kwargs(), **overrides}).images
    finally:
        hook.remove()
    assert image.shape == (1, SIZE, SIZE, 3)
    return image, len(calls)


def _assert_same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b), f"outputs differ: max |diff| = {np.abs(a - b).max()}"


def _assert_changed(image, reference):
    assert np.isfinite(image).all()
    change = float(np.abs(image.astype(np.float64) - reference).mean())
    assert change > MIN_CHANGE, f"PLADIS did not change the output (mean |diff| = {change})"


def _assert_restored(pipe, snapshot):
    assert not pladis.is_applied(pipe)
    for name, model in _denoisers(pipe).items():
        assert hook_of(model) is None, f"{name} keeps a PLADIS hook"
        now = model.attn_processors
        assert now.keys() == snapshot[name].keys()
        for key, proc in now.items():
            assert proc is snapshot[name][key], f"{name}.{key} not restored"
        assert not any(hook_of(m) for m in model.modules()), f"{name} keeps PLADIS hooks"


def _assert_replaced(pipe, snapshot, selected: Callable[[str], bool] = lambda key: True):
    """PLADIS is on exactly the cross-attention (``attn2``) modules picked by ``selected``; every processor is
    still the original object (PLADIS lives in a hook on the module, not in its processor)."""
    replaced = 0
    for name, model in _denoisers(pipe).items():
        assert isinstance(hook_of(model), InputsHook)
        now = model.attn_processors
        assert now.keys() == snapshot[name].keys()
        for key, proc in now.items():
            assert proc is snapshot[name][key], f"{name}.{key} was touched"
        for mod_name, module in model.named_modules():
            if not isinstance(module, Attention):
                continue
            on = isinstance(hook_of(module), AttentionHook)
            if module.is_cross_attention and selected(f"{mod_name}.processor"):
                assert on, f"{name}.{mod_name} has no PLADIS hook"
                replaced += 1
            else:
                assert not on, f"{name}.{mod_name} was touched"
    assert replaced > 0
    return replaced


def _cross_attention_keys(pipe) -> int:
    return sum(k.endswith("attn2.processor") for s in _snapshot(pipe).values() for k in s)


@dataclass
class Prepared:
    case: Case
    pipe: object
    snapshot: dict
    stock: np.ndarray
    stock_calls: int
    memo: dict = field(default_factory=dict)

    def run(self, **overrides):
        return _generate(self.pipe, self.case, **overrides)

    def pladis_image(self, scale: float):
        """Output with PLADIS at ``scale`` (memoised). Call it while PLADIS is not applied."""
        if scale not in self.memo:
            _assert_restored(self.pipe, self.snapshot)
            with pladis.apply(self.pipe, scale=scale):
                self.memo[scale] = self.run()[0]
            _assert_restored(self.pipe, self.snapshot)
        return self.memo[scale]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def _built() -> dict[str, Prepared]:
    return {}


def _restore(p: Prepared):
    """Put the pipeline back as it was built, whatever the test did to it."""
    try:
        if pladis.is_applied(p.pipe):
            pladis.remove(p.pipe)
    finally:
        for name, model in _denoisers(p.pipe).items():
            model.set_attn_processor(dict(p.snapshot[name]))


@pytest.fixture
def prepared(request, _built) -> Prepared:
    case: Case = request.param
    if case.id not in _built:
        pipe = case.build()
        snapshot = _snapshot(pipe)
        image, calls = _generate(pipe, case)
        _built[case.id] = Prepared(case, pipe, snapshot, image, calls)
    p = _built[case.id]
    _assert_restored(p.pipe, p.snapshot)  # previous test left it clean
    yield p
    _restore(p)


def each_case(cases=CASES):
    return pytest.mark.parametrize("prepared", cases, indirect=True, ids=[c.id for c in cases])


sd15_only = each_case([SD15])


# --------------------------------------------------------------------------- every pipeline


@each_case()
def test_scale_zero_is_bit_identical(prepared):
    with pladis.apply(prepared.pipe, scale=0.0):
        image, _ = prepared.run()
    _assert_same(image, prepared.stock)


@each_case()
def test_alpha_one_reproduces_stock_at_any_scale(prepared):
    # entmax with alpha 1 is softmax: the PLADIS path must then compute the stock attention (to fp32 round-off)
    with pladis.apply(prepared.pipe, scale=2.0, alpha=1.0):
        image, _ = prepared.run()
    assert np.abs(image.astype(np.float64) - prepared.stock).max() < 1e-4


@each_case()
def test_scale_two_changes_output(prepared):
    pladis.apply(prepared.pipe, scale=2.0)
    image, calls = prepared.run()
    prepared.memo.setdefault(2.0, image)
    _assert_changed(image, prepared.stock)
    # The pipeline did not swap PLADIS out during the call (PAG swaps processors itself).
    _assert_replaced(prepared.pipe, prepared.snapshot)
    # PLADIS adds no denoiser evaluations.
    assert calls == prepared.stock_calls > 0
    pladis.remove(prepared.pipe)
    _assert_restored(prepared.pipe, prepared.snapshot)


@each_case()
def test_remove_restores_processors_and_output(prepared):
    pladis.apply(prepared.pipe, scale=2.0)
    n = pladis.remove(prepared.pipe)
    assert n == _cross_attention_keys(prepared.pipe)
    _assert_restored(prepared.pipe, prepared.snapshot)
    _assert_same(prepared.run()[0], prepared.stock)


@each_case()
def test_replaces_exactly_cross_attention(prepared):
    assert not pladis.is_applied(prepared.pipe)
    pladis.apply(prepared.pipe, scale=2.0)
    assert pladis.is_applied(prepared.pipe)
    replaced = _assert_replaced(prepared.pipe, prepared.snapshot)
    assert replaced == _cross_attention_keys(prepared.pipe)
    if "controlnet" in prepared.case.id:
        assert pladis.is_applied(prepared.pipe.controlnet)


# --------------------------------------------------------------------------- PAG


@each_case([PAG])
def test_pag_keeps_pladis_and_differs_from_plain_pag(prepared):
    pipe = prepared.pipe
    no_pag, _ = prepared.run(pag_scale=0.0)
    assert not np.array_equal(no_pag, prepared.stock), "PAG had no effect; the test would prove nothing"
    with pladis.apply(pipe, scale=2.0):
        first, _ = prepared.run()
        _assert_replaced(pipe, prepared.snapshot)
        second, _ = prepared.run()  # PAG restores the processors it found: PLADIS is still active
    _assert_same(first, second)
    _assert_changed(first, prepared.stock)
    _assert_restored(pipe, prepared.snapshot)


# --------------------------------------------------------------------------- handle, re-apply, context


@sd15_only
def test_apply_twice_does_not_stack(prepared):
    pipe = prepared.pipe
    once = prepared.pladis_image(3.0)
    pladis.apply(pipe, scale=2.0)
    pladis.apply(pipe, scale=3.0)
    _assert_replaced(pipe, prepared.snapshot)  # one hook per module, processors untouched: nothing stacks
    twice, _ = prepared.run()
    assert pladis.remove(pipe) == _cross_attention_keys(pipe)
    _assert_restored(pipe, prepared.snapshot)
    _assert_same(twice, once)


@sd15_only
def test_context_manager_removes_on_exit(prepared):
    pipe = prepared.pipe
    with pladis.apply(pipe, scale=2.0) as h:
        assert pladis.is_applied(pipe)
        assert h is not None
        _assert_replaced(pipe, prepared.snapshot)
        inside, _ = prepared.run()
    _assert_restored(pipe, prepared.snapshot)
    _assert_changed(inside, prepared.stock)
    _assert_same(prepared.run()[0], prepared.stock)


@sd15_only
def test_context_manager_removes_on_error(prepared):
    with pytest.raises(RuntimeError, match="boom"), pladis.apply(prepared.pipe, scale=2.0):
        raise RuntimeError("boom")
    _assert_restored(prepared.pipe, prepared.snapshot)


@sd15_only
def test_scale_change_takes_effect_without_reapply(prepared):
    pipe = prepared.pipe
    at2, at3 = prepared.pladis_image(2.0), prepared.pladis_image(3.0)  # references, each from a fresh apply
    _assert_changed(at3, at2)

    h = pladis.apply(pipe, scale=2.0)
    procs = _snapshot(pipe)
    _assert_same(prepared.run()[0], at2)

    h.scale = 3.0
    assert h.scale == 3.0
    _assert_same(prepared.run()[0], at3)

    pladis.set_scale(pipe, 0.0)
    assert h.scale == 0.0
    _assert_same(prepared.run()[0], prepared.stock)

    pladis.set_scale(pipe, 2.0)
    _assert_same(prepared.run()[0], at2)
    # Still the same processor objects: nothing was re-applied.
    assert _snapshot(pipe) == procs and all(_snapshot(pipe)[n][k] is p for n, s in procs.items() for k, p in s.items())


@sd15_only
def test_apply_to_unet_alone_matches_pipeline(prepared):
    pipe = prepared.pipe
    whole_pipeline = prepared.pladis_image(2.0)
    pladis.apply(pipe.unet, scale=2.0)
    _assert_replaced(pipe, prepared.snapshot)
    image, _ = prepared.run()
    assert pladis.remove(pipe.unet) == _cross_attention_keys(pipe)
    _assert_restored(pipe, prepared.snapshot)
    _assert_same(image, whole_pipeline)


# --------------------------------------------------------------------------- layers and timesteps


@sd15_only
@pytest.mark.parametrize(
    "layers, prefixes",
    [
        (["mid"], ("mid_block.",)),
        (["down"], ("down_blocks.",)),
        (["up"], ("up_blocks.",)),
        (["down", "up"], ("down_blocks.", "up_blocks.")),
        (["mid_block.*"], ("mid_block.",)),
    ],
    ids=["mid", "down", "up", "down+up", "fnmatch"],
)
def test_layers_selects_blocks(prepared, layers, prefixes):
    pipe = prepared.pipe
    everywhere = prepared.pladis_image(2.0)
    pladis.apply(pipe, scale=2.0, layers=layers)
    _assert_replaced(pipe, prepared.snapshot, selected=lambda key: key.startswith(prefixes))
    image, _ = prepared.run()
    _assert_changed(image, prepared.stock)
    _assert_changed(image, everywhere)  # not all layers


@sd15_only
def test_timestep_window(prepared):
    pipe = prepared.pipe
    # DDIM, 2 steps, steps_offset 1: the UNet sees t = 501 then t = 1.
    ts = [int(t) for t in pipe.scheduler.timesteps]
    assert ts == [501, 1]
    everywhere = prepared.pladis_image(2.0)
    windows = {"all": (0.0, 1000.0), "first": (250.0, 1000.0), "last": (0.0, 250.0)}
    outs = {}
    for name, window in windows.items():
        with pladis.apply(pipe, scale=2.0, timesteps=window):
            outs[name] = prepared.run()[0]
    _assert_same(outs["all"], everywhere)
    # a window that selects no step of the run is an error, not a silent stock image
    with pladis.apply(pipe, scale=2.0, timesteps=(600.0, 900.0)), pytest.raises(ValueError, match="selects none"):
        prepared.run()
    _assert_changed(outs["first"], prepared.stock)
    _assert_changed(outs["last"], everywhere)
    # The last step of DDIM moves the image little, so PLADIS there alone changes it little, but it does change it.
    assert not np.array_equal(outs["first"], everywhere)
    assert not np.array_equal(outs["last"], prepared.stock)


# --------------------------------------------------------------------------- invalid input


@sd15_only
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(layers=["nope"]),
        dict(layers=["mid", "nope"]),
        dict(scale=-1.0),
        dict(scale=math.nan),
        dict(alpha=0.5),
        dict(alpha=2.5),
        dict(alpha=math.nan),
        dict(layers=[]),
        dict(layers=[1]),
        dict(layers=""),
        dict(timesteps=(2000.0, 3000.0)),
        dict(timesteps=(500.0, 100.0)),
    ],
    ids=[
        "layer",
        "layer-mixed",
        "neg-scale",
        "nan-scale",
        "alpha-low",
        "alpha-high",
        "alpha-nan",
        "layers-empty",
        "layers-int",
        "layers-empty-string",
        "window-outside",
        "window-reversed",
    ],
)
def test_invalid_arguments_raise_and_leave_pipeline_untouched(prepared, kwargs):
    kwargs = {"scale": 2.0, **kwargs}
    with pytest.raises(ValueError):
        pladis.apply(prepared.pipe, **kwargs)
    _assert_restored(prepared.pipe, prepared.snapshot)


@sd15_only
@pytest.mark.parametrize("kwargs", [dict(layers=["nope"]), dict(alpha=3.0)], ids=["layer", "alpha"])
def test_failed_reapply_keeps_the_live_application(prepared, kwargs):
    h = pladis.apply(prepared.pipe, scale=2.0)
    applied = dict(prepared.pipe.unet.attn_processors)
    image, _ = _generate(prepared.pipe, prepared.case)
    with pytest.raises(ValueError):
        pladis.apply(prepared.pipe, **kwargs)
    assert pladis.is_applied(prepared.pipe)
    assert all(prepared.pipe.unet.attn_processors[k] is p for k, p in applied.items())
    _assert_same(_generate(prepared.pipe, prepared.case)[0], image)
    h.scale = 0.0  # the handle still drives the live application
    _assert_same(_generate(prepared.pipe, prepared.case)[0], prepared.stock)


@sd15_only
def test_invalid_scale_through_handle_raises(prepared):
    h = pladis.apply(prepared.pipe, scale=2.0)
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError):
            h.scale = bad
        with pytest.raises(ValueError):
            pladis.set_scale(prepared.pipe, bad)
    assert h.scale == 2.0


def _tiny_unet2d():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),  # self-attention only
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )


def _ddpm_pipeline():
    from diffusers import DDPMPipeline, DDPMScheduler

    return DDPMPipeline(unet=_tiny_unet2d(), scheduler=DDPMScheduler())


@pytest.mark.parametrize(
    "build",
    [lambda: tiny.tiny_sd15_pipeline().vae, _tiny_unet2d, _ddpm_pipeline, lambda: torch.nn.Linear(4, 4)],
    ids=["vae", "unet2d", "ddpm-pipeline", "linear"],
)
def test_no_cross_attention_raises(build):
    target = build()
    attention = [m for m in (target.unet if hasattr(target, "unet") else target).modules() if isinstance(m, Attention)]
    before = [m.processor for m in attention]
    with pytest.raises(ValueError):
        pladis.apply(target, scale=2.0)
    assert [m.processor for m in attention] == before
    assert not pladis.is_applied(target)


# --------------------------------------------------------------------------- foreign processors


class CountingSDPAProcessor:
    """A user processor in the style of AttnProcessor2_0 that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        self.calls += 1
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = k.shape[-1] // attn.heads
        q, k, v = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        return attn.to_out[1](attn.to_out[0](out))


IMAGE_EMBED_DIM = 16


def _install_ip_adapter(pipe) -> list[IPAdapterAttnProcessor2_0]:
    """An IP-Adapter with random weights on every cross-attention of the UNet (as diffusers' loader does)."""
    unet = pipe.unet
    torch.manual_seed(3)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection(
        [ImageProjection(cross_attention_dim=unet.config.cross_attention_dim, image_embed_dim=IMAGE_EMBED_DIM)]
    )
    unet.register_to_config(encoder_hid_dim_type="ip_image_proj")
    procs = []
    for module in unet.modules():
        if isinstance(module, Attention) and module.is_cross_attention:
            proc = IPAdapterAttnProcessor2_0(
                hidden_size=module.to_k.out_features,
                cross_attention_dim=unet.config.cross_attention_dim,
                num_tokens=(4,),
                scale=1.0,
            )
            module.set_processor(proc)
            procs.append(proc)
    return procs


def _install_counting(pipe) -> list[CountingSDPAProcessor]:
    procs = []
    for module in pipe.unet.modules():
        if isinstance(module, Attention) and module.is_cross_attention:
            module.set_processor(proc := CountingSDPAProcessor())
            procs.append(proc)
    return procs


def _image_embeds(seed: int):
    # CFG: negative then positive embeddings, one image each.
    return [torch.randn(2, 1, IMAGE_EMBED_DIM, generator=torch.Generator().manual_seed(seed))]


def _count_ip_calls(procs) -> Callable[[], int]:
    calls = []
    for proc in procs:
        for lin in proc.to_k_ip:
            lin.register_forward_pre_hook(lambda module, args: calls.append(1))
    return lambda: len(calls)


@pytest.mark.parametrize("kind", ["ip-adapter", "custom"])
def test_foreign_cross_attention_processor_keeps_working(kind):
    pipe = tiny.tiny_sd15_pipeline("ddim")
    if kind == "ip-adapter":
        procs = _install_ip_adapter(pipe)
        count = _count_ip_calls(procs)

        def run(seed=1):
            return _generate(pipe, SD15, ip_adapter_image_embeds=_image_embeds(seed))[0]

    else:
        procs = _install_counting(pipe)

        def count():
            return sum(p.calls for p in procs)

        def run():
            return _generate(pipe, SD15)[0]

    snapshot = _snapshot(pipe)
    stock = run()
    assert count() > 0
    if kind == "ip-adapter":  # the image prompt really conditions the output
        assert not np.array_equal(run(seed=2), stock)

    with pladis.apply(pipe, scale=0.0):
        _assert_same(run(), stock)
    _assert_restored(pipe, snapshot)

    h = pladis.apply(pipe, scale=2.0)
    _assert_replaced(pipe, snapshot)
    assert all(p in procs for k, p in pipe.unet.attn_processors.items() if k.endswith("attn2.processor"))
    n_before = count()
    image = run()
    assert count() > n_before, "the foreign processor is no longer used under PLADIS"
    _assert_changed(image, stock)
    if kind == "ip-adapter":  # still conditioned on the image prompt under PLADIS
        _assert_changed(run(seed=2), image)
    h.scale = 0.0
    _assert_same(run(), stock)
    pladis.remove(pipe)
    _assert_restored(pipe, snapshot)
    _assert_same(run(), stock)


@sd15_only
def test_a_replaced_handle_refuses_changes(prepared):
    old = pladis.apply(prepared.pipe, scale=2.0)
    new = pladis.apply(prepared.pipe, scale=2.0, alpha=2.0)
    with pytest.raises(RuntimeError, match="no longer drives"):
        old.scale = 0.0
    new.scale = 0.0  # the live handle works
    _assert_same(_generate(prepared.pipe, prepared.case)[0], prepared.stock)


def test_reapplying_to_one_component_leaves_the_others_working():
    pipe = tiny.tiny_sdxl_controlnet_pipeline("euler")
    pladis.apply(pipe, scale=2.0, timesteps=(0, 1000))
    pladis.apply(pipe.unet, scale=1.0)
    # the controlnet keeps its PLADIS and the hook that feeds its timestep window
    assert pladis.is_applied(pipe.controlnet) and isinstance(hook_of(pipe.controlnet), InputsHook)
    assert isinstance(hook_of(pipe.unet), InputsHook)
    pladis.remove(pipe)
    assert not pladis.is_applied(pipe)
    assert all(hook_of(m) is None for m in (pipe.unet, pipe.controlnet))


def test_timestep_window_needs_the_denoiser_forward():
    pipe = tiny.tiny_sd15_pipeline("ddim")
    pladis.apply(pipe, scale=2.0, timesteps=(0, 500))
    attn = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    with pytest.raises(RuntimeError, match="timestep was not seen"):
        attn(torch.randn(1, 16, attn.query_dim), encoder_hidden_states=torch.randn(1, 77, attn.cross_attention_dim))
