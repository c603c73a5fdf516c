"""The node's side of cluster membership: publishing this node in the meta
group at start, the member list, members joining and leaving (``POST`` /
``DELETE /v1/tasks/cluster/members``), the peer links that follow the meta
group's records, and moving each partition's leadership to its preferred node.

The partitions' replica sets themselves are kept by ``replica_sets``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import msgpack
from hanzo_tasks.cluster.replica_sets import bootstrap_layout, current_layout
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.routing import preferred_leaders
from hanzo_tasks.shard.meta import initial_meta_voters

if TYPE_CHECKING:
    from hanzo_tasks.cluster.node import Node

log = logging.getLogger("tasks.node")


class Members:
    """Membership as one node sees and changes it."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def join_meta(self) -> None:
        """Fix the partition count at bootstrap and publish this node's addresses
        and its zone (``node_zone``; "" clears one it had, so that replicas
        follow a node that moved to another machine).

        Both are proposals to the meta group (forwarded to its leader by Raft),
        retried until they commit. A cluster with another partition count makes
        this node stop with a clear error: it must not serve a different layout.
        """
        rep = self.node.replicator
        cfg = self.node.cfg
        peers = [{"id": p.id, "peer": p.peer, "http": p.http, "zap": p.zap} for p in cfg.peers]
        if not any(p["id"] == self.node.node_id for p in peers):
            peers.append({"id": self.node.node_id, "peer": cfg.advertise_peer, "http": None, "zap": None})
        layout = bootstrap_layout(cfg.partitions, [p["id"] for p in peers], cfg.replication_factor, cfg.seed)
        voters = initial_meta_voters(p["id"] for p in peers)  # as every node computed it at start
        commands = [
            {"op": "meta.init", "partitions": cfg.partitions, "members": peers, "replicas": layout,
             "voters": voters},
            {"op": "meta.member", "id": self.node.node_id, "peer": cfg.advertise_peer,
             "http": self.node.public_http, "zap": self.node.public_zap, "zone": cfg.node_zone or ""},
        ]
        for cmd in commands:
            while True:
                res = await rep.propose(rep.meta_group, msgpack.packb(cmd, use_bin_type=True))
                if res.get("ok"):
                    break
                if res.get("code") == "failed_precondition":
                    self.node.fatal = (
                        f"partition count mismatch: {res.get('message')}; "
                        f"this node is configured with partitions: {cfg.partitions}"
                    )
                    log.error("%s", self.node.fatal)
                    self.node.stopping.set()
                    return
                await asyncio.sleep(0.2)

    def on_peer_changed(self, peer: str, up: bool) -> None:
        alive = set(self.node.membership.current.alive)
        if up:
            alive.add(peer)
        else:
            alive.discard(peer)
        self.node.membership.update(alive=frozenset(alive & self.node.membership.current.members))

    def member_ids(self) -> list[str]:
        rep = self.node.replicator
        if rep.clustered:
            known = rep.meta.members()
            if known:
                return sorted(known)
        return sorted({p.id for p in self.node.cfg.peers} | {self.node.node_id})

    def on_meta_apply(self, group: int, index: int, result: dict[str, Any]) -> None:
        """A member joined or left, or a replica set changed: open or drop this
        node's partitions, and dial and accept the meta group's members plus any
        former member that still holds a replica (until its replicas moved)."""
        rep = self.node.replicator
        if group != rep.meta_group:
            return
        layout_changed = bool(result.get("layout"))
        if layout_changed:
            rep.set_replica_sets(current_layout(rep))
        if not ("member" in result or "removed" in result or layout_changed):
            return
        if result.get("removed") == self.node.node_id:
            self.node.leaving = True  # the balancer now gives every leadership away
            log.warning("this node was removed from the cluster; handing over and no longer voting")
        self.refresh_peers()
        self.node.membership.update(members=frozenset(self.member_ids()))

    def refresh_peers(self) -> None:
        rep = self.node.replicator
        known = rep.meta.members()
        peers = {mid: m["peer"] for mid, m in known.items() if m.get("peer")}
        holding = {n for nodes in current_layout(rep).values() for n in nodes}
        for n in holding - set(peers):
            if n in rep.peer_addrs:  # removed, but its replicas are still being moved
                peers[n] = rep.peer_addrs[n]
        if self.node.leaving:
            peers.update({p.id: p.peer for p in self.node.cfg.peers})  # keep talking while handing over
        rep.set_peer_addresses(peers)

    async def add(self, node_id: str, peer: str, http: str | None, zap: str | None) -> dict[str, Any]:
        """Join: record the member, then make it a voter of every group."""
        rep = self.node.replicator
        if not rep.clustered:
            raise ApiError("failed_precondition", "membership changes need replicator: raft")
        cmd = {"op": "meta.member", "id": node_id, "peer": peer, "http": http, "zap": zap}
        res = await rep.propose(rep.meta_group, msgpack.packb(cmd, use_bin_type=True))
        if not res.get("ok"):
            raise ApiError("unavailable", res.get("message", "meta group unavailable"), retry_after=1)
        if rep.meta.voters() is None:
            # A cluster bootstrapped before meta voters were recorded: every member
            # votes. Otherwise the node starts as a learner of the meta group and
            # the replica keeper makes it a voter once it caught up, while the
            # group has fewer than five. Partitions come to it when a replica set
            # is short of replication_factor (cluster.replica_sets).
            try:
                await rep.change_membership("add", node_id, groups=[rep.meta_group])
            except TimeoutError as e:
                raise ApiError("unavailable", str(e), retry_after=1) from None
        return {"status": "joined", "nodeId": node_id, "members": self.member_ids()}

    async def remove(self, node_id: str) -> dict[str, Any]:
        """Leave: drop the member's record, then its vote in every group.

        Run on any other member. The leaving node learns of its removal from the
        meta group and hands its leaderships over, so the removals (which its own
        leadership would refuse) go through; this node's view tells when each
        group has committed the change. Then the operator stops the process.
        """
        rep = self.node.replicator
        raft = rep.clustered
        known = node_id in self.member_ids() or (
            raft and any(node_id in rep.voters(g) for g in rep.local_partitions() + [rep.meta_group])
        )
        if not known:
            raise ApiError("not_found", f"node {node_id} is not a member")
        if not raft:
            raise ApiError("failed_precondition", "membership changes need replicator: raft")
        if node_id == self.node.node_id:
            raise ApiError("failed_precondition", "ask another member to remove this node")
        cmd = {"op": "meta.remove", "id": node_id}
        res = await rep.propose(rep.meta_group, msgpack.packb(cmd, use_bin_type=True))
        if not res.get("ok"):
            raise ApiError("unavailable", res.get("message", "meta group unavailable"), retry_after=1)
        try:
            await rep.change_membership("rem", node_id, groups=[rep.meta_group])
        except TimeoutError as e:
            raise ApiError("unavailable", str(e), retry_after=1) from None
        # The meta leader moves its replicas to other members (add first, then
        # remove); the node may be stopped once it holds none.
        deadline = time.monotonic() + 120.0
        while any(node_id in nodes for nodes in current_layout(rep).values()):
            if time.monotonic() > deadline:
                raise ApiError("unavailable", f"{node_id} still holds replicas; its removal goes on, retry to wait",
                               retry_after=5)
            await asyncio.sleep(0.2)
        return {"status": "removed", "nodeId": node_id, "members": self.member_ids()}

    def preferred_leaders(self) -> list[str]:
        rep = self.node.replicator
        base = preferred_leaders(rep.partitions, self.member_ids())
        out = []
        for p, lead in enumerate(base):
            holders = list(rep.replicas(p))
            out.append(lead if not holders or lead in holders else holders[0])  # only a replica can lead
        return out

    async def balance_leaders(self) -> None:
        """Move each partition's leadership back to its preferred leader.

        The preferred leaders spread partitions evenly (each node leads about
        P/N). A leader hands a partition over (Raft TimeoutNow) only when the
        preferred node is connected; pysyncobj refuses a target that is not
        caught up, and the next round tries again.
        """
        rep = self.node.replicator
        while True:
            await asyncio.sleep(1.0)
            try:
                if self.node.leaving:
                    for g in list(range(rep.partitions)) + [rep.meta_group]:
                        if rep.is_leader(g):
                            rep.transfer_leadership(g, None)
                    continue
                preferred = self.preferred_leaders()
                for p, want in enumerate(preferred):
                    if want != self.node.node_id and rep.is_leader(p) and want in rep.voters(p) \
                            and rep.peer_connected(want):
                        rep.transfer_leadership(p, want)
            except Exception:
                log.exception("leader balancing failed")
