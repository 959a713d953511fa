"""Exponential BELMs in data-prediction variables (docs/design.md §12): the symbolic
derivation against closed forms and exact rationals, the checker, exactness on the one
engine, the growth-parameter sum rule, designs and grids."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

import lmsolvers as L
from lmsolvers.expdesign import EXP_KS, ebelm, exp_design
from lmsolvers.exponential import LANDINGS, exponential_method, landing_relation
from lmsolvers.expsymbolic import (
    ExpMoment,
    classical_weights,
    compile_relation,
    exp_adams,
    exp_lte_coefficients,
    exp_moment,
    exp_order_of,
    exp_vanishes,
    exp_weights,
    growth_parameters,
    log_step_symbols,
    solve_exp_order_conditions,
)
from lmsolvers.grid import alphas_cumprod_from_betas, linear_betas
from lmsolvers.loggrid import log_grid, log_nodes, log_schedule_grid
from lmsolvers.problems import GaussianMixture

THIRD = sp.Rational(1, 3)


# ------------------------------------------------------------------ the moments
@pytest.mark.parametrize("n", range(6))
@pytest.mark.parametrize("L_", [1e-7, 1e-3, 0.1, 1.0, 5.0, 40.0])
def test_moment_matches_the_integral_to_a_few_ulps(n, L_):
    """E_n(L) = ∫_{−L}^0 e^u u^n du to a few ulps, against its closed form evaluated with
    120 digits (in double precision that form loses every digit for small L)."""
    mpmath.mp.dps = 120
    x = mpmath.mpf(L_)
    exact = (-1) ** n * mpmath.factorial(n) * (
        1 - mpmath.exp(-x) * mpmath.fsum(x**i / mpmath.factorial(i) for i in range(n + 1)))
    got = exp_moment(n, L_)
    assert abs(got - float(exact)) <= 1e-15 * abs(float(exact))  # ≤ 4.5 ulps


def test_moment_rewrites_to_its_closed_form():
    L_ = sp.Symbol("L", positive=True)
    for n in range(4):
        closed = ExpMoment(n, L_).rewrite(sp.exp)
        direct = sp.integrate(sp.exp(sp.Symbol("u")) * sp.Symbol("u") ** n,
                              (sp.Symbol("u"), -L_, 0))
        assert sp.simplify(closed - direct) == 0
    assert ExpMoment(2, sp.Integer(0)) == 0


def test_identity_test_decides_exactly():
    l1, l2 = log_step_symbols(2)
    assert exp_vanishes(ExpMoment(0, l1 + l2) - 1 + sp.exp(-l1) * sp.exp(-l2))
    assert exp_vanishes(ExpMoment(1, l1) - (sp.exp(-l1) * (l1 + 1) - 1))
    assert not exp_vanishes(ExpMoment(1, l1) - (sp.exp(-l1) * (l1 + 1) - 1) + 1e-30 * l2)
    assert not exp_vanishes(sp.exp(-l1) - (1 - l1))  # equal to first order only


# --------------------------------------------------------- weights and order
def _solution_values(D, lam_nodes: list[float]) -> list[float]:
    """ȳ(λ) = ∫_0^λ e^μ D(μ) dμ by 30-digit quadrature, at the nodes (an independent
    reference for the weights)."""
    mpmath.mp.dps = 30
    return [float(mpmath.quad(lambda m: mpmath.e**m * D(m), [0, v])) for v in lam_nodes]


@pytest.mark.parametrize("a", [(-sp.Rational(2, 3), sp.Rational(2, 3), 1), (1, 0, -1, 1),
                               (THIRD, THIRD, -THIRD, -THIRD, 1)])
def test_weights_are_exact_for_d_polynomial_in_lambda(a):
    """On random log-steps the relation ȳ_r = Σ a_j ȳ_{r+j} + e^{λ_r} Σ β_m D_{r+m} holds to
    round-off for every D of degree ≤ k − 2 in λ, and fails for degree k − 1."""
    k = len(a)
    f = compile_relation(a, exp_weights(a))
    rng = np.random.default_rng(k)
    ells = rng.uniform(0.05, 1.5, size=k)
    lam_r = 0.3
    lam = [lam_r - float(np.sum(ells[:j])) for j in range(k + 1)]  # λ_{r+j}
    vals = [float(v) for v in f(*ells)]
    aa, beta = vals[:k], vals[k:]
    for deg in range(k):
        def D(v, deg=deg):
            return (v - 0.2) ** deg
        yv = _solution_values(D, lam)
        Dv = [D(v) for v in lam]
        resid = yv[0] - sum(aa[j - 1] * yv[j] for j in range(1, k + 1)) \
            - math.exp(lam_r) * sum(beta[m] * Dv[m] for m in range(k + 1))
        scale = max(abs(v) for v in yv)
        if deg <= k - 2:
            assert abs(resid) <= 1e-12 * scale, (deg, resid)
        else:
            assert abs(resid) > 1e-6 * scale


def test_adams_and_maximal_orders():
    a, b = exp_adams(2)
    assert exp_order_of(a, b) == 2 and b[-1] != 0  # D at its oldest node: a starter
    a, b = solve_exp_order_conditions(3, 4)
    assert exp_order_of(a, b) == 4  # 2k − 2 with every coefficient free
    with pytest.raises(ValueError, match="sum to 1"):
        exp_weights((1, 1, 1))


@pytest.mark.parametrize("k,order,order_equal,lead", [
    (3, 2, 2, {2: sp.Rational(25, 36)}),
    (4, 3, 4, {3: sp.Rational(58, 45), 4: sp.Rational(29, 90)}),
])
def test_designed_orders_and_equal_step_error_constants(k, order, order_equal, lead):
    A = L.analyze(ebelm(k))
    assert (A.order, A.order_equal) == (order, order_equal)
    assert A.leading_equal == lead
    assert L.is_zero_stable(ebelm(k), "both")


def test_classical_limit_is_the_lambda_lm_method():
    """As ℓ → 0 the weights tend to the classical LM method in λ (Milne's for ζ⁴ − 1)."""
    assert classical_weights((0, 0, 0, 1)) == [0, sp.Rational(8, 3), -sp.Rational(4, 3),
                                               sp.Rational(8, 3), 0]
    f = compile_relation((0, 0, 0, 1), exp_weights((0, 0, 0, 1)))
    ell = 1e-4
    beta = [float(v) for v in f(*([ell] * 4))][4:]
    assert np.allclose(np.array(beta) / ell, [0, 8 / 3, -4 / 3, 8 / 3, 0], atol=1e-3)


# ------------------------------------------------------------ growth parameters
@given(st.lists(st.floats(62.0, 178.0), min_size=1, max_size=2), st.booleans())
def test_growth_parameters_of_a_belm_sum_to_zero(angles, even):
    """Σ_j κ_j = 0 for every BELM with simple roots (the sum rule of
    :func:`growth_parameters`): checked on bidirectional families of k = 3…6."""
    angles = sorted(set(round(x, 1) for x in angles))
    if len(angles) == 2 and angles[1] - angles[0] < 2:
        angles = angles[:1]
    rho = np.array([1.0, -1.0]) if not even else np.array([1.0, 0.0, -1.0])
    for th in angles:
        rho = np.polymul(rho, [1.0, -2 * math.cos(math.radians(th)), 1.0])
    a = [sp.nsimplify(-c, rational=True) for c in rho[1:]]
    kappa = [k for _, k in growth_parameters(a)]
    assert abs(sum(kappa)) < 1e-9
    assert abs(kappa[0] - 1) < 1e-9  # the principal root comes first, κ = 1


def test_design_table():
    want = {3: (-sp.Rational(2, 3), sp.Rational(2, 3), 1), 4: (1, 0, -1, 1),
            5: (THIRD, THIRD, -THIRD, -THIRD, 1), 6: (0, 0, 0, 0, 0, 1)}
    for k in EXP_KS:
        d = exp_design(k)
        assert tuple(d.a) == want[k]
        assert d.growth_exponent >= k / (k - 1) - 1e-9  # the sum rule's bound
    assert exp_design(3).growth_exponent == pytest.approx(1.5)


# --------------------------------------------------------------------- checker
def test_checker_on_exponential_relations():
    for k in EXP_KS:
        assert ebelm(k).is_bidirectional_explicit
    a, b = exp_adams(2)
    m = exponential_method("adams2", a, beta=b)
    assert not m.is_bidirectional_explicit and "not backward explicit" in \
        m.why_not_bidirectional_explicit()
    a, b = solve_exp_order_conditions(2, 2, fixed={"a1": 1, "a2": 0}, beta_nodes=[0, 1])
    m = exponential_method("implicit", a, beta=b)
    assert "implicit" in m.why_not_bidirectional_explicit()
    with pytest.raises(ValueError, match="not bidirectional explicit"):
        m.check_invertible(L.Grid(np.geomspace(0.1, 10, 6)))


@pytest.mark.parametrize("kind", LANDINGS)
def test_landing_is_exact_where_the_flow_is_straight(kind):
    """Below σ̄_min a DDPM continues with a frozen data prediction: x̄(σ̄) = x0 + σ̄ n with
    D = x0 and ε̄ = n constant; every landing returns x0 exactly from such states."""
    k = 4
    m = ebelm(k, kind, 0.5)
    g = L.Grid(np.concatenate([[0.0], np.geomspace(0.01, 0.2, 8)]))
    c = m.coefficients(g)
    x0, n = 0.7, -1.3
    s = g.sigma_bar
    got = sum(c.a[0, j - 1] * (x0 + s[j] * n) for j in range(1, k + 1)) \
        + sum(c.bh[0, j] * n for j in range(1, k + 1))
    assert got == pytest.approx(x0, abs=1e-14)
    A, W = landing_relation(kind, sp.Rational(1, 2), k)
    assert W[-1] == 0 and A[-1] != 0  # explicit both ways, x̄_k held


# -------------------------------------------------------------- exactness
GM = GaussianMixture()


@given(st.sampled_from([3, 4, 5]), st.integers(6, 30), st.floats(0.6, 1.2),
       st.sampled_from(LANDINGS), st.booleans(), st.integers(0, 2**16))
def test_round_trip_is_exact(k, n, warp, landing, clean, seed):
    m = ebelm(k, landing, 1.0)
    g = log_grid(n, 8.0, 0.02, warp, final=0.0 if clean else 0.01)
    x0 = GM.data(4, generator=torch.Generator().manual_seed(seed))
    lat = L.invert(GM.eps, g, m, x0, disable=True)
    rec = L.sample(GM.eps, g, m, lat, disable=True)
    assert float((rec - x0).abs().max() / x0.abs().max()) <= 1e-13
    assert lat.method_key == m.key and len(lat.states) == k


def test_other_landing_or_gamma_is_another_method():
    g = log_grid(12, 8.0, 0.02)
    x0 = GM.data(3, generator=torch.Generator().manual_seed(0))
    lat = L.invert(GM.eps, g, ebelm(3), x0, disable=True)
    with pytest.raises(L.LatentMismatchError):
        L.sample(GM.eps, g, ebelm(3, "eps", 1.0), lat, disable=True)
    assert L.method_from_name("ebelm3(eps, 1.0)") is ebelm(3, "eps", 1.0)


@pytest.mark.parametrize("landing", LANDINGS)
def test_sampling_is_affine_in_the_landing_weight(landing):
    """Only the last step depends on γ, linearly: ``x̄_0(γ) = x̄_0(1/2) + (2γ − 1)(x̄_0(1) −
    x̄_0(1/2))`` (what ``exponential_bench --phase landing`` uses to scan γ), and γ changes
    the sample (the landing does act)."""
    g = log_grid(16, 8.0, 0.02)
    xN = 8.0 * torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    run = {gam: L.sample(GM.eps, g, ebelm(5, landing, gam), xN, disable=True)
           for gam in (1.0, 0.5, 0.25)}
    combined = run[0.5] + (2 * 0.25 - 1) * (run[1.0] - run[0.5])
    assert float((combined - run[0.25]).abs().max()) <= 1e-13 * float(run[0.25].abs().max())
    assert float((run[1.0] - run[0.5]).abs().max()) > 1e-8


def test_observed_order_three_on_the_toy():
    """ebelm4 (order 3 on any grid, 4 at equal log-steps) with an RK4 starter on the mixture
    between σ̄ = 0.1 and 5: the fitted slope of the error against N is ≥ 3."""
    m = exponential_method("ebelm4-rk4", exp_design(4).a, starter="rk4")
    x = GM.prior(16, 5.0, generator=torch.Generator().manual_seed(1))
    ref = GM.solution(x, 5.0, 0.1)
    ns, errs = [16, 24, 32, 48, 64], []
    for n in ns:
        # a jittered, non-uniform grid: the variable-step order is what is claimed
        nodes = log_nodes(n, 5.0, 0.1, 0.8)
        g = L.Grid(nodes)
        errs.append(float((L.sample(GM.eps, g, m, x, disable=True) - ref).abs().max()))
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert slope >= 2.9, (slope, errs)


def test_coefficients_are_consistent_and_scale_free():
    m = ebelm(5)
    g1 = log_grid(20, 8.0, 0.02, 0.8)
    g2 = L.Grid(g1.sigma_bar * 3.7)
    c1, c2 = m.coefficients(g1), m.coefficients(g2)
    assert np.allclose(c1.a.sum(axis=1), 1.0, atol=1e-13)
    assert np.allclose(c1.a[1:], c2.a[1:], rtol=1e-13, atol=0)  # depends on ratios only
    assert np.allclose(c1.bh[1:] * 3.7, c2.bh[1:], rtol=1e-13, atol=1e-300)


# ------------------------------------------------------------------- grids
def test_schedule_grid_is_snapped_increasing_and_bounded():
    ac = alphas_cumprod_from_betas(linear_betas(1000, 1e-4, 0.02))
    for n in (10, 37, 200):
        d = log_schedule_grid(ebelm(3), n, ac, warp=0.85, max_amplification=1e7)
        t = d.grid.timesteps[1:]
        assert t[0] == 0 and t[-1] == 999 and np.all(np.diff(t) > 0) and len(t) == n
        assert d.roundoff_amplification <= 1e7
    with pytest.raises(ValueError, match="round-off amplification"):
        log_schedule_grid(ebelm(5), 10, ac, warp=0.85, max_amplification=1e5)


def test_relation_symbols_are_checked():
    with pytest.raises(ValueError, match="log-steps"):
        exponential_method("bad", (sp.Symbol("q"), 1 - sp.Symbol("q")))
    assert exp_lte_coefficients((1, 0), (0, 1, 0), 1)[0] == 0


def test_a_latent_far_from_noise_is_reported():
    """A grid whose first λ-step is very long (σ̄ 0.01 → 2) lets the starter excite the
    parasitic modes: the inversion still round-trips, and says its latent is not noise-like."""
    g = L.Grid(np.concatenate([[0.0, 0.01], np.geomspace(2.0, 8.0, 8)]))
    x0 = GM.data(16, generator=torch.Generator().manual_seed(3)) * 3.0
    with pytest.warns(L.ExactnessWarning, match="noise scale"):
        lat = L.invert(GM.eps, g, ebelm(3, "data", 0.02), x0, disable=True)
    rec = L.sample(GM.eps, g, ebelm(3, "data", 0.02), lat, disable=True)
    assert float((rec - x0).abs().max()) <= 1e-9
