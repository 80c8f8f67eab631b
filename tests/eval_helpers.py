"""Shared by the pladis eval tests: the small embedded-model run they all make, and file checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from pladis.evaluation import run as runlib
from pladis.evaluation.generate import GenerateOptions, generate_run

SRC = str(Path(__file__).resolve().parents[1] / "src")
DEMO_ARGS = ["--model", "demo", "--prompts", "demo:8", "--steps", "2", "--batch-size", "3", "--device", "cpu"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=SRC, TRANSFORMERS_VERBOSITY="error")
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def _files(run: Path) -> dict[str, str]:
    """config/sample -> sha256 of every PNG, checking each decodes and has a matching sidecar."""
    out = {}
    for png in sorted((run / "images").glob("*/*.png")):
        side = json.loads(png.with_suffix(".json").read_text())
        with Image.open(png) as im:
            im.load()
        assert runlib.png_ok(png, side["png_bytes"])
        out[f"{png.parent.name}/{png.stem}"] = side["sha256"]
    return out


def _reference(tmp_path: Path) -> Path:
    ref = tmp_path / "reference"
    opts = GenerateOptions(out=ref, model="demo", prompts="demo:8", steps=2, batch_size=3, device="cpu")
    generate_run(opts, show_progress=False, echo=lambda m: None)
    return ref
