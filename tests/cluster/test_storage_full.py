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
