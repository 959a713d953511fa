"""Zero-stability verdicts and parasitic growth on concrete grids."""

import numpy as np
import pytest

import lmsolvers as L
from lmsolvers.parasitic import companion_growth, companion_matrices


def test_obelm_inversion_grows_like_step_ratio_squared():
    g = L.Grid.power(50, 5.0)
    amp = L.amplification(L.obelm(), g, "backward")
    # P_i = -h_i^2/h_{i+1}^2 telescopes: a perturbation made at the first LM inversion
    # step is multiplied by (h_N/h_2)^2 by the end of the run (~ (h_N/h_1)^2 of docs/design.md §4)
    ratio2 = (g.h[-1] / g.h[1]) ** 2
    assert abs(amp / ratio2 - 1) < 1e-9
    assert L.amplification(L.obelm(), g, "forward") == 1.0


def test_bidirectional_designs_are_grid_independent():
    for k in (3, 4, 5):
        m = L.belm(k)
        vals = [L.amplification(m, g, "both") for g in
                (L.Grid.stable_diffusion(50), L.Grid.power(50, 5.0), L.Grid.power(200, 80.0))]
        assert max(vals) < 10 and np.ptp(vals) < 0.5


def test_forward_designs_amplify_inversion():
    g = L.Grid.stable_diffusion(50)
    m = L.belm(3, "forward")
    assert L.is_zero_stable(m, "forward") and not L.is_zero_stable(m, "backward")
    assert L.amplification(m, g, "backward") > 1e10


def test_report_prints():
    r = L.stability_report(L.belm(4), L.Grid.stable_diffusion(50))
    s = str(r)
    assert "both=yes" in s and "inversion" in s and r.verdict["both"]


def test_companion_growth_is_the_spectral_norm_of_the_product():
    """k = 3, a = (2, −2, 1) on two steps: P = [[1, −1], [1, 0]] (first row −Σ_{j>m} a_j);
    forward growth after one step is ‖P‖₂ = sqrt((3 + √5)/2) (closed form)."""
    a = np.array([[2.0, -2.0, 1.0]] * 2)
    np.testing.assert_array_equal(companion_matrices(a)[0], [[1.0, -1.0], [1.0, 0.0]])
    assert companion_growth(a, "forward") == pytest.approx(np.sqrt((3 + np.sqrt(5)) / 2),
                                                           rel=1e-15)
