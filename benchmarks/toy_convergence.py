"""Toy convergence: per-point error against NFE on the Gaussian-mixture σ̄-ODE.

The ε of :class:`lmsolvers.problems.GaussianMixture` is exact and its flow is known to
DOP853 accuracy (rtol 1e-12), so a sampler's error is its discretisation error alone.
All samplers (``samplers.make_specs``: ours, then DPM-Solver++(2M)/(3M) and UniPC-3 run
by diffusers' own ``step``) walk the same nodes for a given step count: the trailing
grid of the linear-β DDPM table (σ̄ from 157.4 to 0), the digits benchmark's grid.  At
each NFE budget a sampler gets the most steps whose counted NFE fit.

Per budget: the error of each point (RMS over its coordinates against the reference);
its median and RMS over the points, each with a percentile-bootstrap 95 % interval
(seeded, the same resamples for every sampler); the observed order (slope of the median
over the upper half of the budgets).  Also the check that the diffusers peers reproduce
the published algorithms on this exact ε (``samplers.check_peers``).

Note: diffusers' ``DPMSolverMultistepScheduler.step`` casts the sample to float32, so
its error floors near 1e-6; every other sampler runs in float64.

Writes ``toy_convergence.md``/``.json``/``.png`` under ``--out``.
Usage: ``.venv/bin/python -m benchmarks.toy_convergence [--quick]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import lmsolvers as L

from . import samplers as S
from .tables import markdown_table

REPO_ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 125, 150, 200, 250, 300)
TABLE_BUDGETS = (10, 20, 50, 100, 200)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    p.add_argument("--n-points", type=int, default=256)
    p.add_argument("--boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samplers", nargs="*", default=None)
    p.add_argument("--quick", action="store_true", help="a reduced run (the tests')")
    args = p.parse_args(argv)
    if args.quick:
        args.budgets, args.n_points, args.boot = [10, 20, 40], 16, 200
        if args.samplers is None:  # the designed BELM-4/5 cost seconds of sympy
            args.samplers = [s for s in S.base_names() if s not in ("BELM-4", "BELM-5")]
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the convergence study; write the table, JSON and plot; return the record."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    problem = L.problems.GaussianMixture()
    table = S.linear_beta_table()
    s_max = float(table[-1])
    g = torch.Generator().manual_seed(args.seed)
    xbar_N = problem.prior(args.n_points, s_max, generator=g)
    ref = problem.solution(xbar_N, s_max, 0.0)
    idx = S.resample_index(args.n_points, args.boot, args.seed)
    rows = []
    specs = S.make_specs(names=args.samplers)
    for spec in specs:
        for b in sorted(set(args.budgets)):
            n = S.steps_for_budget(spec, b)
            if n is None:
                rows.append(dict(sampler=spec.name, budget=b, steps=None))
                continue
            sb = S.family_grid("trailing", n, table)
            try:
                x0, nfe = S.run(spec, sb, xbar_N, problem.eps)
                err = (x0.double() - ref).pow(2).mean(1).sqrt().numpy()
            except (L.SolverInstabilityError, FloatingPointError, ValueError):
                err, nfe = np.full(args.n_points, np.inf), -1
            rows.append(dict(sampler=spec.name, budget=b, steps=n, nfe=nfe,
                             **S.summarise_errors(err, idx)))
        print(f"{spec.name:18s} " + " ".join(
            f"{r['median']:.1e}" for r in rows if r["sampler"] == spec.name and r.get("steps")),
            flush=True)
    peer_check = S.check_peers(problem.eps, xbar_N, table)
    record = dict(config=vars(args) | {"out": str(args.out)}, sigma_max=s_max, rows=rows,
                  orders=observed_orders(rows), peer_check=peer_check,
                  belm_ks=[int(s.name.split("-")[1]) for s in specs if s.name.startswith("BELM-")],
                  elapsed_s=time.time() - t_start)
    (out / "toy_convergence.json").write_text(json.dumps(record, indent=1, default=str))
    (out / "toy_convergence.md").write_text(render_markdown(record))
    S.plot_convergence(rows, out / "toy_convergence.png",
                       title="Gaussian-mixture ODE, trailing grid: per-point error vs DOP853 "
                             f"(median, 95 % bootstrap band, {args.n_points} points)")
    print(f"wrote {out / 'toy_convergence.md'} in {record['elapsed_s']:.0f} s")
    return record


def observed_orders(rows: list[dict]) -> dict[str, float]:
    """Least-squares slope of −log(median error) against log(NFE), upper half of budgets."""
    orders = {}
    for nm in dict.fromkeys(r["sampler"] for r in rows):
        rs = S.finite_rows(rows, nm)
        rs = [r for r in rs if r["median"] > 0][len(rs) // 2:]
        if len(rs) >= 2:
            slope = np.polyfit(np.log([r["nfe"] for r in rs]), np.log([r["median"] for r in rs]),
                               1)
            orders[nm] = float(-slope[0])
    return orders


def render_markdown(rec: dict) -> str:
    """Markdown: median [95 % interval] at the table budgets, all medians, the peer check."""
    cfg = rec["config"]
    budgets = sorted(set(cfg["budgets"]))
    table_b = [b for b in TABLE_BUDGETS if b in budgets] or budgets
    names = list(dict.fromkeys(r["sampler"] for r in rec["rows"]))
    by = {(r["sampler"], r["budget"]): r for r in rec["rows"]}
    best = {b: min((by[(nm, b)]["median"] for nm in names if by[(nm, b)].get("steps")),
                   default=None) for b in budgets}

    def cell(r: dict, ci: bool) -> str:
        if r.get("steps") is None:
            return "—"
        if not np.isfinite(r["median"]):
            return "diverged"
        s = f"{r['median']:.1e}"
        s = f"**{s}**" if r["median"] == best[r["budget"]] else s
        return f"{s} [{r['median_lo']:.1e}, {r['median_hi']:.1e}]" if ci else s

    lines = [
        "# Toy convergence: Gaussian-mixture σ̄-ODE",
        "",
        f"{cfg['n_points']} points from the mixture's marginal at σ̄_max = {rec['sigma_max']:.1f} "
        "(seed {seed}), integrated to σ̄ = 0 on the trailing grid of the linear-β DDPM table "
        "(the digits benchmark's grid) for each step count; error of a point = RMS over its "
        "coordinates of x̄_0 minus DOP853 (rtol 1e-12). At each NFE budget a sampler gets the "
        "most steps that fit (EDICT half, RK4-started BELMs fewer); NFE are counted. Median "
        f"over the points [95 % percentile-bootstrap interval, {cfg['boot']} resamples]; best "
        "median per column in bold.".format(seed=cfg["seed"]),
        "",
        markdown_table(["sampler", *(f"NFE {b}" for b in table_b)],
                       ([nm, *(cell(by[(nm, b)], True) for b in table_b)] for nm in names)),
        "",
        "Medians at every budget (the plot's points) and the observed order (slope of the "
        "median over the upper half of the budgets):",
        "",
        markdown_table(["sampler", *budgets, "order"],
                       ([nm, *(cell(by[(nm, b)], False) for b in budgets),
                         f"{rec['orders'].get(nm, float('nan')):.2f}"] for nm in names)),
        "",
        "RMS over the points of the per-point error at the table budgets [95 % interval]:",
        "",
        markdown_table(["sampler", *(f"NFE {b}" for b in table_b)], (
            [nm, *("—" if by[(nm, b)].get("steps") is None else
                   f"{by[(nm, b)]['rms']:.1e} [{by[(nm, b)]['rms_lo']:.1e}, "
                   f"{by[(nm, b)]['rms_hi']:.1e}]" for b in table_b)] for nm in names)),
        "",
        "Peers against independent float64 transcriptions of the published algorithms "
        "(max |difference| of x̄_0 over the points, trailing grid; DPM-Solver++ computes in "
        "float32 inside diffusers):",
        "",
    ]
    pc = rec["peer_check"]
    steps = sorted({int(k.rsplit("_", 1)[1]) for v in pc.values() for k in v
                    if k.startswith("vs_published_")})
    lines.append(markdown_table(["peer", *(f"N = {s}" for s in steps)], (
        [nm, *(f"{row[f'vs_published_{s}']:.1e}" for s in steps)] for nm, row in pc.items())))
    lines += ["", f"Designed BELMs available: {rec['belm_ks'] or 'none'}. Run time "
              f"{rec['elapsed_s']:.0f} s. Regenerate: `.venv/bin/python -m "
              "benchmarks.toy_convergence`. Plot: `toy_convergence.png` (one panel per "
              "sampler, grey: DPM-Solver++(2M)).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
