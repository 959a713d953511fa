"""Sanity check of the trained digits DDPM: DDIM samples, a PNG grid and classifier confidence.

Loads ``models/digits_ddpm`` with ``UNet2DModel.from_pretrained`` (offline), samples digits with
a plain deterministic DDIM loop (diffusers ``DDIMScheduler``, eta = 0, built from the DDPM's
scheduler config), saves a grid PNG, and classifies the samples with the digits classifier.
The fraction of samples whose maximum softmax probability is >= 0.9 and the class histogram
are printed next to the same statistic on the held-out real test digits.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.check_digits_model
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from .digits_classifier import DEFAULT_CLASSIFIER_PATH, DigitsCNN, load_classifier
from .digits_data import REPO_ROOT, load_digits_split, save_image_grid

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@torch.no_grad()
def ddim_sample(
    unet: UNet2DModel,
    scheduler: DDIMScheduler,
    n: int,
    num_steps: int,
    seed: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Draw ``n`` samples with deterministic DDIM (eta = 0) in ``num_steps`` steps.

    Args:
        unet: Epsilon-prediction UNet (already cast to ``dtype``).
        scheduler: DDIM scheduler; its timesteps are (re)set here.
        n: Number of samples.
        num_steps: Number of DDIM steps (network evaluations).
        seed: Seed of the initial Gaussian noise.
        dtype: Floating dtype of the computation.

    Returns:
        Samples of shape ``(n, C, H, W)``, nominally in ``[-1, 1]`` (not clipped).
    """
    cfg = unet.config
    gen = torch.Generator().manual_seed(seed)
    # Noise drawn in float64 and cast, so float32 and float64 runs start from the same x_T.
    x = torch.randn(
        (n, cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=gen, dtype=torch.float64
    ).to(dtype)
    scheduler.set_timesteps(num_steps)
    for t in scheduler.timesteps:
        eps = unet(x, t).sample
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x


@torch.no_grad()
def confidence_report(
    classifier: DigitsCNN, x: torch.Tensor, threshold: float = 0.9
) -> tuple[float, list[int]]:
    """Fraction of images with max softmax probability >= ``threshold`` and class histogram.

    Args:
        classifier: The digits classifier (eval mode).
        x: Images ``(N, 1, 8, 8)`` in ``[-1, 1]``.
        threshold: Confidence threshold.

    Returns:
        ``(fraction_confident, histogram of predicted classes 0..9)``.
    """
    probs = classifier(x.to(next(classifier.parameters()).dtype)).softmax(dim=1)
    conf, pred = probs.max(dim=1)
    hist = torch.bincount(pred, minlength=classifier.config.num_classes).tolist()
    return (conf >= threshold).double().mean().item(), hist


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "digits_ddpm")
    p.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER_PATH)
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float64")
    p.add_argument(
        "--png",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results" / "digits_samples_ddim50.png",
    )
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Sample, save the grid, and print classifier statistics for samples and real digits."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]

    unet = UNet2DModel.from_pretrained(args.model, torch_dtype=dtype).eval()
    ddpm = DDPMScheduler.from_pretrained(args.model)
    scheduler = DDIMScheduler.from_config(ddpm.config)
    classifier = load_classifier(args.classifier, dtype=dtype)

    t0 = time.time()
    samples = ddim_sample(unet, scheduler, args.n, args.steps, args.seed, dtype)
    elapsed = time.time() - t0
    save_image_grid(
        samples,
        args.png,
        ncols=8,
        title=f"digits DDPM, DDIM {args.steps} steps ({args.dtype}), seed {args.seed}",
    )
    lo, hi = samples.min().item(), samples.max().item()
    print(
        f"sampled {args.n} digits in {elapsed:.1f} s ({args.dtype}); "
        f"value range [{lo:.2f}, {hi:.2f}]; grid -> {args.png}"
    )

    frac_s, hist_s = confidence_report(classifier, samples)
    x_test, y_test = load_digits_split("test")
    frac_r, hist_r = confidence_report(classifier, x_test)
    print(
        f"samples   : max softmax >= 0.9 for {frac_s:.1%} of {args.n}; "
        f"predicted-class histogram {hist_s}"
    )
    print(
        f"real test : max softmax >= 0.9 for {frac_r:.1%} of {len(y_test)}; "
        f"predicted-class histogram {hist_r}"
    )


if __name__ == "__main__":
    main()
