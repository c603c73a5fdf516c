"""The watchdog (issue 23, deliverable 4): a node whose replication cannot go
on says so on /readyz and /metrics at once, logs why, and exits non-zero for
its supervisor to restart it.

A real ``tasksd`` (Raft, one node) with a fault point armed by
``HANZO_TASKS_FAULTS=name@FILE``: the fault fires once the test creates FILE,
after the node is ready and serving.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.cluster.raft_support import Cluster

WF = "/v1/tasks/namespaces/default/workflows"
EXIT_FATAL = 1  # SPEC §10: runtime failure


@pytest.mark.parametrize(
    ("fault", "kind", "why"),
    [
        ("raft.thread", "raft_thread", "the Raft thread died"),
        ("journal.flush", "journal", "journal of group"),
    ],
)
def test_a_node_whose_replication_fails_turns_not_ready_and_exits(tmp_path: Path, fault: str, kind: str,
                                                                    why: str) -> None:
    trigger = tmp_path / "fire"
    c = Cluster(tmp_path / "c", n=1, partitions=2)
    node = c.nodes["n1"]
    node.env = {"HANZO_TASKS_FAULTS": f"{fault}@{trigger}"}
    try:
        c.start(timeout=60)
        assert node.post(WF, {"workflowId": "before", "workflowType": {"name": "T"}})[0] == 200
        assert "tasks_raft_thread_alive 1.0" in node.request("GET", "/metrics")[1]
        trigger.touch()
        # A write makes the journal dirty (the journal fault fires at its flush).
        node.post(WF, {"workflowId": "after", "workflowType": {"name": "T"}}, timeout=15)
        ready = metrics = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (ready is None or metrics is None):
            status, body = node.get("/readyz")
            if status == 503 and any(why in r for r in body["reasons"]):
                ready = body
                metrics = node.request("GET", "/metrics")[1]
            time.sleep(0.02)
        assert ready is not None, node.log()
        assert "tasks_raft_thread_alive 0.0" in metrics
        assert f'tasks_fatal_errors_total{{reason="{kind}"}} 1.0' in metrics
        assert node.proc is not None
        rc = node.proc.wait(30)
        node.proc = None
        assert rc == EXIT_FATAL
        log = node.log()
        assert why in log and "watchdog" in log
    finally:
        c.kill_all()
