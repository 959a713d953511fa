"""Throughput of the dataset jobs on the digits DDPM: 1 and 2 processes (torchrun, gloo).

Also the dataset entry point of the README's commands: :func:`held_out_digits`.
"""

from __future__ import annotations

import torch

from benchmarks.digits_data import load_digits_split


def held_out_digits() -> torch.Tensor:
    """The 360 held-out digits (models/digits_split.json), ``(360, 1, 8, 8)`` in [−1, 1]:
    ``lmsolvers invert-dataset --data benchmarks.jobs_throughput:held_out_digits``."""
    return load_digits_split("test")[0]
