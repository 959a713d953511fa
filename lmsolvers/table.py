"""The k = 1..5 table of BELM orders, error constants and roots (equal steps)."""

from __future__ import annotations

import sympy as sp

from .analysis import characteristic_polynomial, roots_of
from .design import design

__all__ = ["belm_table"]


def _roots(a) -> str:
    return ", ".join(
        (f"{r.value.real:+.3f}{r.value.imag:+.3f}i" if abs(r.value.imag) > 1e-12
         else f"{r.value.real:+.3f}") for r in roots_of(characteristic_polynomial(list(a))))


def belm_table(kmax: int = 5, markdown: bool = False) -> str:
    """Rows k = 1..kmax: unconstrained order (and its zero-stability), highest forward
    and bidirectional orders, the designed members' equal-step error constants
    ``C_{p+1}`` (h = 1) and the roots of ρ."""
    head = ["k", "design", "order (equal steps)", "order (variable steps)",
            "C_{p+1} (h=1)", "zero-stable fwd/bwd", "roots of rho"]
    rows = [["1", "none", "0 (a_1 = 1 only: inconsistent)", "0", "-", "yes/yes", "+1.000"]]
    for k in range(2, kmax + 1):
        for st in ("none", "forward", "bidirectional"):
            d = design(k, st)
            rho = characteristic_polynomial(list(d.a_equal))
            from .analysis import root_condition

            fw, bw = root_condition(rho, "forward"), root_condition(rho, "backward")
            rows.append([str(k), st, str(d.order_equal), str(d.method.info["order"]),
                         sp.sstr(d.error_constant_equal),
                         f"{'yes' if fw else 'NO'}/{'yes' if bw else 'NO'}", _roots(d.a_equal)])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{x}}}" for x in w)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])
