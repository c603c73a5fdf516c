"""MCP over Streamable HTTP (SPEC §7): JSON-RPC 2.0 on ``POST /v1/tasks/mcp``.

Stateless on purpose: one POST carries one message and gets one
``application/json`` answer; no ``Mcp-Session-Id`` is issued and no SSE stream
is opened, so any node can serve any call and the official ``mcp`` client works
unchanged. Each tool maps its snake_case arguments onto the camelCase body the
HTTP route would pass to the same ``Service`` method, so validation, records
and error codes live in the service once. An engine ``ApiError`` is a tool
result with ``isError: true`` (the model can read it and react); only
protocol-level mistakes (unknown tool, arguments outside the schema) and bugs
are JSON-RPC errors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from hanzo_tasks.cluster import health
from hanzo_tasks.cluster.api.client_errors import client_error
from hanzo_tasks.cluster.api.http.request import (
    Call,
    finite_float,
    json_response,
    max_depth_of,
    node_of,
    read_raw,
    reject_constant,
)
from hanzo_tasks.cluster.auth import role_allows
from hanzo_tasks.cluster.service.schedule_input import recurring_spec
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.protocol.names import ADMIN, DEVELOPER, VIEWER
from hanzo_tasks.protocol.nesting import deeper_than, depth_message
from hanzo_tasks.replication import NotReplica

if TYPE_CHECKING:
    from hanzo_tasks.cluster.service import Service

log = logging.getLogger("tasks.mcp")

Json = dict[str, Any]
PROTOCOL_VERSION = "2025-06-18"
SUPPORTED_VERSIONS = ("2025-06-18", "2025-03-26")

# JSON-RPC 2.0 error codes.
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700, -32600, -32601, -32602, -32603,
)

V, D, A = VIEWER, DEVELOPER, ADMIN


class RpcError(Exception):
    """A JSON-RPC error answer (not an engine error: those are tool results)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------
# tools

Runner = Callable[["Service", "Call", Json], Awaitable[Json]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    role: str
    """The least role on the tool's namespace (SPEC §5.13); viewer tools are reads."""
    props: dict[str, Json]
    required: tuple[str, ...]
    run: Runner
    ns_arg: str | None
    """The argument naming the namespace the role is judged in; None: the org role."""

    def schema(self) -> Json:
        return {
            "type": "object",
            "properties": self.props,
            "required": list(self.required),
            "additionalProperties": False,
        }


TOOLS: dict[str, Tool] = {}


def _str(description: str) -> Json:
    return {"type": "string", "description": description}


NAMESPACE = _str("namespace name")
WORKFLOW_ID = _str("workflow id")
RUN_ID = _str("run id (32 hex digits); default: the latest run of the workflow id")
SCHEDULE_ID = _str("schedule id")
PAGE_SIZE: Json = {"type": "integer", "minimum": 1, "maximum": 1000, "description": "items per page (default 100)"}
PAGE_TOKEN = _str("nextPageToken of the previous page; empty or absent for the first page")
ANY: Json = {"description": "any JSON value"}
PAGING = {"page_size": PAGE_SIZE, "page_token": PAGE_TOKEN}


def tool(name: str, role: str, description: str, props: dict[str, Json], required: tuple[str, ...] = (),
         ns_arg: str | None = "namespace") -> Callable[[Runner], Runner]:
    """Register a tool; ``required`` must name declared properties (checked at import)."""

    def wrap(fn: Runner) -> Runner:
        assert set(required) <= set(props), name
        TOOLS[name] = Tool(name, description, role, props, required, fn, ns_arg if ns_arg in props else None)
        return fn

    return wrap


def _page(a: Json) -> tuple[int, str | None]:
    return a.get("page_size", 100), a.get("page_token") or None


def _run_id(a: Json) -> str | None:
    rid = a.get("run_id")
    return names.check_run_id(rid) if rid else None


def _pick(a: Json, fields: dict[str, str]) -> Json:
    """The present snake_case arguments under their camelCase body names."""
    return {camel: a[snake] for snake, camel in fields.items() if snake in a}


@tool("list_namespaces", V, "List the caller's namespaces.", dict(PAGING), ns_arg=None)
async def _list_namespaces(s: Service, c: Call, a: Json) -> Json:
    return await s.namespaces.list_namespaces(c.org, *_page(a))


@tool("describe_namespace", V, "Describe one namespace.", {"name": NAMESPACE}, ("name",), ns_arg="name")
async def _describe_namespace(s: Service, c: Call, a: Json) -> Json:
    return await s.namespaces.get_namespace(c.org, a["name"])


@tool("list_workflows", V, "List workflow executions, newest first, optionally filtered by a visibility query.",
      {"namespace": NAMESPACE, "query": _str("visibility query, e.g. WorkflowType = 'x' AND ExecutionStatus = "
                                             "'Running'"), **PAGING}, ("namespace",))
async def _list_workflows(s: Service, c: Call, a: Json) -> Json:
    return await s.workflows.list_workflows(c.org, a["namespace"], a.get("query"), *_page(a))


@tool("describe_workflow", V, "Describe a workflow execution: info, config, pending activities and task.",
      {"namespace": NAMESPACE, "workflow_id": WORKFLOW_ID, "run_id": RUN_ID}, ("namespace", "workflow_id"))
async def _describe_workflow(s: Service, c: Call, a: Json) -> Json:
    return await s.workflows.describe_workflow(c.org, a["namespace"], a["workflow_id"], _run_id(a))


@tool("start_workflow", D, "Start a workflow execution; an equal request_id returns the same run.",
      {"namespace": NAMESPACE, "workflow_type": _str("workflow type"),
       "workflow_id": _str("workflow id; generated when absent"), "task_queue": _str("task queue (default 'default')"),
       "input": ANY, "request_id": _str("idempotency key")}, ("namespace", "workflow_type"))
async def _start_workflow(s: Service, c: Call, a: Json) -> Json:
    body = {"workflowType": {"name": a["workflow_type"]}, **_pick(a, {
        "workflow_id": "workflowId", "input": "input", "request_id": "requestId"})}
    if a.get("task_queue"):
        body["taskQueue"] = {"name": a["task_queue"]}
    return await s.workflows.start_workflow(c.org, a["namespace"], body)


@tool("signal_workflow", D, "Send a signal to a running workflow.",
      {"namespace": NAMESPACE, "workflow_id": WORKFLOW_ID, "signal_name": _str("signal name"), "run_id": RUN_ID,
       "input": ANY}, ("namespace", "workflow_id", "signal_name"))
async def _signal_workflow(s: Service, c: Call, a: Json) -> Json:
    body = {"name": a["signal_name"], **_pick(a, {"input": "input"})}
    return await s.workflows.signal_workflow(c.org, a["namespace"], a["workflow_id"], _run_id(a), body)


_REASON = {"namespace": NAMESPACE, "workflow_id": WORKFLOW_ID, "run_id": RUN_ID, "reason": _str("reason")}


@tool("cancel_workflow", D, "Request cancellation of a workflow (the workflow may clean up).",
      dict(_REASON), ("namespace", "workflow_id"))
async def _cancel_workflow(s: Service, c: Call, a: Json) -> Json:
    return await s.workflows.cancel_workflow(c.org, a["namespace"], a["workflow_id"], _run_id(a), _pick(a, {"reason": "reason"}))


@tool("terminate_workflow", D, "Terminate a workflow at once.", dict(_REASON), ("namespace", "workflow_id"))
async def _terminate_workflow(s: Service, c: Call, a: Json) -> Json:
    return await s.workflows.terminate_workflow(c.org, a["namespace"], a["workflow_id"], _run_id(a),
                                      _pick(a, {"reason": "reason"}))


@tool("get_workflow_history", V, "Read the event history of a workflow run.",
      {"namespace": NAMESPACE, "workflow_id": WORKFLOW_ID, "run_id": RUN_ID, **PAGING,
       "reverse": {"type": "boolean", "description": "newest event first"}}, ("namespace", "workflow_id"))
async def _history(s: Service, c: Call, a: Json) -> Json:
    res = await s.workflows.history(c.org, a["namespace"], a["workflow_id"], _run_id(a), 0, a.get("reverse", False),
                          *_page(a))
    return {"events": res["events"], "nextPageToken": res["nextPageToken"]}


@tool("list_schedules", V, "List the schedules of a namespace.", {"namespace": NAMESPACE, **PAGING},
      ("namespace",))
async def _list_schedules(s: Service, c: Call, a: Json) -> Json:
    return await s.schedules.list_schedules(c.org, a["namespace"], *_page(a))


@tool("create_schedule", A, "Create a schedule that starts a workflow at each tick of a duration or cron spec.",
      {"namespace": NAMESPACE, "schedule_id": SCHEDULE_ID, "workflow_type": _str("workflow type to start"),
       "spec": _str("a duration ('1h', '90s') or a cron expression ('0 3 * * *', '@daily')"),
       "task_queue": _str("task queue (default 'default')"), "input": ANY,
       "overlap_policy": _str("SKIP (default), BUFFER_ONE, BUFFER_ALL, CANCEL_OTHER, TERMINATE_OTHER or ALLOW_ALL"),
       "paused": {"type": "boolean", "description": "create it paused"}},
      ("namespace", "schedule_id", "workflow_type", "spec"))
async def _create_schedule(s: Service, c: Call, a: Json) -> Json:
    action = {"workflowType": {"name": a["workflow_type"]}, "taskQueue": {"name": a.get("task_queue") or "default"},
              **_pick(a, {"input": "input"})}
    body: Json = {"scheduleId": a["schedule_id"], "spec": recurring_spec(a["schedule_id"], a["spec"]),
                  "action": action, "policies": _pick(a, {"overlap_policy": "overlapPolicy"})}
    if "paused" in a:
        body["state"] = {"paused": a["paused"]}
    return await s.schedules.create_schedule(c.org, a["namespace"], body, upsert=False)


@tool("pause_schedule", A, "Pause (paused=true) or resume (paused=false) a schedule.",
      {"namespace": NAMESPACE, "schedule_id": SCHEDULE_ID, "paused": {"type": "boolean"}, "note": _str("why")},
      ("namespace", "schedule_id", "paused"))
async def _pause_schedule(s: Service, c: Call, a: Json) -> Json:
    return await s.schedules.pause_schedule(c.org, a["namespace"], a["schedule_id"], _pick(a, {"note": "note"}), a["paused"])


@tool("trigger_schedule", A, "Start the schedule's action now.",
      {"namespace": NAMESPACE, "schedule_id": SCHEDULE_ID, "request_id": _str("idempotency key"),
       "overlap_policy": _str("overlap policy for this run; default: the schedule's")},
      ("namespace", "schedule_id"))
async def _trigger_schedule(s: Service, c: Call, a: Json) -> Json:
    body = _pick(a, {"request_id": "requestId", "overlap_policy": "overlapPolicy"})
    return await s.schedules.trigger_schedule(c.org, a["namespace"], a["schedule_id"], body)


@tool("cluster_status", V, "Cluster members, partitions and the caller's namespaces, as this node sees them.", {})
async def _cluster_status(s: Service, c: Call, a: Json) -> Json:
    return await health.cluster_info(node_of(c), c.org, 100, None)


# ---------------------------------------------------------------------------
# argument checking (the subset of JSON Schema the tool schemas use)

_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def check_args(t: Tool, args: Any) -> Json:
    """``args`` checked against ``t``'s input schema; -32602 names the first mistake."""
    if not isinstance(args, dict):
        raise RpcError(INVALID_PARAMS, f"{t.name}: arguments must be an object")
    for key in args:
        if key not in t.props:
            raise RpcError(INVALID_PARAMS, f"{t.name}: unknown argument {key!r}")
    for key in t.required:
        if key not in args:
            raise RpcError(INVALID_PARAMS, f"{t.name}: argument {key!r} is required")
    for key, value in args.items():
        prop = t.props[key]
        typ = prop.get("type")
        if typ is not None and not _TYPES[typ](value):
            raise RpcError(INVALID_PARAMS, f"{t.name}: argument {key!r} must be of type {typ}")
        if "minimum" in prop and value < prop["minimum"] or "maximum" in prop and value > prop["maximum"]:
            raise RpcError(INVALID_PARAMS,
                           f"{t.name}: argument {key!r} must be within {prop['minimum']}..{prop['maximum']}")
    return args


# ---------------------------------------------------------------------------
# JSON-RPC methods


async def _initialize(s: Service, c: Call, params: Json) -> Json:
    asked = params.get("protocolVersion")
    return {
        "protocolVersion": asked if asked in SUPPORTED_VERSIONS else PROTOCOL_VERSION,
        "capabilities": {"tools": {"listChanged": False}},
        "serverInfo": {"name": "hanzo-tasks", "version": node_of(c).version},
    }


async def _ping(s: Service, c: Call, params: Json) -> Json:
    return {}


async def _tools_list(s: Service, c: Call, params: Json) -> Json:
    return {"tools": [{"name": t.name, "description": t.description, "inputSchema": t.schema()}
                      for t in TOOLS.values()]}


async def _tools_call(s: Service, c: Call, params: Json) -> Json:
    name = params.get("name")
    t = TOOLS.get(name) if isinstance(name, str) else None
    if t is None:
        raise RpcError(INVALID_PARAMS, f"unknown tool {name!r}")
    node = node_of(c)
    outcome = "error"
    try:
        args = check_args(t, params["arguments"] if params.get("arguments") is not None else {})
        try:
            result = await _run(s, c, node, t, args)
        except NotReplica as e:  # the layout changed under the call, as HTTP answers it
            raise ApiError("unavailable", f"{e}; retry", retry_after=1) from None
        outcome = "ok"
        return {"content": [{"type": "text", "text": _dumps(result)}], "structuredContent": result, "isError": False}
    except ApiError as e:
        return {"content": [{"type": "text", "text": _dumps(e.body())}], "isError": True}
    finally:
        node.metrics.mcp_calls.labels(t.name, outcome).inc()


async def _run(s: Service, c: Call, node: Any, t: Tool, args: Json) -> Json:
    """The tool under the caller's org and its role in the tool's namespace
    (SPEC §5.13); reads take the read barrier as HTTP GETs do, so a call sees
    the caller's earlier writes."""
    ns = args[t.ns_arg] if t.ns_arg else None
    if node.auth.enabled:
        role = c.caller.role
        if ns is not None:
            role = await s.namespaces.role_in(c.org, ns, c.caller.email, role)
        if not role_allows(role, t.role):
            raise ApiError("permission_denied", f"{t.name} needs the {t.role} role; the caller has {role}")
    if t.role == V and ns is not None:
        await s.read_barrier(c.org, ns)
    return await t.run(s, c, args)


METHODS: dict[str, Callable[[Service, Call, Json], Awaitable[Json]]] = {
    "initialize": _initialize,
    "ping": _ping,
    "tools/list": _tools_list,
    "tools/call": _tools_call,
}


# ---------------------------------------------------------------------------
# transport


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _error(msg_id: Any, code: int, message: str) -> Json:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


async def _read_raw(request: web.Request, limit: int) -> bytes:
    """The body bytes; 413 past ``limits.max_body``, as every route (SPEC §4.1);
    a body cut short is a client error (400, logged quietly)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError("too_large", f"request body over {limit} bytes")
    return await read_raw(request, limit)


async def h_mcp(s: Service, c: Call) -> web.Response:
    """One JSON-RPC message in, one response (200) or none (202) out.

    The HTTP layer has authenticated the caller (401 stays plain HTTP) and,
    for this route only, left the body unread, so that a batch or a parse
    error can be answered in JSON-RPC terms rather than as an HTTP 400.
    """
    node = node_of(c)
    version = c.request.headers.get("MCP-Protocol-Version")
    if version is not None and version not in SUPPORTED_VERSIONS:
        raise ApiError("invalid_argument",
                       f"unsupported MCP-Protocol-Version {version!r}; supported: {', '.join(SUPPORTED_VERSIONS)}")
    raw = await _read_raw(c.request, node.cfg.limits.max_body)
    try:
        msg = json.loads(raw, parse_constant=reject_constant, parse_float=finite_float)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        return json_response(200, _error(None, PARSE_ERROR, f"parse error: {e}"), node.node_id)
    max_depth = max_depth_of(c.request)
    if deeper_than(msg, max_depth):  # refused whole: no tool may store what could not be rendered
        client_error(node.metrics, "mcp", "too_deep", "mcp: message nests deeper than %d", max_depth)
        return json_response(200, _error(None, INVALID_REQUEST, depth_message(max_depth)), node.node_id)
    if isinstance(msg, list):
        return json_response(200, _error(None, INVALID_REQUEST, "batches are not supported"), node.node_id)
    if not isinstance(msg, dict):
        return json_response(200, _error(None, INVALID_REQUEST, "a message must be an object"), node.node_id)
    if "id" not in msg or ("method" not in msg and ("result" in msg or "error" in msg)):
        # a notification, or a response to a request we never send: nothing to answer
        return web.Response(status=202, headers={"X-Tasks-Node": node.node_id})
    msg_id = msg["id"]
    if isinstance(msg_id, bool) or not isinstance(msg_id, str | int):
        return json_response(200, _error(None, INVALID_REQUEST, "id must be a string or an integer"), node.node_id)
    method = msg.get("method")
    if msg.get("jsonrpc") != "2.0" or not isinstance(method, str):
        return json_response(200, _error(msg_id, INVALID_REQUEST, 'a request needs jsonrpc "2.0" and a method'),
                             node.node_id)
    fn = METHODS.get(method)
    params = msg.get("params")
    try:
        if fn is None:
            raise RpcError(METHOD_NOT_FOUND, f"method {method!r} not found")
        if params is not None and not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, "params must be an object")
        body: Json = {"jsonrpc": "2.0", "id": msg_id, "result": await fn(s, c, params or {})}
    except RpcError as e:
        body = _error(msg_id, e.code, e.message)
    except Exception:
        log.exception("bug serving MCP %s", method)
        body = _error(msg_id, INTERNAL_ERROR, "internal error")
    return json_response(200, body, node.node_id)
