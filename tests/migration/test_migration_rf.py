"""Four nodes, replication factor 3: partitions live on three of the four nodes,
any node serves any namespace, and a migration moves the data between machines."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.raft_support import Cluster
from tests.migration.test_migration import (
    NSP,
    P,
    call,
    create_ns,
    make_cluster,
    migrate,
    shard_hash,
    start_wf,
)

EMPTY = hashlib.sha256().hexdigest()


@pytest.fixture
def cluster4(tmp_path: Path):
    c = make_cluster(tmp_path / "c", "4-nodes-rf3")
    c.start()
    try:
        yield c
    finally:
        c.kill_all()


def layout(node: Any) -> dict[int, list[str]]:
    status, info = call(node, "GET", "/v1/tasks/cluster")
    assert status == 200, info
    return {p["id"]: p["replicas"] for p in info["partitions"]}


def describe(node: Any, ns: str, wid: str) -> tuple[int, Any]:
    return call(node, "GET", f"{NSP}/{ns}/workflows/{wid}")


def test_each_partition_has_three_replicas_and_every_node_serves_everything(cluster4: Cluster) -> None:
    nodes = list(cluster4.nodes.values())
    sets = layout(nodes[0])
    assert sorted(sets) == list(range(P))
    assert all(len(r) == 3 for r in sets.values()), sets
    for node in nodes[1:]:
        assert layout(node) == sets  # one layout, from the meta group
    status, info = call(nodes[0], "GET", "/v1/tasks/cluster")
    assert info["replicationFactor"] == 3
    held = {p["id"] for p in info["partitions"] if p["local"]}
    assert held == {p for p, r in sets.items() if "n1" in r}
    # Namespaces land in partitions some node does not hold: written and read through every node.
    for i in range(8):
        create_ns(nodes[i % 4], f"rf-{i}")
    for i in range(8):
        ns = f"rf-{i}"
        for j, node in enumerate(nodes):
            start_wf(node, ns, f"w-{j}")
        for node in nodes:
            for j in range(4):
                status, body = describe(node, ns, f"w-{j}")
                assert status == 200, (node.node_id, ns, body)
    status, page = call(nodes[3], "GET", NSP)
    assert status == 200
    listed = {n["namespaceInfo"]["name"] for n in page["namespaces"]}
    assert {f"rf-{i}" for i in range(8)} <= listed


def test_a_migration_moves_the_data_to_other_machines(cluster4: Cluster) -> None:
    c = cluster4
    nodes = list(c.nodes.values())
    n1 = nodes[0]
    ns = "moving"
    create_ns(n1, ns)
    for i in range(60):
        start_wf(nodes[i % 4], ns, f"w-{i}")
    sets = layout(n1)
    status, info = call(n1, "GET", "/v1/tasks/cluster")
    src = next(s["partition"] for s in info["namespaces"] if s["namespace"] == ns)
    dst = next(p for p in range(P) if set(sets[p]) != set(sets[src]))
    gains = sorted(set(sets[dst]) - set(sets[src]))  # a machine that did not hold the shard
    loses = sorted(set(sets[src]) - set(sets[dst]))  # a machine that must give it up
    assert gains and loses
    job = migrate(n1, ns, {"toPartition": dst})
    assert job["status"] == "done", job
    for node in nodes:
        for i in (0, 31, 59):
            status, body = describe(node, ns, f"w-{i}")
            assert status == 200, (node.node_id, body)
    for i in range(60, 70):
        start_wf(nodes[i % 4], ns, f"w-{i}")
    # On disk, after a clean stop: every replica of the destination holds the
    # same copy (including the machine that had none), and no replica of the
    # source keeps the range.
    time.sleep(1.0)
    for node in nodes:
        node.stop()
    digests = {nid: shard_hash(c, nid, dst, ns) for nid in sets[dst]}
    assert len(set(digests.values())) == 1 and EMPTY not in digests.values(), digests
    for nid in sets[src]:
        assert shard_hash(c, nid, src, ns) == EMPTY, nid
    for nid in loses:
        assert not (c.root / nid / "partitions" / str(dst)).exists() or shard_hash(c, nid, dst, ns) == EMPTY
