"""Configs and scheduler APIs that diffusers user code relies on (issue 22 §4).

Found by running diffusers' own scheduler tests and stock pipelines against the scheduler
pair: CogView4's flow config (``time_shift_type="linear"`` with dynamic shifting), the
FlowMatchEulerDiscreteScheduler methods user code calls (``set_shift``, ``time_shift``,
``stretch_shift_to_terminal``, ``index_for_timestep``), and a DDIM-family timestep list
ending at t = 0 with ``set_alpha_to_one=False`` (img2img at low strength).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from lmsolvers.adapters import BELMScheduler

#: CogView4's scheduler config (diffusers' CogView4Pipeline)
COGVIEW4 = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True,
                base_shift=0.25, max_shift=0.75, base_image_seq_len=256,
                time_shift_type="linear")


def velocity(x: torch.Tensor, t) -> torch.Tensor:
    """A smooth stand-in for a flow network's output."""
    s = float(t) / 1000.0
    return torch.tanh(0.5 * x) * (0.3 + s) - 0.1 * x


@pytest.mark.parametrize("custom", [False, True])
def test_cogview4_config_is_swapped_in_and_matches_flowmatch_euler(custom):
    """from_config used to probe the schedule with μ = 0, where the linear shift is 0/0."""
    ref = FlowMatchEulerDiscreteScheduler(**COGVIEW4)
    belm = BELMScheduler.from_config(ref.config, method="ddim")
    assert belm.is_flow and belm.config.time_shift_type == "linear"
    mu, n = 1.3, 8
    if custom:  # what CogView4Pipeline passes
        ts = np.linspace(1000, 1.0, n)
        kw = dict(timesteps=ts, sigmas=ts / 1000, mu=mu)
    else:
        kw = dict(mu=mu)
    ref.set_timesteps(n if not custom else None, **kw)
    belm.set_timesteps(n if not custom else None, **kw)
    assert torch.equal(belm.sigmas, ref.sigmas)
    assert torch.equal(belm.timesteps, ref.timesteps.to(belm.timesteps.dtype))
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    a = b = x
    for t in ref.timesteps:
        a = ref.step(velocity(a, t), t, a).prev_sample
    for t in belm.timesteps:
        b = belm.step(velocity(b, t), t, b).prev_sample
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_flowmatch_euler_methods_user_code_calls():
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0, shift_terminal=0.1,
                                          time_shift_type="exponential")
    belm = BELMScheduler.from_config(ref.config)
    assert belm.shift == ref.shift == 3.0
    t = torch.linspace(0.95, 0.2, 6)
    torch.testing.assert_close(belm.time_shift(0.8, 1.0, t), ref.time_shift(0.8, 1.0, t),
                               rtol=0, atol=0)
    torch.testing.assert_close(belm.stretch_shift_to_terminal(t),
                               ref.stretch_shift_to_terminal(t), rtol=0, atol=0)
    for sched in (ref, belm):
        sched.set_shift(1.7)
        sched.set_timesteps(9)
    assert belm.shift == 1.7 and belm.config.shift == 3.0  # as diffusers: config unchanged
    assert torch.equal(belm.sigmas, ref.sigmas)
    for i in (0, 4, 8):
        assert belm.index_for_timestep(belm.timesteps[i]) == ref.index_for_timestep(
            ref.timesteps[i]) == i
    doubled = torch.tensor([900.0, 500.0, 500.0, 100.0])
    assert belm.index_for_timestep(500.0, doubled) == ref.index_for_timestep(500.0, doubled)
    with pytest.raises(ValueError, match="not in the schedule"):
        belm.index_for_timestep(123.0)
    ddpm_family = BELMScheduler()
    with pytest.raises(AttributeError, match="flow-matching"):
        ddpm_family.set_shift(2.0)


def test_timesteps_ending_at_zero_onto_alpha_0_keep_their_last_step(embeds):
    """set_alpha_to_one=False with 'leading' spacing and no offset: timesteps 900 … 0, the
    last step onto ᾱ_0 is a zero step.  The scheduler keeps it (as DDIM does), so
    img2img at 10 steps and strength 0.1 starts at timesteps[9]."""
    from diffusers import StableDiffusionImg2ImgPipeline
    from lmsolvers.adapters.tiny import tiny_sd_pipeline

    cfg = dict(set_alpha_to_one=False, steps_offset=0, timestep_spacing="leading",
               clip_sample=False)
    ref = DDIMScheduler(**cfg)
    belm = BELMScheduler.from_config(ref.config, method="ddim")
    ref.set_timesteps(10)
    belm.set_timesteps(10)
    assert torch.equal(belm.timesteps, ref.timesteps) and belm.timesteps[-1] == 0
    assert belm.num_inference_steps == 10
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    belm.set_begin_index(9)
    out = belm.step(torch.randn_like(x), 0, x)
    assert torch.equal(out.prev_sample, x)  # the zero step leaves the state as it is

    base = tiny_sd_pipeline()
    pipe = StableDiffusionImg2ImgPipeline(**base.components)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    kw = dict(prompt_embeds=embeds[0][:1], negative_prompt_embeds=embeds[1][:1], image=image,
              strength=0.1, num_inference_steps=10, guidance_scale=1.0, output_type="latent")
    results = []
    for sched in (BELMScheduler.from_config(ref.config, method="ddim"),
                  DDIMScheduler.from_config(ref.config)):
        pipe.scheduler = sched
        results.append(pipe(**kw, generator=torch.Generator().manual_seed(0)).images)
        if isinstance(sched, BELMScheduler):
            assert sched.begin_index == 9 and sched.step_index == 10
    torch.testing.assert_close(results[0], results[1], rtol=0,
                               atol=1e-5 * float(results[1].abs().max()))
