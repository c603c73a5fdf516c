"""The shape of the house (ARCHITECTURE "The house"): imports point down the
layers, no module imports another that imports it back, and project imports
sit at the top of a module, where a reader sees what it depends on."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "tasks": "hanzo_tasks",
    "cluster": "hanzo_tasks.cluster",
    "migration": "hanzo_tasks.migration",
    "replication": "hanzo_tasks.replication",
    "shard": "hanzo_tasks.shard",
    "routing": "hanzo_tasks.routing",
    "protocol": "hanzo_tasks.protocol",
}
# What each layer may import of ours (besides itself).
ALLOWED = {
    "hanzo_tasks": {"protocol"},
    "cluster": {"migration", "replication", "shard", "routing", "protocol"},
    "migration": {"replication", "shard", "routing", "protocol"},
    "replication": {"shard", "routing", "protocol"},
    "shard": {"protocol"},
    "routing": set(),
    "protocol": set(),
}
# The client's deliberate lazy doors into the server: importing hanzo_tasks loads
# no server code; embed() and the test harness load it when they are used.
LAZY_SERVER_IMPORTS = {"tasks/embed.py", "tasks/testing.py"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, name in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([name, *parts])] = path
    return out


MODULES = _modules()


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ALLOWED:
        return parts[1]
    return "hanzo_tasks"


def _type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, *, top_level_only: bool) -> list[tuple[int, str, bool]]:
    """(line, imported module, inside a function) of every project import."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.startswith("hanzo_tasks"):
                        found.append((child.lineno, a.name, in_function))
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and (child.module or "").startswith("hanzo_tasks"):
                for a in child.names:
                    sub = f"{child.module}.{a.name}"
                    found.append((child.lineno, sub if sub in MODULES else child.module, in_function))
            if not (top_level_only and inner):
                visit(child, inner)

    visit(tree, False)
    return found


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for module, path in MODULES.items():
        layer = _layer(module)
        rel = str(path.relative_to(ROOT))
        for line, target, in_function in _imports(path, top_level_only=False):
            other = _layer(target)
            if other == layer or other in ALLOWED[layer]:
                continue
            if rel in LAZY_SERVER_IMPORTS and in_function:
                continue
            wrong.append(f"{rel}:{line} imports {target}")
    assert not wrong, wrong


def test_project_imports_sit_at_the_top_of_a_module() -> None:
    inside = []
    for path in MODULES.values():
        rel = str(path.relative_to(ROOT))
        if rel in LAZY_SERVER_IMPORTS:
            continue
        inside += [f"{rel}:{line} {target}" for line, target, fn in _imports(path, top_level_only=False) if fn]
    assert not inside, inside


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        deps = set()
        for _line, target, _fn in _imports(path, top_level_only=True):
            # A package's face re-exports its modules; a module importing its own
            # package's face is not a cycle of concepts.
            if target in MODULES and not module.startswith(target + "."):
                deps.add(target)
        graph[module] = deps - {module}
    # Tarjan's strongly connected components.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    assert not cycles, cycles
