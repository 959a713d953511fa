"""Exponential linear multistep methods in data-prediction variables (docs/design.md §12).

An :class:`ExponentialLMMethod` is defined by its relation on ``ȳ = x̄/σ̄`` and the data
prediction ``D = x̄ − σ̄ ε̄`` (:mod:`lmsolvers.expsymbolic`),

    ȳ_r = Σ_{j=1..k} a_j ȳ_{r+j} + e^{λ_r} Σ_{m=1..k−1} β_m D_{r+m},     λ = −log σ̄,

whose coefficients are functions of the log-steps ``ℓ_j = log(σ̄_{r+j}/σ̄_{r+j−1})``.  On a
grid it is, node by node, a linear relation among x̄'s and ε̄'s,

    x̄_r = Σ_j (a_j σ̄_r/σ̄_{r+j} + β_j) x̄_{r+j} − Σ_m β_m σ̄_{r+m} ε̄_{r+m},

so it *is* an :class:`~lmsolvers.LMMethod` of the σ̄-ODE (its ``a``/``b`` fields hold that
form in the step symbols ``h1..hk`` and ``s0``) and runs on the one engine unchanged:
sampling, exact inversion, latents, bit-exact mode, gradients by reversal, the diffusers
scheduler.  Only its numbers come from here: :meth:`ExponentialLMMethod.coefficients`
evaluates the compiled relation on the grid's log-steps.

**Landing on σ̄ = 0.**  At ``σ̄_r = 0`` (λ = ∞) the relation degenerates (``a_k σ̄_r/σ̄_{r+k}``
vanishes: not invertible).  The step onto a clean node is therefore its own relation, the
frozen-data-prediction step ``x̄_0 = D_1`` (DDIM's, DPM-Solver++'s and UniPC's last step;
exact where D is constant below ``σ̄_1``) plus ``γ`` times a *defect* across nodes 1..k that
vanishes on the exact solution to some order and holds ``x̄_k``
(:func:`landing_relation`):

* ``"adams"`` (the designs' default, γ = 1): the defect of
  ``ȳ_1 = ȳ_k + e^{λ_1} Σ_{m<k} w_m D_m``, exact for D of degree ≤ k − 2 in λ;
* ``"data"``: the same with D held constant, ``x̄_1 − z x̄_k − (1 − z) D_1``, ``z = σ̄_1/σ̄_k``;
* ``"eps"``: the Euler defect in σ̄, ``x̄_k − x̄_1 − (σ̄_k − σ̄_1) ε̄_1``.

All are explicit both ways; inversion divides once by the ``x̄_k``-weight (``γ z`` or ``γ``).

**Starters.**  ``"eab2"``: sampling from ``x̄_N`` fills nodes ``N−1 … N−k+1`` with the
exponential Adams–Bashforth steps of order 1 (DDIM) then 2 (:func:`exp_adams`), one
network evaluation per node, all at grid nodes (so a pipeline loop can run it).  Upwards
(the free start of an inversion, docs/design.md §3) the step off a clean node solves the
landing's frozen prediction backwards, ``D(x̄_1, σ̄_1) = x̄_0``, by fixed-point iteration
(:data:`IMPLICIT_ITERATIONS` extra evaluations), then DDIM: starting on the solution keeps
the parasitic modes unexcited and the latent noise-like.  ``"ddim"`` and ``"rk4"`` as for
every LM method.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

import numpy as np
import sympy as sp
import torch

from .analysis import ZETA, RootInfo, roots_of
from .engine import Run, Window, combine, starter_step
from .exactness import ExactnessWarning
from .expsymbolic import (
    NUMERIC_MODULES,
    compile_relation,
    equal_step_lte,
    exp_adams,
    exp_lte_coefficients,
    exp_order_of,
    exp_vanishes,
    exp_weights,
    growth_parameters,
    log_step_symbols,
    solve_exp_order_conditions,
)
from .grid import Grid
from .latent import Latent
from .method import S0, LMMethod, MethodInfo, StepCoefficients, nonvanishing, step_symbols
from .parasitic import gaussian_growth
from .symbolic import offsets

__all__ = ["ExponentialLMMethod", "ExpAnalysis", "exponential_method", "LANDINGS", "STARTERS",
           "landing_relation"]

#: how the step onto σ̄ = 0 is made (module docstring)
LANDINGS = ("adams", "data", "eps")
#: starters of exponential methods
STARTERS = ("eab2", "eab", "ddim", "rk4")
#: fixed-point iterations of the implicit first inversion step (``starter="eab2"``)
IMPLICIT_ITERATIONS = 4
#: a latent whose top state is this many times the solution's scale sqrt(1 + σ̄_N²) is
#: reported (ExactnessWarning): far from noise-like, and carrying more round-off than R says
LATENT_SCALE_WARNING = 10.0
#: data scales of the Gaussian test problems that measure growth (docs/design.md §12):
#: directions with standard deviation from 1e-3 to 1, that of data in [−1, 1] (the
#: diffusion convention; data of larger scale need their own bound)
GROWTH_SCALES = tuple(float(v) for v in np.geomspace(1e-3, 1.0, 7))

_S1, _SK = sp.symbols("sigma1 sigmak", positive=True)


@cache
def _defect_weights(k: int) -> tuple[sp.Expr, ...]:
    """``w_1..w_{k−1}`` of the defect relation of the ``"adams"`` landing:
    ``ȳ_1 = ȳ_k + e^{λ_1} Σ_{m=1..k−1} w_m D_m``, exact for D polynomial of degree ≤ k − 2
    in λ, in the log-steps ``l1..l{k−1}`` of nodes 1..k (the step's ``ℓ_2..ℓ_k``)."""
    kp = k - 1
    fixed = {f"a{j}": sp.Integer(1 if j == kp else 0) for j in range(1, kp + 1)}
    _, beta = solve_exp_order_conditions(kp, kp, fixed=fixed, beta_nodes=range(0, kp))
    return tuple(beta[:kp])


def landing_relation(kind: str, gamma: sp.Expr, k: int = 2) -> tuple[list[sp.Expr],
                                                                      list[sp.Expr]]:
    """The step onto σ̄ = 0 of a k-step method as ``x̄_0 = Σ_j A_j x̄_j + Σ_j W_j ε̄_j``:
    ``(A_1..A_k, W_1..W_k)`` in the symbols ``sigma1 = σ̄_1``, ``sigmak = σ̄_k`` and (for
    ``"adams"``) the log-steps ``l1..l{k−1}`` of nodes 1..k (module docstring)."""
    g = sp.sympify(gamma)
    A = [sp.Integer(0)] * k
    W = [sp.Integer(0)] * k
    if kind == "eps":  # x̄_0 = D_1 + γ (x̄_k − x̄_1 − (σ̄_k − σ̄_1) ε̄_1)
        A[0], A[-1], W[0] = 1 - g, g, -(_S1 + g * (_SK - _S1))
        return A, W
    if kind == "data":  # the defect exact for D constant: w = (1 − z, 0, …)
        w = [1 - _S1 / _SK] + [sp.Integer(0)] * (k - 2)
        sig = [_S1] + [None] * (k - 2)
    elif kind == "adams":
        ell = log_step_symbols(k - 1)
        w = list(_defect_weights(k))
        # σ̄_m/σ̄_1 = exp(ℓ'_1 + … + ℓ'_{m−1}) in the log-steps of nodes 1..k
        sig = [_S1 * sp.exp(sp.Add(*ell[: m])) for m in range(k - 1)]
    else:
        raise ValueError(f"landing must be one of {LANDINGS}, got {kind!r}")
    # x̄_0 = D_1 − γ (x̄_1 − z x̄_k − Σ_m w_m D_m),  D_m = x̄_m − σ̄_m ε̄_m,  z = σ̄_1/σ̄_k
    A[0] += 1 - g
    W[0] += -_S1
    A[-1] += g * _S1 / _SK
    for m in range(k - 1):
        if w[m] == 0:
            continue
        A[m] += g * w[m]
        W[m] += -g * w[m] * sig[m]
    return A, W


@dataclass(frozen=True)
class ExpAnalysis:
    """What the symbolic analysis of an exponential method establishes.

    ``order``: exact for D polynomial of degree < order in λ, on any grid;
    ``error_constant``: ``C_{order+1}`` in the log-steps (the D^(order) coefficient of the
    LTE); ``order_equal`` and ``leading_equal``: at equal log-steps ℓ the LTE is
    ``e^{λ_r} ℓ^{order_equal+1} Σ_l c_l D^{(l)}`` (``{l: c_l}``); ``rho`` and ``roots``: ρ of
    the relation on ȳ; ``growth``: ``[(ζ_j, κ_j)]`` (:func:`growth_parameters`, principal
    first), whose parasitic ``1 − κ_j`` is the exponent of inversion growth (§11).
    """

    order: int
    error_constant: sp.Expr
    order_equal: int
    leading_equal: dict
    rho: sp.Poly
    roots: list[RootInfo]
    growth: list[tuple[complex, complex]]

    @property
    def growth_exponent(self) -> float:
        """``max_j (1 − Re κ_j)`` over the parasitic roots: a mode excited while inverting
        grows relative to the solution by ``exp(g ∫ J dλ)``."""
        return max(1.0 - k.real for _, k in self.growth[1:]) if len(self.growth) > 1 else 0.0

    def leading_term(self) -> str:
        """The equal-step leading LTE term as text."""
        terms = " + ".join(f"({sp.sstr(c)}) D^({l})" for l, c in sorted(
            self.leading_equal.items()))
        return f"ell^{self.order_equal + 1} * [{terms}]"


@dataclass(frozen=True, eq=False)
class ExponentialLMMethod(LMMethod):
    """A k-step exponential LM method (module docstring); build it with
    :func:`exponential_method`.

    Extra fields: ``ya`` (``a_1..a_k`` on ȳ: numbers or expressions in the log-steps
    ``l1..lk``), ``beta`` (``β_0..β_k``, scale-free D-weights), ``landing`` and
    ``landing_gamma`` (the step onto σ̄ = 0).  The inherited ``a``/``b`` hold the same
    relation in the σ̄-step symbols (for display and generic tools); numbers come from the
    compiled ``ya``/``beta``.
    """

    ya: tuple = ()
    beta: tuple = ()
    landing: str = "data"
    landing_gamma: Any = sp.Rational(1, 10)

    def __post_init__(self) -> None:
        ya = tuple(sp.sympify(e) for e in self.ya)
        beta = tuple(sp.sympify(e) for e in self.beta)
        k = len(ya)
        if k < 2 or len(beta) != k + 1:
            raise ValueError(f"an exponential method needs k ≥ 2 a's and k + 1 β's; got "
                             f"{len(ya)} and {len(beta)}")
        allowed = set(log_step_symbols(k))
        extra = set().union(*(e.free_symbols for e in ya + beta)) - allowed
        if extra:
            raise ValueError(f"coefficients of {self.name!r} use symbols "
                             f"{sorted(map(str, extra))}; only the log-steps l1..l{k} are "
                             "allowed")
        if self.landing not in LANDINGS:
            raise ValueError(f"landing must be one of {LANDINGS}, got {self.landing!r}")
        g = sp.nsimplify(self.landing_gamma, rational=True)
        if not (g.is_Rational and 0 < g <= 1):
            raise ValueError(f"landing_gamma must be a number in (0, 1] (γ = 0 would make the "
                             f"landing step not invertible), got {self.landing_gamma!r}")
        if self.starter not in STARTERS:
            raise ValueError(f"starter must be one of {STARTERS}, got {self.starter!r}")
        object.__setattr__(self, "ya", ya)
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "landing_gamma", g)
        # the σ̄-form fields of LMMethod, in h1..hk and s0 (validated by the base class)
        a, b = _sigma_form(ya, beta)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        starter = self.starter
        object.__setattr__(self, "starter", "ddim")  # the base class knows ddim/rk4 only
        super().__post_init__()
        object.__setattr__(self, "starter", starter)

    # ----------------------------------------------------------- structure
    def symbolic(self) -> dict[str, Any]:
        """``{'a': [a_1..a_k], 'beta': [β_0..β_k], 'landing': (A_1, A_k, w_1)}``: the
        relation on ``ȳ``/``D`` in the log-steps, and the landing step in ``σ̄_1, σ̄_k``."""
        return {"a": list(self.ya), "beta": list(self.beta),
                "landing": landing_relation(self.landing, self.landing_gamma, self.k)}

    @cached_property
    def is_explicit(self) -> bool:
        """``β_0 ≡ 0``: no D (so no ε) at the new node."""
        return exp_vanishes(self.beta[0])

    @cached_property
    def is_backward_explicit(self) -> bool:
        """``β_k ≡ 0``: no D at the oldest node (the landing step has none by construction)."""
        return exp_vanishes(self.beta[-1])

    @cached_property
    def ak_nonvanishing(self) -> bool:
        """``a_k`` provably non-zero for all positive log-steps (then the x̄-weight
        ``a_k σ̄_r/σ̄_{r+k}`` is too), and the landing's ``x̄_k``-weight ``γ z`` or ``γ`` is."""
        return nonvanishing(self.ya[-1])

    def why_not_bidirectional_explicit(self) -> str | None:
        """A sentence naming the violated condition, or ``None``."""
        if not self.is_explicit:
            return f"β_0 = {self.beta[0]} is not identically 0 (D at the new node: implicit)"
        if not self.is_backward_explicit:
            return (f"β_k = {self.beta[-1]} is not identically 0, so the relation solved for "
                    "the oldest node needs D (hence ε) there (not backward explicit)")
        if not self.ak_nonvanishing:
            return f"a_k = {self.ya[-1]} is not provably non-zero for all positive log-steps"
        return None

    def __repr__(self) -> str:
        return f"ExponentialLMMethod({self.name!r}, k={self.k})"

    @cached_property
    def key(self) -> str:
        """Name plus a digest of the exact relation, landing and starter."""
        text = "|".join(["exponential", self.starter, self.landing, str(self.landing_gamma),
                         *(sp.srepr(e) for e in self.ya + self.beta)])
        return f"{self.name}#{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}"

    def characteristic_polynomial(self) -> sp.Poly:
        """``ρ(ζ) = ζ^k − Σ a_j ζ^{k−j}`` of the relation on ȳ (as all log-steps → 0)."""
        k = self.k
        ell = log_step_symbols(k)
        equal = {s: ell[0] for s in ell[1:]}
        a = [sp.limit(e.xreplace(equal), ell[0], 0) if e.free_symbols else e for e in self.ya]
        return sp.Poly(ZETA**k - sum(a[j - 1] * ZETA ** (k - j) for j in range(1, k + 1)),
                       ZETA)

    def analysis(self) -> ExpAnalysis:
        """Order, error constants, ρ on ȳ, its roots and growth parameters (cached)."""
        return _analysis(self)

    @property
    def growth(self) -> list[tuple[complex, complex]]:
        """``[(ζ_j, κ_j)]`` of ρ on ȳ at equal log-steps (:func:`growth_parameters`)."""
        rho = self.characteristic_polynomial()
        a = [-c for c in rho.all_coeffs()[1:]]
        return growth_parameters(a)

    def latent(self, run: Run, plan: StepCoefficients,
               context: Mapping[str, Any] | None) -> Latent:
        """The k noisiest states; warns when the top state is far beyond the solution's
        scale (:data:`LATENT_SCALE_WARNING`): the inversion's starter excited parasitic
        modes that grew (a grid whose first λ-steps are very long, e.g. 'leading' spacing
        with few steps), so the latent is not noise-like and its round trip carries more
        round-off than :meth:`roundoff_amplification` assumes (docs/design.md §12)."""
        lat = super().latent(run, plan, context)
        top = lat.states[-1]
        scale = float(np.sqrt(1.0 + float(run.grid.sigma_bar[-1]) ** 2))
        ratio = float(top.detach().double().std()) / scale if top.numel() > 1 else 0.0
        if ratio > LATENT_SCALE_WARNING:
            warnings.warn(
                f"the latent of {self.name!r} on this grid (N = {run.grid.N}) is {ratio:.3g}× "
                "the noise scale at its top node: the inversion's start excited parasitic "
                "modes (long first λ-steps), so it is a poor latent for editing and its round "
                "trip may carry more round-off than predicted. Use a grid with shorter steps "
                "near the data (lmsolvers.loggrid, DiffusionSampler's designed grid) or "
                "O-BELM", ExactnessWarning, stacklevel=4)
        return lat

    # ---------------------------------------------------- growth on a grid
    def _growth(self, grid: Grid) -> list[tuple[float, float, float]]:
        c = self.coefficients(grid)
        out = []
        for s in GROWTH_SCALES:
            back, local = gaussian_growth(c.a, c.bh, grid.sigma_bar, s, "backward")
            fwd, _ = gaussian_growth(c.a, c.bh, grid.sigma_bar, s, "forward")
            out.append((fwd, back, local))
        return out

    def amplification(self, grid: Grid, direction: str = "backward") -> float:
        """Growth of a perturbation over a run relative to the solution, worst over the
        Gaussian test problems of :data:`GROWTH_SCALES`
        (:func:`~lmsolvers.parasitic.gaussian_growth`).  The σ̄-form companion growth of
        other LM methods sees the flow ``ε̄ = 0``, on which the σ̄-scaling that exponential
        methods follow by design would count as growth (docs/design.md §12)."""
        if direction not in ("forward", "backward", "both"):
            raise ValueError(f"direction must be 'forward', 'backward' or 'both', got "
                             f"{direction!r}")
        rows = self._growth(grid)
        if direction == "both":
            return max(max(f, b) for f, b, _ in rows)
        return max(f if direction == "forward" else b for f, b, _ in rows)

    def roundoff_amplification(self, grid: Grid) -> float:
        """Worst, over the Gaussian test problems, of the local conditioning of a step
        times the backward growth: the bound ``invert`` compares with its tolerance."""
        return max(b * local for _, b, local in self._growth(grid))

    # ------------------------------------------------------------- numerics
    @cached_property
    def _relation(self):
        return compile_relation(self.ya, self.beta)

    @cached_property
    def _landing(self):
        A, W = landing_relation(self.landing, self.landing_gamma, self.k)
        args = (_S1, _SK, *log_step_symbols(max(self.k - 1, 1)))
        return sp.lambdify(args, A + W, modules=NUMERIC_MODULES)

    def _adams(self, p: int):
        return _compiled_adams(p)

    def coefficients(self, grid: Grid) -> StepCoefficients:
        """The σ̄-form coefficients of every step of ``grid`` (module docstring); the step
        onto ``σ̄_0 = 0`` is the landing relation."""
        k = self.k
        grid.require_steps(k, f"method {self.name!r} (k = {k})")
        s = grid.sigma_bar
        M = grid.N - k + 1
        a = np.zeros((M, k))
        bh = np.zeros((M, k + 1))
        first = 1 if s[0] == 0.0 else 0
        if first < M:
            rows = np.arange(first, M)
            logs = [np.log(s[rows + j] / s[rows + j - 1]) for j in range(1, k + 1)]
            vals = [np.broadcast_to(np.asarray(v, dtype=np.float64), rows.shape)
                    for v in self._relation(*logs)]
            ya, beta = vals[:k], vals[k:]
            for j in range(1, k + 1):
                a[rows, j - 1] = ya[j - 1] * (s[rows] / s[rows + j]) + beta[j]
                bh[rows, j] = -beta[j] * s[rows + j]
            bh[rows, 0] = -beta[0] * s[rows]
        if first:
            logs = [np.log(s[j + 1] / s[j]) for j in range(1, max(k - 1, 1) + 1)]
            vals = [float(v) for v in self._landing(s[1], s[k], *logs)]
            a[0, :] = vals[:k]
            bh[0, 1:] = vals[k:]
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(bh))):
            bad = np.flatnonzero(~(np.isfinite(a).all(1) & np.isfinite(bh).all(1)))
            raise ValueError(f"method {self.name!r} has non-finite coefficients on this grid "
                             f"at the steps landing on nodes {bad.tolist()[:10]}")
        return StepCoefficients(a=a, bh=bh)

    def starter_state(self, w: Window, m: int, target: int) -> torch.Tensor:
        """Sampling (``target = m − 1``) with ``"eab2"``/``"eab"``: the exponential
        Adams–Bashforth step (:func:`exp_adams`) from node m and the nodes above it in the
        window, of order ≤ 2 (``"eab2"``) or ≤ k − 1 (``"eab"``; DDIM when only node m is
        there); onto σ̄ = 0 DDIM; upwards the implicit first step, then DDIM (module
        docstring)."""
        if self.starter not in ("eab", "eab2"):
            return super().starter_state(w, m, target)
        s = w.sigma_bar
        if target == m + 1 and float(s[m]) == 0.0 and w.evaluate is not None:
            return self._implicit_first(w, m, target)
        if target != m - 1 or float(s[target]) == 0.0:
            return starter_step(w, "ddim", m, target)
        top = 2 if self.starter == "eab2" else self.k - 1
        p = 1
        while p < top and (m + p) in w:
            p += 1
        if p == 1:
            return starter_step(w, "ddim", m, target)
        nodes = [target] + [m + j for j in range(p)]
        logs = [float(np.log(s[nodes[j + 1]] / s[nodes[j]])) for j in range(p)]
        vals = [float(v) for v in self._adams(p)(*logs)]
        beta = vals[p:]  # β_0..β_p; D at nodes m … m+p−1 (β_1..β_p)
        st = float(s[target])
        terms = [(st / float(s[m]), w[m])]
        for j in range(1, p + 1):
            node = m + j - 1
            terms += [(beta[j], w[node]), (-beta[j] * float(s[node]), w.eps(node))]
        return combine(terms)

    def _implicit_first(self, w: Window, m: int, target: int) -> torch.Tensor:
        """The first step of an inversion, off the clean node: the inverse of the landing's
        frozen data prediction, ``D(x̄_1, σ̄_1) = x̄_0``, by the fixed-point iteration
        ``x̄_1 ← x̄_0 + σ̄_1 ε̄(x̄_1, σ̄_1)`` from DDIM's ``x̄_0 + σ̄_1 ε̄(x̄_0, σ̄_0)``
        (:data:`IMPLICIT_ITERATIONS` extra network evaluations).  It puts node 1 on the
        solution, which keeps the parasitic modes of the inversion unexcited: the latent
        stays noise-like (docs/design.md §12)."""
        s1 = float(w.sigma_bar[target])
        x0 = w[m]
        x = starter_step(w, "ddim", m, target)
        for i in range(IMPLICIT_ITERATIONS):
            x = combine([(1.0, x0), (s1, w.evaluate(x, s1, f"implicit start, iteration {i}"))])
        return x


def _sigma_form(ya: Sequence[sp.Expr], beta: Sequence[sp.Expr]
                ) -> tuple[tuple[sp.Expr, ...], tuple[sp.Expr, ...]]:
    """The relation in σ̄-steps: ``ℓ_j = log((s0 + D_j)/(s0 + D_{j−1}))``,
    ``a_j = (a_j e^{−L_j} + β_j)/(1 − β_0)``, ``b_j h_j = −β_j σ̄_{r+j}/(1 − β_0)``."""
    k = len(ya)
    h = step_symbols(k)
    D = offsets(k)
    ell = log_step_symbols(k)
    sub = {ell[j - 1]: sp.log((S0 + D[j]) / (S0 + D[j - 1])) for j in range(1, k + 1)}
    ya_h = [e.xreplace(sub) for e in ya]
    beta_h = [e.xreplace(sub) for e in beta]
    den = 1 - beta_h[0]
    a = tuple((ya_h[j - 1] * S0 / (S0 + D[j]) + beta_h[j]) / den for j in range(1, k + 1))
    b = tuple([-beta_h[0] * S0 / (h[0] * den)]
              + [-beta_h[j] * (S0 + D[j]) / (h[j - 1] * den) for j in range(1, k + 1)])
    return a, b


def exponential_method(name: str, a: Sequence[Any], *, beta: Sequence[Any] | None = None,
                       starter: str = "eab2", landing: str = "data",
                       landing_gamma: float = 0.1, info: MethodInfo | None = None
                       ) -> ExponentialLMMethod:
    """The exponential LM method with ȳ-weights ``a`` and D-weights ``beta`` (default: the
    weights exact for D polynomial of degree ≤ k − 2 in λ, :func:`exp_weights`; then the
    order is k − 1).  ``landing``/``landing_gamma``: the step onto σ̄ = 0; ``starter``:
    ``"eab2"``, ``"ddim"`` or ``"rk4"`` (module docstring)."""
    ya = [sp.nsimplify(v, rational=True) if isinstance(v, float) else sp.sympify(v) for v in a]
    bt = exp_weights(ya) if beta is None else [sp.sympify(v) for v in beta]
    if info is None and beta is None:
        info = MethodInfo(order=len(ya) - 1, design="exponential, weights exact for "
                          f"D of degree ≤ {len(ya) - 2} in λ")
    g = sp.nsimplify(landing_gamma, rational=True) if isinstance(landing_gamma, float) \
        else landing_gamma
    return ExponentialLMMethod(name=name, a=(), b=(), starter=starter, info=info, ya=tuple(ya),
                               beta=tuple(bt), landing=landing, landing_gamma=g)



@cache
def _analysis(m: ExponentialLMMethod) -> ExpAnalysis:
    p = exp_order_of(m.ya, m.beta)
    C = exp_lte_coefficients(m.ya, m.beta, p + 1)[p + 1]
    p_eq, lead = equal_step_lte(m.ya, m.beta)
    rho = m.characteristic_polynomial()
    return ExpAnalysis(order=p, error_constant=C, order_equal=p_eq, leading_equal=lead,
                       rho=rho, roots=roots_of(rho), growth=m.growth)


@cache
def _compiled_adams(p: int):
    return compile_relation(*exp_adams(p))
