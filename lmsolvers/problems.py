"""Toy σ̄-ODEs with known answers: the test bench for orders and exactness.

Data ``x_0 ~ p_data`` diffused as ``x̄ = x_0 + σ̄ n`` (``x̄ = x/α``) has marginals
``p_σ̄ = p_data * N(0, σ̄² I)`` and the ideal noise predictor
``ε̄(x̄, σ̄) = −σ̄ ∇ log p_σ̄(x̄)``; the σ̄-ODE ``dx̄/dσ̄ = ε̄`` transports the marginals.

- :class:`GaussianData`: ``N(μ, s² I)``; ε̄ and the ODE flow are closed-form.
- :class:`GaussianMixture`: isotropic components; ε̄ closed-form, reference flow
  by scipy's DOP853 at rtol 1e-12.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp

__all__ = ["GaussianData", "GaussianMixture", "TanhField"]


@dataclass(frozen=True)
class GaussianData:
    """Gaussian data ``N(mean, std² I)`` in ``dim`` dimensions."""

    dim: int = 2
    mean: float = 0.5
    std: float = 0.7

    def eps(self, x: torch.Tensor, sigma_bar: float) -> torch.Tensor:
        """``ε̄ = σ̄ (x̄ − μ)/(s² + σ̄²)``."""
        return (x - self.mean) * (sigma_bar / (self.std**2 + sigma_bar**2))

    def solution(self, x: torch.Tensor, s_from: float, s_to: float) -> torch.Tensor:
        """Exact flow: ``x̄(s) − μ = (x̄(s₀) − μ) sqrt((s² + σ²)/(s₀² + σ²))``."""
        v = self.std**2
        return self.mean + (x - self.mean) * np.sqrt((v + s_to**2) / (v + s_from**2))

    def prior(self, n: int, sigma_max: float, generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Samples of the marginal at ``σ̄_max``."""
        z = torch.randn(n, self.dim, generator=generator, dtype=dtype)
        return self.mean + z * float(np.sqrt(self.std**2 + sigma_max**2))


@dataclass(frozen=True)
class GaussianMixture:
    """Isotropic Gaussian mixture ``Σ_c w_c N(μ_c, s_c² I)``."""

    means: tuple[tuple[float, ...], ...] = ((-1.0, -0.5), (1.0, 0.8), (0.2, 1.5))
    stds: tuple[float, ...] = (0.35, 0.5, 0.3)
    weights: tuple[float, ...] = (0.3, 0.5, 0.2)

    def __post_init__(self) -> None:
        if not (len(self.means) == len(self.stds) == len(self.weights)):
            raise ValueError("means, stds and weights must have one entry per component")
        if any(s <= 0 for s in self.stds) or any(w <= 0 for w in self.weights):
            raise ValueError("stds and weights must be positive")

    @property
    def dim(self) -> int:
        """Dimension of the data (length of each mean)."""
        return len(self.means[0])

    def _eps(self, x, sigma_bar: float, lib):
        mu = lib.asarray(self.means) if lib is np else torch.tensor(
            self.means, dtype=x.dtype, device=x.device)
        var = np.asarray(self.stds) ** 2 + sigma_bar**2  # (C,)
        logw = np.log(np.asarray(self.weights)) - 0.5 * self.dim * np.log(var)
        diff = x[..., None, :] - mu  # (..., C, d)
        sq = (diff**2).sum(-1)  # (..., C)
        if lib is np:
            logits = logw - 0.5 * sq / var
            logits = logits - logits.max(-1, keepdims=True)
            resp = np.exp(logits)
            resp /= resp.sum(-1, keepdims=True)
            return sigma_bar * (resp[..., None] * diff / var[:, None]).sum(-2)
        var_t = torch.as_tensor(var, dtype=x.dtype, device=x.device)
        logits = torch.as_tensor(logw, dtype=x.dtype, device=x.device) - 0.5 * sq / var_t
        resp = torch.softmax(logits, dim=-1)
        return sigma_bar * (resp[..., None] * diff / var_t[:, None]).sum(-2)

    def eps(self, x: torch.Tensor, sigma_bar: float) -> torch.Tensor:
        """``ε̄ = σ̄ Σ_c r_c(x̄) (x̄ − μ_c)/(s_c² + σ̄²)`` with posterior responsibilities r_c."""
        return self._eps(x, sigma_bar, torch)

    def solution(self, x: torch.Tensor, s_from: float, s_to: float,
                 rtol: float = 1e-12, atol: float = 1e-12) -> torch.Tensor:
        """Reference flow from ``s_from`` to ``s_to`` by DOP853 (rtol 1e-12), float64."""
        x_np = x.detach().cpu().double().numpy()
        shape = x_np.shape

        def f(s, y):
            return self._eps(y.reshape(shape), s, np).ravel()

        sol = solve_ivp(f, (s_from, s_to), x_np.ravel(), method="DOP853", rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"reference solve failed: {sol.message}")
        return torch.from_numpy(sol.y[:, -1].reshape(shape)).to(dtype=x.dtype, device=x.device)

    def prior(self, n: int, sigma_max: float, generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Samples of the marginal at ``σ̄_max`` (a data sample plus σ̄_max noise)."""
        c = torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), n,
                              replacement=True, generator=generator)
        mu = torch.tensor(self.means, dtype=dtype)[c]
        s = torch.tensor(self.stds, dtype=dtype)[c, None]
        z0 = torch.randn(n, self.dim, generator=generator, dtype=dtype)
        z1 = torch.randn(n, self.dim, generator=generator, dtype=dtype)
        return mu + s * z0 + sigma_max * z1

    def data(self, n: int, generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Samples of the data distribution itself (σ̄ = 0)."""
        return self.prior(n, 0.0, generator=generator, dtype=dtype)


class TanhField:
    """A seeded random smooth vector field ``ε̄(x̄, σ̄) = W₂ tanh(W₁ x̄ + σ̄ c + b)``.

    Deterministic for identical inputs, Lipschitz with constant about ``scale``:
    the test bench for exactness claims that must hold for *any* ε.  Works on the
    last axis of any batch shape, in any floating dtype (weights are cast on call).
    """

    def __init__(self, dim: int, hidden: int = 16, seed: int = 0, scale: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.w1 = torch.randn(hidden, dim, generator=g, dtype=torch.float64) / np.sqrt(dim)
        self.c = torch.randn(hidden, generator=g, dtype=torch.float64)
        self.b = torch.randn(hidden, generator=g, dtype=torch.float64)
        self.w2 = torch.randn(dim, hidden, generator=g, dtype=torch.float64) * (
            scale / np.sqrt(hidden))

    def __call__(self, x: torch.Tensor, sigma_bar: float) -> torch.Tensor:
        dt = dict(dtype=x.dtype, device=x.device)
        pre = x @ self.w1.to(**dt).T + sigma_bar * self.c.to(**dt) + self.b.to(**dt)
        return torch.tanh(pre) @ self.w2.to(**dt).T
