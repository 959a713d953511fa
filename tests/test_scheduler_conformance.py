"""BELMScheduler / BELMInverseScheduler as complete diffusers schedulers (issue 12 §1).

What diffusers' common scheduler tests check, written for this project: config
save/load and ``from_config`` across scheduler classes, ``add_noise`` on any device and
dtype, step outputs (shapes, dtypes, ``return_dict``, DDIM's positional signature), a full
loop with noise against an independent reference, timestep dtypes and custom lists,
``set_begin_index`` / starts in mid-schedule; plus the x_T hand-off of the scheduler pair
(the DDIMInverse-style workflow) end to end on tiny components and on the digits model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from lmsolvers.adapters import BELMInverseScheduler, BELMScheduler
from lmsolvers.adapters.scheduler import InvertedLatentWarning, LatentHandoff
from lmsolvers.adapters.schedules import grid_from_scheduler
from lmsolvers.adapters.tiny import SD_SCHEDULER_CONFIG

from lmsolvers import integrate
from lmsolvers.registry import method_from_name

ROOT = Path(__file__).resolve().parents[1]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: a DDIM-like config (DDIM's own defaults, unclipped)
DDIM_LIKE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                 beta_schedule="linear", clip_sample=False)


def dummy_model(x: torch.Tensor, t) -> torch.Tensor:
    """A smooth nonlinear ε stand-in that depends on the timestep."""
    s = float(t) / 1000.0
    return torch.tanh(0.7 * x) * (0.2 + s) + 0.05 * torch.cos(3 * x + 5 * s)


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def loop(sched, x, timesteps=None):
    for t in sched.timesteps if timesteps is None else timesteps:
        x = sched.step(dummy_model(x, t), t, x).prev_sample
    return x


# ------------------------------------------------------------------ config save/load
@pytest.mark.parametrize("cls", [BELMScheduler, BELMInverseScheduler])
@pytest.mark.parametrize("method", ["obelm", "ddim", "bdia(0.5)", "obelm-landing(0.1)",
                                    "ebelm3(eps, 0.5)"])
def test_save_pretrained_round_trip_keeps_config_method_and_steps(tmp_path, cls, method):
    s = cls(**SD_SCHEDULER_CONFIG)
    s.set_method(method)
    assert s.config.method == s.method.name  # set_method updates the config
    s.save_pretrained(tmp_path)
    back = cls.from_pretrained(tmp_path)
    public = {k: v for k, v in s.config.items() if not k.startswith("_")}
    assert {k: v for k, v in back.config.items() if not k.startswith("_")} == public
    assert back.method.key == s.method.key
    x = rand(1, 4, 8, 8, dtype=torch.float64)
    if cls is BELMInverseScheduler and method == "ddim":
        with pytest.raises(ValueError, match="not bidirectional explicit"):
            back.set_timesteps(8)  # DDIM "inversion" is not exact: refused, not run
        return
    outs = []
    for sch in (s, back):
        sch.set_timesteps(8)
        outs.append(loop(sch, x))
    assert torch.equal(outs[0], outs[1])


def test_method_in_the_config_by_name_with_parameters():
    s = BELMScheduler(method="bdia(0.25)")
    assert s.method.key == method_from_name("bdia(0.25)").key
    s2 = BELMScheduler.from_config(s.config)
    assert s2.method.key == s.method.key
    with pytest.raises(ValueError, match="two network evaluations"):
        BELMScheduler(method="edict")


@pytest.mark.parametrize("src", [DDIMScheduler, DPMSolverMultistepScheduler,
                                 EulerDiscreteScheduler, PNDMScheduler])
def test_from_config_across_scheduler_classes(src):
    other = src.from_config(DDIMScheduler(**SD_SCHEDULER_CONFIG).config)
    belm = BELMScheduler.from_config(other.config)
    inv = BELMInverseScheduler.from_config(other.config)
    for s in (belm, inv):
        s.set_timesteps(12)
        assert s.grid.fingerprint() == grid_from_scheduler(other, 12).fingerprint()
    # …and back: every key of the original config survives the detour through BELM
    back = src.from_config(belm.config)
    for key, value in other.config.items():
        if not key.startswith("_"):
            assert back.config[key] == value, key
    # the DDIM family's timesteps are DDIM's own
    if src is DDIMScheduler:
        other.set_timesteps(12)
        assert torch.equal(belm.timesteps, other.timesteps)


# ------------------------------------------------------------------ attributes
def test_training_tables_are_exposed_as_diffusers_does():
    ddim = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    belm = BELMScheduler(**SD_SCHEDULER_CONFIG)
    for name in ("betas", "alphas", "alphas_cumprod"):
        ours, theirs = getattr(belm, name), getattr(ddim, name)
        assert ours.dtype == torch.float32 and ours.shape == theirs.shape, name
        torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=1e-7)
    assert belm.final_alpha_cumprod.dtype == torch.float32
    assert float(belm.final_alpha_cumprod) == float(ddim.final_alpha_cumprod)
    assert belm.init_noise_sigma == 1.0 and belm.order == 1 and len(belm) == 1000
    # float64 stays inside: the grid's α² is the float64 table
    belm.set_timesteps(10)
    t = int(belm.timesteps[0])
    assert belm.grid.alphas[-1] ** 2 == pytest.approx(belm._ac64[t], rel=1e-15)


# ------------------------------------------------------------------ add_noise
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_add_noise_equals_ddim_on_any_device_and_dtype(device, dtype):
    ddim = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    belm = BELMScheduler(**SD_SCHEDULER_CONFIG)
    x0 = rand(3, 4, 8, 8, seed=1).to(device, dtype)
    n = rand(3, 4, 8, 8, seed=2).to(device, dtype)
    t = torch.tensor([0, 500, 999], device=device)
    out = belm.add_noise(x0, n, t)
    assert out.dtype == dtype and out.device == x0.device and out.shape == x0.shape
    assert torch.equal(out, ddim.add_noise(x0, n, t))
    # float timesteps holding integers (some pipelines) give the same
    assert torch.equal(belm.add_noise(x0, n, t.float()), out)


def test_add_noise_refuses_bad_timesteps():
    belm = BELMScheduler()
    x = rand(1, 4)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        belm.add_noise(x, x, torch.tensor([1000]))
    with pytest.raises(ValueError, match="integer"):
        belm.add_noise(x, x, torch.tensor([10.5]))


# ------------------------------------------------------------------ step outputs
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_step_output_shapes_dtypes_and_return_dict(dtype):
    s = BELMScheduler(**SD_SCHEDULER_CONFIG)
    s.set_timesteps(6)
    x = rand(2, 4, 8, 8, dtype=dtype)
    t0, t1 = s.timesteps[:2]
    out = s.step(dummy_model(x, t0), t0, x)
    assert out.prev_sample.shape == x.shape and out.prev_sample.dtype == dtype
    assert out.pred_original_sample.shape == x.shape
    assert out.pred_original_sample.dtype == dtype
    tup = s.step(dummy_model(out.prev_sample, t1), t1, out.prev_sample, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 2 and tup[0].dtype == dtype
    s.set_timesteps(6)  # the same two steps with return_dict: identical
    a = s.step(dummy_model(x, t0), t0, x)
    b = s.step(dummy_model(a.prev_sample, t1), t1, a.prev_sample)
    assert torch.equal(b.prev_sample, tup[0]) and torch.equal(b.pred_original_sample, tup[1])


@pytest.mark.parametrize("cls", [BELMScheduler, BELMInverseScheduler])
def test_ddim_step_signature(cls):
    s = cls(**SD_SCHEDULER_CONFIG)
    s.set_timesteps(5)
    x = rand(1, 4, 8, 8)
    t = s.timesteps[0]
    e = dummy_model(x, t)
    with pytest.raises(ValueError, match="needs generator="):
        s.step(e, t, x, 0.5)  # DDIM's positional eta: a stochastic step needs its seed
    with pytest.raises(ValueError, match="variance_noise"):
        s.step(e, t, x, variance_noise=torch.zeros_like(x))
    out = s.step(e, t, x, 0.0, False, torch.Generator(), None)  # eta = 0: fine
    assert out.prev_sample.shape == x.shape  # return_dict stays True


# ------------------------------------------------------------------ full loops
def test_full_loop_ddim_method_equals_ddim():
    x = rand(2, 4, 8, 8, seed=3)
    ddim = DDIMScheduler(**DDIM_LIKE)
    belm = BELMScheduler(**DDIM_LIKE, method="ddim")
    ddim.set_timesteps(10)
    belm.set_timesteps(10)
    ref, out = loop(ddim, x), loop(belm, x)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_full_loop_obelm_equals_the_core_sampler(spacing):
    """The scheduler's loop is the core's ``sample`` on the scheduler's grid (float64)."""
    cfg = dict(DDIM_LIKE, timestep_spacing=spacing)
    belm = BELMScheduler(**cfg)
    belm.set_timesteps(9)
    g = belm.grid
    node = {float(sb): i for i, sb in enumerate(g.sigma_bar)}

    def eps(xbar, sigma_bar):
        i = node[float(sigma_bar)]
        return dummy_model(xbar * g.alphas[i], g.timesteps[i])

    x = rand(2, 4, 8, 8, seed=4, dtype=torch.float64)
    ref = integrate.sample(eps, g, method_from_name("obelm"), x / g.alphas[-1]) * g.alphas[0]
    out = loop(belm, x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13 * float(ref.abs().max()))


# ------------------------------------------------------------------ timesteps
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' Euler under numpy 2
def test_timestep_dtypes_and_custom_lists():
    belm = BELMScheduler(**SD_SCHEDULER_CONFIG)
    belm.set_timesteps(10)
    assert belm.timesteps.dtype == torch.int64
    default = belm.grid.fingerprint()
    belm.set_timesteps(timesteps=belm.timesteps.tolist())  # a pipeline's custom list
    assert belm.grid.fingerprint() == default and belm.timesteps.dtype == torch.int64
    belm.set_timesteps(timesteps=[999, 700, 301, 42, 3])  # any strictly decreasing list
    assert belm.timesteps.tolist() == [999, 700, 301, 42, 3] and belm.num_inference_steps == 5
    # k-diffusion sigmas (σ̄): fractional timesteps by log-σ̄ interpolation, as Euler
    euler = EulerDiscreteScheduler.from_config(belm.config)
    sig = [14.0, 5.0, 1.5, 0.4, 0.05, 0.0]  # every node, the final one included
    euler.set_timesteps(sigmas=sig)
    belm.set_timesteps(sigmas=sig)
    assert belm.timesteps.dtype == torch.float32 and belm.num_inference_steps == 5
    torch.testing.assert_close(belm.timesteps, euler.timesteps.float(), rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(belm.grid.sigma_bar[::-1], sig, rtol=1e-15)
    x = rand(1, 4, 8, 8)
    assert loop(belm, x).shape == x.shape  # fractional timesteps run too


@pytest.mark.parametrize("kwargs, match", [
    (dict(timesteps=[500, 700, 100]), "strictly decreasing"),
    (dict(timesteps=[500, 500, 100]), "strictly decreasing"),
    (dict(timesteps=[1000, 500]), r"\[0, 999\]"),
    (dict(timesteps=[500.5, 100]), "integers"),
    (dict(sigmas=[3.0, 5.0]), "strictly decreasing"),
    (dict(sigmas=[1e6, 1.0]), "outside the training table"),
    (dict(sigmas=[3.0]), "at least 2"),
    (dict(num_inference_steps=3, sigmas=[3.0, 1.0, 0.0]), "needs 4 sigmas"),
    (dict(timesteps=[500, 100], sigmas=[3.0, 1.0]), "not both"),
    (dict(num_inference_steps=3, timesteps=[500, 100]), "num_inference_steps = 3"),
    (dict(num_inference_steps=2.5), "positive integer"),
    (dict(), "pass num_inference_steps"),
    (dict(num_inference_steps=4, mu=0.5), "flow-matching configs only"),
])
def test_bad_timestep_lists_are_clear_errors(kwargs, match):
    belm = BELMScheduler(**SD_SCHEDULER_CONFIG)
    with pytest.raises(ValueError, match=match):
        belm.set_timesteps(**kwargs)


# ------------------------------------------------------------------ mid-schedule starts
@pytest.mark.parametrize("begin", [0, 3, 7])
def test_set_begin_index_starts_mid_schedule_like_ddim(begin):
    """img2img at strength < 1: add noise at timesteps[begin], run from there."""
    x0, n = rand(2, 4, 8, 8, seed=5), rand(2, 4, 8, 8, seed=6)
    ddim = DDIMScheduler(**DDIM_LIKE)
    belm = BELMScheduler(**DDIM_LIKE, method="ddim")
    outs = []
    for s in (ddim, belm):
        s.set_timesteps(10)
        if s is belm:  # DDIM has no begin index: it starts wherever it is called
            s.set_begin_index(begin)
        t = s.timesteps[begin:]
        x = s.add_noise(x0, n, t[:1].repeat(2))
        outs.append(loop(s, x, t))
    assert belm.begin_index == begin and belm.step_index == 10
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=2e-5 * float(outs[0].abs().max()))


def test_obelm_entering_mid_schedule_starts_with_its_starter():
    """O-BELM entering at node m equals the core sampler on the grid's nodes 0..m."""
    belm = BELMScheduler(**DDIM_LIKE)
    belm.set_timesteps(10)
    g, m = belm.grid, 6
    sub = type(g)(g.sigma_bar[:m + 1], timesteps=g.timesteps[:m + 1], alphas=g.alphas[:m + 1])
    node = {float(sb): i for i, sb in enumerate(sub.sigma_bar)}

    def eps(xbar, sigma_bar):
        i = node[float(sigma_bar)]
        return dummy_model(xbar * sub.alphas[i], sub.timesteps[i])

    x = rand(1, 4, 8, 8, seed=7, dtype=torch.float64)
    start = g.N - m  # timesteps[start] is node m
    assert belm.timesteps[start] == g.timesteps[m]
    out = loop(belm, x, belm.timesteps[start:])  # no set_begin_index: found by timestep
    ref = integrate.sample(eps, sub, method_from_name("obelm"), x / sub.alphas[-1])
    torch.testing.assert_close(out, ref * sub.alphas[0], rtol=0, atol=1e-13)
    assert belm.step_index == len(belm.timesteps)


def test_step_index_and_begin_index_follow_diffusers():
    belm = BELMScheduler(**SD_SCHEDULER_CONFIG)
    belm.set_timesteps(5)
    assert belm.step_index is None and belm.begin_index is None
    belm.set_begin_index(2)
    x = rand(1, 4, 8, 8)
    t = belm.timesteps[2]
    with pytest.raises(ValueError, match=r"set_begin_index\(2\)"):
        belm.step(dummy_model(x, t), belm.timesteps[1], x)
    y = belm.step(dummy_model(x, t), t, x).prev_sample
    assert belm.step_index == 3
    belm.step(dummy_model(y, belm.timesteps[3]), belm.timesteps[3], y)
    assert belm.step_index == 4
    belm.set_timesteps(5)  # resets begin_index as diffusers does
    assert belm.begin_index is None and belm.step_index is None
    with pytest.raises(ValueError, match="outside timesteps"):
        belm.set_begin_index(5)


def test_img2img_pipeline_at_strength_below_one_runs_with_belm(embeds):
    """StableDiffusionImg2ImgPipeline: set_begin_index, add_noise, a mid-schedule start."""
    from diffusers import StableDiffusionImg2ImgPipeline
    from lmsolvers.adapters.tiny import tiny_sd_pipeline

    base = tiny_sd_pipeline()
    pipe = StableDiffusionImg2ImgPipeline(**base.components)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = BELMScheduler.from_config(pipe.scheduler.config, method="ddim")
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    kw = dict(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], image=image,
              strength=0.6, num_inference_steps=10, guidance_scale=1.0, output_type="latent")
    out = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    assert pipe.scheduler.begin_index == 4 and pipe.scheduler.step_index == 10
    # the stock DDIM scheduler runs the same η = 0 steps
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    ref = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


# ------------------------------------------------------------------ the x_T hand-off
def _invert(inv, x0, model=dummy_model):
    x = x0
    for t in inv.timesteps:
        x = inv.step(model(x, t), t, x).prev_sample
    return x


def _sample(fwd, x, model=dummy_model):
    for t in fwd.timesteps:
        x = fwd.step(model(x, t), t, x).prev_sample
    return x


def test_handoff_resumes_the_full_latent_from_x_T_alone():
    x0 = rand(1, 4, 8, 8, seed=9, dtype=torch.float64)
    inv, fwd = BELMInverseScheduler(**DDIM_LIKE), BELMScheduler(**DDIM_LIKE)
    inv.set_timesteps(10)
    fwd.set_timesteps(10)
    x_T = _invert(inv, x0)
    assert inv.latent is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the exact path is silent
        rec = _sample(fwd, x_T.clone() * 1.0)  # a copy with the same content (a pipeline's)
    assert float((rec - x0).norm() / x0.norm()) <= 1e-12
    # a pipeline that casts latents to its dtype: still recognised (float32 model input)
    rec32 = _sample(fwd, x_T.float())
    assert rec32.dtype == torch.float32
    assert float((rec32.double() - x0).norm() / x0.norm()) <= 1e-6
    # x_T handed to a run that starts one node lower: a loud warning, then a plain DDIM
    # starter step from the given state
    fwd.set_timesteps(10)
    fwd.set_begin_index(1)
    g, N, t = fwd.grid, fwd.grid.N, fwd.timesteps[1]
    with pytest.warns(InvertedLatentWarning, match="node 10 .* starts at node 9"):
        out = fwd.step(dummy_model(x_T, t), t, x_T).prev_sample
    e = dummy_model(x_T, t)
    ref = (x_T / g.alphas[N - 1] + (g.sigma_bar[N - 2] - g.sigma_bar[N - 1]) * e) * g.alphas[N - 2]
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=0)


@pytest.mark.parametrize("stop", [1, 4, 9])
def test_partial_inversion_resumes_mid_schedule(stop):
    """DiffEdit / img2img at strength < 1: invert up to node ``stop``, start the forward run
    there (``set_begin_index``): the hand-off resumes the partial latent exactly."""
    x0 = rand(1, 4, 8, 8, seed=12, dtype=torch.float64)
    inv, fwd = BELMInverseScheduler(**DDIM_LIKE), BELMScheduler(**DDIM_LIKE)
    inv.set_timesteps(10)
    fwd.set_timesteps(10)
    x_m = _invert_steps(inv, x0, inv.timesteps[:stop])
    assert inv.latent is None  # the inversion stopped below the top
    begin = fwd.grid.N - stop  # timesteps[begin] is node `stop`
    fwd.set_begin_index(begin)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = _sample_steps(fwd, x_m, fwd.timesteps[begin:])
    assert float((rec - x0).norm() / x0.norm()) <= 1e-12


def _invert_steps(inv, x, timesteps):
    for t in timesteps:
        x = inv.step(dummy_model(x, t), t, x).prev_sample
    return x


def _sample_steps(fwd, x, timesteps):
    for t in timesteps:
        x = fwd.step(dummy_model(x, t), t, x).prev_sample
    return x


def test_handoff_warns_for_an_inverted_x_T_it_cannot_resume():
    x0 = rand(1, 4, 8, 8, seed=10, dtype=torch.float64)
    inv = BELMInverseScheduler(**DDIM_LIKE)
    inv.set_timesteps(10)
    x_T = _invert(inv, x0)
    other = BELMScheduler(**DDIM_LIKE)
    other.set_timesteps(12)  # another grid: the latent does not fit
    with pytest.warns(InvertedLatentWarning, match="grid mismatch"):
        _sample(other, x_T)
    ddim = BELMScheduler(**DDIM_LIKE, method="ddim")
    ddim.set_timesteps(10)  # another method
    with pytest.warns(InvertedLatentWarning, match="method"):
        _sample(ddim, x_T)


def test_handoff_registry_scope_lifetime_and_eviction():
    reg = LatentHandoff(capacity=2, remember=100)
    inv = BELMInverseScheduler(**DDIM_LIKE)
    inv.handoff = reg  # an instance may use its own registry
    inv.set_timesteps(6)
    outs = [_invert(inv, rand(1, 4, 4, 4, seed=s, dtype=torch.float64)) for s in range(3)]
    assert len(reg) == 2
    lat, seen = reg.lookup(outs[0])
    assert lat is None and seen  # evicted, but remembered: a run from it warns
    lat, seen = reg.lookup(outs[2])
    assert lat is not None and seen and lat.k == 2
    assert reg.lookup(rand(1, 4, 4, 4, seed=99, dtype=torch.float64)) == (None, False)
    fwd = BELMScheduler(**DDIM_LIKE)
    fwd.handoff = reg
    fwd.set_timesteps(6)
    with pytest.warns(InvertedLatentWarning, match="no longer registered"):
        _sample(fwd, outs[0])
    reg.clear()
    assert len(reg) == 0 and reg.lookup(outs[2]) == (None, False)
    # opting out: an inverse scheduler that does not register
    inv.register_latents = False
    _invert(inv, rand(1, 4, 4, 4, seed=5, dtype=torch.float64))
    assert len(reg) == 0 and inv.latent is not None


def test_explicit_load_latent_and_mid_schedule_start_do_not_mix():
    x0 = rand(1, 4, 8, 8, seed=11, dtype=torch.float64)
    inv, fwd = BELMInverseScheduler(**DDIM_LIKE), BELMScheduler(**DDIM_LIKE)
    inv.set_timesteps(8)
    _invert(inv, x0)
    fwd.set_timesteps(8)
    x_T = fwd.load_latent(inv.latent, dtype=torch.float64)
    fwd.set_begin_index(2)
    x = rand(1, 4, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="clear_latent"):
        fwd.step(dummy_model(x, fwd.timesteps[2]), fwd.timesteps[2], x)
    fwd.set_timesteps(8)
    assert float((_sample(fwd, x_T) - x0).norm() / x0.norm()) <= 1e-12


@pytest.fixture(scope="module")
def digits():
    from diffusers import DDPMScheduler, UNet2DModel

    from benchmarks.digits_data import load_digits_split

    path = ROOT / "models" / "digits_ddpm"
    unet = UNet2DModel.from_pretrained(path, local_files_only=True).eval()
    cfg = DDPMScheduler.from_pretrained(path, local_files_only=True).config
    x0 = load_digits_split("test")[0][:8].double()

    @torch.no_grad()
    def model(x, t):
        return unet(x.float(), t).sample.to(x.dtype)

    return model, cfg, x0


@pytest.mark.parametrize("n,method", [(10, "obelm"), (20, "obelm"), (12, "ebelm3"),
                                      (20, "ebelm3")])
def test_ddim_inverse_workflow_on_the_digits_model(digits, n, method):
    """Invert with BELMInverseScheduler, pass its last output as the pipeline's latents."""
    model, cfg, x0 = digits
    inv = BELMInverseScheduler.from_config(cfg, method=method)
    fwd = BELMScheduler.from_config(cfg, method=method)
    inv.set_timesteps(n)
    fwd.set_timesteps(n)
    x_T = _invert(inv, x0, model)
    rec = _sample(fwd, x_T, model)
    assert float((rec - x0).norm() / x0.norm()) <= 1e-10
    # the trap this closes: the same x_T without its latent is far from x0
    BELMScheduler.handoff.clear()
    fwd.set_timesteps(n)
    alone = _sample(fwd, x_T, model)
    assert float((alone - x0).norm() / x0.norm()) > 0.1


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("strength", [0.6])  # 1.0: the tiny SD pipeline test does it
def test_diffedit_with_the_scheduler_pair_reconstructs_exactly(strength):
    """StableDiffusionDiffEditPipeline (DDIMInverse-style: ``invert`` keeps every inverted
    state, the call starts from ``image_latents[0]``) with the BELM pair as scheduler and
    inverse scheduler, an all-ones mask and the same prompt: the hand-off resumes each
    (partial, for strength < 1) inversion, so the image latents come back exactly."""
    from diffusers import StableDiffusionDiffEditPipeline
    from lmsolvers.adapters.tiny import tiny_prompt_embeds, tiny_sd_pipeline

    c = tiny_sd_pipeline().components
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pipeline's deprecation notice
        pipe = StableDiffusionDiffEditPipeline(
            vae=c["vae"], text_encoder=None, tokenizer=None, unet=c["unet"],
            scheduler=BELMScheduler.from_config(c["scheduler"].config),
            inverse_scheduler=BELMInverseScheduler.from_config(c["scheduler"].config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pe, ne = tiny_prompt_embeds(1), tiny_prompt_embeds(2)
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x0 = pipe.vae.encode(img * 2 - 1).latent_dist.sample(torch.Generator().manual_seed(0))
    x0 = x0 * pipe.vae.config.scaling_factor
    kw = dict(prompt_embeds=pe, negative_prompt_embeds=ne, num_inference_steps=10,
              inpaint_strength=strength, guidance_scale=3.0)
    inv = pipe.invert(image=img, num_reg_steps=0, generator=torch.Generator().manual_seed(0),
                      output_type="latent", **kw).latents
    mask = torch.ones(1, *x0.shape[-2:])
    out = pipe(mask_image=mask, image_latents=inv, output_type="latent", **kw).images
    assert float((out - x0).norm() / x0.norm()) <= 1e-6
    BELMScheduler.handoff.clear()  # without the hand-off: the single-state restart
    alone = pipe(mask_image=mask, image_latents=inv, output_type="latent", **kw).images
    assert float((alone - x0).norm() / x0.norm()) > 1e-3


# ------------------------------------------- the hand-off, row by row (issue 24)
def _pair(n=8, handoff=None):
    inv, fwd = BELMInverseScheduler(**DDIM_LIKE), BELMScheduler(**DDIM_LIKE)
    if handoff is not None:
        inv.handoff = fwd.handoff = handoff
    inv.set_timesteps(n)
    fwd.set_timesteps(n)
    return inv, fwd


def _rel_rows(a, b):
    return float(((a.double() - b.double()).flatten(1).norm(dim=1)
                  / b.double().flatten(1).norm(dim=1)).max())


@pytest.mark.parametrize("pick", ["tail", "head", "reordered", "duplicated", "half-float",
                                  "bfloat16", "two-inversions"])
def test_handoff_resumes_any_selection_of_inverted_rows_exactly(pick):
    """Part of an inverted batch, reordered, duplicated, cast and back, or rows of two
    inversions together: every row resumes its own latent, silently and exactly."""
    x0 = rand(3, 4, 8, 8, seed=21, dtype=torch.float64)
    inv, fwd = _pair(handoff=LatentHandoff())
    x_T = _invert(inv, x0)
    rows = {"tail": [1, 2], "head": [0], "reordered": [2, 0, 1], "duplicated": [1, 1, 2],
            "half-float": [0, 1, 2], "bfloat16": [0, 1, 2]}.get(pick)
    if pick == "two-inversions":
        y0 = rand(2, 4, 8, 8, seed=22, dtype=torch.float64)
        y_T = _invert(inv, y0)
        start, want = torch.cat([x_T[1:], y_T[:1]]), torch.cat([x0[1:], y0[:1]])
    else:
        start, want = x_T[rows], x0[rows]
        if pick == "half-float":
            start = start.half().float()
        elif pick == "bfloat16":
            start = start.to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = _sample(fwd, start)
    tol = 1e-12 if rec.dtype == torch.float64 else 1e-2  # bfloat16 output: its rounding
    assert _rel_rows(rec, want) <= tol


def test_handoff_resumes_the_inverted_rows_of_a_mixed_batch():
    """Inverted rows next to fresh noise: those rows resume exactly, the others sample
    from their noise as they would alone (and nothing warns: fresh noise is no inverted
    state)."""
    x0 = rand(2, 4, 8, 8, seed=23, dtype=torch.float64)
    inv, fwd = _pair(handoff=LatentHandoff())
    x_T = _invert(inv, x0)
    noise = rand(1, 4, 8, 8, seed=24, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = _sample(fwd, torch.cat([noise, x_T[1:]]))
        alone = _sample(fwd, noise)
    assert _rel_rows(rec[1:], x0[1:]) <= 1e-12
    torch.testing.assert_close(rec[:1], alone, rtol=1e-13, atol=0)


def test_handoff_capacity_counts_inversions_not_steps():
    reg = LatentHandoff(capacity=2)
    inv, fwd = _pair(n=12, handoff=reg)
    xs = [rand(1, 4, 4, 4, seed=s, dtype=torch.float64) for s in (30, 31, 32)]
    a_T = _invert(inv, xs[0])
    b_T = _invert(inv, xs[1])  # twelve more steps: the first inversion is still there
    assert len(reg) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _rel_rows(_sample(fwd, a_T), xs[0]) <= 1e-12
        assert _rel_rows(_sample(fwd, b_T), xs[1]) <= 1e-12
    _invert(inv, xs[2])  # a third inversion evicts the least recently used one, a
    with pytest.warns(InvertedLatentWarning, match="no longer registered"):
        _sample(fwd, a_T)
    assert _rel_rows(_sample(fwd, b_T), xs[1]) <= 1e-12
    # an earlier node of an inversion that went on (and is still kept) is recognised
    inv.set_timesteps(12)
    mid = _invert_steps(inv, rand(1, 4, 4, 4, seed=33, dtype=torch.float64),
                        inv.timesteps[:5])
    _invert_steps(inv, mid, inv.timesteps[5:])
    fwd.set_begin_index(fwd.grid.N - 5)
    with pytest.warns(InvertedLatentWarning, match="earlier node of an inversion"):
        _sample_steps(fwd, mid, fwd.timesteps[fwd.grid.N - 5:])


def test_handoff_warns_for_rows_it_cannot_resume_and_resumes_the_rest():
    x0 = rand(2, 4, 8, 8, seed=25, dtype=torch.float64)
    reg = LatentHandoff()
    inv, fwd = _pair(handoff=reg)
    x_T = _invert(inv, x0)
    other = BELMInverseScheduler(**DDIM_LIKE)
    other.handoff = reg
    other.set_timesteps(10)  # another grid
    o_T = _invert(other, rand(1, 4, 8, 8, seed=26, dtype=torch.float64))
    edited = x_T[:1].clone()
    edited[0, 3, 7, 7] += 1.0  # an inverted state changed where no probe looks
    with pytest.warns(InvertedLatentWarning) as caught:
        rec = _sample(fwd, torch.cat([x_T[1:], o_T, edited]))
    said = " | ".join(str(w.message) for w in caught)
    assert "grid mismatch" in said and "rows [2]" in said
    assert _rel_rows(rec[:1], x0[1:]) <= 1e-12


@pytest.mark.parametrize("cls", [BELMScheduler, BELMInverseScheduler])
def test_a_repeated_final_step_is_an_error(cls):
    s = cls(**DDIM_LIKE)
    s.set_timesteps(6)
    x = rand(1, 4, 4, 4, dtype=torch.float64)
    loop(s, x)
    t = s.timesteps[-1]
    with pytest.raises(ValueError, match="run already ended with that step"):
        s.step(dummy_model(x, t), t, x)
    loop(s, x)  # a new run from timesteps[0] is fine


def test_handoff_remembers_the_last_rows_of_evicted_inversions():
    reg = LatentHandoff(capacity=1, remember=3)
    inv, fwd = _pair(n=6, handoff=reg)
    x = rand(1, 4, 4, 4, seed=40, dtype=torch.float64)
    outs = []
    for t in inv.timesteps:
        x = inv.step(dummy_model(x, t), t, x).prev_sample
        outs.append(x)
    _invert(inv, rand(1, 4, 4, 4, seed=41, dtype=torch.float64))  # evicts the first
    assert [reg.match(o).seen for o in outs] == [[False]] * 3 + [[True]] * 3
    assert reg.match(outs[-1].half()).seen == [True] and reg.lookup(outs[-1]) == (None, True)
