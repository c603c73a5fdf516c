"""The sandbox: workflow code that reads clocks, randomness or the network fails its task."""

from __future__ import annotations

import datetime
import random
import socket
import threading
import time
import uuid
from datetime import datetime as imported_datetime
from time import time as imported_time

import pytest
from hanzo_tasks.workflow import WorkflowSandboxError, workflow

from .fakeserver import FakeRun

CASES = {
    "time.time": lambda: time.time(),
    "imported time": lambda: imported_time(),
    "time.sleep": lambda: time.sleep(0.01),
    "datetime.now": lambda: datetime.datetime.now(),
    "imported datetime.now": lambda: imported_datetime.now(),
    "date.today": lambda: datetime.date.today(),
    "random.random": lambda: random.random(),
    "random.randint": lambda: random.randint(1, 6),
    "uuid.uuid4": lambda: uuid.uuid4(),
    "socket": lambda: socket.socket(),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_blocked_call_fails_the_workflow_task_with_a_clear_error(name: str) -> None:
    call = CASES[name]

    @workflow(name="bad")
    async def bad() -> object:
        return call()

    run = FakeRun(bad, check_fresh=False)
    with pytest.raises(WorkflowSandboxError) as err:
        run.run_task()
    msg = str(err.value)
    assert "not allowed in workflow code" in msg and "test_sandbox.py" in msg


def test_catching_the_error_in_workflow_code_does_not_hide_it() -> None:
    @workflow
    async def sneaky() -> str:
        try:
            time.time()
        except Exception:  # noqa: BLE001
            return "hidden"
        return "no"

    with pytest.raises(WorkflowSandboxError, match=r"time\.time"):
        FakeRun(sneaky, check_fresh=False).run_task()


def test_the_guard_is_lifted_after_the_step_and_other_threads_are_untouched() -> None:
    seen: list[float] = []
    stop = threading.Event()

    def other_thread() -> None:
        while not stop.is_set():
            seen.append(time.time())  # never blocked: the guard is per thread

    @workflow
    async def fine() -> str:
        workflow.logger.info("logging is allowed")
        return str(workflow.uuid4())

    t = threading.Thread(target=other_thread)
    t.start()
    try:
        for _ in range(20):
            [cmd] = FakeRun(fine).run_task()
            assert cmd["type"] == "CompleteWorkflowExecution"
    finally:
        stop.set()
        t.join()
    assert seen
    assert time.time() > 0 and random.random() >= 0  # lifted on this thread too


def test_a_query_that_breaks_the_sandbox_fails_alone() -> None:
    @workflow
    async def asked() -> str:
        workflow.set_query_handler("clock", lambda: time.time())
        await workflow.sleep(1)
        return "ok"

    run = FakeRun(asked)
    run.run_task()
    with pytest.raises(WorkflowSandboxError):
        run.executor.query("clock", None)
    run.fire_timer("1")
    assert run.run_task() == [{"type": "CompleteWorkflowExecution", "result": "ok"}]


def test_a_gc_callback_reading_the_clock_during_a_step_is_not_the_workflows_doing() -> None:
    """Test tools and profilers time the collector with ``gc.callbacks``; a collection
    during a step runs them on the workflow's thread. Only the workflow's own calls count."""
    import gc

    timed: list[float] = []

    def gc_timer(phase: str, info: dict[str, int]) -> None:
        timed.append(time.perf_counter())

    @workflow(name="collects")
    async def collects() -> str:
        gc.collect()
        return "ok"

    gc.callbacks.append(gc_timer)
    try:
        cmds = FakeRun(collects, check_fresh=False).run_task()
    finally:
        gc.callbacks.remove(gc_timer)
    assert timed, "the collector never ran the callback"
    assert cmds and cmds[-1]["type"] == "CompleteWorkflowExecution", cmds
