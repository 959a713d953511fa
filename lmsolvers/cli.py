"""Command line: ``lmsolvers derive|stability|plot|table`` and the dataset jobs
``lmsolvers invert-dataset|reconstruct|verify|sample-dataset`` (docs/jobs.md).

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


def _derive_exponential(args: argparse.Namespace) -> int:
    import sympy as sp

    from .expdesign import exp_design
    from .expsymbolic import exp_order_of, solve_exp_order_conditions

    k = args.steps
    out = sp.latex if args.latex else sp.sstr
    print("  ybar_r = sum_j a_j ybar_{r+j} + e^{lambda_r} sum_m beta_m D_{r+m};"
          "  l_j = log(sigma_{r+j}/sigma_{r+j-1}), ExpMoment(n, L) = int_{-L}^0 e^u u^n du")
    if args.order is not None:
        p = args.order
        if not 1 <= p <= 2 * k - 2:
            raise ValueError(f"--order {p}: a {k}-step exponential BELM has order 1..{2 * k - 2}")
        free = [f"a{j}" for j in range(1, 2 * k - 1 - p)]
        a, b = solve_exp_order_conditions(k, p, parameters=free)
        print(f"{k}-step exponential BELM family of order {p} "
              f"(verified: {exp_order_of(a, b, max_order=p) >= p}), free parameters {free}")
        for j, e in enumerate(a, 1):
            print(f"  a{j} = {out(e)}")
        for j, e in enumerate(b):
            print(f"  beta{j} = {out(e)}")
        return 0
    if k < 3:
        raise ValueError("exponential BELM designs exist for k = 3..6")
    d = exp_design(k)
    from .expdesign import ebelm

    m = ebelm(k)
    A = m.analysis()
    print(f"{m.name}: k = {k}, t = {list(d.t)}")
    for j, e in enumerate(m.ya, 1):
        print(f"  a{j} = {out(e)}")
    for j, e in enumerate(m.beta):
        print(f"  beta{j} = {out(e)}")
    print(f"  order (variable steps) = {A.order}; order (equal log-steps) = {A.order_equal}; "
          f"leading LTE: {A.leading_term()}")
    print(f"  rho(zeta) = {out(A.rho.as_expr())}")
    for z, kap in A.growth:
        print(f"    root {complex(z):.4f}  growth parameter kappa = {kap.real:+.4f}")
    print(f"  inversion growth exponent g = max(1 - kappa) = {A.growth_exponent:.4f} "
          f"(the sum rule's best for k = {k}: {k / (k - 1):.4f})")
    print(f"  bidirectional explicit (exactly invertible): {m.is_bidirectional_explicit}")
    return 0


def _derive(args: argparse.Namespace) -> int:
    import sympy as sp

    if args.form == "data":
        return _derive_exponential(args)

    from .analysis import analyze, root_condition
    from .design import belm_family, design, max_stable_order

    k = args.steps
    out = sp.latex if args.latex else sp.sstr
    if args.order is not None:
        # the whole variable-step family of that order: what --order asks for, whatever
        # the designs' orders are (the k = 4 designs have order 4 at equal steps but 3 on
        # variable grids, so printing a design would silently answer another question)
        if args.stability is not None:
            raise ValueError("--order prints the whole family of order P (no stability "
                             "requirement); --stability selects one designed member: give "
                             "one of them")
        a, b, params = belm_family(k, args.order)
        print(f"{k}-step BELM family of order {args.order} on variable steps, free "
              f"parameters {params or 'none'}")
        print("  x_{i-1} = sum_j a_j x_{i-1+j} + sum_j b_j h_{i-1+j} eps_{i-1+j};"
              "  h1..hk = h_i..h_{i+k-1}")
        for j, e in enumerate(a, 1):
            print(f"  a{j} = {out(e)}")
        for j, e in enumerate(b):
            print(f"  b{j} = {out(e)}")
        print(f"  order (variable steps) = {args.order} for every value of the free parameters "
              f"(solved from C_0 = … = C_{args.order} = 0); the zero-stable designs of "
              f"{k} steps have order {max_stable_order(k, 'bidirectional')} at equal steps "
              "(lmsolvers derive without --order)")
        return 0
    st = args.stability or "bidirectional"
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
    if args.form == "data":
        from .expdesign import ebelm

        print(stability_report(ebelm(args.steps), grid))
        return 0
    print(stability_report(belm(args.steps, args.stability), grid))
    return 0


def _table(args: argparse.Namespace) -> int:
    from .table import belm_table

    tty = sys.stderr.isatty()

    def progress(i: int, total: int, what: str) -> None:  # before design i of total
        line = f"lmsolvers table: designing {what} ({i}/{total})"
        print(f"\r{line}\x1b[K" if tty else line, end="" if tty else "\n", file=sys.stderr,
              flush=True)

    if args.form == "data":
        from .table import exp_belm_table

        print(exp_belm_table(markdown=args.markdown))
        return 0
    text = belm_table(args.kmax, markdown=args.markdown, progress=progress)
    if tty:
        print("\r\x1b[K", end="", file=sys.stderr, flush=True)
    print(text)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .plots import plot_design_roots, plot_exp_roots

    # under out/ (git-ignored in a checkout): a plot never leaves an untracked file behind
    if args.form == "data":
        out = args.out or f"out/ebelm{args.steps}_roots.png"
        plot_exp_roots(args.steps, out=out)
        print(f"wrote {out}")
        return 0
    out = args.out or f"out/belm{args.steps}_roots.png"
    plot_design_roots(args.steps, out=out)
    print(f"wrote {out}")
    return 0


def _shape(text: str) -> tuple[int, ...]:
    """``C,H,W``: positive integers."""
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not C,H,W") from None
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not C,H,W with positive sizes")
    return dims


def _data_range(text: str) -> tuple[float, float] | str:
    """``LO,HI`` (numbers, LO < HI) or ``any``."""
    if text.strip().lower() == "any":
        return "any"
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI or 'any'") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"{text!r}: LO must be below HI")
    return lo, hi


def _real(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _job_config(args: argparse.Namespace, **extra):
    from .adapters.jobs import JobConfig

    return JobConfig(
        out=args.out, model=args.model, eps=args.eps, method=args.method, steps=args.steps,
        grid=args.grid, guidance=args.guidance, prompt_embeds=args.prompt_embeds,
        prompt=args.prompt, prompts=args.prompts, negative_prompt=args.negative_prompt,
        state_dtype=args.state_dtype, model_dtype=args.model_dtype, bitexact=args.bitexact,
        frac_bits=args.frac_bits, batch_size=args.batch_size, threads=args.threads,
        deterministic=args.deterministic, device=args.device, overwrite=args.overwrite,
        allow_env_mismatch=args.allow_env_mismatch, progress=False if args.no_progress else None,
        **extra)


def _report(summary) -> int:
    """Print the summary table on rank 0; exit code 0 if nothing failed, else 1."""
    import os

    from .adapters.jobs import format_summary

    if os.environ.get("RANK", "0") == "0":
        print(format_summary(summary), flush=True)
    return 0 if summary.ok else 1


def _invert_dataset(args: argparse.Namespace) -> int:
    from .adapters.jobs import invert_dataset

    return _report(invert_dataset(_job_config(args, data=args.data, roundtrip=args.roundtrip,
                                              data_range=args.data_range)))


def _sample_dataset(args: argparse.Namespace) -> int:
    from .adapters.jobs import sample_dataset

    return _report(sample_dataset(_job_config(args, num_samples=args.num, seed=args.seed,
                                              shape=args.shape, images=args.images)))


def _reconstruct(args: argparse.Namespace) -> int:
    from .adapters.jobs import reconstruct

    return _report(reconstruct(args.job, args.out, threads=args.threads,
                               allow_env_mismatch=args.allow_env_mismatch,
                               overwrite=args.overwrite, images=args.images, device=args.device,
                               progress=False if args.no_progress else None))


def _verify(args: argparse.Namespace) -> int:
    import os

    from .adapters.jobs import verify

    summary, rows = verify(args.job, report=args.report, tolerance=args.tolerance,
                           threads=args.threads, allow_env_mismatch=args.allow_env_mismatch,
                           recompute=not args.no_recompute, device=args.device,
                           progress=False if args.no_progress else None,
                           overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":
        for r in rows:
            if r["status"] != "ok":
                where = r["id"] if r["id"] is not None else r.get("shard")
                print(f"{r['status']}: {where}: {r.get('message', '')}", file=sys.stderr)
    return _report(summary)


def _job_arguments(p: argparse.ArgumentParser, dataset: bool) -> None:
    """The options of invert-dataset and sample-dataset (docs/jobs.md)."""
    m = p.add_mutually_exclusive_group(required=True)
    m.add_argument("--model", metavar="DIR", help="diffusers model directory (UNet + "
                   "scheduler_config.json, or a pipeline with unet/ and scheduler/)")
    m.add_argument("--eps", metavar="MODULE:FUNCTION", help="entry point: FUNCTION(steps) "
                   "returns (eps, grid) or (eps, grid, context) of the sigma-bar ODE")
    if dataset:
        p.add_argument("--data", required=True, metavar="PATH",
                       help="folder of images, .npy or .safetensors tensor (N,C,H,W), or "
                            "MODULE:FUNCTION returning one")
        p.add_argument("--data-range", type=_data_range, default=None, metavar="LO,HI",
                       help="range of the model's data; samples outside it fail (default: "
                            "the model's own, [-1,1] for pixel-space UNet2DModels; 'any': "
                            "no check)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--method", default=None, help="method name (default: the sampler's "
                   "default exact configuration; obelm for --eps)")
    p.add_argument("--steps", type=_positive, default=50, help="grid steps (default 50)")
    p.add_argument("--grid", choices=("designed", "scheduler"), default=None,
                   help="grid (default: designed for the default method, else the "
                        "scheduler's spacing)")
    p.add_argument("--guidance", type=_real, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--prompt-embeds", default=None, metavar="FILE",
                   help="safetensors file of named prompt embeddings (no text encoder offline)")
    p.add_argument("--prompt", default=None, metavar="NAME", help="embedding name for all")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="CSV/JSONL with columns id, prompt (an embedding name) per sample")
    p.add_argument("--negative-prompt", default=None, metavar="NAME",
                   help="embedding name of the negative prompt (default 'negative')")
    p.add_argument("--state-dtype", default="float64",
                   choices=("float16", "bfloat16", "float32", "float64"))
    p.add_argument("--model-dtype", default="float32",
                   choices=("float16", "bfloat16", "float32", "float64"))
    p.add_argument("--bitexact", action="store_true", help="integer fixed-point states")
    p.add_argument("--frac-bits", type=_positive, default=None, help="bit-exact resolution")
    p.add_argument("--batch-size", type=_positive, default=8,
                   help="samples per batch = per shard (part of the result; default 8)")
    p.add_argument("--threads", type=_positive, default=1, help="torch threads per rank "
                   "(recorded; default 1)")
    p.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True) (needed on GPUs)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (= cuda:LOCAL_RANK)")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    p.add_argument("--allow-env-mismatch", action="store_true",
                   help="resume in another environment than recorded (warns)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _readback_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", metavar="JOB", help="directory of an invert-dataset job")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch threads (default: the recorded count; another is a mismatch)")
    p.add_argument("--allow-env-mismatch", action="store_true",
                   help="run in another environment than recorded, with a warning")
    p.add_argument("--device", default=None, help="default: the recorded device")
    p.add_argument("--overwrite", action="store_true", help="replace existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lmsolvers",
                description="Derive, analyse and tabulate k-step BELMs (bidirectional explicit "
                            "linear multistep methods: exactly invertible diffusion sampling).")
    sub = p.add_subparsers(dest="cmd", required=True)
    steps = {"type": _steps, "required": True, "metavar": "K",
             "help": "number of steps k of the BELM, 2..5"}
    stab = {"choices": _STABILITIES, "default": "bidirectional",
            "help": "design requirement (default: bidirectional)"}
    form = {"choices": ("sigma", "data"), "default": "sigma",
            "help": "'sigma': BELMs of the σ̄-ODE in x̄, ε̄ (default); 'data': exponential "
                    "BELMs in data-prediction variables ȳ, D (k = 3..6)"}
    d = sub.add_parser("derive", help="derive a k-step BELM and analyse it")
    d.add_argument("--steps", "-k", **steps)
    d.add_argument("--order", type=_positive, default=None, metavar="P",
                   help="print the whole variable-step family of order P (≤ 2k-2), free "
                        "parameters symbolic, instead of a designed member")
    d.add_argument("--stability", choices=_STABILITIES, default=None,
                   help="design requirement of the member printed (default: bidirectional; "
                        "not with --order)")
    d.add_argument("--latex", action="store_true", help="print coefficients as LaTeX")
    d.add_argument("--form", **form)
    d.set_defaults(func=_derive)
    s = sub.add_parser("stability", help="parasitic growth of a designed BELM on a schedule")
    s.add_argument("--steps", "-k", **steps)
    s.add_argument("--schedule", choices=("sd", "power"), default="sd",
                   help="Stable Diffusion's DDIM grid or a power grid up to σ̄ = 80")
    s.add_argument("--n", type=_positive, default=50, help="number of grid steps")
    s.add_argument("--stability", **stab)
    s.add_argument("--form", **form)
    s.set_defaults(func=_stability)
    pl = sub.add_parser("plot", help="root plot / root locus of the k-step designs (PNG)")
    pl.add_argument("--steps", "-k", **steps)
    pl.add_argument("--form", **form)
    pl.add_argument("--out", default=None,
                    help="PNG path (default out/belm{k}_roots.png, out/ebelm{k}_roots.png with "
                         "--form data; out/ is git-ignored)")
    pl.set_defaults(func=_plot)
    t = sub.add_parser("table", help="the k = 1..5 BELM table (progress on stderr)")
    t.add_argument("--kmax", type=_kmax, default=5, metavar="K", help="last k, 1..5")
    t.add_argument("--markdown", action="store_true")
    t.add_argument("--form", **form)
    t.set_defaults(func=_table)
    inv = sub.add_parser("invert-dataset", help="invert a dataset to latents (shards + "
                         "manifest; resumable; torchrun for several processes)")
    _job_arguments(inv, dataset=True)
    inv.add_argument("--roundtrip", action="store_true",
                     help="also reconstruct each batch and record the round-trip error")
    inv.set_defaults(func=_invert_dataset)
    sd = sub.add_parser("sample-dataset", help="draw samples from per-sample seeds (shards + "
                        "manifest; resumable)")
    _job_arguments(sd, dataset=False)
    sd.add_argument("--num", type=_positive, required=True, help="number of samples")
    sd.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    sd.add_argument("--shape", type=_shape, default=None, metavar="C,H,W",
                    help="sample shape (needed with --eps)")
    sd.add_argument("--images", action="store_true", help="also write PNG images")
    sd.set_defaults(func=_sample_dataset)
    rc = sub.add_parser("reconstruct", help="sample an inverted dataset back to data")
    _readback_arguments(rc)
    rc.add_argument("--out", required=True, metavar="DIR", help="output directory")
    rc.add_argument("--images", action="store_true", help="also write PNG images")
    rc.set_defaults(func=_reconstruct)
    vf = sub.add_parser("verify", help="check shards and manifest, recompute every round "
                        "trip, report per-sample errors (exit code 1 on any problem)")
    _readback_arguments(vf)
    vf.add_argument("--report", default=None, metavar="FILE", help="per-sample JSONL report")
    vf.add_argument("--tolerance", type=_real, default=None,
                    help="max-abs round-trip error accepted (default: 10x the predicted one)")
    vf.add_argument("--no-recompute", action="store_true",
                    help="check files and identities only")
    vf.set_defaults(func=_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lmsolvers`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"lmsolvers {args.cmd}: error: {e}", file=sys.stderr)
        return 2
