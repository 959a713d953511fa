"""Real-model benchmark on the shipped digits DDPM: every sampler at NFE 10/20/50/100.

For each sampler (DDIM, BDIA(0.5), BDIA(1), EDICT(0.93), O-BELM, the designed BELMs when
``lmsolvers.belm`` exists, diffusers' DPM-Solver++(2M)) and NFE budget it measures

* **ODE error**: RMS over pixels of the final sample minus a reference solution of the
  same probability-flow ODE from the same noise.  The reference is O-BELM on the
  1000-step grid (every training timestep); its accuracy is *shown*, not assumed: the
  RMS difference between the 500- and 1000-step solutions is printed next to the table
  (an order-2 method's 1000-step error is about a third of it);
* **Fréchet distance** to the held-out digits in the digits classifier's 64-d feature
  space (samples clamped to [-1, 1]); run-to-run spread from a bootstrap over the
  generated samples and from extra noise seeds at one setting;
* **round-trip error** ``sample(invert(x_0)) − x_0`` on held-out real digits, with the
  solver state in float64 (model fp32) and entirely in float32 (DDIM: the classic
  approximate inversion);
* wall time (per sample, batch run; the machine is shared, so ±30 %) and counted NFE.

All samplers walk the grid of ``DPMSolverMultistepScheduler`` (trailing spacing, final
σ = 0) for their step count; at a budget each gets the most steps that fit it (EDICT
half, RK4-started BELMs fewer).  Writes ``digits_bench.md``, ``digits_bench.json``,
``digits_bench.png`` and one sample grid per sampler under ``--out``.

Usage: ``.venv/bin/python -m benchmarks.digits_bench [--n-fd 512] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from lmsolvers.adapters.diffusers import DiffusersEps, grid_from_scheduler
from scipy import linalg

import lmsolvers as L

from . import samplers as S
from .digits_classifier import DEFAULT_CLASSIFIER_PATH, load_classifier
from .digits_data import REPO_ROOT, load_digits_split, save_image_grid
from .tables import markdown_table

MODEL = REPO_ROOT / "models" / "digits_ddpm"


# ------------------------------------------------------------------------ setup
class DigitsModel:
    """The shipped UNet, its DPM-Solver++ scheduler config, and ε adapters per grid."""

    def __init__(self, model_dir: Path = MODEL):
        self.unet = UNet2DModel.from_pretrained(model_dir).eval()
        ddpm = DDPMScheduler.from_pretrained(model_dir)
        self.config = S.dpm_config(ddpm.config, timestep_spacing="trailing")
        self.scheduler = DPMSolverMultistepScheduler.from_config(self.config)
        self._grids: dict[tuple[int, str], tuple[L.Grid, DiffusersEps]] = {}

    def grid_eps(self, n_steps: int) -> tuple[L.Grid, DiffusersEps]:
        key = (n_steps, "fp32")
        if key not in self._grids:
            grid = grid_from_scheduler(self.scheduler, n_steps)
            self._grids[key] = (grid, DiffusersEps(self.unet, grid, self.scheduler))
        return self._grids[key]

    def dpm_output(self, x: torch.Tensor, t, sigma_bar: float) -> torch.Tensor:
        with torch.no_grad():
            return self.unet(x.float(), t).sample.to(x.dtype)


def sample(dm: DigitsModel, spec: S.SamplerSpec, n_steps: int, x_T: torch.Tensor
           ) -> tuple[torch.Tensor, int]:
    """``(x_0, NFE)`` of one sampler from model-space noise ``x_T`` (float64 state)."""
    if spec.kind == "dpm":
        return S.dpm_solve(dm.config, n_steps, x_T, dm.dpm_output)
    grid, eps = dm.grid_eps(n_steps)
    ce = S.CountingEps(eps)
    xbar0 = L.sample(ce, grid, spec.method, x_T / float(grid.alphas[-1]), disable=True)
    return xbar0 * float(grid.alphas[0]), ce.calls


def sample_chunked(dm, spec, n_steps, x_T, chunk):
    outs, nfe = [], 0
    for i in range(0, x_T.shape[0], chunk):
        o, nfe = sample(dm, spec, n_steps, x_T[i:i + chunk])
        outs.append(o)
    return torch.cat(outs), nfe


def round_trip(dm: DigitsModel, spec: S.SamplerSpec, n_steps: int, x0: torch.Tensor,
               dtype: torch.dtype) -> tuple[float, float]:
    """RMS and max |sample(invert(x_0)) − x_0| with the state (and for fp32 all) in ``dtype``."""
    grid, eps = dm.grid_eps(n_steps)
    xb = x0.to(dtype) / float(grid.alphas[0])
    if not spec.invertible:  # DDIM: its classic approximate inversion
        lat = L.ddim_inversion(eps, grid, xb, disable=True)
    else:
        lat = L.invert(eps, grid, spec.method, xb, disable=True)
    rec = L.sample(eps, grid, spec.method, lat, disable=True) * float(grid.alphas[0])
    d = (rec.double() - x0.double())
    return float(d.pow(2).mean().sqrt()), float(d.abs().max())


def rk4_log_sigma(eps, grid: L.Grid, xbar_N: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Classical RK4 in ``u = log σ̄`` (``dx̄/du = σ̄ ε̄``) from σ̄_N to σ̄_1, then one
    Euler step to σ̄_0 = 0: an independent reference, well conditioned near σ̄ → 0."""
    u0, u1 = math.log(float(grid.sigma_bar[-1])), math.log(float(grid.sigma_bar[1]))
    h = (u1 - u0) / n_steps

    def f(x, u):
        return math.exp(u) * eps(x, math.exp(u))

    x = xbar_N
    for i in range(n_steps):
        u = u0 + i * h
        k1 = f(x, u)
        k2 = f(x + 0.5 * h * k1, u + 0.5 * h)
        k3 = f(x + 0.5 * h * k2, u + 0.5 * h)
        k4 = f(x + h * k3, u + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    s1 = float(grid.sigma_bar[1])
    return x - s1 * eps(x, s1)


def reference_check(dm: DigitsModel, x_T: torch.Tensor, ref: torch.Tensor, ref_steps: int
                    ) -> dict[str, float]:
    """RMS distance of the reference to independent solutions of the same ODE."""
    grid, eps = dm.grid_eps(ref_steps)
    xb = x_T / float(grid.alphas[-1])

    def rms(a):
        return float((a - ref).pow(2).mean().sqrt())

    out = {f"DDIM {ref_steps}": rms(L.sample(eps, grid, L.ddim(), xb, disable=True))}
    for n in (ref_steps // 10, ref_steps // 5):
        out[f"RK4(log σ̄) {n} steps"] = rms(rk4_log_sigma(eps, grid, xb, n))
    return out


# ------------------------------------------------------------------- Fréchet
def frechet(fa: np.ndarray, fb: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets."""
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    covmean = linalg.sqrtm(ca @ cb)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2.0 * covmean))


@torch.no_grad()
def features(clf, x: torch.Tensor) -> np.ndarray:
    return clf.features(x.clamp(-1, 1).float()).double().numpy()


def bootstrap_sd(fa: np.ndarray, fb: np.ndarray, reps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    vals = [frechet(fa[rng.integers(0, len(fa), len(fa))], fb) for _ in range(reps)]
    return float(np.std(vals, ddof=1))


# ----------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 50, 100])
    p.add_argument("--n-fd", type=int, default=512, help="samples per sampler and budget")
    p.add_argument("--n-err", type=int, default=128,
                   help="of those, how many are compared with the reference ODE solution")
    p.add_argument("--ref-steps", type=int, default=1000)
    p.add_argument("--n-rt", type=int, default=64, help="held-out digits for round trips")
    p.add_argument("--extra-seeds", type=int, default=2,
                   help="extra noise seeds for the run-to-run spread (O-BELM and DDIM at 20)")
    p.add_argument("--bootstrap", type=int, default=50)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--samplers", nargs="*", default=None, help="subset of sampler names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="only combine these digits_bench.json records (e.g. a run of extra "
                        "--samplers) into one report under --out")
    return p.parse_args(argv)


def merge(paths: list[Path], out: Path) -> dict:
    """Combine several records (same seed and settings, different samplers) into one report."""
    recs = [json.loads(Path(p).read_text()) for p in paths]
    rec = dict(recs[0])
    for key in ("rows", "seed_rows", "rt_rows"):
        rec[key] = [r for x in recs for r in x[key]]
    for x in recs:
        if "ref_check" in x:
            rec["ref_check"], rec["ref_selfconv"] = x["ref_check"], x["ref_selfconv"]
    rec["belm_ks"] = sorted({k for x in recs for k in x.get("belm_ks", [])})
    rec["elapsed_s"] = sum(x["elapsed_s"] for x in recs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "digits_bench.json").write_text(json.dumps(rec, indent=1, default=str))
    (out / "digits_bench.md").write_text(render_markdown(rec))
    plot(rec, out / "digits_bench.png")
    return rec


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its table, JSON, plot and sample grids; return the record."""
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))
    torch.set_num_threads(args.threads)
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dm = DigitsModel()
    clf = load_classifier(DEFAULT_CLASSIFIER_PATH)
    specs = S.make_specs(names=args.samplers)
    x_test, _ = load_digits_split("test")
    x_train, _ = load_digits_split("train")
    f_test = features(clf, x_test)
    shape = (1, 8, 8)
    gen = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn((args.n_fd, *shape), generator=gen, dtype=torch.float64)
    n_err = min(args.n_err, args.n_fd)

    # reference ODE solution and its self-convergence
    ref_spec = S.SamplerSpec("O-BELM", "lm", L.obelm())
    t0 = time.time()
    ref, _ = sample_chunked(dm, ref_spec, args.ref_steps, x_T[:n_err], args.chunk)
    ref_check = reference_check(dm, x_T[: min(16, n_err)], ref[: min(16, n_err)],
                                args.ref_steps)
    ref_selfconv = max(ref_check.values())
    print(f"reference: O-BELM {args.ref_steps} steps; cross-checks (RMS) {ref_check} "
          f"({time.time() - t0:.0f} s)", flush=True)

    # floor of the Fréchet distance: real training digits vs the held-out digits
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(x_train), size=min(args.n_fd, len(x_train)), replace=False)
    fd_floor = frechet(features(clf, x_train[idx]), f_test)

    rows = []
    for spec in specs:
        for b in args.budgets:
            n = S.steps_for_budget(spec, b)
            if n is None:
                rows.append(dict(sampler=spec.name, budget=b, steps=None))
                continue
            t0 = time.time()
            x0, nfe = sample_chunked(dm, spec, n, x_T, args.chunk)
            wall = time.time() - t0
            err = float((x0[:n_err] - ref).pow(2).mean().sqrt())
            f_gen = features(clf, x0)
            fd = frechet(f_gen, f_test)
            fd_sd = bootstrap_sd(f_gen, f_test, args.bootstrap, args.seed) if args.bootstrap > 1 \
                else float("nan")
            rows.append(dict(sampler=spec.name, budget=b, steps=n, nfe=nfe, err=err, fd=fd,
                             fd_boot_sd=fd_sd, ms_per_sample=1e3 * wall / args.n_fd))
            print(f"{spec.name:18s} NFE {nfe:4d} (steps {n:3d}): err {err:.2e}  FD {fd:.3f} "
                  f"± {fd_sd:.3f}  {wall:.1f} s", flush=True)
            if b == 20 or (b == args.budgets[0] and 20 not in args.budgets):
                save_image_grid(x0[:64].float(), out / f"digits_samples_{_slug(spec.name)}.png",
                                title=f"{spec.name}, NFE {nfe}")

    # run-to-run spread over noise seeds at one setting
    seed_rows = []
    b_seed = 20 if 20 in args.budgets else args.budgets[0]
    for spec in [s for s in specs if s.name in ("O-BELM", "DDIM")]:
        n = S.steps_for_budget(spec, b_seed)
        fds = [next(r["fd"] for r in rows if r["sampler"] == spec.name and r["budget"] == b_seed)]
        for extra in range(1, args.extra_seeds + 1):
            g = torch.Generator().manual_seed(args.seed + 1000 * extra)
            xt = torch.randn((args.n_fd, *shape), generator=g, dtype=torch.float64)
            x0, _ = sample_chunked(dm, spec, n, xt, args.chunk)
            fds.append(frechet(features(clf, x0), f_test))
        seed_rows.append(dict(sampler=spec.name, budget=b_seed, fds=fds,
                              sd=float(np.std(fds, ddof=1)) if len(fds) > 1 else float("nan")))
        print(f"seed spread {spec.name} NFE {b_seed}: {fds}", flush=True)

    # round trips on held-out digits
    x_rt = x_test[: args.n_rt].double()
    rt_rows = []
    for spec in [s for s in specs if s.kind != "dpm"]:
        for b in args.budgets:
            n = S.steps_for_budget(spec, b)
            if n is None:
                continue
            grid, _ = dm.grid_eps(n)
            row = dict(sampler=spec.name + (" (DDIM inversion)" if not spec.invertible else ""),
                       budget=b, steps=n, amplification=float(L.amplification(spec.method, grid))
                       if spec.invertible else 1.0)
            for tag, dt in (("fp64", torch.float64), ("fp32", torch.float32)):
                t0 = time.time()
                try:
                    rms, mx = round_trip(dm, spec, n, x_rt, dt)
                    row[tag] = rms
                    row[tag + "_max"] = mx
                except (ValueError, FloatingPointError) as exc:
                    row[tag] = float("nan")
                    row[tag + "_note"] = str(exc).split(";")[0][:80]
                row[tag + "_s"] = time.time() - t0
            rt_rows.append(row)
            print(f"round trip {row['sampler']:28s} steps {n:3d}: fp64 {row['fp64']:.2e}  "
                  f"fp32 {row['fp32']:.2e}", flush=True)

    record = dict(config=vars(args) | {"out": str(args.out)}, ref_selfconv=ref_selfconv,
                  ref_check=ref_check,
                  ref_steps=args.ref_steps, fd_floor=fd_floor, rows=rows, seed_rows=seed_rows,
                  rt_rows=rt_rows, n_test=len(x_test), elapsed_s=time.time() - t_start,
                  belm_ks=S.available_belm_ks())
    (out / "digits_bench.json").write_text(json.dumps(record, indent=1, default=str))
    (out / "digits_bench.md").write_text(render_markdown(record))
    plot(record, out / "digits_bench.png")
    print(f"wrote {out / 'digits_bench.md'} in {record['elapsed_s']:.0f} s")
    return record


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def _f(v, fmt=".2e") -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)


def render_markdown(rec: dict) -> str:
    """The markdown report of :func:`main`'s record."""
    cfg = rec["config"]
    budgets = cfg["budgets"]
    names = list(dict.fromkeys(r["sampler"] for r in rec["rows"]))
    by = {(r["sampler"], r["budget"]): r for r in rec["rows"]}
    lines = [
        "# Digits DDPM: samplers at equal NFE",
        "",
        f"Model `models/digits_ddpm` (ε-prediction, linear β, 1000 steps), grid of "
        f"DPM-Solver++ (trailing, final σ = 0). {cfg['n_fd']} samples per cell from the same "
        f"noise (seed {cfg['seed']}); float64 solver state, fp32 network.",
        "",
        f"**ODE error**: RMS pixel error (images in [-1, 1]) of the first "
        f"{min(cfg['n_err'], cfg['n_fd'])} samples against O-BELM with {rec['ref_steps']} "
        "steps (every training timestep). Its accuracy, checked on 16 of them against "
        "independent solvers of the same ODE: "
        + ", ".join(f"{k}: {v:.1e}" for k, v in rec.get("ref_check", {}).items())
        + f". Errors below ~{2 * rec['ref_selfconv']:.0e} are therefore not resolved.",
        "",
    ]
    nfe_head = ["sampler", *(f"NFE {b}" for b in budgets)]
    lines.append(markdown_table(
        ["sampler", *(f"NFE {b}: steps" for b in budgets)],
        ([nm, *("—" if by[(nm, b)].get("steps") is None else
                f"{by[(nm, b)]['steps']} (NFE {by[(nm, b)]['nfe']})" for b in budgets)]
         for nm in names)))
    best = {b: min((by[(m, b)]["err"] for m in names if by[(m, b)].get("steps")),
                   default=None) for b in budgets}

    def err_cell(r: dict) -> str:
        s = _f(r.get("err"))
        return f"**{s}**" if r.get("err") is not None and r.get("err") == best[r["budget"]] else s

    lines += ["", "ODE error (RMS vs reference):", "",
              markdown_table(nfe_head, ([nm, *(err_cell(by[(nm, b)]) for b in budgets)]
                                        for nm in names))]
    lines += ["", f"Fréchet distance to the {rec['n_test']} held-out digits (classifier features; "
              f"± bootstrap s.d. over the generated samples; real training digits score "
              f"**{rec['fd_floor']:.3f}**, the floor at this sample size):", "",
              markdown_table(nfe_head, (
                  [nm, *("—" if by[(nm, b)].get("fd") is None else
                         f"{by[(nm, b)]['fd']:.3f} ± {by[(nm, b)]['fd_boot_sd']:.3f}"
                         for b in budgets)] for nm in names))]
    if rec["seed_rows"]:
        lines += ["", "Run-to-run spread over noise seeds (same sampler and NFE, new noise):", ""]
        for s in rec["seed_rows"]:
            lines.append(f"- {s['sampler']} at NFE {s['budget']}: FD "
                         + ", ".join(f"{v:.3f}" for v in s["fds"]) + f" (s.d. {s['sd']:.3f})")
    lines += ["", "Wall time, ms per sample (batched, shared 2-core CPU, ±30 %):", "",
              markdown_table(nfe_head, (
                  [nm, *(_f(by[(nm, b)].get("ms_per_sample"), ".2f") for b in budgets)]
                  for nm in names))]
    rt_names = list(dict.fromkeys(r["sampler"] for r in rec["rt_rows"]))
    rtb = {(r["sampler"], r["budget"]): r for r in rec["rt_rows"]}
    lines += ["", f"Round trip `sample(invert(x_0))` on {cfg['n_rt']} held-out digits: RMS "
              "error, float64 state (fp32 network) / all float32; backward amplification "
              "of the parasitic modes on the grid in brackets:", ""]

    def rt_cell(r: dict | None) -> str:
        if r is None:
            return "—"
        amp = f" [{r['amplification']:.0e}]" if r["amplification"] > 1 else ""
        return f"{_f(r['fp64'])} / {_f(r['fp32'])}{amp}"

    lines.append(markdown_table(nfe_head, ([nm, *(rt_cell(rtb.get((nm, b))) for b in budgets)]
                                           for nm in rt_names)))
    notes = [f"- {r['sampler']} NFE {r['budget']} {t}: {r[t + '_note']}"
             for r in rec["rt_rows"] for t in ("fp64", "fp32") if t + "_note" in r]
    if notes:
        lines += ["", "Failed round trips (— above):", *notes]
    lines += ["", f"Designed BELMs available: {rec['belm_ks'] or 'none (lmsolvers.belm absent)'}."
              f" Run time {rec['elapsed_s'] / 60:.1f} min. Regenerate: "
              "`.venv/bin/python -m benchmarks.digits_bench` (or `make bench`).", ""]
    return "\n".join(lines)


def plot(rec: dict, path: Path) -> None:
    """ODE error and Fréchet distance against NFE, one line per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(dict.fromkeys(r["sampler"] for r in rec["rows"]))
    for nm in names:
        rs = [r for r in rec["rows"] if r["sampler"] == nm and r.get("steps")]
        nfe = [r["nfe"] for r in rs]
        axes[0].loglog(nfe, [r["err"] for r in rs], "o-", label=nm)
        axes[1].errorbar(nfe, [r["fd"] for r in rs], yerr=[r["fd_boot_sd"] for r in rs],
                         fmt="o-", capsize=2, label=nm)
    axes[0].set(xlabel="NFE", ylabel="RMS error vs reference ODE solution",
                title="digits DDPM: ODE error")
    axes[1].axhline(rec["fd_floor"], color="k", ls=":", label="real train digits")
    axes[1].set(xscale="log", yscale="log", xlabel="NFE", ylabel="Fréchet distance (features)",
                title="digits DDPM: Fréchet distance to held-out digits")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
