"""Bit-exact inversion: integer fixed-point round trips are bitwise, failures are documented."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmsolvers as L
from lmsolvers import bitexact as B
from lmsolvers import roundtrip as R

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


class TanhNet:
    """A seeded random network ``ε(x, σ̄) = tanh(x W/(1+σ̄) + b + c σ̄)`` on the last axis.

    Its float64 weights are cast to the input's dtype, so ε runs in the state's dtype.
    """

    def __init__(self, dim: int, seed: int, shift: float = 0.0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
        self.b = torch.randn(dim, generator=g, dtype=torch.float64)
        self.c = 0.3 * torch.randn(dim, generator=g, dtype=torch.float64)
        self.shift = shift

    def __call__(self, x: torch.Tensor, s: float) -> torch.Tensor:
        W, b, c = (t.to(x.dtype) for t in (self.W, self.b, self.c))
        return torch.tanh(x @ W / (1.0 + s) + b + c * s + self.shift)


def k_step_method(k: int) -> L.LMMethod:
    """The designed (bidirectionally zero-stable) k-step BELM."""
    return L.belm(k)


@st.composite
def grids(draw, min_nodes: int, max_nodes: int, jitter: float = 0.4):
    n_nodes = draw(st.integers(min_nodes, max_nodes))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    h = np.exp(rng.uniform(-jitter, jitter, size=n_nodes - 1))
    s_max = draw(st.floats(0.5, 20.0))
    s_min = draw(st.sampled_from([0.0, 0.01]))
    return L.Grid(s_min + np.concatenate([[0.0], np.cumsum(h)]) * (s_max / h.sum()))


shapes = st.tuples(st.lists(st.integers(1, 3), min_size=1, max_size=2), st.integers(1, 5))
dtypes = st.sampled_from([torch.float32, torch.float16])


def check_roundtrip(method, grid, dtype, seed, shape):
    *batch, dim = list(shape[0]) + [shape[1]]
    eps = TanhNet(dim, seed)
    x0 = (2 * torch.randn(*batch, dim, generator=torch.Generator().manual_seed(seed),
                          dtype=torch.float64)).to(dtype)
    lat = L.invert(eps, grid, method, x0, bitexact=True, disable=True)
    assert isinstance(lat, B.BitexactLatent) and isinstance(lat, L.Latent)
    fixed0: list[torch.Tensor] = []
    out = L.sample(eps, grid, method, lat, bitexact=True, disable=True,
                   callback=lambda d: fixed0.append(d["fixed"]) if d["node"] == 0 else None)
    plan = B.fixed_point_plan(method, grid, dtype)
    y0 = plan.quantize(x0, 0)
    # bitwise: the integer state and its float image
    assert torch.equal(fixed0[0], y0)
    assert out.dtype == dtype and torch.equal(out, plan.dequantize(y0, 0))
    # within half a fixed-point quantum of x0 (in exact float64 arithmetic)
    s0 = float(plan.scale[0])
    assert float((y0.double() * s0 - x0.double()).abs().max()) <= 0.5 * s0
    # the latent's floats are its integer states rounded
    for j, y in enumerate(lat.fixed):
        assert torch.equal(lat.states[j], plan.dequantize(y, grid.N - method.k + 1 + j))


@pytest.mark.parametrize("method", [L.obelm(), L.bdia(1.0)], ids=lambda m: m.name)
@SETTINGS
@given(grid=grids(3, 300), dtype=dtypes, seed=st.integers(0, 10_000), shape=shapes)
def test_bitwise_roundtrip_two_step(method, grid, dtype, seed, shape):
    check_roundtrip(method, grid, dtype, seed, shape)


@pytest.mark.parametrize("name", ["ebelm3", "ebelm5"])
@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), dtype=dtypes, seed=st.integers(0, 10_000), shape=shapes)
def test_bitwise_roundtrip_exponential(name, data, dtype, seed, shape):
    """Exponential BELMs (docs/design.md §12) run the same integer arithmetic: their σ̄-form
    coefficients, the landing onto σ̄ = 0 and the implicit first inversion step included."""
    m = L.method_from_name(name)
    grid = data.draw(grids(m.k + 2, 40, jitter=0.3))
    check_roundtrip(m, grid, dtype, seed, shape)


@pytest.mark.parametrize("k", [3, 4])
@SETTINGS
@given(data=st.data(), dtype=dtypes, seed=st.integers(0, 10_000), shape=shapes)
def test_bitwise_roundtrip_k_step(k, data, dtype, seed, shape):
    # the maximal-order BELMs grow like ~10^N both ways: keep N where the states fit
    grid = data.draw(grids(k + 1, k + 5, jitter=0.2))
    check_roundtrip(k_step_method(k), grid, dtype, seed, shape)


def test_latent_works_as_ordinary_latent():
    grid, m = L.Grid.power(30, 10.0), L.obelm()
    eps = TanhNet(4, 0)
    x0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    lat = L.invert(eps, grid, m, x0, bitexact=True, disable=True)
    out = L.sample(eps, grid, m, lat, disable=True)  # ordinary float sampling
    assert float((out - x0).abs().max()) < 1e-4 * L.amplification(m, grid)
    # the bit-exact latent is as close to the float64 latent as fp32 ε round-off, amplified
    # by the grid's parasitic modes, allows (the float fp32 latent is no closer)
    ref = L.invert(eps, grid, m, x0.double(), disable=True)
    tol = 1e-5 * L.amplification(m, grid)
    for a, b in zip(lat.states, ref.states, strict=True):
        assert float((a.double() - b).abs().max()) < tol


def test_sample_from_noise_quantises_first():
    grid, m = L.Grid.power(20, 10.0), L.obelm()
    eps = TanhNet(4, 1)
    xN = 10.0 * torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    a = L.sample(eps, grid, m, xN, bitexact=True, disable=True)
    b = L.sample(eps, grid, m, xN, disable=True)
    assert torch.equal(a, L.sample(eps, grid, m, xN, bitexact=True, disable=True))
    assert float((a - b).abs().max()) < 1e-4  # the same sampler up to quantisation


def test_sampling_from_noise_rounds_without_bias():
    """Sampling from a bare x̄_N rounds each increment and each shift to nearest: against the
    float64 sampler the quantisation error has mean ~0 (measured +0.13 quanta over 8192
    entries, std 2.7); rounding down instead biases it by −0.8 (shift) to −11.6 (increment)
    quanta.  (An exact round trip cannot see the rounding mode: its divisions are exact.)"""
    grid, m = L.Grid.power(20, 10.0), L.obelm()
    eps = TanhNet(4, 1)
    xN = 10.0 * torch.randn(2048, 4, generator=torch.Generator().manual_seed(1),
                            dtype=torch.float64)
    a = L.sample(eps, grid, m, xN, bitexact=True, disable=True)
    b = L.sample(eps, grid, m, xN, disable=True)
    quantum = abs(B.fixed_point_plan(m, grid, torch.float64).scale[0])
    d = (a - b) / quantum
    assert abs(float(d.mean())) < 0.4
    assert float(d.abs().max()) < 20


def test_scale_choice_resolution_and_range():
    grid = L.Grid.stable_diffusion(50)
    for dtype, F in [(torch.float16, 13), (torch.bfloat16, 10), (torch.float32, 26),
                     (torch.float64, 40)]:
        plan = B.fixed_point_plan(L.obelm(), grid, dtype)
        assert plan.frac_bits == F == B.default_frac_bits(dtype)
        # every quantum within the resolution target (1 + σ̄) 2^-F, and not needlessly fine
        q = np.abs(plan.scale) / (1.0 + grid.sigma_bar)
        assert np.all(q <= 2.0**-F * (1 + 1e-12))
        assert np.all(plan.int_bits <= B.DESIGN_BITS)
        # data-side nodes are powers of two
        assert np.all(np.log2(plan.scale[:2]) == np.round(np.log2(plan.scale[:2])))


def test_unrepresentable_grid_raises_representation_error():
    # O-BELM with steps halving per step going up: a_2 = (h_i/h_{i+1})^2 = 4, so the
    # inversion contracts by 4 per two steps and exactness needs 2 more bits each time.
    h = 0.5 ** np.arange(34)
    grid = L.Grid(np.concatenate([[0.0], np.cumsum(h)]))
    x0 = torch.randn(2, 3)
    with pytest.raises(B.RepresentationError, match="cannot be represented in int64"):
        B.fixed_point_plan(L.obelm(), grid, torch.float32)
    with pytest.raises(B.RepresentationError):
        L.invert(TanhNet(3, 0), grid, L.obelm(), x0, bitexact=True, disable=True)
    with pytest.raises(ValueError, match="frac_bits"):
        B.fixed_point_plan(L.obelm(), grid, torch.float32, frac_bits=0)


def test_growing_states_raise_overflow_error():
    grid = L.Grid.power(60, 10.0)
    x0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(B.FixedPointOverflowError, match=r"node \d+ \(sigma_bar = "):
        L.invert(TanhNet(3, 0), grid, L.derive_belm(3), x0, bitexact=True, disable=True)
    with pytest.raises(B.FixedPointOverflowError, match="beyond the range of torch.float16"):
        L.invert(TanhNet(3, 0), L.Grid.power(12, 10.0), L.derive_belm(3), x0.half(),
                 bitexact=True, disable=True)


def test_latent_plan_mismatch_and_unsupported_methods():
    grid, m = L.Grid.power(10, 5.0), L.obelm()
    eps = TanhNet(3, 0)
    x0 = torch.randn(2, 3)
    lat = L.invert(eps, grid, m, x0, bitexact=True, disable=True)
    grid2 = L.Grid(np.concatenate([grid.sigma_bar[:3] * 0.9, grid.sigma_bar[3:]]))
    with pytest.raises(L.LatentMismatchError, match="sigma_bar at node 1"):
        L.sample(eps, grid2, m, lat, bitexact=True, disable=True)
    with pytest.raises(ValueError, match="fixed-point plan"):
        L.sample(eps, grid, m, lat, bitexact=True, frac_bits=20, disable=True)
    with pytest.raises(ValueError, match="bitexact=True"):
        L.sample(eps, grid, m, lat, frac_bits=20, disable=True)
    bad = dataclasses.replace(lat, fixed=tuple(y.float() for y in lat.fixed))
    with pytest.raises(ValueError, match="int64"):
        L.sample(eps, grid, m, bad, bitexact=True, disable=True)
    with pytest.raises(TypeError, match="LMMethod"):
        L.invert(eps, grid, L.edict(0.93), x0, bitexact=True, disable=True)
    with pytest.raises(ValueError, match="DDIM"):
        L.invert(eps, grid, L.ddim(), x0, bitexact=True, disable=True)
    with pytest.raises(TypeError, match="floating-point"):
        L.invert(eps, grid, m, x0.long(), bitexact=True, disable=True)


# ------------------------------------------------------------------ determinism
def test_debug_detects_nondeterministic_eps():
    grid, m = L.Grid.power(10, 5.0), L.obelm()
    net = TanhNet(3, 0)
    gen = torch.Generator().manual_seed(0)

    def noisy(x, s):
        return net(x, s) + 1e-6 * torch.randn(x.shape, generator=gen, dtype=x.dtype)

    x0 = torch.randn(2, 3)
    for bx in (True, False):
        with pytest.raises(B.NondeterminismError, match="not deterministic"):
            L.invert(noisy, grid, m, x0, bitexact=bx, debug=True, disable=True)

    def inplace(x, s):
        e = net(x, s)
        x.add_(1e-3)
        return e

    with pytest.raises(B.NondeterminismError, match="modified its input"):
        L.invert(inplace, grid, m, x0, bitexact=True, debug=True, disable=True)


def test_debug_detects_eps_changing_between_passes():
    grid, m = L.Grid.power(10, 5.0), L.obelm()
    net = TanhNet(3, 0)
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    lat = L.invert(net, grid, m, x0, bitexact=True, debug=True, disable=True)
    assert lat.eps_digests and set(lat.eps_digests) >= set(range(1, grid.N))
    # the same ε in the sampling pass: debug passes and the result is bitwise
    plan = B.fixed_point_plan(m, grid, x0.dtype)
    out = L.sample(net, grid, m, lat, bitexact=True, debug=True, disable=True)
    assert torch.equal(out, plan.dequantize(plan.quantize(x0, 0), 0))
    # a different kernel/device in the sampling pass (simulated by 1e-7 shift): caught
    other = TanhNet(3, 0, shift=1e-7)
    with pytest.raises(B.NondeterminismError, match="differs from the inversion pass"):
        L.sample(other, grid, m, lat, bitexact=True, debug=True, disable=True)
    # without debug the round trip is silently not bitwise: why the check exists
    out2 = L.sample(other, grid, m, lat, bitexact=True, disable=True)
    assert not torch.equal(out2, out)


def test_debug_float_path_unchanged_for_deterministic_eps():
    grid, m = L.Grid.power(12, 5.0), L.obelm()
    net = TanhNet(3, 0)
    x0 = torch.randn(2, 3, dtype=torch.float64)
    a = L.invert(net, grid, m, x0, disable=True)
    b = L.invert(net, grid, m, x0, debug=True, disable=True)
    assert all(torch.equal(u, v) for u, v in zip(a.states, b.states, strict=True))
    assert torch.equal(L.sample(net, grid, m, a, disable=True),
                       L.sample(net, grid, m, b, debug=True, disable=True))


def test_accelerators_need_deterministic_algorithms():
    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError, match="use_deterministic_algorithms"):
        B._require_deterministic_device(torch.device("cuda"))
    B._require_deterministic_device(torch.device("cpu"))  # CPU kernels are deterministic


# ------------------------------------------------------------------- the report
def test_roundtrip_report_rows_and_table():
    grids_ = [L.Grid.power(n, 10.0) for n in (5, 20)]
    x0 = torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    net = TanhNet(4, 0)
    rows = R.roundtrip_report(lambda dt, grid: net, L.obelm(), grids_, x0)
    assert len(rows) == 2 * (4 + 2)
    for r in rows:
        assert not r.error
        if r.mode == "bitexact":
            assert r.bitwise
        assert r.amplification >= 1.0
    fp16 = [r for r in rows if r.mode == "float" and r.dtype == "float16"]
    fp64 = [r for r in rows if r.mode == "float" and r.dtype == "float64"]
    assert all(a.max_abs > b.max_abs for a, b in zip(fp16, fp64, strict=True))
    table = R.format_roundtrip_table(rows)
    assert table.count("\n") == 3 and "bit-exact float32" in table and "amplification" in table
