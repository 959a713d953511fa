"""Variable-step, variable-formula linear multistep methods and the BELM checker.

A k-step VSVF method computes node i−1 from the k nodes above it
(docs/design.md §2)::

    x̄_{i−1} = Σ_{j=1..k} a_{i,j} x̄_{i−1+j} + Σ_{j=0..k} b_{i,j} h_{i−1+j} ε̄_{i−1+j}

with coefficients that are functions of the local step sizes.  Symbolically the
steps are ``h1, …, hk`` standing for ``h_i, …, h_{i+k−1}`` (``h1`` lands on the
new node); ``b_j`` multiplies ``h_{i−1+j} = h_j`` for ``j ≥ 1``.  The step of
``b_0`` (``h_{i−1}``) lies outside the k-step window, so we scale ``b_0`` by ``h1``
instead; this only matters for implicit methods, which the integrator does not run.
A method may also depend on the landing node ``s0 = σ̄_{i−1}`` (BDIA's α ratios).

The method holds its coefficients as sympy expressions (the single source of
truth, coming from :mod:`lmsolvers.symbolic`) and compiles them once to a numpy
function that is evaluated for all steps of a grid at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import sympy as sp
import torch

from .engine import Integrator, Run, Window, lm_step, lm_step_inverse, starter_step
from .grid import Grid
from .latent import Latent, freeze_context
from .parasitic import companion_growth, local_roundoff

__all__ = ["LMMethod", "MethodInfo", "StepCoefficients", "step_symbols", "S0", "nonvanishing"]

_KMAX = 12
#: ``h1, h2, …``: the local step sizes ``h_i, h_{i+1}, …`` of a step landing on node i−1.
H = sp.symbols(f"h1:{_KMAX + 1}", positive=True)
#: ``σ̄_{i−1}``, the node a step lands on (only methods tied to a schedule use it).
S0 = sp.Symbol("s0", nonnegative=True)


def step_symbols(k: int) -> tuple[sp.Symbol, ...]:
    """The symbols ``h1, …, hk`` of a k-step method's local steps."""
    if not 1 <= k <= _KMAX:
        raise ValueError(f"k must lie in [1, {_KMAX}], got {k}")
    return H[:k]


def _is_zero(expr: sp.Expr) -> bool:
    return sp.simplify(expr) == 0


def nonvanishing(expr: sp.Expr) -> bool:
    """True when ``expr`` provably has no zero for positive steps and ``s0 ≥ 0``.

    A sufficient test, sound but not complete: sympy's assumptions decide a factor,
    or the factor is a polynomial in symbols known to be ≥ 0 whose coefficients all
    share one sign and which has a monomial in symbols known to be > 0 only (the
    steps; a constant counts), so it cannot vanish on the admissible set (a symbol
    without sign assumptions proves nothing).  ``False`` means "not proven", not
    "vanishes".
    """
    expr = sp.sympify(expr)
    if expr.is_zero:
        return False
    if expr.is_positive or expr.is_negative:
        return True
    num, den = sp.fraction(sp.factor(sp.together(expr)))
    for fac in sp.Mul.make_args(num) + sp.Mul.make_args(den):
        base = fac.base if fac.is_Pow and fac.exp.is_integer else fac
        if base.is_positive or base.is_negative:
            continue
        try:
            poly = sp.Poly(base, *sorted(base.free_symbols, key=str))
        except sp.PolynomialError:
            return False
        coeffs = poly.coeffs()
        one_sign = all(c.is_positive for c in coeffs) or all(c.is_negative for c in coeffs)
        positive = [g.is_positive for g in poly.gens]
        strict = any(all(e == 0 or p for e, p in zip(m, positive, strict=True))
                     for m in poly.monoms())
        if not (one_sign and strict and all(g.is_nonnegative for g in poly.gens)):
            return False
    return True


@dataclass(frozen=True)
class StepCoefficients:
    """Numeric coefficients of a method on one grid, for every step at once.

    Row ``r`` is the step that lands on node ``i − 1 = r`` (``i = r + 1``), for
    ``r = 0 … N−k``.  ``a[r, j−1] = a_{i,j}`` (j = 1..k) and
    ``bh[r, j] = b_{i,j} · h_{i−1+j}`` (j = 0..k): the ε weights with the step folded in.
    ``g[r, m]`` (m = 0..k−1), stochastic steps only (:mod:`lmsolvers.stochastic`): the
    weight of the regenerated noise ``z_{r+m}`` of node r + m in row r; ``None`` for a
    deterministic method.
    """

    a: np.ndarray
    bh: np.ndarray
    g: np.ndarray | None = None

    @property
    def steps(self) -> int:
        """Number of steps ``N − k + 1`` the coefficients cover (rows)."""
        return self.a.shape[0]


@dataclass(frozen=True)
class MethodInfo:
    """What the derivation of a method established.

    ``order``: order on variable grids; ``design``: how it was chosen; ``order_equal``:
    order at equal steps (designs hold it one higher); ``held``: the coefficients held at
    their equal-step values (designed BELMs); ``equal_step_a``: those values;
    ``gamma``: BDIA's parameter.
    """

    order: int
    design: str
    order_equal: int | None = None
    held: tuple[str, ...] = ()
    equal_step_a: tuple[sp.Expr, ...] = ()
    gamma: float | None = None


@dataclass(frozen=True, eq=False)
class LMMethod(Integrator):
    """A k-step VSVF linear multistep method given by sympy coefficient expressions.

    Parameters
    ----------
    name:
        A short name (``"obelm"``, ``"belm4-bidirectional"``, …).
    a:
        ``(a_1, …, a_k)`` as sympy expressions in ``h1..hk`` (and optionally ``s0``).
    b:
        ``(b_0, …, b_k)``, likewise.
    starter:
        How sampling from a single state fills in the first ``k−1`` states:
        ``"ddim"`` (explicit Euler, 1 NFE per step) or ``"rk4"`` (classical
        Runge–Kutta, 4 NFE per step, needed by methods of order > 2: docs/design.md §3).
    info:
        :class:`MethodInfo` of the derivation (order, design, held coefficients), or
        ``None`` for a method typed in by hand (then :attr:`order` asks for
        :func:`lmsolvers.order_of`).
    """

    name: str
    a: tuple[sp.Expr, ...]
    b: tuple[sp.Expr, ...]
    starter: str = "ddim"
    info: MethodInfo | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        a = tuple(sp.sympify(e) for e in self.a)
        b = tuple(sp.sympify(e) for e in self.b)
        k = len(a)
        if k < 1 or len(b) != k + 1:
            raise ValueError(
                f"a k-step method needs k ≥ 1 a-coefficients and k+1 b-coefficients; "
                f"got {len(a)} and {len(b)}"
            )
        allowed = set(step_symbols(k)) | {S0}
        extra = set().union(*(e.free_symbols for e in a + b)) - allowed
        if extra:
            raise ValueError(
                f"coefficients of {self.name!r} use symbols {sorted(map(str, extra))}; only "
                f"h1..h{k} and s0 are allowed (substitute free parameters first)"
            )
        if self.starter not in ("ddim", "rk4"):
            raise ValueError(f"starter must be 'ddim' or 'rk4', got {self.starter!r}")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)

    # ----------------------------------------------------------- structure
    @property
    def k(self) -> int:
        """Number of steps."""
        return len(self.a)

    def symbolic(self) -> dict[str, list[sp.Expr]]:
        """``{'a': [a_1..a_k], 'b': [b_0..b_k]}`` in the symbols ``h1..hk`` (and ``s0``)."""
        return {"a": list(self.a), "b": list(self.b)}

    @cached_property
    def is_explicit(self) -> bool:
        """``b_0 ≡ 0``: the new node's ε is not needed (sampling is explicit)."""
        return _is_zero(self.b[0])

    @cached_property
    def is_backward_explicit(self) -> bool:
        """``b_k ≡ 0``: solving for the farthest node ``x̄_{i−1+k}`` needs no ε there."""
        return _is_zero(self.b[-1])

    @cached_property
    def ak_nonvanishing(self) -> bool:
        """``a_k`` provably non-zero for every admissible grid (see :func:`nonvanishing`)."""
        return nonvanishing(self.a[-1])

    @cached_property
    def is_bidirectional_explicit(self) -> bool:
        """Explicit both ways and ``a_k ≠ 0`` on every admissible grid (a BELM)."""
        return self.is_explicit and self.is_backward_explicit and self.ak_nonvanishing

    def why_not_bidirectional_explicit(self) -> str | None:
        """A sentence naming the violated condition, or ``None`` for a BELM."""
        if not self.is_explicit:
            return f"b_0 = {self.b[0]} is not identically 0 (the method is implicit)"
        if not self.is_backward_explicit:
            return (
                f"b_k = {self.b[-1]} is not identically 0, so the formula solved for "
                f"x̄_(i-1+k) needs ε at that unknown node (not backward explicit)"
            )
        if not self.ak_nonvanishing:
            return f"a_k = {self.a[-1]} is not provably non-zero for all positive steps"
        return None

    def __repr__(self) -> str:
        return f"LMMethod({self.name!r}, k={self.k})"

    # ------------------------------------------------------------ identity
    @cached_property
    def key(self) -> str:
        """Exact identity: the name plus a digest of the exact coefficient expressions and
        the starter, so two methods with one name but other parameters differ."""
        text = "|".join([self.starter, *(sp.srepr(e) for e in self.a + self.b)])
        return f"{self.name}#{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}"

    @property
    def span(self) -> int:
        """A step spans k nodes (from the landing node to the farthest one)."""
        return self.k

    @property
    def order(self) -> int:
        """Order on smooth variable grids, as recorded by the derivation."""
        if self.info is None:
            raise ValueError(f"method {self.name!r} carries no derivation info; compute its "
                             "order with lmsolvers.order_of(method.a, method.b)")
        return self.info.order

    # ------------------------------------------------------------- numerics
    @cached_property
    def _compiled(self):
        args = (S0, *step_symbols(self.k))
        return sp.lambdify(args, list(self.a) + list(self.b), modules="numpy", cse=True)

    def coefficients(self, grid: Grid) -> StepCoefficients:
        """Evaluate all coefficients on ``grid`` at once (one vectorised call).

        Raises ``ValueError`` if the grid has fewer than k steps or a coefficient is
        not finite there.
        """
        k = self.k
        grid.require_steps(k, f"method {self.name!r} (k = {k})")
        h = grid.h
        M = grid.N - k + 1
        windows = [h[j : j + M] for j in range(k)]  # h_{i+j} for i = 1..M
        s0 = grid.sigma_bar[:M]
        vals = self._compiled(s0, *windows)
        vals = [np.broadcast_to(np.asarray(v, dtype=np.float64), (M,)) for v in vals]
        a = np.stack(vals[:k], axis=1)
        b = np.stack(vals[k:], axis=1)
        scale = np.stack([windows[0]] + windows, axis=1)  # b_0 is scaled by h1 (module doc)
        bh = b * scale
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(bh))):
            bad = np.flatnonzero(~(np.isfinite(a).all(1) & np.isfinite(bh).all(1)))
            raise ValueError(
                f"method {self.name!r} has non-finite coefficients on this grid at the steps "
                f"landing on nodes {bad.tolist()[:10]}"
            )
        return StepCoefficients(a=a, bh=bh)

    def check_invertible(self, grid: Grid, coeffs: StepCoefficients | None = None,
                         rtol: float = 1e-12) -> StepCoefficients:
        """Refuse methods that cannot be inverted on ``grid``; return the coefficients.

        A method must be bidirectional explicit, and ``|a_{i,k}|`` must stay above
        ``rtol`` times the size of the step's other coefficients on every step (an
        ``a_k`` that underflows or nearly vanishes would make inversion divide by ~0).
        """
        reason = self.why_not_bidirectional_explicit()
        if reason is not None:
            raise ValueError(
                f"method {self.name!r} is not bidirectional explicit, so it cannot be "
                f"inverted exactly: {reason}"
            )
        c = self.coefficients(grid) if coeffs is None else coeffs
        ak = np.abs(c.a[:, -1])
        size = np.maximum(np.abs(c.a).max(axis=1), 1.0)
        bad = np.flatnonzero(~(ak > rtol * size))
        if bad.size:
            r = int(bad[0])
            raise ValueError(
                f"method {self.name!r}: coefficient a_k = {c.a[r, -1]:.3e} (nearly) vanishes "
                f"on the step landing on node {r} of this grid; inversion would divide by it"
            )
        return c

    # ------------------------------------------------- the integrator protocol
    def why_not_invertible(self) -> str | None:
        """Why the method has no exact inverse (see :meth:`why_not_bidirectional_explicit`)."""
        reason = self.why_not_bidirectional_explicit()
        if reason is not None and not self.is_backward_explicit and self.k == 1:
            reason += ("; for DDIM's classic approximate inversion use "
                       "lmsolvers.ddim_inversion")
        return reason

    def amplification(self, grid: Grid, direction: str = "backward") -> float:
        """Parasitic growth over a run on ``grid`` (:mod:`lmsolvers.parasitic`)."""
        if direction == "both":
            return max(self.amplification(grid, "forward"),
                       self.amplification(grid, "backward"))
        return companion_growth(self.coefficients(grid).a, direction)

    def roundoff_amplification(self, grid: Grid) -> float:
        """Local conditioning of a step times the backward parasitic growth (a bound)."""
        a = self.coefficients(grid).a
        return local_roundoff(a) * companion_growth(a, "backward")

    def prepare(self, grid: Grid, dtype: torch.dtype, direction: str) -> StepCoefficients:
        """The coefficients on ``grid``; inversion also checks ``a_k`` (see
        :meth:`check_invertible`) and that ``1/a_k`` fits ``dtype``."""
        if not self.is_explicit:
            raise ValueError(f"method {self.name!r} is implicit (b_0 ≠ 0); the integrator runs "
                             "explicit methods only")
        if direction == "forward":
            return self.coefficients(grid)
        c = self.check_invertible(grid)
        _check_ak_range(c, self.name, dtype)
        return c

    def starter_state(self, w: Window, m: int, target: int) -> torch.Tensor:
        """The starter's state at the node ``target`` next to ``m`` (:func:`starter_step`);
        every run (float, bit-exact, reversal, the scheduler) starts through here."""
        return starter_step(w, self.starter, m, target)

    def start(self, run: Run, plan: StepCoefficients, x: torch.Tensor) -> None:
        """``x̄_N``, then the starter down to node N−k+1."""
        w, N = run.window, run.grid.N
        w.put(N, x)
        for m in range(N, N - self.k + 1, -1):
            w.put(m - 1, self.starter_state(w, m, m - 1))
            run.emit(m - 1)

    def load(self, run: Run, plan: StepCoefficients, latent: Latent) -> None:
        """The latent's k states at nodes N−k+1 … N."""
        for m, st in zip(latent.nodes, latent.states, strict=True):
            run.window.put(m, st)

    def step(self, run: Run, plan: StepCoefficients, r: int) -> None:
        """``x̄_r`` from nodes r+1 … r+k (:func:`lmsolvers.engine.lm_step`)."""
        w = run.window
        w.put(r, lm_step(plan, r, w))
        w.drop(r + self.k)

    def start_inverse(self, run: Run, plan: StepCoefficients, x0: torch.Tensor) -> None:
        """``x̄_0``, then the starter up to node k−1 (approximate; it does not matter)."""
        w = run.window
        w.put(0, x0)
        for m in range(self.k - 1):
            w.put(m + 1, self.starter_state(w, m, m + 1))
            run.emit(m + 1)

    def backward_step(self, run: Run, plan: StepCoefficients, r: int) -> None:
        """``x̄_{r+k}`` from nodes r … r+k−1 (:func:`lmsolvers.engine.lm_step_inverse`)."""
        w = run.window
        w.put(r + self.k, lm_step_inverse(plan, r, w))
        w.drop(r)

    def latent(self, run: Run, plan: StepCoefficients,
               context: Mapping[str, Any] | None) -> Latent:
        """The k noisiest states."""
        N = run.grid.N
        nodes = tuple(range(N - self.k + 1, N + 1))
        return Latent(states=tuple(run.window[m] for m in nodes), method=self.name,
                      method_key=self.key, grid=run.grid, context=freeze_context(context),
                      nodes=nodes)


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
            f"max {limit:.3e}; use a wider dtype, fewer/smoother steps, or bitexact=True")
