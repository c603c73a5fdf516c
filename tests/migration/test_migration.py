"""Namespace migration between partitions on real clusters (SPEC §4.10): three
nodes (every node holds every partition), and four nodes with replication
factor 3, where a move takes the shard to other machines."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hanzo_tasks.migration import range_hash
from hanzo_tasks.routing import partition_of
from hanzo_tasks.shard import PartitionStore

from tests.cluster.raft_support import Cluster

NSP = "/v1/tasks/namespaces"
P = 4


TOPOLOGIES = {"3-nodes": (3, []), "4-nodes-rf3": (4, ["--replication-factor", "3"])}


def make_cluster(root: Path, topology: str, extra: list[str] | None = None) -> Cluster:
    n, more = TOPOLOGIES[topology]
    return Cluster(root, n=n, partitions=P, extra=[*more, *(extra or [])])


def holders(c: Cluster, partition: int) -> list[str]:
    """The nodes holding a partition (the layout is fixed while no member leaves)."""
    layout = getattr(c, "_layout", None)
    if layout is None:
        for node in c.nodes.values():
            status, body = node.get("/v1/tasks/cluster") if node.proc is not None else (0, None)
            if status == 200:
                layout = {p["id"]: sorted(p["replicas"]) for p in body["partitions"]}
                break
        assert layout is not None, "no node answered"
        c._layout = layout  # type: ignore[attr-defined]
    return layout[partition]


def moved_to(c: Cluster, src: int, step: int = 1) -> int:
    """A destination for a shard of ``src``: ``step`` partitions on, or the next one
    held by other machines when replicas are a subset (so data changes hands)."""
    for k in range(P - 1):
        p = (src + step + k) % P
        if p != src and set(holders(c, p)) != set(holders(c, src)):
            return p
    return (src + step) % P if (src + step) % P != src else (src + 1) % P


@pytest.fixture(params=list(TOPOLOGIES))
def cluster(tmp_path: Path, request: Any):
    c = make_cluster(tmp_path / "c", request.param)
    c.start()
    try:
        yield c
    finally:
        c.kill_all()


def call(node: Any, method: str, path: str, body: Any = None, tries: int = 100) -> tuple[int, Any]:
    """A request retried while the cluster answers 503 (elections, fences)."""
    for _ in range(tries):
        status, payload, _ = node.request(method, path, body)
        if status != 503:
            return status, payload
        time.sleep(0.1)
    return status, payload


def create_ns(node: Any, ns: str) -> None:
    status, body = call(node, "POST", NSP, {"name": ns})
    # 409 only after a retried 503 (an unknown outcome that did commit): every test uses fresh names.
    assert status == 200 or body.get("code") == "already_exists", body


def start_wf(node: Any, ns: str, wid: str) -> dict[str, Any]:
    for _ in range(50):  # a 429 (the namespace's rate limit, under load) is retried, as a client does
        status, body = call(node, "POST", f"{NSP}/{ns}/workflows",
                            {"workflowId": wid, "requestId": f"r-{wid}", "workflowType": {"name": "Job"},
                             "taskQueue": {"name": "q"}})
        if status != 429:
            break
        time.sleep(0.1)
    assert status == 200, body
    return body


def migrate(node: Any, ns: str, body: dict[str, Any], timeout: float = 90.0) -> dict[str, Any]:
    status, job = call(node, "POST", f"{NSP}/{ns}/migrate", body)
    assert status == 202, job
    deadline = time.monotonic() + timeout
    while job["status"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
        status, got = call(node, "GET", f"/v1/tasks/migrations/{job['id']}")
        if status == 200:
            job = got
    assert job["status"] in ("done", "failed"), job
    return job


def home(ns: str) -> int:
    return partition_of("_", ns, "tasks", P)


def shard_hash(c: Cluster, nid: str, partition: int, ns: str) -> str:
    store = PartitionStore(c.root / nid / "partitions" / str(partition), sync=False)
    try:
        with store.read() as txn:
            return range_hash(txn, "_", ns)
    finally:
        store.close()


def test_migrate_moves_every_record_and_routes_writes_to_the_destination(cluster: Cluster) -> None:
    c = cluster
    n1 = c.nodes["n1"]
    create_ns(n1, "mv")
    for i in range(150):
        start_wf(c.nodes[c.ids[i % len(c.ids)]], "mv", f"w-{i}")
    src = home("mv")
    dst = moved_to(c, src)
    job = migrate(n1, "mv", {"toPartition": dst})
    assert job["status"] == "done", job
    assert job["fromPartition"] == src and job["toPartition"] == dst and job["bytes"] > 0
    assert job["placementEpoch"] == 1 and job["finishedAt"] is not None
    for nid in c.ids:  # every record readable through every node, the namespace listed once
        node = c.nodes[nid]
        for i in range(0, 150, 7):
            status, d = call(node, "GET", f"{NSP}/mv/workflows/w-{i}")
            assert status == 200, d
        status, body = call(node, "GET", NSP)
        assert [n["namespaceInfo"]["name"] for n in body["namespaces"]].count("mv") == 1
    start_wf(c.nodes["n2"], "mv", "after")  # writes go to the new partition
    status, cl = call(n1, "GET", "/v1/tasks/cluster")
    assert status == 200
    status, jobs = call(n1, "GET", "/v1/tasks/migrations")
    assert [j["id"] for j in jobs["jobs"]] == [job["id"]]
    src_nodes, dst_nodes = holders(c, src), holders(c, dst)
    for n in c.nodes.values():
        n.stop()
    hashes = {nid: shard_hash(c, nid, dst, "mv") for nid in dst_nodes}
    assert len(set(hashes.values())) == 1, hashes  # every destination replica identical
    empty = shard_hash(c, src_nodes[0], src, "never-existed")
    assert empty not in hashes.values()
    assert {shard_hash(c, nid, src, "mv") for nid in src_nodes} == {empty}  # source range collected


def test_writes_and_a_schedule_keep_going_through_a_migration(cluster: Cluster) -> None:
    c = cluster
    n1 = c.nodes["n1"]
    create_ns(n1, "live")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:  # the namespace holds 10,000 workflows (issue 6)
        list(pool.map(lambda i: start_wf(c.nodes[c.ids[i % len(c.ids)]], "live", f"pre-{i}"), range(10_000)))
    status, body = call(n1, "POST", f"{NSP}/live/schedules", {
        "scheduleId": "tick", "spec": {"interval": [{"interval": "1s"}]},
        "action": {"workflowType": {"name": "Tick"}, "taskQueue": "t"},
        "policies": {"overlapPolicy": "ALLOW_ALL"}})
    assert status == 200, body
    acked: list[str] = []
    stop = threading.Event()

    def writer(k: int) -> None:
        node = c.nodes[c.ids[k % len(c.ids)]]
        i = 0
        while not stop.is_set():
            wid = f"live-{k}-{i}"
            status, body = call(node, "POST", f"{NSP}/live/workflows",
                                {"workflowId": wid, "requestId": f"r-{wid}", "workflowType": {"name": "Job"},
                                 "taskQueue": {"name": "q"}})
            if status == 200:
                acked.append(wid)
            i += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        src = home("live")
        job = migrate(n1, "live", {"toPartition": moved_to(c, src, 2)})
        assert job["status"] == "done", job["error"]
        time.sleep(2.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert len(acked) > 50
    reader = c.nodes["n3"]
    status, body = call(reader, "GET", f"{NSP}/live/workflows?pageSize=1000&query=WorkflowType%3D%27Job%27")
    seen: list[str] = []
    while True:
        assert status == 200, body
        seen += [x["execution"]["workflowId"] for x in body["executions"]]
        if not body.get("nextPageToken"):
            break
        status, body = call(reader, "GET", f"{NSP}/live/workflows?pageSize=1000&query=WorkflowType%3D%27Job%27"
                                           f"&nextPageToken={body['nextPageToken']}")
    assert len(seen) == len(set(seen)), "a workflow was applied twice"
    assert {f"pre-{i}" for i in range(10_000)} <= set(seen)
    missing = set(acked) - set(seen)
    assert not missing, sorted(missing)[:10]
    status, body = call(reader, "GET", f"{NSP}/live/workflows?pageSize=1000&query=WorkflowType%3D%27Tick%27")
    ids = sorted(x["execution"]["workflowId"] for x in body["executions"])
    assert len(ids) == len(set(ids)), "a schedule slot fired twice"
    from hanzo_tasks.protocol.timefmt import parse_time

    slots = sorted(parse_time(i.split("tick-", 1)[1]) // 1000 for i in ids)
    assert slots == list(range(slots[0], slots[0] + len(slots))), slots  # no slot skipped


def test_back_and_forth_ten_times_ends_identical(cluster: Cluster) -> None:
    c = cluster
    n1 = c.nodes["n1"]
    create_ns(n1, "ping")
    for i in range(40):
        start_wf(n1, "ping", f"p-{i}")
    src = home("ping")
    other = moved_to(c, src, 3)
    src_nodes, other_nodes = holders(c, src), holders(c, other)
    for n in c.nodes.values():  # the never-moved copy: the shard's bytes before any move
        n.stop()
    before = shard_hash(c, src_nodes[0], src, "ping")
    assert before != shard_hash(c, src_nodes[0], src, "never-existed")
    c.start()
    for k in range(10):
        job = migrate(c.nodes[c.ids[k % len(c.ids)]], "ping", {"toPartition": other if k % 2 == 0 else src})
        assert job["status"] == "done", job["error"]
        assert job["placementEpoch"] == k + 1
    status, d = call(c.nodes["n2"], "GET", f"{NSP}/ping/workflows/p-7")
    assert status == 200, d
    for n in c.nodes.values():
        n.stop()
    assert {shard_hash(c, nid, src, "ping") for nid in src_nodes} == {before}
    empty = shard_hash(c, src_nodes[0], src, "never-existed")
    assert {shard_hash(c, nid, other, "ping") for nid in other_nodes} == {empty}


def test_tasksctl_migrate_to_node_waits_with_progress(cluster: Cluster) -> None:
    import subprocess
    import sys

    c = cluster
    n1 = c.nodes["n1"]
    create_ns(n1, "ctl")
    for i in range(30):
        start_wf(n1, "ctl", f"c-{i}")
    src = home("ctl")
    deadline = time.monotonic() + 30  # leaders settle on their preferred nodes first
    while time.monotonic() < deadline:
        status, info = call(n1, "GET", "/v1/tasks/cluster")
        if all(p["leader"] == p["preferredLeader"] for p in info["partitions"]):
            break
        time.sleep(0.2)
    target = next(nid for nid in c.ids if c.leader_of(src) != nid and
                  any(c.leader_of(p) == nid for p in range(P)))
    proc = subprocess.run(
        [sys.executable, "-m", "hanzo_tasks.ctl", "--url", n1.url, "migrate", "ctl", "--to", target, "--wait",
         "--output", "json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stderr and "bytes=" in proc.stderr  # the progress lines
    import json

    job = json.loads(proc.stdout)
    assert job["status"] == "done" and job["to"] == target and c.leader_of(job["toPartition"]) == target
    status, d = call(c.nodes[target], "GET", f"{NSP}/ctl/workflows/c-3")
    assert status == 200, d


def test_a_node_that_missed_the_flip_reads_the_new_home(cluster: Cluster) -> None:
    """A node down during a migration restarts with the old placement in its meta
    replica: its reads must follow the pin (never a 404 from the collected
    source range, never a stale copy) and see writes made after the move."""
    c = cluster
    create_ns(c.nodes["n1"], "late")
    for i in range(20):
        start_wf(c.nodes["n1"], "late", f"l-{i}")
    late = c.ids[-1]
    c.nodes[late].kill()
    src = home("late")
    job = migrate(c.nodes["n1"], "late", {"toPartition": moved_to(c, src)})
    assert job["status"] == "done", job["error"]
    start_wf(c.nodes["n1"], "late", "after-move")
    c.nodes[late].start(ready=False)
    deadline = time.monotonic() + 60
    answers: list[tuple[str, int]] = []
    while time.monotonic() < deadline and len(answers) < 30:  # from the first moment it answers
        for wid in ("after-move", "l-0", "l-19"):
            try:
                status, body, _ = c.nodes[late].request("GET", f"{NSP}/late/workflows/{wid}")
            except OSError:
                time.sleep(0.02)
                continue
            if status != 503:
                answers.append((wid, status))
                assert status == 200, (wid, body)
