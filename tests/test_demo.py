"""The embedded demo model: data, checker, shipped weights, `pladis demo`, the benchmark and training (CPU, fast)."""

from __future__ import annotations

import os

import pytest
import torch

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

    specs = scenes.benchmark_prompts(6, seed=5)
    imgs = generate(pipe, [s.caption() for s in specs], list(range(6)), steps=6, cfg=4.0, batch_size=6)
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
    from PIL import Image

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
    im = Image.open(out)
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
    small["unet"].update(block_out_channels=(32, 32, 32), attention_head_dim=2, cross_attention_dim=32)
    small["text"].update(
        hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1, num_attention_heads=2
    )
    monkeypatch.setattr(tr, "default_config", lambda: small)
    m1 = tr.train(out_dir=str(tmp_path), steps=1, batch_size=4, device="cpu", log_every=1, progress=False, save_every=0)
    assert m1["steps"] == 1 and (tmp_path / "ckpt.pt").exists()
    m2 = tr.train(out_dir=str(tmp_path), steps=2, batch_size=4, device="cpu", log_every=1, progress=False, save_every=0)
    assert m2["steps"] == 2 and m2["images_seen"] == 8
    rows = (tmp_path / "loss_log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 3
    assert model.weights_available(tmp_path / "weights")
    p = model.load_demo_pipeline(tmp_path / "weights")
    assert p.unet.config.block_out_channels == [32, 32, 32] or tuple(p.unet.config.block_out_channels) == (32, 32, 32)
