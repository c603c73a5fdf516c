"""The shape of ``shard``: its modules import each other at the top, in one
direction (no cycle, so no import is hidden inside a function), and of the
project only ``protocol``."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

SHARD = Path(__file__).resolve().parents[2] / "shard"
OURS = "hanzo_tasks"


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(SHARD.glob("*.py"))}


def _shard_imports(tree: ast.Module) -> set[str]:
    """Sibling modules a module imports (``from hanzo_tasks.shard import x`` or ``.x``)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[:2] == [OURS, "shard"]:
                found |= {a.name for a in node.names} if len(parts) == 2 else {parts[2]}
    return found


def test_no_import_inside_a_function() -> None:
    offenders = []
    for name, tree in _modules().items():
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import | ast.ImportFrom):
                        offenders.append(f"shard/{name}.py:{node.lineno}")
    assert not offenders, offenders


def test_shard_modules_import_each_other_without_a_cycle() -> None:
    modules = _modules()
    graph = {name: _shard_imports(tree) - {name} for name, tree in modules.items()}
    assert all(dep in modules for deps in graph.values() for dep in deps), graph
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()  # raises CycleError naming the cycle
    # The command families sit on the run helpers, never the other way round.
    assert graph["runs"] <= {"ctx", "commands", "keys"}
    assert "machine" not in set().union(*(deps for name, deps in graph.items() if name != "__init__"))


def test_shard_imports_only_protocol_of_the_project() -> None:
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(OURS + "."):
                sub = node.module.split(".")[1]
                if sub not in ("shard", "protocol"):
                    offenders.append(f"shard/{name}.py:{node.lineno} {node.module}")
    assert not offenders, offenders
