"""Workflow commands from clients and timers: ``wf.*`` (start, signal, cancel,
terminate, reset, metadata, and ``wf.deadline``, a run's durable timer firing)."""

from __future__ import annotations

from typing import Any

from hanzo_tasks.shard import commands as C
from hanzo_tasks.shard import wf_commands
from hanzo_tasks.shard.ctx import OPEN, Ctx, Handler, Reject, Result, require_namespace
from hanzo_tasks.shard.runs import (
    TIMER_PREFIX,
    add_event,
    arm_run_timers,
    close_run,
    disarm_run_timer,
    fail_workflow,
    index_new_run,
    load_run,
    request_cancel,
    run_exists,
    save_run,
    schedule_workflow_task,
    start_run,
    terminate_run,
)


def _start_spec(cmd: dict[str, Any]) -> dict[str, Any]:
    spec = dict(cmd["start"])
    return spec


def _dedup_request(ctx: Ctx, request_id: str | None, wid: str | None) -> dict[str, Any] | None:
    if not request_id:
        return None
    seen = ctx.get(ctx.k.request(request_id))
    if seen is None:
        return None
    if wid and seen[0] != wid:
        raise Reject(
            "invalid_argument",
            f"requestId {request_id} was already used for workflow {seen[0]}",
        )
    run: dict[str, Any] | None = ctx.get(ctx.k.run(seen[0], seen[1]))
    return run


def _choose_workflow_id(ctx: Ctx, spec: dict[str, Any]) -> tuple[str, str]:
    wid = spec.get("workflowId")
    rid = spec.get("runId")
    if rid and run_exists(ctx, rid):
        raise Reject("already_exists", f"runId {rid} already exists")
    if wid:
        return wid, rid or ctx.new_run_id()
    base = spec["type"].lower().encode()[:200].decode("utf-8", "ignore")
    for _ in range(3):
        cand_rid = rid or ctx.new_run_id()
        cand = f"{base}-{cand_rid[:8]}"
        if ctx.get(ctx.k.latest(cand)) is None:
            return cand, cand_rid
        if rid:
            break
    raise Reject("already_exists", "could not generate a unique workflow id")


def op_wf_start(ctx: Ctx) -> Result:
    spec = _start_spec(ctx.cmd)
    require_namespace(ctx, for_write=True)
    signal = ctx.cmd.get("signal")
    seen = _dedup_request(ctx, spec.get("requestId"), spec.get("workflowId"))
    if seen is not None:
        return C.ok(run=seen, started=False)
    wid = spec.get("workflowId")
    if wid:
        latest = ctx.get(ctx.k.latest(wid))
        if latest is not None:
            open_run = ctx.get(ctx.k.run(wid, latest))
            if open_run is not None and open_run["status"] in OPEN:
                if signal is not None:
                    _signal(ctx, open_run, signal)
                    return C.ok(run=open_run, started=False)
                policy = spec.get("conflict") or "FAIL"
                if policy == "USE_EXISTING":
                    return C.ok(run=open_run, started=False)
                if policy == "TERMINATE_EXISTING":
                    terminate_run(ctx, open_run, "terminated by new start", spec.get("identity") or "")
                else:
                    raise Reject(
                        "already_started",
                        f"workflow {wid} is already running",
                        {"workflowId": wid, "runId": open_run["runId"]},
                    )
    wid, rid = _choose_workflow_id(ctx, spec)
    run = start_run(ctx, spec, wid=wid, rid=rid, signal=signal)
    if signal is not None:
        ctx.notify("workflow.signaled", workflow_id=wid, run_id=rid)
    return C.ok(run=run, started=True)


def _signal(ctx: Ctx, run: dict[str, Any], signal: dict[str, Any]) -> None:
    add_event(ctx, run, "WORKFLOW_EXECUTION_SIGNALED", signal)
    schedule_workflow_task(ctx, run)
    save_run(ctx, run)
    ctx.notify("workflow.signaled", workflow_id=run["workflowId"], run_id=run["runId"])


def op_wf_signal(ctx: Ctx) -> Result:
    cmd = ctx.cmd
    require_namespace(ctx, for_write=False)
    run = load_run(ctx, cmd["workflowId"], cmd.get("runId"))
    if run["status"] not in OPEN:
        raise Reject("failed_precondition", f"workflow {run['workflowId']} is not running")
    req = cmd.get("requestId")
    if req:
        key = ctx.k.signal_request(run["runId"], req)
        if ctx.exists(key):
            return C.ok(run=run, duplicate=True)
        ctx.put(key, 1)
    signal = {"signalName": cmd["name"], "input": cmd.get("input"), "identity": cmd.get("identity") or ""}
    if req:
        signal["requestId"] = req
    _signal(ctx, run, signal)
    return C.ok(run=run)


def op_wf_cancel(ctx: Ctx) -> Result:
    cmd = ctx.cmd
    require_namespace(ctx, for_write=False)
    run = load_run(ctx, cmd["workflowId"], cmd.get("runId"))
    if run["status"] == "RUNNING":
        request_cancel(ctx, run, cmd.get("reason") or "", cmd.get("identity") or "")
    return C.ok(run=run)


def op_wf_terminate(ctx: Ctx) -> Result:
    cmd = ctx.cmd
    require_namespace(ctx, for_write=False)
    run = load_run(ctx, cmd["workflowId"], cmd.get("runId"))
    if run["status"] in OPEN:
        terminate_run(ctx, run, cmd.get("reason") or "", cmd.get("identity") or "")
    return C.ok(run=run)


def op_wf_metadata(ctx: Ctx) -> Result:
    cmd = ctx.cmd
    require_namespace(ctx, for_write=False)
    run = load_run(ctx, cmd["workflowId"], cmd.get("runId"))
    meta = dict(run.get("userMetadata") or {})
    for f in ("summary", "details", "updatedBy"):
        if f in cmd:
            meta[f] = cmd[f]
    meta["updatedAt"] = ctx.now
    run["userMetadata"] = meta
    save_run(ctx, run)
    ctx.notify("workflow.updated", workflow_id=run["workflowId"], run_id=run["runId"])
    return C.ok(run=run)


def op_wf_reset(ctx: Ctx) -> Result:
    cmd = ctx.cmd
    require_namespace(ctx, for_write=False)
    req = cmd.get("requestId")
    if req:
        seen = ctx.get(ctx.k.request(req))
        if seen is not None:
            if seen[0] != cmd["workflowId"]:
                raise Reject(
                    "invalid_argument", f"requestId {req} was already used for workflow {seen[0]}"
                )
            prior: dict[str, Any] | None = ctx.get(ctx.k.run(seen[0], seen[1]))
            if prior is not None:
                return C.ok(run=prior, started=False)
    src = load_run(ctx, cmd["workflowId"], cmd.get("runId"))
    event_id = cmd["eventId"]
    if not 1 <= event_id <= src["historyLength"]:
        raise Reject(
            "invalid_argument",
            f"eventId must be between 1 and {src['historyLength']}",
        )
    reason = cmd.get("reason") or ""
    identity = cmd.get("identity") or ""
    if src["status"] in OPEN:
        terminate_run(ctx, src, f"reset: {reason}", identity)
    rid = ctx.new_run_id()
    run: dict[str, Any] = {
        k: v
        for k, v in src.items()
        if k
        in (
            "workflowId",
            "type",
            "taskQueue",
            "input",
            "workflowTaskTimeout",
            "workflowExecutionTimeout",
            "workflowRunTimeout",
            "retryPolicy",
            "memo",
            "searchAttrs",
            "scheduleId",
            "firstStart",
        )
    }
    run.update(
        runId=rid,
        status="RUNNING",
        startTime=ctx.now,
        closeTime=None,
        historyLength=0,
        attempt=1,
        wt=None,
        wtEver=False,
        resetFrom={"runId": src["runId"], "eventId": event_id, "reason": reason, "identity": identity},
    )
    run.pop("scheduleId", None)
    for eid in range(1, event_id + 1):
        ev = ctx.get(ctx.k.event(src["runId"], eid))
        if ev is not None:
            ctx.put(ctx.k.event(rid, eid), ev)
    run["historyLength"] = event_id
    add_event(
        ctx,
        run,
        "WORKFLOW_EXECUTION_RESET",
        {"baseRunId": src["runId"], "eventId": event_id, "reason": reason, "identity": identity},
    )
    schedule_workflow_task(ctx, run)
    index_new_run(ctx, run, req)
    arm_run_timers(ctx, run)
    ctx.notify("workflow.reset", workflow_id=run["workflowId"], run_id=rid)
    return C.ok(run=run, started=True)


def op_wf_deadline(ctx: Ctx) -> Result:
    """A run's durable timer fired (keyed by run, kind and time: applies at most once)."""
    cmd = ctx.cmd
    run = ctx.get(ctx.k.run(cmd["workflowId"], cmd["runId"]))
    kind, at = cmd["kind"], cmd["at"]
    if run is None or run["status"] not in OPEN or (run.get("timers") or {}).get(kind) != at:
        return C.ok(outcome="stale")
    disarm_run_timer(ctx, run, kind)
    if kind == "execution":
        close_run(ctx, run, "TIMED_OUT", "WORKFLOW_EXECUTION_TIMED_OUT",
                  {"timeoutType": "EXECUTION", "attempt": run["attempt"], "retryState": "TIMEOUT"},
                  dead_letter="timeout")
    elif kind == "run":
        failure = {"message": "workflow run timed out", "type": "TimeoutError", "nonRetryable": False,
                   "timeoutType": "RUN"}
        fail_workflow(ctx, run, failure, None, timed_out=True)
    elif kind.startswith(TIMER_PREFIX):
        wf_commands.fire_timer(ctx, run, kind[len(TIMER_PREFIX):])
    elif kind == "cancel" and run["status"] == "CANCELING":
        close_run(ctx, run, "CANCELED", "WORKFLOW_EXECUTION_CANCELED",
                  {"reason": "sweep:cancel-timeout", "identity": "engine"})
    save_run(ctx, run)
    return C.ok(outcome=kind)



HANDLERS: dict[str, Handler] = {
    "wf.start": op_wf_start,
    "wf.signal": op_wf_signal,
    "wf.cancel": op_wf_cancel,
    "wf.terminate": op_wf_terminate,
    "wf.reset": op_wf_reset,
    "wf.metadata": op_wf_metadata,
    "wf.deadline": op_wf_deadline,
}
