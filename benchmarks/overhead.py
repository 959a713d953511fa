"""Per-step sampler cost without the network: our O-BELM loop vs diffusers' schedulers.

ε is a precomputed tensor (no work), the latent 4×64×64 (SD-sized), float32, one
thread.  Reports microseconds per step and the ratio to ``DDIMScheduler.step``.
Run: ``.venv/bin/python -m benchmarks.overhead [--steps 50] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

import lmsolvers as L
from lmsolvers.grid import alphas_cumprod_from_betas, scaled_linear_betas, spaced_timesteps

from .tables import markdown_table

REPO_ROOT = Path(__file__).resolve().parents[1]

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
          beta_schedule="scaled_linear", steps_offset=1, set_alpha_to_one=False)


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> str:
    """Measure, print and write the table; return its text."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=20)
    # anchored at the checkout, not the working directory, like the other benchmarks
    ap.add_argument("--out", type=Path,
                    default=REPO_ROOT / "benchmarks" / "results" / "overhead.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    n = args.steps
    x = torch.randn(1, 4, 64, 64)
    e = torch.randn_like(x)

    ac = alphas_cumprod_from_betas(scaled_linear_betas())
    grid = L.Grid.from_alphas_cumprod(ac, spaced_timesteps(n, 1000, "leading", 1),
                                      final_alpha_cumprod=float(ac[0]))

    def eps(xb, s):
        return e

    rows = {}
    for name, m in [("lmsolvers O-BELM", L.obelm()), ("lmsolvers DDIM", L.ddim())]:
        for check in (True, False):
            label = name + ("" if check else " (check_finite=False)")
            rows[label] = best_of(lambda m=m, c=check: L.sample(
                eps, grid, m, x, disable=True, check_finite=c), args.repeats) / n

    ddim = DDIMScheduler(**SD)
    ddim.set_timesteps(n)

    def run_ddim():
        y = x
        for t in ddim.timesteps:
            y = ddim.step(e, t, y).prev_sample

    rows["diffusers DDIMScheduler.step"] = best_of(run_ddim, args.repeats) / n
    dpm = DPMSolverMultistepScheduler(**{k: v for k, v in SD.items()
                                         if k != "set_alpha_to_one"})

    def run_dpm():
        dpm.set_timesteps(n)
        y = x
        for t in dpm.timesteps:
            y = dpm.step(e, t, y).prev_sample

    rows["diffusers DPMSolverMultistepScheduler.step"] = best_of(run_dpm, args.repeats) / n
    ref = rows["diffusers DDIMScheduler.step"]
    lines = [f"Per-step cost without the network: 1×4×64×64 float32, {n} steps, 1 thread, "
             f"best of {args.repeats}.", "",
             markdown_table(["sampler", "µs / step", "ratio to DDIMScheduler.step"],
                            ([k, f"{v * 1e6:.1f}", f"{v / ref:.2f}"] for k, v in rows.items()))]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
