"""Package structure: no import cycle, the engine is the one place runs are made of."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"lmsolvers": ROOT / "lmsolvers", "lmsolvers.adapters": ROOT / "adapters",
            "lmsolvers.adapters.jobs": ROOT / "adapters" / "jobs"}


def _module_name(pkg: str, path: Path) -> str:
    return pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"


def _imports(module: str, path: Path, pkg: str) -> tuple[set[str], list[str]]:
    """Intra-package imports at module level (outside ``if TYPE_CHECKING``), and the
    function-level ones (as ``module:line``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[str] = set()
    nested: list[str] = []

    def target(node: ast.ImportFrom | ast.Import) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names if a.name.startswith("lmsolvers")]
        base = pkg if path.stem == "__init__" else pkg
        if node.level:
            parts = base.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1])
            name = f"{base}.{node.module}" if node.module else base
        else:
            name = node.module or ""
        if not name.startswith("lmsolvers"):
            return []
        # "from . import x" / "from .m import f": the module imported is m (or x)
        return [name] if node.module else [f"{name}.{a.name}" for a in node.names]

    def visit(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                names = target(child)
                if depth == 0:
                    top.update(names)
                elif names:
                    nested.append(f"{module}:{child.lineno}")
            inner = depth + isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, inner)

    visit(tree, 0)
    return top, nested


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = {_module_name(pkg, p): (p, pkg) for pkg, d in PACKAGES.items()
               for p in sorted(d.glob("*.py"))}
    graph, nested = {}, []
    for mod, (path, pkg) in modules.items():
        top, inner = _imports(mod, path, pkg)
        graph[mod] = {t for t in top if t in modules and t != mod}
        nested += inner
    return graph, nested


def test_no_import_cycle():
    graph, _ = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):]
                                                                    + [n]))
            if n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)
    # the engine sits below every integrator; the core never imports the adapters
    assert "lmsolvers.integrate" not in graph["lmsolvers.bitexact"]
    assert not any(t.startswith("lmsolvers.adapters") for m, ts in graph.items()
                   if not m.startswith("lmsolvers.adapters") for t in ts)


def test_no_function_level_imports_of_the_package():
    """Function-level imports hide cycles; only the command line defers its imports
    (so that ``--help`` does not load torch and sympy) and the lazy package itself."""
    _, nested = _graph()
    assert [n for n in nested if not n.startswith(("lmsolvers.cli:", "lmsolvers:"))] == []


def test_the_window_of_states_lives_in_the_engine_only():
    """Every run keeps its states in engine.Window: no other module builds its own
    node -> state dictionary for stepping."""
    offenders = []
    for d in PACKAGES.values():
        for p in d.glob("*.py"):
            text = p.read_text(encoding="utf-8")
            if p.name != "engine.py" and ("dict[int, torch.Tensor]" in text
                                          or "Dict[int, torch.Tensor]" in text):
                offenders.append(p.name)
    assert offenders == []


def test_import_is_lazy():
    code = ("import sys, lmsolvers; assert 'torch' not in sys.modules and 'sympy' not in "
            "sys.modules, sorted(m for m in sys.modules if m.startswith(('torch', 'sympy')))"
            "[:3]; lmsolvers.Grid; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
