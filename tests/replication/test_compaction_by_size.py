"""A group whose log outgrows ``compact_bytes`` is compacted even before
``snapshot_every`` entries (pysyncobj keeps the log in memory as well as on disk):
three in-process Raft peers over real sockets, real LMDB."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

from hanzo_tasks.replication.raft.replicator import RaftReplicator

from tests.replication.test_no_pickle import _free_ports, cmd


async def _run(tmp: Path) -> dict[str, Any]:
    secret = secrets.token_bytes(32)
    ids = ["a", "b", "c"]
    addrs = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, _free_ports(3), strict=True)}
    reps = {nid: RaftReplicator(tmp / nid, node_id=nid, listen=addrs[nid], peers=addrs, secret=secret,
                                partitions=1, sync=False, election_timeout_ms=300, heartbeat_interval_ms=50,
                                snapshot_every=1_000_000, compact_bytes=256 * 1024)
            for nid in ids}
    for r in reps.values():
        await r.start()

    async def propose(data: bytes) -> dict[str, Any]:
        for _ in range(200):
            for r in reps.values():
                if r.is_leader(0):
                    res = await r.propose(0, data)
                    if res.get("code") != "unavailable":
                        return res
            await asyncio.sleep(0.05)
        raise AssertionError("no leader")

    try:
        assert (await propose(cmd(0, "ns.register")))["ok"]
        pad = "x" * 20_000
        for i in range(1, 60):  # ~1.2 MB of log, far fewer entries than snapshot_every
            res = await propose(cmd(i, "wf.start", start={"type": "T", "workflowId": f"w{i}", "input": pad}))
            assert res["ok"], res
        for _ in range(100):
            if all(r._journals[0].log_bytes < 256 * 1024 for r in reps.values()):
                break
            await asyncio.sleep(0.1)
        return {nid: (r._journals[0].log_bytes, r.snapshot_counts()["taken"],
                      r.store(0).content_hash(b"s")) for nid, r in reps.items()}
    finally:
        for r in reps.values():
            await r.stop()


def test_a_large_log_is_compacted_before_snapshot_every(tmp_path: Path) -> None:
    out = asyncio.run(_run(tmp_path))
    for nid, (log_bytes, taken, _) in out.items():
        assert taken >= 1, (nid, out)
        assert log_bytes < 256 * 1024, (nid, log_bytes)
    assert len({h for _, _, h in out.values()}) == 1
