"""Batch operations through a real node (SPEC §4.7, §5.9): the targets
are captured at start, worked through at ``rps`` by the shard leader, counted,
and resumed by a new leader after a kill.

One single in-process node (``hanzo_tasks.testing``) serves most of the module
(each test in its own namespace); the failover test runs its own three-node
cluster of ``tasksd`` processes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hanzo_tasks.testing import TestNode

from tests.cluster.inproc import start_test_node
from tests.support import NodeProcess

NSP = "/v1/tasks/namespaces"
Node = TestNode | NodeProcess
TERMINATE, CANCEL, SIGNAL = ("BATCH_OPERATION_TYPE_TERMINATE", "BATCH_OPERATION_TYPE_CANCEL",
                             "BATCH_OPERATION_TYPE_SIGNAL")
RUNNING, COMPLETED, TERMINATED = ("BATCH_OPERATION_STATE_RUNNING", "BATCH_OPERATION_STATE_COMPLETED",
                                  "BATCH_OPERATION_STATE_TERMINATED")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestNode]:
    n = start_test_node(tmp_path_factory.mktemp("batches") / "n1", ["--limits-max-batch-size", "50"])
    yield n
    n.stop()


@pytest.fixture
def ns(node: Node) -> str:
    name = f"b-{uuid.uuid4().hex[:8]}"
    status, body = node.post(NSP, {"namespaceInfo": {"name": name}, "config": {"apsLimit": 0}})
    assert status == 200, body
    return name


def ok(result: tuple[int, Any]) -> Any:
    status, body = result
    assert status == 200, body
    return body


def start_runs(node: Node, ns: str, wtype: str, n: int) -> list[str]:
    ids = [f"{wtype}-{i:03d}" for i in range(n)]
    for wid in ids:
        body = {"workflowId": wid, "workflowType": {"name": wtype}, "taskQueue": {"name": "nobody"},
                "requestId": f"start-{wid}"}
        ok(post_retrying(node, f"{NSP}/{ns}/workflows", body))
    return ids


def post_retrying(node: Node, path: str, body: dict[str, Any], attempts: int = 50) -> tuple[int, Any]:
    """A write retried on 503 with the same body (and requestId), as a client does:
    right after a cluster starts, a leader hand-over answers in-flight writes with
    ``leader_changed``; the retry is safe because the requestId makes it idempotent."""
    for _ in range(attempts):
        status, out = node.post(path, body)
        if status != 503:
            return status, out
        time.sleep(0.2)
    return status, out


def by_type(wtype: str) -> str:
    return f"WorkflowType = '{wtype}'"


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def batch(node: Node, ns: str, bid: str) -> dict[str, Any]:
    return ok(node.get(f"{NSP}/{ns}/batches/{bid}"))


def finished(node: Node, ns: str, bid: str, timeout: float = 30.0) -> dict[str, Any]:
    return wait_for(lambda: (b := batch(node, ns, bid))["state"] != RUNNING and b, timeout, f"batch {bid}")


def status_of(node: Node, ns: str, wid: str) -> str:
    return ok(node.get(f"{NSP}/{ns}/workflows/{wid}"))["workflowExecutionInfo"]["status"]


def test_terminate_batch_acts_on_exactly_the_matching_open_runs(node: Node, ns: str) -> None:
    targets = start_runs(node, ns, "doomed", 12)
    spared = start_runs(node, ns, "spared", 3)
    started = ok(node.post(f"{NSP}/{ns}/batches", {"operation": TERMINATE, "query": by_type("doomed"),
                                                    "reason": "cleanup", "rps": 200}))
    assert started["state"] == RUNNING and started["totalOperationCount"] == 12
    assert started["namespace"] == ns and started["operation"] == TERMINATE and started["rps"] == 200
    done = finished(node, ns, started["batchId"])
    assert done["state"] == COMPLETED, done
    assert (done["completeOperationCount"], done["failureOperationCount"]) == (12, 0)
    assert done["closeTime"] >= done["startTime"]
    assert {status_of(node, ns, w) for w in targets} == {"WORKFLOW_EXECUTION_STATUS_TERMINATED"}
    assert {status_of(node, ns, w) for w in spared} == {"WORKFLOW_EXECUTION_STATUS_RUNNING"}


def test_signal_batch_signals_each_target_once(node: Node, ns: str) -> None:
    targets = start_runs(node, ns, "ping", 5)
    body = {"operation": SIGNAL, "query": by_type("ping"), "signal": {"name": "poke", "input": {"n": 1}}}
    done = finished(node, ns, ok(node.post(f"{NSP}/{ns}/batches", body))["batchId"])
    assert done["state"] == COMPLETED and done["completeOperationCount"] == 5
    assert done["signal"] == {"name": "poke", "input": {"n": 1}}
    for wid in targets:
        events = ok(node.get(f"{NSP}/{ns}/workflows/{wid}/history"))["events"]
        signals = [e for e in events if e["eventType"] == "WORKFLOW_EXECUTION_SIGNALED"]
        assert len(signals) == 1, events


def test_cancel_batch_requests_cancellation(node: Node, ns: str) -> None:
    targets = start_runs(node, ns, "stop", 3)
    done = finished(node, ns, ok(node.post(f"{NSP}/{ns}/batches", {"operation": CANCEL,
                                                                   "query": by_type("stop")}))["batchId"])
    assert done["state"] == COMPLETED and done["completeOperationCount"] == 3
    for wid in targets:
        events = ok(node.get(f"{NSP}/{ns}/workflows/{wid}/history"))["events"]
        assert "WORKFLOW_EXECUTION_CANCEL_REQUESTED" in [e["eventType"] for e in events]


def test_no_matching_run_completes_at_once(node: Node, ns: str) -> None:
    started = ok(node.post(f"{NSP}/{ns}/batches", {"operation": TERMINATE, "query": by_type("nothing")}))
    assert started["state"] == COMPLETED and started["totalOperationCount"] == 0


def test_a_run_closed_meanwhile_counts_as_complete(node: Node, ns: str) -> None:
    targets = start_runs(node, ns, "slow", 6)
    started = ok(node.post(f"{NSP}/{ns}/batches", {"operation": TERMINATE, "query": by_type("slow"), "rps": 2}))
    ok(node.post(f"{NSP}/{ns}/workflows/{targets[-1]}/terminate", {"reason": "by hand"}))
    done = finished(node, ns, started["batchId"])
    assert done["state"] == COMPLETED and (done["completeOperationCount"], done["failureOperationCount"]) == (6, 0)


def test_terminating_a_batch_stops_it_and_is_idempotent(node: Node, ns: str) -> None:
    targets = start_runs(node, ns, "many", 20)
    bid = ok(node.post(f"{NSP}/{ns}/batches", {"operation": TERMINATE, "query": by_type("many"), "rps": 2}))["batchId"]
    stopped = ok(node.post(f"{NSP}/{ns}/batches/{bid}/terminate", {"reason": "enough", "identity": "me"}))
    assert stopped["state"] == TERMINATED and "closeTime" in stopped
    again = ok(node.post(f"{NSP}/{ns}/batches/{bid}/terminate", {}))
    assert again == stopped
    time.sleep(1.5)  # the runner notices at its next record; nothing more is done after that
    later = batch(node, ns, bid)
    assert later["state"] == TERMINATED and later["completeOperationCount"] < 20
    alive = [w for w in targets if status_of(node, ns, w) == "WORKFLOW_EXECUTION_STATUS_RUNNING"]
    assert len(alive) >= 15, alive


def test_a_request_id_makes_the_start_idempotent(node: Node, ns: str) -> None:
    start_runs(node, ns, "once", 2)
    body = {"operation": TERMINATE, "query": by_type("once"), "requestId": "req-1"}
    first = ok(node.post(f"{NSP}/{ns}/batches", body))
    second = ok(node.post(f"{NSP}/{ns}/batches", body))
    assert first["batchId"] == second["batchId"]
    finished(node, ns, first["batchId"])
    listed = ok(node.get(f"{NSP}/{ns}/batches"))["batches"]
    assert [b["batchId"] for b in listed] == [first["batchId"]]


def test_batches_list_newest_first_and_page(node: Node, ns: str) -> None:
    ids = []
    for _ in range(3):
        ids.append(ok(node.post(f"{NSP}/{ns}/batches", {"operation": TERMINATE, "query": by_type("x")}))["batchId"])
        time.sleep(0.01)
    seen, token = [], ""
    for _ in range(5):
        page = ok(node.get(f"{NSP}/{ns}/batches?pageSize=1" + (f"&nextPageToken={quote(token)}" if token else "")))
        seen += [b["batchId"] for b in page["batches"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert seen == list(reversed(ids))
    assert node.get(f"{NSP}/{ns}/batches/{'0' * 32}")[0] == 404
    assert node.post(f"{NSP}/{ns}/batches/{'0' * 32}/terminate", {})[0] == 404


@pytest.mark.parametrize(("body", "fragment"), [
    ({"operation": "BATCH_OPERATION_TYPE_RESET", "query": ""}, "not supported"),
    ({"operation": "DELETE_EVERYTHING", "query": ""}, "operation"),
    ({"operation": SIGNAL, "query": ""}, "signal"),
    ({"operation": SIGNAL, "query": "", "signal": {"name": ""}}, "signal"),
    ({"operation": TERMINATE}, "query"),
    ({"operation": TERMINATE, "query": "NoSuchField = 1"}, "bad query"),
    ({"operation": TERMINATE, "query": "", "rps": 0}, "rps"),
    ({"operation": TERMINATE, "query": "", "rps": "fast"}, "rps"),
])
def test_bad_batches_are_400(node: Node, ns: str, body: dict[str, Any], fragment: str) -> None:
    status, err = node.post(f"{NSP}/{ns}/batches", body)
    assert status == 400 and fragment in err["message"], err


def test_more_targets_than_the_limit_is_400(node: Node, ns: str) -> None:
    start_runs(node, ns, "crowd", 51)  # the module's node has limits.max_batch_size 50
    status, err = node.post(f"{NSP}/{ns}/batches", {"operation": TERMINATE, "query": by_type("crowd")})
    assert status == 400 and "50" in err["message"], err
    assert ok(node.get(f"{NSP}/{ns}/batches"))["batches"] == []


def test_a_new_leader_resumes_the_batch(tmp_path: Path) -> None:
    """Kill the leader of the namespace's partition mid-batch: the new leader
    finishes from the stored cursor; every target ends terminated, each counted once."""
    from tests.cluster.raft_support import Cluster

    c = Cluster(tmp_path / "c").start()
    try:
        n1 = c.nodes["n1"]
        for _ in range(100):
            status, _ = n1.post(NSP, {"namespaceInfo": {"name": "fo"}, "config": {"apsLimit": 0}})
            if status == 200:
                break
            time.sleep(0.2)
        targets = start_runs(n1, "fo", "job", 40)
        bid = ok(n1.post(f"{NSP}/fo/batches", {"operation": TERMINATE, "query": by_type("job"), "rps": 10}))["batchId"]
        wait_for(lambda: batch(n1, "fo", bid)["completeOperationCount"] >= 10, 20, "first progress")
        part = ok(n1.get("/v1/tasks/cluster?pageSize=1000"))
        home = next(s["partition"] for s in part["namespaces"] if s["namespace"] == "fo")
        leader = c.leader_of(home)
        assert leader is not None
        c.nodes[leader].kill()
        alive = next(n for nid, n in c.nodes.items() if nid != leader)

        def done() -> dict[str, Any] | None:
            status, b = alive.get(f"{NSP}/fo/batches/{bid}")
            return b if status == 200 and b["state"] != RUNNING else None

        final = wait_for(done, 40, "the batch to finish on the new leader")
        assert final["state"] == COMPLETED, final
        assert (final["completeOperationCount"], final["failureOperationCount"]) == (40, 0)
        for wid in targets:
            assert status_of(alive, "fo", wid) == "WORKFLOW_EXECUTION_STATUS_TERMINATED", wid
    finally:
        c.kill_all()
