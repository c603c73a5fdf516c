"""Dispatch relayed to the owner of a task queue (SPEC §5.7), on a real 3-node cluster.

Workers connect to different nodes; only the owner of ``(org, ns, taskQueue)``
leases and pushes, so every task is leased exactly once (one ``wt.start``
applied per task, none wasted on a lost race) and reaches workers on every node.
Queries asked on any node reach the worker holding the run, wherever it is
connected.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.zap import Op

from tests.cluster.dispatch.test_dispatch import WF, RawWorker
from tests.cluster.raft_support import Cluster


@pytest.fixture
def cluster(tmp_path: Path):
    c = Cluster(tmp_path / "c", n=3, partitions=4)
    c.start()
    try:
        yield c
    finally:
        c.kill_all()


def applied(node: Any, op: str) -> float:
    status, text, _ = node.request("GET", "/metrics")
    assert status == 200
    m = re.search(rf'^tasks_commands_applied_total\{{op="{re.escape(op)}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def start(node: Any, wid: str, tq: str = "q") -> None:
    for _ in range(100):
        status, body = node.post(WF, {"workflowId": wid, "requestId": f"r-{wid}",
                                      "workflowType": {"name": "Job"}, "taskQueue": {"name": tq}})
        if status == 200:
            return
        assert status == 503, body
        time.sleep(0.1)
    raise AssertionError(f"could not start {wid}")


def test_each_task_is_leased_once_and_reaches_workers_on_every_node(cluster: Cluster) -> None:
    c = cluster
    workers = {nid: RawWorker(c.zap_addr(nid), slots=2) for nid in c.ids}
    try:
        time.sleep(1.0)  # relayed subscriptions reach the owner
        nodes = list(c.nodes.values())
        n = 30
        for i in range(n):
            start(nodes[i % 3], f"t-{i}")
        got: dict[str, int] = {nid: 0 for nid in c.ids}
        done: set[str] = set()
        deadline = time.monotonic() + 60
        while len(done) < n and time.monotonic() < deadline:
            for nid, w in workers.items():
                try:
                    task = w.next_task(timeout=0.2)
                except (TimeoutError, OSError):
                    continue
                got[nid] += 1
                r = w.complete(task["task_token"], task["workflow_id"])
                assert r["status"] == 200, r
                done.add(task["workflow_id"])
        assert len(done) == n, sorted({f"t-{i}" for i in range(n)} - done)
        assert all(v > 0 for v in got.values()), got  # pushes reached workers on every node
        # Every node applies every partition's log: count the leases proposed cluster-wide.
        # nodes[0] may be a follower that applies the last completion at the next heartbeat.
        deadline = time.monotonic() + 10
        while applied(nodes[0], "wt.complete") < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert applied(nodes[0], "wt.start") == n
        assert applied(nodes[0], "wt.complete") == n
    finally:
        for w in workers.values():
            w.close()


def test_query_asked_on_any_node_reaches_the_worker_holding_the_run(cluster: Cluster) -> None:
    c = cluster
    holder_node, other = c.ids[0], c.ids[1]
    w = RawWorker(c.zap_addr(holder_node), tq="qq", slots=1)
    try:
        time.sleep(1.0)
        start(c.nodes[other], "held", tq="qq")
        task = w.next_task(timeout=15)
        assert task["workflow_id"] == "held"
        for asked_on in c.ids:  # wherever the query arrives, the holder answers
            result: dict[str, Any] = {}

            def ask(node_id: str = asked_on, result: dict[str, Any] = result) -> None:
                result["r"] = c.nodes[node_id].post(f"{WF}/held/query", {"queryType": "where", "timeout": "8s"})

            t = threading.Thread(target=ask)
            t.start()
            deadline = time.monotonic() + 10
            while not w.pushes and time.monotonic() < deadline:
                try:
                    w._pump(0.2)
                except (TimeoutError, OSError):
                    pass
            assert w.pushes, f"no query push for a query asked on {asked_on}"
            f, body = w.pushes.pop(0)
            assert f.opcode == 0x00B4
            w.sock.sendall(Z.encode_frame(Z.PUSH_ACK, f.opcode, f.frame_id, {"status": 200}))
            r = w.call(Op.RespondQuery, {"query_token": body["query_token"], "result": f"asked-on-{asked_on}"})
            assert r["status"] == 200, r
            t.join(15)
            assert result["r"] == (200, {"queryResult": f"asked-on-{asked_on}"})
        assert w.complete(task["task_token"], "ok")["status"] == 200
    finally:
        w.close()


def test_killing_the_queue_owner_moves_dispatch_to_the_next_owner(cluster: Cluster) -> None:
    import signal

    from hanzo_tasks.routing import winner

    c = cluster
    owner = winner("_", "default", "q", "tasks", list(c.ids))
    survivors = [nid for nid in c.ids if nid != owner]
    workers = {nid: RawWorker(c.zap_addr(nid), slots=4) for nid in survivors}
    try:
        time.sleep(1.0)
        for i in range(10):
            start(c.nodes[survivors[i % 2]], f"k-{i}")
        c.nodes[owner].kill(signal.SIGKILL)  # the node pushing this queue's tasks dies
        for i in range(10, 20):
            start(c.nodes[survivors[i % 2]], f"k-{i}")
        done: set[str] = set()
        deadline = time.monotonic() + 60
        while len(done) < 20 and time.monotonic() < deadline:
            for w in workers.values():
                try:
                    task = w.next_task(timeout=0.2)
                except (TimeoutError, OSError):
                    continue
                if w.complete(task["task_token"], task["workflow_id"])["status"] == 200:
                    done.add(task["workflow_id"])
        assert done == {f"k-{i}" for i in range(20)}, sorted({f"k-{i}" for i in range(20)} - done)
        for i in range(20):
            status, d = c.nodes[survivors[0]].get(f"{WF}/k-{i}")
            assert d["workflowExecutionInfo"]["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"
    finally:
        for w in workers.values():
            w.close()
