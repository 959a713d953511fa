"""Symbolic derivation of exponential linear multistep methods in data-prediction variables
(docs/design.md §12).

**The variables.**  With the data prediction ``D = x̄ − σ̄ ε̄`` (the x̂₀ of a diffusion
model), ``ȳ = x̄/σ̄`` and ``λ = −log σ̄``, the σ̄-ODE ``dx̄/dσ̄ = ε̄`` is exactly

    dȳ/dλ = e^λ D.

A k-step *exponential* LM relation landing on node r reads, with scale-free weights β,

    ȳ_r = Σ_{j=1..k} a_j ȳ_{r+j} + e^{λ_r} Σ_{m=0..k} β_m D_{r+m},

and, multiplied by ``σ̄_r``, it is an ordinary linear relation among the x̄'s and ε̄'s of the
σ̄-ODE:

    x̄_r = Σ_j a_j (σ̄_r/σ̄_{r+j}) x̄_{r+j} + Σ_m β_m (x̄_{r+m} − σ̄_{r+m} ε̄_{r+m}).

So ``β_0 = 0`` makes it explicit, ``β_k = 0`` backward explicit, and with ``a_k ≠ 0`` it is a
BELM: the one engine runs it unchanged (:mod:`lmsolvers.exponential`).

**Symbols.**  The log-steps ``ℓ_j = λ_{r+j−1} − λ_{r+j} = log(σ̄_{r+j}/σ̄_{r+j−1}) > 0``
(``l1 … lk``, :func:`log_step_symbols`) and their sums ``L_j = ℓ_1 + … + ℓ_j`` (the distance
in λ from the landing node to node r+j).  Coefficients are functions of the ``ℓ_j`` only:
scale-free in σ̄.

**Order conditions.**  Write ``ȳ(λ_{r+j}) = ȳ(λ_r) − e^{λ_r} ∫_{−L_j}^0 e^u D(λ_r + u) du``
and expand ``D`` in Taylor series in ``u``.  The local truncation error of the exact solution
is ``τ = ȳ_r C_0 + e^{λ_r} Σ_{l≥0} C_{l+1} D^{(l)}(λ_r)`` with

    C_0 = 1 − Σ_j a_j,
    C_{l+1} = ( Σ_j a_j E_l(L_j) − Σ_m β_m (−L_m)^l ) / l!,
    E_l(L) = ∫_{−L}^0 e^u u^l du = (−1)^l l! (1 − e^{−L} Σ_{i≤l} L^i/i!) = (−1)^l γ(l+1, L),

(γ the lower incomplete gamma function; :class:`ExpMoment`).  The method has order p when
``C_0 = … = C_p ≡ 0``: it is exact whenever D is a polynomial of degree < p in λ (the weights
of exponential integrators: DPM-Solver++, UniPC), and ``τ = O(ℓ^{p+1})``.

**Deciding identities.**  The conditions are rational functions of the ``ℓ_j`` and of
``z_j = e^{−ℓ_j}``.  As functions, ``x`` and ``e^x`` are algebraically independent, so such an
expression vanishes identically iff it vanishes as a rational function of independent
``ℓ_j, z_j``: :func:`exp_vanishes` substitutes the ``z_j`` and reuses the exact
random-point test of :func:`lmsolvers.symbolic.vanishes`.

**Numerics.**  ``E_l`` is evaluated through the regularised incomplete gamma function
(``scipy.special.gammainc``), which has no cancellation for small ``L`` (the closed form
``1 − e^{−L}(1 + L + …)`` loses ``l`` digits per ... power of L).  Solving the conditions with
the ``E_l(L_j)`` kept as atoms gives, for fixed ``a``, weights ``β = W^{−1}·(Σ_j a_j E(L_j))``
with the exact inverse of a Vandermonde matrix in the ``L_m``: compiled as is, they are
accurate to a few ulps times the conditioning of that matrix.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from functools import cache

import numpy as np
import sympy as sp
from scipy.special import gammainc
from sympy.polys.matrices import DomainMatrix

__all__ = [
    "log_step_symbols",
    "log_offsets",
    "ExpMoment",
    "exp_moment",
    "elementary",
    "exp_vanishes",
    "exp_lte_coefficients",
    "exp_order_of",
    "exp_unknowns",
    "solve_exp_order_conditions",
    "exp_weights",
    "exp_adams",
    "equal_step_lte",
    "xbar_form",
    "compile_relation",
    "classical_weights",
    "growth_parameters",
    "NUMERIC_MODULES",
]

_KMAX = 12
#: ``l1, l2, …``: the log-steps ``ℓ_j = log(σ̄_{r+j}/σ̄_{r+j−1})`` of a step landing on node r.
LOG_STEPS = sp.symbols(f"l1:{_KMAX + 1}", positive=True)
#: ``z_j = e^{−ℓ_j} = σ̄_{r+j−1}/σ̄_{r+j}``: the step ratios (used to decide identities).
_Z = sp.symbols(f"z1:{_KMAX + 1}", positive=True)
#: the common log-step of an equal-step expansion
ELL = sp.Symbol("ell", positive=True)


def log_step_symbols(k: int) -> tuple[sp.Symbol, ...]:
    """The symbols ``l1, …, lk`` of a k-step method's log-steps."""
    if not 1 <= k <= _KMAX:
        raise ValueError(f"k must lie in [1, {_KMAX}], got {k}")
    return LOG_STEPS[:k]


def log_offsets(k: int) -> list[sp.Expr]:
    """``[L_0, …, L_k]`` with ``L_j = l1 + … + lj``: the λ-distance from the landing node."""
    ell = log_step_symbols(k)
    return [sp.Integer(0)] + [sp.Add(*ell[:j]) for j in range(1, k + 1)]


class ExpMoment(sp.Function):
    """``E_l(L) = ∫_{−L}^0 e^u u^l du = (−1)^l γ(l + 1, L)`` for an integer ``l ≥ 0``.

    Kept unevaluated (an atom of the derivation): :func:`elementary` rewrites it in
    ``exp`` and powers, :func:`exp_moment` evaluates it without cancellation.
    """

    nargs = 2

    @classmethod
    def eval(cls, l, L):  # noqa: E741 - the moment's order, as in the formulas
        """sympy's automatic evaluation: ``E_l(0) = 0``; otherwise stays an atom."""
        if not (l.is_Integer and l >= 0):
            raise ValueError(f"ExpMoment needs an integer order l ≥ 0, got {l}")
        if L.is_zero:
            return sp.Integer(0)
        return None

    def _eval_rewrite_as_exp(self, l, L, **kwargs):  # noqa: E741
        n = int(l)
        partial = sp.Add(*[L**i / sp.factorial(i) for i in range(n + 1)])
        return (-1) ** n * sp.factorial(n) * (1 - sp.exp(-L) * partial)


def exp_moment(l: int, L):  # noqa: E741
    """Numeric ``E_l(L)`` (float or array ``L ≥ 0``), accurate to a few ulps everywhere: the
    power series ``Σ_i (−1)^{l+i} L^{l+i+1}/(i! (l + i + 1))`` for ``L < 1`` (the closed
    form cancels there), ``(−1)^l l! P(l + 1, L)`` with the regularised lower incomplete
    gamma function above; ``−expm1(−L)`` for ``l = 0``."""
    n = int(l)
    L = np.asarray(L, dtype=np.float64)
    if n == 0:
        out = -np.expm1(-L)
        return out if out.ndim else float(out)
    big = (-1.0) ** n * math.factorial(n) * gammainc(n + 1, L)
    small = np.zeros_like(L)
    term = L ** (n + 1) * (-1.0) ** n  # i = 0, before the 1/(i!(n+i+1)) factor
    fact = 1.0
    for i in range(24):  # L < 1: the terms fall by L/(i+1): 24 terms reach 1e-24
        small = small + term / (fact * (n + i + 1))
        term = -term * L
        fact *= i + 1
    out = np.where(L < 1.0, small, big)
    return out if out.ndim else float(out)


#: modules for ``sympy.lambdify`` of expressions holding :class:`ExpMoment`
NUMERIC_MODULES = [{"ExpMoment": exp_moment}, "numpy"]


def elementary(expr: sp.Expr) -> sp.Expr:
    """``expr`` with every :class:`ExpMoment` written in ``exp`` and powers."""
    return sp.sympify(expr).replace(
        lambda e: isinstance(e, ExpMoment), lambda e: e.rewrite(sp.exp))


def _log_combination(arg: sp.Expr) -> dict[int, int]:
    """``arg`` as an integer combination of log-steps: ``{index: coefficient}``."""
    out: dict[int, int] = {}
    for term, c in sp.expand(arg).as_coefficients_dict().items():
        if term not in LOG_STEPS or not c.is_Integer:
            raise ValueError(f"{arg} is not an integer combination of log-steps")
        out[LOG_STEPS.index(term)] = int(c)
    return out


def exp_vanishes(expr: sp.Expr, trials: int = 4, seed: int = 0) -> bool:
    """Whether ``expr`` (rational in the log-steps, ``exp`` of integer combinations of them
    and :class:`ExpMoment` of such combinations) vanishes identically.

    As functions, ``ℓ`` and ``e^{−ℓ}`` are algebraically independent, so the expression
    vanishes iff it does as a rational function of independent ``ℓ_j`` and
    ``z_j = e^{−ℓ_j}``.  It is evaluated *exactly* at random rational ``(ℓ, z)`` (every
    ``exp`` and moment from its definition, ``E_l(L) = (−1)^l l! (1 − e^{−L} Σ_{i≤l}
    L^i/i!)``), which decides the identity with error probability below ``(d/2³¹)^trials``
    (Schwartz–Zippel, as :func:`lmsolvers.symbolic.vanishes`); a pole is redrawn.
    """
    expr = sp.sympify(expr)
    # a Float is its exact binary value (as in lmsolvers.symbolic.vanishes)
    expr = expr.xreplace({f: sp.Rational(f) for f in expr.atoms(sp.Float)})
    if expr.is_zero:
        return True
    plans = [(e, int(e.args[0]), _log_combination(e.args[1])) for e in expr.atoms(ExpMoment)]
    plans_exp = [(e, _log_combination(e.args[0])) for e in expr.atoms(sp.exp)]
    used = {i for _, _, c in plans for i in c} | {i for _, c in plans_exp for i in c}
    used |= {LOG_STEPS.index(x) for x in expr.free_symbols if x in LOG_STEPS}
    other = sorted((x for x in expr.free_symbols if x not in LOG_STEPS), key=str)
    rng = random.Random(seed)

    def draw() -> sp.Rational:
        return sp.Rational(rng.randint(1, 2**31), rng.randint(1, 2**31))

    zeros = poles = 0
    while zeros < trials:
        ell = {i: draw() for i in sorted(used)}
        z = {i: draw() for i in sorted(used)}
        sub = {LOG_STEPS[i]: v for i, v in ell.items()} | {x: draw() for x in other}
        for e, comb in plans_exp:  # exp(Σ c_i ℓ_i) = Π z_i^{−c_i}
            sub[e] = sp.Mul(*[z[i] ** (-c) for i, c in comb.items()])
        for e, n, comb in plans:
            L = sp.Add(*[c * ell[i] for i, c in comb.items()])
            eL = sp.Mul(*[z[i] ** c for i, c in comb.items()])  # e^{−L}
            partial = sp.Add(*[L**i / sp.factorial(i) for i in range(n + 1)])
            sub[e] = (-1) ** n * sp.factorial(n) * (1 - eL * partial)
        val = expr.xreplace(sub)
        if val.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            poles += 1
            if poles > 8 * trials:
                raise ValueError(f"cannot decide whether {expr} vanishes: a pole at every "
                                 "random point")
            continue
        if not val.is_Rational:
            raise ValueError(f"cannot decide whether {expr} vanishes: it is not rational in "
                             "the log-steps and their exponentials")
        if val != 0:
            return False
        zeros += 1
    return True


def exp_lte_coefficients(a: Sequence[sp.Expr], beta: Sequence[sp.Expr], upto: int
                         ) -> list[sp.Expr]:
    """``[C_0, …, C_upto]`` of the relation with ``a_1..a_k`` and ``β_0..β_k``."""
    k = len(a)
    if len(beta) != k + 1:
        raise ValueError(f"beta must hold β_0..β_k ({k + 1} entries), got {len(beta)}")
    L = log_offsets(k)
    C = [1 - sp.Add(*a)]
    for l in range(upto):  # noqa: E741
        val = sp.Add(*[a[j - 1] * ExpMoment(l, L[j]) for j in range(1, k + 1)])
        val -= sp.Add(*[beta[m] * (-L[m]) ** l for m in range(k + 1)])
        C.append(val / sp.factorial(l))
    return C


def exp_order_of(a: Sequence[sp.Expr], beta: Sequence[sp.Expr],
                 max_order: int | None = None) -> int:
    """The order p: the largest p with ``C_0 = … = C_p ≡ 0`` (−1 if ``Σ a_j ≠ 1``).

    A k-step relation has 2k + 1 coefficients and is exact for at most 2k conditions
    beyond consistency, so the default ``max_order = 2k + 1`` never runs out.
    """
    k = len(a)
    top = 2 * k + 1 if max_order is None else max_order
    for l, c in enumerate(exp_lte_coefficients(a, beta, top + 1)):  # noqa: E741
        if not exp_vanishes(c):
            return l - 1
    raise ValueError(f"all LTE coefficients up to {top + 1} vanish; raise max_order")


def exp_unknowns(k: int) -> tuple[list[sp.Symbol], list[sp.Symbol]]:
    """Fresh symbols ``[a1..ak]`` and ``[beta1..beta_{k−1}]`` of a k-step exponential BELM."""
    return list(sp.symbols(f"a1:{k + 1}")), list(sp.symbols(f"beta1:{k}"))


def solve_exp_order_conditions(
    k: int,
    order: int,
    fixed: Mapping[str, sp.Expr] | None = None,
    parameters: Sequence[str] | None = None,
    beta_nodes: Sequence[int] | None = None,
) -> tuple[list[sp.Expr], list[sp.Expr]]:
    """Solve ``C_0 … C_order`` for the unknown coefficients of a k-step exponential relation.

    The unknowns are ``a1..ak`` and the D-weights at ``beta_nodes`` (default ``1..k−1``: a
    BELM, no D at the new node 0 nor at the oldest node k; names ``beta<m>``).  ``fixed``
    holds coefficients at given values (numbers or expressions in the log-steps),
    ``parameters`` leaves unknowns free (kept as symbols); the rest must be determined
    uniquely, else ``ValueError`` names the problem.  The ``E_l(L_j)`` are kept as atoms
    (numerically stable weights, module docstring).  Returns ``(a_1..a_k, β_0..β_k)``.
    """
    fixed = dict(fixed or {})
    parameters = list(parameters or [])
    nodes = list(range(1, k)) if beta_nodes is None else sorted(set(beta_nodes))
    if any(not 0 <= m <= k for m in nodes):
        raise ValueError(f"beta nodes must lie in 0..{k}, got {nodes}")
    a_syms = list(sp.symbols(f"a1:{k + 1}"))
    b_syms = {m: sp.Symbol(f"beta{m}") for m in nodes}
    names = {str(s): s for s in a_syms + list(b_syms.values())}
    for n in list(fixed) + parameters:
        if n not in names:
            raise ValueError(f"unknown coefficient {n!r}; the unknowns are {list(names)}")
    if set(fixed) & set(parameters):
        raise ValueError("a coefficient cannot be both fixed and a free parameter")
    subs = {names[n]: sp.sympify(v) for n, v in fixed.items()}
    par = {names[n] for n in parameters}
    a = [s.xreplace(subs) for s in a_syms]
    beta = [b_syms[m].xreplace(subs) if m in b_syms else sp.Integer(0) for m in range(k + 1)]
    unknowns = [s for s in a_syms + list(b_syms.values()) if s not in subs and s not in par]
    conds = exp_lte_coefficients(a, beta, order)[: order + 1]
    # a condition the fixed values already satisfy (Σ a = 1 with every a fixed) is no equation
    conds = [c for c in conds if not (c.free_symbols.isdisjoint(unknowns)
                                      and exp_vanishes(c))]
    if len(conds) != len(unknowns):
        raise ValueError(
            f"order {order} gives {len(conds)} conditions for {len(unknowns)} unknowns "
            f"{[str(u) for u in unknowns]}; fix or free coefficients so the counts match")
    # the moments as plain symbols: a linear system over QQ(log-steps, moments, parameters)
    atoms = sorted({e for c in conds for e in c.atoms(ExpMoment)}, key=sp.default_sort_key)
    as_sym = {e: sp.Symbol(f"_E{i}") for i, e in enumerate(atoms)}
    back = {v: e for e, v in as_sym.items()}
    conds = [c.xreplace(as_sym) for c in conds]
    A, rhs = sp.linear_eq_to_matrix(conds, unknowns)
    n = len(unknowns)
    singular = ValueError(
        f"the order-{order} conditions do not determine {[str(u) for u in unknowns]} "
        "uniquely (singular system): choose other fixed coefficients")
    if A.free_symbols.isdisjoint(as_sym.values()):
        # only D-weights unknown: a polynomial (Vandermonde) matrix in the log-steps; invert
        # it over QQ(log-steps) and apply it to the moments (fast, and the structure the
        # compiled weights keep: module docstring, Numerics)
        dA = DomainMatrix.from_Matrix(A).to_field()
        if dA.rank() != n:
            raise singular
        Ainv = dA.inv().to_Matrix()
        sol = {u: sp.Add(*[sp.factor(Ainv[i, j]) * rhs[j] for j in range(n)]).xreplace(back)
               for i, u in enumerate(unknowns)}
    else:
        dM = DomainMatrix.from_Matrix(A.row_join(rhs)).to_field()
        R, pivots = dM.rref()
        if tuple(pivots) != tuple(range(n)):
            raise singular
        Rm = R.to_Matrix()
        sol = {u: sp.factor(Rm[i, n]).xreplace(back) for i, u in enumerate(unknowns)}
    return ([sp.sympify(e).xreplace(sol) for e in a],
            [sp.sympify(e).xreplace(sol) for e in beta])


def exp_weights(a: Sequence[sp.Expr]) -> list[sp.Expr]:
    """``β_0..β_k`` of the exponential BELM with the given ``a_1..a_k``: D at nodes 1..k−1,
    exact for D polynomial of degree ≤ k − 2 in λ (order k − 1; the a's must sum to 1)."""
    k = len(a)
    if k < 2:
        raise ValueError("an exponential BELM needs k ≥ 2 (a D-weight strictly between the "
                         "new and the oldest node)")
    return list(_weights_for(tuple(sp.sympify(v) for v in a)))


@cache
def _weights_for(a: tuple[sp.Expr, ...]) -> tuple[sp.Expr, ...]:
    k = len(a)
    if not exp_vanishes(1 - sp.Add(*a)):
        raise ValueError(f"the a's must sum to 1 (consistency), got Σ a = {sp.Add(*a)}")
    fixed = {f"a{j + 1}": v for j, v in enumerate(a)}
    return tuple(solve_exp_order_conditions(k, k - 1, fixed=fixed)[1])


@cache
def exp_adams(p: int) -> tuple[list[sp.Expr], list[sp.Expr]]:
    """The exponential Adams–Bashforth relation with D at the p nodes above the new one:
    ``ȳ_r = ȳ_{r+1} + e^{λ_r} Σ_{m=1..p} β_m D_{r+m}``, exact for D polynomial of degree
    < p in λ (order p; ``p = 1`` is DDIM).  It has D at its oldest node, so it is a
    starter, not a BELM.  Returns ``(a_1..a_p, β_0..β_p)`` (``a = (1, 0, …, 0)``)."""
    if p < 1:
        raise ValueError(f"p must be ≥ 1, got {p}")
    fixed = {"a1": sp.Integer(1)} | {f"a{j}": sp.Integer(0) for j in range(2, p + 1)}
    return solve_exp_order_conditions(p, p, fixed=fixed, beta_nodes=range(1, p + 1))


def _moment_series(n: int, L: sp.Expr, terms: int) -> sp.Expr:
    """``E_n(L)`` to ``O(L^{n+terms+1})``: ``Σ_i (−1)^{n+i} L^{n+i+1}/(i! (n+i+1))``."""
    return sp.Add(*[sp.Integer(-1) ** (n + i) * L ** (n + i + 1)
                    / (sp.factorial(i) * (n + i + 1)) for i in range(terms)])


def equal_step_lte(a: Sequence[sp.Expr], beta: Sequence[sp.Expr], terms: int = 3
                   ) -> tuple[int, dict[int, sp.Expr]]:
    """The local error at equal log-steps ``ℓ_j = ℓ``: ``(p_eq, {l: c_l})`` with
    ``τ = e^{λ_r} ℓ^{p_eq + 1} Σ_l c_l D^{(l)} + O(ℓ^{p_eq + 2})`` (``c_l`` rational when
    the a's are).  ``p_eq`` can exceed the variable-step order (symmetric methods).
    Computed with the moments' exact power series (no transcendental simplification)."""
    k = len(a)
    depth = 2 * k + terms + 2
    sub = {s: ELL for s in log_step_symbols(k)}

    def series(e: sp.Expr) -> sp.Expr:
        e = sp.sympify(e).xreplace(sub)
        e = e.replace(lambda x: isinstance(x, ExpMoment),
                      lambda x: _moment_series(int(x.args[0]), x.args[1], depth))
        e = e.replace(lambda x: isinstance(x, sp.exp),
                      lambda x: sp.Add(*[x.args[0] ** i / sp.factorial(i)
                                         for i in range(depth)]))
        num, den = sp.fraction(sp.together(e))
        num, den = sp.Poly(sp.expand(num), ELL), sp.Poly(sp.expand(den), ELL)
        # divide power series: strip the common power of ℓ, then invert the unit series
        vd = min(m[0] for m in den.monoms())
        if num.is_zero:
            return sp.Integer(0)
        vn = min(m[0] for m in num.monoms())
        n_c = [num.coeff_monomial(ELL ** (vn + i)) for i in range(depth)]
        d_c = [den.coeff_monomial(ELL ** (vd + i)) for i in range(depth)]
        q = []
        for i in range(depth):
            q.append((n_c[i] - sum(q[j] * d_c[i - j] for j in range(i))) / d_c[0])
        return sp.Add(*[q[i] * ELL ** (vn - vd + i) for i in range(depth)])

    C = exp_lte_coefficients(a, beta, 2 * k + terms)
    lead: dict[int, sp.Expr] = {}
    best = None
    for l in range(1, len(C)):  # noqa: E741 - C_l multiplies D^(l−1)
        ser = series(C[l])
        coeffs = sp.Poly(ser, ELL).terms() if ser != 0 else []
        nonzero = [(m[0], c) for m, c in coeffs if c != 0]
        if not nonzero:
            continue
        v, c = min(nonzero)
        if best is None or v < best:
            best, lead = v, {l - 1: c}
        elif v == best:
            lead[l - 1] = c
    if best is None:
        raise ValueError("the relation is exact for every D (no error term found)")
    return best - 1, lead


def xbar_form(a: Sequence[sp.Expr], beta: Sequence[sp.Expr]) -> tuple[list[sp.Expr],
                                                                       list[sp.Expr]]:
    """The relation in the σ̄-ODE's variables: ``x̄_r = Σ_j A_j x̄_{r+j} − Σ_m β_m σ̄_{r+m} ε̄_{r+m}``
    (and ``+ β_0 D_r`` if implicit), with ``A_j = a_j e^{−L_j} + β_j``.  Returns
    ``(A_1..A_k, β_0..β_k)``: the weights of ``σ̄_{r+m} ε̄_{r+m}`` are ``−β_m``."""
    k = len(a)
    L = log_offsets(k)
    A = [a[j - 1] * sp.exp(-L[j]) + beta[j] for j in range(1, k + 1)]
    return A, list(beta)


def compile_relation(a: Sequence[sp.Expr], beta: Sequence[sp.Expr]):
    """A numpy function of ``(ℓ_1, …, ℓ_k)`` arrays returning ``[a_1..a_k, β_0..β_k]``."""
    k = len(a)
    args = log_step_symbols(k)
    return sp.lambdify(args, list(a) + list(beta), modules=NUMERIC_MODULES, cse=True)


def classical_weights(a: Sequence[sp.Expr]) -> list[sp.Expr]:
    """``b_0..b_k``: the limit ``β_m/ℓ`` of :func:`exp_weights` at equal log-steps ``ℓ → 0``.

    There the relation becomes the classical LM method in λ for ``dȳ/dλ = f``,
    ``ȳ_r = Σ_j a_j ȳ_{r+j} + ℓ Σ_m b_m f_{r+m}``, exact for polynomials ȳ of degree ≤ k − 1
    (``e^λ`` is constant to leading order): for ``l = 1..k−1``,
    ``0 = Σ_j a_j (−j)^l + l Σ_m b_m (−m)^{l−1}``, solved exactly.
    """
    a = [sp.sympify(v) for v in a]
    k = len(a)
    M = sp.Matrix(k - 1, k - 1, lambda i, m: (i + 1) * sp.Integer(-(m + 1)) ** i)
    rhs = sp.Matrix([-sp.Add(*[a[j - 1] * sp.Integer(-j) ** l for j in range(1, k + 1)])
                     for l in range(1, k)])  # noqa: E741
    b = M.LUsolve(rhs)
    return [sp.Integer(0), *[sp.nsimplify(v) for v in b], sp.Integer(0)]


def growth_parameters(a: Sequence[sp.Expr], b: Sequence[sp.Expr] | None = None
                      ) -> list[tuple[complex, complex]]:
    """``[(ζ_j, κ_j)]``: the roots of ``ρ(ζ) = ζ^k − Σ a_j ζ^{k−j}`` and Henrici's growth
    parameters ``κ_j = σ(ζ_j)/(ζ_j ρ'(ζ_j))``, ``σ(ζ) = Σ_m b_m ζ^{k−m}`` (default ``b``:
    :func:`classical_weights`).  On ``dȳ/dλ = J ȳ`` a root behaves as ``ζ_j e^{κ_j J ℓ}``
    (principal: ``κ_1 = 1``), so over a run a parasitic mode grows relative to the solution
    by ``exp((κ_j − 1) ∫J dλ)`` while sampling and ``exp((1 − κ_j) ∫J dλ)`` while inverting.

    Sum rule: for a BELM (``b_0 = b_k = 0``, ``a_k ≠ 0``) with simple roots,
    ``Σ_j κ_j = 0``: the polynomial ``σ − ζρ' + kρ`` has degree < k, equals
    ``ζ_j ρ'(ζ_j)(κ_j − 1)`` at the roots and ``−k a_k`` at 0, and Lagrange interpolation
    at 0 gives ``a_k Σ_j (κ_j − 1) = −k a_k``.  So the parasitic κ's average ``−1/(k − 1)``:
    some parasitic mode grows by at least ``exp(k/(k−1) ∫J dλ)`` relative to the solution
    in inversion (O-BELM: ``κ = −1``, the ``(σ̄_N/σ̄_1)²`` of docs/design.md §4).
    """
    a = [complex(sp.N(v)) for v in a]
    k = len(a)
    if b is None:  # classical_weights in floats (the same linear system)
        M = np.array([[(i + 1) * (-(m + 1)) ** i for m in range(k - 1)] for i in range(k - 1)],
                     dtype=complex)
        rhs = -np.array([sum(a[j - 1] * (-j) ** l for j in range(1, k + 1))
                         for l in range(1, k)])  # noqa: E741
        bb = [0j, *np.linalg.solve(M, rhs), 0j]
    else:
        bb = [complex(sp.N(v)) for v in b]
    rho = np.array([1.0 + 0j] + [-v for v in a])
    sig = np.array(bb[: k + 1])  # b_m multiplies ζ^{k−m}
    roots = np.roots(rho)
    drho = np.polyder(rho)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.polyval(sig, roots) / (roots * np.polyval(drho, roots))
    order = np.argsort(np.abs(roots - 1))
    return [(complex(roots[i]), complex(kappa[i])) for i in order]
