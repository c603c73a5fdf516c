"""Server-Sent Events: ``GET /v1/tasks/events`` (SPEC §6).

One :class:`SseHub` per node. It listens to the replicator (every node applies
every partition, so every node sees every shard's events) and to migration job
updates, turns the state machine's notifications into the event kinds of §6,
keeps the last ``sse.buffer_events`` of them in a ring for ``Last-Event-ID``
resume, and fans them out to subscribers.

A stream's kernel send buffer is capped (``SEND_BUFFER``), so that a client
that stops reading costs bounded memory and soon meets the queue's limit.

Ids are ``<boot id>-<seq>``: the boot id is drawn at process start, so an id
from another process (or another node) is unknown here and the client gets a
``gap`` first. Each subscriber has a queue of 256 events; on overflow the
oldest are dropped and one ``gap`` is queued in their place. Publishing is
synchronous and never waits for a subscriber.

A ``gap`` event's ``data`` is exactly ``{"last_event_id": …}``; its ``id`` is
a position to resume from: after an unknown id, the newest id when the stream
opened (it continues live from there); after an overflow, the last event
written before the dropped ones. ``: ping`` goes out every ``sse.keepalive``
whatever the traffic (0 turns pings off); a quiet stream also checks every
second that its client is still there.

What ``data`` carries (the affected record, or the shapes §6 names):

* ``workflow.*``: the run as a workflow *list* shows it (``render.run(full=False)``:
  no ``input``, ``result``, ``memo`` or failure details), so the ring stays small
  whatever the payloads; ``workflow.signaled``: ``{signal, input, history_length}``.
* ``namespace.*``: the namespace record; ``schedule.*``: the schedule record
  (``schedule.deleted``: none; ``schedule.fired``: ``{nominal_time, workflow_id,
  run_id}``); ``activity.*``: the activity record in list form (no ``input``,
  ``result``, ``heartbeatDetails`` or failure details).
* ``migration.*``: the Job (``migrations_api.job``).

The record comes from the apply result when it is the one the event names,
else it is read from the local replica (then it may already reflect later
commands: delivery is best effort). When it cannot be read, ``data`` is left
out. ``activity.heartbeat`` carries ``{details}`` (one per *committed*
heartbeat, SPEC §5.7).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack
from aiohttp import web
from hanzo_tasks.cluster.api.http import migrations as migrations_api
from hanzo_tasks.cluster.api.http.request import node_of
from hanzo_tasks.cluster.service import render
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.channels import EVENTS  # SPEC §8.7 channel "events"
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.shard import reads
from hanzo_tasks.shard.keys import ShardKeys

log = logging.getLogger("tasks.sse")

Json = dict[str, Any]

QUEUE_SIZE = 256
# The kernel send buffer of a stream (Linux doubles it). Left to autotuning it grows to MiBs (on loopback,
# tcp_wmem max) per client that stops reading, and the 256-event queue would hardly ever be the limit.
SEND_BUFFER = 128 * 1024
PRELUDE = b": hanzo-tasks event stream\nretry: 3000\n\n"
PING = b": ping\n\n"

KINDS: frozenset[str] = frozenset(
    [f"workflow.{k}" for k in ("started", "signaled", "cancel_requested", "canceled", "terminated", "completed",
                               "failed", "timed_out", "continued_as_new", "reset", "retry_scheduled", "updated")]
    + [f"namespace.{k}" for k in ("registered", "updated", "deleted")]
    + [f"schedule.{k}" for k in ("created", "updated", "paused", "resumed", "triggered", "fired", "deleted")]
    + [f"batch.{k}" for k in ("started", "completed", "terminated")]
    + [f"activity.{k}" for k in ("scheduled", "started", "heartbeat", "completed", "failed", "canceled",
                                 "timed_out")]
    + [f"migration.{k}" for k in ("started", "done", "failed")]
)
ID_FIELDS = ("workflow_id", "run_id", "schedule_id", "batch_id", "activity_id", "migration_id")
_ACTIVITY_CLOSE = {"COMPLETED": "activity.completed", "FAILED": "activity.failed", "CANCELED": "activity.canceled",
                   "TIMED_OUT": "activity.timed_out"}
_LIST_FORM_DROP = ("input", "result", "heartbeatDetails")


def event_kind(ev: Json) -> str | None:
    """The §6 kind of a state-machine notification, or None for internal ones."""
    kind = ev.get("kind")
    if kind == "activity.closed":
        return _ACTIVITY_CLOSE.get(ev.get("status") or "")
    if kind in KINDS and not kind.startswith("migration."):
        return kind
    return None  # activity.released / result / cancel_requested, shard.*, ...


def _record_id(ev: Json, field: str) -> str:
    """The id an event names its record by, to read the record from the store.

    An event without it has no record to read: this raises, as the store's key
    encoding would, and the event goes out without data.
    """
    value = ev.get(field)
    if not isinstance(value, str):
        raise ValueError(f"event carries no {field}")
    return value


def parse_kinds(raw: str | None) -> tuple[frozenset[str], tuple[str, ...]] | None:
    """``?kinds=a,b,workflow.``: (exact kinds, prefixes), or None for no filter. Unknown kind → 400."""
    if raw is None:
        return None
    exact: set[str] = set()
    prefixes: list[str] = []
    for item in (x.strip() for x in raw.split(",")):
        if not item:
            continue
        if item.endswith("."):
            if len(item) < 2 or not any(k.startswith(item) for k in KINDS):
                raise ApiError("invalid_argument", f"kinds: no event kind starts with {item[:80]!r}")
            prefixes.append(item)
        elif item in KINDS:
            exact.add(item)
        else:
            raise ApiError("invalid_argument", f"kinds: unknown event kind {item[:80]!r}")
    if not exact and not prefixes:
        raise ApiError("invalid_argument", "kinds: give at least one event kind or prefix")
    return frozenset(exact), tuple(prefixes)


class _Entry:
    __slots__ = ("seq", "id", "org", "namespace", "kind", "frame")

    def __init__(self, seq: int, eid: str, org: str, namespace: str | None, kind: str, frame: bytes) -> None:
        self.seq = seq
        self.id = eid
        self.org = org
        self.namespace = namespace
        self.kind = kind
        self.frame = frame


def _frame(eid: str, kind: str, body: Any) -> bytes:
    """One event block. json.dumps escapes CR and LF, so ``data`` is always one line."""
    try:
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)
    try:
        return f"id: {eid}\nevent: {kind}\ndata: {text}\n\n".encode()
    except UnicodeEncodeError:  # a lone surrogate somewhere: the ASCII form escapes it
        text = json.dumps(body, separators=(",", ":"), default=str)
        return f"id: {eid}\nevent: {kind}\ndata: {text}\n\n".encode()


class Subscriber:
    """One open stream: its filter, its bounded queue and a pending gap."""

    def __init__(self, hub: SseHub, org: str, namespace: str | None,
                 kinds: tuple[frozenset[str], tuple[str, ...]] | None, cursor: str, transport: Any) -> None:
        self.hub = hub
        self.org = org
        self.namespace = namespace
        self.kinds = kinds
        self.cursor = cursor  # id of the last event handed to the writer (the gap's position)
        self.transport = transport
        self.backlog: deque[_Entry] = deque()  # buffered events after Last-Event-ID
        self.queue: deque[_Entry] = deque()
        self.first_gap: bytes | None = None  # the resume gap (unknown or evicted id)
        self.gap_pending = False  # overflow: events were dropped before the queue's head
        self.wakeup = asyncio.Event()
        self.writing = False

    def matches(self, e: _Entry) -> bool:
        if e.org != self.org:
            return False
        if self.namespace is not None and e.namespace != self.namespace:
            return False
        if self.kinds is not None:
            exact, prefixes = self.kinds
            return e.kind in exact or e.kind.startswith(prefixes)
        return True

    def offer(self, e: _Entry) -> None:
        """Queue an event; never waits. Overflow drops the oldest and leaves one gap in their place."""
        if len(self.queue) >= QUEUE_SIZE:
            self.queue.popleft()
            if not self.gap_pending:
                self.gap_pending = True
                self.hub.gap_counted()
        self.queue.append(e)
        self.wakeup.set()

    def take(self, limit: int = QUEUE_SIZE) -> list[bytes]:
        """The frames to write next, in order: resume gap, backlog, overflow gap, live events."""
        out: list[bytes] = []
        if self.first_gap is not None:
            out.append(self.first_gap)
            self.first_gap = None
        while self.backlog and len(out) < limit:
            e = self.backlog.popleft()
            out.append(e.frame)
            self.cursor = e.id
        if self.backlog:
            return out
        if self.gap_pending:
            self.gap_pending = False
            out.append(_frame(self.cursor, "gap", {"last_event_id": self.cursor}))
        while self.queue and len(out) < limit:
            e = self.queue.popleft()
            out.append(e.frame)
            self.cursor = e.id
        return out

    def client_gone(self) -> bool:
        t = self.transport
        return t is None or t.is_closing()


class SseHub:
    """The node's event ring and subscribers (all on the event loop thread)."""

    def __init__(self, node: Any, *, buffer_events: int, keepalive_ms: int,
                 clock: Callable[[], int], metrics: Any = None) -> None:
        self.node = node
        self.boot = secrets.token_hex(4)
        self.seq = 0
        self.ring: deque[_Entry] = deque(maxlen=max(1, buffer_events))
        self.keepalive = keepalive_ms / 1000.0 if keepalive_ms > 0 else None  # 0: no pings
        self.clock = clock
        self.metrics = metrics
        self.subscribers: set[Subscriber] = set()
        self.closed = False
        self._jobs: dict[str, tuple[bool, bool]] = {}  # migration id -> (started sent, end sent)

    # ---- publishing ------------------------------------------------------------

    def head_id(self) -> str:
        return f"{self.boot}-{self.seq}"

    def publish(self, kind: str, org: str, namespace: str | None, ids: Json, data: Any = None) -> None:
        if self.closed:
            return
        self.seq += 1
        eid = f"{self.boot}-{self.seq}"
        body: Json = {"kind": kind, "org_id": "" if org == "_" else org}
        if namespace:
            body["namespace"] = namespace
        for f in ID_FIELDS:
            v = ids.get(f)
            if v:
                body[f] = v
        body["at"] = render.t(self.clock())
        if data is not None:
            body["data"] = data
        e = _Entry(self.seq, eid, org, namespace, kind, _frame(eid, kind, body))
        self.ring.append(e)
        for sub in self.subscribers:
            if sub.matches(e):
                sub.offer(e)

    def on_apply(self, group: int, index: int, result: Json) -> None:
        """Replicator listener: the events of one applied command."""
        events = result.get("_events")
        if not events or self.closed:
            return
        for ev in events:
            kind = event_kind(ev)
            if kind is None:
                continue
            try:
                data = self._data(group, kind, ev, result)
            except Exception:  # a record that cannot be rendered: the event still goes out
                log.debug("no data for %s event", kind, exc_info=True)
                data = None
            self.publish(kind, ev.get("org") or "_", ev.get("namespace"), ev, data)
            self._relay(group, kind, ev, data)

    # ---- nodes that hold no replica of a partition --------------------------------

    def attach(self, replicator: Any) -> None:
        """Receive the events of partitions this node does not hold (channel EVENTS)."""
        if replicator.clustered:
            replicator.on_channel(EVENTS, self._on_relayed)

    def _relay(self, group: int, kind: str, ev: Json, data: Any) -> None:
        """The partition's leader sends its events to the members that hold no
        replica of it, so every node's stream covers every namespace. Best
        effort, like the stream itself: around a leader change an event can be
        missed there."""
        rep = self.node.replicator
        if not rep.clustered or not rep.is_leader(group):
            return
        holders = rep.replicas(group)
        members = self.node.membership.current.members  # in memory: this runs for every applied event
        if len(holders) >= len(members):
            return
        others = [m for m in members if m not in holders]
        if not others:
            return

        ids = {f: ev[f] for f in ID_FIELDS if ev.get(f)}
        try:
            frame = msgpack.packb({"k": kind, "o": ev.get("org") or "_", "n": ev.get("namespace"), "i": ids,
                                   "d": data}, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return
        for peer in others:
            rep.send_peer(peer, EVENTS, frame)

    def _on_relayed(self, peer: str, body: bytes) -> None:
        import msgpack

        try:
            m = msgpack.unpackb(body, raw=False)
            kind, org, ns, ids = m["k"], m["o"], m.get("n"), m.get("i") or {}
            if not (isinstance(kind, str) and isinstance(org, str) and isinstance(ids, dict)):
                raise ValueError("bad event")
        except Exception as e:  # noqa: BLE001 - an authenticated peer sent nonsense: drop it
            log.warning("dropped a relayed event from %s: %s", peer, e)
            return
        self.publish(kind, org, ns if isinstance(ns, str) else None, ids, m.get("d"))

    def seen_jobs(self, jobs: list[Json]) -> None:
        """Jobs that existed before this process started: their past transitions are not re-sent."""
        for job in jobs:
            ended = job.get("status") in ("done", "failed")
            self._jobs[job["id"]] = (True, ended)

    def on_migration(self, job: Json) -> None:
        """A job record changed (called on every node for every update): each transition once."""
        jid = job.get("id")
        if not jid:
            return
        started, ended = self._jobs.get(jid, (False, False))
        status = job.get("status")
        if not started:
            started = True
            self._publish_job("migration.started", job)
        if not ended and status in ("done", "failed"):
            ended = True
            self._publish_job("migration." + status, job)
        self._jobs[jid] = (started, ended)

    def _publish_job(self, kind: str, job: Json) -> None:
        try:
            data: Any = migrations_api.job(job)
        except Exception:
            log.debug("cannot render migration job %s", job.get("id"), exc_info=True)
            data = None
        self.publish(kind, job.get("org") or "_", job.get("namespace"), {"migration_id": job.get("id")}, data)

    # ---- data -------------------------------------------------------------------

    def _data(self, group: int, kind: str, ev: Json, result: Json) -> Any:
        org, ns = ev.get("org") or "_", ev.get("namespace") or ""
        family = kind.split(".", 1)[0]
        if kind == "schedule.fired":
            return {"nominal_time": render.t(ev.get("nominal_time")), "workflow_id": ev.get("workflow_id"),
                    "run_id": ev.get("run_id")}
        rep = self.node.replicator
        if family == "workflow":
            wid, rid = ev.get("workflow_id"), ev.get("run_id")
            run = result.get("run")
            if not (isinstance(run, dict) and run.get("workflowId") == wid and run.get("runId") == rid):
                with rep.store(group).read() as txn:
                    run = reads.run(txn, org, ns, _record_id(ev, "workflow_id"), rid)
            if run is None:
                return None
            if kind == "workflow.signaled":
                return self._signal_data(group, org, ns, run)
            return render.run(run, full=False)
        if family == "namespace":
            rec = result.get("namespace")
            if not (isinstance(rec, dict) and rec.get("name") == ns):
                with rep.store(group).read() as txn:
                    rec = reads.namespace(txn, org, ns)
            return render.namespace(rec) if rec is not None else None
        if family == "schedule":
            if kind == "schedule.deleted":
                return None
            sid = ev.get("schedule_id")
            s = result.get("schedule")
            if not (isinstance(s, dict) and s.get("scheduleId") == sid):
                with rep.store(group).read() as txn:
                    s = reads.schedule(txn, org, ns, _record_id(ev, "schedule_id"))
            service = self.node.service
            return service.schedules.render_schedule(org, ns, s) if s is not None and service is not None else None
        if kind == "batch.terminated":
            return {"reason": ev.get("reason") or "", "identity": ev.get("identity") or ""}
        if family == "batch":
            b = result.get("batch")
            if not (isinstance(b, dict) and b.get("batchId") == ev.get("batch_id")):
                with rep.store(group).read() as txn:
                    b = reads.batch(txn, org, ns, _record_id(ev, "batch_id"))
            return render.batch(b) if b is not None else None
        if kind == "activity.heartbeat":
            return {"details": ev.get("details")}
        if family == "activity":
            aid, rid = ev.get("activity_id"), ev.get("run_id")
            a = result.get("activity")
            if not (isinstance(a, dict) and a.get("activityId") == aid and a.get("runId") == rid):
                with rep.store(group).read() as txn:
                    a = reads.activity(txn, org, ns, _record_id(ev, "activity_id"), _record_id(ev, "run_id"))
            if a is None:
                return None
            out = render.activity(a)
            for f in _LIST_FORM_DROP:
                out.pop(f, None)
            if isinstance(out.get("lastFailure"), dict):
                out["lastFailure"] = render.failure(out["lastFailure"], with_details=False)
            return out
        return None

    def _signal_data(self, group: int, org: str, ns: str, run: Json) -> Json | None:
        """``{signal, input, history_length}``: the run's latest signal (a few events back at most)."""
        k = ShardKeys(org, ns)
        length = int(run.get("historyLength") or 0)
        with self.node.replicator.store(group).read() as txn:
            for eid in range(length, max(0, length - 8), -1):
                raw = txn.get(k.event(run["runId"], eid))
                if raw is None:
                    continue
                evt = msgpack.unpackb(raw, raw=False, strict_map_key=False)
                if evt.get("eventType") == "WORKFLOW_EXECUTION_SIGNALED":
                    attrs = evt.get("attributes") or {}
                    return {"signal": attrs.get("signalName"), "input": attrs.get("input"),
                            "history_length": length}
        return None

    # ---- subscribers -----------------------------------------------------------------

    def gap_counted(self) -> None:
        if self.metrics is not None:
            self.metrics.sse_gaps.inc()

    def subscribe(self, org: str, namespace: str | None, kinds: tuple[frozenset[str], tuple[str, ...]] | None,
                  last_event_id: str | None, transport: Any = None) -> Subscriber:
        """Register a stream. Known ``last_event_id``: the buffered events after it come first;
        unknown or evicted: a ``gap`` first, then live events only."""
        sub = Subscriber(self, org, namespace, kinds, self.head_id(), transport)
        if last_event_id is not None:
            seq = self._seq_of(last_event_id)
            first = self.ring[0].seq if self.ring else self.seq + 1
            if seq is not None and first - 1 <= seq <= self.seq:
                sub.cursor = last_event_id
                sub.backlog.extend(e for e in self.ring if e.seq > seq and sub.matches(e))
            else:
                sub.first_gap = _frame(sub.cursor, "gap", {"last_event_id": last_event_id})
                self.gap_counted()
        self.subscribers.add(sub)
        if self.metrics is not None:
            self.metrics.sse_subscribers.inc()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            if self.metrics is not None:
                self.metrics.sse_subscribers.dec()

    def _seq_of(self, eid: str) -> int | None:
        boot, sep, seq = eid.partition("-")
        if not sep or boot != self.boot or not seq.isascii() or not seq.isdigit() or len(seq) > 18:
            return None
        return int(seq)

    async def serve(self, sub: Subscriber, resp: web.StreamResponse) -> None:
        """Write the stream until the client goes away or the hub closes."""
        loop = asyncio.get_running_loop()
        keep = self.keepalive if self.keepalive is not None else float("inf")
        tick = min(keep, 1.0)  # how often a quiet stream checks that its client is still there
        next_ping = loop.time() + keep
        sub.writing = True
        await resp.write(PRELUDE)
        sub.writing = False
        while not self.closed:
            frames = sub.take()
            if frames:
                sub.writing = True
                await resp.write(b"".join(frames))
                sub.writing = False
                continue
            now = loop.time()
            if now >= next_ping:
                sub.writing = True
                await resp.write(PING)
                sub.writing = False
                next_ping = max(next_ping + keep, now)
                continue
            if sub.client_gone():
                return
            sub.wakeup.clear()
            try:
                await asyncio.wait_for(sub.wakeup.wait(), timeout=min(tick, next_ping - now))
            except TimeoutError:
                pass

    def close(self) -> None:
        """Node stopping: end every stream (a writer stuck on a client that does not read is cut off)."""
        self.closed = True
        for sub in list(self.subscribers):
            sub.wakeup.set()
            if sub.writing and sub.transport is not None:
                sub.transport.abort()

    def count(self) -> int:
        return len(self.subscribers)


# ---- the route ---------------------------------------------------------------------

HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


async def h_events(s: Any, c: Any) -> web.StreamResponse:
    """GET /v1/tasks/events: validate, then answer with the stream itself (not JSON)."""
    node = node_of(c)
    hub: SseHub | None = getattr(node, "sse", None)
    if hub is None or hub.closed:
        raise ApiError("unavailable", "the event stream is not running on this node", retry_after=1)
    q = c.query
    namespace = q.get("namespace")
    if namespace is not None:
        names.check_namespace(namespace)
    kinds = parse_kinds(q.get("kinds"))
    last = c.request.headers.get("Last-Event-ID") or q.get("lastEventId") or None
    resp = web.StreamResponse(status=200, headers={**HEADERS, "X-Tasks-Node": node.node_id})
    if c.request.method == "HEAD":
        await resp.prepare(c.request)
        return resp
    transport = c.request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:
            pass
    sub = hub.subscribe(c.org, namespace, kinds, last, transport)
    try:
        await resp.prepare(c.request)
        await hub.serve(sub, resp)
        await resp.write_eof()
    except (ConnectionError, OSError):
        pass  # the client went away
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("event stream failed")
    finally:
        hub.unsubscribe(sub)
    return resp
