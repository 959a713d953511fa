"""Growth of the parasitic modes of a linear multistep recursion on a concrete grid.

The homogeneous part of a step maps the window ``(x̄_{i}, …, x̄_{i+k−1})`` to
``(x̄_{i−1}, …, x̄_{i+k−2})``.  A consistent method (``Σ_j a_j = 1``) maps constants to
constants: that is the principal mode.  The parasitic modes live on the differences
``d_m = x̄_{i−1+m} − x̄_{i+m}`` (m = 1..k−1), on which the step acts by the
(k−1)×(k−1) companion matrix ``P_i`` with first row ``p_m = −Σ_{j>m} a_{i,j}`` and ones
below the diagonal (for k = 2, ``P_i = −a_{i,2}``, O-BELM's parasitic root
``−h_i²/h_{i+1}²``).

Sampling applies ``P_i`` for i = N−k+1 … 1; inversion applies ``P_i^{−1}`` in the
opposite order, so a method whose parasitic modes decay while sampling amplifies them
while inverting (docs/design.md §4).  Only numpy here: the methods call in.
"""

from __future__ import annotations

import numpy as np

__all__ = ["companion_matrices", "companion_growth", "local_roundoff", "gaussian_growth"]


def companion_matrices(a: np.ndarray) -> np.ndarray:
    """``P_i`` for every step from the a-coefficients (rows: steps), shape ``(M, k−1, k−1)``."""
    if not np.allclose(a.sum(axis=1), 1.0, rtol=0, atol=1e-9):
        raise ValueError("the method is not consistent (Σ a_j ≠ 1); its parasitic modes are "
                         "not separated from the principal one")
    M, k = a.shape
    P = np.zeros((M, k - 1, k - 1))
    tail = np.cumsum(a[:, ::-1], axis=1)[:, ::-1]  # tail[:, m] = Σ_{j ≥ m+1} a_j (0-based)
    P[:, 0, :] = -tail[:, 1:]
    for m in range(1, k - 1):
        P[:, m, m - 1] = 1.0
    return P


def companion_growth(a: np.ndarray, direction: str) -> float:
    """Largest growth of a perturbation from any step to the end of the run, at least 1.

    ``"forward"`` (sampling, node N → 0) or ``"backward"`` (inversion, 0 → N):
    ``max_r ‖Π (step matrices after r)‖₂``.  ``inf`` if the product overflows float64.
    """
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    M, k = a.shape
    if k == 1:
        return 1.0
    return _max_product_norm(companion_matrices(a), direction)


def _max_product_norm(P: np.ndarray, direction: str) -> float:
    """``max_r ‖Π (step matrices after r)‖₂`` (at least 1) of the per-step matrices ``P``
    (row r: the step landing on node r), ``inf`` if the product overflows float64.
    Sampling: a perturbation made at the step landing on node r then passes P_{r-1}, …, P_0;
    inversion: made at inversion step r, it then passes P_{r+1}^{-1}, …, P_{M-1}^{-1}."""
    M = P.shape[0]
    best, R = 1.0, np.eye(P.shape[1])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if direction == "forward":
            steps = [P[r - 1] for r in range(1, M)]
        else:
            Pinv = np.linalg.inv(P)
            steps = [Pinv[r] for r in range(M - 1, 0, -1)]
        for S in steps:
            R = R @ S
            if not np.all(np.isfinite(R)):
                return float("inf")
            best = max(best, float(np.linalg.norm(R, 2)))
    return best


def local_roundoff(a: np.ndarray) -> float:
    """The largest local conditioning of a step, read both ways, at least 1.

    Each step commits a round-off of about ``u · Σ_j |coefficient_j| · |x̄|``: the local
    factor is ``Σ_j |a_j|`` when sampling and ``(1 + Σ_{j<k} |a_j|)/|a_k|`` when inverting
    (large where adjacent steps differ a lot, e.g. O-BELM's ``a_1 = 1 − h_i²/h_{i+1}²``).
    """
    a = np.abs(a)
    with np.errstate(divide="ignore"):
        local = np.maximum(a.sum(axis=1), (1.0 + a[:, :-1].sum(axis=1)) / a[:, -1])
    return max(1.0, float(local.max()))


def gaussian_growth(a: np.ndarray, bh: np.ndarray, sigma_bar: np.ndarray, scale: float,
                    direction: str) -> tuple[float, float]:
    """``(growth, local)`` of a round-off perturbation on the Gaussian test problem.

    Data of scale ``s`` have the flow ``x̄(σ̄) = z·w(σ̄)``, ``w = sqrt(s² + σ̄²)``, i.e.
    ``ε̄ = g(σ̄) x̄`` with ``g = σ̄/(s² + σ̄²)``: the data-prediction Jacobian is
    ``J = s²/(s² + σ̄²)``, 1 where the data vary more than the noise and 0 where not.  On it
    every step is the linear recursion ``x̄_r = Σ_j (a_j + bh_j g_{r+j}) x̄_{r+j}``; measured
    relative to the solution (``y_m = x̄_m/w_m``) its k×k companion matrices give the growth
    of a perturbation from any step to the end of the run (``max_r ‖Π M‖₂``, ≥ 1) in the
    given direction, and ``local`` is the worst local conditioning of a step read both ways
    (the round-off a step commits, relative to the solution's scale).  Unlike
    :func:`companion_growth` (which sees ``ε̄ = 0``: ``J = 1`` at every noise level, a flow
    that never grows) this charges no growth to a method for following a solution that
    grows like σ̄ (docs/design.md §12).
    """
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    M_rows, k = a.shape
    s = np.asarray(sigma_bar, dtype=np.float64)
    w = np.sqrt(scale**2 + s**2)
    g = s / (scale**2 + s**2)
    rows = np.arange(M_rows)
    idx = rows[:, None] + np.arange(1, k + 1)[None, :]  # nodes r+1..r+k
    c = (a + bh[:, 1:] * g[idx]) * w[idx] / w[rows][:, None]
    extra = (np.abs(a) + np.abs(bh[:, 1:]) * g[idx]) * w[idx] / w[rows][:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        local = np.maximum(extra.sum(axis=1),
                           (1.0 + extra[:, :-1].sum(axis=1)) / np.abs(c[:, -1]))
    local_max = max(1.0, float(np.nanmax(local)))
    if k == 1:
        return 1.0, local_max
    Ms = np.zeros((M_rows, k, k))
    Ms[:, 0, :] = c
    for m in range(1, k):
        Ms[:, m, m - 1] = 1.0
    return _max_product_norm(Ms, direction), local_max
