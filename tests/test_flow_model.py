"""The shipped digits rectified-flow model (models/digits_flow): it loads offline, it is what
its training script says, its few-step samples are digits, and O-BELM inverts it exactly.

"Are digits" is judged, as for the DDPM (tests/test_digits_model.py), by the committed
classifier, with the confidence threshold taken from data: the 10th percentile of its
maximum softmax on the held-out real digits.  The pass fractions below are set a margin
below what was measured on these seeds (benchmarks/results/flow_bench.md reports the same
statistic on 512 samples), and pure noise, the negative control, must fail them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmsolvers as L
from benchmarks.digits_data import load_digits_split
from tests import test_digits_model as _digits_judge

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_flow"

# The judge of "are digits" (classifier, confidence, its data-derived threshold) and the
# offline switch are the DDPM test's, so both models are held to the same one.
offline = _digits_judge.offline
classifier = _digits_judge.classifier
confidence = _digits_judge.confidence
threshold = _digits_judge.threshold


@pytest.fixture(scope="module")
def ode(offline):
    from benchmarks.flow_bench import FlowODE

    return FlowODE(MODEL)


def noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def test_model_loads_offline_and_is_the_trained_flow_model(offline):
    from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel
    from lmsolvers.adapters.schedules import is_flow_config
    from safetensors import safe_open

    from benchmarks.train_digits import build_unet

    unet = UNet2DModel.from_pretrained(MODEL, local_files_only=True)
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(MODEL, local_files_only=True)
    cfg = json.loads((MODEL / "scheduler_config.json").read_text())
    assert cfg["_class_name"] == "FlowMatchEulerDiscreteScheduler" and is_flow_config(cfg)
    assert sched.config.shift == 1.0 and not sched.config.use_dynamic_shifting
    assert sched.config.num_train_timesteps == 1000
    # the DDPM's network class and size (the training script builds it with build_unet)
    def plain(cfg):  # tuples and lists compare equal once through JSON
        return json.loads(json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}))

    assert plain(unet.config) == plain(build_unet().config)
    weights = MODEL / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 5 * 2**20
    with safe_open(str(weights), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    summary = json.loads((MODEL / "train_summary.json").read_text())
    assert summary["weights"] == "EMA" and summary["seed"] == 0
    assert summary["target"].startswith("v = eps - x0")
    rows = (MODEL / "train_log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,loss_avg,lr,elapsed_s"
    # a row every 50 steps; a run stopped by its wall-clock budget ends between rows
    assert summary["steps"] - 50 <= int(rows[-1].split(",")[0]) <= summary["steps"] - 1


def test_training_pair_and_sigma_density():
    """The noisy input and target of training are rectified flow's: x_σ is linear in σ from
    x_0 (σ = 0) to ε (σ = 1) and v is its σ-derivative; σ is logit-normal(0, 1)."""
    from benchmarks.train_digits_flow import flow_pair, sample_sigmas

    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    s = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xs, v = flow_pair(x0, eps, s)
    assert torch.equal(xs[0], x0[0]) and torch.equal(xs[3], eps[3])
    assert torch.equal(v, eps - x0)
    x_hi, _ = flow_pair(x0.double(), eps.double(), s.double() + 1e-3)
    x_lo, _ = flow_pair(x0.double(), eps.double(), s.double() - 1e-3)
    assert torch.allclose((x_hi - x_lo) / 2e-3, v.double(), atol=1e-12)
    sig = sample_sigmas(20000, torch.Generator().manual_seed(0)).double()
    assert bool(((sig > 0) & (sig < 1)).all())
    logit = torch.log(sig / (1 - sig))
    assert abs(float(logit.mean())) < 0.03 and abs(float(logit.std()) - 1.0) < 0.03


def test_flowmatch_euler_is_the_entry_step_then_ddim(ode):
    """diffusers' FlowMatchEuler loop = entry step out of σ = 1 + DDIM in σ̄ (float64), to the
    scheduler's float32 arithmetic, on the real model."""
    from benchmarks.flow_bench import check_flowmatch_euler

    diffs = check_flowmatch_euler(ode, noise(4, 0), (6, 10))
    assert max(diffs.values()) < 1e-5


def test_few_step_samples_are_digits(ode, classifier, threshold):
    from benchmarks.flow_bench import make_specs, run

    assert 0.5 < threshold < 1.0
    x_T = noise(32, 1)
    for spec in make_specs(["FlowMatchEuler (= DDIM)", "O-BELM"]):
        x0, nfe = run(spec, 10, x_T, ode)
        assert nfe == 10 and x0.shape == (32, 1, 8, 8) and bool(torch.isfinite(x0).all())
        conf, pred = confidence(classifier, x0)
        assert float((conf >= threshold).float().mean()) >= FRACTION_CONFIDENT, spec.name
        assert len(set(pred.tolist())) >= 7, spec.name  # not collapsed onto a few classes
    conf_noise, _ = confidence(classifier, x_T)
    assert float((conf_noise >= threshold).float().mean()) < 0.3


@settings(max_examples=6)
@given(n=st.integers(3, 24), seed=st.integers(0, 2**16), batch=st.integers(1, 3))
def test_obelm_round_trip_is_exact_on_the_real_model(ode, n, seed, batch):
    """sample(invert(x_0)) = x_0 to float64 round-off for O-BELM on the model's FlowMatch grid
    (finite nodes; the latent is the two noisiest finite states)."""
    x_test, _ = load_digits_split("test")
    pick = torch.randint(0, len(x_test), (batch,), generator=torch.Generator().manual_seed(seed))
    x0 = x_test[pick].double()
    ds = ode.sampler(L.obelm(), n)  # the adapters' DiffusionSampler, float64 state
    assert ds.top_timestep == 1000.0 and ds.grid.N == n - 1
    lat = ds.invert(x0)
    assert len(lat.states) == 2 and lat.grid.N == n - 1  # the two noisiest finite nodes
    rec = ds.sample(lat)
    rel = float((rec - x0).norm() / x0.norm())
    assert math.isfinite(rel) and rel <= 1e-10


def test_flow_bench_quick(tmp_path, offline):
    from benchmarks import flow_bench

    rec = flow_bench.main(["--quick", "--out", str(tmp_path)])
    for f in ("flow_bench.md", "flow_bench.json", "flow_convergence.png", "flow_samples.png"):
        assert (tmp_path / f).stat().st_size > 0
    rows = {(r["sampler"], r["budget"]): r for r in rec["rows"]}
    for (nm, b), r in rows.items():
        assert r["nfe"] == b and r["n"] == rec["config"]["n"], nm
        assert r["median_lo"] <= r["median"] <= r["median_hi"] and 0 < r["median"] < 1.0
    ref = rec["ref"]
    assert ref["check_dt"] == ref["dt"] / 2 and 0 < ref["selfconv_rms"] < 2e-3
    rt = {(r["sampler"], r["dtype"]): r for r in rec["rt_rows"]}
    assert rt[("O-BELM", "fp64")]["rel_max"] < 1e-10
    assert rt[("O-BELM", "fp32")]["rel_max"] < 1e-3
    assert rt[("FlowMatchEuler (= DDIM)", "fp64")]["rel_median"] > 1e-3  # approximate
    assert not any(nm.startswith(("DPM", "UniPC")) for nm, _ in rt)
    assert max(rec["flowmatch_check"].values()) < 1e-5
    assert rec["peer_check"]["UniPC-3 (bh2)"]["N=10"] < 1e-10
    assert rec["peer_check"]["DPM-Solver++(2M)"]["N=10"] < 1e-5
    text = (tmp_path / "flow_bench.md").read_text()
    assert text.startswith("# Digits rectified flow") and "Self-convergence" in text
    # the report re-renders from its JSON alone
    flow_bench.main(["--out", str(tmp_path / "re"), "--from-json",
                     str(tmp_path / "flow_bench.json")])
    assert (tmp_path / "re" / "flow_bench.md").read_text() == text
    assert np.isfinite([r["median"] for r in rec["rows"]]).all()


#: measured 0.94 (30 of 32) for both samplers on seed 1 at 10 steps; noise: 0.09
FRACTION_CONFIDENT = 0.8
