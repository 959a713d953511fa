"""Train a class-conditional DDPM of the digits with classifier-free guidance (label dropout).

The conditional counterpart of :mod:`benchmarks.train_digits` (the unconditional DDPM): same
data split, network body, noise schedule, optimiser, learning-rate schedule and weight EMA
(imported from there); what differs is the class input.

* Model: diffusers ``UNet2DModel`` with ``num_class_embeds = 11``: classes 0..9 are the digits,
  class :data:`NULL_CLASS` = 10 is the learned "no label" embedding of classifier-free guidance
  (Ho & Salimans 2022). ``UNet2DModel`` adds the class embedding to the timestep embedding, so
  the null class is an ordinary row of the embedding table (which is what null-text-style
  optimisation in :mod:`benchmarks.guidance_roundtrip` tunes).
* Label dropout: each training label is replaced by the null class with probability
  ``--p-uncond`` (default 0.15), so one network learns both ε(x, t | c) and ε(x, t | ∅); the
  guided prediction is ``ε_∅ + w (ε_c − ε_∅)`` (:mod:`lmsolvers.adapters.guidance`).
* Noise schedule and loss: as the unconditional DDPM (linear β, 1000 steps, ε-MSE, t uniform).
* Learning rate: warm-up then cosine decay as :func:`benchmarks.train_digits.lr_at`; with
  ``--minutes`` the decay follows the larger of the step and the wall-clock fraction, so a run
  stopped by the budget has still annealed its learning rate (the machine is shared and the
  speed of a step is not known in advance).
* Output (``--out``, default ``models/digits_cond``): ``config.json`` +
  ``diffusion_pytorch_model.safetensors`` (EMA weights, float32), ``scheduler_config.json``,
  ``train_log.csv`` (loss) and ``train_summary.json``.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.train_digits_cond --steps 12000 --minutes 40
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel
from tqdm import tqdm

from .digits_data import REPO_ROOT, load_digits_split
from .train_digits import build_optimizer, build_scheduler, build_unet, ema_update, lr_at

#: Where the trained model is committed.
DEFAULT_OUT = REPO_ROOT / "models" / "digits_cond"
#: Number of digit classes, and the index of the learned null ("unconditional") class.
NUM_CLASSES = 10
NULL_CLASS = 10


def build_cond_unet() -> UNet2DModel:
    """Return the untrained conditional UNet: the DDPM's network plus an 11-row class table.

    The body is :func:`benchmarks.train_digits.build_unet`'s configuration (so the two models
    differ only in the class input); ``num_class_embeds = 11`` adds an ``nn.Embedding(11, 128)``
    whose output is summed with the timestep embedding in every ResNet block.
    """
    # Private keys (``_use_default_values`` in particular) would make ``from_config`` reset
    # ``num_class_embeds`` to its default, so the model is built from the public keys.
    config = {k: v for k, v in build_unet().config.items() if not k.startswith("_")}
    config["num_class_embeds"] = NUM_CLASSES + 1
    return UNet2DModel(**config)


def drop_labels(y: torch.Tensor, p_uncond: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by :data:`NULL_CLASS` with probability ``p_uncond`` (CFG training)."""
    drop = torch.rand(y.shape, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, NULL_CLASS), y)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=12000, help="optimiser steps (default 12000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=300, help="linear warm-up steps")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--p-uncond", type=float, default=0.15, help="label-dropout probability")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget (min)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest)")
    p.add_argument("--log-every", type=int, default=50, help="steps between CSV log rows")
    args = p.parse_args(argv)
    if not 0.0 < args.p_uncond < 1.0:
        p.error(f"--p-uncond must lie in (0, 1), got {args.p_uncond}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Train, then save the EMA UNet, the scheduler config, the loss log and a summary."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)

    x_train, y_train = load_digits_split("train")
    n = x_train.shape[0]

    scheduler = build_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float32)
    unet = build_cond_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"train images: {n}; conditional UNet parameters: {n_params:,}", flush=True)

    opt = build_optimizer(unet.parameters(), args.lr)
    gen = torch.Generator().manual_seed(args.seed)

    args.out.mkdir(parents=True, exist_ok=True)
    log_file = (args.out / "train_log.csv").open("w", newline="")
    writer = csv.writer(log_file)
    writer.writerow(["step", "loss", "loss_avg", "lr", "elapsed_s"])

    t0 = time.time()
    budget = 60.0 * args.minutes if args.minutes is not None else math.inf
    perm = torch.randperm(n, generator=gen)
    cursor = 0
    loss_avg = None
    step = 0
    pbar = tqdm(range(args.steps), desc="cond-ddpm", mininterval=10.0, file=sys.stdout)
    unet.train()
    for step in pbar:
        if cursor + args.batch_size > n:  # epoch-wise shuffling without replacement
            perm = torch.randperm(n, generator=gen)
            cursor = 0
        idx = perm[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        x0 = x_train[idx]
        labels = drop_labels(y_train[idx], args.p_uncond, gen)

        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1.0 - a).sqrt() * eps

        elapsed = time.time() - t0
        # Schedule position: the step fraction, or the wall-clock fraction if that is ahead.
        clock = int(args.steps * min(1.0, elapsed / budget)) if budget < math.inf else 0
        virtual = max(step, clock)
        lr = lr_at(virtual, args.steps, args.lr, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = torch.nn.functional.mse_loss(unet(xt, t, class_labels=labels).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema_update(ema, unet, min(args.ema_decay, (1.0 + step) / (10.0 + step)))

        val = loss.item()
        loss_avg = val if loss_avg is None else 0.99 * loss_avg + 0.01 * val
        if step % args.log_every == 0 or step == args.steps - 1:
            writer.writerow(
                [step, f"{val:.6f}", f"{loss_avg:.6f}", f"{lr:.3e}", f"{time.time() - t0:.1f}"]
            )
            log_file.flush()
            pbar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{lr:.1e}")
        if time.time() - t0 > budget:
            print(f"\nbudget of {args.minutes} min reached at step {step + 1}", flush=True)
            break
    pbar.close()
    log_file.close()
    elapsed = time.time() - t0
    steps_done = step + 1

    ema.save_pretrained(args.out, safe_serialization=True)
    scheduler.save_pretrained(args.out)
    summary = {
        "steps": steps_done,
        "steps_planned": args.steps,
        "batch_size": args.batch_size,
        "peak_lr": args.lr,
        "ema_decay": args.ema_decay,
        "p_uncond": args.p_uncond,
        "null_class": NULL_CLASS,
        "seed": args.seed,
        "threads": args.threads,
        "minutes_budget": args.minutes,
        "elapsed_s": round(elapsed, 1),
        "final_loss_ema_avg": round(float(loss_avg), 6) if loss_avg is not None else None,
        "parameters": n_params,
        "train_images": n,
        "weights": "EMA",
    }
    (args.out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"saved EMA UNet to {args.out} after {steps_done} steps in {elapsed / 60:.1f} min; "
        f"smoothed loss {loss_avg:.4f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
