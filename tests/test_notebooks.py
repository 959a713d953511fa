"""The tutorial notebooks execute top to bottom, and the committed files are stripped and current.

Each notebook runs in a fresh kernel of *this* interpreter (a kernelspec written to a
temporary directory whose argv[0] is ``sys.executable``, so a user-level ``python3`` kernel
elsewhere can never be picked up), with the working directory ``notebooks/`` as in Jupyter,
``LMSOLVERS_TINY=1`` (notebook 03 then builds tiny random-weight Stable Diffusion components
instead of downloading a checkpoint) and the hub offline.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ["01_derive_belm.ipynb", "02_exact_inversion.ipynb",
             "03_stable_diffusion_editing.ipynb"]
#: Per-cell and per-notebook limits (seconds); the three take ~40 s together on 2 cores.
CELL_TIMEOUT = 180
NOTEBOOK_BUDGET = 240


def _build_module():
    spec = importlib.util.spec_from_file_location("notebooks_build", NB_DIR / "_build.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> Path:
    from ipykernel.kernelspec import write_kernel_spec

    root = tmp_path_factory.mktemp("kernels")
    path = Path(write_kernel_spec(str(root / "lmsolvers-test")))
    argv = json.loads((path / "kernel.json").read_text())["argv"]
    assert argv[0] == sys.executable
    return root


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, kernel_dir, monkeypatch):
    monkeypatch.setenv("LMSOLVERS_TINY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    nb = nbformat.read(NB_DIR / name, as_version=4)
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
    # every code cell ran, and the notebooks with pictures produced them
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
    assert images >= 2
    if name.startswith("03"):
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                       for o in c.outputs)
        assert "TINY MODE" in text


def test_notebooks_are_stripped_and_current(capsys):
    for name in NOTEBOOKS:
        nb = nbformat.read(NB_DIR / name, as_version=4)
        nbformat.validate(nb)
        for c in nb.cells:
            if c.cell_type == "code":
                assert c.outputs == [] and c.execution_count is None, f"{name}: outputs kept"
    assert _build_module().main(["--check"]) == 0, capsys.readouterr().out

