"""``tasks.Worker`` (SPEC §3) against a fake ZAP server built on ``protocol.zap``.

The fake pushes DeliverWorkflowTask (0xB0) and friends exactly as §8.5 lays
them out and records what the worker sends back. Heartbeat intervals are
shrunk with ``MIN_WORKFLOW_HEARTBEAT_S`` and a small ``task_timeout_ms``, so
that heartbeat tests take tenths of a second, not seconds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import hanzo_tasks as tasks
import pytest
from hanzo_tasks import worker_activities, worker_workflows
from hanzo_tasks.protocol import zap as Z

from .conftest import wait_until
from .zapfake import FakeConn, FakeZap, Reply, workflow_task

A2 = Z.Op.RespondWorkflowTaskCompleted


@pytest.fixture
def fake() -> Iterator[FakeZap]:
    f = FakeZap().start()
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture
def client(fake: FakeZap) -> Iterator[tasks.Client]:
    c = tasks.Client(zap_addr=fake.addr)
    try:
        yield c
    finally:
        c.stop(timeout=1)


@pytest.fixture
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_workflows, "MIN_WORKFLOW_HEARTBEAT_S", 0.02)


def started(client: tasks.Client, fns: dict[str, Callable[..., Any]], **kw: Any) -> tasks.Worker:
    kw.setdefault("identity", "w-1")
    w = tasks.Worker(client, kw.pop("task_queue", "tasks"), **kw)
    for name, fn in fns.items():
        w.register(name, fn)
    w.start()
    return w


def deliver(fake: FakeZap, token: str = "tt-1", **kw: Any) -> dict[str, Any]:
    """Push a workflow task on the worker's subscription; the push-ack body."""
    kw.setdefault("sub", fake.subscription_id())
    return fake.push(Z.Op.DeliverWorkflowTask, workflow_task(token, **kw))


def responses(fake: FakeZap, n: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
    return fake.wait_for(A2, n, timeout)


def command(fake: FakeZap, token: str = "tt-1", timeout: float = 5.0) -> dict[str, Any]:
    """The single command the worker answered for ``token``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for body in fake.bodies(A2):
            if body["task_token"] == token:
                (cmd,) = body["commands"]
                return cmd
        time.sleep(0.005)
    raise AssertionError(f"no RespondWorkflowTaskCompleted for {token}")


# -- construction and subscription -------------------------------------------------------


def test_worker_needs_a_remote_client() -> None:
    with pytest.raises(tasks.FailedPrecondition):
        tasks.Worker(tasks.Client())


@pytest.mark.parametrize(
    "kw",
    [
        {"task_queue": "a/b"},
        {"max_concurrent": 0},
        {"max_concurrent": 1001},
        {"max_concurrent_activities": 0},
        {"identity": ""},
        {"namespace": ".."},
    ],
)
def test_bad_worker_arguments(client: tasks.Client, kw: dict[str, Any]) -> None:
    with pytest.raises(tasks.InvalidArgument):
        tasks.Worker(client, **kw)


def test_subscribe_body_and_no_activity_subscription(fake: FakeZap, client: tasks.Client) -> None:
    w = started(client, {"b": lambda: 1, "a": lambda: 2}, task_queue="q", max_concurrent=3)
    assert w.running
    assert fake.opcodes()[:2] == [Z.Op.Hello, Z.Op.SubscribeWorkflowTasks]
    (sub,) = fake.bodies(Z.Op.SubscribeWorkflowTasks)
    assert sub == {
        "task_queue": "q",
        "max_concurrent": 3,
        "identity": "w-1",
        "namespace": "default",
        "types": ["a", "b"],
    }
    assert fake.bodies(Z.Op.SubscribeActivityTasks) == []
    assert w.subscription_ids == {"workflow": fake.subscription_id()}


def test_catch_all_subscription_when_client_has_handler(fake: FakeZap) -> None:
    with tasks.Client(zap_addr=fake.addr, handler=lambda t, p: [t, p]) as c:
        w = tasks.Worker(c, identity="w-1", namespace="other")
        w.start()
        (sub,) = fake.bodies(Z.Op.SubscribeWorkflowTasks)
        assert "types" not in sub and sub["namespace"] == "other"
        assert deliver(fake, workflow_type="whatever", input={"x": 1}, namespace="other") == {
            "status": 200
        }
        assert command(fake) == {
            "type": "CompleteWorkflowExecution",
            "result": ["whatever", {"x": 1}],
        }
        w.stop(1)


def test_start_needs_something_to_run(client: tasks.Client) -> None:
    w = tasks.Worker(client)
    with pytest.raises(tasks.FailedPrecondition, match="nothing to run"):
        w.start()


def test_start_failure_raises_and_can_be_retried(fake: FakeZap, client: tasks.Client) -> None:
    def refuse(_c: FakeConn, _b: dict[str, Any]) -> None:
        raise Reply(400, "invalid_argument", "bad types")

    fake.handlers[Z.Op.SubscribeWorkflowTasks] = refuse
    w = tasks.Worker(client)
    w.register("a", lambda: None)
    with pytest.raises(tasks.InvalidArgument, match="bad types"):
        w.start()
    assert not w.running
    del fake.handlers[Z.Op.SubscribeWorkflowTasks]
    w.start()
    assert w.running


def test_register_after_start_resubscribes(fake: FakeZap, client: tasks.Client) -> None:
    w = started(client, {"a": lambda: None})
    sid = fake.subscription_id()
    w.register("c", lambda: None)
    w.register("c", lambda: 2)  # same type again: nothing to re-send
    subs = fake.bodies(Z.Op.SubscribeWorkflowTasks)
    assert len(subs) == 2
    assert subs[1]["types"] == ["a", "c"] and subs[1]["subscription_id"] == sid
    deliver(fake, workflow_type="c")
    assert command(fake) == {"type": "CompleteWorkflowExecution", "result": 2}


# -- running handlers and their outcomes -------------------------------------------------


def test_sync_handler_result_completes_the_workflow(fake: FakeZap, client: tasks.Client) -> None:
    seen: list[str] = []

    def wf(inp: Any) -> Any:
        seen.append(threading.current_thread().name)
        return {"got": inp, "tuple": (1, 2)}

    started(client, {"wf": wf})
    assert deliver(fake, input={"n": 1}) == {"status": 200}
    (body,) = responses(fake)
    assert body == {
        "task_token": "tt-1",
        "commands": [
            {"type": "CompleteWorkflowExecution", "result": {"got": {"n": 1}, "tuple": [1, 2]}}
        ],
        "identity": "w-1",
    }
    assert seen[0].startswith("tasks-worker")  # the worker's own pool
    ack = fake.acks[0]
    assert (ack.opcode, ack.body) == (Z.Op.DeliverWorkflowTask, {"status": 200})


def test_async_handlers_and_no_argument_calls(fake: FakeZap, client: tasks.Client) -> None:
    async def with_arg(inp: Any) -> Any:
        await asyncio.sleep(0.01)
        return inp * 2

    async def no_arg() -> str:
        return "none"

    started(client, {"double": with_arg, "plain": no_arg, "sync0": lambda: "s"})
    deliver(fake, "t1", workflow_type="double", input=21)
    deliver(fake, "t2", workflow_type="plain", input="ignored")
    deliver(fake, "t3", workflow_type="sync0", input="ignored")
    assert command(fake, "t1")["result"] == 42
    assert command(fake, "t2")["result"] == "none"
    assert command(fake, "t3")["result"] == "s"


def test_unknown_type_is_refused_with_400(fake: FakeZap, client: tasks.Client) -> None:
    started(client, {"wf": lambda: None})
    ack = deliver(fake, workflow_type="other")
    assert ack["status"] == 400
    time.sleep(0.05)
    assert fake.bodies(A2) == []


class Fatal(tasks.NonRetryableError):
    pass


@pytest.mark.parametrize(
    ("exc", "type_name", "non_retryable"),
    [
        (ValueError("bad input"), "ValueError", False),
        (tasks.NonRetryableError("give up"), "NonRetryableError", True),
        (Fatal("really"), "Fatal", True),
    ],
)
def test_exceptions_fail_the_workflow(
    fake: FakeZap, client: tasks.Client, exc: Exception, type_name: str, non_retryable: bool
) -> None:
    def wf() -> None:
        raise exc

    started(client, {"wf": wf})
    deliver(fake)
    cmd = command(fake)
    assert cmd["type"] == "FailWorkflowExecution"
    failure = dict(cmd["failure"])
    trace = failure.pop("stack_trace")
    assert failure == {"message": str(exc), "type": type_name, "non_retryable": non_retryable}
    assert type_name in trace and "in wf" in trace


def test_async_exception_fails_too(fake: FakeZap, client: tasks.Client) -> None:
    async def wf() -> None:
        raise KeyError("k")

    started(client, {"wf": wf})
    deliver(fake)
    assert command(fake)["failure"]["type"] == "KeyError"


@pytest.mark.parametrize("value", [{1, 2}, b"bytes", float("nan"), 2**70])
def test_unserializable_result_is_a_non_retryable_serialization_error(
    fake: FakeZap, client: tasks.Client, value: Any
) -> None:
    started(client, {"wf": lambda: value})
    deliver(fake)
    cmd = command(fake)
    assert cmd["type"] == "FailWorkflowExecution"
    assert cmd["failure"]["type"] == "SerializationError"
    assert cmd["failure"]["non_retryable"] is True


def test_canceled_exception_acknowledges_a_cancel(fake: FakeZap, client: tasks.Client) -> None:
    def wf() -> None:
        raise tasks.Canceled("ok, stopping")

    started(client, {"wf": wf})
    deliver(fake)
    assert command(fake) == {"type": "CancelWorkflowExecution"}


# -- slots -----------------------------------------------------------------------------


def test_push_ack_429_when_slots_are_full(fake: FakeZap, client: tasks.Client) -> None:
    release = threading.Event()

    def wf(n: int) -> int:
        release.wait(5)
        return n

    started(client, {"wf": wf}, max_concurrent=2)
    assert deliver(fake, "t1", input=1)["status"] == 200
    assert deliver(fake, "t2", input=2)["status"] == 200
    full = deliver(fake, "t3", input=3)
    assert full["status"] == 429 and full["error"]["code"] == "rate_limited"
    release.set()
    assert command(fake, "t1")["result"] == 1 and command(fake, "t2")["result"] == 2
    assert wait_until(lambda: deliver(fake, "t4", input=4)["status"] == 200)
    assert command(fake, "t4")["result"] == 4
    assert all(b["task_token"] != "t3" for b in fake.bodies(A2))


def test_sync_handlers_run_in_parallel_up_to_max_concurrent(
    fake: FakeZap, client: tasks.Client
) -> None:
    barrier = threading.Barrier(3, timeout=3)

    def wf() -> str:
        barrier.wait()  # only passes when three run at once
        return "ok"

    started(client, {"wf": wf}, max_concurrent=3)
    for i in range(3):
        deliver(fake, f"t{i}")
    for i in range(3):
        assert command(fake, f"t{i}")["result"] == "ok"


# -- heartbeats and cancellation ---------------------------------------------------------


def test_heartbeats_while_a_slow_handler_runs(
    fake: FakeZap, client: tasks.Client, fast_heartbeat: None
) -> None:
    def wf() -> str:
        time.sleep(0.3)
        return "done"

    started(client, {"wf": wf})
    deliver(fake, task_timeout_ms=60)  # max(0.02 s, 60 ms / 3) = 20 ms
    assert command(fake)["result"] == "done"
    beats = fake.bodies(Z.Op.RecordHeartbeat)
    assert len(beats) >= 3
    assert all(b == {"task_token": "tt-1"} for b in beats)
    n = len(beats)
    time.sleep(0.1)
    assert len(fake.bodies(Z.Op.RecordHeartbeat)) == n  # they stop with the handler


def test_heartbeat_interval_is_a_third_of_the_task_timeout(
    fake: FakeZap, client: tasks.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_workflows, "MIN_WORKFLOW_HEARTBEAT_S", 0.001)
    beats: list[float] = []

    def hb(_c: FakeConn, _b: dict[str, Any]) -> dict[str, Any]:
        beats.append(time.monotonic())
        return {"cancel_requested": False}

    fake.handlers[Z.Op.RecordHeartbeat] = hb

    def wf() -> None:
        time.sleep(0.45)

    started(client, {"wf": wf})
    t0 = time.monotonic()
    deliver(fake, task_timeout_ms=600)  # every 200 ms: at most 2 beats in 0.45 s
    command(fake)
    assert 1 <= len(beats) <= 2
    assert beats[0] - t0 >= 0.18


def test_cancel_requested_heartbeat_cancels_an_async_handler(
    fake: FakeZap, client: tasks.Client, fast_heartbeat: None
) -> None:
    beats = [0]
    cancelled = threading.Event()

    def hb(_c: FakeConn, body: dict[str, Any]) -> dict[str, Any]:
        beats[0] += 1
        return {"cancel_requested": beats[0] >= 3}

    fake.handlers[Z.Op.RecordHeartbeat] = hb

    async def wf() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started(client, {"wf": wf})
    deliver(fake, task_timeout_ms=60)
    assert command(fake) == {"type": "CancelWorkflowExecution"}
    assert cancelled.is_set() and beats[0] == 3


def test_cancel_requested_is_cooperative_for_sync_handlers(
    fake: FakeZap, client: tasks.Client, fast_heartbeat: None
) -> None:
    fake.handlers[Z.Op.RecordHeartbeat] = lambda c, b: {"cancel_requested": True}

    def wf() -> None:
        ctx = tasks.context()
        deadline = time.monotonic() + 3
        while not ctx.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.005)
        raise tasks.Canceled("stopping as asked")

    started(client, {"wf": wf})
    deliver(fake, task_timeout_ms=60)
    assert command(fake) == {"type": "CancelWorkflowExecution"}


def test_handler_may_complete_despite_a_cancel_request(
    fake: FakeZap, client: tasks.Client, fast_heartbeat: None
) -> None:
    fake.handlers[Z.Op.RecordHeartbeat] = lambda c, b: {"cancel_requested": True}

    async def wf() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "cleaned up"
        return "unreachable"

    started(client, {"wf": wf})
    deliver(fake, task_timeout_ms=60)
    assert command(fake) == {"type": "CompleteWorkflowExecution", "result": "cleaned up"}


def test_cancel_request_push_cancels(fake: FakeZap, client: tasks.Client) -> None:
    async def wf() -> None:
        await asyncio.sleep(10)

    started(client, {"wf": wf})
    deliver(fake)
    time.sleep(0.05)
    ack = fake.push(
        Z.Op.DeliverCancelRequest, {"kind": "workflow", "task_token": "tt-1", "reason": "r"}
    )
    assert ack == {"status": 200}
    assert command(fake) == {"type": "CancelWorkflowExecution"}


def test_delivery_for_a_canceling_run_cancels_at_once(fake: FakeZap, client: tasks.Client) -> None:
    async def wf() -> None:
        await asyncio.sleep(10)

    started(client, {"wf": wf})
    deliver(fake, cancel_requested=True)
    assert command(fake, timeout=2) == {"type": "CancelWorkflowExecution"}


def test_push_overtaking_its_subscribe_answer_is_still_taken(
    fake: FakeZap, client: tasks.Client
) -> None:
    started(client, {"wf": lambda: "ok"}, task_queue="q")
    # An id this worker has not recorded yet, but its queue and type: plausible, so taken.
    assert deliver(fake, "t1", sub="not-yet-known", task_queue="q")["status"] == 200
    assert command(fake, "t1")["result"] == "ok"
    # Another queue is not ours.
    assert deliver(fake, "t2", sub="not-yet-known", task_queue="other")["status"] == 400


def test_heartbeat_404_cancels_the_handler_and_sends_nothing(
    fake: FakeZap, client: tasks.Client, fast_heartbeat: None
) -> None:
    def stale(_c: FakeConn, _b: dict[str, Any]) -> None:
        raise Reply(404, "not_found", "task not current")

    fake.handlers[Z.Op.RecordHeartbeat] = stale
    cancelled = threading.Event()
    sync_saw_cancel = threading.Event()

    async def wf_async() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "no"

    def wf_sync() -> str:
        ctx = tasks.context()
        deadline = time.monotonic() + 3
        while not ctx.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.005)
        sync_saw_cancel.set()
        return "finished anyway"

    started(client, {"a": wf_async, "s": wf_sync})
    deliver(fake, "t-a", workflow_type="a", task_timeout_ms=60)
    deliver(fake, "t-s", workflow_type="s", task_timeout_ms=60)
    assert cancelled.wait(3) and sync_saw_cancel.wait(3)
    time.sleep(0.2)
    assert fake.bodies(A2) == []
    # Slots are free again.
    assert deliver(fake, "t-next", workflow_type="a")["status"] == 200


def test_explicit_heartbeat_from_a_sync_handler(fake: FakeZap, client: tasks.Client) -> None:
    fake.handlers[Z.Op.RecordHeartbeat] = lambda c, b: {"cancel_requested": True}

    def wf() -> bool:
        ctx = tasks.context()
        before = ctx.cancel_requested
        ctx.heartbeat()
        return [before, ctx.cancel_requested]  # type: ignore[return-value]

    started(client, {"wf": wf})
    deliver(fake)
    assert command(fake) == {"type": "CompleteWorkflowExecution", "result": [False, True]}
    assert fake.bodies(Z.Op.RecordHeartbeat) == [{"task_token": "tt-1"}]


# -- the task context ---------------------------------------------------------------------


def test_context_fields_and_signals(fake: FakeZap, client: tasks.Client) -> None:
    seen: dict[str, Any] = {}
    history = [
        {"eventId": 1, "eventType": "WORKFLOW_EXECUTION_STARTED", "attributes": {"input": 1}},
        {
            "eventId": 2,
            "eventType": "WORKFLOW_EXECUTION_SIGNALED",
            "attributes": {"signalName": "go", "input": {"speed": 3}},
        },
        {"eventId": 3, "eventType": "WORKFLOW_TASK_SCHEDULED", "attributes": {}},
        {
            "eventId": 4,
            "eventType": "WORKFLOW_EXECUTION_SIGNALED",
            "attributes": {"signalName": "stop", "input": None},
        },
    ]

    async def wf() -> None:
        ctx = tasks.context()
        await asyncio.sleep(0)
        assert tasks.context() is ctx  # survives awaits
        seen.update(
            namespace=ctx.namespace,
            task_queue=ctx.task_queue,
            workflow_id=ctx.workflow_id,
            run_id=ctx.run_id,
            workflow_type=ctx.workflow_type,
            attempt=ctx.attempt,
            task_attempt=ctx.task_attempt,
            signals=ctx.signals,
            cancel=ctx.cancel_requested,
        )

    started(client, {"order": wf}, task_queue="orders")
    deliver(
        fake,
        workflow_type="order",
        workflow_id="o-1",
        run_id="a" * 32,
        task_queue="orders",
        namespace="default",
        history=history,
        workflow_attempt=2,
        attempt=3,
    )
    command(fake)
    assert seen == {
        "namespace": "default",
        "task_queue": "orders",
        "workflow_id": "o-1",
        "run_id": "a" * 32,
        "workflow_type": "order",
        "attempt": 2,
        "task_attempt": 3,
        "signals": [{"name": "go", "input": {"speed": 3}}, {"name": "stop", "input": None}],
        "cancel": False,
    }


def test_context_outside_a_handler() -> None:
    with pytest.raises(tasks.FailedPrecondition):
        tasks.context()


def test_truncated_history_is_paged_for_signals(fake: FakeZap, client: tasks.Client) -> None:
    def page(_c: FakeConn, body: dict[str, Any]) -> dict[str, Any]:
        if not body.get("next_page_token"):
            assert body["after_event_id"] == 2
            ev = {
                "eventId": 3,
                "eventType": "WORKFLOW_EXECUTION_SIGNALED",
                "attributes": {"signalName": "s1", "input": 1},
            }
            return {"events": [ev], "next_page_token": "p2"}
        ev = {
            "eventId": 4,
            "eventType": "WORKFLOW_EXECUTION_SIGNALED",
            "attributes": {"signalName": "s2", "input": 2},
        }
        return {"events": [ev], "next_page_token": ""}

    fake.handlers[Z.Op.GetWorkflowHistory] = page
    history = [
        {"eventId": 1, "eventType": "WORKFLOW_EXECUTION_STARTED", "attributes": {}},
        {"eventId": 2, "eventType": "WORKFLOW_TASK_SCHEDULED", "attributes": {}},
    ]
    started(client, {"wf": lambda: [s["name"] for s in tasks.context().signals]})
    deliver(fake, history=history, history_truncated=True)
    assert command(fake)["result"] == ["s1", "s2"]


def _signal(eid: int, name: str) -> dict[str, Any]:
    return {"eventId": eid, "eventType": "WORKFLOW_EXECUTION_SIGNALED",
            "attributes": {"signalName": name, "input": None}}


def test_sticky_partial_history_keeps_earlier_signals(fake: FakeZap, client: tasks.Client) -> None:
    started(client, {"wf": lambda: [s["name"] for s in tasks.context().signals]})
    full = [{"eventId": 1, "eventType": "WORKFLOW_EXECUTION_STARTED", "attributes": {}}, _signal(2, "s1")]
    deliver(fake, "tt-1", history=full)
    assert command(fake, "tt-1")["result"] == ["s1"]
    deliver(fake, "tt-2", history=[_signal(6, "s2")], full_history=False, previous_started_event_id=4)
    assert command(fake, "tt-2")["result"] == ["s1", "s2"]


def test_sticky_partial_history_of_an_unknown_run_is_paged_from_the_start(
    fake: FakeZap, client: tasks.Client
) -> None:
    def page(_c: FakeConn, body: dict[str, Any]) -> dict[str, Any]:
        assert body["after_event_id"] == 0
        return {"events": [{"eventId": 1, "eventType": "WORKFLOW_EXECUTION_STARTED", "attributes": {}},
                           _signal(2, "s0"), _signal(6, "s1")], "next_page_token": ""}

    fake.handlers[Z.Op.GetWorkflowHistory] = page
    started(client, {"wf": lambda: [s["name"] for s in tasks.context().signals]})
    deliver(fake, "tt-9", history=[_signal(6, "s1")], full_history=False, previous_started_event_id=4)
    assert command(fake, "tt-9")["result"] == ["s0", "s1"]


def test_queries(fake: FakeZap, client: tasks.Client) -> None:
    release = threading.Event()

    def wf() -> None:
        ctx = tasks.context()
        ctx.set_query_handler("progress", lambda: {"pct": 50})
        ctx.set_query_handler("echo", lambda args: args)
        release.wait(5)

    started(client, {"wf": wf})
    deliver(fake, workflow_id="w", run_id="r" * 32)
    time.sleep(0.05)

    def ask(qt: str, token: str, run_id: str = "r" * 32, args: Any = None) -> dict[str, Any]:
        ack = fake.push(
            Z.Op.DeliverQuery,
            {
                "query_token": token,
                "namespace": "default",
                "workflow_id": "w",
                "run_id": run_id,
                "workflow_type": "wf",
                "query_type": qt,
                "args": args,
            },
        )
        assert ack == {"status": 200}
        for _ in range(500):
            for b in fake.bodies(Z.Op.RespondQuery):
                if b["query_token"] == token:
                    return b
            time.sleep(0.005)
        raise AssertionError("no RespondQuery")

    assert ask("progress", "q1") == {"query_token": "q1", "result": {"pct": 50}}
    assert ask("echo", "q2", args=[1, 2]) == {"query_token": "q2", "result": [1, 2]}
    assert ask("nope", "q3") == {"query_token": "q3", "error": "unknown query type"}
    assert ask("progress", "q4", run_id="x" * 32) == {"query_token": "q4", "error": "run not held"}
    trace = ask("__stack_trace", "q5")["result"]
    assert "in wf" in trace and "release.wait" in trace
    release.set()
    command(fake)


# -- reconnect -----------------------------------------------------------------------------


def test_reconnect_resubscribes(fake: FakeZap, client: tasks.Client) -> None:
    started(client, {"wf": lambda n: n + 1})
    first = fake.subscription_id()
    fake.drop()
    assert wait_until(
        lambda: len(fake.conns) == 2 and Z.Op.SubscribeWorkflowTasks in fake.opcodes(conn=1),
        timeout=3,
    )
    assert fake.opcodes(conn=1)[:2] == [Z.Op.Hello, Z.Op.SubscribeWorkflowTasks]
    sub = fake.bodies(Z.Op.SubscribeWorkflowTasks)[-1]
    assert "subscription_id" not in sub and sub["types"] == ["wf"]  # a fresh subscription
    second = fake.subscription_id()
    assert second != first
    assert deliver(fake, "t-after", input=1)["status"] == 200
    assert command(fake, "t-after")["result"] == 2


def test_running_handler_responds_on_the_new_connection(
    fake: FakeZap, client: tasks.Client
) -> None:
    release = threading.Event()

    def wf() -> str:
        release.wait(5)
        return "late"

    started(client, {"wf": wf})
    deliver(fake)
    fake.drop()
    assert wait_until(lambda: Z.Op.SubscribeWorkflowTasks in fake.opcodes(conn=1), timeout=3)
    release.set()
    assert command(fake)["result"] == "late"
    (resp,) = [r for r in fake.requests if r.opcode == A2]
    assert resp.conn == 1


def test_respond_is_retried_through_an_outage(fake: FakeZap, client: tasks.Client) -> None:
    fails = [0]

    def flaky(_c: FakeConn, _b: dict[str, Any]) -> dict[str, Any]:
        fails[0] += 1
        if fails[0] <= 2:
            raise Reply(503, "unavailable", "leader election")
        return {}

    fake.handlers[A2] = flaky
    started(client, {"wf": lambda: 1})
    deliver(fake)
    assert len(fake.wait_for(A2, 3)) == 3


# -- stop -----------------------------------------------------------------------------------


def test_stop_unsubscribes_and_waits_for_running_handlers(
    fake: FakeZap, client: tasks.Client
) -> None:
    def wf() -> str:
        time.sleep(0.2)
        return "finished"

    w = started(client, {"wf": wf})
    sid = fake.subscription_id()
    deliver(fake)
    w.stop(timeout=5)
    assert not w.running
    assert fake.bodies(Z.Op.Unsubscribe) == [{"subscription_id": sid}]
    assert command(fake, timeout=0.1)["result"] == "finished"
    ops = fake.opcodes()
    assert ops.index(Z.Op.Unsubscribe) < ops.index(A2)
    assert deliver(fake, "t-late", sub=sid)["status"] == 400  # nobody takes it now
    w.stop()  # idempotent
    with pytest.raises(tasks.FailedPrecondition):
        w.start()


def test_stop_timeout_cancels_handlers_without_responding(
    fake: FakeZap, client: tasks.Client
) -> None:
    cancelled = threading.Event()

    async def wf() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    w = started(client, {"wf": wf})
    deliver(fake)
    t0 = time.monotonic()
    w.stop(timeout=0.1)
    assert time.monotonic() - t0 < 2
    assert cancelled.wait(2)
    time.sleep(0.05)
    assert fake.bodies(A2) == []


def test_push_during_stop_is_refused_with_429(fake: FakeZap, client: tasks.Client) -> None:
    release = threading.Event()
    w = started(client, {"wf": lambda: release.wait(5)})
    deliver(fake)
    stopper = threading.Thread(target=w.stop, kwargs={"timeout": 5})
    stopper.start()
    assert wait_until(lambda: bool(fake.bodies(Z.Op.Unsubscribe)))
    assert deliver(fake, "t2")["status"] == 429
    release.set()
    stopper.join(5)
    assert command(fake)["result"] is True


def test_run_in_the_callers_loop(fake: FakeZap, client: tasks.Client) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def wf(n: int) -> int:
        loops.append(asyncio.get_running_loop())
        return n * 10

    async def main() -> asyncio.AbstractEventLoop:
        w = tasks.Worker(client)
        w.register("wf", wf)
        runner = asyncio.create_task(w.run())
        for _ in range(200):
            if fake.bodies(Z.Op.SubscribeWorkflowTasks):
                break
            await asyncio.sleep(0.01)
        ack = await asyncio.to_thread(deliver, fake, "tt-1", input=4)
        assert ack["status"] == 200
        await asyncio.to_thread(command, fake)
        await w.astop(timeout=1)
        await asyncio.wait_for(runner, 2)
        return asyncio.get_running_loop()

    main_loop = asyncio.run(main())
    assert loops == [main_loop]
    assert command(fake)["result"] == 40
    assert fake.bodies(Z.Op.Unsubscribe)


# -- activities -------------------------------------------------------------------------------


def activity_task(token: str, sub: str, **kw: Any) -> dict[str, Any]:
    body = {
        "task_token": token,
        "subscription_id": sub,
        "namespace": "default",
        "workflow_id": "",
        "run_id": "",
        "activity_id": "a-1",
        "activity_type": "act",
        "input": None,
        "attempt": 1,
        "scheduled_time_ms": 0,
        "started_time_ms": 0,
        "start_to_close_timeout_ms": 10_000,
    }
    body.update(kw)
    return body


def test_activities(fake: FakeZap, client: tasks.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_activities, "MIN_ACTIVITY_HEARTBEAT_S", 0.01)
    seen: dict[str, Any] = {}

    def act(inp: Any) -> Any:
        ctx = tasks.context()
        assert isinstance(ctx, tasks.ActivityContext)
        seen.update(id=ctx.activity_id, attempt=ctx.attempt, details=ctx.heartbeat_details)
        ctx.heartbeat({"step": 1})
        time.sleep(0.1)
        if inp == "boom":
            raise tasks.NonRetryableError("boom")
        return {"echo": inp}

    w = tasks.Worker(client, identity="w-1", max_concurrent_activities=4)
    w.register_activity("act", act)
    w.start()
    (sub,) = fake.bodies(Z.Op.SubscribeActivityTasks)
    assert sub == {
        "task_queue": "tasks",
        "max_concurrent": 4,
        "identity": "w-1",
        "namespace": "default",
        "types": ["act"],
    }
    assert fake.bodies(Z.Op.SubscribeWorkflowTasks) == []
    sid = fake.subscription_id(opcode=Z.Op.SubscribeActivityTasks)
    ack = fake.push(
        Z.Op.DeliverActivityTask,
        activity_task(
            "at-1", sid, input=5, attempt=2, heartbeat_details={"step": 0}, heartbeat_timeout_ms=40
        ),
    )
    assert ack == {"status": 200}
    (done,) = fake.wait_for(Z.Op.RespondActivityTaskCompleted)
    assert done == {"task_token": "at-1", "result": {"echo": 5}, "identity": "w-1"}
    assert seen == {"id": "a-1", "attempt": 2, "details": {"step": 0}}
    beats = fake.bodies(Z.Op.RecordHeartbeat)
    assert beats[0] == {"task_token": "at-1", "details": {"step": 1}}
    assert len(beats) >= 3 and beats[-1]["details"] == {"step": 1}  # automatic, every 20 ms

    fake.push(Z.Op.DeliverActivityTask, activity_task("at-2", sid, input="boom"))
    (failed,) = fake.wait_for(Z.Op.RespondActivityTaskFailed)
    assert failed["task_token"] == "at-2"
    assert failed["failure"]["type"] == "NonRetryableError" and failed["failure"]["non_retryable"]


def test_activity_cancel_is_reported_as_canceled_error(fake: FakeZap, client: tasks.Client) -> None:
    async def act() -> None:
        await asyncio.sleep(10)

    w = tasks.Worker(client)
    w.register_activity("act", act)
    w.start()
    sid = fake.subscription_id(opcode=Z.Op.SubscribeActivityTasks)
    fake.push(Z.Op.DeliverActivityTask, activity_task("at-1", sid))
    time.sleep(0.05)
    fake.push(Z.Op.DeliverCancelRequest, {"kind": "activity", "task_token": "at-1"})
    (failed,) = fake.wait_for(Z.Op.RespondActivityTaskFailed)
    assert failed["failure"]["type"] == "CanceledError"


def test_execute_activity_from_a_workflow(fake: FakeZap, client: tasks.Client) -> None:
    def wf() -> Any:
        ctx = tasks.context()
        assert isinstance(ctx, tasks.TaskContext)
        first = ctx.execute_activity(
            "charge", {"amount": 5}, start_to_close="30s", retry_policy={"maximumAttempts": 2}
        )
        try:
            ctx.execute_activity("charge", {"amount": 6})
        except tasks.ActivityError as e:
            return [first, e.failure["message"], e.type]
        return "no error"

    started(client, {"wf": wf})
    deliver(fake, run_id="r" * 32)
    first, second = fake.wait_for(Z.Op.ScheduleActivity, 1)[0], None
    assert first == {
        "task_token": "tt-1",
        "activity_type": "charge",
        "activity_id": "charge-1",
        "input": {"amount": 5},
        "start_to_close_ms": 30_000,
        "retry_policy": {"maximum_attempts": 2},
    }
    fake.push(
        Z.Op.DeliverActivityResult,
        {
            "workflow_task_token": "tt-1",
            "workflow_id": "wf-1",
            "run_id": "r" * 32,
            "activity_id": "charge-1",
            "scheduled_event_id": 5,
            "result": "paid",
        },
    )
    second = fake.wait_for(Z.Op.ScheduleActivity, 2)[1]
    assert second["activity_id"] == "charge-2"
    fake.push(
        Z.Op.DeliverActivityResult,
        {
            "workflow_task_token": "tt-1",
            "workflow_id": "wf-1",
            "run_id": "r" * 32,
            "activity_id": "charge-2",
            "scheduled_event_id": 7,
            "failure": {"message": "declined", "type": "CardError"},
        },
    )
    assert command(fake)["result"] == ["paid", "declined", "CardError"]


# -- the client's embedded worker -----------------------------------------------------------------


def test_embedded_worker_runs_added_fns(fake: FakeZap) -> None:
    ran: list[Any] = []
    with tasks.Client(zap_addr=fake.addr, task_queue="jobs") as c:
        c.add("cleanup", "1h", lambda p: ran.append(p) or "cleaned")
        (sub,) = fake.bodies(Z.Op.SubscribeWorkflowTasks)
        assert (
            sub["types"] == ["cleanup"]
            and sub["task_queue"] == "jobs"
            and sub["max_concurrent"] == 10
        )
        assert deliver(fake, workflow_type="cleanup", task_queue="jobs")["status"] == 200
        assert command(fake)["result"] == "cleaned"
        assert ran == [None]
        sid = fake.subscription_id()
    assert fake.bodies(Z.Op.Unsubscribe) == [{"subscription_id": sid}]  # stop() stops it


def test_embedded_worker_catch_all_handler_for_now(fake: FakeZap) -> None:
    with tasks.Client(zap_addr=fake.addr, handler=lambda t, p: f"{t}:{p}") as c:
        c.now("greet", "ada")
        assert deliver(fake, workflow_type="greet", input="ada")["status"] == 200
        assert command(fake)["result"] == "greet:ada"


# -- end to end, against the real single-node server -----------------------------------------------


def test_real_server_runs_added_fns_end_to_end() -> None:
    def hello(who: Any) -> dict[str, Any]:
        ctx = tasks.context()
        return {"hi": who, "type": ctx.workflow_type, "attempt": ctx.attempt}

    def boom() -> None:
        raise tasks.NonRetryableError("nope")

    ticks: list[float] = []

    with tasks.embed() as e:
        c = e.client()
        c.add("hello", "1h", hello)
        c.add("boom", "1h", boom)
        c.add("tick", "1s", lambda: ticks.append(time.monotonic()))  # durable schedule, run by the worker
        assert c.now("hello", "ada", workflow_id="h-1") == "h-1"
        c.now("boom", workflow_id="b-1")
        conn = c._connection(e.zap_addr or "")

        def status(wid: str) -> dict[str, Any]:
            return conn.call(Z.Op.DescribeWorkflow, {"workflow_id": wid})["execution"]

        assert wait_until(
            lambda: (
                not status("h-1")["status"].endswith("RUNNING")
                and not status("b-1")["status"].endswith("RUNNING")
            ),
            timeout=10,
        )
        done, failed = status("h-1"), status("b-1")
        assert done["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"
        assert done["result"] == {"hi": "ada", "type": "hello", "attempt": 1}
        assert failed["status"] == "WORKFLOW_EXECUTION_STATUS_FAILED"
        assert failed["lastFailure"]["type"] == "NonRetryableError"
        events = conn.call(Z.Op.GetWorkflowHistory, {"workflow_id": "h-1"})["events"]
        assert [ev["eventType"] for ev in events] == [
            "WORKFLOW_EXECUTION_STARTED",
            "WORKFLOW_TASK_SCHEDULED",
            "WORKFLOW_TASK_STARTED",
            "WORKFLOW_TASK_COMPLETED",
            "WORKFLOW_EXECUTION_COMPLETED",
        ]
        assert wait_until(lambda: len(ticks) >= 2, timeout=10), "the 1s schedule did not run fn"
