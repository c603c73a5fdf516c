"""Workflow tasks pushed to workers over ZAP: lease, complete, retry, redeliver (real sockets)."""

from __future__ import annotations

import itertools
import socket
import time
from pathlib import Path
from typing import Any

from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.zap import Op

from tests.support import NodeProcess

WF = "/v1/tasks/namespaces/default/workflows"


class RawWorker:
    """A minimal worker speaking ZAP by hand: subscribe, take pushes, answer them."""

    def __init__(self, addr: tuple[str, int], tq: str = "q", slots: int = 4) -> None:
        self.sock = socket.create_connection(addr, timeout=10)
        self.reader = Z.FrameReader(1 << 30, Z.SERVER_KINDS)
        self.ids = itertools.count(1)
        self.pushes: list[Any] = []
        self.responses: dict[int, dict[str, Any]] = {}
        assert self.call(Op.Hello, {"client_id": "w", "sdk_name": "t", "sdk_version": "1"})["status"] == 200
        r = self.call(Op.SubscribeWorkflowTasks, {"task_queue": tq, "max_concurrent": slots})
        assert r["status"] == 200, r
        self.sub = r["body"]["subscription_id"]

    def _pump(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        while True:
            f = self.reader.next_frame()
            if f is not None:
                body = Z.decode_body(f.body)
                if f.kind == Z.PUSH:
                    self.pushes.append((f, body))
                else:
                    self.responses[f.frame_id] = body
                return
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError
            self.reader.feed(data)

    def call(self, op: int, body: Any) -> dict[str, Any]:
        fid = next(self.ids)
        self.sock.sendall(Z.encode_frame(Z.REQUEST, op, fid, body))
        deadline = time.monotonic() + 10
        while fid not in self.responses:
            self._pump(max(0.1, deadline - time.monotonic()))
        return self.responses.pop(fid)

    def next_task(self, timeout: float = 10.0, ack: int = 200) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.pushes:
            self._pump(max(0.1, deadline - time.monotonic()))
        f, body = self.pushes.pop(0)
        assert f.opcode == 0x00B0
        self.sock.sendall(Z.encode_frame(Z.PUSH_ACK, f.opcode, f.frame_id, {"status": ack}))
        return body

    def complete(self, token: str, result: Any) -> dict[str, Any]:
        return self.call(Op.RespondWorkflowTaskCompleted,
                         {"task_token": token, "commands": [{"type": "CompleteWorkflowExecution", "result": result}]})

    def fail_run(self, token: str, message: str) -> dict[str, Any]:
        return self.call(Op.RespondWorkflowTaskCompleted, {"task_token": token, "commands": [
            {"type": "FailWorkflowExecution", "failure": {"message": message, "type": "RuntimeError"}}]})

    def close(self) -> None:
        self.sock.close()


def events(node: NodeProcess, wid: str) -> list[str]:
    status, body = node.get(f"{WF}/{wid}/history?pageSize=1000")
    assert status == 200, body
    return [e["eventType"] for e in body["events"]]


def test_pushed_task_completes_with_exactly_five_events(zap_node) -> None:
    node, addr = zap_node
    w = RawWorker(addr)
    status, body = node.post(WF, {"workflowId": "job-1", "workflowType": {"name": "Job"}, "taskQueue": {"name": "q"},
                                  "input": {"n": 1}})
    assert status == 200, body
    task = w.next_task()
    assert task["workflow_id"] == "job-1" and task["input"] == {"n": 1} and task["attempt"] == 1
    assert [e["eventType"] for e in task["history"]][-1] == "WORKFLOW_TASK_STARTED"
    assert w.complete(task["task_token"], {"done": True})["status"] == 200
    status, d = node.get(f"{WF}/job-1")
    assert d["workflowExecutionInfo"]["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"
    assert d["workflowExecutionInfo"]["result"] == {"done": True}
    assert events(node, "job-1") == ["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_TASK_SCHEDULED", "WORKFLOW_TASK_STARTED",
                                     "WORKFLOW_TASK_COMPLETED", "WORKFLOW_EXECUTION_COMPLETED"]
    again = w.complete(task["task_token"], {"twice": True})
    assert again["status"] == 404 and again["error"]["message"] == "task not current"
    bad = w.complete("tt1.AAAA.BBBB", 1)
    assert bad["status"] == 400 and bad["error"]["message"] == "invalid task token"
    w.close()


def test_failing_handler_is_retried_with_backoff_then_dead_lettered(zap_node) -> None:
    node, addr = zap_node
    w = RawWorker(addr)
    node.post(WF, {"workflowId": "flaky", "workflowType": {"name": "Job"}, "taskQueue": {"name": "q"},
                   "retryPolicy": {"initialInterval": "200ms", "maximumAttempts": 3}})
    seen = []
    for _ in range(3):
        task = w.next_task(timeout=10)
        seen.append((task["workflow_attempt"], time.monotonic()))
        assert w.fail_run(task["task_token"], f"boom {task['workflow_attempt']}")["status"] == 200
    assert [a for a, _ in seen] == [1, 2, 3]
    assert seen[2][1] - seen[1][1] >= 0.35  # 400 ms back-off before the third attempt
    status, d = node.get(f"{WF}/flaky")
    info = d["workflowExecutionInfo"]
    assert info["status"] == "WORKFLOW_EXECUTION_STATUS_FAILED"
    assert info["deadLetterReason"] == "attempts_exhausted"
    assert info["lastFailure"]["message"] == "boom 3"
    evs = events(node, "flaky")
    assert evs.count("WORKFLOW_EXECUTION_ATTEMPT_FAILED") == 2 and evs[-1] == "WORKFLOW_EXECUTION_FAILED"
    status, dead = node.get("/v1/tasks/namespaces/default/dead-letters")
    assert [e["execution"]["workflowId"] for e in dead["executions"]] == ["flaky"]
    w.close()


def test_worker_killed_mid_task_is_redelivered_and_recorded_once(zap_node) -> None:
    node, addr = zap_node
    a = RawWorker(addr)
    node.post(WF, {"workflowId": "move", "workflowType": {"name": "Job"}, "taskQueue": {"name": "q"}})
    first = a.next_task()
    b = RawWorker(addr)
    a.close()  # the worker dies holding the task
    second = b.next_task(timeout=10)
    assert second["workflow_id"] == "move" and second["attempt"] == 2
    assert b.complete(second["task_token"], "ok")["status"] == 200
    late = b.complete(first["task_token"], "late")  # the dead worker's token is stale
    assert late["status"] == 404
    evs = events(node, "move")
    assert evs.count("WORKFLOW_EXECUTION_COMPLETED") == 1 and "WORKFLOW_TASK_FAILED" in evs
    status, d = node.get(f"{WF}/move")
    assert d["workflowExecutionInfo"]["result"] == "ok"
    b.close()


def test_two_workers_racing_one_completion_applies(zap_node) -> None:
    node, addr = zap_node
    w = RawWorker(addr)
    node.post(WF, {"workflowId": "race", "workflowType": {"name": "Job"}, "taskQueue": {"name": "q"}})
    task = w.next_task()
    other = RawWorker(addr, tq="elsewhere")
    r1 = w.complete(task["task_token"], "first")
    r2 = other.complete(task["task_token"], "second")  # the same token from another connection
    assert sorted([r1["status"], r2["status"]]) == [200, 404]
    status, d = node.get(f"{WF}/race")
    assert d["workflowExecutionInfo"]["result"] == "first"
    w.close()
    other.close()


def test_refused_push_goes_to_another_worker(zap_node) -> None:
    node, addr = zap_node
    busy = RawWorker(addr)
    node.post(WF, {"workflowId": "refused", "workflowType": {"name": "Job"}, "taskQueue": {"name": "q"}})
    busy.next_task(ack=429)  # no free slot
    t = busy.next_task(timeout=10)  # pushed again (attempt 2) after push_refused
    assert t["attempt"] == 2
    assert busy.complete(t["task_token"], 1)["status"] == 200
    assert "WORKFLOW_TASK_FAILED" in events(node, "refused")
    busy.close()


def test_run_timeout_is_enforced_without_a_worker(zap_node) -> None:
    node, _ = zap_node
    status, body = node.post(WF, {"workflowId": "slow", "workflowType": {"name": "Job"}, "taskQueue": {"name": "q"},
                                  "workflowRunTimeout": "1s"})
    assert status == 200, body
    deadline = time.monotonic() + 10
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        info = node.get(f"{WF}/slow")[1]["workflowExecutionInfo"]
        if info["status"] != "WORKFLOW_EXECUTION_STATUS_RUNNING":
            break
        time.sleep(0.1)
    assert info["status"] == "WORKFLOW_EXECUTION_STATUS_TIMED_OUT"
    assert info["deadLetterReason"] == "timeout"


def test_workers_on_every_node_keep_delivering_when_the_leader_dies(tmp_path: Path) -> None:
    import signal

    from hanzo_tasks.routing import partition_of

    from tests.cluster.raft_support import Cluster

    c = Cluster(tmp_path / "c", n=3, partitions=4)
    c.start()
    workers: dict[str, RawWorker] = {}
    try:
        for nid in c.ids:
            workers[nid] = RawWorker(c.zap_addr(nid))
        nodes = list(c.nodes.values())
        for i in range(12):
            node = nodes[i % 3]
            for _ in range(100):  # a young cluster still balances its leaders: 503, retry (same requestId)
                status, body = node.post(WF, {"workflowId": f"t-{i}", "requestId": f"r-{i}",
                                              "workflowType": {"name": "Job"}, "taskQueue": {"name": "q"}})
                if status != 503:
                    break
                time.sleep(0.1)
            assert status == 200, body
        leader = c.leader_of(partition_of("_", "default", "tasks", 4))
        c.nodes[leader].kill(signal.SIGKILL)
        survivors = [nid for nid in c.ids if nid != leader]
        for i in range(12, 18):
            for attempt in range(100):  # 503 while the partition elects: retry with the same requestId
                node = c.nodes[survivors[attempt % 2]]
                status, body = node.post(WF, {"workflowId": f"t-{i}", "requestId": f"r-{i}",
                                              "workflowType": {"name": "Job"}, "taskQueue": {"name": "q"}})
                if status == 200:
                    break
                assert status == 503, body
                time.sleep(0.1)
            assert status == 200
        done: set[str] = set()
        deadline = time.monotonic() + 45
        while len(done) < 18 and time.monotonic() < deadline:
            for nid in survivors:
                w = workers[nid]
                try:
                    task = w.next_task(timeout=0.3)
                except (TimeoutError, OSError):
                    continue
                r = w.complete(task["task_token"], task["workflow_id"])
                if r["status"] == 200:
                    done.add(task["workflow_id"])
        assert done == {f"t-{i}" for i in range(18)}, sorted({f"t-{i}" for i in range(18)} - done)
        reader = c.nodes[survivors[0]]
        for i in range(18):
            status, d = reader.get(f"{WF}/t-{i}")
            assert d["workflowExecutionInfo"]["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"
            assert d["workflowExecutionInfo"]["result"] == f"t-{i}"
    finally:
        for w in workers.values():
            w.close()
        c.kill_all()


def test_cancel_reaches_the_worker_holding_the_task(zap_node) -> None:
    node, addr = zap_node
    w = RawWorker(addr)
    node.post(WF, {"workflowId": "stopme", "workflowType": {"name": "Job"}, "taskQueue": {"name": "q"}})
    task = w.next_task()
    status, body = node.post(f"{WF}/stopme/cancel", {"reason": "enough"})
    assert status == 200 and body["status"] == "WORKFLOW_EXECUTION_STATUS_CANCELING"
    deadline = time.monotonic() + 10
    while not w.pushes and time.monotonic() < deadline:
        w._pump(1.0)
    f, push = w.pushes.pop(0)
    assert f.opcode == 0x00B3 and push["workflow_id"] == "stopme"
    hb = w.call(Op.RecordHeartbeat, {"task_token": task["task_token"]})
    assert hb["status"] == 200 and hb["body"]["cancel_requested"] is True
    r = w.call(Op.RespondWorkflowTaskCompleted,
               {"task_token": task["task_token"], "commands": [{"type": "CancelWorkflowExecution"}]})
    assert r["status"] == 200, r
    assert node.get(f"{WF}/stopme")[1]["workflowExecutionInfo"]["status"] == "WORKFLOW_EXECUTION_STATUS_CANCELED"
    w.close()
