"""Every public name has a docstring, and docs/api.md is what docs/_build_api.py generates."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _builder():
    spec = importlib.util.spec_from_file_location("docs_build_api", ROOT / "docs" / "_build_api.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_every_public_name_has_a_docstring():
    b = _builder()
    es = b.entries()
    # the listing really covers both __all__s, class members included
    for modname in ("lmsolvers", "lmsolvers.adapters"):
        listed = {e.name for e in es if e.module == modname}
        assert set(importlib.import_module(modname).__all__) <= listed
    names = {e.name for e in es}
    assert {"Grid.power", "LMMethod.coefficients", "DiffusionSampler.invert",
            "LMMethod.is_bidirectional_explicit"} <= names
    missing = [f"{e.module}.{e.name} ({e.source or e.kind})" for e in es
               if not (e.doc and e.doc.strip())]
    assert not missing, "public names without a docstring:\n  " + "\n  ".join(missing)


def test_summary_is_the_first_paragraph_on_one_line():
    b = _builder()
    assert b.summary("First line\ncontinues.\n\nDetails.") == "First line continues."
    assert b.summary("a | b") == "a \\| b"
    assert b.summary(None) == "**(no docstring)**"


def test_api_md_is_up_to_date():
    text = (ROOT / "docs" / "api.md").read_text()
    assert text == _builder().render(), (
        "docs/api.md is stale: run .venv/bin/python docs/_build_api.py")
