"""The state machine: deterministic, idempotent by index, all-or-nothing per command.

Real LMDB in temporary directories; command streams drawn by hypothesis.
"""

from __future__ import annotations

from typing import Any

from hanzo_tasks.shard import STORAGE_FULL, PartitionStore, StateMachine, encode, reads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.shard.determinism import (
    assert_identical_replicas,
    assert_prefix_replay_changes_nothing,
    fresh,
)

NAMESPACES = ["default", "billing"]
WIDS = ["w1", "w2", "w3"]
REQS = ["r1", "r2", "r3", None]
SIDS = ["s1", "s2"]
BIDS = ["b1", "b2"]


def cmd(op: str, now: int, ns: str = "default", rnd: str = "", **fields: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"v": 1, "op": op, "org": "_", "ns": ns, "now": now, "rnd": rnd or f"{now:032x}"}
    c.update(fields)
    return c


def _start(draw: Any, ns: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": draw(st.sampled_from(["Charge", "Ship"]))}
    if draw(st.booleans()):
        spec["workflowId"] = draw(st.sampled_from(WIDS))
    req = draw(st.sampled_from(REQS))
    if req:
        spec["requestId"] = req
    spec["conflict"] = draw(st.sampled_from(["FAIL", "USE_EXISTING", "TERMINATE_EXISTING"]))
    spec["input"] = draw(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=5)))
    fields: dict[str, Any] = {"start": spec}
    if draw(st.booleans()):
        fields["signal"] = {"signalName": "go", "input": 1, "identity": ""}
    return fields


@st.composite
def command_streams(draw: Any) -> list[dict[str, Any]]:
    n = draw(st.integers(min_value=1, max_value=40))
    now = 1_700_000_000_000
    out = []
    for _ in range(n):
        now += draw(st.integers(min_value=0, max_value=5000))
        ns = draw(st.sampled_from(NAMESPACES))
        kind = draw(
            st.sampled_from(
                ["register", "start", "signal", "cancel", "terminate", "reset", "metadata",
                 "sched", "fire", "trigger", "pause", "delete_ns", "garbage", "task",
                 "batch", "batch_progress", "batch_terminate", "identity"]
            )
        )
        wid = draw(st.sampled_from(WIDS))
        sid = draw(st.sampled_from(SIDS))
        if kind == "register":
            c = cmd("ns.register", now, ns, implicit=draw(st.booleans()))
        elif kind == "start":
            c = cmd("wf.start", now, ns, **_start(draw, ns))
        elif kind == "signal":
            c = cmd("wf.signal", now, ns, workflowId=wid, name="sig", input=None,
                    requestId=draw(st.sampled_from(REQS)))
        elif kind == "cancel":
            c = cmd("wf.cancel", now, ns, workflowId=wid)
        elif kind == "terminate":
            c = cmd("wf.terminate", now, ns, workflowId=wid, reason="t")
        elif kind == "reset":
            c = cmd("wf.reset", now, ns, workflowId=wid, eventId=draw(st.integers(0, 4)),
                    requestId=draw(st.sampled_from(REQS)))
        elif kind == "metadata":
            c = cmd("wf.metadata", now, ns, workflowId=wid, summary="s")
        elif kind == "sched":
            c = cmd(
                "sched.create", now, ns, scheduleId=sid, upsert=draw(st.booleans()),
                spec={"interval": [{"interval": "1s", "phase": "0s"}], "timezone": "UTC"},
                action={"type": "Tick", "taskQueue": "q"},
                policies={"overlapPolicy": draw(st.sampled_from(
                    ["SKIP", "BUFFER_ONE", "BUFFER_ALL", "CANCEL_OTHER", "TERMINATE_OTHER", "ALLOW_ALL"])),
                    "catchupWindow": 60_000, "pauseOnFailure": False},
                state={"paused": False},
            )
        elif kind == "fire":
            after = draw(st.sampled_from([0, now - 3000, now - 2000, now - 1000]))
            c = cmd("sched.fire", now, ns, scheduleId=sid, after=after,
                    nominal=(now // 1000) * 1000, missed=draw(st.integers(0, 2)))
        elif kind == "trigger":
            c = cmd("sched.trigger", now, ns, scheduleId=sid, requestId=draw(st.sampled_from(REQS)))
        elif kind == "pause":
            c = cmd("sched.pause", now, ns, scheduleId=sid, paused=draw(st.booleans()), note=None)
        elif kind == "task":
            op = draw(st.sampled_from(["wt.start", "wt.complete", "wt.fail", "wt.timeout"]))
            run_id = f"{draw(st.integers(1, 6)):032x}"  # not real run ids: mostly "task not current"
            c = cmd(op, now, ns, workflowId=wid, runId=run_id, scheduledEventId=draw(st.integers(1, 4)),
                    attempt=draw(st.integers(1, 2)), nonce="n", identity="w", cause="worker_lost",
                    commands=draw(st.sampled_from([[], [{"type": "CompleteWorkflowExecution", "result": 1}],
                                                   [{"type": "FailWorkflowExecution",
                                                     "failure": {"message": "x"}}], [{"type": "Nope"}],
                                                   [{"type": "StartTimer", "timer_id": "t",
                                                     "start_to_fire_timeout_ms": 5}],
                                                   [{"type": "ContinueAsNew"}],
                                                   [{"type": "StartChildWorkflowExecution", "workflow_type": "C",
                                                     "workflow_id": wid}],
                                                   [{"type": "SignalExternalWorkflowExecution",
                                                     "workflow_id": wid, "signal_name": "s"},
                                                    {"type": "RequestCancelExternalWorkflowExecution",
                                                     "workflow_id": wid}]])))
        elif kind == "batch":
            c = cmd("batch.start", now, ns, batchId=draw(st.sampled_from(BIDS)),
                    operation=draw(st.sampled_from(["BATCH_OPERATION_TYPE_TERMINATE", "BATCH_OPERATION_TYPE_SIGNAL"])),
                    query=draw(st.sampled_from(["", "WorkflowType = 'Charge'", "Nope = 1"])),
                    signal={"name": "s", "input": None}, rps=50, reason="", identity="", max=draw(st.integers(0, 3)))
        elif kind == "batch_progress":
            c = cmd("batch.progress", now, ns, batchId=draw(st.sampled_from(BIDS)),
                    cursor=draw(st.sampled_from(["", "w1\x00", "w2\x00", "w3\x00z"])),
                    complete=draw(st.integers(0, 3)), failure=draw(st.integers(0, 3)))
        elif kind == "batch_terminate":
            c = cmd("batch.terminate", now, ns, batchId=draw(st.sampled_from(BIDS)), reason="r", identity="i")
        elif kind == "identity":
            email = draw(st.sampled_from(["a@x.io", "b@x.io"]))
            c = (cmd("id.put", now, ns, email=email, role=draw(st.sampled_from(["viewer", "owner", "root"])))
                 if draw(st.booleans()) else cmd("id.delete", now, ns, email=email))
        elif kind == "delete_ns":
            c = cmd("ns.delete", now, ns)
        else:
            c = {"v": 1, "op": "wf.start", "org": "_", "ns": ns, "now": now}  # no start: rejected
        out.append(c)
    return out


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(stream=command_streams(), split=st.integers(min_value=1, max_value=7))
def test_same_stream_gives_byte_identical_replicas(stream: list[dict[str, Any]], split: int) -> None:
    assert_identical_replicas(stream, split, malformed=lambda c: c["op"] == "wf.start" and "start" not in c)


@SETTINGS
@given(stream=command_streams(), cut=st.integers(min_value=0, max_value=40))
def test_replaying_any_prefix_changes_nothing(stream: list[dict[str, Any]], cut: int) -> None:
    assert_prefix_replay_changes_nothing(stream, cut)


def test_rejected_command_changes_nothing(tmp_path: Any) -> None:
    m = fresh(str(tmp_path), "p")
    m.apply(1, encode(cmd("ns.register", 1000)))
    m.apply(2, encode(cmd("wf.start", 2000, start={"type": "A", "workflowId": "w"})))
    before = m.store.content_hash()
    res = m.apply(3, encode(cmd("wf.start", 3000, start={"type": "A", "workflowId": "w"})))
    assert res is not None and res["code"] == "already_started"
    assert res["details"]["workflowId"] == "w"
    # Only the applied index moved.
    with m.store.read() as txn:
        assert reads.run(txn, "_", "default", "w", None)["historyLength"] == 2
    assert m.store.content_hash(b"s") == before.__class__(m.store.content_hash(b"s"))
    assert m.store.applied_index() == 3


def test_undecodable_command_is_a_result_not_an_exception(tmp_path: Any) -> None:
    m = fresh(str(tmp_path), "p")
    for i, data in enumerate([b"\xc1", encode([1, 2]), encode({"v": 9}), encode({"v": 1, "op": "nope"})], 1):
        res = m.apply(i, data)
        assert res is not None and res["ok"] is False and res["code"] == "invalid_argument"
    assert m.store.applied_index() == 4


def test_fire_is_keyed_by_cursor_and_nominal(tmp_path: Any) -> None:
    m = fresh(str(tmp_path), "p")
    m.apply(1, encode(cmd("ns.register", 1000)))
    m.apply(2, encode(cmd(
        "sched.create", 1500, scheduleId="s", spec={"interval": [{"interval": "1s", "phase": "0s"}]},
        action={"type": "T", "taskQueue": "q"},
        policies={"overlapPolicy": "ALLOW_ALL", "catchupWindow": 60_000}, state={"paused": False},
    )))
    first = m.apply(3, encode(cmd("sched.fire", 2001, scheduleId="s", after=1500, nominal=2000)))
    assert first["outcome"] == "started"
    assert first["run"]["workflowId"] == "s-1970-01-01T00:00:02Z"
    again = m.apply(4, encode(cmd("sched.fire", 2002, scheduleId="s", after=1500, nominal=2000)))
    assert again["outcome"] == "stale"  # the same fire proposed twice applies once
    skipped_ahead = m.apply(5, encode(cmd("sched.fire", 4001, scheduleId="s", after=1500, nominal=4000)))
    assert skipped_ahead["outcome"] == "stale"  # a fire computed from an old cursor cannot skip 3000
    late = m.apply(6, encode(cmd("sched.fire", 200_000, scheduleId="s", after=2000, nominal=3000)))
    assert late["outcome"] == "missed_catchup"
    with m.store.read() as txn:
        s = reads.schedule(txn, "_", "default", "s")
    assert s["info"]["actionCount"] == 1 and s["info"]["missedCatchupWindow"] == 1


def test_storage_full_writes_nothing_and_consumes_no_index(tmp_path: Any) -> None:
    store = PartitionStore(tmp_path / "p", map_size=1 << 20, map_size_max=1 << 20, sync=False)
    m = StateMachine(store)
    m.apply(1, encode(cmd("ns.register", 1000)))
    big = "x" * 200_000
    index = 2
    results = []
    for k in range(20):
        res = m.apply(index, encode(cmd("wf.start", 2000 + k, start={"type": "A", "input": big})))
        results.append(res)
        if res is STORAGE_FULL:
            break
        index += 1
    assert results[-1] is STORAGE_FULL, "a 1 MiB map must fill up"
    applied = store.applied_index()
    assert applied == index - 1
    before = store.content_hash()
    assert m.apply(index, encode(cmd("wf.start", 9999, start={"type": "A", "input": big}))) is STORAGE_FULL
    assert store.content_hash() == before and store.applied_index() == applied
    # A small command still fits in what is left.
    ok = m.apply(index, encode(cmd("wf.start", 9999, start={"type": "A"})))
    assert ok["ok"] and store.applied_index() == index


def test_map_grows_on_demand(tmp_path: Any) -> None:
    store = PartitionStore(tmp_path / "p", map_size=1 << 20, map_size_max=64 << 20, sync=False)
    m = StateMachine(store)
    m.apply(1, encode(cmd("ns.register", 1000)))
    for k in range(40):
        res = m.apply(k + 2, encode(cmd("wf.start", 2000 + k, start={"type": "A", "input": "y" * 100_000})))
        assert res["ok"]
    assert store.map_grows >= 2 and store.map_size > 1 << 20


def test_snapshot_and_restore_round_trip(tmp_path: Any) -> None:
    m = fresh(str(tmp_path), "src")
    m.apply(1, encode(cmd("ns.register", 1000)))
    for k in range(50):
        m.apply(k + 2, encode(cmd("wf.start", 2000 + k, start={"type": "A", "workflowId": f"w{k}"})))
    index = m.store.snapshot(tmp_path / "snap")
    assert index == 51
    m.apply(52, encode(cmd("wf.start", 9000, start={"type": "A", "workflowId": "after"})))
    dst = fresh(str(tmp_path), "dst")
    assert dst.store.restore(tmp_path / "snap") == 51
    # The restored replica replays the tail and converges.
    dst.apply_batch([(52, encode(cmd("wf.start", 9000, start={"type": "A", "workflowId": "after"})))])
    assert dst.store.content_hash() == m.store.content_hash()
