"""EDICT (Wallace et al., 2023), the published method, as a coupled invertible integrator.

EDICT carries two states (x, y) and mixes them with weight p.  The paper's step from
timestep t to t−1, with DDIM's ``a_t = sqrt(ᾱ_{t−1}/ᾱ_t)`` and b_t, is

    x_inter = a_t x_t + b_t ε(y_t, t)          y_inter = a_t y_t + b_t ε(x_inter, t)
    x_{t−1} = p x_inter + (1−p) y_inter        y_{t−1} = p y_inter + (1−p) x_{t−1}

Note the second network call: ``x_inter`` already lies at noise level t−1 (it carries
the factor α_{t−1}), yet the model sees it with the timestep t.  In σ̄ form
(``x̄ = x/α``, a DDIM step is ``z̄ ↦ z̄ − h_i ε̄(·, σ̄_i)``, ``ε̄(z̄, σ̄_i) = ε(α_i z̄, t_i)``)
one step from node i to i−1 is therefore::

    x̄′ = x̄_i − h_i ε̄(ȳ_i, σ̄_i)        ȳ′ = ȳ_i − h_i ε̄((α_{i−1}/α_i) x̄′, σ̄_i)
    x̄_{i−1} = p x̄′ + (1−p) ȳ′           ȳ_{i−1} = p ȳ′ + (1−p) x̄_{i−1}

The "σ̄-consistent" variant that feeds ``x̄′`` itself (model input α_i x̄′) is a
different method and was measured to give noise on the digits DDPM where the
published one gives digits; it is not offered (docs/design.md §2).  With
``alternate=True`` odd steps (counted from the top) update ȳ first, the order of the
diffusers community pipeline's ``leapfrog_steps``.

Each line is explicit in both directions, so the inverse is exact for any number of
steps (the community pipeline inverts exactly only for even counts: docs/design.md
§8).  Mixing in x̄ or in x is the same because both states share α.  Two ε evaluations
per step.  Read as a chain ``x̄_N, ȳ_N, x′, y′, x̄_{N−1}, ȳ_{N−1}, …`` every element is a
2-step BELM of the two before it with ``a_2 ∈ {1, p}``
(tests/test_integrate.py::test_edict_is_a_two_step_belm_on_its_chain).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .engine import Integrator, Run, combine
from .grid import Grid
from .latent import Latent, freeze_context

__all__ = ["EDICT", "edict"]


@dataclass(frozen=True, eq=False)
class EDICT(Integrator):
    """The published EDICT coupled integrator with mixing weight ``p`` (0 < p < 1, paper
    0.93); ``alternate`` swaps the update order on odd steps (module docstring)."""

    p: float = 0.93
    alternate: bool = False

    k = 2  # the latent is the pair (x̄_N, ȳ_N)
    span = 1
    nfe_per_step = 2
    aux_name = "y"

    def __post_init__(self) -> None:
        p = self.p
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 < float(p) < 1.0:
            raise ValueError(f"EDICT needs a mixing weight 0 < p < 1 (it divides by p when "
                             f"inverting), got {p!r}")
        object.__setattr__(self, "p", float(p))

    @property
    def name(self) -> str:
        """``"edict(p)"`` (``repr`` of p, so the name parses back exactly)."""
        return f"edict({self.p!r}{', alternate' if self.alternate else ''})"

    @property
    def key(self) -> str:
        """Exact identity: the published form, p and the update order."""
        return f"{self.name}#published"

    @property
    def order(self) -> int:
        """EDICT is first order (DDIM steps, mixed)."""
        return 1

    def amplification(self, grid: Grid, direction: str = "backward") -> float:
        """Growth of the mode ``x̄ − ȳ``: sampling multiplies it by ``p²`` per step,
        inversion by ``p⁻²``; the largest growth from a step to the end of the run
        (``inf`` beyond float64)."""
        if direction not in ("forward", "backward", "both"):
            raise ValueError(f"direction must be 'forward', 'backward' or 'both', got "
                             f"{direction!r}")
        if direction == "forward":
            return 1.0
        log_growth = -2.0 * (grid.N - 1) * math.log(self.p)
        return math.exp(log_growth) if log_growth < 709.0 else float("inf")

    # ----------------------------------------------------------- the protocol
    def prepare(self, grid: Grid, dtype: torch.dtype, direction: str) -> list[float]:
        """The ratios ``α_{i−1}/α_i`` of every step (index i−1)."""
        a = grid.alphas
        return [float(a[i - 1] / a[i]) for i in range(1, grid.N + 1)]

    def _order(self, grid: Grid, i: int) -> bool:
        """Whether the step from node i updates ȳ first."""
        return self.alternate and (grid.N - i) % 2 == 1

    def start(self, run: Run, plan: list[float], x: torch.Tensor) -> None:
        """Both chains start at ``x̄_N``."""
        run.window.put(run.grid.N, x, aux=x)

    def load(self, run: Run, plan: list[float], latent: Latent) -> None:
        """The latent ``(x̄_N, ȳ_N)``."""
        run.window.put(run.grid.N, latent.states[0], aux=latent.states[1])

    def step(self, run: Run, plan: list[float], r: int) -> None:
        """From node i = r + 1 down to node r (two ε evaluations)."""
        w, g, i = run.window, run.grid, r + 1
        s, h, ratio = float(g.sigma_bar[i]), float(g.h[i - 1]), plan[i - 1]
        first, second = w[i], w.aux(i)
        swap = self._order(g, i)
        if swap:
            first, second = second, first
        where = f"node {i}"
        f1 = combine([(1.0, first), (-h, run.evaluate(second, s, where))])
        f2 = combine([(1.0, second), (-h, run.evaluate(f1 * ratio, s, where))])
        xi, yi = (f2, f1) if swap else (f1, f2)
        p, q = self.p, 1.0 - self.p
        xs = combine([(p, xi), (q, yi)])
        ys = combine([(p, yi), (q, xs)])
        w.put(r, xs, aux=ys)
        w.drop(i)

    def start_inverse(self, run: Run, plan: list[float], x0: torch.Tensor) -> None:
        """Both chains start at ``x̄_0``."""
        run.window.put(0, x0, aux=x0)

    def backward_step(self, run: Run, plan: list[float], r: int) -> None:
        """Every line of :meth:`step` solved backwards, from node r up to node r + 1."""
        w, g, i = run.window, run.grid, r + 1
        s, h, ratio = float(g.sigma_bar[i]), float(g.h[i - 1]), plan[i - 1]
        p, q = self.p, 1.0 - self.p
        xs, ys = w[r], w.aux(r)
        yi = combine([(1.0 / p, ys), (-q / p, xs)])
        xi = combine([(1.0 / p, xs), (-q / p, yi)])
        swap = self._order(g, i)
        f1, f2 = (yi, xi) if swap else (xi, yi)
        where = f"node {i}"
        second = combine([(1.0, f2), (h, run.evaluate(f1 * ratio, s, where))])
        first = combine([(1.0, f1), (h, run.evaluate(second, s, where))])
        x_up, y_up = (second, first) if swap else (first, second)
        w.put(i, x_up, aux=y_up)
        w.drop(r)

    def latent(self, run: Run, plan: list[float], context: Mapping[str, Any] | None) -> Latent:
        """The coupled pair at node N."""
        N, w = run.grid.N, run.window
        return Latent(states=(w[N], w.aux(N)), method=self.name, method_key=self.key,
                      grid=run.grid, context=freeze_context(context), nodes=(N, N))


def edict(p: float = 0.93, alternate: bool = False) -> EDICT:
    """The published EDICT with mixing weight p (two ε evaluations per step; exact
    inversion for any number of steps); ``alternate=True`` alternates the update order."""
    return EDICT(p, alternate)
