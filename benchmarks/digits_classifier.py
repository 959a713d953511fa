"""Small CNN classifier for the 8x8 digits, used as the feature extractor of a Fréchet distance.

It plays the role Inception-v3 plays in FID: :meth:`DigitsCNN.features` returns the
penultimate-layer activations (64 dimensions), whose Gaussian statistics are compared between
generated and real digits. Inputs are preprocessed as in :mod:`digits_data` (``N x 1 x 8 x 8``
in ``[-1, 1]``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

DEFAULT_CLASSIFIER_PATH = Path(__file__).resolve().parents[1] / "models" / "digits_classifier"


@dataclass
class ClassifierConfig:
    """Hyper-parameters needed to rebuild :class:`DigitsCNN` from ``config.json``."""

    channels: tuple[int, int, int] = (32, 64, 128)
    feature_dim: int = 64
    num_classes: int = 10
    dropout: float = 0.3
    resolution: int = 8


class DigitsCNN(nn.Module):
    """Conv net 8x8 -> 4x4 -> 2x2 -> global average -> ``feature_dim`` -> 10 logits.

    Global average pooling (rather than flattening) makes the features less sensitive to the
    exact position of strokes, which is what a distribution-level distance should measure.
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        c1, c2, c3 = self.config.channels

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
            )

        self.body = nn.Sequential(
            block(1, c1),
            block(c1, c1),
            nn.MaxPool2d(2),  # 8 -> 4
            block(c1, c2),
            block(c2, c2),
            nn.MaxPool2d(2),  # 4 -> 2
            block(c2, c3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.embed = nn.Sequential(nn.Linear(c3, self.config.feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(
            nn.Dropout(self.config.dropout),
            nn.Linear(self.config.feature_dim, self.config.num_classes),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations, shape ``(N, feature_dim)`` (the Fréchet features)."""
        return self.embed(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape ``(N, num_classes)``."""
        return self.head(self.features(x))


def save_classifier(
    model: DigitsCNN, path: Path = DEFAULT_CLASSIFIER_PATH, **extra: object
) -> None:
    """Write ``model.safetensors`` (float32 state dict) and ``config.json`` to ``path``.

    Args:
        model: The trained classifier.
        path: Output directory (created if needed).
        **extra: Additional JSON-serialisable metadata stored in ``config.json`` (e.g. accuracy).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().float().contiguous()
        for k, v in model.state_dict().items()
        if v.is_floating_point()
    }
    # BatchNorm's integer ``num_batches_tracked`` counters are not needed for inference.
    save_file(state, str(path / "model.safetensors"))
    cfg = asdict(model.config)
    cfg["channels"] = list(cfg["channels"])
    (path / "config.json").write_text(json.dumps({**cfg, **extra}, indent=1) + "\n")


def load_classifier(
    path: Path | str = DEFAULT_CLASSIFIER_PATH, dtype: torch.dtype = torch.float32
) -> DigitsCNN:
    """Load a classifier saved by :func:`save_classifier`, in eval mode.

    Args:
        path: Directory with ``model.safetensors`` and ``config.json``.
        dtype: Floating dtype of the returned model (e.g. ``torch.float64``).

    Returns:
        The :class:`DigitsCNN`, in ``eval()`` mode, with gradients disabled.
    """
    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    fields = ClassifierConfig.__dataclass_fields__
    cfg = ClassifierConfig(**{k: v for k, v in raw.items() if k in fields})
    cfg.channels = tuple(cfg.channels)  # JSON has no tuples
    model = DigitsCNN(cfg)
    result = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    # Only BatchNorm's step counters are deliberately absent from the file; anything else
    # missing or unexpected means the file and config.json disagree.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"bad classifier weights: missing {missing}, unexpected {result.unexpected_keys}"
        )
    return model.to(dtype).eval().requires_grad_(False)
