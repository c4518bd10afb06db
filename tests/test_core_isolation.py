"""`core` is the library under the service: NumPy + pydantic only (DESIGN.md "Layout").

It must never import the web, database or queue stack (nor the service package `app`), so it
stays usable on its own in a notebook and a worker can train without the API's dependencies.
The pytest process itself has those packages loaded (conftest builds apps), so the runtime
check runs in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"

FORBIDDEN = frozenset({
    "fastapi", "starlette", "sqlalchemy", "celery", "httpx", "alembic", "sse_starlette",
    "psycopg", "psycopg2", "redis", "kombu", "uvicorn", "pydantic_settings", "app",
    "torch",  # a bench/parity-test dependency only
})


def core_modules() -> list[str]:
    """Every module of the core package, from the file tree (``core``, ``core.x``, ...)."""
    names = []
    for path in sorted(CORE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def test_core_modules_are_found() -> None:
    modules = core_modules()
    for expected in ("core", "core.spec", "core.trainer", "core.network", "core.data",
                     "core.telemetry", "core.layout"):
        assert expected in modules


def test_importing_all_of_core_loads_no_service_dependency() -> None:
    script = "\n".join([
        "import importlib, json, sys",
        f"for name in {core_modules()!r}:",
        "    importlib.import_module(name)",
        "import core",
        # the lazily imported public names (those that exist yet), and a whole training run
        "[getattr(core, name, None) for name in core.__all__]",
        "spec = core.TrainingSpec.model_validate({'data': {'source': 'synthetic',"
        " 'name': 'moons', 'n_samples': 40}, 'training': {'max_steps': 2}})",
        "core.Trainer(spec).run(core.MemorySink())",
        f"forbidden = {sorted(FORBIDDEN)!r}",
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in forbidden)))",
    ])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == []


def imported_top_level_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import, at any nesting level, including
    ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if (name in {"import_module", "__import__"} and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def test_imported_top_level_names_helper() -> None:
    tree = ast.parse("import a.b\nfrom c import d\nfrom . import e\n"
                     "def f():\n    import g\n    importlib.import_module('h.i')\n")
    assert [name for _, name in imported_top_level_names(tree)] == ["a", "c", "g", "h"]


def test_no_core_source_file_imports_a_service_dependency() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert files
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, name in imported_top_level_names(tree):
            if name in FORBIDDEN:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert offenders == []
