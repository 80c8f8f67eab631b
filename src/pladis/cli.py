"""The ``pladis`` command line.

``pladis generate`` loads any diffusers text-to-image pipeline (a Hub id or a
local folder), applies PLADIS and writes the image, or a labelled
stock | PLADIS comparison from the same seed::

    pladis generate --model stabilityai/stable-diffusion-xl-base-1.0 \\
        --prompt "a red cube on top of a blue sphere" --compare out.png

Adding a command is one line at the end of this file, e.g.
``app.command("demo")(demo)`` for a function ``demo`` written with Typer
options in another module.  The helpers :func:`load_pipeline`,
:func:`build_call_kwargs` and :func:`run_pipeline` are meant to be reused by
such commands.  Expected problems are reported as one red line on stderr with
exit code 1 (2 for bad options); ``--verbose`` shows library logs and full
tracebacks.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import re
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from pladis import __version__

app = typer.Typer(
    name="pladis",
    help="PLADIS: sparse cross-attention for diffusers pipelines at inference time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_HUB_ERROR_HINT = "Pass a local path or check the id."


class CLIError(Exception):
    """An expected failure: reported as one line on stderr and exit ``code`` (1 = runtime, 2 = bad option)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(message: str, code: int = 1) -> typer.Exit:
    one_line = " ".join(str(message).split())
    _stderr().print(Text(f"error: {one_line}", style="bold red"), soft_wrap=True)
    return typer.Exit(code)


def _warn(message: str) -> None:
    _stderr().print(Text(f"warning: {message}", style="yellow"), soft_wrap=True)


# --------------------------------------------------------------------------- option parsing


class Scheduler(str, Enum):
    keep = "keep"
    euler = "euler"
    euler_trailing = "euler-trailing"
    ddim = "ddim"
    lcm = "lcm"


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Device(str, Enum):
    auto = "auto"
    cuda = "cuda"
    mps = "mps"
    cpu = "cpu"


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


def _names(text: str | None) -> list[str] | None:
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


def _check_options(
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
    if seed < 0:
        raise CLIError(f"invalid --seed {seed}: must be >= 0", 2)
    if pag_scale is not None and (not math.isfinite(pag_scale) or pag_scale < 0):
        raise CLIError(f"invalid --pag-scale {pag_scale}: must be a finite number >= 0", 2)


def _check_output(path: Path | None, option: str) -> None:
    if path is None:
        return
    from PIL import Image

    if path.suffix.lower() not in Image.registered_extensions():
        raise CLIError(f"invalid {option} {str(path)!r}: give an image file name such as out.png", 2)
    if path.is_dir():
        raise CLIError(f"invalid {option} {str(path)!r}: that is a folder; give an image file name such as out.png", 2)


# --------------------------------------------------------------------------- model resolution


@contextlib.contextmanager
def _quiet_libraries(quiet: bool = True):
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


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face Hub answers at all (any HTTP status counts); False in offline mode."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except Exception:
        return False
    return True


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~", "\\"))
        or name.count("/") >= 2
        or "\\" in name
        or bool(re.match(r"^[A-Za-z]:", name))
        or name.endswith((".safetensors", ".ckpt", ".bin", ".pt", ".pth"))
    )


def _offline_message(what: str, name: str) -> str:
    return (
        f"could not load {what} {name!r}: not a local folder and the Hugging Face Hub is unreachable (offline?). "
        f"{_HUB_ERROR_HINT}"
    )


def _resolve_model(model: str) -> tuple[str, dict[str, Any]]:
    """A local pipeline folder or a Hub id, plus ``from_pretrained`` kwargs; fails fast with a clear message."""
    path = Path(model).expanduser()
    if path.exists():
        if path.is_file():
            raise CLIError(
                f"model {model!r} is a single file; pladis needs a diffusers pipeline folder "
                "(with model_index.json) or a Hugging Face Hub id like 'org/name'"
            )
        if not (path / "model_index.json").is_file():
            raise CLIError(
                f"model folder {model!r} is not a diffusers pipeline (no model_index.json in it); "
                "pass the folder that holds model_index.json, or a Hub id like 'org/name'"
            )
        return str(path), {}
    if _looks_like_path(model):
        raise CLIError(
            f"model path {model!r} does not exist; pass an existing diffusers pipeline folder "
            "or a Hugging Face Hub id like 'org/name'"
        )
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        raise CLIError(f"model {model!r} is neither an existing folder nor a valid Hub id like 'org/name'") from None
    cached = isinstance(try_to_load_from_cache(model, "model_index.json"), str)
    if _hub_reachable():
        return model, {}
    if cached:
        return model, {"local_files_only": True}
    raise CLIError(_offline_message("model", model))


def _load_error_message(what: str, name: str, err: BaseException) -> str:
    """One line for a failure to load a model or LoRA, looking through the exception chain for Hub errors."""
    from huggingface_hub import errors as hub_errors

    chain, e = [], err
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, hub_errors.GatedRepoError):
            return (
                f"could not load {what} {name!r}: it is gated on the Hugging Face Hub; accept its license on "
                "huggingface.co and log in with `hf auth login`"
            )
        if isinstance(e, hub_errors.RepositoryNotFoundError):
            return f"could not load {what} {name!r}: no such repository on the Hugging Face Hub. {_HUB_ERROR_HINT}"
        offline = (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled, ConnectionError, TimeoutError)
        if isinstance(e, offline) or type(e).__name__ in ("ConnectionError", "ConnectTimeout", "ConnectError"):
            return _offline_message(what, name)
    detail = " ".join(str(err).split()) or type(err).__name__
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return f"could not load {what} {name!r}: {detail}"


# --------------------------------------------------------------------------- pipeline setup


def pick_device(device: str = "auto") -> str:
    """``auto`` -> cuda, then mps, then cpu; an explicit device must be available."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA GPU is available to torch here; use --device cpu (or auto)", 2)
    if device == "mps" and not has_mps:
        raise CLIError("--device mps: Apple MPS is not available to torch here; use --device cpu (or auto)", 2)
    return device


def pick_dtype(dtype: str, device: str, transformer_based: bool):
    """``auto``: float32 on cpu; on GPUs float16, or bfloat16 for transformer models (FLUX, SD3, SANA, ...)."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cpu":
        return torch.float32
    if transformer_based and (device != "cuda" or torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _set_scheduler(pipe, name: str) -> None:
    if name == "keep":
        return
    current = pipe.scheduler
    if "FlowMatch" in type(current).__name__:
        if name == "euler":
            return  # flow-matching pipelines already sample with an Euler scheduler
        raise CLIError(
            f"--scheduler {name} does not fit {type(pipe).__name__}, a flow-matching model; "
            "use --scheduler keep (or euler)",
            2,
        )
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler

    cls = {"ddim": DDIMScheduler, "lcm": LCMScheduler}.get(name, EulerDiscreteScheduler)
    extra = {"timestep_spacing": "trailing"} if name == "euler-trailing" else {}
    pipe.scheduler = cls.from_config(current.config, **extra)


def _resolve_lora(lora: str) -> tuple[str, dict[str, Any]]:
    """``load_lora_weights`` arguments for a LoRA file, folder, Hub repo or ``org/repo/file.safetensors``."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise CLIError("--lora needs the peft package: pip install peft")
    path = Path(lora).expanduser()
    if path.exists():
        return str(path), {}
    if lora.startswith((".", "/", "~")) or "\\" in lora or "/" not in lora:
        raise CLIError(f"LoRA path {lora!r} does not exist; pass an existing .safetensors file or folder, or a Hub id")
    if not _hub_reachable():
        raise CLIError(_offline_message("LoRA", lora))
    parts = lora.split("/")
    weight_name = "/".join(parts[2:])  # org/repo/file.safetensors names one file of the repo
    return "/".join(parts[:2]), ({"weight_name": weight_name} if weight_name else {})


def _load_lora(pipe, lora: str, source: str, kwargs: dict[str, Any]) -> None:
    """Load and fuse a LoRA (e.g. a Lightning / Hyper-SD / DMD2 distillation), then drop its adapter layers."""
    if not hasattr(pipe, "load_lora_weights"):
        raise CLIError(f"--lora: {type(pipe).__name__} does not support LoRA weights", 2)
    try:
        pipe.load_lora_weights(source, **kwargs)
        pipe.fuse_lora()
        pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go
    except Exception as e:
        raise CLIError(_load_error_message("LoRA", lora, e)) from e


def load_pipeline(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    scheduler: str = "keep",
    pag: bool = False,
    pag_layers: list[str] | None = None,
    freeu: dict[str, float] | None = None,
    lora: str | None = None,
    offload: bool = False,
):
    """Load a text-to-image pipeline from a Hub id or folder, set it up and move it to its device.

    A Hub model is downloaded first (with the Hub's own progress bars), then
    loaded under a spinner with ``AutoPipelineForText2Image`` (``enable_pag``
    for PAG), falling back to ``DiffusionPipeline``.  Raises
    :class:`CLIError` with a one-line message on any expected failure.
    """
    from diffusers import DiffusionPipeline

    source, hub_kwargs = _resolve_model(model)
    lora_args = _resolve_lora(lora) if lora else None
    device = pick_device(device)
    try:
        config = DiffusionPipeline.load_config(source, **hub_kwargs)
        if not Path(source).is_dir():
            source = DiffusionPipeline.download(source, **hub_kwargs)
    except Exception as e:
        raise CLIError(_load_error_message("model", model, e)) from e
    torch_dtype = pick_dtype(dtype, device, transformer_based="transformer" in config)

    kwargs: dict[str, Any] = dict(torch_dtype=torch_dtype)
    if pag:
        kwargs["enable_pag"] = True
        if pag_layers:
            kwargs["pag_applied_layers"] = pag_layers
    with _stderr().status(f"loading {model} ..."):
        pipe = _from_pretrained(source, model, config, kwargs, pag)
        _set_scheduler(pipe, scheduler)
        if freeu is not None:
            if not hasattr(pipe, "enable_freeu"):
                raise CLIError(f"--freeu: {type(pipe).__name__} has no FreeU (UNet pipelines only); drop --freeu", 2)
            pipe.enable_freeu(**freeu)
        if lora_args:
            _load_lora(pipe, lora, *lora_args)
        if offload and device != "cpu":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _from_pretrained(source: str, model: str, config: dict, kwargs: dict[str, Any], pag: bool):
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    try:
        try:
            return AutoPipelineForText2Image.from_pretrained(source, **kwargs)
        except ValueError as e:
            if "AutoPipeline can't find" not in str(e):
                raise
            if pag:
                raise CLIError(
                    f"--pag-scale: diffusers has no PAG variant of {config.get('_class_name', 'this pipeline')}; "
                    "drop --pag-scale",
                    2,
                ) from None
            return DiffusionPipeline.from_pretrained(source, **kwargs)
    except CLIError:
        raise
    except Exception as e:
        raise CLIError(_load_error_message("model", model, e)) from e


def _call_parameters(pipe) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(pipe.__call__).parameters)


def build_call_kwargs(pipe, **candidates) -> tuple[dict[str, Any], list[str]]:
    """Keep the ``candidates`` that ``pipe.__call__`` takes by name and are not None.

    Returns ``(kwargs, ignored)``: ``ignored`` names the non-None candidates the
    pipeline does not accept (e.g. ``negative_prompt`` on FLUX), so one command
    line works on SD1.5, SDXL, FLUX, SD3, SANA, ...
    """
    params = _call_parameters(pipe)
    kwargs = {k: v for k, v in candidates.items() if v is not None and k in params}
    ignored = [k for k, v in candidates.items() if v is not None and k not in params]
    return kwargs, ignored


def call_default(pipe, name: str, value=None):
    """``value`` if given, else the default of ``pipe.__call__``'s parameter ``name`` (None if it has none)."""
    if value is not None:
        return value
    param = _call_parameters(pipe).get(name)
    if param is None or param.default is inspect.Parameter.empty:
        return None
    return param.default


def run_pipeline(pipe, call_kwargs: dict[str, Any], seed: int, *, progress=None, description: str = "generating"):
    """One image from ``pipe(**call_kwargs)`` with a fresh CPU ``torch.Generator`` seeded with ``seed``.

    The same seed gives the same initial noise whatever the device.  With a
    rich ``progress``, a task advances once per denoising step (through
    ``callback_on_step_end`` where the pipeline has it).
    """
    import torch

    kwargs = dict(call_kwargs, generator=torch.Generator("cpu").manual_seed(seed))
    task = total = None
    if progress is not None:
        total = call_default(pipe, "num_inference_steps", kwargs.get("num_inference_steps"))
        task = progress.add_task(description, total=total)
        if "callback_on_step_end" in _call_parameters(pipe):

            def on_step_end(_pipe, _step, _timestep, callback_kwargs):
                progress.advance(task)
                return callback_kwargs

            kwargs["callback_on_step_end"] = on_step_end
    image = pipe(**kwargs).images[0]
    if task is not None:
        progress.update(task, total=total or 1, completed=total or 1)
    return image


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_stderr(),
    )


def _fmt(x: float) -> str:
    return str(float(x))


def pladis_label(scale: float, alpha: float) -> str:
    """The panel label of a PLADIS image, e.g. ``"PLADIS scale=2.0 alpha=1.5"``."""
    return f"PLADIS scale={_fmt(scale)} alpha={_fmt(alpha)}"


# --------------------------------------------------------------------------- commands


@contextlib.contextmanager
def reporting_errors(verbose: bool = False):
    """The error boundary of a command: expected failures become one red line on stderr and an exit code.

    :class:`CLIError` exits with its code, anything else with 1 (its message
    on one line; ``ValueError`` messages, such as those of ``pladis.apply``, as
    they are).  With ``verbose`` the exception propagates with its traceback
    and library logs are left on.
    """
    try:
        with _quiet_libraries(not verbose):
            yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        raise _fail("interrupted", 130) from None
    except Exception as e:
        if verbose:
            raise
        if isinstance(e, CLIError):
            raise _fail(str(e), e.code) from None
        raise _fail(_describe_unexpected(e)) from None


def _describe_unexpected(e: Exception) -> str:
    text = " ".join(str(e).split())
    if "out of memory" in text.lower():
        return f"out of memory ({text[:160]}): try --offload, a smaller --size or a lower-precision --dtype"
    if isinstance(e, ValueError):  # pladis.apply and the pipelines explain bad arguments in ValueErrors
        hint = " (check --pag-layers: e.g. mid, down.block_1, up.block_0)" if "PAG layer" in text else ""
        return (text or type(e).__name__) + hint
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text} (run again with --verbose for the traceback)"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"pladis {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """PLADIS: sparse cross-attention for diffusers pipelines at inference time."""


def generate(
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="The text prompt. (required)")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Hub id (org/name) or local diffusers folder. (required)")
    ] = None,
    compare: Annotated[
        Path | None, typer.Option("--compare", help="Write stock | PLADIS side by side (same seed) to this image.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the PLADIS image alone to this file.")] = None,
    negative: Annotated[str | None, typer.Option("--negative", help="Negative prompt.")] = None,
    scale: Annotated[float, typer.Option(help="PLADIS scale lambda (0 = stock model).")] = 2.0,
    alpha: Annotated[float, typer.Option(help="Entmax alpha in [1, 2] (2 = sparsemax).")] = 1.5,
    steps: Annotated[int | None, typer.Option(help="Inference steps (default: the pipeline's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale (default: the pipeline's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (both images share it).")] = 0,
    size: Annotated[
        str | None, typer.Option(help="1024, or WIDTHxHEIGHT like 768x512 (default: the pipeline's).")
    ] = None,
    pag_scale: Annotated[
        float | None, typer.Option("--pag-scale", help="Perturbed-attention guidance scale (loads the PAG variant).")
    ] = None,
    pag_layers: Annotated[
        str | None, typer.Option("--pag-layers", help="Comma-separated PAG layers, e.g. mid (default: the pipeline's).")
    ] = None,
    freeu: Annotated[str | None, typer.Option(help="Enable FreeU with s1,s2,b1,b2, e.g. 0.9,0.2,1.5,1.6.")] = None,
    scheduler: Annotated[Scheduler, typer.Option(help="Sampler (keep = the model's own).")] = Scheduler.keep,
    lora: Annotated[
        str | None, typer.Option(help="LoRA file, folder, Hub repo or org/repo/file.safetensors; fused into the model.")
    ] = None,
    dtype: Annotated[DType, typer.Option(help="auto: float16/bfloat16 on GPU, float32 on CPU.")] = DType.auto,
    device: Annotated[Device, typer.Option(help="auto: cuda, then mps, then cpu.")] = Device.auto,
    max_sequence_length: Annotated[
        int | None, typer.Option("--max-sequence-length", help="Text length for T5-style encoders (FLUX, SD3, ...).")
    ] = None,
    offload: Annotated[bool, typer.Option(help="Offload idle sub-models to CPU (saves GPU memory).")] = False,
    pladis_layers: Annotated[
        str | None,
        typer.Option(
            "--layers", help="PLADIS only in these layer groups or name patterns: down,mid,up or up_blocks.0.*"
        ),
    ] = None,
    timesteps: Annotated[
        str | None, typer.Option("--timesteps", help="PLADIS only for denoiser timesteps in LOW,HIGH, e.g. 500,1000.")
    ] = None,
    temperature: Annotated[float, typer.Option(help="Divides the scores of the sparse branch (1 = none).")] = 1.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs and full tracebacks.")] = False,
) -> None:
    """Generate an image with PLADIS, optionally next to the stock image from the same seed."""
    with reporting_errors(verbose):
        if not prompt:
            raise CLIError(
                "missing --prompt: give the text to generate, e.g. --prompt 'a red cube on a blue sphere'", 2
            )
        if not model:
            raise CLIError("missing --model: give a Hub id like 'org/name' or a local diffusers pipeline folder", 2)
        if compare is None and out is None:
            raise CLIError("nothing to write: add --compare out.png (stock | PLADIS) and/or --out pladis.png", 2)
        _check_options(scale, alpha, temperature, steps, guidance, seed, pag_scale)
        _check_output(compare, "--compare")
        _check_output(out, "--out")
        width, height = parse_size(size) or (None, None)
        freeu_args = parse_freeu(freeu)
        layers = _names(pag_layers)
        pladis_options = {
            "layers": _names(pladis_layers),
            "timesteps": parse_pair(timesteps, "--timesteps"),
            "temperature": temperature,
        }
        if layers and not pag_scale:
            raise CLIError("--pag-layers needs --pag-scale (e.g. --pag-scale 3.0)", 2)

        t0 = time.perf_counter()
        pipe = load_pipeline(
            model, device=device.value, dtype=dtype.value, scheduler=scheduler.value, pag=bool(pag_scale),
            pag_layers=layers, freeu=freeu_args, lora=lora, offload=offload,
        )  # fmt: skip
        dtype_name = str(pipe.dtype).removeprefix("torch.")
        took = time.perf_counter() - t0
        _stderr().print(f"[dim]loaded {type(pipe).__name__} on {pipe.device} ({dtype_name}) in {took:.1f}s")
        call_kwargs, ignored = build_call_kwargs(
            pipe, prompt=prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
            height=height, width=width, pag_scale=pag_scale or None, max_sequence_length=max_sequence_length,
        )  # fmt: skip
        for name in ignored:
            _warn(f"{type(pipe).__name__} does not take {name}; ignoring it")

        stock, image = _stock_and_pladis(
            pipe, call_kwargs, seed, scale, alpha, pladis_options, with_stock=compare is not None
        )
        settings = {
            "model": model, "prompt": prompt, "negative_prompt": negative, "seed": seed,
            "steps": call_default(pipe, "num_inference_steps", steps),
            "guidance": call_default(pipe, "guidance_scale", guidance), "size": f"{image.width}x{image.height}",
            "scale": scale, "alpha": alpha, "scheduler": _scheduler_name(pipe.scheduler), "pag_scale": pag_scale or None,
            "freeu": freeu_args, "lora": lora, "pipeline": type(pipe).__name__, "dtype": dtype_name,
            "pladis_version": __version__, **{k: v for k, v in pladis_options.items() if v not in (None, 1.0)},
        }  # fmt: skip
        settings = {k: v for k, v in settings.items() if v is not None}
        _write_outputs(stock, image, settings, compare=compare, out=out)


def _stock_and_pladis(pipe, call_kwargs, seed: int, scale: float, alpha: float, options: dict, *, with_stock: bool):
    """The stock image (if asked; generated before PLADIS touches the model) and the PLADIS one, same seed.

    PLADIS is removed again at the end, whatever happens.
    """
    import pladis

    # Apply once up front so that a model PLADIS cannot work on fails before any generation.
    pladis.apply(pipe, scale=scale, alpha=alpha, **options)
    pladis.remove(pipe)
    with _progress() as progress:
        try:
            stock = (
                run_pipeline(pipe, call_kwargs, seed, progress=progress, description="stock") if with_stock else None
            )
            pladis.apply(pipe, scale=scale, alpha=alpha, **options)
            image = run_pipeline(pipe, call_kwargs, seed, progress=progress, description=pladis_label(scale, alpha))
        except BaseException:
            progress.live.transient = True  # on failure only the error line is left on screen
            raise
        finally:
            pladis.remove(pipe)
    return stock, image


def _write_outputs(stock, image, settings: dict[str, Any], *, compare: Path | None, out: Path | None) -> None:
    from pladis.compare import grid_layout, labelled_grid, save_image

    label = pladis_label(settings["scale"], settings["alpha"])
    console = Console(highlight=False)
    if out is not None:
        save_image(image, out, {"pladis:settings": settings})
        console.print(f"wrote {out}  ({label}, {image.width}x{image.height})", soft_wrap=True)
    if compare is not None:
        rows, labels, caption = [[stock, image]], ["stock", label], _caption(settings)
        layout = grid_layout(rows, None, labels, caption)
        grid = labelled_grid(rows, None, labels, caption)
        save_image(grid, compare, {"pladis:settings": settings, "pladis:panels": layout.boxes[0]})
        console.print(f"wrote {compare}  (stock | {label}, seed {settings['seed']})", soft_wrap=True)


def _scheduler_name(scheduler) -> str:
    name = type(scheduler).__name__.removesuffix("Scheduler")
    if getattr(scheduler, "config", {}).get("timestep_spacing") == "trailing":
        name += "-trailing"
    return name


def _caption(settings: dict[str, Any]) -> str:
    """Prompt, negative prompt and the settings that reproduce the image, for the strip under a grid."""
    lines = [f"prompt: {settings['prompt']}"]
    if settings.get("negative_prompt"):
        lines.append(f"negative: {settings['negative_prompt']}")
    parts = []
    for key in ("steps", "guidance", "seed", "size", "scheduler", "pag_scale", "freeu", "lora", "model"):
        if key in settings:
            value = settings[key]
            parts.append(f"{key}={','.join(map(_fmt, value.values())) if key == 'freeu' else value}")
    lines.append(" ".join(parts))
    return "\n".join(lines)


def main() -> None:
    """Entry point of the ``pladis`` console script."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # e.g. its torchvision fallback notes, on every run
    app()


# Commands: one line each (a command is a function with Typer-annotated options; wrap its body in
# `with reporting_errors(verbose):` for the one-line error reporting).
app.command("generate")(generate)

from .demo.commands import bench_alignment, demo, train_demo  # noqa: E402  (commands built on the CLI helpers above)

app.command("demo")(demo)
app.command("train-demo")(train_demo)
app.command("bench-alignment")(bench_alignment)
