"""The data checks of a run, and re-running them offline from a run directory.

A kept run directory holds everything the checks read: ``history.jsonl``,
``observed.json`` (each node's runs, the schedules), ``histories.json`` and
``digests.json``. ``python -m chaos check --dir D`` runs the checks again on
them, which is how a checker change is tried on a run that found something,
without running the cluster again. (Process and scenario-specific findings,
like a crashed node, are only in the original report.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chaos import collect
from chaos.checker import (
    CheckResult,
    RunKey,
    ScheduleObs,
    check_acknowledged_starts,
    check_histories,
    check_registers,
    check_replicas,
    check_schedules,
    check_signals,
)
from chaos.history import Op, load


def expected_result(key: RunKey) -> Any:
    """What the chaos workers return for a run: ``{"wid": workflowId}`` (None = unchecked)."""
    return {"wid": key[1]} if key[1].startswith(("job-", "tick-")) else None


def data_checks(ops: list[Op], runs_by_node: dict[str, dict[RunKey, list[str]]],
                histories: dict[RunKey, list[dict[str, Any]]], schedules: list[ScheduleObs],
                digests: dict[str, dict[str, dict[str, Any]]], registers: set[RunKey],
                holders: dict[str, list[str]] | None = None) -> list[CheckResult]:
    """Every check over the recorded history and what the cluster held after the heal.

    ``holders``: namespace -> the nodes holding its partition (None: every node holds everything).
    """
    return [
        check_acknowledged_starts(ops, runs_by_node, holders=holders),
        check_histories(ops, histories, expected_result),
        check_signals(ops, collect.signals_received({k: v for k, v in histories.items() if k in registers})),
        check_schedules(schedules),
        check_registers(ops),
        check_replicas(digests),
    ]


def _key(text: str) -> RunKey:
    ns, _, wid = text.partition("/")
    return ns, wid


def save(root: Path, observed: dict[str, Any], digests: dict[str, Any], registers: set[RunKey]) -> None:
    """Write what ``load_run`` reads back."""
    from dataclasses import asdict

    dump = {
        "reference_node": observed["reference_node"],
        "runs_by_node": {n: {f"{k[0]}/{k[1]}": v for k, v in r.items()} for n, r in observed["runs_by_node"].items()},
        "schedules": [asdict(s) for s in observed["schedules"]],
        "registers": sorted(f"{ns}/{wid}" for ns, wid in registers),
        "holders": observed.get("holders"),
    }
    (root / "observed.json").write_text(json.dumps(dump, default=str))
    (root / "histories.json").write_text(
        json.dumps({f"{k[0]}/{k[1]}": v for k, v in observed["histories"].items()}, default=str))
    (root / "digests.json").write_text(json.dumps(digests))


def recheck(root: Path) -> list[CheckResult]:
    """Run ``data_checks`` on a kept run directory."""
    ops = load(root / "history.jsonl")
    obs = json.loads((root / "observed.json").read_text())
    hists = json.loads((root / "histories.json").read_text())
    digests_path = root / "digests.json"
    digests = json.loads(digests_path.read_text()) if digests_path.exists() else {}
    return data_checks(
        ops,
        {n: {_key(k): v for k, v in r.items()} for n, r in obs["runs_by_node"].items()},
        {_key(k): v for k, v in hists.items()},
        [ScheduleObs(**s) for s in obs["schedules"]],
        digests,
        {_key(k) for k in obs.get("registers", [])},
        obs.get("holders"),
    )
