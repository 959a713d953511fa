"""Flow-matching models (SD3, FLUX) and the α = 0 top node (docs/design.md §9).

Tiny random-weight ``SD3Transformer2DModel`` / ``FluxTransformer2DModel`` pipelines built
offline (``lmsolvers.adapters.tiny``), called with prompt embeddings.  What is checked:

* the algebra: a FlowMatchEuler step is the DDIM step in σ̄, and the entry step out of
  σ = 1 is FlowMatchEuler's first step (closed forms, float64, hypothesis);
* the conversion in the stock pipelines: ``BELMScheduler(method="ddim")`` and
  ``DiffusionSampler("ddim")`` reproduce the stock ``FlowMatchEulerDiscreteScheduler`` output
  to float32 round-off, and the transformer sees bitwise the stock timesteps;
* O-BELM through the stock pipelines equals ``DiffusionSampler`` bit for bit;
* round trips ≤ 1e-10 through fp32 and bf16 transformers with a float64 state;
* FLUX's ``mu``/sigmas, guidance embedding and true CFG as the pipeline has them;
* the zero-terminal-SNR VP top node (ᾱ_T = 0 exactly) through a stock SD pipeline.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from hypothesis import given
from hypothesis import strategies as st
from lmsolvers.adapters import BELMScheduler, DiffusionSampler, edit_latents
from lmsolvers.adapters.diffusers import to_epsilon, top_prediction
from lmsolvers.adapters.editing import frozen_threshold
from lmsolvers.adapters.tiny import (
    FLUX_SCHEDULER_CONFIG,
    SD3_SCHEDULER_CONFIG,
    SD_SCHEDULER_CONFIG,
    tiny_conditional_unet,
    tiny_embeds,
    tiny_flux_pipeline,
    tiny_flux_transformer,
    tiny_prompt_embeds,
    tiny_sd3_pipeline,
    tiny_sd3_transformer,
    tiny_sd_pipeline,
)

N = 6  # pipeline steps: the entry step out of σ = 1 and N − 1 grid steps


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------- the algebra
unit = st.floats(0.01, 0.99)


@given(unit, unit, st.integers(0, 2**31 - 1))
def test_flow_match_euler_step_is_the_ddim_step_in_sigma_bar(s1, s2, seed):
    """``x' = x + (σ' − σ) v`` (FlowMatchEuler) equals ``α'(x̄ + (σ̄' − σ̄) ε̂)`` with
    ``x̄ = x/(1−σ)``, ``σ̄ = σ/(1−σ)``, ``ε̂ = x + (1−σ) v`` (to_epsilon's 'flow')."""
    hi, lo = max(s1, s2), min(s1, s2)
    g = torch.Generator().manual_seed(seed)
    x, v = torch.randn(2, 5, generator=g, dtype=torch.float64)
    euler = x + (lo - hi) * v
    a_hi, a_lo = 1 - hi, 1 - lo
    sb_hi, sb_lo = hi / a_hi, lo / a_lo
    eps = to_epsilon(v, x, a_hi, hi, "flow")
    torch.testing.assert_close(eps, x + (1 - hi) * v, rtol=0, atol=0)
    ddim = a_lo * (x / a_hi + (sb_lo - sb_hi) * eps)
    torch.testing.assert_close(ddim, euler, rtol=0, atol=1e-12 * (1 + float(euler.abs().max())))


@given(unit, st.integers(0, 2**31 - 1))
def test_entry_step_is_flow_match_eulers_first_step(s_n, seed):
    """Out of σ = 1 (α = 0): ``α_N (x̂_0 + σ̄_N ε̂) = x_T + (σ_N − 1) v`` for the flow
    prediction, and the DDIM step of a VP v-prediction from ᾱ = 0."""
    g = torch.Generator().manual_seed(seed)
    x, v = torch.randn(2, 5, generator=g, dtype=torch.float64)
    x0, e = top_prediction(v, x, "flow")
    torch.testing.assert_close((1 - s_n) * (x0 + s_n / (1 - s_n) * e), x + (s_n - 1) * v,
                               rtol=0, atol=1e-13)
    # VP: v = α ε − σ x̂_0 with α = 0, σ = 1 gives x̂_0 = −v, ε = x; the DDIM step onto
    # (α_N, σ_N) is α_N x̂_0 + σ_N ε
    a_n = math.sqrt(1 - s_n**2)
    x0, e = top_prediction(v, x, "v_prediction")
    torch.testing.assert_close(a_n * (x0 + s_n / a_n * e), -a_n * v + s_n * x, rtol=0,
                               atol=1e-13)
    with pytest.raises(ValueError, match="does not determine x̂_0"):
        top_prediction(v, x, "epsilon")


# --------------------------------------------------------------- the pipelines
@pytest.fixture(scope="module")
def conds():
    """SD3-style conditioning (batch 2) with negatives."""
    pe, pp = tiny_embeds(1, batch=2)
    ne, np_ = tiny_embeds(2, batch=2)
    return dict(prompt_embeds=pe, pooled_prompt_embeds=pp, negative_prompt_embeds=ne,
                negative_pooled_prompt_embeds=np_)


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3_pipeline()


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_pipeline()


class Recorder:
    """Records the ``timestep`` (and ``guidance``) every call of a model receives."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[dict[str, torch.Tensor | None]] = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append({k: (None if kwargs.get(k) is None else kwargs[k].clone())
                           for k in ("timestep", "guidance")})

    def take(self) -> list[dict[str, torch.Tensor | None]]:
        out, self.calls = self.calls, []
        return out


def run_sd3(pipe, cond, latents, w=3.0, n=N):
    return pipe(latents=latents, num_inference_steps=n, guidance_scale=w, output_type="latent",
                height=16, width=16, **cond).images


def run_flux(pipe, cond, latents, w=3.5, n=N, **kw):
    b, c, h, wd = latents.shape
    out = pipe(latents=FluxPipeline._pack_latents(latents, b, c, h, wd), num_inference_steps=n,
               guidance_scale=w, output_type="latent", height=2 * h, width=2 * wd,
               **cond, **kw).images
    return FluxPipeline._unpack_latents(out, h, wd, 1)


def flux_cond(conds):
    return {k: conds[k] for k in ("prompt_embeds", "pooled_prompt_embeds")}


def sampler(pipe, method, cond, **kw):
    model = getattr(pipe, "transformer", None) or pipe.unet
    return DiffusionSampler(model, pipe.scheduler, N, method, disable_progress=True, **cond, **kw)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_belm_ddim_and_sampler_ddim_reproduce_the_stock_flow_match_euler(family, sd3, flux,
                                                                          conds):
    """The conversion, end to end: the stock FlowMatchEuler run, BELMScheduler(method='ddim')
    in the same pipeline, and DiffusionSampler('ddim') agree to float32 round-off; the
    transformer is called at bitwise the stock timesteps (and guidance)."""
    pipe = sd3 if family == "sd3" else flux
    cond = conds if family == "sd3" else flux_cond(conds)
    run = run_sd3 if family == "sd3" else run_flux
    extra = dict(guidance_scale=3.0) if family == "sd3" else {}
    stock_cfg = dict(SD3_SCHEDULER_CONFIG if family == "sd3" else FLUX_SCHEDULER_CONFIG)
    model = pipe.transformer
    x_T = noise(2, 4, 8, 8, seed=3)
    rec = Recorder(model)
    try:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(**stock_cfg)
        stock = run(pipe, cond, x_T)
        stock_calls = rec.take()
        s = sampler(pipe, "ddim", cond, **extra)
        ours = s.sample(x_T)
        our_calls = rec.take()
        pipe.scheduler = BELMScheduler.from_config(pipe.scheduler.config, method="ddim")
        belm = run(pipe, cond, x_T)
        belm_calls = rec.take()
    finally:
        rec.handle.remove()
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(**stock_cfg)
    assert rel(ours, stock) < 2e-6 and rel(belm, stock) < 2e-6
    assert 0 < rel(ours, stock)  # float64 state vs float32 steps: round-off, not identity
    assert len(stock_calls) == len(our_calls) == len(belm_calls) == N == s.num_model_calls
    assert s.top_timestep == 1000.0 and s.grid.N == N - 1
    for a, b, c in zip(stock_calls, our_calls, belm_calls, strict=True):
        for key in ("timestep", "guidance"):
            if a[key] is None:
                assert b[key] is None and c[key] is None
            else:
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key])
                assert torch.equal(a[key], c[key])


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_obelm_through_the_stock_pipeline_equals_diffusion_sampler(family, sd3, flux, conds):
    pipe = sd3 if family == "sd3" else flux
    cond = conds if family == "sd3" else flux_cond(conds)
    run = run_sd3 if family == "sd3" else run_flux
    extra = dict(guidance_scale=3.0) if family == "sd3" else {}
    old = pipe.scheduler
    pipe.scheduler = BELMScheduler.from_config(old.config)
    try:
        x_T = noise(2, 4, 8, 8, seed=4)
        piped = run(pipe, cond, x_T)
        ours = sampler(pipe, "obelm", cond, **extra).sample(x_T)
    finally:
        pipe.scheduler = old
    assert torch.equal(piped, ours.to(piped.dtype))


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_through_fp32_and_bf16_transformers(family, dtype, conds):
    """Invert and regenerate with a float64 state: ≤ 1e-10 relative whatever the model dtype;
    the latent lives on the finite grid (no σ = 1 node)."""
    if family == "sd3":
        model, sched, cond = tiny_sd3_transformer(dtype=dtype), SD3_SCHEDULER_CONFIG, conds
        extra = dict(guidance_scale=3.0)
    else:
        model, sched, cond = tiny_flux_transformer(dtype=dtype), FLUX_SCHEDULER_CONFIG, \
            flux_cond(conds)
        extra = {}
    s = DiffusionSampler(model, FlowMatchEulerDiscreteScheduler(**sched), N,
                         disable_progress=True, **cond, **extra)
    x0 = s.sample(noise(2, 4, 8, 8, seed=5))
    latent = s.invert(x0)
    assert np.all(np.isfinite(latent.grid.sigma_bar)) and latent.grid.N == N - 1
    assert latent.grid.alphas[-1] > 0
    assert rel(s.sample(latent), x0) <= 1e-10
    with pytest.raises(ValueError, match="α = 0 top node"):
        s.noise_of(latent)


def test_flux_schedule_is_the_pipelines(flux, conds):
    """FLUX: sigmas = linspace(1, 1/n, n) shifted with mu = calculate_shift of the packed
    sequence length — the grid is the stock scheduler's sigmas bit for bit."""
    x_T = noise(1, 4, 12, 8, seed=6)
    cond = {k: v[:1] for k, v in flux_cond(conds).items()}
    run_flux(flux, cond, x_T)
    s = sampler(flux, "obelm", cond)
    assert s.mu_for(x_T) == calculate_shift(6 * 4, 256, 4096, 0.5, 1.15)
    grid = s.schedule_for(x_T).grid
    stock = flux.scheduler.sigmas  # [1, σ_N, …, σ_1, 0] in float32
    assert torch.equal(torch.tensor(1.0 - grid.alphas[::-1].copy(), dtype=torch.float32),
                       stock[1:])
    assert s.top_timestep == float(flux.scheduler.timesteps[0])
    assert torch.equal(torch.tensor(grid.timesteps[1:][::-1].copy(), dtype=torch.float32),
                       flux.scheduler.timesteps[1:])


def test_sd3_dynamic_shifting_uses_the_pipelines_mu(conds):
    """An SD3 config with dynamic shifting: mu = calculate_shift((H/p)(W/p), …) with the
    config's shifts as StableDiffusion3Pipeline computes it; the grid is the stock sigmas
    bitwise."""
    cfg = dict(SD3_SCHEDULER_CONFIG, use_dynamic_shifting=True, base_image_seq_len=4,
               max_image_seq_len=64)
    pipe = tiny_sd3_pipeline(scheduler=FlowMatchEulerDiscreteScheduler(**cfg))
    x_T = noise(2, 4, 8, 12, seed=10)
    pipe(latents=x_T, num_inference_steps=N, guidance_scale=1.0, output_type="latent",
         height=16, width=24, prompt_embeds=conds["prompt_embeds"],
         pooled_prompt_embeds=conds["pooled_prompt_embeds"])
    s = DiffusionSampler(pipe.transformer, pipe.scheduler, N, disable_progress=True,
                         grid="scheduler", prompt_embeds=conds["prompt_embeds"],
                         pooled_prompt_embeds=conds["pooled_prompt_embeds"])
    assert s.mu_for(x_T) == calculate_shift(4 * 6, 4, 64, 0.5, pipe.scheduler.config.max_shift)
    grid = s.schedule_for(x_T).grid
    assert torch.equal(torch.tensor(1.0 - grid.alphas[::-1].copy(), dtype=torch.float32),
                       pipe.scheduler.sigmas[1:])
    # the default configuration: the stock range per mu, the finite nodes on its λ-grid
    d = DiffusionSampler(pipe.transformer, pipe.scheduler, N, disable_progress=True,
                         prompt_embeds=conds["prompt_embeds"],
                         pooled_prompt_embeds=conds["pooled_prompt_embeds"])
    dg = d.schedule_for(x_T).grid
    assert dg.N == grid.N and dg.sigma_bar[1] == grid.sigma_bar[1]
    assert dg.sigma_bar[-1] == grid.sigma_bar[-1] and d.method.name.startswith("ebelm")


@given(st.integers(3, 12), st.floats(1.0, 6.0), st.integers(0, 2**31 - 1))
def test_flow_round_trip_is_exact_on_any_schedule(n, shift, seed):
    """Property: on any static-shift flow schedule and any noise, invert ∘ sample is the
    identity to float64 round-off (fp32 SD3 transformer, no guidance)."""
    pe, pp = tiny_embeds(seed % 7, batch=1)
    s = DiffusionSampler(_SD3_FP32, FlowMatchEulerDiscreteScheduler(shift=shift), n,
                         disable_progress=True, prompt_embeds=pe, pooled_prompt_embeds=pp)
    x0 = s.sample(noise(1, 4, 8, 8, seed=seed))
    assert s.grid.N == n - 1 and s.num_model_calls == n
    assert rel(s.sample(s.invert(x0)), x0) <= 1e-10


_SD3_FP32 = tiny_sd3_transformer(seed=3)


def test_flux_guidance_embedding_and_true_cfg(flux, conds):
    x_T = noise(2, 4, 8, 8, seed=7)
    cond = flux_cond(conds)
    s = sampler(flux, "obelm", cond)
    a, b = s.sample(x_T), s.sample(x_T, guidance_scale=7.0)
    assert rel(a, b) > 1e-4  # FLUX-dev: guidance_scale is an embedding input
    assert s.context["guidance_scale"] == 3.5 and s.context["true_cfg_scale"] == 1.0
    # true CFG: two calls as FluxPipeline; the stock run agrees to round-off
    old = flux.scheduler
    flux.scheduler = BELMScheduler.from_config(old.config)
    try:
        piped = run_flux(flux, conds, x_T, true_cfg_scale=2.0)
    finally:
        flux.scheduler = old
    ours = sampler(flux, "obelm", conds, true_cfg_scale=2.0).sample(x_T)
    assert torch.equal(piped, ours.float())
    assert rel(ours, a) > 1e-4
    with pytest.warns(RuntimeWarning, match="no classifier-free guidance, as in FluxPipeline"):
        lone = sampler(flux, "obelm", cond, true_cfg_scale=2.0)  # no negatives: no CFG
    assert torch.equal(lone.sample(x_T), a)
    # schnell (no guidance embedding) ignores guidance_scale, as the pipeline does
    schnell = tiny_flux_transformer(guidance_embeds=False)
    s2 = DiffusionSampler(schnell, flux.scheduler, N, disable_progress=True, **cond)
    assert torch.equal(s2.sample(x_T), s2.sample(x_T, guidance_scale=9.0))


def test_conditioning_at_call_and_editing(sd3, conds):
    """Conditioning given to invert/sample instead of the constructor; an edit with the
    source prompt as target gives the input back."""
    s = DiffusionSampler(sd3.transformer, sd3.scheduler, N, disable_progress=True)
    x0 = noise(2, 4, 8, 8, seed=8)
    cond = dict(conds, guidance_scale=3.0)
    lat = s.invert(x0, **cond)
    assert rel(s.sample(lat, **cond), x0) <= 1e-10
    other = dict(cond, prompt_embeds=tiny_embeds(9, batch=2)[0])
    assert rel(s.sample(lat, **other), x0) > 1e-3
    with pytest.raises(ValueError, match="needs prompt_embeds and pooled_prompt_embeds"):
        s.invert(x0)
    res = edit_latents(sd3.transformer, sd3.scheduler, x0, conds["prompt_embeds"],
                       conds["prompt_embeds"], conds["negative_prompt_embeds"],
                       num_inference_steps=N, guidance_scale=3.0,
                       source_pooled_prompt_embeds=conds["pooled_prompt_embeds"],
                       target_pooled_prompt_embeds=conds["pooled_prompt_embeds"],
                       negative_pooled_prompt_embeds=conds["negative_pooled_prompt_embeds"],
                       disable_progress=True)
    assert rel(res.latents, x0) <= 1e-10
    # the frozen-fraction rule: source ε at nodes m ≥ N − round(f N) + 1
    g = s.grid
    assert frozen_threshold(g, 0.0) == math.inf and frozen_threshold(g, 0.05) == math.inf
    assert frozen_threshold(g, 1.0) == g.sigma_bar[1]
    assert frozen_threshold(g, 0.4) == g.sigma_bar[g.N - 2 + 1]  # round(0.4·5) = 2
    with pytest.raises(ValueError, match=r"frozen_fraction must lie in \[0, 1\]"):
        frozen_threshold(g, 1.5)


def test_bad_flow_inputs_are_clear_errors(sd3, flux, conds):
    t, sch = sd3.transformer, sd3.scheduler
    with pytest.raises(ValueError, match="guidance_scale = 3 needs negative_prompt_embeds"):
        DiffusionSampler(t, sch, N, guidance_scale=3.0, prompt_embeds=conds["prompt_embeds"],
                         pooled_prompt_embeds=conds["pooled_prompt_embeds"])
    with pytest.raises(ValueError, match="width 16 but the model's joint_attention_dim = 32"):
        DiffusionSampler(t, sch, N, prompt_embeds=torch.randn(1, 5, 16),
                         pooled_prompt_embeds=conds["pooled_prompt_embeds"])
    with pytest.raises(ValueError, match="pooled_projection_dim = 32"):
        DiffusionSampler(t, sch, N, prompt_embeds=conds["prompt_embeds"],
                         pooled_prompt_embeds=torch.randn(2, 8))
    with pytest.raises(TypeError, match=r"\['original_size'\] are not conditioning arguments"):
        DiffusionSampler(t, sch, N, original_size=(16, 16), **flux_cond(conds))
    with pytest.raises(ValueError, match="'v_prediction' assumes α² \\+ σ² = 1"):
        DiffusionSampler(t, sch, N, prediction_type="v_prediction", **flux_cond(conds))
    with pytest.raises(ValueError, match="grid='designed' places its own nodes"):
        DiffusionSampler(t, sch, N, grid="designed", sigmas=[1.0, 0.5], **flux_cond(conds))
    s = DiffusionSampler(flux.transformer, flux.scheduler, N, **flux_cond(conds))
    with pytest.raises(ValueError, match="pass mu="):
        _ = s.grid  # FLUX's shift depends on the image size
    with pytest.raises(ValueError, match=r"not divisible by the patch size 2"):
        s.sample(noise(2, 4, 7, 8))
    with pytest.raises(ValueError, match=r"must be \(B, 4, H, W\)"):
        s.sample(noise(2, 16, 8, 8))


# ------------------------------------------------- zero terminal SNR (VP, α = 0)
ZSNR = dict(SD_SCHEDULER_CONFIG, rescale_betas_zero_snr=True, timestep_spacing="trailing",
            prediction_type="v_prediction")


def test_zero_terminal_snr_top_node_through_a_stock_pipeline():
    """ᾱ_T = 0 exactly: the entry step at t = 999, then O-BELM on the finite grid — the stock
    StableDiffusionPipeline with BELMScheduler equals DiffusionSampler bit for bit, and the
    round trip is exact."""
    pipe = tiny_sd_pipeline(scheduler=BELMScheduler.from_config(ZSNR))
    pe, ne = tiny_prompt_embeds(1, batch=2), tiny_prompt_embeds(2, batch=2)
    x_T = noise(2, 4, 8, 8, seed=9)
    piped = pipe(prompt_embeds=pe, negative_prompt_embeds=ne, num_inference_steps=N,
                 guidance_scale=3.0, latents=x_T, output_type="latent").images
    s = DiffusionSampler(pipe.unet, ZSNR, N, "obelm", guidance_scale=3.0, prompt_embeds=pe,
                         negative_prompt_embeds=ne, disable_progress=True)
    assert s.top_timestep == 999 and s.grid.N == N - 1
    x0 = s.sample(x_T)
    assert torch.equal(piped, x0.float())
    assert rel(s.sample(s.invert(x0)), x0) <= 1e-10
    with pytest.raises(ValueError, match="does not determine x̂_0"):
        DiffusionSampler(tiny_conditional_unet(), dict(ZSNR, prediction_type="epsilon"), N,
                         "obelm", disable_progress=True,
                         prompt_embeds=pe).sample(x_T)
