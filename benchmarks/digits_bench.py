"""Real-model benchmark on the shipped digits DDPM: ODE error of every sampler against a
self-converged reference, at equal NFE, with bootstrap intervals.

**The ODE.**  ``dx̄/dσ̄ = ε̄(x̄, σ̄) = ε_θ(α x̄, t(σ̄))`` with ``α = 1/sqrt(1 + σ̄²)`` and
``t(σ̄)`` the training timestep of σ̄: exact integers on the training table, a cubic
spline in log σ̄ between them (0 below σ̄(t = 0)).  Every sampler, peers included, is fed
this one ε (:class:`DigitsODE`), so all of them solve the same ODE.  (The network wiggles
in t with a period of a few timesteps, so between training timesteps any solver that
lands there resolves those wiggles; a piecewise-linear t(σ̄) would add kinks.)

**Reference.**  Classical RK4 in u = log σ̄ (:func:`rk4_log_sigma`) with its nodes on
every ``m``-th training timestep from t = 999 to 0, then 4 RK4 steps in σ̄ from σ̄(0) to
σ̄ = 0: ``m = 2`` (500 + 4 steps, 2016 NFE) on every sample, checked against ``m = 1``
(1000 + 4 steps) on a subset; the RMS difference is reported.

**Measurements.**  For ``--n`` seeded noises (512): per-sample RMS pixel error of x_0
against the reference; per sampler and NFE the median and the RMS of those errors, each
with a percentile-bootstrap 95 % interval (``--boot`` resamples, seeded, the same
resamples for every sampler).  At a budget each sampler gets the most steps whose
counted NFE fit (``samplers.steps_for_budget``).  Also: a grid-family pilot
(``samplers.GRID_FAMILIES``, NFE 20, first ``--n-pilot`` samples) choosing each
sampler's best family, which is then run on the full set; a convergence sweep on the
trailing grid over ``--sweep`` budgets (first ``--n-pilot`` samples); the Fréchet
distance to held-out digits in classifier features; round trips
``sample(invert(x_0))`` on held-out digits with a float64 state and all float32; a
check that the diffusers peers are the published algorithms.

Writes ``digits_bench.md``/``.json``/``.png``, ``digits_convergence.png`` and one
sample grid per sampler under ``--out``.  ``--jobs`` worker processes (one thread
each) share the work.  Usage: ``.venv/bin/python -m benchmarks.digits_bench
[--jobs 2] [--quick]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
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
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from lmsolvers.adapters.diffusers import alphas_cumprod_from_config
from scipy import linalg
from scipy.interpolate import CubicSpline

import lmsolvers as L
from lmsolvers.grid import vp_alpha

from . import samplers as S
from .digits_classifier import DEFAULT_CLASSIFIER_PATH, load_classifier
from .digits_data import REPO_ROOT, load_digits_split, save_image_grid
from .samplers import fmt_value as _f  # short: used in every table cell
from .tables import markdown_table

MODEL = REPO_ROOT / "models" / "digits_ddpm"
TABLE_BUDGETS = (10, 20, 50, 100)
SWEEP_BUDGETS = (10, 12, 15, 20, 25, 30, 40, 50, 70, 100, 140, 200)
SHAPE = (1, 8, 8)


# -------------------------------------------------------------------- the ODE
class DigitsODE:
    """``ε̄(x̄, σ̄)`` of the shipped digits DDPM at any σ̄ ≥ 0 (float64 or float32 state).

    The network runs in float32 on ``α x̄`` at the timestep ``t(σ̄)``: the training
    timestep where σ̄ is on the training table, a cubic spline of t in log σ̄ between,
    0 below σ̄(t = 0).  ``sbar_table`` holds σ̄ of t = 0..T−1.
    """

    def __init__(self, model_dir: Path = MODEL):
        self.unet = UNet2DModel.from_pretrained(model_dir).eval()
        self.ddpm_config = {k: v for k, v in DDPMScheduler.from_pretrained(model_dir).config.items()
                            if not k.startswith("_")}
        ac = alphas_cumprod_from_config(self.ddpm_config)
        self.sbar_table = np.sqrt((1.0 - ac) / ac)
        self.log_sbar = np.log(self.sbar_table)
        self.T = ac.size
        self._t_of = CubicSpline(self.log_sbar, np.arange(self.T, dtype=np.float64))
        self._node = {float(s): float(t) for t, s in enumerate(self.sbar_table)}
        #: the scheduler a diffusers user of this model would sample with (trailing, σ = 0)
        self.scheduler = DPMSolverMultistepScheduler.from_config(
            S.peer_config(S.SamplerSpec("DPM-Solver++(2M)", "dpm"), self.ddpm_config))

    def timestep(self, sigma_bar: float) -> float:
        """The model timestep of σ̄ (exact on the table, spline between, clamped)."""
        t = self._node.get(float(sigma_bar))
        if t is not None:
            return t
        if sigma_bar <= self.sbar_table[0]:
            return 0.0
        if sigma_bar >= self.sbar_table[-1]:
            return float(self.T - 1)
        t = float(self._t_of(math.log(sigma_bar)))
        return float(round(t)) if abs(t - round(t)) < 1e-9 else t

    #: the dtype the network runs in (the shipped weights are float32; :meth:`in_float64`)
    net_dtype = torch.float32

    def in_float64(self) -> DigitsODE:
        """The same ε with the network in float64 (a float64 copy of the same weights): the
        network's float32 rounding of its input no longer decides a round trip's last bits
        (``benchmarks/network_precision.py``)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.unet = type(self.unet).from_config(self.unet.config).double().eval()
        other.unet.load_state_dict({k: v.double() for k, v in self.unet.state_dict().items()})
        other.net_dtype = torch.float64
        return other

    @torch.no_grad()
    def __call__(self, xbar: torch.Tensor, sigma_bar: float) -> torch.Tensor:
        a = float(vp_alpha(sigma_bar))
        t = torch.tensor(self.timestep(float(sigma_bar)), dtype=self.net_dtype)
        return self.unet((xbar * a).to(self.net_dtype), t).sample.to(xbar.dtype)


def rk4_log_sigma(eps, log_sigma_nodes: np.ndarray, xbar: torch.Tensor, sigma_tail: float = 0.0,
                  tail_steps: int = 4) -> tuple[torch.Tensor, int]:
    """Classical RK4 in ``u = log σ̄`` (``dx̄/du = σ̄ ε̄``) through the decreasing nodes
    ``log_sigma_nodes``, then ``tail_steps`` RK4 steps in σ̄ from the last node down to
    ``sigma_tail`` (σ̄ = 0 cannot be reached in log σ̄).  Returns ``(x̄, NFE)``."""
    calls = 0

    def f(x, u):
        nonlocal calls
        calls += 1
        s = math.exp(u)
        return s * eps(x, s)

    def g(x, s):
        nonlocal calls
        calls += 1
        return eps(x, s)

    def rk4(fun, x, nodes):
        for a, b in zip(nodes[:-1], nodes[1:], strict=True):
            h = b - a
            k1 = fun(x, a)
            k2 = fun(x + 0.5 * h * k1, a + 0.5 * h)
            k3 = fun(x + 0.5 * h * k2, a + 0.5 * h)
            k4 = fun(x + h * k3, b)
            x = x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        return x

    x = rk4(f, xbar, [float(u) for u in log_sigma_nodes])
    s_last = math.exp(float(log_sigma_nodes[-1]))
    if tail_steps > 0:
        x = rk4(g, x, list(np.linspace(s_last, sigma_tail, tail_steps + 1)))
    return x, calls


def reference_nodes(ode: DigitsODE, m: int) -> np.ndarray:
    """log σ̄ of every m-th training timestep from T−1 down to 0 (both included)."""
    ts = list(range(ode.T - 1, -1, -m))
    if ts[-1] != 0:
        ts.append(0)
    return ode.log_sbar[ts]


# ------------------------------------------------------------------ the jobs
@dataclass(frozen=True)
class Job:
    """One unit of work: ``kind`` 'sample' (a sampler on samples lo:hi of seed's noise),
    'ref' (the reference with spacing m on lo:hi) or 'rt' (a round trip)."""

    kind: str
    sampler: str = ""
    family: str = "trailing"
    budget: int = 0
    lo: int = 0
    hi: int = 0
    seed: int = 0
    m: int = 0
    dtype: str = "fp64"
    tag: str = ""

    def cost(self) -> float:
        if self.kind == "ref":
            return 4.0 * (1000 / self.m) * (self.hi - self.lo)
        return float(self.budget) * (self.hi - self.lo) * (4 if self.kind == "rt" else 1)


_STATE: dict[str, Any] = {}


def _init(settings: dict) -> None:
    """Build the model, ε and the samplers once per process."""
    torch.set_num_threads(settings["threads"])
    # BDIA(0.5) & co. warn that their inversion is inexact: the round-trip table says it
    warnings.simplefilter("ignore", L.ExactnessWarning)
    ode = DigitsODE(Path(settings["model_dir"]))
    default, note = (None, "not requested")
    if settings["default_row"]:
        default, note = S.default_spec(ode.unet, ode.scheduler)
    specs = S.make_specs(names=settings["samplers"], default=default)
    x_test, _ = load_digits_split("test")
    _STATE.update(ode=ode, specs={s.name: s for s in specs}, order=[s.name for s in specs],
                  default_note=note, settings=settings, noise={},
                  x_rt=x_test[: settings["n_rt"]].double())


def _noise(seed: int) -> torch.Tensor:
    cache = _STATE["noise"]
    if seed not in cache:
        g = torch.Generator().manual_seed(seed)
        cache[seed] = torch.randn((_STATE["settings"]["n"], *SHAPE), generator=g,
                                  dtype=torch.float64)
    return cache[seed]


def grid_for(spec: S.SamplerSpec, family: str, n: int) -> np.ndarray:
    """σ̄ nodes of ``spec`` with n steps on ``family`` (or on its own grid)."""
    if spec.grid_fn is not None:
        return spec.grid_fn(n)
    return S.family_grid(family, n, _STATE["ode"].sbar_table)


def _work(job: Job) -> tuple[Job, dict]:
    """Run one job in this process (a worker, or the main process with ``--jobs 1``)."""
    ode: DigitsODE = _STATE["ode"]
    t0 = time.time()
    if job.kind == "ref":
        x_T = _noise(job.seed)[job.lo:job.hi]
        nodes = reference_nodes(ode, job.m)
        x, nfe = rk4_log_sigma(ode, nodes, x_T / float(vp_alpha(ode.sbar_table[-1])))
        return job, dict(x0=x.numpy(), nfe=nfe, wall=time.time() - t0)
    spec = _STATE["specs"][job.sampler]
    n = S.steps_for_budget(spec, job.budget)
    if n is None:
        return job, dict(steps=None)
    sb = grid_for(spec, job.family, n)
    if job.kind == "sample":
        x_T = _noise(job.seed)[job.lo:job.hi]
        try:
            x0, nfe = S.run(spec, sb, x_T / float(vp_alpha(sb[-1])), ode)
            x0 = x0.numpy()
            note = ""
        except (L.SolverInstabilityError, FloatingPointError, ValueError) as exc:
            x0, nfe, note = np.full((job.hi - job.lo, *SHAPE), np.nan), -1, str(exc)[:120]
        return job, dict(x0=x0, steps=n, nfe=nfe, wall=time.time() - t0, note=note)
    # round trip on held-out digits, trailing grid (or the spec's own)
    dt = torch.float64 if job.dtype == "fp64" else torch.float32
    x0 = _STATE["x_rt"].to(dt)
    grid = L.Grid(sb)
    out = dict(steps=n, amplification=float(L.amplification(spec.method, grid))
               if spec.invertible else 1.0)
    try:
        if spec.invertible:
            lat = L.invert(ode, grid, spec.method, x0, disable=True)
        else:
            lat = L.ddim_inversion(ode, grid, x0, disable=True)
        rec = L.sample(ode, grid, spec.method, lat, disable=True)
        d = rec.double() - x0.double()
        per = d.pow(2).flatten(1).mean(1).sqrt()
        out.update(rms=float(d.pow(2).mean().sqrt()), max=float(d.abs().max()),
                   worst_sample=float(per.max()))
    except (L.SolverInstabilityError, FloatingPointError, ValueError) as exc:
        out.update(rms=float("nan"), max=float("nan"), note=str(exc).split(";")[0][:100])
    out["wall"] = time.time() - t0
    return job, out


class Runner:
    """Runs jobs (longest first) in ``n_workers`` spawned processes that live across
    phases, or inline for one worker.  A context manager."""

    def __init__(self, n_workers: int, settings: dict):
        self.n_workers, self.settings, self.pool = n_workers, settings, None
        self.me = importlib.import_module("benchmarks.digits_bench")
        if n_workers > 1:
            self.pool = cf.ProcessPoolExecutor(
                max_workers=n_workers, mp_context=mp.get_context("spawn"),
                initializer=self.me._init, initargs=(settings,))

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def run(self, jobs: list[Job], label: str) -> dict[Job, dict]:
        jobs = sorted(jobs, key=lambda j: -j.cost())
        results: dict[Job, dict] = {}
        t0, done = time.time(), 0.0
        total = sum(j.cost() for j in jobs) or 1.0

        def report(job: Job, res: dict) -> None:
            nonlocal done
            results[job] = res
            done += job.cost()
            if job.kind == "ref" or len(results) % 25 == 0 or len(results) == len(jobs):
                print(f"  [{label}] {len(results)}/{len(jobs)} jobs, "
                      f"{100 * done / total:.0f} % of the work, {time.time() - t0:.0f} s",
                      flush=True)

        if self.pool is None:
            for j in jobs:
                report(*self.me._work(j))
        else:
            for fut in cf.as_completed([self.pool.submit(self.me._work, j) for j in jobs]):
                report(*fut.result())
        return results


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
    p.add_argument("--budgets", type=int, nargs="+", default=list(TABLE_BUDGETS),
                   help="NFE budgets of the tables (full sample set)")
    p.add_argument("--sweep", type=int, nargs="+", default=list(SWEEP_BUDGETS),
                   help="NFE budgets of the convergence sweep (trailing grid, pilot subset)")
    p.add_argument("--n", type=int, default=512, help="seeded noises (samples) per cell")
    p.add_argument("--n-pilot", type=int, default=128,
                   help="first samples used by the grid pilot and the sweep")
    p.add_argument("--pilot-budget", type=int, default=20)
    p.add_argument("--families", nargs="+", default=list(S.GRID_FAMILIES))
    p.add_argument("--ref-m", type=int, default=2,
                   help="reference: RK4 nodes on every m-th training timestep")
    p.add_argument("--ref-check-m", type=int, default=1, help="the finer check of the reference")
    p.add_argument("--n-ref-check", type=int, default=64,
                   help="samples on which the finer check runs")
    p.add_argument("--ref-chunk", type=int, default=128)
    p.add_argument("--load-reference", type=Path, default=None,
                   help="reuse a reference saved by an earlier run (digits_bench.reference.npz) "
                        "if it was made with the same model, noise and settings")
    p.add_argument("--n-rt", type=int, default=32, help="held-out digits for round trips")
    p.add_argument("--extra-seeds", type=int, default=2,
                   help="extra noise seeds for the FD run-to-run spread (O-BELM, DDIM, NFE 20)")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples (intervals)")
    p.add_argument("--fd-boot", type=int, default=50, help="bootstrap resamples for FD s.d.")
    p.add_argument("--n-peer-check", type=int, default=16)
    p.add_argument("--samplers", nargs="*", default=None, help="subset of sampler names")
    p.add_argument("--no-default-row", action="store_true",
                   help="skip the DiffusionSampler default hook")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="worker processes (1 thread each)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge-into", type=Path, default=None,
                   help="run only --samplers and put their rows into this digits_bench.json "
                        "(same settings; use --load-reference), e.g. to add 'default (ours)'")
    p.add_argument("--from-json", type=Path, default=None,
                   help="only re-render the report and plots of a digits_bench.json")
    p.add_argument("--quick", action="store_true",
                   help="a reduced end-to-end run (seconds): the test suite's configuration")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.n_pilot, args.budgets, args.sweep = 12, 8, [10], [10, 20]
        args.pilot_budget, args.families = 10, ["trailing", "trailing-split", "karras-5"]
        args.ref_m, args.ref_check_m, args.n_ref_check, args.ref_chunk = 100, 50, 4, 12
        args.n_rt, args.extra_seeds, args.boot, args.fd_boot = 3, 1, 200, 3
        args.n_peer_check, args.jobs = 2, 1
        if args.samplers is None:
            args.samplers = ["DDIM", "O-BELM", "EDICT(0.93)", "EDICT(0.93, alt)", "BELM-3",
                             "DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC-3 (bh2)"]
    if args.samplers is not None and "default (ours)" not in args.samplers:
        args.no_default_row = True  # the probe designs grids: skip it when not wanted
    args.n_pilot = min(args.n_pilot, args.n)
    args.n_ref_check = min(args.n_ref_check, args.n)
    return args


def _model_digest(model_dir: Path = MODEL) -> str:
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(model_dir.glob("*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def reference_key(args: argparse.Namespace) -> dict:
    """What a saved reference must have been made with to be reused."""
    return dict(model=_model_digest(), seed=args.seed, n=args.n, ref_m=args.ref_m,
                ref_check_m=args.ref_check_m, n_ref_check=args.n_ref_check,
                ode="spline-t-v1", torch=torch.__version__)


def save_reference(path: Path, ref: np.ndarray, info: dict, key: dict) -> None:
    np.savez_compressed(path, ref=ref, info=json.dumps(info), key=json.dumps(key))


def load_reference(path: Path, key: dict) -> tuple[np.ndarray, dict] | None:
    """``(ref, info)`` from ``path`` if its key matches ``key`` (else None, with a note)."""
    try:
        z = np.load(path)
        saved = json.loads(str(z["key"]))
    except (OSError, KeyError, ValueError) as exc:
        print(f"reference not loaded ({exc}); recomputing", flush=True)
        return None
    if saved != key:
        diff = {k: (saved.get(k), v) for k, v in key.items() if saved.get(k) != v}
        print(f"reference at {path} was made differently {diff}; recomputing", flush=True)
        return None
    info = json.loads(str(z["info"]))
    info["loaded_from"] = str(path)
    return z["ref"], info


def _reference_from(res: dict, args: argparse.Namespace, ode: DigitsODE
                    ) -> tuple[np.ndarray, dict]:
    """The reference from the 'ref' jobs' results, and its self-convergence figures."""
    ref_jobs = sorted((j for j in res if j.kind == "ref" and j.tag != "check"),
                      key=lambda j: j.lo)
    ref = np.concatenate([res[j]["x0"] for j in ref_jobs])
    check_job = next(j for j in res if j.kind == "ref" and j.tag == "check")
    diff = S.per_sample_error(res[check_job]["x0"], ref[: args.n_ref_check])
    info = dict(
        method="classical RK4 in log σ̄, nodes on every m-th training timestep, "
               "then 4 RK4 steps in σ̄ to 0",
        m=args.ref_m, steps=len(reference_nodes(ode, args.ref_m)) - 1 + 4,
        nfe=res[ref_jobs[0]]["nfe"], check_m=args.ref_check_m,
        check_steps=len(reference_nodes(ode, args.ref_check_m)) - 1 + 4,
        check_nfe=res[check_job]["nfe"], n_check=args.n_ref_check,
        selfconv_rms=float(np.sqrt(np.mean(diff**2))), selfconv_max=float(diff.max()),
        wall_s=sum(res[j]["wall"] for j in ref_jobs) + res[check_job]["wall"])
    return ref, info


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; write tables, JSON and plots; return the record."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        record = json.loads(Path(args.from_json).read_text())
        write_report(record, out)
        return record
    torch.set_num_threads(args.threads)
    t_start = time.time()
    settings = dict(seed=args.seed, n=args.n, samplers=args.samplers, n_rt=args.n_rt,
                    model_dir=str(MODEL), default_row=not args.no_default_row,
                    threads=args.threads)
    _init(settings)
    ode: DigitsODE = _STATE["ode"]
    specs = [_STATE["specs"][nm] for nm in _STATE["order"]]
    print(f"samplers: {[s.name for s in specs]}; default row: {_STATE['default_note']}",
          flush=True)
    n, npl, seed = args.n, args.n_pilot, args.seed

    # ---- phase 1: reference, tables (trailing), sweep, pilot, seeds, round trips
    jobs: list[Job] = []
    ref_key = reference_key(args)
    loaded = load_reference(args.load_reference, ref_key) if args.load_reference else None
    if loaded is None:
        for lo in range(0, n, args.ref_chunk):
            jobs.append(Job("ref", lo=lo, hi=min(n, lo + args.ref_chunk), seed=seed,
                            m=args.ref_m))
        jobs.append(Job("ref", lo=0, hi=args.n_ref_check, seed=seed, m=args.ref_check_m,
                        tag="check"))
    else:
        print(f"reference loaded from {args.load_reference}", flush=True)
    full_budgets = sorted(set(args.budgets))
    for s in specs:
        for b in full_budgets:
            jobs.append(Job("sample", s.name, "trailing", b, 0, n, seed))
        for b in sorted(set(args.sweep) - set(full_budgets)):
            jobs.append(Job("sample", s.name, "trailing", b, 0, npl, seed))
        if s.grid_fn is None:
            for fam in args.families:
                if fam == "trailing" and args.pilot_budget in full_budgets:
                    continue
                if fam == "trailing" and args.pilot_budget in args.sweep:
                    continue
                jobs.append(Job("sample", s.name, fam, args.pilot_budget, 0, npl, seed))
        if s.exact_or_ddim:
            for b in full_budgets:
                for dt in ("fp64", "fp32"):
                    jobs.append(Job("rt", s.name, "trailing", b, dtype=dt,
                                    hi=args.n_rt))
    b_seed = 20 if 20 in full_budgets else full_budgets[0]
    for s in specs:
        if s.name in ("O-BELM", "DDIM"):
            for extra in range(1, args.extra_seeds + 1):
                jobs.append(Job("sample", s.name, "trailing", b_seed, 0, n,
                                seed + 1000 * extra, tag="seed"))
    print(f"phase 1: {len(jobs)} jobs, ~{sum(j.cost() for j in jobs) / 1e6:.2f} M sample-NFE, "
          f"on {args.jobs} process(es)", flush=True)
    with Runner(args.jobs, settings) as runner:
        res = runner.run(jobs, "phase 1")
        if loaded is None:
            ref, ref_info = _reference_from(res, args, ode)
            save_reference(out / "digits_bench.reference.npz", ref, ref_info, ref_key)
        else:
            ref, ref_info = loaded
        print(f"reference: RK4 log σ̄ m={args.ref_m} ({ref_info['nfe']} NFE) vs "
              f"m={args.ref_check_m} on {args.n_ref_check}: RMS {ref_info['selfconv_rms']:.2e}, "
              f"worst sample {ref_info['selfconv_max']:.2e}", flush=True)

        idx_full = S.resample_index(n, args.boot, seed)
        idx_pilot = S.resample_index(npl, args.boot, seed + 1)

        def stats_of(j: Job, r: dict, m: int) -> dict:
            row = dict(sampler=j.sampler, family=j.family, budget=j.budget, steps=r.get("steps"))
            if r.get("steps") is None:
                return row
            err = S.per_sample_error(r["x0"][:m], ref[:m])
            row.update(S.summarise_errors(err, idx_full if m == n else idx_pilot),
                       nfe=r["nfe"], wall_s=r["wall"], note=r.get("note", ""))
            return row

        sample_res = {(j.sampler, j.family, j.budget, j.hi, j.seed): r for j, r in res.items()
                      if j.kind == "sample"}

        def lookup(nm: str, fam: str, b: int, m: int) -> tuple[Job, dict] | None:
            for hi in (n, npl):
                r = sample_res.get((nm, fam, b, hi, seed))
                if r is not None and hi >= m:
                    return Job("sample", nm, fam, b, 0, hi, seed), r
            return None

        table = [stats_of(*lookup(s.name, "trailing", b, n), n)
                 for s in specs for b in full_budgets]
        sweep = [stats_of(*lookup(s.name, "trailing", b, npl), npl)
                 for s in specs for b in sorted(set(args.sweep))]
        pilot = [stats_of(*lookup(s.name, f, args.pilot_budget, npl), npl)
                 for s in specs if s.grid_fn is None for f in args.families]
        best = {}
        for s in specs:
            rows = [r for r in pilot if r["sampler"] == s.name and r.get("steps")]
            best[s.name] = min(rows, key=lambda r: r["median"])["family"] if rows else "own grid"
        print("best grid per sampler (pilot): " + ", ".join(f"{k}: {v}" for k, v in best.items()),
              flush=True)

        # ---- phase 2: best grids on the full set
        jobs2 = [Job("sample", s.name, best[s.name], b, 0, n, seed) for s in specs
                 if best[s.name] not in ("trailing", "own grid") for b in full_budgets]
        res2 = runner.run(jobs2, "phase 2") if jobs2 else {}
    for j, r in res2.items():
        sample_res[(j.sampler, j.family, j.budget, j.hi, j.seed)] = r
    best_rows = [stats_of(*lookup(s.name, best[s.name] if best[s.name] != "own grid"
                                  else "trailing", b, n), n)
                 for s in specs for b in full_budgets]

    # ---- Fréchet distances (trailing, full set) and the seed spread
    clf = load_classifier(DEFAULT_CLASSIFIER_PATH)
    x_test, _ = load_digits_split("test")
    x_train, _ = load_digits_split("train")
    f_test = features(clf, x_test)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(x_train), size=min(n, len(x_train)), replace=False)
    fd_floor = frechet(features(clf, x_train[pick]), f_test)
    for row in table:
        if row.get("steps") is None:
            continue
        x0 = torch.from_numpy(sample_res[(row["sampler"], "trailing", row["budget"], n, seed)]
                              ["x0"])
        if not torch.isfinite(x0).all():
            row.update(fd=float("nan"), fd_sd=float("nan"))
            continue
        fg = features(clf, x0)
        row.update(fd=frechet(fg, f_test), fd_sd=bootstrap_sd(fg, f_test, args.fd_boot, seed))
        if row["budget"] == b_seed:
            save_image_grid(x0[:64].float(), out / f"digits_samples_{_slug(row['sampler'])}.png",
                            title=f"{row['sampler']}, NFE {row['nfe']}")
    seed_rows = []
    for s in specs:
        if s.name not in ("O-BELM", "DDIM"):
            continue
        fds = [next(r["fd"] for r in table if r["sampler"] == s.name and r["budget"] == b_seed)]
        for extra in range(1, args.extra_seeds + 1):
            x0 = torch.from_numpy(sample_res[(s.name, "trailing", b_seed, n,
                                              seed + 1000 * extra)]["x0"])
            fds.append(frechet(features(clf, x0), f_test))
        seed_rows.append(dict(sampler=s.name, budget=b_seed, fds=fds,
                              sd=float(np.std(fds, ddof=1)) if len(fds) > 1 else float("nan")))

    rt_rows = []
    for j, r in sorted(((j, r) for j, r in res.items() if j.kind == "rt"),
                       key=lambda jr: (_STATE["order"].index(jr[0].sampler), jr[0].budget,
                                       jr[0].dtype)):
        if r.get("steps") is not None:
            rt_rows.append(dict(sampler=j.sampler, budget=j.budget, dtype=j.dtype, **r))

    # ---- the peers against their published forms (trailing, a few samples)
    x_chk = _noise(seed)[: args.n_peer_check]
    peer_check = S.check_peers(ode, x_chk / float(vp_alpha(ode.sbar_table[-1])),
                               ode.sbar_table, steps=tuple(full_budgets[:3]))

    record = dict(config=vars(args) | {"out": str(args.out)}, ref=ref_info, fd_floor=fd_floor,
                  table=table, best=best, best_rows=best_rows, pilot=pilot, sweep=sweep,
                  seed_rows=seed_rows, rt_rows=rt_rows, peer_check=peer_check,
                  default_note=_STATE["default_note"], families=S.GRID_FAMILY_DOC,
                  belm_ks=[int(nm[5:]) for nm in _STATE["order"] if nm.startswith("BELM-")],
                  n_test=len(x_test),
                  samplers=_STATE["order"], elapsed_s=time.time() - t_start,
                  cpu_s=_cpu_seconds())
    if args.merge_into:
        record = merge_records(json.loads(Path(args.merge_into).read_text()),
                               json.loads(json.dumps(record, default=_json)))
    (out / "digits_bench.json").write_text(json.dumps(record, indent=1, default=_json))
    write_report(record, out)
    print(f"wrote {out / 'digits_bench.md'} in {record['elapsed_s']:.0f} s")
    return record


#: settings two records must share to be merged
MERGE_KEYS = ("seed", "n", "n_pilot", "budgets", "sweep", "families", "pilot_budget", "ref_m",
              "ref_check_m", "n_ref_check", "n_rt", "boot")


def merge_records(base: dict, new: dict) -> dict:
    """``base`` with the rows of ``new``'s samplers replaced or added (table order kept)."""
    diff = {k: (base["config"][k], new["config"][k]) for k in MERGE_KEYS
            if base["config"][k] != new["config"][k]}
    if diff:
        raise ValueError(f"cannot merge records made with different settings: {diff}")
    names = set(new["samplers"])
    order = list(dict.fromkeys([*base["samplers"], *new["samplers"]]))
    rank = {nm: i for i, nm in enumerate(S.canonical_order(order))}
    out = dict(base)
    for key in ("table", "sweep", "pilot", "best_rows", "rt_rows"):
        rows = [r for r in base[key] if r["sampler"] not in names] + new[key]
        out[key] = sorted(rows, key=lambda r: rank[r["sampler"]])
    out["best"] = {nm: (new["best"] | base["best"]).get(nm) if nm not in names
                   else new["best"][nm] for nm in sorted(rank, key=rank.get)}
    out["samplers"] = sorted(order, key=rank.get)
    out["default_note"] = new["default_note"]
    out["peer_check"] = new["peer_check"]
    out["elapsed_s"] = base["elapsed_s"] + new["elapsed_s"]
    out["merged"] = [*base.get("merged", []), f"{sorted(names)} from a later run "
                     f"({new['elapsed_s'] / 60:.1f} min)"]
    return out


def write_report(record: dict, out: Path) -> None:
    """``digits_bench.md``, ``digits_bench.png`` and ``digits_convergence.png``."""
    (out / "digits_bench.md").write_text(render_markdown(record))
    plot_table(record, out / "digits_bench.png")
    S.plot_convergence(record["sweep"], out / "digits_convergence.png",
                       labels=own_grid_labels(record),
                       title="digits DDPM, trailing grid: per-sample RMS error vs the RK4 "
                             "reference (median, 95 % bootstrap band, "
                             f"{record['config']['n_pilot']} samples)")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished workers."""
    import resource

    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                  resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _json(o: Any) -> Any:
    if isinstance(o, Job):
        return asdict(o)
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


# ------------------------------------------------------------------ reporting
def stats_table(rows: list[dict], budgets: list[int], key: str = "median",
                label: dict[str, str] | None = None) -> str:
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    by = {(r["sampler"], r["budget"]): r for r in rows}
    best = {b: min((by[(nm, b)][key] for nm in names if by[(nm, b)].get("steps")),
                   default=None) for b in budgets}
    return markdown_table(
        ["sampler", *(f"NFE {b}" for b in budgets)],
        ([(label or {}).get(nm, nm),
          *(S.stats_cell(by.get((nm, b)), key, bold=by.get((nm, b), {}).get(key) == best[b])
            for b in budgets)] for nm in names))


def own_grid_labels(rec: dict) -> dict[str, str]:
    """Row labels that say which samplers bring their own grid (the default row)."""
    return {nm: f"{nm} (own grid)" for nm, fam in rec["best"].items() if fam == "own grid"}


def render_markdown(rec: dict) -> str:
    """The markdown report of :func:`main`'s record."""
    cfg, ref = rec["config"], rec["ref"]
    budgets = sorted(set(cfg["budgets"]))
    own = own_grid_labels(rec)
    n, npl = cfg["n"], cfg["n_pilot"]
    lines = [
        "# Digits DDPM: samplers at equal NFE against a self-converged reference",
        "",
        f"Model `models/digits_ddpm` (ε-prediction, linear β, 1000 steps). {n} seeded noises "
        f"(seed {cfg['seed']}), float64 solver state, fp32 network, every sampler fed the "
        "same ε (timestep of σ̄: exact on the training table, cubic spline in log σ̄ between).",
        "",
        f"**Reference**: {ref['method']}; m = {ref['m']} ({ref['steps']} steps, {ref['nfe']} "
        f"NFE) on all samples. Self-convergence against m = {ref['check_m']} "
        f"({ref['check_steps']} steps, {ref['check_nfe']} NFE) on {ref['n_check']} samples: "
        f"RMS difference **{ref['selfconv_rms']:.1e}**, worst sample {ref['selfconv_max']:.1e}."
        + (" (Reference reused from an earlier run with the same model, noise and settings: "
           f"`{Path(ref['loaded_from']).name}`.)" if ref.get("loaded_from") else ""),
        "",
        f"**Error** of a sample: RMS over its pixels (images in [−1, 1]) against the reference. "
        f"Cells: median over the {n} samples [95 % percentile-bootstrap interval, "
        f"{cfg['boot']} resamples, seed {cfg['seed']}]; best median per column in bold. "
        "'diverged': the run blew up (non-finite).",
        "",
        "## Trailing grid (diffusers' spacing, final σ = 0): median per-sample error",
        "",
        stats_table(rec["table"], budgets, label=own),
        "",
        "RMS over samples of the per-sample error [95 % interval]:",
        "",
        stats_table(rec["table"], budgets, key="rms", label=own),
        "",
        "Steps at each budget (counted NFE):",
        "",
        markdown_table(["sampler", *(f"NFE {b}" for b in budgets)], (
            [nm, *(_steps_cell(rec["table"], nm, b) for b in budgets)]
            for nm in dict.fromkeys(r["sampler"] for r in rec["table"]))),
        "",
        f"## Best grid per sampler (pilot: median at NFE {cfg['pilot_budget']} on the first "
        f"{npl} samples)",
        "",
        "Grid family (all from σ̄(t = 999) to σ̄ = 0):",
        "",
        *[f"- `{k}`: {v}" for k, v in rec["families"].items() if k in cfg["families"]],
        "",
    ]
    fams = cfg["families"]
    by_p = {(r["sampler"], r["family"]): r for r in rec["pilot"]}
    p_names = list(dict.fromkeys(r["sampler"] for r in rec["pilot"]))
    lines.append(markdown_table(["sampler", *fams], (
        [nm, *((lambda r: "—" if r is None or r.get("steps") is None else
                (f"**{_f(r['median'])}**" if rec["best"][nm] == f else _f(r["median"])))(
            by_p.get((nm, f))) for f in fams)] for nm in p_names)))
    label = {nm: f"{nm} ({fam})" for nm, fam in rec["best"].items()}
    lines += ["", f"Each sampler on its best family, full set of {n} samples: median "
              "[95 % interval]", "", stats_table(rec["best_rows"], budgets, label=label), ""]
    lines += [f"## Fréchet distance (trailing grid, {n} samples)", "",
              f"To the {rec['n_test']} held-out digits in the classifier's 64-d features "
              f"(± bootstrap s.d. over generated samples); real training digits score "
              f"**{rec['fd_floor']:.3f}** (the floor at this sample size).", "",
              markdown_table(["sampler", *(f"NFE {b}" for b in budgets)], (
                  [nm, *(_fd_cell(rec["table"], nm, b) for b in budgets)]
                  for nm in dict.fromkeys(r["sampler"] for r in rec["table"])))]
    for s in rec["seed_rows"]:
        lines.append(f"\nRun-to-run spread, {s['sampler']} at NFE {s['budget']} over noise "
                     "seeds: FD " + ", ".join(f"{v:.3f}" for v in s["fds"])
                     + f" (s.d. {s['sd']:.3f}).")
    lines += ["", f"## Round trip `sample(invert(x_0))` on {cfg['n_rt']} held-out digits", "",
              "RMS error with a float64 state (fp32 network) / all float32; backward "
              "amplification of the parasitic modes (`lmsolvers.amplification`) in brackets. "
              "DDIM: the classic approximate inversion.", ""]
    rt = {(r["sampler"], r["budget"], r["dtype"]): r for r in rec["rt_rows"]}
    rt_names = list(dict.fromkeys(r["sampler"] for r in rec["rt_rows"]))

    def rt_cell(nm: str, b: int) -> str:
        a, c = rt.get((nm, b, "fp64")), rt.get((nm, b, "fp32"))
        if a is None:
            return "—"
        amp = f" [{a['amplification']:.0e}]" if a["amplification"] > 1 else ""
        return f"{_f(a['rms'], '.1e')} / {_f(c['rms'] if c else None, '.1e')}{amp}"

    lines.append(markdown_table(["sampler", *(f"NFE {b}" for b in budgets)],
                                ([nm, *(rt_cell(nm, b) for b in budgets)] for nm in rt_names)))
    notes = [f"- {r['sampler']} NFE {r['budget']} {r['dtype']}: {r['note']}"
             for r in rec["rt_rows"] if r.get("note")]
    if notes:
        lines += ["", "Failed round trips:", *notes]
    lines += ["", "## Peers against their published algorithms", "",
              f"Max |diffusers − independent float64 transcription| of x_0 on "
              f"{cfg['n_peer_check']} samples (trailing grid), and the effect of giving the "
              "scheduler the benchmark's float64 nodes instead of its own float32 sigmas:", ""]
    pc = rec["peer_check"]
    steps = sorted({int(k.rsplit("_", 1)[1]) for v in pc.values() for k in v
                    if k.startswith("vs_published_")})
    lines.append(markdown_table(
        ["peer", "config", *(f"vs published, N={s}" for s in steps),
         *(f"own vs float64 sigmas, N={s}" for s in steps)],
        ([nm, ", ".join(f"{k}={v}" for k, v in row["config"].items()),
          *(f"{row[f'vs_published_{s}']:.1e}" for s in steps),
          *(f"{row[f'native_sigmas_{s}']:.1e}" for s in steps)] for nm, row in pc.items())))
    if rec.get("merged"):
        lines += ["", "Rows added later with the same settings and reference: "
                  + "; ".join(rec["merged"]) + "."]
    lines += ["", f"Default configuration: {rec['default_note']}.",
              f"Designed BELMs available: {rec['belm_ks'] or 'none'}. "
              f"Run time {rec['elapsed_s'] / 60:.1f} min ({cfg['jobs']} process(es)"
              + (f", {rec['cpu_s'] / 60:.0f} CPU-min" if rec.get("cpu_s") else "")
              + "); the reference's jobs took "
              f"{ref['wall_s'] / 60:.1f} worker-min. Regenerate: "
              "`.venv/bin/python -m benchmarks.digits_bench` (or `make bench`).", ""]
    return "\n".join(lines)


def _steps_cell(rows: list[dict], nm: str, b: int) -> str:
    r = next((r for r in rows if r["sampler"] == nm and r["budget"] == b), None)
    return "—" if r is None or r.get("steps") is None else f"{r['steps']} ({r['nfe']})"


def _fd_cell(rows: list[dict], nm: str, b: int) -> str:
    r = next((r for r in rows if r["sampler"] == nm and r["budget"] == b), None)
    if r is None or r.get("fd") is None or np.isnan(r["fd"]):
        return "—"
    return f"{r['fd']:.3f} ± {r['fd_sd']:.3f}"


def plot_table(rec: dict, path: Path) -> None:
    """Median error (with 95 % intervals) against NFE: trailing grid and best grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, rows, title in ((axes[0], rec["table"], "trailing grid"),
                            (axes[1], rec["best_rows"], "best grid of the family")):
        for i, nm in enumerate(dict.fromkeys(r["sampler"] for r in rows)):
            rs = S.finite_rows(rows, nm)
            if not rs:
                continue
            nfe = np.array([r["nfe"] for r in rs], dtype=float) * (1 + 0.012 * (i - 6))
            med = np.array([r["median"] for r in rs])
            err = np.array([med - [r["median_lo"] for r in rs],
                            np.array([r["median_hi"] for r in rs]) - med])
            lab = own_grid_labels(rec).get(nm, nm) if rows is rec["table"] \
                else f"{nm} ({rec['best'][nm]})"
            ax.errorbar(nfe, med, yerr=np.clip(err, 0, None), fmt="o", ms=3, capsize=2,
                        label=lab, color=f"C{i % 10}", ls="-" if i < 10 else "--")
        ax.set(xscale="log", yscale="log", xlabel="NFE", title=f"digits DDPM, {title}")
        S.nfe_ticks(ax)
        budgets = rec["config"]["budgets"]
        ax.set_xlim(0.85 * min(budgets), 1.15 * max(budgets))
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 300)  # room for the legend above the curves
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=3, loc="upper center")
    axes[0].set_ylabel(f"median per-sample RMS error ({rec['config']['n']} samples)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    # run as the package module, so that worker processes and this one share its state
    importlib.import_module("benchmarks.digits_bench").main()
