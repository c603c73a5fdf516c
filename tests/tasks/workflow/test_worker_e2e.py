"""Durable workflows end to end: a real node in this process (fake clock), a real Worker."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import hanzo_tasks as tasks
import pytest
from hanzo_tasks.testing import FakeClock, TestNode
from hanzo_tasks.workflow import Replayer, RetryPolicy, activity, workflow

NS = "/v1/tasks/namespaces/default/workflows"
calls: list[str] = []
calls_lock = threading.Lock()


@activity
def charge(order: dict) -> str:
    with calls_lock:
        calls.append(f"charge {order['id']}")
    return f"receipt-{order['id']}"


@activity(name="notify")
async def notify(msg: str) -> None:
    with calls_lock:
        calls.append(f"notify {msg}")


@workflow
class Order:
    def __init__(self) -> None:
        self.approved_by: str | None = None
        self.stage = "new"

    @workflow.signal
    def approve(self, who: str) -> None:
        self.approved_by = who

    @workflow.query
    def status(self) -> str:
        return self.stage

    async def run(self, order: dict) -> dict:
        self.stage = "charging"
        receipt = await workflow.execute_activity(
            charge, order, start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=200),
                                     maximum_attempts=3, non_retryable_error_types=("KeyError",)))
        self.stage = "waiting a day"
        await workflow.sleep(timedelta(days=1))
        self.stage = "waiting for approval"
        await workflow.wait_condition(lambda: self.approved_by is not None)
        await workflow.execute_activity(notify, f"approved by {self.approved_by}")
        self.stage = "done"
        return {"receipt": receipt, "approved_by": self.approved_by,
                "at": workflow.now().isoformat()}


def _describe(node: TestNode, wid: str) -> dict[str, Any]:
    status, body = node.get(f"{NS}/{wid}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def _history(node: TestNode, wid: str) -> dict[str, Any]:
    status, body = node.get(f"{NS}/{wid}/history")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def _event_types(node: TestNode, wid: str) -> list[str]:
    return [e["eventType"] for e in _history(node, wid)["events"]]


@pytest.mark.timeout(60)
def test_activity_durable_sleep_signal_and_query_end_to_end() -> None:
    calls.clear()
    with TestNode() as node:
        client = node.client()
        worker = tasks.Worker(client, "orders", workflows=[Order], activities=[charge, notify])
        worker.start()
        try:
            status, rec = node.post(NS, {"workflowId": "order-1", "workflowType": {"name": "Order"},
                                         "taskQueue": {"name": "orders"}, "input": {"id": 7}})
            assert status == 200, rec
            node.wait_until(lambda: "TIMER_STARTED" in _event_types(node, "order-1"),
                            what="the durable timer")
            assert calls == ["charge 7"]
            status, q = node.post(f"{NS}/order-1/query", {"queryType": "status"})
            assert status == 200 and q["queryResult"] == "waiting a day", q

            node.clock.advance(86_400)  # a day passes, at once
            node.wait_until(lambda: "TIMER_FIRED" in _event_types(node, "order-1"),
                            what="the timer to fire")
            node.wait_until(
                lambda: _event_types(node, "order-1")[-1] == "WORKFLOW_TASK_COMPLETED",
                what="the workflow to wait for its signal")
            status, body = node.post(f"{NS}/order-1/signal", {"name": "approve", "input": "ann"})
            assert status == 200, body
            info = node.wait_until(
                lambda: (d := _describe(node, "order-1")["workflowExecutionInfo"])["status"]
                != "WORKFLOW_EXECUTION_STATUS_RUNNING" and d,
                what="the workflow to close")
            assert info["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED", info
            assert info["result"]["receipt"] == "receipt-7"
            assert info["result"]["approved_by"] == "ann"
            assert calls == ["charge 7", "notify approved by ann"]
            # One full replay (the first task); every later task resumed the live executor.
            assert worker.durable_stats == {"replays": 1, "sticky": 4}, worker.durable_stats
            # The recorded history replays cleanly against the same code.
            Replayer([Order]).replay(_history(node, "order-1"),
                                     run_id=info["execution"]["runId"])
        finally:
            worker.stop()


@workflow(name="steps")
async def steps(n: int) -> int:
    total = 0
    for i in range(n):
        total += await workflow.execute_activity("step", i)
    return total


@pytest.mark.timeout(60)
def test_a_new_worker_resumes_from_history_without_rerunning_steps() -> None:
    """The first worker's executor is gone (evicted / another process): full replay."""
    done: list[int] = []
    gate = threading.Event()

    def step(i: int) -> int:
        done.append(i)
        if i == 2:
            gate.wait(10)
        return i * 10

    with TestNode() as node:
        client = node.client()
        w1 = tasks.Worker(client, "steps", workflows=[steps])
        w1.register_activity("step", step)
        w1.start()
        try:
            status, rec = node.post(NS, {"workflowId": "s-1", "workflowType": {"name": "steps"},
                                         "taskQueue": {"name": "steps"}, "input": 5})
            assert status == 200, rec
            node.wait_until(lambda: 2 in done, what="step 2 to start")
            w1.evict(rec["execution"]["runId"])  # the sticky executor is lost
            gate.set()
            info = node.wait_until(
                lambda: (d := _describe(node, "s-1")["workflowExecutionInfo"])["status"]
                != "WORKFLOW_EXECUTION_STATUS_RUNNING" and d,
                what="the workflow to close")
            assert info["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED", info
            assert info["result"] == 100
            assert done == [0, 1, 2, 3, 4]
            assert w1.durable_stats["replays"] == 2  # the first task, and the one after eviction
        finally:
            w1.stop()


@pytest.mark.timeout(60)
def test_non_determinism_fails_the_workflow_task_not_the_run() -> None:
    @workflow(name="drift")
    async def v1() -> str:
        await workflow.execute_activity("a")
        return "v1"

    @workflow(name="drift")
    async def v2() -> str:
        await workflow.execute_activity("b")
        return "v2"

    with TestNode() as node:
        client = node.client()
        w1 = tasks.Worker(client, "drift", workflows=[v1])  # nobody runs activity "a"
        w1.start()
        try:
            status, rec = node.post(NS, {"workflowId": "d-1", "workflowType": {"name": "drift"},
                                         "taskQueue": {"name": "drift"}})
            assert status == 200, rec
            node.wait_until(lambda: "ACTIVITY_TASK_SCHEDULED" in _event_types(node, "d-1"))
        finally:
            w1.stop()
        w2 = tasks.Worker(node.client(), "drift", workflows=[v2])  # the code changed
        w2.start()
        try:
            status, body = node.post(f"{NS}/d-1/signal", {"name": "poke"})  # a new workflow task
            assert status == 200, body
            node.wait_until(lambda: "WORKFLOW_TASK_FAILED" in _event_types(node, "d-1"),
                            what="the failed workflow task")
            events = _history(node, "d-1")["events"]
            failed = [e for e in events if e["eventType"] == "WORKFLOW_TASK_FAILED"][0]
            assert "not deterministic" in failed["attributes"]["failure"]["message"]
            assert failed["attributes"]["failure"]["type"] == "NonDeterminismError"
            info = _describe(node, "d-1")["workflowExecutionInfo"]
            assert info["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"
        finally:
            w2.stop()


@workflow(name="waiter")
async def waiter() -> str:
    seen: list = []
    workflow.set_signal_handler("note", seen.append)
    workflow.set_query_handler("seen", lambda: list(seen))
    try:
        await workflow.wait_condition(lambda: "stop" in seen)
    except BaseException:
        workflow.logger.info("cancelled with %s", seen)
        raise
    return ",".join(seen)


@pytest.mark.timeout(60)
def test_a_worker_that_does_not_hold_the_run_replays_it_to_answer_a_query() -> None:
    with TestNode() as node:
        w1 = tasks.Worker(node.client(), "wait", workflows=[waiter])
        w1.start()
        try:
            status, rec = node.post(NS, {"workflowId": "w-1", "workflowType": {"name": "waiter"},
                                         "taskQueue": {"name": "wait"}})
            assert status == 200, rec
            status, body = node.post(f"{NS}/w-1/signal", {"name": "note", "input": "a"})
            assert status == 200, body
            node.wait_until(lambda: _event_types(node, "w-1")[-1] == "WORKFLOW_TASK_COMPLETED"
                            and "WORKFLOW_EXECUTION_SIGNALED" in _event_types(node, "w-1"))
        finally:
            w1.stop()
        w2 = tasks.Worker(node.client(), "wait", workflows=[waiter])
        w2.start()
        try:
            status, q = node.post(f"{NS}/w-1/query", {"queryType": "seen"})
            assert status == 200 and q["queryResult"] == ["a"], q
            status, q = node.post(f"{NS}/w-1/query", {"queryType": "nope"})
            assert status == 400 and "unknown query type" in str(q), q
            # A cancel reaches the code as CancelledError; letting it out cancels the run.
            status, body = node.post(f"{NS}/w-1/cancel", {"reason": "enough"})
            assert status == 200, body
            info = node.wait_until(
                lambda: (d := _describe(node, "w-1")["workflowExecutionInfo"])["status"]
                not in ("WORKFLOW_EXECUTION_STATUS_RUNNING", "WORKFLOW_EXECUTION_STATUS_CANCELING")
                and d, what="the run to be canceled")
            assert info["status"] == "WORKFLOW_EXECUTION_STATUS_CANCELED", info
        finally:
            w2.stop()


@workflow(name="three")
async def three(n: int) -> int:
    a = await workflow.execute_activity("inc", n)
    b = await workflow.execute_activity("inc", a)
    return await workflow.execute_activity("inc", b)  # type: ignore[no-any-return]


@pytest.mark.timeout(120)
def test_many_concurrent_workflows_each_complete_once(caplog: pytest.LogCaptureFixture) -> None:
    runs: dict[int, int] = {}
    lock = threading.Lock()

    def inc(n: int) -> int:
        with lock:
            runs[n] = runs.get(n, 0) + 1
        return n + 1

    count = 100
    with TestNode() as node:
        worker = tasks.Worker(node.client(), "three", workflows=[three], max_concurrent=20)
        worker.register_activity("inc", inc)
        worker.max_cached_runs = 10  # smaller than the number of runs: evictions and replays
        worker.start()
        try:
            for i in range(count):
                status, rec = node.post(NS, {"workflowId": f"t-{i}", "workflowType": {"name": "three"},
                                             "taskQueue": {"name": "three"}, "input": i * 10})
                assert status == 200, rec

            def all_closed() -> bool:
                status, body = node.get(f"{NS}?query=ExecutionStatus%3D'Running'")
                return status == 200 and not body["executions"]

            node.wait_until(all_closed, timeout=90, what="every workflow to close")
            for i in range(count):
                info = _describe(node, f"t-{i}")["workflowExecutionInfo"]
                assert info["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED", info
                assert info["result"] == i * 10 + 3
            assert all(v == 1 for v in runs.values()) and len(runs) == 3 * count
            # The cache evicts only runs whose step is not running: no task failed for it.
            assert not [r for r in caplog.records if "evicted" in r.getMessage()]
        finally:
            worker.stop()


@workflow(name="counter")
async def counter(n: int) -> int:
    await workflow.sleep(timedelta(minutes=1))
    if n < 3:
        workflow.continue_as_new(n + 1)
    return n


@workflow(name="broken")
async def broken() -> None:
    await workflow.sleep(1)
    raise ValueError("the code gave up")


@pytest.mark.timeout(60)
def test_continue_as_new_and_failure_end_to_end() -> None:
    with TestNode() as node:
        worker = tasks.Worker(node.client(), "misc", workflows=[counter])
        worker.register("kaputt", broken)  # a @workflow registered under another type name
        worker.start()
        try:
            for wid, wtype, inp in (("c-1", "counter", 1), ("b-1", "kaputt", None)):
                status, rec = node.post(NS, {"workflowId": wid, "workflowType": {"name": wtype},
                                             "taskQueue": {"name": "misc"}, "input": inp})
                assert status == 200, rec

            def latest(wid: str) -> dict[str, Any]:
                return _describe(node, wid)["workflowExecutionInfo"]  # type: ignore[no-any-return]

            for _ in range(3):  # each run sleeps a minute of the fake clock
                node.wait_until(lambda: "TIMER_STARTED" in _event_types(node, "c-1"))
                rid = latest("c-1")["execution"]["runId"]
                node.clock.advance(60)
                node.wait_until(lambda: latest("c-1")["execution"]["runId"] != rid  # noqa: B023
                                or latest("c-1")["status"] != "WORKFLOW_EXECUTION_STATUS_RUNNING")
            info = node.wait_until(
                lambda: (d := latest("c-1"))["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"
                and d, what="the last run of the chain")
            assert info["result"] == 3 and info.get("continuedFromRunId")
            status, runs = node.get(f"{NS}/c-1/executions")
            assert [r["status"] for r in runs["executions"]] == [
                "WORKFLOW_EXECUTION_STATUS_COMPLETED"] + ["WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW"] * 2

            failed = node.wait_until(
                lambda: (d := latest("b-1"))["status"] == "WORKFLOW_EXECUTION_STATUS_FAILED" and d,
                what="the failed run")
            assert failed["lastFailure"]["message"] == "the code gave up"
            assert failed["lastFailure"]["type"] == "ValueError"
        finally:
            worker.stop()


@workflow(name="long")
async def long_history(n: int) -> int:
    total = 0
    for i in range(n):
        total += await workflow.execute_activity("one", i)
    return total


class ForgetfulWorker(tasks.Worker):
    """Forgets every run after each task: every task is a full replay from paged history."""

    async def _run_durable(self, run: Any, defn: Any) -> None:
        await super()._run_durable(run, defn)
        self.evict(run.body["run_id"])


@pytest.mark.timeout(120)
def test_full_replays_page_a_history_longer_than_one_delivery() -> None:
    n = 180  # about 7 events a step: over the 1000 events one delivery carries
    with TestNode() as node:
        worker = ForgetfulWorker(node.client(), "long", workflows=[long_history])
        worker.register_activity("one", lambda i: 1)
        worker.start()
        try:
            status, rec = node.post(NS, {"workflowId": "l-1", "workflowType": {"name": "long"},
                                         "taskQueue": {"name": "long"}, "input": n})
            assert status == 200, rec
            info = node.wait_until(
                lambda: (d := _describe(node, "l-1")["workflowExecutionInfo"])["status"]
                != "WORKFLOW_EXECUTION_STATUS_RUNNING" and d, timeout=90,
                what="the long workflow to close")
            assert info["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED", info
            assert info["result"] == n and info["historyLength"] > 1000
            assert worker.durable_stats["sticky"] == 0
        finally:
            worker.stop()


@workflow(name="second-time-lucky")
async def second_time_lucky() -> int:
    await workflow.execute_activity("one", None)
    attempt = workflow.info().attempt
    if attempt == 1:
        raise ValueError("first attempt fails")
    return attempt


@pytest.mark.timeout(60)
def test_a_retried_workflow_attempt_replays_only_its_own_history() -> None:
    ran: list[int] = []
    with TestNode(clock=FakeClock(ticking=True)) as node:
        worker = tasks.Worker(node.client(), "retry", workflows=[second_time_lucky])
        worker.register_activity("one", lambda: ran.append(1))
        worker.start()
        try:
            status, rec = node.post(NS, {
                "workflowId": "r-1", "workflowType": {"name": "second-time-lucky"},
                "taskQueue": {"name": "retry"},
                "retryPolicy": {"initialInterval": "100ms", "maximumAttempts": 2}})
            assert status == 200, rec
            info = node.wait_until(
                lambda: (d := _describe(node, "r-1")["workflowExecutionInfo"])["status"]
                != "WORKFLOW_EXECUTION_STATUS_RUNNING" and d, what="the second attempt")
            assert info["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED", info
            assert info["result"] == 2 and len(ran) == 2  # each attempt ran its activity
            assert "WORKFLOW_EXECUTION_ATTEMPT_FAILED" in _event_types(node, "r-1")
        finally:
            worker.stop()


@workflow(name="two-steps")
async def two_steps() -> list:
    a = await workflow.execute_activity("step-a")
    b = await workflow.execute_activity("step-b")
    return [a, b]


@pytest.mark.timeout(60)
def test_reset_to_a_completed_workflow_task_reruns_from_there() -> None:
    counts = {"a": 0, "b": 0}

    def step(name: str) -> Any:
        def run() -> int:
            counts[name] += 1
            return counts[name]
        return run

    with TestNode() as node:
        worker = tasks.Worker(node.client(), "reset", workflows=[two_steps])
        worker.register_activity("step-a", step("a"))
        worker.register_activity("step-b", step("b"))
        worker.start()
        try:
            status, rec = node.post(NS, {"workflowId": "x-1", "workflowType": {"name": "two-steps"},
                                         "taskQueue": {"name": "reset"}})
            assert status == 200, rec
            node.wait_until(lambda: _describe(node, "x-1")["workflowExecutionInfo"]["status"]
                            == "WORKFLOW_EXECUTION_STATUS_COMPLETED")
            events = _history(node, "x-1")["events"]
            # The workflow task that saw step-a's result and scheduled step-b.
            done = [e for e in events if e["eventType"] == "WORKFLOW_TASK_COMPLETED"][1]
            for event_id in (done["eventId"], done["eventId"] - 1):  # its COMPLETED, its STARTED
                status, new = node.post(f"{NS}/x-1/reset",
                                        {"eventId": event_id, "reason": "test"})
                assert status == 200, new
                rid = new["execution"]["runId"]
                info = node.wait_until(
                    lambda: (d := node.get(f"{NS}/x-1?runId={rid}")[1]["workflowExecutionInfo"])[  # noqa: B023
                        "status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED" and d,
                    what="the reset run to complete")
                assert info["result"][0] == 1  # step-a's recorded result, not run again
            assert counts == {"a": 1, "b": 3}
        finally:
            worker.stop()


release_spin = threading.Event()


@workflow(name="spinner")
async def spinner() -> str:
    while not release_spin.is_set():  # never yields: blocks its thread
        pass
    return "released"


@pytest.mark.timeout(60)
def test_workflow_code_that_never_yields_fails_its_task_with_where_it_is_stuck() -> None:
    release_spin.clear()
    with TestNode(clock=FakeClock(ticking=True)) as node:
        worker = tasks.Worker(node.client(), "spin", workflows=[spinner])
        worker.workflow_step_timeout = 0.3
        worker.start()
        try:
            status, rec = node.post(NS, {"workflowId": "sp-1", "workflowType": {"name": "spinner"},
                                         "taskQueue": {"name": "spin"}})
            assert status == 200, rec
            node.wait_until(lambda: "WORKFLOW_TASK_FAILED" in _event_types(node, "sp-1"),
                            what="the deadlock to be reported")
            failed = [e for e in _history(node, "sp-1")["events"]
                      if e["eventType"] == "WORKFLOW_TASK_FAILED"][0]["attributes"]["failure"]
            assert failed["type"] == "DeadlockError", failed
            assert "did not yield" in failed["message"] and "test_worker_e2e.py" in failed["message"]
            release_spin.set()
            info = node.wait_until(
                lambda: (d := _describe(node, "sp-1")["workflowExecutionInfo"])["status"]
                != "WORKFLOW_EXECUTION_STATUS_RUNNING" and d, what="the retried task")
            assert info["result"] == "released", info
        finally:
            release_spin.set()
            worker.stop()
