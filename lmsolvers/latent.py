"""The latent of an exact inversion and its identity (docs/design.md §3).

A k-step method's inversion ends in k states; sampling that starts from all of them
runs the same linear relations backwards and reproduces every state down to x̄_0.
That holds only if the sampling run is *the same computation*: the same grid (every
node, not only the top ones), the same method with the same exact parameters, and the
same ε (model-side settings such as the guidance scale or the prediction type).  A
latent therefore carries a fingerprint of all three, and :func:`check_latent` refuses
any mismatch with a message that says what differs, instead of returning a silently
different result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .grid import Grid

__all__ = ["Latent", "LatentMismatchError", "check_latent", "freeze_context", "check_state"]


class LatentMismatchError(ValueError):
    """A latent is sampled with another grid, method or model setting than it was made with."""


def freeze_context(context: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """A model-side settings mapping as a sorted tuple of ``(key, value)`` pairs.

    Values must be hashable scalars or strings (floats are compared exactly).
    """
    if context is None:
        return ()
    items = []
    for key, value in sorted(dict(context).items()):
        if not isinstance(key, str):
            raise TypeError(f"context keys must be strings, got {key!r}")
        hash(value)  # a TypeError here names an unhashable setting
        items.append((key, value))
    return tuple(items)


@dataclass(frozen=True, eq=False)
class Latent:
    """The latent of an exact inversion: the k noisiest states of the trajectory.

    ``states[j]`` is ``x̄`` at node ``N − k + 1 + j``, so ``states[-1]`` is ``x̄_N``
    (EDICT's latent is the coupled pair ``(x̄_N, ȳ_N)``, both at node N).

    Identity (what sampling checks, :func:`check_latent`): ``grid`` is the whole grid
    the inversion ran on, ``method_key`` the exact identity of the method and its
    parameters (``method`` is its display name), ``context`` the model-side settings
    the ε-function was built with (guidance scale, prediction type, …; empty for a
    plain ε-function).  Latents are made by :func:`lmsolvers.invert`, not by hand.
    ``noise`` is the noise identity of a stochastic run (``eta``, ``law``, ``generator``,
    ``seed``: :mod:`lmsolvers.stochastic`), empty for a deterministic one.
    """

    states: tuple[torch.Tensor, ...]
    method: str
    method_key: str
    grid: Grid
    context: tuple[tuple[str, Any], ...] = ()
    nodes: tuple[int, ...] = field(default=())
    noise: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.nodes:
            N, k = self.grid.N, len(self.states)
            object.__setattr__(self, "nodes", tuple(range(N - k + 1, N + 1)))

    @property
    def x_N(self) -> torch.Tensor:  # noqa: N802 - the maths' name
        """The noisiest state ``x̄_N`` (what a single-state sampler would start from)."""
        return self.states[-1]

    @property
    def k(self) -> int:
        """Number of states in the latent."""
        return len(self.states)

    @property
    def sigma_bar(self) -> tuple[float, ...]:
        """σ̄ of the nodes the states belong to."""
        return tuple(float(self.grid.sigma_bar[m]) for m in self.nodes)

    @property
    def fingerprint(self) -> str:
        """One string for the latent's whole identity: method key, grid digest, context."""
        noise = f"|noise:{self.noise!r}" if self.noise else ""
        return f"{self.method_key}|grid:{self.grid.fingerprint()}|{self.context!r}{noise}"

    def with_states(self, states: Sequence[torch.Tensor]) -> Latent:
        """The same latent identity with other tensors (e.g. moved to another device/dtype)."""
        states = tuple(states)
        if len(states) != self.k:
            raise ValueError(f"a latent of {self.k} states cannot take {len(states)}")
        return dataclasses.replace(self, states=states)

    def with_context(self, context: Mapping[str, Any] | None) -> Latent:
        """The same states declared to be sampled under other model-side settings.

        Sampling then is *not* the inverse of the inversion (editing does this on
        purpose: invert under one prompt/guidance, regenerate under another).
        """
        return dataclasses.replace(self, context=freeze_context(context))


def check_state(x: Any, name: str) -> None:
    """Refuse a state that is not a finite floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN/Inf")


def _describe_grid_difference(made: Grid, now: Grid) -> str | None:
    if made is now:
        return None
    if made.N != now.N:
        return (f"the latent was inverted on a grid of N = {made.N} steps, this grid has "
                f"N = {now.N}")
    for name in ("sigma_bar", "timesteps", "alphas"):
        a, b = getattr(made, name), getattr(now, name)
        if (a is None) != (b is None):
            return f"one grid has model timesteps and the other has none ({name})"
        if a is None:
            continue
        diff = np.flatnonzero(a != b)
        if diff.size:
            m = int(diff[0])
            return (f"the grids differ in {name} at node {m} ({float(a[m])!r} when inverted, "
                    f"{float(b[m])!r} now; {diff.size} node(s) differ)")
    return None


def _differences(made: dict[str, Any], now: dict[str, Any], missing: str) -> str:
    """``"key: <made> when inverted, <now> now; …"`` for the keys whose values differ."""
    return "; ".join(f"{key}: {made.get(key, missing)!r} when inverted, "
                     f"{now.get(key, missing)!r} now" for key in sorted(set(made) | set(now))
                     if made.get(key, object()) != now.get(key, object()))


def check_latent(latent: Latent, grid: Grid, method_key: str, method_name: str,
                 context: Mapping[str, Any] | None = None, k: int | None = None,
                 noise: Mapping[str, Any] | None = None) -> None:
    """Refuse a latent made on another grid, by another method, under other settings, or
    (``noise``: the run's noise identity, stochastic methods) with other noise.

    Raises :class:`LatentMismatchError` naming the first difference; ``TypeError`` /
    ``ValueError`` for a malformed latent (states that differ in shape, dtype or
    device, or are not finite).
    """
    if not isinstance(latent, Latent):
        raise TypeError(f"expected an lmsolvers Latent, got {type(latent).__name__}")
    if latent.method_key != method_key:
        same = latent.method == method_name
        raise LatentMismatchError(
            f"this latent was made by method {latent.method!r}, not {method_name!r}"
            + (" (same name, different coefficients or parameters)" if same else "")
            + "; a latent only inverts under the method that made it")
    made_noise, run_noise = dict(latent.noise), dict(freeze_context(noise))
    if made_noise != run_noise:
        raise LatentMismatchError(
            "noise differs from the inversion's (" + _differences(made_noise, run_noise,
                                                                 "<none>")
            + "); a stochastic sampler inverts only with the seed and noise law that inverted "
            "it")
    why = _describe_grid_difference(latent.grid, grid)
    if why is not None:
        raise LatentMismatchError(f"grid mismatch: {why}; sample on the grid the latent was "
                                  "inverted on (same schedule, steps and final node)")
    ctx = dict(freeze_context(context))
    made = dict(latent.context)
    if ctx != made:
        raise LatentMismatchError(
            "model settings differ from the inversion's (" + _differences(made, ctx, "<unset>")
            + "); sampling would not be its inverse (for an edit on purpose, use "
            "latent.with_context(...))")
    if k is not None and latent.k != k:
        raise LatentMismatchError(f"latent has {latent.k} states, method {method_name!r} "
                                  f"needs {k}")
    first = latent.states[0]
    for st in latent.states:
        check_state(st, "latent state")
        if st.shape != first.shape or st.dtype != first.dtype or st.device != first.device:
            raise ValueError(
                f"latent states differ in shape, dtype or device: {tuple(st.shape)} {st.dtype} "
                f"{st.device} vs {tuple(first.shape)} {first.dtype} {first.device}")
