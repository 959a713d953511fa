"""Drop-in diffusers schedulers running the core's linear multistep methods.

``pipe.scheduler = BELMScheduler.from_config(pipe.scheduler.config)`` makes a stock
pipeline (Stable Diffusion 1.x/2.x, SDXL base and refiner, img2img, inpaint; SD3 and FLUX
with a ``FlowMatchEulerDiscreteScheduler`` config) sample with O-BELM, or with any
explicit core method named in the config (``method="bdia(0.5)"``; :meth:`set_method`
updates the config, so ``save_pretrained`` → ``from_pretrained`` keeps it).  The scheduler
keeps the σ̄-ODE states ``x̄ = x/α`` and the ε it has been given in the engine's
:class:`~lmsolvers.engine.Window` in ``state_dtype`` (float64), and hands the pipeline
``α x̄`` cast to the pipeline's dtype.  Every step is the core's formula
(:func:`~lmsolvers.engine.lm_step`) on the grid of
:func:`~lmsolvers.adapters.schedules.schedule_from_scheduler`, with the timestep read
from that grid's table.

**Runs.**  ``set_timesteps`` (``num_inference_steps``, or custom ``timesteps=[…]`` /
``sigmas=[…]``, and ``mu`` for dynamically shifted flow configs) builds the grid.  A run
starts at any timestep of ``timesteps`` (``set_begin_index`` fixes which, as pipelines do
for img2img at strength < 1 and SDXL's ``denoising_start``), with the method's starter
step (DDIM) from the node it enters at, and then follows ``timesteps`` one by one; a
skipped, repeated or out-of-order timestep, or a change of the batch shape in mid-run, is
an error naming what was expected (docs/design.md §8).  ``step_index``/``begin_index``
behave as in diffusers' multistep schedulers.

**α = 0 top node** (flow configs whose sigmas start at 1; zero-terminal-SNR configs whose
timesteps reach ``T − 1``): ``timesteps[0]`` is that node; its step is the entry step
``x̄_N = x̂_0 + σ̄_N ε̂`` (:func:`~lmsolvers.adapters.diffusers.top_prediction`, the
limit of the DDIM step as σ̄ → ∞), then the method runs on the finite grid
(docs/design.md §9).  So ``BELMScheduler(method="ddim")`` on a flow config is
``FlowMatchEulerDiscreteScheduler`` up to round-off.

**Exact resumption: the x_T hand-off** (the rule and its limits: docs/design.md §8).  A
k-step method's latent is k states (:class:`~lmsolvers.Latent`), a pipeline passes one
``latents`` tensor.  Two ways:

* explicit: ``latents = pipe.scheduler.load_latent(latent, dtype=…)`` (checked at once,
  stays loaded until :meth:`BELMScheduler.clear_latent`);
* implicit, DDIMInverse-style: :class:`BELMInverseScheduler` registers each inversion's
  latest latent in a process-wide registry (:class:`LatentHandoff`,
  :mod:`lmsolvers.adapters.handoff`); a :class:`BELMScheduler` run from a tensor whose rows
  are rows of such an output — all of them, some, reordered, repeated, cast to another
  floating dtype and back — at the node that inversion reached resumes each such row from
  its full latent.  Rows that are (or were) inverted states it cannot resume (evicted;
  another grid, method or start node; edited since) make it warn with
  :class:`InvertedLatentWarning`: sampling from one state is not the inverse.

The scheduler cannot see the pipeline's guidance scale: invert with the same one
(docs/design.md §3).  Thresholding/clipping is not supported: it is not invertible.

**Stochastic steps** (``eta > 0``, docs/design.md §13): ``pipe(..., eta=η,
generator=torch.Generator().manual_seed(s))`` runs the method's stochastic form
(:func:`lmsolvers.stochastic`, DDIM's η-law: with ``method="ddim"`` it is DDIMScheduler's
step).  The noise is not drawn from the generator's stream — the pipeline draws its initial
latents from the same generator, so the stream's state at a step differs between an
inversion run and a sampling run — but regenerated from the generator's *initial seed*
(``generator.initial_seed()``; a list of generators: one seed per batch row), the node and
the batch row (:mod:`lmsolvers.noise`).  So a :class:`BELMInverseScheduler` run and a
:class:`BELMScheduler` run with a generator of the same seed and the same η add and subtract
the same noise, and the pair is exact; the latent records η and the seed, and a run with
another seed or η does not resume it.  ``variance_noise`` (noise the other direction cannot
regenerate) is refused, as is η > 0 without a generator.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput

from lmsolvers.engine import Run, euler_step, lm_step, lm_step_inverse
from lmsolvers.families import bdia
from lmsolvers.grid import Grid
from lmsolvers.latent import Latent, LatentMismatchError, check_latent, freeze_context
from lmsolvers.method import LMMethod, StepCoefficients
from lmsolvers.registry import method_from_name
from lmsolvers.stochastic import StochasticMethod, StochasticPlan, noise_identity_of

from .diffusers import _check_prediction_type, resolve_state_dtype, to_epsilon, top_prediction
from .handoff import LatentHandoff, gather_rows
from .schedules import (
    Schedule,
    _summarise,
    alphas_cumprod_from_config,
    check_num_inference_steps,
    flow_time_shift,
    is_flow_config,
    schedule_from_scheduler,
    stretch_shift_to_terminal,
)

__all__ = [
    "BELMScheduler",
    "BELMInverseScheduler",
    "BELMSchedulerOutput",
    "InvertedLatentWarning",
    "LatentHandoff",
]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


class InvertedLatentWarning(UserWarning):
    """A sampling run starts from the ``x_T`` of an exact inversion without the rest of
    its latent: the result is not the inverse (docs/design.md §8)."""


class ClippingIgnoredWarning(UserWarning):
    """A config asks for ``clip_sample``/``thresholding``, which an exact scheduler ignores."""


@dataclass
class BELMSchedulerOutput(BaseOutput):
    """``prev_sample``: the next state in model space; ``pred_original_sample``: the
    prediction ``x̂_0 = (x − σ ε)/α`` at the step's node."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # what BaseOutput's generic loop does for these two fields, without its per-field
        # dataclasses.fields()/getattr walk (it costs as much as a step's arithmetic)
        OrderedDict.__setitem__(self, "prev_sample", self.prev_sample)
        if self.pred_original_sample is not None:
            OrderedDict.__setitem__(self, "pred_original_sample", self.pred_original_sample)


_HANDOFF = LatentHandoff()


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


def _finite(t: torch.Tensor) -> bool:
    """Every entry finite: one sum, the element-wise test only when the sum is not finite
    (NaN/Inf, or a sum that overflows: a false alarm costs time, never correctness)."""
    if math.isfinite(float(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def _no_eps(x: torch.Tensor, sigma_bar: float) -> torch.Tensor:
    raise RuntimeError("the scheduler takes ε from the pipeline's model output at each step; "
                       f"no step supplied ε at sigma_bar = {sigma_bar:.6g}")


def _timestep_value(timestep: Any) -> float:
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() != 1:
            raise ValueError(f"step takes one timestep, got a tensor of shape "
                             f"{tuple(timestep.shape)}")
        return float(timestep.item())
    return float(timestep)


def _check_tensor(x: Any, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got "
                        f"{type(x).__name__}" + (f" {x.dtype}" if isinstance(x, torch.Tensor)
                                                 else ""))


def _generator_seed(generator: Any) -> int | tuple[int, ...]:
    """The seed an η > 0 step keys its noise on: ``generator.initial_seed()`` (one per row for
    a list of generators)."""
    if generator is None:
        raise ValueError(
            "eta > 0 needs generator=torch.Generator().manual_seed(s) (a stock pipeline passes "
            "pipe(..., generator=...) to the scheduler): the noise of a stochastic step is "
            "regenerated from the generator's seed, so that the inverse run can subtract it")
    gens = list(generator) if isinstance(generator, list | tuple) else [generator]
    seeds = []
    for g in gens:
        if not isinstance(g, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator (or a list of them), got "
                            f"{type(g).__name__}: its seed keys the noise of eta > 0 steps")
        try:
            seeds.append(int(g.initial_seed()))
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"the generator's seed cannot be read ({exc}); pass "
                             "torch.Generator().manual_seed(s)") from exc
    return tuple(seeds) if isinstance(generator, list | tuple) else seeds[0]


def _check_eta(eta: Any) -> float:
    if type(eta) is float and 0.0 <= eta < math.inf:  # the per-step common case, fast
        return eta
    if isinstance(eta, bool) or not isinstance(eta, int | float | np.floating) \
            or not np.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number ≥ 0, got {eta!r}")
    return float(eta)


class _LMSchedulerBase(SchedulerMixin, ConfigMixin):
    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + [
        "FlowMatchEulerDiscreteScheduler", "DDIMInverseScheduler"]
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
        clip_sample: bool = False,
        set_alpha_to_one: bool | None = None,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str | None = None,
        flow: bool = False,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        shift_terminal: float | None = None,
        time_shift_type: str = "exponential",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        invert_sigmas: bool = False,
        stochastic_sampling: bool = False,
        method: str = "obelm",
        bdia_gamma: float = 1.0,
        state_dtype: str = "float64",
    ) -> None:
        self._shift = float(shift)  # before the flow probe below reads .shift
        if flow:
            if prediction_type == "epsilon":  # the default: a flow config has no such key
                self.register_to_config(prediction_type="flow")
            elif prediction_type != "flow":
                raise ValueError(f"a flow-matching config predicts the velocity "
                                 f"(prediction_type 'flow'), got {prediction_type!r}")
        elif prediction_type == "flow":
            raise ValueError("unsupported prediction_type 'flow' for a DDPM-family config: it "
                             "needs a flow-matching config (flow=True, or BELMScheduler."
                             "from_config(FlowMatchEulerDiscreteScheduler config))")
        _check_prediction_type(self.config.prediction_type)
        self._ptype = self.config.prediction_type
        if timestep_spacing not in ("leading", "trailing", "linspace"):
            raise ValueError(f"unsupported timestep_spacing {timestep_spacing!r} "
                             "(leading, trailing, linspace)")
        if state_dtype not in _DTYPES:
            raise ValueError(f"state_dtype must be one of {list(_DTYPES)}, got {state_dtype!r}")
        if not flow and (clip_sample or thresholding):
            warnings.warn(
                f"{type(self).__name__} ignores clip_sample/thresholding (set in this config): "
                "clipping x̂_0 is not invertible; the method runs unclipped",
                ClippingIgnoredWarning, stacklevel=3)
        if flow:
            # validates the flow options (invert_sigmas, stochastic_sampling, …) at once
            # probe with μ = 1: μ = 0 makes the 'linear' shift 0/0 at σ = 1 (CogView4's config)
            schedule_from_scheduler(self, 2, mu=1.0 if use_dynamic_shifting else None)
            self._ac64 = None
            self.betas = self.alphas = self.alphas_cumprod = self.final_alpha_cumprod = None
        else:
            #: the float64 table every grid is built from
            self._ac64 = alphas_cumprod_from_config(self.config)
            # the float32 tables diffusers exposes, computed by DDIMScheduler itself so that
            # code indexing them (add_noise, pipelines) gets DDIM's numbers bit for bit
            ref = DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                                beta_end=beta_end, beta_schedule=beta_schedule,
                                trained_betas=trained_betas,
                                rescale_betas_zero_snr=rescale_betas_zero_snr)
            self.betas, self.alphas = ref.betas, ref.alphas
            self.alphas_cumprod = ref.alphas_cumprod
            final = 1.0 if (set_alpha_to_one if set_alpha_to_one is not None else
                            final_sigmas_type in (None, "zero")) else float(self._ac64[0])
            self.final_alpha_cumprod = torch.tensor(final, dtype=torch.float32)
        self.init_noise_sigma = 1.0
        self._method = _scheduler_method(method, bdia_gamma)
        self._latent: Latent | None = None
        self.num_inference_steps: int | None = None
        self.timesteps: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None
        self.schedule: Schedule | None = None
        self.grid: Grid | None = None
        self._coeffs: StepCoefficients | None = None
        self._nodes: list[int] = []
        self._ts_values: list[float] = []
        self._begin_index: int | None = None
        self._reset()

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False,
                    **kwargs: Any) -> Any:
        """diffusers' ``from_config``; a flow-matching config (``FlowMatchEulerDiscrete``
        or a config with its keys) sets ``flow=True``, so SD3/FLUX pipelines get a flow
        scheduler from ``BELMScheduler.from_config(pipe.scheduler.config)``."""
        cfg = config
        if cfg is not None and not hasattr(cfg, "get") and hasattr(cfg, "config"):
            cfg = cfg.config
        if cfg is not None and "flow" not in kwargs and cfg.get("flow", None) is None \
                and is_flow_config(cfg):
            kwargs["flow"] = True
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs,
                                   **kwargs)

    # ----------------------------------------------------------- method / grid
    @property
    def method(self) -> LMMethod:
        """The core method (``set_method`` changes it and the config's ``method``)."""
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

    @property
    def is_flow(self) -> bool:
        """Whether this is a rectified-flow schedule (α = 1 − σ)."""
        return bool(self.config.flow)

    @property
    def shift(self) -> float:
        """The static shift of a flow config (as ``FlowMatchEulerDiscreteScheduler``:
        the config's, until :meth:`set_shift`)."""
        return self._shift

    def _flow_only(self, what: str) -> None:
        if not self.is_flow:
            raise AttributeError(f"{what} belongs to flow-matching configs "
                                 "(FlowMatchEulerDiscreteScheduler); this is a DDPM-family config")

    def set_shift(self, shift: float) -> None:
        """Use the static ``shift`` from the next ``set_timesteps`` on (flow configs; as
        ``FlowMatchEulerDiscreteScheduler.set_shift``, the config keeps its value)."""
        self._flow_only("set_shift")
        self._shift = float(shift)

    def time_shift(self, mu: float, sigma: float, t: Any) -> Any:
        """The dynamic shift of ``t`` by the config's ``time_shift_type`` (flow configs;
        :func:`~lmsolvers.adapters.schedules.flow_time_shift`)."""
        self._flow_only("time_shift")
        return flow_time_shift(self.config.time_shift_type, mu, sigma, t)

    def stretch_shift_to_terminal(self, t: Any) -> Any:
        """``t`` stretched to end at the config's ``shift_terminal`` (flow configs;
        :func:`~lmsolvers.adapters.schedules.stretch_shift_to_terminal`)."""
        self._flow_only("stretch_shift_to_terminal")
        return stretch_shift_to_terminal(t, self.config.shift_terminal)

    def index_for_timestep(self, timestep: Any, schedule_timesteps: Any = None) -> int:
        """The index of ``timestep`` in ``schedule_timesteps`` (default ``timesteps``), as
        diffusers' schedulers give it (the second match if it occurs twice)."""
        if schedule_timesteps is None:
            if self.timesteps is None:
                raise RuntimeError("call set_timesteps before index_for_timestep")
            schedule_timesteps = self.timesteps
        sched = torch.as_tensor(schedule_timesteps)
        t = torch.as_tensor(timestep).to(sched.device)
        indices = (sched == t).nonzero()
        if len(indices) == 0:
            raise ValueError(f"timestep {float(t):g} is not in the schedule "
                             f"{_summarise(sched)}")
        return int(indices[1 if len(indices) > 1 else 0].item())

    @property
    def step_index(self) -> int | None:
        """Index into ``timesteps`` of the next step (``None`` before a run starts; it grows
        by one per step, as in diffusers' multistep schedulers)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """Index into ``timesteps`` where runs start (``set_begin_index``), or ``None``."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start runs at ``timesteps[begin_index]`` (pipelines call this for img2img at
        strength < 1 and SDXL's ``denoising_start``); the method's starter step runs from
        that node.  ``set_timesteps`` resets it, as in diffusers."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, int | np.integer):
            raise TypeError(f"begin_index must be an int, got {begin_index!r}")
        if self.timesteps is not None and not 0 <= begin_index < len(self.timesteps):
            raise ValueError(f"begin_index {begin_index} is outside timesteps (length "
                             f"{len(self.timesteps)})")
        if begin_index < 0:
            raise ValueError(f"begin_index must be ≥ 0, got {begin_index}")
        self._begin_index = int(begin_index)

    def _prepare_method(self, m: LMMethod) -> StepCoefficients:
        return m.prepare(self.grid, _DTYPES[self.config.state_dtype], self._direction)

    def _build_schedule(self, num_inference_steps: Any, timesteps: Any, sigmas: Any,
                        mu: Any) -> None:
        n = None if num_inference_steps is None else check_num_inference_steps(
            num_inference_steps)
        sch = schedule_from_scheduler(self, n, timesteps=timesteps, sigmas=sigmas, mu=mu)
        if sch.top_timestep is not None and not self.is_flow:
            top_prediction(torch.zeros(1), torch.zeros(1), self.config.prediction_type)
        self.schedule, self.grid = sch, sch.grid
        # the per-node numbers a step reads, as Python floats (no numpy scalar per step)
        self._sbar = [float(v) for v in sch.grid.sigma_bar]
        self._alpha = [float(v) for v in sch.grid.alphas]
        self.num_inference_steps = sch.num_model_calls if self._direction == "forward" \
            else sch.grid.N
        self._coeffs = self._prepare_method(self._method)
        self._begin_index = None
        self._reset()

    def _set_timestep_table(self, values: Sequence[float], nodes: list[int],
                            device: Any) -> None:
        vals = np.asarray(values, dtype=np.float64)
        if self.is_flow or np.any(vals != np.round(vals)):
            t = torch.from_numpy(vals.astype(np.float32))
        else:
            t = torch.from_numpy(vals.astype(np.int64))
        self.timesteps = t.to(device)
        self._ts_values = [float(v) for v in t.tolist()]
        self._nodes = nodes
        if self.is_flow:  # σ at every timestep, then the terminal σ = 0 (FlowMatchEuler)
            g = self.grid
            top = self.schedule.top_sigma
            sig = [1.0 - float(g.alphas[m]) if m <= g.N else top for m in nodes]
            self.sigmas = torch.tensor(sig + [0.0], dtype=torch.float32)
            self.sigma_max, self.sigma_min = float(self.sigmas[0]), float(self.sigmas[-2])

    def _reset(self) -> None:
        """Forget the run in progress (not a loaded latent, not begin_index)."""
        self._run: Run | None = None
        self._step_index: int | None = None
        self._start_index: int | None = None
        self._entry: int | None = None
        self._shape: tuple[int, ...] | None = None
        #: rows of a partly handed-off batch: node → (row mask, the latent's states there)
        self._given: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        #: the run's stochastic form (η > 0) and its plan, or None
        self._sto: StochasticMethod | None = None
        self._sto_plan: StochasticPlan | None = None

    def _state_dtype(self, device: torch.device) -> torch.dtype:
        if device.type == "cpu":  # the common case, without the MPS fallback's check
            return _DTYPES[self.config.state_dtype]
        return resolve_state_dtype(_DTYPES[self.config.state_dtype], device)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Identity: the model input is ``x = α x̄`` itself."""
        return sample

    # ------------------------------------------------------------------- noise
    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """The forward process at ``timesteps`` (a tensor, one per batch entry):
        ``sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) n`` from the float32 table in the samples'
        dtype, on their device (DDIMScheduler's result exactly); flow configs
        ``(1 − σ) x_0 + σ n`` with ``σ = t/T``."""
        _check_tensor(original_samples, "original_samples")
        _check_tensor(noise, "noise")
        dev, dt = original_samples.device, original_samples.dtype
        timesteps = torch.as_tensor(timesteps).to(dev)
        if self.is_flow:
            s = (timesteps.to(torch.float32) / self.config.num_train_timesteps).to(dt).flatten()
            while s.dim() < original_samples.dim():
                s = s.unsqueeze(-1)
            return s * noise + (1.0 - s) * original_samples
        if timesteps.is_floating_point():
            if not bool((timesteps == timesteps.round()).all()):
                raise ValueError("add_noise takes integer training timesteps for a DDPM-family "
                                 f"config, got {timesteps.tolist()}")
            timesteps = timesteps.long()
        T = self.config.num_train_timesteps
        if bool(((timesteps < 0) | (timesteps >= T)).any()):
            raise ValueError(f"add_noise timesteps must lie in [0, {T - 1}], got "
                             f"{timesteps.tolist()}")
        ac = self.alphas_cumprod.to(device=dev, dtype=dt)
        a = (ac[timesteps] ** 0.5).flatten()
        s = ((1 - ac[timesteps]) ** 0.5).flatten()
        while a.dim() < original_samples.dim():
            a, s = a.unsqueeze(-1), s.unsqueeze(-1)
        return a * original_samples + s * noise

    def scale_noise(self, sample: torch.Tensor, timestep: Any,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
        """Flow matching's forward process ``σ n + (1 − σ) x_0`` at ``timestep``, with σ from
        this schedule (``begin_index``/``step_index`` as FlowMatchEulerDiscreteScheduler;
        SD3/FLUX img2img and inpaint call it)."""
        if not self.is_flow:
            raise AttributeError("scale_noise is the flow-matching forward process; this is a "
                                 "DDPM-family config (use add_noise)")
        if self.sigmas is None:
            raise RuntimeError("call set_timesteps before scale_noise")
        _check_tensor(sample, "sample")
        if noise is None:
            raise ValueError("scale_noise needs noise")
        timestep = torch.as_tensor(timestep).reshape(-1)
        if self._begin_index is None:
            idx = [self._index_of(_timestep_value(t)) for t in timestep]
        elif self._step_index is not None:
            idx = [self._step_index] * timestep.shape[0]
        else:
            idx = [self._begin_index] * timestep.shape[0]
        sig = self.sigmas.to(device=sample.device, dtype=sample.dtype)[idx].flatten()
        while sig.dim() < sample.dim():
            sig = sig.unsqueeze(-1)
        return sig * noise + (1.0 - sig) * sample

    def _index_of(self, t: float) -> int:
        try:
            return self._ts_values.index(t)
        except ValueError:
            kind = "sampling" if self._direction == "forward" else "inversion"
            raise ValueError(f"timestep {t:g} is not a {kind} timestep of this scheduler's "
                             f"grid {_summarise(self._ts_values)}; step through "
                             "scheduler.timesteps") from None

    # ------------------------------------------------------------ run bookkeeping
    def _check_call(self, model_output: Any, timestep: Any, sample: Any, eta: float,
                    variance_noise: Any) -> int:
        """Validate one ``step`` call before anything changes; return its timestep index."""
        _check_eta(eta)
        if variance_noise is not None:
            raise ValueError(
                "variance_noise cannot be regenerated by the other run of the exact pair "
                "(inversion or sampling); pass generator=torch.Generator().manual_seed(s) "
                "instead: an eta > 0 step keys its noise on the generator's seed")
        if self.grid is None:
            raise RuntimeError("call set_timesteps before step")
        _check_tensor(sample, "sample")
        _check_tensor(model_output, "model_output")
        t = float(timestep.item()) if type(timestep) is torch.Tensor and timestep.numel() == 1 \
            else _timestep_value(timestep)
        n = len(self._ts_values)
        in_run = self._step_index is not None and self._step_index < n
        if in_run:
            i = self._step_index
            if t != self._ts_values[i]:
                self._index_of(t)  # a timestep not on the grid at all says so
                raise ValueError(
                    f"step expected timestep {self._ts_values[i]:g} (timesteps[{i}]), got "
                    f"{t:g}: steps must follow scheduler.timesteps one by one, in order (no "
                    "skipped, repeated or reordered timesteps); call set_timesteps(...) to "
                    "abandon this run and start a new one")
            if tuple(sample.shape) != self._shape:
                raise ValueError(
                    f"sample has shape {tuple(sample.shape)} but this run started with shape "
                    f"{self._shape}: the batch size (or shape) cannot change in mid-run; call "
                    "set_timesteps(...) to start a new run")
        elif self._step_index == n and n and t == self._ts_values[-1] and (
                self._begin_index is None or self._begin_index != n - 1):
            raise ValueError(
                f"step at timestep {t:g} again: the run already ended with that step "
                f"(timesteps[{n - 1}]), and a repeated timestep is an error (docs/design.md "
                "§8); start a new run at timesteps[0] (or call set_timesteps(...))")
        elif self._begin_index is not None:
            i = self._begin_index
            if t != self._ts_values[i]:
                raise ValueError(f"set_begin_index({i}) starts runs at timesteps[{i}] = "
                                 f"{self._ts_values[i]:g}, but the first step came at {t:g}")
        else:
            i = self._index_of(t)
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)} but sample has shape "
                f"{tuple(sample.shape)} (with classifier-free guidance, combine the two halves "
                "of the batch before calling step)")
        return i

    def _new_run(self, sample: torch.Tensor, dtype: torch.dtype, index: int) -> Run:
        run = Run(_no_eps, self.grid, sample.to(dtype), check_finite=True, callback=None,
                  disable=True, desc="", total=0)
        self._run, self._shape = run, tuple(sample.shape)
        self._start_index = index
        if self._sto is not None:
            self._sto.attach(run)
        return run

    def _run_noise(self, eta: float, generator: Any, starting: bool,
                   dtype: torch.dtype) -> StochasticMethod | None:
        """The run's stochastic form: set up when a run starts (η > 0: the method with DDIM's
        η-law, seeded by the generator), afterwards checked to stay the same."""
        if not starting and self._sto is None and eta == 0.0:  # a deterministic run goes on
            return None
        eta = _check_eta(eta)
        if starting:
            self._sto = self._sto_plan = None
            if eta > 0.0:
                sto = StochasticMethod(self._method, eta, "ddim", _generator_seed(generator))
                self._sto_plan = sto.prepare(self.grid, dtype, self._direction)
                self._sto = sto
            return self._sto
        run_eta = 0.0 if self._sto is None else self._sto.eta
        if eta != run_eta:
            raise ValueError(f"eta changed from {run_eta!r} to {eta!r} in mid-run; pass one eta "
                             "for the whole run (set_timesteps(...) starts a new one)")
        if self._sto is not None and _generator_seed(generator) != self._sto.seed:
            raise ValueError("the generator's seed changed in mid-run; pass one generator for "
                             "the whole run")
        return self._sto

    def _run_method(self) -> LMMethod | StochasticMethod:
        """The method the run in progress applies (its stochastic form for η > 0)."""
        return self._method if self._sto is None else self._sto

    def _node_eps(self, model_output: torch.Tensor, sample: torch.Tensor, m: int,
                  dtype: torch.dtype) -> torch.Tensor:
        ptype = self._ptype
        if ptype == "epsilon":  # the common case: ε is the model output, one cast
            # checked before the cast: the model's dtype has fewer bytes to sum, and a
            # finite value stays finite when widened
            if not _finite(model_output):
                raise FloatingPointError(f"the model output is NaN/Inf at timestep "
                                         f"{self._node_timestep(m):g} (node {m})")
            return model_output.to(dtype)
        else:
            alpha = self._alpha[m]
            out = to_epsilon(model_output.to(dtype), sample.to(dtype), alpha,
                             alpha * self._sbar[m], ptype)
        if not _finite(out):
            raise FloatingPointError(f"the model output is NaN/Inf at timestep "
                                     f"{self._node_timestep(m):g} (node {m})")
        return out

    def _node_timestep(self, m: int) -> float:
        return self._ts_values[self._nodes.index(m)] if m in self._nodes \
            else float(self.grid.timesteps[m])

    def _x0_pred(self, m: int, eps: torch.Tensor, like: torch.Tensor,
                 model_output: torch.Tensor) -> torch.Tensor:
        """``x̂_0 = x̄_m − σ̄_m ε`` (= ``(x − σ ε)/α``), in the pipeline's dtype: for an
        ε-prediction from the pipeline's own tensors, as DDIM computes it (two passes in
        its dtype), else from the state."""
        sbar = self._sbar[m]
        if self._ptype == "epsilon" and model_output.dtype == like.dtype:
            alpha = self._alpha[m]
            return torch.add(like, model_output, alpha=-alpha * sbar).mul_(1.0 / alpha)
        return torch.add(self._run.window[m], eps, alpha=-sbar).to(like.dtype)

    def _to_model(self, xbar: torch.Tensor, m: int, like: torch.Tensor) -> torch.Tensor:
        """``x = α_m x̄_m`` in the pipeline's dtype (rounded once, from the state dtype)."""
        return torch.mul(xbar, self._alpha[m], out=torch.empty_like(like))

    def _sync_state(self, m: int, sample: torch.Tensor, dtype: torch.dtype) -> None:
        """Keep the stored state at node m unless the pipeline changed ``latents``."""
        w = self._run.window
        try:
            out = w.aux(m)
        except KeyError:
            out = None
        if out is not None and (out is sample or torch.equal(out, sample.to(out.device))):
            return
        warnings.warn(f"latents at timestep {self._node_timestep(m):g} differ from what the "
                      "scheduler returned; continuing from the given latents",
                      RuntimeWarning, stacklevel=3)
        w.put(m, sample.to(dtype) / float(self.grid.alphas[m]), aux=sample)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


def _keeps_noise_rows(latent: Latent, j: int, i: int, batch: int) -> bool:
    """Whether row j of a handed-off ``latent``, passed as row i of a batch of ``batch``
    rows, keeps its noise: always for a deterministic or a per-row-seeded inversion; for one
    seed (row b's noise keyed by (seed, b)) only at the same position in a batch of the same
    size."""
    seed = dict(latent.noise).get("seed") if latent.noise else None
    if seed is None or isinstance(seed, tuple):
        return True
    return i == j and latent.states[0].shape[0] == batch


class BELMScheduler(_LMSchedulerBase):
    """A diffusers scheduler that samples with a core linear multistep method (O-BELM).

    ``from_config`` accepts DDIM, PNDM, DPM-Solver, Euler, … configs (β schedule,
    ``timestep_spacing``, ``steps_offset``, ``set_alpha_to_one``/``final_sigmas_type``,
    ``prediction_type``, ``rescale_betas_zero_snr``) and ``FlowMatchEulerDiscreteScheduler``
    configs (``shift``, dynamic shifting, …: ``flow=True``); extra keys are ignored.
    ``method`` is a name parsed by :func:`~lmsolvers.method_from_name` (``"obelm"``,
    ``"ddim"``, ``"bdia(0.5)"``, …; bare ``"bdia"`` takes ``bdia_gamma``).  One network
    evaluation per step (``order = 1``).  Step at node m (the pipeline's ``timestep``,
    looked up in the grid's table) computes, in ``state_dtype``, the method's relation

        ``x̄_{m−1} = Σ_j a_{m,j} x̄_{m−1+j} + Σ_j b_{m,j} h_{m−1+j} ε̄_{m−1+j}``

    (the first k − 1 steps of a run use the method's starter from the node the run enters
    at: DDIM, ``x̄_{m−1} = x̄_m − h_m ε̄_m``, or for exponential methods the exponential
    Adams–Bashforth steps of orders 1, 2, all at grid nodes) and returns
    ``x_{m−1} = α_{m−1} x̄_{m−1}`` in the dtype of ``sample``.  At an α = 0 top node the step
    is the entry step ``x̄_N = x̂_0 + σ̄_N ε̂``.  A run that starts from (rows of) the output
    of a :class:`BELMInverseScheduler` at the node it reached (found by content in
    :attr:`handoff`) resumes the full latent of each such row; see the module docstring.
    """

    #: the process-wide hand-off registry shared with :class:`BELMInverseScheduler`
    handoff: LatentHandoff = _HANDOFF

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None, *,
                      timesteps: Sequence[float] | None = None,
                      sigmas: Sequence[float] | None = None,
                      mu: float | None = None) -> None:
        """Build the schedule and set ``timesteps`` (descending: the α = 0 top node if any,
        then nodes N … 1) and, for flow configs, ``sigmas`` (σ at each timestep, then 0).
        Custom ``timesteps``/``sigmas`` are any strictly decreasing list (see
        :func:`~lmsolvers.adapters.schedules.schedule_from_scheduler`); ``mu`` is the
        dynamic shift of a flow config.  Starts a new run, resets ``begin_index`` (a loaded
        latent stays loaded)."""
        self._build_schedule(num_inference_steps, timesteps, sigmas, mu)
        g, sch = self.grid, self.schedule
        nodes = list(range(g.N, 0, -1))
        values = [float(v) for v in g.timesteps[1:][::-1]]
        if sch.top_timestep is not None:
            nodes, values = [g.N + 1] + nodes, [sch.top_timestep] + values
        if sch.final_zero_step:  # t = 0 onto ᾱ_0: the pipeline takes it, as with DDIM
            nodes, values = nodes + [0], values + [float(g.timesteps[0])]
        self._set_timestep_table(values, nodes, device)
        self.num_inference_steps = len(values)

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

    def _check_latent(self, latent: Latent, grid: Grid, loading: bool = False) -> None:
        m = self._run_method()
        if loading and latent.noise:  # η and the seed are checked when a run starts
            noise = dict(latent.noise)
            m = StochasticMethod(self._method, noise.get("eta", 1.0), noise.get("law", "ddim"),
                                 noise.get("seed"))
        check_latent(latent, grid, m.key, m.name, self._latent_context(latent), m.k,
                     noise=noise_identity_of(m))

    def load_latent(self, latent: Latent, dtype: torch.dtype = torch.float32,
                    device: str | torch.device | None = None) -> torch.Tensor:
        """Resume sampling runs from a full inverted latent; returns the ``latents`` to pass.

        Checks at once that this scheduler's config can produce the latent's grid (every
        node; the grid of the last ``set_timesteps`` if it has the latent's size, else the
        config's grid of that size), runs its method and has its prediction type
        (:class:`~lmsolvers.LatentMismatchError` saying what differs, before anything is
        stored), stores it and returns ``x_N = α_N x̄_N`` in ``dtype`` on ``device``.
        Each later run starting at the top of the grid from that tensor takes its states
        from the latent, after checking it against the run's grid; a run from other
        ``latents`` is refused until :meth:`clear_latent`.
        """
        if not isinstance(latent, Latent):
            raise TypeError(f"expected an lmsolvers Latent, got {type(latent).__name__}")
        N = latent.grid.N
        grids: list[tuple[str, Grid]] = []
        if self.grid is not None and self.grid.N == N:
            grids.append(("the grid of the last set_timesteps", self.grid))
        else:
            # linspace onto ᾱ_0 drops a zero step, an α = 0 top node is not a grid node:
            # n steps can give N = n − 1
            for n in (N, N + 1):
                try:
                    g = schedule_from_scheduler(self, n).grid
                except ValueError:
                    continue
                if g.N == N:
                    grids.append((f"this config's grid for num_inference_steps = {n}", g))
        if not grids:
            raise ValueError(f"this scheduler's config has no grid of {N} steps, the "
                             "latent's (a dynamically shifted flow config needs "
                             "set_timesteps(..., mu=...) before load_latent)")
        errors = []
        for what, g in grids:
            try:
                self._check_latent(latent, g, loading=True)
                break
            except LatentMismatchError as exc:
                errors.append((what, exc))
        else:
            what, exc = errors[0]
            raise LatentMismatchError(
                f"{exc} [load_latent compared the latent with {what}: a latent resumes only "
                "under the scheduler config it was inverted with]") from None
        self._latent = latent
        x_N = latent.x_N
        dev = torch.device(device) if device is not None else x_N.device
        alpha = float(latent.grid.alphas[-1])
        return (x_N.to(dev, self._state_dtype(dev)) * alpha).to(dtype)

    def _resume(self, latent: Latent, sample: torch.Tensor, dtype: torch.dtype,
                index: int) -> Run:
        top = latent.nodes[-1]
        states = [st.to(sample.device, dtype) for st in latent.states]
        run = self._new_run(sample, dtype, index)
        for m, st in zip(latent.nodes, states, strict=True):
            run.window.put(m, st, aux=self._to_model(st, m, sample) if m == top else None)
        self._entry = top
        return run

    def _start(self, sample: torch.Tensor, dtype: torch.dtype, index: int) -> Run:
        """Validate the run's start (a loaded or handed-off latent first), fill the window."""
        g, k, N = self.grid, self._method.k, self.grid.N
        node = self._nodes[index]
        at_top = index == 0
        latent = self.loaded_latent
        if latent is not None:
            if not at_top:
                raise ValueError(
                    f"a latent is loaded, but this run starts at timesteps[{index}] "
                    f"= {self._ts_values[index]:g}, not at the top of the grid; call "
                    "scheduler.clear_latent() to start in mid-schedule")
            self._check_latent(latent, g)
            top = self._to_model(latent.states[-1].to(sample.device, dtype), N, sample)
            if top.shape != sample.shape or not torch.equal(top, sample):
                raise ValueError(
                    "a latent is loaded, but the latents passed to the pipeline are not its x_T; "
                    "pass latents=scheduler.load_latent(latent, dtype=unet.dtype), or call "
                    "scheduler.clear_latent() to sample from other noise")
            return self._resume(latent, sample, dtype, index)
        entered = min(node, N)  # the α = 0 node enters the grid at node N
        given = self._handed_off(sample, entered)
        if given is not None and bool(given[0].all()):
            return self._resume(given[1], sample, dtype, index)
        if k > 1 and self._method.starter == "rk4" and self._sto is None:
            raise ValueError(
                f"method {self._method.name!r} starts with an RK4 starter, which needs "
                "evaluations between grid nodes; a pipeline gives one per node. Sample it "
                "with DiffusionSampler, or from a full latent (load_latent)")
        run = self._new_run(sample, dtype, index)
        if given is not None:  # some rows resume their inversion, the others start afresh
            mask, latent = given
            rows = mask.to(sample.device).view(-1, *([1] * (sample.dim() - 1)))
            self._given = {m: (rows, st.to(sample.device, dtype))
                           for m, st in zip(latent.nodes, latent.states, strict=True)}
        if node <= N:
            run.window.put(node, self._given_rows(node, sample.to(dtype) / float(g.alphas[node])),
                           aux=sample)
            self._entry = node
        else:
            self._entry = N
        return run

    def _given_rows(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """``x`` at node m, with the rows a handed-off latent gives taken from it."""
        if m not in self._given:
            return x
        rows, st = self._given.pop(m)
        return torch.where(rows, st, x)

    def _handed_off(self, sample: torch.Tensor, entered: int
                    ) -> tuple[torch.Tensor, Latent] | None:
        """The rows of ``sample`` that are inverted states this run can resume, as
        ``(row mask, their latent)`` (``None``: none); warns (InvertedLatentWarning) for rows
        that are, or were, inverted states it cannot resume."""
        match = self.handoff.match(sample)
        if not match.any_seen:
            return None
        g = self.grid
        fits: dict[int, LatentMismatchError | None] = {}
        for row in match.rows:
            if row is None or id(row[0]) in fits:
                continue
            lat = row[0]
            try:
                self._check_latent(lat, g)
                if lat.nodes[-1] != entered:
                    raise LatentMismatchError(
                        f"it is the inverted state at node {lat.nodes[-1]} (timestep "
                        f"{float(g.timesteps[lat.nodes[-1]]):g}) but this run starts at "
                        f"node {entered}")
                fits[id(lat)] = None
            except LatentMismatchError as exc:
                fits[id(lat)] = exc
        for exc in dict.fromkeys(e for e in fits.values() if e is not None):
            warnings.warn(
                f"these latents are an output of a BELMInverseScheduler run, but its "
                f"latent does not fit this run ({exc}); sampling from this one state, "
                "which is NOT the inverse. Sample with the inversion's scheduler config, "
                "steps and method, from the node the inversion ended at",
                InvertedLatentWarning, stacklevel=5)
        lost = [i for i, (row, seen) in enumerate(zip(match.rows, match.seen, strict=True))
                if row is None and seen]
        if lost:
            warnings.warn(
                f"rows {lost} of these latents are (or were) an output of a "
                "BELMInverseScheduler run whose latent is no longer registered (an earlier "
                "node of an inversion that went on, an inverted state edited since, or an "
                f"inversion evicted: LatentHandoff keeps the last {self.handoff.capacity}); "
                "sampling from one state is NOT the inverse. Keep the inverse scheduler's "
                ".latent and pass latents=scheduler.load_latent(latent)",
                InvertedLatentWarning, stacklevel=5)
        ok = [row is not None and fits[id(row[0])] is None for row in match.rows]
        moved = [i for i, row in enumerate(match.rows)
                 if ok[i] and not _keeps_noise_rows(row[0], row[1], i, len(match.rows))]
        if moved:
            warnings.warn(
                f"rows {moved} of these latents are rows of a stochastic (eta > 0) inversion "
                "with one generator seed, whose noise is keyed by the row's position in its "
                "batch; at another position or in a batch of another size the noise differs, "
                "so sampling them is NOT the inverse. Pass the inverted batch whole and in its "
                "order, or use one generator per row (generator=[torch.Generator()."
                "manual_seed(s) for s in seeds]) for both runs", InvertedLatentWarning,
                stacklevel=5)
            ok = [use and i not in moved for i, use in enumerate(ok)]
        if not any(ok):
            return None
        picked = [row for row, use in zip(match.rows, ok, strict=True) if use]
        latent = gather_rows(picked)  # type: ignore[arg-type]
        if not all(ok):  # rows without a latent keep a placeholder (masked out)
            it = iter(range(len(picked)))
            index = torch.tensor([next(it) if use else 0 for use in ok])
            latent = latent.with_states(tuple(st[index] for st in latent.states))
        return torch.tensor(ok), latent

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | float | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> BELMSchedulerOutput | tuple:
        """One step from the node of ``timestep`` down to the next node of the grid.

        DDIMScheduler's signature.  ``eta > 0`` runs the method's stochastic form with DDIM's
        η-law and needs ``generator`` (its seed keys the noise: module docstring);
        ``variance_noise`` is refused (the inverse run could not regenerate it); one η and
        one seed per run.  ``use_clipped_model_output`` has nothing to act on (no clipping).
        ``timestep`` must be the next entry of ``timesteps`` (the first one of a run may be
        any entry, or ``timesteps[begin_index]``), and ``sample``/``model_output`` keep the
        run's shape; otherwise ``ValueError``.
        """
        i = self._check_call(model_output, timestep, sample, eta, variance_noise)
        g, k, N = self.grid, self._method.k, self.grid.N
        dtype = self._state_dtype(sample.device)
        m = self._nodes[i]
        starting = not (self._step_index is not None and self._step_index < len(self._nodes))
        sto = self._run_noise(eta, generator, starting, dtype)
        if starting:
            run = self._start(sample, dtype, i)
        else:
            run = self._run
            if m <= N:
                self._sync_state(m, sample, dtype)
        w = run.window
        if m > N:  # the α = 0 top node: the entry step onto node N (docs/design.md §9)
            if N not in w:
                x0, eps = top_prediction(model_output.to(dtype), sample.to(dtype),
                                         self.config.prediction_type)
                if not bool(torch.isfinite(x0).all() and torch.isfinite(eps).all()):
                    raise FloatingPointError("the model output is NaN/Inf at the α = 0 top "
                                             f"timestep {self._ts_values[i]:g}")
                xN = self._given_rows(N, x0 + float(g.sigma_bar[N]) * eps)
                prev = self._to_model(xN, N, sample)
                w.put(N, xN, aux=prev)
                x0 = x0.to(sample.dtype)
            else:  # resumed from a latent: x̄_N is given
                prev = w.aux(N)
                x0 = top_prediction(model_output, sample, self.config.prediction_type)[0]
            return self._finish(i, prev, x0, return_dict)
        eps_m = self._node_eps(model_output, sample, m, dtype)
        w.set_eps(m, eps_m)
        if m == 0:  # the zero step of a list ending at t = 0 onto ᾱ_0: the state stays
            x0 = self._x0_pred(0, eps_m, sample, model_output)
            return self._finish(i, sample.clone(), x0, return_dict)
        r = m - 1
        if r in w:  # given by a loaded latent
            xr = w[r]
        elif m > self._entry - k + 1:  # starter from the node the run entered at
            if sto is not None:
                xr = sto.noisy_starter(run, self._sto_plan, m, r)
            else:
                xr = self._method.starter_state(w, m, r)
        else:
            xr = lm_step(self._coeffs if sto is None else self._sto_plan.coeffs, r, w)
        if self._given:  # rows resumed from a handed-off latent
            xr = self._given_rows(r, xr)
        x0 = self._x0_pred(m, eps_m, sample, model_output)
        prev = self._to_model(xr, r, sample)
        w.put(r, xr, aux=prev)
        for old in [n for n in w.nodes if n >= r + k]:
            w.drop(old)
        return self._finish(i, prev, x0, return_dict)

    def _finish(self, i: int, prev: torch.Tensor, x0: torch.Tensor,
                return_dict: bool) -> BELMSchedulerOutput | tuple:
        self._step_index = i + 1
        if not return_dict:
            return (prev, x0)
        return BELMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)


class BELMInverseScheduler(_LMSchedulerBase):
    """Exact inversion in a diffusers-style loop (cf. ``DDIMInverseScheduler``).

    ``timesteps`` ascend over the finite nodes 0 … N−1 (an α = 0 top node is never
    reached: the inversion ends at node N, and its output there is the top state of the
    latent); the model is evaluated at the current state and its timestep, and ``step``
    returns the state one node up, solving the method's relation for its farthest node,
    ``x̄_{r+k} = (x̄_r − Σ_{j<k} a_{r+1,j} x̄_{r+j} − Σ_{j<k} b_{r+1,j} h ε̄_{r+j}) / a_{r+1,k}``
    (the first k − 1 steps of a run — from node 0 or ``timesteps[begin_index]`` — run the
    DDIM starter upwards, whatever the method's starter: that part of an inversion is
    approximate and does not matter, docs/design.md §3).  Steps follow ``timesteps`` in
    order, as for :class:`BELMScheduler`.  After the last step :attr:`latent` is the
    :class:`~lmsolvers.Latent` to sample back from; every step (if ``register_latents``,
    the default) registers the latent so far in :attr:`handoff` (one place per inversion,
    replaced at each step), so that a :class:`BELMScheduler` run started from that output,
    or rows of it, at that node resumes it exactly.  Its
    context records only the prediction type (the scheduler cannot see the guidance):
    ``DiffusionSampler.sample`` takes it after ``latent.with_context(sampler.context)``.
    """

    _direction = "backward"
    #: the process-wide hand-off registry shared with :class:`BELMScheduler`
    handoff: LatentHandoff = _HANDOFF
    #: register finished latents in :attr:`handoff` (set ``False`` on a class or instance
    #: to keep inversions out of the registry)
    register_latents: bool = True

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None, *,
                      timesteps: Sequence[float] | None = None,
                      sigmas: Sequence[float] | None = None,
                      mu: float | None = None) -> None:
        """Build the schedule (same arguments as :meth:`BELMScheduler.set_timesteps`, in
        sampling order) and set ``timesteps`` (ascending: nodes 0 … N−1); starts a new run."""
        self._build_schedule(num_inference_steps, timesteps, sigmas, mu)
        g = self.grid
        self._set_timestep_table([float(v) for v in g.timesteps[:-1]], list(range(g.N)),
                                 device)

    def _reset(self) -> None:
        super()._reset()
        self.latent: Latent | None = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | float | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> BELMSchedulerOutput | tuple:
        """One inversion step from the current node to the next (noisier) one (the
        arguments as :meth:`BELMScheduler.step`)."""
        i = self._check_call(model_output, timestep, sample, eta, variance_noise)
        g, k, N = self.grid, self._method.k, self.grid.N
        dtype = self._state_dtype(sample.device)
        m = self._nodes[i]
        starting = not (self._step_index is not None and self._step_index < len(self._nodes))
        sto = self._run_noise(eta, generator, starting, dtype)
        if starting:
            run = self._new_run(sample, dtype, i)
            run.window.put(m, sample.to(dtype) / self._alpha[m], aux=sample)
            self._entry = m
            self.latent = None
            # one place in the hand-off registry per inversion, whatever its length
            self._handoff_run = self.handoff.new_run()
            self._context = freeze_context({"prediction_type": self._ptype})
        else:
            run = self._run
            self._sync_state(m, sample, dtype)
        w = run.window
        eps_m = self._node_eps(model_output, sample, m, dtype)
        w.set_eps(m, eps_m)
        if m < self._entry + k - 1 and sto is not None and self._sbar[m] > 0.0:
            xn = sto.noisy_starter(run, self._sto_plan, m, m + 1)
        elif m < self._entry + k - 1:
            xn = euler_step(w[m], self._sbar[m + 1] - self._sbar[m], eps_m)
        else:
            xn = lm_step_inverse(self._coeffs if sto is None else self._sto_plan.coeffs,
                                 m + 1 - k, w)
        x0 = self._x0_pred(m, eps_m, sample, model_output)
        if m >= self._entry + k - 1:
            w.drop(m + 1 - k)
        nxt = self._to_model(xn, m + 1, sample)
        w.put(m + 1, xn, aux=nxt)
        self._step_index = i + 1
        if m + 1 - self._entry >= k - 1:
            # the k states ending at node m + 1: the latent of a (partial) inversion that
            # stops here — DiffEdit or img2img at strength < 1 resume from it mid-schedule.
            # Built only when asked for (the hand-off registry calls it on a match).
            nodes = tuple(range(m + 2 - k, m + 2))
            ident = self._run_method()
            part = functools.partial(Latent, tuple([w[j] for j in nodes]), ident.name, ident.key,
                                     g, self._context, nodes, noise=noise_identity_of(ident) or ())
            if m + 1 == N:
                self.latent = part()
            if self.register_latents:
                self.handoff.register(nxt, part, run=self._handoff_run)
        if not return_dict:
            return (nxt, x0)
        return BELMSchedulerOutput(prev_sample=nxt, pred_original_sample=x0)
