"""A linearizability checker for read/write(/cas) registers.

The Wing & Gong search with the memoisation of Lowe (as in porcupine and
Knossos' ``linear`` checker): walk the history's call/return events in real
time order, try to linearize each pending call at the current point, and
backtrack when a return is reached whose call was not linearized yet. A cache
of (set of linearized ops, register state) prunes states already explored.

How outcomes enter the model:

- an ``ok`` op has a real window ``[invoke, complete]``;
- a write (or cas) whose outcome is unknown may take effect at any time
  after its invocation, or never: its window never closes. It is kept only
  when some read returned its value (unique values make that exact); one that
  nobody observed can always be linearized last, which changes nothing, so it
  is dropped, which keeps the search small;
- a failed op, and a read without an answer, constrain nothing and are left out.

Histories are checked per key (registers are independent, so a history is
linearizable iff each key's sub-history is: the locality of linearizability),
with a bound on search steps; a key that exceeds it is reported as
``inconclusive``, never as an anomaly.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

READ, WRITE, CAS = "read", "write", "cas"


@dataclass(frozen=True)
class RegOp:
    """One register operation. ``complete`` is ``math.inf`` when the outcome is unknown.

    ``value``: the value written (write), returned (read), or for cas the pair
    ``(expected, new)``; a cas that completed carries ``ok`` = whether it swapped.
    """

    id: int
    kind: str
    value: Any
    invoke: float
    complete: float
    ok: bool = True


@dataclass
class KeyResult:
    key: str
    linearizable: bool | None  # None = inconclusive (step bound reached)
    ops: int
    steps: int
    #: On failure: the ops of the longest linearizable prefix found, and the op
    #: whose return could not be reached (the likely culprit), for the report.
    stuck_at: RegOp | None = None
    prefix: list[int] = field(default_factory=list)


def step(state: Any, op: RegOp) -> tuple[bool, Any]:
    """The register model: ``(legal, new state)``."""
    if op.kind == WRITE:
        return True, op.value
    if op.kind == READ:
        return state == op.value, state
    if op.kind == CAS:
        expected, new = op.value
        if op.complete == math.inf:  # unknown: it swapped iff the state matched
            return (True, new) if state == expected else (True, state)
        if op.ok:
            return (state == expected), new
        return (state != expected), state
    raise ValueError(f"unknown register op {op.kind!r}")


class _Entry:
    __slots__ = ("op", "is_call", "time", "match", "prev", "next")

    def __init__(self, op: RegOp | None, is_call: bool, time: float) -> None:
        self.op = op
        self.is_call = is_call
        self.time = time
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _build(ops: list[RegOp]) -> _Entry:
    events: list[tuple[float, int, int, _Entry]] = []
    for op in ops:
        call = _Entry(op, True, op.invoke)
        ret = _Entry(op, False, op.complete)
        call.match = ret
        # At equal times a call sorts before a return: the two ops then
        # overlap, which can only allow more orders, never flag a correct one.
        events.append((op.invoke, 0, op.id, call))
        events.append((op.complete, 1, op.id, ret))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    head = _Entry(None, False, -math.inf)
    prev = head
    for *_, e in events:
        prev.next = e
        e.prev = prev
        prev = e
    return head


def _lift(call: _Entry) -> None:
    for e in (call, call.match):
        assert e is not None and e.prev is not None
        e.prev.next = e.next
        if e.next is not None:
            e.next.prev = e.prev


def _unlift(call: _Entry) -> None:
    for e in (call.match, call):
        assert e is not None and e.prev is not None
        e.prev.next = e
        if e.next is not None:
            e.next.prev = e


def prune(ops: Iterable[RegOp]) -> list[RegOp]:
    """Drop unknown-outcome writes whose value no read returned (see module doc)."""
    ops = list(ops)
    read_values = {_hashable(o.value) for o in ops if o.kind == READ}
    return [o for o in ops
            if not (o.kind == WRITE and o.complete == math.inf and _hashable(o.value) not in read_values)]


def _hashable(v: Any) -> Hashable:
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)


def check_key(key: str, ops: Iterable[RegOp], initial: Any = None, max_steps: int = 2_000_000) -> KeyResult:
    """Is this one register's history linearizable?"""
    ops = prune(ops)
    # Ids are renumbered 0..n-1 so the linearized set is a compact bitmask.
    index = {o.id: i for i, o in enumerate(ops)}
    local = [RegOp(index[o.id], o.kind, o.value, o.invoke, o.complete, o.ok) for o in ops]
    head = _build(local)
    cache: set[tuple[int, Hashable]] = set()
    stack: list[tuple[_Entry, Any]] = []
    state = initial
    linearized = 0
    steps = 0
    best: list[int] = []
    stuck: RegOp | None = None
    entry = head.next
    while head.next is not None:
        steps += 1
        if steps > max_steps:
            return KeyResult(key, None, len(ops), steps)
        assert entry is not None
        if entry.is_call:
            assert entry.op is not None
            legal, new_state = step(state, entry.op)
            if legal:
                bits = linearized | (1 << entry.op.id)
                memo = (bits, _hashable(new_state))
                if memo not in cache:
                    cache.add(memo)
                    stack.append((entry, state))
                    state = new_state
                    linearized = bits
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if len(stack) >= len(best):
                best = [e.op.id for e, _ in stack if e.op is not None]
                stuck = entry.op
            if not stack:
                return KeyResult(key, False, len(ops), steps, _original(stuck, ops), _originals(best, ops))
            top, state = stack.pop()
            assert top.op is not None
            linearized &= ~(1 << top.op.id)
            _unlift(top)
            entry = top.next
    return KeyResult(key, True, len(ops), steps)


def _original(op: RegOp | None, ops: list[RegOp]) -> RegOp | None:
    return None if op is None else ops[op.id]


def _originals(ids: list[int], ops: list[RegOp]) -> list[int]:
    return [ops[i].id for i in ids]


def check(histories: dict[str, list[RegOp]], initial: Any = None, max_steps: int = 2_000_000) -> list[KeyResult]:
    """Every key of ``histories`` (key -> ops), independently."""
    return [check_key(k, ops, initial, max_steps) for k, ops in sorted(histories.items())]
