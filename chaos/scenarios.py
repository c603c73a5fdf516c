"""The scenarios: when to inject which fault, while the workload runs.

A scenario is an async function of a ``ScenarioContext``. It runs alongside
the workload for ``duration`` seconds (the workload keeps going after the
scenario's last heal, so the cluster must serve again before the end), and
must leave every fault healed: the runner heals anything left over anyway.

Timing and choices come from ``ctx.rnd`` (``random.Random(seed)``): a seed
reproduces which node is hit, when, for how long, by what.

With ``--replication-factor`` below ``--nodes`` a partition lives on some
nodes only: whatever concerns "the nodes of partition p" (its leader, a full
node's partitions, a migration's source and destination) comes from the
replica sets the cluster reports (``Testbed.layout``, ``chaos.layout``).
With R >= N every choice is the one made before replica sets existed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.api import Reply
from chaos.checker import Anomaly
from chaos.faults import (
    ClockSkew,
    Fault,
    FaultRecord,
    IsolateNode,
    JournalFull,
    KillAll,
    KillInWindow,
    KillNode,
    PauseNode,
    RestartNode,
    RestartNormal,
    ThrottleLinks,
    journal_full_env,
    watch_phase,
)
from chaos.history import History
from chaos.layout import Layout, choose_destination, most_loaded
from chaos.nodes import NodeOptions
from chaos.testbed import Testbed
from chaos.windows import (
    Excuse,
    balanced,
    fewest_led,
    followed,
    leaderless_stretches,
    metric_value,
    namespaces_in,
    pick_episode,
)

READY_TIMEOUT = 90.0
#: The tiny LMDB map of the disk-full scenario's victim, and the workload
#: payload that fills it within seconds.
TINY_MAP = ["--storage-map-size", "1MiB", "--storage-map-size-max", "1MiB"]
TINY_MAP_BYTES = 1 << 20
DISK_FULL_PAYLOAD = 16_000


@dataclass
class ScenarioContext:
    tb: Testbed
    rnd: random.Random
    duration: float
    history: History
    namespaces: list[str]
    started: float = 0.0  # history time when the workload started
    faults: list[FaultRecord] = field(default_factory=list)
    active: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    skipped: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    with_migration: bool = False
    """Start a namespace migration right before each fault (``--with-migration``)."""
    #: The run's workload (its start/register helpers record into the history); set by the runner.
    workload: Any = None
    #: The Raft-window episodes run (``chaos.windows.tally`` counts them for the report).
    episodes: list[dict[str, Any]] = field(default_factory=list)
    #: Exits a node may make on its own without it being an anomaly (``chaos.windows.Excuse``).
    excuses: list[Excuse] = field(default_factory=list)
    #: A counter for unique workflow ids and values across episodes.
    serial: int = 0

    def elapsed(self) -> float:
        return self.history.now() - self.started

    async def at(self, t: float) -> None:
        """Sleep until ``t`` seconds after the workload started."""
        delay = t - self.elapsed()
        if delay > 0:
            await asyncio.sleep(delay)

    def warmup(self) -> float:
        return min(max(2.0, 0.2 * self.duration), 10.0)

    def hold(self) -> float:
        return max(2.0, 0.4 * self.duration)

    async def inject(self, fault: Fault) -> Fault:
        fault.record.injected_at = round(self.history.now(), 3)
        self.faults.append(fault.record)
        self.active.append(fault)
        await fault.inject(self.tb)
        return fault

    async def heal(self, fault: Fault, wait_ready: bool = True) -> None:
        if fault not in self.active:
            return
        self.active.remove(fault)
        await fault.heal(self.tb)
        fault.record.healed_at = round(self.history.now(), 3)
        if wait_ready:
            t0 = time.monotonic()
            missing = await self.tb.wait_ready(READY_TIMEOUT)
            if missing:
                fault.record.notes.append(f"not ready {READY_TIMEOUT:.0f}s after heal: {missing}")
            else:
                fault.record.ready_after_s = round(time.monotonic() - t0, 2)

    def healed_by_hand(self, fault: Fault, note: str) -> None:
        """The scenario undid ``fault`` itself (e.g. the killed node came back as a new member)."""
        if fault in self.active:
            self.active.remove(fault)
            fault.record.healed_at = round(self.history.now(), 3)
            fault.record.notes.append(note)

    async def heal_all(self) -> None:
        """Heal whatever is still injected (in reverse order); used by the runner too."""
        for fault in reversed(list(self.active)):
            try:
                await self.heal(fault, wait_ready=False)
            except Exception as e:  # keep healing the others
                self.notes.append(f"heal of {fault.kind} failed: {e}")


Scenario = Callable[[ScenarioContext], Awaitable[None]]


@dataclass(frozen=True)
class ScenarioDef:
    name: str
    doc: str
    run: Scenario
    #: Node id -> options the node *starts* with (before any fault), given the
    #: node ids, the run's rng and the replica sets the cluster will bootstrap
    #: with (None when every node holds every partition, or unknown).
    initial: Callable[[list[str], random.Random, dict[int, list[str]] | None],
                      dict[str, NodeOptions]] | None = None
    payload_bytes: int = 0
    #: Extra ``tasksd serve`` arguments of every node, every start (e.g. a small ``--raft-snapshot-every``).
    node_args: tuple[str, ...] = ()
    #: Per node, environment of its *normal* configuration (e.g. the journal ENOSPC shim).
    node_env: Callable[[Testbed], dict[str, dict[str, str]]] | None = None
    #: The scenario's body as a step ``mixed`` can take: ``episode(ctx, budget_s)``.
    episode: Callable[[ScenarioContext, float], Awaitable[None]] | None = None
    #: About how long one episode takes (s): ``mixed`` runs it only with that much time left.
    episode_time: float = 0.0


async def _one_fault(ctx: ScenarioContext, make: Callable[[], Awaitable[Fault]], hold: float | None = None) -> None:
    await ctx.at(ctx.warmup())
    job = await _migration_in_flight(ctx) if ctx.with_migration else None
    fault = await ctx.inject(await make())
    await ctx.at(ctx.warmup() + (ctx.hold() if hold is None else hold))
    await ctx.heal(fault)
    if job:
        await _finish_migration(ctx, job)


async def _migration_in_flight(ctx: ScenarioContext) -> str | None:
    """Start moving a random namespace to a random other node; the job id (None: not started).

    With R < N, to another *partition*, one whose replica set differs from the
    source's when there is one (``chaos.layout.choose_destination``), so that
    the data changes machines.
    """
    ns = ctx.rnd.choice(ctx.namespaces)
    plan = await _plan_subset_migration(ctx, ns) if not ctx.tb.full_replication else None
    if plan is not None:
        body, where = plan
        to_node = where["to"]
    else:
        to_node = ctx.rnd.choice(ctx.tb.ids)
        body, where = {"toNode": to_node}, {"to": to_node}
    rep = await _start_migration(ctx, ns, body)
    job_id = rep.body.get("id") if rep is not None and rep.ok and isinstance(rep.body, dict) else None
    ctx.events.append({"t": round(ctx.history.now(), 3), "migration": job_id, "ns": ns, **where,
                       "answer": rep.brief() if rep is not None else None, "with_fault": True})
    return job_id


async def _plan_subset_migration(ctx: ScenarioContext, ns: str,
                                 layout: Layout | None = None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """With R < N: (``{"toPartition": dst}``, what to record) for moving ``ns``
    to a partition on other machines; None when the layout is unknown.

    ``to`` in the record is the destination partition's leader (the node a
    ``toNode`` migration would have named), ``from`` the source's.
    """
    tb = ctx.tb
    layout = layout or await tb.layout()
    if layout is None:
        ctx.notes.append(f"migration of {ns}: no node reported the replica sets; migrating with toNode")
        return None
    src = layout.namespaces.get(ns)
    if src is None:
        src = await tb.partition_of_namespace(ns)
    if src is None or src not in layout.replicas:
        ctx.notes.append(f"migration of {ns}: its partition is unknown; migrating with toNode")
        return None
    dst = choose_destination(layout.replicas, src, ctx.rnd)
    if dst is None:
        return None
    _, leaders = await tb.leaders()
    to_node = leaders.get(dst) or ctx.rnd.choice(sorted(layout.replicas[dst]))
    from_node = leaders.get(src) or ctx.rnd.choice(sorted(layout.replicas[src]))
    where = {"from": from_node, "to": to_node, "fromPartition": src, "toPartition": dst,
             "fromReplicas": list(layout.replicas[src]), "toReplicas": list(layout.replicas[dst])}
    return {"toPartition": dst}, where


async def _finish_migration(ctx: ScenarioContext, job_id: str) -> None:
    """Every job ends done or failed (never stuck) once the fault is healed."""
    job = await _wait_job(ctx, job_id, timeout=60.0)
    ctx.events.append({"t": round(ctx.history.now(), 3), "migration": job_id, "final": job})
    if job is None or job.get("status") not in ("done", "failed"):
        ctx.notes.append(f"migration {job_id} not finished 60s after heal: {job}")


async def kill_meta_leader(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        return KillNode([await ctx.tb.meta_leader(ctx.rnd)], role="meta-leader")
    await _one_fault(ctx, make)


async def kill_partition_leaders(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        return KillNode([await ctx.tb.busiest_leader(ctx.rnd)], role="partition-leader")
    await _one_fault(ctx, make)


async def pause_leader(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        return PauseNode([await ctx.tb.busiest_leader(ctx.rnd)], role="partition-leader")
    await _one_fault(ctx, make)


async def restart_one(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        return RestartNode([ctx.rnd.choice(ctx.tb.ids)])
    await _one_fault(ctx, make, hold=min(ctx.hold(), 3.0))


async def restart_all(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        return KillAll(list(ctx.tb.ids))
    await _one_fault(ctx, make, hold=ctx.rnd.uniform(1.0, 3.0))


async def partition_leader(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        return IsolateNode([await ctx.tb.busiest_leader(ctx.rnd)], mode="hold")
    await _one_fault(ctx, make)


async def partition_leader_drop(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        return IsolateNode([await ctx.tb.busiest_leader(ctx.rnd)], mode="drop")
    await _one_fault(ctx, make)


async def stale_leader(ctx: ScenarioContext) -> None:
    """A register namespace's partition leader is cut off from its peers (sockets
    kept, frames held) while the others elect a new leader and take writes. In a
    loop, a fresh value is written through a node of the majority and, once
    acknowledged, the same register is read on the cut-off node: a leader that
    served the read without confirming its leadership (ReadIndex) or without a
    barrier entry would answer with the value before, and the register check
    would report the stale read. Reads there must fail (or, after the old
    leader learned the new term, be served after catching up) instead."""
    await ctx.at(ctx.warmup())
    _, leaders, placement = await _where(ctx)
    ns = ctx.rnd.choice([n for n in ctx.namespaces if n in placement] or ctx.namespaces)
    part = placement.get(ns)
    victim = leaders.get(part) if part is not None else None
    if victim is None:
        victim = await ctx.tb.busiest_leader(ctx.rnd)
        ctx.notes.append(f"stale-leader: {ns}'s leader unknown; cutting off {victim}")
    tools = _tools(ctx)
    ids = list(ctx.tb.ids)
    cut, majority = ids.index(victim), [i for i, n in enumerate(ids) if n != victim]
    ctx.serial += 1
    episode = ctx.serial  # in every value: the checker ties a value to one write
    fault = await ctx.inject(IsolateNode([victim], mode="hold"))
    fault.record.params["namespace"] = ns
    end = ctx.warmup() + ctx.hold()
    n = written = answered = refused = 0
    while ctx.elapsed() < end:
        n += 1
        wid = f"reg-{n % tools.cfg.registers_per_ns}"
        try:
            w = await tools.write_register(850, ctx.rnd.choice(majority), ns, wid, f"sl-{episode}-{n}")
            if w.outcome == "ok":
                written += 1
                r = await tools.read_register(851, cut, ns, wid)
                answered += r.outcome == "ok"
                refused += r.outcome != "ok"
        except Exception as e:  # noqa: BLE001 - recorded, the loop goes on
            ctx.notes.append(f"stale-leader: {type(e).__name__}: {e}")
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.05)
    fault.record.notes.append(f"{written} writes acknowledged by the majority, then read on {victim}: "
                              f"{answered} answered, {refused} refused")
    await ctx.heal(fault)


async def clock_skew(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        skew = ctx.rnd.choice((-1, 1)) * ctx.rnd.randint(5, 30) * 1000
        return ClockSkew([await ctx.tb.busiest_leader(ctx.rnd)], skew_ms=skew)
    await _one_fault(ctx, make)


def _tiny_map_victim(ids: list[str], rnd: random.Random,
                     layout: dict[int, list[str]] | None = None) -> dict[str, NodeOptions]:
    """Any node; with R < N one of those holding the most partitions (a node
    with no partition could only fill its meta group)."""
    pool = ids if layout is None else most_loaded(layout, ids)
    return {rnd.choice(pool): NodeOptions(extra_args=list(TINY_MAP))}


def _filled(root: Path, node: str, partitions: int | list[int]) -> list[str]:
    """Partitions of ``node`` whose LMDB file reached the tiny map's size.

    ``partitions``: a partition count (every partition), or the partitions
    ``node`` holds a replica of (R < N); the meta group always.
    """
    held = range(partitions) if isinstance(partitions, int) else partitions
    out = []
    for p in [*(str(i) for i in held), "meta"]:
        try:
            size = (root / node / "partitions" / p / "data.mdb").stat().st_size
        except OSError:
            continue
        if size >= 0.9 * TINY_MAP_BYTES:
            out.append(p)
    return out


async def disk_full(ctx: ScenarioContext) -> None:
    """The victim started with a 1 MiB map; the workload's big payloads fill it.

    While full, the cluster must keep serving through the other replicas,
    and the victim must say ``storage_full`` in its cluster health. Healing
    restarts it with the normal map size, and it must catch up. With R < N
    only the partitions the victim holds a replica of can fill.
    """
    tb = ctx.tb
    victim = next(nid for nid in tb.ids if tb.normal[nid].extra_args != tb.by_id[nid].options.extra_args)
    held: int | list[int] = tb.partitions
    if not tb.full_replication:
        layout = await tb.layout()
        if layout is not None:
            held = layout.partitions_of(victim)
        else:
            ctx.notes.append("disk-full: no node reported the replica sets; watching every partition directory")
    fault = await ctx.inject(RestartNormal([victim], map_size_max=TINY_MAP[-1]))
    if not isinstance(held, int):
        fault.record.params["partitions"] = held
        if not held:
            ctx.notes.append(f"disk-full: {victim} holds no partition replica; only its meta group can fill")
    end = ctx.warmup() + ctx.hold()
    filled_at: float | None = None
    reported_at: float | None = None
    reasons: list[Any] = []
    while ctx.elapsed() < end:
        filled = _filled(tb.root, victim, held)
        if filled and filled_at is None:
            filled_at = round(ctx.elapsed(), 2)
            fault.record.notes.append(f"partitions {filled} of {victim} full at +{filled_at}s")
        health = await tb.health(tb.by_id[victim])
        if health is not None:
            reasons = health.get("reasons") or []
            if any(r.get("reason") == "storage_full" for r in reasons if isinstance(r, dict)):
                if reported_at is None:
                    reported_at = round(ctx.elapsed(), 2)
                    fault.record.notes.append(f"{victim} health reports storage_full at +{reported_at}s")
                if filled_at is not None:
                    break
        await asyncio.sleep(0.5)
    refused = sum(1 for op in ctx.history.ops for a in op.attempts if a.get("status") == 507)
    fault.record.params["writes_refused_507"] = refused
    if filled_at is None and not refused:
        ctx.notes.append("disk-full: the victim's map never filled (nothing to prove)")
    elif reported_at is None:
        ctx.anomalies.append(Anomaly(
            "disk-full", "health-missing-storage-full",
            f"{victim}'s LMDB is full (partitions {_filled(tb.root, victim, held)}, {refused} writes "
            f"answered 507) but GET /v1/tasks/cluster/health never reported storage_full (last reasons: {reasons})",
            {"node": victim},
        ))
    await ctx.at(end)
    await ctx.heal(fault)


async def migration(ctx: ScenarioContext) -> None:
    """A namespace migration in flight during a fault: its source leader or its target is
    killed, or the source is cut off, right after the job starts or before it starts.
    Skipped (not an anomaly) while the server has no migration route."""
    tb, rnd = ctx.tb, ctx.rnd
    await ctx.at(ctx.warmup())
    ns = rnd.choice(ctx.namespaces)
    plan = await _plan_subset_migration(ctx, ns) if not tb.full_replication else None
    if plan is not None:
        # R < N: to another partition, on other machines when possible; the
        # "target" is the destination partition's leader.
        body, where = plan
        source, to_node = where["from"], where["to"]
    else:
        _, leaders = await tb.leaders()
        part = await tb.partition_of_namespace(ns)
        source = leaders.get(part if part is not None else -1) or rnd.choice(tb.ids)
        to_node = rnd.choice([n for n in tb.ids if n != source])
        body, where = {"toNode": to_node}, {"from": source, "to": to_node}
    how = rnd.choice(("kill-source", "kill-target", "isolate-source"))
    when = rnd.choice(("after-start", "before-start"))
    fault: Fault
    if how == "kill-source":
        fault = KillNode([source], role="migration-source", namespace=ns)
    elif how == "kill-target":
        fault = KillNode([to_node], role="migration-target", namespace=ns)
    else:
        fault = IsolateNode([source], mode="hold")
    fault.record.params["when"] = when
    if when == "before-start":
        await ctx.inject(fault)
        await asyncio.sleep(1.0)
    rep = await _start_migration(ctx, ns, body)
    if rep is None or rep.status in (404, 405, 501, 503) and (rep.status != 404 or _no_route(rep)):
        if rep is None or rep.status != 503 or when == "after-start":
            ctx.skipped = "migration not available"
            ctx.notes.append(f"skipped: migration not available ({rep.brief() if rep else 'no answer'})")
            await ctx.heal(fault)
            return
    if when == "after-start":
        await ctx.inject(fault)  # at once: the job is still snapshotting or catching up
    job_id = rep.body.get("id") if rep is not None and rep.ok and isinstance(rep.body, dict) else None
    ctx.events.append({"t": round(ctx.history.now(), 3), "migration": job_id, "ns": ns, **where,
                       "answer": rep.brief() if rep is not None else None})
    await ctx.at(ctx.warmup() + ctx.hold())
    await ctx.heal(fault)
    if job_id:
        job = await _wait_job(ctx, job_id, timeout=60.0)
        ctx.events.append({"t": round(ctx.history.now(), 3), "migration": job_id, "final": job})
        if job is None or job.get("status") not in ("done", "failed"):
            ctx.notes.append(f"migration {job_id} not finished 60s after heal: {job}")


async def _start_migration(ctx: ScenarioContext, ns: str, body: dict[str, Any]) -> Reply | None:
    """POST migrate (``{"toNode": n}`` or ``{"toPartition": p}``) on the running nodes in turn,
    through elections (503), for up to ~10 s."""
    rep: Reply | None = None
    for attempt in range(20):
        node = ctx.tb.nodes[attempt % len(ctx.tb.nodes)]
        if not node.running or node.paused:
            continue
        rep = await ctx.tb.api.post(node.spec.http_url, f"/v1/tasks/namespaces/{ns}/migrate", body)
        if rep.status is not None and rep.status != 503:
            return rep
        await asyncio.sleep(0.5)
    return rep


def _no_route(rep: Reply) -> bool:
    msg = rep.body.get("message", "") if isinstance(rep.body, dict) else ""
    return "no route" in msg


async def _wait_job(ctx: ScenarioContext, job_id: str, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        for node in ctx.tb.nodes:
            if not node.running:
                continue
            rep = await ctx.tb.api.get(node.spec.http_url, f"/v1/tasks/migrations/{job_id}")
            if rep.ok and isinstance(rep.body, dict):
                job = rep.body
                if job.get("status") in ("done", "failed"):
                    return job
                break
        await asyncio.sleep(0.5)
    return job


# --------------------------------------------------------------------------- Raft windows (issue 23)
#
# Each of these is an *episode* (``episode(ctx, budget)``): a few faults
# aimed at one narrow window of the replication layer, injected and healed
# within ``budget`` seconds, with a record in ``ctx.episodes`` of whether
# the window was reached. Run alone (``python -m chaos run --scenario …``)
# a scenario is its episode after the warm-up; ``mixed`` (and so ``long``)
# interleaves them with the plain faults. The nodes of these runs compact
# often (``WINDOW_ARGS``), so that a few seconds of writes move a group's
# log start past a follower that is held behind.

#: Log entries between compaction snapshots in the window scenarios (the server's default is 10000).
SNAPSHOT_EVERY = 50
WINDOW_ARGS = ("--raft-snapshot-every", str(SNAPSHOT_EVERY))
#: ``mixed``/``long``: compaction often enough for the episodes, not so often that it dominates a long run.
MIXED_ARGS = ("--raft-snapshot-every", "200")
#: A ballast start's input size and an episode's cap: large entries and large LMDB images.
BALLAST_PAYLOAD = 192 * 1024
BALLAST_CAP = 48 << 20
BALLAST_TYPE = "chaos.ballast"
#: How long a window episode waits for a node to catch up before it says it did not.
CATCH_UP = 60.0
#: A partition with a live majority that stays without a leader this long, while replica sets are
#: rebuilt around a dead member, is a liveness anomaly (elections take well under a second).
LEADERLESS_LIMIT = 20.0


def _episode(ctx: ScenarioContext, name: str, **info: Any) -> dict[str, Any]:
    ep: dict[str, Any] = {"scenario": name, "t0": round(ctx.history.now(), 3), "reached": False, **info}
    ctx.episodes.append(ep)
    return ep


async def _all_healthy(ctx: ScenarioContext, name: str) -> bool:
    """Every node ready (waiting up to 30 s). An episode that takes one more node out of a
    cluster where another is already down (in ``mixed``, a node an earlier fault left
    crash-looping) only measures a lost majority: it is skipped and says so."""
    if not await ctx.tb.wait_ready(30.0):
        return True
    sick = sorted(set(ctx.tb.ids) - await _healthy(ctx))
    if not sick:
        return True
    ep = _episode(ctx, name, skipped=f"nodes not ready: {sick}")
    _done(ctx, ep)
    ctx.notes.append(f"{name}: skipped, nodes not ready 30 s before it: {sick}")
    return False


def _done(ctx: ScenarioContext, ep: dict[str, Any]) -> None:
    ep["t1"] = round(ctx.history.now(), 3)


def _tools(ctx: ScenarioContext) -> Any:
    """The run's workload (recording helpers); a private one when the runner gave none (tests)."""
    if ctx.workload is None:
        from chaos.workload import Workload, WorkloadConfig

        ctx.workload = Workload(ctx.tb.api, ctx.tb.targets(), WorkloadConfig(ctx.namespaces), ctx.history,
                                ctx.rnd.randrange(1 << 30))
    return ctx.workload


async def _where(ctx: ScenarioContext) -> tuple[dict[str, list[int]], dict[int, str], dict[str, int]]:
    """(node -> partitions it holds, partition -> leader, namespace -> partition), as the cluster says now."""
    tb = ctx.tb
    layout = await tb.layout()
    _, leaders = await tb.leaders()
    if layout is not None:
        holding = {n: layout.partitions_of(n) for n in tb.ids}
        placement = dict(layout.namespaces)
    else:
        holding = {n: list(range(tb.partitions)) for n in tb.ids}
        placement = {}
    for ns in ctx.namespaces:
        if ns not in placement:
            p = await tb.partition_of_namespace(ns)
            if p is not None:
                placement[ns] = p
    return holding, leaders, placement


async def _healthy(ctx: ScenarioContext) -> set[str]:
    """The nodes running, not frozen, and answering /readyz 200 (an episode's victims come from these:
    in ``mixed`` an earlier fault may have left one crash-looping)."""
    nodes = [n for n in ctx.tb.nodes if n.running and not n.paused]
    ok = await asyncio.gather(*(ctx.tb.ready(n) for n in nodes))
    return {n.node_id for n, good in zip(nodes, ok, strict=True) if good}


async def _metric(ctx: ScenarioContext, node_id: str, name: str, **labels: str) -> float | None:
    node = ctx.tb.by_id[node_id]
    if not node.running or node.paused:
        return None
    text = await ctx.tb.api.text(node.spec.http_url, "/metrics")
    return None if text is None else metric_value(text, name, **labels)


async def _snapshots(ctx: ScenarioContext, nodes: list[str], direction: str) -> dict[str, float]:
    """Per node, its ``tasks_raft_snapshots`` counter (``taken`` or ``installed``; process-local)."""
    out = {}
    for n in nodes:
        v = await _metric(ctx, n, "tasks_raft_snapshots", direction=direction)
        if v is not None:
            out[n] = v
    return out


def _delta(before: dict[str, float], after: dict[str, float]) -> float:
    return sum(max(0.0, after[n] - before.get(n, 0.0)) for n in after)


class Ballast:
    """Large workflow starts into chosen namespaces, recorded in the history like every start.

    Type ``chaos.ballast`` on the idle queue (no worker runs them: they only
    make the log and the LMDB images big), ids ``big-…``, each retried with
    its requestId like the workload's starts, so the acknowledged-starts
    check covers them. The input is incompressible, ``BALLAST_PAYLOAD``
    bytes; one writer per namespace (at most three), ``cap`` bytes in all.
    """

    def __init__(self, ctx: ScenarioContext, namespaces: list[str], *, payload: int = BALLAST_PAYLOAD,
                 cap: int = BALLAST_CAP, avoid: set[str] | None = None) -> None:
        self.ctx = ctx
        self.namespaces = list(dict.fromkeys(namespaces))[:3] or list(ctx.namespaces[:1])
        self.payload = payload
        self.cap = cap
        #: Nodes not to send to first (held behind: a frozen node would hold a writer for its timeout).
        self.avoid = avoid or set()
        self.bytes = 0
        self.stats: dict[str, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._writer(i, ns, stop) for i, ns in enumerate(self.namespaces)))

    async def _writer(self, i: int, ns: str, stop: asyncio.Event) -> None:
        from chaos.workload import IDLE_QUEUE

        ctx = self.ctx
        tools = _tools(ctx)
        rnd = random.Random(ctx.rnd.randrange(1 << 30))
        client = 900 + i
        while not stop.is_set() and self.bytes < self.cap:
            ctx.serial += 1
            k = ctx.serial
            self.bytes += self.payload
            pad = rnd.randbytes(self.payload // 2).hex()
            homes = [i for i, n in enumerate(ctx.tb.nodes) if n.running and not n.paused
                     and n.node_id not in self.avoid] or list(range(len(ctx.tb.nodes)))
            try:
                op = await tools.start_workflow(client, rnd.choice(homes), rnd, ns, f"big-{k}",
                                                f"bq-{k}", {"k": k, "pad": pad}, wtype=BALLAST_TYPE,
                                                queue=IDLE_QUEUE)
                self.stats[op.outcome] = self.stats.get(op.outcome, 0) + 1
            except Exception as e:  # a harness bug must not stop the episode
                ctx.notes.append(f"ballast writer: {type(e).__name__}: {e}")
                await asyncio.sleep(0.5)
            await asyncio.sleep(0.02)


async def _ballast_until(ctx: ScenarioContext, ballast: Ballast, until: Callable[[], Awaitable[bool]],
                         deadline: float, at_least_bytes: int = 0) -> Ballast:
    """Run ``ballast`` until it sent ``at_least_bytes`` and ``until()`` says enough (checked
    each second), or its cap, or ``deadline``."""
    stop = asyncio.Event()
    task = asyncio.create_task(ballast.run(stop))
    try:
        while ctx.elapsed() < deadline:  # the ballast may reach its cap first: the hold goes on
            await asyncio.sleep(1.0)
            if ballast.bytes >= at_least_bytes and await until():
                break
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    return ballast


async def _caught_up(ctx: ScenarioContext, node: str, partitions: list[int], timeout: float) -> float | None:
    """Seconds until ``node`` applied, in each of ``partitions``, what the other replicas had
    committed when asked; None when it did not within ``timeout``."""
    tb = ctx.tb
    t0 = time.monotonic()
    target: dict[int, int] = {}
    while time.monotonic() - t0 < timeout:
        views = await tb.views()
        if not target:
            for p in partitions:
                commits = [v.commit[p] for v in views if v.node_id != node and p in v.local and p in v.commit]
                if commits:
                    target[p] = max(commits)
        mine = next((v for v in views if v.node_id == node), None)
        if target and mine is not None and all(mine.applied.get(p, -1) >= c for p, c in target.items()):
            return round(time.monotonic() - t0, 2)
        await asyncio.sleep(0.5)
    return None


async def _held_behind(ctx: ScenarioContext, name: str) -> tuple[str, list[int], list[str], list[str]]:
    """(a node to hold behind, the partitions it follows, their namespaces, the other replicas)."""
    holding, leaders, placement = await _where(ctx)
    healthy = await _healthy(ctx)
    victim = fewest_led({n: ps for n, ps in holding.items() if n in healthy}, leaders, ctx.rnd) \
        or ctx.rnd.choice(sorted(healthy) or ctx.tb.ids)
    parts = followed(holding.get(victim, []), victim, leaders)
    ns = namespaces_in(parts, placement, ctx.namespaces) or list(ctx.namespaces)
    others = sorted({n for n, ps in holding.items() if n != victim and set(ps) & set(parts)}) or \
        [n for n in ctx.tb.ids if n != victim]
    return victim, parts, ns, others


async def lagging_follower_episode(ctx: ScenarioContext, budget: float) -> None:
    """A follower is held behind (SIGSTOP, or its links held open and silent) while
    large starts make the leaders compact past it; it is then released through
    throttled links (the leaders' sends back up), so it must catch up by
    snapshot install under back-pressure."""
    name = "lagging-follower-compaction"
    if not await _all_healthy(ctx, name):
        return
    end = ctx.elapsed() + budget
    victim, parts, ns, others = await _held_behind(ctx, name)
    how = ctx.rnd.choice(("pause", "isolate"))
    ep = _episode(ctx, name, node=victim, partitions=parts, how=how)
    try:
        hold: Fault = PauseNode([victim], role="lagging-follower") if how == "pause" \
            else IsolateNode([victim], mode="hold")
        hold.record.params.update(scenario=name, partitions=parts)
        taken0 = await _snapshots(ctx, others, "taken")
        installed0 = (await _snapshots(ctx, [victim], "installed")).get(victim, 0.0)
        await ctx.inject(hold)

        held_from = ctx.elapsed()

        async def compacted_past() -> bool:
            return ctx.elapsed() - held_from >= 5.0 and \
                _delta(taken0, await _snapshots(ctx, others, "taken")) >= 2 * len(others)

        hold_until = ctx.elapsed() + max(6.0, min(0.45 * budget, 30.0))
        payload = ctx.rnd.choice((192, 768, 1536)) << 10
        ballast = Ballast(ctx, ns, payload=payload, avoid={victim})
        await _ballast_until(ctx, ballast, compacted_past, hold_until, at_least_bytes=BALLAST_CAP // 2)
        ep["ballast"] = {"namespaces": ballast.namespaces, "payload": payload,
                         "mib": round(ballast.bytes / 2**20, 1), **ballast.stats}
        ep["snapshots_taken_while_behind"] = _delta(taken0, await _snapshots(ctx, others, "taken"))
        rate = ctx.rnd.choice((1, 2, 4)) << 20
        slow = ThrottleLinks([victim], [(n, victim) for n in others], rate)
        slow.record.params["scenario"] = name
        await ctx.inject(slow)
        watch = asyncio.create_task(asyncio.to_thread(
            watch_phase, ctx.tb.by_id[victim].spec.data_dir, ("receiving", "restoring"), 20.0, None,
            {str(p) for p in parts}))
        await ctx.heal(hold, wait_ready=False)
        await asyncio.sleep(min(10.0, max(3.0, end - ctx.elapsed() - 15.0)))
        await ctx.heal(slow)
        hit = await watch
        ep["install_seen"] = hit[0] if hit else None
        ep["caught_up_after_s"] = after = await _caught_up(ctx, victim, parts, CATCH_UP)
        installed = (await _snapshots(ctx, [victim], "installed")).get(victim, installed0) - installed0
        ep["installs"] = installed
        ep["throttle_bytes_per_s"] = rate
        ep["reached"] = bool(installed > 0 or hit)
        if not ep["reached"]:
            ctx.notes.append(f"{name}: {victim} caught up without a snapshot install (window not reached)")
        if after is None:
            ctx.notes.append(f"{name}: {victim} had not caught up {CATCH_UP:.0f}s after its release "
                             f"(partitions {parts})")
    finally:
        _done(ctx, ep)


async def kill_compaction_episode(ctx: ScenarioContext, budget: float) -> None:
    """SIGKILL a node while it compacts: while it writes the new image, or right
    after the image was swapped in and before the log prefix was dropped (the
    window of issue 23 defect 1), with large starts making images and log
    entries big; restart it. The kill moment is found by polling its files
    (``chaos.windows``) every 2 ms.

    One round in two is the *exposing* variant: the partition's third replica
    is frozen first, so that the leader commits with the victim alone; when
    the victim's files show the kill fell inside the window (the image is in
    place, the journal still starts before it), the leader is SIGKILLed too
    and the victim and the frozen replica must elect a leader between them:
    if the victim forgot what it had acknowledged, acknowledged writes are
    lost and the checks say so.
    """
    name = "kill-during-compaction"
    if not await _all_healthy(ctx, name):
        return
    end = ctx.elapsed() + budget
    ep = _episode(ctx, name, kills=[])
    ballast = Ballast(ctx, list(ctx.namespaces))
    stop = asyncio.Event()
    task = asyncio.create_task(ballast.run(stop))
    try:
        rounds = 0
        while ctx.elapsed() < end - 12.0 and rounds < 3:
            rounds += 1
            holding, leaders, placement = await _where(ctx)
            expose = ctx.rnd.random() < 0.5
            record = await (_kill_compaction_exposing(ctx, name, holding, leaders, placement, end, ballast) if expose
                            else _kill_compaction_once(ctx, name, holding, end))
            ep["kills"].append(record)
            await asyncio.sleep(ctx.rnd.uniform(1.0, 3.0))
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        ep["ballast"] = {"mib": round(ballast.bytes / 2**20, 1), **ballast.stats}
        ep["reached"] = any(k.get("hit") for k in ep["kills"])
        ep["in_prefix_window"] = sum(1 for k in ep["kills"] if k.get("files") == "journal-prefix-kept")
        if not ep["reached"]:
            ctx.notes.append(f"{name}: no compaction seen on the chosen nodes (window not reached)")
        _done(ctx, ep)


async def _kill_compaction_once(ctx: ScenarioContext, name: str, holding: dict[str, list[int]],
                                end: float) -> dict[str, Any]:
    healthy = await _healthy(ctx)
    pool = [n for n in ctx.tb.ids if holding.get(n) and n in healthy] or list(ctx.tb.ids)
    target = ctx.rnd.choice(pool)
    if ctx.rnd.random() < 1 / 3:
        phases: tuple[str, ...] = ("serializing",)
        delay = ctx.rnd.uniform(0.0, 0.03)
    else:
        phases, delay = ("swapped", "dropping-prefix"), 0.0
    kill = KillInWindow([target], phases, timeout=min(20.0, max(3.0, end - ctx.elapsed() - 8.0)),
                        delay=delay, groups={str(p) for p in holding.get(target, [])}, scenario=name)
    await ctx.inject(kill)
    if kill.killed:
        await asyncio.sleep(ctx.rnd.uniform(0.5, 2.0))
    await ctx.heal(kill)
    return {"node": target, "wanted": list(phases), "hit": kill.record.params.get("hit"),
            "group": kill.record.params.get("group"),
            "files": (kill.record.params.get("files") or {}).get("state")}


async def _kill_compaction_exposing(ctx: ScenarioContext, name: str, holding: dict[str, list[int]],
                                    leaders: dict[int, str], placement: dict[str, int], end: float,
                                    ballast: Ballast) -> dict[str, Any]:
    healthy = await _healthy(ctx)
    candidates = [p for p, lead in leaders.items()
                  if lead and sum(1 for n, ps in holding.items() if p in ps and n in healthy) >= 3]
    if not candidates:
        return await _kill_compaction_once(ctx, name, holding, end)
    p = ctx.rnd.choice(sorted(candidates))
    leader = leaders[p]
    others = sorted(n for n, ps in holding.items() if p in ps and n != leader and n in healthy)
    victim, frozen = ctx.rnd.sample(others, 2)
    rec: dict[str, Any] = {"variant": "exposing", "partition": p, "node": victim, "leader": leader,
                           "frozen": frozen, "wanted": ["swapped", "dropping-prefix"]}
    pause = PauseNode([frozen], role="third-replica")
    pause.record.params["scenario"] = name
    kill = KillInWindow([victim], ("swapped", "dropping-prefix"),
                        timeout=min(15.0, max(3.0, end - ctx.elapsed() - 8.0)), groups={str(p)},
                        scenario=name, variant="exposing")
    ballast.avoid.add(frozen)
    try:
        await ctx.inject(pause)
        await ctx.inject(kill)
        rec.update(hit=kill.record.params.get("hit"), group=kill.record.params.get("group"),
                   files=(kill.record.params.get("files") or {}).get("state"))
        if rec["files"] == "journal-prefix-kept":
            lkill = KillNode([leader], role="partition-leader", scenario=name, variant="exposing")
            await ctx.inject(lkill)
            await ctx.heal(kill, wait_ready=False)
            await ctx.heal(pause, wait_ready=False)
            rec["leader_killed"] = True
            await asyncio.sleep(ctx.rnd.uniform(3.0, 6.0))  # the two elect a leader between them
            await ctx.heal(lkill)
        else:
            await ctx.heal(pause, wait_ready=False)
            await ctx.heal(kill)
    finally:
        ballast.avoid.discard(frozen)
        await ctx.heal(pause, wait_ready=False)
    return rec


async def kill_install_episode(ctx: ScenarioContext, budget: float) -> None:
    """A follower is frozen while the leaders compact past it; on SIGCONT it must
    install a snapshot, and it is SIGKILLed while it receives the image or while
    the image replaces its LMDB; restarted, it must install again and catch up."""
    name = "kill-during-install"
    if not await _all_healthy(ctx, name):
        return
    end = ctx.elapsed() + budget
    victim, parts, ns, others = await _held_behind(ctx, name)
    ep = _episode(ctx, name, node=victim, partitions=parts, kills=[])
    try:
        rounds = 2 if budget >= 35 else 1
        for r in range(rounds):
            if ctx.elapsed() > end - 15.0:
                break
            pause = PauseNode([victim], role="lagging-follower")
            pause.record.params["scenario"] = name
            taken0 = await _snapshots(ctx, others, "taken")
            await ctx.inject(pause)

            held_from = ctx.elapsed()

            async def compacted_past(taken0: dict[str, float] = taken0, held_from: float = held_from) -> bool:
                return ctx.elapsed() - held_from >= 4.0 and \
                    _delta(taken0, await _snapshots(ctx, others, "taken")) >= 2 * len(others)

            hold_until = ctx.elapsed() + max(5.0, min(0.3 * budget, 20.0))
            ballast = Ballast(ctx, ns, avoid={victim}, cap=BALLAST_CAP // 2)
            await _ballast_until(ctx, ballast, compacted_past, hold_until, at_least_bytes=BALLAST_CAP // 4)
            ep.setdefault("ballast_mib", []).append(round(ballast.bytes / 2**20, 1))
            phase = ctx.rnd.choice(("receiving", "restoring"))
            kill = KillInWindow([victim], (phase,), timeout=20.0,
                                delay=ctx.rnd.uniform(0.0, 0.3) if phase == "receiving" else 0.0,
                                groups={str(p) for p in parts}, scenario=name, round=r)
            armed = asyncio.create_task(ctx.inject(kill))
            await asyncio.sleep(0.2)  # the watcher takes its baseline before the node wakes
            await ctx.heal(pause, wait_ready=False)
            await armed
            ep["kills"].append({"wanted": phase, "hit": kill.record.params.get("hit"),
                                "group": kill.record.params.get("group")})
            if kill.killed:
                await asyncio.sleep(ctx.rnd.uniform(0.5, 2.0))
            await ctx.heal(kill)
        ep["caught_up_after_s"] = after = await _caught_up(ctx, victim, parts, CATCH_UP)
        if after is None:
            ctx.notes.append(f"{name}: {victim} had not caught up {CATCH_UP:.0f}s after the last restart")
    finally:
        ep["reached"] = any(k["hit"] for k in ep["kills"])
        if not ep["reached"]:
            ctx.notes.append(f"{name}: {victim} was never seen installing a snapshot (window not reached)")
        _done(ctx, ep)


def _enospc_hits(ctx: ScenarioContext, node: str, since: int) -> int:
    try:
        with open(ctx.tb.by_id[node].log_path, "rb") as f:
            f.seek(since)
            text = f.read()
    except OSError:
        return 0
    # The shim's line, or the journal's own report (the product's fault point raises before the shim sees a write).
    return text.count(b"chaos: ENOSPC injected") + text.count(b"No space left on device")


async def journal_full_episode(ctx: ScenarioContext, budget: float) -> None:
    """A follower's Raft journal gets ENOSPC on every write and fsync (the journal
    shim, ``chaos/preload/sitecustomize.py``) while the workload goes on; then
    the space comes back. The node may stop itself (a watchdog exiting non-zero
    is excused, and it is restarted as a supervisor would) or recover; it must
    not stay ready while it no longer replicates."""
    name = "disk-full-journal"
    if not await _all_healthy(ctx, name):
        return
    tb = ctx.tb
    victim, parts, _, _ = await _held_behind(ctx, name)
    ep = _episode(ctx, name, node=victim, partitions=parts)
    node = tb.by_id[victim]
    try:
        log_from = node.log_path.stat().st_size
    except OSError:
        log_from = 0
    excuse = Excuse(victim, round(ctx.history.now(), 3), None, "journal full: the node may stop itself")
    ctx.excuses.append(excuse)
    try:
        fault = JournalFull([victim], scenario=name, partitions=parts)
        await ctx.inject(fault)
        hold_until = ctx.elapsed() + max(5.0, min(0.4 * budget, 20.0))
        ready_while_full = 0
        exited_at = None
        while ctx.elapsed() < hold_until:
            await asyncio.sleep(1.0)
            tb.reap()
            if not node.running:
                if exited_at is None:
                    exited_at = round(ctx.history.now(), 2)
                    last = node.crashes[-1] if node.crashes else {}
                    ep["exited"] = {"at": exited_at, "code": last.get("code")}
                continue
            if await tb.ready(node) and _enospc_hits(ctx, victim, log_from):
                ready_while_full += 1
        ep["enospc_logged"] = hits = _enospc_hits(ctx, victim, log_from)
        ep["ready_seconds_while_full"] = ready_while_full
        ep["reached"] = hits > 0
        await ctx.heal(fault, wait_ready=False)
        tb.reap()
        if not node.running:
            ep.setdefault("exited", {"at": round(ctx.history.now(), 2),
                                     "code": node.crashes[-1].get("code") if node.crashes else None})
            await tb.restart(node)  # a supervisor's restart, with the space back
        after = await _caught_up(ctx, victim, parts, 30.0)
        ep["caught_up_after_s"] = after
        if after is None and node.running:
            ready = await tb.ready(node)
            ep["stalled"] = {"ready": ready}
            if ready and hits:
                ctx.anomalies.append(Anomaly(
                    name, "stalled-but-ready",
                    f"{victim}'s journal failed with ENOSPC ({hits} ENOSPC lines in its log); 30 s after the space came "
                    f"back it still had not applied what its partitions {parts} had committed, yet it answered "
                    f"/readyz 200 (a node that no longer replicates must turn not-ready or exit)",
                    {"node": victim, "partitions": parts}))
            await asyncio.to_thread(node.terminate, 15.0)
            await tb.restart(node)
            await tb.wait_ready(READY_TIMEOUT, [node])
        if not hits:
            ctx.notes.append(f"{name}: no journal write of {victim} was refused (window not reached: "
                             "was the node started with the journal shim?)")
    finally:
        excuse.end = round(ctx.history.now(), 3)
        _done(ctx, ep)


async def _leader_samples(ctx: ScenarioContext, stop: asyncio.Event,
                          out: list[tuple[float, dict[int, str | None]]]) -> None:
    while not stop.is_set():
        try:
            _, leaders = await asyncio.wait_for(ctx.tb.leaders(), 5.0)
            out.append((ctx.elapsed(), {p: leaders.get(p) for p in range(ctx.tb.partitions)}))
        except Exception:  # noqa: BLE001 - a sample missed is not a leader missed
            pass
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def _member_call(ctx: ScenarioContext, method: str, path: str, body: Any, avoid: set[str],
                       attempts: int = 3, timeout: float = 150.0) -> Reply | None:
    rep: Reply | None = None
    for _ in range(attempts):
        nodes = [n for n in ctx.tb.nodes if n.running and not n.paused and n.node_id not in avoid]
        if not nodes:
            return rep
        node = ctx.rnd.choice(nodes)
        rep = await ctx.tb.api.call(node.spec.http_url, method, path, body, timeout=timeout)
        if rep.ok:
            return rep
        await asyncio.sleep(2.0)
    return rep


async def replace_while_down_episode(ctx: ScenarioContext, budget: float) -> None:
    """Replica sets rebuilt around a dead member: one node X is SIGKILLed; while it is
    down, another member V is removed (``DELETE /v1/tasks/cluster/members/V``, the
    keeper adds a replacement to each of V's sets, then removes V) and stopped;
    V comes back as a new machine (empty data dir, ``POST /v1/tasks/cluster/members``)
    while X is still down; then X restarts. With 3 nodes V is X itself (the dead
    member is removed, then joins again). Every partition keeps a live majority
    throughout, so each must keep (or quickly regain) a leader, and all must
    converge."""
    name = "replace-while-down"
    tb = ctx.tb
    ids = list(tb.ids)
    healthy = sorted(await _healthy(ctx))
    if len(healthy) < len(ids):
        await tb.wait_ready(30.0)
        healthy = sorted(await _healthy(ctx))
    x = ctx.rnd.choice(healthy or ids)
    v = x if len(ids) < 4 else ctx.rnd.choice([n for n in (healthy or ids) if n != x])
    ep = _episode(ctx, name, down=x, replaced=v, steps=[])
    samples: list[tuple[float, dict[int, str | None]]] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_leader_samples(ctx, stop, samples))

    def step(what: str, **info: Any) -> None:
        ep["steps"].append({"t": round(ctx.history.now(), 2), "step": what, **info})

    kill = KillNode([x], role="down-during-replace", scenario=name)
    try:
        await ctx.inject(kill)
        step("killed", node=x)
        t0 = time.monotonic()
        rep = await _member_call(ctx, "DELETE", f"/v1/tasks/cluster/members/{v}", None, {v, x})
        removed = rep is not None and rep.ok and isinstance(rep.body, dict) and rep.body.get("status") == "removed"
        step("removed" if removed else "remove-failed", node=v, seconds=round(time.monotonic() - t0, 1),
             answer=rep.brief() if rep is not None else None)
        layout = await tb.layout()
        ep["layout_after_remove"] = layout.to_json()["replicas"] if layout is not None else None
        if removed:
            node = tb.by_id[v]
            if node.running:
                await asyncio.to_thread(node.terminate, 30.0)
            ctx.serial += 1
            gone = node.spec.data_dir.with_name(f"{v}.removed-{ctx.serial}")
            if node.spec.data_dir.exists():
                node.spec.data_dir.rename(gone)
            step("wiped", node=v, kept_at=gone.name)
            peer = f"127.0.0.1:{node.spec.proxy_port}"
            body = {"nodeId": v, "peer": peer, "http": f"127.0.0.1:{node.spec.http_port}", "zap": node.spec.zap_addr}
            t0 = time.monotonic()
            rep = await _member_call(ctx, "POST", "/v1/tasks/cluster/members", body, {v, x}, timeout=60.0)
            step("joined" if rep is not None and rep.ok else "join-failed", node=v,
                 seconds=round(time.monotonic() - t0, 1), answer=rep.brief() if rep is not None else None)
            await tb.restart(node)
            missing = await tb.wait_ready(READY_TIMEOUT, [node])
            step("started", node=v, ready=not missing)
            ep["reached"] = True
        if v == x and removed:
            ctx.healed_by_hand(kill, f"{x} came back as a new member (wiped, joined, started)")
        else:
            await ctx.heal(kill)
            step("restarted", node=x)
        want = len(ids)
        wait = max(30.0, min(120.0, budget))
        deadline = time.monotonic() + wait
        ok = False
        while time.monotonic() < deadline:
            layout = await tb.layout()
            members = await _members(ctx)
            if layout is not None and len(members) == want and balanced(layout.replicas, members,
                                                                        tb.replication_factor):
                ok = True
                break
            await asyncio.sleep(1.0)
        step("balanced" if ok else "not-balanced", layout=layout.to_json()["replicas"] if layout else None)
        if not ok:
            ctx.notes.append(f"{name}: replica sets not whole and balanced over {want} members within "
                             f"{wait:.0f}s of the restart")
    finally:
        stop.set()
        await asyncio.gather(sampler, return_exceptions=True)
        longest = leaderless_stretches(samples, range(tb.partitions))
        ep["longest_leaderless_s"] = longest
        for p, secs in longest.items():
            if secs > LEADERLESS_LIMIT:
                ctx.anomalies.append(Anomaly(
                    name, "leaderless",
                    f"partition {p} had no leader for {secs:.1f}s while replica sets were rebuilt around the dead "
                    f"member {x} (only one replica was ever down: a majority could always elect)",
                    {"partition": p, "seconds": secs, "down": x, "replaced": v}))
        _done(ctx, ep)


async def _members(ctx: ScenarioContext) -> list[str]:
    for node in ctx.tb.nodes:
        if not node.running or node.paused:
            continue
        rep = await ctx.tb.api.get(node.spec.http_url, "/v1/tasks/cluster?pageSize=1", timeout=3.0)
        if rep.ok and isinstance(rep.body, dict):
            return sorted(m["nodeId"] for m in rep.body.get("members") or [] if isinstance(m, dict))
    return []


async def reads_during_flips_episode(ctx: ScenarioContext, budget: float) -> None:
    """Namespaces migrate one after another (their pins flip) while extra clients
    hammer the moving namespace's registers: linearizable reads from every node,
    interleaved with writes, so that a read served by the new partition without
    a barrier (issue 23 defect 11) shows as a stale read in the register check."""
    name = "reads-during-flips"
    end = ctx.elapsed() + budget
    ep = _episode(ctx, name, flips=[])
    ctx.serial += 1
    episode = ctx.serial  # in every hammer value: the checker ties a value to one write
    tools = _tools(ctx)
    hot: dict[str, Any] = {"ns": None, "targets": list(range(len(ctx.tb.ids)))}
    stop = asyncio.Event()
    regs = [r for r in range(tools.cfg.registers_per_ns)]

    async def hammer(c: int, writer: bool) -> None:
        rnd = random.Random(f"{ctx.rnd.random()}/{c}")
        n = 0
        while not stop.is_set():
            ns = hot["ns"]
            if ns is None:
                await asyncio.sleep(0.05)
                continue
            n += 1
            wid = f"reg-{rnd.choice(regs)}"
            target = rnd.choice(hot["targets"])
            try:
                if writer:
                    # Unique across episodes and namespaces: the checker ties a value to one write.
                    await tools.write_register(c, target, ns, wid, f"h-{episode}-{ns}-{c}-{n}")
                else:
                    await tools.read_register(c, target, ns, wid)
            except Exception as e:  # noqa: BLE001
                ctx.notes.append(f"{name} client {c}: {type(e).__name__}: {e}")
                await asyncio.sleep(0.5)
            await asyncio.sleep(rnd.uniform(0.003, 0.02))

    clients = [asyncio.create_task(hammer(800 + i, writer=(i < 2))) for i in range(6)]
    try:
        while ctx.elapsed() < end - 8.0:
            ns = ctx.rnd.choice(ctx.namespaces)
            plan = await _plan_subset_migration(ctx, ns) if not ctx.tb.full_replication else None
            if plan is not None:
                body, where = plan
            else:
                _, leaders = await ctx.tb.leaders()
                part = await ctx.tb.partition_of_namespace(ns)
                src = leaders.get(part if part is not None else -1)
                to = ctx.rnd.choice([n for n in ctx.tb.ids if n != src] or ctx.tb.ids)
                body, where = {"toNode": to}, {"from": src, "to": to}
            # Reads go to the nodes holding the source or the destination (with
            # R < N a node holding neither only forwards), most of all to the
            # destination's followers, which serve the read once the pin flips.
            near = set(where.get("fromReplicas", [])) | set(where.get("toReplicas", []))
            hot["targets"] = [i for i, n in enumerate(ctx.tb.ids) if n in near] or list(range(len(ctx.tb.ids)))
            hot["ns"] = ns
            t_start = ctx.elapsed()
            rep = await _start_migration(ctx, ns, body)
            job_id = rep.body.get("id") if rep is not None and rep.ok and isinstance(rep.body, dict) else None
            flip: dict[str, Any] = {"ns": ns, **where, "job": job_id, "t": round(ctx.history.now(), 2),
                                    "answer": rep.brief() if rep is not None else None, "statuses": []}
            ep["flips"].append(flip)
            if job_id is None:
                if rep is None or rep.status in (404, 405, 501) and (rep.status != 404 or _no_route(rep)):
                    ctx.skipped = ctx.skipped or "migration not available"
                    break
                await asyncio.sleep(1.0)
                continue
            deadline = time.monotonic() + 60.0
            status = None
            while time.monotonic() < deadline:
                job = await _job(ctx, job_id)
                st = job.get("status") if job else None
                if st != status and st is not None:
                    status = st
                    flip["statuses"].append([st, round(ctx.history.now(), 2)])
                if st in ("done", "failed"):
                    flip["error"] = job.get("error") if job else None
                    break
                await asyncio.sleep(0.2)
            flip["seconds"] = round(ctx.elapsed() - t_start, 2)
            await asyncio.sleep(ctx.rnd.uniform(0.5, 1.5))
            hot["ns"] = None
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
        done = [f for f in ep["flips"] if f["statuses"] and f["statuses"][-1][0] == "done"]
        ep["flips_done"] = len(done)
        ep["hammer_ops"] = sum(1 for op in ctx.history.ops if 800 <= op.client < 900)
        ep["reached"] = bool(done)
        _done(ctx, ep)


async def _job(ctx: ScenarioContext, job_id: str) -> dict[str, Any] | None:
    for node in ctx.tb.nodes:
        if not node.running or node.paused:
            continue
        rep = await ctx.tb.api.get(node.spec.http_url, f"/v1/tasks/migrations/{job_id}", timeout=3.0)
        if rep.ok and isinstance(rep.body, dict):
            return rep.body
    return None


def _standalone(episode: Callable[[ScenarioContext, float], Awaitable[None]]) -> Scenario:
    """A window scenario run alone: its episode after the warm-up, ending before the run's last stretch."""
    async def run(ctx: ScenarioContext) -> None:
        await ctx.at(ctx.warmup())
        tail = min(10.0, 0.2 * ctx.duration)
        await episode(ctx, max(20.0, ctx.duration - ctx.elapsed() - tail))
    run.__doc__ = episode.__doc__
    return run


#: The window scenarios, in the order the report lists them.
WINDOW_SCENARIOS = ("lagging-follower-compaction", "kill-during-compaction", "kill-during-install",
                    "disk-full-journal", "replace-while-down", "reads-during-flips")


#: The menu of ``mixed``: (weight, fault maker). restart-all is rarer: it
#: takes the whole cluster away.
async def _random_fault(ctx: ScenarioContext) -> Fault:
    tb, rnd = ctx.tb, ctx.rnd
    def anyone() -> Awaitable[str]:
        return _const(rnd.choice(tb.ids))

    menu: list[tuple[int, Callable[[], Awaitable[Fault]]]] = [
        (3, lambda: _mk(KillNode, tb.busiest_leader(rnd), role="partition-leader")),
        (2, lambda: _mk(KillNode, tb.meta_leader(rnd), role="meta-leader")),
        (1, lambda: _mk(KillNode, anyone(), role="any")),
        (3, lambda: _mk(PauseNode, tb.busiest_leader(rnd), role="partition-leader")),
        (1, lambda: _mk(PauseNode, anyone(), role="any")),
        (3, lambda: _mk(IsolateNode, tb.busiest_leader(rnd), mode=rnd.choice(("hold", "hold", "drop")))),
        (1, lambda: _mk(IsolateNode, anyone(), mode=rnd.choice(("hold", "drop")))),
        (2, lambda: _mk(RestartNode, anyone())),
        (1, lambda: _mk(ClockSkew, tb.busiest_leader(rnd), skew_ms=rnd.choice((-1, 1)) * rnd.randint(2, 20) * 1000)),
        (1, lambda: _const(KillAll(list(tb.ids)))),
    ]
    weights = [w for w, _ in menu]
    _, make = rnd.choices(menu, weights)[0]
    return await make()


async def _const(x: Any) -> Any:
    return x


async def _mk(cls: Any, target: Awaitable[str], **params: Any) -> Fault:
    fault: Fault = cls([await target], **params)
    return fault


async def mixed(ctx: ScenarioContext) -> None:
    """Random faults from the menu, one at a time, until the last stretch of the run.

    Interleaved with the Raft-window episodes (``WINDOW_SCENARIOS``): each
    runs once, in a seeded order, before any repeats, as long as the time
    left holds it (``chaos.windows.pick_episode``); the report counts them.
    """
    await ctx.at(ctx.warmup())
    tail = min(10.0, 0.2 * ctx.duration)
    pending = [n for n in WINDOW_SCENARIOS if n in SCENARIOS]
    ctx.rnd.shuffle(pending)
    durations = {n: SCENARIOS[n].episode_time for n in pending}
    while ctx.elapsed() < ctx.duration - tail - 2.0:
        left = ctx.duration - tail - ctx.elapsed()
        pick = pick_episode(pending, left, durations, ctx.rnd)
        episode = SCENARIOS[pick].episode if pick else None
        if episode is not None:
            await episode(ctx, min(durations[pick], left))  # type: ignore[index]
            await asyncio.sleep(ctx.rnd.uniform(2.0, 5.0))
            continue
        job = await _migration_in_flight(ctx) if ctx.with_migration and ctx.rnd.random() < 0.5 else None
        fault = await ctx.inject(await _random_fault(ctx))
        hold = ctx.rnd.uniform(1.0, 3.0) if isinstance(fault, KillAll) else ctx.rnd.uniform(2.0, 8.0)
        await asyncio.sleep(min(hold, max(0.5, ctx.duration - tail - ctx.elapsed())))
        await ctx.heal(fault)
        if job:
            await _finish_migration(ctx, job)
        await asyncio.sleep(ctx.rnd.uniform(2.0, 5.0))


SCENARIOS: dict[str, ScenarioDef] = {s.name: s for s in (
    ScenarioDef("kill-meta-leader", "SIGKILL the meta group's leader, restart it", kill_meta_leader),
    ScenarioDef("kill-partition-leaders", "SIGKILL the node leading most partitions, restart it",
                kill_partition_leaders),
    ScenarioDef("pause-leader", "SIGSTOP the node leading most partitions, then SIGCONT", pause_leader),
    ScenarioDef("restart-one", "SIGTERM one random node (clean hand-over), start it again", restart_one),
    ScenarioDef("restart-all", "SIGKILL every node at once, restart them all", restart_all),
    ScenarioDef("partition-leader", "isolate the node leading most partitions from its peers (sockets kept "
                "open), then heal", partition_leader),
    ScenarioDef("partition-leader-drop", "isolate the busiest leader, losing every message; its connections are "
                "reset on heal", partition_leader_drop),
    ScenarioDef("stale-leader", "cut a namespace's partition leader off while the majority takes writes; read "
                "each acknowledged write back on the cut-off node (it must never answer stale)", stale_leader),
    ScenarioDef("clock-skew", "restart the busiest leader with its clock skewed by +-5..30 s, then without",
                clock_skew),
    ScenarioDef("disk-full", "one node with a 1 MiB LMDB map fills up; the rest keep serving; it restarts "
                "with a normal map and catches up", disk_full, initial=_tiny_map_victim,
                payload_bytes=DISK_FULL_PAYLOAD),
    ScenarioDef("migration", "migrate a namespace; kill its source leader or target, or isolate the source, "
                "mid-flight (skipped when the server has no migration)", migration),
    ScenarioDef("lagging-follower-compaction", "hold a follower behind (SIGSTOP or silent links) while large "
                "starts make the leaders compact past it, release it through throttled links: it must catch up "
                "by snapshot install under back-pressure", _standalone(lagging_follower_episode),
                node_args=WINDOW_ARGS, episode=lagging_follower_episode, episode_time=90.0),
    ScenarioDef("kill-during-compaction", "SIGKILL a node while it writes a compaction image, or between the "
                "image swap and the log prefix drop; restart it", _standalone(kill_compaction_episode),
                node_args=WINDOW_ARGS, episode=kill_compaction_episode, episode_time=60.0),
    ScenarioDef("kill-during-install", "freeze a follower until the leaders compact past it, SIGKILL it while "
                "it receives or restores the snapshot; restart it", _standalone(kill_install_episode),
                node_args=WINDOW_ARGS, episode=kill_install_episode, episode_time=70.0),
    ScenarioDef("disk-full-journal", "ENOSPC on a follower's Raft journal (writes and fsyncs), then space "
                "back: it must recover or stop, never stay ready without replicating",
                _standalone(journal_full_episode), node_args=WINDOW_ARGS, node_env=journal_full_env,
                episode=journal_full_episode, episode_time=60.0),
    ScenarioDef("replace-while-down", "SIGKILL a node; while it is down remove another member (its replica "
                "sets are rebuilt around the dead one), wipe it and join it again; restart the first "
                "(best with --nodes 4 --replication-factor 3)", _standalone(replace_while_down_episode),
                node_args=WINDOW_ARGS, episode=replace_while_down_episode, episode_time=150.0),
    ScenarioDef("reads-during-flips", "migrate namespaces one after another while extra clients read and write "
                "the moving namespace's registers on every node", _standalone(reads_during_flips_episode),
                episode=reads_during_flips_episode, episode_time=45.0),
    ScenarioDef("mixed", "random faults from the menu, and the Raft-window episodes above, for the whole "
                "duration", mixed, node_args=MIXED_ARGS, node_env=journal_full_env),
)}
