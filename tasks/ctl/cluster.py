"""``tasksctl cluster``: membership, partitions and health."""

from __future__ import annotations

import json
from typing import Any

from hanzo_tasks.ctl.context import Ctx
from hanzo_tasks.ctl.output import record_lines, scalar
from hanzo_tasks.ctl.transport import error_from_response


def cmd_cluster_status(ctx: Ctx) -> int:
    _, body = ctx.api.call("GET", "/v1/tasks/cluster")

    def table(b: dict[str, Any]) -> None:
        for key in ("nodeId", "version", "replicator", "replicationFactor", "seed", "metaLeader", "partitionCount"):
            if key in b:
                ctx.out.write(f"{key}: {scalar(b[key])}\n")
        ctx.out.write("\nMEMBERS\n")
        ctx.table(
            ["NODE ID", "STATE", "VOTER", "HTTP", "ZAP", "PEER"],
            [[m.get("nodeId"), m.get("state"), m.get("voter"), m.get("httpAddr"), m.get("zapAddr"), m.get("peerAddr")] for m in b.get("members") or []],
        )
        ctx.out.write("\nPARTITIONS\n")
        ctx.table(
            ["ID", "LEADER", "PREFERRED", "REPLICAS", "LOCAL", "SHARDS"],
            [[p.get("id"), p.get("leader"), p.get("preferredLeader"), ",".join(map(str, p.get("replicas") or [])), p.get("local"), p.get("shards")] for p in b.get("partitions") or []],
        )
        if b.get("namespaces"):
            ctx.out.write("\nNAMESPACES\n")
            ctx.table(
                ["ORG", "NAMESPACE", "PARTITION", "PINNED", "FENCED"],
                [[n.get("org"), n.get("namespace"), n.get("partition"), n.get("pinned"), n.get("fenced")] for n in b["namespaces"]],
            )
        if isinstance(b.get("stats"), dict):
            ctx.out.write("\nSTATS\n")
            for line in record_lines(b["stats"]):
                ctx.out.write(line + "\n")

    ctx.emit(body, table if isinstance(body, dict) else None)
    return 0


def cmd_cluster_health(ctx: Ctx) -> int:
    status, body = ctx.api.call("GET", "/v1/tasks/cluster/health", accept=(503,))
    if status == 503 and isinstance(body, dict) and "status" not in body:
        err = error_from_response(503, json.dumps(body).encode(), "Service Unavailable")
        raise err
    ctx.emit(body)
    return 1 if status == 503 else 0
