"""Exact tests of the symbolic analysis against closed forms."""

import sympy as sp

import lmsolvers as L
from lmsolvers import derive_belm
from lmsolvers.analysis import analyze, characteristic_polynomial, root_condition
from lmsolvers.design import equal_step_family
from lmsolvers.method import LMMethod, step_symbols
from lmsolvers.symbolic import vanishes

Z = sp.Symbol("zeta")


def test_obelm_matches_paper_prop4():
    h1, h2 = step_symbols(2)
    m = L.obelm()
    ref_a = [(h2**2 - h1**2) / h2**2, h1**2 / h2**2]
    ref_b = [0, -(h1 + h2) / h2, 0]
    assert all(vanishes(x - y) for x, y in zip(m.a, ref_a, strict=True))
    assert all(vanishes(x - y) for x, y in zip(m.b, ref_b, strict=True))
    A = analyze(m)
    assert A.order == 2 and sp.simplify(A.error_constant + h1**2 * (h1 + h2) / 6) == 0


def test_k3_matches_authors_appendix_form_and_is_unstable():
    # the authors' published 3-step formula (BELM appendix / scripts/cifar10.py), typed in,
    # with h_i, h_{i+1}, h_{i+2} = h1, h2, h3 and the eps terms b_j h_{i-1+j} eps
    hi, hi1, hi2 = step_symbols(3)
    a1 = -(hi + hi1) ** 2 * (3 * hi**2 * hi1 + 2 * hi**2 * hi2 + 2 * hi * hi1**2
                             + 4 * hi * hi1 * hi2 + 2 * hi * hi2**2 - hi1**3 - 2 * hi1**2 * hi2
                             - hi1 * hi2**2) / (hi1**3 * (hi1 + hi2) ** 2)
    a2 = hi**2 * (-hi**2 * hi1 + 2 * hi**2 * hi2 - 2 * hi * hi1**2 + 4 * hi * hi1 * hi2
                  + 2 * hi * hi2**2 - hi1**3 + 2 * hi1**2 * hi2 + 3 * hi1 * hi2**2) / (
        hi1**3 * hi2**2)
    a3 = hi**2 * (hi + hi1) ** 2 / (hi2**2 * (hi1 + hi2) ** 2)
    b1 = -(hi + hi1) ** 2 * (hi + hi1 + hi2) / (hi1**2 * (hi1 + hi2))
    b2 = -hi**2 * (hi + hi1) * (hi + hi1 + hi2) / (hi1**3 * hi2)
    m = derive_belm(3)
    for x, y in zip(m.a, [a1, a2, a3], strict=True):
        assert sp.cancel(x - y) == 0
    for x, y in zip(m.b, [0, b1, b2, 0], strict=True):
        assert sp.cancel(x - y) == 0
    A = analyze(m)
    assert A.order == 4
    assert sp.simplify(A.error_constant + hi**2 * (hi + hi1) ** 2 * (hi + hi1 + hi2) / 120) == 0
    assert A.error_constant_equal == sp.Rational(-1, 10)
    assert sp.expand(A.rho.as_expr() - (Z - 1) * (Z**2 + 10 * Z + 1)) == 0
    for d in ("forward", "backward", "both"):
        assert not root_condition(A.rho, d)


def test_bdia_equal_step_root_is_minus_gamma():
    for g, fw, bw in [(1.0, True, True), (0.5, True, False), (2.0, False, True)]:
        m = L.bdia(g)
        rho = characteristic_polynomial(m)
        gg = sp.nsimplify(g)
        assert sp.expand(rho.as_expr() - (Z - 1) * (Z + gg)) == 0
        assert L.is_zero_stable(m, "forward") is fw
        assert L.is_zero_stable(m, "backward") is bw
        assert analyze(m).order == 1


def test_maximal_order_error_constants_hermite():
    for k in (2, 3, 4):
        A = analyze(derive_belm(k))
        assert A.order == 2 * k - 2
        h = step_symbols(k)
        D = [sum(h[:j]) for j in range(1, k + 1)]
        ref = -sp.Mul(*[d**2 for d in D[:-1]]) * D[-1] / sp.factorial(2 * k - 1)
        assert vanishes(A.error_constant - ref)


def test_milne_is_order_4_with_constant_14_45():
    # classical Milne predictor as a 4-step BELM: x_{i-1} = x_{i+3} + ..., equal-step check
    fam = equal_step_family(4, 4, symmetric=True)
    (c,) = fam.params
    sub = {c: 0} if str(c) == "a3" else {c: sp.solve(fam.a[2], c)[0]}
    assert [e.xreplace(sub) for e in fam.a] == [0, 0, 0, 1]
    assert abs(fam.error_constant.xreplace(sub)) == sp.Rational(14, 45)


def test_analyze_decides_radical_coefficients_exactly():
    """BDIA's form with a constant algebraic ratio r: order 1 and C_2 = h1²/2 − r h2²/2
    exactly; adding δ = √(10⁷⁰+1) − 10³⁵ ≈ 5e-36 to a_1 makes it inconsistent (C_0 = −δ),
    which nsimplify took for 0 (and the fast closed form refused the radicals)."""
    h1, h2 = step_symbols(2)
    r = sp.sqrt(2) / 2
    b = (0, -(1 + r * h2 / h1), 0)
    A = analyze(LMMethod("bdia-like", a=(1 - r, r), b=b))
    assert A.order == 1 and A.order_equal == 1
    assert vanishes(A.error_constant - (h1**2 / 2 - r * h2**2 / 2))
    assert sp.expand(A.error_constant_equal - (sp.Rational(1, 2) - r / 2)) == 0
    delta = sp.sqrt(10**70 + 1) - 10**35
    A = analyze(LMMethod("inconsistent", a=(1 - r + delta, r), b=b))
    assert A.order == -1 and A.order_equal == -1
    assert sp.expand(A.error_constant_equal + delta) == 0


def test_analyze_bdia_mutant_is_inconsistent():
    m = L.bdia(0.5)
    (a1, a2), b = m.a, m.b
    A = analyze(LMMethod("bdia-mutant", a=(a1 + a2 / 10, a2), b=b))
    assert A.order == -1 and vanishes(A.error_constant + a2 / 10)

