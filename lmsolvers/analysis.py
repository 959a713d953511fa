"""LTE, error constants and the root condition of a VSVF LM method, symbolically
(docs/design.md §7; zero-stability and what it means on a grid: §4).

Local truncation error (see :mod:`lmsolvers.symbolic`): for a step landing on node
i−1, ``τ_i = Σ_l C_l x^{(l)}(σ̄_{i−1})`` with ``C_l`` homogeneous of degree l in the
steps ``h1..hk`` (= ``h_i..h_{i+k−1}``).  The method has order p when
``C_0 = … = C_p ≡ 0``; the *error constant* is ``C_{p+1}`` (a closed-form rational
function of the steps), and at equal steps ``h_j = h`` it is the number ``c`` in
``τ = c h^{p+1} x^{(p+1)} + O(h^{p+2})``.

Zero-stability is the root condition of the equal-step limit.  Write sampling with
``y_n = x̄_{N−n}``: ``y_{n+k} = Σ_j a_j y_{n+k−j} + h(…)``, whose characteristic
polynomial is

    ρ(ζ) = ζ^k − a_1 ζ^{k−1} − … − a_k.

- forward (sampling) zero-stable: every root in ``|ζ| ≤ 1``, those on the circle simple;
- backward (inversion runs the same relation the other way, roots ``1/ζ``):
  ``a_k ≠ 0`` and every root in ``|ζ| ≥ 1``, those on the circle simple;
- both: every root on the unit circle and simple (a real polynomial with all roots on
  the circle is ± self-reciprocal; with the simple root 1 it must be
  *anti*-palindromic, ``a_k = 1`` and ``a_j = −a_{k−j}``).

The decision is exact for rational coefficients: multiplicities come from the
square-free factorisation over ℚ; an irreducible factor ``g`` has a root on the
unit circle only if it is self-reciprocal (``ζ`` and ``1/ζ̄ = ζ̄`` are both roots);
then ``g(ζ) = ζ^d G(ζ + 1/ζ)`` and its roots on the circle are exactly the
pre-images of the real roots of ``G`` in ``(−2, 2)``, counted by Sturm sequences.
Only the side (inside/outside) of roots *off* the circle is read from 50-digit
numerics, which cannot misplace a root that is provably not on the circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import sympy as sp
from sympy import QQ
from sympy.polys.rings import ring

from .method import S0, LMMethod, step_symbols
from .symbolic import eps_scales, lte_coefficients, offsets, order_of, vanishes

__all__ = [
    "ZETA",
    "LTEAnalysis",
    "RootInfo",
    "lte",
    "analyze",
    "equal_step_coefficients",
    "characteristic_polynomial",
    "roots_of",
    "root_condition",
    "lte_closed_form",
]

#: The variable of the characteristic polynomial.
ZETA = sp.Symbol("zeta")
_T = sp.Symbol("_t", positive=True)


def lte(method: LMMethod, upto: int) -> list[sp.Expr]:
    """``[C_0, …, C_upto]``: Taylor coefficients of the method's LTE (not simplified)."""
    return lte_coefficients(method.a, method.b, upto)


def _split(expr: sp.Expr) -> tuple[sp.Expr, dict[sp.Expr, int]]:
    """``expr = num / Π f^e``: the numerator and the denominator's factors (as given)."""
    num, den = sp.fraction(sp.factor(expr) if not isinstance(expr, sp.Mul) else expr)
    facs: dict[sp.Expr, int] = {}
    for f in sp.Mul.make_args(den):
        base, e = (f.base, int(f.exp)) if f.is_Pow else (f, 1)
        facs[base] = facs.get(base, 0) + e
    return num, facs


def _in_QQ_of(expr: sp.Expr, gens) -> bool:
    """``expr ∈ ℚ(gens)``: built from ``gens`` and rationals by +, × and integer powers."""
    return (all(x.is_Rational or x in gens for x in expr.atoms())
            and all(p.exp.is_Integer for p in expr.atoms(sp.Pow))
            and not expr.atoms(sp.Function))


def lte_closed_form(a: list[sp.Expr], b: list[sp.Expr], l: int) -> sp.Expr:
    """``C_l`` of the method ``(a, b)`` in factored closed form, fast.

    Generic rational-function simplification (``together``/``factor`` or arithmetic
    in ``ℚ(h)``) takes minutes for k = 5 because of repeated gcds.  The derived
    coefficients, however, come factored with denominators that are products of
    sums of steps, so we bring every term onto the least common multiple ``L`` of
    those denominators *by bookkeeping of factor exponents* (no gcd), add
    polynomials, factor the numerator once and cancel the factors it shares with
    ``L``.  Works after the normalisation ``h1 = 1`` (``C_l`` is homogeneous of
    degree l), and the scale is restored at the end.  Coefficients outside
    ``ℚ(h1..hk)`` (``s0``, square roots, floats), ``k = 1`` and ``l = 0`` take sympy's
    generic ``factor``.
    """
    k = len(a)
    h = step_symbols(k)
    gens = h[1:]
    one = {h[0]: sp.Integer(1)}
    D = [d.xreplace(one) for d in offsets(k)]
    S = [s.xreplace(one) for s in eps_scales(k)]
    coefs = [sp.sympify(x).xreplace(one) for x in list(a) + list(b)]
    if k == 1 or l == 0 or not all(_in_QQ_of(c, gens) for c in coefs):
        return sp.factor(lte_coefficients(a, b, l)[l])
    split = [_split(c) for c in coefs]
    L: dict[sp.Expr, int] = {}
    for _, facs in split:
        for f, e in facs.items():
            L[f] = max(L.get(f, 0), e)

    R, *_ = ring(list(gens), QQ)  # sparse multivariate polynomials: fast products

    def poly(e: sp.Expr):
        return R.from_expr(e)

    def scaled(i: int) -> sp.Poly:
        num, facs = split[i]
        out = poly(num)
        for f, e in L.items():
            if e - facs.get(f, 0):
                out = out * poly(f) ** (e - facs.get(f, 0))
        return out

    total = R.zero
    for j in range(1, k + 1):
        total += scaled(j - 1) * poly(D[j]) ** l * QQ(1, int(sp.factorial(l)))
    for j in range(k + 1):
        if coefs[k + j] != 0:
            total += scaled(k + j) * poly(S[j]) * poly(D[j]) ** (l - 1) * QQ(
                1, int(sp.factorial(l - 1)))
    total = -total
    if not total:
        return sp.Integer(0)
    c, nfacs = total.factor_list()
    num_expr = sp.Integer(1) * R.domain.to_sympy(c)
    den = dict(L)
    for f, e in nfacs:
        fe = f.as_expr()
        for g in list(den):
            if den[g] and sp.expand(g - fe) == 0:
                m = min(e, den[g])
                e -= m
                den[g] -= m
            elif den[g] and sp.expand(g + fe) == 0:
                m = min(e, den[g])
                e -= m
                den[g] -= m
                num_expr = num_expr * (-1) ** m
        num_expr = num_expr * fe**e
    den_expr = sp.Mul(*[g**e for g, e in den.items()])
    out = num_expr / den_expr
    restore = {hj: hj / h[0] for hj in h[1:]}
    return sp.factor(out.xreplace(restore) * h[0] ** l)


def _equal_step(expr: sp.Expr, k: int) -> sp.Expr:
    """The ``h → 0`` limit of ``expr`` at equal steps ``h1 = … = hk = h``.

    Scale-free coefficients do not depend on h; schedule-tied ones (BDIA's α
    ratios, through ``s0``) tend to a constant, which is what zero-stability sees.
    Floats are read as the rationals they print as (``0.1 → 1/10``); exact numbers,
    algebraic ones included, are kept exactly.
    """
    e = sp.sympify(expr).xreplace({hj: _T for hj in step_symbols(k)})
    if _T in e.free_symbols:
        e = sp.limit(e, _T, 0)
    return sp.nsimplify(sp.simplify(e), rational=True)


def equal_step_coefficients(method: LMMethod) -> tuple[list[sp.Expr], list[sp.Expr]]:
    """``(a_1..a_k, b_0..b_k)`` at equal steps (``h → 0`` limit for schedule-tied ones)."""
    return _equal_step_cached(method)


@lru_cache(maxsize=256)
def _equal_step_cached(method: LMMethod) -> tuple[list[sp.Expr], list[sp.Expr]]:
    k = method.k
    return [_equal_step(e, k) for e in method.a], [_equal_step(e, k) for e in method.b]


def characteristic_polynomial(method_or_a: LMMethod | list) -> sp.Poly:
    """Sampling's ``ρ(ζ) = ζ^k − a_1 ζ^{k−1} − … − a_k`` at equal steps (module doc)."""
    own = getattr(method_or_a, "characteristic_polynomial", None)
    if callable(own):  # an exponential method: ρ of its relation on ȳ (docs/design.md §12)
        return own()
    a = equal_step_coefficients(method_or_a)[0] if isinstance(method_or_a, LMMethod) \
        else [sp.sympify(x) for x in method_or_a]
    k = len(a)
    return sp.Poly(ZETA**k - sp.Add(*[a[j - 1] * ZETA ** (k - j) for j in range(1, k + 1)]),
                   ZETA)


@dataclass(frozen=True)
class RootInfo:
    """One distinct root of ρ: value (50 digits), exact form when cheap, multiplicity,
    and ``location`` ∈ {"inside", "on", "outside"} relative to the unit circle."""

    value: complex
    exact: sp.Expr | None
    multiplicity: int
    location: str

    @property
    def modulus(self) -> float:
        return abs(self.value)

    def __str__(self) -> str:
        v = self.value
        s = f"{v.real:+.6f}{v.imag:+.6f}i" if abs(v.imag) > 1e-15 else f"{v.real:+.6f}"
        if self.exact is not None:
            s += f" (= {sp.sstr(self.exact)})"
        if self.multiplicity > 1:
            s += f" ×{self.multiplicity}"
        return f"{s} |ζ|={self.modulus:.6f} [{self.location}]"


def _reciprocal(g: sp.Poly) -> sp.Poly:
    return sp.Poly(list(reversed(g.all_coeffs())), g.gen)


def _circle_count(g: sp.Poly) -> int:
    """Number of roots of the irreducible ``g`` (over ℚ) on the unit circle, exactly."""
    d = g.degree()
    if d == 1:
        r = -g.all_coeffs()[1] / g.all_coeffs()[0]
        return int(abs(r) == 1)
    rec = _reciprocal(g)
    lc = g.LC() / rec.LC()
    if rec * lc != g:  # not self-reciprocal: no root on the circle (module doc)
        return 0
    if d % 2:  # an irreducible self-reciprocal polynomial of odd degree is ζ ± 1
        return 0
    # g = ζ^{d/2} G(ζ + 1/ζ): peel powers of (ζ + 1/ζ) off the Laurent polynomial
    w = sp.Symbol("_w")
    half = d // 2
    coeffs = dict(zip(range(d, -1, -1), g.all_coeffs(), strict=True))
    lau = {e - half: c for e, c in coeffs.items() if c != 0}  # exponents −half..half
    G = sp.Integer(0)
    for j in range(half, -1, -1):
        c = lau.get(j, 0)
        if c == 0:
            continue
        G += c * w**j
        for e, bc in sp.Poly(sp.expand((ZETA + 1 / ZETA) ** j * ZETA**j), ZETA).terms():
            lau[e[0] - j] = lau.get(e[0] - j, 0) - c * bc
    Gp = sp.Poly(G, w)
    # roots w in (−2, 2) give pairs e^{±iφ}; w = ±2 would mean ζ = ±1, not irreducible here
    n = Gp.count_roots(-2, 2) - int(Gp.eval(2) == 0) - int(Gp.eval(-2) == 0)
    return 2 * n


def roots_of(poly: sp.Poly) -> list[RootInfo]:
    """The distinct roots of ``poly`` with multiplicities and exact circle location.

    Rational coefficients get the exact treatment of the module docstring; other
    coefficients (algebraic, floats) fall back to 50-digit numerics with a 1e-30
    tolerance for "on the circle".
    """
    out: list[RootInfo] = []
    exact_ok = poly.domain in (sp.ZZ, sp.QQ)
    if not exact_ok:
        vals = sp.Poly(poly.as_expr(), ZETA).nroots(n=50, maxsteps=200)
        groups: list[list] = []
        for v in vals:
            for g in groups:
                if abs(complex(g[0]) - complex(v)) < 1e-20:
                    g.append(v)
                    break
            else:
                groups.append([v])
        for g in groups:
            z = complex(g[0])
            loc = "on" if abs(abs(z) - 1) < 1e-30 else ("inside" if abs(z) < 1 else "outside")
            out.append(RootInfo(z, None, len(g), loc))
        return sorted(out, key=lambda r: (-r.value.real, r.value.imag))
    _, sqf = sp.factor_list(poly.as_expr(), ZETA)
    for fac, mult in sqf:
        g = sp.Poly(fac, ZETA)
        n_on = _circle_count(g)
        vals = [complex(v) for v in g.nroots(n=50, maxsteps=200)]
        exact = sp.roots(g, ZETA) if g.degree() <= 2 else {}
        exact_list = list(exact)
        # the n_on roots closest to the circle are those on it (exact count above)
        order = sorted(range(len(vals)), key=lambda i: abs(abs(vals[i]) - 1))
        on_idx = set(order[:n_on])
        for i, z in enumerate(vals):
            loc = "on" if i in on_idx else ("inside" if abs(z) < 1 else "outside")
            ex = None
            for e in exact_list:
                if abs(complex(sp.N(e, 30)) - z) < 1e-12:
                    ex = e
            out.append(RootInfo(z, ex, int(mult), loc))
    return sorted(out, key=lambda r: (-r.value.real, r.value.imag))


def root_condition(poly_or_method: sp.Poly | LMMethod, direction: str = "forward") -> bool:
    """The root condition of ρ for sampling (``"forward"``), inversion (``"backward"``:
    roots ``1/ζ``, so ``ρ(0) ≠ 0`` and ``|ζ| ≥ 1``) or ``"both"`` (all on the circle,
    simple).  Roots on the circle must be simple in every case."""
    poly = characteristic_polynomial(poly_or_method) if isinstance(poly_or_method, LMMethod) \
        else poly_or_method
    if direction not in ("forward", "backward", "both"):
        raise ValueError(f"direction must be 'forward', 'backward' or 'both', got {direction!r}")
    rts = roots_of(poly)
    if any(r.location == "on" and r.multiplicity > 1 for r in rts):
        return False
    if direction == "forward":
        return all(r.location != "outside" for r in rts)
    if poly.eval(0) == 0:
        return False
    if direction == "backward":
        return all(r.location != "inside" for r in rts)
    return all(r.location == "on" for r in rts)


@dataclass(frozen=True)
class LTEAnalysis:
    """Order and leading LTE term of a method.

    ``error_constant`` is ``C_{p+1}`` in closed form (a rational function of the steps,
    homogeneous of degree p+1); ``error_constant_equal`` is its value at ``h_j = 1``,
    i.e. ``τ = c h^{p+1} x^{(p+1)} + O(h^{p+2})`` at equal steps; ``order_equal`` is
    the order at equal steps (it can exceed the variable-step order).
    """

    order: int
    error_constant: sp.Expr
    order_equal: int
    error_constant_equal: sp.Expr
    rho: sp.Poly
    roots: list[RootInfo] = field(default_factory=list)

    def leading_term(self) -> str:
        p = self.order
        return f"({sp.sstr(self.error_constant)}) * x^({p + 1})"


def _equal_order(a_eq: list[sp.Expr], b_eq: list[sp.Expr]) -> tuple[int, sp.Expr]:
    """Order p and error constant ``C_{p+1}`` at ``h_j = 1``, zero-tested exactly
    (:func:`~lmsolvers.symbolic.vanishes`).  ``p ≤ 2k`` (see
    :func:`~lmsolvers.symbolic.order_of`), so ``C_0..C_{2k+1}`` contain a non-zero."""
    k = len(a_eq)
    one = {hj: 1 for hj in step_symbols(k)}
    for l, c in enumerate(lte_coefficients(a_eq, b_eq, 2 * k + 1)):
        c = c.xreplace(one)
        if not vanishes(c):
            return l - 1, sp.simplify(c)
    raise AssertionError("a k-step method has order at most 2k")


def analyze(method: LMMethod) -> LTEAnalysis:
    """Order, closed-form error constant, equal-step order/constant and roots of ρ (an
    exponential method answers with its own analysis in λ, docs/design.md §12)."""
    own = getattr(method, "analysis", None)
    if callable(own):
        return own()
    return _analyze(method)


@lru_cache(maxsize=256)
def _analyze(method: LMMethod) -> LTEAnalysis:
    p = order_of(method.a, method.b)
    a_eq, b_eq = equal_step_coefficients(method)
    if _has_s0(method):  # schedule-tied: report C_{p+1} at unit steps, still a function of s0
        p_eq = p
        C = lte(method, p + 1)[p + 1]
        c_eq = sp.simplify(C.xreplace({hj: 1 for hj in step_symbols(method.k)}))
    else:
        p_eq, c_eq = _equal_order(a_eq, b_eq)
    rho = characteristic_polynomial(method)
    return LTEAnalysis(
        order=p,
        error_constant=lte_closed_form(list(method.a), list(method.b), p + 1),
        order_equal=p_eq,
        error_constant_equal=c_eq,
        rho=rho,
        roots=roots_of(rho),
    )


def _has_s0(method: LMMethod) -> bool:
    return any(S0 in e.free_symbols for e in method.a + method.b)
