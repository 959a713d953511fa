"""Deterministic train/test split and preprocessing of scikit-learn's digits data set.

Shared by ``train_digits.py`` (the DDPM), ``train_classifier.py`` (the feature extractor of
the Fréchet distance) and the benchmarks, so that all of them see exactly the same pixels.

The data set (:func:`sklearn.datasets.load_digits`) holds 1,797 grey-scale 8x8 images with
integer intensities 0..16. They are kept at their native 8x8 resolution: upsampling them would
add no information, only quadruple the cost of every network evaluation (training and the
many float64 ODE solves of the benchmarks), and 8x8 digits are recognisable when displayed
enlarged with nearest-neighbour interpolation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

#: Repository root (``benchmarks/`` is one level below it).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Where the split indices are stored (committed, so the split never depends on sklearn's RNG).
DEFAULT_SPLIT_PATH = REPO_ROOT / "models" / "digits_split.json"

#: Side length of the images fed to the networks.
RESOLUTION = 8
#: Maximum raw intensity in ``load_digits`` (pixel values are integers 0..16).
MAX_INTENSITY = 16.0
#: Fraction of the data held out for testing, and the seed of the stratified split.
TEST_FRACTION = 0.2
SPLIT_SEED = 0

PREPROCESSING_DESCRIPTION = (
    "sklearn.datasets.load_digits().images (N x 8 x 8, integers 0..16) -> float32, "
    "x / 16 * 2 - 1 (range [-1, 1]), shape N x 1 x 8 x 8; native 8x8 resolution, "
    "no resizing, padding or augmentation"
)

Split = Literal["train", "test", "all"]


def preprocess(images: np.ndarray) -> torch.Tensor:
    """Map raw digits images (``N x 8 x 8``, values 0..16) to a float32 tensor in [-1, 1].

    Args:
        images: Array of shape ``(N, 8, 8)`` with intensities in ``[0, 16]``.

    Returns:
        Tensor of shape ``(N, 1, 8, 8)`` with values in ``[-1, 1]``.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    return (x / MAX_INTENSITY * 2.0 - 1.0).unsqueeze(1)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Invert the affine part of :func:`preprocess`: ``[-1, 1]`` -> ``[0, 1]`` (clamped)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def make_split(
    test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> dict[str, list[int]]:
    """Compute a stratified train/test split of the digits indices.

    Args:
        test_fraction: Fraction of the 1,797 images in the test split.
        seed: ``random_state`` of :func:`sklearn.model_selection.train_test_split`.

    Returns:
        ``{"train": [...], "test": [...]}`` with sorted indices into ``load_digits()``.
    """
    labels = load_digits().target
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels)
    return {"train": sorted(int(i) for i in train), "test": sorted(int(i) for i in test)}


def write_split(path: Path = DEFAULT_SPLIT_PATH) -> dict:
    """Create the split file (``train``/``test`` indices plus a preprocessing description).

    Args:
        path: Destination JSON file; parent directories are created.

    Returns:
        The dictionary written to ``path``.
    """
    split = make_split()
    record = {
        **split,
        "resolution": RESOLUTION,
        "how images were preprocessed": PREPROCESSING_DESCRIPTION,
        "split": (
            f"sklearn.model_selection.train_test_split(np.arange(1797), test_size={TEST_FRACTION},"
            f" random_state={SPLIT_SEED}, stratify=load_digits().target); indices sorted"
        ),
        "preprocessing function": "benchmarks/digits_data.py::preprocess",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def read_split(path: Path = DEFAULT_SPLIT_PATH) -> dict:
    """Read the split file, creating it first if it does not exist yet.

    Args:
        path: JSON file written by :func:`write_split`.

    Returns:
        The parsed split record.
    """
    path = Path(path)
    if not path.exists():
        return write_split(path)
    return json.loads(path.read_text())


def load_digits_split(
    split: Split, split_path: Path = DEFAULT_SPLIT_PATH
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of the preprocessed digits.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        split_path: JSON file with the split indices (see :func:`write_split`).

    Returns:
        ``(x, y)``: images of shape ``(N, 1, 8, 8)`` (float32 in ``[-1, 1]``) and int64 labels
        of shape ``(N,)``.
    """
    digits = load_digits()
    if split == "all":
        idx = np.arange(len(digits.target))
    elif split in ("train", "test"):
        idx = np.asarray(read_split(split_path)[split], dtype=np.int64)
    else:
        raise ValueError(f"unknown split {split!r}; expected 'train', 'test' or 'all'")
    x = preprocess(digits.images[idx])
    y = torch.as_tensor(digits.target[idx], dtype=torch.int64)
    return x, y


def save_image_grid(x: torch.Tensor, path: Path, ncols: int = 8, title: str | None = None) -> None:
    """Save a grid of ``[-1, 1]`` images as a PNG (nearest-neighbour, so pixels stay crisp).

    Args:
        x: Tensor of shape ``(N, 1, H, W)`` with values in ``[-1, 1]``.
        path: Output PNG path; parent directories are created.
        ncols: Number of images per row.
        title: Optional figure title.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless machine: never try to open a window
    import matplotlib.pyplot as plt

    imgs = to_unit_range(x.detach().float().cpu())[:, 0].numpy()
    n, h, w = imgs.shape
    nrows = (n + ncols - 1) // ncols
    # One-pixel separators (value 0.5, grey) so neighbouring digits do not merge.
    grid = np.full((nrows * (h + 1) + 1, ncols * (w + 1) + 1), 0.5, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = imgs[i]
    fig, ax = plt.subplots(figsize=(ncols * 0.75, nrows * 0.75 + (0.4 if title else 0.0)))
    ax.imshow(grid, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    rec = write_split()
    print(f"wrote {DEFAULT_SPLIT_PATH}: {len(rec['train'])} train, {len(rec['test'])} test")
