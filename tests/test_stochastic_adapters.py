"""Stochastic steps in the diffusers adapters (docs/design.md §13): the scheduler pair in a
stock pipeline with ``eta`` and a generator, DDIM's η-step reproduced, the refusals, and the
digits DDPM's held-out round trip through ``DiffusionSampler(eta=…)``."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from lmsolvers.adapters import (
    BELMInverseScheduler,
    BELMScheduler,
    DiffusionSampler,
    InvertedLatentWarning,
)
from lmsolvers.adapters.tiny import tiny_prompt_embeds, tiny_sd_pipeline

import lmsolvers as L
from benchmarks.digits_data import load_digits_split
from lmsolvers.noise import normal_noise

ROOT = Path(__file__).resolve().parents[1]
DDIM_LIKE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                 beta_schedule="linear", clip_sample=False)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def model(x: torch.Tensor, t) -> torch.Tensor:
    s = float(t) / 1000.0
    return torch.tanh(0.7 * x) * (0.2 + s) + 0.05 * torch.cos(3 * x + 5 * s)


def test_ddim_method_with_eta_is_ddim_schedulers_step():
    """BELMScheduler(method="ddim") at η = 0.5 is DDIMScheduler's η-step (Song et al. eq. 12)
    fed the regenerated noise of the node it lands on."""
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ddim, belm = DDIMScheduler(**DDIM_LIKE), BELMScheduler(**DDIM_LIKE, method="ddim")
    ddim.set_timesteps(10)
    belm.set_timesteps(10)
    xd, xb = x.clone(), x.clone()
    for i, t in enumerate(ddim.timesteps):
        z = torch.from_numpy(normal_noise(5, belm.grid.N - i - 1, tuple(x.shape))).float()
        xd = ddim.step(model(xd, t), t, xd, eta=0.5, variance_noise=z).prev_sample
        xb = belm.step(model(xb, t), t, xb, eta=0.5,
                       generator=torch.Generator().manual_seed(5)).prev_sample
    torch.testing.assert_close(xb, xd, rtol=0, atol=2e-5 * float(xd.abs().max()))
    assert rel(xd, x) > 0.1


@pytest.fixture(scope="module")
def sd():
    pipe = tiny_sd_pipeline()
    embeds = tiny_prompt_embeds(1, batch=2), tiny_prompt_embeds(2, batch=2)
    return pipe, embeds


def call(pipe, embeds, scheduler, latents, seed, output_type="latent", eta=0.5, n=10):
    pipe.scheduler = scheduler
    return pipe(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1],
                num_inference_steps=n, guidance_scale=3.0, latents=latents, eta=eta,
                generator=torch.Generator().manual_seed(seed), output_type=output_type).images


def test_stock_pipeline_inverts_and_regenerates_with_eta(sd):
    """The acceptance workflow: a stock StableDiffusionPipeline sample at eta = 0.5 (seed 3),
    inverted by the same pipeline with BELMInverseScheduler (eta 0.5, seed 11) and regenerated
    with BELMScheduler and a generator of seed 11, returns the image; seed 12 from the same
    x_T gives another image (and says it is not the inverse)."""
    pipe, embeds = sd
    cfg = pipe.scheduler.config
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    x0 = call(pipe, embeds, BELMScheduler.from_config(cfg), noise, 3)
    image = call(pipe, embeds, BELMScheduler.from_config(cfg), noise, 3, "np")
    inv = BELMInverseScheduler.from_config(cfg)
    x_T = call(pipe, embeds, inv, x0, 11)
    assert dict(inv.latent.noise)["seed"] == 11 and dict(inv.latent.noise)["eta"] == 0.5
    assert 0.5 < float(x_T.std()) < 2.0  # noise-like: the inverted latent of a sample
    rec = call(pipe, embeds, BELMScheduler.from_config(cfg), x_T, 11)
    assert rel(rec, x0) <= 1e-6
    again = call(pipe, embeds, BELMScheduler.from_config(cfg), x_T, 11, "np")
    assert abs(again - image).max() <= 1e-5
    with pytest.warns(InvertedLatentWarning, match="seed: 11 when inverted, 12 now"):
        other = call(pipe, embeds, BELMScheduler.from_config(cfg), x_T, 12)
    assert rel(other, x0) > 0.05
    # the explicit path: a loaded latent run with another seed is refused
    fwd = BELMScheduler.from_config(cfg)
    latents = fwd.load_latent(inv.latent)
    with pytest.raises(L.LatentMismatchError, match="seed"):
        call(pipe, embeds, fwd, latents, 12)
    assert rel(call(pipe, embeds, fwd, latents, 11), x0) <= 1e-6
    BELMScheduler.handoff.clear()


def test_stochastic_handoff_keeps_rows_in_place(sd):
    """One generator seed keys row b's noise by (seed, b): the hand-off resumes a stochastic
    inversion's rows only at their own positions in a batch of the same size; a reordered
    batch warns (it is not the inverse) instead of resuming with the wrong noise."""
    pipe, embeds = sd
    cfg = pipe.scheduler.config
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    x0 = call(pipe, embeds, BELMScheduler.from_config(cfg), noise, 3)
    x_T = call(pipe, embeds, BELMInverseScheduler.from_config(cfg), x0, 11)
    with pytest.warns(InvertedLatentWarning, match="keyed by the row's position"):
        swapped = call(pipe, embeds, BELMScheduler.from_config(cfg), x_T.flip(0), 11)
    assert rel(swapped, x0.flip(0)) > 1e-3
    rec = call(pipe, embeds, BELMScheduler.from_config(cfg), x_T, 11)
    assert rel(rec, x0) <= 1e-6
    BELMScheduler.handoff.clear()


def test_scheduler_refuses_noise_it_cannot_regenerate():
    s = BELMScheduler(**DDIM_LIKE)
    s.set_timesteps(5)
    x = torch.randn(1, 4, 8, 8)
    t0, t1 = s.timesteps[:2]
    with pytest.raises(ValueError, match="variance_noise cannot be regenerated"):
        s.step(model(x, t0), t0, x, eta=0.5, variance_noise=torch.zeros_like(x))
    with pytest.raises(ValueError, match="needs generator="):
        s.step(model(x, t0), t0, x, eta=0.5)
    with pytest.raises(TypeError, match="torch.Generator"):
        s.step(model(x, t0), t0, x, eta=0.5, generator=object())
    with pytest.raises(ValueError, match="eta must be"):
        s.step(model(x, t0), t0, x, eta=-1.0)
    g = torch.Generator().manual_seed(1)
    x1 = s.step(model(x, t0), t0, x, eta=0.5, generator=g).prev_sample
    with pytest.raises(ValueError, match="eta changed"):
        s.step(model(x1, t1), t1, x1, eta=0.3, generator=g)
    with pytest.raises(ValueError, match="seed changed"):
        s.step(model(x1, t1), t1, x1, eta=0.5, generator=torch.Generator().manual_seed(2))
    # a list of generators: one seed per row
    s.set_timesteps(5)
    gens = [torch.Generator().manual_seed(4), torch.Generator().manual_seed(5)]
    x2 = torch.randn(2, 4, 8, 8)
    s.step(model(x2, t0), t0, x2, eta=0.5, generator=gens)
    assert s._sto.seed == (4, 5)


def test_digits_round_trip_with_eta_is_exact_and_seeded():
    """Held-out digits through the digits DDPM's stochastic sampler (eta = 0.5, the default
    method and designed grid, float64 state): sample(invert(x0, seed)) = x0 to ≤ 1e-12."""
    unet = UNet2DModel.from_pretrained(ROOT / "models" / "digits_ddpm")
    sched = DDPMScheduler.from_pretrained(ROOT / "models" / "digits_ddpm")
    s = DiffusionSampler(unet, sched, 20, eta=0.5, disable_progress=True)
    assert isinstance(s.method, L.StochasticMethod)
    # the stochastic base is O-BELM-landing, not the exponential ODE default (docstring)
    assert s.method.method.name == "obelm-landing(0.1)"
    assert DiffusionSampler(unet, sched, 20, disable_progress=True).method.name == "ebelm5"
    x, _ = load_digits_split("test")
    x0 = x[:8].double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no exactness warning: exact in practice
        lat = s.invert(x0, seed=21)
    rec = s.sample(lat)
    err = (rec - x0).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)
    assert float(err.max()) <= 1e-12
    assert float(lat.x_N.std()) / float(s.grid.sigma_bar[-1]) < 3  # noise-like latents
    with pytest.raises(L.LatentMismatchError, match="seed"):
        s.sample(lat, seed=22)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)  # x_T in model space
    a, b = s.sample(noise, seed=1), s.sample(noise, seed=2)
    assert rel(a, b) > 0.05 and torch.equal(a, s.sample(noise, seed=1))
