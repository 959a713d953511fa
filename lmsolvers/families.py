"""The method families, each written as an instance of the VSVF LM form.

- :func:`ddim`: explicit Euler in σ̄ (k = 1).  Not backward explicit (``b_1 = −1``),
  so it cannot be inverted exactly; :func:`lmsolvers.ddim_inversion` is the classic
  approximate inversion.
- :func:`obelm`: the paper's O-BELM, the maximal-order 2-step BELM, derived.
- :func:`bdia`: BDIA(γ), a 2-step BELM of order 1 tied to the VP schedule.
- :func:`obelm_landing`: O-BELM whose step onto σ̄ = 0 is damped (the default of
  :class:`lmsolvers.adapters.DiffusionSampler`, with :mod:`lmsolvers.griddesign`).
- :func:`belm`: designed k-step BELMs (see :mod:`lmsolvers.design`).
- :func:`lmsolvers.edict` lives in :mod:`lmsolvers.edict` (a coupled integrator).
"""

from __future__ import annotations

import math
from functools import cache

import sympy as sp

from .method import S0, LMMethod, MethodInfo, step_symbols
from .symbolic import maximal_belm, solve_order_conditions

__all__ = ["ddim", "obelm", "bdia", "obelm_landing", "vp_alpha", "LANDING_SWITCH"]

#: ``c`` of :func:`obelm_landing`: the damping acts where ``σ̄_{i−1} ≪ c h_i``
LANDING_SWITCH = sp.Rational(1, 1000)


def vp_alpha(sigma_bar: sp.Expr) -> sp.Expr:
    """The variance-preserving signal scale ``α = 1/sqrt(1 + σ̄²)``."""
    return 1 / sp.sqrt(1 + sigma_bar**2)


@cache
def ddim() -> LMMethod:
    """DDIM: ``x̄_{i−1} = x̄_i − h_i ε̄_i`` (explicit Euler on the σ̄-ODE, order 1)."""
    return LMMethod(
        name="ddim",
        a=(sp.Integer(1),),
        b=(sp.Integer(0), sp.Integer(-1)),
        info=MethodInfo(order=1, design="explicit Euler"),
    )


@cache
def obelm() -> LMMethod:
    """O-BELM (BELM paper, Prop. 4), the order-2 two-step BELM, derived symbolically.

    ``x̄_{i−1} = (h_{i+1}² − h_i²)/h_{i+1}² x̄_i + h_i²/h_{i+1}² x̄_{i+1}
    − (h_i + h_{i+1})/h_{i+1} · h_i ε̄_i``; at equal steps the leapfrog rule.
    """
    return maximal_belm(2)


@cache
def bdia(gamma: float = 1.0) -> LMMethod:
    """BDIA(γ) in σ̄ form (order 1; γ = 0 is DDIM and not invertible).

    BDIA combines, with one ε evaluation at x_i, the DDIM step down to node i−1 and
    γ times the correction of x_{i+1} by the DDIM step up:
    ``x_{i−1} = γ (x_{i+1} − Φ_{i→i+1}(x_i)) + Φ_{i→i−1}(x_i)`` in x-space.  With
    ``r = γ α_{i+1}/α_{i−1}`` (VP α of σ̄) this is
    ``x̄_{i−1} = (1 − r) x̄_i + r x̄_{i+1} − (1 + r h_{i+1}/h_i) h_i ε̄_i``.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, int | float):
        raise TypeError(f"BDIA's gamma must be a real number, got {type(gamma).__name__}")
    gamma = float(gamma)
    if not math.isfinite(gamma) or gamma <= 0.0:
        raise ValueError(
            f"BDIA needs a finite gamma > 0, got {gamma!r}"
            + (" (gamma = 0 is DDIM: a_2 = 0, not bidirectional explicit)" if gamma == 0 else "")
        )
    h1, h2 = step_symbols(2)
    g = sp.nsimplify(gamma, rational=True)
    r = g * vp_alpha(S0 + h1 + h2) / vp_alpha(S0)  # γ α_{i+1}/α_{i−1}
    return LMMethod(
        name=f"bdia({gamma!r})",  # repr: the name parses back to this exact gamma
        a=(1 - r, r),
        b=(sp.Integer(0), -(1 + r * h2 / h1), sp.Integer(0)),
        info=MethodInfo(order=1, design=f"BDIA gamma={gamma!r}", gamma=gamma),
    )


@cache
def obelm_landing(gamma: float = 0.1) -> LMMethod:
    """O-BELM with a damped landing on the clean node σ̄ = 0 (``0 < γ ≤ 1``).

    Derived, not retyped: the two-step BELMs of order ≥ 1 form the one-parameter
    family (:func:`~lmsolvers.symbolic.solve_order_conditions` with ``a_2`` free)

        ``x̄_{i−1} = (1 − a_2) x̄_i + a_2 x̄_{i+1} − (h_i + a_2 h_{i+1}) ε̄_i``,

    O-BELM is its member ``a_2 = h_i²/h_{i+1}²`` (order 2), and this method takes

        ``a_2 = (h_i²/h_{i+1}²) · (σ̄_{i−1} + γ c h_i)/(σ̄_{i−1} + c h_i)``,  ``c = 1/1000``.

    Every step that does not land on σ̄ = 0 is O-BELM up to a relative change of
    ``a_2`` below ``c h_i/σ̄_{i−1}`` (≤ 0.2 % on the designed grids); the step landing
    on σ̄_{i−1} = 0 has ``a_2`` multiplied by γ.  Why: below the least noisy training
    level σ̄_min a diffusion model's flow continues with a frozen data prediction, a
    straight line in σ̄ (DPM-Solver's last step and the RK4 reference both end that
    way), so the solution has a kink at σ̄_min; the landing step is exact on the
    straight part for any ``a_2`` and errs by ``a_2`` times the Euler defect over
    ``[σ̄_1, σ̄_2]``, which O-BELM's ``a_2 ≈ 0.6–4`` multiplies instead of damping.  One
    first-order step keeps the global order 2; inversion divides by the landing ``a_2``
    once (the round-off amplification grows by about 1/γ, :meth:`LMMethod.amplification`
    reports it).  ``γ = 1`` is O-BELM.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, int | float):
        raise TypeError(f"gamma must be a real number, got {type(gamma).__name__}")
    gamma = float(gamma)
    if not (math.isfinite(gamma) and 0.0 < gamma <= 1.0):
        raise ValueError(f"obelm_landing needs 0 < gamma ≤ 1 (gamma = 0 would make a_2 = 0 "
                         f"on the landing step: not invertible), got {gamma!r}")
    h1, _ = step_symbols(2)
    a, b = solve_order_conditions(2, 1, parameters=["a2"])
    g = sp.nsimplify(gamma, rational=True)
    c = LANDING_SWITCH
    theta = maximal_belm(2).a[1] * (S0 + g * c * h1) / (S0 + c * h1)
    sub = {sp.Symbol("a2"): theta}
    return LMMethod(
        name=f"obelm-landing({gamma!r})",
        a=tuple(sp.factor(e.xreplace(sub)) for e in a),
        b=tuple(sp.factor(e.xreplace(sub)) for e in b),
        info=MethodInfo(order=2, design=f"O-BELM, landing on sigma_bar = 0 damped by {gamma!r}",
                        gamma=gamma),
    )
