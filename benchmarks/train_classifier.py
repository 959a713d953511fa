"""Train the digits CNN classifier (the Fréchet-distance feature extractor) and report accuracy.

Trains :class:`digits_classifier.DigitsCNN` on the train split of :mod:`digits_data` and
evaluates it on the held-out test split. Augmentation is limited to random one-pixel
translations (padding with background): these make the features robust to the small
misplacements typical of generated digits without changing what a digit looks like. Flips and
rotations are not used (digits are not symmetric).

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.train_classifier
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .digits_classifier import (
    DEFAULT_CLASSIFIER_PATH,
    ClassifierConfig,
    DigitsCNN,
    load_classifier,
    save_classifier,
)
from .digits_data import load_digits_split
from .train_digits import seed_run


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in x and y, filling with -1 (blank).

    Args:
        x: Batch ``(N, 1, H, W)`` in ``[-1, 1]``.
        gen: Random generator (for reproducibility).
        max_shift: Maximum absolute shift per axis.

    Returns:
        The shifted batch, same shape.
    """
    n, _, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m), value=-1.0)
    dx = torch.randint(0, 2 * m + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * m + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


@torch.no_grad()
def accuracy(model: DigitsCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``(x, y)``."""
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--out", type=Path, default=DEFAULT_CLASSIFIER_PATH)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: tiny model)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train, evaluate on the held-out split, save, and verify the saved copy reloads."""
    args = parse_args(argv)
    seed_run(args.seed, args.threads)
    gen = torch.Generator().manual_seed(args.seed)

    x_train, y_train = load_digits_split("train")
    x_test, y_test = load_digits_split("test")
    model = DigitsCNN(ClassifierConfig())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"train {len(y_train)}, test {len(y_test)}; classifier parameters: {n_params:,}")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    steps_per_epoch = (len(y_train) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )
    t0 = time.time()
    for epoch in (pbar := tqdm(range(args.epochs), desc="classifier", file=sys.stdout)):
        model.train()
        perm = torch.randperm(len(y_train), generator=gen)
        total = 0.0
        for i in range(0, len(y_train), args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb = random_shift(x_train[idx], gen)
            # Label smoothing keeps the softmax from saturating on everything, so the
            # max-probability >= 0.9 confidence test on generated samples stays informative.
            loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch % 10 == 9 or epoch == args.epochs - 1:
            pbar.write(
                f"epoch {epoch + 1}: loss {total / len(y_train):.4f}, "
                f"test acc {accuracy(model, x_test, y_test):.4f}"
            )

    train_acc = accuracy(model, x_train, y_train)
    test_acc = accuracy(model, x_test, y_test)
    save_classifier(
        model,
        args.out,
        train_accuracy=round(train_acc, 5),
        test_accuracy=round(test_acc, 5),
        epochs=args.epochs,
        seed=args.seed,
    )
    reloaded = load_classifier(args.out)
    assert abs(accuracy(reloaded, x_test, y_test) - test_acc) < 1e-9, "reload mismatch"
    print(
        f"done in {time.time() - t0:.0f} s: train acc {train_acc:.4f}, "
        f"held-out test acc {test_acc:.4f} ({len(y_test)} images); saved to {args.out}"
    )


if __name__ == "__main__":
    main()
