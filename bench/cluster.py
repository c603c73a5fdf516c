"""Cluster benchmark of ``tasksd``: a 3-node Raft cluster against a single node.

Run it from the repository root::

    .venv/bin/python -m bench.cluster [--quick] [--schedules N] [--namespaces M]
                                      [--duration S] [--json PATH]

It is a measurement, not a test: nothing here asserts on speed. It starts its
own ``tasksd serve`` subprocesses on free loopback ports, with fresh data dirs
and a fresh 64-byte cluster secret file under one temporary directory:

* a **cluster** of 3 nodes (``--replicator raft``, 16 partitions + the meta
  group, server-default Raft timings), and
* a **single node** (``--replicator local``, one partition),

both with the same ``--durability`` (default ``sync``, the server default).
Every process is stopped in a ``finally`` block (SIGTERM to all of them, then
SIGKILL to those still alive after 15 s) and is tied to this process with
``PR_SET_PDEATHSIG``, so not even a ``kill -9`` of the benchmark leaks nodes.

What is measured, in this order, in one run:

1. **Idle cost of a node.** Cluster and single node are started together and
   left without any traffic. After ``--idle-settle`` seconds (10) the CPU time
   of every node process is read from ``/proc/<pid>/stat`` (utime + stime; the
   main thread, i.e. the event loop, separately from the other threads, i.e.
   the Raft or apply thread) at the start and the end of an ``--idle-window``
   (20 s). ``CPU %`` is 100% = one core. ``RSS`` is ``VmRSS`` from
   ``/proc/<pid>/status`` at the end of the window (``peak`` = ``VmHWM``). The
   two systems idle side by side; an idle process's CPU time hardly depends
   on its neighbour, but the load average in the header says how quiet the
   machine was.

2. **Leader distribution** of the cluster: ``GET /v1/tasks/cluster`` after
   settling (and again after the schedule load): which node leads how many
   partitions, how many sit on their ``preferredLeader``, who leads the meta
   group, and (after the load) how many leader changes the nodes counted
   (``tasks_raft_leader_changes_total``) while it ran. During the schedule
   run the same route is polled on n1 once a second (``pageSize=1``), so the
   report can say how often a leader moved or a group had none while
   schedules were created and while they fired.

3. **Schedule fire lateness at scale**, first on the cluster, then (cluster
   stopped) on the single node. ``--namespaces`` namespaces (100) are
   registered with ``apsLimit: 0``; ``--schedules`` schedules (10,000; quick
   2,000) are spread round-robin over them and created concurrently through
   one aiohttp session, the requests spread round-robin over every node of the
   system. Each has ``interval 1s``, ``overlapPolicy ALLOW_ALL`` (every nominal
   second starts a workflow although no worker ever completes one) and the
   same ``spec.startTime``/``endTime`` window of ``--duration`` nominal
   seconds (20; quick 8), which opens after the creations are expected to be
   over. So every second of the window offers a burst of N fires, N/s in all.
   To place the window, the creation rate is first measured with a few
   hundred *inert* schedules (same namespaces, a window in the year 2001, so
   they never fire); schedules that are nevertheless created after the window
   opened only count their later nominal seconds.

   After the window the benchmark waits until the nodes' fire counters reach
   the expected number, stop moving for 5 s, or ``--grace`` seconds (10;
   quick 5) have passed: that moment is the **cutoff**. Every namespace's
   fired workflows are then listed (``query=WorkflowType='bench-sched'``,
   ``pageSize=1000``, following ``nextPageToken``, ``stale=true`` reads sent
   to the leader of the namespace's partition) and only workflows whose
   ``startTime`` is not after the cutoff count, so a system that is still
   working off a backlog is judged at the cutoff. Lateness =
   ``startTime − nominal``, the nominal time being the ``<scheduleId>-<RFC3339
   seconds>Z`` tail of the workflow id (``startTime`` is stamped when the
   leader's timer proposes the fire, before the commit; ms resolution).

   Columns: ``expected`` = nominal seconds × schedules (minus slots before a
   late creation); ``fires`` = distinct slots started by the cutoff;
   ``fires/s`` = fires whose startTime lies inside the window ÷ window length
   (the throughput sustained while N/s were offered); ``behind`` = expected
   slots not yet started when the window closed (also as seconds of offered
   load); ``skipped`` = expected slots not started by the cutoff (still in
   the backlog, or given up: see the ``missed_catchup`` counter);
   ``late p50/p99/max`` over every expected slot, a skipped one counting as
   ``cutoff − nominal``, which is only a lower bound of its lateness, so a
   quantile that such a slot can reach is marked ``≥`` (the quantiles of the
   fires alone are printed under the table); ``dup`` = slots started more
   than once (must be 0). The server's histogram
   ``tasks_schedule_fire_lateness_seconds`` (summed over nodes, observed after
   the commit, linear within a bucket) and its fire counters by outcome are
   printed under the table, with each node's CPU during the window.
   ``cluster ÷ single`` compares p50, p99 and fires/s.

Both the idle window and each firing window also report the CPU used by
*other* processes on the machine (busy time from ``/proc/stat`` minus the
nodes and this benchmark): the machine is shared, and a test run or build in
parallel shows up there and makes that section's numbers suspect.

The header records the machine (cores, CPU, Python, load average). ``--json
PATH`` writes every number; ``--keep`` keeps the temporary directory (node logs,
data) for a post-mortem. Everything that fails (a node that does not start,
creations or listings that fail) is reported, not raised.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.single_node import (
    CLK_TCK,
    NOMINAL_SUFFIX_LEN,
    SCHEDULE_TYPE,
    STOP_SECONDS,
    Json,
    Machine,
    NodeProcess,
    _die_with_parent,
    _errors,
    _f,
    _i,
    _on_sigterm,
    _table,
    analyze_fires,
    canary_start,
    cpu_pct,
    create_namespace,
    fetch_metrics,
    fire_counts,
    histogram_quantile,
    log_findings,
    machine_info,
    parse_ms,
    percentile,
    rate,
    rfc3339_seconds,
)

CLUSTER_NODES = 3
CLUSTER_PARTITIONS = 16
CREATE_CLIENTS = 64
NAMESPACE_CLIENTS = 16
LIST_CLIENTS = 8
STALL_SECONDS = 5.0
READY_TIMEOUT = 90.0
INERT_SPEC = {"interval": [{"interval": "1s"}],
              "startTime": "2001-01-01T00:00:00Z", "endTime": "2001-01-01T00:00:10Z"}
MAX_CREATE_BUDGET = 120  # seconds between calibration and window start, at most
MiB = 1 << 20

Metrics = list[tuple[str, dict[str, str], float]]


# ---------------------------------------------------------------------------
# results


@dataclass
class NodeIdle:
    system: str
    node: str
    pid: int
    cpu_pct: float | None
    loop_cpu_pct: float | None
    other_cpu_pct: float | None
    threads: int | None
    rss_mib: float | None
    peak_rss_mib: float | None


@dataclass
class IdleResult:
    settle_seconds: float
    window_seconds: float
    nodes: list[NodeIdle]
    cluster_cpu_pct: float | None
    cluster_rss_mib: float | None
    single_cpu_pct: float | None
    single_rss_mib: float | None
    cpu_ratio_per_node: float | None  # mean cluster node ÷ single node
    rss_ratio_per_node: float | None
    foreign_cpu_pct: float | None = None  # other processes on the machine during the window


@dataclass
class Leaders:
    when: str
    asked: str
    meta_leader: str | None
    by_node: dict[str, list[int]]
    no_leader: list[int]
    on_preferred: int
    partitions: int
    leader_changes: dict[str, int] = field(default_factory=dict)  # node -> count, where known
    error: str | None = None


@dataclass
class LeaderWatch:
    """GET /v1/tasks/cluster on the first node every second, window start to cutoff."""

    polls: int = 0
    failed: int = 0
    meta_moves: int = 0  # the leader seen changed from one node to another
    partition_moves: int = 0
    partitions_moved: list[int] = field(default_factory=list)
    leaderless_seen: int = 0  # (poll, group) pairs without a leader
    slowest_s: float = 0.0  # slowest answer: how responsive a loaded node is
    last: dict[str, str | None] = field(default_factory=dict)


@dataclass
class NodeLoad:
    node: str
    loop_cpu_pct: float | None
    other_cpu_pct: float | None
    rss_mib: float | None


@dataclass
class ScaleResult:
    system: str
    nodes: int
    partitions: int
    schedules: int
    namespaces: int
    namespaces_created: int
    namespace_errors: dict[str, int]
    calibration_creates: int
    calibration_per_s: float
    created: int
    create_errors: dict[str, int]
    create_seconds: float
    creates_per_s: float
    created_late: int  # created after the window opened
    window_start: str
    window_seconds: int
    offered_per_s: int
    expected_fires: int
    cutoff_after_window_s: float | None
    cutoff_reason: str
    fires: int | None
    fires_in_window: int | None
    fires_per_s: float | None
    behind_at_window_end: int | None
    behind_seconds: float | None
    unfired: int | None
    duplicates: int | None
    out_of_window: int | None
    # over every expected slot; an unfired slot counts as cutoff − nominal, a lower
    # bound, and a quantile that such a bound can reach is flagged ``*_lower``
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None
    lateness_max_ms: float | None
    p50_lower: bool
    p99_lower: bool
    max_lower: bool
    fired_p50_ms: float | None  # over the fires only
    fired_p99_ms: float | None
    drain_by_second_ms: list[float]
    histogram_count: int
    histogram_p50_ms: float | None
    histogram_p50_bucket: str
    histogram_p99_ms: float | None
    histogram_p99_bucket: str
    fires_by_outcome: dict[str, int]
    listed: int | None
    listed_after_cutoff: int | None
    list_seconds: float | None
    list_pages: int
    list_errors: dict[str, int]
    node_load: list[NodeLoad]
    client_cpu_pct: float | None
    foreign_cpu_pct: float | None
    create_leader_watch: LeaderWatch | None = None  # namespaces + calibration + creation
    leader_watch: LeaderWatch | None = None  # window start -> cutoff
    error: str | None = None
    server_log_findings: list[str] = field(default_factory=list)
    log_levels: dict[str, int] = field(default_factory=dict)  # node log lines by level, all nodes
    log_messages: list[str] = field(default_factory=list)  # distinct WARNING+ messages, digits -> N


@dataclass
class Ratios:
    p50: float | None
    p99: float | None
    fires_per_s: float | None
    note: str = ""


@dataclass
class Report:
    machine: Machine
    load_average: str
    settings: Json
    startup_seconds: dict[str, float] = field(default_factory=dict)
    idle: IdleResult | None = None
    leaders: list[Leaders] = field(default_factory=list)
    scale: list[ScaleResult] = field(default_factory=list)
    ratios: Ratios | None = None
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass
class Settings:
    schedules: int
    namespaces: int
    duration: int
    grace: float
    idle_settle: float
    idle_window: float
    durability: str
    partitions: int
    nodes: int
    tmp_parent: str | None
    keep: bool


# ---------------------------------------------------------------------------
# node processes


def machine_busy() -> float | None:
    """CPU-seconds all cores spent busy since boot (/proc/stat, everything but idle+iowait)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return (sum(vals) - vals[3] - vals[4]) / CLK_TCK
    return None


class ForeignCpu:
    """CPU used on the machine by processes other than the nodes and this benchmark.

    Busy time of all cores (/proc/stat) minus the nodes' and this process's
    CPU time over the same interval, in % of one core: another job on the
    machine (a test run, a build) shows up here and makes the numbers suspect.
    """

    def __init__(self, nodes: Sequence[NodeProcess]) -> None:
        self.nodes = list(nodes)
        self.t0 = time.perf_counter()
        self.busy0 = machine_busy()
        self.own0 = self._own()

    def _own(self) -> float:
        total = time.process_time()
        for n in self.nodes:
            total += n.sample().total
        return total

    def pct(self) -> float | None:
        busy1, own1 = machine_busy(), self._own()
        wall = time.perf_counter() - self.t0
        if self.busy0 is None or busy1 is None or wall <= 0 or math.isnan(own1) or math.isnan(self.own0):
            return None
        return round(max(0.0, (busy1 - self.busy0) - (own1 - self.own0)) / wall * 100, 1)


def free_ports(n: int) -> list[int]:
    """n distinct free loopback TCP ports (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class BenchNode(NodeProcess):
    """A ``tasksd serve`` child with its own node id and extra flags.

    Unlike ``NodeProcess.start`` it does not wait for ``/readyz`` (a cluster
    node is ready only once its peers run): ``launch`` then ``wait_url``.
    """

    def __init__(self, name: str, data_dir: Path, durability: str, extra: Sequence[str]) -> None:
        super().__init__(data_dir, durability, data_dir.parent / f"{name}.log")
        self.name = name
        self.extra = list(extra)

    def launch(self) -> None:
        cmd = [
            sys.executable, "-m", "hanzo_tasks.cluster.cli", "serve",
            "--node-id", self.name,
            "--http", "127.0.0.1:0",
            "--data-dir", str(self.data_dir),
            "--durability", self.durability,
            *self.extra,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKSD_", "TASKS_"))}
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=Path(__file__).resolve().parent.parent, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def wait_url(self, deadline: float) -> str:
        assert self.proc is not None
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            i = text.find("serving http=")
            if i >= 0:
                self.url = "http://" + text[i + len("serving http="):].split()[0]
                return self.url
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not report its address:\n{self.log_tail()}")

    def is_ready(self) -> bool:
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                return r.status == 200
        return False

    def proc_status(self) -> dict[str, int]:
        """VmRSS / VmHWM (bytes) and Threads from /proc/<pid>/status."""
        out: dict[str, int] = {}
        if self.proc is None:
            return out
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                key, _, val = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(val.split()[0]) * 1024
                elif key == "Threads":
                    out[key] = int(val.strip())
        return out

    def rss_mib(self) -> float | None:
        v = self.proc_status().get("VmRSS")
        return None if v is None else round(v / MiB, 1)


class System:
    """The nodes of one system under test: a Raft cluster or a single node."""

    def __init__(self, kind: str, root: Path, s: Settings, secret_file: Path | None = None) -> None:
        self.kind = kind
        self.nodes: list[BenchNode] = []
        if kind == "cluster":
            assert secret_file is not None
            names = [f"n{i + 1}" for i in range(s.nodes)]
            peers = dict(zip(names, (f"127.0.0.1:{p}" for p in free_ports(s.nodes)), strict=True))
            peer_list = ",".join(f"{k}={v}" for k, v in peers.items())
            for name in names:
                self.nodes.append(BenchNode(name, root / name, s.durability, [
                    "--replicator", "raft", "--peer", peers[name], "--peers", peer_list,
                    "--cluster-secret-file", str(secret_file), "--partitions", str(s.partitions),
                ]))
            self.partitions = s.partitions
        else:
            self.nodes.append(BenchNode("single", root / "single", s.durability, ["--replicator", "local"]))
            self.partitions = 1
        self.exit_codes: dict[str, int | None] = {}

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def launch(self) -> None:
        for n in self.nodes:
            n.launch()

    def wait_ready(self, deadline: float) -> None:
        for n in self.nodes:
            n.wait_url(deadline)
        pending = list(self.nodes)
        while pending and time.monotonic() < deadline:
            pending = [n for n in pending if not n.is_ready()]
            for n in pending:
                if n.proc is not None and n.proc.poll() is not None:
                    raise RuntimeError(f"{n.name} exited with {n.proc.returncode}:\n{n.log_tail()}")
            if pending:
                time.sleep(0.1)
        if pending:
            raise RuntimeError(f"not ready within {READY_TIMEOUT:g}s: {[n.name for n in pending]}\n"
                               + pending[0].log_tail())

    def running(self) -> bool:
        return any(n.proc is not None and n.proc.poll() is None for n in self.nodes)

    def stop(self) -> dict[str, int | None]:
        """SIGTERM to every node at once, SIGKILL to those alive after STOP_SECONDS."""
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    n.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for n in self.nodes:
            if n.proc is None:
                continue
            try:
                n.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    n.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    n.proc.wait(5)
            if n.name not in self.exit_codes:
                self.exit_codes[n.name] = n.proc.returncode
        return self.exit_codes


# ---------------------------------------------------------------------------
# 1. idle cost


def measure_idle(systems: Sequence[System], settle: float, window: float) -> IdleResult:
    print(f"idle: settling {settle:g}s, then measuring {window:g}s ...", file=sys.stderr)
    time.sleep(settle)
    nodes = [(sys_.kind, n) for sys_ in systems for n in sys_.nodes]
    foreign = ForeignCpu([n for _, n in nodes])
    before = {id(n): n.sample() for _, n in nodes}
    time.sleep(window)
    after = {id(n): n.sample() for _, n in nodes}
    foreign_pct = foreign.pct()
    rows: list[NodeIdle] = []
    for kind, n in nodes:
        loop, other = cpu_pct(before[id(n)], after[id(n)])
        st = n.proc_status()
        rows.append(NodeIdle(
            system=kind, node=n.name, pid=n.proc.pid if n.proc else 0,
            cpu_pct=None if loop is None or other is None else round(loop + other, 1),
            loop_cpu_pct=loop, other_cpu_pct=other, threads=st.get("Threads"),
            rss_mib=round(st["VmRSS"] / MiB, 1) if "VmRSS" in st else None,
            peak_rss_mib=round(st["VmHWM"] / MiB, 1) if "VmHWM" in st else None,
        ))

    def total(kind: str, attr: str) -> float | None:
        vals = [getattr(r, attr) for r in rows if r.system == kind]
        return None if not vals or any(v is None for v in vals) else round(sum(vals), 1)

    c_cpu, c_rss = total("cluster", "cpu_pct"), total("cluster", "rss_mib")
    s_cpu, s_rss = total("single", "cpu_pct"), total("single", "rss_mib")
    n_cluster = sum(1 for r in rows if r.system == "cluster") or 1
    return IdleResult(
        settle_seconds=settle, window_seconds=window, nodes=rows,
        cluster_cpu_pct=c_cpu, cluster_rss_mib=c_rss, single_cpu_pct=s_cpu, single_rss_mib=s_rss,
        cpu_ratio_per_node=round(c_cpu / n_cluster / s_cpu, 2) if c_cpu is not None and s_cpu else None,
        rss_ratio_per_node=round(c_rss / n_cluster / s_rss, 2) if c_rss is not None and s_rss else None,
        foreign_cpu_pct=foreign_pct,
    )


# ---------------------------------------------------------------------------
# 2. leaders


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def leader_changes(system: System) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in system.nodes:
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            with urllib.request.urlopen(n.url + "/metrics", timeout=10) as r:
                text = r.read().decode()
            out[n.name] = int(sum(
                float(line.rsplit(None, 1)[1]) for line in text.splitlines()
                if line.startswith("tasks_raft_leader_changes_total")))
    return out


def cluster_view(system: System) -> tuple[dict[str, Any] | None, str, str | None]:
    """The first answer of GET /v1/tasks/cluster (all namespaces) from any node."""
    err = None
    for n in system.nodes:
        if n.proc is None or n.proc.poll() is not None:
            continue
        try:
            body = get_json(n.url + "/v1/tasks/cluster?pageSize=1000", timeout=15)
            token = body.get("nextPageToken") or ""
            while token:
                more = get_json(n.url + "/v1/tasks/cluster?pageSize=1000&nextPageToken="
                                + urllib.request.quote(token), timeout=15)
                body["namespaces"] += more.get("namespaces", [])
                token = more.get("nextPageToken") or ""
            return body, n.name, None
        except (OSError, urllib.error.URLError, ValueError, KeyError) as e:
            err = f"{n.name}: {type(e).__name__}: {e}"
    return None, "", err or "no node answered"


def leaders(system: System, when: str, changes_before: dict[str, int] | None = None) -> Leaders:
    body, asked, err = cluster_view(system)
    if body is None:
        return Leaders(when=when, asked=asked, meta_leader=None, by_node={}, no_leader=[],
                       on_preferred=0, partitions=system.partitions, error=err)
    by_node: dict[str, list[int]] = {n.name: [] for n in system.nodes}
    no_leader: list[int] = []
    on_pref = 0
    for p in body.get("partitions", []):
        if p.get("leader"):
            by_node.setdefault(p["leader"], []).append(p["id"])
            on_pref += p["leader"] == p.get("preferredLeader")
        else:
            no_leader.append(p["id"])
    changes: dict[str, int] = {}
    if changes_before is not None:
        now = leader_changes(system)
        changes = {k: v - changes_before.get(k, 0) for k, v in now.items()}
    return Leaders(when=when, asked=asked, meta_leader=body.get("metaLeader"), by_node=by_node,
                   no_leader=no_leader, on_preferred=on_pref,
                   partitions=body.get("partitionCount", len(body.get("partitions", []))),
                   leader_changes=changes)


def leader_urls(system: System) -> dict[str, str]:
    """namespace -> HTTP URL of its partition's leader (cluster); empty when unknown."""
    if system.kind != "cluster":
        return {}
    body, _, _ = cluster_view(system)
    if body is None:
        return {}
    url_of = {n.name: n.url for n in system.nodes}
    leader_of = {p["id"]: p.get("leader") for p in body.get("partitions", [])}
    out = {}
    for ns in body.get("namespaces", []):
        leader = leader_of.get(ns["partition"])
        if leader in url_of:
            out[ns["namespace"]] = url_of[leader]
    return out


# ---------------------------------------------------------------------------
# 3. schedules at scale


def schedule_body(sid: str, spec: Json) -> Json:
    return {
        "scheduleId": sid,
        "spec": spec,
        "action": {"workflowType": {"name": SCHEDULE_TYPE}, "taskQueue": {"name": "bench"}},
        "policies": {"overlapPolicy": "ALLOW_ALL"},
    }


async def create_schedules(session: aiohttp.ClientSession, urls: Sequence[str],
                           items: Sequence[tuple[str, str]], spec: Json,
                           created_ms: dict[str, int], errors: Counter[str]) -> float:
    """POST every (namespace, scheduleId) with ``spec``; returns the wall time."""
    pending = iter(enumerate(items))

    async def creator() -> None:
        for i, (ns, sid) in pending:
            url = urls[i % len(urls)]
            try:
                async with session.post(f"{url}/v1/tasks/namespaces/{ns}/schedules",
                                        json=schedule_body(sid, spec)) as r:
                    text = await r.text()
                    if r.status != 200:
                        errors[f"HTTP {r.status}"] += 1
                        continue
                    created_ms[sid] = parse_ms(json.loads(text)["info"]["createTime"])
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as e:
                errors[type(e).__name__] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(creator() for _ in range(min(CREATE_CLIENTS, max(1, len(items))))))
    return time.perf_counter() - t0


async def all_metrics(session: aiohttp.ClientSession, urls: Sequence[str]) -> list[Metrics]:
    return list(await asyncio.gather(*(fetch_metrics(session, u) for u in urls)))


def summed_fires(per_node: Sequence[Metrics]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for m in per_node:
        out.update(fire_counts(m))
    return dict(out)


def summed_histogram(per_node: Sequence[Metrics]) -> list[tuple[float, float]]:
    buckets: Counter[float] = Counter()
    for m in per_node:
        for name, labels, v in m:
            if name == "tasks_schedule_fire_lateness_seconds_bucket":
                buckets[float(labels["le"])] += v
    return sorted(buckets.items())


async def list_fired(session: aiohttp.ClientSession, system: System, namespaces: Sequence[str],
                     leader_url: dict[str, str], errors: Counter[str]
                     ) -> tuple[list[tuple[str, int, int]], int, float]:
    """Every fired workflow of every namespace: (scheduleId, nominal ms, startTime ms)."""
    fired: list[tuple[str, int, int]] = []
    pages = 0
    urls = system.urls
    todo = iter(enumerate(namespaces))

    async def lister() -> None:
        nonlocal pages
        for i, ns in todo:
            url = leader_url.get(ns, urls[i % len(urls)])
            token = ""
            while True:
                params = {"query": f"WorkflowType='{SCHEDULE_TYPE}'", "pageSize": "1000",
                          "stale": "true"}
                if token:
                    params["nextPageToken"] = token
                try:
                    async with session.get(f"{url}/v1/tasks/namespaces/{ns}/workflows",
                                           params=params) as r:
                        if r.status != 200:
                            errors[f"HTTP {r.status}"] += 1
                            break
                        page = await r.json()
                except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                    errors[type(e).__name__] += 1
                    break
                pages += 1
                for ex in page["executions"]:
                    wid = ex["execution"]["workflowId"]
                    fired.append((wid[: -NOMINAL_SUFFIX_LEN - 1],
                                  parse_ms(wid[-NOMINAL_SUFFIX_LEN:]), parse_ms(ex["startTime"])))
                token = page.get("nextPageToken") or ""
                if not token:
                    break

    t0 = time.perf_counter()
    await asyncio.gather(*(lister() for _ in range(LIST_CLIENTS)))
    return fired, pages, time.perf_counter() - t0


async def watch_leaders(session: aiohttp.ClientSession, url: str, stop: asyncio.Event,
                        watch: LeaderWatch) -> None:
    """Poll the leaders once a second until ``stop`` is set."""
    moved: set[int] = set()
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            async with session.get(f"{url}/v1/tasks/cluster", params={"pageSize": "1"},
                                   timeout=aiohttp.ClientTimeout(total=10)) as r:
                body = await r.json() if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            body = None
        watch.slowest_s = round(max(watch.slowest_s, time.perf_counter() - t0), 3)
        watch.polls += 1
        if body is None:
            watch.failed += 1
        else:
            seen = {str(p["id"]): p.get("leader") for p in body.get("partitions", [])}
            seen["meta"] = body.get("metaLeader")
            for g, leader in seen.items():
                if leader is None:
                    watch.leaderless_seen += 1
                    continue
                before = watch.last.get(g)
                if before is not None and before != leader:
                    if g == "meta":
                        watch.meta_moves += 1
                    else:
                        watch.partition_moves += 1
                        moved.add(int(g))
                watch.last[g] = leader
        watch.partitions_moved = sorted(moved)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, 1.0 - (time.perf_counter() - t0)))


async def bench_scale(system: System, s: Settings) -> ScaleResult:
    urls = system.urls
    n_sched, n_ns, window = s.schedules, s.namespaces, s.duration
    namespaces = [f"bench-{i:03d}" for i in range(n_ns)]
    label = f"[{system.kind}]"
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=CREATE_CLIENTS)
    problems: list[str] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        create_stop = asyncio.Event()
        create_watch = LeaderWatch() if system.kind == "cluster" else None
        create_watcher = (asyncio.create_task(watch_leaders(session, urls[0], create_stop, create_watch))
                          if create_watch else None)
        # Namespaces, apsLimit 0, spread over the nodes.
        ns_errors: Counter[str] = Counter()
        ns_ok: list[str] = []
        todo = iter(enumerate(namespaces))

        async def registrar() -> None:
            for i, ns in todo:
                try:
                    await create_namespace(session, urls[i % len(urls)], ns)
                    ns_ok.append(ns)
                except (RuntimeError, aiohttp.ClientError, TimeoutError) as e:
                    # "creating namespace X: HTTP 503 {...}" -> "HTTP 503 {...}" (truncated)
                    key = str(e).split(": ", 1)[-1][:40] if isinstance(e, RuntimeError) else type(e).__name__
                    ns_errors[key] += 1

        print(f"{label} registering {n_ns} namespaces ...", file=sys.stderr)
        await asyncio.gather(*(registrar() for _ in range(NAMESPACE_CLIENTS)))
        if ns_errors:
            problems.append(f"{sum(ns_errors.values())} namespaces could not be registered")

        # Calibrate the creation rate with inert schedules, to place the window.
        n_cal = min(500, max(200, n_sched // 20))
        cal_items = [(namespaces[i % n_ns], f"inert-{i:05d}") for i in range(n_cal)]
        cal_ms: dict[str, int] = {}
        cal_errors: Counter[str] = Counter()
        cal_s = await create_schedules(session, urls, cal_items, INERT_SPEC, cal_ms, cal_errors)
        cal_rate = rate(len(cal_ms), cal_s)
        budget = min(MAX_CREATE_BUDGET, math.ceil(1.25 * n_sched / max(cal_rate, 1.0)) + 2)
        first = math.ceil(time.time()) + max(3, budget)
        last = first + window - 1
        print(f"{label} calibration: {len(cal_ms)} inert schedules at {cal_rate:,.0f}/s; creating "
              f"{n_sched:,} schedules, window opens in {first - time.time():.1f}s ...", file=sys.stderr)

        spec = {"interval": [{"interval": "1s"}],
                "startTime": rfc3339_seconds(first), "endTime": rfc3339_seconds(last)}
        items = [(namespaces[i % n_ns], f"s{i:05d}-{namespaces[i % n_ns]}") for i in range(n_sched)]
        created_ms: dict[str, int] = {}
        errors: Counter[str] = Counter()
        create_seconds = await create_schedules(session, urls, items, spec, created_ms, errors)
        created_late = sum(1 for v in created_ms.values() if v >= first * 1000)
        if time.time() >= first:
            print(f"{label} note: creation took {create_seconds:.1f}s, past the window start "
                  f"({created_late} created late)", file=sys.stderr)
        expected: set[tuple[str, int]] = {
            (sid, sec * 1000) for sid, cms in created_ms.items()
            for sec in range(first, last + 1) if sec * 1000 > cms
        }

        # The window: CPU of every node across it; then wait for the fires (or the cutoff).
        await asyncio.sleep(max(0.0, first - time.time() - 0.05))
        create_stop.set()
        if create_watcher is not None:
            await create_watcher
        watch_stop = asyncio.Event()
        watch = LeaderWatch() if system.kind == "cluster" else None
        watcher = asyncio.create_task(watch_leaders(session, urls[0], watch_stop, watch)) if watch else None
        foreign = ForeignCpu(system.nodes)
        cpu_a = [n.sample() for n in system.nodes]
        client_a = time.process_time()
        print(f"{label} window: {window}s of {n_sched:,} fires/s ...", file=sys.stderr)
        await asyncio.sleep(max(0.0, last + 1 - time.time()))
        cpu_b = [n.sample() for n in system.nodes]
        client_b = time.process_time()
        foreign_pct = foreign.pct()
        window_end = time.monotonic()
        give_up = window_end + s.grace
        total, seen, stable_since = 0, -1, time.monotonic()
        reason = "deadline"
        while True:
            total = sum(summed_fires(await all_metrics(session, urls)).values())
            now = time.monotonic()
            if total >= len(expected):
                reason = "all fired"
                break
            if total != seen:
                seen, stable_since = total, now
            elif now - stable_since > STALL_SECONDS:
                reason = f"no progress for {STALL_SECONDS:g}s"
                break
            if now >= give_up:
                reason = f"grace of {s.grace:g}s over"
                break
            await asyncio.sleep(0.5)
        cutoff_ms = int(time.time() * 1000)
        cutoff_after = round(time.monotonic() - window_end, 2)
        watch_stop.set()
        if watcher is not None:
            await watcher
        if total < len(expected):
            problems.append(f"{total:,} of {len(expected):,} expected fires counted at the cutoff "
                            f"({reason})")
        print(f"{label} cutoff {cutoff_after:g}s after the window ({reason}); listing ...",
              file=sys.stderr)
        metrics = await all_metrics(session, urls)
        list_errors: Counter[str] = Counter()
        fired_all, pages, list_s = await list_fired(
            session, system, ns_ok, await asyncio.to_thread(leader_urls, system), list_errors)
        if list_errors:
            problems.append(f"listing failed for some namespaces ({_errors(dict(list_errors))})")
        if reason.startswith("no progress") or list_errors:
            problems.append(await canary_start(session, f"{urls[0]}/v1/tasks/namespaces/{namespaces[0]}"))

    fired = [f for f in fired_all if f[2] <= cutoff_ms]
    stats = analyze_fires(fired, expected)
    lateness = sorted(start - nominal for sid, nominal, start in fired if (sid, nominal) in expected)
    window_end_ms = (last + 1) * 1000
    in_window = sum(1 for sid, nominal, start in fired
                    if start < window_end_ms and (sid, nominal) in expected)
    unfired = stats["skipped"]
    started = {(sid, nominal) for sid, nominal, _ in fired}
    bounds = [cutoff_ms - nominal for sid, nominal in expected if (sid, nominal) not in started]
    q = lateness_quantiles(lateness, bounds)
    hist = summed_histogram(metrics)
    h50, b50 = histogram_quantile(hist, 0.5)
    h99, b99 = histogram_quantile(hist, 0.99)
    load = []
    for n, a, b in zip(system.nodes, cpu_a, cpu_b, strict=True):
        loop, other = cpu_pct(a, b)
        load.append(NodeLoad(node=n.name, loop_cpu_pct=loop, other_cpu_pct=other, rss_mib=n.rss_mib()))
    behind = len(expected) - in_window

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return ScaleResult(
        system=system.kind, nodes=len(system.nodes), partitions=system.partitions,
        schedules=n_sched, namespaces=n_ns, namespaces_created=len(ns_ok),
        namespace_errors=dict(ns_errors),
        calibration_creates=len(cal_ms), calibration_per_s=round(cal_rate, 1),
        created=len(created_ms), create_errors=dict(errors), create_seconds=round(create_seconds, 2),
        creates_per_s=round(rate(len(created_ms), create_seconds), 1), created_late=created_late,
        window_start=rfc3339_seconds(first), window_seconds=window, offered_per_s=len(created_ms),
        expected_fires=len(expected), cutoff_after_window_s=cutoff_after, cutoff_reason=reason,
        fires=stats["fires"], fires_in_window=in_window,
        fires_per_s=round(in_window / window, 1),
        behind_at_window_end=behind,
        behind_seconds=round(behind / len(created_ms), 1) if created_ms else None,
        unfired=unfired, duplicates=stats["duplicates"], out_of_window=stats["out_of_window"],
        lateness_p50_ms=q["p50"][0], lateness_p99_ms=q["p99"][0], lateness_max_ms=q["max"][0],
        p50_lower=q["p50"][1], p99_lower=q["p99"][1], max_lower=q["max"][1],
        fired_p50_ms=ms(percentile(lateness, 0.5)), fired_p99_ms=ms(percentile(lateness, 0.99)),
        drain_by_second_ms=stats["drain_by_second"],
        histogram_count=int(hist[-1][1]) if hist else 0,
        histogram_p50_ms=None if h50 is None else round(h50 * 1000, 1), histogram_p50_bucket=b50,
        histogram_p99_ms=None if h99 is None else round(h99 * 1000, 1), histogram_p99_bucket=b99,
        fires_by_outcome=summed_fires(metrics),
        listed=len(fired_all), listed_after_cutoff=len(fired_all) - len(fired),
        list_seconds=round(list_s, 2), list_pages=pages, list_errors=dict(list_errors),
        node_load=load, client_cpu_pct=round((client_b - client_a) / window * 100, 1),
        foreign_cpu_pct=foreign_pct,
        leader_watch=watch, create_leader_watch=create_watch,
        error="; ".join(problems) or None,
    )


def lateness_quantiles(lateness: Sequence[float], bounds: Sequence[float]
                       ) -> dict[str, tuple[float | None, bool]]:
    """p50/p99/max of exact lateness plus lower bounds of unfired slots.

    Returns ``(value, is_lower_bound)``. A quantile is exact when every lower
    bound lies above the values it is interpolated from (then no unfired slot
    can sort below it); otherwise it is only a lower bound.
    """
    vals = sorted([*lateness, *bounds])
    lowest_bound = min(bounds) if bounds else math.inf
    out: dict[str, tuple[float | None, bool]] = {}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        v = percentile(vals, q)
        if v is None:
            out[name] = (None, False)
            continue
        hi = min(math.floor((len(vals) - 1) * q) + 1, len(vals) - 1)
        out[name] = (round(v, 1), lowest_bound <= vals[hi])
    return out


def failed_scale(system: System, s: Settings, error: str) -> ScaleResult:
    """A placeholder row when the schedule run could not even start."""
    return ScaleResult(
        system=system.kind, nodes=len(system.nodes), partitions=system.partitions,
        schedules=s.schedules, namespaces=s.namespaces, namespaces_created=0, namespace_errors={},
        calibration_creates=0, calibration_per_s=0.0, created=0, create_errors={},
        create_seconds=0.0, creates_per_s=0.0, created_late=0, window_start="-",
        window_seconds=s.duration, offered_per_s=0, expected_fires=0, cutoff_after_window_s=None,
        cutoff_reason="-", fires=None, fires_in_window=None, fires_per_s=None,
        behind_at_window_end=None, behind_seconds=None, unfired=None, duplicates=None,
        out_of_window=None, lateness_p50_ms=None, lateness_p99_ms=None, lateness_max_ms=None,
        p50_lower=False, p99_lower=False, max_lower=False, fired_p50_ms=None, fired_p99_ms=None,
        drain_by_second_ms=[], histogram_count=0, histogram_p50_ms=None,
        histogram_p50_bucket="", histogram_p99_ms=None, histogram_p99_bucket="",
        fires_by_outcome={}, listed=None, listed_after_cutoff=None, list_seconds=None,
        list_pages=0, list_errors={}, node_load=[], client_cpu_pct=None, foreign_cpu_pct=None,
        error=error,
    )


LOG_LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) (.*)$")


def log_summary(nodes: Sequence[BenchNode], limit: int = 8) -> tuple[dict[str, int], list[str]]:
    """Lines per level over the nodes' logs, and the most frequent WARNING+ messages.

    Messages are grouped with every digit run replaced by ``N`` (ids, indexes,
    ports), and listed most frequent first as ``level logger: message ×count
    [nodes]``.
    """
    levels: Counter[str] = Counter()
    messages: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[str]] = {}
    for n in nodes:
        with contextlib.suppress(OSError):
            for line in n.log_path.read_text(errors="replace").splitlines():
                m = LOG_LINE.match(line)
                if not m:
                    continue
                levels[m.group(1)] += 1
                if m.group(1) in ("WARNING", "ERROR", "CRITICAL"):
                    key = (f"{m.group(1)} {m.group(2)}", re.sub(r"\d+", "N", m.group(3))[:200])
                    messages[key] += 1
                    where.setdefault(key, set()).add(n.name)
    rank = {"CRITICAL": 0, "ERROR": 1, "WARNING": 2}
    top = sorted(messages.items(), key=lambda kv: (rank[kv[0][0].split()[0]], -kv[1]))[:limit]
    return dict(levels), [f"{who} {msg} ×{count:,} [{','.join(sorted(where[(who, msg)]))}]"
                          for (who, msg), count in top]


def run_scale(system: System, s: Settings) -> ScaleResult:
    try:
        result = asyncio.run(bench_scale(system, s))
    except (RuntimeError, OSError, aiohttp.ClientError, TimeoutError) as e:
        result = failed_scale(system, s, f"{type(e).__name__}: {e}")
    for n in system.nodes:
        result.server_log_findings += [f"{n.name}: {line}" for line in log_findings(n, limit=4)]
    result.log_levels, result.log_messages = log_summary(system.nodes)
    return result


def ratios(scale: Sequence[ScaleResult]) -> Ratios | None:
    by = {r.system: r for r in scale}
    c, one = by.get("cluster"), by.get("single")
    if c is None or one is None:
        return None

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    notes = []
    if c.p50_lower or c.p99_lower:
        notes.append("the cluster's lateness is a lower bound (unfired slots), so are its ratios")
    if one.p50_lower or one.p99_lower:
        notes.append("the single node's lateness is a lower bound too: lateness ratios are rough")
    return Ratios(p50=div(c.lateness_p50_ms, one.lateness_p50_ms),
                  p99=div(c.lateness_p99_ms, one.lateness_p99_ms),
                  fires_per_s=div(c.fires_per_s, one.fires_per_s), note="; ".join(notes))


# ---------------------------------------------------------------------------
# the report


def _late(v: float | None, lower: bool) -> str:
    return ("≥" if lower and v is not None else "") + _f(v)


def render(report: Report) -> str:
    m, st = report.machine, report.settings
    lines = [
        f"tasksd cluster benchmark — {st['nodes']}-node Raft cluster ({st['partitions']} partitions "
        "+ meta) vs one node (local replicator), same machine",
        f"machine : {m.cores} cores, {m.cpu}; {m.os}; load average at start {report.load_average}",
        f"python  : {m.implementation} {m.python}; aiohttp {m.aiohttp}; client loop {m.client_loop}",
        f"disk    : {m.tmp_dir} — {m.filesystem}; durability {st['durability']}",
        f"settings: {st['schedules']:,} schedules × interval 1s over {st['namespaces']} namespaces, "
        f"{st['duration']} nominal seconds, grace {st['grace']:g}s; idle: settle "
        f"{st['idle_settle']:g}s, window {st['idle_window']:g}s",
    ]
    if report.startup_seconds:
        lines.append("startup : " + ", ".join(f"{k} ready in {v:.1f}s"
                                                for k, v in report.startup_seconds.items()))
    for e in report.errors:
        lines.append(f"  !! {e}")

    idle = report.idle
    if idle:
        lines += ["", f"1) Idle cost — no traffic, {idle.settle_seconds:g}s after start, CPU over "
                      f"{idle.window_seconds:g}s (/proc/PID/stat utime+stime; 100% = one core)"]
        lines += _table(
            ["system", "node", "CPU %", "loop %", "other thr %", "threads", "RSS MiB", "peak RSS MiB"],
            [[r.system, r.node, _f(r.cpu_pct, 2), _f(r.loop_cpu_pct, 2), _f(r.other_cpu_pct, 2),
              _i(r.threads), _f(r.rss_mib), _f(r.peak_rss_mib)] for r in idle.nodes]
            + [["cluster", "total", _f(idle.cluster_cpu_pct, 2), "", "", "", _f(idle.cluster_rss_mib), ""]],
        )
        tick_pct = 100 / CLK_TCK / idle.window_seconds  # one clock tick over the window
        if idle.single_cpu_pct == 0:
            n_cluster = sum(1 for x in idle.nodes if x.system == "cluster") or 1
            per_node = None if idle.cluster_cpu_pct is None else idle.cluster_cpu_pct / n_cluster
            cpu_cmp = (f"CPU: the single node used no clock tick (< {tick_pct:.2f}%), a cluster node "
                       f"{_f(per_node, 2)}% on average")
        else:
            cpu_cmp = (f"CPU per node ×{_f(idle.cpu_ratio_per_node, 2)}, whole cluster ×"
                       + _f(idle.cluster_cpu_pct / idle.single_cpu_pct
                            if idle.cluster_cpu_pct is not None and idle.single_cpu_pct else None, 2))
        lines.append(f"  cluster ÷ single: {cpu_cmp}; RSS per node ×{_f(idle.rss_ratio_per_node, 2)}, "
                     "whole cluster ×" + _f(idle.cluster_rss_mib / idle.single_rss_mib
                                            if idle.cluster_rss_mib is not None and idle.single_rss_mib
                                            else None, 2)
                     + f"  (CPU resolution: one tick = {tick_pct:.2f}%)")
        lines.append(f"  other processes on the machine during the window: {_f(idle.foreign_cpu_pct)}% "
                     "(/proc/stat busy − nodes − benchmark; more than a few % makes these numbers suspect)")

    if report.leaders:
        lines += ["", "2) Partition leaders — GET /v1/tasks/cluster"]
        for ld in report.leaders:
            if ld.error:
                lines.append(f"  {ld.when}: !! {ld.error}")
                continue
            parts = ", ".join(f"{node} {len(ps)} {ps}" for node, ps in sorted(ld.by_node.items()))
            line = (f"  {ld.when} (asked {ld.asked}): {parts}; meta leader {ld.meta_leader}; "
                    f"{ld.on_preferred}/{ld.partitions} on their preferred leader")
            if ld.no_leader:
                line += f"; NO LEADER: {ld.no_leader}"
            lines.append(line)
            if ld.leader_changes:
                lines.append("    leader changes counted by the nodes during the load "
                             "(tasks_raft_leader_changes_total): "
                             + ", ".join(f"{k} {v}" for k, v in sorted(ld.leader_changes.items())))

    if report.scale:
        lines += ["", "3) Schedule fire lateness — interval 1s, ALLOW_ALL, all in one window; "
                      "lateness = startTime − nominal (ms)"]
        rows = []
        for r in report.scale:
            behind = "-" if r.behind_at_window_end is None else \
                f"{r.behind_at_window_end:,} ({_f(r.behind_seconds)}s)"
            rows.append([
                f"{r.system} ({r.nodes}n/{r.partitions}p)", f"{r.created:,}", f"{r.expected_fires:,}",
                _i(r.fires), _f(r.fires_per_s), f"{r.offered_per_s:,}", behind,
                _late(r.lateness_p50_ms, r.p50_lower), _late(r.lateness_p99_ms, r.p99_lower),
                _late(r.lateness_max_ms, r.max_lower), _i(r.unfired), _i(r.duplicates),
            ])
        lines += _table(["system", "schedules", "expected", "fires", "fires/s", "offered/s",
                         "behind at end", "late p50", "late p99", "late max", "skipped", "dup"], rows)
        if report.ratios:
            rt = report.ratios
            lines.append(f"  cluster ÷ single: late p50 ×{_f(rt.p50, 2)}, late p99 ×{_f(rt.p99, 2)}, "
                         f"fires/s ×{_f(rt.fires_per_s, 2)}" + (f" ({rt.note})" if rt.note else ""))
        for r in report.scale:
            lines += ["", f"  [{r.system}] window {r.window_seconds}s from {r.window_start}"]
            if r.error:
                lines.append(f"    !! {r.error}")
            lines.append(f"    namespaces {r.namespaces_created}/{r.namespaces} "
                         f"(errors {_errors(r.namespace_errors)}); calibration {r.calibration_creates} "
                         f"inert schedules at {_f(r.calibration_per_s, 0)}/s")
            lines.append(f"    created {r.created:,}/{r.schedules:,} in {r.create_seconds:.1f}s "
                         f"({_f(r.creates_per_s, 0)}/s, over {r.nodes} "
                         f"node(s) round-robin), errors {_errors(r.create_errors)}"
                         + (f"; {r.created_late:,} created after the window opened" if r.created_late else ""))
            if r.cutoff_after_window_s is not None:
                lines.append(f"    cutoff {r.cutoff_after_window_s:g}s after the window ({r.cutoff_reason}); "
                             f"fires inside the window {_i(r.fires_in_window)}, by the cutoff {_i(r.fires)}"
                             f"; outside the window {_i(r.out_of_window)}")
            if r.unfired:
                lines.append(f"    {r.unfired:,} expected slots skipped (not started by the cutoff): each "
                             "counts as cutoff − nominal, so ≥ marks a lower bound; over the fires only: "
                             f"p50 {_f(r.fired_p50_ms)} ms, p99 {_f(r.fired_p99_ms)} ms")
            trend = [f"{x / 1000:.1f}" for x in r.drain_by_second_ms]
            if trend:
                txt = " ".join(trend) if len(trend) <= 10 else \
                    " ".join(trend[:5]) + " … " + " ".join(trend[-5:])
                lines.append(f"    lateness of the last fire of each nominal second (s): {txt}")
            outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(r.fires_by_outcome.items()) if v)
            lines.append(f"    server fire counters: {outcomes or '-'}; histogram "
                         f"({r.histogram_count:,} obs, after commit): p50 ≈ {_f(r.histogram_p50_ms)} ms "
                         f"in {r.histogram_p50_bucket or '-'}, p99 ≈ {_f(r.histogram_p99_ms)} ms in "
                         f"{r.histogram_p99_bucket or '-'}")
            if r.node_load:
                lines.append("    CPU during the window (loop + other threads; RSS after): "
                             + "; ".join(f"{x.node} {_f(x.loop_cpu_pct, 0)}+{_f(x.other_cpu_pct, 0)}% "
                                         f"{_f(x.rss_mib, 0)} MiB" for x in r.node_load)
                             + f"; client {_f(r.client_cpu_pct, 0)}%; other processes on the machine "
                             f"{_f(r.foreign_cpu_pct, 0)}%")
            for phase, w in (("setup+creation", r.create_leader_watch), ("window→cutoff", r.leader_watch)):
                if w is not None:
                    lines.append(f"    leaders, {phase} (GET /v1/tasks/cluster on n1 1/s, {w.polls} polls): "
                                 f"meta moved {w.meta_moves}×, partitions moved {w.partition_moves}×"
                                 f"{' ' + str(w.partitions_moved) if w.partitions_moved else ''}, "
                                 f"a group without leader seen "
                                 f"{w.leaderless_seen}×, failed polls {w.failed}, slowest answer "
                                 f"{w.slowest_s:.2f}s")
            if r.list_seconds is not None:
                lines.append(f"    listed {_i(r.listed)} fired workflows ({_i(r.listed_after_cutoff)} started "
                             f"after the cutoff, not counted) in {r.list_pages} pages, "
                             f"{r.list_seconds:.1f}s; errors {_errors(r.list_errors)}")
            for f in r.server_log_findings:
                lines.append(f"    !! log {f}")
            if r.log_levels:
                lines.append("    node logs so far (all nodes, whole life): "
                             + ", ".join(f"{k} {v:,}" for k, v in sorted(r.log_levels.items())))
                lines += [f"      {msg}" for msg in r.log_messages]
    if report.exit_codes:
        bad = {k: v for k, v in report.exit_codes.items() if v not in (0, None)}
        lines += ["", "node exit codes: " + (", ".join(f"{k} {v}" for k, v in bad.items())
                                             + f" (-{int(signal.SIGKILL)} = killed after "
                                               f"{STOP_SECONDS:g}s)" if bad else "all 0")]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# entry point


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.cluster",
        description="Schedule fire lateness at scale and idle cost: a 3-node Raft cluster "
                    "against a single node, on this machine.",
    )
    p.add_argument("--quick", action="store_true", help="2,000 schedules, 8 nominal seconds")
    p.add_argument("--schedules", type=int, help="active schedules (default 10000, quick 2000)")
    p.add_argument("--namespaces", type=int, default=100, help="namespaces (default 100)")
    p.add_argument("--duration", type=int, help="nominal seconds of firing (default 20, quick 8)")
    p.add_argument("--grace", type=float,
                   help="max seconds to wait for late fires after the window (default 10, quick 5)")
    p.add_argument("--idle-settle", type=float, default=10.0, help="seconds before the idle window (10)")
    p.add_argument("--idle-window", type=float, default=20.0, help="idle CPU window in seconds (20)")
    p.add_argument("--durability", choices=("sync", "nosync"), default="sync",
                   help="node durability (default sync, the server default)")
    p.add_argument("--json", metavar="PATH", help="also write every number as JSON to PATH")
    p.add_argument("--tmp-dir", metavar="DIR", help="parent of the temporary data dir (which disk)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    a = p.parse_args(argv)
    a.schedules = a.schedules if a.schedules is not None else (2000 if a.quick else 10_000)
    a.duration = a.duration if a.duration is not None else (8 if a.quick else 20)
    a.grace = a.grace if a.grace is not None else (5.0 if a.quick else 10.0)
    if a.schedules < 1 or a.namespaces < 1 or a.duration < 1:
        p.error("--schedules, --namespaces and --duration must be >= 1")
    if a.namespaces > 1000:
        p.error("--namespaces must be <= 1000")
    if a.grace < 0 or a.idle_settle < 0 or a.idle_window <= 0:
        p.error("--grace and --idle-settle must be >= 0, --idle-window > 0")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    client_loop = "asyncio"
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        client_loop = "uvloop"
    s = Settings(schedules=a.schedules, namespaces=a.namespaces, duration=a.duration, grace=a.grace,
                 idle_settle=a.idle_settle, idle_window=a.idle_window, durability=a.durability,
                 partitions=CLUSTER_PARTITIONS, nodes=CLUSTER_NODES, tmp_parent=a.tmp_dir, keep=a.keep)
    signal.signal(signal.SIGTERM, _on_sigterm)
    root = Path(tempfile.mkdtemp(prefix="tasks-bench-cluster-", dir=a.tmp_dir))
    load_avg = "?"
    with contextlib.suppress(OSError):
        load_avg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    report = Report(machine=machine_info(root, client_loop), load_average=load_avg, settings=asdict(s))
    systems: list[System] = []
    try:
        secret = root / "cluster.secret"
        secret.write_text(secrets.token_hex(32) + "\n")  # 64 characters
        os.chmod(secret, 0o600)
        cluster = System("cluster", root / "cluster", s, secret)
        single = System("single", root / "single", s)
        systems = [cluster, single]
        print("starting a 3-node cluster and a single node ...", file=sys.stderr)
        t0 = time.monotonic()
        for sys_ in systems:
            sys_.launch()
        up: list[System] = []
        for sys_ in systems:
            try:
                sys_.wait_ready(t0 + READY_TIMEOUT)
                report.startup_seconds[sys_.kind] = round(time.monotonic() - t0, 1)
                up.append(sys_)
            except RuntimeError as e:
                report.errors.append(f"{sys_.kind} did not start: {e}")
                sys_.stop()
        if up:
            report.idle = measure_idle(up, s.idle_settle, s.idle_window)
        if cluster in up:
            report.leaders.append(leaders(cluster, "idle, after settling"))
            before = leader_changes(cluster)
            report.scale.append(run_scale(cluster, s))
            report.leaders.append(leaders(cluster, "after the load (cutoff + listing; backlog may still fire)",
                                          before))
        print("stopping the cluster ...", file=sys.stderr)
        report.exit_codes.update(cluster.stop())
        if single in up:
            report.scale.append(run_scale(single, s))
        report.exit_codes.update(single.stop())
        report.ratios = ratios(report.scale)
    finally:
        for sys_ in systems:
            codes = sys_.stop()
            for k, v in codes.items():
                report.exit_codes.setdefault(k, v)
        if s.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(render(report))
    if a.json:
        Path(a.json).write_text(json.dumps(asdict(report), indent=2) + "\n")
        print(f"\nwrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
