"""The command line as a new user would try it."""

import subprocess
import sys

import pytest

from lmsolvers.cli import main


def test_derive_k3_none(capsys):
    assert main(["derive", "--steps", "3", "--stability", "none"]) == 0
    out = capsys.readouterr().out
    assert "order (variable steps) = 4" in out and "forward=NO" in out


def test_derive_and_stability_via_module():
    r = subprocess.run([sys.executable, "-m", "lmsolvers", "derive", "--steps", "4", "--latex"],
                       capture_output=True, text=True, check=True)
    assert "both=yes" in r.stdout
    r = subprocess.run([sys.executable, "-m", "lmsolvers", "stability", "--steps", "4",
                        "--schedule", "sd", "--n", "50"], capture_output=True, text=True,
                       check=True)
    assert "parasitic amplification" in r.stdout


def test_help_imports_nothing_heavy():
    # exactly what `python -m lmsolvers --help` runs, then a look at sys.modules
    code = ("import runpy, sys\n"
            "sys.argv = ['lmsolvers', '--help']\n"
            "try:\n"
            "    runpy.run_module('lmsolvers', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "print(sorted(m for m in ('torch', 'sympy', 'numpy', 'scipy') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: lmsolvers" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_bad_order_is_an_error(capsys):
    assert main(["derive", "--steps", "3", "--order", "9"]) == 2
    err = capsys.readouterr().err
    assert err == "lmsolvers derive: error: a k-step BELM has order at most 2k−2 = 4\n"


@pytest.mark.parametrize("argv,message", [
    (["derive", "--steps", "6"], "--steps/-k: k = 6: forward and bidirectional BELM designs "
                                 "exist for 2 ≤ k ≤ 5 only"),
    (["derive", "--steps", "12", "--stability", "none"], "exist for 2 ≤ k ≤ 5 only"),
    (["derive", "--steps", "1"], "a consistent BELM needs k ≥ 2 steps"),
    (["derive", "--steps", "-3"], "--steps/-k: must be a positive integer, got -3"),
    (["derive", "--steps", "3", "--order", "0"], "--order: must be a positive integer, got 0"),
    (["table", "--kmax", "0"], "--kmax: must be a positive integer, got 0"),
    (["table", "--kmax", "6"], "exist for 2 ≤ k ≤ 5 only"),
    (["stability", "--steps", "3", "--n", "-1"], "--n: must be a positive integer, got -1"),
    (["plot", "--steps", "two"], "--steps/-k: 'two' is not an integer"),
], ids=["k6", "k12-none", "k1", "k-negative", "order0", "kmax0", "kmax6", "n-negative",
        "k-not-int"])
def test_argument_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lmsolvers {argv[0]}: error: argument ")
    assert message in err


def test_refusal_from_the_shell_is_immediate_and_clean():
    r = subprocess.run([sys.executable, "-m", "lmsolvers", "table", "--kmax", "6"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_table_reports_progress_on_stderr(capsys):
    assert main(["table", "--kmax", "2"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()  # not a terminal: one line per design
    assert lines == [f"lmsolvers table: designing k = 2, {st} ({i}/3)"
                     for i, st in enumerate(["none", "forward", "bidirectional"], 1)]
    rows = captured.out.splitlines()
    assert len(rows) == 5 and rows[4].split()[:3] == ["2", "bidirectional", "2"]


def test_plot_command_writes_a_root_plot(tmp_path, monkeypatch):
    out = tmp_path / "roots.png"
    assert main(["plot", "--steps", "4", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # by default under out/ (git-ignored in a checkout), never loose in the working dir
    work = tmp_path / "checkout"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["plot", "--steps", "2"]) == 0
    assert [p.relative_to(work).as_posix() for p in sorted(work.rglob("*"))] == [
        "out", "out/belm2_roots.png"]
    # the maximal-order design's root at -27.96 lies far off the axes: marked, not clipped
    from lmsolvers.plots import plot_design_roots

    fig = plot_design_roots(4)
    labels = [a.get_text() for a in fig.axes[0].texts]
    assert any("-27.96" in s and "off axes" in s for s in labels), labels


def test_derive_order_prints_the_family_of_that_order(capsys):
    """``--order 4`` for k = 4: the variable-step family of order 4, not the bidirectional
    design (order 4 at equal steps, 3 on variable grids)."""
    assert main(["derive", "--steps", "4", "--order", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4-step BELM family of order 4 on variable steps, free parameters "
                          "[a4, a3]")
    assert "order (variable steps) = 4 for every value" in out and "= 3" not in out
    assert main(["derive", "--steps", "4", "--order", "4", "--stability", "forward"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--order prints the whole family" in err


def test_dataset_job_verbs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for verb in ("invert-dataset", "reconstruct", "verify", "sample-dataset"):
        assert verb in out
    assert main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"lmsolvers verify: error: {tmp_path} is not a job directory "
                   f"({tmp_path / 'job.json'} is missing)\n")
    with pytest.raises(SystemExit) as e:
        main(["invert-dataset", "--out", str(tmp_path), "--data", "x.npy"])
    assert e.value.code == 2
    assert "one of the arguments --model --eps is required" in capsys.readouterr().err
