"""Train the demo model on procedurally generated scenes (CPU or CUDA), reproducibly, resumably and crash-safely.

Every step's batch, caption dropout and noise come from generators seeded by ``(seed, step)``, so a run is a
pure function of its arguments (up to GPU kernel nondeterminism) and resuming from a checkpoint continues
the same stream. Layouts and captions are sampled on the CPU (no device sync), pixels are rendered on the
training device.

A run folder holds ``ckpt.safetensors`` (model, EMA and optimiser tensors; step, options and optimiser scalars
as JSON in its header; never a pickle), ``loss_log.csv`` and, at the end, the EMA weights as safetensors
(``weights/``, what ships in ``pladis/weights``) and ``train_summary.json``. The checkpoint is replaced
atomically at the start, every ``save_every`` steps, every ``save_minutes`` minutes, on SIGINT/SIGTERM and at
the end, so a kill at any moment loses at most the steps since the last save; on resume the loss log is cut
back to the checkpoint's step, so every step appears in it once.

When ``steps`` is not given, the run times its first steps and picks the number of steps that fits
``max_minutes``; the chosen number is recorded (in the checkpoint and the exported config), so passing
it as ``steps`` reproduces the run.

A latent model (a config with ``"vae"``) trains in two phases, as SD's parts were: first the autoencoder
(``ae_steps`` steps of edge-weighted L1 + MSE reconstruction with a tiny KL term, its own log
``ae_loss_log.csv``), then its latent scale is measured and it is frozen, and the UNet and text encoder train on
its latents. Both phases resume from the same checkpoint. The UNet phase exports its EMA weights at 10 %, 30 % and
100 % of its steps to ``checkpoints/step_NNNNNN/`` (for studies across training), and the final ones to
``weights/``.

Training data never shows a held-out composition (``scenes.sample_layout(split="train")``).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import files
from .model import (
    build_models,
    build_vae,
    default_config,
    encode_latents,
    latent_shape,
    save_weights,
    train_scheduler,
)
from .scenes import layout_specs, render, sample_layout
from .text import fast_ids

CKPT_FILE = "ckpt.safetensors"
LEGACY_CKPT_FILE = "ckpt.pt"  # torch.save checkpoints of pladis <= 0.1; read with weights_only=True only
LOG_FILE = "loss_log.csv"
AE_LOG_FILE = "ae_loss_log.csv"
MILESTONES_DIR = "checkpoints"
MILESTONE_FRACTIONS = (0.1, 0.3, 1.0)
AE_SHARE = 0.2  # default fraction of the time budget (or of the UNet steps, when given) for the autoencoder phase
AE_KL_WEIGHT = 1e-6
AE_EDGE_WEIGHT = 8.0
SUMMARY_FILE = "train_summary.json"
LOG_HEADER = ["step", "images", "loss", "lr", "elapsed_s", "images_per_s"]
CKPT_FORMAT = "pladis-demo-train/1"
SEED_LIMIT = 2**63  # torch.manual_seed accepts 0 <= seed < 2**64; per-step seeds are taken mod 2**63
MODULES = ("unet", "text", "ema_unet", "ema_text", "vae")
DEFAULTS = dict(batch_size=256, lr=1e-3, seed=0)


class TrainOptionError(ValueError):
    """A training option is invalid or contradicts the checkpoint being resumed (the CLI exits with 2)."""


class CheckpointError(RuntimeError):
    """The checkpoint cannot be resumed safely (unreadable, corrupt or a pickle that could run code)."""


def check_options(
    steps: int | None = None,
    max_minutes: float = 10.0,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    log_every: int = 50,
    save_every: int = 1000,
    save_minutes: float = 5.0,
) -> None:
    """Raise :class:`TrainOptionError` naming the option and a valid value; cheap, before any model is built."""
    if steps is not None and steps < 0:
        raise TrainOptionError(
            f"--steps {steps}: give 0 or more training steps (or leave it out to fill --max-minutes)"
        )
    if not (math.isfinite(max_minutes) and max_minutes > 0):
        raise TrainOptionError(f"--max-minutes {max_minutes}: give a positive, finite wall-clock budget, e.g. 10")
    if batch_size is not None and batch_size < 1:
        raise TrainOptionError(f"--batch-size {batch_size}: give at least 1 image per step, e.g. 256")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise TrainOptionError(f"--lr {lr}: give a positive, finite learning rate, e.g. 1e-3")
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise TrainOptionError(f"--seed {seed}: give a seed from 0 to 2**63-1 ({SEED_LIMIT - 1})")
    if log_every < 1:
        raise TrainOptionError(f"--log-every {log_every}: give a positive number of steps, e.g. 50")
    if save_every < 0:
        raise TrainOptionError(f"--save-every {save_every}: give a number of steps (0 = only by time and at the end)")
    if not (math.isfinite(save_minutes) and save_minutes > 0):
        raise TrainOptionError(f"--save-minutes {save_minutes}: give a positive number of minutes, e.g. 5")


def step_seed(seed: int, step: int) -> int:
    """The seed of one step's data and noise (unchanged for small seeds; never overflows torch's generator)."""
    return (seed * 1_000_003 + step) % SEED_LIMIT


def _mover(device):
    cuda = torch.device(device).type == "cuda"

    def mv(x):  # pinned + non_blocking: the host never waits for the GPU
        return x.pin_memory().to(device, non_blocking=True) if cuda else x.to(device)

    return mv


def _batch(step: int, seed: int, batch: int, device, p_uncond: float, shape=(12, 16, 16), vocab_size=None):
    """One step's images in [-1, 1] (training split only), caption ids, noise of the latents' ``shape``, timesteps."""
    g = torch.Generator().manual_seed(step_seed(seed, step))
    lay = sample_layout(batch, g, split="train")
    caps = [s.caption() for s in layout_specs(lay)]
    drop = torch.rand(batch, generator=g) < p_uncond
    caps = ["" if d else c for c, d in zip(caps, drop.tolist())]
    ids = fast_ids(caps, vocab_size=vocab_size)
    noise = torch.randn(batch, *shape, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    mv = _mover(device)
    images = render({k: mv(v) for k, v in lay.items()}) * 2 - 1
    return images, mv(ids), mv(noise), mv(t)


AE_SEED_SALT = 0xAE  # the autoencoder's data stream differs from the UNet's


def _ae_batch(step: int, seed: int, batch: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(step_seed(seed ^ AE_SEED_SALT, step))
    lay = sample_layout(batch, g, split="train")
    mv = _mover(device)
    return render({k: mv(v) for k, v in lay.items()}) * 2 - 1


def edge_weights(images: torch.Tensor, weight: float = AE_EDGE_WEIGHT) -> torch.Tensor:
    """1 + ``weight`` on pixels within one pixel of an edge (a 3x3 neighbourhood spanning > 0.2 in any channel)."""
    spread = F.max_pool2d(images, 3, 1, 1) + F.max_pool2d(-images, 3, 1, 1)
    return 1 + weight * (spread.amax(1, keepdim=True) > 0.2).to(images.dtype)


def ae_loss(vae, images: torch.Tensor, sample_generator=None) -> torch.Tensor:
    """Edge-weighted L1 + MSE reconstruction of images in [-1, 1] through a sampled latent, plus a tiny KL term.

    Edges weigh more (as a perceptual loss would make them): plain L1 + MSE rounds the corners that tell a small
    square from a circle.
    """
    post = vae.encode(images).latent_dist
    rec = vae.decode(post.sample(generator=sample_generator)).sample
    w, err = edge_weights(images), rec - images
    return ((err.abs() + err * err) * w).mean() / w.mean() + AE_KL_WEIGHT * post.kl().mean()


@torch.no_grad()
def latent_scale(vae, seed: int, device, n: int = 256) -> float:
    """1 / the standard deviation of the encoder's latents on training images (SD's ``scaling_factor``)."""
    x = _ae_batch(10**9, seed, n, device)
    z = vae.encode(x).latent_dist.mode()
    return float(1.0 / z.float().std().clamp(min=1e-6))


def lr_at(step: int, total: int, base: float, warmup: int = 200, final_frac: float = 0.05) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p)))


# --- checkpoints: safetensors tensors + a JSON header, written atomically --------------------------------------


def save_checkpoint(path: str | Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer, state: dict):
    """Write modules' and optimiser's tensors with ``state`` (JSON-able) in one safetensors file, atomically."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
    opt_sd = opt.state_dict()
    opt_scalars: dict[str, Any] = {}
    for idx, param_state in opt_sd["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"opt/{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                opt_scalars[f"{idx}/{key}"] = value
    header = {"format": CKPT_FORMAT, "state": state, "param_groups": opt_sd["param_groups"], "opt_scalars": opt_scalars}
    data = save(tensors, metadata={"pladis": json.dumps(header, allow_nan=False)})
    files.atomic_write_bytes(path, data)


def _unreadable(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"cannot resume from {path}: {why}; move it away, or start over with --no-resume (which replaces it)"
    )


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and header of a checkpoint written by :func:`save_checkpoint`; nothing in it is ever executed."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get("pladis", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:
        raise _unreadable(path, f"not a readable safetensors checkpoint ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(header, dict) or header.get("format") != CKPT_FORMAT:
        raise _unreadable(path, f"not a pladis training checkpoint (expected format {CKPT_FORMAT})")
    return tensors, header


def _load_legacy(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A ``torch.save`` checkpoint of pladis <= 0.1, read with ``weights_only=True``: tensors and plain data only."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        tensors = {f"{name}/{k}": v for name in MODULES if name in ck for k, v in ck[name].items()}
        opt_sd = ck["opt"]
        opt_scalars = {}
        for idx, param_state in opt_sd["state"].items():
            for key, value in param_state.items():
                if torch.is_tensor(value):
                    tensors[f"opt/{idx}/{key}"] = value
                else:
                    opt_scalars[f"{idx}/{key}"] = value
        state = dict(
            step=int(ck["step"]),
            images_seen=int(ck["images_seen"]),
            total_steps=ck.get("total_steps"),
            args=dict(ck["args"]),
            config=json.loads(json.dumps(ck["config"], default=list)),
        )
    except Exception as e:
        why = " ".join(str(e).split())[:160]
        raise _unreadable(path, f"it is not a plain-tensor checkpoint, refusing to unpickle it ({why})") from None
    header = {"format": CKPT_FORMAT, "state": state, "param_groups": opt_sd["param_groups"], "opt_scalars": opt_scalars}
    return tensors, header


def _restore(tensors: dict[str, torch.Tensor], header: dict, modules: dict[str, torch.nn.Module], opt, path: Path):
    try:
        for name, module in modules.items():
            prefix = f"{name}/"
            module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("opt/"):
                _, idx, name = key.split("/", 2)
                state.setdefault(int(idx), {})[name] = value
        for key, value in header["opt_scalars"].items():
            idx, name = key.split("/", 1)
            state.setdefault(int(idx), {})[name] = value
        opt.load_state_dict({"state": state, "param_groups": header["param_groups"]})
    except Exception as e:
        raise _unreadable(path, f"it does not fit the model ({' '.join(str(e).split())[:120]})") from None


# --- the loss log: one header, each logged step once -----------------------------------------------------------


def _reset_log(path: Path, keep_through: int | None) -> None:
    """Rewrite the log atomically: the header and the rows up to step ``keep_through`` (none when ``None``)."""
    kept: list[list[str]] = []
    if keep_through is not None and path.exists():
        last = -1
        for row in csv.reader(io.StringIO(path.read_text(errors="replace"))):
            if len(row) != len(LOG_HEADER) or not row[0].isdigit():
                continue  # the header, or a line cut short by a kill
            step = int(row[0])
            if last < step <= keep_through:
                kept.append(row)
                last = step
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LOG_HEADER)
    writer.writerows(kept)
    files.atomic_write_text(path, buf.getvalue())


# --- signals: a flag the loop checks, so a Ctrl-C or SIGTERM ends with a checkpoint ------------------------------


class _StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals():
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield stop
        return
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _train_autoencoder(
    vae, opt, out: Path, step: int, total: int | None, seed: int, batch: int, lr: float, dev, stop,
    deadline: float, log_every: int, progress: bool, save, save_every: int, save_minutes: float,
) -> tuple[int, int | None, int | None]:  # fmt: skip
    """The autoencoder phase: returns (step, total, signal that stopped it or None). Fills ``deadline`` if no total."""
    vae.train()
    t0, calib_t0, step0, last_save = time.time(), None, step, time.time()
    loss_sum, loss_n = 0.0, 0
    with open(out / AE_LOG_FILE, "a", newline="") as log_f:
        logw = csv.writer(log_f, lineterminator="\n")
        while total is None or step < total:
            if stop.signum is not None:
                return step, total, stop.signum
            if total is None and step - step0 == 3:
                calib_t0 = time.time()
            if total is None and calib_t0 is not None and step - step0 == 13:
                rate = 10 / (time.time() - calib_t0)
                total = step + max(1, int(rate * max(0.0, deadline - time.time()) * 0.97))
                print(f"autoencoder: {rate:.2f} steps/s -> {total} steps")
            cur_lr = lr_at(step, total or 10**9, lr, warmup=50)
            for group in opt.param_groups:
                group["lr"] = cur_lr
            x = _ae_batch(step, seed, batch, dev)
            g = torch.Generator(device=x.device).manual_seed(step_seed(seed, step))
            loss = ae_loss(vae, x, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            loss_sum, loss_n, step = loss_sum + loss.item(), loss_n + 1, step + 1
            if step % log_every == 0 or step == total:
                run_s = time.time() - t0
                ips = (step - step0) * batch / max(run_s, 1e-9)
                logw.writerow(
                    [step, step * batch, f"{loss_sum / loss_n:.5f}", f"{cur_lr:.2e}", f"{run_s:.1f}", f"{ips:.0f}"]
                )
                log_f.flush()
                if progress:
                    print(f"autoencoder step {step}/{total} loss {loss_sum / loss_n:.4f} {ips:.0f} img/s", flush=True)
                loss_sum, loss_n = 0.0, 0
            if (save_every and step % save_every == 0) or time.time() - last_save > save_minutes * 60:
                save(step, total)
                last_save = time.time()
    return step, total, None


def train(
    out_dir: str | Path = "out/demo-train",
    steps: int | None = None,
    max_minutes: float = 10.0,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    bf16: bool | None = None,
    p_uncond: float = 0.1,
    ema_decay: float = 0.999,
    log_every: int = 50,
    save_every: int = 1000,
    save_minutes: float = 5.0,
    resume: bool = True,
    calibrate_steps: int = 30,
    export: bool = True,
    progress: bool = True,
    config: dict | None = None,
    ae_steps: int | None = None,
    ae_batch_size: int = 64,
    ae_lr: float = 2e-3,
    ae_share: float = AE_SHARE,
) -> dict:
    """Train (or resume) a run in ``out_dir``; returns its summary (``interrupted`` names a signal that stopped it).

    ``batch_size``, ``lr`` and ``seed`` default to the checkpoint's values when resuming (else 256, 1e-3, 0);
    giving one that differs from the checkpoint raises :class:`TrainOptionError`. ``config`` replaces
    :func:`~pladis.demo.model.default_config` for a fresh run (e.g. a tiny model for tests).
    ``ae_steps``: autoencoder steps of a latent model (default: ``ae_share`` of ``steps``, or of the time).
    """
    check_options(steps, max_minutes, batch_size, lr, seed, log_every, save_every, save_minutes)
    if ae_steps is not None and ae_steps < 0:
        raise TrainOptionError(f"--ae-steps {ae_steps}: give 0 or more autoencoder steps (or leave it out)")
    if ae_batch_size < 1:
        raise TrainOptionError(f"--ae-batch-size {ae_batch_size}: give at least 1 image per step, e.g. 64")
    if not 0 < ae_share < 1:
        raise TrainOptionError(
            f"--ae-share {ae_share}: give the autoencoder's fraction of the budget, in (0, 1), e.g. 0.2"
        )
    t_start = time.time()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TrainOptionError(f"--out {out}: that is a file; give a folder for the run")
    ckpt_path, legacy_path = out / CKPT_FILE, out / LEGACY_CKPT_FILE

    # read the checkpoint (cheap) before building anything, so bad options and bad files fail at once
    loaded = None
    if resume and ckpt_path.exists():
        loaded = (*load_checkpoint(ckpt_path), ckpt_path)
    elif resume and legacy_path.exists():
        loaded = (*_load_legacy(legacy_path), legacy_path)
    given = dict(batch_size=batch_size, lr=lr, seed=seed)
    if loaded is not None:
        ck_args = loaded[1]["state"]["args"]
        for key, value in given.items():
            if value is not None and value != ck_args[key]:
                option = "--" + key.replace("_", "-")
                raise TrainOptionError(
                    f"{option} {value} differs from {ck_args[key]} of the checkpoint in {out}: leave {option} out "
                    "to continue that run, or pass --no-resume to start a new one there"
                )
        settings = {key: ck_args[key] for key in given}
        cfg = loaded[1]["state"]["config"]
    else:
        settings = {key: DEFAULTS[key] if value is None else value for key, value in given.items()}
        cfg = copy.deepcopy(config) if config is not None else default_config()
    batch_size, lr, seed = int(settings["batch_size"]), float(settings["lr"]), int(settings["seed"])

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_bf16 = (dev.type == "cuda") if bf16 is None else bf16
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    unet, text = build_models(cfg)
    unet.to(dev).train()
    text.to(dev).train()
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = {
        "unet": copy.deepcopy(unet).eval().requires_grad_(False),
        "text": copy.deepcopy(text).eval().requires_grad_(False),
    }
    latent = "vae" in cfg
    vae = build_vae(cfg).to(dev)
    ae_opt = torch.optim.AdamW(list(vae.parameters()) or [torch.zeros(1)], lr=ae_lr, weight_decay=0.0)
    modules = {"unet": unet, "text": text, "ema_unet": ema["unet"], "ema_text": ema["text"], "vae": vae}
    sched = train_scheduler(cfg)
    ac = sched.alphas_cumprod.to(dev)
    lat_shape = latent_shape(cfg)
    vocab_size = int(cfg["text"]["vocab_size"])

    step, images_seen, total = 0, 0, steps
    elapsed_before, loss_sum, loss_n = 0.0, 0.0, 0
    phase, ae_step, ae_total = ("ae" if latent else "unet"), 0, ae_steps
    if loaded is not None:
        tensors, header, source = loaded
        st = header["state"]
        phase = st.get("phase", "unet")
        _restore(tensors, header, modules, ae_opt if phase == "ae" else opt, source)
        step, images_seen = int(st["step"]), int(st["images_seen"])
        total = steps if steps is not None else st.get("total_steps")
        ae_step = int(st.get("ae_step", 0))
        ae_total = ae_steps if ae_steps is not None else st.get("ae_total")
        elapsed_before = float(st.get("elapsed_s", 0.0))
        loss_sum, loss_n = float(st.get("loss_sum", 0.0)), int(st.get("loss_n", 0))
        del tensors
        print(f"resumed from {source} at step {step} ({images_seen} images, {phase} phase)")
    if latent and ae_total is None and steps is not None:
        ae_total = round(ae_share * steps)
    args = dict(
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        p_uncond=p_uncond,
        ema_decay=ema_decay,
        bf16=use_bf16,
        ae_batch_size=ae_batch_size,
        ae_lr=ae_lr,
    )
    log_path = out / LOG_FILE
    _reset_log(log_path, step if loaded is not None else None)
    if latent:
        _reset_log(out / AE_LOG_FILE, ae_step if loaded is not None else None)

    loss_acc = torch.zeros((), device=dev)
    t_loop = time.time()

    def save() -> None:
        state = dict(
            step=step,
            images_seen=images_seen,
            total_steps=total,
            args=args,
            config=cfg,
            elapsed_s=elapsed_before + time.time() - t_loop,
            loss_sum=loss_sum + float(loss_acc.item()),
            loss_n=loss_n,
            phase=phase,
            ae_step=ae_step,
            ae_total=ae_total,
        )
        save_checkpoint(ckpt_path, modules, ae_opt if phase == "ae" else opt, files.json_safe(state))

    if loaded is None:
        save()  # a fresh run replaces any older checkpoint at once, so the log and checkpoint always agree

    deadline = t_start + max_minutes * 60
    interrupted = None

    def save_ae(at: int, at_total: int | None) -> None:
        nonlocal ae_step, ae_total
        ae_step, ae_total = at, at_total
        save()

    if phase == "ae":
        with _stop_on_signals() as stop:
            ae_step, ae_total, interrupted = _train_autoencoder(
                vae, ae_opt, out, ae_step, ae_total, seed, ae_batch_size, ae_lr, dev, stop,
                t_start + ae_share * max_minutes * 60, log_every, progress, save_ae, save_every, save_minutes,
            )  # fmt: skip
        if interrupted is None:
            vae.eval().requires_grad_(False)
            cfg["vae"]["scaling_factor"] = latent_scale(vae, seed, dev)
            vae.register_to_config(scaling_factor=cfg["vae"]["scaling_factor"])
            phase = "unet"
        save()
        if interrupted is not None:
            name = signal.Signals(interrupted).name
            print(f"{name}: saved {ckpt_path} at autoencoder step {ae_step}; run the same command again to resume")
            return files.json_safe(dict(steps=step, ae_steps=ae_step, interrupted=name, **args))
    vae.eval().requires_grad_(False)
    milestones_done: set[int] = set()

    def export_milestone(at: int) -> None:
        folder = out / MILESTONES_DIR / f"step_{at:06d}"
        meta = dict(steps=at, total_steps=total, images_seen=images_seen, seed=seed, ae_steps=ae_step)
        save_weights(ema["unet"], ema["text"], cfg, folder, meta=meta, vae=vae if latent else None)
        milestones_done.add(at)

    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=step, desc="train-demo", unit="step", dynamic_ncols=True)
        except ImportError:
            pass

    last_loss = float("nan")
    step0 = step
    last_save = t_unet = time.time()  # the UNet's images/s leaves out the autoencoder phase before it
    calib_t0 = None
    with open(log_path, "a", newline="") as log_f, _stop_on_signals() as stop:
        logw = csv.writer(log_f, lineterminator="\n")
        while total is None or step < total:
            if stop.signum is not None:
                break
            if time.time() > deadline:
                print(f"time budget of {max_minutes} min reached at step {step}")
                break
            if total is None and step - step0 == 5:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                calib_t0 = time.time()
            if total is None and calib_t0 is not None and step - step0 == 5 + calibrate_steps:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                rate = calibrate_steps / (time.time() - calib_t0)
                left = max(0.0, deadline - time.time() - 20)  # keep time for saving/exporting
                total = step + max(1, int(rate * left * 0.97))
                print(f"calibrated: {rate:.2f} steps/s ({rate * batch_size:.0f} images/s) -> {total} steps in total")
                if bar is not None:
                    bar.total = total
            cur_lr = lr_at(step, total or 10**9, lr)
            for gparam in opt.param_groups:
                gparam["lr"] = cur_lr
            images, ids, noise, t = _batch(step, seed, batch_size, dev, p_uncond, lat_shape, vocab_size)
            with torch.no_grad():
                x0 = encode_latents(vae, images)
            a = ac[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            v_target = a.sqrt() * noise - (1 - a).sqrt() * x0
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                enc = text(ids).last_hidden_state
                pred = unet(xt, t, enc).sample
            loss = F.mse_loss(pred.float(), v_target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            d = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for m, e in ((unet, ema["unet"]), (text, ema["text"])):
                    torch._foreach_lerp_(list(e.parameters()), list(m.parameters()), 1 - d)
            loss_acc += loss.detach()
            loss_n += 1
            step += 1
            images_seen += batch_size
            if step % log_every == 0 or (total is not None and step == total):
                last_loss = (loss_sum + loss_acc.item()) / loss_n
                run_s = time.time() - t_loop
                ips = (step - step0) * batch_size / max(time.time() - t_unet, 1e-9)
                el = elapsed_before + run_s
                logw.writerow([step, images_seen, f"{last_loss:.5f}", f"{cur_lr:.2e}", f"{el:.1f}", f"{ips:.0f}"])
                log_f.flush()
                loss_acc.zero_()
                loss_sum, loss_n = 0.0, 0
                if bar is not None:
                    bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{ips:.0f}")
                elif progress:
                    print(f"step {step} loss {last_loss:.4f} lr {cur_lr:.2e} {ips:.0f} img/s")
            if bar is not None:
                bar.update(1)
            if total and step < total and step in {max(1, round(f * total)) for f in MILESTONE_FRACTIONS}:
                export_milestone(step)
            if (save_every and step % save_every == 0) or time.time() - last_save > save_minutes * 60:
                save()
                last_save = time.time()
        interrupted = stop.signum
        if bar is not None:
            bar.close()
        save()
    wall = time.time() - t_start
    meta = dict(
        steps=step,
        total_steps=total,
        images_seen=images_seen,
        ae_steps=ae_step,
        ae_images_seen=ae_step * ae_batch_size,
        final_loss=last_loss,
        wall_s=round(wall, 1),
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        **args,
    )
    if interrupted is not None:
        name = signal.Signals(interrupted).name
        print(f"{name}: saved {ckpt_path} at step {step}; run the same command again to resume")
        return files.json_safe({**meta, "interrupted": name})
    if export:
        save_weights(ema["unet"], ema["text"], cfg, out / "weights", meta=meta, vae=vae if latent else None)
        if step and step not in milestones_done:
            export_milestone(step)
    files.write_json(out / SUMMARY_FILE, meta)
    print(files.dumps(meta))
    return files.json_safe(meta)


# --- installing: never replace the shipped model by a worse one ---------------------------------------------------

VALIDATION_SEED = 2_718_281  # a data stream no training run with a small seed visits


@torch.no_grad()
def validation_loss(weights_dir: str | Path, n: int = 128, device: str = "cpu") -> float:
    """The v-prediction MSE of exported weights on a fixed batch (the same images, noise and timesteps every time)."""
    from .model import load_config, load_demo_pipeline

    cfg = load_config(weights_dir)
    pipe = load_demo_pipeline(weights_dir, device=device)
    ac = train_scheduler(cfg).alphas_cumprod.to(device)
    images, ids, noise, _ = _batch(0, VALIDATION_SEED, n, device, 0.0, latent_shape(cfg), cfg["text"]["vocab_size"])
    x0 = encode_latents(pipe.vae, images)
    t = torch.linspace(20, 980, n, device=device).round().long()  # every noise level, not a random few
    a = ac[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v_target = a.sqrt() * noise - (1 - a).sqrt() * x0
    pred = pipe.unet(xt, t, pipe.text_encoder(ids).last_hidden_state).sample
    return float(F.mse_loss(pred.float(), v_target))


class InstallRefused(RuntimeError):
    """Installing would replace the shipped model by an untrained or worse one (use ``force``)."""


def install_weights(src: str | Path, dst: str | Path, force: bool = False, device: str = "cpu") -> dict:
    """Copy exported weights from ``src`` over ``dst`` (atomically, mode 0644) unless they are worse.

    Refuses an untrained export (0 steps) and one whose :func:`validation_loss` is higher than that of the
    weights already in ``dst``, unless ``force``. Returns both losses (``None`` where not measured).
    """
    from .model import load_config, weight_files, weights_available

    src, dst = Path(src), Path(dst)
    if not weights_available(src):
        raise InstallRefused(f"no exported weights in {src}: the run did not finish; nothing installed")
    steps = load_config(src).get("meta", {}).get("steps")
    report: dict[str, Any] = {"new_loss": None, "old_loss": None, "forced": force}
    if not force:
        if not steps:
            raise InstallRefused(
                f"refusing to install an untrained model ({steps or 0} steps) over {dst}; "
                "train some steps, or pass --force to install it anyway"
            )
        if weights_available(dst):
            report["new_loss"], report["old_loss"] = (
                validation_loss(src, device=device),
                validation_loss(dst, device=device),
            )
            if report["new_loss"] > report["old_loss"]:
                raise InstallRefused(
                    f"the new model's validation loss {report['new_loss']:.4f} is worse than {report['old_loss']:.4f} "
                    f"of the weights in {dst}; not installed (train longer, or pass --force to install anyway)"
                )
    dst.mkdir(parents=True, exist_ok=True)
    for name in weight_files(src):  # the config last: it names what the tensors are
        files.atomic_copy(src / name, dst / name)
    return report


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--out", default="out/demo-train")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--save-minutes", type=float, default=5.0)
    p.add_argument("--ae-steps", type=int, default=None)
    p.add_argument("--ae-batch-size", type=int, default=64)
    p.add_argument("--ae-share", type=float, default=AE_SHARE)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        train(
            out_dir=a.out,
            steps=a.steps,
            max_minutes=a.max_minutes,
            batch_size=a.batch_size,
            lr=a.lr,
            seed=a.seed,
            device=a.device,
            resume=not a.no_resume,
            log_every=a.log_every,
            save_every=a.save_every,
            save_minutes=a.save_minutes,
            progress=not a.no_progress,
            ae_steps=a.ae_steps,
            ae_batch_size=a.ae_batch_size,
            ae_share=a.ae_share,
        )
    except (TrainOptionError, CheckpointError) as e:
        p.exit(2 if isinstance(e, TrainOptionError) else 1, f"error: {e}\n")


if __name__ == "__main__":
    main()
