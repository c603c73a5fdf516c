"""The LocalReplicator and a one-node Raft group give identical results and state."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from hanzo_tasks.replication import LocalReplicator
from hanzo_tasks.replication.raft.replicator import RaftReplicator
from hanzo_tasks.shard import encode


def stream() -> list[bytes]:
    out = []
    now = 1_700_000_000_000

    def cmd(op: str, **f: object) -> bytes:
        nonlocal now
        now += 250
        c = {"v": 1, "op": op, "org": "_", "ns": "default", "now": now, "rnd": f"{now:032x}"}
        c.update(f)
        return encode(c)

    out.append(cmd("ns.register"))
    for i in range(30):
        out.append(cmd("wf.start", start={"type": "T", "workflowId": f"w{i % 7}", "requestId": f"r{i % 11}",
                                          "conflict": ["FAIL", "USE_EXISTING", "TERMINATE_EXISTING"][i % 3]}))
        out.append(cmd("wf.signal", workflowId=f"w{i % 5}", name="s", input=i))
        if i % 4 == 0:
            out.append(cmd("wf.cancel", workflowId=f"w{i % 6}"))
    out.append(cmd("sched.create", scheduleId="s", spec={"interval": [{"interval": "1s", "phase": "0s"}]},
                   action={"type": "Tick", "taskQueue": "q"},
                   policies={"overlapPolicy": "ALLOW_ALL", "catchupWindow": 60_000}, state={"paused": False}))
    out.append(cmd("sched.fire", scheduleId="s", after=now - 250, nominal=(now // 1000 + 1) * 1000))
    out.append(cmd("sys.barrier"))
    return out


def strip(res: dict) -> dict:
    return {k: v for k, v in res.items() if not k.startswith("_")}


async def run_both(tmp: Path) -> None:
    local = LocalReplicator(tmp / "local", sync=False)
    raft = RaftReplicator(
        tmp / "raft", node_id="solo", listen="127.0.0.1:0", peers={}, secret=secrets.token_bytes(32),
        partitions=1, sync=False, election_timeout_ms=200, heartbeat_interval_ms=40,
    )
    await local.start()
    await raft.start()
    try:
        for _ in range(200):
            if raft.is_leader(0):
                break
            await asyncio.sleep(0.05)
        assert raft.is_leader(0), "a one-node group elects itself"
        for data in stream():
            a = await local.propose(0, data)
            b = await raft.propose(0, data)
            assert strip(a) == strip(b)
        assert local.store(0).content_hash(b"s") == raft.store(0).content_hash(b"s")
        assert local.store(0).content_hash(b"\x01reg") == raft.store(0).content_hash(b"\x01reg")
    finally:
        await local.stop()
        await raft.stop()


def test_local_and_one_node_raft_agree(tmp_path: Path) -> None:
    asyncio.run(run_both(tmp_path))
