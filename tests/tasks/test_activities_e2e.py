"""Standalone activities end to end (SPEC §4.8, §5.7): HTTP start, real tasks.Worker, retries."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import hanzo_tasks as tasks


def call(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_closed(url: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        status, body = call("GET", url)
        assert status == 200, body
        if body["status"] not in ("ACTIVITY_TASK_STATE_SCHEDULED", "ACTIVITY_TASK_STATE_STARTED"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"activity still open: {body}")


def test_worker_runs_standalone_activities_with_retries() -> None:
    calls: list[int] = []

    def charge(amount: int) -> dict[str, int]:
        return {"charged": amount * 2}

    def flaky() -> None:
        calls.append(1)
        raise ValueError("card declined")

    with tasks.embed() as node:
        client = node.client()
        worker = tasks.Worker(client, "tasks")
        worker.register_activity("charge", charge)
        worker.register_activity("flaky", flaky)
        worker.start()
        base = f"{node.http_url}/v1/tasks/namespaces/default/activities"
        try:
            status, rec = call("POST", base, {"activityId": "pay-1", "activityType": {"name": "charge"},
                                              "taskQueue": "tasks", "input": 21, "requestId": "req-1"})
            assert status == 200 and rec["started"] is True, rec
            rid = rec["execution"]["runId"]
            done = wait_closed(f"{base}/pay-1/{rid}")
            assert done["status"] == "ACTIVITY_TASK_STATE_COMPLETED" and done["result"] == {"charged": 42}
            status, hist = call("GET", f"{base}/pay-1/{rid}/history")
            assert [e["eventType"] for e in hist["events"]] == [
                "ACTIVITY_TASK_SCHEDULED", "ACTIVITY_TASK_STARTED", "ACTIVITY_TASK_COMPLETED"]
            # the same requestId returns the earlier run
            status, again = call("POST", base, {"activityId": "pay-1", "activityType": {"name": "charge"},
                                                "taskQueue": "tasks", "requestId": "req-1"})
            assert status == 200 and again["started"] is False and again["execution"]["runId"] == rid

            status, rec = call("POST", base, {
                "activityId": "flaky-1", "activityType": {"name": "flaky"}, "taskQueue": "tasks",
                "retryPolicy": {"initialInterval": "100ms", "maximumAttempts": 3}})
            assert status == 200, rec
            frid = rec["execution"]["runId"]
            done = wait_closed(f"{base}/flaky-1/{frid}")
            assert done["status"] == "ACTIVITY_TASK_STATE_FAILED" and done["attempt"] == 3
            assert done["lastFailure"]["message"] == "card declined" and len(calls) == 3
            status, hist = call("GET", f"{base}/flaky-1/{frid}/history")
            types = [e["eventType"] for e in hist["events"]]
            assert types == ["ACTIVITY_TASK_SCHEDULED"] + ["ACTIVITY_TASK_STARTED", "ACTIVITY_TASK_FAILED"] * 3
            assert [e["attributes"]["retryState"] for e in hist["events"] if e["eventType"].endswith("FAILED")] == [
                "IN_PROGRESS", "IN_PROGRESS", "MAXIMUM_ATTEMPTS_REACHED"]
        finally:
            worker.stop()
            client.stop()


def test_http_routes_act_without_tokens() -> None:
    with tasks.embed() as node:
        base = f"{node.http_url}/v1/tasks/namespaces/default/activities"

        def start(aid: str, **extra: Any) -> str:
            status, rec = call("POST", base, {"activityId": aid, "activityType": {"name": "x"},
                                              "taskQueue": "nobody", **extra})
            assert status == 200 and rec["status"] == "ACTIVITY_TASK_STATE_SCHEDULED", rec
            return rec["execution"]["runId"]

        assert call("POST", base, {"activityType": {"name": "x"}})[0] == 400
        assert call("POST", base, {"activityId": "a", "activityType": {"name": "x"},
                                   "startToCloseTimeout": "never"})[0] == 400
        r1 = start("a1", runId="0123456789abcdef0123456789abcdef")
        assert call("POST", base, {"activityId": "a1", "activityType": {"name": "x"}, "runId": "0123456789abcdef0123456789abcdef"})[0] == 409
        status, rec = call("POST", f"{base}/a1/{r1}/heartbeat", {"details": {"step": 1}})
        assert rec["status"] == "ACTIVITY_TASK_STATE_STARTED" and rec["heartbeatDetails"] == {"step": 1}
        status, rec = call("POST", f"{base}/a1/{r1}/complete", {"result": "ok"})
        assert status == 200 and rec["status"] == "ACTIVITY_TASK_STATE_COMPLETED" and rec["result"] == "ok"
        assert call("POST", f"{base}/a1/{r1}/cancel", {})[0] == 409  # closed
        r2 = start("a2")
        status, rec = call("POST", f"{base}/a2/{r2}/fail", {"cause": "nope"})
        assert rec["status"] == "ACTIVITY_TASK_STATE_SCHEDULED" and rec["attempt"] == 2  # retry follows
        status, rec = call("POST", f"{base}/a2/{r2}/fail", {"cause": "final", "nonRetryable": True})
        assert rec["status"] == "ACTIVITY_TASK_STATE_FAILED" and rec["failureCause"] == "nope"
        r3 = start("a3")
        status, rec = call("POST", f"{base}/a3/{r3}/cancel", {"reason": "stop"})
        assert rec["status"] == "ACTIVITY_TASK_STATE_CANCELED"
        assert call("GET", f"{base}/zz/{r3}")[0] == 404
        # list: (activityId, runId) order, paged
        status, page1 = call("GET", f"{base}?pageSize=2")
        assert [a["execution"]["workflowId"] for a in page1["activities"]] == ["a1", "a2"]
        assert page1["nextPageToken"] and page1["nextCursor"] == f"a2|{r2}"
        status, page2 = call("GET", f"{base}?pageSize=2&nextPageToken={page1['nextPageToken']}")
        assert [a["execution"]["workflowId"] for a in page2["activities"]] == ["a3"]
        assert page2["nextPageToken"] == ""
        status, page3 = call("GET", f"{base}?pageSize=2&cursor=a2|{r2}")
        assert [a["execution"]["workflowId"] for a in page3["activities"]] == ["a3"]
        status, hist = call("GET", f"{base}/a2/{r2}/history?pageSize=2")
        assert len(hist["events"]) == 2 and hist["nextCursor"] == 2


def test_workflow_runs_an_activity_and_gets_its_result() -> None:
    """0x006B from a running workflow handler, the activity on a worker, its result pushed (0xB2)."""
    import hanzo_tasks as _tasks

    calls: list[int] = []

    def charge(amount: int) -> dict[str, int]:
        calls.append(amount)
        return {"charged": amount * 100}

    def order(amount: int) -> dict[str, object]:
        receipt = _tasks.context().execute_activity("charge", amount)
        return {"order": "ok", "receipt": receipt}

    with _tasks.embed() as node:
        client = node.client()
        worker = _tasks.Worker(client, "tasks")
        worker.register("order", order)
        worker.register_activity("charge", charge)
        worker.start()
        try:
            wid = client.now("order", 7)
            deadline = time.monotonic() + 20
            info: dict = {}
            while time.monotonic() < deadline:
                with urllib.request.urlopen(f"{node.http_url}/v1/tasks/namespaces/default/workflows/{wid}") as r:
                    info = json.loads(r.read())["workflowExecutionInfo"]
                if not info["status"].endswith("RUNNING"):
                    break
                time.sleep(0.1)
            assert info["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED", info
            assert info["result"] == {"order": "ok", "receipt": {"charged": 700}}
            assert calls == [7]
            with urllib.request.urlopen(
                f"{node.http_url}/v1/tasks/namespaces/default/workflows/{wid}/history"
            ) as r:
                types = [e["eventType"] for e in json.loads(r.read())["events"]]
            assert "ACTIVITY_TASK_SCHEDULED" in types and "ACTIVITY_TASK_COMPLETED" in types
            assert types[-1] == "WORKFLOW_EXECUTION_COMPLETED"
        finally:
            worker.stop()
            client.stop()
