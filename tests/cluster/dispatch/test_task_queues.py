"""Task queues and workers over HTTP (SPEC §4.5, §5.1 "Worker"), against real nodes.

One single in-process node (``hanzo_tasks.testing``) serves most checks (module
fixture, so the test file stays fast); workers are raw ZAP clients. The last test runs a 3-node Raft cluster
and asks a node that holds no worker for the workers connected to the others.
"""

from __future__ import annotations

import http.client
import itertools
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hanzo_tasks.cluster.service.inputs import make_token
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.zap import Op
from hanzo_tasks.testing import TestNode

from tests.cluster.dispatch.test_dispatch import RawWorker
from tests.cluster.inproc import start_test_node
from tests.cluster.raft_support import Cluster
from tests.support import NodeProcess

NSP = "/v1/tasks/namespaces"
NS = f"{NSP}/default"
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
DURATION = re.compile(r"^(0s|\d+ms|(\d+h)?(\d+m)?(\d+(\.\d{1,3})?s)?)$")


class Worker(RawWorker):
    """A raw ZAP worker with its own identity, SDK facts and any set of subscriptions."""

    def __init__(self, addr: tuple[str, int], identity: str, subs: list[tuple[str, str]], *,
                 build_id: str | None = None, slots: int = 2) -> None:
        self.sock = socket.create_connection(addr, timeout=10)
        self.reader = Z.FrameReader(1 << 30, Z.SERVER_KINDS)
        self.ids = itertools.count(1)
        self.pushes: list[Any] = []
        self.responses: dict[int, dict[str, Any]] = {}
        hello = self.call(Op.Hello, {"client_id": identity, "sdk_name": "raw-py", "sdk_version": "0.9"})
        assert hello["status"] == 200, hello
        self.subs: list[str] = []
        for kind, tq in subs:
            op = Op.SubscribeActivityTasks if kind == "activity" else Op.SubscribeWorkflowTasks
            body: dict[str, Any] = {"task_queue": tq, "max_concurrent": slots}
            if build_id:
                body["build_id"] = build_id
            r = self.call(op, body)
            assert r["status"] == 200, r
            self.subs.append(r["body"]["subscription_id"])


class Http:
    """Requests sent byte for byte (``http.client``), so ``%2F`` and ``..`` reach the server as written."""

    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80

    def get(self, path: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        return resp.status, json.loads(payload) if payload else None

    def ok(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, (path, status, body)
        return body


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """``check()`` once it stops raising AssertionError (state that follows a socket event)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def all_pages(api: Http, path: str, field: str, size: int) -> list[Any]:
    sep = "&" if "?" in path else "?"
    items: list[Any] = []
    token = ""
    for _ in range(100):
        body = api.ok(f"{path}{sep}pageSize={size}" + (f"&nextPageToken={quote(token)}" if token else ""))
        assert len(body[field]) <= size
        items.extend(body[field])
        token = body["nextPageToken"]
        if not token:
            assert body[field], "a full last page must not be followed by an empty one"
            return items
    raise AssertionError("paging did not end")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestNode, Http, tuple[str, int]]]:
    n = start_test_node(tmp_path_factory.mktemp("task_queues") / "n1", ["--zap", "127.0.0.1:0"])
    try:
        assert n.zap_address is not None
        yield n, Http(n.url), n.zap_address
    finally:
        n.stop()


def start(api: TestNode | NodeProcess, wid: str, tq: str, ns: str = "default") -> None:
    status, body = api.post(f"{NSP}/{ns}/workflows", {"workflowId": wid, "workflowType": {"name": "Job"},
                                                      "taskQueue": {"name": tq}})
    assert status == 200, body


def test_task_queue_views_count_runs_backlog_and_subscribers(node) -> None:
    proc, api, addr = node
    for i in range(3):
        start(proc, f"a-{i}", "tq-a")
        time.sleep(0.005)  # distinct start times: list order is start time descending
    start(proc, "b-0", "tq-b")
    status, body = proc.post(f"{NS}/activities", {"activityId": "act-a", "activityType": {"name": "A"},
                                                  "taskQueue": "tq-a"})
    assert status == 200, body
    w = Worker(addr, "tq-watcher", [("workflow", "tq-c")])
    try:
        queues = {q["name"]: q for q in all_pages(api, f"{NS}/task-queues", "taskQueues", 1)}
        assert list(queues) == sorted(queues) and {"tq-a", "tq-b", "tq-c"} <= set(queues)
        a = queues["tq-a"]
        assert (a["workflows"], a["running"], a["workers"]) == (3, 3, 0)
        assert TIME.match(a["latestStart"])
        assert a["backlog"]["workflowTasks"] == 3 and a["backlog"]["activityTasks"] == 1
        assert DURATION.match(a["backlog"]["oldestAge"]), a
        c = queues["tq-c"]  # subscribers only
        assert c == {"name": "tq-c", "workflows": 0, "running": 0, "workers": 1,
                     "backlog": {"workflowTasks": 0, "activityTasks": 0, "oldestAge": "0s"}}

        detail = api.ok(f"{NS}/task-queues/tq-a?pageSize=2")
        assert (detail["name"], detail["total"], detail["running"]) == ("tq-a", 3, 3)
        assert detail["backlog"]["workflowTasks"] == 3 and detail["backlog"]["activityTasks"] == 1
        assert [r["execution"]["workflowId"] for r in detail["workflows"]] == ["a-2", "a-1"]
        assert all("input" not in r and r["taskQueue"] == "tq-a" for r in detail["workflows"])
        assert detail["nextPageToken"]
        runs = all_pages(api, f"{NS}/task-queues/tq-a", "workflows", 2)
        assert [r["execution"]["workflowId"] for r in runs] == ["a-2", "a-1", "a-0"]
        assert len(all_pages(api, f"{NS}/task-queues/tq-a", "workflows", 3)) == 3  # full last page: no extra

        parts = api.ok(f"{NS}/task-queues/tq-a/partitions")["partitions"]
        assert len(parts) == 1 and parts[0]["key"] == 0 and parts[0]["backlogSize"] == 4
        assert DURATION.match(parts[0]["backlogAge"])
    finally:
        w.close()


def test_unknown_queue_has_zero_counts_not_404(node) -> None:
    _, api, _ = node
    assert api.ok(f"{NS}/task-queues/no-such-queue") == {
        "name": "no-such-queue", "workflows": [], "running": 0, "total": 0,
        "backlog": {"workflowTasks": 0, "activityTasks": 0, "oldestAge": "0s"}, "nextPageToken": ""}
    assert api.ok(f"{NS}/task-queues/no-such-queue/partitions") == {
        "partitions": [{"key": 0, "backlogAge": "0s", "backlogSize": 0}]}
    assert api.ok(f"{NS}/task-queues/no-such-queue/workers") == {"workers": [], "nextPageToken": ""}


def test_worker_records_in_flight_and_disconnect(node) -> None:
    proc, api, addr = node
    w = Worker(addr, "w-alpha", [("workflow", "tq-w"), ("activity", "tq-w")], build_id="build-7")
    try:
        start(proc, "held-1", "tq-w")
        task = w.next_task()
        assert task["workflow_id"] == "held-1"

        def in_flight() -> dict[str, Any]:
            rec = api.ok(f"{NS}/workers/w-alpha")
            assert [s["inFlight"] for s in rec["subscriptions"]] == [0, 1], rec
            return rec

        rec = eventually(in_flight)
        assert rec["identity"] == "w-alpha" and rec["namespace"] == "default" and rec["taskQueue"] == "tq-w"
        assert (rec["sdkName"], rec["sdkVersion"], rec["buildId"]) == ("raw-py", "0.9", "build-7")
        assert TIME.match(rec["firstSeen"]) and TIME.match(rec["lastHeartbeat"])
        assert rec["firstSeen"] <= rec["lastHeartbeat"]
        assert rec["subscriptions"] == [
            {"taskQueue": "tq-w", "kind": "activity", "maxConcurrent": 2, "inFlight": 0, "nodeId": "t1"},
            {"taskQueue": "tq-w", "kind": "workflow", "maxConcurrent": 2, "inFlight": 1, "nodeId": "t1"},
        ]
        assert [x["identity"] for x in api.ok(f"{NS}/task-queues/tq-w/workers")["workers"]] == ["w-alpha"]
        assert api.ok(f"{NS}/task-queues/tq-a/workers")["workers"] == []
        assert "w-alpha" in [x["identity"] for x in api.ok(f"{NS}/workers")["workers"]]
    finally:
        w.close()

    def departed() -> dict[str, Any]:
        rec = api.ok(f"{NS}/workers/w-alpha")
        assert rec["subscriptions"] == [], rec
        return rec

    gone = eventually(departed)  # kept (for 10 min) with no subscriptions, and its last sign of life
    assert gone["firstSeen"] == rec["firstSeen"] and gone["lastHeartbeat"] >= rec["firstSeen"]
    assert api.ok(f"{NS}/task-queues/tq-w/workers")["workers"] == []
    queues = {q["name"]: q for q in api.ok(f"{NS}/task-queues")["taskQueues"]}
    assert queues["tq-w"]["workers"] == 0 and queues["tq-w"]["running"] == 1
    # The run it held went back to the queue (worker_lost): it is a backlog again.
    def requeued() -> None:
        assert api.ok(f"{NS}/task-queues/tq-w")["backlog"]["workflowTasks"] == 1

    eventually(requeued)


def test_worker_lists_are_paged_by_identity_and_404_for_unknown(node) -> None:
    _, api, addr = node
    ws = [Worker(addr, f"pg-{i}", [("workflow", "tq-pg")]) for i in (2, 0, 1)]
    try:
        got = [x["identity"] for x in all_pages(api, f"{NS}/task-queues/tq-pg/workers", "workers", 2)]
        assert got == ["pg-0", "pg-1", "pg-2"]
        every = [x["identity"] for x in all_pages(api, f"{NS}/workers", "workers", 1)]
        assert every == sorted(every) and {"pg-0", "pg-1", "pg-2"} <= set(every)
        assert len(all_pages(api, f"{NS}/task-queues/tq-pg/workers", "workers", 3)) == 3
        status, body = api.get(f"{NS}/workers/nobody-here")
        assert status == 404 and body["code"] == "not_found"
    finally:
        for w in ws:
            w.close()


def test_bad_tokens_names_and_namespaces_are_4xx(node) -> None:
    _, api, _ = node
    routes = [f"{NS}/task-queues", f"{NS}/task-queues/tq-a", f"{NS}/task-queues/tq-a/workers", f"{NS}/workers"]
    wf_token = api.ok(f"{NS}/workflows?pageSize=1")["nextPageToken"]
    assert wf_token
    forged = {  # well-formed envelopes (the binding is not secret) with cursors the server never made
        f"{NS}/task-queues": make_token("task-queues", "_/default", b"\xff\xfe"),
        f"{NS}/task-queues/tq-a": make_token("task-queue", "_/default/tq-a", b"junk"),
        f"{NS}/task-queues/tq-a/workers": make_token("task-queue-workers", "_/default/tq-a", b"\xff"),
        f"{NS}/workers": make_token("workers", "_/default", b"\xc3\x28"),
    }
    for path in routes:
        for token in ("garbage", "%21%21", wf_token, forged[path]):
            status, body = api.get(f"{path}?nextPageToken={token}")
            assert status == 400 and body["code"] == "invalid_argument", (path, token, status, body)
        for q in ("pageSize=0", "pageSize=1001", "pageSize=x"):
            assert api.get(f"{path}?{q}")[0] == 400, (path, q)
    # a token of one queue is not valid for another
    a = api.ok(f"{NS}/task-queues/tq-a?pageSize=1")["nextPageToken"]
    assert api.get(f"{NS}/task-queues/tq-b?nextPageToken={a}")[0] == 400
    for seg in ("..", "%2e%2e", "a%2Fb", "x" * 300, "%00", "%7F", "%ff"):
        for path in (f"{NS}/task-queues/{seg}", f"{NS}/task-queues/{seg}/workers",
                     f"{NS}/task-queues/{seg}/partitions", f"{NS}/workers/{seg}"):
            status, body = api.get(path)
            assert status == 400 and body["code"] == "invalid_argument", (path, status, body)
    for path in (f"{NSP}/n%2Fs/task-queues", f"{NSP}/{'n' * 65}/workers", f"{NSP}/../task-queues/q"):
        assert api.get(path)[0] == 400, path
    for path in (f"{NSP}/no-such-ns/task-queues", f"{NSP}/no-such-ns/task-queues/q",
                 f"{NSP}/no-such-ns/workers", f"{NSP}/no-such-ns/workers/w"):
        assert api.get(path)[0] == 404, path


# ---------------------------------------------------------------------------
# three nodes


def _get_retry(node: NodeProcess, path: str, timeout: float = 20.0) -> Any:
    """A GET that may meet a 503 while the cluster settles."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = node.get(path)
        if status == 200:
            return body
        assert status == 503 and time.monotonic() < deadline, (path, status, body)
        time.sleep(0.2)


def test_workers_of_every_node_are_listed_on_any_node(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "c", n=3, partitions=4).start()
    workers: list[Worker] = []
    try:
        asked = c.nodes["n3"]
        _get_retry(asked, f"{NS}/task-queues")  # the default namespace exists before workers subscribe
        # Six queues: their owners spread over the nodes (HRW), so some subscriptions of on-n1
        # are dispatched by n1 or n2 and only the fan-out can show them on n3.
        spread = [("workflow", f"spread-{i}") for i in range(6)]
        workers = [
            Worker(c.zap_addr("n1"), "on-n1", [("workflow", "shared"), ("activity", "only-n1"), *spread]),
            Worker(c.zap_addr("n2"), "on-n2", [("workflow", "shared")]),
        ]

        def both() -> dict[str, Any]:
            body = _get_retry(asked, f"{NS}/workers")
            recs = {w["identity"]: w for w in body["workers"]}
            assert set(recs) == {"on-n1", "on-n2"}, body
            return recs

        recs = eventually(both, timeout=15)
        assert {s["nodeId"] for s in recs["on-n1"]["subscriptions"]} == {"n1"}
        assert {s["nodeId"] for s in recs["on-n2"]["subscriptions"]} == {"n2"}
        assert sorted((s["taskQueue"], s["kind"]) for s in recs["on-n1"]["subscriptions"]) == sorted(
            [("only-n1", "activity"), ("shared", "workflow"), *((q, k) for k, q in spread)])
        assert recs["on-n2"]["sdkName"] == "raw-py"
        shared = _get_retry(asked, f"{NS}/task-queues/shared/workers")
        assert [w["identity"] for w in shared["workers"]] == ["on-n1", "on-n2"]
        queues = {q["name"]: q for q in _get_retry(asked, f"{NS}/task-queues")["taskQueues"]}
        assert queues["shared"]["workers"] == 2 and queues["only-n1"]["workers"] == 1
        assert _get_retry(asked, f"{NS}/workers/on-n2")["identity"] == "on-n2"

        # A task held by a worker of n1 or n2 shows as inFlight on n3 (known to the queue's owner).
        for _ in range(100):
            status, body = asked.post(f"{NS}/workflows", {"workflowId": "held", "requestId": "r-held",
                                                          "workflowType": {"name": "Job"}, "taskQueue": "shared"})
            if status == 200:
                break
            assert status == 503, body
            time.sleep(0.1)
        holder = None
        deadline = time.monotonic() + 15
        while holder is None and time.monotonic() < deadline:
            for w in workers:
                try:
                    w.next_task(timeout=0.2)
                except (TimeoutError, OSError):
                    continue
                holder = w
        assert holder is not None, "the task reached no worker"
        ident = "on-n1" if holder is workers[0] else "on-n2"

        def held() -> None:
            rec = _get_retry(asked, f"{NS}/workers/{ident}")
            assert [s["inFlight"] for s in rec["subscriptions"] if s["taskQueue"] == "shared"] == [1], rec

        eventually(held, timeout=10)
    finally:
        for w in workers:
            w.close()
        c.kill_all()
