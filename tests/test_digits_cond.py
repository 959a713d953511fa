"""The class-conditional digits DDPM (classifier-free guidance) and inversion under guidance.

* the committed model loads offline, with the DDPM's noise schedule and a null class;
* :class:`~lmsolvers.adapters.ClassEmbeddingUNet` is bitwise the label-conditioned UNet, and
  the guided ε of :func:`~lmsolvers.adapters.class_guided_eps` is ``ε_u + w (ε_c − ε_u)``
  computed independently;
* guided samples are recognised by the committed classifier (thresholds below the measured
  accuracies of ``benchmarks/results/digits_cond_accuracy.md``);
* exact inversion at guidance 5 round-trips to ≤ 1e-10 (float64 state, O-BELM and the
  default), for any held-out digit and step count (hypothesis);
* the approximate peers (negative-prompt and null-text inversion) run and are worse than
  exact by orders of magnitude; the Direct-Inversion-style edit with the source class as
  target reproduces the input;
* both benchmarks run end to end (``--quick``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lmsolvers.adapters import ClassEmbeddingUNet, class_guided_eps, class_sampler

import lmsolvers
from benchmarks.digits_classifier import load_classifier
from benchmarks.digits_data import load_digits_split

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_cond"


@pytest.fixture(scope="module")
def model():
    from diffusers import DDPMScheduler, UNet2DModel

    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        unet = UNet2DModel.from_pretrained(MODEL, local_files_only=True).eval()
        sched = DDPMScheduler.from_pretrained(MODEL, local_files_only=True)
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE")
        else:
            os.environ["HF_HUB_OFFLINE"] = old
    return unet.requires_grad_(False), ClassEmbeddingUNet(unet), sched


@pytest.fixture(scope="module")
def heldout():
    return load_digits_split("test")


def test_committed_model(model):
    unet, m, sched = model
    weights = MODEL / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 5 * 1024 * 1024
    assert unet.config.num_class_embeds == 11 and m.null_class == 10
    assert all(p.dtype == torch.float32 for p in unet.parameters())
    summary = json.loads((MODEL / "train_summary.json").read_text())
    assert summary["null_class"] == 10 and 0.0 < summary["p_uncond"] < 1.0
    # the same noise schedule as the unconditional DDPM
    ddpm = json.loads((ROOT / "models" / "digits_ddpm" / "scheduler_config.json").read_text())
    for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps",
              "prediction_type"):
        assert sched.config[k] == ddpm[k]
    log = (MODEL / "train_log.csv").read_text().splitlines()
    assert log[0] == "step,loss,loss_avg,lr,elapsed_s" and len(log) > 10


def test_class_embedding_rows_are_the_labels(model):
    unet, m, _ = model
    x = torch.randn(11, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(11)
    t = torch.tensor(437)
    with torch.no_grad():
        ref = unet(x, t, class_labels=labels).sample
        got = m(x, t, encoder_hidden_states=m.class_embeds(labels)).sample
        plain = m(x, t, class_labels=labels).sample  # the hook is inactive without rows
    assert torch.equal(got, ref) and torch.equal(plain, ref)
    assert torch.equal(m.null_embeds(3), m.class_embeds(torch.full((3,), 10)))
    with pytest.raises(ValueError, match=r"\(batch, 1, 128\)"):
        m(x, t, encoder_hidden_states=torch.zeros(11, 1, 7))
    with pytest.raises(ValueError, match="batch 2 but the sample has batch 11"):
        m(x, t, encoder_hidden_states=m.class_embeds(torch.tensor([1, 2])))
    with pytest.raises(ValueError, match=r"0\.\.10"):
        m.class_embeds(torch.tensor([11]))
    with pytest.raises(ValueError, match="not both"):
        m(x, t, encoder_hidden_states=m.class_embeds(labels), class_labels=labels)
    from lmsolvers.adapters.tiny import tiny_unet

    with pytest.raises(TypeError, match="no class-embedding table"):
        ClassEmbeddingUNet(tiny_unet())
    with pytest.raises(ValueError, match="null_class 11"):
        ClassEmbeddingUNet(unet, null_class=11)


def test_guided_eps_is_cfg(model):
    unet, m, sched = model
    labels = torch.tensor([3, 7, 0])
    e = class_guided_eps(m, sched, 10, labels, 5.0)
    e1 = class_guided_eps(m, sched, 10, labels, 1.0)
    g = e.grid
    i = 6
    xbar = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    alpha, t = float(g.alphas[i]), torch.tensor(int(g.timesteps[i]))
    x = (xbar * alpha).float()
    with torch.no_grad():
        ec = unet(x, t, class_labels=labels).sample
        eu = unet(x, t, class_labels=torch.full((3,), 10)).sample
    ref = (eu + 5.0 * (ec - eu)).double()
    got = e(xbar, float(g.sigma_bar[i]))
    # one batched [uncond, cond] call vs two calls: float32 kernels may differ in the last bit
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert (got - ec.double()).abs().max() > 1e-2  # guidance changes ε
    assert torch.equal(e1(xbar, float(g.sigma_bar[i])), ec.double())  # w = 1: ε_c alone
    assert e.context["guidance_scale"] == 5.0 and e1.context["guidance_scale"] == 1.0


# measured (benchmarks/results/digits_cond_accuracy.md, 50 per class, 25 steps): 0.992 at
# w = 1, 1.000 at w = 2 … 7.5; the thresholds sit well below, for 2 per class and 8 steps
ACC_MIN = {1.0: 0.85, 3.0: 0.9}


def test_guided_samples_are_recognised(model):
    _, m, sched = model
    clf = load_classifier()
    labels = torch.arange(10).repeat_interleave(2)
    noise = torch.randn(20, 1, 8, 8, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(5))
    for w, lo in ACC_MIN.items():
        x = class_sampler(m, sched, 8, labels, w, disable_progress=True).sample(noise)
        with torch.no_grad():
            acc = (clf(x.float()).argmax(1) == labels).double().mean().item()
        assert acc >= lo, (w, acc)
    # the negative control: null-class samples are not sorted into the requested classes
    x = class_sampler(m, sched, 8, torch.full((20,), 10), 1.0,
                      disable_progress=True).sample(noise)
    with torch.no_grad():
        acc_null = (clf(x.float()).argmax(1) == labels).double().mean().item()
    assert acc_null < 0.4


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max())


@settings(max_examples=4)
@given(st.integers(0, 359), st.integers(0, 359), st.integers(4, 8),
       st.sampled_from(["obelm", None]))
def test_exact_inversion_under_guidance_5(model, heldout, i, j, n_steps, method):
    _, m, sched = model
    x, y = heldout
    idx = torch.tensor([i, j])
    x0, labels = x[idx].double(), y[idx]
    meth = None if method is None else lmsolvers.obelm()
    s = class_sampler(m, sched, n_steps, labels, 5.0, method=meth, disable_progress=True)
    rec = s.reconstruct(x0)
    assert _rel(rec, x0) <= 1e-10


@pytest.fixture(scope="module")
def peers(model, heldout):
    from benchmarks import guidance_roundtrip as gr

    _, m, sched = model
    x, y = heldout
    x0, labels = x[:4], y[:4]
    out = {}
    for name, fn in (("exact", lambda: gr._run_exact(m, sched, 8, "obelm", 5.0, x0, labels,
                                                     torch.float64)),
                     ("ddim", lambda: gr._run_ddim(m, sched, 8, 5.0, x0, labels,
                                                   torch.float64)),
                     ("npi", lambda: gr._run_npi(m, sched, 8, 5.0, x0, labels, torch.float64)),
                     ("nulltext", lambda: gr._run_nulltext(m, sched, 8, 5.0, x0, labels,
                                                           torch.float64, 3, 0.05))):
        rec, _ = fn()
        out[name] = np.median(gr.rel_error(rec, x0))
    return out


def test_peers_run_and_are_worse_than_exact(peers):
    assert peers["exact"] <= 1e-10
    # measured (guidance_roundtrip.md, N = 10, w = 5, 64 digits): median relative error
    # 0.39 (DDIM inversion), 0.17 (negative-prompt), against ≤ 1e-12 for exact inversion
    for name in ("ddim", "npi", "nulltext"):
        assert peers[name] > 1e-3, (name, peers[name])
    # null-text's optimisation improves on plain DDIM inversion under guidance
    assert peers["nulltext"] < peers["ddim"]


def test_direct_inversion_with_source_target_reconstructs(model, heldout):
    from benchmarks.editing_bench import Editor
    from benchmarks.guidance_roundtrip import EvalCounter

    _, m, sched = model
    x, y = heldout
    x0, a = x[10:14].double(), y[10:14]
    ed = Editor(m, sched, x0, a, a, 6, 2, 0.05, EvalCounter(m))
    for kind in ("ddim", "obelm"):
        for f in (0.0, 0.5):
            assert _rel(ed.direct(kind, 5.0, f), x0) <= 1e-10
    # the plain exact edit with target = source is the round trip too
    assert _rel(ed.exact("O-BELM", 5.0, 0.0), x0) <= 1e-10


def test_guidance_roundtrip_quick(tmp_path):
    from benchmarks import guidance_roundtrip

    rec = guidance_roundtrip.main(["--quick", "--out", str(tmp_path)])
    for f in ("guidance_roundtrip.md", "guidance_roundtrip.json", "digits_cond_accuracy.md",
              "digits_cond_samples_w5.png"):
        assert (tmp_path / f).stat().st_size > 0
    by = {(r["method"], r["guidance"]): r for r in rec["roundtrip"]}
    for name in ("O-BELM", "default (ours)", "BDIA(1)"):
        assert by[(name, 5.0)]["median"] <= 1e-10 and by[(name, 5.0)]["nfe"] > 0
    n = rec["config"]["steps"][0]
    # guided: 2 evaluations per ε; O-BELM inverts with N and samples the latent with N − 1,
    # EDICT evaluates twice per step both ways
    assert by[("O-BELM", 5.0)]["nfe"] == 2 * (2 * n - 1)
    assert by[("EDICT(0.93)", 5.0)]["nfe"] == 2 * 4 * n
    # negative-prompt inversion samples with the conditional ε at every w
    assert by[("negative-prompt inv.", 5.0)]["median"] == pytest.approx(
        by[("negative-prompt inv.", 1.0)]["median"], rel=1e-6)
    assert by[("DDIM inversion", 5.0)]["median"] > 1e-3
    assert ("null-text inv.", 5.0) in by and ("null-text inv.", 1.0) not in by
    assert "| float64 | O-BELM |" in (tmp_path / "guidance_roundtrip.md").read_text()


def test_editing_bench_quick(tmp_path):
    from benchmarks import editing_bench

    rec = editing_bench.main(["--quick", "--out", str(tmp_path)])
    for f in ("editing_bench.md", "editing_bench.json", "editing_tradeoff.png",
              "editing_examples.png"):
        assert (tmp_path / f).stat().st_size > 0
    rows = rec["rows"]
    cells = editing_bench.settings(3.0, (0.0, 0.5), (1.0, 3.0))
    assert len(rows) == len(editing_bench.METHODS) * len(cells)
    for r in rows:
        for k in ("success", "ssim", "background", "style"):
            assert r[k]["lo"] <= r[k]["value"] <= r[k]["hi"]
        assert 0.0 <= r["success"]["value"] <= 1.0 and r["nfe_edit"] > 0
    refs = {r["method"]: r for r in rec["config"]["references"]}
    assert refs["real digit of class b (reference)"]["success"]["value"] >= 0.75
    assert "## The scale" in (tmp_path / "editing_bench.md").read_text()
    by = {(r["method"], r["guidance"], r["frozen"]): r for r in rows}
    # DI + O-BELM at w = 1 has nothing to correct: it is the plain O-BELM edit
    assert by[("DI + O-BELM", 1.0, 0.0)]["ssim"]["value"] == pytest.approx(
        by[("O-BELM", 1.0, 0.0)]["ssim"]["value"], rel=1e-9)
