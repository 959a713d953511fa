"""Designed k-step BELMs: highest order under a stability requirement, then the
smallest error constant with a root-separation margin (docs/design.md §7).

**Which orders are possible** (at equal steps; proof sketch, exact checks in the tests).
A BELM is explicit in both directions: ``σ(ζ) = Σ_{j=1}^{k−1} β_j ζ^j`` has neither a
``ζ^k`` nor a ``ζ^0`` term.  In Dahlquist's variables ``ζ = (1+z)/(1−z)``,
``r(z) = ((1−z)/2)^k ρ(ζ)``, ``s(z) = ((1−z)/2)^k σ(ζ)``, order p means
``r(z)/log((1+z)/(1−z)) − s(z) = O(z^p)`` and ``s(1) = β_k = 0``, ``s(−1) ∝ β_0 = 0``.
Zero-stability makes ``r = a_1 z + … + a_k z^k`` with all ``a_j ≥ 0``, ``a_1 > 0``.
With ``z/log((1+z)/(1−z)) = Σ μ_{2ν} z^{2ν}`` (``μ_0 = 1/2``, ``μ_{2ν} < 0`` after, every
partial sum ``> 0`` because the full sum is 0 at z = 1) the coefficients of
``s`` below ``z^k`` are ``d_m = Σ_ν a_{m+1−2ν} μ_{2ν}``.  For p ≥ k the two conditions
``s(±1) = 0`` leave ``Σ_{m<k, m+k odd} d_m = 0``; for odd k this is a positive
combination of the ``a_j`` (partial sums of μ), a contradiction, and for even k it
forces ``a_2 = a_4 = … = 0``: ``r`` is odd, every root of ρ is on the unit circle.
With Dahlquist's barrier for explicit methods (p ≤ k) this gives

- forward zero-stable: ``p ≤ k`` for even k (and then *necessarily* bidirectional),
  ``p ≤ k − 1`` for odd k;
- bidirectional (ρ anti-palindromic ⇒ the method is symmetric ⇒ even order): the same.

Both bounds are attained for k ≤ 5 by the members constructed here (verified exactly).

**Margin.** Roots on the unit circle must be at chord distance ``≥ δ = 1`` from each
other (60°), and every parasitic root at chord distance ``≥ δ`` from the principal
root 1.  Without it the error-constant optimum slides onto the boundary, where roots
merge (a double root: not zero-stable; e.g. k = 3's order-3 limit ``(ζ−1)²(ζ+1)``).

**Weak stability.** Roots on the unit circle are neutral only for ``hλ = 0``.  On a
problem ``x' = λx`` a parasitic root ζ_j moves to ``ζ_j (1 + ν_j hλ + …)`` relative to
the principal root's ``1 + hλ``, with Henrici's growth parameter
``ν_j = κ_j/κ_1``, ``κ_j = σ(ζ_j)/(ζ_j ρ'(ζ_j))``; along a run the mode is multiplied by
``exp(ν_j ∫λ)``.  Sampling a diffusion ODE is dissipative (``∫λ ≈ −ln(σ̄_max/s_data)``,
about −6 on SD-like schedules), so a mode with ``ν_j = −3`` grows by ``e¹⁸``.  The
leapfrog (O-BELM) has ``ν = −1``.  We require ``−Re ν_j ≤ GROWTH_MAX = 1.25`` for every
parasitic root near the circle.  This was added after the digits and toy benchmarks:
the error-constant optimum of the k = 4 family ``(ζ²−1)(ζ²+cζ+1)``, c = 1 (ν = −3 at
ζ = −1), diverged on them, while c = −1 (ν = −1.22, error constant 29/90 instead of
27/90) converges at fourth order.

**Choice in a family.** Minimise ``|C_{p+1}|`` (equal steps) subject to the
requirement, the margin and the growth bound, numerically; then take the simplest
rational parameters (smallest common denominator from 1, 2, 3, 4, 6, 8, 12, 16, 24, 32,
48, 64) within 5 % of that optimum that satisfy the requirement *exactly*
(:func:`lmsolvers.analysis.root_condition`) and the margin.  Rational parameters keep
every coefficient exact.

**Variable steps.** Parasitic growth over a run is governed by the products of the
companion matrices, which depend on ``a_1..a_k`` only.  We hold ``a_2..a_k`` at their
designed equal-step values and solve ``C_0..C_{k−1} = 0`` for ``a_1`` and the ε
weights ``b_1..b_{k−1}`` (a Vandermonde system in the distinct offsets, never
singular).  Then every step has the *same* companion matrix, so the parasitic
growth on any grid, in either direction, is that of equal steps: bounded by a
grid-independent constant for bidirectional designs (and ``a_k`` is a non-zero
constant, so the method is provably bidirectional explicit).  The price: the
variable-step order is k − 1, one less than the equal-step order for even k.
Letting the ``a_j`` depend on the step ratios to keep order k (k = 4) was measured
and rejected: the order-4 condition then moves the parasitic roots by ~100× the
step-ratio change, and products of companion matrices reach 10¹⁹–10⁶⁸ on 50-step
Stable Diffusion and power grids (``tests/test_design.py`` keeps that evidence).
O-BELM (k = 2) is the exception that is kept: its order-2 ``a``'s vary with the steps
and it grows like ``(h_N/h_1)²``, but holding ``a_2`` would leave order 1.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import sympy as sp

from .analysis import characteristic_polynomial, root_condition
from .method import LMMethod, MethodInfo, step_symbols
from .symbolic import belm_unknowns, lte_coefficients, maximal_belm, solve_order_conditions

__all__ = [
    "MARGIN",
    "STABILITIES",
    "EqualStepFamily",
    "Design",
    "equal_step_family",
    "max_stable_order",
    "design",
    "belm",
    "belm_family",
    "derive_belm",
    "margin_ok",
    "growth_parameters",
    "GROWTH_MAX",
    "KMAX_DESIGN",
    "design_steps_error",
]

#: chord distance between roots on the unit circle (and from the principal root): 60°
MARGIN = 1.0
#: bound on −Re ν_j, the weak-instability growth rate of parasitic modes (module docstring)
GROWTH_MAX = 1.25
#: forward designs keep |a_k| ≥ AK_MIN (else the optimum degenerates to a (k−1)-step method)
AK_MIN = 0.5
STABILITIES = ("none", "forward", "bidirectional")
#: forward and bidirectional designs exist for 2 ≤ k ≤ KMAX_DESIGN (:func:`design_steps_error`)
KMAX_DESIGN = 5
_DENOMINATORS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


@dataclass(frozen=True)
class EqualStepFamily:
    """Equal-step k-step BELMs of order ≥ p: ``a``, ``b`` affine in ``params``.

    ``error_constant`` is ``C_{p+1}`` at ``h = 1`` (affine in the parameters).
    ``symmetric`` restricts to anti-palindromic ρ (bidirectional candidates).
    """

    k: int
    order: int
    symmetric: bool
    params: tuple[sp.Symbol, ...]
    a: tuple[sp.Expr, ...]
    b: tuple[sp.Expr, ...]
    error_constant: sp.Expr


@lru_cache(maxsize=64)
def equal_step_family(k: int, order: int, symmetric: bool = False) -> EqualStepFamily:
    """Solve the order conditions at ``h_j = 1`` (plus anti-palindromy if ``symmetric``).

    The free parameters are the unknowns sympy leaves free (preferring ``a_k, a_{k−1}, …``).
    Raises ``ValueError`` if no such method exists.
    """
    a_s, b_s = belm_unknowns(k)
    a = list(a_s)
    b = [sp.Integer(0), *b_s, sp.Integer(0)]
    conds = [c.xreplace({hj: 1 for hj in step_symbols(k)})
             for c in lte_coefficients(a, b, order)]
    if symmetric:
        conds.append(a[k - 1] - 1)
        conds += [a[j - 1] + a[k - j - 1] for j in range(1, k)]
    unknowns = list(a[:1]) + list(b_s) + list(reversed(a[1:]))
    sols = sp.linsolve(conds, unknowns)
    if not sols:
        raise ValueError(f"no {'symmetric ' if symmetric else ''}{k}-step BELM of order {order}")
    (sol,) = sols
    sub = dict(zip(unknowns, sol, strict=True))
    params = tuple(sorted(set().union(*(sp.sympify(v).free_symbols for v in sol)), key=str))
    A = tuple(sp.expand(x.xreplace(sub)) for x in a)
    B = tuple(sp.expand(sp.sympify(x).xreplace(sub)) for x in b)
    C = lte_coefficients(list(A), list(B), order + 1)[order + 1]
    C = sp.expand(C.xreplace({hj: 1 for hj in step_symbols(k)}))
    return EqualStepFamily(k, order, symmetric, params, A, B, C)


def _roots(a) -> np.ndarray:
    """The roots of ``ρ(ζ) = ζ^k − a_1 ζ^{k−1} − … − a_k`` in floating point."""
    return np.roots(np.concatenate([[1.0], -np.asarray(a, dtype=float)]))


def margin_violation(a: np.ndarray, stability: str, delta: float = MARGIN,
                     roots: np.ndarray | None = None) -> float:
    """0 when ρ with coefficients ``a`` meets the requirement and margin, else a positive
    measure of the violation (used as an optimisation penalty; tolerance 1e-9).
    ``roots`` are ρ's roots if already known (``_roots(a)``)."""
    r = _roots(a) if roots is None else roots
    i1 = int(np.argmin(np.abs(r - 1)))
    principal, par = r[i1], np.delete(r, i1)
    v = abs(principal - 1)
    mod = np.abs(par)
    if stability == "forward":
        v += np.clip(mod - 1, 0, None).sum()
    else:
        v += np.abs(mod - 1).sum()
    v += np.clip(delta - np.abs(par - 1), 0, None).sum()
    if stability == "forward":  # a_k = ±Π ζ: inversion divides by it every step
        v += max(0.0, AK_MIN - abs(float(a[-1])))
    # pairs near the circle: a numerically split double root may sit off it by ~1e-6
    on = par[np.abs(par) > 1 - delta / 4]
    for x, y in itertools.combinations(on, 2):
        v += max(0.0, delta - abs(x - y))
    return float(v)


def growth_parameters(a, b, roots: np.ndarray | None = None) -> list[tuple[complex, complex]]:
    """``[(ζ_j, ν_j)]``: the roots of ρ and Henrici's growth parameters
    ``ν_j = κ_j/κ_1``, ``κ_j = σ(ζ_j)/(ζ_j ρ'(ζ_j))`` (equal steps; ``a = a_1..a_k``,
    ``b = b_0..b_k``; ρ(ζ) = ζ^k − Σ a_j ζ^{k−j}, σ(ζ) = Σ b_j ζ^{k−j}).  ``roots``
    are ρ's roots if already known (``_roots(a)``)."""
    a = np.asarray([float(x) for x in a])
    b = np.asarray([float(x) for x in b])
    drho = np.polyder(np.concatenate([[1.0], -a]))
    roots = _roots(a) if roots is None else roots
    with np.errstate(divide="ignore", invalid="ignore"):  # a double root: ρ'(ζ) = 0
        kappa = np.polyval(b, roots) / (roots * np.polyval(drho, roots))
    i1 = int(np.argmin(np.abs(roots - 1)))
    return [(complex(z), complex(kj / kappa[i1])) for z, kj in zip(roots, kappa, strict=True)]


def growth_violation(a, b, delta: float = MARGIN, roots: np.ndarray | None = None) -> float:
    """How far the worst parasitic root near the unit circle exceeds ``GROWTH_MAX``."""
    pairs = growth_parameters(a, b, roots)
    i1 = int(np.argmin([abs(z - 1) for z, _ in pairs]))
    worst = [-nu.real for j, (z, nu) in enumerate(pairs) if j != i1 and abs(z) > 1 - delta / 4]
    if not all(np.isfinite(worst)):  # repeated root: growth is secular, never acceptable
        return 1e3
    return max([0.0] + [w - GROWTH_MAX for w in worst])


def margin_ok(a, stability: str, delta: float = MARGIN) -> bool:
    """The margin of the module docstring holds (chords ≥ δ − 1e-9)."""
    return margin_violation(np.asarray([float(x) for x in a]), stability, delta) <= 1e-9


def max_stable_order(k: int, stability: str) -> int:
    """Highest equal-step order (module docstring): 2k−2 for ``"none"``; for ``"forward"``
    and ``"bidirectional"`` k for even k and k−1 for odd k (k ≥ 2)."""
    if stability not in STABILITIES:
        raise ValueError(f"stability must be one of {STABILITIES}, got {stability!r}")
    if k < 2:
        raise ValueError("a consistent BELM needs k ≥ 2 steps")
    if stability == "none":
        return 2 * k - 2
    return k if k % 2 == 0 else k - 1


@dataclass(frozen=True)
class Design:
    """A designed member: equal-step coefficients and the variable-step method."""

    k: int
    stability: str
    order_equal: int
    params: dict[str, sp.Expr]
    a_equal: tuple[sp.Expr, ...]
    b_equal: tuple[sp.Expr, ...]
    error_constant_equal: sp.Expr
    optimum_error_constant: float
    method: LMMethod
    held: tuple[str, ...] = ()


def _optimise(fam: EqualStepFamily, stability: str) -> tuple[np.ndarray, float]:
    m = len(fam.params)
    fa = sp.lambdify(fam.params, list(fam.a), "numpy")
    fb = sp.lambdify(fam.params, list(fam.b), "numpy")
    fc = sp.lambdify(fam.params, fam.error_constant, "numpy")
    k = len(fam.a)

    def obj(t):
        a = np.broadcast_to(np.array(fa(*t), dtype=float), (k,))
        b = np.broadcast_to(np.array(fb(*t), dtype=float), (k + 1,))
        r = _roots(a)
        return abs(float(fc(*t))) + 1e3 * (margin_violation(a, stability, roots=r)
                                           + growth_violation(a, b, roots=r))

    from scipy.optimize import minimize  # only the design search needs scipy

    rng = np.random.default_rng(0)
    best_x, best_f = None, np.inf
    starts = [np.zeros(m)] + [rng.uniform(-3, 3, m) for _ in range(12)]
    for x0 in starts:
        res = minimize(obj, x0, method="Nelder-Mead",
                       options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000})
        if res.fun < best_f:
            best_x, best_f = res.x, res.fun
    return best_x, best_f


def _snap(fam: EqualStepFamily, x: np.ndarray, target: float, stability: str):
    """Simplest rational parameters within 5 % of ``target`` meeting everything exactly."""
    req = "forward" if stability == "forward" else "both"
    for q in _DENOMINATORS:
        cands = []
        for choice in itertools.product(*[(math.floor(v * q), math.ceil(v * q)) for v in x]):
            vals = [sp.Rational(n, q) for n in choice]
            sub = dict(zip(fam.params, vals, strict=True))
            c = abs(fam.error_constant.xreplace(sub))
            if c > 1.05 * target + 1e-12:
                continue
            a = [e.xreplace(sub) for e in fam.a]
            b = [e.xreplace(sub) for e in fam.b]
            if growth_violation(a, b) > 1e-9:
                continue
            if not margin_ok(a, stability) or not root_condition(
                    characteristic_polynomial(a), req):
                continue
            cands.append((c, vals))
        if cands:
            return min(cands, key=lambda t: t[0])[1]
    raise RuntimeError("no rational member within 5% of the optimum meets the requirement")


@lru_cache(maxsize=32)
def design(k: int, stability: str = "bidirectional") -> Design:
    """The designed k-step BELM for ``stability`` (module docstring).

    ``"none"`` is the maximal-order (2k−2) Hermite method, for any k.  ``"forward"``
    and ``"bidirectional"`` designs exist for ``2 ≤ k ≤ KMAX_DESIGN``; beyond, a
    ``ValueError`` says why (:func:`design_steps_error`) before any search.
    """
    p = max_stable_order(k, stability)
    if stability != "none" and k > KMAX_DESIGN:
        raise ValueError(design_steps_error(k))
    if stability == "none" or k == 2:
        # k = 2: the order-2 family is the single method O-BELM (leapfrog at equal steps)
        meth = maximal_belm(k)
        fam = equal_step_family(k, p)
        return Design(k, stability, p, {}, fam.a, fam.b, fam.error_constant,
                      abs(float(fam.error_constant)), meth)
    fam = equal_step_family(k, p, symmetric=(stability == "bidirectional"))
    if stability == "forward" and k % 2 == 0:
        # order k forces every root onto the circle: forward = bidirectional family
        fam = equal_step_family(k, p, symmetric=True)
    x, fbest = _optimise(fam, stability)
    if fbest > 1e2:
        raise RuntimeError(f"no {stability} zero-stable {k}-step BELM of order {p} found")
    vals = _snap(fam, x, fbest, stability)
    sub = dict(zip(fam.params, vals, strict=True))
    a_eq = tuple(e.xreplace(sub) for e in fam.a)  # affine in rational parameters: rational
    b_eq = tuple(e.xreplace(sub) for e in fam.b)
    c_eq = fam.error_constant.xreplace(sub)
    held = {f"a{j}": a_eq[j - 1] for j in range(2, k + 1)}
    a, b = solve_order_conditions(k, k - 1, fixed=held)
    meth = LMMethod(
        name=f"belm{k}-{stability}",
        a=tuple(a),
        b=tuple(b),
        starter="rk4",  # neutral parasitic modes keep starter errors: start accurately
        info=MethodInfo(order=k - 1, design=stability, order_equal=p, held=tuple(held),
                        equal_step_a=a_eq),
    )
    return Design(k, stability, p, {str(s): v for s, v in sub.items()}, a_eq, b_eq, c_eq,
                  fbest, meth, tuple(held))


def design_steps_error(k: int) -> str:
    """Why there is no forward or bidirectional k-step design for ``k > KMAX_DESIGN``.

    Bidirectional designs, and forward ones of even k (order k puts every root of ρ
    on the unit circle, module docstring), need k simple roots on the circle at
    chord ≥ MARGIN = 1 (60°) from each other and from 1: at most six fit, and six
    only as the sixth roots of unity, ``ρ = ζ⁶ − 1``, whose order-6 member has
    ``ν = −19/5`` at its parasitic root −1, beyond ``GROWTH_MAX``
    (``tests/test_design.py`` checks this).  For odd k ≥ 7 the forward search finds
    no member (run for k = 7).
    """
    return (f"k = {k}: forward and bidirectional BELM designs exist for 2 ≤ k ≤ {KMAX_DESIGN} "
            "only. Their roots on the unit circle must be at least 60° apart, so at most six "
            "fit (bidirectional designs, and forward ones of even k, have all k roots there), "
            "and for k = 6 the only candidate rho = zeta^6 - 1 has a parasitic root -1 with "
            f"growth parameter -3.8, beyond the bound {GROWTH_MAX}; for odd k ≥ 7 the forward "
            "search finds none. The maximal-order method of any k (not zero-stable for "
            "k ≥ 3) is lmsolvers.derive_belm(k).")


def belm_family(k: int, order: int) -> tuple[list[sp.Expr], list[sp.Expr], list[sp.Symbol]]:
    """The variable-step family of k-step BELMs of the given order, free parameters symbolic.

    The ``2k−2−order`` free parameters are ``a_k, a_{k−1}, …`` (then ``b_{k−1}, …``),
    held as symbols; returns ``(a, b, params)``.
    """
    m = 2 * k - 2 - order
    if m < 0:
        raise ValueError(f"a k-step BELM has order at most 2k−2 = {2 * k - 2}")
    names = [f"a{j}" for j in range(k, 1, -1)] + [f"b{j}" for j in range(k - 1, 0, -1)]
    params = names[:m]
    a, b = solve_order_conditions(k, order, parameters=params)
    return a, b, [sp.Symbol(n) for n in params]


def derive_belm(k: int, order: int | None = None, stability: str = "none"):
    """Derive k-step BELMs from the order conditions.

    - ``order=None``: the designed member for ``stability`` as an
      :class:`~lmsolvers.LMMethod`: ``"none"`` the unconstrained optimum (order
      2k−2, not zero-stable for k ≥ 3), ``"forward"`` the best zero-stable sampling
      recursion, ``"bidirectional"`` the best with every root simple and on the unit
      circle (see :func:`design` for the criterion and margin).
    - ``order=p``: the whole variable-step family of order p, ``(a, b, params)`` with
      the ``2k−2−p`` free parameters left as sympy symbols (:func:`belm_family`); an
      LMMethod when no parameter is left free (p = 2k−2).
    """
    if order is None:
        return design(k, stability).method
    if stability != "none":
        raise ValueError("give either order= (the family) or stability= (a designed member), "
                         "not both")
    if order == 2 * k - 2:
        return design(k, "none").method
    return belm_family(k, order)


#: the default of :func:`belm` (see docs/belm_designs.md for the measurements behind it)
DEFAULT_STABILITY = "bidirectional"


def belm(k: int, stability: str = DEFAULT_STABILITY) -> LMMethod:
    """The designed k-step BELM as an :class:`~lmsolvers.LMMethod` (see :func:`design`).

    Default ``"bidirectional"``: parasitic modes neither grow in sampling nor in
    inversion, on every grid (constant companion matrix), so exact inversion stays
    exact in floating point; ``"forward"`` designs damp them in sampling and amplify
    them exponentially in inversion.  ``belm(2)`` is O-BELM.
    """
    return design(k, stability).method
