"""Shared test configuration: fixed hypothesis profiles (CI is deterministic)."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Two cores: keep torch from oversubscribing them in tests.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def embeds():
    """Two different tiny prompt embeddings (prompt, negative prompt), batch 2."""
    from lmsolvers.adapters.tiny import tiny_prompt_embeds

    return tiny_prompt_embeds(1, batch=2), tiny_prompt_embeds(2, batch=2)
