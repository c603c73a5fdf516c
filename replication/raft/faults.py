"""Named fault points: deterministic fault injection for tests and chaos runs.

Product code asks ``fault("name")`` at a named step and, when it answers True,
fails right there the way the real fault would. Faults are armed by the
environment variable ``HANZO_TASKS_FAULTS``, read once (at the first check): a
comma-separated list of

- ``name``: the point fires every time it is checked;
- ``name@PATH``: it fires once the file ``PATH`` exists, so a test arms a
  running process at the moment it chooses (after the node is ready).

Unset (production), ``fault`` is one lookup in an empty dict.

The points (keep this list in sync with the code):

- ``raft.thread``: the Raft thread raises at the top of its loop and dies
  (``RaftReplicator._run``); the watchdog must stop the node.
- ``journal.flush``: a journal flush fails with ENOSPC, as on a full disk
  (``DurableJournal._flush_log``); the journal becomes failed.
"""

from __future__ import annotations

import os

ENV = "HANZO_TASKS_FAULTS"

_armed: dict[str, str | None] | None = None


class InjectedFault(Exception):
    """Raised at a fault point that stands for no particular OS error."""


def _load() -> dict[str, str | None]:
    armed: dict[str, str | None] = {}
    for part in os.environ.get(ENV, "").split(","):
        name, _, path = part.strip().partition("@")
        if name:
            armed[name] = path or None
    return armed


def fault(name: str) -> bool:
    """Whether the fault point ``name`` fires now."""
    global _armed
    if _armed is None:
        _armed = _load()
    if name not in _armed:
        return False
    path = _armed[name]
    return path is None or os.path.exists(path)
