"""Schedules: ``sched.*`` — their records, fires (at most once per nominal time),
triggers and overlap policies. The runs a schedule started, and what their close
does to it, are in ``runs``."""

from __future__ import annotations

from typing import Any

from hanzo_tasks.shard import commands as C
from hanzo_tasks.shard.ctx import (
    OPEN,
    Ctx,
    Handler,
    Reject,
    Result,
    format_seconds,
    require_namespace,
)
from hanzo_tasks.shard.runs import (
    fired_workflow_id,
    open_scheduled_runs,
    request_cancel,
    start_scheduled,
    terminate_run,
)

MAX_BUFFERED = 1000


def _load_schedule(ctx: Ctx, sid: str) -> dict[str, Any]:
    s: dict[str, Any] | None = ctx.get(ctx.k.schedule(sid))
    if s is None:
        raise Reject("not_found", f"schedule {sid} not found")
    return s


def _new_info(now: int) -> dict[str, Any]:
    return {
        "createTime": now,
        "actionCount": 0,
        "missedCatchupWindow": 0,
        "overlapSkipped": 0,
        "bufferDropped": 0,
        "buffered": [],
        "running": [],
        "recent": [],
    }


def op_sched_create(ctx: Ctx) -> Result:
    cmd = ctx.cmd
    require_namespace(ctx, for_write=True)
    sid = cmd["scheduleId"]
    existing = ctx.get(ctx.k.schedule(sid))
    if existing is not None and not cmd.get("upsert"):
        raise Reject("already_exists", f"schedule {sid} already exists")
    if existing is not None:
        return _replace_schedule(ctx, existing, cmd, replace_state=True, created=False)
    s = {
        "scheduleId": sid,
        "spec": cmd["spec"],
        "action": cmd["action"],
        "policies": cmd["policies"],
        "state": cmd["state"],
        "info": _new_info(ctx.now),
        "cursor": ctx.now,
    }
    ctx.put(ctx.k.schedule(sid), s)
    ctx.notify("schedule.created", schedule_id=sid)
    return C.ok(schedule=s, created=True)


def _replace_schedule(
    ctx: Ctx, s: dict[str, Any], cmd: dict[str, Any], *, replace_state: bool, created: bool
) -> Result:
    s["spec"] = cmd["spec"]
    s["action"] = cmd["action"]
    s["policies"] = cmd["policies"]
    if replace_state and cmd.get("state") is not None:
        s["state"] = cmd["state"]
    s["info"]["updateTime"] = ctx.now
    # The next fire is the first new-spec time after the update.
    s["cursor"] = max(s["cursor"], ctx.now)
    ctx.put(ctx.k.schedule(s["scheduleId"]), s)
    ctx.notify("schedule.updated", schedule_id=s["scheduleId"])
    return C.ok(schedule=s, created=created)


def op_sched_update(ctx: Ctx) -> Result:
    require_namespace(ctx, for_write=True)
    s = _load_schedule(ctx, ctx.cmd["scheduleId"])
    return _replace_schedule(ctx, s, ctx.cmd, replace_state=True, created=False)


def op_sched_delete(ctx: Ctx) -> Result:
    require_namespace(ctx, for_write=False)
    sid = ctx.cmd["scheduleId"]
    _load_schedule(ctx, sid)
    ctx.delete(ctx.k.schedule(sid))
    ctx.notify("schedule.deleted", schedule_id=sid)
    return C.ok()


def op_sched_pause(ctx: Ctx) -> Result:
    require_namespace(ctx, for_write=False)
    s = _load_schedule(ctx, ctx.cmd["scheduleId"])
    paused = bool(ctx.cmd["paused"])
    note = ctx.cmd.get("note")
    state = s["state"]
    if paused:
        state["paused"] = True
        if note is not None:
            state["note"] = note
    else:
        if state.get("paused"):
            # Times that passed while paused are never replayed.
            s["cursor"] = max(s["cursor"], ctx.now)
        state["paused"] = False
        if note:
            state["note"] = note
        else:
            state.pop("note", None)
    s["info"]["updateTime"] = ctx.now
    ctx.put(ctx.k.schedule(s["scheduleId"]), s)
    ctx.notify("schedule.paused" if paused else "schedule.resumed", schedule_id=s["scheduleId"])
    return C.ok(schedule=s)


def _run_action(
    ctx: Ctx, s: dict[str, Any], policy: str, nominal: int, wid: str
) -> tuple[str, dict[str, Any] | None]:
    """Apply an overlap policy; returns (outcome, started run or None)."""
    info = s["info"]
    # ALLOW_ALL never looks at open runs (closes remove themselves from the list).
    running = [] if policy == "ALLOW_ALL" else open_scheduled_runs(ctx, s)
    if policy != "ALLOW_ALL":
        info["running"] = [[r["workflowId"], r["runId"]] for r in running]
    if running and policy != "ALLOW_ALL":
        if policy == "SKIP":
            info["overlapSkipped"] += 1
            return "skipped_overlap", None
        if policy in ("BUFFER_ONE", "CANCEL_OTHER"):
            if info["buffered"]:
                info["overlapSkipped"] += 1
                return "skipped_overlap", None
            info["buffered"].append(nominal)
            if policy == "CANCEL_OTHER":
                for r in running:
                    request_cancel(ctx, r, "canceled by schedule overlap policy", "schedule")
            return "buffered", None
        if policy == "BUFFER_ALL":
            if len(info["buffered"]) >= MAX_BUFFERED:
                info["bufferDropped"] += 1
                return "dropped", None
            info["buffered"].append(nominal)
            return "buffered", None
        if policy == "TERMINATE_OTHER":
            for r in running:
                terminate_run(ctx, r, "terminated by schedule overlap policy", "schedule")
    latest = ctx.get(ctx.k.latest(wid))
    if latest is not None:
        other = ctx.get(ctx.k.run(wid, latest))
        if other is not None and other["status"] in OPEN:
            info["overlapSkipped"] += 1
            return "skipped_overlap", None
    run = start_scheduled(ctx, s, wid, nominal, nominal)
    return "started", run


def op_sched_fire(ctx: Ctx) -> Result:
    """A timer fire, keyed by (scheduleId, nominal): applies at most once.

    ``after`` is the cursor the proposer computed from; the fire applies only
    when the schedule's cursor still equals it, so a stale or repeated fire
    (two leaders, a retried proposal) is a no-op and no slot is skipped.
    """
    cmd = ctx.cmd
    s = ctx.get(ctx.k.schedule(cmd["scheduleId"]))
    if s is None:
        return C.ok(outcome="gone")
    if s["cursor"] != cmd["after"] or cmd["nominal"] <= s["cursor"]:
        return C.ok(outcome="stale")
    nominal = cmd["nominal"]
    s["cursor"] = nominal
    info = s["info"]
    info["missedCatchupWindow"] += int(cmd.get("missed", 0))
    ns = ctx.get(ctx.k.namespace())
    state = s["state"]
    outcome: str
    run = None
    if ns is None or ns["state"] == "DELETED" or state.get("paused"):
        outcome = "paused"
    elif state.get("limitedActions") and state.get("remainingActions", 0) <= 0:
        outcome = "dropped"
    elif ctx.now - nominal > s["policies"]["catchupWindow"]:
        info["missedCatchupWindow"] += 1
        outcome = "missed_catchup"
    else:
        outcome, run = _run_action(
            ctx, s, s["policies"]["overlapPolicy"], nominal, fired_workflow_id(s, nominal)
        )
    ctx.put(ctx.k.schedule(s["scheduleId"]), s)
    if run is not None:
        ctx.notify(
            "schedule.fired",
            schedule_id=s["scheduleId"],
            nominal_time=nominal,
            workflow_id=run["workflowId"],
            run_id=run["runId"],
        )
    return C.ok(outcome=outcome, run=run, nominal=nominal)


def op_sched_trigger(ctx: Ctx) -> Result:
    cmd = ctx.cmd
    require_namespace(ctx, for_write=True)
    s = _load_schedule(ctx, cmd["scheduleId"])
    req = cmd.get("requestId")
    if req:
        seen = ctx.get(ctx.k.trigger_request(s["scheduleId"], req))
        if seen is not None:
            run = ctx.get(ctx.k.run(seen["wid"], seen["rid"])) if seen.get("wid") else None
            return C.ok(status=seen["status"], run=run)
    base = f"{s['scheduleId']}-{format_seconds(ctx.now)}"
    wid = base
    n = 1
    while ctx.get(ctx.k.latest(wid)) is not None:
        n += 1
        wid = f"{base}-{n}"
    policy = cmd.get("overlapPolicy") or s["policies"]["overlapPolicy"]
    outcome, run = _run_action(ctx, s, policy, ctx.now, wid)
    status = {"started": "triggered", "buffered": "buffered"}.get(outcome, "skipped")
    ctx.put(ctx.k.schedule(s["scheduleId"]), s)
    if req:
        ctx.put(
            ctx.k.trigger_request(s["scheduleId"], req),
            {"status": status, "wid": run["workflowId"] if run else None, "rid": run["runId"] if run else None},
        )
    ctx.notify("schedule.triggered", schedule_id=s["scheduleId"])
    return C.ok(status=status, run=run)



HANDLERS: dict[str, Handler] = {
    "sched.create": op_sched_create,
    "sched.update": op_sched_update,
    "sched.delete": op_sched_delete,
    "sched.pause": op_sched_pause,
    "sched.fire": op_sched_fire,
    "sched.trigger": op_sched_trigger,
}
