"""A workflow run's lifecycle, shared by every command family that touches runs.

Starting and closing a run, appending to its history, its workflow task
(scheduled, started, dropped), its durable timers, the retry of a failed
attempt, the activities it has open, and the runs a schedule started (a
scheduled run's close hands the schedule its next buffered fire, so that part
lives with ``close_run`` rather than in ``schedules``, which imports this).

The child workflows a run started live here too, for the same reason: a
run's close reports to its parent and applies its parent close policy to its
own open children (``children`` holds the commands that start them).

The command handlers (``workflows``, ``workflow_tasks``, ``wf_commands``,
``children``, ``activities``, ``schedules``) import these helpers; nothing here imports a
handler module, so the imports of ``shard`` form no cycle.
"""

from __future__ import annotations

from typing import Any

from hanzo_tasks.shard.ctx import OPEN, Ctx, Reject, format_seconds

#: A schedule's ``info.recent`` keeps its last this many actions.
RECENT_ACTIONS = 10
#: A user timer is the durable run timer of kind ``t:<timerId>`` (``wf.deadline``).
TIMER_PREFIX = "t:"


# ---------------------------------------------------------------------------
# history and the workflow task


def add_event(ctx: Ctx, run: dict[str, Any], etype: str, attrs: dict[str, Any]) -> int:
    eid: int = run["historyLength"] + 1
    run["historyLength"] = eid
    ctx.put(
        ctx.k.event(run["runId"], eid),
        {"eventId": eid, "eventTime": ctx.now, "eventType": etype, "attributes": attrs},
    )
    return eid


def schedule_workflow_task(ctx: Ctx, run: dict[str, Any], *, attempt: int = 1, delay_ms: int = 0) -> None:
    """WORKFLOW_TASK_SCHEDULED, unless a workflow task is already pending.

    A task that is started (leased) gets the trigger noted instead: a new task
    follows its completion (SPEC §5.2). ``delay_ms`` makes the task visible to
    dispatch only later (retry back-off): a durable timer, in shard state.
    """
    wt = run.get("wt")
    if wt:
        if wt["state"] == "STARTED":
            run["triggerPending"] = True
        return
    if run.get("holdTask"):  # its own task is completing: a task follows the command list
        run["triggerPending"] = True
        return
    eid = add_event(
        ctx,
        run,
        "WORKFLOW_TASK_SCHEDULED",
        {
            "taskQueue": {"name": run["taskQueue"]},
            "startToCloseTimeout": run["workflowTaskTimeout"],
            "attempt": attempt,
            "workflowAttempt": run["attempt"],
        },
    )
    visible = ctx.now + max(0, delay_ms)
    run["wt"] = {"state": "SCHEDULED", "scheduledTime": ctx.now, "attempt": attempt, "eventId": eid,
                 "visibleAt": visible}
    ctx.put_raw(ctx.k.pending(run["taskQueue"], visible, run["workflowId"], run["runId"]), b"")


def drop_workflow_task(ctx: Ctx, run: dict[str, Any]) -> None:
    """Forget the run's pending or started task (its token becomes stale)."""
    wt = run.get("wt")
    if wt:
        if wt["state"] == "SCHEDULED":
            ctx.txn.delete(ctx.k.pending(run["taskQueue"], wt.get("visibleAt", wt["scheduledTime"]),
                                         run["workflowId"], run["runId"]))
        else:
            ctx.txn.delete(ctx.k.started(run["workflowId"], run["runId"]))
    run["wt"] = None
    run.pop("triggerPending", None)


def current_task(ctx: Ctx, state: str) -> dict[str, Any]:
    """The run whose task the command names, if that task is still the current one."""
    cmd = ctx.cmd
    run: dict[str, Any] | None = ctx.get(ctx.k.run(cmd["workflowId"], cmd["runId"]))
    wt = run.get("wt") if run else None
    if (
        run is None
        or run["status"] not in OPEN
        or not wt
        or wt["state"] != state
        or wt["eventId"] != cmd["scheduledEventId"]
        or wt["attempt"] != cmd["attempt"]
        or (state == "STARTED" and cmd.get("nonce") is not None and wt.get("nonce") != cmd["nonce"])
    ):
        raise Reject("not_found", "task not current")
    return run


# ---------------------------------------------------------------------------
# run records


def save_run(ctx: Ctx, run: dict[str, Any]) -> None:
    ctx.put(ctx.k.run(run["workflowId"], run["runId"]), run)


def load_run(ctx: Ctx, wid: str, rid: str | None) -> dict[str, Any]:
    if not rid:
        rid = ctx.get(ctx.k.latest(wid))
        if rid is None:
            raise Reject("not_found", f"workflow {wid} not found")
    run: dict[str, Any] | None = ctx.get(ctx.k.run(wid, rid))
    if run is None:
        raise Reject("not_found", f"workflow {wid} run {rid} not found")
    return run


def run_exists(ctx: Ctx, rid: str) -> bool:
    return ctx.exists(ctx.k.event(rid, 1))


def index_new_run(ctx: Ctx, run: dict[str, Any], request_id: str | None) -> None:
    wid, rid = run["workflowId"], run["runId"]
    save_run(ctx, run)
    ctx.put(ctx.k.latest(wid), rid)
    ctx.put_raw(ctx.k.list_index(run["startTime"], wid, rid), b"")
    if request_id:
        ctx.put(ctx.k.request(request_id), [wid, rid])


# ---------------------------------------------------------------------------
# start


def start_run(ctx: Ctx, spec: dict[str, Any], *, wid: str, rid: str, signal: Any = None) -> dict[str, Any]:
    """Create a RUNNING run with its STARTED (and maybe SIGNALED) and first task events."""
    run: dict[str, Any] = {
        "workflowId": wid,
        "runId": rid,
        "type": spec["type"],
        "taskQueue": spec.get("taskQueue") or "default",
        "status": "RUNNING",
        "startTime": ctx.now,
        "closeTime": None,
        "historyLength": 0,
        "attempt": 1,
        "workflowTaskTimeout": spec.get("workflowTaskTimeout") or 10_000,
        "firstStart": spec.get("firstStart") or ctx.now,
        "wt": None,
        "wtEver": False,
    }
    for f in (
        "input",
        "memo",
        "searchAttrs",
        "retryPolicy",
        "workflowExecutionTimeout",
        "workflowRunTimeout",
        "continuedFromRunId",
        "scheduleId",
        "identity",
        "requestId",
        "resetFrom",
        "parent",
    ):
        if spec.get(f) is not None or (f == "input" and "input" in spec):
            run[f] = spec.get(f)
    attrs: dict[str, Any] = {
        "workflowType": {"name": run["type"]},
        "taskQueue": {"name": run["taskQueue"]},
        "input": spec.get("input"),
        "attempt": 1,
        "identity": spec.get("identity") or "",
        "workflowTaskTimeout": run["workflowTaskTimeout"],
    }
    for f in (
        "requestId",
        "workflowExecutionTimeout",
        "workflowRunTimeout",
        "retryPolicy",
        "memo",
        "scheduleId",
    ):
        if spec.get(f) is not None:
            attrs[f] = spec[f]
    if spec.get("searchAttrs"):
        attrs["searchAttributes"] = spec["searchAttrs"]
    if spec.get("continuedFromRunId"):
        attrs["continuedExecutionRunId"] = spec["continuedFromRunId"]
    if spec.get("nominalTime") is not None:
        attrs["nominalTime"] = spec["nominalTime"]
    if spec.get("parent"):
        parent = spec["parent"]
        attrs["parentWorkflowExecution"] = {"workflowId": parent["workflowId"], "runId": parent["runId"]}
        attrs["parentInitiatedEventId"] = parent["initiatedEventId"]
    if spec.get("copyFrom") is None:
        add_event(ctx, run, "WORKFLOW_EXECUTION_STARTED", attrs)
    if signal is not None:
        add_event(ctx, run, "WORKFLOW_EXECUTION_SIGNALED", signal)
    if spec.get("skipTask"):
        pass
    else:
        schedule_workflow_task(ctx, run)
    index_new_run(ctx, run, spec.get("requestId"))
    arm_run_timers(ctx, run)
    ctx.notify("workflow.started", workflow_id=wid, run_id=rid)
    return run


# ---------------------------------------------------------------------------
# durable run timers


def arm_run_timers(ctx: Ctx, run: dict[str, Any]) -> None:
    """Durable deadlines of a run, kept in shard state so any new leader finds them."""
    timers = run.setdefault("timers", {})
    if run.get("workflowRunTimeout") and "run" not in timers:
        timers["run"] = ctx.now + run["workflowRunTimeout"]
    if run.get("workflowExecutionTimeout") and "execution" not in timers:
        timers["execution"] = run["firstStart"] + run["workflowExecutionTimeout"]
    for kind, at in timers.items():
        ctx.put_raw(ctx.k.deadline(at, kind, run["workflowId"], run["runId"]), b"")
    save_run(ctx, run)


def disarm_run_timer(ctx: Ctx, run: dict[str, Any], kind: str) -> None:
    timers = run.get("timers") or {}
    at = timers.pop(kind, None)
    if at is not None:
        ctx.txn.delete(ctx.k.deadline(at, kind, run["workflowId"], run["runId"]))


# ---------------------------------------------------------------------------
# close, cancel, retry


def close_run(
    ctx: Ctx,
    run: dict[str, Any],
    status: str,
    etype: str,
    attrs: dict[str, Any],
    *,
    dead_letter: str | None = None,
) -> None:
    """Close an open run: final event, stale tokens, schedule bookkeeping."""
    add_event(ctx, run, etype, attrs)
    run["status"] = status
    run["closeTime"] = ctx.now
    drop_workflow_task(ctx, run)
    for kind in list(run.get("timers") or {}):
        disarm_run_timer(ctx, run, kind)
    run.pop("openTimers", None)  # user timers were disarmed above; activities' closes are ignored
    run.pop("openActs", None)
    if dead_letter:
        run["deadLetterReason"] = dead_letter
        ctx.put_raw(ctx.k.dead_index(ctx.now, run["workflowId"], run["runId"]), b"")
    save_run(ctx, run)
    ctx.notify(
        "workflow." + status.lower(), workflow_id=run["workflowId"], run_id=run["runId"]
    )
    sid = run.get("scheduleId")
    if sid:
        _schedule_run_closed(ctx, sid, run)
    apply_parent_close_policy(ctx, run)
    if run.get("parent") and status != "CONTINUED_AS_NEW":
        _report_to_parent(ctx, run, status, attrs)


def terminate_run(ctx: Ctx, run: dict[str, Any], reason: str, identity: str) -> None:
    close_run(
        ctx,
        run,
        "TERMINATED",
        "WORKFLOW_EXECUTION_TERMINATED",
        {"reason": reason, "identity": identity},
    )


def request_cancel(ctx: Ctx, run: dict[str, Any], reason: str, identity: str, *,
                   ack_ms: int | None = None) -> None:
    """Cancel per SPEC §5.4: at once when no workflow task ever started.

    The cancel-ack sweep is armed for ``ack_ms``, else for the command's
    ``cancelAckMs`` (client cancels carry it), else not at all.
    """
    if run["status"] != "RUNNING":
        return
    add_event(
        ctx, run, "WORKFLOW_EXECUTION_CANCEL_REQUESTED", {"reason": reason, "identity": identity}
    )
    if not run.get("wtEver"):
        drop_workflow_task(ctx, run)
        close_run(
            ctx,
            run,
            "CANCELED",
            "WORKFLOW_EXECUTION_CANCELED",
            {"reason": reason, "identity": identity},
        )
        return
    run["status"] = "CANCELING"
    run["cancelRequestedAt"] = ctx.now
    if ack_ms is None and ctx.cmd.get("cancelAckMs"):
        ack_ms = int(ctx.cmd["cancelAckMs"])
    if ack_ms:
        run.setdefault("timers", {})["cancel"] = ctx.now + ack_ms
        ctx.put_raw(ctx.k.deadline(run["timers"]["cancel"], "cancel", run["workflowId"], run["runId"]), b"")
    schedule_workflow_task(ctx, run)
    save_run(ctx, run)
    ctx.notify("workflow.cancel_requested", workflow_id=run["workflowId"], run_id=run["runId"])


def fail_workflow(
    ctx: Ctx, run: dict[str, Any], failure: dict[str, Any], completed_eid: int | None, *, timed_out: bool = False
) -> None:
    """SPEC §5.6 workflow retry: another attempt after back-off, or a final failure (dead letter)."""
    rp = run.get("retryPolicy")
    attempt = run["attempt"]
    run["lastFailure"] = failure
    state = reason = None
    backoff = 0
    if rp is None:
        state, reason = "RETRY_POLICY_NOT_SET", "no_retry_policy"
    elif failure.get("nonRetryable") or failure.get("type") in (rp.get("nonRetryableErrorTypes") or []):
        state, reason = "NON_RETRYABLE_FAILURE", "non_retryable"
    elif rp.get("maximumAttempts", 0) > 0 and attempt >= rp["maximumAttempts"]:
        state, reason = "MAXIMUM_ATTEMPTS_REACHED", "attempts_exhausted"
    else:
        backoff = int(min(rp["initialInterval"] * rp["backoffCoefficient"] ** (attempt - 1), rp["maximumInterval"]))
        deadline = run.get("workflowExecutionTimeout")
        if deadline and ctx.now + backoff > run["firstStart"] + deadline:
            state, reason = "TIMEOUT", "timeout"
    if state is not None:
        if timed_out:
            close_run(ctx, run, "TIMED_OUT", "WORKFLOW_EXECUTION_TIMED_OUT",
                      {"timeoutType": "RUN", "attempt": attempt, "retryState": state}, dead_letter="timeout")
            return
        attrs: dict[str, Any] = {"failure": failure, "attempt": attempt, "retryState": state}
        if completed_eid is not None:
            attrs["workflowTaskCompletedEventId"] = completed_eid
        close_run(ctx, run, "FAILED", "WORKFLOW_EXECUTION_FAILED", attrs, dead_letter=reason)
        return
    add_event(ctx, run, "WORKFLOW_EXECUTION_ATTEMPT_FAILED",
              {"failure": failure, "attempt": attempt, "backoff": backoff, "nextAttemptTime": ctx.now + backoff})
    run["attempt"] = attempt + 1
    drop_attempt_state(ctx, run)
    drop_workflow_task(ctx, run)
    schedule_workflow_task(ctx, run, attempt=1, delay_ms=backoff)
    if run.get("workflowRunTimeout"):
        disarm_run_timer(ctx, run, "run")
        run.setdefault("timers", {})["run"] = ctx.now + backoff + run["workflowRunTimeout"]
        ctx.put_raw(ctx.k.deadline(run["timers"]["run"], "run", run["workflowId"], run["runId"]), b"")
    save_run(ctx, run)
    ctx.notify("workflow.retry_scheduled", workflow_id=run["workflowId"], run_id=run["runId"])



def drop_attempt_state(ctx: Ctx, run: dict[str, Any]) -> None:
    """A run attempt failed and will be retried: its timers and activities are dropped (SPEC §5.6)."""
    for timer_id in list(run.get("openTimers") or {}):
        disarm_run_timer(ctx, run, TIMER_PREFIX + timer_id)
    run.pop("openTimers", None)
    run.pop("openActs", None)
    # The next attempt runs the code from the top and starts its own children.
    apply_parent_close_policy(ctx, run)


# ---------------------------------------------------------------------------
# activities a run has open (SPEC §5.6)


def track_activity(run: dict[str, Any], seid: int, aid: str, arid: str) -> None:
    run.setdefault("openActs", {})[str(seid)] = {"activityId": aid, "runId": arid}


def untrack_activity(run: dict[str, Any], seid: int) -> None:
    acts = run.get("openActs")
    if acts:
        acts.pop(str(seid), None)


# ---------------------------------------------------------------------------
# runs a schedule started


def open_scheduled_runs(ctx: Ctx, s: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for wid, rid in s["info"]["running"]:
        run = ctx.get(ctx.k.run(wid, rid))
        if run is not None and run["status"] in OPEN:
            out.append(run)
    return out


def start_scheduled(
    ctx: Ctx, s: dict[str, Any], wid: str, schedule_time: int, nominal: int | None
) -> dict[str, Any]:
    info = s["info"]
    spec = dict(s["action"])
    spec["scheduleId"] = s["scheduleId"]
    spec["identity"] = f"schedule:{s['scheduleId']}"
    if nominal is not None:
        spec["nominalTime"] = nominal
    rid = ctx.new_run_id()
    run = start_run(ctx, spec, wid=wid, rid=rid)
    info["actionCount"] += 1
    state = s["state"]
    if state.get("limitedActions"):
        state["remainingActions"] = max(0, state.get("remainingActions", 0) - 1)
    info["running"].append([wid, rid])
    info["recent"].append([schedule_time, ctx.now, wid, rid])
    del info["recent"][:-RECENT_ACTIONS]
    ctx.put(ctx.k.schedule(s["scheduleId"]), s)
    return run


def fired_workflow_id(s: dict[str, Any], nominal: int) -> str:
    return f"{s['scheduleId']}-{format_seconds(nominal)}"


def _schedule_run_closed(ctx: Ctx, sid: str, run: dict[str, Any]) -> None:
    s = ctx.get(ctx.k.schedule(sid))
    if s is None:
        return
    info = s["info"]
    info["running"] = [p for p in info["running"] if p != [run["workflowId"], run["runId"]]]
    if s["policies"].get("pauseOnFailure") and run["status"] in ("FAILED", "TIMED_OUT"):
        s["state"]["paused"] = True
        s["state"]["note"] = f"paused: workflow {run['workflowId']} failed"
    ctx.put(ctx.k.schedule(sid), s)
    if info["buffered"] and not open_scheduled_runs(ctx, s):
        nominal = info["buffered"].pop(0)
        wid = fired_workflow_id(s, nominal)
        latest = ctx.get(ctx.k.latest(wid))
        if latest is not None:
            other = ctx.get(ctx.k.run(wid, latest))
            if other is not None and other["status"] in OPEN:
                return
        start_scheduled(ctx, s, wid, nominal, nominal)



# ---------------------------------------------------------------------------
# child workflows a run started (SPEC §5.6 StartChildWorkflowExecution)

#: What a parent's close does to its open children, by ``parentClosePolicy``.
PARENT_CLOSE_POLICIES = ("TERMINATE", "ABANDON", "REQUEST_CANCEL")
#: The cancel-ack sweep of a child canceled by its parent's close policy when
#: the closing command carries no ``cancelAckMs`` (SPEC ``timeouts.cancel_ack``).
DEFAULT_CANCEL_ACK_MS = 60_000
#: The reason recorded on a child its parent's close terminated or canceled.
PARENT_CLOSED = "by parent close policy"

_CHILD_EVENTS = {
    "COMPLETED": "CHILD_WORKFLOW_EXECUTION_COMPLETED",
    "FAILED": "CHILD_WORKFLOW_EXECUTION_FAILED",
    "CANCELED": "CHILD_WORKFLOW_EXECUTION_CANCELED",
    "TIMED_OUT": "CHILD_WORKFLOW_EXECUTION_TIMED_OUT",
    "TERMINATED": "CHILD_WORKFLOW_EXECUTION_TERMINATED",
}
#: The attributes of a child's close event that its parent's event carries.
_CHILD_OUTCOME = ("result", "failure", "retryState", "timeoutType", "details", "reason")


def track_child(run: dict[str, Any], initiated_eid: int, child: dict[str, Any], policy: str,
                started_eid: int) -> None:
    run.setdefault("children", {})[str(initiated_eid)] = {
        "workflowId": child["workflowId"], "runId": child["runId"], "type": child["type"],
        "policy": policy, "startedEventId": started_eid,
    }


def open_child_runs(ctx: Ctx, run: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(policy, child run) for each child of ``run`` that is still open, in start order."""
    out = []
    for _ieid, entry in sorted((run.get("children") or {}).items(), key=lambda kv: int(kv[0])):
        child = ctx.get(ctx.k.run(entry["workflowId"], entry["runId"]))
        if child is not None and child["status"] in OPEN:
            out.append((entry["policy"], child))
    return out


def apply_parent_close_policy(ctx: Ctx, run: dict[str, Any]) -> None:
    """The run closed (or its attempt failed): each open child gets its policy, once.

    The bookkeeping is dropped first, so the closes this causes are not
    reported back into the run.
    """
    if not run.get("children"):
        return
    targets = open_child_runs(ctx, run)
    run.pop("children", None)
    save_run(ctx, run)
    for policy, child in targets:
        if child["status"] not in OPEN:  # closed meanwhile, by a sibling's cascade
            continue
        if policy == "TERMINATE":
            terminate_run(ctx, child, PARENT_CLOSED, "engine")
        elif policy == "REQUEST_CANCEL" and child["status"] == "RUNNING":
            request_cancel(ctx, child, PARENT_CLOSED, "engine",
                           ack_ms=int(ctx.cmd.get("cancelAckMs") or DEFAULT_CANCEL_ACK_MS))


def _report_to_parent(ctx: Ctx, child: dict[str, Any], status: str, attrs: dict[str, Any]) -> None:
    """A child closed: CHILD_WORKFLOW_EXECUTION_<status> in its parent, a trigger event."""
    link = child["parent"]
    parent = ctx.get(ctx.k.run(link["workflowId"], link["runId"]))
    if parent is None or parent["status"] not in OPEN:
        return  # the parent closed first (its policy was applied) or was removed
    ieid = link["initiatedEventId"]
    entry = (parent.get("children") or {}).get(str(ieid))
    if entry is None or entry["workflowId"] != child["workflowId"] or entry["runId"] != child["runId"]:
        return  # the parent's attempt that started it failed: its children were let go
    del parent["children"][str(ieid)]
    event: dict[str, Any] = {
        "initiatedEventId": ieid,
        "startedEventId": entry["startedEventId"],
        "workflowExecution": {"workflowId": child["workflowId"], "runId": child["runId"]},
        "workflowType": {"name": child["type"]},
    }
    for f in _CHILD_OUTCOME:
        if attrs.get(f) is not None:
            event[f] = attrs[f]
    add_event(ctx, parent, _CHILD_EVENTS[status], event)
    schedule_workflow_task(ctx, parent)
    save_run(ctx, parent)


def child_continued(ctx: Ctx, old: dict[str, Any], new: dict[str, Any]) -> None:
    """A child continued as new: its parent now waits for the new run."""
    link = old.get("parent")
    if not link:
        return
    parent = ctx.get(ctx.k.run(link["workflowId"], link["runId"]))
    entry = ((parent or {}).get("children") or {}).get(str(link["initiatedEventId"]))
    if parent is None or entry is None or entry["runId"] != old["runId"]:
        return
    entry["runId"] = new["runId"]
    entry["type"] = new["type"]
    save_run(ctx, parent)
