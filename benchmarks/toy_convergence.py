"""Toy convergence: global error against NFE on the Gaussian-mixture σ̄-ODE.

The ε of :class:`lmsolvers.problems.GaussianMixture` is exact and its ODE flow is known
to DOP853 accuracy (rtol 1e-12), so the error of every sampler is its discretisation
error alone.  For each step count N all samplers walk the *same* nodes: the σ̄ values
of diffusers' ``DPMSolverMultistepScheduler`` (linear β, 1000 training steps, σ̄_max ≈
157, final σ = 0).  DPM-Solver++(2M) runs diffusers' own ``step`` fed the analytic ε in
x-space (``x = α x̄``, ``ε(x, t) = ε̄(x/α, σ̄_t)``); every other sampler runs the core.
NFE are counted by a wrapper (EDICT: two per step; RK4 starters: three extra per
starting step).  Error: RMS over points and coordinates of ``x̄_0`` minus the reference.

Note: diffusers' ``DPMSolverMultistepScheduler.step`` casts the sample to float32, so
its curve floors near 1e-6; the core samplers run in float64.

Writes ``toy_convergence.md``/``.json``/``.png`` under ``--out``.
Usage: ``.venv/bin/python -m benchmarks.toy_convergence [--n-points 256]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import lmsolvers as L
from lmsolvers.grid import vp_alpha

from . import samplers as S
from .tables import markdown_table

REPO_ROOT = Path(__file__).resolve().parents[1]


def run(spec: S.SamplerSpec, problem, n_steps: int, xbar_N: torch.Tensor
        ) -> tuple[torch.Tensor, int]:
    """``(x̄_0, NFE)`` of one sampler with ``n_steps`` steps on the DPM-Solver grid."""
    grid = S.toy_grid(n_steps)
    if spec.kind == "dpm":
        s_max = float(grid.sigma_bar[-1])

        def out(x, t, sb):
            return problem.eps(x / vp_alpha(sb), sb)

        x0, nfe = S.dpm_solve(S.dpm_config(), n_steps, xbar_N * vp_alpha(s_max), out)
        return x0.double(), nfe
    ce = S.CountingEps(problem.eps)
    return L.sample(ce, grid, spec.method, xbar_N, disable=True), ce.calls


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--budgets", type=int, nargs="+",
                   default=[10, 15, 20, 30, 50, 70, 100, 150, 200, 300])
    p.add_argument("--n-points", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samplers", nargs="*", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the convergence study; write the table, JSON and plot; return the record."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    problem = L.problems.GaussianMixture()
    s_max = float(S.toy_grid(10).sigma_bar[-1])
    g = torch.Generator().manual_seed(args.seed)
    xbar_N = problem.prior(args.n_points, s_max, generator=g)
    ref = problem.solution(xbar_N, s_max, 0.0)
    rows = []
    for spec in S.make_specs(names=args.samplers):
        for b in args.budgets:
            n = S.steps_for_budget(spec, b)
            if n is None:
                continue
            x0, nfe = run(spec, problem, n, xbar_N)
            err = float((x0 - ref).pow(2).mean().sqrt())
            rows.append(dict(sampler=spec.name, budget=b, steps=n, nfe=nfe, err=err))
        print(f"{spec.name:18s} " + " ".join(f"{r['err']:.1e}" for r in rows
                                            if r["sampler"] == spec.name), flush=True)
    record = dict(config=vars(args) | {"out": str(args.out)}, sigma_max=s_max, rows=rows,
                  orders=observed_orders(rows), belm_ks=S.available_belm_ks(),
                  elapsed_s=time.time() - t_start)
    (out / "toy_convergence.json").write_text(json.dumps(record, indent=1, default=str))
    (out / "toy_convergence.md").write_text(render_markdown(record))
    plot(record, out / "toy_convergence.png")
    print(f"wrote {out / 'toy_convergence.md'} in {record['elapsed_s']:.0f} s")
    return record


def observed_orders(rows: list[dict]) -> dict[str, float]:
    """Least-squares slope of −log(error) against log(NFE) over the upper half of budgets."""
    orders = {}
    for nm in dict.fromkeys(r["sampler"] for r in rows):
        rs = [r for r in rows if r["sampler"] == nm and r["err"] > 0 and np.isfinite(r["err"])]
        rs = rs[len(rs) // 2:]
        if len(rs) >= 2:
            slope = np.polyfit(np.log([r["nfe"] for r in rs]), np.log([r["err"] for r in rs]), 1)
            orders[nm] = float(-slope[0])
    return orders


def render_markdown(rec: dict) -> str:
    """Markdown table: error at each NFE budget, one row per sampler, best per column bold."""
    budgets = rec["config"]["budgets"]
    names = list(dict.fromkeys(r["sampler"] for r in rec["rows"]))
    by = {(r["sampler"], r["budget"]): r for r in rec["rows"]}
    best = {b: min((by[(n, b)]["err"] for n in names if (n, b) in by), default=None)
            for b in budgets}
    lines = [
        "# Toy convergence: Gaussian-mixture σ̄-ODE",
        "",
        f"{rec['config']['n_points']} points from the mixture's marginal at σ̄_max = "
        f"{rec['sigma_max']:.1f}, integrated to σ̄ = 0 on the nodes of diffusers' "
        "DPMSolverMultistepScheduler (linear β) for each step count; RMS error of x̄_0 "
        "against DOP853 (rtol 1e-12). At each NFE budget a sampler gets the most steps that "
        "fit (EDICT half; RK4-started BELMs fewer); NFE are counted. Best per column in bold.",
        "",
    ]

    def cell(r: dict | None) -> str:
        if r is None:
            return "—"
        s = f"{r['err']:.1e}"
        return f"**{s}**" if r["err"] == best[r["budget"]] else s

    lines.append(markdown_table(
        ["sampler", *budgets, "observed order"],
        ([nm, *(cell(by.get((nm, b))) for b in budgets),
          f"{rec['orders'].get(nm, float('nan')):.2f}"] for nm in names)))
    lines += ["", "Columns are NFE budgets. diffusers' DPM-Solver++ step computes in float32 "
              "(it casts the sample), so it cannot go below ~1e-6.",
              f"Designed BELMs available: {rec['belm_ks'] or 'none (lmsolvers.belm absent)'}. "
              f"Run time {rec['elapsed_s']:.0f} s. Regenerate: "
              "`.venv/bin/python -m benchmarks.toy_convergence`.", ""]
    return "\n".join(lines)


def plot(rec: dict, path: Path) -> None:
    """Log-log error against NFE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for nm in dict.fromkeys(r["sampler"] for r in rec["rows"]):
        rs = [r for r in rec["rows"] if r["sampler"] == nm]
        ax.loglog([r["nfe"] for r in rs], [r["err"] for r in rs], "o-", ms=3,
                  label=f"{nm} (order {rec['orders'].get(nm, float('nan')):.1f})")
    ax.set(xlabel="NFE", ylabel="RMS error of x̄₀", title="Gaussian-mixture ODE: global error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
