"""diffusers noise models as the core's σ̄-ODE, and an x-space sampler for diffusion users.

A diffusion model with ``x_t = α_t x_0 + σ_t n`` and noise predictor ``ε_θ(x, t)`` has
the probability-flow ODE ``dx̄/dσ̄ = ε̄(x̄, σ̄)`` with ``x̄ = x/α``, ``σ̄ = σ/α`` and
``ε̄(x̄, σ̄) = ε_θ(α x̄, t(σ̄))`` (docs/design.md §1).  This module provides

* :func:`grid_from_scheduler` – the :class:`~lmsolvers.Grid` of any diffusers scheduler
  config (β schedule, timestep spacing, ``steps_offset``, final ᾱ), indexing its own
  timestep table (never ``t − T//N``: docs/design.md §8);
* :class:`DiffusersEps` – ``eps(x̄, σ̄)`` for a ``UNet2DModel`` or a
  ``UNet2DConditionModel`` (classifier-free guidance in one batched call), for the
  prediction types ``epsilon``, ``v_prediction`` and ``sample``;
* :class:`DiffusionSampler` – ``sample`` / ``invert`` / ``reconstruct`` in the model's
  x-space, with the solver state and all coefficient arithmetic in ``state_dtype``
  (float64 by default) whatever the model's dtype.

Guidance follows diffusers' pipelines: classifier-free guidance is applied only for
``guidance_scale > 1``; at ``w ≤ 1`` ε is the conditional prediction alone (``w < 1``
warns, since it does *not* interpolate towards the unconditional ε).  So an inversion
by :class:`DiffusionSampler` and a stock pipeline run with the same ``guidance_scale``
evaluate the same ε, bit for bit (docs/design.md §8).

Why a float64 state gives a ~1e-16 round trip through an fp16 model: inversion and
sampling evaluate ε at states that agree to float64 round-off; the model input is
that state cast to the model's dtype, which (barring a vanishingly rare rounding tie)
is the *same* fp16/fp32 tensor in both directions, so the model returns the same ε
and the two linear recursions cancel to float64 precision.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lmsolvers.defaultconfig import default_method as _default_method
from lmsolvers.defaultconfig import default_warp, regime_warp
from lmsolvers.exponential import ExponentialLMMethod
from lmsolvers.grid import Grid, vp_alpha
from lmsolvers.griddesign import GridDesign, design_schedule_grid
from lmsolvers.integrate import invert, sample
from lmsolvers.latent import Latent
from lmsolvers.loggrid import log_nodes, log_schedule_grid
from lmsolvers.registry import method_from_name
from lmsolvers.stochastic import StochasticMethod, stochastic

from .schedules import (
    Schedule,
    _config_of,
    _final_alpha_cumprod,
    alphas_cumprod_from_config,
    check_num_inference_steps,
    grid_from_scheduler,
    is_flow_config,
    schedule_from_scheduler,
)
from .transformers import flux_mu, make_call, model_family, sd3_mu
from .weights import weights_digest

__all__ = [
    "PREDICTION_TYPES",
    "alphas_cumprod_from_config",
    "grid_from_scheduler",
    "to_epsilon",
    "top_prediction",
    "DiffusersEps",
    "DiffusionSampler",
    "resolve_state_dtype",
    "check_num_inference_steps",
    "default_method",
    "default_design",
    "designed_flow_schedule",
]


def default_method(n: int, flow: bool = False) -> Any:
    """The default exact configuration's method for ``n`` steps (``flow``: the finite steps
    of a flow schedule): the designed exponential BELM of
    :func:`lmsolvers.defaultconfig.default_method` (``ebelm3`` below 20 steps, ``ebelm5``
    from 20 — on DDPM-family schedules with half the weight on its landing's defect from 40,
    ``ebelm5(adams, 0.5)``; docs/design.md §12)."""
    return _default_method(n, flow)


def _warp_for(method: Any, n: int, flow: bool = False) -> float:
    """The λ-warp of ``method``'s designed grid (:func:`lmsolvers.defaultconfig.regime_warp`;
    the default's for the default method)."""
    if n >= 2 and method is _default_method(n, flow):
        return default_warp(n, flow)
    return regime_warp(method.k, n, flow)


def default_design(n: int, alphas_cumprod: Sequence[float] | np.ndarray,
                   final_alpha_cumprod: float = 1.0, method: Any = None) -> GridDesign:
    """The default exact configuration on a DDPM-family ᾱ table: ``method`` (``None``:
    :func:`default_method`) on its designed grid of ``n`` steps — for an exponential method
    the λ-warped grid snapped to the table's timesteps
    (:func:`lmsolvers.loggrid.log_schedule_grid`), for a two-step σ̄-form method the grid of
    :func:`lmsolvers.griddesign.design_schedule_grid`.  The one place
    :class:`DiffusionSampler` and the k-diffusion functions
    (:func:`lmsolvers.adapters.kdiffusion.get_sigmas_designed`) take it from."""
    m = default_method(n) if method is None else method_from_name(method)
    if isinstance(m, ExponentialLMMethod):
        return log_schedule_grid(m, n, alphas_cumprod, final_alpha_cumprod=final_alpha_cumprod,
                                 warp=_warp_for(m, n))
    return design_schedule_grid(m, n, alphas_cumprod, final_alpha_cumprod=final_alpha_cumprod)


def designed_flow_schedule(stock: Schedule, method: Any, n: int) -> Schedule:
    """The default configuration's schedule on a flow config: the stock schedule's α = 0 top
    node, least noisy node and noisiest finite node, with the finite nodes between placed on
    ``method``'s λ-warped grid (:func:`lmsolvers.loggrid.log_nodes`; its warp for ``n``
    model calls, the count :data:`~lmsolvers.defaultconfig.FLOW_REGIMES` uses) — the same
    count, so a run makes the stock pipeline's number of model calls; timesteps ``σ·T`` in
    float32 as the stock scheduler's."""
    g = stock.grid
    if not stock.flow or g.N < 2 or g.sigma_bar[0] != 0.0:
        return stock
    T = float(g.timesteps[-1] / (1.0 - g.alphas[-1]))  # σ·T at the noisiest finite node
    sb = np.concatenate([[0.0], log_nodes(g.N, float(g.sigma_bar[-1]), float(g.sigma_bar[1]),
                                          _warp_for(method_from_name(method), n, True))])
    sig = sb / (1.0 + sb)
    t = (sig * T).astype(np.float32).astype(np.float64)
    return dataclasses.replace(stock, grid=Grid(sb, timesteps=t, alphas=1.0 - sig))


#: The model parameterisations the adapter converts to ε.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


# ------------------------------------------------------------------ ε conversion
def to_epsilon(out: torch.Tensor, x: torch.Tensor, alpha: float, sigma: float,
               prediction_type: str) -> torch.Tensor:
    """Convert a model output at ``x = α x̄`` to ε (all tensors in one dtype).

    * ``epsilon``: ``ε = out``;
    * ``v_prediction``: ``v = α ε − σ x̂_0`` gives ``ε = α v + σ x`` (with α² + σ² = 1);
    * ``sample``: ``x̂_0 = out`` gives ``ε = (x − α x̂_0)/σ`` (undefined at σ = 0);
    * ``flow`` (rectified flow, ``x = (1−σ) x_0 + σ ε`` so α = 1 − σ, velocity
      ``v = ε − x̂_0``): ``x = α x̂_0 + σ ε`` with ``x̂_0 = ε − v`` gives ``ε = x + α v``.
    """
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return alpha * out + sigma * x
    if prediction_type == "flow":
        return x + alpha * out
    if prediction_type == "sample":
        if sigma == 0.0:
            raise ValueError(
                "prediction_type 'sample' cannot give ε at σ = 0 (the clean node ᾱ = 1); "
                "use a config with set_alpha_to_one=False"
            )
        return (x - alpha * out) / sigma
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected one of "
                     f"{PREDICTION_TYPES}")


def top_prediction(out: torch.Tensor, x: torch.Tensor,
                   prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̂_0, ε̂)`` from a model output at a top node with ``α = 0`` (σ = 1: zero terminal
    SNR, or flow matching at σ = 1), where ``x = ε`` and ``x̄ = x/α`` is undefined.

    * ``v_prediction``: ``x̂_0 = α x − σ v = −v``, ``ε̂ = σ x + α v = x``;
    * ``sample``: ``x̂_0 = out``, ``ε̂ = x``;
    * ``flow``: ``x̂_0 = x − σ v = x − v``, ``ε̂ = x + α v = x``;
    * ``epsilon``: refused: ``ε̂`` alone does not determine ``x̂_0`` at α = 0.

    The run enters the finite grid by the limit of the DDIM step as ``σ̄_top → ∞``,
    ``x̄_N = x̂_0 + σ̄_N ε̂`` (docs/design.md §9).
    """
    if prediction_type == "v_prediction":
        return -out, x
    if prediction_type == "sample":
        return out, x
    if prediction_type == "flow":
        return x - out, x
    if prediction_type == "epsilon":
        raise ValueError(
            "a top node with ᾱ = 0 (zero terminal SNR) needs prediction_type "
            "'v_prediction' or 'sample': an ε-prediction there does not determine x̂_0")
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected one of "
                     f"{PREDICTION_TYPES}")


def _check_prediction_type(p: str) -> str:
    if p not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {p!r}; lmsolvers handles "
                         f"{', '.join(PREDICTION_TYPES)}")
    return p


def resolve_state_dtype(state_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """``state_dtype`` unless the device has no float64 (MPS): then float32, with a warning."""
    if not state_dtype.is_floating_point:
        raise TypeError(f"state_dtype must be a floating dtype, got {state_dtype}")
    if state_dtype == torch.float64 and torch.device(device).type == "mps":
        warnings.warn("device 'mps' has no float64: the solver state falls back to float32, "
                      "so inversion is exact only to ~1e-6", RuntimeWarning, stacklevel=3)
        return torch.float32
    return state_dtype


def _model_dtype_device(model: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    p = next(model.parameters())
    return p.dtype, p.device


# -------------------------------------------------------------------- ε adapter
class DiffusersEps:
    """``eps(x̄, σ̄) = ε_θ(α x̄, t(σ̄))`` for a diffusers denoiser on a given grid.

    Models (:func:`~lmsolvers.adapters.transformers.model_family`): ``UNet2DModel`` and
    ``UNet2DConditionModel`` (SD 1.x/2.x, DDPM), SDXL UNets (``addition_embed_type =
    "text_time"``), ``SD3Transformer2DModel`` and ``FluxTransformer2DModel``.  The model is
    called exactly as its stock pipeline calls it (:mod:`lmsolvers.adapters.transformers`):
    the same batching ``[uncond, cond]``, the same timestep tensor, guidance combined in the
    model's dtype, so ε at a node equals the pipeline's bit for bit.

    Schedules.  A DDPM-family config (ᾱ table): ``α = 1/sqrt(1 + σ̄²)``; at a grid node
    ``t`` and ``α`` are read from the grid's node table, elsewhere (Runge–Kutta stages) ``t``
    is the fractional timestep interpolating ``log σ̄_t`` of the training table.  A flow
    config (:func:`~lmsolvers.adapters.schedules.is_flow_config`; ``x = (1−σ) x_0 + σ ε``):
    ``α = 1/(1 + σ̄)`` (so ``σ = σ̄/(1 + σ̄)``, ``α = 1 − σ``), and ``t = σ·T`` off the grid as
    FlowMatchEulerDiscreteScheduler does; at a node the node's own float32 timestep, so the
    model sees bitwise the stock scheduler's timestep.  Prediction types: ``epsilon``,
    ``v_prediction``, ``sample``, ``flow`` (velocity ``v = ε − x̂_0``: ``ε = x + α v``),
    converted by :func:`to_epsilon` in the state's dtype; a flow config defaults to ``flow``.

    The α = 0 top node (``top_timestep``: FLUX/SD3 at σ = 1, zero-terminal-SNR VP configs)
    is not a grid node; :meth:`top` gives ``(x̂_0, ε̂)`` there (:func:`top_prediction`).

    Guidance: ``guidance_scale`` is classifier-free guidance for UNets and SD3, applied for
    ``guidance_scale > 1`` only as in the pipelines (``< 1`` warns that it is treated as 1:
    :attr:`effective_guidance_scale`); for FLUX it is the distilled guidance embedding
    (default 3.5, FluxPipeline's) and ``true_cfg_scale`` is classifier-free guidance.
    Evaluation is deterministic: ``model.eval()``, and ``torch.no_grad()`` unless the
    differentiable copy (:meth:`differentiable`) is used.

    Parameters
    ----------
    model:
        The denoiser.
    grid:
        A grid with model timesteps, e.g. from :func:`grid_from_scheduler`.
    scheduler:
        The scheduler (or config) the grid came from: gives the training table (checked
        against the grid), whether it is a flow schedule and the default ``prediction_type``.
    prediction_type, guidance_scale, prompt_embeds, negative_prompt_embeds:
        As in diffusers.  ``negative_prompt_embeds`` is required for guidance.  Embeddings
        are ``(batch, tokens, width)`` (checked against the model's width); batch 1 is
        broadcast over the state's batch.
    unet_kwargs:
        Extra keyword arguments for every UNet call (kept for compatibility: SDXL's
        ``added_cond_kwargs`` pre-batched ``[uncond, cond]``).
    top_timestep:
        The model timestep of an α = 0 top node above the grid, or None.
    conditioning:
        The pipelines' other conditioning arguments, by their names
        (:data:`~lmsolvers.adapters.transformers.CONDITIONING_KWARGS`):
        ``pooled_prompt_embeds``, ``negative_pooled_prompt_embeds``, SDXL's
        ``original_size``/``crops_coords_top_left``/``target_size`` (or ``add_time_ids``) and
        their ``negative_…`` forms, ``aesthetic_score`` (refiner), FLUX's ``true_cfg_scale``,
        ``joint_attention_kwargs``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        grid: Grid,
        scheduler: Any,
        *,
        prediction_type: str | None = None,
        guidance_scale: float | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        unet_kwargs: Mapping[str, Any] | None = None,
        top_timestep: float | None = None,
        **conditioning: Any,
    ) -> None:
        cfg = _config_of(scheduler)
        #: whether the schedule is rectified flow (α = 1 − σ)
        self.flow = is_flow_config(scheduler)
        default_type = "flow" if self.flow else cfg.get("prediction_type", "epsilon")
        self.prediction_type = _check_prediction_type(prediction_type or default_type)
        if self.prediction_type == "flow" and not self.flow:
            raise ValueError(
                "unsupported prediction_type 'flow' for a DDPM-family (ᾱ table) schedule: a "
                "velocity v = ε − x̂_0 belongs to rectified flow (α = 1 − σ); use a "
                "FlowMatchEulerDiscreteScheduler config")
        if self.prediction_type == "v_prediction" and self.flow:
            raise ValueError("prediction_type 'v_prediction' assumes α² + σ² = 1 (VP); a "
                             "flow-matching model predicts the velocity: prediction_type 'flow'")
        self.model = model.eval()
        self.dtype, self.device = _model_dtype_device(model)
        #: "unet", "sdxl", "sd3" or "flux"
        self.family = model_family(model)
        self.grid = grid
        self.top_timestep = None if top_timestep is None else float(top_timestep)
        if guidance_scale is None:
            guidance_scale = 3.5 if self.family == "flux" else 1.0
        kw = dict(conditioning, guidance_scale=guidance_scale, prompt_embeds=prompt_embeds,
                  negative_prompt_embeds=negative_prompt_embeds, unet_kwargs=unet_kwargs)
        self.call = make_call(model, **{k: v for k, v in kw.items() if v is not None})
        #: the guidance scale as given
        self.guidance_scale = self.call.guidance_scale
        #: the classifier-free guidance scale applied (1: none)
        self.effective_guidance_scale = self.call.cfg_scale
        if grid.timesteps is None:
            raise ValueError("the grid has no model timesteps; build it with "
                             "grid_from_scheduler(scheduler, num_inference_steps)")
        self._T = int(cfg.get("num_train_timesteps", 1000))
        if self.flow:
            self._check_flow_grid(grid)
            self._log_sbar = None
        else:
            ac = alphas_cumprod_from_config(scheduler)
            pos = ac > 0  # ᾱ_{T−1} = 0 (zero terminal SNR) is the top node, not in the table
            # the training table for fractional timesteps: log σ̄_t increases with t
            self._log_sbar = 0.5 * np.log((1.0 - ac[pos]) / ac[pos])
            self._t_table = np.arange(ac.size, dtype=np.float64)[pos]
            self._check_grid(grid, ac)
        self._node = {float(s): i for i, s in enumerate(grid.sigma_bar)}
        if self.family != "flux" and self.guidance_scale < 1.0:
            warnings.warn(
                f"guidance_scale = {self.guidance_scale:g} < 1: classifier-free guidance is off, "
                "as in diffusers' pipelines (they guide only for guidance_scale > 1); ε is the "
                "conditional prediction, the same as guidance_scale = 1",
                RuntimeWarning, stacklevel=3)

    def check_state(self, x: Any, name: str) -> None:
        """Refuse a model-space state the model cannot take, naming what it expects.

        ``x`` must be a floating-point tensor of shape ``(B, C, H, W)`` with ``C`` the
        model's latent channels (FLUX: unpacked latents, ``in_channels/4``), and ``B`` must
        match the embeddings' batch (or they have batch 1).
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got "
                            f"{type(x).__name__}" + (f" {x.dtype}" if isinstance(x, torch.Tensor)
                                                     else ""))
        self.call.check_state(x, name)

    @property
    def context(self) -> dict[str, Any]:
        """The model-side settings that change ε's bits, recorded in and checked against a
        latent: the applied guidance (FLUX: the guidance embedding and ``true_cfg_scale``),
        the prediction type, the model's class, a digest of its config, its dtype and a
        digest of its weights (:func:`~lmsolvers.adapters.weights.weights_digest`: another
        model of the same class and config, or an in-place update of a parameter, is
        another ε); not the prompt: editing changes it on purpose."""
        cfg = {k: v for k, v in self.call.config.items() if not str(k).startswith("_")}
        text = json.dumps(cfg, sort_keys=True, default=repr)
        return {
            **self.call.context(),
            "prediction_type": self.prediction_type,
            "model": type(self.model).__name__,
            "model_config": hashlib.blake2b(text.encode(), digest_size=8).hexdigest(),
            "model_dtype": str(self.dtype).removeprefix("torch."),
            "model_weights": weights_digest(self.model),
        }

    def _check_grid(self, grid: Grid, ac: np.ndarray) -> None:
        t = grid.timesteps
        for i in range(grid.N + 1):
            if i == 0 and grid.alphas[0] == 1.0:
                continue  # the clean node ᾱ = 1 lies outside the training table
            if t[i] != int(t[i]):  # a fractional node (custom sigmas): t(σ̄) by the table
                if abs(self.timestep_of(float(grid.sigma_bar[i])) - t[i]) > 1e-6 * ac.size:
                    raise ValueError(f"grid node {i} has timestep {t[i]!r}, not the training "
                                     f"table's timestep of its σ̄; grid/scheduler mismatch")
                continue
            ti = int(t[i])
            if not 0 <= ti < ac.size or ac[ti] == 0.0:
                raise ValueError(f"grid node {i} has timestep {t[i]!r}, not an index of a finite "
                                 f"node in the scheduler's {ac.size}-entry ᾱ table; "
                                 "grid/scheduler mismatch")
            if abs(grid.alphas[i] ** 2 - ac[ti]) > 1e-6 * ac[ti]:
                raise ValueError(
                    f"grid/scheduler mismatch: node {i} (timestep {ti}) has ᾱ = "
                    f"{grid.alphas[i] ** 2:.8g} but the scheduler's table gives {ac[ti]:.8g}; "
                    "build the grid with grid_from_scheduler from this scheduler")

    @staticmethod
    def _check_flow_grid(grid: Grid) -> None:
        a, s = grid.alphas, grid.sigma_bar
        bad = np.flatnonzero(np.abs(a * (1.0 + s) - 1.0) > 1e-12)
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"grid/scheduler mismatch: the scheduler is a flow schedule (α = 1 − σ = "
                f"1/(1 + σ̄)) but node {i} has α = {a[i]!r} at σ̄ = {s[i]!r}; build the grid "
                "with grid_from_scheduler from this scheduler")

    def timestep_of(self, sigma_bar: float) -> float:
        """The model timestep of σ̄ off the grid: flow ``σ·T`` with ``σ = σ̄/(1 + σ̄)``; VP the
        fractional timestep interpolating the training table's ``log σ̄_t``."""
        if sigma_bar <= 0.0:
            return 0.0
        if self.flow:
            return sigma_bar / (1.0 + sigma_bar) * self._T
        return float(np.interp(math.log(sigma_bar), self._log_sbar, self._t_table))

    def node_params(self, sigma_bar: float) -> tuple[float, float, float]:
        """``(t, α, σ)`` at σ̄: from the node table at grid nodes, else from the schedule."""
        i = self._node.get(float(sigma_bar))
        if i is not None:
            alpha = float(self.grid.alphas[i])
            return float(self.grid.timesteps[i]), alpha, alpha * float(self.grid.sigma_bar[i])
        alpha = 1.0 / (1.0 + sigma_bar) if self.flow else float(vp_alpha(sigma_bar))
        return self.timestep_of(sigma_bar), alpha, alpha * sigma_bar

    def _timestep_tensor(self, t: float) -> torch.Tensor:
        # scheduler timesteps: int64 for DDPM-family tables, float32 for flow (σ·T in float32)
        if not self.flow and float(t).is_integer():
            return torch.tensor(int(t), dtype=torch.long, device=self.device)
        return torch.tensor(t, dtype=torch.float32, device=self.device)

    #: whether ε keeps autograd's graph (set on the copy :meth:`differentiable` returns)
    keeps_graph: bool = False

    def differentiable(self) -> DiffusersEps:
        """This ε (same model, conditioning and :attr:`context`) evaluated with autograd's
        graph when grad mode is on: for ``sample(..., grad=...)``.  The model stays in eval
        mode; gradients reach the input, the conditioning tensors that require grad and the
        model's parameters that do."""
        other = copy.copy(self)
        other.keeps_graph = True
        return other

    def model_output(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """The (guided) model output at model-space input ``x`` (model dtype/device), as the
        stock pipeline computes it at timestep ``t``."""
        with torch.set_grad_enabled(self.keeps_graph and torch.is_grad_enabled()):
            return self.call(x, self._timestep_tensor(t))

    def __call__(self, xbar: torch.Tensor, sigma_bar: float) -> torch.Tensor:
        """``ε̄(x̄, σ̄)`` in the dtype and on the device of ``x̄``."""
        t, alpha, sigma = self.node_params(float(sigma_bar))
        x = (xbar * alpha).to(self.device, self.dtype)
        out = self.model_output(x, t)
        sd = xbar.dtype
        return to_epsilon(out.to(sd), x.to(sd), alpha, sigma, self.prediction_type).to(xbar.device)

    def top(self, x_top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x̂_0, ε̂)`` at the α = 0 top node from the model-space state there (pure noise,
        ``x = ε``), in the dtype and on the device of ``x_top``: the model output at
        ``top_timestep`` through :func:`top_prediction`."""
        if self.top_timestep is None:
            raise ValueError("this schedule has no α = 0 top node")
        x = x_top.to(self.device, self.dtype)
        out = self.model_output(x, self.top_timestep)
        sd = x_top.dtype
        x0, e = top_prediction(out.to(sd), x.to(sd), self.prediction_type)
        return x0.to(x_top.device), e.to(x_top.device)


# ------------------------------------------------------------------ the sampler
def _cut(schedule: Schedule, T: int, denoising_start: float | None,
         denoising_end: float | None) -> Schedule:
    """The part of a schedule a pipeline runs with ``denoising_end`` (the base: the steps at
    timesteps ``t ≥ cutoff``) or ``denoising_start`` (the refiner: ``t < cutoff``), with the
    pipelines' ``cutoff = int(round(T − d·T))``.  Node i's step goes from node i to i − 1."""
    grid = schedule.grid
    t = grid.timesteps
    top = schedule.top_timestep
    lo, hi = 0, grid.N
    for d, name in ((denoising_end, "denoising_end"), (denoising_start, "denoising_start")):
        if d is not None and (isinstance(d, bool) or not isinstance(d, numbers.Real)
                              or not 0.0 < float(d) < 1.0):
            raise ValueError(f"{name} must be a fraction in (0, 1), got {d!r}")
    if denoising_end is not None:
        cutoff = int(round(T - float(denoising_end) * T))
        run = [i for i in range(1, grid.N + 1) if t[i] >= cutoff]
        if not run:
            raise ValueError(f"denoising_end = {denoising_end} (cutoff timestep {cutoff}) keeps "
                             "no step of the finite grid")
        lo = min(run) - 1
    if denoising_start is not None:
        cutoff = int(round(T - float(denoising_start) * T))
        run = [i for i in range(1, grid.N + 1) if t[i] < cutoff]
        if not run:
            raise ValueError(f"denoising_start = {denoising_start} (cutoff timestep {cutoff}) "
                             "leaves no step to run")
        hi, top = max(run), None
    if hi - lo < 1:
        raise ValueError(f"denoising_start = {denoising_start} and denoising_end = "
                         f"{denoising_end} leave no step")
    sub = Grid(grid.sigma_bar[lo:hi + 1], timesteps=t[lo:hi + 1],
               alphas=grid.alphas[lo:hi + 1])
    return dataclasses.replace(schedule, grid=sub, top_timestep=top,
                               top_sigma=schedule.top_sigma if top is not None else None)


class DiffusionSampler:
    """Sampling, exact inversion and reconstruction in a diffusion model's x-space.

    ``x = α x̄``: :meth:`sample` maps noise ``x_T`` (or an inverted :class:`Latent`)
    to data ``x_0``; :meth:`invert` maps ``x_0`` to the :class:`Latent` (the k
    noisiest σ̄-ODE states, in ``x̄`` and ``state_dtype``) from which :meth:`sample`
    reproduces ``x_0`` up to ``state_dtype`` round-off, for any model dtype.

    Models: UNets (SD 1.x/2.x, DDPM, SDXL base and refiner), ``SD3Transformer2DModel``,
    ``FluxTransformer2DModel`` (see :class:`DiffusersEps`); conditioning is passed under the
    stock pipelines' argument names, to the constructor or to :meth:`sample`/:meth:`invert`.

    **The α = 0 top node** (flow matching from σ = 1: SD3, FLUX; zero-terminal-SNR VP
    configs; docs/design.md §9): the grid holds the finite nodes 0..N only.
    :meth:`sample` from noise ``x_T`` first makes the entry step ``x̄_N = x̂_0 + σ̄_N ε̂``
    (:meth:`DiffusersEps.top`, the limit of the DDIM/FlowMatchEuler step out of σ̄ = ∞), then
    runs the method on the finite grid; :meth:`invert` and :meth:`sample` of a latent work
    on the finite grid only, so inversion never divides by α_top = 0 and stays exact.

    Parameters
    ----------
    unet:
        The denoiser (any model :class:`DiffusersEps` takes), in any dtype, on any device.
    scheduler:
        Any diffusers scheduler (or config): gives the training ᾱ table or flow sigmas, the
        final node and the prediction type (and, with ``grid="scheduler"``, the spacing).
    num_inference_steps:
        The number of pipeline steps n, a positive integer (may be omitted with
        ``sigmas``/``timesteps``).  A flow schedule from σ = 1 has ``n − 1`` grid steps plus
        the entry step (n model calls, as the pipeline).
    method:
        An explicit core method or its name (:func:`~lmsolvers.method_from_name`:
        ``"obelm"``, ``"bdia(0.5)"``, ``"edict(0.93)"``, ``"belm4"``, …);
        inversion needs a bidirectional explicit one (O-BELM, BDIA, designed BELMs) or EDICT.
        ``None`` (default): :func:`default_method` on the designed grid, or O-BELM on the
        scheduler's grid (``grid="scheduler"``, flow and zero-terminal-SNR configs).
    grid:
        ``None`` (default): the scheduler's own spacing for an explicit ``method``, for flow
        configs, zero-terminal-SNR configs and custom ``sigmas``/``timesteps``; otherwise
        the **default exact configuration**: the grid designed for the default method
        (:func:`lmsolvers.griddesign.design_schedule_grid`) on the scheduler's ᾱ table —
        node N is the last training timestep, nodes are integer timesteps, node 0 is the
        scheduler's final node, and the placement minimises an a-priori error estimate
        subject to non-expanding steps and round-off amplification ``u·R ≤ 1.1e-9`` in
        float64 (``benchmarks/default_config.py``).  ``"designed"``: the designed grid for
        any two-step ``method`` (DDPM-family tables only); ``"scheduler"``: the schedule a
        stock pipeline with this scheduler walks
        (:func:`~lmsolvers.adapters.schedules.schedule_from_scheduler`); or a
        :class:`~lmsolvers.Grid` on the scheduler's table.
    guidance_scale, prompt_embeds, negative_prompt_embeds:
        As in the pipelines (see :class:`DiffusersEps`; ``None``: 1, or FLUX's 3.5).
    state_dtype:
        dtype of the solver state and its arithmetic (float64 unless the device lacks it).
    prediction_type:
        Overrides the scheduler config's (flow configs: ``"flow"``).
    timesteps, sigmas, mu:
        As the pipelines pass them to ``set_timesteps`` (custom lists; ``mu`` for dynamic
        shifting).  A ``FluxTransformer2DModel`` gets FluxPipeline's default
        ``sigmas = linspace(1, 1/n, n)``; with ``use_dynamic_shifting`` and no ``mu``, ``mu``
        is computed per call from the latents' size as the pipeline does (FLUX:
        ``calculate_shift`` of the packed sequence length; SD3: of ``(H/p)(W/p)``).
    denoising_start, denoising_end:
        Run only part of the schedule, as the SDXL base (``denoising_end``: the steps at
        timesteps ``≥ round(T(1 − d))``) and refiner (``denoising_start``: the steps below)
        do; the latent then lives on that part of the grid, and :meth:`sample` from a
        tensor starts at the part's top node (the refiner's input is the base's output).
    eta:
        ``> 0``: sample the reverse SDE with noise level η (DDIM's η) by the method's stochastic
        form (:func:`lmsolvers.stochastic`, docs/design.md §13; the grid is still the one
        designed or chosen for the method); :meth:`sample`/:meth:`invert` then take
        ``seed=``.  Equivalent to ``method=lmsolvers.stochastic(method, eta)``.  Without a
        ``method``, a DDPM-family schedule's designed grid takes O-BELM with the damped
        landing (``"obelm-landing(0.1)"``) as the stochastic base, not the exponential
        default: the exponential designs' stochastic forms sample poorly at η ≥ 0.75.
    conditioning:
        Further pipeline arguments (``pooled_prompt_embeds``, SDXL's ``original_size`` …,
        FLUX's ``true_cfg_scale``; :class:`DiffusersEps`).
    disable_progress:
        Progress bars off (True), on (False) or only on a TTY (None).

    Attributes
    ----------
    design:
        The :class:`~lmsolvers.griddesign.GridDesign` of a designed grid, else ``None``.
    schedule:
        The :class:`~lmsolvers.adapters.schedules.Schedule` (grid and top node) of the last
        resolution (:meth:`schedule_for`).
    amplification:
        Backward (inversion) parasitic growth of the method on the grid
        (:meth:`~lmsolvers.LMMethod.amplification`): how much inversion magnifies
        round-off; the round trip's predicted relative error is
        :func:`~lmsolvers.predicted_roundtrip_error`.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler: Any,
        num_inference_steps: int | None = None,
        method: Any = None,
        guidance_scale: float | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        state_dtype: torch.dtype = torch.float64,
        *,
        grid: Grid | str | None = None,
        prediction_type: str | None = None,
        unet_kwargs: Mapping[str, Any] | None = None,
        disable_progress: bool | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        eta: float = 0.0,
        **conditioning: Any,
    ) -> None:
        self.unet = unet
        self.scheduler = scheduler
        cfg = _config_of(scheduler)
        self.family = model_family(unet)
        self.flow = is_flow_config(scheduler)
        n = None if num_inference_steps is None and (sigmas is not None or timesteps
                                                      is not None) \
            else check_num_inference_steps(num_inference_steps)
        if (self.family == "flux" and sigmas is None and timesteps is None and self.flow
                and not cfg.get("use_flow_sigmas", False)):
            sigmas = np.linspace(1.0, 1 / n, n)  # FluxPipeline's default
        ac = None if self.flow else alphas_cumprod_from_config(scheduler)
        top_zero = ac is not None and ac[-1] == 0.0
        if grid is None:
            explicit = method is not None or top_zero or sigmas is not None \
                or timesteps is not None or denoising_start is not None \
                or denoising_end is not None
            grid = "scheduler" if explicit else "designed"
        if method is None and grid == "designed" and eta and not self.flow:
            # the stochastic forms of the exponential designs sample poorly at η ≥ 0.75 and
            # their inversion can overflow (benchmarks/results/stochastic_digits.md: FD 11.6
            # at η = 1, 20 steps); O-BELM with the damped landing is the measured base
            method = "obelm-landing(0.1)"
        if method is None:
            method = default_method(self._steps(scheduler, n), self.flow) \
                if grid == "designed" else "obelm"
        self.method = method_from_name(method)
        #: the method grids are designed for: a stochastic method's deterministic form
        self._grid_method = self.method.method if isinstance(self.method, StochasticMethod) \
            else self.method
        self.design: GridDesign | None = None
        self._design_flow = False
        self._sched_args = dict(num_inference_steps=n, timesteps=timesteps, sigmas=sigmas)
        self._cut = (denoising_start, denoising_end)
        self._mu = None if mu is None else float(mu)
        self._lazy_mu = self.flow and bool(cfg.get("use_dynamic_shifting", False)) and mu is None
        self._fixed: Schedule | None = None
        self._by_mu: dict[float | None, Schedule] = {}
        if isinstance(grid, Grid):
            if any(d is not None for d in self._cut):
                raise ValueError("denoising_start/denoising_end cut the scheduler's grid; "
                                 "with an explicit Grid pass the part you want")
            self._fixed = Schedule(grid, None, flow=self.flow)
        elif grid == "scheduler":
            if not self._lazy_mu:
                self._fixed = self._schedule(self._mu)
        elif grid == "designed":
            if top_zero:
                raise ValueError(
                    "grid='designed' needs a DDPM-family ᾱ table with a finite top node or a "
                    "flow config; this zero-terminal-SNR config runs on the scheduler's own "
                    "grid (grid='scheduler')")
            if any(d is not None for d in self._cut) or sigmas is not None or \
                    timesteps is not None:
                raise ValueError("grid='designed' places its own nodes: it takes no "
                                 "timesteps/sigmas/denoising_start/denoising_end")
            if self.flow:  # the stock nodes' range, λ-warped inside (per mu if dynamic)
                self._design_flow = True
                if not self._lazy_mu:
                    self._fixed = self._schedule(self._mu)
            else:
                self.design = default_design(n, ac, _final_alpha_cumprod(cfg, ac),
                                             self._grid_method)
                self._fixed = Schedule(self.design.grid, None)
        else:
            raise ValueError(f"grid must be None, 'designed', 'scheduler' or an lmsolvers Grid, "
                             f"got {grid!r}")
        self._conditioning = dict(conditioning, guidance_scale=guidance_scale,
                                  prompt_embeds=prompt_embeds,
                                  negative_prompt_embeds=negative_prompt_embeds,
                                  unet_kwargs=unet_kwargs)
        self._prediction_type = prediction_type
        self._eps_cache: dict[int, DiffusersEps] = {}
        self.schedule: Schedule | None = self._fixed
        # build ε up front when conditioning is given (or none is needed): bad conditioning
        # fails here, not mid-run; otherwise it comes with sample/invert
        self._probe: DiffusersEps | None = None
        given = self._given(dict(conditioning, prompt_embeds=prompt_embeds,
                                 negative_prompt_embeds=negative_prompt_embeds,
                                 unet_kwargs=unet_kwargs))
        if given or self.family == "unet":
            self._probe = self._eps_for(self._fixed) if self._fixed is not None else \
                DiffusersEps(unet, _probe_grid(scheduler), scheduler,
                             prediction_type=prediction_type, **self._given(self._conditioning))
        dev = next(unet.parameters()).device
        self.state_dtype = resolve_state_dtype(state_dtype, dev)
        self.disable_progress = disable_progress
        if eta:
            self.method = stochastic(self.method, eta)

    # ------------------------------------------------------------ the schedule
    @staticmethod
    def _given(kw: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in kw.items() if v is not None}

    def _schedule(self, mu: float | None) -> Schedule:
        sch = schedule_from_scheduler(self.scheduler, **self._sched_args, mu=mu)
        if self._design_flow:
            return designed_flow_schedule(sch, self._grid_method, sch.num_model_calls)
        start, end = self._cut
        if start is not None or end is not None:
            T = int(_config_of(self.scheduler).get("num_train_timesteps", 1000))
            sch = _cut(sch, T, start, end)
        return sch

    @staticmethod
    def _steps(scheduler: Any, n: int | None) -> int:
        """Steps of the default configuration: the pipeline's n (for a flow schedule the
        model calls, the α = 0 entry step included, as :data:`FLOW_REGIMES` counts)."""
        if n is None:
            raise ValueError("the default configuration needs num_inference_steps")
        return n

    def mu_for(self, x: torch.Tensor) -> float | None:
        """The pipeline's ``mu`` for latents ``x`` (``None`` unless the config shifts
        dynamically): the given ``mu``, else ``calculate_shift`` of the image sequence length
        (FLUX: the packed length ``(H/2)(W/2)``; SD3: ``(H/p)(W/p)``)."""
        if not self._lazy_mu:
            return self._mu
        cfg = _config_of(self.scheduler)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if self.family == "flux":
            return flux_mu(cfg, h, w)
        patch = int(_config_of(self.unet).get("patch_size", 1)) if self.family == "sd3" else 1
        return sd3_mu(cfg, h, w, patch)

    def schedule_for(self, x: torch.Tensor) -> Schedule:
        """The schedule (grid and α = 0 top node) a run on latents ``x`` uses — fixed, or, for
        dynamic shifting without ``mu``, the one of ``x``'s size; it becomes
        :attr:`schedule`."""
        if self._fixed is not None:
            return self._fixed
        mu = self.mu_for(x)
        if mu not in self._by_mu:  # one schedule (and one ε) per image size
            self._by_mu[mu] = self._schedule(mu)
        self.schedule = self._by_mu[mu]
        return self.schedule

    def _require_schedule(self) -> Schedule:
        if self.schedule is None:
            raise ValueError(
                "this config shifts its schedule with the image size (use_dynamic_shifting): "
                "pass mu=… (FluxPipeline: calculate_shift of the packed sequence length), or "
                "call sample/invert/schedule_for first")
        return self.schedule

    @property
    def grid(self) -> Grid:
        """The finite grid of :attr:`schedule` (nodes 0..N)."""
        return self._require_schedule().grid

    @property
    def top_timestep(self) -> float | None:
        """Model timestep of the α = 0 node above the grid (entry step), or ``None``."""
        return self._require_schedule().top_timestep

    def _eps_for(self, schedule: Schedule | None,
                 conditioning: Mapping[str, Any] | None = None) -> DiffusersEps:
        if schedule is None:
            schedule = self._require_schedule()
        key = id(schedule.grid)
        if not conditioning:
            cached = self._eps_cache.get(key)
            if cached is not None and cached.grid is schedule.grid:
                return cached
        kw = dict(self._conditioning, **(conditioning or {}))
        with warnings.catch_warnings():
            if not conditioning and self._probe is not None:
                # the constructor's conditioning was checked, and warned about, once already
                warnings.filterwarnings("ignore", message=".*(guidance_scale|true_cfg_scale)",
                                        category=RuntimeWarning)
            eps = DiffusersEps(self.unet, schedule.grid, self.scheduler,
                               prediction_type=self._prediction_type,
                               top_timestep=schedule.top_timestep, **self._given(kw))
        if not conditioning:
            self._eps_cache[key] = eps
        return eps

    @property
    def eps(self) -> DiffusersEps:
        """The ε-function of :attr:`schedule` with the constructor's conditioning."""
        return self._eps_for(None)

    @property
    def num_inference_steps(self) -> int:
        """Number of grid steps N (one network evaluation each for O-BELM; a top node adds
        the entry step: :attr:`num_model_calls`)."""
        return self.grid.N

    @property
    def num_model_calls(self) -> int:
        """Network evaluations of :meth:`sample` from noise with a one-call-per-step method:
        ``N`` plus the entry step at an α = 0 top node."""
        return self._require_schedule().num_model_calls

    @property
    def amplification(self) -> float:
        """Backward parasitic growth of the method on the grid (the class docstring)."""
        return float(self.method.amplification(self.grid, "backward"))

    def _probe_eps(self) -> DiffusersEps:
        if self._probe is None:
            raise ValueError(f"this {type(self.unet).__name__} needs conditioning "
                             "(prompt_embeds, …): pass it to the constructor, or to "
                             "sample/invert")
        return self._probe

    @property
    def context(self) -> dict[str, Any]:
        """Model-side settings recorded in a latent by :meth:`invert` and checked by
        :meth:`sample` (:attr:`DiffusersEps.context`) under the constructor's conditioning."""
        return self._probe_eps().context

    # --------------------------------------------------------------- the runs
    def _state(self, x: torch.Tensor, eps: DiffusersEps, alpha: float, name: str
               ) -> torch.Tensor:
        eps.check_state(x, name)
        return x.to(eps.device, self.state_dtype) / alpha

    def move(self, latent: Latent) -> Latent:
        """``latent`` with its states checked against the model and moved to the model's
        device and ``state_dtype`` (its identity unchanged)."""
        if not isinstance(latent, Latent):
            raise TypeError(f"expected an lmsolvers Latent, got {type(latent).__name__}")
        eps = self._probe_eps()
        for st in latent.states:
            eps.check_state(st, "latent state")
        return latent.with_states([st.to(eps.device, self.state_dtype)
                                   for st in latent.states])

    def _resolve(self, x: torch.Tensor | Latent) -> Schedule:
        if isinstance(x, Latent):
            if self._fixed is None:  # the latent's size fixes the shift
                return self.schedule_for(x.states[-1])
            return self._require_schedule()
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor or an lmsolvers Latent, got {type(x).__name__}")
        return self.schedule_for(x)

    def enter(self, x_T: torch.Tensor, _eps: DiffusersEps | None = None,
              **conditioning: Any) -> torch.Tensor:
        """The entry step out of the α = 0 top node: ``x̄_N = x̂_0 + σ̄_N ε̂`` from the noise
        ``x_T`` (state dtype, σ̄-space).  It is the σ̄_top → ∞ limit of the DDIM step (for flow:
        exactly FlowMatchEuler's step from σ = 1, ``x_N = x_T + (σ_N − 1) v̂``)."""
        schedule = self._resolve(x_T)
        eps = self._eps_for(schedule, conditioning) if _eps is None else _eps
        eps.check_state(x_T, "x_T")
        x0_hat, e_hat = eps.top(x_T.to(eps.device, self.state_dtype))
        return x0_hat + float(schedule.grid.sigma_bar[-1]) * e_hat

    def sample(self, x: torch.Tensor | Latent, *, callback: Any = None,
               grad: str | None = None, params: Sequence[torch.Tensor] | None = None,
               seed: int | Sequence[int] | None = None, **conditioning: Any) -> torch.Tensor:
        """``x_0`` (in ``state_dtype``) from noise ``x_T`` or from an inverted latent.

        From a tensor: with an α = 0 top node the entry step (:meth:`enter`) then the method;
        otherwise ``x`` is the state at the grid's top node (``x_T``, or with
        ``denoising_start`` the base's output).  A latent must come from :meth:`invert` on
        the same grid (every node), with the same method and :attr:`context`; anything else
        raises :class:`~lmsolvers.LatentMismatchError` naming the difference.
        ``conditioning`` (pipeline argument names) overrides the constructor's for this run.

        ``grad="reversible"`` makes the result differentiable in O(k) memory by exact
        reversal, ``grad="full"`` by plain autograd through every step
        (:func:`lmsolvers.sample`, docs/design.md §10): gradients reach ``x`` (or the latent's
        states), conditioning tensors that require grad (prompt embeddings, …) and model
        parameters that do (freeze the model with ``requires_grad_(False)`` when only the
        noise or the embeddings matter).  The model stays in eval mode, in its dtype.

        ``seed``: the noise seed of a stochastic method (``eta > 0``); from a latent it
        defaults to the latent's (another seed is refused: it is another sampler).
        """
        schedule = self._resolve(x)
        eps = self._eps_for(schedule, conditioning)
        if grad is not None:
            eps = eps.differentiable()
        grid = schedule.grid
        if isinstance(x, Latent):
            for st in x.states:
                eps.check_state(st, "latent state")
            start: torch.Tensor | Latent = x.with_states(
                [st.to(eps.device, self.state_dtype) for st in x.states])
        elif schedule.top_timestep is not None:
            start = self.enter(x, eps, **conditioning)
        else:
            start = self._state(x, eps, float(grid.alphas[-1]), "x_T")
        xbar0 = sample(eps, grid, self.method, start, callback=callback,
                       disable=self.disable_progress, context=eps.context, grad=grad,
                       params=params, seed=seed)
        return xbar0 * float(grid.alphas[0])

    def invert(self, x0: torch.Tensor, *, callback: Any = None,
               seed: int | Sequence[int] | None = None, **conditioning: Any) -> Latent:
        """The exact-inversion :class:`Latent` of data ``x_0`` (states ``x̄`` in
        ``state_dtype``) on the finite grid, recording the grid, the method and
        :attr:`context` (and, for a stochastic method, η and ``seed``, which it needs).
        ``conditioning`` overrides the constructor's for this run."""
        schedule = self._resolve(x0)
        eps = self._eps_for(schedule, conditioning)
        return invert(eps, schedule.grid, self.method,
                      self._state(x0, eps, float(schedule.grid.alphas[0]), "x0"),
                      callback=callback, disable=self.disable_progress, context=eps.context,
                      seed=seed)

    def reconstruct(self, x0: torch.Tensor, seed: int | Sequence[int] | None = None,
                    **conditioning: Any) -> torch.Tensor:
        """``sample(invert(x_0))``: equals ``x_0`` up to the state's round-off."""
        return self.sample(self.invert(x0, seed=seed, **conditioning), **conditioning)

    def noise_of(self, latent: Latent) -> torch.Tensor:
        """The model-space noisiest state ``x_T = α_N x̄_N`` of a latent, with ``α_N`` from
        the latent's own grid table (the dtype of its states).  Refused when the schedule has
        an α = 0 top node: ``x_T`` there is not a function of the latent (the entry step is
        a network evaluation, not inverted), and node N's state is not noise."""
        if self.schedule is not None and self.schedule.top_timestep is not None:
            raise ValueError("this schedule enters its grid from an α = 0 top node: the latent's "
                             "noisiest state is node N's, not the noise x_T; resume from the "
                             "latent itself")
        return latent.x_N * float(latent.grid.alphas[-1])


def _probe_grid(scheduler: Any) -> Grid:
    """A two-node flow grid (σ = 0 and 1/2), for checking the conditioning of a dynamically
    shifted flow config before the size-dependent grid is known."""
    T = float(_config_of(scheduler).get("num_train_timesteps", 1000))
    return Grid([0.0, 1.0], timesteps=[0.0, T / 2], alphas=[1.0, 0.5])
