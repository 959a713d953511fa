"""Gradients through ``DiffusionSampler.sample(..., grad=...)`` (docs/design.md §10):
reversible = full autograd for the noise and the prompt embeddings, with real diffusers
models (the trained digits DDPM, tiny Stable-Diffusion and SD3 components), any model dtype,
the model in eval mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel
from lmsolvers.adapters import DiffusionSampler
from lmsolvers.adapters.tiny import (
    SD3_SCHEDULER_CONFIG,
    SD_SCHEDULER_CONFIG,
    tiny_conditional_unet,
    tiny_embeds,
    tiny_prompt_embeds,
    tiny_sd3_transformer,
)

ROOT = Path(__file__).resolve().parents[1]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _grads(sampler, x, leaves, mode):
    xr = x.clone().requires_grad_()
    out = sampler.sample(xr, grad=mode)
    loss = (out.double() * torch.linspace(-1, 1, out.numel(), dtype=torch.float64)
            .view_as(out)).sum() + out.double().pow(2).sum()
    return torch.autograd.grad(loss, [xr] + leaves)


@pytest.mark.parametrize("model_dtype, bound", [(torch.float64, 1e-10), (torch.float32, 1e-6)])
def test_text_conditioned_unet_with_guidance(model_dtype, bound):
    """Noise and prompt-embedding gradients through 12 guided O-BELM steps: with a float64
    model reversible = full to 1e-10; with a float32 model to float32 rounding of a rebuilt
    state (rare flips of a model input; measured 0 here)."""
    unet = tiny_conditional_unet(dtype=model_dtype).eval().requires_grad_(False)
    emb = tiny_prompt_embeds(1, batch=2).to(model_dtype).requires_grad_()
    neg = tiny_prompt_embeds(2, batch=2).to(model_dtype)
    s = DiffusionSampler(unet, DDIMScheduler(**SD_SCHEDULER_CONFIG), 12, method="obelm",
                         prompt_embeds=emb, negative_prompt_embeds=neg, guidance_scale=3.0,
                         disable_progress=True)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    g_full = _grads(s, x, [emb], "full")
    g_rev = _grads(s, x, [emb], "reversible")
    assert all(g.abs().sum() > 0 for g in g_full)
    for a, b in zip(g_rev, g_full, strict=True):
        assert _rel(a, b) <= bound
    assert unet.training is False


def test_trained_digits_model_default_configuration():
    """The library's default configuration (designed grid, damped landing) on the trained
    DDPM: gradient w.r.t. the noise, reversible = full."""
    path = ROOT / "models" / "digits_ddpm"
    unet = UNet2DModel.from_pretrained(path).eval().requires_grad_(False)
    s = DiffusionSampler(unet, DDPMScheduler.from_pretrained(path), 25, disable_progress=True)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    (g_full,) = _grads(s, x, [], "full")
    (g_rev,) = _grads(s, x, [], "reversible")
    assert _rel(g_rev, g_full) <= 1e-6


def test_flow_model_through_the_entry_step():
    """SD3 (flow matching, α = 0 top node): the entry step out of σ = 1 is differentiated
    with the rest; gradients w.r.t. the noise and the pooled projection."""
    model = tiny_sd3_transformer(dtype=torch.float64).eval().requires_grad_(False)
    pe, pp = tiny_embeds(1, batch=1, dtype=torch.float64)
    pp = pp.requires_grad_()
    s = DiffusionSampler(model, FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG), 8,
                         method="obelm", prompt_embeds=pe, pooled_prompt_embeds=pp,
                         disable_progress=True)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    g_full = _grads(s, x, [pp], "full")
    g_rev = _grads(s, x, [pp], "reversible")
    for a, b in zip(g_rev, g_full, strict=True):
        assert a.abs().sum() > 0 and _rel(a, b) <= 1e-10


def test_sampling_without_grad_keeps_no_graph():
    """Plain ``sample`` evaluates the model under no_grad even if embeddings require grad
    (as before): no graph, no memory."""
    unet = tiny_conditional_unet().eval()
    emb = tiny_prompt_embeds(1, batch=1).requires_grad_()
    s = DiffusionSampler(unet, DDIMScheduler(**SD_SCHEDULER_CONFIG), 4, method="obelm",
                         prompt_embeds=emb, disable_progress=True)
    out = s.sample(torch.randn(1, 4, 8, 8))
    assert not out.requires_grad
