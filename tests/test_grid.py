"""Grid construction, validation, and diffusers' timestep conventions."""

import numpy as np
import pytest
from diffusers import DDIMScheduler

from lmsolvers import Grid
from lmsolvers.grid import (
    alphas_cumprod_from_betas,
    linear_betas,
    scaled_linear_betas,
    spaced_timesteps,
)


def test_basic_properties():
    g = Grid([0.0, 0.5, 1.5, 4.0])
    assert g.N == 3
    np.testing.assert_array_equal(g.h, [0.5, 1.0, 2.5])
    np.testing.assert_allclose(g.alphas, 1 / np.sqrt(1 + np.array([0, 0.25, 2.25, 16.0])),
                               rtol=1e-15)


@pytest.mark.parametrize(
    "nodes, message",
    [
        ([[0.0, 1.0], [2.0, 3.0]], "1-D"),
        ([0.0, np.nan, 1.0], "non-finite"),
        ([0.0, 1.0, 1.0, 2.0], "repeated"),
        ([0.0, 2.0, 1.0], "strictly increasing"),
        ([1.0], "at least 2 nodes"),
        ([-1.0, 0.0, 1.0], "non-negative"),
    ],
)
def test_invalid_grids_name_the_problem(nodes, message):
    with pytest.raises(ValueError, match=message):
        Grid(nodes)


def test_too_few_steps_for_method():
    with pytest.raises(ValueError, match="at least 3 steps"):
        Grid([0.0, 1.0, 2.0]).require_steps(3)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [7, 10, 50])
def test_spaced_timesteps_match_diffusers(spacing, n):
    sch = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=1)
    sch.set_timesteps(n)
    ours = spaced_timesteps(n, 1000, spacing=spacing, steps_offset=1 if spacing == "leading"
                            else 0)
    np.testing.assert_array_equal(ours, sch.timesteps.numpy())


def test_schedules_match_diffusers():
    for kind, ours in [("linear", linear_betas()), ("scaled_linear", scaled_linear_betas())]:
        sch = DDIMScheduler(beta_schedule=kind, beta_start=ours[0], beta_end=ours[-1])
        np.testing.assert_allclose(sch.betas.double().numpy(), ours, rtol=1e-6)
        np.testing.assert_allclose(sch.alphas_cumprod.double().numpy(),
                                   alphas_cumprod_from_betas(ours), rtol=1e-5)


def test_from_alphas_cumprod_indexes_its_own_table():
    ac = alphas_cumprod_from_betas(linear_betas())
    ts = spaced_timesteps(10, 1000, "linspace")  # 999, 888, …, 0: not a fixed stride
    g = Grid.from_alphas_cumprod(ac, ts, final_alpha_cumprod=1.0, final_timestep=0)
    # the clean node is an extra node below t = 0
    assert g.N == 10 and g.sigma_bar[0] == 0.0
    np.testing.assert_array_equal(g.timesteps[1:], ts[::-1])
    np.testing.assert_allclose(g.sigma_bar[1:], np.sqrt((1 - ac[ts[::-1]]) / ac[ts[::-1]]),
                               rtol=1e-15)
    np.testing.assert_allclose(g.alphas**2, np.concatenate([[1.0], ac[ts[::-1]]]), rtol=1e-15)


def test_from_alphas_cumprod_rejects_a_repeated_final_node():
    ac = alphas_cumprod_from_betas(linear_betas())
    ts = spaced_timesteps(10, 1000, "leading", steps_offset=0)  # ends at t = 0
    with pytest.raises(ValueError, match="repeated"):
        Grid.from_alphas_cumprod(ac, ts, final_alpha_cumprod=float(ac[0]))


def test_stable_diffusion_grid():
    g = Grid.stable_diffusion(50)
    assert g.N == 50
    assert g.timesteps[1] == 1 and g.timesteps[-1] == 981
    assert np.all(g.h > 0)
