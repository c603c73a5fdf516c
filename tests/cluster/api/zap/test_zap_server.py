"""The ZAP listener of a real ``tasksd`` process, over real sockets (SPEC §8).

One node serves the module (started with ``--zap 127.0.0.1:0``; its address is
parsed from the ``serving ... zap=HOST:PORT`` log line). Tests use their own
ids, and the load-heavy ones a namespace without a rate limit, so they do not
see each other. The client here is deliberately raw (blocking sockets and
``protocol.zap``) so that every byte on the wire is under the test's control.
"""

from __future__ import annotations

import itertools
import re
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.zap import Op
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import NodeProcess

_ZAP_ADDR = re.compile(r"serving http=\S+ zap=(\S+)")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
Addr = tuple[str, int]
LOAD_NS = "zapload"


def health_of(ns: str = "default") -> dict[str, Any]:
    return {"service": "tasks", "status": "ok", "node_id": "t1", "namespace": ns}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def start_zap_node(root: Path, *extra: str) -> tuple[NodeProcess, Addr]:
    node = NodeProcess(root, ["--zap", "127.0.0.1:0", *extra]).start()
    m = _ZAP_ADDR.search(node.log())
    assert m, node.log()
    host, port = m.group(1).rsplit(":", 1)
    return node, (host, int(port))


class Conn:
    """A raw ZAP connection: send frames, read responses (out-of-order ones are kept)."""

    def __init__(self, addr: Addr, *, hello: bool = True, namespace: str | None = None,
                 timeout: float = 15.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(addr)
        self.reader = Z.FrameReader(1 << 30, Z.SERVER_KINDS)
        self.ids = itertools.count(1)
        self.kept: dict[int, dict[str, Any]] = {}
        if hello:
            body: dict[str, Any] = {"client_id": "test", "sdk_name": "pytest", "sdk_version": "1"}
            if namespace:
                body["namespace"] = namespace
            r = self.call(Op.Hello, body)
            assert r["status"] == 200, r

    def frame(self, op: int, body: Any = None, *, fid: int | None = None, kind: int = Z.REQUEST) -> tuple[int, bytes]:
        fid = fid if fid is not None else next(self.ids)
        return fid, Z.encode_frame(kind, op, fid, body)

    def send(self, op: int, body: Any = None, **kw: Any) -> int:
        fid, data = self.frame(op, body, **kw)
        self.sock.sendall(data)
        return fid

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> tuple[int, int, dict[str, Any]]:
        """The next response as (id, opcode, body); EOFError when the server closed."""
        while True:
            f = self.reader.next_frame()
            if f is not None:
                assert f.kind == Z.RESPONSE
                body = Z.decode_body(f.body)
                Z.parse_response(body)
                return f.frame_id, f.opcode, body
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            if not data:
                self.reader.eof()
                raise EOFError
            self.reader.feed(data)

    def wait(self, fid: int) -> dict[str, Any]:
        while fid not in self.kept:
            got, _, body = self.recv()
            assert got not in self.kept, f"two responses for id {got}"
            self.kept[got] = body
        return self.kept.pop(fid)

    def call(self, op: int, body: Any = None) -> dict[str, Any]:
        return self.wait(self.send(op, body))

    def ok(self, op: int, body: Any = None) -> Any:
        r = self.call(op, body)
        assert r["status"] == 200 and "error" not in r, r
        return r["body"]

    def err(self, op: int, body: Any, status: int, code: str) -> dict[str, Any]:
        r = self.call(op, body)
        assert r["status"] == status and r["body"] is None, r
        assert r["error"]["code"] == code and isinstance(r["error"]["message"], str), r
        return r["error"]

    def assert_closed(self) -> list[dict[str, Any]]:
        """Read until the server closes; returns the responses that came first."""
        got: list[dict[str, Any]] = []
        try:
            while True:
                got.append(self.recv()[2])
        except EOFError:
            return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, Addr]]:
    node, addr = start_zap_node(tmp_path_factory.mktemp("zap") / "n1")
    c = Conn(addr)
    c.ok(Op.RegisterNamespace, {"name": LOAD_NS, "aps_limit": 0})  # no rate limit for load tests
    c.close()
    yield node, addr
    node.kill()


@pytest.fixture
def zap(served: tuple[NodeProcess, Addr]) -> Addr:
    return served[1]


@pytest.fixture
def c(zap: Addr) -> Iterator[Conn]:
    conn = Conn(zap)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def big_wid(served: tuple[NodeProcess, Addr]) -> str:
    """A workflow whose describe answer is ~1.5 MB: for clients that do not read."""
    conn = Conn(served[1])
    wid = uid("big")
    conn.ok(Op.StartWorkflow, {"namespace": LOAD_NS, "workflow_type": "big", "workflow_id": wid,
                               "input": "x" * 1_500_000})
    conn.close()
    return wid


# ---------------------------------------------------------------------------
# the node: log line, settings, metrics


def test_serving_line_and_settings(served: tuple[NodeProcess, Addr]) -> None:
    node, (host, port) = served
    assert re.search(r"serving http=127\.0\.0\.1:\d+ zap=127\.0\.0\.1:\d+ ", node.log())
    assert node.get("/v1/tasks/settings")[1]["zapAddr"] == f"{host}:{port}"


# ---------------------------------------------------------------------------
# session (§8.3)


def test_hello_required_first(zap: Addr) -> None:
    c = Conn(zap, hello=False)
    fid = c.send(Op.Health)
    fid2, op, body = c.recv()
    assert (fid2, op) == (fid, Op.Health)
    assert body["status"] == 400 and body["error"] == {"code": "invalid_argument", "message": "HELLO required"}
    assert c.assert_closed() == []


@pytest.mark.parametrize("op", [Op.StartWorkflow, Op.SubscribeWorkflowTasks, 0x1234])
def test_any_request_before_hello_closes(zap: Addr, op: int) -> None:
    c = Conn(zap, hello=False)
    c.send(op, {"workflow_type": "x"})
    assert [r["error"]["message"] for r in c.assert_closed()] == ["HELLO required"]


def test_hello_answer(zap: Addr) -> None:
    c = Conn(zap, hello=False)
    body = c.ok(Op.Hello, {"client_id": "me", "sdk_name": "py", "sdk_version": "0.1", "auth_token": "ignored"})
    assert body["node_id"] == "t1" and body["org"] == "" and body["namespace"] == "default"
    assert body["max_frame"] == 16 * 1024 * 1024
    assert isinstance(body["server_version"], str) and body["server_version"]
    assert c.ok(Op.Health) == health_of()


def test_failed_hello_leaves_the_connection_open_but_unauthenticated(zap: Addr) -> None:
    c = Conn(zap, hello=False)
    c.err(Op.Hello, {"client_id": "me", "namespace": "bad ns"}, 400, "invalid_argument")
    c.err(Op.Hello, {"sdk_name": "py"}, 400, "invalid_argument")  # client_id missing
    c.err(Op.Hello, {"client_id": "a/b"}, 400, "invalid_argument")
    assert c.ok(Op.Hello, {"client_id": "me"})["namespace"] == "default"
    assert c.ok(Op.Health) == health_of()


def test_hello_namespace_is_the_default_and_can_change(zap: Addr) -> None:
    c = Conn(zap, namespace=LOAD_NS)
    assert c.ok(Op.Health) == health_of(LOAD_NS)
    assert c.ok(Op.Health, {"namespace": "default"}) == health_of("default")
    assert c.ok(Op.Hello, {"client_id": "me", "namespace": "default"})["namespace"] == "default"
    assert c.ok(Op.Health) == health_of("default")
    c.err(Op.Health, {"namespace": ".."}, 400, "invalid_argument")
    c.err(Op.Health, {"namespace": 5}, 400, "invalid_argument")
    assert c.ok(Op.Health) == health_of("default")


# ---------------------------------------------------------------------------
# workflows


def test_workflow_lifecycle(c: Conn) -> None:
    ns = LOAD_NS
    wid = uid("life")
    started = c.ok(Op.StartWorkflow, {
        "namespace": ns, "workflow_type": "charge", "workflow_id": wid, "task_queue": "pay",
        "input": {"amount": 5, "items": [1, 2.5, None, True]}, "memo": {"k": "v"}, "identity": "me",
        "execution_timeout_ms": 3_600_000, "run_timeout_ms": 90_000, "task_timeout_ms": 1500,
        "retry_policy": {"initial_interval_ms": 1500, "backoff_coefficient": 3.0, "maximum_interval_ms": 60_000,
                         "maximum_attempts": 4, "non_retryable_error_types": ["Bad"]},
    })
    assert started["workflow_id"] == wid and started["started"] is True and HEX32.match(started["run_id"])
    rid = started["run_id"]

    d = c.ok(Op.DescribeWorkflow, {"namespace": ns, "workflow_id": wid})
    ex = d["execution"]
    assert ex["execution"] == {"workflowId": wid, "runId": rid}
    assert ex["type"] == {"name": "charge"} and ex["taskQueue"] == "pay"
    assert ex["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"
    assert ex["input"] == {"amount": 5, "items": [1, 2.5, None, True]} and ex["memo"] == {"k": "v"}
    assert d["execution_config"] == {
        "taskQueue": {"name": "pay"}, "workflowExecutionTimeout": "1h", "workflowRunTimeout": "1m30s",
        "workflowTaskTimeout": "1.5s",
        "retryPolicy": {"initialInterval": "1.5s", "backoffCoefficient": 3.0, "maximumInterval": "1m",
                        "maximumAttempts": 4, "nonRetryableErrorTypes": ["Bad"]},
    }
    assert d["pending_activities"] == []
    assert d["pending_workflow_task"]["state"] == "WORKFLOW_TASK_STATE_SCHEDULED"
    assert c.ok(Op.DescribeWorkflow, {"namespace": ns, "workflow_id": wid, "run_id": rid})["execution"] == ex

    assert c.ok(Op.SignalWorkflow, {"namespace": ns, "workflow_id": wid, "signal_name": "go",
                                    "input": [1, "two"], "identity": "me", "request_id": uid("sig")}) == {}

    listed = c.ok(Op.ListWorkflows, {"namespace": ns, "query": f"WorkflowId = '{wid}'", "page_size": 10})
    assert [e["execution"]["runId"] for e in listed["executions"]] == [rid]
    assert "input" not in listed["executions"][0] and listed["next_page_token"] == ""

    hist = c.ok(Op.GetWorkflowHistory, {"namespace": ns, "workflow_id": wid})
    types = [e["eventType"] for e in hist["events"]]
    assert [e["eventId"] for e in hist["events"]] == list(range(1, len(types) + 1))
    assert types[0] == "WORKFLOW_EXECUTION_STARTED" and "WORKFLOW_EXECUTION_SIGNALED" in types
    assert hist["next_page_token"] == ""
    page = c.ok(Op.GetWorkflowHistory, {"namespace": ns, "workflow_id": wid, "reverse": True, "page_size": 1})
    assert [e["eventId"] for e in page["events"]] == [len(types)] and page["next_page_token"]
    nxt = c.ok(Op.GetWorkflowHistory, {"namespace": ns, "workflow_id": wid, "reverse": True, "page_size": 1,
                                       "next_page_token": page["next_page_token"]})
    assert [e["eventId"] for e in nxt["events"]] == [len(types) - 1]
    after = c.ok(Op.GetWorkflowHistory, {"namespace": ns, "workflow_id": wid, "after_event_id": 1})
    assert after["events"][0]["eventId"] == 2

    q = c.ok(Op.QueryWorkflow, {"namespace": ns, "workflow_id": wid, "query_type": "__workflow_metadata",
                                "timeout_ms": 2000})
    assert q["result"]["workflowType"] == "charge"
    assert q["result"]["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"
    c.err(Op.QueryWorkflow, {"namespace": ns, "workflow_id": wid, "query_type": "user"}, 503, "no_workers")

    canceled = c.ok(Op.CancelWorkflow, {"namespace": ns, "workflow_id": wid, "reason": "why", "identity": "me"})
    # No worker has started a task, so the cancel closes the run at once.
    assert canceled["execution"]["status"] == "WORKFLOW_EXECUTION_STATUS_CANCELED"
    other = c.ok(Op.StartWorkflow, {"namespace": ns, "workflow_type": "charge"})
    term = c.ok(Op.TerminateWorkflow, {"namespace": ns, "workflow_id": other["workflow_id"],
                                       "run_id": other["run_id"], "reason": "done", "identity": "me"})
    assert term["execution"]["status"] == "WORKFLOW_EXECUTION_STATUS_TERMINATED"

    reset = c.ok(Op.ResetWorkflow, {"namespace": ns, "workflow_id": wid, "event_id": 2, "reason": "again",
                                    "request_id": uid("reset")})
    new = reset["execution"]
    assert new["execution"]["workflowId"] == wid and new["execution"]["runId"] != rid
    assert new["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"
    assert new["resetFrom"]["runId"] == rid and new["resetFrom"]["eventId"] == 2
    c.err(Op.ResetWorkflow, {"namespace": ns, "workflow_id": wid, "event_id": 10_000}, 400, "invalid_argument")
    c.err(Op.ResetWorkflow, {"namespace": ns, "workflow_id": wid, "event_id": "2"}, 400, "invalid_argument")


def test_submit_task_is_idempotent_with_a_request_id(c: Conn) -> None:
    req = uid("req")
    first = c.ok(Op.SubmitTask, {"namespace": LOAD_NS, "task_type": "Email.Send", "payload": {"to": "a@b"},
                                 "request_id": req, "retry_policy": {"maximum_attempts": 2}})
    assert first["started"] is True and first["workflow_id"].startswith("email.send-")
    again = c.ok(Op.SubmitTask, {"namespace": LOAD_NS, "task_type": "Email.Send", "payload": {"to": "a@b"},
                                 "request_id": req})
    assert again == {**first, "started": False}
    d = c.ok(Op.DescribeWorkflow, {"namespace": LOAD_NS, "workflow_id": first["workflow_id"]})
    assert d["execution"]["taskQueue"] == "default" and d["execution"]["input"] == {"to": "a@b"}
    assert d["execution_config"]["retryPolicy"]["maximumAttempts"] == 2
    own = c.ok(Op.SubmitTask, {"namespace": LOAD_NS, "task_type": "t", "workflow_id": uid("own"),
                               "task_queue": "q2"})
    assert own["started"] is True
    c.err(Op.SubmitTask, {"namespace": LOAD_NS}, 400, "invalid_argument")


def test_signal_with_start(c: Conn) -> None:
    wid = uid("sws")
    body = {"namespace": LOAD_NS, "workflow_type": "t", "workflow_id": wid, "signal_name": "s", "signal_input": 7}
    first = c.ok(Op.SignalWithStart, body)
    assert first["started"] is True
    second = c.ok(Op.SignalWithStart, body)
    assert second == {**first, "started": False}
    hist = c.ok(Op.GetWorkflowHistory, {"namespace": LOAD_NS, "workflow_id": wid})["events"]
    sigs = [e for e in hist if e["eventType"] == "WORKFLOW_EXECUTION_SIGNALED"]
    assert len(sigs) == 2
    c.err(Op.SignalWithStart, {**body, "signal_name": None}, 400, "invalid_argument")


def test_id_conflict_policies(c: Conn) -> None:
    wid = uid("conflict")
    base = {"namespace": LOAD_NS, "workflow_type": "t", "workflow_id": wid}
    rid = c.ok(Op.StartWorkflow, base)["run_id"]
    err = c.err(Op.StartWorkflow, base, 409, "already_started")
    assert err["details"] == {"workflowId": wid, "runId": rid}
    assert c.ok(Op.StartWorkflow, {**base, "id_conflict_policy": "use_existing"}) == {
        "workflow_id": wid, "run_id": rid, "started": False}
    new = c.ok(Op.StartWorkflow, {**base, "id_conflict_policy": "WORKFLOW_ID_CONFLICT_POLICY_TERMINATE_EXISTING"})
    assert new["started"] is True and new["run_id"] != rid
    c.err(Op.StartWorkflow, {**base, "id_conflict_policy": "nope"}, 400, "invalid_argument")


def test_error_mapping(c: Conn) -> None:
    ns = LOAD_NS
    c.err(Op.DescribeWorkflow, {"namespace": ns, "workflow_id": uid("none")}, 404, "not_found")
    c.err(Op.SignalWorkflow, {"namespace": ns, "workflow_id": uid("none"), "signal_name": "s"}, 404, "not_found")
    c.err(Op.GetWorkflowHistory, {"namespace": ns, "workflow_id": uid("none")}, 404, "not_found")
    c.err(Op.DescribeWorkflow, {"namespace": uid("nons"), "workflow_id": "w"}, 404, "not_found")
    c.err(Op.DescribeSchedule, {"namespace": ns, "schedule_id": uid("none")}, 404, "not_found")
    c.err(Op.DescribeNamespace, {"name": uid("nons")}, 404, "not_found")
    bad: list[tuple[int, dict[str, Any]]] = [
        (Op.StartWorkflow, {"workflow_type": "t", "workflow_id": "a/b"}),
        (Op.StartWorkflow, {"workflow_type": "t", "workflow_id": ".."}),
        (Op.StartWorkflow, {"workflow_type": "t", "namespace": "bad ns"}),
        (Op.StartWorkflow, {"workflow_type": 5}),
        (Op.StartWorkflow, {}),
        (Op.StartWorkflow, {"workflow_type": "t", "execution_timeout_ms": "10s"}),
        (Op.StartWorkflow, {"workflow_type": "t", "task_timeout_ms": 10}),
        (Op.StartWorkflow, {"workflow_type": "t", "task_timeout_ms": True}),
        (Op.StartWorkflow, {"workflow_type": "t", "retry_policy": {"initial_interval_ms": "1s"}}),
        (Op.StartWorkflow, {"workflow_type": "t", "retry_policy": [1]}),
        (Op.StartWorkflow, {"workflow_type": "t", "run_id": "xyz"}),
        (Op.StartWorkflow, {"workflow_type": "t", "memo": "not a map"}),
        (Op.DescribeWorkflow, {}),
        (Op.DescribeWorkflow, {"workflow_id": "w", "run_id": "XYZ"}),
        (Op.SignalWorkflow, {"workflow_id": "w"}),
        (Op.SignalWorkflow, {"workflow_id": "w", "signal_name": "a\x00b"}),
        (Op.ListWorkflows, {"page_size": 0}),
        (Op.ListWorkflows, {"page_size": 1001}),
        (Op.ListWorkflows, {"next_page_token": "garbage!"}),
        (Op.ListWorkflows, {"query": "WorkflowId = "}),
        (Op.GetWorkflowHistory, {"workflow_id": "w", "reverse": "yes"}),
        (Op.GetWorkflowHistory, {"workflow_id": "w", "after_event_id": -1}),
        (Op.QueryWorkflow, {"workflow_id": "w"}),
        (Op.ResetWorkflow, {"workflow_id": "w"}),
        (Op.CreateSchedule, {"schedule_id": "s"}),
        (Op.CreateSchedule, {"schedule_id": "x" * 201, "schedule": {}}),
        (Op.DeleteSchedule, {"schedule_id": ".."}),
        (Op.DescribeNamespace, {"name": "a b"}),
        (Op.RegisterNamespace, {"name": "a/b"}),
        (Op.RegisterNamespace, {}),
        (Op.RegisterNamespace, {"name": uid("n"), "retention_ms": 10}),
    ]
    for op, body in bad:
        body.setdefault("namespace", ns)
        r = c.call(op, body)
        assert (r["status"], r["error"]["code"]) == (400, "invalid_argument"), (Z.OPCODES[op], body, r)
    assert c.ok(Op.Health) == health_of()


def test_every_worker_opcode_is_served(c: Conn) -> None:
    """No worker opcode answers "not implemented": each reaches its own handler,
    which rejects an empty body with a 4xx (or accepts it)."""
    for op in sorted(Z.WORKER_OPCODES):
        resp = c.call(op, {})
        assert resp["status"] != 501 and resp["status"] < 500, (Z.opcode_name(op), resp)
    assert c.ok(Op.Health) == health_of()


def test_workflow_worker_opcodes_validate_their_input(c: Conn) -> None:
    c.err(Op.SubscribeWorkflowTasks, {"task_queue": "q", "max_concurrent": 0}, 400, "invalid_argument")
    c.err(Op.SubscribeWorkflowTasks, {"task_queue": "a/b", "max_concurrent": 1}, 400, "invalid_argument")
    for op in (Op.RespondWorkflowTaskCompleted, Op.RecordHeartbeat, Op.RespondWorkflowTaskFailed):
        err = c.err(op, {"task_token": "tt1.x.y"}, 400, "invalid_argument")
        assert err["message"] == "invalid task token"
    assert c.ok(Op.Unsubscribe, {"subscription_id": "nope"}) == {}
    assert c.ok(Op.Health) == health_of()


# ---------------------------------------------------------------------------
# schedules


def test_schedule_recurring_and_schedule_opcodes(c: Conn) -> None:
    ns = LOAD_NS
    sid = uid("sched")
    first = c.ok(Op.ScheduleRecurring, {"namespace": ns, "name": sid, "spec": " 1h ", "task_queue": "tq1",
                                        "input": {"k": 1}})
    assert first == {"schedule_id": sid, "created": True}
    s = c.ok(Op.DescribeSchedule, {"namespace": ns, "schedule_id": sid})["schedule"]
    assert s["scheduleId"] == sid and s["namespace"] == ns
    assert s["spec"]["interval"] == [{"interval": "1h", "phase": "0s"}]
    assert s["action"] == {"workflowType": {"name": sid}, "taskQueue": "tq1", "input": {"k": 1}}
    assert s["policies"]["overlapPolicy"] == "SCHEDULE_OVERLAP_POLICY_SKIP"
    assert s["state"]["paused"] is False and s["info"]["nextActionTime"]

    # An upsert: the same name again replaces the spec and reports created = False.
    again = c.ok(Op.ScheduleRecurring, {"namespace": ns, "name": sid, "spec": "*/5 * * * *",
                                        "overlap_policy": "allow_all"})
    assert again == {"schedule_id": sid, "created": False}
    s = c.ok(Op.DescribeSchedule, {"namespace": ns, "schedule_id": sid})["schedule"]
    assert s["spec"]["cronString"] == ["*/5 * * * *"] and "interval" not in s["spec"]
    assert s["policies"]["overlapPolicy"] == "SCHEDULE_OVERLAP_POLICY_ALLOW_ALL"
    assert s["action"]["taskQueue"] == "default"

    paused = c.ok(Op.PauseSchedule, {"namespace": ns, "schedule_id": sid, "note": "maintenance"})["schedule"]
    assert paused["state"]["paused"] is True and paused["state"]["note"] == "maintenance"
    assert "nextActionTime" not in paused["info"]
    running = c.ok(Op.UnpauseSchedule, {"namespace": ns, "schedule_id": sid})["schedule"]
    assert running["state"]["paused"] is False
    assert c.ok(Op.PauseSchedule, {"namespace": ns, "schedule_id": sid})["schedule"]["state"]["paused"] is True
    unp = c.ok(Op.PauseSchedule, {"namespace": ns, "schedule_id": sid, "paused": False})["schedule"]
    assert unp["state"]["paused"] is False

    trig = c.ok(Op.TriggerSchedule, {"namespace": ns, "schedule_id": sid, "request_id": uid("trig")})
    assert trig["status"] == "triggered" and trig["workflow_id"].startswith(sid + "-") and HEX32.match(trig["run_id"])
    d = c.ok(Op.DescribeWorkflow, {"namespace": ns, "workflow_id": trig["workflow_id"]})
    assert d["execution"]["scheduleId"] == sid

    listed = c.ok(Op.ListSchedules, {"namespace": ns, "page_size": 1000})
    assert sid in [x["scheduleId"] for x in listed["schedules"]] and listed["next_page_token"] == ""

    upd = c.ok(Op.UpdateSchedule, {"namespace": ns, "schedule_id": sid, "schedule": {
        "spec": {"cronString": ["0 3 * * *"]}, "action": {"workflowType": {"name": "nightly"}},
        "info": {"actionCount": 99}}})["schedule"]
    assert upd["spec"]["cronString"] == ["0 3 * * *"] and upd["action"]["workflowType"] == {"name": "nightly"}
    assert upd["info"]["actionCount"] == 1

    assert c.ok(Op.DeleteSchedule, {"namespace": ns, "schedule_id": sid}) == {}
    c.err(Op.DescribeSchedule, {"namespace": ns, "schedule_id": sid}, 404, "not_found")
    c.err(Op.DeleteSchedule, {"namespace": ns, "schedule_id": sid}, 404, "not_found")
    c.err(Op.PauseSchedule, {"namespace": ns, "schedule_id": sid}, 404, "not_found")
    c.err(Op.TriggerSchedule, {"namespace": ns, "schedule_id": sid}, 404, "not_found")


def test_schedule_recurring_rejects_bad_specs(c: Conn) -> None:
    for spec in ("", "every tuesday", "500ms", "-5m", "1d", 5, None):
        err = c.err(Op.ScheduleRecurring, {"namespace": LOAD_NS, "name": uid("bad"), "spec": spec},
                    400, "invalid_argument")
        assert err["message"]
    c.err(Op.ScheduleRecurring, {"namespace": LOAD_NS, "spec": "1h"}, 400, "invalid_argument")
    c.err(Op.ScheduleRecurring, {"namespace": LOAD_NS, "name": "a/b", "spec": "1h"}, 400, "invalid_argument")


def test_create_schedule_and_upsert(c: Conn) -> None:
    sid = uid("create")
    record = {
        "spec": {"interval": [{"interval": "10m", "phase": "1m"}], "jitter": "5s"},
        "action": {"workflowType": {"name": "report"}, "taskQueue": "reports", "input": [1]},
        "policies": {"overlapPolicy": "BUFFER_ONE", "catchupWindow": "5m"},
        "state": {"paused": True, "note": "new"},
    }
    s = c.ok(Op.CreateSchedule, {"namespace": LOAD_NS, "schedule_id": sid, "schedule": record})["schedule"]
    assert s["scheduleId"] == sid and s["spec"]["interval"] == [{"interval": "10m", "phase": "1m"}]
    assert s["state"] == {"paused": True, "note": "new", "limitedActions": False, "remainingActions": 0}
    assert s["policies"]["overlapPolicy"] == "SCHEDULE_OVERLAP_POLICY_BUFFER_ONE"
    c.err(Op.CreateSchedule, {"namespace": LOAD_NS, "schedule_id": sid, "schedule": record}, 409, "already_exists")
    up = c.ok(Op.CreateSchedule, {"namespace": LOAD_NS, "schedule_id": sid, "upsert": True,
                                  "schedule": {**record, "state": {"paused": False}}})["schedule"]
    assert up["state"]["paused"] is False
    c.err(Op.CreateSchedule, {"namespace": LOAD_NS, "schedule_id": uid("x"),
                              "schedule": {**record, "spec": {}}}, 400, "invalid_argument")


# ---------------------------------------------------------------------------
# namespaces


def test_namespaces(c: Conn) -> None:
    name = uid("ns")
    rec = c.ok(Op.RegisterNamespace, {"name": name, "description": "d", "owner_email": "Ops@Example.com",
                                      "retention_ms": 86_400_000, "aps_limit": 7, "custom_data": {"team": "x"}})
    ns = rec["namespace"]
    assert ns["namespaceInfo"]["name"] == name and ns["namespaceInfo"]["description"] == "d"
    assert ns["namespaceInfo"]["ownerEmail"] == "ops@example.com"
    assert ns["namespaceInfo"]["state"] == "NAMESPACE_STATE_REGISTERED" and ns["isActive"] is True
    assert ns["config"]["workflowExecutionRetentionTtl"] == "24h" and ns["config"]["apsLimit"] == 7
    assert ns["config"]["customData"] == {"team": "x"}
    c.err(Op.RegisterNamespace, {"name": name}, 409, "already_exists")
    assert c.ok(Op.DescribeNamespace, {"name": name}) == rec
    assert c.ok(Op.DescribeNamespace, {"namespace": name}) == rec  # name defaults to the request's namespace
    everything = c.ok(Op.ListNamespaces, {"page_size": 1000})
    names_ = [n["namespaceInfo"]["name"] for n in everything["namespaces"]]
    assert {name, "default", LOAD_NS} <= set(names_) and names_ == sorted(names_)
    assert everything["next_page_token"] == ""
    seen: list[str] = []
    token = None
    while True:
        page = c.ok(Op.ListNamespaces, {"page_size": 1, "next_page_token": token})
        seen += [n["namespaceInfo"]["name"] for n in page["namespaces"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == names_
    # A session scoped to the new namespace works in it by default.
    scoped = Conn(c.sock.getpeername(), namespace=name)
    wid = scoped.ok(Op.StartWorkflow, {"workflow_type": "t"})["workflow_id"]
    assert scoped.ok(Op.DescribeWorkflow, {"workflow_id": wid})["execution"]["execution"]["workflowId"] == wid
    c.err(Op.DescribeWorkflow, {"workflow_id": wid}, 404, "not_found")  # not in "default"
    scoped.close()


# ---------------------------------------------------------------------------
# concurrency


def test_requests_of_one_connection_are_answered_out_of_order(c: Conn) -> None:
    """Twenty starts (each a durable write) then a Health, in one write: Health overtakes."""
    for _attempt in range(5):
        frames = [c.frame(Op.StartWorkflow, {"namespace": LOAD_NS, "workflow_type": "ooo"}) for _ in range(20)]
        hid, hdata = c.frame(Op.Health)
        c.raw(b"".join(d for _, d in frames) + hdata)
        order: list[int] = []
        bodies: dict[int, dict[str, Any]] = {}
        for _ in range(21):
            fid, _op, body = c.recv()
            order.append(fid)
            bodies[fid] = body
        assert sorted(order) == sorted([f for f, _ in frames] + [hid])
        assert bodies[hid]["body"] == health_of()
        runs = {bodies[f]["body"]["run_id"] for f, _ in frames}
        assert len(runs) == 20 and all(bodies[f]["status"] == 200 for f, _ in frames)
        if order.index(hid) < 20:
            return
    pytest.fail("Health never overtook a pending start")


def test_more_than_256_in_flight_get_429(zap: Addr, big_wid: str) -> None:
    """Requests are held in flight by a client that does not read its (large) answers."""
    c = Conn(zap, rcvbuf=4096)
    describes = [c.frame(Op.DescribeWorkflow, {"namespace": LOAD_NS, "workflow_id": big_wid}) for _ in range(12)]
    healths = [c.frame(Op.Health) for _ in range(300)]
    c.raw(b"".join(d for _, d in describes + healths))
    time.sleep(1.0)  # the server reads everything and blocks on writing; nothing completes meanwhile
    statuses: dict[int, int] = {}
    for _ in range(len(describes) + len(healths)):
        fid, _op, body = c.recv()
        assert fid not in statuses
        statuses[fid] = body["status"]
        if body["status"] == 429:
            assert body["error"]["code"] == "rate_limited" and body["error"]["retry_after"] >= 1
    limited = sorted(f for f, s in statuses.items() if s == 429)
    assert limited, "no request was refused"
    assert all(f > Z.MAX_IN_FLIGHT for f in limited)
    assert all(s in (200, 429) for s in statuses.values())
    assert all(statuses[f] == 200 for f, _ in describes)
    assert c.ok(Op.Health) == health_of()
    c.close()


def test_a_broken_or_slow_connection_does_not_affect_another(zap: Addr, big_wid: str) -> None:
    healthy = Conn(zap)
    stalled = Conn(zap)
    stalled.raw(struct.pack(">IBBHI", 8 + 1_000_000, 1, 1, Op.Health, 99) + b"\x80" * 10)  # body never completes
    silent = socket.create_connection(zap)  # connects, never says HELLO
    nonreader = Conn(zap, rcvbuf=4096)
    nonreader.raw(b"".join(nonreader.frame(Op.DescribeWorkflow, {"namespace": LOAD_NS, "workflow_id": big_wid})[1]
                           for _ in range(12)))
    garbage = Conn(zap, hello=False)
    garbage.raw(b"\xff" * 64)  # version 255: answered 400, then closed
    assert [r["status"] for r in garbage.assert_closed()] == [400]
    t0 = time.monotonic()
    for _ in range(50):
        assert healthy.ok(Op.Health) == health_of()
    assert time.monotonic() - t0 < 5
    fresh = Conn(zap)
    assert fresh.ok(Op.Health) == health_of()
    for conn in (healthy, stalled, nonreader, garbage, fresh):
        conn.close()
    silent.close()


# ---------------------------------------------------------------------------
# the framing table of §8.1


def test_garbage_bytes_close_the_connection(zap: Addr) -> None:
    c = Conn(zap, hello=False)
    c.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # length field 0x47455420: way over max_frame, but id 0? closed either way
    got = c.assert_closed()
    assert all(r["status"] in (400, 413) for r in got)
    for data in (b"\x00\x00\x00\x03abc", b"\x00\x00\x00\x00", struct.pack(">IBBHI", 7, 1, 1, 1, 1)):
        c = Conn(zap)
        c.raw(data)
        assert c.assert_closed() == []


def test_truncated_frame_then_close(zap: Addr) -> None:
    c = Conn(zap)
    fid, full = c.frame(Op.Health)
    _, partial = c.frame(Op.Health, {"namespace": "default"})
    c.raw(full + partial[:-3])
    c.sock.shutdown(socket.SHUT_WR)
    got = c.assert_closed()
    assert got == [{"status": 200, "body": health_of()}]


def test_oversized_length_gets_413_then_close(zap: Addr) -> None:
    c = Conn(zap)
    c.raw(struct.pack(">IBBHI", 16 * 1024 * 1024 + 1, 1, 1, Op.StartWorkflow, 4242))
    fid, op, body = c.recv()
    assert (fid, op, body["status"], body["error"]["code"]) == (4242, Op.StartWorkflow, 413, "too_large")
    assert c.assert_closed() == []
    # Exactly max_frame is allowed (the body is still read and parsed).
    c = Conn(zap)
    body_bytes = msgpack.packb({"pad": "x" * (16 * 1024 * 1024 - 8 - 20)})
    c.raw(struct.pack(">IBBHI", 8 + len(body_bytes), 1, 1, Op.Health, 7) + body_bytes)
    assert len(body_bytes) + 8 <= 16 * 1024 * 1024
    assert c.wait(7) == {"status": 200, "body": health_of()}


def test_version_2_gets_400_then_close(zap: Addr) -> None:
    c = Conn(zap)
    c.raw(struct.pack(">IBBHI", 8, 2, 1, Op.Health, 5))
    fid, _, body = c.recv()
    assert (fid, body["status"], body["error"]) == (5, 400, {"code": "invalid_argument", "message": "unsupported version"})
    assert c.assert_closed() == []


@pytest.mark.parametrize("kind", [0, 2, 3, 5, 200])
def test_kinds_a_client_may_not_send_close_the_connection(zap: Addr, kind: int) -> None:
    c = Conn(zap)
    c.raw(struct.pack(">IBBHI", 8, 1, kind, Op.Health, 5))
    assert c.assert_closed() == []


def test_id_0_closes_the_connection(zap: Addr) -> None:
    c = Conn(zap)
    c.raw(struct.pack(">IBBHI", 8, 1, 1, Op.Health, 0))
    assert c.assert_closed() == []


@pytest.mark.parametrize(
    "body",
    [
        msgpack.packb([1, 2, 3]),
        msgpack.packb("text"),
        msgpack.packb(None),
        b"\xc1\xc1",
        msgpack.packb({"a": 1}) + b"\x01",
        msgpack.packb({"namespace": b"default"}, use_bin_type=True),
        msgpack.packb({"input": [{"deep": b"\x00"}]}, use_bin_type=True),
        msgpack.packb({"x": msgpack.ExtType(1, b"e")}),
        msgpack.packb({"x": msgpack.Timestamp(0)}),
        msgpack.packb({7: "int key"}),
    ],
)
def test_bad_bodies_get_400_and_the_connection_stays_open(c: Conn, body: bytes) -> None:
    c.raw(struct.pack(">IBBHI", 8 + len(body), 1, 1, Op.Health, 77) + body)
    r = c.wait(77)
    assert r["status"] == 400 and r["error"]["code"] == "invalid_argument"
    assert c.ok(Op.Health) == health_of()


def test_unknown_opcode_is_501_and_stays_open(c: Conn) -> None:
    for op in (0x0000, 0x0002, 0x006A, 0x1234, 0xFFFF, Op.DeliverWorkflowTask):
        c.err(op, {}, 501, "not_implemented")
    assert c.ok(Op.Health) == health_of()


def test_push_ack_from_a_client_is_ignored(c: Conn) -> None:
    c.send(Op.DeliverWorkflowTask, Z.push_ack_body(200), kind=Z.PUSH_ACK)
    assert c.ok(Op.Health) == health_of()


def test_metrics(served: tuple[NodeProcess, Addr], c: Conn) -> None:
    node, _ = served
    c.ok(Op.Health)
    c.err(0x1234, {}, 501, "not_implemented")
    text = node.get("/metrics")[1]
    assert isinstance(text, str)
    assert re.search(r'tasks_zap_requests_total\{opcode="Health",status="200"\} [1-9]', text)
    assert re.search(r'tasks_zap_requests_total\{opcode="unknown",status="501"\} [1-9]', text)
    assert re.search(r'tasks_zap_request_duration_seconds_count\{opcode="Health"\} [1-9]', text)
    assert re.search(r"tasks_zap_connections [1-9]", text)
    for reason in ("too_large", "bad_version", "bad_body", "protocol"):
        assert f'tasks_zap_frames_rejected_total{{reason="{reason}"}}' in text


def test_connection_limit_at_accept(tmp_path: Path) -> None:
    node, addr = start_zap_node(tmp_path / "limited", "--limits-max-zap-connections", "2")
    try:
        a, b = Conn(addr), Conn(addr)
        third = Conn(addr, hello=False)
        try:
            third.raw(Z.encode_frame(Z.REQUEST, Op.Hello, 1, {"client_id": "x"}))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert third.assert_closed() == []
        assert a.ok(Op.Health) == health_of() and b.ok(Op.Health) == health_of()
        a.close()
        deadline = time.monotonic() + 10
        while True:  # the freed slot is reusable once the server has seen the close
            try:
                d = Conn(addr)
                assert d.ok(Op.Health) == health_of()
                break
            except (EOFError, ConnectionError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        d.close()
        b.close()
        # A clean stop (SIGTERM) with a connection open: it is closed, and the node exits 0.
        e = Conn(addr)
        e.send(Op.Health)
        assert node.stop() == 0
        assert len(e.assert_closed()) <= 1
    finally:
        node.kill()


# ---------------------------------------------------------------------------
# fuzz: random frames on their own connections; a healthy connection keeps working


FIELDS = ["namespace", "workflow_id", "workflow_type", "task_type", "run_id", "signal_name", "schedule_id",
          "name", "spec", "page_size", "next_page_token", "input", "payload", "event_id", "query",
          "retry_policy", "execution_timeout_ms", "schedule", "client_id", "reverse", "after_event_id",
          "query_type", "paused", "upsert", "id_conflict_policy", "overlap_policy", "retention_ms"]
SCALAR = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
          | st.text(max_size=12) | st.sampled_from(["default", LOAD_NS, "..", "a/b", "1h", "*/5 * * * *", "x" * 300]))


def _nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=3)


JSONISH = st.recursive(SCALAR, _nest, max_leaves=8)
IDS = st.integers(1, 2**32 - 1)
REQ_OPS = st.sampled_from(sorted(Z.REQUEST_OPCODES)) | st.integers(0, 0xFFFF)
HDR = struct.Struct(">IBBHI")

# Frames after which the connection stays open: well-formed frames with random
# map bodies aimed at the handlers, and well-formed headers with random bodies.
OPEN_FRAME = st.one_of(
    st.builds(lambda op, fid, body: Z.encode_frame(Z.REQUEST, op, fid, body),
              REQ_OPS, IDS, st.dictionaries(st.sampled_from(FIELDS), JSONISH, max_size=5)),
    st.builds(lambda op, fid, body: Z.encode_frame(Z.REQUEST, op, fid, body),
              REQ_OPS, IDS, st.dictionaries(st.sampled_from(FIELDS), JSONISH, max_size=5)),
    st.builds(lambda op, fid, body: HDR.pack(8 + len(body), 1, 1, op, fid) + body,
              REQ_OPS, IDS, st.binary(max_size=48)),
)
# Frames that usually end the connection: random header fields, random bytes.
ANY_FRAME = st.one_of(
    st.builds(lambda length, v, k, op, fid, body: HDR.pack(length, v, k, op, fid) + body,
              st.integers(0, 2**32 - 1) | st.integers(0, 80), st.sampled_from([1, 1, 1, 0, 2]) | st.integers(0, 255),
              st.sampled_from([1, 4]) | st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 3) | IDS,
              st.binary(max_size=40)),
    st.binary(min_size=1, max_size=48),
)


def test_fuzz_random_frames(served: tuple[NodeProcess, Addr]) -> None:
    """At least 10,000 random frames, in batches of ~50 on their own connections.

    Each batch is answered (every answer a well-formed response, never a 500)
    and then closed by the server, whatever it held; a separate connection
    gets a correct Health answer after every batch.
    """
    node, zap = served
    healthy = Conn(zap)
    hid = itertools.count(1)
    sent = [0]
    statuses: dict[int, int] = {}

    @settings(max_examples=220, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(hello=st.sampled_from([True, True, True, False]),
           frames=st.lists(OPEN_FRAME, min_size=45, max_size=55), tail=st.lists(ANY_FRAME, max_size=4))
    def batch(hello: bool, frames: list[bytes], tail: list[bytes]) -> None:
        conn = Conn(zap, hello=hello, timeout=20)
        try:
            conn.raw(b"".join(frames + tail))
            conn.sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already closed this connection on an early bad frame
        sent[0] += len(frames) + len(tail)
        try:
            responses = conn.assert_closed()  # the server always ends it: answered, then closed
        except Z.ZapError as e:
            pytest.fail(f"the server sent a malformed frame: {e}")
        finally:
            conn.close()
        for r in responses:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
            assert r["status"] != 500, r
        fid = next(hid)
        healthy.raw(Z.encode_frame(Z.REQUEST, Op.Health, fid, {}))
        assert healthy.wait(fid) == {"status": 200, "body": health_of()}

    t0 = time.monotonic()
    batch()
    assert sent[0] >= 10_000, sent[0]
    assert statuses.get(200) and statuses.get(400) and statuses.get(501), statuses
    assert time.monotonic() - t0 < 90
    assert healthy.ok(Op.Health) == health_of()
    healthy.close()
    log = node.log()
    assert "Task exception was never retrieved" not in log and "bug serving ZAP" not in log
    assert "Traceback" not in log
