"""The default exact configuration: which exponential BELM, and which λ-warp of its grid, for
N steps (docs/design.md §12).

Below :data:`SWITCH_STEPS` steps the three-step design ``ebelm3`` (order 2, the smallest
inversion growth any BELM can have: κ = −1/2 for both parasitic roots), from there the
five-step design ``ebelm5`` (order 4; its four starter steps cost too much of a small
budget).  Each runs on the λ-warped grid of :mod:`lmsolvers.loggrid` with its own
:data:`WARP`.  These three constants were chosen on the *validation* noise set (seed 1) of
``benchmarks/exponential_bench.py`` — the rule with the smallest worst-case ratio of its
median error to the best peer's, over NFE 10…200 — and every reported figure comes from the
separate test set (seed 2): ``python -m benchmarks.exponential_bench --phase val`` prints
the ranking.
"""

from __future__ import annotations

from .expdesign import ebelm
from .families import obelm
from .method import LMMethod

__all__ = ["SWITCH_STEPS", "WARP", "default_method", "default_warp"]

#: steps from which the default is ebelm5 (ebelm3 below)
SWITCH_STEPS = 20
#: λ-warp of the default grid per method k (1 = log-uniform; < 1: longer steps at high noise)
WARP = {3: 0.85, 5: 0.9}


def _check(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"the default configuration needs an integer number of steps ≥ 2 "
                         f"(an exact multistep method needs at least two), got {n!r}")
    return n


def default_method(n: int) -> LMMethod:
    """The default exact method for ``n`` steps: ``ebelm3`` below :data:`SWITCH_STEPS`,
    else ``ebelm5`` (and O-BELM for 2 steps, too few for a three-step method)."""
    n = _check(n)
    if n < 3:
        return obelm()
    return ebelm(3) if n < SWITCH_STEPS else ebelm(5)


def default_warp(n: int) -> float:
    """The λ-warp of the default grid for ``n`` steps (:data:`WARP` of the method's k;
    log-uniform for another)."""
    return WARP.get(default_method(n).k, 1.0)
