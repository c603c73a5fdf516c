"""The op about the node itself: Health."""

from __future__ import annotations

from hanzo_tasks.cluster.api.zap.call import Call
from hanzo_tasks.cluster.api.zap.fields import Json


async def op_health(c: Call) -> Json:
    return {"service": "tasks", "status": "ok", "node_id": c.node.node_id, "namespace": c.ns}
