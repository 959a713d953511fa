"""Symbolic derivation of variable-step LM coefficients from the order conditions.

Local truncation error (LTE) of one step landing on node i−1, with the exact
solution ``x`` substituted and everything expanded around ``σ̄_{i−1}``::

    τ_i = x(σ̄_{i−1}) − Σ_j a_j x(σ̄_{i−1} + D_j) − Σ_j b_j s_j x'(σ̄_{i−1} + D_j)
        = Σ_l C_l x^{(l)}(σ̄_{i−1})

with offsets ``D_j = h_i + … + h_{i+j−1}`` (``D_0 = 0``), ε-step scales ``s_j`` (the
``h`` multiplying ``b_j``, see :mod:`lmsolvers.method`) and

    C_0 = 1 − Σ_j a_j,
    C_l = −( Σ_j a_j D_j^l / l!  +  Σ_j b_j s_j D_j^{l−1} / (l−1)! ),  l ≥ 1.

The method has order p when ``C_0 = … = C_p = 0``; ``C_{p+1}`` is its error
constant (the LTE is ``C_{p+1} x^{(p+1)} + O(h^{p+2})``).

A BELM (``b_0 = b_k = 0``) has the 2k−1 unknowns ``a_1..a_k, b_1..b_{k−1}``; its
conditions of order p say "exact for every polynomial of degree ≤ p", so imposing
all 2k−1 of them (order 2k−2) is Hermite interpolation: values at ``D_1..D_k``,
derivatives at ``D_1..D_{k−1}``, evaluated at 0.  That closed form (products of
linear factors) is what :func:`belm_max_order` computes; :func:`solve_order_conditions`
solves any subset of conditions with some coefficients held at given values.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import sympy as sp
from sympy.polys.matrices import DomainMatrix

from .method import LMMethod, step_symbols

__all__ = [
    "offsets",
    "eps_scales",
    "lte_coefficients",
    "order_conditions",
    "order_of",
    "vanishes",
    "belm_unknowns",
    "belm_max_order",
    "solve_order_conditions",
    "maximal_belm",
]


def offsets(k: int) -> list[sp.Expr]:
    """``[D_0, …, D_k]`` with ``D_j = h1 + … + hj`` (distance of node i−1+j above i−1)."""
    h = step_symbols(k)
    return [sp.Integer(0)] + [sp.Add(*h[:j]) for j in range(1, k + 1)]


def eps_scales(k: int) -> list[sp.Expr]:
    """The step ``s_j`` multiplying ``b_j ε̄_{i−1+j}``: ``h_j`` for j ≥ 1, ``h1`` for j = 0."""
    h = step_symbols(k)
    return [h[0], *h]


def lte_coefficients(a: Sequence[sp.Expr], b: Sequence[sp.Expr], upto: int) -> list[sp.Expr]:
    """``[C_0, …, C_upto]``, the Taylor coefficients of the LTE (module docstring)."""
    k = len(a)
    if len(b) != k + 1:
        raise ValueError("b must have k+1 entries b_0..b_k")
    D = offsets(k)
    s = eps_scales(k)
    C = [1 - sp.Add(*a)]
    for l in range(1, upto + 1):
        val = sp.Add(*[a[j - 1] * D[j] ** l for j in range(1, k + 1)]) / sp.factorial(l)
        val += sp.Add(*[b[j] * s[j] * D[j] ** (l - 1) for j in range(k + 1)]) / sp.factorial(
            l - 1
        )
        C.append(-val)
    return C


def order_conditions(a: Sequence[sp.Expr], b: Sequence[sp.Expr], p: int) -> list[sp.Expr]:
    """The expressions that must vanish for order ``p``: ``C_0, …, C_p``."""
    return lte_coefficients(a, b, p)


def vanishes(expr: sp.Expr, trials: int = 4, seed: int = 0) -> bool:
    """Zero test of a rational expression in the step (and ``s0``) symbols.

    Exact evaluation at random rational points with numerators and denominators up
    to 2³¹: a non-zero value proves ``expr ≢ 0``; if all ``trials`` values are 0,
    the Schwartz–Zippel lemma bounds the chance that a non-zero numerator of degree
    d was hit every time by ``(d / 2³¹)^trials`` (< 1e-30 for d ≤ 100 and 4 trials).
    Symbolic cancellation would be certain but takes minutes for k = 5.
    """
    expr = sp.sympify(expr)
    syms = sorted(expr.free_symbols, key=str)
    rng = random.Random(seed)
    for _ in range(trials):
        point = {
            s: sp.Rational(rng.randint(1, 2**31), rng.randint(1, 2**31)) for s in syms
        }
        if sp.nsimplify(expr.xreplace(point)) != 0:
            return False
    return True


def order_of(a: Sequence[sp.Expr], b: Sequence[sp.Expr], max_order: int = 12) -> int:
    """The order p of the method: the largest p with ``C_0 = … = C_p ≡ 0``.

    Returns ``-1`` if even ``C_0 ≠ 0`` (inconsistent).
    """
    C = lte_coefficients(a, b, max_order + 1)
    for l, c in enumerate(C):
        if not vanishes(c):
            return l - 1
    raise ValueError(f"all LTE coefficients up to {max_order + 1} vanish; raise max_order")


def belm_unknowns(k: int) -> tuple[list[sp.Symbol], list[sp.Symbol]]:
    """Fresh symbols ``[a1..ak]`` and ``[b1..b_{k−1}]`` for a k-step BELM."""
    return list(sp.symbols(f"a1:{k + 1}")), list(sp.symbols(f"b1:{k}"))


def belm_max_order(k: int) -> tuple[list[sp.Expr], list[sp.Expr]]:
    """The unique k-step BELM of order 2k−2, in closed form.

    Hermite interpolation with values at ``D_1..D_k`` and slopes at ``D_1..D_{k−1}``:
    with ``ℓ_m(t) = Π_{n≠m} ((t − D_n)/(D_m − D_n))^{μ_n}`` (μ = 2 for n < k, 1 for
    n = k), the weights at ``t = 0`` are

        a_m = ℓ_m(0) (1 + ℓ_m'(D_m) D_m),   b_m h_m = −ℓ_m(0) D_m      (m < k)
        a_k = ℓ_k(0)

    Returns ``(a_1..a_k, b_0..b_k)`` factored, with ``b_0 = b_k = 0``.
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    h = step_symbols(k)
    D = offsets(k)
    t = sp.Symbol("t")
    mult = {n: 2 for n in range(1, k)} | {k: 1}
    a: list[sp.Expr] = []
    b: list[sp.Expr] = [sp.Integer(0)]
    for m in range(1, k + 1):
        ell = sp.Mul(*[((t - D[n]) / (D[m] - D[n])) ** mult[n] for n in mult if n != m])
        ell0 = ell.subs(t, 0)
        if mult[m] == 2:
            slope = sp.diff(ell, t).subs(t, D[m])
            a.append(sp.factor(ell0 * (1 + slope * D[m])))
            b.append(sp.factor(-ell0 * D[m] / h[m - 1]))
        else:
            a.append(sp.factor(ell0))
    b.append(sp.Integer(0))
    return a, b


def solve_order_conditions(
    k: int,
    order: int,
    fixed: Mapping[str, sp.Expr] | None = None,
    parameters: Sequence[str] | None = None,
) -> tuple[list[sp.Expr], list[sp.Expr]]:
    """Solve the BELM order conditions ``C_0..C_order`` for the unknown coefficients.

    ``fixed`` holds coefficients at given values (e.g. ``{"a4": 1}``), ``parameters``
    names unknowns left as free symbols (kept in the result, named as given).  The
    remaining unknowns must be determined uniquely; otherwise ``ValueError`` names
    the problem.  Because every condition ``C_l`` is homogeneous of degree l in the
    steps, the system is solved with ``h1 = 1`` (much faster over ``QQ(h2..hk)``)
    and the scale restored by ``h_j → h_j/h1``, valid when the fixed values are
    scale-free.  Returns ``(a_1..a_k, b_0..b_k)``.
    """
    fixed = dict(fixed or {})
    parameters = list(parameters or [])
    a_syms, b_syms = belm_unknowns(k)
    names = {str(s): s for s in a_syms + b_syms}
    for n in list(fixed) + parameters:
        if n not in names:
            raise ValueError(f"unknown coefficient {n!r}; the unknowns are {list(names)}")
    if set(fixed) & set(parameters):
        raise ValueError("a coefficient cannot be both fixed and a free parameter")
    h = step_symbols(k)
    for v in fixed.values():
        if sp.sympify(v).free_symbols & set(h):
            raise ValueError("fixed values must be scale-free constants or parameters")
    par_syms = [names[n] for n in parameters]
    subs = {names[n]: sp.sympify(v) for n, v in fixed.items()}
    a = [s.xreplace(subs) for s in a_syms]
    b = [sp.Integer(0)] + [s.xreplace(subs) for s in b_syms] + [sp.Integer(0)]
    unknowns = [s for s in a_syms + b_syms if s not in subs and s not in par_syms]
    conds = [c.xreplace({h[0]: 1}) for c in order_conditions(a, b, order)]
    if len(conds) != len(unknowns):
        raise ValueError(
            f"order {order} gives {len(conds)} conditions for {len(unknowns)} unknowns "
            f"{[str(u) for u in unknowns]}; fix or free coefficients so the counts match"
        )
    A, rhs = sp.linear_eq_to_matrix(conds, unknowns)
    dM = DomainMatrix.from_Matrix(A.row_join(rhs)).to_field()
    R, pivots = dM.rref()
    n = len(unknowns)
    if tuple(pivots) != tuple(range(n)):
        raise ValueError(
            f"the order-{order} conditions do not determine {[str(u) for u in unknowns]} "
            "uniquely (singular system): choose other fixed coefficients"
        )
    Rm = R.to_Matrix()
    restore = {h[j]: h[j] / h[0] for j in range(1, k)}
    sol = {u: sp.factor(Rm[i, n].xreplace(restore)) for i, u in enumerate(unknowns)}
    a = [sp.factor(e.xreplace(sol)) for e in a]
    b = [sp.factor(e.xreplace(sol)) for e in b]
    return a, b


def maximal_belm(k: int) -> LMMethod:
    """The maximal-order k-step BELM (order 2k−2), derived from the order conditions.

    k = 2 is the paper's O-BELM.  For k ≥ 3 the maximal-order method is not
    zero-stable (see :mod:`lmsolvers.stability`).  (k = 1 admits only the
    inconsistent ``x̄_{i−1} = x̄_i``: DDIM is explicit Euler, not a BELM.)
    """
    if k < 2:
        raise ValueError(f"a consistent BELM needs k ≥ 2 steps, got k = {k}")
    a, b = belm_max_order(k)
    p = 2 * k - 2
    return LMMethod(
        name="obelm" if k == 2 else f"belm{k}-max",
        a=tuple(a),
        b=tuple(b),
        starter="ddim" if p <= 2 else "rk4",
        info={"order": p, "design": "none (maximal order)"},
    )
