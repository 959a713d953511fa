"""BELMScheduler in a stock StableDiffusionPipeline, the inverse scheduler, editing, interpolation.

The pipeline is built from tiny random-weight components (no text encoder: prompt
embeddings are passed directly).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler
from lmsolvers.adapters import (
    BELMInverseScheduler,
    BELMScheduler,
    DiffusionSampler,
    decode_latents,
    edit_image,
    edit_latents,
    encode_image,
    interpolate,
)
from lmsolvers.adapters.tiny import (
    SD_SCHEDULER_CONFIG,
    run_tiny_pipeline,
    tiny_prompt_embeds,
    tiny_sd_pipeline,
    tiny_vae,
)

from lmsolvers import bdia

N = 10


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def pipe():
    p = tiny_sd_pipeline()
    p.scheduler = BELMScheduler.from_config(p.scheduler.config)
    return p


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))


def run_pipe(pipe, embeds, latents, w, n=N):
    return run_tiny_pipeline(pipe, embeds, latents, w, n)


def inverse_loop(unet, inv, x0, embeds, w):
    """The diffusers-style inversion loop (as with DDIMInverseScheduler)."""
    pe, ne = embeds
    x = x0
    with torch.no_grad():
        for t in inv.timesteps:
            if w == 1.0:
                e = unet(x, t, encoder_hidden_states=pe).sample
            else:
                u, c = unet(torch.cat([x] * 2), t, encoder_hidden_states=torch.cat([ne, pe])
                            ).sample.chunk(2)
                e = u + w * (c - u)
            x = inv.step(e, t, x).prev_sample
    return x


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_scheduler_drop_in_equals_diffusion_sampler(pipe, embeds, x_T, w):
    out = run_pipe(pipe, embeds, x_T, w)
    s = DiffusionSampler(pipe.unet, pipe.scheduler, N, grid="scheduler",
                         guidance_scale=w, prompt_embeds=embeds[0],
                         negative_prompt_embeds=embeds[1], disable_progress=True)
    ref = s.sample(x_T)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref.to(out.dtype))  # bit for bit


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_inverse_scheduler_and_resume_from_full_latent_in_the_pipeline(pipe, embeds, w):
    x0 = run_pipe(pipe, embeds, torch.randn(2, 4, 8, 8, generator=torch.Generator()
                                            .manual_seed(7)), w)
    inv = BELMInverseScheduler.from_config(pipe.scheduler.config)
    inv.set_timesteps(N)
    assert inv.timesteps.tolist() == sorted(inv.timesteps.tolist())
    inverse_loop(pipe.unet, inv, x0, embeds, w)
    s = DiffusionSampler(pipe.unet, pipe.scheduler, N, grid="scheduler",
                         guidance_scale=w, prompt_embeds=embeds[0],
                         negative_prompt_embeds=embeds[1], disable_progress=True)
    lat = s.invert(x0)
    assert all(torch.equal(a, b) for a, b in zip(lat.states, inv.latent.states, strict=True))
    # the documented resume: load the k states, pass the returned x_T as `latents`
    rec = run_pipe(pipe, embeds, pipe.scheduler.load_latent(inv.latent, dtype=torch.float32), w)
    assert rel(rec, x0) <= 1e-10
    # the latent stays loaded: a second run from its x_T is exact again
    again = run_pipe(pipe, embeds, pipe.scheduler.load_latent(inv.latent), w)
    assert torch.equal(again, rec)
    # the DDIMInverse-style hand-off: x_T alone, as the inverse scheduler left it, resumes
    # the full latent (the forward scheduler finds it by content in the shared registry)
    pipe.scheduler.clear_latent()
    x_T = (inv.latent.x_N * float(s.grid.alphas[-1])).float()
    assert torch.equal(run_pipe(pipe, embeds, x_T, w), rec)
    # without the registry, restarting from x_T alone (a single-state sampler) is not the
    # inverse
    BELMScheduler.handoff.clear()
    alone = run_pipe(pipe, embeds, x_T, w)
    assert rel(alone, x0) > 1e-4


def test_load_latent_refuses_a_mismatched_grid(pipe, embeds, x_T):
    s = DiffusionSampler(pipe.unet, pipe.scheduler, N + 2, grid="scheduler",
                         prompt_embeds=embeds[0],
                         disable_progress=True)
    lat = s.invert(x_T)
    latents = pipe.scheduler.load_latent(lat)
    with pytest.raises(ValueError, match="grid mismatch"):
        run_pipe(pipe, embeds, latents, 1.0)
    pipe.scheduler.clear_latent()


@pytest.mark.parametrize("src", [PNDMScheduler, DPMSolverMultistepScheduler])
def test_from_config_of_other_families(src, embeds, x_T):
    cfg = DDIMScheduler(**SD_SCHEDULER_CONFIG).config
    other = src.from_config(cfg)
    p = tiny_sd_pipeline(scheduler=other)
    p.scheduler = BELMScheduler.from_config(p.scheduler.config)
    p.scheduler.set_method(bdia(0.8))
    out = run_pipe(p, embeds, x_T, 2.0, n=8)
    s = DiffusionSampler(p.unet, other, 8, bdia(0.8), guidance_scale=2.0,
                         prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1],
                         disable_progress=True)
    assert torch.equal(out, s.sample(x_T).float())


# ---------------------------------------------------------------- editing
@pytest.fixture(scope="module")
def image_latents(pipe):
    img = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(11)) * 2 - 1
    return encode_image(pipe.vae, img)


def test_edit_same_prompt_reproduces_and_new_prompt_changes(pipe, image_latents):
    src, tgt = tiny_prompt_embeds(1, batch=2), tiny_prompt_embeds(21, batch=2)
    neg = tiny_prompt_embeds(2)
    kw = dict(num_inference_steps=N, guidance_scale=2.0, disable_progress=True)
    same = edit_latents(pipe.unet, pipe.scheduler, image_latents, src, src, neg, **kw)
    assert rel(same.latents, image_latents) <= 1e-10
    edited = edit_latents(pipe.unet, pipe.scheduler, image_latents, src, tgt, neg,
                          latent=same.latent, **kw)
    assert rel(edited.latents, image_latents) > 1e-2
    frozen = edit_latents(pipe.unet, pipe.scheduler, image_latents, src, tgt, neg,
                          latent=same.latent, frozen_fraction=1.0, **kw)
    assert rel(frozen.latents, image_latents) <= 1e-10  # every step frozen: no edit
    half = edit_latents(pipe.unet, pipe.scheduler, image_latents, src, tgt, neg,
                        latent=same.latent, frozen_fraction=0.5, **kw)
    d_src, d_edit = rel(half.latents, image_latents), rel(half.latents, edited.latents)
    assert d_src > 1e-3 and d_edit > 1e-3
    assert d_src < rel(edited.latents, image_latents)  # freezing keeps it closer to the source


def test_edit_image_with_a_vae(pipe):
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(12)) * 2 - 1
    z1, z2 = encode_image(pipe.vae, img), encode_image(pipe.vae, img)
    assert torch.equal(z1, z2)  # deterministic encoding: the posterior mean
    z3 = encode_image(pipe.vae, img, deterministic=False, generator=torch.Generator()
                      .manual_seed(0))
    assert not torch.equal(z1, z3)
    pe = tiny_prompt_embeds(1)
    res = edit_image(pipe.vae, pipe.unet, pipe.scheduler, img, pe, pe,
                     num_inference_steps=N, disable_progress=True)
    assert res.image.shape == img.shape
    torch.testing.assert_close(res.image, decode_latents(pipe.vae, z1.double()), rtol=0,
                               atol=1e-5)


def test_interpolation_end_points_are_exact(pipe, image_latents):
    s = DiffusionSampler(pipe.unet, pipe.scheduler, N, grid="scheduler",
                         prompt_embeds=tiny_prompt_embeds(1),
                         disable_progress=True)
    a, b = image_latents[:1], image_latents[1:]
    path = interpolate(s, a, b, weights=(0.0, 0.5, 1.0))
    assert path.shape == (3, *a.shape)
    assert rel(path[0], a) <= 1e-10 and rel(path[2], b) <= 1e-10
    assert rel(path[1], a) > 1e-2 and rel(path[1], b) > 1e-2


def test_tiny_vae_builds_offline():
    vae = tiny_vae()
    assert vae.config.latent_channels == 4
