"""Blocks the obvious sources of non-determinism while workflow code runs.

Why a profile hook and not patched modules: ``sys.setprofile`` is per thread,
so only the thread that runs a workflow step is watched (the worker's own
threads and loops keep their clocks), and it sees the function actually
called, however the workflow module imported it (``from time import time``
included). It is installed for the length of a step and the previous hook is
put back after it.

What is blocked: the wall and monotonic clocks and ``time.sleep``,
``datetime.now``/``utcnow``/``today``, the ``random`` module's shared
generator, ``os.urandom`` (and so ``uuid.uuid4``, ``secrets``), ``uuid.uuid1``,
and opening sockets. Workflow code uses ``workflow.now()``, ``workflow.random()``,
``workflow.uuid4()`` and ``workflow.sleep()`` instead, which replay identically.
Logging is allowed (it reads the clock for its records; the replay-safe
``workflow.logger`` is silent during replay anyway).
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
import random
import socket
import sys
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import Any

from hanzo_tasks.workflow.errors import WorkflowSandboxError

__all__ = ["Sandbox"]

_HINTS = {
    "clock": "use workflow.now() (the workflow task's time from history)",
    "sleep": "use `await workflow.sleep(timedelta(...))`, a durable timer",
    "random": "use workflow.random() or workflow.uuid4(), seeded from the run",
    "io": "do I/O in an activity (workflow.execute_activity)",
}

_C_FUNCTIONS: dict[Any, tuple[str, str]] = {
    time.time: ("time.time()", "clock"),
    time.time_ns: ("time.time_ns()", "clock"),
    time.monotonic: ("time.monotonic()", "clock"),
    time.monotonic_ns: ("time.monotonic_ns()", "clock"),
    time.perf_counter: ("time.perf_counter()", "clock"),
    time.sleep: ("time.sleep()", "sleep"),
    os.urandom: ("os.urandom() (uuid.uuid4, secrets)", "random"),
}
_PY_CODES: dict[Any, tuple[str, str]] = {
    uuid.uuid1.__code__: ("uuid.uuid1()", "random"),
    uuid.uuid4.__code__: ("uuid.uuid4()", "random"),
    socket.socket.__init__.__code__: ("opening a socket", "io"),
    socket.create_connection.__code__: ("socket.create_connection()", "io"),
}
_DATE_NOW = {"now", "utcnow", "today"}
_ALLOWED_FILES = {logging.__file__}
_STDLIB = os.path.dirname(os.__file__) + os.sep
_SHARED_RANDOM = random._inst  # type: ignore[attr-defined]  # the module-level functions' generator


def _in_stdlib(filename: str) -> bool:
    return filename.startswith(_STDLIB) and "site-packages" not in filename


def _forbidden_c(fn: Any) -> tuple[str, str] | None:
    try:
        hit = _C_FUNCTIONS.get(fn)
    except TypeError:  # an unhashable callable
        return None
    if hit is not None:
        return hit
    owner = getattr(fn, "__self__", None)
    if owner is None:
        return None
    if owner is _SHARED_RANDOM:
        return (f"random.{getattr(fn, '__name__', '?')}()", "random")
    name = getattr(fn, "__name__", "")
    if name in _DATE_NOW and isinstance(owner, type) and issubclass(owner, datetime.date):
        return (f"{owner.__name__}.{name}()", "clock")
    return None


def _gc_callback_codes() -> set[Any]:
    codes = set()
    for cb in gc.callbacks:
        fn = getattr(cb, "__func__", cb)
        code = getattr(fn, "__code__", None)
        if code is not None:
            codes.add(code)
    return codes


def _in_gc_callback(frame: FrameType | None, depth: int = 32) -> bool:
    """Whether ``frame`` runs inside a ``gc.callbacks`` function (a test tool's or a
    profiler's GC timer calls the clock from whatever thread collects)."""
    if not gc.callbacks:
        return False
    codes = _gc_callback_codes()
    while frame is not None and depth > 0:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
        depth -= 1
    return False


class Sandbox:
    """Installs the guard on this thread for one step: ``with Sandbox(on_violation):``.

    ``on_violation`` is told of each violation (the executor fails the
    workflow task with it even if the workflow code catches the error).
    """

    def __init__(self, on_violation: Callable[[WorkflowSandboxError], None]) -> None:
        self._on_violation = on_violation
        self._previous: Any = None
        self._hook = self._guard  # one bound method, so that `is` finds it again

    def _guard(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call":
            hit = _forbidden_c(arg)
            caller: FrameType | None = frame
        elif event == "call":
            hit = _PY_CODES.get(frame.f_code)
            caller = frame.f_back
        else:
            return
        if hit is None:
            return
        if caller is not None and caller.f_code.co_filename in _ALLOWED_FILES:
            return
        if _in_gc_callback(caller):
            return  # the collector ran a callback while the step ran: not the workflow's code
        what, kind = hit
        where = ""
        user = caller
        while user is not None and _in_stdlib(user.f_code.co_filename):
            user = user.f_back  # random.randint -> getrandbits: name the user's line
        if user is not None:
            where = f" (at {user.f_code.co_filename}:{user.f_lineno})"
        err = WorkflowSandboxError(
            f"{what} is not allowed in workflow code{where}: its result differs between "
            f"the first run and a replay; {_HINTS[kind]}"
        )
        self._on_violation(err)
        raise err

    def arm(self) -> None:
        """(Re)install the guard; a guard that raised was uninstalled by Python."""
        if sys.getprofile() is not self._hook:
            sys.setprofile(self._hook)

    def __enter__(self) -> Sandbox:
        self._previous = sys.getprofile()
        sys.setprofile(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(self._previous)
        self._previous = None
