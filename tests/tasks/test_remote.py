"""Remote mode over HTTP (SPEC §2.4) against a small real fake server."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from typing import Any

import hanzo_tasks as tasks
import pytest
from hanzo_tasks import client as client_mod

from .conftest import Counter, FakeServer, Reply, wait_until

pytestmark = pytest.mark.usefixtures("fast_backoff")

UNAVAILABLE = {"code": "unavailable", "message": "no quorum"}


def test_now_request_shape(server: FakeServer) -> None:
    with tasks.Client(server.url, namespace="ns1", task_queue="emails", auth_token="s3cret") as c:
        wid = c.now("Send-Email", {"to": "a@b", "n": [1, 2]})
    assert wid == "send-email-3f9a01bc"
    (req,) = server.requests
    assert req.path == "/v1/tasks/namespaces/ns1/workflows"
    assert req.headers["Authorization"] == "Bearer s3cret"
    assert req.headers["Content-Type"] == "application/json"
    body = dict(req.body)
    assert re.fullmatch(r"[0-9a-f]{32}", body.pop("requestId"))
    assert body == {
        "workflowType": {"name": "Send-Email"},
        "taskQueue": {"name": "emails"},
        "input": {"to": "a@b", "n": [1, 2]},
    }


def test_now_optional_fields(server: FakeServer) -> None:
    policy = {"maximumAttempts": 3}
    with tasks.Client(server.url) as c:
        wid = c.now("t", None, workflow_id="order-1", request_id="req-1", retry_policy=policy)
        c.now("t")
    assert wid == "order-1"
    first, second = (r.body for r in server.requests)
    assert first["workflowId"] == "order-1"
    assert first["requestId"] == "req-1"
    assert first["retryPolicy"] == policy
    assert first["input"] is None
    assert "Authorization" not in server.requests[0].headers
    assert "workflowId" not in second and "retryPolicy" not in second
    assert second["requestId"] != first["requestId"]


def test_now_rejects_non_json_payload(server: FakeServer) -> None:
    with tasks.Client(server.url) as c:
        with pytest.raises(tasks.InvalidArgument):
            c.now("t", {1, 2})
        with pytest.raises(tasks.InvalidArgument):
            c.now("t", float("nan"))
    assert server.requests == []


def test_add_interval_request_shape(server: FakeServer) -> None:
    fn = Counter()
    with tasks.Client(server.url, namespace="ops", task_queue="q1") as c:
        c.add("nightly-report", " 90m ", fn)
        assert c._fns["nightly-report"] is fn  # recorded for the embedded worker
    (req,) = server.requests
    assert req.path == "/v1/tasks/namespaces/ops/schedules"
    assert req.query == {"upsert": "true"}
    assert req.body == {
        "scheduleId": "nightly-report",
        "spec": {"interval": [{"interval": "90m"}]},
        "action": {"workflowType": {"name": "nightly-report"}, "taskQueue": "q1", "input": None},
        "policies": {"overlapPolicy": "SCHEDULE_OVERLAP_POLICY_SKIP"},
    }
    assert fn.count == 0  # remote: the client does not run fn itself


def test_add_cron_request_shape(server: FakeServer) -> None:
    with tasks.Client(server.url) as c:
        c.add("cleanup", "CRON_TZ=Europe/Paris 0 3 * * *", lambda: None)
        c.add("every", "@every 1m", lambda: None)
    assert [r.body["spec"] for r in server.requests] == [
        {"cronString": ["CRON_TZ=Europe/Paris 0 3 * * *"]},
        {"cronString": ["@every 1m"]},
    ]


@pytest.mark.parametrize("spec", ["500ms", "999ms", "@every 200ms", "", "1d"])
def test_add_rejects_bad_specs_without_calling(server: FakeServer, spec: str) -> None:
    with tasks.Client(server.url) as c:
        with pytest.raises(tasks.InvalidArgument):
            c.add("x", spec, lambda: None)
        assert "x" not in c._fns
    assert server.requests == []


def test_503_with_retry_after_is_retried_with_the_same_request_id(server: FakeServer) -> None:
    busy = Reply(503, UNAVAILABLE, {"Retry-After": "0.05"})
    server.script = [busy, busy]
    with tasks.Client(server.url) as c:
        wid = c.now("t", 1)
    assert wid == "t-3f9a01bc"
    assert len(server.requests) == 3
    assert len({r.body["requestId"] for r in server.requests}) == 1


def test_429_is_retried(server: FakeServer) -> None:
    server.script = [Reply(429, {"code": "rate_limited", "message": "slow"}, {"Retry-After": "0"})]
    with tasks.Client(server.url) as c:
        c.add("s", "1m", lambda: None)
    assert len(server.requests) == 2


def test_persistent_503_raises_unavailable_after_three_attempts(server: FakeServer) -> None:
    server.script = [Reply(503, UNAVAILABLE, {"Retry-After": "0.01"})] * 5
    with tasks.Client(server.url) as c:
        with pytest.raises(tasks.Unavailable) as ei:
            c.now("t")
    assert len(server.requests) == 3
    err = ei.value
    assert (err.code, err.status, err.message, err.retry_after) == (
        "unavailable",
        503,
        "no quorum",
        0.01,
    )


def test_no_workers_is_an_unavailable(server: FakeServer) -> None:
    server.script = [Reply(503, {"code": "no_workers", "message": "none"})] * 3
    with tasks.Client(server.url) as c, pytest.raises(tasks.NoWorkers):
        c.now("t")


def test_retry_waits(monkeypatch: pytest.MonkeyPatch, server: FakeServer) -> None:
    """Waits are Retry-After capped at 5 s, else 0.5 s then 1 s."""
    monkeypatch.setattr(client_mod, "BACKOFF_S", (0.5, 1.0))

    class RecordingEvent(threading.Event):
        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float] = []

        def wait(self, timeout: float | None = None) -> bool:
            assert timeout is not None
            self.waits.append(timeout)
            return False

    for headers, expected in (({"Retry-After": "100"}, [5.0, 5.0]), ({}, [0.5, 1.0])):
        server.script = [Reply(503, UNAVAILABLE, headers)] * 3
        c = tasks.Client(server.url)
        ev = RecordingEvent()
        c._stop_event = ev
        with pytest.raises(tasks.Unavailable):
            c.now("t")
        assert ev.waits == expected


def test_stop_interrupts_retry_wait(server: FakeServer) -> None:
    server.script = [Reply(503, UNAVAILABLE, {"Retry-After": "5"})] * 3
    c = tasks.Client(server.url)
    threading.Timer(0.1, c.stop).start()
    with pytest.raises(tasks.Unavailable):
        c.now("t")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (
            400,
            {"code": "invalid_argument", "message": "bad type", "details": {"f": "x"}},
            tasks.InvalidArgument,
        ),
        (401, {"code": "unauthenticated", "message": "token"}, tasks.Unauthenticated),
        (404, {"code": "not_found", "message": "namespace"}, tasks.NotFound),
        (
            409,
            {
                "code": "already_started",
                "message": "dup",
                "details": {"workflowId": "w", "runId": "r"},
            },
            tasks.AlreadyStarted,
        ),
        (500, {"code": "internal", "message": "bug"}, tasks.Internal),
        (502, "not json at all", tasks.TasksError),
    ],
)
def test_errors_are_not_retried(
    server: FakeServer, status: int, body: Any, cls: type[tasks.TasksError]
) -> None:
    server.script = [Reply(status, body)]
    with tasks.Client(server.url) as c, pytest.raises(cls) as ei:
        c.now("t")
    assert len(server.requests) == 1
    assert ei.value.status == status
    if isinstance(body, dict):
        assert ei.value.message == body["message"]
        assert ei.value.details == body.get("details", {})


def test_failed_add_restores_registry(server: FakeServer) -> None:
    old, new = Counter(), Counter()
    with tasks.Client(server.url) as c:
        c.add("s", "1m", old)
        server.script = [Reply(400, {"code": "invalid_argument", "message": "no"})]
        with pytest.raises(tasks.InvalidArgument):
            c.add("s", "1m", new)
        assert c._fns["s"] is old


def test_connection_refused_is_unavailable(dead_url: str) -> None:
    with tasks.Client(dead_url) as c:
        with pytest.raises(tasks.Unavailable) as ei:
            c.now("t")
        assert ei.value.code == "unavailable"
        with pytest.raises(tasks.Unavailable):
            c.add("s", "1m", lambda: None)


def test_slow_server_is_a_timeout(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mod, "HTTP_TIMEOUT_S", 0.2)
    server.script = [Reply(200, {}, delay=1.0)]
    with tasks.Client(server.url) as c, pytest.raises(tasks.Timeout):
        c.now("t")
    assert len(server.requests) == 1  # deadlines are not retried: the outcome is unknown


def test_zap_only_is_unavailable_for_now() -> None:
    with tasks.Client(zap_addr="127.0.0.1:9") as c:
        assert c.mode == "remote"
        with pytest.raises(tasks.Unavailable, match="ZAP"):
            c.now("t")


def test_zap_and_url_use_http(server: FakeServer) -> None:
    with tasks.Client(server.url, "127.0.0.1:9") as c:
        assert c.now("t") == "t-3f9a01bc"


# -- fallback="local" ----------------------------------------------------------------


def test_fallback_now_runs_locally(dead_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tasks")
    got: list[tuple[str, Any]] = []
    with tasks.Client(dead_url, handler=lambda t, p: got.append((t, p)), fallback="local") as c:
        rid = c.now("t", {"x": 1})
        assert rid.startswith("local-")
        assert wait_until(lambda: got == [("t", {"x": 1})])
    with tasks.Client(dead_url, fallback="local") as bare, pytest.raises(tasks.NoHandler):
        bare.now("nobody")
    assert any("running it locally" in r.getMessage() for r in caplog.records)


def test_fallback_add_runs_locally_then_remote_takes_over(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tasks")
    server.script = [Reply(503, UNAVAILABLE, {"Retry-After": "0"})] * 3
    fn = Counter()
    with tasks.Client(server.url, fallback="local") as c:
        c.add("s", "1s", fn)
        engine = c._engine
        assert engine is not None and "s" in engine._runners
        assert wait_until(lambda: fn.count >= 1, timeout=3)
        # The server is back: the durable schedule replaces the local runner.
        c.add("s", "1s", fn)
        assert "s" not in engine._runners
    assert len(server.requests) == 4
    assert any("remote add failed" in r.getMessage() for r in caplog.records)


def test_fallback_does_not_hide_request_errors(server: FakeServer) -> None:
    server.script = [Reply(400, {"code": "invalid_argument", "message": "bad"})]
    with tasks.Client(server.url, handler=lambda t, p: None, fallback="local") as c:
        with pytest.raises(tasks.InvalidArgument):
            c.now("t")


def test_fallback_zap_only_serves_locally() -> None:
    done = threading.Event()
    with tasks.Client(zap_addr="127.0.0.1:9", fallback="local") as c:
        c.add("ping", "1h", lambda p: done.set())
        c.now("ping")
        assert done.wait(3)


def test_stop_in_remote_mode(server: FakeServer) -> None:
    c = tasks.Client(server.url)
    c.add("s", "1m", lambda: None)
    c.stop()
    c.stop()
    with pytest.raises(tasks.FailedPrecondition):
        c.now("t")
    with pytest.raises(tasks.FailedPrecondition):
        c.add("s", "1m", lambda: None)
    assert len(server.requests) == 1  # stop() deletes nothing


def test_async_variants_remote(server: FakeServer) -> None:
    async def main() -> str:
        async with tasks.Client(server.url) as c:
            await c.aadd("s", "5m", lambda: None)
            return await c.anow("t", workflow_id="w-1")

    assert asyncio.run(main()) == "w-1"
    assert [r.path.rsplit("/", 1)[1] for r in server.requests] == ["schedules", "workflows"]


def test_concurrent_remote_calls(server: FakeServer) -> None:
    with tasks.Client(server.url) as c:
        ids: list[str] = []
        lock = threading.Lock()

        def worker(i: int) -> None:
            wid = c.now("t", workflow_id=f"w-{i}")
            with lock:
                ids.append(wid)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(ids) == sorted(f"w-{i}" for i in range(10))
