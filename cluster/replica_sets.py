"""Partition replica sets: the layout in the meta group, and keeping it whole.

Each partition is replicated by ``min(replication_factor, members)`` nodes,
chosen at bootstrap by ``routing.partition_plan`` and recorded by
``meta.init``. Every node opens the partitions the recorded layout gives it
(``RaftReplicator.set_replica_sets``) and forwards the rest (see
``cluster.forwarding``).

The **meta leader** keeps every set at full strength as members come and go,
one partition and one node at a time, and always adding before removing:

1. a member left (``DELETE /v1/tasks/cluster/members/{id}``) or the set is
   short: the HRW-next member is made a voter of the partition's Raft group,
   then recorded in the layout (it opens the group and catches up from the
   leader, by snapshot if need be);
2. once the added replica caught up (and a majority of the set that remains
   has applied what the group had committed), a replica that is no longer a
   member is removed from the group, then from the layout (it drops its copy
   when it sees that).

Each step is idempotent and re-derived from the meta group every round, so a
new meta leader simply continues. A joining node gets replicas only where a
set is short; spreading existing replicas onto new nodes is not automatic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgpack

from routing import partition_plan, rank

log = logging.getLogger("tasks.replicas")

ROUND_EVERY = 1.0
CATCH_UP_WAIT = 60.0


def bootstrap_layout(partitions: int, members: list[str], replication_factor: int, seed: str) -> list[list[str]]:
    """The layout a new cluster starts with (recorded by meta.init).

    Each partition's preferred leader (balanced by ``partition_plan``) first,
    then the members holding the fewest partitions so far, ties broken by
    the partition's HRW order, so that every node stores about as many
    partitions as every other (``P * rf / N``).
    """
    plan = partition_plan(partitions, members, replication_factor, seed)
    ms = sorted(set(members))
    k = min(replication_factor, len(ms))
    share = -(-partitions * k // len(ms))
    held = dict.fromkeys(ms, 0)
    for pp in plan:
        held[pp.preferred_leader] += 1
    out = []
    for pp in plan:
        nodes = [pp.preferred_leader]
        ranked = rank("", "", str(pp.id), seed, ms)
        while len(nodes) < k:
            m = min((m for m in ranked if m not in nodes),
                    key=lambda m: (held[m] >= share, held[m], ranked.index(m)))
            nodes.append(m)
            held[m] += 1
        out.append(nodes)
    return out


def current_layout(rep: Any) -> dict[int, list[str]]:
    """The recorded layout; every member holds every partition in clusters
    bootstrapped before layouts were recorded; empty before bootstrap."""
    meta = rep.meta
    if meta.partitions() is None:
        return {}
    stored = meta.replica_sets()
    everyone = sorted(meta.members())
    return {p: stored.get(p) or everyone for p in range(rep.partitions)}


def wanted(current: list[str], members: set[str], partition: int, replication_factor: int, seed: str) -> list[str]:
    """The set ``current`` should become: its members that are still members,
    topped up in HRW order to ``min(rf, members)``."""
    keep = [n for n in current if n in members]
    target = min(replication_factor, len(members))
    for m in rank("", "", str(partition), seed, sorted(members)):
        if len(keep) >= target:
            break
        if m not in keep:
            keep.append(m)
    return keep


class ReplicaKeeper:
    def __init__(self, rep: Any, *, replication_factor: int, seed: str) -> None:
        self.rep = rep
        self.rf = replication_factor
        self.seed = seed
        self.moves = 0

    def sync_local(self) -> None:
        """Open/drop this node's partitions to match the recorded layout (cheap, idempotent)."""
        layout = current_layout(self.rep)
        if layout:
            self.rep.set_replica_sets(layout)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(ROUND_EVERY)
            try:
                self.sync_local()
                # The meta leader keeps the sets; a node being removed hands its
                # leadership over and leaves this to the next one.
                if self.rep.is_leader(self.rep.meta_group) and self.rep.node_id in self.rep.meta.members():
                    await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the next round starts over from the meta group
                log.warning("replica set upkeep: %s", e)

    async def round(self) -> None:
        layout = current_layout(self.rep)
        members = set(self.rep.meta.members())
        if not layout or not members:
            return
        for p, cur in sorted(layout.items()):
            want = wanted(cur, members, p, self.rf, self.seed)
            if want == cur:
                continue
            add = [n for n in want if n not in cur]
            if add:
                node = add[0]
                log.info("partition %d: adding replica %s to %s", p, node, cur)
                await self.rep.change_group_membership(p, "add", node)
                await self._record(p, cur + [node])
                self.moves += 1
                await self._caught_up(p, node)
                return  # one step per round: the next round re-reads the layout
            drop = [n for n in cur if n not in want]
            if drop and len(cur) > 1:
                # A majority of the set that remains must be caught up (the added
                # replica was waited for): a member that is down does not block
                # the removal of another.
                caught = [n for n in want if await self._caught_up(p, n, wait=0.0)]
                if len(caught) <= len(want) // 2:
                    continue
                node = drop[0]
                log.info("partition %d: removing replica %s from %s", p, node, cur)
                await self.rep.change_group_membership(p, "rem", node)
                await self._record(p, [n for n in cur if n != node])
                self.moves += 1
                return

    async def _record(self, partition: int, nodes: list[str]) -> None:
        data = msgpack.packb({"op": "meta.replicas", "partition": partition, "replicas": nodes}, use_bin_type=True)
        res = await self.rep.propose(self.rep.meta_group, data)
        if not res.get("ok"):
            raise RuntimeError(f"meta.replicas for partition {partition}: {res.get('message')}")

    async def _progress(self, partition: int, node: str) -> dict[str, int] | None:
        if node == self.rep.node_id:
            return await self.rep.group_progress(partition)
        try:
            return await self.rep.rpc.call(node, "progress", {"g": partition}, 5.0)
        except Exception:  # noqa: BLE001 - unreachable counts as not caught up
            return None

    async def _caught_up(self, partition: int, node: str, wait: float = CATCH_UP_WAIT) -> bool:
        """Whether ``node`` applied everything the group had committed when asked (polling up to ``wait``)."""
        target = 0
        for n in self.rep.replicas(partition):
            if n != node:
                pr = await self._progress(partition, n)
                if pr:
                    target = max(target, pr["commit"])
        deadline = time.monotonic() + wait
        while True:
            pr = await self._progress(partition, node)
            if pr is not None and pr["applied"] >= target:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)
