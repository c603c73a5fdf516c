"""``tasksctl schedule``: create and control durable schedules in ``--namespace``."""

from __future__ import annotations

from typing import Any

from hanzo_tasks.ctl.context import Ctx, call_and_emit, json_arg, more_hint, paged
from hanzo_tasks.ctl.errors import UsageError
from hanzo_tasks.ctl.output import nested
from hanzo_tasks.ctl.transport import seg
from hanzo_tasks.protocol.durations import parse_duration


def _sched(ctx: Ctx, sid: str, suffix: str = "") -> str:
    return f"{ctx.ns}/schedules/{seg(sid)}{suffix}"


def schedule_spec(spec: str) -> dict[str, Any]:
    """``--spec``: a Go-style duration is an interval, anything else a cron string
    (the same classification as the client library, SPEC §2.2)."""
    text = spec.strip()
    if not text:
        raise UsageError("--spec must not be empty")
    try:
        parse_duration(text)
    except ValueError:
        return {"cronString": [text]}
    return {"interval": [{"interval": text}]}


def cmd_schedule_create(ctx: Ctx) -> int:
    a = ctx.args
    action: dict[str, Any] = {"workflowType": {"name": a.type}, "taskQueue": a.queue}
    if a.input is not None:
        action["input"] = json_arg(a.input, "--input")
    payload: dict[str, Any] = {
        "scheduleId": a.id,
        "spec": schedule_spec(a.spec),
        "action": action,
        "state": {"paused": a.paused},
    }
    if a.overlap is not None:
        payload["policies"] = {"overlapPolicy": a.overlap}
    if a.note is not None:
        payload["state"]["note"] = a.note
    query = {"upsert": True} if a.upsert else None
    return call_and_emit(ctx, "POST", f"{ctx.ns}/schedules", query=query, body=payload)


def _schedule_spec_text(s: Any) -> str:
    spec = s.get("spec") or {}
    parts = list(spec.get("cronString") or [])
    parts += [f"every {i.get('interval')}" for i in spec.get("interval") or [] if isinstance(i, dict)]
    return "; ".join(parts)


def cmd_schedule_list(ctx: Ctx) -> int:
    a = ctx.args
    body = paged(ctx, f"{ctx.ns}/schedules", "schedules", {"pageSize": a.page_size}, a.all)

    def table(b: Any) -> None:
        ctx.table(
            ["SCHEDULE ID", "WORKFLOW TYPE", "SPEC", "PAUSED", "NEXT ACTION"],
            [
                [
                    s.get("scheduleId"),
                    nested(s, "action", "workflowType", "name"),
                    _schedule_spec_text(s),
                    nested(s, "state", "paused"),
                    nested(s, "info", "nextActionTime"),
                ]
                for s in b.get("schedules") or []
            ],
        )

    ctx.emit(body, table if isinstance(body, dict) else None)
    more_hint(ctx, body)
    return 0


def cmd_schedule_describe(ctx: Ctx) -> int:
    return call_and_emit(ctx, "GET", _sched(ctx, ctx.args.id))


def _schedule_toggle(ctx: Ctx, action: str) -> int:
    a = ctx.args
    payload = {"note": a.note} if a.note is not None else {}
    return call_and_emit(ctx, "POST", _sched(ctx, a.id, action), body=payload)


def cmd_schedule_pause(ctx: Ctx) -> int:
    return _schedule_toggle(ctx, "/pause")


def cmd_schedule_unpause(ctx: Ctx) -> int:
    return _schedule_toggle(ctx, "/unpause")


def cmd_schedule_trigger(ctx: Ctx) -> int:
    a = ctx.args
    payload: dict[str, Any] = {}
    if a.overlap is not None:
        payload["overlapPolicy"] = a.overlap
    if a.request_id is not None:
        payload["requestId"] = a.request_id
    return call_and_emit(ctx, "POST", _sched(ctx, a.id, "/trigger"), body=payload)


def cmd_schedule_delete(ctx: Ctx) -> int:
    return call_and_emit(ctx, "DELETE", _sched(ctx, ctx.args.id))


def cmd_schedule_times(ctx: Ctx) -> int:
    a = ctx.args
    _, body = ctx.api.call(
        "GET", _sched(ctx, a.id, "/matching-times"), query={"from": a.from_, "to": a.to}
    )

    def table(b: Any) -> None:
        ctx.table(["TIME"], [[t] for t in b.get("matchingTimes") or []])

    ctx.emit(body, table if isinstance(body, dict) else None)
    return 0
