"""The meta group has at most five voters (issue 23: "every member becomes a
meta voter"); every other member follows it as a learner.

Six in-process RaftReplicators (real sockets, LMDB, pysyncobj) bootstrapped
from one static peer list: the first five ids vote, the sixth learns. A
learner applies every meta entry, proposes through the leader, and comes back
a learner after a restart; when a voter leaves, the meta leader's keeper makes
the learner a voter, and the group then survives one more loss.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from hanzo_tasks.cluster.replica_sets import current_layout

from tests.cluster.test_replica_keeper import Nodes
from tests.replication.test_membership_changes import until

IDS = ["a", "b", "c", "d", "e", "f"]


async def meta_view(nodes: Nodes) -> dict[str, Any]:
    async def settled() -> dict[str, Any] | None:
        for rep in nodes.live():
            if rep.is_leader(rep.meta_group):
                view = await rep.group_membership(rep.meta_group)
                if view and view["settled"] and not view["pending"]:
                    return view
        return None

    return await until(settled, 10.0)


def test_a_sixth_member_learns_the_meta_group_without_a_vote(tmp_path: Path) -> None:
    async def run() -> dict[str, Any]:
        nodes = Nodes(tmp_path, IDS, [["a", "b", "c"]])
        await nodes.start()
        out: dict[str, Any] = {}
        try:
            f = nodes.reps["f"]
            out["voters"] = (await meta_view(nodes))["voters"]
            out["learner"] = f.meta_learner()
            out["recorded"] = f.meta.voters()
            res = await nodes.meta({"op": "meta.member", "id": "x", "peer": "127.0.0.1:1"})
            assert res["ok"], res
            out["f_applies"] = await until(lambda: "x" in f.meta.members(), 5.0)
            data = b'\x81\xa2op\xabmeta.remove'  # {"op": "meta.remove"} proposed on the learner
            res = await f.propose(f.meta_group, data)
            out["f_proposes"] = res.get("ok")
            out["layout_on_f"] = current_layout(f)[0]
            await nodes.kill("f")
            await nodes.meta({"op": "meta.member", "id": "y", "peer": "127.0.0.1:2"})
            f = await nodes.restart("f")
            out["learner_after_restart"] = f.meta_learner()
            out["f_catches_up"] = await until(lambda: "y" in f.meta.members(), 10.0)
            return out
        finally:
            await nodes.stop()

    out = asyncio.run(run())
    assert out["voters"] == ["a", "b", "c", "d", "e"], out
    assert out["learner"] and out["learner_after_restart"], out
    assert out["recorded"] == ["a", "b", "c", "d", "e"], out
    assert out["f_applies"] and out["f_proposes"] and out["f_catches_up"], out
    assert out["layout_on_f"] == ["a", "b", "c"], out


def test_a_learner_takes_the_vote_of_a_member_that_left(tmp_path: Path) -> None:
    async def run() -> dict[str, Any]:
        nodes = Nodes(tmp_path, IDS, [["a", "b", "c"]])
        await nodes.start()
        out: dict[str, Any] = {}
        try:
            nodes.run_keepers()
            await nodes.kill("e")
            await nodes.meta({"op": "meta.remove", "id": "e"})
            leader = await until(lambda: next((r for r in nodes.live() if r.is_leader(r.meta_group)), None), 10.0)
            await leader.change_membership("rem", "e", groups=[leader.meta_group], timeout=10.0)  # as remove_member
            f = nodes.reps["f"]
            out["promoted"] = await until(lambda: not f.meta_learner(), 20.0, step=0.1)
            view = await meta_view(nodes)
            out["voters"] = view["voters"]
            out["recorded"] = await until(lambda: f.meta.voters() == ["a", "b", "c", "d", "f"] or None, 5.0)
            # Five voters, one more may fail: kill the meta leader.
            leader = await until(lambda: next((r for r in nodes.live() if r.is_leader(r.meta_group)), None), 10.0)
            await nodes.kill(leader.node_id)
            res = await nodes.meta({"op": "meta.member", "id": "z", "peer": "127.0.0.1:3"})
            out["after_loss"] = res.get("ok")
            return out
        finally:
            await nodes.stop()

    out = asyncio.run(run())
    assert out["promoted"], out
    assert out["voters"] == ["a", "b", "c", "d", "f"], out
    assert out["after_loss"], out


@pytest.fixture(autouse=True)
def _quiet_pysyncobj() -> None:
    logging.getLogger("pysyncobj").setLevel(logging.ERROR)


def test_a_node_joining_a_full_meta_group_learns_even_when_its_id_sorts_first(tmp_path: Path) -> None:
    """An empty node cannot tell a new cluster from a running one: its static
    peer list would make it a voter ("a0" sorts first), so it holds back from
    elections until a member answers with the cluster's voters."""
    from hanzo_tasks.replication.raft.replicator import RaftReplicator

    from tests.replication.test_no_pickle import _free_ports

    async def run() -> dict[str, Any]:
        nodes = Nodes(tmp_path, IDS, [["a", "b", "c"]])
        await nodes.start()
        out: dict[str, Any] = {}
        try:
            nodes.run_keepers()
            (port,) = _free_ports(1)
            addrs = {**nodes.addrs, "a0": f"127.0.0.1:{port}"}
            res = await nodes.meta({"op": "meta.member", "id": "a0", "peer": addrs["a0"]})
            assert res["ok"], res
            for rep in nodes.live():
                rep.set_peer_addresses(addrs)
            a = nodes.reps["a"]
            joiner = RaftReplicator(tmp_path / "a0", node_id="a0", listen=addrs["a0"], peers=addrs,
                                    secret=a._secret, partitions=1, sync=False, election_timeout_ms=300,
                                    heartbeat_interval_ms=50, propose_timeout_ms=5000, await_layout=True)
            await joiner.start()
            nodes.reps["a0"] = joiner
            out["learner"] = await until(lambda: joiner.meta_learner(), 10.0)
            out["applies"] = await until(lambda: "a0" in joiner.meta.members(), 10.0)
            await asyncio.sleep(2.0)  # keeper rounds: five voters already, no promotion
            out["voters"] = (await meta_view(nodes))["voters"]
            out["still_learner"] = joiner.meta_learner()
            return out
        finally:
            await nodes.stop()

    out = asyncio.run(run())
    assert out["learner"] and out["applies"] and out["still_learner"], out
    assert out["voters"] == ["a", "b", "c", "d", "e"], out
