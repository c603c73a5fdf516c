"""Durable workflows end to end: a 3-activity ``@workflow`` against the task-style handler (issue 15).

Run it from the repository root::

    .venv/bin/python -m bench.workflows            # 1/16/64 clients, 10 s a row (~4 min)
    .venv/bin/python -m bench.workflows --quick    # 1/16 clients, 2 s a row (~1 min)
    make bench-workflows

It is a measurement, not a test: nothing here asserts on speed. What one
operation is: a client calls ``client.start(wf, 1, id=...)`` and then
``handle.result()`` (the server's long poll, answered when the run closes),
and the run has called three trivial activities (``x + 1`` each) on the way,
so the result must be 4. Two ways to write that workflow, measured side by
side in the same run, on the same nodes and the same worker processes:

* **durable** (ours, the new way): an ``@workflow`` ``async def`` that awaits
  ``workflow.execute_activity`` three times. The server records every step in
  history; the worker's executor issues one command per workflow task, so a
  run is 4 workflow tasks and 3 activity tasks, and a worker crash resumes it
  from history.
* **task-style** (the baseline): ``Worker.register(name, fn)`` with a plain
  sync function that calls ``tasks.context().execute_activity`` three times
  (ZAP 0x006B, then it waits for the 0xB2 outcome push) while it holds its one
  workflow task; if the worker dies the handler runs again from the top.

Systems, in this order, each started, measured and stopped before the next
(``bench.dispatch.start_system``, i.e. ``bench.cluster.System``; all under one
temp dir, removed unless ``--keep``):

1. **1 node**: ``tasksd serve --replicator local --zap 127.0.0.1:0``;
2. **3 nodes**: ``--replicator raft``, 16 partitions, server-default timings.

Both with ``--durability sync`` (fsync per group commit) unless told otherwise.
``--workers`` worker processes (``python -m bench.workflows --role worker``,
default 2), each one ``tasks.Worker`` on its own ``tasks.Client(zap_addr=...)``
with both workflows and the three activities registered, ``--slots`` workflow
and activity slots each; worker ``i`` connects to node ``i % nodes``.

Clients: ``N`` threads in this process (1, 16, 64), thread ``j`` on a
``tasks.Client`` of node ``j % nodes`` over ZAP, each starting its next
workflow as soon as the previous result arrived (closed loop), for
``--duration`` s after a warm-up that is not counted. Per row: workflows/s
(results ÷ wall time), client-side p50/p99/max of start → result, errors, CPU
per workflow of the nodes, the workers and this process (utime+stime from
``/proc/<pid>/stat``, the workers with their children), "other" CPU
(``/proc/stat`` busy time minus all of those: another job on the machine), and
the server's ``tasks_commands_applied_total`` per workflow by op. Ratios
durable ÷ task-style per system and client count. The anchor from the issue
(Restate ≈ 50 ms for a 3-step fsynced workflow) is printed as a reference,
not measured here. The JSON report goes to ``bench/results/workflows-<time>.json``
unless ``--json`` says otherwise.

Every process started here is stopped in ``finally`` blocks (SIGTERM, then
SIGKILL) and dies with this process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hanzo_tasks.workflow import activity, workflow

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
NAMESPACE = "bench"  # bench.dispatch.prepare_namespace creates it with apsLimit 0
QUEUE = "wf-bench"
DURABLE = "bench-durable-3"
TASK_STYLE = "bench-task-style-3"
KINDS = {"durable": DURABLE, "task-style": TASK_STYLE}
LEVELS = (1, 16, 64)
QUICK_LEVELS = (1, 16)
SYSTEMS = ("single", "cluster")
SYSTEM_LABEL = {"single": "1 node", "cluster": "3 nodes"}
ACTIVITY_TIMEOUT = timedelta(seconds=30)
RESULT_TIMEOUT_S = 60.0
WORKER_READY_S = 90.0
STOP_S = 10.0
OTHER_BUSY_PCT = 10.0
ANCHOR = ("reference, not measured here: Restate ≈ 50 ms end to end for a 3-step "
          "workflow with fsync (issue 15's anchor)")

Json = dict[str, Any]


# ---------------------------------------------------------------------------
# the workload: three trivial activities, two ways to call them


@activity
def bench_step_one(x: int) -> int:
    return x + 1


@activity
def bench_step_two(x: int) -> int:
    return x + 1


@activity
def bench_step_three(x: int) -> int:
    return x + 1


STEPS = (bench_step_one, bench_step_two, bench_step_three)


@workflow(name=DURABLE)
async def durable_three_steps(x: int) -> int:
    """The durable way: each await is a command in history, replayed after a crash."""
    for step in STEPS:
        x = await workflow.execute_activity(step, x, start_to_close_timeout=ACTIVITY_TIMEOUT)
    return x


def task_style_three_steps(x: int) -> int:
    """The task-style way: one handler call holds its workflow task for all three calls."""
    import hanzo_tasks as tasks

    ctx = tasks.context()
    for step in STEPS:
        x = ctx.execute_activity(step.__name__, x, start_to_close=ACTIVITY_TIMEOUT)  # type: ignore[union-attr]
    return x


# ---------------------------------------------------------------------------
# worker processes (``python -m bench.workflows --role worker``)


def role_worker(a: argparse.Namespace) -> int:
    import hanzo_tasks as tasks

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    client = tasks.Client(zap_addr=a.zap, namespace=a.namespace, task_queue=a.queue)
    worker = tasks.Worker(client, a.queue, max_concurrent=a.slots, max_concurrent_activities=a.slots,
                          workflows=[durable_three_steps], activities=list(STEPS))
    worker.register(TASK_STYLE, task_style_three_steps)
    try:
        worker.start()
        os.write(a.ready_fd, f"R {os.getpid()}\n".encode())
        os.close(a.ready_fd)
        stop.wait()
    finally:
        with contextlib.suppress(Exception):
            worker.stop(5.0)
        with contextlib.suppress(Exception):
            client.stop(2.0)
    return 0


class Workers:
    """``n`` worker processes, each reporting ready through a pipe, each with a log file."""

    def __init__(self, n: int, zaps: Sequence[str], slots: int, log_dir: Path) -> None:
        self.n, self.zaps, self.slots, self.log_dir = n, list(zaps), slots, log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self) -> None:
        from bench.dispatch import _clean_env
        from bench.single_node import _die_with_parent

        self.log_dir.mkdir(parents=True, exist_ok=True)
        pipes: list[int] = []
        for i in range(self.n):
            r, w = os.pipe()
            log = self.log_dir / f"worker-{i}.log"
            self.logs.append(log)
            cmd = [sys.executable, "-m", "bench.workflows", "--role", "worker", "--ready-fd", str(w),
                   "--zap", self.zaps[i % len(self.zaps)], "--queue", QUEUE,
                   "--namespace", NAMESPACE, "--slots", str(self.slots)]
            try:
                with open(log, "wb") as out:
                    self.procs.append(subprocess.Popen(
                        cmd, cwd=REPO_ROOT, env=_clean_env(), stdin=subprocess.DEVNULL, stdout=out,
                        stderr=subprocess.STDOUT, pass_fds=(w,), preexec_fn=_die_with_parent))
            finally:
                os.close(w)
            pipes.append(r)
        deadline = time.monotonic() + WORKER_READY_S
        try:
            for i, r in enumerate(pipes):
                line = b""
                while not line.endswith(b"\n"):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"worker {i} not ready after {WORKER_READY_S:g}s\n{self.tail()}")
                    chunk = os.read(r, 64)
                    if not chunk:
                        raise RuntimeError(f"worker {i} exited before it was ready\n{self.tail()}")
                    line += chunk
        finally:
            for r in pipes:
                os.close(r)

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

    def stop(self) -> list[int | None]:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_S
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        return [p.returncode for p in self.procs]


# ---------------------------------------------------------------------------
# one row: N closed-loop clients for a while


@dataclass
class Row:
    system: str
    kind: str  # "durable" | "task-style"
    clients: int
    seconds: float
    completed: int
    errors: dict[str, int]
    workflows_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    cpu_ms_per_wf: dict[str, float | None]  # nodes, workers, bench, and their sum
    cpu_pct: dict[str, float | None]  # the same in % of one core, plus other
    commands_per_wf: dict[str, float]
    first_error: str | None = None


@dataclass
class Ratio:
    system: str
    clients: int
    workflows_per_s: float | None  # durable ÷ task-style: < 1 means durable is slower
    p50: float | None  # > 1 means durable takes longer
    p99: float | None
    cpu_per_wf: float | None  # summed over nodes + workers + bench


@dataclass
class Report:
    command: str
    started: str
    machine: Json
    settings: Json
    anchor: str = ANCHOR
    rows: list[Row] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    startup_seconds: dict[str, float] = field(default_factory=dict)
    node_logs: dict[str, Json] = field(default_factory=dict)
    worker_logs: dict[str, list[str]] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 2)


def closed_loop(clients: Sequence[Any], n: int, wf: str, seconds: float, tag: str
                ) -> tuple[list[float], Counter[str], str | None, float]:
    """``n`` threads, each start → result back to back for ``seconds``: (latencies, errors,
    first error text, wall time from the first start to the last answer)."""
    lat: list[float] = []
    errors: Counter[str] = Counter()
    first: list[str] = []
    lock = threading.Lock()
    t_start = time.monotonic()
    deadline = t_start + seconds
    ends: list[float] = []

    def loop(j: int) -> None:
        client = clients[j % len(clients)]
        k = 0
        while time.monotonic() < deadline:
            k += 1
            t0 = time.monotonic()
            try:
                out = client.start(wf, 1, id=f"{tag}-{j}-{k}", task_queue=QUEUE).result(RESULT_TIMEOUT_S)
                if out != 4:
                    raise ValueError(f"result {out!r}, expected 4")
            except Exception as e:  # noqa: BLE001 - every failure is counted, none stops the row
                with lock:
                    errors[type(e).__name__] += 1
                    if not first:
                        first.append(f"{type(e).__name__}: {e}"[:300])
                continue
            t1 = time.monotonic()
            with lock:
                lat.append(t1 - t0)
                ends.append(t1)

    threads = [threading.Thread(target=loop, args=(j,), daemon=True) for j in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = (max(ends) if ends else time.monotonic()) - t_start
    return lat, errors, first[0] if first else None, wall


def measure_row(system: Any, label: str, kind: str, n: int, clients: Sequence[Any],
                workers: Workers, a: argparse.Namespace) -> Row:
    from bench.cluster import machine_busy
    from bench.dispatch import _children, server_probe, tree_cpu
    from bench.single_node import percentile

    wf = KINDS[kind]
    tag = f"{label.replace(' ', '')}-{kind}-c{n}-{os.getpid()}"
    closed_loop(clients, n, wf, a.warmup, f"{tag}-warm")
    node_pids = [nd.proc.pid for nd in system.nodes if nd.proc is not None]
    groups = {"nodes": node_pids, "workers": workers.pids}
    kids = _children()
    cpu0 = {k: tree_cpu(v, kids) for k, v in groups.items()}
    busy0 = machine_busy()
    probe0 = server_probe(system)
    self0 = time.process_time()
    lat, errors, first, wall = closed_loop(clients, n, wf, a.duration, tag)
    self1 = time.process_time()
    kids = _children()
    used = {k: tree_cpu(v, kids) - cpu0[k] for k, v in groups.items()}
    busy1 = machine_busy()
    probe1 = server_probe(system)
    used["bench"] = self1 - self0
    used["sum"] = sum(used.values())
    done = len(lat)
    per_wf: dict[str, float | None] = {k: round(v / done * 1000, 3) if done else None for k, v in used.items()}
    pct: dict[str, float | None] = {k: round(v / wall * 100, 1) if wall > 0 else None for k, v in used.items()}
    pct["other"] = (None if busy0 is None or busy1 is None or wall <= 0 else
                    round(max(0.0, busy1 - busy0 - used["sum"]) / wall * 100, 1))
    applied = {op: round((v - probe0["applied"].get(op, 0)) / done, 2)
               for op, v in sorted(probe1["applied"].items())
               if done and v - probe0["applied"].get(op, 0) > 0}
    lat.sort()
    return Row(system=system.kind, kind=kind, clients=n, seconds=round(wall, 3), completed=done,
               errors=dict(errors), workflows_per_s=round(done / wall, 1) if wall > 0 and done else None,
               p50_ms=_ms(percentile(lat, 0.5)), p99_ms=_ms(percentile(lat, 0.99)),
               max_ms=_ms(lat[-1] if lat else None), cpu_ms_per_wf=per_wf, cpu_pct=pct,
               commands_per_wf=applied, first_error=first)


def _progress(r: Row) -> None:
    print(f"  {SYSTEM_LABEL[r.system]:<7} {r.kind:<10} {r.clients:>3} clients: "
          f"{r.workflows_per_s} wf/s  p50 {r.p50_ms} ms  p99 {r.p99_ms} ms  "
          f"cpu {r.cpu_ms_per_wf.get('sum')} ms/wf  other {r.cpu_pct.get('other')}%"
          + (f"  errors {r.errors}" if r.errors else ""), file=sys.stderr)


def run_system(kind: str, root: Path, a: argparse.Namespace, report: Report) -> None:
    import hanzo_tasks as tasks

    from bench.cluster import log_summary
    from bench.dispatch import _log_findings, start_system, zap_addr_of

    label = SYSTEM_LABEL[kind]
    print(f"{label}: starting ...", file=sys.stderr)
    t0 = time.monotonic()
    try:
        system = start_system(kind, root, a)
    except (RuntimeError, OSError) as e:
        report.errors.append(f"{label} did not start: {e}")
        return
    report.startup_seconds[label] = round(time.monotonic() - t0, 1)
    workers: Workers | None = None
    clients: list[Any] = []
    try:
        zaps = [zap_addr_of(n.log_path) for n in system.nodes]
        clients = [tasks.Client(zap_addr=z, namespace=NAMESPACE, task_queue=QUEUE) for z in zaps]
        workers = Workers(a.workers, zaps, a.slots, root / f"logs-{kind}")
        workers.start()
        for n in a.levels:
            for wf_kind in a.kinds:
                try:
                    row = measure_row(system, label, wf_kind, n, clients, workers, a)
                except (RuntimeError, OSError) as e:
                    report.errors.append(f"{label} {wf_kind} {n} clients: {type(e).__name__}: {e}")
                    continue
                report.rows.append(row)
                _progress(row)
    except (RuntimeError, OSError) as e:
        report.errors.append(f"{label}: {type(e).__name__}: {e}")
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                c.stop(2.0)
        if workers is not None:
            for i, code in enumerate(workers.stop()):
                if code not in (0, None):
                    report.exit_codes[f"{label} worker {i}"] = code
            report.worker_logs[label] = _log_findings(workers.logs)
        codes = system.stop()
        report.exit_codes.update({f"{label}/{k}": v for k, v in codes.items() if v not in (0, None)})
        levels, top = log_summary(system.nodes)
        report.node_logs[label] = {"levels": levels, "top": top}


# ---------------------------------------------------------------------------
# report


def _div(x: float | None, y: float | None) -> float | None:
    return None if x is None or not y else round(x / y, 2)


def ratios(rows: Sequence[Row]) -> list[Ratio]:
    out = []
    by = {(r.system, r.kind, r.clients): r for r in rows}
    for (system, kind, n), dur in by.items():
        base = by.get((system, "task-style", n))
        if kind != "durable" or base is None:
            continue
        out.append(Ratio(system=system, clients=n,
                         workflows_per_s=_div(dur.workflows_per_s, base.workflows_per_s),
                         p50=_div(dur.p50_ms, base.p50_ms), p99=_div(dur.p99_ms, base.p99_ms),
                         cpu_per_wf=_div(dur.cpu_ms_per_wf.get("sum"), base.cpu_ms_per_wf.get("sum"))))
    return out


def _f(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def render(rep: Report) -> str:
    from bench.single_node import _table

    m, s = rep.machine, rep.settings
    lines = [
        "durable workflows benchmark: 3 activities end to end (client start -> handle.result)",
        f"machine : {m['cores']} cores, {m['cpu']}; {m['os']}; Python {m['python']}; load {m['load_average']}",
        f"disk    : {m['filesystem']}",
        f"settings: durability {s['durability']}, {s['workers']} worker processes x {s['slots']} slots, "
        f"{s['duration']:g} s a row after {s['warmup']:g} s warm-up, clients {s['levels']}",
        f"command : {rep.command}",
        "",
        f"anchor  : {rep.anchor}",
        "",
    ]
    headers = ["system", "kind", "clients", "wf/s", "p50 ms", "p99 ms", "max ms", "errors",
               "CPU ms/wf sum", "nodes", "workers", "bench", "other %"]
    rows = []
    for r in rep.rows:
        c = r.cpu_ms_per_wf
        rows.append([SYSTEM_LABEL[r.system], r.kind, str(r.clients), _f(r.workflows_per_s),
                     _f(r.p50_ms), _f(r.p99_ms), _f(r.max_ms), str(sum(r.errors.values())),
                     _f(c.get("sum"), 2), _f(c.get("nodes"), 2), _f(c.get("workers"), 2),
                     _f(c.get("bench"), 2), _f(r.cpu_pct.get("other"))])
    lines += _table(headers, rows)
    if rep.ratios:
        lines += ["", "durable ÷ task-style (same system, same clients; wf/s < 1 = durable slower, "
                  "p50/p99/CPU > 1 = durable costlier)"]
        lines += _table(["system", "clients", "wf/s", "p50", "p99", "CPU/wf"],
                        [[SYSTEM_LABEL[x.system], str(x.clients), _f(x.workflows_per_s, 2), _f(x.p50, 2),
                          _f(x.p99, 2), _f(x.cpu_per_wf, 2)] for x in rep.ratios])
    cmd_lines = [f"  {SYSTEM_LABEL[r.system]} {r.kind} {r.clients}: "
                 + ", ".join(f"{op} {v:g}" for op, v in r.commands_per_wf.items())
                 for r in rep.rows if r.commands_per_wf]
    if cmd_lines:
        lines += ["", "commands applied per workflow (tasks_commands_applied_total delta ÷ completed)"]
        lines += cmd_lines
    firsts = [f"  {SYSTEM_LABEL[r.system]} {r.kind} {r.clients}: {r.first_error}" for r in rep.rows
              if r.first_error]
    if firsts:
        lines += ["", "first error of each row with errors:"] + firsts
    for label, logs in rep.node_logs.items():
        if logs.get("top"):
            lines += ["", f"node log lines ({label}): {logs.get('levels')}"]
            lines += [f"  {t}" for t in logs["top"][:6]]
    for label, found in rep.worker_logs.items():
        if found:
            lines += ["", f"worker log lines ({label}):"] + [f"  {t}" for t in found]
    if rep.exit_codes:
        lines += ["", f"non-zero exit codes: {rep.exit_codes}"]
    for note in rep.notes:
        lines += ["", f"note: {note}"]
    for err in rep.errors:
        lines += ["", f"ERROR: {err}"]
    return "\n".join(lines)


def machine_info(tmp: Path) -> Json:
    import platform

    from bench.single_node import cpu_model, filesystem_of

    load = "?"
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {"cores": os.cpu_count() or 0, "cpu": cpu_model(), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}", "load_average": load,
            "tmp_dir": str(tmp), "filesystem": filesystem_of(tmp)}


def _csv(kind: type, allowed: Sequence[Any] | None = None):  # type: ignore[no-untyped-def]
    def parse(text: str) -> list[Any]:
        vals = [kind(x) for x in text.split(",") if x.strip()]
        if not vals or (allowed is not None and any(v not in allowed for v in vals)):
            raise argparse.ArgumentTypeError(f"{text!r}: a comma list" +
                                             (f" of {', '.join(map(str, allowed))}" if allowed else ""))
        return vals
    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.workflows", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="clients 1,16; 2 s a row")
    p.add_argument("--levels", type=_csv(int), help="client counts (default 1,16,64; quick 1,16)")
    p.add_argument("--duration", type=float, help="seconds a row (default 10, quick 2)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up a row (default 2, quick 0.5)")
    p.add_argument("--systems", type=_csv(str, SYSTEMS), default=list(SYSTEMS))
    p.add_argument("--kinds", type=_csv(str, tuple(KINDS)), default=list(KINDS),
                   help="durable,task-style (both by default)")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--slots", type=int, default=64, help="workflow and activity slots per worker")
    p.add_argument("--durability", choices=("sync", "nosync"), default="sync")
    p.add_argument("--json", help="report path (default bench/results/workflows-<UTC time>.json)")
    p.add_argument("--tmp-dir", help="where node data lives (which disk is measured)")
    p.add_argument("--keep", action="store_true", help="keep node data and logs")
    # worker role (internal)
    p.add_argument("--role", choices=("worker",), help=argparse.SUPPRESS)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--zap", help=argparse.SUPPRESS)
    p.add_argument("--queue", default=QUEUE, help=argparse.SUPPRESS)
    p.add_argument("--namespace", default=NAMESPACE, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.levels = a.levels or list(QUICK_LEVELS if a.quick else LEVELS)
    a.duration = a.duration if a.duration is not None else (2.0 if a.quick else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (0.5 if a.quick else 2.0)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    from bench.single_node import _on_sigterm

    a = parse_args(argv)
    if a.role == "worker":
        return role_worker(a)
    signal.signal(signal.SIGTERM, _on_sigterm)
    root = Path(tempfile.mkdtemp(prefix="tasks-bench-workflows-", dir=a.tmp_dir))
    started = datetime.now(UTC)
    report = Report(
        command=" ".join([Path(sys.executable).name, "-m", "bench.workflows",
                          *(argv if argv is not None else sys.argv[1:])]),
        started=started.isoformat(timespec="seconds"), machine=machine_info(root),
        settings={"levels": a.levels, "duration": a.duration, "warmup": a.warmup, "systems": a.systems,
                  "kinds": a.kinds, "workers": a.workers, "slots": a.slots, "durability": a.durability})
    print(ANCHOR, file=sys.stderr)
    try:
        for name in SYSTEMS:
            if name in a.systems:
                run_system(name, root, a, report)
    finally:
        if a.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    report.ratios = ratios(report.rows)
    busy = [f"{SYSTEM_LABEL[r.system]} {r.kind} {r.clients} ({r.cpu_pct['other']:.0f}%)" for r in report.rows
            if r.cpu_pct.get("other") is not None and (r.cpu_pct["other"] or 0) > OTHER_BUSY_PCT]
    if busy:
        report.notes.append(f"other processes used more than {OTHER_BUSY_PCT:.0f}% of a core during: "
                            f"{', '.join(busy)}; those rows are suspect (compare rows of one run only)")
    print(render(report))
    path = Path(a.json) if a.json else RESULTS_DIR / f"workflows-{started:%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(f"\nwrote {path}", file=sys.stderr)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
