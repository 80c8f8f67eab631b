"""The ``pladis`` command line.

``pladis generate`` loads any diffusers text-to-image pipeline (a Hub id or a
local folder), applies PLADIS and writes the image, or a labelled
stock | PLADIS comparison from the same seed::

    pladis generate --model stabilityai/stable-diffusion-xl-base-1.0 \\
        --prompt "a red cube on top of a blue sphere" --compare out.png

One module per command (``generate``, ``demo``); ``common`` holds the error boundary and option checks,
``loading`` the pipeline loading that commands reuse (:func:`load_pipeline`, :func:`build_call_kwargs`,
:func:`run_pipeline`). Adding a command is one line below.  Expected problems are reported as one red line on stderr with
exit code 1 (2 for bad options); ``--verbose`` shows library logs and full
tracebacks.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from pladis import __version__
from pladis.study.cli import study_app

from . import demo, generate, info, maps, sweep
from . import eval as eval_cli

app = typer.Typer(
    name="pladis",
    help="PLADIS: sparse cross-attention for diffusers pipelines at inference time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


def main() -> None:
    """Entry point of the ``pladis`` console script."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # e.g. its torchvision fallback notes, on every run
    app()


app.command("generate")(generate.generate)
app.command("sweep")(sweep.sweep)
app.command("maps")(maps.maps)
app.command("info")(info.info)
app.command("demo")(demo.demo)
app.command("train-demo")(demo.train_demo)
app.command("bench-alignment")(demo.bench_alignment)
app.add_typer(study_app, name="study")
app.add_typer(eval_cli.eval_app, name="eval")
