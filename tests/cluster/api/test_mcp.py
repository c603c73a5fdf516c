"""MCP on ``POST /v1/tasks/mcp`` through real nodes in this process (SPEC §7; ``hanzo_tasks.testing``).

Three angles: the official ``mcp`` client (initialize, list and call tools),
raw HTTP for the transport rules the client never exercises (405, 202,
batches, parse errors, version headers, argument checking), a second node
with auth on for roles (§5.13) and org isolation, and ``h_mcp`` served
in-process on a fake node for what a real node cannot be made to do (a bug,
a tiny ``max_body``). Every test works on its own
ids, so the module shares one node of each kind.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import secrets
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hanzo_tasks.cluster.api import mcp as MCP_MODULE
from hanzo_tasks.cluster.api.http.server import NODE_KEY, Call, error_response
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.testing import TestNode
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from prometheus_client import CollectorRegistry, Counter

from tests.cluster.inproc import start_test_node

# SPEC §7 names ``streamablehttp_client``; mcp 1.30 deprecates it for ``streamable_http_client``.
pytestmark = pytest.mark.filterwarnings("ignore:Use `streamable_http_client` instead:DeprecationWarning")
MCP = "/v1/tasks/mcp"
SECRET = secrets.token_hex(24).encode()  # 48 bytes
TOOLS = {
    "list_namespaces", "describe_namespace", "list_workflows", "describe_workflow", "start_workflow",
    "signal_workflow", "cancel_workflow", "terminate_workflow", "get_workflow_history", "list_schedules",
    "create_schedule", "pause_schedule", "trigger_schedule", "cluster_status",
}


# ---------------------------------------------------------------------------
# plumbing


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestNode]:
    n = start_test_node(tmp_path_factory.mktemp("mcp") / "n1")
    yield n
    n.stop()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestNode]:
    root = tmp_path_factory.mktemp("mcp-auth")
    key = root / "jwt.key"
    key.write_bytes(SECRET)
    n = start_test_node(root / "n1", ["--auth-require-identity", "--auth-hs256-secret-file", str(key)])
    yield n
    n.stop()


def token(org: str, role: str, **claims: Any) -> str:
    return jwt.encode({"owner": org, "tasks_role": role, "exp": int(time.time()) + 300, **claims},
                      SECRET, algorithm="HS256")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def send(node: TestNode, method: str, path: str = MCP, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, http.client.HTTPMessage]:
    """One raw request; a JSON body is parsed, an empty one is b""."""
    u = urlsplit(node.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    return resp.status, (json.loads(payload) if payload else b""), resp.headers


def rpc(node: TestNode, method: str, params: Any = None, *, tok: str | None = None,
        headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A JSON-RPC request that must get HTTP 200 with a response of the same id."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": 7, "method": method}
    if params is not None:
        msg["params"] = params
    h = dict(headers or {})
    if tok:
        h["Authorization"] = f"Bearer {tok}"
    status, body, hdrs = send(node, "POST", body=msg, headers=h)
    assert status == 200, body
    assert hdrs["Content-Type"].startswith("application/json")
    assert body["jsonrpc"] == "2.0" and body["id"] == 7, body
    return body


def call(node: TestNode, name: str, args: dict[str, Any], tok: str | None = None) -> dict[str, Any]:
    """tools/call that must give a tool result (not a JSON-RPC error)."""
    body = rpc(node, "tools/call", {"name": name, "arguments": args}, tok=tok)
    assert "result" in body, body
    return body["result"]


def ok(result: dict[str, Any]) -> Any:
    assert result["isError"] is False, result
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
    return result["structuredContent"]


def engine_error(result: dict[str, Any]) -> str:
    assert result["isError"] is True, result
    assert "structuredContent" not in result
    err = json.loads(result["content"][0]["text"])
    assert err["message"]
    return err["code"]


def with_client(node: TestNode, fn: Any, headers: dict[str, str] | None = None) -> Any:
    """Run ``fn(session)`` in an initialized official-client session; the client
    waits forever for a reply it cannot match, so a deadline turns that into a failure."""

    async def main() -> Any:
        async with streamablehttp_client(node.url + MCP, headers=headers) as (read, write, _):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                assert init.protocolVersion == "2025-06-18"
                return await fn(session)

    return asyncio.run(asyncio.wait_for(main(), 15))


def structured(res: Any) -> dict[str, Any]:
    assert res.isError is False, res.content
    assert isinstance(res.structuredContent, dict)
    return res.structuredContent


# ---------------------------------------------------------------------------
# the official client


def test_client_initializes_and_lists_every_tool(node: TestNode) -> None:
    async def go(session: ClientSession) -> None:
        assert session.get_server_capabilities().tools.listChanged is False
        tools = (await session.list_tools()).tools
        assert {t.name for t in tools} == TOOLS
        assert all(t.description for t in tools)

    with_client(node, go)


def test_client_workflow_tools(node: TestNode) -> None:
    wid = uid("mcp-wf")

    async def go(session: ClientSession) -> None:
        started = structured(await session.call_tool("start_workflow", {
            "namespace": "default", "workflow_type": "charge", "workflow_id": wid, "task_queue": "q1",
            "input": {"amount": [1, 2.5, None]}, "request_id": "r-" + wid}))
        assert started["execution"]["workflowId"] == wid and started["started"] is True
        run_id = started["execution"]["runId"]
        again = structured(await session.call_tool("start_workflow", {
            "namespace": "default", "workflow_type": "charge", "workflow_id": wid, "request_id": "r-" + wid}))
        assert again["execution"]["runId"] == run_id and again["started"] is False

        d = structured(await session.call_tool("describe_workflow", {"namespace": "default", "workflow_id": wid}))
        info = d["workflowExecutionInfo"]
        assert info["execution"] == {"workflowId": wid, "runId": run_id}
        assert info["input"] == {"amount": [1, 2.5, None]}
        assert d["executionConfig"]["taskQueue"]["name"] == "q1"

        listed = structured(await session.call_tool("list_workflows", {
            "namespace": "default", "query": f"WorkflowId = '{wid}'", "page_size": 10}))
        assert [e["execution"]["workflowId"] for e in listed["executions"]] == [wid]
        assert listed["nextPageToken"] == ""

        assert structured(await session.call_tool("signal_workflow", {
            "namespace": "default", "workflow_id": wid, "signal_name": "poke", "input": 1})) == {"status": "signaled"}
        hist = structured(await session.call_tool("get_workflow_history", {
            "namespace": "default", "workflow_id": wid, "run_id": run_id, "reverse": True}))
        assert set(hist) == {"events", "nextPageToken"}
        types = [e["eventType"] for e in hist["events"]]
        assert types[-1] == "WORKFLOW_EXECUTION_STARTED"
        assert "WORKFLOW_EXECUTION_SIGNALED" in types

        term = structured(await session.call_tool("terminate_workflow", {
            "namespace": "default", "workflow_id": wid, "reason": "done"}))
        assert term["status"] == "WORKFLOW_EXECUTION_STATUS_TERMINATED"

        other = structured(await session.call_tool("start_workflow", {"namespace": "default", "workflow_type": "t"}))
        oid = other["execution"]["workflowId"]
        assert oid.startswith("t-")
        canceled = structured(await session.call_tool("cancel_workflow", {
            "namespace": "default", "workflow_id": oid, "run_id": other["execution"]["runId"], "reason": "stop"}))
        assert canceled["execution"]["workflowId"] == oid
        assert canceled["status"] != "WORKFLOW_EXECUTION_STATUS_TERMINATED"

        missing = await session.call_tool("describe_workflow", {"namespace": "default", "workflow_id": uid("nope")})
        assert missing.isError is True and missing.structuredContent is None
        assert json.loads(missing.content[0].text)["code"] == "not_found"

    with_client(node, go)


def test_client_schedule_and_cluster_tools(node: TestNode) -> None:
    every, cron = uid("mcp-every"), uid("mcp-cron")

    async def go(session: ClientSession) -> None:
        s1 = structured(await session.call_tool("create_schedule", {
            "namespace": "default", "schedule_id": every, "workflow_type": "tick", "spec": "1h",
            "input": {"n": 1}, "overlap_policy": "allow_all"}))
        assert s1["scheduleId"] == every
        assert s1["spec"]["interval"][0]["interval"] == "1h" and not s1["spec"].get("cronString")
        assert s1["action"]["taskQueue"] == "default" and s1["action"]["input"] == {"n": 1}
        assert s1["policies"]["overlapPolicy"] == "SCHEDULE_OVERLAP_POLICY_ALLOW_ALL"
        s2 = structured(await session.call_tool("create_schedule", {
            "namespace": "default", "schedule_id": cron, "workflow_type": "nightly", "spec": " 0 3 * * * ",
            "paused": True}))
        assert s2["spec"]["cronString"] == ["0 3 * * *"] and not s2["spec"].get("interval")
        assert s2["state"]["paused"] is True

        dup = await session.call_tool("create_schedule", {
            "namespace": "default", "schedule_id": every, "workflow_type": "tick", "spec": "1h"})
        assert dup.isError is True and json.loads(dup.content[0].text)["code"] == "already_exists"
        bad = await session.call_tool("create_schedule", {
            "namespace": "default", "schedule_id": uid("bad"), "workflow_type": "tick", "spec": "1d"})
        assert bad.isError is True and json.loads(bad.content[0].text)["code"] == "invalid_argument"

        paused = structured(await session.call_tool("pause_schedule", {
            "namespace": "default", "schedule_id": every, "paused": True, "note": "maintenance"}))
        assert paused == {"status": "paused"}
        listed = structured(await session.call_tool("list_schedules", {"namespace": "default"}))
        mine = {s["scheduleId"]: s for s in listed["schedules"]}
        assert mine[every]["state"] == {**mine[every]["state"], "paused": True, "note": "maintenance"}
        resumed = structured(await session.call_tool("pause_schedule", {
            "namespace": "default", "schedule_id": cron, "paused": False}))
        assert resumed == {"status": "running"}

        fired = structured(await session.call_tool("trigger_schedule", {"namespace": "default", "schedule_id": every}))
        assert fired["status"] == "triggered"
        assert fired["execution"]["execution"]["workflowId"].startswith(every + "-")

        cl = structured(await session.call_tool("cluster_status", {}))
        assert cl["nodeId"] == "t1" and cl["replicator"] == "local"
        assert any(n["namespace"] == "default" for n in cl["namespaces"])

    with_client(node, go)


# ---------------------------------------------------------------------------
# transport rules, over raw HTTP


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_only_post(node: TestNode, method: str) -> None:
    status, body, hdrs = send(node, method)
    assert status == 405 and hdrs["Allow"] == "POST" and body["code"] == "method_not_allowed"


@pytest.mark.parametrize("msg", [
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
    {"jsonrpc": "2.0", "id": 3, "result": {}},
])
def test_notifications_and_responses_get_202_and_no_body(node: TestNode, msg: dict[str, Any]) -> None:
    status, body, _ = send(node, "POST", body=msg)
    assert (status, body) == (202, b"")


def test_batch_is_invalid_request(node: TestNode) -> None:
    status, body, _ = send(node, "POST", body=[{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
    assert status == 200 and body["id"] is None and body["error"]["code"] == -32600


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"jsonrpc":"2.0","id":1,"method":"ping","x":NaN}'])
def test_parse_error(node: TestNode, raw: bytes) -> None:
    status, body, _ = send(node, "POST", raw=raw)
    assert status == 200 and body["id"] is None and body["error"]["code"] == -32700


@pytest.mark.parametrize("msg", [
    {"jsonrpc": "2.0", "id": 1},
    {"jsonrpc": "1.0", "id": 1, "method": "ping"},
    {"jsonrpc": "2.0", "id": True, "method": "ping"},
    "just a string",
])
def test_malformed_request_is_invalid_request(node: TestNode, msg: Any) -> None:
    status, body, _ = send(node, "POST", body=msg)
    assert status == 200 and body["error"]["code"] == -32600, body


def test_unknown_method(node: TestNode) -> None:
    assert rpc(node, "resources/list")["error"]["code"] == -32601


def test_ping(node: TestNode) -> None:
    body = rpc(node, "ping")
    assert body["result"] == {} and "error" not in body


@pytest.mark.parametrize(("asked", "answered"), [
    ("2025-06-18", "2025-06-18"), ("2025-03-26", "2025-03-26"), ("2099-01-01", "2025-06-18"), (None, "2025-06-18"),
])
def test_initialize_negotiates_the_version(node: TestNode, asked: str | None, answered: str) -> None:
    params: dict[str, Any] = {"capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    if asked:
        params["protocolVersion"] = asked
    status, body, hdrs = send(node, "POST", body={"jsonrpc": "2.0", "id": "i", "method": "initialize",
                                                  "params": params})
    assert status == 200 and "Mcp-Session-Id" not in hdrs and hdrs["X-Tasks-Node"] == "t1"
    res = body["result"]
    assert res["protocolVersion"] == answered
    assert res["capabilities"] == {"tools": {"listChanged": False}}
    assert res["serverInfo"]["name"] == "hanzo-tasks" and res["serverInfo"]["version"]


def test_protocol_version_header(node: TestNode) -> None:
    for good in ("2025-06-18", "2025-03-26"):
        assert rpc(node, "ping", headers={"MCP-Protocol-Version": good})["result"] == {}
    status, body, hdrs = send(node, "POST", body={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                              headers={"MCP-Protocol-Version": "1999-01-01"})
    assert status == 400 and body["code"] == "invalid_argument"
    assert hdrs["Content-Type"].startswith("application/json")


def test_every_tool_schema_is_closed(node: TestNode) -> None:
    tools = rpc(node, "tools/list")["result"]["tools"]
    assert {t["name"] for t in tools} == TOOLS
    for t in tools:
        s = t["inputSchema"]
        assert s["type"] == "object" and s["additionalProperties"] is False, t["name"]
        assert isinstance(s["required"], list) and set(s["required"]) <= set(s["properties"]), t["name"]
    by_name = {t["name"]: t["inputSchema"] for t in tools}
    assert by_name["create_schedule"]["required"] == ["namespace", "schedule_id", "workflow_type", "spec"]
    assert by_name["pause_schedule"]["properties"]["paused"]["type"] == "boolean"


def test_unknown_tool(node: TestNode) -> None:
    body = rpc(node, "tools/call", {"name": "drop_database", "arguments": {}})
    assert body["error"]["code"] == -32602 and "drop_database" in body["error"]["message"]


@pytest.mark.parametrize(("args", "word"), [
    ({"namespace": "default"}, "workflow_type"),                                      # missing required
    ({"namespace": "default", "workflow_type": 5}, "workflow_type"),                  # wrong type
    ({"namespace": "default", "workflow_type": "x", "workflowType": "x"}, "workflowType"),  # extra property
    ({"namespace": 1, "workflow_type": "x"}, "namespace"),
    ({"namespace": "default", "workflow_type": "x", "request_id": None}, "request_id"),
])
def test_bad_arguments(node: TestNode, args: dict[str, Any], word: str) -> None:
    body = rpc(node, "tools/call", {"name": "start_workflow", "arguments": args})
    assert body["error"]["code"] == -32602 and word in body["error"]["message"], body


@pytest.mark.parametrize("size", [0, 1001, True, "10"])
def test_bad_page_size(node: TestNode, size: Any) -> None:
    body = rpc(node, "tools/call", {"name": "list_namespaces", "arguments": {"page_size": size}})
    assert body["error"]["code"] == -32602, body
    assert ok(call(node, "list_namespaces", {"page_size": 1000}))["namespaces"]


def test_arguments_must_be_an_object(node: TestNode) -> None:
    body = rpc(node, "tools/call", {"name": "cluster_status", "arguments": [1]})
    assert body["error"]["code"] == -32602
    assert ok(call(node, "cluster_status", {}))["nodeId"] == "t1"


def test_engine_value_errors_are_tool_results(node: TestNode) -> None:
    """Values the schema cannot judge (a bad namespace, a bad run id) are the engine's to reject."""
    assert engine_error(call(node, "describe_namespace", {"name": "a/b"})) == "invalid_argument"
    assert engine_error(call(node, "describe_workflow", {
        "namespace": "default", "workflow_id": "x", "run_id": "not-hex"})) == "invalid_argument"
    assert engine_error(call(node, "describe_namespace", {"name": uid("none")})) == "not_found"


def test_mcp_calls_are_counted(node: TestNode) -> None:
    def count(outcome: str) -> float:
        _, text, _ = node.request("GET", "/metrics")
        for line in str(text).splitlines():
            if line.startswith(f'tasks_mcp_calls_total{{outcome="{outcome}",tool="cluster_status"}}'):
                return float(line.split()[-1])
        return 0.0

    before = count("ok")
    ok(call(node, "cluster_status", {}))
    assert count("ok") == before + 1


def _in_process(messages: list[bytes]) -> list[tuple[int, Any]]:
    """POST each body to ``h_mcp`` served in-process by a fake node whose
    ``cluster_info`` has a bug and whose ``limits.max_body`` is 1 KiB."""

    async def broken(*_: Any) -> Any:
        raise RuntimeError("boom")

    node = SimpleNamespace(
        node_id="f1", version="0", cfg=SimpleNamespace(limits=SimpleNamespace(max_body=1024)),
        auth=SimpleNamespace(enabled=False), cluster_info=broken,
        metrics=SimpleNamespace(mcp_calls=Counter("c", "c", ["tool", "outcome"], registry=CollectorRegistry())),
    )

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await MCP_MODULE.h_mcp(None, Call(request, {}, org="_"))
        except ApiError as e:
            return error_response(e, "f1")

    async def main() -> list[tuple[int, Any]]:
        app = web.Application()
        app[NODE_KEY] = node
        app.router.add_post(MCP, handle)
        async with TestClient(TestServer(app)) as client:
            out = []
            for raw in messages:
                resp = await client.post(MCP, data=raw)
                out.append((resp.status, await resp.json()))
            return out

    return asyncio.run(main())


def test_a_bug_is_internal_error_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    msg = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "cluster_status", "arguments": {}}}
    with caplog.at_level(logging.ERROR, logger="tasks.mcp"):
        [(status, body)] = _in_process([json.dumps(msg).encode()])
    assert status == 200 and body["id"] == 9 and body["error"]["code"] == -32603
    assert "boom" not in body["error"]["message"]
    assert any(r.name == "tasks.mcp" and r.exc_info for r in caplog.records)


def test_body_over_max_body_is_413() -> None:
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"_meta": {"pad": "x" * 900}}}
    big = {**ping, "params": {"_meta": {"pad": "x" * 2000}}}
    (s1, b1), (s2, b2) = _in_process([json.dumps(ping).encode(), json.dumps(big).encode()])
    assert (s1, b1["result"]) == (200, {})
    assert s2 == 413 and b2["code"] == "too_large"


# ---------------------------------------------------------------------------
# auth on: roles and org isolation


def test_no_token_is_plain_401(secured: TestNode) -> None:
    status, body, hdrs = send(secured, "POST", body={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert status == 401 and body["code"] == "unauthenticated" and "jsonrpc" not in body
    assert hdrs["WWW-Authenticate"].startswith("Bearer")


def test_roles_per_tool(secured: TestNode) -> None:
    org = uid("org")
    viewer, developer, admin = (token(org, r) for r in ("viewer", "developer", "admin"))
    wid = uid("wf")
    args = {"namespace": "default", "workflow_type": "t", "workflow_id": wid}
    assert engine_error(call(secured, "start_workflow", args, viewer)) == "permission_denied"
    assert ok(call(secured, "list_workflows", {"namespace": "default"}, viewer))["executions"] == []
    assert ok(call(secured, "start_workflow", args, developer))["started"] is True
    assert ok(call(secured, "describe_workflow", {"namespace": "default", "workflow_id": wid}, viewer))

    sched = {"namespace": "default", "schedule_id": uid("s"), "workflow_type": "t", "spec": "1h"}
    assert engine_error(call(secured, "create_schedule", sched, developer)) == "permission_denied"
    assert ok(call(secured, "create_schedule", sched, admin))["scheduleId"] == sched["schedule_id"]
    assert engine_error(call(secured, "trigger_schedule", {
        "namespace": "default", "schedule_id": sched["schedule_id"]}, developer)) == "permission_denied"


def test_identity_record_sets_the_role_in_its_namespace(secured: TestNode) -> None:
    org, email = uid("org"), "dev@example.com"
    owner = token(org, "owner")
    status, body, _ = send(secured, "POST", "/v1/tasks/namespaces/default/identities",
                           {"email": email, "role": "viewer"}, headers={"Authorization": f"Bearer {owner}"})
    assert status == 200, body
    dev = token(org, "developer", email=email)
    args = {"namespace": "default", "workflow_type": "t"}
    assert engine_error(call(secured, "start_workflow", args, dev)) == "permission_denied"
    assert ok(call(secured, "start_workflow", args, token(org, "developer", email="other@example.com")))


def test_orgs_see_only_their_own(secured: TestNode) -> None:
    a, b = uid("orga"), uid("orgb")
    ta, tb = token(a, "admin"), token(b, "admin")
    ns = uid("ns")
    status, body, _ = send(secured, "POST", "/v1/tasks/namespaces", {"namespaceInfo": {"name": ns}},
                           headers={"Authorization": f"Bearer {ta}"})
    assert status == 200, body
    wid = uid("wf")
    ok(call(secured, "start_workflow", {"namespace": "default", "workflow_type": "t", "workflow_id": wid}, ta))

    assert ns in {n["namespaceInfo"]["name"] for n in ok(call(secured, "list_namespaces", {}, ta))["namespaces"]}
    assert ns not in {n["namespaceInfo"]["name"] for n in ok(call(secured, "list_namespaces", {}, tb))["namespaces"]}
    assert engine_error(call(secured, "describe_namespace", {"name": ns}, tb)) == "not_found"
    seen = ok(call(secured, "list_workflows", {"namespace": "default"}, ta))["executions"]
    assert [e["execution"]["workflowId"] for e in seen] == [wid]
    assert ok(call(secured, "list_workflows", {"namespace": "default"}, tb))["executions"] == []
    assert engine_error(call(secured, "describe_workflow", {"namespace": "default", "workflow_id": wid}, tb)) \
        == "not_found"
    cl = ok(call(secured, "cluster_status", {}, tb))
    assert {n["org"] for n in cl["namespaces"]} <= {b}


def test_official_client_with_a_bearer_token(secured: TestNode) -> None:
    tok = token(uid("org"), "viewer")

    async def go(session: ClientSession) -> None:
        res = await session.call_tool("start_workflow", {"namespace": "default", "workflow_type": "t"})
        assert res.isError is True and json.loads(res.content[0].text)["code"] == "permission_denied"
        assert structured(await session.call_tool("list_namespaces", {}))["namespaces"]

    with_client(secured, go, headers={"Authorization": f"Bearer {tok}"})
