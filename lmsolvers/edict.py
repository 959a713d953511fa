"""EDICT (Wallace et al., 2023) as a coupled, exactly invertible integrator.

EDICT carries two states (x̄, ȳ) and mixes them with weight p.  In σ̄ form a DDIM
step is ``z ↦ z − h_i ε̄(·, σ̄_i)``, and one EDICT step from node i to i−1 is::

    x' = x̄_i − h_i ε̄(ȳ_i, σ̄_i)            y' = ȳ_i − h_i ε̄(x', σ̄_i)
    x̄_{i−1} = p x' + (1−p) y'               ȳ_{i−1} = p y' + (1−p) x̄_{i−1}

Each line is explicit in both directions, so the inverse is exact for any number
of steps (the diffusers community pipeline inverts exactly only for even counts:
DESIGN.md §6).  Mixing in x̄ or in x is the same because both states share α.
Two ε evaluations per step.  Read as a chain ``x̄_N, ȳ_N, x', y', x̄_{N−1}, ȳ_{N−1}, …``
every element is a 2-step BELM of the two before it with ``a_2 ∈ {1, p}``
(tests/test_edict.py checks this form).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .grid import Grid
from .integrate import (
    Callback,
    EpsFn,
    Latent,
    _check_latent,
    _check_state,
    _combine,
    _emit,
    _EpsEvaluator,
    _progress,
)

__all__ = ["EDICT", "edict"]


@dataclass(frozen=True)
class EDICT:
    """The EDICT coupled integrator with mixing weight ``p`` (0 < p < 1, paper: 0.93)."""

    p: float = 0.93

    def __post_init__(self) -> None:
        if not 0.0 < self.p < 1.0:
            raise ValueError(f"EDICT needs 0 < p < 1 (it divides by p when inverting), "
                             f"got {self.p}")

    @property
    def name(self) -> str:
        """``"edict(p)"``: the name latents record."""
        return f"edict({self.p:g})"

    k = 2  # the latent is the pair (x̄_N, ȳ_N)
    nfe_per_step = 2

    def amplification(self, grid: Grid, direction: str = "backward") -> float:
        """Growth of the parasitic mode ``x̄ − ȳ``: sampling multiplies it by ``p²`` per
        step, inversion by ``p⁻²``; the largest growth from a step to the end of the run."""
        if direction not in ("forward", "backward", "both"):
            raise ValueError(f"direction must be 'forward', 'backward' or 'both', got "
                             f"{direction!r}")
        return 1.0 if direction == "forward" else self.p ** (-2.0 * (grid.N - 1))

    def sample(self, eps: EpsFn, grid: Grid, x: torch.Tensor | Latent, *,
               callback: Callback | None = None, disable: bool | None = None,
               check_finite: bool = True) -> torch.Tensor:
        """Sample from ``x̄_N`` (both states start there) or from an EDICT latent.

        Returns ``x̄_0`` (the x-chain's final state).
        """
        top = float(grid.sigma_bar[-1])
        if isinstance(x, Latent):
            _check_latent(x, self.name, [top, top])
            xs, ys = x.states
        else:
            _check_state(x, "x")
            xs, ys = x, x
        ev = _EpsEvaluator(eps, grid, xs, check_finite)
        p, q = self.p, 1.0 - self.p
        for i in _range(grid.N, 0, -1, disable, f"sample[{self.name}]"):
            s, h = float(grid.sigma_bar[i]), float(grid.h[i - 1])
            xi = _combine([(1.0, xs), (-h, ev(ys, s, f"node {i}"))])
            yi = _combine([(1.0, ys), (-h, ev(xi, s, f"node {i}"))])
            xs = _combine([(p, xi), (q, yi)])
            ys = _combine([(p, yi), (q, xs)])
            _emit(callback, grid, i - 1, xs)
        return xs

    def invert(self, eps: EpsFn, grid: Grid, x0: torch.Tensor, *,
               callback: Callback | None = None, disable: bool | None = None,
               check_finite: bool = True) -> Latent:
        """Run every EDICT step backwards from ``x̄_0 = ȳ_0 = x0``; the latent is (x̄_N, ȳ_N)."""
        _check_state(x0, "x0")
        ev = _EpsEvaluator(eps, grid, x0, check_finite)
        p, q = self.p, 1.0 - self.p
        xs, ys = x0, x0
        for i in _range(1, grid.N + 1, 1, disable, f"invert[{self.name}]"):
            s, h = float(grid.sigma_bar[i]), float(grid.h[i - 1])
            yi = _combine([(1.0 / p, ys), (-q / p, xs)])
            xi = _combine([(1.0 / p, xs), (-q / p, yi)])
            ys = _combine([(1.0, yi), (h, ev(xi, s, f"node {i}"))])
            xs = _combine([(1.0, xi), (h, ev(ys, s, f"node {i}"))])
            _emit(callback, grid, i, xs)
        top = float(grid.sigma_bar[-1])
        return Latent(states=(xs, ys), method=self.name, sigma_bar=(top, top))


def _range(start: int, stop: int, step: int, disable: bool | None, desc: str) -> Any:
    bar = _progress(abs(stop - start), disable, desc)
    for i in range(start, stop, step):
        yield i
        bar.update()
    bar.close()


def edict(p: float = 0.93) -> EDICT:
    """EDICT with mixing weight p (two ε evaluations per step; exact inversion)."""
    return EDICT(p)
