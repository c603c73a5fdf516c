"""A full store refuses writes with 507 and keeps everything it acknowledged."""

from __future__ import annotations

WF = "/v1/tasks/namespaces/default/workflows"


def test_full_map_answers_507_and_keeps_acknowledged_writes(node_factory) -> None:
    node = node_factory(
        "n1",
        ["--storage-map-size", "1MiB", "--storage-map-size-max", "2MiB", "--storage-reserve-disk", "0"],
    )
    big = "x" * 150_000
    acked = []
    last = None
    for i in range(40):
        status, body = node.post(WF, {"workflowId": f"big-{i}", "workflowType": {"name": "Big"}, "input": big})
        last = (status, body)
        if status != 200:
            break
        acked.append(f"big-{i}")
    status, body = last
    assert status == 507, last
    assert body["code"] == "storage_full"
    assert acked, "the map must hold a few runs before it fills up"
    # Reads keep working and every acknowledged run is there, whole.
    for wid in acked:
        s, b = node.get(f"{WF}/{wid}")
        assert s == 200 and b["workflowExecutionInfo"]["input"] == big
    # The refused write left nothing behind.
    refused = f"big-{len(acked)}"
    assert node.get(f"{WF}/{refused}")[0] == 404
    # Small writes that still fit are served; the node did not crash.
    assert node.get("/healthz")[0] == 200
    assert "tasks_storage_full_total 1.0" in node.request("GET", "/metrics")[1]


def _leader_seen_by(node, partition: int) -> str | None:
    status, body = node.get("/v1/tasks/cluster")
    if status != 200:
        return None
    return next((p["leader"] for p in body["partitions"] if p["id"] == partition), None)


def _stalled(node) -> bool:
    status, body = node.get("/v1/tasks/cluster/health")
    return status == 503 and {"group": "partition:0", "reason": "storage_full"} in body.get("reasons", [])


def test_a_leader_that_fills_up_hands_its_partition_over(tmp_path) -> None:
    """Issue 23, defect 10, on three real nodes: the preferred leader of the one
    partition has a small map. Once it cannot apply, it hands leadership over
    (it keeps replicating), every node, itself included, reports the new leader,
    and writes go on."""
    import time

    from hanzo_tasks.routing import preferred_leaders

    from tests.cluster.raft_support import Cluster

    c = Cluster(tmp_path / "c", n=3, partitions=1)
    small = preferred_leaders(1, c.ids)[0]
    c.nodes[small].args += ["--storage-map-size", "1MiB", "--storage-map-size-max", "2MiB"]
    others = [c.nodes[n] for n in c.ids if n != small]
    try:
        c.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _leader_seen_by(c.nodes[small], 0) != small:
            time.sleep(0.1)  # the leader balancer moves the partition to its preferred leader
        assert _leader_seen_by(c.nodes[small], 0) == small
        big = "x" * 150_000
        for i in range(60):
            if _stalled(c.nodes[small]):
                break
            others[i % 2].post(WF, {"workflowId": f"big-{i}", "workflowType": {"name": "Big"}, "input": big},
                               timeout=15)
        assert _stalled(c.nodes[small]), "the small replica never filled up"
        deadline = time.monotonic() + 10
        views: dict[str, str | None] = {}
        while time.monotonic() < deadline:
            views = {nid: _leader_seen_by(n, 0) for nid, n in c.nodes.items()}
            if len(set(views.values())) == 1 and views[small] not in (None, small):
                break
            time.sleep(0.1)
        new = views[small]
        assert new not in (None, small) and set(views.values()) == {new}, views
        assert c.nodes[new].post(WF, {"workflowId": "after", "workflowType": {"name": "T"}})[0] == 200
        time.sleep(1.5)  # and it stays so: the balancer's hand-backs are refused while it cannot apply
        assert {_leader_seen_by(n, 0) for n in c.nodes.values()} == {new}
    finally:
        c.kill_all()
