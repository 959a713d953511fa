"""Root plots of designed BELMs (matplotlib, from the ``bench`` extra; imported lazily).

Where a picture says more than the table: the roots of ρ(ζ) of each design against
the unit circle (sampling is stable inside, inversion outside), and, for a family
with one free parameter, the root locus as the parameter sweeps, with the designed
value marked and |C_{p+1}| beside it — it shows why the margin stops the optimum
short of a double root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sympy as sp

from .design import _roots, design, equal_step_family
from .expdesign import ebelm

__all__ = ["plot_design_roots", "plot_exp_roots"]



def _unit_circle_axes(plt):
    """A figure with two equal-aspect panels, each with the unit circle and the axes."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.6))
    t = np.linspace(0, 2 * np.pi, 400)
    for a_ in (ax, ax2):
        a_.plot(np.cos(t), np.sin(t), color="0.6", lw=1)
        a_.set_aspect("equal")
        a_.axhline(0, color="0.85", lw=0.8)
        a_.axvline(0, color="0.85", lw=0.8)
    return fig, (ax, ax2)


def _finish(fig, out: str | Path | None):
    """Lay the figure out and write it to ``out`` (PNG, folders made) when given."""
    fig.tight_layout()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    return fig

def _mark_off_axes(ax, roots: np.ndarray, lim: float, color: str) -> None:
    """A root beyond the square ``[−lim, lim]²`` would be silently clipped: draw an arrow
    at the edge in its direction, labelled with its value."""
    off = sorted((z for z in roots if max(abs(z.real), abs(z.imag)) > lim), key=abs)
    for n, z in enumerate(off):
        size = max(abs(z.real), abs(z.imag))
        edge = z / size * (0.86 * lim)  # on the boundary, towards the root
        ax.annotate(f"ζ = {z.real:.2f}" + (f"{z.imag:+.2f}i" if abs(z.imag) > 1e-9 else "")
                    + " (off axes)", xy=(edge.real, edge.imag),
                    xytext=(edge.real * 0.55, edge.imag * 0.55 + (0.25 + 0.12 * n) * lim),
                    fontsize=7, color=color, ha="center",
                    arrowprops={"arrowstyle": "->", "color": color})


def plot_design_roots(k: int, out: str | Path | None = None, span: float = 3.0):
    """Figure: roots of the k-step designs (left) and the root locus of the
    bidirectional family when it has one free parameter (right).

    Returns the matplotlib figure; writes it to ``out`` (PNG) when given.
    """
    import matplotlib

    if out is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = _unit_circle_axes(plt)
    markers = {"none": "x", "forward": "s", "bidirectional": "o"}
    lim = 1.6
    for st, mk in markers.items():
        d = design(k, st)
        r = _roots([float(v) for v in d.a_equal])
        line, = ax.plot(r.real, r.imag, mk, mfc="none", ms=9,
                        label=f"{st}: order {d.order_equal}, C={d.error_constant_equal}")
        _mark_off_axes(ax, r, lim, line.get_color())
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_title(f"roots of ρ(ζ), k = {k} designs (equal steps)")
    ax.legend(fontsize=8, loc="lower left")

    d = design(k, "bidirectional")
    fam = equal_step_family(k, d.order_equal, symmetric=True)
    if len(fam.params) == 1:
        (p,) = fam.params
        centre = float(d.params.get(str(p), 0.0))
        values = np.linspace(centre - span, centre + span, 241)
        f_a = sp.lambdify(p, list(fam.a), "numpy")
        f_c = sp.lambdify(p, fam.error_constant, "numpy")
        pts = np.array([_roots(np.broadcast_to(np.array(f_a(v), dtype=float), (k,)))
                        for v in values])
        sc = None
        for j in range(k):
            sc = ax2.scatter(pts[:, j].real, pts[:, j].imag, c=values, s=4, cmap="viridis")
        r = _roots([float(v) for v in d.a_equal])
        ax2.plot(r.real, r.imag, "o", mfc="none", color="crimson", ms=10,
                 label=f"designed {p} = {d.params[str(p)]}")
        fig.colorbar(sc, ax=ax2, label=f"{p}  (|C| at design: "
                     f"{abs(float(f_c(float(d.params[str(p)])))):.3g})")
        ax2.set_xlim(-lim, lim)
        ax2.set_ylim(-lim, lim)
        ax2.legend(fontsize=8, loc="lower left")
        ax2.set_title(f"root locus of the bidirectional order-{d.order_equal} family")
    else:
        ax2.set_title(f"bidirectional family has {len(fam.params)} free parameters")
        ax2.axis("off")
    return _finish(fig, out)


def plot_exp_roots(k: int, out: str | Path | None = None, ell_max: float = 1.5):
    """Figure for the k-step exponential BELM (docs/design.md §12): left, the roots of ρ on ȳ
    with their growth parameters κ; right, the roots of the step's x̄-form recursion at
    equal log-steps ℓ ∈ (0, ell_max] on the flow ε̄ = 0 (the per-step factor e^{−ℓ} that the
    σ̄-scaling puts on every mode, and how D's weights move the roots).  Returns the figure;
    writes a PNG to ``out`` when given."""
    import matplotlib

    if out is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = ebelm(k)
    fig, (ax, ax2) = _unit_circle_axes(plt)
    for a_ in (ax, ax2):
        a_.set_xlim(-1.6, 1.6)
        a_.set_ylim(-1.6, 1.6)
    for z, kap in m.growth:
        ax.plot(z.real, z.imag, "o", mfc="none", ms=9, color="C0")
        ax.annotate(f"κ={kap.real:+.2f}", (z.real, z.imag), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    _mark_off_axes(ax, np.array([complex(z) for z, _ in m.growth]), 1.6, "C0")
    ax.set_title(f"{m.name}: roots of ρ on ȳ, growth parameters κ")
    ells = np.linspace(0.02, ell_max, 60)
    f = m._relation
    sc = None
    for ell in ells:
        vals = [float(v) for v in f(*([ell] * k))]
        a, beta = vals[:k], vals[k:]
        A = [a[j - 1] * np.exp(-j * ell) + beta[j] for j in range(1, k + 1)]
        r = np.roots(np.concatenate([[1.0], -np.asarray(A)]))
        sc = ax2.scatter(r.real, r.imag, c=np.full(r.size, ell), s=5, cmap="viridis",
                         vmin=0, vmax=ell_max)
    fig.colorbar(sc, ax=ax2, label="log-step ℓ")
    ax2.set_title("x̄-form roots at equal log-steps (ε̄ = 0)")
    return _finish(fig, out)
