"""Command line: ``lmsolvers derive|stability|plot|table``.

This module imports nothing heavy at module level (no sympy, numpy, torch), so
``lmsolvers --help`` is instant; each command imports what it needs when it runs.
Every error is one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]

_STABILITIES = ("none", "forward", "bidirectional")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive(text: str) -> int:
    """An integer ≥ 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {n}")
    return n


def _steps(text: str) -> int:
    """A step count k with a designed BELM: 2 ≤ k ≤ KMAX_DESIGN (reason from the library)."""
    k = _positive(text)
    from .design import KMAX_DESIGN, design_steps_error

    if k > KMAX_DESIGN:
        raise argparse.ArgumentTypeError(design_steps_error(k))
    if k < 2:
        raise argparse.ArgumentTypeError(f"k = {k}: a consistent BELM needs k ≥ 2 steps "
                                         "(k = 1 admits only x̄_(i-1) = x̄_i)")
    return k


def _kmax(text: str) -> int:
    """The last k of the table: 1 ≤ kmax ≤ KMAX_DESIGN."""
    k = _positive(text)
    from .design import KMAX_DESIGN, design_steps_error

    if k > KMAX_DESIGN:
        raise argparse.ArgumentTypeError(design_steps_error(k))
    return k


def _derive(args: argparse.Namespace) -> int:
    import sympy as sp

    from .analysis import analyze, root_condition
    from .design import belm_family, design, max_stable_order

    k, st = args.steps, args.stability
    out = sp.latex if args.latex else sp.sstr
    if args.order is not None and args.order != max_stable_order(k, st):
        a, b, params = belm_family(k, args.order)
        print(f"{k}-step BELM family of order {args.order}, free parameters {params}")
        for j, e in enumerate(a, 1):
            print(f"  a{j} = {out(e)}")
        for j, e in enumerate(b):
            print(f"  b{j} = {out(e)}")
        return 0
    d = design(k, st)
    m = d.method
    A = analyze(m)
    print(f"{m.name}: k = {k}, stability = {st}")
    print("  x_{i-1} = sum_j a_j x_{i-1+j} + sum_j b_j h_{i-1+j} eps_{i-1+j};"
          "  h1..hk = h_i..h_{i+k-1}")
    if d.held:
        eq = m.info.equal_step_a
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
    v = {d_: root_condition(A.rho, d_) for d_ in ("forward", "backward", "both")}
    print("  zero-stable: " + ", ".join(f"{d_}={'yes' if x else 'NO'}" for d_, x in v.items()))
    print(f"  bidirectional explicit (exactly invertible): {m.is_bidirectional_explicit}")
    return 0


def _stability(args: argparse.Namespace) -> int:
    from .design import belm
    from .grid import Grid
    from .stability import stability_report

    grid = Grid.stable_diffusion(args.n) if args.schedule == "sd" else Grid.power(args.n, 80.0)
    print(stability_report(belm(args.steps, args.stability), grid))
    return 0


def _table(args: argparse.Namespace) -> int:
    from .table import belm_table

    tty = sys.stderr.isatty()

    def progress(i: int, total: int, what: str) -> None:  # before design i of total
        line = f"lmsolvers table: designing {what} ({i}/{total})"
        print(f"\r{line}\x1b[K" if tty else line, end="" if tty else "\n", file=sys.stderr,
              flush=True)

    text = belm_table(args.kmax, markdown=args.markdown, progress=progress)
    if tty:
        print("\r\x1b[K", end="", file=sys.stderr, flush=True)
    print(text)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .plots import plot_design_roots

    out = args.out or f"belm{args.steps}_roots.png"
    plot_design_roots(args.steps, out=out)
    print(f"wrote {out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lmsolvers",
                description="Derive, analyse and tabulate k-step BELMs (bidirectional explicit "
                            "linear multistep methods: exactly invertible diffusion sampling).")
    sub = p.add_subparsers(dest="cmd", required=True)
    steps = {"type": _steps, "required": True, "metavar": "K",
             "help": "number of steps k of the BELM, 2..5"}
    stab = {"choices": _STABILITIES, "default": "bidirectional",
            "help": "design requirement (default: bidirectional)"}
    d = sub.add_parser("derive", help="derive a k-step BELM and analyse it")
    d.add_argument("--steps", "-k", **steps)
    d.add_argument("--order", type=_positive, default=None, metavar="P",
                   help="the whole variable-step family of order P (≤ 2k-2), "
                        "free parameters symbolic")
    d.add_argument("--stability", **stab)
    d.add_argument("--latex", action="store_true", help="print coefficients as LaTeX")
    d.set_defaults(func=_derive)
    s = sub.add_parser("stability", help="parasitic growth of a designed BELM on a schedule")
    s.add_argument("--steps", "-k", **steps)
    s.add_argument("--schedule", choices=("sd", "power"), default="sd",
                   help="Stable Diffusion's DDIM grid or a power grid up to σ̄ = 80")
    s.add_argument("--n", type=_positive, default=50, help="number of grid steps")
    s.add_argument("--stability", **stab)
    s.set_defaults(func=_stability)
    pl = sub.add_parser("plot", help="root plot / root locus of the k-step designs (PNG)")
    pl.add_argument("--steps", "-k", **steps)
    pl.add_argument("--out", default=None, help="PNG path (default belm{k}_roots.png)")
    pl.set_defaults(func=_plot)
    t = sub.add_parser("table", help="the k = 1..5 BELM table (progress on stderr)")
    t.add_argument("--kmax", type=_kmax, default=5, metavar="K", help="last k, 1..5")
    t.add_argument("--markdown", action="store_true")
    t.set_defaults(func=_table)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lmsolvers`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"lmsolvers {args.cmd}: error: {e}", file=sys.stderr)
        return 2
