"""Nothing a Raft peer sends is ever unpickled.

Three RaftReplicators in one process talk over real loopback sockets while
every unpickling entry point of pysyncobj raises: writes replicate, a node that
was down catches up from a compacted log (snapshot install), and all replicas
end identical. If any path of pysyncobj unpickled a message, an entry or a
snapshot, this test would fail.
"""

from __future__ import annotations

import asyncio
import pickle
import secrets
import socket
from pathlib import Path
from typing import Any

import pysyncobj.pickle as pysyncobj_pickle
import pytest
from hanzo_tasks.replication.raft.replicator import RaftReplicator
from hanzo_tasks.shard import encode


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


UNPICKLED: list[str] = []


def _forbidden(*_: Any, **__: Any) -> Any:
    UNPICKLED.append("unpickle")  # raised inside the Raft thread, so also recorded here
    raise AssertionError("pysyncobj tried to unpickle data")


def cmd(i: int, op: str, **fields: Any) -> bytes:
    c = {"v": 1, "op": op, "org": "_", "ns": "default", "now": 1_700_000_000_000 + i, "rnd": f"{i:032x}"}
    c.update(fields)
    return encode(c)


async def _run(tmp: Path) -> None:
    secret = secrets.token_bytes(32)
    ids = ["a", "b", "c"]
    addrs = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, _free_ports(3), strict=True)}

    def make(nid: str) -> RaftReplicator:
        return RaftReplicator(tmp / nid, node_id=nid, listen=addrs[nid], peers=addrs, secret=secret,
                              partitions=1, sync=False, election_timeout_ms=300, heartbeat_interval_ms=50,
                              snapshot_every=20)

    reps = {nid: make(nid) for nid in ("a", "b")}
    for r in reps.values():
        await r.start()

    async def propose(data: bytes) -> dict[str, Any]:
        for _ in range(200):
            assert not UNPICKLED, "pysyncobj tried to unpickle data"
            for r in reps.values():
                if r.is_leader(0):
                    res = await r.propose(0, data)
                    if res.get("code") != "unavailable":
                        return res
            await asyncio.sleep(0.05)
        raise AssertionError("no leader")

    try:
        assert (await propose(cmd(0, "ns.register")))["ok"]
        for i in range(1, 80):  # several compactions while "c" is down
            res = await propose(cmd(i, "wf.start", start={"type": "T", "workflowId": f"w{i}"}))
            assert res["ok"], res
        reps["c"] = make("c")
        await reps["c"].start()
        for _ in range(200):
            if reps["c"].store(0).applied_index() >= reps["a"].store(0).applied_index() > 0:
                break
            await asyncio.sleep(0.05)
        assert reps["c"].snapshot_counts()["installed"] >= 1, "the lagging node did not install a snapshot"
        await propose(cmd(100, "sys.barrier"))
        await asyncio.sleep(0.5)
        assert not UNPICKLED
        hashes = {nid: r.store(0).content_hash(b"s") for nid, r in reps.items()}
        assert len(set(hashes.values())) == 1, hashes
    finally:
        for r in reps.values():
            await r.stop()


def test_raft_peers_never_unpickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    UNPICKLED.clear()
    for name in ("loads", "load"):
        monkeypatch.setattr(pysyncobj_pickle, name, _forbidden)
        monkeypatch.setattr(pickle, name, _forbidden)
    asyncio.run(_run(tmp_path))
