"""``tasksctl wf``: start, inspect and control workflows in ``--namespace``, and wait for results."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from hanzo_tasks.ctl.context import Ctx, call_and_emit, json_arg, more_hint, paged
from hanzo_tasks.ctl.errors import ApiError, UsageError
from hanzo_tasks.ctl.output import nested, scalar
from hanzo_tasks.ctl.transport import TRANSIENT, seg


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
    if not a.wait:
        if a.timeout is not None:
            raise UsageError("--timeout needs --wait")
        return call_and_emit(ctx, "POST", f"{ctx.ns}/workflows", body=payload)
    timeout = duration_seconds(a.timeout, "--timeout")
    _, body = ctx.api.call("POST", f"{ctx.ns}/workflows", body=payload)
    wid = nested(body, "execution", "workflowId")
    rid = nested(body, "execution", "runId")
    if not isinstance(wid, str) or not isinstance(rid, str):
        raise ApiError("internal", "the start answer names no workflow or run")
    ctx.err.write(f"started {wid} (run {rid}); waiting for its result\n")
    return _await_result(ctx, wid, rid, timeout, follow=True)


def cmd_wf_result(ctx: Ctx) -> int:
    a = ctx.args
    return _await_result(ctx, a.id, a.run, duration_seconds(a.timeout, "--timeout"), follow=not a.no_follow)


def _await_result(ctx: Ctx, wid: str, run: str | None, timeout: float | None, *, follow: bool) -> int:
    """Long-poll ``GET …/result`` in rounds of at most 60 s until the run closes or ``timeout``
    (seconds; None: as long as it takes) passes, then print the outcome.

    A completed run prints its result (JSON; a string as it is) and exits 0; a run
    that failed, was canceled, terminated or timed out prints its failure as an
    error and exits 1. ``--output json`` prints the answer as received either way.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    failures = 0
    while True:
        left = RESULT_ROUND_S if deadline is None else max(0.0, deadline - time.monotonic())
        wait_ms = int(min(RESULT_ROUND_S, left) * 1000)
        query = {"runId": run, "wait": f"{wait_ms}ms", "follow": follow}
        try:
            status, body = ctx.api.call("GET", _wf(ctx, wid, "/result"), query=query,
                                        timeout=wait_ms / 1000.0 + 10.0)
        except ApiError as exc:
            failures += 1
            if exc.code not in TRANSIENT or failures >= RESULT_TOLERANCE or (
                    deadline is not None and time.monotonic() + 1.0 >= deadline):
                raise
            time.sleep(1.0)
            continue
        failures = 0
        if status != 202:
            break
        run = (body.get("runId") if isinstance(body, dict) else None) or run
        if deadline is not None and time.monotonic() >= deadline:
            raise ApiError("timeout", f"workflow {wid} is still running after {ctx.args.timeout}",
                           details={"workflowId": wid, "runId": run})
    outcome = _bare(body.get("status")) if isinstance(body, dict) else ""
    if ctx.json:
        ctx.emit(body)
        return 0 if outcome == "COMPLETED" else 1
    if outcome == "COMPLETED":
        result = body.get("result")
        text = result if isinstance(result, str) else json.dumps(result, indent=2, ensure_ascii=False)
        ctx.out.write(text + "\n")
        return 0
    if outcome == "CONTINUED_AS_NEW":
        raise ApiError("continued_as_new", f"workflow {wid} continued as new: run {body.get('nextRunId')}",
                       details={"runId": body.get("runId"), "nextRunId": body.get("nextRunId")})
    failure = body.get("failure") if isinstance(body.get("failure"), dict) else {}
    reason = failure.get("message") or outcome.lower()
    raise ApiError("workflow_" + outcome.lower(), f"workflow {wid} {_CLOSED.get(outcome, outcome.lower())}: {reason}",
                   details={"runId": body.get("runId"), "failure": failure} if failure else None)


def duration_seconds(text: str | None, flag: str) -> float | None:
    """``30s``, ``1m30s``, ``500ms``, ``2h`` (Go-style, as the server takes them) or plain seconds."""
    if text is None:
        return None
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION_PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise UsageError(f"{flag}: not a duration: {text!r} (e.g. 30s, 5m, 1h30m)") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds < 0 or seconds != seconds:
        raise UsageError(f"{flag} must not be negative")
    return seconds


def _bare(status: Any) -> str:
    return str(status or "").removeprefix("WORKFLOW_EXECUTION_STATUS_")


RESULT_ROUND_S = 60.0  # the longest wait the server grants one request (SPEC §5.6)
RESULT_TOLERANCE = 5  # transient failures in a row before giving up (a node restarting)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_CLOSED = {"FAILED": "failed", "CANCELED": "was canceled", "TERMINATED": "was terminated",
           "TIMED_OUT": "timed out"}


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
