"""One short real chaos run: three ``tasksd`` processes, the proxy, the
workload, a partitioned leader, the heal, and every check, end to end.

The full smoke suite is ``python -m chaos smoke`` (a Makefile target); this
keeps ``pytest`` exercising the harness itself in well under a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

from chaos.runner import EXIT_OK, RunConfig, run


def test_partitioned_leader_run_checks_clean(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code, report = run(RunConfig(scenario="partition-leader", duration=8.0, seed=7, dir=tmp_path / "run",
                                 out=out, quiet=True))
    assert json.loads(out.read_text())["scenario"] == "partition-leader"
    assert report["error"] is None, report.get("notes")
    assert code == EXIT_OK, json.dumps(report["anomalies"], indent=1)[:3000]
    assert [f["kind"] for f in report["faults"]] == ["partition"]
    victim = report["faults"][0]["targets"][0]
    # The fault bit: while cut off, the victim saw no leader (it cannot serve),
    # and the cluster kept acknowledging writes.
    assert any(s["health"].get(victim, "").startswith("degraded") for s in report["timeline"]), report["timeline"]
    assert report["operations"]["start"]["ok"] > 10
    names = {c["name"]: c for c in report["checks"]}
    assert set(names) >= {"acknowledged-starts", "histories", "signals", "schedules", "linearizable-registers",
                          "replicas"}
    assert all(c["checked"] > 0 for c in names.values())
    assert (tmp_path / "run" / "history.jsonl").stat().st_size > 0
