"""Child workflows and the external signal / cancel commands (SPEC §5.6, amended).

A workflow task may start child workflows, signal other workflows and ask
them to cancel. All of these stay in the namespace, which is one shard, so
each one is carried out in the same apply as the command that asks for it;
no message crosses between runs later and nothing can be half done.

Order of a completed task's events: WORKFLOW_TASK_COMPLETED, then the event
of each command in list order (the ``…_INITIATED`` ones among them), then the
outcome of each initiated command in the same order (CHILD_WORKFLOW_EXECUTION_
STARTED or START_CHILD_WORKFLOW_EXECUTION_FAILED, EXTERNAL_WORKFLOW_EXECUTION_
SIGNALED / CANCEL_REQUESTED or their ``…_FAILED``), then the terminal
command's event, if any. A worker replaying history therefore finds the
command events together, as it issued them. Each outcome is a trigger event:
a new workflow task follows the completion (so code waiting for "child
started" or "signal delivered" goes on), unless the list closed the run.

The parent keeps its open children on its run record (``children``:
initiatedEventId → {workflowId, runId, type, policy, startedEventId}); a child
keeps ``parent`` ({workflowId, runId, initiatedEventId}). What a close does to
either side is in ``runs`` (``apply_parent_close_policy``, the child's report).
"""

from __future__ import annotations

from typing import Any

from hanzo_tasks.shard import runs
from hanzo_tasks.shard.ctx import OPEN, Ctx

START = "StartChildWorkflowExecution"
SIGNAL = "SignalExternalWorkflowExecution"
CANCEL = "RequestCancelExternalWorkflowExecution"
KINDS = (START, SIGNAL, CANCEL)

#: Child id conflict policies a StartChild command may name (USE_EXISTING
#: would adopt a run that is not a child: refused by the proposer).
CONFLICT_POLICIES = ("FAIL", "TERMINATE_EXISTING")

#: ``cause`` of the ``…_FAILED`` outcomes.
ALREADY_EXISTS = "WORKFLOW_ALREADY_EXISTS"
NAMESPACE_NOT_FOUND = "NAMESPACE_NOT_FOUND"
NOT_FOUND = "EXTERNAL_WORKFLOW_EXECUTION_NOT_FOUND"
NOT_A_CHILD = "EXTERNAL_WORKFLOW_EXECUTION_NOT_A_CHILD"

_TIMEOUTS = (("workflow_execution_timeout_ms", "workflowExecutionTimeout"),
             ("workflow_run_timeout_ms", "workflowRunTimeout"),
             ("workflow_task_timeout_ms", "workflowTaskTimeout"))


# ---- shape checks (the proposer normalises; the shard must not trust it to) ---------


def malformed(c: dict[str, Any]) -> bool:
    """True when a command of ``KINDS`` lacks what applying it needs."""
    t = c["type"]
    if t == START:
        return (not _name(c.get("workflow_type")) or not _opt_name(c.get("workflow_id"))
                or not _opt_name(c.get("task_queue"))
                or c.get("parent_close_policy") not in (None, *runs.PARENT_CLOSE_POLICIES)
                or c.get("id_conflict_policy") not in (None, *CONFLICT_POLICIES)
                or not all(_opt_ms(c.get(src)) for src, _ in _TIMEOUTS))
    bad = (not _name(c.get("workflow_id")) or not _opt_name(c.get("run_id"))
           or not isinstance(c.get("child_workflow_only", False), bool))
    if t == SIGNAL:
        bad = bad or not _name(c.get("signal_name"))
    return bad


def _name(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


def _opt_name(v: Any) -> bool:
    return v is None or _name(v)


def _opt_ms(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0)


# ---- the command events ----------------------------------------------------------


def initiate(ctx: Ctx, run: dict[str, Any], c: dict[str, Any], completed_eid: int) -> dict[str, Any]:
    """Write the command's ``…_INITIATED`` event; the returned item is resolved later."""
    t = c["type"]
    if t == START:
        eid = run["historyLength"] + 1
        wid = c.get("workflow_id") or f"{run['workflowId']}-child-{eid}"
        attrs: dict[str, Any] = {
            "workflowId": wid,
            "workflowType": {"name": c["workflow_type"]},
            "taskQueue": {"name": c.get("task_queue") or run["taskQueue"]},
            "input": c.get("input"),
            "parentClosePolicy": c.get("parent_close_policy") or "TERMINATE",
            "workflowIdConflictPolicy": c.get("id_conflict_policy") or "FAIL",
        }
        for src, dst in _TIMEOUTS:
            if c.get(src):
                attrs[dst] = c[src]
        for src, dst in (("retry_policy", "retryPolicy"), ("memo", "memo"),
                         ("search_attributes", "searchAttributes")):
            if c.get(src) is not None:
                attrs[dst] = c[src]
        attrs["workflowTaskCompletedEventId"] = completed_eid
        runs.add_event(ctx, run, "START_CHILD_WORKFLOW_EXECUTION_INITIATED", attrs)
        return {"type": t, "eid": eid, "workflowId": wid, "command": c}
    target: dict[str, Any] = {"workflowId": c["workflow_id"]}
    if c.get("run_id"):
        target["runId"] = c["run_id"]
    attrs = {"workflowExecution": target, "childWorkflowOnly": bool(c.get("child_workflow_only"))}
    if t == SIGNAL:
        attrs.update(signalName=c["signal_name"], input=c.get("input"))
        etype = "SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED"
    else:
        if c.get("reason"):
            attrs["reason"] = c["reason"]
        etype = "REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED"
    attrs["workflowTaskCompletedEventId"] = completed_eid
    eid = runs.add_event(ctx, run, etype, attrs)
    return {"type": t, "eid": eid, "workflowId": c["workflow_id"], "command": c}


def resolve(ctx: Ctx, run: dict[str, Any], items: list[dict[str, Any]], identity: str) -> None:
    """Carry out the initiated commands, in order, and record each outcome in ``run``.

    ``run`` is completing its workflow task: while this runs, a trigger on it
    (its own outcome, a signal it sends itself, a child's close) is noted and
    becomes one task after the list (``holdTask``), not one in its middle.
    """
    run["holdTask"] = True
    try:
        for item in items:
            if item["type"] == START:
                _start_child(ctx, run, item, identity)
            elif item["type"] == SIGNAL:
                _signal_external(ctx, run, item, identity)
            else:
                _cancel_external(ctx, run, item, identity)
    finally:
        run.pop("holdTask", None)
    runs.save_run(ctx, run)


# ---- outcomes ----------------------------------------------------------------------


def _start_child(ctx: Ctx, run: dict[str, Any], item: dict[str, Any], identity: str) -> None:
    c, eid, wid = item["command"], item["eid"], item["workflowId"]
    failed = {"initiatedEventId": eid, "workflowId": wid, "workflowType": {"name": c["workflow_type"]}}
    ns = ctx.get(ctx.k.namespace())
    if ns is None or ns["state"] == "DELETED":
        _outcome(ctx, run, "START_CHILD_WORKFLOW_EXECUTION_FAILED", {**failed, "cause": NAMESPACE_NOT_FOUND})
        return
    latest = ctx.get(ctx.k.latest(wid))
    existing = ctx.get(ctx.k.run(wid, latest)) if latest is not None else None
    if existing is not None and existing["status"] in OPEN:
        if c.get("id_conflict_policy") != "TERMINATE_EXISTING" or _is_self_or_ancestor(ctx, run, existing):
            _outcome(ctx, run, "START_CHILD_WORKFLOW_EXECUTION_FAILED",
                     {**failed, "cause": ALREADY_EXISTS, "runId": existing["runId"]})
            return
        runs.terminate_run(ctx, existing, "terminated by new start", identity)
    spec: dict[str, Any] = {
        "type": c["workflow_type"],
        "taskQueue": c.get("task_queue") or run["taskQueue"],
        "identity": identity,
        "parent": {"workflowId": run["workflowId"], "runId": run["runId"], "initiatedEventId": eid},
    }
    if "input" in c:
        spec["input"] = c.get("input")
    for src, dst in (*_TIMEOUTS, ("retry_policy", "retryPolicy"), ("memo", "memo"),
                     ("search_attributes", "searchAttrs")):
        if c.get(src) is not None:
            spec[dst] = c[src]
    child = runs.start_run(ctx, spec, wid=wid, rid=ctx.new_run_id())
    started = _outcome(ctx, run, "CHILD_WORKFLOW_EXECUTION_STARTED", {
        "initiatedEventId": eid,
        "workflowExecution": {"workflowId": wid, "runId": child["runId"]},
        "workflowType": {"name": child["type"]},
    })
    runs.track_child(run, eid, child, c.get("parent_close_policy") or "TERMINATE", started)


def _is_self_or_ancestor(ctx: Ctx, run: dict[str, Any], other: dict[str, Any]) -> bool:
    """Terminating ``other`` would close ``run`` itself (directly or by a parent close policy)."""
    cur: dict[str, Any] | None = run
    while cur is not None:  # a child is always a new run: the chain has no cycle
        if cur["workflowId"] == other["workflowId"] and cur["runId"] == other["runId"]:
            return True
        link = cur.get("parent")
        cur = ctx.get(ctx.k.run(link["workflowId"], link["runId"])) if link else None
    return False


def _target(ctx: Ctx, run: dict[str, Any], c: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The open run an external command names, or None and the cause of failure."""
    wid = c["workflow_id"]
    rid = c.get("run_id") or ctx.get(ctx.k.latest(wid))
    target = ctx.get(ctx.k.run(wid, rid)) if rid else None
    if target is None or target["status"] not in OPEN:
        return None, NOT_FOUND
    if c.get("child_workflow_only"):
        link = target.get("parent") or {}
        if link.get("workflowId") != run["workflowId"] or link.get("runId") != run["runId"]:
            return None, NOT_A_CHILD
    return target, ""


def _signal_external(ctx: Ctx, run: dict[str, Any], item: dict[str, Any], identity: str) -> None:
    c, eid = item["command"], item["eid"]
    target, cause = _target(ctx, run, c)
    if target is None:
        _outcome(ctx, run, "SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED", {
            "initiatedEventId": eid, "workflowExecution": _named(c), "cause": cause})
        return
    runs.add_event(ctx, target, "WORKFLOW_EXECUTION_SIGNALED", {
        "signalName": c["signal_name"], "input": c.get("input"), "identity": identity,
        "externalWorkflowExecution": {"workflowId": run["workflowId"], "runId": run["runId"]},
    })
    runs.schedule_workflow_task(ctx, target)
    runs.save_run(ctx, target)
    ctx.notify("workflow.signaled", workflow_id=target["workflowId"], run_id=target["runId"])
    _outcome(ctx, run, "EXTERNAL_WORKFLOW_EXECUTION_SIGNALED", {
        "initiatedEventId": eid,
        "workflowExecution": {"workflowId": target["workflowId"], "runId": target["runId"]}})


def _cancel_external(ctx: Ctx, run: dict[str, Any], item: dict[str, Any], identity: str) -> None:
    c, eid = item["command"], item["eid"]
    target, cause = _target(ctx, run, c)
    if target is None:
        _outcome(ctx, run, "REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_FAILED", {
            "initiatedEventId": eid, "workflowExecution": _named(c), "cause": cause})
        return
    named = {"workflowId": target["workflowId"], "runId": target["runId"]}
    # A target already CANCELING is left as it is (SPEC §5.4), and the request has succeeded.
    runs.request_cancel(ctx, target, c.get("reason") or "", identity,
                        ack_ms=int(ctx.cmd.get("cancelAckMs") or runs.DEFAULT_CANCEL_ACK_MS))
    _outcome(ctx, run, "EXTERNAL_WORKFLOW_EXECUTION_CANCEL_REQUESTED",
             {"initiatedEventId": eid, "workflowExecution": named})


def _named(c: dict[str, Any]) -> dict[str, Any]:
    out = {"workflowId": c["workflow_id"]}
    if c.get("run_id"):
        out["runId"] = c["run_id"]
    return out


def _outcome(ctx: Ctx, run: dict[str, Any], etype: str, attrs: dict[str, Any]) -> int:
    """An outcome in the initiating run: recorded, and a trigger event."""
    eid = runs.add_event(ctx, run, etype, attrs)
    runs.schedule_workflow_task(ctx, run)
    return eid
