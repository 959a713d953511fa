"""The samplers the benchmarks compare, their grids and honest NFE counts.

Every sampler integrates the same σ̄-ODE ``dx̄/dσ̄ = ε̄(x̄, σ̄)`` from the same start on the
same nodes, fed the same ε-function, so differences come from the formulas:

* ours (core, :func:`lmsolvers.sample`): DDIM, BDIA(γ), O-BELM, EDICT(p) in the published
  order and in the community pipeline's alternating order, the designed k-step BELMs
  ``lmsolvers.belm(k)`` (RK4 starter), and, when the library provides one, the default
  configuration of ``DiffusionSampler`` (:func:`default_spec`, the hook);
* peers, diffusers' own ``step`` loops: DPM-Solver++(2M) and (3M)
  (``DPMSolverMultistepScheduler``, data prediction) and UniPC
  (``UniPCMultistepScheduler``, B(h) = bh2, order 3, data prediction).  Their scheduler is
  built for the trailing spacing with ``final_sigmas_type="zero"``; :func:`peer_solve` then
  puts the run's own σ̄ nodes (float64) into it, so peers walk exactly the nodes the core
  samplers walk, and evaluates ε at those σ̄.  :func:`dpmpp_reference` and
  :func:`unipc_reference` are independent float64 transcriptions of the published algorithms
  (DPM-Solver++ Alg. 2 and its third-order multistep update; UniPC's B(h) predictor and
  corrector), used to check that the diffusers configuration reproduces them
  (:func:`check_peers`).

Grids (:func:`family_grid`): a documented family of σ̄ grids on a DDPM's training table,
all from ``σ̄(t = T−1)`` to σ̄ = 0.  ``trailing`` is diffusers' trailing spacing (the
grid DPM-Solver++ uses); the others are listed in :data:`GRID_FAMILIES`.

At an *NFE budget* each sampler gets the largest number of steps whose *counted* network
evaluations fit (EDICT: half; RK4-started BELMs: fewer); :class:`CountingEps` counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

import lmsolvers as L
from lmsolvers.engine import CountingEps
from lmsolvers.grid import alphas_cumprod_from_betas, linear_betas, vp_alpha

__all__ = [
    "CountingEps",
    "SamplerSpec",
    "GRID_FAMILIES",
    "family_grid",
    "make_specs",
    "default_spec",
    "steps_for_budget",
    "run",
    "peer_config",
    "peer_solve",
    "dpmpp_reference",
    "unipc_reference",
    "check_peers",
    "available_belm_ks",
    "bootstrap_ci",
    "summarise_errors",
    "plot_convergence",
]

EpsBar = Callable[[torch.Tensor, float], torch.Tensor]

#: the grid family every sampler is also tried on (pilot at NFE 20, docs/benchmarks.md)
GRID_FAMILIES = ("trailing", "trailing-split", "linspace-t0", "karras-3", "karras-5",
                 "karras-7", "log-uniform")

GRID_FAMILY_DOC = {
    "trailing": "diffusers' trailing spacing: t_i = round(i·T/N) − 1, then σ̄ = 0",
    "trailing-split": "trailing with N−1 steps, its last step (σ̄_1 → 0) split in two halves",
    "linspace-t0": "timesteps round(linspace(T−1, 0, N)) (the last one t = 0), then σ̄ = 0",
    "karras-3": "Karras et al. ρ = 3 in σ̄ from σ̄(T−1) to σ̄(0) (N−1 steps), then σ̄ = 0",
    "karras-5": "as karras-3 with ρ = 5",
    "karras-7": "as karras-3 with ρ = 7 (EDM's default)",
    "log-uniform": "log σ̄ uniform from σ̄(T−1) to σ̄(0) (N−1 steps), then σ̄ = 0",
}


# --------------------------------------------------------------------- grids
def linear_beta_table(num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                      beta_end: float = 0.02) -> np.ndarray:
    """σ̄_t = sqrt((1 − ᾱ_t)/ᾱ_t), t = 0..T−1, of DDPM's linear β schedule (float64)."""
    ac = alphas_cumprod_from_betas(linear_betas(num_train_timesteps, beta_start, beta_end))
    return np.sqrt((1.0 - ac) / ac)


def family_grid(family: str, n: int, sbar_table: np.ndarray) -> np.ndarray:
    """The σ̄ nodes (increasing, first 0, last ``σ̄(T−1)``) of ``family`` with ``n`` steps.

    ``sbar_table`` is σ̄ of the training timesteps t = 0..T−1 (:func:`linear_beta_table`).
    Trailing and linspace nodes lie on training timesteps; Karras and log-uniform nodes do
    not (the ε-function then evaluates the network at a fractional timestep).
    """
    T = sbar_table.size
    s_max, s_min = float(sbar_table[-1]), float(sbar_table[0])
    if n < 1:
        raise ValueError(f"a grid needs n ≥ 1 steps, got {n}")
    if family == "trailing":
        # diffusers' round(arange(T, 0, −T/N)) − 1, bit for bit, cut to N: for some N
        # (61, 103, 244, …) the float arange has N + 1 entries, the last one giving t = −1
        ts = np.arange(T, 0, -T / n).round()[:n].astype(np.int64) - 1
        if np.unique(ts).size != n or ts.min() < 0:
            raise ValueError(f"trailing spacing with {n} steps repeats a timestep (T = {T})")
        nodes = sbar_table[ts]
    elif family == "trailing-split":
        if n < 2:
            return family_grid("trailing", n, sbar_table)
        up = family_grid("trailing", n - 1, sbar_table)
        return np.concatenate([[0.0, 0.5 * up[1]], up[1:]])
    elif family == "linspace-t0":
        if n < 2:
            return family_grid("trailing", n, sbar_table)
        ts = np.unique(np.round(np.linspace(T - 1, 0, n)).astype(np.int64))
        if ts.size != n:
            raise ValueError(f"linspace-t0 with {n} steps repeats a timestep (T = {T})")
        nodes = sbar_table[ts]
    elif family.startswith("karras-"):
        if n < 2:
            return family_grid("trailing", n, sbar_table)
        rho = float(family.split("-", 1)[1])
        ramp = np.linspace(0.0, 1.0, n)
        nodes = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        nodes[0], nodes[-1] = s_max, s_min
    elif family == "log-uniform":
        if n < 2:
            return family_grid("trailing", n, sbar_table)
        nodes = np.geomspace(s_max, s_min, n)
        nodes[0], nodes[-1] = s_max, s_min
    else:
        raise ValueError(f"unknown grid family {family!r}; expected one of {GRID_FAMILIES}")
    return np.concatenate([[0.0], np.sort(np.asarray(nodes, dtype=np.float64))])


# ------------------------------------------------------------------- samplers
@dataclass(frozen=True)
class SamplerSpec:
    """One sampler.  ``kind`` is ``'lm'`` (a core integrator: LM method or EDICT), ``'dpm'``
    (DPM-Solver++ of ``order``) or ``'unipc'`` (UniPC-bh2 of ``order``).  ``grid_fn``, when
    given, maps a step count to the sampler's own σ̄ nodes (the default configuration
    brings its grid); otherwise the sampler walks the grid family of the run."""

    name: str
    kind: str
    method: Any = None
    order: int = 2
    grid_fn: Callable[[int], np.ndarray] | None = None

    @property
    def is_peer(self) -> bool:
        """A diffusers scheduler (no inversion)."""
        return self.kind in ("dpm", "unipc")

    @property
    def invertible(self) -> bool:
        """Whether the sampler has an exact inverse (DDIM is inverted approximately)."""
        return self.kind == "lm" and self.method.why_not_invertible() is None

    @property
    def exact_or_ddim(self) -> bool:
        """The samplers whose round trip the benchmark measures (DDIM: classic inversion)."""
        return self.kind == "lm"


def available_belm_ks(ks: tuple[int, ...] = (3, 4, 5)) -> list[int]:
    """The k of the designed BELMs ``lmsolvers.belm(k)`` the installed library provides."""
    belm = getattr(L, "belm", None)
    if belm is None:
        return []
    out = []
    for k in ks:
        try:
            belm(k)
        except Exception:  # noqa: BLE001 - a k the design module does not offer
            continue
        out.append(k)
    return out


#: the names of the built-in samplers, in table order
PEERS = ("DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC-3 (bh2)")


def base_names(belm_ks: tuple[int, ...] = (3, 4, 5)) -> list[str]:
    """The names :func:`make_specs` gives without a default row (no sympy work)."""
    return ["DDIM", "BDIA(0.5)", "BDIA(1)", "O-BELM", "EDICT(0.93)", "EDICT(0.93, alt)",
            *(f"BELM-{k}" for k in belm_ks), *PEERS]


def canonical_order(names: list[str]) -> list[str]:
    """``names`` in table order: ours (default row last among them), then the peers."""
    base = base_names()
    ours = [nm for nm in base if nm not in PEERS]

    def key(nm: str) -> tuple[int, int]:
        if nm in ours:
            return 0, ours.index(nm)
        if nm in PEERS:
            return 2, PEERS.index(nm)
        return 1, 0

    return sorted(names, key=key)


def make_specs(belm_ks: tuple[int, ...] = (3, 4, 5), names: list[str] | None = None,
               default: SamplerSpec | None = None) -> list[SamplerSpec]:
    """Ours (DDIM, BDIA(0.5), BDIA(1), O-BELM, EDICT both orders, designed BELMs, and the
    ``default`` spec when given), then the peers; ``names`` keeps a subset."""
    specs = [
        SamplerSpec("DDIM", "lm", L.ddim()),
        SamplerSpec("BDIA(0.5)", "lm", L.bdia(0.5)),
        SamplerSpec("BDIA(1)", "lm", L.bdia(1.0)),
        SamplerSpec("O-BELM", "lm", L.obelm()),
        SamplerSpec("EDICT(0.93)", "lm", L.edict(0.93)),
        SamplerSpec("EDICT(0.93, alt)", "lm", L.edict(0.93, alternate=True)),
    ]
    wanted = None if names is None else set(names)
    for k in available_belm_ks(tuple(k for k in belm_ks
                                     if wanted is None or f"BELM-{k}" in wanted)):
        specs.append(SamplerSpec(f"BELM-{k}", "lm", L.belm(k)))
    if default is not None:
        specs.append(default)
    return select_specs(specs + peer_specs(), names)


def peer_specs() -> list[SamplerSpec]:
    """The diffusers peers every benchmark compares: DPM-Solver++(2M), (3M), UniPC-3 (bh2)."""
    return [SamplerSpec("DPM-Solver++(2M)", "dpm", order=2),
            SamplerSpec("DPM-Solver++(3M)", "dpm", order=3),
            SamplerSpec("UniPC-3 (bh2)", "unipc", order=3)]


def select_specs(specs: list[SamplerSpec], names: list[str] | None) -> list[SamplerSpec]:
    """The ``specs`` named in ``names`` (all when ``None``), in ``specs``' order; an unknown
    name is a ``ValueError`` listing the known ones."""
    if names is not None:
        unknown = set(names) - {s.name for s in specs}
        if unknown:
            raise ValueError(f"unknown sampler names {sorted(unknown)}; known: "
                             f"{[s.name for s in specs]}")
        specs = [s for s in specs if s.name in names]
    return specs


def default_spec(unet: torch.nn.Module, scheduler: Any) -> tuple[SamplerSpec | None, str]:
    """The hook for the library's default exact configuration: ``(spec, note)``.

    The row "default (ours)" is what ``DiffusionSampler(unet, scheduler, n)`` does when given
    no method: its method and its grid for n (read from the object, whatever designs them).
    When that is plain O-BELM on ``grid_from_scheduler(scheduler, n)`` (no default
    configuration yet) the spec is ``None`` and the note says so.  The row runs the
    default's method on the default's σ̄ nodes with the benchmark's ε (same ODE as every row).
    """
    from lmsolvers.adapters.diffusers import DiffusionSampler, grid_from_scheduler

    def build(n: int) -> Any:
        return DiffusionSampler(unet, scheduler, n, disable_progress=True)

    try:
        probe = [build(n) for n in (10, 20, 50)]
    except Exception as exc:  # noqa: BLE001 - a half-built default must not stop the benchmark
        return None, f"DiffusionSampler could not be built without a method ({exc!r})"
    plain = all(getattr(ds.method, "key", None) == L.obelm().key
                and np.array_equal(ds.grid.sigma_bar, grid_from_scheduler(scheduler, n).sigma_bar)
                for ds, n in zip(probe, (10, 20, 50), strict=True))
    if plain:
        return None, ("DiffusionSampler's default is still O-BELM on the scheduler's grid; "
                      "`samplers.default_spec` adds the row 'default (ours)' once it is not")
    method = probe[0].method

    def grid_fn(n: int) -> np.ndarray:
        return np.asarray(build(n).grid.sigma_bar, dtype=np.float64)

    name = getattr(method, "name", type(method).__name__)
    return (SamplerSpec("default (ours)", "lm", method, grid_fn=grid_fn),
            f"DiffusionSampler default: {name} on its own grid")


def _nfe_of(spec: SamplerSpec, n_steps: int) -> int:
    """Network evaluations of one sampling run with ``n_steps`` steps (counted, not assumed)."""
    if spec.is_peer:
        return n_steps
    sb = spec.grid_fn(n_steps) if spec.grid_fn is not None else np.linspace(0.0, 1.0,
                                                                            n_steps + 1)
    ce = CountingEps(lambda x, s: torch.zeros_like(x))
    L.sample(ce, L.Grid(sb), spec.method, torch.zeros(1, 1, dtype=torch.float64),
             disable=True)
    return ce.calls


_BUDGET_CACHE: dict[tuple[int, str, int], int | None] = {}


def steps_for_budget(spec: SamplerSpec, budget: int) -> int | None:
    """The largest step count whose NFE is at most ``budget`` (None if none is possible)."""
    key = (id(spec), spec.name, budget)
    if key not in _BUDGET_CACHE:
        _BUDGET_CACHE[key] = _steps_for_budget(spec, budget)
    return _BUDGET_CACHE[key]


def _steps_for_budget(spec: SamplerSpec, budget: int) -> int | None:
    k = getattr(spec.method, "k", 1) if spec.kind == "lm" else 1
    per_step = getattr(spec.method, "nfe_per_step", 1) if spec.kind == "lm" else 1
    for n in range(budget // max(per_step, 1), max(k, 1) - 1, -1):
        if n >= 1 and _nfe_of(spec, n) <= budget:
            return n
    return None


def run(spec: SamplerSpec, sigma_bar: np.ndarray, xbar_N: torch.Tensor, eps: EpsBar
        ) -> tuple[torch.Tensor, int]:
    """``(x̄_0, NFE)`` of one sampler on the σ̄ nodes ``sigma_bar`` (increasing, σ̄_0 = 0)."""
    if spec.is_peer:
        return peer_solve(spec, sigma_bar, xbar_N, eps)
    ce = CountingEps(eps)
    return L.sample(ce, L.Grid(sigma_bar), spec.method, xbar_N, disable=True), ce.calls


# ---------------------------------------------------------------------- peers
def peer_config(spec: SamplerSpec, base_config: Any | None = None) -> dict:
    """The diffusers config of a peer: data prediction, ``spec.order``, trailing spacing,
    final σ = 0, lower-order final steps; optionally on top of a model's config."""
    cfg = dict(base_config) if base_config is not None else dict(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    cfg = {k: v for k, v in cfg.items() if k in keep}
    cfg.update(solver_order=spec.order, prediction_type="epsilon", timestep_spacing="trailing",
               final_sigmas_type="zero", lower_order_final=True, thresholding=False)
    if spec.kind == "dpm":
        cfg.update(algorithm_type="dpmsolver++", solver_type="midpoint", euler_at_final=False,
                   use_karras_sigmas=False, use_lu_lambdas=False)
    elif spec.kind == "unipc":
        cfg.update(predict_x0=True, solver_type="bh2", disable_corrector=[],
                   use_karras_sigmas=False)
    else:
        raise ValueError(f"{spec.name} is not a diffusers peer")
    return cfg


def _scheduler(spec: SamplerSpec, base_config: Any | None = None) -> Any:
    cls = DPMSolverMultistepScheduler if spec.kind == "dpm" else UniPCMultistepScheduler
    return cls.from_config(peer_config(spec, base_config))


def peer_solve(spec: SamplerSpec, sigma_bar: np.ndarray, xbar_N: torch.Tensor, eps: EpsBar,
               base_config: Any | None = None, native: bool = False
               ) -> tuple[torch.Tensor, int]:
    """diffusers' own ``step`` loop of a peer on the σ̄ nodes ``sigma_bar``; ``(x̄_0, NFE)``.

    The scheduler is set up for ``N`` steps (trailing, final σ = 0), then its ``sigmas``
    are replaced by ``sigma_bar`` in float64 (``native=True`` keeps diffusers' own float32
    trailing sigmas instead: a check that the replacement changes nothing but round-off).
    The model output at model-space ``x`` and node σ̄ is ``ε̄(x/α, σ̄)`` with
    ``α = 1/sqrt(1 + σ̄²)``.  ``DPMSolverMultistepScheduler.step`` computes in float32 (it
    casts the sample); UniPC keeps the sample's dtype.
    """
    n = len(sigma_bar) - 1
    sched = _scheduler(spec, base_config)
    sched.set_timesteps(n)
    if not native:
        sched.sigmas = torch.tensor(np.asarray(sigma_bar, dtype=np.float64)[::-1].copy())
        # the labels only index the step; for some N diffusers' trailing has N + 1 of them
        sched.timesteps = sched.timesteps[:n]
        sched.num_inference_steps = n
    sched.set_begin_index(0)
    sig = sched.sigmas.double().numpy()
    x = xbar_N * float(vp_alpha(sig[0]))
    nfe = 0
    for i, t in enumerate(sched.timesteps):
        a = float(vp_alpha(sig[i]))
        out = eps(x / a, float(sig[i]))
        nfe += 1
        x = sched.step(out.to(x.dtype), t, x).prev_sample
    return x.to(xbar_N.dtype) / float(vp_alpha(sig[-1])), nfe


def dpmpp_reference(order: int, sigma_bar: np.ndarray, xbar_N: torch.Tensor, eps: EpsBar
                    ) -> torch.Tensor:
    """DPM-Solver++(``order``M) (Lu et al. 2022, Alg. 2; third order as in the authors'
    code), float64, written in x̄ = x/α: with λ = −log σ̄, ``r = σ̄_t/σ̄_s = e^{−h}`` and the
    data prediction ``D = x̄ − σ̄ ε̄`` a step is ``x̄_t = r x̄_s + (1 − r)·D̃``.  Order warms
    up 1, 2, …; the step onto σ̄ = 0 is first order (λ = ∞), and for fewer than 15 steps
    the one before it is at most second order (``lower_order_final``)."""
    sb = np.asarray(sigma_bar, dtype=np.float64)[::-1]
    n = sb.size - 1
    lam = [-math.log(s) if s > 0 else math.inf for s in sb]
    x, ms = xbar_N, []
    for i in range(n):
        ms.append(x - sb[i] * eps(x, float(sb[i])))
        p = min(order, i + 1)
        if sb[i + 1] == 0.0:
            p = 1
        elif i == n - 2 and n < 15:
            p = min(p, 2)
        r = sb[i + 1] / sb[i]
        if p == 1:
            d = ms[-1]
        else:
            h = lam[i + 1] - lam[i]
            r0 = (lam[i] - lam[i - 1]) / h
            d10 = (ms[-1] - ms[-2]) / r0
            if p == 2:
                d = ms[-1] + 0.5 * d10
            else:
                r1 = (lam[i - 1] - lam[i - 2]) / h
                d11 = (ms[-2] - ms[-3]) / r1
                d1 = d10 + r0 / (r0 + r1) * (d10 - d11)
                d2 = (d10 - d11) / (r0 + r1)
                phi1 = math.expm1(-h)
                phi2 = phi1 / h + 1.0
                phi3 = phi2 / h - 0.5
                # x_t = (σ_t/σ_s) x − α_t φ1 D0 + α_t φ2 D1 − α_t φ3 D2, divided by α_t
                x = r * x - phi1 * ms[-1] + phi2 * d1 - phi3 * d2
                continue
        x = r * x + (1.0 - r) * d
    return x


def unipc_reference(order: int, sigma_bar: np.ndarray, xbar_N: torch.Tensor, eps: EpsBar
                    ) -> torch.Tensor:
    """UniPC with B(h) = e^{−h} − 1 (bh2), data prediction (Zhao et al. 2023), float64, in
    x̄: predictor UniP-p ``x̄_t = r x̄_s + (1 − r)(m_s + Σ ρ_k D_k)``; after the model call at
    the predicted point the corrector UniC-p recomputes x̄_t with that output (not at the
    last step); the next step uses the output at the *predicted* point.  ρ solve the
    Vandermonde systems ``R ρ = g/B(h)``, ``g_i = i!·hφ_{i+1}(h)`` (ρ = 1/2 for UniP-2 and
    UniC-1); order warms up 1, 2, … and ``lower_order_final`` uses min(order, steps left)."""
    sb = np.asarray(sigma_bar, dtype=np.float64)[::-1]
    n = sb.size - 1
    lam = [-math.log(s) if s > 0 else math.inf for s in sb]
    x = xbar_N
    ms = [x - sb[0] * eps(x, float(sb[0]))]
    for i in range(n):
        p = min(order, i + 1, n - i)
        r = sb[i + 1] / sb[i]
        h = lam[i + 1] - lam[i]
        hh = -h
        rks = [(lam[i - k] - lam[i]) / h for k in range(1, p)] + [1.0]
        dks = [(ms[-1 - k] - ms[-1]) / rks[k - 1] for k in range(1, p)]
        g, fact = [], 1.0
        hphi = math.expm1(hh) / hh - 1.0  # hφ_2(h); h = ∞ (σ̄_t = 0) is fine in floats
        b_h = math.expm1(hh)
        for j in range(1, p + 1):
            g.append(hphi * fact / b_h)
            fact *= j + 1
            hphi = hphi / hh - 1.0 / fact
        R = np.array([[rk ** (j - 1) for rk in rks] for j in range(1, p + 1)])
        if p == 1:
            pred = ms[-1]
        else:
            rho_p = [0.5] if p == 2 else list(np.linalg.solve(R[:-1, :-1], np.array(g[:-1])))
            pred = ms[-1] + sum(c * d for c, d in zip(rho_p, dks, strict=True))
        x_pred = r * x + (1.0 - r) * pred
        if i == n - 1:
            return x_pred
        m_t = x_pred - sb[i + 1] * eps(x_pred, float(sb[i + 1]))
        rho_c = [0.5] if p == 1 else list(np.linalg.solve(R, np.array(g)))
        corr = ms[-1] + sum(c * d for c, d in zip(rho_c[:-1], dks, strict=True)) \
            + rho_c[-1] * (m_t - ms[-1])
        x = r * x + (1.0 - r) * corr
        ms.append(m_t)
    return x


def check_peers(eps: EpsBar, xbar_N: torch.Tensor, sbar_table: np.ndarray,
                steps: tuple[int, ...] = (10, 20, 50)) -> dict[str, Any]:
    """Checks that diffusers' configured schedulers are the published algorithms.

    For each peer and step count (trailing grid): the max abs difference between the
    diffusers run and the independent transcription (:func:`dpmpp_reference`,
    :func:`unipc_reference`), and between the run on diffusers' own float32 sigmas and on
    the benchmark's float64 nodes; plus the config keys that select the algorithm.
    """
    out: dict[str, Any] = {}
    for name in PEERS:
        spec = next(s for s in make_specs(belm_ks=(), names=[name]))
        ref_fn = dpmpp_reference if spec.kind == "dpm" else unipc_reference
        cfg = _scheduler(spec).config
        keys = ("algorithm_type", "predict_x0", "solver_type", "solver_order",
                "lower_order_final", "euler_at_final", "final_sigmas_type", "timestep_spacing",
                "disable_corrector")
        row: dict[str, Any] = {"config": {k: cfg[k] for k in keys if k in cfg}}
        for n in steps:
            sb = family_grid("trailing", n, sbar_table)
            ours, _ = peer_solve(spec, sb, xbar_N, eps)
            native, _ = peer_solve(spec, sb, xbar_N, eps, native=True)
            ref = ref_fn(spec.order, sb, xbar_N, eps)
            row[f"vs_published_{n}"] = float((ours - ref).abs().max())
            row[f"native_sigmas_{n}"] = float((ours - native).abs().max())
        out[name] = row
    return out


# ------------------------------------------------------------------ statistics
def bootstrap_ci(values: np.ndarray, stat: Callable[[np.ndarray], np.ndarray],
                 idx: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` (vectorised over rows) of ``values`` with
    the resample index matrix ``idx`` (B × n)."""
    reps = stat(values[idx])
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _median(a: np.ndarray) -> np.ndarray:
    return np.median(a, axis=-1)


def _rms(a: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(a**2, axis=-1))


def resample_index(n: int, reps: int, seed: int) -> np.ndarray:
    """A seeded (reps × n) bootstrap index matrix (the same for every sampler: paired)."""
    return np.random.default_rng(seed).integers(0, n, size=(reps, n))


def summarise_errors(err: np.ndarray, idx: np.ndarray) -> dict[str, float]:
    """Median and RMS of per-sample errors, each with its bootstrap 95 % interval.  A
    non-finite error (a diverged sample) counts as +inf: medians stay defined."""
    e = np.where(np.isfinite(err), err, np.inf)
    with np.errstate(over="ignore", invalid="ignore"):
        med_lo, med_hi = bootstrap_ci(e, _median, idx)
        rms_lo, rms_hi = bootstrap_ci(e, _rms, idx)
        rms = float(_rms(e))
    return dict(median=float(np.median(e)), median_lo=med_lo, median_hi=med_hi,
                rms=rms, rms_lo=rms_lo, rms_hi=rms_hi, n=int(e.size),
                n_diverged=int((~np.isfinite(err)).sum()))



def per_sample_error(x0: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """RMS over pixels of each sample (inf where the sample is not finite)."""
    d = (x0 - ref).reshape(len(x0), -1)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.sqrt(np.mean(d**2, axis=1))
    return np.where(np.isfinite(e), e, np.inf)


def fmt_value(v: Any, fmt: str = ".2e") -> str:
    """``format(v, fmt)``, with — for a missing or NaN value and "diverged" for an infinite one."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "—"
    if isinstance(v, float) and np.isinf(v):
        return "diverged"
    return format(v, fmt)


def stats_cell(r: dict | None, key: str = "median", bold: bool = False) -> str:
    """``value [lo, hi]`` of a stats row (— when the budget does not fit the sampler)."""
    if r is None or r.get("steps") is None:
        return "—"
    v = fmt_value(r[key])
    v = f"**{v}**" if bold else v
    return f"{v} [{fmt_value(r[key + '_lo'])}, {fmt_value(r[key + '_hi'])}]"


# ------------------------------------------------------------------- plotting
def finite_rows(rows: list[dict], name: str) -> list[dict]:
    """The rows of sampler ``name`` that ran and have a finite median."""
    return [r for r in rows if r["sampler"] == name and r.get("steps")
            and np.isfinite(r["median"])]


def nfe_ticks(ax: Any) -> None:
    """Plain NFE tick labels 10, 20, 50, 100, 200 on a log axis."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xticks([10, 20, 50, 100, 200])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_convergence(rows: list[dict], path: Path, title: str,
                     labels: dict[str, str] | None = None) -> None:
    """One log-log panel per sampler: median error against NFE with its bootstrap band;
    grey, for comparison, DPM-Solver++(2M)'s median.  ``labels`` renames panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["sampler"] for r in rows))
    ncol = 4
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow), squeeze=False,
                             sharex=True)
    cmp_rows = finite_rows(rows, "DPM-Solver++(2M)")
    for ax, nm in zip(axes.flat, names, strict=False):
        rs = finite_rows(rows, nm)
        if cmp_rows and nm != "DPM-Solver++(2M)":
            ax.plot([r["nfe"] for r in cmp_rows], [r["median"] for r in cmp_rows], "-",
                    color="0.7", lw=1, label="DPM-Solver++(2M)")
        if rs:
            nfe = [r["nfe"] for r in rs]
            hi = [r["median_hi"] if np.isfinite(r["median_hi"]) else r["median"] for r in rs]
            ax.fill_between(nfe, [r["median_lo"] for r in rs], hi, alpha=0.3, color="C0")
            ax.plot(nfe, [r["median"] for r in rs], "o-", ms=3, color="C0", label=nm)
        ax.set(xscale="log", yscale="log", title=(labels or {}).get(nm, nm))
        nfe_ticks(ax)
        ax.tick_params(labelbottom=True)
        ax.grid(True, which="both", alpha=0.3)
        ax.title.set_fontsize(9)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("NFE")
    for ax in axes[:, 0]:
        ax.set_ylabel("median error")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
