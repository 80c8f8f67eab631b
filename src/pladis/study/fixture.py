"""A tiny synthetic evaluation run for tests, benchmarks and trying the app: coloured shapes drawn with PIL.

Layout as written by the evaluation harness: ``RUN/images/<config>/<sample_id>.png`` + ``.json`` sidecars and a
``RUN/run.json``. Config ``pladis`` draws vivid, sharp shapes; ``baseline`` draws the same shapes washed out and
blurred, so a careful evaluator prefers ``pladis`` (tests rely on that to check the blind side mapping end to end).
"""

from __future__ import annotations

import json
from pathlib import Path

COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 70), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")


def make_demo_run(
    run: Path, samples: int = 12, size: int = 96, configs: tuple[str, str] = ("baseline", "pladis")
) -> Path:
    from PIL import Image, ImageDraw, ImageFilter

    run = Path(run)
    colour_names = list(COLOURS)
    for config in configs:
        (run / "images" / config).mkdir(parents=True, exist_ok=True)
    for index in range(samples):
        colour = colour_names[index % len(colour_names)]
        shape = SHAPES[(index // len(colour_names)) % len(SHAPES)]
        two = index % 2 == 1
        prompt = f"a {colour} {shape}" + (" next to a small grey dot" if two else " on a white background")
        sample_id = f"{index:04d}"
        for config in configs:
            vivid = config == configs[1]
            rgb = COLOURS[colour] if vivid else tuple(int(0.45 * c + 0.55 * 170) for c in COLOURS[colour])
            image = Image.new("RGB", (size, size), (250, 250, 250))
            draw = ImageDraw.Draw(image)
            box = (size * 0.2, size * 0.2, size * 0.8, size * 0.8)
            if shape == "circle":
                draw.ellipse(box, fill=rgb)
            elif shape == "square":
                draw.rectangle(box, fill=rgb)
            else:
                draw.polygon(
                    [(size * 0.5, size * 0.15), (size * 0.85, size * 0.82), (size * 0.15, size * 0.82)], fill=rgb
                )
            if two:
                draw.ellipse((size * 0.78, size * 0.78, size * 0.92, size * 0.92), fill=(128, 128, 128))
            if not vivid:
                image = image.filter(ImageFilter.GaussianBlur(2))
            image.save(run / "images" / config / f"{sample_id}.png")
            sidecar = {
                "prompt": prompt,
                "seed": 1000 + index,
                "config": config,
                "category": "two objects" if two else "single object",
                "prompt_index": index,
            }
            (run / "images" / config / f"{sample_id}.json").write_text(json.dumps(sidecar), encoding="utf-8")
    (run / "run.json").write_text(json.dumps({"configs": list(configs), "samples": samples}), encoding="utf-8")
    return run
