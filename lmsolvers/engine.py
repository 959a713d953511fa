"""The one engine behind every sampling and inversion run (docs/design.md §6).

Float, bit-exact, EDICT and the diffusers scheduler all run on the pieces here:

* :class:`EpsEvaluator` calls ε, counts the network evaluations (``nfev``, as scipy's
  ``OdeSolver`` does) and checks each output once (shape, dtype, device, finiteness:
  one cheap reduction per call, the exact location only on failure).
* :class:`Window` is *the* sliding window of states of a k-step run and of their ε.
  The invariant that makes inversion exact lives here: ε at node m is evaluated once,
  from the state stored at node m, whichever direction the run goes, so both
  directions feed ε identical inputs.
* :func:`lm_step` / :func:`lm_step_inverse` are the arithmetic of one linear multistep
  relation read both ways; :func:`starter_step` the one-step starters.
* :class:`Integrator` is the protocol ``sample``/``invert`` drive (cf. diffrax's
  ``AbstractSolver``): ``start``/``load`` fill the window, ``step`` lands one node
  lower, ``backward_step`` solves the same relation for the node above, and
  ``latent`` packs the k noisiest states.  LM methods, EDICT and the bit-exact
  arithmetic implement it.
* :class:`Run` holds one run's evaluator, window, callback and progress bar, and
  closes the bar on any exit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .exactness import SolverInstabilityError
from .grid import Grid

if TYPE_CHECKING:
    from .latent import Latent
    from .method import StepCoefficients

__all__ = [
    "EpsFn",
    "Callback",
    "EpsEvaluator",
    "CountingEps",
    "Window",
    "Run",
    "Integrator",
    "combine",
    "lm_step",
    "lm_step_inverse",
    "noise_terms",
    "euler_step",
    "starter_step",
    "all_finite",
    "drive_sampling",
]

EpsFn = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite, with one reduction in the common case.

    A sum is finite when every entry is (unless it overflows); only a non-finite sum
    pays for the element-wise test, so a false alarm costs time, never correctness.
    """
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


class CountingEps:
    """Wrap an ``eps(x̄, σ̄)`` and count its calls: one call is one network evaluation
    (NFE) for the whole batch, the honest cost measure of a sampler."""

    def __init__(self, eps: EpsFn):
        self.eps, self.calls = eps, 0

    def __call__(self, x: torch.Tensor, s: float) -> torch.Tensor:
        self.calls += 1
        return self.eps(x, s)


def _version(x: torch.Tensor) -> int | None:
    try:
        return x._version
    except RuntimeError:  # inference-mode tensors keep no version counter
        return None


def call_unmodified(eps: EpsFn, x: torch.Tensor, s: float, where: str) -> Any:
    """``eps(x, s)``, refusing an ε that changes its input in place (its version counter
    moved, or autograd refused the in-place change of a leaf): the solver keeps that state
    and evaluates ε at it again in the other direction (docs/design.md §4, condition 4)."""
    before = _version(x)
    try:
        e = eps(x, s)
    except RuntimeError as exc:
        if "in-place operation" not in str(exc):
            raise
        changed = True
    else:
        changed = before is not None and _version(x) != before
    if changed:
        raise ValueError(
            f"eps changed its input in place at {where} (sigma_bar = {s:.6g}): ε must leave "
            "the state x̄ unchanged — the solver keeps it and evaluates ε there again in the "
            "other direction (docs/design.md §4, condition 4); compute out of place "
            "(x * 2, not x.mul_(2))")
    return e


class EpsEvaluator:
    """Calls ε on states like ``like``, counts the calls (``nfev``) and checks each output.

    A non-finite output is reported as the solver's instability when the *input* state
    was already non-finite or had grown a million-fold beyond the run's starting state
    (the run diverged), and as ε's fault otherwise.
    """

    #: growth of the state, relative to the starting state, taken as divergence
    DIVERGED = 1e6

    def __init__(self, eps: EpsFn, like: torch.Tensor, check_finite: bool = True):
        self.eps, self.check_finite = eps, check_finite
        self.shape, self.dtype, self.device = like.shape, like.dtype, like.device
        self.nfev = 0
        self._like = like  # its size is read only when ε fails

    def __call__(self, x: torch.Tensor, s: float, where: str) -> torch.Tensor:
        e = call_unmodified(self.eps, x, s, where)
        self.nfev += 1
        if not isinstance(e, torch.Tensor):
            raise TypeError(f"eps must return a torch.Tensor, got {type(e).__name__}")
        if e.shape != self.shape:
            raise ValueError(f"eps returned shape {tuple(e.shape)} for a state of shape "
                             f"{tuple(self.shape)} ({where})")
        if e.dtype != self.dtype or e.device != self.device:
            raise ValueError(
                f"eps returned {e.dtype} on {e.device} for a {self.dtype} state on "
                f"{self.device} ({where}); return the state's dtype and device")
        if self.check_finite and not all_finite(e):
            self._blame(x, s, where)
        return e

    def _blame(self, x: torch.Tensor, s: float, where: str) -> None:
        size = float(x.detach().abs().max().double()) if x.numel() else 0.0
        start = float(self._like.detach().abs().max().double()) if x.numel() else 0.0
        if not np.isfinite(size) or size > self.DIVERGED * (1.0 + start):
            raise SolverInstabilityError(
                f"the state at {where} (sigma_bar = {s:.6g}) is NaN/Inf or has grown to "
                f"{size:.3g} from {start:.3g}: the solver diverged (its parasitic modes grew "
                "without bound on this grid), and ε returned NaN/Inf there; use fewer steps, "
                "a zero-stable method, or check stability_report()")
        raise FloatingPointError(f"eps returned NaN/Inf at {where}, sigma_bar = {s:.6g}, for a "
                                 f"finite input of magnitude {size:.3g}")


class Window:
    """The sliding window of a run's states and of ε at them (docs/design.md §6).

    ``put(m, x)`` stores the state of node m; ``eps(m)`` evaluates ε at node m once,
    from that stored state (or returns what ``set_eps`` supplied, e.g. a pipeline's
    model output); ``drop(m)`` forgets both.  ``aux`` holds a companion per node (the
    integer state in bit-exact mode, EDICT's second chain).  A k-step run keeps at most
    k nodes, which is what makes its memory O(k) for any number of steps.
    """

    def __init__(self, sigma_bar: np.ndarray, evaluate: EpsEvaluator | None = None,
                 on_eps: Callable[[int, torch.Tensor], torch.Tensor] | None = None):
        self.sigma_bar, self.evaluate, self.on_eps = sigma_bar, evaluate, on_eps
        self._x: dict[int, torch.Tensor] = {}
        self._e: dict[int, torch.Tensor] = {}
        self._aux: dict[int, Any] = {}
        #: ``node -> z`` of a stochastic run (:class:`lmsolvers.noise.NoiseSource`), or None
        self.noise_source: Callable[[int], torch.Tensor] | None = None
        self._z: dict[int, torch.Tensor] = {}

    def put(self, m: int, x: torch.Tensor, aux: Any = None) -> None:
        """Store the state of node m (and its companion); a cached ε of m is dropped."""
        self._x[m] = x
        self._e.pop(m, None)
        if aux is None:
            self._aux.pop(m, None)
        else:
            self._aux[m] = aux

    def __getitem__(self, m: int) -> torch.Tensor:
        return self._x[m]

    def __contains__(self, m: int) -> bool:
        return m in self._x

    def aux(self, m: int) -> Any:
        """The companion stored with node m."""
        return self._aux[m]

    def eps(self, m: int) -> torch.Tensor:
        """ε̄ at node m, from the state stored there; evaluated at most once."""
        e = self._e.get(m)
        if e is None:
            if self.evaluate is None:
                raise RuntimeError(f"no ε at node {m}: it was neither given nor can it be "
                                   "evaluated here")
            e = self.evaluate(self._x[m], float(self.sigma_bar[m]), f"node {m}")
            if self.on_eps is not None:
                e = self.on_eps(m, e)
            self._e[m] = e
        return e

    def set_eps(self, m: int, e: torch.Tensor) -> None:
        """Supply ε at node m from outside (the scheduler's model output)."""
        if m not in self._x:
            raise KeyError(f"node {m} has no state in the window")
        self._e[m] = e

    def has_eps(self, m: int) -> bool:
        """Whether ε at node m is known."""
        return m in self._e

    def noise(self, m: int) -> torch.Tensor:
        """The noise ``z_m`` of node m, regenerated by :attr:`noise_source` (once per node
        while the node is in the window): stochastic steps read it in both directions."""
        z = self._z.get(m)
        if z is None:
            if self.noise_source is None:
                raise RuntimeError(f"no noise source for node {m}: a stochastic step runs in a "
                                   "window without one")
            z = self._z[m] = self.noise_source(m)
        return z

    def drop(self, m: int) -> None:
        """Forget node m's state, ε, companion and noise."""
        self._x.pop(m, None)
        self._e.pop(m, None)
        self._aux.pop(m, None)
        self._z.pop(m, None)

    def clear(self) -> None:
        """Forget everything (a new run)."""
        self._x.clear()
        self._e.clear()
        self._aux.clear()
        self._z.clear()

    @property
    def nodes(self) -> list[int]:
        """The nodes held, ascending."""
        return sorted(self._x)


# ------------------------------------------------------------------ arithmetic
def combine(terms: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """``Σ c·t`` with one allocation; the coefficients are Python floats (float64)."""
    (c0, t0), rest = terms[0], terms[1:]
    out = torch.mul(t0, c0)
    for c, t in rest:
        out.add_(t, alpha=c)
    return out


def lm_step(c: StepCoefficients, r: int, w: Window) -> torch.Tensor:
    """One sampling step: ``x̄_r = Σ_j a_{r+1,j} x̄_{r+j} + Σ_j b_{r+1,j} h_{r+j} ε̄_{r+j}``
    (``+ Σ_m g_{r,m} z_{r+m}`` for stochastic coefficients, :func:`noise_terms`).

    ``w`` holds nodes r+1..r+k; ε is asked for only where its weight is non-zero.  The
    one place the sampling arithmetic lives (the diffusers scheduler calls it too, so
    both produce bit-identical states).
    """
    a, bh = c.a[r], c.bh[r]
    k = a.shape[0]
    terms = [(float(a[j - 1]), w[r + j]) for j in range(1, k + 1)]
    terms += [(float(bh[j]), w.eps(r + j)) for j in range(1, k + 1) if bh[j] != 0.0]
    terms += noise_terms(c, r, w, 1.0)
    return combine(terms)


def lm_step_inverse(c: StepCoefficients, r: int, w: Window) -> torch.Tensor:
    """The same relation solved for its farthest node (inversion):
    ``x̄_{r+k} = (x̄_r − Σ_{j<k} a_{r+1,j} x̄_{r+j} − Σ_{j<k} b_{r+1,j} h_{r+j} ε̄_{r+j}) / a_{r+1,k}``.

    Needs ``b_{r+1,k} = 0`` (backward explicit); ``w`` holds nodes r..r+k−1.
    """
    a, bh = c.a[r], c.bh[r]
    k = a.shape[0]
    inv_ak = 1.0 / float(a[k - 1])
    terms = [(inv_ak, w[r])]
    terms += [(-float(a[j - 1]) * inv_ak, w[r + j]) for j in range(1, k)]
    terms += [(-float(bh[j]) * inv_ak, w.eps(r + j)) for j in range(1, k) if bh[j] != 0.0]
    terms += noise_terms(c, r, w, -inv_ak)
    return combine(terms)


def noise_terms(c: StepCoefficients, r: int, w: Window, scale: float
                ) -> list[tuple[float, torch.Tensor]]:
    """``scale · g_{r,m} z_{r+m}`` for m = 0..k−1 (stochastic coefficients; none otherwise):
    the regenerated noise of a stochastic step, in the order both directions add it."""
    g = getattr(c, "g", None)
    if g is None:
        return []
    return [(scale * float(g[r, m]), w.noise(r + m)) for m in range(g.shape[1])
            if g[r, m] != 0.0]


def euler_step(x: torch.Tensor, h: float, e: torch.Tensor) -> torch.Tensor:
    """``x̄ + h ε̄``: DDIM's step (h < 0 going down) and the starter's upward step."""
    return combine([(1.0, x), (h, e)])


def starter_step(w: Window, kind: str, m: int, target: int) -> torch.Tensor:
    """One starter step from node ``m`` (in the window) to the adjacent node ``target``.

    'ddim': explicit Euler, ``x + (σ̄_t − σ̄_m) ε(x_m)`` (1 NFE, local error O(h²)).
    'rk4': classical Runge–Kutta (its first stage is the node's ε; 3 more NFE, local
    error O(h⁵)), so methods of order ≤ 4 keep their global order (docs/design.md §3).
    """
    s = w.sigma_bar
    s_m, s_t = float(s[m]), float(s[target])
    h = s_t - s_m
    x, k1 = w[m], w.eps(m)
    if kind == "ddim":
        return euler_step(x, h, k1)
    ev = w.evaluate
    mid = s_m + 0.5 * h
    where = f"RK4 starter between nodes {m} and {target}"
    k2 = ev(combine([(1.0, x), (0.5 * h, k1)]), mid, where)
    k3 = ev(combine([(1.0, x), (0.5 * h, k2)]), mid, where)
    k4 = ev(combine([(1.0, x), (h, k3)]), s_t, where)
    return combine([(1.0, x), (h / 6, k1), (h / 3, k2), (h / 3, k3), (h / 6, k4)])


# --------------------------------------------------------------------- one run
class Run:
    """One sampling or inversion run: grid, evaluator, window, callback and progress bar.

    A context manager: the progress bar is closed however the run ends.  ``emit(m)``
    hands the callback *copies* of node m's state (and companion), so a callback that
    edits what it receives cannot corrupt the run, and stored entries never alias the
    returned tensor.
    """

    def __init__(self, eps: EpsFn, grid: Grid, like: torch.Tensor, *, check_finite: bool,
                 callback: Callback | None, disable: bool | None, desc: str, total: int,
                 aux_name: str | None = None,
                 on_eps: Callable[[int, torch.Tensor], torch.Tensor] | None = None):
        self.grid = grid
        self.evaluate = EpsEvaluator(eps, like, check_finite)
        self.window = Window(grid.sigma_bar, self.evaluate, on_eps)
        self.callback, self.aux_name = callback, aux_name
        self.bar = tqdm(total=total, disable=disable, desc=desc, leave=False)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()

    def emit(self, m: int) -> None:
        """Report node m to the callback (copies) and advance the progress bar."""
        if self.callback is not None:
            info = {"node": m, "sigma_bar": float(self.grid.sigma_bar[m]),
                    "x": self.window[m].clone(), "nfev": self.evaluate.nfev}
            if self.aux_name is not None:
                info[self.aux_name] = self.window.aux(m).clone()
            self.callback(info)
        self.bar.update()


# -------------------------------------------------------------- the protocol
class Integrator(ABC):
    """What :func:`lmsolvers.sample` and :func:`lmsolvers.invert` drive.

    A run on a grid of N steps: sampling fills the window at the top (``start`` from
    ``x̄_N`` with a starter, or ``load`` from a latent), then ``step(r)`` for
    ``r = N − span … 0`` computes node r from the nodes above it.  Inversion
    (``start_inverse`` from ``x̄_0``) calls ``backward_step(r)`` for ``r = 0 … N − span``,
    solving the relation landing on node r for node ``r + span``; ``latent`` packs the
    k noisiest states.  ``plan`` is what ``prepare`` computed once per grid and dtype
    (coefficients, fixed-point scales); steps do no per-grid work.
    """

    #: name as printed and parsed by :func:`lmsolvers.method_from_name`
    name: str
    #: number of states in a latent
    k: int
    #: nodes one step spans (a k-step LM method: k; EDICT: 1)
    span: int
    #: network evaluations per step (after the starter)
    nfe_per_step: int = 1
    #: the callback key of the window's companion per node, if any
    aux_name: str | None = None

    @property
    @abstractmethod
    def key(self) -> str:
        """Exact identity (method and every parameter): what a latent records."""

    @property
    def order(self) -> int:
        """Order of accuracy of the method (global, on smooth grids)."""
        raise NotImplementedError

    def why_not_invertible(self) -> str | None:
        """A sentence naming why the method has no exact inverse, or ``None``."""
        return None

    @abstractmethod
    def amplification(self, grid: Grid, direction: str = "backward") -> float:
        """Growth of parasitic modes over a run (:func:`lmsolvers.amplification`)."""

    def roundoff_amplification(self, grid: Grid) -> float:
        """Bound on how much a round trip magnifies unit round-off (docs/design.md §4)."""
        return max(1.0, self.amplification(grid, "backward"))

    @abstractmethod
    def prepare(self, grid: Grid, dtype: torch.dtype, direction: str) -> Any:
        """Validate the method on ``grid`` and compute per-grid data once."""

    @abstractmethod
    def start(self, run: Run, plan: Any, x: torch.Tensor) -> None:
        """Put ``x̄_N`` and the starter's nodes N−1 … N−span+1 into the window."""

    @abstractmethod
    def load(self, run: Run, plan: Any, latent: Latent) -> None:
        """Put a latent's states into the window."""

    @abstractmethod
    def step(self, run: Run, plan: Any, r: int) -> None:
        """Sampling: compute node r from the window and drop node r + span."""

    @abstractmethod
    def start_inverse(self, run: Run, plan: Any, x0: torch.Tensor) -> None:
        """Put ``x̄_0`` and the starter's nodes 1 … span−1 into the window."""

    @abstractmethod
    def backward_step(self, run: Run, plan: Any, r: int) -> None:
        """Inversion: compute node r + span from the window and drop node r."""

    @abstractmethod
    def latent(self, run: Run, plan: Any, context: Mapping[str, Any] | None) -> Latent:
        """The latent of the finished inversion."""

    def result(self, run: Run, plan: Any) -> torch.Tensor:
        """The sampled ``x̄_0``."""
        return run.window[0]


def drive_sampling(integ: Integrator, plan: Any, run: Run, x: torch.Tensor | Latent,
                   from_latent: bool) -> torch.Tensor:
    """The sampling loop: fill the window at the top (``load`` a latent or ``start`` from
    ``x̄_N``), then ``step(r)`` for ``r = N − span … 0``, reporting each new node; returns
    ``x̄_0``.  Afterwards ``run.window`` holds the bottom nodes (what a reversal needs)."""
    if from_latent:
        integ.load(run, plan, x)
    else:
        integ.start(run, plan, x)
    for r in range(run.grid.N - integ.span, -1, -1):
        integ.step(run, plan, r)
        run.emit(r)
    return integ.result(run, plan)
