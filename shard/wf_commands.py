"""The commands a workflow task completes with (SPEC §5.6, 0x00A2).

The dispatcher checks their fields and normalises them (names, durations,
retry policies) before proposing; what is checked here is what depends on the
run's state — a duplicate open activityId or timerId, an unknown timer or
activity, a terminal command that is not last, a cancel with no cancel
requested — so that every replica rejects exactly the same lists. All of a
list is applied or none of it (the caller's nested transaction).

Open timers and activities of the current attempt are kept on the run record
(``openTimers``: timerId → {at, eventId}; ``openActs``: scheduledEventId →
{activityId, runId}); a timer is also a durable run timer ``t:<timerId>`` that
the partition leader fires as ``wf.deadline``.
"""

from __future__ import annotations

from typing import Any

from hanzo_tasks.shard import activities, children, runs
from hanzo_tasks.shard.ctx import Ctx, failure_record
from hanzo_tasks.shard.runs import TIMER_PREFIX

TERMINAL = ("CompleteWorkflowExecution", "FailWorkflowExecution", "CancelWorkflowExecution", "ContinueAsNew")
KINDS = TERMINAL + ("RecordMarker", "ScheduleActivityTask", "RequestCancelActivityTask", "StartTimer",
                    "CancelTimer", "UpsertSearchAttributes") + children.KINDS


def first_invalid(run: dict[str, Any], commands: Any) -> int | None:
    """Index of the first command the run's state makes invalid, or None when all apply."""
    if not isinstance(commands, list):
        return 0
    timers = set(run.get("openTimers") or {})
    act_ids = {a["activityId"] for a in (run.get("openActs") or {}).values()}
    act_events = set(run.get("openActs") or {})
    for i, c in enumerate(commands):
        if not isinstance(c, dict):
            return i
        t = c.get("type")
        if t not in KINDS:
            return i
        if t in TERMINAL and i != len(commands) - 1:
            return i
        if t == "CancelWorkflowExecution" and run["status"] != "CANCELING":
            return i
        if t == "RecordMarker" and not isinstance(c.get("marker_name"), str):
            return i
        if t == "StartTimer":
            tid, ms = c.get("timer_id"), c.get("start_to_fire_timeout_ms")
            if not isinstance(tid, str) or not tid or tid in timers or not _positive_int(ms):
                return i
            timers.add(tid)
        if t == "CancelTimer":
            if c.get("timer_id") not in timers:
                return i
            timers.discard(c["timer_id"])
        if t == "ScheduleActivityTask":
            aid = c.get("activity_id")
            if not isinstance(c.get("activity_type"), str) or (aid is not None and not isinstance(aid, str)):
                return i
            if aid is not None:
                if aid in act_ids:
                    return i
                act_ids.add(aid)
        if t == "RequestCancelActivityTask":
            seid = c.get("scheduled_event_id")
            if not _positive_int(seid) or str(seid) not in act_events:
                return i
            act_events.discard(str(seid))
        if t == "UpsertSearchAttributes" and not isinstance(c.get("search_attributes"), dict):
            return i
        if t in children.KINDS and children.malformed(c):
            return i
    return None


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def apply(ctx: Ctx, run: dict[str, Any], commands: list[dict[str, Any]], completed_eid: int, identity: str) -> None:
    """Apply a checked command list after WORKFLOW_TASK_COMPLETED (event ``completed_eid``).

    Child starts and external signals / cancels are carried out after the other
    commands and before the terminal one (``children``): their outcomes follow
    the command events, and a run that closes in this list closes with its new
    children already there for its parent close policy.
    """
    initiated = []
    for c in commands:
        if c["type"] in children.KINDS:
            initiated.append(children.initiate(ctx, run, c, completed_eid))
            continue
        if c["type"] in TERMINAL and initiated:
            children.resolve(ctx, run, initiated, identity)
            initiated = []
        _apply_one(ctx, run, c, completed_eid, identity)
    if initiated:
        children.resolve(ctx, run, initiated, identity)


def _apply_one(ctx: Ctx, run: dict[str, Any], c: dict[str, Any], completed_eid: int, identity: str) -> None:
    t = c["type"]
    if t == "RecordMarker":
        runs.add_event(ctx, run, "MARKER_RECORDED", {"markerName": c["marker_name"], "details": c.get("details")})
    elif t == "CompleteWorkflowExecution":
        run["result"] = c.get("result")
        runs.close_run(ctx, run, "COMPLETED", "WORKFLOW_EXECUTION_COMPLETED",
                       {"result": c.get("result"), "workflowTaskCompletedEventId": completed_eid})
    elif t == "FailWorkflowExecution":
        runs.fail_workflow(ctx, run, failure_record(c.get("failure")), completed_eid)
    elif t == "CancelWorkflowExecution":
        runs.close_run(ctx, run, "CANCELED", "WORKFLOW_EXECUTION_CANCELED",
                       {"details": c.get("details"), "identity": identity})
    elif t == "ContinueAsNew":
        continue_as_new(ctx, run, c, completed_eid, identity)
    elif t == "StartTimer":
        start_timer(ctx, run, c["timer_id"], c["start_to_fire_timeout_ms"], completed_eid)
    elif t == "CancelTimer":
        cancel_timer(ctx, run, c["timer_id"], completed_eid, identity)
    elif t == "ScheduleActivityTask":
        schedule_activity(ctx, run, c, completed_eid)
    elif t == "RequestCancelActivityTask":
        request_cancel_activity(ctx, run, c["scheduled_event_id"], completed_eid, identity)
    elif t == "UpsertSearchAttributes":
        upsert_search_attributes(ctx, run, c["search_attributes"], completed_eid)


# ---- timers ----------------------------------------------------------------------


def start_timer(ctx: Ctx, run: dict[str, Any], timer_id: str, ms: int, completed_eid: int) -> None:
    at = ctx.now + ms
    eid = runs.add_event(ctx, run, "TIMER_STARTED", {"timerId": timer_id, "startToFireTimeout": ms,
                                                     "workflowTaskCompletedEventId": completed_eid})
    run.setdefault("openTimers", {})[timer_id] = {"at": at, "eventId": eid}
    kind = TIMER_PREFIX + timer_id
    run.setdefault("timers", {})[kind] = at
    ctx.put_raw(ctx.k.deadline(at, kind, run["workflowId"], run["runId"]), b"")


def cancel_timer(ctx: Ctx, run: dict[str, Any], timer_id: str, completed_eid: int, identity: str) -> None:
    timer = run["openTimers"].pop(timer_id)
    runs.disarm_run_timer(ctx, run, TIMER_PREFIX + timer_id)
    runs.add_event(ctx, run, "TIMER_CANCELED", {"timerId": timer_id, "startedEventId": timer["eventId"],
                                                "workflowTaskCompletedEventId": completed_eid,
                                                "identity": identity})


def fire_timer(ctx: Ctx, run: dict[str, Any], timer_id: str) -> None:
    """A user timer is due (``wf.deadline`` of kind ``t:<timerId>``): TIMER_FIRED, a trigger event."""
    timer = (run.get("openTimers") or {}).pop(timer_id, None)
    if timer is None:
        return
    runs.add_event(ctx, run, "TIMER_FIRED", {"timerId": timer_id, "startedEventId": timer["eventId"]})
    runs.schedule_workflow_task(ctx, run)


# ---- activities ----------------------------------------------------------------------


def schedule_activity(ctx: Ctx, run: dict[str, Any], c: dict[str, Any], completed_eid: int) -> None:
    """ACTIVITY_TASK_SCHEDULED in the run, and an activity record dispatched as in §5.7."""
    spec: dict[str, Any] = {"type": c["activity_type"], "taskQueue": c.get("task_queue") or run["taskQueue"]}
    if "input" in c:
        spec["input"] = c.get("input")
    for src, dst in (("schedule_to_close_timeout_ms", "scheduleToCloseTimeout"),
                     ("schedule_to_start_timeout_ms", "scheduleToStartTimeout"),
                     ("start_to_close_timeout_ms", "startToCloseTimeout"),
                     ("heartbeat_timeout_ms", "heartbeatTimeout")):
        if c.get(src):
            spec[dst] = c[src]
    if c.get("retry_policy") is not None:
        spec["retryPolicy"] = c["retry_policy"]
    seid = run["historyLength"] + 1
    aid = c.get("activity_id") or str(seid)
    attrs: dict[str, Any] = {"activityId": aid, "activityType": {"name": spec["type"]},
                             "taskQueue": {"name": spec["taskQueue"]}, "input": spec.get("input"),
                             "retryPolicy": spec.get("retryPolicy") or activities.DEFAULT_ACTIVITY_RETRY,
                             "workflowTaskCompletedEventId": completed_eid}
    for f in ("scheduleToCloseTimeout", "scheduleToStartTimeout", "startToCloseTimeout", "heartbeatTimeout"):
        if spec.get(f):
            attrs[f] = spec[f]
    runs.add_event(ctx, run, "ACTIVITY_TASK_SCHEDULED", attrs)
    link = {"workflowId": run["workflowId"], "runId": run["runId"], "attempt": run["attempt"],
            "scheduledEventId": seid}
    act = activities.create(ctx, spec, aid, ctx.new_run_id(), workflow=link)
    ctx.put(ctx.k.workflow_activity(run["workflowId"], run["runId"], run["attempt"], aid), {"rid": act["runId"]})
    runs.track_activity(run, seid, aid, act["runId"])


def request_cancel_activity(ctx: Ctx, run: dict[str, Any], seid: int, completed_eid: int, identity: str) -> None:
    """ACTIVITY_TASK_CANCEL_REQUESTED; not started → canceled at once, started → the worker is told."""
    ref = run["openActs"][str(seid)]
    runs.add_event(ctx, run, "ACTIVITY_TASK_CANCEL_REQUESTED",
                   {"scheduledEventId": seid, "workflowTaskCompletedEventId": completed_eid})
    runs.save_run(ctx, run)
    act = ctx.get(ctx.k.activity(ref["activityId"], ref["runId"]))
    if act is None or act["status"] not in activities.ACT_OPEN:
        return
    # The activity's close (if not started) writes into the run through the
    # transaction's cache, which holds this very ``run`` object.
    activities.cancel(ctx, act, "canceled by workflow", identity)


# ---- search attributes, continue-as-new ---------------------------------------------------


def upsert_search_attributes(ctx: Ctx, run: dict[str, Any], attrs: dict[str, Any], completed_eid: int) -> None:
    merged = dict(run.get("searchAttrs") or {})
    for name, value in attrs.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    if merged:
        run["searchAttrs"] = merged
    else:
        run.pop("searchAttrs", None)
    runs.add_event(ctx, run, "UPSERT_WORKFLOW_SEARCH_ATTRIBUTES",
                   {"searchAttributes": attrs, "workflowTaskCompletedEventId": completed_eid})


def continue_as_new(ctx: Ctx, run: dict[str, Any], c: dict[str, Any], completed_eid: int, identity: str) -> None:
    """Close this run CONTINUED_AS_NEW and start the next one with the same workflowId."""
    new_rid = ctx.new_run_id()
    spec: dict[str, Any] = {
        "type": c.get("workflow_type") or run["type"],
        "taskQueue": c.get("task_queue") or run["taskQueue"],
        "input": c.get("input") if "input" in c else run.get("input"),
        "workflowTaskTimeout": c.get("workflow_task_timeout_ms") or run["workflowTaskTimeout"],
        "continuedFromRunId": run["runId"],
        "firstStart": run["firstStart"],
        "identity": identity,
    }
    for src, dst, default in (("workflow_run_timeout_ms", "workflowRunTimeout", run.get("workflowRunTimeout")),
                              ("retry_policy", "retryPolicy", run.get("retryPolicy")),
                              ("memo", "memo", run.get("memo")),
                              ("search_attributes", "searchAttrs", run.get("searchAttrs"))):
        value = c.get(src) if c.get(src) is not None else default
        if value is not None:
            spec[dst] = value
    if run.get("workflowExecutionTimeout"):
        spec["workflowExecutionTimeout"] = run["workflowExecutionTimeout"]
    if run.get("parent"):
        spec["parent"] = run["parent"]  # a child's chain stays the child of its parent
    run["nextRunId"] = new_rid
    runs.close_run(ctx, run, "CONTINUED_AS_NEW", "WORKFLOW_EXECUTION_CONTINUED_AS_NEW", {
        "newExecutionRunId": new_rid, "workflowType": {"name": spec["type"]},
        "taskQueue": {"name": spec["taskQueue"]}, "input": spec.get("input"),
        "workflowTaskCompletedEventId": completed_eid,
    })
    new = runs.start_run(ctx, spec, wid=run["workflowId"], rid=new_rid)
    runs.child_continued(ctx, run, new)
