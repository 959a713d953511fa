"""Stochastic samplers on the shipped digits DDPM: sample quality against the ODE samplers,
and the exactness of stochastic inversion (docs/design.md §13).

**Quality** at NFE 20/50/100 (one network evaluation per step for every sampler here), on
``--n`` seeded noises (test seed): the committed digits classifier's mean confidence (max
softmax) and mean predictive entropy, and the Fréchet distance in its 64-d penultimate
features to the 360 held-out test digits, each with a percentile-bootstrap 95 % interval
(samples resampled; ``--boot`` resamples, paired across samplers).  Samplers:

* ODE: ours, O-BELM with the damped landing on its designed grid, and the library's
  default exact configuration (an exponential BELM on its λ-warped grid, per N);
  DPM-Solver++(2M) (diffusers);
* stochastic, ours: the stochastic forms of both at η = 0.5 and η = 1
  (``obelm-landing(0.1)+eta(η)``; ``DiffusionSampler(eta=…)`` for the default; drift
  "auto");
* stochastic peers: DDIM's η-step (k = 1: DDIM-η, at η = 1 the DDPM ancestral sampler) and
  SDE-DPM-Solver++(2M) (η = 1; ``benchmarks.stochastic_toy.sde_dpmpp_2m``, checked against
  diffusers' ``sde-dpmsolver++`` fed the same noise).  Each peer takes its best grid family
  (trailing, Karras ρ = 7, log-uniform) by Fréchet distance at NFE 20 on the validation
  seed.

**Exactness**: ``sample(invert(x₀, seed), seed)`` on ``--n-rt`` held-out digits for
η ∈ {0.25, 0.5, 0.75, 1} and the drift designs "time", "relation" and "auto" at 20/50/100
steps, for both base configurations on their own grids (float64 state): median and worst
relative error, the latent's ``std(x̄_N)/σ̄_N`` (1 for noise), the predicted ``u·R``, and
the stiff-growth ratio of the relation design to the time design
(:meth:`lmsolvers.StochasticMethod.stiff_growth`).

**The constant** ``STIFF_WARN`` (drift "auto" takes "relation" below it): on the validation
seed, the Fréchet distance of the relation and time designs at each (η, N) next to their
stiff-growth ratio.

Writes ``stochastic_digits.md``/``.json`` under ``--out``.
Usage: ``.venv/bin/python -m benchmarks.stochastic_digits [--quick]`` (about 30 min).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from lmsolvers.adapters.diffusers import alphas_cumprod_from_config, default_design, default_method
from scipy import stats

import lmsolvers as L
from lmsolvers.griddesign import design_schedule_grid
from lmsolvers.stochastic import STIFF_WARN, StochasticStabilityWarning

from . import samplers as S
from .digits_bench import DigitsODE, features, frechet
from .digits_classifier import load_classifier
from .digits_data import REPO_ROOT, load_digits_split
from .stochastic_toy import check_sde_dpmpp, sde_dpmpp_2m
from .tables import markdown_table

BUDGETS = (20, 50, 100)
#: disjoint sample blocks of the Fréchet distance's t-interval
FD_BLOCKS = 4
PEER_FAMILIES = ("trailing", "karras-7", "log-uniform")
RT_ETAS = (0.25, 0.5, 0.75, 1.0)
SHAPE = (1, 8, 8)


def default_grid(ac: np.ndarray, n: int) -> L.Grid:
    """O-BELM-landing's designed grid for ``n`` steps."""
    return design_schedule_grid(L.obelm_landing(0.1), n, ac).grid


def base_and_grid(base: str, ac: np.ndarray, n: int) -> tuple[object, L.Grid]:
    """``(method, grid)`` of a base configuration: ``"obelm-landing"`` (O-BELM with the
    damped landing on its designed grid) or ``"default"`` (the library's default exact
    configuration for ``n`` steps: an exponential BELM on its λ-warped grid)."""
    if base == "default":
        return default_method(n), default_design(n, ac).grid
    return L.obelm_landing(0.1), default_grid(ac, n)


def samplers() -> list[dict]:
    """The table's samplers: name, kind ("core"/"dpm2m"/"sde-dpm2m"), method, grid rule."""
    base = L.obelm_landing(0.1)
    return [
        {"name": "ODE: ours, O-BELM-landing", "kind": "core", "method": base,
         "grid": "designed"},
        {"name": "ODE: DPM-Solver++(2M)", "kind": "dpm2m", "grid": "peer"},
        {"name": "ours, O-BELM-landing, η = 0.5", "kind": "core",
         "method": L.stochastic(base, 0.5), "grid": "designed"},
        {"name": "ours, O-BELM-landing, η = 1", "kind": "core",
         "method": L.stochastic(base, 1.0), "grid": "designed"},
        {"name": "ODE: ours, default (exponential BELM)", "kind": "default", "eta": 0.0,
         "grid": "default"},
        {"name": "ours, default, η = 0.5", "kind": "default", "eta": 0.5, "grid": "default"},
        {"name": "ours, default, η = 1", "kind": "default", "eta": 1.0, "grid": "default"},
        {"name": "DDIM-η, η = 0.5", "kind": "core", "method": L.stochastic(L.ddim(), 0.5),
         "grid": "peer"},
        {"name": "DDPM (DDIM-η, η = 1)", "kind": "core", "method": L.stochastic(L.ddim(), 1.0),
         "grid": "peer"},
        {"name": "SDE-DPM-Solver++(2M), η = 1", "kind": "sde-dpm2m", "grid": "peer"},
    ]


def _noise(n: int, seed: int, sigma_max: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g, dtype=torch.float64) * float(
        np.sqrt(1.0 + sigma_max**2))  # x̄_N = x_N/α_N with x_N ~ N(0, I)


def run_sampler(sm: dict, ode: DigitsODE, sigma_bar: np.ndarray, x: torch.Tensor,
                seed: int) -> torch.Tensor:
    """x̄₀ of one sampler on the σ̄ nodes ``sigma_bar``."""
    if sm["kind"] == "default":  # the method of the grid's size
        m = default_method(len(sigma_bar) - 1)
        sm = {"kind": "core", "method": L.stochastic(m, sm["eta"]) if sm["eta"] else m}
    if sm["kind"] == "core":
        kw = {"seed": seed} if isinstance(sm["method"], L.StochasticMethod) else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StochasticStabilityWarning)
            return L.sample(ode, L.Grid(sigma_bar), sm["method"], x, disable=True, **kw)
    if sm["kind"] == "dpm2m":
        spec = S.SamplerSpec("DPM-Solver++(2M)", "dpm", order=2)
        return S.peer_solve(spec, sigma_bar, x, ode, ode.ddpm_config)[0]
    return sde_dpmpp_2m(ode, sigma_bar, x, seed)


@torch.no_grad()
def quality(clf: torch.nn.Module, x0: torch.Tensor, f_ref: np.ndarray, idx: np.ndarray
            ) -> dict:
    """Confidence and entropy of samples ``x0`` (image space) with percentile-bootstrap
    intervals; the Fréchet distance of all of them and, with a t-interval, of blocks."""
    img = x0.clamp(-1, 1).float()
    p = torch.softmax(clf(img), -1).double().numpy()
    conf = p.max(1)
    ent = -(p * np.log(np.clip(p, 1e-300, None))).sum(1)
    feats = features(clf, img)
    # a bootstrap resample duplicates samples, which biases a Fréchet distance upwards (the
    # percentile interval then misses the estimate): the interval is instead a t-interval
    # over FD_BLOCKS disjoint blocks of i.i.d. samples (of the FD at the block's size)
    blocks = [frechet(feats[b], f_ref) for b in np.array_split(np.arange(len(feats)),
                                                                FD_BLOCKS)]
    half = float(stats.t.ppf(0.975, FD_BLOCKS - 1) * np.std(blocks, ddof=1)
                 / np.sqrt(FD_BLOCKS))
    out = {"fd": frechet(feats, f_ref), "fd_block": float(np.mean(blocks)),
           "fd_block_half": half}
    for key, v in (("conf", conf), ("entropy", ent)):
        lo, hi = S.bootstrap_ci(v, lambda a: a.mean(axis=-1), idx)
        out.update({key: float(v.mean()), f"{key}_lo": lo, f"{key}_hi": hi})
    return out


def grid_of(sm: dict, family: str | None, ac: np.ndarray, sbar_table: np.ndarray,
            n: int) -> np.ndarray:
    if sm["grid"] == "designed":
        return default_grid(ac, n).sigma_bar
    if sm["grid"] == "default":
        return default_design(n, ac).grid.sigma_bar
    return S.family_grid(family, n, sbar_table)


def roundtrip(ode: DigitsODE, ac: np.ndarray, x0: torch.Tensor, eta: float, drift: str,
              n: int, seed: int, base: str = "obelm-landing") -> dict:
    method, grid = base_and_grid(base, ac, n)
    m = L.stochastic(method, eta, drift=drift)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            lat = L.invert(ode, grid, m, x0, seed=seed, disable=True)
            rec = L.sample(ode, grid, m, lat, disable=True)
        except L.SolverInstabilityError:  # the inversion overflowed: a row that says so
            lat = None
    if lat is None:
        err, lat_std = np.full(x0.shape[0], np.inf), float("inf")
    else:
        err = ((rec - x0).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)).numpy()
        lat_std = float(lat.x_N.std() / grid.sigma_bar[-1])
    rel = L.stochastic(method, eta, drift="relation")
    tim = L.stochastic(method, eta, drift="time")
    return {"base": base, "method": m.method.name, "eta": eta, "drift": drift, "steps": n,
            "resolved": m.plan(grid).drift,
            "median": float(np.median(err)), "worst": float(err.max()),
            "latent_std": lat_std,
            "predicted": L.predicted_roundtrip_error(m, grid, torch.float64),
            "stiff_ratio": rel.stiff_growth(grid) / tim.stiff_growth(grid)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    p.add_argument("--n", type=int, default=2048, help="samples per sampler (test seed)")
    p.add_argument("--n-val", type=int, default=512, help="samples on the validation seed")
    p.add_argument("--n-rt", type=int, default=64, help="held-out digits of the round trips")
    p.add_argument("--boot", type=int, default=1000)
    p.add_argument("--parts", nargs="+", default=["pilot", "threshold", "quality", "roundtrip"],
                   help="phases to run; the others are taken from --merge-into")
    p.add_argument("--merge-into", type=Path, default=None,
                   help="a record whose phases not run now are kept")
    p.add_argument("--samplers", nargs="+", default=None,
                   help="run only these samplers in the quality phase (the others' rows are "
                   "kept from --merge-into)")
    p.add_argument("--rt-bases", nargs="+", default=["obelm-landing", "default"],
                   help="base configurations of the round trips")
    p.add_argument("--seed", type=int, default=1, help="test seed")
    p.add_argument("--val-seed", type=int, default=0, help="validation seed")
    p.add_argument("--quick", action="store_true", help="a reduced run (the tests')")
    args = p.parse_args(argv)
    if args.quick:
        args.budgets, args.n, args.n_val, args.n_rt = [20], 64, 32, 4
        args.boot = 50
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ode, clf = DigitsODE(), load_classifier()
    ac = alphas_cumprod_from_config(ode.ddpm_config)
    x_test, _ = load_digits_split("test")
    f_ref = features(clf, x_test)
    sigma_max = float(ode.sbar_table[-1])
    log = print
    old = json.loads(args.merge_into.read_text()) if args.merge_into else {}
    parts = set(args.parts)
    missing = {"pilot", "threshold", "quality", "roundtrip"} - parts
    if missing and not old:
        raise SystemExit(f"phases {sorted(missing)} are not run: give --merge-into RECORD")
    iv = S.resample_index(args.n_val, 2, 0)
    # peers' grids: best family by FD at the smallest budget, validation seed
    families: dict[str, str | None] = dict(old.get("families", {}))
    pilot = old.get("pilot", [])
    if "pilot" in parts:
        xv = _noise(args.n_val, args.val_seed, sigma_max)
        families, pilot = {}, []
        for sm in samplers():
            if sm["grid"] != "peer":
                families[sm["name"]] = None
                continue
            best = None
            for fam in PEER_FAMILIES:
                sb = S.family_grid(fam, args.budgets[0], ode.sbar_table)
                out = run_sampler(sm, ode, sb, xv, args.val_seed) * float(
                    1 / np.sqrt(1 + sb[0] ** 2))
                q = quality(clf, out, f_ref, iv)
                pilot.append({"sampler": sm["name"], "family": fam, "fd": q["fd"]})
                if best is None or q["fd"] < best[1]:
                    best = (fam, q["fd"])
            families[sm["name"]] = best[0]
            log(f"{sm['name']}: grid {best[0]} (validation FD {best[1]:.3g})", flush=True)
    # the STIFF_WARN evidence: relation vs time on the validation seed
    threshold = old.get("threshold", [])
    if "threshold" in parts:
        threshold = []
        for n in args.budgets:
            grid = default_grid(ac, n)
            x = _noise(args.n_val, args.val_seed, sigma_max)
            for eta in (0.5, 0.75, 1.0):
                row = {"eta": eta, "steps": n}
                for drift in ("time", "relation"):
                    m = L.stochastic(L.obelm_landing(0.1), eta, drift=drift)
                    row[f"stiff_{drift}"] = m.stiff_growth(grid)
                    out = run_sampler({"kind": "core", "method": m}, ode, grid.sigma_bar, x,
                                      args.val_seed) * float(grid.alphas[0])
                    row[f"fd_{drift}"] = quality(clf, out, f_ref, iv)["fd"]
                row["ratio"] = row["stiff_relation"] / row["stiff_time"]
                threshold.append(row)
                log(f"threshold: η {eta} N {n}: ratio {row['ratio']:.3g}, FD time "
                    f"{row['fd_time']:.3g} relation {row['fd_relation']:.3g}", flush=True)
    # quality on the test seed
    rows = old.get("rows", [])
    if "quality" in parts:
        idx = S.resample_index(args.n, args.boot, 7)
        rows = [r for r in rows if args.samplers is not None and r["sampler"] not in
                args.samplers]
        for n in args.budgets:
            x = _noise(args.n, args.seed, sigma_max)
            for sm in samplers():
                if args.samplers is not None and sm["name"] not in args.samplers:
                    continue
                sb = grid_of(sm, families.get(sm["name"]), ac, ode.sbar_table, n)
                t1 = time.perf_counter()
                out = run_sampler(sm, ode, sb, x, args.seed) * float(
                    1 / np.sqrt(1 + sb[0] ** 2))
                q = quality(clf, out, f_ref, idx)
                q.update(sampler=sm["name"], nfe=n, seconds=time.perf_counter() - t1,
                         grid=families.get(sm["name"]) or sm["grid"])
                rows.append(q)
                log(f"NFE {n} {sm['name']}: FD {q['fd']:.3g} conf {q['conf']:.3f} entropy "
                    f"{q['entropy']:.3f} ({q['seconds']:.0f}s)", flush=True)
    # exactness
    rts = old.get("roundtrip", [])
    if "roundtrip" in parts:
        x_ho = x_test[:args.n_rt].double()
        rts = [r for r in rts if r.get("base", "obelm-landing") not in args.rt_bases]
        for base in args.rt_bases:
            for n in args.budgets:
                for eta in RT_ETAS:
                    for drift in ("auto", "time", "relation"):
                        r = roundtrip(ode, ac, x_ho, eta, drift, n, args.seed, base)
                        rts.append(r)
                        log(f"round trip {base} η {eta} {drift} N {n}: median "
                            f"{r['median']:.2e} worst {r['worst']:.2e} latent "
                            f"{r['latent_std']:.3g}", flush=True)
    sb = S.family_grid("trailing", 10, ode.sbar_table)
    check = check_sde_dpmpp(ode, sb, _noise(8, 3, sigma_max), 3, ode.ddpm_config)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("parts", "merge_into")}
    record = {"config": config, "families": families, "pilot": pilot,
              "threshold": threshold, "rows": rows, "roundtrip": rts,
              "stiff_warn": STIFF_WARN, "sde_dpmpp_check": check,
              "seconds": time.perf_counter() - t0 + (old.get("seconds", 0.0) if missing
                                                     else 0.0)}
    (args.out / "stochastic_digits.json").write_text(json.dumps(record, indent=1))
    (args.out / "stochastic_digits.md").write_text(render(record))
    return record


def _ci(r: dict, key: str, fmt: str) -> str:
    return f"{r[key]:{fmt}} [{r[key + '_lo']:{fmt}}, {r[key + '_hi']:{fmt}}]"


def render(rec: dict) -> str:
    cfg = rec["config"]
    budgets = cfg["budgets"]
    names = list(dict.fromkeys(r["sampler"] for r in rec["rows"]))
    out = ["# Stochastic samplers on the digits DDPM (docs/design.md §13)", "",
           f"{cfg['n']} samples per sampler and NFE (test seed {cfg['seed']}); peers' grids "
           f"chosen by Fréchet distance at NFE {budgets[0]} on validation seed "
           f"{cfg['val_seed']} ({cfg['n_val']} samples).  Confidence and entropy: mean [95 % "
           f"percentile-bootstrap interval, {cfg['boot']} resamples].  Fréchet distance in the "
           "classifier's 64-d features to the 360 held-out digits: of all samples, then (in "
           f"parentheses) the mean and 95 % t-interval half-width over {FD_BLOCKS} disjoint "
           f"blocks of {cfg['n'] // FD_BLOCKS} samples — an FD at the smaller size, biased "
           "upwards alike for every sampler (a bootstrap resample would duplicate samples and "
           "bias it further).", ""]
    def fd_cell(r: dict) -> str:
        return f"{r['fd']:.3f} ({r['fd_block']:.2f} ± {r['fd_block_half']:.2f})"

    for title, cell in (("Fréchet distance (lower is better)", fd_cell),
                        ("Mean classifier confidence", lambda r: _ci(r, "conf", ".3f")),
                        ("Mean predictive entropy (nats)", lambda r: _ci(r, "entropy", ".3f"))):
        table = []
        for nm in names:
            by = {r["nfe"]: r for r in rec["rows"] if r["sampler"] == nm}
            table.append([nm, next(iter(by.values()))["grid"]]
                         + [cell(by[b]) if b in by else "–" for b in budgets])
        out += [f"## {title}", "", markdown_table(
            ["sampler", "grid"] + [f"NFE {b}" for b in budgets], table), ""]
    table = [[r.get("method", "obelm-landing(0.1)"), r["eta"],
              r["drift"] + ("" if r["drift"] != "auto" else f" → {r['resolved']}"),
              r["steps"], f"{r['median']:.1e}", f"{r['worst']:.1e}", f"{r['latent_std']:.3g}",
              f"{r['predicted']:.1e}", f"{r['stiff_ratio']:.3g}"] for r in rec["roundtrip"]]
    out += ["## Exact inversion of the stochastic sampler", "",
            f"`sample(invert(x0, seed))` on {cfg['n_rt']} held-out digits, the base method's own "
            "grid, float64 state; latent = std(x̄_N)/σ̄_N (1 for Gaussian noise); predicted = u·R; "
            "stiff ratio = stiff growth of the relation design over the time design.", "",
            markdown_table(["base method", "η", "drift", "steps", "median rel. error", "worst",
                            "latent", "predicted u·R", "stiff ratio"], table), ""]
    table = [[r["eta"], r["steps"], f"{r['ratio']:.3g}", f"{r['fd_time']:.3f}",
              f"{r['fd_relation']:.3f}"] for r in rec["threshold"]]
    out += ["## Choosing STIFF_WARN (validation seed)", "",
            f"Fréchet distance of the two drift designs ({cfg['n_val']} samples, seed "
            f"{cfg['val_seed']}) against their stiff-growth ratio; drift 'auto' takes "
            f"'relation' where the ratio is ≤ STIFF_WARN = {rec['stiff_warn']:g}.", "",
            markdown_table(["η", "steps", "stiff ratio", "FD time", "FD relation"], table),
            "", f"SDE-DPM-Solver++(2M) here vs diffusers' `sde-dpmsolver++` on the same noise "
            f"(10 trailing steps, float32 inside diffusers): relative difference "
            f"{rec['sde_dpmpp_check']:.1e}.", "",
            f"Run time {rec['seconds'] / 60:.1f} min.  Regenerate: "
            "`.venv/bin/python -m benchmarks.stochastic_digits`.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
