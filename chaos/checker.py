"""The checks: pure functions from (history, observations) to anomalies.

Nothing here does I/O, so every check is unit-tested with handcrafted
histories that must be flagged (``tests/chaos/test_checker.py``). The inputs:

- ``ops``: the client history (``chaos.history.Op``), with outcomes
  ``ok`` / ``failed`` / ``unknown`` (see ``chaos.api``);
- ``runs_by_node``: node -> (namespace, workflowId) -> runIds that node's
  replica holds, read from every node after the heal (with a replication
  factor below the node count, a node is read only for the namespaces it
  holds: ``holders``, namespace -> nodes);
- ``histories``: (namespace, workflowId) -> the history events of its run;
- ``schedules``: what each schedule says about itself and the runs it fired;
- ``digests``: partition -> node -> content hash of the replica (nodes stopped).

What each check proves is in its docstring. An *anomaly* is a correctness
violation; slowness and unavailability are never anomalies (they are numbers
in the report), and a check that could not be completed says so in ``notes``.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from chaos.history import Op
from chaos.linearizability import READ, WRITE, RegOp, check_key

OK, FAILED, UNKNOWN = "ok", "failed", "unknown"
CLOSE_EVENTS = frozenset({
    "WORKFLOW_EXECUTION_COMPLETED", "WORKFLOW_EXECUTION_FAILED", "WORKFLOW_EXECUTION_CANCELED",
    "WORKFLOW_EXECUTION_TERMINATED", "WORKFLOW_EXECUTION_TIMED_OUT", "WORKFLOW_EXECUTION_CONTINUED_AS_NEW",
})
TASK_ENDS = frozenset({"WORKFLOW_TASK_COMPLETED", "WORKFLOW_TASK_FAILED", "WORKFLOW_TASK_TIMED_OUT"})
RunKey = tuple[str, str]  # (namespace, workflowId)


@dataclass
class Anomaly:
    check: str
    kind: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckResult:
    name: str
    checked: int = 0
    anomalies: list[Anomaly] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def flag(self, kind: str, detail: str, **data: Any) -> None:
        self.anomalies.append(Anomaly(self.name, kind, detail, data))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "checked": self.checked, "ok": not self.anomalies,
                "anomalies": [asdict(a) for a in self.anomalies], "notes": self.notes, "stats": self.stats}


# --------------------------------------------------------------------------- starts


def check_acknowledged_starts(ops: Iterable[Op], runs_by_node: dict[str, dict[RunKey, list[str]]],
                              *, prefixes: tuple[str, ...] = ("job-", "reg-", "big-"),
                              holders: dict[str, list[str]] | None = None) -> CheckResult:
    """No acknowledged start lost, no start applied twice, no failed start applied.

    For every start: acknowledged -> every replica holds exactly the run that
    was acknowledged; unknown -> at most one run, the same on every replica;
    failed -> no run anywhere. A run of one of our workflow ids that no start
    asked for is a phantom. Workflow ids are unique per start, so "one run
    per workflowId" is "one run per requestId".

    ``holders`` (namespace -> the nodes holding its partition): the replicas
    of a start are those nodes only; None (or a namespace it does not name):
    every node read.
    """
    res = CheckResult("acknowledged-starts")
    starts = [op for op in ops if op.kind == "start"]
    res.checked = len(starts)
    asked: set[RunKey] = set()
    unread: Counter[str] = Counter()
    if not runs_by_node:
        res.notes.append("no node could be read: nothing checked")
        return res
    for op in starts:
        key = (op.ns, op.wid)
        asked.add(key)
        held = holders.get(op.ns) if holders is not None else None
        seen = {node: runs.get(key, []) for node, runs in runs_by_node.items() if held is None or node in held}
        distinct = {r for rs in seen.values() for r in rs}
        if not seen:
            unread[op.ns] += 1
        for node, rs in seen.items():
            if len(rs) > 1:
                res.flag("applied-twice", f"{op.ns}/{op.wid} has {len(rs)} runs on {node} (one start, requestId "
                         f"{op.request_id})", op=op.id, node=node, runs=rs)
        if op.outcome == OK:
            for node, rs in seen.items():
                if not rs:
                    res.flag("lost", f"acknowledged start {op.ns}/{op.wid} (run {op.run_id}) missing on {node}",
                             op=op.id, node=node, run=op.run_id)
                elif op.run_id and op.run_id not in rs:
                    res.flag("wrong-run", f"{op.ns}/{op.wid} on {node} is run {rs}, acknowledged {op.run_id}",
                             op=op.id, node=node, runs=rs, run=op.run_id)
        elif op.outcome == FAILED:
            if distinct:
                res.flag("failed-applied", f"start {op.ns}/{op.wid} answered as failed "
                         f"({_statuses(op)}) but run {sorted(distinct)} exists", op=op.id, runs=sorted(distinct))
        if len(distinct) > 1:
            res.flag("replicas-disagree", f"{op.ns}/{op.wid}: replicas hold different runs {seen}",
                     op=op.id, runs=seen)
    phantoms: set[RunKey] = set()
    for runs in runs_by_node.values():
        phantoms.update(k for k in runs if k[1].startswith(prefixes) and k not in asked)
    for ns, wid in sorted(phantoms):
        res.flag("phantom", f"{ns}/{wid} exists but no client started it", ns=ns, wid=wid)
    if unread:
        res.notes.append(f"no replica of these namespaces could be read, their starts are unchecked: {dict(unread)}")
    res.stats = dict(Counter(op.outcome for op in starts))
    return res


def _statuses(op: Op) -> str:
    return ",".join(str(a.get("status") or a.get("error")) for a in op.attempts) or "?"


# --------------------------------------------------------------------------- histories


def check_histories(ops: Iterable[Op], histories: dict[RunKey, list[dict[str, Any]]],
                    expected_result: Callable[[RunKey], Any] | None = None) -> CheckResult:
    """Every run's history is well formed, started once, and each task completion applied at most once.

    Per run: event ids are 1..n with no gap or repeat; exactly one
    WORKFLOW_EXECUTION_STARTED, carrying the requestId of the start that
    created it; at most one close event, and nothing after it; per workflow
    task (its WORKFLOW_TASK_SCHEDULED event id) at most one STARTED and at
    most one COMPLETED/FAILED/TIMED_OUT, the end only after the start; and
    a completed run's result is the one its handler computed.
    """
    res = CheckResult("histories")
    request_of = {(op.ns, op.wid): op.request_id for op in ops if op.kind == "start"}
    open_runs = 0
    for key, events in sorted(histories.items()):
        res.checked += 1
        where = f"{key[0]}/{key[1]}"
        ids = [e.get("eventId") for e in events]
        if ids != list(range(1, len(events) + 1)):
            res.flag("event-ids", f"{where}: event ids are not 1..{len(events)}: {_head(ids)}", run=where)
        types = [e.get("eventType") for e in events]
        starts = [e for e in events if e.get("eventType") == "WORKFLOW_EXECUTION_STARTED"]
        if len(starts) != 1:
            res.flag("started-count", f"{where}: {len(starts)} WORKFLOW_EXECUTION_STARTED events", run=where)
        want_req = request_of.get(key)
        if starts and want_req:
            got = (starts[0].get("attributes") or {}).get("requestId")
            if got != want_req:
                res.flag("start-request", f"{where}: started by requestId {got!r}, the client sent {want_req!r}",
                         run=where)
        closes = [i for i, t in enumerate(types) if t in CLOSE_EVENTS]
        if len(closes) > 1:
            res.flag("closed-twice", f"{where}: {len(closes)} close events {[types[i] for i in closes]}", run=where)
        if closes and closes[0] != len(events) - 1:
            res.flag("event-after-close", f"{where}: {types[closes[0] + 1:]} after {types[closes[0]]}", run=where)
        if not closes:
            open_runs += 1
        _check_tasks(res, where, events)
        if expected_result is not None and closes and types[closes[0]] == "WORKFLOW_EXECUTION_COMPLETED":
            want = expected_result(key)
            got = (events[closes[0]].get("attributes") or {}).get("result")
            if want is not None and got != want:
                res.flag("wrong-result", f"{where}: completed with {got!r}, its handler returned {want!r}",
                         run=where)
    res.stats["open"] = open_runs
    return res


def _check_tasks(res: CheckResult, where: str, events: list[dict[str, Any]]) -> None:
    scheduled: set[int] = set()
    started: Counter[int] = Counter()
    ended: Counter[int] = Counter()
    for e in events:
        t = e.get("eventType")
        a = e.get("attributes") or {}
        if t == "WORKFLOW_TASK_SCHEDULED":
            scheduled.add(e.get("eventId", -1))
        elif t == "WORKFLOW_TASK_STARTED":
            sid = a.get("scheduledEventId")
            started[sid] += 1
            if sid not in scheduled:
                res.flag("task-unscheduled", f"{where}: task started for unknown scheduled event {sid}", run=where)
        elif t in TASK_ENDS:
            sid = a.get("scheduledEventId")
            ended[sid] += 1
            if t == "WORKFLOW_TASK_COMPLETED" and not started.get(sid):
                res.flag("completed-unstarted", f"{where}: task {sid} completed before it was started", run=where)
    for sid, n in started.items():
        if n > 1:
            res.flag("task-started-twice", f"{where}: workflow task {sid} started {n} times", run=where, task=sid)
    for sid, n in ended.items():
        if n > 1:
            res.flag("task-completed-twice", f"{where}: workflow task {sid} ended {n} times", run=where, task=sid)


def _head(xs: list[Any], n: int = 12) -> str:
    return str(xs if len(xs) <= n else [*xs[:n], "…"])


# --------------------------------------------------------------------------- signals


def check_signals(ops: Iterable[Op], received: dict[RunKey, Counter[str]]) -> CheckResult:
    """Each signal applied at most once, and exactly once when acknowledged.

    ``received`` counts, per register workflow, the SIGNALED events by their
    requestId. Signals were retried with the same requestId whenever their
    outcome was unknown, so a count above one is a retry applied twice.
    """
    res = CheckResult("signals")
    sigs = [op for op in ops if op.kind == "signal"]
    res.checked = len(sigs)
    sent: dict[RunKey, set[str]] = defaultdict(set)
    unread: set[RunKey] = set()
    for op in sigs:
        key = (op.ns, op.wid)
        sent[key].add(op.request_id)
        if key not in received:
            unread.add(key)
            continue
        n = received[key].get(op.request_id, 0)
        if n > 1:
            res.flag("applied-twice", f"signal {op.request_id} to {op.ns}/{op.wid} applied {n} times",
                     op=op.id, count=n)
        if op.outcome == OK and n == 0:
            res.flag("lost", f"acknowledged signal {op.request_id} to {op.ns}/{op.wid} is not in its history",
                     op=op.id)
        if op.outcome == FAILED and n > 0:
            res.flag("failed-applied", f"signal {op.request_id} answered as failed ({_statuses(op)}) but applied",
                     op=op.id)
    for key, counts in received.items():
        for rq in counts:
            if rq and rq not in sent.get(key, set()):
                res.flag("phantom", f"{key[0]}/{key[1]} has signal {rq} that no client sent", request_id=rq)
    if unread:
        res.notes.append(f"histories not read (signals unchecked): {sorted(f'{n}/{w}' for n, w in unread)}")
    res.stats = dict(Counter(op.outcome for op in sigs))
    return res


# --------------------------------------------------------------------------- schedules


@dataclass
class ScheduleObs:
    """What the cluster shows about one schedule after the heal.

    ``fired``: workflowId -> its runIds, for every run the schedule started.
    ``due_until_ms``: when set, every slot up to this time was overdue while
    the healed cluster was given time to fire it (the harness waits before it
    pauses the schedules), so a long-window schedule must have fired them.
    """

    schedule_id: str
    catchup_s: float
    create_ms: int
    action_count: int
    missed: int
    fired: dict[str, list[str]]
    due_until_ms: int | None = None


_NOMINAL = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)$")


def nominal_ms(schedule_id: str, wid: str) -> int | None:
    """The nominal time in a schedule-fired workflowId ``<sid>-<RFC 3339 seconds>`` (SPEC §1)."""
    if not wid.startswith(schedule_id + "-"):
        return None
    m = _NOMINAL.search(wid[len(schedule_id) + 1 :])
    if m is None or len(m.group(1)) != len(wid) - len(schedule_id) - 1:
        return None
    dt = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def check_schedules(schedules: Iterable[ScheduleObs], *, interval_ms: int = 1000,
                    long_window_s: float = 60.0) -> CheckResult:
    """Each nominal time fired at most once; and at least once unless the catch-up window excused it.

    Slots considered: the interval's ticks strictly after the schedule's
    creation, up to the last slot that fired (later ones may still be due),
    or up to ``due_until_ms`` for a long window. A schedule whose catch-up
    window is at least ``long_window_s`` (far longer than any outage a
    scenario makes) must have fired every slot. One with a short window may
    have missed slots, but each must then be counted in
    ``missedCatchupWindow``. ``actionCount`` must equal the runs started.
    """
    res = CheckResult("schedules")
    for s in schedules:
        slots: Counter[int] = Counter()
        for wid, runs in s.fired.items():
            t = nominal_ms(s.schedule_id, wid)
            if t is None:
                res.flag("bad-workflow-id", f"{s.schedule_id} started {wid!r}, not <scheduleId>-<nominal time>",
                         schedule=s.schedule_id, wid=wid)
                continue
            slots[t] += len(runs)
            if len(runs) > 1:
                res.flag("fired-twice", f"{wid} has {len(runs)} runs", schedule=s.schedule_id, wid=wid, runs=runs)
            if t <= s.create_ms or t % interval_ms:
                res.flag("not-a-slot", f"{wid} is not a nominal time of {s.schedule_id}", schedule=s.schedule_id,
                         wid=wid)
        runs_started = sum(slots.values())
        res.checked += len(slots)
        if runs_started != s.action_count:
            res.flag("action-count", f"{s.schedule_id}: actionCount {s.action_count} but {runs_started} runs",
                     schedule=s.schedule_id, action_count=s.action_count, runs=runs_started)
        long_window = s.catchup_s >= long_window_s
        if not slots and not (long_window and s.due_until_ms):
            res.notes.append(f"{s.schedule_id}: no run fired")
            continue
        first = (s.create_ms // interval_ms + 1) * interval_ms
        last = max(slots, default=0)
        if long_window and s.due_until_ms:
            last = max(last, s.due_until_ms // interval_ms * interval_ms)
        expected = range(first, last + 1, interval_ms)
        missing = [t for t in expected if t not in slots]
        res.stats[s.schedule_id] = {"slots": len(expected), "fired": len(slots), "missing": len(missing),
                                    "missedCatchupWindow": s.missed}
        if long_window:
            if missing:
                res.flag("not-fired", f"{s.schedule_id}: {len(missing)} slots inside the catch-up window never fired "
                         f"(first {_iso(missing[0])}; missedCatchupWindow={s.missed})", schedule=s.schedule_id,
                         missing=[_iso(t) for t in missing[:20]])
        elif len(missing) > s.missed:
            res.flag("not-fired-uncounted", f"{s.schedule_id}: {len(missing)} slots did not fire but only "
                     f"{s.missed} were counted as missed (first {_iso(missing[0])})", schedule=s.schedule_id,
                     missing=[_iso(t) for t in missing[:20]])
    return res


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- replicas


def check_replicas(digests: dict[str, dict[str, dict[str, Any]]]) -> CheckResult:
    """Every replica of a partition holds the same bytes after the heal.

    ``digests``: partition -> node -> ``{"hash", "applied", "keys"}`` or
    ``{"error"}``. Any difference is an anomaly; the applied indexes are in
    the detail (equal indexes and different bytes = divergence; different
    indexes = a replica that did not catch up before the stop).
    """
    res = CheckResult("replicas")
    for p, by_node in sorted(digests.items()):
        res.checked += 1
        errors = {n: d["error"] for n, d in by_node.items() if "error" in d}
        for node, err in errors.items():
            res.flag("unreadable", f"partition {p} on {node}: {err}", partition=p, node=node)
        hashes = {n: d["hash"] for n, d in by_node.items() if "hash" in d}
        if len(set(hashes.values())) > 1:
            applied = {n: by_node[n].get("applied") for n in hashes}
            keys = {n: by_node[n].get("keys") for n in hashes}
            same_index = len(set(applied.values())) == 1
            res.flag("diverged" if same_index else "not-converged",
                     f"partition {p}: replicas differ (applied {applied}, keys {keys})",
                     partition=p, applied=applied, keys=keys, hashes={n: h[:16] for n, h in hashes.items()})
    return res


# --------------------------------------------------------------------------- registers


def register_ops(ops: Iterable[Op]) -> dict[str, list[RegOp]]:
    """The register sub-histories: key -> RegOps (see ``chaos.linearizability``)."""
    out: dict[str, list[RegOp]] = defaultdict(list)
    for op in ops:
        if op.kind == "write" and op.outcome in (OK, UNKNOWN):
            end = op.complete if op.outcome == OK else math.inf
            out[op.key].append(RegOp(op.id, WRITE, op.value, op.invoke, end))
        elif op.kind == "read" and op.outcome == OK:
            out[op.key].append(RegOp(op.id, READ, op.value, op.invoke, op.complete))
    return dict(out)


def check_registers(ops: Iterable[Op], *, max_steps: int = 2_000_000) -> CheckResult:
    """Single-key register operations are linearizable (per key, bounded search).

    Before the search, two cheaper and clearer checks: a read must return
    the initial value (None) or a value some write sent; and never the value
    of a write that was answered as failed.
    """
    res = CheckResult("linearizable-registers")
    ops = list(ops)
    written = {op.value: op for op in ops if op.kind == "write"}
    for op in ops:
        if op.kind == "read" and op.outcome == OK and op.value is not None:
            w = written.get(op.value)
            if w is None:
                res.flag("read-unwritten", f"read of {op.key} returned {op.value!r}, which no client wrote", op=op.id)
            elif w.outcome == FAILED:
                res.flag("read-failed-write", f"read of {op.key} returned {op.value!r}, written by a write answered "
                         f"as failed ({_statuses(w)})", op=op.id, write=w.id)
            elif w.key != op.key:
                res.flag("read-other-key", f"read of {op.key} returned {op.value!r}, written to {w.key}", op=op.id)
    inconclusive = []
    for key, rops in sorted(register_ops(ops).items()):
        r = check_key(key, rops, None, max_steps)
        res.checked += r.ops
        if r.linearizable is None:
            inconclusive.append(key)
        elif not r.linearizable:
            culprit = r.stuck_at
            res.flag("not-linearizable",
                     f"{key}: no linearization of {r.ops} ops"
                     + (f"; stuck at op {culprit.id} ({culprit.kind} {culprit.value!r}, "
                        f"{culprit.invoke:.3f}-{culprit.complete:.3f}s)" if culprit else ""),
                     key=key, op=culprit.id if culprit else None, prefix=r.prefix[-10:])
    if inconclusive:
        res.notes.append(f"search bound reached (inconclusive): {inconclusive}")
    res.stats = {"keys": len(register_ops(ops)), "inconclusive": len(inconclusive)}
    return res
