"""Linearizable reads by ReadIndex (replication.raft.reads): no log entry, one
heartbeat round, and never a stale answer from a leader that was deposed.

Three in-process Raft nodes (real sockets, real LMDB) with a Service each.
Frames are dropped where they enter a node (``Cluster.isolate``), which is how
a partitioned leader looks to everyone.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.replication import NotLeader, ReadIndexUnavailable

from tests.migration.inproc import ORG, Cluster, until

NS = "reads"


async def register(c: Cluster) -> tuple[int, str]:
    meta = c.services[c.leader(2) or c.ids[0]]
    await meta.namespaces.register_namespace_in(ORG, NS, {})
    g = c.home(NS)
    await until(lambda: c.leader(g) is not None, 10.0, "a partition leader")
    return g, c.leader(g) or ""


async def start(c: Cluster, via: str, wid: str) -> None:
    await c.services[via].workflows.start_workflow(ORG, NS, {"workflowId": wid, "workflowType": {"name": "T"}})


async def found(c: Cluster, on: str, wid: str) -> bool:
    return await c.services[on].read(ORG, NS, "run", wid, None, barrier=True) is not None


def test_a_read_on_any_replica_sees_every_write_acknowledged_before_it(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], int, int]:
        c = Cluster(tmp_path)
        await c.start()
        try:
            g, lead = await register(c)
            await start(c, lead, "warm")
            barriers_before = sum(s.read_barriers for s in c.services.values())
            missing = []
            for i in range(30):
                await start(c, lead, f"w{i}")
                for nid in c.ids:  # the followers learn the commit only with the next heartbeat
                    if not await found(c, nid, f"w{i}"):
                        missing.append(f"w{i}@{nid}")
            barriers = sum(s.read_barriers for s in c.services.values()) - barriers_before
            by_index = sum(r.reads_by_index for r in c.reps.values())
            return missing, barriers, by_index
        finally:
            await c.stop()

    missing, barriers, by_index = asyncio.run(scenario())
    assert missing == [], f"reads that missed an acknowledged write: {missing}"
    assert barriers == 0, "a read committed a barrier entry although ReadIndex was available"
    assert by_index >= 90


def test_reads_waiting_together_share_one_heartbeat_round(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        c = Cluster(tmp_path)
        await c.start()
        try:
            g, lead = await register(c)
            await start(c, lead, "warm")
            reads = c.reps[lead]._groups[g].reads
            before = reads.rounds_started
            await asyncio.gather(*(c.reps[lead].read_index(g) for _ in range(500)))
            return reads.rounds_started - before, 500
        finally:
            await c.stop()

    rounds, n = asyncio.run(scenario())
    assert 1 <= rounds <= n // 10, f"{rounds} heartbeat rounds for {n} reads"


def test_a_leader_cut_off_from_the_majority_never_answers_a_read(tmp_path: Path) -> None:
    """The stale-leader case: the old leader still believes it leads (its step-down
    timer has not fired, as after a pause) while a new leader took a write. A read
    issued on it after that write was acknowledged must fail, never answer without
    the write; without the leadership confirmation it answers at once from its copy."""

    async def scenario() -> dict[str, Any]:
        c = Cluster(tmp_path)
        await c.start()
        try:
            g, old = await register(c)
            await start(c, old, "before")
            grp = c.reps[old]._groups[g]
            grp._getConf().leaderFallbackTimeout = 60.0  # it does not notice it lost the majority
            c.reps[old].propose_timeout = 1.5
            term = grp.raftCurrentTerm
            c.isolate(old, g)
            others = [n for n in c.ids if n != old]
            await until(lambda: any(c.reps[n].is_leader(g) and c.reps[n]._groups[g].raftCurrentTerm > term
                                    for n in others), 15.0, "a new leader among the others")
            new = next(n for n in others if c.reps[n].is_leader(g))
            await start(c, new, "after")
            out: dict[str, Any] = {"believes": c.reps[old].is_leader(g)}
            t0 = time.monotonic()
            try:
                out["index"] = await c.reps[old].read_index(g)
            except (NotLeader, ReadIndexUnavailable) as e:
                out["refused"] = type(e).__name__
            out["waited"] = time.monotonic() - t0
            try:
                out["api"] = await found(c, old, "after")
            except ApiError as e:
                out["api"] = e.code
            c.heal()
            await until(lambda: not c.reps[old].is_leader(g), 15.0, "the old leader stepping down")
            out["healed"] = await found(c, old, "after")
            return out
        finally:
            await c.stop()

    out = asyncio.run(scenario())
    assert out["believes"], "the old leader had stepped down already: the case was not exercised"
    assert "index" not in out, f"a cut-off leader answered a read: {out}"
    assert out["refused"] == "NotLeader" and out["waited"] >= 1.0, out
    assert out["api"] == "unavailable", f"the API read on the cut-off leader gave {out['api']!r}"
    assert out["healed"] is True


def test_with_read_index_off_every_read_commits_a_barrier(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        c = Cluster(tmp_path)
        for svc in c.services.values():
            svc.read_index = False  # raft.read_index: false
        await c.start()
        try:
            g, lead = await register(c)
            await start(c, lead, "w")
            for nid in c.ids:
                assert await found(c, nid, "w")
            return sum(s.read_barriers for s in c.services.values()), sum(r.reads_by_index for r in c.reps.values())
        finally:
            await c.stop()

    barriers, by_index = asyncio.run(scenario())
    assert barriers >= 3 and by_index == 0
