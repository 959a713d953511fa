"""Every benchmark script runs end to end in a reduced configuration (into tmp_path).

The scripts are modules of the ``benchmarks`` package (run as ``python -m benchmarks.x``);
pytest puts the checkout root on the path (``pythonpath`` in pyproject.toml).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_toy_convergence_reduced(tmp_path):
    from benchmarks import toy_convergence

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
    from benchmarks import digits_bench

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
    from benchmarks import demo

    rows = demo.main(["--out", str(tmp_path), "--steps", "10", "--n-samples", "8",
                      "--n-recon", "3"])
    assert (tmp_path / "demo_samples.png").stat().st_size > 0
    assert (tmp_path / "demo_reconstructions.png").stat().st_size > 0
    by = {r["sampler"]: r for r in rows}
    assert by["O-BELM"]["rms"] < 1e-10 and by["EDICT(p=0.93)"]["rms"] < 1e-10
    assert by["DDIM inversion"]["rms"] > 1e-3
    assert by["O-BELM"]["nfe"] == 19 and by["EDICT(p=0.93)"]["nfe"] == 20
    out = capsys.readouterr().out
    assert "round trip" in out
    # the printout says where the figures went
    assert str(tmp_path / "demo_samples.png") in out


def test_demo_writes_into_an_ignored_folder_by_default():
    """`make demo` must leave a fresh clone clean: its default folder is git-ignored."""
    from benchmarks import demo

    first = demo.DEFAULT_OUT.relative_to(ROOT).parts[0]
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert first in ignored, f"{first}/ is not in .gitignore"
    assert demo.parse_args([]).out == demo.DEFAULT_OUT


def test_overhead_reduced(tmp_path):
    from benchmarks import overhead

    out = tmp_path / "overhead.md"
    text = overhead.main(["--steps", "5", "--repeats", "2", "--out", str(out)])
    assert out.read_text() == text + "\n"
    assert "ratio to DDIMScheduler.step" in text and "lmsolvers O-BELM" in text
    assert "| diffusers DDIMScheduler.step |" in text and "| 1.00 |" in text


def test_markdown_table_helper():
    from benchmarks.tables import markdown_table

    assert markdown_table(["a", "b"], [[1, "x|y"]]) == "| a | b |\n|---|---|\n| 1 | x\\|y |"
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        markdown_table(["a", "b"], [[1]])


@pytest.mark.parametrize("budget", [10, 20])
def test_budget_accounting_is_counted(budget):
    from benchmarks import samplers as S

    for spec in S.make_specs():
        n = S.steps_for_budget(spec, budget)
        if n is not None:
            assert S._nfe_of(spec, n) <= budget


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")
                                        if p.stem != "__init__"))
def test_every_script_imports_as_a_package_module(name):
    """The scripts not run above (training, measurements) at least import as package modules:
    their relative imports resolve and nothing at import time needs sys.path edits."""
    import importlib

    mod = importlib.import_module(f"benchmarks.{name}")
    assert mod.__doc__ and mod.__doc__.strip()
