"""The OpenAPI document (``GET /v1/tasks/openapi.json``) against the route table and SPEC §4.

The document is valid OpenAPI 3.1 (``openapi-spec-validator``); it has exactly
the routes of ``build_router()`` (plus ``/readyz`` and ``/metrics``, answered
before the table), each with its path parameters, its success status and the
error statuses SPEC §4 gives it; and the query parameters it names are the
ones the server reads: a bad value of each is a 400 from a real node, and a
list route that does not name ``pageSize`` does not read it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hanzo_tasks.cluster.api.http import openapi as OPENAPI
from hanzo_tasks.cluster.api.http.server import build_router
from hanzo_tasks.testing import TestNode
from openapi_spec_validator import validate

from tests.cluster.inproc import start_test_node

ROUTER = build_router()
DOC = OPENAPI.document(ROUTER)
METHODS = ("get", "post", "put", "patch", "delete", "head", "options", "trace")
NS = "/v1/tasks/namespaces/{ns}"

# SPEC §4, column "Errors": the statuses a route answers beyond the common ones of §4.1
# (400, 429, 503 everywhere; 401/403 with a role; 404 with path parameters; 413/507 with a body).
# Written from the SPEC, not from openapi.py, so that either can catch the other.
SPEC_EXTRA: dict[tuple[str, str], set[int]] = {
    ("POST", "/v1/tasks/namespaces"): {409},
    ("POST", NS + "/migrate"): {202, 409},
    ("POST", NS + "/workflows"): {409},
    ("POST", NS + "/workflows/signal-with-start"): {409},
    ("POST", NS + "/workflows/{id}/signal"): {409},
    ("POST", NS + "/workflows/{id}/query"): {409, 504},
    ("GET", NS + "/workflows/{id}/result"): {202},
    ("POST", "/v1/tasks/mcp"): {202},
    ("POST", NS + "/schedules"): {409},
    ("POST", NS + "/schedules/{sid}"): {409},
    ("POST", NS + "/schedules/{sid}/trigger"): {409},
    ("POST", NS + "/batches"): {409},
    ("POST", NS + "/deployments"): {409},
    ("DELETE", NS + "/deployments/{name}"): {409},
    ("POST", NS + "/deployments/{name}/versions"): {409},
    ("DELETE", NS + "/deployments/{name}/versions/{buildId}"): {409},
    ("POST", NS + "/search-attributes"): {409},
    ("POST", NS + "/activities"): {409},
    ("POST", NS + "/activities/{aid}/{rid}/cancel"): {409},
    ("POST", NS + "/activities/{aid}/{rid}/complete"): {409},
    ("POST", NS + "/activities/{aid}/{rid}/fail"): {409},
    ("POST", NS + "/activities/{aid}/{rid}/heartbeat"): {409},
    ("POST", "/v1/tasks/cluster/members"): {409},
    ("DELETE", "/v1/tasks/cluster/members/{id}"): {409},
}
OUTSIDE = {("GET", "/readyz"): {200, 503}, ("GET", "/metrics"): {200}}


def _operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m.upper(), path): op for path, item in doc["paths"].items() for m, op in item.items()
            if m in METHODS}


def _expected_statuses(route: Any) -> set[int]:
    params = [p for p in route.parts if p.startswith("{")]
    out = {route.status, 400, 429, 503}
    if route.role is not None:
        out |= {401, 403}
    if params:
        out.add(404)
    if route.method != "GET":
        out |= {413, 507}
    return out | SPEC_EXTRA.get((route.method, route.template), set())


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1")
    validate(DOC)


def test_every_route_is_documented_and_nothing_else() -> None:
    assert OPENAPI.undocumented(ROUTER) == []
    assert OPENAPI.stale(ROUTER) == []
    routed = {(r.method, r.template) for r in ROUTER.routes}
    documented = set(_operations(DOC))
    assert documented - routed == set(OUTSIDE)
    assert routed <= documented
    ids = [op["operationId"] for op in _operations(DOC).values()]
    assert len(ids) == len(set(ids)), "operationIds are unique"


def test_a_route_added_without_documentation_is_reported() -> None:
    router = build_router()
    router.add("GET", "/v1/tasks/brand-new/{x}", ROUTER.routes[0].handler, role=None)
    assert OPENAPI.undocumented(router) == [("GET", "/v1/tasks/brand-new/{x}")]
    op = OPENAPI.document(router)["paths"]["/v1/tasks/brand-new/{x}"]["get"]
    assert op["summary"] == "(undocumented)"
    assert [p["name"] for p in op["parameters"] if p["in"] == "path"] == ["x"]


@pytest.mark.parametrize("route", ROUTER.routes, ids=lambda r: f"{r.method} {r.template}")
def test_each_route_has_its_path_parameters_statuses_and_security(route: Any) -> None:
    op = _operations(DOC)[(route.method, route.template)]
    path_params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
    assert path_params == [p[1:-1] for p in route.parts if p.startswith("{")]
    assert all(p["required"] for p in op.get("parameters", []) if p["in"] == "path")
    assert {int(s) for s in op["responses"]} == _expected_statuses(route)
    assert (route.role is not None) == ("security" in op)
    for status, answer in op["responses"].items():
        if int(status) >= 400:
            assert answer == {"$ref": f"#/components/responses/{status}"}
    query = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
    assert len(query) == len(set(query))
    if route.method == "GET" and "{ns}" in route.parts:
        assert "stale" in query
    if route.method == "POST" and route.template != OPENAPI.PATH:
        assert "requestBody" in op, "every POST reads a JSON body"


def test_the_common_error_responses_are_the_error_body() -> None:
    responses = DOC["components"]["responses"]
    for status in (400, 401, 403, 404, 409, 413, 429, 503):
        schema = responses[str(status)]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}
    error = DOC["components"]["schemas"]["Error"]
    assert error["required"] == ["code", "message"]
    assert set(error["properties"]) == {"code", "message", "details"}


def test_the_main_shapes_are_described() -> None:
    ops = _operations(DOC)
    body = ops[("POST", NS + "/workflows")]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/StartWorkflow"}
    schemas = DOC["components"]["schemas"]
    assert schemas["StartWorkflow"]["required"] == ["workflowType"]
    assert schemas["Signal"]["required"] == ["name"]
    for key, shape in [(("GET", NS + "/workflows/{id}"), "DescribeWorkflow"),
                       (("GET", NS + "/workflows/{id}/result"), "WorkflowResult"),
                       (("GET", NS), "Namespace"), (("POST", NS + "/schedules"), "Schedule")]:
        answer = ops[key]["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer == {"$ref": f"#/components/schemas/{shape}"}
    listing = ops[("GET", NS + "/workflows")]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listing["required"] == ["executions", "nextPageToken"]


# ---------------------------------------------------------------------------
# against a real node


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestNode]:
    n = start_test_node(Path(tmp_path_factory.mktemp("openapi")))
    try:
        yield n
    finally:
        n.stop()


def test_the_node_serves_the_document_without_a_token(node: TestNode) -> None:
    status, body, headers = node.request("GET", OPENAPI.PATH)
    assert status == 200 and headers.get("Content-Type", "").startswith("application/json")
    validate(body)
    assert body["info"]["version"] == node.node.version
    assert body["paths"] == OPENAPI.document(build_router(), node.node.version)["paths"]
    again = node.get(OPENAPI.PATH)
    assert again == (200, body)


def _concrete(template: str) -> str:
    values = {"ns": "default", "rid": "0" * 32, "email": "a@b.c"}
    return "/".join(values.get(p[1:-1], "x1") if p.startswith("{") else p for p in template.split("/"))


PAGED_GETS = [(m, p) for (m, p), op in _operations(DOC).items()
              if m == "GET" and p not in ("/v1/tasks/events", OPENAPI.PATH)]


@pytest.mark.parametrize("key", PAGED_GETS, ids=lambda k: k[1])
def test_the_documented_paging_is_the_paging_the_server_reads(node: TestNode, key: tuple[str, str]) -> None:
    """pageSize=0 is a 400 exactly on the routes whose entry names pageSize."""
    op = _operations(DOC)[key]
    names = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
    status, body = node.get(_concrete(key[1]) + "?pageSize=0")
    if "pageSize" in names:
        assert status == 400 and "pageSize" in body["message"], body
    else:
        assert status != 400 or "pageSize" not in body.get("message", ""), body


@pytest.mark.parametrize("key", [k for k, op in _operations(DOC).items()
                                 if any(p["name"] == "runId" for p in op.get("parameters", []))],
                         ids=lambda k: f"{k[0]} {k[1]}")
def test_a_documented_run_id_is_read_and_checked(node: TestNode, key: tuple[str, str]) -> None:
    method, template = key
    status, body, _ = node.request(method, _concrete(template) + "?runId=not-a-run-id",
                                   body={} if method == "POST" else None)
    assert status == 400, body
