"""Regressions of the bugs the chaos suite found (``python -m chaos run
--scenario disk-full --duration 20 --seed 1``), all fixed: a 507 was not a
refusal (the write had been proposed), cluster health never said storage_full,
and a full replica skipped committed entries (pysyncobj counted them applied)
instead of stopping until it has room.

One three-node cluster, n1 started with a 1 MiB LMDB map (``storage.map_size``
= ``storage.map_size_max`` = 1 MiB); every write carries a 16 KB input, so
n1's partitions fill within a few dozen writes while n2 and n3 have room.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from chaos.hashes import replica_digests
from chaos.nodes import NodeOptions
from chaos.testbed import Testbed

NS = "/v1/tasks/namespaces"
TINY = ["--storage-map-size", "1MiB", "--storage-map-size-max", "1MiB"]
PAD = "x" * 16_000


def _full(root: Path) -> bool:
    sizes = [p.stat().st_size for p in (root / "n1" / "partitions").glob("[0-9]*/data.mdb")]
    return bool(sizes) and max(sizes) >= 0.9 * (1 << 20)


async def _scenario(root: Path) -> dict[str, Any]:
    tb = Testbed(root, 3, partitions=2, raft_args=["--raft-election-timeout", "300ms",
                                                   "--raft-heartbeat-interval", "50ms"])
    facts: dict[str, Any] = {"health_reasons": [], "refused_but_applied": [], "refused": []}
    try:
        await tb.start({"n1": NodeOptions(extra_args=list(TINY))})
        n1, n2 = tb.by_id["n1"], tb.by_id["n2"]
        url1, url2 = n1.spec.http_url, n2.spec.http_url
        rep = await tb.api.post(url2, NS, {"namespaceInfo": {"name": "big"}})
        assert rep.ok, rep.brief()
        # 1. Fill n1 through n2 (n1 only replicates).
        i = 0
        deadline = time.monotonic() + 60
        while not _full(root) and time.monotonic() < deadline:
            i += 1
            body = {"workflowId": f"w-{i}", "requestId": f"r-{i}", "workflowType": {"name": "Big"}, "input": PAD}
            await tb.api.post(url2, f"{NS}/big/workflows", body)
        assert _full(root), "n1's map never filled"
        # 2. Writes sent to the full node: 507, "refused" (SPEC §10: the leader
        #    refuses a write before proposing it when its own storage is full).
        for k in range(5):
            wid = f"via-n1-{k}"
            body = {"workflowId": wid, "requestId": f"rq-{wid}", "workflowType": {"name": "Big"}, "input": PAD}
            rep = await tb.api.post(url1, f"{NS}/big/workflows", body)
            if rep.status == 507:
                facts["refused"].append(wid)
                seen = await tb.api.get(url2, f"{NS}/big/workflows/{wid}")
                if seen.ok:
                    facts["refused_but_applied"].append(wid)
        # 3. What n1 says about itself (SPEC §4.9: reasons include storage_full).
        for _ in range(6):
            h = await tb.health(n1)
            facts["health_reasons"] += [r.get("reason") for r in (h or {}).get("reasons", [])]
            await asyncio.sleep(0.5)
        # 4. More writes that n1 cannot apply, then n1 restarts with a normal map.
        for j in range(10):
            body = {"workflowId": f"after-{j}", "requestId": f"ra-{j}", "workflowType": {"name": "Big"}, "input": PAD}
            await tb.api.post(url2, f"{NS}/big/workflows", body)
        await asyncio.to_thread(n1.terminate, 30.0)
        await tb.restart(n1)
        assert not await tb.wait_ready(60), "n1 not ready after restarting with a normal map"
        facts["converged"] = (await tb.wait_converged(60)).get("converged")
        await tb.stop_clean()
        facts["digests"] = replica_digests(root, tb.ids, tb.partitions)
    finally:
        await tb.close()
    return facts


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return asyncio.run(_scenario(tmp_path_factory.mktemp("disk-full")))


def test_a_write_refused_with_507_is_not_applied(facts: dict[str, Any]) -> None:
    assert facts["refused"], "no write was refused: nothing to check"
    assert facts["refused_but_applied"] == []


def test_full_node_reports_storage_full_in_cluster_health(facts: dict[str, Any]) -> None:
    assert "storage_full" in facts["health_reasons"]


def test_full_replica_catches_up_after_restart_with_a_normal_map(facts: dict[str, Any]) -> None:
    assert facts["converged"], "the replicas never reported equal applied indexes"
    for p, by_node in facts["digests"].items():
        hashes = {n: d.get("hash") for n, d in by_node.items()}
        shape = {n: (d.get("applied"), d.get("keys")) for n, d in by_node.items()}
        assert len(set(hashes.values())) == 1, f"partition {p}: (applied, keys) per replica {shape}"
