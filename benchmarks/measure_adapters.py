"""Measure exact-inversion round trips through the tiny conditional UNet (not a test).

Relative error ``‖sample(invert(x_0)) − x_0‖ / ‖x_0‖`` for O-BELM on the Stable
Diffusion 1.x grid, 10/20/50/100 steps, model dtype fp16/fp32/fp64 × solver state
fp32/fp64, guidance 1 and 3; plus classic DDIM inversion for contrast.  Prints a
markdown table (pasted into docs/adapters.md).

    .venv/bin/python -m benchmarks.measure_adapters
"""

from __future__ import annotations

import time

import torch
from diffusers import DDIMScheduler
from lmsolvers.adapters import DiffusionSampler
from lmsolvers.adapters.tiny import SD_SCHEDULER_CONFIG, tiny_conditional_unet, tiny_prompt_embeds

from lmsolvers import ddim, ddim_inversion, sample

from .tables import markdown_table

STEPS = (10, 20, 50, 100)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main() -> None:
    torch.set_num_threads(1)
    sch = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    pe, ne = tiny_prompt_embeds(1, batch=2), tiny_prompt_embeds(2)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t0 = time.time()
    rows = []
    for w in (1.0, 3.0):
        for mname, mdt in (("fp16", torch.float16), ("fp32", torch.float32),
                           ("fp64", torch.float64)):
            unet = tiny_conditional_unet(dtype=mdt)
            for sname, sdt in (("fp32", torch.float32), ("fp64", torch.float64)):
                errs = []
                for n in STEPS:
                    s = DiffusionSampler(unet, sch, n, guidance_scale=w, prompt_embeds=pe,
                                         negative_prompt_embeds=ne, state_dtype=sdt,
                                         disable_progress=True)
                    errs.append(rel(s.reconstruct(x0), x0))
                rows.append([f"{w:g}", mname, sname, *(f"{e:.1e}" for e in errs)])
                print(*rows[-1], sep=" | ", flush=True)  # progress: the full run takes minutes
        # classic DDIM inversion (fp32 model, fp64 state) for contrast
        unet = tiny_conditional_unet(dtype=torch.float32)
        errs = []
        for n in STEPS:
            s = DiffusionSampler(unet, sch, n, ddim(), guidance_scale=w, prompt_embeds=pe,
                                 negative_prompt_embeds=ne, disable_progress=True)
            lat = ddim_inversion(s.eps, s.grid, x0.double() / float(s.grid.alphas[0]),
                                 disable=True)
            rec = sample(s.eps, s.grid, ddim(), lat, disable=True) * float(s.grid.alphas[0])
            errs.append(rel(rec, x0))
        rows.append([f"{w:g}", "fp32", "fp64, DDIM inversion", *(f"{e:.1e}" for e in errs)])
    print()
    print(markdown_table(["guidance", "model", "state", *(f"{n} steps" for n in STEPS)], rows))
    print(f"\n({time.time() - t0:.0f} s on {torch.get_num_threads()} thread)")


if __name__ == "__main__":
    main()
