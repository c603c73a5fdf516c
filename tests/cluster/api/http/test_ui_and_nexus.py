"""The static UI route (SPEC §4.2) and the org-wide nexus list (§4.3), on in-process nodes
(``hanzo_tasks.testing``)."""

from __future__ import annotations

import http.client
from pathlib import Path

from hanzo_tasks.testing import TestNode

from tests.cluster.inproc import start_test_node


def raw_get(node: TestNode, path: str) -> tuple[int, bytes, dict[str, str]]:
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body, dict(r.getheaders())


def test_ui_bundle_with_spa_fallback_and_no_escape(tmp_path: Path) -> None:
    ui = tmp_path / "ui"
    (ui / "assets").mkdir(parents=True)
    (ui / "index.html").write_text("<html>tasks</html>")
    (ui / "assets" / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("nope")
    node = start_test_node(tmp_path / "n1", ["--ui-dir", str(ui)])
    try:
        status, _, headers = raw_get(node, "/")
        assert status == 302 and headers["Location"] == "/_/tasks/"
        assert raw_get(node, "/_/tasks/")[1] == b"<html>tasks</html>"
        assert raw_get(node, "/_/tasks/assets/app.js")[1] == b"console.log(1)"
        assert raw_get(node, "/_/tasks/runs/42")[1] == b"<html>tasks</html>"  # SPA route
        for path in ("/_/tasks/../secret.txt", "/_/tasks/%2e%2e/secret.txt", "/_/tasks/..%2Fsecret.txt"):
            status, body, _ = raw_get(node, path)
            assert b"nope" not in body, path
        assert node.get("/v1/tasks/health")[0] == 200  # the API is untouched
    finally:
        node.stop()


def test_without_ui_dir_the_ui_routes_are_404_and_nexus_lists_nothing(inproc_node: TestNode) -> None:
    node = inproc_node
    status, body = node.get("/_/tasks/")
    assert status == 404 and body["code"] == "not_found"
    assert node.get("/")[0] == 404
    assert node.get("/v1/tasks/nexus") == (200, {"endpoints": [], "nextPageToken": ""})
    assert node.get("/v1/tasks/nexus?pageSize=0")[0] == 400
