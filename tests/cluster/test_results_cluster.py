"""Waiting for a result on a node that holds no replica of the shard (3 nodes, RF 2, real processes).

The request is forwarded to a replica, which parks it and answers when it
applies the run's close: the asking node polls nothing, and the answer still
comes as soon as the run closes (SPEC §5.6 "Waiting for a result").
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hanzo_tasks.protocol.zap import Op
from hanzo_tasks.routing import partition_of

from tests.cluster.dispatch.test_dispatch import WF, RawWorker
from tests.cluster.raft_support import Cluster
from tests.cluster.test_replica_subsets import cluster_info, start

P = 4


@pytest.fixture
def cluster(tmp_path: Path):
    c = Cluster(tmp_path / "c", n=3, partitions=P, extra=["--replication-factor", "2"])
    c.start()
    try:
        yield c
    finally:
        c.kill_all()


def outsider(c: Cluster, partition: int) -> str:
    replicas = next(p["replicas"] for p in cluster_info(c.nodes["n1"])["partitions"] if p["id"] == partition)
    assert len(replicas) == 2, replicas
    (nid,) = set(c.ids) - set(replicas)
    return nid


def test_a_result_is_awaited_through_a_node_without_the_partition(cluster: Cluster) -> None:
    c = cluster
    home = partition_of("_", "default", "tasks", P)
    out = outsider(c, home)
    asked = c.nodes[out]
    replica = next(n for n in c.ids if n != out)
    worker = RawWorker(c.zap_addr(replica))
    try:
        start(c.nodes[replica], "far-1")
        task = worker.next_task(timeout=30)

        began = time.monotonic()
        status, body, _ = asked.request("GET", f"{WF}/far-1/result?wait=500ms", timeout=30)
        assert status == 202, body
        assert body["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING" and body["runId"] == task["run_id"]
        assert time.monotonic() - began >= 0.45

        answer: dict[str, Any] = {}

        def ask() -> None:
            t0 = time.monotonic()
            answer["reply"] = asked.request("GET", f"{WF}/far-1/result?wait=30s", timeout=60)
            answer["took"] = time.monotonic() - t0

        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        time.sleep(1.0)  # parked on a replica by now
        assert "reply" not in answer
        assert worker.complete(task["task_token"], {"paid": True})["status"] == 200
        thread.join(20)
        status, body, headers = answer["reply"]
        assert status == 200, body
        assert body == {"status": "WORKFLOW_EXECUTION_STATUS_COMPLETED", "runId": task["run_id"],
                        "result": {"paid": True}}
        assert answer["took"] < 10.0, answer  # the close answered it, not the 30 s wait
        assert headers["X-Tasks-Node"] == out

        # Closed before the call: every node answers at once, over HTTP and ZAP.
        for nid in c.ids:
            status, body, _ = c.nodes[nid].request("GET", f"{WF}/far-1/result?wait=0s")
            assert status == 200 and body["result"] == {"paid": True}, (nid, body)
        z = RawWorker(c.zap_addr(out), tq="other")
        try:
            r = z.call(Op.GetWorkflowResult, {"workflow_id": "far-1", "wait_ms": 1000})
            assert r["status"] == 200 and r["body"]["result"] == {"paid": True}, r
            r = z.call(Op.GetWorkflowResult, {"workflow_id": "nobody", "wait_ms": 1000})
            assert r["status"] == 404, r
        finally:
            z.close()
    finally:
        worker.close()
