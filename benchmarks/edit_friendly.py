"""The peer of stochastic exact inversion: edit-friendly DDPM noise inversion
(Huberman-Spiegelglas, Kulikov and Michaeli, "An Edit Friendly DDPM Noise Space", CVPR 2024,
Algorithm 1), implemented from the paper, against ours on exactness and memory.

**The peer.**  DDPM's sampler (DDIM's η = 1) ``x̄_{m−1} = μ_m(x̄_m) + c_{m−1} z_{m−1}`` with
``μ_m(x̄) = x̄ − σ̄_m (1 − q²) ε̄(x̄, σ̄_m)``, ``q = σ̄_{m−1}/σ̄_m``, ``c² = σ̄²_{m−1}(1 − q²)`` (σ̄
form of the paper's eq. 2).  Inversion of x̄₀: draw ``x̄_m = x̄₀ + σ̄_m ñ_m`` for every node
with *independent* ñ_m (the "edit friendly" noise space), then for m = N … 1 set
``z_{m−1} = (x̄_{m−1} − μ_m(x̄_m))/c_{m−1}`` and overwrite ``x̄_{m−1} = μ_m(x̄_m) + c_{m−1}
z_{m−1}`` (so that the chain the z's describe is the one a sampler recomputes).  The result
is x̄_N and the N maps z: O(N) memory.  Sampling from them under the same ε returns x̄₀; an
edit regenerates under another ε with the same maps.  On a grid ending at σ̄₀ = 0 the last
DDPM step has no noise (c₀ = 0): the peer then stores that step's residual as its last map
(the paper's Stable Diffusion configs end at ᾱ₀ < 1, where c₀ > 0).

**Ours.**  The stochastic form of the default exact configuration
(``DiffusionSampler(eta=η)``): inversion keeps the k = 2 states of the latent and the seed,
O(k) memory; ``sample(invert(x₀, seed))`` returns x₀.

**Measured** (digits DDPM, ``--batch`` held-out digits, float64 state), per N in
10 … 1000: relative round-trip error of each; bytes of each inversion's result; peak resident
memory of the inversion above the process's baseline (a fresh child process per run, peak
reset through ``/proc/self/clear_refs``, glibc's mmap threshold lowered so that freed
buffers return to the system).

Writes ``stochastic_memory.md``/``.json`` under ``--out``.
Usage: ``.venv/bin/python -m benchmarks.edit_friendly [--quick]`` (about 10 min).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmsolvers.grid import Grid

from .digits_data import REPO_ROOT
from .tables import markdown_table

STEPS = (10, 20, 50, 100, 200, 500, 1000)
ETA = 0.5
SEED = 7
EpsFn = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass
class EFLatent:
    """The edit-friendly inversion: ``x_N`` (x̄ at node N) and ``zs[m]`` for the step landing
    on node m (m = 0 … N−1); ``residual_last``: z₀ is the raw residual (c₀ = 0)."""

    x_N: torch.Tensor
    zs: list[torch.Tensor]
    residual_last: bool

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors the inversion keeps."""
        return sum(t.numel() * t.element_size() for t in (self.x_N, *self.zs))


def _ddpm(grid: Grid, m: int) -> tuple[float, float]:
    """``(ε weight of μ_m, c_{m−1})`` of the DDPM step from node m to m − 1."""
    s, t = float(grid.sigma_bar[m]), float(grid.sigma_bar[m - 1])
    q2 = (t / s) ** 2
    return -s * (1.0 - q2), t * float(np.sqrt(1.0 - q2))


def ef_invert(eps: EpsFn, grid: Grid, x0: torch.Tensor, seed: int) -> EFLatent:
    """Algorithm 1 of the paper in σ̄ form (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    N = grid.N
    xs = [x0] + [x0 + float(grid.sigma_bar[m]) * torch.randn(
        x0.shape, generator=gen, dtype=torch.float64).to(x0.dtype) for m in range(1, N + 1)]
    zs: list[torch.Tensor] = [torch.empty(0)] * N
    residual_last = False
    for m in range(N, 0, -1):
        w, c = _ddpm(grid, m)
        mu = xs[m] + w * eps(xs[m], float(grid.sigma_bar[m]))
        if c == 0.0:
            zs[m - 1], residual_last = xs[m - 1] - mu, True
            xs[m - 1] = mu + zs[m - 1]
        else:
            zs[m - 1] = (xs[m - 1] - mu) / c
            xs[m - 1] = mu + c * zs[m - 1]
        xs[m] = xs[m] if m == N else torch.empty(0)  # the chain is not kept
    return EFLatent(xs[N], zs, residual_last)


def ef_sample(eps: EpsFn, grid: Grid, lat: EFLatent) -> torch.Tensor:
    """DDPM's sampler driven by the inversion's maps (an edit: another ``eps``)."""
    x = lat.x_N
    for m in range(grid.N, 0, -1):
        w, c = _ddpm(grid, m)
        mu = x + w * eps(x, float(grid.sigma_bar[m]))
        x = mu + (lat.zs[m - 1] if c == 0.0 else c * lat.zs[m - 1])
    return x


# ------------------------------------------------------------------- measurements
def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def one(method: str, n: int, batch: int) -> dict:
    """One inversion (and its round trip) in this process: error, result bytes, peak RSS."""
    import lmsolvers as L
    from lmsolvers.griddesign import design_schedule_grid

    from .digits_bench import DigitsODE
    from .digits_data import load_digits_split

    torch.set_num_threads(1)
    ode = DigitsODE()
    from lmsolvers.adapters.diffusers import alphas_cumprod_from_config

    grid = design_schedule_grid(L.obelm_landing(0.1), n, alphas_cumprod_from_config(
        ode.ddpm_config)).grid
    x, _ = load_digits_split("test")
    x0 = x[:batch].double()
    m = L.stochastic(L.obelm_landing(0.1), ETA)
    ode(x0, float(grid.sigma_bar[1]))  # warm-up: the model's own buffers are not counted
    import warnings

    base = _kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "ours":
            lat = L.invert(ode, grid, m, x0, seed=SEED, disable=True)
            held = sum(s.numel() * s.element_size() for s in lat.states)
        else:
            lat = ef_invert(ode, grid, x0, SEED)
            held = lat.nbytes
    seconds = time.perf_counter() - t0
    peak = _kib("VmHWM") - base
    rec = L.sample(ode, grid, m, lat, disable=True) if method == "ours" else \
        ef_sample(ode, grid, lat)
    err = ((rec - x0).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)).numpy()
    return {"method": method, "steps": n, "batch": batch, "held_bytes": held,
            "peak_kib": peak, "seconds": seconds, "median": float(np.median(err)),
            "worst": float(err.max())}


def _child(method: str, n: int, batch: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "benchmarks.edit_friendly", "--one", method,
                          str(n), "--batch", str(batch)], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{method} N={n} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--one", nargs=2, metavar=("METHOD", "N"), default=None,
                   help="(internal) one measurement in this process, as JSON")
    p.add_argument("--quick", action="store_true", help="a reduced run (the tests')")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch = [10, 20], 4
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.batch)))
        return {}
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.steps:
        for method in ("ours", "edit-friendly"):
            r = _child(method, n, args.batch)
            rows.append(r)
            print(f"{method} N {n}: held {r['held_bytes'] / 2**20:.2f} MiB, peak "
                  f"{r['peak_kib'] / 1024:.1f} MiB, round trip {r['worst']:.1e}", flush=True)
    record = {"config": {"steps": args.steps, "batch": args.batch, "eta": ETA, "seed": SEED},
              "rows": rows}
    (args.out / "stochastic_memory.json").write_text(json.dumps(record, indent=1))
    (args.out / "stochastic_memory.md").write_text(render(record))
    return record


def render(rec: dict) -> str:
    cfg = rec["config"]
    table = []
    for n in cfg["steps"]:
        by = {r["method"]: r for r in rec["rows"] if r["steps"] == n}
        o, e = by["ours"], by["edit-friendly"]
        table.append([n, f"{o['held_bytes'] / 2**20:.3f}", f"{e['held_bytes'] / 2**20:.2f}",
                      f"{o['peak_kib'] / 1024:.1f}", f"{e['peak_kib'] / 1024:.1f}",
                      f"{o['median']:.1e} / {o['worst']:.1e}",
                      f"{e['median']:.1e} / {e['worst']:.1e}",
                      f"{o['seconds']:.1f}", f"{e['seconds']:.1f}"])
    return "\n".join([
        "# Stochastic exact inversion: ours vs edit-friendly DDPM inversion", "",
        f"Digits DDPM, {cfg['batch']} held-out digits (float64 state), designed grid of the "
        f"default configuration; ours: its stochastic form at η = {cfg['eta']} (seed "
        f"{cfg['seed']}); edit-friendly: Huberman-Spiegelglas et al. (CVPR 2024) Alg. 1 on the "
        "same grid (DDPM steps, η = 1).  Held: bytes the inversion returns; peak: resident "
        "memory of the inversion above the process's baseline (fresh child process each); "
        "round trip: median / worst relative error of sample(invert(x0)).", "",
        markdown_table(["N", "held MiB, ours", "held MiB, edit-friendly",
                        "peak MiB, ours", "peak MiB, edit-friendly", "round trip, ours",
                        "round trip, edit-friendly", "inversion s, ours",
                        "inversion s, edit-friendly"], table), "",
        "Regenerate: `.venv/bin/python -m benchmarks.edit_friendly`.", ""])


if __name__ == "__main__":
    main()
