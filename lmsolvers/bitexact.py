"""Bit-exact sampling and inversion with bidirectional explicit LM methods (docs/design.md §5).

Why float inversion is not exact
--------------------------------
A BELM step ``x̄_{r} = Σ_{j=1..k} a_{r,j} x̄_{r+j} + Σ_{j=1..k−1} bh_{r,j} ε̄_{r+j}`` (row ``r``
lands on node ``r``; ``bh = b·h``) is an exact algebraic relation, but every float
operation rounds, and inversion divides by ``a_{r,k}`` at every step, so the round trip
``sample(invert(x̄_0))`` drifts by round-off times the parasitic-mode amplification
(:func:`lmsolvers.stability.amplification`).

The construction
----------------
Hold every state as an integer ``Y_m`` (int64) with a per-node real scale ``s_m``:
``x̄_m = s_m Y_m``.  Choose the scales so that, for every row ``r`` (target ``t = r + k``),

    s_t = s_r / (a_{r,k} 2^{δ_r})          with an integer shift δ_r ≥ 0.

Then the step, divided by ``a_{r,k} s_t``, reads in integer units

    2^{δ_r} Y_r = Y_t + g_r,   g_r = Σ_{j=1..k−1} (a_{r,j} s_{r+j} / (a_{r,k} s_t)) Y_{r+j}
                                     + Σ_{j=1..k−1} (bh_{r,j} / (a_{r,k} s_t)) ε̄_{r+j}

(the rescaling ``y = x̄/c`` of docs/design.md §5 with ``c_r = a_{r,k} c_t``, times a power of
two).  ``g_r`` depends only on the states strictly between the two endpoints, which are
known in both directions.  With ``Q = round(g_r)`` (computed by the same float64 code in
both directions) the integer maps

    inversion:  Y_t = 2^{δ_r} Y_r − Q              (exact: a shift and a subtraction)
    sampling:   Y_r = (Y_t + Q) >> δ_r             (rounded; exact division after inversion)

are mutual inverses on the states an inversion produces, so
``sample(invert(x̄_0, bitexact), bitexact)`` returns *bitwise* the fixed-point image
``s_0 · round(x̄_0 / s_0)`` of ``x̄_0``: within half a quantum ``s_0/2`` of it.

Each ε̄ is evaluated in the working dtype (that of ``x̄_0`` or the latent) at the state
``dequantize(Y_m) = (float64(Y_m) · s_m).to(dtype)``, computed by the same code in both
directions, so it receives the same bits both times.

Choice of the scales
--------------------
Let ``F`` (``frac_bits``) be the resolution: the quantum at node m should be at most
``(1 + σ̄_m) 2^{−F}``, i.e. ``F − 1`` bits below the unit of the state's natural size.
Defaults: ``F = mantissa(dtype) + 2`` guard bits, capped at 40 (fp16: 13, bf16: 10,
fp32: 26, fp64: 40), so the fixed-point quantum is finer than the working dtype's own
resolution (for fp64 it is ~2⁻⁴⁰, finer than fp32; int64 cannot do better and keep
room for the dynamic range).

* The k data-side nodes ``0..k−1`` get the power of two ``s_m = 2^{⌊log2((1+σ̄_m) 2^{−F})⌋}``.
* Going up, ``s_t = s_r / (a_{r,k} 2^{δ_r})`` with the least ``δ_r ≥ 0`` that brings
  ``|s_t|`` to at most ``(1 + σ̄_t) 2^{−F}``.  Keeping every scale as coarse as the
  resolution target allows is optimal for the integer range (the shifts can only make
  a scale finer).  Where ``|a_{r,k}| > 1`` the scale *must* get finer by ``|a_{r,k}|``
  (inversion contracts there, and exactness must keep those bits): this is where the
  grid's coefficient range costs integer bits.
* Representability: with the assumed bound ``|x̄_m| ≤ B (1 + σ̄_m)`` (``state_bound`` B,
  default 8), every state and intermediate must satisfy
  ``(|x̄|-bound) / |s_m| ≤ 2^{59}`` (two bits of head-room below the run-time limit
  ``2^{61}``).  Otherwise :class:`RepresentationError` is raised up front, naming the
  node, the bits needed and the remedies.  States that exceed the assumed bound at run
  time raise :class:`FixedPointOverflowError` naming the node and σ̄ (unstable methods,
  e.g. the maximal-order 3- and 4-step BELMs, grow like 10^N and end here).

Determinism contract (what bit-exactness needs from ε)
-----------------------------------------------------
1. Same input bits → same output bits: ε must be a deterministic function of its
   input tensor and σ̄ (no dropout, no random sampling, no in-place modification of
   its input).
2. Identical batch composition in both directions: invert and sample the *same* batch
   in the same order (a batched GEMM can give different bits for a row in a batch of a
   different size).  Do not split a latent into smaller batches.
3. Same device, dtype, library versions and thread settings; on accelerators,
   ``torch.use_deterministic_algorithms(True)`` (and on CUDA
   ``CUBLAS_WORKSPACE_CONFIG=:4096:8``).  Bit-exact mode refuses to run on a non-CPU
   device unless deterministic algorithms are enabled.
4. ``debug=True`` checks this at run time: every ε call is evaluated twice on a copy
   of its input and the outputs compared bitwise (:class:`NondeterminismError`), the
   input is checked to be unmodified, and the inversion records a digest of ε at every
   node in the latent, which bit-exact sampling in debug mode compares against (this
   catches batch-composition and device differences between the two passes).

Starting states
---------------
Inversion quantises ``x̄_0`` and runs the method's starter upwards on dequantised
states, quantising each new state; the :class:`BitexactLatent` is the k noisiest
integer states (plus their dequantised floats, so it also works as an ordinary
:class:`~lmsolvers.Latent`).  Bit-exact sampling from a bare ``x̄_N`` tensor (or a
float :class:`~lmsolvers.Latent`) first quantises it to the top nodes' scales: that
is an ordinary, deterministic sampler, not the inverse of anything.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .engine import EpsFn, Integrator, Run, all_finite
from .grid import Grid
from .latent import Latent, freeze_context
from .method import LMMethod
from .stochastic import StochasticMethod, noise_identity_of

__all__ = [
    "BitexactLatent",
    "FixedPointPlan",
    "RepresentationError",
    "FixedPointOverflowError",
    "NondeterminismError",
    "fixed_point_plan",
    "default_frac_bits",
    "Bitexact",
    "deterministic_eps",
]

#: Design limit on |Y| (integer units): 2 bits of head-room below the run-time limit.
DESIGN_BITS = 59
#: Run-time limit on |Y| and |Q|: sums of two such values never wrap int64.
RUNTIME_BITS = 61


class RepresentationError(ValueError):
    """The grid's coefficient range cannot be represented in int64 fixed point."""


class FixedPointOverflowError(OverflowError):
    """A state or increment left the int64 fixed-point range at run time."""


class NondeterminismError(RuntimeError):
    """ε gave different bits for the same input (debug mode), or differed between passes."""


def default_frac_bits(dtype: torch.dtype) -> int:
    """``min(mantissa bits of dtype (incl. the implicit one) + 2, 40)``: 13/10/26/40."""
    if not dtype.is_floating_point:
        raise TypeError(f"bit-exact mode needs a floating-point working dtype, got {dtype}")
    return min(round(-math.log2(torch.finfo(dtype).eps)) + 1 + 2, 40)


# ----------------------------------------------------------------------- the plan
@dataclass(frozen=True, eq=False)
class FixedPointPlan:
    """Per-node fixed-point scales of one (method, grid, dtype) and the integer step.

    ``x̄_m = scale[m] · Y_m``; row ``r`` (landing on node r, target ``t = r + k`` in
    inversion) has shift ``shift[r] = δ_r`` and increment coefficients ``ca[r, j−1]``
    (on ``Y_{r+j}``) and ``ce[r, j−1]`` (on ``ε̄_{r+j}``), j = 1..k−1 (module docstring).
    ``int_bits[m]`` is log2 of the design bound of ``|Y_m|``.  A stochastic method adds
    ``cz[r, m]`` (on the regenerated noise ``z_{r+m}``, m = 0..k−1): a known term of the
    increment like the ε terms, so its rounded sum stays exactly invertible.
    """

    method_name: str
    k: int
    dtype: torch.dtype
    frac_bits: int
    state_bound: float
    sigma_bar: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    ca: np.ndarray
    ce: np.ndarray
    int_bits: np.ndarray
    cz: np.ndarray | None = None

    @property
    def N(self) -> int:  # noqa: N802 - the maths' name
        return self.sigma_bar.size - 1

    def quantize(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """``Y = round(x̄ / s_m)`` in float64, as int64 (half to even)."""
        v = x.to(torch.float64) / float(self.scale[m])
        _require_range(v, RUNTIME_BITS, m, float(self.sigma_bar[m]), "quantising the state")
        return torch.round(v).to(torch.int64)

    def dequantize(self, y: torch.Tensor, m: int) -> torch.Tensor:
        """``(float64(Y) · s_m).to(dtype)``: the one place a state becomes a float again."""
        return (y.to(torch.float64) * float(self.scale[m])).to(self.dtype)

    def increment(self, r: int, ys: Sequence[torch.Tensor], es: Sequence[torch.Tensor],
                  zs: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """``Q_r = round(g_r)`` from ``Y_{r+1..r+k−1}`` and float64 ``ε̄_{r+1..r+k−1}`` (and the
        noise ``z_{r..r+k−1}`` of a stochastic method).

        Always the same sequence of float64 operations (no fused multiply-add), so both
        directions get the same bits.
        """
        g = None
        for j in range(self.k - 1):
            for coef, t in ((self.ca[r, j], ys[j]), (self.ce[r, j], es[j])):
                if coef == 0.0:
                    continue
                term = t.to(torch.float64) * float(coef)
                g = term if g is None else g + term
        for m, z in enumerate(zs):
            if self.cz[r, m] != 0.0:
                term = z.to(torch.float64) * float(self.cz[r, m])
                g = term if g is None else g + term
        if g is None:  # every coefficient vanishes on this step
            g = torch.zeros_like(ys[0], dtype=torch.float64)
        _require_range(g, RUNTIME_BITS, r, float(self.sigma_bar[r]),
                       f"the increment of the step between nodes {r} and {r + self.k}")
        return torch.round(g).to(torch.int64)

    def key(self) -> tuple[Any, ...]:
        """What a latent records to check it is sampled with the same plan."""
        top = self.scale[self.N - self.k + 1:]
        return (str(self.dtype), self.frac_bits, float(self.state_bound),
                tuple(float(v) for v in top))


def _require_range(v: torch.Tensor, bits: int, node: int, s: float, what: str) -> None:
    m = v.abs().max() if v.numel() else torch.zeros(())
    if not bool(m < 2.0**bits):  # also False for NaN
        raise FixedPointOverflowError(
            f"bit-exact mode: {what} at node {node} (sigma_bar = {s:.6g}) has magnitude "
            f"{float(m):.3e} quanta, beyond the int64 fixed-point range 2^{bits}. The states "
            "grew beyond the assumed bound (raise state_bound or use fewer steps / a more "
            "stable method), or ε returned NaN/Inf"
        )


def fixed_point_plan(method: LMMethod | StochasticMethod, grid: Grid, dtype: torch.dtype, *,
                     frac_bits: int | None = None, state_bound: float = 8.0) -> FixedPointPlan:
    """Choose the per-node fixed-point scales of ``method`` on ``grid`` (module docstring).

    Raises :class:`RepresentationError` if the grid's coefficient range needs more than
    the int64 range (``2^59`` quanta with head-room) at some node, and ``ValueError`` if
    the method is not bidirectional explicit on the grid.
    """
    if not isinstance(method, LMMethod | StochasticMethod):
        raise TypeError(f"bit-exact mode supports LMMethod BELMs, got {type(method).__name__} "
                        "(EDICT's coupled integrator has no bit-exact mode)")
    if method.k < 2:
        raise ValueError(f"method {method.name!r} (k = {method.k}) is not bidirectional "
                         "explicit; bit-exact mode needs a BELM (k ≥ 2)")
    coeffs = method.check_invertible(grid)
    if np.any(coeffs.bh[:, 0] != 0.0) or np.any(coeffs.bh[:, -1] != 0.0):
        raise ValueError(f"method {method.name!r}: b_0·h or b_k·h is not exactly 0 on this grid")
    F = default_frac_bits(dtype) if frac_bits is None else int(frac_bits)
    if not 1 <= F <= 56:
        raise ValueError(f"frac_bits must lie in [1, 56], got {F}")
    if not (state_bound > 0 and math.isfinite(state_bound)):
        raise ValueError(f"state_bound must be positive and finite, got {state_bound}")
    k, N = method.k, grid.N
    s = grid.sigma_bar
    M = N - k + 1
    target = (1.0 + s) * 2.0**-F  # the resolution target of every node
    bound = state_bound * (1.0 + s)  # assumed |x̄_m| bound
    scale = np.zeros(N + 1)
    scale[:k] = 2.0 ** np.floor(np.log2(target[:k]))
    shift = np.zeros(M, dtype=np.int64)
    ak = coeffs.a[:, -1]
    need = np.zeros(N + 1)
    need[:k] = bound[:k] / scale[:k]
    for r in range(M):
        t = r + k
        raw = scale[r] / ak[r]
        d = max(0, math.ceil(math.log2(abs(raw) / target[t])))
        scale[t] = raw / 2.0**d
        shift[r] = d
        # |Y_t| and the intermediates 2^δ Y_r, g_r (all in units of |s_t|)
        need[t] = (bound[t] + bound[r] / abs(ak[r])) / abs(scale[t])
    bits = np.log2(need)
    bad = np.flatnonzero(~(bits <= DESIGN_BITS))
    if bad.size:
        m = int(bad[0])
        raise RepresentationError(
            f"method {method.name!r} on this grid cannot be represented in int64 fixed point "
            f"for {dtype} ({F} fraction bits): node {m} (sigma_bar = {s[m]:.6g}) needs "
            f"{bits[m]:.1f} bits > {DESIGN_BITS} (max over the grid {np.nanmax(bits):.1f}). "
            "The product of 1/|a_k| along the run (the method's contraction in inversion) "
            "exceeds the range: use fewer steps, a smoother grid, a more stable method, "
            "or lower frac_bits"
        )
    rows = np.arange(M)
    ca = np.zeros((M, k - 1))
    ce = np.zeros((M, k - 1))
    denom = ak * scale[rows + k]
    for j in range(1, k):
        ca[:, j - 1] = coeffs.a[:, j - 1] * scale[rows + j] / denom
        ce[:, j - 1] = coeffs.bh[:, j] / denom
    cz = None if coeffs.g is None else coeffs.g / denom[:, None]
    if not (np.all(np.isfinite(ca)) and np.all(np.isfinite(ce))
            and (cz is None or np.all(np.isfinite(cz)))):
        raise RepresentationError(f"method {method.name!r}: non-finite fixed-point step "
                                  "coefficients on this grid (a_k underflows)")
    return FixedPointPlan(method.name, k, dtype, F, float(state_bound), s, scale, shift,
                          ca, ce, bits, cz)


# ------------------------------------------------------------------ ε and checks
def _digest(e: torch.Tensor) -> str:
    bits = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[e.element_size()]
    raw = e.detach().contiguous().view(bits).cpu().numpy().tobytes()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def deterministic_eps(eps: EpsFn) -> EpsFn:
    """Wrap ``eps`` so every call runs twice on copies of the input and compares bitwise.

    Raises :class:`NondeterminismError` if the two outputs differ in any bit or if ε
    modified its input.  Doubles the cost; meant for ``debug=True``.
    """

    def checked(x: torch.Tensor, s: float) -> torch.Tensor:
        x1, x2 = x.clone(), x.clone()
        e1 = eps(x1, s)
        e2 = eps(x2, s)
        if not (torch.equal(x1, x) and torch.equal(x2, x)):
            raise NondeterminismError(f"eps modified its input in place at sigma_bar = {s:.6g}")
        if isinstance(e1, torch.Tensor) and isinstance(e2, torch.Tensor) and (
                e1.shape != e2.shape or e1.dtype != e2.dtype or _digest(e1) != _digest(e2)):
            diff = float((e1.double() - e2.double()).abs().max()) if e1.shape == e2.shape \
                else float("nan")
            raise NondeterminismError(
                f"eps is not deterministic at sigma_bar = {s:.6g}: two evaluations on the same "
                f"input bits differ (max |Δ| = {diff:.3e}). Bit-exact inversion needs "
                "same input bits -> same output bits: disable dropout/sampling, use "
                "torch.use_deterministic_algorithms(True) on accelerators"
            )
        return e1

    return checked


def _require_deterministic_device(device: torch.device) -> None:
    if device.type != "cpu" and not torch.are_deterministic_algorithms_enabled():
        raise RuntimeError(
            f"bit-exact mode on {device.type} needs deterministic kernels: call "
            "torch.use_deterministic_algorithms(True) (on CUDA also set "
            "CUBLAS_WORKSPACE_CONFIG=:4096:8) before sampling and inverting"
        )



@dataclass(frozen=True, eq=False)
class BitexactLatent(Latent):
    """A :class:`~lmsolvers.Latent` that also carries the integer states of a bit-exact run.

    ``states`` are the dequantised floats (usable as an ordinary latent); ``fixed[j]`` is
    the int64 state ``Y`` of node ``N − k + 1 + j``; ``plan_key`` identifies the scales
    (dtype, frac_bits, state_bound, top-node scales); ``eps_digests`` (debug mode only)
    maps node → digest of ε there, for the determinism check of the sampling pass.
    """

    fixed: tuple[torch.Tensor, ...] = ()
    plan_key: tuple[Any, ...] = ()
    eps_digests: dict[int, str] | None = field(default=None, compare=False)


@dataclass
class _RunPlan:
    """A bit-exact run's fixed-point plan and its determinism bookkeeping."""

    plan: FixedPointPlan
    digests: dict[int, str] | None = None
    compare: dict[int, str] | None = None
    #: a stochastic method's own plan (its starter), else None
    stochastic: Any = None


@dataclass(frozen=True, eq=False)
class Bitexact(Integrator):
    """The integer fixed-point arithmetic of a BELM (module docstring) as an integrator.

    Same method identity as ``method`` (a bit-exact latent is also an ordinary latent);
    the window holds the dequantised floats, its companion (``"fixed"`` in callbacks)
    the int64 states.  ``debug`` records/compares per-node ε digests.  A stochastic method
    (:class:`~lmsolvers.StochasticMethod`) adds its regenerated noise to the increment.
    """

    method: LMMethod | StochasticMethod
    frac_bits: int | None = None
    state_bound: float = 8.0
    debug: bool = False

    aux_name = "fixed"

    def __post_init__(self) -> None:
        if not isinstance(self.method, LMMethod | StochasticMethod):
            raise TypeError(f"bit-exact mode supports LMMethod BELMs, got "
                            f"{type(self.method).__name__} (EDICT's coupled integrator has no "
                            "bit-exact mode)")

    @property
    def name(self) -> str:
        """The method's name."""
        return self.method.name

    @property
    def key(self) -> str:
        """The method's identity."""
        return self.method.key

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
        """The method's order."""
        return self.method.order

    def why_not_invertible(self) -> str | None:
        """As the method."""
        return self.method.why_not_invertible()

    def amplification(self, grid: Grid, direction: str = "backward") -> float:
        """The float method's growth (it costs integer bits here, see the plan)."""
        return self.method.amplification(grid, direction)

    def roundoff_amplification(self, grid: Grid) -> float:
        """1: the integer round trip is bitwise."""
        return 1.0

    def prepare(self, grid: Grid, dtype: torch.dtype, direction: str) -> _RunPlan:
        """The fixed-point plan of the method on ``grid`` for ``dtype``."""
        plan = fixed_point_plan(self.method, grid, dtype, frac_bits=self.frac_bits,
                                state_bound=self.state_bound)
        digests = {} if self.debug and direction == "backward" else None
        sto = self.method.plan(grid) if isinstance(self.method, StochasticMethod) else None
        return _RunPlan(plan, digests, stochastic=sto)

    def _attach(self, run: Run, rp: _RunPlan) -> None:
        _require_deterministic_device(run.evaluate.device)
        if isinstance(self.method, StochasticMethod):
            self.method.attach(run)
        if self.debug:
            def on_eps(m: int, e: torch.Tensor) -> torch.Tensor:
                d = _digest(e)
                if rp.digests is not None:
                    rp.digests[m] = d
                if rp.compare is not None and m in rp.compare and rp.compare[m] != d:
                    raise NondeterminismError(
                        f"eps at node {m} (sigma_bar = {rp.plan.sigma_bar[m]:.6g}) differs "
                        "from the inversion pass although its input is bitwise identical: ε "
                        "depends on the batch composition, device, thread count or library "
                        "version. Sample the same batch, in the same order, on the same setup")
                return e

            run.window.on_eps = on_eps

    def _put(self, run: Run, plan: FixedPointPlan, m: int, y: torch.Tensor) -> None:
        x = plan.dequantize(y, m)
        if plan.dtype.itemsize < 8 and not all_finite(x):
            raise FixedPointOverflowError(
                f"bit-exact mode: the state at node {m} (sigma_bar = {plan.sigma_bar[m]:.6g}) "
                f"has magnitude {float(y.abs().max()) * abs(plan.scale[m]):.3e}, beyond the "
                f"range of {plan.dtype}; the states grew (use fewer steps, a more stable "
                "method, or a wider dtype)")
        run.window.put(m, x, aux=y)

    def _increment(self, run: Run, plan: FixedPointPlan, r: int) -> torch.Tensor:
        w, k = run.window, self.k
        zs = [] if plan.cz is None else [w.noise(r + m) for m in range(k)]
        return plan.increment(r, [w.aux(r + j) for j in range(1, k)],
                              [w.eps(r + j).to(torch.float64) for j in range(1, k)], zs)

    def start(self, run: Run, rp: _RunPlan, x: torch.Tensor) -> None:
        """Quantise ``x̄_N``; the starter runs on dequantised states, each result quantised."""
        self._attach(run, rp)
        plan, w, N = rp.plan, run.window, run.grid.N
        self._put(run, plan, N, plan.quantize(x, N))
        for m in range(N, N - self.k + 1, -1):
            if rp.stochastic is not None:
                xm = self.method.noisy_starter(run, rp.stochastic, m, m - 1)
            else:
                xm = self.method.starter_state(w, m, m - 1)
            self._put(run, plan, m - 1, plan.quantize(xm, m - 1))
            run.emit(m - 1)

    def load(self, run: Run, rp: _RunPlan, latent: Latent) -> None:
        """A bit-exact latent's integer states (checked against the plan), or a float
        latent's states quantised (then sampling is deterministic, not an inverse)."""
        plan = rp.plan
        if isinstance(latent, BitexactLatent):
            if latent.plan_key != plan.key():
                raise ValueError(f"this bit-exact latent was made with fixed-point plan "
                                 f"{latent.plan_key}, not {plan.key()}: sample with the grid, "
                                 "method and dtype it was inverted with")
            rp.compare = latent.eps_digests if self.debug else None
            like = latent.x_N
            for m, y in zip(latent.nodes, latent.fixed, strict=True):
                if y.dtype != torch.int64 or y.shape != like.shape or y.device != like.device:
                    raise ValueError("bit-exact latent: fixed states must be int64 tensors of "
                                     "the states' shape and device")
                self._put(run, plan, m, y)
        else:
            for m, st in zip(latent.nodes, latent.states, strict=True):
                self._put(run, plan, m, plan.quantize(st, m))
        self._attach(run, rp)

    def step(self, run: Run, rp: _RunPlan, r: int) -> None:
        """``Y_r = (Y_{r+k} + round(g_r)) >> δ_r``."""
        plan, w, t = rp.plan, run.window, r + self.k
        q = self._increment(run, plan, r)
        yt = w.aux(t)
        _require_range(yt, RUNTIME_BITS, t, float(plan.sigma_bar[t]), "the state")
        v = yt + q
        d = int(plan.shift[r])
        y = v if d == 0 else torch.div(v + (1 << (d - 1)), 1 << d, rounding_mode="floor")
        self._put(run, plan, r, y)
        w.drop(t)

    def start_inverse(self, run: Run, rp: _RunPlan, x0: torch.Tensor) -> None:
        """Quantise ``x̄_0``; the starter runs upwards on dequantised states."""
        self._attach(run, rp)
        plan, w = rp.plan, run.window
        self._put(run, plan, 0, plan.quantize(x0, 0))
        for m in range(self.k - 1):
            if rp.stochastic is not None:
                xm = self.method.noisy_starter(run, rp.stochastic, m, m + 1)
            else:
                xm = self.method.starter_state(w, m, m + 1)
            self._put(run, plan, m + 1, plan.quantize(xm, m + 1))
            run.emit(m + 1)

    def backward_step(self, run: Run, rp: _RunPlan, r: int) -> None:
        """``Y_{r+k} = 2^{δ_r} Y_r − round(g_r)`` (exact)."""
        plan, w, t = rp.plan, run.window, r + self.k
        q = self._increment(run, plan, r)
        d = int(plan.shift[r])
        yr = w.aux(r)
        _require_range(yr, RUNTIME_BITS + 1 - d, r, float(plan.sigma_bar[r]),
                       "the state (shifted)")
        y = yr * (1 << d) - q if d else yr - q
        _require_range(y, RUNTIME_BITS, t, float(plan.sigma_bar[t]), "the state")
        self._put(run, plan, t, y)
        w.drop(r)

    def latent(self, run: Run, rp: _RunPlan, context: Mapping[str, Any] | None
               ) -> BitexactLatent:
        """The k noisiest integer states, their floats, the plan key and (debug) digests."""
        N, w = run.grid.N, run.window
        nodes = tuple(range(N - self.k + 1, N + 1))
        return BitexactLatent(
            states=tuple(w[m] for m in nodes), method=self.name, method_key=self.key,
            grid=run.grid, context=freeze_context(context), nodes=nodes,
            noise=noise_identity_of(self) or (),
            fixed=tuple(w.aux(m) for m in nodes), plan_key=rp.plan.key(),
            eps_digests=rp.digests)
