"""Balanced partition leadership and timers that follow failover (real processes)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from hanzo_tasks.routing import partition_of, preferred_leaders

from tests.cluster.raft_support import Cluster
from tests.cluster.test_raft_cluster import start_acked


@pytest.fixture
def cluster16(tmp_path: Path):
    c = Cluster(tmp_path / "c", n=3, partitions=16)
    c.start()
    yield c
    c.kill_all()


def leader_counts(c: Cluster) -> Counter:
    for n in c.nodes.values():
        if n.proc is None:
            continue
        status, body = n.get("/v1/tasks/cluster")
        if status == 200:
            return Counter(p["leader"] for p in body["partitions"])
    return Counter()


def wait_balanced(c: Cluster, timeout: float = 10.0) -> Counter:
    deadline = time.monotonic() + timeout
    counts: Counter = Counter()
    while time.monotonic() < deadline:
        counts = leader_counts(c)
        if sorted(counts.values()) == [5, 5, 6] and set(counts) == set(c.ids):
            return counts
        time.sleep(0.2)
    raise AssertionError(f"leaders not balanced 5/5/6 within {timeout}s: {dict(counts)}")


def test_leaders_balance_at_start_and_after_a_node_returns(cluster16: Cluster) -> None:
    wait_balanced(cluster16)
    status, body = cluster16.nodes["n1"].get("/v1/tasks/cluster")
    assert status == 200
    want = preferred_leaders(16, ["n1", "n2", "n3"])
    assert [p["preferredLeader"] for p in body["partitions"]] == want
    victim = cluster16.nodes["n2"]
    victim.kill(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "n2" in leader_counts(cluster16):
        time.sleep(0.2)
    assert "n2" not in leader_counts(cluster16)
    victim.start(ready=False)
    cluster16.wait_ready()
    wait_balanced(cluster16)


def test_sigterm_hands_over_leadership_first(cluster16: Cluster) -> None:
    wait_balanced(cluster16)
    node = cluster16.nodes["n1"]
    assert node.stop() == 0
    counts = leader_counts(cluster16)
    assert "n1" not in counts and sum(counts.values()) == 16, dict(counts)
    others = [cluster16.nodes["n2"], cluster16.nodes["n3"]]
    start_acked(others, "default", "after-sigterm", timeout=5)


def test_schedule_fires_once_per_second_across_five_leader_kills(cluster16: Cluster) -> None:
    wait_balanced(cluster16)
    nodes = list(cluster16.nodes.values())
    sid = "tick"
    status, body = nodes[0].post(
        "/v1/tasks/namespaces/default/schedules",
        {"scheduleId": sid, "spec": {"interval": [{"interval": "1s"}]},
         "action": {"workflowType": {"name": "Tick"}}, "policies": {"overlapPolicy": "ALLOW_ALL"}},
    )
    assert status == 200, body
    group = partition_of("_", "default", "tasks", 16)
    for _ in range(5):
        time.sleep(1.5)
        victim = cluster16.leader_of(group)
        assert victim is not None
        cluster16.nodes[victim].kill(signal.SIGKILL)
        time.sleep(1.5)
        cluster16.nodes[victim].start(ready=False)
    cluster16.wait_ready()
    time.sleep(3.0)
    reader = next(n for n in nodes if n.proc is not None)
    ids: list[str] = []
    token = ""
    while True:
        status, page = reader.get(
            "/v1/tasks/namespaces/default/workflows?pageSize=1000&query="
            + quote("WorkflowType = 'Tick'") + "&nextPageToken=" + quote(token)
        )
        assert status == 200, page
        ids += [r["execution"]["workflowId"] for r in page["executions"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert len(ids) == len(set(ids)), "a nominal second fired twice"
    seconds = sorted(int(datetime.strptime(w[len(sid) + 1:], "%Y-%m-%dT%H:%M:%SZ").timestamp()) for w in ids)
    assert len(seconds) >= 12, seconds
    missing = sorted(set(range(seconds[0], seconds[-1] + 1)) - set(seconds))
    assert not missing, f"slots skipped within the catch-up window: {missing}"


def test_cluster_json_placement_agrees_with_the_router(cluster16: Cluster) -> None:
    wait_balanced(cluster16)
    nodes = list(cluster16.nodes.values())
    names = [f"team-{i}" for i in range(24)]
    for i, ns in enumerate(names):
        for _ in range(50):  # 503 = outcome unknown (e.g. a leadership move): retry
            status, body = nodes[i % 3].post("/v1/tasks/namespaces", {"namespaceInfo": {"name": ns}})
            if status != 503:
                break
            time.sleep(0.1)
        assert status == 200 or (status == 409 and body["code"] == "already_exists"), body
    deadline = time.monotonic() + 10
    seen: dict[str, int] = {}
    while time.monotonic() < deadline:
        status, body = nodes[2].get("/v1/tasks/cluster?pageSize=1000")
        assert status == 200
        seen = {n["namespace"]: n["partition"] for n in body["namespaces"]}
        if set(names) <= set(seen):
            break
        time.sleep(0.2)
    for ns in names:
        assert seen.get(ns) == partition_of("_", ns, "tasks", 16), ns
    shard_counts = Counter(seen.values())
    assert {p["id"]: p["shards"] for p in body["partitions"] if p["shards"]} == dict(shard_counts)
    assert body["membershipEpoch"] >= 1
    assert all(m["state"] == "alive" for m in body["members"])
