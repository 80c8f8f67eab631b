"""Paired bootstrap over prompts.

Images of one prompt are not independent draws of the population we care about (prompts are), so each prompt's
images are averaged first, and the bootstrap resamples prompts with replacement. A config is compared with the
baseline on the images both have (same prompt, same seed), prompt by prompt: the delta of a resample is the mean of
the per-prompt differences of the resampled prompts. The 95 % interval is the 2.5 and 97.5 percentiles of
``n_boot`` resamples drawn from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

N_BOOT = 2000


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n_prompts: int
    n_images: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {
            "mean": self.mean,
            "ci95": [self.low, self.high],
            "n_prompts": self.n_prompts,
            "n_images": self.n_images,
            "significant": self.significant,
        }


def prompt_means(values: Mapping[Any, float], prompt_of: Mapping[Any, str]) -> dict[str, float]:
    """Average each prompt's image values: {image key: value} -> {prompt: mean}."""
    groups: dict[str, list[float]] = defaultdict(list)
    for key, value in values.items():
        groups[prompt_of[key]].append(float(value))
    return {p: float(np.mean(v)) for p, v in groups.items()}


def bootstrap(per_prompt: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Percentile 95 % interval of the mean of ``per_prompt`` under resampling of prompts."""
    x = np.asarray(per_prompt, dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def estimate(
    values: Mapping[Any, float], prompt_of: Mapping[Any, str], n_boot: int = N_BOOT, seed: int = 0
) -> Estimate:
    """Mean over prompts (of per-prompt means) with its bootstrap interval."""
    pm = prompt_means(values, prompt_of)
    x = np.array(list(pm.values()))
    low, high = bootstrap(x, n_boot, seed)
    return Estimate(float(x.mean()) if len(x) else float("nan"), low, high, len(x), len(values))


def paired_delta(
    base: Mapping[Any, float],
    other: Mapping[Any, float],
    prompt_of: Mapping[Any, str],
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Estimate:
    """other - base on the images both have, averaged per prompt, with the paired-bootstrap interval."""
    common = [k for k in other if k in base]
    diffs = {k: float(other[k]) - float(base[k]) for k in common}
    return estimate(diffs, prompt_of, n_boot, seed)
