"""Numerical failure modes are visible: NaN/Inf, bad inputs, a_k underflow, O(k) memory."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

import lmsolvers as L
from lmsolvers import bitexact as B


def tanh_eps(x: torch.Tensor, s: float) -> torch.Tensor:
    return torch.tanh(x / (1.0 + s))


def nan_at(node_sigma: float):
    def eps(x, s):
        e = tanh_eps(x, s)
        if s == node_sigma:
            e = e.clone()
            e.view(-1)[0] = float("nan")
        return e

    return eps


@pytest.mark.parametrize("bitexact", [False, True])
def test_nan_is_caught_at_its_node(bitexact):
    grid, m = L.Grid.power(12, 5.0), L.obelm()
    x0 = torch.randn(2, 3)
    node = 7
    s = float(grid.sigma_bar[node])
    with pytest.raises(FloatingPointError, match=rf"node {node}, sigma_bar = {s:.6g}"):
        L.invert(nan_at(s), grid, m, x0, bitexact=bitexact, disable=True)
    lat = L.invert(tanh_eps, grid, m, x0, bitexact=bitexact, disable=True)
    node = 4
    s = float(grid.sigma_bar[node])
    with pytest.raises(FloatingPointError, match=rf"node {node}, sigma_bar = {s:.6g}"):
        L.sample(nan_at(s), grid, m, lat, bitexact=bitexact, disable=True)


def test_inf_is_caught_too():
    grid = L.Grid.power(8, 5.0)
    s = float(grid.sigma_bar[8])

    def eps(x, t):
        return tanh_eps(x, t) / 0.0 if t == s else tanh_eps(x, t)

    with pytest.raises(FloatingPointError, match="node 8"):
        L.sample(eps, grid, L.obelm(), torch.randn(2, 3), disable=True)


def test_shape_dtype_device_checked():
    grid, m = L.Grid.power(8, 5.0), L.obelm()
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="shape"):
        L.sample(lambda x, s: x[:1], grid, m, x, disable=True)
    with pytest.raises(ValueError, match="float64"):
        L.sample(lambda x, s: x.double(), grid, m, x, disable=True)
    with pytest.raises(TypeError, match="torch.Tensor"):
        L.sample(lambda x, s: x.numpy(), grid, m, x, disable=True)
    with pytest.raises(ValueError, match="NaN/Inf"):
        L.invert(tanh_eps, grid, m, torch.tensor([[1.0, float("inf")]]), disable=True)
    lat = L.invert(tanh_eps, grid, m, x, disable=True)
    mixed = lat.with_states((lat.states[0].double(), lat.states[1]))
    with pytest.raises(ValueError, match="differ in shape, dtype or device"):
        L.sample(tanh_eps, grid, m, mixed, disable=True)
    with pytest.raises(ValueError, match="differ in shape, dtype or device"):
        L.sample(tanh_eps, grid, m, mixed, bitexact=True, disable=True)


def test_ak_underflow_is_a_clear_error():
    # O-BELM: a_2 = h_i^2 / h_{i+1}^2.  A step 10^3 times longer than the one below
    # gives a_2 = 1e-6: 1/a_2 = 1e6 overflows float16 (max 65504).
    sb = np.array([0.0, 1e-3, 2e-3, 1.002, 2.0, 3.0])
    grid = L.Grid(sb)
    x0 = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"a_k = .* underflows in torch.float16"):
        L.invert(tanh_eps, grid, L.obelm(), x0.half(), disable=True)
    L.invert(tanh_eps, grid, L.obelm(), x0, disable=True)  # fine in float32
    # a_2 ~ 1e-300 vanishes even for float64: refused before any division
    tiny = L.Grid(np.array([0.0, 1e-150, 2e-150, 1.0, 2.0]))
    with pytest.raises(ValueError, match="a_k .* vanishes"):
        L.invert(tanh_eps, tiny, L.obelm(), x0.double(), disable=True)
    with pytest.raises(ValueError, match="a_k .* vanishes"):
        L.invert(tanh_eps, tiny, L.obelm(), x0.double(), bitexact=True, disable=True)


class _Tracker:
    """ε that keeps a weak reference to every state it is evaluated at."""

    def __init__(self, field=tanh_eps):
        self.refs: list[weakref.ref] = []
        self.field = field

    def __call__(self, x, s):
        self.refs.append(weakref.ref(x))
        return self.field(x, s)

    def alive(self) -> int:
        gc.collect()
        return sum(r() is not None for r in self.refs)


@pytest.mark.parametrize("bitexact", [False, True])
@pytest.mark.parametrize("method", [L.obelm(), L.derive_belm(3)], ids=lambda m: m.name)
def test_memory_is_o_k_states(method, bitexact):
    n = 1000
    grid = L.Grid.power(n, 5.0)
    x0 = torch.randn(4, 8, dtype=torch.float64)
    field = tanh_eps
    if method.k > 2:  # the maximal-order 3-step BELM grows like 10^N: run it on the
        x0, field = torch.zeros_like(x0), lambda x, s: torch.zeros_like(x)  # zero solution
    inv = _Tracker(field)
    lat = L.invert(inv, grid, method, x0, bitexact=bitexact, disable=True)
    assert len(inv.refs) >= n - method.k  # one ε per node
    assert inv.alive() <= method.k  # only the window a step needs survives
    smp = _Tracker(field)
    out = L.sample(smp, grid, method, lat, bitexact=bitexact, disable=True)
    assert out.shape == x0.shape
    assert smp.alive() <= method.k
    # a trajectory is kept only when asked for, through the callback
    traj: list[torch.Tensor] = []
    L.sample(field, grid, method, lat, bitexact=bitexact, disable=True,
             callback=lambda d: traj.append(d["x"]))
    assert len(traj) == n - method.k + 1


def test_fixed_point_nan_state_is_an_overflow_error():
    grid, m = L.Grid.power(8, 5.0), L.obelm()
    plan = B.fixed_point_plan(m, grid, torch.float32)
    with pytest.raises(B.FixedPointOverflowError, match="node 3"):
        plan.quantize(torch.tensor([float("nan")]), 3)


# --------------------------------------------- mistakes named in one line (issue 24)
def test_argument_mistakes_are_one_line_errors_naming_the_fix():
    grid, x = L.Grid.power(6, 5.0), torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="eps and grid are swapped"):
        L.sample(grid, tanh_eps, L.obelm(), x, disable=True)
    with pytest.raises(TypeError, match="eps and grid are swapped"):
        L.invert(grid, tanh_eps, L.obelm(), x, disable=True)
    with pytest.raises(TypeError, match=r"eps must take two arguments, eps\(x, sigma_bar\)"):
        L.sample(lambda x: x, grid, L.obelm(), x, disable=True)
    with pytest.raises(TypeError, match="grid must be an lmsolvers Grid"):
        L.ddim_inversion(tanh_eps, [0.0, 1.0], x, disable=True)


def _in_place(x, s):
    return x.mul_(1.0)  # same values, but the solver's state is written to


@pytest.mark.parametrize("grad", [None, "reversible"])
def test_an_eps_that_changes_its_input_in_place_is_refused(grad):
    grid = L.Grid.power(6, 5.0)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=grad is not None)
    with pytest.raises(ValueError, match="eps changed its input in place.*out of place"):
        L.sample(_in_place, grid, L.obelm(), x, grad=grad, disable=True)
    with pytest.raises(ValueError, match="eps changed its input in place"):
        L.invert(_in_place, grid, L.obelm(), x.detach(), disable=True)


def test_an_eps_changing_its_input_only_with_grad_is_refused_in_the_backward():
    """ε writes to its input only when it requires grad (so only the backward pass sees
    it): the library's rule, not autograd's leaf-variable message."""
    grid = L.Grid.power(6, 5.0)
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)

    def eps(x, s):
        if x.requires_grad:
            x.add_(0.0)
        return torch.tanh(x * w / (1.0 + s))

    out = L.sample(eps, grid, L.obelm(), torch.randn(2, 3, dtype=torch.float64), grad="reversible",
                   params=[w], disable=True)
    with pytest.raises(ValueError, match="eps changed its input in place"):
        out.sum().backward()


@pytest.mark.parametrize("grad", ["full", "reversible"])
def test_a_gradient_run_inside_no_grad_is_refused(grad):
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"inside torch.no_grad\(\)"):
        L.sample(tanh_eps, L.Grid.power(6, 5.0), L.obelm(), x, grad=grad, disable=True)
