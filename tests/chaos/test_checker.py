"""Each check must flag the anomaly it exists for, on a handcrafted history,
and stay quiet on a correct one: a checker that cannot fail proves nothing."""

from __future__ import annotations

from collections import Counter
from typing import Any

from chaos.checker import (
    ScheduleObs,
    check_acknowledged_starts,
    check_histories,
    check_registers,
    check_replicas,
    check_schedules,
    check_signals,
    nominal_ms,
)
from chaos.history import Op

_ids = iter(range(1_000_000))


def op(kind: str, outcome: str, **kw: Any) -> Op:
    return Op(id=next(_ids), client=kw.pop("client", 0), kind=kind, invoke=kw.pop("invoke", 0.0),
              complete=kw.pop("complete", 1.0), outcome=outcome, **kw)


def kinds(res) -> list[str]:
    return sorted(a.kind for a in res.anomalies)


# --------------------------------------------------------------------------- starts


def start(wid: str, outcome: str = "ok", run: str = "r1") -> Op:
    return op("start", outcome, ns="ns", wid=wid, request_id=f"rq-{wid}", run_id=run if outcome == "ok" else "",
              attempts=[{"status": 200 if outcome == "ok" else 507}])


def test_starts_all_present_everywhere_is_ok() -> None:
    ops = [start("job-1", run="a"), start("job-2", "unknown"), start("job-3", "failed")]
    seen = {"n1": {("ns", "job-1"): ["a"], ("ns", "job-2"): ["b"]}, "n2": {("ns", "job-1"): ["a"], ("ns", "job-2"): ["b"]}}
    res = check_acknowledged_starts(ops, seen)
    assert res.anomalies == [] and res.checked == 3


def test_acknowledged_start_missing_on_one_replica_is_lost() -> None:
    res = check_acknowledged_starts([start("job-1", run="a")], {"n1": {("ns", "job-1"): ["a"]}, "n2": {}})
    assert kinds(res) == ["lost"]
    assert res.anomalies[0].data["node"] == "n2"


def test_start_applied_twice_is_flagged() -> None:
    res = check_acknowledged_starts([start("job-1", "unknown")], {"n1": {("ns", "job-1"): ["a", "b"]}})
    assert "applied-twice" in kinds(res)


def test_failed_start_that_exists_is_flagged() -> None:
    res = check_acknowledged_starts([start("job-1", "failed")], {"n1": {("ns", "job-1"): ["a"]}})
    assert kinds(res) == ["failed-applied"]


def test_wrong_run_and_disagreeing_replicas_are_flagged() -> None:
    res = check_acknowledged_starts([start("job-1", run="a")], {"n1": {("ns", "job-1"): ["a"]},
                                                                  "n2": {("ns", "job-1"): ["z"]}})
    assert kinds(res) == ["replicas-disagree", "wrong-run"]


def test_run_nobody_started_is_a_phantom() -> None:
    res = check_acknowledged_starts([], {"n1": {("ns", "job-9"): ["a"], ("ns", "tick-a-x"): ["b"]}})
    assert kinds(res) == ["phantom"]


# --------------------------------------------------------------------------- histories


def ev(i: int, t: str, **attrs: Any) -> dict[str, Any]:
    return {"eventId": i, "eventType": t, "attributes": attrs}


def good_history(wid: str = "job-1", rq: str = "rq-job-1") -> list[dict[str, Any]]:
    return [
        ev(1, "WORKFLOW_EXECUTION_STARTED", requestId=rq),
        ev(2, "WORKFLOW_TASK_SCHEDULED"),
        ev(3, "WORKFLOW_TASK_STARTED", scheduledEventId=2),
        ev(4, "WORKFLOW_TASK_COMPLETED", scheduledEventId=2, startedEventId=3),
        ev(5, "WORKFLOW_EXECUTION_COMPLETED", result={"wid": wid}),
    ]


def expected(key: tuple[str, str]) -> Any:
    return {"wid": key[1]}


def test_well_formed_history_is_ok() -> None:
    res = check_histories([start("job-1")], {("ns", "job-1"): good_history()}, expected)
    assert res.anomalies == [] and res.checked == 1


def test_task_completion_applied_twice_is_flagged() -> None:
    h = good_history()
    h.insert(4, ev(5, "WORKFLOW_TASK_COMPLETED", scheduledEventId=2, startedEventId=3))
    h[-1]["eventId"] = 6
    res = check_histories([start("job-1")], {("ns", "job-1"): h}, expected)
    assert kinds(res) == ["task-completed-twice"]


def test_task_started_twice_and_completed_before_start_are_flagged() -> None:
    h = [ev(1, "WORKFLOW_EXECUTION_STARTED", requestId="rq-job-1"), ev(2, "WORKFLOW_TASK_SCHEDULED"),
         ev(3, "WORKFLOW_TASK_COMPLETED", scheduledEventId=2),
         ev(4, "WORKFLOW_TASK_STARTED", scheduledEventId=2), ev(5, "WORKFLOW_TASK_STARTED", scheduledEventId=2)]
    res = check_histories([start("job-1")], {("ns", "job-1"): h}, expected)
    assert kinds(res) == ["completed-unstarted", "task-started-twice"]


def test_events_after_close_and_double_close_are_flagged() -> None:
    h = [*good_history(), ev(6, "WORKFLOW_EXECUTION_COMPLETED", result={"wid": "job-1"})]
    res = check_histories([start("job-1")], {("ns", "job-1"): h}, expected)
    assert kinds(res) == ["closed-twice", "event-after-close"]


def test_start_by_another_request_and_wrong_result_are_flagged() -> None:
    h = good_history(wid="job-2", rq="rq-other")
    res = check_histories([start("job-1")], {("ns", "job-1"): h}, expected)
    assert kinds(res) == ["start-request", "wrong-result"]


def test_gap_in_event_ids_and_double_start_are_flagged() -> None:
    h = good_history()
    h[2]["eventId"] = 7
    h.append(ev(6, "WORKFLOW_EXECUTION_STARTED", requestId="rq-job-1"))
    res = check_histories([start("job-1")], {("ns", "job-1"): h}, expected)
    assert {"event-ids", "started-count"} <= set(kinds(res))


# --------------------------------------------------------------------------- signals


def sig(rq: str, outcome: str = "ok") -> Op:
    return op("signal", outcome, ns="ns", wid="reg-0", request_id=rq)


def test_signals_each_once_is_ok() -> None:
    res = check_signals([sig("a"), sig("b", "unknown"), sig("c", "failed")], {("ns", "reg-0"): Counter({"a": 1})})
    assert res.anomalies == [] and res.checked == 3


def test_signal_applied_twice_lost_failed_and_phantom_are_flagged() -> None:
    got = Counter({"dup": 2, "bad": 1, "ghost": 1})
    res = check_signals([sig("dup", "unknown"), sig("gone"), sig("bad", "failed")], {("ns", "reg-0"): got})
    assert kinds(res) == ["applied-twice", "failed-applied", "lost", "phantom"]


def test_signals_to_an_unread_history_are_noted_not_flagged() -> None:
    res = check_signals([sig("a")], {})
    assert res.anomalies == [] and res.notes


# --------------------------------------------------------------------------- schedules

CREATE = 1_777_000_000_000  # a whole second


def fired(sid: str, seconds: list[int], runs: int = 1) -> dict[str, list[str]]:
    out = {}
    for s in seconds:
        from datetime import UTC, datetime

        t = datetime.fromtimestamp((CREATE + s * 1000) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out[f"{sid}-{t}"] = [f"r{s}-{k}" for k in range(runs)]
    return out


def sched(sid: str, seconds: list[int], *, catchup: float = 600, missed: int = 0, count: int | None = None,
          runs: int = 1, due: int | None = None) -> ScheduleObs:
    f = fired(sid, seconds, runs)
    n = sum(len(v) for v in f.values()) if count is None else count
    return ScheduleObs(sid, catchup, CREATE + 300, n, missed, f, None if due is None else CREATE + due * 1000)


def test_nominal_time_is_parsed_from_the_workflow_id() -> None:
    assert nominal_ms("tick-a", "tick-a-2026-05-01T03:00:00Z") is not None
    assert nominal_ms("tick-a", "tick-b-2026-05-01T03:00:00Z") is None
    assert nominal_ms("tick-a", "tick-a-2026-05-01T03:00:00Z-2") is None


def test_every_slot_once_is_ok() -> None:
    res = check_schedules([sched("tick-a", [1, 2, 3, 4]), sched("tick-c", [1, 3, 4], catchup=3, missed=1)])
    assert res.anomalies == [], res.anomalies


def test_slot_fired_twice_is_flagged() -> None:
    res = check_schedules([sched("tick-a", [1, 2], runs=2)])
    assert kinds(res) == ["fired-twice", "fired-twice"]


def test_slot_inside_a_long_catchup_window_that_never_fired_is_flagged() -> None:
    res = check_schedules([sched("tick-a", [1, 2, 4, 5])])
    assert kinds(res) == ["not-fired"]
    assert res.anomalies[0].data["missing"] == ["2026-04-24T03:06:43Z"]


def test_short_window_misses_must_be_counted() -> None:
    assert kinds(check_schedules([sched("tick-c", [1, 4], catchup=3, missed=2)])) == []
    assert kinds(check_schedules([sched("tick-c", [1, 4], catchup=3, missed=1)])) == ["not-fired-uncounted"]


def test_action_count_must_match_the_runs() -> None:
    assert kinds(check_schedules([sched("tick-a", [1, 2, 3], count=4)])) == ["action-count"]


def test_fire_before_creation_is_not_a_slot() -> None:
    assert kinds(check_schedules([sched("tick-a", [0, 1])])) == ["not-a-slot"]


def test_a_schedule_that_stopped_firing_is_flagged_up_to_the_due_time() -> None:
    assert kinds(check_schedules([sched("tick-a", [1, 2], due=5)])) == ["not-fired"]
    assert kinds(check_schedules([sched("tick-a", [1, 2, 3, 4, 5, 6], due=5)])) == []


# --------------------------------------------------------------------------- replicas


def test_identical_replicas_are_ok_and_differences_are_flagged() -> None:
    same = {"0": {"n1": {"hash": "x", "applied": 5}, "n2": {"hash": "x", "applied": 7}}}
    assert check_replicas(same).anomalies == []
    diverged = {"0": {"n1": {"hash": "x", "applied": 5}, "n2": {"hash": "y", "applied": 5}}}
    assert kinds(check_replicas(diverged)) == ["diverged"]
    behind = {"0": {"n1": {"hash": "x", "applied": 5}, "n2": {"hash": "y", "applied": 4}}}
    assert kinds(check_replicas(behind)) == ["not-converged"]
    broken = {"0": {"n1": {"hash": "x", "applied": 5}, "n2": {"error": "missing"}}}
    assert kinds(check_replicas(broken)) == ["unreadable"]


# --------------------------------------------------------------------------- registers


def reg(kind: str, value: Any, a: float, b: float, outcome: str = "ok", key: str = "ns/reg-0") -> Op:
    return op(kind, outcome, key=key, value=value, invoke=a, complete=b)


def test_linearizable_register_history_is_ok() -> None:
    ops = [reg("read", None, 0, 1), reg("write", "v1", 2, 3), reg("read", "v1", 4, 5),
           reg("write", "v2", 6, 7, "unknown"), reg("read", "v2", 8, 9), reg("write", "v3", 9, 10, "failed"),
           reg("read", "ignored", 0, 1, "failed")]
    res = check_registers(ops)
    assert res.anomalies == [] and res.checked == 5


def test_stale_register_read_is_flagged() -> None:
    ops = [reg("write", "v1", 0, 1), reg("write", "v2", 2, 3), reg("read", "v1", 4, 5)]
    assert kinds(check_registers(ops)) == ["not-linearizable"]


def test_read_of_a_failed_write_is_flagged() -> None:
    ops = [reg("write", "v1", 0, 1, "failed"), reg("read", "v1", 2, 3)]
    assert kinds(check_registers(ops)) == ["not-linearizable", "read-failed-write"]


def test_read_of_an_unwritten_value_and_of_another_key_are_flagged() -> None:
    ops = [reg("write", "v1", 0, 1, key="ns/reg-1"), reg("read", "v1", 2, 3), reg("read", "nope", 2, 3)]
    assert set(kinds(check_registers(ops))) == {"not-linearizable", "read-other-key", "read-unwritten"}


def test_keys_are_checked_independently() -> None:
    ops = [reg("write", "a", 0, 1, key="k1"), reg("write", "b", 0, 1, key="k2"),
           reg("read", "a", 2, 3, key="k1"), reg("read", "b", 2, 3, key="k2")]
    res = check_registers(ops)
    assert res.anomalies == [] and res.stats["keys"] == 2
