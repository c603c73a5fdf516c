"""The deterministic executor against histories written as the shard writes them."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from hanzo_tasks.workflow import (
    ActivityError,
    ChildWorkflowError,
    ExternalWorkflowError,
    NonDeterminismError,
    Replayer,
    RetryPolicy,
    activity,
    workflow,
)

from .fakeserver import START_MS, FakeRun


@activity
def charge(order: dict) -> str:
    return f"receipt-{order['id']}"


@activity(name="ship-it")
async def ship(order: dict) -> str:
    return "shipped"


@workflow
async def checkout(order: dict) -> dict:
    receipt = await workflow.execute_activity(
        charge, order, start_to_close_timeout=timedelta(seconds=30),
        retry_policy=RetryPolicy(maximum_attempts=3))
    await workflow.sleep(timedelta(days=1))
    shipped = await workflow.execute_activity(ship, order)
    return {"receipt": receipt, "shipped": shipped}


def test_names_default_from_the_function_and_can_be_set() -> None:
    assert checkout.__tasks_workflow__.name == "checkout"
    assert charge.__tasks_activity__.name == "charge"
    assert ship.__tasks_activity__.name == "ship-it"

    @workflow(name="renamed")
    async def other() -> None:
        return None

    assert other.__tasks_workflow__.name == "renamed"
    assert charge({"id": 1}) == "receipt-1"  # still a plain function


def test_activity_timer_activity_then_complete() -> None:
    run = FakeRun(checkout, {"id": 7})
    cmds = run.run_task()
    assert cmds == [{
        "type": "ScheduleActivityTask", "activity_type": "charge", "input": {"id": 7},
        "activity_id": "1", "start_to_close_timeout_ms": 30_000,
        "retry_policy": {"initial_interval_ms": 1000, "backoff_coefficient": 2.0,
                         "maximum_attempts": 3, "non_retryable_error_types": []},
    }]
    run.complete_activity("1", "receipt-7")
    assert run.run_task() == [
        {"type": "StartTimer", "timer_id": "1", "start_to_fire_timeout_ms": 86_400_000}]
    run.advance(86_400)
    run.fire_timer("1")
    cmds = run.run_task()
    assert [c["type"] for c in cmds] == ["ScheduleActivityTask"]
    assert cmds[0]["activity_type"] == "ship-it" and cmds[0]["activity_id"] == "2"
    run.complete_activity("2", "shipped")
    assert run.run_task() == [{"type": "CompleteWorkflowExecution",
                               "result": {"receipt": "receipt-7", "shipped": "shipped"}}]
    Replayer([checkout]).replay({"events": run.events}, run_id="run-1")


def test_activity_failure_reaches_the_code_and_an_exception_fails_the_run() -> None:
    @workflow
    async def careful() -> str:
        try:
            await workflow.execute_activity("flaky", None)
        except ActivityError as e:
            return f"handled: {e}"
        return "no error"

    @workflow
    async def careless() -> None:
        await workflow.execute_activity("flaky")
        raise AssertionError("not reached")

    run = FakeRun(careful)
    run.run_task()
    run.fail_activity("1", "boom")
    assert run.run_task() == [{"type": "CompleteWorkflowExecution", "result": "handled: boom"}]

    run = FakeRun(careless)
    run.run_task()
    run.fail_activity("1", "boom")
    [cmd] = run.run_task()
    assert cmd["type"] == "FailWorkflowExecution"
    assert cmd["failure"]["type"] == "ActivityError" and cmd["failure"]["message"] == "boom"


def test_now_is_the_task_time_and_random_replays() -> None:
    seen: list[tuple] = []

    @workflow
    async def clocky() -> list:
        first = (workflow.now(), workflow.random(), str(workflow.uuid4()))
        await workflow.sleep(60)
        second = (workflow.now(), workflow.random(), str(workflow.uuid4()))
        seen.append((first, second))
        return [first[0].isoformat(), second[0].isoformat(), first[2], second[2]]

    run = FakeRun(clocky, check_fresh=False)
    run.run_task()
    run.advance(60)
    run.fire_timer("1")
    [done] = run.run_task()
    first, second = seen[0]
    assert first[0].timestamp() * 1000 == START_MS
    assert second[0].timestamp() * 1000 == START_MS + 60_000
    assert first[1] != second[1] and first[2] != second[2]
    # A fresh executor for the same run sees the same values; another run does not.
    Replayer([clocky]).replay(run.events, run_id="run-1")
    assert seen[1] == seen[0]
    Replayer([clocky]).replay(run.events, run_id="run-other")
    assert seen[2][0][1] != seen[0][0][1]
    assert done["result"][2] == first[2]


def test_signal_while_waiting_on_a_condition() -> None:
    @workflow
    async def approval() -> list:
        got: list = []
        workflow.set_signal_handler("approve", got.append)
        await workflow.wait_condition(lambda: len(got) >= 2)
        return got

    run = FakeRun(approval)
    assert run.run_task() == []  # waiting: no command
    run.signal("approve", "alice")
    assert run.run_task() == []
    run.signal("approve", "bob")
    assert run.run_task() == [{"type": "CompleteWorkflowExecution", "result": ["alice", "bob"]}]
    Replayer([approval]).replay(run.events, run_id="run-1")


def test_signals_before_the_handler_is_set_are_buffered_in_order() -> None:
    @workflow
    async def late() -> list:
        await workflow.sleep(5)
        got: list = []
        workflow.set_signal_handler("s", got.append)
        return got

    run = FakeRun(late)
    run.run_task()
    run.signal("s", 1)
    run.run_task()
    run.signal("s", 2)
    run.fire_timer("1")
    assert run.run_task() == [{"type": "CompleteWorkflowExecution", "result": [1, 2]}]


def test_class_workflow_with_signal_and_query_handlers() -> None:
    @workflow
    class Counter:
        def __init__(self) -> None:
            self.total = 0
            self.done = False

        @workflow.signal
        def add(self, n: int) -> None:
            self.total += n

        @workflow.signal(name="finish")
        async def finish(self) -> None:
            self.done = True

        @workflow.query
        def value(self) -> int:
            return self.total

        async def run(self, start: int) -> int:
            self.total = start
            await workflow.wait_condition(lambda: self.done)
            return self.total

    run = FakeRun(Counter, 10)
    assert run.run_task() == []
    run.signal("add", 5)
    run.run_task()
    assert run.executor.query("value", None) == 15
    run.signal("finish")
    assert run.run_task() == [{"type": "CompleteWorkflowExecution", "result": 15}]


def test_wait_condition_timeout_starts_and_cancels_a_durable_timer() -> None:
    @workflow
    async def maybe() -> str:
        flag: list = []
        workflow.set_signal_handler("go", lambda: flag.append(1))
        try:
            await workflow.wait_condition(lambda: bool(flag), timeout=timedelta(hours=1))
        except TimeoutError:
            return "timed out"
        return "signaled"

    run = FakeRun(maybe)
    assert run.run_task() == [
        {"type": "StartTimer", "timer_id": "1", "start_to_fire_timeout_ms": 3_600_000}]
    run.signal("go")
    assert run.run_task() == [{"type": "CancelTimer", "timer_id": "1"},
                              {"type": "CompleteWorkflowExecution", "result": "signaled"}]
    Replayer([maybe]).replay(run.events, run_id="run-1")

    run = FakeRun(maybe)
    run.run_task()
    run.fire_timer("1")
    assert run.run_task() == [{"type": "CompleteWorkflowExecution", "result": "timed out"}]


def test_parallel_activities_with_gather() -> None:
    @workflow
    async def fanout(n: int) -> list:
        return list(await asyncio.gather(
            *(workflow.execute_activity("square", i) for i in range(n))))

    run = FakeRun(fanout, 3)
    cmds = run.run_task()
    assert [(c["activity_id"], c["input"]) for c in cmds] == [("1", 0), ("2", 1), ("3", 2)]
    run.complete_activity("3", 4)
    assert run.run_task() == []
    run.complete_activity("1", 0)
    run.complete_activity("2", 1)
    assert run.run_task() == [{"type": "CompleteWorkflowExecution", "result": [0, 1, 4]}]


def test_continue_as_new() -> None:
    @workflow
    async def looping(n: int) -> int:
        await workflow.sleep(1)
        if n < 3:
            workflow.continue_as_new(n + 1)
        return n

    run = FakeRun(looping, 1)
    run.run_task()
    run.fire_timer("1")
    assert run.run_task() == [{"type": "ContinueAsNew", "input": 2}]
    assert run.closed == "CONTINUED_AS_NEW"
    Replayer([looping]).replay(run.events, run_id="run-1")


def test_cancel_request_cancels_the_code() -> None:
    @workflow
    async def sleepy() -> str:
        await workflow.sleep(timedelta(days=30))
        return "woke"

    run = FakeRun(sleepy)
    run.run_task()
    run.cancel()
    assert run.run_task() == [{"type": "CancelTimer", "timer_id": "1"},
                              {"type": "CancelWorkflowExecution"}]


def test_child_workflow_completes_and_fails() -> None:
    @workflow
    async def parent(x: int) -> object:
        a = await workflow.execute_child_workflow("kid", x, id="kid-a")
        try:
            await workflow.execute_child_workflow("kid", x + 1)
        except ChildWorkflowError as e:
            return [a, str(e)]
        return [a, None]

    run = FakeRun(parent, 1)
    assert run.run_task() == [{"type": "StartChildWorkflowExecution", "workflow_type": "kid",
                               "input": 1, "workflow_id": "kid-a"}]
    run.child_started("kid-a")
    run.child_completed("kid-a", "A")
    [cmd] = run.run_task()
    assert cmd["workflow_id"] == "wf-1-child-2"
    run.child_failed("wf-1-child-2", "bad kid")
    [done] = run.run_task()
    assert done == {"type": "CompleteWorkflowExecution",
                    "result": ["A", "child workflow wf-1-child-2 failed: bad kid"]}
    # Default child ids are made from the parent's workflow id: replay with it.
    Replayer([parent]).replay(run.events, workflow_id="wf-1", run_id="run-1")


def test_side_effect_and_patched_replay_recorded_values() -> None:
    calls: list[int] = []

    @workflow
    async def effects() -> list:
        v = workflow.side_effect(lambda: calls.append(1) or len(calls))
        await workflow.sleep(1)
        return [v, workflow.patched("v2")]

    run = FakeRun(effects, check_fresh=False)
    run.run_task()
    run.fire_timer("1")
    [marker, done] = run.run_task()
    assert marker["marker_name"] == "Patch" and done["result"] == [1, True]
    Replayer([effects]).replay(run.events, run_id="run-1")
    assert calls == [1]  # the replay used the recorded value


def test_a_failed_workflow_task_is_skipped_on_replay() -> None:
    run = FakeRun(checkout, {"id": 1})
    run.run_task(fail_task=True)  # the worker failed this task: nothing happened
    cmds = run.run_task()
    assert [c["activity_id"] for c in cmds] == ["1"]
    Replayer([checkout]).replay(run.events, run_id="run-1")


# -- non-determinism ------------------------------------------------------------------------


def _history_of_checkout() -> list[dict]:
    run = FakeRun(checkout, {"id": 7})
    run.run_task()
    run.complete_activity("1", "r")
    run.run_task()
    run.fire_timer("1")
    run.run_task()
    run.complete_activity("2", "s")
    run.run_task()
    return run.events


def test_a_renamed_activity_is_a_non_determinism_error_naming_event_and_line() -> None:
    events = _history_of_checkout()

    @workflow(name="checkout")
    async def changed(order: dict) -> dict:
        await workflow.execute_activity("refund", order)
        return {}

    with pytest.raises(NonDeterminismError) as err:
        Replayer([changed]).replay(events)
    msg = str(err.value)
    assert "event 5 ACTIVITY_TASK_SCHEDULED" in msg and "activityType='charge'" in msg
    assert "activity_type='refund'" in msg and "test_executor.py" in msg


def test_reordered_commands_are_caught() -> None:
    events = _history_of_checkout()

    @workflow(name="checkout")
    async def reordered(order: dict) -> dict:
        await workflow.sleep(timedelta(days=1))
        await workflow.execute_activity(charge, order)
        return {}

    with pytest.raises(NonDeterminismError, match="StartTimer"):
        Replayer([reordered]).replay(events)


def test_a_command_missing_from_history_is_caught() -> None:
    events = _history_of_checkout()

    @workflow(name="checkout")
    async def extra(order: dict) -> dict:
        await workflow.execute_activity(charge, order)
        await workflow.execute_activity("audit", order)
        return {}

    with pytest.raises(NonDeterminismError, match="no event for it|activity_type='audit'"):
        Replayer([extra]).replay(events)


def test_a_history_event_the_code_does_not_issue_is_caught() -> None:
    events = _history_of_checkout()

    @workflow(name="checkout")
    async def fewer(order: dict) -> dict:
        return {}

    with pytest.raises(NonDeterminismError, match="ACTIVITY_TASK_SCHEDULED"):
        Replayer([fewer]).replay(events)


def test_the_unchanged_code_replays_cleanly() -> None:
    Replayer([checkout]).replay(_history_of_checkout())


def test_cancelling_an_awaited_activity_asks_the_server_to_cancel_it() -> None:
    @workflow
    async def impatient() -> str:
        try:
            await asyncio.wait_for(workflow.execute_activity("slow"), timeout=10)
        except TimeoutError:
            return "gave up"
        return "finished"

    run = FakeRun(impatient)
    cmds = run.run_task()
    assert sorted(c["type"] for c in cmds) == ["ScheduleActivityTask", "StartTimer"]
    run.fire_timer("1")
    scheduled = run.activities["1"]
    assert run.run_task() == [
        {"type": "RequestCancelActivityTask", "scheduled_event_id": scheduled},
        {"type": "CompleteWorkflowExecution", "result": "gave up"}]
    Replayer([impatient]).replay(run.events, run_id="run-1")


def test_an_activity_cancelled_in_the_step_that_scheduled_it_is_never_sent() -> None:
    @workflow
    async def fickle() -> str:
        task = asyncio.ensure_future(workflow.execute_activity("never"))
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "ran"

    run = FakeRun(fickle)
    assert run.run_task() == [{"type": "CompleteWorkflowExecution", "result": "cancelled"}]


def test_query_handler_may_not_issue_commands_and_unknown_queries_raise() -> None:
    @workflow
    async def q() -> None:
        workflow.set_query_handler("peek", lambda: workflow.info().workflow_id)
        await workflow.wait_condition(lambda: False)

    run = FakeRun(q)
    run.run_task()
    assert run.executor.query("peek", None) == "wf-1"
    with pytest.raises(KeyError):
        run.executor.query("nope", None)


def test_logger_is_silent_during_replay(caplog: pytest.LogCaptureFixture) -> None:
    @workflow
    async def chatty() -> None:
        workflow.logger.warning("step %s", "one")
        await workflow.sleep(1)
        workflow.logger.warning("step %s", "two")

    run = FakeRun(chatty, check_fresh=False)
    with caplog.at_level("WARNING", logger="hanzo_tasks.workflow.code"):
        run.run_task()
        run.fire_timer("1")
        run.run_task()
        Replayer([chatty]).replay(run.events, run_id="run-1")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["[chatty wf-1] step one", "[chatty wf-1] step two"]


def test_history_of_a_retried_attempt_starts_after_attempt_failed() -> None:
    @workflow
    async def twice() -> str:
        await workflow.execute_activity("x")
        return "ok"

    run = FakeRun(twice)
    run.run_task()
    # The first attempt failed; the server dropped its activities and scheduled attempt 2.
    run.add("WORKFLOW_EXECUTION_ATTEMPT_FAILED", failure={"message": "m"}, attempt=1)
    run.activities.clear()
    run.wt_pending = False
    run.schedule_task()
    run.executor = type(run.executor)(run.defn, run.info)  # a new attempt: a fresh executor
    cmds = run.run_task()
    assert [c["type"] for c in cmds] == ["ScheduleActivityTask"]


def test_close_while_a_step_holds_the_executor_waits_for_the_step() -> None:
    @workflow
    async def idle() -> None:
        await workflow.wait_condition(lambda: False)

    run = FakeRun(idle)
    run.run_task()
    ex = run.executor
    with ex.lock:  # a step (or query) running on another thread
        ex.close()
        assert not ex.loop.is_closed()
        ex.close_if_doomed()  # what the step does as it ends
    assert ex.loop.is_closed()


def test_signal_and_cancel_other_workflows() -> None:
    @workflow
    async def messenger() -> str:
        await workflow.signal_external_workflow("other", "ping", 1)
        try:
            await workflow.cancel_external_workflow("gone")
        except ExternalWorkflowError as e:
            return str(e)
        return "cancelled"

    run = FakeRun(messenger)
    run.unknown_workflows.add("gone")
    assert run.run_task() == [{"type": "SignalExternalWorkflowExecution", "workflow_id": "other",
                               "signal_name": "ping", "input": 1}]
    assert run.run_task() == [{"type": "RequestCancelExternalWorkflowExecution",
                               "workflow_id": "gone"}]
    [done] = run.run_task()
    assert "could not cancel workflow gone" in done["result"]
    Replayer([messenger]).replay(run.events, run_id="run-1")


def test_outcome_events_between_command_events_and_the_close_replay() -> None:
    @workflow
    async def fire_and_finish() -> str:
        task = asyncio.ensure_future(workflow.signal_external_workflow("other", "bye"))
        await asyncio.sleep(0)  # the command leaves with this task's completion
        del task
        return "done"

    run = FakeRun(fire_and_finish)
    cmds = run.run_task()
    assert [c["type"] for c in cmds] == ["SignalExternalWorkflowExecution",
                                         "CompleteWorkflowExecution"]
    types = [e["eventType"] for e in run.events[-3:]]
    assert types == ["SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED",
                     "EXTERNAL_WORKFLOW_EXECUTION_SIGNALED", "WORKFLOW_EXECUTION_COMPLETED"]
    Replayer([fire_and_finish]).replay(run.events, run_id="run-1")


def test_a_task_cut_short_by_a_reset_is_not_the_live_one() -> None:
    run = FakeRun(checkout, {"id": 3})
    run.run_task()
    run.complete_activity("1", "r")
    # A reset to the started event of the second task: events up to it are copied, then
    # WORKFLOW_EXECUTION_RESET and a new WORKFLOW_TASK_SCHEDULED (SPEC §5.4).
    run.add("WORKFLOW_TASK_STARTED", scheduledEventId=len(run.events))
    run.add("WORKFLOW_EXECUTION_RESET", baseRunId="run-0", eventId=len(run.events),
            reason="test", identity="t")
    run.add("WORKFLOW_TASK_SCHEDULED", attempt=1)
    run.executor = type(run.executor)(run.defn, run.info)  # a reset run: a new executor
    assert run.run_task() == [
        {"type": "StartTimer", "timer_id": "1", "start_to_fire_timeout_ms": 86_400_000}]
