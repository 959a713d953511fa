# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1 · Deriving bidirectional explicit linear multistep methods (BELMs)
#
# Diffusion sampling integrates the probability-flow ODE, written in `x̄ = x/α`, `σ̄ = σ/α`:
#
# $$\frac{d\bar x}{d\bar\sigma} = \bar\varepsilon(\bar x, \bar\sigma).$$
#
# A *k-step variable-step* linear multistep method computes node $i-1$ from the $k$ nodes above it
# ($h_i = \bar\sigma_i - \bar\sigma_{i-1}$):
#
# $$\bar x_{i-1} = \sum_{j=1}^{k} a_{i,j}\, \bar x_{i-1+j}
#   + \sum_{j=0}^{k} b_{i,j}\, h_{i-1+j}\, \bar\varepsilon_{i-1+j}.$$
#
# It is **bidirectional explicit** (a BELM) when $b_{i,0} = b_{i,k} = 0$ and $a_{i,k} \neq 0$: the
# same relation is then explicit for $\bar x_{i-1}$ (sampling) *and* for $\bar x_{i-1+k}$
# (inversion), so inversion is exact in exact arithmetic. This notebook derives such methods
# symbolically with `lmsolvers`, shows their order conditions, why the maximal-order 3-step BELM is
# unusable, and the zero-stable designs the library ships instead.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import sympy as sp
import torch

import lmsolvers as L
from lmsolvers import symbolic
from lmsolvers.method import step_symbols

# One torch thread unless OMP_NUM_THREADS says otherwise: these models are small, and on a
# shared CPU more threads make them slower, not faster (notebook 4: 25 s with one thread,
# 276 s with two, on a busy 2-core machine; README, "Notebooks").
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)
print(f"torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS="
      f"{os.environ.get('OMP_NUM_THREADS', 'unset')})")
# LMSOLVERS_TINY=1 (CI's quick run) designs the k-step BELMs up to k = 3 only: the k = 4
# and 5 designs take most of this notebook's time
KMAX = 3 if os.environ.get("LMSOLVERS_TINY", "") == "1" else 5
sp.init_printing(use_unicode=True)

# %% [markdown]
# ## Known members: DDIM, O-BELM, BDIA
#
# Every method carries its coefficients as sympy expressions in the local steps
# `h1 = h_i, h2 = h_{i+1}, …`. The checker reads the structural properties off those expressions.
# DDIM (explicit Euler in σ̄) has $b_{i,1} = -1 \neq 0$, so it is not backward explicit: its
# "inversion" is a *different* relation, which is why DDIM inversion drifts (notebook 2).

# %%
for m in (L.ddim(), L.obelm(), L.bdia(0.5)):
    print(f"{m.name:>10}: k={m.k}  order={L.order_of(m.a, m.b)}  "
          f"bidirectional explicit={m.is_bidirectional_explicit}")
    print("            ", m.symbolic())
print("DDIM:", L.ddim().why_not_bidirectional_explicit())

# %% [markdown]
# ## Order conditions
#
# Expanding the local truncation error in Taylor series around $\bar\sigma_{i-1}$ with offsets
# $D_j = \sum_{m<j} h_{i+m}$ gives the conditions $C_0 = \sum_j a_j - 1 = 0$ and, for $l \ge 1$,
#
# $$C_l = \sum_j a_j \frac{D_j^l}{l!} + \sum_j b_j\, h_{i-1+j} \frac{D_j^{l-1}}{(l-1)!} = 0 .$$
#
# A method has order $p$ when $C_0 = \dots = C_p \equiv 0$. For O-BELM ($k=2$) the first three
# vanish identically and $C_3$ is its leading error term:

# %%
ob = L.obelm()
C = symbolic.lte_coefficients(ob.a, ob.b, upto=3)
for l, c in enumerate(C):
    print(f"C_{l} =", sp.factor(c))

# %% [markdown]
# ## Deriving the maximal-order k-step BELM
#
# A k-step BELM has $2k-1$ free coefficients ($a_1..a_k$, $b_1..b_{k-1}$). Solving
# $C_0 = \dots = C_{2k-2} = 0$ gives order $2k-2$. For $k = 2$ this *is* O-BELM
# (the paper's Prop. 4); `derive_belm(k)` does this for any k:

# %%
b2 = L.derive_belm(2)
print("derive_belm(2):", b2.symbolic())
print("equals O-BELM :", all(sp.simplify(x - y) == 0 for x, y in zip(b2.a, ob.a, strict=True)))

b3 = L.derive_belm(3)
print("derive_belm(3) order:", L.order_of(b3.a, b3.b))
h1, h2, h3 = step_symbols(3)
for name, c in zip(("a1", "a2", "a3"), b3.a, strict=True):
    print(f"  {name} =", sp.factor(c))

# %% [markdown]
# ## Why k = 3 fails: the root condition
#
# At equal steps $h_j = h$ the coefficients become numbers and the method's *zero-stability* is
# decided by the characteristic polynomial $\rho(\zeta) = \zeta^k - a_1\zeta^{k-1} - \dots - a_k$:
# sampling is stable only if every root lies in the closed unit disc (those on the circle simple).
# For the order-4 three-step BELM:

# %%
h = sp.Symbol("h", positive=True)
zeta = sp.Symbol("zeta")
a_eq = [sp.simplify(c.subs({h1: h, h2: h, h3: h})) for c in b3.a]
rho = sp.expand(zeta**3 - a_eq[0] * zeta**2 - a_eq[1] * zeta - a_eq[2])
print("a (equal steps) =", a_eq)
print("rho(zeta) =", sp.factor(rho))
roots = [complex(r) for r in sp.Poly(rho, zeta).nroots()]
print("roots:", [f"{r.real:+.4f}" for r in roots])

# %% [markdown]
# The parasitic root $-5 - 2\sqrt6 \approx -9.9$ multiplies any error by about 10 *per step*.
# We can watch it: sample a toy problem (a Gaussian mixture with a closed-form ε and an accurate
# reference flow) with O-BELM and with the order-4 three-step BELM on the same grid.

# %%
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

# %% [markdown]
# More steps make the 3-step result *worse*: the hallmark of a method that is consistent but not
# zero-stable (it does not converge).
#
# ## Inversion sees the reciprocal roots: amplification on a Stable Diffusion grid
#
# Inversion runs the same recursion upwards, so its characteristic roots are the *reciprocals*
# of the sampling roots; a parasitic root inside the unit circle for sampling is amplified during
# inversion. `L.amplification(method, grid)` computes the growth of the parasitic modes over a
# whole inversion (the norm of the product of the companion matrices). For O-BELM the
# parasitic root is $-h_i^2/h_{i+1}^2$, so on Stable Diffusion's schedule inversion amplifies it
# by roughly $(h_N/h_1)^2$; BDIA divides by $a_{i,2} = \gamma\,\alpha_{i+1}/\alpha_{i-1}$ at every
# step.

# %%
sd = L.Grid.stable_diffusion(50)
hs = sd.h
print(f"SD-1.x grid, 50 steps: (h_N/h_1)^2 = {(hs[-1] / hs[0]) ** 2:.2e}")
for m in (L.obelm(), L.bdia(0.5), L.bdia(0.9)):
    print(f"{m.name:>10}: backward amplification {L.amplification(m, sd):.2e}")


# %% [markdown]
# ## Root plots
#
# Sampling roots of the equal-step characteristic polynomials (× marks) against the unit circle,
# and the inversion roots $1/\zeta$ (○). O-BELM at equal steps is the leapfrog rule: roots $1$ and
# $-1$, both on the circle, neutral in both directions.

# %%
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

# %% [markdown]
# ## Zero-stable designs: `lmsolvers.belm(k)`
#
# Dahlquist's first barrier caps a zero-stable explicit k-step method at order $k$; for BELMs the
# library proves more (`lmsolvers.design`, module docstring): a zero-stable BELM has order at most
# $k$ for even $k$ and $k-1$ for odd $k$, and at order $k$ every root of $\rho$ lies on the unit
# circle, so the method is *bidirectionally* zero-stable: neutral in sampling **and** in inversion.
# `belm(k)` returns the designed member (smallest error constant with the roots kept 60° apart);
# its higher coefficients are held at their equal-step values, so every step has the same
# companion matrix and parasitic growth is bounded on *any* grid. The decisions are exact
# (`is_zero_stable` uses the square-free factorisation and Sturm sequences, not floating-point
# roots). The whole table (also `lmsolvers derive`/`lmsolvers table` on the command line):

# %%
print(L.belm_table(KMAX))

# %%
for k in range(2, KMAX + 1):
    m = L.belm(k)
    an = L.analyze(m)
    print(f"belm({k}) = {m.name:>19}: order {an.order} (equal steps {an.order_equal}), "
          f"bidirectional explicit {m.is_bidirectional_explicit}, zero-stable forward "
          f"{L.is_zero_stable(m, 'forward')}, both ways {L.is_zero_stable(m, 'both')}")
print("maximal-order derive_belm(3): zero-stable forward", L.is_zero_stable(b3, "forward"))

# %% [markdown]
# The stability report puts the exact verdict next to the parasitic growth on a concrete grid.
# Compare O-BELM, whose growth during inversion is about $(h_N/h_1)^2$, with the designed 3-step
# BELM on the same Stable Diffusion grid:

# %%
print(L.stability_report(L.obelm(), sd))
print()
print(L.stability_report(L.belm(3), sd))

# %%
fig, axes = plt.subplots(1, KMAX - 1, figsize=(2.75 * (KMAX - 1), 3))
for ax, k in zip(axes, range(2, KMAX + 1), strict=True):
    plot_roots(ax, L.belm(k), f"belm({k})")
plt.tight_layout()
plt.show()

for k in range(2, KMAX + 1):
    m = L.belm(k)
    errs = [float((L.sample(gm.eps, L.Grid.power(n, sigma_max=5.0, rho=1.5), m, x_N,
                            disable=True) - ref).abs().max()) for n in (10, 20, 40)]
    print(f"belm({k}): error at 10/20/40 steps " + ", ".join(f"{e:.1e}" for e in errs)
          + f";  backward amplification on SD-50 {L.amplification(m, sd):.1e}")

# %% [markdown]
# ## The same relations in data-prediction variables: exponential BELMs
#
# On a trained diffusion model the σ̄-ODE is stiff in $\bar x$ (in directions the data span
# $\partial\bar\varepsilon/\partial\bar x \approx 1/\bar\sigma$), and every design above diverges
# there. Written in $\bar y = \bar x/\bar\sigma$, $\lambda = -\log\bar\sigma$ and the data
# prediction $D = \bar x - \bar\sigma\bar\varepsilon$, the flow is $d\bar y/d\lambda = e^\lambda D$,
# whose Jacobian is a denoiser's (between 0 and 1). A k-step relation
# $\bar y_r = \sum_j a_j \bar y_{r+j} + e^{\lambda_r}\sum_{m=1}^{k-1}\beta_m D_{r+m}$ with no $D$ at
# either end is, node by node, a relation among $\bar x$'s and $\bar\varepsilon$'s: still a BELM
# (docs/design.md §12). The weights are derived symbolically, exact for $D$ polynomial in
# $\lambda$; the moments $E_l(L) = \int_{-L}^0 e^u u^l\,du$ stay atoms:

# %%
from lmsolvers.expsymbolic import exp_weights  # noqa: E402

beta = exp_weights([-sp.Rational(2, 3), sp.Rational(2, 3), 1])
print("beta_1 =", beta[1])
m3 = L.ebelm(3)
an3 = L.analyze(m3)
print(f"{m3.name}: order {an3.order}, equal log-steps {an3.leading_term()}, "
      f"bidirectional explicit {m3.is_bidirectional_explicit}")

# %% [markdown]
# What decides whether an exact inversion gives noise-like latents is the growth parameter
# $\kappa_j$ of each parasitic root: inverting, a mode excited by a local error grows relative to
# the solution by $\exp((1-\kappa_j)\int J\,d\lambda)$. For every BELM with simple roots
# $\sum_j\kappa_j = 0$ (a short proof in `lmsolvers.expsymbolic.growth_parameters`), so some
# parasitic $\kappa \le -1/(k-1)$: the designs minimise $g = \max(1-\kappa_j)$. Three steps reach
# the bound ($\kappa = -1/2$ for both parasitic roots); Milne's $\zeta^4 - 1$ has
# $\kappa = -5/3$ at $-1$:

# %%
print(L.exp_belm_table())
for z, kap in L.ebelm(4).growth:
    print(f"ebelm4 root {complex(z):.3f}: kappa = {kap.real:+.3f}")
