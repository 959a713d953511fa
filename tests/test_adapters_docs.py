"""docs/adapters.md is true: its blocks that load SD 1.x, SDXL, SD3 and FLUX and invert and
regenerate an image run as written on tiny offline components, and do what they say.

For each family the documentation has a loading block (``from_pretrained`` of the real
checkpoint, ``encode_prompt``) followed by a block marked ``<!-- tiny: NAME -->`` (the
inversion and regeneration).  Both run in one namespace, with two substitutions only:
``XPipeline.from_pretrained(...)`` becomes ``tiny_pipeline(NAME)`` (a stock pipeline of the
same class with tiny random-weight denoiser, VAE, tokenizers and text encoders, built offline:
``lmsolvers.adapters.tiny``), and the step count of the ``DiffusionSampler(...)`` call (50 or
28) becomes 8 (designing SD's default grid for 50 steps alone takes tens of seconds on a busy
CPU).  ``image`` is a random (1, 3, 16, 16) image in [−1, 1].  Every run block must define
``latents`` (the encoded image), ``again`` (its regeneration) and ``edited`` (an image under
the target prompt).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from lmsolvers.adapters import DiffusionSampler, decode_latents, encode_image
from lmsolvers.adapters.tiny import tiny_pipeline

DOC = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"
# a loading block, the marker, a run block (no block may span a fence)
_BLOCK = re.compile(r"```python\n((?:(?!```).)*)```\s*<!-- tiny: (\w+) -->\n"
                    r"```python\n((?:(?!```).)*)```", re.S)


def _blocks() -> dict[str, tuple[str, str]]:
    """``name -> (loading block, run block)``."""
    return {name: (setup, run)
            for setup, name, run in _BLOCK.findall(DOC.read_text(encoding="utf-8"))}


def test_every_family_has_a_run_block():
    assert sorted(_blocks()) == ["flux", "sd", "sd3", "sdxl"]


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux"])
def test_doc_blocks_run_and_round_trip(name):
    setup, run = _blocks()[name]
    setup, loads = re.subn(r"\w+Pipeline\.from_pretrained\([^)]*\)", f"tiny_pipeline({name!r})",
                           setup)
    run, steps = re.subn(r"(DiffusionSampler\([^,]+, [^,]+, )\d+,", r"\g<1>8,", run)
    assert loads == 1 and steps == 1
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ns = dict(tiny_pipeline=tiny_pipeline, DiffusionSampler=DiffusionSampler,
              encode_image=encode_image, decode_latents=decode_latents, torch=torch,
              image=image)
    exec(compile(setup, f"docs/adapters.md [{name}, loading]", "exec"), ns)
    exec(compile(run, f"docs/adapters.md [{name}]", "exec"), ns)
    latents, again, edited = ns["latents"], ns["again"], ns["edited"]
    assert latents.shape == (1, 4, 8, 8)
    # "= latents up to float64 round-off"
    err = float((again - latents.double()).norm() / latents.double().norm())
    assert err <= 1e-10, err
    # the edit regenerates an image of the input's shape, different from the input's decoding
    assert edited.shape == image.shape
    assert not torch.allclose(edited, decode_latents(ns["pipe"].vae, again), atol=1e-3)
