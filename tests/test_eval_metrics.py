"""pladis eval metric back-ends on tiny stand-in models built from configs (no released weights offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from image_helpers import load_image

pytestmark = pytest.mark.usefixtures("eager_one_thread")

PROMPTS = ["a red circle", "a photo of a dog on a skateboard", "three cyan squares"]


def _images(n=3, size=40):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _tiny_clip(seed=0):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pladis.testing.unet import tiny_clip_tokenizer

    text = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config={**vision, "patch_size": 8}, projection_dim=16)).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tiny_clip_tokenizer(),
    )
    return model, processor


class _TensorFeatures(torch.nn.Module):
    """torchmetrics 1.9 expects get_*_features to return tensors; transformers 5 returns a ModelOutput whose
    pooler_output is the projected embedding. This shim hands torchmetrics that tensor, nothing else changes."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *a, **k):
        return self.model.get_image_features(*a, **k).pooler_output

    def get_text_features(self, *a, **k):
        return self.model.get_text_features(*a, **k).pooler_output


def test_clipscore_equals_torchmetrics_on_the_same_tiny_model():
    from torchmetrics.multimodal import CLIPScore

    from pladis.evaluation.metrics import build

    model, processor = _tiny_clip()
    ours = build("clip", loader=lambda: (model, processor)).score(_images(), PROMPTS)
    reference = CLIPScore(model_name_or_path=lambda: (_TensorFeatures(model), processor))
    for image, prompt, value in zip(_images(), PROMPTS, ours):
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        assert value == pytest.approx(float(reference(pixels, prompt).detach()), abs=1e-4)
        reference.reset()
    assert len({round(v, 3) for v in ours}) == 3  # three different images and prompts, three different scores


def test_pickscore_is_logit_scale_times_cosine():
    from pladis.evaluation.metrics import build

    model, processor = _tiny_clip(1)
    with torch.no_grad():
        model.logit_scale.fill_(np.log(50.0))
    got = build("pick", loader=lambda: (model, processor)).score(_images(), PROMPTS)
    clip = build("clip", loader=lambda: (model, processor)).score(_images(), PROMPTS)
    for g, c in zip(got, clip):  # CLIPScore clamps at 0; where positive, PickScore = 50 * cos = CLIPScore / 2
        if c > 0:
            assert g == pytest.approx(c / 2, rel=1e-4)
        else:
            assert g <= 0


def _tiny_imagereward(tmp_path):
    from transformers import BertTokenizer

    from pladis.evaluation.metrics import imagereward as ir

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "photo", "of", "dog", "three"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    torch.manual_seed(0)
    vcfg = ir.vision_config(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    vcfg.image_size, vcfg.patch_size = 32, 8
    tcfg = ir.text_config(
        vocab_size=len(tokenizer),
        hidden_size=24,
        encoder_hidden_size=32,
        intermediate_size=30,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    model = ir.ImageRewardModel(vcfg, tcfg).eval()
    model.head = ir.RewardHead(24)
    return model, tokenizer


def _released_names(model) -> dict[str, torch.Tensor]:
    """The tiny model's weights under ImageReward.pt's parameter names (BLIP's original ViT and BERT names)."""
    import re

    inverse = [
        (r"^embeddings\.class_embedding$", "cls_token"),
        (r"^embeddings\.position_embedding$", "pos_embed"),
        (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
        (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
        (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
        (r"^encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"blocks.\1.attn.qkv."),
        (r"^encoder\.layers\.(\d+)\.self_attn\.projection\.", r"blocks.\1.attn.proj."),
        (r"^encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
        (r"^post_layernorm\.", "norm."),
    ]
    out = {}
    for key, value in model.vision.state_dict().items():
        for pattern, repl in inverse:
            if re.search(pattern, key):
                out["blip.visual_encoder." + re.sub(pattern, repl, key)] = value.clone()
                break
        else:
            raise AssertionError(f"unmapped {key}")
    out |= {"blip.text_encoder." + k: v.clone() for k, v in model.text.state_dict().items()}
    out["blip.text_encoder.embeddings.position_ids"] = torch.arange(512)[None]
    out |= {"mlp." + k: v.clone() for k, v in model.head.state_dict().items()}
    return out


def test_imagereward_loads_a_released_format_checkpoint_with_weights_only(tmp_path):
    from pladis.evaluation.metrics import MetricError
    from pladis.evaluation.metrics import imagereward as ir

    model, tokenizer = _tiny_imagereward(tmp_path)
    ckpt = tmp_path / "ImageReward.pt"
    torch.save(_released_names(model), ckpt)
    fresh, _ = _tiny_imagereward(tmp_path / "..")
    torch.manual_seed(123)
    for p in fresh.parameters():  # different weights, so the comparison below shows the load took effect
        p.data.normal_()
    ir.load_checkpoint(str(ckpt), fresh)
    scorer = ir.ImageReward(loader=lambda: (fresh, tokenizer))
    expected = ir.ImageReward(loader=lambda: (model, tokenizer)).score(_images(size=50), PROMPTS)
    got = scorer.score(_images(size=50), PROMPTS)
    assert got == pytest.approx(expected, abs=1e-5) and len(set(np.round(got, 5))) == 3
    partial = {k: v for k, v in _released_names(model).items() if "blocks.1." not in k}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(MetricError, match="lacks"):
        ir.load_checkpoint(str(tmp_path / "partial.pt"), fresh)
    torch.save({"x": object()}, tmp_path / "pickle.pt")  # arbitrary pickled objects are refused, not run
    with pytest.raises(MetricError, match="plain state dict"):
        ir.load_checkpoint(str(tmp_path / "pickle.pt"), fresh)


def test_alignment_judges_rendered_scenes():
    from pladis.demo.scenes import render, sample_layout
    from pladis.evaluation.metrics import build

    g = torch.Generator().manual_seed(0)
    from pladis.demo.scenes import layout_specs

    layout = sample_layout(4, g, kinds=["relation"])
    images = render(layout)
    specs = layout_specs(layout)
    pil = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in images]
    metric = build("alignment")
    verdicts = metric.score(pil, [s.caption() for s in specs])
    assert all(v is not None and v["all"] == 1.0 for v in verdicts)
    swapped = metric.score(pil[:1], [specs[1].caption()])[0]  # a caption that does not match
    assert swapped["all"] in (0.0, 1.0) and metric.score(pil[:1], ["a photo of a cat"]) == [None]


def test_missing_backends_name_the_pip_command(monkeypatch):
    import sys

    from pladis.evaluation.metrics import MissingBackend, build

    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed (it is not in the test extra)
    with pytest.raises(MissingBackend, match=r"pip install 'pladis\[hps\]'"):
        build("hps")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    import torchmetrics.utilities.imports as tm_imports

    monkeypatch.setattr(tm_imports, "_TORCH_FIDELITY_AVAILABLE", False)
    with pytest.raises(MissingBackend, match=r"pip install 'pladis\[fid\]'"):
        build("fid", reference=str(_ref_folder()))


def _ref_folder():
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    for i, im in enumerate(_images(4, 16)):
        im.save(folder / f"{i}.png")
    return folder


class _MeanColour(torch.nn.Module):
    """A 6-number 'feature extractor' (channel means and stds), so FID is checkable by hand."""

    def forward(self, x):
        x = x.float() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).double()


def test_fid_plumbing_matches_the_closed_form(tmp_path):
    from scipy import linalg

    from pladis.evaluation.metrics import build

    ref = _ref_folder()
    rng = np.random.default_rng(3)
    fakes = [Image.fromarray(rng.integers(0, 200, (16, 16, 3), dtype=np.uint8)) for _ in range(7)]
    fid = build("fid", reference=str(ref), feature=_MeanColour())
    fid.add_reference((16, 16))
    value = fid.compute(lambda n: [fakes[i : i + n] for i in range(0, len(fakes), n)], (16, 16))

    def feats(images):
        x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2)
        return _MeanColour()(x).numpy()

    real = feats([load_image(p) for p in sorted(ref.iterdir())])
    fake = feats(fakes)
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(linalg.sqrtm(s1 @ s2)))
    assert value == pytest.approx(expected, rel=1e-3, abs=1e-4) and value > 0


def test_a_checkpoint_the_hub_cannot_give_is_one_error_naming_the_option(monkeypatch):
    import huggingface_hub

    from pladis.evaluation.metrics import MetricError
    from pladis.evaluation.metrics.imagereward import ImageReward

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(MetricError, match=r"metric 'imagereward': could not get .*--imagereward-checkpoint FILE"):
        ImageReward()
