"""Grids for exponential methods: nodes spaced in ``λ = −log σ̄`` (docs/design.md §12).

Exponential methods are exact for the part of the solution that is a polynomial in λ times
``e^λ``, and their coefficients depend on the log-steps only, so the natural grid is
uniform in λ (log-uniform in σ̄: the grid on which DPM-Solver++ and UniPC are at their
best).  A *warp* ``p`` redistributes the λ-steps: with ``s_i`` uniform in [0, 1] from the
noisiest node, ``λ_i = λ_max + (λ_min − λ_max) s_i^p``; ``p < 1`` takes longer λ-steps at
high noise (where the flow forgets errors and the data-prediction Jacobian is ≈ 0) and
shorter ones near the data (where it does neither, and where an inversion's parasitic
modes grow: §11), ``p = 1`` is log-uniform.

The lowest positive node is the schedule's least noisy level ``σ̄_min`` and node 0 the
clean image ``σ̄ = 0`` (or the schedule's final node); the step between them is the
method's landing step.  On a diffusion schedule's table the nodes are snapped to integer
timesteps (the model is only trained there), kept strictly increasing; the round-off
amplification of inversion is reported and can be bounded (``max_amplification``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .grid import Grid
from .griddesign import GridDesign
from .method import LMMethod

__all__ = ["log_nodes", "log_grid", "log_schedule_grid"]


def _check(n: int, warp: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
        raise ValueError(f"the number of steps must be an integer ≥ 2, got {n!r}")
    if not (isinstance(warp, int | float) and math.isfinite(warp) and warp > 0):
        raise ValueError(f"warp must be a positive number, got {warp!r}")


def log_nodes(n: int, sigma_max: float, sigma_min: float, warp: float = 1.0) -> np.ndarray:
    """The ``n`` positive nodes ``σ̄_1 = sigma_min < … < σ̄_n = sigma_max``, warped in λ
    (module docstring), increasing."""
    _check(n, warp)
    if not (math.isfinite(sigma_max) and 0 < sigma_min < sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min!r}, "
                         f"{sigma_max!r}")
    s = np.linspace(0.0, 1.0, n) ** float(warp)
    u = math.log(sigma_max) + (math.log(sigma_min) - math.log(sigma_max)) * s
    nodes = np.exp(u)[::-1].copy()
    nodes[0], nodes[-1] = sigma_min, sigma_max
    return nodes


def log_grid(n: int, sigma_max: float, sigma_min: float, warp: float = 1.0,
             final: float = 0.0) -> Grid:
    """A grid of ``n`` steps: node 0 at ``final`` (< ``sigma_min``), nodes 1..n from
    :func:`log_nodes` (``n − 1`` warped λ-steps, then the landing step)."""
    if not 0 <= final < sigma_min:
        raise ValueError(f"the final node must lie in [0, sigma_min), got {final!r}")
    return Grid(np.concatenate([[final], log_nodes(n, sigma_max, sigma_min, warp)]))


def log_schedule_grid(method: LMMethod, n: int, alphas_cumprod: Sequence[float] | np.ndarray,
                      *, final_alpha_cumprod: float = 1.0, warp: float = 1.0,
                      max_amplification: float = math.inf) -> GridDesign:
    """The λ-warped grid of ``n`` steps on a diffusion schedule's integer timesteps.

    Node n is the last training timestep, node 1 the least noisy one above the final node
    (``ᾱ = final_alpha_cumprod``; 1: σ̄_0 = 0), nodes between are the timesteps nearest in
    log σ̄ to :func:`log_nodes`, moved apart where two coincide.  Raises ``ValueError`` if
    the schedule has fewer than ``n`` usable timesteps or the round-off amplification of
    ``method`` on the grid exceeds ``max_amplification`` (default: report it only, in the
    result; :data:`~lmsolvers.griddesign.DEFAULT_MAX_AMPLIFICATION`, ``u·R ≤ 1.1e-9`` in
    float64, holds for the default configuration at every N: on the digits DDPM table
    u·R ≤ 2e-11 for N = 3…500).
    """
    _check(n, warp)
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    if ac.ndim != 1 or ac.size < 2 or np.any(~np.isfinite(ac)) or np.any((ac <= 0) | (ac > 1)):
        raise ValueError("alphas_cumprod must be a 1-D table of values in (0, 1]")
    if np.any(np.diff(ac) >= 0):
        raise ValueError("alphas_cumprod must decrease strictly with the timestep")
    if not 0 < final_alpha_cumprod <= 1:
        raise ValueError(f"final_alpha_cumprod must lie in (0, 1], got {final_alpha_cumprod!r}")
    table = np.sqrt((1.0 - ac) / ac)
    s_final = math.sqrt((1.0 - final_alpha_cumprod) / final_alpha_cumprod)
    first = int(np.searchsorted(table, s_final, side="right"))
    T = table.size
    if n > T - first:
        raise ValueError(f"{n} steps need {n} distinct timesteps above the final node; the "
                         f"schedule has {T - first}")
    target = np.log(log_nodes(n, float(table[-1]), float(table[first]), warp))
    t = np.rint(np.interp(target, np.log(table), np.arange(T, dtype=np.float64))).astype(int)
    t[0], t[-1] = first, T - 1
    for j in range(1, n):  # strictly increasing, room left above
        t[j] = max(t[j], t[j - 1] + 1)
    for j in range(n - 2, -1, -1):
        t[j] = min(t[j], t[j + 1] - 1)
    grid = Grid.from_alphas_cumprod(ac, t, final_alpha_cumprod=final_alpha_cumprod)
    R = method.roundoff_amplification(grid)
    if not R <= max_amplification:
        raise ValueError(
            f"{method.name!r} on the λ-grid with N = {n}, warp {warp} has round-off "
            f"amplification {R:.3g} > {max_amplification:.3g} (predicted float64 round trip "
            f"{R * float(torch.finfo(torch.float64).eps) / 2:.2g}); use fewer steps or a "
            "larger bound")
    return GridDesign(grid=grid, method=method, estimate=float("nan"),
                      amplification=method.amplification(grid, "backward"),
                      forward_growth=method.amplification(grid, "forward"),
                      roundoff_amplification=R)
