"""Standalone activities in the state machine (SPEC §4.8, §5.7): records, history, retries, timers."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from hanzo_tasks.shard import PartitionStore, StateMachine, encode, reads

T0 = 1_700_000_000_000


class M:
    """A state machine over a temporary store, with a running log index."""

    def __init__(self, path: str) -> None:
        self.store = PartitionStore(path)
        self.sm = StateMachine(self.store)
        self.index = itertools.count(1)

    def apply(self, op: str, now: int, **fields: Any) -> dict[str, Any]:
        c = {"v": 1, "op": op, "org": "", "ns": "default", "now": now, "rnd": f"{now:032x}", **fields}
        res = self.sm.apply(next(self.index), encode(c))
        assert res is not None
        return res

    def history(self, rid: str) -> list[str]:
        with self.store.read() as txn:
            a = self.act("a1", rid)
            evs, _ = reads.activity_history(txn, "", "default", rid, 0, False, 1000, a["historyLength"])
        return [e["eventType"] for e in evs]

    def act(self, aid: str, rid: str) -> dict[str, Any]:
        with self.store.read() as txn:
            a = reads.activity(txn, "", "default", aid, rid)
        assert a is not None
        return a

    def pending(self, now: int) -> list[tuple[str, str]]:
        with self.store.read() as txn:
            return reads.pending_activities(txn, "", "default", "q", now, 100)

    def timers(self, now: int) -> list[tuple[int, str, str, str]]:
        with self.store.read() as txn:
            return reads.due_activity_timers(txn, "", "default", now, 100)


@pytest.fixture
def m() -> Iterator[M]:
    with tempfile.TemporaryDirectory() as d:
        mm = M(d)
        mm.apply("ns.register", T0)
        yield mm
        mm.store.close()


def start(m: M, now: int = T0, **spec: Any) -> dict[str, Any]:
    s = {"activityId": "a1", "type": "charge", "taskQueue": "q", **spec}
    res = m.apply("act.start", now, start=s)
    assert res["ok"], res
    return res


def test_start_lease_complete(m: M) -> None:
    res = start(m, input=5)
    a = res["activity"]
    assert res["started"] and a["status"] == "SCHEDULED" and a["startToCloseTimeout"] == 600_000
    rid = a["runId"]
    assert m.pending(T0) == [("a1", rid)]
    r = m.apply("act.lease", T0 + 1, activityId="a1", runId=rid, attempt=1, nonce="n1", identity="w")
    assert r["ok"] and r["activity"]["status"] == "STARTED"
    assert m.pending(T0 + 1) == []
    # a second lease of the same attempt is refused (the first one won) and changes nothing
    assert m.apply("act.lease", T0 + 2, activityId="a1", runId=rid, attempt=1, nonce="n2")["code"] == "not_found"
    # a stale token (wrong nonce) is 404
    assert m.apply("act.complete", T0 + 3, activityId="a1", runId=rid, attempt=1, nonce="zz")["code"] == "not_found"
    r = m.apply("act.complete", T0 + 3, activityId="a1", runId=rid, attempt=1, nonce="n1", result=10)
    assert r["activity"]["status"] == "COMPLETED" and r["activity"]["result"] == 10
    assert m.history(rid) == ["ACTIVITY_TASK_SCHEDULED", "ACTIVITY_TASK_STARTED", "ACTIVITY_TASK_COMPLETED"]
    assert m.timers(T0 + 10**9) == []
    # any operation on a closed activity -> 409
    assert m.apply("act.cancel", T0 + 4, activityId="a1", runId=rid)["code"] == "failed_precondition"


def test_request_id_and_run_id_conflict(m: M) -> None:
    a = start(m, requestId="r1", runId="rid-1")["activity"]
    again = m.apply("act.start", T0 + 5, start={"activityId": "other", "type": "x", "taskQueue": "q",
                                                 "requestId": "r1"})
    assert again["started"] is False and again["activity"]["runId"] == a["runId"]
    dup = m.apply("act.start", T0 + 5, start={"activityId": "a1", "type": "x", "taskQueue": "q", "runId": "rid-1"})
    assert dup["code"] == "already_exists"


def test_retries_with_backoff_then_final_failure(m: M) -> None:
    rp = {"initialInterval": 1000, "backoffCoefficient": 2.0, "maximumInterval": 100_000,
          "maximumAttempts": 2, "nonRetryableErrorTypes": []}
    rid = start(m, retryPolicy=rp)["activity"]["runId"]
    m.apply("act.lease", T0, activityId="a1", runId=rid, attempt=1, nonce="n1")
    r = m.apply("act.fail", T0 + 10, activityId="a1", runId=rid, attempt=1, nonce="n1",
                failure={"message": "boom", "type": "ValueError"})
    a = r["activity"]
    assert a["status"] == "SCHEDULED" and a["attempt"] == 2 and a["lastFailure"]["message"] == "boom"
    assert m.pending(T0 + 10) == [] and m.pending(T0 + 1010) == [("a1", rid)]  # back-off 1s
    assert m.apply("act.lease", T0 + 500, activityId="a1", runId=rid, attempt=2, nonce="n2")["code"] == "not_found"
    m.apply("act.lease", T0 + 1010, activityId="a1", runId=rid, attempt=2, nonce="n2")
    r = m.apply("act.fail", T0 + 1020, activityId="a1", runId=rid, attempt=2, nonce="n2",
                failure={"message": "boom2", "type": "ValueError"})
    assert r["activity"]["status"] == "FAILED"
    assert m.history(rid) == ["ACTIVITY_TASK_SCHEDULED", "ACTIVITY_TASK_STARTED", "ACTIVITY_TASK_FAILED",
                              "ACTIVITY_TASK_STARTED", "ACTIVITY_TASK_FAILED"]


def test_non_retryable_and_http_fail_without_token(m: M) -> None:
    rid = start(m)["activity"]["runId"]
    r = m.apply("act.fail", T0 + 1, activityId="a1", runId=rid, cause="bad card",
                failure={"message": "bad card", "nonRetryable": True})
    assert r["activity"]["status"] == "FAILED" and r["activity"]["failureCause"] == "bad card"
    assert m.history(rid)[-2:] == ["ACTIVITY_TASK_STARTED", "ACTIVITY_TASK_FAILED"]


def test_start_to_close_timeout_is_retried(m: M) -> None:
    rid = start(m, startToCloseTimeout=5000)["activity"]["runId"]
    m.apply("act.lease", T0, activityId="a1", runId=rid, attempt=1, nonce="n1")
    due = m.timers(T0 + 5000)
    assert [(k, a) for _, k, a, _ in due] == [("startToClose", "a1")]
    at = due[0][0]
    r = m.apply("act.timeout", T0 + 5000, activityId="a1", runId=rid, kind="startToClose", at=at)
    assert r["activity"]["status"] == "SCHEDULED" and r["activity"]["attempt"] == 2
    assert r["activity"]["lastFailure"]["timeoutType"] == "START_TO_CLOSE"
    # the same fire again is a no-op
    again = m.apply("act.timeout", T0 + 5001, activityId="a1", runId=rid, kind="startToClose", at=at)
    assert again["outcome"] == "stale" and m.act("a1", rid)["attempt"] == 2


def test_schedule_to_start_and_schedule_to_close_are_final(m: M) -> None:
    rid = start(m, scheduleToStartTimeout=1000, scheduleToCloseTimeout=60_000)["activity"]["runId"]
    a = m.act("a1", rid)
    assert a["startToCloseTimeout"] == 60_000  # only scheduleToClose given: startToClose equals it
    (at, kind, _, _), = m.timers(T0 + 1000)
    assert kind == "scheduleToStart"
    r = m.apply("act.timeout", T0 + 1000, activityId="a1", runId=rid, kind=kind, at=at)
    assert r["activity"]["status"] == "TIMED_OUT" and m.pending(T0 + 10**6) == [] and m.timers(T0 + 10**9) == []
    assert m.history(rid)[-1] == "ACTIVITY_TASK_TIMED_OUT"


def test_heartbeat_extends_deadline_and_cancel_request(m: M) -> None:
    rid = start(m, heartbeatTimeout=2000)["activity"]["runId"]
    m.apply("act.lease", T0, activityId="a1", runId=rid, attempt=1, nonce="n1")
    r = m.apply("act.heartbeat", T0 + 1500, activityId="a1", runId=rid, attempt=1, nonce="n1", details={"p": 1})
    assert r["cancelRequested"] is False and r["activity"]["heartbeatDetails"] == {"p": 1}
    assert [k for _, k, _, _ in m.timers(T0 + 3000)] == []
    assert [k for _, k, _, _ in m.timers(T0 + 3500)] == ["heartbeat"]
    m.apply("act.cancel", T0 + 1600, activityId="a1", runId=rid, reason="stop")
    r = m.apply("act.heartbeat", T0 + 1700, activityId="a1", runId=rid, attempt=1, nonce="n1")
    assert r["cancelRequested"] is True
    r = m.apply("act.fail", T0 + 1800, activityId="a1", runId=rid, attempt=1, nonce="n1",
                failure={"message": "canceled", "type": "CanceledError", "non_retryable": True})
    assert r["activity"]["status"] == "CANCELED"
    assert m.history(rid)[-1] == "ACTIVITY_TASK_CANCELED"


def test_cancel_pending_is_immediate_and_release_keeps_attempt(m: M) -> None:
    rid = start(m)["activity"]["runId"]
    m.apply("act.lease", T0, activityId="a1", runId=rid, attempt=1, nonce="n1")
    r = m.apply("act.release", T0 + 1, activityId="a1", runId=rid, attempt=1, nonce="n1")
    assert r["activity"]["status"] == "SCHEDULED" and r["activity"]["attempt"] == 1
    assert m.pending(T0 + 1) == [("a1", rid)]
    r = m.apply("act.cancel", T0 + 2, activityId="a1", runId=rid)
    assert r["activity"]["status"] == "CANCELED" and m.pending(T0 + 10) == []


def test_list_orders_by_activity_then_run(m: M) -> None:
    for aid in ("b", "a", "c"):
        start(m, activityId=aid)
    with m.store.read() as txn:
        page1, last = reads.list_activities(txn, "", "default", None, 2)
        assert [a["activityId"] for a in page1] == ["a", "b"] and last is not None
        page2, last2 = reads.list_activities(txn, "", "default", last, 2)
    assert [a["activityId"] for a in page2] == ["c"] and last2 is None
