"""Drop-in diffusers schedulers running the core's linear multistep methods.

``pipe.scheduler = BELMScheduler.from_config(pipe.scheduler.config)`` makes a stock
``StableDiffusionPipeline`` sample with O-BELM (or any explicit core method set with
:meth:`BELMScheduler.set_method`).  The scheduler is stateful: it keeps the σ̄-ODE
states ``x̄ = x/α`` (and the ε it has seen) in ``state_dtype`` (float64), and hands the
pipeline ``α x̄`` cast to the pipeline's dtype.  Every step is the core's formula on
the grid of :func:`~lmsolvers.adapters.grid_from_scheduler`, with the timestep read
from that grid's table, so its output equals :class:`~lmsolvers.adapters.DiffusionSampler`'s
bit for bit.

A :class:`~lmsolvers.Latent` holds k states but a pipeline passes one ``latents``
tensor.  To resume sampling from a full inverted latent through the stock pipeline::

    latents = pipe.scheduler.load_latent(latent, dtype=pipe.unet.dtype)
    pipe(..., latents=latents)

The scheduler then takes the k − 1 states below ``x̄_N`` from the latent instead of its
starter (the pipeline still evaluates the model at those nodes: k − 1 extra network
evaluations, unused for O-BELM).  :class:`BELMInverseScheduler` runs the same relation
upwards, in the loop style of diffusers' ``DDIMInverseScheduler``; after its last step
``inverse_scheduler.latent`` is the full latent.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput

from lmsolvers.families import bdia, ddim, obelm
from lmsolvers.grid import Grid, vp_alpha
from lmsolvers.integrate import Latent, euler_step, lm_step, lm_step_inverse
from lmsolvers.method import LMMethod, StepCoefficients

from .diffusers import (
    _check_prediction_type,
    alphas_cumprod_from_config,
    grid_from_scheduler,
    resolve_state_dtype,
    to_epsilon,
)

__all__ = ["BELMScheduler", "BELMInverseScheduler", "BELMSchedulerOutput", "resolve_method"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class BELMSchedulerOutput(BaseOutput):
    """``prev_sample``: the next state in model space; ``pred_original_sample``: x̂_0."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def resolve_method(method: str | LMMethod, bdia_gamma: float = 1.0) -> LMMethod:
    """A core method from a config name ('obelm', 'ddim', 'bdia') or an ``LMMethod``."""
    if isinstance(method, LMMethod):
        return method
    if method == "obelm":
        return obelm()
    if method == "ddim":
        return ddim()
    if method == "bdia":
        return bdia(bdia_gamma)
    raise ValueError(f"unknown method {method!r}: use 'obelm', 'ddim', 'bdia', or pass an "
                     "LMMethod to set_method (EDICT needs two evaluations per step and cannot "
                     "run in a one-evaluation-per-step pipeline loop)")


class _LMSchedulerBase(SchedulerMixin, ConfigMixin):
    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        set_alpha_to_one: bool | None = None,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str | None = None,
        method: str = "obelm",
        bdia_gamma: float = 1.0,
        state_dtype: str = "float64",
    ) -> None:
        _check_prediction_type(prediction_type)
        if timestep_spacing not in ("leading", "trailing", "linspace"):
            raise ValueError(f"unsupported timestep_spacing {timestep_spacing!r} "
                             "(leading, trailing, linspace)")
        if state_dtype not in _DTYPES:
            raise ValueError(f"state_dtype must be one of {list(_DTYPES)}, got {state_dtype!r}")
        ac = alphas_cumprod_from_config(self.config)
        self.alphas_cumprod = torch.from_numpy(ac)
        self.init_noise_sigma = 1.0
        self._method = resolve_method(method, bdia_gamma)
        self.num_inference_steps: int | None = None
        self.timesteps: torch.Tensor | None = None
        self.grid: Grid | None = None
        self._coeffs: StepCoefficients | None = None
        self._reset()

    # ----------------------------------------------------------- method / grid
    @property
    def method(self) -> LMMethod:
        """The core method (``set_method`` changes it)."""
        return self._method

    def set_method(self, method: str | LMMethod) -> None:
        """Run ``method`` (an explicit core ``LMMethod``, or a config name) from now on."""
        self._method = resolve_method(method, self.config.bdia_gamma)
        if self.grid is not None:
            self._prepare()
        self._reset()

    def _reset(self) -> None:
        self._x: dict[int, torch.Tensor] = {}
        self._eps: dict[int, torch.Tensor] = {}
        self._out: dict[int, torch.Tensor] = {}

    def _state_dtype(self, device: torch.device) -> torch.dtype:
        return resolve_state_dtype(_DTYPES[self.config.state_dtype], device)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Identity: the model input is ``x = α x̄`` itself."""
        return sample

    def _node_eps(self, model_output: torch.Tensor, sample: torch.Tensor, m: int,
                  dtype: torch.dtype) -> torch.Tensor:
        g = self.grid
        alpha = float(g.alphas[m])
        sigma = alpha * float(g.sigma_bar[m])
        out = to_epsilon(model_output.to(dtype), sample.to(dtype), alpha, sigma,
                         self.config.prediction_type)
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(f"the model output is NaN/Inf at timestep "
                                     f"{int(g.timesteps[m])} (node {m})")
        return out

    def _x0_pred(self, xbar: torch.Tensor, eps: torch.Tensor, m: int, like: torch.Tensor
                 ) -> torch.Tensor:
        a = float(self.grid.alphas[m])
        return ((xbar - float(self.grid.sigma_bar[m]) * eps) * a).to(like.dtype)

    def _sync_state(self, m: int, sample: torch.Tensor, dtype: torch.dtype) -> None:
        """Use the stored float64 state at node m unless the pipeline changed ``latents``."""
        alpha = float(self.grid.alphas[m])
        out = self._out.get(m)
        if m in self._x and out is not None and out.shape == sample.shape and torch.equal(
                out, sample.to(out.device)):
            return
        if m in self._x:
            warnings.warn(f"latents at timestep {int(self.grid.timesteps[m])} differ from what "
                          "the scheduler returned; continuing from the given latents",
                          RuntimeWarning, stacklevel=3)
        self._x[m] = sample.to(dtype) / alpha

    def _prepare(self) -> None:
        raise NotImplementedError


class BELMScheduler(_LMSchedulerBase):
    """A diffusers scheduler that samples with a core linear multistep method (O-BELM).

    ``from_config`` accepts DDIM, PNDM, DPM-Solver, Euler, … configs (β schedule,
    ``timestep_spacing``, ``steps_offset``, ``set_alpha_to_one``/``final_sigmas_type``,
    ``prediction_type``); extra keys are ignored.  One network evaluation per step
    (``order = 1``).  Step at node m (the pipeline's ``timestep``, looked up in the
    grid's table) computes, in ``state_dtype``, the method's relation

        ``x̄_{m−1} = Σ_j a_{m,j} x̄_{m−1+j} + Σ_j b_{m,j} h_{m−1+j} ε̄_{m−1+j}``

    (the first k − 1 steps from noise use the DDIM starter ``x̄_{m−1} = x̄_m − h_m ε̄_m``)
    and returns ``x_{m−1} = α_{m−1} x̄_{m−1}`` in the dtype of ``sample``.
    Thresholding/clipping are not supported (they would break invertibility).
    """

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None
                      ) -> None:
        """Build the grid and set ``timesteps`` (descending: nodes N … 1)."""
        self.num_inference_steps = int(num_inference_steps)
        self.grid = grid_from_scheduler(self, self.num_inference_steps)
        self._prepare()
        ts = self.grid.timesteps[1:][::-1].astype(np.int64)
        self.timesteps = torch.from_numpy(ts.copy()).to(device)
        self._reset()
        self._pending = getattr(self, "_pending", None)

    def _prepare(self) -> None:
        if not self._method.is_explicit:
            raise ValueError(f"method {self._method.name!r} is implicit; samplers run explicit "
                             "methods only")
        self._coeffs = self._method.coefficients(self.grid)
        self._index = {int(t): i for i, t in enumerate(self.grid.timesteps) if i > 0}

    def load_latent(self, latent: Latent, dtype: torch.dtype = torch.float32,
                    device: str | torch.device | None = None) -> torch.Tensor:
        """Resume the next sampling run from a full inverted latent.

        Stores the latent's k states and returns ``x_T = α_N x̄_N`` (cast to ``dtype``)
        to pass as the pipeline's ``latents``.  The next run's first k − 1 steps take
        their states from the latent instead of the starter; the latent is used once.
        Call after ``set_timesteps`` or before the pipeline call (the pipeline calls
        ``set_timesteps`` itself; the latent's grid is checked at the first step).
        """
        if not isinstance(latent, Latent):
            raise TypeError(f"expected an lmsolvers Latent, got {type(latent).__name__}")
        self._pending = latent
        # α_N from the latent's own σ̄ (VP): the grid may not exist yet
        alpha_n = float(vp_alpha(latent.sigma_bar[-1]))
        x = latent.x_N * alpha_n
        return x.to(device=device if device is not None else x.device, dtype=dtype)

    def _take_latent(self, sample: torch.Tensor, dtype: torch.dtype) -> None:
        lat, self._pending = self._pending, None
        g, k, N = self.grid, self._method.k, self.grid.N
        want = [float(s) for s in g.sigma_bar[N - k + 1:]]
        if lat.method != self._method.name:
            raise ValueError(f"the loaded latent was made by {lat.method!r}, but this scheduler "
                             f"runs {self._method.name!r}")
        if lat.k != k or [float(s) for s in lat.sigma_bar] != want:
            raise ValueError(
                f"the loaded latent belongs to nodes with sigma_bar {list(lat.sigma_bar)}, but "
                f"this scheduler's grid ({N} steps) has top nodes {want}: grid mismatch "
                "(same scheduler config and num_inference_steps as the inversion?)")
        for j, st in enumerate(lat.states):
            self._x[N - k + 1 + j] = st.to(sample.device, dtype)
        top = (self._x[N] * float(g.alphas[N])).to(sample.dtype)
        if not torch.equal(top, sample):
            raise ValueError("latents passed to the pipeline are not the loaded latent's x_T; "
                             "pass latents=scheduler.load_latent(latent, dtype=unet.dtype)")
        self._out[N] = sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> BELMSchedulerOutput | tuple:
        """One step from the node of ``timestep`` down to the next node of the grid."""
        if self.grid is None:
            raise RuntimeError("call set_timesteps before step")
        t = int(timestep)
        if t not in self._index:
            raise ValueError(f"timestep {t} is not a sampling timestep of this scheduler's grid "
                             f"{self.timesteps.tolist()}")
        g, k, N, m = self.grid, self._method.k, self.grid.N, self._index[t]
        dtype = self._state_dtype(sample.device)
        if m == N:
            self._reset()
            if self._pending is not None:
                self._take_latent(sample, dtype)
            else:
                self._x[N] = sample.to(dtype) / float(g.alphas[N])
        elif m not in self._x and m + 1 not in self._x:
            raise RuntimeError(f"step at timestep {t} (node {m}) without the steps above it; "
                               f"sampling starts at timestep {int(g.timesteps[N])}")
        else:
            self._sync_state(m, sample, dtype)
        self._eps[m] = eps_m = self._node_eps(model_output, sample, m, dtype)
        r = m - 1
        if r in self._x:  # given by a loaded latent
            xr = self._x[r]
        elif m > N - k + 1:  # starter from noise
            if self._method.starter != "ddim":
                raise ValueError(
                    f"method {self._method.name!r} starts with an RK4 starter, which needs "
                    "evaluations between grid nodes; a pipeline gives one per node. Sample it "
                    "with DiffusionSampler, or from a full latent (load_latent)")
            h = float(g.sigma_bar[r]) - float(g.sigma_bar[m])
            xr = euler_step(self._x[m], h, eps_m)
        else:
            xr = lm_step(self._coeffs, r, self._x, self._eps.__getitem__)
        self._x[r] = xr
        x0 = self._x0_pred(self._x[m], eps_m, m, sample)
        for old in [n for n in self._x if n >= r + k]:
            self._x.pop(old)
            self._eps.pop(old, None)
            self._out.pop(old, None)
        prev = (xr * float(g.alphas[r])).to(sample.dtype)
        self._out[r] = prev
        if not return_dict:
            return (prev, x0)
        return BELMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


class BELMInverseScheduler(_LMSchedulerBase):
    """Exact inversion in a diffusers-style loop (cf. ``DDIMInverseScheduler``).

    ``timesteps`` ascend over nodes 0 … N−1; the model is evaluated at the current
    state and its timestep, and ``step`` returns the state one node up, solving the
    method's relation for its farthest node,
    ``x̄_{r+k} = (x̄_r − Σ_{j<k} a_{r+1,j} x̄_{r+j} − Σ_{j<k} b_{r+1,j} h ε̄_{r+j}) / a_{r+1,k}``
    (the first k − 1 steps run the DDIM starter upwards).  After the last step
    :attr:`latent` is the :class:`~lmsolvers.Latent` to sample back from.
    """

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None
                      ) -> None:
        """Build the grid and set ``timesteps`` (ascending: nodes 0 … N−1)."""
        self.num_inference_steps = int(num_inference_steps)
        self.grid = grid_from_scheduler(self, self.num_inference_steps)
        self._prepare()
        ts = self.grid.timesteps[:-1].astype(np.int64)
        self.timesteps = torch.from_numpy(ts.copy()).to(device)
        self._reset()

    def _prepare(self) -> None:
        self._coeffs = self._method.check_invertible(self.grid)

    def _reset(self) -> None:
        super()._reset()
        self._pos = 0
        self.latent: Latent | None = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> BELMSchedulerOutput | tuple:
        """One inversion step from the current node to the next (noisier) one."""
        if self.grid is None:
            raise RuntimeError("call set_timesteps before step")
        g, k, N = self.grid, self._method.k, self.grid.N
        t = int(timestep)
        if t == int(g.timesteps[0]) and self._pos != 0 and t != int(g.timesteps[self._pos]):
            self._reset()  # a new inversion run
        m = self._pos
        if m >= N:
            raise RuntimeError("inversion already reached the top node; call set_timesteps "
                               "to start a new run")
        if t != int(g.timesteps[m]):
            raise ValueError(f"inverse step {m} expects timestep {int(g.timesteps[m])}, got {t}")
        dtype = self._state_dtype(sample.device)
        if m == 0:
            self._x = {0: sample.to(dtype) / float(g.alphas[0])}
            self._eps, self._out = {}, {0: sample}
        else:
            self._sync_state(m, sample, dtype)
        self._eps[m] = eps_m = self._node_eps(model_output, sample, m, dtype)
        if m < k - 1:
            h = float(g.sigma_bar[m + 1]) - float(g.sigma_bar[m])
            xn = euler_step(self._x[m], h, eps_m)
        else:
            r = m + 1 - k
            xn = lm_step_inverse(self._coeffs, r, self._x, self._eps.__getitem__)
            self._x.pop(r, None)
            self._eps.pop(r, None)
            self._out.pop(r, None)
        self._x[m + 1] = xn
        self._pos = m + 1
        nxt = (xn * float(g.alphas[m + 1])).to(sample.dtype)
        self._out[m + 1] = nxt
        if m + 1 == N:
            nodes = range(N - k + 1, N + 1)
            self.latent = Latent(states=tuple(self._x[n] for n in nodes),
                                 method=self._method.name,
                                 sigma_bar=tuple(float(g.sigma_bar[n]) for n in nodes))
        x0 = self._x0_pred(self._x[m], eps_m, m, sample)
        if not return_dict:
            return (nxt, x0)
        return BELMSchedulerOutput(prev_sample=nxt, pred_original_sample=x0)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
