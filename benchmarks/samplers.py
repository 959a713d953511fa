"""The samplers compared by the benchmarks, behind one interface, with honest NFE counts.

Every sampler walks the same σ̄ grid: the one diffusers' ``DPMSolverMultistepScheduler``
defines for N steps (``grid_from_scheduler`` for the real model, ``Grid(sigmas[::-1])`` for
the toy), so differences come from the formulas, not from the nodes.

* DDIM, BDIA(γ), O-BELM and the designed k-step BELMs (``lmsolvers.belm(k)``, when the
  library provides it) run through :func:`lmsolvers.sample`;
* EDICT(p) runs its coupled integrator (two network evaluations per step);
* DPM-Solver++(2M) runs diffusers' own ``DPMSolverMultistepScheduler.step`` loop
  (data prediction, order 2, ``lower_order_final``), fed the same ε.

At a given *NFE budget* each sampler gets the largest number of steps whose counted
network evaluations fit the budget (EDICT: budget/2 steps; a BELM with a Runge–Kutta
starter: fewer steps than the budget).  :class:`CountingEps` counts every call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler

import lmsolvers as L
from lmsolvers.engine import CountingEps

__all__ = [
    "CountingEps",
    "SamplerSpec",
    "make_specs",
    "steps_for_budget",
    "dpm_config",
    "dpm_solve",
    "available_belm_ks",
]




@dataclass(frozen=True)
class SamplerSpec:
    """One sampler: ``kind`` is ``'lm'`` (core LM method), ``'edict'`` or ``'dpm'``."""

    name: str
    kind: str
    method: Any = None

    @property
    def invertible(self) -> bool:
        """Whether the sampler has an exact inverse (DDIM is inverted approximately)."""
        return self.kind in ("lm", "edict") and self.method.why_not_invertible() is None


def available_belm_ks(ks: tuple[int, ...] = (3, 4, 5)) -> list[int]:
    """The k of the designed BELMs ``lmsolvers.belm(k)`` the installed library provides."""
    belm = getattr(L, "belm", None)
    if belm is None:
        return []
    out = []
    for k in ks:
        try:
            belm(k)
        except Exception:  # noqa: BLE001 - a k the design module does not offer
            continue
        out.append(k)
    return out


def make_specs(belm_ks: tuple[int, ...] = (3, 4, 5), names: list[str] | None = None
               ) -> list[SamplerSpec]:
    """DDIM, BDIA(0.5), BDIA(1), EDICT(0.93), O-BELM, designed BELMs, DPM-Solver++(2M)."""
    specs = [
        SamplerSpec("DDIM", "lm", L.ddim()),
        SamplerSpec("BDIA(0.5)", "lm", L.bdia(0.5)),
        SamplerSpec("BDIA(1)", "lm", L.bdia(1.0)),
        SamplerSpec("EDICT(0.93)", "edict", L.edict(0.93)),
        SamplerSpec("O-BELM", "lm", L.obelm()),
    ]
    for k in available_belm_ks(belm_ks):
        specs.append(SamplerSpec(f"BELM-{k}", "lm", L.belm(k)))
    specs.append(SamplerSpec("DPM-Solver++(2M)", "dpm"))
    if names is not None:
        specs = [s for s in specs if s.name in names]
    return specs


def _nfe_of(spec: SamplerSpec, n_steps: int) -> int:
    """Network evaluations of one sampling run with ``n_steps`` steps (counted, not assumed)."""
    if spec.kind == "dpm":
        return n_steps
    grid = L.Grid(np.linspace(0.0, 1.0, n_steps + 1))
    ce = CountingEps(lambda x, s: torch.zeros_like(x))
    L.sample(ce, grid, spec.method, torch.zeros(1, 1, dtype=torch.float64), disable=True)
    return ce.calls


def steps_for_budget(spec: SamplerSpec, budget: int) -> int | None:
    """The largest step count whose NFE is at most ``budget`` (None if none is possible)."""
    k = getattr(spec.method, "k", 1) if spec.kind == "lm" else 1
    start = budget // 2 if spec.kind == "edict" else budget
    for n in range(start, max(k, 1) - 1, -1):
        if n >= 1 and _nfe_of(spec, n) <= budget:
            return n
    return None


def dpm_config(base_config: Any | None = None, **overrides: Any) -> dict:
    """DPM-Solver++(2M) config (data prediction, order 2, final σ = 0), optionally on a model's."""
    cfg = dict(base_config) if base_config is not None else dict(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg.update(algorithm_type="dpmsolver++", solver_order=2, prediction_type="epsilon",
               final_sigmas_type="zero", lower_order_final=True)
    cfg.update(overrides)
    return cfg


def dpm_solve(config: dict, n_steps: int, x_T: torch.Tensor,
              model_output: Callable[[torch.Tensor, Any, float], torch.Tensor]
              ) -> tuple[torch.Tensor, int]:
    """diffusers' DPM-Solver++ loop from model-space noise ``x_T``; returns ``(x_0, NFE)``.

    ``model_output(x, t, σ̄_t)`` is the ε prediction at model-space ``x`` and timestep ``t``.
    Note: ``DPMSolverMultistepScheduler.step`` casts the sample to float32 internally.
    """
    sched = DPMSolverMultistepScheduler.from_config(config)
    sched.set_timesteps(n_steps)
    x, nfe = x_T, 0
    for i, t in enumerate(sched.timesteps):
        out = model_output(x, t, float(sched.sigmas[i]))
        nfe += 1
        x = sched.step(out, t, x).prev_sample
    return x, nfe


def toy_grid(n_steps: int, config: dict | None = None) -> L.Grid:
    """The σ̄ grid of DPM-Solver++ with ``n_steps`` steps: its ``sigmas`` reversed."""
    sched = DPMSolverMultistepScheduler.from_config(config or dpm_config())
    sched.set_timesteps(n_steps)
    return L.Grid(sched.sigmas.double().numpy()[::-1].copy())


