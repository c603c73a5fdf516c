"""Three real ``tasksd`` processes replicating through Raft on loopback.

Faults are real signals; replicas are compared by a content hash of their
LMDB after the processes stopped.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hanzo_tasks.routing import partition_of

from tests.cluster.raft_support import Cluster

WF = "/v1/tasks/namespaces/{ns}/workflows"


@pytest.fixture
def cluster(tmp_path: Path):
    c = Cluster(tmp_path / "c", n=3, partitions=4)
    c.start()
    yield c
    c.kill_all()


def start(node, ns: str, wid: str, timeout: float = 10.0) -> tuple[int, dict]:
    return node.post(
        WF.format(ns=ns), {"workflowId": wid, "requestId": f"req-{wid}", "workflowType": {"name": "T"}},
        timeout=timeout,
    )


def start_acked(nodes, ns: str, wid: str, timeout: float = 20.0) -> dict:
    """Start with retries (same requestId) on 503, as a client would, until acknowledged."""
    deadline = time.monotonic() + timeout
    i = 0
    while time.monotonic() < deadline:
        node = nodes[i % len(nodes)]
        i += 1
        if node.proc is None:
            continue
        try:
            status, body = start(node, ns, wid)
        except OSError:
            continue
        if status == 200:
            return body
        assert status == 503, body
        time.sleep(0.1)
    raise AssertionError(f"{ns}/{wid} never acknowledged")


def wait_visible(node, ns: str, wid: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.get(f"{WF.format(ns=ns)}/{wid}")[0] == 200:
            return True
        time.sleep(0.05)
    return False


def test_writes_through_every_node_replicate_everywhere(cluster: Cluster) -> None:
    nodes = list(cluster.nodes.values())
    for i, n in enumerate(nodes):
        # A 503 (a leader hand-over right after start) is retried with the same requestId, as a client does.
        for _ in range(20):
            status, body = start(n, "default", f"via-{i}")
            if status != 503:
                break
            time.sleep(0.2)
        assert status == 200, body
        assert body["execution"]["workflowId"] == f"via-{i}"
    for n in nodes:
        for i in range(len(nodes)):
            assert wait_visible(n, "default", f"via-{i}"), f"via-{i} not on {n.data_dir.name}"
    status, info = nodes[0].get("/v1/tasks/cluster")
    assert status == 200 and info["replicator"] == "raft"
    assert info["partitionCount"] == 4
    assert [m["nodeId"] for m in info["members"]] == ["n1", "n2", "n3"]
    assert all(p["leader"] in cluster.ids for p in info["partitions"])
    status, health = nodes[1].get("/v1/tasks/cluster/health")
    assert status == 200 and health["status"] == "ok"


def _write_loop(cluster: Cluster, stop: threading.Event, acked: set[str], attempts: list[str], k: int) -> None:
    i = 0
    nodes = list(cluster.nodes.values())
    while not stop.is_set():
        wid = f"w{k}-{i}"
        i += 1
        attempts.append(wid)
        for _ in range(40):  # retry with the same requestId until some node acknowledges
            node = nodes[(i + _) % len(nodes)]
            if node.proc is None:
                continue
            try:
                status, body = start(node, "default", wid, timeout=5)
            except OSError:
                continue
            if status == 200:
                acked.add(wid)
                break
            time.sleep(0.1)


def test_leader_kill_loses_no_acknowledged_write_and_applies_none_twice(cluster: Cluster) -> None:
    group = partition_of("_", "default", "tasks", cluster.partitions)
    acked: set[str] = set()
    attempts: list[str] = []
    stop = threading.Event()
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(_write_loop, cluster, stop, acked, attempts, k) for k in range(4)]
        deadline = time.monotonic() + 20
        while len(acked) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = cluster.leader_of(group)
        assert victim is not None
        cluster.nodes[victim].kill(signal.SIGKILL)
        killed_at = time.monotonic()
        before = len(acked)
        while len(acked) < before + 100 and time.monotonic() < killed_at + 30:
            time.sleep(0.05)
        failover = time.monotonic() - killed_at
        stop.set()
        for f in futs:
            f.result()
    assert len(acked) >= before + 100, f"writes did not resume after the leader died ({failover:.1f}s)"
    new_leader = cluster.leader_of(group)
    assert new_leader not in (None, victim)

    # The killed node comes back and catches up.
    cluster.nodes[victim].start(ready=False)
    cluster.wait_ready()
    survivor = cluster.nodes[new_leader]
    for wid in acked:
        assert wait_visible(survivor, "default", wid, 5), f"acknowledged {wid} lost"
        status, body = survivor.get(f"{WF.format(ns='default')}/{wid}/executions?stale=true")
        assert status == 200, body
        assert len(body["executions"]) == 1, f"{wid} applied twice"
    for wid in list(acked)[:20]:
        assert wait_visible(cluster.nodes[victim], "default", wid, 15)
    time.sleep(1.0)  # let the last commit index reach every follower
    cluster.kill_all()
    for p, by_node in cluster.content_hashes().items():
        assert len(set(by_node.values())) == 1, f"partition {p} replicas differ: {by_node}"


def test_full_cluster_restart_loses_nothing_committed(cluster: Cluster) -> None:
    nodes = list(cluster.nodes.values())
    for k in range(1, 5):
        status, body = nodes[k % 3].post("/v1/tasks/namespaces", {"namespaceInfo": {"name": f"ns{k}"}})
        assert status == 200, body
    acked = []
    for i in range(60):
        ns = f"ns{i % 5}" if i % 5 else "default"
        start_acked(nodes[i % 3 :] + nodes[: i % 3], ns, f"r-{i}")
        acked.append((ns, f"r-{i}"))
    for n in nodes:
        n.kill(signal.SIGKILL)  # all at once
    for n in nodes:
        n.start(ready=False)
    cluster.wait_ready()
    for ns, wid in acked:
        assert wait_visible(nodes[0], ns, wid, 10), f"committed {ns}/{wid} lost"
    time.sleep(1.0)
    cluster.kill_all()
    for p, by_node in cluster.content_hashes().items():
        assert len(set(by_node.values())) == 1, f"partition {p} replicas differ"


def test_node_with_wrong_secret_cannot_join_or_inject(tmp_path: Path, cluster: Cluster) -> None:
    intruder = Cluster(tmp_path / "bad", n=1, partitions=4, secret=b"x" * 64)
    node = intruder.nodes["n1"]
    # It claims to be n3 of the real cluster, at its own peer address.
    node.args[node.args.index("--peers") + 1] = ",".join(f"{k}={v}" for k, v in cluster.peer_addrs.items())
    node.args[node.args.index("--node-id") + 1] = "n3"
    node.start(ready=False)
    try:
        time.sleep(2.0)
        assert node.get("/readyz")[0] == 503
        metrics = cluster.nodes["n1"].request("GET", "/metrics")[1]
        rejected = [
            line for line in metrics.splitlines()
            if line.startswith("tasks_peer_frames_rejected_total{") and not line.endswith(" 0.0")
        ]
        assert rejected, "the cluster did not reject the intruder's frames"
        status, body = start(cluster.nodes["n1"], "default", "after-intruder")
        assert status == 200, body
    finally:
        node.kill()


def test_meta_leader_kill_elects_a_new_one_and_service_continues(cluster: Cluster) -> None:
    victim = cluster.meta_leader()
    assert victim is not None
    cluster.nodes[victim].kill(signal.SIGKILL)
    survivors = [n for nid, n in cluster.nodes.items() if nid != victim]
    deadline = time.monotonic() + 15
    new = None
    while time.monotonic() < deadline:
        new = cluster.meta_leader()
        if new not in (None, victim):
            break
        time.sleep(0.1)
    assert new not in (None, victim)
    start_acked(survivors, "default", "after-meta-kill")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status, health = survivors[0].get("/v1/tasks/cluster/health")
        if status == 200:
            break
        time.sleep(0.2)
    assert status == 200, health
    status, info = survivors[0].get("/v1/tasks/cluster")
    states = {m["nodeId"]: m["state"] for m in info["members"]}
    assert states[victim] == "dead" and all(v == "alive" for k, v in states.items() if k != victim)


def test_partition_count_is_fixed_at_bootstrap(cluster: Cluster) -> None:
    node = cluster.nodes["n3"]
    node.stop()
    args = list(node.args)
    args[args.index("--partitions") + 1] = "8"
    node.args = args
    try:
        node.start(timeout=15, ready=False)
    except RuntimeError as e:
        assert "exited 2" in str(e) and "4 partitions" in str(e), str(e)
    else:
        raise AssertionError("a node configured with another partition count started")


def _metric(node, name: str) -> float:
    text = node.request("GET", "/metrics")[1]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_lagging_node_catches_up_from_a_compacted_log(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "c", n=3, partitions=2, extra=["--raft-snapshot-every", "20"])
    c.start()
    try:
        nodes = list(c.nodes.values())
        lagging = c.nodes["n3"]
        lagging.kill(signal.SIGKILL)
        live = nodes[:2]
        for i in range(150):
            start_acked(live, "default", f"c-{i}")
        deadline = time.monotonic() + 20
        while _metric(live[0], 'tasks_raft_snapshots_total{direction="taken"') < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _metric(live[0], 'tasks_raft_snapshots_total{direction="taken"') >= 1, "no compaction happened"
        lagging.start(ready=False)
        c.wait_ready()
        for i in (0, 75, 149):
            assert wait_visible(lagging, "default", f"c-{i}", 20), f"c-{i} missing on the restarted node"
        assert _metric(lagging, 'tasks_raft_snapshots_total{direction="installed"') >= 1
        start_acked(nodes, "default", "after-install")
        assert wait_visible(lagging, "default", "after-install", 10)
        time.sleep(1.0)
        c.kill_all()
        for p, by_node in c.content_hashes().items():
            assert len(set(by_node.values())) == 1, f"partition {p} replicas differ: {by_node}"
    finally:
        c.kill_all()
