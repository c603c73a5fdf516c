"""Throughput of the replicated write path, side by side with etcd (issue 14).

Run it from the repository root::

    .venv/bin/python -m bench.throughput            # full: 1/16/128 clients, 10 s a row (~2 min)
    .venv/bin/python -m bench.throughput --quick    # 1/128 clients, 2 s a row (~30 s)
    make bench-throughput

It is a measurement, not a test: nothing here asserts on speed. In one run,
under one load generator (``bench.loadgen``: raw asyncio HTTP/1.1 keep-alive
connections, one per client, requests back to back):

1. **tasks, 1 node** (``--replicator local``) and then **tasks, 3 nodes**
   (``--replicator raft``, 16 partitions, server-default Raft timings: 100 ms
   heartbeat, 500 ms election), both ``--durability sync``: durable workflow
   starts, ``POST /v1/tasks/namespaces/bench/workflows`` with a unique
   workflowId/requestId per request, namespace ``bench`` with ``apsLimit: 0``.
   On 3 nodes every client sends to the leader of ``bench``'s partition
   (``GET /v1/tasks/cluster``), asked again before every row.
2. **etcd, 3 members** (Debian's ``etcd-server``, started here on loopback
   with the same 100 ms / 500 ms timings, ``bench.etcd``): 64-byte puts of
   fresh keys through its HTTP/JSON gateway (``POST /v3/kv/put``), sent to
   the leader, at the same client counts; then one row of linearizable
   reads (``POST /v3/kv/range``) at the largest count. Without an ``etcd``
   binary the report says so and goes on.

Per row: ops/s (2xx answers ÷ wall time), client-side p50/p99/max latency,
and CPU time per op of every server process (``/proc/<pid>/stat`` utime+stime
before and after the row ÷ ops) and summed over the system. The load
generator's own CPU (% of one core and per op) and the CPU of *other*
processes on the machine are printed too: the generator is one thread, so
near 100% of a core it would be the bottleneck (the report says which rows),
and a few % of "other" means something else competed. Ratios ours ÷ etcd per
client count: ops/s (> 1 = ours faster), p50/p99 and CPU per op (< 1 = ours
cheaper). The JSON report goes to ``bench/results/throughput-<time>.json``
unless ``--json`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench.cluster import READY_TIMEOUT, Settings, System, leader_urls
from bench.etcd import NOT_FOUND, EtcdCluster, etcd_version, find_etcd
from bench.loadgen import LoadResult, RequestFactory, http_request, run_load
from bench.single_node import (
    CLK_TCK,
    _on_sigterm,
    _stat_cpu,
    _table,
    create_namespace,
    filesystem_of,
    percentile,
    rate,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
LEVELS = (1, 16, 128)
QUICK_LEVELS = (1, 128)
SYSTEMS = ("single", "cluster", "etcd")
PARTITIONS = 16
NAMESPACE = "bench"
VALUE_BYTES = 64
GENERATOR_SATURATED_PCT = 85.0  # one thread: above this the generator may cap the row
OTHER_BUSY_PCT = 10.0  # CPU of other processes above which a row is flagged

SYSTEM_LABEL = {"single": "tasks 1 node", "cluster": "tasks 3 nodes", "etcd": "etcd 3 members"}

Json = dict[str, Any]


# ---------------------------------------------------------------------------
# results


@dataclass
class ProcessCpu:
    name: str  # n1.. / single / e1..; the one the clients send to is the target
    pid: int
    cpu_seconds: float
    cpu_ms_per_op: float | None


@dataclass
class Row:
    system: str  # single | cluster | etcd
    op: str  # start | describe | describe-stale | put | range
    clients: int
    seconds: float
    ok: int
    errors: dict[str, int]
    ops_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    target: str  # process the clients sent to (the leader)
    processes: list[ProcessCpu]
    cpu_ms_per_op: float | None  # summed over the system's processes
    generator_cpu_pct: float  # the load generator (this process), % of one core
    generator_cpu_ms_per_op: float | None
    other_cpu_pct: float | None  # everything else on the machine, % of one core
    machine_busy_pct: float | None  # all cores, 100% = one core
    irq_steal_cpu_pct: float | None  # of which irq + softirq + steal (not any process's time)
    notes: list[str] = field(default_factory=list)


@dataclass
class Ratio:
    system: str  # single | cluster
    clients: int
    op: str  # ours (start, describe, describe-stale) ÷ etcd's (put, range)
    ops_per_s: float | None  # ours ÷ etcd: > 1 = ours faster
    p50: float | None  # < 1 = ours lower
    p99: float | None
    cpu_per_op: float | None  # < 1 = ours cheaper


@dataclass
class Report:
    command: str
    started: str
    machine: Json
    settings: Json
    rows: list[Row] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    generator: Json = field(default_factory=dict)
    etcd: Json = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# request factories: one unique body per (client, seq)


def start_requests(url: str, tag: str) -> tuple[str, int, RequestFactory]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = f"/v1/tasks/namespaces/{NAMESPACE}/workflows"

    def make(i: int, seq: int) -> bytes:
        ident = f"{tag}-{i}-{seq}"
        body = (f'{{"workflowId":"{ident}","requestId":"{ident}","workflowType":{{"name":"bench-start"}},'
                f'"taskQueue":{{"name":"bench"}},"input":{{"client":{i},"seq":{seq}}}}}')
        return http_request("POST", host, port, path, body.encode())

    return host, port, make


def put_requests(url: str, tag: str) -> tuple[str, int, RequestFactory]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    value = base64.b64encode(os.urandom(VALUE_BYTES)).decode()

    def make(i: int, seq: int) -> bytes:
        key = base64.b64encode(f"bench/{tag}/{i}/{seq}".encode()).decode()
        return http_request("POST", host, port, "/v3/kv/put", b'{"key":"%s","value":"%s"}'
                            % (key.encode(), value.encode()))

    return host, port, make


def describe_requests(url: str, workflow_id: str, stale: bool) -> tuple[str, int, RequestFactory]:
    """Reads of one workflow: linearizable (ReadIndex) or ``?stale=true`` (the local copy)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = f"/v1/tasks/namespaces/{NAMESPACE}/workflows/{workflow_id}" + ("?stale=true" if stale else "")
    request = http_request("GET", host, port, path, b"")
    return host, port, lambda i, seq: request


def range_requests(url: str, key: bytes) -> tuple[str, int, RequestFactory]:
    """Linearizable reads (etcd's default: ``serializable`` false) of one key."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = http_request("POST", host, port, "/v3/kv/range",
                           json.dumps({"key": base64.b64encode(key).decode()}).encode())
    return host, port, lambda i, seq: request


# ---------------------------------------------------------------------------
# one row: load + CPU of every process


def _proc_cpu(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return _stat_cpu(Path(f"/proc/{pid}/stat"))
    return None


def cpu_times() -> tuple[float, float] | None:
    """(user+nice+system, irq+softirq+steal) CPU-seconds of all cores since boot (/proc/stat).

    Split because loopback network work runs in softirq, which the kernel may count
    in neither process's utime/stime: it must not show up as "other processes".
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return (v[0] + v[1] + v[2]) / CLK_TCK, (v[5] + v[6] + v[7]) / CLK_TCK
    return None


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


async def measure_row(system: str, op: str, clients: int, seconds: float,
                      requests: tuple[str, int, RequestFactory], target: str,
                      processes: Sequence[tuple[str, int]]) -> Row:
    host, port, make = requests
    busy0 = cpu_times()
    cpu0 = {pid: _proc_cpu(pid) for _, pid in processes}
    wall0 = time.perf_counter()
    result: LoadResult = await run_load(host, port, make, clients, seconds)
    wall = time.perf_counter() - wall0
    cpu1 = {pid: _proc_cpu(pid) for _, pid in processes}
    busy1 = cpu_times()
    ok = result.ok
    procs: list[ProcessCpu] = []
    for name, pid in processes:
        a, b = cpu0[pid], cpu1[pid]
        used = None if a is None or b is None else b - a
        procs.append(ProcessCpu(name=name, pid=pid, cpu_seconds=round(used or 0.0, 3),
                                cpu_ms_per_op=round(used / ok * 1000, 4) if used is not None and ok else None))
    server_cpu = sum(p.cpu_seconds for p in procs)
    gen = result.generator_cpu_seconds
    other = None
    busy_pct = irq_pct = None
    if busy0 is not None and busy1 is not None and wall > 0:
        tasks, irq = busy1[0] - busy0[0], busy1[1] - busy0[1]
        busy_pct, irq_pct = round((tasks + irq) / wall * 100, 1), round(irq / wall * 100, 1)
        other = round(max(0.0, tasks - server_cpu - gen) / wall * 100, 1)
    lat = result.latencies
    notes = []
    if result.first_error_body:
        notes.append(f"first error answer: {result.first_error_body[:200]}")
    return Row(
        system=system, op=op, clients=clients, seconds=round(result.seconds, 3), ok=ok,
        errors=result.errors, ops_per_s=round(rate(ok, result.seconds), 1),
        p50_ms=_ms(percentile(lat, 0.5)), p99_ms=_ms(percentile(lat, 0.99)), max_ms=_ms(percentile(lat, 1.0)),
        target=target, processes=procs,
        cpu_ms_per_op=round(server_cpu / ok * 1000, 4) if ok else None,
        generator_cpu_pct=round(gen / result.seconds * 100, 1) if result.seconds > 0 else 0.0,
        generator_cpu_ms_per_op=round(gen / ok * 1000, 4) if ok else None,
        other_cpu_pct=other, machine_busy_pct=busy_pct, irq_steal_cpu_pct=irq_pct, notes=notes,
    )


def _progress(row: Row) -> None:
    print(f"  {SYSTEM_LABEL[row.system]:<15} {row.op:<5} {row.clients:>4} clients: "
          f"{row.ops_per_s:>9,.0f} ops/s  p99 {row.p99_ms} ms  cpu {row.cpu_ms_per_op} ms/op  "
          f"generator {row.generator_cpu_pct:.0f}%", file=sys.stderr)


# ---------------------------------------------------------------------------
# the systems


@dataclass
class Plan:
    levels: list[int]
    seconds: float
    warmup: float
    settle: float  # after a cluster is ready, before asking for leaders
    systems: list[str]
    reads: bool


def tasks_settings(tmp_parent: str | None) -> Settings:
    return Settings(schedules=0, namespaces=0, duration=0, grace=0.0, idle_settle=0.0, idle_window=0.0,
                    durability="sync", partitions=PARTITIONS, nodes=3, tmp_parent=tmp_parent, keep=False)


def namespace_leader(system: System) -> tuple[str, str]:
    """(URL, node name) the clients send to: the leader of ``bench``'s partition on 3 nodes."""
    if system.kind != "cluster":
        return system.nodes[0].url, system.nodes[0].name
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        url = leader_urls(system).get(NAMESPACE)
        if url:
            return url, next(n.name for n in system.nodes if n.url == url)
        time.sleep(0.2)
    raise RuntimeError(f"no leader for namespace {NAMESPACE} within 30s")


async def _create_namespace(url: str) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await create_namespace(session, url, NAMESPACE)


def run_tasks(kind: str, root: Path, plan: Plan, report: Report, tmp_parent: str | None) -> None:
    label = SYSTEM_LABEL[kind]
    secret = None
    if kind == "cluster":
        secret = root / "cluster.secret"
        secret.write_text(secrets.token_hex(32) + "\n")
        os.chmod(secret, 0o600)
    system = System(kind, root / kind, tasks_settings(tmp_parent), secret)
    print(f"{label}: starting ...", file=sys.stderr)
    try:
        system.launch()
        system.wait_ready(time.monotonic() + READY_TIMEOUT)
        if kind == "cluster":
            time.sleep(plan.settle)  # leadership balancing moves leaders to their preferred nodes
        asyncio.run(_create_namespace(system.urls[0]))
        processes = [(n.name, n.proc.pid) for n in system.nodes if n.proc is not None]
        tag = f"t{int(time.time())}-{kind}"
        url, leader = namespace_leader(system)
        print(f"{label}: pids " + ", ".join(f"{name}={pid}" for name, pid in processes)
              + f"; clients send to {leader}" + (f" (leader of {NAMESPACE}'s partition)"
                                                  if kind == "cluster" else ""), file=sys.stderr)
        asyncio.run(run_load_only(start_requests(url, tag + "-warm"), 16, plan.warmup))
        for clients in plan.levels:
            url, leader = namespace_leader(system)
            row = asyncio.run(measure_row(kind, "start", clients, plan.seconds,
                                          start_requests(url, f"{tag}-c{clients}"), leader, processes))
            _, after = namespace_leader(system)
            if after != leader:
                row.notes.append(f"the leader moved from {leader} to {after} during the row")
            report.rows.append(row)
            _progress(row)
        if plan.reads:
            wid = f"{tag}-c{plan.levels[-1]}-0-1"  # started by the last row's first client
            for op, stale in (("describe", False), ("describe-stale", True)):
                url, leader = namespace_leader(system)
                row = asyncio.run(measure_row(kind, op, plan.levels[-1], plan.seconds,
                                              describe_requests(url, wid, stale), leader, processes))
                report.rows.append(row)
                _progress(row)
    except (RuntimeError, OSError) as e:
        report.errors.append(f"{label}: {e}")
        print(f"{label}: FAILED: {e}", file=sys.stderr)
    finally:
        for name, code in system.stop().items():
            report.exit_codes[f"{kind}/{name}"] = code


async def run_load_only(requests: tuple[str, int, RequestFactory], clients: int, seconds: float) -> LoadResult:
    host, port, make = requests
    return await run_load(host, port, make, clients, seconds)


def run_etcd(root: Path, plan: Plan, report: Report) -> None:
    binary = find_etcd()
    if binary is None:
        print(NOT_FOUND, file=sys.stderr)
        report.notes.append(NOT_FOUND)
        report.etcd = {"found": False}
        return
    report.etcd = {"found": True, "binary": binary, "version": etcd_version(binary),
                   "heartbeat_ms": 100, "election_ms": 500}
    cluster = EtcdCluster(binary, root / "etcd")
    label = SYSTEM_LABEL["etcd"]
    print(f"{label}: starting ({report.etcd['version']}) ...", file=sys.stderr)
    try:
        cluster.launch()
        leader = cluster.wait_ready()
        processes = [(m.name, m.proc.pid) for m in cluster.members if m.proc is not None]
        tag = f"t{int(time.time())}"
        print(f"{label}: pids " + ", ".join(f"{name}={pid}" for name, pid in processes)
              + f"; clients send to {leader.name} (the leader)", file=sys.stderr)
        asyncio.run(run_load_only(put_requests(leader.url, tag + "-warm"), 16, plan.warmup))
        for clients in plan.levels:
            leader = cluster.leader()
            row = asyncio.run(measure_row("etcd", "put", clients, plan.seconds,
                                          put_requests(leader.url, f"{tag}-c{clients}"), leader.name,
                                          processes))
            if cluster.leader().name != leader.name:
                row.notes.append("the leader moved during the row")
            report.rows.append(row)
            _progress(row)
        if plan.reads:
            key = f"bench/{tag}-c{plan.levels[-1]}/0/1".encode()
            leader = cluster.leader()
            row = asyncio.run(measure_row("etcd", "range", plan.levels[-1], plan.seconds,
                                          range_requests(leader.url, key), leader.name, processes))
            report.rows.append(row)
            _progress(row)
    except (RuntimeError, OSError) as e:
        report.errors.append(f"{label}: {e}")
        print(f"{label}: FAILED: {e}", file=sys.stderr)
    finally:
        for name, code in cluster.stop().items():
            report.exit_codes[f"etcd/{name}"] = code


# ---------------------------------------------------------------------------
# ratios and the generator's verdict


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def ratios(rows: Sequence[Row]) -> list[Ratio]:
    etcd = {(r.op, r.clients): r for r in rows if r.system == "etcd"}
    out = []
    for r in rows:
        e = etcd.get(("put" if r.op == "start" else "range", r.clients))
        if r.system == "etcd" or e is None:
            continue
        out.append(Ratio(system=r.system, clients=r.clients, op=f"{r.op} ÷ {e.op}",
                         ops_per_s=_div(r.ops_per_s, e.ops_per_s),
                         p50=_div(r.p50_ms, e.p50_ms), p99=_div(r.p99_ms, e.p99_ms),
                         cpu_per_op=_div(r.cpu_ms_per_op, e.cpu_ms_per_op)))
    return out


def generator_verdict(rows: Sequence[Row]) -> Json:
    if not rows:
        return {}
    busiest = max(rows, key=lambda r: r.generator_cpu_pct)
    saturated = [f"{SYSTEM_LABEL[r.system]} {r.op} {r.clients}" for r in rows
                 if r.generator_cpu_pct >= GENERATOR_SATURATED_PCT]
    # The generator's CPU per op against the cheapest server CPU per op of the same row.
    shares = [r.generator_cpu_ms_per_op / r.cpu_ms_per_op for r in rows
              if r.generator_cpu_ms_per_op is not None and r.cpu_ms_per_op]
    verdict = ("not the bottleneck: one thread that never reached "
               f"{GENERATOR_SATURATED_PCT:.0f}% of a core" if not saturated
               else "MAY BE THE BOTTLENECK in: " + ", ".join(saturated))
    return {
        "max_cpu_pct": busiest.generator_cpu_pct,
        "max_row": f"{SYSTEM_LABEL[busiest.system]} {busiest.op} {busiest.clients}",
        "max_cpu_share_of_servers": round(max(shares), 3) if shares else None,
        "saturated_rows": saturated,
        "verdict": verdict,
    }


# ---------------------------------------------------------------------------
# rendering


def _f(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def _etcd_line(etcd: Json) -> str:
    if not etcd:
        return "not run (--systems)"
    if not etcd.get("found"):
        return "absent (no etcd binary on PATH)"
    return f"{etcd['version']} ({etcd['binary']}), 3 members, 100 ms heartbeat / 500 ms election"


def render(report: Report) -> str:
    m = report.machine
    out = [
        "# Throughput of the replicated write path (bench/throughput.py)",
        "",
        f"command: {report.command}",
        f"machine: {m['cores']} cores, {m['cpu']}, Python {m['python']}, load average {m['load_average']}",
        f"data: {m['tmp_dir']} ({m['filesystem']}); durability sync; Raft 100 ms heartbeat / 500 ms election",
        f"etcd: {_etcd_line(report.etcd)}",
        "",
        "ops/s = 2xx answers ÷ wall time; latency client-side; CPU = utime+stime from /proc/<pid>/stat",
        "per op (ms); the target (* ) is the process the clients send to (the leader); gen = this load",
        "generator (one thread, % of one core); other = user+system time of the rest of the machine,",
        "irq = irq+softirq+steal time of all cores (loopback networking, the hypervisor); % of one core.",
        "",
    ]
    headers = ["system", "op", "clients", "ops/s", "p50 ms", "p99 ms", "max ms", "errors",
               "CPU ms/op per process", "sum", "gen %", "gen ms/op", "other %", "irq %"]
    rows = []
    for r in report.rows:
        per = ", ".join(f"{p.name}{'*' if p.name == r.target else ''} {_f(p.cpu_ms_per_op, 3)}"
                        for p in r.processes)
        errs = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "0"
        rows.append([SYSTEM_LABEL[r.system], r.op, str(r.clients), _f(r.ops_per_s, 0), _f(r.p50_ms, 2),
                     _f(r.p99_ms, 2), _f(r.max_ms, 1), errs, per, _f(r.cpu_ms_per_op, 3),
                     _f(r.generator_cpu_pct, 0), _f(r.generator_cpu_ms_per_op, 3), _f(r.other_cpu_pct, 0),
                     _f(r.irq_steal_cpu_pct, 0)])
    out += _table(headers, rows, indent="")
    for r in report.rows:
        for note in r.notes:
            out.append(f"  note ({SYSTEM_LABEL[r.system]} {r.op} {r.clients}): {note}")
    if report.ratios:
        out += ["", "ours ÷ etcd (starts ÷ puts, reads ÷ linearizable ranges), same client count "
                    "(ops/s > 1 = ours faster; latency and CPU/op < 1 = ours lower):", ""]
        out += _table(["system", "op", "clients", "ops/s", "p50", "p99", "CPU/op (sum)"],
                      [[SYSTEM_LABEL[x.system], x.op, str(x.clients), _f(x.ops_per_s, 2), _f(x.p50, 2),
                        _f(x.p99, 2), _f(x.cpu_per_op, 2)] for x in report.ratios], indent="")
    g = report.generator
    if g:
        share = g.get("max_cpu_share_of_servers")
        out += ["", f"load generator: {g['verdict']}; at most {_f(g['max_cpu_pct'], 0)}% of a core "
                    f"({g['max_row']})" + (f", at most {share:.2f}× the servers' CPU per op" if share else "")]
    for note in report.notes:
        out.append(f"note: {note}")
    for err in report.errors:
        out.append(f"ERROR: {err}")
    bad = {k: v for k, v in report.exit_codes.items() if v not in (0, None, -signal.SIGTERM)}
    if bad:
        out.append(f"unclean exits: {bad}")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.throughput",
                                description="Durable workflow starts over HTTP on 1 and 3 nodes, "
                                            "against etcd puts, under one load generator.")
    p.add_argument("--quick", action="store_true", help="1 and 128 clients, 2 s a row")
    p.add_argument("--levels", help="client counts, comma-separated (default 1,16,128; quick 1,128)")
    p.add_argument("--duration", type=float, help="seconds a row (default 10, quick 2)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help="subset of single,cluster,etcd (default all)")
    p.add_argument("--no-reads", action="store_true",
                   help="skip the read rows (ours: describe, linearizable and ?stale=true; etcd: range)")
    p.add_argument("--json", metavar="PATH",
                   help="where to write the JSON report (default bench/results/throughput-<time>.json)")
    p.add_argument("--tmp-dir", metavar="DIR", help="parent of the data dirs: which disk is measured")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    a = p.parse_args(argv)
    try:
        a.levels = ([int(x) for x in a.levels.split(",") if x.strip()] if a.levels
                    else list(QUICK_LEVELS if a.quick else LEVELS))
    except ValueError:
        p.error("--levels must be comma-separated integers")
    if not a.levels or min(a.levels) < 1:
        p.error("--levels must be positive")
    a.systems = [x.strip() for x in a.systems.split(",") if x.strip()]
    if not a.systems or set(a.systems) - set(SYSTEMS):
        p.error(f"--systems must be a subset of {','.join(SYSTEMS)}")
    if a.duration is not None and a.duration <= 0:
        p.error("--duration must be > 0")
    return a


def machine(tmp: Path) -> Json:
    from bench.single_node import cpu_model

    load = "?"
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {"cores": os.cpu_count() or 0, "cpu": cpu_model(), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}", "load_average": load,
            "tmp_dir": str(tmp), "filesystem": filesystem_of(tmp)}


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    plan = Plan(levels=a.levels, seconds=a.duration or (2.0 if a.quick else 10.0),
                warmup=0.5 if a.quick else 2.0, settle=2.0 if a.quick else 3.0,
                systems=a.systems, reads=not a.no_reads)
    signal.signal(signal.SIGTERM, _on_sigterm)
    root = Path(tempfile.mkdtemp(prefix="tasks-bench-throughput-", dir=a.tmp_dir))
    started = datetime.now(UTC)
    report = Report(command=" ".join([Path(sys.executable).name, "-m", "bench.throughput",
                                      *(argv if argv is not None else sys.argv[1:])]),
                    started=started.isoformat(timespec="seconds"), machine=machine(root),
                    settings={**asdict(plan), "client_loop": type(asyncio.get_event_loop_policy()).__module__})
    runners: dict[str, Callable[[], None]] = {
        "single": lambda: run_tasks("single", root, plan, report, a.tmp_dir),
        "cluster": lambda: run_tasks("cluster", root, plan, report, a.tmp_dir),
        "etcd": lambda: run_etcd(root, plan, report),
    }
    try:
        for name in SYSTEMS:
            if name in plan.systems:
                runners[name]()
    finally:
        if a.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    report.ratios = ratios(report.rows)
    report.generator = generator_verdict(report.rows)
    busy = [f"{SYSTEM_LABEL[r.system]} {r.op} {r.clients} ({r.other_cpu_pct:.0f}%)" for r in report.rows
            if r.other_cpu_pct is not None and r.other_cpu_pct > OTHER_BUSY_PCT]
    if busy:
        report.notes.append("other processes used more than "
                            f"{OTHER_BUSY_PCT:.0f}% of a core during: {', '.join(busy)}; "
                            "those rows are suspect (compare only rows of the same run)")
    print(render(report))
    path = Path(a.json) if a.json else RESULTS_DIR / f"throughput-{started:%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(f"\nwrote {path}", file=sys.stderr)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
