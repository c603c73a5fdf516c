"""The apply context shared by every group of state-machine operations.

``Ctx`` is one command being applied: a write-through cache over the nested
LMDB transaction, the stamped ``now``, ids derived from the proposer's
randomness, and the events for listeners. ``Reject`` rolls a command back with
a result. Nothing here reads a clock or draws randomness.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgpack
from hanzo_tasks.protocol.timefmt import format_time_seconds
from hanzo_tasks.shard import commands as C
from hanzo_tasks.shard.keys import ShardKeys
from hanzo_tasks.shard.txn import Txn

Result = dict[str, Any]
#: A command handler: applies ``ctx.cmd`` through ``ctx``, or raises ``Reject``.
Handler = Callable[["Ctx"], Result]

OPEN = ("RUNNING", "CANCELING")


def pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def format_seconds(ms: int) -> str:
    """RFC 3339 UTC, whole seconds: the nominal-time part of fired workflow ids."""
    return format_time_seconds(ms)


class Reject(Exception):
    """Raised inside a handler to roll its command back with a result."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.result = C.err(code, message, details)


class Ctx:
    """One command being applied: a write-through cache over a nested txn.

    Handlers read and write records through the cache, so two parts of one
    command (say, a schedule fire that terminates a run whose close updates
    the same schedule) always see one copy of each record.
    """

    def __init__(self, txn: Txn, cmd: dict[str, Any], index: int, sub: int = 0) -> None:
        self.txn = txn
        self.cmd = cmd
        self.index = index
        self.sub = sub  # the command's place in a ``sys.batch`` entry (0: alone)
        self.now: int = cmd["now"]
        self.org: str = cmd["org"]
        self.ns: str = cmd["ns"]
        self.k = ShardKeys(self.org, self.ns)
        self._cache: dict[bytes, Any] = {}
        self._dirty: set[bytes] = set()
        self._ids = 0
        self.events: list[dict[str, Any]] = []  # notifications for listeners

    # ---- records ---------------------------------------------------------

    def get(self, key: bytes) -> Any:
        if key in self._cache:
            return self._cache[key]
        raw = self.txn.get(key)
        val = unpack(raw) if raw is not None else None
        self._cache[key] = val
        return val

    def put(self, key: bytes, val: Any) -> None:
        self._cache[key] = val
        self._dirty.add(key)

    def delete(self, key: bytes) -> None:
        self._cache[key] = None
        self._dirty.add(key)

    def put_raw(self, key: bytes, val: bytes) -> None:
        self.txn.put(key, val)

    def exists(self, key: bytes) -> bool:
        if key in self._cache:
            return self._cache[key] is not None
        return self.txn.get(key) is not None

    def flush(self) -> None:
        for key in sorted(self._dirty):
            val = self._cache[key]
            if val is None:
                self.txn.delete(key)
            else:
                self.txn.put(key, pack(val))
        self._dirty.clear()

    # ---- ids ---------------------------------------------------------------

    def new_run_id(self) -> str:
        """A run id derived from the proposer's randomness: same on every replica."""
        self._ids += 1
        origin = self.cmd.get("rnd") or (self.index if not self.sub else f"{self.index}.{self.sub}")
        seed = f"{origin}:{self._ids}"
        return hashlib.sha256(seed.encode()).hexdigest()[:32]

    def notify(self, kind: str, **fields: Any) -> None:
        """Record an event for listeners (timers, SSE); not part of the state."""
        self.events.append({"kind": kind, "org": self.org, "namespace": self.ns, **fields})


def require_namespace(ctx: Ctx, *, for_write: bool) -> dict[str, Any]:
    rec: dict[str, Any] | None = ctx.get(ctx.k.namespace())
    if rec is None:
        raise Reject("not_found", f"namespace {ctx.ns} not found")
    if for_write and rec["state"] == "DELETED":
        raise Reject("failed_precondition", "namespace deleted")
    return rec


def failure_record(f: Any) -> dict[str, Any]:
    """A worker's failure map (ZAP snake_case) as the stored Failure record."""
    f = f if isinstance(f, dict) else {"message": str(f)}
    out: dict[str, Any] = {"message": str(f.get("message") or ""), "type": str(f.get("type") or ""),
                           "nonRetryable": bool(f.get("non_retryable", f.get("nonRetryable", False)))}
    if f.get("details") is not None:
        out["details"] = f["details"]
    trace = f.get("stack_trace", f.get("stackTrace"))
    if trace:
        out["stackTrace"] = str(trace)
    return out
