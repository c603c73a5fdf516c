"""Every module we ship compiles and imports on this Python without a deprecation of ours."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.quick import OUR_DEPRECATIONS_ARE_ERRORS, our_packages

pytestmark = pytest.mark.filterwarnings(OUR_DEPRECATIONS_ARE_ERRORS)

# Runs in a fresh interpreter: this process has imported much of the product already, and a
# module's import-time warnings are raised only the first time it is imported. Each source
# file is also compiled from its text, because a cached .pyc would hide compile-time warnings
# (an invalid escape sequence is a DeprecationWarning on 3.11, a SyntaxWarning from 3.12).
_IMPORT_ALL = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys, warnings
    from pathlib import Path

    warnings.filterwarnings("error", category=DeprecationWarning, module="hanzo_tasks")
    packages = json.loads(sys.argv[1])
    modules = []
    for name in packages:
        package = importlib.import_module(name)
        modules.append(name)
        for info in pkgutil.iter_modules(package.__path__, name + "."):
            if not info.ispkg and not info.name.endswith(".__main__"):
                importlib.import_module(info.name)
                modules.append(info.name)
        for path in sorted(Path(package.__file__).parent.glob("*.py")):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                compile(path.read_text(encoding="utf-8"), str(path), "exec")
    print(json.dumps(modules))
    """
)


def test_import_hanzo_tasks_is_light() -> None:
    """``import hanzo_tasks`` loads no server module (ARCHITECTURE), on every Python."""
    code = "import json, sys, hanzo_tasks; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    assert "hanzo_tasks.client" in loaded
    assert not [m for m in loaded if m.startswith(("hanzo_tasks.cluster", "hanzo_tasks.shard"))]


def test_every_module_imports_and_compiles_without_our_deprecations() -> None:
    packages = our_packages()
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, json.dumps(packages)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    modules = json.loads(out.stdout)
    assert set(packages) <= set(modules)
    assert len(modules) > 3 * len(packages)  # the modules themselves, not only the packages
