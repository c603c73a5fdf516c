"""A durable sleep survives the kill of its partition's leader and wakes exactly once.

Three real ``tasksd`` processes (Raft); the worker is connected to a node that
does not lead the workflow's partition, so the kill is invisible to it except
through what the new leader does: recompute the due timer from replicated
state and fire it once (its key makes a second firing a no-op).
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import hanzo_tasks as tasks
import pytest
from hanzo_tasks.routing import partition_of
from hanzo_tasks.workflow import activity, workflow

from tests.cluster.raft_support import Cluster

NS = "/v1/tasks/namespaces/default/workflows"
woke: list[str] = []
woke_lock = threading.Lock()


def start_acked(node: Any, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Start with retries on 503 (same requestId), as a client does around an election."""
    deadline = time.monotonic() + timeout
    while True:
        status, rec = node.post(NS, body, timeout=15)
        if status == 200:
            return rec  # type: ignore[no-any-return]
        assert status == 503 and time.monotonic() < deadline, rec
        time.sleep(0.1)


def get_ok(node: Any, path: str, timeout: float = 30.0) -> dict[str, Any]:
    """A read, retried while an election makes the partition unavailable (503)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = node.get(path, timeout=15)
        if status == 200:
            return body  # type: ignore[no-any-return]
        assert status == 503 and time.monotonic() < deadline, body
        time.sleep(0.1)


@activity
def record_wake(wid: str) -> str:
    with woke_lock:
        woke.append(wid)
    return "awake"


@workflow
async def nap(wid: str) -> str:
    await workflow.sleep(2)
    return await workflow.execute_activity(record_wake, wid)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_durable_sleep_survives_a_leader_kill_and_wakes_once(tmp_path: Path) -> None:
    woke.clear()
    cluster = Cluster(tmp_path / "c", n=3, partitions=4)
    cluster.start()
    try:
        group = partition_of("_", "default", "tasks", cluster.partitions)
        deadline = time.monotonic() + 30
        leader = cluster.leader_of(group)
        while leader is None and time.monotonic() < deadline:
            time.sleep(0.1)
            leader = cluster.leader_of(group)
        assert leader is not None
        other = next(nid for nid in cluster.ids if nid != leader)
        node = cluster.nodes[other]
        host, port = cluster.zap_addr(other)
        client = tasks.Client(node.url, zap_addr=f"{host}:{port}")
        worker = tasks.Worker(client, "naps", workflows=[nap], activities=[record_wake])
        worker.start()
        try:
            start_acked(node, {"workflowId": "nap-1", "workflowType": {"name": "nap"},
                               "taskQueue": {"name": "naps"}, "input": "nap-1",
                               "requestId": "nap-1"})

            def history() -> list[dict[str, Any]]:
                s, body = node.get(f"{NS}/nap-1/history", timeout=15)
                return body["events"] if s == 200 else []

            deadline = time.monotonic() + 30
            while not any(e["eventType"] == "TIMER_STARTED" for e in history()):
                assert time.monotonic() < deadline, "the timer never started"
                time.sleep(0.05)
            cluster.nodes[leader].kill(signal.SIGKILL)
            started = time.monotonic()

            deadline = time.monotonic() + 60
            info: dict[str, Any] = {}
            while time.monotonic() < deadline:
                s, body = node.get(f"{NS}/nap-1", timeout=15)
                if s == 200:
                    info = body["workflowExecutionInfo"]
                    if info["status"] != "WORKFLOW_EXECUTION_STATUS_RUNNING":
                        break
                time.sleep(0.1)
            assert info.get("status") == "WORKFLOW_EXECUTION_STATUS_COMPLETED", info
            assert time.monotonic() - started < 30  # woke after the fail-over, not at a sweep
            assert info["result"] == "awake"
            types = [e["eventType"] for e in history()]
            assert types.count("TIMER_FIRED") == 1, types
            assert woke == ["nap-1"]
            assert cluster.leader_of(group) not in (None, leader)  # a new leader fired it
        finally:
            worker.stop()
            client.stop()
    finally:
        cluster.kill_all()


@workflow(name="three-steps")
async def three_steps(n: int) -> int:
    for _ in range(3):
        n = await workflow.execute_activity("bump", n, start_to_close_timeout=timedelta(seconds=20))
    return n


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_many_workflows_complete_once_across_a_leader_kill(tmp_path: Path) -> None:
    count = 300
    bumps: dict[int, int] = {}
    lock = threading.Lock()

    def bump(n: int) -> int:
        with lock:
            bumps[n] = bumps.get(n, 0) + 1
        return n + 1

    cluster = Cluster(tmp_path / "c", n=3, partitions=4)
    cluster.start()
    try:
        group = partition_of("_", "default", "tasks", cluster.partitions)
        deadline = time.monotonic() + 30
        while (leader := cluster.leader_of(group)) is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        other = next(nid for nid in cluster.ids if nid != leader)
        node = cluster.nodes[other]
        host, port = cluster.zap_addr(other)
        client = tasks.Client(node.url, zap_addr=f"{host}:{port}")
        worker = tasks.Worker(client, "many", workflows=[three_steps], max_concurrent=50)
        worker.register_activity("bump", bump)
        worker.start()
        try:
            for i in range(count):
                start_acked(node, {
                    "workflowId": f"m-{i}", "workflowType": {"name": "three-steps"},
                    "taskQueue": {"name": "many"}, "input": i * 10, "requestId": f"m-{i}"})

            def closed() -> int:
                s, body = node.get(f"{NS}?query=ExecutionStatus%3D'Completed'&pageSize=1000",
                                   timeout=15)
                return len(body["executions"]) if s == 200 else 0

            deadline = time.monotonic() + 60
            while closed() < count // 3:
                assert time.monotonic() < deadline, "no progress before the kill"
                time.sleep(0.1)
            cluster.nodes[leader].kill(signal.SIGKILL)

            deadline = time.monotonic() + 180
            while closed() < count:
                assert time.monotonic() < deadline, f"only {closed()} of {count} completed"
                time.sleep(0.5)
            for i in range(count):
                body = get_ok(node, f"{NS}/m-{i}/executions")
                assert len(body["executions"]) == 1, body  # one run each, completed once
                rec = get_ok(node, f"{NS}/m-{i}")["workflowExecutionInfo"]
                assert rec["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED", rec
                assert rec["result"] == i * 10 + 3
            # Activities are at least once: a kill may redeliver the few that were running.
            assert len(bumps) == 3 * count
            again = sum(v - 1 for v in bumps.values())
            print(f"{count} workflows; {again} activity executions repeated after the kill")
            assert again <= 50, f"{again} activity executions repeated"
        finally:
            worker.stop()
            client.stop()
    finally:
        cluster.kill_all()
