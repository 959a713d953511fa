"""Gradients through a sampling run in O(k) memory, by exact reversal (docs/design.md §10).

A sampling run ``x̄_N → … → x̄_0`` with an invertible method need not store its
trajectory to be differentiated.  :func:`reversible_sample` runs it without a graph,
keeping only its input and the k bottom states, and its backward pass walks the grid
*upwards*: at step r it

1. rebuilds the state above the window with the method's inverse step (the same
   relation solved for its farthest node — what :func:`lmsolvers.invert` does), and
2. applies the vector–Jacobian product of the sampling step r that produced ``x̄_r``:
   for an LM step ``x̄_r = Σ_j a_j x̄_{r+j} + Σ_j b_j h_{r+j} ε̄(x̄_{r+j}, σ̄_{r+j}; θ)``
   the adjoints ``λ_m = ∂L/∂x̄_m`` obey

       λ_{r+j} += a_j λ_r + (∂ε̄_{r+j}/∂x̄)ᵀ (b_j h_{r+j} λ_r),
       g_θ     += Σ_j (∂ε̄_{r+j}/∂θ)ᵀ (b_j h_{r+j} λ_r).

For LM methods ε at node m is evaluated once, with grad, at the rebuilt state, and that
one evaluation serves both the inverse step (its value) and the adjoint (its graph):
one network evaluation and one vector–Jacobian product per node.  EDICT's coupled step
is differentiated as a whole (its two ε evaluations are recomputed with grad).  Memory:
the k states of the window, their adjoints, and the graphs of at most k − 1 ε
evaluations — independent of N.

Bit-exact mode rebuilds the integer states bitwise (the backward pass checks it) and
differentiates the float relation at them, i.e. quantisation is treated as the identity
(a straight-through gradient: the exact derivative of a rounding is 0 almost everywhere).

Round-off: the rebuilt states differ from the forward ones by at most ``u · R`` relative
(:func:`lmsolvers.predicted_roundtrip_error`), so every Jacobian is evaluated at a state
that far off and the gradient's relative error is about ``u · R`` times the relative
Lipschitz constant of ε's Jacobian; the adjoint recursion itself runs the sampling
direction's (stable) growth.  Where ``u · R`` exceeds the tolerance the gradient would
be meaningless: beyond ``u · R = 1`` :func:`reversible_sample` refuses before any ε call
(above the tolerance, 0.1 by default, it warns, as :func:`lmsolvers.invert` does).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from .bitexact import Bitexact, BitexactLatent, NondeterminismError
from .engine import EpsFn, Integrator, Run, call_unmodified, drive_sampling
from .exactness import ExactnessWarning, check_exactness
from .grid import Grid
from .latent import Latent
from .method import LMMethod
from .stochastic import StochasticMethod

__all__ = ["reversible_sample", "differentiable_leaves", "differentiable_eps", "GRAD_MODES"]

#: values of ``sample(..., grad=...)``
GRAD_MODES = (None, "full", "reversible")

#: predicted relative rebuild error ``u · R`` beyond which a reversible gradient is refused
#: (unless the caller's tolerance is larger): the rebuilt states may be off by their own size
REFUSAL_LIMIT = 1.0


def differentiable_leaves(eps: EpsFn, x: torch.Tensor, sigma_bar: float) -> list[torch.Tensor]:
    """The leaf tensors requiring grad that ``eps`` depends on (its parameters and the
    tensors it closes over: embeddings, guidance inputs), found by one evaluation with
    grad enabled and a walk of its graph.  A non-leaf closure tensor (say ``f(w)``) is
    represented by its leaves (``w``)."""
    with torch.enable_grad():  # x.detach() shares x's version counter: checked too
        e = call_unmodified(eps, x.detach(), sigma_bar,
                            "the first evaluation (finding ε's parameters)")
    if not isinstance(e, torch.Tensor) or e.grad_fn is None:
        return []
    found: list[torch.Tensor] = []
    seen: set[int] = set()  # graph nodes and tensors already visited, by id
    stack = [e.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        var = getattr(fn, "variable", None)
        if var is not None and id(var) not in seen:
            seen.add(id(var))
            found.append(var)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return found


def differentiable_eps(eps: EpsFn, mode: str = "full") -> EpsFn:
    """``eps``, checked to keep its graph: a state that requires grad must give an ε that
    does (an ε evaluated under ``torch.no_grad()`` would silently drop ∂ε/∂x̄ from the
    gradient)."""

    def checked(x: torch.Tensor, s: float) -> torch.Tensor:
        e = eps(x, s)
        if x.requires_grad and isinstance(e, torch.Tensor) and not e.requires_grad:
            raise RuntimeError(
                f"grad={mode!r}: eps returned a tensor without a graph at sigma_bar = {s:.6g} "
                "for a state that requires grad (evaluated under torch.no_grad() or "
                "detached?): the gradient through ε would be silently missing")
        return e

    return checked


class _Spec:
    """What the autograd function needs besides tensors (not saved as tensors)."""

    def __init__(self, eps: EpsFn, grid: Grid, integ: Integrator, plan_f: Any, plan_b: Any,
                 latent: Latent | None, n_states: int, n_params: int, check_finite: bool,
                 disable: bool | None, tolerance: float):
        self.eps, self.grid, self.integ = eps, grid, integ
        self.plan_f, self.plan_b, self.latent = plan_f, plan_b, latent
        self.n_states, self.n_params = n_states, n_params
        self.check_finite, self.disable, self.tolerance = check_finite, disable, tolerance
        self.bottom: Any = None  # the forward's final Window (the bottom k nodes)
        self.like: torch.Tensor | None = None
        self.params: list[torch.Tensor] = []
        self.plan_adj: Any = plan_f


def _adjoint_method(integ: Integrator) -> Integrator:
    """The float integrator whose step is differentiated (bit-exact: its float method)."""
    return integ.method if isinstance(integ, Bitexact) else integ


class _ReversibleSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, spec: _Spec, *tensors: torch.Tensor) -> torch.Tensor:  # noqa: D102
        states = [t.detach() for t in tensors[:spec.n_states]]
        grid, integ = spec.grid, spec.integ
        if spec.latent is not None:
            start: torch.Tensor | Latent = spec.latent.with_states(states)
        else:
            start = states[0]
        like = states[0]
        with Run(spec.eps, grid, like, check_finite=spec.check_finite, callback=None,
                 disable=spec.disable, desc=f"sample[{integ.name}, reversible]",
                 total=grid.N, aux_name=integ.aux_name) as run:
            out = drive_sampling(integ, spec.plan_f, run, start, spec.latent is not None)
            spec.bottom = run.window
        # the window keeps node 0 for the backward pass: hand out a copy, so that editing the
        # result in place cannot corrupt the rebuilt trajectory
        out = out.clone()
        spec.like = like
        ctx.spec = spec
        ctx.save_for_backward(*tensors[:spec.n_states])
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # noqa: D102
        spec: _Spec = ctx.spec
        states = ctx.saved_tensors
        params = list(ctx.needs_input_grad[1 + spec.n_states:])
        with torch.enable_grad():
            g_states, g_params = _reverse(spec, states, grad_out, spec.params, params)
        return (None, *g_states, *g_params)


def _has_aux(w: Any, m: int) -> bool:
    try:
        w.aux(m)
    except KeyError:
        return False
    return True


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(t.is_floating_point())


def _reverse(spec: _Spec, states: Sequence[torch.Tensor], grad_out: torch.Tensor,
             params: list[torch.Tensor], wanted: list[bool]
             ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """The backward pass: rebuild the trajectory upwards, accumulating the adjoints."""
    grid, integ, N = spec.grid, spec.integ, spec.grid.N
    span = integ.span
    adj = _adjoint_method(integ)
    lm = isinstance(adj, LMMethod | StochasticMethod)
    like = spec.like
    g_params: list[torch.Tensor | None] = [None] * len(params)
    want_params = [p for p, w in zip(params, wanted, strict=True) if w]
    idx_params = [i for i, w in enumerate(wanted) if w]

    def add_params(grads: Sequence[torch.Tensor | None]) -> None:
        for i, g in zip(idx_params, grads, strict=True):
            if g is not None:
                g_params[i] = g if g_params[i] is None else g_params[i] + g

    # the rebuilding run (no graph) starts from a copy of the forward's bottom window
    # (a copy: autograd may call backward more than once, e.g. gradcheck)
    rec = Run(spec.eps, grid, like, check_finite=spec.check_finite, callback=None,
              disable=True, desc="", total=0, aux_name=integ.aux_name)
    bottom = spec.bottom
    for m in bottom.nodes:
        rec.window.put(m, bottom[m], aux=bottom.aux(m) if _has_aux(bottom, m) else None)
    # the adjoint run's window holds leaves of the rebuilt states a step reads, and ε
    # evaluated at them with grad (once per node)
    grad_run = Run(differentiable_eps(spec.eps, "reversible"), grid, like,
                   check_finite=spec.check_finite, callback=None, disable=True, desc="",
                   total=0)
    lw = grad_run.window
    lam: dict[int, list[torch.Tensor | None]] = {0: [grad_out, None]}
    float_aux = integ.aux_name is not None and not isinstance(integ, Bitexact)
    slots = 2 if float_aux else 1

    def leaf_of(m: int) -> list[torch.Tensor]:
        if m not in lw:
            lw.put(m, _leaf(rec.window[m]), aux=_leaf(rec.window.aux(m)) if float_aux else None)
        return [lw[m], lw.aux(m)] if float_aux else [lw[m]]

    bar = tqdm(total=N - span + 1, disable=spec.disable, leave=False,
               desc=f"backward[{integ.name}, reversible]")
    try:
        for r in range(0, N - span + 1):
            if lm:
                # one ε per node, shared by the inverse step (its value) and the adjoint
                for j in range(1, adj.k):
                    leaf_of(r + j)
                    rec.window.set_eps(r + j, lw.eps(r + j).detach())
            integ.backward_step(rec, spec.plan_b, r)
            top = r + span
            inputs = [t for m in range(r + 1, top + 1) for t in leaf_of(m)]
            kept_top = leaf_of(top)
            adj.step(grad_run, spec.plan_adj, r)  # puts node r, drops node `top`
            outs = [lw[r], lw.aux(r)] if float_aux else [lw[r]]
            lam_r = lam.pop(r, [None, None])
            gouts = [g if g is not None else torch.zeros_like(o)
                     for g, o in zip(lam_r[:slots], outs, strict=True)]
            # retain: ε of a node serves k − 1 steps, and a closed-over non-leaf tensor
            # (an embedding computed from a leaf) has its own graph that every step
            # traverses; the step's graph is freed with ``outs`` at the next iteration
            grads = torch.autograd.grad(outs, inputs + want_params, gouts,
                                        retain_graph=True, allow_unused=True)
            gi = iter(grads[:len(inputs)])
            for m in range(r + 1, top + 1):
                acc = lam.setdefault(m, [None, None])
                for slot in range(slots):
                    g = next(gi)
                    if g is not None:
                        acc[slot] = g if acc[slot] is None else acc[slot] + g
            add_params(grads[len(inputs):])
            lw.drop(r)
            if top not in lw:  # the step dropped it; later steps still read it
                lw.put(top, kept_top[0], aux=kept_top[1] if float_aux else None)
            lw.drop(r + 1)  # no later step reads node r + 1
            bar.update()
    finally:
        bar.close()
    g_states = _top_adjoints(spec, states, rec, lam, want_params, add_params, float_aux)
    return g_states, g_params


def _top_adjoints(spec: _Spec, states: Sequence[torch.Tensor], rec: Run,
                  lam: dict[int, list[torch.Tensor | None]], want_params: list[torch.Tensor],
                  add_params: Any, float_aux: bool) -> list[torch.Tensor | None]:
    """Check the rebuilt top states against the forward's input, then the adjoints of the
    input: the latent's states, or ``x̄_N`` through the starter (differentiated again)."""
    grid, integ = spec.grid, spec.integ
    _check_rebuilt(spec, states, rec)
    if spec.latent is not None:
        out: list[torch.Tensor | None] = []
        for i, m in enumerate(spec.latent.nodes):
            slot = 1 if (float_aux and i > 0 and spec.latent.nodes[i - 1] == m) else 0
            out.append(lam.get(m, [None, None])[slot])
        return out
    # x̄_N tensor: the starter made nodes N−1 … N−span+1 (and the companions) from it
    x_leaf = _leaf(states[0])
    srun = Run(spec.eps, grid, x_leaf, check_finite=spec.check_finite, callback=None,
               disable=True, desc="", total=0, aux_name=integ.aux_name)
    adj = _adjoint_method(integ)
    adj.start(srun, spec.plan_adj, x_leaf)
    outs, gouts = [], []
    for m in srun.window.nodes:
        for slot in range(2 if float_aux else 1):
            g = lam.get(m, [None, None])[slot]
            if g is None:
                continue
            outs.append(srun.window[m] if slot == 0 else srun.window.aux(m))
            gouts.append(g)
    if not outs:
        return [None]
    grads = torch.autograd.grad(outs, [x_leaf] + want_params, gouts, retain_graph=True,
                                allow_unused=True)
    add_params(grads[1:])
    return [grads[0]]


def _check_rebuilt(spec: _Spec, states: Sequence[torch.Tensor], rec: Run) -> None:
    """The rebuilt top must be the forward's input: bitwise in bit-exact mode, to the
    tolerance otherwise (a nondeterministic ε or a changed batch breaks it)."""
    N, integ = spec.grid.N, spec.integ
    if spec.latent is not None:
        nodes, given = spec.latent.nodes, list(states)
        rebuilt = [rec.window[m] if i == 0 or nodes[i - 1] != m else rec.window.aux(m)
                   for i, m in enumerate(nodes)]
    else:
        given, rebuilt = [states[0]], [rec.window[N]]
    if isinstance(integ, Bitexact):
        got = [rec.window.aux(m) for m in spec.latent.nodes]
        if not all(torch.equal(a, b) for a, b in zip(got, spec.latent.fixed, strict=True)):
            raise NondeterminismError(
                "grad='reversible', bitexact=True: the backward pass did not rebuild the "
                "forward trajectory bitwise (ε is not deterministic: batch, threads, device)")
        return
    num = max(float((a.detach() - b.detach()).double().norm())
              for a, b in zip(rebuilt, given, strict=True))
    den = max(float(b.detach().double().norm()) for b in given) or 1.0
    err = num / den
    if not math.isfinite(err) or err > spec.tolerance:
        warnings.warn(
            f"grad='reversible': the backward pass rebuilt the run's input with relative "
            f"error {err:.3g} > tolerance {spec.tolerance:.3g}; the gradient was formed at "
            "states that far off. ε may be nondeterministic (batch composition, threads) "
            "or the method amplifies round-off on this grid; use grad='full' to compare",
            ExactnessWarning, stacklevel=4)


def reversible_sample(eps: EpsFn, grid: Grid, integ: Integrator, x: torch.Tensor | Latent, *,
                      params: Sequence[torch.Tensor] | None, check_finite: bool,
                      disable: bool | None, tolerance: float) -> torch.Tensor:
    """``x̄_0`` of a sampling run, differentiable by exact reversal (module docstring).

    ``integ`` must be invertible (bidirectional explicit, or EDICT; bit-exact allowed).
    Gradients flow to ``x`` (``x̄_N`` or the latent's states) and to ``params``: the
    tensors ε depends on that should receive gradients (default: every leaf requiring
    grad that one evaluation of ε reaches — parameters and closed-over tensors).
    Warns (:class:`~lmsolvers.ExactnessWarning`) when the predicted round-trip error
    ``u · R`` exceeds ``tolerance`` and refuses (:class:`~lmsolvers.ExactnessError`) beyond
    ``max(1, tolerance)``.
    """
    why = integ.why_not_invertible()
    if why is not None:
        raise ValueError(f"grad='reversible' needs an exactly invertible method to rebuild the "
                         f"trajectory, and {integ.name!r} is not: {why}. Use grad='full'")
    latent = x if isinstance(x, Latent) else None
    if isinstance(integ, Bitexact) and not (isinstance(x, BitexactLatent) and x.fixed):
        raise ValueError(
            "grad='reversible' with bitexact=True needs the latent of invert(..., "
            "bitexact=True): from any other start the fixed-point sampling step rounds "
            "away low bits, so the backward pass could not rebuild the trajectory bitwise")
    states = list(latent.states) if latent is not None else [x]
    like = states[0]
    if not isinstance(integ, Bitexact):
        # warn above the tolerance (as invert does); refuse where the bound reaches the
        # states' own size: the rebuilt trajectory may then be unrelated to the forward one
        limit = max(REFUSAL_LIMIT, tolerance)
        check_exactness(integ, grid, like.dtype, limit, strict=True, stacklevel=4,
                        what="gradient by reversal")
        check_exactness(integ, grid, like.dtype, tolerance, strict=False, stacklevel=4,
                        what="gradient by reversal")
    plan_f = integ.prepare(grid, like.dtype, "forward")
    plan_b = integ.prepare(grid, like.dtype, "backward")
    if params is None:
        params = differentiable_leaves(eps, like, float(grid.sigma_bar[grid.N]))
    params = [p for p in params if isinstance(p, torch.Tensor)]
    for p in params:
        if not p.requires_grad:
            raise ValueError("params must require grad (they are what the gradient is for)")
    if not any(s.requires_grad for s in states) and not params:
        raise ValueError("grad='reversible': nothing requires grad (neither the start state "
                         "nor any tensor ε depends on); call sample without grad")
    spec = _Spec(eps, grid, integ, plan_f, plan_b, latent, len(states), len(params),
                 check_finite, disable, tolerance)
    adj = _adjoint_method(integ)
    spec.plan_adj = adj.prepare(grid, like.dtype, "forward") if adj is not integ else plan_f
    spec.params = list(params)  # the user's leaves: alive anyway, not saved copies
    return _ReversibleSample.apply(spec, *states, *params)
