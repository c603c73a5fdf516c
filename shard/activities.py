"""Standalone activities (SPEC §4.8, §5.7): their records, attempts, retries and timers.

Applied by the same deterministic state machine as everything else; the
handlers are this module's ``HANDLERS``, part of ``shard.machine.HANDLERS``.
"""

from __future__ import annotations

from typing import Any

from hanzo_tasks.shard import commands as C
from hanzo_tasks.shard import runs
from hanzo_tasks.shard.ctx import (
    OPEN,
    Ctx,
    Handler,
    Reject,
    Result,
    failure_record,
    require_namespace,
)

# ---------------------------------------------------------------------------
# standalone activities (SPEC §4.8, §5.7)
#
# A record per (activityId, runId) with its own history. The current attempt is
# either pending (an index entry by task queue and "visible at" time, like a
# workflow task) or started (leased, with a nonce the worker's token carries).
# Timeouts are durable timers in an index by due time; each timer key is
# remembered on the record, so a fire applies only while its key is armed.

ACT_OPEN = ("SCHEDULED", "STARTED")
DEFAULT_ACTIVITY_RETRY: dict[str, Any] = {
    "initialInterval": 1000, "backoffCoefficient": 2.0, "maximumInterval": 100_000,
    "maximumAttempts": 0, "nonRetryableErrorTypes": [],
}


def _act_event(ctx: Ctx, act: dict[str, Any], etype: str, attrs: dict[str, Any]) -> int:
    eid: int = act["historyLength"] + 1
    act["historyLength"] = eid
    ctx.put(ctx.k.activity_event(act["runId"], eid),
            {"eventId": eid, "eventTime": ctx.now, "eventType": etype, "attributes": attrs})
    return eid


def _act_save(ctx: Ctx, act: dict[str, Any]) -> None:
    ctx.put(ctx.k.activity(act["activityId"], act["runId"]), act)


def _act_arm(ctx: Ctx, act: dict[str, Any], kind: str, at: int) -> None:
    _act_disarm(ctx, act, kind)
    act.setdefault("timers", {})[kind] = at
    ctx.put_raw(ctx.k.activity_timer(at, kind, act["activityId"], act["runId"]), b"")


def _act_disarm(ctx: Ctx, act: dict[str, Any], kind: str) -> None:
    at = (act.get("timers") or {}).pop(kind, None)
    if at is not None:
        ctx.txn.delete(ctx.k.activity_timer(at, kind, act["activityId"], act["runId"]))


def _act_unpend(ctx: Ctx, act: dict[str, Any]) -> None:
    if act["status"] == "SCHEDULED" and act.get("visibleAt") is not None:
        ctx.txn.delete(ctx.k.activity_pending(act["taskQueue"], act["visibleAt"], act["activityId"], act["runId"]))
    act["visibleAt"] = None


def _act_pend(ctx: Ctx, act: dict[str, Any], delay_ms: int) -> None:
    """Make the current attempt visible to dispatch after ``delay_ms`` (retry back-off)."""
    act["status"] = "SCHEDULED"
    act["visibleAt"] = ctx.now + max(0, delay_ms)
    act["nonce"] = None
    ctx.put_raw(ctx.k.activity_pending(act["taskQueue"], act["visibleAt"], act["activityId"], act["runId"]), b"")
    for kind in ("startToClose", "heartbeat"):
        _act_disarm(ctx, act, kind)
    if act.get("scheduleToStartTimeout"):
        _act_arm(ctx, act, "scheduleToStart", act["visibleAt"] + act["scheduleToStartTimeout"])


def _act_start_attempt(ctx: Ctx, act: dict[str, Any], identity: str, nonce: str | None) -> None:
    """SCHEDULED -> STARTED: ACTIVITY_TASK_STARTED, start-to-close and heartbeat timers armed."""
    _act_unpend(ctx, act)
    _act_disarm(ctx, act, "scheduleToStart")
    act.update(status="STARTED", startedTime=ctx.now, nonce=nonce, identity=identity or act.get("identity", ""))
    act["startedEventId"] = _act_event(ctx, act, "ACTIVITY_TASK_STARTED", {
        "scheduledEventId": 1, "attempt": act["attempt"], "identity": identity or ""})
    ctx.notify("activity.started", activity_id=act["activityId"], run_id=act["runId"], attempt=act["attempt"])
    _act_arm(ctx, act, "startToClose", ctx.now + act["startToCloseTimeout"])
    if act.get("heartbeatTimeout"):
        _act_arm(ctx, act, "heartbeat", ctx.now + act["heartbeatTimeout"])


def _act_close(ctx: Ctx, act: dict[str, Any], status: str, etype: str, attrs: dict[str, Any]) -> None:
    _act_unpend(ctx, act)
    for kind in list(act.get("timers") or {}):
        _act_disarm(ctx, act, kind)
    attrs = {"scheduledEventId": 1, "startedEventId": act.get("startedEventId"), **attrs}
    _act_event(ctx, act, etype, attrs)
    act.update(status=status, closeTime=ctx.now, nonce=None)
    ctx.notify("activity.closed", activity_id=act["activityId"], run_id=act["runId"], status=status)
    if act.get("workflow"):
        _close_in_workflow(ctx, act, etype, attrs)


def _close_in_workflow(ctx: Ctx, act: dict[str, Any], etype: str, attrs: dict[str, Any]) -> None:
    """An activity scheduled by a workflow closed: record it in the run (SPEC §5.6 live activities).

    Its close events go into the run's history. A *live* activity (scheduled by
    a running task-style handler over 0x006B) whose workflow task is still in
    flight has its outcome pushed to the worker holding it (0xB2, by the
    dispatcher, from the ``activity.result`` event). Otherwise the close is a
    trigger event: it schedules a workflow task, or one after the task in
    flight (durable code waits for the event in a later task, never a push).
    """
    link = act["workflow"]
    run = ctx.get(ctx.k.run(link["workflowId"], link["runId"]))
    if run is None or run["status"] not in OPEN or run["attempt"] != link.get("attempt", run["attempt"]):
        return  # the run closed, or the attempt that scheduled it failed: its activities were dropped
    seid = link["scheduledEventId"]
    runs.untrack_activity(run, seid)
    close = {k: v for k, v in attrs.items() if k not in ("scheduledEventId", "startedEventId")}
    if act.get("startedEventId"):
        started = runs.add_event(ctx, run, "ACTIVITY_TASK_STARTED", {
            "scheduledEventId": seid, "attempt": act["attempt"], "identity": attrs.get("identity", "")})
        runs.add_event(ctx, run, etype, {"scheduledEventId": seid, "startedEventId": started, **close})
    else:  # canceled or timed out before any attempt started
        runs.add_event(ctx, run, etype, {"scheduledEventId": seid, **close})
    wt = run.get("wt")
    if wt and wt["state"] == "STARTED" and link.get("live"):
        # A running task-style handler scheduled it (0x006B) and waits for the push.
        ctx.notify("activity.result", workflow_id=run["workflowId"], run_id=run["runId"],
                   activity_id=act["activityId"], activity_run_id=act["runId"], scheduled_event_id=seid)
    else:
        # A workflow-task command scheduled it: its close is a trigger event (a task
        # now, or right after the one in flight, which started before this event).
        runs.schedule_workflow_task(ctx, run)
    runs.save_run(ctx, run)


def _act_attempt_failed(ctx: Ctx, act: dict[str, Any], failure: dict[str, Any], identity: str) -> None:
    """SPEC §5.7 activity retry: another attempt after back-off, or the final close."""
    act["lastFailure"] = failure
    if act.get("cancelRequested"):
        _act_close(ctx, act, "CANCELED", "ACTIVITY_TASK_CANCELED", {"details": failure, "identity": identity})
        return
    rp = act.get("retryPolicy") or DEFAULT_ACTIVITY_RETRY
    attempt = act["attempt"]
    state = None
    backoff = 0
    if failure.get("nonRetryable") or failure.get("type") in (rp.get("nonRetryableErrorTypes") or []):
        state = "NON_RETRYABLE_FAILURE"
    elif rp.get("maximumAttempts", 0) > 0 and attempt >= rp["maximumAttempts"]:
        state = "MAXIMUM_ATTEMPTS_REACHED"
    else:
        backoff = int(min(rp["initialInterval"] * rp["backoffCoefficient"] ** (attempt - 1), rp["maximumInterval"]))
        s2c = act.get("scheduleToCloseTimeout")
        if s2c and ctx.now + backoff > act["startTime"] + s2c:
            state = "TIMEOUT"
    if state is not None:
        if failure.get("timeoutType"):
            _act_close(ctx, act, "TIMED_OUT", "ACTIVITY_TASK_TIMED_OUT", {"failure": failure, "retryState": state})
        else:
            _act_close(ctx, act, "FAILED", "ACTIVITY_TASK_FAILED",
                       {"failure": failure, "retryState": state, "identity": identity})
        return
    _act_event(ctx, act, "ACTIVITY_TASK_FAILED", {
        "scheduledEventId": 1, "startedEventId": act.get("startedEventId"), "failure": failure,
        "retryState": "IN_PROGRESS", "identity": identity})
    act["attempt"] = attempt + 1
    ctx.notify("activity.released", activity_id=act["activityId"], run_id=act["runId"])
    _act_pend(ctx, act, backoff)


def _load_activity(ctx: Ctx, *, open_only: bool = True) -> dict[str, Any]:
    cmd = ctx.cmd
    act: dict[str, Any] | None = ctx.get(ctx.k.activity(cmd["activityId"], cmd["runId"]))
    if act is None:
        raise Reject("not_found", f"activity {cmd['activityId']} run {cmd['runId']} not found")
    if open_only and act["status"] not in ACT_OPEN:
        raise Reject("failed_precondition", f"activity {cmd['activityId']} is closed ({act['status']})")
    return act


def _current_attempt(ctx: Ctx) -> dict[str, Any]:
    """The activity whose started attempt a worker's token names (else 404: stale token)."""
    cmd = ctx.cmd
    act: dict[str, Any] | None = ctx.get(ctx.k.activity(cmd["activityId"], cmd["runId"]))
    if (act is None or act["status"] != "STARTED" or act["attempt"] != cmd["attempt"]
            or act.get("nonce") != cmd["nonce"]):
        raise Reject("not_found", "activity task not current")
    return act


def op_act_start(ctx: Ctx) -> Result:
    """Start a standalone activity: record, ACTIVITY_TASK_SCHEDULED, pending attempt 1, timers."""
    cmd = ctx.cmd
    require_namespace(ctx, for_write=True)
    spec = cmd["start"]
    req = spec.get("requestId")
    if req:
        seen = ctx.get(ctx.k.activity_request(req))
        if seen is not None:
            act = ctx.get(ctx.k.activity(seen["aid"], seen["rid"]))
            if act is not None:
                return C.ok(activity=act, started=False)
    aid = spec["activityId"]
    rid = spec.get("runId") or ctx.new_run_id()
    if ctx.exists(ctx.k.activity(aid, rid)):
        raise Reject("already_exists", f"activity {aid} run {rid} already exists")
    act = create(ctx, spec, aid, rid)
    if req:
        ctx.put(ctx.k.activity_request(req), {"aid": aid, "rid": rid})
    return C.ok(activity=act, started=True)


def create(
    ctx: Ctx, spec: dict[str, Any], aid: str, rid: str, workflow: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A new activity record, its SCHEDULED event, attempt 1 pending and its timers."""
    cmd = ctx.cmd
    s2c = spec.get("scheduleToCloseTimeout")
    stc = spec.get("startToCloseTimeout") or s2c or cmd.get("defaultStartToClose") or 600_000
    act: dict[str, Any] = {
        "activityId": aid, "runId": rid, "type": spec["type"], "taskQueue": spec["taskQueue"],
        "status": "SCHEDULED", "startTime": ctx.now, "closeTime": None, "attempt": 1, "historyLength": 0,
        "startToCloseTimeout": stc, "timers": {}, "visibleAt": None, "nonce": None,
    }
    for f in ("input", "retryPolicy", "scheduleToCloseTimeout", "scheduleToStartTimeout", "heartbeatTimeout",
              "identity", "requestId"):
        if spec.get(f) is not None:
            act[f] = spec[f]
    attrs: dict[str, Any] = {"activityId": aid, "activityType": {"name": spec["type"]},
                             "taskQueue": {"name": spec["taskQueue"]}, "input": spec.get("input"),
                             "startToCloseTimeout": stc,
                             "retryPolicy": spec.get("retryPolicy") or DEFAULT_ACTIVITY_RETRY}
    for f in ("scheduleToCloseTimeout", "scheduleToStartTimeout", "heartbeatTimeout"):
        if spec.get(f):
            attrs[f] = spec[f]
    if workflow is not None:
        act["workflow"] = workflow
    _act_event(ctx, act, "ACTIVITY_TASK_SCHEDULED", attrs)
    _act_pend(ctx, act, 0)
    if s2c:
        _act_arm(ctx, act, "scheduleToClose", ctx.now + s2c)
    _act_save(ctx, act)
    ctx.notify("activity.scheduled", activity_id=aid, run_id=rid, task_queue=act["taskQueue"])
    return act


def op_act_schedule(ctx: Ctx) -> Result:
    """0x006B: a workflow's running handler schedules an activity with its task's token.

    An ``activityId`` already used in the same workflow attempt returns the
    existing activity (closed or not), so a redelivered workflow task gets the
    recorded outcome instead of running the activity again.
    """
    cmd = ctx.cmd
    run = runs.current_task(ctx, "STARTED")  # the caller must hold the run's workflow task
    wid, wrid = run["workflowId"], run["runId"]
    aid = cmd["activityId"]
    link_key = ctx.k.workflow_activity(wid, wrid, run["attempt"], aid)
    seen = ctx.get(link_key)
    if seen is not None:
        act = ctx.get(ctx.k.activity(aid, seen["rid"]))
        return C.ok(activity=act, started=False)
    spec = dict(cmd["start"])
    spec["taskQueue"] = spec.get("taskQueue") or run["taskQueue"]
    attrs: dict[str, Any] = {"activityId": aid, "activityType": {"name": spec["type"]},
                             "taskQueue": {"name": spec["taskQueue"]}, "input": spec.get("input"),
                             "retryPolicy": spec.get("retryPolicy") or DEFAULT_ACTIVITY_RETRY}
    seid = runs.add_event(ctx, run, "ACTIVITY_TASK_SCHEDULED", attrs)
    runs.save_run(ctx, run)
    res = create(ctx, spec, aid, ctx.new_run_id(),
                  workflow={"workflowId": wid, "runId": wrid, "attempt": run["attempt"], "scheduledEventId": seid,
                            "live": True})
    ctx.put(link_key, {"rid": res["runId"]})
    runs.track_activity(run, seid, aid, res["runId"])
    runs.save_run(ctx, run)
    return C.ok(activity=res, started=True)


def op_act_lease(ctx: Ctx) -> Result:
    """A subscription takes the pending attempt: STARTED is recorded before the push is sent."""
    cmd = ctx.cmd
    act: dict[str, Any] | None = ctx.get(ctx.k.activity(cmd["activityId"], cmd["runId"]))
    if (act is None or act["status"] != "SCHEDULED" or act["attempt"] != cmd["attempt"]
            or (act.get("visibleAt") or 0) > ctx.now):
        raise Reject("not_found", "activity task not pending")
    _act_start_attempt(ctx, act, cmd.get("identity") or "", cmd["nonce"])
    _act_save(ctx, act)
    return C.ok(activity=act)


def op_act_release(ctx: Ctx) -> Result:
    """The push was refused or not acknowledged: pending again, same attempt (SPEC §5.7)."""
    act = _current_attempt(ctx)
    _act_pend(ctx, act, 0)
    _act_save(ctx, act)
    return C.ok(activity=act)


def op_act_complete(ctx: Ctx) -> Result:
    """0x00A3 (token: attempt + nonce) or HTTP complete (no token: any open attempt)."""
    cmd = ctx.cmd
    act = _current_attempt(ctx) if cmd.get("nonce") else _load_activity(ctx)
    identity = cmd.get("identity") or ""
    if act["status"] == "SCHEDULED":
        _act_start_attempt(ctx, act, identity, None)
    act["result"] = cmd.get("result")
    _act_close(ctx, act, "COMPLETED", "ACTIVITY_TASK_COMPLETED", {"result": cmd.get("result"), "identity": identity})
    _act_save(ctx, act)
    return C.ok(activity=act)


def op_act_fail(ctx: Ctx) -> Result:
    """0x00A4 or HTTP fail: the retry rule; ``CanceledError`` after a cancel request = canceled."""
    cmd = ctx.cmd
    act = _current_attempt(ctx) if cmd.get("nonce") else _load_activity(ctx)
    identity = cmd.get("identity") or ""
    failure = failure_record(cmd.get("failure"))
    if act["status"] == "SCHEDULED":
        _act_start_attempt(ctx, act, identity, None)
    if failure.get("type") == "CanceledError" and act.get("cancelRequested"):
        act["lastFailure"] = failure
        _act_close(ctx, act, "CANCELED", "ACTIVITY_TASK_CANCELED", {"details": failure, "identity": identity})
    else:
        if act.get("failureCause") is None and cmd.get("cause"):
            act["failureCause"] = cmd["cause"]
        _act_attempt_failed(ctx, act, failure, identity)
    _act_save(ctx, act)
    return C.ok(activity=act)


def op_act_cancel(ctx: Ctx) -> Result:
    """Not started: CANCELED at once. Started: a cancel request the worker sees on heartbeats."""
    cmd = ctx.cmd
    act = _load_activity(ctx)
    cancel(ctx, act, cmd.get("reason") or "", cmd.get("identity") or "")
    return C.ok(activity=act)


def cancel(ctx: Ctx, act: dict[str, Any], reason: str, identity: str) -> None:
    """Cancel an open activity: at once when not started, else a request its worker sees."""
    if act["status"] == "SCHEDULED":
        _act_close(ctx, act, "CANCELED", "ACTIVITY_TASK_CANCELED", {"details": reason, "identity": identity})
    elif not act.get("cancelRequested"):
        act["cancelRequested"] = True
        act["cancelReason"] = reason
        ctx.notify("activity.cancel_requested", activity_id=act["activityId"], run_id=act["runId"])
    _act_save(ctx, act)


def op_act_heartbeat(ctx: Ctx) -> Result:
    """Store details and push the heartbeat deadline; an HTTP heartbeat may start the attempt."""
    cmd = ctx.cmd
    act = _current_attempt(ctx) if cmd.get("nonce") else _load_activity(ctx)
    if act["status"] == "SCHEDULED":
        _act_start_attempt(ctx, act, cmd.get("identity") or "", None)
    act["lastHeartbeatTime"] = ctx.now
    if cmd.get("details") is not None:
        act["heartbeatDetails"] = cmd["details"]
    ctx.notify("activity.heartbeat", activity_id=act["activityId"], run_id=act["runId"], details=cmd.get("details"))
    if act.get("heartbeatTimeout"):
        _act_arm(ctx, act, "heartbeat", ctx.now + act["heartbeatTimeout"])
    _act_save(ctx, act)
    return C.ok(activity=act, cancelRequested=bool(act.get("cancelRequested")))


def op_act_timeout(ctx: Ctx) -> Result:
    """A durable activity timer fired (keyed by activity, kind and due time: applies at most once)."""
    cmd = ctx.cmd
    act = ctx.get(ctx.k.activity(cmd["activityId"], cmd["runId"]))
    kind, at = cmd["kind"], cmd["at"]
    if act is None or act["status"] not in ACT_OPEN or (act.get("timers") or {}).get(kind) != at:
        return C.ok(outcome="stale")
    _act_disarm(ctx, act, kind)
    names = {"scheduleToStart": "SCHEDULE_TO_START", "scheduleToClose": "SCHEDULE_TO_CLOSE",
             "startToClose": "START_TO_CLOSE", "heartbeat": "HEARTBEAT"}
    failure = {"message": f"activity {names[kind].lower().replace('_', '-')} timeout", "type": "TimeoutError",
               "nonRetryable": False, "timeoutType": names[kind]}
    if kind in ("scheduleToStart", "scheduleToClose"):
        act["lastFailure"] = failure
        _act_close(ctx, act, "TIMED_OUT", "ACTIVITY_TASK_TIMED_OUT", {"failure": failure, "retryState": "TIMEOUT"})
    else:
        _act_attempt_failed(ctx, act, failure, "engine")
    _act_save(ctx, act)
    return C.ok(outcome=kind, activity=act)


HANDLERS: dict[str, Handler] = {
    "act.schedule": op_act_schedule,
    "act.start": op_act_start,
    "act.lease": op_act_lease,
    "act.release": op_act_release,
    "act.complete": op_act_complete,
    "act.fail": op_act_fail,
    "act.cancel": op_act_cancel,
    "act.heartbeat": op_act_heartbeat,
    "act.timeout": op_act_timeout,
}
