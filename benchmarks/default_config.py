"""The default exact configuration of ``DiffusionSampler`` against DPM-Solver++(2M) (issue 10).

On the shipped digits DDPM (``models/digits_ddpm``), from the same seeded noises:

* **ours**: ``DiffusionSampler(unet, scheduler, n)`` with its defaults — the designed grid
  (:func:`lmsolvers.griddesign.design_schedule_grid`) and O-BELM with a damped landing
  step (:func:`lmsolvers.families.obelm_landing`); float64 state, n network evaluations;
* **DPM-Solver++(2M)**: diffusers' ``DPMSolverMultistepScheduler`` (trailing,
  ``final_sigmas_type="zero"``, ``algorithm_type="dpmsolver++"``, order 2,
  ``lower_order_final``), fed the same UNet;
* for context, O-BELM on the trailing grid (the scheduler spacing), and once the designed
  k-step BELMs ``lmsolvers.belm(3..5)`` at NFE 20/50 on the trailing grid.

**Reference**: classical RK4 in ``log σ̄`` (``benchmarks.digits_bench.rk4_log_sigma``,
log-uniform nodes from σ̄(t = 999) to σ̄(t = 0), ε between training timesteps from
:class:`~lmsolvers.adapters.diffusers.DiffusersEps` on the full timestep table), then the
step from σ̄(t = 0) to σ̄ = 0 with a frozen data prediction, ``x̄_0 = x̄ − σ̄ ε̄`` (the flow
below the least noisy training level; DPM-Solver++'s last step is the same).  Its
self-convergence (``--ref-steps`` against twice as many) is printed and must be ≤ 1e-5.

**Error** of a sample: RMS over its 64 pixels against the reference.  Reported: median and
RMS over the samples, each with a 95 % percentile-bootstrap interval.  Also the round trip
``sample(invert(x_0))`` of the default on held-out digits (relative error, float64 state)
with its backward amplification.

Usage::

    .venv/bin/python -m benchmarks.default_config            # 512 samples, writes the table
    .venv/bin/python -m benchmarks.default_config --table    # re-print the saved table

The reference is cached under ``out/default_config/`` (keyed by seed, count and steps).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from lmsolvers.adapters.diffusers import DiffusersEps, DiffusionSampler, grid_from_scheduler

import lmsolvers as L
from lmsolvers.engine import CountingEps

from .digits_bench import rk4_log_sigma
from .digits_data import REPO_ROOT, load_digits_split
from .tables import markdown_table

MODEL = REPO_ROOT / "models" / "digits_ddpm"
CACHE = REPO_ROOT / "out" / "default_config"
RESULTS = REPO_ROOT / "benchmarks" / "results"
SHAPE = (1, 8, 8)


# ------------------------------------------------------------------ the model
class Digits:
    """The UNet, its DDPM scheduler, DPM-Solver++'s config and ε on the full timestep table."""

    def __init__(self, model_dir: Path = MODEL) -> None:
        self.unet = UNet2DModel.from_pretrained(model_dir).eval()
        self.scheduler = DDPMScheduler.from_pretrained(model_dir)
        cfg = {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}
        cfg.update(algorithm_type="dpmsolver++", solver_order=2, prediction_type="epsilon",
                   final_sigmas_type="zero", lower_order_final=True,
                   timestep_spacing="trailing")
        self.dpm_config = cfg
        T = int(cfg["num_train_timesteps"])
        ac = self.scheduler.alphas_cumprod.double().numpy()
        self.full = L.Grid.from_alphas_cumprod(ac, np.arange(T), final_alpha_cumprod=1.0)
        self.eps_full = DiffusersEps(self.unet, self.full, self.scheduler)

    def model_eps(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        with torch.no_grad():
            return self.unet(x.float(), t).sample.to(x.dtype)


def noise(n: int, seed: int) -> torch.Tensor:
    """``n`` model-space noises ``x_T`` (float64), seeded."""
    return torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def chunks(x: torch.Tensor, size: int):
    for i in range(0, x.shape[0], size):
        yield x[i:i + size]


# ------------------------------------------------------------------ reference
def reference(dm: Digits, x_T: torch.Tensor, steps: int) -> torch.Tensor:
    """RK4 in log σ̄ with ``steps`` log-uniform steps down to σ̄(t = 0), then the frozen
    data-prediction step to σ̄ = 0 (module docstring).  Model-space ``x_0``."""
    s = dm.full.sigma_bar
    nodes = np.linspace(math.log(s[-1]), math.log(s[1]), steps + 1)
    xbar, _ = rk4_log_sigma(dm.eps_full, nodes, x_T / float(dm.full.alphas[-1]), tail_steps=0)
    s1 = float(s[1])
    return xbar - s1 * dm.eps_full(xbar, s1)


def cached_reference(dm: Digits, x_T: torch.Tensor, seed: int, steps: int,
                     chunk: int) -> torch.Tensor:
    path = CACHE / f"reference_seed{seed}_n{x_T.shape[0]}_rk4log{steps}.pt"
    if path.exists():
        return torch.load(path)
    CACHE.mkdir(parents=True, exist_ok=True)
    out = []
    for i, xc in enumerate(chunks(x_T, chunk)):
        t0 = time.time()
        out.append(reference(dm, xc, steps))
        print(f"  reference chunk {i}: {time.time() - t0:.0f} s", flush=True)
    ref = torch.cat(out)
    torch.save(ref, path)
    return ref


# ------------------------------------------------------------------- samplers
def run_default(dm: Digits, n: int, x_T: torch.Tensor, chunk: int) -> tuple[torch.Tensor, int]:
    """``DiffusionSampler(unet, scheduler, n)`` with its defaults; ``(x_0, counted NFE)``."""
    s = DiffusionSampler(dm.unet, dm.scheduler, n, disable_progress=True)
    nfe = [0]

    def cb(info: dict) -> None:
        nfe[0] = max(nfe[0], info["nfev"])

    return torch.cat([s.sample(xc, callback=cb) for xc in chunks(x_T, chunk)]), nfe[0]


def run_dpm(dm: Digits, n: int, x_T: torch.Tensor) -> tuple[torch.Tensor, int]:
    """diffusers' DPM-Solver++(2M) loop (its step casts the sample to float32)."""
    sched = DPMSolverMultistepScheduler.from_config(dm.dpm_config)
    sched.set_timesteps(n)
    x, nfe = x_T, 0
    for t in sched.timesteps:
        x = sched.step(dm.model_eps(x, t), t, x).prev_sample
        nfe += 1
    return x.double(), nfe


def run_lm(dm: Digits, method: Any, n: int, x_T: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A core method on the scheduler's trailing grid of n steps; ``(x_0, counted NFE)``."""
    grid = grid_from_scheduler(DPMSolverMultistepScheduler.from_config(dm.dpm_config), n)
    ce = CountingEps(DiffusersEps(dm.unet, grid, dm.scheduler))
    xb = L.sample(ce, grid, method, x_T / float(grid.alphas[-1]), disable=True)
    return xb * float(grid.alphas[0]), ce.calls


def steps_within(method: Any, budget: int) -> int:
    """Most steps whose counted NFE fits ``budget`` (an RK4 starter costs 3 extra per step)."""
    extra = 3 * (method.k - 1) if getattr(method, "starter", "ddim") == "rk4" else 0
    return budget - extra


# --------------------------------------------------------------- statistics
def per_sample(x: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    return (x.double() - ref.double()).pow(2).flatten(1).mean(1).sqrt().numpy()


def bootstrap(err: np.ndarray, reps: int, seed: int) -> dict[str, float]:
    """Median and RMS of ``err`` with 95 % percentile-bootstrap intervals."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, err.size, size=(reps, err.size))
    boot = err[idx]
    med, rms = np.median(boot, axis=1), np.sqrt(np.mean(boot**2, axis=1))
    out = {"median": float(np.median(err)), "rms": float(np.sqrt(np.mean(err**2)))}
    for k, v in (("median", med), ("rms", rms)):
        out[k + "_lo"], out[k + "_hi"] = (float(q) for q in np.percentile(v, [2.5, 97.5]))
    out["max"] = float(err.max()) if np.all(np.isfinite(err)) else float("inf")
    return out


# ----------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512, help="seeded noises")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 50, 100])
    p.add_argument("--ref-steps", type=int, default=1000)
    p.add_argument("--n-check", type=int, default=32,
                   help="samples for the reference's self-convergence (2×ref-steps)")
    p.add_argument("--n-rt", type=int, default=32, help="held-out digits for round trips")
    p.add_argument("--n-belm", type=int, default=64, help="samples for the BELM(3..5) check")
    p.add_argument("--boot", type=int, default=2000)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--table", action="store_true", help="only re-print the saved table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison, write ``default_config.{json,md}`` and print the table."""
    args = parse_args(argv)
    if args.table:
        rec = json.loads((args.out / "default_config.json").read_text())
        print(render(rec))
        return rec
    torch.set_num_threads(args.threads)
    t_start = time.time()
    dm = Digits()
    x_T = noise(args.n, args.seed)

    ref = cached_reference(dm, x_T, args.seed, args.ref_steps, args.chunk)
    n_chk = min(args.n_check, args.n)
    fine = reference(dm, x_T[:n_chk], 2 * args.ref_steps)
    d = per_sample(ref[:n_chk], fine)
    selfconv = {"steps": args.ref_steps, "check_steps": 2 * args.ref_steps, "n": n_chk,
                "rms": float(np.sqrt(np.mean(d**2))), "max": float(d.max())}
    print(f"reference self-convergence: RMS {selfconv['rms']:.1e}, max {selfconv['max']:.1e}",
          flush=True)

    rows = []
    for b in args.budgets:
        for name, fn in (("ours (default)", lambda b=b: run_default(dm, b, x_T, args.chunk)),
                         ("DPM-Solver++(2M)", lambda b=b: run_dpm(dm, b, x_T)),
                         ("O-BELM, trailing grid", lambda b=b: run_lm(dm, L.obelm(), b, x_T))):
            t0 = time.time()
            x0, nfe = fn()
            st = bootstrap(per_sample(x0, ref), args.boot, args.seed)
            rows.append({"sampler": name, "budget": b, "nfe": nfe, **st,
                         "wall_s": time.time() - t0})
            print(f"{name:22s} NFE {nfe:3d}: median {st['median']:.2e} "
                  f"[{st['median_lo']:.2e}, {st['median_hi']:.2e}]  RMS {st['rms']:.2e} "
                  f"[{st['rms_lo']:.2e}, {st['rms_hi']:.2e}]", flush=True)

    # round trips and amplification of the default
    x_test, _ = load_digits_split("test")
    x0 = x_test[: args.n_rt].double()
    rts = []
    for b in args.budgets:
        s = DiffusionSampler(dm.unet, dm.scheduler, b, disable_progress=True)
        rec = s.reconstruct(x0)
        rel = float((rec - x0).norm() / x0.norm())
        worst = float(((rec - x0).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)).max())
        dz = s.design
        rts.append({"budget": b, "rel": rel, "worst": worst, "amplification": s.amplification,
                    "roundoff_amplification": dz.roundoff_amplification,
                    "predicted": L.predicted_roundtrip_error(s.method, s.grid, torch.float64),
                    "timesteps": [int(t) for t in s.grid.timesteps[1:]]})
        print(f"round trip NFE {b}: relative {rel:.1e} (worst sample {worst:.1e}), backward "
              f"amplification {s.amplification:.2e}, predicted ≤ {rts[-1]['predicted']:.1e}",
              flush=True)

    # the designed k-step BELMs once, trailing grid
    belm_rows = []
    xs = x_T[: args.n_belm]
    for k in (3, 4, 5):
        m = L.belm(k)
        for b in (20, 50):
            n = steps_within(m, b)
            try:
                x0k, nfe = run_lm(dm, m, n, xs)
                e = per_sample(x0k, ref[: args.n_belm])
                note = ""
            except (L.SolverInstabilityError, FloatingPointError) as exc:
                e, nfe, note = np.full(xs.shape[0], np.inf), -1, str(exc)[:80]
            belm_rows.append({"k": k, "budget": b, "steps": n, "nfe": nfe,
                              "median": float(np.median(e)),
                              "max": float(np.max(e)), "note": note})
            print(f"BELM-{k} NFE {nfe}: median {np.median(e):.2e} max {np.max(e):.2e} {note}",
                  flush=True)

    rec = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "selfconv": selfconv, "rows": rows, "roundtrip": rts, "belm": belm_rows,
           "elapsed_s": time.time() - t_start}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "default_config.json").write_text(json.dumps(rec, indent=1))
    (args.out / "default_config.md").write_text(render(rec))
    print(render(rec))
    return rec


def _ci(r: dict, key: str) -> str:
    return f"{r[key]:.2e} [{r[key + '_lo']:.2e}, {r[key + '_hi']:.2e}]"


def render(rec: dict) -> str:
    """The markdown report."""
    cfg, sc = rec["config"], rec["selfconv"]
    budgets = sorted({r["budget"] for r in rec["rows"]})
    by = {(r["sampler"], r["budget"]): r for r in rec["rows"]}
    names = list(dict.fromkeys(r["sampler"] for r in rec["rows"]))
    lines = [
        "# Default exact configuration vs DPM-Solver++(2M), digits DDPM",
        "",
        f"{cfg['n']} seeded noises (seed {cfg['seed']}); per-sample RMS error against RK4 in "
        f"log σ̄ ({sc['steps']} steps; vs {sc['check_steps']} steps on {sc['n']} samples: "
        f"RMS {sc['rms']:.1e}, max {sc['max']:.1e}). Cells: value [95 % bootstrap interval, "
        f"{cfg['boot']} resamples].",
        "",
        "Median per-sample error:",
        "",
        markdown_table(["sampler", *(f"NFE {b}" for b in budgets)],
                       ([nm, *(_ci(by[(nm, b)], "median") for b in budgets)] for nm in names)),
        "",
        "RMS over samples of the per-sample error:",
        "",
        markdown_table(["sampler", *(f"NFE {b}" for b in budgets)],
                       ([nm, *(_ci(by[(nm, b)], "rms") for b in budgets)] for nm in names)),
        "",
        "Counted NFE: " + ", ".join(f"{nm} {[by[(nm, b)]['nfe'] for b in budgets]}"
                                    for nm in names) + ".",
        "",
        f"Round trip of the default on {cfg['n_rt']} held-out digits (float64 state):",
        "",
        markdown_table(["NFE", "relative error", "worst sample", "backward amplification",
                        "round-off amplification R", "predicted u·R"],
                       ([r["budget"], f"{r['rel']:.1e}", f"{r['worst']:.1e}",
                         f"{r['amplification']:.2e}", f"{r['roundoff_amplification']:.2e}",
                         f"{r['predicted']:.1e}"] for r in rec["roundtrip"])),
        "",
        f"Designed k-step BELMs on the trailing grid ({cfg['n_belm']} samples), median / "
        "worst per-sample error:",
        "",
        markdown_table(["method", "NFE budget", "steps (NFE)", "median", "worst", "note"],
                       ([f"belm({r['k']})", r["budget"], f"{r['steps']} ({r['nfe']})",
                         f"{r['median']:.2e}", f"{r['max']:.2e}", r["note"] or ""]
                        for r in rec["belm"])),
        "",
        f"Run time {rec['elapsed_s'] / 60:.1f} min. Regenerate: "
        "`.venv/bin/python -m benchmarks.default_config`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
