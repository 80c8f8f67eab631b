"""What every ``pladis`` command shares: one-line errors, option parsing and checks, device choice, progress."""

from __future__ import annotations

import contextlib
import math
import os
import re
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text


class CLIError(Exception):
    """An expected failure: reported as one line on stderr and exit ``code`` (1 = runtime, 2 = bad option)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    one_line = " ".join(str(message).split())
    stderr().print(Text(f"error: {one_line}", style="bold red"), soft_wrap=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    stderr().print(Text(f"warning: {message}", style="yellow"), soft_wrap=True)


def parse_size(size: str | None) -> tuple[int, int] | None:
    """``"1024"`` -> ``(1024, 1024)``; ``"768x512"`` -> ``(768, 512)`` as (width, height)."""
    if size is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×*]\s*(\d+)\s*)?", size)
    hint = "use one number (1024) or WIDTHxHEIGHT (768x512), in multiples of 8"
    if not m:
        raise CLIError(f"invalid --size {size!r}: {hint}", code=2)
    width = int(m.group(1))
    height = int(m.group(2) or width)
    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise CLIError(f"invalid --size {size!r}: {hint}", code=2)
    return width, height


def names(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def parse_pair(text: str | None, option: str) -> tuple[float, float] | None:
    """'LOW,HIGH' -> (low, high), or None."""
    if text is None:
        return None
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise CLIError(f"invalid {option} {text!r}: use two numbers LOW,HIGH, e.g. 500,1000", 2) from None
    if low > high:
        raise CLIError(f"invalid {option} {text!r}: LOW must not exceed HIGH", 2)
    return low, high


def parse_timesteps(text: str | None) -> tuple[float, float] | None:
    """--timesteps LOW,HIGH in scheduler units, 0..1000 for every model."""
    window = parse_pair(text, "--timesteps")
    if window is not None and not 0 <= window[0] <= window[1] <= 1000:
        raise CLIError(f"invalid --timesteps {text!r}: need 0 <= low <= high <= 1000 (1000 = pure noise)", 2)
    return window


def parse_freeu(freeu: str | None) -> dict[str, float] | None:
    """``"0.9,0.2,1.5,1.6"`` -> ``{"s1": 0.9, "s2": 0.2, "b1": 1.5, "b2": 1.6}``."""
    if freeu is None:
        return None
    parts = [p.strip() for p in freeu.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise CLIError(
            f"invalid --freeu {freeu!r}: expected four comma-separated numbers s1,s2,b1,b2, "
            "e.g. 0.9,0.2,1.5,1.6 for SD1.5 or 0.9,0.2,1.3,1.4 for SDXL",
            code=2,
        )
    return dict(zip(("s1", "s2", "b1", "b2"), values))


def check_options(
    scale: float, alpha: float, temperature: float, steps: int | None, guidance: float | None, seed: int, pag_scale
) -> None:
    from pladis.attention import check_scale, check_temperature
    from pladis.entmax import check_alpha

    checks = (
        ("--scale", check_scale, scale),
        ("--alpha", check_alpha, alpha),
        ("--temperature", check_temperature, temperature),
    )
    for option, check, value in checks:
        try:
            check(value)
        except ValueError as e:
            raise CLIError(f"{option}: {e}", 2) from None
    if steps is not None and steps < 1:
        raise CLIError(f"invalid --steps {steps}: need at least 1 inference step", 2)
    if guidance is not None and not math.isfinite(guidance):
        raise CLIError(f"invalid --guidance {guidance}: must be a finite number", 2)
    check_seed(seed)
    if pag_scale is not None and (not math.isfinite(pag_scale) or pag_scale < 0):
        raise CLIError(f"invalid --pag-scale {pag_scale}: must be a finite number >= 0", 2)


MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed takes


def check_seed(seed: int, option: str = "--seed") -> int:
    if not 0 <= seed <= MAX_SEED:
        raise CLIError(f"invalid {option} {seed}: must be in 0..{MAX_SEED} (2**63 - 1)", 2)
    return seed


def check_output(path: Path | None, option: str, *others: tuple[Path | None, str]) -> None:
    """An image path PIL can write, not a folder, and not the same file as another output option."""
    if path is None:
        return
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        writable = ", ".join(e for e in (".png", ".jpg", ".webp", ".tiff") if Image.registered_extensions().get(e))
        raise CLIError(f"invalid {option} {str(path)!r}: PIL cannot write that format; use one of {writable}", 2)
    if path.is_dir():
        raise CLIError(f"invalid {option} {str(path)!r}: that is a folder; give an image file name such as out.png", 2)
    for other, other_option in others:
        if other is not None and other.expanduser().resolve() == path.expanduser().resolve():
            raise CLIError(f"{option} and {other_option} name the same file {str(path)!r}; give two different files", 2)
    parent = path.expanduser().resolve().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        raise CLIError(f"invalid {option} {str(path)!r}: its folder cannot be created or written", 2)


def pick_device(device: str = "auto") -> str:
    """``auto`` -> cuda, then mps, then cpu; an explicit device must be available."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise CLIError(f"invalid --device {device!r}: use auto, cpu, cuda, cuda:N or mps", 2) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: no CUDA GPU is available to torch here; use --device cpu (or auto)", 2)
    if kind == "mps" and not has_mps:
        raise CLIError("--device mps: Apple MPS is not available to torch here; use --device cpu (or auto)", 2)
    return device


def progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr(),
    )


def fmt(x: float) -> str:
    return str(float(x))


def pladis_label(scale: float, alpha: float) -> str:
    """The panel label of a PLADIS image, e.g. ``"PLADIS scale=2.0 alpha=1.5"``."""
    return f"PLADIS scale={fmt(scale)} alpha={fmt(alpha)}"


@contextlib.contextmanager
def reporting_errors(verbose: bool = False):
    """The error boundary of a command: expected failures become one red line on stderr and an exit code.

    :class:`CLIError` exits with its code, anything else with 1 (its message
    on one line; ``ValueError`` messages, such as those of ``pladis.apply``, as
    they are).  With ``verbose`` the exception propagates with its traceback
    and library logs are left on.
    """
    try:
        with quiet_libraries(not verbose):
            yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    except Exception as e:
        if verbose:
            raise
        if isinstance(e, CLIError):
            raise fail(str(e), e.code) from None
        raise fail(describe_unexpected(e)) from None


def describe_unexpected(e: Exception) -> str:
    text = " ".join(str(e).split())
    if "out of memory" in text.lower():
        return f"out of memory ({text[:160]}): try --offload, a smaller --size or a lower-precision --dtype"
    if isinstance(e, ValueError):  # pladis.apply and the pipelines explain bad arguments in ValueErrors
        hint = " (check --pag-layers: e.g. mid, up_blocks.0, down_blocks.2.attentions.1)" if "PAG layer" in text else ""
        return (text or type(e).__name__) + hint
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text} (run again with --verbose for the traceback)"


@contextlib.contextmanager
def quiet_libraries(quiet: bool = True):
    """Silence library log chatter and loading bars while inside (download bars stay: they show on a terminal)."""
    if not quiet:
        yield
        return
    import warnings

    from diffusers.utils import logging as d_logging
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as t_logging

    levels = [lib.get_verbosity() for lib in (d_logging, t_logging, hub_utils.logging)]
    bars = [d_logging.is_progress_bar_enabled(), t_logging.is_progress_bar_enabled()]
    for lib in (d_logging, t_logging, hub_utils.logging):
        lib.set_verbosity_error()
    d_logging.disable_progress_bar()
    t_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(diffusers|transformers|huggingface_hub|accelerate|torch)\b")
            yield
    finally:
        for lib, level in zip((d_logging, t_logging, hub_utils.logging), levels):
            lib.set_verbosity(level)
        if bars[0]:
            d_logging.enable_progress_bar()
        if bars[1]:
            t_logging.enable_progress_bar()


def parse_number_list(text: str | None, option: str, *, integers: bool = False) -> list | None:
    """``"999,749,499"`` -> numbers (``--timesteps-list``, ``--sigmas``, ``--scales``...); a bad value: CLIError 2."""
    if text is None:
        return None
    from pladis.presets import parse_float_list

    try:
        values = parse_float_list(text, option)
    except ValueError as e:
        raise CLIError(str(e), 2) from None
    if integers:
        if not all(v == int(v) for v in values):
            raise CLIError(f"invalid {option} {text!r}: use whole numbers, e.g. 999,749,499,249", 2)
        return [int(v) for v in values]
    return values


def parse_seeds(text: str | None, default: int) -> list[int]:
    """``--seeds 0-7`` / ``0,3,9`` / ``0-3,10`` -> the seeds; the single ``--seed`` when not given."""
    if text is None:
        return [check_seed(default)]
    from pladis.presets import parse_int_list

    try:
        seeds = parse_int_list(text, "--seeds")
    except ValueError as e:
        raise CLIError(str(e), 2) from None
    for seed in seeds:
        check_seed(seed, "--seeds")
    return list(dict.fromkeys(seeds))  # each seed once, in the given order


SPACINGS = ("trailing", "leading", "linspace")


def build_preset(preset: str | None, model: str | None, **flags):
    """The :class:`pladis.presets.Preset` a command line asks for: ``--preset`` (or a bare ``--model``) with every
    given flag on top.  ``flags`` are CLI values (None = not given); bad values raise :class:`CLIError` (code 2)."""
    from pladis import presets

    if preset is None and not model:
        raise CLIError(
            "missing --model or --preset: give a Hub id like 'org/name', a local diffusers folder, or one of "
            f"--preset {', '.join(presets.names())}",
            2,
        )
    try:
        base = presets.get(preset) if preset is not None else presets.custom(str(model))
    except ValueError as e:
        raise CLIError(str(e), 2) from None
    fields: dict = {"model": model}
    scheduler = flags.pop("scheduler", None)
    config = dict(base.scheduler_config)
    if scheduler is not None and scheduler != "keep":
        from .loading import SCHEDULER_NAMES

        class_name, extra = SCHEDULER_NAMES.get(scheduler, (scheduler, {}))
        if class_name is not None and not class_name.endswith("Scheduler"):
            names_ = ", ".join(SCHEDULER_NAMES)
            raise CLIError(
                f"invalid --scheduler {scheduler!r}: use {names_} or a diffusers class like DDIMScheduler", 2
            )
        fields["scheduler"], config = class_name, extra
    elif scheduler == "keep":  # the model's own scheduler: the preset's choice is dropped
        base, config = _replace(base, scheduler=None, scheduler_config={}), {}
    spacing = flags.pop("spacing", None)
    if spacing is not None:
        if spacing not in SPACINGS:
            raise CLIError(f"invalid --spacing {spacing!r}: use one of {', '.join(SPACINGS)}", 2)
        config = {**config, "timestep_spacing": spacing}
    fields["scheduler_config"] = config
    size = flags.pop("size", None)
    if size is not None:
        fields["size"] = parse_size(size)
    freeu = flags.pop("freeu", None)
    if freeu is not None:
        fields["freeu"] = tuple(parse_freeu(freeu).values())  # type: ignore[union-attr]
    timesteps = flags.pop("timesteps_list", None)
    if timesteps is not None:
        values = parse_number_list(timesteps, "--timesteps-list", integers=True) or []
        if (values and not all(0 <= t < 1000 for t in values)) or values != sorted(values, reverse=True):
            raise CLIError(f"invalid --timesteps-list {timesteps!r}: need decreasing values in 0..999", 2)
        fields["timesteps"] = tuple(values or ())
        fields["steps"] = len(values or ())
    sigmas = flags.pop("sigmas", None)
    if sigmas is not None:
        values = parse_number_list(sigmas, "--sigmas") or []
        if values != sorted(values, reverse=True) or min(values) < 0:
            raise CLIError(f"invalid --sigmas {sigmas!r}: need decreasing values >= 0", 2)
        fields["sigmas"] = tuple(values or ())
        fields["steps"] = len(values or ())
    for key in ("pag_layers", "seg_layers", "pladis_layers"):
        if flags.get(key) is not None:
            fields[key] = tuple(names(flags.pop(key)) or ()) or None
        flags.pop(key, None)
    window = flags.pop("pladis_timesteps", None)
    if window is not None:
        fields["pladis_timesteps"] = parse_timesteps(window)
    lora = flags.pop("lora", None)
    if lora is not None:  # a LoRA of one's own: the preset's file name goes with its repo
        base = _replace(base, lora_repo=lora, lora_file=None)
    fields.update({k: v for k, v in flags.items() if v is not None})
    try:
        resolved = presets.resolve(base, **fields)
    except ValueError as e:
        raise CLIError(str(e), 2) from None
    check_options(resolved.scale, resolved.alpha, resolved.temperature, resolved.steps, resolved.guidance, 0,
                  resolved.pag_scale)  # fmt: skip
    for option, value in (("--seg-scale", resolved.seg_scale), ("--seg-blur-sigma", resolved.seg_blur_sigma),
                          ("--true-cfg", resolved.true_cfg), ("--controlnet-scale", resolved.controlnet_scale)):  # fmt: skip
        if value is not None and (not math.isfinite(value) or value < 0):
            raise CLIError(f"invalid {option} {value}: must be a finite number >= 0", 2)
    if resolved.num_frames is not None and resolved.num_frames < 1:
        raise CLIError(f"invalid --num-frames {resolved.num_frames}: need at least 1 frame", 2)
    return resolved


def _replace(preset, **changes):
    import dataclasses

    return dataclasses.replace(preset, **changes)
