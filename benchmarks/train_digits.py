"""Train a small epsilon-prediction DDPM (diffusers ``UNet2DModel``) on scikit-learn's digits.

The model is the test-bed of the exact-inversion benchmarks: a real (if tiny) diffusion model
whose probability-flow ODE can be integrated in float64 in seconds on a CPU.

* Data: the train split of :mod:`digits_data` (8x8, values in [-1, 1]); no augmentation
  (horizontal flips in particular would be wrong: digits are not flip-invariant).
* Noise schedule: ``DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
  beta_start=1e-4, beta_end=0.02)``; loss = MSE between true and predicted noise, timesteps
  uniform in 0..999.
* Optimiser: AdamW, linear warm-up then cosine decay; an exponential moving average (EMA) of
  the weights is kept and it is the EMA weights that are saved.
* Output (``--out``): ``config.json`` + ``diffusion_pytorch_model.safetensors`` (float32) and
  ``scheduler_config.json``, loadable offline with ``UNet2DModel.from_pretrained`` and
  ``DDPMScheduler.from_pretrained``; ``train_log.csv`` with the loss.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.train_digits --steps 15000 --minutes 50
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
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from tqdm import tqdm

from .digits_data import REPO_ROOT, RESOLUTION, load_digits_split, write_split


def build_unet() -> UNet2DModel:
    """Return the (untrained) UNet: 8x8 -> 4x4 -> 2x2, channels (32, 64, 64), ~1.06 M params.

    Three resolution levels is the most an 8x8 input allows with a sensible bottleneck; the
    default mid block of ``UNet2DModel`` adds self-attention at 2x2, which gives every pixel a
    global receptive field. One ResNet layer per level keeps the float32 weights under 5 MB
    and a training step (batch 128) at ~0.17 s on one CPU thread.
    """
    return UNet2DModel(
        sample_size=RESOLUTION,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=16,  # 32 groups of a 32-channel layer would normalise single channels
        attention_head_dim=32,
    )


def build_scheduler() -> DDPMScheduler:
    """Return the standard linear-beta DDPM schedule used for training.

    ``clip_sample=False`` because the benchmarks integrate the probability-flow ODE, which has
    no clipping; it does not affect training (the loss never clips).
    """
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="epsilon",
        clip_sample=False,
    )


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Learning rate at ``step``: linear warm-up to ``peak``, then cosine decay to 1% of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """In-place ``ema = decay * ema + (1 - decay) * model`` over parameters and buffers."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def build_optimizer(params, lr: float) -> torch.optim.AdamW:
    """Return the AdamW optimiser of the digits models (weight decay 1e-4, peak rate ``lr``)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Yield index batches forever: epoch-wise shuffling without replacement.

    Each epoch draws ``torch.randperm(n, generator=generator)`` (lazily, at the first batch of
    the epoch) and yields its consecutive ``batch_size`` slices; an incomplete tail is dropped,
    so each image is seen at most once per epoch.
    """
    perm = torch.randperm(n, generator=generator)
    cursor = 0
    while True:
        if cursor + batch_size > n:
            perm = torch.randperm(n, generator=generator)
            cursor = 0
        yield perm[cursor : cursor + batch_size]
        cursor += batch_size


def train_loop(
    unet: torch.nn.Module,
    scheduler,
    args: argparse.Namespace,
    loss_fn: Callable[[int], torch.Tensor],
    *,
    desc: str,
    n_train: int,
    extra_summary: dict | None = None,
    anneal_by_clock: bool = False,
) -> dict:
    """Train ``unet`` with the loop shared by the digits models; save the EMA model and a summary.

    Builds the optimiser (:func:`build_optimizer`, peak rate ``args.lr``) and the EMA copy of
    ``unet`` (before any step, so from the same initial weights), then
    per step ``k``: learning rate ``lr_at(k', steps, lr, warmup)`` where ``k' = k``, or with
    ``anneal_by_clock`` and a ``--minutes`` budget ``k' = max(k, ⌊steps · elapsed/budget⌋)``
    (so a run stopped by the clock has still annealed); ``loss = loss_fn(k)`` (which draws the
    batch and computes the model-specific loss); backward, gradient-norm clipping to 1, an
    AdamW step, and the EMA update with decay ``min(ema_decay, (1 + k)/(10 + k))``. A row
    ``step, loss, loss_avg, lr, elapsed_s`` goes to ``train_log.csv`` every ``log_every``
    steps (``loss_avg`` is the 0.99-smoothed loss); the loop stops after ``args.steps`` steps
    or when the wall-clock budget ``args.minutes`` is exceeded. Then the EMA model and
    ``scheduler`` are saved to ``args.out`` with ``train_summary.json`` (the common fields,
    then ``extra_summary``), which is also returned.

    ``args`` must carry ``steps, batch_size, lr, warmup, ema_decay, out, minutes, seed,
    threads, log_every`` (the three training scripts' common flags).
    """
    ema = copy.deepcopy(unet).requires_grad_(False)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"train images: {n_train}; {desc} UNet parameters: {n_params:,}", flush=True)
    opt = build_optimizer(unet.parameters(), args.lr)

    args.out.mkdir(parents=True, exist_ok=True)
    log_file = (args.out / "train_log.csv").open("w", newline="")
    writer = csv.writer(log_file)
    writer.writerow(["step", "loss", "loss_avg", "lr", "elapsed_s"])

    t0 = time.time()
    budget = 60.0 * args.minutes if args.minutes is not None else math.inf
    loss_avg = None
    step = 0
    stopped_by_clock = False
    pbar = tqdm(range(args.steps), desc=desc, mininterval=5.0, file=sys.stdout)
    unet.train()
    for step in pbar:
        virtual = step
        if anneal_by_clock and budget < math.inf:
            # Schedule position: the step fraction, or the wall-clock fraction if that is ahead.
            clock = int(args.steps * min(1.0, (time.time() - t0) / budget))
            virtual = max(step, clock)
        lr = lr_at(virtual, args.steps, args.lr, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # Clipping guards against the occasional huge gradient at tiny t (eps hard to see).
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        # EMA warm-up: early on the average would otherwise be dominated by the random init.
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
            stopped_by_clock = True
            print(
                f"\nwall-clock budget of {args.minutes} min reached at step {step + 1}", flush=True
            )
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
        "stopped_by_wall_clock": stopped_by_clock,
        "batch_size": args.batch_size,
        "peak_lr": args.lr,
        "ema_decay": args.ema_decay,
        "seed": args.seed,
        "threads": args.threads,
        "minutes_budget": args.minutes,
        "elapsed_s": round(elapsed, 1),
        "final_loss_ema_avg": round(float(loss_avg), 6) if loss_avg is not None else None,
        "parameters": n_params,
        "train_images": n_train,
        "weights": "EMA",
        **(extra_summary or {}),
    }
    (args.out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"saved EMA UNet to {args.out} after {steps_done} steps in {elapsed / 60:.1f} min; "
        f"smoothed loss {loss_avg:.4f}",
        flush=True,
    )
    return summary


def seed_run(seed: int, threads: int) -> None:
    """Fix the torch CPU thread count and seed torch's, NumPy's and Python's global generators.

    The digits training scripts (and :mod:`benchmarks.train_classifier`) call it first, before
    any network is built, so that weight initialisation is reproducible from ``seed``.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def training_parser(description: str | None, *, steps: int, out: Path) -> argparse.ArgumentParser:
    """Return a parser with the flags :func:`train_loop` reads (defaults: ``steps``, ``out``).

    ``--steps --batch-size --lr --warmup --ema-decay --out --minutes --seed --threads
    --log-every``; a script adds its own flags to the returned parser.
    """
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--steps", type=int, default=steps, help=f"optimiser steps (default {steps})")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=300, help="linear warm-up steps")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--out", type=Path, default=out)
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="wall-clock budget; training stops (and saves) when it is exhausted",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 is fastest for this tiny model (measured: 0.17 s/step vs "
        "0.4-4 s/step with 2 threads, which contend with each other and any other process)",
    )
    p.add_argument("--log-every", type=int, default=50, help="steps between CSV log rows")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    return training_parser(
        __doc__, steps=15000, out=REPO_ROOT / "models" / "digits_ddpm"
    ).parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train, then save the EMA UNet, the scheduler config and the loss log."""
    args = parse_args(argv)
    seed_run(args.seed, args.threads)

    write_split()  # (re)write models/digits_split.json so the run records its exact data
    x_train, _ = load_digits_split("train")
    n = x_train.shape[0]

    scheduler = build_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float32)
    unet = build_unet()

    gen = torch.Generator().manual_seed(args.seed)

    batches = epoch_batches(n, args.batch_size, gen)
    t_max = scheduler.config.num_train_timesteps

    def loss_fn(step: int) -> torch.Tensor:
        x0 = x_train[next(batches)]
        t = torch.randint(0, t_max, (x0.shape[0],), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1.0 - a).sqrt() * eps
        return torch.nn.functional.mse_loss(unet(xt, t).sample, eps)

    train_loop(unet, scheduler, args, loss_fn, desc="ddpm", n_train=n)


if __name__ == "__main__":
    main()
