"""Three in-process Raft nodes (real sockets, real LMDB) with a Service each.

For migration and read tests that need to stop one node at a precise step: a
fault point wraps a node's ``propose`` (the call still goes to the real
replicator), and ``Dropper`` discards chosen groups' Raft frames arriving at a
node (Raft recovers them by retransmitting once they pass again).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hanzo_tasks.cluster.config import config_from_mapping
from hanzo_tasks.cluster.service import Service
from hanzo_tasks.protocol.channels import RAFT
from hanzo_tasks.replication.raft.replicator import RaftReplicator
from hanzo_tasks.routing import partition_of

from tests.cluster.raft_support import free_ports

ORG = "_"
PARTITIONS = 2


class Dropper:
    """Drops the Raft frames of chosen groups that reach one node.

    Installed before the replicator starts (the peer port keeps the handler it
    was given), so it sits exactly where frames enter the node.
    """

    def __init__(self, rep: RaftReplicator) -> None:
        self.groups: set[int] = set()
        self.peers: set[str] = set()  # only frames from these peers (empty: from anyone)
        self.dropped = 0
        inner = rep._on_frame

        def on_frame(peer: str, channel: int, group: int, body: bytes) -> None:
            if channel == RAFT and group in self.groups and (not self.peers or peer in self.peers):
                self.dropped += 1
                return
            inner(peer, channel, group, body)

        rep._on_frame = on_frame  # type: ignore[method-assign]


class Cluster:
    def __init__(self, root: Path, ids: tuple[str, ...] = ("a", "b", "c")) -> None:
        secret = secrets.token_bytes(32)
        addrs = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, free_ports(len(ids)), strict=True)}
        self.ids = ids
        self.reps = {nid: RaftReplicator(root / nid, node_id=nid, listen=addrs[nid], peers=addrs, secret=secret,
                                         partitions=PARTITIONS, sync=False, election_timeout_ms=400,
                                         heartbeat_interval_ms=40)
                     for nid in ids}
        self.droppers = {nid: Dropper(rep) for nid, rep in self.reps.items()}
        cfg = config_from_mapping({})
        self.cfg = cfg
        self.services = {nid: Service(cfg, rep, node_id=nid) for nid, rep in self.reps.items()}

    async def start(self) -> None:
        for rep in self.reps.values():
            await rep.start()
        await self.wait_leaders()

    async def stop(self) -> None:
        for rep in self.reps.values():
            await rep.stop()

    async def wait_leaders(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.leader(g) is not None for g in range(PARTITIONS + 1)):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("no leader for every group")

    def leader(self, group: int) -> str | None:
        for nid, rep in self.reps.items():
            if rep.is_leader(group):
                return nid
        return None

    def hold_elections(self, nid: str, groups: set[int], seconds: float) -> None:
        """Keep a node that is made to lag from deposing leaders (no PreVote)."""
        rep = self.reps[nid]

        def hold() -> None:
            for g in groups:
                grp = rep._groups.get(g)
                if grp is not None:
                    grp.hold_elections(seconds)

        rep._inbox.put(("call", hold))

    def isolate(self, nid: str, group: int) -> None:
        """Cut ``nid`` off from the other replicas of ``group``, both ways."""
        for other, dropper in self.droppers.items():
            dropper.groups.add(group)
            if other != nid:
                dropper.peers.add(nid)

    def heal(self) -> None:
        for dropper in self.droppers.values():
            dropper.groups.clear()
            dropper.peers.clear()

    def home(self, ns: str) -> int:
        return partition_of(ORG, ns, self.cfg.seed, PARTITIONS)


def fault_point(rep: RaftReplicator, before: Callable[[int, bytes], Awaitable[None]] | None = None,
                after: Callable[[int, bytes, Any], None] | None = None) -> None:
    """Run ``before(group, command)`` ahead of every proposal of ``rep`` and
    ``after(group, command, result)`` once it is answered (the real proposal in between)."""
    real = rep.propose

    async def propose(group: int, command: bytes) -> Any:
        if before is not None:
            await before(group, command)
        res = await real(group, command)
        if after is not None:
            after(group, command, res)
        return res

    rep.propose = propose  # type: ignore[method-assign]


async def until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
