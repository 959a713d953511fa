"""docs/adapters.md is true: its inversion/regeneration blocks for SD 1.x, SDXL, SD3 and FLUX
run as written on tiny offline components, and do what their comments say.

A python block preceded by ``<!-- tiny: NAME -->`` is executed verbatim in a namespace where
the names the documentation's loading block defines (``pipe``, the prompt embeddings,
``image``) are tiny stand-ins of the same classes; the block before it (``from_pretrained``,
``encode_prompt``) needs the hub and is documentation only.  One change for speed: the step
count of the ``DiffusionSampler(...)`` call (50 or 28) becomes 8 (designing SD's default grid
for 50 steps alone takes tens of seconds on a busy CPU).  Every block must define
``latents`` (the encoded image), ``again`` (its regeneration) and ``edited`` (an image under
the target prompt).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from lmsolvers.adapters import DiffusionSampler, decode_latents, encode_image
from lmsolvers.adapters.tiny import (
    SDXL_CROSS_DIM,
    tiny_embeds,
    tiny_flux_pipeline,
    tiny_prompt_embeds,
    tiny_sd3_pipeline,
    tiny_sd_pipeline,
    tiny_sdxl_pipeline,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"
_BLOCK = re.compile(r"<!-- tiny: (\w+) -->\n```python\n(.*?)```", re.S)


def _blocks() -> dict[str, str]:
    return dict(_BLOCK.findall(DOC.read_text(encoding="utf-8")))


def _stand_ins(name: str) -> dict:
    """What the documentation's loading block defines, tiny and offline (batch 1)."""
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    if name == "sd":
        return dict(pipe=tiny_sd_pipeline(), pe=tiny_prompt_embeds(1), ne=tiny_prompt_embeds(2),
                    tgt=tiny_prompt_embeds(3), image=image)
    if name == "flux":
        (pe, pooled), (tgt, tgt_pooled) = tiny_embeds(1), tiny_embeds(3)
        return dict(pipe=tiny_flux_pipeline(), pe=pe, pooled=pooled, tgt=tgt,
                    tgt_pooled=tgt_pooled, image=image)
    width = SDXL_CROSS_DIM if name == "sdxl" else 32
    (pe, pooled), (ne, neg_pooled), (tgt, tgt_pooled) = (tiny_embeds(s, width=width)
                                                         for s in (1, 2, 3))
    pipe = tiny_sdxl_pipeline() if name == "sdxl" else tiny_sd3_pipeline()
    return dict(pipe=pipe, pe=pe, ne=ne, pooled=pooled, neg_pooled=neg_pooled, tgt=tgt,
                tgt_pooled=tgt_pooled, image=image)


def test_every_family_has_a_run_block():
    assert sorted(_blocks()) == ["flux", "sd", "sd3", "sdxl"]


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux"])
def test_doc_block_runs_and_round_trips(name):
    ns = dict(_stand_ins(name), DiffusionSampler=DiffusionSampler, encode_image=encode_image,
              decode_latents=decode_latents, torch=torch)
    block, count = re.subn(r"(DiffusionSampler\([^,]+, [^,]+, )\d+,", r"\g<1>8,", _blocks()[name])
    assert count == 1
    exec(compile(block, f"docs/adapters.md [{name}]", "exec"), ns)
    latents, again, edited = ns["latents"], ns["again"], ns["edited"]
    assert latents.shape == (1, 4, 8, 8)
    # "= latents up to float64 round-off"
    err = float((again - latents.double()).norm() / latents.double().norm())
    assert err <= 1e-10, err
    # the edit regenerates an image of the input's shape, different from the input's decoding
    assert edited.shape == ns["image"].shape
    assert not torch.allclose(edited, decode_latents(ns["pipe"].vae, again), atol=1e-3)
