"""Round trips with a float32 and with a float64 network: where the rare large errors come from.

Exact inversion solves the sampler's relations the other way, so the two runs' float64
states agree to round-off, not bitwise.  The digits UNet runs in float32 on ``α x̄``: where a
state's last-bit difference crosses a float32 rounding boundary of the network's input, the
two runs see ε one float32 ulp apart, and that difference — not the method — sets the round
trip of that sample.  This script measures ``sample(invert(x₀))`` on held-out digits with the
network in float32 (as shipped) and in float64 (the same weights), for the library's default
exact configuration and for the stochastic O-BELM-landing at η = 0.5 (seed 7), at N = 30 and
100.  With the float64 network the worst cases fall to round-off; ``bitexact=True`` removes
them whatever the network (docs/design.md §5).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.network_precision   # ~10 min
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from lmsolvers.adapters.diffusers import alphas_cumprod_from_config, default_design, default_method

import lmsolvers as L

from .digits_bench import DigitsODE
from .digits_data import REPO_ROOT, load_digits_split
from .tables import markdown_table

STEPS = (30, 100)


def configurations(ac: np.ndarray, n: int) -> list[tuple[str, object, L.Grid, dict]]:
    """``(name, method, grid, sample/invert kwargs)`` of the measured configurations."""
    from .stochastic_digits import default_grid

    return [
        (f"default ({default_method(n).name})", default_method(n),
         default_design(n, ac).grid, {}),
        ("O-BELM-landing, η = 0.5", L.stochastic(L.obelm_landing(0.1), 0.5),
         default_grid(ac, n), {"seed": 7}),
    ]


def round_trip(eps, grid: L.Grid, method, x0: torch.Tensor, kw: dict) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lat = L.invert(eps, grid, method, x0, disable=True, **kw)
        rec = L.sample(eps, grid, method, lat, disable=True)
    return ((rec - x0).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)).numpy()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--n", type=int, default=256, help="held-out digits")
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ode = DigitsODE()
    nets = {"float32": ode, "float64": ode.in_float64()}
    ac = alphas_cumprod_from_config(ode.ddpm_config)
    x0 = load_digits_split("test")[0][:args.n].double()
    rows = []
    for n in args.steps:
        for name, method, grid, kw in configurations(ac, n):
            for net, eps in nets.items():
                err = round_trip(eps, grid, method, x0, kw)
                rows.append(dict(config=name, steps=n, network=net, median=float(np.median(err)),
                                 worst=float(err.max()), above_1e12=int((err > 1e-12).sum())))
                print(f"  {name:28s} N {n:4d} {net}: median {rows[-1]['median']:.1e} worst "
                      f"{rows[-1]['worst']:.1e} ({rows[-1]['above_1e12']} above 1e-12)",
                      flush=True)
    rec = dict(n=args.n, rows=rows, seconds=time.perf_counter() - t0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "network_precision.json").write_text(json.dumps(rec, indent=1))
    table = [[r["config"], r["steps"], r["network"], f"{r['median']:.1e}", f"{r['worst']:.1e}",
              f"{r['above_1e12']} / {args.n}"] for r in rows]
    md = ["# Round trips with a float32 and a float64 network", "",
          f"`sample(invert(x0))` on {args.n} held-out digits, float64 state, the digits DDPM's "
          "weights run in float32 (as shipped) or float64.  Relative L2 error per digit.", "",
          markdown_table(["configuration", "N", "network", "median", "worst", "above 1e-12"],
                         table), "",
          f"Run time {rec['seconds'] / 60:.1f} min.  Regenerate: "
          "`OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.network_precision`.", ""]
    (args.out / "network_precision.md").write_text("\n".join(md))
    return rec


if __name__ == "__main__":
    main()
