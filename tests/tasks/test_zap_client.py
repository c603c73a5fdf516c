"""The ZAP client connection (``tasks.zap``) and the client's ZAP transport (SPEC §2.4, §8).

Everything runs against :class:`FakeZap`, a fake server built on the shared
codec, on a free loopback port; waits are bounded.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import hanzo_tasks as tasks
import pytest
from hanzo_tasks import zap as zap_mod
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.zap import ConnectFailed, ZapConnection

from .conftest import FakeServer, wait_until
from .zapfake import FakeConn, FakeZap, Reply, workflow_task


@pytest.fixture
def fake() -> Iterator[FakeZap]:
    f = FakeZap().start()
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture
def conn(fake: FakeZap) -> Iterator[ZapConnection]:
    c = ZapConnection(fake.addr, namespace="ns1", auth_token="tok")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def dead_zap() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


# -- session ------------------------------------------------------------------------


def test_hello_comes_first_with_its_fields(fake: FakeZap, conn: ZapConnection) -> None:
    assert conn.call(Z.Op.Health)["status"] == "ok"
    hello, health = fake.requests
    assert (hello.opcode, health.opcode) == (Z.Op.Hello, Z.Op.Health)
    assert hello.conn == health.conn == 0
    body = dict(hello.body)
    assert re.fullmatch(r"\d+@.+-[0-9a-f]{8}", body.pop("client_id"))
    assert body.pop("sdk_version")
    assert body == {"sdk_name": "hanzo-tasks-python", "namespace": "ns1", "auth_token": "tok"}
    assert conn.server_info["node_id"] == "fake"
    assert conn.generation == 1


def test_nothing_connects_before_the_first_call(fake: FakeZap) -> None:
    c = ZapConnection(fake.addr)
    time.sleep(0.05)
    assert fake.conns == []
    c.close()
    with pytest.raises(ConnectFailed):
        c.call(Z.Op.Health)


def test_requests_are_matched_by_id_when_answered_out_of_order(
    fake: FakeZap, conn: ZapConnection
) -> None:
    finished: list[int] = []

    async def slow_echo(_c: FakeConn, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(body["delay"])
        finished.append(body["n"])
        return {"n": body["n"]}

    fake.handlers[Z.Op.Health] = slow_echo
    conn.call(Z.Op.Health, {"n": -1, "delay": 0})  # connect first
    delays = [0.3, 0.05, 0.2, 0.0, 0.1]
    results: dict[int, Any] = {}

    def one(i: int) -> None:
        results[i] = conn.call(Z.Op.Health, {"n": i, "delay": delays[i]})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(delays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == {i: {"n": i} for i in range(len(delays))}
    assert finished[1:] == [3, 1, 4, 2, 0]  # answered in a different order than asked
    ids = [r.frame_id for r in fake.requests]
    assert 0 not in ids and len(set(ids)) == len(ids)


def test_acall_from_another_loop(fake: FakeZap, conn: ZapConnection) -> None:
    async def main() -> list[Any]:
        return await asyncio.gather(*(conn.acall(Z.Op.Health) for _ in range(10)))

    answers = asyncio.run(main())
    assert len(answers) == 10 and all(a["status"] == "ok" for a in answers)
    assert len(fake.conns) == 1


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid_argument", tasks.InvalidArgument),
        (404, "not_found", tasks.NotFound),
        (409, "already_started", tasks.AlreadyStarted),
        (409, "failed_precondition", tasks.FailedPrecondition),
        (501, "not_implemented", tasks.Unsupported),
        (503, "no_workers", tasks.NoWorkers),
        (418, "teapot", tasks.TasksError),
    ],
)
def test_error_responses_map_to_error_classes(
    fake: FakeZap, conn: ZapConnection, status: int, code: str, cls: type[tasks.TasksError]
) -> None:
    def fail(_c: FakeConn, _b: dict[str, Any]) -> None:
        raise Reply(status, code, "nope", {"workflowId": "w"})

    fake.handlers[Z.Op.DescribeWorkflow] = fail
    with pytest.raises(cls) as ei:
        conn.call(Z.Op.DescribeWorkflow, {"workflow_id": "w"})
    assert type(ei.value) is cls
    assert (ei.value.status, ei.value.code, ei.value.message) == (status, code, "nope")
    assert ei.value.details == {"workflowId": "w"}
    assert conn.call(Z.Op.Health)["status"] == "ok"  # the session survives errors


def test_retry_after_is_carried(fake: FakeZap, conn: ZapConnection) -> None:
    def busy(_c: FakeConn, _b: dict[str, Any]) -> None:
        raise Reply(429, "rate_limited", "slow down", retry_after=2)

    fake.handlers[Z.Op.Health] = busy
    with pytest.raises(tasks.RateLimited) as ei:
        conn.call(Z.Op.Health)
    assert ei.value.retry_after == 2.0


def test_timeout_then_late_answer_is_ignored(fake: FakeZap, conn: ZapConnection) -> None:
    async def slow(_c: FakeConn, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(body.get("delay", 0))
        return {"ok": body.get("delay", 0)}

    fake.handlers[Z.Op.Health] = slow
    with pytest.raises(tasks.Timeout):
        conn.call(Z.Op.Health, {"delay": 0.5}, timeout=0.1)
    assert conn.call(Z.Op.Health, {"delay": 0}) == {"ok": 0}
    time.sleep(0.5)  # the late answer arrives and is dropped
    assert conn.call(Z.Op.Health, {"delay": 0}) == {"ok": 0}


def test_unencodable_body_is_invalid_argument(conn: ZapConnection) -> None:
    with pytest.raises(tasks.InvalidArgument):
        conn.call(Z.Op.Health, {"x": {1, 2}})


def test_blocking_call_on_the_connection_loop_is_refused(conn: ZapConnection) -> None:
    conn.call(Z.Op.Health)
    box: list[BaseException] = []

    def inside() -> None:
        try:
            conn.call(Z.Op.Health)
        except BaseException as e:  # noqa: BLE001
            box.append(e)

    conn.loop.call_soon_threadsafe(inside)
    assert wait_until(lambda: bool(box))
    assert isinstance(box[0], tasks.FailedPrecondition)


# -- connection failures and reconnect ---------------------------------------------------


def test_unreachable_is_connect_failed_with_backoff(dead_zap: str) -> None:
    c = ZapConnection(dead_zap)
    try:
        with pytest.raises(ConnectFailed, match="cannot connect"):
            c.call(Z.Op.Health)
        assert isinstance(ConnectFailed("x"), tasks.Unavailable)
        left = c._retry_at - time.monotonic()
        assert 0 < left <= 0.1 * 1.2
        t0 = time.monotonic()
        with pytest.raises(ConnectFailed, match="next attempt"):
            c.call(Z.Op.Health)  # within the back-off: no new attempt, no wait
        assert time.monotonic() - t0 < 0.05
    finally:
        c.close()


def test_backoff_doubles_to_ten_seconds_with_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    c = ZapConnection("127.0.0.1:1")
    now = [100.0]
    monkeypatch.setattr(zap_mod.time, "monotonic", lambda: now[0])
    waits = []
    for _ in range(12):
        c._note_failure()
        waits.append(c._retry_at - now[0])
    nominal = [min(0.1 * 2**i, 10.0) for i in range(12)]
    for w, n in zip(waits, nominal, strict=True):
        assert n * 0.8 - 1e-9 <= w <= n * 1.2 + 1e-9
    assert nominal[-1] == 10.0


def test_reconnect_after_drop_rehellos_and_runs_hooks(fake: FakeZap, conn: ZapConnection) -> None:
    generations: list[int] = []

    async def hook(gen: int) -> None:
        generations.append(gen)
        s = await conn.asession()
        await conn.arequest(s, Z.Op.Health, {"resubscribed": gen}, 2)

    conn.add_reconnect_hook(hook)
    conn.call(Z.Op.Health)
    assert wait_until(lambda: generations == [1])
    fake.drop()
    assert wait_until(lambda: len(fake.conns) == 2 and generations == [1, 2], timeout=3)
    # The hook is called before its request reaches the server: wait for that too.
    assert wait_until(lambda: fake.opcodes(conn=1)[:2] == [Z.Op.Hello, Z.Op.Health], timeout=3)
    assert fake.requests[-1].body == {"resubscribed": 2}
    assert conn.generation == 2


def test_reconnect_keeps_trying_with_backoff(
    fake: FakeZap, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zap_mod, "BACKOFF_INITIAL_S", 0.02)
    c = ZapConnection(fake.addr)
    refusals = [0]

    def refuse(_c: FakeConn, _b: dict[str, Any]) -> None:
        if refusals[0] < 2:
            refusals[0] += 1
            raise Reply(503, "unavailable", "starting up")
        return None

    async def hook(gen: int) -> None:
        pass

    try:
        c.add_reconnect_hook(hook)
        c.call(Z.Op.Health)
        fake.handlers[Z.Op.Hello] = lambda conn_, body: (
            refuse(conn_, body) or fake._default(Z.Op.Hello, body)
        )
        fake.drop()
        assert wait_until(lambda: c.connected and c.generation == 2, timeout=5)
        assert refusals[0] == 2
        assert len(fake.conns) == 4  # the first, two refused HELLOs, the good one
    finally:
        c.close()


def test_call_in_flight_when_connection_drops_is_unavailable(
    fake: FakeZap, conn: ZapConnection
) -> None:
    async def never(_c: FakeConn, _b: dict[str, Any]) -> None:
        await asyncio.sleep(30)

    conn.call(Z.Op.Health)
    fake.handlers[Z.Op.DescribeWorkflow] = never
    box: list[BaseException] = []

    def call() -> None:
        try:
            conn.call(Z.Op.DescribeWorkflow, {"workflow_id": "w"})
        except BaseException as e:  # noqa: BLE001
            box.append(e)

    t = threading.Thread(target=call)
    t.start()
    assert wait_until(lambda: len(fake.bodies(Z.Op.DescribeWorkflow)) == 1)
    fake.drop()
    t.join(3)
    assert isinstance(box[0], tasks.Unavailable) and not isinstance(box[0], ConnectFailed)


# -- pushes ----------------------------------------------------------------------------


class Route:
    def __init__(self, claim: int, status: int = 200) -> None:
        self.claim = claim
        self.status = status
        self.seen: list[tuple[int, dict[str, Any]]] = []

    def push_claim(self, opcode: int, body: dict[str, Any]) -> int:
        return self.claim

    def on_push(self, opcode: int, body: dict[str, Any]) -> dict[str, Any]:
        self.seen.append((opcode, body))
        return Z.push_ack_body(self.status)


def test_push_ack_carries_the_push_opcode_and_id(fake: FakeZap, conn: ZapConnection) -> None:
    conn.call(Z.Op.Health)
    weak, strong = Route(1, 429), Route(2, 200)
    conn.add_push_route(weak)
    conn.add_push_route(strong)
    ack = fake.push(Z.Op.DeliverWorkflowTask, workflow_task())
    assert ack == {"status": 200}
    assert strong.seen and not weak.seen  # the highest claim wins
    (a,) = fake.acks
    assert (a.opcode, a.frame_id) == (Z.Op.DeliverWorkflowTask, 1)
    fake.push(Z.Op.DeliverQuery, {"query_token": "q"})
    assert (fake.acks[-1].opcode, fake.acks[-1].frame_id) == (Z.Op.DeliverQuery, 2)


def test_unclaimed_pushes(fake: FakeZap, conn: ZapConnection) -> None:
    conn.call(Z.Op.Health)
    conn.add_push_route(Route(0))
    assert fake.push(Z.Op.DeliverWorkflowTask, workflow_task())["status"] == 400
    assert fake.push(Z.Op.DeliverActivityResult, {"activity_id": "a"})["status"] == 200
    assert fake.push(Z.Op.DeliverCancelRequest, {"task_token": "t"})["status"] == 200


# -- the client's ZAP transport (SPEC §2.4) ---------------------------------------------------


def test_client_now_sends_submit_task(fake: FakeZap) -> None:
    with tasks.Client(zap_addr=fake.addr, namespace="ns1", task_queue="emails") as c:
        wid = c.now(
            "Send-Email",
            {"to": "a@b", "t": (1, 2)},
            retry_policy={"initialInterval": "2s", "maximumAttempts": 3},
        )
        wid2 = c.now("x", workflow_id="order-1", request_id="req-1")
    assert (wid, wid2) == ("send-email-3f9a01bc", "order-1")
    first, second = fake.bodies(Z.Op.SubmitTask)
    assert re.fullmatch(r"[0-9a-f]{32}", first.pop("request_id"))
    assert first == {
        "task_type": "Send-Email",
        "payload": {"to": "a@b", "t": [1, 2]},
        "task_queue": "emails",
        "retry_policy": {"initial_interval_ms": 2000, "maximum_attempts": 3},
    }
    assert second == {
        "task_type": "x",
        "payload": None,
        "task_queue": "emails",
        "workflow_id": "order-1",
        "request_id": "req-1",
    }
    assert fake.bodies(Z.Op.SubscribeWorkflowTasks) == []  # no fn, no handler: no worker
    assert fake.bodies(Z.Op.Hello)[0]["namespace"] == "ns1"


def test_client_add_sends_schedule_recurring_and_starts_the_embedded_worker(fake: FakeZap) -> None:
    with tasks.Client(zap_addr=fake.addr, task_queue="q1") as c:
        c.add("nightly", " 0 3 * * * ", lambda: None)
        c.add("often", "90s", lambda: None)
        assert c.worker is not None and c.worker.running
    sched = fake.bodies(Z.Op.ScheduleRecurring)
    assert sched == [
        {"name": "nightly", "spec": "0 3 * * *", "task_queue": "q1", "overlap_policy": "SKIP"},
        {"name": "often", "spec": "90s", "task_queue": "q1", "overlap_policy": "SKIP"},
    ]
    subs = fake.bodies(Z.Op.SubscribeWorkflowTasks)
    assert subs[0]["types"] == ["nightly"] and subs[0]["max_concurrent"] == 10
    assert subs[0]["task_queue"] == "q1"
    assert subs[1]["types"] == ["nightly", "often"] and subs[1]["subscription_id"]
    ops = fake.opcodes()
    assert ops.index(Z.Op.SubscribeWorkflowTasks) < ops.index(Z.Op.ScheduleRecurring)
    first_sub = fake.answers(Z.Op.SubscribeWorkflowTasks)[0]["subscription_id"]
    assert fake.bodies(Z.Op.Unsubscribe) == [{"subscription_id": first_sub}]


def test_client_now_with_handler_starts_catch_all_worker_first(fake: FakeZap) -> None:
    with tasks.Client(zap_addr=fake.addr, handler=lambda t, p: None) as c:
        c.now("anything", 1)
    ops = [o for o in fake.opcodes() if o != Z.Op.Hello]
    assert ops[:2] == [Z.Op.SubscribeWorkflowTasks, Z.Op.SubmitTask]
    (sub,) = fake.bodies(Z.Op.SubscribeWorkflowTasks)
    assert "types" not in sub


def test_client_errors_and_retries_over_zap(fake: FakeZap, fast_backoff: None) -> None:
    calls = [0]

    def flaky(_c: FakeConn, body: dict[str, Any]) -> dict[str, Any]:
        calls[0] += 1
        if calls[0] < 3:
            raise Reply(503, "unavailable", "no quorum")
        return {"workflow_id": "w", "run_id": "r" * 32, "started": True}

    fake.handlers[Z.Op.SubmitTask] = flaky
    with tasks.Client(zap_addr=fake.addr) as c:
        assert c.now("t") == "w"
        bodies = fake.bodies(Z.Op.SubmitTask)
        assert len(bodies) == 3 and len({b["request_id"] for b in bodies}) == 1

        def conflict(_c: FakeConn, _b: dict[str, Any]) -> None:
            raise Reply(409, "already_started", "dup", {"workflowId": "w", "runId": "r"})

        fake.handlers[Z.Op.SubmitTask] = conflict
        with pytest.raises(tasks.AlreadyStarted) as ei:
            c.now("t", workflow_id="w")
        assert ei.value.details == {"workflowId": "w", "runId": "r"}


def test_dead_zap_falls_back_to_http(server: FakeServer, dead_zap: str, fast_backoff: None) -> None:
    with tasks.Client(server.url, dead_zap) as c:
        assert c.now("t", {"x": 1}) == "t-3f9a01bc"
        # add: the ZAP address is dead, so the embedded worker uses the
        # server's advertised zapAddr, and the schedule goes over HTTP.
        c.add("s", "1m", lambda: None)
        assert c.worker is not None and c.worker.running
    assert [r.path.rsplit("/", 1)[1] for r in server.requests] == ["workflows", "schedules"]
    assert server.requests[0].body["input"] == {"x": 1}
    assert server.zap.bodies(Z.Op.SubscribeWorkflowTasks)[0]["types"] == ["s"]
    assert server.settings_hits == 1


def test_dead_zap_without_url_is_unavailable(dead_zap: str, fast_backoff: None) -> None:
    with tasks.Client(zap_addr=dead_zap) as c:
        with pytest.raises(tasks.Unavailable, match="ZAP"):
            c.now("t")
        with pytest.raises(tasks.Unavailable):
            c.add("s", "1m", lambda: None)
        assert "s" not in c._fns


def test_zap_comes_back(fake: FakeZap, fast_backoff: None) -> None:
    with tasks.Client(zap_addr=fake.addr) as c:
        c.now("t")
        fake.drop()

        def works() -> bool:
            try:
                return c.now("t") == "t-3f9a01bc"
            except tasks.Unavailable:
                return False  # within the back-off after the drop

        assert wait_until(works, timeout=3)
    assert len(fake.conns) == 2


def test_http_only_client_without_zap_listener_cannot_start_worker(server: FakeServer) -> None:
    server.zap.stop()  # advertised but dead
    with tasks.Client(server.url) as c, pytest.raises(tasks.Unavailable):
        c.add("s", "1m", lambda: None)
    assert server.requests == []


def test_client_stop_closes_the_connection(fake: FakeZap) -> None:
    c = tasks.Client(zap_addr=fake.addr)
    c.now("t")
    c.stop()
    assert wait_until(lambda: fake.conns[0].closed)
    with pytest.raises(tasks.FailedPrecondition):
        c.now("t")
