"""``tasksctl wf``: start, inspect and control workflows in ``--namespace``."""

from __future__ import annotations

import json
from typing import Any

from hanzo_tasks.ctl.context import Ctx, call_and_emit, json_arg, more_hint, paged
from hanzo_tasks.ctl.output import nested, scalar
from hanzo_tasks.ctl.transport import seg


def _wf(ctx: Ctx, wid: str, suffix: str = "") -> str:
    return f"{ctx.ns}/workflows/{seg(wid)}{suffix}"


def cmd_wf_start(ctx: Ctx) -> int:
    a = ctx.args
    payload: dict[str, Any] = {"workflowType": {"name": a.type}, "taskQueue": {"name": a.queue}}
    if a.id is not None:
        payload["workflowId"] = a.id
    if a.input is not None:
        payload["input"] = json_arg(a.input, "--input")
    if a.request_id is not None:
        payload["requestId"] = a.request_id
    return call_and_emit(ctx, "POST", f"{ctx.ns}/workflows", body=payload)


def cmd_wf_describe(ctx: Ctx) -> int:
    a = ctx.args
    return call_and_emit(ctx, "GET", _wf(ctx, a.id), query={"runId": a.run})


def cmd_wf_list(ctx: Ctx) -> int:
    a = ctx.args
    query = {"query": a.query, "pageSize": a.page_size}
    body = paged(ctx, f"{ctx.ns}/workflows", "executions", query, a.all)

    def table(b: Any) -> None:
        ctx.table(
            ["WORKFLOW ID", "RUN ID", "TYPE", "STATUS", "START"],
            [
                [
                    nested(w, "execution", "workflowId"),
                    nested(w, "execution", "runId"),
                    nested(w, "type", "name"),
                    w.get("status"),
                    w.get("startTime"),
                ]
                for w in b.get("executions") or []
            ],
        )

    ctx.emit(body, table if isinstance(body, dict) else None)
    more_hint(ctx, body)
    return 0


def cmd_wf_signal(ctx: Ctx) -> int:
    a = ctx.args
    payload: dict[str, Any] = {"name": a.name}
    if a.input is not None:
        payload["payload"] = json_arg(a.input, "--input")
    if a.request_id is not None:
        payload["requestId"] = a.request_id
    return call_and_emit(ctx, "POST", _wf(ctx, a.id, "/signal"), query={"runId": a.run}, body=payload)


def _wf_end(ctx: Ctx, action: str) -> int:
    """``wf cancel`` / ``wf terminate``: the same request to two routes."""
    a = ctx.args
    payload = {"reason": a.reason} if a.reason is not None else {}
    return call_and_emit(ctx, "POST", _wf(ctx, a.id, action), query={"runId": a.run}, body=payload)


def cmd_wf_cancel(ctx: Ctx) -> int:
    return _wf_end(ctx, "/cancel")


def cmd_wf_terminate(ctx: Ctx) -> int:
    return _wf_end(ctx, "/terminate")


def cmd_wf_history(ctx: Ctx) -> int:
    a = ctx.args
    query = {"runId": a.run, "reverse": True if a.reverse else None, "pageSize": a.page_size}
    body = paged(ctx, _wf(ctx, a.id, "/history"), "events", query, True)
    if isinstance(body, dict) and "nextCursor" in body:
        body["nextCursor"] = 0

    def table(b: Any) -> None:
        ctx.table(
            ["EVENT ID", "TIME", "TYPE", "ATTRIBUTES"],
            [[e.get("eventId"), e.get("eventTime"), e.get("eventType"), e.get("attributes") or ""] for e in b.get("events") or []],
        )

    ctx.emit(body, table if isinstance(body, dict) else None)
    return 0


def cmd_wf_query(ctx: Ctx) -> int:
    a = ctx.args
    payload: dict[str, Any] = {"queryType": a.query_type}
    if a.args is not None:
        payload["args"] = json_arg(a.args, "--args")
    if a.timeout is not None:
        payload["timeout"] = a.timeout
    _, body = ctx.api.call("POST", _wf(ctx, a.id, "/query"), query={"runId": a.run}, body=payload)

    def table(b: Any) -> None:
        result = b.get("queryResult") if isinstance(b, dict) else b
        if isinstance(result, dict | list):
            ctx.out.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        else:
            ctx.out.write(scalar(result) + "\n")

    ctx.emit(body, table)
    return 0


def cmd_wf_reset(ctx: Ctx) -> int:
    a = ctx.args
    payload: dict[str, Any] = {"eventId": a.event_id}
    for key, value in (("runId", a.run), ("reason", a.reason), ("requestId", a.request_id)):
        if value is not None:
            payload[key] = value
    return call_and_emit(ctx, "POST", _wf(ctx, a.id, "/reset"), body=payload)
