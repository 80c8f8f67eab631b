"""Train the demo model on procedurally generated scenes (CPU or CUDA), reproducibly and resumably.

Every step's batch, caption dropout and noise come from generators seeded by ``(seed, step)``, so a run is a
pure function of its arguments (up to GPU kernel nondeterminism) and resuming from a checkpoint continues
the same stream. Layouts and captions are sampled on the CPU (no device sync), pixels are rendered on the
training device. Writes ``<out>/ckpt.pt`` (model, EMA, optimiser, step), ``<out>/loss_log.csv`` and, at the end,
the EMA weights as safetensors (``<out>/weights/``), which is what ships in ``pladis/weights``.

When ``steps`` is not given, the run times its first steps and picks the number of steps that fits
``max_minutes``; the chosen number is recorded (in the checkpoint and the exported config), so passing
it as ``steps`` reproduces the run.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .model import build_models, default_config, save_weights, to_latents, train_scheduler
from .scenes import layout_specs, render, sample_layout
from .text import fast_ids


def _batch(step: int, seed: int, batch: int, device, p_uncond: float):
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    lay = sample_layout(batch, g)
    caps = [s.caption() for s in layout_specs(lay)]
    drop = torch.rand(batch, generator=g) < p_uncond
    caps = ["" if d else c for c, d in zip(caps, drop.tolist())]
    ids = fast_ids(caps)
    noise = torch.randn(batch, 12, 16, 16, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    cuda = torch.device(device).type == "cuda"

    def mv(x):  # pinned + non_blocking: the host never waits for the GPU
        return x.pin_memory().to(device, non_blocking=True) if cuda else x.to(device)

    lay_dev = {k: mv(v) for k, v in lay.items()}
    x0 = to_latents(render(lay_dev))
    return x0, mv(ids), mv(noise), mv(t)


def lr_at(step: int, total: int, base: float, warmup: int = 200, final_frac: float = 0.05) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def train(
    out_dir: str = "out/demo-train",
    steps: int | None = None,
    max_minutes: float = 10.0,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | None = None,
    bf16: bool | None = None,
    p_uncond: float = 0.1,
    ema_decay: float = 0.999,
    log_every: int = 50,
    save_every: int = 1000,
    resume: bool = True,
    calibrate_steps: int = 30,
    export: bool = True,
    progress: bool = True,
) -> dict:
    t_start = time.time()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_bf16 = (dev.type == "cuda") if bf16 is None else bf16
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"

    torch.manual_seed(seed)
    cfg = default_config()
    unet, text = build_models(cfg)
    unet.to(dev).train()
    text.to(dev).train()
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = {
        "unet": copy.deepcopy(unet).eval().requires_grad_(False),
        "text": copy.deepcopy(text).eval().requires_grad_(False),
    }
    sched = train_scheduler(cfg)
    ac = sched.alphas_cumprod.to(dev)

    step, images_seen, total = 0, 0, steps
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=dev, weights_only=False)
        unet.load_state_dict(ck["unet"])
        text.load_state_dict(ck["text"])
        ema["unet"].load_state_dict(ck["ema_unet"])
        ema["text"].load_state_dict(ck["ema_text"])
        opt.load_state_dict(ck["opt"])
        step, images_seen = ck["step"], ck["images_seen"]
        total = steps or ck.get("total_steps")
        seed, batch_size = ck["args"]["seed"], ck["args"]["batch_size"]
        print(f"resumed from {ckpt_path} at step {step} ({images_seen} images)")
    args = dict(seed=seed, batch_size=batch_size, lr=lr, p_uncond=p_uncond, ema_decay=ema_decay, bf16=use_bf16)

    def save(final=False):
        torch.save(
            dict(
                unet=unet.state_dict(),
                text=text.state_dict(),
                ema_unet=ema["unet"].state_dict(),
                ema_text=ema["text"].state_dict(),
                opt=opt.state_dict(),
                step=step,
                images_seen=images_seen,
                total_steps=total,
                args=args,
                config=cfg,
            ),
            ckpt_path,
        )

    log_f = open(out / "loss_log.csv", "a", newline="")  # noqa: SIM115
    logw = csv.writer(log_f)
    if step == 0:
        logw.writerow(["step", "images", "loss", "lr", "elapsed_s", "images_per_s"])
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=step, desc="train-demo", unit="step", dynamic_ncols=True)
        except ImportError:
            pass

    loss_acc = torch.zeros((), device=dev)
    n_acc = 0
    last_loss = float("nan")
    t_loop = time.time()
    step0 = step
    deadline = t_start + max_minutes * 60 if max_minutes else float("inf")
    calib_t0 = None
    while total is None or step < total:
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
            left = deadline - time.time() - 20  # keep time for saving/exporting
            total = step + max(1, int(rate * left * 0.97))
            print(f"calibrated: {rate:.2f} steps/s ({rate * batch_size:.0f} images/s) -> {total} steps in total")
            if bar is not None:
                bar.total = total
        cur_lr = lr_at(step, total or 10**9, lr)
        for gparam in opt.param_groups:
            gparam["lr"] = cur_lr
        x0, ids, noise, t = _batch(step, seed, batch_size, dev, p_uncond)
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
        n_acc += 1
        step += 1
        images_seen += batch_size
        if step % log_every == 0 or (total is not None and step == total):
            last_loss = (loss_acc / n_acc).item()
            el = time.time() - t_loop
            ips = (step - step0) * batch_size / max(el, 1e-9)
            logw.writerow([step, images_seen, f"{last_loss:.5f}", f"{cur_lr:.2e}", f"{el:.1f}", f"{ips:.0f}"])
            log_f.flush()
            loss_acc.zero_()
            n_acc = 0
            if bar is not None:
                bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{ips:.0f}")
            elif not progress:
                pass
            else:
                print(f"step {step} loss {last_loss:.4f} lr {cur_lr:.2e} {ips:.0f} img/s")
        if bar is not None:
            bar.update(1)
        if save_every and step % save_every == 0:
            save()
    if bar is not None:
        bar.close()
    save()
    log_f.close()
    wall = time.time() - t_start
    meta = dict(
        steps=step,
        total_steps=total,
        images_seen=images_seen,
        final_loss=last_loss,
        wall_s=round(wall, 1),
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        **args,
    )
    if export:
        save_weights(ema["unet"], ema["text"], cfg, out / "weights", meta=meta)
    (out / "train_summary.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta))
    return meta


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/demo-train")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
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
        progress=not a.no_progress,
    )


if __name__ == "__main__":
    main()
