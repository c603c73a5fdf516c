"""The deterministic state machine of a partition.

``StateMachine.apply_batch([(index, command_bytes), ...])`` is the only code
that writes shard state. It runs on every replica in log order, inside one
LMDB write transaction that also records the partition's applied index, so:

- an entry at or below the applied index is skipped (replaying a journal
  after a crash never applies twice);
- each command runs in a nested transaction: a command rejected by a business
  rule is rolled back and changes nothing, on every replica alike;
- nothing here reads a clock, draws randomness or looks at the environment:
  the proposer stamped ``now`` and ``rnd`` into the command.

Business errors are returned as results (``{"ok": False, "code": ...}``),
never raised to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import lmdb
from hanzo_tasks.shard import batches, identities, keys, moving, records, wf_commands
from hanzo_tasks.shard import commands as C
from hanzo_tasks.shard.activities import (
    op_act_cancel,
    op_act_complete,
    op_act_fail,
    op_act_heartbeat,
    op_act_lease,
    op_act_release,
    op_act_schedule,
    op_act_start,
    op_act_timeout,
)
from hanzo_tasks.shard.ctx import (
    OPEN,
    Ctx,
    Reject,
    Result,
    failure_record,
    format_seconds,
    require_namespace,
)
from hanzo_tasks.shard.store import PartitionStore, ResizeBusy, StorageFull
from hanzo_tasks.shard.txn import Txn

log = logging.getLogger("tasks.shard")

_namespace = require_namespace
STORAGE_FULL: Result = C.err("storage_full", "storage full")
#: The map must grow while a snapshot image is being copied: nothing was
#: written, the same entries are applied again shortly (never returned to a client).
RESIZE_DEFERRED: Result = C.err("resize_deferred", "the map grows once the snapshot image is written")
MAX_BUFFERED = 1000
RECENT_ACTIONS = 10

# ---------------------------------------------------------------------------
# namespaces



NS_FIELDS = (
    "description",
    "ownerEmail",
    "retention",
    "apsLimit",
    "historyArchivalState",
    "historyArchivalUri",
    "visibilityArchivalState",
    "visibilityArchivalUri",
    "customData",
)


def op_ns_register(ctx: Ctx) -> Result:
    cmd = ctx.cmd
    existing = ctx.get(ctx.k.namespace())
    if existing is not None:
        if cmd.get("implicit"):
            return C.ok(namespace=existing, created=False)
        raise Reject("already_exists", f"namespace {ctx.ns} already exists")
    rec: dict[str, Any] = {
        "name": ctx.ns,
        "state": "REGISTERED",
        "region": cmd.get("region", ""),
        "createTime": ctx.now,
        "retention": cmd.get("retention") or 720 * 3600 * 1000,
        "apsLimit": cmd.get("apsLimit", 400),
    }
    for f in NS_FIELDS:
        if f in cmd and f not in ("retention", "apsLimit"):
            rec[f] = cmd[f]
    ctx.put(ctx.k.namespace(), rec)
    ctx.put_raw(keys.registry_key(ctx.org, ctx.ns), b"")
    ctx.notify("namespace.registered")
    return C.ok(namespace=rec, created=True)


def op_ns_update(ctx: Ctx) -> Result:
    rec = _namespace(ctx, for_write=False)
    for f in NS_FIELDS:
        if f in ctx.cmd:
            rec[f] = ctx.cmd[f]
    rec["updateTime"] = ctx.now
    ctx.put(ctx.k.namespace(), rec)
    ctx.notify("namespace.updated")
    return C.ok(namespace=rec)


def op_ns_delete(ctx: Ctx) -> Result:
    rec = _namespace(ctx, for_write=False)
    if rec["state"] != "DELETED":
        rec["state"] = "DELETED"
        rec["updateTime"] = ctx.now
        rec["deleteTime"] = ctx.now
        ctx.put(ctx.k.namespace(), rec)
        ctx.notify("namespace.deleted")
    return C.ok(namespace=rec)


# ---------------------------------------------------------------------------
# search attributes


def op_sa_add(ctx: Ctx) -> Result:
    _namespace(ctx, for_write=False)
    name, typ = ctx.cmd["name"], ctx.cmd["type"]
    if ctx.exists(ctx.k.attr(name)):
        raise Reject("already_exists", f"search attribute {name} already exists")
    count = 0
    cur = ctx.txn.cursor()
    prefix = ctx.k.attr_prefix()
    if cur.set_range(prefix):
        for k in cur.iternext(values=False):
            if not k.startswith(prefix):
                break
            count += 1
    if count >= 100:
        raise Reject("invalid_argument", "at most 100 search attributes per namespace")
    ctx.put(ctx.k.attr(name), typ)
    return C.ok(name=name, type=typ)


def op_sa_remove(ctx: Ctx) -> Result:
    name = ctx.cmd["name"]
    if not ctx.exists(ctx.k.attr(name)):
        raise Reject("not_found", f"search attribute {name} not found")
    ctx.delete(ctx.k.attr(name))
    return C.ok()


# ---------------------------------------------------------------------------
# workflow runs


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
    _index_new_run(ctx, run, spec.get("requestId"))
    arm_run_timers(ctx, run)
    ctx.notify("workflow.started", workflow_id=wid, run_id=rid)
    return run


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


def _index_new_run(ctx: Ctx, run: dict[str, Any], request_id: str | None) -> None:
    wid, rid = run["workflowId"], run["runId"]
    save_run(ctx, run)
    ctx.put(ctx.k.latest(wid), rid)
    ctx.put_raw(ctx.k.list_index(run["startTime"], wid, rid), b"")
    if request_id:
        ctx.put(ctx.k.request(request_id), [wid, rid])


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
    _namespace(ctx, for_write=True)
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
    _namespace(ctx, for_write=False)
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
    _namespace(ctx, for_write=False)
    run = load_run(ctx, cmd["workflowId"], cmd.get("runId"))
    if run["status"] == "RUNNING":
        request_cancel(ctx, run, cmd.get("reason") or "", cmd.get("identity") or "")
    return C.ok(run=run)


def op_wf_terminate(ctx: Ctx) -> Result:
    cmd = ctx.cmd
    _namespace(ctx, for_write=False)
    run = load_run(ctx, cmd["workflowId"], cmd.get("runId"))
    if run["status"] in OPEN:
        terminate_run(ctx, run, cmd.get("reason") or "", cmd.get("identity") or "")
    return C.ok(run=run)


def op_wf_metadata(ctx: Ctx) -> Result:
    cmd = ctx.cmd
    _namespace(ctx, for_write=False)
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
    _namespace(ctx, for_write=False)
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
    _index_new_run(ctx, run, req)
    arm_run_timers(ctx, run)
    ctx.notify("workflow.reset", workflow_id=run["workflowId"], run_id=rid)
    return C.ok(run=run, started=True)


# ---------------------------------------------------------------------------
# schedules


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
    _namespace(ctx, for_write=True)
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
    _namespace(ctx, for_write=True)
    s = _load_schedule(ctx, ctx.cmd["scheduleId"])
    return _replace_schedule(ctx, s, ctx.cmd, replace_state=True, created=False)


def op_sched_delete(ctx: Ctx) -> Result:
    _namespace(ctx, for_write=False)
    sid = ctx.cmd["scheduleId"]
    _load_schedule(ctx, sid)
    ctx.delete(ctx.k.schedule(sid))
    ctx.notify("schedule.deleted", schedule_id=sid)
    return C.ok()


def op_sched_pause(ctx: Ctx) -> Result:
    _namespace(ctx, for_write=False)
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


def _open_scheduled_runs(ctx: Ctx, s: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for wid, rid in s["info"]["running"]:
        run = ctx.get(ctx.k.run(wid, rid))
        if run is not None and run["status"] in OPEN:
            out.append(run)
    return out


def _start_scheduled(
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


def _fired_workflow_id(s: dict[str, Any], nominal: int) -> str:
    return f"{s['scheduleId']}-{format_seconds(nominal)}"


def _run_action(
    ctx: Ctx, s: dict[str, Any], policy: str, nominal: int, wid: str
) -> tuple[str, dict[str, Any] | None]:
    """Apply an overlap policy; returns (outcome, started run or None)."""
    info = s["info"]
    # ALLOW_ALL never looks at open runs (closes remove themselves from the list).
    running = [] if policy == "ALLOW_ALL" else _open_scheduled_runs(ctx, s)
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
    run = _start_scheduled(ctx, s, wid, nominal, nominal)
    return "started", run


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
    if info["buffered"] and not _open_scheduled_runs(ctx, s):
        nominal = info["buffered"].pop(0)
        wid = _fired_workflow_id(s, nominal)
        latest = ctx.get(ctx.k.latest(wid))
        if latest is not None:
            other = ctx.get(ctx.k.run(wid, latest))
            if other is not None and other["status"] in OPEN:
                return
        _start_scheduled(ctx, s, wid, nominal, nominal)


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
            ctx, s, s["policies"]["overlapPolicy"], nominal, _fired_workflow_id(s, nominal)
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
    _namespace(ctx, for_write=True)
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


def op_sys_barrier(ctx: Ctx) -> Result:
    """A no-op through the log: once applied here, every earlier write is too (linearizable reads)."""
    return C.ok()


# ---------------------------------------------------------------------------
# workflow tasks (SPEC §5.6)


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



def _fail_workflow(
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
    wf_commands.drop_attempt_state(ctx, run)
    drop_workflow_task(ctx, run)
    schedule_workflow_task(ctx, run, attempt=1, delay_ms=backoff)
    if run.get("workflowRunTimeout"):
        disarm_run_timer(ctx, run, "run")
        run.setdefault("timers", {})["run"] = ctx.now + backoff + run["workflowRunTimeout"]
        ctx.put_raw(ctx.k.deadline(run["timers"]["run"], "run", run["workflowId"], run["runId"]), b"")
    save_run(ctx, run)
    ctx.notify("workflow.retry_scheduled", workflow_id=run["workflowId"], run_id=run["runId"])


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
        _fail_workflow(ctx, run, failure, None, timed_out=True)
    elif kind.startswith(wf_commands.TIMER_PREFIX):
        wf_commands.fire_timer(ctx, run, kind[len(wf_commands.TIMER_PREFIX):])
    elif kind == "cancel" and run["status"] == "CANCELING":
        close_run(ctx, run, "CANCELED", "WORKFLOW_EXECUTION_CANCELED",
                  {"reason": "sweep:cancel-timeout", "identity": "engine"})
    save_run(ctx, run)
    return C.ok(outcome=kind)



HANDLERS: dict[str, Callable[[Ctx], Result]] = {
    "act.schedule": op_act_schedule,
    "act.start": op_act_start,
    "act.lease": op_act_lease,
    "act.release": op_act_release,
    "act.complete": op_act_complete,
    "act.fail": op_act_fail,
    "act.cancel": op_act_cancel,
    "act.heartbeat": op_act_heartbeat,
    "act.timeout": op_act_timeout,
    "wf.deadline": op_wf_deadline,
    "wt.start": op_wt_start,
    "wt.complete": op_wt_complete,
    "wt.fail": op_wt_fail,
    "wt.timeout": op_wt_timeout,
    "sys.barrier": op_sys_barrier,
    "ns.register": op_ns_register,
    "ns.update": op_ns_update,
    "ns.delete": op_ns_delete,
    "wf.start": op_wf_start,
    "wf.signal": op_wf_signal,
    "wf.cancel": op_wf_cancel,
    "wf.terminate": op_wf_terminate,
    "wf.reset": op_wf_reset,
    "wf.metadata": op_wf_metadata,
    "sched.create": op_sched_create,
    "sched.update": op_sched_update,
    "sched.delete": op_sched_delete,
    "sched.pause": op_sched_pause,
    "sched.fire": op_sched_fire,
    "sched.trigger": op_sched_trigger,
    "sa.add": op_sa_add,
    "sa.remove": op_sa_remove,
    **moving.HANDLERS,
    **identities.HANDLERS,
    **batches.HANDLERS,
    **records.HANDLERS,
}
assert set(HANDLERS) | {"mig.tail"} == set(C.OPS)


# ---------------------------------------------------------------------------


class StateMachine:
    """Applies committed entries to one partition store."""

    def __init__(self, store: PartitionStore) -> None:
        self.store = store
        self.applied_ops: dict[str, int] = {}

    def apply(self, index: int, data: bytes) -> Result | None:
        return self.apply_batch([(index, data)])[0]

    def apply_batch(self, entries: Sequence[tuple[int, bytes]]) -> list[Result | None]:
        """Apply entries in order in one write transaction (group commit).

        Returns one result per entry; ``None`` for an entry at or below the
        applied index (already applied before). If the map is full at its
        maximum, returns STORAGE_FULL for every entry and writes nothing,
        so the caller may retry those entries later (indexes not consumed);
        RESIZE_DEFERRED likewise while a snapshot image pins the map.
        """
        while True:
            try:
                return self._apply_txn(entries)
            except lmdb.MapFullError:
                try:
                    self.store.grow(wait_for_pins=False)
                except ResizeBusy:
                    return [RESIZE_DEFERRED] * len(entries)  # nothing written: retried at the next tick
                except StorageFull:
                    if len(entries) > 1:
                        # Keep every entry that still fits; stop at the first that doesn't.
                        out: list[Result | None] = []
                        for i, entry in enumerate(entries):
                            res = self.apply_batch([entry])
                            out.extend(res)
                            if res[0] is STORAGE_FULL:
                                out.extend([STORAGE_FULL] * (len(entries) - i - 1))
                                break
                        return out
                    return [STORAGE_FULL]

    def _apply_txn(self, entries: Sequence[tuple[int, bytes]]) -> list[Result | None]:
        results: list[Result | None] = []
        ops: list[str] = []
        with self.store.write() as txn:
            applied = keys.get_applied(txn)
            for index, data in entries:
                if index <= applied:
                    results.append(None)
                    continue
                res, op = self._apply_one(txn, index, data)
                results.append(res)
                ops.append(op)
                applied = index
            keys.put_applied(txn, applied)
        for op in ops:
            self.applied_ops[op] = self.applied_ops.get(op, 0) + 1
        return results

    def _apply_one(self, txn: Txn, index: int, data: bytes) -> tuple[Result, str]:
        try:
            cmd = C.decode(data)
        except C.CommandError as e:
            return C.err("invalid_argument", str(e)), "invalid"
        op = cmd["op"]
        if op == "mig.tail":
            return self._apply_tail(txn, index, cmd), op
        return self._apply_cmd(txn, index, cmd, data, replay=False), op

    def _apply_cmd(
        self, txn: Txn, index: int, cmd: dict[str, Any], data: bytes, *, replay: bool
    ) -> Result:
        """One command in a nested txn: all of it or nothing.

        ``replay``: a command forwarded from a migration's source (``mig.tail``),
        applied to the arriving shard exactly as the source applied it.
        """
        op = cmd["op"]
        child = self.store.env.begin(write=True, parent=txn)
        ctx = Ctx(child, cmd, index)
        try:
            leaving = None if replay else moving.check_writable(child, cmd)
            result = HANDLERS[op](ctx)
            ctx.flush()
            if leaving is not None:
                moving.record_tail(child, cmd, index, data)
        except Reject as r:
            child.abort()
            return {**r.result, "_op": op}
        except lmdb.MapFullError:
            child.abort()
            raise
        except Exception:  # a bug: deterministic on every replica, never half-applied
            child.abort()
            log.exception("apply failed at index %d (op %s)", index, op)
            return C.err("internal", f"internal error applying {op}")
        child.commit()
        result["_op"] = op
        if ctx.events:
            result["_events"] = ctx.events
        return result

    def _apply_tail(self, txn: Txn, index: int, cmd: dict[str, Any]) -> Result:
        """``mig.tail``: re-apply the source's commands, numbered, in order, each at most once."""
        child = self.store.env.begin(write=True, parent=txn)
        ctx = Ctx(child, cmd, index)
        try:
            st = moving.tail_state(ctx)
            seq = cmd["from"]
            applied = 0
            for source_index, data in cmd["entries"]:
                if seq <= st["seq"]:
                    seq += 1
                    continue  # forwarded before (a retried proposal)
                if seq != st["seq"] + 1:
                    raise Reject("failed_precondition", f"tail entry {seq} before entry {st['seq'] + 1}")
                inner = C.decode(data)
                if (inner["org"], inner["ns"]) != (ctx.org, ctx.ns) or inner["op"].startswith("mig."):
                    raise Reject("invalid_argument", "a tail entry of another shard")
                self._apply_cmd(child, source_index, inner, data, replay=True)
                st["seq"] = seq
                seq += 1
                applied += 1
            moving.save_tail_seq(child, ctx.org, ctx.ns, st)
        except Reject as r:
            child.abort()
            return {**r.result, "_op": "mig.tail"}
        except C.CommandError as e:
            child.abort()
            return {**C.err("invalid_argument", str(e)), "_op": "mig.tail"}
        child.commit()
        return C.ok(seq=st["seq"], applied=applied, _op="mig.tail")
