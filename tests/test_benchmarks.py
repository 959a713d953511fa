"""Every benchmark script runs end to end in a reduced configuration (into tmp_path)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_toy_convergence_reduced(tmp_path):
    import toy_convergence

    rec = toy_convergence.main(["--out", str(tmp_path), "--budgets", "10", "40",
                                "--n-points", "16"])
    for f in ("toy_convergence.md", "toy_convergence.png", "toy_convergence.json"):
        assert (tmp_path / f).stat().st_size > 0
    by = {(r["sampler"], r["budget"]): r for r in rec["rows"]}
    names = {r["sampler"] for r in rec["rows"]}
    assert {"DDIM", "BDIA(0.5)", "BDIA(1)", "EDICT(0.93)", "O-BELM",
            "DPM-Solver++(2M)"} <= names
    assert by[("EDICT(0.93)", 40)]["nfe"] == 40 and by[("EDICT(0.93)", 40)]["steps"] == 20
    for nm in ("DDIM", "O-BELM", "DPM-Solver++(2M)"):
        assert by[(nm, 40)]["nfe"] == 40
        assert by[(nm, 40)]["err"] < by[(nm, 10)]["err"]  # converging
    assert by[("O-BELM", 40)]["err"] < by[("DDIM", 40)]["err"]
    assert "| O-BELM |" in (tmp_path / "toy_convergence.md").read_text()


def test_digits_bench_reduced(tmp_path):
    import digits_bench

    rec = digits_bench.main([
        "--out", str(tmp_path), "--budgets", "10", "--n-fd", "12", "--n-err", "6",
        "--ref-steps", "20", "--n-rt", "3", "--extra-seeds", "1", "--bootstrap", "3",
        "--chunk", "12", "--samplers", "DDIM", "O-BELM", "EDICT(0.93)", "DPM-Solver++(2M)"])
    for f in ("digits_bench.md", "digits_bench.png", "digits_bench.json",
              "digits_samples_o_belm.png"):
        assert (tmp_path / f).stat().st_size > 0
    rows = {r["sampler"]: r for r in rec["rows"]}
    assert rows["EDICT(0.93)"]["steps"] == 5 and rows["EDICT(0.93)"]["nfe"] == 10
    assert all(math.isfinite(r["fd"]) and r["err"] > 0 for r in rows.values())
    rt = {r["sampler"]: r for r in rec["rt_rows"]}
    assert rt["O-BELM"]["fp64"] < 1e-10 and rt["O-BELM"]["fp32"] < 1e-3
    assert rt["DDIM (DDIM inversion)"]["fp64"] > 1e-3  # the approximate classic
    assert len(rec["seed_rows"]) == 2 and len(rec["seed_rows"][0]["fds"]) == 2
    merged = digits_bench.main(["--out", str(tmp_path / "m"), "--merge",
                                str(tmp_path / "digits_bench.json")])
    assert len(merged["rows"]) == len(rec["rows"])
    assert (tmp_path / "m" / "digits_bench.md").read_text().startswith("# Digits DDPM")


def test_demo_reduced(tmp_path, capsys):
    import demo

    rows = demo.main(["--out", str(tmp_path), "--steps", "10", "--n-samples", "8",
                      "--n-recon", "3"])
    assert (tmp_path / "demo_samples.png").exists()
    assert (tmp_path / "demo_reconstructions.png").exists()
    by = {r["sampler"]: r for r in rows}
    assert by["O-BELM"]["rms"] < 1e-10 and by["EDICT(p=0.93)"]["rms"] < 1e-10
    assert by["DDIM inversion"]["rms"] > 1e-3
    assert by["O-BELM"]["nfe"] == 19 and by["EDICT(p=0.93)"]["nfe"] == 20
    assert "round trip" in capsys.readouterr().out


def test_overhead_reduced(tmp_path, monkeypatch):
    import overhead

    out = tmp_path / "overhead.md"
    monkeypatch.setattr(sys, "argv", ["overhead.py", "--steps", "5", "--repeats", "2",
                                      "--out", str(out)])
    overhead.main()
    text = out.read_text()
    assert "ratio to DDIMScheduler.step" in text and "lmsolvers O-BELM" in text


@pytest.mark.parametrize("budget", [10, 20])
def test_budget_accounting_is_counted(budget):
    import samplers as S

    for spec in S.make_specs():
        n = S.steps_for_budget(spec, budget)
        if n is not None:
            assert S._nfe_of(spec, n) <= budget
