"""No silent wrong results: latent identity, exactness warnings, instability, callbacks."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

import lmsolvers as L
from lmsolvers.problems import TanhField


def x0_of(dim=4, batch=2, seed=0, dtype=torch.float64):
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def quiet_invert(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", L.ExactnessWarning)
        return L.invert(*args, **kwargs)


# ------------------------------------------------------------- latent identity (A1)
def test_latent_refuses_a_grid_that_differs_below_the_top_nodes():
    """Only the bottom node differs: the top-k σ̄ agree, the trajectory does not."""
    eps = TanhField(dim=4, seed=1)
    grid = L.Grid.power(20, 5.0)
    extra = L.Grid(np.concatenate([[0.0], grid.sigma_bar[1:2] / 2, grid.sigma_bar[1:]]))
    assert extra.sigma_bar[-2:].tolist() == grid.sigma_bar[-2:].tolist()
    lat = L.invert(eps, grid, L.obelm(), x0_of(), disable=True)
    with pytest.raises(L.LatentMismatchError, match="N = 20 steps, this grid has N = 21"):
        L.sample(eps, extra, L.obelm(), lat, disable=True)
    moved = L.Grid(np.concatenate([[0.01], grid.sigma_bar[1:]]))
    with pytest.raises(L.LatentMismatchError, match="sigma_bar at node 0"):
        L.sample(eps, moved, L.obelm(), lat, disable=True)
    # the same grid rebuilt from the same numbers is accepted, and reproduces x0
    same = L.Grid(grid.sigma_bar.copy())
    torch.testing.assert_close(L.sample(eps, same, L.obelm(), lat, disable=True), x0_of(),
                               rtol=0, atol=1e-12)


def test_latent_refuses_other_timesteps_or_alphas():
    eps = TanhField(dim=4, seed=1)
    s = L.Grid.power(10, 5.0).sigma_bar
    g = L.Grid(s, timesteps=np.arange(11.0))
    lat = L.invert(eps, g, L.obelm(), x0_of(), disable=True)
    with pytest.raises(L.LatentMismatchError, match="timesteps at node 3"):
        t = np.arange(11.0)
        t[3] += 0.5
        L.sample(eps, L.Grid(s, timesteps=t), L.obelm(), lat, disable=True)
    with pytest.raises(L.LatentMismatchError, match="model timesteps"):
        L.sample(eps, L.Grid(s), L.obelm(), lat, disable=True)


def test_edict_latent_is_tied_to_its_step_count():
    """EDICT's two latent states share σ̄_max: any N with the same σ̄_max passed before."""
    eps = TanhField(dim=4, seed=2)
    lat = L.invert(eps, L.Grid.power(10, 5.0), L.edict(), x0_of(), disable=True)
    with pytest.raises(L.LatentMismatchError, match="N = 10 steps, this grid has N = 12"):
        L.sample(eps, L.Grid.power(12, 5.0), L.edict(), lat, disable=True)


def test_method_parameters_are_compared_exactly():
    eps = TanhField(dim=4, seed=3)
    grid = L.Grid.power(10, 5.0)
    lat = L.invert(eps, grid, L.bdia(0.9), x0_of(), disable=True)
    with pytest.raises(L.LatentMismatchError, match="made by method 'bdia\\(0.9\\)', not "
                                                    "'bdia\\(0.9000001\\)'"):
        L.sample(eps, grid, L.bdia(0.9000001), lat, disable=True)
    lat = L.invert(eps, grid, L.edict(0.93), x0_of(), disable=True)
    with pytest.raises(L.LatentMismatchError, match="alternate"):
        L.sample(eps, grid, L.edict(0.93, alternate=True), lat, disable=True)
    # a same-named method with other coefficients is still another method
    m = L.obelm()
    other = L.LMMethod(m.name, m.a, tuple(2 * b for b in m.b))
    lat = L.invert(eps, grid, m, x0_of(), disable=True)
    with pytest.raises(L.LatentMismatchError, match="same name, different coefficients"):
        L.sample(eps, grid, other, lat, disable=True)


def test_context_is_recorded_and_compared():
    eps = TanhField(dim=4, seed=4)
    grid = L.Grid.power(10, 5.0)
    lat = L.invert(eps, grid, L.obelm(), x0_of(), context={"guidance_scale": 3.0},
                   disable=True)
    with pytest.raises(L.LatentMismatchError, match="guidance_scale: 3.0 when inverted, "
                                                    "'<unset>' now"):
        L.sample(eps, grid, L.obelm(), lat, disable=True)
    with pytest.raises(L.LatentMismatchError, match="guidance_scale: 3.0 when inverted, 1.0"):
        L.sample(eps, grid, L.obelm(), lat, context={"guidance_scale": 1.0}, disable=True)
    out = L.sample(eps, grid, L.obelm(), lat, context={"guidance_scale": 3.0}, disable=True)
    torch.testing.assert_close(out, x0_of(), rtol=0, atol=1e-12)
    # editing on purpose: declared, then accepted
    L.sample(eps, grid, L.obelm(), lat.with_context({"guidance_scale": 1.0}),
             context={"guidance_scale": 1.0}, disable=True)
    assert lat.fingerprint != lat.with_context({"guidance_scale": 1.0}).fingerprint


def test_methods_are_accepted_by_name_everywhere():
    eps = TanhField(dim=4, seed=5)
    grid = L.Grid.power(10, 5.0)
    for name in ("obelm", "bdia(0.9)", "edict(0.93)", "edict(0.93, alternate)", "belm3"):
        m = L.method_from_name(name)
        assert L.method_from_name(m.name).key == m.key  # names parse back exactly
        lat = L.invert(eps, grid, name, x0_of(), disable=True)
        out = L.sample(eps, grid, name, lat, disable=True)
        torch.testing.assert_close(out, x0_of(), rtol=0, atol=1e-11)
    with pytest.raises(ValueError, match="unknown method 'leapfrog'; names are"):
        L.method_from_name("leapfrog")
    with pytest.raises(TypeError, match="name or an lmsolvers method"):
        L.sample(eps, grid, 3, x0_of(), disable=True)


# --------------------------------------------------------- exactness guard (A2)
@pytest.mark.parametrize("method, grid, dtype", [
    (L.bdia(0.5), L.Grid.stable_diffusion(50), torch.float64),
    (L.bdia(0.5), L.Grid.stable_diffusion(50), torch.float32),
    (L.edict(), L.Grid.power(1000, 5.0), torch.float64),
    ("belm3-max", L.Grid.power(40, 5.0), torch.float64),
])
def test_invert_warns_or_refuses_when_round_off_swamps_exactness(method, grid, dtype):
    m = L.method_from_name(method)
    pred = L.predicted_roundtrip_error(m, grid, dtype)
    assert pred > 0.1
    calls = L.engine.CountingEps(TanhField(dim=3, seed=0))
    with pytest.raises(L.ExactnessError, match="amplification .* predicts a relative round-"
                                               "trip error up to " + re.escape(f"{pred:.3g}")):
        L.invert(calls, grid, m, x0_of(3, dtype=dtype), strict=True, disable=True)
    assert calls.calls == 0  # refused before any network evaluation
    with pytest.warns(L.ExactnessWarning, match="bitexact=True"):
        try:
            L.invert(calls, grid, m, x0_of(3, dtype=dtype), disable=True)
        except L.SolverInstabilityError:
            pass  # the maximal-order 3-step method also diverges: reported as such


def test_no_warning_where_the_round_trip_is_exact():
    eps = TanhField(dim=3, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dtype in (torch.float64, torch.float32):
            L.invert(eps, L.Grid.stable_diffusion(50), L.obelm(), x0_of(3, dtype=dtype),
                     disable=True)


def test_amplification_of_long_runs_is_inf_not_an_overflow_error():
    assert L.amplification(L.edict(), L.Grid.power(20_000, 5.0)) == float("inf")
    assert L.amplification(L.method_from_name("belm3-max"), L.Grid.power(400, 5.0)) == \
        float("inf")


def test_divergence_is_reported_as_the_solvers_instability():
    """The unstable maximal-order 3-step BELM overflows: the state, not ε, is to blame."""
    eps = TanhField(dim=3, seed=0)  # tanh: ε stays finite even at huge inputs
    grid = L.Grid.power(400, 5.0)
    m = L.method_from_name("belm3-max")
    with pytest.raises(L.SolverInstabilityError, match="diverged"):
        quiet_invert(eps, grid, m, x0_of(3), disable=True)
    with pytest.raises(L.SolverInstabilityError, match="diverged"):
        L.sample(eps, grid, m, x0_of(3) * 5, disable=True)

    def blows_up(x, s):  # ε that propagates its input's overflow
        return x * 10.0

    with pytest.raises(L.SolverInstabilityError, match="has grown to .* the solver diverged"):
        quiet_invert(blows_up, grid, m, x0_of(3), disable=True)
    with pytest.raises(FloatingPointError, match="eps returned NaN/Inf at node 20"):
        L.sample(lambda x, s: x * float("nan"), L.Grid.power(20, 5.0), L.obelm(), x0_of(3),
                 disable=True)


# ----------------------------------------------------------------- callbacks (A6)
@pytest.mark.parametrize("bitexact", [False, True])
def test_callbacks_get_copies(bitexact):
    eps = TanhField(dim=4, seed=6)
    grid = L.Grid.power(12, 5.0)
    lat = L.invert(eps, grid, L.obelm(), x0_of(), disable=True, bitexact=bitexact)
    clean = L.sample(eps, grid, L.obelm(), lat, disable=True, bitexact=bitexact)
    seen = []

    def vandal(info):
        seen.append(info["x"])
        info["x"].mul_(0.0)  # edits what it was given
        if bitexact:
            info["fixed"].zero_()

    out = L.sample(eps, grid, L.obelm(), lat, callback=vandal, disable=True, bitexact=bitexact)
    assert torch.equal(out, clean)
    assert seen and all(s.data_ptr() != out.data_ptr() for s in seen)
    assert all(float(s.abs().max()) == 0.0 for s in seen)  # the callback's own copies


def test_callback_reports_network_evaluations():
    nfev = []
    L.sample(TanhField(dim=2), L.Grid.power(9, 3.0), L.edict(), x0_of(2),
             callback=lambda d: nfev.append(d["nfev"]), disable=True)
    assert nfev == [2 * i for i in range(1, 10)]


# ------------------------------------------------------------- bad input (A9)
@pytest.mark.parametrize("call, match", [
    (lambda: L.Grid.power(-3, 5.0), "integer ≥ 1"),
    (lambda: L.Grid.power(10.5, 5.0), "integer ≥ 1"),
    (lambda: L.Grid.power(10, 5.0, rho=float("nan")), "rho"),
    (lambda: L.Grid.power(10, 1.0, sigma_min=2.0), "sigma_min < sigma_max"),
    (lambda: L.bdia(float("nan")), "finite gamma > 0"),
    (lambda: L.bdia(-0.5), "finite gamma > 0"),
    (lambda: L.bdia(0), "gamma = 0 is DDIM"),
    (lambda: L.edict(1.0), "0 < p < 1"),
    (lambda: L.edict(float("nan")), "0 < p < 1"),
    (lambda: L.method_from_name("bdia(x)"), "not a number"),
])
def test_bad_parameters_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bitexact_options_are_public_and_refused_in_float_mode():
    eps = TanhField(dim=3, seed=0)
    grid = L.Grid.power(10, 5.0)
    lat = L.invert(eps, grid, L.obelm(), x0_of(3), bitexact=True, frac_bits=20,
                   state_bound=4.0, disable=True)
    assert lat.plan_key[1:3] == (20, 4.0)
    out = L.sample(eps, grid, L.obelm(), lat, bitexact=True, disable=True)
    # the result is bitwise the fixed-point image of x0 in the requested format
    plan = L.bitexact.fixed_point_plan(L.obelm(), grid, torch.float64, frac_bits=20,
                                       state_bound=4.0)
    assert torch.equal(out, plan.dequantize(plan.quantize(x0_of(3), 0), 0))
    with pytest.raises(ValueError, match="bitexact=True"):
        L.invert(eps, grid, L.obelm(), x0_of(3), state_bound=4.0, disable=True)


def test_progress_bars_close_when_a_run_fails():
    from tqdm.auto import tqdm

    before = len(tqdm._instances)
    with pytest.raises(FloatingPointError):
        L.sample(lambda x, s: x * float("nan"), L.Grid.power(10, 3.0), L.obelm(), x0_of(2),
                 disable=False)
    with pytest.raises(FloatingPointError):
        L.invert(lambda x, s: x * float("nan"), L.Grid.power(10, 3.0), L.obelm(), x0_of(2),
                 disable=False)
    assert len(tqdm._instances) == before


def test_window_put_replaces_the_cached_eps():
    """ε at a node is evaluated from the state stored there: a new state, a new ε."""
    from lmsolvers.engine import EpsEvaluator, Window

    x = x0_of(3)
    ev = EpsEvaluator(lambda z, s: z * 2.0, x)
    w = Window(np.array([0.0, 1.0, 2.0]), ev)
    w.put(1, x)
    torch.testing.assert_close(w.eps(1), 2 * x, rtol=0, atol=0)
    w.eps(1)
    assert ev.nfev == 1  # cached
    w.put(1, 3 * x)
    torch.testing.assert_close(w.eps(1), 6 * x, rtol=0, atol=0)
    assert ev.nfev == 2


def test_a_latent_with_too_few_states_is_refused():
    import dataclasses

    eps = TanhField(dim=4, seed=7)
    grid = L.Grid.power(10, 5.0)
    lat = L.invert(eps, grid, L.obelm(), x0_of(), disable=True)
    short = dataclasses.replace(lat, states=lat.states[1:], nodes=())
    with pytest.raises(L.LatentMismatchError, match="latent has 1 states, method 'obelm' "
                                                    "needs 2"):
        L.sample(eps, grid, L.obelm(), short, disable=True)


def test_edict_alternate_updates_y_first_on_odd_steps():
    """The community pipeline's order, written out by hand: odd steps (from the top)
    update ȳ with ε(x̄) first, then x̄ with ε at the stepped ȳ′ (scaled to node i's α)."""
    p, q = 0.93, 0.07
    grid = L.Grid.power(5, 3.0)
    eps = TanhField(dim=3, seed=2)
    x = y = x0_of(3)
    for n, i in enumerate(range(grid.N, 0, -1)):
        s, h = float(grid.sigma_bar[i]), float(grid.h[i - 1])
        r = float(grid.alphas[i - 1] / grid.alphas[i])
        if n % 2 == 0:
            xi = x - h * eps(y, s)
            yi = y - h * eps(r * xi, s)
        else:
            yi = y - h * eps(x, s)
            xi = x - h * eps(r * yi, s)
        x = p * xi + q * yi
        y = p * yi + q * x
    out = L.sample(eps, grid, L.edict(p, alternate=True), x0_of(3), disable=True)
    torch.testing.assert_close(out, x, rtol=1e-14, atol=1e-14)
    plain = L.sample(eps, grid, L.edict(p), x0_of(3), disable=True)
    assert float((plain - out).abs().max()) > 1e-6
