"""``tasksctl wf result`` and ``tasksctl wf start --wait``.

Against the recording fake server of ``test_ctl`` (what goes over the wire:
rounds of ``GET …/result`` with ``wait``), and end to end against a real node
with a worker (the result printed, failures exiting 1).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import hanzo_tasks as tasks
import pytest
from hanzo_tasks import ctl
from hanzo_tasks.ctl import workflows as ctl_workflows
from hanzo_tasks.testing import TestNode

from tests.tasks.test_ctl import NS, FakeServer, run, server  # noqa: F401 - fixtures

RID = "b" * 32
RUNNING = (202, {"status": "WORKFLOW_EXECUTION_STATUS_RUNNING", "runId": RID})
DONE = (200, {"status": "WORKFLOW_EXECUTION_STATUS_COMPLETED", "runId": RID, "result": {"ok": True}})


def test_result_asks_in_rounds_until_the_run_closes(server: FakeServer, run) -> None:  # noqa: F811
    server.on("GET", f"{NS}/workflows/order-17/result", RUNNING, RUNNING, DONE)
    res = run("wf", "result", "order-17")
    assert res.code == 0, res.err
    assert json.loads(res.out) == {"ok": True}
    asked = [r for r in server.requests if r.path.endswith("/result")]
    assert len(asked) == 3
    assert asked[0].query == {"wait": "60000ms", "follow": "true"}
    assert asked[1].query["runId"] == RID  # after a RUNNING answer: that run, not a later one


def test_result_gives_up_at_its_timeout(server: FakeServer, run) -> None:  # noqa: F811
    server.on("GET", f"{NS}/workflows/order-17/result", RUNNING)
    res = run("wf", "result", "order-17", "--timeout", "0s", "--run-id", RID, "--no-follow")
    assert res.code == 1
    assert "error: timeout: workflow order-17 is still running after 0s" in res.err
    assert server.last.query == {"runId": RID, "wait": "0ms", "follow": "false"}


@pytest.mark.parametrize("status, code, words", [
    ("FAILED", "workflow_failed", "failed: card declined"),
    ("TERMINATED", "workflow_terminated", "was terminated: card declined"),
    ("TIMED_OUT", "workflow_timed_out", "timed out: card declined"),
])
def test_a_run_that_did_not_complete_exits_1_with_its_failure(server: FakeServer, run, status: str,  # noqa: F811
                                                               code: str, words: str) -> None:
    body = {"status": f"WORKFLOW_EXECUTION_STATUS_{status}", "runId": RID,
            "failure": {"message": "card declined", "type": "ValueError"}}
    server.on("GET", f"{NS}/workflows/order-17/result", (200, body))
    res = run("wf", "result", "order-17")
    assert res.code == 1 and res.out == ""
    assert f"error: {code}: workflow order-17 {words}" in res.err
    res = run("--output", "json", "wf", "result", "order-17")
    assert res.code == 1 and res.json() == body  # JSON output: the answer as received


def test_start_wait_starts_then_prints_the_result(server: FakeServer, run) -> None:  # noqa: F811
    server.on("POST", f"{NS}/workflows", (200, {"execution": {"workflowId": "order-17", "runId": RID},
                                                "started": True}))
    server.on("GET", f"{NS}/workflows/order-17/result", RUNNING, (200, {**DONE[1], "result": "paid"}))
    res = run("wf", "start", "charge-card", "--input", "42", "--wait", "--timeout", "1m")
    assert res.code == 0, res.err
    assert res.out == "paid\n"
    assert "started order-17 (run " + RID in res.err
    assert server.requests[1].query["runId"] == RID


def test_timeout_is_checked_as_a_duration(server: FakeServer, run) -> None:  # noqa: F811
    assert run("wf", "result", "x", "--timeout", "soon").code == 2
    assert run("wf", "start", "t", "--timeout", "1m").code == 2  # --timeout needs --wait
    assert ctl_workflows.duration_seconds("1m30s", "--timeout") == 90.0
    assert ctl_workflows.duration_seconds("250ms", "--timeout") == 0.25
    assert ctl_workflows.duration_seconds("2", "--timeout") == 2.0


@pytest.fixture(scope="module")
def node() -> Iterator[TestNode]:
    def charge(payload: dict[str, int]) -> dict[str, int]:
        if payload.get("amount", 0) > 100:
            raise ValueError("over the limit")
        return {"charged": payload["amount"]}

    with TestNode() as n:
        client = n.client(task_queue="default")
        worker = tasks.Worker(client, "default")
        worker.register("charge", charge)
        worker.start()
        try:
            yield n
        finally:
            worker.stop()


def test_end_to_end_against_a_node(node: TestNode, capsys: pytest.CaptureFixture[str]) -> None:
    def tasksctl(*argv: str) -> tuple[int, str, str]:
        code = ctl.main(["--url", node.url, *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = tasksctl("wf", "start", "charge", "--id", "c-1", "--input", '{"amount": 7}', "--wait")
    assert code == 0, err
    assert json.loads(out) == {"charged": 7}
    code, out, err = tasksctl("wf", "result", "c-1")
    assert (code, json.loads(out)) == (0, {"charged": 7})
    code, out, err = tasksctl("wf", "start", "charge", "--id", "c-2", "--input", '{"amount": 700}', "--wait")
    assert code == 1 and "error: workflow_failed: workflow c-2 failed: over the limit" in err
    code, out, err = tasksctl("wf", "start", "unserved", "--id", "c-3")
    assert code == 0
    began = time.monotonic()
    code, out, err = tasksctl("wf", "result", "c-3", "--timeout", "300ms")
    assert code == 1 and "still running" in err
    assert time.monotonic() - began < 5
    code, out, err = tasksctl("wf", "result", "nobody")
    assert code == 1 and "error: not_found" in err
