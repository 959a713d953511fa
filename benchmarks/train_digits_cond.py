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

import torch
from diffusers import UNet2DModel

from .digits_data import REPO_ROOT, load_digits_split
from .train_digits import (
    build_scheduler,
    build_unet,
    epoch_batches,
    seed_run,
    train_loop,
    training_parser,
)

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
    p = training_parser(__doc__, steps=12000, out=DEFAULT_OUT)
    p.add_argument("--p-uncond", type=float, default=0.15, help="label-dropout probability")
    args = p.parse_args(argv)
    if not 0.0 < args.p_uncond < 1.0:
        p.error(f"--p-uncond must lie in (0, 1), got {args.p_uncond}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Train, then save the EMA UNet, the scheduler config, the loss log and a summary."""
    args = parse_args(argv)
    seed_run(args.seed, args.threads)

    x_train, y_train = load_digits_split("train")
    n = x_train.shape[0]

    scheduler = build_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float32)
    unet = build_cond_unet()

    gen = torch.Generator().manual_seed(args.seed)
    batches = epoch_batches(n, args.batch_size, gen)
    t_max = scheduler.config.num_train_timesteps

    def loss_fn(step: int) -> torch.Tensor:
        idx = next(batches)
        x0 = x_train[idx]
        labels = drop_labels(y_train[idx], args.p_uncond, gen)
        t = torch.randint(0, t_max, (x0.shape[0],), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1.0 - a).sqrt() * eps
        return torch.nn.functional.mse_loss(unet(xt, t, class_labels=labels).sample, eps)

    train_loop(
        unet,
        scheduler,
        args,
        loss_fn,
        desc="cond-ddpm",
        n_train=n,
        extra_summary={"p_uncond": args.p_uncond, "null_class": NULL_CLASS},
        anneal_by_clock=True,
    )


if __name__ == "__main__":
    main()
