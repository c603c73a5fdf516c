"""The operation history of a run: one JSON line per completed operation.

Every operation carries the harness's monotonic clock at invocation and at
completion (seconds since the run began), so real-time order between
operations is known exactly; the checkers need nothing else. An operation
whose outcome is unknown keeps the time the client gave up as ``complete``,
but checkers treat it as possibly taking effect at any time after ``invoke``.

The file is written as operations complete (and flushed), so a run that
crashes still leaves the history it made so far.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Op:
    """One client operation.

    ``kind``: ``start`` (workflow start), ``signal``, ``write`` / ``read``
    (register), or ``setup`` operations that the checks also use.
    ``key`` is the register key (``ns/workflowId``) for register operations.
    """

    id: int
    client: int
    kind: str
    invoke: float
    complete: float = 0.0
    outcome: str = ""
    ns: str = ""
    wid: str = ""
    key: str = ""
    value: Any = None
    request_id: str = ""
    run_id: str = ""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


class History:
    """Thread-safe recorder: ``begin`` an op, fill it in, ``end`` it."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._next = 0
        self.ops: list[Op] = []
        self._file = open(path, "a", encoding="utf-8") if path is not None else None

    def now(self) -> float:
        """Seconds since the run began, on the monotonic clock."""
        return time.monotonic() - self.t0

    def begin(self, client: int, kind: str, **fields: Any) -> Op:
        with self._lock:
            op_id = self._next
            self._next += 1
        return Op(id=op_id, client=client, kind=kind, invoke=self.now(), **fields)

    def end(self, op: Op, outcome: str) -> Op:
        op.complete = self.now()
        op.outcome = outcome
        with self._lock:
            self.ops.append(op)
            if self._file is not None:
                self._file.write(json.dumps(asdict(op), separators=(",", ":"), default=str) + "\n")
                self._file.flush()
        return op

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def load(path: Path) -> list[Op]:
    """Read a history file back (the checkers' input when re-checking a run)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(Op(**json.loads(line)))
    return out
