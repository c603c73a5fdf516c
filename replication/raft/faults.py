"""Named fault points: a crash or an error at one exact step, for tests and chaos.

Raft's hard bugs live in windows a few instructions wide (an image renamed
into place, the log prefix not yet dropped). A test that waits for a timer to
land there is luck, not proof; a fault point makes the window a fact:
``HANZO_TASKS_FAULTS=snapshot.after_replace`` kills the process (SIGKILL, no
cleanup, exactly like a power cut for everything already written) the moment
it reaches that step. ``name:raise`` raises :class:`FaultInjected` there
instead, ``name:sleep=0.5`` stalls there. The variable is read once, at
import; with it unset every point costs one set lookup.

Points (grep ``faults.hit`` for the full list):

- ``snapshot.after_replace``: a new image is in place, the log prefix not yet dropped;
- ``snapshot.write``: the background image writer, before it copies LMDB;
- ``install.before_load``: a received image is complete on disk, not yet loaded.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "HANZO_TASKS_FAULTS"


class FaultInjected(RuntimeError):
    """Raised at a fault point configured as ``name:raise``."""


def _parse(spec: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition(":")
        out[name] = action or "kill"
    return out


_ACTIVE: dict[str, str] = _parse(os.environ.get(ENV, ""))


def configure(spec: str) -> None:
    """Replace the active fault points (in-process tests)."""
    global _ACTIVE
    _ACTIVE = _parse(spec)


def hit(name: str) -> None:
    """Act out the fault configured for ``name``, if any."""
    action = _ACTIVE.get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # the signal is delivered before this returns
    elif action == "raise":
        raise FaultInjected(f"fault point {name}")
    elif action.startswith("sleep="):
        time.sleep(float(action.split("=", 1)[1]))
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} for {name}")
