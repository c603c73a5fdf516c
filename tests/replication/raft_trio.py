"""Three in-process RaftReplicators on loopback (real sockets, real LMDB) for
the liveness tests: start and stop single nodes, find leaders, propose, wait."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hanzo_tasks.replication.raft.replicator import RaftReplicator

from tests.replication.test_no_pickle import _free_ports, cmd

ELECTION_MS = 300


class Trio:
    def __init__(self, tmp: Path, *, partitions: int = 1, opts: dict[str, dict[str, Any]] | None = None) -> None:
        self.tmp = tmp
        self.partitions = partitions
        self.opts = opts or {}
        self.secret = secrets.token_bytes(32)
        self.ids = ["a", "b", "c"]
        self.addrs = {nid: f"127.0.0.1:{p}" for nid, p in zip(self.ids, _free_ports(3), strict=True)}
        self.reps: dict[str, RaftReplicator] = {}
        self.seq = 0

    def make(self, nid: str) -> RaftReplicator:
        return RaftReplicator(self.tmp / nid, node_id=nid, listen=self.addrs[nid], peers=self.addrs,
                              secret=self.secret, partitions=self.partitions, sync=False,
                              election_timeout_ms=ELECTION_MS, heartbeat_interval_ms=50,
                              propose_timeout_ms=2000, **self.opts.get(nid, {}))

    async def start(self, *nids: str) -> None:
        for nid in nids:
            rep = self.make(nid)
            await rep.start()
            self.reps[nid] = rep

    async def stop(self, nid: str) -> None:
        rep = self.reps.pop(nid)
        await rep.stop()

    async def stop_all(self) -> None:
        for nid in list(self.reps):
            await self.stop(nid)

    def leader(self, g: int) -> str | None:
        """The one node that says it leads ``g`` (None while there is none or more than one)."""
        leading = [nid for nid, r in self.reps.items() if r.is_leader(g) and r.fatal is None]
        return leading[0] if len(leading) == 1 else None

    async def wait(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = cond()
            if v:
                return v
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for: {what}")

    async def wait_leader(self, g: int, timeout: float = 10.0) -> str:
        return await self.wait(lambda: self.leader(g), timeout, f"a leader of group {g}")

    def command(self, pad: int = 0) -> bytes:
        self.seq += 1
        i = self.seq
        return cmd(i, "wf.start", start={"type": "T", "workflowId": f"w{i}", "input": "x" * pad})

    async def propose(self, g: int, data: bytes, *, via: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Propose on ``via`` (default: the current leader), retrying while the outcome is "unavailable"."""
        deadline = time.monotonic() + timeout
        res: dict[str, Any] = {}
        while time.monotonic() < deadline:
            nid = via or self.leader(g)
            if nid is not None:
                res = await self.reps[nid].propose(g, data)
                if res.get("code") != "unavailable":
                    return res
            await asyncio.sleep(0.05)
        raise AssertionError(f"proposal on group {g} did not commit in {timeout}s: {res}")

    async def register(self, g: int) -> None:
        self.seq += 1
        assert (await self.propose(g, cmd(self.seq, "ns.register")))["ok"]

    async def caught_up(self, g: int, nids: list[str] | None = None, timeout: float = 10.0) -> None:
        """Every (given) live replica applied what the most advanced one applied."""
        nids = nids or list(self.reps)

        def same() -> bool:
            applied = [self.reps[n]._groups[g].raftLastApplied for n in nids]
            return len(set(applied)) == 1

        await self.wait(same, timeout, f"replicas {nids} of group {g} applied the same index")
