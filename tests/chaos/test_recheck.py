"""A kept run directory can be checked again offline, and tampering with it is caught."""

from __future__ import annotations

import json
from pathlib import Path

from chaos.checker import ScheduleObs
from chaos.history import History
from chaos.recheck import recheck, save


def make_run(root: Path) -> None:
    h = History(root / "history.jsonl")
    setup = h.begin(-1, "start", ns="ns", wid="reg-0", request_id="setup-ns-reg-0", tags=["setup"])
    setup.run_id = "r0"
    h.end(setup, "ok")
    op = h.begin(0, "start", ns="ns", wid="job-0-1", request_id="rq-0-1")
    op.run_id = "r1"
    h.end(op, "ok")
    w = h.begin(0, "write", ns="ns", wid="reg-0", key="ns/reg-0", value="v-0-2")
    h.end(w, "ok")
    r = h.begin(1, "read", ns="ns", wid="reg-0", key="ns/reg-0")
    r.value = "v-0-2"
    h.end(r, "ok")
    h.close()
    events = [
        {"eventId": 1, "eventType": "WORKFLOW_EXECUTION_STARTED", "attributes": {"requestId": "rq-0-1"}},
        {"eventId": 2, "eventType": "WORKFLOW_EXECUTION_COMPLETED", "attributes": {"result": {"wid": "job-0-1"}}},
    ]
    observed = {
        "reference_node": "n1",
        "runs_by_node": {n: {("ns", "job-0-1"): ["r1"], ("ns", "reg-0"): ["r0"]} for n in ("n1", "n2")},
        "histories": {("ns", "job-0-1"): events},
        "schedules": [ScheduleObs("tick-a", 600, 1_000_000_000_500, 0, 0, {})],
    }
    digests = {"0": {"n1": {"hash": "x", "applied": 3}, "n2": {"hash": "x", "applied": 3}}}
    save(root, observed, digests, {("ns", "reg-0")})


def test_recheck_of_a_clean_run_is_clean(tmp_path: Path) -> None:
    make_run(tmp_path)
    results = recheck(tmp_path)
    assert [r.name for r in results][:2] == ["acknowledged-starts", "histories"]
    assert all(not r.anomalies for r in results), [a for r in results for a in r.anomalies]


def test_recheck_catches_a_replica_that_lost_a_write(tmp_path: Path) -> None:
    make_run(tmp_path)
    obs = json.loads((tmp_path / "observed.json").read_text())
    del obs["runs_by_node"]["n2"]["ns/job-0-1"]
    (tmp_path / "observed.json").write_text(json.dumps(obs))
    lost = [a for r in recheck(tmp_path) for a in r.anomalies]
    assert [(a.check, a.kind) for a in lost] == [("acknowledged-starts", "lost")]
