"""Growth of parasitic modes of a VSVF LM method on a concrete grid.

The homogeneous part of a step maps the window ``(x̄_{i}, …, x̄_{i+k−1})`` to
``(x̄_{i−1}, …, x̄_{i+k−2})``.  A consistent method (``Σ_j a_j = 1``) maps constants
to constants: that is the principal mode.  The parasitic modes live on the
differences ``d_m = x̄_{i−1+m} − x̄_{i+m}`` (m = 1..k−1), on which the step acts by
the (k−1)×(k−1) companion matrix ``P_i`` with first row
``p_m = −Σ_{j>m} a_{i,j}`` and ones below the diagonal (for k = 2, ``P_i = −a_{i,2}``,
O-BELM's parasitic root ``−h_i²/h_{i+1}²``).

Sampling applies ``P_i`` for i = N−k+1 … 1; inversion applies ``P_i^{−1}`` in the
opposite order, so a method whose parasitic modes decay while sampling amplifies
them while inverting (DESIGN.md §3).  :func:`amplification` returns the largest
growth a perturbation made at some step suffers until the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .grid import Grid
from .method import LMMethod

__all__ = ["parasitic_matrices", "amplification", "roundoff_amplification"]


def parasitic_matrices(method: LMMethod, grid: Grid) -> np.ndarray:
    """``P_i`` for every step, shape ``(N−k+1, k−1, k−1)``; row r is the step landing on r."""
    a = method.coefficients(grid).a
    if not np.allclose(a.sum(axis=1), 1.0, rtol=0, atol=1e-9):
        raise ValueError(f"method {method.name!r} is not consistent (Σ a_j ≠ 1); its parasitic "
                         "modes are not separated from the principal one")
    M, k = a.shape
    P = np.zeros((M, k - 1, k - 1))
    tail = np.cumsum(a[:, ::-1], axis=1)[:, ::-1]  # tail[:, m] = Σ_{j ≥ m+1} a_j (0-based)
    P[:, 0, :] = -tail[:, 1:]
    for m in range(1, k - 1):
        P[:, m, m - 1] = 1.0
    return P


def amplification(method: LMMethod | Any, grid: Grid, direction: str = "backward") -> float:
    """Largest growth of parasitic modes from any step to the end of the run.

    ``direction="forward"`` (sampling, node N → 0) or ``"backward"`` (inversion,
    0 → N): ``max_r ‖Π (step matrices after r)‖₂``, at least 1.  Round-off made
    during a run is amplified by at most about this factor, so exactness tests scale
    their tolerance by it.  ``"both"`` returns the larger of the two.
    """
    if not isinstance(method, LMMethod):  # coupled integrators (EDICT) know their own modes
        return method.amplification(grid, direction)
    if direction == "both":
        return max(amplification(method, grid, "forward"),
                   amplification(method, grid, "backward"))
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward', 'backward' or 'both', got {direction!r}")
    if method.k == 1:
        return 1.0
    P = parasitic_matrices(method, grid)
    eye = np.eye(method.k - 1)
    best, R = 1.0, eye
    if direction == "forward":
        # a perturbation made at the step landing on node r then passes P_{r-1}, …, P_0
        for r in range(1, P.shape[0]):
            R = R @ P[r - 1]
            best = max(best, float(np.linalg.norm(R, 2)))
    else:
        # made at inversion step r, it then passes P_{r+1}^{-1}, …, P_{N-k}^{-1}
        Pinv = np.linalg.inv(P)
        for r in range(P.shape[0] - 1, 0, -1):
            R = R @ Pinv[r]
            best = max(best, float(np.linalg.norm(R, 2)))
    return best


def roundoff_amplification(method: LMMethod | Any, grid: Grid) -> float:
    """How much a round trip (invert, then sample) may magnify unit round-off.

    Each step commits a round-off of about ``u · Σ_j |coefficient_j| · |x̄|``; the
    local factor is the larger of ``Σ_j |a_j|`` (sampling) and
    ``(1 + Σ_{j<k} |a_j|)/|a_k|`` (inversion), large when adjacent steps differ a lot
    (O-BELM's ``a_1 = 1 − h_i²/h_{i+1}²``).  The backward parasitic growth
    (:func:`amplification`) then carries it to the end of the run.  Exactness
    tests scale their tolerance by this product; it is a bound, not an estimate.
    """
    if not isinstance(method, LMMethod):
        return max(1.0, amplification(method, grid, "backward"))
    a = np.abs(method.coefficients(grid).a)
    local = np.maximum(a.sum(axis=1), (1.0 + a[:, :-1].sum(axis=1)) / a[:, -1])
    return max(1.0, float(local.max())) * amplification(method, grid, "backward")


def is_zero_stable(method: LMMethod, direction: str = "forward") -> bool:
    """Root condition of the equal-step limit (exact for rational coefficients).

    ``"forward"``: sampling's ``ρ(ζ) = ζ^k − Σ a_j ζ^{k−j}`` has its roots in
    ``|ζ| ≤ 1``, simple on the circle; ``"backward"``: the same for inversion (roots
    ``1/ζ``); ``"both"``: all roots simple and on the unit circle.  See
    :mod:`lmsolvers.analysis`.
    """
    from .analysis import root_condition

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
    from .analysis import characteristic_polynomial, roots_of

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
