"""Deployments and nexus endpoints over HTTP (SPEC §4.7, §5.1, §5.12), against real nodes.

One in-process node (``hanzo_tasks.testing``, with a ZAP listener, for the
validate checks with a real worker) serves the module; each test works in
namespaces of its own, so lists can be exact. The restart test runs a
``tasksd`` process of its own (a clean stop, exit 0, and a start again).
"""

from __future__ import annotations

import http.client
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hanzo_tasks.cluster.api.http.server import build_router
from hanzo_tasks.testing import TestNode

from tests.cluster.dispatch.test_task_queues import Worker
from tests.cluster.inproc import start_test_node
from tests.support import NodeProcess

NSP = "/v1/tasks/namespaces"
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


class Api:
    """Requests sent byte for byte (``http.client``)."""

    def __init__(self, node: TestNode | NodeProcess) -> None:
        u = urlsplit(node.url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            conn.request(method, path, body=json.dumps(body).encode() if body is not None else None)
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        return resp.status, json.loads(payload) if payload else None

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, out = self.call(method, path, body)
        assert status == 200, (method, path, status, out)
        return out

    def err(self, method: str, path: str, body: Any, status: int, code: str) -> dict[str, Any]:
        s, out = self.call(method, path, body)
        assert (s, out.get("code")) == (status, code), (method, path, s, out)
        assert isinstance(out["message"], str) and out["message"]
        return out

    def new_ns(self, prefix: str) -> str:
        ns = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.ok("POST", NSP, {"namespaceInfo": {"name": ns}})
        return ns


def walk(api: Api, path: str, field: str, size: int = 1) -> list[Any]:
    """Every item of a list route, ``size`` at a time, checking the paging rules on the way."""
    sep = "&" if "?" in path else "?"
    items: list[Any] = []
    token = ""
    for _ in range(1000):
        body = api.ok("GET", f"{path}{sep}pageSize={size}" + (f"&nextPageToken={quote(token)}" if token else ""))
        assert len(body[field]) <= size
        items.extend(body[field])
        token = body["nextPageToken"]
        if not token:
            return items
        assert len(body[field]) == size, "a page before the last is full"
    raise AssertionError("paging did not end")


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, tuple[str, int]]]:
    node = start_test_node(tmp_path_factory.mktemp("records_api") / "n1", ["--zap", "127.0.0.1:0"])
    try:
        assert node.zap_address is not None
        yield Api(node), node.zap_address
    finally:
        node.stop()


@pytest.fixture
def api(served: tuple[Api, tuple[str, int]]) -> Api:
    return served[0]


# ---- routes ----------------------------------------------------------------------------------


def test_routes_carry_the_roles_of_the_spec() -> None:
    rows = {(r.method, r.template): r.role for r in build_router().routes
            if "/deployments" in r.template or "/nexus" in r.template}
    assert len(rows) == 14
    for (method, template), role in rows.items():
        assert role == ("viewer" if method == "GET" else "admin"), (method, template, role)
    assert ("GET", "/v1/tasks/nexus") in rows


# ---- deployments ------------------------------------------------------------------------------


def test_deployment_create_get_update_delete(api: Api) -> None:
    ns = api.new_ns("dep")
    base = f"{NSP}/{ns}/deployments"
    d = api.ok("POST", base, {"name": "api", "description": "the API", "ownerEmail": "Ops@Example.com",
                              "defaultCompute": "small", "unknown": [1]})
    assert TS.match(d.pop("createTime"))
    assert d == {"name": "api", "namespace": ns, "description": "the API", "ownerEmail": "ops@example.com",
                 "defaultCompute": "small", "versions": [], "defaultBuildId": ""}
    api.err("POST", base, {"name": "api"}, 409, "already_exists")
    bare = api.ok("POST", base, {"name": "bare"})
    assert set(bare) == {"name", "namespace", "versions", "defaultBuildId", "createTime"}, "empty fields are omitted"
    got = api.ok("GET", f"{base}/api")
    assert got["description"] == "the API" and "updateTime" not in got
    api.err("GET", f"{base}/nope", None, 404, "not_found")
    up = api.ok("POST", f"{base}/api", {"description": "", "defaultCompute": "large"})
    assert "description" not in up and up["defaultCompute"] == "large" and up["ownerEmail"] == "ops@example.com"
    assert TS.match(up["updateTime"]) and up["updateTime"] >= up["createTime"]
    assert api.ok("GET", f"{base}/api") == up
    api.err("POST", f"{base}/nope", {"description": "x"}, 404, "not_found")
    assert [x["name"] for x in api.ok("GET", base)["deployments"]] == ["api", "bare"]
    assert api.ok("DELETE", f"{base}/bare") == {"status": "deleted"}
    api.err("DELETE", f"{base}/bare", None, 404, "not_found")
    api.err("GET", f"{NSP}/no-such-ns-{uuid.uuid4().hex[:6]}/deployments/api", None, 404, "not_found")


def test_deployment_bad_input_is_400(api: Api) -> None:
    ns = api.new_ns("depbad")
    base = f"{NSP}/{ns}/deployments"
    for body in ({}, {"name": ""}, {"name": 5}, {"name": "a/b"}, {"name": ".."}, {"name": "x" * 256},
                 {"name": "n", "description": 5}, {"name": "n", "ownerEmail": "not-an-email"},
                 {"name": "n", "defaultCompute": {"cpu": 1}}):
        api.err("POST", base, body, 400, "invalid_argument")
    assert api.ok("GET", base)["deployments"] == [], "a rejected create creates nothing"
    api.err("GET", f"{base}/%2e%2e", None, 400, "invalid_argument")


def test_versions_lifecycle(api: Api) -> None:
    ns = api.new_ns("ver")
    dep = f"{NSP}/{ns}/deployments/api"
    api.ok("POST", f"{NSP}/{ns}/deployments", {"name": "api"})
    v1 = api.ok("POST", f"{dep}/versions", {"buildId": "b1", "image": "img:1", "env": {"A": "1"}, "compute": "s"})
    assert TS.match(v1.pop("createTime"))
    assert v1 == {"buildId": "b1", "state": "DEPLOYMENT_STATE_CURRENT", "image": "img:1", "env": {"A": "1"},
                  "compute": "s"}
    assert api.ok("GET", dep)["defaultBuildId"] == "b1"
    v2 = api.ok("POST", f"{dep}/versions", {"buildId": "b2", "description": "next"})
    assert v2["state"] == "DEPLOYMENT_STATE_DRAFT"
    api.err("POST", f"{dep}/versions", {"buildId": "b2"}, 409, "already_exists")
    api.err("POST", f"{NSP}/{ns}/deployments/nope/versions", {"buildId": "b1"}, 404, "not_found")
    for body in ({}, {"buildId": ""}, {"buildId": 7}, {"buildId": "b9", "env": {"A": 1}}, {"buildId": "b9", "env": []},
                 {"buildId": "b9", "image": 5}):
        api.err("POST", f"{dep}/versions", body, 400, "invalid_argument")

    # set-current: the target CURRENT, the previous RETIRED; idempotent
    d = api.ok("POST", f"{dep}/set-current", {"buildId": "b2"})
    assert d["defaultBuildId"] == "b2"
    assert {v["buildId"]: v["state"] for v in d["versions"]} == {
        "b1": "DEPLOYMENT_STATE_RETIRED", "b2": "DEPLOYMENT_STATE_CURRENT"}
    assert api.ok("POST", f"{dep}/set-current", {"buildId": "b2"}) == d
    api.err("POST", f"{dep}/set-current", {"buildId": ""}, 400, "invalid_argument")
    api.err("POST", f"{dep}/set-current", {}, 400, "invalid_argument")
    api.err("POST", f"{dep}/set-current", {"buildId": "b9"}, 404, "not_found")
    api.err("POST", f"{NSP}/{ns}/deployments/nope/set-current", {"buildId": "b1"}, 404, "not_found")

    # update a version
    up = api.ok("POST", f"{dep}/versions/b1", {"description": "old", "env": {}})
    assert up["description"] == "old" and "env" not in up and TS.match(up["updateTime"])
    assert up["state"] == "DEPLOYMENT_STATE_RETIRED"
    api.err("POST", f"{dep}/versions/b9", {"description": "x"}, 404, "not_found")
    api.err("POST", f"{dep}/versions/b1", {"compute": 5}, 400, "invalid_argument")

    # delete: never the current one
    api.err("DELETE", f"{dep}/versions/b2", None, 409, "failed_precondition")
    left = api.ok("DELETE", f"{dep}/versions/b1")
    assert [v["buildId"] for v in left["versions"]] == ["b2"] and left["name"] == "api"
    api.err("DELETE", f"{dep}/versions/b1", None, 404, "not_found")
    api.err("DELETE", f"{NSP}/{ns}/deployments/nope/versions/b1", None, 404, "not_found")

    # a deployment with versions is deleted only when forced
    api.err("DELETE", dep, None, 409, "failed_precondition")
    api.err("DELETE", f"{dep}?force=maybe", None, 400, "invalid_argument")
    api.err("DELETE", f"{dep}?force=false", None, 409, "failed_precondition")
    assert api.ok("DELETE", f"{dep}?force=true") == {"status": "deleted"}
    api.err("GET", dep, None, 404, "not_found")


def test_validate_reports_the_builds_workers(served: tuple[Api, tuple[str, int]]) -> None:
    api, addr = served
    name = f"val-{uuid.uuid4().hex[:6]}"
    dep = f"{NSP}/default/deployments/{name}"
    api.ok("POST", f"{NSP}/default/deployments", {"name": name})
    build = f"vb-{uuid.uuid4().hex[:6]}"
    api.ok("POST", f"{dep}/versions", {"buildId": build})
    api.err("POST", f"{dep}/versions/nope/validate", None, 404, "not_found")
    api.err("POST", f"{NSP}/default/deployments/nope/versions/{build}/validate", None, 404, "not_found")

    r = api.ok("POST", f"{dep}/versions/{build}/validate")
    assert set(r) == {"networkOk", "workerRegistered", "heartbeatReceived", "latencyMs", "errors"}
    assert r["networkOk"] is True and r["workerRegistered"] is False and r["heartbeatReceived"] is False
    assert isinstance(r["latencyMs"], int | float) and 0 <= r["latencyMs"] < 5000
    assert r["errors"] and all(isinstance(e, str) for e in r["errors"])

    other = Worker(addr, "w-other-build", [("workflow", "tq-val")], build_id="some-other-build")
    w = Worker(addr, "w-val", [("workflow", "tq-val")], build_id=build)
    try:
        def registered() -> None:
            r = api.ok("POST", f"{dep}/versions/{build}/validate")
            assert (r["workerRegistered"], r["heartbeatReceived"], r["errors"]) == (True, True, []), r

        eventually(registered)
    finally:
        w.close()
        other.close()

    def departed() -> None:
        r = api.ok("POST", f"{dep}/versions/{build}/validate")
        # Gone, but seen within the last 60 s.
        assert (r["workerRegistered"], r["heartbeatReceived"]) == (False, True), r
        assert len(r["errors"]) == 1

    eventually(departed)


# ---- nexus endpoints ---------------------------------------------------------------------------


def test_nexus_create_or_replace_list_delete(api: Api) -> None:
    ns = api.new_ns("nx")
    base = f"{NSP}/{ns}/nexus"
    e = api.ok("POST", base, {"name": "pay", "target": "ns2://billing/pay", "description": "payments"})
    created = e.pop("createTime")
    assert TS.match(created)
    assert e == {"name": "pay", "namespace": ns, "description": "payments", "target": "ns2://billing/pay"}
    again = api.ok("POST", base, {"name": "pay", "target": "ns2://billing/pay-v2"})
    assert again == {"name": "pay", "namespace": ns, "target": "ns2://billing/pay-v2", "createTime": created}
    api.ok("POST", base, {"name": "audit", "target": "t"})
    assert [x["name"] for x in api.ok("GET", base)["endpoints"]] == ["audit", "pay"]
    assert api.ok("GET", base)["endpoints"][1] == again
    for body in ({}, {"name": "x"}, {"name": "x", "target": ""}, {"name": "x", "target": 5},
                 {"name": 5, "target": "t"}, {"name": "a/b", "target": "t"}, {"name": "x", "target": "t", "description": []}):
        api.err("POST", base, body, 400, "invalid_argument")
    assert api.ok("DELETE", f"{base}/pay") == {"status": "deleted"}
    api.err("DELETE", f"{base}/pay", None, 404, "not_found")
    assert [x["name"] for x in api.ok("GET", base)["endpoints"]] == ["audit"]


def test_org_nexus_list_spans_namespaces_in_order(api: Api) -> None:
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"org-a-{tag}", f"org-b-{tag}"
    for ns in (ns_b, ns_a):
        api.ok("POST", NSP, {"namespaceInfo": {"name": ns}})
    for ns, name in ((ns_b, "x"), (ns_a, "z"), (ns_a, "m"), (ns_b, "a")):
        api.ok("POST", f"{NSP}/{ns}/nexus", {"name": name, "target": f"t-{ns}-{name}"})
    mine = {ns_a, ns_b}
    for size in (1, 2, 1000):
        all_items = walk(api, "/v1/tasks/nexus", "endpoints", size)
        keys = [(e["namespace"], e["name"]) for e in all_items]
        assert keys == sorted(keys, key=lambda k: (k[0].encode(), k[1].encode())) and len(set(keys)) == len(keys)
        assert [k for k in keys if k[0] in mine] == [(ns_a, "m"), (ns_a, "z"), (ns_b, "a"), (ns_b, "x")]
        assert next(e for e in all_items if e["namespace"] == ns_b and e["name"] == "a")["target"] == f"t-{ns_b}-a"
    # Tokens of one list are refused by the other.
    per_ns = api.ok("GET", f"{NSP}/{ns_a}/nexus?pageSize=1")["nextPageToken"]
    org = api.ok("GET", "/v1/tasks/nexus?pageSize=1")["nextPageToken"]
    assert per_ns and org
    api.err("GET", f"/v1/tasks/nexus?nextPageToken={per_ns}", None, 400, "invalid_argument")
    api.err("GET", f"{NSP}/{ns_a}/nexus?nextPageToken={org}", None, 400, "invalid_argument")
    api.err("GET", "/v1/tasks/nexus?pageSize=0", None, 400, "invalid_argument")
    api.err("GET", "/v1/tasks/nexus?stale=perhaps", None, 400, "invalid_argument")
    assert api.ok("GET", "/v1/tasks/nexus?stale=true&pageSize=1000")["nextPageToken"] == ""
    # A deleted endpoint leaves the org list.
    api.ok("DELETE", f"{NSP}/{ns_a}/nexus/m")
    keys = [(e["namespace"], e["name"]) for e in walk(api, "/v1/tasks/nexus", "endpoints", 3)]
    assert [k for k in keys if k[0] in mine] == [(ns_a, "z"), (ns_b, "a"), (ns_b, "x")]


def test_every_list_pages_with_tokens_bound_to_its_query(api: Api) -> None:
    ns, other = api.new_ns("pg"), api.new_ns("pg")
    names = ["a", "b", "c", "é"]
    for n in reversed(names):
        api.ok("POST", f"{NSP}/{ns}/deployments", {"name": n})
        api.ok("POST", f"{NSP}/{ns}/nexus", {"name": n, "target": "t"})
    deps = walk(api, f"{NSP}/{ns}/deployments", "deployments")
    assert [d["name"] for d in deps] == names
    assert [d["name"] for d in walk(api, f"{NSP}/{ns}/deployments", "deployments", 4)] == names
    assert [e["name"] for e in walk(api, f"{NSP}/{ns}/nexus", "endpoints")] == names
    assert [e["name"] for e in walk(api, f"{NSP}/{ns}/nexus", "endpoints", 3)] == names
    full = api.ok("GET", f"{NSP}/{ns}/deployments?pageSize=4")
    assert len(full["deployments"]) == 4 and full["nextPageToken"] == "", "a full last page ends the list"

    dep_token = api.ok("GET", f"{NSP}/{ns}/deployments?pageSize=1")["nextPageToken"]
    nx_token = api.ok("GET", f"{NSP}/{ns}/nexus?pageSize=1")["nextPageToken"]
    assert api.ok("GET", f"{NSP}/{ns}/deployments?pageSize=1&nextPageToken={dep_token}")["deployments"][0]["name"] == "b"
    for path, token in ((f"{NSP}/{ns}/nexus", dep_token), (f"{NSP}/{ns}/deployments", nx_token),
                        (f"{NSP}/{other}/deployments", dep_token), (f"{NSP}/{other}/nexus", nx_token),
                        (f"{NSP}/{ns}/deployments", "garbage"), (f"{NSP}/{ns}/identities", dep_token)):
        api.err("GET", f"{path}?nextPageToken={token}", None, 400, "invalid_argument")
    for q in ("pageSize=0", "pageSize=1001", "pageSize=x"):
        api.err("GET", f"{NSP}/{ns}/deployments?{q}", None, 400, "invalid_argument")
        api.err("GET", f"{NSP}/{ns}/nexus?{q}", None, 400, "invalid_argument")


# ---- durability ---------------------------------------------------------------------------------


def test_records_survive_a_restart(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n1").start()
    try:
        api = Api(node)
        ns = api.new_ns("keep")
        api.ok("POST", f"{NSP}/{ns}/deployments", {"name": "api", "description": "d"})
        api.ok("POST", f"{NSP}/{ns}/deployments/api/versions", {"buildId": "b1"})
        api.ok("POST", f"{NSP}/{ns}/deployments/api/versions", {"buildId": "b2", "env": {"K": "V"}})
        api.ok("POST", f"{NSP}/{ns}/deployments/api/set-current", {"buildId": "b2"})
        api.ok("POST", f"{NSP}/{ns}/nexus", {"name": "pay", "target": "t", "description": "x"})
        before = (api.ok("GET", f"{NSP}/{ns}/deployments"), api.ok("GET", f"{NSP}/{ns}/nexus"),
                  api.ok("GET", "/v1/tasks/nexus"))
        assert node.stop() == 0
        node.start()
        api = Api(node)
        after = (api.ok("GET", f"{NSP}/{ns}/deployments"), api.ok("GET", f"{NSP}/{ns}/nexus"),
                 api.ok("GET", "/v1/tasks/nexus"))
        assert after == before
        assert before[0]["deployments"][0]["defaultBuildId"] == "b2"
        # and it still takes writes
        api.ok("POST", f"{NSP}/{ns}/deployments/api/set-current", {"buildId": "b1"})
    finally:
        node.kill()
