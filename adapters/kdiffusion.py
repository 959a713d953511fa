"""The exact samplers as k-diffusion sampler functions (docs/design.md §11).

k-diffusion, ComfyUI (``comfy.samplers.KSAMPLER``), A1111/Forge and many research scripts
sample with functions ``sample_<name>(model, x, sigmas, extra_args=None, callback=None,
disable=None)`` that call a *denoiser* ``D = model(x, σ·s_in, **extra_args)``.  This module
gives them the library's exact samplers, on the one engine (:func:`lmsolvers.sample` /
:func:`lmsolvers.invert`):

* :func:`sample` / :func:`invert` take any method (a name or object,
  :func:`lmsolvers.method_from_name`; ``None`` is the default exact configuration's,
  :func:`~lmsolvers.adapters.diffusers.default_method`); :func:`sample_exact`,
  :func:`sample_obelm`, :func:`sample_bdia`, :func:`sample_edict`, :func:`sample_belm` and
  their ``invert_*`` twins are thin wrappers;
* :func:`invert` returns the whole exact latent packed into one tensor
  (:func:`lmsolvers.pack_latent`), and :func:`sample` takes it back (or noise, or a
  :class:`~lmsolvers.Latent`); a tensor that carries the packing marker but was changed is
  refused, never used as noise;
* :func:`denoiser_eps` turns a denoiser into the σ̄-ODE's ``ε̄(x̄, σ̄)``;
  :class:`DiffusersDenoiser` turns a diffusers model and scheduler into a denoiser;
  :func:`get_sigmas_designed` gives the nodes of the library's designed grid.

**The conventions** (k-diffusion's ``external.py`` and ``sampling.py``, ComfyUI's
``model_sampling.py``):

* ``model_sampling="eps"`` — every k-diffusion denoiser and ComfyUI's EPS, V_PREDICTION, X0
  and EDM models: the sampler's state is ``x = x_0 + σ n``, so ``x`` and ``σ`` are exactly
  the σ̄-ODE's ``x̄`` and ``σ̄`` (for a VP model ``σ = sqrt((1 − ᾱ)/ᾱ)``), and
  ``D(x, σ) = x̂_0`` gives ``ε̄ = (x̄ − D)/σ̄``;
* ``model_sampling="const"`` — ComfyUI's CONST (rectified flow, SD3/FLUX): the state is
  ``x = (1 − σ) x_0 + σ n`` with ``σ ∈ [0, 1]`` and ``D = x − σ v``.  With ``α = 1 − σ``:
  ``σ̄ = σ/(1 − σ)``, ``x̄ = x/(1 − σ)``, and again ``ε̄ = (x̄ − D)/σ̄`` (``x̄ − D =
  (x − (1 − σ) D)/(1 − σ) = σ n/(1 − σ)``).  A first sigma of 1 (within 2⁻²²) is the
  α = 0 top node: it is not a grid node, and the run enters the grid by
  ``x̄_N = D(x_T, 1) + σ̄_N x_T`` (one model call; docs/design.md §9);
* ``"auto"`` (default): the model's own ``model_sampling`` string (:class:`DiffusersDenoiser`),
  else ComfyUI's ``model_sampling`` object found along ``.inner_model`` (its class derives
  from CONST or from EPS), else ``"eps"``.

The model is called as ``model(x, σ·s_in, **extra_args)`` with ``s_in`` ones of the batch
in ``x``'s dtype, at the exact sigma values given (the same float the caller's tensor
holds), and its output is cast to the state's dtype.  The state has ``x``'s dtype (pass
float64 for a round trip exact to ~1e-13).

**σ = 0.**  Sampling never evaluates the model at node 0; inversion does, once (the
starter step out of the data).  A denoiser says nothing about ε there (``D(x, 0) = x``,
``(x − D)/0``), so the rule is: ``ε̄(x̄, 0) = ε̄(x̄, σ_min)``, the model at the least noisy
level of the run (``sigma_min``: default the smallest positive sigma given).  That step is
approximate anyway and does not affect exactness (docs/design.md §3).  A model that gives ε
itself (:class:`DiffusersDenoiser`) evaluates it at σ = 0 as diffusers does (t = 0).

**Callbacks** get what k-diffusion's and ComfyUI's previews read, once per step:
``{"x", "i", "sigma", "sigma_hat", "denoised"}`` (plus ``"node"`` and ``"sigma_bar"``),
right after the step's first network evaluation at a grid node, with ``x`` that
evaluation's input in the sampler's x-space and ``denoised`` its ``D``: for LM methods the
state the step starts from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lmsolvers.exactness import DEFAULT_TOLERANCE
from lmsolvers.grid import Grid
from lmsolvers.integrate import invert as _core_invert
from lmsolvers.integrate import sample as _core_sample
from lmsolvers.latent import Latent, check_state
from lmsolvers.packing import is_packed_latent, pack_latent, unpack_latent
from lmsolvers.registry import method_from_name

from .diffusers import DiffusersEps, default_design, default_method
from .schedules import (
    _config_of,
    alphas_cumprod_from_config,
    is_flow_config,
    schedule_from_scheduler,
)
from .transformers import model_family

__all__ = [
    "MODEL_SAMPLINGS",
    "DenoiserEps",
    "DiffusersDenoiser",
    "denoiser_eps",
    "get_sigmas_designed",
    "sample",
    "invert",
    "sample_exact",
    "invert_exact",
    "sample_obelm",
    "invert_obelm",
    "sample_bdia",
    "invert_bdia",
    "sample_edict",
    "invert_edict",
    "sample_belm",
    "invert_belm",
]

#: the state conventions of k-diffusion-style models (module docstring)
MODEL_SAMPLINGS = ("eps", "const")
#: a first CONST sigma this close to 1 is the α = 0 top node (as diffusers' flow grids)
_TOP_TOLERANCE = 2.0**-22


# ------------------------------------------------------------------ conventions
def _model_sampling_of(model: Any, given: str) -> str:
    if given != "auto":
        if given not in MODEL_SAMPLINGS:
            raise ValueError(f"model_sampling must be 'auto', 'eps' or 'const', got {given!r}")
        return given
    own = getattr(model, "model_sampling", None)
    if isinstance(own, str) and own in MODEL_SAMPLINGS:
        return own
    obj, seen = model, 0
    while obj is not None and seen < 6:  # ComfyUI: KSamplerX0Inpaint → CFGGuider → BaseModel
        ms = getattr(obj, "model_sampling", None)
        if ms is not None and not isinstance(ms, str):
            names = {c.__name__ for c in type(ms).__mro__}
            if "CONST" in names:
                return "const"
            if "EPS" in names:
                return "eps"
            raise ValueError(f"model_sampling {type(ms).__name__} is neither EPS-like nor "
                             "CONST: pass model_sampling='eps' (state x = x_0 + σ n) or "
                             "'const' (x = (1 − σ) x_0 + σ n)")
        obj, seen = getattr(obj, "inner_model", None), seen + 1
    return "eps"


class _Nodes:
    """The run's nodes from a caller's sigmas: ascending finite σ (caller's units), the
    α = 0 top sigma if any, and where each node's sigma sits in the caller's tensor."""

    def __init__(self, sigmas: Any, model_sampling: str, need_descending: bool) -> None:
        if isinstance(sigmas, torch.Tensor):
            self.given = sigmas.detach()
        else:
            self.given = torch.as_tensor(np.asarray(sigmas, dtype=np.float64))
        s = self.given.to("cpu", torch.float64).numpy().reshape(-1)
        if self.given.dim() != 1 or s.size < 2:
            raise ValueError(f"sigmas must be a 1-D list of at least 2 noise levels (every node "
                             f"including the final one), got shape {tuple(self.given.shape)}")
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            raise ValueError("sigmas must be finite and non-negative")
        d = np.diff(s)
        descending = bool(np.all(d < 0))
        if not (descending or np.all(d > 0)):
            i = int(np.flatnonzero((np.sign(d) != np.sign(d[0])) | (d == 0))[0])
            raise ValueError(f"sigmas must be strictly monotone (no repeated level): entries "
                             f"{i} and {i + 1} are {s[i]!r}, {s[i + 1]!r}")
        if need_descending and not descending:
            raise ValueError("sample_* takes sigmas in sampling order (descending, noisiest "
                             "first, as get_sigmas returns them); to invert, call invert_* "
                             "(it takes either order)")
        self.descending = descending
        asc = s[::-1] if descending else s
        self.position = (lambda m: s.size - 1 - m) if descending else (lambda m: m)
        self.top_sigma: float | None = None
        if model_sampling == "const":
            if asc[-1] > 1.0 + _TOP_TOLERANCE:
                raise ValueError(f"CONST (flow) sigmas lie in [0, 1]; got {asc[-1]!r}")
            if abs(1.0 - asc[-1]) <= _TOP_TOLERANCE:
                self.top_sigma = float(asc[-1])
                asc = asc[:-1]
                if asc.size < 2:
                    raise ValueError("sigmas from σ = 1 need at least two more levels below it: "
                                     "σ = 1 is not a grid node (α = 0), the run enters the grid "
                                     "from it (docs/design.md §9)")
        self.sigma = asc  # ascending, finite nodes 0..N

    @property
    def N(self) -> int:  # noqa: N802 - the maths' name
        return self.sigma.size - 1

    def given_sigma(self, m: int) -> torch.Tensor:
        """The caller's own sigma of node m (a 0-d tensor, as ``sigmas[i]`` in k-diffusion);
        node N + 1 is the α = 0 top node."""
        return self.given[self.position(m)]


def _const_grid(sigma: np.ndarray) -> Grid:
    """``α = 1 − σ``, ``σ̄ = σ/α``, computed as diffusers' flow grids are (schedules.py)."""
    alphas = 1.0 - sigma
    return Grid(sigma / alphas, alphas=alphas)


# ------------------------------------------------------------- denoiser → ε̄
class DenoiserEps:
    """``ε̄(x̄, σ̄)`` of a k-diffusion-convention denoiser ``D(x, σ)`` on a grid: an
    ``eps`` for :func:`lmsolvers.sample`/:func:`lmsolvers.invert`.

    ``"eps"`` models: ``x = x̄``, ``σ = σ̄``; ``"const"`` models: ``x = α x̄`` with
    ``α = 1/(1 + σ̄) = 1 − σ``.  Then ``ε̄ = (x̄ − D)/σ̄`` (module docstring).  At a grid node
    the model gets the node's own sigma value (``node_sigmas``), elsewhere (Runge–Kutta
    stages) the converted one; at σ̄ = 0, the σ_min rule.  :meth:`evaluate` also returns
    ``D``; :meth:`enter` is the entry step out of a CONST α = 0 top node.
    """

    def __init__(self, model: Callable[..., torch.Tensor], grid: Grid, *,
                 model_sampling: str = "eps", extra_args: Mapping[str, Any] | None = None,
                 node_sigmas: Sequence[float] | None = None,
                 sigma_min: float | None = None) -> None:
        if model_sampling not in MODEL_SAMPLINGS:
            raise ValueError(f"model_sampling must be 'eps' or 'const', got {model_sampling!r}")
        self.model, self.grid = model, grid
        self.model_sampling = model_sampling
        self.extra_args = dict(extra_args or {})
        sig = np.asarray(node_sigmas if node_sigmas is not None else
                         (grid.sigma_bar if model_sampling == "eps" else 1.0 - grid.alphas),
                         dtype=np.float64)
        self._node = {float(sb): (float(s), float(a)) for sb, s, a in
                      zip(grid.sigma_bar, sig, grid.alphas, strict=True)}
        positive = grid.sigma_bar[grid.sigma_bar > 0]
        self.sigma_min = float(sigma_min) if sigma_min is not None else float(positive.min())
        if not self.sigma_min > 0:
            raise ValueError(f"sigma_min must be positive, got {sigma_min!r}")

    @property
    def context(self) -> dict[str, Any]:
        """What a latent records about this ε: the state convention."""
        return {"model_sampling": self.model_sampling}

    def _sigma_alpha(self, sigma_bar: float) -> tuple[float, float, float]:
        """``(σ̄, σ, α)`` the model is evaluated at for the σ̄-ODE's σ̄ (σ̄ = 0: σ_min)."""
        if sigma_bar == 0.0:
            sigma_bar = self.sigma_min if self.model_sampling == "eps" else \
                self.sigma_min / (1.0 - self.sigma_min)
            if self.model_sampling == "eps":
                return sigma_bar, self.sigma_min, 1.0
            return sigma_bar, self.sigma_min, 1.0 - self.sigma_min
        node = self._node.get(float(sigma_bar))
        if node is not None:
            return float(sigma_bar), node[0], node[1]
        if self.model_sampling == "eps":
            return float(sigma_bar), float(sigma_bar), 1.0
        return float(sigma_bar), sigma_bar / (1.0 + sigma_bar), 1.0 / (1.0 + sigma_bar)

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``D(x, σ)`` as k-diffusion calls it, in ``x``'s dtype and on its device."""
        s_in = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
        out = self.model(x, s_in, **self.extra_args)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise TypeError(f"the denoiser must return a tensor of the input's shape "
                            f"{tuple(x.shape)}, got "
                            + (f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
                               else type(out).__name__))
        return out.to(x.device, x.dtype)

    def evaluate(self, xbar: torch.Tensor, sigma_bar: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ε̄, D)`` at ``(x̄, σ̄)``."""
        sb, sigma, alpha = self._sigma_alpha(float(sigma_bar))
        x = xbar if self.model_sampling == "eps" else xbar * alpha
        d = self.denoise(x, sigma)
        return (xbar - d) / sb, d

    def __call__(self, xbar: torch.Tensor, sigma_bar: float) -> torch.Tensor:
        """``ε̄(x̄, σ̄)``."""
        return self.evaluate(xbar, sigma_bar)[0]

    def enter(self, x_top: torch.Tensor, top_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x̄_N, D)``: the entry step from the α = 0 top node (CONST at σ = 1, where
        ``x = n`` so ``ε̂ = x_T``): ``x̄_N = D(x_T, 1) + σ̄_N x_T``."""
        d = self.denoise(x_top, top_sigma)
        return d + float(self.grid.sigma_bar[-1]) * x_top, d


def denoiser_eps(model: Callable[..., torch.Tensor], sigmas: Any, *,
                 model_sampling: str = "auto", extra_args: Mapping[str, Any] | None = None,
                 sigma_min: float | None = None) -> tuple[Any, Grid]:
    """``(eps, grid)`` for the σ̄-ODE of a k-diffusion-convention denoiser on ``sigmas``
    (either order; a CONST top sigma of 1 is left out of the grid): run them with
    :func:`lmsolvers.sample`/:func:`lmsolvers.invert` directly.  A model that gives ε itself
    (:class:`DiffusersDenoiser`) returns its own ε-function (bitwise the diffusers ε)."""
    adapter = _adapter(model, model_sampling, extra_args, sigma_min)
    nodes = _Nodes(sigmas, adapter.model_sampling, need_descending=False)
    return adapter.bind(nodes)


# ------------------------------------------------------------------ adapters
class _DenoiserAdapter:
    """A denoiser that gives ``D`` only (k-diffusion's, ComfyUI's, anyone's)."""

    def __init__(self, model: Any, model_sampling: str, extra_args: Mapping[str, Any] | None,
                 sigma_min: float | None) -> None:
        self.model, self.model_sampling = model, model_sampling
        self.extra_args, self.sigma_min = extra_args, sigma_min

    def bind(self, nodes: _Nodes) -> tuple[DenoiserEps, Grid]:
        grid = Grid(nodes.sigma) if self.model_sampling == "eps" else _const_grid(nodes.sigma)
        smin = self.sigma_min
        if smin is None:
            positive = nodes.sigma[nodes.sigma > 0]
            smin = float(positive.min())
        eps = DenoiserEps(self.model, grid, model_sampling=self.model_sampling,
                          extra_args=self.extra_args, node_sigmas=nodes.sigma, sigma_min=smin)
        return eps, grid


def _adapter(model: Any, model_sampling: str, extra_args: Mapping[str, Any] | None,
             sigma_min: float | None) -> Any:
    if not callable(model):
        raise TypeError(f"model must be a denoiser D(x, sigma, **extra_args), got "
                        f"{type(model).__name__}")
    own = getattr(model, "lmsolvers_adapter", None)
    kind = _model_sampling_of(model, model_sampling)
    if own is not None:
        return own(kind, extra_args)
    return _DenoiserAdapter(model, kind, extra_args, sigma_min)


# ------------------------------------------------------------------- callbacks
class _Reporter:
    """k-diffusion's callback from the engine's: one call per step, fired by the step's
    first network evaluation at a grid node (module docstring)."""

    def __init__(self, callback: Callable[[dict[str, Any]], Any], eps: Any, nodes: _Nodes,
                 grid: Grid, first_step: int) -> None:
        self.callback, self.inner, self.nodes, self.grid = callback, eps, nodes, grid
        self.step, self.armed = first_step, True
        self._index = {float(s): m for m, s in enumerate(grid.sigma_bar)}

    def fire(self, i: int, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor,
             node: int, sigma_bar: float) -> None:
        self.callback({"x": x.clone(), "i": i, "sigma": sigma, "sigma_hat": sigma,
                       "denoised": denoised.clone(), "node": node, "sigma_bar": sigma_bar})

    def __call__(self, xbar: torch.Tensor, sigma_bar: float) -> torch.Tensor:
        e, d = self.inner.evaluate(xbar, sigma_bar)
        m = self._index.get(float(sigma_bar))
        if self.armed and m is not None:
            self.armed = False
            x = xbar if self.inner.model_sampling == "eps" else xbar * float(self.grid.alphas[m])
            self.fire(self.step, x, self.nodes.given_sigma(m), d, m, float(sigma_bar))
        return e

    def engine_callback(self, info: dict[str, Any]) -> None:
        self.step += 1
        self.armed = True


# ------------------------------------------------------------------ the runs
def _start_state(x: Any) -> Latent | None:
    if isinstance(x, Latent):
        return x
    if is_packed_latent(x):
        return unpack_latent(x)
    return None


def sample(model: Callable[..., torch.Tensor], x: torch.Tensor | Latent, sigmas: Any,
           method: Any = None, extra_args: Mapping[str, Any] | None = None,
           callback: Callable[[dict[str, Any]], Any] | None = None,
           disable: bool | None = None, *, model_sampling: str = "auto",
           sigma_min: float | None = None) -> torch.Tensor:
    """Sample with an exact method, in k-diffusion's calling convention.

    ``x`` is the noisy state at ``sigmas[0]`` (``x = x_T`` in the sampler's x-space, e.g.
    ``randn * sigmas[0]`` for ``"eps"`` models, pure noise for CONST from σ = 1), **or**
    what :func:`invert` returned (a packed latent; also a :class:`~lmsolvers.Latent`): then
    the run resumes all k states and returns the inverted data up to round-off.  The packed
    latent must come from the same sigmas, method and model convention
    (:class:`~lmsolvers.LatentMismatchError` names what differs) and be unchanged
    (:class:`~lmsolvers.PackedLatentError`).  ``sigmas`` descend (every node, the last
    usually 0); ``method``: name or object, ``None`` = :func:`default_method`.  Returns the
    state at ``sigmas[-1]`` in ``x``'s x-space and dtype (a latent's states' dtype).
    """
    adapter = _adapter(model, model_sampling, extra_args, sigma_min)
    nodes = _Nodes(sigmas, adapter.model_sampling, need_descending=True)
    eps, grid = adapter.bind(nodes)
    integ = method_from_name(default_method(max(grid.N + (nodes.top_sigma is not None), 3),
                                            adapter.model_sampling == "const")
                             if method is None else method)
    latent = _start_state(x)
    top = nodes.top_sigma is not None
    if latent is not None:
        start: torch.Tensor | Latent = latent
        first = integ.span - 1 + top  # steps the latent already covers
    else:
        check_state(x, "x")
        first = 0
    reporter = None if callback is None else _Reporter(callback, eps, nodes, grid, first)
    if latent is None:
        if top:
            start, d = eps.enter(x, nodes.top_sigma)
            if reporter is not None:
                reporter.fire(0, x, nodes.given_sigma(nodes.N + 1), d, nodes.N + 1,
                              math.inf)
                reporter.step = 1
        elif adapter.model_sampling == "const":
            start = x / float(grid.alphas[-1])
        else:
            start = x
    out = _core_sample(reporter or eps, grid, integ, start,
                       callback=None if reporter is None else reporter.engine_callback,
                       disable=disable, context=eps.context)
    return out if adapter.model_sampling == "eps" else out * float(grid.alphas[0])


def invert(model: Callable[..., torch.Tensor], x0: torch.Tensor, sigmas: Any,
           method: Any = None, extra_args: Mapping[str, Any] | None = None,
           callback: Callable[[dict[str, Any]], Any] | None = None,
           disable: bool | None = None, *, model_sampling: str = "auto",
           sigma_min: float | None = None, strict: bool = False,
           tolerance: float = DEFAULT_TOLERANCE) -> torch.Tensor:
    """Exact inversion in k-diffusion's calling convention: the packed latent (one
    ``float64`` tensor, :func:`lmsolvers.pack_latent`) from which :func:`sample` with the
    same ``sigmas`` and method returns ``x0``.

    ``x0`` is the state at the least noisy sigma (the data when it is 0); ``sigmas`` in
    either order (k-diffusion's descending ones, or ComfyUI's flipped ascending ones).  The
    model at σ = 0 follows the σ_min rule (module docstring).  Inversion needs a
    bidirectional explicit method or EDICT; the predicted round-off of the round trip is
    checked as by :func:`lmsolvers.invert` (``strict``, ``tolerance``).
    """
    adapter = _adapter(model, model_sampling, extra_args, sigma_min)
    nodes = _Nodes(sigmas, adapter.model_sampling, need_descending=False)
    eps, grid = adapter.bind(nodes)
    integ = method_from_name(default_method(max(grid.N + (nodes.top_sigma is not None), 3),
                                            adapter.model_sampling == "const")
                             if method is None else method)
    check_state(x0, "x0")
    xbar0 = x0 if adapter.model_sampling == "eps" else x0 / float(grid.alphas[0])
    reporter = None if callback is None else _Reporter(callback, eps, nodes, grid, 0)
    latent = _core_invert(reporter or eps, grid, integ, xbar0,
                          callback=None if reporter is None else reporter.engine_callback,
                          disable=disable, context=eps.context, strict=strict,
                          tolerance=tolerance)
    return pack_latent(latent)


# ------------------------------------------------------------ thin wrappers
def sample_exact(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """:func:`sample` with the default exact configuration's method
    (:func:`~lmsolvers.adapters.diffusers.default_method`); its grid is
    :func:`get_sigmas_designed`."""
    return sample(model, x, sigmas, None, extra_args, callback, disable, **options)


def invert_exact(model, x0, sigmas, extra_args=None, callback=None, disable=None, **options):
    """:func:`invert` with the default exact configuration's method."""
    return invert(model, x0, sigmas, None, extra_args, callback, disable, **options)


def sample_obelm(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """:func:`sample` with O-BELM (two-step, order 2, one network evaluation per step)."""
    return sample(model, x, sigmas, "obelm", extra_args, callback, disable, **options)


def invert_obelm(model, x0, sigmas, extra_args=None, callback=None, disable=None, **options):
    """:func:`invert` with O-BELM."""
    return invert(model, x0, sigmas, "obelm", extra_args, callback, disable, **options)


def sample_bdia(model, x, sigmas, extra_args=None, callback=None, disable=None,
                gamma: float = 1.0, **options):
    """:func:`sample` with BDIA(γ) (γ = 0 is DDIM and cannot be inverted)."""
    return sample(model, x, sigmas, f"bdia({float(gamma)!r})", extra_args, callback, disable,
                  **options)


def invert_bdia(model, x0, sigmas, extra_args=None, callback=None, disable=None,
                gamma: float = 1.0, **options):
    """:func:`invert` with BDIA(γ)."""
    return invert(model, x0, sigmas, f"bdia({float(gamma)!r})", extra_args, callback, disable,
                  **options)


def _edict_name(p: float, alternate: bool) -> str:
    return f"edict({float(p)!r}{', alternate' if alternate else ''})"


def sample_edict(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 p: float = 0.93, alternate: bool = False, **options):
    """:func:`sample` with the published EDICT(p) (two network evaluations per step)."""
    return sample(model, x, sigmas, _edict_name(p, alternate), extra_args, callback, disable,
                  **options)


def invert_edict(model, x0, sigmas, extra_args=None, callback=None, disable=None,
                 p: float = 0.93, alternate: bool = False, **options):
    """:func:`invert` with EDICT(p)."""
    return invert(model, x0, sigmas, _edict_name(p, alternate), extra_args, callback, disable,
                  **options)


def sample_belm(model, x, sigmas, extra_args=None, callback=None, disable=None, k: int = 3,
                **options):
    """:func:`sample` with the designed bidirectional k-step BELM (``"belm<k>"``; RK4 starter)."""
    return sample(model, x, sigmas, f"belm{int(k)}", extra_args, callback, disable, **options)


def invert_belm(model, x0, sigmas, extra_args=None, callback=None, disable=None, k: int = 3,
                **options):
    """:func:`invert` with the designed bidirectional k-step BELM."""
    return invert(model, x0, sigmas, f"belm{int(k)}", extra_args, callback, disable, **options)


# ---------------------------------------------------------------- the grid
def _alphas_cumprod_of(model: Any) -> np.ndarray:
    """The ᾱ table of a model: ``alphas_cumprod`` (:class:`DiffusersDenoiser`), or the σ̄
    table ``sigmas`` of a k-diffusion ``DiscreteSchedule`` / ComfyUI ``model_sampling``
    (``ᾱ = 1/(1 + σ̄²)``), along ``.inner_model``; or a table given directly."""
    if isinstance(model, np.ndarray | torch.Tensor | list | tuple):
        return np.asarray(torch.as_tensor(model).double().cpu().numpy(), dtype=np.float64)
    obj, seen = model, 0
    while obj is not None and seen < 6:
        ac = getattr(obj, "alphas_cumprod", None)
        if ac is not None:
            return np.asarray(torch.as_tensor(ac).double().cpu().numpy(), dtype=np.float64)
        for holder in (obj, getattr(obj, "model_sampling", None)):
            sig = getattr(holder, "sigmas", None)
            if isinstance(sig, torch.Tensor) and sig.dim() == 1:
                s = sig.detach().double().cpu().numpy()
                return 1.0 / (1.0 + s * s)
        obj, seen = getattr(obj, "inner_model", None), seen + 1
    raise ValueError(f"{type(model).__name__} has no ᾱ table (alphas_cumprod) nor σ table "
                     "(sigmas): pass the model's alphas_cumprod")


def get_sigmas_designed(model: Any, n: int, method: Any = None) -> torch.Tensor:
    """The nodes of the library's designed grid for ``n`` steps (float64, descending, ending
    in 0): the grid of the default exact configuration
    (:func:`~lmsolvers.adapters.diffusers.default_design`, the same as
    :class:`~lmsolvers.adapters.DiffusionSampler`'s default), for ``method`` (default: the
    default method) on the model's ᾱ table (:class:`DiffusersDenoiser`, a k-diffusion
    ``DiscreteSchedule``, ComfyUI's ``model_sampling``, or an ``alphas_cumprod`` table).
    Flow (CONST) models have no designed grid: use their own sigmas."""
    if _model_sampling_of(model, "auto") == "const" and not isinstance(
            model, np.ndarray | torch.Tensor | list | tuple):
        raise ValueError("the designed grid needs a DDPM-family ᾱ table; a flow (CONST) model "
                         "samples on its own sigmas (DiffusersDenoiser.get_sigmas)")
    ac = _alphas_cumprod_of(model)
    design = default_design(n, ac[ac > 0], method=method)
    return torch.from_numpy(design.grid.sigma_bar[::-1].copy())


# ---------------------------------------------------- diffusers as a denoiser
class _DiffusersAdapter:
    """ε straight from a diffusers model (no D → ε round-off), on the same grid and with the
    same node timesteps and α as :class:`~lmsolvers.adapters.DiffusionSampler`."""

    def __init__(self, den: DiffusersDenoiser, kind: str,
                 extra_args: Mapping[str, Any] | None) -> None:
        if kind != den.model_sampling:
            raise ValueError(f"this {type(den).__name__} is a {den.model_sampling!r} model, not "
                             f"{kind!r}")
        self.den, self.model_sampling = den, kind
        self.conditioning = dict(extra_args or {})

    def bind(self, nodes: _Nodes) -> tuple[Any, Grid]:
        den = self.den
        if den.model_sampling == "eps":
            full = den.eps_on(None, self.conditioning)
            t, a = zip(*(full.node_params(float(s))[:2] for s in nodes.sigma), strict=True)
            grid = Grid(nodes.sigma, timesteps=np.array(t), alphas=np.array(a))
            return _NativeEps(full, grid), grid
        base = _const_grid(nodes.sigma)
        T = float(den.num_train_timesteps)
        t = (nodes.sigma.astype(np.float32) * np.float32(T)).astype(np.float64)
        grid = Grid(base.sigma_bar, timesteps=t, alphas=base.alphas)
        top_t = None if nodes.top_sigma is None else float(np.float32(nodes.top_sigma) *
                                                           np.float32(T))
        eps = den.eps_on(grid, self.conditioning, top_t)
        return _NativeEps(eps, grid), grid


class _NativeEps:
    """A :class:`~lmsolvers.adapters.DiffusersEps` with :class:`DenoiserEps`'s interface."""

    def __init__(self, eps: DiffusersEps, grid: Grid) -> None:
        self.eps, self.grid = eps, grid
        self.model_sampling = "const" if eps.flow else "eps"

    @property
    def context(self) -> dict[str, Any]:
        return self.eps.context

    def evaluate(self, xbar: torch.Tensor, sigma_bar: float) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.eps(xbar, sigma_bar)
        return e, xbar - float(sigma_bar) * e

    def __call__(self, xbar: torch.Tensor, sigma_bar: float) -> torch.Tensor:
        return self.eps(xbar, sigma_bar)

    def enter(self, x_top: torch.Tensor, top_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        x0_hat, e_hat = self.eps.top(x_top)
        return x0_hat + float(self.grid.sigma_bar[-1]) * e_hat, x0_hat


class DiffusersDenoiser:
    """A diffusers model and scheduler as a k-diffusion denoiser ``D(x, σ) = x̂_0``.

    The k-diffusion counterpart of k-diffusion's ``DiscreteEpsDDPMDenoiser`` /
    ``DiscreteVDDPMDenoiser`` and of ComfyUI's CONST models, for any model
    :class:`~lmsolvers.adapters.DiffusersEps` takes (prediction types ``epsilon``,
    ``v_prediction``, ``sample``, ``flow``; conditioning under the pipelines' names, in the
    constructor or as ``extra_args``).

    * DDPM-family schedulers: ``model_sampling = "eps"``; ``x = x_0 + σ n`` with ``σ = σ̄``
      (``sigmas``: the training table ``sqrt((1 − ᾱ_t)/ᾱ_t)``, ascending).  At a table
      sigma the model gets that integer timestep and ``α = sqrt(ᾱ_t)``, between table
      entries the log-σ̄-interpolated timestep (k-diffusion's non-quantised ``sigma_to_t``).
    * Flow schedulers: ``model_sampling = "const"``; ``x = (1 − σ) x_0 + σ n``, timestep
      ``σ·T``; at σ = 1, ``D = x − v``.

    Called by any k-diffusion sampler it returns ``D``; the functions of this module instead
    take ε from the model directly, on the grid and with the node timesteps
    :class:`~lmsolvers.adapters.DiffusionSampler` uses, so their runs equal that sampler's
    bit for bit.
    """

    def __init__(self, unet: torch.nn.Module, scheduler: Any, *,
                 prediction_type: str | None = None, **conditioning: Any) -> None:
        self.unet, self.scheduler = unet, scheduler
        self.flow = is_flow_config(scheduler)
        #: the state convention (module docstring)
        self.model_sampling = "const" if self.flow else "eps"
        self.prediction_type = prediction_type
        self.conditioning = conditioning
        self.num_train_timesteps = int(_config_of(scheduler).get("num_train_timesteps", 1000))
        self._cache: dict[Any, DiffusersEps] = {}
        if self.flow:
            self.alphas_cumprod = None
            self.sigmas = None
        else:
            ac = alphas_cumprod_from_config(scheduler)
            table = ac[ac > 0]  # ᾱ = 0 (zero terminal SNR) has σ = ∞: not a k-diffusion sigma
            #: the training table ᾱ_t (float64)
            self.alphas_cumprod = table
            self._table = Grid.from_alphas_cumprod(table, np.arange(table.size),
                                                   final_alpha_cumprod=1.0)
            #: σ̄ of every training timestep, ascending (k-diffusion's ``sigmas`` buffer)
            self.sigmas = torch.from_numpy(self._table.sigma_bar[1:].copy())
        if conditioning or model_family(unet) == "unet":  # as DiffusionSampler: bad
            self.eps_on(None, {})  # conditioning fails here, not mid-run

    @property
    def sigma_min(self) -> float:
        """The least noisy training sigma."""
        return 0.0 if self.flow else float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """The noisiest training sigma (1 for flow)."""
        return 1.0 if self.flow else float(self.sigmas[-1])

    def eps_on(self, grid: Grid | None, conditioning: Mapping[str, Any],
               top_timestep: float | None = None) -> DiffusersEps:
        """The :class:`~lmsolvers.adapters.DiffusersEps` on ``grid`` (``None``: the whole
        training table, DDPM family; a two-node probe grid, flow) under the constructor's
        conditioning updated by ``conditioning``."""
        kw = {**self.conditioning, **conditioning}
        key = (None if grid is None else grid.fingerprint(), top_timestep,
               tuple(sorted((k, id(v)) for k, v in kw.items())))
        cached = self._cache.get(key)
        if cached is None:
            if grid is None:
                grid = self._table if not self.flow else Grid(
                    [0.0, 1.0], timesteps=[0.0, self.num_train_timesteps / 2],
                    alphas=[1.0, 0.5])
            cached = DiffusersEps(self.unet, grid, self.scheduler,
                                  prediction_type=self.prediction_type,
                                  top_timestep=top_timestep, **kw)
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def lmsolvers_adapter(self, kind: str, extra_args: Mapping[str, Any] | None) -> Any:
        """What :func:`sample`/:func:`invert` use: ε straight from the model."""
        return _DiffusersAdapter(self, kind, extra_args)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args: Any) -> torch.Tensor:
        """``D(x, σ)`` (``σ`` one value for the whole batch, as ``sigma * s_in``), in ``x``'s
        dtype."""
        s = torch.as_tensor(sigma).detach().reshape(-1).double().cpu()
        if s.numel() == 0 or bool((s != s[0]).any()):
            raise ValueError("DiffusersDenoiser takes one sigma for the whole batch "
                             f"(sigma * s_in), got {s.tolist()}")
        sigma = float(s[0])
        eps = self.eps_on(None, extra_args,
                          float(self.num_train_timesteps) if self.flow else None)
        if not self.flow:
            return x - sigma * eps(x, sigma)
        if abs(1.0 - sigma) <= _TOP_TOLERANCE:
            return eps.top(x)[0]
        xbar = x / (1.0 - sigma)
        return xbar - (sigma / (1.0 - sigma)) * eps(xbar, sigma / (1.0 - sigma))

    def get_sigmas(self, n: int, mu: float | None = None) -> torch.Tensor:
        """``n`` steps of sigmas, descending, ending in 0 (float64).  DDPM family:
        k-diffusion's ``DiscreteSchedule.get_sigmas`` — timesteps evenly spaced from
        ``T − 1`` to 0, σ log-linear between table entries, then 0.  Flow: the stock
        scheduler's sigmas (shift, ``mu``) and 0 (with the σ = 1 top node)."""
        if self.flow:
            sch = schedule_from_scheduler(self.scheduler, n, mu=mu)
            sig = list(1.0 - sch.grid.alphas[::-1])
            if sch.top_sigma is not None:
                sig = [sch.top_sigma] + sig
            return torch.tensor(sig, dtype=torch.float64)
        logs = np.log(self.sigmas.numpy())
        t = np.linspace(logs.size - 1, 0, n)
        lo, hi = np.floor(t).astype(np.int64), np.ceil(t).astype(np.int64)
        w = t - lo
        sig = np.exp((1 - w) * logs[lo] + w * logs[hi])
        return torch.from_numpy(np.concatenate([sig, [0.0]]))
