"""Load on `pladis study`: N simulated evaluators vote concurrently over loopback against SQLite and PostgreSQL.

Each evaluator starts, then for every pair loads the page and posts its vote twice (a double click). Reported: p50 /
p95 / max latency of a vote POST (first submissions), and a check that every vote is stored exactly once. The
server is the real `python -m pladis.study serve` in a subprocess bound to 127.0.0.1.

    PYTHONPATH=src python benchmarks/bench_study_load.py [--evaluators 50] [--pairs 6]
PostgreSQL is used when it answers at PLADIS_STUDY_PG_URL (scripts/ci_services.sh starts it), skipped otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa

from pladis.study.fixture import make_demo_run

PG_URL = os.environ.get("PLADIS_STUDY_PG_URL", "postgresql+psycopg://pladis:pladis@127.0.0.1:5432/pladis_study")
ADMIN = "bench-admin-token-0123456789"


def field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]+)"', html)
    if not match:
        raise RuntimeError(f"no {name} field in page")
    return match.group(1)


def serve(run: Path, url: str, pairs: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "pladis.study", "serve", str(run), "--a", "baseline", "--b", "pladis"]
    command += ["--db", url, "--port", str(port), "--pairs", str(pairs), "--admin-token", ADMIN]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for _ in range(300):
        if server.poll() is not None:
            raise RuntimeError(server.stdout.read().decode() if server.stdout else "server exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("server did not start")


def evaluator(base: str, pairs: int, barrier: threading.Barrier, latencies: list[float], errors: list[str]) -> None:
    try:
        with httpx.Client(base_url=base, follow_redirects=True, timeout=60) as client:
            csrf = field(client.get("/").text, "csrf")
            barrier.wait(60)
            client.post("/start", data={"csrf": csrf}).raise_for_status()
            for _ in range(pairs):  # bounded: one iteration per assigned pair
                page = client.get("/pair")
                page.raise_for_status()
                vote = {"csrf": csrf, "pair": field(page.text, "pair"), "q_quality": "left", "q_alignment": "right"}
                started = time.perf_counter()
                response = client.post("/vote", data=vote, follow_redirects=False)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 303:
                    errors.append(f"vote answered {response.status_code}")
                if client.post("/vote", data=vote, follow_redirects=False).status_code != 303:  # double click
                    errors.append("duplicate vote not answered with a redirect")
            if client.get("/pair").url.path != "/thanks":
                errors.append("evaluator not finished after all pairs")
    except Exception as err:
        errors.append(f"{type(err).__name__}: {err}")


def bench(name: str, run: Path, url: str, evaluators: int, pairs: int) -> dict:
    server, base = serve(run, url, pairs)
    latencies: list[float] = []
    errors: list[str] = []
    barrier = threading.Barrier(evaluators)
    threads = [
        threading.Thread(target=evaluator, args=(base, pairs, barrier, latencies, errors)) for _ in range(evaluators)
    ]
    wall = time.perf_counter()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
    finally:
        wall = time.perf_counter() - wall
        server.terminate()
        server.wait(30)
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        votes = connection.execute(sa.text("select count(*) from study_votes")).scalar_one()
        distinct = connection.execute(
            sa.text("select count(*) from (select distinct assignment_id, question from study_votes) d")
        ).scalar_one()
        finished = connection.execute(
            sa.text("select count(*) from study_evaluators where finished_at is not null")
        ).scalar_one()
    engine.dispose()
    expected = evaluators * pairs * 2
    latencies.sort()
    return {
        "backend": name,
        "votes": votes,
        "expected": expected,
        "exactly_once": votes == distinct == expected,
        "finished": finished,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "max_ms": 1000 * latencies[-1],
        "votes_per_s": len(latencies) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluators", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="pladis-study-bench-"))
    run = make_demo_run(folder / "run", samples=24)
    results = [bench("sqlite", run, f"sqlite:///{folder / 'study.sqlite'}", args.evaluators, args.pairs)]
    try:
        admin = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with admin.begin() as connection:
            connection.execute(sa.text(f"create schema {schema}"))
    except Exception as err:
        print(f"postgresql: skipped ({str(err).splitlines()[0]}); run `bash scripts/ci_services.sh`")
    else:
        try:
            url = f"{PG_URL}?options=-csearch_path%3D{schema}"
            results.append(bench("postgresql", run, url, args.evaluators, args.pairs))
        finally:
            with admin.begin() as connection:
                connection.execute(sa.text(f"drop schema {schema} cascade"))
    print(f"{args.evaluators} evaluators x {args.pairs} pairs x 2 questions, each vote posted twice, 127.0.0.1")
    print(
        f"{'backend':<11} {'stored':>9} {'once':>5} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'votes/s':>8}"
    )
    for r in results:
        print(
            f"{r['backend']:<11} {r['votes']:>4}/{r['expected']:<4} {'yes' if r['exactly_once'] else 'NO':>5} "
            f"{r['errors']:>6} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['max_ms']:>8.1f} {r['votes_per_s']:>8.1f}"
        )
        if r["first_error"]:
            print(f"  first error: {r['first_error']}")
    if len(results) == 2:
        print(f"p95 ratio postgresql / sqlite: {results[1]['p95_ms'] / results[0]['p95_ms']:.2f}")


if __name__ == "__main__":
    main()
