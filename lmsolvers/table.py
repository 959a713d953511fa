"""The k = 1..5 table of BELM orders, error constants and roots (equal steps;
docs/design.md §7).

Designs are cached per process (:func:`lmsolvers.design.design`), so only the first
table pays the design search (tens of seconds for k = 5 on a loaded 2-core machine).
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp

from .analysis import characteristic_polynomial, root_condition, roots_of
from .design import KMAX_DESIGN, STABILITIES, design, design_steps_error
from .expdesign import EXP_KS, ebelm
from .markdown import markdown_table

__all__ = ["belm_table", "exp_belm_table"]


def _roots(a) -> str:
    return ", ".join(
        (f"{r.value.real:+.3f}{r.value.imag:+.3f}i" if abs(r.value.imag) > 1e-12
         else f"{r.value.real:+.3f}") for r in roots_of(characteristic_polynomial(list(a))))


def belm_table(kmax: int = 5, markdown: bool = False,
               progress: Callable[[int, int, str], None] | None = None) -> str:
    """Rows k = 1..kmax: for each design requirement (``"none"``: the maximal order
    2k−2; ``"forward"``, ``"bidirectional"``: :func:`lmsolvers.design.design`) the
    equal- and variable-step orders, the equal-step error constant ``C_{p+1}``
    (h = 1), the root condition of ρ for sampling/inversion and the roots of ρ.

    ``1 ≤ kmax ≤ 5`` (designs exist for k ≤ 5 only).  ``progress(i, total, what)``
    is called before the i-th of the ``total`` designs is computed.
    """
    if not 1 <= kmax <= KMAX_DESIGN:
        raise ValueError(design_steps_error(kmax) if kmax > KMAX_DESIGN
                         else f"kmax must be ≥ 1, got {kmax}")
    head = ["k", "design", "order (equal steps)", "order (variable steps)",
            "C_{p+1} (h=1)", "zero-stable fwd/bwd", "roots of rho"]
    rows = [["1", "none", "0 (a_1 = 1 only: inconsistent)", "0", "-", "yes/yes", "+1.000"]]
    todo = [(k, st) for k in range(2, kmax + 1) for st in STABILITIES]
    for i, (k, st) in enumerate(todo, 1):
        if progress is not None:
            progress(i, len(todo), f"k = {k}, {st}")
        d = design(k, st)
        rho = characteristic_polynomial(list(d.a_equal))
        fw, bw = root_condition(rho, "forward"), root_condition(rho, "backward")
        rows.append([str(k), st, str(d.order_equal), str(d.method.order),
                     sp.sstr(d.error_constant_equal),
                     f"{'yes' if fw else 'NO'}/{'yes' if bw else 'NO'}", _roots(d.a_equal)])
    if markdown:
        return markdown_table(head, rows)
    w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{x}}}" for x in w)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


def exp_belm_table(markdown: bool = False) -> str:
    """Rows k = 3…6 of the designed exponential BELMs (docs/design.md §12): ``a`` on ȳ, the
    variable- and equal-step orders, the equal-step leading LTE term, the roots of ρ, the
    parasitic growth parameters κ and the inversion growth exponent ``g = max(1 − κ)``."""
    head = ["k", "a (on ȳ)", "order (variable steps)", "order (equal steps)",
            "leading LTE (equal log-steps ℓ)", "roots of rho", "parasitic κ", "g"]
    rows = []
    for k in EXP_KS:
        m = ebelm(k)
        A = m.analysis()
        kap = sorted({round(kv.real, 3) for _, kv in A.growth[1:]})
        rows.append([str(k), "(" + ", ".join(sp.sstr(v) for v in m.ya) + ")", str(A.order),
                     str(A.order_equal), A.leading_term(), _roots(m.ya),
                     ", ".join(f"{v:+.3f}" for v in kap), f"{A.growth_exponent:.3f}"])
    if markdown:
        return markdown_table(head, rows)
    w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{x}}}" for x in w)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])
