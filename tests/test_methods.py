"""The method representation, the BELM checker and the derived coefficients."""

import numpy as np
import pytest
import sympy as sp
import torch

import lmsolvers as L
from lmsolvers.method import S0, LMMethod, nonvanishing, step_symbols
from lmsolvers.symbolic import (
    belm_max_order,
    eps_scales,
    lte_coefficients,
    order_of,
    solve_order_conditions,
    vanishes,
)

h1, h2, h3 = step_symbols(3)


def test_obelm_equals_paper_closed_form():
    # BELM paper, Prop. 4 (our convention: h1 = h_i, h2 = h_{i+1})
    paper_a = [(h2**2 - h1**2) / h2**2, h1**2 / h2**2]
    paper_b = [0, -(h1 + h2) / h2, 0]
    m = L.obelm()
    got = m.symbolic()
    for x, y in zip(got["a"] + got["b"], paper_a + paper_b, strict=True):
        assert sp.simplify(x - y) == 0
    assert order_of(m.a, m.b) == 2


def test_obelm_is_leapfrog_at_equal_steps():
    h = sp.Symbol("h", positive=True)
    m = L.obelm()
    eq = {h1: h, h2: h}
    assert [sp.simplify(e.subs(eq)) for e in m.a] == [0, 1]
    assert sp.simplify(m.b[1].subs(eq)) == -2


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_max_order_belm_satisfies_its_order_conditions_exactly(k):
    a, b = belm_max_order(k)
    C = lte_coefficients(a, b, 2 * k - 1)
    # exact rational points: every condition up to 2k-2 is 0, the next is not
    rng = np.random.default_rng(k)
    for _ in range(2):
        pt = {s: sp.Rational(int(rng.integers(1, 50)), int(rng.integers(1, 20)))
              for s in step_symbols(k)}
        vals = [sp.nsimplify(c.xreplace(pt)) for c in C]
        assert vals[:-1] == [0] * (2 * k - 1)
        # the error constant is the Hermite remainder ω(0)/(2k-1)! (docs/design.md §7)
        D = [sum(list(pt.values())[:j]) for j in range(1, k + 1)]
        omega0 = -sp.Mul(*[d**2 for d in D[:-1]]) * D[-1]
        assert vals[-1] == omega0 / sp.factorial(2 * k - 1)


def test_solver_agrees_with_hermite_closed_form():
    a, b = belm_max_order(3)
    a2, b2 = solve_order_conditions(3, 4)
    for x, y in zip(a + b, a2 + b2, strict=True):
        assert sp.simplify(x - y) == 0


def test_solver_reports_singular_and_miscounted_systems():
    with pytest.raises(ValueError, match="conditions for"):
        solve_order_conditions(3, 2)
    with pytest.raises(ValueError, match="unknown coefficient"):
        solve_order_conditions(2, 1, fixed={"a9": 0})


def test_predicates_from_expressions():
    assert L.obelm().is_bidirectional_explicit
    assert L.bdia(0.5).is_bidirectional_explicit
    d = L.ddim()
    assert d.is_explicit and not d.is_backward_explicit and not d.is_bidirectional_explicit
    implicit = LMMethod("trapezoid", a=(1,), b=(sp.Rational(-1, 2), sp.Rational(-1, 2)))
    assert not implicit.is_explicit
    assert "implicit" in implicit.why_not_bidirectional_explicit()
    # an a_k that can vanish for some admissible step ratio is not accepted
    risky = LMMethod("risky", a=(1 - (h1 - h2) / h2, (h1 - h2) / h2), b=(0, -1, 0))
    assert not risky.ak_nonvanishing and not risky.is_bidirectional_explicit


def test_nonvanishing_is_sound():
    assert nonvanishing(h1**2 / (h2 + h1))
    assert nonvanishing(-(h1 + 2 * h2) ** 3)
    assert not nonvanishing(h1 - h2)
    assert not nonvanishing(S0)  # s0 may be 0
    assert nonvanishing(S0 + h1)
    assert nonvanishing(sp.sqrt(1 + S0**2) / sp.sqrt(1 + (S0 + h1) ** 2))
    # a symbol without sign assumptions may make any polynomial vanish: x + 1 at x = -1
    assert not nonvanishing(sp.Symbol("x") + 1)
    assert nonvanishing(sp.Symbol("y", nonnegative=True) + 1)


def test_vanishes():
    assert vanishes((h1 + h2) ** 2 - h1**2 - 2 * h1 * h2 - h2**2)
    assert not vanishes((h1 + h2) ** 2 - h1**2 - h2**2)
    # square roots are decided exactly: identities hold, tiny non-zero values are not 0
    x = S0 + h1 + h2
    assert vanishes(sp.sqrt(1 + x**2) ** 2 - 1 - x**2)
    assert vanishes(sp.sqrt(h1) * sp.sqrt(h1 * h2) - h1 * sp.sqrt(h2))
    assert vanishes(1 / (sp.sqrt(h1) + sp.sqrt(h2)) - (sp.sqrt(h1) - sp.sqrt(h2)) / (h1 - h2))
    assert not vanishes(1 / (sp.sqrt(h1) + sp.sqrt(h2)) - (sp.sqrt(h1) - sp.sqrt(h2)) / (h1 + h2))
    assert vanishes(sp.sqrt(h1 - 2 * h2) ** 3 - (h1 - 2 * h2) * sp.sqrt(h1 - 2 * h2))
    assert not vanishes(sp.sqrt(2) - sp.Rational(1414213562373095, 10**15))  # 4.9e-17
    assert not vanishes(sp.sqrt(10**70 + 1) - 10**35)  # 5e-36: nsimplify called it 0
    assert not vanishes(sp.sqrt(1 + x**2) - x - 1 / (2 * x))  # ~ -1/(8 x^3)
    # BDIA's alpha ratio / 10 (0.03 at the first point): nsimplify called it 0
    assert not vanishes(sp.sqrt(1 + S0**2) / sp.sqrt(1 + x**2) / 10)
    # other algebraic numbers: sympy's exact minimal polynomial
    assert vanishes(sp.cbrt(h1) ** 3 - h1)
    assert not vanishes(sp.cbrt(2) - sp.Rational(126, 100))
    with pytest.raises(ValueError, match="not algebraic"):
        vanishes(sp.exp(h1) - 1)


def test_ddim_and_bdia_orders():
    assert order_of(L.ddim().a, L.ddim().b) == 1
    # BDIA's coefficients depend on s0 through the VP α; its LTE's C_2 does not vanish
    m = L.bdia(0.5)
    assert order_of(m.a, m.b) == 1
    assert not vanishes(lte_coefficients(m.a, m.b, 2)[2])
    # inconsistent variants, perturbed by d = a_2/10 (a radical in s0): C_0 = -d, resp.
    # C_1 = -d h2 and C_1 = -d h1; nsimplify's zero test reported order 1 for the first three
    (a1, a2), b = m.a, m.b
    d = a2 / 10
    assert order_of((a1 + d, a2), b) == -1
    assert order_of((a1 + d, a2 - d), b) == 0
    assert order_of((a1, a2), (0, b[1] + d, 0)) == 0
    assert order_of((a1, a2), (0, b[1] * (1 + d), 0)) == 0


def test_bdia_reproduces_its_two_ddim_step_form():
    """BDIA's original x-space update: x_{i-1} = γ(x_{i+1} − Φ_{i→i+1}(x_i)) + Φ_{i→i−1}(x_i)."""
    gamma = 0.7
    grid = L.Grid([0.0, 0.3, 0.8, 1.1, 2.4])
    m = L.bdia(gamma)
    c = m.coefficients(grid)
    rng = np.random.default_rng(0)
    alpha, sigma = grid.alphas, grid.alphas * grid.sigma_bar
    for r in range(grid.N - 1):  # the step landing on node r uses nodes r+1, r+2
        i = r + 1
        x_i, x_ip1, e = rng.normal(size=(3, 5))

        def phi(s, x_i=x_i, e=e, i=i):  # DDIM from node i to node s, x-space
            return alpha[s] * (x_i - sigma[i] * e) / alpha[i] + sigma[s] * e

        x_prev = gamma * (x_ip1 - phi(i + 1)) + phi(i - 1)
        # the BELM form in x̄-space
        xb = c.a[r, 0] * x_i / alpha[i] + c.a[r, 1] * x_ip1 / alpha[i + 1] + c.bh[r, 1] * e
        np.testing.assert_allclose(xb * alpha[i - 1], x_prev, rtol=1e-13, atol=1e-13)


def test_bdia_gamma_zero_is_refused():
    with pytest.raises(ValueError, match="gamma = 0"):
        L.bdia(0.0)


def test_coefficients_are_vectorised_over_the_grid():
    grid = L.Grid.power(12, 3.0, rho=2.0)
    c = L.obelm().coefficients(grid)
    assert c.a.shape == (11, 2) and c.bh.shape == (11, 3)
    h = grid.h
    np.testing.assert_allclose(c.a[:, 1], h[:-1] ** 2 / h[1:] ** 2, rtol=1e-14)
    np.testing.assert_allclose(c.bh[:, 1], -(h[:-1] + h[1:]) / h[1:] * h[:-1], rtol=1e-14)
    np.testing.assert_array_equal(c.bh[:, [0, 2]], 0.0)


def test_invert_refuses_non_belm_and_vanishing_ak():
    grid = L.Grid.power(10, 2.0)
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    eps = L.problems.GaussianData(dim=3).eps
    with pytest.raises(ValueError, match="not bidirectional explicit"):
        L.invert(eps, grid, L.ddim(), x0)
    with pytest.raises(ValueError, match="not bidirectional explicit"):
        L.invert(eps, grid, LMMethod("ab2", a=(1, 0), b=(0, -sp.Rational(3, 2),
                                                          sp.Rational(1, 2))), x0)
    tiny = L.bdia(1e-300)  # a_k underflows relative to the other coefficients
    with pytest.raises(ValueError, match="vanishes"):
        L.invert(eps, grid, tiny, x0)


def test_b0_of_an_implicit_method_is_scaled_by_h1():
    """b_0 multiplies h_{i−1}, outside the k-step window: the library scales it by h1
    (symbolic.eps_scales), and the numeric coefficients must agree."""
    m = LMMethod("implicit", a=(sp.Integer(1), sp.Integer(0)),
                 b=(sp.Integer(1), sp.Integer(0), sp.Integer(0)))
    g = L.Grid.power(6, 2.0, rho=1.7)
    c = m.coefficients(g)
    np.testing.assert_array_equal(c.bh[:, 0], g.h[: c.steps])
    assert eps_scales(2)[0] == sp.Symbol("h1", positive=True)
