"""Gradients through sampling by exact reversal (lmsolvers/reversal.py, docs/design.md §10).

The reference is plain autograd through the unrolled loop (``grad="full"``); in float64
the reversible gradients must equal it to 1e-10 relative, for the start state, the
network's parameters and tensors ε closes over, on random grids, methods and batches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import lmsolvers as L
from lmsolvers.reversal import differentiable_leaves


class TinyEps(torch.nn.Module):
    """A small smooth ε(x̄, σ̄) with parameters and a conditioning input."""

    def __init__(self, d: int, hidden: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(d, hidden, generator=g, dtype=torch.float64)
                                     / math.sqrt(d))
        self.w2 = torch.nn.Parameter(torch.randn(hidden, d, generator=g, dtype=torch.float64)
                                     / math.sqrt(hidden))
        self.t = torch.nn.Parameter(torch.randn(hidden, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor, s: float, cond: torch.Tensor) -> torch.Tensor:
        a = 1.0 / math.sqrt(1.0 + s * s)
        hid = torch.tanh(a * x @ self.w1 + math.log1p(s) * self.t + cond)
        return (hid @ self.w2) * a + 0.3 * a * x


def _problem(d: int, seed: int):
    net = TinyEps(d, seed=seed)
    emb_leaf = torch.randn(8, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(seed + 1)).requires_grad_()
    return net, emb_leaf


def _grads(mode, net, emb_leaf, grid, method, start, target, **kw):
    """Loss gradients w.r.t. the start (tensor or latent states), parameters and the leaf
    behind a closed-over non-leaf embedding."""
    emb = 0.5 * emb_leaf  # a non-leaf tensor ε closes over
    out = L.sample(lambda x, s: net(x, s, emb), grid, method, start, grad=mode,
                   disable=True, **kw)
    loss = (out * target).sum() + 0.5 * (out ** 2).sum()
    inputs = (list(start.states) if isinstance(start, L.Latent) else [start])
    inputs += list(net.parameters()) + [emb_leaf]
    return out.detach(), torch.autograd.grad(loss, inputs)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _random_grid(data, n: int) -> L.Grid:
    gaps = data.draw(st.lists(st.floats(0.2, 1.0), min_size=n, max_size=n))
    top = data.draw(st.floats(2.0, 8.0))
    s0 = data.draw(st.sampled_from([0.0, 0.05]))
    cum = np.cumsum(gaps)
    return L.Grid(s0 + (top - s0) * np.concatenate([[0.0], cum / cum[-1]]))


METHODS = ["obelm", "bdia", "bdia(0.8)", "belm2", "belm3", "obelm-landing(0.1)",
           "edict(0.9)", "edict(0.93, alternate)", "ebelm3", "ebelm4"]


@given(data=st.data(), method=st.sampled_from(METHODS), n=st.integers(4, 12),
       batch=st.sampled_from([(1, 3), (2, 4), (3, 2, 2)]), from_latent=st.booleans())
def test_reversible_equals_full_autograd(data, method, n, batch, from_latent):
    """Reversible = full autograd to 1e-10 relative in float64: start state, parameters and
    the leaf behind a closed-over embedding; the sample itself is bitwise the plain one."""
    m = L.method_from_name(method)
    grid = _random_grid(data, n)
    assume(L.predicted_roundtrip_error(m, grid) < 1e-12)
    d = batch[-1]
    net, emb_leaf = _problem(d, seed=n)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(*batch, dtype=torch.float64, generator=g)
    target = torch.randn(*batch, dtype=torch.float64, generator=g)
    if from_latent:
        with torch.no_grad():
            lat = L.invert(lambda y, s: net(y, s, 0.5 * emb_leaf), grid, m, x, disable=True)
        start_f = lat.with_states([s.clone().requires_grad_() for s in lat.states])
        start_r = lat.with_states([s.clone().requires_grad_() for s in lat.states])
    else:
        start_f, start_r = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_f, g_full = _grads("full", net, emb_leaf, grid, m, start_f, target)
    out_r, g_rev = _grads("reversible", net, emb_leaf, grid, m, start_r, target)
    with torch.no_grad():
        plain = L.sample(lambda y, s: net(y, s, 0.5 * emb_leaf), grid, m,
                         start_f if from_latent else x, disable=True)
    assert torch.equal(out_r, plain) and torch.equal(out_f, plain)
    for a, b in zip(g_rev, g_full, strict=True):
        assert _rel(a, b) <= 1e-10


@pytest.mark.parametrize("method", ["obelm", "edict(0.9)", "belm3"])
def test_gradcheck(method):
    """Finite differences agree with the reversible backward pass (torch.autograd.gradcheck)."""
    grid = L.Grid.power(5, 3.0, 0.0, 2.0)
    net, _ = _problem(3, seed=4)
    w = net.w1.detach().clone().requires_grad_()
    cond = torch.randn(8, dtype=torch.float64).requires_grad_()

    def run(x, w, cond):
        def eps(y, s):
            a = 1.0 / math.sqrt(1.0 + s * s)
            return (torch.tanh(a * y @ w + cond) @ net.w2.detach()) * a + 0.3 * a * y
        return L.sample(eps, grid, method, x, grad="reversible", disable=True, params=[w, cond])

    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (x, w, cond), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_forward_keeps_no_graph():
    """The reversible forward packs no tensor for backward, whatever N; full autograd packs
    a number proportional to N (what makes its memory O(N))."""
    net, emb_leaf = _problem(4, seed=1)

    def packed(mode: str, n: int) -> int:
        count = 0

        def pack(t):
            nonlocal count
            count += 1
            return t

        x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            L.sample(lambda y, s: net(y, s, emb_leaf), L.Grid.power(n, 4.0), "obelm", x,
                     grad=mode, disable=True)
        return count

    rev10 = packed("reversible", 10)
    assert rev10 == packed("reversible", 40) <= 8  # the input, and one ε of the leaf probe
    full10, full20, full40 = packed("full", 10), packed("full", 20), packed("full", 40)
    assert full40 - full10 == 3 * (full20 - full10) > 0 and full10 > 5 * rev10


def test_bitexact_rebuilds_bitwise_and_matches_the_float_gradient():
    """From a bit-exact latent the backward pass rebuilds the integer trajectory bitwise
    (checked inside; a mismatch raises), and the straight-through gradient equals the float
    method's full-autograd gradient up to the fixed-point resolution."""
    grid = L.Grid.power(12, 4.0, 0.0, 2.0)
    net, emb_leaf = _problem(4, seed=2)
    x0 = torch.randn(3, 4, dtype=torch.float64)

    def eps(y, s):
        return net(y, s, emb_leaf)

    with torch.no_grad():
        latb = L.invert(eps, grid, "obelm", x0, bitexact=True, disable=True)
        lat = L.invert(eps, grid, "obelm", x0, disable=True)
    sb = [s.clone().requires_grad_() for s in latb.states]
    out_b = L.sample(eps, grid, "obelm", latb.with_states(sb), grad="reversible",
                     bitexact=True, disable=True)
    gb = torch.autograd.grad(out_b.sum(), sb + [net.w1, emb_leaf])
    sf = [s.clone().requires_grad_() for s in lat.states]
    out_f = L.sample(eps, grid, "obelm", lat.with_states(sf), grad="full", disable=True)
    gf = torch.autograd.grad(out_f.sum(), sf + [net.w1, emb_leaf])
    fixed = L.sample(eps, grid, "obelm", latb, bitexact=True, disable=True)
    assert torch.equal(out_b.detach(), fixed)
    for a, b in zip(gb, gf, strict=True):
        assert _rel(a, b) < 1e-8


def test_nondeterministic_eps_is_reported():
    """An ε whose bits change between the passes: bit-exact mode raises, float mode warns
    that the gradient was formed at states off by more than the tolerance."""
    grid = L.Grid.power(8, 4.0, 0.0, 2.0)
    net, emb_leaf = _problem(4, seed=3)
    drift = [0.0]  # ε changes by this factor from the backward pass on

    def drifting(y, s):
        return net(y, s, emb_leaf) * (1.0 + drift[0])

    x0 = torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        latb = L.invert(drifting, grid, "obelm", x0, bitexact=True, disable=True)
    out = L.sample(drifting, grid, "obelm", latb, grad="reversible", bitexact=True,
                   disable=True, params=[net.w1])
    drift[0] = 1e-3
    with pytest.raises(L.NondeterminismError, match="did not rebuild the forward trajectory"):
        out.sum().backward()
    drift[0] = 0.0
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    out = L.sample(drifting, grid, "obelm", x, grad="reversible", disable=True)
    drift[0] = 0.3
    with pytest.warns(L.ExactnessWarning, match="rebuilt the run's input with relative error"):
        out.sum().backward()


def test_refusals_name_the_problem():
    grid50 = L.Grid.power(50, 5.0, 0.0, 2.0)
    net, emb_leaf = _problem(4, seed=5)
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)

    def eps(y, s):
        return net(y, s, emb_leaf)

    with pytest.raises(ValueError, match="'ddim' is not: .*not backward explicit"):
        L.sample(eps, grid50, "ddim", x, grad="reversible", disable=True)
    with pytest.raises(L.ExactnessError, match=r"gradient by reversal with 'bdia\(0.5\)'.*"
                                              r"amplification 2\.\d+e\+16"):
        L.sample(eps, grid50, "bdia(0.5)", x, grad="reversible", disable=True)
    # between the tolerance and 1 it warns (the bound is pessimistic), as invert does
    with pytest.warns(L.ExactnessWarning, match=r"gradient by reversal with 'bdia\(1.0\)'"):
        L.sample(eps, grid50, "bdia", x, grad="reversible", disable=True, tolerance=1e-16)
    with pytest.raises(ValueError, match="grad must be one of"):
        L.sample(eps, grid50, "obelm", x, grad="adjoint", disable=True)
    with pytest.raises(ValueError, match="no callback"):
        L.sample(eps, grid50, "obelm", x, grad="full", callback=print, disable=True)
    with pytest.raises(ValueError, match="bitexact=True needs the latent of invert"):
        L.sample(eps, grid50, "obelm", x, grad="reversible", bitexact=True, disable=True)

    def frozen(y, s):
        with torch.no_grad():
            return net(y, s, emb_leaf)

    grid = L.Grid.power(6, 4.0, 0.0, 2.0)
    with pytest.raises(RuntimeError, match="grad='full': eps returned a tensor without a graph"):
        L.sample(frozen, grid, "obelm", x, grad="full", disable=True)
    out = L.sample(frozen, grid, "obelm", x, grad="reversible", disable=True)
    with pytest.raises(RuntimeError, match="grad='reversible': eps returned a tensor without"):
        out.sum().backward()
    with pytest.raises(ValueError, match="nothing requires grad"):
        L.sample(frozen, grid, "obelm", x.detach(), grad="reversible", disable=True)


def test_differentiable_leaves_finds_parameters_and_closures():
    net, emb_leaf = _problem(4, seed=6)
    emb = emb_leaf * 2.0
    found = differentiable_leaves(lambda y, s: net(y, s, emb), torch.zeros(1, 4,
                                                                          dtype=torch.float64), 1.0)
    ids = {id(t) for t in found}
    assert ids == {id(p) for p in net.parameters()} | {id(emb_leaf)}


def test_editing_the_result_in_place_does_not_change_the_gradient():
    """The backward pass starts from the bottom states the forward kept, not from the tensor
    handed out (a user may clamp it in place)."""
    net, emb_leaf = _problem(3, seed=7)
    grid = L.Grid.power(6, 4.0, 0.0, 2.0)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

    def eps(y, s):
        return net(y, s, emb_leaf)

    out = L.sample(eps, grid, "obelm", x, grad="reversible", disable=True)
    (g_ref,) = torch.autograd.grad(out.sum(), [x])
    out = L.sample(eps, grid, "obelm", x, grad="reversible", disable=True)
    total = out.sum()
    out.detach().mul_(0.0)  # edit the storage behind the handed-out tensor
    (g,) = torch.autograd.grad(total, [x])
    assert torch.equal(g, g_ref)
