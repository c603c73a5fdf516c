"""Named fault points: a crash or an error at one exact step, for tests and chaos.

Raft's hard bugs live in windows a few instructions wide (an image renamed
into place, the log prefix not yet dropped). A test that waits for a timer to
land there is luck, not proof; a fault point makes the window a fact. Points
are armed by the environment variable ``HANZO_TASKS_FAULTS``, read once: a
comma-separated list of ``name[:action][@PATH]``.

- ``name``: armed always; ``name@PATH``: armed once the file ``PATH`` exists,
  so a test arms a running process at the moment it chooses.
- Where the code calls ``hit(name)``, the action happens there: ``kill``
  (the default: SIGKILL, no cleanup, like a power cut for everything already
  written), ``raise`` (:class:`InjectedFault`), ``sleep=SECONDS`` (a stall).
- Where the code calls ``fault(name)``, it asks whether the point is armed and
  fails the way the real fault would (ENOSPC for a journal flush, say).

Unset (production), each check is one lookup in an empty dict.

The points (keep this list in sync with the code):

- ``snapshot.write`` (hit): the background image writer, before it copies LMDB;
- ``snapshot.after_replace`` (hit): a new image is in place, the log prefix not yet dropped;
- ``install.before_load`` (hit): a received image is complete on disk, not yet loaded;
- ``raft.thread`` (fault): the Raft thread raises at the top of its loop and dies
  (``RaftReplicator._run``); the watchdog must stop the node;
- ``journal.flush`` (fault): a journal flush fails with ENOSPC, as on a full disk
  (``DurableJournal._flush_log``); the journal becomes failed.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "HANZO_TASKS_FAULTS"


class InjectedFault(RuntimeError):
    """Raised at a fault point that stands for no particular OS error."""


FaultInjected = InjectedFault  # the name the snapshot tests use


def _parse(spec: str) -> dict[str, tuple[str, str | None]]:
    out: dict[str, tuple[str, str | None]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        item, _, path = item.partition("@")
        name, _, action = item.partition(":")
        out[name] = (action or "kill", path or None)
    return out


_armed: dict[str, tuple[str, str | None]] | None = None


def configure(spec: str) -> None:
    """Replace the armed fault points (in-process tests)."""
    global _armed
    _armed = _parse(spec)


def _action(name: str) -> str | None:
    global _armed
    if _armed is None:
        _armed = _parse(os.environ.get(ENV, ""))
    entry = _armed.get(name)
    if entry is None:
        return None
    action, path = entry
    if path is not None and not os.path.exists(path):
        return None
    return action


def fault(name: str) -> bool:
    """Whether the fault point ``name`` is armed now (the caller fails as the real fault would)."""
    return _action(name) is not None


def hit(name: str) -> None:
    """Act out the fault armed at ``name``, if any."""
    action = _action(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # the signal is delivered before this returns
    elif action == "raise":
        raise InjectedFault(f"fault point {name}")
    elif action.startswith("sleep="):
        time.sleep(float(action.split("=", 1)[1]))
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} for {name}")
