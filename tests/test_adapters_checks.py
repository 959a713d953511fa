"""The adapters refuse what they cannot do exactly, with messages that name the problem.

Each test pins one defect of issue 11 (A3 loaded latents, A4 step order, A5 guidance
below 1, A9 messages, B predicted x̂_0 and whole-grid latent checks, the method in the
saved config).  Tiny random-weight components, no hub.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from diffusers import DDIMScheduler
from lmsolvers.adapters import (
    BELMInverseScheduler,
    BELMScheduler,
    DiffusionSampler,
    edit_latents,
    grid_from_scheduler,
)
from lmsolvers.adapters.tiny import (
    SD_SCHEDULER_CONFIG,
    run_tiny_pipeline,
    tiny_conditional_unet,
    tiny_prompt_embeds,
    tiny_sd_pipeline,
)

from lmsolvers import bdia, method_from_name, obelm

N = 10


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def unet():
    return tiny_conditional_unet()


@pytest.fixture
def pipe(unet):
    """A fresh pipeline per test: a loaded latent must not leak into other tests."""
    p = tiny_sd_pipeline(unet=unet)
    p.scheduler = BELMScheduler.from_config(p.scheduler.config)
    return p


@pytest.fixture(scope="module")
def x0():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))


def run_pipe(pipe, embeds, latents, w, n=N):
    return run_tiny_pipeline(pipe, embeds, latents, w, n)


def sampler(unet, scheduler, embeds, n=N, w=1.0, **kw):
    """On the scheduler's own grid, so its latents resume in a BELMScheduler pipeline."""
    return DiffusionSampler(unet, scheduler, n, grid="scheduler", guidance_scale=w,
                            prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1],
                            disable_progress=True, **kw)


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------ A3: loaded latents
def test_load_latent_is_validated_before_use_and_a_retry_is_never_silent(pipe, embeds, x0):
    """A grid-mismatch error must not consume the latent: the retry is an error again,
    the run with the right step count is exact, and so is a second run."""
    lat = sampler(pipe.unet, pipe.scheduler, embeds, n=N + 2).invert(x0)
    latents = pipe.scheduler.load_latent(lat)
    for _ in range(2):  # the natural retry must fail the same way, not sample from x_T alone
        with pytest.raises(ValueError, match="grid mismatch"):
            run_pipe(pipe, embeds, latents, 1.0)
    first = run_pipe(pipe, embeds, latents, 1.0, n=N + 2)
    assert rel(first, x0) <= 1e-10
    second = run_pipe(pipe, embeds, latents, 1.0, n=N + 2)  # a second use is exact too
    assert torch.equal(first, second)
    pipe.scheduler.clear_latent()
    alone = run_pipe(pipe, embeds, latents, 1.0, n=N + 2)  # x_T alone: not the inverse
    assert rel(alone, x0) > 1e-4


def test_load_latent_refuses_other_noise_while_a_latent_is_loaded(pipe, embeds, x0):
    lat = sampler(pipe.unet, pipe.scheduler, embeds).invert(x0)
    pipe.scheduler.load_latent(lat)
    with pytest.raises(ValueError, match="clear_latent"):
        run_pipe(pipe, embeds, rand(2, 4, 8, 8, seed=8), 1.0)


@pytest.mark.parametrize("n", [4, 6])  # α_N = vp_alpha(σ̄_N) ≠ the table's α_N in the last bit
def test_load_latent_float64_unet_takes_alpha_from_the_grid_table(embeds, x0, n):
    unet = tiny_conditional_unet(dtype=torch.float64)
    p = tiny_sd_pipeline(unet=unet)
    p.scheduler = BELMScheduler.from_config(p.scheduler.config)
    emb = (embeds[0].double(), embeds[1].double())
    s = sampler(unet, p.scheduler, emb, n=n)
    lat = s.invert(x0.double())
    latents = p.scheduler.load_latent(lat, dtype=torch.float64)
    assert torch.equal(latents, lat.x_N * float(s.grid.alphas[-1]))
    rec = run_pipe(p, emb, latents, 1.0, n=n)
    assert rel(rec, x0) <= 1e-12


# ------------------------------------------------------------- A4: step order
@pytest.fixture
def belm():
    s = BELMScheduler.from_config(SD_SCHEDULER_CONFIG)
    s.set_timesteps(N)
    return s


def test_skipped_step_is_an_error_naming_expected_and_given(belm):
    ts = [int(t) for t in belm.timesteps]
    x, e = rand(2, 4, 8, 8), rand(2, 4, 8, 8, seed=1)
    x1 = belm.step(e, ts[0], x).prev_sample
    with pytest.raises(ValueError, match=f"expected timestep {ts[1]}.*got {ts[2]}"):
        belm.step(e, ts[2], x1)


def test_repeated_and_out_of_order_steps_are_errors(belm):
    ts = [int(t) for t in belm.timesteps]
    x, e = rand(2, 4, 8, 8), rand(2, 4, 8, 8, seed=1)
    belm.set_begin_index(0)  # a run may start at any node, unless begin_index says where
    with pytest.raises(ValueError, match=rf"set_begin_index\(0\).*= {ts[0]}.*at {ts[3]}"):
        belm.step(e, ts[3], x)
    x1 = belm.step(e, ts[0], x).prev_sample
    x2 = belm.step(e, ts[1], x1).prev_sample
    with pytest.raises(ValueError, match=f"expected timestep {ts[2]}.*got {ts[1]}"):
        belm.step(e, ts[1], x1)  # repeated
    with pytest.raises(ValueError, match=f"expected timestep {ts[2]}.*got {ts[0]}"):
        belm.step(e, ts[0], x)  # back to the top in mid-run: call set_timesteps to restart
    belm.step(e, ts[2], x2)  # the run goes on after a refused step
    belm.set_timesteps(N)  # …and set_timesteps starts over
    assert torch.equal(belm.step(e, ts[0], x).prev_sample, x1)


def test_a_finished_run_can_be_followed_by_a_new_one(belm):
    x, e = rand(1, 4, 8, 8), rand(1, 4, 8, 8, seed=1)
    outs = []
    for _ in range(2):
        y = x
        for t in belm.timesteps:
            y = belm.step(e, t, y).prev_sample
        outs.append(y)
    assert torch.equal(outs[0], outs[1])


def test_batch_size_change_mid_run_is_a_clear_error(belm):
    ts = belm.timesteps
    x, e = rand(2, 4, 8, 8), rand(2, 4, 8, 8, seed=1)
    x1 = belm.step(e, ts[0], x).prev_sample
    with pytest.raises(ValueError, match=r"shape \(1, 4, 8, 8\).*\(2, 4, 8, 8\)"):
        belm.step(e[:1], ts[1], x1[:1])
    with pytest.raises(ValueError, match="model_output"):
        belm.step(torch.cat([e, e]), ts[1], x1)  # e.g. an unchunked CFG batch


def test_inverse_scheduler_refuses_skips_restarts_and_batch_changes():
    inv = BELMInverseScheduler.from_config(SD_SCHEDULER_CONFIG)
    inv.set_timesteps(N)
    ts = [int(t) for t in inv.timesteps]
    x, e = rand(2, 4, 8, 8), rand(2, 4, 8, 8, seed=1)
    x1 = inv.step(e, ts[0], x).prev_sample
    with pytest.raises(ValueError, match=f"expected timestep {ts[1]}.*got {ts[0]}"):
        inv.step(e, ts[0], x)  # a silent restart in mid-run would lose the run
    with pytest.raises(ValueError, match=r"shape \(1, 4, 8, 8\).*\(2, 4, 8, 8\)"):
        inv.step(e[:1], ts[1], x1[:1])
    with pytest.raises(ValueError, match=f"expected timestep {ts[1]}.*got {ts[2]}"):
        inv.step(e, ts[2], x1)
    y = x1  # the run goes on after refused steps, to the full latent
    for t in ts[1:]:
        y = inv.step(e, t, y).prev_sample
    assert inv.latent is not None and inv.latent.k == 2
    assert torch.equal((inv.latent.x_N * float(inv.grid.alphas[-1])).float(), y)


# ------------------------------------------------------ A5: guidance below one
@pytest.mark.parametrize("w", [0.5, 3.0])
def test_invert_load_latent_pipeline_end_to_end(pipe, embeds, x0, w):
    """Stock pipelines turn CFG off for w ≤ 1; DiffusionSampler follows that rule."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = sampler(pipe.unet, pipe.scheduler, embeds, w=w)
    below = [c for c in caught if "guidance_scale" in str(c.message)]
    assert len(below) == (1 if w < 1 else 0)
    lat = s.invert(x0)
    rec = run_pipe(pipe, embeds, pipe.scheduler.load_latent(lat), w)
    assert rel(rec, x0) <= 1e-10
    pipe.scheduler.clear_latent()
    xT = rand(2, 4, 8, 8, seed=5)
    assert torch.equal(run_pipe(pipe, embeds, xT, w), s.sample(xT).float())  # bit for bit


def test_guidance_below_one_is_no_guidance(unet, embeds):
    xT = rand(2, 4, 8, 8, seed=5)
    with pytest.warns(RuntimeWarning, match="guidance_scale = 0.5 < 1"):
        half = sampler(unet, DDIMScheduler(**SD_SCHEDULER_CONFIG), embeds, w=0.5)
    one = sampler(unet, DDIMScheduler(**SD_SCHEDULER_CONFIG), embeds, w=1.0)
    assert torch.equal(half.sample(xT), one.sample(xT))


@pytest.mark.parametrize("w", [math.nan, math.inf, -math.inf])
def test_non_finite_guidance_is_refused_up_front(unet, embeds, w):
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        sampler(unet, DDIMScheduler(**SD_SCHEDULER_CONFIG), embeds, w=w)


# -------------------------------------------------------------- A9: messages
@pytest.fixture(scope="module")
def sd_sampler(unet, embeds):
    return sampler(unet, DDIMScheduler(**SD_SCHEDULER_CONFIG), embeds, w=2.0)


def test_three_dimensional_state_is_reported_as_such(sd_sampler, x0):
    for call in (sd_sampler.sample, sd_sampler.invert):
        with pytest.raises(ValueError, match=r"4-D \(B, C, H, W\).*\(4, 8, 8\).*4 channels"):
            call(x0[0])


def test_wrong_channel_count_names_both_numbers(sd_sampler):
    with pytest.raises(ValueError, match="3 channels.*in_channels = 4"):
        sd_sampler.sample(rand(2, 3, 8, 8))


def test_wrong_embedding_width_is_refused_up_front(unet):
    pe = torch.randn(1, 7, 16)
    with pytest.raises(ValueError, match="width 16.*cross_attention_dim = 32"):
        DiffusionSampler(unet, DDIMScheduler(**SD_SCHEDULER_CONFIG), N, prompt_embeds=pe)
    with pytest.raises(ValueError, match=r"\(batch, tokens, 32\)"):
        DiffusionSampler(unet, DDIMScheduler(**SD_SCHEDULER_CONFIG), N,
                         prompt_embeds=torch.randn(7, 32))


@pytest.mark.parametrize("n", [10.7, 0, -3, "10", True])
def test_non_integer_or_non_positive_step_counts_are_refused(unet, n):
    sch = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    with pytest.raises((ValueError, TypeError), match="num_inference_steps must be"):
        DiffusionSampler(unet, sch, n, prompt_embeds=tiny_prompt_embeds(0))
    with pytest.raises((ValueError, TypeError), match="num_inference_steps must be"):
        BELMScheduler.from_config(SD_SCHEDULER_CONFIG).set_timesteps(n)
    with pytest.raises((ValueError, TypeError), match="num_inference_steps must be"):
        grid_from_scheduler(sch, n)


def test_long_timestep_lists_are_summarised():
    s = BELMScheduler.from_config(SD_SCHEDULER_CONFIG)
    s.set_timesteps(500)
    with pytest.raises(ValueError, match="not a sampling timestep") as err:
        s.step(rand(1, 4, 8, 8), 2, rand(1, 4, 8, 8))
    msg = str(err.value)
    assert len(msg) < 400, msg
    assert "999" in msg and "1" in msg and "500 timesteps" in msg


def test_method_names_are_accepted_everywhere(unet, embeds, x0):
    sch = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    by_name = sampler(unet, sch, embeds, w=2.0, method="bdia(0.9)")
    by_obj = sampler(unet, sch, embeds, w=2.0, method=bdia(0.9))
    assert by_name.method.name == "bdia(0.9)"
    lat = by_name.invert(x0)
    assert all(torch.equal(a, b) for a, b in
               zip(lat.states, by_obj.invert(x0).states, strict=True))
    res = edit_latents(unet, sch, x0, embeds[0], embeds[0], embeds[1], method="obelm",
                       guidance_scale=2.0, num_inference_steps=N, disable_progress=True)
    assert rel(res.latents, x0) <= 1e-10
    b = BELMScheduler.from_config(SD_SCHEDULER_CONFIG, method="bdia(0.5)")
    assert b.method.name == "bdia(0.5)"
    b.set_method("obelm")
    assert b.method.name == "obelm"
    with pytest.raises(ValueError, match="two network evaluations"):
        b.set_method("edict(0.93)")


# ------------------------------------------------- B: x̂_0 and whole-grid checks
def test_pred_original_sample_matches_ddim_and_the_closed_form():
    """x̂_0 = (x − σ ε)/α at the step's node: against DDIMScheduler (an independent
    implementation, float32) and the closed form in float64."""
    ours = BELMScheduler.from_config(SD_SCHEDULER_CONFIG)
    ref = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    ours.set_timesteps(N)
    ref.set_timesteps(N)
    ac = ours.alphas_cumprod.double()
    x = rand(2, 4, 8, 8, seed=2)
    for i, t in enumerate(ours.timesteps):
        e = rand(2, 4, 8, 8, seed=10 + i)
        out = ours.step(e, t, x)
        theirs = ref.step(e, t, x).pred_original_sample
        a = ac[int(t)]
        closed = (x.double() - (1 - a).sqrt() * e.double()) / a.sqrt()
        assert rel(out.pred_original_sample, closed) <= 1e-6, int(t)
        assert rel(out.pred_original_sample, theirs) <= 1e-5, int(t)
        x = out.prev_sample


def test_inverse_pred_original_sample_matches_the_closed_form():
    """SD config (set_alpha_to_one=False): node 0 is t = 0 with ᾱ_0, so ᾱ = table[t]."""
    inv = BELMInverseScheduler.from_config(SD_SCHEDULER_CONFIG)
    inv.set_timesteps(N)
    ac = DDIMScheduler(**SD_SCHEDULER_CONFIG).alphas_cumprod.double()  # diffusers' table
    x = rand(2, 4, 8, 8, seed=2)
    for i, t in enumerate(inv.timesteps):
        e = rand(2, 4, 8, 8, seed=10 + i)
        out = inv.step(e, t, x)
        a = ac[int(t)]
        closed = (x.double() - (1 - a).sqrt() * e.double()) / a.sqrt()
        assert rel(out.pred_original_sample, closed) <= 1e-6, int(t)
        x = out.prev_sample


def _sato(value: bool, **kw) -> dict:
    return dict(SD_SCHEDULER_CONFIG, set_alpha_to_one=value, **kw)


@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_latent_from_a_grid_differing_only_at_the_bottom_is_refused(unet, embeds, x0, spacing):
    """set_alpha_to_one True vs False: the same top nodes, another final node (leading)
    or an extra bottom node (linspace, where t = 0 is then a node of its own)."""
    made = DDIMScheduler(**_sato(False, timestep_spacing=spacing))
    now = DDIMScheduler(**_sato(True, timestep_spacing=spacing))
    n = N
    g_made, g_now = grid_from_scheduler(made, n), grid_from_scheduler(now, n)
    assert list(g_made.sigma_bar[-2:]) == list(g_now.sigma_bar[-2:])  # same top nodes
    lat = sampler(unet, made, embeds, n=n).invert(x0)
    with pytest.raises(ValueError, match="grid mismatch.*node 0|grid mismatch.*N = "):
        sampler(unet, now, embeds, n=n).sample(lat)
    belm = BELMScheduler.from_config(now.config)
    with pytest.raises(ValueError, match="grid mismatch"):
        belm.load_latent(lat)


def test_scheduler_step_checks_the_whole_grid_of_the_loaded_latent(unet, embeds, x0):
    made = DDIMScheduler(**_sato(False))
    lat = sampler(unet, made, embeds).invert(x0)
    belm = BELMScheduler.from_config(made.config)
    xT = belm.load_latent(lat)
    belm.register_to_config(set_alpha_to_one=True)  # the config changes after loading
    belm.set_timesteps(N)
    with pytest.raises(ValueError, match="grid mismatch.*node 0"):
        belm.step(rand(2, 4, 8, 8), belm.timesteps[0], xT)


# --------------------------------------------------------- the method in the config
@pytest.mark.parametrize("method", ["bdia(0.5)", bdia(0.25), "ddim"])
def test_set_method_is_saved_with_the_config(tmp_path, method):
    s = BELMScheduler.from_config(SD_SCHEDULER_CONFIG)
    s.set_method(method)
    s.save_pretrained(tmp_path)
    back = BELMScheduler.from_pretrained(tmp_path)
    want = method_from_name(method)
    assert back.method.name == want.name
    assert back.config.method == want.name
    assert obelm().name != want.name


def test_set_method_with_a_name_that_does_not_parse_back_warns_and_reload_refuses(tmp_path):
    from lmsolvers import LMMethod

    custom = LMMethod("my-euler", a=obelm().a, b=obelm().b)  # O-BELM's formula, unknown name
    s = BELMScheduler.from_config(SD_SCHEDULER_CONFIG)
    with pytest.warns(UserWarning, match="'my-euler'.*cannot restore it"):
        s.set_method(custom)
    s.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown method 'my-euler'"):
        BELMScheduler.from_pretrained(tmp_path)


# ------------------------------------------- the latent's model-side settings
def test_latent_records_the_model_settings_and_sampling_checks_them(unet, embeds, x0):
    sch = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    s3 = sampler(unet, sch, embeds, w=3.0)
    lat = s3.invert(x0)
    assert dict(lat.context)["guidance_scale"] == 3.0
    assert dict(lat.context)["prediction_type"] == "epsilon"
    with pytest.raises(ValueError, match="guidance_scale: 3.0 when inverted, 2.0 now"):
        sampler(unet, sch, embeds, w=2.0).sample(lat)
    with pytest.raises(ValueError, match="model_dtype: 'float32' when inverted, 'float64' now"):
        sampler(tiny_conditional_unet(dtype=torch.float64), sch, embeds, w=3.0).sample(lat)
    v = DDIMScheduler(**dict(SD_SCHEDULER_CONFIG, prediction_type="v_prediction"))
    with pytest.raises(ValueError, match="prediction_type: 'epsilon' when inverted"):
        sampler(unet, v, embeds, w=3.0).sample(lat)
    # w ≤ 1 is one setting (no guidance), as in the pipelines
    with pytest.warns(RuntimeWarning):
        half = sampler(unet, sch, embeds, w=0.5)
    one = sampler(unet, sch, embeds, w=1.0)
    assert half.context == one.context
    assert rel(half.sample(one.invert(x0)), x0) <= 1e-10
    # an edit under other settings is declared, not slipped through
    assert rel(sampler(unet, sch, embeds, w=2.0).sample(lat.with_context(
        sampler(unet, sch, embeds, w=2.0).context)), x0) > 1e-4


def test_load_latent_refuses_another_method_at_load_time(pipe, embeds, x0):
    lat = sampler(pipe.unet, pipe.scheduler, embeds, method="bdia(0.9)").invert(x0)
    with pytest.raises(ValueError, match="made by method 'bdia\\(0.9\\)', not 'obelm'"):
        pipe.scheduler.load_latent(lat)
    assert pipe.scheduler.loaded_latent is None
    pipe.scheduler.set_method("bdia(0.9)")
    rec = run_pipe(pipe, embeds, pipe.scheduler.load_latent(lat), 1.0)
    assert rel(rec, x0) <= 1e-9


def test_edit_and_interpolation_refuse_latents_of_other_inversions(unet, embeds, x0):
    sch = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    other = sampler(unet, sch, embeds, n=N + 2, w=2.0).invert(x0)
    with pytest.raises(ValueError, match="grid mismatch"):
        edit_latents(unet, sch, x0, embeds[0], embeds[0], embeds[1], guidance_scale=2.0,
                     num_inference_steps=N, latent=other, method="obelm",
                     disable_progress=True)
    from lmsolvers.adapters import slerp_latents

    mine = sampler(unet, sch, embeds, w=2.0).invert(x0)
    with pytest.raises(ValueError, match="cannot be interpolated: grid mismatch"):
        slerp_latents(mine, other, 0.5)


def test_an_image_size_the_unet_cannot_take_is_a_one_line_error():
    """An 8×8 UNet2DModel with three down blocks given 9×9 images: the library's rule
    (multiples of its downsampling factor), not a tensor-size error from inside the UNet."""
    from pathlib import Path

    from diffusers import UNet2DModel

    path = Path(__file__).resolve().parents[1] / "models" / "digits_ddpm"
    s = DiffusionSampler(UNet2DModel.from_pretrained(path), DDIMScheduler(), 4,
                         disable_progress=True)
    for size in (9, 10):
        with pytest.raises(ValueError, match=rf"x0 is {size}×{size}, but this UNet2DModel "
                                             "downsamples by 4: height and width must be "
                                             "multiples of 4 \\(it was trained at sample_size 8"):
            s.invert(torch.zeros(1, 1, size, size))
    assert s.reconstruct(torch.zeros(1, 1, 12, 12)).shape == (1, 1, 12, 12)
