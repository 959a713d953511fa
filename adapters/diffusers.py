"""diffusers noise models as the core's σ̄-ODE, and an x-space sampler for diffusion users.

A diffusion model with ``x_t = α_t x_0 + σ_t n`` and noise predictor ``ε_θ(x, t)`` has
the probability-flow ODE ``dx̄/dσ̄ = ε̄(x̄, σ̄)`` with ``x̄ = x/α``, ``σ̄ = σ/α`` and
``ε̄(x̄, σ̄) = ε_θ(α x̄, t(σ̄))`` (shared/DESIGN.md §1).  This module provides

* :func:`grid_from_scheduler` – the :class:`~lmsolvers.Grid` of any diffusers scheduler
  config (β schedule, timestep spacing, ``steps_offset``, final ᾱ), indexing its own
  timestep table (never ``t − T//N``: DESIGN.md §6);
* :class:`DiffusersEps` – ``eps(x̄, σ̄)`` for a ``UNet2DModel`` or a
  ``UNet2DConditionModel`` (classifier-free guidance in one batched call), for the
  prediction types ``epsilon``, ``v_prediction`` and ``sample``;
* :class:`DiffusionSampler` – ``sample`` / ``invert`` / ``reconstruct`` in the model's
  x-space, with the solver state and all coefficient arithmetic in ``state_dtype``
  (float64 by default) whatever the model's dtype.

Why a float64 state gives a ~1e-16 round trip through an fp16 model: inversion and
sampling evaluate ε at states that agree to float64 round-off; the model input is
that state cast to the model's dtype, which (barring a vanishingly rare rounding tie)
is the *same* fp16/fp32 tensor in both directions, so the model returns the same ε
and the two linear recursions cancel to float64 precision.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lmsolvers.families import obelm
from lmsolvers.grid import (
    Grid,
    alphas_cumprod_from_betas,
    linear_betas,
    scaled_linear_betas,
    spaced_timesteps,
    vp_alpha,
)
from lmsolvers.integrate import Latent, invert, sample

__all__ = [
    "PREDICTION_TYPES",
    "alphas_cumprod_from_config",
    "grid_from_scheduler",
    "to_epsilon",
    "DiffusersEps",
    "DiffusionSampler",
    "resolve_state_dtype",
]

#: The model parameterisations the adapter converts to ε.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


# --------------------------------------------------------------------- schedules
def _config_of(scheduler: Any) -> Mapping[str, Any]:
    if isinstance(scheduler, Mapping):
        return scheduler
    cfg = getattr(scheduler, "config", None)
    if cfg is None:
        raise TypeError(
            f"expected a diffusers scheduler or its config, got {type(scheduler).__name__}"
        )
    return cfg


def _cosine_betas(T: int, max_beta: float = 0.999) -> np.ndarray:
    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)])


def _rescale_zero_terminal_snr(ac: np.ndarray) -> np.ndarray:
    s = np.sqrt(ac)
    s0, sT = s[0], s[-1]
    s = (s - sT) * (s0 / (s0 - sT))
    out = s**2
    out[-1] = 2.0**-24  # as diffusers does: σ̄_T must stay finite
    return out


def alphas_cumprod_from_config(scheduler: Any) -> np.ndarray:
    """The training table ``ᾱ_t``, t = 0..T−1, in float64.

    Computed from the config (``trained_betas`` or ``beta_schedule`` in linear,
    scaled_linear, squaredcos_cap_v2; ``rescale_betas_zero_snr``) so that every
    scheduler class built from one config yields the same grid bit for bit.  If the
    scheduler object carries an ``alphas_cumprod`` that disagrees with the config by
    more than float32 round-off (a customised table), the scheduler's own table wins.
    """
    cfg = _config_of(scheduler)
    T = int(cfg.get("num_train_timesteps", 1000))
    trained = cfg.get("trained_betas", None)
    schedule = cfg.get("beta_schedule", "linear")
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    if trained is not None:
        betas = np.asarray(trained, dtype=np.float64)
    elif schedule == "linear":
        betas = linear_betas(T, b0, b1)
    elif schedule == "scaled_linear":
        betas = scaled_linear_betas(T, b0, b1)
    elif schedule == "squaredcos_cap_v2":
        betas = _cosine_betas(T)
    else:
        betas = None
    own = getattr(scheduler, "alphas_cumprod", None) if not isinstance(scheduler, Mapping) \
        else None
    own = None if own is None else np.asarray(torch.as_tensor(own).double().cpu().numpy())
    if betas is None:
        if own is None:
            raise ValueError(
                f"unsupported beta_schedule {schedule!r} and the scheduler has no "
                "alphas_cumprod table to read instead"
            )
        return own.copy()
    ac = alphas_cumprod_from_betas(betas)
    if cfg.get("rescale_betas_zero_snr", False):
        ac = _rescale_zero_terminal_snr(ac)
    if own is not None and (own.shape != ac.shape or not np.allclose(own, ac, rtol=1e-4,
                                                                       atol=1e-7)):
        return own.copy()
    return ac


def _final_alpha_cumprod(cfg: Mapping[str, Any], ac: np.ndarray) -> float:
    # set_alpha_to_one wins when present (diffusers carries it along from_config chains,
    # and does not propagate defaults such as DPM's final_sigmas_type='zero')
    sato = cfg.get("set_alpha_to_one", None)
    if sato is None:
        fst = cfg.get("final_sigmas_type", None)
        sato = fst is None or fst == "zero"
    return 1.0 if sato else float(ac[0])


def grid_from_scheduler(scheduler: Any, num_inference_steps: int) -> Grid:
    """The σ̄ grid a diffusers scheduler config defines for ``num_inference_steps``.

    Nodes are ``σ̄_t = sqrt((1 − ᾱ_t)/ᾱ_t)`` at the sampling timesteps of the config's
    ``timestep_spacing`` ('leading' (+ ``steps_offset``), 'trailing', 'linspace';
    default 'leading' as DDIM/PNDM), plus the final node: ``ᾱ = 1`` (σ̄_0 = 0) when
    ``set_alpha_to_one`` (DDIM default; it wins when present), or, without it,
    ``final_sigmas_type='zero'`` (DPM-Solver, Euler), else ``ᾱ_0``.  The grid keeps
    every node's model timestep, so the "previous timestep" is read from the table,
    never derived as ``t − T//N``.
    A sampling timestep 0 followed by a final ``ᾱ_0`` would be a zero step (diffusers
    runs it as a no-op): the grid omits it and then has ``num_inference_steps − 1`` steps.

    ``scheduler`` may be any diffusers scheduler (DDIM, PNDM, DPM-Solver, Euler, …),
    a :class:`~lmsolvers.adapters.BELMScheduler`, or a config mapping.
    """
    cfg = _config_of(scheduler)
    ac = alphas_cumprod_from_config(scheduler)
    T = ac.size
    if int(cfg.get("num_train_timesteps", T)) != T:
        raise ValueError(
            f"config says num_train_timesteps = {cfg.get('num_train_timesteps')} but its "
            f"ᾱ table has {T} entries"
        )
    n = int(num_inference_steps)
    ts = spaced_timesteps(n, T, spacing=cfg.get("timestep_spacing", "leading") or "leading",
                          steps_offset=int(cfg.get("steps_offset", 0) or 0))
    if ts.max() >= T or ts.min() < 0:
        raise ValueError(f"timesteps {ts.tolist()} fall outside [0, {T - 1}] (steps_offset "
                         f"{cfg.get('steps_offset')} too large for {n} steps?)")
    final = _final_alpha_cumprod(cfg, ac)
    if ts.min() == 0 and final == ac[0]:
        # e.g. 'linspace' ends at t = 0 and set_alpha_to_one=False targets ᾱ_0 again:
        # diffusers' last step is then a zero step (a no-op); the grid omits it, so it
        # has num_inference_steps − 1 steps and node 0 is t = 0 itself.
        ts = ts[ts != 0]
        if ts.size == 0:
            raise ValueError("a single sampling step at t = 0 onto ᾱ_0 is a zero step")
    return Grid.from_alphas_cumprod(ac, ts, final_alpha_cumprod=final, final_timestep=0.0)


# ------------------------------------------------------------------ ε conversion
def to_epsilon(out: torch.Tensor, x: torch.Tensor, alpha: float, sigma: float,
               prediction_type: str) -> torch.Tensor:
    """Convert a model output at ``x = α x̄`` to ε (all tensors in one dtype).

    * ``epsilon``: ``ε = out``;
    * ``v_prediction``: ``v = α ε − σ x̂_0`` gives ``ε = α v + σ x`` (with α² + σ² = 1);
    * ``sample``: ``x̂_0 = out`` gives ``ε = (x − α x̂_0)/σ`` (undefined at σ = 0).
    """
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return alpha * out + sigma * x
    if prediction_type == "sample":
        if sigma == 0.0:
            raise ValueError(
                "prediction_type 'sample' cannot give ε at σ = 0 (the clean node ᾱ = 1); "
                "use a config with set_alpha_to_one=False"
            )
        return (x - alpha * out) / sigma
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
    """``eps(x̄, σ̄) = ε_θ(α x̄, t(σ̄))`` for a diffusers UNet on a given grid.

    At a grid node, ``t`` and ``α`` are read from the grid's node table; at any other
    σ̄ (e.g. Runge–Kutta starter stages) ``α = 1/sqrt(1 + σ̄²)`` and ``t`` is the
    fractional timestep interpolating ``log σ̄_t`` of the training table.

    The model input ``α x̄`` is cast to the model's dtype and device; the output is
    converted to ε (:func:`to_epsilon`) in the state's dtype and returned on the
    state's device.  With ``prompt_embeds`` the model is called as a
    ``UNet2DConditionModel``; with ``guidance_scale = w ≠ 1`` in one batched call
    on ``[uncond, cond]`` and ``ε = ε_u + w (ε_c − ε_u)`` (combined in the model's
    dtype, exactly as diffusers' pipelines do).  Evaluation is deterministic:
    ``model.eval()`` and ``torch.no_grad()``.

    Parameters
    ----------
    model:
        ``UNet2DModel`` or ``UNet2DConditionModel`` (anything called as
        ``model(x, t, [encoder_hidden_states=…]).sample``).
    grid:
        A grid with model timesteps, e.g. from :func:`grid_from_scheduler`.
    scheduler:
        The scheduler (or config) the grid came from: gives the training ᾱ table
        (checked against the grid) and the default ``prediction_type``.
    prediction_type, guidance_scale, prompt_embeds, negative_prompt_embeds:
        As in diffusers.  ``negative_prompt_embeds`` (the embedding of the negative or
        empty prompt) is required when ``guidance_scale ≠ 1``.  Embeddings with batch
        1 are broadcast over the state's batch.
    unet_kwargs:
        Extra keyword arguments for every model call (e.g. ``added_cond_kwargs``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        grid: Grid,
        scheduler: Any,
        *,
        prediction_type: str | None = None,
        guidance_scale: float = 1.0,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        unet_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        cfg = _config_of(scheduler)
        self.prediction_type = _check_prediction_type(
            prediction_type or cfg.get("prediction_type", "epsilon"))
        self.model = model.eval()
        self.dtype, self.device = _model_dtype_device(model)
        self.grid = grid
        self.guidance_scale = float(guidance_scale)
        self.unet_kwargs = dict(unet_kwargs or {})
        if grid.timesteps is None:
            raise ValueError("the grid has no model timesteps; build it with "
                             "grid_from_scheduler(scheduler, num_inference_steps)")
        ac = alphas_cumprod_from_config(scheduler)
        self._check_grid(grid, ac)
        # the training table for fractional timesteps: log σ̄_t increases with t
        self._log_sbar = 0.5 * np.log((1.0 - ac) / ac)
        self._node = {float(s): i for i, s in enumerate(grid.sigma_bar)}
        if prompt_embeds is None:
            if negative_prompt_embeds is not None or self.guidance_scale != 1.0:
                raise ValueError("classifier-free guidance (guidance_scale ≠ 1 or negative "
                                 "embeddings) needs prompt_embeds")
            self._cond = None
        else:
            if self.guidance_scale != 1.0 and negative_prompt_embeds is None:
                raise ValueError(
                    f"guidance_scale = {self.guidance_scale:g} needs negative_prompt_embeds "
                    "(the text encoder's embedding of the negative or empty prompt)")
            self._cond = prompt_embeds.to(self.device, self.dtype)
            self._uncond = None if negative_prompt_embeds is None or self.guidance_scale == 1.0 \
                else negative_prompt_embeds.to(self.device, self.dtype)
            if self._uncond is not None and self._uncond.shape[1:] != self._cond.shape[1:]:
                raise ValueError(f"negative_prompt_embeds {tuple(self._uncond.shape)} and "
                                 f"prompt_embeds {tuple(self._cond.shape)} differ in shape")

    @staticmethod
    def _check_grid(grid: Grid, ac: np.ndarray) -> None:
        t = grid.timesteps
        for i in range(grid.N + 1):
            if i == 0 and grid.alphas[0] == 1.0:
                continue  # the clean node ᾱ = 1 lies outside the training table
            ti = int(t[i])
            if ti != t[i] or not 0 <= ti < ac.size:
                raise ValueError(f"grid node {i} has timestep {t[i]!r}, not an index into the "
                                 f"scheduler's {ac.size}-entry ᾱ table; grid/scheduler mismatch")
            if abs(grid.alphas[i] ** 2 - ac[ti]) > 1e-6 * ac[ti]:
                raise ValueError(
                    f"grid/scheduler mismatch: node {i} (timestep {ti}) has ᾱ = "
                    f"{grid.alphas[i] ** 2:.8g} but the scheduler's table gives {ac[ti]:.8g}; "
                    "build the grid with grid_from_scheduler from this scheduler")

    def timestep_of(self, sigma_bar: float) -> float:
        """The (fractional) model timestep of σ̄ by interpolating the training table."""
        if sigma_bar <= 0.0:
            return 0.0
        return float(np.interp(math.log(sigma_bar), self._log_sbar,
                               np.arange(self._log_sbar.size, dtype=np.float64)))

    def node_params(self, sigma_bar: float) -> tuple[float, float, float]:
        """``(t, α, σ)`` at σ̄: from the node table at grid nodes, else interpolated."""
        i = self._node.get(float(sigma_bar))
        if i is not None:
            alpha = float(self.grid.alphas[i])
            return float(self.grid.timesteps[i]), alpha, alpha * float(self.grid.sigma_bar[i])
        alpha = float(vp_alpha(sigma_bar))
        return self.timestep_of(sigma_bar), alpha, alpha * sigma_bar

    def _timestep_tensor(self, t: float) -> torch.Tensor:
        if float(t).is_integer():
            return torch.tensor(int(t), dtype=torch.long, device=self.device)
        return torch.tensor(t, dtype=torch.float32, device=self.device)

    def _embeds(self, emb: torch.Tensor, batch: int, name: str) -> torch.Tensor:
        if emb.shape[0] == batch:
            return emb
        if emb.shape[0] == 1:
            return emb.expand(batch, *emb.shape[1:])
        raise ValueError(f"{name} has batch {emb.shape[0]} but the state has batch {batch}")

    def model_output(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """The (guided) model output at model-space input ``x`` (model dtype/device)."""
        ts = self._timestep_tensor(t)
        with torch.no_grad():
            if self._cond is None:
                return self.model(x, ts, **self.unet_kwargs).sample
            b = x.shape[0]
            cond = self._embeds(self._cond, b, "prompt_embeds")
            if self._uncond is None:
                return self.model(x, ts, encoder_hidden_states=cond, **self.unet_kwargs).sample
            unc = self._embeds(self._uncond, b, "negative_prompt_embeds")
            out = self.model(torch.cat([x] * 2), ts, encoder_hidden_states=torch.cat([unc, cond]),
                             **self.unet_kwargs).sample
            e_u, e_c = out.chunk(2)
            return e_u + self.guidance_scale * (e_c - e_u)

    def __call__(self, xbar: torch.Tensor, sigma_bar: float) -> torch.Tensor:
        """``ε̄(x̄, σ̄)`` in the dtype and on the device of ``x̄``."""
        t, alpha, sigma = self.node_params(float(sigma_bar))
        x = (xbar * alpha).to(self.device, self.dtype)
        out = self.model_output(x, t)
        sd = xbar.dtype
        return to_epsilon(out.to(sd), x.to(sd), alpha, sigma, self.prediction_type).to(xbar.device)


# ------------------------------------------------------------------ the sampler
class DiffusionSampler:
    """Sampling, exact inversion and reconstruction in a diffusion model's x-space.

    ``x = α x̄``: :meth:`sample` maps noise ``x_T`` (or an inverted :class:`Latent`)
    to data ``x_0``; :meth:`invert` maps ``x_0`` to the :class:`Latent` (the k
    noisiest σ̄-ODE states, in ``x̄`` and ``state_dtype``) from which :meth:`sample`
    reproduces ``x_0`` up to ``state_dtype`` round-off, for any model dtype.

    Parameters
    ----------
    unet:
        ``UNet2DModel`` or ``UNet2DConditionModel``, in any dtype and on any device.
    scheduler:
        Any diffusers scheduler (or config): defines the grid (:func:`grid_from_scheduler`)
        and the prediction type.
    num_inference_steps:
        N, the number of steps.
    method:
        An explicit core method (default :func:`~lmsolvers.obelm`); inversion needs a
        bidirectional explicit one (O-BELM, BDIA, designed BELMs) or EDICT.
    guidance_scale, prompt_embeds, negative_prompt_embeds:
        Classifier-free guidance as in :class:`DiffusersEps`.
    state_dtype:
        dtype of the solver state and its arithmetic (float64 unless the device lacks it).
    prediction_type:
        Overrides the scheduler config's.
    disable_progress:
        Progress bars off (True), on (False) or only on a TTY (None).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler: Any,
        num_inference_steps: int,
        method: Any = None,
        guidance_scale: float = 1.0,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        state_dtype: torch.dtype = torch.float64,
        *,
        prediction_type: str | None = None,
        unet_kwargs: Mapping[str, Any] | None = None,
        disable_progress: bool | None = None,
    ) -> None:
        self.unet = unet
        self.scheduler = scheduler
        self.method = obelm() if method is None else method
        self.grid = grid_from_scheduler(scheduler, num_inference_steps)
        self.eps = DiffusersEps(unet, self.grid, scheduler, prediction_type=prediction_type,
                                guidance_scale=guidance_scale, prompt_embeds=prompt_embeds,
                                negative_prompt_embeds=negative_prompt_embeds,
                                unet_kwargs=unet_kwargs)
        self.state_dtype = resolve_state_dtype(state_dtype, self.eps.device)
        self.disable_progress = disable_progress

    @property
    def num_inference_steps(self) -> int:
        """Number of grid steps N (one network evaluation each for O-BELM)."""
        return self.grid.N

    def _state(self, x: torch.Tensor, node: int, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor")
        return x.to(self.eps.device, self.state_dtype) / float(self.grid.alphas[node])

    def sample(self, x: torch.Tensor | Latent, *, callback: Any = None) -> torch.Tensor:
        """``x_0`` (in ``state_dtype``) from noise ``x_T`` or from an inverted latent."""
        if isinstance(x, Latent):
            states = tuple(s.to(self.eps.device, self.state_dtype) for s in x.states)
            start: torch.Tensor | Latent = Latent(states, x.method, x.sigma_bar)
        else:
            start = self._state(x, self.grid.N, "x_T")
        xbar0 = sample(self.eps, self.grid, self.method, start, callback=callback,
                       disable=self.disable_progress)
        return xbar0 * float(self.grid.alphas[0])

    def invert(self, x0: torch.Tensor, *, callback: Any = None) -> Latent:
        """The exact-inversion :class:`Latent` of data ``x_0`` (states ``x̄`` in ``state_dtype``)."""
        return invert(self.eps, self.grid, self.method, self._state(x0, 0, "x0"),
                      callback=callback, disable=self.disable_progress)

    def reconstruct(self, x0: torch.Tensor) -> torch.Tensor:
        """``sample(invert(x_0))``: equals ``x_0`` up to the state's round-off."""
        return self.sample(self.invert(x0))

    def noise_of(self, latent: Latent) -> torch.Tensor:
        """The model-space noisiest state ``x_T = α_N x̄_N`` of a latent (state dtype)."""
        return latent.x_N * float(self.grid.alphas[-1])
