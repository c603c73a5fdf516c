"""Single-node benchmark of ``tasksd`` (local replicator, one LMDB partition).

Run it from the repository root::

    .venv/bin/python -m bench.single_node [--quick] [--durability sync|nosync|both]
                                          [--duration S] [--json PATH]

It is a measurement, not a test: nothing here asserts on speed. Every node it
needs is a ``tasksd serve`` subprocess on a free loopback port with a fresh
data directory under one temporary directory; the subprocesses are always
stopped (SIGTERM, then SIGKILL) in ``finally`` blocks, and they are also tied
to this process with ``PR_SET_PDEATHSIG`` so that not even a ``kill -9`` of
the benchmark leaks them. The temporary directory is removed at the end.

What is measured, per durability mode (``sync`` is the server default):

1. **Storage ceiling** (baseline, measured first, while no node runs): raw
   ``lmdb`` in a fresh environment in the same temporary directory (so: the
   same disk), opened like the server opens its partitions
   (``sync=metasync=True`` for ``sync``, ``False`` for ``nosync``), writing
   ~600-byte msgpack records. Two rows: one put per transaction (what a
   store that commits every request separately could reach) and 64 puts per
   transaction (what the replicator's group commit could reach when 64
   requests are waiting). ``commits/s`` counts transactions, ``puts/s``
   records; latencies are per transaction.

2. **Workflow starts over HTTP**: ``POST /v1/tasks/namespaces/bench/workflows``
   with a unique workflowId and requestId per request, in a namespace created
   with ``apsLimit: 0`` (unlimited), at 1, 8 and 64 concurrent clients. Each
   client is a coroutine that issues requests back to back over a keep-alive
   connection pool for a fixed duration. ``starts/s`` = 2xx responses divided
   by the wall time of the level; p50/p99/max are client-side latencies of
   the 2xx responses. Non-2xx answers and transport errors are counted in
   ``errors``. The CPU columns say where the time went: ``loop`` is the
   server's main thread (event loop: HTTP, validation, rendering, timers),
   ``apply`` its other threads (the replicator's apply thread: state machine
   and LMDB commit), ``client`` this benchmark process. 100% = one core; on
   a 2-core machine client and server share the cores.

   After the levels the node is stopped and its LMDB environment is opened
   read-only to report what one start costs in storage (keys, value bytes).

3. **Ratios**: starts/s at each level divided by the single-put commit rate
   and by the batched put rate. A ratio near 1 against the single-put row
   means "as fast as a store that fsyncs every request"; the batched row is
   the ceiling if the server did nothing but write.

4. **Schedule fire lateness**, on a second fresh node: 1,000 schedules with a
   1 s interval (``overlapPolicy: ALLOW_ALL``, so that every nominal second
   starts a workflow although no worker ever completes one; with the default
   SKIP only the first fire of each schedule would start anything). All of
   them are bounded by ``spec.startTime``/``spec.endTime`` to the same window
   of ``--sched-duration`` nominal seconds, which begins a little after they
   are all created; so the window is clean without pausing or deleting, and
   each nominal second produces a burst of 1,000 fires at once (no jitter).
   After the window (and once the fire counters have caught up) every fired
   workflow is listed (``query=WorkflowType='…'``, ``pageSize=1000``,
   following ``nextPageToken``) and lateness is computed exactly as
   ``startTime − nominal``, the nominal time being the tail of the workflow
   id ``<scheduleId>-<RFC3339 seconds>Z``. ``startTime`` is stamped when the
   timer proposes the fire, so it excludes the commit. The server's own
   histogram ``tasks_schedule_fire_lateness_seconds`` is observed after the
   commit; its p50/p99 are interpolated linearly inside the bucket, so they
   are only as fine as the bucket bounds (shown next to them).
   ``burst drain`` is, per nominal second, the lateness of the last of its
   1,000 fires; ``drain rate`` is 1,000 divided by that time, i.e. the fire
   throughput while a burst is being worked off. ``duplicates`` (a nominal
   second of a schedule that started more than one run) must be 0;
   ``skipped`` counts nominal seconds in the window that started nothing.

When the node fails (fires stop progressing for 5 s, or the fired workflows
cannot be listed), the schedule section says ``FAILED`` with the reason, the
result of a canary write (does the node still commit anything?), and the
distinct exception lines of the node's log; the numbers the server still
exports (fire counters, the lateness histogram) are reported anyway. A node
that does not stop within 15 s of SIGTERM is killed and the report says so.

The machine (cores, Python, lmdb version, filesystem of the temp dir) is in
the report header. ``--json PATH`` writes every number of the report.
``--keep`` keeps the temporary directory (node logs and data) for a
post-mortem; ``--profile-dir`` runs the nodes under cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import lmdb
import msgpack

REPO_ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY_LEVELS = (1, 8, 64)
SECTIONS = ("baseline", "starts", "schedules")
BASELINE_BATCH = 64
RECORD_SIZE = 600
SCHEDULE_COUNT = 1000
SCHEDULE_CREATE_CLIENTS = 32
WORKFLOW_TYPE = "bench-start"
SCHEDULE_TYPE = "bench-sched"
NOMINAL_SUFFIX_LEN = len("2026-05-01T03:00:00Z")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 1 << 20
STALL_SECONDS = 5.0
CANARY_SECONDS = 5.0
STOP_SECONDS = 15.0

Json = dict[str, Any]


# ---------------------------------------------------------------------------
# results


@dataclass
class Machine:
    cores: int
    cpu: str
    python: str
    implementation: str
    os: str
    lmdb: str
    aiohttp: str
    client_loop: str
    tmp_dir: str
    filesystem: str


@dataclass
class BaselineRow:
    puts_per_txn: int
    seconds: float
    commits: int
    commits_per_s: float
    puts_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    value_bytes: int


@dataclass
class StartLevel:
    clients: int
    seconds: float
    ok: int
    errors: dict[str, int]
    starts_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    server_loop_cpu_pct: float | None
    server_apply_cpu_pct: float | None
    client_cpu_pct: float
    server_write_bytes_per_start: float | None
    ratio_vs_single_commit: float | None = None
    ratio_vs_batched_puts: float | None = None


@dataclass
class StorageCost:
    starts: int
    lmdb_entries: int
    entries_per_start: float
    value_bytes_per_start: float
    key_bytes_per_start: float
    used_bytes_per_start: float


@dataclass
class StartsResult:
    levels: list[StartLevel]
    storage: StorageCost | None
    node_exit_code: int | None
    server_log_findings: list[str] = field(default_factory=list)


@dataclass
class ScheduleResult:
    schedules: int
    created: int
    create_errors: dict[str, int]
    create_seconds: float
    creates_per_s: float
    window_start: str
    window_seconds: int
    expected_fires: int
    fires: int | None  # None: the fired workflows could not be listed (see ``error``)
    fires_per_s: float | None
    duplicates: int | None
    skipped: int | None
    out_of_window: int | None
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None
    lateness_max_ms: float | None
    burst_drain_p50_ms: float | None
    burst_drain_max_ms: float | None
    drain_rate_p50_per_s: float | None
    drain_by_second_ms: list[float]  # burst drain of each nominal second of the window, in order
    histogram_count: int
    histogram_p50_ms: float | None
    histogram_p50_bucket: str
    histogram_p99_ms: float | None
    histogram_p99_bucket: str
    fires_by_outcome: dict[str, int]
    list_seconds: float | None
    list_pages: int
    server_loop_cpu_pct: float | None
    server_apply_cpu_pct: float | None
    error: str | None = None
    server_log_findings: list[str] = field(default_factory=list)
    node_exit_code: int | None = None


@dataclass
class ModeReport:
    durability: str
    baseline: list[BaselineRow]
    starts: StartsResult | None = None
    schedules: ScheduleResult | None = None


@dataclass
class Report:
    machine: Machine
    settings: Json
    runs: list[ModeReport] = field(default_factory=list)


# ---------------------------------------------------------------------------
# small helpers


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) of already sorted values, linearly interpolated."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def rfc3339_seconds(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ms(text: str) -> int:
    """RFC 3339 (as the server writes it, ``…Z``) -> epoch milliseconds."""
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def record_value(size: int = RECORD_SIZE) -> bytes:
    """A msgpack map shaped like a run record, padded to ``size`` bytes."""
    rec: Json = {
        "workflowId": "bench-start-0-0-000000000",
        "runId": "0" * 32,
        "type": WORKFLOW_TYPE,
        "taskQueue": "bench",
        "status": "RUNNING",
        "startTime": 1_790_000_000_000,
        "historyLength": 2,
        "attempt": 1,
        "workflowTaskTimeout": 10_000,
        "input": {"n": 0},
        "pad": "",
    }
    base = len(msgpack.packb(rec, use_bin_type=True))
    rec["pad"] = "x" * max(0, size - base - 2)
    out = msgpack.packb(rec, use_bin_type=True)
    while len(out) > size and rec["pad"]:
        rec["pad"] = rec["pad"][:-1]
        out = msgpack.packb(rec, use_bin_type=True)
    return out


def filesystem_of(path: Path) -> str:
    """``fstype device`` of the mount holding ``path`` (Linux), else ``?``."""
    best, desc = "", "?"
    with contextlib.suppress(OSError):
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype, *_ = line.split()
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, desc = mnt, f"{fstype} on {dev} ({mnt})"
    return desc


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def machine_info(tmp_dir: Path, client_loop: str) -> Machine:
    return Machine(
        cores=os.cpu_count() or 0,
        cpu=cpu_model(),
        python=platform.python_version(),
        implementation=platform.python_implementation(),
        os=f"{platform.system()} {platform.release()}",
        lmdb=f"py-lmdb {lmdb.__version__}, LMDB {'.'.join(map(str, lmdb.version()))}",
        aiohttp=aiohttp.__version__,
        client_loop=client_loop,
        tmp_dir=str(tmp_dir),
        filesystem=filesystem_of(tmp_dir),
    )


# ---------------------------------------------------------------------------
# the node subprocess


def _libc() -> Any:
    with contextlib.suppress(OSError):
        return ctypes.CDLL("libc.so.6", use_errno=True)
    return None


_LIBC: Any = _libc()  # loaded here, in the parent: the forked child only makes one call


def _die_with_parent() -> None:  # in the child between fork and exec: no imports, no locks
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class CpuSample:
    wall: float
    main: float  # seconds of CPU of the server's main thread (the event loop)
    total: float  # seconds of CPU of the whole server process
    write_bytes: int | None


class NodeProcess:
    """One ``tasksd serve`` child on a free loopback port."""

    def __init__(self, data_dir: Path, durability: str, log_path: Path,
                 profile_path: Path | None = None) -> None:
        self.data_dir = data_dir
        self.durability = durability
        self.log_path = log_path
        self.profile_path = profile_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> str:
        cmd = [sys.executable]
        if self.profile_path is not None:
            cmd += ["-m", "cProfile", "-o", str(self.profile_path)]
        cmd += [
            "-m", "hanzo_tasks.cluster.cli", "serve",
            "--http", "127.0.0.1:0",
            "--data-dir", str(self.data_dir),
            "--durability", self.durability,
            "--node-id", "bench",
        ]
        # The node must see only our flags: drop configuration from the environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKSD_", "TASKS_"))}
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        pattern = re.compile(r"serving http=(\S+)")
        while time.monotonic() < deadline:
            m = pattern.search(self.log_path.read_text(errors="replace"))
            if m:
                self.url = f"http://{m.group(1)}"
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"tasksd exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"tasksd did not report its address in {timeout:.0f}s:\n{self.log_tail()}")
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            time.sleep(0.05)
        raise RuntimeError(f"tasksd at {self.url} not ready in {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_SECONDS) -> int | None:
        """SIGTERM (clean stop), SIGKILL after ``timeout``; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
        return proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def sample(self) -> CpuSample:
        wall = time.perf_counter()
        if self.proc is None:
            return CpuSample(wall, 0.0, 0.0, None)
        pid = self.proc.pid
        try:
            total = _stat_cpu(Path(f"/proc/{pid}/stat"))
            main = _stat_cpu(Path(f"/proc/{pid}/task/{pid}/stat"))
        except (OSError, ValueError, IndexError):
            return CpuSample(wall, math.nan, math.nan, None)
        write_bytes: int | None = None
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    write_bytes = int(line.split()[1])
        return CpuSample(wall, main, total, write_bytes)


def _stat_cpu(path: Path) -> float:
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def cpu_pct(a: CpuSample, b: CpuSample) -> tuple[float | None, float | None]:
    """(main thread %, other threads %) of one core between two samples."""
    wall = b.wall - a.wall
    if wall <= 0 or math.isnan(a.main) or math.isnan(b.main):
        return None, None
    main = (b.main - a.main) / wall * 100
    other = ((b.total - b.main) - (a.total - a.main)) / wall * 100
    return round(main, 1), round(other, 1)


# ---------------------------------------------------------------------------
# 1. the storage ceiling


def lmdb_baseline(path: Path, *, sync: bool, seconds: float, batch: int, value: bytes) -> BaselineRow:
    """Sequential-key puts of ``value`` into a fresh env, ``batch`` puts per commit."""
    path.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=16 * 1024 * MiB, subdir=True, sync=sync,
                    metasync=sync, max_dbs=0, lock=True)
    latencies: list[float] = []
    n = 0
    try:
        start = time.perf_counter()
        deadline = start + seconds
        now = start
        while now < deadline:
            t0 = time.perf_counter()
            with env.begin(write=True) as txn:
                for _ in range(batch):
                    txn.put(b"bench/%016d" % n, value)
                    n += 1
            now = time.perf_counter()
            latencies.append(now - t0)
        elapsed = now - start
    finally:
        env.close()
        shutil.rmtree(path, ignore_errors=True)
    latencies.sort()
    ms = [x * 1000 for x in (percentile(latencies, 0.5), percentile(latencies, 0.99), latencies[-1])
          if x is not None]
    return BaselineRow(
        puts_per_txn=batch,
        seconds=round(elapsed, 3),
        commits=len(latencies),
        commits_per_s=round(rate(len(latencies), elapsed), 1),
        puts_per_s=round(rate(n, elapsed), 1),
        p50_ms=round(ms[0], 3),
        p99_ms=round(ms[1], 3),
        max_ms=round(ms[2], 3),
        value_bytes=len(value),
    )


# ---------------------------------------------------------------------------
# 2. workflow starts over HTTP

JSON_HEADERS = {"Content-Type": "application/json"}


async def create_namespace(session: aiohttp.ClientSession, url: str, name: str) -> None:
    body = {"namespaceInfo": {"name": name}, "config": {"apsLimit": 0}}
    async with session.post(f"{url}/v1/tasks/namespaces", json=body) as r:
        text = await r.text()
        if r.status != 200:
            raise RuntimeError(f"creating namespace {name}: HTTP {r.status} {text}")
        aps = json.loads(text).get("config", {}).get("apsLimit")
        if aps != 0:
            raise RuntimeError(f"namespace {name} did not take apsLimit 0 (stored {aps!r}): {text}")


async def start_level(url: str, node: NodeProcess, clients: int, seconds: float, tag: str) -> StartLevel:
    """``clients`` coroutines POSTing starts back to back for ``seconds``."""
    endpoint = f"{url}/v1/tasks/namespaces/bench/workflows"
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        begin = time.perf_counter()
        deadline = begin + seconds

        async def client(i: int) -> None:
            seq = 0
            while time.perf_counter() < deadline:
                seq += 1
                ident = f"{tag}-c{clients}-{i}-{seq}"
                body = json.dumps({
                    "workflowId": ident,
                    "requestId": ident,
                    "workflowType": {"name": WORKFLOW_TYPE},
                    "taskQueue": {"name": "bench"},
                    "input": {"client": i, "seq": seq},
                }).encode()
                t0 = time.perf_counter()
                try:
                    async with session.post(endpoint, data=body, headers=JSON_HEADERS) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as e:
                    errors[type(e).__name__] += 1
                    continue
                if 200 <= status < 300:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[f"HTTP {status}"] += 1

        cpu0, node0 = time.process_time(), node.sample()
        await asyncio.gather(*(client(i) for i in range(clients)))
        cpu1, node1 = time.process_time(), node.sample()
        elapsed = time.perf_counter() - begin
    latencies.sort()
    loop_pct, apply_pct = cpu_pct(node0, node1)
    wb = None
    if node0.write_bytes is not None and node1.write_bytes is not None and latencies:
        wb = round((node1.write_bytes - node0.write_bytes) / len(latencies), 1)

    def ms(q: float) -> float | None:
        v = percentile(latencies, q)
        return None if v is None else round(v * 1000, 3)

    return StartLevel(
        clients=clients,
        seconds=round(elapsed, 3),
        ok=len(latencies),
        errors=dict(errors),
        starts_per_s=round(rate(len(latencies), elapsed), 1),
        p50_ms=ms(0.5),
        p99_ms=ms(0.99),
        max_ms=ms(1.0),
        server_loop_cpu_pct=loop_pct,
        server_apply_cpu_pct=apply_pct,
        client_cpu_pct=round((cpu1 - cpu0) / elapsed * 100, 1),
        server_write_bytes_per_start=wb,
    )


async def bench_starts(url: str, node: NodeProcess, seconds: float, warmup: float,
                       levels: Sequence[int]) -> tuple[list[StartLevel], int]:
    async with aiohttp.ClientSession() as session:
        await create_namespace(session, url, "bench")
    tag = f"r{int(time.time())}"
    warm = await start_level(url, node, 8, warmup, tag + "-warm")
    out = [await start_level(url, node, c, seconds, tag) for c in levels]
    return out, warm.ok + sum(lv.ok for lv in out)


def storage_cost(data_dir: Path, starts: int) -> StorageCost | None:
    """What the stopped node's LMDB holds, per start (namespace record included)."""
    path = data_dir / "partitions" / "0"
    if starts <= 0 or not (path / "data.mdb").exists():
        return None
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=True, max_dbs=0)
    try:
        entries = env.stat()["entries"]
        used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        kbytes = vbytes = 0
        with env.begin(buffers=True) as txn:
            for k, v in txn.cursor():
                kbytes += len(k)
                vbytes += len(v)
    finally:
        env.close()
    return StorageCost(
        starts=starts,
        lmdb_entries=entries,
        entries_per_start=round(entries / starts, 2),
        value_bytes_per_start=round(vbytes / starts, 1),
        key_bytes_per_start=round(kbytes / starts, 1),
        used_bytes_per_start=round(used / starts, 1),
    )


# ---------------------------------------------------------------------------
# 4. schedules


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    line_re = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
    label_re = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        if m:
            out.append((m.group(1), dict(label_re.findall(m.group(2) or "")), float(m.group(3))))
    return out


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> tuple[float | None, str]:
    """Prometheus-style quantile from cumulative ``(le, count)``; also the bucket used."""
    if not buckets or buckets[-1][1] <= 0:
        return None, ""
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le, f"> {prev_le:g}s"
            span = f"({prev_le:g}s, {le:g}s]"
            if count == prev_count:
                return le, span
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count), span
        prev_le, prev_count = le, count
    return None, ""


async def fetch_metrics(session: aiohttp.ClientSession, url: str) -> list[tuple[str, dict[str, str], float]]:
    """The node's metrics; empty when it does not answer (the caller sees a stall)."""
    try:
        async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
            return parse_metrics(await r.text()) if r.status == 200 else []
    except (aiohttp.ClientError, TimeoutError):
        return []


def fire_counts(metrics: Sequence[tuple[str, dict[str, str], float]]) -> dict[str, int]:
    return {labels.get("outcome", "?"): int(v) for name, labels, v in metrics
            if name == "tasks_schedule_fires_total"}


async def bench_schedules(url: str, node: NodeProcess, count: int, window: int,
                          create_rate_hint: float) -> ScheduleResult:
    ns_url = f"{url}/v1/tasks/namespaces/sched"
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=SCHEDULE_CREATE_CLIENTS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await create_namespace(session, url, "sched")
        # Every schedule fires the same nominal seconds [first, last]; the window
        # opens after the creations are expected to be over (twice the estimated
        # time, at least 3 s), so that it is the same for all of them.
        budget = max(3, math.ceil(2 * count / max(create_rate_hint, 1.0)) + 1)
        first = math.ceil(time.time()) + budget
        last = first + window - 1
        spec = {"interval": [{"interval": "1s"}],
                "startTime": rfc3339_seconds(first), "endTime": rfc3339_seconds(last)}
        created_ms: dict[str, int] = {}
        errors: Counter[str] = Counter()
        pending = iter(range(count))

        async def creator() -> None:
            for i in pending:
                sid = f"bench-{i:05d}"
                body = {
                    "scheduleId": sid,
                    "spec": spec,
                    "action": {"workflowType": {"name": SCHEDULE_TYPE}, "taskQueue": {"name": "bench"}},
                    "policies": {"overlapPolicy": "ALLOW_ALL"},
                }
                try:
                    async with session.post(f"{ns_url}/schedules", json=body) as r:
                        text = await r.text()
                        if r.status != 200:
                            errors[f"HTTP {r.status}"] += 1
                            continue
                        created_ms[sid] = parse_ms(json.loads(text)["info"]["createTime"])
                except (aiohttp.ClientError, TimeoutError) as e:
                    errors[type(e).__name__] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(creator() for _ in range(SCHEDULE_CREATE_CLIENTS)))
        create_seconds = time.perf_counter() - t0
        if time.time() >= first:
            print(f"  note: creating {count} schedules took {create_seconds:.1f}s, past the window "
                  f"start; schedules created late only count their later nominal seconds",
                  file=sys.stderr)

        expected: set[tuple[str, int]] = set()
        for sid, cms in created_ms.items():
            for sec in range(first, last + 1):
                if sec * 1000 > cms:
                    expected.add((sid, sec * 1000))

        # Wait for the window, then until the fire counter has caught up (or stalls).
        await asyncio.sleep(max(0.0, first - time.time() - 0.05))
        cpu_a = node.sample()
        await asyncio.sleep(max(0.0, last + 1 - time.time()))
        total, seen, stable_since = 0, -1, time.monotonic()
        give_up = time.monotonic() + 120
        while time.monotonic() < give_up:
            total = sum(fire_counts(await fetch_metrics(session, url)).values())
            if total >= len(expected):
                break
            if total != seen:
                seen, stable_since = total, time.monotonic()
            elif time.monotonic() - stable_since > STALL_SECONDS:
                break
            await asyncio.sleep(0.25)
        cpu_b = node.sample()
        metrics = await fetch_metrics(session, url)
        problems: list[str] = []
        if total < len(expected):
            problems.append(f"fires stalled at {total:,} of {len(expected):,} expected "
                            f"(no progress for {STALL_SECONDS:g}s)")

        # Every fired workflow: exact lateness from its id and its startTime.
        fired: list[tuple[str, int, int]] | None = []
        token, pages = "", 0
        t_list = time.perf_counter()
        list_seconds: float | None = None
        try:
            while True:
                params = {"query": f"WorkflowType='{SCHEDULE_TYPE}'", "pageSize": "1000"}
                if token:
                    params["nextPageToken"] = token
                async with session.get(f"{ns_url}/workflows", params=params) as r:
                    if r.status != 200:
                        raise RuntimeError(f"listing fired workflows: HTTP {r.status} {await r.text()}")
                    page = await r.json()
                pages += 1
                for ex in page["executions"]:
                    wid = ex["execution"]["workflowId"]
                    fired.append((wid[: -NOMINAL_SUFFIX_LEN - 1], parse_ms(wid[-NOMINAL_SUFFIX_LEN:]),
                                  parse_ms(ex["startTime"])))
                token = page.get("nextPageToken") or ""
                if not token:
                    break
            list_seconds = round(time.perf_counter() - t_list, 3)
        except (RuntimeError, aiohttp.ClientError, TimeoutError) as e:
            problems.append(str(e) or type(e).__name__)
            fired = None
        if problems:
            problems.append(await canary_start(session, ns_url))

    stats = analyze_fires(fired, expected) if fired is not None else {}
    hist = sorted(
        (float(labels["le"]), v) for name, labels, v in metrics
        if name == "tasks_schedule_fire_lateness_seconds_bucket"
    )
    h50, b50 = histogram_quantile(hist, 0.5)
    h99, b99 = histogram_quantile(hist, 0.99)
    loop_pct, apply_pct = cpu_pct(cpu_a, cpu_b)
    fires = stats.get("fires")
    return ScheduleResult(
        schedules=count,
        created=len(created_ms),
        create_errors=dict(errors),
        create_seconds=round(create_seconds, 3),
        creates_per_s=round(rate(len(created_ms), create_seconds), 1),
        window_start=rfc3339_seconds(first),
        window_seconds=window,
        expected_fires=len(expected),
        fires=fires,
        fires_per_s=None if fires is None else round(fires / window, 1),
        duplicates=stats.get("duplicates"),
        skipped=stats.get("skipped"),
        out_of_window=stats.get("out_of_window"),
        lateness_p50_ms=stats.get("p50"),
        lateness_p99_ms=stats.get("p99"),
        lateness_max_ms=stats.get("max"),
        burst_drain_p50_ms=stats.get("drain_p50"),
        burst_drain_max_ms=stats.get("drain_max"),
        drain_rate_p50_per_s=stats.get("drain_rate_p50"),
        drain_by_second_ms=stats.get("drain_by_second", []),
        histogram_count=int(hist[-1][1]) if hist else 0,
        histogram_p50_ms=None if h50 is None else round(h50 * 1000, 1),
        histogram_p50_bucket=b50,
        histogram_p99_ms=None if h99 is None else round(h99 * 1000, 1),
        histogram_p99_bucket=b99,
        fires_by_outcome=fire_counts(metrics),
        list_seconds=list_seconds,
        list_pages=pages,
        server_loop_cpu_pct=loop_pct,
        server_apply_cpu_pct=apply_pct,
        error="; ".join(problems) or None,
    )


async def canary_start(session: aiohttp.ClientSession, ns_url: str) -> str:
    """After a failure: does the node still commit a write at all?"""
    body = {"workflowType": {"name": "bench-canary"}, "requestId": f"canary-{time.time_ns()}"}
    t0 = time.perf_counter()
    try:
        async with session.post(f"{ns_url}/workflows", json=body,
                                timeout=aiohttp.ClientTimeout(total=CANARY_SECONDS)) as r:
            await r.read()
            return f"canary start answered HTTP {r.status} in {time.perf_counter() - t0:.2f}s"
    except TimeoutError:
        return f"canary start got no answer within {CANARY_SECONDS:g}s: the node no longer commits writes"
    except aiohttp.ClientError as e:
        return f"canary start failed: {type(e).__name__}"


def log_findings(node: NodeProcess, limit: int = 6) -> list[str]:
    """Distinct exception lines and dead threads from a node's log."""
    out: list[str] = []
    exc = re.compile(r"^(Exception in thread \S+|[\w.]+(Error|Exception)\b.*)")
    with contextlib.suppress(OSError):
        for line in node.log_path.read_text(errors="replace").splitlines():
            m = exc.match(line)
            if m and line not in out:
                out.append(line[:240])
                if len(out) >= limit:
                    break
    return out


def analyze_fires(fired: Sequence[tuple[str, int, int]], expected: set[tuple[str, int]]) -> Json:
    """Lateness, duplicates, skips and per-second burst drain of listed fires."""
    runs: Counter[tuple[str, int]] = Counter((sid, nominal) for sid, nominal, _ in fired)
    in_window = [(sid, nominal, start) for sid, nominal, start in fired if (sid, nominal) in expected]
    lateness = sorted(start - nominal for _, nominal, start in in_window)
    last_start: dict[int, int] = {}
    fires_at: Counter[int] = Counter()
    for _, nominal, start in in_window:
        fires_at[nominal] += 1
        last_start[nominal] = max(last_start.get(nominal, start), start)
    drains = sorted(float(last_start[n] - n) for n in last_start)
    drain_rates = sorted(fires_at[n] / max(last_start[n] - n, 1) * 1000 for n in last_start)

    def r(v: float | None, nd: int = 1) -> float | None:
        return None if v is None else round(v, nd)

    return {
        "fires": len({k for k in runs if k in expected}),
        "duplicates": sum(1 for n in runs.values() if n > 1),
        "skipped": len(expected - runs.keys()),
        "out_of_window": sum(1 for k in runs if k not in expected),
        "p50": r(percentile(lateness, 0.5)),
        "p99": r(percentile(lateness, 0.99)),
        "max": r(float(lateness[-1]) if lateness else None),
        "drain_p50": r(percentile(drains, 0.5)),
        "drain_max": r(drains[-1] if drains else None),
        "drain_rate_p50": r(percentile(drain_rates, 0.5), 0),
        "drain_by_second": [float(last_start[n] - n) for n in sorted(last_start)],
    }


# ---------------------------------------------------------------------------
# one durability mode, end to end


@dataclass
class Settings:
    durability: list[str]
    level_seconds: float
    warmup_seconds: float
    baseline_seconds: float
    schedules: int
    sched_seconds: int
    levels: list[int]
    tmp_parent: str | None
    profile_dir: str | None
    keep: bool
    sections: list[str]


def run_mode(durability: str, s: Settings, root: Path) -> ModeReport:
    sync = durability == "sync"
    value = record_value()
    mode_dir = root / durability
    report = ModeReport(durability=durability, baseline=[])
    if "baseline" in s.sections:
        print(f"[{durability}] storage ceiling: raw LMDB, {s.baseline_seconds:g}s per row ...",
              file=sys.stderr)
        report.baseline = [
            lmdb_baseline(mode_dir / "lmdb-single", sync=sync, seconds=s.baseline_seconds, batch=1,
                          value=value),
            lmdb_baseline(mode_dir / f"lmdb-batch{BASELINE_BATCH}", sync=sync,
                          seconds=s.baseline_seconds, batch=BASELINE_BATCH, value=value),
        ]
    profile = Path(s.profile_dir) if s.profile_dir else None
    hint = 500.0  # starts/s, to size the schedule-creation budget when starts are not measured
    if "starts" in s.sections:
        report.starts = run_starts(durability, s, mode_dir, profile)
        hint = max((lv.starts_per_s for lv in report.starts.levels), default=hint)
        if report.baseline:
            single, batched = report.baseline[0].commits_per_s, report.baseline[1].puts_per_s
            for lv in report.starts.levels:
                lv.ratio_vs_single_commit = round(lv.starts_per_s / single, 3) if single else None
                lv.ratio_vs_batched_puts = round(lv.starts_per_s / batched, 4) if batched else None
    if "schedules" in s.sections:
        report.schedules = run_schedules(durability, s, mode_dir, profile, hint)
    return report


def run_starts(durability: str, s: Settings, mode_dir: Path, profile: Path | None) -> StartsResult:
    node = NodeProcess(mode_dir / "node-starts", durability, mode_dir / "node-starts.log",
                       profile / f"starts-{durability}.prof" if profile else None)
    print(f"[{durability}] workflow starts: {s.levels} clients, {s.level_seconds:g}s each ...",
          file=sys.stderr)
    try:
        url = node.start()
        levels, total = asyncio.run(
            bench_starts(url, node, s.level_seconds, s.warmup_seconds, s.levels))
    finally:
        code = node.stop()
    return StartsResult(levels=levels, storage=storage_cost(node.data_dir, total),
                        node_exit_code=code, server_log_findings=log_findings(node))


def run_schedules(durability: str, s: Settings, mode_dir: Path, profile: Path | None,
                  create_rate_hint: float) -> ScheduleResult:
    node = NodeProcess(mode_dir / "node-sched", durability, mode_dir / "node-sched.log",
                       profile / f"sched-{durability}.prof" if profile else None)
    print(f"[{durability}] schedules: {s.schedules} x 1s interval for {s.sched_seconds}s ...",
          file=sys.stderr)
    try:
        url = node.start()
        result = asyncio.run(
            bench_schedules(url, node, s.schedules, s.sched_seconds, create_rate_hint))
    finally:
        code = node.stop()
    result.node_exit_code = code
    result.server_log_findings = log_findings(node)
    return result


# ---------------------------------------------------------------------------
# the report


def _f(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def _i(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def _node_notes(code: int | None, findings: Sequence[str]) -> list[str]:
    out = []
    if code not in (0, None):
        how = ("killed: SIGTERM did not stop it within " f"{STOP_SECONDS:g}s"
               if code == -signal.SIGKILL else f"exit code {code}")
        out.append(f"  !! node {how}")
    if findings:
        out.append("  !! node log: " + findings[0])
        out += [f"               {line}" for line in findings[1:]]
    return out


def _errors(e: dict[str, int]) -> str:
    return ", ".join(f"{k}×{n}" for k, n in sorted(e.items())) or "0"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = [indent + "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    out.append(indent + "  ".join("-" * w for w in widths))
    out += [indent + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return out


def render(report: Report) -> str:
    m, st = report.machine, report.settings
    lines = [
        "tasksd single-node benchmark (local replicator, 1 LMDB partition)",
        f"machine : {m.cores} cores, {m.cpu}; {m.os}",
        f"python  : {m.implementation} {m.python}; {m.lmdb}; aiohttp {m.aiohttp}; client loop {m.client_loop}",
        f"disk    : {m.tmp_dir} — {m.filesystem}",
        f"settings: {st['level_seconds']:g}s per concurrency level (+{st['warmup_seconds']:g}s warm-up), "
        f"baseline {st['baseline_seconds']:g}s per row, {st['schedules']} schedules for "
        f"{st['sched_seconds']}s" + ("; SERVER UNDER cProfile (slower)" if st.get("profile_dir") else ""),
    ]
    if list(st["sections"]) != list(SECTIONS):
        lines.append(f"sections: {', '.join(st['sections'])} only")
    for run in report.runs:
        lines += ["", f"=== durability: {run.durability} " + "=" * 50]
        if run.baseline:
            lines.append("")
            lines.append(f"1) Storage ceiling — raw LMDB put+commit, fresh env on the same disk, "
                         f"{run.baseline[0].value_bytes}-byte msgpack values, "
                         f"sync={run.durability == 'sync'}")
            lines += _table(
                ["puts/txn", "commits/s", "puts/s", "p50 ms", "p99 ms", "max ms"],
                [[str(b.puts_per_txn), _f(b.commits_per_s), _f(b.puts_per_s), _f(b.p50_ms, 3),
                  _f(b.p99_ms, 3), _f(b.max_ms, 3)] for b in run.baseline],
            )
        if run.starts:
            lines += ["", "2) Workflow starts over HTTP — POST /v1/tasks/namespaces/bench/workflows "
                          "(apsLimit 0, unique workflowId + requestId)"]
            lines += _table(
                ["clients", "starts", "starts/s", "p50 ms", "p99 ms", "max ms", "errors",
                 "srv loop CPU", "srv apply CPU", "client CPU", "disk B/start"],
                [[str(lv.clients), f"{lv.ok:,}", _f(lv.starts_per_s), _f(lv.p50_ms, 2), _f(lv.p99_ms, 2),
                  _f(lv.max_ms, 2), _errors(lv.errors), _f(lv.server_loop_cpu_pct, 0) + "%",
                  _f(lv.server_apply_cpu_pct, 0) + "%", _f(lv.client_cpu_pct, 0) + "%",
                  _f(lv.server_write_bytes_per_start, 0)] for lv in run.starts.levels],
            )
            lines += _node_notes(run.starts.node_exit_code, run.starts.server_log_findings)
            sc = run.starts.storage
            if sc:
                lines.append(
                    f"  storage per start: {sc.entries_per_start:g} LMDB keys, "
                    f"{sc.value_bytes_per_start:,.0f} B values + {sc.key_bytes_per_start:,.0f} B keys, "
                    f"{sc.used_bytes_per_start:,.0f} B of pages ({sc.starts:,} starts incl. warm-up)")
        if run.starts and run.baseline:
            b1, bn = run.baseline[0], run.baseline[1]
            lines += ["", f"3) Ratios — HTTP starts/s ÷ storage ceiling ({run.durability})"]
            lines += _table(
                ["clients", "starts/s", f"÷ 1-put commits/s ({_f(b1.commits_per_s, 0)})",
                 f"÷ {bn.puts_per_txn}-put batched puts/s ({_f(bn.puts_per_s, 0)})"],
                [[str(lv.clients), _f(lv.starts_per_s), _f(lv.ratio_vs_single_commit, 3),
                  _f(lv.ratio_vs_batched_puts, 4)] for lv in run.starts.levels],
            )
        sr = run.schedules
        if sr:
            lines += ["", f"4) Schedule fires — {sr.schedules} schedules, interval 1s, ALLOW_ALL, "
                          f"{sr.window_seconds} nominal seconds from {sr.window_start}"]
            lines.append(f"  created {sr.created}/{sr.schedules} in {sr.create_seconds:.2f}s "
                         f"({_f(sr.creates_per_s)}/s), errors {_errors(sr.create_errors)}")
            if sr.error:
                lines.append(f"  !! FAILED: {sr.error}")
            lines += _table(
                ["fires", "expected", "fires/s", "late p50 ms", "late p99 ms", "late max ms",
                 "duplicates", "skipped", "outside window"],
                [[_i(sr.fires), f"{sr.expected_fires:,}", _f(sr.fires_per_s), _f(sr.lateness_p50_ms),
                  _f(sr.lateness_p99_ms), _f(sr.lateness_max_ms), _i(sr.duplicates), _i(sr.skipped),
                  _i(sr.out_of_window)]],
            )
            lines.append("  exact lateness = workflow startTime − nominal time (stamped when the fire "
                         "is proposed; ms resolution; no jitter)")
            lines.append(f"  burst drain (last fire of each nominal second): p50 {_f(sr.burst_drain_p50_ms)} ms, "
                         f"max {_f(sr.burst_drain_max_ms)} ms; drain rate p50 "
                         f"{_f(sr.drain_rate_p50_per_s, 0)} fires/s")
            trend = sr.drain_by_second_ms
            if len(trend) >= 6:
                lines.append("  burst drain by nominal second (ms): first "
                             + " ".join(f"{x:.0f}" for x in trend[:3]) + " … last "
                             + " ".join(f"{x:.0f}" for x in trend[-3:]))
            lines.append(f"  histogram tasks_schedule_fire_lateness_seconds (after commit, "
                         f"{sr.histogram_count:,} obs): p50 ≈ {_f(sr.histogram_p50_ms)} ms in "
                         f"{sr.histogram_p50_bucket or '-'}, p99 ≈ {_f(sr.histogram_p99_ms)} ms in "
                         f"{sr.histogram_p99_bucket or '-'} (linear within the bucket: only as fine "
                         "as its bounds)")
            outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(sr.fires_by_outcome.items()) if v)
            lines.append(f"  fires by outcome (server counter): {outcomes or '-'}; server CPU during "
                         f"the window: loop {_f(sr.server_loop_cpu_pct, 0)}%, apply "
                         f"{_f(sr.server_apply_cpu_pct, 0)}%")
            if sr.list_seconds is not None:
                lines.append(f"  listing {_i(sr.fires)} fired workflows: {sr.list_pages} pages in "
                             f"{sr.list_seconds:.2f}s")
            lines += _node_notes(sr.node_exit_code, sr.server_log_findings)
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# entry point


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.single_node",
        description="Benchmark a single tasksd node: HTTP workflow starts, schedule fire "
                    "lateness, and the raw LMDB ceiling on the same disk.",
    )
    p.add_argument("--quick", action="store_true",
                   help="short run: 3s per level, 8s of schedules, 2s per baseline row")
    p.add_argument("--durability", choices=("sync", "nosync", "both"), default="sync",
                   help="node and baseline durability (default sync, the server default)")
    p.add_argument("--duration", type=float, help="seconds per concurrency level (default 10, quick 3)")
    p.add_argument("--sched-duration", type=int,
                   help="nominal seconds of schedule firing (default 20, quick 8)")
    p.add_argument("--baseline-duration", type=float,
                   help="seconds per raw LMDB row (default 5, quick 2)")
    p.add_argument("--schedules", type=int, default=SCHEDULE_COUNT, help="number of schedules (1000)")
    p.add_argument("--levels", default=",".join(map(str, CONCURRENCY_LEVELS)),
                   help="concurrency levels, comma-separated (1,8,64)")
    p.add_argument("--json", metavar="PATH", help="also write every number as JSON to PATH")
    p.add_argument("--tmp-dir", metavar="DIR",
                   help="parent of the temporary data dirs (default: the system temp dir); "
                        "it decides which disk is measured")
    p.add_argument("--profile-dir", metavar="DIR",
                   help="run the nodes under cProfile (event-loop thread only) and write "
                        "<DIR>/{starts,sched}-<durability>.prof; the numbers are then not representative")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help="what to run, comma-separated subset of baseline,starts,schedules (all)")
    a = p.parse_args(argv)
    if a.duration is not None and a.duration <= 0:
        p.error("--duration must be > 0")
    if a.sched_duration is not None and a.sched_duration < 1:
        p.error("--sched-duration must be >= 1")
    try:
        a.levels = [int(x) for x in a.levels.split(",") if x.strip()]
    except ValueError:
        p.error("--levels must be comma-separated integers")
    if not a.levels or min(a.levels) < 1:
        p.error("--levels must be positive integers")
    a.sections = [x.strip() for x in a.sections.split(",") if x.strip()]
    if not a.sections or set(a.sections) - set(SECTIONS):
        p.error(f"--sections must be a subset of {','.join(SECTIONS)}")
    if a.schedules < 1:
        p.error("--schedules must be >= 1")
    return a


def _on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the nodes


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    client_loop = "asyncio"
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        client_loop = "uvloop"
    s = Settings(
        durability=["sync", "nosync"] if a.durability == "both" else [a.durability],
        level_seconds=a.duration or (3.0 if a.quick else 10.0),
        warmup_seconds=0.5 if a.quick else 1.0,
        baseline_seconds=a.baseline_duration or (2.0 if a.quick else 5.0),
        schedules=a.schedules,
        sched_seconds=a.sched_duration or (8 if a.quick else 20),
        levels=a.levels,
        tmp_parent=a.tmp_dir,
        profile_dir=str(Path(a.profile_dir).resolve()) if a.profile_dir else None,
        keep=a.keep,
        sections=a.sections,
    )
    if s.profile_dir:
        Path(s.profile_dir).mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
    root = Path(tempfile.mkdtemp(prefix="tasks-bench-", dir=a.tmp_dir))
    report = Report(machine=machine_info(root, client_loop), settings=asdict(s))
    try:
        for durability in s.durability:
            report.runs.append(run_mode(durability, s, root))
    finally:
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
