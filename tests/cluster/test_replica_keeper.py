"""The replica keeper against real Raft groups (issue 23, defects 5 and 6).

Four in-process RaftReplicators on loopback sockets (real LMDB, real
pysyncobj), the meta group bootstrapped with a layout as ``tasksd`` does, and
a ``ReplicaKeeper`` per node wired the way ``cluster.node`` wires it:

- replacing a replica that is down keeps the partition writable (it is removed
  first, then the replacement added: adding first needed 3 of 4 votes with
  one of them dead and the other not started);
- a recorded layout that differs from the group's committed voters (an
  addition committed but never recorded, a recorded addition that never
  committed) is repaired to match, and the sets then converge.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hanzo_tasks.cluster.replica_sets import ReplicaKeeper, current_layout
from hanzo_tasks.replication.raft.replicator import RaftReplicator
from hanzo_tasks.shard.meta import initial_meta_voters

from tests.replication.test_membership_changes import until
from tests.replication.test_no_pickle import _free_ports, cmd

SEED = "tasks"


class Nodes:
    """Replicators + keepers; ``start`` bootstraps the meta group with ``layout``."""

    def __init__(self, tmp: Path, ids: list[str], layout: list[list[str]], rf: int = 3) -> None:
        self.tmp = tmp
        self.ids = ids
        self.layout = layout
        self.rf = rf
        self.addrs = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, _free_ports(len(ids)), strict=True)}
        secret = secrets.token_bytes(32)
        self.reps = {nid: RaftReplicator(tmp / nid, node_id=nid, listen=self.addrs[nid], peers=self.addrs,
                                         secret=secret, partitions=len(layout), sync=False,
                                         election_timeout_ms=300, heartbeat_interval_ms=50,
                                         propose_timeout_ms=5000, await_layout=True)
                     for nid in ids}
        self.keepers: dict[str, asyncio.Task] = {}

    async def start(self) -> None:
        for rep in self.reps.values():
            rep.subscribe(self._on_meta_apply(rep))
            await rep.start()
        members = [{"id": n, "peer": self.addrs[n]} for n in self.ids]
        await self.meta({"op": "meta.init", "partitions": len(self.layout), "members": members,
                         "replicas": self.layout, "voters": initial_meta_voters(self.ids)})
        for p, nodes in enumerate(self.layout):
            await until(lambda p=p, nodes=nodes: all(self.reps[n].is_local(p) for n in nodes), 10.0)

    @staticmethod
    def _on_meta_apply(rep: RaftReplicator) -> Any:
        def listener(group: int, index: int, result: dict[str, Any]) -> None:  # as cluster.node does
            if group == rep.meta_group and result.get("layout"):
                rep.set_replica_sets(current_layout(rep))
        return listener

    def run_keepers(self) -> None:
        for nid, rep in self.reps.items():
            keeper = ReplicaKeeper(rep, replication_factor=self.rf, seed=SEED)
            self.keepers[nid] = asyncio.get_running_loop().create_task(keeper.run())

    async def kill(self, nid: str) -> None:
        task = self.keepers.pop(nid, None)
        if task is not None:
            task.cancel()
        await self.reps[nid].stop()

    async def restart(self, nid: str) -> RaftReplicator:
        old = self.reps[nid]
        rep = RaftReplicator(self.tmp / nid, node_id=nid, listen=self.addrs[nid], peers=self.addrs,
                             secret=old._secret, partitions=old.partitions, sync=False, election_timeout_ms=300,
                             heartbeat_interval_ms=50, propose_timeout_ms=5000, await_layout=True)
        rep.subscribe(self._on_meta_apply(rep))
        await rep.start()
        self.reps[nid] = rep
        keeper = ReplicaKeeper(rep, replication_factor=self.rf, seed=SEED)
        self.keepers[nid] = asyncio.get_running_loop().create_task(keeper.run())
        return rep

    def live(self) -> list[RaftReplicator]:
        return [r for r in self.reps.values() if r._running]

    async def meta(self, command: dict[str, Any]) -> dict[str, Any]:
        data = msgpack.packb(command, use_bin_type=True)
        for _ in range(100):
            rep = self.live()[0]
            res = await rep.propose(rep.meta_group, data)
            if res.get("ok") or res.get("code") != "unavailable":
                return res
            await asyncio.sleep(0.1)
        raise AssertionError(f"meta command did not commit: {command}")

    async def leader_view(self, p: int) -> dict[str, Any] | None:
        """The committed voters of partition ``p`` as its settled leader sees them."""
        for rep in self.live():
            if rep.is_leader(p):
                view = await rep.group_membership(p)
                if view and view["settled"] and not view["pending"]:
                    return view
        return None

    async def stop(self) -> None:
        for task in self.keepers.values():
            task.cancel()
        for rep in self.reps.values():
            await rep.stop()


async def _write(rep: RaftReplicator, p: int, i: int) -> dict[str, Any]:
    return await rep.propose(p, cmd(i, "ns.register"))


async def _converged(nodes: Nodes, p: int, size: int) -> bool:
    """The recorded set is the group's committed voter set, of ``size``, held
    by exactly its nodes."""
    view = await nodes.leader_view(p)
    live = nodes.live()
    recorded = current_layout(live[0])[p]
    if view is None or sorted(recorded) != view["voters"] or len(recorded) != size:
        return False
    if not all(current_layout(r)[p] == recorded for r in live):
        return False
    return all(r.is_local(p) == (r.node_id in recorded) and (p in r._groups) == (r.node_id in recorded)
               for r in live)


def test_a_dead_replica_is_replaced_without_a_leaderless_partition(tmp_path: Path) -> None:
    async def run() -> dict[str, Any]:
        nodes = Nodes(tmp_path, ["a", "b", "c", "d"], [["a", "b", "c"]])
        await nodes.start()
        out: dict[str, Any] = {}
        try:
            a = nodes.reps["a"]
            assert (await _write(a, 0, 0))["ok"]
            nodes.run_keepers()
            await nodes.kill("c")
            for i in range(100):  # a new leader, if c led (the kill's own election is not measured)
                if (await _write(a, 0, 1000 + i)).get("code") != "unavailable":
                    break
            await nodes.meta({"op": "meta.remove", "id": "c"})
            slowest, failed, i = 0.0, [], 1
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                res = await _write(a, 0, i)
                slowest = max(slowest, time.monotonic() - t0)
                if res.get("code") == "unavailable":  # not committed in time (ns.register again: already_exists)
                    failed.append(res)
                i += 1
                if current_layout(a)[0] == ["a", "b", "d"] and await _converged(nodes, 0, 3):
                    break
                await asyncio.sleep(0.05)
            out["layout"] = current_layout(a)[0]
            out["slowest"], out["failed"], out["writes"] = slowest, failed, i
            d, target = nodes.reps["d"], (await a.group_progress(0))["commit"]

            async def caught_up() -> bool:
                progress = await d.group_progress(0)
                return progress is not None and progress["applied"] >= target

            await until(caught_up, 10.0)
            return out
        finally:
            await nodes.stop()

    out = asyncio.run(run())
    assert out["layout"] == ["a", "b", "d"], out
    assert not out["failed"], out
    assert out["slowest"] < 2.5, f"a write waited {out['slowest']:.1f} s while the dead replica was replaced"


def test_a_single_replica_moves_to_another_member(tmp_path: Path) -> None:
    """Replication factor 1: the set of one leaves, so its addition of the new
    replica needs that replica's vote (2 of 2). The new replica opens the
    group before it is added (``prepare_replica``); were it to open only once
    the layout records it, the addition (recorded only once committed) could
    never commit."""
    async def run() -> list[str]:
        nodes = Nodes(tmp_path, ["a", "b", "c"], [["a"]], rf=1)
        await nodes.start()
        try:
            a = nodes.reps["a"]
            assert (await _write(a, 0, 0)).get("ok")

            async def leaving() -> None:  # as cluster.node does once it learns of its removal
                while True:
                    for g in (0, a.meta_group):
                        if a.is_leader(g):
                            a.transfer_leadership(g, None)
                    await asyncio.sleep(0.3)

            hand_over = asyncio.get_running_loop().create_task(leaving())
            await until(lambda: not a.is_leader(a.meta_group), 10.0)
            nodes.run_keepers()
            await nodes.meta({"op": "meta.remove", "id": "a"})
            await until(lambda: current_layout(a)[0] != ["a"] and _converged(nodes, 0, 1), 30.0, step=0.25)
            hand_over.cancel()
            new = nodes.reps[current_layout(a)[0][0]]
            res = await new.propose(0, cmd(1, "ns.register"))
            assert res.get("ok") or res.get("code") == "already_exists", res
            return current_layout(a)[0]
        finally:
            await nodes.stop()

    assert asyncio.run(run()) in (["b"], ["c"])


def test_an_addition_that_committed_unrecorded_is_recorded(tmp_path: Path) -> None:
    """A keeper that stopped between the commit and the record (or a change that
    committed after its caller gave up) leaves a voter the layout does not name."""
    async def run() -> bool:
        nodes = Nodes(tmp_path, ["a", "b", "c", "d"], [["a", "b", "c"]])
        await nodes.start()
        try:
            leader = await until(lambda: next((r for r in nodes.live() if r.is_leader(0)), None), 10.0)
            await leader.change_membership("add", "d", groups=[0], timeout=10.0)
            view = await until(lambda: nodes.leader_view(0), 10.0)
            assert view["voters"] == ["a", "b", "c", "d"], view
            nodes.run_keepers()
            await until(lambda: _converged(nodes, 0, 3), 40.0, step=0.25)
            return True
        finally:
            await nodes.stop()

    assert asyncio.run(run())


def test_an_addition_recorded_but_never_committed_is_undone(tmp_path: Path) -> None:
    """A layout naming a node that is not a voter: that node opened the group
    with an empty store and would serve it."""
    async def run() -> dict[str, Any]:
        nodes = Nodes(tmp_path, ["a", "b", "c", "d"], [["a", "b", "c"]])
        await nodes.start()
        try:
            d = nodes.reps["d"]
            await nodes.meta({"op": "meta.replicas", "partition": 0, "replicas": ["a", "b", "c", "d"]})
            await until(lambda: 0 in d._groups, 10.0)
            nodes.run_keepers()
            await until(lambda: _converged(nodes, 0, 3), 40.0, step=0.25)
            view = await nodes.leader_view(0)
            return {"voters": view["voters"] if view else None, "d_holds": 0 in d._groups}
        finally:
            await nodes.stop()

    out = asyncio.run(run())
    assert out == {"voters": ["a", "b", "c"], "d_holds": False}, out


@pytest.fixture(autouse=True)
def _quiet_pysyncobj() -> None:
    logging.getLogger("pysyncobj").setLevel(logging.ERROR)
