"""The rooms of ``app/``, read from the source with ``ast`` (DESIGN.md "Rooms").

* No import cycles, by the same ast import graph that checks ``core/``
  (tests/test_import_cycles.py: imports inside functions and package ``__init__`` count).
* One module moves job state: only ``app/lifecycle.py`` writes ``status`` or appends a
  ``status`` event.
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_import_cycles import find_cycle, import_graph, module_files


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
