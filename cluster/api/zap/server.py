"""The ZAP listener of a node (SPEC §8): binary requests onto the service layer.

One asyncio TCP server on the node's loop. Each connection has one reader
task that parses frames and enforces §8.1, and one task per request, so the
requests of a connection run concurrently and may be answered out of order.
Responses are written under a per-connection lock (a frame is never
interleaved with another) with a write deadline, so a client that stops
reading stalls only its own connection; a malformed frame closes only its own
connection; every request gets exactly one response.

This module only translates: snake_case ZAP fields and ``*_ms`` integers into
the camelCase HTTP-shaped bodies that ``cluster.service.core.Service`` validates,
and its records back into the snake_case wrappers of §8.4 (records inside
keep their camelCase form, §0). The rules live in the service, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hanzo_tasks.cluster.auth import DEV_CALLER, Caller, role_allows
from hanzo_tasks.protocol import names, wire
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.durations import format_duration
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.protocol.fields import FieldReader
from hanzo_tasks.protocol.names import ADMIN, DEVELOPER, VIEWER
from hanzo_tasks.protocol.schedule_spec import SpecError, classify
from hanzo_tasks.replication import NotReplica

log = logging.getLogger("hanzo_tasks.zap")

Json = dict[str, Any]

WRITE_TIMEOUT = 30.0
"""A response not taken by the client within this time closes its connection."""
EOF_DRAIN_TIMEOUT = 60.0
"""After the client half-closes, in-flight requests get this long to be answered."""
LINGER_TIMEOUT = 2.0
"""Before closing after a final error response, input is discarded this long, so
that the kernel does not reset the connection (and drop that response) because
unread bytes were pending."""


# ---------------------------------------------------------------------------
# field helpers: ZAP (snake_case, *_ms ints) -> service bodies


def _bad(message: str) -> ApiError:
    return ApiError("invalid_argument", message)


_FIELDS = FieldReader(_bad)
_str = _FIELDS.text
_int = _FIELDS.integer
_bool = _FIELDS.boolean
_map = _FIELDS.mapping_of


def _ms(body: Json, name: str) -> str | None:
    """A ``*_ms`` integer as the service's duration string (the service checks ranges)."""
    v = body.get(name)
    return None if v is None else _duration_text(v, name)


def _duration_text(v: Any, what: str) -> str:
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad(f"{what} must be an integer of milliseconds")
    return format_duration(v)


def _run_id(body: Json) -> str | None:
    rid = _str(body, "run_id")
    return names.check_run_id(rid) if rid else None


def _page(body: Json) -> tuple[int, str | None]:
    size = _int(body, "page_size", lo=1, hi=1000)
    token = _str(body, "next_page_token")
    return (100 if size is None else size), (token or None)


def _copy_str(src: Json, dst: Json, pairs: tuple[tuple[str, str], ...]) -> None:
    for zap_name, camel in pairs:
        v = _str(src, zap_name)
        if v is not None:
            dst[camel] = v


def _retry_policy(v: Any) -> Json | None:
    """``{initial_interval_ms, backoff_coefficient, ...}`` -> the §5.1 RetryPolicy."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _bad("retry_policy must be a map")
    return wire.to_http(v, wire.RETRY_POLICY, lambda ms, f: _duration_text(ms, f"retry_policy.{f.snake}"))


def _start_body(b: Json) -> Json:
    """StartWorkflow fields (0x0060) -> the service's StartWorkflow body (§5.3)."""
    out: Json = {"workflowType": {"name": _str(b, "workflow_type", required=True)}}
    tq = _str(b, "task_queue")
    if tq:
        out["taskQueue"] = {"name": tq}
    _copy_str(b, out, (("workflow_id", "workflowId"), ("request_id", "requestId"), ("identity", "identity")))
    rid = _run_id(b)
    if rid:
        out["runId"] = rid
    if "input" in b:
        out["input"] = b["input"]
    if b.get("id_conflict_policy") is not None:
        out["workflowIdConflictPolicy"] = b["id_conflict_policy"]
    for zap_name, camel in (
        ("execution_timeout_ms", "workflowExecutionTimeout"),
        ("run_timeout_ms", "workflowRunTimeout"),
        ("task_timeout_ms", "workflowTaskTimeout"),
    ):
        d = _ms(b, zap_name)
        if d is not None:
            out[camel] = d
    rp = _retry_policy(b.get("retry_policy"))
    if rp is not None:
        out["retryPolicy"] = rp
    memo = _map(b, "memo")
    if memo is not None:
        out["memo"] = memo
    sa = _map(b, "search_attributes")
    if sa is not None:
        out["searchAttributes"] = sa
    return out


def _started(rec: Json) -> Json:
    return {
        "workflow_id": rec["execution"]["workflowId"],
        "run_id": rec["execution"]["runId"],
        "started": rec["started"],
    }


# ---------------------------------------------------------------------------
# opcode handlers


@dataclass(frozen=True, slots=True)
class Call:
    """One request as a handler sees it: the stored org and the resolved namespace."""

    node: Any
    org: str
    ns: str
    body: Json
    conn: Any = None

    @property
    def service(self) -> Any:
        return self.node.service


Handler = Callable[[Call], Awaitable[Json]]


async def op_health(c: Call) -> Json:
    return {"service": "tasks", "status": "ok", "node_id": c.node.node_id, "namespace": c.ns}


async def op_submit_task(c: Call) -> Json:
    b = c.body
    body: Json = {
        "workflowType": {"name": _str(b, "task_type", required=True)},
        "taskQueue": {"name": _str(b, "task_queue") or "default"},
    }
    if "payload" in b:
        body["input"] = b["payload"]
    _copy_str(b, body, (("workflow_id", "workflowId"), ("request_id", "requestId")))
    rp = _retry_policy(b.get("retry_policy"))
    if rp is not None:
        body["retryPolicy"] = rp
    return _started(await c.service.workflows.start_workflow(c.org, c.ns, body))


def recurring_spec(name: str | None, spec: Any) -> Json:
    """A duration or cron string, classified as SPEC §2.2 says, as a ScheduleSpec
    (§5.8). Shared with MCP ``create_schedule`` so both read a spec string alike."""
    if not isinstance(spec, str):
        raise _bad("spec must be a string (a duration or a cron expression)")
    try:
        kind, value = classify(spec)
    except SpecError as e:
        raise _bad(f'spec for "{name}": {e}') from None
    if kind == "interval":
        return {"interval": [{"interval": format_duration(int(value))}]}
    return {"cronString": [value]}


async def op_schedule_recurring(c: Call) -> Json:
    b = c.body
    name = _str(b, "name", required=True)
    sched_spec = recurring_spec(name, b.get("spec"))
    action: Json = {"workflowType": {"name": name}, "taskQueue": {"name": _str(b, "task_queue") or "default"}}
    if "input" in b:
        action["input"] = b["input"]
    policies: Json = {"overlapPolicy": b["overlap_policy"] if b.get("overlap_policy") is not None else "SKIP"}
    body: Json = {"scheduleId": name, "spec": sched_spec, "action": action, "policies": policies}
    # Create first, upsert on conflict: the service reports no "created" flag,
    # and this way it is exact (a create either made it or found it).
    try:
        rec = await c.service.schedules.create_schedule(c.org, c.ns, body, upsert=False)
        created = True
    except ApiError as e:
        if e.code != "already_exists":
            raise
        rec = await c.service.schedules.create_schedule(c.org, c.ns, body, upsert=True)
        created = False
    return {"schedule_id": rec.get("scheduleId", name), "created": created}


async def op_start(c: Call) -> Json:
    return _started(await c.service.workflows.start_workflow(c.org, c.ns, _start_body(c.body)))


async def op_signal_with_start(c: Call) -> Json:
    b = c.body
    body = _start_body(b)
    body["signalName"] = _str(b, "signal_name", required=True)
    if "signal_input" in b:
        body["signalInput"] = b["signal_input"]
    return _started(await c.service.workflows.start_workflow(c.org, c.ns, body, signal=True))


def _wid(c: Call) -> str:
    return _str(c.body, "workflow_id", required=True)  # type: ignore[return-value]


async def op_signal(c: Call) -> Json:
    b = c.body
    body: Json = {"name": _str(b, "signal_name", required=True)}
    if "input" in b:
        body["input"] = b["input"]
    _copy_str(b, body, (("identity", "identity"), ("request_id", "requestId")))
    await c.service.workflows.signal_workflow(c.org, c.ns, _wid(c), _run_id(b), body)
    return {}


def _reason_body(b: Json) -> Json:
    body: Json = {}
    _copy_str(b, body, (("reason", "reason"), ("identity", "identity")))
    return body


async def op_cancel(c: Call) -> Json:
    rec = await c.service.workflows.cancel_workflow(c.org, c.ns, _wid(c), _run_id(c.body), _reason_body(c.body))
    return {"execution": rec}


async def op_terminate(c: Call) -> Json:
    rec = await c.service.workflows.terminate_workflow(c.org, c.ns, _wid(c), _run_id(c.body), _reason_body(c.body))
    return {"execution": rec}


async def op_describe(c: Call) -> Json:
    d = await c.service.workflows.describe_workflow(c.org, c.ns, _wid(c), _run_id(c.body))
    out: Json = {
        "execution": d["workflowExecutionInfo"],
        "execution_config": d["executionConfig"],
        "pending_activities": d["pendingActivities"],
    }
    if d.get("pendingWorkflowTask") is not None:
        out["pending_workflow_task"] = d["pendingWorkflowTask"]
    return out


async def op_list_workflows(c: Call) -> Json:
    size, token = _page(c.body)
    res = await c.service.workflows.list_workflows(c.org, c.ns, _str(c.body, "query"), size, token)
    return {"executions": res["executions"], "next_page_token": res["nextPageToken"]}


async def op_history(c: Call) -> Json:
    b = c.body
    size, token = _page(b)
    after = _int(b, "after_event_id", lo=0) or 0
    res = await c.service.workflows.history(c.org, c.ns, _wid(c), _run_id(b), after, bool(_bool(b, "reverse")), size, token)
    return {"events": res["events"], "next_page_token": res["nextPageToken"]}


async def op_query(c: Call) -> Json:
    b = c.body
    body: Json = {"queryType": _str(b, "query_type", required=True)}
    if "args" in b:
        body["args"] = b["args"]
    timeout = _ms(b, "timeout_ms")
    if timeout is not None:
        body["timeout"] = timeout
    res = await c.service.workflows.query_metadata(c.org, c.ns, _wid(c), _run_id(b), body)
    return {"result": res["queryResult"]}


async def op_reset(c: Call) -> Json:
    b = c.body
    event_id = b.get("event_id")
    if not isinstance(event_id, int) or isinstance(event_id, bool):
        raise _bad("event_id must be an integer")
    body: Json = {"eventId": event_id}
    rid = _run_id(b)
    if rid:
        body["runId"] = rid
    _copy_str(b, body, (("reason", "reason"), ("identity", "identity"), ("request_id", "requestId")))
    return {"execution": await c.service.workflows.reset_workflow(c.org, c.ns, _wid(c), body)}


def _sid(c: Call) -> str:
    return _str(c.body, "schedule_id", required=True)  # type: ignore[return-value]


def _schedule_map(c: Call) -> Json:
    s = _map(c.body, "schedule")
    if s is None:
        raise _bad("schedule is required")
    return s


async def op_create_schedule(c: Call) -> Json:
    body = dict(_schedule_map(c))
    body.pop("info", None)
    body["scheduleId"] = _sid(c)
    upsert = bool(_bool(c.body, "upsert"))
    return {"schedule": await c.service.schedules.create_schedule(c.org, c.ns, body, upsert=upsert)}


async def op_delete_schedule(c: Call) -> Json:
    await c.service.schedules.delete_schedule(c.org, c.ns, _sid(c))
    return {}


async def op_list_schedules(c: Call) -> Json:
    size, token = _page(c.body)
    res = await c.service.schedules.list_schedules(c.org, c.ns, size, token)
    return {"schedules": res["schedules"], "next_page_token": res["nextPageToken"]}


async def _pause(c: Call, paused: bool) -> Json:
    sid = _sid(c)
    body: Json = {}
    _copy_str(c.body, body, (("note", "note"),))
    await c.service.schedules.pause_schedule(c.org, c.ns, sid, body, paused)
    return {"schedule": await c.service.schedules.describe_schedule(c.org, c.ns, sid)}


async def op_pause_schedule(c: Call) -> Json:
    paused = _bool(c.body, "paused")
    return await _pause(c, True if paused is None else paused)


async def op_unpause_schedule(c: Call) -> Json:
    return await _pause(c, False)


async def op_trigger_schedule(c: Call) -> Json:
    b = c.body
    body: Json = {}
    _copy_str(b, body, (("request_id", "requestId"),))
    if b.get("overlap_policy") is not None:
        body["overlapPolicy"] = b["overlap_policy"]
    res = await c.service.schedules.trigger_schedule(c.org, c.ns, _sid(c), body)
    out: Json = {"status": res["status"]}
    ex = res.get("execution")
    if ex is not None:
        out["workflow_id"] = ex["execution"]["workflowId"]
        out["run_id"] = ex["execution"]["runId"]
    return out


async def op_describe_schedule(c: Call) -> Json:
    return {"schedule": await c.service.schedules.describe_schedule(c.org, c.ns, _sid(c))}


async def op_update_schedule(c: Call) -> Json:
    body = dict(_schedule_map(c))
    body.pop("info", None)
    return {"schedule": await c.service.schedules.update_schedule(c.org, c.ns, _sid(c), body)}


async def op_register_namespace(c: Call) -> Json:
    b = c.body
    info: Json = {"name": _str(b, "name", required=True)}
    _copy_str(b, info, (("description", "description"), ("owner_email", "ownerEmail")))
    config: Json = {}
    retention = _ms(b, "retention_ms")
    if retention is not None:
        config["workflowExecutionRetentionTtl"] = retention
    aps = _int(b, "aps_limit")
    if aps is not None:
        config["apsLimit"] = aps
    cd = _map(b, "custom_data")
    if cd is not None:
        config["customData"] = cd
    return {"namespace": await c.service.namespaces.register_namespace(c.org, {"namespaceInfo": info, "config": config})}


def _ns_name(c: Call) -> str:
    """DescribeNamespace's ``name``; absent means the request's namespace."""
    return _str(c.body, "name") or c.ns


async def op_describe_namespace(c: Call) -> Json:
    return {"namespace": await c.service.namespaces.get_namespace(c.org, _ns_name(c))}


async def op_list_namespaces(c: Call) -> Json:
    size, token = _page(c.body)
    res = await c.service.namespaces.list_namespaces(c.org, size, token)
    return {"namespaces": res["namespaces"], "next_page_token": res["nextPageToken"]}


def _dispatcher(c: Call) -> Any:
    d = getattr(c.node, "dispatcher", None)
    if d is None:
        raise ApiError("unavailable", "dispatch is not running on this node", retry_after=1)
    return d


async def op_subscribe_workflow_tasks(c: Call) -> Json:
    await c.service.ensure_namespace(c.org, c.ns)
    return _dispatcher(c).subscribe(c.conn, c.org, c.ns, c.body)


async def op_subscribe_activity_tasks(c: Call) -> Json:
    await c.service.ensure_namespace(c.org, c.ns)
    return _dispatcher(c).subscribe(c.conn, c.org, c.ns, c.body, kind="activity")


async def op_activity_task_completed(c: Call) -> Json:
    return await _dispatcher(c).activity_completed(c.org, c.body)


async def op_activity_task_failed(c: Call) -> Json:
    return await _dispatcher(c).activity_failed(c.org, c.body)


async def op_unsubscribe(c: Call) -> Json:
    return _dispatcher(c).unsubscribe(c.conn, c.body.get("subscription_id"))


async def op_workflow_task_completed(c: Call) -> Json:
    return await _dispatcher(c).completed(c.org, c.body)


async def op_workflow_task_failed(c: Call) -> Json:
    return await _dispatcher(c).failed(c.org, c.body)


async def op_heartbeat(c: Call) -> Json:
    return await _dispatcher(c).heartbeat(c.org, c.body)


async def op_schedule_activity(c: Call) -> Json:
    return await _dispatcher(c).schedule_activity(c.org, c.ns, c.body)


async def op_respond_query(c: Call) -> Json:
    return _dispatcher(c).answer_query(c.org, c.body)


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    role: str
    """The least role a session needs when auth is on (SPEC §5.13; the roles of the matching HTTP routes)."""
    read: bool = False
    """Reads pass the service's read barrier first, as HTTP GETs do (§4.1 "Reads")."""
    barrier_ns: Callable[[Call], str] | None = None


ROUTES: dict[int, Route] = {
    Z.Op.SubmitTask: Route(op_submit_task, DEVELOPER),
    Z.Op.ScheduleRecurring: Route(op_schedule_recurring, ADMIN),
    Z.Op.StartWorkflow: Route(op_start, DEVELOPER),
    Z.Op.SignalWorkflow: Route(op_signal, DEVELOPER),
    Z.Op.CancelWorkflow: Route(op_cancel, DEVELOPER),
    Z.Op.TerminateWorkflow: Route(op_terminate, DEVELOPER),
    Z.Op.DescribeWorkflow: Route(op_describe, VIEWER, read=True),
    Z.Op.ListWorkflows: Route(op_list_workflows, VIEWER, read=True),
    Z.Op.GetWorkflowHistory: Route(op_history, VIEWER, read=True),
    Z.Op.QueryWorkflow: Route(op_query, VIEWER, read=True),
    Z.Op.ResetWorkflow: Route(op_reset, DEVELOPER),
    Z.Op.SignalWithStart: Route(op_signal_with_start, DEVELOPER),
    Z.Op.CreateSchedule: Route(op_create_schedule, ADMIN),
    Z.Op.DeleteSchedule: Route(op_delete_schedule, ADMIN),
    Z.Op.ListSchedules: Route(op_list_schedules, VIEWER, read=True),
    Z.Op.PauseSchedule: Route(op_pause_schedule, ADMIN),
    Z.Op.UnpauseSchedule: Route(op_unpause_schedule, ADMIN),
    Z.Op.TriggerSchedule: Route(op_trigger_schedule, ADMIN),
    Z.Op.DescribeSchedule: Route(op_describe_schedule, VIEWER, read=True),
    Z.Op.UpdateSchedule: Route(op_update_schedule, ADMIN),
    Z.Op.RegisterNamespace: Route(op_register_namespace, ADMIN),
    Z.Op.DescribeNamespace: Route(op_describe_namespace, VIEWER, read=True, barrier_ns=_ns_name),
    Z.Op.ListNamespaces: Route(op_list_namespaces, VIEWER),
    Z.Op.Health: Route(op_health, VIEWER),
    Z.Op.SubscribeWorkflowTasks: Route(op_subscribe_workflow_tasks, DEVELOPER),
    Z.Op.Unsubscribe: Route(op_unsubscribe, DEVELOPER),
    Z.Op.SubscribeActivityTasks: Route(op_subscribe_activity_tasks, DEVELOPER),
    Z.Op.RespondActivityTaskCompleted: Route(op_activity_task_completed, DEVELOPER),
    Z.Op.RespondActivityTaskFailed: Route(op_activity_task_failed, DEVELOPER),
    Z.Op.RespondWorkflowTaskCompleted: Route(op_workflow_task_completed, DEVELOPER),
    Z.Op.RespondWorkflowTaskFailed: Route(op_workflow_task_failed, DEVELOPER),
    Z.Op.RecordHeartbeat: Route(op_heartbeat, DEVELOPER),
    Z.Op.RespondQuery: Route(op_respond_query, DEVELOPER),
    Z.Op.ScheduleActivity: Route(op_schedule_activity, DEVELOPER),
}
"""Every request opcode but Hello (handled by the connection itself)."""


# ---------------------------------------------------------------------------
# connections


@dataclass
class Session:
    """What HELLO established on a connection."""

    hello: bool = False
    client_id: str = ""
    caller: Caller = DEV_CALLER
    """Who HELLO's token proved the caller to be (the dev caller while auth is off)."""
    namespace: str | None = None
    sdk: tuple[str, str] = ("", "")

    @property
    def org(self) -> str:
        """The caller's org as the API shows it: "" (the dev org) while auth is off."""
        return self.caller.org


def _label(opcode: int) -> str:
    """The metrics label of an opcode: its name, never an unbounded number."""
    return Z.OPCODES.get(opcode, "unknown")


@dataclass(eq=False)
class _Connection:
    """One client connection: a reader loop plus one task per request.

    ``closed`` stops all writing at once (in-flight requests then finish and
    drop their answers), so nothing is ever written after the FIN of a
    closing connection or into a transport that was aborted.
    """

    server: ZapServer
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    session: Session = field(default_factory=Session)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closed: bool = False
    """No more writes: set once the connection is closing or closed."""
    _shut: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _pushes: dict[int, asyncio.Future[int]] = field(default_factory=dict)
    _push_id: int = 0

    async def push(self, opcode: int, body: Json, timeout: float) -> int:
        """Send a push (kind 3) and wait for its push-ack status; 0 when none came in time."""
        if self.closed:
            return 0
        self._push_id = self._push_id % 0xFFFFFFFF + 1
        pid = self._push_id
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pushes[pid] = fut
        try:
            await self._write(Z.encode_frame(Z.PUSH, opcode, pid, body))
            return await asyncio.wait_for(fut, timeout)
        except (TimeoutError, ConnectionError, OSError):
            return 0
        finally:
            self._pushes.pop(pid, None)

    def _on_push_ack(self, frame: Z.Frame) -> None:
        fut = self._pushes.get(frame.frame_id)
        if fut is None or fut.done():
            return  # an ack for a push we no longer wait for
        try:
            body = Z.decode_body(frame.body)
            status = body.get("status")
        except Z.BadBody:
            status = 400
        fut.set_result(status if isinstance(status, int) else 400)

    @property
    def node(self) -> Any:
        return self.server.node

    async def run(self) -> None:
        try:
            await self._read_loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("zap connection failed")
        finally:
            self.close()

    async def _read_loop(self) -> None:
        metrics = self.node.metrics
        while not self.closed:
            try:
                frame = await Z.read_frame(self.reader, self.server.max_frame, Z.CLIENT_KINDS)
            except Z.FrameTooLarge as e:
                metrics.zap_frames_rejected.labels("too_large").inc()
                await self._respond(e.opcode, e.frame_id, Z.error_body("too_large", str(e)), time.perf_counter())
                await self._linger_close()
                return
            except Z.BadVersion as e:
                metrics.zap_frames_rejected.labels("bad_version").inc()
                if e.frame_id:
                    resp = Z.error_body("invalid_argument", "unsupported version")
                    await self._respond(e.opcode, e.frame_id, resp, time.perf_counter())
                    await self._linger_close()
                return
            except Z.ProtocolError as e:
                metrics.zap_frames_rejected.labels("protocol").inc()
                log.debug("zap: closing connection: %s", e)
                if self.tasks:  # complete requests before the bad bytes still get their answers
                    await asyncio.wait(set(self.tasks), timeout=EOF_DRAIN_TIMEOUT)
                return
            except (ConnectionError, OSError):
                return
            if frame is None:  # the client is done sending: answer what is in flight
                if self.tasks:
                    await asyncio.wait(set(self.tasks), timeout=EOF_DRAIN_TIMEOUT)
                return
            if frame.kind == Z.PUSH_ACK:
                self._on_push_ack(frame)
                continue
            await self._on_request(frame)

    async def _on_request(self, frame: Z.Frame) -> None:
        started = time.perf_counter()
        op = frame.opcode
        if not self.session.hello and op != Z.Op.Hello:
            await self._respond(op, frame.frame_id, Z.error_body("invalid_argument", "HELLO required"), started)
            await self._linger_close()
            return
        try:
            body = Z.decode_body(frame.body)
        except Z.BadBody as e:
            self.node.metrics.zap_frames_rejected.labels("bad_body").inc()
            await self._respond(op, frame.frame_id, Z.error_body("invalid_argument", f"bad body: {e}"), started)
            return
        if op == Z.Op.Hello:
            resp = await self._hello(body)
            await self._respond(op, frame.frame_id, resp, started)
            if resp.get("status") == 401:  # SPEC §8.3: a missing or invalid token closes the session
                await self._linger_close()
            return
        route = ROUTES.get(op)
        if route is None:
            msg = f"unknown opcode 0x{op:04X}" if op not in Z.OPCODES else f"{Z.OPCODES[op]} is not a request"
            await self._respond(op, frame.frame_id, Z.error_body("not_implemented", msg), started)
            return
        refused = self._refused(route)
        if refused is not None:
            await self._respond(op, frame.frame_id, self._error(refused), started)
            return
        if len(self.tasks) >= Z.MAX_IN_FLIGHT:
            self.node.metrics.rate_limited.labels("zap_inflight").inc()
            resp = Z.error_body(
                "rate_limited", f"more than {Z.MAX_IN_FLIGHT} requests in flight on this connection", retry_after=1
            )
            await self._respond(op, frame.frame_id, resp, started)
            return
        # The namespace is resolved now, not in the task, so that a later HELLO
        # never changes the scope of a request that arrived before it.
        try:
            ns = self._namespace(body)
        except ApiError as e:
            await self._respond(op, frame.frame_id, self._error(e), started)
            return
        call = Call(self.node, names.storage_org(self.session.org), ns, body, self)
        task = asyncio.create_task(self._serve(frame, route, call, started), name=f"zap-{_label(op)}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _hello(self, body: Json) -> Json:
        """HELLO (0x0001): who the caller is (SPEC §8.3).

        With auth on, ``auth_token`` is verified (401 closes the session); a
        later HELLO refreshes the token but may not change the org (403: the
        session keeps its identity). With auth off the token is ignored and
        the org is the dev org."""
        try:
            client_id = names.check_id(body.get("client_id"), "client_id")
            sdk_name = _str(body, "sdk_name") or ""
            sdk_version = _str(body, "sdk_version") or ""
            ns = body.get("namespace")
            if ns is not None:
                names.check_namespace(ns)
            token = body.get("auth_token")
            if token is not None and not isinstance(token, str):
                raise ApiError("invalid_argument", "auth_token must be a string")
            caller = await self.node.auth.authenticate(token)
        except ApiError as e:
            return self._error(e)
        s = self.session
        if s.hello and caller.org != s.caller.org:
            return self._error(ApiError("permission_denied", "HELLO may not change the session's org"))
        s.hello, s.client_id, s.sdk, s.caller = True, client_id, (sdk_name, sdk_version), caller
        if ns is not None:
            s.namespace = ns
        return Z.response_body(200, {
            "node_id": self.node.node_id,
            "server_version": self.node.version,
            "max_frame": self.server.max_frame,
            "org": s.org,
            "namespace": s.namespace or self.server.default_namespace,
        })

    def _refused(self, route: Route) -> ApiError | None:
        """Why the session may not make this request now: its token expired
        (a fresh HELLO cures it; subscriptions are kept). None while auth is off."""
        caller = self.session.caller
        if not self.node.auth.enabled:
            return None
        if caller.expired():
            self.node.metrics.auth_failures.labels("expired").inc()
            return ApiError("unauthenticated", "token expired")
        return None

    async def _check_role(self, route: Route, call: Call) -> None:
        """403 unless the session's role in the request's namespace (its
        Identity record there, else the token's org role) reaches the route's."""
        caller = self.session.caller
        if not self.node.auth.enabled:
            return
        role = await call.service.namespaces.role_in(call.org, call.ns, caller.email, caller.role)
        if not role_allows(role, route.role):
            raise ApiError("permission_denied", f"this needs the {route.role} role; the caller has {role}")

    def _namespace(self, body: Json) -> str:
        ns = body.get("namespace")
        if ns is None:
            ns = self.session.namespace or self.server.default_namespace
        return names.check_namespace(ns)

    def _error(self, e: ApiError) -> Json:
        metrics = self.node.metrics
        if e.code == "storage_full":
            metrics.storage_full.inc()
        elif e.code == "rate_limited":
            metrics.rate_limited.labels("namespace").inc()
        retry = max(1, int(e.retry_after or 1)) if e.status in (429, 503) else None
        return Z.error_body(e.code, e.message, e.details, status=e.status, retry_after=retry)

    async def _serve(self, frame: Z.Frame, route: Route, call: Call, started: float) -> None:
        try:
            await self._check_role(route, call)
            if route.read:
                ns = route.barrier_ns(call) if route.barrier_ns else call.ns
                await call.service.read_barrier(call.org, ns)
            resp = Z.response_body(200, await route.handler(call))
        except ApiError as e:
            resp = self._error(e)
        except asyncio.CancelledError:
            raise
        except NotReplica as e:  # the layout changed while the request was served here
            resp = self._error(ApiError("unavailable", f"{e}; retry", retry_after=1))
        except Exception:
            log.exception("bug serving ZAP %s", _label(frame.opcode))
            resp = Z.error_body("internal", "internal error")
        try:
            await self._respond(frame.opcode, frame.frame_id, resp, started)
        except asyncio.CancelledError:
            raise
        except Exception:  # never leave an unretrieved task exception behind
            log.exception("cannot answer ZAP %s", _label(frame.opcode))
            self.abort()

    async def _respond(self, opcode: int, frame_id: int, resp: Json, started: float) -> None:
        """Encode, count and send one response; an unencodable one becomes an error."""
        max_frame = self.server.max_frame
        try:
            data = Z.encode_frame(Z.RESPONSE, opcode, frame_id, resp)
        except (TypeError, ValueError, OverflowError):
            log.exception("cannot encode the ZAP response to %s", _label(opcode))
            resp = Z.error_body("internal", "internal error")
            data = Z.encode_frame(Z.RESPONSE, opcode, frame_id, resp)
        if len(data) - 4 > max_frame:
            resp = Z.error_body(
                "too_large", f"the response is {len(data) - 4} bytes, over max_frame {max_frame}; ask for less"
            )
            data = Z.encode_frame(Z.RESPONSE, opcode, frame_id, resp)
        label = _label(opcode)
        metrics = self.node.metrics
        metrics.zap_requests.labels(label, str(resp["status"])).inc()
        metrics.zap_duration.labels(label).observe(time.perf_counter() - started)
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        if self.closed:
            return
        async with self._lock:
            if self.closed:
                return
            try:
                self.writer.write(data)
                await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT)
            except (ConnectionError, OSError, TimeoutError, RuntimeError):
                # RuntimeError: the transport is already shut for writing.
                self.abort()

    async def _linger_close(self) -> None:
        """Send FIN after the final response, discard input briefly, then close.

        Closing a socket with unread input makes the kernel send RST, and the
        client may then lose the response that explains why it was closed.
        """
        if self.closed:
            return
        self.closed = True  # in-flight requests must not write after the FIN
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
            deadline = time.monotonic() + LINGER_TIMEOUT
            while (left := deadline - time.monotonic()) > 0:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
                if not chunk:
                    break
        except (TimeoutError, ConnectionError, OSError, RuntimeError):
            pass
        self.close()

    def close(self) -> None:
        """Stop using the connection; in-flight requests finish and drop their answers."""
        self.closed = True
        if not self._shut:
            self._shut = True
            self._released()
            with contextlib.suppress(Exception):
                self.writer.close()

    def abort(self) -> None:
        """Close at once, discarding unsent output (a stuck or broken peer)."""
        self.closed = True
        if not self._shut:
            self._shut = True
            self._released()
            with contextlib.suppress(Exception):
                self.writer.transport.abort()

    def _released(self) -> None:
        """The subscriptions of this connection end with it (their tasks fail: worker_lost)."""
        for fut in self._pushes.values():
            if not fut.done():
                fut.set_result(0)
        d = getattr(self.node, "dispatcher", None)
        if d is not None:
            d.connection_closed(self)


class ZapServer:
    """The ZAP listener of one node."""

    def __init__(self, node: Any) -> None:
        self.node = node
        cfg = node.cfg
        self.max_frame: int = cfg.limits.max_frame
        self.max_connections: int = cfg.limits.max_zap_connections
        self.default_namespace: str = cfg.default_namespace
        self._server: asyncio.Server | None = None
        self._conns: dict[_Connection, asyncio.Task[Any] | None] = {}

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one)."""
        self._server = await asyncio.start_server(self._accept, host or None, port, reuse_address=True)
        sockets = self._server.sockets
        return sockets[0].getsockname()[1] if sockets else port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= self.max_connections:
            log.warning("zap: connection limit %d reached; closing a new connection", self.max_connections)
            writer.transport.abort()
            return
        conn = _Connection(self, reader, writer)
        self._conns[conn] = asyncio.current_task()
        gauge = self.node.metrics.zap_connections
        gauge.inc()
        try:
            await conn.run()
        except asyncio.CancelledError:
            # stop() cancels open connections. This task is the top of its stack,
            # so ending normally is safe, and it spares Python 3.11's start_server
            # callback from logging the cancellation as an error.
            pass
        finally:
            self._conns.pop(conn, None)
            gauge.dec()

    async def stop(self) -> None:
        """Stop accepting, then close every connection and cancel its requests."""
        if self._server is not None:
            self._server.close()
        pending: list[asyncio.Task[Any]] = []
        for conn, task in list(self._conns.items()):
            conn.abort()
            pending.extend(conn.tasks)
            if task is not None:
                pending.append(task)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


__all__ = ["ROUTES", "Call", "Session", "ZapServer"]
