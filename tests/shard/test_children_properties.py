"""Child workflows under random interleavings (hypothesis), on real LMDB.

Runs start children (explicit ids that collide on purpose, or default ids),
signal and cancel each other, complete, fail, continue as new, get terminated
and canceled by clients, and time out, in any order. After every step:

- every open child of a closed parent (or of a parent attempt that failed)
  has had its parent close policy applied: none is left RUNNING under
  TERMINATE, none under REQUEST_CANCEL unless its chain continued;
- a child a parent still tracks is open and points back at that parent;
- each INITIATED event has exactly one outcome, and each child's close is
  recorded in its parent at most once, after its start.

The commands the test applied are then a stream for the two determinism
properties: two replicas (one in group commits) end byte-identical, and
replaying any applied prefix changes nothing.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from hanzo_tasks.shard import encode, reads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.shard.determinism import assert_identical_replicas, assert_prefix_replay_changes_nothing
from tests.shard.test_workflow_tasks import M

ROOTS = ["p1", "p2"]
IDS = ["c1", "c2", "p1", None]  # None: the default <parent>-child-<event id>
OPEN = ("RUNNING", "CANCELING")
CLOSE_EVENTS = {"CHILD_WORKFLOW_EXECUTION_" + s for s in ("COMPLETED", "FAILED", "CANCELED", "TIMED_OUT",
                                                          "TERMINATED")}
OUTCOMES = {
    "START_CHILD_WORKFLOW_EXECUTION_INITIATED": {"CHILD_WORKFLOW_EXECUTION_STARTED",
                                                 "START_CHILD_WORKFLOW_EXECUTION_FAILED"},
    "SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED": {"EXTERNAL_WORKFLOW_EXECUTION_SIGNALED",
                                                     "SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED"},
    "REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED": {"EXTERNAL_WORKFLOW_EXECUTION_CANCEL_REQUESTED",
                                                             "REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_FAILED"},
}
RETRY = {"initialInterval": 1000, "backoffCoefficient": 2.0, "maximumInterval": 4000, "maximumAttempts": 2,
         "nonRetryableErrorTypes": []}


class Recording(M):
    """``M`` that keeps every command it applied, as a stream for the determinism checks."""

    def __init__(self, tmp: Path) -> None:
        self.stream: list[dict[str, Any]] = []
        super().__init__(tmp)

    def do(self, op: str, **f: Any) -> dict[str, Any]:
        self.i += 1
        self.now += 100
        cmd = {"v": 1, "op": op, "org": "_", "ns": "default", "now": self.now, "rnd": f"{self.i:032x}", **f}
        self.stream.append(cmd)
        res = self.m.apply(self.i, encode(cmd))
        assert res is not None
        return res


def _wid(v: str | None) -> dict[str, Any]:
    return {} if v is None else {"workflow_id": v}


COMMAND = st.one_of(
    st.builds(lambda wid, policy, conflict, timeout: {
        "type": "StartChildWorkflowExecution", "workflow_type": "C", **_wid(wid), "parent_close_policy": policy,
        "id_conflict_policy": conflict, **({"workflow_run_timeout_ms": timeout} if timeout else {})},
        st.sampled_from(IDS), st.sampled_from(["TERMINATE", "ABANDON", "REQUEST_CANCEL"]),
        st.sampled_from(["FAIL", "TERMINATE_EXISTING"]), st.sampled_from([None, 3000])),
    st.builds(lambda wid, only: {"type": "SignalExternalWorkflowExecution", "workflow_id": wid,
                                 "signal_name": "s", "child_workflow_only": only},
              st.sampled_from(["c1", "c2", "p1", "p2", "nobody"]), st.booleans()),
    st.builds(lambda wid, only: {"type": "RequestCancelExternalWorkflowExecution", "workflow_id": wid,
                                 "child_workflow_only": only},
              st.sampled_from(["c1", "c2", "p1", "p2"]), st.booleans()),
    st.just({"type": "RecordMarker", "marker_name": "m"}),
)
TERMINAL = st.sampled_from([
    None, None,
    {"type": "CompleteWorkflowExecution", "result": 1},
    {"type": "FailWorkflowExecution", "failure": {"message": "x"}},
    {"type": "ContinueAsNew"},
    {"type": "CancelWorkflowExecution"},
])
TASK = st.tuples(st.just("task"), st.integers(0, 7), st.lists(COMMAND, max_size=3), TERMINAL)
STEP = st.one_of(
    TASK, TASK, TASK,  # mostly workers at work
    st.tuples(st.just("start"), st.sampled_from(ROOTS), st.booleans()),
    st.tuples(st.just("client"), st.sampled_from(["wf.terminate", "wf.cancel", "wf.signal"]),
              st.sampled_from(["c1", "c2", "p1", "p2"])),
    st.tuples(st.just("tick"), st.integers(0, 8000)),
)


def _all_runs(m: M) -> list[dict[str, Any]]:
    with m.m.store.read() as txn:
        runs, _ = reads.list_runs(txn, "_", "default", lambda r: True, None, 10_000)
    return runs


def _history(m: M, run: dict[str, Any]) -> list[dict[str, Any]]:
    with m.m.store.read() as txn:
        evs, _ = reads.history(txn, "_", "default", run["runId"], 0, False, 100_000, run["historyLength"])
    return evs


def _step(m: Recording, step: tuple[Any, ...]) -> None:
    kind = step[0]
    if kind == "start":
        _, wid, retry = step
        m.do("wf.start", start={"type": "P", "workflowId": wid, "taskQueue": "q",
                                **({"retryPolicy": RETRY} if retry else {})})
    elif kind == "task":
        _, pick, commands, terminal = step
        ready = sorted((r["workflowId"], r["runId"]) for r in _all_runs(m)
                       if r["status"] in OPEN and r.get("wt") and r["wt"]["state"] == "SCHEDULED")
        if not ready:
            return
        wid, rid = ready[pick % len(ready)]
        run = m.run(wid)
        if run["runId"] != rid:
            return
        m.now = max(m.now, run["wt"]["visibleAt"])
        assert m.lease(wid)["ok"]
        listed = [*commands, *([terminal] if terminal else [])]
        res = m.do("wt.complete", **m.token(wid), identity="w", commands=listed)
        if not res["ok"]:  # only CancelWorkflowExecution without a cancel request is refused here
            assert terminal == {"type": "CancelWorkflowExecution"} and run["status"] == "RUNNING", res
    elif kind == "client":
        _, op, wid = step
        m.do(op, workflowId=wid, name="s", reason="r")
    else:
        m.now += step[1]
        with m.m.store.read() as txn:
            due = reads.due_deadlines(txn, "_", "default", m.now, 100)
        for at, timer, wid, rid in due:
            m.do("wf.deadline", workflowId=wid, runId=rid, kind=timer, at=at)


def _check(m: M) -> None:
    runs = {(r["workflowId"], r["runId"]): r for r in _all_runs(m)}
    histories = {key: _history(m, r) for key, r in runs.items()}
    for key, run in runs.items():
        evs = histories[key]
        assert [e["eventId"] for e in evs] == list(range(1, len(evs) + 1))
        by_id = {e["eventId"]: e for e in evs}
        outcomes = Counter(e["attributes"]["initiatedEventId"] for e in evs
                           if any(e["eventType"] in s for s in OUTCOMES.values()))
        closes = Counter(e["attributes"]["initiatedEventId"] for e in evs if e["eventType"] in CLOSE_EVENTS)
        for e in evs:
            if e["eventType"] in OUTCOMES:
                assert outcomes[e["eventId"]] == 1, f"{key}: event {e['eventId']} has {outcomes[e['eventId']]} outcomes"
        for ieid, n in closes.items():
            assert n == 1, f"{key}: the close of child {ieid} recorded {n} times"
            started = [e for e in evs if e["eventType"] == "CHILD_WORKFLOW_EXECUTION_STARTED"
                       and e["attributes"]["initiatedEventId"] == ieid]
            assert started, f"{key}: a child close without its start"
        if run["status"] not in OPEN:
            assert not run.get("children"), f"closed {key} still tracks children"
        for ieid, entry in (run.get("children") or {}).items():
            kid = runs[(entry["workflowId"], entry["runId"])]
            assert kid["status"] in OPEN
            assert kid["parent"] == {"workflowId": key[0], "runId": key[1], "initiatedEventId": int(ieid)}
            assert closes[int(ieid)] == 0
            assert by_id[int(ieid)]["eventType"] == "START_CHILD_WORKFLOW_EXECUTION_INITIATED"
        link = run.get("parent")
        if link is None or run["status"] not in OPEN:
            continue
        parent = runs[(link["workflowId"], link["runId"])]
        entry = (parent.get("children") or {}).get(str(link["initiatedEventId"]))
        if entry is not None and entry["runId"] == run["runId"]:
            assert parent["status"] in OPEN
            continue
        policy = histories[(parent["workflowId"], parent["runId"])][link["initiatedEventId"] - 1]
        policy = policy["attributes"]["parentClosePolicy"]
        assert policy != "TERMINATE", f"{key} outlived its parent under TERMINATE"
        if policy == "REQUEST_CANCEL":
            assert run["status"] == "CANCELING" or run.get("continuedFromRunId"), \
                f"{key} was not asked to cancel when its parent let it go"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=10, max_size=40), split=st.integers(1, 7), cut=st.integers(0, 200))
def test_any_interleaving_applies_each_policy_once_and_is_deterministic(
        steps: list[tuple[Any, ...]], split: int, cut: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        m = Recording(Path(d))
        for root in ROOTS:
            m.do("wf.start", start={"type": "P", "workflowId": root, "taskQueue": "q"})
        for step in steps:
            _step(m, step)
            _check(m)
        stream = m.stream
    assert_identical_replicas(stream, split)
    assert_prefix_replay_changes_nothing(stream, cut)
