"""What a node says about itself: readiness (``/readyz``), the health of its
replication groups (``/v1/tasks/cluster/health``), its settings, and the cluster
view of ``GET /v1/tasks/cluster`` (members, partitions, leaders, shards, counters).

Read-only views over a running :class:`~hanzo_tasks.cluster.node.Node`, kept
apart from the node's wiring and lifecycle.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from hanzo_tasks.cluster.api.http.request import json_response
from hanzo_tasks.cluster.service import inputs as I
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.replication import NodeReplicator
from hanzo_tasks.shard import reads

if TYPE_CHECKING:
    from hanzo_tasks.cluster.node import Node

RAFT_STUCK_S = 10.0
"""How long the Raft loop may go without a round before the node reports not
ready (a stuck thread is not dead: the node does not exit)."""


def replication_failure_kind(rep: NodeReplicator | None) -> str | None:
    """What failed ("raft_thread", "journal", "apply"; the label of
    tasks_fatal_errors_total), or None while replication can go on."""
    return None if rep is None else rep.failure_kind()


def replication_failure(rep: NodeReplicator | None) -> str | None:
    """Why the replicator cannot make progress (None: it can): a Raft thread
    that died or a journal or apply that failed, or local mode's apply thread."""
    return None if rep is None else rep.failure()


def readiness_reasons(node: Node) -> list[str]:
    rep = node.replicator
    failure = node.failure or replication_failure(rep)
    if failure is not None:
        return [f"replication failed: {failure}"]
    if not node.ready:
        return ["starting"]
    if not rep.clustered:
        return []
    reasons = []
    stuck = time.monotonic() - rep.loop_at
    if stuck > RAFT_STUCK_S:
        reasons.append(f"raft: the Raft thread has not gone round its loop for {stuck:.0f} s")
    if rep.leader(rep.meta_group) is None:
        reasons.append("meta: no leader")
    if rep.meta.partitions() is None:
        reasons.append("partitions: layout not known yet")
    for p in rep.local_partitions():
        if rep.leader(p) is None:
            reasons.append(f"partition:{p}: no leader")
    return reasons

def readyz_response(node: Node) -> web.Response:
    reasons = readiness_reasons(node)
    if not reasons:
        return json_response(200, {"status": "ready", "nodeId": node.node_id}, node.node_id)
    return json_response(
        503, {"status": "not_ready", "nodeId": node.node_id, "reasons": reasons}, node.node_id,
        {"Retry-After": "1"},
    )

def cluster_health(node: Node) -> tuple[int, dict[str, Any]]:
    rep = node.replicator
    if not rep.clustered:
        return 200, {"status": "ok", "nodeId": node.node_id, "groups": 1}
    reasons = []
    groups = rep.local_partitions() + [rep.meta_group]
    for g in groups:
        st = rep.group_status(g)
        name = "meta" if g == rep.meta_group else f"partition:{g}"
        if g in rep.stalled:
            reasons.append({"group": name, "reason": "storage_full"})
        elif st["leader"] is None:
            reasons.append({"group": name, "reason": "no_leader"})
        elif not st["hasQuorum"]:
            reasons.append({"group": name, "reason": "no_quorum"})
    if reasons:
        return 503, {"status": "degraded", "nodeId": node.node_id, "reasons": reasons}
    return 200, {"status": "ok", "nodeId": node.node_id, "groups": len(groups)}

def settings(node: Node) -> dict[str, Any]:
    s = node.cfg.settings
    return {
        "version": node.version,
        "nodeId": node.node_id,
        "zapAddr": node.public_zap,
        "authRequired": bool(node.cfg.auth.require_identity),
        "namespaceWriteDisabled": s.namespace_write_disabled,
        "archivalEnabled": False,
        "visibilityArchivalEnabled": False,
        "advancedVisibilityEnabled": s.advanced_visibility_enabled,
        "workerHeartbeatsEnabled": s.worker_heartbeats_enabled,
        "codecEndpointsEnabled": s.codec_endpoints_enabled,
        "multiClusterEnabled": s.multi_cluster_enabled,
        "capabilities": {
            "signalAndQueryHeader": True,
            "internalErrorDifferentiation": True,
            "activityFailureIncludeHeartbeat": True,
            "supportsSchedules": True,
            "encodedFailureAttributes": True,
            "upsertMemo": True,
            "sdkMetadata": True,
            "countGroupByExecutionStatus": True,
            "eagerWorkflowStart": False,
        },
    }

async def cluster_info(node: Node, org: str, size: int, token: str | None) -> dict[str, Any]:
    rep = node.replicator
    raft = rep.clustered
    shards: list[tuple[str, str, int]] = []
    infos: dict[tuple[str, str, int], dict[str, Any]] = {}
    for p in range(rep.partitions):
        if rep.is_local(p):
            with rep.store(p).read() as txn:
                found = [(o, n) for o, n in reads.shards(txn) if o == org]
            shards.extend((o, n, p) for o, n in found)
            infos.update({(o, n, p): node.shard_info(o, n, p) for o, n in found})
        else:
            try:
                remote = await node.remote_shard_infos(p, org)
            except ApiError:
                continue  # no replica reachable: its shards are left out of this listing
            for info in remote:
                shards.append((info["org"], info["namespace"], p))
                infos[(info["org"], info["namespace"], p)] = info
    shards.sort()
    after = I.read_token(token, "cluster", org)
    keys = [(f"{o}\x00{n}", o, n, p) for o, n, p in shards]
    items = [k for k in keys if after is None or k[0].encode() > after]
    page, more = items[:size], len(items) > size
    if raft:
        known = rep.meta.members()
        member_ids = node.members.member_ids()
        meta_voters = rep.meta.voters()
        addrs = {p.id: p for p in node.cfg.peers}
        members = []
        for mid in member_ids:
            peer = addrs.get(mid)
            rec = known.get(mid, {})
            up = mid == node.node_id or node.membership.current.is_alive(mid)
            members.append({
                "nodeId": mid,
                "httpAddr": node.public_http if mid == node.node_id else (rec.get("http") or (peer.http if peer else None)),
                "zapAddr": node.public_zap if mid == node.node_id else (rec.get("zap") or (peer.zap if peer else None)),
                "peerAddr": rec.get("peer") or (peer.peer if peer else None),
                "state": "alive" if up else "dead",
                "voter": meta_voters is None or mid in meta_voters,  # of the meta group
                "lastSeen": None,
            })
        partitions = []
        counts = [0] * rep.partitions
        for _, _, p in shards:
            counts[p] += 1
        preferred = node.members.preferred_leaders()
        elsewhere = await node.remote_leaders()
        for p in range(rep.partitions):
            st = rep.group_status(p)
            local = rep.is_local(p)
            if not local:
                st["leader"] = elsewhere.get(p) or st["leader"]
            partitions.append({
                "id": p, "leader": st["leader"], "preferredLeader": preferred[p],
                "replicas": sorted(rep.replicas(p)), "local": local,
                **({"appliedIndex": st["appliedIndex"], "commitIndex": st["commitIndex"], "term": st["term"]}
                   if local else {}),
                "shards": counts[p],
            })
        meta_leader = rep.leader(rep.meta_group)
        leading = sum(1 for p in range(rep.partitions) if rep.is_leader(p))
    else:
        applied = rep.store(0).applied_index()
        members = [{
            "nodeId": node.node_id, "httpAddr": node.public_http, "zapAddr": node.public_zap, "peerAddr": None,
            "state": "alive", "voter": True, "lastSeen": None,
        }]
        partitions = [{
            "id": 0, "leader": node.node_id, "preferredLeader": node.node_id, "replicas": [node.node_id],
            "local": True, "appliedIndex": applied, "commitIndex": applied, "term": 1, "shards": len(shards),
        }]
        meta_leader = node.node_id
        leading = 1
    return {
        "nodeId": node.node_id,
        "version": node.version,
        "replicator": "raft" if raft else "local",
        "replicationFactor": min(node.cfg.replication_factor, len(members)) if raft else 1,
        "seed": node.cfg.seed,
        "members": members,
        "membershipEpoch": node.membership.epoch,
        "metaLeader": meta_leader,
        "partitionCount": rep.partitions,
        "partitions": partitions,
        "namespaces": [infos.get((o, n, p)) or node.shard_info(o, n, p) for _, o, n, p in page],
        "nextPageToken": I.make_token("cluster", org, page[-1][0].encode() if more else None),
        "stats": {
            "partitionsLocal": len(rep.local_partitions()),
            "partitionsLeading": leading,
            "taskQueuesOwned": 0,
            "proposals": rep.proposals,
            "proposalErrors": node.service.proposal_errors if node.service else 0,
            "forwarded": (node.service.forwarder.forwarded if node.service and node.service.forwarder else 0)
            + rep.forwarded,
            "zapConnections": node._zap.connections if node._zap is not None else 0,
            "subscriptions": 0,
            "sseSubscribers": node.sse.count() if node.sse is not None else 0,
            "uptimeSeconds": int(time.monotonic() - node.started_at),
        },
    }
