"""Sampling and exact inversion: the public drivers of the engine (docs/design.md §3, §6).

``eps(x̄, σ̄)`` is the σ̄-ODE vector field ``dx̄/dσ̄ = ε̄(x̄, σ̄)`` on batched torch
tensors, ``σ̄`` a Python float.  Sampling walks the grid from node N to node 0;
inversion from node 0 to node N.  For a k-step method:

* sampling from ``x̄_N`` fills in nodes N−1..N−k+1 with the method's starter, then
  applies, for i = N−k+1 … 1,
  ``x̄_{i−1} = Σ_j a_{i,j} x̄_{i−1+j} + Σ_j b_{i,j} h_{i−1+j} ε̄_{i−1+j}``;
* inversion of ``x̄_0`` runs the starter upwards for nodes 1..k−1 (approximate, and
  that does not matter) and then solves the *same* relation for the farthest node;
* the :class:`~lmsolvers.Latent` of an inversion is the tuple of the k noisiest states
  with the identity of the run (grid, method, model settings); sampling from it runs
  the relations in the other order and returns x̄_0 up to round-off, because every ε is
  evaluated at the same state in both directions (:class:`~lmsolvers.engine.Window`).

Every method is an :class:`~lmsolvers.engine.Integrator`; ``bitexact=True`` swaps in
the integer arithmetic of :class:`~lmsolvers.bitexact.Bitexact`.  Only the k states a
step needs are kept, whatever N is.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .bitexact import Bitexact, BitexactLatent, deterministic_eps
from .engine import Callback, EpsFn, Integrator, Run, all_finite, drive_sampling, starter_step
from .exactness import DEFAULT_TOLERANCE, SolverInstabilityError, check_exactness
from .families import ddim
from .grid import Grid
from .latent import Latent, check_latent, check_state, freeze_context
from .registry import method_from_name
from .reversal import GRAD_MODES, differentiable_eps, reversible_sample
from .stochastic import bind_seed, noise_identity_of

__all__ = ["sample", "invert", "ddim_inversion"]


def _check_arguments(eps: Any, grid: Any, what: str) -> None:
    """Refuse, in one line naming the fix, the argument mistakes that would otherwise fail
    deep inside a run: swapped ``eps``/``grid``, a non-Grid, an ε that cannot be called as
    ``eps(x, sigma_bar)``."""
    if isinstance(eps, Grid) and callable(grid):
        raise TypeError(f"{what}(eps, grid, method, x): eps and grid are swapped (got a Grid "
                        "first, a callable second); pass the ε-function first, then the Grid")
    if not callable(eps):
        raise TypeError(f"{what}: eps must be a callable eps(x, sigma_bar), got "
                        f"{type(eps).__name__}")
    if not isinstance(grid, Grid):
        raise TypeError(f"{what}: grid must be an lmsolvers Grid (e.g. Grid.power, "
                        f"grid_from_scheduler), got {type(grid).__name__}")
    try:
        signature = inspect.signature(eps)
    except (TypeError, ValueError):  # a builtin without a signature: called as is
        return
    try:
        signature.bind(None, 0.0)
    except TypeError:
        name = getattr(eps, "__qualname__", type(eps).__name__)
        raise TypeError(f"{what}: eps must take two arguments, eps(x, sigma_bar) (the batched "
                        f"state and σ̄ as a float); {name}{signature} cannot be called "
                        "that way") from None


def _integrator(method: Any, x: Any, bitexact: bool, debug: bool, frac_bits: int | None,
                state_bound: float | None) -> Integrator:
    m = method_from_name(method)
    if not bitexact:
        if frac_bits is not None or state_bound is not None:
            raise ValueError("frac_bits and state_bound set the fixed-point format of "
                             "bitexact=True; they do nothing in float mode")
        return m
    if isinstance(x, BitexactLatent) and x.plan_key:
        # the latent's own format, unless the caller names another (then the plan check
        # reports the mismatch)
        _, fb, sb, _ = x.plan_key
        frac_bits = fb if frac_bits is None else frac_bits
        state_bound = sb if state_bound is None else state_bound
    return Bitexact(m, frac_bits, 8.0 if state_bound is None else float(state_bound), debug)


def _finish(out: torch.Tensor, integ: Integrator, grid: Grid, check_finite: bool,
            what: str) -> None:
    if check_finite and not all_finite(out):
        raise SolverInstabilityError(
            f"{what} with {integ.name!r} ended in NaN/Inf although ε returned finite values: "
            f"the solver diverged on this grid (N = {grid.N}; parasitic growth "
            f"{integ.amplification(grid, 'both'):.3g}). Use fewer steps or a zero-stable "
            "method (stability_report shows the roots)")


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
    context: Mapping[str, Any] | None = None,
    frac_bits: int | None = None,
    state_bound: float | None = None,
    grad: str | None = None,
    params: Sequence[torch.Tensor] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Integrate the σ̄-ODE from node N down to node 0 and return ``x̄_0``.

    Parameters
    ----------
    eps:
        ``eps(x̄, σ̄) -> ε̄`` on batched tensors (same shape, dtype, device as x̄).
    grid:
        The :class:`~lmsolvers.Grid`.
    method:
        An :class:`~lmsolvers.engine.Integrator` — an explicit
        :class:`~lmsolvers.LMMethod` (DDIM, O-BELM, BDIA, designed BELMs) or
        :func:`~lmsolvers.edict` — or its name (:func:`~lmsolvers.method_from_name`).
    x:
        ``x̄_N`` (a tensor; the starter fills in the next k−1 states) or the
        :class:`~lmsolvers.Latent` returned by :func:`invert` (exact reconstruction).
        A latent must come from the same grid (every node), the same method with the
        same parameters and the same ``context``: anything else raises
        :class:`~lmsolvers.LatentMismatchError` saying what differs.
    callback:
        Called with ``{"node", "sigma_bar", "x", "nfev"}`` after each new state; ``x`` is
        a copy (editing it cannot corrupt the run).
    disable:
        Disable the progress bar (``None``: only on non-TTY output).
    check_finite:
        Raise ``FloatingPointError`` naming the node if ε returns NaN/Inf, and
        :class:`~lmsolvers.SolverInstabilityError` if the states themselves diverge.
    bitexact:
        Integer fixed-point arithmetic (:mod:`lmsolvers.bitexact`): from the latent of
        ``invert(..., bitexact=True)`` the result is bitwise the fixed-point image of
        the inverted ``x̄_0``.  A tensor ``x̄_N`` is quantised first.
    debug:
        Evaluate ε twice per call and compare the bits (``NondeterminismError``); in
        bit-exact mode also compare ε at every node with the inversion pass.
    context:
        Model-side settings ε was built with (guidance scale, prediction type, …),
        compared with the latent's.
    frac_bits, state_bound:
        Fixed-point format of bit-exact mode (default: the latent's, else the dtype's
        default and 8); an error in float mode.
    grad:
        ``None``: as the caller's autograd mode is.  ``"full"``: plain autograd through
        the unrolled loop (stores every step's graph: O(N) memory).  ``"reversible"``:
        O(k) memory — the forward keeps no graph and the backward pass rebuilds each state
        by the inverse step (:mod:`lmsolvers.reversal`, docs/design.md §10); needs an
        invertible method, warns (:class:`~lmsolvers.ExactnessWarning`) when the predicted
        round-off ``u · R`` exceeds ``tolerance`` and refuses
        (:class:`~lmsolvers.ExactnessError`) beyond ``max(1, tolerance)``.  Gradients flow
        to ``x`` (or the latent's states) and to ``params``.
    params:
        With ``grad="reversible"``: the tensors ε depends on that should get gradients
        (default: every leaf requiring grad that one ε evaluation reaches — the model's
        parameters and closed-over tensors such as embeddings).
    seed:
        The noise seed of a stochastic method (``"<method>+eta(η)"``,
        :func:`~lmsolvers.stochastic`): an int, or one int per batch row.  From a latent it
        defaults to the latent's seed; another seed is refused
        (:class:`~lmsolvers.LatentMismatchError`), being another sampler.

    Notes
    -----
    Only the k states a step needs are kept (O(k) memory for any N); the trajectory is
    available through ``callback``.
    """
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    _check_arguments(eps, grid, "sample")
    if grad is not None and not torch.is_grad_enabled():
        raise RuntimeError(f"grad={grad!r} inside torch.no_grad() (or inference mode): "
                           "autograd is off, so the result would carry no gradient; call "
                           "sample outside no_grad")
    integ = _integrator(method, x, bitexact, debug, frac_bits, state_bound)
    from_latent = isinstance(x, Latent)
    integ = bind_seed(integ, seed, x if from_latent else None)
    if from_latent:
        check_latent(x, grid, integ.key, integ.name, context, integ.k,
                     noise=noise_identity_of(integ))
        like = x.x_N
    else:
        check_state(x, "x")
        like = x
    if grad is not None and (callback is not None or debug):
        raise ValueError("grad=... runs have no callback or debug mode (a callback would "
                         "see states the backward pass does not; run without grad to watch)")
    if grad == "reversible":
        out = reversible_sample(eps, grid, integ, x, params=params, check_finite=check_finite,
                                disable=disable, tolerance=tolerance)
        _finish(out, integ, grid, check_finite, "sampling")
        return out
    if grad == "full":
        if params is not None:
            raise ValueError("params is for grad='reversible'; grad='full' differentiates "
                             "whatever autograd reaches")
        eps = differentiable_eps(eps)
    plan = integ.prepare(grid, like.dtype, "forward")
    N, span = grid.N, integ.span
    mode = ", bitexact" if bitexact else ""
    with Run(deterministic_eps(eps) if debug else eps, grid, like,
             check_finite=check_finite or debug, callback=callback, disable=disable,
             desc=f"sample[{integ.name}{mode}]", total=N - span + 1 if from_latent else N,
             aux_name=integ.aux_name) as run:
        out = drive_sampling(integ, plan, run, x, from_latent)
    _finish(out, integ, grid, check_finite, "sampling")
    return out


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
    context: Mapping[str, Any] | None = None,
    strict: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    frac_bits: int | None = None,
    state_bound: float | None = None,
    seed: int | Sequence[int] | None = None,
) -> Latent:
    """Exact inversion: map ``x̄_0`` to the :class:`~lmsolvers.Latent` that samples back to it.

    The method must be bidirectional explicit with ``a_k`` bounded away from 0 on
    ``grid`` (``ValueError`` otherwise; for DDIM's classic approximate inversion use
    :func:`ddim_inversion`), or EDICT.  ``sample(eps, grid, method, invert(eps, grid,
    method, x0))`` returns ``x0`` up to round-off times the method's round-off
    amplification on the grid.  When that predicted error, ``u(dtype) · R``
    (:func:`~lmsolvers.predicted_roundtrip_error`), exceeds ``tolerance`` the inversion
    is not exact in practice: an :class:`~lmsolvers.ExactnessWarning` names the figure
    and the remedies, and ``strict=True`` raises :class:`~lmsolvers.ExactnessError`
    before any ε call instead.

    ``bitexact=True`` runs the integer fixed-point construction of
    :mod:`lmsolvers.bitexact` and returns a :class:`~lmsolvers.BitexactLatent` (also an
    ordinary latent), from which ``sample(..., bitexact=True)`` reproduces the
    fixed-point image of ``x̄_0`` bitwise (``frac_bits``/``state_bound`` set its format).
    ``debug=True`` checks that ε is deterministic (evaluated twice per call, bits
    compared).  ``context`` records the model-side settings of ε in the latent (see
    :func:`sample`).  Raises ``ValueError`` if ``1/a_k`` of some step overflows the
    working dtype.  A stochastic method (:func:`~lmsolvers.stochastic`) needs ``seed``: the
    inversion subtracts the noise the sampler will add, regenerated from it, and the latent
    records the seed and the noise law.
    """
    _check_arguments(eps, grid, "invert")
    integ = bind_seed(_integrator(method, None, bitexact, debug, frac_bits, state_bound), seed,
                      None)
    why = integ.why_not_invertible()
    if why is not None:
        raise ValueError(f"method {integ.name!r} is not bidirectional explicit, so it cannot "
                         f"be inverted exactly: {why}")
    check_state(x0, "x0")
    freeze_context(context)  # refuse an unusable context before the run, not after
    plan = integ.prepare(grid, x0.dtype, "backward")
    if not bitexact:
        check_exactness(integ, grid, x0.dtype, tolerance, strict, stacklevel=3)
    N, span = grid.N, integ.span
    mode = ", bitexact" if bitexact else ""
    with Run(deterministic_eps(eps) if debug else eps, grid, x0,
             check_finite=check_finite or debug, callback=callback, disable=disable,
             desc=f"invert[{integ.name}{mode}]", total=N, aux_name=integ.aux_name) as run:
        integ.start_inverse(run, plan, x0)
        for r in range(0, N - span + 1):
            integ.backward_step(run, plan, r)
            run.emit(r + span)
        latent = integ.latent(run, plan, context)
    for st in latent.states:
        _finish(st, integ, grid, check_finite, "inversion")
    return latent


def ddim_inversion(
    eps: EpsFn,
    grid: Grid,
    x0: torch.Tensor,
    *,
    callback: Callback | None = None,
    disable: bool | None = None,
    check_finite: bool = True,
    context: Mapping[str, Any] | None = None,
) -> Latent:
    """The classic (approximate) DDIM inversion: explicit Euler run upwards.

    ``x̄_{m+1} = x̄_m + h_{m+1} ε̄(x̄_m, σ̄_m)`` evaluates ε at the *lower* node, while
    DDIM sampling evaluates it at the upper one: a different relation, so
    ``sample(eps, grid, ddim(), ddim_inversion(...))`` drifts from x̄_0 by O(h).  The
    latent is labelled as DDIM's (so DDIM sampling accepts it).
    """
    _check_arguments(eps, grid, "ddim_inversion")
    method = ddim()
    check_state(x0, "x0")
    with Run(eps, grid, x0, check_finite=check_finite, callback=callback, disable=disable,
             desc="invert[ddim]", total=grid.N) as run:
        w = run.window
        w.put(0, x0)
        for m in range(grid.N):
            w.put(m + 1, starter_step(w, "ddim", m, m + 1))
            w.drop(m)
            run.emit(m + 1)
        x = w[grid.N]
    return Latent(states=(x,), method=method.name, method_key=method.key, grid=grid,
                  context=freeze_context(context), nodes=(grid.N,))
