"""Sphinx configuration of the API reference (``make docs`` → ``out/docs/index.html``).

The reference is generated from the code by autodoc.  What it lists is each documented
module's ``__all__``, read at build time: ``lmsolvers`` computes its ``__all__`` from a
table of lazily loaded names, so a name added there is documented (and checked) without
touching this folder.  The build is strict (``-W``: every warning is an error) and adds
three checks of its own, each reported as a warning:

* a public name, class members included, without a docstring of its own
  (:func:`_require_docstring`);
* a name of an ``__all__`` that the build did not document (:func:`_require_complete`):
  autodoc silently drops, for instance, a constant without a ``#:`` comment;
* a re-exported constant whose ``#:`` comment cannot be found (:func:`_add_extras`).

``tests/test_api_docs.py`` runs the same build in the test suite.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys

from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

project = "lmsolvers"
author = "lmsolvers developers"
copyright = "lmsolvers developers"  # noqa: A001 - the name Sphinx reads

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings use numpy-style "Parameters" sections
]
root_doc = "index"
html_theme = "alabaster"  # ships with Sphinx: nothing to download

autodoc_default_options = {
    "members": True,  # a module's members are its __all__
    "undoc-members": True,  # list them even without a docstring, so the check below sees them
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
# A method overriding diffusers' (BELMScheduler.step, …) must say what *ours* does: an
# inherited docstring would describe the base class and hide the omission.
autodoc_inherit_docstrings = False
napoleon_numpy_docstring = True
napoleon_google_docstring = True
# "Attributes" sections as fields of the class: as separate entries they would collide
# with the properties autodoc documents under the same names.
napoleon_use_ivar = True

_log = logging.getLogger("lmsolvers.docs")
_AUTOMODULE = re.compile(r"^\.\. automodule:: (\S+)\s*$", re.M)


def _require_docstring(app, what, name, obj, options, lines) -> None:
    """Warn for a documented public name without a docstring."""
    if what == "module" or any(line.strip() for line in lines):
        return
    _log.warning("public name without a docstring: %s (%s)", name, what)


def _comment_doc(module_name: str, name: str) -> list[str]:
    """The ``#:`` comment of ``name = …`` in ``module_name`` (Sphinx's own source analyser)."""
    try:
        docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
    except Exception:  # noqa: BLE001 - a module without source just has no comments
        return []
    return list(docs.get(("", name), []))


def _extras(modname: str) -> list[str]:
    """reST for the names of ``modname.__all__`` that ``automodule`` leaves out.

    A submodule listed in ``__all__`` gets its own ``automodule``.  A constant re-exported
    from a submodule gets a ``py:data`` entry carrying the ``#:`` comment written where it
    is defined (autodoc only reads comments in the listing module itself).
    """
    mod = importlib.import_module(modname)
    out: list[str] = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.ismodule(obj):
            out += ["", f".. automodule:: {obj.__name__}"]
            continue
        if inspect.isclass(obj) or callable(obj) or _comment_doc(modname, name):
            continue  # autodoc documents these itself
        owners = [m for m in list(sys.modules) if m.startswith(modname + ".")
                  and getattr(sys.modules[m], name, None) is obj]
        doc = next((d for m in owners if (d := _comment_doc(m, name))), [])
        if not doc:
            _log.warning("public constant without a #: comment: %s.%s", modname, name)
        out += ["", f".. py:data:: {name}", f"   :module: {modname}", f"   :value: {obj!r}", "",
                *(f"   {line}" for line in doc)]
    return out


def _add_extras(app, docname, source) -> None:
    """Insert :func:`_extras` after every ``automodule`` of the page."""
    def expand(match: re.Match) -> str:
        return "\n".join([match.group(0).rstrip(), *_extras(match.group(1)), ""])

    source[0] = _AUTOMODULE.sub(expand, source[0])


def _require_complete(app, env) -> None:
    """Warn for a name of a documented module's ``__all__`` that the build did not document."""
    py = env.get_domain("py")
    documented = set(py.objects) | set(py.modules)
    for modname in sorted(py.modules):
        for name in getattr(importlib.import_module(modname), "__all__", ()):
            if f"{modname}.{name}" not in documented:
                _log.warning("%s.%s is in __all__ but was not documented", modname, name)


def setup(app):
    app.connect("source-read", _add_extras)
    app.connect("autodoc-process-docstring", _require_docstring)
    app.connect("env-check-consistency", _require_complete)
    return {"parallel_read_safe": True}
