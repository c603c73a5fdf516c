"""The mypy set-up of ``make typecheck`` (tests/typecheck.py, pyproject ``[tool.mypy]``)."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool_mypy() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]


def test_strict_override_spells_out_every_flag_of_mypy_strict() -> None:
    """``strict = true`` is global-only in mypy, so the strict packages' override
    lists the flags one by one; a mypy release that adds a flag to ``--strict``
    must not silently leave them less strict."""
    main = pytest.importorskip("mypy.main")
    options = pytest.importorskip("mypy.options")
    _, plain = main.process_options(["--config-file", "", "-c", "pass"])
    _, strict = main.process_options(["--config-file", "", "--strict", "-c", "pass"])
    wanted = {
        name: getattr(strict, name)
        for name in options.PER_MODULE_OPTIONS
        if getattr(strict, name) != getattr(plain, name)
    }
    assert wanted, "mypy --strict changed no per-module option: the probe is broken"
    override = next(o for o in _tool_mypy()["overrides"] if "hanzo_tasks.shard.*" in o["module"])
    given = {name: value for name, value in override.items() if name != "module"}
    assert given == wanted
    # The global halves of --strict.
    assert _tool_mypy()["warn_unused_configs"] and _tool_mypy()["warn_redundant_casts"]


def test_typecheck_tree_mirrors_package_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("typecheck", ROOT / "tests" / "typecheck.py")
    assert spec is not None and spec.loader is not None
    typecheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(typecheck)
    monkeypatch.setattr(typecheck, "TREE", tmp_path / ".typecheck")
    mapping = typecheck.package_dirs()
    rewrites = typecheck.build_tree(mapping)
    for name, folder in mapping.items():
        place = tmp_path / ".typecheck" / Path(*name.split("."))
        assert (place / "__init__.py").resolve() == (ROOT / folder / "__init__.py").resolve()
    assert (tmp_path / ".typecheck/hanzo_tasks/shard/machine.py").resolve() == ROOT / "shard/machine.py"
    # mypy's paths under the tree read back as the repository's folders.
    assert rewrites[".typecheck/hanzo_tasks/shard/"] == "shard/"
    assert rewrites[".typecheck/hanzo_tasks/"] == "tasks/"
    assert sorted(rewrites.values()) == sorted(f"{folder}/" for folder in mapping.values())
