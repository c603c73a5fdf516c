"""Kill -9 the worker in the middle of a 10-step workflow; another process finishes it.

The workers are real processes (the kill is real); the node runs in this
process with a ticking clock so that the server's retry of the activity the
dead worker held comes due in real time. Each step appends to a file when it
starts and when it finishes: after the resume every step has finished exactly
once, and only the step that was running at the kill started twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hanzo_tasks.testing import FakeClock, TestNode

NS = "/v1/tasks/namespaces/default/workflows"

WORKER = textwrap.dedent('''
    import sys, time
    from datetime import timedelta
    import hanzo_tasks as tasks
    from hanzo_tasks.workflow import activity, workflow

    url, zap, log, block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    def note(line):
        with open(log, "a") as f:
            f.write(line + "\\n")

    @activity
    def step(i):
        note(f"start {i}")
        if i == block:
            time.sleep(3600)  # killed here
        note(f"done {i}")
        return i * i

    @workflow
    async def ten_steps(n):
        total = 0
        for i in range(n):
            total += await workflow.execute_activity(
                step, i, start_to_close_timeout=timedelta(seconds=60))
        return total

    client = tasks.Client(url, zap_addr=zap)
    worker = tasks.Worker(client, "ten", workflows=[ten_steps], activities=[step])
    worker.start()
    print("ready", flush=True)
    while True:
        time.sleep(1)
''')


def _spawn(script: Path, node: TestNode, log: Path, block: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(script), node.url, str(node.zap_addr), str(log), str(block)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.timeout(120)
def test_killed_worker_mid_workflow_resumes_elsewhere_without_rerunning_steps(
    tmp_path: Path,
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = tmp_path / "steps.log"
    procs: list[subprocess.Popen[str]] = []
    with TestNode(clock=FakeClock(ticking=True)) as node:
        try:
            procs.append(_spawn(script, node, log, block=5))
            status, rec = node.post(NS, {"workflowId": "ten-1", "workflowType": {"name": "ten_steps"},
                                         "taskQueue": {"name": "ten"}, "input": 10})
            assert status == 200, rec
            node.wait_until(lambda: "start 5" in _lines(log), timeout=30, what="step 5 to start")
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(10)
            assert _lines(log) == [x for i in range(5) for x in (f"start {i}", f"done {i}")] + [
                "start 5"]

            procs.append(_spawn(script, node, log, block=-1))

            def closed() -> Any:
                status, body = node.get(f"{NS}/ten-1")
                info = body["workflowExecutionInfo"]
                return info if info["status"] != "WORKFLOW_EXECUTION_STATUS_RUNNING" else None

            info = node.wait_until(closed, timeout=60, what="the workflow to finish")
            assert info["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED", info
            assert info["result"] == sum(i * i for i in range(10))
            lines = _lines(log)
            for i in range(10):
                assert lines.count(f"done {i}") == 1, lines
                assert lines.count(f"start {i}") == (2 if i == 5 else 1), lines
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(10)
                if p.stdout is not None:
                    p.stdout.close()
