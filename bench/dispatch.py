"""Dispatch benchmark: ``now()`` -> worker handler -> COMPLETED, against Celery + Redis.

Run it from the repository root::

    .venv/bin/python -m bench.dispatch [--quick] [--json PATH]

It is a measurement, not a test: nothing here asserts on speed. In one run it
measures, for 1, 4 and 16 worker **processes**:

* **tasks, 1 node**: one ``tasksd serve`` (``--replicator local``) with ZAP on
  a free loopback port;
* **tasks, 3 nodes**: a 3-node Raft cluster (16 partitions, server-default
  timings); worker ``i`` connects to node ``i % 3``, producer thread ``j``
  submits through node ``j % 3``;
* **Celery + Redis** (the baseline): ``redis-server`` on a free loopback port
  (``--save '' --appendonly no``) as broker *and* result backend, the same
  no-op task with ``acks_late=True``, ``task_acks_late=True`` and
  ``worker_prefetch_multiplier=1``; each worker process is one ``celery
  worker --pool=solo --concurrency=1`` (one OS process running one task at a
  time; ``--celery-pool prefork`` makes it ``--pool=prefork --concurrency=1``,
  i.e. a parent plus one child per worker).

Per configuration a fixed number of no-op tasks (default 2,000; ``--quick``
500) is submitted by 32 producer threads in this process, each issuing its
next submit as soon as the previous one returned (so at most 32 submits are in
flight; the tasks themselves are not throttled: when workers are slower than
submits, a backlog builds up and its wait is part of the latency). Ours submit
with ``tasks.Client.now()`` over ZAP (0x0050 SubmitTask) with an explicit
workflow id; Celery with ``app.send_task()`` with an explicit task id.

**Latency** = from the moment the producer calls ``now()`` / ``send_task()``
to the moment the task is *completed*: for ours, when the worker's 0x00A2
RespondWorkflowTaskCompleted was answered 200 (the server committed
WORKFLOW_EXECUTION_COMPLETED); for Celery, when the ``task_success`` signal
fires in the worker, which Celery sends right after the result backend stored
SUCCESS in Redis (the late ack follows). Both ends are ``time.monotonic()``
(``CLOCK_MONOTONIC``, one clock for every process of the machine). Worker
processes report ``<id> <handler start> <completed>`` through a pipe to this
process, which also yields the *dispatch* latency (submit -> handler start).

**tasks/s** = completed tasks / (last completion - first submit).

Each worker process of ours is one ``tasks.Worker`` (``max_concurrent`` 8,
sync no-op handler on its thread pool) on its own ``tasks.Client``; its
completion stamp comes from a subclass hook around the worker's respond call
(if that private hook is missing, the handler stamps and the report says
so). ``--worker-impl raw`` uses a minimal asyncio ZAP worker instead (HELLO,
0x00A0, push-ack, 0x00A2), to show what the protocol costs without the SDK.

Before each measured batch a small warm-up batch runs through the same
workers and is not counted. The Celery baseline needs the ``celery`` and
``redis`` Python packages (installed into the current environment with pip
when missing) and a ``redis-server`` binary (``apt-get install redis-server``
when it is not on PATH, as root only); if either cannot be had the baseline
is reported as unavailable with the reason and our numbers are still printed.
``--no-install`` forbids both installs.

Every process started here (nodes, workers, redis-server) is stopped in
``finally`` blocks (SIGTERM, then SIGKILL) and is tied to this process with
``PR_SET_PDEATHSIG``; the temporary directory is removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import json
import os
import platform
import re
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cluster import machine_busy
from bench.single_node import _die_with_parent

if TYPE_CHECKING:
    from bench.cluster import System

REPO_ROOT = Path(__file__).resolve().parent.parent
TASK_TYPE = "bench-noop"
CELERY_TASK = "bench.noop"
NAMESPACE = "bench"
WORKER_COUNTS = (1, 4, 16)
SLOTS = 8
PRODUCERS = 32
DEFAULT_TASKS = 2000
QUICK_TASKS = 500
STALL_SECONDS = 20.0
WORKER_READY_SECONDS = 90.0
STOP_SECONDS = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

Json = dict[str, Any]
mono = time.monotonic


# ---------------------------------------------------------------------------
# results


@dataclass
class Machine:
    cores: int
    cpu: str
    memory: str
    python: str
    os: str
    tmp_dir: str
    filesystem: str
    load_average: str
    versions: dict[str, str]


@dataclass
class ConfigResult:
    system: str  # "tasks-1node" | "tasks-3node" | "celery"
    workers: int
    tasks: int
    submitted: int
    completed: int
    submit_errors: dict[str, int]
    duplicates: int
    wall_s: float | None
    tasks_per_s: float | None
    submits_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    dispatch_p50_ms: float | None  # submit call -> handler start
    dispatch_p99_ms: float | None
    finish_p50_ms: float | None  # handler start -> completed
    submit_call_p50_ms: float | None  # how long now()/send_task() itself took
    submit_call_p99_ms: float | None
    peak_backlog: int | None  # most tasks submitted but not yet completed at any moment
    per_worker_min: int | None
    per_worker_max: int | None
    per_worker: list[int]  # completions per worker process (worker i is on node i % nodes)
    per_node: dict[str, int]  # completions by the node the worker is connected to
    server: Json  # 3-node: leader of the namespace's partition, /v1/tasks/cluster stats deltas
    worker_start_s: float
    cpu_pct: dict[str, float | None]  # 100 = one core, over the measured window
    stamp: str  # where the completion time is taken
    error: str | None = None
    log_findings: list[str] = field(default_factory=list)


@dataclass
class Ratio:
    topology: str
    workers: int
    tasks_per_s: float | None
    p50: float | None
    p99: float | None


@dataclass
class Report:
    machine: Machine
    settings: Json
    results: list[ConfigResult] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    celery_unavailable: str | None = None
    startup_seconds: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    node_logs: dict[str, Json] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# helpers


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _clean_env() -> dict[str, str]:
    """The environment without tasks/tasksd configuration, so children see only our flags."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TASKSD_", "TASKS_"))}


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            out.setdefault(ppid, []).append(int(d))
    return out


def _proc_cpu(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / CLK_TCK
    return 0.0


def tree_cpu(pids: Sequence[int], kids: dict[int, list[int]] | None = None) -> float:
    """CPU seconds (utime + stime) of ``pids`` and all their descendants."""
    kids = _children() if kids is None else kids
    total, todo, seen = 0.0, list(pids), set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _proc_cpu(p)
        todo += kids.get(p, [])
    return total


def _emitter(fd: int) -> Callable[[str], None]:
    lock = threading.Lock()

    def emit(line: str) -> None:
        data = (line + "\n").encode()
        with lock:
            os.write(fd, data)

    return emit


def _log_findings(paths: Sequence[Path], limit: int = 6) -> list[str]:
    """Distinct WARNING/ERROR/exception lines (digits folded to N) with their counts."""
    pat = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback|Exception in thread)\b|^\w+(Error|Exception):")
    seen: Counter[str] = Counter()
    for p in paths:
        with contextlib.suppress(OSError):
            for line in p.read_text(errors="replace").splitlines():
                if pat.search(line):
                    # drop the timestamp prefix, fold numbers
                    text = re.sub(r"^\S+ \S+ ", "", line)
                    seen[re.sub(r"\d+", "N", text)[:200]] += 1
    return [f"{msg} ×{n}" for msg, n in seen.most_common(limit)]


# ---------------------------------------------------------------------------
# worker processes (run as ``python -m bench.dispatch --role ...``)


def _run_until_sigterm() -> threading.Event:
    stop = threading.Event()

    def on_term(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    return stop


def role_tasks_worker(a: argparse.Namespace) -> int:
    """One ``tasks.Worker`` on its own client; stamps after the 0x00A2 answer."""
    import hanzo_tasks as tasks
    from hanzo_tasks.worker import Worker

    emit = _emitter(a.stamp_fd)
    stop = _run_until_sigterm()
    started: dict[str, float] = {}
    hooked = hasattr(Worker, "_respond_workflow")

    def noop(_payload: Any) -> None:
        ctx = tasks.context()
        t = mono()
        if hooked:
            started[ctx.workflow_id] = t
        else:
            emit(f"D {ctx.workflow_id} {t:.6f} {t:.6f}")

    class StampingWorker(Worker):
        async def _respond_workflow(self, run: Any, command: dict[str, Any]) -> bool:
            ok = bool(await super()._respond_workflow(run, command))
            t = mono()
            wid = run.body.get("workflow_id", "")
            if ok:
                emit(f"D {wid} {started.pop(wid, t):.6f} {t:.6f}")
            else:
                started.pop(wid, None)
                emit(f"E respond not accepted for {wid}")
            return ok

    client = tasks.Client(zap_addr=a.zap, namespace=a.namespace, task_queue=a.queue)
    worker = (StampingWorker if hooked else Worker)(client, a.queue, max_concurrent=a.slots)
    worker.register(TASK_TYPE, noop)
    try:
        worker.start()
        emit(f"R {os.getpid()} {'respond-answered' if hooked else 'handler'}")
        stop.wait()
    finally:
        with contextlib.suppress(Exception):
            worker.stop(5.0)
        with contextlib.suppress(Exception):
            client.stop(2.0)
    return 0


def role_raw_worker(a: argparse.Namespace) -> int:
    """A minimal asyncio ZAP worker (the protocol of tests/cluster/dispatch/test_dispatch.py RawWorker)."""
    import asyncio

    from hanzo_tasks.protocol import zap as Z
    from hanzo_tasks.protocol.zap import Op

    emit = _emitter(a.stamp_fd)
    host, port = a.zap.rsplit(":", 1)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        reader, writer = await asyncio.open_connection(host, int(port))
        frames = Z.FrameReader(1 << 30, Z.SERVER_KINDS)
        pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        ids = itertools.count(1)
        busy = 0
        tasks_: set[asyncio.Task[None]] = set()

        async def call(op: int, body: Json) -> Json:
            fid = next(ids)
            fut: asyncio.Future[Json] = loop.create_future()
            pending[fid] = fut
            writer.write(Z.encode_frame(Z.REQUEST, op, fid, body))
            return await asyncio.wait_for(fut, 30)

        async def handle(body: Json) -> None:
            nonlocal busy
            t_h = mono()
            # The slot is free from the moment the completion is sent: the server frees it
            # when it applies the completion and may push the next task before its answer.
            busy -= 1
            r = await call(Op.RespondWorkflowTaskCompleted, {
                "task_token": body["task_token"],
                "commands": [{"type": "CompleteWorkflowExecution", "result": None}]})
            if r.get("status") == 200:
                emit(f"D {body.get('workflow_id')} {t_h:.6f} {mono():.6f}")
            else:
                emit(f"E complete -> {r.get('status')} {r.get('error')}")

        async def read_loop() -> None:
            nonlocal busy
            while data := await reader.read(1 << 16):
                frames.feed(data)
                while (f := frames.next_frame()) is not None:
                    body = Z.decode_body(f.body)
                    if f.kind != Z.PUSH:
                        fut = pending.pop(f.frame_id, None)
                        if fut is not None and not fut.done():
                            fut.set_result(body)
                        continue
                    status = 200
                    if f.opcode == Op.DeliverWorkflowTask:
                        status = 200 if busy < a.slots else 429
                    writer.write(Z.encode_frame(Z.PUSH_ACK, f.opcode, f.frame_id, {"status": status}))
                    if f.opcode == Op.DeliverWorkflowTask and status == 200:
                        busy += 1
                        t = loop.create_task(handle(body))
                        tasks_.add(t)
                        t.add_done_callback(tasks_.discard)
            stop.set()

        rl = loop.create_task(read_loop())
        r = await call(Op.Hello, {"client_id": f"raw-{os.getpid()}", "sdk_name": "bench-raw",
                                  "sdk_version": "1", "namespace": a.namespace})
        if r.get("status") != 200:
            raise RuntimeError(f"HELLO: {r}")
        r = await call(Op.SubscribeWorkflowTasks, {"task_queue": a.queue, "max_concurrent": a.slots,
                                                    "types": [TASK_TYPE]})
        if r.get("status") != 200:
            raise RuntimeError(f"subscribe: {r}")
        emit(f"R {os.getpid()} respond-answered")
        await stop.wait()
        rl.cancel()
        writer.close()

    asyncio.run(main())
    return 0


def _celery_app(redis_url: str, queue: str) -> Any:
    from celery import Celery

    app = Celery("bench_dispatch", broker=redis_url, backend=redis_url)
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        broker_pool_limit=PRODUCERS * 2,  # the default 10 would throttle 32 producer threads
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        result_extended=False,
    )
    return app


_celery_started: dict[str, float] = {}


def role_celery_worker(a: argparse.Namespace) -> int:
    """``celery worker`` in this process, with the no-op task and the stamping signals."""
    from celery import signals

    emit = _emitter(a.stamp_fd)
    app = _celery_app(a.redis_url, a.queue)

    @app.task(name=CELERY_TASK, acks_late=True)
    def noop(_payload: Any = None) -> None:
        _celery_started[noop.request.id] = mono()

    def on_success(sender: Any = None, **_kw: Any) -> None:
        t = mono()  # task_success is sent after the backend stored SUCCESS
        tid = sender.request.id if sender is not None else "?"
        emit(f"D {tid} {_celery_started.pop(tid, t):.6f} {t:.6f}")

    def on_ready(**_kw: Any) -> None:
        emit(f"R {os.getpid()} task_success")

    signals.task_success.connect(on_success, weak=False)
    signals.worker_ready.connect(on_ready, weak=False)
    app.worker_main([
        "worker", f"--pool={a.celery_pool}", "--concurrency=1", "--loglevel=WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-Q", a.queue, "-n", f"bench{a.index}@%h",
    ])
    return 0


# ---------------------------------------------------------------------------
# stamps from the worker processes


class Stamps:
    """Reads ``R``/``D``/``E`` lines from the workers' pipes on one thread."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.cond = threading.Condition()
        self.ready: dict[int, str] = {}
        self.done: dict[str, tuple[float, float]] = {}
        self.by_worker: Counter[int] = Counter()
        self.duplicates = 0
        self.errors: list[str] = []
        self.closed = False
        self.watched: set[str] = set()
        self.watched_done = 0
        self._buf: dict[int, bytes] = {}
        self._idx: dict[int, int] = {}
        self._thread = threading.Thread(target=self._run, name="stamps", daemon=True)
        self._wake_r, self._wake_w = os.pipe()
        self.sel.register(self._wake_r, selectors.EVENT_READ)
        self._thread.start()

    def add(self, fd: int, index: int) -> None:
        self._idx[fd] = index
        self._buf[fd] = b""
        self.sel.register(fd, selectors.EVENT_READ)
        os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while not self.closed:
            for key, _ in self.sel.select(0.5):
                fd = key.fd
                if fd == self._wake_r:
                    os.read(fd, 4096)
                    continue
                try:
                    data = os.read(fd, 1 << 16)
                except OSError:
                    data = b""
                if not data:
                    self.sel.unregister(fd)
                    os.close(fd)
                    continue
                buf = self._buf[fd] + data
                *lines, self._buf[fd] = buf.split(b"\n")
                with self.cond:
                    for raw in lines:
                        self._line(self._idx[fd], raw.decode(errors="replace"))
                    self.cond.notify_all()

    def _line(self, index: int, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "D":
            tid, t_h, t_d = rest.split()
            if tid in self.done:
                self.duplicates += 1
            else:
                self.done[tid] = (float(t_h), float(t_d))
                self.by_worker[index] += 1
                if tid in self.watched:
                    self.watched_done += 1
        elif kind == "R":
            self.ready[index] = rest.split(" ", 1)[1] if " " in rest else rest
        elif kind == "E" and len(self.errors) < 20:
            self.errors.append(rest)

    def wait_ready(self, n: int, timeout: float, procs: Sequence[subprocess.Popen[bytes]]) -> None:
        deadline = mono() + timeout
        with self.cond:
            while len(self.ready) < n:
                dead = [p for p in procs if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"a worker exited with {dead[0].returncode} before it was ready")
                if mono() > deadline:
                    raise RuntimeError(f"only {len(self.ready)}/{n} workers ready after {timeout:g}s")
                self.cond.wait(0.2)

    def watch(self, ids: Sequence[str]) -> None:
        """Count completions of ``ids`` from now on (call before submitting them)."""
        with self.cond:
            self.watched = set(ids)
            self.watched_done = sum(1 for i in self.watched if i in self.done)

    def wait_done(self, target: int, stall: float) -> int:
        """Until ``target`` watched ids are done, or nothing completed for ``stall`` seconds."""
        last, last_t = -1, mono()
        with self.cond:
            while True:
                n = self.watched_done
                if n >= target:
                    return n
                if n != last:
                    last, last_t = n, mono()
                elif mono() - last_t > stall:
                    return n
                self.cond.wait(0.2)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in list(self._idx):
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.sel.unregister(fd)
                os.close(fd)
        self.sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


class WorkerSet:
    """N worker processes of one role, each with its own stamp pipe and log file."""

    def __init__(self, role: str, n: int, args_for: Callable[[int], list[str]], log_dir: Path) -> None:
        self.role, self.n, self.args_for, self.log_dir = role, n, args_for, log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.stamps = Stamps()
        self.exit_codes: list[int | None] = []

    def start(self) -> float:
        t0 = mono()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.n):
            r, w = os.pipe()
            log = self.log_dir / f"{self.role}-{self.n}-{i}.log"
            self.logs.append(log)
            cmd = [sys.executable, "-m", "bench.dispatch", "--role", self.role, "--stamp-fd", str(w),
                   "--index", str(i), *self.args_for(i)]
            try:
                with open(log, "wb") as out:
                    self.procs.append(subprocess.Popen(
                        cmd, cwd=REPO_ROOT, env=_clean_env(), stdin=subprocess.DEVNULL, stdout=out,
                        stderr=subprocess.STDOUT, pass_fds=(w,), preexec_fn=_die_with_parent))
            finally:
                os.close(w)
            self.stamps.add(r, i)
        try:
            self.stamps.wait_ready(self.n, WORKER_READY_SECONDS, self.procs)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{self.tail()}") from None
        return mono() - t0

    def tail(self, lines: int = 15) -> str:
        for log in self.logs:
            with contextlib.suppress(OSError):
                text = log.read_text(errors="replace").strip()
                if text:
                    return f"[{log.name}]\n" + "\n".join(text.splitlines()[-lines:])
        return ""

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = mono() + STOP_SECONDS
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - mono()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        self.exit_codes = [p.returncode for p in self.procs]
        self.stamps.close()


# ---------------------------------------------------------------------------
# producers


def produce(ids: Sequence[str], producers: int, submit: Callable[[int, str], object]
            ) -> tuple[dict[str, float], dict[str, float], Counter[str], float]:
    """``producers`` threads submit ``ids`` back to back; (start times, call times, errors, wall)."""
    t_sub: dict[str, float] = {}
    t_call: dict[str, float] = {}
    errors: Counter[str] = Counter()
    it = iter(ids)
    lock = threading.Lock()

    def loop(j: int) -> None:
        while True:
            with lock:
                tid = next(it, None)
            if tid is None:
                return
            t0 = mono()
            try:
                submit(j, tid)
            except Exception as e:  # noqa: BLE001 - every failure is counted, none stops the run
                with lock:
                    errors[type(e).__name__] += 1
                continue
            t1 = mono()
            t_sub[tid] = t0
            t_call[tid] = t1 - t0

    threads = [threading.Thread(target=loop, args=(j,), daemon=True) for j in range(producers)]
    t0 = mono()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return t_sub, t_call, errors, mono() - t0


def measure(system: str, n_workers: int, workers: WorkerSet, tag: str, a: argparse.Namespace,
            submit: Callable[[int, str], object], other_pids: dict[str, list[int]],
            stamp: str, node_names: Sequence[str] = (),
            probe: Callable[[], Json] | None = None) -> ConfigResult:
    """Warm up, then submit ``a.tasks`` ids and wait for their completion stamps."""
    stamps = workers.stamps
    warm = [f"{tag}-warm-{i}" for i in range(max(32, 4 * n_workers))]
    stamps.watch(warm)
    t_w, _, _, _ = produce(warm, a.producers, submit)
    stamps.wait_done(len(t_w), STALL_SECONDS)
    ids = [f"{tag}-{i}" for i in range(a.tasks)]
    stamps.watch(ids)
    before_by_worker = Counter(stamps.by_worker)
    kids = _children()
    groups = {"workers": workers.pids, **other_pids}
    cpu0 = {k: tree_cpu(v, kids) for k, v in groups.items()}
    busy0 = machine_busy()
    probe0 = probe() if probe else {}
    self0, wall0 = time.process_time(), mono()
    t_sub, t_call, errors, submit_wall = produce(ids, a.producers, submit)
    expected = set(t_sub)
    completed = stamps.wait_done(len(expected), STALL_SECONDS)
    wall1 = mono()
    kids = _children()
    busy1 = machine_busy()
    used = {k: tree_cpu(v, kids) - cpu0[k] for k, v in groups.items()}
    used["bench"] = time.process_time() - self0
    cpu: dict[str, float | None] = {k: round(v / (wall1 - wall0) * 100, 1) for k, v in used.items()}
    cpu["other"] = (None if busy0 is None or busy1 is None else
                    round(max(0.0, busy1 - busy0 - sum(used.values())) / (wall1 - wall0) * 100, 1))
    server: Json = {}
    if probe:
        probe1 = probe()
        server = {"partition_leader": probe1.get("leader"), "stats_delta": {
            node: {k: v - probe0.get("stats", {}).get(node, {}).get(k, 0) for k, v in st.items()}
            for node, st in probe1.get("stats", {}).items()},
            "applied_delta": {op: v - probe0.get("applied", {}).get(op, 0)
                              for op, v in probe1.get("applied", {}).items()
                              if v - probe0.get("applied", {}).get(op, 0)}}
    with stamps.cond:
        done = {i: stamps.done[i] for i in expected if i in stamps.done}
        per_worker = [stamps.by_worker[i] - before_by_worker[i] for i in range(n_workers)]
        dups = stamps.duplicates
    per_node: Counter[str] = Counter()
    if node_names:
        for i, c in enumerate(per_worker):
            per_node[node_names[i % len(node_names)]] += c
    lat = sorted(done[i][1] - t_sub[i] for i in done)
    disp = sorted(done[i][0] - t_sub[i] for i in done)
    fin = sorted(done[i][1] - done[i][0] for i in done)
    calls = sorted(t_call.values())
    backlog = peak = 0
    for _, step in sorted([(t_sub[i], 1) for i in done] + [(d, -1) for _, d in done.values()]):
        backlog += step
        peak = max(peak, backlog)
    wall = (max(d for _, d in done.values()) - min(t_sub.values())) if done else None
    err = None
    if completed < len(expected):
        err = f"only {completed}/{len(expected)} completed (no progress for {STALL_SECONDS:g}s)"
    if stamps.errors:
        err = (err + "; " if err else "") + "worker: " + stamps.errors[0]
    return ConfigResult(
        system=system, workers=n_workers, tasks=a.tasks, submitted=len(expected), completed=len(done),
        submit_errors=dict(errors), duplicates=dups,
        wall_s=None if wall is None else round(wall, 3),
        tasks_per_s=None if not wall else round(len(done) / wall, 1),
        submits_per_s=round(len(expected) / submit_wall, 1) if submit_wall > 0 else None,
        p50_ms=_ms(percentile(lat, 0.5)), p99_ms=_ms(percentile(lat, 0.99)), max_ms=_ms(lat[-1] if lat else None),
        dispatch_p50_ms=_ms(percentile(disp, 0.5)), dispatch_p99_ms=_ms(percentile(disp, 0.99)),
        finish_p50_ms=_ms(percentile(fin, 0.5)),
        submit_call_p50_ms=_ms(percentile(calls, 0.5)), submit_call_p99_ms=_ms(percentile(calls, 0.99)),
        peak_backlog=peak if done else None,
        per_worker_min=min(per_worker) if per_worker else None,
        per_worker_max=max(per_worker) if per_worker else None, per_worker=per_worker,
        per_node=dict(sorted(per_node.items())), server=server, worker_start_s=0.0, cpu_pct=cpu, stamp=stamp, error=err,
    )


def failed(system: str, n: int, a: argparse.Namespace, error: str) -> ConfigResult:
    return ConfigResult(system=system, workers=n, tasks=a.tasks, submitted=0, completed=0, submit_errors={},
                        duplicates=0, wall_s=None, tasks_per_s=None, submits_per_s=None, p50_ms=None,
                        p99_ms=None, max_ms=None, dispatch_p50_ms=None, dispatch_p99_ms=None,
                        finish_p50_ms=None, submit_call_p50_ms=None, submit_call_p99_ms=None, peak_backlog=None,
                        per_worker_min=None, per_worker_max=None, per_worker=[], per_node={}, server={}, worker_start_s=0.0, cpu_pct={},
                        stamp="-", error=error)


# ---------------------------------------------------------------------------
# ours: nodes


def _http(url: str, method: str = "GET", body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        with contextlib.suppress(ValueError):
            return e.code, json.loads(raw or b"null")
        return e.code, raw.decode(errors="replace")


def zap_addr_of(log_path: Path) -> str:
    found = re.findall(r"serving http=\S+ zap=(\S+)", log_path.read_text(errors="replace"))
    if not found:
        raise RuntimeError(f"no ZAP address in {log_path.name}")
    return str(found[-1])


def prepare_namespace(urls: Sequence[str]) -> None:
    """Namespace ``bench`` with ``apsLimit: 0`` (no rate limit), visible on every node."""
    body = {"namespaceInfo": {"name": NAMESPACE}, "config": {"apsLimit": 0}}
    deadline = mono() + 30
    while True:
        status, ans = _http(f"{urls[0]}/v1/tasks/namespaces", "POST", body)
        if status in (200, 409):
            break
        if mono() > deadline:
            raise RuntimeError(f"creating namespace: HTTP {status} {ans}")
        time.sleep(0.2)
    for url in urls:
        while True:
            status, ans = _http(f"{url}/v1/tasks/namespaces/{NAMESPACE}")
            if status == 200 and ans.get("config", {}).get("apsLimit") == 0:
                break
            if mono() > deadline:
                raise RuntimeError(f"namespace not visible on {url}: HTTP {status} {ans}")
            time.sleep(0.1)


_APPLIED = re.compile(r'^tasks_commands_applied_total\{op="([^"]+)"\} (\S+)$', re.M)


def server_probe(system: System) -> Json:
    """Commands applied by op (max over replicas: they apply the same log) and, for a
    cluster, who leads the namespace's partition and each node's proposal counters."""
    out: Json = {"leader": None, "stats": {}, "applied": {}}
    for n in system.nodes:
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
            with urllib.request.urlopen(f"{n.url}/metrics", timeout=5) as r:
                for op, v in _APPLIED.findall(r.read().decode(errors="replace")):
                    out["applied"][op] = max(out["applied"].get(op, 0), int(float(v)))
        if len(system.nodes) == 1:
            break
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
            status, body = _http(f"{n.url}/v1/tasks/cluster", timeout=5)
            if status != 200 or not isinstance(body, dict):
                continue
            stats = body.get("stats") or {}
            out["stats"][n.name] = {k: int(stats.get(k) or 0) for k in
                                    ("proposals", "proposalErrors", "forwarded")}
            if out["leader"] is None:
                part = next((x["partition"] for x in body.get("namespaces", [])
                             if x.get("namespace") == NAMESPACE), None)
                out["leader"] = next((x["leader"] for x in body.get("partitions", [])
                                      if x.get("id") == part), None)
    return out


def start_system(kind: str, root: Path, a: argparse.Namespace) -> System:
    """A single node or a 3-node cluster, via bench.cluster's System, with ZAP on port 0."""
    from bench.cluster import READY_TIMEOUT, Settings, System

    s = Settings(schedules=0, namespaces=0, duration=0, grace=0.0, idle_settle=0.0, idle_window=0.0,
                 durability=a.durability, partitions=16, nodes=3, tmp_parent=None, keep=a.keep)
    secret = None
    if kind == "cluster":
        secret = root / "cluster.secret"
        root.mkdir(parents=True, exist_ok=True)
        secret.write_text(secrets.token_hex(32) + "\n")
        os.chmod(secret, 0o600)
    system = System(kind, root / kind, s, secret)
    for n in system.nodes:
        n.extra += ["--zap", "127.0.0.1:0"]
    system.launch()
    try:
        system.wait_ready(mono() + READY_TIMEOUT)
        prepare_namespace(system.urls)
    except BaseException:
        system.stop()
        raise
    return system


def run_ours(kind: str, root: Path, a: argparse.Namespace, report: Report) -> None:
    import hanzo_tasks as tasks

    label = "tasks-1node" if kind == "single" else "tasks-3node"
    print(f"{label}: starting ...", file=sys.stderr)
    t0 = mono()
    try:
        system = start_system(kind, root, a)
    except (RuntimeError, OSError) as e:
        report.errors.append(f"{label} did not start: {e}")
        for n in a.worker_counts:
            report.results.append(failed(label, n, a, "system did not start"))
        return
    report.startup_seconds[label] = round(mono() - t0, 1)
    try:
        zaps = [zap_addr_of(n.log_path) for n in system.nodes]
        role = "tasks-worker" if a.worker_impl == "tasks" else "raw-worker"
        for n in a.worker_counts:
            queue = f"q{n}"
            clients = [tasks.Client(zap_addr=z, namespace=NAMESPACE, task_queue=queue) for z in zaps]

            def worker_args(i: int, q: str = queue) -> list[str]:
                return ["--zap", zaps[i % len(zaps)], "--queue", q, "--slots", str(a.slots),
                        "--namespace", NAMESPACE]

            ws = WorkerSet(role, n, worker_args, root / "logs")

            def submit(j: int, tid: str, cs: list[Any] = clients) -> object:
                return cs[j % len(cs)].now(TASK_TYPE, None, workflow_id=tid)

            print(f"{label}: {n} worker process(es) ...", file=sys.stderr)
            try:
                start_s = ws.start()
                stamp = next(iter(ws.stamps.ready.values()), "?")
                node_pids = [nd.proc.pid for nd in system.nodes if nd.proc is not None]
                res = measure(label, n, ws, f"{label}-w{n}", a, submit, {"nodes": node_pids}, stamp,
                              [nd.name for nd in system.nodes],
                              lambda: server_probe(system))
                res.worker_start_s = round(start_s, 1)
            except (RuntimeError, OSError) as e:
                res = failed(label, n, a, f"{type(e).__name__}: {e}")
            finally:
                ws.stop()
                _worker_exits(report, f"{label} w{n}", ws)
                for c in clients:
                    with contextlib.suppress(Exception):
                        c.stop(2.0)
            res.log_findings = _log_findings(ws.logs)
            report.results.append(res)
            _progress(res)
    finally:
        codes = system.stop()
        report.exit_codes.update({f"{label}/{k}": v for k, v in codes.items()})
        from bench.cluster import log_summary

        levels, top = log_summary(system.nodes)
        report.node_logs[label] = {"levels": levels, "top": top}


def _worker_exits(report: Report, what: str, ws: WorkerSet) -> None:
    for i, code in enumerate(ws.exit_codes):
        if code not in (0, None):
            report.exit_codes[f"{what} worker {i}"] = code


def _progress(r: ConfigResult) -> None:
    print(f"  {r.system} w={r.workers}: {r.completed}/{r.submitted} done, "
          f"{r.tasks_per_s} tasks/s, p50 {r.p50_ms} ms, p99 {r.p99_ms} ms"
          + (f" — {r.error}" if r.error else ""), file=sys.stderr)


# ---------------------------------------------------------------------------
# Celery + Redis


def ensure_celery(allow_install: bool) -> str | None:
    """None when celery and redis-py import (installing them with pip if allowed), else why not."""
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401

        return None
    except ImportError as e:
        if not allow_install:
            return f"{e} (and --no-install)"
    print("installing celery and redis into the current environment (pip) ...", file=sys.stderr)
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "celery", "redis"],
                           capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"pip install celery redis: {e}"
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
        return f"pip install celery redis failed ({r.returncode}): {tail[0]}"
    importlib.invalidate_caches()
    try:
        import celery  # noqa: F401,F811
        import redis  # noqa: F401,F811
    except ImportError as e:
        return f"installed, but still not importable: {e}"
    return None


def ensure_redis_server(allow_install: bool) -> tuple[str | None, str | None]:
    """(path of redis-server, None) or (None, why it is unavailable)."""
    path = shutil.which("redis-server")
    if path:
        return path, None
    if not allow_install:
        return None, "redis-server not on PATH (and --no-install)"
    if not shutil.which("apt-get"):
        return None, "redis-server not on PATH and no apt-get to install it"
    if os.geteuid() != 0:
        return None, "redis-server not on PATH; installing it needs root (apt-get install redis-server)"
    print("installing redis-server (apt-get) ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"{' '.join(cmd)}: {e}"
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
            return None, f"{' '.join(cmd)} failed ({r.returncode}): {tail[0]}"
    path = shutil.which("redis-server")
    return (path, None) if path else (None, "apt-get installed redis-server, but it is not on PATH")


class RedisServer:
    def __init__(self, binary: str, root: Path) -> None:
        self.binary, self.root = binary, root
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log = root / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--dir", str(self.root),
               "--protected-mode", "yes", "--maxclients", "1000"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        deadline = mono() + 15
        while mono() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: "
                                   + self.log.read_text(errors="replace")[-500:])
            with contextlib.suppress(redis.exceptions.RedisError):
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING within 15s")

    def stop(self) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return p.returncode


def run_celery(root: Path, a: argparse.Namespace, report: Report, redis_bin: str) -> None:
    label = "celery"
    server = RedisServer(redis_bin, root / "redis")
    try:
        server.start()
    except (RuntimeError, OSError) as e:
        report.celery_unavailable = f"redis-server did not start: {e}"
        server.stop()
        return
    try:
        for n in a.worker_counts:
            queue = f"q{n}"
            app = _celery_app(server.url, queue)

            def worker_args(i: int, q: str = queue) -> list[str]:
                return ["--redis-url", server.url, "--queue", q, "--celery-pool", a.celery_pool]

            ws = WorkerSet("celery-worker", n, worker_args, root / "logs")

            def submit(j: int, tid: str, app: Any = app, q: str = queue) -> object:
                return app.send_task(CELERY_TASK, args=(None,), task_id=tid, queue=q)

            print(f"{label}: {n} worker process(es) ...", file=sys.stderr)
            try:
                start_s = ws.start()
                pids = [server.proc.pid] if server.proc is not None else []
                res = measure(label, n, ws, f"{label}-w{n}", a, submit, {"redis": pids}, "task_success")
                res.worker_start_s = round(start_s, 1)
            except (RuntimeError, OSError) as e:
                res = failed(label, n, a, f"{type(e).__name__}: {e}")
            finally:
                ws.stop()
                _worker_exits(report, f"{label} w{n}", ws)
                with contextlib.suppress(Exception):
                    app.close()
            res.log_findings = _log_findings(ws.logs)
            report.results.append(res)
            _progress(res)
    finally:
        report.exit_codes["redis-server"] = server.stop()


# ---------------------------------------------------------------------------
# report


def machine_info(tmp: Path) -> Machine:
    from bench.single_node import cpu_model, filesystem_of

    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    load = "?"
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    versions: dict[str, str] = {}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("hanzo-tasks", "msgpack", "celery", "kombu", "redis"):
        with contextlib.suppress(PackageNotFoundError):
            versions[pkg] = version(pkg)
    rs = shutil.which("redis-server")
    if rs:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([rs, "--version"], capture_output=True, text=True, timeout=5).stdout
            m = re.search(r"v=(\S+)", out)
            versions["redis-server"] = m.group(1) if m else out.strip()
    return Machine(cores=os.cpu_count() or 0, cpu=cpu_model(), memory=mem,
                   python=f"{platform.python_implementation()} {platform.python_version()}",
                   os=f"{platform.system()} {platform.release()}", tmp_dir=str(tmp),
                   filesystem=filesystem_of(tmp), load_average=load, versions=versions)


def ratios(results: Sequence[ConfigResult]) -> list[Ratio]:
    celery = {r.workers: r for r in results if r.system == "celery"}
    out: list[Ratio] = []

    def div(x: float | None, y: float | None) -> float | None:
        return round(x / y, 2) if x is not None and y else None

    for r in results:
        c = celery.get(r.workers)
        if r.system == "celery" or c is None:
            continue
        out.append(Ratio(topology=r.system, workers=r.workers, tasks_per_s=div(r.tasks_per_s, c.tasks_per_s),
                         p50=div(r.p50_ms, c.p50_ms), p99=div(r.p99_ms, c.p99_ms)))
    return out


def _f(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = [indent + "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    out.append(indent + "  ".join("-" * w for w in widths))
    out += [indent + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return out


def render(rep: Report) -> str:
    m, st = rep.machine, rep.settings
    vers = ", ".join(f"{k} {v}" for k, v in m.versions.items())
    lines = [
        "dispatch benchmark: now() -> worker handler -> COMPLETED, tasks vs Celery+Redis",
        f"machine : {m.cores} cores, {m.cpu}, {m.memory} RAM; {m.os}; load avg at start {m.load_average}",
        f"python  : {m.python}; {vers}",
        f"disk    : {m.tmp_dir} — {m.filesystem}",
        f"settings: {st['tasks']} no-op tasks per configuration (+ warm-up), {st['producers']} producer "
        f"threads, workers {','.join(map(str, st['worker_counts']))} processes; ours: {st['worker_impl']} "
        f"worker, max_concurrent {st['slots']}, durability {st['durability']}, 3-node = raft, "
        f"16 partitions; Celery: --pool={st['celery_pool']} --concurrency=1 per process, "
        "acks_late, prefetch 1, Redis broker + result backend (no persistence)",
        "latency : submit call -> completed (ours: 0x00A2 answered; Celery: task_success, after the "
        "result is stored), both CLOCK_MONOTONIC; open-loop burst, so it includes the wait in the "
        "backlog whenever submit/s > tasks/s; CPU: 100 = one core, over the measured window",
    ]
    if rep.startup_seconds:
        lines.append("startup : " + ", ".join(f"{k} {v:g}s" for k, v in rep.startup_seconds.items()))
    lines.append("")
    rows = []
    for r in rep.results:
        cpu = r.cpu_pct
        rows.append([
            r.system, str(r.workers), f"{r.completed}/{r.submitted}", _f(r.tasks_per_s), _f(r.submits_per_s),
            _f(r.p50_ms), _f(r.p99_ms), _f(r.max_ms), _f(r.dispatch_p50_ms), _f(r.finish_p50_ms),
            _f(r.submit_call_p50_ms, 2), "-" if r.peak_backlog is None else f"{r.peak_backlog:,}",
            "-" if r.per_worker_min is None else f"{r.per_worker_min}-{r.per_worker_max}",
            _f(cpu.get("nodes", cpu.get("redis")), 0), _f(cpu.get("workers"), 0), _f(cpu.get("bench"), 0),
            _f(cpu.get("other"), 0), _f(r.worker_start_s),
        ])
    lines += _table(["system", "workers", "done", "tasks/s", "submit/s", "p50 ms", "p99 ms", "max ms",
                     "disp p50", "fin p50", "call p50", "backlog", "per wrk", "srv CPU", "wrk CPU", "bench CPU",
                     "other CPU", "wrk up s"], rows)
    lines.append("  disp = submit -> handler start, fin = handler start -> completed, call = duration of "
                 "now()/send_task(); backlog = peak submitted-not-completed")
    lines.append("  per wrk = tasks per worker process (min-max); srv CPU = the node(s), or redis-server "
                 "for Celery; wrk = all worker processes; bench = producers + this process; other = the rest "
                 "of the machine (> a few % = something else competed: numbers suspect)")
    for r in rep.results:
        notes = []
        if r.error:
            notes.append(f"!! {r.error}")
        if r.submit_errors:
            notes.append("submit errors: " + ", ".join(f"{k}×{v}" for k, v in sorted(r.submit_errors.items())))
        if r.duplicates:
            notes.append(f"{r.duplicates} duplicate completion stamps (a task ran twice)")
        if r.stamp not in ("respond-answered", "task_success", "-"):
            notes.append(f"completion stamped at: {r.stamp}")
        applied = (r.server or {}).get("applied_delta") or {}
        if applied and r.completed:
            per = ", ".join(f"{op} {v / r.completed:.2f}" + (f" ({v})" if v < r.completed / 10 else "")
                            for op, v in sorted(applied.items()))
            notes.append(f"commands applied per completed task: {per}")
        if len(r.per_node) > 1:
            srv = r.server or {}
            deltas = srv.get("stats_delta") or {}
            nodes = ", ".join(
                f"{k} {v:,}" + (" (leader)" if k == srv.get("partition_leader") else "")
                + (f" [{deltas[k]['proposals']:,} proposals]" if k in deltas else "")
                for k, v in r.per_node.items())
            notes.append(f"completed via node: {nodes}")
        notes += [f"log: {x}" for x in r.log_findings]
        for note in notes:
            lines.append(f"  {r.system} w={r.workers}: {note}")
    lines.append("")
    if rep.celery_unavailable:
        lines.append(f"Celery baseline UNAVAILABLE: {rep.celery_unavailable}")
    elif rep.ratios:
        lines.append("ours ÷ Celery (tasks/s: > 1 = ours faster; p50/p99: < 1 = ours lower latency)")
        lines += _table(["topology", "workers", "tasks/s", "p50", "p99"],
                        [[x.topology, str(x.workers), _f(x.tasks_per_s, 2), _f(x.p50, 2), _f(x.p99, 2)]
                         for x in rep.ratios])
    for label, info in rep.node_logs.items():
        levels = ", ".join(f"{k} {v:,}" for k, v in sorted(info["levels"].items())) or "empty"
        lines.append(f"{label} node logs: {levels}")
        lines += [f"    {x}" for x in info["top"]]
    for e in rep.errors:
        lines.append(f"!! {e}")
    bad = {k: v for k, v in rep.exit_codes.items() if v not in (0, None)}
    if bad:
        lines.append("exit codes ≠ 0: " + ", ".join(f"{k}={v}" for k, v in sorted(bad.items())))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"{QUICK_TASKS} tasks per configuration")
    p.add_argument("--json", metavar="PATH", help="write every number as JSON")
    p.add_argument("--tasks", type=int, help=f"tasks per configuration (default {DEFAULT_TASKS})")
    p.add_argument("--workers", default=",".join(map(str, WORKER_COUNTS)), help="worker process counts")
    p.add_argument("--slots", type=int, default=SLOTS, help="max_concurrent of each worker of ours")
    p.add_argument("--producers", type=int, default=PRODUCERS, help="concurrent submitting threads")
    p.add_argument("--durability", choices=("sync", "nosync"), default="sync", help="node --durability")
    p.add_argument("--systems", default="single,cluster,celery", help="subset of single,cluster,celery")
    p.add_argument("--worker-impl", choices=("tasks", "raw"), default="tasks",
                   help="tasks.Worker, or a minimal raw ZAP worker")
    p.add_argument("--celery-pool", choices=("solo", "prefork"), default="solo")
    p.add_argument("--no-install", action="store_true", help="never pip/apt-get install the baseline")
    p.add_argument("--tmp-dir", help="parent of the temporary directory (which disk is measured)")
    p.add_argument("--keep", action="store_true", help="keep logs and data")
    # worker-process roles (internal)
    p.add_argument("--role", choices=("tasks-worker", "raw-worker", "celery-worker"), help=argparse.SUPPRESS)
    p.add_argument("--stamp-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--zap", help=argparse.SUPPRESS)
    p.add_argument("--queue", help=argparse.SUPPRESS)
    p.add_argument("--namespace", default=NAMESPACE, help=argparse.SUPPRESS)
    p.add_argument("--redis-url", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.tasks = a.tasks or (QUICK_TASKS if a.quick else DEFAULT_TASKS)
    a.worker_counts = [int(x) for x in a.workers.split(",") if x.strip()]
    a.system_list = [x.strip() for x in a.systems.split(",") if x.strip()]
    return a


def _on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop everything


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    if a.role == "tasks-worker":
        return role_tasks_worker(a)
    if a.role == "raw-worker":
        return role_raw_worker(a)
    if a.role == "celery-worker":
        return role_celery_worker(a)

    signal.signal(signal.SIGTERM, _on_sigterm)
    root = Path(tempfile.mkdtemp(prefix="tasks-bench-dispatch-", dir=a.tmp_dir))
    settings = {k: getattr(a, k) for k in ("tasks", "producers", "slots", "durability", "worker_impl",
                                           "celery_pool", "worker_counts", "system_list")}
    try:
        celery_reason: str | None = None
        redis_bin: str | None = None
        if "celery" in a.system_list:
            celery_reason = ensure_celery(not a.no_install)
            if celery_reason is None:
                redis_bin, celery_reason = ensure_redis_server(not a.no_install)
        report = Report(machine=machine_info(root), settings=settings)
        report.celery_unavailable = celery_reason
        for kind in ("single", "cluster"):
            if kind in a.system_list:
                run_ours(kind, root, a, report)
        if "celery" in a.system_list and redis_bin is not None and celery_reason is None:
            run_celery(root, a, report, redis_bin)
        report.ratios = ratios(report.results)
    finally:
        if a.keep:
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
