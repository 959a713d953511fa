"""Every benchmark script runs end to end in a reduced configuration (into tmp_path).

The scripts are modules of the ``benchmarks`` package (run as ``python -m benchmarks.x``);
pytest puts the checkout root on the path (``pythonpath`` in pyproject.toml).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_toy_convergence_quick(tmp_path):
    from benchmarks import toy_convergence

    rec = toy_convergence.main(["--quick", "--out", str(tmp_path)])
    for f in ("toy_convergence.md", "toy_convergence.png", "toy_convergence.json"):
        assert (tmp_path / f).stat().st_size > 0
    by = {(r["sampler"], r["budget"]): r for r in rec["rows"]}
    names = {r["sampler"] for r in rec["rows"]}
    assert {"DDIM", "BDIA(0.5)", "BDIA(1)", "O-BELM", "EDICT(0.93)", "EDICT(0.93, alt)",
            "DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC-3 (bh2)"} <= names
    assert by[("EDICT(0.93)", 40)]["nfe"] == 40 and by[("EDICT(0.93)", 40)]["steps"] == 20
    for nm in ("DDIM", "O-BELM", "DPM-Solver++(2M)", "UniPC-3 (bh2)"):
        r10, r40 = by[(nm, 10)], by[(nm, 40)]
        assert r40["nfe"] == 40
        assert r40["median"] < r10["median"]  # converging
        assert r40["median_lo"] <= r40["median"] <= r40["median_hi"]
        assert r40["rms_lo"] <= r40["rms"] <= r40["rms_hi"]
    assert by[("O-BELM", 40)]["median"] < by[("DDIM", 40)]["median"]
    # the diffusers peers are the published algorithms (DPM-Solver++ computes in float32)
    pc = rec["peer_check"]
    assert all(v < 1e-5 for k, v in pc["DPM-Solver++(2M)"].items() if k.startswith("vs_"))
    assert all(v < 1e-12 for k, v in pc["UniPC-3 (bh2)"].items() if k.startswith("vs_"))
    text = (tmp_path / "toy_convergence.md").read_text()
    assert "| O-BELM |" in text and "[" in text  # intervals in the table


def test_digits_bench_quick(tmp_path):
    from benchmarks import digits_bench

    rec = digits_bench.main(["--quick", "--out", str(tmp_path)])
    for f in ("digits_bench.md", "digits_bench.png", "digits_bench.json",
              "digits_convergence.png", "digits_bench.reference.npz",
              "digits_samples_o_belm.png"):
        assert (tmp_path / f).stat().st_size > 0
    rows = {r["sampler"]: r for r in rec["table"]}
    assert rows["EDICT(0.93)"]["steps"] == 5 and rows["EDICT(0.93)"]["nfe"] == 10
    assert rows["EDICT(0.93, alt)"]["nfe"] == 10
    for r in rows.values():
        assert r["n"] == rec["config"]["n"]
        assert r["median_lo"] <= r["median"] <= r["median_hi"] and r["rms"] > 0
    assert rows["O-BELM"]["median"] < 1.0 and rows["DPM-Solver++(2M)"]["median"] < 1.0
    ref = rec["ref"]
    assert ref["check_m"] < ref["m"] and 0 < ref["selfconv_rms"] < 1.0
    assert set(rec["best"]) == set(rows)
    assert all(rec["best"][nm] in rec["config"]["families"] for nm in rows)
    assert {r["budget"] for r in rec["sweep"]} == set(rec["config"]["sweep"])
    rt = {(r["sampler"], r["dtype"]): r for r in rec["rt_rows"]}
    assert rt[("O-BELM", "fp64")]["rms"] < 1e-10 and rt[("O-BELM", "fp32")]["rms"] < 1e-3
    assert rt[("DDIM", "fp64")]["rms"] > 1e-3  # the approximate classic inversion
    assert not any(nm.startswith("DPM") for nm, _ in rt)  # peers have no inversion
    pc = rec["peer_check"]
    assert all(v < 1e-10 for k, v in pc["UniPC-3 (bh2)"].items() if k.startswith("vs_"))
    text = (tmp_path / "digits_bench.md").read_text()
    assert text.startswith("# Digits DDPM") and "Self-convergence" in text
    # the report re-renders from its JSON alone
    again = digits_bench.main(["--out", str(tmp_path / "re"), "--from-json",
                               str(tmp_path / "digits_bench.json")])
    assert (tmp_path / "re" / "digits_bench.md").read_text() == text
    assert again["table"] == json.loads((tmp_path / "digits_bench.json").read_text())["table"]


def test_reference_is_reused_only_when_made_the_same_way(tmp_path, capsys):
    from benchmarks import digits_bench

    args = digits_bench.parse_args(["--quick"])
    key = digits_bench.reference_key(args)
    ref = np.arange(12.0).reshape(3, 4)
    path = tmp_path / "r.npz"
    digits_bench.save_reference(path, ref, {"selfconv_rms": 1e-6}, key)
    got, info = digits_bench.load_reference(path, key)
    assert np.array_equal(got, ref) and info["selfconv_rms"] == 1e-6
    assert info["loaded_from"] == str(path)
    other = digits_bench.reference_key(digits_bench.parse_args(["--quick", "--seed", "1"]))
    assert digits_bench.load_reference(path, other) is None
    assert "made differently" in capsys.readouterr().out
    assert digits_bench.load_reference(tmp_path / "missing.npz", key) is None


def test_merge_records_keeps_table_order_and_refuses_other_settings():
    from benchmarks import digits_bench

    cfg = {k: 1 for k in digits_bench.MERGE_KEYS}

    def rec(names, value):
        rows = [dict(sampler=nm, budget=10, median=value) for nm in names]
        return dict(config=cfg, samplers=names, table=rows, sweep=rows, pilot=rows,
                    best_rows=rows, rt_rows=rows, best={nm: "trailing" for nm in names},
                    default_note="n", peer_check={}, elapsed_s=60.0)

    base = rec(["DDIM", "O-BELM", "DPM-Solver++(2M)"], 1.0)
    new = rec(["default (ours)", "O-BELM"], 2.0)
    m = digits_bench.merge_records(base, new)
    assert m["samplers"] == ["DDIM", "O-BELM", "default (ours)", "DPM-Solver++(2M)"]
    assert [r["median"] for r in m["table"]] == [1.0, 2.0, 2.0, 1.0]
    assert m["elapsed_s"] == 120.0 and m["merged"]
    with pytest.raises(ValueError, match="different settings"):
        digits_bench.merge_records(base, dict(new, config=dict(cfg, seed=2)))


def test_grid_families():
    from benchmarks import samplers as S
    from lmsolvers.grid import spaced_timesteps

    tab = S.linear_beta_table()
    for fam in S.GRID_FAMILIES:
        assert fam in S.GRID_FAMILY_DOC
        for n in (1, 2, 5, 20, 61, 244):
            g = S.family_grid(fam, n, tab)
            assert len(g) == n + 1 and g[0] == 0.0 and g[-1] == tab[-1]
            assert np.all(np.diff(g) > 0)
    # trailing is diffusers' spacing (where lmsolvers.grid agrees on the count) …
    for n in (10, 20, 48, 50, 100):
        assert np.array_equal(S.family_grid("trailing", n, tab)[1:],
                              tab[spaced_timesteps(n, 1000, "trailing")][::-1])
    # … and the split family halves trailing(N − 1)'s last step
    g, up = S.family_grid("trailing-split", 20, tab), S.family_grid("trailing", 19, tab)
    assert g[1] == 0.5 * up[1] and np.array_equal(g[2:], up[1:])
    with pytest.raises(ValueError, match="unknown grid family"):
        S.family_grid("cosine", 10, tab)


def test_summarise_errors_intervals_and_divergence():
    from benchmarks import samplers as S

    err = np.linspace(1.0, 2.0, 101)
    idx = S.resample_index(101, 500, 0)
    s = S.summarise_errors(err, idx)
    assert s["median"] == 1.5 and s["median_lo"] < 1.5 < s["median_hi"]
    assert np.isclose(s["rms"], np.sqrt(np.mean(err**2))) and s["n_diverged"] == 0
    assert np.array_equal(idx, S.resample_index(101, 500, 0))  # seeded
    bad = err.copy()
    bad[:10] = np.nan
    t = S.summarise_errors(bad, idx)
    assert t["n_diverged"] == 10 and np.isfinite(t["median"]) and t["rms"] == np.inf


def test_default_configuration_hook(monkeypatch):
    """The row "default (ours)" appears exactly when DiffusionSampler's default is not plain
    O-BELM on the scheduler's grid, and then runs the default's method on its grid."""
    import lmsolvers.adapters.diffusers as ad

    import lmsolvers as L
    from benchmarks import samplers as S

    sched = S.peer_config(S.SamplerSpec("DPM-Solver++(2M)", "dpm"))
    real = ad.DiffusionSampler

    class Designed:
        def __init__(self, unet, scheduler, n, **kw):
            self.method = L.bdia(1.0)
            self.grid = L.Grid(S.family_grid("karras-7", n, S.linear_beta_table()))

    monkeypatch.setattr(ad, "DiffusionSampler", Designed)
    spec, note = S.default_spec(None, sched)
    assert spec is not None and spec.name == "default (ours)" and "bdia" in note
    assert len(spec.grid_fn(12)) == 13 and S.steps_for_budget(spec, 20) == 20
    names = [s.name for s in S.make_specs(belm_ks=(), default=spec)]
    assert names.index("default (ours)") < names.index("DPM-Solver++(2M)")

    class Plain:
        def __init__(self, unet, scheduler, n, **kw):
            self.method = L.obelm()
            self.grid = ad.grid_from_scheduler(scheduler, n)

    monkeypatch.setattr(ad, "DiffusionSampler", Plain)
    spec, note = S.default_spec(None, sched)
    assert spec is None and "default (ours)" in note
    monkeypatch.setattr(ad, "DiffusionSampler", real)
    assert np.isfinite(S.linear_beta_table()).all()


def test_demo_reduced(tmp_path, capsys):
    from benchmarks import demo

    rows = demo.main(["--out", str(tmp_path), "--steps", "10", "--n-samples", "8",
                      "--n-recon", "3"])
    assert (tmp_path / "demo_samples.png").stat().st_size > 0
    assert (tmp_path / "demo_reconstructions.png").stat().st_size > 0
    by = {r["sampler"]: r for r in rows}
    assert by["O-BELM"]["rms"] < 1e-10 and by["EDICT(p=0.93)"]["rms"] < 1e-10
    assert by["default (own grid)"]["rms"] < 1e-10
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


def test_heldout_halves_partition_the_roundtrip_digits():
    from benchmarks.exponential_bench import heldout

    x, y = heldout("all")
    xv, yv = heldout("val")
    xr, yr = heldout("report")
    assert x.dtype == torch.float64 and x.shape[0] == 360
    assert xv.shape[0] + xr.shape[0] == 360
    assert torch.equal(torch.cat([xv, xr]).sort(dim=0).values, x.sort(dim=0).values)
    assert torch.equal(xv, x[0::2]) and torch.equal(yr, y[1::2])
    with pytest.raises(ValueError, match="'val', 'report' or 'all'"):
        heldout("test")


def _rule_rows(budgets, ours):
    """A validation record's rows: every peer at ratio 1 (median 1/n), and ``ours``:
    ``{key: (median × n, extra fields)}`` at every budget."""
    from benchmarks import samplers as S

    rows = {f"{spec.name}|warp1|{n}": dict(median=1.0 / n)
            for spec in S.peer_specs() for n in budgets}
    for cand, (med, extra) in ours.items():
        for n in budgets:
            rows[f"{cand}|ours|{n}"] = dict(median=med / n, **extra)
    return rows


def test_rules_exclude_candidates_whose_latent_leaves_the_band():
    """score_rules: a candidate with a latent std ratio outside [0.8, 1.25] never serves a
    budget, however accurate; where it is inside the band it does."""
    from benchmarks.exponential_bench import score_rules

    budgets = [10, 20, 50, 100]
    rows = _rule_rows(budgets, {"ebelm5@0.8": (0.5, dict(latent=1.4)),
                                "ebelm5@1.0": (0.9, dict(latent=1.1)),
                                "ebelm3@1.0": (0.95, dict(latent=1.1))})
    rules = score_rules(dict(budgets=budgets, rows=rows))
    best = rules[0]
    assert best["regimes"] == [[10, "ebelm5", 1.0]]
    assert best["worst"] == pytest.approx(0.9) and best["geomean"] == pytest.approx(0.9)
    assert all(min(r["ratios"]) > 0.89 for r in rules)  # ebelm5@0.8's 0.5: never
    rows["ebelm5@0.8|ours|20"]["latent"] = 1.2  # inside the band at 20 only: taken there
    best = score_rules(dict(budgets=budgets, rows=rows))[0]
    assert best["ratios"] == pytest.approx([0.9, 0.5, 0.9, 0.9])
    assert best["regimes"] == [[10, "ebelm5", 1.0], [20, "ebelm5", 0.8], [50, "ebelm5", 1.0]]


def test_rules_choose_among_landings_and_exclude_large_roundoff_growth():
    """score_rules: a landing variant is a candidate like any other, a candidate whose u·R
    exceeds the issue's 1e-9 never serves that budget, and a rule has at most MAX_REGIMES
    regimes (ranked by the worst ratio/limit, then the geometric mean)."""
    from benchmarks.exponential_bench import MAX_REGIMES, UNIT_ROUNDOFF, UR_LIMIT, score_rules

    budgets = [10, 20, 50, 100]
    rows = _rule_rows(budgets, {"ebelm3@1.0": (0.9, dict(latent=1.1, R=1e4)),
                                "ebelm5@1.0": (0.95, dict(latent=1.1, R=1e4)),
                                "ebelm5(adams, 0.5)@1.0": (0.8, dict(latent=1.1, R=1e4))})
    best = score_rules(dict(budgets=budgets, rows=rows))[0]
    assert best["regimes"] == [[10, "ebelm5(adams, 0.5)", 1.0]]
    rows["ebelm5(adams, 0.5)@1.0|ours|20"]["R"] = 1.01 * UR_LIMIT / UNIT_ROUNDOFF
    rules = score_rules(dict(budgets=budgets, rows=rows))
    assert all(r["ratios"][1] >= 0.9 - 1e-12 for r in rules)
    assert rules[0]["ratios"] == pytest.approx([0.8, 0.9, 0.8, 0.8])
    assert all(len(r["regimes"]) <= MAX_REGIMES for r in rules)
    # the ranking: by the worst ratio/limit (100 counts ÷ 1.2), then the geometric mean
    assert [round(r["worst"], 3) for r in rules] == sorted(round(r["worst"], 3) for r in rules)
    assert rules[0]["worst"] == pytest.approx(0.9)


def test_rules_need_every_budget_covered_and_measured_latents():
    """score_rules: once latents are measured, a row without one does not serve; a budget
    no candidate can serve leaves no rule (with a warning naming it); equal neighbouring
    picks are one regime, and no rule is listed twice."""
    from benchmarks.exponential_bench import score_rules

    budgets = [10, 20, 50, 100]
    rows = _rule_rows(budgets, {"ebelm3@1.0": (0.9, dict(latent=1.1)),
                                "ebelm5@1.0": (0.5, {})})  # accurate, latent not measured
    rules = score_rules(dict(budgets=budgets, rows=rows))
    assert rules[0]["regimes"] == [[10, "ebelm3", 1.0]]
    keys = [tuple(map(tuple, r["regimes"])) for r in rules]
    assert len(keys) == len(set(keys)) == 1
    rows["ebelm3@1.0|ours|50"]["latent"] = 1.3  # now nothing serves NFE 50
    with pytest.warns(UserWarning, match=r"NFE \[50\]"):
        assert score_rules(dict(budgets=budgets, rows=rows)) == []


@pytest.mark.parametrize("model", ["ddpm", "flow"])
def test_the_library_default_is_the_saved_validations_best_rule(model):
    """lmsolvers.defaultconfig holds what the committed validation record ranks first
    (each regime's method, landing weight and warp; the first regime from the smallest N)."""
    from benchmarks.digits_data import REPO_ROOT
    from lmsolvers import method_from_name
    from lmsolvers.defaultconfig import FLOW_REGIMES, REGIMES

    rec = json.loads((REPO_ROOT / "benchmarks" / "results"
                      / f"exponential_bench_{model}.val.json").read_text())
    regimes = FLOW_REGIMES if model == "flow" else REGIMES
    chosen = []
    for i, (first, name, warp) in enumerate(rec["rule_scores"][0]["regimes"]):
        m = method_from_name(name)
        chosen.append((regimes[0][0] if i == 0 else first, m.k, warp, float(m.landing_gamma)))
    assert tuple(chosen) == regimes


def test_float64_network_is_the_same_weights():
    from benchmarks.digits_bench import DigitsODE

    ode = DigitsODE()
    ode64 = ode.in_float64()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    e32, e64 = ode(x, 2.0), ode64(x, 2.0)
    assert ode.net_dtype == torch.float32 and ode64.net_dtype == torch.float64
    assert next(ode64.unet.parameters()).dtype == torch.float64
    assert next(ode.unet.parameters()).dtype == torch.float32  # the original is untouched
    assert torch.allclose(e32, e64, rtol=0, atol=1e-5) and not torch.equal(e32, e64)
