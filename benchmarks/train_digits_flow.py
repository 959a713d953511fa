"""Train a small rectified-flow (flow-matching) model, a diffusers ``UNet2DModel``, on the digits.

The flow-matching counterpart of :mod:`benchmarks.train_digits` (the DDPM): same data split,
same network, optimiser, learning-rate schedule and weight EMA (imported from there), only the
noising path, the training target and the saved scheduler differ.

* Path (rectified flow, as SD3/FLUX): ``x_σ = (1 − σ) x_0 + σ ε`` for σ in (0, 1), i.e. the
  σ̄-ODE of ``docs/design.md`` with ``α = 1 − σ`` and ``σ̄ = σ/(1 − σ)``.
* Target: the velocity ``v = dx_σ/dσ = ε − x_0``; loss = MSE(v̂, v), unweighted (diffusers'
  ``compute_loss_weighting_for_sd3`` is 1 for the logit-normal scheme).
* σ sampling: logit-normal, ``σ = sigmoid(u)`` with ``u ~ N(0, 1)``, drawn by diffusers'
  ``compute_density_for_timestep_sampling("logit_normal", logit_mean=0, logit_std=1)`` as in
  diffusers' SD3 training scripts (the SD3 paper's best scheme, rf/lognorm(0, 1)). The scripts
  then round σ to one of 1000 training timesteps; here σ is kept continuous, because the
  benchmarks integrate the ODE at arbitrary σ (an N-step grid for every N from 10 to 200), and
  a network trained on 1000 discrete times would be probed between them everywhere. The
  density vanishes at σ = 0 and 1 but its tails still cover [1e-3, 1 − 1e-3] with ~0.3 % of
  the draws each side, and the two ends are the easy ones for a velocity model (v → ε − E[x_0]
  at σ → 1; at σ → 0, where ε cannot be seen, ε̂ = x + (1 − σ) v̂ only needs v̂ ≈ ε̂ − x).
* Timestep input: ``t = 1000 σ`` (float), the ``timesteps`` that
  ``FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)`` hands to the model.
* Output (``--out``): ``config.json`` + ``diffusion_pytorch_model.safetensors`` (EMA weights,
  float32) and the ``scheduler_config.json`` of ``FlowMatchEulerDiscreteScheduler(shift=1.0)``
  (no resolution shift: the model is trained on the unshifted logit-normal density, and an
  8x8 image has no extra resolution for a shift to compensate; SD3 uses shift 3 at 1024²),
  ``train_log.csv`` with the loss and ``train_summary.json``.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.train_digits_flow --steps 8000 --minutes 40

(the shipped model: that command on the shared 2-core box, stopped by its wall-clock budget
at step 5666 of 8000 with the learning rate at 1.1e-4 of its 5e-4 peak; train_summary.json)
"""

from __future__ import annotations

import argparse

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling

from .digits_data import REPO_ROOT, load_digits_split
from .train_digits import (
    build_unet,
    epoch_batches,
    seed_run,
    train_loop,
    training_parser,
)

#: Where the trained model is committed.
DEFAULT_OUT = REPO_ROOT / "models" / "digits_flow"
#: Logit-normal σ density of SD3 training (mean and std of the logit).
LOGIT_MEAN = 0.0
LOGIT_STD = 1.0


def build_flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Return the sampling scheduler saved with the model: unshifted flow matching, 1000 steps.

    ``shift=1.0`` keeps σ = t/1000 (see the module docstring for why no shift);
    ``num_train_timesteps=1000`` fixes the model-time scale t = 1000 σ used in training.
    """
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def sample_sigmas(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Draw training noise levels σ ∈ (0, 1) from SD3's logit-normal density.

    ``σ = sigmoid(u)``, ``u ~ N(LOGIT_MEAN, LOGIT_STD²)``, via diffusers'
    ``compute_density_for_timestep_sampling``, kept continuous (not rounded to a timestep).
    """
    return compute_density_for_timestep_sampling(
        "logit_normal", batch, logit_mean=LOGIT_MEAN, logit_std=LOGIT_STD, generator=generator
    )


def flow_pair(
    x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the noisy input and the velocity target of rectified flow.

    ``x_σ = (1 − σ) x_0 + σ ε`` and ``v = ∂x_σ/∂σ = ε − x_0``; σ has shape ``(B,)``.
    """
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    return (1.0 - s) * x0 + s * eps, eps - x0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    return training_parser(__doc__, steps=8000, out=DEFAULT_OUT).parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train, then save the EMA UNet, the flow-matching scheduler config and the loss log."""
    args = parse_args(argv)
    seed_run(args.seed, args.threads)

    # The committed split (models/digits_split.json) is read, never rewritten: the flow model
    # must see exactly the DDPM's training images.
    x_train, _ = load_digits_split("train")
    n = x_train.shape[0]

    scheduler = build_flow_scheduler()
    t_scale = float(scheduler.config.num_train_timesteps)
    unet = build_unet()

    gen = torch.Generator().manual_seed(args.seed)
    batches = epoch_batches(n, args.batch_size, gen)

    def loss_fn(step: int) -> torch.Tensor:
        x0 = x_train[next(batches)]
        sigma = sample_sigmas(x0.shape[0], gen)
        eps = torch.randn(x0.shape, generator=gen)
        x_sigma, v = flow_pair(x0, eps, sigma)
        return torch.nn.functional.mse_loss(unet(x_sigma, sigma * t_scale).sample, v)

    extra = {
        "path": "x_sigma = (1 - sigma) x0 + sigma eps",
        "target": "v = eps - x0 (MSE, unweighted)",
        "sigma_density": f"logit-normal(mean={LOGIT_MEAN}, std={LOGIT_STD}), continuous",
        "timestep_input": f"t = {t_scale:g} * sigma",
    }
    train_loop(
        unet,
        scheduler,
        args,
        loss_fn,
        desc="flow",
        n_train=n,
        extra_summary=extra,
    )


if __name__ == "__main__":
    main()
