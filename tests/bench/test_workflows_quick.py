"""bench.workflows runs end to end in its shortest form and writes a report of the agreed shape.

A real node, real worker processes and real clients; the assertions are on the
report's structure only (rows, CPU per workflow, ratios, the anchor), never on speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_durable_and_task_style_rows_with_ratios(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.workflows", "--quick", "--systems", "single",
         "--levels", "1,2", "--duration", "0.5", "--warmup", "0.2", "--workers", "1",
         "--json", str(out), "--tmp-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["errors"] == []
    assert [(r["system"], r["kind"], r["clients"]) for r in report["rows"]] == [
        ("single", "durable", 1), ("single", "task-style", 1),
        ("single", "durable", 2), ("single", "task-style", 2)]
    for row in report["rows"]:
        assert row["completed"] > 0 and row["errors"] == {}, row
        assert row["workflows_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        cpu = row["cpu_ms_per_wf"]
        assert set(cpu) == {"nodes", "workers", "bench", "sum"} and cpu["nodes"] > 0, cpu
        assert row["commands_per_wf"]["wf.start"] == 1, row["commands_per_wf"]
    durable = report["rows"][0]["commands_per_wf"]
    assert durable["wt.start"] >= 4 and durable["act.complete"] == 3, durable
    assert [(x["system"], x["clients"]) for x in report["ratios"]] == [("single", 1), ("single", 2)]
    assert all(x["workflows_per_s"] and x["p50"] and x["cpu_per_wf"] for x in report["ratios"])
    assert "Restate" in report["anchor"] and "Restate" in proc.stdout
    assert "durable ÷ task-style" in proc.stdout
