"""The exact samplers as k-diffusion sampler functions against k-diffusion's own (issue 22).

Every sampler here is called the way k-diffusion calls samplers,
``fn(model, x, sigmas, disable=True)``, with one k-diffusion model: the digits DDPM
wrapped by :class:`lmsolvers.adapters.kdiffusion.DiffusersDenoiser` (``D(x, σ)``).

* **Peers**, written from the formulas of k-diffusion's ``k_diffusion/sampling.py``
  (``sample_euler`` without churn, ``sample_dpmpp_2m``), calling the model as it does
  (``model(x, sigmas[i] * s_in)``);
* **ours**: :func:`~lmsolvers.adapters.kdiffusion.sample_exact` (the default exact
  configuration) on :func:`~lmsolvers.adapters.kdiffusion.get_sigmas_designed`, and
  :func:`~lmsolvers.adapters.kdiffusion.sample_obelm`.

**Each sampler on its own best grid**: the peers and O-BELM choose, per NFE, among
Karras (ρ = 7), exponential (log-uniform) and k-diffusion's ``DiscreteSchedule.get_sigmas``
(all from the table's σ̄(t = 999) down to σ̄(t = 0), then 0; O-BELM also the designed grid)
by the median error on a **validation** set (seed ``--val-seed``), and are reported on a
separate **test** set (seed ``--seed``).  The default configuration has no choice to make.

**Error**: per-sample RMS against the self-converged RK4-in-log-σ̄ reference of
``benchmarks.default_config`` (same model, same noise convention ``x_T``, cached under
``out/default_config/``); median and RMS over samples with 95 % bootstrap intervals.
NFE = network evaluations (one per step for all four).  Also the round trip
``sample_*(invert_*(x_0))`` of ours on held-out digits (float64).

Usage::

    .venv/bin/python -m benchmarks.kdiffusion_bench          # ~10 min, writes the table
    .venv/bin/python -m benchmarks.kdiffusion_bench --table  # re-print the saved table
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from lmsolvers.adapters import kdiffusion as K

from .default_config import RESULTS, Digits, bootstrap, cached_reference, noise, per_sample
from .digits_data import load_digits_split
from .tables import markdown_table

GRIDS = ("karras", "exponential", "k-diffusion")


# ------------------------------------------------- peers, from k-diffusion's formulas
@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """k-diffusion's ``sample_euler`` without churn: ``d = (x − D)/σ_i``,
    ``x ← x + d (σ_{i+1} − σ_i)``."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """k-diffusion's ``sample_dpmpp_2m`` (DPM-Solver++(2M)): in ``t = −log σ``, with
    ``h = t_{i+1} − t_i``, ``x ← (σ_{i+1}/σ_i) x − expm1(−h) D̃`` where ``D̃ = D`` on the first
    step and onto σ = 0 (then ``x ← D``), else ``D̃ = (1 + 1/(2r)) D_i − D_{i−1}/(2r)``,
    ``r = h_{i−1}/h``."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = t_next - t
            if old is None:
                d = denoised
            else:
                r = (t + sigmas[i - 1].log()) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * d
        old = denoised
    return x


# ------------------------------------------------------------------ the grids
def candidate_sigmas(den: K.DiffusersDenoiser, kind: str, n: int) -> torch.Tensor:
    """``n`` steps from σ̄(t = T − 1) to σ̄(t = 0), then 0 (float64)."""
    lo, hi = float(den.sigmas[0]), float(den.sigmas[-1])
    if kind == "karras":
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        s = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    elif kind == "exponential":
        s = torch.linspace(math.log(hi), math.log(lo), n, dtype=torch.float64).exp()
    elif kind == "k-diffusion":
        return den.get_sigmas(n)
    elif kind == "designed":
        return K.get_sigmas_designed(den, n, method="obelm")
    else:
        raise ValueError(kind)
    return torch.cat([s, s.new_zeros(1)])


def run(fn: Callable, den: K.DiffusersDenoiser, x_T: torch.Tensor, sigmas: torch.Tensor,
        chunk: int) -> torch.Tensor:
    """``fn`` from the model-space noise ``x_T``: the k-diffusion state is ``x̄_N = x_T/α_N``
    with α at σ̄(t = T − 1), every grid's first node."""
    alpha = 1.0 / math.sqrt(1.0 + float(sigmas[0]) ** 2)
    out = [fn(den, xc / alpha, sigmas, disable=True) for xc in torch.split(x_T, chunk)]
    return torch.cat(out)


SAMPLERS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "k-diffusion Euler": (sample_euler, GRIDS),
    "k-diffusion DPM-Solver++(2M)": (sample_dpmpp_2m, GRIDS),
    "ours: sample_obelm": (K.sample_obelm, (*GRIDS, "designed")),
    "ours: sample_exact (default)": (K.sample_exact, ("default",)),
}


def sigmas_for(den: K.DiffusersDenoiser, grid: str, n: int) -> torch.Tensor:
    return K.get_sigmas_designed(den, n) if grid == "default" else candidate_sigmas(den, grid, n)


# ----------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=256, help="test noises")
    p.add_argument("--seed", type=int, default=2, help="test seed")
    p.add_argument("--n-val", type=int, default=128, help="validation noises")
    p.add_argument("--val-seed", type=int, default=1)
    p.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--ref-steps", type=int, default=1000)
    p.add_argument("--n-rt", type=int, default=64, help="held-out digits for round trips")
    p.add_argument("--boot", type=int, default=2000)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--table", action="store_true", help="only re-print the saved table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Choose grids on validation, report on test, write ``kdiffusion_bench.{json,md}``."""
    args = parse_args(argv)
    if args.table:
        rec = json.loads((args.out / "kdiffusion_bench.json").read_text())
        print(render(rec))
        return rec
    torch.set_num_threads(1)
    t_start = time.time()
    dm = Digits()
    den = K.DiffusersDenoiser(dm.unet, dm.scheduler)
    x_val, x_test = noise(args.n_val, args.val_seed), noise(args.n, args.seed)
    ref_val = cached_reference(dm, x_val, args.val_seed, args.ref_steps, args.chunk)
    ref_test = cached_reference(dm, x_test, args.seed, args.ref_steps, args.chunk)
    rows, choices = [], []
    for b in args.budgets:
        for name, (fn, grids) in SAMPLERS.items():
            val = {}
            for g in grids:
                e = per_sample(run(fn, den, x_val, sigmas_for(den, g, b), args.chunk), ref_val)
                val[g] = float(np.median(e))
            best = min(val, key=val.get)
            choices.append({"sampler": name, "budget": b, "validation": val, "best": best})
            t0 = time.time()
            x0 = run(fn, den, x_test, sigmas_for(den, best, b), args.chunk)
            st = bootstrap(per_sample(x0, ref_test), args.boot, args.seed)
            rows.append({"sampler": name, "budget": b, "grid": best, **st,
                         "wall_s": time.time() - t0})
            print(f"{name:30s} NFE {b:3d} [{best}]: median {st['median']:.2e} "
                  f"[{st['median_lo']:.2e}, {st['median_hi']:.2e}]", flush=True)
    x0 = load_digits_split("test")[0][: args.n_rt].double()
    rts = []
    for b in args.budgets:
        for name, inv, smp in (("sample_exact", K.invert_exact, K.sample_exact),
                               ("sample_obelm", K.invert_obelm, K.sample_obelm)):
            sig = K.get_sigmas_designed(den, b)
            rec_x = smp(den, inv(den, x0, sig, disable=True), sig, disable=True)
            rel = (rec_x - x0).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)
            rts.append({"sampler": name, "budget": b, "median": float(rel.median()),
                        "max": float(rel.max())})
    rec = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "rows": rows, "choices": choices, "roundtrip": rts,
           "elapsed_s": time.time() - t_start}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kdiffusion_bench.json").write_text(json.dumps(rec, indent=1))
    (args.out / "kdiffusion_bench.md").write_text(render(rec))
    print(render(rec))
    return rec


def _ci(r: dict, key: str) -> str:
    return f"{r[key]:.2e} [{r[key + '_lo']:.2e}, {r[key + '_hi']:.2e}]"


def render(rec: dict) -> str:
    """The markdown report."""
    cfg = rec["config"]
    budgets = sorted({r["budget"] for r in rec["rows"]})
    by = {(r["sampler"], r["budget"]): r for r in rec["rows"]}
    names = list(dict.fromkeys(r["sampler"] for r in rec["rows"]))
    cell = {(c["sampler"], c["budget"]): c for c in rec["choices"]}

    def val(nm: str, b: int) -> str:
        v = cell[(nm, b)]["validation"]
        return ", ".join(f"{g} {e:.1e}" for g, e in v.items())

    lines = [
        "# Exact samplers as k-diffusion functions vs k-diffusion's Euler and DPM-Solver++(2M)",
        "",
        f"Digits DDPM behind `DiffusersDenoiser`; test set {cfg['n']} noises (seed "
        f"{cfg['seed']}), grids chosen per sampler and NFE on {cfg['n_val']} validation "
        f"noises (seed {cfg['val_seed']}). Per-sample RMS error against the RK4 reference "
        f"({cfg['ref_steps']} steps, `benchmarks.default_config`). Cells: median [95 % "
        f"bootstrap interval] (grid).",
        "",
        markdown_table(["sampler", *(f"NFE {b}" for b in budgets)],
                       ([nm, *(f"{_ci(by[(nm, b)], 'median')} ({by[(nm, b)]['grid']})"
                               for b in budgets)] for nm in names)),
        "",
        "RMS over samples of the per-sample error:",
        "",
        markdown_table(["sampler", *(f"NFE {b}" for b in budgets)],
                       ([nm, *(_ci(by[(nm, b)], "rms") for b in budgets)] for nm in names)),
        "",
        "Validation medians per grid:",
        "",
        markdown_table(["sampler", *(f"NFE {b}" for b in budgets)],
                       ([nm, *(val(nm, b) for b in budgets)] for nm in names)),
        "",
        f"Round trip `sample_*(invert_*(x_0))` on {cfg['n_rt']} held-out digits, designed "
        "grid, float64 (relative error per sample, median / max):",
        "",
        markdown_table(["sampler", *(f"NFE {b}" for b in budgets)],
                       ([nm, *(f"{r['median']:.1e} / {r['max']:.1e}" for b in budgets
                               for r in rec["roundtrip"]
                               if r["sampler"] == nm and r["budget"] == b)]
                        for nm in dict.fromkeys(r["sampler"] for r in rec["roundtrip"]))),
        "",
        f"Run time {rec['elapsed_s'] / 60:.1f} min. Regenerate: "
        "`.venv/bin/python -m benchmarks.kdiffusion_bench`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
