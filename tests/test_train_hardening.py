"""`pladis train-demo` under faults and bad input: no pickles, atomic saves, kills and resumes, guarded install.

Every run here trains a tiny model (``--config-file``) on one CPU thread for a few steps.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from image_helpers import load_image
from pladis import files
from pladis.cli import app
from pladis.demo import model
from pladis.demo import train as tr

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src"


def tiny_config() -> dict:
    cfg = model.default_config()
    cfg["vae"] = model.vae_config(widths=(8, 8, 8), groups=4)
    cfg["unet"].update(block_out_channels=(32, 32), attention_head_dim=2, cross_attention_dim=32)
    cfg["text"].update(
        hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1, num_attention_heads=2
    )
    return json.loads(json.dumps(cfg, default=list))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_config()))
    return path


def run_tiny(out: Path, steps: int, **kwargs) -> dict:
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("ae_batch_size", 4)
    return tr.train(out_dir=out, steps=steps, device="cpu", log_every=1, progress=False, config=tiny_config(), **kwargs)


def strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"{name} in {path}: not valid JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def log_steps(out: Path) -> tuple[list[str], list[int]]:
    lines = (out / tr.LOG_FILE).read_text().splitlines()
    return lines, [int(line.split(",")[0]) for line in lines if line[:1].isdigit()]


class Payload:
    """A pickle that, when loaded without ``weights_only``, creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


# 1. resuming never unpickles


@pytest.mark.parametrize("name", ["ckpt.pt", "ckpt.safetensors"])
def test_planted_pickle_is_refused_without_running(tmp_path, config_file, name):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    with open(out / name, "wb") as f:
        pickle.dump({"unet": Payload(marker)}, f)
    res = runner.invoke(app, ["train-demo", "--out", str(out), "--steps", "1", "--device", "cpu"])
    assert not marker.exists(), "the planted pickle ran"
    assert res.exit_code == 1, res.output
    assert "cannot resume" in res.output and "--no-resume" in res.output
    assert "Traceback" not in res.output


def test_legacy_plain_tensor_checkpoint_still_resumes(tmp_path):
    run_tiny(tmp_path, 1)
    tensors, header = tr.load_checkpoint(tmp_path / tr.CKPT_FILE)
    legacy = {
        name: {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + "/")} for name in tr.MODULES
    }
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("opt/"):
            _, idx, param_key = key.split("/", 2)
            state.setdefault(int(idx), {})[param_key] = value
    legacy["opt"] = {"state": state, "param_groups": header["param_groups"]}
    legacy.update({k: header["state"][k] for k in ("step", "images_seen", "total_steps", "args", "config")})
    (tmp_path / tr.CKPT_FILE).unlink()
    torch.save(legacy, tmp_path / tr.LEGACY_CKPT_FILE)
    meta = run_tiny(tmp_path, 2, batch_size=None)
    assert meta["steps"] == 2 and meta["images_seen"] == 8


# 2. checkpoints are replaced atomically


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run_tiny(tmp_path, 1)
    before = (tmp_path / tr.CKPT_FILE).read_bytes()
    real_write = pathlib.Path.write_bytes

    def crash_halfway(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError("No space left on device (simulated)")

    monkeypatch.setattr(pathlib.Path, "write_bytes", crash_halfway)
    with pytest.raises(OSError, match="simulated"):
        run_tiny(tmp_path, 3)
    monkeypatch.undo()
    assert (tmp_path / tr.CKPT_FILE).read_bytes() == before
    assert tr.load_checkpoint(tmp_path / tr.CKPT_FILE)[1]["state"]["step"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert run_tiny(tmp_path, 3)["steps"] == 3  # and the run goes on from it


# 3. kills and resumes lose no work; the log has each step once


def _start(out: Path, config_file: Path, steps: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from pladis.cli import main; main()", "train-demo", "--out", str(out)]
    cmd += ["--steps", str(steps), "--batch-size", "4", "--device", "cpu", "--log-every", "5"]
    cmd += ["--config-file", str(config_file), "--ae-batch-size", "4", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_row(proc: subprocess.Popen, out: Path, step: int, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (out / tr.LOG_FILE).exists() and max(log_steps(out)[1], default=0) >= step:
            return
        assert proc.poll() is None, f"the run ended before step {step}: {proc.communicate()[0][-2000:]}"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no log row for step {step} within {timeout}s")


def test_sigterm_sigkill_and_resume_leave_each_step_once(tmp_path, config_file):
    out, total = tmp_path / "run", 80
    proc = _start(out, config_file, total)
    _wait_for_row(proc, out, 15)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, text[-2000:]
    assert "SIGTERM: saved" in text
    saved = tr.load_checkpoint(out / tr.CKPT_FILE)[1]["state"]["step"]
    assert saved >= 15

    proc = _start(out, config_file, total)
    _wait_for_row(proc, out, saved + 15)
    proc.kill()  # SIGKILL: no chance to save; the log has rows past the checkpoint
    proc.wait()
    lines, steps = log_steps(out)
    killed_rows = {s: line for line, s in zip(lines[1:], steps) if s > saved}
    assert tr.load_checkpoint(out / tr.CKPT_FILE)[1]["state"]["step"] == saved and killed_rows

    meta = tr.train(out_dir=out, steps=total, device="cpu", log_every=5, progress=False)  # here: one start less
    assert meta["steps"] == total and meta["batch_size"] == 4
    lines, steps = log_steps(out)
    assert lines[0] == ",".join(tr.LOG_HEADER) and sum(line.startswith("step,") for line in lines) == 1
    assert steps == list(range(5, total + 1, 5))
    final = dict(zip(steps, lines[1:]))
    for s, line in killed_rows.items():  # the steps redone after the kill reproduce the lost rows' losses
        assert line.split(",")[:2] == final[s].split(",")[:2]
        assert math.isclose(float(line.split(",")[2]), float(final[s].split(",")[2]), rel_tol=1e-4)
    assert model.weights_available(out / "weights")
    assert strict_json(out / tr.SUMMARY_FILE)["steps"] == total


def test_ctrl_c_saves_and_returns(tmp_path, monkeypatch):
    real_batch = tr._batch

    def batch_then_ctrl_c(step, *args):
        if step == 2:
            signal.raise_signal(signal.SIGINT)  # as if Ctrl-C was pressed during step 2
        return real_batch(step, *args)

    monkeypatch.setattr(tr, "_batch", batch_then_ctrl_c)
    meta = run_tiny(tmp_path, 50)
    assert meta["interrupted"] == "SIGINT" and meta["steps"] == 3
    assert tr.load_checkpoint(tmp_path / tr.CKPT_FILE)[1]["state"]["step"] == 3
    assert log_steps(tmp_path)[1] == [1, 2, 3]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    old_umask = os.umask(0o077)
    try:
        files.atomic_write_text(tmp_path / "new.txt", "x")
        (tmp_path / "shared.txt").write_text("old")
        os.chmod(tmp_path / "shared.txt", 0o644)
        files.atomic_write_text(tmp_path / "shared.txt", "new")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o600  # 0644 less the umask 077
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "shared.txt").read_text() == "new"


def test_images_gifs_and_arrays_are_written_atomically_with_the_usual_mode(tmp_path):
    """Every writer goes through pladis.files: format from the real extension, 0644 less the umask, no leftovers."""
    import numpy as np
    from PIL import Image

    from pladis import compare, maps

    old_umask = os.umask(0o022)
    try:
        frame = Image.new("RGB", (8, 8), (200, 10, 10))
        compare.save_image(frame, tmp_path / "a.png", {"k": "v"})
        compare.save_image(frame, tmp_path / "b.jpg")
        compare.save_video([frame, frame], tmp_path / "c.gif")
        maps.save_npz(tmp_path / "d.npz", {"x": np.ones(3)})
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.jpg", "c.gif", "d.npz"]
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o644}
    assert [load_image(tmp_path / n).format for n in ("a.png", "b.jpg", "c.gif")] == ["PNG", "JPEG", "GIF"]
    with np.load(tmp_path / "d.npz") as npz:
        assert npz["x"].tolist() == [1.0, 1.0, 1.0]


def test_save_by_time_and_no_resume_starts_fresh(tmp_path):
    run_tiny(tmp_path, 3, save_every=0, save_minutes=1e-9)  # every step is past the interval
    assert tr.load_checkpoint(tmp_path / tr.CKPT_FILE)[1]["state"]["step"] == 3
    meta = run_tiny(tmp_path, 2, resume=False, batch_size=2, seed=5)
    assert meta["steps"] == 2 and meta["images_seen"] == 4
    lines, steps = log_steps(tmp_path)
    assert steps == [1, 2] and lines[0].startswith("step,") and len(lines) == 3
    assert tr.load_checkpoint(tmp_path / tr.CKPT_FILE)[1]["state"]["args"]["seed"] == 5


# 4. --install never replaces the shipped weights by an untrained or worse model


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    dst = tmp_path / "shipped"
    shutil.copytree(model.WEIGHTS_DIR, dst)
    monkeypatch.setattr(model, "WEIGHTS_DIR", dst)
    return dst


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(("steps", "why"), [(0, "untrained model"), (2, "is worse than")])
def test_install_refuses_untrained_or_worse(tmp_path, config_file, shipped, steps, why):
    before = _snapshot(shipped)
    args = ["train-demo", "--out", str(tmp_path / "run"), "--steps", str(steps), "--batch-size", "4"]
    res = runner.invoke(app, [*args, "--device", "cpu", "--config-file", str(config_file), "--install"])
    assert res.exit_code == 1, res.output
    assert why in res.output and "--force" in res.output
    assert _snapshot(shipped) == before


def test_install_with_force_writes_normal_modes(tmp_path, config_file, shipped):
    old_umask = os.umask(0o022)
    try:
        args = ["train-demo", "--out", str(tmp_path / "run"), "--steps", "0", "--device", "cpu"]
        res = runner.invoke(app, [*args, "--config-file", str(config_file), "--install", "--force"])
    finally:
        os.umask(old_umask)
    assert res.exit_code == 0, res.output
    installed = _snapshot(shipped)
    study = installed.pop("demo_study.json")  # the measured result stays; it names the weights it belongs to
    assert installed == _snapshot(tmp_path / "run" / "weights")
    assert study == (Path(model.__file__).resolve().parents[1] / "weights" / "demo_study.json").read_bytes()
    for p in shipped.iterdir():
        assert p.stat().st_mode & 0o777 == 0o644, (p, oct(p.stat().st_mode))
    assert model.load_demo_pipeline(shipped).unet.config.block_out_channels[0] == 32


# 13. bad options: one line, exit 2, before any work


BAD_TRAIN = [
    (["--seed", str(2**63)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--batch-size", "0"], "--batch-size"),
    (["--max-minutes", "0"], "--max-minutes"),
    (["--max-minutes", "inf"], "--max-minutes"),
    (["--steps", "-1"], "--steps"),
    (["--lr", "nan"], "--lr"),
    (["--log-every", "0"], "--log-every"),
    (["--save-minutes", "0"], "--save-minutes"),
    (["--device", "gpu0"], "--device"),
    (["--force"], "--force"),
    (["--ae-share", "0"], "--ae-share"),
    (["--ae-share", "1"], "--ae-share"),
]


@pytest.mark.parametrize(("args", "option"), BAD_TRAIN, ids=[" ".join(a) for a, _ in BAD_TRAIN])
def test_train_demo_rejects_bad_options_at_once(tmp_path, args, option):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train-demo", "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    assert option in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()


BAD_DEMO = [
    (["demo", "--steps", "0"], "--steps"),
    (["demo", "--samples", "0"], "--samples"),
    (["demo", "--seed", str(2**63)], "--seed"),
    (["demo", "--cfg", "nan"], "--cfg"),
    (["demo", "--device", "tpu"], "--device"),
    (["bench-alignment", "--n", "0"], "--n"),
    (["bench-alignment", "--steps", "0"], "--steps"),
    (["bench-alignment", "--batch-size", "0"], "--batch-size"),
    (["bench-alignment", "--seed", "-5"], "--seed"),
    (["bench-alignment", "--scales", ""], "--scales"),
    (["bench-alignment", "--cfg", "4,nan"], "--cfg"),
]


@pytest.mark.parametrize(("args", "option"), BAD_DEMO, ids=[" ".join(a) for a, _ in BAD_DEMO])
def test_demo_and_bench_reject_bad_options_at_once(tmp_path, monkeypatch, args, option):
    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(model, "load_demo_pipeline", no_model)
    out = tmp_path / ("grid.png" if args[0] == "demo" else "bench")
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert option in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("option", ["--batch-size", "--seed", "--lr"])
def test_resume_refuses_a_changed_setting(tmp_path, option):
    run_tiny(tmp_path, 1, batch_size=4, seed=3, lr=2e-3)
    value = {"--batch-size": "8", "--seed": "4", "--lr": "0.001"}[option]
    res = runner.invoke(app, ["train-demo", "--out", str(tmp_path), "--steps", "2", option, value])
    assert res.exit_code == 2, res.output
    assert "differs from" in res.output and "--no-resume" in res.output and option in res.output
    meta = run_tiny(tmp_path, 2, batch_size=None)  # left out: the checkpoint's settings win
    assert (meta["batch_size"], meta["seed"], meta["lr"]) == (4, 3, 2e-3) and meta["images_seen"] == 8


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_is_one_line(tmp_path, damage):
    run_tiny(tmp_path, 1)
    ckpt = tmp_path / tr.CKPT_FILE
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncate": data[: len(data) // 3], "garbage": os.urandom(4096), "empty": b""}[damage])
    res = runner.invoke(app, ["train-demo", "--out", str(tmp_path), "--steps", "2", "--device", "cpu"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "cannot resume" in res.output and "--no-resume" in res.output
    assert run_tiny(tmp_path, 1, resume=False)["steps"] == 1  # --no-resume replaces it


def test_summary_json_is_strict_when_loss_is_undefined(tmp_path):
    meta = run_tiny(tmp_path, 0)
    assert meta["final_loss"] is None
    assert strict_json(tmp_path / tr.SUMMARY_FILE)["final_loss"] is None
    assert strict_json(tmp_path / "weights" / model.CONFIG_FILE)["meta"]["final_loss"] is None
    assert files.dumps({"x": float("nan"), "y": [float("inf")]}) == '{"x": null, "y": [null]}'


def test_autoencoder_share_of_the_steps(tmp_path):
    assert run_tiny(tmp_path / "default", 5, export=False)["ae_steps"] == 1  # a fifth
    assert run_tiny(tmp_path / "share", 5, ae_share=0.6, export=False)["ae_steps"] == 3
    assert run_tiny(tmp_path / "given", 5, ae_share=0.6, ae_steps=2, export=False)["ae_steps"] == 2


def test_step_seeds_fit_torch_generators():
    for seed in (0, 7, 2**63 - 1):
        for step in (0, 10**6):
            torch.Generator().manual_seed(tr.step_seed(seed, step))
    assert tr.step_seed(3, 5) == 3 * 1_000_003 + 5  # small seeds keep the stream the shipped model saw
