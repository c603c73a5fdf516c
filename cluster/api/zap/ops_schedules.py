"""Schedule ops: ScheduleRecurring (the one-call form of the client library) and
Create, Delete, List, Pause, Unpause, Trigger, Describe and Update."""

from __future__ import annotations

from hanzo_tasks.cluster.api.zap.call import Call
from hanzo_tasks.cluster.api.zap.fields import (
    Json,
    bad,
    boolean,
    copy_str,
    mapping,
    page,
    text,
)
from hanzo_tasks.cluster.service.schedule_input import recurring_spec
from hanzo_tasks.protocol.errors import ApiError


async def op_schedule_recurring(c: Call) -> Json:
    b = c.body
    name = text(b, "name", required=True)
    sched_spec = recurring_spec(name, b.get("spec"))
    action: Json = {"workflowType": {"name": name}, "taskQueue": {"name": text(b, "task_queue") or "default"}}
    if "input" in b:
        action["input"] = b["input"]
    policies: Json = {"overlapPolicy": b["overlap_policy"] if b.get("overlap_policy") is not None else "SKIP"}
    body: Json = {"scheduleId": name, "spec": sched_spec, "action": action, "policies": policies}
    # Create first, upsert on conflict: the service reports no "created" flag,
    # and this way it is exact (a create either made it or found it).
    try:
        rec = await c.service.schedules.create_schedule(c.org, c.ns, body, upsert=False)
        created = True
    except ApiError as e:
        if e.code != "already_exists":
            raise
        rec = await c.service.schedules.create_schedule(c.org, c.ns, body, upsert=True)
        created = False
    return {"schedule_id": rec.get("scheduleId", name), "created": created}


def _sid(c: Call) -> str:
    return text(c.body, "schedule_id", required=True)  # type: ignore[return-value]


def _schedule_map(c: Call) -> Json:
    s = mapping(c.body, "schedule")
    if s is None:
        raise bad("schedule is required")
    return s


async def op_create_schedule(c: Call) -> Json:
    body = dict(_schedule_map(c))
    body.pop("info", None)
    body["scheduleId"] = _sid(c)
    upsert = bool(boolean(c.body, "upsert"))
    return {"schedule": await c.service.schedules.create_schedule(c.org, c.ns, body, upsert=upsert)}


async def op_delete_schedule(c: Call) -> Json:
    await c.service.schedules.delete_schedule(c.org, c.ns, _sid(c))
    return {}


async def op_list_schedules(c: Call) -> Json:
    size, token = page(c.body)
    res = await c.service.schedules.list_schedules(c.org, c.ns, size, token)
    return {"schedules": res["schedules"], "next_page_token": res["nextPageToken"]}


async def _pause(c: Call, paused: bool) -> Json:
    sid = _sid(c)
    body: Json = {}
    copy_str(c.body, body, (("note", "note"),))
    await c.service.schedules.pause_schedule(c.org, c.ns, sid, body, paused)
    return {"schedule": await c.service.schedules.describe_schedule(c.org, c.ns, sid)}


async def op_pause_schedule(c: Call) -> Json:
    paused = boolean(c.body, "paused")
    return await _pause(c, True if paused is None else paused)


async def op_unpause_schedule(c: Call) -> Json:
    return await _pause(c, False)


async def op_trigger_schedule(c: Call) -> Json:
    b = c.body
    body: Json = {}
    copy_str(b, body, (("request_id", "requestId"),))
    if b.get("overlap_policy") is not None:
        body["overlapPolicy"] = b["overlap_policy"]
    res = await c.service.schedules.trigger_schedule(c.org, c.ns, _sid(c), body)
    out: Json = {"status": res["status"]}
    ex = res.get("execution")
    if ex is not None:
        out["workflow_id"] = ex["execution"]["workflowId"]
        out["run_id"] = ex["execution"]["runId"]
    return out


async def op_describe_schedule(c: Call) -> Json:
    return {"schedule": await c.service.schedules.describe_schedule(c.org, c.ns, _sid(c))}


async def op_update_schedule(c: Call) -> Json:
    body = dict(_schedule_map(c))
    body.pop("info", None)
    return {"schedule": await c.service.schedules.update_schedule(c.org, c.ns, _sid(c), body)}
