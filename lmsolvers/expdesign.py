"""Designed exponential BELMs: the best k-step members under stability, accuracy and bounded
inversion growth (docs/design.md §12).

**The family.**  An exponential BELM (:mod:`lmsolvers.exponential`) is fixed by its ȳ-weights
``a_1..a_k``; its D-weights are the ones exact for D polynomial of degree ≤ k − 2 in λ
(:func:`~lmsolvers.expsymbolic.exp_weights`, order k − 1 on any grid).  Its parasitic roots
must lie on the unit circle and be simple (bidirectional zero-stability: sampling must not
grow them, and inversion runs the recursion backwards, with the roots ``1/ζ``), so ρ is

    ρ(ζ) = (ζ − 1) (ζ + 1)^{[k even]} Π_i (ζ² − t_i ζ + 1),     t_i = 2 cos θ_i,

with ``⌊(k − 1)/2⌋`` parameters.  Rational ``t_i`` give rational a's.

**What decides.**  On the data-form test equation ``dȳ/dλ = J ȳ`` (J the Jacobian of the
data prediction, between 0 for noise-like directions and 1 for directions the data span)
a parasitic root grows like ``e^{κ_j J ℓ}`` against the solution's ``e^{J ℓ}``
(:func:`~lmsolvers.expsymbolic.growth_parameters`), so while *inverting*, a parasitic mode
excited by a local error grows relative to the solution by ``exp((1 − κ_j) ∫ J dλ)``.
That is what turns an exactly invertible sampler into one whose latents are far from
noise-like (the k = 4 member with a = (1, 0, −1, 1) has κ = −1.22 at ζ = −1: latents of
real digits 10²–10⁴ times too large at 10 steps).  The sum rule ``Σ_j κ_j = 0`` of BELMs
bounds the best possible: some parasitic κ is ≤ −1/(k − 1).  A design therefore minimises

1. the inversion growth exponent ``g = max_j (1 − κ_j)`` over the parasitic roots,
   subject to a root-separation margin (chord ≥ 1 between any two roots, as the ε-form
   designs of :mod:`lmsolvers.design`: merging roots make growth secular);
2. then the equal-step error constant (the classical constant of the ``ℓ → 0`` limit);

and snaps the ``t_i`` to the simplest rationals whose ``g`` stays within 2 % and that keep
the margin.  k = 3: every member has κ = −1/2 (optimal, ``g = 3/2``); the error constant
picks the edge of the margin.  k = 4: ``g`` falls towards the margin's edge ``t = 1``
(a = (1, 0, −1, 1), ``g = 2.22``).  k = 5: ``g ≈ 1.6``.  k = 6: the margin leaves one
member, ``ρ = ζ⁶ − 1``, with ``g = 4.4``: usable for sampling smooth problems, not for
inverting.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import numpy as np
import sympy as sp

from .exponential import ExponentialLMMethod, exponential_method
from .method import MethodInfo

__all__ = ["ExpDesign", "exp_design", "ebelm", "EXP_KS", "MARGIN"]

#: the k a design exists for
EXP_KS = (3, 4, 5, 6)
#: chord between roots (as :data:`lmsolvers.design.MARGIN`)
MARGIN = 1.0
#: how far (relative) snapping to simple rationals may worsen ``g``
SNAP_TOLERANCE = 0.02


def rho_coefficients(k: int, ts: tuple) -> list:
    """``a_1..a_k`` of ``ρ = (ζ − 1)(ζ + 1)^{[k even]} Π (ζ² − t ζ + 1)`` (exact for exact t)."""
    z = sp.Symbol("z")
    rho = (z - 1) * (z + 1) ** int(k % 2 == 0) * sp.Mul(*[z**2 - sp.sympify(t) * z + 1
                                                       for t in ts])
    coeffs = sp.Poly(sp.expand(rho), z).all_coeffs()
    if len(coeffs) != k + 1:
        raise ValueError(f"{len(ts)} parameters do not make a {k}-step ρ")
    return [-c for c in coeffs[1:]]


def _classical_numeric(a: np.ndarray) -> np.ndarray:
    """``b_1..b_{k−1}`` of :func:`~lmsolvers.expsymbolic.classical_weights`, in floats."""
    k = a.size
    M = np.array([[l * (-m) ** (l - 1) for m in range(1, k)] for l in range(1, k)], float)
    rhs = -np.array([sum(a[j - 1] * (-j) ** l for j in range(1, k + 1)) for l in range(1, k)])
    return np.linalg.solve(M, rhs)


def _scores(k: int, ts: tuple) -> tuple[float, float, float]:
    """``(margin violation, g, |error constant|)`` of the member with parameters ``ts``."""
    rho = np.array([1.0, -1.0]) if k % 2 else np.array([1.0, 0.0, -1.0])
    for t in ts:
        rho = np.polymul(rho, [1.0, -float(t), 1.0])
    if rho.size != k + 1:
        raise ValueError(f"{len(ts)} parameters do not make a {k}-step ρ")
    a = -rho[1:]
    b = _classical_numeric(a)
    roots = np.roots(rho)
    chords = [abs(x - y) for x, y in itertools.combinations(roots, 2)]
    viol = max(0.0, MARGIN - min(chords))
    sig = np.concatenate([[0.0], b, [0.0]])
    kappa = np.polyval(sig, roots) / (roots * np.polyval(np.polyder(rho), roots))
    par = np.abs(roots - 1) > 1e-6
    g = float(np.max(1.0 - kappa[par].real))
    # classical error constant: the first non-zero C_l, l ≥ k (the method has order k − 1)
    err = 0.0
    for l in range(k, 2 * k + 2):  # noqa: E741
        c = (-sum(a[j - 1] * (-j) ** l for j in range(1, k + 1))
             - l * sum(b[m - 1] * (-m) ** (l - 1) for m in range(1, k))) / math.factorial(l)
        if abs(c) > 1e-9:
            err = abs(c)
            break
    return viol, g, err


@dataclass(frozen=True)
class ExpDesign:
    """A designed exponential BELM: ``k``, the parameters ``t`` (exact rationals), the
    ȳ-weights, the inversion growth exponent ``g`` and the classical error constant."""

    k: int
    t: tuple
    a: tuple
    growth_exponent: float
    error_constant: float


def _batch_scores(k: int, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_scores` for many parameter rows at once (``ts``: shape (n, npar))."""
    n = ts.shape[0]
    rho = np.tile(np.array([1.0, -1.0]) if k % 2 else np.array([1.0, 0.0, -1.0]), (n, 1))
    for i in range(ts.shape[1]):
        quad = np.stack([np.ones(n), -ts[:, i], np.ones(n)], axis=1)
        rho = np.stack([np.convolve(r, q) for r, q in zip(rho, quad, strict=True)])
    a = -rho[:, 1:]
    M = np.array([[l * (-m) ** (l - 1) for m in range(1, k)] for l in range(1, k)], float)
    P = np.array([[(-j) ** l for j in range(1, k + 1)] for l in range(1, k)], float)
    b = np.linalg.solve(M, -(a @ P.T).T).T  # (n, k−1)
    comp = np.zeros((n, k, k))
    comp[:, 0, :] = a
    comp[:, np.arange(1, k), np.arange(k - 1)] = 1.0
    roots = np.linalg.eigvals(comp)  # (n, k)
    diff = np.abs(roots[:, :, None] - roots[:, None, :])
    diff[:, np.arange(k), np.arange(k)] = np.inf
    viol = np.maximum(0.0, MARGIN - diff.min(axis=(1, 2)))
    drho = rho[:, :-1] * np.arange(k, 0, -1)
    sig = np.concatenate([np.zeros((n, 1)), b, np.zeros((n, 1))], axis=1)
    pv = lambda c, z: sum(c[:, i:i + 1] * z ** (c.shape[1] - 1 - i)  # noqa: E731
                          for i in range(c.shape[1]))
    kappa = pv(sig, roots) / (roots * pv(drho, roots))
    par = np.abs(roots - 1) > 1e-6
    g = np.where(par, 1.0 - kappa.real, -np.inf).max(axis=1)
    err = np.zeros(n)
    pending = np.ones(n, bool)
    for l in range(k, 2 * k + 2):  # noqa: E741
        c = (-(a @ np.array([(-j) ** l for j in range(1, k + 1)], float))
             - l * (b @ np.array([(-m) ** (l - 1) for m in range(1, k)], float))
             ) / math.factorial(l)
        hit = pending & (np.abs(c) > 1e-9)
        err[hit] = np.abs(c[hit])
        pending &= ~hit
    return viol, g, err


@cache
def exp_design(k: int) -> ExpDesign:
    """The designed k-step exponential BELM (module docstring), k ∈ :data:`EXP_KS`: a 1°
    search of the root angles in [60°, 180°), refined to 0.1°, then snapped."""
    if k not in EXP_KS:
        raise ValueError(f"exponential BELM designs exist for k in {EXP_KS}, got {k}")
    npar = (k - 1) // 2
    deg = np.array(list(itertools.combinations(np.arange(60.0, 180.0, 1.0), npar)))
    best_deg = deg[0]
    for step in (None, 0.1):
        if step is not None:  # refine around the best
            offs = np.array(list(itertools.product(np.arange(-1.0, 1.0 + 1e-9, step),
                                                   repeat=npar)))
            deg = best_deg[None, :] + offs
            deg = deg[np.all((deg >= 60.0) & (deg < 180.0), axis=1)]
        viol, g, err = _batch_scores(k, 2 * np.cos(np.radians(deg)))
        ok = viol <= 1e-9
        if not ok.any():
            raise ValueError(f"no {k}-step member keeps the root-separation margin")
        idx = np.flatnonzero(ok)
        i = idx[np.lexsort((err[idx], np.round(g[idx], 4)))[0]]
        best_deg, g_opt, err_opt = deg[i], float(g[i]), float(err[i])
    ts_opt = tuple(2 * math.cos(math.radians(x)) for x in best_deg)
    snapped = _snap(k, ts_opt, g_opt, err_opt)
    _, g, err = _scores(k, snapped)
    a = tuple(rho_coefficients(k, snapped))
    return ExpDesign(k, snapped, a, g, err)


def _snap(k: int, ts: tuple, g_opt: float, err_opt: float) -> tuple:
    """The simplest rationals near ``ts`` (denominators 1…20) that keep the margin and stay
    within :data:`SNAP_TOLERANCE` of the optimum's ``g`` and error constant (smallest largest
    denominator first, then the smaller error constant)."""
    options = []
    for t in ts:
        near = set()
        for d in range(1, 21):
            near |= {Fraction(math.floor(t * d), d), Fraction(math.ceil(t * d), d)}
        options.append(sorted(near, key=lambda f: (f.denominator, abs(float(f) - t))))
    found = []
    tol = 1 + SNAP_TOLERANCE
    for combo in itertools.product(*options):
        cand = tuple(sp.Rational(f.numerator, f.denominator) for f in combo)
        viol, g, err = _scores(k, cand)
        if viol <= 1e-9 and g <= tol * g_opt and err <= tol * err_opt:
            found.append((max(f.denominator for f in combo), err, cand))
    if not found:
        raise ValueError(f"no rational {k}-step member within {SNAP_TOLERANCE:.0%} of the "
                         "optimum keeps the margin")
    return min(found, key=lambda x: (x[0], x[1]))[2]


def ebelm(k: int, landing: str = "adams", landing_gamma: float = 1.0
          ) -> ExponentialLMMethod:
    """The designed k-step exponential BELM (:func:`exp_design`), order k − 1 on any grid,
    with the exponential Adams–Bashforth starter of order up to k − 1 (starting values as
    accurate as the method, docs/design.md §3) and the landing onto σ̄ = 0 of
    :func:`~lmsolvers.exponential.landing_relation` (default ``"adams"``, ``γ = 1``).
    One object per ``(k, landing, float(γ))``: ``ebelm(5)`` *is* ``ebelm(5, "adams", 1)``."""
    return _ebelm(k, landing, float(landing_gamma))


@cache
def _ebelm(k: int, landing: str, landing_gamma: float) -> ExponentialLMMethod:
    d = exp_design(k)
    suffix = "" if (landing, float(landing_gamma)) == ("adams", 1.0) \
        else f"({landing}, {float(landing_gamma)!r})"
    info = MethodInfo(order=k - 1, design=f"exponential BELM, t = {list(d.t)}, "
                      f"inversion growth exponent {d.growth_exponent:.3f}",
                      equal_step_a=tuple(d.a))
    return exponential_method(f"ebelm{k}{suffix}", d.a, starter="eab", landing=landing,
                              landing_gamma=landing_gamma, info=info)
