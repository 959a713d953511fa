"""Exponential BELMs against UniPC and DPM-Solver++, each on its own best grid; constants
chosen on a validation noise set, results reported on a separate test set.

**Models.**  ``ddpm``: the digits DDPM (ε-prediction, linear β); ``cond``: the
class-conditional digits DDPM at classifier-free guidance 3 (labels ``i mod 10``); ``flow``:
the digits rectified-flow model.  Every sampler integrates the same ODE through the same
function: :class:`benchmarks.digits_bench.DigitsODE` (the network at the training timestep
of σ̄, a cubic spline of t in log σ̄ between table entries) and its guided twin, or
:class:`benchmarks.flow_bench.FlowODE` (t = 1000 σ, continuous).

**References.**  DDPM models: classical RK4 in log σ̄ on every 2nd training timestep down to
the least noisy level ``σ̄_min = σ̄(t = 0)``, then ``x̄_0 = D(x̄(σ̄_min), σ̄_min)``: below its
least noisy training level a DDPM has no ODE of its own, and every sampler here (DPM-Solver++,
UniPC, k-diffusion, ours) ends with that frozen data prediction — the convention makes the
error of a sampler its discretisation error on ``[σ̄_min, σ̄_max]``.  (The digits benchmark
instead continues the flow below σ̄_min with the network frozen at t = 0; against it every
sampler floors near 1.7e-3.)  Flow: RK4 in σ with steps of ≤ 2 model timesteps to σ = 0
(:func:`benchmarks.flow_bench.rk4_reference`).

**Grids.**  DDPM families (σ̄ from σ̄(T−1) to σ̄_min, then 0): those of
:data:`benchmarks.samplers.GRID_FAMILIES`, the λ-warped families ``warp<p>`` of
:func:`lmsolvers.loggrid.log_nodes` (``warp1`` = log-uniform), and ``<family>-int``, the
same snapped to integer timesteps (where the network was trained).  Flow families (σ from 1
to 0): ``linear`` (FlowMatchEuler's own), ``shift3`` (SD3's shift), and ``warp<p>``: the
α = 0 entry node, then λ-warped finite nodes from ``σ̄_top`` (that of ``linear``'s second
node) down to ``σ̄_min = 1/999``.

**Validation** (``--phase val``, seed 1; the DDPM record: ``--n-val 512``): every peer on
every family at every budget; the best family per (peer, budget) is that peer's grid on the
test set (the most favourable choice for the peers).  Our candidates (method with its landing
weight × warp, :data:`CANDIDATES`, on the snapped grids for DDPM models) are checked for a
noise-like latent (``--phase latent``: the inversion of the validation half of the held-out
digits, :func:`heldout`, must give ``std(x̄_N)/σ̄_N`` in :data:`LATENT_BAND`) and for
u·R ≤ :data:`UR_LIMIT`, and rules of up to :data:`MAX_REGIMES` regimes are scored by the
worst ratio of their median to the best peer's (per budget) over the criterion's budgets
(:func:`score_rules`); the library's default rule
(:data:`lmsolvers.defaultconfig.REGIMES`) is what this selects (printed, and the JSON keeps
the best rules).  ``--missing-only`` adds new candidates (or their latents) to a saved
validation record without rerunning the rest.

**Test** (``--phase test``, seed 2): peers on their validated grids, the library's default
exact configuration through :func:`~lmsolvers.adapters.diffusers.default_design` (its
method and grid; flow: :class:`~lmsolvers.adapters.DiffusionSampler`) — median and RMS of
per-sample errors with 95 % bootstrap intervals; a convergence sweep over NFE 10…200 with
slopes fitted to log median vs log NFE; round trips of the 360 held-out digits (relative
error, float64 state, the network as shipped in float32 and — DDPM models — the same weights
in float64) and the latent's ``std(x̄_N)/σ̄_N`` on the report half of those digits, next to
the same ratio for the converged ODE's own inversion of them (RK4, the reference).

Writes ``exponential_bench_<model>.md``/``.json``/``.png`` under ``--out``.  Run one thread
per process (``OMP_NUM_THREADS=1``; 4–16× faster on a shared machine):

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.exponential_bench --model ddpm --phase val \
        --n-val 512
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.exponential_bench --model ddpm --phase latent
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.exponential_bench --model ddpm --phase test
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from lmsolvers.adapters.diffusers import DiffusionSampler, default_design, default_method
from lmsolvers.adapters.schedules import alphas_cumprod_from_config

import lmsolvers as L
from lmsolvers.grid import vp_alpha
from lmsolvers.loggrid import log_nodes

from . import flow_bench as F
from . import samplers as S
from .digits_bench import DigitsODE, reference_nodes, rk4_log_sigma
from .digits_data import REPO_ROOT, load_digits_split
from .tables import markdown_table

RESULTS = REPO_ROOT / "benchmarks" / "results"
VAL_SEED, TEST_SEED = 1, 2
TABLE_BUDGETS = (10, 20, 50, 100)
SWEEP = (10, 12, 15, 20, 25, 30, 40, 50, 70, 100, 140, 200)
#: the DDPM peers' grid families (trailing, trailing-split and Karras ρ = 5, never a peer's best
#: on the first, 128-noise validation, are left out: ``--families`` takes any of them)
DDPM_FAMILIES = ("warp0.7", "warp0.85", "warp1", "warp0.85-int", "warp1-int", "karras-7",
                 "karras-7-int")
FLOW_FAMILIES = ("linear", "shift3", "warp0.7", "warp0.85", "warp1")
#: our candidate methods on validation: the designs with k = 3 and 5, and ebelm5 with a smaller
#: weight γ of its landing's defect (ebelm3's error moves by ≤ 3 % over γ ∈ [0, 1] on the DDPM
#: validation, ebelm5's by up to 25 %: ``--phase landing``)
CANDIDATE_METHODS = ("ebelm3", "ebelm5", "ebelm5(adams, 0.5)", "ebelm5(adams, 0.25)")
#: our candidates on validation: (method name, warp)
CANDIDATES = tuple((m, w) for m in CANDIDATE_METHODS
                   for w in (0.7, 0.75, 0.8, 0.85, 0.9, 1.0, 1.1))
GUIDANCE = 3.0
SHAPE = (1, 8, 8)


# -------------------------------------------------------------------- models
class CondODE(DigitsODE):
    """The class-conditional digits DDPM with classifier-free guidance ``w``: the network of
    :class:`DigitsODE` called on ``[null, labels]`` in one batch, ``ε_u + w (ε_c − ε_u)``."""

    def __init__(self, labels: torch.Tensor, w: float = GUIDANCE):
        super().__init__(REPO_ROOT / "models" / "digits_cond")
        self.labels, self.w = labels, float(w)
        self.null = int(self.unet.config.num_class_embeds) - 1

    def with_labels(self, labels: torch.Tensor) -> CondODE:
        """The same model and guidance for other labels (shares the network)."""
        other = object.__new__(CondODE)
        other.__dict__.update(self.__dict__)
        other.labels = labels
        return other

    @torch.no_grad()
    def __call__(self, xbar: torch.Tensor, sigma_bar: float) -> torch.Tensor:
        a = float(vp_alpha(sigma_bar))
        t = torch.tensor(self.timestep(float(sigma_bar)), dtype=self.net_dtype)
        x = (xbar * a).to(self.net_dtype)
        lab = torch.cat([torch.full_like(self.labels, self.null), self.labels])
        out = self.unet(torch.cat([x, x]), t, class_labels=lab).sample
        eu, ec = out.chunk(2)
        return (eu + self.w * (ec - eu)).to(xbar.dtype)


def ddpm_reference(ode: DigitsODE, noise: torch.Tensor) -> torch.Tensor:
    """RK4 in log σ̄ (every 2nd timestep) to σ̄_min, then the frozen data prediction."""
    s_min = float(ode.sbar_table[0])
    x, _ = rk4_log_sigma(ode, reference_nodes(ode, 2), noise / float(vp_alpha(
        ode.sbar_table[-1])), tail_steps=0)
    return x - s_min * ode(x, s_min)


def snap(sb: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Nodes 1..N of ``sb`` moved to the nearest integer timestep (strictly increasing)."""
    T = table.size
    t = np.rint(np.interp(np.log(sb[1:]), np.log(table), np.arange(T, dtype=float))).astype(int)
    t[0], t[-1] = 0, T - 1
    for j in range(1, t.size):
        t[j] = max(t[j], t[j - 1] + 1)
    for j in range(t.size - 2, -1, -1):
        t[j] = min(t[j], t[j + 1] - 1)
    return np.concatenate([[0.0], table[t]])


def ddpm_grid(family: str, n: int, table: np.ndarray) -> np.ndarray:
    """σ̄ nodes (increasing, σ̄_0 = 0) of a DDPM family with n steps (module docstring)."""
    if family.endswith("-int"):
        return snap(ddpm_grid(family[:-4], n, table), table)
    if family.startswith("warp"):
        return np.concatenate([[0.0], log_nodes(n, float(table[-1]), float(table[0]),
                                                float(family[4:]))])
    return S.family_grid(family, n, table)


def flow_sigmas(family: str, n: int, ode: F.FlowODE) -> np.ndarray:
    """Descending σ nodes (1 first, 0 last) of a flow family with n steps."""
    lin = F.flow_sigmas(ode.schedule(n))
    if family == "linear":
        return lin
    if family == "shift3":
        s = lin.copy()
        return 3.0 * s / (1.0 + 2.0 * s)
    if family.startswith("warp"):
        top = lin[1] / (1.0 - lin[1])
        s_min = 1.0 / 999.0
        sb = log_nodes(n - 1, top, s_min, float(family[4:]))[::-1]
        return np.concatenate([[1.0], sb / (1.0 + sb), [0.0]])
    raise ValueError(f"unknown flow family {family!r}")


# ------------------------------------------------------------------ one model
class Bench:
    """One model's ODE, noise sets, references and samplers."""

    def __init__(self, model: str, n_val: int, n_test: int):
        self.model = model
        self.n = {VAL_SEED: n_val, TEST_SEED: n_test}
        self.flow = model == "flow"
        if self.flow:
            self.ode = F.FlowODE()
        elif model == "cond":
            self.ode = CondODE(torch.arange(max(n_val, n_test)) % 10)
        else:
            self.ode = DigitsODE()
        self._ref: dict[int, np.ndarray] = {}

    def noise(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn((self.n[seed], *SHAPE), generator=g, dtype=torch.float64)

    def eps_for(self, lo: int, hi: int) -> Any:
        if self.model == "cond":
            return self.ode.with_labels(self.ode.labels[lo:hi])
        return self.ode.eps_bar if self.flow else self.ode

    def reference(self, seed: int, out: Path) -> np.ndarray:
        """The seed's reference (cached in ``out``, keyed by model, seed and size)."""
        path = out / f"exponential_bench_{self.model}.ref{seed}.npz"
        n = self.n[seed]
        if path.exists():
            z = np.load(path)
            if int(z["n"]) >= n:
                return z["ref"][:n]
        t0 = time.time()
        noise, chunks = self.noise(seed), []
        for lo in range(0, n, 128):
            x = noise[lo:lo + 128]
            with torch.no_grad():
                if self.flow:
                    chunks.append(F.rk4_reference(self.ode, x, 2.0)[0].numpy())
                else:
                    chunks.append(ddpm_reference(self.eps_for(lo, lo + x.shape[0]), x).numpy())
            print(f"  reference {self.model} seed {seed}: {lo + x.shape[0]}/{n} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        ref = np.concatenate(chunks)
        np.savez_compressed(path, ref=ref, n=n)
        return ref

    # ------------------------------------------------------------ sampling
    def run_peer(self, spec: S.SamplerSpec, family: str, n: int, seed: int) -> np.ndarray:
        noise = self.noise(seed)
        out = []
        for lo in range(0, noise.shape[0], 256):
            x = noise[lo:lo + 256]
            with torch.no_grad():
                if self.flow:
                    out.append(F.peer_solve(spec, flow_sigmas(family, n, self.ode), x,
                                            self.ode)[0])
                else:
                    sb = ddpm_grid(family, n, self.ode.sbar_table)
                    out.append(S.run(spec, sb, x / float(vp_alpha(sb[-1])),
                                     self.eps_for(lo, lo + x.shape[0]))[0])
        return torch.cat(out).numpy()

    def run_ours(self, method: Any, grid: L.Grid, seed: int, entry: bool = False
                 ) -> np.ndarray:
        """``method`` on ``grid`` from the seed's noise (flow: the α = 0 entry step first)."""
        noise = self.noise(seed)
        out = []
        for lo in range(0, noise.shape[0], 256):
            x = noise[lo:lo + 256]
            eps = self.eps_for(lo, lo + x.shape[0])
            with torch.no_grad():
                if self.flow:
                    xN = self._entry(x, float(grid.sigma_bar[-1]))
                    out.append(L.sample(eps, grid, method, xN, disable=True)
                               / (1.0 + grid.sigma_bar[0]))
                else:
                    out.append(L.sample(eps, grid, method, x / float(vp_alpha(
                        grid.sigma_bar[-1])), disable=True))
        return torch.cat(out).numpy()

    def _entry(self, x_top: torch.Tensor, sbar_n: float) -> torch.Tensor:
        """The α = 0 entry step ``x̄_N = x̂_0 + σ̄_N ε̂`` (ε̂ = x_T, x̂_0 = x_T − v)."""
        v = self.ode.velocity(x_top, 1.0)
        return (x_top - v) + sbar_n * x_top

    def candidate_grid(self, method: Any, n: int, warp: float) -> L.Grid:
        """Our λ-warped grid for an NFE budget n (DDPM models: n steps snapped to timesteps,
        as the library's designed grid is; flow: the entry step and n − 1 finite steps)."""
        if self.flow:
            sig = flow_sigmas(f"warp{warp}", n, self.ode)[1:][::-1]
            return L.Grid(sig / (1.0 - sig))
        return L.Grid(snap(ddpm_grid(f"warp{warp}", n, self.ode.sbar_table),
                           self.ode.sbar_table))

    def default_grid(self, n: int) -> tuple[Any, L.Grid]:
        """The library's default exact configuration for n steps: ``(method, grid)``
        (flow: its finite grid; the entry step is the run's first evaluation)."""
        if self.flow:
            ds = DiffusionSampler(self.ode.unet, self.ode.scheduler, n, grid="designed",
                                  disable_progress=True)
            return ds.method, ds.schedule.grid
        sched = DDPMScheduler.from_pretrained(self.ode_dir())
        ac = alphas_cumprod_from_config(sched)
        d = default_design(n, ac)
        return d.method, d.grid

    def ode_dir(self) -> Path:
        return REPO_ROOT / "models" / ("digits_cond" if self.model == "cond" else "digits_ddpm")


def errors(x0: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return S.per_sample_error(x0, ref)


# ---------------------------------------------------------------------- phases
def validate(b: Bench, out: Path, budgets: tuple[int, ...],
             families: tuple[str, ...] | None = None,
             candidates: tuple[tuple[str, float], ...] = CANDIDATES,
             peers: bool = True, missing_only: bool = False) -> dict:
    """Validation runs (module docstring); ``peers=False`` keeps the saved record's peer rows
    and reruns our candidates; ``missing_only`` (with ``peers=False``) also keeps our saved
    rows and runs only the (candidate, budget) rows the record does not have (their latents
    are then measured by ``--phase latent --missing-only``; until then :func:`score_rules`
    does not admit them)."""
    if missing_only and peers:
        raise ValueError("missing_only adds our rows to a saved record: pass peers=False")
    ref = b.reference(VAL_SEED, out)
    idx = S.resample_index(ref.shape[0], 1000, VAL_SEED)
    path = out / f"exponential_bench_{b.model}.val.json"
    old = json.loads(path.read_text()) if not peers else None
    if old is not None and old["n"] != ref.shape[0]:
        raise ValueError(f"the saved validation record has {old['n']} noises and this run "
                         f"{ref.shape[0]}: pass --n-val {old['n']} to add to it, or rerun "
                         "the peers (without --ours-only)")
    rows: dict[str, dict] = {} if old is None else {
        k: v for k, v in old["rows"].items() if missing_only or "|ours|" not in k}
    fams = families or (FLOW_FAMILIES if b.flow else DDPM_FAMILIES)
    if old is not None:
        fams = tuple(sorted({k.split("|")[1] for k in rows if "|ours|" not in k}))
        budgets = tuple(old["budgets"])
    for spec in S.peer_specs() if peers else ():
        for fam in fams:
            for n in budgets:
                t0 = time.time()
                try:
                    e = errors(b.run_peer(spec, fam, n, VAL_SEED), ref)
                    st = S.summarise_errors(e, idx)
                except (ValueError, FloatingPointError) as exc:
                    st = dict(median=float("inf"), note=str(exc)[:80])
                rows[f"{spec.name}|{fam}|{n}"] = st
                print(f"  val {spec.name:18s} {fam:14s} {n:4d}: {st['median']:.3e} "
                      f"({time.time() - t0:.0f} s)", flush=True)
    for name, warp in candidates:
        m = L.method_from_name(name)
        for n in budgets:
            if n <= m.k + 1 or f"{name}@{warp}|ours|{n}" in rows:  # (kept: missing_only)
                continue
            t0 = time.time()
            try:
                grid = b.candidate_grid(m, n, warp)
                e = errors(b.run_ours(m, grid, VAL_SEED), ref)
                st = S.summarise_errors(e, idx)
                st["R"] = m.roundoff_amplification(grid)
            except (ValueError, FloatingPointError, L.SolverInstabilityError) as exc:
                st = dict(median=float("inf"), note=str(exc)[:80])
            rows[f"{name}@{warp}|ours|{n}"] = st
            print(f"  val {name}@{warp:<5} {n:4d}: {st['median']:.3e} "
                  f"R {st.get('R', float('nan')):.1e} ({time.time() - t0:.0f} s)", flush=True)
    best = {}
    for spec in S.peer_specs():
        for n in budgets:
            cands = {f: rows[f"{spec.name}|{f}|{n}"]["median"] for f in fams}
            best[f"{spec.name}|{n}"] = min(cands, key=cands.get)
    ran = sorted({(k.split("@")[0], float(k.split("@")[1].split("|")[0]))
                  for k in rows if "|ours|" in k})
    rec = dict(model=b.model, seed=VAL_SEED, n=ref.shape[0], budgets=list(budgets), rows=rows,
               best_family=best, candidates=[list(c) for c in ran])
    rec["rule_scores"] = score_rules(rec)[:KEPT_RULES]
    (out / f"exponential_bench_{b.model}.val.json").write_text(json.dumps(rec, indent=1))
    return rec


#: the issue's band for a noise-like latent: std(x̄_N)/σ̄_N of held-out digits' inversion
#: (the converged ODE's own inversion of these digits gives 1.236 on the DDPM, 1.05 on the flow)
LATENT_BAND = (0.8, 1.25)


#: the two halves of the held-out digits: positions, and the name records carry
HALVES = {"val": (slice(0, None, 2), "held-out, even positions"),
          "report": (slice(1, None, 2), "held-out, odd positions")}


def heldout(part: str, n_rt: int = 360) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_rt`` held-out digits (the test split), float64, and their labels — of one
    half (:data:`HALVES`): ``"val"`` (even positions), on which validation checks a
    candidate's latent, or ``"report"`` (odd positions), on which the test phase reports it;
    ``"all"``: both (the round trips).  The halves' converged latent ratios agree (DDPM:
    1.2364 / 1.2357)."""
    x, y = load_digits_split("test")
    x, y = x[:n_rt].double(), y[:n_rt].long()
    if part == "all":
        return x, y
    if part not in HALVES:
        raise ValueError(f"part must be 'val', 'report' or 'all', got {part!r}")
    half = HALVES[part][0]
    return x[half], y[half]


def validate_latents(b: Bench, out: Path, missing_only: bool = False) -> dict:
    """Add to the saved validation record, for every candidate (method, warp, budget), the
    latent ratio ``std(x̄_N)/σ̄_N`` of inverting the validation half of the held-out digits
    (:func:`heldout`), and that ratio over the converged ODE's for the same digits and top
    node; :func:`score_rules` then admits only candidates inside :data:`LATENT_BAND`.
    ``missing_only``: only the rows that have no latent yet."""
    path = out / f"exponential_bench_{b.model}.val.json"
    rec = json.loads(path.read_text())
    x0, y = heldout("val")
    eps = b.ode.with_labels(y) if b.model == "cond" else (b.ode.eps_bar if b.flow else b.ode)
    keys = [k for k in rec["rows"] if "|ours|" in k and math.isfinite(rec["rows"][k]["median"])
            and not (missing_only and "latent" in rec["rows"][k])]
    grids = {}
    for k in keys:
        name, warp = k.split("|")[0].split("@")
        m = L.method_from_name(name)
        grids[k] = (m, b.candidate_grid(m, int(k.split("|")[2]), float(warp)))
    same_digits = rec.get("latent_digits") == HALVES["val"][1]
    if missing_only and not same_digits:
        raise ValueError("the saved latents were measured on other digits "
                         f"({rec.get('latent_digits')!r}): rerun --phase latent without "
                         "--missing-only")
    # the converged ODE's ratio per top node (keyed as the record keeps it; saved ones, of the
    # same digits, reused)
    ideal = dict(rec.get("latent_ideal", {})) if same_digits else {}
    tops = sorted({t for t in (float(g.sigma_bar[-1]) for _, g in grids.values())
                   if f"{t:.9g}" not in ideal})
    ideal.update({f"{t:.9g}": v for t, v in ideal_latent_ratios(b, tops, x0, y).items()})
    rec["latent_ideal"], rec["latent_digits"] = ideal, HALVES["val"][1]
    for i, k in enumerate(keys):
        if i and i % 24 == 0:  # kept as it goes: an interrupted run loses little
            path.write_text(json.dumps(rec, indent=1))
        m, grid = grids[k]
        t0 = time.time()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", L.ExactnessWarning)
            try:
                lat = L.invert(eps, grid, m, x0, disable=True)
                ratio = float(lat.states[-1].std()) / float(grid.sigma_bar[-1])
            except (FloatingPointError, L.SolverInstabilityError):
                ratio = float("inf")
        rel = ratio / ideal[f"{float(grid.sigma_bar[-1]):.9g}"]
        rec["rows"][k]["latent"], rec["rows"][k]["latent_rel"] = ratio, rel
        print(f"  latent {k:22s}: {ratio:.3f} ({rel:.3f} of the converged) "
              f"({time.time() - t0:.0f} s)", flush=True)
    rec["rule_scores"] = score_rules(rec)[:KEPT_RULES]
    path.write_text(json.dumps(rec, indent=1))
    return rec


#: the best rules a validation record keeps (the full ranking, ~10⁵ rules, is recomputed by
#: ``--phase rescore`` in seconds and would make the record tens of MB)
KEPT_RULES = 200

#: the budgets the issue's criterion names, with the allowed ratio to the best peer
LIMITS = {10: 1.0, 20: 1.0, 50: 1.0, 100: 1.2}
#: float64's unit round-off, and the issue's bound on u·R (R: the inversion's round-off
#: amplification, :meth:`~lmsolvers.LMMethod.roundoff_amplification`): a candidate above it is
#: excluded from the rules
UNIT_ROUNDOFF, UR_LIMIT = 2.0 ** -53, 1e-9
#: the peers the criterion compares with
CRITERION_PEERS = ("DPM-Solver++(3M)", "UniPC-3 (bh2)")


def _rule_text(r: dict) -> str:
    return ", ".join(f"{name}@{warp} from {first}" for first, name, warp in r["regimes"]) + ":"


def single_family(rec: dict) -> dict[str, str]:
    """Each peer's one best grid family: the smallest geometric mean of its validation
    medians over the budgets."""
    fams = {k.split("|")[1] for k in rec["rows"] if "|ours|" not in k}
    out = {}
    for spec in S.peer_specs():
        score = {f: np.mean([math.log(rec["rows"][f"{spec.name}|{f}|{n}"]["median"])
                             for n in rec["budgets"]]) for f in fams}
        out[spec.name] = min(score, key=score.get)
    return out


def criterion_best(rows: dict[str, dict]) -> dict[int, float]:
    """Per budget, the best validation median of :data:`CRITERION_PEERS` over every grid
    family (the best family per budget: the strictest bar)."""
    best: dict[int, float] = {}
    for k, r in rows.items():
        name, _, nfe = k.split("|")
        if name in CRITERION_PEERS:
            best[int(nfe)] = min(best.get(int(nfe), math.inf), r["median"])
    return best


#: the most regimes a rule may have (each a candidate from one budget on)
MAX_REGIMES = 4


def score_rules(rec: dict) -> list[dict]:
    """Rules of at most :data:`MAX_REGIMES` regimes: the validated budgets cut into
    consecutive runs, each run served by one candidate (a method of
    :data:`CANDIDATE_METHODS` with its landing, on one warp) — scored against the best of
    :data:`CRITERION_PEERS`, each on its best family *per budget* (the strictest bar, as the
    test reports it): primary, the worst ratio/limit over :data:`LIMITS` (rounded to 3
    digits); then the geometric mean ratio over all budgets (lower is better for both).  A
    candidate whose latent left :data:`LATENT_BAND` (:func:`validate_latents`), or whose
    round-off growth exceeds :data:`UR_LIMIT`, at a budget cannot serve that budget.

    For each cut of the budgets the optimum is exact: the worst of a rule is the largest of
    its runs' worsts, so each run first takes the candidate with the smallest worst, and then,
    among those within the rule's worst, the one with the smallest geometric mean."""
    budgets = sorted(rec["budgets"])
    rows = rec["rows"]
    peer_best = criterion_best(rows)

    missing = [n for n in budgets if n not in peer_best]
    if missing:
        raise ValueError(f"the validation record has no {' or '.join(CRITERION_PEERS)} row at "
                         f"NFE {missing}: rerun --phase val with the peers")
    # once latents are measured (validate_latents), a row without one is not yet admissible
    measured = any("latent" in r for k, r in rows.items() if "|ours|" in k)

    def med(key: str) -> float:
        r = rows[key]
        lat = r.get("latent")  # measured by validate_latents: outside the band, excluded
        if lat is None and measured:
            return math.inf
        if lat is not None and not LATENT_BAND[0] <= lat <= LATENT_BAND[1]:
            return math.inf
        if r.get("R", 0.0) * UNIT_ROUNDOFF > UR_LIMIT:  # the bound on round-off growth
            return math.inf
        return r["median"]

    cands = sorted({(k.split("@")[0], float(k.split("@")[1].split("|")[0]))
                    for k in rows if "|ours|" in k})
    if not cands:
        return []
    ratio = np.full((len(cands), len(budgets)), np.inf)
    for i, (name, w) in enumerate(cands):
        for j, n in enumerate(budgets):
            if f"{name}@{w}|ours|{n}" in rows:
                ratio[i, j] = med(f"{name}@{w}|ours|{n}") / peer_best[n]
    ratio[~np.isfinite(ratio)] = np.inf  # a NaN median (a failed run) cannot serve either
    uncovered = [n for j, n in enumerate(budgets) if not np.isfinite(ratio[:, j]).any()]
    if uncovered:
        warnings.warn(f"no candidate is admissible at NFE {uncovered} (latent band, u·R): "
                      "no rule covers every budget", stacklevel=2)
        return []
    named = np.array([n in LIMITS for n in budgets])
    limit = np.array([LIMITS.get(n, 1.0) for n in budgets])
    # ratio/limit at the criterion's budgets; elsewhere 0 (or ∞: a candidate that cannot serve)
    scaled = np.where(named, ratio / limit, np.where(np.isfinite(ratio), 0.0, np.inf))
    logs = np.log(ratio)
    out: list[dict] = []
    seen: dict[int, list[dict]] = {}
    m = len(budgets)
    for n_cuts in range(MAX_REGIMES):
        for cuts in itertools.combinations(range(1, m), n_cuts):
            runs = list(zip((0, *cuts), (*cuts, m), strict=True))
            worst_of = [scaled[:, a:b].max(axis=1) for a, b in runs]
            least = max(float(w.min()) for w in worst_of)
            if not math.isfinite(least):
                continue
            bound = round(least, 3) + 5e-4  # the smallest worst as ranked (3 digits)
            picks = []
            for (a, b), w in zip(runs, worst_of, strict=True):
                total = np.where(w <= bound, logs[:, a:b].sum(axis=1), np.inf)
                picks.append(int(np.argmin(total)))
            r = np.concatenate([ratio[i, a:b] for i, (a, b) in zip(picks, runs, strict=True)])
            regimes = []
            for i, (a, _) in zip(picks, runs, strict=True):
                if not regimes or regimes[-1][1:] != [*cands[i]]:  # merge equal neighbours
                    regimes.append([budgets[a], *cands[i]])
            if any(rule["regimes"] == regimes for rule in seen.get(len(regimes), ())):
                continue  # the same rule, reached through a finer cut
            rule = dict(regimes=regimes,
                        worst=max(float(w[i]) for i, w in zip(picks, worst_of, strict=True)),
                        geomean=float(np.exp(np.mean(np.log(r)))), ratios=[float(x) for x in r])
            seen.setdefault(len(regimes), []).append(rule)
            out.append(rule)
    return sorted(out, key=lambda r: (round(r["worst"], 3), r["geomean"]))


def test(b: Bench, out: Path, budgets: tuple[int, ...], n_rt: int, peers: bool = True
         ) -> dict:
    val = json.loads((out / f"exponential_bench_{b.model}.val.json").read_text())
    ref = b.reference(TEST_SEED, out)
    idx = S.resample_index(ref.shape[0], 2000, TEST_SEED)
    rows = []
    if not peers:
        old = json.loads((out / f"exponential_bench_{b.model}.json").read_text())
        rows = [r for r in old["rows"] if r["sampler"] != "default (ours)"]
        budgets = tuple(old["budgets"])
    single = single_family(val)
    for spec in S.peer_specs() if peers else ():
        runs = [(spec.name, single[spec.name], n) for n in budgets]
        if spec.name in CRITERION_PEERS:  # the strictest bar: the best family per budget
            runs += [(f"{spec.name}, best family per NFE",
                      val["best_family"].get(f"{spec.name}|{n}")
                      or _nearest_family(val, spec, n), n) for n in TABLE_BUDGETS]
        for label, fam, n in runs:
            t0 = time.time()
            e = errors(b.run_peer(spec, fam, n, TEST_SEED), ref)
            st = S.summarise_errors(e, idx)
            rows.append(dict(sampler=label, family=fam, nfe=n, **st))
            print(f"  test {label:18s} {fam:14s} {n:4d}: {st['median']:.3e} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    for n in budgets:
        t0 = time.time()
        method, grid = b.default_grid(n)
        e = errors(b.run_ours(method, grid, TEST_SEED), ref)
        st = S.summarise_errors(e, idx)
        rows.append(dict(sampler="default (ours)", family=method.name, nfe=n,
                         R=method.roundoff_amplification(grid), **st))
        print(f"  test default {method.name:10s} {n:4d}: {st['median']:.3e} "
              f"({time.time() - t0:.0f} s)", flush=True)
    rt = roundtrips(b, [n for n in budgets if n in TABLE_BUDGETS or n in (12, 15, 30)], n_rt)
    for r in rt:
        r["top"] = float(b.default_grid(r["nfe"])[1].sigma_bar[-1])
    # the converged flow's latent ratio depends on the top node only: an --ours-only rerun
    # keeps the saved record's values (same digits, same top) instead of recomputing them
    known = {} if peers else {r["top"]: r["ideal_std_ratio"] for r in old["roundtrip"]
                              if "top" in r and "ideal_std_ratio" in r and r.get("n_rt") == n_rt
                              and r.get("latent_digits") == HALVES["report"][1]}
    ideal = ideal_latent_ratios(b, [r["top"] for r in rt if r["top"] not in known],
                                *heldout("report", n_rt))
    for r in rt:
        r["ideal_std_ratio"] = known.get(r["top"], ideal.get(r["top"]))
        r["n_rt"] = n_rt
    rec = dict(model=b.model, seed=TEST_SEED, val_seed=VAL_SEED, n=ref.shape[0],
               budgets=list(budgets), rows=rows, roundtrip=rt, slopes=slopes(rows))
    (out / f"exponential_bench_{b.model}.json").write_text(json.dumps(rec, indent=1))
    return rec


def _nearest_family(val: dict, spec: S.SamplerSpec, n: int) -> str:
    """A budget the validation did not run: the family validated at the nearest budget."""
    ns = sorted(val["budgets"], key=lambda m: abs(math.log(m / n)))
    return val["best_family"][f"{spec.name}|{ns[0]}"]


def roundtrips(b: Bench, budgets: list[int], n_rt: int) -> list[dict]:
    """Round trips of the ``n_rt`` held-out digits with the default (the network as shipped,
    float32, and — DDPM models — the same weights in float64: :meth:`DigitsODE.in_float64`),
    and the latent's std ratio on the report half (:func:`heldout`)."""
    x0, y = heldout("all", n_rt)
    report, report_name = HALVES["report"]
    nets = {"float32": b.ode} if b.flow else {"float32": b.ode, "float64": b.ode.in_float64()}
    out = []
    for n in budgets:
        method, grid = b.default_grid(n)
        xb = x0 / float(grid.alphas[0]) if b.flow else x0
        row = dict(nfe=n, method=method.name,
                   u_R=float(method.roundoff_amplification(grid) * 2.0**-53))
        for net, ode in nets.items():
            eps = ode.with_labels(y) if b.model == "cond" else (ode.eps_bar if b.flow else ode)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", L.ExactnessWarning)
                lat = L.invert(eps, grid, method, xb, disable=True)
                rec = L.sample(eps, grid, method, lat, disable=True)
            rel = ((rec - xb).flatten(1).norm(dim=1) / xb.flatten(1).norm(dim=1)).numpy()
            tag = "" if net == "float32" else "_f64"
            row[f"rel_median{tag}"], row[f"rel_max{tag}"] = float(np.median(rel)), float(rel.max())
            row[f"above_1e12{tag}"] = int((rel > 1e-12).sum())
            if net == "float32":  # the report half's latent
                top = lat.states[-1][report]
                row["std_ratio"] = float(top.std()) / float(grid.sigma_bar[-1])
                row["n_report"], row["latent_digits"] = top.shape[0], report_name
            print(f"  round trip {n:4d} ({net} network): median {np.median(rel):.1e} max "
                  f"{rel.max():.1e}" + (f" std ratio {row['std_ratio']:.3f}" if not tag else ""),
                  flush=True)
        out.append(row)
    return out


def ideal_latent_ratios(b: Bench, tops: list[float], x0: torch.Tensor, y: torch.Tensor
                        ) -> dict[float, float]:
    """``std(x̄(σ̄_top))/σ̄_top`` of the converged flow's own inversion of the digits ``x0``
    (labels ``y``: the conditional model's): ``D(x̄_1, σ̄_min) = x̄_0`` (the
    frozen-prediction convention of the references, by fixed-point iteration), then RK4 in
    log σ̄ with 50 steps per unit of log σ̄ up to each top (converged: on 64 digits of the
    DDPM, 25 / 50 / 100 steps per unit give 1.22591 / 1.22585 / 1.22584).  What a perfect
    inversion's latent would measure, beside the criterion's [0.8, 1.25]."""
    eps = b.ode.with_labels(y) if b.model == "cond" else (b.ode.eps_bar if b.flow else b.ode)
    s_min = 1.0 / 999.0 if b.flow else float(b.ode.sbar_table[0])
    out = {}
    with torch.no_grad():
        x1 = x0 + s_min * eps(x0, s_min)
        for _ in range(8):
            x1 = x0 + s_min * eps(x1, s_min)
        u0, xs = math.log(s_min), x1
        for top in sorted(set(tops)):
            m = max(1, int(math.ceil(50 * (math.log(top) - u0))))
            xs, _ = rk4_log_sigma(eps, np.linspace(u0, math.log(top), m + 1), xs, tail_steps=0)
            u0 = math.log(top)
            out[top] = float(xs.std()) / top
    return out


def slopes(rows: list[dict]) -> dict[str, float]:
    """Least-squares slope of log median against log NFE over NFE 20…100."""
    out = {}
    for name in dict.fromkeys(r["sampler"] for r in rows):
        pts = [(r["nfe"], r["median"]) for r in rows if r["sampler"] == name
               and 20 <= r["nfe"] <= 100 and np.isfinite(r["median"])]
        if len(pts) >= 3:
            n, e = np.log(np.array(pts)).T
            out[name] = float(-np.polyfit(n, e, 1)[0])
    return out


# ------------------------------------------------------------------- report
def render(rec: dict) -> str:
    rows = rec["rows"]
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    budgets = [b for b in rec["budgets"] if b in TABLE_BUDGETS]
    by = {(r["sampler"], r["nfe"]): r for r in rows}
    lines = [f"# Exponential BELMs vs UniPC and DPM-Solver++ — {rec['model']}", "",
             f"Test seed {rec['seed']} ({rec['n']} noises); every constant (peers' grids, "
             f"our rule) chosen on validation seed {rec['val_seed']}.  Median per-sample "
             "error [95 % bootstrap interval]; each peer on its validated best grid family "
             "per budget (in parentheses).", ""]
    hdr = ["sampler"] + [f"NFE {b}" for b in budgets]
    body = []
    for nm in names:
        cells = [nm]
        for b in budgets:
            r = by.get((nm, b))
            cells.append("—" if r is None else
                         f"{r['median']:.2e} [{r['median_lo']:.2e}, {r['median_hi']:.2e}] "
                         f"({r['family']})")
        body.append(cells)
    lines.append(markdown_table(hdr, body))
    lines += ["", "RMS over samples [95 % interval]:", ""]
    lines.append(markdown_table(hdr, [[nm] + [
        "—" if (nm, b) not in by else
        f"{by[(nm, b)]['rms']:.2e} [{by[(nm, b)]['rms_lo']:.2e}, {by[(nm, b)]['rms_hi']:.2e}]"
        for b in budgets] for nm in names]))
    lines += ["", "Fitted convergence slopes (log median vs log NFE, NFE 20…100): "
              + ", ".join(f"{k} {v:.2f}" for k, v in rec["slopes"].items()), "",
              "Round trips `sample(invert(x0))` of held-out digits (float64 state; relative "
              "L2 error per digit) with the network as shipped (float32) and, where given, "
              "the same weights in float64; the latent's std ratio on the report half of the "
              "digits (odd positions; validation checked the even ones), beside the converged "
              "ODE's own inversion of the same digits (criterion: [0.8, 1.25]):", ""]
    rt = rec["roundtrip"]
    f64 = any("rel_max_f64" in r for r in rt)
    lines.append(markdown_table(
        ["NFE", "method", "digits", "median (fp32 net)", "max (fp32 net)", "> 1e-12"]
        + (["median (fp64 net)", "max (fp64 net)", "> 1e-12 (fp64)"] if f64 else [])
        + ["std(x̄_N)/σ̄_N", "converged ODE's", "u·R"],
        [[r["nfe"], r["method"], r.get("n_rt", "—"), f"{r['rel_median']:.1e}",
          f"{r['rel_max']:.1e}", r.get("above_1e12", "—")]
         + ([f"{r['rel_median_f64']:.1e}", f"{r['rel_max_f64']:.1e}", r["above_1e12_f64"]]
            if f64 else [])
         + [f"{r['std_ratio']:.3f}", f"{r.get('ideal_std_ratio', float('nan')):.3f}",
            f"{r['u_R']:.1e}"] for r in rt]))
    return "\n".join(lines) + "\n"


def plot(rec: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for nm in dict.fromkeys(r["sampler"] for r in rec["rows"]):
        rs = sorted((r for r in rec["rows"] if r["sampler"] == nm), key=lambda r: r["nfe"])
        nfe = [r["nfe"] for r in rs]
        ax.fill_between(nfe, [r["median_lo"] for r in rs], [r["median_hi"] for r in rs],
                        alpha=0.2)
        ax.plot(nfe, [r["median"] for r in rs], "o-", ms=3,
                label=f"{nm} (slope {rec['slopes'].get(nm, float('nan')):.2f})")
    ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="median error",
           title=f"{rec['model']}: test seed {rec['seed']}")
    S.nfe_ticks(ax)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


TOY_STEPS = (8, 12, 16, 24, 32, 48, 64, 96, 128)


def toy_orders(out: Path) -> dict:
    """Observed orders of the exponential BELMs on the Gaussian-mixture σ̄-ODE (exact ε, DOP853
    flow): λ-uniform and λ-jittered grids from σ̄ = 5 to 0.05 (no landing step), each design
    with the RK4 starter (accurate starting values) and with its diffusion starter ``eab``;
    the slope of log(max error) against log N over the finer half of the step counts."""
    from lmsolvers.expdesign import EXP_KS, exp_design
    from lmsolvers.exponential import exponential_method
    from lmsolvers.problems import GaussianMixture

    gm = GaussianMixture()
    x = gm.prior(64, 5.0, generator=torch.Generator().manual_seed(TEST_SEED))
    ref = gm.solution(x, 5.0, 0.05)
    rng = np.random.default_rng(TEST_SEED)
    rows = []
    for k in EXP_KS:
        for starter in ("rk4", "eab"):
            m = exponential_method(f"ebelm{k}-{starter}", exp_design(k).a, starter=starter)
            for grid_kind in ("uniform", "jittered"):
                errs = []
                for n in TOY_STEPS:
                    nodes = log_nodes(n, 5.0, 0.05)
                    if grid_kind == "jittered":  # ±30 % log-steps, same end points
                        lam = np.log(nodes)
                        steps = np.diff(lam) * np.exp(rng.uniform(-0.3, 0.3, n - 1))
                        lam = lam[0] + np.concatenate([[0.0], np.cumsum(steps)]) \
                            * (lam[-1] - lam[0]) / steps.sum()
                        nodes = np.exp(lam)
                    y = L.sample(gm.eps, L.Grid(nodes), m, x, disable=True)
                    errs.append(float((y - ref).abs().max()))
                half = len(TOY_STEPS) // 2
                slope = -np.polyfit(np.log(TOY_STEPS[half:]), np.log(errs[half:]), 1)[0]
                rows.append(dict(k=k, starter=starter, grid=grid_kind, errors=errs,
                                 slope=float(slope), order=m.order))
                print(f"  toy ebelm{k} {starter:5s} {grid_kind:8s}: slope {slope:.2f} "
                      f"(order {m.order})", flush=True)
    rec = dict(steps=list(TOY_STEPS), rows=rows)
    (out / "exponential_bench_toy.json").write_text(json.dumps(rec, indent=1))
    lines = ["# Exponential BELMs on the Gaussian-mixture toy: observed orders", "",
             "σ̄ from 5 to 0.05 (no landing step), 64 points, max error against the DOP853 "
             f"flow; slope of log error vs log N over N = {TOY_STEPS[len(TOY_STEPS) // 2]}"
             f"…{TOY_STEPS[-1]}.  Jittered: log-steps scaled by e^U, U ~ U(−0.3, 0.3).", ""]
    lines.append(markdown_table(
        ["method", "starter", "grid", "order (derived)", "observed slope"]
        + [f"N={n}" for n in TOY_STEPS],
        [[f"ebelm{r['k']}", r["starter"], r["grid"], r["order"], f"{r['slope']:.2f}"]
         + [f"{e:.1e}" for e in r["errors"]] for r in rows]))
    (out / "exponential_bench_toy.md").write_text("\n".join(lines) + "\n")
    return rec


SPACINGS = ("leading", "trailing", "linspace")
SCHEDULER_METHODS = ("obelm", "ebelm3", "ebelm5", "ddim")


def scheduler_grids(b: Bench, out: Path, budgets: tuple[int, ...], seed: int) -> dict:
    """The methods on the scheduler's own timesteps (what ``BELMScheduler`` walks in a stock
    pipeline): median error, round-off amplification and the latent's std ratio of held-out
    digits, per spacing (DDPM models; the default of the scheduler pair is chosen here)."""
    from lmsolvers.adapters.schedules import grid_from_scheduler

    ref = b.reference(seed, out)
    idx = S.resample_index(ref.shape[0], 1000, seed)
    sched = DDPMScheduler.from_pretrained(b.ode_dir())
    x0 = load_digits_split("test")[0][:64].double()
    rows = []
    for spacing in SPACINGS:
        cfg = DDPMScheduler.from_config(sched.config, timestep_spacing=spacing)
        for n in budgets:
            grid = grid_from_scheduler(cfg, n)
            for name in SCHEDULER_METHODS:
                m = L.method_from_name(name)
                e = errors(b.run_ours(m, grid, seed), ref)
                st = S.summarise_errors(e, idx)
                row = dict(spacing=spacing, nfe=n, method=name, **st)
                if m.why_not_invertible() is None:
                    with torch.no_grad(), warnings.catch_warnings():
                        warnings.simplefilter("ignore", L.ExactnessWarning)
                        lat = L.invert(b.eps_for(0, 64), grid, m, x0, disable=True)
                        rec = L.sample(b.eps_for(0, 64), grid, m, lat, disable=True)
                    row.update(R=float(m.roundoff_amplification(grid)),
                               std_ratio=float(lat.states[-1].std()) / float(grid.sigma_bar[-1]),
                               rt=float((rec - x0).norm() / x0.norm()))
                rows.append(row)
                print(f"  sched {spacing:8s} {n:4d} {name:8s}: {st['median']:.3e} "
                      f"R {row.get('R', float('nan')):.1e} std {row.get('std_ratio', 0):.3f} "
                      f"rt {row.get('rt', float('nan')):.1e}", flush=True)
    rec = dict(model=b.model, seed=seed, rows=rows)
    (out / f"exponential_bench_{b.model}.scheduler.json").write_text(json.dumps(rec, indent=1))
    return rec


#: budgets the rule's validation did not run (``--phase between``)
BETWEEN = (18, 22, 27, 35, 45, 60, 85, 120)


def between(b: Bench, out: Path) -> dict:
    """The default at NFE between the validated budgets (:data:`BETWEEN`), test seed, against
    the criterion's peers on the family each validated at the nearest budget — how the rule
    fares where neither it nor the peers' grids were chosen.  Nothing is chosen here."""
    val = json.loads((out / f"exponential_bench_{b.model}.val.json").read_text())
    ref = b.reference(TEST_SEED, out)
    idx = S.resample_index(ref.shape[0], 2000, TEST_SEED)
    specs = {s.name: s for s in S.peer_specs()}
    rows = []
    for n in BETWEEN:
        method, grid = b.default_grid(n)
        st = S.summarise_errors(errors(b.run_ours(method, grid, TEST_SEED), ref), idx)
        row = dict(nfe=n, method=method.name, **st)
        for name in CRITERION_PEERS:
            fam = _nearest_family(val, specs[name], n)
            e = errors(b.run_peer(specs[name], fam, n, TEST_SEED), ref)
            row[name] = dict(family=fam, median=float(np.median(e)))
        row["ratio"] = st["median"] / min(row[p]["median"] for p in CRITERION_PEERS)
        rows.append(row)
        print(f"  between {n:4d} {method.name:20s} {st['median']:.3e} ratio {row['ratio']:.3f}",
              flush=True)
    rec = dict(model=b.model, seed=TEST_SEED, n=ref.shape[0], rows=rows)
    (out / f"exponential_bench_{b.model}.between.json").write_text(json.dumps(rec, indent=1))
    body = [[r["nfe"], r["method"], f"{r['median']:.2e} [{r['median_lo']:.2e}, "
             f"{r['median_hi']:.2e}]"]
            + [f"{r[p]['median']:.2e} ({r[p]['family']})" for p in CRITERION_PEERS]
            + [f"{r['ratio']:.2f}"] for r in rows]
    text = (f"# The default between the validated budgets — {b.model}\n\nTest seed "
            f"{TEST_SEED} ({ref.shape[0]} noises); median per-sample error [95 % bootstrap]; "
            "each peer on the grid family validated at the nearest budget; nothing here was "
            "chosen.\n\n" + markdown_table(["NFE", "default", "median (ours)",
                                              *CRITERION_PEERS, "ours / best"], body)
            + "\n\nRegenerate: `OMP_NUM_THREADS=1 .venv/bin/python -m "
            f"benchmarks.exponential_bench --model {b.model} --phase between`.\n")
    (out / f"exponential_bench_{b.model}.between.md").write_text(text)
    return rec


#: ``--phase landing``: the weights γ of the landing's defect, and the configurations
LANDING_GAMMAS = (1.0, 0.75, 0.5, 0.35, 0.25, 0.0)
LANDING_RUNS = (("ebelm3", 0.8), ("ebelm5", 1.0))
LANDING_BUDGETS = (20, 30, 50, 100, 200)


def landing_scan(b: Bench, out: Path) -> dict:
    """Median error against the landing's kind and weight γ (validation seed, the criterion's
    per-budget best peer as the unit).  The landing is the last step and affine in γ (nodes
    1..k do not depend on it), so two runs per (method, kind, budget), γ = 1 and 1/2, give
    every γ exactly: ``x̄_0(γ) = x̄_0(1/2) + (2γ − 1)(x̄_0(1) − x̄_0(1/2))`` — γ = 0 included,
    the bare frozen prediction, which samples but cannot be inverted."""
    from lmsolvers.exponential import LANDINGS

    val = json.loads((out / f"exponential_bench_{b.model}.val.json").read_text())
    ref = b.reference(VAL_SEED, out)
    peer_best = criterion_best(val["rows"])
    rows = []
    for n in LANDING_BUDGETS:
        for base, warp in LANDING_RUNS:
            k = int(base[5:])
            grid = b.candidate_grid(None, n, warp)
            for kind in LANDINGS:
                one = b.run_ours(L.ebelm(k, kind, 1.0), grid, VAL_SEED)
                half = b.run_ours(L.ebelm(k, kind, 0.5), grid, VAL_SEED)
                ratios = [float(np.median(errors(half + (2 * g - 1) * (one - half), ref)))
                          / peer_best[n] for g in LANDING_GAMMAS]
                rows.append(dict(nfe=n, method=base, warp=warp, landing=kind, ratios=ratios))
                print(f"  landing {n:4d} {base}@{warp} {kind:6s} "
                      + " ".join(f"{x:.3f}" for x in ratios), flush=True)
    rec = dict(model=b.model, seed=VAL_SEED, n=ref.shape[0], gammas=list(LANDING_GAMMAS),
               rows=rows)
    (out / f"exponential_bench_{b.model}.landing.json").write_text(json.dumps(rec, indent=1))
    body = [[r["nfe"], f"{r['method']}@{r['warp']}", r["landing"],
             *[f"{x:.3f}" for x in r["ratios"]]] for r in rows]
    text = (f"# The landing's weight γ — {b.model}\n\nValidation seed {VAL_SEED} "
            f"({ref.shape[0]} noises); median error over the best peer's at that NFE (UniPC-3 or "
            "DPM-Solver++(3M) on its best family); γ = 0 (the bare frozen prediction) samples "
            "but cannot be inverted.\n\n"
            + markdown_table(["NFE", "method", "landing",
                              *[f"γ = {g:g}" for g in LANDING_GAMMAS]], body)
            + "\n\nRegenerate: `OMP_NUM_THREADS=1 .venv/bin/python -m "
            f"benchmarks.exponential_bench --model {b.model} --phase landing "
            f"--n-val {ref.shape[0]}`.\n")
    (out / f"exponential_bench_{b.model}.landing.md").write_text(text)
    return rec


def _print_rules(rec: dict, top: int = 5) -> None:
    for r in rec["rule_scores"][:top]:
        print("  rule", _rule_text(r), f"worst {r['worst']:.3f} geomean "
              f"{r['geomean']:.3f}", " ".join(f"{x:.2f}" for x in r["ratios"]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("ddpm", "cond", "flow", "toy"), default="ddpm")
    p.add_argument("--phase", choices=("val", "latent", "rescore", "test", "report", "scheduler",
                                       "ideal", "between", "landing"),
                   default="test",
                   help="val: validation runs and rule ranking; latent: the candidates' latents "
                        "(held-out digits, validation half) and the ranking with them; "
                        "rescore: re-rank the saved validation; test: the test set; report: "
                        "re-render the saved test; between: the default at NFE between the "
                        "validated budgets (test seed); landing: error against the landing's "
                        "weight (validation seed)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--n-val", type=int, default=128)
    p.add_argument("--n-test", type=int, default=512)
    p.add_argument("--n-rt", type=int, default=360)
    p.add_argument("--budgets", type=int, nargs="+", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--families", nargs="+", default=None,
                   help="validation: the grid families tried for the peers (default: all)")
    p.add_argument("--no-candidates", action="store_true",
                   help="validation: peers only (the default rule is not re-chosen)")
    p.add_argument("--missing-only", action="store_true",
                   help="val/latent: keep every saved row and run only the candidates (val) or "
                        "latents (latent) the saved validation record does not have yet")
    p.add_argument("--ours-only", action="store_true",
                   help="val/test: recompute only our rows, keeping the peers' rows of the "
                        "saved record (after a change of our method)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model == "toy":
        return toy_orders(args.out)
    b = Bench(args.model, args.n_val, args.n_test)
    if args.phase == "val":
        rec = validate(b, args.out, tuple(args.budgets or SWEEP),
                       tuple(args.families) if args.families else None,
                       () if args.no_candidates else CANDIDATES,
                       peers=not (args.ours_only or args.missing_only),
                       missing_only=args.missing_only)
        _print_rules(rec)
        print("  library default: " + ", ".join(f"N={n}: {default_method(n).name}"
                                                 for n in rec["budgets"]), flush=True)
        return rec
    if args.phase == "latent":  # the validation candidates' latents, then the ranking
        rec = validate_latents(b, args.out, missing_only=args.missing_only)
        _print_rules(rec)
        return rec
    if args.phase == "rescore":
        path = args.out / f"exponential_bench_{b.model}.val.json"
        rec = json.loads(path.read_text())
        rec["rule_scores"] = score_rules(rec)[:KEPT_RULES]
        path.write_text(json.dumps(rec, indent=1))
        _print_rules(rec)
        return rec
    if args.phase == "ideal":  # add the converged flow's latent ratios to a saved test record
        path = args.out / f"exponential_bench_{b.model}.json"
        rec = json.loads(path.read_text())
        tops = {r["nfe"]: float(b.default_grid(r["nfe"])[1].sigma_bar[-1])
                for r in rec["roundtrip"]}
        ideal = ideal_latent_ratios(b, list(tops.values()), *heldout("report", args.n_rt))
        for r in rec["roundtrip"]:
            r["ideal_std_ratio"] = ideal[tops[r["nfe"]]]
        path.write_text(json.dumps(rec, indent=1))
        (args.out / f"exponential_bench_{b.model}.md").write_text(render(rec))
        return rec
    if args.phase == "between":
        return between(b, args.out)
    if args.phase == "landing":
        return landing_scan(b, args.out)
    if args.phase == "scheduler":
        return scheduler_grids(b, args.out, tuple(args.budgets or TABLE_BUDGETS), VAL_SEED)
    if args.phase == "test":
        rec = test(b, args.out, tuple(args.budgets or SWEEP), args.n_rt,
                   peers=not args.ours_only)
    else:
        rec = json.loads((args.out / f"exponential_bench_{b.model}.json").read_text())
    (args.out / f"exponential_bench_{b.model}.md").write_text(render(rec))
    plot(rec, args.out / f"exponential_bench_{b.model}.png")
    return rec


if __name__ == "__main__":
    main()
