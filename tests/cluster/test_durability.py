"""Durability of a single node: real process, real SIGKILL, real LMDB."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from tests.support import NodeProcess

WF = "/v1/tasks/namespaces/default/workflows"


def _all_runs(node: NodeProcess, query: str = "") -> list[dict]:
    out: list[dict] = []
    token = ""
    while True:
        from urllib.parse import quote

        path = f"{WF}?pageSize=1000&query={quote(query)}&nextPageToken={quote(token)}"
        status, body = node.get(path)
        assert status == 200, body
        out.extend(body["executions"])
        token = body["nextPageToken"]
        if not token:
            return out


def test_sigkill_mid_stream_loses_no_acknowledged_write(node_factory) -> None:
    node = node_factory("n1")
    acked: set[str] = set()
    attempted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(k: int) -> None:
        i = 0
        while not stop.is_set():
            wid = f"w-{k}-{i}"
            i += 1
            with lock:
                attempted.append(wid)
            try:
                status, body = node.post(
                    WF, {"workflowId": wid, "requestId": f"req-{wid}", "workflowType": {"name": "Dur"}},
                    timeout=5,
                )
            except OSError:
                return  # the node died under us: this write is unacknowledged
            if status == 200:
                assert body["execution"]["workflowId"] == wid
                with lock:
                    acked.add(wid)

    with ThreadPoolExecutor(8) as pool:
        for k in range(8):
            pool.submit(writer, k)
        deadline = time.monotonic() + 30
        while len(acked) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        node.kill(signal.SIGKILL)  # in the middle of the stream
        stop.set()
    assert len(acked) >= 300

    node.start()
    runs = _all_runs(node, "WorkflowType = 'Dur'")
    ids = [r["execution"]["workflowId"] for r in runs]
    assert len(ids) == len(set(ids)), "a write was applied twice"
    missing = acked - set(ids)
    assert not missing, f"acknowledged writes lost: {sorted(missing)[:5]}"
    # Retrying every attempt with its requestId is safe: nothing is started twice.
    for wid in attempted[-50:]:
        status, body = node.post(
            WF, {"workflowId": wid, "requestId": f"req-{wid}", "workflowType": {"name": "Dur"}}
        )
        assert status == 200, body
        if wid in acked:
            assert body["started"] is False
    for wid in attempted[-50:]:
        status, body = node.get(f"{WF}/{wid}/executions")
        assert status == 200 and len(body["executions"]) == 1


def test_sigterm_stops_cleanly(node_factory) -> None:
    node = node_factory("n1")
    assert node.post(WF, {"workflowType": {"name": "X"}})[0] == 200
    assert node.stop() == 0
    node.start()
    assert len(_all_runs(node, "WorkflowType = 'X'")) == 1


def _nominal(wid: str, sid: str) -> int:
    stamp = wid[len(sid) + 1 :]
    return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").timestamp())


def test_schedule_fires_each_nominal_second_once_across_sigkill(node_factory) -> None:
    node = node_factory("n1")
    sid = "every-second"
    status, body = node.post(
        "/v1/tasks/namespaces/default/schedules",
        {
            "scheduleId": sid,
            "spec": {"interval": [{"interval": "1s"}]},
            "action": {"workflowType": {"name": "Tick"}, "taskQueue": "ticks"},
            # Runs never finish here (no workers yet), so let every fire start one.
            "policies": {"overlapPolicy": "ALLOW_ALL"},
        },
    )
    assert status == 200, body

    def fired() -> list[str]:
        return [r["execution"]["workflowId"] for r in _all_runs(node, "WorkflowType = 'Tick'")]

    deadline = time.monotonic() + 15
    while len(fired()) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    node.kill(signal.SIGKILL)
    time.sleep(2.5)  # nominal times pass while the node is down
    node.start()
    deadline = time.monotonic() + 15
    before = set()
    while time.monotonic() < deadline:
        ids = fired()
        if len(ids) >= 9:
            before = set(ids)
            break
        time.sleep(0.2)
    ids = fired()
    assert len(ids) == len(set(ids)), "a nominal time fired twice"
    assert len(ids) >= 9, ids
    seconds = sorted(_nominal(w, sid) for w in ids)
    # Every second from the first to the last fired, including those missed while down
    # (they lie within the 60 s catch-up window).
    assert seconds == list(range(seconds[0], seconds[-1] + 1)), seconds
    assert before <= set(ids)
    status, body = node.get(f"/v1/tasks/namespaces/default/schedules/{sid}")
    assert status == 200
    assert body["info"]["actionCount"] == len(ids)
