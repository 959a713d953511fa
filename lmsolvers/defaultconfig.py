"""The default exact configuration: which exponential BELM, with which landing weight, on
which λ-warp of its grid, for N steps (docs/design.md §12).

Regimes by the number of steps (:data:`REGIMES`): few steps take the three-step design
``ebelm3`` (order 2, the smallest inversion growth any BELM can have: κ = −1/2 for both
parasitic roots); from 20 steps the five-step ``ebelm5`` (order 4; its four starter steps
cost too much of a smaller budget), its grid's warp changing at 30 and 40 steps, and from
40 steps with half the weight on its landing's defect (γ = 1/2 in
:func:`~lmsolvers.exponential.landing_relation`; on the digits DDPM's validation its errors
at 50–200 steps on the log-uniform grid are 0.76–0.99× those of γ = 1; exactness holds
for every γ).  Each runs on the λ-warped grid of :mod:`lmsolvers.loggrid` with the regime's
warp.

The regimes were chosen on the *validation* noise set (seed 1, 512 noises) of
``benchmarks/exponential_bench.py``: the validated budgets cut into at most four runs, each
served by one candidate (ebelm3, or ebelm5 with γ = 1, 1/2 or 1/4, on warps 0.7–1.1) whose
inversion of the validation half of the held-out digits gives a latent with
``std(x̄_N)/σ̄_N`` in [0.8, 1.25] (``--phase latent``) and whose u·R stays ≤ 1e-9; the rule
with the smallest worst ratio of its median error to the best peer's (UniPC-3 or
DPM-Solver++(3M), each on its best grid family per budget) at NFE 10, 20, 50 and (÷ 1.2)
100 wins, ties broken by the geometric mean over NFE 10…200.  Every reported figure comes
from the separate test set (seed 2): ``python -m benchmarks.exponential_bench --phase val
--n-val 512`` then ``--phase latent`` prints the ranking.  A regime covers the N from its
first budget up to the next regime's; N between validated budgets inherit it unvalidated.
The flow schedules' last regime (from 100 calls) is validated at 100 only (the flow
validation ran up to 100 calls).
"""

from __future__ import annotations

from .expdesign import ebelm
from .families import obelm
from .method import LMMethod

__all__ = ["REGIMES", "FLOW_REGIMES", "default_method", "default_warp", "regime_warp"]

#: ``(first N, k, warp, γ)``: from N steps on, the designed ``ebelm<k>`` with the weight γ of
#: its landing's defect (:func:`~lmsolvers.exponential.landing_relation`, ``"adams"``), on
#: the grid with that λ-warp (1 = log-uniform; < 1: longer steps at high noise) —
#: DDPM-family schedules, chosen on the digits DDPM's validation set
REGIMES = ((3, 3, 0.8, 1.0), (20, 5, 1.0, 1.0), (30, 5, 1.1, 1.0), (40, 5, 1.0, 0.5))
#: the same for flow schedules (N: the pipeline's steps, i.e. model calls, the α = 0 entry
#: step included), chosen on the digits rectified-flow model's validation set
FLOW_REGIMES = ((4, 3, 1.0, 1.0), (20, 5, 0.9, 1.0), (30, 5, 1.1, 1.0), (100, 5, 0.75, 1.0))


def _check(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"the default configuration needs an integer number of steps ≥ 2 "
                         f"(an exact multistep method needs at least two), got {n!r}")
    return n


def _regimes(flow: bool) -> tuple[tuple[int, int, float, float], ...]:
    return FLOW_REGIMES if flow else REGIMES


def _regime(n: int, flow: bool) -> tuple[int, int, float, float]:
    return [r for r in _regimes(flow) if r[0] <= n][-1]


def default_method(n: int, flow: bool = False) -> LMMethod:
    """The default exact method for ``n`` steps (:data:`REGIMES`; :data:`FLOW_REGIMES` for a
    flow schedule's n model calls; O-BELM below the first regime: 2 steps, or 2–3 model calls
    of a flow schedule, whose α = 0 entry step leaves one step fewer for the method)."""
    n = _check(n)
    if n < _regimes(flow)[0][0]:
        return obelm()
    _, k, _, gamma = _regime(n, flow)
    return ebelm(k, "adams", gamma)


def default_warp(n: int, flow: bool = False) -> float:
    """The λ-warp of the default grid for ``n`` steps (log-uniform below the first regime)."""
    n = _check(n)
    return 1.0 if n < _regimes(flow)[0][0] else _regime(n, flow)[2]


def regime_warp(k: int, n: int, flow: bool = False) -> float:
    """The warp for a k-step exponential BELM chosen explicitly for ``n`` steps: the
    default's when the default at n has the same k, else that of the first regime with
    this k, else log-uniform."""
    regimes = _regimes(flow)
    if n >= regimes[0][0] and _regime(n, flow)[1] == k:
        return _regime(n, flow)[2]
    return next((r[2] for r in regimes if r[1] == k), 1.0)
