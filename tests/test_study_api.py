"""`pladis study`: inputs, statistics, balance, one participation, vote validation, security, restart durability.

Runs against SQLite and, where scripts/ci_services.sh started it, PostgreSQL (each test in its own schema).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("sqlalchemy")
import sqlalchemy as sa
from starlette.testclient import TestClient
from typer.testing import CliRunner

from pladis.study import service
from pladis.study.app import CSRF_COOKIE, EVALUATOR_COOKIE, create_app
from pladis.study.cli import study_app
from pladis.study.db import Assignment, Evaluator, Vote, make_engine, migrate, sqlite_url
from pladis.study.fixture import make_demo_run
from pladis.study.loader import StudyInputError, load_pairs_from_dirs, load_pairs_from_run
from pladis.study.results import binomial_test, summarise, wilson_interval

ADMIN = "admin-token-for-tests-0123456789"
PG_URL = os.environ.get("PLADIS_STUDY_PG_URL", "postgresql+psycopg://pladis:pladis@127.0.0.1:5432/pladis_study")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def pg_reason() -> str | None:
    """None when PostgreSQL answers at PG_URL, else why the PostgreSQL variants skip."""
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"PostgreSQL not reachable at {PG_URL.split('@')[-1]} ({first}); run `bash scripts/ci_services.sh`"
    return None


PG_SKIP = pg_reason()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_demo_run(tmp_path_factory.mktemp("run") / "run", samples=12)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh database: a SQLite file, or a throw-away PostgreSQL schema."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "study.sqlite")
        return
    if PG_SKIP:
        pytest.skip(PG_SKIP)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(sa.text(f"create schema {schema}"))
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(sa.text(f"drop schema {schema} cascade"))
    admin.dispose()


def open_test_study(url: str, run: Path, pairs: int = 4, name: str = "t", allow_tie: bool = True):
    engine = make_engine(url, pool_size=5)
    migrate(engine)
    spec = service.StudySpec(name, "baseline", "pladis", pairs_per_evaluator=pairs, allow_tie=allow_tie)
    study_id = service.open_study(engine, spec, load_pairs_from_run(run, "baseline", "pladis"))
    return engine, study_id


def field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert match, f"no {name} field in page"
    return match.group(1)


def begin(client: TestClient) -> str:
    """Start the study in ``client``; returns the CSRF token."""
    csrf = field(client.get("/").text, "csrf")
    response = client.post("/start", data={"csrf": csrf})
    assert response.status_code == 200 and response.url.path == "/pair"
    return csrf


def count(engine, model) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()


# ---------------------------------------------------------------- inputs and statistics


def test_loader_run_and_dirs(run: Path, tmp_path: Path):
    pairs = load_pairs_from_run(run, "baseline", "pladis")
    assert [p.sample_id for p in pairs] == [f"{i:04d}" for i in range(12)]
    assert pairs[1].prompt == "a blue circle next to a small grey dot" and pairs[1].category == "two objects"
    assert pairs[1].seed == 1001 and pairs[1].image_b == run / "images" / "pladis" / "0001.png"
    with pytest.raises(StudyInputError, match="config 'cfg' not in"):
        load_pairs_from_run(run, "baseline", "cfg")
    # Plain folders: prompts from sidecars, or from a txt / csv / jsonl file.
    dir_a, dir_b = run / "images" / "baseline", run / "images" / "pladis"
    assert [p.prompt for p in load_pairs_from_dirs(dir_a, dir_b)] == [p.prompt for p in pairs]
    bare_a, bare_b = tmp_path / "a", tmp_path / "b"
    bare_a.mkdir(), bare_b.mkdir()
    for stem in ("x1", "x2"):
        for folder, src in ((bare_a, dir_a), (bare_b, dir_b)):
            (folder / f"{stem}.png").write_bytes((src / "0000.png").read_bytes())
    with pytest.raises(StudyInputError, match="no prompt for 'x1'"):
        load_pairs_from_dirs(bare_a, bare_b)
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\nsecond prompt\n")
    assert [p.prompt for p in load_pairs_from_dirs(bare_a, bare_b, txt)] == ["first prompt", "second prompt"]
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("stem,prompt,category\nx2,two,cat\nx1,one,dog\n")
    got = load_pairs_from_dirs(bare_a, bare_b, csv_file)
    assert [(p.prompt, p.category) for p in got] == [("one", "dog"), ("two", "cat")]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"stem": "x1", "prompt": "j1"}) + "\n" + json.dumps({"stem": "x2", "prompt": "j2"}))
    assert [p.prompt for p in load_pairs_from_dirs(bare_a, bare_b, jsonl)] == ["j1", "j2"]
    txt.write_text("only one\n")
    with pytest.raises(StudyInputError, match="1 prompts for 2 paired images"):
        load_pairs_from_dirs(bare_a, bare_b, txt)


def test_wilson_and_binomial_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for successes, trials in [(0, 0), (0, 10), (7, 10), (10, 10), (31, 50), (120, 200), (3, 17)]:
        low, high = wilson_interval(successes, trials)
        if trials:
            ref = stats.binomtest(successes, trials).proportion_ci(0.95, method="wilson")
            assert low == pytest.approx(ref.low, abs=1e-9) and high == pytest.approx(ref.high, abs=1e-9)
            assert binomial_test(successes, trials) == pytest.approx(
                stats.binomtest(successes, trials).pvalue, rel=1e-9
            )
    assert binomial_test(5, 10) == pytest.approx(1.0) and binomial_test(0, 0) == 1.0


# ---------------------------------------------------------------- the study itself


def test_assignment_is_balanced(db_url: str, run: Path):
    engine, study_id = open_test_study(db_url, run, pairs=4)
    for _ in range(6):  # 6 evaluators x 4 pairs = two full rounds over the 12 pairs
        service.start_evaluator(engine, study_id)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(Assignment.evaluator_id, Assignment.position, Assignment.pair_id, Assignment.a_on_left)
        ).all()
    shown = Counter(r.pair_id for r in rows)
    assert len(shown) == 12 and set(shown.values()) == {2}  # every pair exactly twice
    sides = Counter((r.pair_id, r.a_on_left) for r in rows)
    assert set(sides.values()) == {1} and len(sides) == 24  # ... once with A on the left, once on the right
    per_evaluator = Counter(r.evaluator_id for r in rows)
    assert set(per_evaluator.values()) == {4}
    orders = {
        tuple(r.pair_id for r in sorted(rows, key=lambda r: r.position) if r.evaluator_id == e) for e in per_evaluator
    }
    assert len(orders) == 6  # no two evaluators share pairs in the same order
    lefts = sum(r.a_on_left for r in rows)
    assert lefts == 12  # half of all showings put A on the left


def test_evaluators_of_the_same_pairs_never_share_an_order(db_url: str, run: Path):
    # 24 evaluators over 12 pairs, 4 each: 8 evaluators per set of pairs; plain shuffles would collide (p > 0.7).
    engine, study_id = open_test_study(db_url, run, pairs=4)
    for _ in range(24):
        service.start_evaluator(engine, study_id)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(Assignment.evaluator_id, Assignment.pair_id).order_by(
                Assignment.evaluator_id, Assignment.position
            )
        ).all()
    orders: dict[int, list[int]] = {}
    for evaluator_id, pair_id in rows:
        orders.setdefault(evaluator_id, []).append(pair_id)
    assert len(orders) == 24 and len({tuple(o) for o in orders.values()}) == 24


def test_blind_pages_and_one_participation(db_url: str, run: Path):
    engine, study_id = open_test_study(db_url, run, pairs=3)
    client = TestClient(create_app(engine, study_id, ADMIN))
    csrf = begin(client)
    page = client.get("/pair").text
    assert "1 / 3" in page and "baseline" not in page and "pladis" not in page and "0000" not in page
    for side in ("left", "right"):
        response = client.get(f"/img/{field(page, 'pair')}/{side}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert b"tEXt" not in response.content
    assert client.post("/start", data={"csrf": csrf}).url.path == "/pair"  # second start continues
    assert count(engine, Evaluator) == 1
    for _ in range(3):
        key = field(client.get("/pair").text, "pair")
        assert (
            client.post(
                "/vote", data={"csrf": csrf, "pair": key, "q_quality": "left", "q_alignment": "right"}
            ).status_code
            == 200
        )
    assert client.get("/pair").url.path == "/thanks"
    assert client.get("/").url.path == "/thanks"
    assert client.post("/start", data={"csrf": csrf}).url.path == "/thanks"
    assert count(engine, Evaluator) == 1 and count(engine, Vote) == 6
    # A returning evaluator on another device uses the personal link.
    token = client.cookies[EVALUATOR_COOKIE]
    other = TestClient(create_app(engine, study_id, ADMIN))
    assert other.get(f"/e/{token}").url.path == "/thanks"
    assert other.get("/e/forged-token-000").status_code == 403


def test_vote_validation_stores_nothing_bad(db_url: str, run: Path):
    engine, study_id = open_test_study(db_url, run, pairs=3, allow_tie=False)
    client, rival = TestClient(create_app(engine, study_id, ADMIN)), TestClient(create_app(engine, study_id, ADMIN))
    csrf, rival_csrf = begin(client), begin(rival)
    key = field(client.get("/pair").text, "pair")
    rival_key = field(rival.get("/pair").text, "pair")
    good = {"csrf": csrf, "pair": key, "q_quality": "left", "q_alignment": "right"}

    def post(data, c=client):
        return c.post("/vote", data=data).status_code

    assert post({**good, "q_quality": "none"}) == 400  # forced choice: no "none"
    assert post({**good, "q_quality": "up"}) == 400
    assert post({k: v for k, v in good.items() if k != "q_alignment"}) == 400
    assert post({**good, "pair": rival_key}) == 400  # another evaluator's pair
    assert post({**good, "pair": "made-up-key"}) == 400
    with engine.connect() as connection:
        evaluator = connection.execute(sa.select(Evaluator.id).order_by(Evaluator.id)).scalars().first()
        future = connection.execute(
            sa.select(Assignment.key).where(Assignment.evaluator_id == evaluator, Assignment.position == 3)
        ).scalar_one()
    assert post({**good, "pair": future}) == 409  # not shown yet
    assert post({**good, "csrf": "wrong-csrf-token-000000000"}) == 403
    assert client.post("/vote", data=good, headers={"origin": "https://evil.example"}).status_code == 403
    forged = TestClient(create_app(engine, study_id, ADMIN))
    forged.cookies.set(EVALUATOR_COOKIE, "forged" * 7)
    forged.cookies.set(CSRF_COOKIE, csrf)
    assert post(good, forged) == 403 and forged.get("/pair").status_code == 403
    assert count(engine, Vote) == 0
    assert post(good) == 200 and post(good) == 200  # double click / replay: one vote per question
    assert count(engine, Vote) == 2
    assert post({**good, "q_quality": "right"}) == 200 and count(engine, Vote) == 2  # a replay cannot change it
    rival_vote = {"csrf": rival_csrf, "pair": rival_key, "q_quality": "left", "q_alignment": "left"}
    assert post(rival_vote, rival) == 200
    assert count(engine, Vote) == 4


def test_paths_admin_and_sizes(db_url: str, run: Path):
    engine, study_id = open_test_study(db_url, run)
    client = TestClient(create_app(engine, study_id, ADMIN))
    csrf = begin(client)
    key = field(client.get("/pair").text, "pair")
    for path in [
        f"/img/{key}/../../../../etc/passwd",
        f"/img/{key}/a",
        "/img/..%2f..%2fetc%2fpasswd/left",
        "/img/%2e%2e/%2e%2e",
        "/static/../db.py",
        "/static/%2e%2e/db.py",
        "/static/",
        "/images/baseline/0000.png",
        "/study.sqlite",
    ]:
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"import" not in response.content and b"root:" not in response.content
    stranger = TestClient(create_app(engine, study_id, ADMIN))
    assert stranger.get(f"/img/{key}/left").status_code == 404  # images only for their own evaluator
    assert client.get("/static/study.css").status_code == 200
    big = {"csrf": csrf, "pair": key, "q_quality": "left", "q_alignment": "left", "pad": "x" * 20_000}
    assert client.post("/vote", data=big).status_code == 413
    assert count(engine, Vote) == 0
    headers = client.get("/pair").headers
    assert "default-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    assert client.get("/results").status_code == 403
    assert client.get("/results?token=" + ADMIN[:-1] + "x").status_code == 403
    assert client.get("/results/votes.csv?token=nope").status_code == 403
    client.post("/vote", data={"csrf": csrf, "pair": key, "q_quality": "right", "q_alignment": "none"})
    page = client.get("/results?token=" + ADMIN)
    assert page.status_code == 200 and "data:image/png;base64," in page.text
    votes = client.get("/results/votes.csv", headers={"authorization": f"Bearer {ADMIN}"}).text.splitlines()
    assert len(votes) == 3 and votes[0].startswith("evaluator,position,sample_id")


def test_results_counts_b_wins_through_the_side_mapping(db_url: str, run: Path):
    """Votes are clicks on sides; the summary must turn them into A/B through each pair's randomised sides."""
    engine, study_id = open_test_study(db_url, run, pairs=4)
    for _ in range(3):
        client = TestClient(create_app(engine, study_id, ADMIN))
        csrf = begin(client)
        for _ in range(4):
            key = field(client.get("/pair").text, "pair")
            with engine.connect() as connection:
                a_on_left = connection.execute(
                    sa.select(Assignment.a_on_left).where(Assignment.key == key)
                ).scalar_one()
            b_side = "right" if a_on_left else "left"
            client.post("/vote", data={"csrf": csrf, "pair": key, "q_quality": b_side, "q_alignment": "none"})
    summary = summarise(engine, study_id)
    quality, alignment = summary.overall("quality"), summary.overall("alignment")
    assert (quality.wins_b, quality.wins_a, quality.ties) == (12, 0, 0)
    assert (alignment.wins_b, alignment.wins_a, alignment.ties) == (0, 0, 12)
    assert quality.p_value == pytest.approx(2 * 0.5**12)
    assert {r.category for r in summary.rows} == {None, "single object", "two objects"}
    assert summary.evaluators == 3 and summary.finished == 3


# ---------------------------------------------------------------- CLI and a killed server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(run: Path, url: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "pladis.study", "serve", str(run), "--a", "baseline", "--b", "pladis"]
    command += ["--db", url, "--port", str(port), "--pairs", "3", "--admin-token", ADMIN]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stdout.read().decode() if process.stdout else "server exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("server did not start in 60 s")


def test_sigkill_loses_no_vote(db_url: str, run: Path):
    httpx = pytest.importorskip("httpx")
    port = free_port()
    server = start_server(run, db_url, port)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, follow_redirects=True, timeout=30) as client:
            csrf = field(client.get("/").text, "csrf")
            client.post("/start", data={"csrf": csrf})
            key = field(client.get("/pair").text, "pair")
            after = client.post("/vote", data={"csrf": csrf, "pair": key, "q_quality": "left", "q_alignment": "right"})
            assert "2 / 3" in after.text
            server.send_signal(signal.SIGKILL)
            server.wait(30)
            server = start_server(run, db_url, port)
            page = client.get("/pair")  # the same evaluator continues at pair 2 after the restart
            assert "2 / 3" in page.text and field(page.text, "pair") != key
            votes = client.get("/results/votes.csv", params={"token": ADMIN}).text.splitlines()
            assert len(votes) == 3 and all(",1,1," not in line or "left" in line or "right" in line for line in votes)
    finally:
        server.kill()
        server.wait(30)


def test_cli_results_and_errors(run: Path, tmp_path: Path):
    url = sqlite_url(tmp_path / "cli.sqlite")
    engine, study_id = open_test_study(url, run, name=f"{run.resolve().name}:baseline-vs-pladis")
    client = TestClient(create_app(engine, study_id, ADMIN))
    csrf = begin(client)
    key = field(client.get("/pair").text, "pair")
    client.post("/vote", data={"csrf": csrf, "pair": key, "q_quality": "left", "q_alignment": "left"})
    runner = CliRunner(env={"COLUMNS": "200"})
    out = tmp_path / "out"
    result = runner.invoke(
        study_app, ["results", str(run), "--a", "baseline", "--b", "pladis", "--db", url, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "quality" in result.output and "alignment" in result.output
    assert (out / "preference.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "summary.csv").read_text().splitlines()[0].startswith("question,category,votes,wins_b")
    assert len((out / "votes.csv").read_text().splitlines()) == 3
    bad = runner.invoke(study_app, ["serve", str(run), "--a", "baseline"])
    assert bad.exit_code == 2 and "--b CONFIG" in bad.output
    bad = runner.invoke(study_app, ["serve", str(run), "--a", "baseline", "--b", "nope", "--db", url])
    assert bad.exit_code == 2 and "config 'nope' not in" in bad.output
    bad = runner.invoke(study_app, ["serve", str(run), "--a", "baseline", "--b", "pladis", "--questions", "beauty"])
    assert bad.exit_code == 2 and "unknown question(s) beauty" in bad.output
    # Same study name, different options: refused with a clear line, nothing changed.
    bad = runner.invoke(study_app, ["serve", str(run), "--a", "baseline", "--b", "pladis", "--db", url, "--pairs", "5"])
    assert bad.exit_code == 1 and "already holds study" in bad.output
    bad = runner.invoke(
        study_app, ["results", str(run), "--a", "baseline", "--b", "pladis", "--db", url, "--study", "x"]
    )
    assert bad.exit_code == 1 and "no study 'x'" in bad.output
