"""Workflow handles and results (issue 15 §4): start, result, signal, query, cancel,
terminate, describe, history, execute, and results of ``now()`` ids.

A real node in this process (``hanzo_tasks.testing.TestNode``) and a real
``hanzo_tasks.Worker`` that completes or fails the runs; each client call goes
over ZAP (a client with ``zap_addr``) or HTTP (one without).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import hanzo_tasks as tasks
import pytest
from hanzo_tasks import handle as handle_mod
from hanzo_tasks.testing import TestNode


def add(payload: dict[str, int]) -> int:
    return payload["a"] + payload["b"]


def declined(payload: Any) -> None:
    raise ValueError("card declined")


@pytest.fixture(scope="module")
def node() -> Iterator[TestNode]:
    with TestNode() as n:
        client = n.client()
        worker = tasks.Worker(client, client.task_queue)
        worker.register("add", add)
        worker.register("declined", declined)
        worker.start()
        try:
            yield n
        finally:
            worker.stop()


@pytest.fixture(params=["zap", "http"])
def client(request: pytest.FixtureRequest, node: TestNode) -> tasks.Client:
    return node.client() if request.param == "zap" else node.client(zap_addr=None)


def test_start_returns_a_handle_whose_result_is_the_return_value(client: tasks.Client) -> None:
    h = client.start("add", {"a": 1, "b": 2})
    assert isinstance(h, tasks.WorkflowHandle)
    assert h.workflow_id.startswith("add-") and h.run_id is None and len(h.result_run_id or "") == 32
    assert h.result(timeout=10) == 3
    assert client.execute("add", {"a": 20, "b": 22}, timeout=10) == 42


def test_a_failed_run_raises_workflow_failed_with_its_message(client: tasks.Client) -> None:
    h = client.start("declined", {"amount": 5})
    with pytest.raises(tasks.WorkflowFailed) as info:
        h.result(timeout=10)
    err = info.value
    assert type(err) is tasks.WorkflowFailed
    assert "card declined" in err.message and err.workflow_status == "FAILED"
    assert err.workflow_id == h.workflow_id and err.run_id == h.result_run_id
    assert err.failure["message"] == "card declined"


def test_the_result_of_an_id_now_returned(client: tasks.Client) -> None:
    wid = client.now("add", {"a": 2, "b": 3})
    assert client.result(wid, timeout=10) == 5
    assert client.get_handle(wid).result(timeout=10) == 5


def test_a_run_still_open_at_the_timeout_raises_timeout(client: tasks.Client) -> None:
    h = client.start("nobody.serves.this", None)
    began = time.monotonic()
    with pytest.raises(tasks.Timeout) as info:
        h.result(timeout=0.5)
    assert 0.4 <= time.monotonic() - began < 5.0
    assert "still running" in info.value.message
    h.terminate("cleanup")


def test_signal_query_describe_history_and_terminate(client: tasks.Client) -> None:
    h = client.start("nobody.serves.this", {"x": 1}, id=f"ops-{client.zap_addr is not None}")
    h.signal("nudge", {"n": 7})
    info = h.describe()["workflowExecutionInfo"]
    assert info["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING" and info["input"] == {"x": 1}
    assert h.query("__workflow_metadata")["workflowType"] == "nobody.serves.this"
    events = h.history()
    assert [e["eventType"] for e in events][:2] == ["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_TASK_SCHEDULED"]
    signaled = [e for e in events if e["eventType"] == "WORKFLOW_EXECUTION_SIGNALED"]
    assert signaled and signaled[0]["attributes"]["input"] == {"n": 7}
    h.terminate("operator said so")
    with pytest.raises(tasks.WorkflowTerminated) as term:
        h.result(timeout=5)
    assert "operator said so" in term.value.message
    again = client.start("nobody.serves.this", None, id=h.workflow_id)  # closed runs never conflict
    same = client.start("nobody.serves.this", None, id=h.workflow_id, id_conflict_policy="USE_EXISTING")
    assert same.result_run_id == again.result_run_id != h.result_run_id
    with pytest.raises(tasks.AlreadyStarted):
        client.start("nobody.serves.this", None, id=h.workflow_id)
    client.get_handle(h.workflow_id).terminate("done")
    with pytest.raises(tasks.WorkflowTerminated):
        client.get_handle(h.workflow_id, again.result_run_id).result(timeout=5)


def test_cancel_closes_a_run_that_no_worker_started(client: tasks.Client) -> None:
    h = client.start("nobody.serves.this", None)
    h.cancel("not needed")
    with pytest.raises(tasks.WorkflowCanceled) as info:
        h.result(timeout=10)
    assert isinstance(info.value, tasks.WorkflowFailed)
    assert info.value.workflow_status == "CANCELED"


def test_result_waits_in_rounds_until_the_run_closes(node: TestNode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handle_mod, "ROUND_S", 0.2)  # each long poll answers RUNNING after 0.2 s
    client = node.client()
    h = client.start("late", None)
    late = node.client()
    worker = tasks.Worker(late, late.task_queue)
    worker.register("late", lambda payload: "finally")
    timer = threading.Timer(1.0, worker.start)
    timer.start()
    try:
        assert h.result(timeout=20) == "finally"
    finally:
        timer.cancel()
        worker.stop()


def test_a_workflow_definition_or_function_names_the_type(client: tasks.Client) -> None:
    definition = SimpleNamespace(__tasks_workflow__=SimpleNamespace(name="add"))
    assert client.execute(definition, {"a": 1, "b": 1}, timeout=10) == 2
    assert client.execute(add, {"a": 4, "b": 4}, timeout=10) == 8
    with pytest.raises(tasks.InvalidArgument):
        client.start(42)


def test_async_twins(client: tasks.Client) -> None:
    async def go() -> None:
        h = await client.astart("add", {"a": 5, "b": 5})
        assert await h.aresult(10) == 10
        assert await client.aexecute("add", {"a": 1, "b": 0}, timeout=10) == 1
        wid = await client.anow("add", {"a": 3, "b": 3})
        assert await client.aresult(wid, timeout=10) == 6
        with pytest.raises(tasks.WorkflowFailed):
            await client.aexecute("declined", None, timeout=10)
        other = await client.astart("nobody.serves.this", None)
        await other.asignal("s", 1)
        assert (await other.adescribe())["workflowExecutionInfo"]["status"].endswith("RUNNING")
        assert len(await other.ahistory()) >= 3
        await other.aterminate("bye")

    asyncio.run(go())


def test_a_local_client_has_no_handles() -> None:
    c = tasks.Client()
    try:
        with pytest.raises(tasks.FailedPrecondition):
            c.start("add", None)
        with pytest.raises(tasks.FailedPrecondition):
            c.result("local-1234abcd")
    finally:
        c.stop(0.5)


def test_bad_arguments_fail_before_any_call(client: tasks.Client) -> None:
    with pytest.raises(tasks.InvalidArgument):
        client.start("add", {1, 2})  # not JSON
    with pytest.raises(tasks.InvalidArgument):
        client.get_handle("ok", run_id="not-a-run")
    with pytest.raises(tasks.InvalidArgument):
        client.get_handle("a/b")
    with pytest.raises(tasks.NotFound):
        client.result("never-started", timeout=1)
