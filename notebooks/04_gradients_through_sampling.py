# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4 · Gradients through 100 sampling steps, in the memory of a few
#
# An exactly invertible sampler can be differentiated without storing its trajectory: the
# backward pass rebuilds every state by the inverse step and applies that step's
# vector–Jacobian product on the way (`docs/design.md` §10). `sample(..., grad="reversible")`
# does this in O(k) memory; `grad="full"` is plain autograd through the unrolled loop, whose
# graph grows with the number of steps.
#
# The task: take a sample of the digits DDPM (`models/digits_ddpm`), and optimise its
# starting noise so that the digits classifier (`models/digits_classifier`) reads it as a
# chosen digit, while the sample stays close to the original one — through 100 sampling steps.

# %%
import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from diffusers import DDPMScheduler, UNet2DModel
from lmsolvers.adapters import DiffusionSampler

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
from benchmarks.digits_classifier import load_classifier  # the benchmarks' classifier
from benchmarks.reversal_memory import SavedGraph

torch.manual_seed(0)
unet = UNet2DModel.from_pretrained(ROOT / "models" / "digits_ddpm").eval().requires_grad_(False)
scheduler = DDPMScheduler.from_pretrained(ROOT / "models" / "digits_ddpm")
classifier = load_classifier().eval().requires_grad_(False)

# LMSOLVERS_TINY=1 (CI's quick run): 20 sampling steps instead of 100
TINY = os.environ.get("LMSOLVERS_TINY", "") == "1"
N = 20 if TINY else 100
sampler = DiffusionSampler(unet, scheduler, N, disable_progress=True)
print(sampler.method.name, "on a grid of", sampler.grid.N, "steps; backward amplification",
      f"{sampler.amplification:.2g}")

# %% [markdown]
# ## The two gradients agree
#
# First the claim itself, on one noise: the gradient of a loss of the sample with respect to
# the noise, by reversal and by full autograd. With a float64 state they agree to the float32
# network's round-off (~1e-6: the reversal's network evaluations see states that differ from
# the forward run's in the last float64 bits, which float32 rounding can turn into 1e-7).

# %%
x_T = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def noise_gradient(mode):
    x = x_T.clone().requires_grad_()
    out = sampler.sample(x, grad=mode)
    loss = classifier(out.float()).log_softmax(-1)[0, 7]
    (g,) = torch.autograd.grad(loss, [x])
    return g


g_rev, g_full = noise_gradient("reversible"), noise_gradient("full")
print(f"relative difference reversible vs full: "
      f"{float((g_rev - g_full).norm() / g_full.norm()):.1e}")

# %% [markdown]
# ## Memory
#
# What autograd keeps for the backward pass, counted with `saved_tensors_hooks` during the
# forward run: full autograd stores every step's activations; the reversible run stores none
# (the backward pass recomputes one step at a time).

# %%
def saved_bytes(mode):
    x = x_T.clone().requires_grad_()
    with SavedGraph() as saved:  # distinct storages autograd keeps for backward
        sampler.sample(x, grad=mode)
    return saved.bytes


mem = {mode: saved_bytes(mode) / 2**20 for mode in ("full", "reversible")}
print(f"graph kept by the forward pass, {N} steps: full {mem['full']:.1f} MiB, "
      f"reversible {mem['reversible']:.3f} MiB")

# %% [markdown]
# The benchmark `python -m benchmarks.reversal_memory` measures the peak memory of the whole
# forward + backward run for N = 10 … 1000 (`benchmarks/results/reversal_memory.md`): flat
# for `reversible`, linear in N for `full`.
#
# ## Steering a sample to a chosen digit
#
# Loss = cross-entropy of the classifier towards the target digit + the mean squared distance
# to the original sample. As in DOODL, each iteration takes a normalised gradient step on the
# noise and projects it back onto the sphere of the original noise's radius (where Gaussian
# noise of this dimension lives), here with a backtracking line search on the step length;
# every gradient goes through all N sampling steps by reversal. The best iterate (classified
# as the target, closest to the original) is kept.

# %% [markdown]
# To keep the notebook short we steer an *ambiguous* sample: among 256 samples, the one the
# classifier is least sure about, towards its second choice. (A confident sample needs many
# more iterations: its class basin is wide.)

# %%
candidates = torch.randn(256, 1, 8, 8,
                         generator=torch.Generator().manual_seed(0), dtype=torch.float64)
with torch.no_grad():
    probs0 = classifier(sampler.sample(candidates).float()).softmax(-1)
pick = int(probs0.max(-1).values.argmin())
top2 = probs0[pick].topk(2)
x_T, target = candidates[pick:pick + 1], int(top2.indices[1])
with torch.no_grad():
    original = sampler.sample(x_T)
print(f"sample {pick} is read as {int(top2.indices[0])} (p = {float(top2.values[0]):.2f}); "
      f"target {target} (p = {float(top2.values[1]):.2f})")

x = x_T.clone()
radius = x_T.norm()


def project(z):  # back onto the sphere of the original noise's radius
    return z * (radius / z.norm())


def loss_of(out):
    logp = classifier(out.float()).log_softmax(-1)[0]
    return -logp[target] + (out - original).pow(2).mean(), logp


history, best = [], None
for it in range(10):
    xr = x.clone().requires_grad_()
    out = sampler.sample(xr, grad="reversible")
    loss, logp = loss_of(out)
    (g,) = torch.autograd.grad(loss, [xr])
    p_t, d = float(logp[target].detach().exp()), float((out.detach() - original).pow(2).mean())
    history.append((p_t, d))
    if int(logp.argmax()) == target and (best is None or d < best[1]):
        best = (out.detach(), d, p_t)
    print(f"iter {it}: p(target) = {p_t:.3f}   mean squared distance = {d:.4f}")
    # backtracking: the longest normalised step (on the sphere) that lowers the loss — the
    # map from noise to sample has narrow valleys, across which a fixed step oscillates
    with torch.no_grad():
        for step in (0.2, 0.1, 0.05, 0.025, 0.0125, 0.006, 0.003):
            trial = project(x - step * g / g.norm())
            if float(loss_of(sampler.sample(trial))[0]) < float(loss):
                break
    x = trial

assert best is not None, "no iterate reached the target"
steered = best[0]
print(f"kept: p(target) = {best[2]:.2f} at mean squared distance {best[1]:.3f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(7, 2.4))
for ax, img, title in zip(axes[:2], (original, steered),
                          ("original sample", f"steered to {target}"), strict=True):
    ax.imshow(img[0, 0].float().clamp(-1, 1), cmap="gray_r", vmin=-1, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
axes[2].plot([h[0] for h in history], "o-", label="p(target)")
axes[2].plot([h[1] for h in history], "s-", label="distance")
axes[2].set_xlabel("iteration")
axes[2].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Each iteration costs one sampling run (N network evaluations without a graph), one
# backward pass (N evaluations with a graph, one step at a time) and the line search's
# sampling runs without a graph, and the memory of a few steps, whatever N is.
