"""Stochastic samplers that invert exactly, in O(k) memory (docs/design.md §13).

:func:`stochastic` turns any explicit linear multistep method into a sampler of the reverse
SDE ``dx̄ = (1 + η²) ε̄ dσ̄ + η sqrt(2σ̄) dW̄`` (:mod:`lmsolvers.sde`):

* **the relation**: the method's own coefficients evaluated on the time change τ of the
  noise law (:func:`lmsolvers.sde.time_grid`; ``τ = σ̄^{1+η²}`` for law "sde"), with the ε
  weights multiplied by ``σ̄_m/τ_m`` — row r of the plan is
  ``x̄_r = Σ_j a_j x̄_{r+j} + Σ_j bh_j ε̄_{r+j} + Σ_m g_m z_{r+m}``;
* **the noise**: ``g_{r,m} = A_m c_{r+m}`` — the step noise ``ξ_n = c_n z_n`` of the law
  (:func:`lmsolvers.sde.noise_std`), entered in the principal mode only
  (:func:`lmsolvers.sde.principal_noise_weights`: ``A₀ = 1``, ``A_m = Σ_{j>m} a_j``);
* **the starter** (sampling from ``x̄_N``): the law's one-step member, DDIM's η-step for
  the default law, ``x̄_{m−1} = x̄_m − σ̄_m (1 − ρ) ε̄_m + c_{m−1} z_{m−1}``.

``z_n`` is regenerated from ``(seed, node n, row)`` (:mod:`lmsolvers.noise`), never stored, so
a run keeps the k states of its window, as a deterministic one does.  A BELM stays
bidirectional explicit: inversion solves the same row for its farthest node, subtracting the
regenerated noise (:func:`lmsolvers.engine.lm_step_inverse`), and ``sample(latent)`` returns
x̄₀ to round-off times the method's amplification on the τ-grid (reported by
:meth:`StochasticMethod.amplification`).  The latent records the noise identity (η, law,
generator, seed): another seed or η is refused (:class:`~lmsolvers.LatentMismatchError`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np
import torch

from .engine import Integrator, Run, combine
from .exactness import ExactnessWarning
from .exponential import GROWTH_SCALES, LATENT_SCALE_WARNING
from .grid import Grid
from .latent import Latent, freeze_context
from .method import LMMethod, StepCoefficients, _check_ak_range
from .noise import NOISE_GENERATOR, NoiseSource, check_seed
from .parasitic import gaussian_growth
from .sde import NOISE_LAWS, noise_std, step_ratio, time_grid

__all__ = ["StochasticMethod", "StochasticPlan", "StochasticStabilityWarning", "stochastic",
           "noise_identity_of", "bind_seed", "DRIFTS", "STIFF_WARN"]

#: where the SDE's extra dissipation is paid (docs/design.md §13): ``"time"`` — the method on
#: the τ-grid (sampling as stable as the method, inversion amplified more); ``"relation"`` —
#: the method's own relation with re-scaled ε weights (inversion as exact as the method,
#: stiff directions less damped while sampling); ``"auto"`` — "relation" where it is about
#: as stable as "time" (:data:`STIFF_WARN`), else "time"
DRIFTS = ("auto", "time", "relation")
#: :meth:`StochasticMethod.stiff_growth` of a ``"relation"`` plan, relative to the ``"time"``
#: plan at the same η, beyond which ``"auto"`` takes ``"time"`` and an explicit ``"relation"``
#: warns (chosen on the digits model: docs/design.md §13)
STIFF_WARN = 100.0


#: plans per grid (weakly held) and method key: a run asks for them several times
_PLANS: WeakKeyDictionary = WeakKeyDictionary()


class StochasticStabilityWarning(UserWarning):
    """A ``drift="relation"`` stochastic sampler damps stiff directions too little on this
    grid (its stiff growth far exceeds the ``"time"`` design's): samples degrade."""


@dataclass(frozen=True, eq=False)
class StochasticPlan:
    """A stochastic method on one grid: ``coeffs`` (rows ``a``, ``bh``, ``g``), the time
    change ``tau``, the step noises ``noise_std[n] = c_n``, the starter's ε weights
    ``starter_bh[n] = −σ̄_{n+1}(1 − ρ_n)`` (the one-step member landing on node n) and the
    drift design the rows follow (``"auto"`` resolved)."""

    coeffs: StepCoefficients
    tau: np.ndarray
    noise_std: np.ndarray
    starter_bh: np.ndarray
    drift: str


@dataclass(frozen=True, eq=False)
class StochasticMethod(Integrator):
    """An explicit LM method sampling the reverse SDE with η > 0 (module docstring).

    Parameters
    ----------
    method:
        Any explicit :class:`~lmsolvers.LMMethod` (DDIM, O-BELM, BDIA, designed BELMs, …);
        a BELM gives an exactly invertible stochastic sampler.
    eta:
        The noise level η > 0 (η = 1: the reverse diffusion; DDIM's η for law "ddim").
    law:
        ``"ddim"`` (DDIM's η-step, Song et al. eq. 12/16; η ≤ 1) or ``"sde"`` (the exact
        one-step transition of the SDE, SA-Solver's / SDE-DPM-Solver++'s).
    seed:
        The noise seed (an int, or one int per batch row); :func:`lmsolvers.sample` and
        :func:`lmsolvers.invert` bind it from their ``seed`` argument or the latent.
    drift:
        ``"time"``: the method's coefficients on the τ-grid — sampling keeps the method's
        stability, inversion's amplification grows with η.  ``"relation"``: the method's own
        ``a`` on the σ̄-grid and its ε weights scaled per row to first-order consistency in
        τ — inversion as exact as the deterministic method, but stiff directions grow while
        sampling at large η (:meth:`stiff_growth`; warns beyond :data:`STIFF_WARN`).
        ``"auto"`` (default): "relation" on grids where its stiff growth stays within
        :data:`STIFF_WARN` times the "time" design's, else "time" (``plan(grid).drift``
        says which).  docs/design.md §13 has the trade-off and its measurements.
    """

    method: LMMethod
    eta: float
    law: str = "ddim"
    seed: int | tuple[int, ...] | None = None
    drift: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.method, LMMethod):
            raise TypeError(f"a stochastic sampler wraps an explicit LMMethod, got "
                            f"{type(self.method).__name__} (EDICT's coupled steps have no "
                            "stochastic form here)")
        if not self.method.is_explicit:
            raise ValueError(f"method {self.method.name!r} is implicit (b_0 ≠ 0)")
        eta = self.eta
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not math.isfinite(eta):
            raise TypeError(f"eta must be a finite real number, got {eta!r}")
        if eta <= 0:
            raise ValueError(f"eta must be > 0 for a stochastic sampler, got {eta!r} (eta = 0 "
                             "is the deterministic method itself)")
        if self.law not in NOISE_LAWS:
            raise ValueError(f"unknown noise law {self.law!r}; laws are "
                             f"{', '.join(NOISE_LAWS)}")
        if self.law == "ddim" and eta > 1:
            raise ValueError(f"DDIM's noise law needs eta ≤ 1, got {eta!r}; use law='sde' "
                             "for eta > 1")
        if self.drift not in DRIFTS:
            raise ValueError(f"unknown drift design {self.drift!r}; designs are "
                             f"{', '.join(DRIFTS)}")
        object.__setattr__(self, "eta", float(eta))
        if self.seed is not None:
            object.__setattr__(self, "seed", check_seed(self.seed))

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        """``"<method>+eta(<η>)"``, with ``", sde"`` / ``", relation"`` for the non-default law
        and drift: parses back with :func:`lmsolvers.method_from_name`."""
        law = "" if self.law == "ddim" else f", {self.law}"
        drift = "" if self.drift == "auto" else f", {self.drift}"
        return f"{self.method.name}+eta({self.eta!r}{law}{drift})"

    @property
    def key(self) -> str:
        """The method's key, η, the law and the noise generator (not the seed: a latent
        records it in its ``noise``)."""
        return f"{self.method.key}+eta({self.eta!r},{self.law},{self.drift},{NOISE_GENERATOR})"

    @property
    def k(self) -> int:
        """The method's k."""
        return self.method.k

    @property
    def span(self) -> int:
        """The method's k."""
        return self.method.k

    @property
    def order(self) -> int:
        """Weak order 1 (the noise; docs/design.md §13)."""
        return 1

    @property
    def noise_identity(self) -> tuple[tuple[str, Any], ...]:
        """What a latent records of the noise: η, generator, law and seed."""
        return freeze_context({"eta": self.eta, "law": self.law, "generator": NOISE_GENERATOR,
                               "seed": self.seed})

    def with_seed(self, seed: int | Sequence[int]) -> StochasticMethod:
        """This sampler with its noise keyed on ``seed``."""
        return dataclasses.replace(self, seed=check_seed(seed))

    def __repr__(self) -> str:
        return f"StochasticMethod({self.name!r}, seed={self.seed!r})"

    # ------------------------------------------------------------------ numerics
    def time_grid(self, grid: Grid) -> Grid:
        """The τ-grid the method's coefficients are evaluated on."""
        return Grid(time_grid(grid.sigma_bar, self.eta, self.law))

    def plan(self, grid: Grid) -> StochasticPlan:
        """Rows ``a``, ``bh``, ``g`` on ``grid`` and the starter's weights (module docstring);
        ``drift="auto"`` resolved (:data:`STIFF_WARN`).  Cached per grid."""
        cache = _PLANS.setdefault(grid, {})
        plan = cache.get(self.key)
        if plan is None:
            if self.drift != "auto":
                plan = self._design(grid, self.drift)
            else:
                rel, tim = self._design(grid, "relation"), self._design(grid, "time")
                s = grid.sigma_bar
                ratio = _stiff_growth(rel.coeffs, s, rel.tau) / _stiff_growth(tim.coeffs, s,
                                                                               tim.tau)
                plan = rel if ratio <= STIFF_WARN else tim
            cache[self.key] = plan
        return plan

    def _design(self, grid: Grid, drift: str) -> StochasticPlan:
        s = grid.sigma_bar
        tgrid = self.time_grid(grid)
        tau = tgrid.sigma_bar
        base = self.method.coefficients(tgrid if drift == "time" else grid)
        k, M = self.k, base.a.shape[0]
        rows = np.arange(M)
        bh = base.bh.copy()
        scale = np.stack([s[rows + j] / tau[rows + j] for j in range(1, k + 1)], axis=1)
        if drift == "time":  # ε̃ = ε̄ σ̄/τ at node r + j ≥ 1 (τ > 0 there)
            bh[:, 1:] = bh[:, 1:] * scale
        else:  # one factor per row: first-order consistent in τ, 1 at η = 0
            offsets = tau[rows[:, None] + np.arange(1, k + 1)] - tau[rows, None]
            weight = (bh[:, 1:] / scale).sum(axis=1)
            if np.any(weight == 0.0):
                raise ValueError(f"{self.name!r}: a row without ε weights cannot take the SDE's "
                                 "drift in the relation design; use drift='time'")
            bh = bh * (-(base.a * offsets).sum(axis=1) / weight)[:, None]
        c = noise_std(s, self.eta, self.law)
        tails = np.cumsum(base.a[:, ::-1], axis=1)[:, ::-1]  # tails[:, m] = Σ_{j>m} a_j
        weights = np.concatenate([np.ones((M, 1)), tails[:, 1:]], axis=1)
        g = weights * np.stack([c[rows + m] for m in range(k)], axis=1)
        starter_bh = -s[1:] * (1.0 - step_ratio(s, self.eta, self.law))
        if not (np.all(np.isfinite(bh)) and np.all(np.isfinite(g))):
            raise ValueError(f"{self.name!r}: non-finite stochastic coefficients on this grid")
        return StochasticPlan(StepCoefficients(a=base.a, bh=bh, g=g), tau, c, starter_bh, drift)

    def coefficients(self, grid: Grid) -> StepCoefficients:
        """The rows ``a``, ``bh``, ``g`` on ``grid``."""
        return self.plan(grid).coeffs

    def check_invertible(self, grid: Grid, coeffs: StepCoefficients | None = None,
                         rtol: float = 1e-12) -> StepCoefficients:
        """As :meth:`LMMethod.check_invertible`, for the rows on the τ-grid."""
        c = self.coefficients(grid) if coeffs is None else coeffs
        return self.method.check_invertible(self.time_grid(grid), c, rtol)

    def why_not_invertible(self) -> str | None:
        """As the method (the noise terms never need an unknown state)."""
        return self.method.why_not_invertible()

    @property
    def _gaussian_growth(self) -> bool:
        # methods that measure growth on the Gaussian test problems (exponential methods,
        # whose σ̄-form companion growth would count their σ̄-scaling): the same for their rows
        return type(self.method).amplification is not LMMethod.amplification

    def _growth(self, grid: Grid) -> list[tuple[float, float, float]]:
        c, s = self.coefficients(grid), grid.sigma_bar
        return [(gaussian_growth(c.a, c.bh, s, sc, "forward")[0],
                 *gaussian_growth(c.a, c.bh, s, sc, "backward")) for sc in GROWTH_SCALES]

    def amplification(self, grid: Grid, direction: str = "backward") -> float:
        """Parasitic growth of the rows on ``grid``, measured as the method measures its own
        (:meth:`LMMethod.amplification`, or on the Gaussian test problems for exponential
        methods, :meth:`~lmsolvers.exponential.ExponentialLMMethod.amplification`)."""
        if not self._gaussian_growth:
            return LMMethod.amplification(self, grid, direction)
        rows = self._growth(grid)
        if direction == "both":
            return max(max(f, b) for f, b, _ in rows)
        if direction not in ("forward", "backward"):
            raise ValueError(f"direction must be 'forward', 'backward' or 'both', got "
                             f"{direction!r}")
        return max(f if direction == "forward" else b for f, b, _ in rows)

    def roundoff_amplification(self, grid: Grid) -> float:
        """Local conditioning times backward growth of the rows (as the method measures)."""
        if not self._gaussian_growth:
            return LMMethod.roundoff_amplification(self, grid)
        return max(b * local for _, b, local in self._growth(grid))

    # ------------------------------------------------------------ the protocol
    def stiff_growth(self, grid: Grid) -> float:
        """How much the rows magnify an error in the stiffest direction of a diffusion model,
        relative to the SDE's own contraction there (at least 1).

        The test problem is a point mass, ``ε̄ = x̄/σ̄`` (``∂ε̄/∂x̄ = 1/σ̄``, the largest a
        denoiser has), whose mean path contracts by ``τ_r/τ_m`` from node m to node r.  Each
        row then maps the window linearly with weights ``a_j + bh_j/σ̄_{r+j}``; the result is
        ``max ‖Π S‖₂ · τ_m/τ_r`` over the stretches of rows above node 1 (node 0 of a σ̄_0 = 0
        grid is reached exactly).  The "time" design keeps the method's deterministic value;
        the "relation" design grows with η (docs/design.md §13).
        """
        plan = self.plan(grid)
        return _stiff_growth(plan.coeffs, grid.sigma_bar, plan.tau)

    def prepare(self, grid: Grid, dtype: torch.dtype, direction: str) -> StochasticPlan:
        """The plan on ``grid``; inversion also checks ``a_k`` (as the method does).  A
        ``"relation"`` plan warns (:class:`StochasticStabilityWarning`) when sampling with it
        is far less stable than the ``"time"`` design (:data:`STIFF_WARN`)."""
        plan = self.plan(grid)
        if direction != "forward":
            self.check_invertible(grid, plan.coeffs)
            _check_ak_range(plan.coeffs, self.name, dtype)
        elif self.drift == "relation":
            mine = _stiff_growth(plan.coeffs, grid.sigma_bar, plan.tau)
            ref = dataclasses.replace(self, drift="time").stiff_growth(grid)
            if mine > STIFF_WARN * ref:
                warnings.warn(
                    f"{self.name!r} magnifies errors in stiff directions {mine / ref:.3g} times "
                    f"more than the drift='time' design on this grid (growth {mine:.3g}): its "
                    "samples degrade at this eta; use drift='time' (exact inversion then "
                    "costs more amplification) or a smaller eta", StochasticStabilityWarning,
                    stacklevel=3)
        return plan

    def attach(self, run: Run) -> None:
        """Give the run's window its noise source (keyed on :attr:`seed`), once."""
        w = run.window
        if w.noise_source is None:
            if self.seed is None:
                raise ValueError(f"{self.name!r} needs a noise seed: pass seed=... (the noise is "
                                 "regenerated from it, so inversion and sampling must share it)")
            ev = run.evaluate
            w.noise_source = NoiseSource(self.seed, ev.shape, ev.dtype, ev.device)

    def noisy_starter(self, run: Run, plan: StochasticPlan, m: int, target: int
                      ) -> torch.Tensor:
        """The starter's state at ``target``, next to node m (the stochastic counterpart of
        :meth:`LMMethod.starter_state`; the run, the bit-exact mode and the scheduler start
        through here).

        Down (``target = m − 1``, sampling from x̄_N): the law's one-step member,
        ``x̄_m − σ̄_m (1 − ρ) ε̄_m + c_{m−1} z_{m−1}``.  Up (``target = m + 1``, the free start of
        an inversion, §3): the same read upwards with ε at the lower node,
        ``x̄_m + σ̄_{m+1}(1 − ρ) ε̄_m − c_m z_m`` — approximate, which does not matter for
        exactness, but it must *subtract* the noise of node m: the k states an inversion
        starts from are then ``y = x̄ − W`` of a deterministic start plus the same path W, so
        their differences carry no noise into the parasitic modes (with a plain DDIM starter
        the first difference holds ``ξ_0``, which the inversion amplifies).  Off a clean node
        (σ̄_m = 0, where c_m = 0) the method's own upward starter is used (an exponential
        method's implicit first step keeps the start on the solution)."""
        w = run.window
        if target == m + 1:
            if float(w.sigma_bar[m]) == 0.0:
                return self.method.starter_state(w, m, target)
            return combine([(1.0, w[m]), (-float(plan.starter_bh[m]), w.eps(m)),
                            (-float(plan.noise_std[m]), w.noise(m))])
        return combine([(1.0, w[m]), (float(plan.starter_bh[target]), w.eps(m)),
                        (float(plan.noise_std[target]), w.noise(target))])

    def start(self, run: Run, plan: StochasticPlan, x: torch.Tensor) -> None:
        """``x̄_N``, then the stochastic starter down to node N − k + 1."""
        self.attach(run)
        w, N = run.window, run.grid.N
        w.put(N, x)
        for m in range(N, N - self.k + 1, -1):
            w.put(m - 1, self.noisy_starter(run, plan, m, m - 1))
            run.emit(m - 1)

    def load(self, run: Run, plan: StochasticPlan, latent: Latent) -> None:
        """The latent's k states."""
        self.attach(run)
        for m, st in zip(latent.nodes, latent.states, strict=True):
            run.window.put(m, st)

    def step(self, run: Run, plan: StochasticPlan, r: int) -> None:
        """``x̄_r`` from nodes r+1 … r+k and the noise of nodes r … r+k−1."""
        self.attach(run)
        LMMethod.step(self, run, plan.coeffs, r)

    def start_inverse(self, run: Run, plan: StochasticPlan, x0: torch.Tensor) -> None:
        """``x̄_0``, then the upward starter to node k − 1 (:meth:`noisy_starter`)."""
        self.attach(run)
        w = run.window
        w.put(0, x0)
        for m in range(self.k - 1):
            w.put(m + 1, self.noisy_starter(run, plan, m, m + 1))
            run.emit(m + 1)

    def backward_step(self, run: Run, plan: StochasticPlan, r: int) -> None:
        """``x̄_{r+k}`` from nodes r … r+k−1 and their noise (the same row, solved:
        :meth:`LMMethod.backward_step` on these rows)."""
        self.attach(run)
        LMMethod.backward_step(self, run, plan.coeffs, r)

    def latent(self, run: Run, plan: StochasticPlan,
               context: Mapping[str, Any] | None) -> Latent:
        """The k noisiest states (:meth:`LMMethod.latent`), with the noise identity.  Warns
        (:class:`~lmsolvers.ExactnessWarning`) when the top state is more than
        ``LATENT_SCALE_WARNING`` times the noise scale: the inversion amplified the
        difference between the data and the seed's noise path (large η with the "time"
        design), so the latent is a poor one for editing and its round trip carries more
        round-off (docs/design.md §13)."""
        lat = dataclasses.replace(LMMethod.latent(self, run, plan.coeffs, context),
                                  noise=self.noise_identity)
        top = lat.states[-1]
        scale = math.sqrt(1.0 + float(run.grid.sigma_bar[-1]) ** 2)
        ratio = float(top.detach().double().std()) / scale if top.numel() > 1 else 0.0
        if ratio > LATENT_SCALE_WARNING:
            warnings.warn(
                f"the latent of {self.name!r} on this grid is {ratio:.3g}× the noise scale at "
                f"its top node (drift design {plan.drift!r}): at this eta the inversion "
                "amplifies the mismatch between the data and the seed's noise, so the latent "
                "is not noise-like and its round trip carries more round-off; a smaller eta "
                "or drift='relation' keep it noise-like", ExactnessWarning, stacklevel=4)
        return lat


def _stiff_growth(c: StepCoefficients, sigma_bar: np.ndarray, tau: np.ndarray) -> float:
    """:meth:`StochasticMethod.stiff_growth` of rows ``c`` (Frobenius norms, within √k of the
    spectral ones; all stretches advanced together, O(M) batched products)."""
    M, k = c.a.shape
    rows = np.arange(M - 1, 0, -1)  # the rows above node 1, top first
    if rows.size == 0:
        return 1.0
    mats = np.zeros((rows.size, k, k))
    for i, r in enumerate(rows):
        mats[i, 0] = c.a[r] + c.bh[r, 1:] / sigma_bar[r + 1:r + k + 1]
        mats[i, 1:, :-1] = np.eye(k - 1)
    prods = np.broadcast_to(np.eye(k), (rows.size, k, k)).copy()
    start = tau[rows + 1]  # τ at the top node of each stretch
    best = 1.0
    for i, r in enumerate(rows):  # stretches starting at rows[0..i] now end at row r
        prods[:i + 1] = mats[i] @ prods[:i + 1]
        norms = np.sqrt((prods[:i + 1] ** 2).sum(axis=(1, 2)))
        best = max(best, float(np.max(norms * start[:i + 1])) / tau[r])
    return best


def stochastic(method: Any, eta: float, law: str = "ddim", drift: str = "auto"
               ) -> StochasticMethod:
    """The stochastic sampler of ``method`` (an :class:`~lmsolvers.LMMethod`) at noise level
    ``eta`` under ``law`` with the ``drift`` design (:class:`StochasticMethod`); bind the seed
    with ``seed=`` in :func:`lmsolvers.sample` / :func:`lmsolvers.invert`.

    >>> import lmsolvers as L
    >>> L.stochastic(L.obelm(), 0.5).name
    'obelm+eta(0.5)'
    """
    if isinstance(method, StochasticMethod):
        raise TypeError(f"{method.name!r} is already stochastic")
    if isinstance(method, str):
        raise TypeError("pass a method object (lmsolvers.method_from_name builds one from a "
                        "name, including '<method>+eta(<eta>)')")
    return StochasticMethod(method, eta, law, drift=drift)


def noise_identity_of(integ: Any) -> tuple[tuple[str, Any], ...] | None:
    """The noise identity of an integrator (a stochastic method, or one wrapped by bit-exact
    arithmetic), or ``None`` for a deterministic one."""
    inner = getattr(integ, "method", None)
    for m in (integ, inner):
        if isinstance(m, StochasticMethod):
            return m.noise_identity
    return None


def bind_seed(integ: Any, seed: Any, latent: Latent | None = None) -> Any:
    """``integ`` with the noise seed of its stochastic method bound: ``seed``, else the
    method's own, else the latent's (sampling from a stochastic latent reuses the noise that
    inverted it).  A deterministic integrator is returned as is (``seed`` must be ``None``);
    a wrapper with a ``method`` field (bit-exact arithmetic) gets its method re-seeded."""
    inner = integ if isinstance(integ, StochasticMethod) else getattr(integ, "method", None)
    if not isinstance(inner, StochasticMethod):
        if seed is not None:
            raise ValueError(f"seed is the noise seed of a stochastic method ('<method>+eta(η)',"
                             f" lmsolvers.stochastic); {integ.name!r} is deterministic")
        return integ
    if seed is None:
        seed = inner.seed
    if seed is None and latent is not None:
        seed = dict(latent.noise).get("seed")
    if seed is None:
        raise ValueError(f"{integ.name!r} is stochastic: pass seed=... (its noise is "
                         "regenerated from the seed, so invert and sample must share it)")
    inner = inner.with_seed(seed)
    if isinstance(integ, StochasticMethod):
        return inner
    return dataclasses.replace(integ, method=inner)
