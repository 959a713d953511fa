"""Sampling schedules of diffusers scheduler configs as σ̄ grids (docs/design.md §8).

* :func:`alphas_cumprod_from_config` – the training table ``ᾱ_t`` of any config;
* :func:`schedule_from_scheduler` – the :class:`Schedule` a config defines for
  ``num_inference_steps`` (or custom ``timesteps``/``sigmas``, and FLUX's ``mu``): its
  :class:`~lmsolvers.Grid` of finite nodes with every node's model timestep, and the model
  timestep of an ``α = 0`` top node above the grid, if there is one;
* :func:`grid_from_scheduler`, :func:`top_timestep` – its two halves;
* :func:`is_flow_config` – rectified-flow (``FlowMatchEulerDiscreteScheduler``) configs.

DDPM-family configs (β schedule, timestep spacing, ``steps_offset``, final ᾱ) give nodes
``σ̄_t = sqrt((1 − ᾱ_t)/ᾱ_t)``; flow configs (``shift``, dynamic shifting with ``μ``,
``shift_terminal``, Karras/exponential/beta sigmas, custom sigmas) give the stock
scheduler's float32 sigmas with ``α = 1 − σ``, ``σ̄ = σ/(1 − σ)`` (docs/design.md §9).

A top node with ``α = 0`` (zero terminal SNR at ``t = T − 1``; flow matching at σ = 1;
σ̄ = ∞) is never a grid node: the grid holds the finite nodes 0..N, and a run enters it
from the top node by the limit of the DDIM step as ``σ̄_top → ∞``,
``x̄_N = x̂_0 + σ̄_N ε̂`` with ``(x̂_0, ε̂)`` from
:func:`~lmsolvers.adapters.diffusers.top_prediction` (docs/design.md §9).  The exact
latent lives on the finite nodes; ``x_T`` itself is not part of it (inverting the entry
step would divide by α = 0).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmsolvers.grid import (
    Grid,
    alphas_cumprod_from_betas,
    linear_betas,
    scaled_linear_betas,
    spaced_timesteps,
)

__all__ = [
    "Schedule",
    "alphas_cumprod_from_config",
    "schedule_from_scheduler",
    "grid_from_scheduler",
    "top_timestep",
    "is_flow_config",
    "check_num_inference_steps",
    "flow_time_shift",
    "stretch_shift_to_terminal",
]


@dataclass(frozen=True)
class Schedule:
    """A sampling schedule: the finite grid and the ``α = 0`` node above it, if any.

    ``grid`` holds nodes 0..N (finite σ̄, each with its model timestep and α);
    ``top_timestep`` is the model timestep of a top node with ``α = 0`` (σ̄ = ∞) above
    node N — a sampling run then makes N + 1 model calls, the first at ``top_timestep``
    (the entry step ``x̄_N = x̂_0 + σ̄_N ε̂``) — or ``None`` when node N is the top.
    ``flow`` marks a rectified-flow schedule (α = 1 − σ); ``top_sigma`` is then the stock
    scheduler's float32 σ of the top node (1, or 1 ± 2⁻²⁴…2⁻²³ when a float32 shift rounds it:
    within 2⁻²² of 1 the node counts as α = 0, and the entry step treats it as σ = 1, an
    error of float32 round-off).
    """

    grid: Grid
    top_timestep: float | None = None
    flow: bool = False
    top_sigma: float | None = None
    #: the timestep list ends at t = 0 onto ᾱ_0 (``set_alpha_to_one=False``): a zero step
    #: the grid omits, which a pipeline still takes (diffusers runs it as a no-op)
    final_zero_step: bool = False

    @property
    def num_model_calls(self) -> int:
        """Model evaluations of a sampling run: ``N``, plus one at the α = 0 top node."""
        return self.grid.N + (self.top_timestep is not None)


def _summarise(values: Sequence[Any] | np.ndarray | torch.Tensor, head: int = 3,
              tail: int = 3, what: str = "timesteps") -> str:
    """``[a, b, c, …, x, y, z] (n timesteps)``: a long list in an error message, shortened."""
    vals = values.tolist() if hasattr(values, "tolist") else list(values)
    vals = [int(v) if float(v).is_integer() else v for v in vals]
    if len(vals) <= head + tail:
        return f"{vals} ({len(vals)} {what})"
    shown = ", ".join(map(str, vals[:head] + ["…"] + vals[-tail:]))
    return f"[{shown}] ({len(vals)} {what})"


def check_num_inference_steps(n: Any) -> int:
    """``n`` as an ``int`` ≥ 1; refuses fractions (10.7 is not silently 10), bools, strings."""
    if isinstance(n, bool) or not isinstance(n, numbers.Real) and not (
            isinstance(n, torch.Tensor) and n.numel() == 1):
        raise TypeError(f"num_inference_steps must be a positive integer, got "
                        f"{type(n).__name__} {n!r}")
    value = float(n)
    if not value.is_integer() or value < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {n!r}"
                         + (" (a fraction would silently run fewer steps)"
                            if math.isfinite(value) and not value.is_integer() else ""))
    return int(value)


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
    # ᾱ_{T−1} = 0 exactly (diffusers' Euler uses 2⁻²⁴ to keep σ̄ finite, which shifts
    # the top step by ~1e-4): the α = 0 node is handled by the entry step (§9)
    out[-1] = 0.0
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
    if np.any(betas < 0) or np.any(betas > 1) or not np.all(np.isfinite(betas)):
        bad = np.flatnonzero(~((betas >= 0) & (betas <= 1)))
        raise ValueError(f"betas must lie in [0, 1]; this config gives β = {betas[bad[0]]!r} at "
                         f"t = {int(bad[0])} (beta_start {b0}, beta_end {b1}, schedule "
                         f"{schedule!r}): ᾱ would turn negative")
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


# ---------------------------------------------------------------- flow matching
#: config keys a rectified-flow scheduler (FlowMatchEulerDiscreteScheduler) has and a
#: DDPM-family config lacks
_FLOW_KEYS = ("shift", "use_dynamic_shifting", "base_shift", "max_shift", "shift_terminal",
              "time_shift_type")


def is_flow_config(scheduler: Any) -> bool:
    """Whether ``scheduler`` (object or config) is a rectified-flow schedule
    ``x_σ = (1 − σ) x_0 + σ ε`` (``FlowMatchEulerDiscreteScheduler`` and configs made from
    it): its class name starts with ``FlowMatch``, or it has flow keys (``shift``,
    ``use_dynamic_shifting``, …) and no ``beta_schedule``/``trained_betas``.  A
    :class:`~lmsolvers.adapters.BELMScheduler` says so in its ``flow`` config entry."""
    cfg = _config_of(scheduler)
    flag = cfg.get("flow", None)
    if flag is not None:
        return bool(flag)
    name = str(cfg.get("_class_name", "") or "")
    if name.startswith("FlowMatch"):
        return True
    if cfg.get("use_flow_sigmas", False):
        raise ValueError("configs with use_flow_sigmas (DPM-Solver/UniPC on flow sigmas) are "
                         "not supported by grid_from_scheduler; build the grid from a "
                         "FlowMatchEulerDiscreteScheduler config with the same shift")
    has_beta = cfg.get("beta_schedule", None) is not None or cfg.get("trained_betas") is not None
    return not has_beta and any(k in cfg for k in _FLOW_KEYS)


def flow_time_shift(time_shift_type: str, mu: float, sigma: float, t: Any) -> Any:
    """FlowMatchEulerDiscreteScheduler's dynamic shift of sigmas ``t``: ``'exponential'``
    ``e^μ/(e^μ + (1/t − 1)^σ)``, ``'linear'`` ``μ/(μ + (1/t − 1)^σ)``."""
    if time_shift_type == "exponential":
        e = math.exp(mu)
    elif time_shift_type == "linear":
        e = mu
    else:
        raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got "
                         f"{time_shift_type!r}")
    return e / (e + (1 / t - 1) ** sigma)


def stretch_shift_to_terminal(t: Any, shift_terminal: float) -> Any:
    """FlowMatchEulerDiscreteScheduler's ``shift_terminal`` stretch: the sigmas ``t``
    rescaled in ``1 − t`` so that the last one is ``shift_terminal``."""
    one_minus = 1 - t
    return 1 - one_minus / (one_minus[-1] / (1 - shift_terminal))


def _flow_sigma_range(cfg: Mapping[str, Any], shift: float) -> tuple[float, float]:
    """``(σ_max, σ_min)`` a FlowMatchEulerDiscreteScheduler takes from its training table:
    ``σ = t/T`` for t = T … 1 in float32, shifted by ``shift σ/(1 + (shift − 1) σ)``
    (in float32) unless the shift is dynamic."""
    T = int(cfg.get("num_train_timesteps", 1000))
    s = np.array([T, 1], dtype=np.float32) / np.float32(T)
    if not cfg.get("use_dynamic_shifting", False):
        s = np.float32(shift) * s / (np.float32(1.0) + np.float32(shift - 1.0) * s)
    return float(s[0]), float(s[1])


def _flow_sigmas(scheduler: Any, cfg: Mapping[str, Any], n: int | None,
                 timesteps: Sequence[float] | None, sigmas: Sequence[float] | None,
                 mu: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The float32 sampling sigmas (descending, without the terminal 0) and model timesteps
    of ``FlowMatchEulerDiscreteScheduler.set_timesteps`` (diffusers 0.42) for this config:

    1. ``σ = linspace(σ_max T, σ_min T, n)/T`` (or ``timesteps/T``, or the given ``sigmas``
       in float32);
    2. the shift: dynamic ``e^μ/(e^μ + (1/σ − 1))`` ('exponential') or
       ``μ/(μ + (1/σ − 1))`` ('linear'), else static ``s σ/(1 + (s − 1) σ)``;
    3. ``shift_terminal``: ``1 − (1 − σ)/((1 − σ_last)/(1 − shift_terminal))``;
    4. Karras (ρ = 7) / exponential / beta(0.6, 0.6) re-spacing between the ends;
    5. float32; timesteps ``σ·T`` in float32 unless given.
    """
    T = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("invert_sigmas", False):
        raise ValueError("invert_sigmas=True (Mochi's inverted schedule) is not supported")
    if cfg.get("stochastic_sampling", False):
        raise ValueError("stochastic_sampling=True re-noises every step: a stochastic "
                         "sampler has no exact inverse")
    dynamic = bool(cfg.get("use_dynamic_shifting", False))
    if dynamic and mu is None:
        raise ValueError("mu must be passed when use_dynamic_shifting is True (FLUX computes "
                         "it from the image sequence length: diffusers' calculate_shift)")
    if mu is not None and not math.isfinite(float(mu)):
        raise ValueError(f"mu must be finite, got {mu!r}")
    if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
        raise ValueError(f"sigmas has {len(sigmas)} entries but timesteps has {len(timesteps)}")
    given = sigmas if sigmas is not None else timesteps
    if n is not None and given is not None and len(given) != n:
        raise ValueError(f"num_inference_steps = {n} but {len(given)} "
                         f"{'sigmas' if sigmas is not None else 'timesteps'} were given")
    if n is None:
        if given is None:
            raise ValueError("pass num_inference_steps, sigmas or timesteps")
        n = len(given)
        if n < 1:
            raise ValueError("an empty list of sigmas/timesteps has no steps")
    shift = float(getattr(scheduler, "shift", None) or cfg.get("shift", 1.0)) \
        if not isinstance(scheduler, Mapping) else float(cfg.get("shift", 1.0))
    ts = None if timesteps is None else _monotone("timesteps", timesteps).astype(np.float32)
    if sigmas is None:
        if ts is None:
            # the range comes from the constructor's shift (sigma_max/sigma_min), the shift
            # applied below is the current one (set_shift), as in diffusers
            s_max, s_min = _flow_sigma_range(cfg, float(cfg.get("shift", 1.0)))
            s = np.linspace(s_max * T, s_min * T, n) / T
        else:
            s = ts / T
    else:
        s = _monotone("sigmas", sigmas).astype(np.float32)
    if dynamic:
        s = flow_time_shift(cfg.get("time_shift_type", "exponential"), mu, 1.0, s)
    else:
        s = shift * s / (1 + (shift - 1) * s)
    st = cfg.get("shift_terminal", None)
    if st:
        s = stretch_shift_to_terminal(s, st)
    kinds = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
             if cfg.get(k, False)]
    if len(kinds) > 1:
        raise ValueError(f"only one of {kinds} can be set")
    if kinds:
        lo = cfg.get("sigma_min", None)
        hi = cfg.get("sigma_max", None)
        lo = float(s[-1]) if lo is None else float(lo)
        hi = float(s[0]) if hi is None else float(hi)
        if kinds[0] == "use_karras_sigmas":
            rho = 7.0
            ramp = np.linspace(0, 1, n)
            s = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        elif kinds[0] == "use_exponential_sigmas":
            s = np.exp(np.linspace(math.log(hi), math.log(lo), n))
        else:
            import scipy.stats  # diffusers needs it for beta sigmas too

            s = np.array([lo + ppf * (hi - lo) for ppf in
                          scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6)])
    s32 = np.asarray(s).astype(np.float32)
    t32 = ts if ts is not None else s32 * np.float32(T)
    return s32, t32.astype(np.float32)


def _monotone(name: str, values: Any) -> np.ndarray:
    """``values`` as a strictly decreasing float64 array (diffusers' sampling order)."""
    vals = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    arr = np.asarray(vals, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {_summarise(arr, what=name)}")
    d = np.diff(arr)
    if np.any(d >= 0):
        i = int(np.flatnonzero(d >= 0)[0])
        raise ValueError(
            f"{name} must be strictly decreasing (sampling order, noisiest first); entries "
            f"{i} and {i + 1} are {arr[i]!r}, {arr[i + 1]!r} in {_summarise(arr, what=name)}")
    return arr


#: a first flow sigma this close to 1 (|1 − σ| ≤ a few float32 ulps) is the α = 0 top node
_TOP_TOLERANCE = 2.0**-22


def _flow_schedule(scheduler: Any, cfg: Mapping[str, Any], n: int | None,
                   timesteps: Any, sigmas: Any, mu: float | None) -> Schedule:
    with np.errstate(divide="ignore", invalid="ignore"):
        s32, t32 = _flow_sigmas(scheduler, cfg, n, timesteps, sigmas, mu)
    s = s32.astype(np.float64)
    t = t32.astype(np.float64)
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(t))):
        raise ValueError(f"this flow config gives non-finite sigmas "
                         f"{_summarise(s, what='sigmas')} (diffusers returns them as NaN: "
                         "e.g. shift_terminal with one step from σ = 1 divides 0 by 0)")
    top = top_sigma = None
    # α = 0: not a grid node, the run enters the grid from it (§9).  A static shift in
    # float32 can round σ = 1 to 1 ± 2⁻²⁴…2⁻²³ (e.g. shift 1.8968): that node is the α = 0
    # node too (as a node it would have σ̄ ≈ 1.7e7 and O-BELM's a_2 ≈ 1e-14, or α < 0)
    if abs(1.0 - s[0]) <= _TOP_TOLERANCE:
        top, top_sigma = float(t[0]), float(s[0])
    rest = s[1:] if top is not None else s
    if np.any(rest >= 1) or np.any(s <= 0) or np.any(np.diff(s) >= 0):
        raise ValueError(f"flow sigmas must be strictly decreasing in (0, 1], got "
                         f"{_summarise(s, what='sigmas')} after shifting")
    if top is not None:
        s, t = s[1:], t[1:]
        if s.size == 0:
            raise ValueError("a single step from σ = 1 to σ = 0 has no finite grid node "
                             "above σ = 0; use at least 2 steps")
    s = np.concatenate([[0.0], s[::-1]])
    t = np.concatenate([[0.0], t[::-1]])
    alphas = 1.0 - s
    return Schedule(Grid(s / alphas, timesteps=t, alphas=alphas), top, flow=True,
                    top_sigma=top_sigma)


# ------------------------------------------------------------------ DDPM family
def _vp_sigma_timesteps(ac: np.ndarray, sigma_bar: np.ndarray) -> np.ndarray:
    """Fractional model timesteps of σ̄ values: linear interpolation of ``log σ̄_t`` in the
    training table (as EulerDiscreteScheduler's sigma → t)."""
    pos = ac > 0
    log_sbar = 0.5 * np.log((1.0 - ac[pos]) / ac[pos])
    t = np.arange(ac.size, dtype=np.float64)[pos]
    lo, hi = math.exp(log_sbar[0]), math.exp(log_sbar[-1])
    bad = (sigma_bar < lo * (1 - 1e-12)) | (sigma_bar > hi * (1 + 1e-12))
    if np.any(bad):
        raise ValueError(f"sigmas {_summarise(sigma_bar[bad], what='sigmas')} lie outside the "
                         f"training table's σ̄ range [{lo:.6g}, {hi:.6g}]")
    return np.interp(np.log(sigma_bar), log_sbar, t)


def _vp_schedule(scheduler: Any, cfg: Mapping[str, Any], n: int | None, timesteps: Any,
                 sigmas: Any) -> Schedule:
    ac = alphas_cumprod_from_config(scheduler)
    T = ac.size
    if int(cfg.get("num_train_timesteps", T)) != T:
        raise ValueError(
            f"config says num_train_timesteps = {cfg.get('num_train_timesteps')} but its "
            f"ᾱ table has {T} entries"
        )
    if timesteps is not None and sigmas is not None:
        raise ValueError("pass timesteps or sigmas, not both (a DDPM-family config derives "
                         "one from the other)")
    if timesteps is not None and n is not None and len(timesteps) != n:
        raise ValueError(f"num_inference_steps = {n} but {len(timesteps)} timesteps were given")
    if sigmas is not None and n is not None and len(sigmas) != n + 1:
        raise ValueError(f"num_inference_steps = {n} needs {n + 1} sigmas (the final node "
                         f"included, as EulerDiscreteScheduler), got {len(sigmas)}")
    final = _final_alpha_cumprod(cfg, ac)
    if sigmas is not None:
        # k-diffusion sigmas σ̄ as EulerDiscreteScheduler takes them: every node, noisiest
        # first, the last one the final node (0 for the clean image)
        sb = _monotone("sigmas", sigmas)
        if sb.size < 2:
            raise ValueError("sigmas lists every node including the final one (Euler's "
                             "convention): at least 2 entries")
        if np.any(sb[:-1] <= 0) or sb[-1] < 0:
            raise ValueError("sigmas must be positive (the last, final node may be 0)")
        t = np.concatenate([_vp_sigma_timesteps(ac, sb[:-1]),
                            _vp_sigma_timesteps(ac, sb[-1:]) if sb[-1] > 0 else [0.0]])
        return Schedule(Grid(sb[::-1], timesteps=t[::-1]), None)
    if timesteps is not None:
        ts = _monotone("timesteps", timesteps)
        if np.any(ts != np.round(ts)) or ts.min() < 0 or ts.max() >= T:
            raise ValueError(f"timesteps must be integers in [0, {T - 1}] for a DDPM-family "
                             f"config, got {_summarise(ts)}")
        ts = ts.astype(np.int64)
    else:
        n = check_num_inference_steps(n)
        ts = spaced_timesteps(n, T, spacing=cfg.get("timestep_spacing", "leading") or "leading",
                              steps_offset=int(cfg.get("steps_offset", 0) or 0))
        if ts.max() >= T or ts.min() < 0:
            raise ValueError(f"timesteps {_summarise(ts)} fall outside [0, {T - 1}] "
                             f"(steps_offset {cfg.get('steps_offset')} too large for {n} "
                             "steps?)")
    zero_step = bool(ts.min() == 0 and final == ac[0])
    if zero_step:
        # e.g. 'linspace' ends at t = 0 and set_alpha_to_one=False targets ᾱ_0 again:
        # diffusers' last step is then a zero step (a no-op); the grid omits it, so it
        # has num_inference_steps − 1 steps and node 0 is t = 0 itself.
        ts = ts[ts != 0]
        if ts.size == 0:
            raise ValueError("a single sampling step at t = 0 onto ᾱ_0 is a zero step")
    top = None
    zero = ac[ts] == 0.0
    if np.any(zero):  # zero terminal SNR: ᾱ = 0 only at t = T − 1, the noisiest node
        top = float(ts[zero][0])
        ts = ts[~zero]
        if ts.size == 0:
            raise ValueError("a single step from ᾱ = 0 has no finite grid node to enter; "
                             "use at least 2 steps")
    # ᾱ = 0 can only be the last entry (zero terminal SNR), and no node indexes it now
    table = ac if ac[-1] > 0 else ac[:-1]
    grid = Grid.from_alphas_cumprod(table, ts, final_alpha_cumprod=final, final_timestep=0.0)
    return Schedule(grid, top, final_zero_step=zero_step)


def schedule_from_scheduler(scheduler: Any, num_inference_steps: int | None = None, *,
                            timesteps: Sequence[float] | None = None,
                            sigmas: Sequence[float] | None = None,
                            mu: float | None = None) -> Schedule:
    """The :class:`Schedule` a diffusers scheduler config defines.

    **DDPM family** (DDIM, PNDM, DPM-Solver, Euler, …, ``BELMScheduler``): nodes
    ``σ̄_t = sqrt((1 − ᾱ_t)/ᾱ_t)`` at the sampling timesteps of ``timestep_spacing``
    ('leading' (+ ``steps_offset``), 'trailing', 'linspace'; default 'leading' as
    DDIM/PNDM), or at the given integer ``timesteps`` (strictly decreasing); plus the
    final node: ``ᾱ = 1`` (σ̄_0 = 0) when
    ``set_alpha_to_one`` (DDIM default; it wins when present), or, without it,
    ``final_sigmas_type='zero'`` (DPM-Solver, Euler), else ``ᾱ_0``.  A sampling timestep
    0 followed by a final ``ᾱ_0`` would be a zero step (diffusers runs it as a no-op): the
    grid omits it and then has ``num_inference_steps − 1`` steps.  With
    ``rescale_betas_zero_snr`` the timestep ``T − 1`` has ``ᾱ = 0`` exactly: it becomes
    ``top_timestep``, not a node.  Custom k-diffusion ``sigmas`` (σ̄, strictly
    decreasing) are every node including the final one, as EulerDiscreteScheduler takes
    them (``len(sigmas) = num_inference_steps + 1``; the last may be 0), with fractional
    timesteps by interpolating ``log σ̄`` in the table.

    **Flow matching** (:func:`is_flow_config`): the sigmas of diffusers'
    ``FlowMatchEulerDiscreteScheduler.set_timesteps`` for this config (``shift``;
    ``use_dynamic_shifting`` with ``mu`` and ``time_shift_type``; ``shift_terminal``;
    Karras/exponential/beta sigmas; custom ``sigmas``/``timesteps``;
    ``num_train_timesteps``), in float32 as the stock scheduler has them, then in float64
    ``α = 1 − σ``, ``σ̄ = σ/(1 − σ)``, model timesteps ``σ·T`` (float32, as diffusers) or
    the given ``timesteps``; final node σ = 0.  A first sigma of 1 (the default)
    (within float32 round-off, 2⁻²²) is the α = 0 top node: ``top_timestep`` = its
    timestep, and the grid has
    ``num_inference_steps − 1`` steps.

    Every node keeps its model timestep, so the "previous timestep" is read from the
    table, never derived as ``t − T//N``.
    """
    cfg = _config_of(scheduler)
    n = None if num_inference_steps is None else check_num_inference_steps(num_inference_steps)
    if is_flow_config(scheduler):
        return _flow_schedule(scheduler, cfg, n, timesteps, sigmas, mu)
    if mu is not None:
        raise ValueError("mu (dynamic shifting) applies to flow-matching configs only")
    if n is None and timesteps is None and sigmas is None:
        raise ValueError("pass num_inference_steps, timesteps or sigmas")
    return _vp_schedule(scheduler, cfg, n, timesteps, sigmas)


def grid_from_scheduler(scheduler: Any, num_inference_steps: int | None = None, *,
                        timesteps: Sequence[float] | None = None,
                        sigmas: Sequence[float] | None = None,
                        mu: float | None = None) -> Grid:
    """The finite σ̄ grid of :func:`schedule_from_scheduler` (same arguments).

    ``scheduler`` may be any diffusers scheduler (DDIM, PNDM, DPM-Solver, Euler,
    FlowMatchEuler, …), a :class:`~lmsolvers.adapters.BELMScheduler`, or a config mapping.
    """
    return schedule_from_scheduler(scheduler, num_inference_steps, timesteps=timesteps,
                                   sigmas=sigmas, mu=mu).grid


def top_timestep(scheduler: Any, num_inference_steps: int | None = None, *,
                 timesteps: Sequence[float] | None = None,
                 sigmas: Sequence[float] | None = None,
                 mu: float | None = None) -> float | None:
    """The model timestep of the ``α = 0`` node above the grid, or ``None`` (the top node
    is finite): :attr:`Schedule.top_timestep` of :func:`schedule_from_scheduler`."""
    return schedule_from_scheduler(scheduler, num_inference_steps, timesteps=timesteps,
                                   sigmas=sigmas, mu=mu).top_timestep
