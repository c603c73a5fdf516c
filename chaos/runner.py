"""One chaos run, start to finish.

    start nodes (+ proxies) -> set up namespaces, registers, schedules
    -> start workers -> workload || scenario (faults) for ``duration``
    -> heal everything -> wait ready -> quiesce (schedules caught up and
    paused, jobs finished, workers stopped) -> wait until replicas applied
    the same index -> read every node's replica -> SIGTERM all
    -> hash every replica -> check -> report

Every step is bounded; whatever happens, the ``finally`` kills the node
process groups and the worker process this run started, and frees its ports.
Exit status: 0 no anomaly, 1 anomalies, 2 the harness could not do its job
(cluster never ready, setup failed): then nothing was proven either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaos import collect, monitor, procs, recheck
from chaos import report as R
from chaos.checker import (
    CheckResult,
)
from chaos.hashes import replica_digests
from chaos.history import History
from chaos.layout import Layout, holders_by_namespace
from chaos.nodes import NodeOptions, NodeProcess
from chaos.scenarios import SCENARIOS, WINDOW_SCENARIOS, ScenarioContext
from chaos.testbed import Testbed
from chaos.windows import excused, tally
from chaos.workload import (
    IDLE_QUEUE,
    JOB_TYPE,
    QUEUE,
    SCHED_NS,
    TICK_TYPE,
    Workload,
    WorkloadConfig,
    pick_namespaces,
)

REPO = Path(__file__).resolve().parent.parent
NS = "/v1/tasks/namespaces"
READY_TIMEOUT = 90.0
QUIESCE_SCHEDULES = 30.0
QUIESCE_JOBS = 60.0
CONVERGE_TIMEOUT = 60.0
EXIT_OK, EXIT_ANOMALIES, EXIT_ERROR = 0, 1, 2


class HarnessError(Exception):
    """The harness could not set up or observe the cluster (exit 2)."""


@dataclass
class RunConfig:
    scenario: str
    nodes: int = 3
    duration: float = 30.0
    seed: int = 1
    out: Path | None = None
    dir: Path | None = None
    partitions: int = 4
    clients_per_node: int = 2
    raft_args: list[str] = field(default_factory=list)
    keep: bool = False
    quiet: bool = False
    stale_reads: bool = False
    with_migration: bool = False
    #: ``--replication-factor`` of every node (the server default is 3).
    replication_factor: int = 3

    def command(self) -> str:
        parts = ["python", "-m", "chaos", "run", "--scenario", self.scenario, "--nodes", str(self.nodes)]
        if self.replication_factor != 3 or self.nodes != 3:
            parts += ["--replication-factor", str(self.replication_factor)]
        parts += ["--duration", f"{self.duration:g}", "--seed", str(self.seed)]
        if self.partitions != 4:
            parts += ["--partitions", str(self.partitions)]
        if self.clients_per_node != 2:
            parts += ["--clients-per-node", str(self.clients_per_node)]
        if self.stale_reads:
            parts += ["--stale-reads"]
        if self.with_migration:
            parts += ["--with-migration"]
        return shlex.join(parts)


def _run_dir(cfg: RunConfig) -> tuple[Path, bool]:
    """The run directory, and whether we created it (then it may be removed on success)."""
    if cfg.dir is not None:
        d = cfg.dir
        if d.exists() and any(d.iterdir()):
            raise HarnessError(f"--dir {d} is not empty (a run needs fresh node data)")
        d.mkdir(parents=True, exist_ok=True)
        return d, False
    return Path(tempfile.mkdtemp(prefix=f"chaos-{cfg.scenario}-{cfg.seed}-")), True


def _scrubbed_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("TASKSD_", "TASKS_"))}


def start_workers(tb: Testbed, namespaces: list[str], root: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "chaos.workerproc", "--queue", QUEUE, "--log", str(root / "workers.jsonl")]
    for node in tb.nodes:
        cmd += ["--zap", f"{node.node_id}={node.spec.zap_addr}"]
    for ns in namespaces:
        cmd += ["--namespace", ns]
    log = open(root / "workers.log", "ab")
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_scrubbed_env(), cwd=str(REPO), start_new_session=True)
    finally:
        log.close()
    procs.register(proc.pid)
    return proc


def stop_workers(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    if proc is None:
        return
    if proc.poll() is not None:
        procs.forget(proc.pid)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    if proc.poll() is not None:
        procs.forget(proc.pid)


class Run:
    """The state of one run, so that the ``finally`` can clean up whatever exists."""

    def __init__(self, cfg: RunConfig) -> None:
        if cfg.scenario not in SCENARIOS:
            raise HarnessError(f"unknown scenario {cfg.scenario!r}; try: python -m chaos list")
        self.cfg = cfg
        self.sdef = SCENARIOS[cfg.scenario]
        self.root, self.own_dir = _run_dir(cfg)
        self.rnd = random.Random(cfg.seed)
        self.history = History(self.root / "history.jsonl")
        self.namespaces = pick_namespaces(cfg.partitions)
        self.phases: dict[str, float] = {}
        self.notes: list[str] = []
        self.tb: Testbed | None = None
        self.workers: subprocess.Popen[bytes] | None = None
        self.ctx: ScenarioContext | None = None
        #: Wall time (ms) up to which every schedule slot was due when the run quiesced.
        self.due_until_ms: int | None = None
        #: Nodes that never answered /readyz after the heal (checked as an anomaly;
        #: the other checks go on with the nodes that did).
        self.unrecovered: list[str] = []
        #: Replica sets and namespace placement read after the heal (None: not read yet / no answer).
        self.layout: Layout | None = None
        self.report: dict[str, Any] = {
            "scenario": cfg.scenario, "seed": cfg.seed, "nodes": cfg.nodes,
            "replication_factor": cfg.replication_factor, "partitions": cfg.partitions,
            "duration": cfg.duration, "run_dir": str(self.root), "command": cfg.command(),
            "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "namespaces": self.namespaces, "result": "error", "skipped": None, "error": None,
        }

    def log(self, msg: str) -> None:
        if not self.cfg.quiet:
            print(f"[chaos {self.cfg.scenario} +{self.history.now():6.1f}s] {msg}", file=sys.stderr, flush=True)

    def _phase(self, name: str, t0: float) -> None:
        self.phases[name] = round(time.monotonic() - t0, 2)

    # ------------------------------------------------------------ the run

    async def execute(self) -> dict[str, Any]:
        t_all = time.monotonic()
        try:
            await self._execute()
        except HarnessError as e:
            self.report["error"] = str(e)
        except Exception as e:
            self.report["error"] = f"{type(e).__name__}: {e}"
            self.notes.append(traceback.format_exc())
        finally:
            stop_workers(self.workers)
            if self.tb is not None:
                with contextlib.suppress(Exception):
                    await self.tb.close()
            self.history.close()
        self.report["phases"] = self.phases
        self.report["elapsed_s"] = round(time.monotonic() - t_all, 1)
        self.report["notes"] = self.notes + (self.ctx.notes if self.ctx else [])
        anomalies = self.report.get("anomalies", [])
        if self.report["error"]:
            self.report["result"] = "error"
        elif anomalies:
            self.report["result"] = "anomalies"
        else:
            self.report["result"] = "skipped" if self.report.get("skipped") else "ok"
        self._write()
        return self.report

    def _write(self) -> None:
        text = json.dumps(self.report, indent=2, default=str)
        (self.root / "report.json").write_text(text)
        if self.cfg.out is not None:
            self.cfg.out.parent.mkdir(parents=True, exist_ok=True)
            self.cfg.out.write_text(text)

    async def _execute(self) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        self.tb = tb = Testbed(self.root, cfg.nodes, partitions=cfg.partitions,
                               raft_args=[*cfg.raft_args, *self.sdef.node_args],
                               replication_factor=cfg.replication_factor)
        if self.sdef.node_env is not None:
            for nid, env in self.sdef.node_env(tb).items():
                tb.normal[nid] = NodeOptions(list(tb.normal[nid].extra_args), {**tb.normal[nid].env, **env})
        initial = self.sdef.initial(tb.ids, self.rnd, _expected_layout(tb)) if self.sdef.initial else {}
        self.log(f"starting {cfg.nodes} nodes (replication factor {cfg.replication_factor}) in {self.root}")
        try:
            await tb.start(initial, READY_TIMEOUT)
        except RuntimeError as e:
            raise HarnessError(str(e)) from None
        layout = await tb.layout()
        self.report["layout"] = layout.to_json() if layout is not None else None
        if layout is not None and not tb.full_replication and layout.full(tb.ids):
            self.notes.append(f"--replication-factor {cfg.replication_factor} < --nodes {cfg.nodes}, yet every "
                              f"node holds every partition: {layout.to_json()['replicas']}")
        self._phase("start", t0)

        t0 = time.monotonic()
        wcfg = WorkloadConfig(self.namespaces, clients_per_node=cfg.clients_per_node,
                              payload_bytes=self.sdef.payload_bytes, stale_reads=cfg.stale_reads)
        workload = Workload(tb.api, tb.targets(), wcfg, self.history, cfg.seed)
        if not await workload.setup():
            raise HarnessError(f"setup failed: {workload.setup_errors}")
        self.workers = start_workers(tb, [*self.namespaces, SCHED_NS], self.root)
        self._phase("setup", t0)

        t0 = time.monotonic()
        self.log(f"workload + scenario for {cfg.duration:g}s")
        ctx = self.ctx = ScenarioContext(tb, self.rnd, cfg.duration, self.history, self.namespaces,
                                         started=self.history.now(), with_migration=cfg.with_migration,
                                         workload=workload)
        stop = asyncio.Event()
        mon_stop = asyncio.Event()
        timeline: list[dict[str, Any]] = []
        self.report["timeline"] = timeline
        self.report["workload_started_at"] = round(ctx.started, 3)
        mon = asyncio.create_task(monitor.watch(tb, self.history, mon_stop, timeline), name="monitor")
        wl = asyncio.create_task(workload.run(stop), name="workload")
        sc = asyncio.create_task(self.sdef.run(ctx), name="scenario")
        try:
            await asyncio.wait_for(asyncio.shield(sc), cfg.duration + 180.0)
        except TimeoutError:
            sc.cancel()
            self.notes.append("scenario did not finish in time; cancelled")
        except Exception as e:
            self.notes.append(f"scenario failed: {type(e).__name__}: {e}")
            self.notes.append(traceback.format_exc())
        await ctx.at(cfg.duration)
        stop.set()
        try:
            await asyncio.wait_for(wl, 60.0)
        except TimeoutError:
            self.notes.append("workload clients did not stop within 60s")
        self._phase("workload", t0)
        if workload.errors:
            self.notes.append(f"workload client errors ({len(workload.errors)}): {workload.errors[:5]}")
        self.log(f"healing; {sum(workload.stats.values())} ops; faults: {[f.kind for f in ctx.faults]}")

        t0 = time.monotonic()
        await ctx.heal_all()
        tb.reap()
        for node in tb.nodes:  # a node that died on its own is restarted too
            if not node.running:
                self.notes.append(f"{node.node_id} was not running after the scenario; restarted")
                await tb.restart(node)
        missing = await tb.wait_ready(READY_TIMEOUT)
        mon_stop.set()
        await asyncio.gather(mon, return_exceptions=True)
        self.unrecovered = missing
        if len(missing) == len(tb.nodes):
            raise HarnessError(f"no node ready {READY_TIMEOUT:.0f}s after the heal")
        self._phase("heal", t0)

        t0 = time.monotonic()
        self.report["quiesce"] = await self._quiesce(wcfg)
        stop_workers(self.workers)
        self._phase("quiesce", t0)

        t0 = time.monotonic()
        conv = await tb.wait_converged(CONVERGE_TIMEOUT)
        self.report["convergence"] = conv
        if not conv.get("converged"):
            self.notes.append(f"replicas did not report equal applied indexes within {CONVERGE_TIMEOUT:.0f}s")
        self._phase("converge", t0)

        t0 = time.monotonic()
        self.log("reading every replica")
        observed = await self._collect()
        self._phase("collect", t0)

        t0 = time.monotonic()
        tb.reap()
        self.report["exit_codes"] = codes = await tb.stop_clean()
        unclean = {n: c for n, c in codes.items() if c != 0}
        if unclean:
            self.notes.append(f"SIGTERM did not end every node with exit 0 (SPEC §10.2; None = SIGKILLed "
                              f"after 40s): {unclean}")
        replicas = self.layout.replicas if self.layout is not None else None
        digests = await asyncio.to_thread(replica_digests, self.root, tb.ids, cfg.partitions, replicas)
        self._phase("stop", t0)

        self.log("checking")
        t0 = time.monotonic()
        checks = self._check(observed, digests)
        self._phase("check", t0)
        self._fill(checks, digests)

    def _ready_nodes(self) -> list[NodeProcess]:
        assert self.tb is not None
        return [n for n in self.tb.nodes if n.node_id not in self.unrecovered] or list(self.tb.nodes)

    # ------------------------------------------------------------ quiesce

    async def _quiesce(self, wcfg: WorkloadConfig) -> dict[str, Any]:
        """Let schedules reach now, pause them, let jobs finish: then nothing proposes any more."""
        assert self.tb is not None
        tb = self.tb
        url = self._ready_nodes()[0].spec.http_url
        out: dict[str, Any] = {}
        target_ms = int(time.time() * 1000) - 1000
        self.due_until_ms = target_ms
        deadline = time.monotonic() + QUIESCE_SCHEDULES
        lagging = [s.schedule_id for s in wcfg.schedules]
        while lagging and time.monotonic() < deadline:
            still = []
            for sid in lagging:
                rep = await tb.api.get(url, f"{NS}/{SCHED_NS}/schedules/{sid}")
                recent = (rep.body or {}).get("info", {}).get("recentActions", []) if rep.ok else []
                latest = max((collect.parse_time_ms(a["scheduleTime"]) for a in recent), default=0)
                if latest < target_ms:
                    still.append(sid)
            lagging = still
            if lagging:
                await asyncio.sleep(0.5)
        if lagging:
            out["schedules_lagging"] = lagging
        out["schedules_wait_s"] = round(QUIESCE_SCHEDULES - max(0.0, deadline - time.monotonic()), 2)
        paused = []
        for s in wcfg.schedules:
            end = time.monotonic() + QUIESCE_SCHEDULES
            while time.monotonic() < end:
                ready = self._ready_nodes()
                node = ready[len(paused) % len(ready)]
                rep = await tb.api.post(node.spec.http_url, f"{NS}/{SCHED_NS}/schedules/{s.schedule_id}/pause",
                                        {"note": "chaos: quiesce"})
                if rep.ok:
                    paused.append(s.schedule_id)
                    break
                await asyncio.sleep(0.3)
        out["paused"] = paused
        if len(paused) != len(wcfg.schedules):
            self.notes.append(f"could not pause every schedule: paused {paused}")
        jobs_from = time.monotonic()
        deadline = jobs_from + QUIESCE_JOBS
        open_runs: dict[str, int] = {}
        while time.monotonic() < deadline:
            open_runs = {}
            for ns, typ in [*((ns, JOB_TYPE) for ns in wcfg.namespaces), (SCHED_NS, TICK_TYPE)]:
                q = f"ExecutionStatus='Running' AND WorkflowType='{typ}'"
                runs = await collect.list_runs(tb.api, url, ns, query=q, stale=False)
                open_runs[ns] = -1 if runs is None else len(runs)
            if all(v == 0 for v in open_runs.values()):
                break
            await asyncio.sleep(1.0)
        out["jobs_wait_s"] = round(time.monotonic() - jobs_from, 2)
        out["open_runs_left"] = {k: v for k, v in open_runs.items() if v}
        if out["open_runs_left"]:
            self.notes.append(f"runs still open {QUIESCE_JOBS:.0f}s after the heal (workers on queue "
                              f"{QUEUE!r}; {IDLE_QUEUE!r} has none by design): {out['open_runs_left']}")
        return out

    # ------------------------------------------------------------ collect

    async def _collect(self) -> dict[str, Any]:
        assert self.tb is not None
        tb = self.tb
        nodes = {n.node_id: n.spec.http_url for n in self._ready_nodes()}
        all_ns = [*self.namespaces, SCHED_NS]
        # Where each namespace lives now (migrations included): with R < N a node
        # is read only for the namespaces its own replicas hold.
        self.layout = layout = await tb.layout()
        holders = None
        if not tb.full_replication:
            if layout is None:
                raise HarnessError("no node answered GET /v1/tasks/cluster after the heal (replica sets unknown)")
            holders = holders_by_namespace(layout, all_ns, tb.ids)
            self.report["holders"] = holders
        if layout is not None:
            self.report["layout_after"] = layout.to_json()
        rbn, errors = await collect.runs_by_node(tb.api, nodes, all_ns, holders)
        if not rbn:
            raise HarnessError(f"no node could list its workflows after the heal: {errors}")
        ref = next(iter(rbn))
        runs = collect.merged_runs(rbn, ref, holders)
        hists, herr = await collect.histories(tb.api, nodes[ref], runs)
        scheds, serr = await collect.schedules(tb.api, nodes[ref], WorkloadConfig(self.namespaces).schedules,
                                               runs, due_until_ms=self.due_until_ms)
        errs = errors + herr + serr
        if errs:
            self.notes.append(f"collection incomplete: {errs[:10]}")
        observed = {"reference_node": ref, "runs_by_node": rbn, "histories": hists, "schedules": scheds,
                    "holders": holders}
        return observed

    # ------------------------------------------------------------ check

    def _check(self, observed: dict[str, Any], digests: dict[str, Any]) -> list[CheckResult]:
        regs = set(WorkloadConfig(self.namespaces).registers())
        with contextlib.suppress(Exception):
            recheck.save(self.root, observed, digests, regs)
        results = recheck.data_checks(list(self.history.ops), observed["runs_by_node"], observed["histories"],
                                      observed["schedules"], digests, regs, observed.get("holders"))
        if self.tb is not None:
            self.tb.reap()
            processes = CheckResult("processes", checked=len(self.tb.nodes))
            for node in self.unrecovered:
                processes.flag("not-ready-after-heal", f"{node} did not answer /readyz {READY_TIMEOUT:.0f}s after the "
                           f"heal (its reads were left out): {self.tb.by_id[node].log_tail(300)!r}", node=node)
            excuses = self.ctx.excuses if self.ctx is not None else []
            for node, crashes in self.tb.crashes().items():
                for c in crashes:
                    last = [ln for ln in str(c.get("log", "")).splitlines() if ln.strip()][-3:]
                    why = excused(node, float(c.get("mono", 0.0)) - self.history.t0, excuses)
                    if why is not None:
                        processes.notes.append(f"{node} exited on its own with code {c['code']} (start "
                                               f"#{c['start']}), excused: {why.why}: {' | '.join(last)[:300]}")
                        continue
                    processes.flag("node-exited", f"{node} exited on its own with code {c['code']} (start #{c['start']}, "
                               f"not signalled by the harness): {' | '.join(last)[:400]}", node=node, **c)
            results.append(processes)
        if self.ctx is not None and self.ctx.anomalies:
            extra = CheckResult(self.cfg.scenario, checked=1)
            extra.anomalies = list(self.ctx.anomalies)
            results.append(extra)
        return results

    def _fill(self, checks: list[CheckResult], digests: dict[str, Any]) -> None:
        ctx = self.ctx
        assert ctx is not None
        ops = list(self.history.ops)
        self.report["skipped"] = ctx.skipped
        self.report["faults"] = [asdict(f) for f in ctx.faults]
        self.report["events"] = ctx.events
        self.report["episodes"] = ctx.episodes
        if self.cfg.scenario in WINDOW_SCENARIOS or self.cfg.scenario == "mixed":
            names = WINDOW_SCENARIOS if self.cfg.scenario == "mixed" else (self.cfg.scenario,)
            self.report["windows"] = tally(ctx.episodes, names)
        self.report["operations"] = R.operation_counts(ops)
        self.report["operations_checked"] = sum(c.checked for c in checks)
        self.report["availability"] = R.availability(ops, ctx.faults, ctx.started, ctx.started + self.cfg.duration)
        self.report["checks"] = [c.to_json() for c in checks]
        self.report["anomalies"] = [a for c in checks for a in c.to_json()["anomalies"]]
        self.report["replicas"] = {
            p: {n: {**d, "hash": str(d.get("hash", ""))[:16]} for n, d in by.items()} for p, by in digests.items()
        }
        self.report["workers"] = R.worker_stats(self.root / "workers.jsonl")
        proxy = self.tb.hub.stats if self.tb is not None else {}
        self.report["proxy"] = {f"{a}->{b}": asdict(s) for (a, b), s in sorted(proxy.items())}


def _expected_layout(tb: Testbed) -> dict[int, list[str]] | None:
    """The replica sets the cluster will record at bootstrap (None: every node
    holds every partition, or the server's layout function cannot be used).

    Scenarios that choose a node before it starts (the disk-full victim) need
    them; the cluster's own answer is recorded in the report once it runs.
    """
    if tb.full_replication:
        return None
    try:
        from hanzo_tasks.cluster.replica_sets import bootstrap_layout

        sets = bootstrap_layout(tb.partitions, tb.ids, tb.replication_factor, "tasks")
    except Exception:
        return None
    return dict(enumerate(sets))


def run(cfg: RunConfig) -> tuple[int, dict[str, Any]]:
    """Run one scenario; returns (exit status, report). Prints the summary on stdout."""
    try:
        r = Run(cfg)
    except HarnessError as e:
        print(f"chaos: {e}", file=sys.stderr)
        return EXIT_ERROR, {"scenario": cfg.scenario, "result": "error", "error": str(e)}
    report = asyncio.run(r.execute())
    if report["result"] == "error":
        code = EXIT_ERROR
    elif report["result"] == "anomalies":
        code = EXIT_ANOMALIES
    else:
        code = EXIT_OK
    if code == EXIT_OK and r.own_dir and not cfg.keep:
        shutil.rmtree(r.root, ignore_errors=True)
        report["run_dir"] = f"{r.root} (removed: no anomaly; --keep keeps it)"
    print(R.summary(report), flush=True)
    return code, report
