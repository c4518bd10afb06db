"""No import cycles inside ``core/`` (DESIGN.md "Rooms": data flows one way).

The import graph is read from the source with ``ast``: every ``import`` and ``from ... import``
at any nesting level counts (an import inside a function to dodge a cycle is still an edge).
Importing ``a.b.c`` from outside package ``a.b`` runs ``a/b/__init__.py`` first, so it is an
edge to ``a.b`` as well: that is how ``core.trainer -> core.diagnostics -> preflight ->
core.trainer`` closed a cycle through a package ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_files(package: str) -> dict[str, Path]:
    """``{module name: file}`` for every module of ``package`` (a top-level directory)."""
    out: dict[str, Path] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a (possibly relative) ``from ... import`` names."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(package: str) -> dict[str, set[str]]:
    """Edges ``module -> modules it imports`` restricted to ``package``'s own modules."""
    files = module_files(package)
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_pkg, node)
                targets.add(base)
                # `from pkg import sub` imports the submodule pkg.sub when there is one
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        for target in targets:
            parts = target.split(".")
            # the target and every enclosing package not already enclosing the importer
            for k in range(1, len(parts) + 1):
                mod = ".".join(parts[:k])
                if mod in files and mod != name and not (name + ".").startswith(mod + "."):
                    graph[name].add(mod)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(graph):
        if state.get(root):
            continue
        path: list[str] = [root]
        stack = [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_find_cycle_sees_a_cycle_through_a_package_init() -> None:
    graph = {"p": {"p.pre"}, "p.pre": {"q"}, "q": {"p", "p.mon"}, "p.mon": set()}
    assert find_cycle(graph) == ["p", "p.pre", "q", "p"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_counts_function_level_imports_and_parent_packages() -> None:
    graph = import_graph("core")
    # core.trainer feeds its records to the monitor: an edge to core.diagnostics.monitor and,
    # through the package __init__, to core.diagnostics
    assert {"core.diagnostics.monitor", "core.diagnostics"} <= graph["core.trainer"]
    # a module never gets an edge to the package that encloses it
    assert "core.diagnostics" not in graph["core.diagnostics.monitor"]


def test_core_has_no_import_cycle() -> None:
    assert find_cycle(import_graph("core")) is None
