"""Command line: ``lmsolvers derive|stability|table``."""

from __future__ import annotations

import argparse
import sys

import sympy as sp

__all__ = ["main"]


def _derive(args: argparse.Namespace) -> int:
    from .analysis import analyze
    from .design import design, max_stable_order

    k, st = args.steps, args.stability
    if args.order is not None and args.order != max_stable_order(k, st):
        from .design import belm_family

        a, b, params = belm_family(k, args.order)
        print(f"{k}-step BELM family of order {args.order}, free parameters {params}")
        out = sp.latex if args.latex else sp.sstr
        for j, e in enumerate(a, 1):
            print(f"  a{j} = {out(e)}")
        for j, e in enumerate(b):
            print(f"  b{j} = {out(e)}")
        return 0
    d = design(k, st)
    m = d.method
    A = analyze(m)
    out = sp.latex if args.latex else sp.sstr
    print(f"{m.name}: k = {k}, stability = {st}")
    print("  x_{i-1} = sum_j a_j x_{i-1+j} + sum_j b_j h_{i-1+j} eps_{i-1+j};"
          "  h1..hk = h_i..h_{i+k-1}")
    if d.held:
        eq = m.info["equal_step_a"]
        held = ", ".join(f"{n} = {eq[int(n[1:]) - 1]}" for n in d.held)
        print(f"  held at designed values: {held}")
    for j, e in enumerate(m.a, 1):
        print(f"  a{j} = {out(e)}")
    for j, e in enumerate(m.b):
        print(f"  b{j} = {out(e)}")
    print(f"  order (variable steps) = {A.order}; error constant C_{A.order + 1} = "
          f"{out(A.error_constant)}")
    print(f"  order (equal steps) = {A.order_equal}; error constant at h = 1: "
          f"{out(A.error_constant_equal)}")
    print(f"  rho(zeta) = {out(A.rho.as_expr())}")
    for r in A.roots:
        print(f"    root {r}")
    from .analysis import root_condition

    v = {d_: root_condition(A.rho, d_) for d_ in ("forward", "backward", "both")}
    print("  zero-stable: " + ", ".join(f"{d_}={'yes' if x else 'NO'}" for d_, x in v.items()))
    print(f"  bidirectional explicit (exactly invertible): {m.is_bidirectional_explicit}")
    return 0


def _stability(args: argparse.Namespace) -> int:
    from .design import belm
    from .grid import Grid
    from .stability import stability_report

    if args.schedule == "sd":
        grid = Grid.stable_diffusion(args.n)
    else:
        grid = Grid.power(args.n, 80.0)
    print(stability_report(belm(args.steps, args.stability), grid))
    return 0


def _table(args: argparse.Namespace) -> int:
    from .table import belm_table

    print(belm_table(args.kmax, markdown=args.markdown))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .plots import plot_design_roots

    out = args.out or f"belm{args.steps}_roots.png"
    plot_design_roots(args.steps, out=out)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lmsolvers`` command."""
    p = argparse.ArgumentParser(prog="lmsolvers", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("derive", help="derive a k-step BELM and analyse it")
    d.add_argument("--steps", "-k", type=int, required=True)
    d.add_argument("--order", type=int, default=None)
    d.add_argument("--stability", choices=("none", "forward", "bidirectional"),
                   default="bidirectional")
    d.add_argument("--latex", action="store_true")
    d.set_defaults(func=_derive)
    s = sub.add_parser("stability", help="parasitic growth of a designed BELM on a schedule")
    s.add_argument("--steps", "-k", type=int, required=True)
    s.add_argument("--schedule", choices=("sd", "power"), default="sd")
    s.add_argument("--n", type=int, default=50)
    s.add_argument("--stability", choices=("none", "forward", "bidirectional"),
                   default="bidirectional")
    s.set_defaults(func=_stability)
    pl = sub.add_parser("plot", help="root plot / root locus of the k-step designs (PNG)")
    pl.add_argument("--steps", "-k", type=int, required=True)
    pl.add_argument("--out", default=None, help="PNG path (default belm{k}_roots.png)")
    pl.set_defaults(func=_plot)
    t = sub.add_parser("table", help="the k = 1..5 BELM table")
    t.add_argument("--kmax", type=int, default=5)
    t.add_argument("--markdown", action="store_true")
    t.set_defaults(func=_table)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
