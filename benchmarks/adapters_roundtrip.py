"""Exact-inversion round trips per model family × model dtype × state dtype (not a test).

For each family — SD 1.x (``UNet2DConditionModel``), SDXL (``text_time`` UNet with pooled
embeddings and time ids), SD3 (``SD3Transformer2DModel``, shift 3) and FLUX
(``FluxTransformer2DModel`` with the guidance embedding, dynamic shifting) — built tiny with
random weights (``lmsolvers.adapters.tiny``; 8×8×4 latents, random prompt embeddings), the
relative error ``‖sample(invert(x_0)) − x_0‖/‖x_0‖`` of :class:`DiffusionSampler` in its
default configuration (SD/SDXL: the designed grid with O-BELM-landing; SD3/FLUX: O-BELM on
the pipeline's flow grid, entered from σ = 1), per sample over a batch of 16, at 10 and 30
steps, for fp32 and bf16 models and fp32 and fp64 solver states.  Guidance: CFG 3 for
SD/SDXL/SD3, FLUX's distilled guidance 3.5.  Reports the
median with its bootstrap 95 % interval and the maximum, as a markdown table in
``benchmarks/results/adapters_roundtrip.md``.

    .venv/bin/python -m benchmarks.adapters_roundtrip
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from lmsolvers.adapters import DiffusionSampler
from lmsolvers.adapters.tiny import (
    FLUX_SCHEDULER_CONFIG,
    SD3_SCHEDULER_CONFIG,
    SD_SCHEDULER_CONFIG,
    SDXL_CROSS_DIM,
    SDXL_SCHEDULER_CONFIG,
    tiny_conditional_unet,
    tiny_embeds,
    tiny_flux_transformer,
    tiny_sd3_transformer,
    tiny_sdxl_unet,
)

from .samplers import resample_index, summarise_errors
from .tables import markdown_table

OUT = Path(__file__).resolve().parent / "results" / "adapters_roundtrip.md"
STEPS = (10, 30)
BATCH = 16
MODEL_DTYPES = (("fp32", torch.float32), ("bf16", torch.bfloat16))
STATE_DTYPES = (("fp32", torch.float32), ("fp64", torch.float64))


def family(name: str, dtype: torch.dtype):
    """``(model, scheduler, conditioning)`` of a family."""
    if name == "SD 1.x":
        pe, _ = tiny_embeds(1, BATCH, pooled=None)
        ne, _ = tiny_embeds(2, BATCH, pooled=None)
        return (tiny_conditional_unet(dtype=dtype), DDIMScheduler(**SD_SCHEDULER_CONFIG),
                dict(prompt_embeds=pe, negative_prompt_embeds=ne, guidance_scale=3.0))
    if name == "SDXL":
        pe, pp = tiny_embeds(1, BATCH, width=SDXL_CROSS_DIM)
        ne, np_ = tiny_embeds(2, BATCH, width=SDXL_CROSS_DIM)
        return (tiny_sdxl_unet(dtype=dtype), DDIMScheduler(**SDXL_SCHEDULER_CONFIG),
                dict(prompt_embeds=pe, negative_prompt_embeds=ne, pooled_prompt_embeds=pp,
                     negative_pooled_prompt_embeds=np_, original_size=(16, 16),
                     guidance_scale=3.0))
    pe, pp = tiny_embeds(1, BATCH)
    if name == "SD3":
        ne, np_ = tiny_embeds(2, BATCH)
        return (tiny_sd3_transformer(dtype=dtype),
                FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG),
                dict(prompt_embeds=pe, negative_prompt_embeds=ne, pooled_prompt_embeds=pp,
                     negative_pooled_prompt_embeds=np_, guidance_scale=3.0))
    return (tiny_flux_transformer(dtype=dtype),
            FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
            dict(prompt_embeds=pe, pooled_prompt_embeds=pp, guidance_scale=3.5))


def per_sample_rel(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    d = (a.double() - b.double()).flatten(1).norm(dim=1)
    return (d / b.double().flatten(1).norm(dim=1)).cpu().numpy()


def main() -> None:
    torch.set_num_threads(1)
    idx = resample_index(BATCH, 2000, seed=0)
    rows = []
    t0 = time.time()
    for fam in ("SD 1.x", "SDXL", "SD3", "FLUX"):
        for mname, mdt in MODEL_DTYPES:
            model, sched, cond = family(fam, mdt)
            for sname, sdt in STATE_DTYPES:
                for n in STEPS:
                    s = DiffusionSampler(model, sched, n, state_dtype=sdt,
                                         disable_progress=True, **cond)
                    # data from the model itself: a sample from noise
                    x0 = s.sample(torch.randn(BATCH, 4, 8, 8,
                                              generator=torch.Generator().manual_seed(7)))
                    err = per_sample_rel(s.sample(s.invert(x0)), x0)
                    st = summarise_errors(err, idx)
                    rows.append([fam, mname, sname, n, f"{st['median']:.1e}",
                                 f"[{st['median_lo']:.1e}, {st['median_hi']:.1e}]",
                                 f"{float(np.max(err)):.1e}"])
                    print(*rows[-1], sep=" | ", flush=True)
    table = markdown_table(["family", "model", "state", "steps", "median rel. error",
                            "95% CI", "max"], rows)
    text = (f"# Round trips per family × model dtype × state dtype\n\n"
            f"`python -m benchmarks.adapters_roundtrip` ({time.time() - t0:.0f} s, 1 thread): "
            f"relative error of `sample(invert(x_0))` per sample (batch {BATCH}, tiny "
            "random-weight models, DiffusionSampler's default configuration).\n\n"
            + table + "\n")
    OUT.write_text(text)
    print(table)


if __name__ == "__main__":
    main()
