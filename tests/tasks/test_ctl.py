"""Tests of tasksctl against a small real HTTP server.

The server is a fake of the routes tasksctl calls: it records every request
(method, raw path, query, JSON body, headers) and answers with canned bodies,
so the tests check exactly what goes over the wire and how answers are shown.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hanzo_tasks import ctl
from hanzo_tasks.ctl import migrations as ctl_migrations

NS = "/v1/tasks/namespaces/default"

EXECUTION = {
    "execution": {"workflowId": "order-17", "runId": "a" * 32},
    "type": {"name": "charge-card"},
    "taskQueue": "default",
    "status": "WORKFLOW_EXECUTION_STATUS_RUNNING",
    "startTime": "2026-04-30T07:31:18.120Z",
    "historyLength": 2,
    "attempt": 1,
}


@dataclass
class Recorded:
    method: str
    path: str  # raw, still percent-encoded
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


Responder = Callable[[Recorded], tuple[int, Any]]


@dataclass
class FakeServer:
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    routes: dict[tuple[str, str], list[Any]] = field(default_factory=dict)

    def on(self, method: str, path: str, *answers: tuple[int, Any] | Responder) -> None:
        """Answer ``method path`` with the answers in order (the last one repeats),
        each a ``(status, body)`` or a function of the recorded request."""
        self.routes[(method, path)] = list(answers)

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        rec = Recorded(
            request.method,
            request.rel_url.raw_path,
            dict(request.query),
            json.loads(raw) if raw else None,
            dict(request.headers),
        )
        self.requests.append(rec)
        answers = self.routes.get((rec.method, rec.path))
        if not answers:
            return web.json_response(
                {"code": "not_found", "message": f"no route {rec.method} {rec.path}"}, status=404
            )
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        status, body = answer(rec) if callable(answer) else answer
        if isinstance(body, str | bytes):
            return web.Response(status=status, body=body, content_type="text/html")
        return web.json_response(body, status=status)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    for name in ("TASKS_URL", "TASKS_AUTH_TOKEN", "TASKS_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")

    fake = FakeServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> web.AppRunner:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def run(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    def invoke(*argv: str, url: str | None = None) -> Result:
        code = ctl.main(["--url", url or server.url, *argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


# ------------------------------------------------------------------ workflows


def test_wf_start_sends_start_body_and_prints_record(server: FakeServer, run: Any) -> None:
    server.on("POST", f"{NS}/workflows", (200, {**EXECUTION, "started": True}))
    res = run("wf", "start", "charge-card", "--id", "order-17", "--queue", "payments",
              "--input", '{"amount": 42}', "--request-id", "r-1")
    assert res.code == 0, res.err
    req = server.last
    assert (req.method, req.path) == ("POST", f"{NS}/workflows")
    assert req.body == {
        "workflowType": {"name": "charge-card"},
        "taskQueue": {"name": "payments"},
        "workflowId": "order-17",
        "input": {"amount": 42},
        "requestId": "r-1",
    }
    assert req.headers["Content-Type"].startswith("application/json")
    assert "Authorization" not in req.headers
    assert "started: true" in res.out
    assert "  workflowId: order-17" in res.out
    assert "status: WORKFLOW_EXECUTION_STATUS_RUNNING" in res.out


def test_wf_start_defaults_and_input_from_file(server: FakeServer, run: Any, tmp_path: Path) -> None:
    server.on("POST", f"{NS}/workflows", (200, EXECUTION))
    path = tmp_path / "in.json"
    path.write_text('[1, "two", null]')
    assert run("wf", "start", "charge-card", "--input", f"@{path}").code == 0
    assert server.last.body == {
        "workflowType": {"name": "charge-card"},
        "taskQueue": {"name": "default"},
        "input": [1, "two", None],
    }


def test_wf_describe_percent_encodes_path_segments(server: FakeServer, run: Any) -> None:
    path = "/v1/tasks/namespaces/team%20a/workflows/a%20b%2Fc%3F%23"
    server.on("GET", path, (200, {"workflowExecutionInfo": EXECUTION}))
    res = run("-n", "team a", "wf", "describe", "a b/c?#", "--run", "r1")
    assert res.code == 0, res.err
    assert server.last.path == path
    assert server.last.query == {"runId": "r1"}


def test_wf_list_table_and_json(server: FakeServer, run: Any) -> None:
    body = {"executions": [EXECUTION], "nextPageToken": ""}
    server.on("GET", f"{NS}/workflows", (200, body))
    res = run("wf", "list", "--query", 'WorkflowType="charge-card"', "--page-size", "5")
    assert res.code == 0
    assert server.last.query == {"query": 'WorkflowType="charge-card"', "pageSize": "5"}
    header, row = res.out.splitlines()
    assert header.split() == ["WORKFLOW", "ID", "RUN", "ID", "TYPE", "STATUS", "START"]
    assert row.split() == ["order-17", "a" * 32, "charge-card", "RUNNING", "2026-04-30T07:31:18.120Z"]

    res = run("--output", "json", "wf", "list")
    assert res.code == 0
    assert res.json() == body
    assert res.out.startswith("{\n  ")  # pretty-printed


def test_wf_list_all_follows_next_page_token(server: FakeServer, run: Any) -> None:
    first = {**EXECUTION, "execution": {"workflowId": "w1", "runId": "1" * 32}}
    second = {**EXECUTION, "execution": {"workflowId": "w2", "runId": "2" * 32}}

    def page(req: Recorded) -> tuple[int, Any]:
        if req.query.get("nextPageToken") == "tok-2":
            return 200, {"executions": [second], "nextPageToken": ""}
        return 200, {"executions": [first], "nextPageToken": "tok-2"}

    server.on("GET", f"{NS}/workflows", page)
    res = run("-o", "json", "wf", "list", "--all")
    assert res.code == 0
    assert [e["execution"]["workflowId"] for e in res.json()["executions"]] == ["w1", "w2"]
    assert res.json()["nextPageToken"] == ""
    assert [r.query.get("nextPageToken") for r in server.requests] == [None, "tok-2"]

    server.requests.clear()
    res = run("wf", "list")  # without --all: one page and a hint
    assert len(server.requests) == 1
    assert "w1" in res.out and "w2" not in res.out
    assert "--all" in res.err


def test_wf_signal_cancel_terminate(server: FakeServer, run: Any) -> None:
    server.on("POST", f"{NS}/workflows/order-17/signal", (200, {"status": "signaled"}))
    server.on("POST", f"{NS}/workflows/order-17/cancel", (200, EXECUTION))
    server.on("POST", f"{NS}/workflows/order-17/terminate", (200, EXECUTION))

    res = run("wf", "signal", "order-17", "approve", "--input", '{"by": "ana"}')
    assert res.code == 0 and res.out == "status: signaled\n"
    assert server.last.body == {"name": "approve", "payload": {"by": "ana"}}

    assert run("wf", "cancel", "order-17").code == 0
    assert (server.last.method, server.last.body) == ("POST", {})

    assert run("wf", "terminate", "order-17", "--reason", "stuck", "--run", "r9").code == 0
    assert server.last.body == {"reason": "stuck"}
    assert server.last.query == {"runId": "r9"}


def test_wf_history_reverse_and_pages(server: FakeServer, run: Any) -> None:
    events = [
        {"eventId": 2, "eventTime": "2026-04-30T07:31:18.121Z", "eventType": "WORKFLOW_TASK_SCHEDULED", "attributes": {"taskQueue": "default"}},
        {"eventId": 1, "eventTime": "2026-04-30T07:31:18.120Z", "eventType": "WORKFLOW_EXECUTION_STARTED", "attributes": {}},
    ]

    def page(req: Recorded) -> tuple[int, Any]:
        if req.query.get("nextPageToken"):
            return 200, {"events": events[1:], "nextPageToken": "", "nextCursor": 0}
        return 200, {"events": events[:1], "nextPageToken": "p2", "nextCursor": 2}

    server.on("GET", f"{NS}/workflows/order-17/history", page)
    res = run("wf", "history", "order-17", "--reverse")
    assert res.code == 0
    assert server.requests[0].query == {"reverse": "true"}
    lines = res.out.splitlines()
    assert lines[0].split()[:4] == ["EVENT", "ID", "TIME", "TYPE"]
    assert "WORKFLOW_TASK_SCHEDULED" in lines[1] and "WORKFLOW_EXECUTION_STARTED" in lines[2]


def test_wf_query_and_reset(server: FakeServer, run: Any) -> None:
    server.on("POST", f"{NS}/workflows/order-17/query", (200, {"queryResult": {"status": "ok"}}))
    server.on("POST", f"{NS}/workflows/order-17/reset", (200, EXECUTION))

    res = run("wf", "query", "order-17", "__workflow_metadata", "--args", "[1, 2]")
    assert res.code == 0
    assert server.last.body == {"queryType": "__workflow_metadata", "args": [1, 2]}
    assert json.loads(res.out) == {"status": "ok"}

    assert run("wf", "reset", "order-17", "--event-id", "4", "--reason", "bad deploy").code == 0
    assert server.last.body == {"eventId": 4, "reason": "bad deploy"}


# ------------------------------------------------------------------ schedules


def test_schedule_create_interval(server: FakeServer, run: Any) -> None:
    server.on("POST", f"{NS}/schedules", lambda req: (200, {**req.body, "namespace": "default"}))
    res = run("schedule", "create", "poll", "--spec", "30s", "--type", "poll-feed", "--overlap", "allow_all", "--paused")
    assert res.code == 0, res.err
    assert server.last.body == {
        "scheduleId": "poll",
        "spec": {"interval": [{"interval": "30s"}]},
        "action": {"workflowType": {"name": "poll-feed"}, "taskQueue": "default"},
        "state": {"paused": True},
        "policies": {"overlapPolicy": "allow_all"},
    }
    assert server.last.query == {}


def test_schedule_create_cron_with_input(server: FakeServer, run: Any) -> None:
    server.on("POST", f"{NS}/schedules", (200, {"scheduleId": "nightly"}))
    res = run("schedule", "create", "nightly", "--spec", "0 3 * * *", "--type", "report",
              "--queue", "reports", "--input", '{"full": true}', "--upsert")
    assert res.code == 0
    assert server.last.body == {
        "scheduleId": "nightly",
        "spec": {"cronString": ["0 3 * * *"]},
        "action": {"workflowType": {"name": "report"}, "taskQueue": "reports", "input": {"full": True}},
        "state": {"paused": False},
    }
    assert server.last.query == {"upsert": "true"}


@pytest.mark.parametrize(
    ("spec", "interval"),
    [("30s", True), ("1h30m", True), ("1.5s", True), ("500ms", True), ("1d", False),
     ("@every 5m", False), ("@hourly", False), ("*/5 * * * *", False), ("5", False)],
)
def test_schedule_spec_classification(spec: str, interval: bool) -> None:
    assert ("interval" in ctl.schedule_spec(spec)) is interval


def test_schedule_other_subcommands(server: FakeServer, run: Any) -> None:
    base = f"{NS}/schedules/nightly"
    schedule = {"scheduleId": "nightly", "spec": {"cronString": ["0 3 * * *"]},
                "action": {"workflowType": {"name": "report"}}, "state": {"paused": False},
                "info": {"nextActionTime": "2026-05-01T03:00:00Z"}}
    server.on("GET", f"{NS}/schedules", (200, {"schedules": [schedule], "nextPageToken": ""}))
    server.on("GET", base, (200, schedule))
    server.on("POST", f"{base}/pause", (200, {"status": "paused"}))
    server.on("POST", f"{base}/unpause", (200, {"status": "running"}))
    server.on("POST", f"{base}/trigger", (200, {"status": "triggered", "execution": EXECUTION}))
    server.on("DELETE", base, (200, {"status": "deleted"}))
    server.on("GET", f"{base}/matching-times", (200, {"matchingTimes": ["2026-05-01T03:00:00Z"]}))

    res = run("schedule", "list")
    assert res.out.splitlines()[1].split() == ["nightly", "report", "0", "3", "*", "*", "*", "false", "2026-05-01T03:00:00Z"]
    assert run("schedule", "describe", "nightly").code == 0
    assert server.last.method == "GET" and server.last.path == base
    assert run("schedule", "pause", "nightly", "--note", "maintenance").out == "status: paused\n"
    assert server.last.body == {"note": "maintenance"}
    assert run("schedule", "unpause", "nightly").out == "status: running\n"
    assert server.last.body == {}
    assert run("schedule", "trigger", "nightly").code == 0
    assert (server.last.path, server.last.body) == (f"{base}/trigger", {})
    assert run("schedule", "delete", "nightly").out == "status: deleted\n"
    assert server.last.method == "DELETE"
    res = run("schedule", "times", "nightly", "--from", "2026-05-01T00:00:00Z", "--to", "2026-05-02T00:00:00Z")
    assert server.last.query == {"from": "2026-05-01T00:00:00Z", "to": "2026-05-02T00:00:00Z"}
    assert res.out.split() == ["TIME", "2026-05-01T03:00:00Z"]


# ------------------------------------------------------- namespaces, cluster


def test_ns_subcommands(server: FakeServer, run: Any) -> None:
    record = {"namespaceInfo": {"name": "payments", "state": "NAMESPACE_STATE_REGISTERED", "region": "embedded"},
              "config": {"workflowExecutionRetentionTtl": "168h", "apsLimit": 400}, "isActive": True}
    server.on("GET", "/v1/tasks/namespaces", (200, {"namespaces": [record], "nextPageToken": ""}))
    server.on("POST", "/v1/tasks/namespaces", (200, record))
    server.on("GET", "/v1/tasks/namespaces/payments", (200, record))
    server.on("DELETE", "/v1/tasks/namespaces/payments", (200, {**record, "isActive": False}))

    res = run("ns", "create", "payments", "--retention", "168h", "--description", "card payments")
    assert res.code == 0
    assert server.last.body == {
        "namespaceInfo": {"name": "payments", "description": "card payments"},
        "config": {"workflowExecutionRetentionTtl": "168h"},
    }
    res = run("ns", "list")
    assert res.out.splitlines()[1].split() == ["payments", "REGISTERED", "168h", "embedded"]
    assert run("ns", "describe", "payments").code == 0
    res = run("ns", "delete", "payments")
    assert server.last.method == "DELETE"
    assert "isActive: false" in res.out


def test_cluster_status(server: FakeServer, run: Any) -> None:
    body = {"nodeId": "n1", "version": "0.1.0", "replicator": "local", "replicationFactor": 3, "seed": "tasks",
            "members": [{"nodeId": "n1", "httpAddr": "h:1", "zapAddr": "h:2", "peerAddr": "h:3", "state": "alive", "voter": True}],
            "metaLeader": "n1", "partitionCount": 1,
            "partitions": [{"id": 0, "leader": "n1", "preferredLeader": "n1", "replicas": ["n1"], "local": True, "shards": 2}],
            "namespaces": [], "nextPageToken": "", "stats": {"uptimeSeconds": 5}}
    server.on("GET", "/v1/tasks/cluster", (200, body))
    res = run("cluster", "status")
    assert res.code == 0
    assert "nodeId: n1" in res.out and "MEMBERS" in res.out and "PARTITIONS" in res.out
    assert "uptimeSeconds: 5" in res.out
    assert run("-o", "json", "cluster", "status").json() == body


def test_cluster_health_exit_codes(server: FakeServer, run: Any) -> None:
    degraded = {"status": "degraded", "nodeId": "n1", "reasons": [{"group": "meta", "reason": "no_leader"}]}
    server.on("GET", "/v1/tasks/cluster/health", (200, {"status": "ok", "nodeId": "n1", "groups": 1}), (503, degraded))
    res = run("cluster", "health")
    assert (res.code, res.out.splitlines()[0]) == (0, "status: ok")
    res = run("-o", "json", "cluster", "health")
    assert res.code == 1
    assert res.json() == degraded


# ------------------------------------------------------------------ migration


JOB = {"id": "mig-0123456789abcdef", "org": "", "namespace": "payments", "from": "n1", "to": "n2",
       "status": "pending", "bytes": 0, "tailEntries": 0, "fencedMs": 0, "startedAt": "2026-04-30T07:31:18.120Z",
       "finishedAt": None, "error": None}


def test_migrate_without_wait(server: FakeServer, run: Any) -> None:
    server.on("POST", "/v1/tasks/namespaces/payments/migrate", (202, JOB))
    res = run("migrate", "payments", "--to", "n2")
    assert res.code == 0
    assert server.last.body == {"toNode": "n2"}
    assert "id: mig-0123456789abcdef" in res.out
    assert "finishedAt: -" in res.out


def test_migrate_wait_until_done(server: FakeServer, run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctl_migrations, "POLL_INTERVAL", 0.01)
    path = "/v1/tasks/migrations/mig-0123456789abcdef"
    server.on("POST", "/v1/tasks/namespaces/payments/migrate", (202, JOB))
    server.on(
        "GET",
        path,
        (200, {**JOB, "status": "snapshotting", "bytes": 2048}),
        (503, {"code": "unavailable", "message": "leader moving"}),  # tolerated while polling
        (200, {**JOB, "status": "catching-up", "bytes": 4096, "tailEntries": 7}),
        (200, {**JOB, "status": "done", "bytes": 4096, "tailEntries": 9, "fencedMs": 12}),
    )
    res = run("migrate", "payments", "--to", "n2", "--wait")
    assert res.code == 0, res.err
    assert [r.method for r in server.requests] == ["POST", "GET", "GET", "GET", "GET"]
    assert "snapshotting" in res.err and "catching-up" in res.err
    assert "done" in res.err and "tail=9" in res.err and "fenced=12ms" in res.err
    assert "status: done" in res.out


def test_migrate_wait_failed_exits_1(server: FakeServer, run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctl_migrations, "POLL_INTERVAL", 0.01)
    server.on("POST", "/v1/tasks/namespaces/payments/migrate", (202, JOB))
    server.on("GET", "/v1/tasks/migrations/mig-0123456789abcdef",
              (200, {**JOB, "status": "failed", "error": "fence exceeded max_fence"}))
    res = run("-o", "json", "migrate", "payments", "--to", "n2", "--wait")
    assert res.code == 1
    assert res.json()["status"] == "failed"
    assert "error: failed: migration mig-0123456789abcdef failed: fence exceeded max_fence" in res.err


def test_migrations_list_and_describe(server: FakeServer, run: Any) -> None:
    server.on("GET", "/v1/tasks/migrations", (200, {"jobs": [{**JOB, "status": "done", "bytes": 3 << 20}], "nextPageToken": ""}))
    server.on("GET", "/v1/tasks/migrations/mig-0123456789abcdef", (200, JOB))
    res = run("migrations", "list")
    header, row = res.out.splitlines()
    assert header.split()[:5] == ["ID", "NAMESPACE", "FROM", "TO", "STATUS"]
    assert row.split()[:6] == ["mig-0123456789abcdef", "payments", "n1", "n2", "done", "3.0MiB"]
    assert run("migrations", "describe", "mig-0123456789abcdef").code == 0
    assert server.last.path == "/v1/tasks/migrations/mig-0123456789abcdef"


# ------------------------------------------------------- globals, env, errors


def test_token_namespace_and_output_from_flags_anywhere(server: FakeServer, run: Any) -> None:
    server.on("GET", "/v1/tasks/namespaces/prod/workflows", (200, {"executions": [], "nextPageToken": ""}))
    res = run("wf", "list", "-n", "prod", "--token", "t0k", "--output", "json")
    assert res.code == 0
    assert server.last.headers["Authorization"] == "Bearer t0k"
    assert res.json() == {"executions": [], "nextPageToken": ""}


def test_environment_defaults(server: FakeServer, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    server.on("GET", "/v1/tasks/namespaces/staging/schedules", (200, {"schedules": [], "nextPageToken": ""}))
    monkeypatch.setenv("TASKS_URL", server.url + "/")
    monkeypatch.setenv("TASKS_AUTH_TOKEN", "env-token")
    monkeypatch.setenv("TASKS_NAMESPACE", "staging")
    assert ctl.main(["schedule", "list"]) == 0
    assert server.last.path == "/v1/tasks/namespaces/staging/schedules"
    assert server.last.headers["Authorization"] == "Bearer env-token"
    assert capsys.readouterr().out.split() == ["SCHEDULE", "ID", "WORKFLOW", "TYPE", "SPEC", "PAUSED", "NEXT", "ACTION"]


def test_api_error_goes_to_stderr_with_exit_1(server: FakeServer, run: Any) -> None:
    server.on("POST", f"{NS}/workflows", (409, {"code": "already_started", "message": "workflow order-17 is running",
                                                "details": {"workflowId": "order-17", "runId": "a" * 32}}))
    res = run("wf", "start", "charge-card", "--id", "order-17")
    assert res.code == 1
    assert res.out == ""
    assert res.err.splitlines()[0] == "error: already_started: workflow order-17 is running"
    assert "order-17" in res.err.splitlines()[1]


def test_not_found_error(server: FakeServer, run: Any) -> None:
    res = run("-o", "json", "wf", "describe", "ghost")
    assert res.code == 1 and res.out == ""
    assert res.err.startswith("error: not_found: ")


def test_non_json_error_body(server: FakeServer, run: Any) -> None:
    server.on("GET", "/v1/tasks/cluster", (502, "<html>bad gateway</html>"))
    res = run("cluster", "status")
    assert res.code == 1
    assert res.err.startswith("error: unavailable: HTTP 502")


def test_connection_refused_is_unavailable(run: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = run("cluster", "status", url=f"http://127.0.0.1:{port}")
    assert res.code == 1
    assert res.err.startswith("error: unavailable: ")
    assert res.out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["wf", "start"],  # missing TYPE
        ["wf", "bogus"],  # unknown subcommand
        ["nope"],
        ["wf", "list", "--page-size", "many"],
        ["wf", "start", "t", "--input", "{not json"],
        ["wf", "start", "t", "--input", "@/nonexistent/file.json"],
        ["wf", "reset", "order-17"],  # --event-id is required
        ["--output", "yaml", "cluster", "status"],
        ["schedule", "create", "x", "--spec", "30s"],  # --type is required
        ["wf"],  # a group without its command
        [],
    ],
)
def test_usage_errors_exit_2_without_calling_the_server(server: FakeServer, run: Any, argv: list[str]) -> None:
    res = run(*argv)
    assert res.code == 2
    assert not server.requests
    assert res.out == ""


def test_usage_error_format(run: Any) -> None:
    res = run("wf", "start")
    assert "usage: tasksctl wf start" in res.err
    assert res.err.splitlines()[-1] == "error: usage: the following arguments are required: TYPE"
    res = run("wf", "start", "t", "--input", "nope")
    assert res.err.startswith("error: usage: --input: not valid JSON")


def test_bad_url_is_a_usage_error(run: Any) -> None:
    res = run("cluster", "status", url="ftp://x")
    assert res.code == 2 and "--url" in res.err


@pytest.mark.parametrize("argv", [["--help"], ["wf", "--help"], ["wf", "start", "--help"], ["schedule", "create", "-h"]])
def test_help_at_every_level(run: Any, argv: list[str]) -> None:
    res = run(*argv)
    assert res.code == 0
    assert "usage: tasksctl" in res.out
    assert "example" in res.out or "commands" in res.out


def test_every_group_lists_its_commands(run: Any) -> None:
    expected = {
        "cluster": ["status", "health"],
        "ns": ["list", "create", "describe", "delete"],
        "wf": ["start", "describe", "list", "signal", "cancel", "terminate", "history", "query", "reset"],
        "schedule": ["create", "list", "describe", "pause", "unpause", "trigger", "delete", "times"],
        "migrations": ["list", "describe"],
    }
    for group, commands in expected.items():
        text = run(group, "--help").out
        for command in commands:
            assert f"    {command} " in text, (group, command)
