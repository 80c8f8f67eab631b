"""``pladis study serve`` and ``pladis study results``: a Typer sub-app (the main CLI mounts it as ``study``).

Heavy imports (SQLAlchemy, Starlette, matplotlib) happen inside the commands, so ``pladis --help`` works without
the ``study`` extra.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pladis.files import atomic_write_bytes

study_app = typer.Typer(
    name="study",
    help="Blind pairwise preference study (the paper's user study) as a web app, and its results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RunArg = Annotated[
    Path | None, typer.Argument(help="Evaluation run folder (RUN/images/<config>/<sample_id>.png + .json).")
]
AOpt = Annotated[str | None, typer.Option("--a", help="Config A inside RUN (e.g. the baseline).")]
BOpt = Annotated[str | None, typer.Option("--b", help="Config B inside RUN (e.g. pladis); win rates are B's.")]
ADirOpt = Annotated[Path | None, typer.Option("--a-dir", help="Instead of RUN: folder of A images.")]
BDirOpt = Annotated[Path | None, typer.Option("--b-dir", help="Instead of RUN: folder of B images (same file names).")]
DbOpt = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL or SQLite file (default: RUN/study.sqlite).")]
StudyOpt = Annotated[str | None, typer.Option("--study", help="Study name in the database (default from inputs).")]


class StudyCLIError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _fail(err: Exception, code: int = 1) -> typer.Exit:
    Console(stderr=True, highlight=False).print(f"[red]error:[/red] {err}", soft_wrap=True)
    return typer.Exit(code)


@dataclass(frozen=True)
class Inputs:
    run: Path | None
    config_a: str
    config_b: str
    dir_a: Path | None
    dir_b: Path | None
    study: str
    db_url: str


def _inputs(
    run: Path | None,
    a: str | None,
    b: str | None,
    a_dir: Path | None,
    b_dir: Path | None,
    db: str | None,
    study: str | None,
) -> Inputs:
    if run is not None and (a_dir or b_dir):
        raise StudyCLIError("give either RUN with --a/--b or --a-dir/--b-dir, not both", 2)
    if run is not None:
        if not a or not b:
            raise StudyCLIError("RUN needs --a CONFIG and --b CONFIG (e.g. --a baseline --b pladis)", 2)
        if not run.is_dir():
            raise StudyCLIError(f"{run}: no such run folder", 2)
        name = study or f"{run.resolve().name}:{a}-vs-{b}"
        default_db = run / "study.sqlite"
        config_a, config_b = a, b
    elif a_dir and b_dir:
        name = study or f"{a_dir.resolve().name}-vs-{b_dir.resolve().name}"
        default_db = Path.cwd() / "pladis-study.sqlite"
        config_a, config_b = a or a_dir.resolve().name, b or b_dir.resolve().name
    else:
        raise StudyCLIError("pass an evaluation RUN folder with --a/--b, or --a-dir X --b-dir Y", 2)
    from .db import sqlite_url

    if db is None:
        url = sqlite_url(default_db)
    elif "://" in db:
        url = db
    else:
        url = sqlite_url(Path(db))
    return Inputs(run, config_a, config_b, a_dir, b_dir, name, url)


def _engine(url: str) -> Any:
    try:
        from .db import make_engine, migrate
    except ImportError as err:
        raise StudyCLIError(
            f"pladis study needs the study extra ({err.name} missing): pip install 'pladis[study]'"
        ) from err
    from sqlalchemy.exc import ArgumentError, OperationalError

    try:
        engine = make_engine(url)
        migrate(engine)
    except (ArgumentError, OperationalError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StudyCLIError(f"cannot open the database {_redact(url)}: {first}") from err
    return engine


def _redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(database URL)"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@study_app.command("serve")
def serve(
    run: RunArg = None,
    a: AOpt = None,
    b: BOpt = None,
    a_dir: ADirOpt = None,
    b_dir: BDirOpt = None,
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", help="With --a-dir/--b-dir: prompts .txt (sorted-stem order), .csv or .jsonl."),
    ] = None,
    questions: Annotated[
        str, typer.Option("--questions", help="Comma list: quality, alignment.")
    ] = "quality,alignment",
    pairs: Annotated[int, typer.Option("--pairs", min=1, help="Pairs shown to each evaluator.")] = 20,
    no_preference: Annotated[
        bool, typer.Option("--no-preference/--forced-choice", help="Offer a 'no preference' answer.")
    ] = True,
    db: DbOpt = None,
    study: StudyOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; loopback unless you say otherwise.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    admin_token: Annotated[
        str | None,
        typer.Option("--admin-token", envvar="PLADIS_STUDY_ADMIN_TOKEN", help="Token for /results (default: random)."),
    ] = None,
    title: Annotated[str, typer.Option("--title", help="Page title shown to evaluators.")] = "Image preference study",
    secure_cookies: Annotated[
        bool, typer.Option("--secure-cookies", help="Mark cookies Secure (behind an HTTPS proxy).")
    ] = False,
) -> None:
    """Serve the study: one pair per page, blind and balanced; votes stored before the next page."""
    console = Console(highlight=False)
    try:
        inputs = _inputs(run, a, b, a_dir, b_dir, db, study)
        from .loader import StudyInputError, load_pairs_from_dirs, load_pairs_from_run
        from .service import StudyError, StudySpec, open_study, parse_questions

        try:
            if inputs.run is not None:
                found = load_pairs_from_run(inputs.run, inputs.config_a, inputs.config_b)
            else:
                assert inputs.dir_a is not None and inputs.dir_b is not None
                found = load_pairs_from_dirs(inputs.dir_a, inputs.dir_b, prompts)
            spec = StudySpec(
                name=inputs.study,
                config_a=inputs.config_a,
                config_b=inputs.config_b,
                questions=parse_questions(questions),
                pairs_per_evaluator=pairs,
                allow_tie=no_preference,
            )
        except (StudyInputError, StudyError) as err:
            raise StudyCLIError(str(err), 2) from err
        if admin_token is not None and len(admin_token) < 16:
            raise StudyCLIError("--admin-token needs at least 16 characters", 2)
        token = admin_token or secrets.token_urlsafe(24)
        engine = _engine(inputs.db_url)
        try:
            study_id = open_study(engine, spec, found)
        except StudyError as err:
            raise StudyCLIError(str(err)) from err
        import uvicorn

        from .app import create_app

        app = create_app(engine, study_id, token, secure_cookies=secure_cookies, title=title)
        if port:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
                try:
                    probe.bind((host, port))
                except OSError as err:
                    raise StudyCLIError(
                        f"cannot listen on {host}:{port} ({err.strerror}); pick another --port"
                    ) from err
    except StudyCLIError as err:
        raise _fail(err, err.code) from None
    shown = f"[{host}]" if ":" in host else host
    console.print(f"study [bold]{inputs.study}[/bold]: {len(found)} pairs, {spec.pairs_per_evaluator} per evaluator")
    console.print(f"database: {_redact(inputs.db_url)}")
    console.print(f"evaluators: http://{shown}:{port}/")
    console.print(f"results:    http://{shown}:{port}/results?token={token}")
    console.print(f"admin token: {token}")
    if not _is_loopback(host):
        console.print(
            f"[yellow]warning:[/yellow] listening on {host}, reachable from other machines; use HTTPS in front"
        )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)


@study_app.command("results")
def results(
    run: RunArg = None,
    a: AOpt = None,
    b: BOpt = None,
    a_dir: ADirOpt = None,
    b_dir: BDirOpt = None,
    db: DbOpt = None,
    study: StudyOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for summary.csv, votes.csv, preference.png (default: RUN/study)."),
    ] = None,
) -> None:
    """Win rates with Wilson 95 % CIs and a binomial test per question (and category); chart and CSVs."""
    console = Console(highlight=False)
    try:
        inputs = _inputs(run, a, b, a_dir, b_dir, db, study)
        engine = _engine(inputs.db_url)
        from . import results as res
        from .service import StudyError, find_study

        try:
            found = find_study(engine, inputs.study)
        except StudyError as err:
            raise StudyCLIError(str(err)) from err
        summary = res.summarise(engine, found.id)
        folder = out or ((inputs.run / "study") if inputs.run else Path.cwd() / "pladis-study-results")
        folder.mkdir(parents=True, exist_ok=True)
        files = {
            "summary.csv": res.summary_csv(summary).encode(),
            "votes.csv": res.votes_csv(engine, found.id).encode(),
        }
        try:
            files["preference.png"] = res.chart_png(summary)
        except ImportError:
            console.print("[yellow]note:[/yellow] no chart: matplotlib missing (pip install 'pladis[study]')")
        for name, data in files.items():
            atomic_write_bytes(folder / name, data)
    except StudyCLIError as err:
        raise _fail(err, err.code) from None
    header, *rows = res.format_table(summary)
    table = Table(title=f"{summary.study}: {summary.evaluators} evaluators ({summary.finished} finished)")
    for column in header:
        table.add_column(column, justify="left" if column in ("question", "category") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"wrote {', '.join(str(folder / n) for n in files)}")
