"""Dispatch of workflow tasks to workers subscribed over ZAP (SPEC §5.7, §8.6).

Pending tasks are shard state (an index by task queue, oldest first). The
owner of ``(org, ns, taskQueue)`` pushes them to the queue's subscriptions,
within each subscription's slots; subscriptions of workers connected to other
nodes reach it through ``cluster.dispatch.relay``. A task is leased by a committed
``wt.start`` *before* its push is sent, so two nodes (or two loops) racing for
one task — possible only while ownership changes hands — cannot both lease it:
the second ``wt.start`` finds the task no longer current. A refused or unanswered
push, a closed connection and an expired lease each commit a command that
makes the task available again with ``attempt + 1``; completions carry a
signed token and apply at most once.

Leases and heartbeats are in memory on the node that holds the worker's
connection; on start this node re-arms a lease (now + task timeout) for every
task left started in the partitions it leads, so a crash never strands one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from hanzo_tasks.cluster.dispatch.relay import Relay
from hanzo_tasks.cluster.dispatch.task_queues import WorkerBook
from hanzo_tasks.cluster.dispatch.tokens import TaskToken, Tokens
from hanzo_tasks.cluster.service import render, task_commands
from hanzo_tasks.cluster.service.inputs import check_payload
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.shard import reads

log = logging.getLogger("tasks.dispatch")

Json = dict[str, Any]
QueueKey = tuple[str, str, str]  # org, ns, task queue
TaskKey = tuple[str, str, str, str]  # org, ns, workflowId, runId

DELIVER_WORKFLOW_TASK = 0x00B0
DELIVER_ACTIVITY_TASK = 0x00B1
DELIVER_CANCEL_REQUEST = 0x00B3
DELIVER_QUERY = 0x00B4
DELIVER_ACTIVITY_RESULT = 0x00B2
MAX_PENDING_QUERIES = 4096
MAX_HISTORY = 1000
SCAN_EVERY = 0.1
REARM_EVERY = 5.0
"""Seconds between sweeps that give every started task of a led partition a lease here."""
HEARTBEAT_PERSIST = 10.0
"""Seconds between committed heartbeats of one activity attempt (at most; SPEC §5.7)."""
RETRY_FOR = 120.0
"""How long a command that frees a task (fail, timeout) is retried while its shard is unavailable."""


@dataclass(eq=False)
class Subscription:
    id: str
    conn: Any
    org: str
    ns: str
    task_queue: str
    types: frozenset[str] | None
    max_concurrent: int
    identity: str
    in_flight: set[TaskKey] = field(default_factory=set)
    kind: str = "workflow"
    """"workflow" (0x00A0) or "activity" (0x00A1): which pending tasks it is offered."""
    created: int = 0
    """Wall-clock ms when this node first dispatched for it: the worker registry's firstSeen (SPEC §5.1)."""
    build_id: str = ""
    """``build_id`` of the subscribe request, when it was a valid Id; shown on the Worker record."""

    def free(self) -> int:
        return self.max_concurrent - len(self.in_flight)

    def handles(self, wtype: str) -> bool:
        return self.types is None or wtype in self.types


@dataclass
class Lease:
    token: TaskToken
    deadline: float
    timeout_s: float
    sub: Subscription | None


class Dispatcher:
    def __init__(self, node: Any, secret: bytes) -> None:
        self.node = node
        self.service = node.service
        self.tokens = Tokens(secret)
        self.push_ack = node.cfg.timeouts.push_ack / 1000.0
        self.subs: dict[str, Subscription] = {}
        self.leases: dict[TaskKey, Lease] = {}
        self._claiming: set[TaskKey] = set()
        self._rr = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._bg: set[asyncio.Task] = set()
        self._running = False
        self._queries: dict[str, asyncio.Future[tuple[Any, Any]]] = {}
        self._last_holder: dict[TaskKey, Subscription] = {}
        # Activity attempts pushed by this node: (org, ns, activityId, runId) -> (token, holder).
        # Their deadlines are durable shard timers; this only tracks slots and the holder.
        self.act_leases: dict[TaskKey, tuple[TaskToken, Subscription]] = {}
        self.relay: Any = None  # cluster.relay.Relay in raft mode
        self._hb_persisted: dict[TaskKey, float] = {}  # activity attempt -> when a heartbeat was last committed
        self.book = WorkerBook(self)  # recently departed workers, for the worker registry (SPEC §4.5)

    # ---- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self._running = True
        rep = self.service.replicator
        if rep.clustered:
            self.relay = Relay(self.node, self)
            await self.relay.start()
        rep.subscribe(self._on_apply)
        rep.on_leadership(self._on_leadership)
        self._rearm_started()
        self._task = asyncio.create_task(self._loop(), name="dispatch")

    def wake(self) -> None:
        """Look again at once at what is due (the clock moved, e.g. a test's fake clock)."""
        self._wake.set()

    async def stop(self) -> None:
        self._running = False
        if self.relay is not None:
            await self.relay.stop()
        self._wake.set()
        for t in [self._task, *self._bg]:
            if t is not None:
                t.cancel()
        await asyncio.gather(*(t for t in [self._task, *self._bg] if t is not None), return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._finished)

    def _finished(self, t: asyncio.Task) -> None:
        self._bg.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("dispatch task failed", exc_info=t.exception())

    def _on_apply(self, group: int, index: int, result: Json) -> None:
        events = result.get("_events") or ()
        if events or result.get("_op", "").startswith("wt."):
            self._wake.set()
        for ev in events:
            if ev["kind"] in ("activity.closed", "activity.released"):
                # The attempt ended in shard state (timeout, HTTP complete...): free the slot.
                akey = (ev["org"], ev["namespace"], ev["activity_id"], ev["run_id"])
                held = self.act_leases.pop(akey, None)
                if held is not None:
                    held[1].in_flight.discard(akey)
            if ev["kind"] == "activity.result":
                self._spawn(self._push_activity_result(ev["org"], ev["namespace"], ev["workflow_id"], ev["run_id"],
                                                       ev["activity_id"], ev["activity_run_id"]))
            if ev["kind"] == "workflow.cancel_requested":
                key = (ev["org"], ev["namespace"], ev["workflow_id"], ev["run_id"])
                lease = self.leases.get(key)
                if lease is not None and lease.sub is not None:
                    self._spawn(self._push_cancel(lease))

    async def _push_cancel(self, lease: Lease) -> None:
        """0xB3 to the worker holding the run's task; informational (heartbeats say it too)."""
        t = lease.token
        body = {"kind": "workflow", "task_token": self.tokens.make(t), "namespace": t.ns,
                "workflow_id": t.wid, "run_id": t.rid, "reason": "cancel requested", "identity": ""}
        if lease.sub is not None and not lease.sub.conn.closed:
            await lease.sub.conn.push(DELIVER_CANCEL_REQUEST, body, self.push_ack)

    def _on_leadership(self, group: int, leading: bool) -> None:
        """A new partition leader takes over the leases of tasks left started there."""
        if leading and group < self.service.replicator.partitions:
            self._rearm_started(only=group)
            self._wake.set()

    def _rearm_started(self, only: int | None = None) -> None:
        rep = self.service.replicator
        timeout_default = 10.0
        for p in range(rep.partitions):
            if (only is not None and p != only) or not rep.is_leader(p):
                continue
            with rep.store(p).read() as txn:
                for org, ns in reads.shards(txn):
                    for wid, rid in reads.started_tasks(txn, org, ns):
                        run = reads.run(txn, org, ns, wid, rid)
                        if not run:
                            continue
                        wt = run.get("wt")
                        if not wt or wt["state"] != "STARTED":
                            continue
                        key = (org, ns, wid, rid)
                        if key in self.leases:
                            continue  # a worker of this node holds it: its lease is live
                        tok = TaskToken("wt", org, ns, wid, rid, wt["eventId"], wt["attempt"], wt.get("nonce") or "")
                        t = run.get("workflowTaskTimeout", 10_000) / 1000.0 or timeout_default
                        self.leases[key] = Lease(tok, time.monotonic() + t, t, None)

    # ---- subscriptions -------------------------------------------------------

    def subscribe(self, conn: Any, org: str, ns: str, body: Json, kind: str = "workflow") -> Json:
        """0x00A0 / 0x00A1 from a worker connected to this node (relayed to the owner in raft mode)."""
        if self.relay is not None:
            return self.relay.subscribe(conn, org, ns, body, kind)
        return self.subscribe_local(conn, org, ns, body, kind)

    def unsubscribe(self, conn: Any, sid: Any) -> Json:
        if self.relay is not None:
            return self.relay.unsubscribe(conn, sid)
        return self.unsubscribe_local(conn, sid)

    def connection_closed(self, conn: Any) -> None:
        if self.relay is not None:
            self.relay.connection_closed(conn)
        else:
            self.connection_closed_local(conn)

    @staticmethod
    def validate_subscription(body: Json) -> tuple[str, int, frozenset[str] | None]:
        tq = names.check_id(body.get("task_queue"), "task_queue")
        if body.get("identity") not in (None, ""):
            names.check_id(body["identity"], "identity")  # workers are addressed by it (NS/workers/{identity})
        mc = body.get("max_concurrent")
        if not isinstance(mc, int) or isinstance(mc, bool) or not 1 <= mc <= 1000:
            raise ApiError("invalid_argument", "max_concurrent must be an integer from 1 to 1000")
        listed = body.get("types")
        if listed is None:
            return tq, mc, None
        if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
            raise ApiError("invalid_argument", "types must be a list of strings")
        return tq, mc, frozenset(listed)

    def subscribe_local(
        self, conn: Any, org: str, ns: str, body: Json, kind: str = "workflow", sub_id: str | None = None
    ) -> Json:
        """A subscription dispatched from this node (its worker here, or relayed from a peer)."""
        tq, mc, types = self.validate_subscription(body)
        identity = body.get("identity") or conn.session.client_id
        sid = sub_id if sub_id is not None else body.get("subscription_id")
        sub = self.subs.get(sid) if isinstance(sid, str) else None
        if sub is not None and sub.conn is conn and sub.kind == kind:
            sub.types, sub.max_concurrent = types, mc
        else:
            sub = Subscription(sub_id or secrets.token_hex(12), conn, org, ns, tq, types, mc, str(identity), kind=kind,
                               created=self.service.clock())
            build = body.get("build_id")
            if isinstance(build, str) and names.is_id(build):
                sub.build_id = build
            self.subs[sub.id] = sub
        self._wake.set()
        return {"subscription_id": sub.id}

    def unsubscribe_local(self, conn: Any, sid: Any) -> Json:
        sub = self.subs.get(sid) if isinstance(sid, str) else None
        if sub is not None and sub.conn is conn:
            del self.subs[sid]  # tasks already started keep their leases
            self.book.ended(sub)
        return {}

    def remote_done(self, key: TaskKey, nonce: str) -> None:
        """A peer saw this task completed or failed: free the slot its lease holds here."""
        lease = self.leases.get(key)
        if lease is not None and lease.token.nonce == nonce:
            t = lease.token
            self._done(t)

    def remote_heartbeat(self, key: TaskKey, nonce: str) -> None:
        """A peer received a heartbeat for this task: extend the lease held here."""
        lease = self.leases.get(key)
        if lease is not None and lease.token.nonce == nonce:
            lease.deadline = time.monotonic() + lease.timeout_s

    def connection_closed_local(self, conn: Any) -> None:
        """The worker is gone: its in-flight workflow tasks fail with worker_lost (SPEC §5.7)."""
        for sid, sub in list(self.subs.items()):
            if sub.conn is not conn:
                continue
            del self.subs[sid]
            self.book.ended(sub)
            for key in list(sub.in_flight):
                if sub.kind == "activity":
                    held = self.act_leases.pop(key, None)
                    if held is not None:
                        failure = {"message": "worker connection lost", "type": "WorkerLost", "non_retryable": False}
                        self._spawn(self._act_propose("act.fail", held[0], failure=failure, identity=sub.identity))
                    continue
                lease = self.leases.pop(key, None)
                if lease is not None:
                    self._spawn(self._fail(lease.token, "worker_lost", None, sub.identity))
            sub.in_flight.clear()

    # ---- the loop -------------------------------------------------------------

    async def _loop(self) -> None:
        next_rearm = time.monotonic() + REARM_EVERY
        while self._running:
            self._wake.clear()
            try:
                if time.monotonic() >= next_rearm:
                    # Backstop: a task left STARTED by a node that died (or whose
                    # release could not be committed) times out here.
                    next_rearm = time.monotonic() + REARM_EVERY
                    self._rearm_started()
                await self._dispatch_all()
                await self._expire_leases()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatch round failed")
            try:
                await asyncio.wait_for(self._wake.wait(), SCAN_EVERY)
            except TimeoutError:
                pass

    async def _dispatch_all(self) -> None:
        queues: dict[QueueKey, list[Subscription]] = {}
        act_queues: dict[QueueKey, list[Subscription]] = {}
        for each in self.subs.values():
            target = act_queues if each.kind == "activity" else queues
            target.setdefault((each.org, each.ns, each.task_queue), []).append(each)
        for qkey, subs in act_queues.items():
            self._dispatch_activities(qkey, subs)
        for (org, ns, tq), subs in queues.items():
            free = sum(max(0, s.free()) for s in subs)
            if free <= 0 or not self.service.holds(org, ns):
                continue  # (not held here: a relay fallback with no replica reachable)
            now = self.service.clock()
            with self.service.read_txn(org, ns) as txn:
                pending = reads.pending_tasks(txn, org, ns, tq, now, free * 2)
                runs = [reads.run(txn, org, ns, wid, rid) for wid, rid, _ in pending]
            for run in runs:
                if run is None or not run.get("wt") or run["wt"]["state"] != "SCHEDULED":
                    continue
                key = (org, ns, run["workflowId"], run["runId"])
                if key in self._claiming:
                    continue
                sub = self._sticky(subs, run) or self._pick(subs, run["type"])
                if sub is None:
                    continue
                self._claiming.add(key)
                sub.in_flight.add(key)
                self._spawn(self._deliver(sub, key, run))

    @staticmethod
    def _sticky(subs: list[Subscription], run: Json) -> Subscription | None:
        """The subscription that completed the run's previous task, if connected and free (SPEC §5.7)."""
        sticky = run.get("sticky")
        if not sticky:
            return None
        for s in subs:
            if s.id == sticky["sub"]:
                return s if s.free() > 0 and s.handles(run["type"]) and not s.conn.closed else None
        return None

    def _dispatch_activities(self, qkey: QueueKey, subs: list[Subscription]) -> None:
        """Offer the queue's visible activity attempts to its activity subscriptions."""
        org, ns, tq = qkey
        free = sum(max(0, s.free()) for s in subs)
        if free <= 0 or not self.service.holds(org, ns):
            return
        with self.service.read_txn(org, ns) as txn:
            acts = [reads.activity(txn, org, ns, aid, rid)
                    for aid, rid in reads.pending_activities(txn, org, ns, tq, self.service.clock(), free * 2)]
        for act in acts:
            if act is None or act["status"] != "SCHEDULED":
                continue
            key = (org, ns, act["activityId"], act["runId"])
            if key in self._claiming:
                continue
            sub = self._pick(subs, act["type"])
            if sub is None:
                continue
            self._claiming.add(key)
            sub.in_flight.add(key)
            self._spawn(self._deliver_activity(sub, key, act))

    async def _deliver_activity(self, sub: Subscription, key: TaskKey, act: Json) -> None:
        """Lease (act.lease committed) first, then push 0xB1; a refused push releases the attempt."""
        org, ns, aid, rid = key
        nonce = secrets.token_hex(8)
        try:
            try:
                res = await self.service.propose(org, ns, "act.lease", activityId=aid, runId=rid,
                                                 attempt=act["attempt"], identity=sub.identity, nonce=nonce)
            except ApiError:
                sub.in_flight.discard(key)
                return
            act = res["activity"]
            tok = TaskToken("at", org, ns, aid, rid, 0, act["attempt"], nonce)
            self.act_leases[key] = (tok, sub)
        finally:
            self._claiming.discard(key)
        body: Json = {
            "task_token": self.tokens.make(tok), "subscription_id": sub.id, "namespace": ns,
            "workflow_id": "", "run_id": "", "activity_id": aid, "activity_type": act["type"],
            "input": act.get("input"), "attempt": act["attempt"], "scheduled_time_ms": act["startTime"],
            "started_time_ms": act.get("startedTime") or 0, "start_to_close_timeout_ms": act["startToCloseTimeout"],
        }
        if act.get("heartbeatTimeout"):
            body["heartbeat_timeout_ms"] = act["heartbeatTimeout"]
        if act.get("scheduleToCloseTimeout"):
            body["schedule_to_close_deadline_ms"] = act["startTime"] + act["scheduleToCloseTimeout"]
        if act.get("heartbeatDetails") is not None:
            body["heartbeat_details"] = act["heartbeatDetails"]
        status = await sub.conn.push(DELIVER_ACTIVITY_TASK, body, self.push_ack) if not sub.conn.closed else 0
        if status != 200:
            if self.act_leases.pop(key, None) is not None:
                await self._act_propose("act.release", tok)
            sub.in_flight.discard(key)
            self._wake.set()

    async def _act_propose(self, op: str, t: TaskToken, **fields: Any) -> Json | None:
        """A command on the attempt a token names; a stale one is logged, not raised (background use)."""
        try:
            return await self.service.propose(t.org, t.ns, op, activityId=t.wid, runId=t.rid, attempt=t.attempt,
                                              nonce=t.nonce, **fields)
        except ApiError as e:
            if e.code != "not_found":
                log.warning("%s of activity %s/%s not recorded: %s", op, t.ns, t.wid, e.message)
            return None

    def _act_done(self, t: TaskToken) -> None:
        held = self.act_leases.pop((t.org, t.ns, t.wid, t.rid), None)
        if held is not None:
            held[1].in_flight.discard((t.org, t.ns, t.wid, t.rid))
        self._wake.set()

    async def activity_completed(self, org: str, body: Json) -> Json:
        """0x00A3 on an activity token."""
        t = self._token(org, body.get("task_token"), kind="at")
        self._payload(body, "result")  # 413 before anything: the attempt stays as it was
        try:
            await self.service.propose(t.org, t.ns, "act.complete", activityId=t.wid, runId=t.rid,
                                       attempt=t.attempt, nonce=t.nonce, result=body.get("result"),
                                       identity=body.get("identity") or "")
        finally:
            self._act_done(t)
        return {}

    async def activity_failed(self, org: str, body: Json) -> Json:
        """0x00A4: the retry rule; ``CanceledError`` after a cancel request closes it CANCELED."""
        t = self._token(org, body.get("task_token"), kind="at")
        failure = body.get("failure")
        if not isinstance(failure, dict):
            raise ApiError("invalid_argument", "failure must be a map")
        self._payload(body, "failure")
        try:
            await self.service.propose(t.org, t.ns, "act.fail", activityId=t.wid, runId=t.rid,
                                       attempt=t.attempt, nonce=t.nonce, failure=failure,
                                       identity=body.get("identity") or "")
        finally:
            self._act_done(t)
        return {}

    def _pick(self, subs: list[Subscription], wtype: str) -> Subscription | None:
        ok = [s for s in subs if s.free() > 0 and s.handles(wtype) and not s.conn.closed]
        if not ok:
            return None
        return ok[next(self._rr) % len(ok)]

    async def _deliver(self, sub: Subscription, key: TaskKey, run: Json) -> None:
        org, ns, wid, rid = key
        wt = run["wt"]
        nonce = secrets.token_hex(8)
        try:
            try:
                res = await self.service.propose(
                    org, ns, "wt.start", workflowId=wid, runId=rid, scheduledEventId=wt["eventId"],
                    attempt=wt["attempt"], identity=sub.identity, subscriptionId=sub.id, nonce=nonce,
                )
            except ApiError:
                sub.in_flight.discard(key)
                return
            run = res["run"]
            tok = TaskToken("wt", org, ns, wid, rid, wt["eventId"], wt["attempt"], nonce)
            timeout_s = run["workflowTaskTimeout"] / 1000.0
            self.leases[key] = Lease(tok, time.monotonic() + timeout_s, timeout_s, sub)
        finally:
            self._claiming.discard(key)
        body = self._task_body(sub, run, tok)
        status = await sub.conn.push(DELIVER_WORKFLOW_TASK, body, self.push_ack) if not sub.conn.closed else 0
        if status != 200:
            lease = self.leases.pop(key, None)
            sub.in_flight.discard(key)
            if lease is not None:
                await self._fail(tok, "push_refused", None, sub.identity)
            self._wake.set()

    def _task_body(self, sub: Subscription, run: Json, tok: TaskToken) -> Json:
        """The 0xB0 body: the whole history, or only what is new to a sticky subscription (SPEC §5.6)."""
        org, ns = tok.org, tok.ns
        sticky = run.get("sticky")
        after = sticky["started"] if sticky and sticky["sub"] == sub.id else 0
        with self.service.read_txn(org, ns) as txn:
            events, _ = reads.history(txn, org, ns, run["runId"], after, False, MAX_HISTORY, run["historyLength"])
        wt = run["wt"]
        return {
            "task_token": self.tokens.make(tok),
            "subscription_id": sub.id,
            "namespace": ns,
            "workflow_id": run["workflowId"],
            "run_id": run["runId"],
            "workflow_type": run["type"],
            "task_queue": run["taskQueue"],
            "input": run.get("input"),
            "attempt": wt["attempt"],
            "workflow_attempt": run["attempt"],
            "started_event_id": wt["startedEventId"],
            "previous_started_event_id": after,
            "full_history": after == 0,
            "history_truncated": run["historyLength"] - after > MAX_HISTORY,
            "history": [render.event(e) for e in events],
            "task_timeout_ms": run["workflowTaskTimeout"],
            "cancel_requested": run["status"] == "CANCELING",
        }

    async def _expire_leases(self) -> None:
        now = time.monotonic()
        for key, lease in list(self.leases.items()):
            if lease.deadline > now:
                continue
            self.leases.pop(key, None)
            if lease.sub is not None:
                lease.sub.in_flight.discard(key)
            t = lease.token
            self._spawn(self._propose_release(
                t, "wt.timeout", workflowId=t.wid, runId=t.rid, scheduledEventId=t.scheduled_event_id,
                attempt=t.attempt, nonce=t.nonce,
            ))

    # ---- worker responses -------------------------------------------------------

    def _payload(self, body: Json, field: str) -> Any:
        """``body[field]`` from a worker, held to ``limits.max_payload`` (413 when larger)."""
        return check_payload(body.get(field), field, self.service.max_payload)

    def _token(self, org: str, token: Any, kind: str = "wt") -> TaskToken:
        t = self.tokens.read(token)
        if t.org != org:
            raise ApiError("permission_denied", "the task token belongs to another org")
        if t.kind != kind:
            raise ApiError("invalid_argument", f"not a {'workflow' if kind == 'wt' else 'activity'} task token")
        return t

    def _done(self, t: TaskToken) -> None:
        key = (t.org, t.ns, t.wid, t.rid)
        lease = self.leases.pop(key, None)
        if lease is not None and lease.sub is not None:
            lease.sub.in_flight.discard(key)
            self._last_holder[key] = lease.sub  # queries go here once the task is done
            if len(self._last_holder) > 100_000:
                self._last_holder.pop(next(iter(self._last_holder)))
        self._wake.set()

    # ---- live activities (SPEC §5.6, 0x006B / 0xB2) ----------------------------------

    async def schedule_activity(self, org: str, ns: str, body: Json) -> Json:
        """0x006B: schedule an activity on behalf of the caller's in-flight workflow task."""
        t = self._token(org, body.get("task_token"))
        atype = body.get("activity_type")
        names.check_id(atype, "activity_type")
        aid = body.get("activity_id") or f"{atype}-{secrets.token_hex(4)}"
        names.check_id(aid, "activity_id")
        tq = body.get("task_queue")
        if tq is not None:
            names.check_id(tq, "task_queue")
        start: Json = {"type": atype, "activityId": aid, "taskQueue": tq, "input": self._payload(body, "input")}
        for src, dst in (("schedule_to_close_ms", "scheduleToCloseTimeout"),
                         ("schedule_to_start_ms", "scheduleToStartTimeout"),
                         ("start_to_close_ms", "startToCloseTimeout"), ("heartbeat_ms", "heartbeatTimeout")):
            v = body.get(src)
            if v is not None:
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise ApiError("invalid_argument", f"{src} must be a non-negative integer")
                if v:
                    start[dst] = v
        try:
            rp = task_commands.retry_policy(body.get("retry_policy"))
        except task_commands.BadCommand as e:
            raise ApiError("invalid_argument", str(e)) from None
        if rp is not None:
            start["retryPolicy"] = rp
        res = await self.service.propose(
            t.org, t.ns, "act.schedule", workflowId=t.wid, runId=t.rid, scheduledEventId=t.scheduled_event_id,
            attempt=t.attempt, nonce=t.nonce, activityId=aid, start=start,
            defaultStartToClose=self.node.cfg.timeouts.activity_start_to_close,
        )
        act = res["activity"]
        if act["status"] not in ("SCHEDULED", "STARTED"):  # already closed: its outcome at once
            self._spawn(self._push_activity_result(t.org, t.ns, t.wid, t.rid, aid, act["runId"]))
        return {"activity_id": aid, "scheduled_event_id": act["workflow"]["scheduledEventId"]}

    async def _push_activity_result(self, org: str, ns: str, wid: str, rid: str, aid: str, arid: str) -> None:
        lease = self.leases.get((org, ns, wid, rid))
        if lease is None or lease.sub is None or lease.sub.conn.closed or not self.service.holds(org, ns):
            return  # not held here: the close was recorded in history (and is a trigger event)
        with self.service.read_txn(org, ns) as txn:
            act = reads.activity(txn, org, ns, aid, arid)
        if act is None:
            return
        body: Json = {"workflow_task_token": self.tokens.make(lease.token), "workflow_id": wid, "run_id": rid,
                      "activity_id": aid, "scheduled_event_id": act["workflow"]["scheduledEventId"]}
        status = act["status"]
        if status == "COMPLETED":
            body["result"] = act.get("result")
        elif status == "CANCELED":
            body["canceled"] = True
        else:
            body["failure"] = act.get("lastFailure") or {"message": status.lower()}
            body["timed_out"] = status == "TIMED_OUT"
        await lease.sub.conn.push(DELIVER_ACTIVITY_RESULT, body, self.push_ack)

    # ---- queries (SPEC §5.4) -----------------------------------------------------

    def _query_target(self, org: str, ns: str, run: Json) -> Subscription | None:
        key = (org, ns, run["workflowId"], run["runId"])
        lease = self.leases.get(key)
        if lease is not None and lease.sub is not None and not lease.sub.conn.closed:
            return lease.sub
        last = self._last_holder.get(key)
        if last is not None and last.id in self.subs and not last.conn.closed:
            return last
        for sub in self.subs.values():
            if (sub.org, sub.ns, sub.task_queue) == (org, ns, run["taskQueue"]) and sub.handles(run["type"]):
                if not sub.conn.closed:
                    return sub
        return None

    async def query(self, org: str, ns: str, run: Json, qtype: str, args: Any, timeout_s: float) -> Any:
        """An HTTP query (SPEC §5.4): asked through the queue's owner in raft mode."""
        if self.relay is not None:
            return await self.relay.query(org, ns, run, qtype, args, timeout_s)
        return await self.query_local(org, ns, run, qtype, args, timeout_s)

    async def query_local(self, org: str, ns: str, run: Json, qtype: str, args: Any, timeout_s: float) -> Any:
        sub = self._query_target(org, ns, run)
        if sub is None:
            raise ApiError("no_workers", "no worker of this node can answer queries for this run", retry_after=1)
        while len(self._queries) >= MAX_PENDING_QUERIES:  # oldest evicted first
            _, old = next(iter(self._queries.items()))
            self._queries.pop(next(iter(self._queries)))
            if not old.done():
                old.set_exception(ApiError("unavailable", "too many pending queries", retry_after=1))
        qid = secrets.token_hex(12)
        token = self.tokens.make(TaskToken("q", org, ns, run["workflowId"], run["runId"], 0, 0, qid))
        fut: asyncio.Future[tuple[Any, Any]] = asyncio.get_running_loop().create_future()
        self._queries[qid] = fut
        body: Json = {"query_token": token, "namespace": ns, "workflow_id": run["workflowId"],
                      "run_id": run["runId"], "workflow_type": run["type"], "query_type": qtype, "args": args}
        lease = self.leases.get((org, ns, run["workflowId"], run["runId"]))
        if lease is not None:
            body["task_token"] = self.tokens.make(lease.token)
        started = time.monotonic()
        try:
            status = await sub.conn.push(DELIVER_QUERY, body, min(timeout_s, self.push_ack))
            if status != 200:
                raise ApiError("no_workers", "the worker refused the query", retry_after=1)
            left = max(0.0, timeout_s - (time.monotonic() - started))
            try:
                result, error = await asyncio.wait_for(asyncio.shield(fut), left)
            except TimeoutError:
                raise ApiError("timeout", f"no answer to the query within {timeout_s:g}s") from None
        finally:
            self._queries.pop(qid, None)
        if error is not None:
            raise ApiError("invalid_argument", str(error))
        return result

    def answer_query(self, org: str, body: Json) -> Json:
        """0x00C4 RespondQuery: for a query this node pushed, or one a peer pushed through here."""
        try:
            return self.answer_query_local(org, body)
        except ApiError as e:
            if e.code == "not_found" and self.relay is not None and self.relay.forward_answer(org, body):
                return {}
            raise

    def answer_query_local(self, org: str, body: Json) -> Json:
        t = self.tokens.read(body.get("query_token"))
        if t.org != org:
            raise ApiError("permission_denied", "the query token belongs to another org")
        fut = self._queries.get(t.nonce) if t.kind == "q" else None
        if fut is None or fut.done():
            raise ApiError("not_found", "unknown or expired query token")
        error = body.get("error")
        fut.set_result((body.get("result"), error if error is None else str(error)))
        return {}

    async def completed(self, org: str, body: Json) -> Json:
        t = self._token(org, body.get("task_token"))
        raw = body.get("commands")
        checked = task_commands.normalize_checked(
            [] if raw is None else raw, lambda sa, _nulls: self.service.workflows.check_search_attrs(t.org, t.ns, sa),
            self.service.max_payload)
        try:
            await self.service.propose(
                t.org, t.ns, "wt.complete", workflowId=t.wid, runId=t.rid, scheduledEventId=t.scheduled_event_id,
                attempt=t.attempt, nonce=t.nonce, identity=body.get("identity") or "", commands=checked.commands,
                badCommand=checked.bad_index, defaultStartToClose=self.node.cfg.timeouts.activity_start_to_close,
                cancelAckMs=self.node.cfg.timeouts.cancel_ack,  # children cancelled by the close policy
            )
        except ApiError as e:
            # A payload over limits.max_payload: the task failed (bad_command) as for any invalid
            # command, and nothing of the list was stored; the worker is told why, as 413.
            too_large = checked.error
            if too_large is not None and e.code == "invalid_argument":
                raise ApiError("too_large", f"command {checked.bad_index}: {too_large.message}",
                               {**(too_large.details or {}), "command_index": checked.bad_index}) from None
            raise
        finally:
            self._done(t)
            if self.relay is not None:
                self.relay.notify_done(t.org, t.ns, t.wid, t.rid, t.nonce)
        return {}

    async def _fail(self, t: TaskToken, cause: str, failure: Any, identity: str) -> None:
        await self._propose_release(
            t, "wt.fail", workflowId=t.wid, runId=t.rid, scheduledEventId=t.scheduled_event_id,
            attempt=t.attempt, nonce=t.nonce, cause=cause, failure=failure, identity=identity,
        )

    async def _propose_release(self, t: TaskToken, op: str, **fields: Any) -> None:
        """Commit a command that makes a task available again, retrying while its shard is unavailable.

        Dropping it would strand the task STARTED with no lease anywhere; a
        task that is no longer current (``not_found``) needs nothing.
        """
        deadline = time.monotonic() + RETRY_FOR
        delay = 0.1
        while True:
            try:
                await self.service.propose(t.org, t.ns, op, **fields)
                return
            except ApiError as e:
                if e.code != "unavailable" or time.monotonic() >= deadline or not self._running:
                    if e.code != "not_found":
                        log.warning("%s of %s/%s not recorded: %s", op, t.ns, t.wid, e.message)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def failed(self, org: str, body: Json) -> Json:
        t = self._token(org, body.get("task_token"))
        cause = body.get("cause") if isinstance(body.get("cause"), str) else "worker_failed"
        self._payload(body, "failure")
        try:
            await self.service.propose(
                t.org, t.ns, "wt.fail", workflowId=t.wid, runId=t.rid, scheduledEventId=t.scheduled_event_id,
                attempt=t.attempt, nonce=t.nonce, cause=cause or "worker_failed", failure=body.get("failure"),
                identity=body.get("identity") or "",
            )
        finally:
            self._done(t)
            if self.relay is not None:
                self.relay.notify_done(t.org, t.ns, t.wid, t.rid, t.nonce)
        return {}

    async def _activity_heartbeat(self, t: TaskToken, body: Json) -> Json:
        """0x00A5 on an activity: persisted at most every ``HEARTBEAT_PERSIST`` (SPEC §5.7).

        A heartbeat is committed when the last one committed for this attempt
        is older than min(10 s, heartbeatTimeout / 2), so the durable heartbeat
        deadline is always pushed out before it can pass; in between, the
        token is checked against this node's replica and the latest details
        wait for the next commit.
        """
        key = (t.org, t.ns, t.wid, t.rid)
        self._payload(body, "details")
        act = await self.service.read(t.org, t.ns, "activity", t.wid, t.rid)
        if (act is None or act["status"] != "STARTED" or act["attempt"] != t.attempt
                or act.get("nonce") != t.nonce):
            self._hb_persisted.pop(key, None)
            raise ApiError("not_found", "activity task not current")
        every = HEARTBEAT_PERSIST
        if act.get("heartbeatTimeout"):
            every = min(every, act["heartbeatTimeout"] / 2000.0)
        now = time.monotonic()
        last = self._hb_persisted.get(key)
        if last is not None and now - last < every:
            return {"cancel_requested": bool(act.get("cancelRequested"))}
        res = await self.service.propose(t.org, t.ns, "act.heartbeat", activityId=t.wid, runId=t.rid,
                                         attempt=t.attempt, nonce=t.nonce, details=body.get("details"))
        self._hb_persisted[key] = now
        while len(self._hb_persisted) > 100_000:
            self._hb_persisted.pop(next(iter(self._hb_persisted)))
        return {"cancel_requested": bool(res.get("cancelRequested"))}

    async def heartbeat(self, org: str, body: Json) -> Json:
        if isinstance(body.get("task_token"), str):
            peek = self.tokens.read(body["task_token"])
            if peek.kind == "at":
                return await self._activity_heartbeat(self._token(org, body["task_token"], kind="at"), body)
        t = self._token(org, body.get("task_token"))
        run = await self.service.read(t.org, t.ns, "run", t.wid, t.rid)
        wt = run.get("wt") if run else None
        if (
            run is None or run["status"] not in ("RUNNING", "CANCELING") or not wt or wt["state"] != "STARTED"
            or wt["eventId"] != t.scheduled_event_id or wt["attempt"] != t.attempt or wt.get("nonce") != t.nonce
        ):
            raise ApiError("not_found", "task not current")
        lease = self.leases.get((t.org, t.ns, t.wid, t.rid))
        if lease is not None:
            lease.deadline = time.monotonic() + lease.timeout_s
        if self.relay is not None:
            self.relay.notify_heartbeat(t.org, t.ns, t.wid, t.rid, t.nonce)
        return {"cancel_requested": run["status"] == "CANCELING"}
