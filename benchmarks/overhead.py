"""Per-step sampler cost without the network: our O-BELM loop and scheduler pair vs
diffusers' schedulers, and the cost of the model-weights digest of a latent's identity.

ε is a precomputed tensor (no work), the latent 4×64×64 (SD-sized), float32, one
thread.  Reports microseconds per step and the ratio to ``DDIMScheduler.step`` (and, for
``BELMInverseScheduler.step``, to ``DDIMInverseScheduler.step``).  The scheduler loops run
as a pipeline runs them (``set_timesteps`` once, then one run after another, each from
``timesteps[0]``), so a run's start — the x_T hand-off's look-up — is in the per-step
figure.  The weights digest (:func:`lmsolvers.adapters.weights.weights_digest`) is timed
on the digits UNet and the tiny SD UNet: the first call hashes every parameter, later
calls check the parameters' version counters only.
Run: ``.venv/bin/python -m benchmarks.overhead [--steps 50] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DModel,
)
from lmsolvers.adapters import BELMInverseScheduler, BELMScheduler
from lmsolvers.adapters.tiny import tiny_conditional_unet
from lmsolvers.adapters.weights import weights_digest

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


def digest_rows(repeats: int = 20) -> list[list[str]]:
    """The weights digest's cost on the digits UNet and the tiny SD UNet: a fresh model
    object per first-call sample (the cache is per object), then the cached call."""
    out = []
    for name, make in [("digits UNet (models/digits_ddpm)",
                        lambda: UNet2DModel.from_pretrained(REPO_ROOT / "models" / "digits_ddpm")),
                       ("tiny SD UNet (lmsolvers.adapters.tiny)", tiny_conditional_unet)]:
        models = [make() for _ in range(5)]
        first = min(best_of_once(lambda m=m: weights_digest(m)) for m in models)
        later = best_of(lambda m=models[0]: weights_digest(m), repeats)
        size = sum(p.numel() for p in models[0].parameters())
        out.append([name, f"{size:,}", f"{first * 1e3:.2f}", f"{later * 1e6:.0f}"])
    return out


def best_of_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


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

    def scheduler_loop(sched):
        sched.set_timesteps(n)

        def run():
            y = x
            for t in sched.timesteps:
                y = sched.step(e, t, y).prev_sample
        return run

    for label, cls in [("diffusers DDIMScheduler.step", DDIMScheduler),
                       ("lmsolvers BELMScheduler.step (O-BELM)", BELMScheduler),
                       ("diffusers DDIMInverseScheduler.step", DDIMInverseScheduler),
                       ("lmsolvers BELMInverseScheduler.step (O-BELM)", BELMInverseScheduler)]:
        rows[label] = best_of(scheduler_loop(cls(**SD)), args.repeats) / n
    # what the float64 state costs (a float32 state is not exact through fp16/fp32 models)
    rows["lmsolvers BELMInverseScheduler.step (O-BELM, state_dtype float32)"] = best_of(
        scheduler_loop(BELMInverseScheduler(**SD, state_dtype="float32")), args.repeats) / n
    dpm = DPMSolverMultistepScheduler(**{k: v for k, v in SD.items()
                                         if k != "set_alpha_to_one"})

    def run_dpm():
        dpm.set_timesteps(n)
        y = x
        for t in dpm.timesteps:
            y = dpm.step(e, t, y).prev_sample

    rows["diffusers DPMSolverMultistepScheduler.step"] = best_of(run_dpm, args.repeats) / n
    ref = rows["diffusers DDIMScheduler.step"]
    ref_inv = rows["diffusers DDIMInverseScheduler.step"]

    def ratio(k: str, v: float) -> str:
        inverse = "Inverse" in k
        return f"{v / (ref_inv if inverse else ref):.2f}" + (" (to DDIMInverse)" if inverse
                                                              else "")

    lines = [f"Per-step cost without the network: 1×4×64×64 float32, {n} steps, 1 thread, "
             f"best of {args.repeats}.", "",
             markdown_table(["sampler", "µs / step", "ratio to DDIMScheduler.step"],
                            ([k, f"{v * 1e6:.1f}", ratio(k, v)] for k, v in rows.items())),
             "", "Model-weights digest of a latent's identity (`weights_digest`), best of "
             f"{args.repeats}:", "",
             markdown_table(["model", "parameters", "first call (hash) ms",
                             "later calls (version check) µs"], digest_rows())]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
