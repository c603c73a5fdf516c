"""Last-resort cleanup: no process this harness started may outlive it.

Nodes and the worker process run in their own sessions (so a fault can
signal a node's whole process group and nothing else), which also means they
would survive the harness if it died without running its ``finally`` blocks:
a SIGTERM from a CI timeout, an exception in an unlucky place. Every group
is registered here while it runs; an ``atexit`` hook (and a SIGTERM handler
that turns the signal into a normal exit) SIGKILLs whatever is left.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading

_lock = threading.Lock()
_groups: set[int] = set()
_installed = False


def register(pgid: int) -> None:
    """Track a process group (a child started with ``start_new_session=True``)."""
    _install()
    with _lock:
        _groups.add(pgid)


def forget(pgid: int) -> None:
    with _lock:
        _groups.discard(pgid)


def kill_all() -> None:
    """SIGCONT + SIGKILL every registered group (paused nodes must wake up to die)."""
    with _lock:
        groups = list(_groups)
        _groups.clear()
    for pgid in groups:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Make SIGTERM a normal exit (``finally`` blocks and ``atexit`` run).

    Called by the CLI only: a library must not take over its host's signals.
    """
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)


def _install() -> None:
    global _installed
    if not _installed:
        _installed = True
        atexit.register(kill_all)
