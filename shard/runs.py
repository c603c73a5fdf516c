"""A workflow run's lifecycle, shared by every command family that touches runs.

Starting and closing a run, appending to its history, its workflow task
(scheduled, started, dropped), its durable timers, the retry of a failed
attempt, the activities it has open, and the runs a schedule started (a
scheduled run's close hands the schedule its next buffered fire, so that part
lives with ``close_run`` rather than in ``schedules``, which imports this).

The command handlers (``workflows``, ``workflow_tasks``, ``wf_commands``,
``activities``, ``schedules``) import these helpers; nothing here imports a
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


def terminate_run(ctx: Ctx, run: dict[str, Any], reason: str, identity: str) -> None:
    close_run(
        ctx,
        run,
        "TERMINATED",
        "WORKFLOW_EXECUTION_TERMINATED",
        {"reason": reason, "identity": identity},
    )


def request_cancel(ctx: Ctx, run: dict[str, Any], reason: str, identity: str) -> None:
    """Cancel per SPEC §5.4: at once when no workflow task ever started."""
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
    if ctx.cmd.get("cancelAckMs"):
        run.setdefault("timers", {})["cancel"] = ctx.now + int(ctx.cmd["cancelAckMs"])
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

