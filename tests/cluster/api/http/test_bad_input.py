"""Bad input never gives a 500, a crash or a hang (SPEC §0, §1, §4.1).

Every route of ``cluster.api.http.server.build_router()`` is driven with malformed
bodies, wrong JSON types, bad names in every path parameter, bad query
parameters and oversized bodies, through real HTTP against one real
node (in this process: ``hanzo_tasks.testing``). Paths go out byte for byte (``http.client`` / raw sockets), so
``..`` and ``%2e%2e`` reach the server exactly as written.

Each error must be the SPEC's 4xx with ``Content-Type: application/json`` and a
body ``{"code": str, "message": str}``. The tests at the end pin server bugs
these tests found, now fixed.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import msgpack
import pytest
from hanzo_tasks.cluster.api.http.server import Route, build_router
from hanzo_tasks.cluster.service.inputs import make_token
from hanzo_tasks.testing import TestNode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cluster.inproc import start_test_node

NSP = "/v1/tasks/namespaces"
MAX_BODY = 4 * 1024 * 1024
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
ROUTES: list[Route] = build_router().routes


# ---------------------------------------------------------------------------
# plumbing


def _strict_json(payload: bytes) -> Any:
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(payload, parse_constant=no_constant)


class Api:
    def __init__(self, node: TestNode) -> None:
        self.node = node
        u = urlsplit(node.url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80

    def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
        headers: dict[str, str] | None = None, timeout: float = 10.0,
    ) -> tuple[int, Any, http.client.HTTPMessage]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=headers or {})
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        parsed: Any = payload
        if resp.headers.get("Content-Type", "").startswith("application/json") and payload:
            parsed = _strict_json(payload)
        return resp.status, parsed, resp.headers

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        s, b, _ = self.call(method, path, body)
        assert s == 200, f"{method} {path} -> {s} {b}"
        return b


def problem(status: int, body: Any, headers: http.client.HTTPMessage, expect: set[int] | int | None) -> str | None:
    """Why a response breaks the error contract, or None when it is fine."""
    if status >= 500:
        return f"server error {status}: {body!r}"[:300]
    if headers.get("X-Tasks-Node") != "t1":
        return "no X-Tasks-Node header"
    if expect is not None:
        allowed = {expect} if isinstance(expect, int) else expect
        if status not in allowed:
            return f"status {status} not in {sorted(allowed)}: {body!r}"[:300]
    if status >= 400:
        if not headers.get("Content-Type", "").startswith("application/json"):
            return f"error without JSON content type: {headers.get('Content-Type')}"
        if not (isinstance(body, dict) and isinstance(body.get("code"), str) and isinstance(body.get("message"), str)):
            return f"error body is not {{code, message}}: {body!r}"[:300]
    return None


def check_all(api: Api, cases: list[tuple[str, str, Any, set[int] | int | None]]) -> None:
    """Send every case (method, path, body-or-raw-bytes, expected); report all failures together."""
    failures = []
    for method, path, body, expect in cases:
        raw = body if isinstance(body, bytes) else None
        try:
            s, b, h = api.call(method, path, None if raw is not None else body, raw=raw)
        except (OSError, http.client.HTTPException, ValueError) as e:
            failures.append(f"{method} {path} {body!r:.80}: {type(e).__name__}: {e}")
            continue
        why = problem(s, b, h, expect)
        if why:
            failures.append(f"{method} {path} {body!r:.80}: {why}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:40])


# ---------------------------------------------------------------------------
# the node and its fixtures


class World:
    """Names that exist on the node, so that routes get valid parameters."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.ns = f"bad-{uuid.uuid4().hex[:8]}"
        self.wid = "wf-1"
        self.sid = "sched-1"
        self.attr = "Attr"
        self.email = "someone@example.com"
        self.token = ""
        self.aid = "act-1"
        self.arid = ""  # set once the world's activity is started
        self.build = "build-1"  # the current (only) version of the world's deployment {name}
        self.bid = ""  # set once the world's (empty, so completed) batch is started

    def params(self, *, victims: bool = False, route: Route | None = None) -> dict[str, str]:
        """Valid parameters. ``victims``: ids that do not exist (in the real namespace), for
        requests that would change what they name; only ``DELETE {ns}`` gets a missing namespace."""
        if victims:
            ns = "victim-ns" if route is not None and route.template == NSP + "/{ns}" else self.ns
            return {"ns": ns, "id": "victim-wf", "sid": "victim-sched", "name": "Victim", "aid": "victim-act",
                    "rid": self.arid, "q": "victim-queue", "identity": "victim-worker", "email": "victim@x.io",
                    "buildId": "victim-build", "bid": "victim-batch"}
        return {"ns": self.ns, "id": self.wid, "sid": self.sid, "name": self.attr, "aid": self.aid,
                "rid": self.arid, "q": "nobody", "identity": "no-worker", "email": self.email,
                "buildId": self.build, "bid": self.bid}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    node = start_test_node(tmp_path_factory.mktemp("bad_input") / "n1")
    try:
        yield Api(node)
    finally:
        node.stop()


@pytest.fixture(scope="module")
def world(api: Api) -> World:
    w = World(api)
    # apsLimit 0: a flood of rejected writes must never turn into 429s here.
    api.ok("POST", NSP, {"namespaceInfo": {"name": w.ns}, "config": {"apsLimit": 0}})
    api.ok("POST", f"{NSP}/{w.ns}/workflows", {"workflowType": {"name": "Job"}, "workflowId": w.wid})
    api.ok("POST", f"{NSP}/{w.ns}/workflows", {"workflowType": {"name": "Job"}, "workflowId": "wf-2"})
    api.ok("POST", f"{NSP}/{w.ns}/schedules", {"scheduleId": w.sid, "spec": {"interval": ["1h"]},
                                               "action": {"workflowType": {"name": "Job"}}})
    api.ok("POST", f"{NSP}/{w.ns}/search-attributes", {"name": w.attr, "type": "Keyword"})
    api.ok("POST", f"{NSP}/{w.ns}/identities", {"email": w.email, "role": "viewer"})
    w.bid = api.ok("POST", f"{NSP}/{w.ns}/batches", {"operation": "BATCH_OPERATION_TYPE_TERMINATE",
                                                     "query": "WorkflowType = 'Nothing'"})["batchId"]
    # an activity on a queue nobody serves: it stays SCHEDULED for the GET routes
    w.arid = api.ok("POST", f"{NSP}/{w.ns}/activities", {"activityId": w.aid, "activityType": {"name": "Act"},
                                                         "taskQueue": "nobody"})["execution"]["runId"]
    # a deployment and a nexus endpoint named like the attribute, for the {name} routes
    api.ok("POST", f"{NSP}/{w.ns}/deployments", {"name": w.attr})
    api.ok("POST", f"{NSP}/{w.ns}/deployments/{w.attr}/versions", {"buildId": w.build})
    api.ok("POST", f"{NSP}/{w.ns}/nexus", {"name": w.attr, "target": "ns2://elsewhere/handler"})
    w.token = api.ok("GET", f"{NSP}/{w.ns}/workflows?pageSize=1")["nextPageToken"]
    assert w.token
    return w


def path_of(route: Route, params: dict[str, str]) -> str:
    if not route.parts:
        return "/"
    return "/" + "/".join(params[p[1:-1]] if p.startswith("{") else p for p in route.parts)


def route_id(route: Route) -> str:
    return f"{route.method} {route.template}"


def reads_body(route: Route) -> bool:
    return route.method in ("POST", "PUT", "PATCH", "DELETE")


def changes_state(route: Route) -> bool:
    return route.method != "GET"


# ---------------------------------------------------------------------------
# the classification of every route: which query parameters and body fields it reads

WF = NSP + "/{ns}/workflows"
SC = NSP + "/{ns}/schedules"
ACT = NSP + "/{ns}/activities"
DEP = NSP + "/{ns}/deployments"

PAGED = {
    ("GET", "/v1/tasks/cluster"),
    ("GET", "/v1/tasks/migrations"),
    ("GET", NSP),
    ("GET", NSP + "/{ns}/dead-letters"),
    ("GET", WF),
    ("GET", WF + "/{id}/history"),
    ("GET", WF + "/{id}/executions"),
    ("GET", SC),
    ("GET", NSP + "/{ns}/search-attributes"),
    ("GET", NSP + "/{ns}/identities"),
    ("GET", NSP + "/{ns}/batches"),
    ("GET", ACT),
    ("GET", ACT + "/{aid}/{rid}/history"),
    ("GET", NSP + "/{ns}/task-queues"),
    ("GET", NSP + "/{ns}/task-queues/{q}"),
    ("GET", NSP + "/{ns}/task-queues/{q}/workers"),
    ("GET", NSP + "/{ns}/workers"),
    ("GET", NSP + "/{ns}/deployments"),
    ("GET", NSP + "/{ns}/nexus"),
    ("GET", "/v1/tasks/nexus"),
}
RUN_ID = {
    ("GET", WF + "/{id}"),
    ("POST", WF + "/{id}/cancel"),
    ("POST", WF + "/{id}/terminate"),
    ("POST", WF + "/{id}/signal"),
    ("GET", WF + "/{id}/history"),
    ("POST", WF + "/{id}/query"),
    ("POST", WF + "/{id}/metadata"),
}

_T = {"workflowType": {"name": "Job"}}
_TERM, _SIG = "BATCH_OPERATION_TYPE_TERMINATE", "BATCH_OPERATION_TYPE_SIGNAL"
_START_WRONG: list[dict] = [
    {"workflowType": 5}, {"workflowType": {"name": 5}}, {"workflowType": []}, {"workflowType": True},
    {**_T, "requestId": 7}, {**_T, "requestId": ["r"]},
    {**_T, "workflowTaskTimeout": 10}, {**_T, "workflowRunTimeout": 10}, {**_T, "workflowExecutionTimeout": 1.5},
    {**_T, "retryPolicy": "x"}, {**_T, "retryPolicy": []}, {**_T, "retryPolicy": {"maximumAttempts": "3"}},
    {**_T, "retryPolicy": {"backoffCoefficient": "2"}}, {**_T, "retryPolicy": {"initialInterval": 1}},
    {**_T, "retryPolicy": {"nonRetryableErrorTypes": "E"}}, {**_T, "retryPolicy": {"nonRetryableErrorTypes": [1]}},
    {**_T, "taskQueue": 5}, {**_T, "taskQueue": {"name": 5}}, {**_T, "workflowId": 5}, {**_T, "runId": 5},
    {**_T, "workflowIdConflictPolicy": 5}, {**_T, "searchAttributes": []}, {**_T, "searchAttributes": "a"},
    {**_T, "identity": 5},
]


def _sched(**over: Any) -> dict:
    body = {"scheduleId": f"wt-{uuid.uuid4().hex[:8]}", "spec": {"interval": ["1h"]},
            "action": {"workflowType": {"name": "Job"}}}
    for k, v in over.items():
        if k in ("spec", "action", "policies", "state") and isinstance(v, dict) and k in body:
            body[k] = {**body[k], **v}
        else:
            body[k] = v
    return body


def _sched_wrong(*, with_id: bool) -> list[dict]:
    out = [
        _sched(spec=[]), _sched(spec="1h"), _sched(spec={"interval": "1s"}), _sched(spec={"cronString": 5}),
        _sched(spec={"cronString": [5]}), _sched(spec={"interval": [5]}), _sched(spec={"interval": [{"interval": 1}]}),
        _sched(spec={"interval": [{"interval": "1h", "phase": 0}]}), _sched(spec={"timezone": 5}),
        _sched(spec={"startTime": 5}), _sched(spec={"endTime": True}), _sched(spec={"jitter": 5}),
        _sched(action=[]), _sched(action={"workflowType": 5}), _sched(action={"taskQueue": 5}),
        _sched(action={"workflowTaskTimeout": 10}), _sched(action={"retryPolicy": "x"}),
        _sched(action={"memo": "x"}), _sched(policies=5), _sched(policies={"overlapPolicy": 5}),
        _sched(policies={"catchupWindow": 60}), _sched(policies={"pauseOnFailure": "yes"}), _sched(state=5),
        _sched(state={"paused": "yes"}), _sched(state={"note": 5}),
        _sched(state={"limitedActions": True, "remainingActions": "3"}),
    ]
    if with_id:
        return [*out, _sched(scheduleId=5), _sched(scheduleId=["a"])]
    return [{k: v for k, v in b.items() if k != "scheduleId"} for b in out]


def wrong_type_bodies(method: str, template: str) -> list[dict]:
    """Bodies whose known fields have the wrong JSON type: each must be a 400."""
    ns_name = f"wt-{uuid.uuid4().hex[:8]}"
    dep_name = f"wt-{uuid.uuid4().hex[:8]}"
    table: dict[tuple[str, str], list[dict]] = {
        ("POST", NSP): [
            {"namespaceInfo": 5}, {"namespaceInfo": {"name": 5}}, {"namespaceInfo": {"name": ns_name, "description": 5}},
            {"namespaceInfo": {"name": ns_name}, "config": 5},
            {"namespaceInfo": {"name": ns_name}, "config": {"workflowExecutionRetentionTtl": 10}},
            {"namespaceInfo": {"name": ns_name}, "config": {"apsLimit": "x"}},
            {"namespaceInfo": {"name": ns_name}, "config": {"customData": []}},
        ],
        ("POST", NSP + "/{ns}/metadata"): [
            {"retention": 10}, {"description": 5}, {"apsLimit": "x"}, {"apsLimit": 1.5}, {"apsLimit": True},
            {"customData": []}, {"customData": {"a": 1}}, {"ownerEmail": 5},
        ],
        ("POST", WF): _START_WRONG,
        ("POST", WF + "/signal-with-start"): [{**b, "signalName": "s"} for b in _START_WRONG]
        + [{**_T, "signalName": 5}, {**_T, "signalName": ""}, {**_T, "signalName": ["s"]}],
        ("POST", WF + "/{id}/signal"): [
            {"name": 5}, {"name": ["s"]}, {"name": "s", "requestId": 7}, {"name": "s", "identity": 5},
            {"signalName": 5},
        ],
        ("POST", WF + "/{id}/cancel"): [{"reason": 5}, {"identity": 5}],
        ("POST", WF + "/{id}/terminate"): [{"reason": 5}, {"identity": 5}],
        ("POST", WF + "/{id}/query"): [
            {"queryType": 5}, {"queryType": "__workflow_metadata", "timeout": 5},
        ],
        ("POST", WF + "/{id}/metadata"): [{"summary": 5}, {"details": []}, {"updatedBy": False}],
        ("POST", WF + "/{id}/reset"): [
            {"eventId": "x"}, {"eventId": 1.5}, {"eventId": True}, {"eventId": [1]}, {"eventId": {}},
            {"eventId": 1, "runId": 5}, {"eventId": 1, "requestId": 7}, {"eventId": 1, "reason": 5},
        ],
        ("POST", SC): _sched_wrong(with_id=True),
        ("POST", SC + "/{sid}"): _sched_wrong(with_id=False),
        ("POST", SC + "/{sid}/trigger"): [{"overlapPolicy": 5}, {"overlapPolicy": "nope"}, {"requestId": 7}],
        ("POST", SC + "/{sid}/pause"): [{"note": 5}],
        ("POST", SC + "/{sid}/unpause"): [{"note": 5}],
        ("POST", NSP + "/{ns}/search-attributes"): [
            {"name": 5, "type": "Keyword"}, {"name": "Ok1", "type": 5}, {"name": ["Ok2"], "type": "Keyword"},
        ],
        ("POST", NSP + "/{ns}/batches"): [
            {}, {"operation": 5, "query": ""}, {"operation": _TERM}, {"operation": _TERM, "query": 5},
            {"operation": _TERM, "query": "", "rps": "x"}, {"operation": _TERM, "query": "", "rps": -1},
            {"operation": _TERM, "query": "", "rps": True}, {"operation": _SIG, "query": "", "signal": 5},
            {"operation": _SIG, "query": "", "signal": {"name": 5}}, {"operation": _SIG, "query": ""},
            {"operation": _TERM, "query": "", "reason": 5}, {"operation": _TERM, "query": "", "requestId": 7},
            {"operation": _TERM, "query": "", "identity": 5}, {"operation": _TERM, "query": "Nope = 1"},
        ],
        ("POST", NSP + "/{ns}/batches/{bid}/terminate"): [{"reason": 5}, {"identity": 5}],
        ("POST", NSP + "/{ns}/identities"): [
            {}, {"email": 5, "role": "viewer"}, {"email": "a@b.c", "role": 5}, {"email": "a@b.c", "role": "root"},
            {"email": "no-at", "role": "viewer"}, {"email": ["a@b.c"], "role": "viewer"}, {"email": "a b@c", "role": "viewer"},
        ],
        ("POST", ACT): [
            {"activityType": {"name": "A"}}, {"activityId": 5, "activityType": {"name": "A"}},
            {"activityId": "a", "activityType": 5}, {"activityId": "a"},
            {"activityId": "a", "activityType": {"name": "A"}, "taskQueue": 5},
            {"activityId": "a", "activityType": {"name": "A"}, "runId": 5},
            {"activityId": "a", "activityType": {"name": "A"}, "startToCloseTimeout": 10},
            {"activityId": "a", "activityType": {"name": "A"}, "heartbeatTimeout": "soon"},
            {"activityId": "a", "activityType": {"name": "A"}, "retryPolicy": "x"},
            {"activityId": "a", "activityType": {"name": "A"}, "requestId": 7},
            {"activityId": "a", "activityType": {"name": "A"}, "identity": 5},
        ],
        ("POST", ACT + "/{aid}/{rid}/cancel"): [{"reason": 5}, {"identity": 5}],
        ("POST", ACT + "/{aid}/{rid}/complete"): [{"identity": 5}],
        ("POST", ACT + "/{aid}/{rid}/fail"): [{"cause": 5}, {}, {"cause": "x", "nonRetryable": "yes"},
                                              {"cause": "x", "identity": 5}],
        ("POST", NSP + "/{ns}/migrate"): [
            {}, {"toNode": 5}, {"toPartition": "0"}, {"toPartition": 99}, {"toPartition": -1},
            {"toPartition": True}, {"toPartition": 0.5}, {"toNode": "n1", "toPartition": 0}, {"toNode": "nobody"},
        ],
        ("POST", DEP): [
            {}, {"name": ""}, {"name": 5}, {"name": ["d"]}, {"name": ".."}, {"name": "a/b"},
            {"name": dep_name, "description": 5}, {"name": dep_name, "ownerEmail": 5},
            {"name": dep_name, "ownerEmail": "no-at"}, {"name": dep_name, "defaultCompute": 5},
            {"name": dep_name, "defaultCompute": {"cpu": 1}},
        ],
        ("POST", DEP + "/{name}"): [
            {"description": 5}, {"ownerEmail": 5}, {"ownerEmail": "no-at"}, {"defaultCompute": []},
        ],
        ("POST", DEP + "/{name}/set-current"): [
            {}, {"buildId": ""}, {"buildId": 5}, {"buildId": ["b"]}, {"buildId": "a/b"},
        ],
        ("POST", DEP + "/{name}/versions"): [
            {}, {"buildId": ""}, {"buildId": 5}, {"buildId": ".."}, {"buildId": "v", "description": 5},
            {"buildId": "v", "compute": 5}, {"buildId": "v", "image": []}, {"buildId": "v", "env": []},
            {"buildId": "v", "env": "A=1"}, {"buildId": "v", "env": {"A": 1}},
        ],
        ("POST", DEP + "/{name}/versions/{buildId}"): [
            {"description": 5}, {"compute": {}}, {"image": 5}, {"env": []}, {"env": {"A": None}},
        ],
        ("POST", NSP + "/{ns}/nexus"): [
            {}, {"name": "n"}, {"name": "n", "target": ""}, {"name": "n", "target": 5}, {"name": 5, "target": "t"},
            {"name": "..", "target": "t"}, {"name": "n", "target": "t", "description": 5},
        ],
        ("POST", "/v1/tasks/cluster/members"): [
            {"nodeId": 5, "peer": "127.0.0.1:1"}, {"nodeId": "n9", "peer": 5}, {"nodeId": "..", "peer": "a:1"},
            {"nodeId": "n9"}, {"nodeId": "n9", "peer": "no-port"},
        ],
    }
    return table.get((method, template), [])


# Routes that answer with a stream that stays open (SSE, SPEC §6). The generic GET checks below read
# a response to its end and would hang on them, so they are left out of those tables (NON_STREAMING)
# and checked by test_streaming_routes_bad_input, which reads only the response head.
STREAMING = {("GET", "/v1/tasks/events")}
# MCP speaks JSON-RPC (SPEC §7): a malformed body is a JSON-RPC error, not a 400; tests/cluster/api/test_mcp.py
# drives its own rules, and only the rules every body route shares (413, 405) are checked here.
JSON_RPC = {("POST", "/v1/tasks/mcp")}
NON_STREAMING = [r for r in ROUTES if (r.method, r.template) not in STREAMING | JSON_RPC]
# Long polls (SPEC §5.6 "Waiting for a result") wait up to 30 s by default on an open run: the generic
# tables ask them not to wait (the world's run is open, so they answer 202 RUNNING at once).
LONG_POLLS = {("GET", WF + "/{id}/result")}


def no_wait(route: Route) -> str:
    return "wait=0s" if (route.method, route.template) in LONG_POLLS else ""

BODY_FREE = {  # routes that read no body field (GET, and deletes by path)
    (r.method, r.template) for r in ROUTES if r.method == "GET"
} | {("DELETE", NSP + "/{ns}"), ("DELETE", SC + "/{sid}"), ("DELETE", NSP + "/{ns}/search-attributes/{name}"),
     ("DELETE", NSP + "/{ns}/identities/{email}"),
     ("DELETE", DEP + "/{name}"), ("DELETE", DEP + "/{name}/versions/{buildId}"),
     ("POST", DEP + "/{name}/versions/{buildId}/validate"), ("DELETE", NSP + "/{ns}/nexus/{name}"),
     ("DELETE", "/v1/tasks/cluster/members/{id}"),
     ("POST", ACT + "/{aid}/{rid}/heartbeat")}  # details may be any JSON value


def test_every_route_is_classified() -> None:
    """A new route must be added to this file's tables before it can ship untested."""
    for r in ROUTES:
        key = (r.method, r.template)
        assert key in BODY_FREE | JSON_RPC or wrong_type_bodies(*key), f"unclassified route {route_id(r)}"
    templates = {r.template for r in ROUTES}
    assert {t for _, t in PAGED | RUN_ID} <= templates


# ---------------------------------------------------------------------------
# bodies

MALFORMED = [
    b"{", b"}", b"[]", b'[{"a": 1}]', b'"a string"', b"42", b"-1.5", b"null", b"true", b"\xff\xfe{}",
    b'{"a": 1}{', b"{'single': 1}", b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b"{,}",
    b'{"a": 1,}', b"\x00", b"[" * 100_000,
]


@pytest.mark.parametrize("route", NON_STREAMING, ids=route_id)
def test_malformed_json_bodies(api: Api, world: World, route: Route) -> None:
    path = path_of(route, world.params())
    # No worker is connected here: a worker by identity is a 404 (SPEC §4.5), every other GET a 200.
    # Nor is there a migration job: GET migrations/{id} is a 404 too.
    expect: int | set[int] = 400 if reads_body(route) else (
        {404} if "{identity}" in route.template or route.template.endswith("migrations/{id}") else {200})
    if no_wait(route):
        path, expect = f"{path}?{no_wait(route)}", {202}
    check_all(api, [(route.method, path, raw, expect) for raw in MALFORMED])


@pytest.mark.parametrize("route", [r for r in ROUTES if wrong_type_bodies(r.method, r.template)], ids=route_id)
def test_wrong_json_types_for_known_fields(api: Api, world: World, route: Route) -> None:
    path = path_of(route, world.params())
    check_all(api, [(route.method, path, b, 400) for b in wrong_type_bodies(route.method, route.template)])


def test_unstorable_strings_and_numbers_are_400(api: Api, world: World) -> None:
    """Lone surrogates in names and strings, and integers past 64 bits, cannot be stored: 400, never 500."""
    ns, wid, sid = world.ns, world.wid, world.sid
    big = b"123456789012345678901234567890"
    cases: list[tuple[str, str, Any, Any]] = [
        ("POST", f"{NSP}/{ns}/workflows", b'{"workflowType":"\\ud800"}', 400),
        ("POST", f"{NSP}/{ns}/workflows", b'{"workflowType":"Job","workflowId":"\\udc00x"}', 400),
        ("POST", f"{NSP}/{ns}/workflows", b'{"workflowType":"Job","identity":"\\ud800"}', 400),
        ("POST", f"{NSP}/{ns}/workflows", b'{"workflowType":"Job","input":' + big + b"}", 400),
        ("POST", f"{NSP}/{ns}/workflows", b'{"workflowType":"Job","input":[-' + big + b"]}", 400),
        ("POST", f"{NSP}/{ns}/workflows", b'{"workflowType":"Job","retryPolicy":{"maximumAttempts":' + big + b"}}",
         400),
        ("POST", f"{NSP}/{ns}/workflows/{wid}/signal", b'{"name":"\\ud800"}', 400),
        ("POST", f"{NSP}/{ns}/workflows/{wid}/signal", b'{"name":"s","payload":' + big + b"}", 400),
        ("POST", f"{NSP}/{ns}/workflows/{wid}/metadata", b'{"summary":"\\ud800"}', 400),
        ("POST", f"{NSP}/{ns}/workflows/wf-2/reset", b'{"eventId":' + big + b"}", 400),
        ("POST", f"{NSP}/{ns}/metadata", b'{"apsLimit":' + big + b"}", 400),
        ("POST", f"{NSP}/{ns}/metadata", b'{"description":"\\ud800"}', 400),
        ("POST", NSP, b'{"namespaceInfo":{"name":"sur-ns","description":"\\ud800"}}', 400),
        ("POST", f"{NSP}/{ns}/schedules/{sid}/pause", b'{"note":"\\ud800"}', 400),
        ("POST", f"{NSP}/{ns}/schedules", b'{"scheduleId":"big","spec":{"interval":["1h"]},"action":{"workflowType":'
         b'"Job"},"state":{"limitedActions":true,"remainingActions":' + big + b"}}", 400),
    ]
    check_all(api, cases)
    assert api.ok("GET", f"{NSP}/{ns}/schedules/{sid}")["state"]["paused"] is False
    assert api.call("GET", f"{NSP}/sur-ns")[0] == 404, "a rejected create must not create the namespace"


def test_payloads_take_any_json_value(api: Api, world: World) -> None:
    """``input`` / ``payload`` hold any JSON value (§0): never a type error."""
    base = f"{NSP}/{world.ns}/workflows"
    for value in (None, True, 0, -3, 1.5, "s", [], [1, "a", None], {}, {"nested": {"deep": [1, {"x": None}]}}):
        r = api.ok("POST", base, {"workflowType": {"name": "Job"}, "input": value})
        assert r["input"] == value
        api.ok("POST", f"{base}/{r['execution']['workflowId']}/signal", {"name": "s", "payload": value})
        d = api.ok("GET", f"{base}/{r['execution']['workflowId']}/history?reverse=true&pageSize=1")
        assert d["events"][0]["attributes"]["input"] == value


def test_empty_body_means_empty_object(api: Api, world: World) -> None:
    s, b, _ = api.call("POST", f"{NSP}/{world.ns}/schedules/{world.sid}/pause", raw=b"")
    assert (s, b) == (200, {"status": "paused"})
    s, b, _ = api.call("POST", f"{NSP}/{world.ns}/schedules/{world.sid}/unpause", raw=b"  \n")
    assert (s, b) == (200, {"status": "running"})
    s, b, _ = api.call("POST", f"{NSP}/{world.ns}/workflows", raw=b"")
    assert s == 400 and b["code"] == "invalid_argument" and "workflowType" in b["message"]


def test_body_parsed_whatever_the_content_type(api: Api, world: World) -> None:
    body = json.dumps({"workflowType": {"name": "Job"}}).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/octet-stream"):
        s, b, _ = api.call("POST", f"{NSP}/{world.ns}/workflows", raw=body, headers={"Content-Type": ctype})
        assert s == 200 and b["started"] is True, (ctype, s, b)


# ---------------------------------------------------------------------------
# path parameters

BAD_SEGMENTS = [
    "..", ".", "%2e%2e", "%2E", "%2e", "a%2Fb", "%2F", "x" * 300, "%00", "a%00b", "%1F", "%7F", "%C2%85",
    "%ff", "%C3%28", "%E2%82", "a%2Fb%2F..",
]


def _param_routes() -> list[tuple[Route, str, str]]:
    out = []
    for r in ROUTES:
        for p in r.parts:
            if p.startswith("{"):
                name = p[1:-1]
                for seg in BAD_SEGMENTS + (["n" * 65] if name == "ns" else []) + (["s" * 201] if name == "sid" else []):
                    out.append((r, name, seg))
    return out


@pytest.mark.parametrize("route", [r for r in ROUTES if "{" in r.template], ids=route_id)
def test_bad_names_in_path_params(api: Api, world: World, route: Route) -> None:
    cases = []
    for r, name, seg in _param_routes():
        if r is not route:
            continue
        params = {**world.params(victims=changes_state(route), route=route), name: seg}
        body = {} if reads_body(route) else None
        cases.append((route.method, path_of(route, params), body, 400))
    check_all(api, cases)
    # Nothing was touched by those requests.
    assert api.ok("GET", f"{NSP}/{world.ns}/workflows/{world.wid}")["workflowExecutionInfo"]["status"] == (
        "WORKFLOW_EXECUTION_STATUS_RUNNING")


@pytest.mark.parametrize(
    "route",
    [r for r in ROUTES if "{" in r.template and r.method in ("GET", "DELETE")],
    ids=route_id,
)
def test_unknown_but_valid_names_are_404(api: Api, world: World, route: Route) -> None:
    base = world.params()
    cases = []
    for name in ("ns", "id", "sid", "name", "identity", "buildId"):  # not "q": an unknown queue has zero counts (§4.5)
        if "{" + name + "}" not in route.template:
            continue
        missing = {"ns": "no-such-ns", "id": "no-such-wf", "sid": "no-such-sched", "name": "NoSuchAttr",
                   "identity": "no-such-worker", "buildId": "no-such-build"}[name]
        cases.append((route.method, path_of(route, {**base, name: missing}), None, 404))
    check_all(api, cases)


def test_dot_segments_are_not_normalised(api: Api, world: World) -> None:
    ns = world.ns
    # Normalised, each of these would name a real list route and answer 200.
    for path in (f"{NSP}/{ns}/workflows/../schedules", f"{NSP}/{ns}/workflows/%2e%2e/schedules",
                 f"{NSP}/{ns}/workflows/./history", f"/v1/tasks/../tasks/namespaces/{ns}"):
        s, b, h = api.call("GET", path)
        assert problem(s, b, h, {400, 404}) is None, (path, s, b)
    s, b, _ = api.call("GET", f"{NSP}/{ns}/workflows/{world.wid}%2Fhistory")
    assert s == 400 and b["code"] == "invalid_argument"


# ---------------------------------------------------------------------------
# query parameters

GENERIC_BAD_QUERIES = [
    "pageSize=0", "pageSize=1001", "pageSize=abc", "pageSize=-1", "pageSize=1.5", "pageSize=%00",
    "nextPageToken=garbage", "nextPageToken=%ff%fe", "nextPageToken=" + "A" * 5000, "reverse=maybe", "after=-1",
    "after=abc", "upsert=maybe", "runId=zz", "execution.runId=zz", "from=x", "to=x", "query=(((",
    "query=%ff", "runId=%00", "stale=perhaps", "pageSize=1&pageSize=abc",
]


@pytest.mark.parametrize("route", NON_STREAMING, ids=route_id)
def test_bad_query_params_never_5xx(api: Api, world: World, route: Route) -> None:
    path = path_of(route, world.params(victims=changes_state(route), route=route))
    body = {} if reads_body(route) else None
    wait = f"&{no_wait(route)}" if no_wait(route) else ""
    check_all(api, [(route.method, f"{path}?{q}{wait}", body, None) for q in GENERIC_BAD_QUERIES])


def _stream_head(api: Api, method: str, path: str, raw: bytes | None) -> tuple[int, Any, http.client.HTTPMessage]:
    """Status, JSON body (errors only) and headers of a streaming route; the stream itself is not read."""
    conn = http.client.HTTPConnection(api.host, api.port, timeout=10)
    try:
        conn.request(method, path, body=raw)
        resp = conn.getresponse()
        body: Any = None
        if resp.headers.get("Content-Type", "").startswith("application/json"):
            body = _strict_json(resp.read())
        return resp.status, body, resp.headers
    finally:
        conn.close()


@pytest.mark.parametrize("route", [r for r in ROUTES if (r.method, r.template) in STREAMING], ids=route_id)
def test_streaming_routes_bad_input(api: Api, world: World, route: Route) -> None:
    """The generic bad bodies and queries on a stream: never a 5xx; a 200 is the event stream (§6)."""
    path = path_of(route, world.params())
    cases: list[tuple[str, bytes | None, set[int] | int | None]] = [(path, raw, 200) for raw in MALFORMED]
    cases += [(f"{path}?{q}", None, None) for q in GENERIC_BAD_QUERIES]
    cases += [(f"{path}?{q}", None, 400) for q in (
        "namespace=..", "namespace=", "namespace=%2e%2e", "namespace=a%2Fb", "namespace=" + "n" * 65,
        "kinds=nope", "kinds=workflow.nope", "kinds=,", "kinds=.", "kinds=nothing.")]
    cases += [(f"{path}?namespace={world.ns}&kinds=workflow.,schedule.fired&lastEventId=nope", None, 200)]
    failures = []
    for p, raw, expect in cases:
        s, b, h = _stream_head(api, route.method, p, raw)
        why = problem(s, b, h, expect)
        if why is None and s == 200 and h.get("Content-Type") != "text/event-stream":
            why = f"200 with Content-Type {h.get('Content-Type')}"
        if why:
            failures.append(f"{route.method} {p} {raw!r:.40}: {why}")
    assert not failures, failures


@pytest.mark.parametrize("route", [r for r in ROUTES if (r.method, r.template) in PAGED], ids=route_id)
def test_paging_params_are_validated(api: Api, world: World, route: Route) -> None:
    path = path_of(route, world.params())
    cases = [(route.method, f"{path}?{q}", None, 400) for q in (
        "pageSize=0", "pageSize=1001", "pageSize=abc", "pageSize=-5", "pageSize=2.0",
        "nextPageToken=garbage", "nextPageToken=%21%21%21", "nextPageToken=" + quote(base64.b64encode(b"x" * 40)),
    )]
    cases += [(route.method, f"{path}?pageSize=1", None, 200), (route.method, f"{path}?pageSize=1000", None, 200)]
    if route.template != WF:
        # A token made by the workflow list is for a different query.
        cases.append((route.method, f"{path}?nextPageToken={world.token}", None, 400))
    check_all(api, cases)


def test_token_from_a_different_query(api: Api, world: World) -> None:
    base = f"{NSP}/{world.ns}/workflows"
    s, b, _ = api.call("GET", f"{base}?pageSize=1&nextPageToken={world.token}")
    assert s == 200 and len(b["executions"]) == 1
    for q in ("WorkflowType = 'Job'", "WorkflowId = 'wf-1'"):
        s, b, _ = api.call("GET", f"{base}?pageSize=1&query={quote(q)}&nextPageToken={world.token}")
        assert s == 400 and b["code"] == "invalid_argument", (q, s, b)
    other_ns = f"{NSP}/default/workflows?pageSize=1&nextPageToken={world.token}"
    s, b, _ = api.call("GET", other_ns)
    assert s == 400 and b["code"] == "invalid_argument"


def test_route_specific_query_params(api: Api, world: World) -> None:
    ns, wid, sid = world.ns, world.wid, world.sid
    hist = f"{NSP}/{ns}/workflows/{wid}/history"
    cases: list[tuple[str, str, Any, Any]] = [
        ("GET", f"{hist}?reverse=maybe", None, 400),
        ("GET", f"{hist}?reverse=yes", None, 400),
        ("GET", f"{hist}?after=-1", None, 400),
        ("GET", f"{hist}?after=abc", None, 400),
        ("GET", f"{hist}?reverse=TRUE", None, 200),
        ("GET", f"{hist}?reverse=0&after=1", None, 200),
        ("GET", f"{NSP}/{ns}/workflows?query=" + quote("WorkflowType = "), None, 400),
        ("GET", f"{NSP}/{ns}/dead-letters?query=" + quote("Nope = 1"), None, 400),
        ("GET", f"{NSP}/{ns}/schedules/{sid}/matching-times?from=x", None, 400),
        ("GET", f"{NSP}/{ns}/schedules/{sid}/matching-times?to=2026-13-01T00:00:00Z", None, 400),
        ("GET", f"{NSP}/{ns}/schedules/{sid}/matching-times?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
         None, 400),
        ("GET", f"{NSP}/{ns}/schedules/{sid}/matching-times?from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z",
         None, 200),
    ]
    cases += [
        (m, path_of(r, world.params()) + "?runId=zz", {} if m == "POST" else None, 400)
        for r in ROUTES if (m := r.method, r.template) in RUN_ID
    ]
    cases += [
        (m, path_of(r, world.params()) + "?runId=" + "A" * 32, {} if m == "POST" else None, 400)
        for r in ROUTES if (m := r.method, r.template) in RUN_ID
    ]
    check_all(api, cases)


def test_upsert_flag_is_validated(api: Api, world: World) -> None:
    sid = f"ups-{uuid.uuid4().hex[:6]}"
    body = {"scheduleId": sid, "spec": {"interval": ["1h"]}, "action": {"workflowType": {"name": "Job"}}}
    for bad in ("maybe", "yes", "2", "on"):
        s, b, _ = api.call("POST", f"{NSP}/{world.ns}/schedules?upsert={bad}", body)
        assert s == 400 and b["code"] == "invalid_argument", (bad, s, b)
    s, _, _ = api.call("GET", f"{NSP}/{world.ns}/schedules/{sid}")
    assert s == 404, "a rejected create must not create the schedule"


# ---------------------------------------------------------------------------
# oversized bodies


def _raw_exchange(api: Api, head: bytes, chunks: Iterator[bytes]) -> tuple[int, dict[str, str], Any]:
    sock = socket.create_connection((api.host, api.port), timeout=15)
    try:
        sock.sendall(head)
        try:
            for c in chunks:
                sock.sendall(c)
        except OSError:
            pass  # the server may answer and close before the body is all sent
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = sock.recv(65536)
            if not d:
                break
            buf += d
        head_raw, _, rest = buf.partition(b"\r\n\r\n")
        lines = head_raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        n = int(hdrs.get("content-length", "0"))
        while len(rest) < n:
            d = sock.recv(65536)
            if not d:
                break
            rest += d
        return status, hdrs, _strict_json(rest[:n]) if n else None
    finally:
        sock.close()


def _content_length_body(size: int) -> Iterator[bytes]:
    block = b" " * 65536
    sent = 0
    while sent < size:
        n = min(len(block), size - sent)
        yield block[:n]
        sent += n


def _chunked_body(size: int) -> Iterator[bytes]:
    block = b" " * 65536
    sent = 0
    while sent < size:
        yield f"{len(block):x}\r\n".encode() + block + b"\r\n"
        sent += len(block)
    yield b"0\r\n\r\n"


BODY_ROUTES = [r for r in ROUTES if reads_body(r)]


@pytest.mark.parametrize("route", BODY_ROUTES, ids=route_id)
@pytest.mark.parametrize("mode", ["content-length", "chunked"])
def test_oversized_body_is_413(api: Api, world: World, route: Route, mode: str) -> None:
    path = path_of(route, world.params(victims=True, route=route))
    size = MAX_BODY + 1
    if mode == "content-length":
        head = f"{route.method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
        chunks = _content_length_body(size)
    else:
        head = f"{route.method} {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        chunks = _chunked_body(size)
    status, hdrs, body = _raw_exchange(api, head.encode(), chunks)
    assert status == 413, (status, body)
    assert hdrs["content-type"].startswith("application/json")
    assert hdrs["x-tasks-node"] == "t1"
    assert body["code"] == "too_large" and isinstance(body["message"], str)


def test_body_at_the_limit_is_accepted(api: Api, world: World) -> None:
    prefix, suffix = b'{"workflowType": {"name": "Job"}, "input": "', b'"}'
    raw = prefix + b"x" * (MAX_BODY - len(prefix) - len(suffix) - 2 * 1024 * 1024 - 100) + suffix
    raw = raw[:-1] + b" " * (MAX_BODY - len(raw)) + raw[-1:]
    assert len(raw) == MAX_BODY
    s, b, _ = api.call("POST", f"{NSP}/{world.ns}/workflows", raw=raw)
    assert s == 200 and b["started"] is True


@pytest.mark.parametrize("where", ["start.input", "start.memo", "signal.payload", "sws.signalPayload",
                                   "schedule.action.input"])
def test_payload_over_max_payload_is_413(api: Api, world: World, where: str) -> None:
    big = "x" * (2 * 1024 * 1024 + 16)
    ns = world.ns
    path, body = {
        "start.input": (f"{NSP}/{ns}/workflows", {"workflowType": "Job", "input": big}),
        "start.memo": (f"{NSP}/{ns}/workflows", {"workflowType": "Job", "memo": {"m": big}}),
        "signal.payload": (f"{NSP}/{ns}/workflows/{world.wid}/signal", {"name": "s", "payload": big}),
        "sws.signalPayload": (f"{NSP}/{ns}/workflows/signal-with-start",
                              {"workflowType": "Job", "signalName": "s", "signalPayload": big}),
        "schedule.action.input": (f"{NSP}/{ns}/schedules", {"scheduleId": "big", "spec": {"interval": ["1h"]},
                                                            "action": {"workflowType": "Job", "input": big}}),
    }[where]
    s, b, h = api.call("POST", path, body)
    assert problem(s, b, h, 413) is None, (s, b)
    assert b["code"] == "too_large"


# ---------------------------------------------------------------------------
# unknown routes and wrong methods


@pytest.mark.parametrize("path", [
    "/nope", "/v1", "/v1/tasks", "/v1/tasks/nope", "/v1/tasks/namespaces/x/nope",
    "/v1/tasks/namespaces/x/workflows/y/nope", "/v1/tasks/namespaces/x/workflows/y/history/extra",
    "/v1/tasks/namespaces/x/schedules/y/z/w", "//healthz", "/v1//tasks/health", "/healthz/x", "/%ff",
    "/v1/tasks/namespaces/x/workflows/y/history%2Fextra",
])
def test_unknown_routes_are_404(api: Api, path: str) -> None:
    for method in ("GET", "POST", "DELETE"):
        s, b, h = api.call(method, path, {} if method == "POST" else None)
        if path == "/%ff":
            assert problem(s, b, h, {400, 404}) is None, (method, s, b)
            continue
        assert problem(s, b, h, 404) is None, (method, path, s, b)
        assert b["code"] == "not_found"


def _allowed_for(path: str) -> set[str]:
    """The methods of every route template that matches this concrete path (computed here, not by the server)."""
    segs = path.strip("/").split("/")
    out = set()
    for r in ROUTES:
        if len(r.parts) == len(segs) and all(p.startswith("{") or p == s for p, s in zip(r.parts, segs, strict=True)):
            out.add(r.method)
    return out


@pytest.mark.parametrize("template", sorted({r.template for r in ROUTES}))
def test_wrong_methods_are_405_with_allow(api: Api, world: World, template: str) -> None:
    route = next(r for r in ROUTES if r.template == template)
    path = path_of(route, world.params(victims=True, route=route))
    allowed = _allowed_for(path)
    assert route.method in allowed
    failures = []
    for method in (*METHODS, "OPTIONS"):
        if method in allowed:
            continue
        s, b, h = api.call(method, path, raw=b"{}" if method in ("POST", "PUT", "PATCH") else None)
        why = problem(s, b, h, 405)
        if why is None:
            if b.get("code") != "method_not_allowed":
                why = f"code {b.get('code')}"
            elif {m.strip() for m in h.get("Allow", "").split(",")} != allowed:
                why = f"Allow {h.get('Allow')!r} != {sorted(allowed)}"
        if why:
            failures.append(f"{method} {path}: {why}")
    assert not failures, failures


# ---------------------------------------------------------------------------
# random bodies (hypothesis)

FIELDS = [
    "workflowId", "runId", "workflowType", "taskQueue", "name", "input", "payload", "requestId",
    "workflowIdConflictPolicy", "workflowExecutionTimeout", "workflowRunTimeout", "workflowTaskTimeout",
    "retryPolicy", "initialInterval", "backoffCoefficient", "maximumInterval", "maximumAttempts",
    "nonRetryableErrorTypes", "memo", "searchAttributes", "identity", "signalName", "signalPayload",
    "signalInput", "eventId", "reason", "scheduleId", "spec", "cronString", "interval", "phase", "timezone",
    "startTime", "endTime", "jitter", "action", "policies", "overlapPolicy", "catchupWindow", "pauseOnFailure",
    "state", "paused", "note", "limitedActions", "remainingActions", "Attr",
]
PLAUSIBLE = [
    "", "Job", "1s", "0s", "-1s", "10m", "1h", "500ms", "1.5s", "1d", "* * * * *", "*/5 * * * * *", "@every 1s",
    "@daily", "CRON_TZ=Europe/Berlin 0 9 * * MON-FRI", "TZ=Nope 0 0 * * *", "..", ".", "a/b", "SKIP",
    "ALLOW_ALL", "BUFFER_ALL", "USE_EXISTING", "TERMINATE_EXISTING", "2026-01-01T00:00:00Z", "2026-13-01", "UTC",
    "wf-1", "x" * 300, "0" * 32, "\u0000", "\u007f", "\u0085", "é", "😀",
]
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(PLAUSIBLE) | _text
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | _text, inner, max_size=5),
    max_leaves=16,
)
_bodies = st.dictionaries(st.sampled_from(FIELDS), _values, max_size=8)
_targets = st.sampled_from(["start", "signal", "schedule", "reset"])


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_bodies, target=_targets)
def test_random_bodies_never_5xx(api: Api, world: World, body: dict, target: str) -> None:
    ns = world.ns
    path = {
        "start": f"{NSP}/{ns}/workflows",
        "signal": f"{NSP}/{ns}/workflows/{world.wid}/signal",
        "schedule": f"{NSP}/{ns}/schedules",
        "reset": f"{NSP}/{ns}/workflows/wf-2/reset",
    }[target]
    s, b, h = api.call("POST", path, body)
    why = problem(s, b, h, None)
    assert why is None, f"POST {path} {json.dumps(body)[:300]}: {why}"
    if s == 200:
        assert isinstance(b, dict)


# ---------------------------------------------------------------------------
# regressions of server bugs found by these tests (fixed)


def _forged_token(kind: str, bound: str, cursor: bytes) -> str:
    """A token with a well-formed envelope (the binding is not secret) but a cursor the server never made."""
    return make_token(kind, bound, cursor)


def test_forged_page_token_cursor_is_400(api: Api, world: World) -> None:
    ns, wid = world.ns, world.wid
    rid = api.ok("GET", f"{NSP}/{ns}/workflows/{wid}")["workflowExecutionInfo"]["execution"]["runId"]
    cases = []
    for cursor in (b"abc", b"\xff\xff", b"", b"-5"):
        t1 = _forged_token("executions", f"_/{ns}/{wid}", cursor)
        t2 = _forged_token("history", f"_/{ns}/{rid}/0", cursor)
        if t1:
            cases.append(("GET", f"{NSP}/{ns}/workflows/{wid}/executions?nextPageToken={t1}", None, {200, 400}))
        if t2:
            cases.append(("GET", f"{NSP}/{ns}/workflows/{wid}/history?nextPageToken={t2}", None, {200, 400}))
        t3 = _forged_token("activities", f"_/{ns}", cursor + b"\xfe")  # not UTF-8: was a 500
        cases.append(("GET", f"{NSP}/{ns}/activities?nextPageToken={t3}", None, {200, 400}))
    raw = base64.urlsafe_b64encode(msgpack.packb([1, b"\x00" * 8, "not-bytes"])).rstrip(b"=").decode()
    cases.append(("GET", f"{NSP}/{ns}/workflows/{wid}/history?nextPageToken={raw}", None, 400))
    check_all(api, cases)


def test_reverse_history_with_huge_after(inproc_node) -> None:
    # A node of its own: today this request blocks its node for a long time.
    node = inproc_node
    api = Api(node)
    api.ok("POST", f"{NSP}/default/workflows", {"workflowType": "Job", "workflowId": "h"})
    base = f"{NSP}/default/workflows/h/history?reverse=true&after="
    for after in (2**32 + 1, 10**30, 2**32 - 1):
        s, b, h = api.call("GET", f"{base}{after}", timeout=3.0)
        assert problem(s, b, h, {200, 400}) is None, (after, s, b)
        if s == 200:
            assert [e["eventId"] for e in b["events"]] == [2, 1]
    assert api.call("GET", "/healthz", timeout=2.0)[0] == 200


def test_lone_surrogates_in_payloads_are_400(api: Api, world: World) -> None:
    ns = world.ns
    cases = [
        ("POST", f"{NSP}/{ns}/workflows", b'{"workflowType":"Job","input":"\\ud800"}', 400),
        ("POST", f"{NSP}/{ns}/workflows", b'{"workflowType":"Job","input":{"\\udc00":1}}', 400),
        ("POST", f"{NSP}/{ns}/workflows", b'{"workflowType":"Job","memo":{"a":"\\ud800"}}', 400),
        ("POST", f"{NSP}/{ns}/workflows/{world.wid}/signal", b'{"name":"s","payload":"\\ud800"}', 400),
        ("POST", f"{NSP}/{ns}/workflows/signal-with-start",
         b'{"workflowType":"Job","signalName":"s","signalPayload":"\\ud800"}', 400),
        ("POST", f"{NSP}/{ns}/schedules",
         b'{"scheduleId":"sur","spec":{"interval":["1h"]},"action":{"workflowType":"Job","input":"\\ud800"}}', 400),
    ]
    check_all(api, cases)


def test_overflowing_number_literal_is_400(api: Api, world: World) -> None:
    ns = world.ns
    for raw in (b'{"workflowType":"Job","input":1e400}', b'{"workflowType":"Job","input":[-1e999]}',
                b'{"workflowType":"Job","retryPolicy":{"backoffCoefficient":1e400}}'):
        s, b, h = api.call("POST", f"{NSP}/{ns}/workflows", raw=raw)  # _strict_json raises on `Infinity`
        assert problem(s, b, h, 400) is None, (raw, s, b)


def test_reset_event_id_unicode_digit_string_is_400(api: Api, world: World) -> None:
    check_all(api, [("POST", f"{NSP}/{world.ns}/workflows/wf-2/reset", {"eventId": "²"}, 400)])


def test_wrong_methods_on_metrics_and_readyz_are_405(api: Api) -> None:
    failures = []
    for path in ("/metrics", "/readyz"):
        for method in ("POST", "DELETE", "PUT"):
            s, b, h = api.call(method, path, raw=b"{}" if method != "DELETE" else None)
            why = problem(s, b, h, 405) or (None if h.get("Allow") == "GET" else f"Allow {h.get('Allow')!r}")
            if why:
                failures.append(f"{method} {path}: {why}")
    assert not failures, failures


# ---------------------------------------------------------------------------
# after all of the above: still alive and still working


def test_zz_node_still_healthy_and_serving(api: Api, world: World) -> None:
    assert api.node.alive, "the node died"
    s, b, _ = api.call("GET", "/healthz")
    assert s == 200 and b["status"] == "ok"
    r = api.ok("POST", f"{NSP}/{world.ns}/workflows", {"workflowType": {"name": "AfterAll"}, "input": [1]})
    assert r["started"] is True and r["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"
    d = api.ok("GET", f"{NSP}/{world.ns}/workflows/{r['execution']['workflowId']}")
    assert d["workflowExecutionInfo"]["input"] == [1]
    assert api.ok("GET", f"{NSP}/{world.ns}/workflows/{world.wid}")["workflowExecutionInfo"]["status"] == (
        "WORKFLOW_EXECUTION_STATUS_RUNNING")
