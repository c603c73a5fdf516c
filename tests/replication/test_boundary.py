"""Both replicators implement the whole boundary (``NodeReplicator``), so callers
never probe for a member; a single node answers the cluster-control half
trivially and truthfully: it leads and holds everything and has no peers."""

from __future__ import annotations

import asyncio
import inspect
import secrets
from pathlib import Path

import pytest
from hanzo_tasks.protocol.channels import EVENTS
from hanzo_tasks.replication import (
    ClusterControl,
    LocalReplicator,
    NodeReplicator,
    Replicator,
)
from hanzo_tasks.replication.raft.replicator import RaftReplicator
from hanzo_tasks.replication.rpc import PeerUnavailable
from hanzo_tasks.shard import encode

pytestmark = pytest.mark.timeout(30)


def protocol_members(proto: type) -> set[str]:
    names: set[str] = set()
    for cls in proto.__mro__:
        if cls is object or cls.__name__ in ("Protocol", "Generic"):
            continue
        names |= {n for n in vars(cls) if not n.startswith("_")}
        names |= {n for n in getattr(cls, "__annotations__", {}) if not n.startswith("_")}
    return names


def test_the_protocols_name_what_callers_use() -> None:
    members = protocol_members(NodeReplicator)
    assert protocol_members(Replicator) | protocol_members(ClusterControl) == members
    # The members the cluster code used to probe for with getattr/hasattr.
    for name in ("clustered", "is_local", "local_partitions", "replicas", "on_leadership", "stalled",
                 "failure", "failure_kind", "forwarded", "meta", "meta_group", "rpc", "note_leader",
                 "on_peer_change", "on_channel", "peer_rejected"):
        assert name in members, name


def make_raft(tmp: Path) -> RaftReplicator:
    return RaftReplicator(tmp / "raft", node_id="solo", listen="127.0.0.1:0", peers={},
                          secret=secrets.token_bytes(32), partitions=2, sync=False)


def test_both_replicators_have_every_member(tmp_path: Path) -> None:
    async def main() -> None:
        local = LocalReplicator(tmp_path / "local", partitions=2, sync=False)
        raft = make_raft(tmp_path)
        await local.start()
        await raft.start()
        try:
            for rep in (local, raft):
                missing = sorted(n for n in protocol_members(NodeReplicator) if not hasattr(rep, n))
                assert not missing, (type(rep).__name__, missing)
                for name in protocol_members(NodeReplicator):
                    declared = inspect.getattr_static(NodeReplicator, name, None)
                    if inspect.iscoroutinefunction(declared):
                        assert inspect.iscoroutinefunction(getattr(rep, name)), (type(rep).__name__, name)
            assert local.clustered is False and raft.clustered is True
        finally:
            await local.stop()
            await raft.stop()

    asyncio.run(main())


def test_a_single_node_leads_holds_everything_and_has_no_peers(tmp_path: Path) -> None:
    async def main() -> None:
        rep = LocalReplicator(tmp_path, node_id="n1", partitions=2, sync=False)
        leadership: list[tuple[int, bool]] = []
        rep.on_leadership(lambda g, leading: leadership.append((g, leading)))
        await rep.start()
        try:
            res = await rep.propose(1, encode({"v": 1, "op": "ns.register", "org": "_", "ns": "default",
                                               "now": 1_700_000_000_000, "rnd": "0" * 32}))
            assert res["ok"], res
            assert rep.local_partitions() == [0, 1]
            assert all(rep.is_local(p) and rep.is_leader(p) and rep.leader(p) == "n1" for p in (0, 1))
            assert rep.replicas(1) == ("n1",) and rep.voters(1) == frozenset({"n1"})
            assert rep.group_status(1) == {"leader": "n1", "appliedIndex": 1, "commitIndex": 1, "term": 1,
                                           "hasQuorum": True}
            assert await rep.group_progress(1) == {"applied": 1, "commit": 1}
            assert rep.failure() is None and rep.failure_kind() is None and not rep.stalled
            assert rep.proposals == 1 and rep.forwarded == 0
            # No peers: nothing is sent, nothing can be called, nobody to hand leadership to.
            assert rep.peers_for(1) == [] and not rep.peer_connected("n2") and not rep.peer_responsive("n2")
            assert rep.send_peer("n2", EVENTS, b"x") is False and rep.peer_rejected() == {}
            with pytest.raises(PeerUnavailable):
                await rep.rpc.call("n2", "leaders", {}, 1.0)
            rep.transfer_leadership(1, None)
            await asyncio.sleep(0.05)
            assert rep.is_leader(1) and leadership == []
            with pytest.raises(ValueError):
                await rep.change_membership("add", "n2")
            # No cluster directory.
            assert rep.meta.members() == {} and rep.meta.partitions() is None and rep.meta.pins() == {}
        finally:
            await rep.stop()

    asyncio.run(main())


def test_a_failed_apply_thread_is_reported_as_an_apply_failure(tmp_path: Path) -> None:
    rep = LocalReplicator(tmp_path, sync=False)
    try:
        rep.failed = True  # what the apply thread records when it dies
        assert rep.failure() == "the apply thread failed" and rep.failure_kind() == "apply"
    finally:
        rep.store(0).close()
