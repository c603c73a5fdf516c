"""Workflow task lifecycle in the state machine: lease, complete, fail, time out, retry, dead letters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hanzo_tasks.shard import PartitionStore, StateMachine, encode, reads


class M:
    def __init__(self, tmp: Path) -> None:
        self.m = StateMachine(PartitionStore(tmp / "p", map_size=1 << 22, sync=False))
        self.i = 0
        self.now = 1_700_000_000_000
        self.do("ns.register")

    def do(self, op: str, **f: Any) -> dict[str, Any]:
        self.i += 1
        self.now += 100
        cmd = {"v": 1, "op": op, "org": "_", "ns": "default", "now": self.now, "rnd": f"{self.i:032x}", **f}
        res = self.m.apply(self.i, encode(cmd))
        assert res is not None
        return res

    def run(self, wid: str) -> dict[str, Any]:
        with self.m.store.read() as txn:
            return reads.run(txn, "_", "default", wid, None)

    def events(self, wid: str) -> list[str]:
        r = self.run(wid)
        with self.m.store.read() as txn:
            evs, _ = reads.history(txn, "_", "default", r["runId"], 0, False, 1000, r["historyLength"])
        return [e["eventType"] for e in evs]

    def pending(self, tq: str = "q", now: int | None = None) -> list[tuple[str, str, int]]:
        with self.m.store.read() as txn:
            return reads.pending_tasks(txn, "_", "default", tq, self.now if now is None else now, 100)

    def lease(self, wid: str, nonce: str = "n1") -> dict[str, Any]:
        r = self.run(wid)
        wt = r["wt"]
        return self.do("wt.start", workflowId=wid, runId=r["runId"], scheduledEventId=wt["eventId"],
                       attempt=wt["attempt"], identity="w1", subscriptionId="s1", nonce=nonce)

    def token(self, wid: str) -> dict[str, Any]:
        r = self.run(wid)
        wt = r["wt"]
        return {"workflowId": wid, "runId": r["runId"], "scheduledEventId": wt["eventId"],
                "attempt": wt["attempt"], "nonce": wt.get("nonce")}


def test_task_style_run_has_exactly_five_events(tmp_path: Path) -> None:
    m = M(tmp_path)
    m.do("wf.start", start={"type": "T", "workflowId": "w", "taskQueue": "q"})
    assert [p[0] for p in m.pending()] == ["w"]
    assert m.lease("w")["ok"]
    assert m.pending() == []
    tok = m.token("w")
    res = m.do("wt.complete", **tok, identity="w1",
               commands=[{"type": "CompleteWorkflowExecution", "result": {"ok": 1}}])
    assert res["ok"], res
    assert m.events("w") == ["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_TASK_SCHEDULED", "WORKFLOW_TASK_STARTED",
                             "WORKFLOW_TASK_COMPLETED", "WORKFLOW_EXECUTION_COMPLETED"]
    assert m.run("w")["status"] == "COMPLETED" and m.run("w")["result"] == {"ok": 1}
    again = m.do("wt.complete", **tok, identity="w2", commands=[{"type": "CompleteWorkflowExecution"}])
    assert again["code"] == "not_found", "a second completion of the same task must not apply"


def test_racing_completions_apply_once(tmp_path: Path) -> None:
    m = M(tmp_path)
    m.do("wf.start", start={"type": "T", "workflowId": "w", "taskQueue": "q"})
    m.lease("w")
    tok = m.token("w")
    first = m.do("wt.complete", **tok, commands=[{"type": "CompleteWorkflowExecution", "result": 1}])
    second = m.do("wt.complete", **tok, commands=[{"type": "CompleteWorkflowExecution", "result": 2}])
    assert first["ok"] and second["code"] == "not_found"
    assert m.run("w")["result"] == 1


def test_failures_retry_with_backoff_then_dead_letter(tmp_path: Path) -> None:
    m = M(tmp_path)
    rp = {"initialInterval": 1000, "backoffCoefficient": 2.0, "maximumInterval": 100_000,
          "maximumAttempts": 3, "nonRetryableErrorTypes": []}
    m.do("wf.start", start={"type": "T", "workflowId": "w", "taskQueue": "q", "retryPolicy": rp})
    delays = []
    for attempt in (1, 2, 3):
        visible = m.pending(now=m.now + 10_000)
        assert visible, f"attempt {attempt} has no task"
        m.now = max(m.now, visible[0][2])
        m.lease("w")
        res = m.do("wt.complete", **m.token("w"),
                   commands=[{"type": "FailWorkflowExecution", "failure": {"message": "boom", "type": "ValueError"}}])
        assert res["ok"], res
        r = m.run("w")
        if attempt < 3:
            assert r["status"] == "RUNNING" and r["attempt"] == attempt + 1
            delays.append(r["wt"]["visibleAt"] - m.now)
    assert delays == [1000, 2000]
    r = m.run("w")
    assert r["status"] == "FAILED" and r["deadLetterReason"] == "attempts_exhausted"
    assert r["lastFailure"]["message"] == "boom"
    assert m.events("w").count("WORKFLOW_EXECUTION_ATTEMPT_FAILED") == 2
    with m.m.store.read() as txn:
        dead, _ = reads.list_runs(txn, "_", "default", lambda r: True, None, 10, dead=True)
    assert [d["workflowId"] for d in dead] == ["w"]


def test_non_retryable_and_no_policy(tmp_path: Path) -> None:
    m = M(tmp_path)
    m.do("wf.start", start={"type": "T", "workflowId": "a", "taskQueue": "q"})
    m.lease("a")
    m.do("wt.complete", **m.token("a"), commands=[{"type": "FailWorkflowExecution", "failure": {"message": "x"}}])
    assert m.run("a")["deadLetterReason"] == "no_retry_policy"
    rp = {"initialInterval": 1000, "backoffCoefficient": 2.0, "maximumInterval": 10_000,
          "maximumAttempts": 0, "nonRetryableErrorTypes": ["Fatal"]}
    m.do("wf.start", start={"type": "T", "workflowId": "b", "taskQueue": "q", "retryPolicy": rp})
    m.lease("b")
    m.do("wt.complete", **m.token("b"),
         commands=[{"type": "FailWorkflowExecution", "failure": {"message": "x", "type": "Fatal"}}])
    assert m.run("b")["deadLetterReason"] == "non_retryable"


def test_lost_worker_and_timeout_redeliver_with_next_attempt(tmp_path: Path) -> None:
    m = M(tmp_path)
    m.do("wf.start", start={"type": "T", "workflowId": "w", "taskQueue": "q"})
    m.lease("w")
    tok = m.token("w")
    assert m.do("wt.fail", **tok, cause="worker_lost")["ok"]
    assert m.run("w")["wt"]["attempt"] == 2 and m.pending()
    m.lease("w", nonce="n2")
    assert m.do("wt.timeout", **m.token("w"))["ok"]
    assert m.run("w")["wt"]["attempt"] == 3
    stale = m.do("wt.complete", **tok, commands=[{"type": "CompleteWorkflowExecution"}])
    assert stale["code"] == "not_found"
    evs = m.events("w")
    assert "WORKFLOW_TASK_FAILED" in evs and "WORKFLOW_TASK_TIMED_OUT" in evs


def test_bad_command_fails_the_task_and_changes_nothing_else(tmp_path: Path) -> None:
    m = M(tmp_path)
    m.do("wf.start", start={"type": "T", "workflowId": "w", "taskQueue": "q"})
    m.lease("w")
    res = m.do("wt.complete", **m.token("w"),
               commands=[{"type": "CompleteWorkflowExecution"}, {"type": "CompleteWorkflowExecution"}])
    assert res["code"] == "invalid_argument" and res["details"] == {"command_index": 0}
    r = m.run("w")
    assert r["status"] == "RUNNING" and r["wt"]["attempt"] == 2
    assert m.events("w")[-2:] == ["WORKFLOW_TASK_FAILED", "WORKFLOW_TASK_SCHEDULED"]


def test_signal_during_a_leased_task_schedules_the_next_one(tmp_path: Path) -> None:
    m = M(tmp_path)
    m.do("wf.start", start={"type": "T", "workflowId": "w", "taskQueue": "q"})
    m.lease("w")
    m.do("wf.signal", workflowId="w", name="go", input=1)
    assert m.pending() == []  # a task is in flight: the signal waits for it
    m.do("wt.complete", **m.token("w"), commands=[])
    assert [p[0] for p in m.pending()] == ["w"]
    assert m.events("w")[-1] == "WORKFLOW_TASK_SCHEDULED"


def test_close_drops_task_indexes(tmp_path: Path) -> None:
    m = M(tmp_path)
    m.do("wf.start", start={"type": "T", "workflowId": "a", "taskQueue": "q"})
    m.do("wf.start", start={"type": "T", "workflowId": "b", "taskQueue": "q"})
    m.lease("b")
    m.do("wf.terminate", workflowId="a", reason="x")
    m.do("wf.terminate", workflowId="b", reason="x")
    assert m.pending() == []
    with m.m.store.read() as txn:
        assert reads.started_tasks(txn, "_", "default") == []


def _deadlines(m: M, now: int) -> list[tuple[int, str, str, str]]:
    with m.m.store.read() as txn:
        return reads.due_deadlines(txn, "_", "default", now, 100)


def test_run_timeout_retries_then_times_out_and_is_keyed(tmp_path: Path) -> None:
    m = M(tmp_path)
    rp = {"initialInterval": 1000, "backoffCoefficient": 2.0, "maximumInterval": 10_000,
          "maximumAttempts": 2, "nonRetryableErrorTypes": []}
    m.do("wf.start", start={"type": "T", "workflowId": "w", "taskQueue": "q", "workflowRunTimeout": 5000,
                            "retryPolicy": rp})
    assert _deadlines(m, m.now) == []
    (at, kind, wid, rid), = _deadlines(m, m.now + 5000)
    assert kind == "run" and wid == "w"
    m.now = at
    assert m.do("wf.deadline", workflowId=wid, runId=rid, kind=kind, at=at)["outcome"] == "run"
    fired_at = m.now
    assert m.do("wf.deadline", workflowId=wid, runId=rid, kind=kind, at=at)["outcome"] == "stale"
    r = m.run("w")
    assert r["status"] == "RUNNING" and r["attempt"] == 2 and r["lastFailure"]["type"] == "TimeoutError"
    (at2, kind2, _, _), = _deadlines(m, m.now + 100_000)
    assert at2 == fired_at + 1000 + 5000  # back-off, then a full run timeout for attempt 2
    m.now = at2
    m.do("wf.deadline", workflowId=wid, runId=rid, kind=kind2, at=at2)
    r = m.run("w")
    assert r["status"] == "TIMED_OUT" and r["deadLetterReason"] == "timeout"
    assert m.events("w")[-1] == "WORKFLOW_EXECUTION_TIMED_OUT"
    assert _deadlines(m, m.now + 10**9) == []


def test_execution_timeout_and_cancel_sweep(tmp_path: Path) -> None:
    m = M(tmp_path)
    m.do("wf.start", start={"type": "T", "workflowId": "e", "taskQueue": "q", "workflowExecutionTimeout": 3000})
    (at, kind, wid, rid), = _deadlines(m, m.now + 3000)
    assert kind == "execution"
    m.do("wf.deadline", workflowId=wid, runId=rid, kind=kind, at=at)
    assert m.run("e")["status"] == "TIMED_OUT"

    m.do("wf.start", start={"type": "T", "workflowId": "c", "taskQueue": "q"})
    m.lease("c")  # a task was started: cancel needs the worker's acknowledgement
    m.do("wf.cancel", workflowId="c", reason="stop", cancelAckMs=60_000)
    assert m.run("c")["status"] == "CANCELING"
    (at, kind, wid, rid), = _deadlines(m, m.now + 60_000)
    assert kind == "cancel"
    m.do("wf.deadline", workflowId=wid, runId=rid, kind=kind, at=at)
    r = m.run("c")
    assert r["status"] == "CANCELED"
    with m.m.store.read() as txn:
        evs, _ = reads.history(txn, "_", "default", r["runId"], 0, False, 100, r["historyLength"])
    assert evs[-1]["attributes"]["reason"] == "sweep:cancel-timeout"


def test_activity_scheduled_by_a_workflow_is_idempotent_and_reported_to_the_run(tmp_path: Path) -> None:
    m = M(tmp_path)
    m.do("wf.start", start={"type": "T", "workflowId": "w", "taskQueue": "q"})
    m.lease("w")
    tok = m.token("w")
    first = m.do("act.schedule", **tok, activityId="charge-1", start={"type": "charge", "input": 5},
                 defaultStartToClose=60_000)
    again = m.do("act.schedule", **tok, activityId="charge-1", start={"type": "charge", "input": 5},
                 defaultStartToClose=60_000)
    assert first["started"] is True and again["started"] is False
    assert again["activity"]["runId"] == first["activity"]["runId"]
    assert m.events("w").count("ACTIVITY_TASK_SCHEDULED") == 1
    done = m.do("act.complete", activityId="charge-1", runId=first["activity"]["runId"], result={"ok": 1})
    assert any(e["kind"] == "activity.result" for e in done["_events"])  # pushed to the task's holder
    assert m.events("w")[-2:] == ["ACTIVITY_TASK_STARTED", "ACTIVITY_TASK_COMPLETED"]
    stale = m.do("act.schedule", **{**tok, "attempt": 9}, activityId="x", start={"type": "charge"})
    assert stale["code"] == "not_found"  # only the holder of the current task may schedule


def test_an_activity_of_durable_code_closing_during_another_task_triggers_the_next(tmp_path: Path) -> None:
    """A workflow-task command scheduled the activity; a signal's task is in flight
    when it completes. Durable code learns of the completion only from a later
    task's history: one must follow, or the run waits forever (it did)."""
    m = M(tmp_path)
    m.do("wf.start", start={"type": "T", "workflowId": "w", "taskQueue": "q"})
    m.lease("w")
    res = m.do("wt.complete", **m.token("w"), identity="w1", commands=[
        {"type": "ScheduleActivityTask", "activity_type": "charge", "activity_id": "1"}])
    assert res["ok"], res
    act = next(a for a in m.run("w")["openActs"].values() if a["activityId"] == "1")
    m.do("wf.signal", workflowId="w", name="approve", input="ann")
    assert m.lease("w")["ok"]  # the signal's task is in flight ...
    assert m.do("act.lease", activityId="1", runId=act["runId"], attempt=1, nonce="a1", identity="w2")["ok"]
    done = m.do("act.complete", activityId="1", runId=act["runId"], result=42)  # ... when the activity ends
    assert done["ok"], done
    assert not any(e["kind"] == "activity.result" for e in done.get("_events", ())), "pushed to nobody waiting"
    assert m.do("wt.complete", **m.token("w"), identity="w1", commands=[])["ok"]
    wt = m.run("w")["wt"]
    assert wt is not None and wt["state"] == "SCHEDULED", "no workflow task followed the activity's close"
    assert m.events("w")[-1] == "WORKFLOW_TASK_SCHEDULED"
