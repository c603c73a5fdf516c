"""An embedded node runs a worker's workflow (async, on the worker's event loop), which runs an
activity (sync, on a thread), to completion: the client library and the server on one Python."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import hanzo_tasks as tasks
import pytest

from tests.quick import OUR_DEPRECATIONS_ARE_ERRORS

pytestmark = pytest.mark.filterwarnings(OUR_DEPRECATIONS_ARE_ERRORS)


def describe(http_url: str, workflow_id: str) -> dict[str, Any]:
    url = f"{http_url}/v1/tasks/namespaces/default/workflows/{workflow_id}"
    with urllib.request.urlopen(url, timeout=10) as r:
        info: dict[str, Any] = json.loads(r.read())["workflowExecutionInfo"]
    return info


def test_embedded_node_runs_a_workers_workflow_and_activity() -> None:
    charged: list[int] = []

    def charge(amount: int) -> dict[str, int]:
        charged.append(amount)
        return {"charged": amount * 100}

    async def order(payload: dict[str, Any]) -> dict[str, Any]:
        receipt = await tasks.context().aexecute_activity("charge", payload["amount"])
        return {"for": payload["to"], "receipt": receipt}

    with tasks.embed() as node:
        client = node.client()
        worker = tasks.Worker(client, "tasks")
        worker.register("order", order)
        worker.register_activity("charge", charge)
        worker.start()
        try:
            wid = client.now("order", {"to": "ada", "amount": 7}, workflow_id="order-1")
            assert wid == "order-1"
            deadline = time.monotonic() + 30
            info = describe(node.http_url, wid)
            while info["status"].endswith("RUNNING") and time.monotonic() < deadline:
                time.sleep(0.05)
                info = describe(node.http_url, wid)
            assert info["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED", info
            assert info["result"] == {"for": "ada", "receipt": {"charged": 700}}
            assert charged == [7]
        finally:
            worker.stop()
            client.stop()
