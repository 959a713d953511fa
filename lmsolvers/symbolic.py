"""Symbolic derivation of variable-step LM coefficients from the order conditions
(docs/design.md §7).

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

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from fractions import Fraction

import sympy as sp
from sympy.polys.matrices import DomainMatrix
from sympy.polys.polyerrors import NotAlgebraic

from .method import LMMethod, MethodInfo, step_symbols

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

_X = sp.Symbol("x")


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
    """Zero test of an expression in the step (and ``s0``) symbols.

    Supported exactly: rational functions of the symbols and of square roots of
    radical-free rational functions (BDIA's ``sqrt(1 + (s0 + h1 + h2)**2)``).  The
    expression is evaluated *exactly* at random rational points (numerators and
    denominators up to 2³¹): a rational point maps every square root to the square
    root of a rational, and the value lies in ``ℚ(√g_1, …, √g_m)`` (see
    :class:`_SqrtField`), where it is zero iff all its coordinates are.  So a
    non-zero value is never taken for zero.

    Identity ``expr ≡ 0`` is then decided by the Schwartz–Zippel lemma: if ``f ≢ 0``
    its norm (the product of its ``2^m`` conjugates under the sign changes of the
    radicals) is a non-zero rational function of some degree d vanishing wherever
    ``f`` does, so all ``trials`` points are zeros of ``f`` with probability at most
    ``(d / 2³¹)^trials`` (< 1e-30 for d ≤ 100 and 4 trials; the points are fixed
    by ``seed`` for reproducibility).  A point that is a pole is redrawn.  Symbolic
    cancellation would be certain but takes minutes for k = 5.

    Other algebraic expressions (nested or higher roots, ``I``) fall back to
    sympy's exact minimal polynomial at each point (``0`` is the only number with
    minimal polynomial ``x``); non-algebraic ones raise ``ValueError``.
    """
    expr = sp.sympify(expr)
    syms = sorted(expr.free_symbols, key=str)
    rng = random.Random(seed)
    zeros = poles = 0
    while zeros < (trials if syms else 1):
        point = {s: Fraction(rng.randint(1, 2**31), rng.randint(1, 2**31)) for s in syms}
        try:
            if not _zero_at(expr, point):
                return False
        except ZeroDivisionError:
            poles += 1
            if poles > 8 * trials:
                raise ValueError(f"cannot decide whether {expr} vanishes: it has a pole at "
                                 "every random point (undefined?)") from None
            continue
        zeros += 1
    return True


class _Unsupported(Exception):
    """The expression is not a rational function of symbols and simple square roots."""


class _SqrtField:
    """Exact arithmetic in ``K = ℚ(√g_1, …, √g_m)``.

    The generators are pairwise coprime integers ``g_j > 1`` that are not squares,
    plus possibly ``g = −1`` (``√−1 = i``).  The products ``√g_S = Π_{j∈S} √g_j``
    over subsets S are linearly independent over ℚ (Besicovitch: ``g_S / g_T`` is
    never a rational square for S ≠ T, as coprime factors of a square are squares;
    ``i`` splits a relation into real and imaginary parts), so an element
    ``Σ_S c_S √g_S``, stored as ``{bitmask of S: c_S}`` without zero entries, is 0
    iff the dict is empty.  ``√g_S √g_T = (Π_{j∈S∩T} g_j) √g_{SΔT}``.
    """

    def __init__(self, radicands: list[Fraction]):
        nums = [abs(r.numerator) * r.denominator for r in radicands]
        base = _coprime_base(nums)
        squares = {q: math.isqrt(q) for q in base if math.isqrt(q) ** 2 == q}
        self.gens = [q for q in base if q not in squares]
        if any(r < 0 for r in radicands):
            self.gens.append(-1)
        self.sqrt: dict[Fraction, dict[int, Fraction]] = {}
        for r, n in zip(radicands, nums, strict=True):
            if not r:
                self.sqrt[r] = {}
                continue
            coef, mask = Fraction(1, r.denominator), 0
            for j, q in enumerate(self.gens):
                if q == -1:
                    mask |= (r < 0) << j
                    continue
                e = 0
                while n % q == 0:
                    n //= q
                    e += 1
                coef *= q ** (e // 2)
                mask |= (e % 2) << j
            for q, root in squares.items():
                while n % q == 0:
                    n //= q
                    coef *= root
            assert n == 1, "the coprime base must factor every radicand"
            self.sqrt[r] = {mask: coef}
        self._scale: dict[int, int] = {}

    def scale(self, mask: int) -> int:
        """``Π_{j∈mask} g_j``."""
        if mask not in self._scale:
            self._scale[mask] = math.prod(q for j, q in enumerate(self.gens) if mask >> j & 1)
        return self._scale[mask]

    @staticmethod
    def add(x: dict, y: dict) -> dict:
        out = dict(x)
        for m, c in y.items():
            v = out.get(m, 0) + c
            if v:
                out[m] = v
            else:
                out.pop(m, None)
        return out

    def mul(self, x: dict, y: dict) -> dict:
        if len(x) == 1 and 0 in x:  # rational factor: the common case
            c = x[0]
            return {m: c * v for m, v in y.items()}
        out: dict[int, Fraction] = {}
        for m1, c1 in x.items():
            for m2, c2 in y.items():
                m = m1 ^ m2
                v = out.get(m, 0) + c1 * c2 * self.scale(m1 & m2)
                if v:
                    out[m] = v
                else:
                    out.pop(m, None)
        return out

    def inv(self, x: dict) -> dict:
        """``1/x``: multiply by the conjugate flipping the sign of ``√g_j`` for each j in
        turn; each product is fixed by the flips done so far, the last one is rational."""
        if not x:
            raise ZeroDivisionError("division by an exact zero")
        c, t = {0: Fraction(1)}, x
        for j in range(len(self.gens)):
            if any(m >> j & 1 for m in t):
                conj = {m: (-v if m >> j & 1 else v) for m, v in t.items()}
                c, t = self.mul(c, conj), self.mul(t, conj)
        assert set(t) == {0}, "the norm is rational"
        n = t[0]
        return {m: v / n for m, v in c.items()}

    def power(self, x: dict, n: int) -> dict:
        if n < 0:
            x, n = self.inv(x), -n
        out = {0: Fraction(1)}
        while n:
            if n & 1:
                out = self.mul(out, x)
            n >>= 1
            if n:
                x = self.mul(x, x)
        return out


def _coprime_base(nums: list[int]) -> list[int]:
    """Pairwise coprime integers > 1 such that every ``n ≥ 1`` of ``nums`` is a product
    of their powers (split any two with a common factor g into g, x/g, y/g)."""
    base = {n for n in nums if n > 1}
    while True:
        pair = next(((x, y) for x, y in itertools.combinations(sorted(base), 2)
                     if math.gcd(x, y) > 1), None)
        if pair is None:
            return sorted(base)
        x, y = pair
        g = math.gcd(x, y)
        base -= {x, y}
        base |= {v for v in (g, x // g, y // g) if v > 1}


def _evaluate(node: sp.Expr, point: Mapping, field: _SqrtField, memo: dict) -> dict:
    """The exact value of ``node`` at ``point`` as an element of ``field``."""
    if node in memo:
        return memo[node]
    if node.is_Symbol:
        v = point[node]
        val = {0: v} if v else {}
    elif node.is_Rational or node.is_Float:
        q = sp.Rational(node)  # a Float is its exact binary value
        val = {0: Fraction(int(q.p), int(q.q))} if q else {}
    elif node.is_Add:
        val = {}
        for arg in node.args:
            val = field.add(val, _evaluate(arg, point, field, memo))
    elif node.is_Mul:
        val = {0: Fraction(1)}
        for arg in node.args:
            val = field.mul(val, _evaluate(arg, point, field, memo))
    elif node.is_Pow and node.exp.is_Integer:
        val = field.power(_evaluate(node.base, point, field, memo), int(node.exp))
    elif node.is_Pow and node.exp.is_Rational and node.exp.q == 2:
        r = memo.get(("radicand", node.base))
        if r is None or r not in field.sqrt:
            raise _Unsupported(node)
        val = field.power(field.sqrt[r], int(node.exp.p))
    else:
        raise _Unsupported(node)
    memo[node] = val
    return val


def _zero_at(expr: sp.Expr, point: Mapping[sp.Symbol, Fraction]) -> bool:
    """Is ``expr`` exactly 0 at the rational ``point``?  (``ZeroDivisionError`` at a pole.)"""
    try:
        rational = _SqrtField([])
        memo: dict = {}
        radicands = []
        for pw in expr.atoms(sp.Pow):
            if pw.exp.is_Rational and pw.exp.q == 2:
                val = _evaluate(pw.base, point, rational, {})  # nested roots: _Unsupported
                (r,) = val.values() if val else (Fraction(0),)
                memo[("radicand", pw.base)] = r
                radicands.append(r)
        field = _SqrtField(radicands) if radicands else rational
        return not _evaluate(expr, point, field, memo)
    except _Unsupported:
        value = expr.xreplace({s: sp.Rational(v.numerator, v.denominator)
                               for s, v in point.items()})
        if value.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            raise ZeroDivisionError(f"pole of {expr}") from None
        try:
            return sp.minimal_polynomial(value, _X) == _X
        except NotAlgebraic:
            raise ValueError(f"cannot decide whether {expr} vanishes: it is not algebraic "
                             "in its symbols") from None


def order_of(a: Sequence[sp.Expr], b: Sequence[sp.Expr], max_order: int | None = None) -> int:
    """The order p of the method: the largest p with ``C_0 = … = C_p ≡ 0``.

    Returns ``-1`` if even ``C_0 ≠ 0`` (inconsistent).  A k-step method has order at
    most 2k: ``L(x) = x(0) − Σ a_j x(D_j) − Σ b_j s_j x'(D_j)`` is 0 for every
    polynomial of degree ≤ 2k+1 only if ``x = t Π(t − D_j)²`` gives ``b_0 = 0`` and
    then ``x = Π(t − D_j)²`` gives ``Π D_j² = 0``.  So the default ``max_order = 2k``
    never runs out.
    """
    k = len(a)
    top = 2 * k if max_order is None else max_order
    C = lte_coefficients(a, b, top + 1)
    for l, c in enumerate(C):
        if not vanishes(c):
            return l - 1
    raise ValueError(f"all LTE coefficients up to {top + 1} vanish; raise max_order")


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
        info=MethodInfo(order=p, design="none (maximal order)", order_equal=p),
    )
