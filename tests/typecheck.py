"""Type-check the product with mypy (``make typecheck``).

mypy finds modules by walking folders on disk. The product's folders install as
``hanzo_tasks`` and its subpackages through setuptools ``package-dir`` (pyproject),
so the checkout has no ``hanzo_tasks/`` folder, and mypy does not follow the
editable install's import hook. This script builds a throwaway tree of symlinks,
``.typecheck/hanzo_tasks/…``, that mirrors the ``package-dir`` mapping, runs mypy
on it (``mypy_path = ".typecheck"`` in pyproject's ``[tool.mypy]``) and rewrites the
paths in mypy's report back to the repository's own folders, so ``shard/machine.py:12``
is what you read and click.

Usage: ``python tools/typecheck.py [mypy arguments]``; without arguments mypy checks
the ``packages`` listed in ``[tool.mypy]``. Standard library only, apart from mypy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".typecheck"


def package_dirs() -> dict[str, str]:
    """The import name -> folder mapping of pyproject's ``[tool.setuptools.package-dir]``."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping: dict[str, str] = pyproject["tool"]["setuptools"]["package-dir"]
    return mapping


def _link(link: Path, target: Path) -> None:
    link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=target.is_dir())


def build_tree(mapping: dict[str, str]) -> dict[str, str]:
    """Lay out ``.typecheck/`` as the installed namespace would look; return the
    prefix rewrites (tree path -> repository folder) for mypy's report.

    A package whose folder holds no mapped subpackage is one directory symlink; a
    package that has mapped subpackages (``hanzo_tasks`` itself) becomes a real
    directory with a symlink per entry of its folder, beside its subpackages' links.
    """
    for name in mapping:
        if "" in name.split("."):
            raise SystemExit(f"odd package name in package-dir: {name!r}")
    for child in TREE.iterdir() if TREE.exists() else []:
        if child.name != "mypy-cache":
            if child.is_symlink() or child.is_file():
                child.unlink()
            else:
                shutil.rmtree(child)
    TREE.mkdir(exist_ok=True)
    rewrites: dict[str, str] = {}
    for name in sorted(mapping, key=lambda n: n.count(".")):
        folder = ROOT / mapping[name]
        place = TREE.joinpath(*name.split("."))
        has_children = any(other.startswith(name + ".") for other in mapping)
        if not place.parent.is_dir() or place.parent.is_symlink():
            raise SystemExit(f"{name}: its parent package is not a mapped folder")
        if has_children:
            place.mkdir()
            for entry in folder.iterdir():
                if entry.name != "__pycache__":
                    _link(place / entry.name, entry)
        else:
            _link(place, folder)
        rewrites[f"{place.relative_to(TREE.parent)}/"] = f"{mapping[name]}/"
    return rewrites


def main(argv: list[str]) -> int:
    rewrites = build_tree(package_dirs())
    # Longest prefix first, so hanzo_tasks/shard/ is not read as hanzo_tasks/ + shard/.
    ordered = sorted(rewrites.items(), key=lambda item: -len(item[0]))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout.splitlines():
        for prefix, folder in ordered:
            if line.startswith(prefix):
                line = folder + line[len(prefix) :]
                break
        print(line)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
