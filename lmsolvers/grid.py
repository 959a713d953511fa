"""Grids of the σ̄-ODE and the diffusion schedules they come from.

A :class:`Grid` is a strictly increasing sequence of nodes ``σ̄_0 < σ̄_1 < … < σ̄_N``.
Sampling walks node N → 0, inversion 0 → N (docs/design.md §1).  For a diffusion
model every node also carries the model timestep ``t_i`` and the signal scale
``α_i``; the grid indexes its own node table, so the "previous timestep" is always
read from the table and never derived by arithmetic on timesteps (docs/design.md §8).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Grid",
    "vp_alpha",
    "linear_betas",
    "scaled_linear_betas",
    "alphas_cumprod_from_betas",
    "spaced_timesteps",
]


def vp_alpha(sigma_bar):
    """Variance-preserving signal scale ``α = 1/sqrt(1 + σ̄²)`` (float or array).

    The numeric twin of :func:`lmsolvers.families.vp_alpha` (which builds the sympy
    expression BDIA's coefficients are derived from).
    """
    return 1.0 / np.sqrt(1.0 + np.square(sigma_bar))


def _as_1d_float64(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    try:
        arr = np.asarray(
            values.detach().cpu().numpy() if hasattr(values, "detach") else values,
            dtype=np.float64,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 1-D sequence of real numbers: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr))
        raise ValueError(f"{name} has non-finite entries at positions {bad.tolist()}")
    return arr


@dataclass(frozen=True, eq=False)
class Grid:
    """A strictly increasing grid of σ̄ nodes ``σ̄_0 < … < σ̄_N``.

    Parameters
    ----------
    sigma_bar:
        The nodes, increasing.  ``σ̄_0 = 0`` when the last sampling target is the clean
        image.
    timesteps:
        Optional model timestep of every node (same length), for diffusion models.
    alphas:
        Optional signal scale α of every node.  Defaults to the variance-preserving
        relation ``α = 1/sqrt(1 + σ̄²)``.

    Attributes
    ----------
    h:
        Step sizes, ``h[i-1] = h_i = σ̄_i − σ̄_{i−1} > 0`` for ``i = 1..N``.
    """

    sigma_bar: np.ndarray
    timesteps: np.ndarray | None = None
    alphas: np.ndarray | None = None

    def __init__(
        self,
        sigma_bar: Sequence[float] | np.ndarray,
        timesteps: Sequence[float] | np.ndarray | None = None,
        alphas: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        s = _as_1d_float64("sigma_bar", sigma_bar)
        if s.size < 2:
            raise ValueError(f"a grid needs at least 2 nodes, got {s.size}")
        if np.any(s < 0):
            raise ValueError(f"sigma_bar must be non-negative, got min {s.min()!r}")
        h = np.diff(s)
        if np.any(h == 0):
            rep = np.flatnonzero(h == 0)
            raise ValueError(
                f"sigma_bar has repeated nodes (a step of size 0) at node indices "
                f"{rep.tolist()} -> {(rep + 1).tolist()}; every node must be distinct"
            )
        if np.any(h < 0):
            bad = np.flatnonzero(h < 0)
            raise ValueError(
                "sigma_bar must be strictly increasing (node 0 = least noise); it decreases "
                f"between node indices {bad.tolist()} and {(bad + 1).tolist()}"
            )
        if timesteps is not None:
            t = _as_1d_float64("timesteps", timesteps)
            if t.shape != s.shape:
                raise ValueError(
                    f"timesteps has {t.size} entries but sigma_bar has {s.size} nodes"
                )
        else:
            t = None
        if alphas is not None:
            a = _as_1d_float64("alphas", alphas)
            if a.shape != s.shape:
                raise ValueError(f"alphas has {a.size} entries but sigma_bar has {s.size} nodes")
            if np.any(a <= 0):
                raise ValueError("alphas must be positive")
        else:
            a = vp_alpha(s)
        for arr in (s, t, a):
            if arr is not None:
                arr.setflags(write=False)
        object.__setattr__(self, "sigma_bar", s)
        object.__setattr__(self, "timesteps", t)
        object.__setattr__(self, "alphas", a)

    # ------------------------------------------------------------------ basics
    @property
    def N(self) -> int:  # noqa: N802 - the maths' name
        """Number of steps (the grid has ``N + 1`` nodes)."""
        return self.sigma_bar.size - 1

    @property
    def h(self) -> np.ndarray:
        """Step sizes ``h_i = σ̄_i − σ̄_{i−1}``, stored so that ``h[i-1] = h_i``."""
        return np.diff(self.sigma_bar)

    def __len__(self) -> int:
        return self.sigma_bar.size

    def __repr__(self) -> str:
        s = self.sigma_bar
        return f"Grid(N={self.N}, sigma_bar=[{s[0]:.4g} … {s[-1]:.4g}])"

    def fingerprint(self) -> str:
        """A digest of every node's σ̄, timestep and α (bitwise): equal digests, equal grids."""
        d = hashlib.blake2b(digest_size=16)
        for arr in (self.sigma_bar, self.timesteps, self.alphas):
            d.update(b"-" if arr is None else arr.tobytes())
        return d.hexdigest()

    def require_steps(self, k: int, what: str = "this method") -> None:
        """Raise ``ValueError`` unless the grid has at least ``k`` steps."""
        if self.N < k:
            raise ValueError(
                f"{what} needs a grid of at least {k} steps ({k + 1} nodes); "
                f"this grid has N = {self.N}"
            )

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_alphas_cumprod(
        cls,
        alphas_cumprod: Sequence[float] | np.ndarray,
        timesteps: Sequence[int] | np.ndarray,
        final_alpha_cumprod: float = 1.0,
        final_timestep: float = 0.0,
    ) -> Grid:
        """Grid of a diffusion schedule.

        ``σ̄_t = sqrt((1 − ᾱ_t)/ᾱ_t)`` for every sampling timestep ``t`` (given in any
        order, e.g. diffusers' descending ``scheduler.timesteps``), plus a final node
        with ``ᾱ = final_alpha_cumprod`` (1 gives ``σ̄_0 = 0``, the clean image).  The
        node table keeps every node's model timestep and ``α = sqrt(ᾱ)``; the final
        node's timestep is ``final_timestep`` (what inversion feeds the model there).
        """
        ac = _as_1d_float64("alphas_cumprod", alphas_cumprod)
        ts = _as_1d_float64("timesteps", timesteps)
        if np.any((ac <= 0) | (ac > 1)):
            raise ValueError("alphas_cumprod must lie in (0, 1]")
        if not 0 < final_alpha_cumprod <= 1:
            raise ValueError(f"final_alpha_cumprod must lie in (0, 1], got {final_alpha_cumprod}")
        idx = ts.astype(np.int64)
        if np.any(idx != ts) or np.any(idx < 0) or np.any(idx >= ac.size):
            raise ValueError(
                f"timesteps must be integers in [0, {ac.size - 1}] indexing alphas_cumprod"
            )
        order = np.argsort(-ac[idx], kind="stable")  # decreasing ᾱ = increasing σ̄
        idx = idx[order]
        abar = np.concatenate([[final_alpha_cumprod], ac[idx]])
        t_nodes = np.concatenate([[final_timestep], idx.astype(np.float64)])
        sigma_bar = np.sqrt((1.0 - abar) / abar)
        return cls(sigma_bar, timesteps=t_nodes, alphas=np.sqrt(abar))

    @classmethod
    def stable_diffusion(cls, n: int) -> Grid:
        """Stable Diffusion 1.x's DDIM grid with ``n`` steps.

        scaled-linear β from 0.00085 to 0.012 over 1000 steps, 'leading' spacing with
        ``steps_offset = 1`` and ``set_alpha_to_one = False`` (the final node is ᾱ_0).
        """
        ac = alphas_cumprod_from_betas(scaled_linear_betas(1000, 0.00085, 0.012))
        ts = spaced_timesteps(n, 1000, spacing="leading", steps_offset=1)
        return cls.from_alphas_cumprod(ac, ts, final_alpha_cumprod=float(ac[0]))

    @classmethod
    def power(cls, n: int, sigma_max: float, sigma_min: float = 0.0, rho: float = 2.0) -> Grid:
        """``σ̄_i = σ_min + (σ_max − σ_min)(i/n)^ρ``: a smooth variable-step grid.

        ``n ≥ 1`` steps, ``0 ≤ σ_min < σ_max`` finite, ``ρ > 0`` finite.
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"the number of steps n must be an integer ≥ 1, got {n!r}")
        if not (np.isfinite(sigma_max) and np.isfinite(sigma_min) and 0 <= sigma_min < sigma_max):
            raise ValueError(f"need 0 ≤ sigma_min < sigma_max, both finite; got sigma_min = "
                             f"{sigma_min!r}, sigma_max = {sigma_max!r}")
        if not (np.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be positive and finite, got {rho!r}")
        u = np.linspace(0.0, 1.0, n + 1)
        return cls(sigma_min + (sigma_max - sigma_min) * u**rho)


# ------------------------------------------------------------------ schedules
def linear_betas(num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear β schedule."""
    return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)


def scaled_linear_betas(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                        beta_end: float = 0.012) -> np.ndarray:
    """Stable Diffusion's 'scaled_linear' schedule: linear in sqrt(β)."""
    return np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps,
                       dtype=np.float64) ** 2


def alphas_cumprod_from_betas(betas: np.ndarray) -> np.ndarray:
    """``ᾱ_t = Π_{s ≤ t} (1 − β_s)``."""
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


def spaced_timesteps(n: int, num_train_timesteps: int = 1000, spacing: str = "leading",
                     steps_offset: int = 0) -> np.ndarray:
    """The ``n`` sampling timesteps (descending) of diffusers' spacing conventions.

    'leading': ``(arange(n) * (T // n)) + offset``; 'trailing':
    ``round(arange(T, 0, -T/n)) − 1``; 'linspace': ``round(linspace(0, T−1, n))``.
    """
    T = num_train_timesteps
    if not 1 <= n <= T:
        raise ValueError(f"number of steps must lie in [1, {T}], got {n}")
    if spacing == "leading":
        ts = (np.arange(n) * (T // n)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1]
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r} (leading, trailing, linspace)")
    return ts.astype(np.int64)
