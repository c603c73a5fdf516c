"""Three real ``tasksd`` processes start as a Raft cluster and survive the loss of a leader.

The nodes print every DeprecationWarning (``PYTHONWARNINGS``); one that points into our
code fails the test, as the ``filterwarnings`` mark does for this process.
"""

from __future__ import annotations

import importlib
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from hanzo_tasks.routing import partition_of

from tests.cluster.raft_support import Cluster
from tests.quick import OUR_DEPRECATIONS_ARE_ERRORS, deprecations_from_our_code, our_packages
from tests.support import NodeProcess

pytestmark = pytest.mark.filterwarnings(OUR_DEPRECATIONS_ARE_ERRORS)

WF = "/v1/tasks/namespaces/default/workflows"


def start_acked(nodes: list[NodeProcess], wid: str, timeout: float = 30.0) -> dict[str, Any]:
    """Start ``wid`` through any live node, retrying with the same requestId until acknowledged."""
    deadline = time.monotonic() + timeout
    i = 0
    while time.monotonic() < deadline:
        node = nodes[i % len(nodes)]
        i += 1
        try:
            status, body = node.post(
                WF, {"workflowId": wid, "requestId": f"req-{wid}", "workflowType": {"name": "T"}},
                timeout=5,
            )
        except OSError:
            continue
        if status == 200:
            return body
        assert status == 503, body  # no leader yet: retry, as a client does
        time.sleep(0.1)
    raise AssertionError(f"{wid} never acknowledged")


def visible(node: NodeProcess, wid: str, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.get(f"{WF}/{wid}")[0] == 200:
            return True
        time.sleep(0.05)
    return False


def test_three_nodes_start_and_fail_over_to_a_new_leader(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "c", n=3, partitions=2)
    for node in cluster.nodes.values():
        node.env = {"PYTHONWARNINGS": "default::DeprecationWarning"}
    try:
        cluster.start()
        nodes = list(cluster.nodes.values())
        start_acked(nodes, "before")
        group = partition_of("_", "default", "tasks", cluster.partitions)
        victim = cluster.leader_of(group)
        assert victim is not None

        cluster.nodes[victim].kill(signal.SIGKILL)
        survivors = [n for nid, n in cluster.nodes.items() if nid != victim]
        killed_at = time.monotonic()
        start_acked(survivors, "after")  # the partition took writes again: a new leader
        failover = time.monotonic() - killed_at
        new_leader = cluster.leader_of(group)
        assert new_leader not in (None, victim), f"leader {new_leader} after {failover:.1f}s"
        for node in survivors:
            assert visible(node, "before"), f"acknowledged write lost on {node.data_dir.name}"
            assert visible(node, "after"), f"write after failover missing on {node.data_dir.name}"
    finally:
        cluster.kill_all()
    our_dirs = [
        Path(importlib.import_module(name).__file__ or "").parent for name in our_packages()
    ]
    logs = "".join(node.log() for node in cluster.nodes.values())
    assert "serving http=" in logs
    assert deprecations_from_our_code(logs, our_dirs) == []
