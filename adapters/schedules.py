"""Sampling schedules of diffusers scheduler configs as σ̄ grids (docs/design.md §8).

* :func:`alphas_cumprod_from_config` – the training table ``ᾱ_t`` of any config;
* :func:`grid_from_scheduler` – the :class:`~lmsolvers.Grid` a config defines for
  ``num_inference_steps`` (timestep spacing, ``steps_offset``, final ᾱ), with every node's
  model timestep in its table.

Conventions for a top node with ``α = 0`` (zero terminal SNR, flow matching at σ = 1;
σ̄ = ∞) are in docs/design.md §9: the grid holds only finite nodes and the run enters it
by :func:`entry_step`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
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
    "alphas_cumprod_from_config",
    "grid_from_scheduler",
    "check_num_inference_steps",
]


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
    n = check_num_inference_steps(num_inference_steps)
    ts = spaced_timesteps(n, T, spacing=cfg.get("timestep_spacing", "leading") or "leading",
                          steps_offset=int(cfg.get("steps_offset", 0) or 0))
    if ts.max() >= T or ts.min() < 0:
        raise ValueError(f"timesteps {_summarise(ts)} fall outside [0, {T - 1}] (steps_offset "
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
