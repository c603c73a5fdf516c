"""Namespace migration benchmark of ``tasksd``: snapshot throughput and the fenced write pause.

Run it from the repository root::

    .venv/bin/python -m bench.migration [--quick] [--size-mb 200] [--migrations 20]
                                        [--writers 8] [--nodes 3] [--replication-factor 3]
                                        [--json PATH]

It is a measurement, not a test: nothing here asserts on speed. It starts a
``--nodes``-node (3) Raft cluster of ``tasksd serve`` subprocesses
(``--replicator raft``, ``--partitions`` 4 + the meta group, every node with
``--replication-factor`` R (3), server-default Raft timings, durability
``sync``, ``--migration-bandwidth`` 1GiB so that the copy is not paced) on
free loopback ports, with fresh data dirs and a fresh 64-byte cluster secret
under one temporary directory. The node launcher is ``bench.cluster.System``;
every node is stopped in a ``finally`` block (SIGTERM, SIGKILL after 15 s;
SIGTERM/SIGHUP/SIGINT of the benchmark unwind through it) and tied to this
process with ``PR_SET_PDEATHSIG``.

**Topology.** With R = N (the default 3 and 3) every node holds every
partition, so a migration moves the shard between Raft groups of the same
three machines. With R < N (e.g. ``--nodes 4 --replication-factor 3``) each
partition lives on R of the N nodes (``replicas`` of ``GET
/v1/tasks/cluster``), a node without a replica forwards, and a migration
between partitions with different replica sets moves the data to other
machines: destinations are then chosen among such partitions, and the report
says for every migration whether the replica set changed (and, for the
throughput move, which nodes gained and lost the shard). Every direct read of
a partition's LMDB (calibration, baseline, the copies' digests) goes to a node
that holds that partition (its leader when known, else a replica), after a
barrier on that node. The layout seen at start (leader and replicas of each
partition, which nodes have the partition on disk) is reported; a node with
data of a partition it is not a replica of, or a replica without it, is
flagged.

1. **Snapshot throughput.** Namespace ``bulk`` (``apsLimit: 0``) is filled with
   ~``--size-mb`` MB of shard data: workflow starts with a ``--input-kb`` KB
   input, ``--fill-clients`` concurrent keep-alive HTTP clients, all sent to
   the leader of the namespace's partition (retried on 503 with the same
   requestId). The bytes per start are calibrated on the first starts by
   reading the shard's key range from the leader's LMDB (a replica's if no
   leader is known). Then the namespace is migrated (``{"toPartition": p}``, p
   with another replica set when R < N, and led by another node when
   possible) and the job is polled every 50 ms (``GET
   /v1/tasks/migrations/{id}`` on the meta leader, i.e. the coordinator): the
   moment it is first seen in each status is recorded (±25 ms: the midpoint
   between that poll and the one before).
   ``snapshot MB/s`` = the job's ``bytes`` ÷ (catching-up − snapshotting);
   ``streaming MB/s`` = the growth of ``bytes`` between the first and last
   polls that saw it change (leaves out the snapshot read, ``bytes`` moves
   every 32 chunks of 512 KiB = 16 MiB); ``job total`` = POST → done. After
   the move the shard's range is hashed (SHA-256 of keys and values) on every
   node that holds the destination and compared with the source's digest
   taken before the move, and the source replicas' leftover keys are counted
   (waiting up to 15 s for followers to apply).

   **Baseline** (same run, same disk, nodes idle): the same key range read
   from a source replica's LMDB (the leader's when known; one read
   transaction, opened read-only by this process) and written into a fresh
   LMDB environment (``sync=metasync=True``) with one commit, i.e. one
   fsync: the raw local copy rate, no Raft, no network, no Python state
   machine. A second row commits every 512 KiB (one fsync per chunk, what
   applying chunk proposals one by one costs at least). ``ours ÷ baseline``
   < 1 = slower than a copy.
   With R < N the migration also crosses the loopback network to machines
   that had no copy, which the baseline does not.

2. **Fenced write pause.** Namespace ``pingpong`` (~``--small-mb`` MB) is
   moved back and forth ``--migrations`` times between its home partition and
   another one (with another replica set when R < N) while ``--writers``
   clients (round-robin over all the nodes, replicas or not) start
   workflows back to back with a unique workflowId/requestId each, retrying a
   503 (or a transport error) with the same requestId after 50 ms, for at most
   30 s. Between two jobs the writers run ``--gap`` s without a job. Reported:
   the jobs' ``fencedMs`` p50/p99/max; client-observed write latency (first
   attempt → 2xx, retries included) p50/p99/max for writes that overlapped a
   cutover window (from the poll before ``cutover`` was first seen to the
   first poll that saw ``done``), writes that overlapped a job before its
   cutover (snapshot/tail), and writes outside any job; writes acknowledged,
   failed (any non-503 answer, or 30 s of 503s: must be 0), transport errors,
   writes that saw at least one 503. At the end every workflow of the
   namespace is listed (linearizable list, ``pageSize=1000``) and checked: every
   acknowledged workflowId present with the runId it was acknowledged with,
   none listed twice, the filled workflows all there.

The report (markdown tables) records the machine (nproc, CPU, Python, load
average), the exact command, the topology (nodes, replication factor, the
layout, whether each migration changed the replica set), node CPU during the copy, peak RSS, the CPU of
*other* processes on the machine during each section (more than a few % means
the numbers are suspect), any failed job with its ``error`` field, and the
WARNING-and-above lines of the node logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import lmdb

from bench.cluster import READY_TIMEOUT, BenchNode, ForeignCpu, System, log_summary
from bench.cluster import Settings as ClusterSettings
from bench.single_node import (
    JSON_HEADERS,
    Json,
    _on_sigterm,
    cpu_pct,
    machine_info,
    percentile,
)

MiB = 1 << 20
MB = 1_000_000
NSP = "/v1/tasks/namespaces"
POLL_S = 0.05
CHUNK_BYTES = 512 * 1024  # migration/remote.py CHUNK_BYTES (one chunk proposal)
CALIBRATE_STARTS = 256
WRITE_GIVE_UP_S = 30.0
RETRY_DELAY_S = 0.05
TERMINAL = ("done", "failed")
STATUSES = ("pending", "snapshotting", "catching-up", "cutover", "done")
SETTLE_S = 15.0  # how long followers get to apply a move before their copies are judged


# ---------------------------------------------------------------------------
# results


@dataclass
class Machine:
    nproc: int
    cpu: str
    python: str
    os: str
    lmdb: str
    load_average: str
    tmp_dir: str
    filesystem: str


@dataclass
class FillResult:
    namespace: str
    partition: int
    target_mb: float
    starts: int
    input_bytes: int
    clients: int
    seconds: float
    starts_per_s: float
    shard_bytes: int
    shard_keys: int
    mb_per_s: float
    bytes_per_start: float
    saw_503: int
    errors: dict[str, int]


@dataclass
class JobRun:
    job: Json
    posted_s: float  # perf_counter at POST
    end_s: float  # first poll that saw a terminal status (or the timeout)
    polls: list[tuple[float, str, int]]  # (perf_counter, status, bytes)
    entered: dict[str, tuple[float, float]]  # status -> (previous poll, first poll that saw it)
    timed_out: bool = False
    node_cpu: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def at(self, status: str) -> float | None:
        """When the job entered ``status`` (midpoint of the two polls around it, ±25 ms); a
        status no poll saw (it lasted less than a poll) counts as entered with the next one."""
        b = self.boundary(status)
        return None if b is None else (b[0] + b[1]) / 2

    def boundary(self, status: str) -> tuple[float, float] | None:
        """(lo, hi) of the entry into ``status``, or of the next status seen if it was skipped
        (``failed`` only stands in for ``done``: a job that failed before its cutover had no fence)."""
        order = [*STATUSES, "failed"] if status == "done" else list(STATUSES)
        for s in order[order.index(status):]:
            if s in self.entered:
                return self.entered[s]
        return None


@dataclass
class PartitionLayout:
    """One partition as the cluster view shows it, and which data dirs actually hold it."""

    id: int
    leader: str | None
    preferred_leader: str | None
    replicas: list[str]
    on_disk: list[str]  # nodes with ``partitions/<id>/data.mdb``


@dataclass
class Topology:
    nodes: int
    replication_factor: int  # as asked (``--replication-factor``)
    effective_rf: int | None  # ``replicationFactor`` of the cluster view: min(R, N)
    meta_leader: str | None = None
    partitions: list[PartitionLayout] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)  # replicas vs data on disk


@dataclass
class CopyCheck:
    """The moved shard on disk after the job: the destination's copies against the source's digest."""

    source_node: str = ""
    source_keys: int = 0
    source_sha256: str = ""
    dest: dict[str, Json] = field(default_factory=dict)  # node -> {keys, sha256, same}
    source_left: dict[str, int] = field(default_factory=dict)  # node -> keys still in the source range
    waited_s: float = 0.0
    ok: bool | None = None


@dataclass
class CopyRow:
    label: str
    bytes: int
    keys: int
    seconds: float
    mb_per_s: float
    commits: int


@dataclass
class ThroughputResult:
    fill: FillResult | None = None
    baseline: list[CopyRow] = field(default_factory=list)
    job: Json | None = None
    leaders: Json = field(default_factory=dict)
    source_replicas: list[str] = field(default_factory=list)
    dest_replicas: list[str] = field(default_factory=list)
    replica_set_changed: bool | None = None
    gained: list[str] = field(default_factory=list)  # nodes that hold the shard only after the move
    lost: list[str] = field(default_factory=list)  # nodes that held it only before
    baseline_node: str = ""
    copy_check: CopyCheck | None = None
    phases_s: dict[str, float | None] = field(default_factory=dict)
    snapshot_mb_per_s: float | None = None
    streaming_mb_per_s: float | None = None
    total_mb_per_s: float | None = None
    job_total_s: float | None = None
    first_bytes_s: float | None = None
    node_cpu_snapshot: dict[str, dict[str, float | None]] = field(default_factory=dict)
    rss_mib: dict[str, dict[str, float | None]] = field(default_factory=dict)
    foreign_cpu_pct: float | None = None
    leader_changes: dict[str, int] = field(default_factory=dict)
    verify: str = ""
    error: str | None = None


@dataclass
class LatencyRow:
    label: str
    writes: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    saw_503: int


@dataclass
class PauseResult:
    fill: FillResult | None = None
    partitions: list[int] = field(default_factory=list)
    leaders: Json = field(default_factory=dict)
    replicas: dict[int, list[str]] = field(default_factory=dict)  # of the two partitions
    replica_set_changed: bool | None = None
    writers: int = 0
    jobs: list[Json] = field(default_factory=list)
    per_job: list[Json] = field(default_factory=list)
    job_seconds: list[float] = field(default_factory=list)
    fenced_ms: dict[str, float | None] = field(default_factory=dict)
    cutover_window_ms: dict[str, float | None] = field(default_factory=dict)
    latency: list[LatencyRow] = field(default_factory=list)
    acked: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    saw_503: int = 0
    transport_errors: int = 0
    seconds: float = 0.0
    writes_per_s: float = 0.0
    foreign_cpu_pct: float | None = None
    leader_changes: dict[str, int] = field(default_factory=dict)
    verify: str = ""
    verify_ok: bool | None = None
    error: str | None = None


@dataclass
class Report:
    machine: Machine
    command: str
    settings: Json
    topology: Topology | None = None
    startup_s: float | None = None
    throughput: ThroughputResult | None = None
    pause: PauseResult | None = None
    log_counts: dict[str, int] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0


@dataclass
class Settings:
    size_mb: float
    small_mb: float
    migrations: int
    writers: int
    fill_clients: int
    input_kb: float
    bandwidth: str
    partitions: int
    nodes: int
    replication_factor: int
    durability: str
    gap_s: float
    job_timeout_s: float
    sections: list[str]
    tmp_parent: str | None
    keep: bool


# ---------------------------------------------------------------------------
# small helpers


def r3(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def ms_quantiles(values_s: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    xs = sorted(values_s)

    def q(p: float) -> float | None:
        v = percentile(xs, p)
        return None if v is None else round(v * 1000, 1)

    return q(0.5), q(0.99), q(1.0)


def shard_prefix(ns: str, org: str = "_") -> bytes:
    """The shard's LMDB key prefix (shard/keys.py ``shard_prefix``; org "" is stored as "_")."""
    return b"s" + org.encode() + b"\x00" + ns.encode() + b"\x00"


def open_readonly(path: Path) -> lmdb.Environment:
    """A live node's partition, opened read-only by this process (LMDB is multi-process safe)."""
    return lmdb.open(str(path), readonly=True, lock=True, subdir=True, max_dbs=0, max_readers=4096)


def range_size(path: Path, prefix: bytes) -> tuple[int, int]:
    """(keys, key + value bytes) under ``prefix``: what a migration job counts as ``bytes``."""
    env = open_readonly(path)
    try:
        n = size = 0
        with env.begin(buffers=True) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    if bytes(k[:len(prefix)]) != prefix:
                        break
                    n += 1
                    size += len(k) + len(v)
        return n, size
    finally:
        env.close()


def range_digest(path: Path, prefix: bytes) -> tuple[int, str]:
    """(keys, SHA-256 of the range, each key and value length-prefixed as migration/remote.py
    ``hash_range`` does): a migration copies the range byte for byte, so equal digests on two
    nodes mean the same shard data, whichever partition each holds it in."""
    env = open_readonly(path)
    try:
        h = hashlib.sha256()
        n = 0
        with env.begin(buffers=True) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    if bytes(k[:len(prefix)]) != prefix:
                        break
                    n += 1
                    h.update(len(k).to_bytes(4, "big"))
                    h.update(k)
                    h.update(len(v).to_bytes(4, "big"))
                    h.update(v)
        return n, h.hexdigest()
    finally:
        env.close()


def raw_copy(src: Path, prefix: bytes, dest: Path, chunk: int | None) -> CopyRow:
    """Copy the key range into a fresh env: one commit (one fsync), or one per ``chunk`` bytes."""
    dest.mkdir(parents=True, exist_ok=True)
    _, expect = range_size(src, prefix)
    s_env = open_readonly(src)
    d_env = lmdb.open(str(dest), map_size=max(64 * MiB, 4 * expect), subdir=True, sync=True,
                      metasync=True, max_dbs=0, lock=True)
    try:
        n = size = pending = commits = 0
        t0 = time.perf_counter()
        with s_env.begin(buffers=False) as rtxn:
            cur = rtxn.cursor()
            wtxn = d_env.begin(write=True)
            try:
                if cur.set_range(prefix):
                    for k, v in cur:
                        if not k.startswith(prefix):
                            break
                        wtxn.put(k, v)
                        n += 1
                        size += len(k) + len(v)
                        pending += len(k) + len(v)
                        if chunk is not None and pending >= chunk:
                            wtxn.commit()
                            commits += 1
                            pending = 0
                            wtxn = d_env.begin(write=True)
                wtxn.commit()
                commits += 1
            except BaseException:
                wtxn.abort()
                raise
        seconds = time.perf_counter() - t0
    finally:
        d_env.close()
        s_env.close()
        shutil.rmtree(dest, ignore_errors=True)
    label = "raw LMDB copy, 1 commit (1 fsync)" if chunk is None else \
        f"raw LMDB copy, 1 commit per {chunk // 1024} KiB"
    return CopyRow(label=label, bytes=size, keys=n, seconds=round(seconds, 3),
                   mb_per_s=round(size / MB / seconds, 1) if seconds > 0 else 0.0, commits=commits)


class Http:
    """Control-plane calls: one aiohttp session, 503 and transport errors retried (bounded)."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, url: str, body: Any = None, retry_for: float = 30.0) -> tuple[int, Any]:
        """(status, parsed JSON or text); status 0 = transport error. 503/0 retried for ``retry_for`` s."""
        deadline = time.monotonic() + retry_for
        while True:
            try:
                async with self.session.request(method, url, json=body) as r:
                    status, text = r.status, await r.text()
                payload: Any = text
                with contextlib.suppress(ValueError):
                    payload = json.loads(text) if text else None
            except (aiohttp.ClientError, TimeoutError) as e:
                status, payload = 0, f"{type(e).__name__}: {e}"
            if status not in (0, 503) or time.monotonic() > deadline:
                return status, payload
            await asyncio.sleep(0.1)

    async def cluster(self, url: str) -> Json:
        status, body = await self.call("GET", url + "/v1/tasks/cluster?pageSize=1000")
        if status != 200:
            raise RuntimeError(f"GET /v1/tasks/cluster: {status} {body}")
        return body


async def leader_changes(http: Http, system: System) -> dict[str, int]:
    """``tasks_raft_leader_changes_total`` by group kind (meta / partition), the most any node saw."""
    out: dict[str, int] = {}
    for n in system.nodes:
        status, text = await http.call("GET", n.url + "/metrics", retry_for=0)
        if status != 200 or not isinstance(text, str):
            continue
        for line in text.splitlines():
            if line.startswith("tasks_raft_leader_changes_total{"):
                kind = line.split('group_kind="', 1)[1].split('"', 1)[0]
                out[kind] = max(out.get(kind, 0), int(float(line.rsplit(None, 1)[1])))
    return out


def leaders_of(view: Json) -> dict[int, str | None]:
    return {p["id"]: p.get("leader") for p in view.get("partitions", [])}


def replicas_of(view: Json) -> dict[int, list[str]]:
    """partition -> the nodes that replicate it (sorted; empty if the view does not say)."""
    return {p["id"]: sorted(p.get("replicas") or []) for p in view.get("partitions", [])}


def on_disk(node: BenchNode, part: int | str) -> bool:
    """Whether ``node``'s data dir holds partition ``part``: a node that is not one of its replicas
    has no ``partitions/<p>`` or an empty one (no ``data.mdb``)."""
    return (node.data_dir / "partitions" / str(part) / "data.mdb").exists()


def holder(system: System, view: Json, part: int) -> BenchNode:
    """A node to read partition ``part``'s LMDB from: its leader when known (the node the fill
    talks to, so one barrier there covers the read), else the first replica with the partition on
    disk. With R < N, assuming a node (the first, or the leader of another partition) would read
    a directory that does not exist, or an empty range."""
    led = leaders_of(view).get(part)
    reps = replicas_of(view).get(part) or [n.name for n in system.nodes]  # no list: every node
    by_name = {n.name: n for n in system.nodes}
    for name in ([led] if led in reps else []) + reps:
        node = by_name.get(name)
        if node is not None and on_disk(node, part):
            return node
    raise RuntimeError(f"no node has partition {part} on disk (replicas {reps}, leader {led})")


def layout(system: System, view: Json, s: Settings) -> Topology:
    """The cluster's placement as seen now, checked against the data dirs: every replica should
    have the partition on disk and no other node should (that would be a replica the view does not
    list, or data left behind)."""
    topo = Topology(nodes=len(system.nodes), replication_factor=s.replication_factor,
                    effective_rf=view.get("replicationFactor"), meta_leader=view.get("metaLeader"))
    for p in view.get("partitions", []):
        reps = sorted(p.get("replicas") or [])
        disk = [n.name for n in system.nodes if on_disk(n, p["id"])]
        topo.partitions.append(PartitionLayout(id=p["id"], leader=p.get("leader"),
                                               preferred_leader=p.get("preferredLeader"),
                                               replicas=reps, on_disk=disk))
        if set(disk) != set(reps):
            topo.anomalies.append(f"partition {p['id']}: replicas {reps} but on disk on {disk}")
        if topo.effective_rf is not None and len(reps) != topo.effective_rf:
            topo.anomalies.append(f"partition {p['id']}: {len(reps)} replicas, replicationFactor "
                                  f"{topo.effective_rf}")
    return topo


def partition_of_ns(view: Json, ns: str) -> int:
    for n in view.get("namespaces", []):
        if n["namespace"] == ns:
            return int(n["partition"])
    raise RuntimeError(f"namespace {ns} not in the cluster view")


def pick_destination(view: Json, src: int, avoid: Sequence[int] = ()) -> int:
    """Another partition, preferably led by another node than the source's leader.

    When the replication factor is below the node count, partitions whose replica set differs
    from the source's come first (the fewest nodes in common first), so that the move puts the
    data on machines that did not have it, which is what such a cluster's migrations cost; the
    leader preference then applies among them. When every node holds every partition no replica
    set differs and the choice is the same as it always was.
    """
    led = leaders_of(view)
    reps = {p: set(r) for p, r in replicas_of(view).items()}
    others = [p for p in sorted(led) if p != src]
    mine = reps.get(src, set())
    moved = sorted((p for p in others if reps.get(p, set()) != mine),
                   key=lambda p: len(mine & reps.get(p, set())))
    for pool in (moved, others):
        for cands in ([p for p in pool if p not in avoid and led[p] and led[p] != led[src]],
                      [p for p in pool if led[p] and led[p] != led[src]],
                      [p for p in pool if p not in avoid], pool):
            if cands:
                return cands[0]
    raise RuntimeError("the cluster has a single partition: nothing to migrate to")


def replica_change(view: Json, src: int, dst: int) -> tuple[bool, list[str], list[str]]:
    """(replica set changed, nodes that gain the shard, nodes that lose it) for a move src → dst."""
    reps = replicas_of(view)
    a, b = set(reps.get(src, [])), set(reps.get(dst, []))
    return a != b, sorted(b - a), sorted(a - b)


async def create_ns(http: Http, url: str, name: str) -> None:
    status, body = await http.call("POST", url + NSP, {"namespaceInfo": {"name": name},
                                                       "config": {"apsLimit": 0}})
    if status != 200:
        raise RuntimeError(f"creating namespace {name}: {status} {body}")


# ---------------------------------------------------------------------------
# writes


@dataclass
class Write:
    wid: str
    t0: float
    t1: float
    ok: bool
    run_id: str | None
    saw_503: int
    transport: int
    error: str | None


async def start_workflow(session: aiohttp.ClientSession, url: str, ns: str, wid: str, wtype: str,
                         payload: Any = None) -> Write:
    """One start; 503 and transport errors retried with the same requestId for up to 30 s."""
    body: Json = {"workflowId": wid, "requestId": f"r-{wid}", "workflowType": {"name": wtype},
                  "taskQueue": {"name": "bench"}}
    if payload is not None:
        body["input"] = payload
    data = json.dumps(body).encode()
    endpoint = f"{url}{NSP}/{ns}/workflows"
    t0 = time.perf_counter()
    saw = transport = 0
    while True:
        try:
            async with session.post(endpoint, data=data, headers=JSON_HEADERS) as r:
                status = r.status
                text = await r.read()
        except (aiohttp.ClientError, TimeoutError):
            status, text = 0, b""
            transport += 1
        if 200 <= status < 300:
            t1 = time.perf_counter()
            run_id = None
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                got = json.loads(text)
                run_id = (got.get("execution") or {}).get("runId") or got.get("runId")
            return Write(wid, t0, t1, True, run_id, saw, transport, None)
        if status not in (0, 503):
            return Write(wid, t0, time.perf_counter(), False, None, saw, transport,
                         f"HTTP {status}: {text[:160].decode(errors='replace')}")
        saw += status == 503
        if time.perf_counter() - t0 > WRITE_GIVE_UP_S:
            return Write(wid, t0, time.perf_counter(), False, None, saw, transport,
                         f"gave up after {WRITE_GIVE_UP_S:g}s of 503/transport errors")
        await asyncio.sleep(RETRY_DELAY_S)


def fill_payload(input_bytes: int) -> str:
    """A printable string of ``input_bytes`` characters (JSON-encodes 1:1)."""
    base = secrets.token_hex(64)
    return (base * (input_bytes // len(base) + 1))[:input_bytes]


async def fill(urls: Sequence[str], ns: str, first: int, count: int, clients: int,
               payload: str) -> tuple[int, int, Counter[str], float]:
    """Starts ``f-<first>`` … ``f-<first+count-1>``; returns (ok, saw 503, errors, seconds)."""
    next_i = first
    end = first + count
    ok = saw = 0
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=clients)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        t0 = time.perf_counter()

        async def client(k: int) -> None:
            nonlocal next_i, ok, saw
            url = urls[k % len(urls)]
            while next_i < end:
                i = next_i
                next_i += 1
                w = await start_workflow(session, url, ns, f"f-{i}", "Fill", payload)
                saw += w.saw_503 > 0
                if w.ok:
                    ok += 1
                else:
                    errors[(w.error or "?").split(":")[0]] += 1

        await asyncio.gather(*(client(k) for k in range(clients)))
        seconds = time.perf_counter() - t0
    return ok, saw, errors, seconds


async def fill_namespace(http: Http, system: System, ns: str, target_mb: float, clients: int,
                         input_bytes: int) -> FillResult:
    """Create ``ns`` and fill its shard with ~``target_mb`` MB, calibrating bytes per start."""
    urls = system.urls
    await create_ns(http, urls[0], ns)
    view = await http.cluster(urls[0])
    part = partition_of_ns(view, ns)
    leader = leaders_of(view).get(part)
    node = holder(system, view, part)  # the leader, so the starts are not forwarded
    path = node.data_dir / "partitions" / str(part)
    payload = fill_payload(input_bytes)
    target = int(target_mb * MB)
    calib = max(1, min(CALIBRATE_STARTS, target // max(1, input_bytes * 2)))
    role = "leader" if node.name == leader else f"a replica; leader {leader}"
    print(f"fill {ns}: ~{target_mb:g} MB via {node.name} ({role} of partition {part}), "
          f"{clients} clients ...", file=sys.stderr)
    ok, saw, errors, seconds = await fill([node.url], ns, 0, calib, clients, payload)
    await barrier(http, node.url, ns)
    _, size = range_size(path, shard_prefix(ns))
    per = size / max(1, ok)
    rest = max(0, math.ceil((target - size) / per)) if per > 0 else 0
    ok2, saw2, errors2, seconds2 = await fill([node.url], ns, calib, rest, clients, payload)
    await barrier(http, node.url, ns)
    n_keys, size = range_size(path, shard_prefix(ns))
    total_s = seconds + seconds2
    starts = ok + ok2
    errs = Counter(errors) + Counter(errors2)
    return FillResult(
        namespace=ns, partition=part, target_mb=target_mb, starts=starts, input_bytes=input_bytes,
        clients=clients, seconds=round(total_s, 2), starts_per_s=round(starts / total_s, 1),
        shard_bytes=size, shard_keys=n_keys, mb_per_s=round(size / MB / total_s, 2),
        bytes_per_start=round(size / max(1, starts), 1), saw_503=saw + saw2, errors=dict(errs))


async def barrier(http: Http, url: str, ns: str) -> None:
    """A linearizable list: the node has applied every acknowledged write of ``ns``."""
    await http.call("GET", f"{url}{NSP}/{ns}/workflows?pageSize=1")


async def list_ids(http: Http, url: str, ns: str, wtype: str) -> list[tuple[str, str]]:
    """(workflowId, runId) of every run of type ``wtype`` in ``ns`` (all pages)."""
    out: list[tuple[str, str]] = []
    token = ""
    q = f"WorkflowType%3D%27{wtype}%27"
    for _ in range(100_000):
        status, body = await http.call(
            "GET", f"{url}{NSP}/{ns}/workflows?pageSize=1000&query={q}"
            + (f"&nextPageToken={token}" if token else ""), retry_for=60)
        if status != 200:
            raise RuntimeError(f"listing {ns}: {status} {body}")
        out += [(x["execution"]["workflowId"], x["execution"]["runId"]) for x in body["executions"]]
        token = body.get("nextPageToken") or ""
        if not token:
            break
    return out


# ---------------------------------------------------------------------------
# migration jobs


async def run_job(http: Http, system: System, post_url: str, poll_url: str, ns: str, to: int,
                  timeout: float, sample_cpu: bool = False) -> JobRun:
    """POST the migration, then poll the job every 50 ms until it ends (or ``timeout``)."""
    cpu: list[tuple[str, dict[str, Any]]] = []
    t_post = time.perf_counter()
    status, job = await http.call("POST", f"{post_url}{NSP}/{ns}/migrate", {"toPartition": to})
    if status not in (200, 202) or not isinstance(job, dict):
        raise RuntimeError(f"POST migrate {ns} -> {to}: {status} {job}")
    jid = job["id"]
    polls: list[tuple[float, str, int]] = [(time.perf_counter(), job["status"], job.get("bytes") or 0)]
    entered: dict[str, tuple[float, float]] = {job["status"]: (t_post, polls[0][0])}
    if sample_cpu:
        cpu.append((job["status"], {n.name: n.sample() for n in system.nodes}))
    urls = [poll_url] + [u for u in system.urls if u != poll_url]
    k = 0
    deadline = time.perf_counter() + timeout
    nxt = time.perf_counter()
    while job["status"] not in TERMINAL and time.perf_counter() < deadline:
        nxt += POLL_S
        await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
        st, got = await http.call("GET", f"{urls[k % len(urls)]}/v1/tasks/migrations/{jid}", retry_for=0)
        now = time.perf_counter()
        if st != 200 or not isinstance(got, dict):
            k += 1  # that node does not answer: ask the next one
            continue
        job = got
        if job["status"] not in entered:
            entered[job["status"]] = (polls[-1][0], now)
            if sample_cpu:
                cpu.append((job["status"], {n.name: n.sample() for n in system.nodes}))
        polls.append((now, job["status"], job.get("bytes") or 0))
    run = JobRun(job=job, posted_s=t_post, end_s=polls[-1][0], polls=polls, entered=entered,
                 timed_out=job["status"] not in TERMINAL)
    if sample_cpu:
        by = dict(cpu)
        a, b = by.get("snapshotting"), by.get("catching-up") or by.get("cutover") or by.get("done")
        if a and b:
            for name in a:
                main, other = cpu_pct(a[name], b[name])
                run.node_cpu[name] = {"loop": main, "other": other}
    return run


def job_summary(j: Json) -> str:
    flipped = j.get("status") == "failed" and j.get("placementEpoch") is not None
    return (f"job {j.get('id')} {j.get('status')} p{j.get('fromPartition')}->p{j.get('toPartition')} "
            f"bytes={j.get('bytes')} tail={j.get('tailEntries')} fencedMs={j.get('fencedMs')}"
            + (f" error={j.get('error')!r}" if j.get("error") else "")
            + (f" — yet its pin was committed (placementEpoch={j.get('placementEpoch')}): the namespace "
               f"now routes to partition {j.get('toPartition')}" if flipped else ""))


# ---------------------------------------------------------------------------
# 1. snapshot throughput


async def section_throughput(http: Http, system: System, s: Settings, root: Path) -> ThroughputResult:
    res = ThroughputResult()
    try:
        res.fill = f = await fill_namespace(http, system, "bulk", s.size_mb, s.fill_clients,
                                            int(s.input_kb * 1000))
        print(f"  filled {f.starts} starts, {f.shard_bytes / MB:.1f} MB in {f.seconds:.1f}s", file=sys.stderr)
        view = await http.cluster(system.urls[0])
        led = leaders_of(view)
        src = f.partition
        dst = pick_destination(view, src)
        meta = view.get("metaLeader")
        res.leaders = {"sourcePartition": src, "sourceLeader": led.get(src), "destPartition": dst,
                       "destLeader": led.get(dst), "coordinator (meta leader)": meta}
        reps = replicas_of(view)
        res.source_replicas, res.dest_replicas = reps.get(src, []), reps.get(dst, [])
        res.replica_set_changed, res.gained, res.lost = replica_change(view, src, dst)
        src_node = holder(system, view, src)
        res.baseline_node = src_node.name
        src_path = src_node.data_dir / "partitions" / str(src)
        await barrier(http, src_node.url, "bulk")  # that replica has applied the whole fill
        check = CopyCheck(source_node=src_node.name)
        check.source_keys, check.source_sha256 = await asyncio.to_thread(range_digest, src_path,
                                                                         shard_prefix("bulk"))
        print(f"  baseline: raw LMDB copy of the same range on {src_node.name} ...", file=sys.stderr)
        tries: list[list[CopyRow]] = [[], []]
        for _ in range(2):  # alternating, best of two per row
            for k, chunk in enumerate((None, CHUNK_BYTES)):
                tries[k].append(raw_copy(src_path, shard_prefix("bulk"), root / f"baseline-{k}", chunk))
        res.baseline = [min(rows, key=lambda r: r.seconds) for rows in tries]
        url_of = {n.name: n.url for n in system.nodes}
        poll_url = url_of.get(meta or "", system.urls[0])
        rss0 = {n.name: n.proc_status() for n in system.nodes}
        foreign = ForeignCpu(system.nodes)
        changes0 = await leader_changes(http, system)
        print(f"  migrating bulk p{src} ({led.get(src)}; on {','.join(res.source_replicas)}) -> p{dst} "
              f"({led.get(dst)}; on {','.join(res.dest_replicas)}), coordinator {meta} ...", file=sys.stderr)
        run = await run_job(http, system, poll_url, poll_url, "bulk", dst, s.job_timeout_s, sample_cpu=True)
        res.foreign_cpu_pct = foreign.pct()
        changes1 = await leader_changes(http, system)
        res.leader_changes = {k: changes1.get(k, 0) - changes0.get(k, 0) for k in changes1}
        rss1 = {n.name: n.proc_status() for n in system.nodes}
        res.rss_mib = {name: {"before": r3(rss0[name].get("VmRSS", 0) / MiB),
                              "after": r3(rss1[name].get("VmRSS", 0) / MiB),
                              "peak": r3(rss1[name].get("VmHWM", 0) / MiB)} for name in rss1}
        job = run.job
        res.job = job
        res.node_cpu_snapshot = run.node_cpu
        t = {st: run.at(st) for st in STATUSES}
        t_end = run.at("done")
        seq = [(st, t[st]) for st in STATUSES]
        for (name, a), (_, b) in zip(seq, seq[1:], strict=False):
            res.phases_s[name] = r3(b - a) if a is not None and b is not None else None
        res.job_total_s = r3(t_end - run.posted_s) if t_end is not None else None
        nbytes = job.get("bytes") or 0
        if t["snapshotting"] is not None and t["catching-up"] is not None and nbytes:
            res.snapshot_mb_per_s = round(nbytes / MB / (t["catching-up"] - t["snapshotting"]), 2)
        if res.job_total_s and nbytes:
            res.total_mb_per_s = round(nbytes / MB / res.job_total_s, 2)
        moving = [(tp, b) for tp, _, b in run.polls if b > 0]
        if len(moving) >= 2 and moving[-1][0] > moving[0][0]:
            first = moving[0]
            last = next(p for p in moving if p[1] == moving[-1][1])  # first poll at the final value
            if last[0] > first[0]:
                res.streaming_mb_per_s = round((last[1] - first[1]) / MB / (last[0] - first[0]), 2)
        if moving and t["snapshotting"] is not None:
            res.first_bytes_s = r3(moving[0][0] - t["snapshotting"])
        if run.timed_out:
            res.error = f"job did not end within {s.job_timeout_s:g}s: {job_summary(job)}"
        elif job["status"] != "done":
            res.error = f"job failed: {job_summary(job)}"
        # Every filled workflow must still be there, on its new partition.
        try:
            ids = await list_ids(http, system.urls[(system.urls.index(poll_url) + 1) % len(system.urls)],
                                 "bulk", "Fill")
            wids = [w for w, _ in ids]
            view = await http.cluster(system.urls[0])
            now_at = partition_of_ns(view, "bulk")
            ok = len(wids) == len(set(wids)) == f.starts and now_at == (dst if job["status"] == "done" else src)
            res.verify = (f"{'OK' if ok else 'FAILED'}: {len(set(wids))} distinct of {f.starts} filled "
                          f"workflows listed ({len(wids) - len(set(wids))} duplicates), namespace now on "
                          f"partition {now_at}")
        except RuntimeError as e:
            res.verify = f"FAILED: {e}"
        if job["status"] == "done":
            res.copy_check = await check_copies(system, "bulk", src, dst, res.source_replicas,
                                                res.dest_replicas, check)
    except Exception as e:  # noqa: BLE001 - reported, the next section still runs
        res.error = (res.error + "; " if res.error else "") + f"{type(e).__name__}: {e}"
    return res


async def check_copies(system: System, ns: str, src: int, dst: int, src_reps: Sequence[str],
                       dst_reps: Sequence[str], check: CopyCheck) -> CopyCheck:
    """Hash the moved range on every node that holds ``dst`` and count what is left of it in
    ``src`` on every source replica, until the copies match the source's digest and the source
    range is gone everywhere, or ``SETTLE_S``: ``done`` only says the leaders applied the move,
    a follower (possibly a node that had no copy before) may still be applying it."""
    prefix = shard_prefix(ns)
    by_name = {n.name: n for n in system.nodes}
    t0 = time.perf_counter()
    while True:
        check.dest, check.source_left = {}, {}
        for name in dst_reps:
            node = by_name.get(name)
            if node is None or not on_disk(node, dst):
                check.dest[name] = {"keys": None, "sha256": None, "same": False, "note": "not on disk"}
                continue
            keys, digest = await asyncio.to_thread(range_digest, node.data_dir / "partitions" / str(dst),
                                                   prefix)
            check.dest[name] = {"keys": keys, "sha256": digest[:12], "same": digest == check.source_sha256}
        for name in src_reps:
            node = by_name.get(name)
            if node is not None and on_disk(node, src):
                check.source_left[name] = (await asyncio.to_thread(
                    range_size, node.data_dir / "partitions" / str(src), prefix))[0]
        check.ok = all(d["same"] for d in check.dest.values()) and not any(check.source_left.values())
        check.waited_s = round(time.perf_counter() - t0, 2)
        if check.ok or check.waited_s > SETTLE_S:
            return check
        await asyncio.sleep(0.5)


# ---------------------------------------------------------------------------
# 2. fenced write pause under load


async def section_pause(http: Http, system: System, s: Settings) -> PauseResult:
    res = PauseResult(writers=s.writers)
    ns = "pingpong"
    writes: list[Write] = []
    runs: list[JobRun] = []
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=s.writers * 2)
    session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15))
    tasks: list[asyncio.Task] = []
    try:
        res.fill = f = await fill_namespace(http, system, ns, s.small_mb, min(s.fill_clients, 32),
                                            int(s.input_kb * 1000))
        view = await http.cluster(system.urls[0])
        home = f.partition
        bulk_at = [n["partition"] for n in view.get("namespaces", []) if n["namespace"] == "bulk"]
        other = pick_destination(view, home, avoid=bulk_at)
        res.partitions = [home, other]
        led = leaders_of(view)
        meta = view.get("metaLeader")
        res.leaders = {"home": home, "homeLeader": led.get(home), "other": other,
                       "otherLeader": led.get(other), "coordinator (meta leader)": meta}
        reps = replicas_of(view)
        res.replicas = {home: reps.get(home, []), other: reps.get(other, [])}
        res.replica_set_changed = replica_change(view, home, other)[0]
        url_of = {n.name: n.url for n in system.nodes}
        poll_url = url_of.get(meta or "", system.urls[0])
        urls = system.urls

        async def writer(k: int) -> None:
            i = 0
            while not stop.is_set():
                writes.append(await start_workflow(session, urls[(k + i) % len(urls)], ns,
                                                   f"w{k}-{i}", "Job"))
                i += 1

        print(f"pause: {s.migrations} migrations of {ns} p{home} <-> p{other} under "
              f"{s.writers} writers ...", file=sys.stderr)
        foreign = ForeignCpu(system.nodes)
        t_start = time.perf_counter()
        tasks = [asyncio.create_task(writer(k)) for k in range(s.writers)]
        await asyncio.sleep(s.gap_s)
        at = home
        not_started = 0
        changes0 = await leader_changes(http, system)
        for m in range(s.migrations):
            to = other if at == home else home
            try:
                run = await run_job(http, system, urls[m % len(urls)], poll_url, ns, to, s.job_timeout_s)
            except RuntimeError as e:
                res.jobs.append({"status": "not started", "error": str(e)})
                not_started += 1
                if " 404 " in str(e) or not_started >= 3:
                    res.error = (f"stopped after {m + 1} of {s.migrations} migrations: a migration could "
                                 f"not be started ({e})")
                    await asyncio.sleep(s.gap_s)
                    break
                await asyncio.sleep(s.gap_s)
                continue
            not_started = 0
            runs.append(run)
            res.jobs.append(run.job)
            if run.job["status"] == "done":
                at = to
            elif run.timed_out:  # a job that never ends: give up on this section
                res.error = f"job did not end within {s.job_timeout_s:g}s: {job_summary(run.job)}"
                break
            print(f"  {m + 1}/{s.migrations}: {job_summary(run.job)}", file=sys.stderr)
            await asyncio.sleep(s.gap_s)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), WRITE_GIVE_UP_S + 20)
        res.seconds = round(time.perf_counter() - t_start, 2)
        res.foreign_cpu_pct = foreign.pct()
        changes1 = await leader_changes(http, system)
        res.leader_changes = {k: changes1.get(k, 0) - changes0.get(k, 0) for k in changes1}
        view = await http.cluster(system.urls[0])
        res.leaders["coordinator after"] = view.get("metaLeader")
    except Exception as e:  # noqa: BLE001 - reported
        res.error = (res.error + "; " if res.error else "") + f"{type(e).__name__}: {e}"
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await session.close()

    # what the jobs and the clients saw
    done = [r for r in runs if r.job["status"] == "done"]
    fenced = sorted(float(r.job.get("fencedMs") or 0) for r in done)
    res.fenced_ms = {"n": len(fenced), "p50": r3(percentile(fenced, 0.5)),
                     "p99": r3(percentile(fenced, 0.99)), "max": fenced[-1] if fenced else None,
                     "mean": r3(sum(fenced) / len(fenced)) if fenced else None}
    res.job_seconds = [round(r.end_s - r.posted_s, 3) for r in runs]
    cut_windows: list[tuple[float, float]] = []
    job_windows: list[tuple[float, float]] = []
    for r in runs:
        job_windows.append((r.posted_s, r.end_s))
        b = r.boundary("cutover")
        cut = (b[0], r.end_s) if b is not None else None
        if cut is not None:
            cut_windows.append(cut)
        inside = [w.t1 - w.t0 for w in writes if w.ok and cut and w.t0 <= cut[1] and w.t1 >= cut[0]]
        j = r.job
        res.per_job.append({
            "from": j.get("fromPartition"), "to": j.get("toPartition"), "status": j.get("status"),
            "bytes": j.get("bytes"), "tailEntries": j.get("tailEntries"), "fencedMs": j.get("fencedMs"),
            "replicaSetChanged": (set(res.replicas.get(j.get("fromPartition"), []))
                                  != set(res.replicas.get(j.get("toPartition"), []))),
            "jobS": round(r.end_s - r.posted_s, 3),
            "cutoverWindowMs": round((cut[1] - cut[0]) * 1000) if cut else None,
            "writesInCutover": len(inside),
            "maxLatencyInCutoverMs": round(max(inside) * 1000, 1) if inside else None,
            "error": j.get("error")})
    widths = sorted(b - a for a, b in cut_windows)
    res.cutover_window_ms = {"p50": r3(percentile(widths, 0.5) * 1000) if widths else None,
                             "max": r3(widths[-1] * 1000) if widths else None}

    def overlaps(w: Write, windows: list[tuple[float, float]]) -> bool:
        return any(w.t0 <= b and w.t1 >= a for a, b in windows)

    groups: dict[str, list[Write]] = {"outside any job": [], "job, before cutover": [],
                                      "during a cutover": []}
    for w in writes:
        if not w.ok:
            continue
        if overlaps(w, cut_windows):
            groups["during a cutover"].append(w)
        elif overlaps(w, job_windows):
            groups["job, before cutover"].append(w)
        else:
            groups["outside any job"].append(w)
    for label, ws in groups.items():
        p50, p99, mx = ms_quantiles([w.t1 - w.t0 for w in ws])
        res.latency.append(LatencyRow(label, len(ws), p50, p99, mx, sum(w.saw_503 > 0 for w in ws)))
    ok = [w for w in writes if w.ok]
    res.acked = len(ok)
    res.failed = len(writes) - len(ok)
    res.failures = dict(Counter((w.error or "?")[:120] for w in writes if not w.ok))
    res.saw_503 = sum(w.saw_503 > 0 for w in writes)
    res.transport_errors = sum(w.transport for w in writes)
    res.writes_per_s = round(len(ok) / res.seconds, 1) if res.seconds else 0.0

    # every acknowledged write readable, none twice
    try:
        reader = system.urls[-1]
        listed = await list_ids(http, reader, ns, "Job")
        fills = await list_ids(http, reader, ns, "Fill")
        runs_of: dict[str, list[str]] = {}
        for wid, rid in listed:
            runs_of.setdefault(wid, []).append(rid)
        dup = sum(len(v) - 1 for v in runs_of.values())
        missing = [w.wid for w in ok if w.wid not in runs_of]
        wrong_run = [w.wid for w in ok if w.wid in runs_of and w.run_id and runs_of[w.wid] != [w.run_id]]
        failed_ids = {w.wid for w in writes if not w.ok}
        extra = [wid for wid in runs_of if wid not in {w.wid for w in ok}]
        fills_ok = len(fills) == len({w for w, _ in fills}) == (f.starts if f else -1)
        res.verify_ok = not dup and not missing and not wrong_run and fills_ok
        res.verify = (f"{'OK' if res.verify_ok else 'FAILED'}: {len(runs_of)} distinct Job workflows listed "
                      f"for {len(ok)} acknowledged; missing {len(missing)}, listed twice {dup}, runId "
                      f"differs {len(wrong_run)}, listed but not acknowledged {len(extra)} "
                      f"(of {len(failed_ids)} failed writes); {len(fills)} of "
                      f"{f.starts if f else '?'} filled workflows listed")
        if missing:
            res.verify += f"; first missing: {missing[:5]}"
        if wrong_run:
            res.verify += f"; first runId mismatch: {wrong_run[:5]}"
    except Exception as e:  # noqa: BLE001
        res.verify_ok = False
        res.verify = f"FAILED to list: {type(e).__name__}: {e}"
    return res


# ---------------------------------------------------------------------------
# the report


def _f(v: float | None, nd: int = 1, suffix: str = "") -> str:
    return "-" if v is None else f"{v:,.{nd}f}{suffix}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.3f}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return out


def render(rep: Report) -> str:
    m, st = rep.machine, rep.settings
    L = [
        "# tasksd namespace migration benchmark",
        "",
        f"- command: `{rep.command}`",
        f"- machine: nproc {m.nproc}, {m.cpu}; {m.os}; load average at start {m.load_average}",
        f"- python {m.python}; {m.lmdb}; data in {m.tmp_dir} ({m.filesystem})",
        f"- cluster: {st['nodes']} nodes, --replication-factor {st['replication_factor']}, --replicator raft, "
        f"{st['partitions']} partitions + meta, server-default Raft "
        f"timings, --durability {st['durability']}, --migration-bandwidth {st['bandwidth']}; "
        f"started in {_f(rep.startup_s)} s; whole run {rep.wall_s:.0f} s",
    ]
    topo = rep.topology
    if topo is not None:
        every = topo.effective_rf is not None and topo.effective_rf >= topo.nodes
        L += [f"- topology: {topo.nodes} nodes, replication factor {topo.replication_factor} (cluster view: "
              f"{topo.effective_rf if topo.effective_rf is not None else '?'} replicas per partition; "
              + ("every node holds every partition" if every else "each partition on a subset of the nodes")
              + f"); meta leader {topo.meta_leader}; layout at start: "
              + "; ".join(f"p{x.id} leader {x.leader} on {','.join(x.replicas) or '?'}"
                          + ("" if set(x.on_disk) == set(x.replicas) else f" (on disk: {','.join(x.on_disk)})")
                          for x in topo.partitions)]
        L += [f"- **!! layout: {a}**" for a in topo.anomalies]
    tp = rep.throughput
    if tp is not None:
        L += ["", f"## 1. Snapshot throughput (~{st['size_mb']:g} MB shard)", ""]
        f = tp.fill
        if f is not None:
            L += [f"Fill of `{f.namespace}` (partition {f.partition}): {f.starts:,} workflow starts with a "
                  f"{f.input_bytes:,}-byte input, {f.clients} concurrent clients to the partition leader: "
                  f"**{f.seconds:.1f} s** ({f.starts_per_s:,.0f} starts/s, {f.mb_per_s:.2f} MB/s of shard "
                  f"data); shard = {f.shard_bytes / MB:,.1f} MB in {f.shard_keys:,} keys "
                  f"({f.bytes_per_start:,.0f} B/start); starts that saw a 503: {f.saw_503}; "
                  f"errors: {f.errors or 0}", ""]
        if tp.leaders:
            L += ["Placement: " + ", ".join(f"{k} {v}" for k, v in tp.leaders.items()), ""]
        if tp.source_replicas or tp.dest_replicas:
            changed = "-" if tp.replica_set_changed is None else ("yes" if tp.replica_set_changed else "no")
            moved = (f" (gained by {', '.join(tp.gained) or 'none'}, lost by {', '.join(tp.lost) or 'none'})"
                     if tp.replica_set_changed else " (the same machines hold it before and after)")
            L += [f"Replica sets: source p{tp.leaders.get('sourcePartition')} on "
                  f"{', '.join(tp.source_replicas)} → destination p{tp.leaders.get('destPartition')} on "
                  f"{', '.join(tp.dest_replicas)}; **replica set changed: {changed}**{moved}; baseline and "
                  f"source digest read on {tp.baseline_node}", ""]
        base = tp.baseline[0] if tp.baseline else None
        j = tp.job or {}
        nbytes = j.get("bytes") or 0
        rows = []
        if nbytes:
            snap_s = nbytes / MB / tp.snapshot_mb_per_s if tp.snapshot_mb_per_s else None
            rows.append(["ours: snapshotting → catching-up", f"{nbytes / MB:,.1f}", _f(snap_s, 2),
                         _f(tp.snapshot_mb_per_s, 1), _ratio(tp.snapshot_mb_per_s, base and base.mb_per_s)])
            rows.append(["ours: streaming (job `bytes` progress)", "", "", _f(tp.streaming_mb_per_s, 1),
                         _ratio(tp.streaming_mb_per_s, base and base.mb_per_s)])
            rows.append(["ours: whole job (POST → done)", f"{nbytes / MB:,.1f}", _f(tp.job_total_s, 2),
                         _f(tp.total_mb_per_s, 1), _ratio(tp.total_mb_per_s, base and base.mb_per_s)])
        for b in tp.baseline:
            rows.append([f"baseline: {b.label}", f"{b.bytes / MB:,.1f}", _f(b.seconds, 2), _f(b.mb_per_s, 1),
                         _ratio(b.mb_per_s, base and base.mb_per_s)])
        if rows:
            L += md_table(["copy", "MB", "seconds", "MB/s", "÷ baseline (1 commit)"], rows)
        if len(tp.baseline) > 1 and tp.snapshot_mb_per_s:
            L += ["", f"ours ÷ baseline: snapshot {_ratio(tp.snapshot_mb_per_s, tp.baseline[0].mb_per_s)} "
                      f"(vs 1 commit), {_ratio(tp.snapshot_mb_per_s, tp.baseline[1].mb_per_s)} "
                      f"(vs a commit per {CHUNK_BYTES // 1024} KiB); whole job "
                      f"{_ratio(tp.total_mb_per_s, tp.baseline[0].mb_per_s)}"]
        if j:
            L += ["", f"Job: {job_summary(j)}, snapshotIndex={j.get('snapshotIndex')}"]
            ph = ", ".join(f"{k} {_f(v, 3)} s" for k, v in tp.phases_s.items())
            L += [f"Phases (entry times ±25 ms, polled every 50 ms): {ph}; first `bytes` > 0 seen "
                  f"{_f(tp.first_bytes_s, 2)} s after snapshotting began (snapshot read + first 32 chunks)"]
        if tp.node_cpu_snapshot:
            L += ["", "Node CPU while snapshotting (% of one core; loop = main thread, other = Raft/apply "
                      "threads) and RSS:", ""]
            rows = []
            for name, c in tp.node_cpu_snapshot.items():
                rss = tp.rss_mib.get(name, {})
                role = [k for k, v in tp.leaders.items() if v == name and not k.endswith("Partition")]
                holds = [w for w, reps in (("src", tp.source_replicas), ("dst", tp.dest_replicas)) if name in reps]
                role.append("holds " + ("+".join(holds) if holds else "neither"))
                rows.append([name, ", ".join(role), _f(c.get("loop")), _f(c.get("other")),
                             _f(rss.get("before"), 0), _f(rss.get("after"), 0), _f(rss.get("peak"), 0)])
            L += md_table(["node", "role", "loop %", "other %", "RSS before MiB", "RSS after MiB",
                           "peak RSS MiB"], rows)
        L += ["", f"CPU of other processes on the machine during the job: {_f(tp.foreign_cpu_pct)} % of one "
                  f"core; Raft leader changes during the job (most seen by a node): {tp.leader_changes or '-'}"]
        if tp.verify:
            L += [f"After the move: {tp.verify}"]
        cc = tp.copy_check
        if cc is not None:
            dest = "; ".join(f"{k} {d.get('keys')} keys " + ("= source" if d.get("same") else
                                                            f"≠ source ({d.get('note') or d.get('sha256')})")
                             for k, d in cc.dest.items())
            left = ", ".join(f"{k} {v}" for k, v in cc.source_left.items())
            L += [f"On disk after the move ({'OK' if cc.ok else 'MISMATCH'}, checked for {cc.waited_s:g} s): "
                  f"source digest on {cc.source_node} {cc.source_keys:,} keys sha256 {cc.source_sha256[:12]}; "
                  f"destination copies: {dest or '-'}; keys left in the source range: {left or '-'}"]
        if tp.error:
            L += [f"**!! {tp.error}**"]
    pz = rep.pause
    if pz is not None:
        L += ["", f"## 2. Fenced write pause ({len(pz.jobs)} migrations under {pz.writers} writers)", ""]
        f = pz.fill
        if f is not None:
            L += [f"`{f.namespace}`: {f.shard_bytes / MB:,.1f} MB ({f.starts:,} filled starts, "
                  f"{f.seconds:.1f} s), moved between partitions {pz.partitions} ("
                  + ", ".join(f"{k} {v}" for k, v in pz.leaders.items()) + f"); gap between jobs "
                  f"{st['gap_s']:g} s", ""]
        if pz.replicas:
            changed = "-" if pz.replica_set_changed is None else ("yes" if pz.replica_set_changed else "no")
            L += ["Replica sets: " + ", ".join(f"p{k} on {','.join(v)}" for k, v in pz.replicas.items())
                  + f"; **replica set changed: {changed}** (every move); writers round-robin over all "
                  f"{st['nodes']} nodes", ""]
        nj = Counter(j.get("status") for j in pz.jobs)
        L += md_table(["fencedMs over done jobs", "n", "p50", "p99", "max", "mean"],
                      [["job record `fencedMs`", str(pz.fenced_ms.get("n")), _f(pz.fenced_ms.get("p50"), 0),
                        _f(pz.fenced_ms.get("p99"), 0), _f(pz.fenced_ms.get("max"), 0),
                        _f(pz.fenced_ms.get("mean"), 1)]])
        L += [""]
        out = next((r for r in pz.latency if r.label == "outside any job"), None)
        rows = []
        for r in pz.latency:
            rows.append([r.label, f"{r.writes:,}", _f(r.p50_ms), _f(r.p99_ms), _f(r.max_ms), str(r.saw_503),
                         _ratio(r.p50_ms, out and out.p50_ms), _ratio(r.p99_ms, out and out.p99_ms),
                         _ratio(r.max_ms, out and out.max_ms)])
        L += md_table(["client write latency (ms)", "writes", "p50", "p99", "max", "saw 503",
                       "p50 ÷ outside", "p99 ÷ outside", "max ÷ outside"], rows)
        if pz.per_job:
            L += ["", "Per job (cutover window = poll before `cutover` was seen → first poll that saw "
                      "`done`; writes = acknowledged writes overlapping it):", ""]
            rows = [[str(i + 1), f"p{x['from']}→p{x['to']}", "yes" if x["replicaSetChanged"] else "no",
                     str(x["status"]), _f((x["bytes"] or 0) / MB, 2), str(x["tailEntries"]), str(x["fencedMs"]),
                     _f(x["jobS"], 2), _f(x["cutoverWindowMs"], 0), str(x["writesInCutover"]),
                     _f(x["maxLatencyInCutoverMs"], 1)] for i, x in enumerate(pz.per_job)]
            L += md_table(["#", "move", "replicas changed", "status", "MB", "tail", "fencedMs", "job s",
                           "window ms", "writes", "max write ms"], rows)
        js = sorted(pz.job_seconds)
        L += ["",
              f"Writes: acked {pz.acked:,} ({pz.writes_per_s:,.1f}/s over {pz.seconds:.1f} s), "
              f"**failed {pz.failed}** (non-503 answers or 30 s of 503s; must be 0)"
              + (f" {pz.failures}" if pz.failures else "")
              + f", saw a 503 {pz.saw_503}, transport errors (retried) {pz.transport_errors}",
              f"Jobs: {dict(nj)}; job time POST → done p50 {_f(percentile(js, 0.5), 2)} s, max "
              f"{_f(js[-1] if js else None, 2)} s; cutover window as polled (poll before `cutover` → "
              f"`done` seen) p50 {_f(pz.cutover_window_ms.get('p50'), 0)} ms, max "
              f"{_f(pz.cutover_window_ms.get('max'), 0)} ms",
              f"CPU of other processes on the machine: {_f(pz.foreign_cpu_pct)} % of one core; Raft leader "
              f"changes during the section (most seen by a node): {pz.leader_changes or '-'}",
              f"Check: {pz.verify}"]
        bad = Counter(job_summary(j) if j.get("id") else f"not started: {j.get('error')}"
                      for j in pz.jobs if j.get("status") != "done")
        for line, n in bad.items():
            L += [f"**!! {line}**" + (f" ×{n}" if n > 1 else "")]
        if pz.error:
            L += [f"**!! {pz.error}**"]
    warn = {k: n for k, n in rep.log_counts.items() if k in ("WARNING", "ERROR", "CRITICAL")}
    if warn or rep.log_lines:
        L += ["", "Node logs (WARNING and above, digits folded): "
              + ", ".join(f"{k}×{n}" for k, n in warn.items())]
        L += [f"    {line}" for line in rep.log_lines]
    else:
        L += ["", "Node logs: no WARNING or above"]
    bad_exit = {k: v for k, v in rep.exit_codes.items() if v not in (0, None)}
    L += ["node exit codes: " + (", ".join(f"{k} {v}" for k, v in bad_exit.items()) if bad_exit else "all 0")]
    for e in rep.errors:
        L += [f"**!! {e}**"]
    return "\n".join(L)


# ---------------------------------------------------------------------------
# entry point


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.migration",
        description="Namespace migration on an N-node cluster (3 by default, replication factor R): "
                    "snapshot throughput against a raw LMDB copy, and the fenced write pause over "
                    "repeated migrations under load.",
    )
    p.add_argument("--quick", action="store_true", help="40 MB shard, 6 migrations, 2 MB ping-pong shard")
    p.add_argument("--size-mb", type=float, help="shard size for the throughput test (default 200, quick 40)")
    p.add_argument("--small-mb", type=float, help="shard moved back and forth (default 4, quick 2)")
    p.add_argument("--migrations", type=int, help="migrations under load (default 20, quick 6)")
    p.add_argument("--writers", type=int, default=8, help="concurrent writers during the migrations (8)")
    p.add_argument("--fill-clients", type=int, default=64, help="concurrent clients filling a shard (64)")
    p.add_argument("--input-kb", type=float, default=8.0, help="workflow input size of the fill, KB (8)")
    p.add_argument("--migration-bandwidth", default="1GiB", help="--migration-bandwidth of every node (1GiB)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the cluster (4)")
    p.add_argument("--nodes", type=int, default=3, help="nodes of the cluster (3)")
    p.add_argument("--replication-factor", type=int, default=3,
                   help="--replication-factor of every node: replicas per partition (3); below --nodes, "
                        "a migration can move the shard to other machines")
    p.add_argument("--durability", choices=("sync", "nosync"), default="sync", help="node durability (sync)")
    p.add_argument("--gap", type=float, default=1.0, help="seconds of load between two migrations (1)")
    p.add_argument("--job-timeout", type=float, default=300.0, help="longest wait for one job (300 s)")
    p.add_argument("--sections", default="throughput,pause", help="subset of throughput,pause")
    p.add_argument("--json", metavar="PATH", help="also write every number as JSON to PATH")
    p.add_argument("--tmp-dir", metavar="DIR", help="parent of the temporary data dir (which disk)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    a = p.parse_args(argv)
    a.size_mb = a.size_mb if a.size_mb is not None else (40.0 if a.quick else 200.0)
    a.small_mb = a.small_mb if a.small_mb is not None else (2.0 if a.quick else 4.0)
    a.migrations = a.migrations if a.migrations is not None else (6 if a.quick else 20)
    a.sections = [x.strip() for x in a.sections.split(",") if x.strip()]
    if not a.sections or set(a.sections) - {"throughput", "pause"}:
        p.error("--sections must be a subset of throughput,pause")
    if a.size_mb <= 0 or a.small_mb <= 0 or a.input_kb <= 0:
        p.error("--size-mb, --small-mb and --input-kb must be > 0")
    if a.migrations < 1 or a.writers < 1 or a.fill_clients < 1:
        p.error("--migrations, --writers and --fill-clients must be >= 1")
    if a.partitions < 2:
        p.error("--partitions must be >= 2")
    if a.nodes < 1 or a.replication_factor < 1:
        p.error("--nodes and --replication-factor must be >= 1")
    return a


async def run(s: Settings, system: System, root: Path, rep: Report) -> None:
    http = Http()
    try:
        rep.topology = layout(system, await http.cluster(system.urls[0]), s)
        if "throughput" in s.sections:
            rep.throughput = await section_throughput(http, system, s, root)
        if "pause" in s.sections:
            rep.pause = await section_pause(http, system, s)
    finally:
        await http.close()


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(given)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    s = Settings(size_mb=a.size_mb, small_mb=a.small_mb, migrations=a.migrations, writers=a.writers,
                 fill_clients=a.fill_clients, input_kb=a.input_kb, bandwidth=a.migration_bandwidth,
                 partitions=a.partitions, nodes=a.nodes, replication_factor=a.replication_factor,
                 durability=a.durability, gap_s=a.gap, job_timeout_s=a.job_timeout,
                 sections=a.sections, tmp_parent=a.tmp_dir, keep=a.keep)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_sigterm)
    t_run = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="tasks-bench-migration-", dir=a.tmp_dir))
    mi = machine_info(root, "-")
    load = "?"
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    rep = Report(
        machine=Machine(nproc=os.cpu_count() or 0, cpu=mi.cpu, python=f"{mi.implementation} {mi.python}",
                        os=mi.os, lmdb=mi.lmdb, load_average=load, tmp_dir=str(root), filesystem=mi.filesystem),
        command="cd " + shlex.quote(os.getcwd()) + " && "
                + shlex.join([sys.executable, "-m", "bench.migration", *given]),
        settings=asdict(s))
    system: System | None = None
    try:
        secret = root / "cluster.secret"
        secret.write_text(secrets.token_hex(32) + "\n")
        os.chmod(secret, 0o600)
        cs = ClusterSettings(schedules=0, namespaces=0, duration=0, grace=0, idle_settle=0, idle_window=0,
                             durability=s.durability, partitions=s.partitions, nodes=s.nodes,
                             tmp_parent=s.tmp_parent, keep=s.keep)
        system = System("cluster", root / "cluster", cs, secret)
        for n in system.nodes:
            n.extra += ["--migration-bandwidth", s.bandwidth, "--zap", "127.0.0.1:0",
                        "--replication-factor", str(s.replication_factor)]
        print(f"starting a {s.nodes}-node cluster, replication factor {s.replication_factor} ...",
              file=sys.stderr)
        t0 = time.monotonic()
        system.launch()
        system.wait_ready(t0 + READY_TIMEOUT)
        time.sleep(3.0)  # leadership balancing settles
        rep.startup_s = round(time.monotonic() - t0, 1)
        asyncio.run(run(s, system, root, rep))
        rep.log_counts, rep.log_lines = log_summary(system.nodes, limit=12)
    except Exception as e:  # noqa: BLE001 - reported with whatever was measured
        rep.errors.append(f"{type(e).__name__}: {e}")
    finally:
        if system is not None:
            rep.exit_codes = system.stop()
            if not rep.log_counts:
                with contextlib.suppress(Exception):
                    rep.log_counts, rep.log_lines = log_summary(system.nodes, limit=12)
        if s.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    rep.wall_s = time.monotonic() - t_run
    print(render(rep))
    if a.json:
        Path(a.json).write_text(json.dumps(asdict(rep), indent=2, default=str) + "\n")
        print(f"\nwrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
