"""The quick suite: what every supported Python must run (issue 21).

``make test`` runs these with the rest of the suite on its own interpreter, and
then alone on every other supported interpreter it finds (``tests/pythons.sh``),
each in its own venv. They are few and real: the import of every module, an
embedded node running a worker's workflow and activity, and a three-node
``tasksd`` cluster surviving the loss of a partition leader. A DeprecationWarning
raised by our own code fails them, so a Python that deprecates something we use
tells us before it removes it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

# A ``filterwarnings`` mark takes the module as a regular expression matched at the start of
# the module name, so this covers ``hanzo_tasks`` and all its subpackages (pytest's ``-W``
# option would escape it and match ``hanzo_tasks`` alone).
OUR_DEPRECATIONS_ARE_ERRORS = "error::DeprecationWarning:hanzo_tasks"

# How Python prints a warning (warnings.formatwarning): "path:line: Category: message".
_PRINTED_WARNING = re.compile(r"^(?P<path>\S+\.py):\d+: (?:Pending)?DeprecationWarning: .*$", re.M)


def our_packages() -> list[str]:
    """Every package we ship, as pyproject lists them (tests/test_packaging.py checks the list)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages: list[str] = pyproject["tool"]["setuptools"]["packages"]
    return packages


def deprecations_from_our_code(output: str, our_dirs: list[Path]) -> list[str]:
    """The printed Deprecation warnings in ``output`` that point into one of ``our_dirs``."""
    found = []
    for m in _PRINTED_WARNING.finditer(output):
        path = Path(m.group("path")).resolve()
        if any(path.is_relative_to(d) for d in our_dirs):
            found.append(m.group(0))
    return found
