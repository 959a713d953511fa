# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2 · Exact inversion of a trained diffusion model
#
# This notebook uses the small DDPM that ships with the repository (`models/digits_ddpm`, a
# `UNet2DModel` trained on scikit-learn's 8×8 digits, ε-prediction, 1000 training steps) to show the
# library's central claim:
#
# * **sampling** with the default exact method is as cheap as DDIM (one network evaluation per
#   step);
# * **inverting** real, held-out digits with it and sampling back reproduces them to float64
#   round-off (~1e-14), while the classic DDIM inversion drifts visibly;
# * in **bit-exact mode** the round trip is bitwise identical, even in float32.
#
# Everything runs on a CPU in seconds.

# %%
import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from diffusers import DDPMScheduler, UNet2DModel
from lmsolvers.adapters import DiffusionSampler

import lmsolvers as L

# The checkout's root goes on sys.path (the benchmarks package holds the held-out digits
# split): found from this file when run as a script (any working directory), from the
# working directory in a Jupyter kernel (started in the root or in notebooks/).
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
ROOT = next((p for p in (HERE, *HERE.parents) if (p / "benchmarks" / "digits_data.py").is_file()),
            None)
if ROOT is None:
    raise RuntimeError(f"{HERE} is not inside an lmsolvers checkout: start Jupyter in the "
                       "checkout (or run this file with the checkout's .venv/bin/python)")
sys.path.insert(0, str(ROOT))
# One torch thread unless OMP_NUM_THREADS says otherwise: these models are small, and on a
# shared CPU more threads make them slower, not faster (notebook 4: 25 s with one thread,
# 276 s with two, on a busy 2-core machine; README, "Notebooks").
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)
print(f"torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS="
      f"{os.environ.get('OMP_NUM_THREADS', 'unset')})")
from benchmarks.digits_data import load_digits_split  # held-out real digits (as make demo)

torch.manual_seed(0)
unet = UNet2DModel.from_pretrained(ROOT / "models" / "digits_ddpm").eval()
scheduler = DDPMScheduler.from_pretrained(ROOT / "models" / "digits_ddpm")
print(scheduler.config.prediction_type, scheduler.config.num_train_timesteps,
      scheduler.config.beta_schedule)


def show(rows, titles, figsize=None):
    # rows of (n, 1, 8, 8) tensors in [-1, 1]
    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=figsize or (n * 0.7, len(rows) * 0.8))
    for r, (imgs, title) in enumerate(zip(rows, titles, strict=True)):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(imgs[c, 0].detach().float().clamp(-1, 1), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    plt.show()


# %% [markdown]
# ## Sampling
#
# `DiffusionSampler(unet, scheduler, N)` runs the library's default exact configuration: an
# exponential BELM in data-prediction variables (ebelm3 below 20 steps, ebelm5 from 20) on a
# grid of N integer timesteps spaced in log σ̄ (docs/design.md §12). The solver state is
# float64; the network sees `α x̄` cast to its own dtype (float32).

# %%
N = 20
sampler = DiffusionSampler(unet, scheduler, N, disable_progress=True)
print(sampler.grid)
x_T = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
samples = sampler.sample(x_T)
ddim_sampler = DiffusionSampler(unet, scheduler, N, method=L.ddim(), disable_progress=True)
ddim_samples = ddim_sampler.sample(x_T)
show([samples, ddim_samples], [f"default ({sampler.method.name})", "DDIM"])

# %% [markdown]
# ## Inverting real digits
#
# Take eight digits from the held-out test split (never seen in training). Exact inversion returns
# a `Latent`: the **k noisiest states** of the trajectory (k = 5 for the default at 20 steps,
# `ebelm5`). Sampling from that latent runs the
# very same linear relation backwards, so it reproduces the input. DDIM has no exact inverse; its
# classic inversion (explicit Euler run *upwards*, `L.ddim_inversion`) evaluates ε at the lower
# node where sampling uses the upper one, a different relation, and the reconstruction drifts.

# %%
x_test, y_test = load_digits_split("test")
x0 = x_test[:8].double()
print("labels:", y_test[:8].tolist())

latent = sampler.invert(x0)
print(type(latent).__name__, "with", latent.k, "states of shape", tuple(latent.x_N.shape))
rec_exact = sampler.sample(latent)

a0 = float(sampler.grid.alphas[0])  # = 1 here: the grid ends on the clean image
lat_ddim = L.ddim_inversion(sampler.eps, sampler.grid, x0 / a0, disable=True)
rec_ddim = L.sample(sampler.eps, sampler.grid, L.ddim(), lat_ddim, disable=True) * a0

print(f"max |error|  exact ({sampler.method.name}): {float((rec_exact - x0).abs().max()):.1e}   "
      f"DDIM inversion: {float((rec_ddim - x0).abs().max()):.2f}")
show([x0, rec_ddim, (rec_ddim - x0).abs() * 2 - 1, rec_exact, (rec_exact - x0).abs() * 2 - 1],
     ["real", "DDIM rec.", "|DDIM err|", "exact rec.", "|exact err|"])

# %% [markdown]
# The exact error map is blank: the reconstruction is the input to ~1e-14. Restarting from the
# noisiest state `x_N` alone is *not* the inverse: the other states of the latent matter
# (sampling from `x_N` alone computes them with the starter instead), and from a real digit's
# latent the difference is visible. The latent itself is noise-like: its standard deviation is
# close to the exact flow's own inversion of these digits (about 1.2 times that of Gaussian
# noise for this small model; docs/design.md §12 on why BELM latents can be far from it).

# %%
x_T_inv = sampler.noise_of(latent)
from_x_N_only = sampler.sample(x_T_inv)
print(f"from the full latent: {float((rec_exact - x0).abs().max()):.1e}   "
      f"from x_N alone: {float((from_x_N_only - x0).abs().max()):.1f}")
print(f"std of the inverted noise x_T: {float(x_T_inv.std()):.2f} (Gaussian noise: 1)")

# %% [markdown]
# ## Drift versus exactness, in numbers
#
# More steps shrink DDIM inversion's drift (it is an O(h) error), but never to zero; the exact
# sampler's reconstruction error stays at float64 round-off for every step count. The last column
# is the method's backward amplification on its grid (`L.amplification`): how much a round-off
# made during inversion can grow, relative to the solution, from nodes to noise.

# %%
rows = []
for n in (10, 20, 50):
    s = DiffusionSampler(unet, scheduler, n, disable_progress=True)
    e_belm = float((s.reconstruct(x0) - x0).abs().max())
    ld = L.ddim_inversion(s.eps, s.grid, x0, disable=True)
    rd = L.sample(s.eps, s.grid, L.ddim(), ld, disable=True)
    rows.append((n, float((rd - x0).pow(2).mean()), float((rd - x0).abs().max()), e_belm,
                 L.amplification(s.method, s.grid)))
print(f"{'steps':>5} | {'DDIM MSE':>9} | {'DDIM max':>9} | {'exact max':>10} | amplification")
for n, mse, mx, eb, amp in rows:
    print(f"{n:>5} | {mse:9.2e} | {mx:9.2e} | {eb:10.1e} | {amp:.1e}")

fig, ax = plt.subplots(figsize=(4, 2.6))
ax.semilogy([r[0] for r in rows], [r[2] for r in rows], "o-", label="DDIM inversion")
ax.semilogy([r[0] for r in rows], [r[3] for r in rows], "s-", label="exact (default)")
ax.set_xlabel("steps")
ax.set_ylabel("max |reconstruction error|")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Round-off and bit-exact mode
#
# "Exact" inversion is exact up to round-off, and the round-off of the inversion is amplified by the
# grid (the amplification column above). With a float32 state the round trip errs by ~1e-6; with
# float64 by ~1e-14. `bitexact=True` removes even that: the states are held as integers on a
# fixed-point grid and each step adds a *rounded* increment that depends only on states known in
# both directions; integer addition is exactly invertible, so the round trip is **bitwise**
# identical (see `docs/bitexact.md`). Here the core API is used directly on the σ̄-ODE
# `sampler.eps` with a float32 state.

# %%
grid, eps = sampler.grid, sampler.eps
x0_32 = (x0 / a0).float()

lat32 = L.invert(eps, grid, L.obelm(), x0_32, disable=True)
rec32 = L.sample(eps, grid, L.obelm(), lat32, disable=True)
lat64 = L.invert(eps, grid, L.obelm(), x0_32.double(), disable=True)
rec64 = L.sample(eps, grid, L.obelm(), lat64, disable=True)
latbx = L.invert(eps, grid, L.obelm(), x0_32, bitexact=True, disable=True)
recbx = L.sample(eps, grid, L.obelm(), latbx, bitexact=True, disable=True)

print(f"float32 state : max |error| = {float((rec32 - x0_32).abs().max()):.1e}")
print(f"float64 state : max |error| = {float((rec64 - x0_32.double()).abs().max()):.1e}")
print(f"bit-exact fp32: bitwise equal = {torch.equal(recbx, x0_32)}  ({recbx.dtype})")
assert torch.equal(recbx, x0_32)

# %% [markdown]
# The digits are multiples of 1/8 in [−1, 1], so they lie on the fixed-point grid and come back
# exactly; in general the bit-exact round trip returns the fixed-point image of the input, within
# half a quantum of it (≈ 7e-9 in float32).
#
# ## The same through other BELMs
#
# BDIA(γ) is also a BELM, but its inversion divides by $a_{i,2} = \gamma\,\alpha_{i+1}/\alpha_{i-1}$
# at every step, so round-off grows with the amplification. EDICT is exactly invertible too, at two
# network evaluations per step.

# %%
for m in (L.obelm(), L.bdia(0.9), L.bdia(0.5), L.edict(0.93)):
    s = DiffusionSampler(unet, scheduler, N, method=m, disable_progress=True)
    err = float((s.reconstruct(x0) - x0).abs().max())
    amp = L.amplification(m, s.grid) if isinstance(m, L.LMMethod) else float("nan")
    print(f"{m.name:>12}: max |error| {err:.1e}   amplification {amp:.1e}")
