"""Editing and interpolation by exact inversion (the BELM paper's use).

Editing: image latents ``x_0`` → exact inversion under a *source* prompt → the
:class:`~lmsolvers.Latent` → sampling under a *target* prompt.  With the source prompt
(and the same guidance) the sampling is the inverse of the inversion, so the input
comes back to round-off; ``frozen_fraction`` keeps the first (noisiest) fraction of the
sampling steps on the source prompt, i.e. on the inverted trajectory itself, which
preserves more of the source's layout.

Interpolation: invert two images and sample from the spherical interpolation
(slerp, per state of the k-state latent) of their latents; the end points
reproduce the inputs exactly.

VAE: :func:`encode_image` (deterministic by default: the mean of the posterior, so the
same image always gives the same latents) and :func:`decode_latents`, with the
config's ``scaling_factor``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmsolvers.grid import Grid
from lmsolvers.integrate import sample
from lmsolvers.latent import Latent, LatentMismatchError, check_latent
from lmsolvers.stochastic import bind_seed, noise_identity_of

from .diffusers import DiffusionSampler

__all__ = [
    "EditResult",
    "frozen_threshold",
    "encode_image",
    "decode_latents",
    "edit_latents",
    "edit_image",
    "slerp_latents",
    "interpolate",
]


def encode_image(vae: torch.nn.Module, image: torch.Tensor, *, deterministic: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Latents ``z = scaling_factor · (E(image) − shift_factor)`` of images in [−1, 1], shape
    (B, 3, H, W), as the pipelines scale them (``shift_factor``: SD3/FLUX VAEs; 0 otherwise).

    ``deterministic=True`` takes the posterior mean (reproducible; what exact inversion
    wants), otherwise a sample drawn with ``generator``.
    """
    p = next(vae.parameters())
    with torch.no_grad():
        dist = vae.encode(image.to(p.device, p.dtype)).latent_dist
        z = dist.mean if deterministic else dist.sample(generator)
    return (z - _shift(vae)) * float(getattr(vae.config, "scaling_factor", 1.0))


def _shift(vae: torch.nn.Module) -> float:
    return float(getattr(vae.config, "shift_factor", None) or 0.0)


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Images ``D(z / scaling_factor + shift_factor)`` in the VAE's dtype (roughly in
    [−1, 1])."""
    p = next(vae.parameters())
    z = latents.to(p.device, p.dtype) / float(getattr(vae.config, "scaling_factor", 1.0)) \
        + _shift(vae)
    with torch.no_grad():
        return vae.decode(z).sample


@dataclass
class EditResult:
    """``latents``: the edited ``x_0`` (state dtype); ``latent``: the source inversion;
    ``image``: the decoded edit (only from :func:`edit_image`)."""

    latents: torch.Tensor
    latent: Latent
    image: torch.Tensor | None = None


def frozen_threshold(grid: Grid, frozen_fraction: float) -> float:
    """The σ̄ from which on sampling stays on the source prompt in an edit: with
    ``n_f = round(frozen_fraction · N)`` the ε at node ``m`` is source-prompted iff
    ``m ≥ N − n_f + 1``, i.e. iff ``σ̄ ≥ σ̄_{N − n_f + 1}`` (``inf`` for ``n_f = 0``: no node)."""
    if not 0.0 <= frozen_fraction <= 1.0:
        raise ValueError(f"frozen_fraction must lie in [0, 1], got {frozen_fraction}")
    n_frozen = round(frozen_fraction * grid.N)
    return math.inf if n_frozen == 0 else float(grid.sigma_bar[grid.N - n_frozen + 1])


def edit_latents(
    unet: torch.nn.Module,
    scheduler: Any,
    latents: torch.Tensor,
    source_prompt_embeds: torch.Tensor,
    target_prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None = None,
    *,
    num_inference_steps: int = 50,
    method: Any = None,
    guidance_scale: float | None = None,
    source_guidance_scale: float | None = None,
    frozen_fraction: float = 0.0,
    latent: Latent | None = None,
    state_dtype: torch.dtype = torch.float64,
    disable_progress: bool | None = None,
    source_pooled_prompt_embeds: torch.Tensor | None = None,
    target_pooled_prompt_embeds: torch.Tensor | None = None,
    seed: int | Sequence[int] | None = None,
    **conditioning: Any,
) -> EditResult:
    """Edit image latents: invert under the source prompt, regenerate under the target.

    With ``n_f = round(frozen_fraction · N)``, sampling evaluates the source-prompt ε at
    nodes ``m > N − n_f`` and the target-prompt ε below: ``frozen_fraction = 1`` (or a
    target equal to the source with equal guidance) gives back ``latents`` exactly.
    ``source_guidance_scale`` (default ``guidance_scale``) guides the inversion and the
    frozen steps.  Pass ``latent`` to reuse an inversion (several edits of one image); it
    must come from the source sampler (same grid, method and model settings:
    :class:`~lmsolvers.LatentMismatchError` otherwise).  ``method`` is a core method or its
    name (``"obelm"``, ``"bdia(0.5)"``, …).  Sampling runs under the target's settings on
    purpose, declared with ``latent.with_context(...)``.

    SDXL, SD3 and FLUX: ``source_pooled_prompt_embeds`` / ``target_pooled_prompt_embeds`` are
    the prompts' pooled embeddings; ``conditioning`` takes the pipelines' other arguments
    (``negative_pooled_prompt_embeds``, SDXL's ``original_size``…, FLUX's ``true_cfg_scale``,
    schedule arguments ``sigmas``/``mu``; :class:`~lmsolvers.adapters.DiffusionSampler`) for
    both prompts.  (For FLUX ``guidance_scale`` is the distilled-guidance embedding.)
    A stochastic ``method`` (``"…+eta(η)"``, or ``eta=`` in ``conditioning``) inverts and
    regenerates with the noise of ``seed`` (default: ``latent``'s).
    """
    if not 0.0 <= frozen_fraction <= 1.0:
        raise ValueError(f"frozen_fraction must lie in [0, 1], got {frozen_fraction}")
    sgs = guidance_scale if source_guidance_scale is None else source_guidance_scale
    common = dict(conditioning, method=method, negative_prompt_embeds=negative_prompt_embeds,
                  state_dtype=state_dtype, disable_progress=disable_progress)
    src = DiffusionSampler(unet, scheduler, num_inference_steps, guidance_scale=sgs,
                           prompt_embeds=source_prompt_embeds,
                           pooled_prompt_embeds=source_pooled_prompt_embeds, **common)
    tgt = DiffusionSampler(unet, scheduler, num_inference_steps, guidance_scale=guidance_scale,
                           prompt_embeds=target_prompt_embeds,
                           pooled_prompt_embeds=target_pooled_prompt_embeds, **common)
    src.schedule_for(latents)  # size-dependent schedules (FLUX's mu) resolve on the latents
    grid = tgt.schedule_for(latents).grid
    if latent is None:
        latent = src.invert(latents, seed=seed)
    else:  # the source inversion of these latents, not any latent
        check_latent(latent, src.grid, src.method.key, src.method.name, src.context,
                     src.method.k, noise=noise_identity_of(bind_seed(src.method, seed, latent)))
    threshold = frozen_threshold(grid, frozen_fraction)

    def eps(xbar: torch.Tensor, s: float) -> torch.Tensor:
        return src.eps(xbar, s) if s >= threshold else tgt.eps(xbar, s)

    start = tgt.move(latent).with_context(tgt.context)  # an edit: other settings on purpose
    xbar0 = sample(eps, grid, tgt.method, start, disable=disable_progress, context=tgt.context,
                   seed=seed)
    return EditResult(latents=xbar0 * float(grid.alphas[0]), latent=latent)


def edit_image(
    vae: torch.nn.Module,
    unet: torch.nn.Module,
    scheduler: Any,
    image: torch.Tensor,
    source_prompt_embeds: torch.Tensor,
    target_prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None = None,
    *,
    deterministic_encoding: bool = True,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> EditResult:
    """:func:`encode_image` → :func:`edit_latents` (``kwargs``) → :func:`decode_latents`."""
    z = encode_image(vae, image, deterministic=deterministic_encoding, generator=generator)
    res = edit_latents(unet, scheduler, z, source_prompt_embeds, target_prompt_embeds,
                       negative_prompt_embeds, **kwargs)
    res.image = decode_latents(vae, res.latents)
    return res


def _slerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    if w == 0.0:
        return a.clone()
    if w == 1.0:
        return b.clone()
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    s = torch.sin(theta)
    lin = s.abs() < 1e-6  # (anti)parallel: fall back to linear interpolation
    ca = torch.where(lin, torch.full_like(s, 1 - w), torch.sin((1 - w) * theta) / s)
    cb = torch.where(lin, torch.full_like(s, w), torch.sin(w * theta) / s)
    shape = (-1,) + (1,) * (a.dim() - 1)
    return ca.view(shape) * a + cb.view(shape) * b


def slerp_latents(a: Latent, b: Latent, w: float) -> Latent:
    """Spherical interpolation of two latents, state by state (``w = 0`` → a, ``1`` → b).

    Both must come from the same grid, method and model settings (``ValueError`` naming
    the difference otherwise); the result carries ``a``'s identity.
    """
    try:
        check_latent(b, a.grid, a.method_key, a.method, dict(a.context), a.k)
    except LatentMismatchError as exc:
        raise LatentMismatchError(f"latents from different inversions cannot be interpolated: "
                                  f"{exc}") from None
    if a.states[0].shape != b.states[0].shape:
        raise ValueError(f"latents of shapes {tuple(a.states[0].shape)} and "
                         f"{tuple(b.states[0].shape)} cannot be interpolated")
    states = zip(a.states, b.states, strict=True)
    return a.with_states([_slerp(sa, sb, float(w)) for sa, sb in states])


def interpolate(sampler: DiffusionSampler, x0_a: torch.Tensor, x0_b: torch.Tensor,
                weights: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> torch.Tensor:
    """Invert ``x0_a`` and ``x0_b`` and sample from their slerped latents.

    Returns a tensor of shape ``(len(weights), *x0_a.shape)``; the entries at weight 0
    and 1 reproduce ``x0_a`` and ``x0_b`` up to round-off.
    """
    la, lb = sampler.invert(x0_a), sampler.invert(x0_b)
    # a slerped latent is the inversion of nothing: declare that it is sampled under the
    # sampler's settings (those both inversions used)
    return torch.stack([sampler.sample(slerp_latents(la, lb, w).with_context(sampler.context))
                        for w in weights])
