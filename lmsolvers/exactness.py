"""When "exact" inversion is not: the predicted round-trip error and what to do about it.

An exact inversion is exact in exact arithmetic.  In floating point every step rounds,
and the rounding errors made while inverting are carried to the end of the run by the
method's backward parasitic growth (:func:`lmsolvers.amplification`).  The round trip
``sample(invert(x̄_0))`` therefore errs by at most about

    u(dtype) · R(method, grid)

with u the unit round-off of the state's dtype and R the round-off amplification
(:func:`lmsolvers.stability.roundoff_amplification`: local conditioning of a step
times the backward growth).  R is a bound, not an estimate: round-off of random sign
accumulates far less.  :func:`lmsolvers.invert` compares the bound with a tolerance
and warns (:class:`ExactnessWarning`) or, with ``strict=True``, refuses
(:class:`ExactnessError`) — never a silently inexact "exact" inversion
(docs/design.md §4).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

__all__ = [
    "ExactnessWarning",
    "ExactnessError",
    "SolverInstabilityError",
    "DEFAULT_TOLERANCE",
    "unit_roundoff",
    "predicted_roundtrip_error",
    "check_exactness",
]

#: default bound on the predicted relative round-trip error (0.1: the bound is
#: pessimistic by orders of magnitude, so a warning means digits are really at risk)
DEFAULT_TOLERANCE = 1e-1


class ExactnessWarning(UserWarning):
    """The predicted round-trip error of an inversion exceeds the tolerance."""


class ExactnessError(ValueError):
    """``strict=True`` and the predicted round-trip error exceeds the tolerance."""


class SolverInstabilityError(FloatingPointError):
    """A state became NaN/Inf because the solver diverged (not because ε failed)."""


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the machine epsilon of a floating dtype (2⁻⁵³ for float64)."""
    return float(torch.finfo(dtype).eps) / 2.0


def predicted_roundtrip_error(method: Any, grid: Any, dtype: torch.dtype = torch.float64
                              ) -> float:
    """``u(dtype) · R(method, grid)``: bound on the relative error of a round trip.

    ``method`` is any :class:`~lmsolvers.engine.Integrator`.  ``inf`` when the
    amplification overflows float64.  The bound covers the state's arithmetic, not an ε
    that runs in a lower precision than the state: there, the rare sample whose input cast
    rounds differently in the two runs gets a round trip near that precision instead
    (docs/design.md §4; ``bitexact=True`` removes it).
    """
    return unit_roundoff(dtype) * method.roundoff_amplification(grid)


def check_exactness(method: Any, grid: Any, dtype: torch.dtype, tolerance: float,
                    strict: bool, stacklevel: int = 3, what: str = "inversion") -> float:
    """Warn (or raise, ``strict``) when the predicted round-trip error exceeds ``tolerance``.

    Returns the predicted error.  The message names the figure and the remedies.
    """
    if not tolerance > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance!r}")
    pred = predicted_roundtrip_error(method, grid, dtype)
    if pred <= tolerance:
        return pred
    amp = method.roundoff_amplification(grid)
    msg = (f"{what} with {method.name!r} on this grid (N = {grid.N}) in {dtype} is not "
           f"exact in practice: round-off amplification {amp:.3g} × unit round-off "
           f"{unit_roundoff(dtype):.3g} predicts a relative round-trip error up to "
           f"{pred:.3g} > tolerance {tolerance:.3g}. Use fewer steps, another method "
           "(O-BELM, a bidirectional belm(k)), a float64 state, or bitexact=True")
    if strict:
        raise ExactnessError(msg)
    warnings.warn(msg, ExactnessWarning, stacklevel=stacklevel)
    return pred
