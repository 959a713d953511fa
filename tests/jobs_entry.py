"""Entry points for the dataset-job tests (``--eps tests.jobs_entry:gaussian``,
``--data tests.jobs_entry:gaussian_data``): a closed-form σ̄-ODE, so a job's subprocess
starts without importing diffusers."""

from __future__ import annotations

import torch

from lmsolvers import Grid
from lmsolvers.problems import GaussianData

PROBLEM = GaussianData(dim=2, mean=0.5, std=0.7)


def gaussian(steps: int):
    """``(ε̄, grid, context)`` of Gaussian data on a power grid up to σ̄ = 80."""
    return PROBLEM.eps, Grid.power(steps, 80.0), {"problem": repr(PROBLEM)}


def gaussian_data() -> torch.Tensor:
    """60 samples ``(1, 4, 4)`` of N(0.5, 0.7²) (fixed seed)."""
    g = torch.Generator().manual_seed(0)
    return PROBLEM.mean + PROBLEM.std * torch.randn(60, 1, 4, 4, generator=g,
                                                    dtype=torch.float64)
