"""diffusers adapters: grids from scheduler configs, the ε adapter, DiffusionSampler round trips.

Everything offline: tiny diffusers components with random weights
(:mod:`lmsolvers.adapters.tiny`), prompt embeddings as tensors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from lmsolvers.adapters import (
    BELMScheduler,
    DiffusersEps,
    DiffusionSampler,
    grid_from_scheduler,
    to_epsilon,
)
from lmsolvers.adapters.tiny import (
    SD_SCHEDULER_CONFIG,
    tiny_conditional_unet,
    tiny_prompt_embeds,
    tiny_unet,
)

from lmsolvers import Grid, bdia, obelm

F64_BOUND = 1e-10


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def sd_scheduler():
    return DDIMScheduler(**SD_SCHEDULER_CONFIG)


@pytest.fixture(scope="module")
def embeds():
    return tiny_prompt_embeds(1, batch=2), tiny_prompt_embeds(2, batch=1)


@pytest.fixture(scope="module")
def x0():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module", params=["float64", "float32", "float16"])
def cond_unet(request):
    return tiny_conditional_unet(dtype=getattr(torch, request.param))


# ----------------------------------------------------------------- grids
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [7, 10, 50])
def test_grid_indexes_the_schedulers_own_timesteps(spacing, n):
    cfg = dict(SD_SCHEDULER_CONFIG, timestep_spacing=spacing)
    ddim = DDIMScheduler(**cfg)
    ddim.set_timesteps(n)
    g = grid_from_scheduler(ddim, n)
    ts = ddim.timesteps.numpy()
    if spacing == "linspace":  # ends at t = 0, then the final ᾱ_0: a zero step, omitted
        assert ts[-1] == 0 and g.N == n - 1 and g.timesteps[0] == 0
        ts = ts[:-1]
    else:
        assert g.N == n
    np.testing.assert_array_equal(g.timesteps[1:][::-1], ts)
    ac = ddim.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(g.alphas[1:] ** 2, ac[g.timesteps[1:].astype(int)], rtol=1e-5)
    assert g.alphas[0] ** 2 == pytest.approx(float(ac[0]))  # set_alpha_to_one=False


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_ddim_ratio_prev_timestep_is_wrong_and_ours_reads_the_table(spacing):
    """docs/design.md §8: DDIMScheduler.step lands on t − T//N, not on the next table entry."""
    n, T = 7, 1000
    cfg = dict(SD_SCHEDULER_CONFIG, timestep_spacing=spacing)
    ddim, belm = DDIMScheduler(**cfg), BELMScheduler.from_config(cfg, method="ddim")
    ddim.set_timesteps(n)
    belm.set_timesteps(n)
    t, t_next = int(ddim.timesteps[0]), int(ddim.timesteps[1])
    assert t - T // n != t_next  # the ratio misses the table for this spacing
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    ac = belm.alphas_cumprod

    def ddim_to(tp: int) -> torch.Tensor:
        a, ap = ac[t], ac[tp]
        x0 = (x.double() - (1 - a).sqrt() * e.double()) / a.sqrt()
        return ap.sqrt() * x0 + (1 - ap).sqrt() * e.double()

    theirs = ddim.step(e, t, x).prev_sample
    ours = belm.step(e, t, x).prev_sample
    assert rel(theirs, ddim_to(t - T // n)) < 1e-5  # diffusers: the ratio's timestep
    assert rel(ours, ddim_to(t_next)) < 1e-6  # ours: the table's next timestep
    assert rel(ours, theirs) > 1e-3


def test_grids_from_other_scheduler_families():
    ddim = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    pndm = PNDMScheduler.from_config(ddim.config)
    a, b = grid_from_scheduler(ddim, 20), grid_from_scheduler(pndm, 20)
    np.testing.assert_array_equal(a.sigma_bar, b.sigma_bar)  # one config, one grid, bit for bit
    np.testing.assert_array_equal(a.timesteps, b.timesteps)
    for cls in (DPMSolverMultistepScheduler, EulerDiscreteScheduler):
        s = cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        g = grid_from_scheduler(s, 10)
        assert s.config.timestep_spacing == "linspace"
        assert g.sigma_bar[0] == 0.0 and g.timesteps[-1] == 999  # final σ = 0; linspace to T−1
    cos = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    g = grid_from_scheduler(cos, 10)
    ac = cos.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(g.alphas[1:] ** 2, ac[g.timesteps[1:].astype(int)], rtol=1e-5)
    assert g.sigma_bar[0] == 0.0  # DDPM default: set_alpha_to_one → ᾱ = 1


# ----------------------------------------------------------- ε conversion
@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_to_epsilon_recovers_the_noise(ptype):
    g = torch.Generator().manual_seed(1)
    x0, n = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(
        3, 5, generator=g, dtype=torch.float64)
    alpha = 0.6
    sigma = (1 - alpha**2) ** 0.5
    x = alpha * x0 + sigma * n
    out = {"epsilon": n, "v_prediction": alpha * n - sigma * x0, "sample": x0}[ptype]
    torch.testing.assert_close(to_epsilon(out, x, alpha, sigma, ptype), n, rtol=0, atol=1e-14)


def test_unsupported_prediction_type_is_a_clear_error(sd_scheduler):
    unet = tiny_conditional_unet()
    pe = tiny_prompt_embeds(0)
    with pytest.raises(ValueError, match="unsupported prediction_type 'flow'"):
        DiffusionSampler(unet, sd_scheduler, 10, prompt_embeds=pe, prediction_type="flow")
    with pytest.raises(ValueError, match="unsupported prediction_type"):
        BELMScheduler.from_config(dict(SD_SCHEDULER_CONFIG, prediction_type="flow"))


def test_mismatched_grid_is_a_clear_error(sd_scheduler):
    unet = tiny_conditional_unet()
    other = grid_from_scheduler(DDIMScheduler(beta_schedule="linear"), 10)
    with pytest.raises(ValueError, match="grid/scheduler mismatch"):
        DiffusersEps(unet, other, sd_scheduler, prompt_embeds=tiny_prompt_embeds(0))
    with pytest.raises(ValueError, match="no model timesteps"):
        DiffusersEps(unet, Grid.power(10, 10.0), sd_scheduler, prompt_embeds=tiny_prompt_embeds(0))
    with pytest.raises(ValueError, match="needs negative_prompt_embeds"):
        DiffusionSampler(unet, sd_scheduler, 10, guidance_scale=3.0,
                         prompt_embeds=tiny_prompt_embeds(0))


def test_fractional_timesteps_between_nodes(sd_scheduler):
    """RK4 starter stages sit between nodes: σ̄ ↦ t interpolates the training table."""
    g = grid_from_scheduler(sd_scheduler, 10)
    ev = DiffusersEps(tiny_conditional_unet(), g, sd_scheduler, prompt_embeds=tiny_prompt_embeds(0))
    ac = sd_scheduler.alphas_cumprod.double().numpy()
    for t in (1, 250, 517, 999):
        assert ev.timestep_of(float(np.sqrt((1 - ac[t]) / ac[t]))) == pytest.approx(t, abs=1e-3)
    mid = 0.5 * (g.sigma_bar[3] + g.sigma_bar[4])
    t_mid, a_mid, _ = ev.node_params(mid)
    assert g.timesteps[3] < t_mid < g.timesteps[4] and not float(t_mid).is_integer()
    assert a_mid == pytest.approx(1 / np.sqrt(1 + mid**2))
    out = ev(torch.zeros(1, 4, 8, 8, dtype=torch.float64), mid)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


@pytest.mark.parametrize("n", [7, 10, 23])
def test_grid_nodes_take_alpha_and_timestep_from_the_grid_table(sd_scheduler, n):
    """At a node, α is the table's sqrt(ᾱ_t) (not 1/sqrt(1+σ̄²), which differs in the last
    bits) and σ = α σ̄: the one source the scheduler uses too."""
    g = grid_from_scheduler(sd_scheduler, n)
    ev = DiffusersEps(tiny_conditional_unet(), g, sd_scheduler, prompt_embeds=tiny_prompt_embeds(0))
    for m in range(g.N + 1):
        t, a, sigma = ev.node_params(float(g.sigma_bar[m]))
        assert (t, a, sigma) == (g.timesteps[m], g.alphas[m], g.alphas[m] * g.sigma_bar[m])


def test_nan_from_the_model_names_the_node(sd_scheduler, x0):
    class NaNUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, t, **kw):
            class Out:
                sample = x * float("nan")
            return Out()

    s = DiffusionSampler(NaNUNet(), sd_scheduler, 10, disable_progress=True)
    with pytest.raises(FloatingPointError, match="NaN/Inf"):
        s.invert(x0)


# ------------------------------------------------------------ round trips
@pytest.mark.parametrize("w", [1.0, 3.0])
def test_exact_reconstruction_conditional_unet_float64_state(cond_unet, sd_scheduler, embeds,
                                                             x0, w):
    """float64 state: ≤ 1e-10 relative whatever the model's dtype (fp64, fp32, fp16)."""
    pe, ne = embeds
    s = DiffusionSampler(cond_unet, sd_scheduler, 10, obelm(), guidance_scale=w,
                         prompt_embeds=pe, negative_prompt_embeds=ne, disable_progress=True)
    lat = s.invert(x0)
    assert lat.k == 2 and all(st.dtype == torch.float64 for st in lat.states)
    err = rel(s.sample(lat), x0)
    assert err <= F64_BOUND, f"model {cond_unet.dtype}, guidance {w}: {err:.3e}"


def test_float32_state_is_only_as_exact_as_float32(sd_scheduler, embeds, x0):
    """The float32-state figure (the authors' setting) for contrast: ~1e-6, not 1e-15."""
    pe, ne = embeds
    unet = tiny_conditional_unet(dtype=torch.float32)
    errs = {}
    for sd in (torch.float32, torch.float64):
        s = DiffusionSampler(unet, sd_scheduler, 20, guidance_scale=3.0, prompt_embeds=pe,
                             negative_prompt_embeds=ne, state_dtype=sd, disable_progress=True)
        errs[sd] = rel(s.reconstruct(x0), x0)
    assert 1e-9 < errs[torch.float32] < 1e-4
    assert errs[torch.float64] <= F64_BOUND


def test_sampling_returns_float64_on_any_model_dtype(sd_scheduler, embeds):
    pe, ne = embeds
    unet = tiny_conditional_unet(dtype=torch.float16)
    s = DiffusionSampler(unet, sd_scheduler, 10, guidance_scale=2.0, prompt_embeds=pe,
                         negative_prompt_embeds=ne, disable_progress=True)
    xT = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float16)
    out = s.sample(xT)
    assert out.dtype == torch.float64 and out.shape == xT.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("ptype", ["v_prediction", "epsilon"])
def test_unconditional_unet_round_trip(ptype):
    """DDPM-style UNet2DModel, linear β, set_alpha_to_one (the clean node σ̄ = 0)."""
    sch = DDIMScheduler(prediction_type=ptype)
    unet = tiny_unet(dtype=torch.float32)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)).clamp(-1, 1)
    s = DiffusionSampler(unet, sch, 12, disable_progress=True)
    assert s.grid.sigma_bar[0] == 0.0 and s.eps.prediction_type == ptype
    assert rel(s.reconstruct(x), x) <= F64_BOUND


def test_bdia_round_trip_and_latent_from_other_grid_refused(sd_scheduler, embeds, x0):
    pe, ne = embeds
    unet = tiny_conditional_unet(dtype=torch.float32)
    s = DiffusionSampler(unet, sd_scheduler, 10, bdia(0.9), guidance_scale=3.0,
                         prompt_embeds=pe, negative_prompt_embeds=ne, disable_progress=True)
    lat = s.invert(x0)
    assert rel(s.sample(lat), x0) <= 1e-9  # BDIA's backward amplification is larger
    other = DiffusionSampler(unet, sd_scheduler, 12, bdia(0.9), guidance_scale=3.0,
                             prompt_embeds=pe, negative_prompt_embeds=ne, disable_progress=True)
    with pytest.raises(ValueError, match="sample on the grid the latent was inverted on"):
        other.sample(lat)


def test_ddim_cannot_be_inverted_exactly(sd_scheduler, embeds, x0):
    from lmsolvers import ddim

    s = DiffusionSampler(tiny_conditional_unet(), sd_scheduler, 10, ddim(),
                         prompt_embeds=embeds[0], disable_progress=True)
    with pytest.raises(ValueError, match="not bidirectional explicit"):
        s.invert(x0)


def test_a_latent_carries_a_digest_of_the_model_weights():
    """Another UNet of the same class, config and dtype, or the same UNet after an in-place
    update, is another ε: its latent is refused (issue 24), while an equal copy is accepted."""
    import copy

    from lmsolvers.adapters.weights import weights_digest

    from lmsolvers import LatentMismatchError

    sch = DDIMScheduler()
    unet = tiny_unet()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5)).clamp(-1, 1)
    s = DiffusionSampler(unet, sch, 6, disable_progress=True)
    lat = s.invert(x)
    assert dict(lat.context)["model_weights"] == weights_digest(unet)
    twin = DiffusionSampler(copy.deepcopy(unet), sch, 6, disable_progress=True)
    assert rel(twin.sample(lat), x) <= F64_BOUND  # equal weights in another object
    other = DiffusionSampler(tiny_unet(seed=1), sch, 6, disable_progress=True)
    with pytest.raises(LatentMismatchError, match="model_weights"):
        other.sample(lat)
    before = weights_digest(unet)
    with torch.no_grad():
        next(unet.parameters()).add_(1e-3)  # bumps the version counter: rehashed
    assert weights_digest(unet) != before
    with pytest.raises(LatentMismatchError, match="model_weights"):
        s.sample(lat)
    assert rel(s.sample(s.invert(x)), x) <= F64_BOUND
    unet.load_state_dict(twin.eps.model.state_dict())  # copy_ into every parameter
    assert weights_digest(unet) == before and rel(s.sample(lat), x) <= F64_BOUND
