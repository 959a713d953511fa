"""The command line as a new user would try it."""

import subprocess
import sys

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


def test_bad_order_is_an_error(capsys):
    assert main(["derive", "--steps", "3", "--order", "9"]) == 2


def test_plot_command_writes_a_root_plot(tmp_path):
    from lmsolvers.cli import main as cli_main

    out = tmp_path / "roots.png"
    assert cli_main(["plot", "--steps", "4", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
