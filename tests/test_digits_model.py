"""The shipped digits DDPM loads offline and its samples are digits.

"Are digits" is judged by the committed digits classifier.  The confidence threshold is
taken from data, not chosen: it is the 10th percentile of the classifier's maximum softmax
probability on the held-out *real* digits (so 90 % of real digits clear it).  Samples
pass if at least 75 % of them clear it and they cover most classes; pure noise, the
negative control, must not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.digits_classifier import DEFAULT_CLASSIFIER_PATH, load_classifier
from benchmarks.digits_data import load_digits_split

ROOT = Path(__file__).resolve().parents[1]

MODEL = ROOT / "models" / "digits_ddpm"


@pytest.fixture(scope="module")
def offline():
    import os

    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def classifier():
    return load_classifier(DEFAULT_CLASSIFIER_PATH)


@torch.no_grad()
def confidence(clf, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return clf(x.clamp(-1, 1).float()).softmax(1).max(1)


@pytest.fixture(scope="module")
def threshold(classifier) -> float:
    x_test, y_test = load_digits_split("test")
    conf, pred = confidence(classifier, x_test)
    assert float((pred == y_test).float().mean()) > 0.9  # the judge itself is competent
    return float(torch.quantile(conf.double(), 0.10))


def test_model_loads_offline_and_is_the_trained_ddpm(offline):
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(MODEL, local_files_only=True)
    sched = DDPMScheduler.from_pretrained(MODEL, local_files_only=True)
    assert unet.config.sample_size == 8 and unet.config.in_channels == 1
    assert sched.config.prediction_type == "epsilon"
    assert sched.config.beta_schedule == "linear" and sched.config.num_train_timesteps == 1000
    assert sum(p.numel() for p in unet.parameters()) > 500_000


def test_samples_are_classified_as_digits(offline, classifier, threshold):
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
    from lmsolvers.adapters.diffusers import DiffusionSampler

    import lmsolvers as L

    assert 0.5 < threshold < 1.0
    unet = UNet2DModel.from_pretrained(MODEL, local_files_only=True)
    sched = DDIMScheduler.from_config(DDPMScheduler.from_pretrained(MODEL).config,
                                      timestep_spacing="trailing")
    sampler = DiffusionSampler(unet, sched, 20, method=L.obelm(), disable_progress=True)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(32, 1, 8, 8, generator=g, dtype=torch.float64)
    x0 = sampler.sample(x_T)
    assert x0.shape == (32, 1, 8, 8) and bool(torch.isfinite(x0).all())
    conf, pred = confidence(classifier, x0)
    assert float((conf >= threshold).float().mean()) >= 0.75
    assert len(set(pred.tolist())) >= 6  # not collapsed onto a few classes
    # negative control: the starting noise itself is not confidently a digit
    conf_noise, _ = confidence(classifier, x_T)
    assert float((conf_noise >= threshold).float().mean()) < 0.5
