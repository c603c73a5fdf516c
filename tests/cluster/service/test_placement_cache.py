"""Placement on the request path (issue 14): a shard's HRW partition is
computed once, not per request, while a migration's pin is still followed the
moment it applies, and the pins in the meta group are taken at start.

One real Raft node (real sockets, real LMDB) with 16 partitions, so that
placement takes part: a local node has a single partition and hashes nothing.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hanzo_tasks.cluster.config import config_from_mapping
from hanzo_tasks.cluster.service import Service
from hanzo_tasks.replication.raft.replicator import RaftReplicator
from hanzo_tasks.routing import hrw, partition_of

from tests.cluster.raft_support import free_ports

ORG = "_"
PARTITIONS = 16
META = PARTITIONS


class OneNode:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.addr = f"127.0.0.1:{free_ports(1)[0]}"
        self.secret = secrets.token_bytes(32)
        self.cfg = config_from_mapping({})
        self.rep: RaftReplicator | None = None
        self.svc: Service | None = None

    async def start(self) -> Service:
        rep = RaftReplicator(self.root, node_id="a", listen=self.addr, peers={"a": self.addr},
                             secret=self.secret, partitions=PARTITIONS, sync=False,
                             election_timeout_ms=300, heartbeat_interval_ms=30)
        await rep.start()
        for _ in range(400):
            if all(rep.is_leader(g) for g in range(PARTITIONS + 1)):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the node does not lead every group")
        self.rep, self.svc = rep, Service(self.cfg, rep, node_id="a")
        return self.svc

    async def stop(self) -> None:
        if self.rep is not None:
            await self.rep.stop()
        self.rep = self.svc = None

    async def meta(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.rep is not None
        res = await self.rep.propose(META, msgpack.packb(cmd, use_bin_type=True))
        assert res.get("ok"), res
        return res

    async def flip(self, job_id: str, ns: str, src: int, dst: int) -> int:
        """Record a migration of ``ns`` and pin it to ``dst`` (what the coordinator
        commits at the flip; no data is copied: only routing is under test here)."""
        job = {"id": job_id, "org": ORG, "namespace": ns, "fromPartition": src, "toPartition": dst,
               "status": "copying"}
        await self.meta({"op": "mig.job", "job": job})
        res = await self.meta({"op": "mig.pin", "id": job_id})
        await self.meta({"op": "mig.update", "id": job_id, "status": "done"})
        return res["job"]["placementEpoch"]


def run(root: Path, scenario: Callable[[OneNode], Awaitable[None]]) -> None:
    """``scenario`` on a fresh node under ``root``, stopped whatever happens."""

    async def main() -> None:
        n = OneNode(root)
        try:
            await scenario(n)
        finally:
            await n.stop()

    asyncio.run(main())


def start_body(wid: str) -> dict[str, Any]:
    return {"workflowId": wid, "requestId": wid, "workflowType": {"name": "T"}, "taskQueue": {"name": "q"}}


def test_repeated_starts_of_one_shard_hash_its_placement_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = f"cache-{secrets.token_hex(4)}"  # a shard no earlier test has routed
    shard_hashes: list[str] = []
    real = hrw.score

    def counting(org: str, n: str, tq: str, seed: str, candidate: str) -> int:
        if (org, n, tq) == (ORG, ns, ""):  # the shard's partition, not a task queue's owner
            shard_hashes.append(candidate)
        return real(org, n, tq, seed, candidate)

    monkeypatch.setattr(hrw, "score", counting)

    async def scenario(node: OneNode) -> None:
        svc = await node.start()
        await svc.namespaces.register_namespace_in(ORG, ns, {})
        for i in range(20):
            out = await svc.workflows.start_workflow(ORG, ns, start_body(f"w{i}"))
            assert out["started"] is True, out
        # Once, for all 16 partitions: per request it was 16 hashes, three times a start.
        assert sorted(shard_hashes, key=int) == [str(p) for p in range(PARTITIONS)]
        assert svc.partition(ORG, ns) == partition_of.__wrapped__(ORG, ns, svc.cfg.seed, PARTITIONS)

    run(tmp_path / "a", scenario)


def test_a_pin_is_followed_at_once_and_never_undone_by_an_older_one(tmp_path: Path) -> None:
    async def scenario(node: OneNode) -> None:
        svc = await node.start()
        ns = f"pinned-{secrets.token_hex(4)}"
        home = partition_of(ORG, ns, svc.cfg.seed, PARTITIONS)
        await svc.namespaces.register_namespace_in(ORG, ns, {})
        await svc.workflows.start_workflow(ORG, ns, start_body("before"))
        assert svc.partition(ORG, ns) == home  # the HRW partition, now remembered

        away = (home + 1) % PARTITIONS
        assert await node.flip("j1", ns, home, away) == 1
        # The pin's apply is delivered before its proposal is answered: no request
        # that starts after the flip commits is routed to the old partition.
        assert svc.partition(ORG, ns) == away
        assert svc.holds(ORG, ns)
        assert svc.pins[(ORG, ns)] == {"partition": away, "epoch": 1}

        assert await node.flip("j2", ns, away, home) == 2
        assert svc.partition(ORG, ns) == home

        # A pin seen late (or twice: read from the meta store and notified) is
        # older than the one followed: it must not move the shard back.
        svc._on_apply(META, 0, {"pin": [ORG, ns, away, 1]})
        assert svc.partition(ORG, ns) == home
        await svc.meta_barrier()  # re-reads the meta store's pins
        assert svc.pins[(ORG, ns)] == {"partition": home, "epoch": 2}

    run(tmp_path / "a", scenario)


def test_pins_in_the_meta_group_are_followed_after_a_restart(tmp_path: Path) -> None:
    async def scenario(node: OneNode) -> None:
        svc = await node.start()
        ns = f"restart-{secrets.token_hex(4)}"
        home = partition_of(ORG, ns, svc.cfg.seed, PARTITIONS)
        away = (home + 3) % PARTITIONS
        await node.flip("j1", ns, home, away)
        await node.stop()

        svc = await node.start()  # a new Service over the same data: pins come from the meta store
        assert svc.partition(ORG, ns) == away
        assert svc.pins[(ORG, ns)] == {"partition": away, "epoch": 1}

    run(tmp_path / "a", scenario)
