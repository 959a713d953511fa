"""Stochastic samplers with exact inversion (docs/design.md §13): the counter-based noise, the
symbolic noise laws, the principal-mode injection, exactness and the latent's noise identity,
bit-exact mode and gradients by reversal."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import special, stats

import lmsolvers as L
from lmsolvers import sde
from lmsolvers.engine import Run, drive_sampling
from lmsolvers.noise import NOISE_GENERATOR, NoiseSource, ndtri, normal_noise
from lmsolvers.problems import GaussianMixture, TanhField
from lmsolvers.sde import ETA, S, T
from lmsolvers.stochastic import StochasticStabilityWarning, _stiff_growth

GMM = GaussianMixture()
GRID = L.Grid.power(24, 10.0, 0.0, 2.0)


# ---------------------------------------------------------------------------- noise
def test_quantile_matches_scipy_to_round_off():
    u = np.concatenate([np.logspace(-300, -1, 4000), np.linspace(1e-3, 1 - 1e-3, 20001)])
    u = np.concatenate([u, 1.0 - u[(u < 0.49) & (u > 1e-15)]])
    ref = special.ndtri(u)
    assert np.max(np.abs(ndtri(u) - ref) / np.maximum(np.abs(ref), 1e-3)) < 5e-15


def test_noise_is_a_pure_function_of_seed_node_and_row():
    z = normal_noise(7, 3, (5, 2, 3))
    assert z.shape == (5, 2, 3) and z.dtype == np.float64
    assert np.array_equal(normal_noise(7, 3, (2, 2, 3)), z[:2])  # batch size: a prefix
    assert not np.array_equal(normal_noise(7, 4, (5, 2, 3)), z)  # another node
    assert not np.array_equal(normal_noise(8, 3, (5, 2, 3)), z)  # another seed
    # one seed per row: row b keyed (seed_b, 0), i.e. as that sample run alone
    rows = normal_noise((11, 12, 13), 3, (3, 6))
    for b, seed in enumerate((11, 12, 13)):
        assert np.array_equal(rows[b], normal_noise(seed, 3, (1, 6))[0])


def test_golden_values():
    """The first numbers of (seed 0, node 0, row 0), written out: a change of the hash, the
    uniform map or the quantile shows here, and must come with a new NOISE_GENERATOR (old
    latents would otherwise be sampled with other noise)."""
    assert NOISE_GENERATOR == "splitmix64-as241-v1"
    golden = ["-0x1.4ce85b95f7fb6p+0", "-0x1.79a7ba3a611c4p-3", "-0x1.565fa205a73f3p-1"]
    assert normal_noise(0, 0, (1, 3))[0].tolist() == [float.fromhex(h) for h in golden]


def test_noise_is_standard_normal_and_independent():
    z = normal_noise(2024, 0, (200_000,))
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 5 / math.sqrt(z.size) and abs(z.var() - 1) < 0.02
    nodes = np.stack([normal_noise(2024, m, (20_000,)) for m in range(6)])
    corr = np.corrcoef(nodes)
    assert np.max(np.abs(corr - np.eye(6))) < 5 / math.sqrt(20_000)
    rows = normal_noise(2024, 0, (6, 20_000))
    assert np.max(np.abs(np.corrcoef(rows) - np.eye(6))) < 5 / math.sqrt(20_000)


def test_noise_source_casts_after_generation_and_checks_rows():
    z64 = NoiseSource(3, (2, 4), torch.float64, "cpu")(5)
    z32 = NoiseSource(3, (2, 4), torch.float32, "cpu")(5)
    assert torch.equal(z32, z64.float())
    with pytest.raises(ValueError, match="one seed per row"):
        NoiseSource((1, 2, 3), (2, 4), torch.float64, "cpu")
    for bad, err in ((-1, ValueError), (2**64, ValueError), (1.5, TypeError), (True, TypeError),
                     ((), ValueError)):
        with pytest.raises(err):
            normal_noise(bad, 0, (1,))


# ----------------------------------------------------------------- symbolic laws
def test_noise_laws_are_the_published_steps():
    r_ddim, c_ddim = sde.ddim_step()
    r_sde, c_sde = sde.frozen_transition()
    r_dpm, c_dpm = sde.dpmpp_sde_step()
    for law, (r, c) in {"ddim": (r_ddim, c_ddim), "sde": (r_sde, c_sde)}.items():
        rho, c2 = sde.noise_law(law)
        assert sp.simplify(rho - r) == 0
        assert sp.simplify(sp.expand_func(c2).rewrite(sp.exp) - c) == 0
        # both keep a point mass's marginal: ρ² s² + c² = t²
        assert sp.simplify(sp.expand_func(rho**2 * S**2 + c2).rewrite(sp.exp) - T**2) == 0
        assert sde.weak_order_one_conditions(rho, c2) == [0, 0, 0, 0]
    # η = 1: DDIM's DDPM step = SDE-DPM-Solver++(1) = the exact transition
    for r, c in ((r_ddim, c_ddim), (r_sde, c_sde)):
        assert sp.simplify(r.subs(ETA, 1) - r_dpm) == 0
        assert sp.simplify(c.subs(ETA, 1) - c_dpm) == 0
    # in between the two laws differ (at second order in the step)
    half = sp.Rational(1, 2)
    assert sp.simplify(r_ddim.subs(ETA, half) - r_sde.subs(ETA, half)) != 0


def test_time_change_and_principal_weights():
    tau, ratio = sde.time_change()
    assert sp.simplify(tau - sde.U ** (1 + ETA**2)) == 0
    assert sp.simplify(ratio - sde.U ** (-ETA**2)) == 0
    a = sp.symbols("a1:4")
    assert sde.principal_noise_weights(a) == [1, a[1] + a[2], a[2]]
    principal, parasitic = sde.fresh_noise_split()
    a2 = sp.Symbol("a2", positive=True)
    assert sp.simplify(principal - 1 / (1 + a2)) == 0
    assert sp.simplify(parasitic - a2 / (1 + a2)) == 0
    s = GRID.sigma_bar
    np.testing.assert_allclose(sde.time_grid(s, 0.5, "sde"), s**1.25, rtol=1e-13)
    assert sde.noise_std(s, 0.5, "sde")[0] == 0.0  # no fresh noise on landing at σ̄ = 0


# ------------------------------------------------------------- the sampler
def _y_process_reference(eps, grid, method, eta, seed, x_N):
    """Independent transcription of the construction: the deterministic rows on
    ``y = x̄ − W`` with ε at ``y + W`` (W: the step noises summed from the top)."""
    s = grid.sigma_bar
    N, k = grid.N, method.k
    tau = sde.time_grid(s, eta, "ddim")
    c = sde.noise_std(s, eta, "ddim")
    co = method.coefficients(L.Grid(tau))
    xi = {n: c[n] * torch.from_numpy(normal_noise(seed, n, tuple(x_N.shape))) for n in range(N)}
    W = {N: torch.zeros_like(x_N)}
    for n in range(N - 1, -1, -1):
        W[n] = W[n + 1] + xi[n]
    x = {N: x_N}
    for m in range(N, N - k + 1, -1):  # the stochastic starter (DDIM's η-step)
        rho = tau[m - 1] / tau[m]
        x[m - 1] = x[m] - s[m] * (1 - rho) * eps(x[m], float(s[m])) + xi[m - 1]
    for r in range(N - k, -1, -1):
        y = sum(float(co.a[r, j - 1]) * (x[r + j] - W[r + j]) for j in range(1, k + 1))
        y = y + sum(float(co.bh[r, j]) * s[r + j] / tau[r + j] * eps(x[r + j], float(s[r + j]))
                    for j in range(1, k + 1))
        x[r] = y + W[r]
    return x[0]


@pytest.mark.parametrize("name", ["obelm", "belm4"])
def test_noise_enters_the_principal_mode_only(name):
    method = L.method_from_name(name)
    x_N = GMM.prior(16, 10.0, torch.Generator().manual_seed(1))
    out = L.sample(GMM.eps, GRID, L.stochastic(method, 0.5, drift="time"), x_N, seed=9,
                   disable=True)
    ref = _y_process_reference(GMM.eps, GRID, method, 0.5, 9, x_N)
    torch.testing.assert_close(out, ref, rtol=1e-11, atol=1e-11)


def test_one_step_member_is_ddim_eta():
    """k = 1: x̄_t = x̂₀ + sqrt(t² − c²) ε̄ + c z with DDIM's c (Song et al. eq. 12/16)."""
    f = TanhField(3, seed=2)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = L.Grid([0.0, 0.3, 1.1, 2.0])
    out = L.sample(f, grid, "ddim+eta(0.7)", x, seed=4, disable=True)
    s = grid.sigma_bar
    for m in (3, 2, 1):
        sb, tb = s[m], s[m - 1]
        c = 0.7 * tb * math.sqrt(1 - (tb / sb) ** 2)
        e = f(x, float(sb))
        z = torch.from_numpy(normal_noise(4, m - 1, (4, 3)))
        x = (x - sb * e) + math.sqrt(tb**2 - c**2) * e + c * z
    torch.testing.assert_close(out, x, rtol=1e-13, atol=1e-13)


CASES = ["obelm+eta(0.5)", "obelm-landing(0.1)+eta(1.0, sde)", "belm4+eta(0.3)",
         "bdia(1.0)+eta(0.2)", "obelm+eta(1.0, relation)"]


@pytest.mark.filterwarnings("ignore::lmsolvers.stochastic.StochasticStabilityWarning")
@pytest.mark.parametrize("name", CASES)
def test_exact_round_trip_and_identity(name):
    m = L.method_from_name(name)
    assert L.method_from_name(m.name).key == m.key  # the name parses back
    x0 = GMM.data(32, torch.Generator().manual_seed(3))
    lat = L.invert(GMM.eps, GRID, m, x0, seed=5, disable=True)
    assert dict(lat.noise) == {"eta": m.eta, "law": m.law, "generator": NOISE_GENERATOR,
                               "seed": 5}
    rec = L.sample(GMM.eps, GRID, m, lat, disable=True)  # the seed comes with the latent
    bound = max(1e-13, 50 * L.predicted_roundtrip_error(m, GRID, torch.float64))
    assert float((rec - x0).norm() / x0.norm()) <= bound
    with pytest.raises(L.LatentMismatchError, match="seed: 5 when inverted, 6 now"):
        L.sample(GMM.eps, GRID, m, lat, seed=6, disable=True)
    other = L.stochastic(m.method, m.eta / 2, m.law, m.drift)
    with pytest.raises(L.LatentMismatchError, match=r"made by method .*\+eta"):
        L.sample(GMM.eps, GRID, other, lat, disable=True)
    with pytest.raises(L.LatentMismatchError):
        L.sample(GMM.eps, GRID, m.method, lat, disable=True)


def test_seed_rules():
    m = L.stochastic(L.obelm(), 0.5)
    x_N = GMM.prior(8, 10.0, torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="pass seed="):
        L.sample(GMM.eps, GRID, m, x_N, disable=True)
    with pytest.raises(ValueError, match="pass seed="):
        L.invert(GMM.eps, GRID, m, x_N, disable=True)
    with pytest.raises(ValueError, match="is deterministic"):
        L.sample(GMM.eps, GRID, L.obelm(), x_N, seed=1, disable=True)
    det = L.invert(GMM.eps, GRID, L.obelm(), x_N, disable=True)
    with pytest.raises(L.LatentMismatchError):
        L.sample(GMM.eps, GRID, m, det, seed=1, disable=True)
    a = L.sample(GMM.eps, GRID, m, x_N, seed=1, disable=True)
    assert torch.equal(a, L.sample(GMM.eps, GRID, m, x_N, seed=1, disable=True))
    assert float((a - L.sample(GMM.eps, GRID, m, x_N, seed=2, disable=True)).norm()) > 0.1
    # one seed per row: each row as if run alone (GMM's ε is row-wise)
    rows = L.sample(GMM.eps, GRID, m, x_N[:3], seed=(4, 5, 6), disable=True)
    for b, seed in enumerate((4, 5, 6)):
        alone = L.sample(GMM.eps, GRID, m, x_N[b:b + 1], seed=(seed,), disable=True)
        torch.testing.assert_close(rows[b:b + 1], alone, rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="eta must be > 0"):
        L.stochastic(L.obelm(), 0.0)
    with pytest.raises(ValueError, match="law='sde'"):
        L.stochastic(L.obelm(), 1.5)
    with pytest.raises(TypeError, match="LMMethod"):
        L.stochastic(L.edict(), 0.5)


def test_memory_is_o_k():
    """The window keeps at most k states, ε's and noises, whatever N (no stored noise)."""
    grid = L.Grid.power(300, 10.0, 0.0, 2.0)
    m = L.stochastic(L.belm(3), 0.5).with_seed(1)
    x = GMM.prior(4, 10.0, torch.Generator().manual_seed(0))
    plan = m.prepare(grid, x.dtype, "forward")
    held = []
    with Run(GMM.eps, grid, x, check_finite=True, callback=None, disable=True, desc="",
             total=grid.N) as run:
        run.callback = lambda info: held.append((len(run.window.nodes), len(run.window._z)))
        drive_sampling(m, plan, run, x, False)
    assert max(h[0] for h in held) <= m.k and max(h[1] for h in held) <= m.k + 1


@given(seed=st.integers(0, 2**64 - 1), eta=st.sampled_from([0.1, 0.6, 1.0]))
def test_bitexact_round_trip_is_bitwise(seed, eta):
    f = TanhField(4, seed=1)
    x0 = torch.randn(3, 4, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    m = L.stochastic(L.obelm(), eta)
    grid = L.Grid.power(12, 5.0, 0.0, 2.0)
    lat = L.invert(f, grid, m, x0, seed=seed, bitexact=True, disable=True)
    rec = L.sample(f, grid, m, lat, bitexact=True, disable=True)
    back = L.sample(f, grid, m, L.invert(f, grid, m, rec, seed=seed, bitexact=True,
                                         disable=True), bitexact=True, disable=True)
    assert torch.equal(rec, back)  # the fixed-point image is a fixed point: bitwise
    assert float((rec - x0).abs().max()) <= 2.0 ** -25
    assert dict(lat.noise)["seed"] == seed


def test_reversible_gradient_equals_full_autograd():
    f = TanhField(4, seed=3)
    m = L.stochastic(L.obelm(), 0.5)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x.requires_grad_(True)
    grads = []
    for mode in ("reversible", "full"):
        out = L.sample(f, GRID, m, x, seed=3, grad=mode, disable=True)
        grads.append(torch.autograd.grad(out.square().sum(), x)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_drift_designs_trade_stability_for_amplification():
    grid = L.Grid.stable_diffusion(50)
    ode = _stiff_growth(L.obelm().coefficients(grid), grid.sigma_bar, grid.sigma_bar)
    t = L.stochastic(L.obelm(), 1.0, drift="time")
    r = L.stochastic(L.obelm(), 1.0, drift="relation")
    assert t.stiff_growth(grid) < 2 * ode < r.stiff_growth(grid) / 50  # time: as the ODE
    assert r.amplification(grid) == pytest.approx(L.obelm().amplification(grid))
    assert t.amplification(grid) > 100 * r.amplification(grid)  # … and its price
    assert L.stochastic(L.obelm(), 1.0).plan(grid).drift == "time"
    assert L.stochastic(L.obelm(), 0.5).plan(grid).drift == "relation"
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.warns(StochasticStabilityWarning, match="drift='time'"):
        L.sample(TanhField(3), grid, r, x, seed=1, disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StochasticStabilityWarning)
        L.sample(TanhField(3), grid, "obelm+eta(0.2, relation)", x, seed=1, disable=True)


# ------------------------------------------------------------- the benchmarks' pieces
def test_edit_friendly_peer_reconstructs_and_stores_n_maps():
    """Huberman-Spiegelglas et al.'s inversion (benchmarks.edit_friendly): exact by
    construction, with one noise map per step (our latent: k states)."""
    from benchmarks.edit_friendly import ef_invert, ef_sample

    f = TanhField(4, seed=5)
    x0 = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    lat = ef_invert(f, GRID, x0, seed=3)
    assert len(lat.zs) == GRID.N and lat.residual_last  # σ̄_0 = 0: the last map is a residual
    torch.testing.assert_close(ef_sample(f, GRID, lat), x0, rtol=1e-13, atol=1e-13)
    ours = L.invert(f, GRID, L.stochastic(L.obelm(), 0.5), x0, seed=3, disable=True)
    assert lat.nbytes == (GRID.N + 1) * x0.numel() * 8
    assert sum(s.numel() * s.element_size() for s in ours.states) == 2 * x0.numel() * 8


@pytest.mark.filterwarnings("ignore::lmsolvers.stochastic.StochasticStabilityWarning")
def test_stochastic_toy_quick(tmp_path):
    """The law benchmark end to end (reduced): the sampler's weak error shrinks with N, the
    exact Gaussian recursion matches a Monte-Carlo estimate, and the SDE-DPM-Solver++(2M)
    transcription is the diffusers algorithm on the same noise."""
    from benchmarks import stochastic_toy as T

    rec = T.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "stochastic_toy.md").stat().st_size > 0
    by = {(r["sampler"], r["steps"]): r for r in rec["rows"]}
    for nm in ("ours: O-BELM-landing (auto)", "DDIM-η (k = 1)", "SDE-DPM-Solver++(2M)"):
        assert by[(nm, 40)]["D"] < by[(nm, 10)]["D"]
    sm = T.samplers(1.0)[0]
    sb = T.S.family_grid("karras-7", 12, T.TABLE)
    mean, var = T.gaussian_variance(sm, sb)
    x = T.GAUSS.prior(200_000, float(sb[-1]), generator=torch.Generator().manual_seed(0))
    out = sm.run(T.GAUSS.eps, sb, x, 5)
    assert abs(float(out.mean()) - mean) < 5 * math.sqrt(var / x.shape[0])
    assert abs(float(out.var()) / var - 1) < 5 * math.sqrt(2 / x.shape[0])
    x = GMM.prior(8, float(sb[-1]), torch.Generator().manual_seed(1))
    assert T.check_sde_dpmpp(GMM.eps, sb, x, 3) < 1e-5  # diffusers computes in float32


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_weak_order_one_on_the_exact_gaussian_law(eta):
    """Gaussian data: the output law of the stochastic O-BELM is Gaussian and its variance
    follows from the linear recursion exactly (no sampling); its relative error shrinks
    monotonically with N at the stated weak order 1 (fitted over N = 80…640, log-uniform)."""
    from benchmarks import stochastic_toy as toy

    sm = toy.samplers(eta)[0]
    ns = [80, 160, 320, 640]
    errs = []
    for n in ns:
        _, var = toy.gaussian_variance(sm, toy.S.family_grid("log-uniform", n, toy.TABLE))
        errs.append(abs(var - toy.GAUSS.std**2) / toy.GAUSS.std**2)
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False))
    order = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert 0.85 <= order <= 1.15, (order, errs)
