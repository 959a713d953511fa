"""Round-trip error report: float dtypes vs bit-exact mode, per step count.

Runs ``x̄_0 → invert → sample`` with O-BELM on

1. a seeded random tanh ε network (always), on a power grid σ̄ ∈ [0, 14.6], and
2. the digits DDPM (``models/digits_ddpm``, via ``lmsolvers.adapters.DiffusersEps``)
   on 16 held-out test digits, on the model's DDIM ('leading') grid, if it exists.

Prints markdown tables (max |error| of the round trip; "bitwise" when the result is
bitwise the fixed-point image of x̄_0) with the grid's backward parasitic-mode
amplification beside them (pasted into docs/bitexact.md).
Usage: ``.venv/bin/python -m benchmarks.roundtrip_report``.
"""

from __future__ import annotations

import sys
import time

import torch

import lmsolvers as L
from lmsolvers.problems import TanhField
from lmsolvers.roundtrip import format_roundtrip_table, roundtrip_report

from .digits_data import REPO_ROOT, load_digits_split

STEPS = (10, 20, 50, 100)


def tanh_report(method: L.LMMethod) -> str:
    net = TanhField(16, hidden=16, seed=0)
    x0 = torch.randn(8, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grids = [L.Grid.power(n, 14.6) for n in STEPS]
    return format_roundtrip_table(roundtrip_report(lambda dt, g: net, method, grids, x0))


def digits_report(method: L.LMMethod) -> str | None:
    path = REPO_ROOT / "models" / "digits_ddpm"
    if not (path / "config.json").exists():
        return None
    try:
        from diffusers import DDIMScheduler, UNet2DModel
        from lmsolvers.adapters import DiffusersEps, grid_from_scheduler
    except ImportError as exc:  # the adapter or diffusers is not installed
        print(f"(digits model skipped: {exc})", file=sys.stderr)
        return None
    sched = DDIMScheduler.from_pretrained(path)
    x, _ = load_digits_split("test")
    x0 = x[:16].to(torch.float64)
    models: dict[torch.dtype, torch.nn.Module] = {}

    def make_eps(dt: torch.dtype, grid: L.Grid):
        if dt not in models:
            models[dt] = UNet2DModel.from_pretrained(path).eval().to(dt)
        return DiffusersEps(models[dt], grid, sched)

    grids = [grid_from_scheduler(sched, n) for n in STEPS]
    with torch.no_grad():
        rows = roundtrip_report(make_eps, method, grids, x0)  # x̄_0 = x_0 (ᾱ_0 ≈ 1)
    return format_roundtrip_table(rows)


def tiny_conditional_report(method: L.LMMethod, guidance_scale: float = 3.0) -> str | None:
    """The tiny random-weight SD-style conditional UNet (lmsolvers.adapters.tiny), with
    classifier-free guidance, on SD-1.x's DDIM grid; latents 2×4×8×8."""
    try:
        from diffusers import DDIMScheduler
        from lmsolvers.adapters import DiffusersEps, grid_from_scheduler
        from lmsolvers.adapters.tiny import (
            SD_SCHEDULER_CONFIG,
            tiny_conditional_unet,
            tiny_prompt_embeds,
        )
    except ImportError as exc:
        print(f"(tiny conditional UNet skipped: {exc})", file=sys.stderr)
        return None
    sched = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    cond, uncond = tiny_prompt_embeds(1, batch=2), tiny_prompt_embeds(2, batch=2)
    models: dict[torch.dtype, torch.nn.Module] = {}

    def make_eps(dt: torch.dtype, grid: L.Grid):
        if dt not in models:
            models[dt] = tiny_conditional_unet(seed=0, dtype=dt)
        return DiffusersEps(models[dt], grid, sched, guidance_scale=guidance_scale,
                            prompt_embeds=cond.to(dt), negative_prompt_embeds=uncond.to(dt))

    grids = [grid_from_scheduler(sched, n) for n in STEPS]
    with torch.no_grad():
        rows = roundtrip_report(make_eps, method, grids, x0)
    return format_roundtrip_table(rows)


def main() -> None:
    torch.set_num_threads(1)
    method = L.obelm()
    t = time.time()
    print(f"## Random tanh ε network (dim 16, batch 8), {method.name}, power grid σ̄ ≤ 14.6\n")
    print(tanh_report(method))
    table = digits_report(method)
    if table is not None:
        print(f"\n## Digits DDPM (models/digits_ddpm, 16 test digits 1×8×8), {method.name}, "
              "DDIM 'leading' grid\n")
        print(table)
    table = tiny_conditional_report(method)
    if table is not None:
        print(f"\n## Tiny conditional UNet (random weights, guidance 3, latents 2×4×8×8), "
              f"{method.name}, SD-1.x DDIM grid\n")
        print(table)
    print(f"\n(total {time.time() - t:.0f} s on 1 CPU thread)")


if __name__ == "__main__":
    main()
