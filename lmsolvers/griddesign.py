"""Grid design: where to put the N nodes of a two-step method for a given schedule.

A two-step BELM (O-BELM, BDIA, …) carries one parasitic mode; on a grid its step
landing on node i−1 multiplies that mode by ``−a_{i,2}`` (O-BELM: ``−h_i²/h_{i+1}²``,
:mod:`lmsolvers.parasitic`).  Sampling multiplies it by ``Π a_{i,2}``, inversion by the
reciprocal, so the damping a grid gives in sampling is exactly what it costs in
round-off amplification when inverting (docs/design.md §4).  The scheduler's spacing
ignores this: on a trailing grid the σ̄ steps below σ̄ ≈ 1 are nearly equal
(``|a_2| ≈ 1``), the mode is undamped where the network's ε wiggles in t excite it,
and the last step onto σ̄ = 0 is longer than the one before (``|a_2| > 1``).

:func:`design_grid` places the nodes by minimising an a-priori error estimate built
from the method's own symbolic expressions, under stability constraints:

* **truncation** — the local error of the step landing on node i−1 is
  ``C_{p+1}(h_i, h_{i+1}) x̄^{(p+1)}`` (:func:`lmsolvers.symbolic.lte_coefficients`,
  compiled); ``|x̄^{(p+1)}|`` times the sensitivity of the output to an error made at
  σ̄ comes from a Gaussian scale mixture (:class:`ErrorModel`): data of scale s has
  the flow ``x̄(σ̄) = z·sqrt(s² + σ̄²)`` and forgets an error made at σ̄ by the factor
  ``s/sqrt(s² + σ̄²)``; log-uniform scales in ``[scale_min, scale_max]`` give the
  density ``D(σ̄)``, averaged over the step's span (Peano kernel: the LTE is
  ``O(h^p) ∫|x̄^{(p+1)}|``);
* **roughness** — a network's ε is smooth in σ̄ only up to a relative wiggle η
  (time-embedding frequencies up to 1 rad per timestep; about 3e-3 on the digits
  DDPM), which enters each step through its ε weight: ``η Σ_j |b_j h_j| S(σ̄)``;
* **parasitic propagation** — both error sources excite the parasitic mode, which
  reaches the output multiplied by the forward growth ``F_r = Π_{q<r} |a_{q,2}|`` from
  that step to the end.  Truncation and the parasitic part of the roughness add up
  coherently (the mode alternates in sign like a wiggle sampled near the Nyquist rate:
  it resonates), the principal part of independent wiggles in quadrature:
  ``J = Σ_r τ_r (1 + F_r) + Σ_r ρ_r F_r + (Σ_r ρ_r²)^{1/2}``;
* **the landing step** — below a schedule's least noisy level σ̄_min the flow continues
  with a frozen data prediction (straight in σ̄; DPM-Solver's last step does the same),
  so the solution has a kink at σ̄_min and the step landing on σ̄_0 < σ̄_min errs by
  ``|a_2|`` times the Euler defect ``∫ (σ̄_2 − σ) x̄''`` over ``[σ̄_1, σ̄_2]`` (plus the
  defect over ``[σ̄_min, σ̄_1]``), which replaces its smooth τ.

Constraints: the round-off amplification of inversion
(:meth:`~lmsolvers.LMMethod.roundoff_amplification`, local conditioning times backward
growth) stays below ``max_amplification`` (hard); every step is non-expanding for
sampling (``|a_{i,2}| ≤ 1``: steps never shrink going up, so the mode never grows in a
sampling run and no step extrapolates with large ε weights) and node 1 is no lower
than the schedule's least noisy node (penalised: near σ̄ = 0 integer timesteps are too
coarse to meet them exactly).  The optimum is found in continuous σ̄ (L-BFGS on a
smooth log-step profile, :func:`_continuous`), then snapped to the schedule's integer
timesteps and polished by a discrete local search; the bound is checked with the
library's own :meth:`~lmsolvers.LMMethod.roundoff_amplification`.

The model's constants (:class:`ErrorModel`: data scales 0.02–1 in σ̄, ε wiggles of
3e-3 as measured on the digits DDPM) are generic guesses, but the optimiser's set-up
(profile parameterisation, these constants, and pairing it with
:func:`lmsolvers.families.obelm_landing`) was chosen among a handful of variants by
their median error on 64 digits-model samples — calibrated on that model, not derived.
What it finds there: node 1 at the least noisy training level, steps growing from
there (damping the parasitic mode), and near-equal steps at the top instead of the
trailing grid's one long top step, which is where the round-off budget is won (the
backward growth of a two-step method is about ``(h_N/h_min)²``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import sympy as sp
import torch

from .grid import Grid
from .method import S0, LMMethod, step_symbols
from .symbolic import lte_coefficients

__all__ = ["ErrorModel", "GridDesign", "design_grid", "design_schedule_grid",
           "DEFAULT_MAX_AMPLIFICATION"]

#: default bound on the round-off amplification of inversion (float64: the predicted
#: relative round-trip error u·R stays below 1.1e-9)
DEFAULT_MAX_AMPLIFICATION = 1e7

_S = sp.Symbol("s", positive=True)
_SIG = sp.Symbol("sigma", nonnegative=True)


@dataclass(frozen=True)
class ErrorModel:
    """The a-priori model of the solution and of ε that grid design scores grids with.

    Parameters
    ----------
    scale_min, scale_max:
        Range of data scales s (σ̄ units) of the Gaussian scale mixture whose flows
        ``x̄(σ̄) = z·sqrt(s² + σ̄²)`` stand in for the data (log-uniform in s).
    roughness:
        Relative wiggle η of the network's ε between nodes (not resolved by any grid).
    """

    scale_min: float = 0.02
    scale_max: float = 1.0
    roughness: float = 3e-3

    def __post_init__(self) -> None:
        if not 0 < self.scale_min < self.scale_max or not math.isfinite(self.scale_max):
            raise ValueError(f"need 0 < scale_min < scale_max < inf, got {self.scale_min!r}, "
                             f"{self.scale_max!r}")
        if not (self.roughness >= 0 and math.isfinite(self.roughness)):
            raise ValueError(f"roughness must be finite and ≥ 0, got {self.roughness!r}")

    def tables(self, order: int, sigma_max: float) -> tuple[np.ndarray, ...]:
        """``(σ̄, ∫_0^σ̄ D, S(σ̄), ∫_0^σ̄ x̄'', ∫_0^σ̄ σ x̄'')`` on a fine σ̄ grid, for a
        method of this order.

        ``D(σ̄) = E_s |d^{p+1}/dσ̄^{p+1} sqrt(s² + σ̄²)| · s/sqrt(s² + σ̄²)``,
        ``S(σ̄) = E_s s/sqrt(s² + σ̄²)`` (the sensitivity of the output) and
        ``x̄'' = E_s d²/dσ̄² sqrt(s² + σ̄²)`` (for the last step, see :func:`design_grid`),
        with the derivatives taken symbolically.
        """
        return _tables(self, order, float(sigma_max))


@lru_cache(maxsize=32)
def _tables(model: ErrorModel, order: int, sigma_max: float):
    deriv = sp.diff(sp.sqrt(_S**2 + _SIG**2), _SIG, order + 1)
    weight = _S / sp.sqrt(_S**2 + _SIG**2)
    f = sp.lambdify((_S, _SIG), sp.Abs(deriv) * weight, "numpy")
    g = sp.lambdify((_S, _SIG), weight, "numpy")
    scales = np.exp(np.linspace(math.log(model.scale_min), math.log(model.scale_max), 96))
    lo = min(1e-4, model.scale_min / 100)
    sig = np.concatenate([[0.0], np.geomspace(lo, max(2.0 * sigma_max, 1.0), 800)])
    dens = f(scales[:, None], sig[None, :]).mean(axis=0)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(sig))])
    sens = g(scales[:, None], sig[None, :]).mean(axis=0)
    curv = sp.lambdify((_S, _SIG), sp.diff(sp.sqrt(_S**2 + _SIG**2), _SIG, 2), "numpy")
    c2 = curv(scales[:, None], sig[None, :]).mean(axis=0)

    def integral(v: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * np.diff(sig))])

    return sig, cum, sens, integral(c2), integral(sig * c2)


# ----------------------------------------------------------------- the method
@lru_cache(maxsize=16)
def _compiled(m: LMMethod) -> tuple:
    """A two-step method's ``a_1``, ``a_2``, ``Σ|b_j h_j|`` and ``|C_{p+1}|`` as functions of
    ``(s0, h1, h2)`` on torch tensors, compiled from its symbolic expressions."""
    if m.k != 2:
        raise ValueError(
            f"grid design handles two-step methods (one scalar parasitic mode); "
            f"{m.name!r} has k = {m.k}: pass a grid explicitly")
    if not m.is_explicit:
        raise ValueError(f"method {m.name!r} is implicit (b_0 ≠ 0)")
    h1, h2 = step_symbols(2)
    p = m.order
    cp = lte_coefficients(m.a, m.b, p + 1)[p + 1]
    args = (S0, h1, h2)
    mods = [{"sqrt": torch.sqrt, "Abs": torch.abs}, "math"]
    a2 = sp.lambdify(args, m.a[1], mods)
    a1 = sp.lambdify(args, m.a[0], mods)
    bh = sp.lambdify(args, sp.Abs(m.b[1] * h1) + sp.Abs(m.b[2] * h2), mods)
    c = sp.lambdify(args, sp.Abs(cp), mods)
    return a1, a2, bh, c


def _bcast(v, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=like.dtype)
    return v.expand_as(like) if v.shape != like.shape else v


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation, differentiable in ``x``."""
    i = torch.searchsorted(xp, x.detach()).clamp(1, xp.numel() - 1)
    x0, x1 = xp[i - 1], xp[i]
    w = (x - x0) / (x1 - x0)
    return fp[i - 1] + w * (fp[i] - fp[i - 1])


@dataclass
class _Objective:
    """``J`` and the constraint violations of a grid (torch, differentiable)."""

    fns: tuple
    model: ErrorModel
    order: int
    sigma_max: float
    sigma_min: float
    log_max_amp: float
    final: float = 0.0
    tables: tuple = field(init=False)
    kink: bool = field(init=False)

    def __post_init__(self) -> None:
        self.tables = tuple(torch.as_tensor(t, dtype=torch.float64)
                            for t in self.model.tables(self.order, self.sigma_max))
        sig, _, _, x1, x2 = self.tables
        self.kink = self.sigma_min > self.final
        floor = torch.tensor([self.sigma_min], dtype=torch.float64)
        self.floor_x1, self.floor_x2 = (_interp(floor, sig, x1)[0], _interp(floor, sig, x2)[0])

    def parts(self, s: torch.Tensor) -> dict[str, torch.Tensor]:
        """For nodes ``s`` (σ̄_0 … σ̄_N): the estimate ``J`` and the log-violations."""
        a1f, a2f, bhf, cf = self.fns
        sig, cum, sens, x1, x2 = self.tables
        h = s[1:] - s[:-1]
        h1, h2, s0 = h[:-1], h[1:], s[:-2]
        a2 = _bcast(a2f(s0, h1, h2), h1)
        a1 = _bcast(a1f(s0, h1, h2), h1)
        # every table at every node, one search
        i = torch.searchsorted(sig, s.detach()).clamp(1, sig.numel() - 1)
        w = (s - sig[i - 1]) / (sig[i] - sig[i - 1])
        cum_s, sens_s, x1_s, x2_s = (t[i - 1] + w * (t[i] - t[i - 1]) for t in (cum, sens, x1, x2))
        dmean = (cum_s[2:] - cum_s[:-2]) / (s[2:] - s[:-2])
        tau = _bcast(cf(s0, h1, h2), h1) * dmean
        rough = self.model.roughness * _bcast(bhf(s0, h1, h2), h1) * sens_s[1:-1]
        la2 = torch.log(a2.abs())
        # forward growth from the step landing on node r to the end: Π_{q<r} |a_{q,2}|
        fwd = torch.exp(torch.cumsum(la2, 0) - la2)
        if self.kink:
            # below the least noisy training level the flow continues with a frozen data
            # prediction (straight, as DPM-Solver's and the reference's last step): the
            # step landing on node 0 errs by |a_2| times the Euler defect over [σ̄_1, σ̄_2]
            # (plus the defect over [σ̄_floor, σ̄_1] if node 1 lies above the floor);
            # defect(a, b) = ∫_a^b (b − σ) x̄''(σ) dσ
            def defect(ia: int | None, ib: int) -> torch.Tensor:
                xa1, xa2 = (self.floor_x1, self.floor_x2) if ia is None else (x1_s[ia], x2_s[ia])
                return s[ib] * (x1_s[ib] - xa1) - (x2_s[ib] - xa2)

            last = a2[0].abs() * defect(1, 2) + torch.relu(defect(None, 1))
            tau = torch.cat([last.reshape(1), tau[1:]])
        # truncation and parasitic roughness add up (the parasitic mode alternates in sign
        # like a wiggle sampled near the Nyquist rate: it can resonate); the principal
        # part of independent wiggles adds in quadrature
        J = (tau * (1.0 + fwd)).sum() + (rough * fwd).sum() + torch.sqrt((rough**2).sum())
        # backward growth after step r: Π_{q>r} 1/|a_{q,2}|, and the local conditioning
        suffix = torch.flip(torch.cumsum(torch.flip(-la2, [0]), 0), [0]) + la2
        log_local = torch.log(torch.maximum(a1.abs() + a2.abs(), (1.0 + a1.abs()) / a2.abs()))
        log_amp = (torch.logsumexp(suffix * 20.0, 0) + torch.logsumexp(log_local * 20.0, 0)) / 20.0
        low = (torch.relu(math.log(self.sigma_min) - torch.log(s[1])) if self.sigma_min > 0
               else torch.zeros((), dtype=s.dtype))
        return {"J": J, "expand": torch.relu(la2),
                "amp": torch.relu(log_amp - self.log_max_amp), "low": low}

    def penalised(self, s: torch.Tensor, weight: float) -> torch.Tensor:
        """``log J`` plus ``weight`` times the squared log-violations."""
        p = self.parts(s)
        return torch.log(p["J"]) + weight * ((p["expand"] ** 2).sum() + p["amp"] ** 2
                                             + p["low"] ** 2)


#: knots of the step-size profile (piecewise linear ``log h_i`` against ``i``)
KNOTS = 12


def _continuous(obj: _Objective, s_init: np.ndarray, base: float) -> np.ndarray:
    """L-BFGS (scipy, torch gradients) over a smooth step-size profile.

    ``log h_i`` is piecewise linear in ``i`` with :data:`KNOTS` knots, the steps scaled to
    end at σ̄_N: a few parameters whatever N (fast, and no node-by-node overfitting of
    the model), geometric growth or shrinking within a knot interval.  Penalty
    continuation (weights 30, then 1000), warm-started.
    """
    # scipy.optimize costs ~0.4 s to import: only a design pays it, not every import of
    # the adapters (lmsolvers.adapters imports this module for the default configuration)
    from scipy.optimize import minimize

    n = s_init.size - 1
    span = obj.sigma_max - base
    i = np.arange(1, n + 1, dtype=np.float64)
    # the profile coordinate of step i
    vv = (i - 1) / max(n - 1, 1)
    v = torch.as_tensor(vv, dtype=torch.float64)
    knots = torch.linspace(0.0, 1.0, KNOTS, dtype=torch.float64)
    base_t = torch.tensor([base], dtype=torch.float64)

    def nodes(x: torch.Tensor) -> torch.Tensor:
        h = span * torch.softmax(_interp(v, knots, x), 0)
        return torch.cat([base_t, base + torch.cumsum(h, 0)])

    def fun(xv: np.ndarray, weight: float) -> tuple[float, np.ndarray]:
        x = torch.tensor(xv, dtype=torch.float64, requires_grad=True)
        val = obj.penalised(nodes(x), weight)
        if not torch.isfinite(val):
            return 1e30, np.zeros_like(xv)
        val.backward()
        g = x.grad.numpy()
        if not np.all(np.isfinite(g)):
            return 1e30, np.zeros_like(xv)
        return float(val.detach()), g.copy()

    x = np.interp(knots.numpy(), vv, np.log(np.diff(s_init)))
    x = x - x.max()
    for weight in (30.0, 1000.0):
        res = minimize(fun, x, args=(weight,), jac=True, method="L-BFGS-B",
                       bounds=[(-30.0, 0.0)] * x.size, options={"maxiter": 80})
        x = res.x
    with torch.no_grad():
        s = nodes(torch.as_tensor(x, dtype=torch.float64)).numpy().copy()
    s[-1] = obj.sigma_max
    return s


# ----------------------------------------------------------------- result
@dataclass(frozen=True)
class GridDesign:
    """A designed grid and what the design guarantees about it.

    Attributes
    ----------
    grid:
        The grid (with timesteps and α when designed on a schedule).
    method:
        The method it was designed for.
    estimate:
        The a-priori error estimate ``J`` (module docstring); comparable between grids
        of one method and model only.
    amplification:
        Backward (inversion) parasitic growth, :meth:`~lmsolvers.LMMethod.amplification`.
    forward_growth:
        Forward (sampling) parasitic growth (1 when every step is non-expanding).
    roundoff_amplification:
        :meth:`~lmsolvers.LMMethod.roundoff_amplification` (≤ ``max_amplification``).
    """

    grid: Grid
    method: LMMethod
    estimate: float
    amplification: float
    forward_growth: float
    roundoff_amplification: float

    def predicted_roundtrip_error(self, dtype: torch.dtype = torch.float64) -> float:
        """``u(dtype) · roundoff_amplification`` (:mod:`lmsolvers.exactness`)."""
        return float(torch.finfo(dtype).eps) / 2.0 * self.roundoff_amplification


def _check_n(n: int, low: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < low:
        raise ValueError(f"the number of steps must be an integer ≥ {low}, got {n!r}")
    return int(n)


def _evaluate(obj: _Objective, s: np.ndarray) -> tuple[float, float, float]:
    """``(amplification violation, penalised estimate, J)`` of a grid: the discrete search
    compares the first two lexicographically (the bound is hard, a slightly expanding
    step near σ̄ = 0, where integer timesteps are coarse, is weighed against ``J``)."""
    with torch.no_grad():
        p = obj.parts(torch.tensor(np.asarray(s), dtype=torch.float64))
    pen = float(torch.log(p["J"]) + 1000.0 * ((p["expand"] ** 2).sum() + p["low"] ** 2))
    return float(p["amp"]), pen, float(p["J"])


def _snap_and_polish(obj: _Objective, s: np.ndarray, table: np.ndarray, first: int,
                     final: float) -> np.ndarray:
    """Integer timesteps for nodes 1..N−1 (node N is the last table entry), then a
    discrete local search: moves of ±1, ±3 timesteps, three sweeps, lexicographic in
    (constraint violations, J)."""
    T = table.size
    logt = np.log(table)
    t = np.rint(np.interp(np.log(np.maximum(s[1:], table[first])), logt,
                          np.arange(T, dtype=np.float64))).astype(np.int64)
    t[-1] = T - 1
    n = t.size
    for j in range(n - 2, -1, -1):  # strictly increasing, room below the top
        t[j] = min(t[j], t[j + 1] - 1)
    for j in range(n):
        t[j] = max(t[j], first + j if j == 0 else t[j - 1] + 1)
    if t[-1] > T - 1 or t[0] < first:
        raise ValueError(f"{n} steps do not fit the schedule's {T - first} usable timesteps")

    def nodes(tt: np.ndarray) -> np.ndarray:
        return np.concatenate([[final], table[tt]])

    best = _evaluate(obj, nodes(t))[:2]
    sweeps = 3
    for _ in range(sweeps):
        improved = False
        for j in range(n - 1):
            lo = t[j - 1] + 1 if j > 0 else first
            hi = t[j + 1] - 1
            for d in (1, -1, 3, -3):
                c = t[j] + d
                if c < lo or c > hi:
                    continue
                old = t[j]
                t[j] = c
                val = _evaluate(obj, nodes(t))[:2]
                if val < best:
                    best, improved = val, True
                else:
                    t[j] = old
        if not improved:
            break
    return t


def design_grid(method: LMMethod, n: int, sigma_max: float, *, sigma_min: float = 0.0,
                sigma_floor: float | None = None,
                max_amplification: float = DEFAULT_MAX_AMPLIFICATION,
                model: ErrorModel | None = None) -> GridDesign:
    """The designed grid of ``n`` steps on ``[sigma_min, sigma_max]`` (continuous nodes).

    ``sigma_floor`` is the lowest admissible node above ``sigma_min`` (default
    ``sigma_min``: no floor; a floor above ``sigma_min`` means a straight flow below it,
    as for a diffusion model's least noisy training level).  See the module docstring
    for the estimate and the constraints.
    """
    n = _check_n(n, 2)
    if not (math.isfinite(sigma_max) and 0 <= sigma_min < sigma_max):
        raise ValueError(f"need 0 ≤ sigma_min < sigma_max finite, got {sigma_min!r}, "
                         f"{sigma_max!r}")
    floor = sigma_min if sigma_floor is None else sigma_floor
    obj = _objective(method, sigma_max, floor, max_amplification, model, sigma_min)
    init = Grid.power(n, sigma_max, sigma_min, rho=2.0).sigma_bar
    s = _continuous(obj, init, sigma_min)
    grid = Grid(s)
    target = max_amplification
    for _ in range(3):
        R = method.roundoff_amplification(grid)
        if R <= max_amplification:
            break
        target = max(1.0 + 1e-9, target * 0.9 * max_amplification / R)
        obj = _objective(method, sigma_max, floor, target, model, sigma_min)
        grid = Grid(_continuous(obj, s, sigma_min))
    return _finish(method, grid, obj, max_amplification)


def design_schedule_grid(method: LMMethod, n: int, alphas_cumprod: Sequence[float] | np.ndarray,
                         *, final_alpha_cumprod: float = 1.0,
                         max_amplification: float = DEFAULT_MAX_AMPLIFICATION,
                         model: ErrorModel | None = None) -> GridDesign:
    """The designed grid of ``n`` steps on a diffusion schedule's timesteps.

    Node N is the last training timestep ``T − 1`` (as DPM-Solver's trailing grid),
    node 0 has ``ᾱ = final_alpha_cumprod`` (1: σ̄_0 = 0, the clean image; ``ᾱ_0``: the
    node t = 0 itself), nodes 1 … N−1 are integer timesteps, so the grid indexes the
    schedule's own table (:meth:`Grid.from_alphas_cumprod`).  Deterministic; cached per
    (method, n, table, final node, bound, model).
    """
    n = _check_n(n, 2)
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    if ac.ndim != 1 or ac.size < 2 or np.any(~np.isfinite(ac)) or np.any((ac <= 0) | (ac > 1)):
        raise ValueError("alphas_cumprod must be a 1-D table of values in (0, 1]")
    if np.any(np.diff(ac) >= 0):
        raise ValueError("alphas_cumprod must decrease strictly with the timestep")
    return _design_schedule_cached(method, n, ac.tobytes(), float(final_alpha_cumprod),
                                   float(max_amplification), model or ErrorModel())


@lru_cache(maxsize=64)
def _design_schedule_cached(method: LMMethod, n: int, ac_bytes: bytes, final: float,
                            max_amplification: float, model: ErrorModel) -> GridDesign:
    ac = np.frombuffer(ac_bytes, dtype=np.float64)
    table = np.sqrt((1.0 - ac) / ac)
    if not 0 < final <= 1:
        raise ValueError(f"final_alpha_cumprod must lie in (0, 1], got {final!r}")
    s_final = math.sqrt((1.0 - final) / final)
    first = int(np.searchsorted(table, s_final, side="right"))  # lowest usable timestep
    T = table.size
    if n > T - first:
        raise ValueError(f"{n} steps need {n} distinct timesteps above the final node; the "
                         f"schedule has {T - first}")
    # start from the scheduler's trailing spacing
    ts = np.unique(np.clip(np.round(np.linspace(T - 1, first, n)).astype(np.int64), first,
                           T - 1))
    init = np.concatenate([[s_final], table[np.sort(ts)]])
    if init.size != n + 1:
        init = np.concatenate([[s_final], np.geomspace(table[first], table[-1], n)])
    target = max_amplification
    for _ in range(4):  # the smooth bound is approximate: tighten until the exact one holds
        obj = _objective(method, float(table[-1]), float(table[first]), target, model,
                         s_final)
        s = _continuous(obj, init, s_final)
        t = _snap_and_polish(obj, s, table, first, s_final)
        grid = Grid.from_alphas_cumprod(ac, t, final_alpha_cumprod=final)
        R = method.roundoff_amplification(grid)
        if R <= max_amplification:
            break
        target = max(1.0 + 1e-9, target * 0.9 * max_amplification / R)
    return _finish(method, grid, obj, max_amplification)


def _objective(method: LMMethod, sigma_max: float, sigma_min: float, max_amplification: float,
               model: ErrorModel | None, final: float = 0.0) -> _Objective:
    if not isinstance(method, LMMethod):
        raise TypeError(f"grid design needs an LMMethod, got {type(method).__name__}")
    if not (max_amplification > 1 and math.isfinite(max_amplification)):
        raise ValueError(f"max_amplification must be a finite number > 1, got "
                         f"{max_amplification!r}")
    return _Objective(_compiled(method), model or ErrorModel(), method.order,
                      sigma_max, sigma_min, math.log(max_amplification), final)


def _finish(method: LMMethod, grid: Grid, obj: _Objective, max_amplification: float
            ) -> GridDesign:
    R = method.roundoff_amplification(grid)
    if not R <= max_amplification:
        raise ValueError(
            f"grid design for {method.name!r} with N = {grid.N} could not meet the round-off "
            f"amplification bound: {R:.3g} > {max_amplification:.3g}; raise "
            "max_amplification or use more steps")
    J = _evaluate(obj, grid.sigma_bar)[2]
    return GridDesign(grid=grid, method=method, estimate=J,
                      amplification=method.amplification(grid, "backward"),
                      forward_growth=method.amplification(grid, "forward"),
                      roundoff_amplification=R)
