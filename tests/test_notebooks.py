"""The tutorial notebooks execute top to bottom, and their sources are canonical jupytext.

The notebooks live as jupytext percent-format scripts (``notebooks/*.py``: reviewable in
diffs, no outputs to strip).  Each is read with jupytext into an nbformat notebook and run
in a fresh kernel of *this* interpreter (a kernelspec written to a temporary directory
whose argv[0] is ``sys.executable``, so a user-level ``python3`` kernel elsewhere can never
be picked up), with the working directory ``notebooks/`` as in Jupyter,
``LMSOLVERS_TINY=1`` (notebook 03 then builds tiny random-weight Stable Diffusion
components instead of downloading a checkpoint) and the hub offline.
"""

from __future__ import annotations

import json
import sys
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
#: Pictures each notebook shows when run in tiny mode (counted PNG outputs).
FIGURES = {"01": 2, "02": 3, "03": 4, "04": 1}


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
    monkeypatch.setenv("LMSOLVERS_TINY", "1")
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
    client.execute()
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
