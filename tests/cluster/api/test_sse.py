"""Server-Sent Events, ``GET /v1/tasks/events`` (SPEC §6), against a real node in this process
(``hanzo_tasks.testing``) and a cluster of real ``tasksd`` processes.

The stream is read over a raw socket (chunked transfer decoded here), so the
framing is checked byte for byte. Every wait is bounded, and every socket and
process is closed at teardown.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hanzo_tasks.cluster.api.sse import QUEUE_SIZE, SseHub, event_kind, parse_kinds
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.routing import partition_of
from hanzo_tasks.testing import TestNode

from tests.cluster.inproc import start_test_node
from tests.cluster.raft_support import Cluster
from tests.support import NodeProcess

NSP = "/v1/tasks/namespaces"
EVENTS = "/v1/tasks/events"
Node = TestNode | NodeProcess
ID = re.compile(r"^([0-9a-f]+)-(\d+)$")


# ---------------------------------------------------------------------------
# a raw SSE client


class Stream:
    """One ``GET /v1/tasks/events`` over a socket; the chunked body is decoded as it arrives."""

    def __init__(self, url: str, path: str = EVENTS, headers: dict[str, str] | None = None,
                 rcvbuf: int | None = None, timeout: float = 10.0) -> None:
        u = urlsplit(url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((u.hostname or "127.0.0.1", u.port or 80))
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
        self._raw = b""
        self._left = 0  # bytes left in the current chunk
        self._crlf = False  # a chunk's trailing CRLF is due
        self.eof = False
        self.body = b""  # every decoded body byte so far
        self._pending = b""  # decoded bytes not parsed into blocks yet
        self.status = 0
        self.headers: dict[str, str] = {}
        self._read_head(time.monotonic() + timeout)

    def _recv(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0 or self.eof:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            self.eof = True
            return False
        self._raw += data
        return True

    def _read_head(self, deadline: float) -> None:
        while b"\r\n\r\n" not in self._raw:
            if not self._recv(deadline):
                raise TimeoutError(f"no response head: {self._raw[:200]!r}")
        head, _, self._raw = self._raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if self.headers.get("Transfer-Encoding") != "chunked":
            n = int(self.headers.get("Content-Length", "0"))
            while len(self._raw) < n and self._recv(deadline):
                pass
            self.body = self._raw[:n]
            self.eof = True
        self._decode()

    def _decode(self) -> None:
        while True:
            if self._left:
                take = self._raw[: self._left]
                self._raw = self._raw[len(take):]
                self._left -= len(take)
                self.body += take
                self._pending += take
                if self._left:
                    return
                self._crlf = True
            if self._crlf:
                if len(self._raw) < 2:
                    return
                assert self._raw[:2] == b"\r\n", self._raw[:20]
                self._raw = self._raw[2:]
                self._crlf = False
            end = self._raw.find(b"\r\n")
            if end < 0:
                return
            size = int(self._raw[:end].split(b";")[0], 16)
            self._raw = self._raw[end + 2:]
            if size == 0:
                self.eof = True
                return
            self._left = size

    def blocks(self, timeout: float) -> Iterator[str]:
        """Each block (the text between blank lines) as it arrives, until ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n\n" in self._pending:
                block, _, self._pending = self._pending.partition(b"\n\n")
                yield block.decode()
            if not self._recv(deadline):
                return
            self._decode()

    def events(self, timeout: float, until: Callable[[dict], bool] | None = None,
               idle: float | None = None) -> list[dict]:
        """Events (comments skipped) until ``until(event)`` holds, or no event came for ``idle`` seconds,
        or ``timeout`` passed."""
        out: list[dict] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            wait = deadline - time.monotonic() if idle is None else min(idle, deadline - time.monotonic())
            got = None
            for block in self.blocks(wait):
                ev = parse_block(block)
                if ev is not None:
                    got = ev
                    break
            if got is None:
                if idle is not None:
                    return out
                continue
            out.append(got)
            if until is not None and until(got):
                return out
        return out

    def close(self) -> None:
        self.sock.close()


def parse_block(block: str) -> dict | None:
    """An event block -> {id, event, data, lines}; None for comment-only blocks."""
    lines = block.split("\n")
    if not any(ln.startswith("data: ") for ln in lines):
        return None  # a comment (ping), or the prelude's comment and retry
    fields: dict[str, Any] = {"lines": lines}
    for ln in lines:
        name, _, value = ln.partition(": ")
        fields[name] = value
    fields["data"] = json.loads(fields["data"])
    return fields


@pytest.fixture
def streams() -> Iterator[Callable[..., Stream]]:
    opened: list[Stream] = []

    def open_stream(url: str, path: str = EVENTS, **kw: Any) -> Stream:
        s = Stream(url, path, **kw)
        opened.append(s)
        return s

    yield open_stream
    for s in opened:
        s.close()


# ---------------------------------------------------------------------------
# one node for most tests: fast pings, a small ring, no fsync (the 2,000-start flood)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestNode]:
    n = start_test_node(tmp_path_factory.mktemp("sse") / "n1",
                        ["--sse-keepalive", "200ms", "--sse-buffer-events", "500", "--durability", "nosync"])
    try:
        yield n
    finally:
        n.stop()


def ok(node: Node, method: str, path: str, body: Any = None) -> Any:
    status, payload, _ = node.request(method, path, body)
    assert status == 200, (method, path, status, payload)
    return payload


def new_ns(node: Node) -> str:
    ns = f"sse-{uuid.uuid4().hex[:8]}"
    ok(node, "POST", NSP, {"namespaceInfo": {"name": ns}, "config": {"apsLimit": 0}})
    return ns


def start(node: Node, ns: str, wid: str) -> str:
    r = ok(node, "POST", f"{NSP}/{ns}/workflows", {"workflowType": {"name": "Job"}, "workflowId": wid})
    return r["execution"]["runId"]


def metric(node: Node, name: str) -> float:
    status, text, _ = node.request("GET", "/metrics")
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, name
    return float(m.group(1))


# ---------------------------------------------------------------------------
# the stream


def test_headers_and_framing(node: Node, streams) -> None:
    s = streams(node.url)
    assert s.status == 200
    for k, v in {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Connection": "keep-alive",
                 "X-Accel-Buffering": "no", "X-Tasks-Node": "t1"}.items():
        assert s.headers.get(k) == v, (k, s.headers)
    ns = new_ns(node)
    evs = s.events(10, until=lambda e: e["event"] == "namespace.registered" and e["data"]["namespace"] == ns)
    assert evs and evs[-1]["data"]["namespace"] == ns
    assert s.body.startswith(b": hanzo-tasks event stream\nretry: 3000\n\n"), s.body[:80]
    ev = evs[-1]
    assert [ln.split(": ", 1)[0] for ln in ev["lines"]] == ["id", "event", "data"], ev["lines"]
    assert ID.match(ev["id"]), ev["id"]
    data = ev["data"]
    assert data["kind"] == "namespace.registered" and data["org_id"] == ""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["at"]), data["at"]
    assert data["data"]["namespaceInfo"]["name"] == ns
    # every block in the body so far is an event, a ping or the prelude, each ended by a blank line
    text = s.body.decode()
    assert text.endswith("\n\n")
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        ok_block = (lines in ([": hanzo-tasks event stream", "retry: 3000"], [": ping"])
                    or [ln.split(": ", 1)[0] for ln in lines] == ["id", "event", "data"])
        assert ok_block, block


def test_head_and_bad_parameters(node: Node) -> None:
    for q in ("namespace=..", "namespace=", "namespace=a%2Fb", "kinds=nope", "kinds=workflow.nope", "kinds=,",
              "kinds=nothing.", "kinds=."):
        status, body, hdrs = node.request("GET", f"{EVENTS}?{q}", timeout=5)
        assert status == 400 and body["code"] == "invalid_argument", (q, status, body)
        assert hdrs["X-Tasks-Node"] == "t1"
    status, body, hdrs = node.request("HEAD", EVENTS, timeout=5)
    assert status == 200 and hdrs["Content-Type"] == "text/event-stream"
    for method in ("POST", "DELETE"):
        status, body, hdrs = node.request(method, EVENTS, {} if method == "POST" else None, timeout=5)
        assert status == 405 and hdrs["Allow"] == "GET", (method, status, body)


def test_workflow_start_and_signal_events(node: Node, streams) -> None:
    ns = new_ns(node)
    s = streams(node.url, f"{EVENTS}?namespace={ns}")
    rid = start(node, ns, "w1")
    ok(node, "POST", f"{NSP}/{ns}/workflows/w1/signal", {"name": "go", "input": {"n": 1}})
    evs = s.events(10, until=lambda e: e["event"] == "workflow.signaled")
    assert [e["event"] for e in evs] == ["workflow.started", "workflow.signaled"], evs
    started, signaled = evs
    for e in evs:
        d = e["data"]
        assert d["kind"] == e["event"] and d["org_id"] == "" and d["namespace"] == ns
        assert d["workflow_id"] == "w1" and d["run_id"] == rid
    m1, m2 = ID.match(started["id"]), ID.match(signaled["id"])
    assert m1 and m2 and m1.group(1) == m2.group(1) and int(m2.group(2)) > int(m1.group(2))
    run = started["data"]["data"]
    assert run["execution"] == {"workflowId": "w1", "runId": rid}
    assert run["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"
    sig = signaled["data"]["data"]
    assert sig["signal"] == "go" and sig["input"] == {"n": 1} and sig["history_length"] >= 3


def test_activity_lifecycle_events(node: Node, streams) -> None:
    ns = new_ns(node)
    s = streams(node.url, f"{EVENTS}?namespace={ns}&kinds=activity.")
    act = ok(node, "POST", f"{NSP}/{ns}/activities", {"activityId": "a1", "activityType": {"name": "A"},
                                                      "taskQueue": "q"})
    rid = act["execution"]["runId"]
    ok(node, "POST", f"{NSP}/{ns}/activities/a1/{rid}/heartbeat", {"details": {"pct": 50}})
    ok(node, "POST", f"{NSP}/{ns}/activities/a1/{rid}/complete", {"result": 1})
    evs = s.events(10, until=lambda e: e["event"] == "activity.completed")
    assert [e["event"] for e in evs] == ["activity.scheduled", "activity.started", "activity.heartbeat",
                                         "activity.completed"], evs
    assert evs[2]["data"]["data"] == {"details": {"pct": 50}}
    assert all(e["data"]["activity_id"] == "a1" for e in evs)


def test_namespace_and_kind_filters(node: Node, streams) -> None:
    everything = streams(node.url)
    ns1, ns2 = f"f1-{uuid.uuid4().hex[:6]}", f"f2-{uuid.uuid4().hex[:6]}"
    by_ns = streams(node.url, f"{EVENTS}?namespace={ns1}")
    exact = streams(node.url, f"{EVENTS}?kinds=workflow.signaled")
    prefix = streams(node.url, f"{EVENTS}?kinds=namespace.")
    mixed = streams(node.url, f"{EVENTS}?namespace={ns2}&kinds={quote('schedule.created, workflow.')}")
    for ns in (ns1, ns2):
        ok(node, "POST", NSP, {"namespaceInfo": {"name": ns}, "config": {"apsLimit": 0}})
        start(node, ns, "w")
        ok(node, "POST", f"{NSP}/{ns}/workflows/w/signal", {"name": "s"})
        ok(node, "POST", f"{NSP}/{ns}/schedules", {"scheduleId": "sc", "spec": {"interval": ["1h"]},
                                                   "action": {"workflowType": {"name": "Job"}}})
    mine = {ns1, ns2}

    def kinds(s: Stream, until: Callable[[dict], bool] | None = None, idle: float | None = None) -> list:
        return [(e["data"].get("namespace"), e["event"]) for e in s.events(10, until=until, idle=idle)
                if e["data"].get("namespace") in mine]

    everything_seen = kinds(everything, until=lambda e: e["event"] == "schedule.created"
                            and e["data"]["namespace"] == ns2)
    assert everything_seen == [(ns, k) for ns in (ns1, ns2) for k in (
        "namespace.registered", "workflow.started", "workflow.signaled", "schedule.created")]
    assert kinds(by_ns, idle=0.6) == [(ns1, k) for k in (
        "namespace.registered", "workflow.started", "workflow.signaled", "schedule.created")]
    assert kinds(exact, idle=0.6) == [(ns1, "workflow.signaled"), (ns2, "workflow.signaled")]
    assert kinds(prefix, idle=0.6) == [(ns1, "namespace.registered"), (ns2, "namespace.registered")]
    assert kinds(mixed, idle=0.6) == [(ns2, "workflow.started"), (ns2, "workflow.signaled"),
                                      (ns2, "schedule.created")]


def test_resume_with_last_event_id(node: Node, streams) -> None:
    ns = new_ns(node)
    first = streams(node.url, f"{EVENTS}?namespace={ns}")
    start(node, ns, "a")
    (a_started,) = first.events(10, until=lambda e: e["event"] == "workflow.started")
    start(node, ns, "b")
    ok(node, "POST", f"{NSP}/{ns}/workflows/a/signal", {"name": "s"})
    later = first.events(10, until=lambda e: e["event"] == "workflow.signaled")
    assert [(e["event"], e["data"]["workflow_id"]) for e in later] == [
        ("workflow.started", "b"), ("workflow.signaled", "a")]
    first.close()
    expected = [e["id"] for e in later]
    for how in ("header", "query"):
        if how == "header":
            s = streams(node.url, f"{EVENTS}?namespace={ns}", headers={"Last-Event-ID": a_started["id"]})
        else:
            s = streams(node.url, f"{EVENTS}?namespace={ns}&lastEventId={quote(a_started['id'])}")
        got = s.events(10, until=lambda e: e["id"] == expected[-1])
        assert [e["id"] for e in got] == expected, (how, got)
        start(node, ns, f"live-{how}")  # then live events
        (live,) = s.events(10, until=lambda e: True)
        assert live["event"] == "workflow.started" and live["data"]["workflow_id"] == f"live-{how}"
        expected.append(live["id"])


def test_unknown_id_gives_a_gap_then_live_events(node: Node, streams) -> None:
    ns = new_ns(node)
    start(node, ns, "old")
    boot = ""
    for n, unknown in enumerate(("zz-1", "00000000-1", "not an id")):
        s = streams(node.url, f"{EVENTS}?namespace={ns}", headers={"Last-Event-ID": unknown})
        (gap,) = s.events(10, until=lambda e: True)
        assert gap["event"] == "gap" and gap["data"] == {"last_event_id": unknown}, gap
        m = ID.match(gap["id"])
        assert m, gap["id"]
        boot = m.group(1)
        start(node, ns, f"new-{n}")  # then live events only: "old" is not replayed
        (live,) = s.events(10, until=lambda e: True)
        assert live["event"] == "workflow.started" and live["data"]["workflow_id"] == f"new-{n}"
    # an id of this boot that was never issued is unknown too
    s = streams(node.url, f"{EVENTS}?namespace={ns}", headers={"Last-Event-ID": f"{boot}-99999999"})
    (gap,) = s.events(10, until=lambda e: True)
    assert gap["event"] == "gap"


def test_keepalive_pings(node: Node, streams) -> None:
    s = streams(node.url, f"{EVENTS}?namespace=quiet-{uuid.uuid4().hex[:6]}")
    pings = 0
    t0 = time.monotonic()
    for block in s.blocks(1.3):
        if block == ": ping":
            pings += 1
    assert time.monotonic() - t0 < 5
    assert 3 <= pings <= 9, pings


def _flood(node: Node, ns: str, n: int, workers: int = 16) -> list[int]:
    u = urlsplit(node.url)

    def run(k: int) -> list[int]:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        out = []
        try:
            for i in range(k, n, workers):
                body = json.dumps({"workflowType": {"name": "Job"}, "workflowId": f"flood-{i}"})
                conn.request("POST", f"{NSP}/{ns}/workflows", body=body)
                resp = conn.getresponse()
                resp.read()
                out.append(resp.status)
        finally:
            conn.close()
        return out

    with ThreadPoolExecutor(workers) as pool:
        return [s for part in pool.map(run, range(workers)) for s in part]


def test_slow_consumer_never_blocks_writes_and_sees_a_gap(node: Node, streams) -> None:
    ns = new_ns(node)
    gaps0 = metric(node, "tasks_sse_gaps_total")
    # A subscriber that reads nothing (and has a tiny receive buffer) while 2,000 workflows start.
    stuck = streams(node.url, f"{EVENTS}?namespace={ns}", rcvbuf=4096)
    assert metric(node, "tasks_sse_subscribers") >= 1
    t0 = time.monotonic()
    statuses = _flood(node, ns, 2000)
    took = time.monotonic() - t0
    assert statuses == [200] * 2000, {s: statuses.count(s) for s in set(statuses)}
    assert took < 40, took
    # The stuck stream, read at last: some events, then a gap, then the newest events.
    seen = stuck.events(20, until=lambda e: e["event"] == "gap")
    assert seen and seen[-1]["event"] == "gap", [e["event"] for e in seen[-3:]]
    gap = seen[-1]
    assert gap["data"]["last_event_id"] == (seen[-2]["id"] if len(seen) > 1 else gap["data"]["last_event_id"])
    rest = stuck.events(20, idle=1.5)  # what was queued after the gap: the newest events, no other gap
    assert rest and all(e["event"] == "workflow.started" for e in rest)
    assert len(rest) <= QUEUE_SIZE
    assert metric(node, "tasks_sse_gaps_total") > gaps0
    # An id the ring has evicted since: a gap first.
    first_id = seen[0]["id"] if seen[0]["event"] != "gap" else None
    if first_id is not None:
        s = streams(node.url, f"{EVENTS}?namespace={ns}", headers={"Last-Event-ID": first_id})
        (g,) = s.events(10, until=lambda e: True)
        assert g["event"] == "gap" and g["data"] == {"last_event_id": first_id}


# ---------------------------------------------------------------------------
# migration events on a 3-node cluster


def test_migration_events_on_a_cluster(tmp_path: Path, streams) -> None:
    P = 4
    c = Cluster(tmp_path / "c", n=3, partitions=P)
    try:
        c.start()
        n1, n3 = c.nodes["n1"], c.nodes["n3"]

        def call(node: NodeProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
            deadline = time.monotonic() + 30
            while True:
                status, payload, _ = node.request(method, path, body)
                if status != 503 or time.monotonic() > deadline:
                    return status, payload
                time.sleep(0.1)

        ns = "moving"
        status, body = call(n1, "POST", NSP, {"namespaceInfo": {"name": ns}})
        assert status == 200, body
        # every node applies every partition, so any node's stream carries every shard's events
        wf_watch = streams(n3.url, f"{EVENTS}?namespace={ns}&kinds=workflow.started")
        for i in range(5):
            status, body = call(c.nodes[c.ids[i % 3]], "POST", f"{NSP}/{ns}/workflows",
                                {"workflowType": {"name": "Job"}, "workflowId": f"w{i}", "requestId": f"r{i}"})
            assert status == 200, body
        seen_wf: set[str] = set()

        def all_started(e: dict) -> bool:
            seen_wf.add(e["data"]["workflow_id"])
            return len(seen_wf) == 5

        got = wf_watch.events(20, until=all_started)
        assert seen_wf == {f"w{i}" for i in range(5)}, got
        watchers = [streams(n.url, f"{EVENTS}?kinds=migration.") for n in (n1, n3)]
        dst = (partition_of("_", ns, "tasks", P) + 1) % P
        status, job = call(n1, "POST", f"{NSP}/{ns}/migrate", {"toPartition": dst})
        assert status in (200, 202), job
        for w in watchers:
            evs = w.events(60, until=lambda e: e["event"] in ("migration.done", "migration.failed"))
            assert [e["event"] for e in evs] == ["migration.started", "migration.done"], evs
            started, done = evs
            for e in evs:
                d = e["data"]
                assert d["migration_id"] == job["id"] and d["namespace"] == ns and d["org_id"] == ""
                assert d["data"]["id"] == job["id"] and d["data"]["toPartition"] == dst
                assert d["data"]["org"] == ""
            assert done["data"]["data"]["status"] == "done" and done["data"]["data"]["finishedAt"]
            assert started["data"]["data"]["status"] != "done"
            assert not w.events(0.5, idle=0.5)  # each transition once
    finally:
        c.kill_all()


# ---------------------------------------------------------------------------
# the hub on its own (no process)


def _hub(buffer_events: int = 100) -> SseHub:
    return SseHub(SimpleNamespace(replicator=None, service=None), buffer_events=buffer_events,
                  keepalive_ms=15000, clock=lambda: 0)


def _frames(hub: SseHub, sub: Any) -> list[dict]:
    return [parse_block(f.decode().rstrip("\n")) for f in sub.take(10_000)]  # type: ignore[misc]


def test_hub_overflow_drops_the_oldest_and_queues_one_gap() -> None:
    hub = _hub(1000)
    sub = hub.subscribe("_", None, None, None)
    for i in range(QUEUE_SIZE + 44):
        hub.publish("workflow.started", "_", "ns", {"workflow_id": f"w{i}"})
    got = _frames(hub, sub)
    assert got[0]["event"] == "gap" and got[0]["data"] == {"last_event_id": f"{hub.boot}-0"}
    assert [e["data"]["workflow_id"] for e in got[1:]] == [f"w{i}" for i in range(44, QUEUE_SIZE + 44)]
    hub.publish("workflow.started", "_", "ns", {"workflow_id": "next"})
    (nxt,) = _frames(hub, sub)
    assert nxt["data"]["workflow_id"] == "next"


def test_hub_scopes_by_org_and_filters() -> None:
    hub = _hub()
    mine = hub.subscribe("acme", None, parse_kinds("workflow.,schedule.fired"), None)
    dev = hub.subscribe("_", "ns", None, None)
    hub.publish("workflow.started", "_", "ns", {})
    hub.publish("workflow.started", "acme", "ns", {})
    hub.publish("schedule.created", "acme", "ns", {})
    hub.publish("schedule.fired", "acme", "other", {})
    hub.publish("namespace.registered", "_", "other", {})
    assert [(e["event"], e["data"]["org_id"]) for e in _frames(hub, mine)] == [
        ("workflow.started", "acme"), ("schedule.fired", "acme")]
    assert [(e["event"], e["data"]["org_id"]) for e in _frames(hub, dev)] == [("workflow.started", "")]


def test_hub_resume_known_evicted_and_foreign_ids() -> None:
    hub = _hub(buffer_events=5)
    for i in range(3):
        hub.publish("workflow.started", "_", "ns", {"workflow_id": f"w{i}"})
    assert [e["data"]["workflow_id"] for e in _frames(hub, hub.subscribe("_", None, None, f"{hub.boot}-0"))] == [
        "w0", "w1", "w2"]
    for i in range(3, 8):
        hub.publish("workflow.started", "_", "ns", {"workflow_id": f"w{i}"})
    # the ring holds seq 4..8: seq 3 is the last one it can resume after
    assert [e["data"]["workflow_id"] for e in _frames(hub, hub.subscribe("_", None, None, f"{hub.boot}-3"))] == [
        "w3", "w4", "w5", "w6", "w7"]
    for stale in (f"{hub.boot}-2", f"{hub.boot}-9", "other-3", "garbage"):
        got = _frames(hub, hub.subscribe("_", None, None, stale))
        assert [e["event"] for e in got] == ["gap"] and got[0]["data"] == {"last_event_id": stale}
        assert got[0]["id"] == f"{hub.boot}-8"


def test_event_kinds_and_migration_transitions() -> None:
    assert event_kind({"kind": "activity.closed", "status": "TIMED_OUT"}) == "activity.timed_out"
    assert event_kind({"kind": "workflow.cancel_requested"}) == "workflow.cancel_requested"
    for internal in ("activity.released", "activity.result", "activity.cancel_requested", "shard.moved_out",
                     "shard.activated", "migration.done"):
        assert event_kind({"kind": internal}) is None, internal
    with pytest.raises(ApiError):
        parse_kinds("workflow.bogus")
    hub = _hub()
    sub = hub.subscribe("_", None, None, None)
    job = {"id": "j1", "org": "_", "namespace": "ns", "status": "pending", "startedAt": 0, "finishedAt": None}
    hub.seen_jobs([{**job, "id": "old", "status": "snapshotting"}])
    for status in ("pending", "snapshotting", "catching-up", "cutover", "done", "done"):
        hub.on_migration({**job, "status": status})
    hub.on_migration({**job, "id": "old", "status": "failed"})
    got = [(e["event"], e["data"]["migration_id"]) for e in _frames(hub, sub)]
    assert got == [("migration.started", "j1"), ("migration.done", "j1"), ("migration.failed", "old")]
