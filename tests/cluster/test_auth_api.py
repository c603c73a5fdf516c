"""Auth and tenancy through a real ``tasksd`` (SPEC §9, §5.13, §8.3): tokens
on every route but the health ones, roles, org isolation over HTTP, SSE and
ZAP, and the startup errors of a bad key source.

One node with ``auth.require_identity`` and an HS256 key serves the module;
tokens are minted here with PyJWT and the same key. Each test uses its own
orgs, so that tests never see each other's data.
"""

from __future__ import annotations

import http.client
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from hanzo_tasks.protocol.zap import Op

from tests.cluster.api.zap.test_zap_server import Conn, start_zap_node
from tests.support import NodeProcess

SECRET = secrets.token_hex(24).encode()  # 48 bytes


def token(org: Any, role: str | None = None, *, ttl: float = 300, key: bytes = SECRET, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"owner": org, "sub": "tester", "email": "t@example.com", "iat": now,
                            "exp": now + ttl, **claims}
    if org is None:
        del body["owner"]
    if role is not None:
        body["tasks_role"] = role
    return jwt.encode(body, key, algorithm="HS256")


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def org_name(prefix: str = "org") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, tuple[str, int]]]:
    root = tmp_path_factory.mktemp("auth")
    key = root / "jwt.key"
    key.write_bytes(SECRET + b"\n")
    node, zap = start_zap_node(root / "n1", "--auth-require-identity", "--auth-hs256-secret-file", str(key),
                               "--auth-leeway", "0s")
    yield node, zap
    node.kill()


@pytest.fixture
def node(secured: tuple[NodeProcess, tuple[str, int]]) -> NodeProcess:
    return secured[0]


def failures(node: NodeProcess, reason: str) -> float:
    _, text, _ = node.request("GET", "/metrics")
    for line in str(text).splitlines():
        if line.startswith(f'tasks_auth_failures_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def create_namespace(node: NodeProcess, tok: str, ns: str) -> None:
    status, body = node.post("/v1/tasks/namespaces", {"namespaceInfo": {"name": ns}}, headers=bearer(tok))
    assert status == 200, body


def start(node: NodeProcess, tok: str, ns: str, wid: str) -> tuple[int, Any]:
    body = {"workflowId": wid, "workflowType": {"name": "auth.check"}, "taskQueue": {"name": "q"}}
    return node.post(f"/v1/tasks/namespaces/{ns}/workflows", body, headers=bearer(tok))


# ---- HTTP -------------------------------------------------------------------


def test_health_settings_and_metrics_need_no_token(node: NodeProcess) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/v1/tasks/health", "/v1/tasks/cluster/health"):
        assert node.get(path)[0] == 200, path
    status, settings = node.get("/v1/tasks/settings")
    assert status == 200 and settings["authRequired"] is True


@pytest.mark.parametrize("path", ["/v1/tasks/namespaces", "/v1/tasks/cluster", "/v1/tasks/migrations",
                                  "/v1/tasks/namespaces/default/workflows", "/v1/tasks/nexus"])
def test_a_route_without_a_token_is_401_with_the_bearer_challenge(node: NodeProcess, path: str) -> None:
    before = failures(node, "missing")
    status, body, headers = node.request("GET", path)
    assert status == 401 and body["code"] == "unauthenticated", body
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert failures(node, "missing") == before + 1


@pytest.mark.parametrize(("tok", "reason"), [
    (lambda: "not-a-jwt", "malformed"),
    (lambda: token("acme", key=b"x" * 40), "signature"),
    (lambda: token("acme", ttl=-30), "expired"),
    (lambda: token(None), "org"),
    (lambda: token("_"), "org"),
    (lambda: token("acme", "superuser"), "role"),
    (lambda: jwt.encode({"owner": "acme", "exp": int(time.time()) + 60}, None, algorithm="none"), "algorithm"),
], ids=["garbage", "wrong-key", "expired", "no-org", "dev-org-claimed", "unknown-role", "alg-none"])
def test_a_bad_token_is_401_and_counted_by_reason(node: NodeProcess, tok: Any, reason: str) -> None:
    before = failures(node, reason)
    status, body, headers = node.request("GET", "/v1/tasks/namespaces", headers=bearer(tok()))
    assert status == 401 and body["code"] == "unauthenticated", body
    assert headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert failures(node, reason) == before + 1


def test_orgs_are_isolated_and_client_headers_are_ignored(node: NodeProcess) -> None:
    a, b = org_name("a"), org_name("b")
    ta, tb = token(a), token(b)
    create_namespace(node, ta, "shared")
    assert start(node, ta, "shared", "wf-a")[0] == 200
    # The other org sees none of it, even when it claims the org in a header.
    spoof = {**bearer(tb), "X-Org-Id": a, "X-User-Id": "root"}
    status, listed = node.get("/v1/tasks/namespaces", headers=spoof)
    assert status == 200 and "shared" not in [n["namespaceInfo"]["name"] for n in listed["namespaces"]]
    assert node.get("/v1/tasks/namespaces/shared/workflows/wf-a", headers=spoof)[0] == 404
    # ... and has a namespace of the same name of its own.
    create_namespace(node, tb, "shared")
    assert node.get("/v1/tasks/namespaces/shared/workflows/wf-a", headers=bearer(tb))[0] == 404
    status, described = node.get("/v1/tasks/namespaces/shared/workflows/wf-a", headers=bearer(ta))
    assert status == 200 and described["workflowExecutionInfo"]["execution"]["workflowId"] == "wf-a"
    # The cluster view lists the caller's shards only.
    status, info = node.get("/v1/tasks/cluster?pageSize=1000", headers=bearer(ta))
    assert status == 200 and {s["org"] for s in info["namespaces"]} == {a}


@pytest.mark.parametrize(("role", "allowed"), [
    ("viewer", {"read", "query"}),
    ("developer", {"read", "query", "start"}),
    ("admin", {"read", "query", "start", "schedule", "namespace"}),
    ("owner", {"read", "query", "start", "schedule", "namespace"}),
])
def test_roles_gate_routes(node: NodeProcess, role: str, allowed: set[str]) -> None:
    org = org_name(role)
    create_namespace(node, token(org, "admin"), "work")
    tok = bearer(token(org, role))
    wf = "/v1/tasks/namespaces/work/workflows"
    outcomes = {
        "read": node.get(wf, headers=tok)[0],
        # No worker serves the query: 503/404 prove the role check passed.
        "query": node.post(f"{wf}/none/query", {"queryType": "q"}, headers=tok)[0],
        "start": start(node, token(org, role), "work", f"wf-{role}")[0],
        "schedule": node.post("/v1/tasks/namespaces/work/schedules", {
            "scheduleId": f"s-{role}", "spec": {"interval": [{"interval": "1h"}]},
            "action": {"workflowType": {"name": "t"}, "taskQueue": "q"}}, headers=tok)[0],
        "namespace": node.post("/v1/tasks/namespaces", {"namespaceInfo": {"name": f"ns-{role}"}}, headers=tok)[0],
    }
    for what, status in outcomes.items():
        if what in allowed:
            assert status != 403 and status != 401, (what, status)
        else:
            assert status == 403, (what, status)
    # Cluster membership is no org role's, not even the owner's: it takes an operator token.
    status, body = node.post("/v1/tasks/cluster/members", {"nodeId": "n9", "peer": "127.0.0.1:1"}, headers=tok)
    assert status == 403, (status, body)
    operator = bearer(token(org, role, tasks_cluster_admin=True))
    status, body = node.post("/v1/tasks/cluster/members", {"nodeId": "n9", "peer": "127.0.0.1:1"}, headers=operator)
    assert status == 409, (status, body)  # allowed; a single node is not a Raft cluster


def test_a_token_without_a_role_claim_gets_the_default_role(node: NodeProcess) -> None:
    org = org_name("default-role")
    create_namespace(node, token(org), "mine")  # default_role owner may create namespaces


def _sse_status(node: NodeProcess, query: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/v1/tasks/events" + query, headers=headers or {})
        resp = conn.getresponse()
        first = resp.read(26) if resp.status == 200 else resp.read()
        return resp.status, first
    finally:
        conn.close()


def test_sse_takes_the_token_in_the_query_and_refuses_without_one(node: NodeProcess) -> None:
    tok = token(org_name("sse"))
    assert _sse_status(node, "")[0] == 401
    assert _sse_status(node, "?access_token=garbage")[0] == 401
    status, first = _sse_status(node, f"?access_token={tok}")
    assert status == 200 and first.startswith(b": hanzo-tasks event stream")
    assert _sse_status(node, "", bearer(tok))[0] == 200
    # The query token is for the event stream only.
    assert node.get(f"/v1/tasks/namespaces?access_token={tok}")[0] == 401


def test_sse_never_carries_another_orgs_events(node: NodeProcess) -> None:
    mine, theirs = org_name("mine"), org_name("theirs")
    create_namespace(node, token(mine), "ev")
    create_namespace(node, token(theirs), "ev")
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/v1/tasks/events?kinds=workflow.", headers=bearer(token(mine)))
    resp = conn.getresponse()
    assert resp.status == 200
    try:
        assert start(node, token(theirs), "ev", "their-wf")[0] == 200
        assert start(node, token(mine), "ev", "my-wf")[0] == 200
        seen = b""
        deadline = time.monotonic() + 10
        while b"my-wf" not in seen and time.monotonic() < deadline:
            seen += resp.fp.read1(65536)  # type: ignore[union-attr]
        assert b"my-wf" in seen and b"their-wf" not in seen, seen
        assert f'"org_id":"{mine}"'.encode() in seen
    finally:
        conn.close()


def test_identities_give_a_role_in_one_namespace(node: NodeProcess) -> None:
    org = org_name("ids")
    owner = bearer(token(org, "owner"))
    for ns in ("locked", "open"):
        create_namespace(node, token(org), ns)
    base = "/v1/tasks/namespaces/locked/identities"
    # Only an owner manages identities; bad input is 400, not a silent grant.
    assert node.post(base, {"email": "a@x.io", "role": "viewer"}, headers=bearer(token(org, "admin")))[0] == 403
    assert node.post(base, {"email": "a@x.io", "role": "root"}, headers=owner)[0] == 400
    assert node.post(base, {"email": "not-an-email", "role": "viewer"}, headers=owner)[0] == 400
    status, rec = node.post(base, {"email": "Dev@Example.com", "role": "viewer"}, headers=owner)
    assert status == 200 and rec["email"] == "dev@example.com" and rec["role"] == "viewer", rec
    assert rec["namespace"] == "locked" and isinstance(rec["grantTime"], str)
    # An admin of the org whose identity in "locked" is viewer: reads there, no writes;
    # the org role still applies in "open". The email matches case-insensitively.
    dev = token(org, "admin", email="DEV@example.com")
    assert node.get("/v1/tasks/namespaces/locked/workflows", headers=bearer(dev))[0] == 200
    assert start(node, dev, "locked", "w1")[0] == 403
    assert start(node, dev, "open", "w1")[0] == 200
    # A viewer of the org raised to developer in one namespace.
    assert node.post(base, {"email": "v@x.io", "role": "developer"}, headers=owner)[0] == 200
    viewer = token(org, "viewer", email="v@x.io")
    assert start(node, viewer, "locked", "w2")[0] == 200
    assert start(node, viewer, "open", "w2")[0] == 403
    # Listed in email order, paged.
    status, page = node.get(base + "?pageSize=1", headers=owner)
    assert status == 200 and [i["email"] for i in page["identities"]] == ["dev@example.com"], page
    status, rest = node.get(base + "?pageSize=1&nextPageToken=" + page["nextPageToken"], headers=owner)
    assert [i["email"] for i in rest["identities"]] == ["v@x.io"] and rest["nextPageToken"] == "", rest
    # Revoked: the org role applies again.
    status, body, _ = node.request("DELETE", base + "/dev%40example.com", headers=owner)
    assert status == 200 and body == {"status": "revoked"}, body
    assert node.request("DELETE", base + "/dev@example.com", headers=owner)[0] == 404
    assert start(node, dev, "locked", "w3")[0] == 200


# ---- ZAP --------------------------------------------------------------------


def hello(conn: Conn, tok: str | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"client_id": "auth-test", "sdk_name": "pytest", "sdk_version": "1", **extra}
    if tok is not None:
        body["auth_token"] = tok
    return conn.call(Op.Hello, body)


def closed(conn: Conn) -> bool:
    """The server closed the connection (EOF or reset) within 5 s."""
    conn.sock.settimeout(5)
    try:
        return conn.sock.recv(1) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("tok", [None, "garbage", "Bearer garbage"])
def test_zap_hello_without_a_valid_token_is_401_then_closed(secured: Any, tok: str | None) -> None:
    conn = Conn(secured[1], hello=False)
    r = hello(conn, tok)
    assert r["status"] == 401 and r["error"]["code"] == "unauthenticated", r
    assert closed(conn)


def test_zap_requests_before_hello_are_refused(secured: Any) -> None:
    conn = Conn(secured[1], hello=False)
    r = conn.call(Op.Health, {})
    assert r["status"] == 400 and closed(conn)


def test_zap_session_is_scoped_to_the_tokens_org_and_role(secured: Any) -> None:
    node, addr = secured
    org = org_name("zap")
    create_namespace(node, token(org), "zns")
    conn = Conn(addr, hello=False)
    r = hello(conn, "Bearer " + token(org, "developer"), namespace="zns")
    assert r["status"] == 200 and r["body"]["org"] == org, r
    r = conn.call(Op.StartWorkflow, {"workflow_type": "z", "workflow_id": "z-1", "task_queue": "q"})
    assert r["status"] == 200, r
    # Visible to the org over HTTP, not to another org.
    assert node.get("/v1/tasks/namespaces/zns/workflows/z-1", headers=bearer(token(org)))[0] == 200
    assert node.get("/v1/tasks/namespaces/zns/workflows/z-1", headers=bearer(token(org_name())))[0] == 404
    # A developer may not create schedules or namespaces.
    r = conn.call(Op.RegisterNamespace, {"name": "znew"})
    assert r["status"] == 403 and r["error"]["code"] == "permission_denied", r
    # A viewer may read, not write.
    viewer = Conn(addr, hello=False)
    assert hello(viewer, token(org, "viewer"), namespace="zns")["status"] == 200
    assert viewer.call(Op.DescribeWorkflow, {"workflow_id": "z-1"})["status"] == 200
    r = viewer.call(Op.StartWorkflow, {"workflow_type": "z", "workflow_id": "z-2", "task_queue": "q"})
    assert r["status"] == 403, r
    r = viewer.call(Op.SubscribeWorkflowTasks, {"task_queue": "q", "max_concurrent": 1})
    assert r["status"] == 403, r


def test_zap_applies_the_identity_of_the_requests_namespace(secured: Any) -> None:
    node, addr = secured
    org = org_name("zid")
    create_namespace(node, token(org), "zlocked")
    status, _ = node.post("/v1/tasks/namespaces/zlocked/identities", {"email": "w@x.io", "role": "viewer"},
                          headers=bearer(token(org)))
    assert status == 200
    conn = Conn(addr, hello=False)
    assert hello(conn, token(org, "developer", email="w@x.io"))["status"] == 200
    r = conn.call(Op.StartWorkflow, {"namespace": "zlocked", "workflow_type": "z", "workflow_id": "i", "task_queue": "q"})
    assert r["status"] == 403, r
    r = conn.call(Op.StartWorkflow, {"namespace": "default", "workflow_type": "z", "workflow_id": "i", "task_queue": "q"})
    assert r["status"] == 200, r


def test_zap_rehello_refreshes_the_token_but_cannot_change_the_org(secured: Any) -> None:
    node, addr = secured
    org, other = org_name("keep"), org_name("other")
    create_namespace(node, token(org), "kns")
    conn = Conn(addr, hello=False)
    assert hello(conn, token(org), namespace="kns")["status"] == 200
    r = hello(conn, token(other))
    assert r["status"] == 403 and r["error"]["code"] == "permission_denied", r
    # The session still acts for its org.
    r = conn.call(Op.StartWorkflow, {"workflow_type": "z", "workflow_id": "k-1", "task_queue": "q"})
    assert r["status"] == 200, r
    assert node.get("/v1/tasks/namespaces/kns/workflows/k-1", headers=bearer(token(org)))[0] == 200


def test_zap_expired_session_gets_401_until_a_fresh_hello(secured: Any) -> None:
    node, addr = secured
    org = org_name("exp")
    create_namespace(node, token(org), "ens")
    conn = Conn(addr, hello=False)
    assert hello(conn, token(org, ttl=2), namespace="ens")["status"] == 200
    assert conn.call(Op.Health, {})["status"] == 200
    time.sleep(2.5)
    r = conn.call(Op.Health, {})
    assert r["status"] == 401 and r["error"]["message"] == "token expired", r
    assert hello(conn, token(org))["status"] == 200  # the session stays open and recovers
    assert conn.call(Op.Health, {})["status"] == 200


# ---- startup ----------------------------------------------------------------


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "hanzo_tasks.cluster.cli", "serve", "--http", "127.0.0.1:0", "--zap", "127.0.0.1:0",
           "--data-dir", str(tmp_path / "d"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_a_short_hs256_secret_is_a_startup_error(tmp_path: Path) -> None:
    key = tmp_path / "short.key"
    key.write_bytes(b"k" * 31 + b"\n")
    out = _serve(tmp_path, "--auth-require-identity", "--auth-hs256-secret-file", str(key))
    assert out.returncode == 2 and "32" in out.stderr, out.stderr


def test_auth_without_a_key_source_is_a_startup_error(tmp_path: Path) -> None:
    out = _serve(tmp_path, "--auth-require-identity")
    assert out.returncode == 2 and "key source" in out.stderr, out.stderr


# ---- a cluster ----------------------------------------------------------------


def test_a_forwarded_request_keeps_the_callers_org_and_role(tmp_path: Path) -> None:
    """Every node serves every namespace, forwarding to a replica with the
    caller's verified org (SPEC §9 "Peers"): isolation holds across nodes."""
    from tests.cluster.raft_support import Cluster

    key = tmp_path / "jwt.key"
    key.write_bytes(SECRET)
    c = Cluster(tmp_path / "c", extra=["--auth-require-identity", "--auth-hs256-secret-file", str(key)])
    try:
        c.start()
        n1, n2, n3 = (c.nodes[i] for i in c.ids)
        a, b = org_name("a"), org_name("b")
        spaces = [f"ns{i}" for i in range(6)]  # spread over the partitions
        def settled(call: Any) -> tuple[int, Any]:
            """A partition may still be electing its first leader: 503 means retry."""
            for _ in range(100):
                status, body = call()
                if status != 503:
                    return status, body
                time.sleep(0.2)
            return status, body

        for ns in spaces:
            assert settled(lambda ns=ns: n1.post("/v1/tasks/namespaces", {"namespaceInfo": {"name": ns}},
                                                 headers=bearer(token(a))))[0] == 200
            assert settled(lambda ns=ns: start(n2, token(a), ns, f"wf-{ns}"))[0] == 200
        for ns in spaces:
            path = f"/v1/tasks/namespaces/{ns}/workflows/wf-{ns}"
            assert settled(lambda p=path: n3.get(p, headers=bearer(token(a))))[0] == 200
            assert settled(lambda p=path: n3.get(p, headers=bearer(token(b))))[0] == 404
            assert settled(lambda ns=ns: start(n3, token(a, "viewer"), ns, "nope"))[0] == 403
        status, listed = n2.get("/v1/tasks/namespaces?pageSize=1000", headers=bearer(token(b)))
        # Every org has its own "default" namespace; none of a's shows.
        assert status == 200 and [n["namespaceInfo"]["name"] for n in listed["namespaces"]] == ["default"], listed
        status, listed = n3.get("/v1/tasks/namespaces?pageSize=1000", headers=bearer(token(a)))
        assert sorted(n["namespaceInfo"]["name"] for n in listed["namespaces"]) == ["default", *spaces]
    finally:
        c.kill_all()
