"""Workflow tasks (SPEC §5.6): ``wt.*`` — a worker leases the task, completes it
with commands (``wf_commands``), fails it, or lets its lease time out."""

from __future__ import annotations

from typing import Any

from hanzo_tasks.shard import commands as C
from hanzo_tasks.shard import wf_commands
from hanzo_tasks.shard.ctx import OPEN, Ctx, Handler, Result, failure_record
from hanzo_tasks.shard.runs import (
    add_event,
    current_task,
    drop_workflow_task,
    save_run,
    schedule_workflow_task,
)


def op_wt_start(ctx: Ctx) -> Result:
    """A worker accepted the push: the task is leased (recorded before the push is sent)."""
    run = current_task(ctx, "SCHEDULED")
    wt = run["wt"]
    ctx.txn.delete(ctx.k.pending(run["taskQueue"], wt.get("visibleAt", wt["scheduledTime"]),
                                 run["workflowId"], run["runId"]))
    eid = add_event(ctx, run, "WORKFLOW_TASK_STARTED", {
        "scheduledEventId": wt["eventId"],
        "identity": ctx.cmd.get("identity") or "",
        "subscriptionId": ctx.cmd.get("subscriptionId") or "",
    })
    wt.update(state="STARTED", startedEventId=eid, startedTime=ctx.now, nonce=ctx.cmd.get("nonce"),
              identity=ctx.cmd.get("identity") or "", subscriptionId=ctx.cmd.get("subscriptionId") or "")
    run["wtEver"] = True
    ctx.put_raw(ctx.k.started(run["workflowId"], run["runId"]), b"")
    save_run(ctx, run)
    return C.ok(run=run)


def _retry_delay(task_attempt: int) -> int:
    backoff: int = 1000 * 2 ** (task_attempt - 1)
    return min(backoff, 60_000)


def _task_failed(ctx: Ctx, run: dict[str, Any], cause: str, failure: Any, identity: str) -> None:
    wt = run["wt"]
    attrs: dict[str, Any] = {"scheduledEventId": wt["eventId"], "startedEventId": wt.get("startedEventId"),
                             "cause": cause, "identity": identity}
    if failure is not None:
        attrs["failure"] = failure
    add_event(ctx, run, "WORKFLOW_TASK_FAILED", attrs)
    run.pop("sticky", None)  # after a failure the next task carries the whole history
    attempt = wt["attempt"] + 1
    drop_workflow_task(ctx, run)
    at_once = cause in ("worker_lost", "push_refused")
    schedule_workflow_task(ctx, run, attempt=attempt, delay_ms=0 if at_once else _retry_delay(attempt - 1))
    save_run(ctx, run)


def op_wt_complete(ctx: Ctx) -> Result:
    """0x00A2: apply the worker's commands in one command, after WORKFLOW_TASK_COMPLETED.

    ``badCommand`` is set by the proposer when a command's fields are invalid;
    otherwise the run's state decides (``wf_commands.first_invalid``).
    """
    run = current_task(ctx, "STARTED")
    identity = ctx.cmd.get("identity") or ""
    commands = ctx.cmd.get("commands") or []
    bad = ctx.cmd.get("badCommand")
    if bad is None:
        bad = wf_commands.first_invalid(run, commands)
    if bad is not None:
        # Nothing of the commands is applied; the task fails (bad_command) and is retried.
        _task_failed(ctx, run, "bad_command", None, identity)
        return C.err("invalid_argument", f"invalid command at index {bad}", {"command_index": bad})
    wt = run["wt"]
    eid = add_event(ctx, run, "WORKFLOW_TASK_COMPLETED", {
        "scheduledEventId": wt["eventId"], "startedEventId": wt["startedEventId"], "identity": identity,
    })
    trigger = run.get("triggerPending")
    if wt.get("subscriptionId"):  # its next task goes preferably to the same subscription (sticky)
        run["sticky"] = {"sub": wt["subscriptionId"], "started": wt["startedEventId"]}
    drop_workflow_task(ctx, run)
    wf_commands.apply(ctx, run, commands, eid, identity)
    # Outcomes of child starts and external commands in this list are triggers too (``children``).
    trigger = run.pop("triggerPending", None) or trigger
    if run["status"] in OPEN and (trigger or run["status"] == "CANCELING") and not run.get("wt"):
        schedule_workflow_task(ctx, run)
    save_run(ctx, run)
    return C.ok(run=run)


def op_wt_fail(ctx: Ctx) -> Result:
    """0x00A7, a lost worker or a refused push: WORKFLOW_TASK_FAILED and a new attempt."""
    run = current_task(ctx, "STARTED")
    cause = ctx.cmd.get("cause") or "worker_failed"
    failure = ctx.cmd.get("failure")
    _task_failed(ctx, run, cause, failure_record(failure) if failure is not None else None,
                 ctx.cmd.get("identity") or "")
    return C.ok(run=run)


def op_wt_timeout(ctx: Ctx) -> Result:
    """The lease ran out: WORKFLOW_TASK_TIMED_OUT and a new attempt at once (keyed by attempt)."""
    run = current_task(ctx, "STARTED")
    wt = run["wt"]
    add_event(ctx, run, "WORKFLOW_TASK_TIMED_OUT", {
        "scheduledEventId": wt["eventId"], "startedEventId": wt["startedEventId"], "timeoutType": "START_TO_CLOSE",
    })
    run.pop("sticky", None)
    attempt = wt["attempt"] + 1
    drop_workflow_task(ctx, run)
    schedule_workflow_task(ctx, run, attempt=attempt)
    save_run(ctx, run)
    return C.ok(run=run)



HANDLERS: dict[str, Handler] = {
    "wt.start": op_wt_start,
    "wt.complete": op_wt_complete,
    "wt.fail": op_wt_fail,
    "wt.timeout": op_wt_timeout,
}
