"""The embedded demo model: data, checker, shipped weights, `pladis demo`, the benchmark and training (CPU, fast)."""

from __future__ import annotations

import os

import pytest
import torch

from image_helpers import load_image
from pladis.demo import checker, scenes
from pladis.demo.text import build_tokenizer, fast_ids


def test_scenes_deterministic_and_varied():
    a = scenes.sample_scenes(64, seed=3)
    b = scenes.sample_scenes(64, seed=3)
    c = scenes.sample_scenes(64, seed=4)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (64, 3, 32, 32) and a.images.min() >= 0 and a.images.max() <= 1
    assert {s.kind for s in a.specs} == set(scenes.KINDS)
    for s in a.specs:
        assert scenes.parse_caption(s.caption()) == s
    assert len({c for c in scenes.COLORS}) >= 5 and len(scenes.SHAPES) >= 3


def test_tokenizer_pads_to_77_with_end_token():
    tok = build_tokenizer()
    caps = ["a red circle left of a blue square", ""]
    ids = tok(
        caps, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    assert ids.shape == (2, 77)
    assert torch.equal(ids, fast_ids(caps))
    assert (ids[1, 1:] == tok.eos_token_id).all()
    # a model with an older, shorter vocabulary reads the newer words as <|unk|> (not an out-of-range id)
    old = build_tokenizer(28)
    caps = ["a big red circle", "four red circles"]
    old_ids = old(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(old_ids, fast_ids(caps, vocab_size=28)) and int(old_ids.max()) < 28
    assert old_ids[0, 2] == old.unk_token_id and old_ids[0, 3] == tok.convert_tokens_to_ids("red")


def test_checker_on_ground_truth():
    b = scenes.sample_scenes(600, seed=11)
    acc = checker.accuracy(checker.judge(b.images, b.specs))
    for cat in checker.CATEGORIES:
        assert acc[cat][0] >= 0.99, (cat, acc[cat])
    # and it is not a rubber stamp: against another scene's caption it mostly says no
    shuffled = b.specs[1:] + b.specs[:1]
    wrong = checker.accuracy(checker.judge(b.images, shuffled))
    assert wrong["all"][0] < 0.2 and wrong["color"][0] < 0.4


@pytest.fixture(scope="module")
def pipe():
    os.environ["HF_HUB_OFFLINE"] = "1"
    from pladis.demo.model import load_demo_pipeline, weights_available

    assert weights_available(), "embedded demo weights missing from pladis/weights"
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return load_demo_pipeline(device="cpu")


def test_embedded_model_draws_the_prompted_colours(pipe):
    from pladis.demo.bench import generate

    # captions every shipped model was trained on (the pixel model of pladis <= 0.2 knew no sizes, no "four")
    captions = [
        "a red circle",
        "a blue square at the left",
        "a green circle left of a yellow square",
        "a purple square and a cyan circle",
        "two yellow circles",
        "a cyan square above a red circle",
    ]
    specs = [scenes.parse_caption(c) for c in captions]
    assert all(specs)
    imgs = generate(pipe, captions, list(range(6)), steps=6, cfg=4.0, batch_size=6)
    assert imgs.shape == (6, 3, 32, 32)
    assert imgs.std() > 0.1  # not blank
    v = checker.judge(imgs, specs)
    assert sum(r["color"] for r in v) >= 5, v
    assert sum(r["all"] for r in v) >= 3, v


def test_pladis_on_demo_pipeline(pipe):
    import pladis
    from pladis.demo.bench import generate

    prompts = ["a red circle left of a blue square"]
    stock = generate(pipe, prompts, [1], steps=2, cfg=4.0)
    h = pladis.apply(pipe, scale=0.0)
    same = generate(pipe, prompts, [1], steps=2, cfg=4.0)
    h.scale = 2.0
    diff = generate(pipe, prompts, [1], steps=2, cfg=4.0)
    pladis.remove(pipe)
    back = generate(pipe, prompts, [1], steps=2, cfg=4.0)
    assert torch.equal(stock, same)
    assert (stock - diff).abs().max() > 1e-3
    assert torch.equal(stock, back)


def test_demo_command_writes_grid(tmp_path, pipe):

    from pladis.cli.demo import demo

    out = tmp_path / "demo.png"
    demo(
        prompt=["a yellow square at the top"],
        scale=2.0,
        alpha=1.5,
        out=out,
        steps=2,
        cfg=4.0,
        seed=0,
        samples=1,
        cell=64,
        device="cpu",
        weights=None,
    )
    im = load_image(out)
    assert im.size[0] > 128 and im.size[1] > 64


def test_bench_tiny(tmp_path, pipe):
    from pladis.demo.bench import run_benchmark

    res = run_benchmark(
        pipe,
        n=3,
        scales=(0, 2),
        alphas=(1.5,),
        cfg=4.0,
        steps=2,
        batch_size=3,
        out_dir=tmp_path,
        progress=lambda m: None,
    )
    assert set(res["stats"]) == {"stock", "a=1.5 s=2"}
    st = res["stats"]["a=1.5 s=2"]["all"]
    assert 0 <= st["acc"] <= 1 and st["ci"][0] <= st["acc"] <= st["ci"][1]
    assert (tmp_path / "alignment.md").read_text().count("| stock |") == 1
    assert (tmp_path / "alignment.png").stat().st_size > 0


def test_train_smoke_and_resume(tmp_path, monkeypatch):
    import pladis.demo.train as tr
    from pladis.demo import model

    # a very small model keeps this quick; the training loop is the one the shipped weights came from
    small = model.default_config()
    small["vae"] = model.vae_config(widths=(8, 8, 8), groups=4)
    small["unet"].update(block_out_channels=(32, 32), attention_head_dim=2, cross_attention_dim=32)
    small["text"].update(
        hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1, num_attention_heads=2
    )
    monkeypatch.setattr(tr, "default_config", lambda: small)
    kw = dict(batch_size=4, ae_batch_size=4, ae_steps=2, device="cpu", log_every=1, progress=False, save_every=0)
    m1 = tr.train(out_dir=str(tmp_path), steps=1, **kw)
    assert m1["steps"] == 1 and m1["ae_steps"] == 2 and (tmp_path / tr.CKPT_FILE).exists()
    m2 = tr.train(out_dir=str(tmp_path), steps=10, **kw)
    assert m2["steps"] == 10 and m2["images_seen"] == 40 and m2["ae_steps"] == 2  # the autoencoder is not retrained
    rows = (tmp_path / "loss_log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 11
    assert len((tmp_path / tr.AE_LOG_FILE).read_text().strip().splitlines()) == 3
    assert model.weights_available(tmp_path / "weights")
    p = model.load_demo_pipeline(tmp_path / "weights")
    assert tuple(p.unet.config.block_out_channels) == (32, 32)
    assert p.vae_scale_factor == 4 and p.vae.config.scaling_factor != 1.0  # measured from the encoder's latents
    # the UNet's milestones (10 %, 30 %, 100 % of its steps) are kept for studies across training
    kept = sorted(d.name for d in (tmp_path / tr.MILESTONES_DIR).iterdir())
    assert kept == ["step_000001", "step_000003", "step_000010"]
    assert model.load_config(tmp_path / tr.MILESTONES_DIR / "step_000003")["meta"]["steps"] == 3


@pytest.mark.parametrize("file_prefix", ["", "text_model."])
def test_text_weights_load_with_or_without_the_transformers4_prefix(tmp_path, file_prefix):
    """transformers 4 names CLIPTextModel weights ``text_model.*``, 5 does not; either file loads under either."""
    from safetensors.torch import load_file, save_file

    from pladis.demo import model

    for name in model.weight_files():
        if name != model.TEXT_FILE:
            (tmp_path / name).write_bytes((model.WEIGHTS_DIR / name).read_bytes())
    shipped = load_file(str(model.WEIGHTS_DIR / model.TEXT_FILE))
    assert not any(k.startswith("text_model.") for k in shipped)  # the shipped file: one format for both
    save_file({file_prefix + k: v for k, v in shipped.items()}, str(tmp_path / model.TEXT_FILE))
    pipe = model.load_demo_pipeline(tmp_path)
    expected = model.match_text_keys(shipped, pipe.text_encoder.state_dict())
    for key, value in pipe.text_encoder.state_dict().items():
        if key in expected:
            assert torch.equal(value, expected[key].float()), key
    assert len(expected) == len(shipped)


@pytest.mark.parametrize(
    ("have", "want"), [("", ""), ("", "text_model."), ("text_model.", ""), ("text_model.", "text_model.")]
)
def test_match_text_keys(have, want):
    from pladis.demo.model import match_text_keys

    state = {have + "embeddings.token_embedding.weight": torch.zeros(1)}
    assert list(match_text_keys(state, [want + "encoder.layers.0.mlp.fc1.weight"])) == [
        want + "embeddings.token_embedding.weight"
    ]


@pytest.mark.parametrize("caption", ["a red circle", "café à 3 €", "红色的圆 left of 青色方块", "Ωμέγα и ж"])
def test_captions_are_drawn_with_a_font_that_has_their_glyphs(caption):
    """No character is drawn as an empty box: a font that covers it, else a visible placeholder."""
    from PIL import Image

    from pladis import compare

    images = [[Image.new("RGB", (64, 64))]]
    layout = compare.grid_layout(images, row_labels=[caption], col_labels=[caption], caption=caption)
    drawn = "".join(["".join(layout.caption_lines), *map("".join, layout.row_label_lines)])
    assert compare._missing(layout.font_path, frozenset(drawn) - {" "}) == frozenset()
    for c in caption:  # each character is either drawn or replaced, never dropped
        assert c in drawn or compare.PLACEHOLDER in drawn
    compare.labelled_grid(images, row_labels=[caption], col_labels=[caption], caption=caption)


def test_undrawable_caption_gets_a_placeholder_and_one_warning(monkeypatch):
    from PIL import Image

    from pladis import compare

    monkeypatch.setattr(compare, "FALLBACK_FONTS", ())
    monkeypatch.setattr(compare, "_warned", set())
    images = [[Image.new("RGB", (64, 64))]]
    with pytest.warns(UserWarning, match="fonts-noto-cjk"):
        layout = compare.grid_layout(images, caption="一个红色的圆")
    assert "".join(layout.caption_lines) == compare.PLACEHOLDER * 6
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same characters again: no second warning
        compare.labelled_grid(images, caption="一个红色的圆")


def test_demo_seeds_near_the_top_of_the_range(tmp_path, pipe, monkeypatch):
    from pladis.cli.demo import demo
    from pladis.demo import model

    monkeypatch.setattr(model, "load_demo_pipeline", lambda *a, **k: pipe)
    out = tmp_path / "demo.png"
    demo(
        prompt=["a red circle"],
        scale=2.0,
        alpha=1.5,
        out=out,
        steps=1,
        cfg=4.0,
        seed=2**63 - 1,
        samples=2,
        cell=32,
        device="cpu",
        weights=None,
    )
    assert out.exists()
