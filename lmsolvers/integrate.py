"""Sampling and exact inversion with VSVF linear multistep methods.

``eps(x̄, σ̄)`` is the σ̄-ODE vector field ``dx̄/dσ̄ = ε̄(x̄, σ̄)`` on batched torch
tensors, ``σ̄`` a Python float.  Sampling walks the grid from node N to node 0;
inversion from node 0 to node N.  For a k-step method:

* sampling from ``x̄_N`` fills in nodes N−1..N−k+1 with the method's starter
  (DESIGN.md §2), then applies, for i = N−k+1 … 1,
  ``x̄_{i−1} = Σ_j a_{i,j} x̄_{i−1+j} + Σ_j b_{i,j} h_{i−1+j} ε̄_{i−1+j}``;
* inversion of ``x̄_0`` runs the starter upwards for nodes 1..k−1 (approximate,
  and that does not matter) and then solves the *same* relation for the farthest
  node, ``x̄_{i−1+k} = (x̄_{i−1} − Σ_{j<k} a_{i,j} x̄_{i−1+j} − Σ_j b_{i,j} h ε̄)/a_{i,k}``;
* the :class:`Latent` of an inversion is the tuple of the k noisiest states;
  sampling from it runs the relations in the other order and returns x̄_0 up to
  round-off, because every ε is evaluated at the same state in both directions.

Only the k states (and their ε) a step needs are kept, whatever N is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .grid import Grid
from .method import LMMethod, StepCoefficients

__all__ = ["Latent", "EpsFn", "sample", "invert", "ddim_inversion", "lm_step", "lm_step_inverse",
           "euler_step", "CountingEps"]

EpsFn = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Latent:
    """The latent of an exact inversion: the k noisiest states of the trajectory.

    ``states[j]`` is ``x̄`` at node ``N − k + 1 + j``, so ``states[-1]`` is ``x̄_N``.
    ``method`` names the method that produced it and ``sigma_bar`` the σ̄ of those
    nodes: sampling checks both, since a latent only inverts under its own method
    and grid.  (EDICT's latent is the coupled pair ``(x̄_N, ȳ_N)``, both at node N.)
    """

    states: tuple[torch.Tensor, ...]
    method: str
    sigma_bar: tuple[float, ...]

    @property
    def x_N(self) -> torch.Tensor:  # noqa: N802 - the maths' name
        """The noisiest state ``x̄_N`` (what a single-state sampler would start from)."""
        return self.states[-1]

    @property
    def k(self) -> int:
        """Number of states in the latent (the method's step count k)."""
        return len(self.states)


class CountingEps:
    """Wrap an ``eps(x̄, σ̄)`` and count its calls: one call is one network evaluation
    (NFE) for the whole batch, the honest cost measure of a sampler."""

    def __init__(self, eps: EpsFn):
        self.eps, self.calls = eps, 0

    def __call__(self, x: torch.Tensor, s: float) -> torch.Tensor:
        self.calls += 1
        return self.eps(x, s)


# --------------------------------------------------------------------- helpers
class _EpsEvaluator:
    """Calls ε, checks its output once per call, and caches ε per grid node."""

    def __init__(self, eps: EpsFn, grid: Grid, like: torch.Tensor, check_finite: bool):
        self.eps, self.grid, self.check_finite = eps, grid, check_finite
        self.shape, self.dtype, self.device = like.shape, like.dtype, like.device
        self.cache: dict[int, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor, s: float, where: str) -> torch.Tensor:
        e = self.eps(x, s)
        if not isinstance(e, torch.Tensor):
            raise TypeError(f"eps must return a torch.Tensor, got {type(e).__name__}")
        if e.shape != self.shape:
            raise ValueError(f"eps returned shape {tuple(e.shape)} for a state of shape "
                             f"{tuple(self.shape)} ({where})")
        if e.dtype != self.dtype or e.device != self.device:
            raise ValueError(
                f"eps returned {e.dtype} on {e.device} for a {self.dtype} state on "
                f"{self.device} ({where}); return the state's dtype and device"
            )
        if self.check_finite and not bool(torch.isfinite(e).all()):
            raise FloatingPointError(f"eps returned NaN/Inf at {where}, sigma_bar = {s:.6g}")
        return e

    def at_node(self, m: int, x: torch.Tensor) -> torch.Tensor:
        if m not in self.cache:
            self.cache[m] = self(x, float(self.grid.sigma_bar[m]), f"node {m}")
        return self.cache[m]

    def forget(self, m: int) -> None:
        self.cache.pop(m, None)


def _check_state(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN/Inf")


def _combine(terms: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """``Σ c·t`` with one allocation; the coefficients are Python floats (float64)."""
    (c0, t0), rest = terms[0], terms[1:]
    out = torch.mul(t0, c0)
    for c, t in rest:
        out.add_(t, alpha=c)
    return out


def _starter_step(ev: _EpsEvaluator, kind: str, m: int, x: torch.Tensor, target: int
                  ) -> torch.Tensor:
    """One starter step from node ``m`` to the adjacent node ``target`` (either way).

    'ddim': explicit Euler, ``x + (σ̄_t − σ̄_m) ε(x_m)`` (1 NFE, local error O(h²)).
    'rk4': classical Runge–Kutta (its first stage is the node's ε; 3 more NFE,
    local error O(h⁵)), so methods of order ≤ 4 keep their global order.
    """
    s = ev.grid.sigma_bar
    s_m, s_t = float(s[m]), float(s[target])
    h = s_t - s_m
    k1 = ev.at_node(m, x)
    if kind == "ddim":
        return euler_step(x, h, k1)
    mid = s_m + 0.5 * h
    where = f"RK4 starter between nodes {m} and {target}"
    k2 = ev(_combine([(1.0, x), (0.5 * h, k1)]), mid, where)
    k3 = ev(_combine([(1.0, x), (0.5 * h, k2)]), mid, where)
    k4 = ev(_combine([(1.0, x), (h, k3)]), s_t, where)
    return _combine([(1.0, x), (h / 6, k1), (h / 3, k2), (h / 3, k3), (h / 6, k4)])


def _progress(total: int, disable: bool | None, desc: str):
    return tqdm(total=total, disable=disable, desc=desc, leave=False)


# ------------------------------------------------------------------- sampling
def sample(
    eps: EpsFn,
    grid: Grid,
    method: Any,
    x: torch.Tensor | Latent,
    *,
    callback: Callback | None = None,
    disable: bool | None = None,
    check_finite: bool = True,
    bitexact: bool = False,
    debug: bool = False,
) -> torch.Tensor:
    """Integrate the σ̄-ODE from node N down to node 0 and return ``x̄_0``.

    Parameters
    ----------
    eps:
        ``eps(x̄, σ̄) -> ε̄`` on batched tensors (same shape, dtype, device as x̄).
    grid:
        The :class:`~lmsolvers.Grid`.
    method:
        An explicit :class:`~lmsolvers.LMMethod` (DDIM, O-BELM, BDIA, designed BELMs)
        or an :func:`~lmsolvers.edict` integrator.
    x:
        ``x̄_N`` (a tensor; the starter fills in the next k−1 states) or the
        :class:`Latent` returned by :func:`invert` (exact reconstruction).
    callback:
        Called with ``{"node", "sigma_bar", "x"}`` after each new state.
    disable:
        Disable the progress bar (``None``: only on non-TTY output).
    check_finite:
        Raise ``FloatingPointError`` naming the node if ε returns NaN/Inf.
    bitexact:
        Integer fixed-point arithmetic (:mod:`lmsolvers.bitexact`): from the latent of
        ``invert(..., bitexact=True)`` the result is bitwise the fixed-point image of
        the inverted ``x̄_0``.  A tensor ``x̄_N`` is quantised first.
    debug:
        Evaluate ε twice per call and compare the bits (``NondeterminismError``); in
        bit-exact mode also compare ε at every node with the inversion pass.

    Only the k states a step needs are kept (O(k) memory for any N); the trajectory is
    available through ``callback``.
    """
    if bitexact:
        from .bitexact import sample_bitexact

        return sample_bitexact(eps, grid, method, x, callback=callback, disable=disable,
                               check_finite=check_finite, debug=debug)
    if debug:
        from .bitexact import deterministic_eps

        eps = deterministic_eps(eps)
    if not isinstance(method, LMMethod):
        return method.sample(eps, grid, x, callback=callback, disable=disable,
                             check_finite=check_finite)
    k, N = method.k, grid.N
    if not method.is_explicit:
        raise ValueError(f"method {method.name!r} is implicit (b_0 ≠ 0); sample() runs "
                         "explicit methods only")
    coeffs = method.coefficients(grid)
    states: dict[int, torch.Tensor] = {}
    if isinstance(x, Latent):
        _check_latent(x, method.name, grid.sigma_bar[N - k + 1:].tolist())
        for j, st in enumerate(x.states):
            states[N - k + 1 + j] = st
        like = x.x_N
        ev = _EpsEvaluator(eps, grid, like, check_finite)
        bar = _progress(N - k + 1, disable, f"sample[{method.name}]")
    else:
        _check_state(x, "x")
        like = x
        states[N] = x
        ev = _EpsEvaluator(eps, grid, like, check_finite)
        bar = _progress(N, disable, f"sample[{method.name}]")
        for m in range(N, N - k + 1, -1):  # starter: nodes N-1 .. N-k+1
            states[m - 1] = _starter_step(ev, method.starter, m, states[m], m - 1)
            _emit(callback, grid, m - 1, states[m - 1])
            bar.update()
    for r in range(N - k, -1, -1):  # the step landing on node r (i = r + 1)
        states[r] = lm_step(coeffs, r, states, lambda m: ev.at_node(m, states[m]))
        states.pop(r + k, None)
        ev.forget(r + k)
        _emit(callback, grid, r, states[r])
        bar.update()
    bar.close()
    return states[0]


def lm_step(c: StepCoefficients, r: int, x: Mapping[int, torch.Tensor],
            eps_at: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """One sampling step: ``x̄_r = Σ_j a_{r+1,j} x̄_{r+j} + Σ_j b_{r+1,j} h_{r+j} ε̄_{r+j}``.

    ``x`` maps node → state for nodes r+1..r+k; ``eps_at(m)`` returns ε̄ at node m
    (evaluated lazily: only the nodes with a non-zero weight are asked for).  The
    one place the sampling arithmetic lives: the diffusers scheduler calls it too,
    so both produce bit-identical states.
    """
    k = c.a.shape[1]
    terms = [(float(c.a[r, j - 1]), x[r + j]) for j in range(1, k + 1)]
    terms += [(float(c.bh[r, j]), eps_at(r + j)) for j in range(1, k + 1) if c.bh[r, j] != 0.0]
    return _combine(terms)


def lm_step_inverse(c: StepCoefficients, r: int, x: Mapping[int, torch.Tensor],
                    eps_at: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """The same relation solved for its farthest node (inversion):
    ``x̄_{r+k} = (x̄_r − Σ_{j<k} a_{r+1,j} x̄_{r+j} − Σ_{j<k} b_{r+1,j} h_{r+j} ε̄_{r+j}) / a_{r+1,k}``.

    Needs ``b_{r+1,k} = 0`` (backward explicit); ``x`` holds nodes r..r+k−1.
    """
    k = c.a.shape[1]
    inv_ak = 1.0 / float(c.a[r, k - 1])
    terms = [(inv_ak, x[r])]
    terms += [(-float(c.a[r, j - 1]) * inv_ak, x[r + j]) for j in range(1, k)]
    terms += [(-float(c.bh[r, j]) * inv_ak, eps_at(r + j)) for j in range(1, k)
              if c.bh[r, j] != 0.0]
    return _combine(terms)


def euler_step(x: torch.Tensor, h: float, e: torch.Tensor) -> torch.Tensor:
    """``x̄ + h ε̄``: DDIM's step (h < 0 going down) and the starter's upward step."""
    return _combine([(1.0, x), (h, e)])


def _emit(callback: Callback | None, grid: Grid, m: int, x: torch.Tensor) -> None:
    if callback is not None:
        callback({"node": m, "sigma_bar": float(grid.sigma_bar[m]), "x": x})


def _check_ak_range(c: StepCoefficients, name: str, dtype: torch.dtype) -> None:
    """Refuse a grid on which an inversion weight ``1/a_k`` (or ``a_j/a_k``) overflows dtype."""
    ak = c.a[:, -1]
    with np.errstate(divide="ignore", over="ignore"):
        w = np.maximum(np.abs(1.0 / ak), np.abs(c.a).max(axis=1) / np.abs(ak))
    limit = torch.finfo(dtype).max
    bad = np.flatnonzero(~(w < limit))
    if bad.size:
        r = int(bad[0])
        raise ValueError(
            f"method {name!r}: a_k = {ak[r]:.3e} underflows in {dtype} on the step landing "
            f"on node {r}: the inversion weight 1/a_k = {1.0 / ak[r]:.3e} exceeds the dtype's "
            f"max {limit:.3e}; use a wider dtype, fewer/smoother steps, or bitexact=True"
        )


def _check_latent(lat: Latent, name: str, sigma_bar: list[float]) -> None:
    """Refuse a latent made by another method or on another grid, or malformed."""
    if lat.method != name:
        raise ValueError(f"this latent was made by method {lat.method!r}, not {name!r}; "
                         "a latent only inverts under the method that made it")
    if lat.k != len(sigma_bar):
        raise ValueError(f"latent has {lat.k} states, method {name!r} needs {len(sigma_bar)}")
    if [float(v) for v in lat.sigma_bar] != [float(v) for v in sigma_bar]:
        raise ValueError(
            f"latent belongs to nodes with sigma_bar {list(lat.sigma_bar)}, but this grid's "
            f"top nodes are {sigma_bar}; sample on the grid the latent was inverted on"
        )
    shape, dtype, device = lat.states[0].shape, lat.states[0].dtype, lat.states[0].device
    for st in lat.states:
        _check_state(st, "latent state")
        if st.shape != shape or st.dtype != dtype or st.device != device:
            raise ValueError(
                f"latent states differ in shape, dtype or device: {tuple(st.shape)} {st.dtype} "
                f"{st.device} vs {tuple(shape)} {dtype} {device}"
            )


# ------------------------------------------------------------------ inversion
def invert(
    eps: EpsFn,
    grid: Grid,
    method: Any,
    x0: torch.Tensor,
    *,
    callback: Callback | None = None,
    disable: bool | None = None,
    check_finite: bool = True,
    bitexact: bool = False,
    debug: bool = False,
) -> Latent:
    """Exact inversion: map ``x̄_0`` to the :class:`Latent` that samples back to it.

    The method must be bidirectional explicit with ``a_k`` bounded away from 0 on
    ``grid`` (``ValueError`` otherwise; for DDIM's classic approximate inversion
    use :func:`ddim_inversion`).  ``sample(eps, grid, method, invert(eps, grid,
    method, x0))`` returns ``x0`` up to round-off, which the method's backward
    amplification on the grid (:func:`lmsolvers.stability.amplification`) bounds.

    ``bitexact=True`` runs the integer fixed-point construction of
    :mod:`lmsolvers.bitexact` and returns a :class:`~lmsolvers.bitexact.BitexactLatent`
    (also an ordinary latent), from which ``sample(..., bitexact=True)`` reproduces the
    fixed-point image of ``x̄_0`` bitwise.  ``debug=True`` checks that ε is
    deterministic (evaluated twice per call, bits compared).  Raises ``ValueError`` if
    ``1/a_k`` of some step overflows the working dtype (a_k underflows there).
    """
    if bitexact:
        from .bitexact import invert_bitexact

        return invert_bitexact(eps, grid, method, x0, callback=callback, disable=disable,
                               check_finite=check_finite, debug=debug)
    if debug:
        from .bitexact import deterministic_eps

        eps = deterministic_eps(eps)
    if not isinstance(method, LMMethod):
        return method.invert(eps, grid, x0, callback=callback, disable=disable,
                             check_finite=check_finite)
    if method.name == "ddim":
        raise ValueError("DDIM is not bidirectional explicit (b_1 = -1 ≠ 0), so it has no exact "
                         "inverse; use lmsolvers.ddim_inversion for the classic approximation")
    coeffs = method.check_invertible(grid)
    _check_state(x0, "x0")
    _check_ak_range(coeffs, method.name, x0.dtype)
    k, N = method.k, grid.N
    ev = _EpsEvaluator(eps, grid, x0, check_finite)
    states: dict[int, torch.Tensor] = {0: x0}
    bar = _progress(N, disable, f"invert[{method.name}]")
    for m in range(0, k - 1):  # starter upwards: nodes 1..k-1
        states[m + 1] = _starter_step(ev, method.starter, m, states[m], m + 1)
        _emit(callback, grid, m + 1, states[m + 1])
        bar.update()
    for r in range(0, N - k + 1):  # the relation landing on node r, solved for node r + k
        states[r + k] = lm_step_inverse(coeffs, r, states,
                                        lambda m: ev.at_node(m, states[m]))
        states.pop(r, None)
        ev.forget(r)
        _emit(callback, grid, r + k, states[r + k])
        bar.update()
    bar.close()
    nodes = range(N - k + 1, N + 1)
    return Latent(states=tuple(states[m] for m in nodes), method=method.name,
                  sigma_bar=tuple(float(grid.sigma_bar[m]) for m in nodes))


def ddim_inversion(
    eps: EpsFn,
    grid: Grid,
    x0: torch.Tensor,
    *,
    callback: Callback | None = None,
    disable: bool | None = None,
    check_finite: bool = True,
) -> Latent:
    """The classic (approximate) DDIM inversion: explicit Euler run upwards.

    ``x̄_{m+1} = x̄_m + h_{m+1} ε̄(x̄_m, σ̄_m)`` evaluates ε at the *lower* node, while
    DDIM sampling evaluates it at the upper one: a different relation, so
    ``sample(eps, grid, ddim(), ddim_inversion(...))`` drifts from x̄_0 by O(h).
    """
    from .families import ddim

    _check_state(x0, "x0")
    ev = _EpsEvaluator(eps, grid, x0, check_finite)
    x = x0
    for m in tqdm(range(grid.N), disable=disable, desc="invert[ddim]", leave=False):
        x = _starter_step(ev, "ddim", m, x, m + 1)
        ev.forget(m)
        _emit(callback, grid, m + 1, x)
    return Latent(states=(x,), method=ddim().name, sigma_bar=(float(grid.sigma_bar[-1]),))
