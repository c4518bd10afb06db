"""The rooms of ``app/``, read from the source with ``ast`` (DESIGN.md "Rooms").

* No import cycles: every ``import`` at any nesting level counts (an import inside a function
  to dodge a cycle is still an edge), and importing ``a.b.c`` runs ``a/b/__init__.py`` first,
  so it is an edge to the package ``a.b`` as well.
* One module moves job state: only ``app/lifecycle.py`` writes ``status`` or appends a
  ``status`` event.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_files(package: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(package: str) -> dict[str, set[str]]:
    """``module -> modules of package it imports`` (with the packages those run first)."""
    files = module_files(package)
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, path.name == "__init__.py", node)
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        for target in targets:
            parts = target.split(".")
            for k in range(1, len(parts) + 1):
                mod = ".".join(parts[:k])
                if mod in files and mod != name and not (name + ".").startswith(mod + "."):
                    graph[name].add(mod)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_app_has_no_import_cycle() -> None:
    graph = import_graph("app")
    assert "app.worker" in graph["app.executors.local"]  # imported inside a function: counted
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def _status_writes(path: Path) -> list[str]:
    """Places in ``path`` that write a job's status or append a status event."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "values" and any(k.arg == "status" for k in node.keywords):
                found.append(f"{path.name}:{node.lineno} .values(status=...)")
            if (name == "append" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value == "status"):
                found.append(f"{path.name}:{node.lineno} a status event")
        if isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if (isinstance(target, ast.Attribute) and target.attr == "status"
                        and not (isinstance(target.value, ast.Name) and target.value.id == "self")):
                    found.append(f"{path.name}:{node.lineno} .status = ...")
    return found


def test_only_the_lifecycle_module_moves_job_state() -> None:
    files = module_files("app")
    writes = {name: _status_writes(path) for name, path in files.items()}
    assert writes["app.lifecycle"], "the lifecycle module should be found writing status"
    others = {name: places for name, places in writes.items()
              if places and name != "app.lifecycle"}
    assert others == {}
