"""Designed BELMs: table facts, exact invertibility, empirical order, speed."""

import time

import numpy as np
import pytest
import sympy as sp
import torch

import lmsolvers as L
from lmsolvers.analysis import characteristic_polynomial, root_condition
from lmsolvers.design import (
    GROWTH_MAX,
    KMAX_DESIGN,
    design,
    equal_step_family,
    growth_parameters,
    growth_violation,
    margin_ok,
    max_stable_order,
)
from lmsolvers.problems import GaussianMixture
from lmsolvers.symbolic import order_conditions

Z = sp.Symbol("zeta")


def test_designs_of_k_le_5_derive_in_seconds():
    design.cache_clear()
    t = time.perf_counter()
    for k in range(2, 6):
        for st in ("none", "forward", "bidirectional"):
            design(k, st)
    assert time.perf_counter() - t < 60.0  # loaded 2-core machine; ~10-20 s measured


@pytest.mark.parametrize("k,expected", [(2, 2), (3, 2), (4, 4), (5, 4)])
def test_highest_stable_orders(k, expected):
    for st in ("forward", "bidirectional"):
        assert max_stable_order(k, st) == expected
        d = design(k, st)
        assert d.order_equal == expected
        req = "forward" if st == "forward" else "both"
        assert root_condition(characteristic_polynomial(list(d.a_equal)), req)


def test_order_above_the_bound_has_no_zero_stable_member_k3():
    # the one-parameter order-3 family: z^2 + B z + C with |C| <= 1, |B| <= 1 + C only at b2 = 2,
    # where rho = (z-1)^2 (z+1): a double root on the circle
    fam = equal_step_family(3, 3)
    (t,) = fam.params
    rho = sp.factor(characteristic_polynomial(list(fam.a)).as_expr())
    q = sp.Poly(sp.cancel(rho / (Z - 1)), Z)
    lc, B, C = q.all_coeffs()
    B, C = sp.simplify(B / lc), sp.simplify(C / lc)
    # the Schur-Cohn region, solved exactly by hand in the interval arithmetic of sympy
    region = sp.Intersection(
        sp.solveset(C <= 1, t, sp.S.Reals), sp.solveset(C >= -1, t, sp.S.Reals),
        sp.solveset(B - 1 - C <= 0, t, sp.S.Reals), sp.solveset(-B - 1 - C <= 0, t, sp.S.Reals))
    assert isinstance(region, sp.FiniteSet) and len(region) == 1
    (t0,) = region
    r0 = characteristic_polynomial([e.xreplace({t: t0}) for e in fam.a])
    assert sp.factor(r0.as_expr()) == sp.factor((Z - 1) ** 2 * (Z + 1))
    assert not root_condition(r0, "forward")


def test_designed_constants():
    assert design(4, "bidirectional").a_equal == (1, 0, -1, 1)
    assert design(4, "bidirectional").error_constant_equal == sp.Rational(-29, 90)
    assert design(5, "bidirectional").a_equal == (0, 0, 0, 0, 1)
    assert design(3, "bidirectional").a_equal == (sp.Rational(-1, 2), sp.Rational(1, 2), 1)


@pytest.mark.parametrize("k", [3, 4, 5])
@pytest.mark.parametrize("st", ["forward", "bidirectional"])
def test_designed_methods_are_belms_and_round_trip(k, st):
    m = L.belm(k, st)
    assert m.is_bidirectional_explicit
    prob = GaussianMixture()
    grid = L.Grid.power(30, 5.0)
    x0 = prob.data(8, generator=torch.Generator().manual_seed(1))
    lat = L.invert(prob.eps, grid, m, x0, disable=True)
    back = L.sample(prob.eps, grid, m, lat, disable=True)
    amp = L.amplification(m, grid, "both")
    err = float((back - x0).abs().max())
    assert err <= 1e-13 * amp * 30


@pytest.mark.parametrize("k", [3, 4, 5])
@pytest.mark.parametrize("stability", ["bidirectional", "forward"])
def test_empirical_order_variable_steps(k, stability):
    """Every design shows its designed (equal-step) order on a smooth variable grid.

    The variable-step versions hold a_2..a_k constant, so their LTE is O(h^k) on arbitrary
    grids; the O(h^k) term is proportional to the change of step ratio, which is O(h) on a
    smooth grid σ̄_i = σ̄_max (i/N)^1.5, so the equal-step order is attained there.
    """
    m = L.belm(k, stability)
    p = m.info.order_equal
    prob = GaussianMixture()
    x = prob.prior(16, 5.0, generator=torch.Generator().manual_seed(0))
    ref = prob.solution(x, 5.0, 0.0)
    Ns = [160, 320, 640]
    errs = []
    for n in Ns:
        grid = L.Grid.power(n, 5.0, rho=1.5)
        errs.append(float((L.sample(prob.eps, grid, m, x, disable=True) - ref).abs().max()))
    slope = -np.polyfit(np.log(Ns), np.log(errs), 1)[0]
    assert abs(slope - p) < 0.25, (errs, slope)


def test_derive_belm_family_and_designed_members():
    # the order-3 family of 3-step BELMs has one free parameter, left symbolic
    a, b, params = L.derive_belm(3, order=3)
    assert [str(p) for p in params] == ["a3"]
    assert all(sp.simplify(c) == 0 for c in order_conditions(a, b, 3))
    # order = 2k-2 leaves nothing free: the maximal-order method
    assert L.derive_belm(3, order=4).name == "belm3-max"
    assert L.derive_belm(3, stability="bidirectional") is L.belm(3, "bidirectional")
    with pytest.raises(ValueError, match="not both"):
        L.derive_belm(3, order=2, stability="forward")


def test_growth_parameters_and_the_weak_stability_bound():
    """Henrici's ν_j: leapfrog's parasitic root −1 has ν = −1; the k = 4 family member
    c = 1 (the error-constant optimum) has ν = −3 there and is excluded by GROWTH_MAX."""

    def at(pairs, root):
        return min(pairs, key=lambda p: abs(p[0] - root))[1]

    lf = growth_parameters([0, 1], [0, -2, 0])
    assert abs(at(lf, -1) - (-1)) < 1e-12 and abs(at(lf, 1) - 1) < 1e-12
    fam = equal_step_family(4, 4, symmetric=True)
    (c,) = fam.params
    sub = {c: 1}
    nu = growth_parameters([e.xreplace(sub) for e in fam.a], [e.xreplace(sub) for e in fam.b])
    assert abs(at(nu, -1) - (-3)) < 1e-9
    for k in (3, 4, 5):
        for st in ("forward", "bidirectional"):
            d = design(k, st)
            pairs = growth_parameters(d.a_equal, d.b_equal)
            worst = max(-nu.real for z, nu in pairs if abs(z - 1) > 1e-9 and abs(z) > 0.75)
            assert worst <= GROWTH_MAX + 1e-9, (k, st, worst)


@pytest.mark.parametrize("k", [6, 7, 8])
@pytest.mark.parametrize("st", ["forward", "bidirectional"])
def test_no_design_beyond_k5_is_refused_up_front(k, st):
    # before: a RuntimeError after ~15-80 s of search
    with pytest.raises(ValueError, match=r"exist for 2 ≤ k ≤ 5 only"):
        L.belm(k, st)


def test_why_k6_has_no_design():
    """The reason given by design_steps_error: six roots on the unit circle, 60° apart from
    each other and from 1, are the sixth roots of unity; the order-6 member with
    ρ = ζ⁶ − 1 exists, meets the margin, and its parasitic root −1 has ν = −19/5."""
    assert KMAX_DESIGN == 5 and max_stable_order(6, "forward") == 6
    fam = equal_step_family(6, 6, symmetric=True)
    sub = dict.fromkeys(fam.params, 0)
    a = [e.xreplace(sub) for e in fam.a]
    b = [e.xreplace(sub) for e in fam.b]
    assert a == [0, 0, 0, 0, 0, 1]
    assert margin_ok(a, "bidirectional")
    nu = min(growth_parameters(a, b), key=lambda p: abs(p[0] + 1))[1]
    assert abs(nu - (-19 / 5)) < 1e-12 and -nu.real > GROWTH_MAX
    assert growth_violation(a, b) > 0
    # the maximal-order method has no stability requirement: any k
    assert design(6, "none").order_equal == 10
