"""Grid design (lmsolvers.griddesign), the damped-landing O-BELM and the default
configuration of DiffusionSampler (issue 10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmsolvers as L
from lmsolvers.families import LANDING_SWITCH, obelm_landing
from lmsolvers.grid import alphas_cumprod_from_betas, linear_betas
from lmsolvers.griddesign import (
    DEFAULT_MAX_AMPLIFICATION,
    ErrorModel,
    _design_schedule_cached,
    design_grid,
    design_schedule_grid,
)

AC = alphas_cumprod_from_betas(linear_betas())  # DDPM's / the digits model's table
N = 10


def independent_roundoff_amplification(a: np.ndarray) -> float:
    """Local conditioning times backward growth of a two-step method, written out:
    ``max_r Π_{q>r} 1/|a_{q,2}|`` and ``max(Σ|a|, (1 + |a_1|)/|a_2|)``."""
    inv = 1.0 / np.abs(a[:, 1])
    growth = max([1.0] + [float(np.prod(inv[r + 1:])) for r in range(a.shape[0])])
    local = max(1.0, float(np.max(np.maximum(np.abs(a).sum(1), (1 + np.abs(a[:, 0])) * inv))))
    return local * growth


@pytest.fixture(scope="module")
def designed():
    return design_schedule_grid(obelm_landing(0.1), N, AC)


def test_designed_grid_is_valid(designed):
    g, T = designed.grid, AC.size
    assert g.N == N and g.sigma_bar[0] == 0.0 and g.alphas[0] == 1.0
    t = g.timesteps[1:]
    assert t[-1] == T - 1                          # the top node: the last training step
    assert np.all(t == np.round(t)) and np.all(np.diff(t) > 0) and t[0] >= 0
    np.testing.assert_allclose(g.alphas[1:] ** 2, AC[t.astype(int)], rtol=1e-12)
    ce = L.engine.CountingEps(lambda x, s: torch.zeros_like(x))
    L.sample(ce, g, designed.method, torch.zeros(1, 2, dtype=torch.float64), disable=True)
    assert ce.calls <= N                           # NFE per run ≤ n


def test_designed_grid_meets_its_amplification_bound(designed):
    m, g = designed.method, designed.grid
    R = independent_roundoff_amplification(m.coefficients(g).a)
    assert R <= DEFAULT_MAX_AMPLIFICATION
    assert R == pytest.approx(m.roundoff_amplification(g), rel=1e-9)
    assert designed.roundoff_amplification == pytest.approx(R, rel=1e-9)
    assert designed.amplification == m.amplification(g, "backward")
    assert L.predicted_roundtrip_error(m, g, torch.float64) <= 1.2e-9


def test_design_is_deterministic(designed):
    _design_schedule_cached.cache_clear()
    again = design_schedule_grid(obelm_landing(0.1), N, AC)
    assert again is not designed
    assert again.grid.fingerprint() == designed.grid.fingerprint()


def test_tighter_bound_and_final_node_alpha_0():
    d = design_schedule_grid(L.obelm(), 8, AC, final_alpha_cumprod=float(AC[0]),
                             max_amplification=1e5)
    assert independent_roundoff_amplification(d.method.coefficients(d.grid).a) <= 1e5
    assert d.grid.timesteps[0] == 0 and d.grid.timesteps[1] >= 1 and d.grid.N == 8
    assert d.grid.sigma_bar[0] == pytest.approx(np.sqrt((1 - AC[0]) / AC[0]))


def test_continuous_design():
    d = design_grid(L.obelm(), 12, 20.0, model=ErrorModel(roughness=1e-3))
    s = d.grid.sigma_bar
    assert d.grid.N == 12 and s[0] == 0.0 and s[-1] == pytest.approx(20.0)
    assert d.roundoff_amplification <= DEFAULT_MAX_AMPLIFICATION


def test_design_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="two-step methods"):
        design_schedule_grid(L.belm(3), 8, AC)
    with pytest.raises(ValueError, match="distinct timesteps"):
        design_schedule_grid(L.obelm(), 5, AC[:4])
    with pytest.raises(ValueError, match="decrease strictly"):
        design_schedule_grid(L.obelm(), 5, AC[::-1])
    with pytest.raises(ValueError, match="integer"):
        design_schedule_grid(L.obelm(), 2.5, AC)
    with pytest.raises(TypeError, match="LMMethod"):
        design_schedule_grid(L.edict(), 8, AC)


# ------------------------------------------------------------- the landing method
def test_obelm_landing_is_obelm_except_onto_zero():
    m, ob = obelm_landing(0.1), L.obelm()
    assert m.is_bidirectional_explicit
    g = L.Grid([0.0, 0.01, 0.02, 0.05, 0.3, 1.0, 4.0])
    a, a_ob = m.coefficients(g).a, ob.coefficients(g).a
    assert a[0, 1] == pytest.approx(0.1 * a_ob[0, 1], rel=1e-12)   # landing: damped by γ
    rel = np.abs(a[1:, 1] / a_ob[1:, 1] - 1)        # step landing on node r: h_{r+1}, σ̄_r
    r = np.arange(1, a.shape[0])
    assert np.all(rel <= float(LANDING_SWITCH) * g.h[r] / g.sigma_bar[r])
    np.testing.assert_allclose(a.sum(1), 1.0, rtol=0, atol=1e-14)  # consistent
    with pytest.raises(ValueError, match="gamma"):
        obelm_landing(0.0)


def test_obelm_landing_is_second_order_on_a_smooth_problem():
    # x̄' = cos σ̄ from σ̄ = 3 to 0: one first-order landing step keeps global order 2
    def eps(x, s):
        return torch.full_like(x, float(np.cos(s)))

    errs = []
    for n in (40, 80):
        g = L.Grid.power(n, 3.0, rho=1.5)
        x = L.sample(eps, g, obelm_landing(0.1), torch.full((1,), np.sin(3.0),
                                                              dtype=torch.float64), disable=True)
        errs.append(abs(float(x[0])))
    assert errs[0] / errs[1] > 3.0


# ------------------------------------------------------------ DiffusionSampler
def test_default_sampler_uses_the_design_and_round_trips_on_the_digits_model():
    from diffusers import DDPMScheduler, UNet2DModel
    from lmsolvers.adapters.diffusers import (
        DiffusionSampler,
        default_design,
        default_method,
        grid_from_scheduler,
    )

    from benchmarks.digits_data import REPO_ROOT, load_digits_split

    model = REPO_ROOT / "models" / "digits_ddpm"
    unet = UNet2DModel.from_pretrained(model).eval()
    sched = DDPMScheduler.from_pretrained(model)
    s = DiffusionSampler(unet, sched, N, disable_progress=True)
    assert s.design is not None and s.method.key == default_method(N).key
    assert s.grid.fingerprint() == default_design(N, AC).grid.fingerprint()
    assert s.amplification == s.method.amplification(s.grid, "backward") > 1
    # an explicit two-step method on the designed grid: the two-step design
    o = DiffusionSampler(unet, sched, N, obelm_landing(0.1), grid="designed",
                         disable_progress=True)
    assert o.grid.fingerprint() == design_schedule_grid(o.method, N, AC).grid.fingerprint()
    x0 = load_digits_split("test")[0][:3].double()
    rec = s.reconstruct(x0)
    assert float((rec - x0).norm() / x0.norm()) <= 1e-10
    nfe = []
    s.sample(torch.randn(1, 1, 8, 8, dtype=torch.float64), callback=lambda i: nfe.append(i["nfev"]))
    assert max(nfe) <= N
    # the scheduler's own spacing on request (O-BELM, the previous default)
    keep = DiffusionSampler(unet, sched, N, grid="scheduler", disable_progress=True)
    assert keep.design is None and keep.method.key == L.obelm().key
    assert keep.grid.fingerprint() == grid_from_scheduler(sched, N).fingerprint()
    # an explicit method keeps the scheduler's grid unless a design is asked for
    assert DiffusionSampler(unet, sched, N, L.obelm(), disable_progress=True).design is None
    with pytest.raises(ValueError, match="grid must be"):
        DiffusionSampler(unet, sched, N, grid="trailing")


def test_the_default_method_has_a_name_that_parses_back():
    from lmsolvers.defaultconfig import FLOW_REGIMES, REGIMES, default_method

    for flow, regimes in ((False, REGIMES), (True, FLOW_REGIMES)):
        for first, k, _, gamma in regimes:
            m = default_method(first, flow)
            assert (m.k, float(m.landing_gamma)) == (k, gamma)
            assert L.method_from_name(m.name) is m   # one object per (k, landing, γ)
    assert L.ebelm(5) is L.ebelm(5, "adams", 1) is L.method_from_name("ebelm5")
    m = L.obelm_landing()
    assert L.method_from_name(m.name).key == m.key
    assert L.method_from_name("obelm-landing(0.5)").key == L.obelm_landing(0.5).key
