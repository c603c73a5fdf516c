"""Worker ops, served by the node's dispatcher: subscriptions to workflow and
activity tasks, their completions and failures, heartbeats, query answers and
activities scheduled by a workflow task."""

from __future__ import annotations

from typing import Any

from hanzo_tasks.cluster.api.zap.call import Call
from hanzo_tasks.cluster.api.zap.fields import Json
from hanzo_tasks.protocol.errors import ApiError


def _dispatcher(c: Call) -> Any:
    d = getattr(c.node, "dispatcher", None)
    if d is None:
        raise ApiError("unavailable", "dispatch is not running on this node", retry_after=1)
    return d


async def op_subscribe_workflow_tasks(c: Call) -> Json:
    await c.service.ensure_namespace(c.org, c.ns)
    return _dispatcher(c).subscribe(c.conn, c.org, c.ns, c.body)


async def op_subscribe_activity_tasks(c: Call) -> Json:
    await c.service.ensure_namespace(c.org, c.ns)
    return _dispatcher(c).subscribe(c.conn, c.org, c.ns, c.body, kind="activity")


async def op_activity_task_completed(c: Call) -> Json:
    return await _dispatcher(c).activity_completed(c.org, c.body)


async def op_activity_task_failed(c: Call) -> Json:
    return await _dispatcher(c).activity_failed(c.org, c.body)


async def op_unsubscribe(c: Call) -> Json:
    return _dispatcher(c).unsubscribe(c.conn, c.body.get("subscription_id"))


async def op_workflow_task_completed(c: Call) -> Json:
    return await _dispatcher(c).completed(c.org, c.body)


async def op_workflow_task_failed(c: Call) -> Json:
    return await _dispatcher(c).failed(c.org, c.body)


async def op_heartbeat(c: Call) -> Json:
    return await _dispatcher(c).heartbeat(c.org, c.body)


async def op_schedule_activity(c: Call) -> Json:
    return await _dispatcher(c).schedule_activity(c.org, c.ns, c.body)


async def op_respond_query(c: Call) -> Json:
    return _dispatcher(c).answer_query(c.org, c.body)
