"""Flow-matching and α = 0 top nodes on the scheduler side (docs/design.md §9).

* ``schedule_from_scheduler`` reproduces ``FlowMatchEulerDiscreteScheduler.set_timesteps``
  (every option) bit for bit in float32, and builds the σ̄ grid ``σ/(1−σ)``, ``α = 1−σ``;
* ``BELMScheduler(method="ddim")`` is ``FlowMatchEulerDiscreteScheduler`` (flow) and
  ``DDIMScheduler`` (zero terminal SNR, v-prediction) to round-off: the entry step out of
  the α = 0 node is the limit of the DDIM step;
* inversion with ``BELMInverseScheduler`` ends at the finite top node N and a forward run
  from its output (started at the α = 0 timestep, as pipelines do) reconstructs exactly.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from hypothesis import given
from hypothesis import strategies as st
from lmsolvers.adapters import BELMInverseScheduler, BELMScheduler
from lmsolvers.adapters.schedules import (
    alphas_cumprod_from_config,
    grid_from_scheduler,
    is_flow_config,
    schedule_from_scheduler,
    top_timestep,
)

FLOW_CONFIGS = [
    dict(),
    dict(shift=3.0),  # SD3
    dict(shift=1.5, num_train_timesteps=500),
    dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),  # FLUX.1
    dict(use_dynamic_shifting=True, time_shift_type="linear"),
    dict(shift=3.0, shift_terminal=0.1),
    dict(use_dynamic_shifting=True, shift_terminal=0.02),
    dict(shift=2.0, use_karras_sigmas=True),
    dict(use_exponential_sigmas=True),
    dict(shift=3.0, use_beta_sigmas=True),
]


def _kwargs(cfg, n, kind):
    kw = {"mu": 0.83} if cfg.get("use_dynamic_shifting") else {}
    T = cfg.get("num_train_timesteps", 1000)
    if kind == "sigmas":  # FLUX's own call: sigmas = linspace(1, 1/n, n)
        kw["sigmas"] = np.linspace(1.0, 1 / n, n)
    elif kind == "timesteps":
        kw["timesteps"] = np.linspace(0.97 * T, 0.02 * T, n)
    else:
        kw["num_inference_steps"] = n
    return kw


def _stock_sigmas(sch):
    """σ at every sampling timestep (the α = 0 node first), as float32 ``sigmas``."""
    g = sch.grid
    sig = np.concatenate([[sch.top_sigma] if sch.top_timestep is not None else [],
                          (1.0 - g.alphas[1:])[::-1], [0.0]])
    ts = np.concatenate([[sch.top_timestep] if sch.top_timestep is not None else [],
                         g.timesteps[1:][::-1]])
    return sig, ts


@pytest.mark.filterwarnings("ignore")  # diffusers warns about timesteps without sigmas
def test_flow_sigmas_and_timesteps_equal_the_stock_scheduler_bitwise():
    count = 0
    for cfg, n, kind in itertools.product(FLOW_CONFIGS, (1, 2, 7, 28, 50),
                                          ("n", "sigmas", "timesteps")):
        stock = FlowMatchEulerDiscreteScheduler(**cfg)
        kw = _kwargs(cfg, n, kind)
        stock.set_timesteps(**kw)
        if not torch.isfinite(stock.sigmas).all():  # shift_terminal, one step: 0/0
            with pytest.raises(ValueError, match="non-finite sigmas"):
                schedule_from_scheduler(stock.config, **kw)
            continue
        if n == 1 and float(stock.sigmas[0]) == 1.0:
            with pytest.raises(ValueError, match="at least 2 steps"):
                schedule_from_scheduler(stock.config, **kw)
            continue
        sch = schedule_from_scheduler(stock.config, **kw)
        sig, ts = _stock_sigmas(sch)
        # the grid holds float64 copies of the stock float32 values: exact equality
        assert np.array_equal(sig, stock.sigmas.double().numpy()), (cfg, n, kind)
        assert np.array_equal(ts, stock.timesteps.double().numpy()), (cfg, n, kind)
        # and σ̄ = σ/(1−σ), α = 1 − σ, node 0 the clean image
        g = sch.grid
        assert g.sigma_bar[0] == 0.0 and g.alphas[0] == 1.0 and g.timesteps[0] == 0.0
        np.testing.assert_allclose(g.sigma_bar, (1 - g.alphas) / g.alphas, rtol=1e-15)
        assert (sch.top_timestep is not None) == (abs(1 - float(stock.sigmas[0])) <= 2**-22)
        assert sch.num_model_calls == len(stock.timesteps)
        count += 1
    assert count == 130  # 150 cases: 10 refused one-step ones, the rest bitwise


def test_flow_schedule_shape_and_top_node():
    # a float32 shift can round σ = 1 down by an ulp: still the α = 0 node
    cfg = FlowMatchEulerDiscreteScheduler(shift=2.3490284258442093).config
    rounded = schedule_from_scheduler(cfg, sigmas=[1.0, 0.5])
    assert rounded.top_sigma == 1 - 2**-23 and rounded.grid.N == 1
    cfg = FlowMatchEulerDiscreteScheduler(shift=3.0).config
    assert is_flow_config(cfg) and not is_flow_config(DDIMScheduler().config)
    sch = schedule_from_scheduler(cfg, 28)
    assert sch.flow and sch.top_timestep == 1000.0 and sch.grid.N == 27
    assert top_timestep(cfg, 28) == 1000.0
    assert grid_from_scheduler(cfg, 28).fingerprint() == sch.grid.fingerprint()
    # custom sigmas below 1: the top node is finite, every sigma is a node
    part = schedule_from_scheduler(cfg, sigmas=[0.9, 0.6, 0.3])
    assert part.top_timestep is None and part.grid.N == 3
    s = 0.9 * 3.0 / (1 + 2.0 * 0.9)  # the static shift of σ = 0.9
    assert abs((1 - part.grid.alphas[-1]) - s) <= 2**-24  # σ is the stock float32 σ


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_inference_steps=10), "mu must be passed"),
    (dict(sigmas=[1.0, 0.5, 0.7], mu=0.5), "strictly decreasing"),
    (dict(sigmas=[1.0, 0.5, 0.5], mu=0.5), "strictly decreasing"),
    (dict(num_inference_steps=4, sigmas=[1.0, 0.5, 0.2], mu=0.5), "num_inference_steps = 4"),
    (dict(sigmas=[1.0, float("nan")], mu=0.5), "finite"),
])
def test_bad_flow_inputs_are_clear_errors(kwargs, match):
    cfg = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config
    with pytest.raises(ValueError, match=match):
        schedule_from_scheduler(cfg, **kwargs)


@pytest.mark.parametrize("cfg, match", [
    (dict(invert_sigmas=True), "invert_sigmas"),
    (dict(stochastic_sampling=True), "no exact inverse"),
])
def test_unsupported_flow_options_are_refused(cfg, match):
    with pytest.raises(ValueError, match=match):
        schedule_from_scheduler(FlowMatchEulerDiscreteScheduler(**cfg).config, 10)
    with pytest.raises(ValueError, match=match):
        BELMScheduler.from_config(FlowMatchEulerDiscreteScheduler(**cfg).config)


def test_sigmas_above_one_are_refused():
    cfg = FlowMatchEulerDiscreteScheduler(num_train_timesteps=500).config
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        schedule_from_scheduler(cfg, timesteps=[990.0, 10.0])


# --------------------------------------------------------- the scheduler on flow configs
def velocity(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """A smooth, nonlinear, timestep-dependent stand-in for a flow transformer."""
    s = float(t) / 1000.0
    return torch.tanh(1.3 * x) * (0.5 + s) - 0.4 * x + 0.2 * math.sin(7 * s)


def _loop(sched, x, **kw):
    for t in sched.timesteps:
        x = sched.step(velocity(x, t), t, x, **kw).prev_sample
    return x


@pytest.mark.parametrize("cfg, kw", [
    (dict(shift=3.0), dict(num_inference_steps=12)),
    (dict(use_dynamic_shifting=True, shift=3.0), dict(sigmas=np.linspace(1.0, 1 / 9, 9),
                                                       mu=calculate_shift(1024))),
    (dict(shift=3.0, shift_terminal=0.05), dict(num_inference_steps=8)),
    (dict(shift=2.0), dict(sigmas=[0.8, 0.5, 0.3, 0.1])),  # no α = 0 node
])
def test_belm_ddim_equals_flow_match_euler_to_round_off(cfg, kw):
    x_T = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    stock = FlowMatchEulerDiscreteScheduler(**cfg)
    stock.set_timesteps(**kw)
    ref = _loop(stock, x_T)
    belm = BELMScheduler.from_config(stock.config, method="ddim")
    assert belm.is_flow and belm.config.prediction_type == "flow"
    belm.set_timesteps(**kw)
    assert torch.equal(belm.timesteps, stock.timesteps)
    assert torch.equal(belm.sigmas, stock.sigmas)
    out = _loop(belm, x_T)
    assert out.dtype == torch.float32
    # the stock step runs in float32, ours in float64: both are the same DDIM step in σ̄
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5 * float(ref.abs().max()))
    # …and against a float64 stock run the difference is float64 round-off
    stock.set_timesteps(**kw)
    x = x_T.double()
    for t in stock.timesteps:
        s, s_next = (float(v) for v in stock.sigmas[stock.index_for_timestep(t):][:2])
        x = x + (s_next - s) * velocity(x, t)
    belm.set_timesteps(**kw)
    out64 = _loop(belm, x_T.double())
    torch.testing.assert_close(out64, x, rtol=0, atol=1e-12 * float(x.abs().max()))


def test_flux_pipeline_calls_reach_the_schedule():
    """FluxPipeline's calls: retrieve_timesteps(sigmas=…, mu=…), config keys, order."""
    from lmsolvers.adapters.tiny import FLUX_SCHEDULER_CONFIG

    stock = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)
    belm = BELMScheduler.from_config(stock.config)
    c = belm.config
    mu = calculate_shift(64, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                         c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    sig = np.linspace(1.0, 1 / 6, 6)
    ts, n = retrieve_timesteps(belm, None, "cpu", sigmas=sig, mu=mu)
    ref, n_ref = retrieve_timesteps(stock, None, "cpu", sigmas=sig, mu=mu)
    assert n == n_ref == 6 and torch.equal(ts, ref) and belm.order == 1
    assert c.use_dynamic_shifting and belm.num_inference_steps == 6
    belm.set_begin_index(0)
    assert belm.begin_index == 0 and belm.step_index is None


def test_scale_noise_equals_the_stock_scheduler():
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    n = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    stock = FlowMatchEulerDiscreteScheduler(shift=3.0)
    belm = BELMScheduler.from_config(stock.config)
    for s in (stock, belm):
        s.set_timesteps(10)
    t = stock.timesteps[3:4].repeat(2)
    assert torch.equal(belm.scale_noise(x0, t, n), stock.scale_noise(x0, t, n))
    for s in (stock, belm):
        s.set_begin_index(3)  # img2img: add noise before the first step
    assert torch.equal(belm.scale_noise(x0, t, n), stock.scale_noise(x0, t, n))


def test_flow_config_round_trips(tmp_path):
    stock = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True,
                                            base_image_seq_len=128)
    belm = BELMScheduler.from_config(stock.config)
    belm.set_method("bdia(0.5)")
    belm.save_pretrained(tmp_path)
    back = BELMScheduler.from_pretrained(tmp_path)
    assert back.is_flow and back.config.base_image_seq_len == 128
    assert back.method.key == belm.method.key
    again = FlowMatchEulerDiscreteScheduler.from_config(back.config)
    for key in ("shift", "use_dynamic_shifting", "base_image_seq_len", "max_shift"):
        assert again.config[key] == stock.config[key]
    inv = BELMInverseScheduler.from_config(stock.config)
    assert inv.is_flow


def test_flow_scheduler_refuses_other_prediction_types():
    with pytest.raises(ValueError, match="velocity"):
        BELMScheduler(flow=True, prediction_type="v_prediction")


# ------------------------------------------------------------ exact inversion on flows
def _invert(inv, x0):
    x = x0
    for t in inv.timesteps:
        x = inv.step(velocity(x, t), t, x).prev_sample
    return x


@given(seed=st.integers(0, 2**16), n=st.integers(3, 14), shift=st.floats(1.0, 4.0))
def test_flow_round_trip_through_the_scheduler_pair_is_exact(seed, n, shift):
    """Invert to the finite top node N, hand its output to a forward run that starts at the
    α = 0 timestep (as SD3/FLUX pipelines do): the run resumes the full latent.  FLUX's
    sigmas ``linspace(1, 1/n, n)``: the default ones end at σ ≈ 1e-3, where O-BELM's
    landing weight ``a_2 = h_1²/h_2²`` vanishes and the inversion is refused (a property
    of that grid, see the default configuration's damped landing)."""
    cfg = FlowMatchEulerDiscreteScheduler(shift=shift).config
    sig = np.linspace(1.0, 1 / n, n)
    x0 = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(seed),
                     dtype=torch.float64)
    inv = BELMInverseScheduler.from_config(cfg)
    inv.set_timesteps(sigmas=sig)
    assert inv.timesteps[0] == 0.0 and len(inv.timesteps) == inv.grid.N == n - 1
    x_N = _invert(inv, x0)
    lat = inv.latent
    assert lat is not None and lat.nodes == (n - 2, n - 1)
    assert torch.equal(x_N, lat.x_N * float(inv.grid.alphas[-1]))  # the output is x_N
    fwd = BELMScheduler.from_config(cfg)
    fwd.set_timesteps(sigmas=sig)
    assert fwd.timesteps[0] == fwd.schedule.top_timestep and len(fwd.timesteps) == n
    assert abs(1 - fwd.sigmas[0]) <= 2**-22  # 1, or 1 ± ulps when the float32 shift rounds
    rec = _loop(fwd, x_N)
    assert float((rec - x0).norm() / x0.norm()) <= 1e-12


def test_flow_sampling_from_noise_enters_the_grid_by_the_limit_step():
    """From pure noise the first step is ``x̄_N = x̂_0 + σ̄_N ε̂`` with x̂_0 = x − v, ε̂ = x."""
    cfg = FlowMatchEulerDiscreteScheduler(shift=3.0).config
    fwd = BELMScheduler.from_config(cfg)
    fwd.set_timesteps(6)
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    v = velocity(x, fwd.timesteps[0])
    out = fwd.step(v, fwd.timesteps[0], x)
    g = fwd.grid
    xbar = (x - v) + g.sigma_bar[-1] * x
    torch.testing.assert_close(out.prev_sample, xbar * g.alphas[-1], rtol=1e-15, atol=0)
    assert torch.equal(out.pred_original_sample, x - v)
    assert fwd.step_index == 1


# ------------------------------------------------------ zero terminal SNR (VP, ᾱ_T = 0)
ZSNR = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
            rescale_betas_zero_snr=True, prediction_type="v_prediction",
            timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False)


def test_zero_terminal_snr_table_is_exact_and_the_top_node_leaves_the_grid():
    ac = alphas_cumprod_from_config(ZSNR)
    assert ac[-1] == 0.0 and ac[-2] > 0
    ddim = DDIMScheduler(**ZSNR)
    np.testing.assert_allclose(ac, ddim.alphas_cumprod.double().numpy(), rtol=1e-5, atol=1e-9)
    sch = schedule_from_scheduler(ZSNR, 10)
    assert sch.top_timestep == 999.0 and sch.grid.N == 9 and 999 not in sch.grid.timesteps
    belm = BELMScheduler(**ZSNR)
    assert belm.alphas_cumprod[-1] == 0.0 and belm.betas[-1] == 1.0
    with pytest.raises(ValueError, match="v_prediction"):
        BELMScheduler(**dict(ZSNR, prediction_type="epsilon")).set_timesteps(10)


def test_belm_ddim_equals_ddim_with_zero_terminal_snr():
    """The top step: DDIM at ᾱ = 0 is exactly the entry step, no 2⁻²⁴ offset."""
    def model(x, t):
        return torch.tanh(x) * (0.3 + float(t) / 1000) - 0.2 * x

    x_T = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ddim, belm = DDIMScheduler(**ZSNR), BELMScheduler(**ZSNR, method="ddim")
    for s in (ddim, belm):
        s.set_timesteps(10)
    assert torch.equal(ddim.timesteps, belm.timesteps)
    xs = [x_T, x_T]
    for t in ddim.timesteps:
        xs = [s.step(model(x, t), t, x).prev_sample for s, x in zip((ddim, belm), xs,
                                                                     strict=True)]
    # DDIM's table is float32; the step arithmetic agrees to its round-off
    torch.testing.assert_close(xs[1], xs[0], rtol=0, atol=1e-5 * float(xs[0].abs().max()))


def test_zero_terminal_snr_round_trip_via_the_hand_off():
    def model(x, t):
        return torch.tanh(x) * (0.3 + float(t) / 1000) - 0.2 * x

    x0 = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    inv, fwd = BELMInverseScheduler(**ZSNR), BELMScheduler(**ZSNR)
    inv.set_timesteps(12)
    fwd.set_timesteps(12)
    x = x0
    for t in inv.timesteps:
        x = inv.step(model(x, t), t, x).prev_sample
    assert fwd.timesteps[0] == 999 and 999 not in inv.timesteps
    for t in fwd.timesteps:
        x = fwd.step(model(x, t), t, x).prev_sample
    assert float((x - x0).norm() / x0.norm()) <= 1e-12
