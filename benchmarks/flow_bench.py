"""Real flow-matching benchmark on the shipped digits rectified-flow model: ODE error of every
sampler against a self-converged reference, at equal NFE, with bootstrap intervals, and round
trips ``sample(invert(x_0))``.

**The ODE.**  Rectified flow ``x_σ = (1 − σ) x_0 + σ ε`` is the σ̄-ODE with ``α = 1 − σ``:
``x̄ = x/(1 − σ)``, ``σ̄ = σ/(1 − σ)``, ``dx̄/dσ̄ = ε̄`` with ``ε̂ = x + (1 − σ) v̂`` from the
velocity ``v̂ = v_θ(x, 1000 σ)`` (:func:`lmsolvers.adapters.diffusers.to_epsilon`, type
'flow').  The core samplers get ε̄ from the adapters (``DiffusionSampler`` /
``DiffusersEps`` on the model's ``FlowMatchEulerDiscreteScheduler``: t = σ·1000, at grid
nodes the stock scheduler's float32 timestep); the reference and the diffusers peers get
:meth:`FlowODE.velocity` (t = 1000 σ in float32; the model was trained on continuous σ:
:mod:`benchmarks.train_digits_flow`).  One network, so all solve the same ODE.

**Grid.**  Every sampler walks the nodes of the model's own ``FlowMatchEulerDiscreteScheduler``
with N steps (σ = linspace(1, 1/1000, N), then 0; shift 1).  Its top node σ = 1 has α = 0
(σ̄ = ∞): the core samplers enter the finite grid by the limit of the DDIM step,
``x̄_{N−1} = x̂_0 + σ̄_{N−1} ε̂`` with ``(x̂_0, ε̂)`` from
:func:`lmsolvers.adapters.diffusers.top_prediction` (one network evaluation, counted), and
run on the finite nodes of :func:`lmsolvers.adapters.schedules.schedule_from_scheduler`
(both done by ``DiffusionSampler.sample``); a
``FlowMatchEuler`` run is exactly the entry step followed by DDIM in σ̄, which the benchmark
checks against diffusers' own ``FlowMatchEulerDiscreteScheduler`` loop.  The peers
(``DPMSolverMultistepScheduler`` and ``UniPCMultistepScheduler`` with
``use_flow_sigmas=True``, ``prediction_type='flow_prediction'``, ``flow_shift=1``) get the
same σ nodes put into their ``sigmas`` (the α = 0 node included; UniPC itself moves a first
σ = 1 to 1 − 10⁻⁶, and so does :func:`peer_solve` for both, as diffusers' UniPC does to keep
log α finite) and the model's velocity as their model output.

**Reference.**  Classical RK4 on the x-space ODE ``dx/dσ = v`` from σ = 1 (α = 0 is an
ordinary point in x-space) to 0, with steps of at most ``--ref-dt`` model timesteps
(:func:`reference_nodes`: equal in σ, geometric below σ = 0.02, equal again below 10⁻³), on
every sample, checked against half the step on a subset (self-convergence; reported).
Steps of a few timesteps are needed: the network's time embedding makes v wiggle with a
period of 2π timesteps.

**Measurements.**  For ``--n`` seeded noises (256): per-sample RMS pixel error of x_0
against the reference; per sampler and NFE budget the median (and RMS) with percentile-
bootstrap 95 % intervals (same resamples for every sampler).  At a budget each sampler gets
the most FlowMatch steps N whose counted NFE fit.  Round trips on held-out digits at
``--rt-budgets``: relative error ``‖sample(invert(x_0)) − x_0‖/‖x_0‖`` per digit (median and
max), float64 and float32 state; the latent is the k noisiest finite states (the σ = 1 node
is not part of it: inverting the entry step would divide by α = 0).  Sample quality: the
digits classifier's confidence on the reference samples and on samplers' outputs.

Writes ``flow_bench.md``/``.json``, ``flow_convergence.png`` and ``flow_samples.png`` under
``--out``.  Usage: ``.venv/bin/python -m benchmarks.flow_bench [--jobs 2] [--quick]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib
import json
import math
import multiprocessing as mp
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from lmsolvers.adapters.diffusers import DiffusionSampler, to_epsilon
from lmsolvers.adapters.schedules import Schedule, schedule_from_scheduler

import lmsolvers as L
from lmsolvers.engine import CountingEps
from lmsolvers.families import obelm_landing

from . import samplers as S
from .check_digits_model import confidence_report
from .digits_classifier import DEFAULT_CLASSIFIER_PATH, load_classifier
from .digits_data import REPO_ROOT, load_digits_split, save_image_grid
from .samplers import fmt_value as _f  # short: used in every table cell
from .tables import markdown_table

MODEL = REPO_ROOT / "models" / "digits_flow"
#: ten budgets; 140 and 200 would double the run time (the network dominates it)
SWEEP_BUDGETS = (10, 12, 15, 20, 25, 30, 40, 50, 70, 100)
RT_BUDGETS = (10, 20, 50, 100)
SHAPE = (1, 8, 8)
#: the reference's steps turn from equal in σ to geometric below REF_SIGMA_C, and end with
#: equal steps from REF_SIGMA_LO (the smallest nonzero FlowMatch node at N = 1000) to 0
REF_SIGMA_C = 0.02
REF_SIGMA_LO = 1e-3
#: diffusers' UniPC moves a first flow sigma of 1 down by this to keep log α finite
TOP_NUDGE = 1e-6


# -------------------------------------------------------------------- the ODE
class FlowODE:
    """The shipped rectified-flow model: its velocity ``v(x, σ)`` in x-space (the reference
    and the diffusers peers) and, through the adapters, its samplers on the σ̄-ODE.

    ``v(x, σ) = v_θ(x, T σ)`` with ``T = num_train_timesteps`` (1000), σ continuous.  The
    core samplers run through :class:`lmsolvers.adapters.diffusers.DiffusionSampler` on the
    model's scheduler (its ``DiffusersEps``: ``ε̄(x̄, σ̄) = x + α v`` at ``x = α x̄``,
    ``α = 1/(1 + σ̄)``, timestep ``σ·T``; the entry step out of σ = 1).
    """

    def __init__(self, model_dir: Path = MODEL):
        self.unet = UNet2DModel.from_pretrained(model_dir).eval()
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(model_dir)
        self.T = float(self.scheduler.config.num_train_timesteps)

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The network's velocity at model-space ``x`` and noise level σ ∈ [0, 1]."""
        t = torch.tensor(self.T * float(sigma), dtype=torch.float32)
        return self.unet(x.float(), t).sample.to(x.dtype)

    def eps_bar(self, xbar: torch.Tensor, sigma_bar: float) -> torch.Tensor:
        """``ε̄(x̄, σ̄)`` from :meth:`velocity` (float64 x, no float32 rounding of the input in
        ``x + α v``): the ε the peers' transcriptions get, so that they and the diffusers
        peers see one function (the adapters' ``DiffusersEps`` differs from it by the model
        input's float32 rounding and, at nodes, the stock scheduler's float32 timestep)."""
        sb = float(sigma_bar)
        alpha, sigma = 1.0 / (1.0 + sb), sb / (1.0 + sb)
        x = xbar * alpha
        return to_epsilon(self.velocity(x, sigma), x, alpha, sigma, "flow")

    def schedule(self, n: int) -> Schedule:
        """The model scheduler's schedule for n FlowMatch steps (finite grid + α = 0 top)."""
        return schedule_from_scheduler(self.scheduler, n)

    def sampler(self, method: Any, n: int, state_dtype: torch.dtype = torch.float64
                ) -> DiffusionSampler:
        """The adapters' sampler of ``method`` on the model's FlowMatch schedule, n steps."""
        return DiffusionSampler(self.unet, self.scheduler, n, method=method,
                                state_dtype=state_dtype, disable_progress=True)


def reference_nodes(dt: float, T: float = 1000.0, sigma_c: float = REF_SIGMA_C,
                    sigma_lo: float = REF_SIGMA_LO, tail_steps: int = 4) -> np.ndarray:
    """Descending σ nodes of the reference, 1 → 0: steps of ``dt`` model timesteps
    (Δσ = dt/T) down to ``sigma_c``, then geometric (Δσ/σ = dt/(T σ_c), so Δσ ≤ dt/T) down to
    ``sigma_lo``, then ``tail_steps`` equal steps to 0.

    Why not uniform in log σ: the network's sinusoidal time embedding oscillates with a
    period of 2π timesteps (its highest frequency is 1 rad per timestep), so v wiggles in σ
    with period ~0.006; a step must span a few timesteps at most everywhere to resolve them
    (log-σ steps are ~17 timesteps long at σ = 0/5 with 200 steps, and did not converge).
    Below ``sigma_c`` the geometric steps keep h·|∂v/∂x| ≈ dt/(T σ_c) small where v is stiff
    (|∂v/∂x| grows like 1/σ)."""
    d = dt / T
    top = np.linspace(1.0, sigma_c, max(1, round((1.0 - sigma_c) / d)) + 1)
    k = max(1, math.ceil(math.log(sigma_c / sigma_lo) / (d / sigma_c)))
    mid = np.geomspace(sigma_c, sigma_lo, k + 1)
    tail = np.linspace(sigma_lo, 0.0, tail_steps + 1)
    return np.concatenate([top, mid[1:], tail[1:]])


def rk4_reference(ode: FlowODE, x_top: torch.Tensor, dt: float) -> tuple[torch.Tensor, int]:
    """Classical RK4 on the x-space ODE ``dx/dσ = v(x, σ)`` through
    :func:`reference_nodes` (``dt``) from noise at σ = 1 (an ordinary point in x-space,
    although α = 0 there); ``(x_0, NFE)``."""
    nodes = [float(s) for s in reference_nodes(dt)]
    calls = 0
    x = x_top
    for a, b in zip(nodes[:-1], nodes[1:], strict=True):
        h = b - a
        k1 = ode.velocity(x, a)
        k2 = ode.velocity(x + 0.5 * h * k1, a + 0.5 * h)
        k3 = ode.velocity(x + 0.5 * h * k2, a + 0.5 * h)
        k4 = ode.velocity(x + h * k3, b)
        x = x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        calls += 4
    return x, calls


# ------------------------------------------------------------------ samplers
def make_specs(names: list[str] | None = None) -> list[S.SamplerSpec]:
    """FlowMatchEuler (= DDIM in σ̄), O-BELM, the designed BELMs, the default O-BELM with a
    damped landing, DPM-Solver++(2M/3M) and UniPC-3 (bh2) on flow sigmas."""
    specs = [S.SamplerSpec("FlowMatchEuler (= DDIM)", "lm", L.ddim()),
             S.SamplerSpec("O-BELM", "lm", L.obelm())]
    # the designs cost seconds of sympy each: only those asked for
    ks = tuple(k for k in (3, 4, 5) if names is None or f"BELM-{k}" in names)
    specs += [S.SamplerSpec(f"BELM-{k}", "lm", L.belm(k)) for k in S.available_belm_ks(ks)]
    specs.append(S.SamplerSpec("O-BELM landing(0.1)", "lm", obelm_landing(0.1)))
    return S.select_specs(specs + S.peer_specs(), names)


def flow_peer_config(spec: S.SamplerSpec, shift: float = 1.0) -> dict:
    """diffusers config of a peer on flow sigmas: ``use_flow_sigmas``, ``flow_prediction``,
    ``flow_shift``, data prediction, final σ = 0, lower-order final steps."""
    cfg = dict(num_train_timesteps=1000, solver_order=spec.order, use_flow_sigmas=True,
               prediction_type="flow_prediction", flow_shift=shift, final_sigmas_type="zero",
               lower_order_final=True, thresholding=False, use_karras_sigmas=False)
    if spec.kind == "dpm":
        cfg.update(algorithm_type="dpmsolver++", solver_type="midpoint", euler_at_final=False,
                   use_lu_lambdas=False)
    elif spec.kind == "unipc":
        cfg.update(predict_x0=True, solver_type="bh2", disable_corrector=[])
    else:
        raise ValueError(f"{spec.name} is not a diffusers peer")
    return cfg


def peer_scheduler(spec: S.SamplerSpec) -> Any:
    """The configured diffusers scheduler of a peer."""
    cls = DPMSolverMultistepScheduler if spec.kind == "dpm" else UniPCMultistepScheduler
    return cls.from_config(flow_peer_config(spec))


def peer_solve(spec: S.SamplerSpec, sigmas: np.ndarray, x_start: torch.Tensor, ode: FlowODE
               ) -> tuple[torch.Tensor, int]:
    """diffusers' own ``step`` loop of a peer on the descending flow σ nodes ``sigmas``
    (first the start node, last 0), from model-space ``x_start``; ``(x_0, NFE)``.

    The scheduler is set up for ``len(sigmas) − 1`` steps, then its ``sigmas`` are replaced
    by ``sigmas`` (float64; a first σ = 1 moved to 1 − 10⁻⁶ as diffusers' UniPC does, since
    log α = −∞ there); the model output at node i is ``v(x, σ_i)``.
    """
    sig = np.asarray(sigmas, dtype=np.float64).copy()
    if sig[0] == 1.0:
        sig[0] -= TOP_NUDGE
    n = sig.size - 1
    sched = peer_scheduler(spec)
    sched.set_timesteps(n)
    sched.sigmas = torch.tensor(sig)
    sched.timesteps = torch.tensor(sig[:-1] * 1000.0)  # labels only: steps are indexed
    sched.num_inference_steps = n
    sched.set_begin_index(0)
    x = x_start
    for i, t in enumerate(sched.timesteps):
        v = ode.velocity(x, float(sig[i]))
        x = sched.step(v, t, x).prev_sample.to(x_start.dtype)
    return x, n


def run_core(spec: S.SamplerSpec, n: int, x_top: torch.Tensor, ode: FlowODE
             ) -> tuple[torch.Tensor, int]:
    """A core sampler with n FlowMatch steps from noise at σ = 1 through the adapters'
    ``DiffusionSampler`` (the entry step, then the method on the finite grid); ``(x_0, NFE)``
    (entry included, counted by :func:`nfe_of`)."""
    return ode.sampler(spec.method, n).sample(x_top), nfe_of(spec, n, ode)


def flow_sigmas(sched: Schedule) -> np.ndarray:
    """Descending σ of a schedule's nodes, the α = 0 top (σ = 1) first when it has one."""
    s = 1.0 - np.asarray(sched.grid.alphas, dtype=np.float64)[::-1]
    return np.concatenate([[1.0], s]) if sched.top_timestep is not None else s


def run(spec: S.SamplerSpec, n: int, x_top: torch.Tensor, ode: FlowODE
        ) -> tuple[torch.Tensor, int]:
    """``(x_0, NFE)`` of one sampler with n FlowMatch steps from noise ``x_top`` at σ = 1."""
    if spec.is_peer:
        return peer_solve(spec, flow_sigmas(ode.schedule(n)), x_top, ode)
    return run_core(spec, n, x_top, ode)


_NFE_CACHE: dict[tuple[str, int], int] = {}


def nfe_of(spec: S.SamplerSpec, n: int, ode: FlowODE) -> int:
    """Counted network evaluations of one run with n FlowMatch steps (zero ε, counted)."""
    key = (spec.name, n)
    if key not in _NFE_CACHE:
        if spec.is_peer:
            _NFE_CACHE[key] = n
        else:
            sched = ode.schedule(n)
            ce = CountingEps(lambda x, s: torch.zeros_like(x))
            L.sample(ce, sched.grid, spec.method, torch.zeros(1, 1, dtype=torch.float64),
                     disable=True)
            _NFE_CACHE[key] = ce.calls + (sched.top_timestep is not None)
    return _NFE_CACHE[key]


def steps_for_budget(spec: S.SamplerSpec, budget: int, ode: FlowODE) -> int | None:
    """The most FlowMatch steps N (≥ 2) whose counted NFE fit ``budget`` (None if none)."""
    k = getattr(spec.method, "k", 1) if spec.kind == "lm" else 1
    for n in range(budget, max(k, 1), -1):
        if nfe_of(spec, n, ode) <= budget:
            return n
    return None


# ------------------------------------------------------------------ the jobs
@dataclass(frozen=True)
class Job:
    """One unit of work: 'ref' (reference with m log-σ steps on samples lo:hi), 'sample'
    (a sampler at a budget on lo:hi) or 'rt' (a round trip at a budget, state dtype)."""

    kind: str
    sampler: str = ""
    budget: int = 0
    lo: int = 0
    hi: int = 0
    dt: float = 0.0
    dtype: str = "fp64"
    tag: str = ""

    def cost(self) -> float:
        if self.kind == "ref":
            return 4.0 * (len(reference_nodes(self.dt)) - 1) * (self.hi - self.lo)
        return float(self.budget) * (self.hi - self.lo) * (2 if self.kind == "rt" else 1)


_STATE: dict[str, Any] = {}


def _init(settings: dict) -> None:
    """Build the model, the samplers and the noise once per process."""
    torch.set_num_threads(settings["threads"])
    warnings.simplefilter("ignore", L.ExactnessWarning)
    ode = FlowODE(Path(settings["model_dir"]))
    specs = make_specs(settings["samplers"])
    g = torch.Generator().manual_seed(settings["seed"])
    noise = torch.randn((settings["n"], *SHAPE), generator=g, dtype=torch.float64)
    x_test, _ = load_digits_split("test")
    _STATE.update(ode=ode, specs={s.name: s for s in specs}, order=[s.name for s in specs],
                  noise=noise, x_rt=x_test[: settings["n_rt"]].double(), settings=settings)


def _work(job: Job) -> tuple[Job, dict]:
    """Run one job in this process."""
    ode: FlowODE = _STATE["ode"]
    t0 = time.time()
    if job.kind == "ref":
        x, nfe = rk4_reference(ode, _STATE["noise"][job.lo:job.hi], job.dt)
        return job, dict(x0=x.numpy(), nfe=nfe, wall=time.time() - t0)
    spec = _STATE["specs"][job.sampler]
    n = steps_for_budget(spec, job.budget, ode)
    if n is None:
        return job, dict(steps=None)
    if job.kind == "sample":
        try:
            x0, nfe = run(spec, n, _STATE["noise"][job.lo:job.hi], ode)
            x0, note = x0.numpy(), ""
        except (L.SolverInstabilityError, FloatingPointError, ValueError) as exc:
            x0, nfe, note = np.full((job.hi - job.lo, *SHAPE), np.nan), -1, str(exc)[:120]
        return job, dict(x0=x0, steps=n, nfe=nfe, wall=time.time() - t0, note=note)
    # round trip on held-out digits: the latent lives on the finite nodes
    dt = torch.float64 if job.dtype == "fp64" else torch.float32
    x0 = _STATE["x_rt"].to(dt)
    ds = ode.sampler(spec.method, n, state_dtype=dt)
    grid = ds.grid
    out: dict[str, Any] = dict(steps=n, finite_steps=grid.N,
                               amplification=float(L.amplification(spec.method, grid))
                               if spec.invertible else 1.0)
    try:
        # exact methods: the adapters' invert; FlowMatchEuler: Euler run upwards (the
        # classic approximate inversion) with the adapters' ε on the same grid
        lat = (ds.invert(x0) if spec.invertible
               else L.ddim_inversion(ds.eps, grid, x0, disable=True, context=ds.context))
        rec = ds.sample(lat)
        d = (rec.double() - x0.double()).flatten(1)
        rel = (d.norm(dim=1) / x0.double().flatten(1).norm(dim=1)).numpy()
        out.update(rel_median=float(np.median(rel)), rel_max=float(rel.max()))
    except (L.SolverInstabilityError, FloatingPointError, ValueError) as exc:
        out.update(rel_median=float("nan"), rel_max=float("nan"),
                   note=str(exc).split(";")[0][:100])
    out["wall"] = time.time() - t0
    return job, out


def run_jobs(jobs: list[Job], n_workers: int, settings: dict, label: str) -> dict[Job, dict]:
    """Run ``jobs`` (longest first) inline or in ``n_workers`` spawned processes."""
    me = importlib.import_module("benchmarks.flow_bench")
    jobs = sorted(jobs, key=lambda j: -j.cost())
    total = sum(j.cost() for j in jobs) or 1.0
    results: dict[Job, dict] = {}
    t0, done = time.time(), 0.0

    def report(job: Job, res: dict) -> None:
        nonlocal done
        results[job] = res
        done += job.cost()
        if job.kind == "ref" or len(results) % 10 == 0 or len(results) == len(jobs):
            print(f"  [{label}] {len(results)}/{len(jobs)} jobs, {100 * done / total:.0f} % "
                  f"of the work, {time.time() - t0:.0f} s", flush=True)

    if n_workers <= 1:
        if not _STATE:
            me._init(settings)
        for j in jobs:
            report(*me._work(j))
        return results
    with cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=mp.get_context("spawn"),
                                initializer=me._init, initargs=(settings,)) as pool:
        for fut in cf.as_completed([pool.submit(me._work, j) for j in jobs]):
            report(*fut.result())
    return results


# ---------------------------------------------------------------------- checks
def check_flowmatch_euler(ode: FlowODE, x_top: torch.Tensor, steps: tuple[int, ...]
                          ) -> dict[str, float]:
    """Max |diffusers FlowMatchEuler − (entry step + DDIM in σ̄, float64)| of x_0 per N:
    the conversion holds to the scheduler's float32 arithmetic."""
    out = {}
    ddim = S.SamplerSpec("DDIM", "lm", L.ddim())
    for n in steps:
        sched = FlowMatchEulerDiscreteScheduler.from_config(ode.scheduler.config)
        sched.set_timesteps(n)
        x = x_top.float()
        for i, t in enumerate(sched.timesteps):
            v = ode.velocity(x, float(sched.sigmas[i]))
            x = sched.step(v, t, x).prev_sample
        ours, _ = run_core(ddim, n, x_top, ode)
        out[f"N={n}"] = float((x.double() - ours).abs().max())
    return out


def check_peers(ode: FlowODE, x_top: torch.Tensor, steps: tuple[int, ...],
                names: list[str] | None = None) -> dict[str, Any]:
    """Max |diffusers flow-sigma peer − independent float64 transcription in σ̄| of x_0,
    both started at the first finite node (after the entry step) on the FlowMatch grid's
    finite nodes: DPM-Solver++ and UniPC on flow sigmas are the published algorithms in σ̄
    (``samplers.dpmpp_reference`` / ``unipc_reference``, the ones checked on the DDPM)."""
    out: dict[str, Any] = {}
    for spec in make_specs([nm for nm in S.PEERS if names is None or nm in names]):
        ref_fn = S.dpmpp_reference if spec.kind == "dpm" else S.unipc_reference
        cfg = peer_scheduler(spec).config
        keys = ("algorithm_type", "predict_x0", "solver_type", "solver_order", "use_flow_sigmas",
                "prediction_type", "flow_shift", "final_sigmas_type", "lower_order_final")
        row: dict[str, Any] = {"config": {k: cfg[k] for k in keys if k in cfg}}
        for n in steps:
            ds = ode.sampler(L.ddim(), n)
            grid = ds.grid
            sb = np.asarray(grid.sigma_bar, dtype=np.float64)
            xbar_top = ds.enter(x_top)
            ours, _ = peer_solve(spec, 1.0 - np.asarray(grid.alphas)[::-1],
                                 xbar_top * float(grid.alphas[-1]), ode)
            ref = ref_fn(spec.order, sb, xbar_top, ode.eps_bar)
            row[f"N={n}"] = float((ours - ref).abs().max())
        out[spec.name] = row
    return out


# ----------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=MODEL)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--budgets", type=int, nargs="+", default=list(SWEEP_BUDGETS),
                   help="NFE budgets (every sampler, every sample)")
    p.add_argument("--rt-budgets", type=int, nargs="+", default=list(RT_BUDGETS))
    p.add_argument("--n", type=int, default=256, help="seeded noises (samples)")
    p.add_argument("--ref-dt", type=float, default=2.0,
                   help="reference: largest RK4 step in model timesteps (T σ)")
    p.add_argument("--n-ref-check", type=int, default=32,
                   help="samples on which the reference is checked with half the ref-dt")
    p.add_argument("--ref-chunk", type=int, default=128)
    p.add_argument("--n-rt", type=int, default=32, help="held-out digits for round trips")
    p.add_argument("--n-check", type=int, default=16,
                   help="samples for the FlowMatchEuler and peer checks")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--samplers", nargs="*", default=None, help="subset of sampler names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="worker processes (1 thread each)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--from-json", type=Path, default=None,
                   help="only re-render the report and plots of a flow_bench.json")
    p.add_argument("--redo-checks", type=Path, default=None,
                   help="recompute the FlowMatchEuler and peer checks of a flow_bench.json "
                        "(same model, noise and budgets), then re-render it")
    p.add_argument("--quick", action="store_true",
                   help="a reduced end-to-end run (seconds): the test suite's configuration")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.budgets, args.rt_budgets, args.ref_dt = 4, [10], [10], 25.0
        args.n_ref_check, args.ref_chunk, args.n_rt, args.n_check = 2, 4, 2, 1
        args.boot, args.jobs = 200, 1
        if args.samplers is None:
            args.samplers = ["FlowMatchEuler (= DDIM)", "O-BELM", "O-BELM landing(0.1)",
                             "DPM-Solver++(2M)", "UniPC-3 (bh2)"]
    args.n_ref_check = min(args.n_ref_check, args.n)
    return args


def _json(o: Any) -> Any:
    if isinstance(o, Job):
        return asdict(o)
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; write the tables, JSON and plots; return the record."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        record = json.loads(Path(args.from_json).read_text())
        write_report(record, out)
        return record
    if args.redo_checks:
        record = json.loads(Path(args.redo_checks).read_text())
        torch.set_num_threads(args.threads)
        _STATE.clear()
        _init(dict(seed=record["config"]["seed"], n=record["config"]["n"],
                   samplers=record["samplers"], n_rt=1, model_dir=str(args.model),
                   threads=args.threads))
        record.update(_checks(record["config"], [_STATE["specs"][nm] for nm in _STATE["order"]]))
        (out / "flow_bench.json").write_text(json.dumps(record, indent=1, default=_json))
        write_report(record, out)
        return record
    torch.set_num_threads(args.threads)
    t_start = time.time()
    settings = dict(seed=args.seed, n=args.n, samplers=args.samplers, n_rt=args.n_rt,
                    model_dir=str(args.model), threads=args.threads)
    _STATE.clear()
    _init(settings)
    specs = [_STATE["specs"][nm] for nm in _STATE["order"]]
    print(f"samplers: {[s.name for s in specs]}", flush=True)
    n = args.n
    budgets = sorted(set(args.budgets))

    jobs = [Job("ref", lo=lo, hi=min(n, lo + args.ref_chunk), dt=args.ref_dt)
            for lo in range(0, n, args.ref_chunk)]
    jobs.append(Job("ref", lo=0, hi=args.n_ref_check, dt=args.ref_dt / 2, tag="check"))
    for s in specs:
        jobs += [Job("sample", s.name, b, 0, n) for b in budgets]
        if s.exact_or_ddim:
            jobs += [Job("rt", s.name, b, hi=args.n_rt, dtype=dt)
                     for b in sorted(set(args.rt_budgets)) for dt in ("fp64", "fp32")]
    print(f"{len(jobs)} jobs, ~{sum(j.cost() for j in jobs) / 1e6:.2f} M sample-NFE on "
          f"{args.jobs} process(es)", flush=True)
    res = run_jobs(jobs, args.jobs, settings, "flow")

    ref_jobs = sorted((j for j in res if j.kind == "ref" and j.tag != "check"), key=lambda j: j.lo)
    ref = np.concatenate([res[j]["x0"] for j in ref_jobs])
    check_job = next(j for j in res if j.kind == "ref" and j.tag == "check")
    diff = S.per_sample_error(res[check_job]["x0"], ref[: args.n_ref_check])
    ref_info = dict(
        method=f"classical RK4 on dx/dσ = v from σ = 1 to 0, steps of at most dt model "
               f"timesteps (equal in σ, geometric below σ = {REF_SIGMA_C:g}, 4 equal steps "
               f"below {REF_SIGMA_LO:g})",
        dt=args.ref_dt, nfe=res[ref_jobs[0]]["nfe"], check_dt=args.ref_dt / 2,
        check_nfe=res[check_job]["nfe"], n_check=args.n_ref_check,
        selfconv_rms=float(np.sqrt(np.mean(diff**2))), selfconv_median=float(np.median(diff)),
        selfconv_max=float(diff.max()),
        wall_s=sum(res[j]["wall"] for j in ref_jobs) + res[check_job]["wall"])
    print(f"reference: dt={args.ref_dt:g} vs {args.ref_dt / 2:g}: "
          f"RMS {ref_info['selfconv_rms']:.2e}, "
          f"worst {ref_info['selfconv_max']:.2e}", flush=True)

    idx = S.resample_index(n, args.boot, args.seed)
    rows = []
    for s in specs:
        for b in budgets:
            r = res[Job("sample", s.name, b, 0, n)]
            row = dict(sampler=s.name, budget=b, steps=r.get("steps"))
            if r.get("steps") is not None:
                row.update(S.summarise_errors(S.per_sample_error(r["x0"], ref), idx),
                           nfe=r["nfe"], wall_s=r["wall"], note=r.get("note", ""))
            rows.append(row)
    rt_rows = sorted((dict(sampler=j.sampler, budget=j.budget, dtype=j.dtype, **r)
                      for j, r in res.items() if j.kind == "rt" and r.get("steps") is not None),
                     key=lambda r: (_STATE["order"].index(r["sampler"]), r["budget"], r["dtype"]))

    # ---- sample quality: the classifier on the reference samples and on samplers' outputs
    clf = load_classifier(DEFAULT_CLASSIFIER_PATH, dtype=torch.float64)
    x_test, _ = load_digits_split("test")
    quality = [dict(what="held-out real digits", **_quality(clf, x_test.double()))]
    quality.append(dict(what=f"flow model, reference ODE solution ({n} samples)",
                        **_quality(clf, torch.from_numpy(ref))))
    b_q = 20 if 20 in budgets else budgets[0]
    for nm in ("FlowMatchEuler (= DDIM)", "O-BELM", "O-BELM landing(0.1)",
               "DPM-Solver++(2M)"):
        r = res.get(Job("sample", nm, b_q, 0, n))
        if r is not None and r.get("steps") is not None and np.isfinite(r["x0"]).all():
            quality.append(dict(what=f"{nm}, NFE {r['nfe']}",
                                **_quality(clf, torch.from_numpy(r["x0"]))))
    save_image_grid(torch.from_numpy(ref[:64]).float(), out / "flow_samples.png",
                    title="digits rectified flow: reference ODE samples (seed "
                          f"{args.seed})")

    checks = _checks(vars(args), specs)

    summary = json.loads((Path(args.model) / "train_summary.json").read_text()) \
        if (Path(args.model) / "train_summary.json").exists() else {}
    record = dict(config=vars(args) | {"out": str(out), "model": str(args.model)},
                  ref=ref_info, rows=rows, rt_rows=rt_rows, quality=quality, **checks,
                  samplers=_STATE["order"],
                  train_summary=summary, elapsed_s=time.time() - t_start)
    (out / "flow_bench.json").write_text(json.dumps(record, indent=1, default=_json))
    write_report(record, out)
    print(f"wrote {out / 'flow_bench.md'} in {record['elapsed_s']:.0f} s", flush=True)
    return record


def _checks(cfg: dict, specs: list[S.SamplerSpec]) -> dict[str, Any]:
    """The FlowMatchEuler and peer checks on the first ``n_check`` noises."""
    ode: FlowODE = _STATE["ode"]
    x_chk = _STATE["noise"][: cfg["n_check"]]
    chk_steps = tuple(b for b in (10, 20, 50) if b <= max(cfg["budgets"]))
    return dict(flowmatch_check=check_flowmatch_euler(ode, x_chk, chk_steps),
                peer_check=check_peers(ode, x_chk, chk_steps, [s.name for s in specs])
                if any(s.is_peer for s in specs) else {})


@torch.no_grad()
def _quality(clf: Any, x: torch.Tensor) -> dict[str, Any]:
    """Classifier statistics of images in [−1, 1]: the fraction with max softmax ≥ 0.9
    (``check_digits_model.confidence_report``), the mean max softmax, the class histogram."""
    frac, hist = confidence_report(clf, x)
    conf = clf(x.to(next(clf.parameters()).dtype)).softmax(dim=1).max(dim=1).values
    return dict(frac_confident=frac, mean_confidence=float(conf.mean()), histogram=hist,
                n=int(x.shape[0]))


# ------------------------------------------------------------------ reporting
def stats_table(rows: list[dict], budgets: list[int], key: str = "median") -> str:
    """Samplers × budgets, ``value [95 % interval]``, the best per column in bold."""
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    by = {(r["sampler"], r["budget"]): r for r in rows}
    best = {b: min((by[(nm, b)][key] for nm in names if by.get((nm, b), {}).get("steps")),
                   default=None) for b in budgets}
    return markdown_table(["sampler", *(f"NFE {b}" for b in budgets)], (
        [nm, *(S.stats_cell(by.get((nm, b)), key, bold=by.get((nm, b), {}).get(key) == best[b])
               for b in budgets)] for nm in names))


def render_markdown(rec: dict) -> str:
    """The markdown report of :func:`main`'s record."""
    cfg, ref = rec["config"], rec["ref"]
    budgets = sorted(set(cfg["budgets"]))
    n = cfg["n"]
    ts = rec.get("train_summary") or {}
    lines = [
        "# Digits rectified flow: samplers at equal NFE against a self-converged reference",
        "",
        f"Model `models/digits_flow` (velocity prediction, {ts.get('sigma_density', '?')} σ, "
        f"{ts.get('steps', '?')} training steps; `benchmarks/train_digits_flow.py`). {n} seeded "
        f"noises (seed {cfg['seed']}), float64 solver state, fp32 network, every sampler fed "
        "the same network (t = 1000 σ) on the nodes of the model's "
        "`FlowMatchEulerDiscreteScheduler` with N steps (σ = linspace(1, 0.001, N), then 0). "
        "Core samplers: one entry step out of σ = 1 (α = 0), `x̄ = x̂_0 + σ̄ ε̂`, then the "
        "method on the finite σ̄ nodes; peers: diffusers' `step` loop on the same σ nodes "
        "(`use_flow_sigmas=True`, `prediction_type='flow_prediction'`, `flow_shift=1`; the top "
        "σ = 1 moved to 1 − 1e-6 as diffusers' UniPC does).",
        "",
        f"**Reference**: {ref['method']}; dt = {ref['dt']:g} ({ref['nfe']} NFE) on all "
        f"samples. Self-convergence against dt = {ref['check_dt']:g} ({ref['check_nfe']} NFE) on "
        f"{ref['n_check']} samples: per-sample RMS difference median {ref['selfconv_median']:.1e}, "
        f"RMS **{ref['selfconv_rms']:.1e}**, worst {ref['selfconv_max']:.1e}.",
        "",
        f"**Error** of a sample: RMS over its pixels (images in [−1, 1]) against the "
        f"reference. Cells: median over the {n} samples [95 % percentile-bootstrap interval, "
        f"{cfg['boot']} resamples]; best median per column in bold.",
        "",
        "## Median per-sample error",
        "",
        stats_table(rec["rows"], budgets),
        "",
        "RMS over samples of the per-sample error [95 % interval]:",
        "",
        stats_table(rec["rows"], budgets, key="rms"),
        "",
        "FlowMatch steps N (counted NFE) at each budget:",
        "",
        markdown_table(["sampler", *(f"NFE {b}" for b in budgets)], (
            [nm, *(_steps_cell(rec["rows"], nm, b) for b in budgets)]
            for nm in dict.fromkeys(r["sampler"] for r in rec["rows"]))),
        "",
    ]
    rt_b = sorted(set(cfg["rt_budgets"]))
    rt = {(r["sampler"], r["budget"], r["dtype"]): r for r in rec["rt_rows"]}
    rt_names = list(dict.fromkeys(r["sampler"] for r in rec["rt_rows"]))

    def rt_cell(nm: str, b: int) -> str:
        a, c = rt.get((nm, b, "fp64")), rt.get((nm, b, "fp32"))
        if a is None:
            return "—"
        amp = f" [{a['amplification']:.0e}]" if a["amplification"] > 1 else ""
        return (f"{_f(a['rel_median'], '.1e')} ({_f(a['rel_max'], '.1e')}) / "
                f"{_f(c['rel_median'] if c else None, '.1e')}{amp}")

    lines += [f"## Round trip `sample(invert(x_0))` on {cfg['n_rt']} held-out digits", "",
              "Relative error ‖x̃_0 − x_0‖/‖x_0‖: median (max) with a float64 state / median "
              "with a float32 state (fp32 network); backward amplification of the parasitic "
              "modes in brackets. The latent is the k noisiest finite states (N − 1 finite "
              "steps below the α = 0 node). FlowMatchEuler: the classic (approximate) "
              "inversion, Euler run upwards.", "",
              markdown_table(["sampler", *(f"NFE {b}" for b in rt_b)],
                             ([nm, *(rt_cell(nm, b) for b in rt_b)] for nm in rt_names))]
    notes = [f"- {r['sampler']} NFE {r['budget']} {r['dtype']}: {r['note']}"
             for r in rec["rt_rows"] if r.get("note")]
    if notes:
        lines += ["", "Failed round trips:", *notes]
    lines += ["", "## Sample quality (digits classifier)", "",
              "Fraction of images whose classifier max softmax is ≥ 0.9, mean max softmax, "
              "and the predicted-class histogram (0–9):", "",
              markdown_table(["images", "max softmax ≥ 0.9", "mean max softmax", "classes 0–9"],
                             ([q["what"], f"{q['frac_confident']:.1%}",
                               f"{q['mean_confidence']:.3f}",
                               " ".join(str(h) for h in q["histogram"])]
                              for q in rec["quality"])),
              "", "Sample grid: `flow_samples.png` (reference ODE solutions).", "",
              "## Checks", "",
              "diffusers' `FlowMatchEulerDiscreteScheduler` loop against the entry step + "
              "DDIM in σ̄ (float64), max |difference| of x_0 on "
              f"{cfg['n_check']} samples (the scheduler steps in float32): "
              + ", ".join(f"{k}: {v:.1e}" for k, v in rec["flowmatch_check"].items()) + "."]
    if rec["peer_check"]:
        steps = [k for k in next(iter(rec["peer_check"].values())) if k.startswith("N=")]
        lines += ["", "Peers on flow sigmas against independent float64 transcriptions of the "
                  "published algorithms in σ̄ (`samplers.dpmpp_reference`, "
                  "`samplers.unipc_reference`), both started at the first finite node, max "
                  "|difference| of x_0 (DPM-Solver++ steps in float32):", "",
                  markdown_table(["peer", "config", *steps], (
                      [nm, ", ".join(f"{k}={v}" for k, v in row["config"].items()),
                       *(f"{row[s]:.1e}" for s in steps)]
                      for nm, row in rec["peer_check"].items()))]
    lines += ["", f"Run time {rec['elapsed_s'] / 60:.1f} min ({cfg['jobs']} process(es)). "
              "Regenerate: `.venv/bin/python -m benchmarks.flow_bench` (or `make bench`).", ""]
    return "\n".join(lines)


def _steps_cell(rows: list[dict], nm: str, b: int) -> str:
    r = next((r for r in rows if r["sampler"] == nm and r["budget"] == b), None)
    return "—" if r is None or r.get("steps") is None else f"{r['steps']} ({r['nfe']})"


def write_report(record: dict, out: Path) -> None:
    """``flow_bench.md`` and ``flow_convergence.png``."""
    (out / "flow_bench.md").write_text(render_markdown(record))
    S.plot_convergence(record["rows"], out / "flow_convergence.png",
                       title="digits rectified flow, FlowMatch grid: per-sample RMS error vs "
                             "the RK4 reference (median, 95 % bootstrap band, "
                             f"{record['config']['n']} samples)")


if __name__ == "__main__":
    # run as the package module, so that worker processes and this one share its state
    importlib.import_module("benchmarks.flow_bench").main()
