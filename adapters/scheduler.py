"""Drop-in diffusers schedulers running the core's linear multistep methods.

``pipe.scheduler = BELMScheduler.from_config(pipe.scheduler.config)`` makes a stock
``StableDiffusionPipeline`` sample with O-BELM (or any explicit core method, set by name
or object with :meth:`BELMScheduler.set_method` and saved in the config).  The scheduler
is stateful: it keeps the σ̄-ODE states ``x̄ = x/α`` and the ε it has been given in the
engine's :class:`~lmsolvers.engine.Window` in ``state_dtype`` (float64), and hands the
pipeline ``α x̄`` cast to the pipeline's dtype.  Every step is the core's formula
(:func:`~lmsolvers.engine.lm_step`) on the grid of
:func:`~lmsolvers.adapters.grid_from_scheduler`, with the timestep read from that grid's
table, so its output in the pipeline's dtype equals
:class:`~lmsolvers.adapters.DiffusionSampler`'s bit for bit (the float64 states agree to a
few ulps: the pipeline hands the model ``x_T`` itself, the sampler ``α_N (x_T/α_N)``).

Steps must follow ``scheduler.timesteps`` one by one, in order (``set_timesteps`` starts
a run; a finished run may be followed by a new one from the first timestep); a skipped,
repeated or out-of-order timestep, or a change of the batch shape in mid-run, is an
error naming what was expected (docs/design.md §8).

A :class:`~lmsolvers.Latent` holds k states but a pipeline passes one ``latents``
tensor.  To resume sampling from a full inverted latent through the stock pipeline::

    latents = pipe.scheduler.load_latent(latent, dtype=pipe.unet.dtype)
    pipe(..., latents=latents)

``load_latent`` checks the latent against this scheduler's config (method, every grid
node, prediction type) at once, and the first step checks it against the run's grid
again; an error consumes nothing.  The latent stays loaded: every run that starts from
its ``x_T`` resumes it exactly, and a run from other noise is an error until
:meth:`BELMScheduler.clear_latent`.  The scheduler takes the k − 1 states below ``x̄_N``
from the latent instead of its starter (the pipeline still evaluates the model at those
nodes: k − 1 extra network evaluations, unused for O-BELM).  It cannot see the
pipeline's guidance scale: invert with the same one (docs/design.md §3).
:class:`BELMInverseScheduler` runs the same relation upwards, in the loop style of
diffusers' ``DDIMInverseScheduler``; after its last step ``inverse_scheduler.latent`` is
the full latent.
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

from lmsolvers.engine import Run, euler_step, lm_step, lm_step_inverse
from lmsolvers.families import bdia
from lmsolvers.grid import Grid
from lmsolvers.latent import Latent, LatentMismatchError, check_latent
from lmsolvers.method import LMMethod, StepCoefficients
from lmsolvers.registry import method_from_name

from .diffusers import _check_prediction_type, resolve_state_dtype, to_epsilon
from .schedules import (
    _summarise,
    alphas_cumprod_from_config,
    check_num_inference_steps,
    grid_from_scheduler,
)

__all__ = ["BELMScheduler", "BELMInverseScheduler", "BELMSchedulerOutput"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class BELMSchedulerOutput(BaseOutput):
    """``prev_sample``: the next state in model space; ``pred_original_sample``: the
    prediction ``x̂_0 = (x − σ ε)/α`` at the step's node."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def _scheduler_method(method: Any, bdia_gamma: float = 1.0) -> LMMethod:
    """The core method of a name or object (:func:`~lmsolvers.method_from_name`), refusing
    what a one-evaluation-per-step pipeline loop cannot run.  The bare config name
    ``'bdia'`` takes γ from the config's ``bdia_gamma``."""
    if isinstance(method, str) and method.strip().lower() == "bdia":
        m = bdia(bdia_gamma)
    else:
        m = method_from_name(method)
    if not isinstance(m, LMMethod):
        raise ValueError(
            f"method {m.name!r} needs two network evaluations per step, which a "
            "one-evaluation-per-step pipeline loop cannot give; sample or invert it with "
            "DiffusionSampler")
    if not m.is_explicit:
        raise ValueError(f"method {m.name!r} is implicit (b_0 ≠ 0); a scheduler runs explicit "
                         "methods only")
    return m


def _no_eps(x: torch.Tensor, sigma_bar: float) -> torch.Tensor:
    raise RuntimeError("the scheduler takes ε from the pipeline's model output at each step; "
                       f"no step supplied ε at sigma_bar = {sigma_bar:.6g}")


def _timestep_value(timestep: Any) -> int | float:
    v = float(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
    return int(v) if v.is_integer() else v


def _check_tensor(x: Any, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got "
                        f"{type(x).__name__}" + (f" {x.dtype}" if isinstance(x, torch.Tensor)
                                                 else ""))


class _LMSchedulerBase(SchedulerMixin, ConfigMixin):
    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1
    #: the direction the method is prepared for (``LMMethod.prepare``)
    _direction = "forward"

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
        self._method = _scheduler_method(method, bdia_gamma)
        self._latent: Latent | None = None
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
        """Run ``method`` (an explicit core ``LMMethod`` or its name, e.g. ``"bdia(0.5)"``)
        from now on, and record its name in the config so that ``save_pretrained`` →
        ``from_pretrained`` restores it (a method whose name does not parse back to the
        same method warns: ``from_pretrained`` would then refuse the config)."""
        m = _scheduler_method(method, self.config.bdia_gamma)
        coeffs = self._prepare_method(m) if self.grid is not None else None
        self._method, self._coeffs = m, coeffs
        self.register_to_config(method=m.name)
        try:
            same = _scheduler_method(m.name, self.config.bdia_gamma).key == m.key
        except (ValueError, TypeError):
            same = False
        if not same:
            warnings.warn(f"method {m.name!r} is not one method_from_name rebuilds from its name: "
                          "the saved config cannot restore it (from_pretrained will raise); call "
                          "set_method after loading", UserWarning, stacklevel=2)
        self._reset()

    def _prepare_method(self, m: LMMethod) -> StepCoefficients:
        return m.prepare(self.grid, _DTYPES[self.config.state_dtype], self._direction)

    def _build_grid(self, num_inference_steps: Any) -> None:
        n = check_num_inference_steps(num_inference_steps)
        grid = grid_from_scheduler(self, n)
        self.num_inference_steps, self.grid = n, grid
        self._coeffs = self._prepare_method(self._method)
        self._reset()

    def _reset(self) -> None:
        """Forget the run in progress (not a loaded latent)."""
        self._run: Run | None = None
        self._next: int | None = None
        self._shape: tuple[int, ...] | None = None

    def _state_dtype(self, device: torch.device) -> torch.dtype:
        return resolve_state_dtype(_DTYPES[self.config.state_dtype], device)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Identity: the model input is ``x = α x̄`` itself."""
        return sample

    # ------------------------------------------------------------ run bookkeeping
    def _start_node(self) -> int:
        raise NotImplementedError

    def _end_node(self) -> int:
        raise NotImplementedError

    def _node_timestep(self, m: int) -> int | float:
        return _timestep_value(self.grid.timesteps[m])

    def _check_call(self, model_output: Any, timestep: Any, sample: Any) -> int:
        """Validate one ``step`` call before anything changes; return its node."""
        if self.grid is None:
            raise RuntimeError("call set_timesteps before step")
        _check_tensor(sample, "sample")
        _check_tensor(model_output, "model_output")
        t = _timestep_value(timestep)
        in_run = self._next is not None and self._next != self._end_node()
        m = self._next if in_run else self._start_node()
        expected = self._node_timestep(m)
        if t != expected:
            known = [int(v) for v in self.timesteps.tolist()]
            if t not in known:
                kind = "sampling" if self._direction == "forward" else "inversion"
                raise ValueError(f"timestep {t} is not a {kind} timestep of this scheduler's "
                                 f"grid {_summarise(known)}; step through scheduler.timesteps")
            raise ValueError(
                f"step expected timestep {expected}, got {t}: steps must follow "
                "scheduler.timesteps one by one, in order (no skipped, repeated or reordered "
                "timesteps)" + ("; call set_timesteps(...) to abandon this run and start a new "
                                "one" if in_run else ""))
        if in_run and tuple(sample.shape) != self._shape:
            raise ValueError(
                f"sample has shape {tuple(sample.shape)} but this run started with shape "
                f"{self._shape}: the batch size (or shape) cannot change in mid-run; call "
                "set_timesteps(...) to start a new run")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)} but sample has shape "
                f"{tuple(sample.shape)} (with classifier-free guidance, combine the two halves "
                "of the batch before calling step)")
        return m

    def _new_run(self, sample: torch.Tensor, dtype: torch.dtype) -> Run:
        run = Run(_no_eps, self.grid, sample.to(dtype), check_finite=True, callback=None,
                  disable=True, desc="", total=0)
        self._run, self._shape = run, tuple(sample.shape)
        return run

    def _node_eps(self, model_output: torch.Tensor, sample: torch.Tensor, m: int,
                  dtype: torch.dtype) -> torch.Tensor:
        g = self.grid
        alpha = float(g.alphas[m])
        sigma = alpha * float(g.sigma_bar[m])
        out = to_epsilon(model_output.to(dtype), sample.to(dtype), alpha, sigma,
                         self.config.prediction_type)
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(f"the model output is NaN/Inf at timestep "
                                     f"{self._node_timestep(m)} (node {m})")
        return out

    def _x0_pred(self, m: int, eps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``x̂_0 = x̄_m − σ̄_m ε`` (= ``(x − σ ε)/α``), in the pipeline's dtype."""
        return (self._run.window[m] - float(self.grid.sigma_bar[m]) * eps).to(like.dtype)

    def _to_model(self, xbar: torch.Tensor, m: int, like: torch.Tensor) -> torch.Tensor:
        return (xbar * float(self.grid.alphas[m])).to(like.dtype)

    def _sync_state(self, m: int, sample: torch.Tensor, dtype: torch.dtype) -> None:
        """Keep the stored state at node m unless the pipeline changed ``latents``."""
        w = self._run.window
        try:
            out = w.aux(m)
        except KeyError:
            out = None
        if out is not None and torch.equal(out, sample.to(out.device)):
            return
        warnings.warn(f"latents at timestep {self._node_timestep(m)} differ from what the "
                      "scheduler returned; continuing from the given latents",
                      RuntimeWarning, stacklevel=3)
        w.put(m, sample.to(dtype) / float(self.grid.alphas[m]), aux=sample)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


class BELMScheduler(_LMSchedulerBase):
    """A diffusers scheduler that samples with a core linear multistep method (O-BELM).

    ``from_config`` accepts DDIM, PNDM, DPM-Solver, Euler, … configs (β schedule,
    ``timestep_spacing``, ``steps_offset``, ``set_alpha_to_one``/``final_sigmas_type``,
    ``prediction_type``); extra keys are ignored.  ``method`` is a name parsed by
    :func:`~lmsolvers.method_from_name` (``"obelm"``, ``"ddim"``, ``"bdia(0.5)"``, …;
    bare ``"bdia"`` takes ``bdia_gamma``).  One network evaluation per step
    (``order = 1``).  Step at node m (the pipeline's ``timestep``, looked up in the
    grid's table) computes, in ``state_dtype``, the method's relation

        ``x̄_{m−1} = Σ_j a_{m,j} x̄_{m−1+j} + Σ_j b_{m,j} h_{m−1+j} ε̄_{m−1+j}``

    (the first k − 1 steps from noise use the DDIM starter ``x̄_{m−1} = x̄_m − h_m ε̄_m``)
    and returns ``x_{m−1} = α_{m−1} x̄_{m−1}`` in the dtype of ``sample``.
    Thresholding/clipping are not supported (they would break invertibility).
    """

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None
                      ) -> None:
        """Build the grid and set ``timesteps`` (descending: nodes N … 1); starts a new run
        (a loaded latent stays loaded)."""
        self._build_grid(num_inference_steps)
        ts = self.grid.timesteps[1:][::-1].astype(np.int64)
        self.timesteps = torch.from_numpy(ts.copy()).to(device)

    def _start_node(self) -> int:
        return self.grid.N

    def _end_node(self) -> int:
        return 0

    # ------------------------------------------------------------------ latents
    @property
    def loaded_latent(self) -> Latent | None:
        """The latent runs resume from (:meth:`load_latent`), or ``None``."""
        return self._latent

    def clear_latent(self) -> None:
        """Unload the latent: runs start from the ``latents`` they are given alone."""
        self._latent = None

    def _latent_context(self, latent: Latent) -> dict[str, Any]:
        # the scheduler knows the prediction type, not the pipeline's guidance or model
        ctx = dict(latent.context)
        if "prediction_type" in ctx:
            ctx["prediction_type"] = self.config.prediction_type
        return ctx

    def _check_latent(self, latent: Latent, grid: Grid) -> None:
        check_latent(latent, grid, self._method.key, self._method.name,
                     self._latent_context(latent), self._method.k)

    def load_latent(self, latent: Latent, dtype: torch.dtype = torch.float32,
                    device: str | torch.device | None = None) -> torch.Tensor:
        """Resume sampling runs from a full inverted latent; returns the ``latents`` to pass.

        Checks at once that this scheduler's config can produce the latent's grid (every
        node), runs its method and has its prediction type
        (:class:`~lmsolvers.LatentMismatchError` saying what differs, before anything is
        stored), stores it and returns ``x_T = α_N x̄_N`` (``α_N`` from the latent's grid
        table) in ``dtype`` on ``device``.  Each later run starting from that ``x_T``
        takes its first k − 1 states from the latent, after checking it against the run's
        grid (so the pipeline needs the inversion's ``num_inference_steps``); a run from
        other ``latents`` is refused until :meth:`clear_latent`.
        """
        if not isinstance(latent, Latent):
            raise TypeError(f"expected an lmsolvers Latent, got {type(latent).__name__}")
        N = latent.grid.N
        grids = []
        for n in (N, N + 1):  # linspace onto ᾱ_0 drops a zero step: n steps give N = n − 1
            try:
                grids.append((n, grid_from_scheduler(self, n)))
            except ValueError:
                continue
        fitting = [(n, g) for n, g in grids if g.N == N] or grids[:1]
        if not fitting:
            raise ValueError(f"this scheduler's config has no grid of {N} steps, the latent's")
        errors = []
        for n, g in fitting:
            try:
                self._check_latent(latent, g)
                break
            except LatentMismatchError as exc:
                errors.append((n, exc))
        else:
            n, exc = errors[0]
            raise LatentMismatchError(
                f"{exc} [load_latent compared the latent with this scheduler's grid for "
                f"num_inference_steps = {n}: a latent resumes only under the scheduler config "
                "it was inverted with]") from None
        self._latent = latent
        x_N = latent.x_N
        dev = torch.device(device) if device is not None else x_N.device
        alpha = float(latent.grid.alphas[-1])
        return (x_N.to(dev, self._state_dtype(dev)) * alpha).to(dtype)

    def _start(self, sample: torch.Tensor, dtype: torch.dtype) -> Run:
        """Validate the run's start (the loaded latent first), then fill the window."""
        g, k, N = self.grid, self._method.k, self.grid.N
        latent = self.loaded_latent
        if latent is not None:
            self._check_latent(latent, g)
            states = [st.to(sample.device, dtype) for st in latent.states]
            top = self._to_model(states[-1], N, sample)
            if top.shape != sample.shape or not torch.equal(top, sample):
                raise ValueError(
                    "a latent is loaded, but the latents passed to the pipeline are not its x_T; "
                    "pass latents=scheduler.load_latent(latent, dtype=unet.dtype), or call "
                    "scheduler.clear_latent() to sample from other noise")
            run = self._new_run(sample, dtype)
            for m, st in zip(latent.nodes, states, strict=True):
                run.window.put(m, st, aux=sample if m == N else None)
            return run
        if k > 1 and self._method.starter != "ddim":
            raise ValueError(
                f"method {self._method.name!r} starts with an RK4 starter, which needs "
                "evaluations between grid nodes; a pipeline gives one per node. Sample it "
                "with DiffusionSampler, or from a full latent (load_latent)")
        run = self._new_run(sample, dtype)
        run.window.put(N, sample.to(dtype) / float(g.alphas[N]), aux=sample)
        return run

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> BELMSchedulerOutput | tuple:
        """One step from the node of ``timestep`` down to the next node of the grid.

        ``timestep`` must be the next entry of ``timesteps`` (the first one starts a run),
        and ``sample``/``model_output`` keep the run's shape; otherwise ``ValueError``.
        """
        m = self._check_call(model_output, timestep, sample)
        g, k, N = self.grid, self._method.k, self.grid.N
        dtype = self._state_dtype(sample.device)
        if m == N:
            run = self._start(sample, dtype)
        else:
            run = self._run
            self._sync_state(m, sample, dtype)
        w = run.window
        eps_m = self._node_eps(model_output, sample, m, dtype)
        w.set_eps(m, eps_m)
        r = m - 1
        if r in w:  # given by a loaded latent
            xr = w[r]
        elif m > N - k + 1:  # starter from noise
            xr = euler_step(w[m], float(g.sigma_bar[r]) - float(g.sigma_bar[m]), eps_m)
        else:
            xr = lm_step(self._coeffs, r, w)
        x0 = self._x0_pred(m, eps_m, sample)
        prev = self._to_model(xr, r, sample)
        w.put(r, xr, aux=prev)
        for old in [n for n in w.nodes if n >= r + k]:
            w.drop(old)
        self._next = r
        if not return_dict:
            return (prev, x0)
        return BELMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)


class BELMInverseScheduler(_LMSchedulerBase):
    """Exact inversion in a diffusers-style loop (cf. ``DDIMInverseScheduler``).

    ``timesteps`` ascend over nodes 0 … N−1; the model is evaluated at the current
    state and its timestep, and ``step`` returns the state one node up, solving the
    method's relation for its farthest node,
    ``x̄_{r+k} = (x̄_r − Σ_{j<k} a_{r+1,j} x̄_{r+j} − Σ_{j<k} b_{r+1,j} h ε̄_{r+j}) / a_{r+1,k}``
    (the first k − 1 steps run the DDIM starter upwards, whatever the method's starter:
    that part of an inversion is approximate and does not matter, docs/design.md §3).
    Steps follow ``timesteps`` in order, as for :class:`BELMScheduler`.  After the last
    step :attr:`latent` is the :class:`~lmsolvers.Latent` to sample back from; its
    context records only the prediction type (the scheduler cannot see the guidance):
    ``DiffusionSampler.sample`` takes it after ``latent.with_context(sampler.context)``.
    """

    _direction = "backward"

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None
                      ) -> None:
        """Build the grid and set ``timesteps`` (ascending: nodes 0 … N−1); starts a new run."""
        self._build_grid(num_inference_steps)
        ts = self.grid.timesteps[:-1].astype(np.int64)
        self.timesteps = torch.from_numpy(ts.copy()).to(device)

    def _start_node(self) -> int:
        return 0

    def _end_node(self) -> int:
        return self.grid.N

    def _reset(self) -> None:
        super()._reset()
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
        m = self._check_call(model_output, timestep, sample)
        g, k, N = self.grid, self._method.k, self.grid.N
        dtype = self._state_dtype(sample.device)
        if m == 0:
            run = self._new_run(sample, dtype)
            run.window.put(0, sample.to(dtype) / float(g.alphas[0]), aux=sample)
            self.latent = None
        else:
            run = self._run
            self._sync_state(m, sample, dtype)
        w = run.window
        eps_m = self._node_eps(model_output, sample, m, dtype)
        w.set_eps(m, eps_m)
        if m < k - 1:
            xn = euler_step(w[m], float(g.sigma_bar[m + 1]) - float(g.sigma_bar[m]), eps_m)
        else:
            xn = lm_step_inverse(self._coeffs, m + 1 - k, w)
        x0 = self._x0_pred(m, eps_m, sample)
        if m >= k - 1:
            w.drop(m + 1 - k)
        nxt = self._to_model(xn, m + 1, sample)
        w.put(m + 1, xn, aux=nxt)
        self._next = m + 1
        if m + 1 == N:
            self.latent = self._method.latent(run, self._coeffs,
                                              {"prediction_type": self.config.prediction_type})
        if not return_dict:
            return (nxt, x0)
        return BELMSchedulerOutput(prev_sample=nxt, pred_original_sample=x0)
