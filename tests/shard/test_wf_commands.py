"""Workflow task commands in the state machine (SPEC §5.6), driven by hypothesis.

Random command lists — valid and invalid — are completed against a real run on
two independent stores; the stores must stay byte-identical (determinism), a
rejected list must add nothing but WORKFLOW_TASK_FAILED (and its retry), and open timers and
activities on the record must match what the history says is open.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.shard.test_workflow_tasks import M

TIMERS = ["a", "b"]
COMMAND = st.one_of(
    st.builds(lambda t, ms: {"type": "StartTimer", "timer_id": t, "start_to_fire_timeout_ms": ms},
              st.sampled_from(TIMERS), st.integers(1, 5000)),
    st.builds(lambda t: {"type": "CancelTimer", "timer_id": t}, st.sampled_from(TIMERS)),
    st.builds(lambda a: {"type": "ScheduleActivityTask", "activity_type": "A", "activity_id": a},
              st.sampled_from(["x", "y"])),
    st.builds(lambda e: {"type": "RequestCancelActivityTask", "scheduled_event_id": e}, st.integers(1, 30)),
    st.builds(lambda v: {"type": "UpsertSearchAttributes", "search_attributes": {"K": v}},
              st.one_of(st.none(), st.text(max_size=3))),
    st.just({"type": "RecordMarker", "marker_name": "m"}),
    st.just({"type": "CompleteWorkflowExecution", "result": 1}),
    st.just({"type": "ContinueAsNew", "input": 2}),
    st.just({"type": "CancelWorkflowExecution"}),
)


def _content(m: M) -> bytes:
    return m.m.store.content_hash()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(COMMAND, max_size=4), st.integers(0, 6000)), min_size=1, max_size=6))
def test_random_command_lists_are_deterministic_and_all_or_nothing(rounds: list[tuple[list[Any], int]]) -> None:
    with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
        machines = [M(Path(d1)), M(Path(d2))]
        for m in machines:
            m.do("wf.start", start={"type": "T", "workflowId": "w", "taskQueue": "q"})
        for commands, wait in rounds:
            outcomes = []
            for m in machines:
                run = m.run("w")
                if run["status"] not in ("RUNNING", "CANCELING"):
                    outcomes.append("closed")
                    continue
                if not run.get("wt") or run["wt"]["state"] != "SCHEDULED":
                    m.do("wf.signal", workflowId="w", name="s")
                    run = m.run("w")
                if run["wt"]["state"] == "SCHEDULED":
                    m.now = max(m.now, run["wt"]["visibleAt"])
                    assert m.lease("w")["ok"]
                before = m.events("w")
                res = m.do("wt.complete", **m.token("w"), identity="w", commands=commands)
                if not res["ok"]:
                    assert m.events("w") == [*before, "WORKFLOW_TASK_FAILED", "WORKFLOW_TASK_SCHEDULED"]
                outcomes.append(res["ok"])
                m.now += wait
                # fire due timers the way the leader would
                run = m.run("w")
                for kind, at in sorted((run.get("timers") or {}).items()):
                    if at <= m.now:
                        m.do("wf.deadline", workflowId="w", runId=run["runId"], kind=kind, at=at)
                run = m.run("w")
                open_timers = set(run.get("openTimers") or {})
                armed = {k[2:] for k in (run.get("timers") or {}) if k.startswith("t:")}
                assert open_timers == armed
            assert outcomes[0] == outcomes[1]
        assert _content(machines[0]) == _content(machines[1])
