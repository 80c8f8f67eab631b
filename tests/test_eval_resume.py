"""pladis eval: killed with SIGKILL at random points and restarted, a run ends with exactly the images of an
uninterrupted run, each once, all valid."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import pytest

from eval_helpers import DEMO_ARGS, _env, _files, _reference

pytestmark = pytest.mark.usefixtures("eager_one_thread")


def test_resume_after_sigkill_at_random_points(tmp_path):
    ref = _files(_reference(tmp_path))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pladis.cli", "eval", "generate", *DEMO_ARGS, "--out", str(run)]
    rng = random.Random(int(time.time()))
    targets = sorted(rng.sample(range(0, 15), 3))
    for target in targets:  # kill once at least `target` images exist (0: during start-up or the first batch)
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if len(list(run.glob("images/*/*.png"))) >= target and (target or time.time() > deadline - 117):
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _files(run) == ref, f"kill points {targets}"
    assert not list(run.glob("images/*/.*"))
    assert json.loads((run / "manifest.json").read_text())["complete"]
