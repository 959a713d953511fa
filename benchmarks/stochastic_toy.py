"""Stochastic samplers on toys with a closed-form law: the output law against the exact one,
and the weak order (docs/design.md §13).

**Gaussian mixture** (:class:`lmsolvers.problems.GaussianMixture`, exact ε̄): every sampler of
the reverse SDE with the exact score transports the prior at σ̄_N (also exact) to the mixture
itself, so the law of its output is compared with the mixture's.  The statistic is the
distance of characteristic functions on F random frequencies ω ~ N(0, ω₀² I), i.e. a
Gaussian-kernel MMD between the sample and the exact law, with the bias of the empirical
characteristic function removed::

    D² = mean_ω |φ̂_n(ω) − φ(ω)|² − mean_ω (1 − |φ(ω)|²)/n,   φ(ω) = Σ_c w_c e^{iω·μ_c − s_c²|ω|²/2}

(its standard error by a jackknife over 20 blocks of samples).  Its resolution is stated
against the closed-form D of the mixture with every component's standard deviation changed
by 1 %.  The weak order is the fitted slope of log D against log N where D exceeds 4 standard
errors.

**Gaussian data** (:class:`lmsolvers.problems.GaussianData`, 1-D): ε̄ is linear, so every
sampler's output is exactly Gaussian and its variance follows from the linear recursion
(each state a combination of x̄_N and the noises z_n): the weak error |Var x̄₀ − s²|/s² with
no Monte-Carlo noise at all, to N = 640.

Samplers (η = 0.5 and 1; default law: DDIM's η): ours — O-BELM with the damped landing
(``obelm-landing(0.1)+eta(η)``, drift "auto"), O-BELM with drift "time" and "relation";
the ablation "fresh noise" (O-BELM "time" whose noise enters the new node only, its variance
matched to the principal mode: the design §13 rejects); peers — DDIM's η-step (k = 1, Song
et al. 2021) and, at η = 1, SDE-DPM-Solver++(2M) (Lu et al. 2022, the midpoint
data-prediction update of diffusers' ``sde-dpmsolver++``, last step first order), written
here in σ̄ form with the same noise.  Grids: each sampler takes its best family of
``samplers.GRID_FAMILIES`` (the linear-β DDPM table's σ̄ from 157.4 to 0), chosen by D at
N = 20 on the validation seed (``--val-seed``); the tables use the test seed (``--seed``).

Writes ``stochastic_toy.md``/``.json``/``.png`` under ``--out``.
Usage: ``.venv/bin/python -m benchmarks.stochastic_toy [--quick]`` (about 15 min).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler

import lmsolvers as L
from lmsolvers.noise import normal_noise
from lmsolvers.problems import GaussianData, GaussianMixture
from lmsolvers.stochastic import StochasticMethod, StochasticPlan

from . import samplers as S
from .tables import markdown_table

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = (10, 14, 20, 28, 40, 57, 80, 113, 160, 226)
GAUSS_STEPS = (10, 20, 40, 80, 160, 320, 640)
ETAS = (0.5, 1.0)
MIX = GaussianMixture()
GAUSS = GaussianData(dim=1, mean=0.5, std=0.7)
TABLE = S.linear_beta_table()
OMEGA_SCALE = 2.0


# ------------------------------------------------------------------ the samplers
class FreshNoise(StochasticMethod):
    """The rejected design (ablation): all of a step's noise enters the new node, with the
    variance the principal mode should get (``g_{r,0} = c_r Σ_m A_m``, other weights 0), so
    a share ``Σ_{m≥1} A_m / Σ_m A_m`` feeds the parasitic modes (docs/design.md §13)."""

    @property
    def name(self) -> str:  # noqa: D102
        return f"fresh:{super().name}"

    @property
    def key(self) -> str:  # noqa: D102
        return f"fresh:{super().key}"

    def _design(self, grid: L.Grid, drift: str) -> StochasticPlan:
        p = super()._design(grid, drift)
        g = np.zeros_like(p.coeffs.g)
        c = p.noise_std[: g.shape[0]]
        tails = np.cumsum(p.coeffs.a[:, ::-1], axis=1)[:, ::-1]
        g[:, 0] = c * (1.0 + tails[:, 1:].sum(axis=1))
        return dataclasses.replace(p, coeffs=dataclasses.replace(p.coeffs, g=g))


def sde_dpmpp_2m(eps: Callable, sigma_bar: np.ndarray, x: torch.Tensor, seed: int
                 ) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) at η = 1 in σ̄ form (Lu et al. 2022; diffusers' midpoint
    ``sde-dpmsolver++``): with ``h = log(σ̄_s/σ̄_t)``, ``D = x̄ − σ̄ ε̄`` and
    ``D₁ = (D_s − D_prev)/r``, ``r = h_prev/h``::

        x̄_t = e^{−2h} x̄_s + (1 − e^{−2h}) (D_s + D₁/2) + σ̄_t sqrt(1 − e^{−2h}) z

    first order at the first step and on the final step onto σ̄ = 0 (``x̄_0 = D_s``)."""
    s = sigma_bar
    N = s.size - 1
    d_prev, h_prev = None, None
    for m in range(N, 0, -1):
        t = m - 1
        d = x - float(s[m]) * eps(x, float(s[m]))
        if s[t] == 0.0:
            return d
        h = math.log(s[m] / s[t])
        e2 = math.exp(-2.0 * h)
        drift = d if d_prev is None else d + 0.5 * (d - d_prev) / (h_prev / h)
        z = torch.from_numpy(normal_noise(seed, t, tuple(x.shape))).to(x.dtype)
        x = e2 * x + (1.0 - e2) * drift + float(s[t]) * math.sqrt(1.0 - e2) * z
        d_prev, h_prev = d, h
    return x


def check_sde_dpmpp(eps: Callable, sigma_bar: np.ndarray, x: torch.Tensor, seed: int,
                    base_config: dict | None = None) -> float:
    """Relative difference of :func:`sde_dpmpp_2m` and diffusers' ``sde-dpmsolver++`` (order 2,
    midpoint) on the same nodes, fed the same noise (diffusers computes in float32)."""
    cfg = S.peer_config(S.SamplerSpec("DPM-Solver++(2M)", "dpm", order=2), base_config)
    cfg["algorithm_type"] = "sde-dpmsolver++"
    sched = DPMSolverMultistepScheduler.from_config(cfg)
    n = len(sigma_bar) - 1
    sched.set_timesteps(n)
    sched.sigmas = torch.tensor(np.asarray(sigma_bar, dtype=np.float64)[::-1].copy())
    sched.timesteps, sched.num_inference_steps = sched.timesteps[:n], n
    sched.set_begin_index(0)
    sig = sched.sigmas.double().numpy()
    xs = x * float(1 / np.sqrt(1 + sig[0] ** 2))
    for i, t in enumerate(sched.timesteps):
        a = float(1 / np.sqrt(1 + sig[i] ** 2))
        node = n - i - 1
        z = torch.from_numpy(normal_noise(seed, node, tuple(x.shape)))
        xs = sched.step(eps(xs / a, float(sig[i])).to(xs.dtype), t, xs,
                        variance_noise=z.to(xs.dtype)).prev_sample
    ref = sde_dpmpp_2m(eps, sigma_bar, x, seed)
    out = xs.double() / float(1 / np.sqrt(1 + sig[-1] ** 2))
    return float((out - ref).norm() / ref.norm())


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A sampler of the table: a core integrator (``method``) or ``"sde-dpm++2m"``."""

    name: str
    method: object
    eta: float

    def run(self, eps: Callable, sigma_bar: np.ndarray, x: torch.Tensor, seed: int
            ) -> torch.Tensor:
        if self.method == "sde-dpm++2m":
            return sde_dpmpp_2m(eps, sigma_bar, x, seed)
        return L.sample(eps, L.Grid(sigma_bar), self.method, x, seed=seed, disable=True)


def samplers(eta: float) -> list[Sampler]:
    """The samplers of the tables at ``eta`` (module docstring)."""
    out = [Sampler("ours: O-BELM-landing (auto)", L.stochastic(L.obelm_landing(0.1), eta), eta),
           Sampler("O-BELM, drift time", L.stochastic(L.obelm(), eta, drift="time"), eta),
           Sampler("O-BELM, drift relation", L.stochastic(L.obelm(), eta, drift="relation"),
                   eta),
           Sampler("ablation: fresh noise", FreshNoise(L.obelm(), eta, drift="time"), eta),
           Sampler("DDIM-η (k = 1)", L.stochastic(L.ddim(), eta), eta)]
    if eta == 1.0:
        out.append(Sampler("SDE-DPM-Solver++(2M)", "sde-dpm++2m", eta))
    return out


# ------------------------------------------------------------------ the statistic
def _frequencies(n_freq: int) -> torch.Tensor:
    return torch.randn(n_freq, MIX.dim, generator=torch.Generator().manual_seed(12345),
                       dtype=torch.float64) * OMEGA_SCALE


def mixture_cf(omega: torch.Tensor, std_scale: float = 1.0) -> torch.Tensor:
    """φ(ω) of the mixture (its component standard deviations scaled by ``std_scale``)."""
    w = torch.tensor(MIX.weights, dtype=torch.float64)
    mu = torch.tensor(MIX.means, dtype=torch.float64)
    sd = torch.tensor(MIX.stds, dtype=torch.float64) * std_scale
    phase = omega @ mu.T
    damp = torch.exp(-0.5 * sd**2 * (omega**2).sum(1, keepdim=True))
    return (w * torch.exp(1j * phase) * damp).sum(1)


def cf_distance(x: torch.Tensor, omega: torch.Tensor, blocks: int = 20) -> tuple[float, float]:
    """``(D, standard error)`` of the module docstring (D² may come out negative at the noise
    floor: D is then reported as 0)."""
    phi = mixture_cf(omega)
    n = x.shape[0]
    chunks = torch.tensor_split(x, blocks)
    sums = torch.stack([torch.exp(1j * (c @ omega.T)).sum(0) for c in chunks])
    sizes = torch.tensor([c.shape[0] for c in chunks], dtype=torch.float64)
    floor_rate = 1.0 - phi.abs() ** 2

    def d2(total: torch.Tensor, m: float) -> float:
        emp = total / m
        return float(((emp - phi).abs() ** 2 - floor_rate / m).mean())

    full = d2(sums.sum(0), n)
    jack = np.array([d2(sums.sum(0) - sums[b], n - float(sizes[b])) for b in range(blocks)])
    se2 = math.sqrt((blocks - 1) / blocks * ((jack - jack.mean()) ** 2).sum())
    d = math.sqrt(max(full, 0.0))
    se = se2 / (2 * d) if d > 0 else math.sqrt(se2)
    return d, se


def resolution(omega: torch.Tensor, n: int) -> dict:
    """D between the mixture and the mixture with 1 % wider components (closed form), and
    the statistic's noise floor at sample size n."""
    phi, wide = mixture_cf(omega), mixture_cf(omega, 1.01)
    return {"D_1pct": float(((wide - phi).abs() ** 2).mean().sqrt()),
            "floor": float(((1 - phi.abs() ** 2) / n).mean().sqrt())}


# ------------------------------------------------------------- exact Gaussian variance
def gaussian_variance(sampler: Sampler, sigma_bar: np.ndarray) -> tuple[float, float]:
    """``(mean, variance)`` of the output for Gaussian data, exactly: every state is an
    affine function of (x̄_N, z_0 … z_{N−1}); propagate the coefficient vectors."""
    s, N = sigma_bar, sigma_bar.size - 1
    mu, v = GAUSS.mean, GAUSS.std**2

    def eps_lin(m: int) -> tuple[float, float]:  # ε̄ = p x̄ + q at node m
        p = s[m] / (v + s[m] ** 2)
        return p, -p * mu

    if sampler.method == "sde-dpm++2m":
        raise ValueError("the exact recursion covers the core samplers")
    integ = sampler.method.with_seed(0)
    plan = integ.plan(L.Grid(s))
    c, k = plan.coeffs, integ.k
    # basis: [1, x̄_N, z_0 … z_{N−1}]
    x: dict[int, np.ndarray] = {N: np.zeros(N + 2)}
    x[N][1] = 1.0

    def with_eps(m: int, w: float) -> np.ndarray:
        p, q = eps_lin(m)
        out = w * p * x[m]
        out[0] += w * q
        return out

    for m in range(N, N - k + 1, -1):
        t = m - 1
        x[t] = x[m] + with_eps(m, float(plan.starter_bh[t]))
        x[t][2 + t] += float(plan.noise_std[t])
    for r in range(N - k, -1, -1):
        row = sum(float(c.a[r, j - 1]) * x[r + j] for j in range(1, k + 1))
        row = row + sum(with_eps(r + j, float(c.bh[r, j])) for j in range(1, k + 1))
        for mm in range(k):
            row[2 + r + mm] += float(c.g[r, mm])
        x[r] = row
        x.pop(r + k)
    coef = x[0]
    mean = coef[0] + coef[1] * mu
    var = coef[1] ** 2 * (v + s[-1] ** 2) + float((coef[2:] ** 2).sum())
    return float(mean), float(var)


# ------------------------------------------------------------------------- driver
def fitted_order(ns: list[int], ds: list[float], ses: list[float]) -> float | None:
    """Slope of log D against log N over the points with D > 4 standard errors (≥ 3)."""
    pts = [(math.log(n), math.log(d)) for n, d, se in zip(ns, ds, ses, strict=True)
           if d > 4 * se and d > 0]
    if len(pts) < 3:
        return None
    a = np.array(pts)
    return float(-np.polyfit(a[:, 0], a[:, 1], 1)[0])


def run_mixture(sm: Sampler, family: str, n_steps: int, n: int, seed: int,
                omega: torch.Tensor) -> dict:
    sb = S.family_grid(family, n_steps, TABLE)
    x_N = MIX.prior(n, float(sb[-1]), generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    out = sm.run(MIX.eps, sb, x_N, seed)
    d, se = cf_distance(out, omega)
    return {"sampler": sm.name, "eta": sm.eta, "family": family, "steps": n_steps, "D": d,
            "se": se, "seconds": time.perf_counter() - t0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    p.add_argument("--gauss-steps", type=int, nargs="+", default=list(GAUSS_STEPS))
    p.add_argument("--etas", type=float, nargs="+", default=list(ETAS))
    p.add_argument("--n", type=int, default=200_000, help="samples per run (test seed)")
    p.add_argument("--n-val", type=int, default=50_000, help="samples of the grid pilot")
    p.add_argument("--freq", type=int, default=128)
    p.add_argument("--seed", type=int, default=1, help="test seed (the tables)")
    p.add_argument("--val-seed", type=int, default=0, help="validation seed (grid choice)")
    p.add_argument("--families", nargs="+", default=list(S.GRID_FAMILIES))
    p.add_argument("--quick", action="store_true", help="a reduced run (the tests')")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.gauss_steps, args.etas = [10, 20, 40], [10, 20, 40], [1.0]
        args.n, args.n_val, args.freq = 4000, 2000, 32
        args.families = ["karras-7", "log-uniform"]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    omega = _frequencies(args.freq)
    t_start = time.perf_counter()
    rows, pilot, gauss = [], [], []
    for eta in args.etas:
        for sm in samplers(eta):
            best = None
            for fam in args.families:
                try:
                    r = run_mixture(sm, fam, 20, args.n_val, args.val_seed, omega)
                except ValueError as exc:  # a family that repeats a node at this N
                    print(f"  pilot {sm.name} {fam}: skipped ({exc})", flush=True)
                    continue
                pilot.append(r)
                if best is None or r["D"] < best["D"]:
                    best = r
            fam = best["family"]
            print(f"eta {eta} {sm.name}: grid {fam} (pilot D {best['D']:.3g})", flush=True)
            for n_steps in args.steps:
                r = run_mixture(sm, fam, n_steps, args.n, args.seed, omega)
                rows.append(r)
                print(f"  N {n_steps}: D {r['D']:.3g} ± {r['se']:.2g} ({r['seconds']:.0f}s)",
                      flush=True)
            if sm.method != "sde-dpm++2m":
                for n_steps in args.gauss_steps:
                    try:
                        sb = S.family_grid(fam, n_steps, TABLE)
                    except ValueError:  # a family on the training table repeats a node
                        continue
                    mean, var = gaussian_variance(sm, sb)
                    gauss.append({"sampler": sm.name, "eta": eta, "family": fam,
                                  "steps": n_steps, "mean_err": abs(mean - GAUSS.mean),
                                  "var_err": abs(var - GAUSS.std**2) / GAUSS.std**2})
    res = resolution(omega, args.n)
    record = {"config": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in vars(args).items()},
              "rows": rows, "pilot": pilot, "gauss": gauss, "resolution": res,
              "orders": {}, "gauss_orders": {}, "seconds": time.perf_counter() - t_start}
    for eta in args.etas:
        for sm in samplers(eta):
            rs = [r for r in rows if r["sampler"] == sm.name and r["eta"] == eta]
            record["orders"][f"{sm.name}|{eta}"] = fitted_order(
                [r["steps"] for r in rs], [r["D"] for r in rs], [r["se"] for r in rs])
            gs = [g for g in gauss if g["sampler"] == sm.name and g["eta"] == eta]
            if len(gs) >= 3:
                half = gs[len(gs) // 2:]
                record["gauss_orders"][f"{sm.name}|{eta}"] = float(-np.polyfit(
                    np.log([g["steps"] for g in half]),
                    np.log([max(g["var_err"], 1e-300) for g in half]), 1)[0])
    (args.out / "stochastic_toy.json").write_text(json.dumps(record, indent=1))
    (args.out / "stochastic_toy.md").write_text(render(record))
    plot(record, args.out / "stochastic_toy.png")
    return record


def render(rec: dict) -> str:
    cfg, res = rec["config"], rec["resolution"]
    steps = sorted({r["steps"] for r in rec["rows"]})
    out = ["# Stochastic samplers on closed-form laws (docs/design.md §13)", "",
           f"Gaussian mixture, {cfg['n']} samples per run (test seed {cfg['seed']}; grids "
           f"chosen at N = 20 on validation seed {cfg['val_seed']} with {cfg['n_val']} "
           f"samples), {cfg['freq']} frequencies ω ~ N(0, {OMEGA_SCALE}² I).  Cells: the "
           "characteristic-function distance D to the exact law ± its standard error.  "
           f"Resolution: the mixture with 1 % wider components lies at D = "
           f"{res['D_1pct']:.2e}; the noise floor at this n is {res['floor']:.2e} (removed "
           "from D², its standard error is what remains).", ""]
    for eta in cfg["etas"]:
        names = list(dict.fromkeys(r["sampler"] for r in rec["rows"] if r["eta"] == eta))
        table = []
        for nm in names:
            by = {r["steps"]: r for r in rec["rows"] if r["sampler"] == nm and r["eta"] == eta}
            order = rec["orders"].get(f"{nm}|{eta}")
            table.append([nm, next(iter(by.values()))["family"]]
                         + [f"{by[n]['D']:.2e} ± {by[n]['se']:.0e}" if n in by else "–"
                            for n in steps]
                         + ["–" if order is None else f"{order:.2f}"])
        out += [f"## η = {eta}", "", markdown_table(
            ["sampler", "grid"] + [f"N = {n}" for n in steps] + ["fitted order"], table), ""]
    gsteps = sorted({g["steps"] for g in rec["gauss"]})
    gtable = []
    for key, order in rec["gauss_orders"].items():
        nm, eta = key.rsplit("|", 1)
        by = {g["steps"]: g for g in rec["gauss"]
              if g["sampler"] == nm and g["eta"] == float(eta)}
        gtable.append([nm, eta] + [f"{by[n]['var_err']:.2e}" if n in by else "–"
                                   for n in gsteps] + [f"{order:.2f}"])
    out += ["## Gaussian data: exact relative variance error |Var − s²|/s²", "",
            "1-D N(0.5, 0.7²); the output law is Gaussian and its variance is computed from "
            "the linear recursion (no sampling); order fitted over the upper half of N.", "",
            markdown_table(["sampler", "η"] + [f"N = {n}" for n in gsteps] + ["order"], gtable),
            "", f"Run time {rec['seconds'] / 60:.1f} min.  Regenerate: "
            "`.venv/bin/python -m benchmarks.stochastic_toy`.", ""]
    return "\n".join(out)


def plot(rec: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    etas = rec["config"]["etas"]
    fig, axes = plt.subplots(1, len(etas) + 1, figsize=(5 * (len(etas) + 1), 4))
    axes = np.atleast_1d(axes)
    for ax, eta in zip(axes, etas, strict=False):
        for nm in dict.fromkeys(r["sampler"] for r in rec["rows"] if r["eta"] == eta):
            rs = [r for r in rec["rows"] if r["sampler"] == nm and r["eta"] == eta]
            ax.errorbar([r["steps"] for r in rs], [max(r["D"], 1e-6) for r in rs],
                        yerr=[r["se"] for r in rs], marker="o", ms=3, label=nm)
        ax.axhline(rec["resolution"]["D_1pct"], color="k", ls=":", lw=1, label="1 % wider")
        ax.set(xscale="log", yscale="log", xlabel="steps N", ylabel="CF distance D",
               title=f"Gaussian mixture, η = {eta}")
        ax.legend(fontsize=7)
    ax = axes[-1]
    for key in rec["gauss_orders"]:
        nm, eta = key.rsplit("|", 1)
        gs = [g for g in rec["gauss"] if g["sampler"] == nm and g["eta"] == float(eta)]
        ax.plot([g["steps"] for g in gs], [max(g["var_err"], 1e-16) for g in gs], marker="o",
                ms=3, label=f"{nm}, η = {eta}")
    ax.set(xscale="log", yscale="log", xlabel="steps N", ylabel="|Var − s²|/s²",
           title="Gaussian data (exact)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
