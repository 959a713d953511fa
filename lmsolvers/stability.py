"""Stability of a method: its equal-step roots and the growth of its parasitic modes on a grid.

The numerics of parasitic growth live in :mod:`lmsolvers.parasitic` and each method
knows its own (:meth:`~lmsolvers.engine.Integrator.amplification`); this module is
the public face: :func:`amplification`, :func:`roundoff_amplification`,
:func:`is_zero_stable` and :func:`stability_report` (docs/design.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .analysis import characteristic_polynomial, root_condition, roots_of
from .grid import Grid
from .method import LMMethod

__all__ = ["amplification", "roundoff_amplification", "is_zero_stable", "stability_report",
           "StabilityReport"]


def amplification(method: Any, grid: Grid, direction: str = "backward") -> float:
    """Largest growth of parasitic modes from any step to the end of the run.

    ``direction="forward"`` (sampling, node N → 0) or ``"backward"`` (inversion,
    0 → N): for an LM method ``max_r ‖Π (companion matrices after r)‖₂``, at least 1
    (:mod:`lmsolvers.parasitic`); EDICT knows its own mode.  Round-off made during a
    run is amplified by at most about this factor.  ``"both"`` returns the larger of
    the two; ``inf`` when the growth overflows float64.
    """
    if direction not in ("forward", "backward", "both"):
        raise ValueError(f"direction must be 'forward', 'backward' or 'both', got {direction!r}")
    return method.amplification(grid, direction)


def roundoff_amplification(method: Any, grid: Grid) -> float:
    """How much a round trip (invert, then sample) may magnify unit round-off: the local
    conditioning of a step times the backward parasitic growth.  A bound, not an
    estimate; :func:`lmsolvers.invert` warns when it times the unit round-off exceeds
    its tolerance (:mod:`lmsolvers.exactness`)."""
    return method.roundoff_amplification(grid)


def is_zero_stable(method: LMMethod, direction: str = "forward") -> bool:
    """Root condition of the equal-step limit (exact for rational coefficients).

    ``"forward"``: sampling's ``ρ(ζ) = ζ^k − Σ a_j ζ^{k−j}`` has its roots in
    ``|ζ| ≤ 1``, simple on the circle; ``"backward"``: the same for inversion (roots
    ``1/ζ``); ``"both"``: all roots simple and on the unit circle.  See
    :mod:`lmsolvers.analysis`.
    """
    return root_condition(method, direction)


@dataclass(frozen=True)
class StabilityReport:
    """Equal-step roots and verdicts, and parasitic growth on a concrete grid."""

    method: str
    rho: str
    roots: list
    verdict: dict[str, bool]
    grid_steps: int
    h_ratio: float
    forward: float
    backward: float
    ak_range: tuple[float, float]

    def __str__(self) -> str:
        lines = [f"stability report: {self.method}",
                 f"  equal steps: rho(zeta) = {self.rho}"]
        lines += [f"    root {r}" for r in self.roots]
        lines.append("  zero-stable: " + ", ".join(f"{d}={'yes' if v else 'NO'}"
                                                    for d, v in self.verdict.items()))
        lines += [
            f"  grid: N = {self.grid_steps}, h_N/h_1 = {self.h_ratio:.4g} "
            f"((h_N/h_1)^2 = {self.h_ratio**2:.4g})",
            f"  parasitic amplification over the run: sampling {self.forward:.4g}, "
            f"inversion {self.backward:.4g}",
            f"  a_k on the grid: [{self.ak_range[0]:.4g}, {self.ak_range[1]:.4g}]",
        ]
        return "\n".join(lines)


def stability_report(method: LMMethod, grid: Grid) -> StabilityReport:
    """Equal-step root condition plus the growth of parasitic modes on ``grid``.

    The growth is :func:`amplification`: the largest norm of a product of the
    companion matrices ``P_i`` (principal mode removed) from any step to the end of
    the run, for sampling and for inversion (O-BELM: about ``(h_N/h_1)²``).
    """
    rho = characteristic_polynomial(method)
    a = method.coefficients(grid).a
    return StabilityReport(
        method=method.name,
        rho=str(rho.as_expr()),
        roots=[str(r) for r in roots_of(rho)],
        verdict={d: is_zero_stable(method, d) for d in ("forward", "backward", "both")},
        grid_steps=grid.N,
        h_ratio=float(grid.h[-1] / grid.h[0]),
        forward=amplification(method, grid, "forward"),
        backward=amplification(method, grid, "backward"),
        ak_range=(float(a[:, -1].min()), float(a[:, -1].max())),
    )
