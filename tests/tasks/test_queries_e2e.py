"""Queries reach the worker running the workflow (real node, real tasks.Worker)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import hanzo_tasks as tasks


def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_query_is_answered_by_the_running_handler() -> None:
    gate = threading.Event()

    def slow() -> str:
        tasks.context().set_query_handler("progress", lambda: {"pct": 42})
        gate.wait(20)
        return "done"

    with tasks.embed() as node:
        client = node.client()
        worker = tasks.Worker(client, "tasks")
        worker.register("slow", slow)
        worker.start()
        try:
            wid = client.now("slow", None)
            url = f"{node.http_url}/v1/tasks/namespaces/default/workflows/{wid}/query"
            deadline = time.monotonic() + 15
            status, body = 0, None
            while time.monotonic() < deadline:
                status, body = post(url, {"queryType": "progress", "timeout": "5s"})
                if status == 200:
                    break
                time.sleep(0.1)
            assert (status, body) == (200, {"queryResult": {"pct": 42}})
            status, body = post(url, {"queryType": "nope"})
            assert status == 400 and body["message"] == "unknown query type"
            status, body = post(url, {"queryType": "__workflow_metadata"})
            assert status == 200 and body["queryResult"]["workflowType"] == "slow"
            gate.set()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                status, body = post(url, {"queryType": "progress"})
                if status == 409:
                    break
                time.sleep(0.1)
            assert status == 409, body  # a closed run answers user queries with 409
        finally:
            gate.set()
            worker.stop()
            client.stop()


def test_query_without_workers_is_503() -> None:
    with tasks.embed() as node:
        client = node.client()
        wid = client.now("nobody.home", None)
        status, body = post(f"{node.http_url}/v1/tasks/namespaces/default/workflows/{wid}/query",
                             {"queryType": "x"})
        assert status == 503 and body["code"] == "no_workers"
        client.stop()
