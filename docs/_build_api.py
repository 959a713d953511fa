"""Generate docs/api.md: every public name with the summary line of its docstring.

Public names are the ``__all__`` of :data:`MODULES`; for a class, also its public methods
and properties defined in this project (inherited diffusers machinery is not listed).
Data constants are documented by a ``#:`` comment above their assignment.

    .venv/bin/python docs/_build_api.py          # writes docs/api.md
    .venv/bin/python docs/_build_api.py --check  # exit 1 if docs/api.md is out of date

``tests/test_api_docs.py`` fails when a public name has no docstring or api.md is stale.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_MD = ROOT / "docs" / "api.md"

#: The documented modules, in order.
MODULES = ("lmsolvers", "lmsolvers.adapters", "lmsolvers.adapters.tiny")


@dataclass(frozen=True)
class Entry:
    """One public name: dotted path, kind and its docstring (``None`` if missing)."""

    module: str
    name: str
    kind: str
    doc: str | None
    source: str


def _own(obj: object) -> bool:
    mod = getattr(obj, "__module__", None) or ""
    return mod.split(".")[0] == "lmsolvers"


def _comment_doc(module, name: str) -> str | None:
    """The ``#:`` comment block right above ``name = …`` in the module's source."""
    try:
        lines = inspect.getsource(module).splitlines()
    except (OSError, TypeError):
        return None
    for i, line in enumerate(lines):
        if re.match(rf"{re.escape(name)}\s*(:[^=]*)?=", line):
            block = []
            j = i - 1
            while j >= 0 and lines[j].lstrip().startswith("#:"):
                block.insert(0, lines[j].lstrip()[2:].strip())
                j -= 1
            return " ".join(block) or None
    return None


def _where(obj: object) -> str:
    try:
        path = Path(inspect.getsourcefile(inspect.unwrap(obj)) or "")
        return str(path.resolve().relative_to(ROOT))
    except (TypeError, ValueError, OSError):
        return ""


def _class_members(module: str, cname: str, cls: type) -> list[Entry]:
    out = []
    seen = set()
    for klass in cls.__mro__:
        if not _own(klass):
            continue
        for attr, val in vars(klass).items():
            if attr.startswith("_") or attr in seen:
                continue
            seen.add(attr)
            if isinstance(val, property):
                kind, doc, fn = "property", inspect.getdoc(val.fget), val.fget
            elif isinstance(val, functools.cached_property):
                kind, doc, fn = "property", inspect.getdoc(val.func), val.func
            elif isinstance(val, (staticmethod, classmethod)):
                kind, doc, fn = "method", inspect.getdoc(val.__func__), val.__func__
            elif inspect.isfunction(val):
                kind, doc, fn = "method", inspect.getdoc(val), val
            else:
                continue
            if getattr(fn, "__doc__", None) is None:
                doc = None  # inspect.getdoc inherits from diffusers' bases; we want our own
            out.append(Entry(module, f"{cname}.{attr}", kind, doc, _where(fn)))
    return sorted(out, key=lambda e: e.name)


def entries() -> list[Entry]:
    """Every public name of :data:`MODULES` (classes followed by their members)."""
    out: list[Entry] = []
    for modname in MODULES:
        mod = importlib.import_module(modname)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.ismodule(obj):
                out.append(Entry(modname, name, "module", inspect.getdoc(obj), _where(obj)))
            elif inspect.isclass(obj):
                doc = obj.__doc__ if "__doc__" in vars(obj) else None
                kind = "exception" if issubclass(obj, BaseException) else "class"
                out.append(Entry(modname, name, kind, doc and inspect.cleandoc(doc), _where(obj)))
                out.extend(_class_members(modname, name, obj))
            elif callable(obj):
                out.append(Entry(modname, name, "function", inspect.getdoc(obj), _where(obj)))
            else:
                doc = None
                for m in (mod, *_submodules(mod)):
                    if doc := _comment_doc(m, name):
                        break
                out.append(Entry(modname, name, "constant", doc, ""))
    return out


def _submodules(mod) -> list:
    subs = []
    for val in vars(mod).values():
        if inspect.ismodule(val) and val.__name__.startswith(mod.__name__ + "."):
            subs.append(val)
    return subs


def summary(doc: str | None) -> str:
    """The first paragraph of a docstring on one line (``|`` escaped for tables)."""
    if not doc:
        return "**(no docstring)**"
    para = doc.strip().split("\n\n")[0]
    return " ".join(line.strip() for line in para.splitlines()).replace("|", "\\|")


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Every public name of `lmsolvers` and `lmsolvers.adapters` (and the offline test",
        "components of `lmsolvers.adapters.tiny`) with the first paragraph of its docstring.",
        "Generated by `docs/_build_api.py`; do not edit by hand",
        "(`.venv/bin/python docs/_build_api.py` regenerates it, and `tests/test_api_docs.py`",
        "fails when it is stale or a public name lacks a docstring).",
        "Tutorials: `notebooks/01_derive_belm.ipynb`, `notebooks/02_exact_inversion.ipynb`,",
        "`notebooks/03_stable_diffusion_editing.ipynb`.",
    ]
    by_module: dict[str, list[Entry]] = {}
    for e in entries():
        by_module.setdefault(e.module, []).append(e)
    for modname, es in by_module.items():
        mod = importlib.import_module(modname)
        lines += ["", f"## `{modname}`", "", summary(inspect.getdoc(mod)), "",
                  "| name | kind | summary | source |", "|---|---|---|---|"]
        for e in es:
            member = e.name.split(".", 1)
            name = f"`{e.name}`" if len(member) == 1 else f"&nbsp;&nbsp;`.{member[1]}`"
            src = f"`{e.source}`" if e.source else ""
            lines.append(f"| {name} | {e.kind} | {summary(e.doc)} | {src} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not API_MD.exists() or API_MD.read_text() != text:
            print("docs/api.md is out of date: run .venv/bin/python docs/_build_api.py")
            return 1
        return 0
    API_MD.write_text(text)
    print("wrote", API_MD.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
