"""The run report: a JSON document and a short human summary.

Availability is reported as numbers (how many writes were refused or left
unknown, the longest stretch without an acknowledged write, how long after
each fault and heal writes resumed), never as anomalies: on a loaded two-core
machine slowness says little, while a lost or doubled write always matters.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from chaos.faults import FaultRecord
from chaos.history import Op

WRITES = ("start", "signal", "write")


def operation_counts(ops: Iterable[Op]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for op in ops:
        if "setup" in op.tags:
            continue
        out.setdefault(op.kind, Counter())[op.outcome] += 1
    return {k: dict(v) for k, v in sorted(out.items())}


def availability(ops: Iterable[Op], faults: list[FaultRecord], start: float, end: float) -> dict[str, Any]:
    """Gaps between acknowledged writes, and recovery after each fault."""
    acked = sorted(op.complete for op in ops if op.kind in WRITES and op.outcome == "ok" and "setup" not in op.tags)
    out: dict[str, Any] = {"acknowledged_writes": len(acked)}
    points = [start, *[t for t in acked if start <= t <= end], end]
    gaps = [(b - a, a) for a, b in zip(points, points[1:], strict=False)]
    if gaps:
        longest, at = max(gaps)
        out["longest_gap_s"] = round(longest, 2)
        out["longest_gap_at_s"] = round(at, 2)
    recovery = []
    for f in faults:
        rec: dict[str, Any] = {"kind": f.kind, "targets": f.targets}
        for label, t in (("after_inject_s", f.injected_at), ("after_heal_s", f.healed_at)):
            if t is None:
                continue
            nxt = next((a for a in acked if a > t), None)
            rec[f"first_ack_{label}"] = None if nxt is None else round(nxt - t, 2)
        recovery.append(rec)
    out["recovery"] = recovery
    return out


def worker_stats(path: Path) -> dict[str, Any]:
    """Handler calls from the worker log: runs handled more than once (at-least-once)."""
    calls: Counter[tuple[str, str]] = Counter()
    subscribed = 0
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("event") == "subscribed":
                    subscribed += 1
                elif "wid" in rec:
                    calls[(rec.get("ns", ""), rec["wid"])] += 1
    except OSError:
        return {"error": "no worker log"}
    return {"handler_calls": sum(calls.values()), "runs_handled": len(calls),
            "runs_handled_more_than_once": sum(1 for n in calls.values() if n > 1), "subscriptions": subscribed}


def summary(report: dict[str, Any]) -> str:
    """A few lines for a human: what ran, what was injected, what was found."""
    lines = [
        f"chaos {report['scenario']} seed={report['seed']} nodes={report['nodes']} "
        f"replication-factor={report.get('replication_factor', 3)} "
        f"duration={report['duration']}s -> {report['result'].upper()}"
        + (f" ({report['skipped']})" if report.get("skipped") else ""),
    ]
    if report.get("error"):
        lines.append(f"  error: {report['error']}")
    if report.get("workload_started_at") is not None:
        lines.append(f"  times: seconds since the run began; the workload began at +{report['workload_started_at']}s")
    faults = report.get("faults", [])
    if len(faults) > 12:
        kinds = Counter(f["kind"] for f in faults)
        lines.append(f"  {len(faults)} faults: " + ", ".join(f"{k} x{n}" for k, n in kinds.most_common())
                     + " (each in the report; the last 8 below)")
        faults = faults[-8:]
    for f in faults:
        extra = f" {f['params']}" if f.get("params") else ""
        when = f"+{f['injected_at']}s..+{f['healed_at']}s" if f.get("injected_at") is not None else ""
        lines.append(f"  fault {f['kind']} {','.join(f['targets'])}{extra} {when}"
                     + (f" ready {f['ready_after_s']}s after heal" if f.get("ready_after_s") is not None else "")
                     + (f" [{'; '.join(f['notes'])}]" if f.get("notes") else ""))
    for e in report.get("events", []):
        if "final" in e:
            j = e.get("final") or {}
            lines.append(f"  migration {e.get('migration')}: {j.get('status', 'unknown')} {j.get('namespace')} "
                         f"partition {j.get('fromPartition')}->{j.get('toPartition')}"
                         + (f" error={j.get('error')!r}" if j.get("error") else ""))
        elif "migration" in e and e.get("migration") is None:
            lines.append(f"  migration of {e.get('ns')} not started: {e.get('answer')}")
    for e in report.get("episodes", []):
        keys = ("skipped", "node", "down", "replaced", "how", "installs", "install_seen", "kills", "enospc_logged", "exited", "stalled",
                "caught_up_after_s", "in_prefix_window", "flips_done", "hammer_ops", "longest_leaderless_s")
        info = {k: e[k] for k in keys if k in e and e[k] not in (None, [], {})}
        lines.append(f"  episode {e.get('scenario')} +{e.get('t0')}s..+{e.get('t1')}s: "
                     f"{'skipped' if e.get('skipped') else 'window reached' if e.get('reached') else 'WINDOW NOT REACHED'}"
                     f" {json.dumps(info)[:400]}")
    windows = report.get("windows")
    if windows:
        lines.append("  windows: " + ", ".join(f"{n} ran {w['ran']} reached {w['reached']}"
                                               + (f" skipped {w['skipped']}" if w.get("skipped") else "")
                                               for n, w in windows.items()))
    ops = report.get("operations", {})
    if ops:
        lines.append("  ops: " + ", ".join(
            f"{k} " + "/".join(f"{v.get(o, 0)}{o[0]}" for o in ("ok", "unknown", "failed")) for k, v in ops.items()
        ) + "  (ok/unknown/failed)")
    av = report.get("availability", {})
    if av:
        lines.append(f"  availability: longest gap without an acknowledged write {av.get('longest_gap_s')}s "
                     f"(at +{av.get('longest_gap_at_s')}s)")
    for c in report.get("checks", []):
        status = "ok" if c["ok"] else f"{len(c['anomalies'])} ANOMALIES"
        lines.append(f"  check {c['name']}: {c['checked']} checked, {status}"
                     + (f"; {'; '.join(c['notes'])[:300]}" if c.get("notes") else ""))
    anomalies = report.get("anomalies", [])
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for a in anomalies:
        by_kind.setdefault(f"{a['check']}/{a['kind']}", []).append(a)
    for kind, items in by_kind.items():
        lines.append(f"  ! {kind} x{len(items)}, e.g. {items[0]['detail'][:300]}")
    for n in report.get("notes", [])[:10]:
        lines.append(f"  note: {n[:300]}")
    lines.append(f"  run dir: {report.get('run_dir')}")
    lines.append(f"  reproduce: {report.get('command')}")
    return "\n".join(lines)
