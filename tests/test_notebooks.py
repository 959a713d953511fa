"""The tutorial notebooks execute top to bottom in a kernel *and* as plain scripts, and their
sources are canonical jupytext.

The notebooks live as jupytext percent-format scripts (``notebooks/*.py``: reviewable in
diffs, no outputs to strip).

*In a kernel*: each is read with jupytext into an nbformat notebook and run in a fresh
kernel of *this* interpreter (a kernelspec written to a temporary directory whose argv[0]
is ``sys.executable``, so a user-level ``python3`` kernel elsewhere can never be picked
up), with the working directory ``notebooks/`` as in Jupyter, the hub offline, and
``LMSOLVERS_TINY=1`` for notebook 03 only (tiny random-weight Stable Diffusion components
instead of a checkpoint download): notebooks 01, 02 and 04 run in full.  Each kernel is
shut down when its notebook is done (a kernel left running kept ``make test`` alive after
its summary).

*As scripts*: ``python notebooks/0N_….py``, as a newcomer runs them — 01 and 03 from the
checkout root, 02 and 04 from an unrelated working directory — with ``LMSOLVERS_TINY=1``
(each notebook's quick settings) and ``OMP_NUM_THREADS`` unset (the notebooks then set one
torch thread and say so).  These four processes start with the module and run in the
background, one after another, while the kernel tests run: on the 2-core CI machine a
kernel test keeps one core busy, so the script runs cost little extra wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from jupytext.config import (
    find_jupytext_configuration_file,
    load_jupytext_configuration_file,
)
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = ["01_derive_belm.py", "02_exact_inversion.py", "03_stable_diffusion_editing.py",
             "04_gradients_through_sampling.py"]
#: Per-cell and per-notebook limits (seconds); the four take ~90 s together on 2 cores.
CELL_TIMEOUT = 180
NOTEBOOK_BUDGET = 240
#: Pictures each notebook shows (counted PNG outputs of the kernel run).
FIGURES = {"01": 2, "02": 3, "03": 4, "04": 1}
#: Seconds a script run may take (tiny settings; measured 4–25 s each on a loaded machine).
SCRIPT_TIMEOUT = 300


class _ScriptRuns:
    """The four notebooks run as plain scripts, one after another, in a background thread."""

    def __init__(self, workdir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        env.update(LMSOLVERS_TINY="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg", TQDM_DISABLE="1")
        self.env, self.workdir = env, workdir
        self.results: dict[str, subprocess.CompletedProcess | BaseException] = {}
        self.done = {name: threading.Event() for name in NOTEBOOKS}
        self.proc: subprocess.Popen | None = None
        self.stop = False
        self.thread = threading.Thread(target=self._run_all, daemon=True)
        self.thread.start()

    def cwd(self, name: str) -> Path:
        return ROOT if name[:2] in ("01", "03") else self.workdir

    def _run_all(self) -> None:
        for name in NOTEBOOKS:
            try:
                if self.stop:
                    raise RuntimeError("stopped")
                self.proc = subprocess.Popen(
                    [sys.executable, str(NB_DIR / name)], cwd=self.cwd(name), env=self.env,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                out, err = self.proc.communicate(timeout=SCRIPT_TIMEOUT)
                self.results[name] = subprocess.CompletedProcess(self.proc.args,
                                                                 self.proc.returncode, out, err)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                if self.proc is not None and self.proc.poll() is None:
                    self.proc.kill()
                self.results[name] = exc
            finally:
                self.done[name].set()

    def close(self) -> None:
        self.stop = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


@pytest.fixture(scope="module", autouse=True)
def script_runs(tmp_path_factory):
    """Starts the script runs with the module (module docstring)."""
    runs = _ScriptRuns(tmp_path_factory.mktemp("elsewhere"))
    yield runs
    runs.close()


def _canonical_format() -> dict:
    """The text format the notebooks are stored in: py:percent with the jupytext settings
    that jupytext itself finds for notebooks/ (pyproject.toml [tool.jupytext])."""
    path = find_jupytext_configuration_file(str(NB_DIR))
    assert path is not None and Path(path) == ROOT / "pyproject.toml", path
    cfg = load_jupytext_configuration_file(path)
    return {"extension": ".py", "format_name": "percent",
            "notebook_metadata_filter": cfg.notebook_metadata_filter}


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> Path:
    from ipykernel.kernelspec import write_kernel_spec

    root = tmp_path_factory.mktemp("kernels")
    path = Path(write_kernel_spec(str(root / "lmsolvers-test")))
    argv = json.loads((path / "kernel.json").read_text())["argv"]
    assert argv[0] == sys.executable
    return root


def test_the_notebook_list_is_complete():
    # a notebook added to notebooks/ but not here would never run in CI
    # (a local .ipynb conversion may sit beside them: it is git-ignored, never the source)
    assert sorted(p.name for p in NB_DIR.glob("*.py")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, kernel_dir, monkeypatch):
    if name.startswith("03"):
        monkeypatch.setenv("LMSOLVERS_TINY", "1")
    else:
        monkeypatch.delenv("LMSOLVERS_TINY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    nb = jupytext.read(NB_DIR / name)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code_cells) >= 5 and any(c.cell_type == "markdown" for c in nb.cells)
    # prove the kernel is this interpreter (the venv's), not some other python3
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    km = KernelManager(kernel_name="lmsolvers-test",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, allow_errors=False,
                            resources={"metadata": {"path": str(NB_DIR)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    finally:  # the client does not own a kernel manager it is given: shut the kernel down
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    elapsed = time.perf_counter() - t0
    assert elapsed < NOTEBOOK_BUDGET, f"{name} took {elapsed:.0f} s"
    last = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert last.strip() == sys.executable
    # every code cell ran, in order, and none printed an error or traceback
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # every figure was drawn (a figure that fails silently would leave a text repr instead)
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images == FIGURES[name[:2]]
    if name.startswith("03"):
        text = "".join(o.get("text", "") for o in outputs)
        assert "TINY MODE" in text


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_source_is_canonical_jupytext(name):
    """Each file is what jupytext writes for it (so editing it in Jupyter, with jupytext,
    produces no spurious diff) and a valid notebook once read."""
    path = NB_DIR / name
    nb = jupytext.read(path)
    nbformat.validate(nb)
    assert jupytext.writes(nb, fmt=_canonical_format()) == path.read_text()
    assert nb.metadata.get("kernelspec", {}).get("language") == "python"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_as_a_script(name, script_runs):
    """``python notebooks/<name>`` from the checkout root (01, 03) or from another directory
    (02, 04): no chdir, no Jupyter; the notebook puts the checkout on sys.path itself, sets
    one torch thread and says so (module docstring)."""
    before = sorted(p.name for p in NB_DIR.iterdir())
    assert script_runs.done[name].wait(SCRIPT_TIMEOUT + 60), f"{name} did not finish"
    r = script_runs.results[name]
    assert not isinstance(r, BaseException), repr(r)
    assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-3000:])
    assert "torch threads: 1 (OMP_NUM_THREADS=unset)" in r.stdout
    assert "Traceback" not in r.stderr
    if name.startswith("03"):
        assert "TINY MODE" in r.stdout
    assert sorted(p.name for p in NB_DIR.iterdir()) == before  # nothing written beside them
