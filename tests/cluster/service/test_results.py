"""Waiting for a result (SPEC §5.6 amended): ``GET NS/workflows/{id}/result`` and ZAP 0x006C.

A real node in this process and raw ZAP workers that close runs by hand. The
waits are long polls answered from applied close events: the tests check that
an answer comes as soon as the run closes (long before ``wait``), and that it
was a close that woke the request (the waiters' ``woken`` count).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from hanzo_tasks.protocol.zap import Op

from tests.cluster.dispatch.test_dispatch import WF, RawWorker
from tests.cluster.service.test_workflow_commands import respond, start

RUNNING = "WORKFLOW_EXECUTION_STATUS_RUNNING"
COMPLETED = "WORKFLOW_EXECUTION_STATUS_COMPLETED"


def result(node: Any, wid: str, query: str = "", timeout: float = 70.0) -> tuple[int, Any, dict[str, str]]:
    return node.request("GET", f"{WF}/{wid}/result" + (f"?{query}" if query else ""), timeout=timeout)


class Asking:
    """One result request on a thread: its answer and how long it took."""

    def __init__(self, node: Any, wid: str, query: str) -> None:
        self.answer: tuple[int, Any, dict[str, str]] | None = None
        self.took = 0.0
        began = time.monotonic()

        def ask() -> None:
            self.answer = result(node, wid, query)
            self.took = time.monotonic() - began

        self.thread = threading.Thread(target=ask, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 20.0) -> tuple[int, Any, dict[str, str]]:
        self.thread.join(timeout)
        assert self.answer is not None, "the result request did not answer"
        return self.answer


def waiters(node: Any) -> Any:
    return node.node.service.results.waiters


def parked(node: Any, n: int = 1) -> None:
    node.wait_until(lambda: len(waiters(node)) >= n, what=f"{n} parked result request(s)")


def test_a_closed_run_answers_at_once_with_its_result(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr)
    try:
        start(node, "done-1", input={"n": 1})
        task = w.next_task()
        assert w.complete(task["task_token"], {"total": 42})["status"] == 200
        status, body, _ = result(node, "done-1", "wait=0s")
        assert status == 200, body
        assert body == {"status": COMPLETED, "runId": task["run_id"], "result": {"total": 42}}
        status, body, _ = result(node, "done-1", f"runId={task['run_id']}")  # default wait, closed: at once
        assert status == 200 and body["result"] == {"total": 42}
    finally:
        w.close()


def test_an_open_run_answers_202_running_when_wait_passes(inproc_node) -> None:
    node = inproc_node
    start(node, "open-1")
    began = time.monotonic()
    status, body, headers = result(node, "open-1", "wait=300ms")
    took = time.monotonic() - began
    assert status == 202, body
    assert body["status"] == RUNNING and len(body["runId"]) == 32
    assert 0.29 <= took < 5.0, took
    assert len(waiters(node)) == 0  # the parked request left no trace
    status, body, _ = result(node, "open-1", "wait=0s")
    assert status == 202 and body["status"] == RUNNING


def test_a_waiting_request_is_woken_by_the_close(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr)
    try:
        start(node, "wake-1")
        task = w.next_task()
        woken = waiters(node).woken
        asking = Asking(node, "wake-1", "wait=30s")
        parked(node)
        assert w.complete(task["task_token"], "late")["status"] == 200
        status, body, _ = asking.join()
        assert status == 200, body
        assert body["result"] == "late"
        assert asking.took < 5.0, asking.took  # far from the 30 s wait: the close answered it
        assert waiters(node).woken == woken + 1
        assert len(waiters(node)) == 0
    finally:
        w.close()


def test_follow_goes_through_continue_as_new_to_the_final_run(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr)
    try:
        start(node, "can-1")
        first = w.next_task()
        asking = Asking(node, "can-1", f"runId={first['run_id']}&wait=30s")  # follow=true by default
        parked(node)
        r = respond(w, first, {"type": "ContinueAsNew", "input": {"round": 2}})
        assert r["status"] == 200, r
        second = w.next_task()
        assert second["run_id"] != first["run_id"]
        time.sleep(0.2)
        assert asking.answer is None  # woken by the continue-as-new, still waiting for the new run
        assert w.complete(second["task_token"], "final")["status"] == 200
        status, body, _ = asking.join()
        assert status == 200, body
        assert body == {"status": COMPLETED, "runId": second["run_id"], "result": "final"}
        assert asking.took < 10.0
        # follow=false stops at the run asked for, and names the next one.
        status, body, _ = result(node, "can-1", f"runId={first['run_id']}&follow=false")
        assert status == 200, body
        assert body == {"status": "WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW", "runId": first["run_id"],
                        "nextRunId": second["run_id"]}
    finally:
        w.close()


def test_failed_canceled_and_terminated_runs_carry_a_failure(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr)
    try:
        start(node, "fail-1")
        task = w.next_task()
        assert w.fail_run(task["task_token"], "card declined")["status"] == 200
        status, body, _ = result(node, "fail-1")
        assert status == 200, body
        assert body["status"] == "WORKFLOW_EXECUTION_STATUS_FAILED"
        assert body["failure"]["message"] == "card declined" and body["failure"]["type"] == "RuntimeError"

        start(node, "term-1")
        w.next_task()
        asking = Asking(node, "term-1", "wait=30s")
        parked(node)
        status, _ = node.post(f"{WF}/term-1/terminate", {"reason": "operator said so", "identity": "ops"})
        assert status == 200
        status, body, _ = asking.join()
        assert status == 200, body
        assert body["status"] == "WORKFLOW_EXECUTION_STATUS_TERMINATED"
        assert body["failure"]["type"] == "TerminatedError"
        assert "operator said so" in body["failure"]["message"]

        start(node, "cancel-1")
        task = w.next_task()
        assert node.post(f"{WF}/cancel-1/cancel", {"reason": "not needed"})[0] == 200
        # the task in flight (the cancel request was pushed to it as 0xB3) acknowledges the cancel
        assert respond(w, task, {"type": "CancelWorkflowExecution", "details": {"undone": True}})["status"] == 200
        status, body, _ = result(node, "cancel-1", "wait=5s")
        assert status == 200, body
        assert body["status"] == "WORKFLOW_EXECUTION_STATUS_CANCELED"
        assert body["failure"]["type"] == "CanceledError" and body["failure"]["details"] == {"undone": True}
    finally:
        w.close()


def test_bad_input_is_400_and_an_unknown_workflow_404(inproc_node) -> None:
    node = inproc_node
    start(node, "input-1")
    for query in ("wait=61s", "wait=-1s", "wait=10", "wait=soon", "runId=nothex", "follow=maybe"):
        status, body, _ = result(node, "input-1", query)
        assert status == 400, (query, body)
        assert body["code"] == "invalid_argument"
    status, body, _ = result(node, "nobody", "wait=10s")
    assert status == 404 and body["code"] == "not_found", body
    status, body, _ = result(node, "input-1", "runId=" + "0" * 32)
    assert status == 404, body
    status, body, _ = result(node, "input-1", "wait=60s&runId=" + "0" * 32)  # 60 s is allowed
    assert status == 404, body


def test_the_zap_op_is_the_same_long_poll(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr)
    try:
        start(node, "zap-1")
        task = w.next_task()
        r = w.call(Op.GetWorkflowResult, {"workflow_id": "zap-1", "wait_ms": 200})
        assert r["status"] == 200 and r["body"]["status"] == RUNNING, r
        assert r["body"]["run_id"] == task["run_id"]
        assert w.complete(task["task_token"], [1, 2])["status"] == 200
        r = w.call(Op.GetWorkflowResult, {"workflow_id": "zap-1", "run_id": task["run_id"], "follow": False})
        assert r["status"] == 200, r
        assert r["body"] == {"status": COMPLETED, "run_id": task["run_id"], "result": [1, 2]}
        r = w.call(Op.GetWorkflowResult, {"workflow_id": "zap-1", "wait_ms": 60_001})
        assert r["status"] == 400, r
        r = w.call(Op.GetWorkflowResult, {"workflow_id": "nobody", "wait_ms": 0})
        assert r["status"] == 404, r
    finally:
        w.close()


def test_waiters_are_bounded_per_node(inproc_node) -> None:
    node = inproc_node
    start(node, "cap-1")
    waiters(node).limit = 1
    first = Asking(node, "cap-1", "wait=2s")
    parked(node)
    status, body, headers = result(node, "cap-1", "wait=2s")
    assert status == 503, body
    assert body["code"] == "unavailable" and headers.get("Retry-After") == "1"
    status, body, _ = first.join()
    assert status == 202, body
    status, body, _ = result(node, "cap-1", "wait=0s")  # no wait, nothing parked: not refused
    assert status == 202, body


def test_stopping_the_node_releases_its_waiters(tmp_path) -> None:
    from tests.cluster.inproc import start_test_node

    node = start_test_node(tmp_path / "n1")
    try:
        start(node, "stop-1")
        asking = Asking(node, "stop-1", "wait=60s")
        parked(node)
        began = time.monotonic()
        node.stop()
        assert time.monotonic() - began < 4.0  # aiohttp would drain for 5 s if the wait held on
        status, body, _ = asking.join(10)
        assert status == 503 and body["code"] == "unavailable", body
    finally:
        node.stop()
