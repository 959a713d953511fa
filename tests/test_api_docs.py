"""The API reference builds strictly, documents every public name, and its checks bite.

``docs/api`` is a Sphinx autodoc project (``make docs``).  The build runs with ``-W``, so
any warning fails it: malformed reST in a docstring, a public name without a docstring,
a name of an ``__all__`` that was not documented (see ``docs/api/conf.py``).  The
inventory Sphinx writes (``objects.inv``) is then compared with the modules' ``__all__``
read here, independently of conf.py's own check.
"""

from __future__ import annotations

import importlib
import posixpath
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sphinx.util.inventory import InventoryFile

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "api"
MODULES = ("lmsolvers", "lmsolvers.adapters", "lmsolvers.adapters.tiny")


def _sphinx(src: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    # A fresh interpreter: autodoc imports every module, and a failed import must not
    # leave half-initialised modules behind in the test process.
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-E", "-b", "html",
         str(src), str(out)],
        cwd=cwd, capture_output=True, text=True, timeout=300)


def _inventory(out: Path) -> set[str]:
    with open(out / "objects.inv", "rb") as f:
        inv = InventoryFile.load(f, "", posixpath.join)
    data = getattr(inv, "data", inv)  # Sphinx ≥ 8.2 returns an object, earlier a dict
    return {name for by_name in data.values() for name in by_name}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("api-html")
    res = _sphinx(DOCS, out, ROOT)
    assert res.returncode == 0, f"strict docs build failed:\n{res.stderr[-6000:]}"
    return out


def test_every_public_name_is_documented(built):
    names = _inventory(built)
    for modname in MODULES:
        mod = importlib.import_module(modname)
        # __all__ is read now, so a name added to lmsolvers' export table is covered too
        missing = [n for n in mod.__all__ if f"{modname}.{n}" not in names]
        assert not missing, f"{modname}: not in the API reference: {missing}"
    # class members are listed, not only the classes
    assert {"lmsolvers.Grid.power", "lmsolvers.LMMethod.coefficients",
            "lmsolvers.LMMethod.is_bidirectional_explicit",
            "lmsolvers.adapters.DiffusionSampler.invert"} <= names
    html = (built / "index.html").read_text()
    assert "Grid of a diffusion schedule" in html  # docstrings are rendered, not just names


def test_the_build_rejects_missing_docstrings_and_undocumented_names(tmp_path):
    """Negative control: the same conf.py on a package with each defect fails the build
    and names the defect; a re-exported constant gets its comment from its own module."""
    src, pkg = tmp_path / "src", tmp_path / "fakepkg"
    src.mkdir()
    pkg.mkdir()
    shutil.copy(DOCS / "conf.py", src / "conf.py")
    (src / "index.rst").write_text("Fake\n====\n\n.. automodule:: fakepkg\n")
    (pkg / "consts.py").write_text(
        '"""Constants."""\n\n#: the commented constant\nKINDS = ("a",)\n')
    (pkg / "__init__.py").write_text(
        '"""A fake package."""\n\nfrom .consts import KINDS\n\n'
        '__all__ = ["KINDS", "BARE", "undocumented", "Documented"]\n\nBARE = (1, 2)\n\n\n'
        "def undocumented(x):\n    return x\n\n\n"
        'class Documented:\n    """Has a docstring."""\n\n'
        "    def method(self):\n        return 1\n")
    res = _sphinx(src, tmp_path / "out", tmp_path)
    assert res.returncode != 0
    err = res.stderr
    assert "public name without a docstring: fakepkg.undocumented" in err
    assert "public name without a docstring: fakepkg.Documented.method" in err
    assert "public constant without a #: comment: fakepkg.BARE" in err
    assert "KINDS" not in err
    assert "the commented constant" in (tmp_path / "out" / "index.html").read_text()
