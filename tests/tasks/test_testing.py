"""``hanzo_tasks.testing``: the in-process node and its clock, as a user would test with them.

The node is real (LMDB in a temporary directory, HTTP and ZAP on loopback);
only its wall clock is the test's. Nothing here sleeps for a timer: the clock
is advanced and the effect is polled for, bounded.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from hanzo_tasks.testing import FakeClock, TestNode, wait_until

NSP = "/v1/tasks/namespaces"
HOUR_MS = 3_600_000


def fired(node: TestNode, ns: str, wtype: str) -> list[dict]:
    status, body = node.get(f"{NSP}/{ns}/workflows?pageSize=1000&query=WorkflowType%20%3D%20%27{wtype}%27")
    assert status == 200, body
    return body["executions"]


def schedule(node: TestNode, ns: str, sid: str) -> dict:
    status, body = node.get(f"{NSP}/{ns}/schedules/{sid}")
    assert status == 200, body
    return body


def test_importing_the_harness_loads_no_server_code() -> None:
    code = (
        "import sys, hanzo_tasks, hanzo_tasks.testing\n"
        "server = sorted(m for m in sys.modules if m.startswith(('hanzo_tasks.cluster', 'hanzo_tasks.shard',"
        " 'hanzo_tasks.replication', 'lmdb', 'aiohttp')))\n"
        "assert not server, server\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_frozen_clock_moves_only_when_advanced() -> None:
    clock = FakeClock(start_ms=1_000)
    woken = []
    clock.on_advance(lambda: woken.append(clock()))
    assert clock() == 1_000 and clock.time() == 1.0
    time.sleep(0.01)
    assert clock() == 1_000
    assert clock.advance(2.5) == 3_500 and woken == [3_500]
    assert clock.advance_to(3_000) == 3_500  # never backwards
    assert clock.advance_to(4_000) == 4_000 and woken == [3_500, 4_000]
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_a_ticking_clock_follows_real_time_plus_the_advances() -> None:
    clock = FakeClock(start_ms=0, ticking=True)
    clock.advance(60)
    first = clock()
    assert 60_000 <= first < 65_000
    wait_until(lambda: clock() > first, 2.0, "the ticking clock to move")


def test_advancing_the_clock_fires_a_schedule_exactly_once_per_interval(tmp_path: Path) -> None:
    began = time.monotonic()
    with TestNode(tmp_path / "n1") as node:
        t0 = node.clock()
        status, body = node.post(f"{NSP}/default/schedules", {
            "scheduleId": "hourly", "spec": {"interval": [{"interval": "1h"}]},
            "action": {"workflowType": {"name": "Report"}, "taskQueue": "nobody"},
            "policies": {"overlapPolicy": "SCHEDULE_OVERLAP_POLICY_ALLOW_ALL"},
        })
        assert status == 200, body
        first_due = (t0 // HOUR_MS + 1) * HOUR_MS
        info = schedule(node, "default", "hourly")["info"]
        assert info["actionCount"] == 0 and fired(node, "default", "Report") == []

        # Just short of the due time: the timer wakes, finds nothing due. (A
        # short real settle: a negative cannot be polled for.)
        node.clock.advance_to(first_due - 1_000)
        time.sleep(0.3)
        assert schedule(node, "default", "hourly")["info"]["actionCount"] == 0

        node.clock.advance_to(first_due)
        wait_until(lambda: schedule(node, "default", "hourly")["info"]["actionCount"] == 1, 10, "the first fire")
        assert len(fired(node, "default", "Report")) == 1
        node.clock.advance(3600)
        wait_until(lambda: schedule(node, "default", "hourly")["info"]["actionCount"] == 2, 10, "the second fire")
        runs = fired(node, "default", "Report")
        assert len(runs) == 2 and len({r["execution"]["workflowId"] for r in runs}) == 2
        assert node.node.timers.fires == 2  # each nominal time once: no repeated fire was proposed
    assert time.monotonic() - began < 30  # two hours of schedule, no real hour slept


def test_a_run_timeout_fires_when_the_clock_passes_it() -> None:
    with TestNode() as node:
        status, body = node.post(f"{NSP}/default/workflows", {
            "workflowId": "slow", "workflowType": {"name": "Slow"}, "taskQueue": {"name": "nobody"},
            "workflowExecutionTimeout": "1h",
        })
        assert status == 200, body

        def state() -> str:
            return node.get(f"{NSP}/default/workflows/slow")[1]["workflowExecutionInfo"]["status"]

        assert state() == "WORKFLOW_EXECUTION_STATUS_RUNNING"
        node.clock.advance(3600)
        wait_until(lambda: state() == "WORKFLOW_EXECUTION_STATUS_TIMED_OUT", 10, "the run timeout")


def test_a_client_schedule_runs_its_function_on_the_nodes_clock() -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def report() -> None:
        with lock:
            calls.append(1)

    with TestNode() as node:
        client = node.client()
        client.add("report", "1h", report)
        # To the due time itself: a jump far past it would be a missed catch-up
        # window (schedules catch up 1 min by default: that is the rule, not the harness).
        due = schedule(node, "default", "report")["info"]["nextActionTime"]
        node.clock.advance_to(int(datetime.fromisoformat(due.replace("Z", "+00:00")).timestamp() * 1000))
        wait_until(lambda: len(calls) == 1, 15, "the scheduled function to run")
        assert schedule(node, "default", "report")["info"]["actionCount"] == 1
    assert node.node is None and node.url  # stopped (its client too)


def test_async_with_and_raw_calls() -> None:
    async def main() -> tuple[int, dict, int]:
        async with TestNode(node_id="n-async", zap=False) as node:
            assert node.zap_addr is None and node.zap_address is None
            status, body = await asyncio.to_thread(node.get, "/readyz")
            raw_status, _, headers = await asyncio.to_thread(node.request, "GET", "/v1/tasks/nope")
            assert headers.get("X-Tasks-Node") == "n-async"
            return status, body, raw_status

    status, body, raw_status = asyncio.run(main())
    assert status == 200 and body == {"status": "ready", "nodeId": "n-async"}
    assert raw_status == 404


def test_a_temporary_data_dir_is_removed_and_a_given_one_kept(tmp_path: Path) -> None:
    with TestNode() as node:
        temp = node.data_dir
        assert temp is not None and temp.exists() and node.alive
    assert not temp.exists() and not node.alive
    with TestNode(tmp_path / "kept", args=["--limits-max-batch-size", "7"]) as node:
        assert node.node.cfg.limits.max_batch_size == 7
    assert (tmp_path / "kept").exists()


def test_state_survives_a_restart_on_the_same_data_dir(tmp_path: Path) -> None:
    clock = FakeClock()
    with TestNode(tmp_path / "n1", clock=clock) as node:
        assert node.post(f"{NSP}/default/workflows", {"workflowId": "kept", "workflowType": {"name": "K"}})[0] == 200
    with TestNode(tmp_path / "n1", clock=clock) as node:
        status, body = node.get(f"{NSP}/default/workflows/kept")
        assert status == 200 and body["workflowExecutionInfo"]["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"


def test_a_frozen_clock_starts_at_midnight_so_interval_schedules_are_due_one_advance_later() -> None:
    """Interval schedules are aligned to the epoch: from a round start, "1h" is due
    exactly one ``advance(3600)`` later, which is how a test reads it."""
    ran = threading.Event()
    with TestNode() as node:
        assert node.clock() % 86_400_000 == 0
        client = node.client()
        client.add("report", "1h", ran.set)
        node.clock.advance(3599)
        assert not ran.wait(0.5)
        node.clock.advance(1)
        assert ran.wait(10)
