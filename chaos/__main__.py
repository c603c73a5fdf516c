"""``python -m chaos``: run, list, smoke, long.

    python -m chaos list
    python -m chaos run --scenario NAME [--nodes 3] [--replication-factor 3] [--duration S] [--seed N]
                        [--out report.json] [--dir D]
    python -m chaos smoke [--nodes 3] [--replication-factor 3] [--seed N] [--out smoke.json] [--dir D]
    python -m chaos long [--duration 1800] [--nodes 3] [--replication-factor 3] [--seed N] [--out long.json] [--dir D]

``--replication-factor R`` (every node's, the server default 3): below
``--nodes``, each partition is replicated by R of the nodes, and the faults
and checks follow the replica sets the cluster reports.
    python -m chaos check --dir D      re-run the data checks on a kept run directory

Exit status: 0 no anomaly, 1 at least one anomaly, 2 the harness could not
run (cluster never ready, bad arguments): nothing proven either way.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from chaos import procs
from chaos.runner import EXIT_ANOMALIES, EXIT_ERROR, EXIT_OK, RunConfig, run
from chaos.scenarios import SCENARIOS

#: The smoke suite: (scenario, duration s). Short enough for about three
#: minutes on a two-core machine, and one of each fault family that matters
#: most: a crashed leader, a frozen leader, a partitioned leader (read while
#: the majority writes: the stale-leader case), a full restart.
SMOKE = (
    ("kill-partition-leaders", 18.0),
    ("pause-leader", 18.0),
    ("stale-leader", 18.0),  # a partitioned leader, with reads aimed at it
    ("restart-all", 14.0),
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument("--replication-factor", type=int, default=3,
                   help="replicas per partition, passed to every node (default 3, the server's); below --nodes, "
                        "each partition lives on R of the nodes")
    p.add_argument("--seed", type=int, default=1, help="seed of fault choices and workload (default 1)")
    p.add_argument("--partitions", type=int, default=4, help="Raft partitions (default 4)")
    p.add_argument("--clients-per-node", type=int, default=2, help="workload clients per node (default 2)")
    p.add_argument("--out", type=Path, help="write the JSON report here too")
    p.add_argument("--dir", type=Path, help="run directory (must be empty; default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the run directory even without anomalies")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--with-migration", action="store_true",
                   help="start a namespace migration right before each fault (a migration in flight during it)")
    p.add_argument("--stale-reads", action="store_true",
                   help="canary: read registers with ?stale=true; the checker must flag the stale reads")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the scenarios")
    r = sub.add_parser("run", help="run one scenario")
    r.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    r.add_argument("--duration", type=float, default=30.0, help="workload seconds (default 30)")
    _common(r)
    s = sub.add_parser("smoke", help="the short suite (about 3 minutes)")
    s.add_argument("--duration-scale", type=float, default=1.0, help="multiply every smoke duration")
    _common(s)
    c = sub.add_parser("check", help="re-run the data checks on a kept run directory")
    c.add_argument("--dir", type=Path, required=True, help="a run directory (kept with --keep or on anomalies)")
    g = sub.add_parser("long", help="the mixed scenario, long")
    g.add_argument("--duration", type=float, default=1800.0, help="workload seconds (default 1800)")
    _common(g)
    return p.parse_args(argv)


def _config(a: argparse.Namespace, scenario: str, duration: float, sub: str | None = None) -> RunConfig:
    d = a.dir if sub is None or a.dir is None else a.dir / sub
    return RunConfig(scenario=scenario, nodes=a.nodes, duration=duration, seed=a.seed, out=None if sub else a.out,
                     dir=d, partitions=a.partitions, clients_per_node=a.clients_per_node, keep=a.keep,
                     quiet=a.quiet, stale_reads=a.stale_reads, with_migration=a.with_migration,
                     replication_factor=a.replication_factor)


def smoke(a: argparse.Namespace) -> int:
    started = time.monotonic()
    worst = EXIT_OK
    reports = []
    for name, duration in SMOKE:
        code, report = run(_config(a, name, duration * a.duration_scale, sub=name))
        reports.append(report)
        worst = max(worst, code)
    summary = {
        "suite": "smoke", "seed": a.seed, "nodes": a.nodes, "replication_factor": a.replication_factor,
        "elapsed_s": round(time.monotonic() - started, 1),
        "result": {EXIT_OK: "ok", EXIT_ANOMALIES: "anomalies", EXIT_ERROR: "error"}[worst],
        "faults": sum(len(r.get("faults", [])) for r in reports),
        "operations_checked": sum(r.get("operations_checked", 0) for r in reports),
        "anomalies": sum(len(r.get("anomalies", [])) for r in reports),
        "runs": reports,
    }
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(summary, indent=2, default=str))
    print(f"smoke: {summary['result'].upper()} in {summary['elapsed_s']}s (nodes={a.nodes}, "
          f"replication-factor={a.replication_factor}): {len(reports)} scenarios, "
          f"{summary['faults']} faults, {summary['operations_checked']} operations checked, "
          f"{summary['anomalies']} anomalies", flush=True)
    return worst


def check(root: Path) -> int:
    from chaos.recheck import recheck

    try:
        results = recheck(root)
    except (OSError, ValueError, KeyError) as e:
        print(f"chaos: cannot re-check {root}: {e}", file=sys.stderr)
        return EXIT_ERROR
    found = 0
    for r in results:
        print(f"check {r.name}: {r.checked} checked, {'ok' if not r.anomalies else f'{len(r.anomalies)} ANOMALIES'}")
        for a in r.anomalies[:10]:
            print(f"  ! {a.kind}: {a.detail[:300]}")
        found += len(r.anomalies)
    return EXIT_ANOMALIES if found else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    a = parse(list(sys.argv[1:] if argv is None else argv))
    procs.exit_on_sigterm()  # a CI timeout's SIGTERM still kills every node we started
    if a.cmd == "list":
        width = max(len(n) for n in SCENARIOS)
        for name, s in SCENARIOS.items():
            print(f"{name:<{width}}  {s.doc}")
        return EXIT_OK
    if a.cmd == "check":
        return check(a.dir)
    if getattr(a, "nodes", 3) < 3:
        print("chaos: --nodes must be at least 3 (a majority must survive one fault)", file=sys.stderr)
        return EXIT_ERROR
    if getattr(a, "replication_factor", 3) < 1:
        print("chaos: --replication-factor must be at least 1", file=sys.stderr)
        return EXIT_ERROR
    if getattr(a, "replication_factor", 3) < 3 and not getattr(a, "quiet", False):
        print("chaos: warning: with --replication-factor below 3 one fault can leave a partition without a "
              "quorum (less availability, which is reported, never an anomaly)", file=sys.stderr)
    if a.cmd == "run":
        return run(_config(a, a.scenario, a.duration))[0]
    if a.cmd == "smoke":
        return smoke(a)
    return run(_config(a, "mixed", a.duration))[0]


if __name__ == "__main__":
    sys.exit(main())
