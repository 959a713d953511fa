"""Write the tutorial notebooks (outputs stripped; CI executes them: tests/test_notebooks.py).

The notebooks are generated from this file so that their text lives in reviewable Python
and their JSON stays free of outputs.  Regenerate after editing:

    .venv/bin/python notebooks/_build.py          # writes notebooks/0*.ipynb
    .venv/bin/python notebooks/_build.py --check  # exit 1 if a notebook is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


# --------------------------------------------------------------------------------------
# 01: deriving BELMs
# --------------------------------------------------------------------------------------

NB01 = [
    md(r"""
# 1 · Deriving bidirectional explicit linear multistep methods (BELMs)

Diffusion sampling integrates the probability-flow ODE, written in `x̄ = x/α`, `σ̄ = σ/α`:

$$\frac{d\bar x}{d\bar\sigma} = \bar\varepsilon(\bar x, \bar\sigma).$$

A *k-step variable-step* linear multistep method computes node $i-1$ from the $k$ nodes above it
($h_i = \bar\sigma_i - \bar\sigma_{i-1}$):

$$\bar x_{i-1} = \sum_{j=1}^{k} a_{i,j}\, \bar x_{i-1+j}
  + \sum_{j=0}^{k} b_{i,j}\, h_{i-1+j}\, \bar\varepsilon_{i-1+j}.$$

It is **bidirectional explicit** (a BELM) when $b_{i,0} = b_{i,k} = 0$ and $a_{i,k} \neq 0$: the
same relation is then explicit for $\bar x_{i-1}$ (sampling) *and* for $\bar x_{i-1+k}$
(inversion), so inversion is exact in exact arithmetic. This notebook derives such methods
symbolically with `lmsolvers`, shows their order conditions, why the maximal-order 3-step BELM is
unusable, and the zero-stable designs the library ships instead.
"""),
    code(r"""
import matplotlib.pyplot as plt
import numpy as np
import sympy as sp

import lmsolvers as L
from lmsolvers import symbolic
from lmsolvers.method import step_symbols

sp.init_printing(use_unicode=True)
"""),
    md(r"""
## Known members: DDIM, O-BELM, BDIA

Every method carries its coefficients as sympy expressions in the local steps
`h1 = h_i, h2 = h_{i+1}, …`. The checker reads the structural properties off those expressions.
DDIM (explicit Euler in σ̄) has $b_{i,1} = -1 \neq 0$, so it is not backward explicit: its
"inversion" is a *different* relation, which is why DDIM inversion drifts (notebook 2).
"""),
    code(r"""
for m in (L.ddim(), L.obelm(), L.bdia(0.5)):
    print(f"{m.name:>10}: k={m.k}  order={L.order_of(m.a, m.b)}  "
          f"bidirectional explicit={m.is_bidirectional_explicit}")
    print("            ", m.symbolic())
print("DDIM:", L.ddim().why_not_bidirectional_explicit())
"""),
    md(r"""
## Order conditions

Expanding the local truncation error in Taylor series around $\bar\sigma_{i-1}$ with offsets
$D_j = \sum_{m<j} h_{i+m}$ gives the conditions $C_0 = \sum_j a_j - 1 = 0$ and, for $l \ge 1$,

$$C_l = \sum_j a_j \frac{D_j^l}{l!} + \sum_j b_j\, h_{i-1+j} \frac{D_j^{l-1}}{(l-1)!} = 0 .$$

A method has order $p$ when $C_0 = \dots = C_p \equiv 0$. For O-BELM ($k=2$) the first three
vanish identically and $C_3$ is its leading error term:
"""),
    code(r"""
ob = L.obelm()
C = symbolic.lte_coefficients(ob.a, ob.b, upto=3)
for l, c in enumerate(C):
    print(f"C_{l} =", sp.factor(c))
"""),
    md(r"""
## Deriving the maximal-order k-step BELM

A k-step BELM has $2k-1$ free coefficients ($a_1..a_k$, $b_1..b_{k-1}$). Solving
$C_0 = \dots = C_{2k-2} = 0$ gives order $2k-2$. For $k = 2$ this *is* O-BELM
(the paper's Prop. 4); `derive_belm(k)` does this for any k:
"""),
    code(r"""
b2 = L.derive_belm(2)
print("derive_belm(2):", b2.symbolic())
print("equals O-BELM :", all(sp.simplify(x - y) == 0 for x, y in zip(b2.a, ob.a, strict=True)))

b3 = L.derive_belm(3)
print("derive_belm(3) order:", L.order_of(b3.a, b3.b))
h1, h2, h3 = step_symbols(3)
for name, c in zip(("a1", "a2", "a3"), b3.a, strict=True):
    print(f"  {name} =", sp.factor(c))
"""),
    md(r"""
## Why k = 3 fails: the root condition

At equal steps $h_j = h$ the coefficients become numbers and the method's *zero-stability* is
decided by the characteristic polynomial $\rho(\zeta) = \zeta^k - a_1\zeta^{k-1} - \dots - a_k$:
sampling is stable only if every root lies in the closed unit disc (those on the circle simple).
For the order-4 three-step BELM:
"""),
    code(r"""
h = sp.Symbol("h", positive=True)
zeta = sp.Symbol("zeta")
a_eq = [sp.simplify(c.subs({h1: h, h2: h, h3: h})) for c in b3.a]
rho = sp.expand(zeta**3 - a_eq[0] * zeta**2 - a_eq[1] * zeta - a_eq[2])
print("a (equal steps) =", a_eq)
print("rho(zeta) =", sp.factor(rho))
roots = [complex(r) for r in sp.Poly(rho, zeta).nroots()]
print("roots:", [f"{r.real:+.4f}" for r in roots])
"""),
    md(r"""
The parasitic root $-5 - 2\sqrt6 \approx -9.9$ multiplies any error by about 10 *per step*.
We can watch it: sample a toy problem (a Gaussian mixture with a closed-form ε and an accurate
reference flow) with O-BELM and with the order-4 three-step BELM on the same grid.
"""),
    code(r"""
import torch

from lmsolvers.problems import GaussianMixture

gm = GaussianMixture()
x_N = gm.prior(4, 5.0, generator=torch.Generator().manual_seed(0))
ref = gm.solution(x_N, 5.0, 0.0)
for n in (10, 20, 40):
    grid = L.Grid.power(n, sigma_max=5.0, rho=1.5)
    errs = {}
    for m in (L.obelm(), b3):
        x0 = L.sample(gm.eps, grid, m, x_N, disable=True)
        errs[m.name] = float((x0 - ref).abs().max())
    print(n, "steps:", {k: f"{v:.1e}" for k, v in errs.items()})
"""),
    md(r"""
More steps make the 3-step result *worse*: the hallmark of a method that is consistent but not
zero-stable (it does not converge).

## Inversion sees the reciprocal roots: amplification on a Stable Diffusion grid

Inversion runs the same recursion upwards, so its characteristic roots are the *reciprocals*
of the sampling roots; a parasitic root inside the unit circle for sampling is amplified during
inversion. `L.amplification(method, grid)` computes the growth of the parasitic modes over a
whole inversion (the norm of the product of the companion matrices). For O-BELM the
parasitic root is $-h_i^2/h_{i+1}^2$, so on Stable Diffusion's schedule inversion amplifies it
by roughly $(h_N/h_1)^2$; BDIA divides by $a_{i,2} = \gamma\,\alpha_{i+1}/\alpha_{i-1}$ at every
step.
"""),
    code(r"""
sd = L.Grid.stable_diffusion(50)
hs = sd.h
print(f"SD-1.x grid, 50 steps: (h_N/h_1)^2 = {(hs[-1] / hs[0]) ** 2:.2e}")
for m in (L.obelm(), L.bdia(0.5), L.bdia(0.9)):
    print(f"{m.name:>10}: backward amplification {L.amplification(m, sd):.2e}")
"""),
    md(r"""
## Root plots

Sampling roots of the equal-step characteristic polynomials (× marks) against the unit circle,
and the inversion roots $1/\zeta$ (○). O-BELM at equal steps is the leapfrog rule: roots $1$ and
$-1$, both on the circle, neutral in both directions.
"""),
    code(r"""
def equal_step_rho(method):
    hs_ = step_symbols(method.k)
    a = [sp.nsimplify(sp.simplify(c.subs({s: 1 for s in hs_}))) for c in method.a]
    return sp.Poly(zeta**method.k - sum(aj * zeta**(method.k - 1 - j) for j, aj in enumerate(a)),
                   zeta)


def plot_roots(ax, method, title):
    r = np.array([complex(x) for x in equal_step_rho(method).nroots()])
    t = np.linspace(0, 2 * np.pi, 200)
    ax.plot(np.cos(t), np.sin(t), "k-", lw=0.8)
    ax.plot(r.real, r.imag, "rx", ms=9, label="sampling ζ")
    ax.plot((1 / r).real, (1 / r).imag, "bo", mfc="none", label="inversion 1/ζ")
    lim = 1.3 * max(1.0, *np.abs(r), *np.abs(1 / r))
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)


fig, axes = plt.subplots(1, 2, figsize=(7, 3))
plot_roots(axes[0], L.obelm(), "O-BELM (k=2, order 2)")
plot_roots(axes[1], b3, "maximal-order BELM, k=3, order 4")
axes[0].legend(fontsize=7, loc="lower left")
plt.tight_layout()
plt.show()
"""),
]

#: Appended to NB01 when the designed BELMs (lmsolvers.belm) are available.
NB01_DESIGN = [
    md(r"""
## Zero-stable designs: `lmsolvers.belm(k)`

Dahlquist's first barrier caps a zero-stable explicit k-step method at order $k$; for BELMs the
library proves more (`lmsolvers.design`, module docstring): a zero-stable BELM has order at most
$k$ for even $k$ and $k-1$ for odd $k$, and at order $k$ every root of $\rho$ lies on the unit
circle, so the method is *bidirectionally* zero-stable: neutral in sampling **and** in inversion.
`belm(k)` returns the designed member (smallest error constant with the roots kept 60° apart);
its higher coefficients are held at their equal-step values, so every step has the same
companion matrix and parasitic growth is bounded on *any* grid. The decisions are exact
(`is_zero_stable` uses the square-free factorisation and Sturm sequences, not floating-point
roots). The whole table (also `lmsolvers derive`/`lmsolvers table` on the command line):
"""),
    code(r"""
print(L.belm_table(5))
"""),
    code(r"""
for k in (2, 3, 4, 5):
    m = L.belm(k)
    an = L.analyze(m)
    print(f"belm({k}) = {m.name:>19}: order {an.order} (equal steps {an.order_equal}), "
          f"bidirectional explicit {m.is_bidirectional_explicit}, zero-stable forward "
          f"{L.is_zero_stable(m, 'forward')}, both ways {L.is_zero_stable(m, 'both')}")
print("maximal-order derive_belm(3): zero-stable forward", L.is_zero_stable(b3, "forward"))
"""),
    md(r"""
The stability report puts the exact verdict next to the parasitic growth on a concrete grid.
Compare O-BELM, whose growth during inversion is about $(h_N/h_1)^2$, with the designed 3-step
BELM on the same Stable Diffusion grid:
"""),
    code(r"""
print(L.stability_report(L.obelm(), sd))
print()
print(L.stability_report(L.belm(3), sd))
"""),
    code(r"""
fig, axes = plt.subplots(1, 4, figsize=(11, 3))
for ax, k in zip(axes, (2, 3, 4, 5), strict=True):
    plot_roots(ax, L.belm(k), f"belm({k})")
plt.tight_layout()
plt.show()

for k in (2, 3, 4, 5):
    m = L.belm(k)
    errs = [float((L.sample(gm.eps, L.Grid.power(n, sigma_max=5.0, rho=1.5), m, x_N,
                            disable=True) - ref).abs().max()) for n in (10, 20, 40)]
    print(f"belm({k}): error at 10/20/40 steps " + ", ".join(f"{e:.1e}" for e in errs)
          + f";  backward amplification on SD-50 {L.amplification(m, sd):.1e}")
"""),
]

NB01_NO_DESIGN = [
    md(r"""
## Zero-stable designs

*The designed zero-stable k-step BELMs (`lmsolvers.belm(k)`) are not part of this version of
the library yet; this section appears when they are.*
"""),
]


# --------------------------------------------------------------------------------------
# 02: exact inversion with the digits DDPM
# --------------------------------------------------------------------------------------

NB02 = [
    md(r"""
# 2 · Exact inversion of a trained diffusion model

This notebook uses the small DDPM that ships with the repository (`models/digits_ddpm`, a
`UNet2DModel` trained on scikit-learn's 8×8 digits, ε-prediction, 1000 training steps) to show the
library's central claim:

* **sampling** with O-BELM is as cheap as DDIM (one network evaluation per step);
* **inverting** real, held-out digits with O-BELM and sampling back reproduces them to float64
  round-off (~1e-14), while the classic DDIM inversion drifts visibly;
* in **bit-exact mode** the round trip is bitwise identical, even in float32.

Everything runs on a CPU in seconds.
"""),
    code(r"""
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from diffusers import DDPMScheduler, UNet2DModel
from lmsolvers.adapters import DiffusionSampler

import lmsolvers as L

# the repository root, whether Jupyter was started in notebooks/ or in the root
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents)
            if (p / "models" / "digits_ddpm").is_dir())
sys.path.insert(0, str(ROOT / "benchmarks"))
from digits_data import load_digits_split  # noqa: E402  (held-out real digits)

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
"""),
    md(r"""
## Sampling

`DiffusionSampler(unet, scheduler, N)` builds the σ̄ grid from the scheduler config (DDIM
'leading' spacing here) and integrates with O-BELM by default. The solver state is float64;
the network sees `α x̄` cast to its own dtype (float32).
"""),
    code(r"""
N = 20
sampler = DiffusionSampler(unet, scheduler, N, disable_progress=True)
print(sampler.grid)
x_T = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
samples = sampler.sample(x_T)
ddim_sampler = DiffusionSampler(unet, scheduler, N, method=L.ddim(), disable_progress=True)
ddim_samples = ddim_sampler.sample(x_T)
show([samples, ddim_samples], ["O-BELM", "DDIM"])
"""),
    md(r"""
## Inverting real digits

Take eight digits from the held-out test split (never seen in training). O-BELM inversion returns
a `Latent`: the **k = 2 noisiest states** of the trajectory. Sampling from that latent runs the
very same linear relation backwards, so it reproduces the input. DDIM has no exact inverse; its
classic inversion (explicit Euler run *upwards*, `L.ddim_inversion`) evaluates ε at the lower
node where sampling uses the upper one, a different relation, and the reconstruction drifts.
"""),
    code(r"""
x_test, y_test = load_digits_split("test")
x0 = x_test[:8].double()
print("labels:", y_test[:8].tolist())

latent = sampler.invert(x0)
print(type(latent).__name__, "with", latent.k, "states of shape", tuple(latent.x_N.shape))
rec_obelm = sampler.sample(latent)

a0 = float(sampler.grid.alphas[0])  # = 1 here: the grid ends on the clean image
lat_ddim = L.ddim_inversion(sampler.eps, sampler.grid, x0 / a0, disable=True)
rec_ddim = L.sample(sampler.eps, sampler.grid, L.ddim(), lat_ddim, disable=True) * a0

print(f"max |error|  O-BELM: {float((rec_obelm - x0).abs().max()):.1e}   "
      f"DDIM inversion: {float((rec_ddim - x0).abs().max()):.2f}")
show([x0, rec_ddim, (rec_ddim - x0).abs() * 2 - 1, rec_obelm, (rec_obelm - x0).abs() * 2 - 1],
     ["real", "DDIM rec.", "|DDIM err|", "O-BELM rec.", "|O-BELM err|"])
"""),
    md(r"""
The O-BELM error map is blank: the reconstruction is the input to ~1e-14. Restarting from the
noisiest state `x_N` alone is *not* the inverse: the second state of the latent matters
(sampling from `x_N` alone computes it with a DDIM starter step instead). Real digits invert to
noise that is far from typical for this small model (standard deviation above 1), and from such
a start the missing state changes the result completely.
"""),
    code(r"""
x_T_inv = sampler.noise_of(latent)
from_x_N_only = sampler.sample(x_T_inv)
print(f"from the full latent: {float((rec_obelm - x0).abs().max()):.1e}   "
      f"from x_N alone: {float((from_x_N_only - x0).abs().max()):.1f}")
print(f"std of the inverted noise x_T: {float(x_T_inv.std()):.2f} (Gaussian noise: 1)")
"""),
    md(r"""
## Drift versus exactness, in numbers

More steps shrink DDIM inversion's drift (it is an O(h) error), but never to zero; O-BELM's
reconstruction error stays at float64 round-off for every step count. The last column is the
grid's backward amplification (`L.amplification`): how much the parasitic mode, and hence the
round-off made during inversion, can grow on this grid, from nodes to noise.
"""),
    code(r"""
rows = []
for n in (10, 20, 50):
    s = DiffusionSampler(unet, scheduler, n, disable_progress=True)
    e_belm = float((s.reconstruct(x0) - x0).abs().max())
    ld = L.ddim_inversion(s.eps, s.grid, x0, disable=True)
    rd = L.sample(s.eps, s.grid, L.ddim(), ld, disable=True)
    rows.append((n, float((rd - x0).pow(2).mean()), float((rd - x0).abs().max()), e_belm,
                 L.amplification(L.obelm(), s.grid)))
print(f"{'steps':>5} | {'DDIM MSE':>9} | {'DDIM max':>9} | {'O-BELM max':>10} | amplification")
for n, mse, mx, eb, amp in rows:
    print(f"{n:>5} | {mse:9.2e} | {mx:9.2e} | {eb:10.1e} | {amp:.1e}")

fig, ax = plt.subplots(figsize=(4, 2.6))
ax.semilogy([r[0] for r in rows], [r[2] for r in rows], "o-", label="DDIM inversion")
ax.semilogy([r[0] for r in rows], [r[3] for r in rows], "s-", label="O-BELM")
ax.set_xlabel("steps")
ax.set_ylabel("max |reconstruction error|")
ax.legend(fontsize=8)
plt.show()
"""),
    md(r"""
## Round-off and bit-exact mode

"Exact" inversion is exact up to round-off, and the round-off of the inversion is amplified by the
grid (the amplification column above). With a float32 state the round trip errs by ~1e-6; with
float64 by ~1e-14. `bitexact=True` removes even that: the states are held as integers on a
fixed-point grid and each step adds a *rounded* increment that depends only on states known in
both directions; integer addition is exactly invertible, so the round trip is **bitwise**
identical (see `docs/bitexact.md`). Here the core API is used directly on the σ̄-ODE
`sampler.eps` with a float32 state.
"""),
    code(r"""
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
"""),
    md(r"""
The digits are multiples of 1/8 in [−1, 1], so they lie on the fixed-point grid and come back
exactly; in general the bit-exact round trip returns the fixed-point image of the input, within
half a quantum of it (≈ 7e-9 in float32).

## The same through other BELMs

BDIA(γ) is also a BELM, but its inversion divides by $a_{i,2} = \gamma\,\alpha_{i+1}/\alpha_{i-1}$
at every step, so round-off grows with the amplification. EDICT is exactly invertible too, at two
network evaluations per step.
"""),
    code(r"""
for m in (L.obelm(), L.bdia(0.9), L.bdia(0.5), L.edict(0.93)):
    s = DiffusionSampler(unet, scheduler, N, method=m, disable_progress=True)
    err = float((s.reconstruct(x0) - x0).abs().max())
    amp = L.amplification(m, s.grid) if isinstance(m, L.LMMethod) else float("nan")
    print(f"{m.name:>12}: max |error| {err:.1e}   amplification {amp:.1e}")
"""),
]


# --------------------------------------------------------------------------------------
# 03: Stable Diffusion editing
# --------------------------------------------------------------------------------------

NB03 = [
    md(r"""
# 3 · Editing and interpolation with Stable Diffusion

Exact inversion makes *inversion-based editing* honest: invert an image under a **source**
prompt, then sample from the inverted latent under a **target** prompt. With the source prompt
the sampling is the inverse of the inversion, so every change in the output is due to the
prompt, none to reconstruction drift.

**Parameters.** Set `MODEL_ID` to any Stable Diffusion 1.x/2.x checkpoint (local path or hub id;
v-prediction models work) and, optionally, `IMAGE_PATH` to your own image. A GPU is strongly
recommended for the real model.

**Under CI / offline** (environment variable `LMSOLVERS_TINY=1`, or when the checkpoint cannot
be loaded) the notebook builds *tiny random-weight components* locally
(`lmsolvers.adapters.tiny`): a Stable-Diffusion-shaped UNet with cross-attention, a VAE and
random tensors standing in for CLIP prompt embeddings. Every step below then runs in seconds,
the exactness numbers are real, but the pictures are noise: the weights are random.
"""),
    code(r"""
MODEL_ID = "runwayml/stable-diffusion-v1-5"  # any SD 1.x / 2.x diffusers checkpoint
IMAGE_PATH = None  # your image (any size; resized to SIZE); None: generated from SOURCE_PROMPT
SOURCE_PROMPT = "a photo of a cat sitting on a sofa"
TARGET_PROMPT = "a photo of a dog sitting on a sofa"
OTHER_PROMPT = "a watercolor painting of a lighthouse"  # second endpoint of the interpolation
NUM_STEPS = 50
GUIDANCE = 3.0
SIZE = 512
SEED = 0
"""),
    code(r"""
import os

import matplotlib.pyplot as plt
import torch
from lmsolvers.adapters import (
    BELMScheduler,
    DiffusionSampler,
    decode_latents,
    edit_latents,
    encode_image,
    interpolate,
)

import lmsolvers as L

TINY = os.environ.get("LMSOLVERS_TINY", "") == "1"
device = "cuda" if torch.cuda.is_available() else "cpu"
pipe = None
if not TINY:
    try:
        from diffusers import StableDiffusionPipeline

        dtype = torch.float16 if device == "cuda" else torch.float32
        pipe = StableDiffusionPipeline.from_pretrained(MODEL_ID, torch_dtype=dtype).to(device)
        pipe.set_progress_bar_config(disable=True)
    except Exception as err:  # offline, no such checkpoint, …
        print(f"could not load {MODEL_ID!r} ({type(err).__name__}: {err}); "
              "falling back to tiny random-weight components")
        TINY = True
if TINY:
    from lmsolvers.adapters.tiny import tiny_prompt_embeds, tiny_sd_pipeline

    device = "cpu"
    pipe = tiny_sd_pipeline()  # random weights, SD-1.x scheduler config, 8×8×4 latents
    NUM_STEPS, SIZE = 10, 16
    print("TINY MODE: random-weight components built locally; pictures are noise, "
          "the numbers are real")
print(type(pipe.unet).__name__, "on", device, "| scheduler:", type(pipe.scheduler).__name__,
      "| prediction:", pipe.scheduler.config.prediction_type)
"""),
    md(r"""
## Prompt embeddings

The editing functions take prompt *embeddings* (what `pipe.encode_prompt` returns), so any text
encoder, negative prompt or embedding trick can be used. In tiny mode there is no text encoder:
fixed random tensors stand in for the three prompts.
"""),
    code(r"""
def embed(prompt, seed):
    if TINY:
        return tiny_prompt_embeds(seed)
    cond, _ = pipe.encode_prompt(prompt, device, 1, False)
    return cond


src = embed(SOURCE_PROMPT, 1)
tgt = embed(TARGET_PROMPT, 2)
other = embed(OTHER_PROMPT, 3)
neg = embed("", 4)  # the empty (negative) prompt, for classifier-free guidance
print("prompt embeddings:", tuple(src.shape))
"""),
    md(r"""
## The source image and its VAE latents

`encode_image` takes the posterior *mean* of the VAE (deterministic: the same image always gives
the same latents, which is what exact inversion wants). Without `IMAGE_PATH` the source image is
generated from the source prompt with O-BELM.
"""),
    code(r"""
def to_pil_tensor(path):
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((SIZE, SIZE))
    t = torch.tensor(list(img.getdata()), dtype=torch.float32).view(SIZE, SIZE, 3)
    return (t.permute(2, 0, 1)[None] / 127.5 - 1.0)


def generate(prompt_embeds, seed):
    s = DiffusionSampler(pipe.unet, pipe.scheduler, NUM_STEPS, guidance_scale=GUIDANCE,
                         prompt_embeds=prompt_embeds, negative_prompt_embeds=neg,
                         disable_progress=True)
    c = pipe.unet.config
    shape = (1, c.in_channels, c.sample_size, c.sample_size)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return decode_latents(pipe.vae, s.sample(x_T)).float().clamp(-1, 1).cpu()


def show(images, titles):
    fig, axes = plt.subplots(1, len(images), figsize=(2.2 * len(images), 2.4))
    for ax, img, title in zip(axes, images, titles, strict=True):
        ax.imshow(((img[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy())
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    plt.show()


image = to_pil_tensor(IMAGE_PATH) if IMAGE_PATH else generate(src, SEED)
z0 = encode_image(pipe.vae, image.to(device))
print("image", tuple(image.shape), "→ latents", tuple(z0.shape))
"""),
    md(r"""
## Exact inversion under the source prompt (with guidance)

`DiffusionSampler` runs O-BELM with classifier-free guidance in one batched UNet call per step.
Its state is float64, so the round trip is exact to float64 round-off even through an fp16
UNet. The classic DDIM inversion on the same model, for comparison:
"""),
    code(r"""
sampler = DiffusionSampler(pipe.unet, pipe.scheduler, NUM_STEPS, guidance_scale=GUIDANCE,
                           prompt_embeds=src, negative_prompt_embeds=neg, disable_progress=True)
latent = sampler.invert(z0)
rec = sampler.sample(latent)

z0_64 = z0.double()
a0 = float(sampler.grid.alphas[0])
lat_ddim = L.ddim_inversion(sampler.eps, sampler.grid, z0_64 / a0, disable=True)
rec_ddim = L.sample(sampler.eps, sampler.grid, L.ddim(), lat_ddim, disable=True) * a0


def rel(a, b):
    return float((a - b).norm() / b.norm())


print(f"relative latent error  O-BELM: {rel(rec, z0_64):.1e}   DDIM inversion: "
      f"{rel(rec_ddim, z0_64):.1e}")
assert rel(rec, z0_64) < 1e-10
show([image, decode_latents(pipe.vae, rec_ddim).cpu(), decode_latents(pipe.vae, rec).cpu()],
     ["input", "DDIM inversion → sample", "O-BELM inversion → sample"])
"""),
    md(r"""
## Editing

`edit_latents` samples from the source inversion under the target prompt. `frozen_fraction`
keeps the first (noisiest) fraction of the sampling steps on the source prompt, i.e. on the
inverted trajectory itself, which preserves more of the source's layout; `frozen_fraction=1`
(or target = source) gives back the input exactly. Passing `latent=` reuses the inversion for
several edits.
"""),
    code(r"""
edits = {}
for f in (0.0, 0.2, 0.4, 1.0):
    res = edit_latents(pipe.unet, pipe.scheduler, z0, src, tgt, neg, latent=latent,
                       num_inference_steps=NUM_STEPS, guidance_scale=GUIDANCE,
                       frozen_fraction=f, disable_progress=True)
    edits[f] = res.latents
    print(f"frozen_fraction={f:.1f}: relative change of the latents {rel(res.latents, z0_64):.2f}")
assert rel(edits[1.0], z0_64) < 1e-10
show([image] + [decode_latents(pipe.vae, edits[f]).cpu() for f in (0.0, 0.2, 0.4)],
     ["source", "edit, frozen 0", "edit, frozen 0.2", "edit, frozen 0.4"])
"""),
    md(r"""
## Interpolation

Invert two images and sample from the spherical interpolation of their latents (state by state:
a latent holds k states). The end points reproduce the inputs exactly. (Both are inverted under
the source prompt here; use an empty prompt for unconditional interpolation.)
"""),
    code(r"""
image_b = generate(other, SEED + 1)
z_b = encode_image(pipe.vae, image_b.to(device))
weights = (0.0, 0.25, 0.5, 0.75, 1.0)
path = interpolate(sampler, z0, z_b, weights)
print("end points: relative errors "
      f"{rel(path[0], z0_64):.1e}, {rel(path[-1], z_b.double()):.1e}")
show([decode_latents(pipe.vae, p).cpu() for p in path], [f"w = {w}" for w in weights])
"""),
    md(r"""
## Drop-in scheduler for the stock pipeline

`BELMScheduler` plugs O-BELM into an unmodified `StableDiffusionPipeline`. A pipeline passes a
single tensor `latents`, while an exact latent holds k states: `load_latent` stores them in the
scheduler and returns `x_T`, and the pipeline then reproduces the inverted image. (Restarting
from `x_T` alone is not the inverse.)
"""),
    code(r"""
pipe.scheduler = BELMScheduler.from_config(pipe.scheduler.config)
x_T = pipe.scheduler.load_latent(latent, dtype=pipe.unet.dtype)
out = pipe(prompt_embeds=src, negative_prompt_embeds=neg, guidance_scale=GUIDANCE,
           num_inference_steps=NUM_STEPS, latents=x_T, output_type="latent").images
print(f"stock pipeline from the loaded latent: relative error {rel(out.double(), z0_64):.1e}")
"""),
]


NOTEBOOKS = {
    "02_exact_inversion.ipynb": NB02,
    "03_stable_diffusion_editing.ipynb": NB03,
}


def has_design() -> bool:
    """Whether the designed BELMs (``lmsolvers.belm`` and friends) are available."""
    import lmsolvers

    return all(hasattr(lmsolvers, n) for n in ("belm", "is_zero_stable", "stability_report"))


def notebooks() -> dict[str, nbformat.NotebookNode]:
    cells = {**NOTEBOOKS, "01_derive_belm.ipynb": NB01 + (NB01_DESIGN if has_design()
                                                            else NB01_NO_DESIGN)}
    out = {}
    for name in sorted(cells):
        nb = new_notebook(cells=cells[name])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        for i, c in enumerate(nb.cells):  # stable ids: regenerating gives identical files
            c["id"] = f"{Path(name).stem[:2]}-{i:02d}"
        out[name] = nb
    return out


def main(argv: list[str]) -> int:
    stale = []
    for name, nb in notebooks().items():
        path = HERE / name
        text = nbformat.writes(nb) + "\n"
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print("wrote", path.relative_to(HERE.parent))
    if stale:
        print("out of date (run .venv/bin/python notebooks/_build.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
