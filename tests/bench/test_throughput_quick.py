"""bench.throughput runs end to end in its shortest form and writes a report of the agreed shape.

A real node and, when an ``etcd`` binary is on PATH, three real etcd members; the
assertions are on the report's structure only, never on speed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.etcd import NOT_FOUND

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_rows_cpu_per_process_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--quick", "--systems", "single,etcd",
         "--levels", "1,4", "--duration", "0.5", "--json", str(out), "--tmp-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    have_etcd = shutil.which("etcd") is not None

    ours = [r for r in report["rows"] if r["system"] == "single"]
    assert [(r["op"], r["clients"]) for r in ours] == [("start", 1), ("start", 4), ("describe", 4),
                                                        ("describe-stale", 4)]
    starts = ours[:2]
    for row in report["rows"]:
        assert row["ok"] > 0 and row["errors"] == {}, row
        assert row["ops_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["processes"] and all(p["cpu_ms_per_op"] is not None for p in row["processes"])
        assert row["target"] in {p["name"] for p in row["processes"]}
        assert row["cpu_ms_per_op"] is not None and row["generator_cpu_ms_per_op"] is not None
    assert [p["name"] for p in starts[0]["processes"]] == ["single"]
    assert report["generator"]["verdict"]

    etcd_rows = [(r["op"], r["clients"], len(r["processes"]))
                 for r in report["rows"] if r["system"] == "etcd"]
    if have_etcd:
        assert report["etcd"]["found"] is True
        assert etcd_rows == [("put", 1, 3), ("put", 4, 3), ("range", 4, 3)]
        assert [(x["system"], x["op"], x["clients"]) for x in report["ratios"]] == [
            ("single", "start ÷ put", 1), ("single", "start ÷ put", 4), ("single", "describe ÷ range", 4),
            ("single", "describe-stale ÷ range", 4)]
        assert all(x["ops_per_s"] and x["cpu_per_op"] for x in report["ratios"])
        assert "ours ÷ etcd" in proc.stdout
    else:
        assert etcd_rows == [] and report["ratios"] == []
        assert NOT_FOUND in report["notes"] and NOT_FOUND in proc.stderr
