"""``routing`` is a leaf: every layer may import it, so it may import nothing
from the project (ARCHITECTURE "The house")."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from hanzo_tasks import routing

ROUTING_DIR = Path(routing.__file__).parent


def test_routing_imports_only_stdlib_and_itself() -> None:
    files = sorted(ROUTING_DIR.glob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import"
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                ours = name == "hanzo_tasks.routing" or name.startswith("hanzo_tasks.routing.")
                assert ours or top in sys.stdlib_module_names, (path.name, name)


def test_public_names_are_exported() -> None:
    for name in routing.__all__:
        assert hasattr(routing, name), name
