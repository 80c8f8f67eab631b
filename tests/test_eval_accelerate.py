"""pladis eval: two `accelerate launch` CPU processes give the same files and scores as one process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from eval_helpers import DEMO_ARGS, _env, _files, _reference

pytestmark = pytest.mark.usefixtures("eager_one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_accelerate_processes_match_one(tmp_path):
    ref_run = _reference(tmp_path)
    from pladis.evaluation.score import ScoreOptions, score_run

    score_run(ScoreOptions(run=ref_run, metrics=["alignment"], device="cpu"), show_progress=False, echo=lambda m: None)
    run = tmp_path / "two"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(_free_port()), "-m", "pladis.cli", "eval"]
    gen = subprocess.run(
        [*launch, "generate", *DEMO_ARGS, "--out", str(run)], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert _files(run) == _files(ref_run)
    launch[launch.index("--main_process_port") + 1] = str(_free_port())
    score = subprocess.run(
        [*launch, "score", str(run), "--metrics", "alignment", "--device", "cpu", "--batch-size", "5"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert score.returncode == 0, score.stderr[-3000:]
    two = json.loads((run / "scores" / "alignment.json").read_text())["entries"]
    one = json.loads((ref_run / "scores" / "alignment.json").read_text())["entries"]
    assert two == one and len(two) == 16 and not list((run / "scores").glob("*.rank*"))
