"""The HTTP API of one real node, as a user drives it (SPEC §4, §5).

The node runs in this process (``hanzo_tasks.testing``: real HTTP, real LMDB).
One node serves the whole module: every test works on its own ids (and its own
namespace where a list must be exact), so the tests do not see each other.
Waits on schedule fires poll with a deadline; nothing sleeps a fixed long time:
the schedule test has a node of its own whose clock it advances.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hanzo_tasks.testing import TestNode

from tests.cluster.inproc import start_test_node

TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
FIRED = re.compile(r"^(?P<sid>.+)-(?P<t>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})Z(?:-(?P<n>\d+))?$")
RUNNING = "WORKFLOW_EXECUTION_STATUS_RUNNING"
NSP = "/v1/tasks/namespaces"


# ---------------------------------------------------------------------------
# plumbing


class Api:
    """A tiny raw client: the path is sent exactly as written."""

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
        ctype = resp.headers.get("Content-Type", "")
        parsed: Any = payload
        if ctype.startswith("application/json") and payload:
            parsed = json.loads(payload)
        elif ctype.startswith("text/"):
            parsed = payload.decode()
        return resp.status, parsed, resp.headers

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        s, b, _ = self.call(method, path, body)
        assert s == status, f"{method} {path} -> {s} {b}"
        return b

    def err(self, method: str, path: str, body: Any = None, *, status: int, code: str | None = None) -> dict:
        s, b, h = self.call(method, path, body)
        assert s == status, f"{method} {path} -> {s} {b}"
        assert h.get("Content-Type", "").startswith("application/json")
        assert isinstance(b, dict) and isinstance(b.get("code"), str) and isinstance(b.get("message"), str), b
        if code is not None:
            assert b["code"] == code, b
        return b

    def get(self, path: str) -> Any:
        return self.ok("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.ok("POST", path, {} if body is None else body)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    node = start_test_node(tmp_path_factory.mktemp("http_api") / "n1")
    try:
        yield Api(node)
    finally:
        node.stop()


@pytest.fixture
def own_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A node of the test's own, for a test that advances the node's clock."""
    node = start_test_node(tmp_path_factory.mktemp("http_api_own") / "n1")
    try:
        yield Api(node)
    finally:
        node.stop()


def uid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def ns(api: Api) -> str:
    """A namespace shared by the tests that only touch their own ids."""
    name = uid("api")
    api.post(NSP, {"namespaceInfo": {"name": name}})
    return name


@pytest.fixture
def fresh_ns(api: Api) -> str:
    """A namespace of its own, for tests whose lists must be exact."""
    name = uid("own")
    api.post(NSP, {"namespaceInfo": {"name": name}})
    return name


def wf(ns: str, *rest: str) -> str:
    return "/".join([f"{NSP}/{ns}/workflows", *(quote(r, safe="") for r in rest)])


def sc(ns: str, *rest: str) -> str:
    return "/".join([f"{NSP}/{ns}/schedules", *(quote(r, safe="") for r in rest)])


def start(api: Api, ns: str, wtype: str = "Job", **body: Any) -> dict:
    body = {"workflowType": {"name": wtype}, **body}
    out = api.post(wf(ns), body)
    return out


def events(api: Api, ns: str, wid: str, run_id: str | None = None) -> list[dict]:
    q = f"?runId={run_id}" if run_id else ""
    out = api.get(wf(ns, wid, "history") + q)
    assert out["nextPageToken"] == ""
    return out["events"]


def types(evs: list[dict]) -> list[str]:
    return [e["eventType"] for e in evs]


def list_ids(api: Api, ns: str, query: str | None = None) -> list[str]:
    path = wf(ns) + "?pageSize=1000"
    if query is not None:
        path += "&query=" + quote(query, safe="")
    out = api.get(path)
    assert out["nextPageToken"] == ""
    return [e["execution"]["workflowId"] for e in out["executions"]]


def all_pages(api: Api, path: str, key: str, size: int) -> list[list[Any]]:
    """Follow nextPageToken to the end; returns the pages."""
    pages: list[list[Any]] = []
    token = ""
    sep = "&" if "?" in path else "?"
    for _ in range(1000):
        url = f"{path}{sep}pageSize={size}"
        if token:
            url += "&nextPageToken=" + quote(token, safe="")
        out = api.get(url)
        assert isinstance(out["nextPageToken"], str)
        pages.append(out[key])
        token = out["nextPageToken"]
        if not token:
            return pages
    raise AssertionError("paging never ended")


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def advancing(api: Api, pred: Callable[[], Any], step: float = 0.5) -> Callable[[], Any]:
    """``pred`` after moving the node's clock ``step`` s on: a wait on timers that does not sleep them out."""
    def check() -> Any:
        api.node.clock.advance(step)
        return pred()
    return check


def parse_ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------
# service routes (§4.2, §4.9, §5.14, §11)


def test_health_routes(api: Api) -> None:
    expected = {"service": "tasks", "status": "ok", "nodeId": "t1", "namespace": "default"}
    assert api.get("/healthz") == expected
    assert api.get("/v1/tasks/health") == expected
    assert api.get("/readyz") == {"status": "ready", "nodeId": "t1"}


def test_settings(api: Api) -> None:
    s = api.get("/v1/tasks/settings")
    assert isinstance(s["version"], str) and s["version"]
    assert s["nodeId"] == "t1"
    assert s["authRequired"] is False
    assert s["archivalEnabled"] is False and s["visibilityArchivalEnabled"] is False
    assert (s["namespaceWriteDisabled"], s["advancedVisibilityEnabled"], s["workerHeartbeatsEnabled"],
            s["codecEndpointsEnabled"], s["multiClusterEnabled"]) == (False, True, True, False, False)
    caps = s["capabilities"]
    for k in ("signalAndQueryHeader", "internalErrorDifferentiation", "activityFailureIncludeHeartbeat",
              "supportsSchedules", "encodedFailureAttributes", "upsertMemo", "sdkMetadata",
              "countGroupByExecutionStatus"):
        assert caps[k] is True, k
    assert caps["eagerWorkflowStart"] is False


def test_metrics_text_and_route_labels(api: Api, ns: str) -> None:
    w = start(api, ns, workflowId=uid("metric"))
    api.get(wf(ns, w["execution"]["workflowId"]))
    s, text, h = api.call("GET", "/metrics")
    assert s == 200
    assert h["Content-Type"].startswith("text/plain")
    assert "tasks_http_requests_total" in text
    assert re.search(r'^tasks_build_info\{version="[^"]+"\} 1(\.0)?$', text, re.M)
    # Labels carry the route template, never ids (SPEC §11).
    assert re.search(
        r'^tasks_http_requests_total\{[^}]*route="/v1/tasks/namespaces/\{ns\}/workflows/\{id\}"[^}]*\} \d',
        text, re.M,
    )
    assert w["execution"]["workflowId"] not in text


@pytest.mark.parametrize(
    "method,path,status",
    [
        ("GET", "/healthz", 200),
        ("GET", "/readyz", 200),
        ("GET", "/metrics", 200),
        ("GET", "/v1/tasks/settings", 200),
        ("GET", "/v1/tasks/cluster/health", 200),
        ("GET", f"{NSP}/default", 200),
        ("GET", f"{NSP}/no-such-ns", 404),
        ("GET", "/no/such/route", 404),
        ("DELETE", "/healthz", 405),
        ("POST", f"{NSP}/default/workflows", 400),
    ],
)
def test_every_response_names_the_node(api: Api, method: str, path: str, status: int) -> None:
    s, _, h = api.call(method, path, {} if method == "POST" else None)
    assert s == status
    assert h["X-Tasks-Node"] == "t1"


def test_cluster_local_mode_shape(api: Api, ns: str) -> None:
    c = api.get("/v1/tasks/cluster")
    assert c["nodeId"] == "t1" and c["replicator"] == "local"
    assert isinstance(c["version"], str) and c["version"]
    assert c["metaLeader"] == "t1"
    assert c["partitionCount"] == 1
    (member,) = c["members"]
    assert member["nodeId"] == "t1" and member["state"] == "alive" and member["voter"] is True
    assert member["httpAddr"] == api.node.url.removeprefix("http://")
    (part,) = c["partitions"]
    assert part["id"] == 0 and part["local"] is True and part["leader"] == "t1"
    assert part["replicas"] == ["t1"]
    assert isinstance(part["appliedIndex"], int) and part["appliedIndex"] >= 1
    assert part["shards"] >= 1
    assert {"org", "namespace", "partition", "pinned", "fenced", "placementEpoch"} <= set(c["namespaces"][0])
    assert set(c["stats"]) >= {
        "partitionsLocal", "partitionsLeading", "taskQueuesOwned", "proposals", "proposalErrors",
        "forwarded", "zapConnections", "subscriptions", "sseSubscribers", "uptimeSeconds",
    }
    # namespaces[] is paged like every list.
    pages = all_pages(api, "/v1/tasks/cluster", "namespaces", 1)
    names = [n["namespace"] for p in pages for n in p]
    assert ns in names and len(names) == len(set(names)) == part["shards"]
    assert all(len(p) == 1 for p in pages)
    assert api.get("/v1/tasks/cluster/health") == {"status": "ok", "nodeId": "t1", "groups": 1}


# ---------------------------------------------------------------------------
# namespaces (§4.3, §5.10)


def test_default_namespace_exists_implicitly(api: Api) -> None:
    d = api.get(f"{NSP}/default")
    assert d["namespaceInfo"]["name"] == "default"
    assert d["namespaceInfo"]["state"] == "NAMESPACE_STATE_REGISTERED"
    assert d["isActive"] is True


def test_namespace_create_defaults_and_conflict(api: Api) -> None:
    name = uid("ns")
    created = api.post(NSP, {"namespaceInfo": {"name": name, "description": "first"}})
    info, cfg = created["namespaceInfo"], created["config"]
    assert info["name"] == name
    assert info["state"] == "NAMESPACE_STATE_REGISTERED"
    assert info["description"] == "first"
    assert info["region"] == "embedded"
    assert TS.match(info["createTime"])
    assert cfg["workflowExecutionRetentionTtl"] == "720h"
    assert cfg["apsLimit"] == 400
    assert created["isActive"] is True
    assert api.get(f"{NSP}/{name}") == created
    api.err("POST", NSP, {"namespaceInfo": {"name": name}}, status=409, code="already_exists")
    # Server-owned fields are ignored on create.
    other = uid("ns")
    r = api.post(NSP, {"namespaceInfo": {"name": other, "state": "NAMESPACE_STATE_DELETED"}, "isActive": False})
    assert r["namespaceInfo"]["state"] == "NAMESPACE_STATE_REGISTERED" and r["isActive"] is True


def test_namespace_create_with_config(api: Api) -> None:
    name = uid("ns")
    r = api.post(NSP, {"namespaceInfo": {"name": name},
                       "config": {"workflowExecutionRetentionTtl": "24h", "apsLimit": 0}})
    assert r["config"]["workflowExecutionRetentionTtl"] == "24h"
    assert r["config"]["apsLimit"] == 0


def test_unknown_namespace_is_404(api: Api) -> None:
    missing = uid("missing")
    api.err("GET", f"{NSP}/{missing}", status=404, code="not_found")
    api.err("POST", wf(missing), {"workflowType": {"name": "X"}}, status=404, code="not_found")
    api.err("GET", wf(missing), status=404, code="not_found")
    api.err("GET", sc(missing), status=404, code="not_found")
    api.err("DELETE", f"{NSP}/{missing}", status=404, code="not_found")
    api.err("POST", f"{NSP}/{missing}/metadata", {"description": "x"}, status=404, code="not_found")


def test_namespace_metadata_update(api: Api) -> None:
    name = uid("ns")
    api.post(NSP, {"namespaceInfo": {"name": name}})
    r = api.post(f"{NSP}/{name}/metadata", {"retention": "48h", "description": "orders"})
    assert r["config"]["workflowExecutionRetentionTtl"] == "48h"
    assert r["namespaceInfo"]["description"] == "orders"
    assert TS.match(r["namespaceInfo"]["updateTime"])
    # Absent fields are kept.
    r2 = api.post(f"{NSP}/{name}/metadata", {"apsLimit": 50})
    assert r2["namespaceInfo"]["description"] == "orders"
    assert r2["config"]["workflowExecutionRetentionTtl"] == "48h"
    assert r2["config"]["apsLimit"] == 50
    assert api.get(f"{NSP}/{name}") == r2
    api.err("POST", f"{NSP}/{name}/metadata", {"retention": "1d"}, status=400, code="invalid_argument")
    api.err("POST", f"{NSP}/{name}/metadata", {"retention": "500ms"}, status=400, code="invalid_argument")


def test_namespace_delete_refuses_new_work(api: Api) -> None:
    name = uid("ns")
    api.post(NSP, {"namespaceInfo": {"name": name}})
    w = start(api, name, workflowId="before-delete")
    api.post(sc(name), {"scheduleId": "s1", "spec": {"interval": [{"interval": "1h"}]},
                        "action": {"workflowType": {"name": "X"}}})
    d = api.ok("DELETE", f"{NSP}/{name}")
    assert d["namespaceInfo"]["state"] == "NAMESPACE_STATE_DELETED"
    assert d["isActive"] is False
    got = api.get(f"{NSP}/{name}")
    assert got["namespaceInfo"]["state"] == "NAMESPACE_STATE_DELETED" and got["isActive"] is False
    for method, path, body in [
        ("POST", wf(name), {"workflowType": {"name": "X"}}),
        ("POST", wf(name, "signal-with-start"), {"workflowType": {"name": "X"}, "signalName": "s"}),
        ("POST", sc(name), {"scheduleId": "s2", "spec": {"interval": ["1h"]},
                            "action": {"workflowType": {"name": "X"}}}),
        ("POST", sc(name, "s1"), {"spec": {"interval": ["2h"]}, "action": {"workflowType": {"name": "X"}}}),
        ("POST", sc(name, "s1", "trigger"), {}),
    ]:
        b = api.err(method, path, body, status=409, code="failed_precondition")
        assert "deleted" in b["message"]
    # Still registered (not purged): the name cannot be taken again yet.
    api.err("POST", NSP, {"namespaceInfo": {"name": name}}, status=409, code="already_exists")
    # Signal, terminate and reads still work.
    wid = w["execution"]["workflowId"]
    assert api.post(wf(name, wid, "signal"), {"name": "late"}) == {"status": "signaled"}
    t = api.post(wf(name, wid, "terminate"), {"reason": "cleanup"})
    assert t["status"] == "WORKFLOW_EXECUTION_STATUS_TERMINATED"
    assert list_ids(api, name) == [wid]


def test_namespace_list_paging(api: Api) -> None:
    mine = sorted(f"pg-{uuid.uuid4().hex[:8]}-{i}" for i in range(5))
    for n in mine:
        api.post(NSP, {"namespaceInfo": {"name": n}})
    pages = all_pages(api, NSP, "namespaces", 2)
    names = [n["namespaceInfo"]["name"] for p in pages for n in p]
    assert set(mine) <= set(names)
    assert "default" in names
    assert names == sorted(names), "namespaces are listed by name"
    assert len(names) == len(set(names))
    assert all(len(p) == 2 for p in pages[:-1]) and 1 <= len(pages[-1]) <= 2
    total = len(names)
    # A full last page carries "" and is not followed by an empty one.
    (only,) = all_pages(api, NSP, "namespaces", total)
    assert len(only) == total
    two = all_pages(api, NSP, "namespaces", total - 1)
    assert [len(p) for p in two] == [total - 1, 1]


# ---------------------------------------------------------------------------
# workflows: start, conflicts, describe (§4.4, §5.3)


def test_start_generates_id_and_first_events(api: Api, ns: str) -> None:
    r = start(api, ns, "Charge-Card", input={"amount": 5})
    wid, rid = r["execution"]["workflowId"], r["execution"]["runId"]
    assert HEX32.match(rid)
    assert re.fullmatch(r"charge-card-[0-9a-f]{8}", wid) and wid.endswith(rid[:8])
    assert r["started"] is True
    assert r["status"] == RUNNING
    assert r["type"] == {"name": "Charge-Card"}
    assert r["taskQueue"] == "default"
    assert r["historyLength"] == 2 and r["attempt"] == 1
    assert r["workflowTaskTimeout"] == "10s"
    assert TS.match(r["startTime"]) and "closeTime" not in r
    evs = events(api, ns, wid)
    assert types(evs) == ["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_TASK_SCHEDULED"]
    assert [e["eventId"] for e in evs] == [1, 2]
    assert all(TS.match(e["eventTime"]) for e in evs)
    started = evs[0]["attributes"]
    assert started["workflowType"] == {"name": "Charge-Card"}
    assert started["taskQueue"] == {"name": "default"}
    assert started["input"] == {"amount": 5}
    assert started["attempt"] == 1
    sched = evs[1]["attributes"]
    assert sched["taskQueue"] == {"name": "default"} and sched["startToCloseTimeout"] == "10s"


def test_start_options_round_trip(api: Api, ns: str) -> None:
    wid = uid("opts")
    r = start(api, ns, "Opts", workflowId=wid, taskQueue={"name": "emails"}, workflowTaskTimeout="30s",
              workflowExecutionTimeout="1h30m", memo={"k": "v"},
              retryPolicy={"initialInterval": "2s", "maximumAttempts": 3})
    assert r["workflowTaskTimeout"] == "30s" and r["workflowExecutionTimeout"] == "1h30m"
    assert r["retryPolicy"] == {"initialInterval": "2s", "backoffCoefficient": 2.0, "maximumInterval": "3m20s",
                                "maximumAttempts": 3, "nonRetryableErrorTypes": []}
    d = api.get(wf(ns, wid))
    info, cfg = d["workflowExecutionInfo"], d["executionConfig"]
    assert info["memo"] == {"k": "v"} and info["taskQueue"] == "emails"
    assert cfg["taskQueue"] == {"name": "emails"}
    assert cfg["workflowTaskTimeout"] == "30s" and cfg["workflowExecutionTimeout"] == "1h30m"
    assert cfg["retryPolicy"]["maximumAttempts"] == 3
    assert d["pendingActivities"] == []
    pwt = d["pendingWorkflowTask"]
    assert pwt["state"] == "WORKFLOW_TASK_STATE_SCHEDULED" and pwt["attempt"] == 1 and TS.match(pwt["scheduledTime"])
    # A bare string is accepted for workflowType and taskQueue.
    r2 = api.post(wf(ns), {"workflowType": "Bare", "taskQueue": "q2"})
    assert r2["type"] == {"name": "Bare"} and r2["taskQueue"] == "q2"


@pytest.mark.parametrize("body", [
    {"workflowTaskTimeout": "500ms"},
    {"workflowTaskTimeout": "11m"},
    {"workflowTaskTimeout": 10},
    {"workflowExecutionTimeout": "1d"},
    {"runId": "ABC"},
    {"workflowIdConflictPolicy": "sometimes"},
    {"retryPolicy": {"backoffCoefficient": 0.5}},
    {"retryPolicy": {"initialInterval": "10s", "maximumInterval": "1s"}},
    {"workflowId": "a/b"},
    {"workflowId": ".."},
    {"requestId": "has space"},
])
def test_start_rejects_invalid_fields(api: Api, ns: str, body: dict) -> None:
    api.err("POST", wf(ns), {"workflowType": {"name": "X"}, **body}, status=400, code="invalid_argument")


def test_start_requires_type(api: Api, ns: str) -> None:
    api.err("POST", wf(ns), {}, status=400, code="invalid_argument")
    api.err("POST", wf(ns), {"workflowType": {"name": ""}}, status=400, code="invalid_argument")


def test_start_with_explicit_run_id(api: Api, ns: str) -> None:
    rid = uuid.uuid4().hex
    r = start(api, ns, workflowId=uid("rid"), runId=rid)
    assert r["execution"]["runId"] == rid
    b = api.err("POST", wf(ns), {"workflowType": {"name": "Job"}, "workflowId": uid("rid"), "runId": rid},
                status=409)
    assert b["code"] == "already_exists"


def test_request_id_idempotency(api: Api, ns: str) -> None:
    req = uuid.uuid4().hex
    first = start(api, ns, requestId=req)
    again = start(api, ns, requestId=req)
    assert again["execution"] == first["execution"]
    assert again["started"] is False and first["started"] is True
    # Whatever the workflowId: the request id names the run ...
    same = start(api, ns, requestId=req, workflowId=first["execution"]["workflowId"])
    assert same["execution"] == first["execution"] and same["started"] is False
    # ... and naming a different workflow explicitly is an error.
    api.err("POST", wf(ns), {"workflowType": {"name": "Job"}, "requestId": req, "workflowId": uid("other")},
            status=400, code="invalid_argument")
    assert len(api.get(wf(ns, first["execution"]["workflowId"], "executions"))["executions"]) == 1


def test_concurrent_retries_make_exactly_one_run(api: Api, ns: str) -> None:
    req, wid = uuid.uuid4().hex, uid("conc")
    with ThreadPoolExecutor(12) as pool:
        by_req = list(pool.map(lambda _: api.call("POST", wf(ns), {"workflowType": "C", "requestId": req}),
                               range(12)))
        by_id = list(pool.map(lambda _: api.call("POST", wf(ns), {"workflowType": "C", "workflowId": wid}),
                              range(12)))
        sws = list(pool.map(lambda _: api.call("POST", wf(ns, "signal-with-start"),
                                               {"workflowType": "C", "workflowId": wid + "-s", "signalName": "x"}),
                            range(12)))
    assert {s for s, _, _ in by_req} == {200}
    assert len({b["execution"]["runId"] for _, b, _ in by_req}) == 1
    assert sum(b["started"] for _, b, _ in by_req) == 1
    assert sorted(s for s, _, _ in by_id) == [200] + [409] * 11
    assert all(b["code"] == "already_started" for s, b, _ in by_id if s == 409)
    assert {s for s, _, _ in sws} == {200} and sum(b["started"] for _, b, _ in sws) == 1
    evs = events(api, ns, wid + "-s")
    assert types(evs).count("WORKFLOW_EXECUTION_SIGNALED") == 12
    assert types(evs).count("WORKFLOW_EXECUTION_STARTED") == 1


def test_conflict_policy_fail_is_default(api: Api, ns: str) -> None:
    wid = uid("dup")
    first = start(api, ns, workflowId=wid)
    b = api.err("POST", wf(ns), {"workflowType": {"name": "Job"}, "workflowId": wid},
                status=409, code="already_started")
    assert b["details"] == {"workflowId": wid, "runId": first["execution"]["runId"]}
    b2 = api.err("POST", wf(ns), {"workflowType": {"name": "Job"}, "workflowId": wid,
                                  "workflowIdConflictPolicy": "WORKFLOW_ID_CONFLICT_POLICY_FAIL"}, status=409)
    assert b2["code"] == "already_started"


def test_conflict_policy_use_existing(api: Api, ns: str) -> None:
    wid = uid("use")
    first = start(api, ns, workflowId=wid)
    for policy in ("USE_EXISTING", "use_existing", "WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING"):
        r = start(api, ns, workflowId=wid, workflowIdConflictPolicy=policy)
        assert r["started"] is False
        assert r["execution"] == first["execution"]


def test_conflict_policy_terminate_existing(api: Api, ns: str) -> None:
    wid = uid("term")
    old = start(api, ns, workflowId=wid)["execution"]["runId"]
    new = start(api, ns, workflowId=wid, workflowIdConflictPolicy="Terminate_Existing")
    assert new["started"] is True
    assert new["execution"]["runId"] != old
    old_desc = api.get(wf(ns, wid) + f"?runId={old}")["workflowExecutionInfo"]
    assert old_desc["status"] == "WORKFLOW_EXECUTION_STATUS_TERMINATED"
    assert TS.match(old_desc["closeTime"])
    last = events(api, ns, wid, old)[-1]
    assert last["eventType"] == "WORKFLOW_EXECUTION_TERMINATED"
    assert last["attributes"]["reason"] == "terminated by new start"
    # Describe without a runId is the latest run; execution.runId is an alias.
    assert api.get(wf(ns, wid))["workflowExecutionInfo"]["execution"]["runId"] == new["execution"]["runId"]
    alias = api.get(wf(ns, wid) + f"?execution.runId={old}")
    assert alias["workflowExecutionInfo"]["execution"]["runId"] == old


def test_closed_runs_never_conflict(api: Api, ns: str) -> None:
    wid = uid("reuse")
    first = start(api, ns, workflowId=wid)
    api.post(wf(ns, wid, "terminate"), {})
    again = start(api, ns, workflowId=wid)
    assert again["started"] is True and again["execution"]["runId"] != first["execution"]["runId"]
    runs = api.get(wf(ns, wid, "executions"))
    assert [r["execution"]["runId"] for r in runs["executions"]] == [
        again["execution"]["runId"], first["execution"]["runId"]]
    assert runs["nextPageToken"] == ""


def test_describe_not_found_and_bad_run_id(api: Api, ns: str) -> None:
    api.err("GET", wf(ns, uid("nope")), status=404, code="not_found")
    wid = start(api, ns, workflowId=uid("d"))["execution"]["workflowId"]
    api.err("GET", wf(ns, wid) + f"?runId={uuid.uuid4().hex}", status=404, code="not_found")
    api.err("GET", wf(ns, wid) + "?runId=not-a-run-id", status=400, code="invalid_argument")


def test_list_omits_input_describe_includes_it(api: Api, fresh_ns: str) -> None:
    wid = uid("in")
    start(api, fresh_ns, workflowId=wid, input={"secret": [1, 2]}, memo={"m": 1})
    (item,) = api.get(wf(fresh_ns))["executions"]
    assert item["execution"]["workflowId"] == wid
    assert "input" not in item and "memo" not in item and "result" not in item
    assert api.get(wf(fresh_ns, wid))["workflowExecutionInfo"]["input"] == {"secret": [1, 2]}


# ---------------------------------------------------------------------------
# listing and visibility (§4.1 paging, §5.11)


def test_list_ordering_newest_first(api: Api, fresh_ns: str) -> None:
    ids = []
    for i in range(4):
        ids.append(start(api, fresh_ns, workflowId=f"order-{i}")["execution"]["workflowId"])
        api.node.clock.advance(0.002)  # distinct start times: two starts in one millisecond tie (then by id)
    got = api.get(wf(fresh_ns))["executions"]
    assert [e["execution"]["workflowId"] for e in got] == list(reversed(ids))
    keys = [(-parse_ts(e["startTime"]), e["execution"]["workflowId"]) for e in got]
    assert keys == sorted(keys)


def test_list_with_visibility_queries(api: Api, fresh_ns: str) -> None:
    a1 = start(api, fresh_ns, "Alpha", workflowId="a1")["execution"]["workflowId"]
    a2 = start(api, fresh_ns, "Alpha", workflowId="a2")["execution"]["workflowId"]
    b1 = start(api, fresh_ns, "Beta", workflowId="b1")["execution"]["workflowId"]
    api.post(wf(fresh_ns, a2, "terminate"), {})

    def q(query: str) -> set[str]:
        return set(list_ids(api, fresh_ns, query))

    assert q("WorkflowType = 'Alpha'") == {a1, a2}
    assert q("ExecutionStatus = 'Running'") == {a1, b1}
    assert q("ExecutionStatus = 'WORKFLOW_EXECUTION_STATUS_TERMINATED'") == {a2}
    assert q("WorkflowType = 'Alpha' AND ExecutionStatus = 'Running'") == {a1}
    assert q("WorkflowType = 'Beta' OR ExecutionStatus = 'Terminated'") == {b1, a2}
    assert q("WorkflowType IN ('Alpha', 'Beta')") == {a1, a2, b1}
    assert q("WorkflowId NOT IN ('a1')") == {a2, b1}
    assert q("NOT (WorkflowType = 'Alpha')") == {b1}
    assert q("WorkflowType = 'Gamma'") == set()
    assert q("") == {a1, a2, b1}
    for bad in ("WorkflowType =", "NoSuchField = 'x'", "(WorkflowType = 'Alpha'", "HistoryLength = 'abc'",
                "ExecutionStatus = 'Sleeping'", "x" * 4097):
        api.err("GET", wf(fresh_ns) + "?query=" + quote(bad, safe=""), status=400, code="invalid_argument")


def test_list_paging(api: Api, fresh_ns: str) -> None:
    ids = {start(api, fresh_ns, workflowId=f"p{i}")["execution"]["workflowId"] for i in range(5)}
    pages = all_pages(api, wf(fresh_ns), "executions", 2)
    assert [len(p) for p in pages] == [2, 2, 1]
    seen = [e["execution"]["workflowId"] for p in pages for e in p]
    assert set(seen) == ids and len(seen) == 5
    # A full last page ends the list.
    assert [len(p) for p in all_pages(api, wf(fresh_ns), "executions", 5)] == [5]
    assert [len(p) for p in all_pages(api, wf(fresh_ns) + "?query=" + quote("WorkflowType = 'Job'"),
                                      "executions", 1)] == [1] * 5
    # A token is bound to its query.
    tok = api.get(wf(fresh_ns) + "?pageSize=2")["nextPageToken"]
    assert tok
    api.err("GET", wf(fresh_ns) + "?pageSize=2&query=" + quote("WorkflowType = 'Job'") + "&nextPageToken=" + tok,
            status=400, code="invalid_argument")


def test_dead_letters_route(api: Api, fresh_ns: str) -> None:
    start(api, fresh_ns)
    assert api.get(f"{NSP}/{fresh_ns}/dead-letters") == {"executions": [], "nextPageToken": ""}
    api.err("GET", f"{NSP}/{uid('missing')}/dead-letters", status=404, code="not_found")


def test_archival_is_constant(api: Api, ns: str) -> None:
    assert api.get(f"{NSP}/{ns}/archival") == {
        "enabled": False, "executions": [], "nextPageToken": "", "error": "archival disabled"}


# ---------------------------------------------------------------------------
# signal, signal-with-start, cancel, terminate (§5.3, §5.4)


def test_signal_appends_event_and_dedups(api: Api, ns: str) -> None:
    wid = start(api, ns, workflowId=uid("sig"))["execution"]["workflowId"]
    assert api.post(wf(ns, wid, "signal"), {"name": "go", "payload": {"n": 1}, "identity": "me",
                                            "requestId": "sig-1"}) == {"status": "signaled"}
    assert api.post(wf(ns, wid, "signal"), {"name": "go", "payload": {"n": 1}, "requestId": "sig-1"}) == {
        "status": "signaled"}
    # `input` is accepted for `payload`.
    api.post(wf(ns, wid, "signal"), {"name": "again", "input": [1, 2]})
    evs = events(api, ns, wid)
    # A workflow task is already scheduled, so signals add nothing else (§5.2).
    assert types(evs) == ["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_TASK_SCHEDULED",
                          "WORKFLOW_EXECUTION_SIGNALED", "WORKFLOW_EXECUTION_SIGNALED"]
    s1, s2 = evs[2]["attributes"], evs[3]["attributes"]
    assert (s1["signalName"], s1["input"], s1["identity"], s1["requestId"]) == ("go", {"n": 1}, "me", "sig-1")
    assert (s2["signalName"], s2["input"]) == ("again", [1, 2])


def test_signal_errors(api: Api, ns: str) -> None:
    wid = start(api, ns, workflowId=uid("sige"))["execution"]["workflowId"]
    api.err("POST", wf(ns, wid, "signal"), {"name": ""}, status=400, code="invalid_argument")
    api.err("POST", wf(ns, wid, "signal"), {}, status=400, code="invalid_argument")
    api.err("POST", wf(ns, uid("none"), "signal"), {"name": "x"}, status=404, code="not_found")
    api.post(wf(ns, wid, "terminate"), {})
    api.err("POST", wf(ns, wid, "signal"), {"name": "x"}, status=409, code="failed_precondition")


def test_signal_with_start_new_run(api: Api, ns: str) -> None:
    wid = uid("sws")
    r = api.post(wf(ns, "signal-with-start"), {"workflowType": {"name": "Sws"}, "workflowId": wid,
                                               "signalName": "hello", "signalPayload": {"x": 1}})
    assert r["started"] is True and r["status"] == RUNNING and r["historyLength"] == 3
    evs = events(api, ns, wid)
    assert types(evs) == ["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_SIGNALED", "WORKFLOW_TASK_SCHEDULED"]
    assert evs[1]["attributes"]["signalName"] == "hello" and evs[1]["attributes"]["input"] == {"x": 1}
    # Existing open run: signaled and returned.
    r2 = api.post(wf(ns, "signal-with-start"), {"workflowType": {"name": "Sws"}, "workflowId": wid,
                                                "signalName": "again", "signalInput": 7})
    assert r2["started"] is False
    assert r2["execution"] == r["execution"]
    assert r2["historyLength"] == 4
    last = events(api, ns, wid)[-1]
    assert last["eventType"] == "WORKFLOW_EXECUTION_SIGNALED" and last["attributes"]["input"] == 7
    api.err("POST", wf(ns, "signal-with-start"), {"workflowType": {"name": "Sws"}, "workflowId": uid("x")},
            status=400, code="invalid_argument")


def test_signal_with_start_honours_request_id(api: Api, ns: str) -> None:
    req = uuid.uuid4().hex
    body = {"workflowType": {"name": "Sws"}, "signalName": "s", "requestId": req}
    first = api.post(wf(ns, "signal-with-start"), body)
    api.post(wf(ns, first["execution"]["workflowId"], "terminate"), {})
    again = api.post(wf(ns, "signal-with-start"), body)
    assert again["started"] is False and again["execution"] == first["execution"]


def test_cancel_without_any_task_started_closes_at_once(api: Api, ns: str) -> None:
    wid = start(api, ns, workflowId=uid("cancel"))["execution"]["workflowId"]
    r = api.post(wf(ns, wid, "cancel"), {"reason": "not needed", "identity": "ops"})
    assert r["status"] == "WORKFLOW_EXECUTION_STATUS_CANCELED"
    assert TS.match(r["closeTime"])
    evs = events(api, ns, wid)
    assert types(evs)[-2:] == ["WORKFLOW_EXECUTION_CANCEL_REQUESTED", "WORKFLOW_EXECUTION_CANCELED"]
    assert evs[-1]["attributes"]["reason"] == "not needed"
    assert evs[-1]["attributes"]["identity"] == "ops"
    assert "pendingWorkflowTask" not in api.get(wf(ns, wid))
    # Cancel on a closed run returns it unchanged.
    again = api.post(wf(ns, wid, "cancel"), {})
    assert again["status"] == r["status"] and again["historyLength"] == r["historyLength"]
    api.err("POST", wf(ns, uid("none"), "cancel"), {}, status=404, code="not_found")


def test_terminate(api: Api, ns: str) -> None:
    wid = start(api, ns, workflowId=uid("term"))["execution"]["workflowId"]
    r = api.post(wf(ns, wid, "terminate"), {"reason": "stop", "identity": "ops"})
    assert r["status"] == "WORKFLOW_EXECUTION_STATUS_TERMINATED"
    last = events(api, ns, wid)[-1]
    assert last["eventType"] == "WORKFLOW_EXECUTION_TERMINATED"
    assert last["attributes"] == {"reason": "stop", "identity": "ops"}
    again = api.post(wf(ns, wid, "terminate"), {"reason": "twice"})
    assert again == r
    api.err("POST", wf(ns, uid("none"), "terminate"), {}, status=404, code="not_found")


# ---------------------------------------------------------------------------
# reset, metadata, history, executions, query (§5.4, §5.5)


def test_reset_open_run(api: Api, ns: str) -> None:
    wid = uid("reset")
    src = start(api, ns, "Resettable", workflowId=wid, input={"v": 1}, taskQueue="rq", workflowTaskTimeout="20s")
    src_rid = src["execution"]["runId"]
    api.post(wf(ns, wid, "signal"), {"name": "one"})
    api.post(wf(ns, wid, "signal"), {"name": "two"})
    src_events = events(api, ns, wid)
    assert len(src_events) == 4
    new = api.post(wf(ns, wid, "reset"), {"eventId": 3, "reason": "oops", "identity": "ops"})
    rid = new["execution"]["runId"]
    assert HEX32.match(rid) and rid != src_rid
    assert new["execution"]["workflowId"] == wid
    assert new["status"] == RUNNING and new["attempt"] == 1
    assert new["type"] == {"name": "Resettable"} and new["taskQueue"] == "rq"
    assert new["workflowTaskTimeout"] == "20s"
    assert new["resetFrom"] == {"runId": src_rid, "eventId": 3, "reason": "oops", "identity": "ops"}
    evs = events(api, ns, wid, rid)
    assert [e["eventId"] for e in evs] == [1, 2, 3, 4, 5]
    for copied, orig in zip(evs[:3], src_events[:3], strict=True):
        assert (copied["eventType"], copied["attributes"]) == (orig["eventType"], orig["attributes"])
    assert types(evs)[3:] == ["WORKFLOW_EXECUTION_RESET", "WORKFLOW_TASK_SCHEDULED"]
    assert evs[3]["attributes"]["baseRunId"] == src_rid and evs[3]["attributes"]["eventId"] == 3
    assert api.get(wf(ns, wid))["workflowExecutionInfo"]["input"] == {"v": 1}
    # The open source is terminated in the same command.
    old = api.get(wf(ns, wid) + f"?runId={src_rid}")["workflowExecutionInfo"]
    assert old["status"] == "WORKFLOW_EXECUTION_STATUS_TERMINATED"
    old_last = events(api, ns, wid, src_rid)[-1]
    assert old_last["eventType"] == "WORKFLOW_EXECUTION_TERMINATED"
    assert old_last["attributes"]["reason"].startswith("reset: ")
    # Executions are newest first and the latest run is the reset one.
    runs = api.get(wf(ns, wid, "executions"))["executions"]
    assert [r["execution"]["runId"] for r in runs] == [rid, src_rid]
    assert api.get(wf(ns, wid))["workflowExecutionInfo"]["execution"]["runId"] == rid


def test_reset_closed_source_and_request_id(api: Api, ns: str) -> None:
    wid = start(api, ns, workflowId=uid("rst"))["execution"]["workflowId"]
    closed = api.post(wf(ns, wid, "terminate"), {"reason": "done"})
    req = uuid.uuid4().hex
    new = api.post(wf(ns, wid, "reset"), {"runId": closed["execution"]["runId"], "eventId": 2, "requestId": req})
    assert new["execution"]["runId"] != closed["execution"]["runId"]
    again = api.post(wf(ns, wid, "reset"), {"runId": closed["execution"]["runId"], "eventId": 2, "requestId": req})
    assert again["execution"] == new["execution"]
    # A closed source is left as it was.
    src = api.get(wf(ns, wid) + f"?runId={closed['execution']['runId']}")["workflowExecutionInfo"]
    assert src["status"] == closed["status"] and src["historyLength"] == closed["historyLength"]
    assert len(api.get(wf(ns, wid, "executions"))["executions"]) == 2


@pytest.mark.parametrize("event_id", [0, -1, 3, 99])
def test_reset_rejects_bad_event_id(api: Api, ns: str, event_id: int) -> None:
    wid = start(api, ns, workflowId=uid("rbad"))["execution"]["workflowId"]
    api.err("POST", wf(ns, wid, "reset"), {"eventId": event_id}, status=400, code="invalid_argument")
    assert len(api.get(wf(ns, wid, "executions"))["executions"]) == 1


def test_reset_errors(api: Api, ns: str) -> None:
    wid = start(api, ns, workflowId=uid("rerr"))["execution"]["workflowId"]
    api.err("POST", wf(ns, wid, "reset"), {}, status=400, code="invalid_argument")
    api.err("POST", wf(ns, uid("none"), "reset"), {"eventId": 1}, status=404, code="not_found")


def test_workflow_metadata(api: Api, ns: str) -> None:
    wid = start(api, ns, workflowId=uid("meta"))["execution"]["workflowId"]
    r = api.post(wf(ns, wid, "metadata"), {"summary": "charge", "details": "order 7", "updatedBy": "ann"})
    um = r["userMetadata"]
    assert (um["summary"], um["details"], um["updatedBy"]) == ("charge", "order 7", "ann")
    assert TS.match(um["updatedAt"])
    # Present fields replace (even ""), absent ones are kept; no history event.
    r2 = api.post(wf(ns, wid, "metadata"), {"summary": ""})
    assert r2["userMetadata"]["summary"] == "" and r2["userMetadata"]["details"] == "order 7"
    assert r2["historyLength"] == 2
    assert api.get(wf(ns, wid))["workflowExecutionInfo"]["userMetadata"]["updatedBy"] == "ann"
    api.err("POST", wf(ns, uid("none"), "metadata"), {"summary": "x"}, status=404, code="not_found")


def test_history_paging_forward_and_reverse(api: Api, ns: str) -> None:
    wid = start(api, ns, workflowId=uid("hist"))["execution"]["workflowId"]
    for i in range(4):
        api.post(wf(ns, wid, "signal"), {"name": f"s{i}"})
    base = wf(ns, wid, "history")

    def walk(query: str) -> list[tuple[list[int], int]]:
        out, token = [], ""
        for _ in range(20):
            url = base + query + (f"&nextPageToken={token}" if token else "")
            page = api.get(url)
            out.append(([e["eventId"] for e in page["events"]], page["nextCursor"]))
            token = page["nextPageToken"]
            if not token:
                return out
        raise AssertionError("history paging never ended")

    assert walk("?pageSize=2") == [([1, 2], 2), ([3, 4], 4), ([5, 6], 0)]
    assert walk("?pageSize=4&reverse=true") == [([6, 5, 4, 3], 3), ([2, 1], 0)]
    assert walk("?pageSize=6") == [([1, 2, 3, 4, 5, 6], 0)]
    assert walk("?after=4") == [([5, 6], 0)]
    assert walk("?after=3&reverse=true") == [([2, 1], 0)]
    assert walk("?after=6") == [([], 0)]
    # The cursor form keeps working: after=<nextCursor>.
    assert [e["eventId"] for e in api.get(base + "?pageSize=2&after=2")["events"]] == [3, 4]
    # A token is bound to its direction.
    tok = api.get(base + "?pageSize=2")["nextPageToken"]
    api.err("GET", base + f"?pageSize=2&reverse=true&nextPageToken={tok}", status=400, code="invalid_argument")
    api.err("GET", wf(ns, uid("none"), "history"), status=404, code="not_found")


def test_executions_route(api: Api, ns: str) -> None:
    wid = uid("ex")
    rids = []
    for _ in range(3):
        rids.append(start(api, ns, workflowId=wid, workflowIdConflictPolicy="TERMINATE_EXISTING")
                    ["execution"]["runId"])
    pages = all_pages(api, wf(ns, wid, "executions"), "executions", 2)
    assert [[r["execution"]["runId"] for r in p] for p in pages] == [rids[::-1][:2], rids[::-1][2:]]
    assert all("input" not in r for p in pages for r in p)
    api.err("GET", wf(ns, uid("none"), "executions"), status=404, code="not_found")


def test_query_workflow_metadata_and_user_query(api: Api, ns: str) -> None:
    wid = start(api, ns, "Queried", workflowId=uid("q"))["execution"]["workflowId"]
    r = api.post(wf(ns, wid, "query"), {"queryType": "__workflow_metadata"})
    assert r == {"queryResult": {"workflowType": "Queried", "status": RUNNING, "historyLength": 2, "attempt": 1}}
    s, b, h = api.call("POST", wf(ns, wid, "query"), {"queryType": "status", "timeout": "1s"})
    assert s == 503 and b["code"] == "no_workers"
    assert int(h["Retry-After"]) >= 1
    api.post(wf(ns, wid, "terminate"), {})
    closed = api.post(wf(ns, wid, "query"), {"queryType": "__workflow_metadata"})
    assert closed["queryResult"]["status"] == "WORKFLOW_EXECUTION_STATUS_TERMINATED"
    assert closed["queryResult"]["historyLength"] == 3
    api.err("POST", wf(ns, wid, "query"), {"queryType": "status"}, status=409, code="failed_precondition")
    api.err("POST", wf(ns, wid, "query"), {}, status=400, code="invalid_argument")
    api.err("POST", wf(ns, wid, "query"), {"queryType": "status", "timeout": "31s"}, status=400)
    api.err("POST", wf(ns, uid("none"), "query"), {"queryType": "__workflow_metadata"}, status=404,
            code="not_found")


# ---------------------------------------------------------------------------
# schedules (§4.6, §5.8)

INTERVAL_1S = {"interval": [{"interval": "1s"}]}


def sched_body(sid: str, wtype: str, spec: dict | None = None, **extra: Any) -> dict:
    return {"scheduleId": sid, "spec": spec or INTERVAL_1S,
            "action": {"workflowType": {"name": wtype}, "taskQueue": "sched"}, **extra}


def fired_runs(api: Api, ns: str, wtype: str) -> list[dict]:
    out = api.get(wf(ns) + "?pageSize=1000&query=" + quote(f"WorkflowType = '{wtype}'", safe=""))
    return out["executions"]


def test_interval_schedule_fires_pauses_and_resumes(own_api: Api) -> None:
    api = own_api
    ns = uid("own")
    api.post(NSP, {"namespaceInfo": {"name": ns}})
    clock = api.node.clock
    sid, wtype = "every-second", "Tick"
    created = api.post(sc(ns), sched_body(sid, wtype, policies={"overlapPolicy": "ALLOW_ALL"}))
    assert created["spec"]["interval"] == [{"interval": "1s", "phase": "0s"}]
    assert created["policies"]["overlapPolicy"] == "SCHEDULE_OVERLAP_POLICY_ALLOW_ALL"
    assert created["info"]["actionCount"] == 0 and TS.match(created["info"]["createTime"])
    # A second schedule with the default overlap policy (SKIP): its first run stays open.
    api.post(sc(ns), sched_body("skipper", "Skipped"))
    # A third one limited to two actions.
    api.post(sc(ns), sched_body("limited", "Limited", policies={"overlapPolicy": "ALLOW_ALL"},
                                state={"limitedActions": True, "remainingActions": 2}))
    created_at = parse_ts(created["info"]["createTime"])

    wait_for(advancing(api, lambda: len(fired_runs(api, ns, wtype)) >= 3), 6.0, "3 fires")
    d = api.get(sc(ns, sid))
    info = d["info"]
    assert info["actionCount"] >= 3
    fut = info["futureActionTimes"]
    assert len(fut) == 5 and all(TS.match(t) for t in fut)
    assert [parse_ts(b) - parse_ts(a) for a, b in zip(fut, fut[1:], strict=False)] == [1.0] * 4
    assert info["nextActionTime"] == fut[0]
    assert parse_ts(fut[0]) > clock.time() - 1.5
    recent = info["recentActions"]
    assert recent and all(TS.match(a["scheduleTime"]) and TS.match(a["actualTime"]) for a in recent)

    assert api.post(sc(ns, sid, "pause"), {"note": "maintenance"}) == {"status": "paused"}
    paused_at = clock.time()
    p = api.get(sc(ns, sid))
    assert p["state"]["paused"] is True and p["state"]["note"] == "maintenance"
    assert "nextActionTime" not in p["info"] and p["info"]["futureActionTimes"] == []
    count = p["info"]["actionCount"]
    before = fired_runs(api, ns, wtype)
    clock.advance(2.2)  # two intervals pass while paused: nothing fires
    time.sleep(0.3)  # (the woken timers had time to fire, were anything due)
    assert len(fired_runs(api, ns, wtype)) == len(before)
    assert api.get(sc(ns, sid))["info"]["actionCount"] == count == len(before)

    assert api.post(sc(ns, sid, "unpause"), {}) == {"status": "running"}
    resumed = api.get(sc(ns, sid))
    assert resumed["state"]["paused"] is False and "note" not in resumed["state"]
    assert "nextActionTime" in resumed["info"]
    after = wait_for(advancing(api, lambda: (r := fired_runs(api, ns, wtype)) and len(r) > len(before) and r), 4.0,
                     "fire after unpause")

    # Every fired workflow: <scheduleId>-<nominal whole seconds>Z, each nominal time once.
    ids = [r["execution"]["workflowId"] for r in after]
    assert len(ids) == len(set(ids))
    nominals = []
    for r in after:
        m = FIRED.match(r["execution"]["workflowId"])
        assert m and m["sid"] == sid and m["n"] is None, r["execution"]["workflowId"]
        assert r["scheduleId"] == sid
        assert r["taskQueue"] == "sched"
        nominals.append(datetime.fromisoformat(m["t"] + "+00:00").timestamp())
    assert len(set(nominals)) == len(nominals)
    assert all(n > created_at for n in nominals), "nominal times are strictly after creation"
    # Times that passed while paused were never replayed.
    new_nominals = sorted(nominals)[len(before):]
    assert all(n > paused_at + 1.5 for n in new_nominals), (paused_at, new_nominals)
    first = after[-1]
    started = events(api, ns, first["execution"]["workflowId"])[0]["attributes"]
    assert started["scheduleId"] == sid
    assert parse_ts(started["nominalTime"]) == min(nominals)

    # SKIP: the schedule's open run makes every later time be skipped.
    skipper = api.get(sc(ns, "skipper"))
    assert len(fired_runs(api, ns, "Skipped")) == 1
    assert skipper["info"]["actionCount"] == 1 and skipper["info"]["overlapSkipped"] >= 2
    assert [w["workflowId"] for w in skipper["info"]["runningWorkflows"]] == [
        fired_runs(api, ns, "Skipped")[0]["execution"]["workflowId"]]
    assert skipper["info"]["recentActions"][0]["status"] == RUNNING
    # Limited: exactly two actions, then nothing is planned.
    limited = api.get(sc(ns, "limited"))
    assert len(fired_runs(api, ns, "Limited")) == 2
    assert limited["info"]["actionCount"] == 2 and limited["state"]["remainingActions"] == 0
    assert limited["info"]["futureActionTimes"] == [] and "nextActionTime" not in limited["info"]
    for s in (sid, "skipper", "limited"):
        api.ok("DELETE", sc(ns, s))


def test_schedule_create_conflict_and_upsert(api: Api, ns: str) -> None:
    sid = uid("up")
    hourly = {"interval": [{"interval": "1h"}]}
    first = api.post(sc(ns), sched_body(sid, "U", hourly))
    assert first["scheduleId"] == sid and first["namespace"] == ns
    assert first["policies"] == {"overlapPolicy": "SCHEDULE_OVERLAP_POLICY_SKIP", "catchupWindow": "1m",
                                 "pauseOnFailure": False}
    assert first["state"] == {"paused": False, "limitedActions": False, "remainingActions": 0}
    api.err("POST", sc(ns), sched_body(sid, "U", hourly), status=409, code="already_exists")
    up = api.post(sc(ns) + "?upsert=true", sched_body(sid, "U2", {"interval": [{"interval": "2h"}]}))
    assert up["spec"]["interval"] == [{"interval": "2h", "phase": "0s"}]
    assert up["action"]["workflowType"] == {"name": "U2"}
    assert up["info"]["createTime"] == first["info"]["createTime"]
    assert api.get(sc(ns, sid))["spec"] == up["spec"]
    # upsert of a new id creates it.
    new_sid = uid("up")
    assert api.post(sc(ns) + "?upsert=1", sched_body(new_sid, "U", hourly))["scheduleId"] == new_sid
    api.err("GET", sc(ns, uid("none")), status=404, code="not_found")


@pytest.mark.parametrize("spec,step", [
    ({"cronString": ["*/5 * * * * *"]}, 5),
    ({"cronString": ["@every 2s"]}, 2),
    ({"cronString": ["0 */6 * * *"]}, 6 * 3600),
    ({"interval": [{"interval": "15m", "phase": "5m"}]}, 900),
])
def test_schedule_specs_and_matching_times(api: Api, ns: str, spec: dict, step: int) -> None:
    sid = uid("spec")
    api.post(sc(ns), sched_body(sid, "Spec", spec))
    frm, to = "2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z"
    times = api.get(sc(ns, sid, "matching-times") + f"?from={frm}&to={to}")["matchingTimes"]
    assert times and all(TS.match(t) for t in times)
    secs = [parse_ts(t) for t in times]
    assert all(b - a == step for a, b in zip(secs, secs[1:], strict=False))
    assert parse_ts(frm) <= secs[0] < parse_ts(frm) + step and secs[-1] <= parse_ts(to)
    expected = min(1000, int((parse_ts(to) - secs[0]) // step) + 1)
    assert len(times) == expected
    d = api.get(sc(ns, sid))
    assert len(d["info"]["futureActionTimes"]) == 5
    fut = [parse_ts(t) for t in d["info"]["futureActionTimes"]]
    assert all(b - a == step for a, b in zip(fut, fut[1:], strict=False))


def test_cron_time_zone(api: Api, ns: str) -> None:
    sid = uid("tz")
    r = api.post(sc(ns), sched_body(sid, "Tz", {"cronString": ["CRON_TZ=Europe/Berlin 0 9 * * MON-FRI"]}))
    assert r["spec"]["cronString"] == ["CRON_TZ=Europe/Berlin 0 9 * * MON-FRI"]
    winter = api.get(sc(ns, sid, "matching-times") + "?from=2026-01-05T00:00:00Z&to=2026-01-11T23:59:59Z")
    assert winter["matchingTimes"] == [f"2026-01-{d:02d}T08:00:00.000Z" for d in range(5, 10)]
    summer = api.get(sc(ns, sid, "matching-times") + "?start=2026-07-04T00:00:00Z&end=2026-07-07T23:59:59Z")
    assert summer["matchingTimes"] == ["2026-07-06T07:00:00.000Z", "2026-07-07T07:00:00.000Z"]
    # spec.timezone applies to un-prefixed crons.
    sid2 = uid("tz")
    api.post(sc(ns), sched_body(sid2, "Tz", {"cronString": ["0 9 * * *"], "timezone": "America/New_York"}))
    ny = api.get(sc(ns, sid2, "matching-times") + "?from=2026-01-05T00:00:00Z&to=2026-01-05T23:59:59Z")
    assert ny["matchingTimes"] == ["2026-01-05T14:00:00.000Z"]


def test_matching_times_bounds(api: Api, ns: str) -> None:
    sid = uid("mt")
    api.post(sc(ns), sched_body(sid, "Mt", {"interval": [{"interval": "1h"}]}))
    base = sc(ns, sid, "matching-times")
    default = api.get(base)["matchingTimes"]
    assert 24 <= len(default) <= 25
    assert parse_ts(default[0]) >= time.time() - 5
    assert len(api.get(base + "?from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z")["matchingTimes"]) == 1000
    with_offset = api.get(base + "?from=" + quote("2026-01-01T02:00:00+02:00") + "&to=2026-01-01T01:00:00Z")
    assert with_offset["matchingTimes"] == ["2026-01-01T00:00:00.000Z", "2026-01-01T01:00:00.000Z"]
    api.err("GET", base + "?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", status=400, code="invalid_argument")
    api.err("GET", base + "?from=yesterday", status=400, code="invalid_argument")
    api.err("GET", sc(ns, uid("none"), "matching-times"), status=404, code="not_found")


@pytest.mark.parametrize("body", [
    {"spec": {"cronString": ["not a cron"]}},
    {"spec": {"cronString": ["61 * * * *"]}},
    {"spec": {"cronString": ["CRON_TZ=Mars/Olympus 0 9 * * *"]}},
    {"spec": {"cronString": ["@every 0s"]}},
    {"spec": {"interval": [{"interval": "500ms"}]}},
    {"spec": {"interval": [{"interval": "10s", "phase": "10s"}]}},
    {"spec": {"interval": [{"interval": "10s", "phase": "-1s"}]}},
    {"spec": {"interval": [{"interval": "1d"}]}},
    {"spec": {}},
    {"spec": {"cronString": [], "interval": []}},
    {"spec": {"interval": ["1h"], "startTime": "2026-02-01T00:00:00Z", "endTime": "2026-01-01T00:00:00Z"}},
    {"action": {}},
    {"action": {"workflowType": {"name": ""}}},
    {"action": None},
    {"spec": None},
    {"policies": {"catchupWindow": "500ms"}},
    {"policies": {"overlapPolicy": "SOMETIMES"}},
    {"scheduleId": ""},
    {"scheduleId": "s" * 201},
    {"scheduleId": "a/b"},
])
def test_schedule_create_rejects_bad_input(api: Api, ns: str, body: dict) -> None:
    full = {**sched_body(uid("bad"), "Bad", {"interval": ["1h"]}), **body}
    if full.get("action") is None:
        full.pop("action")
    if full.get("spec") is None:
        full.pop("spec")
    api.err("POST", sc(ns), full, status=400, code="invalid_argument")


def test_schedule_trigger(api: Api, ns: str) -> None:
    sid = uid("trig")
    api.post(sc(ns), sched_body(sid, "Trig", {"interval": [{"interval": "1h"}]},
                                policies={"overlapPolicy": "ALLOW_ALL"}))
    base = sc(ns, sid, "trigger")
    for _ in range(5):
        # Two triggers in the same second: keep clear of a second boundary.
        if time.time() % 1 > 0.6:
            time.sleep(1.02 - time.time() % 1)
        t0 = int(time.time())
        a = api.post(base, {})
        b = api.post(base, {})
        t1 = int(time.time())
        if t0 == t1:
            break
    else:
        pytest.fail("could not trigger twice within one second")
    assert a["status"] == "triggered" and b["status"] == "triggered"
    ea, eb = a["execution"], b["execution"]
    ma, mb = FIRED.match(ea["execution"]["workflowId"]), FIRED.match(eb["execution"]["workflowId"])
    assert ma and mb and ma["sid"] == sid and ma["n"] is None
    assert datetime.fromisoformat(ma["t"] + "+00:00").timestamp() == t0
    assert eb["execution"]["workflowId"] == ea["execution"]["workflowId"] + "-2"
    assert ea["scheduleId"] == sid and ea["status"] == RUNNING and ea["type"] == {"name": "Trig"}
    # The body's overlapPolicy overrides the schedule's.
    assert api.post(base, {"overlapPolicy": "SKIP"}) == {"status": "skipped"}
    d = api.get(sc(ns, sid))
    assert d["info"]["actionCount"] == 2
    assert {w["workflowId"] for w in d["info"]["runningWorkflows"]} == {
        ea["execution"]["workflowId"], eb["execution"]["workflowId"]}
    assert d["info"]["overlapSkipped"] >= 1
    api.err("POST", sc(ns, uid("none"), "trigger"), {}, status=404, code="not_found")


def test_schedule_trigger_request_id_and_paused(api: Api, ns: str) -> None:
    sid = uid("trq")
    api.post(sc(ns), sched_body(sid, "Trq", {"interval": [{"interval": "1h"}]}, state={"paused": True}))
    req = uuid.uuid4().hex
    first = api.post(sc(ns, sid, "trigger"), {"requestId": req})
    assert first["status"] == "triggered", "trigger starts even when paused"
    again = api.post(sc(ns, sid, "trigger"), {"requestId": req})
    assert again["status"] == "triggered"
    assert again["execution"]["execution"] == first["execution"]["execution"]
    assert api.get(sc(ns, sid))["info"]["actionCount"] == 1


def test_schedule_update_replaces_spec(api: Api, ns: str) -> None:
    sid = uid("upd")
    first = api.post(sc(ns), sched_body(sid, "Upd", {"interval": [{"interval": "1h"}]}))
    r = api.post(sc(ns, sid), {"spec": {"cronString": ["0 0 * * *"]},
                               "action": {"workflowType": {"name": "Upd2"}, "input": {"x": 1}},
                               "policies": {"overlapPolicy": "buffer_one", "catchupWindow": "5m"}})
    assert r["spec"] == {"cronString": ["0 0 * * *"], "timezone": "UTC"}
    assert r["action"]["workflowType"] == {"name": "Upd2"} and r["action"]["input"] == {"x": 1}
    assert r["policies"]["overlapPolicy"] == "SCHEDULE_OVERLAP_POLICY_BUFFER_ONE"
    assert r["policies"]["catchupWindow"] == "5m"
    assert r["info"]["createTime"] == first["info"]["createTime"] and TS.match(r["info"]["updateTime"])
    assert api.get(sc(ns, sid))["spec"] == r["spec"]
    times = api.get(sc(ns, sid, "matching-times") + "?from=2026-01-01T00:00:00Z&to=2026-01-03T00:00:00Z")
    assert times["matchingTimes"] == ["2026-01-01T00:00:00.000Z", "2026-01-02T00:00:00.000Z",
                                      "2026-01-03T00:00:00.000Z"]
    api.err("POST", sc(ns, sid), {"spec": {}, "action": {"workflowType": {"name": "X"}}}, status=400,
            code="invalid_argument")
    api.err("POST", sc(ns, uid("none")), {"spec": {"interval": ["1h"]}, "action": {"workflowType": "X"}},
            status=404, code="not_found")


def test_schedule_delete(api: Api, ns: str) -> None:
    sid = uid("del")
    api.post(sc(ns), sched_body(sid, "Del", {"interval": [{"interval": "1h"}]}))
    run = api.post(sc(ns, sid, "trigger"), {})["execution"]["execution"]
    assert api.ok("DELETE", sc(ns, sid)) == {"status": "deleted"}
    api.err("GET", sc(ns, sid), status=404, code="not_found")
    api.err("DELETE", sc(ns, sid), status=404, code="not_found")
    api.err("POST", sc(ns, sid, "pause"), {}, status=404, code="not_found")
    api.err("POST", sc(ns, sid, "trigger"), {}, status=404, code="not_found")
    # Workflows it started are left running.
    assert api.get(wf(ns, run["workflowId"]))["workflowExecutionInfo"]["status"] == RUNNING


def test_schedule_list_paging(api: Api, fresh_ns: str) -> None:
    sids = [f"list-{i}" for i in range(3)]
    for s in reversed(sids):
        api.post(sc(fresh_ns), sched_body(s, "L", {"interval": [{"interval": "1h"}]}))
    pages = all_pages(api, sc(fresh_ns), "schedules", 2)
    assert [[s["scheduleId"] for s in p] for p in pages] == [sids[:2], sids[2:]]
    assert all(len(s["info"]["futureActionTimes"]) == 5 for p in pages for s in p)
    assert [len(p) for p in all_pages(api, sc(fresh_ns), "schedules", 3)] == [3]


def test_schedule_with_limited_actions(api: Api, ns: str) -> None:
    sid = uid("lim")
    r = api.post(sc(ns), sched_body(sid, "Lim", {"interval": [{"interval": "1h"}]},
                                    state={"limitedActions": True, "remainingActions": 0}))
    assert r["state"]["limitedActions"] is True and r["state"]["remainingActions"] == 0
    assert r["info"]["futureActionTimes"] == [] and "nextActionTime" not in r["info"]


def test_schedule_start_and_end_time_bound_the_times(api: Api, ns: str) -> None:
    sid = uid("window")
    r = api.post(sc(ns), sched_body(sid, "W", {"interval": ["1h"], "startTime": "2026-01-01T03:00:00Z",
                                              "endTime": "2026-01-01T06:00:00Z"}))
    assert r["spec"]["startTime"] == "2026-01-01T03:00:00.000Z"
    assert r["spec"]["endTime"] == "2026-01-01T06:00:00.000Z"
    times = api.get(sc(ns, sid, "matching-times") + "?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z")
    assert times["matchingTimes"] == [f"2026-01-01T0{h}:00:00.000Z" for h in (3, 4, 5, 6)]
    # Past its endTime a schedule has nothing left to do.
    d = api.get(sc(ns, sid))
    assert d["info"]["futureActionTimes"] == [] and "nextActionTime" not in d["info"]


def test_schedule_jitter_is_deterministic_and_bounded(api: Api, ns: str) -> None:
    sid = uid("jit")
    r = api.post(sc(ns), sched_body(sid, "J", {"interval": ["1h"], "jitter": "30m"}))
    assert r["spec"]["jitter"] == "30m"
    first = api.get(sc(ns, sid))["info"]
    second = api.get(sc(ns, sid))["info"]
    assert first["futureActionTimes"] == second["futureActionTimes"], "jitter is a function of the nominal time"
    for t in first["futureActionTimes"]:
        offset = parse_ts(t) % 3600
        assert 0 <= offset < 1800, t
    assert first["nextActionTime"] == first["futureActionTimes"][0]
    # matching-times are nominal: no jitter.
    times = api.get(sc(ns, sid, "matching-times") + "?from=2026-01-01T00:00:00Z&to=2026-01-01T02:00:00Z")
    assert times["matchingTimes"] == ["2026-01-01T00:00:00.000Z", "2026-01-01T01:00:00.000Z",
                                      "2026-01-01T02:00:00.000Z"]


def test_namespace_aps_limit_rate_limits_writes(api: Api) -> None:
    name = uid("aps")
    api.post(NSP, {"namespaceInfo": {"name": name}, "config": {"apsLimit": 2}})
    statuses = []
    for _ in range(4):
        s, b, h = api.call("POST", wf(name), {"workflowType": {"name": "R"}})
        statuses.append(s)
        if s == 429:
            assert b["code"] == "rate_limited" and int(h["Retry-After"]) >= 1
    assert statuses[:2] == [200, 200] and 429 in statuses[2:]
    # Reads are not limited.
    for _ in range(5):
        api.get(wf(name))


def test_generated_id_cuts_long_types_on_a_character_boundary(api: Api, ns: str) -> None:
    r = start(api, ns, "X" * 255)
    wid, rid = r["execution"]["workflowId"], r["execution"]["runId"]
    assert wid == "x" * 200 + "-" + rid[:8]
    r2 = start(api, ns, "É" * 127)  # 254 bytes of UTF-8
    wid2 = r2["execution"]["workflowId"]
    assert wid2 == "é" * 100 + "-" + r2["execution"]["runId"][:8]
    api.err("POST", wf(ns), {"workflowType": "T", "workflowId": "w" * 256}, status=400, code="invalid_argument")
    assert start(api, ns, workflowId="w" * 255)["execution"]["workflowId"] == "w" * 255


def test_schedule_id_limit_is_200_bytes(api: Api, ns: str) -> None:
    api.post(sc(ns), sched_body("é" * 100, "L", {"interval": ["1h"]}))
    api.err("POST", sc(ns), sched_body("é" * 100 + "x", "L", {"interval": ["1h"]}), status=400,
            code="invalid_argument")


def test_reset_request_id_of_another_workflow_is_not_its_result(api: Api, ns: str) -> None:
    req = uuid.uuid4().hex
    start(api, ns, workflowId=uid("ra"), requestId=req)
    wid = start(api, ns, workflowId=uid("rb"))["execution"]["workflowId"]
    s, b, _ = api.call("POST", wf(ns, wid, "reset"), {"eventId": 1, "requestId": req})
    assert s == 400 or (s == 200 and b["execution"]["workflowId"] == wid), (s, b)


# ---------------------------------------------------------------------------
# search attributes (§4.7, §5.12)


def test_search_attributes(api: Api, fresh_ns: str) -> None:
    ns = fresh_ns
    sa = f"{NSP}/{ns}/search-attributes"
    assert api.post(sa, {"name": "CustomerId", "type": "Keyword"}) == {"name": "CustomerId", "type": "Keyword"}
    api.post(sa, {"name": "Amount", "type": "Int"})
    api.err("POST", sa, {"name": "CustomerId", "type": "Keyword"}, status=409, code="already_exists")
    listed = api.get(sa)
    assert listed == {"searchAttributes": [{"name": "Amount", "type": "Int"},
                                           {"name": "CustomerId", "type": "Keyword"}], "nextPageToken": ""}
    assert [len(p) for p in all_pages(api, sa, "searchAttributes", 1)] == [1, 1]

    w1 = start(api, ns, "Order", workflowId="o1", searchAttributes={"CustomerId": "c1", "Amount": 10})
    start(api, ns, "Order", workflowId="o2", searchAttributes={"CustomerId": "c2", "Amount": 99})
    start(api, ns, "Order", workflowId="o3")
    assert w1["searchAttrs"] == {"CustomerId": "c1", "Amount": 10}
    assert api.get(wf(ns, "o1"))["workflowExecutionInfo"]["searchAttrs"] == {"CustomerId": "c1", "Amount": 10}
    assert list_ids(api, ns, "CustomerId = 'c1'") == ["o1"]
    assert set(list_ids(api, ns, "Amount > 5")) == {"o1", "o2"}
    assert set(list_ids(api, ns, "CustomerId != 'c1'")) == {"o2", "o3"}
    assert list_ids(api, ns, "CustomerId = 'c1' AND Amount < 50") == ["o1"]

    for bad in ({"Unregistered": "x"}, {"CustomerId": 5}, {"Amount": "ten"}):
        api.err("POST", wf(ns), {"workflowType": {"name": "Order"}, "searchAttributes": bad},
                status=400, code="invalid_argument")
    for name, typ in (("WorkflowId", "Keyword"), ("ExecutionStatus", "Keyword"), ("TemporalThing", "Keyword"),
                      ("1bad", "Keyword"), ("has-dash", "Keyword"), ("Fine", "Nope")):
        api.err("POST", sa, {"name": name, "type": typ}, status=400, code="invalid_argument")

    assert api.ok("DELETE", f"{sa}/CustomerId") == {"status": "removed"}
    api.err("DELETE", f"{sa}/CustomerId", status=404, code="not_found")
    # Values stay stored but the attribute can no longer be queried.
    api.err("GET", wf(ns) + "?query=" + quote("CustomerId = 'c1'"), status=400, code="invalid_argument")
    assert api.get(wf(ns, "o1"))["workflowExecutionInfo"]["searchAttrs"]["CustomerId"] == "c1"


def test_timestamps_and_durations_are_canonical(api: Api, ns: str) -> None:
    """Every time in a record is RFC 3339 UTC with exactly 3 fractional digits (§0)."""
    wid = start(api, ns, workflowId=uid("ts"), workflowRunTimeout="90s")["execution"]["workflowId"]
    d = api.get(wf(ns, wid))
    info = d["workflowExecutionInfo"]
    assert TS.match(info["startTime"]) and info["workflowRunTimeout"] == "1m30s"
    assert abs(parse_ts(info["startTime"]) - time.time()) < 60
    assert d["executionConfig"]["workflowRunTimeout"] == "1m30s"
    assert d["executionConfig"]["workflowExecutionTimeout"] == "0s"
    assert datetime.fromisoformat(info["startTime"].replace("Z", "+00:00")).tzinfo == UTC
